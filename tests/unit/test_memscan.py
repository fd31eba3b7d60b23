"""memscan: core segments and NT_FILE mappings (from files/elf.py), /proc maps, both search
backends; synthetic cores from elfbuild and a gcore of a real process."""
import os
import re
import shutil
import struct
import subprocess

import pytest

import elfbuild as eb
from qemu_chardev.files import memscan
from realcore import AT_ENTRY, AT_PHDR, sleep_core  # noqa: F401  (sleep_core: a fixture)

GLIB = 0x7F20E4566380
GLIB2 = 0x7F20E4566300
QEMU = 0x55D3D219D0A0
ANCHORS = {GLIB: "g_timeout_funcs", GLIB2: "g_idle_funcs", QEMU: "aio_source_funcs"}
BACKENDS = ["find"] + (["numpy"] if memscan._numpy() is not None else [])


def memory_with(words, size=1 << 16):
    """SIZE bytes of pointer-like noise with WORDS {offset: value} written in."""
    buf = bytearray(size)
    for off in range(0, size, 8):
        # noise sharing the anchors' high bytes but never equal to them
        struct.pack_into("<Q", buf, off, (GLIB & ~0xFFFF) | ((off * 40503) & 0xFFF0) | 8)
    for off, value in words.items():
        struct.pack_into("<Q", buf, off, value)
    return buf


@pytest.mark.parametrize("backend", BACKENDS)
def test_searchers_find_aligned_anchor_words_only(backend):
    words = {0x10: GLIB, 0x1008: QEMU, 0x2000: GLIB2, 0xFFF8: GLIB}
    buf = memory_with(words)
    struct.pack_into("<Q", buf, 0x3004, GLIB)          # misaligned: not a hit
    search = memscan.make_searcher(ANCHORS, backend)
    assert search(buf, 0, len(buf)) == sorted(words.items())
    # a sub-range: offsets stay relative to the buffer, alignment to `first`
    assert search(buf, 0x1000, 0x2000) == [(0x1008, QEMU), (0x2000, GLIB2)]


def test_backends_agree_on_random_memory():
    if "numpy" not in BACKENDS:
        pytest.skip("numpy not installed")
    import random
    rng = random.Random(4)
    words = {8 * rng.randrange(1 << 15): rng.choice(list(ANCHORS)) for _ in range(300)}
    buf = memory_with(words, 1 << 18)
    results = [memscan.make_searcher(ANCHORS, b)(buf, 0, len(buf)) for b in BACKENDS]
    assert results[0] == results[1] == sorted(words.items())


class FakeReader:
    kind = "core"

    def __init__(self, base, data):
        self.data = bytes(data)
        self.regions = [memscan.Region(base, base + len(data), 0, len(data), True),
                        memscan.Region(base + len(data), base + 2 * len(data), 0, 0, False)]
        self.missing = 0

    def windows(self, region, window):
        done = 0
        while done < region.size:
            n = min(window, region.size - done)
            yield region.start + done, self.data, done, n
            done += n


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_windows_and_hit_bytes(backend):
    base = 0x555500000000
    words = {0x8: GLIB, 0x1000: QEMU, 0x1100: GLIB, 0x1FF8: GLIB2}
    reader = FakeReader(base, memory_with(words, 0x2000))
    hits, scanned = memscan.scan(reader, ANCHORS, before=16, span=96, window=0x1000,
                                 backend=backend)
    assert scanned == 0x2000
    assert [(h.address - base, h.value) for h in hits] == sorted(words.items())
    assert hits[0].data == b""                       # would start before the region
    assert hits[1].data == b""                       # would start in the previous window
    assert hits[2].data == reader.data[0x1100 - 16:0x1100 + 80]
    assert hits[3].data == b""                       # runs past the end of its window


def build_core(path, segments, files=(), truncate=None):
    """A minimal ELF64 core (elfbuild): PT_NOTE with NT_FILE, then PT_LOADs (vaddr, flags,
    data)."""
    notes = eb.note(eb.NT_FILE, b"CORE",
                    eb.file_note([(start, end, 0, "/lib/x.so") for start, end in files]))
    blob = eb.core(notes, loads=segments).build()
    path.write_bytes(blob[:truncate] if truncate else blob)
    return path


def test_core_reader_segments_notes_and_reads(tmp_path):
    rw = memory_with({0x40: QEMU}, 0x2000)
    ro = memory_with({0x80: GLIB}, 0x1000)      # read-only: never scanned
    core = build_core(tmp_path / "t.core", [(0x7F0000000000, 4, ro), (0x555500000000, 6, rw)],
                      files=[(0x7F1000000000, 0x7F1000004000)])
    reader = memscan.CoreReader(str(core))
    try:
        assert [(r.start, r.writable, r.size) for r in reader.regions] == [
            (0x555500000000, True, 0x2000), (0x7F0000000000, False, 0x1000)]   # sorted
        assert reader.extra_mapped == [(0x7F1000000000, 0x7F1000004000)]
        assert reader.missing == 0
        hits, scanned = memscan.scan(reader, ANCHORS)
        assert scanned == 0x2000 and [h.address for h in hits] == [0x555500000040]
        assert reader.read(0x555500000040, 8) == struct.pack("<Q", QEMU)
        assert reader.read(0x7F0000000080, 8) == struct.pack("<Q", GLIB)
        assert reader.read(0x555500001FFC, 8) is None     # runs off the segment
        assert reader.read(0x1000, 8) is None             # below every segment
        mapped = memscan.RegionMap(reader.regions, reader.extra_mapped)
        assert 0x7F1000000010 in mapped and 0x7F1000004000 not in mapped
        assert 0x555500001FFF in mapped and 0x555500002000 not in mapped
    finally:
        reader.close()


def test_segments_without_file_bytes(tmp_path):
    """memsz > filesz (a segment the dump left out, or .bss): mapped, but no bytes to read."""
    image = eb.core(b"", loads=[(0x555500000000, 6, b"\1" * 0x1000),
                                (0x555600000000, 6, b"")])
    image.segments[2].memsz = 0x4000
    image.add(eb.PT_LOAD, b"", vaddr=0x555700000000, flags=6)       # memsz 0: left out
    reader = memscan.CoreReader(str(image.write(tmp_path / "c")))
    try:
        assert [(r.start, r.end, r.size) for r in reader.regions] == [
            (0x555500000000, 0x555500001000, 0x1000), (0x555600000000, 0x555600004000, 0)]
        assert reader.missing == 0 and memscan.scan(reader, ANCHORS)[1] == 0x1000
        assert 0x555600003000 in memscan.RegionMap(reader.regions)
    finally:
        reader.close()


def test_truncated_core_counts_missing_bytes(tmp_path):
    rw = memory_with({}, 0x2000)
    core = build_core(tmp_path / "t.core", [(0x555500000000, 6, rw)], truncate=-0x800)
    reader = memscan.CoreReader(str(core))
    assert reader.missing == 0x800 and reader.regions[0].size == 0x1800
    hits, scanned = memscan.scan(reader, ANCHORS)
    assert scanned == 0x1800 and reader.missing == 0x800
    reader.close()


def test_truncated_read_only_segments_are_not_missing_memory(tmp_path):
    core = build_core(tmp_path / "t.core", [(0x555500000000, 6, b"\0" * 0x1000),
                                            (0x7F0000000000, 4, b"\0" * 0x1000)],
                      truncate=-0x1800)
    reader = memscan.CoreReader(str(core))
    assert reader.missing == 0x800 and [r.size for r in reader.regions] == [0x800, 0]
    reader.close()


def test_notes_cut_off_and_garbage_notes_still_give_segments(tmp_path):
    """A cut or garbage note segment loses mappings, never the memory segments."""
    files = [(0x7F1000000000 + 0x10000 * i, 0x7F1000001000 + 0x10000 * i) for i in range(40)]
    image = eb.core(eb.note(eb.NT_FILE, b"CORE", eb.file_note(
        [(s, e, 0, "/lib/libglib-2.0.so.0") for s, e in files])),
        loads=[(0x555500000000, 6, b"\0" * 0x1000)], notes_last=True)
    data = image.build()
    (tmp_path / "cut.core").write_bytes(data[:-100])
    reader = memscan.CoreReader(str(tmp_path / "cut.core"))
    assert reader.extra_mapped == [] and [r.size for r in reader.regions] == [0x1000]
    reader.close()
    huge = eb.core(eb.note(eb.NT_FILE, b"CORE", eb.file_note(
        [(s, e, 0, "/x") for s, e in files], count=1 << 62)),
        loads=[(0x555500000000, 6, b"\0" * 0x1000)])
    reader = memscan.CoreReader(str(huge.write(tmp_path / "count.core")))
    assert reader.extra_mapped == [] and len(reader.regions) == 1
    reader.close()


def _one_line_scan_error(path, message):
    with pytest.raises(memscan.ScanError) as caught:
        memscan.CoreReader(str(path))
    assert "\n" not in str(caught.value)
    assert re.search(message, str(caught.value)), str(caught.value)


@pytest.mark.parametrize("content,message", [
    (b"not an elf at all" * 8, "not an ELF file"),
    (b"", "not an ELF file"),
    (b"\x7fELF\x01\x01" + b"\0" * 80, "64-bit"),
    (b"\x7fELF\x02\x01\x01" + b"\0" * 20, "truncated"),
    (b"\x7fELF" + bytes(range(256)) * 4, "not a 64-bit"),
])
def test_bad_core_files(tmp_path, content, message):
    path = tmp_path / "bad.core"
    path.write_bytes(content)
    _one_line_scan_error(path, message)
    with pytest.raises(memscan.ScanError, match="cannot read core file"):
        memscan.CoreReader(str(tmp_path / "missing.core"))


def test_bad_core_program_headers(tmp_path):
    exe = eb.Image(eb.ET_DYN).add(eb.PT_LOAD, b"\0" * 64).write(tmp_path / "exe")
    _one_line_scan_error(exe, "not a core file")
    image = build_core(tmp_path / "t.core", [(0x555500000000, 6, b"\0" * 64)])
    data = image.read_bytes()
    (tmp_path / "cut").write_bytes(data[:64 + 56 + 10])
    _one_line_scan_error(tmp_path / "cut", "truncated \\(program headers cut off\\)")
    many = eb.core(b"")
    many.phnum = 0xFFFF - 1
    _one_line_scan_error(many.write(tmp_path / "many"), "program headers cut off")
    _one_line_scan_error(eb.Image(eb.ET_CORE).write(tmp_path / "none"),
                         "core file without program headers")


def _readelf_loads(path):
    """(vaddr, memsz, offset, filesz, writable) of every LOAD line of binutils' readelf -l."""
    if not shutil.which("readelf"):
        pytest.skip("binutils' readelf is not installed")
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True,
                         check=True, env=dict(os.environ, LC_ALL="C")).stdout
    loads = []
    for offset, vaddr, filesz, memsz, flags in re.findall(
            r"^\s*LOAD\s+(0x\w+)\s+(0x\w+)\s+0x\w+\s+(0x\w+)\s+(0x\w+)\s+([RWE ]+?)\s+0x",
            out, re.M):
        loads.append((int(vaddr, 16), int(memsz, 16), int(offset, 16), int(filesz, 16),
                      "W" in flags))
    assert loads, out
    return sorted(loads)


def test_real_core_segments_and_scan(sleep_core):  # noqa: F811
    reader = memscan.CoreReader(str(sleep_core.path))
    try:
        assert reader.missing == 0
        assert sorted((r.start, r.length, r.offset, r.size, r.writable)
                      for r in reader.regions) == _readelf_loads(sleep_core.path)
        assert {(start, end) for start, end, _p in sleep_core.maps} <= set(reader.extra_mapped)
        exe_start = min(s for s, _e, p in sleep_core.maps if p == sleep_core.executable)
        assert reader.read(exe_start, 4) == b"\x7fELF"
        # the auxiliary vector sits on the (writable) stack: AT_PHDR and AT_ENTRY words there
        anchors = {sleep_core.auxv[AT_PHDR]: "phdr", sleep_core.auxv[AT_ENTRY]: "entry"}
        for backend in BACKENDS:
            hits, scanned = memscan.scan(reader, anchors, backend=backend)
            assert scanned == sum(r.size for r in reader.regions if r.writable)
            keys = {h.value: reader.read(h.address - 8, 8) for h in hits}
            assert keys[sleep_core.auxv[AT_PHDR]] == struct.pack("<Q", AT_PHDR)
            assert keys[sleep_core.auxv[AT_ENTRY]] == struct.pack("<Q", AT_ENTRY)
    finally:
        reader.close()


def test_proc_reader_on_this_process():
    marker = bytearray(memory_with({0x100: QEMU}, 0x1000))   # a writable heap buffer
    reader = memscan.ProcReader(os.getpid())
    try:
        assert any(r.name == "[heap]" and r.writable for r in reader.regions) or \
            any(r.writable for r in reader.regions)
        hits, _ = memscan.scan(reader, {QEMU: 1})
        import ctypes
        address = ctypes.addressof(ctypes.c_char.from_buffer(marker)) + 0x100
        assert address in {h.address for h in hits}
        assert reader.read(address, 8) == struct.pack("<Q", QEMU)
    finally:
        reader.close()


def test_without_leaves_out_exactly_the_spans_inside_each_region():
    """``without`` (bisecting to the first span when given the spans' ends, stopping at the
    first span past the region) against a model that looks at every address: the pieces are
    the runs of the region outside every span, and each key counts the bytes left out."""
    import random
    rng = random.Random(9)

    class Live:
        kind = "live"
    for _ in range(400):
        cuts = sorted(rng.sample(range(0, 4000, 8), 2 * rng.randrange(0, 12)))
        spans = [(cuts[i], cuts[i + 1], f"k{rng.randrange(3)}") for i in range(0, len(cuts), 2)]
        ends = [end for _start, end, _key in spans]
        # the region's ends on, next to or away from the spans' edges
        edges = [c + d for c in cuts for d in (-8, 0, 8)] or [0]
        start, end = sorted(rng.choice(edges) if rng.random() < 0.7 else 8 * rng.randrange(500)
                            for _ in range(2))
        if start < 0 or end <= start:
            continue
        region = memscan.Region(start, end, start, 0, True)
        outside = [a for a in range(region.start, region.end)
                   if not any(s <= a < e for s, e, _k in spans)]
        runs = []
        for address in outside:
            if runs and runs[-1][1] == address:
                runs[-1][1] = address + 1
            else:
                runs.append([address, address + 1])
        left_out = {}
        for s, e, key in spans:
            inside = max(0, min(e, region.end) - max(s, region.start))
            if inside:
                left_out[key] = left_out.get(key, 0) + inside
        for given_ends in (ends, None):
            pieces, counted = memscan.without(Live(), region, spans, given_ends)
            assert [[p.start, p.end] for p in pieces] == runs
            assert counted == left_out
