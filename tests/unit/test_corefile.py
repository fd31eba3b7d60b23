"""corefile: ELF core notes and version strings, on small ELF files built here byte by byte."""
import struct

import pytest

from qemu_chardev.files import elf as corefile


def note(ntype, name, desc):
    name = name + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)          # noqa: E731
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def prpsinfo(program, pid):
    desc = bytearray(136)
    struct.pack_into("<i", desc, 24, pid)
    desc[40:40 + len(program)] = program
    desc[56:56 + 9] = b"/bin/prog"
    return bytes(desc)


def prstatus(lwp, signal):
    desc = bytearray(112)
    struct.pack_into("<h", desc, 12, signal)
    struct.pack_into("<i", desc, 32, lwp)
    return bytes(desc)


def file_note(entries):
    desc = struct.pack("<QQ", len(entries), 4096)
    desc += b"".join(struct.pack("<QQQ", s, e, o) for s, e, o, _n in entries)
    return desc + b"".join(n.encode() + b"\0" for *_r, n in entries)


def elf(e_type, notes=b"", loads=()):
    """An ELF64 LE file: header, program headers (one PT_NOTE, then PT_LOADs), notes, data."""
    phnum = 1 + len(loads)
    offset = 64 + 56 * phnum
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\0" * 9, e_type, 62,
                         1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, offset, 0, 0, len(notes), 0, 4)
    data_at = offset + len(notes)
    for vaddr, size in loads:
        phdrs += struct.pack("<IIQQQQQQ", 1, 6, data_at, vaddr, 0, size, size, 4096)
        data_at += size
    return header + phdrs + notes + b"\0" * sum(size for _v, size in loads)


@pytest.fixture
def core(tmp_path):
    notes = (note(corefile.NT_PRSTATUS, b"CORE", prstatus(4001, 11))
             + note(corefile.NT_PRPSINFO, b"CORE", prpsinfo(b"qemu-storage-da", 4001))
             + note(corefile.NT_PRSTATUS, b"CORE", prstatus(4002, 0))
             + note(corefile.NT_FILE, b"CORE", file_note([
                 (0x1000, 0x2000, 0, "/opt/qemu/qemu-storage-daemon"),
                 (0x7000, 0x8000, 0, "/lib/libc.so.6")])))
    path = tmp_path / "core.1"
    path.write_bytes(elf(corefile.ET_CORE, notes, loads=[(0x9000, 4096)]))
    return path


def test_read_core_notes(core):
    info = corefile.read_core(str(core))
    assert info.program == "qemu-storage-da" and info.pid == 4001
    assert info.lwps == [4001, 4002] and info.signal == 11
    assert info.executable == "/opt/qemu/qemu-storage-daemon"
    assert info.executable_build_id is None       # no segment holds the executable's header


def test_truncated_core_is_refused(core, tmp_path):
    cut = tmp_path / "cut"
    cut.write_bytes(core.read_bytes()[:-100])
    with pytest.raises(corefile.ElfError, match="truncated"):
        corefile.read_core(str(cut))


def test_other_files_are_refused(tmp_path):
    exe = tmp_path / "exe"
    exe.write_bytes(elf(corefile.ET_DYN))
    text = tmp_path / "text"
    text.write_text("hello")
    with pytest.raises(corefile.ElfError, match="not a core file"):
        corefile.read_core(str(exe))
    with pytest.raises(corefile.ElfError, match="not an ELF file"):
        corefile.read_core(str(text))


def test_core_matches_binary_by_name_without_build_ids(core):
    info = corefile.read_core(str(core))
    assert corefile.core_matches_binary(info, "/x/qemu-storage-daemon", None) == (True, None)
    ok, reason = corefile.core_matches_binary(info, "/usr/bin/sleep", None)
    assert not ok and reason == ("core of 'qemu-storage-da' (/opt/qemu/qemu-storage-daemon), "
                                 "not of sleep")
    info.executable_build_id = "aa" * 20
    ok, reason = corefile.core_matches_binary(info, "/x/qemu-storage-daemon", "bb" * 20)
    assert not ok and reason.startswith("core of a different build of qemu-storage-daemon")


def test_qemu_version_strings():
    assert corefile.qemu_version_in(b"x\0qemu-storage-daemon version 7.2.22\nCopy") == "7.2.22"
    assert corefile.qemu_version_in(
        b"QEMU emulator version 10.2.2 (Debian 1:10.2.2+ds-1)\n") == \
        "10.2.2 (Debian 1:10.2.2+ds-1)"
    assert corefile.qemu_version_in(b"VMDK version 3 must be read only\0") is None
