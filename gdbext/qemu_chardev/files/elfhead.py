"""What an ELF file is, from its first 18 bytes: the one ELF fact needed before gdb starts.

``chardev-postmortem`` asks it of BINARY and of every input (is it an executable, is it a
core) before it starts gdb, and everything imported before that start delays the whole run:
this module imports only ``struct``, while ``files.elf`` (notes, segments, build-ids) brings
dataclasses, typing and, on first use, pyelftools (60-80 ms in all)."""
import struct

ET_EXEC, ET_DYN, ET_CORE = 2, 3, 4
_EI_DATA, _EI_NIDENT = 5, 16      # e_ident[EI_DATA]: 1 little-, 2 big-endian; then e_type
_EHDR_TYPE_END = _EI_NIDENT + 2
_BYTE_ORDER = {1: "<", 2: ">"}


class ElfError(Exception):
    """The file is not a (usable) ELF file; the message says why in one line."""


def elf_type(path):
    """The ELF file type of ``path`` as a number (``ET_EXEC``, ``ET_DYN``, ``ET_CORE``, ...),
    or None if it is not an ELF file.  OSError if it cannot be read.

    Read from the ELF header alone, without pyelftools: e_type is the 16-bit field that
    follows the 16 bytes of e_ident, in the byte order e_ident[EI_DATA] names."""
    with open(path, "rb") as handle:
        head = handle.read(_EHDR_TYPE_END)
    if len(head) < _EHDR_TYPE_END or head[:4] != b"\x7fELF" or head[_EI_DATA] not in _BYTE_ORDER:
        return None
    return struct.unpack_from(_BYTE_ORDER[head[_EI_DATA]] + "H", head, _EI_NIDENT)[0]
