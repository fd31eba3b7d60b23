"""Pure analysis for `qemu watch-disconnect`: is a change of a socket chardev a violation?

The rule (QEMU 4.2, commit 78d01598ae "char-socket: Lock tcp_chr_disconnect() and
socket_reconnect_timeout()"): a socket chardev's connection may only be torn down, i.e.
``s->ioc``/``s->sioc`` cleared or ``s->state`` taken away from ``connected``, by a thread that
holds that chardev's ``chr_write_lock``.  Writers (``tcp_chr_write``, called with the lock held)
check ``state`` and then use ``ioc``; a disconnect racing with them leaves ``ioc == NULL``
under a writer that already saw ``connected``.

Nothing here touches gdb: every function takes plain values and is unit-tested directly.
"""
from dataclasses import dataclass, field
from typing import List, Optional

from qemu_chardev.model.objects import ptr

DISCONNECT_DURING_WRITE = "disconnect-during-write"
DISCONNECT_WITHOUT_LOCK = "disconnect-without-write-lock"
CRASH = "crash"
SEVERITY = {DISCONNECT_DURING_WRITE: "error", DISCONNECT_WITHOUT_LOCK: "warning",
            CRASH: "error"}

# TCPChardevState: the same values in every QEMU version (0, 1, 2).
STATE_DISCONNECTED, STATE_CONNECTING, STATE_CONNECTED = 0, 1, 2
STATE_NAMES = {0: "disconnected", 1: "connecting", 2: "connected"}

# What a watch can observe.  "teardown" is the fallback breakpoint at the entry of
# tcp_chr_free_connection(): nothing is cleared yet, the function is about to clear it all.
POINTER_FIELDS = ("ioc", "sioc")
STATE_FIELD = "state"
TEARDOWN = "teardown"
WATCHABLE_FIELDS = ("state", "ioc", "sioc")

# Functions that free a connection legitimately without chr_write_lock: the chardev is being
# finalized, so no other thread can still hold a reference to it.
FINALIZERS = ("char_socket_finalize",)

X86_DEBUG_REGISTERS = 4


def state_name(value):
    if value is None:
        return None
    return STATE_NAMES.get(value, f"unknown({value})")


def is_teardown(field_name, old, new, state_now=None, ioc_now=None):
    """True if this observed change tears a connection down.

    * ``ioc``/``sioc``: a non-NULL pointer becomes NULL (a pointer replaced by another one, as
      when a TLS or websocket channel wraps the socket, is not a teardown; NULL -> pointer
      is a connect).
    * ``state``: ``connected`` becomes anything else (connecting -> connected is a connect;
      connecting -> disconnected is a failed handshake, which no writer can race with because
      writers only touch a ``connected`` chardev).
    * ``teardown`` (breakpoint at tcp_chr_free_connection entry): the chardev is connected or
      still has a channel (``state_now``/``ioc_now`` at entry), so the call will clear it.
    """
    if field_name in POINTER_FIELDS:
        return bool(old) and not new
    if field_name == STATE_FIELD:
        return old == STATE_CONNECTED and new != STATE_CONNECTED
    if field_name == TEARDOWN:
        return state_now == STATE_CONNECTED or bool(ioc_now)
    raise ValueError(f"unknown field {field_name!r}")


@dataclass
class Verdict:
    """The classification of one teardown."""
    kind: str                  # DISCONNECT_DURING_WRITE or DISCONNECT_WITHOUT_LOCK
    reason: str                # one line for humans
    writer_lwp: Optional[int] = None

    @property
    def severity(self):
        return SEVERITY[self.kind]


# Outcomes of one observed change (``assess``).
CHANGE = "change"                 # a value changed, nothing torn down (e.g. a TLS wrapper)
CONNECT = "connect"
DUPLICATE = "duplicate"           # state change after an ioc clear that was already judged
FINALIZATION = "finalization"
LOCKED = "locked"                 # torn down by the lock owner: what the fix does
VIOLATION = "violation"


def assess(field_name, old, new, thread_lwp, lock_locked, lock_owner_lwp,
           in_finalizer=False, state_now=None, ioc_now=None, ioc_watched=False):
    """(outcome, Verdict or None) for one observed change; see ``classify``."""
    if not is_teardown(field_name, old, new, state_now=state_now, ioc_now=ioc_now):
        if (field_name in POINTER_FIELDS and not old and new) or \
                (field_name == STATE_FIELD and new == STATE_CONNECTED):
            return CONNECT, None
        return CHANGE, None
    if field_name == STATE_FIELD and ioc_watched and not ioc_now:
        return DUPLICATE, None
    if in_finalizer:
        return FINALIZATION, None
    if lock_locked and lock_owner_lwp is not None and lock_owner_lwp == thread_lwp:
        return LOCKED, None
    what = describe_change(field_name, old, new)
    if lock_locked and lock_owner_lwp is not None:
        return VIOLATION, Verdict(
            DISCONNECT_DURING_WRITE, f"{what} by LWP {thread_lwp} while LWP {lock_owner_lwp} "
            f"holds chr_write_lock (a write is in flight)", writer_lwp=lock_owner_lwp)
    if lock_locked:
        return VIOLATION, Verdict(
            DISCONNECT_WITHOUT_LOCK, f"{what} by LWP {thread_lwp}; chr_write_lock is held but "
            f"its owner is not recorded (lock elision?), so the writer is unknown")
    return VIOLATION, Verdict(
        DISCONNECT_WITHOUT_LOCK, f"{what} by LWP {thread_lwp} without chr_write_lock (no write "
        f"in flight this time: the same latent bug)")


def classify(field_name, old, new, thread_lwp, lock_locked, lock_owner_lwp,
             in_finalizer=False, state_now=None, ioc_now=None, ioc_watched=False):
    """None when the change is allowed, else a ``Verdict``.

    ``thread_lwp`` is the thread that made the change; ``lock_locked``/``lock_owner_lwp``
    describe the chardev's ``chr_write_lock`` at that moment (owner None when unknown);
    ``in_finalizer`` says that thread's stack is inside ``char_socket_finalize``;
    ``state_now``/``ioc_now`` are the fields as they are now (after the change);
    ``ioc_watched`` says a watch on ``ioc`` already reports this chardev's teardowns, so the
    ``state`` change that follows the clearing of ``ioc`` is not reported a second time.
    """
    return assess(field_name, old, new, thread_lwp, lock_locked, lock_owner_lwp,
                  in_finalizer=in_finalizer, state_now=state_now, ioc_now=ioc_now,
                  ioc_watched=ioc_watched)[1]


def describe_change(field_name, old, new):
    if field_name == STATE_FIELD:
        return f"state {state_name(old)} -> {state_name(new)}"
    if field_name == TEARDOWN:
        return "connection freed (tcp_chr_free_connection)"
    return f"{field_name} {ptr(old) or 'NULL'} -> {ptr(new) or 'NULL'}"


def in_finalizer(function_names):
    """True if a stack (innermost first) is inside a finalizer."""
    return any(name in FINALIZERS for name in function_names if name)


# --- debug-register budget -----------------------------------------------------------------

def debug_registers_needed(address, length):
    """x86 debug registers gdb needs to watch [address, address+length).

    Each register covers an aligned 1, 2, 4 or 8 byte region (the way gdb's x86 code splits a
    watched range): an aligned 4-byte enum costs one, an unaligned one costs two.
    """
    count = 0
    while length > 0:
        size = 8
        while size > 1 and (address % size or size > length):
            size //= 2
        address += size
        length -= size
        count += 1
    return count


@dataclass
class PlannedWatch:
    label: Optional[str]
    address: int
    fields: List[str] = field(default_factory=list)     # fields watched in hardware
    registers: int = 0


def plan_watches(chardevs, fields, free_registers):
    """Share ``free_registers`` debug registers among chardevs, in the order given.

    ``chardevs`` is [(label, address, {field: (field address, size)})]; ``fields`` the
    fields to watch per chardev, most important first.  A chardev is covered only if all of
    its fields fit (a partial watch would miss teardowns); the rest are returned uncovered,
    to be handled by a fallback the caller announces.  Returns (covered, uncovered), each a
    list of PlannedWatch (uncovered ones have no fields).
    """
    covered, uncovered = [], []
    left = max(0, free_registers)
    for label, address, where in chardevs:
        need = sum(debug_registers_needed(*where[f]) for f in fields)
        if need <= left:
            covered.append(PlannedWatch(label, address, list(fields), need))
            left -= need
        else:
            uncovered.append(PlannedWatch(label, address, [], 0))
    return covered, uncovered


# --- events ---------------------------------------------------------------------------------

@dataclass
class WatchEvent:
    """One report: a teardown without the lock (or a crash seen while watching)."""
    id: int
    kind: str
    reason: str
    label: Optional[str] = None
    address: Optional[int] = None
    field_name: Optional[str] = None
    old: Optional[int] = None
    new: Optional[int] = None
    lwp: Optional[int] = None
    thread: Optional[int] = None
    thread_name: Optional[str] = None
    writer_lwp: Optional[int] = None
    writer_thread: Optional[int] = None
    lock: Optional[dict] = None
    stack: list = field(default_factory=list)           # [models.Frame.to_json()]
    writer_stack: list = field(default_factory=list)
    signal: Optional[str] = None
    core: Optional[str] = None
    time: Optional[float] = None
    problems: List[str] = field(default_factory=list)

    @property
    def severity(self):
        return SEVERITY[self.kind]

    def to_json(self):
        values = {"old": self.old, "new": self.new}
        if self.field_name == STATE_FIELD:
            values = {k: state_name(v) for k, v in values.items()}
        elif self.field_name in POINTER_FIELDS:
            values = {k: ptr(v) for k, v in values.items()}
        return {
            "id": self.id, "kind": self.kind, "severity": self.severity,
            "reason": self.reason, "time": self.time,
            "chardev": {"label": self.label, "address": ptr(self.address)},
            "field": self.field_name, "old": values["old"], "new": values["new"],
            "lwp": self.lwp, "thread": self.thread, "thread_name": self.thread_name,
            "writer_lwp": self.writer_lwp, "writer_thread": self.writer_thread,
            "lock": self.lock, "signal": self.signal,
            "stack": self.stack, "writer_stack": self.writer_stack,
            "core": self.core, "problems": self.problems,
        }


@dataclass
class Counters:
    """What the watch saw, reported or not (for summaries and benchmarks)."""
    changes: int = 0            # watchpoint hits with a value change
    connects: int = 0
    teardowns: int = 0          # every teardown seen, allowed or not
    locked_teardowns: int = 0   # done by the lock owner: fine
    finalizations: int = 0      # teardowns inside char_socket_finalize: fine
    warnings: int = 0
    errors: int = 0
    fallback_hits: int = 0      # tcp_chr_free_connection breakpoint hits
    created: int = 0            # socket chardevs opened while watching
    finalized: int = 0          # watched chardevs finalized while watching

    def to_json(self):
        return dict(self.__dict__)


def count(counters, field_name, outcome, verdict):
    """Update ``counters`` for one observed change (its ``assess`` outcome and verdict)."""
    if field_name == TEARDOWN:
        counters.fallback_hits += 1
    else:
        counters.changes += 1
    if outcome == CONNECT:
        counters.connects += 1
    if outcome not in (FINALIZATION, LOCKED, VIOLATION):
        return
    counters.teardowns += 1
    if outcome == FINALIZATION:
        counters.finalizations += 1
    elif outcome == LOCKED:
        counters.locked_teardowns += 1
    elif verdict.severity == "error":
        counters.errors += 1
    else:
        counters.warnings += 1
