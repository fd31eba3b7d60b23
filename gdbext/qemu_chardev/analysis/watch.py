"""Pure analysis for `qemu watch-disconnect`: is a change of a socket chardev a violation?

The rule (QEMU 4.2, commit 78d01598ae "char-socket: Lock tcp_chr_disconnect() and
socket_reconnect_timeout()"): a socket chardev's connection may only be torn down, i.e.
``s->ioc``/``s->sioc`` cleared or ``s->state`` taken away from ``connected``, by a thread that
holds that chardev's ``chr_write_lock``.  Writers (``tcp_chr_write``, called with the lock held)
check ``state`` and then use ``ioc``; a disconnect racing with them leaves ``ioc == NULL``
under a writer that already saw ``connected``.

This module also holds the rest of the watch's pure decisions: its options (declared once for
the gdb command and scripts/catch-disconnect-during-write), what a stop of the process means
for the watch (``decide_stop``), the watch's states and their allowed transitions
(``Lifecycle``), and the summary object.

Nothing here touches gdb: every function takes plain values and is unit-tested directly.
"""
import argparse
import enum
from dataclasses import dataclass, field
from typing import List, Optional

from qemu_chardev.model import qemu
from qemu_chardev.model import stops
from qemu_chardev.model import vocabulary
from qemu_chardev.model.diagnosis import CRASH_SIGNAL_NAMES
from qemu_chardev.model.objects import ptr

# The event ids (``model.vocabulary``: the same vocabulary as the report's findings).
DISCONNECT_DURING_WRITE = vocabulary.DISCONNECT_DURING_WRITE
DISCONNECT_WITHOUT_LOCK = vocabulary.DISCONNECT_WITHOUT_WRITE_LOCK
CALLBACK_ON_FINALIZED = vocabulary.CALLBACK_ON_FINALIZED_CHARDEV
FINALIZED_WITH_PENDING_TASK = vocabulary.FINALIZED_WITH_PENDING_TASK
CRASH = vocabulary.CRASH
SEVERITY = {rule_id: vocabulary.rule(rule_id).severity for rule_id in vocabulary.WATCH_IDS}

# Rare-path chardev callbacks (a connect completes, a handshake ends, the reconnect timer
# fires) and the argument that carries their Chardev: each is checked, at its entry, to be
# about to run on a live chardev (the upstream bugs in model.upstream that let it run on a
# finalized one crash a moment later).  tcp_chr_read and tcp_chr_hup are left out: the
# first runs on every read, the hot path.
CHECKED_CALLBACKS = {"qemu_chr_socket_connected": "opaque",
                     "tcp_chr_websock_handshake": "user_data",
                     "tcp_chr_tls_handshake": "user_data",
                     "socket_reconnect_timeout": "opaque"}

# TCPChardevState: the same values in every QEMU version (0, 1, 2).
STATE_DISCONNECTED, STATE_CONNECTING, STATE_CONNECTED = 0, 1, 2
STATE_NAMES = qemu.TCP_CHARDEV_STATES

# What a watch can observe.  "teardown" is the fallback breakpoint at the entry of
# tcp_chr_free_connection(): nothing is cleared yet, the function is about to clear it all.
POINTER_FIELDS = ("ioc", "sioc")
STATE_FIELD = "state"
TEARDOWN = "teardown"
WATCHABLE_FIELDS = ("state", "ioc", "sioc")
DEFAULT_FIELDS = ("state",)

# Functions that free a connection legitimately without chr_write_lock: the chardev is being
# finalized, so no other thread can still hold a reference to it.
FINALIZERS = ("char_socket_finalize",)

X86_DEBUG_REGISTERS = 4


def state_name(value):
    return qemu.socket_state_name(value)


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


def callback_on_finalized(function, ref, lock_initialized):
    """Why running ``function`` on this chardev is a use-after-free, or None when it is alive.

    ``ref`` is its ``Object.ref``, ``lock_initialized`` its ``chr_write_lock.initialized``
    (char_finalize destroys the lock; a freed chunk keeps ``ref`` 0)."""
    dead = []
    if ref == 0:
        dead.append("Object.ref is 0")
    if lock_initialized is False:
        dead.append("its chr_write_lock was destroyed")
    if not dead:
        return None
    return (f"{function}() is about to run on a finalized chardev (" + ", ".join(dead)
            + "): the task or source that calls it held no reference, and the chardev was "
            "finalized under it")


def finalized_with_pending_task(connect_task):
    """Why finalizing a socket chardev now is a bug, or None (no connect task pending)."""
    if not connect_task:
        return None
    return (f"char_socket_finalize() runs while connect task 0x{connect_task:x} is pending: "
            "its completion will run on the freed chardev (the task must hold a reference)")


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
    """One report: a teardown without the lock (or a crash seen while watching).

    ``id`` is the rule (``model.vocabulary``, as a report finding's id), ``seq`` the event's
    number in the session (1, 2, ...), ``reason`` its one-line summary."""
    id: str
    reason: str = ""
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
    seq: Optional[int] = None

    def __post_init__(self):
        vocabulary.rule(self.id)        # ValueError for an id outside the vocabulary

    @property
    def severity(self):
        return vocabulary.rule(self.id).severity

    @property
    def title(self):
        return vocabulary.title(self.id)

    @property
    def summary(self):
        return self.reason

    def to_json(self):
        """One event, as docs/event-log-schema.json describes it."""
        values = {"old": self.old, "new": self.new}
        if self.field_name == STATE_FIELD:
            values = {k: state_name(v) for k, v in values.items()}
        elif self.field_name in POINTER_FIELDS:
            values = {k: ptr(v) for k, v in values.items()}
        return {
            "seq": self.seq, "id": self.id, "severity": self.severity, "title": self.title,
            "summary": self.reason, "time": self.time,
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


# --- options: declared once, for `qemu watch-disconnect` and the catcher script ---------------

def parse_fields(text):
    """``--fields`` value: "state,ioc" -> ["state", "ioc"] (argparse type)."""
    fields = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in fields if f not in WATCHABLE_FIELDS]
    if bad or not fields:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(WATCHABLE_FIELDS)} "
                                         f"(got {text!r})")
    return list(dict.fromkeys(fields))


def positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


# (flag, argparse keywords, how a launcher writes the parsed value back; None: a switch)
WATCH_OPTIONS = (
    ("--duration", dict(type=positive_seconds, metavar="SECONDS",
                        help="stop watching after SECONDS (default: until Ctrl-C or the "
                             "process exits)"), repr),
    ("--stop", dict(action="store_true",
                    help="stop at the first error and stay at the scene"), None),
    ("--json-log", dict(metavar="FILE",
                        help="append one JSON object per event (seq, id, severity, summary, "
                             "chardev, lwp, writer_lwp, both stacks; docs/event-log-schema.json) "
                             "to FILE"), str),
    ("--core-dir", dict(metavar="DIR", help="write a core (gcore) at each error into DIR"), str),
    ("--summary-json", dict(metavar="FILE",
                            help="write the final summary (counters, coverage, events) as "
                                 "JSON to FILE"), str),
    ("--fields", dict(type=parse_fields, default=list(DEFAULT_FIELDS),
                      metavar="state[,ioc,sioc]",
                      help="fields to watch in hardware (default: state)"), ",".join),
    ("--max-debug-registers", dict(type=non_negative_int, default=X86_DEBUG_REGISTERS,
                                   metavar="N",
                                   help=f"debug registers to use (default "
                                        f"{X86_DEBUG_REGISTERS}); 0: the breakpoint on "
                                        f"tcp_chr_free_connection covers every chardev, one "
                                        f"stop per connection instead of three (for clients "
                                        f"that connect for each command)"), str),
    ("--quiet", dict(action="store_true",
                     help="print errors only (warnings still go to --json-log)"), None),
)


def add_watch_options(parser):
    """Add the watch's options (LABEL... and WATCH_OPTIONS) to an argparse parser."""
    parser.add_argument("labels", metavar="LABEL", nargs="*",
                        help="watch only these chardevs (also when created later)")
    for flag, keywords, _write in WATCH_OPTIONS:
        parser.add_argument(flag, **keywords)
    return parser


def watch_command_args(args):
    """The watch options of ``args`` (parsed by ``add_watch_options``) as the words of a
    `qemu watch-disconnect` command line, under the same names (unquoted)."""
    words = list(args.labels)
    for flag, keywords, write in WATCH_OPTIONS:
        value = getattr(args, keywords.get("dest") or flag[2:].replace("-", "_"))
        if write is None:
            if value:
                words.append(flag)
        elif value is not None:
            words += [flag, write(value)]
    return words


# --- the watch's states -----------------------------------------------------------------------

class State(enum.Enum):
    IDLE = "idle"              # created; nothing armed yet
    ARMED = "armed"            # breakpoints in place; the process not run by the watch yet
    RUNNING = "running"        # the `continue` loop runs
    PAUSED = "paused"          # the loop ended at a stop that is not ours: still armed
    AT_SCENE = "at-scene"      # the loop ended at an error (--stop) or a crash: still armed
    GONE = "gone"              # the process exited (or was detached) while armed outside the
    #                            loop: disarmed at the next prompt, never inside that event
    DISARMED = "disarmed"      # every breakpoint deleted; final


TRANSITIONS = {
    State.IDLE: {State.ARMED, State.DISARMED},
    State.ARMED: {State.RUNNING, State.GONE, State.DISARMED},
    State.RUNNING: {State.PAUSED, State.AT_SCENE, State.DISARMED},
    State.PAUSED: {State.RUNNING, State.GONE, State.DISARMED},
    State.AT_SCENE: {State.RUNNING, State.GONE, State.DISARMED},
    State.GONE: {State.DISARMED},
    State.DISARMED: set(),
}
ARMED_STATES = frozenset((State.ARMED, State.RUNNING, State.PAUSED, State.AT_SCENE,
                          State.GONE))


class InvalidTransition(Exception):
    """A programming error: the watch asked for a transition its state machine forbids."""


class Lifecycle:
    """The state of one watch and the transitions it went through."""

    def __init__(self):
        self.state = State.IDLE
        self.ran = False            # the loop ran at least once
        self._settled = None        # the last state among ARMED, RUNNING, PAUSED, AT_SCENE

    def to(self, state):
        if state not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"watch state {self.state.value} -> {state.value}")
        self.state = state
        if state is State.RUNNING:
            self.ran = True
        if state not in (State.GONE, State.DISARMED):
            self._settled = state
        return state

    @property
    def armed(self):
        """Breakpoints of the watch exist (GONE included: they go at the next prompt)."""
        return self.state in ARMED_STATES

    @property
    def at_scene(self):
        """Stopped at the scene of an error, or gone or disarmed from there."""
        return self._settled is State.AT_SCENE and self.state in (
            State.AT_SCENE, State.GONE, State.DISARMED)


@dataclass
class Decision:
    """What a stop means for the watch: why it ends (None: keep watching) and the state it
    ends in; ``crash`` asks for a crash report first."""
    reason: Optional[str]
    state: Optional[State] = None
    crash: bool = False


def decide_stop(stop, stop_on_error=False, first_error=None):
    """The watch loop's decision after one stop.

    ``first_error`` names the first error completed at this stop (its id, or None); with
    ``stop_on_error`` (--stop) it ends the watch at the scene.  A crash, too, stays at the
    scene; a signal or a breakpoint that is not ours pauses the watch (still armed, for the
    user to look); the process exiting, Ctrl-C, our own SIGINT (duration, control fd) or an
    unexplained stop end it (disarmed).
    """
    if stop.kind == stops.STOP_EXITED:
        status = f" with status {stop.exit_code}" if stop.exit_code is not None else ""
        return Decision(f"the process exited{status}", State.DISARMED)
    if stop.kind == stops.STOP_CTRL_C:
        return Decision("interrupted (Ctrl-C)", State.DISARMED)
    if stop.kind == stops.STOP_RESUME_FAILED:
        return Decision(f"cannot resume the process: {stop.message}", State.DISARMED)
    if stop_on_error and first_error is not None:
        return Decision(f"stopped at error [{first_error}] (--stop)", State.AT_SCENE)
    if stop.kind == stops.STOP_SIGNAL:
        if stop.signal == "SIGINT":
            return Decision(stop.interrupt or "interrupted (SIGINT)", State.DISARMED)
        if stop.signal in CRASH_SIGNAL_NAMES:
            return Decision(f"the process crashed ({stop.signal})", State.AT_SCENE, crash=True)
        return Decision(f"the process got {stop.signal}", State.PAUSED)
    if stop.kind == stops.STOP_FOREIGN:
        return Decision("stopped at a breakpoint that is not ours", State.PAUSED)
    if stop.kind == stops.STOP_NOTHING:
        return Decision("the process stopped", State.DISARMED)
    if stop.kind == stops.STOP_OTHER:
        return Decision("the process stopped", State.PAUSED)
    return Decision(None)


def end_of_run_note(state, reason):
    """What the watch says when a run ends still armed (None when it ends disarmed)."""
    if state is State.AT_SCENE:
        where = "stopped at the scene"
    elif state is State.PAUSED:
        where = f"paused ({reason})"
    else:
        return None
    return (f"{where}; the watch is still armed: 'qemu watch-disconnect' resumes it, "
            "'qemu watch-disconnect --off' disarms it")


# --- the summary ------------------------------------------------------------------------------

def summary(lifecycle, reason, pid, exit_status, counters, coverage, fields, max_registers,
            json_log, notes, internal_errors, interrupt_pending, stop_calls, stop_seconds,
            events):
    """The watch's summary object (`--json`, `--status --json`, --summary-json FILE).

    ``coverage`` is rows of {label, address (int), watched, registers, fallback}; ``events``
    WatchEvents."""
    return {
        "reason": reason, "at_scene": lifecycle.at_scene, "armed": lifecycle.armed,
        "pid": pid, "exit_status": exit_status,
        "errors": counters.errors, "warnings": counters.warnings,
        "counters": counters.to_json(),
        "coverage": [{**row, "address": f"0x{row['address']:x}"} for row in coverage],
        "fields": list(fields), "max_debug_registers": max_registers,
        "json_log": json_log, "notes": list(notes),
        "internal_errors": list(internal_errors),
        "interrupt_pending": interrupt_pending,
        "stop_calls": stop_calls, "stop_seconds": round(stop_seconds, 6),
        "events": [e.to_json() for e in events],
    }
