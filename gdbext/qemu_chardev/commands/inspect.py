"""The `qemu ...` commands for chardevs, mutexes, GSources and QIOTasks."""
import gdb

from qemu_chardev.analysis import locks as analysis
from qemu_chardev.render import base as render
from qemu_chardev.readers.chardev import find_chardevs, read_chardev, resolve_chardev
from qemu_chardev.commands.base import QcgCommand, envelope
from qemu_chardev.model.errors import QcgError, TargetReadError
from qemu_chardev.target.memory import address_of_expression
from qemu_chardev.readers.gsource import read_gsource
from qemu_chardev.readers.mutex import lock_graph, read_mutex
from qemu_chardev.readers.qiotask import read_qiotask, tasks_in_threads
from qemu_chardev.readers import qom


class QemuPrefix(QcgCommand):
    """Commands for inspecting QEMU (chardevs, locks, GSources, QIOTasks)."""
    command = "qemu"
    prefix = True
    completer = gdb.COMPLETE_COMMAND


class ChardevPrefix(QcgCommand):
    """Inspect QEMU character devices: `qemu chardev list`, `qemu chardev show LABEL`."""
    command = "qemu chardev"
    prefix = True
    completer = gdb.COMPLETE_COMMAND

    def invoke(self, argument, from_tty):
        gdb.execute("help qemu chardev", from_tty)


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
        parser.add_argument("--json", action="store_true", help="machine-readable output")
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

    def build_parser(self, parser):
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("spec", metavar="LABEL|ADDRESS|EXPR", nargs="+")

    def run(self, args, snap):
        address, label = resolve_chardev(snap, " ".join(args.spec))
        chardev = read_chardev(snap, address, label=label, deep=True,
                               in_tree=label is not None or None)
        if label is None:
            chardev.in_tree = any(a == address for _l, a in qom.chardevs_in_tree(snap))
            chardev.found_via = "expression" if not chardev.in_tree else "qom"
        return render.chardev_block(chardev, args.colour), envelope(snap, chardev=chardev.to_json())

    def complete(self, text, word):
        try:
            from qemu_chardev.target.snapshot import Snapshot
            labels = [label for label, _a in qom.chardevs_in_tree(Snapshot())]
        except (QcgError, gdb.error, gdb.MemoryError):
            return []
        return sorted(label for label in labels if label and label.startswith(word or ""))


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

    def build_parser(self, parser):
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("spec", metavar="EXPR|LABEL", nargs="+")

    def run(self, args, snap):
        spec = " ".join(args.spec)
        address, kind = self._resolve(snap, spec)
        lock = read_mutex(snap, address, kind=kind, with_waiters=True)
        if lock.locked is None:
            raise TargetReadError(f"{kind} {spec!r}", address)
        waiting_on, owner_of = lock_graph(snap)
        cycles = [c for c in analysis.find_lock_cycles(waiting_on, owner_of)
                  if any(m == address for _l, m in c)]
        text = f"{kind} {spec}:\n" + render.mutex_block(lock, args.colour, cycles)
        obj = envelope(snap, mutex=lock.to_json(),
                       deadlocks=[[{"lwp": l, "mutex": f"0x{m:x}"} for l, m in c]
                                  for c in cycles])
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
        if names & {"Chardev", "SocketChardev"} or (not names - {""} and
                                                   qom.is_a(snap, address, "chardev")):
            if not qom.is_a(snap, address, "chardev"):
                raise QcgError(f"{spec!r} (0x{address:x}) is not a chardev")
            from qemu_chardev.readers.chardev import chardev_layout
            return address + chardev_layout().field("chr_write_lock").offset, "QemuMutex"
        if "QemuRecMutex" in names:
            return address, "QemuRecMutex"
        if "pthread_mutex_t" in names or "__pthread_mutex_s" in names:
            return address, "pthread_mutex_t"
        return address, "QemuMutex"


class GSourcePrefix(QcgCommand):
    """Decode a GSource: refcount, flags, context, id, funcs and callback, verdict.

Usage: qemu gsource [--json] EXPR

EXPR is a GSource* (or any pointer/address of one, e.g. 's->hup_source' or
'task->thread->completion').  Read without GLib debug info.  Verdicts: attached,
dispatching, unattached, destroyed-but-referenced (g_source_destroy ran but a reference is
still held: a leak if nobody points at it), looks-freed (ref_count 0 or garbage fields)."""
    command = "qemu gsource"
    prefix = True

    def build_parser(self, parser):
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("spec", metavar="EXPR", nargs="+")

    def run(self, args, snap):
        spec = " ".join(args.spec)
        address, _pointee = address_of_expression(spec)
        src = read_gsource(snap, address)
        if src.verdict == "unreadable":
            raise TargetReadError(f"GSource {spec!r}", address)
        return render.gsource_block(src, args.colour), envelope(snap, gsource=src.to_json())


class QIOTaskPrefix(QcgCommand):
    """Decode a QIOTask: source object, callback, error, thread data and completion GSource.

Usage: qemu qiotask [--json] EXPR
       qemu qiotask list [--json]"""
    command = "qemu qiotask"
    prefix = True

    def build_parser(self, parser):
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("spec", metavar="EXPR", nargs="+")

    def run(self, args, snap):
        address, _pointee = address_of_expression(" ".join(args.spec))
        task = read_qiotask(snap, address, found_via="expression")
        if task.func is None and task.problems:
            raise TargetReadError(f"QIOTask {' '.join(args.spec)!r}: {task.problems[0]}")
        return render.qiotask_block(task, args.colour), envelope(snap, task=task.to_json())


class QIOTaskList(QcgCommand):
    """List QIOTasks reachable from chardevs (connect_task) and from worker threads.

Usage: qemu qiotask list [--json]

Worker threads are those with qio_task_thread_worker on their stack; their task comes from
that frame."""
    command = "qemu qiotask list"

    def build_parser(self, parser):
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, args, snap):
        tasks = {}
        for chardev in find_chardevs(snap, include_frames=False):
            task = chardev.fields.get("connect_task")
            if task and task != "n/a":
                address = int(task, 16)
                tasks[address] = read_qiotask(snap, address,
                                              found_via=f"{chardev.label}.connect_task")
        for lwp, address in tasks_in_threads(snap):
            task = tasks.get(address) or read_qiotask(snap, address,
                                                      found_via=f"worker thread LWP {lwp}")
            task.worker_thread = snap.thread_ref(lwp)
            tasks[address] = task
        if not tasks:
            text = "No QIOTasks found (no connect_task set and no qio_task_thread_worker thread)."
        else:
            text = "\n\n".join(render.qiotask_block(t, args.colour) for t in tasks.values())
        return text, envelope(snap, tasks=[t.to_json() for t in tasks.values()])


def register():
    """Create the commands; an existing `qemu` prefix (QEMU's own qemu-gdb.py) is reused."""
    try:
        gdb.execute("help qemu", to_string=True)
        have_prefix = True
    except gdb.error:
        have_prefix = False
    from qemu_chardev.commands.diagnose import DiagnoseCommand
    from qemu_chardev.commands.gsource import COMMANDS as gsource_commands
    from qemu_chardev.commands.watch import COMMANDS as watch_commands
    classes = [ChardevPrefix, ChardevList, ChardevShow, MutexCommand, GSourcePrefix,
               *gsource_commands, QIOTaskPrefix, QIOTaskList, DiagnoseCommand, *watch_commands]
    if not have_prefix:
        classes.insert(0, QemuPrefix)
    return [cls() for cls in classes]
