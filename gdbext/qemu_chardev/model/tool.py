"""This tool's name and version: the report's ``tool``, ``--version``, the package metadata."""
NAME = "qemu-chardev-gdb"
VERSION = "0.1.0"
