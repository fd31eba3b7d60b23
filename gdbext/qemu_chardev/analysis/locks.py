"""Pure lock analysis: what a glibc mutex word says, and deadlock cycles in a wait-for graph.

Nothing here touches gdb; every function takes plain values and is unit-tested directly.
"""
from qemu_chardev.model.objects import ptr

# glibc pthread_mutex_t.__kind & 3
PTHREAD_MUTEX_TYPES = {0: "normal", 1: "recursive", 2: "errorcheck", 3: "adaptive"}
PTHREAD_MUTEX_ROBUST = 16
PTHREAD_MUTEX_PRIO_INHERIT = 32
FUTEX_TID_MASK = 0x3FFFFFFF


def decode_pthread_mutex(lock, count, owner, kind):
    """What a glibc x86_64 ``pthread_mutex_t`` says about itself.

    Returns a dict: locked (bool), owner_lwp (int or None), type (str), destroyed (bool),
    waiters_flagged (bool: the futex word says someone sleeps on it), recursion (int).
    """
    destroyed = kind == -1 or kind == 0xFFFFFFFF
    if destroyed:
        return {"locked": False, "owner_lwp": None, "type": "destroyed", "destroyed": True,
                "waiters_flagged": False, "recursion": 0}
    kind &= 0xFFFFFFFF
    lock &= 0xFFFFFFFF
    if kind & (PTHREAD_MUTEX_ROBUST | PTHREAD_MUTEX_PRIO_INHERIT):
        tid = lock & FUTEX_TID_MASK
        locked = tid != 0
        owner_lwp = tid or None
        waiters = bool(lock & 0x80000000)
    else:
        locked = lock != 0
        owner_lwp = owner if owner else None
        waiters = lock == 2
    return {"locked": locked, "owner_lwp": owner_lwp if locked else None,
            "type": PTHREAD_MUTEX_TYPES[kind & 3], "destroyed": False,
            "waiters_flagged": waiters, "recursion": count if locked else 0}


def find_lock_cycles(waiting_on, owner_of):
    """Deadlock cycles in a wait-for graph.

    ``waiting_on`` maps a thread (LWP) to the mutex address it is blocked on; ``owner_of`` maps a
    mutex address to its owner LWP.  Returns a list of cycles, each a list of (lwp, mutex)
    pairs in wait order, starting at the smallest LWP; a thread waiting on a mutex it holds
    itself is a cycle of one.  Bounded: every thread is visited at most once per start.
    """
    cycles = []
    seen_cycles = set()
    for start in sorted(waiting_on):
        path = []
        index_of = {}
        lwp = start
        while lwp is not None and lwp in waiting_on and lwp not in index_of:
            index_of[lwp] = len(path)
            mutex = waiting_on[lwp]
            path.append((lwp, mutex))
            lwp = owner_of.get(mutex)
        if lwp is not None and lwp in index_of:
            cycle = path[index_of[lwp]:]
            first = min(range(len(cycle)), key=lambda i: cycle[i][0])
            cycle = cycle[first:] + cycle[:first]
            key = tuple(cycle)
            if key not in seen_cycles:
                seen_cycles.add(key)
                cycles.append(cycle)
    return cycles


def cycle_json(cycle):
    """A cycle as JSON: [{"lwp", "mutex": "0x..."}] in wait order."""
    return [{"lwp": lwp, "mutex": ptr(mutex)} for lwp, mutex in cycle]
