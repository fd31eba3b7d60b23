"""The engine of `qemu watch-disconnect`: catch a socket chardev torn down without its lock.

What is watched (live processes only; gdb in all-stop mode):

* one hardware write watchpoint per socket chardev on ``SocketChardev.state`` (4 bytes, one
  x86 debug register); ``--fields`` can add ``ioc``/``sioc`` (8 bytes each).  gdb only calls a
  write watchpoint's ``stop()`` when the value changed, so the process pays nothing on the hot
  path: writes never touch these fields, only connects and disconnects do.
* the default watches ``state`` and not ``ioc`` on purpose: ``tcp_chr_free_connection()``
  clears ``sioc``, then ``ioc``, then sets ``state``.  A trap on ``ioc`` freezes the
  disconnecting thread inside the race window (ioc NULL, state still connected) for the
  milliseconds gdb needs, and on a QEMU without the 2019 fix that lets writers crash on the
  NULL ``ioc`` within a few hang-ups.  A trap on ``state`` comes after the window has closed.
* rare-path breakpoints: ``qmp_chardev_open_socket`` (a socket chardev is created: arm it),
  ``char_socket_finalize`` (it is freed: disarm first; finalization frees the connection
  without the lock legitimately), and, only while some chardev has no debug register left,
  ``tcp_chr_free_connection`` for those chardevs (announced).

x86-64 has four debug registers, shared with any hardware watchpoint or breakpoint the user
set; chardevs are covered in order (the labels given, else by label) while registers last.

Decisions are taken in ``stop()``: the changing thread's LWP against the ``chr_write_lock``
owner (``mutex.read_mutex``).  A warning (no writer) is recorded there with the current
thread's stack and the process goes on.  For an error (another thread holds the lock: a
write in flight) ``stop()`` returns True: the writer's stack needs a thread switch, which gdb
does not allow inside ``stop()``, so it is captured after the stop, as are arming new
chardevs and disarming finalized ones (gdb forbids changing breakpoints in ``stop()`` too).

Nothing here writes target memory or calls inferior functions.
"""
import json
import os
import select
import signal
import threading
import time

import gdb

from qemu_chardev.readers import qom
from qemu_chardev.target import memory as target
from qemu_chardev.analysis import watch as wa
from qemu_chardev.render import watch as watch_render
from qemu_chardev.readers.chardev import SOCKET_TYPE, socket_layout
from qemu_chardev.model.errors import QcgError
from qemu_chardev.readers.mutex import read_mutex
from qemu_chardev.render.base import to_json_text
from qemu_chardev.target.snapshot import Snapshot, selected_thread_stack, walk_frames

CREATE_FUNCTION = "qmp_chardev_open_socket"
FINALIZE_FUNCTION = "char_socket_finalize"
FALLBACK_FUNCTION = "tcp_chr_free_connection"
FINALIZER_SCAN_DEPTH = 16
DEFAULT_FIELDS = ("state",)
# Signals QEMU gets in normal operation (SIGPIPE when a peer hangs up mid-write: ignored by
# QEMU, but a ptraced process reports even ignored signals).  Passed on without stopping
# while the watch runs; the user's settings are restored afterwards.
QUIET_SIGNALS = ("SIGPIPE", "SIGCHLD", "SIGWINCH", "SIGURG", "SIGALRM", "SIGUSR1", "SIGUSR2",
                 "SIGPROF", "SIGVTALRM", "SIGIO", "SIGCONT")
SIGINT_BIT = 1 << (signal.SIGINT - 1)

_session = None          # the armed WatchSession, if any
_last_session = None     # the last one disarmed (for scripts' summaries)


def current_session():
    return _session


def _remember(session):
    global _last_session
    _last_session = session


def _lwp(thread):
    return (thread.ptid[1] or thread.ptid[2]) if thread is not None else None


def _current_function_names(depth=FINALIZER_SCAN_DEPTH):
    names = []
    try:
        for _level, frame in walk_frames(depth):
            names.append(frame.name())
    except gdb.error:
        pass
    return names


def _arg(name):
    """An integer argument of the selected (innermost) frame."""
    return int(gdb.selected_frame().read_var(name))


class Tracked:
    """One socket chardev under watch."""

    def __init__(self, label, address, lock_address, where):
        self.label = label
        self.address = address
        self.lock_address = lock_address
        self.where = where              # {field: (address, size)}
        self.watches = []               # our gdb watchpoints on it
        self.fields = []                # the fields they watch
        self.registers = 0
        self.last = {}
        self.finalizing = False

    @property
    def covered(self):
        return bool(self.watches)


class _FieldWatch(gdb.Breakpoint):
    def __init__(self, session, tracked, field_name):
        address, size = tracked.where[field_name]
        ctype = {4: "unsigned int", 8: "unsigned long", 2: "unsigned short", 1: "unsigned char"}
        super().__init__(f"*({ctype[size]} *) 0x{address:x}", gdb.BP_WATCHPOINT, gdb.WP_WRITE,
                         internal=True)
        self.silent = True
        self.session = session
        self.tracked = tracked
        self.field_name = field_name

    def stop(self):
        return self.session.guarded(self.session.on_field_change, self.tracked, self.field_name)


class _FunctionBreak(gdb.Breakpoint):
    def __init__(self, session, function, handler):
        super().__init__(function=function, internal=True)
        self.silent = True
        self.session = session
        self.handler = handler

    def stop(self):
        return self.session.guarded(self.handler)


class _Interrupter(threading.Thread):
    """Sends the process one SIGINT when the duration is over or the control fd says so.

    Runs while gdb waits in `continue` (gdb releases the GIL then).  The SIGINT stops the
    process in gdb (SIGINT is not passed on), which ends the watch loop.
    """

    def __init__(self, pid, duration, control_fd):
        super().__init__(name="qcg-watch-interrupter", daemon=True)
        self.pid = pid
        self.deadline = time.monotonic() + duration if duration else None
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
                self.fire("duration elapsed")
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


class WatchSession:
    """Armed watchpoints and breakpoints, the events found, and the loop that runs them."""

    def __init__(self, labels=(), fields=DEFAULT_FIELDS, stop_on_error=False, json_log=None,
                 core_dir=None, max_registers=wa.X86_DEBUG_REGISTERS, quiet=False,
                 colour=False, summary_path=None):
        self.labels = list(labels)
        self.fields = list(fields)
        self.stop_on_error = stop_on_error
        self.json_log_path = json_log
        self.core_dir = core_dir
        self.max_registers = max_registers
        self.quiet = quiet
        self.colour = colour
        self.summary_path = summary_path
        self.tracked = {}                # address -> Tracked
        self.order = []                  # addresses, in priority order
        self.function_breaks = {}        # role -> _FunctionBreak
        self.events = []
        self.counters = wa.Counters()
        self.pending_new = []            # (label, address) created, to arm at the next stop
        self.pending_finalize = []       # Tracked being finalized, to disarm
        self.pending_errors = []         # WatchEvent waiting for the writer's stack
        self.notes = []
        self.internal_errors = []
        self._fallback_announced = set()
        self.final_coverage = []
        self.stop_calls = 0           # stop() callbacks run, and the time they took
        self.stop_seconds = 0.0
        self.reason = None
        self.at_scene = False
        self.keep_armed = False
        self.exited = None
        self.gone = False
        self.running = False
        self.ran = False
        self.interrupter = None
        self.interrupt_pending = False
        self._log = None
        self._handlers = []
        self.pid = None
        self.started = time.time()

    # --- plumbing -------------------------------------------------------------------------

    def say(self, text):
        gdb.write(text + "\n")
        gdb.flush()

    def say_info(self, text):
        """Routine news (chardevs created and armed): not with --quiet."""
        if not self.quiet:
            self.say(f"{watch_render.PREFIX}: {text}")

    def guarded(self, func, *args):
        """Run a stop() handler; an exception is recorded, never raised into gdb."""
        started = time.perf_counter()
        try:
            return bool(func(*args))
        except Exception as exc:  # noqa: BLE001 - a stop() must never raise
            message = f"internal error in {getattr(func, '__name__', func)}: " \
                      f"{type(exc).__name__}: {exc}"
            if message not in self.internal_errors:
                self.internal_errors.append(message)
                self.say(f"{watch_render.PREFIX}: {message}")
            return False
        finally:
            self.stop_calls += 1
            self.stop_seconds += time.perf_counter() - started

    # --- arming ---------------------------------------------------------------------------

    def arm(self):
        global _session
        inferior = gdb.selected_inferior()
        connection = getattr(inferior, "connection", None)
        if inferior.pid == 0 or not inferior.threads():
            raise QcgError("no live process: attach with 'gdb -p PID' or start it with 'starti'")
        if connection is not None and getattr(connection, "type", None) == "core":
            raise QcgError("watching needs a live process, not a core file")
        if gdb.parameter("non-stop"):
            raise QcgError("qemu watch-disconnect needs all-stop mode ('set non-stop off')")
        layout = socket_layout()
        if layout is None:
            raise qom.NoQemuDebugInfo("no QEMU debug info for SocketChardev (is this a QEMU "
                                      "binary built with -g?)")
        for name in self.fields:
            if not layout.has(name):
                raise QcgError(f"this QEMU's SocketChardev has no field {name!r}")
        self.pid = inferior.pid
        self.layout = layout
        self.lock_offset = layout.field("parent.chr_write_lock").offset
        self.label_offset = layout.field("parent.label").offset
        if self.core_dir and not os.path.isdir(self.core_dir):
            raise QcgError(f"--core-dir {self.core_dir}: not a directory")
        found = self._existing_socket_chardevs()
        if self.json_log_path:
            try:
                self._log = open(self.json_log_path, "a", encoding="utf-8")
            except OSError as exc:
                raise QcgError(f"cannot open --json-log {self.json_log_path}: {exc}") from None
        _session = self
        try:
            for role, function, handler in (
                    ("create", CREATE_FUNCTION, self.on_create),
                    ("finalize", FINALIZE_FUNCTION, self.on_finalize)):
                if target.symbol_address(function) is None:
                    self.notes.append(f"no symbol {function}: chardevs "
                                      f"{'created' if role == 'create' else 'finalized'} "
                                      f"while watching are not followed")
                    continue
                self.function_breaks[role] = _FunctionBreak(self, function, handler)
            for label, address in found:
                self._track(label, address)
            self._rebalance(announce=False)
            self._connect_handlers()
        except BaseException:
            self.disarm()
            raise
        return self.coverage()

    def _existing_socket_chardevs(self):
        snap = Snapshot()
        try:
            tree = qom.chardevs_in_tree(snap)
        except qom.NoQemuDebugInfo:
            raise
        except QcgError as exc:
            self.notes.append(f"QOM tree not readable ({exc}): no chardev yet?")
            tree = []
        sockets, others = {}, {}
        for label, address in tree:
            if qom.is_a(snap, address, SOCKET_TYPE):
                sockets[label] = address
            else:
                others[label] = address
        if self.labels:
            for label in self.labels:
                if label in others:
                    raise QcgError(f"chardev {label!r} is not a socket chardev")
                if label not in sockets:
                    self.notes.append(f"no chardev {label!r} yet: watched if it is created")
            return [(label, sockets[label]) for label in self.labels if label in sockets]
        return sorted(sockets.items(), key=lambda item: (item[0] or "", item[1]))

    def _wanted(self, label):
        return not self.labels or label in self.labels

    def _track(self, label, address):
        if address in self.tracked:
            return self.tracked[address]
        where = {}
        for name in wa.WATCHABLE_FIELDS:
            f = self.layout.field(name)
            if f is not None:
                where[name] = (address + f.offset, f.size)
        tracked = Tracked(label, address, address + self.lock_offset, where)
        self.tracked[address] = tracked
        self.order.append(address)
        if self.labels:
            rank = {l: i for i, l in enumerate(self.labels)}
            self.order.sort(key=lambda a: rank.get(self.tracked[a].label, len(rank)))
        self._refresh_last(tracked)
        return tracked

    def _refresh_last(self, tracked):
        snap = Snapshot()
        view = snap.mem.view(self.layout, tracked.address, "SocketChardev")
        for name in wa.WATCHABLE_FIELDS:
            tracked.last[name] = view.get(name)

    def _user_registers(self):
        """Debug registers held by the user's own hardware watchpoints and breakpoints."""
        kinds = (gdb.BP_HARDWARE_WATCHPOINT, gdb.BP_READ_WATCHPOINT, gdb.BP_ACCESS_WATCHPOINT,
                 getattr(gdb, "BP_HARDWARE_BREAKPOINT", -1))
        return sum(1 for bp in gdb.breakpoints() if bp.is_valid() and bp.enabled
                   and bp.number > 0 and bp.type in kinds)

    def free_registers(self):
        used = sum(t.registers for t in self.tracked.values())
        return self.max_registers - self._user_registers() - used

    def _rebalance(self, announce=True, new=()):
        """Give free debug registers to uncovered chardevs (in order); fallback for the rest.

        Every change of coverage is announced (``new``: addresses just created)."""
        live = [self.tracked[a] for a in self.order if not self.tracked[a].finalizing]
        waiting = [t for t in live if not t.covered]
        plan, _rest = wa.plan_watches([(t.label, t.address, t.where) for t in waiting],
                                      self.fields, self.free_registers())
        planned = {p.address: p for p in plan}
        for tracked in waiting:
            name = f"chardev {tracked.label!r} (0x{tracked.address:x})"
            created = "new " if tracked.address in new else ""
            if tracked.address in planned and self._watch(tracked):
                if announce and (created or tracked.address in self._fallback_announced):
                    self._fallback_announced.discard(tracked.address)
                    self.say_info(f"{created}{name}: watched in hardware "
                                  f"({', '.join(tracked.fields)})")
            elif announce and tracked.address not in self._fallback_announced:
                self._fallback_announced.add(tracked.address)
                self.say(f"{watch_render.PREFIX}: {created}{name}: no debug register left, "
                         f"covered by the breakpoint on {FALLBACK_FUNCTION} (a brief stop per "
                         f"disconnect)")
            elif not announce:
                self._fallback_announced.add(tracked.address)
        self._update_fallback()

    def _watch(self, tracked):
        """Hardware watchpoints on ``tracked``'s fields; False (nothing left armed) if gdb
        would only give software watchpoints."""
        self._refresh_last(tracked)
        watches = []
        try:
            for name in self.fields:
                wp = _FieldWatch(self, tracked, name)
                watches.append(wp)
                if wp.type != gdb.BP_HARDWARE_WATCHPOINT:
                    raise QcgError("software watchpoint")
        except (QcgError, gdb.error, RuntimeError) as exc:
            for wp in watches:
                _delete(wp)
            note = (f"chardev {tracked.label!r}: gdb gave no hardware watchpoint ({exc}; "
                    "'set can-use-hw-watchpoints 1'?): falling back to a breakpoint")
            if note not in self.notes:
                self.notes.append(note)
            return False
        tracked.watches = watches
        tracked.fields = list(self.fields)
        tracked.registers = sum(wa.debug_registers_needed(*tracked.where[f])
                                for f in self.fields)
        return True

    def _unwatch(self, tracked):
        for wp in tracked.watches:
            _delete(wp)
        tracked.watches = []
        tracked.fields = []
        tracked.registers = 0

    def _update_fallback(self):
        needed = any(not t.covered and not t.finalizing for t in self.tracked.values())
        have = self.function_breaks.get("fallback")
        if needed and have is None:
            if target.symbol_address(FALLBACK_FUNCTION) is None:
                note = (f"no symbol {FALLBACK_FUNCTION}: chardevs without a debug register are "
                        "NOT watched")
                if note not in self.notes:
                    self.notes.append(note)
                    self.say(f"{watch_render.PREFIX}: {note}")
                return
            self.function_breaks["fallback"] = _FunctionBreak(self, FALLBACK_FUNCTION,
                                                              self.on_fallback)
        elif not needed and have is not None:
            _delete(have)
            del self.function_breaks["fallback"]

    def coverage(self):
        rows = []
        for address in self.order:
            t = self.tracked[address]
            rows.append({"label": t.label, "address": t.address, "watched": list(t.fields),
                         "registers": t.registers, "fallback": not t.covered})
        return rows

    def disarm(self):
        """Delete every breakpoint and watchpoint of this session (idempotent)."""
        global _session
        if self.armed:
            self.final_coverage = self.coverage()
        for tracked in self.tracked.values():
            self._unwatch(tracked)
        for bp in self.function_breaks.values():
            _delete(bp)
        self.function_breaks = {}
        self._disconnect_handlers()
        if self._log is not None:
            self._log.close()
            self._log = None
        if _session is self:
            _session = None
        _remember(self)

    @property
    def armed(self):
        return _session is self

    # --- stop() handlers (the process is stopped; no breakpoint changes allowed) ------------

    def on_field_change(self, tracked, field_name):
        if tracked.finalizing:
            return False
        snap = Snapshot()
        view = snap.mem.view(self.layout, tracked.address, "SocketChardev")
        new = view.get(field_name)
        old = tracked.last.get(field_name)
        for name in wa.WATCHABLE_FIELDS:
            tracked.last[name] = view.get(name)
        if new == old:
            return False
        return self._judge(snap, tracked, field_name, old, new, view)

    def on_fallback(self):
        address = _arg("chr")
        tracked = self.tracked.get(address)
        if tracked is None or tracked.covered or tracked.finalizing:
            return False
        snap = Snapshot()
        view = snap.mem.view(self.layout, tracked.address, "SocketChardev")
        return self._judge(snap, tracked, wa.TEARDOWN, None, None, view)

    def _judge(self, snap, tracked, field_name, old, new, view):
        thread = gdb.selected_thread()
        lwp = _lwp(thread)
        state_now, ioc_now = view.get("state"), view.get("ioc")
        teardown = wa.is_teardown(field_name, old, new, state_now=state_now, ioc_now=ioc_now)
        lock = read_mutex(snap, tracked.lock_address, with_owner=False)
        # Unwinding costs most of a stop(): only when it can change the verdict (a teardown
        # not done by the lock owner, which might be char_socket_finalize).
        in_final = teardown and lock.owner_lwp != lwp and \
            wa.in_finalizer(_current_function_names())
        outcome, verdict = wa.assess(field_name, old, new, lwp, lock.locked, lock.owner_lwp,
                                     in_finalizer=in_final, state_now=state_now,
                                     ioc_now=ioc_now, ioc_watched="ioc" in tracked.fields)
        wa.count(self.counters, field_name, outcome, verdict)
        if verdict is None:
            return False
        event = wa.WatchEvent(
            id=len(self.events) + len(self.pending_errors) + 1, kind=verdict.kind,
            reason=verdict.reason, label=tracked.label, address=tracked.address,
            field_name=field_name, old=old, new=new, lwp=lwp,
            thread=thread.num if thread else None, thread_name=thread.name if thread else None,
            writer_lwp=verdict.writer_lwp, lock=lock.to_json(), time=time.time(),
            stack=[f.to_json() for f in selected_thread_stack()], problems=list(lock.problems))
        if field_name == wa.TEARDOWN:
            event.old = None
        if verdict.severity == "error":
            self.pending_errors.append(event)
            return True
        self._record(event)
        return False

    def on_create(self):
        address = _arg("chr")
        snap = Snapshot()
        label = snap.mem.cstring(snap.mem.pointer(address + self.label_offset, "label"), 256,
                                 "label")
        if not self._wanted(label):
            return False
        self.counters.created += 1
        self.pending_new.append((label, address))
        return True

    def on_finalize(self):
        address = _arg("obj")
        tracked = self.tracked.get(address)
        if tracked is None:
            return False
        tracked.finalizing = True
        self.counters.finalized += 1
        self.pending_finalize.append(tracked)
        # Its watchpoints must go before the memory is freed and reused.
        return tracked.covered

    # --- after a stop (the process is stopped; breakpoints may change) ---------------------

    def housekeeping(self):
        changed = False
        for tracked in self.pending_finalize:
            self._unwatch(tracked)
            self._fallback_announced.discard(tracked.address)
            self.tracked.pop(tracked.address, None)
            if tracked.address in self.order:
                self.order.remove(tracked.address)
            changed = True
        self.pending_finalize = []
        created = set()
        for label, address in self.pending_new:
            stale = self.tracked.get(address)
            if stale is not None:            # memory reused without a finalize seen
                self._unwatch(stale)
                self.tracked.pop(address)
                self.order.remove(address)
            self._track(label, address)
            created.add(address)
            changed = True
        self.pending_new = []
        if changed:
            self._rebalance(new=created)
        completed = list(self.pending_errors)
        self.pending_errors = []
        for event in completed:
            self._complete_error(event)
        return completed

    def _complete_error(self, event):
        snap = Snapshot()
        if event.writer_lwp is not None:
            ref = snap.threads().get(event.writer_lwp)
            if ref is None:
                event.problems.append(f"writer LWP {event.writer_lwp} is not a thread of this "
                                      "process")
            else:
                event.writer_thread = ref.num
                event.writer_stack = [f.to_json() for f in snap.stack(event.writer_lwp)]
        self._write_core(event)
        self._record(event)

    def _write_core(self, event):
        if not self.core_dir:
            return
        path = os.path.join(self.core_dir, f"core.{self.pid}.{event.id}")
        try:
            gdb.execute(f"gcore {path}", to_string=True)
        except gdb.error as exc:
            event.problems.append(f"gcore failed: {exc}")
            return
        if os.path.isfile(path):
            event.core = path
        else:
            event.problems.append(f"gcore wrote no {path}")

    def _record(self, event):
        self.events.append(event)
        obj = event.to_json()
        if self._log is not None:
            self._log.write(json.dumps(obj) + "\n")
            self._log.flush()
        if not self.quiet or event.severity == "error":
            self.say(watch_render.event_block(obj, self.colour,
                                              brief=event.severity != "error"))

    def crash_event(self, signal_name):
        thread = gdb.selected_thread()
        stack = selected_thread_stack()
        label = address = None
        for frame in stack:
            chardev = frame.pointer("chr", "s")
            if chardev and chardev in self.tracked:
                label, address = self.tracked[chardev].label, chardev
                break
        event = wa.WatchEvent(
            id=len(self.events) + 1, kind=wa.CRASH,
            reason=f"the process got {signal_name} in LWP {_lwp(thread)} while watched",
            label=label, address=address, lwp=_lwp(thread),
            thread=thread.num if thread else None, thread_name=thread.name if thread else None,
            signal=signal_name, time=time.time(), stack=[f.to_json() for f in stack])
        self.counters.errors += 1
        self._write_core(event)
        self._record(event)

    # --- the loop -------------------------------------------------------------------------

    def run(self, duration=None, control_fd=None):
        """Resume the process and watch until Ctrl-C, the duration, the control fd, its exit,
        another stop, or (with --stop) the first error.  Returns the reason it ended."""
        self.reason = None
        self.at_scene = False
        self.keep_armed = False
        stops = []

        def on_stop(event):
            stops.append(event)

        def on_exit(event):
            stops.append(event)

        saved = _quiet_signals()
        notifications = _set_parameter("suppress-cli-notifications", "on")
        gdb.events.stop.connect(on_stop)
        gdb.events.exited.connect(on_exit)
        self.running = True
        self.ran = True
        self.interrupter = _Interrupter(self.pid, duration, control_fd)
        self.interrupter.start()
        retries = 0
        try:
            while self.reason is None:
                del stops[:]
                try:
                    gdb.execute("continue")
                except KeyboardInterrupt:
                    self.reason = "interrupted (Ctrl-C)"
                    break
                except gdb.error as exc:
                    if retries < 8 and self._drop_unplaceable(str(exc)):
                        retries += 1
                        continue
                    self.reason = f"cannot resume the process: {exc}"
                    break
                self.reason = self._after_stop(stops)
        finally:
            self.interrupter.stop()
            self.running = False
            gdb.events.stop.disconnect(on_stop)
            gdb.events.exited.disconnect(on_exit)
            _restore_signals(saved)
            _set_parameter("suppress-cli-notifications", notifications)
        self.interrupt_pending = self.interrupter.sent and not self.interrupter.seen
        if self.exited is not None or gdb.selected_inferior().pid == 0:
            self.disarm()
        elif self.at_scene or self.keep_armed:
            where = "stopped at the scene" if self.at_scene else f"paused ({self.reason})"
            self.say(f"{watch_render.PREFIX}: {where}; the watch is still armed: "
                     "'qemu watch-disconnect' resumes it, 'qemu watch-disconnect --off' "
                     "disarms it")
            try:
                gdb.execute("frame", to_string=False)
            except gdb.error:
                pass
        else:
            self.disarm()
        self.write_summary()
        return self.reason

    def _after_stop(self, stops):
        """Process a stop; None to keep going, else why the watch ends."""
        for event in stops:
            if isinstance(event, gdb.ExitedEvent):
                code = getattr(event, "exit_code", None)
                self.exited = code
                return ("the process exited" +
                        (f" with status {code}" if code is not None else ""))
        errors = self.housekeeping()
        if self.stop_on_error and errors:
            self.at_scene = True
            return f"stopped at error [{errors[0].id}] (--stop)"
        for event in stops:
            if isinstance(event, gdb.SignalEvent):
                name = event.stop_signal
                if name == "SIGINT":
                    if self.interrupter.sent:
                        self.interrupter.seen = True
                        return self.interrupter.why
                    return "interrupted (SIGINT)"
                if name in ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGILL", "SIGFPE"):
                    self.crash_event(name)
                    self.at_scene = True
                    return f"the process crashed ({name})"
                self.keep_armed = True
                return f"the process got {name}"
            if isinstance(event, gdb.BreakpointEvent) and not _ours(self, event):
                self.keep_armed = True
                return "stopped at a breakpoint that is not ours"
        if not stops:
            return "the process stopped"
        if not any(isinstance(s, gdb.BreakpointEvent) for s in stops):
            self.keep_armed = True
            return "the process stopped"
        return None

    def _drop_unplaceable(self, message):
        """gdb could not insert our hardware watchpoints (registers used elsewhere): move the
        most recently covered chardev to the fallback breakpoint and retry."""
        if "hardware" not in message.lower():
            return False
        for address in reversed(self.order):
            tracked = self.tracked[address]
            if tracked.covered:
                self._unwatch(tracked)
                self.max_registers = max(0, self.max_registers - 1)
                self.say(f"{watch_render.PREFIX}: gdb could not insert a hardware watchpoint "
                         f"({message.strip().splitlines()[0]}); chardev {tracked.label!r} "
                         f"moves to the breakpoint on {FALLBACK_FUNCTION}")
                self._update_fallback()
                return True
        return False

    # --- outside the loop ----------------------------------------------------------------

    def _connect_handlers(self):
        """Keep the session sane between runs: housekeeping after a manual `continue`, and
        disarming once the process is gone or gdb exits.  (gdb also reports a detach as an
        exit event; nothing is deleted from inside that event, only at the next prompt.)"""
        def on_stop(_event):
            # Outside `run()` (after --arm-only or --stop, the user typed `continue`): our
            # rare-path breakpoints stop for real; do their work now, while stopped, and say
            # why gdb stopped.  (gdb has finished with the stop's breakpoints at this point.)
            if self.running or not self.armed:
                return
            if self.pending_new or self.pending_finalize or self.pending_errors:
                self.guarded(self._idle_housekeeping)

        def on_exit(event):
            if not self.running:
                self.exited = getattr(event, "exit_code", None)
                self.gone = True

        def before_prompt():
            if self.running or not self.armed:
                return
            if self.gone or gdb.selected_inferior().pid == 0:
                self.reason = self.reason or "the process is gone"
                self.disarm()
                self.say(f"{watch_render.PREFIX}: the process is gone: watch disarmed")

        def on_gdb_exit(_event):
            self.disarm()

        registries = [(gdb.events.stop, on_stop), (gdb.events.exited, on_exit),
                      (gdb.events.before_prompt, before_prompt)]
        if hasattr(gdb.events, "gdb_exiting"):
            registries.append((gdb.events.gdb_exiting, on_gdb_exit))
        for registry, handler in registries:
            registry.connect(handler)
            self._handlers.append((registry, handler))

    def _idle_housekeeping(self):
        what = [f"{len(self.pending_new)} new chardev(s)"] if self.pending_new else []
        if self.pending_finalize:
            what.append(f"{len(self.pending_finalize)} finalized chardev(s)")
        errors = self.housekeeping()
        if errors:
            what.append(f"error [{errors[0].id}]")
        self.say(f"{watch_render.PREFIX}: stopped for {' and '.join(what)} while armed "
                 "outside the watch loop; 'qemu watch-disconnect' resumes watching")
        return False

    def _disconnect_handlers(self):
        for registry, handler in self._handlers:
            try:
                registry.disconnect(handler)
            except (RuntimeError, ValueError):
                pass
        self._handlers = []

    def summary(self):
        return {
            "reason": self.reason, "at_scene": self.at_scene, "armed": self.armed,
            "pid": self.pid, "exit_status": self.exited,
            "errors": self.counters.errors, "warnings": self.counters.warnings,
            "counters": self.counters.to_json(), "coverage": [
                {**row, "address": f"0x{row['address']:x}"}
                for row in (self.coverage() if self.armed else self.final_coverage)],
            "fields": self.fields, "max_debug_registers": self.max_registers,
            "json_log": self.json_log_path, "notes": self.notes,
            "internal_errors": self.internal_errors,
            "interrupt_pending": self.interrupt_pending,
            "stop_calls": self.stop_calls, "stop_seconds": round(self.stop_seconds, 6),
            "events": [e.to_json() for e in self.events],
        }

    def write_summary(self):
        if not self.summary_path:
            return
        tmp = self.summary_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(to_json_text(self.summary()))
        os.replace(tmp, self.summary_path)


def _ours(session, event):
    mine = set(session.function_breaks.values())
    for tracked in session.tracked.values():
        mine.update(tracked.watches)
    return all(bp in mine for bp in event.breakpoints)


def _delete(bp):
    try:
        if bp.is_valid():
            bp.delete()
    except (gdb.error, RuntimeError):
        pass


def _set_parameter(name, value):
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


def _quiet_signals():
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


def _restore_signals(saved):
    for name, stop, show, passed in saved:
        words = ["stop" if stop else "nostop", "print" if show else "noprint",
                 "pass" if passed else "nopass"]
        if stop:           # gdb: "stop" implies "print"
            words[1] = "print"
        try:
            gdb.execute(f"handle {name} {' '.join(words)}", to_string=True)
        except gdb.error:
            pass


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



def finish(detach=True, stay_at_scene=False):
    """End of a scripted watch: disarm, consume our SIGINT if still queued, detach.

    With ``stay_at_scene`` and a session stopped at an error, nothing happens (the user gets
    the gdb prompt at the scene).  A process the script started whose watch never ran
    (arming failed) is killed rather than left running unwatched.  Returns a one-line
    description of what was done.
    """
    session = _session or _last_session
    if session is not None and session.at_scene and stay_at_scene and session.armed:
        return "left at the scene: 'qemu watch-disconnect --off' disarms, 'detach' lets it go"
    inferior = gdb.selected_inferior()
    if session is not None:
        session.disarm()
    if inferior.pid == 0:
        return "the process is gone"
    pid = inferior.pid
    if (session is None or not session.ran) and not getattr(inferior, "was_attached", True):
        gdb.execute("kill", to_string=True)
        return f"the watch did not start: killed process {pid}, which this script started"
    if sigint_pending(pid):
        # Our interrupt is still queued: let it arrive here (gdb does not pass SIGINT on)
        # instead of reaching QEMU after the detach.
        notifications = _set_parameter("suppress-cli-notifications", "on")
        try:
            gdb.execute("continue", to_string=True)
        except (gdb.error, KeyboardInterrupt):
            pass
        _set_parameter("suppress-cli-notifications", notifications)
    if detach and gdb.selected_inferior().pid:
        gdb.execute("detach", to_string=True)
        return f"detached from process {pid}; it keeps running"
    return "still attached"


def quit_unless_at_scene(interactive):
    """For the script's interactive gdb: quit, unless the user is to be left at the scene."""
    session = _session
    if interactive and not (session is not None and session.at_scene and session.armed):
        gdb.execute("quit")
