"""Reading QIOTask and its QIOTaskThreadData; finding tasks in chardevs and worker threads."""
from qemu_chardev.readers import qom
from qemu_chardev.target import memory as target
from qemu_chardev.model.errors import TargetReadError
from qemu_chardev.readers.gsource import read_gsource
from qemu_chardev.model.objects import ObjectState, QIOTaskState
from qemu_chardev.target.memory import Layout

WORKER_FUNCTION = "qio_task_thread_worker"


def read_qiotask(snap, address, found_via=""):
    """A QIOTaskState; threaded tasks include their completion GSource."""
    state = QIOTaskState(address=address, found_via=found_via)
    layout = Layout.of("QIOTask", "struct QIOTask")
    if layout is None:
        state.problems.append("type QIOTask unknown (no debug info for io/task.c)")
        return state
    try:
        view = snap.mem.view(layout, address, "QIOTask")
    except TargetReadError as exc:
        state.problems.append(str(exc))
        return state
    source = view["source"]
    if source:
        state.source = ObjectState(address=source, role="source",
                                   type=qom.type_name(snap, source))
    state.func = view["func"]
    state.func_symbol = target.symbol_name(state.func)
    state.opaque = view["opaque"]
    state.error = view.get("err")
    state.result = view.get("result")
    state.thread_data = view.get("thread")
    if state.func and state.func_symbol is None:
        state.problems.append("func is not a known function (task freed or garbage?)")
    if state.thread_data:
        _read_thread_data(snap, state)
    return state


def _read_thread_data(snap, state):
    layout = Layout.of("struct QIOTaskThreadData", "QIOTaskThreadData")
    if layout is None:
        state.problems.append("type struct QIOTaskThreadData unknown")
        return
    try:
        data = snap.mem.view(layout, state.thread_data, "QIOTaskThreadData")
    except TargetReadError as exc:
        state.problems.append(str(exc))
        return
    state.worker_symbol = target.symbol_name(data["worker"])
    state.context = data["context"]
    if data["completion"]:
        state.completion = read_gsource(snap, data["completion"], role="completion")


def tasks_in_threads(snap):
    """[(lwp, task address)] for threads running qio_task_thread_worker."""
    found = []
    for lwp in snap.threads():
        for frame in snap.stack(lwp):
            if frame.function == WORKER_FUNCTION:
                task = frame.pointer("task") or frame.pointer("opaque")
                if task:
                    found.append((lwp, task))
                break
    return found


def reachable_tasks(snap, chardevs):
    """[QIOTaskState] of every task a chardev's ``connect_task`` or a worker thread holds
    (one entry per task; a worker's task carries its ``worker_thread``)."""
    tasks = {}
    for chardev in chardevs:
        if chardev.connect_task is not None:
            tasks[chardev.connect_task.address] = chardev.connect_task
        else:
            address = chardev.fields.get("connect_task")
            if address and address != "n/a":
                address = int(address, 16)
                tasks[address] = read_qiotask(snap, address,
                                              found_via=f"{chardev.label}.connect_task")
    for lwp, address in tasks_in_threads(snap):
        task = tasks.get(address) or read_qiotask(snap, address,
                                                  found_via=f"worker thread LWP {lwp}")
        task.worker_thread = snap.thread_ref(lwp)
        tasks[address] = task
    return list(tasks.values())
