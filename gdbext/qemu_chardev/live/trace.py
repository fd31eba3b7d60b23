"""Tracing one GSource's reference count with hardware watchpoints (live processes only).

Two internal write watchpoints watch ``ref_count`` and ``flags`` (only changes of the
ACTIVE bit, i.e. destruction, are logged from ``flags``).  Their ``stop()`` runs while
the inferior is stopped: it reads the two words, records who changed them (thread and a
short backtrace, no inferior calls) and lets the process run on until the count reaches
zero, a destroyed source gains a reference, the event limit or the timeout is hit, or the
user interrupts.  The watchpoints are deleted in every case.
"""
import os
import signal
import threading

import gdb

from qemu_chardev.analysis import trace as ta
from qemu_chardev.model.errors import QcgError
from qemu_chardev.render.gsource import trace_event_line

DEFAULT_DEPTH = 8
DEFAULT_MAX_EVENTS = 200


class _Watch(gdb.Breakpoint):
    def __init__(self, tracer, what, address):
        super().__init__(f"*(unsigned int *) 0x{address:x}", gdb.BP_WATCHPOINT, gdb.WP_WRITE,
                         internal=True)
        self.silent = True
        self.tracer = tracer
        self.what = what

    def stop(self):
        try:
            return self.tracer.on_change(self.what)
        except Exception as exc:   # never leave gdb with a Python error mid-resume
            self.tracer.reason = f"trace error: {type(exc).__name__}: {exc}"
            return True


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
        self.watches = []
        self.inferior = gdb.selected_inferior()
        self.last = {what: self._read(what) for what in self.offsets}
        self.start = (self.last["ref_count"], self.last["flags"])

    def _read(self, what):
        data = self.inferior.read_memory(self.address + self.offsets[what], 4)
        return int.from_bytes(bytes(data), "little")

    def arm(self):
        for what in ("ref_count", "flags"):
            wp = _Watch(self, what, self.address + self.offsets[what])
            self.watches.append(wp)
            if wp.type != gdb.BP_HARDWARE_WATCHPOINT:
                self.disarm()
                raise QcgError("gdb could not set a hardware watchpoint (is "
                               "'can-use-hw-watchpoints' 0, or are all debug registers in use?)")

    def disarm(self):
        for wp in self.watches:
            try:
                if wp.is_valid():
                    wp.delete()
            except (gdb.error, RuntimeError):
                pass
        self.watches = []

    def on_change(self, what):
        new = self._read(what)
        old = self.last[what]
        if new == old:
            return False
        self.last[what] = new
        if what == "flags" and not (old ^ new) & ta.G_SOURCE_ACTIVE:
            return False        # READY/IN_CALL/BLOCKED churn of every dispatch: not logged
        flags = self.last["flags"] if what == "ref_count" else new
        thread = gdb.selected_thread()
        event = ta.RefEvent(index=len(self.events) + 1, what=what, old=old, new=new,
                            flags=flags)
        if thread is not None:
            event.lwp = thread.ptid[1] or thread.ptid[2]
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
        names, qemu = [], None
        try:
            frame = gdb.newest_frame()
        except gdb.error:
            return names, qemu
        while frame is not None and len(names) < self.depth:
            try:
                name = frame.name() or f"0x{frame.pc():x}"
                if qemu is None and frame.function() is not None:
                    qemu = name
            except gdb.error:
                name = "?"
            names.append(name)
            try:
                frame = frame.older()
            except gdb.error:
                break
        return names, qemu

    def run(self, timeout=None, quiet=False):
        """Resume until a stop condition; always disarm.  Returns the stop reason.

        ``quiet`` swallows gdb's own resume/stop messages (for --json output)."""
        stops = []
        timer = None
        fired = threading.Event()

        def on_stop(event):
            stops.append(event)

        def on_exit(event):
            stops.append(event)

        def interrupt():
            fired.set()
            try:
                os.kill(self.inferior.pid, signal.SIGINT)
            except OSError:
                pass

        gdb.events.stop.connect(on_stop)
        gdb.events.exited.connect(on_exit)
        try:
            if timeout:
                timer = threading.Timer(timeout, interrupt)
                timer.daemon = True
                timer.start()
            while self.reason is None:
                del stops[:]
                try:
                    gdb.execute("continue", to_string=quiet)
                except KeyboardInterrupt:
                    self.reason = "interrupted"
                    break
                except gdb.error as exc:
                    self.reason = f"cannot resume: {exc}"
                    break
                if self.reason is None:
                    self.reason = self._other_stop(stops, fired)
        finally:
            if timer is not None:
                timer.cancel()
            gdb.events.stop.disconnect(on_stop)
            gdb.events.exited.disconnect(on_exit)
            self.disarm()
        return self.reason

    def _other_stop(self, stops, fired):
        """Why the process stopped when it was not one of our watchpoints."""
        for event in stops:
            if isinstance(event, gdb.ExitedEvent):
                return "the process exited"
            if isinstance(event, gdb.SignalEvent):
                if event.stop_signal == "SIGINT":
                    return "timeout" if fired.is_set() else "interrupted"
                return f"the process got {event.stop_signal}"
            if isinstance(event, gdb.BreakpointEvent):
                ours = any(bp in self.watches for bp in event.breakpoints)
                if not ours:
                    return "another breakpoint was hit"
        return "the process stopped" if stops else "the process is not running"
