"""The live-stop engine: our breakpoints and watchpoints, the `continue` loop, its end.

Both live features run on it: `qemu watch-disconnect` (live/watch.py, live/disconnect.py) and
`qemu gsource trace` (live/trace.py).  An ``Engine``

* makes internal, silent breakpoints and write watchpoints (``StopPoint``) whose ``stop()``
  calls a feature's callback through ``Engine.call`` (timed; an exception never reaches
  gdb), and deletes every one of them in ``delete_all()``, whatever happened;
* runs `continue` until the feature's ``after_stop(stop)`` gives a reason to end: each stop
  is classified into an ``analysis.watch.Stop`` (exit, Ctrl-C, a signal, a SIGINT we sent, a
  breakpoint that is not ours, ours only, ...);
* ends the loop at a deadline or when a control fd is readable by sending the process one
  SIGINT from a thread (``Interrupter``): gdb stops on SIGINT and does not pass it on.  A
  SIGINT still queued when the feature lets the process go is consumed first
  (``consume_pending_sigint``), so QEMU never receives it;
* optionally makes the signals QEMU gets in normal operation pass without stopping while the
  loop runs (``QUIET_SIGNALS``; the user's settings are restored afterwards);
* from its first breakpoint to ``delete_all()``, keeps a guardian process (``Guardian``) that
  repairs the process if gdb dies without disarming (SIGKILL, a crash): the kernel keeps both
  gdb's inserted int3 bytes and the threads' debug registers after the tracer is gone
  (measured on Linux 6.18: DR7 0xd0101 on every thread after `kill -9` of gdb, and the next
  write to the watched field killed QEMU with SIGTRAP), so without it the next connect,
  disconnect or chardev-add kills QEMU;
* queues work that ``stop()`` may not do (switching threads, creating or deleting
  breakpoints: gdb forbids both there): ``queue()`` from ``stop()``, run after the stop by
  the loop or, outside the loop, by whoever handles the stop (``run_queued()``).

Nothing here writes target memory or calls inferior functions; the guardian writes only to
put back bytes gdb's breakpoints replaced and to clear debug registers, and only after gdb died.
"""
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time

import gdb

from qemu_chardev.model.errors import QcgError
from qemu_chardev.model import stops

# Signals QEMU gets in normal operation (SIGPIPE when a peer hangs up mid-write: ignored by
# QEMU, but a ptraced process reports even ignored signals).
QUIET_SIGNALS = ("SIGPIPE", "SIGCHLD", "SIGWINCH", "SIGURG", "SIGALRM", "SIGUSR1", "SIGUSR2",
                 "SIGPROF", "SIGVTALRM", "SIGIO", "SIGCONT")
SIGINT_BIT = 1 << (signal.SIGINT - 1)
WATCH_CTYPES = {4: "unsigned int", 8: "unsigned long", 2: "unsigned short", 1: "unsigned char"}


class NoHardwareWatchpoint(QcgError):
    """gdb would only give a software watchpoint (single-stepping the process)."""


def thread_lwp(thread):
    return (thread.ptid[1] or thread.ptid[2]) if thread is not None else None


def frame_int(name):
    """An integer argument of the selected (innermost) frame."""
    return int(gdb.selected_frame().read_var(name))


class StopPoint(gdb.Breakpoint):
    """An internal, silent breakpoint or write watchpoint; ``stop()`` calls back."""

    def __init__(self, engine, callback, args, spec=None, function=None):
        if spec is not None:
            super().__init__(spec, gdb.BP_WATCHPOINT, gdb.WP_WRITE, internal=True)
        else:
            super().__init__(function=function, internal=True)
        self.silent = True
        self.engine = engine
        self.callback = callback
        self.args = args

    def stop(self):
        return self.engine.call(self.callback, self.args)


class Interrupter(threading.Thread):
    """Sends the process one SIGINT at the deadline or when the control fd is readable.

    Runs while gdb waits in `continue` (gdb releases the GIL then).  The SIGINT stops the
    process in gdb (SIGINT is not passed on), which ends the loop.
    """

    def __init__(self, pid, duration, control_fd, deadline_reason):
        super().__init__(name="qcg-live-interrupter", daemon=True)
        self.pid = pid
        self.deadline = time.monotonic() + duration if duration else None
        self.deadline_reason = deadline_reason
        self.control_fd = control_fd
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.sent = False
        self.seen = False
        self.why = None

    def run(self):
        while not self.done.is_set():
            timeout = 0.2
            if self.deadline is not None:
                timeout = max(0.0, min(timeout, self.deadline - time.monotonic()))
            if self.control_fd is not None:
                try:
                    ready, _w, _x = select.select([self.control_fd], [], [], timeout)
                except (OSError, ValueError):
                    ready, self.control_fd = [], None
                if ready:
                    try:
                        os.read(self.control_fd, 256)
                    except OSError:
                        pass
                    self.fire("stop requested")
                    return
            else:
                self.done.wait(timeout)
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.fire(self.deadline_reason)
                return

    def fire(self, why):
        with self.lock:
            if self.done.is_set() or self.sent:
                return
            try:
                os.kill(self.pid, signal.SIGINT)
            except OSError:
                return
            self.sent = True
            self.why = why

    def stop(self):
        with self.lock:
            self.done.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(2.0)


# The guardian's program, run by /usr/bin/python3 in its own session (a kill of gdb's process
# group spares it).  It waits for EOF on stdin: "disarmed" last means gdb removed everything
# itself; anything else means gdb died armed.  Then it takes every thread of the process
# (PTRACE_SEIZE + PTRACE_INTERRUPT: no signal sent), each as soon as nobody traces it: the
# dying gdb until the kernel releases it, or anyone reading the process meanwhile (a test's
# ptrace reader, a gdb attaching for a moment).  A refused PTRACE_SEIZE is retried, and
# /proc/PID/task is read again until every thread listed is held (a thread not yet held may
# create one), all within REPAIR_SECONDS.  Then it puts back from the files every byte of an
# executable file mapping that reads 0xCC in memory and not in its file (gdb's int3; QEMU has
# no JIT code in file mappings), zeroes DR0-3 and DR7 of every thread, rewinds a thread that
# stopped on one of those int3 meanwhile (its SIGTRAP is not delivered), and detaches, passing
# on any other signal.  It ends with one line on its stderr (gdb's, inherited): what it
# repaired and, if anything, what it could not (a thread it never held and why).
GUARDIAN_SOURCE = r'''
import ctypes, errno, os, sys, time
pid, gdb_pid = int(sys.argv[1]), int(sys.argv[2])
lines = sys.stdin.read().split()
if lines and lines[-1] == "disarmed":
    sys.exit(0)
REPAIR_SECONDS = 60         # for gdb to let go and every thread to be held; then report
began = time.monotonic()
def say(text):
    try:
        sys.stderr.write("qemu-chardev-gdb guardian: " + text + "\n"); sys.stderr.flush()
    except Exception:
        pass
def thread_status(tid):
    """(state letter, tracer pid) of thread TID, None once it is gone."""
    state = tracer = None
    try:
        with open("/proc/%d/task/%d/status" % (pid, tid)) as f:
            for line in f:
                if line.startswith("State:"):
                    state = line.split()[1]
                elif line.startswith("TracerPid:"):
                    tracer = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return (state, tracer) if state and tracer is not None else None
def threads():
    """The live threads of the process (a zombie has no registers to clear); None once the
    process is gone."""
    try:
        listed = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    alive = set()
    for name in listed:
        status = thread_status(int(name))
        if status is not None and status[0] not in "ZX":
            alive.add(int(name))
    return alive
def gone():
    say("gdb (pid %d) died with process %d armed; the process is gone" % (gdb_pid, pid))
    sys.exit(0)
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
def ptrace(req, tid, addr=0, data=0):
    ctypes.set_errno(0)
    value = libc.ptrace(req, tid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    if value == -1 and ctypes.get_errno():
        raise OSError(ctypes.get_errno(), "ptrace %#x %d" % (req, tid))
    return value
SEIZE, INTERRUPT, DETACH, PEEKUSER, POKEUSER = 0x4206, 0x4207, 17, 3, 6
DEBUGREG, RIP = 848, 16 * 8
WALL = 0x40000000
try:
    mem = os.open("/proc/%d/mem" % pid, os.O_RDWR)
except OSError as exc:      # no right to (e.g. Yama ptrace_scope 1 for a non-ancestor)
    if threads() is None:
        gone()
    say("gdb (pid %d) died with process %d armed, which cannot be repaired (%s): its "
        "breakpoints and debug registers may kill it with SIGTRAP" % (gdb_pid, pid, exc))
    sys.exit(1)
held = {}                   # tid -> wait status of its stop: ours to repair and detach
waiting = set()             # seized and interrupted, not stopped yet
why = {}                    # tid -> why it is not held yet (the last reason seen)
while True:
    listed = threads()
    if listed is None:
        gone()
    for tid in sorted(listed - set(held) - waiting):
        status = thread_status(tid)
        if status is None:
            continue                    # exited meanwhile
        if status[1]:
            why[tid] = "traced by %d%s" % (status[1], " (gdb)" if status[1] == gdb_pid else "")
            continue
        try:
            ptrace(SEIZE, tid)
        except OSError as exc:          # someone attached meanwhile, or it is exiting
            why[tid] = "PTRACE_SEIZE: %s" % os.strerror(exc.errno)
            continue
        try:
            ptrace(INTERRUPT, tid)
        except OSError:
            pass                        # exiting: its wait reports that
        waiting.add(tid)
        why[tid] = "did not stop"
    for tid in sorted(waiting):
        try:
            done, status = os.waitpid(tid, WALL | os.WNOHANG)
        except ChildProcessError:
            done, status = tid, None    # gone
        if done:
            waiting.discard(tid)
            why.pop(tid, None)
            if status is not None and os.WIFSTOPPED(status):
                held[tid] = status
    listed = threads()          # again: a thread not held yet may have made one meanwhile
    if listed is None:
        gone()
    missing = {"thread %d" % tid: why.get(tid, "not seen yet") for tid in listed - set(held)}
    if not missing or time.monotonic() - began >= REPAIR_SECONDS:
        break
    time.sleep(0.005)
fixed = []
try:
    maps = open("/proc/%d/maps" % pid).readlines()
except OSError:
    gone()
for line in maps:
    parts = line.split(None, 5)
    if len(parts) < 6 or parts[1][2] != "x" or parts[1][0] != "r" or not parts[5].startswith("/"):
        continue
    start, end = (int(x, 16) for x in parts[0].split("-"))
    path = parts[5].strip()
    try:
        memory = os.pread(mem, end - start, start)
        with open(path, "rb") as f:
            f.seek(int(parts[2], 16)); data = f.read(end - start)
        at = memory.find(b"\xcc")
        while at != -1:
            if at < len(data) and data[at] != 0xCC:
                os.pwrite(mem, data[at:at + 1], start + at)
                fixed.append(start + at)
            at = memory.find(b"\xcc", at + 1)
    except OSError as exc:
        missing["code at %#x" % start] = "not put back: %s" % os.strerror(exc.errno)
os.close(mem)
cleared = 0
for tid, status in sorted(held.items()):
    signal = 0
    try:
        if (status >> 16) == 0 and os.WIFSTOPPED(status):
            signal = os.WSTOPSIG(status)
            rip = ptrace(PEEKUSER, tid, RIP) & (2 ** 64 - 1)
            if signal == 5 and rip - 1 in fixed:
                ptrace(POKEUSER, tid, RIP, rip - 1)
                signal = 0
        if ptrace(PEEKUSER, tid, DEBUGREG + 7 * 8) & 0xFF:
            cleared += 1
        ptrace(POKEUSER, tid, DEBUGREG + 7 * 8, 0)
        for n in range(4):
            ptrace(POKEUSER, tid, DEBUGREG + 8 * n, 0)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            missing["thread %d" % tid] = "debug registers not cleared: %s" % \
                os.strerror(exc.errno)
    try:
        ptrace(DETACH, tid, 0, signal)
    except OSError:
        pass
text = ("gdb (pid %d) died with process %d armed: %d breakpoint byte(s) put back, debug "
        "registers cleared in %d of %d thread(s)" % (gdb_pid, pid, len(fixed), cleared, len(held)))
if missing:
    say(text + "; NOT repaired after %.1f s: " % (time.monotonic() - began) +
        ", ".join("%s (%s)" % (what, missing[what]) for what in sorted(missing)))
    sys.exit(1)
say(text)
'''


def guardian_python():
    """The Python that runs the guardian: Debian's, else the one on PATH."""
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else \
        shutil.which("python3") or sys.executable


class Guardian:
    """A process that repairs the target if gdb dies while our points are armed.

    ``start()`` with our first breakpoint; ``release()`` (from ``delete_all()``) tells it gdb
    removed everything, and it exits.  If gdb dies first, the guardian sees its stdin close
    without that word and repairs the process (see GUARDIAN_SOURCE).  Never raises: without a
    guardian the watch still works, only unprotected against gdb's death (``problem`` says
    why)."""

    def __init__(self):
        self.proc = None
        self.problem = None

    def start(self, pid):
        if self.proc is not None:
            return
        try:
            self.proc = subprocess.Popen(
                [guardian_python(), "-c", GUARDIAN_SOURCE, str(pid), str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
                close_fds=True)
            self.proc.stdin.write(b"armed\n")
            self.proc.stdin.flush()
        except (OSError, ValueError) as exc:
            self.problem = f"no guardian against gdb's death ({exc})"
            self.proc = None

    def release(self):
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.write(b"disarmed\n")
            proc.stdin.close()
            proc.wait(5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass


class Engine:
    """Our breakpoints, the `continue` loop and the work queued by ``stop()``."""

    def __init__(self, on_error=None):
        self.points = set()              # every StopPoint made and not yet deleted
        self.queued = []                 # (kind, function, args): after-stop work
        self.on_error = on_error         # (exc, message) -> what stop() returns
        self.internal_errors = []
        self.stop_calls = 0              # stop() callbacks run, and the time they took
        self.stop_seconds = 0.0
        self.running = False
        self.interrupter = None
        self.guardian = Guardian()

    # --- breakpoints ---------------------------------------------------------------------

    def watchpoint(self, address, size, callback, *args):
        """A hardware write watchpoint on [address, address+size); NoHardwareWatchpoint (and
        nothing left behind) if gdb would only give a software one."""
        self.guardian.start(gdb.selected_inferior().pid)
        point = StopPoint(self, callback, args,
                          spec=f"*({WATCH_CTYPES[size]} *) 0x{address:x}")
        self.points.add(point)
        if point.type != gdb.BP_HARDWARE_WATCHPOINT:
            self.delete(point)
            raise NoHardwareWatchpoint("software watchpoint")
        return point

    def breakpoint(self, function, callback, *args):
        self.guardian.start(gdb.selected_inferior().pid)
        point = StopPoint(self, callback, args, function=function)
        self.points.add(point)
        return point

    def delete(self, point):
        self.points.discard(point)
        try:
            if point.is_valid():
                point.delete()
        except (gdb.error, RuntimeError):
            pass

    def delete_all(self):
        """Delete every breakpoint and watchpoint this engine made (idempotent)."""
        for point in list(self.points):
            self.delete(point)
        self.queued = []
        self.guardian.release()

    def is_ours(self, event):
        return all(bp in self.points for bp in event.breakpoints)

    # --- stop() --------------------------------------------------------------------------

    def call(self, callback, args=()):
        """Run a stop() callback: timed, and an exception is recorded, never raised into gdb."""
        started = time.perf_counter()
        try:
            return bool(callback(*args))
        except Exception as exc:  # noqa: BLE001 - a stop() must never raise
            message = f"internal error in {getattr(callback, '__name__', callback)}: " \
                      f"{type(exc).__name__}: {exc}"
            new = message not in self.internal_errors
            if new:
                self.internal_errors.append(message)
            return bool(self.on_error(exc, message, new)) if self.on_error else False
        finally:
            self.stop_calls += 1
            self.stop_seconds += time.perf_counter() - started

    def queue(self, kind, function, *args):
        """Work for after the stop (from ``stop()``: thread switches, breakpoint changes)."""
        self.queued.append((kind, function, args))

    def run_queued(self):
        """Run the queued work in order; [(kind, result)]."""
        done = []
        while self.queued:
            kind, function, args = self.queued.pop(0)
            done.append((kind, function(*args)))
        return done

    # --- the loop ------------------------------------------------------------------------

    def run(self, after_stop, duration=None, control_fd=None, deadline_reason="timeout",
            quiet=False, to_string=False):
        """Resume the process until ``after_stop(stop, done)`` returns a reason; return it.

        ``stop`` is a ``model.stops.Stop``; ``done`` the queued work just run (none after
        an exit, Ctrl-C or a failed resume).  ``duration``/``control_fd``: SIGINT the process
        then (the SIGINT stop carries ``deadline_reason`` or "stop requested").  ``quiet``
        passes QUIET_SIGNALS without stopping and silences gdb's notifications;
        ``to_string`` swallows gdb's resume and stop messages.
        """
        events = []

        def on_event(event):
            events.append(event)

        saved = quiet_signals() if quiet else []
        notifications = set_parameter("suppress-cli-notifications", "on" if quiet else None)
        gdb.events.stop.connect(on_event)
        gdb.events.exited.connect(on_event)
        self.running = True
        self.interrupter = Interrupter(gdb.selected_inferior().pid, duration, control_fd,
                                       deadline_reason)
        if duration or control_fd is not None:
            self.interrupter.start()
        reason = None
        try:
            while reason is None:
                del events[:]
                done = []
                try:
                    gdb.execute("continue", to_string=to_string)
                except KeyboardInterrupt:
                    stop = stops.Stop(stops.STOP_CTRL_C)
                except gdb.error as exc:
                    stop = stops.Stop(stops.STOP_RESUME_FAILED, message=str(exc))
                else:
                    stop = self.classify(events)
                    if stop.kind != stops.STOP_EXITED:
                        done = self.run_queued()
                reason = after_stop(stop, done)
        finally:
            self.interrupter.stop()
            self.running = False
            gdb.events.stop.disconnect(on_event)
            gdb.events.exited.disconnect(on_event)
            restore_signals(saved)
            if quiet:
                set_parameter("suppress-cli-notifications", notifications)
        return reason

    @property
    def interrupt_pending(self):
        """We sent a SIGINT that no stop has reported yet (it may still be queued)."""
        return bool(self.interrupter and self.interrupter.sent and not self.interrupter.seen)

    def classify(self, events):
        """The ``Stop`` one `continue` ended with, from gdb's stop and exit events."""
        for event in events:
            if isinstance(event, gdb.ExitedEvent):
                return stops.Stop(stops.STOP_EXITED,
                                  exit_code=getattr(event, "exit_code", None))
        for event in events:
            if isinstance(event, gdb.SignalEvent):
                name = event.stop_signal
                interrupt = None
                if name == "SIGINT" and self.interrupter is not None and self.interrupter.sent:
                    self.interrupter.seen = True
                    interrupt = self.interrupter.why
                return stops.Stop(stops.STOP_SIGNAL, signal=name, interrupt=interrupt)
            if isinstance(event, gdb.BreakpointEvent) and not self.is_ours(event):
                return stops.Stop(stops.STOP_FOREIGN)
        if not events:
            return stops.Stop(stops.STOP_NOTHING)
        if not any(isinstance(e, gdb.BreakpointEvent) for e in events):
            return stops.Stop(stops.STOP_OTHER)
        return stops.Stop(stops.STOP_OURS)


# --- gdb settings ----------------------------------------------------------------------------

def set_parameter(name, value):
    """Set a gdb setting, returning its old value ('on'/'off'), or None if unknown."""
    try:
        old = gdb.parameter(name)
    except (gdb.error, RuntimeError):
        return None
    if value is None:
        return old
    try:
        gdb.execute(f"set {name} {value}", to_string=True)
    except gdb.error:
        return None
    return "on" if old is True else "off" if old is False else old


def quiet_signals():
    """Make QUIET_SIGNALS nostop/noprint/pass; return what to restore."""
    saved = []
    for name in QUIET_SIGNALS:
        try:
            text = gdb.execute(f"info signals {name}", to_string=True)
        except gdb.error:
            continue
        for line in text.splitlines():
            parts = line.split()
            if parts and parts[0] == name and len(parts) >= 4:
                saved.append((name, parts[1] == "Yes", parts[2] == "Yes", parts[3] == "Yes"))
        gdb.execute(f"handle {name} nostop noprint pass", to_string=True)
    return saved


def restore_signals(saved):
    for name, stop, show, passed in saved:
        words = ["stop" if stop else "nostop", "print" if show else "noprint",
                 "pass" if passed else "nopass"]
        if stop:           # gdb: "stop" implies "print"
            words[1] = "print"
        try:
            gdb.execute(f"handle {name} {' '.join(words)}", to_string=True)
        except gdb.error:
            pass


# --- our SIGINT ------------------------------------------------------------------------------

def sigint_pending(pid):
    """True if a SIGINT is queued for the process or one of its threads (from /proc)."""
    def masks(path):
        out = {}
        try:
            with open(path, encoding="ascii") as status:
                for line in status:
                    key, _, value = line.partition(":")
                    if key in ("SigPnd", "ShdPnd"):
                        out[key] = int(value.strip(), 16)
        except OSError:
            pass
        return out
    if masks(f"/proc/{pid}/status").get("ShdPnd", 0) & SIGINT_BIT:
        return True
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(masks(f"/proc/{pid}/task/{t}/status").get("SigPnd", 0) & SIGINT_BIT
               for t in tasks)


def consume_pending_sigint(pid):
    """A SIGINT still queued for the process: let it arrive here, where gdb stops on it and
    does not pass it on, instead of reaching QEMU after a detach.  True if there was one."""
    if not sigint_pending(pid):
        return False
    notifications = set_parameter("suppress-cli-notifications", "on")
    try:
        gdb.execute("continue", to_string=True)
    except (gdb.error, KeyboardInterrupt):
        pass
    set_parameter("suppress-cli-notifications", notifications)
    return True
