"""Writable memory that is not heap: guest RAM, the TCG code buffer, unused thread stacks.

A ``qemu-system-*`` process maps the guest's RAM and TCG's translated code next to its heap,
all of it writable; neither can hold a GSource (or any other QEMU host structure), and in a
production core they are nearly all of its bytes.  Every thread's stack (8 MiB each, dumped
whole) is writable too, and below a thread's stack pointer nothing is in use.  The census
skips what ``not_heap`` returns.

- RAMBlocks: ``ram_list.blocks`` (QLIST via ``next.le_next``), each block's ``host`` and
  ``max_length`` (the mapping reserved for it; ``used_length`` is the part in use), named by
  ``idstr``.  The same names in QEMU 5.2, 7.2 and 10.2 (their sources checked).
- TCG: ``tcg_init_ctx.code_gen_buffer`` and ``code_gen_buffer_size`` (the buffer that
  tcg/region.c splits into regions, past the prologue at its first page; QEMU 6.0+, the same
  names before in accel/tcg/translate-all.c: 5.2, 7.2 and 10.2 checked; tested on 7.2).

- Thread stacks: from the start of the writable mapping holding a thread's stack pointer up
  to the pointer (less the 128-byte red zone), when a guard page (not writable) lies right
  under that mapping, as glibc and qemu_alloc_stack (coroutines) put it, so the mapping is a
  stack; live, the main thread's [stack] too.

Everything is read through ``Layout``/``View`` (one read per structure), bounded, and checked:
a span is returned only when its start and size are plausible and it lies in mapped memory.
Anything unreadable is noted and skips nothing (scanning more is always safe).  Programs
without these globals (qemu-storage-daemon, tools) have nothing to skip.
"""
import bisect
from dataclasses import dataclass

import gdb

from qemu_chardev.model.errors import TargetReadError
from qemu_chardev.target import memory as target
from qemu_chardev.target.memory import Layout

BLOCK_LIMIT = 4096
RED_ZONE = 128              # x86-64 SysV: bytes below the stack pointer a leaf may use
MAX_SPAN = 1 << 47
IDSTR_LIMIT = 64


@dataclass
class Span:
    """[start, end) of the target's memory that is not heap, and why."""
    start: int
    end: int
    why: str                    # "guest RAM", "TCG code buffer", "unused thread stack"
    name: str = ""              # the RAMBlock's idstr

    @property
    def length(self):
        return self.end - self.start

    def to_json(self):
        return {"what": self.why, "name": self.name or None, "start": f"0x{self.start:x}",
                "end": f"0x{self.end:x}", "bytes": self.length}


def _plausible(start, length, is_mapped):
    return bool(start) and not start & 0xfff and 0 < length <= MAX_SPAN and is_mapped(start) \
        and is_mapped(start + min(length, 4096) - 1)


def ram_blocks(snap, is_mapped):
    """[Span] of every RAMBlock's host memory ([] when this program has no ram_list)."""
    address = target.symbol_address("ram_list")
    ram_list = Layout.of("RAMList", "struct RAMList")
    block = Layout.of("RAMBlock", "struct RAMBlock")
    if not address or ram_list is None or block is None or not ram_list.has("blocks.lh_first") \
            or not all(block.has(f) for f in ("host", "max_length", "next.le_next")):
        return []
    spans, seen = [], set()
    try:
        node = snap.mem.view(ram_list, address, "ram_list")["blocks.lh_first"]
        while node and node not in seen:
            if len(seen) >= BLOCK_LIMIT:
                snap.note(f"ram_list: more than {BLOCK_LIMIT} RAMBlocks; the rest not skipped")
                break
            seen.add(node)
            view = snap.mem.view(block, node, "RAMBlock")
            host, length = view["host"], view["max_length"]
            name = _idstr(snap, block, view)
            if _plausible(host, length, is_mapped):
                spans.append(Span(host, host + length, "guest RAM", name))
            elif host:
                snap.note(f"RAMBlock {name or hex(node)}: host 0x{host:x} max_length {length} "
                          "implausible; not skipped")
            node = view["next.le_next"]
    except TargetReadError as exc:
        snap.note(f"ram_list: {exc}; the rest not skipped")
    return spans


def _idstr(snap, block, view):
    field = block.field("idstr")
    if field is None:
        return ""
    raw = view.buf[field.offset:field.offset + min(field.size, IDSTR_LIMIT)]
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def tcg_buffer(snap, is_mapped):
    """[Span] of TCG's code buffer ([] without TCG, or before it was allocated)."""
    address = target.symbol_address("tcg_init_ctx")
    ctx = Layout.of("TCGContext", "struct TCGContext")
    if not address or ctx is None:
        return []
    start_f, size_f = ctx.field("code_gen_buffer"), ctx.field("code_gen_buffer_size")
    if start_f is None or size_f is None:
        return []
    try:
        start = snap.mem.pointer(address + start_f.offset, "tcg_init_ctx.code_gen_buffer")
        size = int.from_bytes(snap.mem.read(address + size_f.offset, size_f.size,
                                            "tcg_init_ctx.code_gen_buffer_size"), "little")
    except TargetReadError as exc:
        snap.note(f"tcg_init_ctx: {exc}; TCG code buffer not skipped")
        return []
    # code_gen_buffer points past the prologue TCG wrote at the start of the buffer (7.2:
    # 0x2d bytes in), the size counting from there: the buffer's page holds the prologue.
    page = start & ~0xfff
    if not start or not _plausible(page, size + start - page, is_mapped):
        return []
    return [Span(page, start + size, "TCG code buffer")]


def unused_stacks(snap, regions):
    """[Span] below each thread's stack pointer, down to the start of its writable mapping
    (``regions``: the reader's, sorted by address)."""
    starts = [r.start for r in regions]
    spans = []
    try:
        threads = snap.threads()
    except gdb.error:
        return []
    with snap.switching_threads():
        for lwp in threads:
            sp = snap.stack_pointer(lwp)    # read while its stack was unwound, most often
            if sp is None:
                continue
            i = bisect.bisect_right(starts, sp) - 1
            if i < 0 or not regions[i].writable or sp >= regions[i].end:
                continue
            # Only a stack: its guard page (not writable) right below it, as glibc and
            # qemu_alloc_stack map them, or the main thread's [stack] (live).  A stack
            # pointer that is garbage, or a stack inside a heap mapping, skips nothing.
            below = regions[i - 1] if i > 0 else None
            if not (below is not None and below.end == regions[i].start and not below.writable
                    or regions[i].name == "[stack]"):
                continue
            end = (sp - RED_ZONE) & ~7
            if end > regions[i].start:
                spans.append(Span(regions[i].start, end, "unused thread stack", f"LWP {lwp}"))
    return spans


def not_heap(snap, is_mapped, regions=()):
    """[Span] sorted, not overlapping: the guest RAM and TCG code buffer of this QEMU, and the
    unused part of every thread's stack (``regions``: the reader's, sorted by address)."""
    spans = sorted(ram_blocks(snap, is_mapped) + tcg_buffer(snap, is_mapped)
                   + (unused_stacks(snap, regions) if regions else []),
                   key=lambda s: s.start)
    out = []
    for span in spans:
        if out and span.start < out[-1].end:       # overlapping: keep the first, clip
            if span.end <= out[-1].end:
                continue
            span = Span(out[-1].end, span.end, span.why, span.name)
        out.append(span)
    return out
