"""The memory of the process gdb looks at, for reading in bulk outside gdb: its core file's
segments or a live process's /proc/PID/mem (``files.memscan`` readers)."""
import gdb

from qemu_chardev.files import memscan
from qemu_chardev.model.errors import QcgError
from qemu_chardev.target import inferior


def open_reader():
    """A memscan reader for the selected inferior: its core file or its live process."""
    kind = inferior.target_kind()
    if kind == "core":
        path = inferior.core_file_path()
        if not path:
            raise QcgError("cannot find the core file's name in 'info target'")
        return memscan.CoreReader(path), f"core {path}"
    if kind == "live":
        pid = gdb.selected_inferior().pid
        return memscan.ProcReader(pid), f"live process {pid}"
    raise QcgError("reading memory in bulk needs a core file or a live local process "
                   f"(target: {kind})")
