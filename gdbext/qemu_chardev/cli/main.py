"""python3 -m qemu_chardev: how to load the extension into gdb from where pip put it.

  python3 -m qemu_chardev --gdb-init            the line for ~/.gdbinit (or gdb -ix FILE)
  python3 -m qemu_chardev --auto-load-script    a BINARY-gdb.py for gdb's auto-load
  python3 -m qemu_chardev --version

Run them with the Python the package was installed into (a venv's bin/python): the line
names the folders where that pip put the package and its dependencies.
"""
import argparse
import sys

from qemu_chardev.cli import gdbload
from qemu_chardev.model.tool import NAME, VERSION


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m qemu_chardev",
        description=f"{NAME} {VERSION}: gdb commands for QEMU chardev locks and GLib "
                    "GSources.  gdb's Python is not this one: these print what makes gdb "
                    "import the package installed here.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--gdb-init", action="store_true",
                      help="print the gdb command that loads the extension, for ~/.gdbinit: "
                           "python3 -m qemu_chardev --gdb-init >> ~/.gdbinit")
    what.add_argument("--auto-load-script", action="store_true",
                      help="print a gdb auto-load script, to save as "
                           "/usr/lib/debug/REALPATH-OF-BINARY-gdb.py (gdb's debug directory, "
                           "trusted by default) or as BINARY-gdb.py beside the QEMU binary "
                           "(then gdb needs 'add-auto-load-safe-path DIR' in ~/.gdbinit)")
    what.add_argument("--version", action="version", version=f"{NAME} {VERSION}")
    args = parser.parse_args(argv)
    if args.gdb_init:
        sys.stdout.write(gdbload.load_command() + "\n")
    else:
        sys.stdout.write(gdbload.auto_load_script())
    return 0
