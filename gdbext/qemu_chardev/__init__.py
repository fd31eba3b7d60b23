"""qemu-chardev-gdb: diagnose QEMU chardev lock bugs and GLib GSource refcount bugs in gdb.

Folders, each importing only those below it (tests/unit/test_layers.py enforces it):

  commands/   the gdb commands, one module per family, and the pretty-printers
  live/       stopping a live QEMU: the watchpoint engine, watch-disconnect, gsource trace
  readers/    one per subsystem: qom, glib, gsource, mutex, qiotask, chardev, census, crash,
              binary, report; each turns target memory into models
  target/     gdb access: cached layouts and one-read-per-struct memory, symbols, threads
              and frames, what kind of target (core or live)
  ---------   nothing below imports gdb: unit-tested anywhere, used by the scripts
  render/     text tables, colour, JSON, the report's text/Markdown/JUnit forms
  analysis/   conclusions: lock cycles, the GSource census, findings, watch and trace rules
  files/      ELF and core files (pyelftools) and the fast memory scan
  model/      plain data and the facts of QEMU, GLib and glibc, each defined once
"""

from qemu_chardev.model.tool import VERSION as __version__  # noqa: F401


def load():
    """Register commands and pretty-printers (called by gdbext/qemu-chardev-gdb.py).

    The gdb side is imported here, not at the top: ``import qemu_chardev`` (the scripts read
    ``__version__``) must work without gdb."""
    from qemu_chardev import commands
    from qemu_chardev.commands import printers
    from qemu_chardev.render import base as render
    commands.register()
    printers.register()
    return render.MISSING_OPTIONAL
