"""Facts about the QEMU binary itself: its version string and its own code.

``disconnect_locking()`` answers "does this binary's tcp_chr_disconnect() take
chr_write_lock?" from the function's machine code (gdb's disassembler over the function's
block), not from a version number: QEMU 4.2+ wraps tcp_chr_disconnect_locked() in
qemu_mutex_lock()/qemu_mutex_unlock(); older (or patched) builds call it, or do the work,
without the lock.  ``qemu_mutex_lock()`` is an indirect call through ``qemu_mutex_lock_func``
(the sync-profiler hook) in most builds, so a load of that pointer counts as taking the lock,
as does a direct call to ``qemu_mutex_lock_impl`` or ``pthread_mutex_lock``.
"""
import re

import gdb

from qemu_chardev.files import elf as corefile
from qemu_chardev.target import memory as target
from qemu_chardev.model.diagnosis import DisconnectLocking

FUNCTION = "tcp_chr_disconnect"
LOCKED_BODY = "tcp_chr_disconnect_locked"
MAX_FUNCTION_BYTES = 1 << 16
_LOCK_SYMBOLS = ("qemu_mutex_lock_func", "qemu_mutex_lock_impl", "qemu_rec_mutex_lock_impl",
                 "pthread_mutex_lock", "__pthread_mutex_lock")
_UNLOCK_SYMBOLS = ("qemu_mutex_unlock_impl", "qemu_rec_mutex_unlock_impl",
                   "pthread_mutex_unlock", "__pthread_mutex_unlock")
_SYMBOL_RE = re.compile(r"<([A-Za-z_][\w.]*?)(?:@plt)?(?:\+\d+)?>")
# A line of `maint info sections NAME`:  [16]  0x20d000->0x2630e8 at 0x0020d000: .rodata ...
_SECTION_RE = re.compile(r"0x([0-9a-f]+)->0x([0-9a-f]+) at 0x([0-9a-f]+): (\S+)")

_cache = target.objfile_cache()


def main_objfile():
    """The program's own objfile (the first one gdb loaded), or None."""
    objfiles = gdb.current_progspace().objfiles()
    return objfiles[0] if objfiles else None


def section_bytes(name):
    """The bytes of section ``name`` of the program's executable, or None.

    gdb already knows where the section lies in the file (`maint info sections`): reading
    those bytes needs no ELF parser, where pyelftools would cost its import (tens of ms, most
    of what `qemu chardev list` adds to gdb's own start) in every gdb.  pyelftools is the
    fallback when gdb's answer cannot be read."""
    key = ("section", name)
    if key not in _cache:
        _cache[key] = _read_section(name)
    return _cache[key]


def _read_section(name):
    objfile = main_objfile()
    if objfile is None or not objfile.filename:
        return None
    try:
        listing = gdb.execute(f"maint info sections {name}", to_string=True)
    except gdb.error:
        listing = ""
    for start, end, offset, section in _SECTION_RE.findall(listing):
        if section != name:
            continue
        size = int(end, 16) - int(start, 16)
        try:
            with open(objfile.filename, "rb") as handle:
                handle.seek(int(offset, 16))
                data = handle.read(size)
        except OSError:
            return None
        return data if len(data) == size else None
    try:
        return corefile.section_bytes(objfile.filename, name)
    except (OSError, corefile.ElfError):
        return None


def qemu_version():
    """The version string in the binary's read-only data ("7.2.22"), or None."""
    if "version" not in _cache:
        _cache["version"] = corefile.qemu_version_in(section_bytes(".rodata"))
    return _cache["version"]


def _function_block(name):
    symbol = gdb.lookup_static_symbol(name) or gdb.lookup_global_symbol(name)
    if symbol is None or symbol.addr_class != gdb.SYMBOL_LOC_BLOCK:
        return None, None
    address = int(symbol.value().address)
    block = gdb.block_for_pc(address)
    while block is not None and block.function is None:
        block = block.superblock
    return address, block


def referenced_symbols(instructions):
    """Symbol names that disassembled instructions mention ("<sym>", "<sym+8>", "<sym@plt>")."""
    names = []
    for insn in instructions:
        for name in _SYMBOL_RE.findall(insn.get("asm", "")):
            if name not in names:
                names.append(name)
    return names


def judge_disconnect(symbols):
    """(takes_lock, evidence) from the symbols tcp_chr_disconnect's code refers to (pure)."""
    locks = [s for s in symbols if s in _LOCK_SYMBOLS]
    unlocks = [s for s in symbols if s in _UNLOCK_SYMBOLS]
    calls_body = LOCKED_BODY in symbols
    if locks:
        evidence = "its code uses " + ", ".join(locks + unlocks)
        if calls_body:
            evidence += f" around the call to {LOCKED_BODY}"
        return True, evidence
    if calls_body:
        return False, f"its code calls {LOCKED_BODY} without any mutex lock"
    return False, "its code takes no mutex lock (the whole disconnect runs unlocked)"


def disconnect_locking():
    """DisconnectLocking for this binary's tcp_chr_disconnect (cached per objfile set)."""
    if "disconnect" in _cache:
        return _cache["disconnect"]
    result = _read_disconnect_locking()
    _cache["disconnect"] = result
    return result


def _read_disconnect_locking():
    try:
        address, block = _function_block(FUNCTION)
    except (gdb.error, RuntimeError) as exc:
        return DisconnectLocking(None, f"{FUNCTION} not readable: {exc}")
    if address is None:
        return DisconnectLocking(None, f"no function {FUNCTION} in the debug info "
                                 "(inlined, or not a QEMU build with chardev support)")
    if block is None or not block.start < block.end <= block.start + MAX_FUNCTION_BYTES:
        return DisconnectLocking(None, f"{FUNCTION} has no usable code range", address=address)
    arch = None
    try:
        arch = gdb.selected_inferior().architecture()
    except (AttributeError, gdb.error, RuntimeError):
        try:
            arch = gdb.selected_frame().architecture()
        except (gdb.error, RuntimeError):
            arch = None
    if arch is None:
        return DisconnectLocking(None, "no architecture to disassemble with", address=address)
    try:
        instructions = arch.disassemble(block.start, block.end - 1)
    except (gdb.error, gdb.MemoryError, RuntimeError) as exc:
        return DisconnectLocking(None, f"cannot disassemble {FUNCTION}: {exc}",
                                 address=address)
    takes, evidence = judge_disconnect(referenced_symbols(instructions))
    return DisconnectLocking(takes, evidence, address=address)
