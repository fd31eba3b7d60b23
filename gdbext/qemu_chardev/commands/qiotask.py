"""`qemu qiotask EXPR` and `qemu qiotask list`."""
from qemu_chardev.commands.base import QcgCommand, envelope
from qemu_chardev.model.errors import TargetReadError
from qemu_chardev.readers.chardev import find_chardevs
from qemu_chardev.readers.qiotask import read_qiotask, reachable_tasks
from qemu_chardev.render import base as render
from qemu_chardev.target.memory import address_of_expression


class QIOTaskPrefix(QcgCommand):
    """Decode a QIOTask: source object, callback, error, thread data and completion GSource.

Usage: qemu qiotask [--json] EXPR
       qemu qiotask list [--json]"""
    command = "qemu qiotask"
    prefix = True
    operand = "EXPR"

    def run(self, args, snap):
        address, _pointee = address_of_expression(args.spec)
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

    def run(self, args, snap):
        tasks = reachable_tasks(snap, find_chardevs(snap, include_frames=False))
        if not tasks:
            text = "No QIOTasks found (no connect_task set and no qio_task_thread_worker thread)."
        else:
            text = "\n\n".join(render.qiotask_block(t, args.colour) for t in tasks)
        return text, envelope(snap, tasks=[t.to_json() for t in tasks])


COMMANDS = (QIOTaskPrefix, QIOTaskList)
