"""This tool's name and version: the report's ``tool``, ``--version``, the package metadata."""
NAME = "qemu-chardev-gdb"
VERSION = "0.1.0"
# The oldest gdb the extension runs in: gdb.format_address, gdb.Value.bytes and the
# gdb_exiting event arrived in gdb 13.  Tested: Debian 12's gdb 13.1.
MINIMUM_GDB = (13, 0)
