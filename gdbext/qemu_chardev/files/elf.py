"""Facts read straight from ELF files on disk: core notes, build-ids, rodata strings.

Pure Python (stdlib only, no gdb): used inside gdb by ``qemu diagnose`` and outside it by
``scripts/chardev-postmortem`` to tell whether a core belongs to a binary before analysing it.
Only 64-bit little-endian ELF is understood (QEMU cores of x86_64 and aarch64 hosts); anything
else gives ``ElfError`` with a one-line reason.
"""
import re
import struct
from dataclasses import dataclass, field
from typing import List, Optional

ET_EXEC, ET_DYN, ET_CORE = 2, 3, 4
PT_LOAD, PT_NOTE = 1, 4
NT_PRSTATUS, NT_PRPSINFO, NT_GNU_BUILD_ID = 1, 3, 3
NT_SIGINFO = 0x53494749
NT_FILE = 0x46494C45
SHT_NOBITS = 8

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
MAX_NOTES_BYTES = 64 << 20        # a core's PT_NOTE with thousands of threads stays far below
MAX_SECTION_BYTES = 256 << 20

# "qemu-storage-daemon version 7.2.22", "QEMU emulator version 10.2.2 (Debian 1:10.2.2+ds-1)"
_VERSION_RE = re.compile(rb"(?:qemu-[a-z0-9-]+|QEMU emulator) version "
                         rb"(\d+\.\d+\.\d+[0-9A-Za-z.+~:()\- ]*?)(?:\n|\x00)")


class ElfError(Exception):
    """The file is not a (usable) ELF file; the message says why in one line."""


@dataclass
class CoreInfo:
    """What a core file's notes say about the process that dumped it."""
    path: str
    program: Optional[str] = None          # pr_fname (at most 15 characters)
    command_line: Optional[str] = None     # pr_psargs (at most 80 characters)
    pid: Optional[int] = None
    executable: Optional[str] = None       # path of the main executable (NT_FILE)
    executable_build_id: Optional[str] = None
    lwps: List[int] = field(default_factory=list)
    signal: Optional[int] = None           # pr_cursig of the first thread (the dumping one)


def _read_header(handle, path):
    head = handle.read(_EHDR.size)
    if len(head) < 4 or head[:4] != b"\x7fELF":
        raise ElfError(f"{path}: not an ELF file")
    if len(head) < _EHDR.size or head[4] != 2 or head[5] != 1:
        raise ElfError(f"{path}: not a 64-bit little-endian ELF file")
    return _EHDR.unpack(head)


def _program_headers(handle, ehdr, path):
    phoff, phentsize, phnum = ehdr[5], ehdr[9], ehdr[10]
    if phnum == 0:
        return []
    if phentsize != _PHDR.size or phnum > 1 << 20:
        raise ElfError(f"{path}: corrupt program header table")
    handle.seek(phoff)
    raw = handle.read(phentsize * phnum)
    if len(raw) < phentsize * phnum:
        raise ElfError(f"{path}: truncated (program headers cut off)")
    return [_PHDR.unpack_from(raw, i * phentsize) for i in range(phnum)]


def iter_notes(data):
    """(type, name, desc) of every note in a PT_NOTE blob (stops at the first bad one)."""
    offset = 0
    while offset + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, offset)
        offset += 12
        name_end = offset + namesz
        desc_start = offset + ((namesz + 3) & ~3)
        desc_end = desc_start + descsz
        if desc_end > len(data):
            return
        yield ntype, data[offset:name_end].rstrip(b"\0"), data[desc_start:desc_end]
        offset = desc_start + ((descsz + 3) & ~3)


def _build_id_from_notes(data):
    for ntype, name, desc in iter_notes(data):
        if ntype == NT_GNU_BUILD_ID and name == b"GNU":
            return desc.hex()
    return None


def binary_build_id(path):
    """The GNU build-id of an executable or library (hex), or None if it has none."""
    with open(path, "rb") as handle:
        ehdr = _read_header(handle, path)
        for p_type, _f, offset, _v, _pa, filesz, _m, _a in _program_headers(handle, ehdr, path):
            if p_type == PT_NOTE and 0 < filesz < 1 << 20:
                handle.seek(offset)
                found = _build_id_from_notes(handle.read(filesz))
                if found:
                    return found
    return None


def _parse_file_note(desc):
    """[(start, end, file offset, path)] of an NT_FILE note."""
    if len(desc) < 16:
        return []
    count, _page = struct.unpack_from("<QQ", desc, 0)
    if count > 1 << 20 or 16 + 24 * count > len(desc):
        return []
    names = desc[16 + 24 * count:].split(b"\0")
    out = []
    for i in range(count):
        start, end, offset = struct.unpack_from("<QQQ", desc, 16 + 24 * i)
        name = names[i].decode("utf-8", "replace") if i < len(names) else "?"
        out.append((start, end, offset, name))
    return out


def read_core(path):
    """A CoreInfo for the core file at ``path``; ElfError if it is not a usable ELF core."""
    with open(path, "rb") as handle:
        ehdr = _read_header(handle, path)
        if ehdr[1] != ET_CORE:
            kind = {ET_EXEC: "an executable", ET_DYN: "a shared object or PIE executable"}
            raise ElfError(f"{path}: not a core file ({kind.get(ehdr[1], 'ELF type %d' % ehdr[1])})")
        phdrs = _program_headers(handle, ehdr, path)
        info = CoreInfo(path=str(path))
        mappings = []
        handle.seek(0, 2)
        size = handle.tell()
        for p_type, _f, offset, _v, _pa, filesz, _m, _a in phdrs:
            if p_type != PT_NOTE:
                continue
            if offset + filesz > size:
                raise ElfError(f"{path}: truncated (notes cut off)")
            if filesz > MAX_NOTES_BYTES:
                raise ElfError(f"{path}: corrupt note segment ({filesz} bytes)")
            handle.seek(offset)
            for ntype, name, desc in iter_notes(handle.read(filesz)):
                if name != b"CORE":
                    continue
                if ntype == NT_PRPSINFO and len(desc) >= 136:
                    info.pid = struct.unpack_from("<i", desc, 24)[0]
                    info.program = desc[40:56].split(b"\0")[0].decode("utf-8", "replace")
                    info.command_line = desc[56:136].split(b"\0")[0].decode(
                        "utf-8", "replace").strip()
                elif ntype == NT_PRSTATUS and len(desc) >= 36:
                    if info.signal is None:
                        info.signal = struct.unpack_from("<h", desc, 12)[0]
                    info.lwps.append(struct.unpack_from("<i", desc, 32)[0])
                elif ntype == NT_FILE:
                    mappings = _parse_file_note(desc)
        if not info.lwps:
            raise ElfError(f"{path}: core file without thread status notes")
        if mappings:
            info.executable = _main_executable(mappings, info.program)
            info.executable_build_id = _core_build_id(handle, phdrs, mappings,
                                                      info.executable, size)
        last_end = max((o + s for t, _f, o, _v, _p, s, _m, _a in phdrs if t == PT_LOAD),
                       default=0)
        if last_end > size:
            raise ElfError(f"{path}: truncated ({size} of {last_end} bytes)")
    return info


def _main_executable(mappings, program):
    """The executable's path: the mapped file named like pr_fname, else the first one."""
    paths = [m[3] for m in mappings]
    if program:
        for candidate in paths:
            if candidate.rsplit("/", 1)[-1].startswith(program):
                return candidate
    return paths[0] if paths else None


def _core_build_id(handle, phdrs, mappings, executable, size):
    """The executable's build-id as dumped in the core (its first page holds the ELF header
    and usually the build-id note), or None when the core does not contain it."""
    starts = [m[0] for m in mappings if m[3] == executable and m[2] == 0]
    if not starts:
        return None
    for p_type, _f, offset, vaddr, _pa, filesz, _m, _a in phdrs:
        if p_type != PT_LOAD or vaddr != starts[0] or filesz < 64 or offset + filesz > size:
            continue
        handle.seek(offset)
        page = handle.read(min(filesz, 1 << 16))
        try:
            ehdr = _EHDR.unpack_from(page, 0)
        except struct.error:
            return None
        if page[:4] != b"\x7fELF":
            return None
        phoff, phnum = ehdr[5], ehdr[10]
        for i in range(min(phnum, 64)):
            start = phoff + i * _PHDR.size
            if start + _PHDR.size > len(page):
                break
            n_type, _nf, n_off, _nv, _np, n_size, _nm, _na = _PHDR.unpack_from(page, start)
            if n_type == PT_NOTE and n_off + n_size <= len(page):
                found = _build_id_from_notes(page[n_off:n_off + n_size])
                if found:
                    return found
    return None


def section_bytes(path, name):
    """The contents of section ``name`` of an ELF file, or None if it has no such section."""
    with open(path, "rb") as handle:
        ehdr = _read_header(handle, path)
        shoff, shentsize, shnum, shstrndx = ehdr[6], ehdr[11], ehdr[12], ehdr[13]
        if not shoff or shentsize != _SHDR.size or shnum > 1 << 16 or shstrndx >= shnum:
            return None
        handle.seek(shoff)
        raw = handle.read(shentsize * shnum)
        if len(raw) < shentsize * shnum:
            return None
        headers = [_SHDR.unpack_from(raw, i * shentsize) for i in range(shnum)]
        strtab = headers[shstrndx]
        handle.seek(strtab[4])
        names = handle.read(min(strtab[5], 1 << 20))
        wanted = name.encode()
        for sh in headers:
            end = names.find(b"\0", sh[0])
            if names[sh[0]:end if end >= 0 else None] != wanted:
                continue
            if sh[1] == SHT_NOBITS or sh[5] > MAX_SECTION_BYTES:
                return None
            handle.seek(sh[4])
            return handle.read(sh[5])
    return None


def qemu_version_in(data):
    """The version in a QEMU program's own "NAME version X.Y.Z" string, or None."""
    if not data:
        return None
    match = _VERSION_RE.search(data)
    return match.group(1).decode("ascii", "replace").strip() if match else None


def qemu_version(path):
    """The QEMU version a binary announces in its read-only data (its --version text)."""
    try:
        return qemu_version_in(section_bytes(path, ".rodata"))
    except (OSError, ElfError):
        return None


def core_matches_binary(core, binary_path, binary_id=None):
    """(True, None) if ``core`` (a CoreInfo) was dumped by ``binary_path``, else (False,
    one-line reason).  Build-ids decide when both are known; otherwise the program name."""
    name = binary_path.rsplit("/", 1)[-1]
    if binary_id is None:
        try:
            binary_id = binary_build_id(binary_path)
        except (OSError, ElfError):
            binary_id = None
    who = f"'{core.program}'" if core.program else "an unknown program"
    if core.executable:
        who += f" ({core.executable})"
    if binary_id and core.executable_build_id:
        if binary_id == core.executable_build_id:
            return True, None
        if core.program and name.startswith(core.program):
            return False, (f"core of a different build of {name}: build-id "
                           f"{core.executable_build_id[:12]} in the core, {binary_id[:12]} "
                           "in the binary")
        return False, f"core of {who}, not of {name}"
    if core.program and not name.startswith(core.program) \
            and not (core.executable or "").endswith("/" + name):
        return False, f"core of {who}, not of {name}"
    return True, None
