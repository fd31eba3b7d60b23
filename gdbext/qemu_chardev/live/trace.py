"""Tracing one GSource's reference count with hardware watchpoints (live processes only).

Two write watchpoints of the live engine (live/engine.py) watch ``ref_count`` and ``flags``
(only changes of the ACTIVE bit, i.e. destruction, are logged from ``flags``).  Their
``stop()`` runs while the inferior is stopped: it reads the two words, records who changed
them (thread and a short backtrace, no inferior calls) and lets the process run on until the
count reaches zero, a destroyed source gains a reference, the event limit or the timeout is
hit, or the user interrupts.  The watchpoints are deleted in every case.
"""
import gdb

from qemu_chardev.analysis import trace as ta
from qemu_chardev.live.engine import Engine, NoHardwareWatchpoint, thread_lwp
from qemu_chardev.model.errors import QcgError
from qemu_chardev.model.glib import G_SOURCE_ACTIVE
from qemu_chardev.render.gsource import trace_event_line
from qemu_chardev.target.snapshot import walk_frames

DEFAULT_DEPTH = 8
DEFAULT_MAX_EVENTS = 200
WATCHED = ("ref_count", "flags")


class Tracer:
    """The state of one `qemu gsource trace`."""

    def __init__(self, address, ref_offset, flags_offset, depth=DEFAULT_DEPTH,
                 max_events=DEFAULT_MAX_EVENTS, log=True):
        self.address = address
        self.offsets = {"ref_count": ref_offset, "flags": flags_offset}
        self.depth = depth
        self.max_events = max_events
        self.log = log
        self.events = []
        self.reason = None
        self.engine = Engine(on_error=self._stop_failed)
        self.inferior = gdb.selected_inferior()
        self.last = {what: self._read(what) for what in self.offsets}
        self.start = (self.last["ref_count"], self.last["flags"])

    def _read(self, what):
        data = self.inferior.read_memory(self.address + self.offsets[what], 4)
        return int.from_bytes(bytes(data), "little")

    def arm(self):
        try:
            for what in WATCHED:
                self.engine.watchpoint(self.address + self.offsets[what], 4, self.on_change,
                                       what)
        except NoHardwareWatchpoint:
            self.disarm()
            raise QcgError("gdb could not set a hardware watchpoint (is "
                           "'can-use-hw-watchpoints' 0, or are all debug registers in use?)")

    def disarm(self):
        self.engine.delete_all()

    def _stop_failed(self, exc, _message, _new):
        """A stop() callback raised: end the trace (never leave gdb with a Python error)."""
        self.reason = f"trace error: {type(exc).__name__}: {exc}"
        return True

    def on_change(self, what):
        new = self._read(what)
        old = self.last[what]
        if new == old:
            return False
        self.last[what] = new
        if what == "flags" and not (old ^ new) & G_SOURCE_ACTIVE:
            return False        # READY/IN_CALL/BLOCKED churn of every dispatch: not logged
        flags = self.last["flags"] if what == "ref_count" else new
        thread = gdb.selected_thread()
        event = ta.RefEvent(index=len(self.events) + 1, what=what, old=old, new=new,
                            flags=flags)
        if thread is not None:
            event.lwp = thread_lwp(thread)
            event.thread = thread.num
            event.thread_name = thread.name
        event.frames, event.qemu_frame = self._backtrace()
        self.events.append(event)
        if self.log:
            gdb.write(trace_event_line(event, self.address) + "\n")
        self.reason = ta.stop_reason(event)
        if self.reason is None and len(self.events) >= self.max_events:
            self.reason = f"{self.max_events} changes recorded (--max-events)"
        return self.reason is not None

    def _backtrace(self):
        """(function names, innermost first; the innermost one with debug info)."""
        names, qemu = [], None
        for _level, frame in walk_frames(self.depth):
            try:
                name = frame.name() or f"0x{frame.pc():x}"
                if qemu is None and frame.function() is not None:
                    qemu = name
            except gdb.error:
                name = "?"
            names.append(name)
        return names, qemu

    def _after_stop(self, stop, _done):
        return self.reason or ta.end_reason(stop)

    def run(self, timeout=None, quiet=False):
        """Resume until a stop condition; always disarm.  Returns the stop reason.

        ``quiet`` swallows gdb's own resume/stop messages (for --json output)."""
        try:
            self.reason = self.engine.run(self._after_stop, duration=timeout,
                                          deadline_reason="timeout", to_string=quiet)
        finally:
            self.disarm()
        return self.reason
