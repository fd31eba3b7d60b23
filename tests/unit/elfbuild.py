"""Synthetic ELF files for the unit tests, laid out by hand from the ELF specification (gABI)
and Linux's <linux/elfcore.h>, independently of the parser under test (pyelftools there).

``Image`` lays out a header, a program header table, segment contents and an optional section
table; the helpers below build the note descriptors a Linux core holds.
"""
import struct
from dataclasses import dataclass, field
from typing import List, Optional

ET_REL, ET_EXEC, ET_DYN, ET_CORE = 1, 2, 3, 4
EM_X86_64 = 62
PT_LOAD, PT_NOTE, PT_PHDR = 1, 4, 6
PF_X, PF_W, PF_R = 1, 2, 4
NT_PRSTATUS, NT_FPREGSET, NT_PRPSINFO, NT_AUXV = 1, 2, 3, 6
NT_GNU_BUILD_ID = 3
NT_SIGINFO = 0x53494749
NT_FILE = 0x46494C45
SHT_PROGBITS, SHT_STRTAB, SHT_NOBITS = 1, 3, 8
PN_XNUM = 0xFFFF
PRSTATUS_SIZE = 336        # x86_64 struct elf_prstatus
PRPSINFO_SIZE = 136        # 64-bit struct elf_prpsinfo


def _pad4(data):
    return data + b"\0" * (-len(data) % 4)


def note(ntype, name, desc, endian="<"):
    """One ELF note: namesz, descsz, type, then name and desc, each padded to 4 bytes."""
    name = name + b"\0"
    return struct.pack(endian + "III", len(name), len(desc), ntype) + _pad4(name) + _pad4(desc)


def prstatus(lwp, signal=0, size=PRSTATUS_SIZE):
    """struct elf_prstatus (64-bit): pr_info (3 ints), short pr_cursig at 12, pr_pid at 32."""
    desc = bytearray(size)
    struct.pack_into("<iii", desc, 0, signal, 0, 0)
    struct.pack_into("<h", desc, 12, signal)
    struct.pack_into("<iiii", desc, 32, lwp, 1, lwp, 1)     # pid, ppid, pgrp, sid
    return bytes(desc)


def prpsinfo(program, pid, args=b"/bin/prog", size=PRPSINFO_SIZE):
    """struct elf_prpsinfo (64-bit): pr_pid at 24, pr_fname[16] at 40, pr_psargs[80] at 56."""
    desc = bytearray(size)
    desc[1:2] = b"S"
    struct.pack_into("<iiii", desc, 24, pid, 1, pid, pid)
    desc[40:40 + len(program[:16])] = program[:16]
    desc[56:56 + len(args[:80])] = args[:80]
    return bytes(desc[:size])


def file_note(entries, page_size=4096, count=None):
    """NT_FILE: count, page size, (start, end, page offset) per entry, then the paths."""
    desc = struct.pack("<QQ", len(entries) if count is None else count, page_size)
    desc += b"".join(struct.pack("<QQQ", start, end, off) for start, end, off, _p in entries)
    return desc + b"".join(path.encode() + b"\0" for *_r, path in entries)


def build_id_note(hex_id):
    return note(NT_GNU_BUILD_ID, b"GNU", bytes.fromhex(hex_id))


@dataclass
class Segment:
    p_type: int
    data: bytes = b""
    vaddr: int = 0
    flags: int = PF_R
    memsz: Optional[int] = None       # default: len(data)
    filesz: Optional[int] = None      # default: len(data)
    offset: Optional[int] = None      # default: where the data is placed
    align: int = 1


@dataclass
class Section:
    name: str
    sh_type: int
    data: bytes = b""
    addr: int = 0
    size: Optional[int] = None        # default: len(data)


@dataclass
class Image:
    """An ELF file: header, program headers right after it, segment data in order, then the
    section contents and the section header table (with .shstrtab) when there are sections."""
    e_type: int
    segments: List[Segment] = field(default_factory=list)
    sections: List[Section] = field(default_factory=list)
    elfclass: int = 64
    endian: str = "<"
    machine: int = EM_X86_64
    phnum: Optional[int] = None       # e_phnum override (garbage tests)
    phentsize: Optional[int] = None
    shnum: Optional[int] = None
    section0_info: int = 0            # sh_info of section 0 (extended program header count)
    offsets: List[int] = field(default_factory=list)    # set by build(): segment data offsets

    def add(self, p_type, data=b"", **kw):
        self.segments.append(Segment(p_type, data, **kw))
        return self

    def _formats(self):
        e = self.endian
        if self.elfclass == 64:
            return (struct.Struct(e + "16sHHIQQQIHHHHHH"), struct.Struct(e + "IIQQQQQQ"),
                    struct.Struct(e + "IIQQQQIIQQ"))
        return (struct.Struct(e + "16sHHIIIIIHHHHHH"), struct.Struct(e + "IIIIIIII"),
                struct.Struct(e + "IIIIIIIIII"))

    def _phdr(self, fmt, seg, offset):
        filesz = len(seg.data) if seg.filesz is None else seg.filesz
        memsz = len(seg.data) if seg.memsz is None else seg.memsz
        if self.elfclass == 64:
            return fmt.pack(seg.p_type, seg.flags, offset, seg.vaddr, 0, filesz, memsz,
                            seg.align)
        return fmt.pack(seg.p_type, offset, seg.vaddr, 0, filesz, memsz, seg.flags, seg.align)

    def build(self):
        ehdr, phdr, shdr = self._formats()
        data_at = ehdr.size + phdr.size * len(self.segments)
        self.offsets, body = [], b""
        for seg in self.segments:
            self.offsets.append(data_at + len(body) if seg.offset is None else seg.offset)
            body += seg.data
        phdrs = b"".join(self._phdr(phdr, seg, off)
                         for seg, off in zip(self.segments, self.offsets))
        blob = phdrs + body
        shoff = shstrndx = 0
        sh_count = 0
        if self.sections or self.section0_info:
            names = b"\0"
            name_at = []
            for sec in self.sections + [Section(".shstrtab", SHT_STRTAB)]:
                name_at.append(len(names))
                names += sec.name.encode() + b"\0"
            contents, headers = b"", [self._shdr(shdr, 0, 0, 0, 0, 0, info=self.section0_info)]
            start = ehdr.size + len(blob)
            for sec, name in zip(self.sections, name_at):
                data = b"" if sec.sh_type == SHT_NOBITS else sec.data
                size = len(sec.data) if sec.size is None else sec.size
                headers.append(self._shdr(shdr, name, sec.sh_type, sec.addr,
                                          start + len(contents), size))
                contents += data
            headers.append(self._shdr(shdr, name_at[-1], SHT_STRTAB, 0, start + len(contents),
                                      len(names)))
            contents += names
            contents += b"\0" * (-len(contents) % 8)
            shoff = start + len(contents)
            blob += contents + b"".join(headers)
            sh_count = len(headers)
            shstrndx = sh_count - 1
        ei_class = 1 if self.elfclass == 32 else 2
        ei_data = 1 if self.endian == "<" else 2
        ident = b"\x7fELF" + bytes([ei_class, ei_data, 1]) + b"\0" * 9
        phnum = len(self.segments) if self.phnum is None else self.phnum
        phentsize = phdr.size if self.phentsize is None else self.phentsize
        shnum = sh_count if self.shnum is None else self.shnum
        header = ehdr.pack(ident, self.e_type, self.machine, 1, 0,
                           ehdr.size if self.segments or self.phnum else 0, shoff, 0,
                           ehdr.size, phentsize, phnum, shdr.size, shnum, shstrndx)
        return header + blob

    @staticmethod
    def _shdr(fmt, name, sh_type, addr, offset, size, info=0):
        # the same fields in ELF32 and ELF64: name type flags addr offset size link info
        # addralign entsize
        return fmt.pack(name, sh_type, 0, addr, offset, size, 0, info, 1, 0)

    def write(self, path):
        path.write_bytes(self.build())
        return path


def executable_image(build_id, extra_notes=b"", size=0x1000):
    """The first page of an ET_DYN executable as mapped in memory (file offset 0): ELF header,
    program headers, a PT_NOTE with its build-id; padded to ``size`` bytes."""
    notes = extra_notes + build_id_note(build_id)
    image = Image(ET_DYN).add(PT_LOAD, b"", flags=PF_R | PF_X, memsz=size, filesz=size,
                              offset=0).add(PT_NOTE, notes, align=4).build()
    return image + b"\0" * (size - len(image))


def core(notes, loads=(), notes_last=False):
    """An ET_CORE image: one PT_NOTE holding ``notes`` and PT_LOADs (vaddr, flags, data).  The
    notes come before the memory (like the kernel's cores) or after it (like gdb's gcore)."""
    image = Image(ET_CORE)
    if not notes_last:
        image.add(PT_NOTE, notes)
    for vaddr, flags, data in loads:
        image.add(PT_LOAD, data, vaddr=vaddr, flags=flags, align=0x1000)
    if notes_last:
        image.add(PT_NOTE, notes)
    return image
