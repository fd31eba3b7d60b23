"""Mutations of a real QEMU core, confined to what a damaged process or a cut-off copy shows.

Memory mutations change only bytes of writable PT_LOAD segments (the heap, thread stacks,
.data/.bss, anonymous mappings): what a memory-corrupting bug can change.  The ELF header,
program headers and notes stay intact.  Truncations cut the file at a boundary that matters:
inside the notes, right after the program headers, at the start of a PT_LOAD segment, at a
fraction of the file.

Every mutation is a ``Mutation``: a name, the byte patches [(file offset, new bytes)] or a
truncation length, and the target addresses it touched ([(address, size)]) so the oracle can
tell whether the report read any of them.  Patches are applied to a working copy and undone
from the saved original bytes, so a campaign copies a large core once.
"""
import struct
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from qemu_chardev.files import elf

HEAP_NEAR = 1 << 40        # the brk heap lies this close above the executable


@dataclass
class Mutation:
    kind: str
    detail: str
    patches: List[Tuple[int, bytes]] = field(default_factory=list)
    touched: List[Tuple[int, int]] = field(default_factory=list)    # (address, size)
    truncate_to: Optional[int] = None
    wrong_binary: bool = False

    def to_json(self):
        return {"kind": self.kind, "detail": self.detail,
                "touched": [[f"0x{a:x}", n] for a, n in self.touched][:64],
                "patches": [[offset, data.hex()] for offset, data in self.patches],
                "truncate_to": self.truncate_to, "wrong_binary": self.wrong_binary}

    @classmethod
    def from_json(cls, obj):
        """The mutation a campaign recorded (to replay a failing core)."""
        return cls(obj["kind"], obj["detail"],
                   [(offset, bytes.fromhex(data)) for offset, data in obj.get("patches", [])],
                   [(int(a, 16), n) for a, n in obj.get("touched", [])],
                   obj.get("truncate_to"), obj.get("wrong_binary", False))


class CoreImage:
    """The writable segments of a core (from its program headers) and a way to patch it."""

    def __init__(self, path):
        self.path = str(path)
        self.layout = elf.core_layout(self.path)
        self.writable = [s for s in self.layout.loads
                         if s.writable and s.present and s.present == s.filesz]
        self.heap = heap_segment(self.layout)

    def segment_of(self, address):
        for seg in self.writable:
            if seg.vaddr <= address < seg.vaddr + seg.filesz:
                return seg
        return None

    def offset_of(self, address):
        seg = self.segment_of(address)
        return None if seg is None else seg.offset + (address - seg.vaddr)

    def read_at(self, handle, address, size):
        offset = self.offset_of(address)
        if offset is None:
            return None
        handle.seek(offset)
        return handle.read(size)

    def mapped(self, value):
        return any(s.vaddr <= value < s.vaddr + s.memsz for s in self.layout.loads)


def heap_segment(layout):
    """The brk heap ([heap]): the largest anonymous writable segment just above the
    executable's mappings (NT_FILE names every file-backed one)."""
    exe = layout.info.program or ""
    exe_maps = [m for m in layout.mappings if m[3].rsplit("/", 1)[-1].startswith(exe[:15])]
    if not exe_maps:
        return None
    exe_end = max(m[1] for m in exe_maps)
    named = [(m[0], m[1]) for m in layout.mappings]
    best = None
    for seg in layout.loads:
        if not seg.writable or not exe_end <= seg.vaddr < exe_end + HEAP_NEAR:
            continue
        if any(a <= seg.vaddr < b for a, b in named):
            continue
        if best is None or seg.filesz > best.filesz:
            best = seg
    return best


# --- memory mutations -------------------------------------------------------------------

def _random_address(rng, segs, size=1, align=1):
    weights = [max(1, s.filesz) for s in segs]
    seg = rng.choices(segs, weights)[0]
    span = seg.filesz - size
    address = seg.vaddr + rng.randrange(0, max(1, span))
    return address - address % align


def flip_bytes(img, rng, handle, where, count):
    """``count`` random bytes XORed with a non-zero value at random places of ``where``."""
    m = Mutation("flip", f"{count} bytes flipped in {_where_name(img, where)}")
    for _ in range(count):
        address = _random_address(rng, where)
        old = img.read_at(handle, address, 1)
        new = bytes([old[0] ^ rng.randrange(1, 256)])
        m.patches.append((img.offset_of(address), new))
        m.touched.append((address, 1))
    return m


def zero_words(img, rng, handle, where, count):
    m = Mutation("zero", f"{count} words zeroed in {_where_name(img, where)}")
    for _ in range(count):
        address = _random_address(rng, where, 8, 8)
        m.patches.append((img.offset_of(address), bytes(8)))
        m.touched.append((address, 8))
    return m


def swap_pointers(img, rng, handle, where, count, tries=4000):
    """``count`` pairs of pointer-looking words (values inside a mapping) exchanged."""
    m = Mutation("swap", f"{count} pointer pairs swapped in {_where_name(img, where)}")
    found = []
    for _ in range(tries):
        if len(found) >= 2 * count:
            break
        address = _random_address(rng, where, 8, 8)
        word = img.read_at(handle, address, 8)
        value = struct.unpack("<Q", word)[0]
        if value and img.mapped(value) and all(a != address for a, _w in found):
            found.append((address, word))
    for (a, wa), (b, wb) in zip(found[0::2], found[1::2]):
        if wa == wb:
            continue
        m.patches += [(img.offset_of(a), wb), (img.offset_of(b), wa)]
        m.touched += [(a, 8), (b, 8)]
    return m


def garbage_pointer(img, rng, handle, where, count, tries=4000):
    """Pointer-looking words replaced by addresses outside every mapping."""
    m = Mutation("wild", f"{count} pointers made wild in {_where_name(img, where)}")
    done = 0
    for _ in range(tries):
        if done >= count:
            break
        address = _random_address(rng, where, 8, 8)
        value = struct.unpack("<Q", img.read_at(handle, address, 8))[0]
        if not (value and img.mapped(value)):
            continue
        wild = rng.choice([0xdeadbeef00 + rng.randrange(256) * 8, value ^ (1 << 46),
                           (1 << 47) - 8 * rng.randrange(1, 64), value | 1])
        m.patches.append((img.offset_of(address), struct.pack("<Q", wild)))
        m.touched.append((address, 8))
        done += 1
    return m


def read_set_mutation(img, rng, handle, reads, count):
    """Bytes changed inside ranges the healthy run read (``reads``: [(address, size)])."""
    reads = [(a, n) for a, n in reads if img.offset_of(a) is not None
             and img.offset_of(a + n - 1) is not None]
    if not reads:
        return None
    style = rng.choice(["flip", "zero", "ones", "small"])
    m = Mutation("read-set", f"{count} {style} changes inside bytes the healthy report read")
    for _ in range(count):
        base, size = rng.choice(reads)
        if style in ("zero", "ones", "small") and size >= 8:
            off = rng.randrange(0, size - 7) & ~7 if size > 8 else 0
            address = base + off
            new = {"zero": bytes(8), "ones": b"\xff" * 8,
                   "small": struct.pack("<Q", rng.choice([1, 2, 3, 7, 0x41, 0x100000000]))}[style]
            old = img.read_at(handle, address, 8)
            if old == new:
                new = bytes(b ^ 0x5a for b in old)
            m.patches.append((img.offset_of(address), new))
            m.touched.append((address, 8))
        else:
            address = base + rng.randrange(0, size)
            old = img.read_at(handle, address, 1)
            m.patches.append((img.offset_of(address), bytes([old[0] ^ rng.randrange(1, 256)])))
            m.touched.append((address, 1))
    return m


def _where_name(img, where):
    if img.heap is not None and where == [img.heap]:
        return "[heap]"
    return "writable mappings"


# --- truncations ------------------------------------------------------------------------

def truncations(img, rng):
    """Truncation points of this core: [(name, length)]."""
    layout = img.layout
    with open(img.path, "rb") as handle:
        header = handle.read(64)
    phoff = struct.unpack_from("<Q", header, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", header, 54)
    ph_end = phoff + phentsize * phnum
    notes = _note_ranges(img.path, phoff, phentsize, phnum)
    points = [("inside ELF header", rng.randrange(8, 64)),
              ("inside program headers", rng.randrange(phoff + 1, ph_end))]
    if notes:
        start, end = notes[0]
        points.append(("inside notes", rng.randrange(start + 1, end)))
        points.append(("right after notes", end))
    points.append(("right after program headers", ph_end))
    loads = sorted({s.offset for s in layout.loads if s.filesz and s.offset > ph_end})
    if loads:
        points.append(("at a segment boundary", rng.choice(loads)))
        points.append(("mid segment", rng.choice(loads) + rng.randrange(1, 4096)))
    points.append(("at 90%", layout.file_size * 9 // 10))
    points.append(("at 50%", layout.file_size // 2))
    return points


def _note_ranges(path, phoff, phentsize, phnum):
    out = []
    with open(path, "rb") as handle:
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    for i in range(phnum):
        p_type, _flags, offset, _v, _p, filesz = struct.unpack_from("<IIQQQQ", table,
                                                                   i * phentsize)
        if p_type == 4 and filesz:
            out.append((offset, offset + filesz))
    return out


def truncation(img, rng, choice=None):
    points = truncations(img, rng)
    name, length = choice if choice else rng.choice(points)
    m = Mutation("truncate", f"cut {name} ({length} of {img.layout.file_size} bytes)",
                 truncate_to=length)
    return m


def expected_unusable(mutation, img):
    """True when the input cannot be analysed at all: exit 2 is then the right answer."""
    if mutation.wrong_binary:
        return True
    if mutation.truncate_to is None:
        return False
    with open(img.path, "rb") as handle:
        header = handle.read(64)
    phoff = struct.unpack_from("<Q", header, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", header, 54)
    notes = _note_ranges(img.path, phoff, phentsize, phnum)
    needed = max([phoff + phentsize * phnum] + [end for _s, end in notes])
    return mutation.truncate_to < needed


def apply(path, mutation, handle=None):
    """Write the patches; returns [(offset, original bytes)] to undo them."""
    undo = []
    own = handle is None
    handle = handle or open(path, "r+b")
    try:
        for offset, data in mutation.patches:
            handle.seek(offset)
            undo.append((offset, handle.read(len(data))))
        for offset, data in mutation.patches:
            handle.seek(offset)
            handle.write(data)
        handle.flush()
    finally:
        if own:
            handle.close()
    return undo


def undo(path, saved):
    with open(path, "r+b") as handle:
        for offset, data in reversed(saved):
            handle.seek(offset)
            handle.write(data)


def random_memory_mutation(img, rng, handle, reads):
    """One memory mutation drawn at random (the campaign's mix)."""
    heap = [img.heap] if img.heap is not None else img.writable
    kind = rng.choices(["flip-heap", "flip-any", "zero", "swap", "wild", "read-set"],
                       [3, 1, 1, 2, 1, 4])[0]
    count = rng.choice([1, 2, 4, 8, 16, 64])
    if kind == "flip-heap":
        return flip_bytes(img, rng, handle, heap, count)
    if kind == "flip-any":
        return flip_bytes(img, rng, handle, img.writable, count)
    if kind == "zero":
        return zero_words(img, rng, handle, heap, min(count, 16))
    if kind == "swap":
        return swap_pointers(img, rng, handle, heap, min(count, 8))
    if kind == "wild":
        return garbage_pointer(img, rng, handle, heap, min(count, 8))
    return read_set_mutation(img, rng, handle, reads, min(count, 8)) or \
        flip_bytes(img, rng, handle, heap, count)
