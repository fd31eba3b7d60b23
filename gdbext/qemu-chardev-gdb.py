# qemu-chardev-gdb: `source` this file in gdb to get the `qemu ...` chardev/GSource commands.
#
#   (gdb) source /path/to/gdbext/qemu-chardev-gdb.py
#   (gdb) help qemu
#
# It coexists with QEMU's own scripts/qemu-gdb.py (both add commands under `qemu`), in
# either load order, and loading it twice is harmless.
import os
import sys

_here = os.path.dirname(os.path.abspath(os.path.expanduser(__file__)))
if _here not in sys.path:
    sys.path.insert(0, _here)

import qemu_chardev  # noqa: E402

qemu_chardev.start()
