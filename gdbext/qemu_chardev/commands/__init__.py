"""The gdb commands, one module per command family, all under the `qemu` prefix.

Each command is a ``base.QcgCommand`` whose class docstring is its gdb ``help``.

The `qemu` prefix is shared with QEMU's own scripts/qemu-gdb.py.  Loaded after it, we reuse
its prefix.  Loaded before it, we would lose every subcommand: gdb (13 at least) replaces a
redefined prefix command together with its list of subcommands, and qemu-gdb.py defines
`qemu` unconditionally.  gdb tells Python nothing when a command is defined, so
``register`` puts a transparent subclass in place of ``gdb.Command`` for the scripts loaded
afterwards; when one of them defines `qemu`, our subcommands are added to the new prefix
right away.  Everything else about gdb.Command is left as it is.

Tables fit gdb's ``width`` (the terminal's, or ``set width``; unlimited under ``gdb -batch``):
``register`` gives it to the renderer, which reads it each time it draws a table.
"""
import gdb

from qemu_chardev.commands import chardev, diagnose, gsource, mutex, qiotask, watch
from qemu_chardev.commands.base import HelpPrefix
from qemu_chardev.render import base as render

PREFIX = "qemu"
SUBCOMMANDS = (*chardev.COMMANDS, *mutex.COMMANDS, *gsource.COMMANDS, *qiotask.COMMANDS,
               diagnose.DiagnoseCommand, *watch.COMMANDS)


class QemuPrefix(HelpPrefix):
    """Commands for inspecting QEMU (chardevs, locks, GSources, QIOTasks)."""
    command = PREFIX


def _prefix_exists():
    try:
        gdb.execute(f"help {PREFIX}", to_string=True)
        return True
    except gdb.error:
        return False


def _add_subcommands():
    return [cls() for cls in SUBCOMMANDS]


def _readd_after_redefinition():
    try:
        _add_subcommands()
    except (gdb.error, RuntimeError) as exc:      # `qemu` redefined as a plain command
        gdb.write(f"qemu-chardev-gdb: cannot add the qemu subcommands again after `{PREFIX}` "
                  f"was redefined: {exc}\n", gdb.STDERR)


def _install_redefinition_guard():
    original = gdb.Command
    if getattr(original, "_qemu_chardev_guard", False):
        return

    class Command(original):
        # Scripts loaded later subclass this instead of gdb's own Command; it only
        # watches for a redefinition of the `qemu` prefix (see the module docstring).
        _qemu_chardev_guard = True

        def __init__(self, name, *args, **kwargs):
            # Not super(): qemu-gdb.py calls ``gdb.Command.__init__(self, ...)`` by name, and
            # its qemugdb classes imported before this guard existed subclass gdb's own
            # Command, so ``self`` need not be an instance of this class.
            original.__init__(self, name, *args, **kwargs)
            if isinstance(name, str) and name.strip() == PREFIX \
                    and not isinstance(self, QemuPrefix):
                _readd_after_redefinition()

    Command.__qualname__ = Command.__name__ = "Command"
    gdb.Command = Command


def _gdb_width():
    """gdb's ``width``: columns, or None when unlimited."""
    return gdb.parameter("width")


def register():
    """Create the commands (an existing `qemu` prefix is reused) and keep them there when a
    script loaded later redefines the prefix."""
    render.set_width_source(_gdb_width)
    made = [] if _prefix_exists() else [QemuPrefix()]
    made += _add_subcommands()
    _install_redefinition_guard()
    return made
