"""The memory of the process gdb looks at, for reading in bulk outside gdb: its core file's
segments or a live process's /proc/PID/mem (``files.memscan`` readers).

A core's segment table comes from gdb, which has parsed the file already (`maint info
sections`: one BFD section per PT_LOAD segment; `info proc mappings`: its NT_FILE note):
parsing it again with pyelftools would cost that library's import, 60-80 ms, about a fifth of
what gdb takes to open a core.  pyelftools (``memscan.core_regions``) stays the fallback when
gdb's answer cannot be read."""
import os
import re

import gdb

from qemu_chardev.files import memscan
from qemu_chardev.model.errors import QcgError
from qemu_chardev.target import inferior
from qemu_chardev.target import memory as target

# A core section of `maint info sections`:  [24]     0x5640->0x5650 at 0x00073970: load3 ALLOC ...
# One per PT_LOAD segment ("loadN"); BFD splits a segment whose memory is larger than its file
# part in two: "loadNa" (the file part) and "loadNb" (the rest, no contents).
_LOAD_RE = re.compile(r"^\s*\[\s*\d+\]\s+0x([0-9a-f]+)->0x([0-9a-f]+) at 0x([0-9a-f]+): "
                      r"load\d+[ab]? ([A-Z_ ]*)$", re.M)
# A line of `info proc mappings` on a core (gdb 13: start end size offset objfile)
_MAPPING_RE = re.compile(r"^\s*0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x[0-9a-f]+\s",
                         re.M)

_cache = target.objfile_cache()


def open_reader():
    """A memscan reader for the selected inferior: its core file or its live process."""
    kind = inferior.target_kind()
    if kind == "core":
        path = inferior.core_file_path()
        if not path:
            raise QcgError("cannot find the core file's name in 'info target'")
        return memscan.CoreReader(path, core_segments(path)), f"core {path}"
    if kind == "live":
        pid = gdb.selected_inferior().pid
        return memscan.ProcReader(pid), f"live process {pid}"
    raise QcgError("reading memory in bulk needs a core file or a live local process "
                   f"(target: {kind})")


def core_segments(path):
    """(regions, missing bytes, NT_FILE mappings) of the core gdb has open at ``path``, as
    ``memscan.core_regions`` returns them; read once per core file (census, liveness)."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise memscan.ScanError(f"cannot read core file {path}: {exc.strerror}") from None
    key = ("segments", path, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        _cache[key] = segments_from_gdb(stat.st_size) or memscan.core_regions(path)
    return _cache[key]


def segments_from_gdb(file_size):
    """The core's segment table from gdb's own reading of it, or None when gdb's listing
    cannot be read (then pyelftools reads the file)."""
    try:
        # ALLOC: the memory sections only.  Unfiltered, gdb also lists every thread's
        # register notes (.reg/LWP, .reg2, .reg-xstate...): 3x the lines, and 0.2 s of the
        # listing on a core of 512 threads.
        listing = gdb.execute("maint info sections ALLOC", to_string=True)
    except gdb.error:
        return None
    start = listing.find("\nCore file:")
    if start < 0:
        return None
    regions, missing = [], 0
    for first, end, offset, flags in _LOAD_RE.findall(listing, start):
        first, end, offset, flags = int(first, 16), int(end, 16), int(offset, 16), flags.split()
        if end <= first:
            continue
        size = 0
        if "HAS_CONTENTS" in flags:
            size = end - first
            present = max(0, min(size, file_size - offset))
            if "READONLY" not in flags:
                missing += size - present
            size = present
        regions.append(memscan.Region(first, end, offset, size, "READONLY" not in flags))
    if not regions:
        return None
    regions.sort(key=lambda r: r.start)
    return regions, missing, _nt_file_mappings()


def _nt_file_mappings():
    """[(start, end)] of the file-backed mappings the core's NT_FILE note lists."""
    try:
        listing = gdb.execute("info proc mappings", to_string=True)
    except gdb.error:
        return []
    return [(int(s, 16), int(e, 16)) for s, e in _MAPPING_RE.findall(listing)]
