"""What the programs write holds the guest's secrets (issue #8): decompressed cores, the
catcher's JSON log and its umask are owner-only whatever the user's umask.  (The cores and
summaries gdb writes are checked on real QEMU: tests/real/test_watch.py.)"""
import lzma
import os
import shutil
import stat
import subprocess

import pytest

from qemu_chardev.cli import catch, postmortem

CORE_BYTES = b"\x7fELF" + bytes(range(256)) * 64


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)            # a usual user umask: files 0644, directories 0755
    try:
        yield
    finally:
        os.umask(old)


def _compressed(tmp_path, ext):
    path = tmp_path / f"core.1{ext}"
    if ext == ".xz":
        path.write_bytes(lzma.compress(CORE_BYTES))
    else:
        tool = {".zst": "zstd", ".lz4": "lz4"}[ext]
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
        raw = tmp_path / "core.1"
        raw.write_bytes(CORE_BYTES)
        subprocess.run([tool, "-q", "-f", str(raw), str(path)], check=True)
        raw.unlink()
    return path


@pytest.mark.parametrize("ext", [".xz", ".zst", ".lz4"])
def test_decompressed_copies_are_0600_in_a_0700_directory(tmp_path, loose_umask, ext):
    packed = _compressed(tmp_path, ext)
    workdir = postmortem.CLEANUP.tempdir()
    try:
        out = postmortem.decompress(str(packed), ext, workdir, timeout=60)
        assert open(out, "rb").read() == CORE_BYTES
        assert mode(out) == 0o600
        assert mode(workdir) == 0o700
    finally:
        postmortem.CLEANUP.remove(workdir)


def test_catcher_files_and_umask_are_private(tmp_path, loose_umask):
    log = tmp_path / "events.jsonl"
    log.write_text("old\n")
    os.chmod(log, 0o644)
    catch.create_private(str(log))                # --json-log: truncated and made private
    assert log.read_text() == "" and mode(log) == 0o600
    fresh = tmp_path / "new.jsonl"
    catch.create_private(str(fresh))
    assert mode(fresh) == 0o600
    old = catch.private_umask()                   # what gdb (and its gcore) inherits
    try:
        assert old == 0o022 and os.umask(0o077) & 0o077 == 0o077
    finally:
        os.umask(old)


def test_explain_gdb_failure_says_it_in_one_line():
    from qemu_chardev.cli import gdbload
    minimal = "Python scripting is not supported in this copy of GDB.\n"
    assert gdbload.explain_gdb_failure("/usr/bin/gdb", minimal) == (
        "/usr/bin/gdb was built without Python; install a gdb with Python (Debian: apt-get "
        "install gdb, not gdb-minimal)")
    old = ('Traceback (most recent call last):\n  File "<string>", line 1\n'
           "gdb.GdbError: qemu-chardev-gdb: gdb 12.1 is too old: needs gdb 13.0 or later\n"
           "Error while executing Python code.\n")
    assert gdbload.explain_gdb_failure("gdb", old) == \
        "qemu-chardev-gdb: gdb 12.1 is too old: needs gdb 13.0 or later"
    assert gdbload.explain_gdb_failure("gdb", "warning: something else\n") is None
    assert gdbload.explain_gdb_failure("gdb", None) is None
