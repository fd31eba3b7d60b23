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

import importlib
import os
import sys
import threading

from qemu_chardev.model.tool import VERSION as __version__  # noqa: F401
from qemu_chardev.model.tool import MINIMUM_GDB, NAME

_started = False
_warming = None

# The folders that never import gdb (the list above; tests/unit/test_layers.py enforces it):
# importing them cannot touch gdb's state.
GDB_FREE_LAYERS = ("model", "analysis", "render", "files")


def warm_up():
    """Import the layers that never touch gdb on a thread of gdb's Python, while gdb's main
    thread goes on reading the binary's symbols and the core (the scripts run this from
    ``-iex``, before gdb opens them; gdb does not hold Python's lock while it reads symbols).
    The load that follows then takes 8-12 ms instead of 45-66 (on a 2-core machine the thread
    competes with gdb's own workers: bench/README.md).  ``start`` waits for the thread before
    importing anything itself, so no module is ever imported by two threads at once."""
    global _warming
    if _warming is None and not _started:
        # not a daemon thread: gdb exiting early (a core that cannot be opened) waits for it
        # rather than ending Python under an import half done
        _warming = threading.Thread(target=_import_gdb_free_layers, name="qemu-chardev-warm-up")
        _warming.start()


def _import_gdb_free_layers():
    for layer in GDB_FREE_LAYERS:
        folder = os.path.join(os.path.dirname(__file__), layer)
        try:
            names = sorted(n[:-3] for n in os.listdir(folder)
                           if n.endswith(".py") and n != "__init__.py")
        except OSError:
            continue
        for name in names:
            try:
                importlib.import_module(f"{__name__}.{layer}.{name}")
            except Exception:   # noqa: BLE001 (the import on gdb's main thread reports it)
                pass


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
    if _warming is not None:
        _warming.join()
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
