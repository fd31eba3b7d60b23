"""The gdb commands, one module per command family, all under the `qemu` prefix.

Each command is a ``base.QcgCommand`` whose class docstring is its gdb ``help``.  The
`qemu` prefix is shared with QEMU's own scripts/qemu-gdb.py: an existing one is reused.
"""
import gdb

from qemu_chardev.commands import chardev, diagnose, gsource, mutex, qiotask, watch
from qemu_chardev.commands.base import HelpPrefix


class QemuPrefix(HelpPrefix):
    """Commands for inspecting QEMU (chardevs, locks, GSources, QIOTasks)."""
    command = "qemu"


def register():
    """Create the commands; an existing `qemu` prefix (QEMU's own qemu-gdb.py) is reused."""
    try:
        gdb.execute("help qemu", to_string=True)
        have_prefix = True
    except gdb.error:
        have_prefix = False
    classes = [*chardev.COMMANDS, *mutex.COMMANDS, *gsource.COMMANDS, *qiotask.COMMANDS,
               diagnose.DiagnoseCommand, *watch.COMMANDS]
    if not have_prefix:
        classes.insert(0, QemuPrefix)
    return [cls() for cls in classes]
