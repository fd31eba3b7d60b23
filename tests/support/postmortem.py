"""Cores and runs for the tests of `qemu diagnose` and scripts/chardev-postmortem.

Cores are made once per test process and shared by every test that asks for the same one
(they are hundreds of MB): race cores from fixtures/qemu/make-race-core, gcore snapshots of a
daemon in an ordinary state, a core of another program, and compressed copies.  They live in
one temporary directory, removed at exit unless QCG_KEEP_TMP is set.
"""

import atexit
import functools
import json
import lzma
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from . import procs
from .gdb import gcore, run_gdb
from .paths import REPO_ROOT
from .race_core import make_race_core
from .scenarios import all_chardevs_scenario

POSTMORTEM = REPO_ROOT / "scripts" / "chardev-postmortem"
SCHEMA_PATH = REPO_ROOT / "docs" / "report-schema.json"
NO_CENSUS = "--no-census"
_dir: Optional[Path] = None


def core_dir() -> Path:
    """The shared directory for cores (short path: daemons put unix sockets there)."""
    global _dir
    if _dir is None:
        _dir = Path(tempfile.mkdtemp(prefix="qcg-pm-", dir="/tmp"))
        atexit.register(_remove_core_dir)
    return _dir


def _remove_core_dir() -> None:
    if _dir is not None and not os.environ.get("QCG_KEEP_TMP"):
        shutil.rmtree(_dir, ignore_errors=True)


def _fresh(name: str) -> Path:
    path = core_dir() / name
    path.mkdir()
    return path


@functools.lru_cache(maxsize=None)
def race_core(build):
    """make-race-core's SIGSEGV core of the 2019 race (BUILD: a reverted QemuBuild)."""
    return make_race_core(build, _fresh(f"race-{build}") / "race.core")


@functools.lru_cache(maxsize=None)
def lock_wait_core(build):
    """make-race-core --expect-no-crash on a fixed build: main thread in tcp_chr_write holding
    mon0's chr_write_lock, the I/O thread's disconnect waiting for it (a gcore, SIGTRAP)."""
    return make_race_core(build, _fresh(f"wait-{build}") / "wait.core", expect_no_crash=True)


@functools.lru_cache(maxsize=None)
def idle_core(build) -> Path:
    """A gcore of a daemon with mon0 (client connected), cli0 (reconnecting), tcp0, ring0 and
    null0, in its main loop: an ordinary state."""
    workdir = _fresh(f"idle-{build}")
    with all_chardevs_scenario(build.storage_daemon, workdir) as sc:
        time.sleep(1.5)          # let cli0 go through a reconnect attempt or two
        return gcore(sc.daemon.pid, workdir / "idle.core", binary=build.storage_daemon)


@functools.lru_cache(maxsize=None)
def other_program_core() -> Path:
    """A gcore of /bin/sleep: a core, but not of QEMU."""
    workdir = _fresh("sleep")
    proc = procs.register(subprocess.Popen(["sleep", "600"], start_new_session=True))
    try:
        return gcore(proc.pid, workdir / "sleep.core", binary="/bin/sleep")
    finally:
        procs.kill_and_reap(proc)


@functools.lru_cache(maxsize=None)
def compressed(core: Path, ext: str) -> Path:
    """CORE compressed as systemd-coredump does: ".zst", ".lz4" or ".xz" (next to a copy)."""
    out = _fresh(f"{ext[1:]}-{core.parent.name}") / (core.name + ext)
    if ext == ".xz":
        with open(core, "rb") as src, lzma.open(out, "wb", preset=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    else:
        tool = {".zst": ["zstd", "-q", "-1", "-c"], ".lz4": ["lz4", "-q", "-c"]}[ext]
        with open(out, "wb") as dst:
            subprocess.run(tool + [str(core)], stdout=dst, check=True, timeout=300)
    return out


def run_postmortem(binary, *inputs, options: Sequence[str] = (NO_CENSUS,),
                   timeout: float = 900.0, env: Optional[dict] = None,
                   python: str = "/usr/bin/python3") -> subprocess.CompletedProcess:
    """Run scripts/chardev-postmortem with /usr/bin/python3; returns the CompletedProcess."""
    argv = [python, str(POSTMORTEM), *options, str(binary), *[str(i) for i in inputs]]
    merged = dict(os.environ, NO_COLOR="1")
    merged.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=merged)


@functools.lru_cache(maxsize=None)
def report_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_report(obj) -> None:
    """Raise jsonschema.ValidationError unless OBJ follows docs/report-schema.json."""
    import jsonschema
    jsonschema.Draft202012Validator(report_schema()).validate(obj)


def diagnose(binary, *, core=None, pid=None, options: str = NO_CENSUS, timeout: float = 300.0):
    """(report dict, text output, GdbResult) of `qemu diagnose` on CORE or PID."""
    result = run_gdb(binary, core=core, pid=pid, timeout=timeout,
                     commands=[f"qemu diagnose --json {options}".strip(),
                               f"qemu diagnose {options}".strip()])
    return result.json(0), result.outputs[1], result


def raw(binary, core, *commands, timeout: float = 120.0) -> list:
    """Outputs of plain gdb (no extension) commands on CORE: the ground truth."""
    return run_gdb(binary, core=core, commands=list(commands), extension=False,
                   timeout=timeout).check().outputs


# --- cores of several binaries, as a CI job or systemd-coredump leaves them -----------------

def run_postmortem_inputs(*argv, options: Sequence[str] = (NO_CENSUS,), timeout: float = 900.0,
                          env: Optional[dict] = None,
                          python: str = "/usr/bin/python3") -> subprocess.CompletedProcess:
    """Run scripts/chardev-postmortem on ARGV as given (no BINARY added)."""
    command = [python, str(POSTMORTEM), *options, *[str(a) for a in argv]]
    merged = dict(os.environ, NO_COLOR="1")
    merged.update(env or {})
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=merged)


def install_copy(binary, directory) -> Path:
    """BINARY hard-linked (or copied) into DIRECTORY under its own name: a binary that runs,
    and dumps cores, from a path the test may move away."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / Path(binary).name
    try:
        os.link(binary, target)
    except OSError:
        shutil.copy2(binary, target)
    return target


def daemon_core(binary, name: str) -> Path:
    """A gcore of qemu-storage-daemon BINARY with mon0, cli0, tcp0, ring0 and null0 (as
    ``idle_core``, for any path of the binary)."""
    workdir = _fresh(name)
    with all_chardevs_scenario(binary, workdir) as sc:
        time.sleep(1.5)
        return gcore(sc.daemon.pid, workdir / "daemon.core", binary=binary)


def test_char_core(binary, name: str) -> Path:
    """A gcore of test-char BINARY (a QEMU unit test) stopped at its first qemu_chr_write."""
    path = _fresh(name) / "test-char.core"
    result = run_gdb(binary, commands=["break qemu_chr_write", "run", f"gcore {path}", "kill"],
                     extension=False, timeout=300)
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"no test-char core at {path}:\n{result.describe()}")
    return path


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")


def systemd_coredump_copy(core, directory, timestamp: Optional[int] = None) -> Path:
    """CORE zstd-compressed into DIRECTORY under systemd-coredump's name
    core.COMM.UID.BOOTID.PID.TIMESTAMP.zst (COMM and PID from the core's notes; gdb's gcore
    writes 16 characters of the program name, the kernel's comm has 15)."""
    from qemu_chardev.files import elf
    info = elf.read_core(str(core))
    stamp = timestamp or int(time.time() * 1e6)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    comm = (info.program or "unknown")[:15]      # the kernel's comm: 15 characters at most
    out = directory / f"core.{comm}.{os.getuid()}.{boot_id()}.{info.pid}.{stamp}.zst"
    with open(out, "wb") as dst:
        subprocess.run(["zstd", "-q", "-1", "-c", str(core)], stdout=dst, check=True,
                       timeout=300)
    return out


JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
COREDUMP_MESSAGE_ID = "fc2e22bc6ee647b6b90729ab34a250b1"


def coredump_journal(stored: Sequence[Path], path) -> Path:
    """A journal file at PATH with one systemd-coredump entry per STORED core (named as
    ``systemd_coredump_copy`` names them), its fields as systemd-coredump logs them (COREDUMP_PID,
    _COMM, _EXE from the core's notes, _FILENAME the stored file), written by the real
    systemd-journal-remote from journal export format.  What systemd-coredump itself does
    (the kernel's pipe, /proc) is not run: systemd is not PID 1 here."""
    from qemu_chardev.files import elf
    entries = []
    for index, zst in enumerate(stored):
        _core, comm, uid, boot, pid, stamp = Path(zst).name[:-len(".zst")].split(".")
        plain = core_dir() / f"journal-{index}.core"
        with open(plain, "wb") as dst:
            subprocess.run(["zstd", "-q", "-d", "-c", str(zst)], stdout=dst, check=True,
                           timeout=300)
        info = elf.read_core(str(plain))
        plain.unlink()
        fields = {"__REALTIME_TIMESTAMP": str(int(time.time() * 1e6) + index),
                  "__MONOTONIC_TIMESTAMP": str(index + 1), "_BOOT_ID": boot,
                  "MESSAGE_ID": COREDUMP_MESSAGE_ID,
                  "MESSAGE": f"Process {pid} ({comm}) of user {uid} dumped core.",
                  "PRIORITY": "2", "COREDUMP_PID": pid, "COREDUMP_UID": uid,
                  "COREDUMP_GID": str(os.getgid()), "COREDUMP_SIGNAL": str(info.signal or 0),
                  "COREDUMP_TIMESTAMP": stamp, "COREDUMP_COMM": comm,
                  "COREDUMP_EXE": info.executable, "COREDUMP_FILENAME": str(zst)}
        entries.append("".join(f"{k}={v}\n" for k, v in fields.items()))
    export = Path(str(path) + ".export")
    export.write_text("\n".join(entries) + "\n")
    subprocess.run([JOURNAL_REMOTE, f"--output={path}", str(export)], check=True,
                   capture_output=True, timeout=60)
    return Path(path)


def coredumpctl_on_journal(journal, directory) -> Path:
    """DIRECTORY/coredumpctl: runs the real /usr/bin/coredumpctl on JOURNAL (--file) with the
    arguments it is given; put DIRECTORY first on PATH."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "coredumpctl"
    shim.write_text(f'#!/bin/sh\nexec /usr/bin/coredumpctl --file="{journal}" "$@"\n')
    shim.chmod(0o755)
    return shim
