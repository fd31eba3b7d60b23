"""Reading QemuMutex, QemuRecMutex and glibc pthread_mutex_t from the target."""
from qemu_chardev.analysis import locks as analysis
from qemu_chardev.model.errors import TargetReadError
from qemu_chardev.model.objects import MutexState
from qemu_chardev.target.memory import Layout, objfile_cache

# Where the pthread mutex sits inside each supported wrapper, and the debug-mutex fields.
_KINDS = {
    # kind: (type names, path prefix of pthread_mutex_t, prefix of QemuMutex fields)
    "QemuMutex": (("QemuMutex", "struct QemuMutex"), "lock.", ""),
    "QemuRecMutex": (("QemuRecMutex", "struct QemuRecMutex"), "m.lock.", "m."),
    "pthread_mutex_t": (("pthread_mutex_t",), "", None),
}


MAX_TID = 1 << 22              # Linux's PID_MAX_LIMIT on 64-bit


_layouts = objfile_cache()


def mutex_layout(kind):
    names, _p, _q = _KINDS[kind]
    layout = Layout.of(*names)
    if kind == "QemuRecMutex" and layout is not None and not layout.has("m.lock"):
        # QEMU < 6.1: QemuRecMutex is a typedef of QemuMutex.
        return Layout.of("QemuMutex", "struct QemuMutex"), "lock.", ""
    if layout is None:
        raise TargetReadError(f"type {names[0]} (no QEMU debug info?)")
    return layout, _KINDS[kind][1], _KINDS[kind][2]


def _plan(kind):
    """(layout, pthread prefix, QemuMutex prefix, paths of the words read_mutex decodes),
    worked out once per kind (a thousand chardevs have a thousand locks)."""
    found = _layouts.get(kind)
    if found is None:
        layout, pth, qm = mutex_layout(kind)
        data = pth + "__data."
        paths = (data + "__lock", data + "__count", data + "__owner", data + "__kind")
        if qm is not None:
            paths += (qm + "initialized", qm + "file", qm + "line")
        found = _layouts[kind] = (layout, pth, qm, paths)
    return found


def read_mutex(snap, address, kind="QemuMutex", with_owner=True, with_waiters=False,
               within=None):
    """A MutexState for the mutex at ``address``.

    ``with_owner`` unwinds the owner's stack to name the function it is in;
    ``with_waiters`` unwinds every thread to find those blocked on this mutex;
    ``within``: a ``View`` already read that holds the mutex (its Chardev).
    """
    layout, pth, qm, paths = _plan(kind)
    state = MutexState(address=address, kind=kind, locked=None)
    try:
        view = snap.mem.view(layout, address, kind, within=within)
    except TargetReadError as exc:
        state.problems.append(str(exc))
        snap.note(f"{kind} at 0x{address:x}: {exc}")
        return state
    words = view.values(*paths)
    # a word this pthread_mutex_t lacks reads as 0
    lock, count, owner, kind_word = (0 if w is None else w for w in words[:4])
    if kind_word >= 1 << 31:
        kind_word -= 1 << 32
    decoded = analysis.decode_pthread_mutex(lock, count, owner, kind_word)
    impossible = _impossible_words(lock, kind_word, owner)
    if impossible:              # shown as read, never trusted: neither held nor free
        state.problems.append(f"damaged: {impossible}")
        snap.note(f"{kind} at 0x{address:x}: damaged: {impossible}")
        state.lock_word = lock
        return state
    state.locked = decoded["locked"]
    state.owner_lwp = decoded["owner_lwp"]
    state.lock_word = lock
    state.count = decoded["recursion"]
    state.mutex_type = decoded["type"]
    state.destroyed = decoded["destroyed"]
    if qm is not None:
        state.initialized, file_ptr, line = words[4:]
        if file_ptr:
            try:
                state.locker_file = snap.mem.cstring(file_ptr, 256, "debug-mutex file")
                state.locker_line = line
            except TargetReadError:
                state.problems.append("debug-mutex file name unreadable")
        if state.initialized is False and not state.destroyed:
            state.problems.append("QemuMutex not initialized (or already destroyed)")
    if state.locked and state.owner_lwp is None:
        state.problems.append("locked but no owner recorded (lock elision?)")
    if with_owner and state.owner_lwp:
        state.owner = snap.thread_ref(state.owner_lwp)
        if state.owner.num is None:
            why = (f"owner LWP {state.owner_lwp} is not a thread of this process "
                   "(exited while holding the lock, or garbage)")
            state.problems.append(why)
            snap.note(f"{kind} at 0x{address:x}: {why}")
    if with_waiters:
        pthread_address = address + (layout.field(pth.rstrip(".")).offset if pth else 0)
        for lwp, waited in sorted(snap.lock_waits().items()):
            if waited in (address, pthread_address):
                state.waiters.append(snap.thread_ref(lwp))
    return state


def _impossible_words(lock, kind_word, owner=0):
    """Why a pthread mutex's words cannot be a glibc mutex's, or None.  A normal, recursive,
    error-checking or adaptive mutex's futex word is 0 (free), 1 (held) or 2 (held, waiters);
    robust and priority-inheritance ones hold a TID instead; an owner is a positive TID."""
    if lock is None or kind_word is None or kind_word == -1:
        return None
    if owner and not 0 < owner < MAX_TID:
        return f"owner {owner} is no thread id"
    if kind_word & (analysis.PTHREAD_MUTEX_ROBUST | analysis.PTHREAD_MUTEX_PRIO_INHERIT):
        return None
    if (lock & 0xFFFFFFFF) not in (0, 1, 2):
        return f"lock word 0x{lock & 0xFFFFFFFF:x} is no glibc mutex state (0, 1 or 2)"
    return None


def lock_graph(snap):
    """(waiting_on, owner_of) of every thread blocked in qemu_mutex_lock_impl."""
    waiting_on = dict(snap.lock_waits())
    owner_of = {}
    for mutex in set(waiting_on.values()):
        state = read_mutex(snap, mutex, with_owner=False)
        if state.owner_lwp:
            owner_of[mutex] = state.owner_lwp
    return waiting_on, owner_of
