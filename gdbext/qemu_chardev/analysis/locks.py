"""Pure analysis: decoding lock words and GSource flags, verdicts, lock cycles.

Nothing here touches gdb; every function takes plain values and is unit-tested directly.
"""

# glibc pthread_mutex_t.__kind & 3
PTHREAD_MUTEX_TYPES = {0: "normal", 1: "recursive", 2: "errorcheck", 3: "adaptive"}
PTHREAD_MUTEX_ROBUST = 16
PTHREAD_MUTEX_PRIO_INHERIT = 32
FUTEX_TID_MASK = 0x3FFFFFFF

# GHook / GSource flag bits (ghook.h, gmain.c; the same in every GLib version read).
GSOURCE_FLAGS = [
    (0x01, "ACTIVE"), (0x02, "IN_CALL"), (0x10, "READY"),
    (0x20, "CAN_RECURSE"), (0x40, "BLOCKED"),
]
GSOURCE_KNOWN_FLAG_BITS = 0x7F
G_SOURCE_ACTIVE = 0x01
G_SOURCE_IN_CALL = 0x02

TCP_CHARDEV_STATES = {0: "disconnected", 1: "connecting", 2: "connected"}


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


def gsource_flag_names(flags):
    """Names of the set GSource flag bits, e.g. ["ACTIVE", "IN_CALL"]; unknown bits in hex."""
    if flags is None:
        return []
    names = [name for bit, name in GSOURCE_FLAGS if flags & bit]
    unknown = flags & ~GSOURCE_KNOWN_FLAG_BITS
    if unknown:
        names.append(f"0x{unknown:x}")
    return names


def gsource_verdict(ref_count, flags, context, priority=0):
    """A one-word verdict on a GSource from its raw fields.

    * ``looks-freed``: ref_count 0 (finalized or freed memory), or fields no live GSource has.
    * ``destroyed-but-referenced``: ACTIVE clear, still referenced: g_source_destroy() ran
      and somebody kept a reference (normal for a moment, a leak if nobody points at it).
    * ``attached``: ACTIVE and attached to a context; ``dispatching`` while IN_CALL.
    * ``unattached``: ACTIVE, created but never attached.
    """
    if ref_count is None or flags is None:
        return "unreadable"
    if ref_count == 0 or ref_count > 1 << 24:
        return "looks-freed"
    if flags & ~GSOURCE_KNOWN_FLAG_BITS or not -(1 << 20) < priority < 1 << 20:
        return "looks-freed"
    if not flags & G_SOURCE_ACTIVE:
        return "destroyed-but-referenced"
    if not context:
        return "unattached"
    if flags & G_SOURCE_IN_CALL:
        return "dispatching"
    return "attached"


def socket_state_name(enumerator_or_value):
    """'connected' from TCP_CHARDEV_STATE_CONNECTED (or from its value 2)."""
    if enumerator_or_value is None:
        return None
    if isinstance(enumerator_or_value, int):
        return TCP_CHARDEV_STATES.get(enumerator_or_value, f"unknown({enumerator_or_value})")
    name = str(enumerator_or_value)
    prefix = "TCP_CHARDEV_STATE_"
    return name[len(prefix):].lower() if name.startswith(prefix) else name.lower()


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
