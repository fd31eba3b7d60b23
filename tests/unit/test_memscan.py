"""memscan: ELF core segments and NT_FILE, /proc maps, and both search backends."""
import os
import struct

import pytest

from qemu_chardev.files import memscan

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
    """A minimal ELF64 core: PT_NOTE with NT_FILE, then PT_LOAD segments (vaddr, flags, data)."""
    desc = struct.pack("<QQ", len(files), 4096)
    desc += b"".join(struct.pack("<QQQ", s, e, 0) for s, e in files)
    desc += b"".join(b"/lib/x.so\0" for _ in files)
    desc += b"\0" * (-len(desc) % 4)
    note = struct.pack("<III", 5, len(desc), memscan.NT_FILE) + b"CORE\0\0\0\0" + desc
    phnum = 1 + len(segments)
    offset = 64 + 56 * phnum
    phdrs = struct.pack("<IIQQQQQQ", memscan.PT_NOTE, 4, offset, 0, 0, len(note), 0, 1)
    offset += len(note)
    body = note
    for vaddr, flags, data in segments:
        phdrs += struct.pack("<IIQQQQQQ", memscan.PT_LOAD, flags, offset, vaddr, 0, len(data),
                             len(data), 0x1000)
        body += data
        offset += len(data)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\0" * 9, 4, 62, 1, 0,
                       64, 0, 0, 64, 56, phnum, 64, 0, 0)
    blob = ehdr + phdrs + body
    path.write_bytes(blob[:truncate] if truncate else blob)
    return path


def test_core_reader_segments_notes_and_reads(tmp_path):
    rw = memory_with({0x40: QEMU}, 0x2000)
    ro = memory_with({0x80: GLIB}, 0x1000)      # read-only: never scanned
    core = build_core(tmp_path / "t.core", [(0x555500000000, 6, rw), (0x7F0000000000, 4, ro)],
                      files=[(0x7F1000000000, 0x7F1000004000)])
    reader = memscan.CoreReader(str(core))
    try:
        assert [(r.start, r.writable, r.size) for r in reader.regions] == [
            (0x555500000000, True, 0x2000), (0x7F0000000000, False, 0x1000)]
        assert reader.extra_mapped == [(0x7F1000000000, 0x7F1000004000)]
        hits, scanned = memscan.scan(reader, ANCHORS)
        assert scanned == 0x2000 and [h.address for h in hits] == [0x555500000040]
        assert reader.read(0x555500000040, 8) == struct.pack("<Q", QEMU)
        assert reader.read(0x555500001FFC, 8) is None     # runs off the segment
        mapped = memscan.RegionMap(reader.regions, reader.extra_mapped)
        assert 0x7F1000000010 in mapped and 0x7F1000004000 not in mapped
    finally:
        reader.close()


def test_truncated_core_counts_missing_bytes(tmp_path):
    rw = memory_with({}, 0x2000)
    core = build_core(tmp_path / "t.core", [(0x555500000000, 6, rw)], truncate=-0x800)
    reader = memscan.CoreReader(str(core))
    assert reader.missing == 0x800 and reader.regions[0].size == 0x1800
    reader.close()


@pytest.mark.parametrize("content,message", [(b"not an elf at all" * 8, "not an ELF file"),
                                             (b"\x7fELF\x01\x01" + b"\0" * 80, "64-bit")])
def test_bad_core_files(tmp_path, content, message):
    path = tmp_path / "bad.core"
    path.write_bytes(content)
    with pytest.raises(memscan.ScanError, match=message):
        memscan.CoreReader(str(path))
    with pytest.raises(memscan.ScanError, match="cannot read core file"):
        memscan.CoreReader(str(tmp_path / "missing.core"))


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
