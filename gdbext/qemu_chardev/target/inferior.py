"""What gdb is looking at: a core file or a live process, and the core file's path."""
import re

import gdb

_CORE_FILE_RE = re.compile(r"Local core dump file:\s*`(.+?)', file type")


def target_kind():
    """"core", "live" (a native process) or another gdb connection type (e.g. "remote");
    None when nothing is loaded."""
    inferior = gdb.selected_inferior()
    connection = getattr(inferior, "connection", None)
    kind = getattr(connection, "type", None) if connection is not None else None
    if kind == "core" or (kind is None and core_file_path()):
        return "core"
    if kind == "native" and inferior.pid:
        return "live"
    return kind


def is_core():
    return target_kind() == "core"


def core_file_path():
    """Path of the core file gdb has open, or None.  gdb 13's Python API has no accessor for
    it, so it comes from the one line of `info target` that names it."""
    try:
        text = gdb.execute("info target", to_string=True)
    except gdb.error:
        return None
    match = _CORE_FILE_RE.search(text)
    return match.group(1) if match else None
