"""files/elf.py: core notes, build-ids, sections and version strings.

Synthetic files come from ``elfbuild`` (laid out by hand, independently of pyelftools, which the
module parses with); real ones are /usr/bin/gdb (checked against binutils' readelf), the QEMU
builds when present, and a gcore of a ``sleep`` started here.
"""
import os
import random
import re
import shutil
import subprocess
import time

import pytest

import elfbuild as eb
from qemu_chardev.files import elf as corefile
from realcore import sleep_core  # noqa: F401  (a fixture)

QSD = "/opt/qemu/qemu-storage-daemon"
BUILD_ID = "4f1b8a0c9d2e3f405162738495a6b7c8d9e0f1a2"


def core_notes(lwps=(4001, 4002, 4003), program=b"qemu-storage-da", args=None, files=None):
    """Notes like the kernel writes them: the first thread's PRSTATUS, PRPSINFO, NT_FILE, then
    the other threads' PRSTATUS (each followed by an FPREGSET, as in real cores)."""
    args = args or QSD.encode() + b" --chardev socket,id=c0,path=/tmp/s"
    files = files if files is not None else [(0x1000, 0x2000, 0, QSD),
                                             (0x2000, 0x3000, 1, QSD),
                                             (0x7000, 0x8000, 0, "/lib/libc.so.6")]
    first, *others = lwps
    fpregs = eb.note(eb.NT_FPREGSET, b"CORE", b"\0" * 512)
    notes = [eb.note(eb.NT_PRSTATUS, b"CORE", eb.prstatus(first, 11)),
             eb.note(eb.NT_PRPSINFO, b"CORE", eb.prpsinfo(program, first, args)),
             eb.note(eb.NT_FILE, b"CORE", eb.file_note(files)), fpregs]
    for lwp in others:
        notes += [eb.note(eb.NT_PRSTATUS, b"CORE", eb.prstatus(lwp, 0)), fpregs]
    return b"".join(notes)


@pytest.fixture
def core(tmp_path):
    image = eb.core(core_notes(), loads=[(0x9000, eb.PF_R | eb.PF_W, b"\xaa" * 4096)])
    return image.write(tmp_path / "core.1")


def refused(path, message=None):
    """The one-line ElfError read_core gives for ``path`` (checked to be one line)."""
    with pytest.raises(corefile.ElfError) as caught:
        corefile.read_core(str(path))
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{path}: ")
    if message is not None:
        assert text == f"{path}: {message}"
    return text


# --- notes ---------------------------------------------------------------------------------

def test_read_core_notes(core):
    info = corefile.read_core(str(core))
    assert info.program == "qemu-storage-da" and info.pid == 4001
    assert info.command_line == QSD + " --chardev socket,id=c0,path=/tmp/s"
    assert info.lwps == [4001, 4002, 4003] and info.signal == 11
    assert info.executable == QSD
    assert info.executable_build_id is None       # no segment holds the executable's header


def test_nt_file_mappings(core):
    layout = corefile.core_layout(str(core))
    assert layout.mappings == [(0x1000, 0x2000, 0, QSD), (0x2000, 0x3000, 1, QSD),
                               (0x7000, 0x8000, 0, "/lib/libc.so.6")]
    [load] = layout.loads
    assert (load.vaddr, load.memsz, load.filesz, load.present) == (0x9000, 4096, 4096, 4096)
    assert load.writable and load.readable and layout.note_problem is None


def test_program_and_executable_without_a_matching_mapping(tmp_path):
    path = eb.core(core_notes(program=b"sleep", args=b"sleep 100 ",
                              files=[(0x1000, 0x2000, 0, "/usr/bin/other")])).write(tmp_path / "c")
    info = corefile.read_core(str(path))
    assert (info.program, info.command_line) == ("sleep", "sleep 100")
    assert info.executable == "/usr/bin/other"    # no path named like pr_fname: the first one


def test_many_threads(tmp_path):
    lwps = list(range(10000, 13000))
    path = eb.core(core_notes(lwps=lwps)).write(tmp_path / "threads.core")
    assert corefile.read_core(str(path)).lwps == lwps


def test_build_id_from_the_cores_first_page(tmp_path):
    exe_page = eb.executable_image(BUILD_ID, extra_notes=eb.note(5, b"GNU", b"\0" * 16))
    notes = core_notes(files=[(0x555500000000, 0x555500001000, 0, QSD)])
    path = eb.core(notes, loads=[(0x555500000000, eb.PF_R, exe_page)]).write(tmp_path / "c")
    assert corefile.read_core(str(path)).executable_build_id == BUILD_ID
    # the page cut off by the end of the file: no build-id from it, the core says it is cut
    data = path.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[:-2048])
    info = corefile.read_core(str(cut))
    assert info.executable_build_id is None
    assert info.truncated == f"truncated ({len(data) - 2048} of {len(data)} bytes)"
    assert info.missing == [(0x555500000000 + 4096 - 2048, 0x555500000000 + 4096)]


def test_build_id_note_outside_the_dumped_page(tmp_path):
    page = eb.executable_image(BUILD_ID)
    headers = 64 + 2 * 56                         # ELF header, 2 program headers; then the note
    notes = core_notes(files=[(0x555500000000, 0x555500001000, 0, QSD)])
    path = eb.core(notes, loads=[(0x555500000000, eb.PF_R, page[:headers])]).write(
        tmp_path / "c")
    assert corefile.read_core(str(path)).executable_build_id is None
    path = eb.core(notes, loads=[(0x555500000000, eb.PF_R, page[:headers + 68])]).write(
        tmp_path / "c")
    assert corefile.read_core(str(path)).executable_build_id == BUILD_ID


def test_core_without_thread_status_notes(tmp_path):
    notes = eb.note(eb.NT_PRPSINFO, b"CORE", eb.prpsinfo(b"x", 1))
    path = eb.core(notes).write(tmp_path / "c")
    refused(path, "core file without thread status notes")


def test_notes_of_other_owners_and_short_descriptors_are_ignored(tmp_path):
    notes = (eb.note(eb.NT_PRSTATUS, b"LINUX", eb.prstatus(1, 6))       # not CORE
             + eb.note(eb.NT_PRSTATUS, b"CORE", b"\0" * 20)              # too short
             + eb.note(eb.NT_PRPSINFO, b"CORE", b"\0" * 40)              # too short
             + eb.note(eb.NT_PRSTATUS, b"CORE", eb.prstatus(7, 6)))
    info = corefile.read_core(str(eb.core(notes).write(tmp_path / "c")))
    assert info.lwps == [7] and info.signal == 6 and info.program is None


# --- bad input: one clean line, never a traceback -----------------------------------------

def test_truncated_segments_are_analysed_with_their_missing_ranges(core, tmp_path):
    """A core cut short after its notes is usable (its threads are all there); what it
    lacks is said as address ranges, not refused."""
    data = core.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[:-100])
    info = corefile.read_core(str(cut))
    assert info.truncated == f"truncated ({len(data) - 100} of {len(data)} bytes)"
    assert info.lwps and info.missing and all(e - s > 0 for s, e in info.missing)
    assert sum(e - s for s, e in info.missing) == 100
    assert corefile.read_core(str(core)).truncated is None
    assert corefile.read_core(str(core)).missing == []


def test_truncated_notes(tmp_path):
    image = eb.core(core_notes(), loads=[(0x9000, eb.PF_R | eb.PF_W, b"\0" * 8192)],
                    notes_last=True)                 # gdb's gcore writes the notes last
    data = image.build()
    cut = tmp_path / "cut"
    cut.write_bytes(data[:-700])      # the last FPREGSET (532 bytes) and half a PRSTATUS
    refused(cut, "truncated (notes cut off)")
    layout = corefile.core_layout(str(cut))          # what memscan uses: still readable
    assert layout.note_problem == "truncated (notes cut off)"
    assert [s.present for s in layout.loads] == [8192]
    assert layout.info.lwps == [4001, 4002]          # the notes before the cut


def test_note_segment_over_the_bound(core, monkeypatch):
    monkeypatch.setattr(corefile, "MAX_NOTES_BYTES", 1000)
    size = len(core_notes())
    refused(core, f"corrupt note segment ({size} bytes)")
    layout = corefile.core_layout(str(core))       # the first 1000 bytes only
    assert layout.info.lwps == [4001] and layout.info.program == "qemu-storage-da"


def test_other_files_are_refused(tmp_path):
    for e_type, kind in [(eb.ET_DYN, "a shared object or PIE executable"),
                         (eb.ET_EXEC, "an executable"), (eb.ET_REL, "ELF type 1"),
                         (0x1234, "ELF type 4660")]:
        path = eb.Image(e_type).add(eb.PT_LOAD, b"x" * 64).write(tmp_path / f"t{e_type}")
        refused(path, f"not a core file ({kind})")
    text = tmp_path / "text"
    text.write_text("hello")
    refused(text, "not an ELF file")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    refused(empty, "not an ELF file")
    with pytest.raises(FileNotFoundError):
        corefile.read_core(str(tmp_path / "missing"))


@pytest.mark.parametrize("elfclass,endian", [(32, "<"), (64, ">"), (32, ">")])
def test_only_64_bit_little_endian(tmp_path, elfclass, endian):
    image = eb.Image(eb.ET_CORE, elfclass=elfclass, endian=endian)
    image.add(eb.PT_NOTE, eb.note(eb.NT_PRSTATUS, b"CORE", eb.prstatus(1), endian))
    path = image.write(tmp_path / "c")
    refused(path, "not a 64-bit little-endian ELF file")
    with pytest.raises(corefile.ElfError, match="64-bit"):
        corefile.binary_build_id(str(path))


def test_bad_identification_and_cut_header(core, tmp_path):
    data = bytearray(core.read_bytes())
    data[4] = 7                                   # EI_CLASS neither 1 nor 2
    bad = tmp_path / "class"
    bad.write_bytes(bytes(data))
    refused(bad, "not a 64-bit little-endian ELF file")
    short = tmp_path / "short"
    short.write_bytes(core.read_bytes()[:40])
    refused(short, "truncated (ELF header cut off)")


def test_program_header_tables(tmp_path, core):
    data = core.read_bytes()
    # e_phnum huge (0xfff0 headers of 56 bytes: 3.6 MB, the file has a few KB)
    image = eb.core(core_notes())
    image.phnum = 0xFFF0
    refused(image.write(tmp_path / "many"), "truncated (program headers cut off)")
    # program headers cut off
    cut = tmp_path / "cut"
    cut.write_bytes(data[:64 + 56 + 20])
    refused(cut, "truncated (program headers cut off)")
    # entries of the wrong size
    image = eb.core(core_notes())
    image.phentsize = 32
    refused(image.write(tmp_path / "entsize"), "corrupt program header table")
    # extended numbering (PN_XNUM): the count is in section 0's sh_info
    image = eb.core(core_notes(), loads=[(0x9000, eb.PF_R, b"\0" * 64)])
    image.phnum, image.section0_info = eb.PN_XNUM, 2
    assert corefile.read_core(str(image.write(tmp_path / "xnum"))).lwps == [4001, 4002, 4003]
    image.section0_info = 1 << 30
    refused(image.write(tmp_path / "xnum-huge"), "corrupt program header table")
    # no program headers at all
    refused(eb.Image(eb.ET_CORE).write(tmp_path / "none"), "core file without thread status notes")


def test_garbage_notes_stop_cleanly(tmp_path):
    good = eb.note(eb.NT_PRSTATUS, b"CORE", eb.prstatus(9, 6))
    cases = {
        # NT_FILE with a count far beyond its bytes: no mappings, the rest still read
        "count": good + eb.note(eb.NT_FILE, b"CORE", eb.file_note(
            [(0x1000, 0x2000, 0, "/x")], count=1 << 60)) + eb.note(
            eb.NT_PRSTATUS, b"CORE", eb.prstatus(10)),
        # a descsz running past the segment: the notes before it are kept
        "descsz": good + b"\x05\0\0\0\xff\xff\xff\x7f\x01\0\0\0CORE\0\0\0\0" + b"\0" * 64,
        # a name without its NUL, then garbage
        "name": good + b"\x04\0\0\0\x04\0\0\0\x01\0\0\0CORExxxx" + b"\xff" * 50,
        # NT_FILE names without terminators
        "names": good + eb.note(eb.NT_FILE, b"CORE", eb.file_note(
            [(0x1000, 0x2000, 0, "/x")])[:-1] + b"y"),
        # a header cut short at the end of the segment
        "tail": good + b"\x05\0\0",
    }
    for name, notes in cases.items():
        path = eb.core(notes).write(tmp_path / name)
        started = time.monotonic()
        layout = corefile.core_layout(str(path))
        assert time.monotonic() - started < 1.0, name
        assert layout.info.lwps[0] == 9 and layout.mappings == [], name
    assert corefile.core_layout(str(tmp_path / "count")).info.lwps == [9, 10]


def test_fuzzed_cores_give_one_line_errors(core):
    """Random corruption of header, program headers and notes: a CoreInfo or one ElfError
    line, never another exception."""
    data = core.read_bytes()
    rng = random.Random(1234)
    path = core.parent / "fuzz"
    outcomes = set()
    for attempt in range(240):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(0, 64 + 56 * 2 + len(core_notes()))
            mutated[at] = rng.randrange(256)
        if rng.random() < 0.3:
            mutated = mutated[:rng.randrange(len(mutated))]
        path.write_bytes(bytes(mutated))
        try:
            corefile.read_core(str(path))
            outcomes.add("ok")
        except corefile.ElfError as exc:
            assert "\n" not in str(exc)
            outcomes.add(str(exc).split(": ", 1)[1].split(" (")[0])
        if attempt % 4:
            continue
        try:
            corefile.elf_type(str(path))
            corefile.section_bytes(str(path), ".rodata")
            corefile.binary_build_id(str(path))
        except corefile.ElfError as exc:
            assert "\n" not in str(exc)
    assert "ok" in outcomes and len(outcomes) > 3


class CountingFile:
    """A read-only file that counts the bytes read from it."""
    total = 0

    def __init__(self, path, mode="rb"):
        assert mode == "rb"
        self._file = open(path, mode)

    def read(self, size=-1):
        data = self._file.read(size)
        CountingFile.total += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def test_a_6_gb_core_is_not_read(tmp_path, monkeypatch):
    """Only the headers, program headers and notes are read: a sparse 6 GB core costs a few
    KB of reads."""
    size = 6 << 30
    image = eb.core(core_notes(), loads=[(0x7F0000000000, eb.PF_R | eb.PF_W, b"")])
    image.segments[1].filesz = image.segments[1].memsz = size
    path = image.write(tmp_path / "big.core")
    with open(path, "r+b") as handle:
        handle.truncate(image.offsets[1] + size)            # sparse: no disk used
    monkeypatch.setattr(corefile, "open", CountingFile, raising=False)
    started = time.monotonic()
    info = corefile.read_core(str(path))
    layout = corefile.core_layout(str(path))
    assert time.monotonic() - started < 2.0
    assert info.lwps == [4001, 4002, 4003] and layout.loads[0].present == size
    assert CountingFile.total < 64 << 10


# --- binaries: build-ids, sections, versions -----------------------------------------------

def _binary(tmp_path, rodata=b"", with_build_id=True):
    notes = eb.build_id_note(BUILD_ID) if with_build_id else eb.note(1, b"GNU", b"\0" * 16)
    image = eb.Image(eb.ET_DYN, sections=[
        eb.Section(".text", eb.SHT_PROGBITS, b"\x90" * 32),
        eb.Section(".rodata", eb.SHT_PROGBITS, rodata),
        eb.Section(".bss", eb.SHT_NOBITS, size=4096)])
    image.add(eb.PT_LOAD, b"\0" * 64).add(eb.PT_NOTE, eb.note(5, b"GNU", b"\0" * 24) + notes)
    return image.write(tmp_path / "qemu-storage-daemon")


def test_build_id_section_and_version_of_a_binary(tmp_path):
    rodata = b"x\0qemu-storage-daemon version 7.2.22\nCopyright\0"
    path = str(_binary(tmp_path, rodata))
    assert corefile.binary_build_id(path) == BUILD_ID
    assert corefile.section_bytes(path, ".rodata") == rodata
    assert corefile.section_bytes(path, ".text") == b"\x90" * 32
    assert corefile.section_bytes(path, ".bss") is None          # no bytes in the file
    assert corefile.section_bytes(path, ".data") is None
    assert corefile.qemu_version(path) == "7.2.22"
    assert corefile.elf_type(path) == corefile.ET_DYN
    no_id = str(_binary(tmp_path, with_build_id=False))
    assert corefile.binary_build_id(no_id) is None and corefile.qemu_version(no_id) is None


def test_files_that_are_not_binaries(tmp_path, core):
    text = tmp_path / "text"
    text.write_text("#!/bin/sh\n")
    assert corefile.elf_type(str(text)) is None and corefile.qemu_version(str(text)) is None
    assert corefile.elf_type(str(core)) == corefile.ET_CORE
    with pytest.raises(corefile.ElfError, match="not an ELF file"):
        corefile.binary_build_id(str(text))
    assert corefile.section_bytes(str(core), ".rodata") is None   # no section table
    with pytest.raises(OSError):
        corefile.elf_type(str(tmp_path / "missing"))


def test_core_matches_binary_by_name_without_build_ids(core):
    info = corefile.read_core(str(core))
    assert corefile.core_matches_binary(info, "/x/qemu-storage-daemon", None) == (True, None)
    ok, reason = corefile.core_matches_binary(info, "/usr/bin/sleep", None)
    assert not ok and reason == (f"core of 'qemu-storage-da' ({QSD}), not of sleep")
    info.executable_build_id = "aa" * 20
    ok, reason = corefile.core_matches_binary(info, "/x/qemu-storage-daemon", "bb" * 20)
    assert not ok and reason.startswith("core of a different build of qemu-storage-daemon")


def test_qemu_version_strings():
    assert corefile.qemu_version_in(b"x\0qemu-storage-daemon version 7.2.22\nCopy") == "7.2.22"
    assert corefile.qemu_version_in(
        b"QEMU emulator version 10.2.2 (Debian 1:10.2.2+ds-1)\n") == \
        "10.2.2 (Debian 1:10.2.2+ds-1)"
    assert corefile.qemu_version_in(b"VMDK version 3 must be read only\0") is None


# --- real files ------------------------------------------------------------------------------

def _readelf(*args):
    if not shutil.which("readelf"):
        pytest.skip("binutils' readelf is not installed")
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True,
                          check=True, env=dict(os.environ, LC_ALL="C")).stdout


def _readelf_build_id(path):
    found = re.search(r"Build ID: ([0-9a-f]+)", _readelf("-n", path))
    return found.group(1) if found else None


def test_build_id_of_gdb_equals_readelfs():
    gdb = "/usr/bin/gdb"
    if not os.path.isfile(gdb):
        pytest.skip("/usr/bin/gdb is not installed")
    expected = _readelf_build_id(gdb)
    assert expected and corefile.binary_build_id(gdb) == expected


def test_rodata_of_gdb_equals_the_bytes_readelf_locates():
    gdb = "/usr/bin/gdb"
    if not os.path.isfile(gdb):
        pytest.skip("/usr/bin/gdb is not installed")
    row = re.search(r"\] \.rodata\s+PROGBITS\s+[0-9a-f]+ ([0-9a-f]+) ([0-9a-f]+)",
                    _readelf("-S", gdb))
    offset, size = int(row.group(1), 16), int(row.group(2), 16)
    with open(gdb, "rb") as handle:
        handle.seek(offset)
        assert corefile.section_bytes(gdb, ".rodata") == handle.read(size)
    assert corefile.qemu_version(gdb) is None


def _qemu_builds():
    root = os.path.expanduser("~/.cache/qemu-chardev-gdb")
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    paths = (os.path.join(root, n, "build/storage-daemon/qemu-storage-daemon") for n in names)
    return [p for p in paths if os.path.isfile(p) and os.access(p, os.X_OK)]


def test_qemu_version_of_real_builds():
    builds = _qemu_builds()
    if not builds:
        pytest.skip("no QEMU build under ~/.cache/qemu-chardev-gdb/qemu-*/build")
    checked = 0
    for path in builds:
        try:
            done = subprocess.run([path, "--version"], capture_output=True, text=True,
                                  timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue                                # a build being written right now
        announced = re.match(r"qemu-storage-daemon version (\S+)", done.stdout)
        if done.returncode != 0 or not announced:
            continue
        assert corefile.qemu_version(path) == announced.group(1), path
        assert corefile.binary_build_id(path) == _readelf_build_id(path), path
        checked += 1
    if not checked:
        pytest.skip("no QEMU build under ~/.cache/qemu-chardev-gdb runs --version")


def test_real_core_of_sleep(sleep_core):  # noqa: F811
    info = corefile.read_core(str(sleep_core.path))
    assert sorted(info.lwps) == sleep_core.tasks
    assert info.pid == sleep_core.pid and info.program == "sleep"
    # gdb's gcore writes argv[0] only; the kernel writes the arguments too
    assert info.command_line and f"{sleep_core.executable} 100".startswith(info.command_line)
    assert info.executable == sleep_core.executable
    assert info.executable_build_id == corefile.binary_build_id(sleep_core.executable)
    assert info.executable_build_id == _readelf_build_id(sleep_core.executable)
    ok, reason = corefile.core_matches_binary(info, sleep_core.executable)
    assert ok, reason
    layout = corefile.core_layout(str(sleep_core.path))
    assert {(s, e, p) for s, e, _o, p in layout.mappings} == set(sleep_core.maps)
    assert corefile.elf_type(str(sleep_core.path)) == corefile.ET_CORE
