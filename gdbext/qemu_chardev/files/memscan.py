"""Finding pointer values in a process's writable memory, fast (no gdb imports).

The census looks for GSources by the value of their ``source_funcs`` pointer.  Searching for
an 8-byte little-endian pointer with ``bytes.find`` is slow: its last byte is 0, and memory is
full of zeros.  Pointers into one library share their middle bytes, so the anchors are grouped
by bytes 2..5 of their value and each group is searched with one 4-byte needle; a match is kept
only when it sits at bytes 2..5 of an 8-byte aligned word whose full value is an anchor.  This
runs at several GB/s, about the speed of reading the memory at all.

Memory comes from a core file (its writable PT_LOAD segments, listed by ``elf.core_layout``,
read in bounded windows) or from a live process (``/proc/PID/maps`` and ``/proc/PID/mem``,
opened read-only).  Nothing is ever written.
"""
import bisect
import itertools
import os
import struct
import sys
from dataclasses import dataclass

from qemu_chardev.files import elf

WINDOW = 4 << 20            # bytes read and searched at a time (bounded memory)
# Readers put a window's first byte LEAD bytes into their buffer: bytes 2..5 of every 8-byte
# word (the needle) then sit at 4-byte aligned positions, which numpy compares twice as fast.
LEAD = 6


class ScanError(Exception):
    """Memory could not be enumerated or read (bad core file, process gone)."""


@dataclass
class Region:
    """One mapping: [start, end) in the target, where its bytes are, and its permissions."""
    start: int
    end: int
    offset: int = 0          # file offset (core) or address (live)
    size: int = 0            # bytes available in the file (core: p_filesz, clipped)
    writable: bool = False
    readable: bool = True
    name: str = ""

    @property
    def length(self):
        return self.end - self.start


def core_regions(path):
    """The PT_LOAD segments of an ELF core (``elf.core_layout`` reads its headers).

    Returns ([Region] sorted by address, missing bytes, [(start, end)] of the file-backed
    mappings its NT_FILE note lists).  ``size`` is how much of a segment the file really holds
    (a truncated core holds less); the writable bytes it lacks are the missing bytes.  Segments
    of a core hold only what was dumped: read-only file contents (a library's .rodata, where
    static GSource names live) are often left out but are still mapped.
    """
    try:
        layout = elf.core_layout(path)
    except OSError as exc:
        raise ScanError(f"cannot read core file {path}: {exc.strerror}") from None
    except elf.ElfError as exc:
        raise ScanError(str(exc)) from None
    if not layout.phnum:
        raise ScanError(f"{path}: core file without program headers")
    regions, missing = [], 0
    for seg in layout.loads:
        if seg.memsz == 0:
            continue
        if seg.filesz and seg.writable:
            missing += seg.filesz - seg.present
        regions.append(Region(seg.vaddr, seg.vaddr + seg.memsz, seg.offset, seg.present,
                              seg.writable, seg.readable))
    regions.sort(key=lambda r: r.start)
    return regions, missing, [(start, end) for start, end, _off, _name in layout.mappings]


def proc_regions(pid):
    """Every mapping of a live process from /proc/PID/maps: [Region]."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ScanError(f"cannot read /proc/{pid}/maps: {exc.strerror}") from None
    regions = []
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        perms = parts[1]
        name = parts[5] if len(parts) > 5 else ""
        # [vvar]/[vsyscall] cannot be read through /proc/PID/mem; they hold no GSources.
        if name in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
            continue
        regions.append(Region(start, end, start, end - start, perms[1] == "w",
                              perms[0] == "r", name))
    return regions


class RegionMap:
    """Which addresses are mapped at all (for validating pointers): bisect over regions."""

    def __init__(self, regions, extra=()):
        spans = sorted([(r.start, r.end) for r in regions] + list(extra))
        merged = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [m[0] for m in merged]
        self._ends = [m[1] for m in merged]

    def __contains__(self, address):
        i = bisect.bisect_right(self._starts, address) - 1
        return i >= 0 and address < self._ends[i]


class CoreReader:
    """Reads a core file's segments (read-only file, one reused buffer)."""

    kind = "core"

    def __init__(self, path, segments=None):
        """``segments``: (regions, missing, mappings) as ``core_regions`` returns them, when
        the caller has them already (gdb has read the core's headers)."""
        self.path = path
        regions, self.missing, self.extra_mapped = segments or core_regions(path)
        self.regions = list(regions)
        try:
            self._file = open(path, "rb")
        except OSError as exc:
            raise ScanError(f"cannot open core file {path}: {exc.strerror}") from None
        self._by_start = [r.start for r in self.regions]
        self._buf = None

    def close(self):
        self._file.close()

    def windows(self, region, window=WINDOW):
        """(address, buffer, first, length): ``buffer[first:first + length]`` holds the bytes
        at ``address``; pieces of at most ``window`` bytes cover the region's file contents.
        One buffer is reused (read with preadv), so memory stays bounded by ``window``."""
        def unreadable(exc):
            raise ScanError(f"cannot read {self.path}: {exc.strerror}") from None
        yield from _windows(self, self._file.fileno(), region.offset, region.start, region.size,
                            window, unreadable)

    def read(self, address, size):
        """``size`` bytes at ``address`` if the core file holds them all, else None."""
        i = bisect.bisect_right(self._by_start, address) - 1
        if i < 0:
            return None
        r = self.regions[i]
        if address < r.start or address + size > r.start + r.size:
            return None
        self._file.seek(r.offset + address - r.start)
        data = self._file.read(size)
        return data if len(data) == size else None


def _windows(reader, fd, file_offset, address, size, window, on_error):
    """The reading loop of ``CoreReader.windows`` / ``ProcReader.windows``.

    Reads ``size`` bytes of ``fd`` from ``file_offset`` into ``reader._buf`` (reused) and
    yields (address, buffer, LEAD, length) per piece; a short read adds the rest to
    ``reader.missing``; ``on_error(OSError)`` returns the count to use or raises.
    """
    if reader._buf is None or len(reader._buf) < window + LEAD:
        reader._buf = bytearray(window + LEAD)
    view = memoryview(reader._buf)
    done = 0
    try:
        while done < size:
            length = min(window, size - done)
            try:
                got = os.preadv(fd, [view[LEAD:LEAD + length]], file_offset + done)
            except OSError as exc:
                got = on_error(exc)
            if got <= 0:
                reader.missing += size - done
                return
            yield address + done, reader._buf, LEAD, got
            done += got
    finally:
        view.release()


class ProcReader:
    """Reads a live (stopped) process's memory through /proc/PID/mem, read-only."""

    kind = "live"

    def __init__(self, pid):
        self.pid = pid
        self.regions = proc_regions(pid)
        self.extra_mapped = []
        self.missing = 0
        try:
            self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        except OSError as exc:
            raise ScanError(f"cannot open /proc/{pid}/mem: {exc.strerror}") from None
        self._buf = None

    def close(self):
        os.close(self._fd)

    def windows(self, region, window=WINDOW):
        """Like ``CoreReader.windows``; one reused buffer, so at most ``window`` bytes held."""
        yield from _windows(self, self._fd, region.start, region.start, region.length, window,
                            lambda _exc: 0)

    def read(self, address, size):
        try:
            data = os.pread(self._fd, size, address)
        except (OSError, OverflowError):
            return None
        return data if len(data) == size else None


def group_anchors(anchors):
    """{4-byte needle: {anchor value: payload}} grouping anchors that share bytes 2..5."""
    groups = {}
    for value, payload in anchors.items():
        needle = struct.pack("<Q", value)[2:6]
        groups.setdefault(needle, {})[value] = payload
    return groups


@dataclass
class Hit:
    """A word equal to an anchor, and the bytes around it (``before`` bytes before it)."""
    address: int             # address of the matching word
    value: int
    data: bytes              # bytes [address - before, address - before + span), or b""


def without(reader, region, exclude, ends=None):
    """The pieces of ``region`` outside the sorted, disjoint [(start, end, key)] spans of
    ``exclude``, as Regions the reader can read, and {key: bytes of the region left out}.
    ``ends``: the spans' ends, in order, when the caller has them: the first span that can
    overlap is found by bisection (a core of 512 threads has 512 unused stacks to leave out
    of about as many regions)."""
    pieces, left_out = [], {}
    cursor = region.start
    first = bisect.bisect_right(ends, region.start) if ends is not None else 0
    for start, end, key in itertools.islice(exclude, first, None):
        if start >= region.end:     # sorted: no later span overlaps either
            break
        if end <= cursor:
            continue
        if start > cursor:
            pieces.append(_piece(reader, region, cursor, start))
        cut = _piece(reader, region, max(start, cursor), min(end, region.end))
        left_out[key] = left_out.get(key, 0) + _available(reader, cut)
        cursor = min(end, region.end)
        if cursor >= region.end:
            break
    if cursor < region.end:
        pieces.append(_piece(reader, region, cursor, region.end))
    return pieces, left_out


def _piece(reader, region, start, end):
    if reader.kind != "core":
        return Region(start, end, start, end - start, region.writable, region.readable,
                      region.name)
    skip = start - region.start
    return Region(start, end, region.offset + skip, max(0, min(region.size - skip, end - start)),
                  region.writable, region.readable, region.name)


def scan(reader, anchors, before=16, span=96, window=WINDOW, writable_only=True,
         backend=None, exclude=(), skipped=None):
    """Every 8-byte aligned word in the reader's (writable) regions equal to an anchor.

    ``anchors`` maps pointer values to anything.  Returns (hits, bytes_scanned); each hit
    carries ``span`` bytes starting ``before`` bytes ahead of the word when the window holds
    them, else b"" (the caller reads those itself).  ``backend``: "numpy", "find" or None
    (numpy when it can be imported).  ``exclude``: sorted, disjoint [(start, end, key)] spans
    not to scan (memory known to hold no such words); the bytes left out of the regions are
    added up by key into the dict ``skipped`` when one is given.
    """
    regions = []
    ends = [end for _start, end, _key in exclude]
    for region in reader.regions:
        if writable_only and not region.writable:
            continue
        if exclude:
            pieces, left_out = without(reader, region, exclude, ends)
            regions += pieces
            if skipped is not None:
                for key, count in left_out.items():
                    skipped[key] = skipped.get(key, 0) + count
        else:
            regions.append(region)
    if backend is None and not os.environ.get("QCG_SCAN_BACKEND"):
        total = sum(_available(reader, r) for r in regions)
        backend = auto_backend(total * len(group_anchors(anchors)))
    search = make_searcher(anchors, backend)
    hits = []
    scanned = 0
    for region in regions:
        for address, buf, first, length in reader.windows(region, window):
            scanned += length
            end = first + length
            for word, value in search(buf, first, length):
                start = word - before
                data = bytes(buf[start:start + span]) if start >= first and \
                    start + span <= end else b""
                hits.append(Hit(address + word - first, value, data))
    return hits, scanned


# ``bytes.find`` passes over the memory once per needle group at about 1.1 GB/s; numpy
# compares at several GB/s but costs about 80 ms to import (once per gdb session).  Below this
# much work (bytes x groups) find is done before numpy would be imported: a qemu-storage-daemon
# core with 26 MiB of writable memory and 2 groups scans in about 45 ms with find, 130 ms with
# numpy and its import.
NUMPY_MIN_WORK = 96 << 20


def _available(reader, region):
    return region.size if reader.kind == "core" else region.length


def auto_backend(work):
    """The backend for ``work`` bytes of searching (bytes to scan x needle groups): numpy
    when it is already imported or the work repays importing it, else find."""
    if _numpy_module or "numpy" in sys.modules or work >= NUMPY_MIN_WORK:
        return "numpy" if _numpy() is not None else "find"
    return "find"


def backend_name(backend=None):
    """The search backend ``scan`` uses: "numpy" if importable (and not disabled), else "find"."""
    if backend in ("numpy", "find"):
        if backend == "numpy" and _numpy() is None:
            raise ScanError("numpy is not available")
        return backend
    if os.environ.get("QCG_SCAN_BACKEND") in ("numpy", "find"):
        return backend_name(os.environ["QCG_SCAN_BACKEND"])
    return "numpy" if _numpy() is not None else "find"


def make_searcher(anchors, backend=None):
    """A function (buf, first, length) -> [(byte offset in buf, anchor value)]."""
    if backend_name(backend) == "numpy":
        return _NumpySearcher(anchors)
    groups = group_anchors(anchors)
    return lambda buf, first, length: find_words(buf, first, length, groups)


def find_words(buf, first, length, groups):
    """Aligned anchor words in ``buf[first:first + length]`` with ``bytes.find``.

    Each group's 4-byte needle (bytes 2..5 of its anchors) is searched; a match counts only
    at bytes 2..5 of an 8-byte aligned word whose full value is one of the group's anchors.
    """
    end = first + length
    find = buf.find
    out = []
    for needle, members in groups.items():
        i = find(needle, first, end)
        while i >= 0:
            word = i - 2
            if word >= first and not (word - first) & 7 and word + 8 <= end:
                value = int.from_bytes(buf[word:word + 8], "little")
                if value in members:
                    out.append((word, value))
            i = find(needle, i + 1, end)
    out.sort()
    return out


_numpy_module = []


def _numpy():
    if not _numpy_module:
        try:
            import numpy
        except ImportError:
            numpy = None
        _numpy_module.append(numpy)
    return _numpy_module[0]


class _NumpySearcher:
    """The same search with numpy, 4 MiB at a time, one comparison per needle group.

    The buffer is viewed as 4-byte integers starting 2 bytes in: element 2k is bytes 2..5 of
    word k, the same 4 bytes the ``bytes.find`` needle uses.  Matches at even elements whose
    full word is an anchor are hits.  Several times faster than ``bytes.find``.
    """

    STEP = 4 << 20

    def __init__(self, anchors):
        np = _numpy()
        self.np = np
        self.anchors = set(anchors)
        self.keys = [np.uint32(int.from_bytes(needle, "little"))
                     for needle in group_anchors(anchors)]
        self.match = np.empty(self.STEP // 4, dtype=bool)

    def __call__(self, buf, first, length):
        np = self.np
        out = []
        total = length - length % 8
        done = 0
        while done < total:
            n = min(self.STEP, total - done)
            offset = first + done
            # 2 * n/8 - 1 elements: the last one would read past the 8-byte word.  With the
            # readers' LEAD they are 4-byte aligned (numpy compares those much faster).
            mid = np.frombuffer(buf, dtype="<u4", count=n // 4 - 1, offset=offset + 2)
            match = self.match[:n // 4 - 1]
            for key in self.keys:
                np.equal(mid, key, out=match)
                if match.any():
                    for i in np.flatnonzero(match).tolist():
                        if i & 1:
                            continue
                        word = offset + 4 * i
                        value = int.from_bytes(buf[word:word + 8], "little")
                        if value in self.anchors:
                            out.append((word, value))
            del mid
            done += n
        out.sort()
        return out
