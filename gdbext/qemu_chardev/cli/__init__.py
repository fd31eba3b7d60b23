"""Programs that run outside gdb, with any Python 3.9+: they start gdb with the extension.

  postmortem   chardev-postmortem: cores in, text/JSON/JUnit/Markdown reports out
  catch        catch-disconnect-during-write: the live watch, driven from outside gdb
  gdbload      how a gdb finds this package: the load line, the auto-load script
  main         ``python3 -m qemu_chardev``: prints those for ~/.gdbinit or auto-load

Nothing here imports gdb or the gdb side of the package (tests/unit/test_layers.py).
"""
