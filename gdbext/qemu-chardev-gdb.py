# qemu-chardev-gdb: `source` this file in gdb to get the `qemu ...` chardev/GSource commands.
#
#   (gdb) source /path/to/gdbext/qemu-chardev-gdb.py
#   (gdb) help qemu
#
# It coexists with QEMU's own scripts/qemu-gdb.py (both add commands under `qemu`).
import os
import sys

import gdb

_here = os.path.dirname(os.path.abspath(os.path.expanduser(__file__)))
if _here not in sys.path:
    sys.path.insert(0, _here)

import qemu_chardev  # noqa: E402

_missing = qemu_chardev.load()
if _missing:
    gdb.write("qemu-chardev-gdb: %s not importable by gdb's Python (%s); output will be plain. "
              "Install with: apt-get install %s\n"
              % (" and ".join(_missing), sys.executable or "embedded python",
                 " ".join("python3-" + m for m in _missing)))
