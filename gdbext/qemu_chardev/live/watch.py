"""One `qemu watch-disconnect` session: its states, its loop, its end.

A ``WatchSession`` puts together the live engine (live/engine.py: breakpoints, the
`continue` loop, the interrupt), the disconnect watch (live/disconnect.py: chardevs, debug
registers, stop() handlers) and the event sink (live/sink.py: output, JSON log, cores,
summary file).  Its state is an ``analysis.watch.Lifecycle`` (idle, armed, running, paused,
at-scene, gone, disarmed) whose transitions are checked; what each stop means is decided by
``analysis.watch.decide_stop``.

Outside the loop (after --arm-only, --stop, or a pause) the session stays armed: the
breakpoints' queued work is done by the stop-event handler, and the session disarms at the
next prompt once the process is gone, or when gdb exits.  gdb also reports a detach as an exit
event: nothing is deleted from inside that event, only at the next prompt.

``finish()`` ends a scripted watch (`qemu watch-disconnect --finish`): disarm, consume our
SIGINT if it is still queued, detach.
"""
import gdb

from qemu_chardev.analysis import watch as wa
from qemu_chardev.analysis.watch import State
from qemu_chardev.live import engine as live
from qemu_chardev.live.disconnect import ERROR, FINALIZED, NEW, DisconnectWatch
from qemu_chardev.live.sink import EventSink
from qemu_chardev.model import stops

MAX_RESUME_RETRIES = 8
IDLE_STATES = (State.ARMED, State.PAUSED, State.AT_SCENE)    # armed, the loop not running

_current = None          # the armed WatchSession, if any
_last = None             # the last one disarmed (for --finish)


def current_session():
    return _current


def latest_session():
    return _current or _last


class WatchSession:
    """An armed (or once armed) watch and the loop that runs it."""

    def __init__(self, labels=(), fields=wa.DEFAULT_FIELDS, stop_on_error=False, json_log=None,
                 core_dir=None, max_registers=wa.X86_DEBUG_REGISTERS, quiet=False,
                 colour=False, summary_path=None):
        self.lifecycle = wa.Lifecycle()
        self.stop_on_error = stop_on_error
        self.reason = None
        self.exit_status = None
        self.engine = live.Engine(on_error=self._stop_failed)
        self.sink = EventSink(quiet=quiet, colour=colour, json_log=json_log,
                              core_dir=core_dir, summary_path=summary_path)
        self.watch = DisconnectWatch(self.engine, self.sink, labels=labels, fields=fields,
                                     max_registers=max_registers)
        self._handlers = []
        self._ending = None
        self._retries = 0

    @property
    def state(self):
        return self.lifecycle.state

    @property
    def armed(self):
        return self.lifecycle.armed

    def _stop_failed(self, _exc, message, new):
        """A stop() handler raised: say it once, let the process go on."""
        if new:
            self.sink.say(message)
        return False

    # --- arming and disarming ---------------------------------------------------------------

    def arm(self):
        """Check the target, open the outputs, set every breakpoint; coverage rows."""
        global _current
        self.watch.check()
        self.sink.open()
        _current = self
        self.lifecycle.to(State.ARMED)
        try:
            self.watch.arm()
            self._connect_handlers()
        except BaseException:
            self.disarm()
            raise
        return self.watch.coverage()

    def disarm(self):
        """Delete every breakpoint and watchpoint of this session (idempotent)."""
        global _current, _last
        if self.lifecycle.armed:
            self.watch.disarm()
        self.engine.delete_all()
        self._disconnect_handlers()
        self.sink.close()
        if self.lifecycle.state is not State.DISARMED:
            self.lifecycle.to(State.DISARMED)
        if _current is self:
            _current = None
        _last = self

    # --- the loop ---------------------------------------------------------------------------

    def run(self, duration=None, control_fd=None):
        """Resume the process and watch until Ctrl-C, the duration, the control fd, its exit,
        another stop, or (with --stop) the first error.  Returns the reason it ended."""
        self.reason = None
        self._ending = None
        self._retries = 0
        self.lifecycle.to(State.RUNNING)
        try:
            self.reason = self.engine.run(self._after_stop, duration=duration,
                                          control_fd=control_fd,
                                          deadline_reason="duration elapsed", quiet=True)
        except BaseException as exc:
            self.reason = self.reason or f"internal error: {type(exc).__name__}: {exc}"
            self.disarm()
            self.write_summary()
            raise
        if self.exit_status is not None or gdb.selected_inferior().pid == 0 or \
                self._ending not in (State.PAUSED, State.AT_SCENE):
            self.disarm()
        else:
            self.lifecycle.to(self._ending)
            self.sink.say(wa.end_of_run_note(self._ending, self.reason))
            try:
                gdb.execute("frame", to_string=False)
            except gdb.error:
                pass
        self.write_summary()
        return self.reason

    def _after_stop(self, stop, done):
        """The engine's question after each stop: None to go on, else why the watch ends."""
        if stop.kind == stops.STOP_EXITED:
            self.exit_status = stop.exit_code
        if stop.kind == stops.STOP_RESUME_FAILED and self._retries < MAX_RESUME_RETRIES \
                and self.watch.drop_unplaceable(stop.message):
            self._retries += 1
            return None
        errors = [event for kind, event in done if kind == ERROR]
        decision = wa.decide_stop(stop, stop_on_error=self.stop_on_error,
                                  first_error=errors[0].id if errors else None)
        if decision.crash:
            self.watch.crash_event(stop.signal)
        self._ending = decision.state
        return decision.reason

    # --- outside the loop -----------------------------------------------------------------

    def _connect_handlers(self):
        """Keep the session sane between runs: queued work after a manual `continue`, and
        disarming once the process is gone or gdb exits.  (gdb also reports a detach as an
        exit event; nothing is deleted from inside that event, only at the next prompt.)"""
        def on_stop(_event):
            # Outside `run()` (after --arm-only or --stop, the user typed `continue`): our
            # rare-path breakpoints stop for real; do their work now, while stopped, and say
            # why gdb stopped.  (gdb has finished with the stop's breakpoints at this point.)
            if self.lifecycle.state in IDLE_STATES and self.engine.queued:
                self.engine.call(self._idle_work)

        def on_exit(event):
            if self.lifecycle.state in IDLE_STATES:
                self.exit_status = getattr(event, "exit_code", None)
                self.lifecycle.to(State.GONE)

        def before_prompt():
            if self.lifecycle.state not in (*IDLE_STATES, State.GONE):
                return
            if self.lifecycle.state is State.GONE or gdb.selected_inferior().pid == 0:
                self.reason = self.reason or "the process is gone"
                self.disarm()
                self.sink.say("the process is gone: watch disarmed")

        def on_gdb_exit(_event):
            self.disarm()

        registries = [(gdb.events.stop, on_stop), (gdb.events.exited, on_exit),
                      (gdb.events.before_prompt, before_prompt)]
        if hasattr(gdb.events, "gdb_exiting"):
            registries.append((gdb.events.gdb_exiting, on_gdb_exit))
        for registry, handler in registries:
            registry.connect(handler)
            self._handlers.append((registry, handler))

    def _disconnect_handlers(self):
        for registry, handler in self._handlers:
            try:
                registry.disconnect(handler)
            except (RuntimeError, ValueError):
                pass
        self._handlers = []

    def _idle_work(self):
        done = self.engine.run_queued()
        kinds = [kind for kind, _result in done]
        what = [f"{kinds.count(NEW)} new chardev(s)"] if NEW in kinds else []
        if FINALIZED in kinds:
            what.append(f"{kinds.count(FINALIZED)} finalized chardev(s)")
        errors = [event for kind, event in done if kind == ERROR]
        if errors:
            what.append(f"error [{errors[0].id}]")
        self.sink.say(f"stopped for {' and '.join(what)} while armed outside the watch loop; "
                      "'qemu watch-disconnect' resumes watching")
        return False

    # --- the summary ------------------------------------------------------------------------

    def summary(self):
        w = self.watch
        return wa.summary(
            self.lifecycle, self.reason, w.pid, self.exit_status, w.counters,
            w.coverage() if self.armed else w.final_coverage, w.fields, w.max_registers,
            self.sink.json_log_path, w.notes, self.engine.internal_errors,
            self.engine.interrupt_pending, self.engine.stop_calls, self.engine.stop_seconds,
            self.sink.events)

    def write_summary(self):
        self.sink.write_summary(self.summary())


def finish(stay_at_scene=False):
    """End of a scripted watch: disarm, consume our SIGINT if still queued, detach.

    With ``stay_at_scene`` and a session stopped at the scene of an error, nothing happens
    (the user gets the gdb prompt there).  A process started under gdb whose watch never ran
    (arming failed) is killed rather than left running unwatched.  Returns (a one-line
    description of what was done, True if left at the scene).
    """
    session = latest_session()
    if stay_at_scene and session is not None and session.state is State.AT_SCENE:
        return ("left at the scene: 'qemu watch-disconnect --off' disarms, 'detach' lets it go",
                True)
    inferior = gdb.selected_inferior()
    if session is not None:
        session.disarm()
    if inferior.pid == 0:
        return "the process is gone", False
    pid = inferior.pid
    if (session is None or not session.lifecycle.ran) and \
            not getattr(inferior, "was_attached", True):
        gdb.execute("kill", to_string=True)
        return f"the watch did not start: killed process {pid}, which gdb started", False
    live.consume_pending_sigint(pid)
    if not gdb.selected_inferior().pid:
        return "the process is gone", False
    gdb.execute("detach", to_string=True)
    return f"detached from process {pid}; it keeps running", False
