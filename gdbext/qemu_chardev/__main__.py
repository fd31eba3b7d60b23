"""``python3 -m qemu_chardev --gdb-init``: see qemu_chardev.cli.main."""
import sys

from qemu_chardev.cli import main

sys.exit(main.main())
