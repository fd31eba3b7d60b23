"""qemu-chardev-gdb: diagnose QEMU chardev lock bugs and GLib GSource refcount bugs in gdb.

Folders, each importing only those below it (tests/unit/test_layers.py enforces it):

  commands/   the gdb commands, one module per family, and the pretty-printers
  live/       stopping a live QEMU: the watchpoint engine, watch-disconnect, gsource trace
  readers/    one per subsystem: qom, glib, gsource, mutex, qiotask, chardev, census, crash,
              binary, report; each turns target memory into models
  target/     gdb access: cached layouts and one-read-per-struct memory, symbols, threads
              and frames, what kind of target (core or live)
  ---------   nothing below imports gdb: unit-tested anywhere, used by the scripts
  cli/        the programs outside gdb (chardev-postmortem, catch-disconnect-during-write,
              python3 -m qemu_chardev) and how they make a gdb load this package
  render/     text tables, colour, JSON, the report's text/Markdown/JUnit forms
  analysis/   conclusions: lock cycles, the GSource census, findings, watch and trace rules
  files/      ELF and core files (pyelftools) and the fast memory scan
  model/      plain data and the facts of QEMU, GLib and glibc, each defined once
"""

import sys

from qemu_chardev.model.tool import VERSION as __version__  # noqa: F401
from qemu_chardev.model.tool import MINIMUM_GDB, NAME

_started = False


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


def start():
    """Load the extension into the running gdb, once: every way in (``source`` of
    gdbext/qemu-chardev-gdb.py, the ``python3 -m qemu_chardev --gdb-init`` line, a gdb
    auto-load script) ends here, so loading it twice does nothing more than once."""
    global _started
    import gdb
    if _started:
        return
    version = tuple(int(p) for p in gdb.VERSION.split(".")[:2] if p.isdigit())
    if version < MINIMUM_GDB:
        raise gdb.GdbError(f"{NAME}: gdb {gdb.VERSION} is too old: needs gdb "
                           f"{'.'.join(map(str, MINIMUM_GDB))} or later")
    missing = load()
    _started = True
    if missing:
        gdb.write(f"{NAME}: {' and '.join(missing)} not importable by gdb's Python "
                  f"({sys.executable or 'embedded python'}); output will be "
                  f"plain. Install with: apt-get install "
                  f"{' '.join('python3-' + m for m in missing)}\n")
