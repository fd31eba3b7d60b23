"""`qemu mutex`: a QemuMutex, QemuRecMutex, pthread_mutex_t or a chardev's chr_write_lock."""
import gdb

from qemu_chardev.analysis import locks
from qemu_chardev.commands.base import QcgCommand, envelope
from qemu_chardev.model.errors import QcgError, TargetReadError
from qemu_chardev.readers import qom
from qemu_chardev.readers.chardev import resolve_chardev
from qemu_chardev.readers.qom import chardev_layout
from qemu_chardev.readers.mutex import lock_graph, read_mutex
from qemu_chardev.render import base as render
from qemu_chardev.target.memory import address_of_expression


class MutexCommand(QcgCommand):
    """Who holds a lock, where it was taken, who waits, and whether they deadlock.

Usage: qemu mutex [--json] EXPR|LABEL

EXPR is a QemuMutex, QemuRecMutex, pthread_mutex_t, or a pointer to one; a Chardev or
SocketChardev (or a chardev label) means its chr_write_lock.  Shows: locked or not; the
owner's LWP, gdb thread and innermost QEMU frame; the file:line of the qemu_mutex_lock call
when QEMU was built with --enable-debug-mutex; every thread blocked on it (found in
qemu_mutex_lock_impl frames); and any lock-order cycle (deadlock) those waits form,
including a thread waiting for a lock it already holds."""
    command = "qemu mutex"
    operand = "EXPR|LABEL"

    def run(self, args, snap):
        spec = args.spec
        address, kind = self._resolve(snap, spec)
        lock = read_mutex(snap, address, kind=kind, with_waiters=True)
        if lock.locked is None:
            raise TargetReadError(f"{kind} {spec!r}", address)
        waiting_on, owner_of = lock_graph(snap)
        cycles = [c for c in locks.find_lock_cycles(waiting_on, owner_of)
                  if any(m == address for _l, m in c)]
        text = f"{kind} {spec}:\n" + render.mutex_block(lock, args.colour, cycles)
        obj = envelope(snap, mutex=lock.to_json(),
                       deadlocks=[locks.cycle_json(c) for c in cycles])
        return text, obj

    @staticmethod
    def _resolve(snap, spec):
        try:
            address, pointee = address_of_expression(spec)
        except QcgError as not_expression:
            try:
                address, _label = resolve_chardev(snap, spec)   # a chardev label
            except QcgError:
                raise not_expression from None
            pointee = gdb.lookup_type("Chardev")
        names = set()
        if pointee is not None:
            names = {str(pointee).replace("struct ", ""),
                     (pointee.strip_typedefs().tag or "").replace("struct ", "")}
        if names & {"Chardev", "SocketChardev"} or \
                (not names - {""} and qom.is_a(snap, address, "chardev")):
            if not qom.is_a(snap, address, "chardev"):
                raise QcgError(f"{spec!r} (0x{address:x}) is not a chardev")
            return address + chardev_layout().field("chr_write_lock").offset, "QemuMutex"
        if "QemuRecMutex" in names:
            return address, "QemuRecMutex"
        if "pthread_mutex_t" in names or "__pthread_mutex_s" in names:
            return address, "pthread_mutex_t"
        return address, "QemuMutex"


COMMANDS = (MutexCommand,)
