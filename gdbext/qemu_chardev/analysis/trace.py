"""Pure analysis of a GSource refcount trace: events, when to stop, who took each reference.

``qemu gsource trace`` records one ``RefEvent`` per change of the watched source's
``ref_count`` or ``flags``; this module decides when to stop and summarises the history.
No gdb imports.
"""
from dataclasses import dataclass, field
from typing import List, Optional

from qemu_chardev.model import stops
from qemu_chardev.model.glib import G_SOURCE_ACTIVE

# GLib functions that only carry a reference change out for their caller: the event is
# attributed to the first frame that is none of these.
REFCOUNT_HELPERS = frozenset((
    "g_source_ref", "g_source_unref", "g_source_unref_internal", "g_source_destroy",
    "g_source_destroy_internal", "g_source_iter_next", "g_atomic_int_inc",
    "g_atomic_int_dec_and_test", "g_atomic_int_compare_and_exchange",
    "g_child_source_remove_internal", "g_source_remove_child_source", "g_source_attach",
    "g_source_attach_unlocked", "g_source_remove", "g_main_context_remove_poll_unlocked",
))

STOP_ZERO = "ref_count reached 0 (the source is being finalized and freed)"
STOP_DESTROYED_GAIN = "a destroyed source gained a reference"


@dataclass
class RefEvent:
    """One observed change of the watched GSource."""
    index: int
    what: str                       # "ref_count" or "flags"
    old: Optional[int]
    new: int
    flags: Optional[int]            # flags after the change
    lwp: Optional[int] = None
    thread: Optional[int] = None
    thread_name: Optional[str] = None
    frames: List[str] = field(default_factory=list)     # function names, innermost first
    qemu_frame: Optional[str] = None                    # innermost frame with QEMU debug info

    @property
    def delta(self):
        if self.what != "ref_count" or self.old is None:
            return None
        return self.new - self.old

    @property
    def by(self):
        """The function that took or dropped the reference (first non-helper frame)."""
        return attribute(self.frames)

    def describe(self):
        if self.what == "flags":
            change = flag_change(self.old, self.new)
            return f"flags 0x{self.old or 0:x} -> 0x{self.new:x} ({change})"
        return f"ref_count {self.old} -> {self.new}"

    def to_json(self):
        return {"index": self.index, "what": self.what, "old": self.old, "new": self.new,
                "delta": self.delta, "flags": self.flags, "lwp": self.lwp,
                "thread": self.thread, "thread_name": self.thread_name, "by": self.by,
                "qemu_frame": self.qemu_frame, "frames": list(self.frames)}


def attribute(frames):
    """First named frame outside GLib's refcount helpers, else the innermost one, else None.

    Frames without a name (static functions of a library without symbols show as "0x...")
    are skipped: their caller says more.
    """
    for name in frames:
        if name and not name.startswith("0x") and name not in REFCOUNT_HELPERS:
            return name
    return frames[0] if frames else None


def flag_change(old, new):
    """'destroyed' when ACTIVE was cleared, 'activated' when set, else the changed bits."""
    old = old or 0
    if old & G_SOURCE_ACTIVE and not new & G_SOURCE_ACTIVE:
        return "destroyed"
    if new & G_SOURCE_ACTIVE and not old & G_SOURCE_ACTIVE:
        return "activated"
    return f"bits 0x{old ^ new:x} changed"


def stop_reason(event):
    """Why the trace must stop after ``event``, or None to keep going."""
    if event.what == "ref_count":
        if event.new == 0:
            return STOP_ZERO
        if event.old is not None and event.new > event.old and event.flags is not None \
                and not event.flags & G_SOURCE_ACTIVE:
            return STOP_DESTROYED_GAIN
    return None


def end_reason(stop):
    """Why the trace ends after a ``Stop`` that none of its watchpoints asked for."""
    if stop.kind == stops.STOP_EXITED:
        return "the process exited"
    if stop.kind == stops.STOP_CTRL_C:
        return "interrupted"
    if stop.kind == stops.STOP_RESUME_FAILED:
        return f"cannot resume: {stop.message}"
    if stop.kind == stops.STOP_SIGNAL:
        if stop.signal == "SIGINT":
            return "timeout" if stop.interrupt else "interrupted"
        return f"the process got {stop.signal}"
    if stop.kind == stops.STOP_FOREIGN:
        return "another breakpoint was hit"
    if stop.kind == stops.STOP_NOTHING:
        return "the process is not running"
    return "the process stopped"


def summary_rows(events):
    """Rows for the summary table: #, change, by, QEMU frame, thread."""
    rows = []
    for ev in events:
        if ev.what == "ref_count":
            delta = ev.delta
            change = f"{ev.old}->{ev.new}" + (f" ({delta:+d})" if delta is not None else "")
        else:
            change = f"flags 0x{ev.old or 0:x}->0x{ev.new:x} {flag_change(ev.old, ev.new)}"
        who = f"LWP {ev.lwp}" if ev.lwp else "?"
        if ev.thread is not None:
            who += f" (thread {ev.thread}" + (f" {ev.thread_name}" if ev.thread_name else "") + ")"
        rows.append([ev.index, change, ev.by or "?", ev.qemu_frame or "-", who])
    return rows


def balance(events):
    """{function: net references taken (+) or dropped (-)} over ref_count events."""
    out = {}
    for ev in events:
        if ev.delta is not None:
            key = ev.by or "?"
            out[key] = out.get(key, 0) + ev.delta
    return out
