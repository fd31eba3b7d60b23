"""`qemu chardev list` and `qemu chardev show`."""
import gdb

from qemu_chardev.commands.base import HelpPrefix, QcgCommand, envelope
from qemu_chardev.model.errors import QcgError
from qemu_chardev.readers import qom
from qemu_chardev.readers.chardev import find_chardevs, read_chardev, resolve_chardev
from qemu_chardev.render import base as render
from qemu_chardev.target.snapshot import Snapshot


class ChardevPrefix(HelpPrefix):
    """Inspect QEMU character devices: `qemu chardev list`, `qemu chardev show LABEL`."""
    command = "qemu chardev"


class ChardevList(QcgCommand):
    """List every chardev: type, socket state, ioc/sioc, and who holds its chr_write_lock.

Usage: qemu chardev list [--json] [--no-frames]

Chardevs are found in the QOM tree (/chardevs), read without GLib debug info.  Chardev
pointers found in thread frames but missing from the tree (e.g. already unparented) are
listed too, marked with '*'.  --no-frames skips that stack scan (faster with many threads).
A NULL ioc/sioc on a connected socket is flagged.  --json prints objects with the report
schema's field names: label, address, type, state, ioc, sioc, write_lock{locked, owner_lwp,
owner_thread, owner_function}."""
    command = "qemu chardev list"

    def build_parser(self, parser):
        parser.add_argument("--no-frames", action="store_true",
                            help="do not look for chardevs in thread frames")

    def run(self, args, snap):
        chardevs = find_chardevs(snap, include_frames=not args.no_frames)
        return (render.chardev_list(chardevs, args.colour),
                envelope(snap, chardevs=[c.to_json() for c in chardevs]))


class ChardevShow(QcgCommand):
    """Show one chardev in depth: its lock, SocketChardev fields, channels, GSources, task.

Usage: qemu chardev show [--json] LABEL|ADDRESS|EXPR

LABEL is a chardev id (tab-completes); otherwise the argument is a gdb expression giving a
Chardev* or SocketChardev* (e.g. 'chr', '$rdi', '0x55d0c0a3e2b0').  Every SocketChardev
field of the running QEMU version is shown; fields a version lacks show as n/a.  GSources
(chr->gsource, hup_source, telnet_source, reconnect_timer) come with refcounts, flags and
verdicts; QIOChannel objects with their QOM refcounts; connect_task decoded."""
    command = "qemu chardev show"
    operand = "LABEL|ADDRESS|EXPR"

    def run(self, args, snap):
        address, label = resolve_chardev(snap, args.spec)
        chardev = read_chardev(snap, address, label=label, deep=True,
                               in_tree=label is not None or None)
        if label is None:
            chardev.in_tree = any(a == address for _l, a in qom.chardevs_in_tree(snap))
            chardev.found_via = "expression" if not chardev.in_tree else "qom"
        return render.chardev_block(chardev, args.colour), envelope(snap, chardev=chardev.to_json())

    def complete(self, text, word):
        try:
            labels = [label for label, _a in qom.chardevs_in_tree(Snapshot())]
        except (QcgError, gdb.error, gdb.MemoryError):
            return []
        return sorted(label for label in labels if label and label.startswith(word or ""))


COMMANDS = (ChardevPrefix, ChardevList, ChardevShow)
