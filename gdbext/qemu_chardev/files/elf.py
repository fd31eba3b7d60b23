"""Facts read straight from ELF files on disk: core notes and segments, build-ids, rodata strings.

Pure Python (no gdb): used inside gdb by ``qemu diagnose`` and the GSource census
(``memscan.CoreReader`` takes its segment list from ``core_layout``), and outside gdb by
``scripts/chardev-postmortem`` to tell whether a core belongs to a binary before analysing it.

pyelftools (Debian: python3-pyelftools) does the parsing: ELF header, program headers, PT_NOTE
iteration and note decoding, sections.  Only the ELF header, the program headers and PT_NOTE
bytes of a core are read (at most ``MAX_NOTES_BYTES`` of notes), never its memory segments.
Only 64-bit little-endian ELF is understood (QEMU cores of x86_64 and aarch64 hosts); anything
else, and any file pyelftools cannot parse, gives ``ElfError`` with a one-line reason.
"""
import copy
import io
import re
import struct
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from qemu_chardev.files.elfhead import ET_CORE, ET_DYN, ET_EXEC, ElfError, elf_type  # noqa: F401

PF_W, PF_R = 2, 4
MAX_NOTES_BYTES = 64 << 20        # a core's PT_NOTE with thousands of threads stays far below
MAX_BINARY_NOTES_BYTES = 1 << 20  # an executable's PT_NOTE: a build-id, ABI tag, properties
MAX_SECTION_BYTES = 256 << 20
MAX_PHNUM = 1 << 20
MAX_SECTIONS = 1 << 16
_IMAGE_BYTES = 1 << 16            # bytes of a core's executable image searched for its build-id
_IMAGE_PHNUM = 64

# "qemu-storage-daemon version 7.2.22", "QEMU emulator version 10.2.2 (Debian 1:10.2.2+ds-1)"
_VERSION_RE = re.compile(rb"(?:qemu-[a-z0-9-]+|QEMU emulator) version "
                         rb"(\d+\.\d+\.\d+[0-9A-Za-z.+~:()\- ]*?)(?:\n|\x00)")


def _import_pyelftools():
    """pyelftools' pieces this module uses, or {"ELFFile": None} when it is not installed."""
    base_errors = (struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError,
                   OverflowError, UnicodeDecodeError, RecursionError)
    try:
        from elftools.common.exceptions import ELFError
        from elftools.construct import ConstructError, Padding, Struct, Value
        from elftools.elf.elffile import ELFFile
        from elftools.elf.enums import ENUM_E_TYPE
        from elftools.elf.notes import iter_notes
    except ImportError:                   # reported as an ElfError when a file is read
        return {"ELFFile": None, "PARSE_ERRORS": base_errors}
    # What pyelftools (and its bundled construct) raise on garbage, besides ElfError itself.
    # (RecursionError: a symbol table section linked to itself, for one.)
    parse_errors = (ELFError, ConstructError) + base_errors

    class TolerantElfFile(ELFFile):
        """ELFFile that tolerates a section header table it cannot parse (a core cut off in
        its section headers, garbage ``e_shoff``): cores need none of it, and section
        lookups then find nothing instead of the constructor failing."""

        def _get_section_header_stringtable(self):
            try:
                return super()._get_section_header_stringtable()
            except parse_errors:
                return None

    return {"ELFFile": ELFFile, "ElfFile": TolerantElfFile, "ENUM_E_TYPE": ENUM_E_TYPE,
            "iter_notes": iter_notes, "Struct": Struct, "Value": Value, "Padding": Padding,
            "PARSE_ERRORS": parse_errors}


class _Pyelftools:
    """pyelftools, imported on first use: the import costs tens of milliseconds (its DWARF
    and construct modules), which every gdb session that loads the extension would pay even
    when no file is ever parsed (`qemu chardev list`)."""

    def __getattr__(self, name):          # called only for names not loaded yet
        if name.startswith("__"):
            raise AttributeError(name)
        self.__dict__.update(_import_pyelftools())
        return self.__dict__[name]


_pe = _Pyelftools()


class _Bounded:
    """A file as pyelftools reads it: a seek past the end (a garbage offset, which the OS may
    refuse with EINVAL) stops at the end, so reading there finds nothing."""

    def __init__(self, handle):
        self._handle = handle
        self._size = handle.seek(0, 2)
        handle.seek(0)

    def seek(self, offset, whence=0):
        if whence == 0 and offset > self._size:
            offset = self._size
        return self._handle.seek(offset, whence)

    def read(self, size=-1):
        return self._handle.read(size)

    def tell(self):
        return self._handle.tell()


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
    # A core cut short after its notes: its size, the size its program headers promise, and
    # the address ranges [(start, end)] whose bytes the file lacks (empty when complete).
    file_size: Optional[int] = None
    expected_size: Optional[int] = None
    missing: List[Tuple[int, int]] = field(default_factory=list)

    @property
    def truncated(self):
        """"truncated (N of M bytes)" for a core cut short after its notes, else None."""
        if self.expected_size is None or self.file_size is None \
                or self.file_size >= self.expected_size:
            return None
        return f"truncated ({self.file_size} of {self.expected_size} bytes)"


@dataclass
class LoadSegment:
    """One PT_LOAD program header of a core, and how much of it the file really holds."""
    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int
    present: int                           # bytes of ``filesz`` inside the file (truncation)

    @property
    def writable(self):
        return bool(self.flags & PF_W)

    @property
    def readable(self):
        return bool(self.flags & PF_R)


@dataclass
class CoreLayout:
    """A core's memory segments and notes, as read by ``core_layout``."""
    path: str
    file_size: int
    phnum: int
    loads: List[LoadSegment]
    # NT_FILE: (start, end, file offset in pages, path) of every file-backed mapping
    mappings: List[Tuple[int, int, int, str]]
    info: CoreInfo                         # what the notes say (executable fields not set)
    note_problem: Optional[str] = None     # a PT_NOTE cut off or oversized (read in part)

    def missing_ranges(self):
        """[(start, end)] of the memory the program headers promise and the file lacks."""
        return missing_ranges(self.loads)


def missing_ranges(loads):
    """[(start, end)] address ranges of PT_LOAD bytes cut off by the end of the file,
    adjacent ranges merged."""
    out = []
    for seg in sorted(loads, key=lambda s: s.vaddr):
        if seg.present >= seg.filesz:
            continue
        start, end = seg.vaddr + seg.present, seg.vaddr + seg.filesz
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _fail(path, reason):
    raise ElfError(f"{path}: {reason}") from None


def _need_pyelftools(path):
    if _pe.ELFFile is None:
        _fail(path, "cannot read ELF files: pyelftools is not installed "
                    "(Debian: python3-pyelftools)")


def _open(handle, path):
    """A pyelftools ELFFile over ``handle``, checked to be 64-bit little-endian."""
    _need_pyelftools(path)
    if handle.read(4) != b"\x7fELF":
        _fail(path, "not an ELF file")
    try:
        elf = _pe.ElfFile(_Bounded(handle))
    except _pe.PARSE_ERRORS:
        if handle.seek(0, 2) < 64:
            _fail(path, "truncated (ELF header cut off)")
        _fail(path, "not a 64-bit little-endian ELF file")
    if elf.elfclass != 64 or not elf.little_endian:
        _fail(path, "not a 64-bit little-endian ELF file")
    return elf


def _e_type(elf):
    """e_type as a number (pyelftools gives known types by name)."""
    e_type = elf["e_type"]
    return _pe.ENUM_E_TYPE.get(e_type, e_type) if isinstance(e_type, str) else e_type


def _program_headers(elf, path):
    """Every program header (pyelftools Containers), the table checked against the file."""
    try:
        phnum = elf.num_segments()
    except _pe.PARSE_ERRORS:
        _fail(path, "corrupt program header table")
    if phnum == 0:
        return []
    entry = elf.structs.Elf_Phdr.sizeof()
    if elf["e_phentsize"] != entry or phnum > MAX_PHNUM:
        _fail(path, "corrupt program header table")
    if elf["e_phoff"] + phnum * entry > elf.stream_len:
        _fail(path, "truncated (program headers cut off)")
    try:
        return _segment_headers(elf, phnum)
    except _pe.PARSE_ERRORS:
        _fail(path, "corrupt program header table")


def _segment_headers(elf, phnum):
    """The first ``phnum`` program headers, parsed by pyelftools from one read of the table.
    (Not ``ELFFile.iter_segments``: its PT_DYNAMIC segment object walks every section.)"""
    entry = elf.structs.Elf_Phdr.sizeof()
    table = io.BytesIO(_read_segment(elf, elf["e_phoff"], phnum * entry))
    return [elf.structs.Elf_Phdr.parse_stream(table) for _ in range(phnum)]


class _NoteBlob:
    """What pyelftools' ``iter_notes`` needs of an ELFFile, over PT_NOTE bytes in memory: the
    notes are read once (bounded) and never past their segment.

    pyelftools 0.29 decodes some descriptors while it walks, from the stream instead of the
    note's own bytes: NT_PRPSINFO and NT_GNU_ABI_TAG read a fixed size even past a short
    descriptor, NT_FILE with a garbage entry count runs on through every later note (and parses
    its names a byte at a time), NT_GNU_PROPERTY_TYPE_0 runs to the end of the segment so the
    notes after it are lost (pyelftools issue #534).  So the walk decodes none of them (their
    structs are replaced by ones that read nothing) and ``_notes`` decodes the descriptors we
    use from each note's own bytes, with pyelftools' structs.
    """

    def __init__(self, elf, data):
        real = elf.structs
        self.structs = copy.copy(real)
        self.elfclass = elf.elfclass
        self.little_endian = elf.little_endian
        self.stream = io.BytesIO(data)
        self.prpsinfo = real.Elf_Prpsinfo
        self.prstatus = _prstatus_head(real)
        parts = real.Elf_Nt_File.subcons            # count, page size, entries, file names
        self.nt_file_header = _pe.Struct("Elf_Nt_File", *parts[:2])
        self.nt_file_entries = _pe.Struct("Elf_Nt_File", *parts[:3])
        self.nt_file_entry_size = parts[2].subcon.sizeof()
        for name in ("Elf_Prpsinfo", "Elf_Nt_File", "Elf_abi"):
            setattr(self.structs, name, _pe.Struct(name))
        # iter_notes steps through the properties by pr_datasz: one step takes it past the end
        self.structs.Elf_Prop = _pe.Struct("Elf_Prop",
                                           _pe.Value("pr_datasz", lambda _ctx: 1 << 62))


_LEFT_UNDECODED = ("NT_PRPSINFO", "NT_FILE", "NT_GNU_ABI_TAG", "NT_GNU_PROPERTY_TYPE_0")


def _notes(elf, data):
    """pyelftools notes in a PT_NOTE blob; stops at the first one that does not parse or does
    not fit (like readelf).  ``n_desc`` of the CORE notes we use: NT_PRSTATUS and NT_PRPSINFO
    a Container (None when the descriptor is too short), NT_FILE [(start, end, offset, path)]
    (empty when corrupt); NT_GNU_BUILD_ID its hex string; anything else the raw bytes."""
    blob = _NoteBlob(elf, data)
    walk = _pe.iter_notes(blob, 0, len(data))
    while True:
        try:
            note = next(walk)
        except StopIteration:
            return
        except _pe.PARSE_ERRORS:
            return
        desc = note["n_descdata"]
        if len(desc) < note["n_descsz"]:
            return
        ntype = note["n_type"]
        if ntype in _LEFT_UNDECODED:
            note["n_desc"] = desc
        if note["n_name"] == "CORE":
            if ntype == "NT_PRPSINFO":
                note["n_desc"] = _decode(blob.prpsinfo, desc)
            elif ntype == "NT_PRSTATUS":
                note["n_desc"] = _decode(blob.prstatus, desc)
            elif ntype == "NT_FILE":
                note["n_desc"] = _file_mappings(blob, desc)
        yield note


def _decode(struct_, desc):
    """``struct_`` parsed from the start of ``desc``, or None if ``desc`` is too short."""
    if len(desc) < struct_.sizeof():
        return None
    try:
        return struct_.parse(desc)
    except _pe.PARSE_ERRORS:
        return None


def _file_mappings(blob, desc):
    """[(start, end, offset, path)] of an NT_FILE descriptor (empty if it is corrupt)."""
    header = _decode(blob.nt_file_header, desc)
    if header is None:
        return []
    count = header.num_map_entries
    if count > (len(desc) - blob.nt_file_header.sizeof()) // blob.nt_file_entry_size:
        return []
    stream = io.BytesIO(desc)
    try:
        table = blob.nt_file_entries.parse_stream(stream)
    except _pe.PARSE_ERRORS:
        return []
    names = stream.read().split(b"\0")
    if len(names) <= count:                  # each name ends with a NUL
        return []
    return [(m.vm_start, m.vm_end, m.page_offset, name.decode("utf-8", "replace"))
            for m, name in zip(table.Elf_Nt_File_Entry, names)]


def _read_segment(elf, offset, size):
    """At most ``size`` bytes at ``offset`` (fewer at the end of the file, none past it)."""
    if size <= 0 or offset >= elf.stream_len:
        return b""
    elf.stream.seek(offset)
    return elf.stream.read(min(size, elf.stream_len - offset))


def _prstatus_head(structs):
    """The start of ``struct elf_prstatus`` (pyelftools 0.29 does not decode NT_PRSTATUS)."""
    return _pe.Struct("Elf_Prstatus_head",
                      structs.Elf_sword("si_signo"), structs.Elf_sword("si_code"),
                      structs.Elf_sword("si_errno"), structs.Elf_half("pr_cursig"),
                      _pe.Padding(2),
                      structs.Elf_xword("pr_sigpend"), structs.Elf_xword("pr_sighold"),
                      structs.Elf_sword("pr_pid"))


def _cstring(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _read_layout(elf, path):
    e_type = _e_type(elf)
    if e_type != ET_CORE:
        kind = {ET_EXEC: "an executable", ET_DYN: "a shared object or PIE executable"}
        _fail(path, f"not a core file ({kind.get(e_type, 'ELF type %s' % e_type)})")
    phdrs = _program_headers(elf, path)
    size = elf.stream_len
    layout = CoreLayout(path=str(path), file_size=size, phnum=len(phdrs), loads=[],
                        mappings=[], info=CoreInfo(path=str(path)))
    info = layout.info
    for ph in phdrs:
        if ph.p_type == "PT_LOAD":
            layout.loads.append(LoadSegment(
                ph.p_vaddr, ph.p_memsz, ph.p_offset, ph.p_filesz, ph.p_flags,
                max(0, min(ph.p_filesz, size - ph.p_offset))))
            continue
        if ph.p_type != "PT_NOTE":
            continue
        # A note segment cut off by the end of the file or over the bound is a problem
        # (read_core refuses the core) but what there is of it is still read.
        if ph.p_offset + ph.p_filesz > size:
            layout.note_problem = layout.note_problem or "truncated (notes cut off)"
        elif ph.p_filesz > MAX_NOTES_BYTES:
            layout.note_problem = layout.note_problem or \
                f"corrupt note segment ({ph.p_filesz} bytes)"
        length = min(ph.p_filesz, MAX_NOTES_BYTES, max(0, size - ph.p_offset))
        for note in _notes(elf, _read_segment(elf, ph.p_offset, length)):
            if note["n_name"] != "CORE" or note["n_desc"] is None:
                continue
            ntype = note["n_type"]
            if ntype == "NT_PRPSINFO":
                ps = note["n_desc"]
                info.pid = ps.pr_pid
                info.program = _cstring(ps.pr_fname)
                info.command_line = _cstring(ps.pr_psargs).strip()
            elif ntype == "NT_PRSTATUS":
                if info.signal is None:
                    info.signal = note["n_desc"].pr_cursig
                info.lwps.append(note["n_desc"].pr_pid)
            elif ntype == "NT_FILE":
                layout.mappings = note["n_desc"]
    return layout


def core_layout(path):
    """A CoreLayout of the core file at ``path``: its PT_LOAD segments (with the bytes a
    truncated file lacks), NT_FILE mappings and thread/process notes.  ElfError if it is not an
    ELF core whose program headers can be read; cut-off notes are only recorded."""
    with open(path, "rb") as handle:
        return _read_layout(_open(handle, path), path)


def read_core(path):
    """A CoreInfo for the core file at ``path``; ElfError if it is not a usable ELF core
    (no ELF core header, program headers or notes cut off, no thread notes).  A core cut
    short after its notes is still usable: ``info.truncated`` and ``info.missing`` say what
    it lacks."""
    with open(path, "rb") as handle:
        elf = _open(handle, path)
        layout = _read_layout(elf, path)
        if layout.note_problem:
            _fail(path, layout.note_problem)
        info = layout.info
        if not info.lwps:
            _fail(path, "core file without thread status notes")
        if layout.mappings:
            info.executable = _main_executable(layout.mappings, info.program)
            info.executable_build_id = _core_build_id(elf, layout, info.executable)
        info.file_size = layout.file_size
        info.expected_size = max([layout.file_size] + [s.offset + s.filesz
                                                       for s in layout.loads])
        info.missing = layout.missing_ranges()
    return info


def _main_executable(mappings, program):
    """The executable's path: the mapped file named like pr_fname, else the first one."""
    paths = [m[3] for m in mappings]
    if program:
        for candidate in paths:
            if candidate.rsplit("/", 1)[-1].startswith(program):
                return candidate
    return paths[0] if paths else None


def _core_build_id(elf, layout, executable):
    """The executable's build-id as dumped in the core (its first page holds the ELF header
    and usually the build-id note), or None when the core does not contain it."""
    starts = [m[0] for m in layout.mappings if m[3] == executable and m[2] == 0]
    if not starts:
        return None
    for seg in layout.loads:
        if seg.vaddr != starts[0] or seg.filesz < 64 or seg.present < seg.filesz:
            continue
        image = _read_segment(elf, seg.offset, min(seg.filesz, _IMAGE_BYTES))
        return _build_id_in_image(image)
    return None


def _build_id_in_image(image):
    """The build-id note of an ELF image mapped from file offset 0 (in memory), or None."""
    try:
        elf = _pe.ElfFile(io.BytesIO(image))
        headers = _segment_headers(elf, min(elf["e_phnum"], _IMAGE_PHNUM))
    except _pe.PARSE_ERRORS:
        return None
    return _build_id_in(elf, headers, len(image))


def _build_id_in(elf, headers, limit):
    for ph in headers:
        if ph.p_type != "PT_NOTE" or not 0 < ph.p_filesz <= MAX_BINARY_NOTES_BYTES \
                or ph.p_offset + ph.p_filesz > limit:
            continue
        for note in _notes(elf, _read_segment(elf, ph.p_offset, ph.p_filesz)):
            if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                return note["n_desc"]
    return None


def binary_build_id(path):
    """The GNU build-id of an executable or library (hex), or None if it has none."""
    with open(path, "rb") as handle:
        elf = _open(handle, path)
        return _build_id_in(elf, _program_headers(elf, path), elf.stream_len)


def section_bytes(path, name):
    """The contents of section ``name`` of an ELF file, or None if it has no such section
    (or its section table cannot be read).  ElfError if it is not a 64-bit ELF file."""
    with open(path, "rb") as handle:
        elf = _open(handle, path)
        try:
            count = elf.num_sections()
            if count > MAX_SECTIONS:
                return None
            for index in range(count):
                section = elf.get_section(index)
                if section.name != name:
                    continue
                if section["sh_type"] == "SHT_NOBITS" or section.data_size > MAX_SECTION_BYTES:
                    return None
                return section.data()
        except _pe.PARSE_ERRORS:
            return None
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
