"""qemu-chardev-gdb: diagnose QEMU chardev lock bugs and GLib GSource refcount bugs in gdb.

Layers, each importing only those before it:
  errors, models, analysis, render        pure Python, no gdb (unit-tested without gdb)
  target, glib                            reading target memory: cached types, one read a struct
  snapshot, qom, mutex, gsource, qiotask, chardev     readers that build models
  command_base, commands, printers        thin gdb commands and pretty-printers
"""

__version__ = "0.1.0"


def load():
    """Register commands and pretty-printers (called by gdbext/qemu-chardev-gdb.py)."""
    from qemu_chardev.commands import inspect as commands
    from qemu_chardev.commands import printers
    from qemu_chardev.render import base as render
    commands.register()
    printers.register()
    return render.MISSING_OPTIONAL
