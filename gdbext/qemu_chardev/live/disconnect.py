"""The disconnect watch: socket chardevs, their debug registers, and the stop() handlers.

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
set; chardevs are covered in order (the labels given, else by label) while registers last
(``analysis.watch.plan_watches``).

Decisions are taken in ``stop()``: the changing thread's LWP against the ``chr_write_lock``
owner (``mutex.read_mutex``), judged by ``analysis.watch.assess``.  ``stop()`` only reads memory
(one ``SocketChardev`` view, the mutex) and the current thread's frames.  A warning (no writer)
is recorded there with the current thread's stack and the process goes on.  For an error
(another thread holds the lock: a write in flight) ``stop()`` returns True: the writer's stack
needs a thread switch, which gdb does not allow inside ``stop()``, so it is queued on the
engine and done after the stop, as are arming new chardevs and disarming finalized ones (gdb
forbids changing breakpoints in ``stop()`` too).

Nothing here writes target memory or calls inferior functions.
"""
import time

import gdb

from qemu_chardev.analysis import watch as wa
from qemu_chardev.live.engine import NoHardwareWatchpoint, frame_int, thread_lwp
from qemu_chardev.model import qemu
from qemu_chardev.model.errors import QcgError, TargetReadError
from qemu_chardev.readers import qom
from qemu_chardev.readers.chardev import SOCKET_TYPE
from qemu_chardev.readers.qom import socket_layout
from qemu_chardev.readers.mutex import read_mutex
from qemu_chardev.target import memory as target
from qemu_chardev.target.snapshot import Snapshot, selected_thread_stack, walk_frames

CREATE_FUNCTION = "qmp_chardev_open_socket"
FINALIZE_FUNCTION = "char_socket_finalize"
FALLBACK_FUNCTION = "tcp_chr_free_connection"
FINALIZER_SCAN_DEPTH = 16
REF_FIELD = "parent.parent_obj.ref"
LOCK_INITIALIZED_FIELD = "parent.chr_write_lock.initialized"
# The problem an error event carries when its writer finished the write before being stopped.
WRITER_MOVED_ON = "writer stack taken after the write"
# Kinds of the work queued on the engine by stop().
NEW, FINALIZED, ERROR = "new", "finalized", "error"


def _current_function_names(depth=FINALIZER_SCAN_DEPTH):
    names = []
    try:
        for _level, frame in walk_frames(depth):
            names.append(frame.name())
    except gdb.error:
        pass
    return names


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


class DisconnectWatch:
    """Socket chardevs under watch on an engine; events go to a sink."""

    def __init__(self, engine, sink, labels=(), fields=wa.DEFAULT_FIELDS,
                 max_registers=wa.X86_DEBUG_REGISTERS):
        self.engine = engine
        self.sink = sink
        self.labels = list(labels)
        self.fields = list(fields)
        self.max_registers = max_registers
        self.tracked = {}                # address -> Tracked
        self.order = []                  # addresses, in priority order
        self.function_breaks = {}        # role -> StopPoint
        self.counters = wa.Counters()
        self.notes = []
        self.final_coverage = []
        self.pid = None
        self._fallback_announced = set()
        self.finalized_labels = {}       # address -> label of chardevs finalized while watched

    # --- arming ---------------------------------------------------------------------------

    def check(self):
        """Raise QcgError unless this gdb and process can be watched; read the layout."""
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

    def arm(self):
        """Breakpoints on the rare paths, watchpoints on the chardevs there are now."""
        found = self._existing_socket_chardevs()
        for role, function, handler in (
                ("create", CREATE_FUNCTION, self.on_create),
                ("finalize", FINALIZE_FUNCTION, self.on_finalize)):
            if target.symbol_address(function) is None:
                self.notes.append(f"no symbol {function}: chardevs "
                                  f"{'created' if role == 'create' else 'finalized'} "
                                  f"while watching are not followed")
                continue
            self.function_breaks[role] = self.engine.breakpoint(function, handler)
        for function, argument in wa.CHECKED_CALLBACKS.items():
            if target.symbol_address(function) is not None:
                self.function_breaks[f"callback {function}"] = self.engine.breakpoint(
                    function, self.on_callback, function, argument)
        for label, address in found:
            self._track(label, address)
        self._rebalance(announce=False)

    def disarm(self):
        """Delete every watchpoint and breakpoint; the coverage they gave is kept."""
        self.final_coverage = self.coverage()
        for tracked in self.tracked.values():
            self._unwatch(tracked)
        for point in self.function_breaks.values():
            self.engine.delete(point)
        self.function_breaks = {}

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
            rank = {label: i for i, label in enumerate(self.labels)}
            self.order.sort(key=lambda a: rank.get(self.tracked[a].label, len(rank)))
        self._refresh_last(tracked)
        return tracked

    def _forget(self, tracked):
        self._unwatch(tracked)
        self._fallback_announced.discard(tracked.address)
        if self.tracked.get(tracked.address) is tracked:
            del self.tracked[tracked.address]
            self.order.remove(tracked.address)

    def _refresh_last(self, tracked):
        snap = Snapshot()
        view = snap.mem.view(self.layout, tracked.address, "SocketChardev")
        for name in wa.WATCHABLE_FIELDS:
            tracked.last[name] = view.get(name)

    # --- the debug-register budget ---------------------------------------------------------

    @staticmethod
    def _user_registers():
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
                    self.sink.info(f"{created}{name}: watched in hardware "
                                   f"({', '.join(tracked.fields)})")
            elif announce and tracked.address not in self._fallback_announced:
                self._fallback_announced.add(tracked.address)
                self.sink.say(f"{created}{name}: no debug register left, covered by the "
                              f"breakpoint on {FALLBACK_FUNCTION} (a brief stop per "
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
                address, size = tracked.where[name]
                watches.append(self.engine.watchpoint(address, size, self.on_field_change,
                                                      tracked, name))
        except (NoHardwareWatchpoint, gdb.error, RuntimeError) as exc:
            for point in watches:
                self.engine.delete(point)
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
        for point in tracked.watches:
            self.engine.delete(point)
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
                    self.sink.say(note)
                return
            self.function_breaks["fallback"] = self.engine.breakpoint(FALLBACK_FUNCTION,
                                                                      self.on_fallback)
        elif not needed and have is not None:
            self.engine.delete(have)
            del self.function_breaks["fallback"]

    def drop_unplaceable(self, message):
        """gdb could not insert our hardware watchpoints (registers used elsewhere): move the
        most recently covered chardev to the fallback breakpoint.  True if one was moved."""
        if "hardware" not in message.lower():
            return False
        for address in reversed(self.order):
            tracked = self.tracked[address]
            if tracked.covered:
                self._unwatch(tracked)
                self.max_registers = max(0, self.max_registers - 1)
                self.sink.say(f"gdb could not insert a hardware watchpoint "
                              f"({message.strip().splitlines()[0]}); chardev {tracked.label!r} "
                              f"moves to the breakpoint on {FALLBACK_FUNCTION}")
                self._update_fallback()
                return True
        return False

    def coverage(self):
        rows = []
        for address in self.order:
            t = self.tracked[address]
            rows.append({"label": t.label, "address": t.address, "watched": list(t.fields),
                         "registers": t.registers, "fallback": not t.covered})
        return rows

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
        address = frame_int("chr")
        tracked = self.tracked.get(address)
        if tracked is None or tracked.covered or tracked.finalizing:
            return False
        snap = Snapshot()
        view = snap.mem.view(self.layout, tracked.address, "SocketChardev")
        return self._judge(snap, tracked, wa.TEARDOWN, None, None, view)

    def _judge(self, snap, tracked, field_name, old, new, view):
        thread = gdb.selected_thread()
        lwp = thread_lwp(thread)
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
            id=verdict.kind, seq=self.sink.new_id(),
            reason=verdict.reason, label=tracked.label, address=tracked.address,
            field_name=field_name, old=old, new=new, lwp=lwp,
            thread=thread.num if thread else None, thread_name=thread.name if thread else None,
            writer_lwp=verdict.writer_lwp, lock=lock.to_json(), time=time.time(),
            stack=[f.to_json() for f in selected_thread_stack()], problems=list(lock.problems))
        if field_name == wa.TEARDOWN:
            event.old = None
        if verdict.severity == "error":
            self.engine.queue(ERROR, self._complete_error, event)
            return True
        self.sink.record(event)
        return False

    def on_create(self):
        address = frame_int("chr")
        snap = Snapshot()
        label = snap.mem.cstring(snap.mem.pointer(address + self.label_offset, "label"), 256,
                                 "label")
        if not self._wanted(label):
            return False
        self.counters.created += 1
        self.engine.queue(NEW, self._created, label, address)
        return True

    def on_callback(self, function, argument):
        """A rare-path chardev callback is about to run: on a live chardev?"""
        address = frame_int(argument)
        snap = Snapshot()
        try:
            view = snap.mem.view(self.layout, address, "SocketChardev")
        except TargetReadError:
            return False
        reason = wa.callback_on_finalized(function, view.get(REF_FIELD),
                                          view.get(LOCK_INITIALIZED_FIELD))
        if reason is None:
            return False
        return self._lifecycle_error(wa.CALLBACK_ON_FINALIZED, reason, address)

    def on_finalize(self):
        address = frame_int("obj")
        snap = Snapshot()
        try:
            task = snap.mem.view(self.layout, address, "SocketChardev").get("connect_task")
        except TargetReadError:
            task = None
        reason = wa.finalized_with_pending_task(task)
        tracked = self.tracked.get(address)
        if tracked is not None:
            self.finalized_labels[address] = tracked.label
        if reason is not None:
            self._lifecycle_error(wa.FINALIZED_WITH_PENDING_TASK, reason, address)
        if tracked is None:
            return reason is not None
        tracked.finalizing = True
        self.counters.finalized += 1
        self.engine.queue(FINALIZED, self._finalized, tracked)
        # Its watchpoints must go before the memory is freed and reused.
        return tracked.covered

    # --- after a stop (the process is stopped; breakpoints may change) ---------------------

    def _finalized(self, tracked):
        self._forget(tracked)
        self._rebalance()

    def _created(self, label, address):
        stale = self.tracked.get(address)
        if stale is not None:            # memory reused without a finalize seen
            self._forget(stale)
        self._track(label, address)
        self._rebalance(new={address})

    def _lifecycle_error(self, kind, reason, address):
        """Record a lifecycle error seen in stop(): its stack now, the core after the stop."""
        thread = gdb.selected_thread()
        label = self.tracked[address].label if address in self.tracked else \
            self.finalized_labels.get(address)
        event = wa.WatchEvent(
            id=kind, seq=self.sink.new_id(), reason=reason, label=label, address=address,
            lwp=thread_lwp(thread), thread=thread.num if thread else None,
            thread_name=thread.name if thread else None, time=time.time(),
            stack=[f.to_json() for f in selected_thread_stack()])
        self.counters.errors += 1
        self.engine.queue(ERROR, self._complete_error, event)
        return True

    def _complete_error(self, event):
        """The writer's stack (a thread switch) and the core, then the report."""
        snap = Snapshot()
        if event.writer_lwp is not None:
            ref = snap.threads().get(event.writer_lwp)
            if ref is None:
                event.problems.append(f"writer LWP {event.writer_lwp} is not a thread of this "
                                      "process")
            else:
                event.writer_thread = ref.num
                event.writer_stack = [f.to_json() for f in snap.stack(event.writer_lwp)]
                self._check_writer(snap, event)
        self.sink.write_core(event, self.pid)
        self.sink.record(event)
        return event

    def _check_writer(self, snap, event):
        """The writer's stack is taken after the stop, its lock was read in stop(); gdb runs
        stop() while the other threads still run (all-stop on top of non-stop on Linux:
        'maint show target-non-stop' is "auto (currently on)", and it cannot be changed once
        attached), so the writer may have finished its write and released the lock before
        gdb stopped it (measured: 24 of 2472 errors on a reverted 10.2, the writer back in
        ppoll, the lock free).  The verdict stands (the lock was held by that thread when the
        teardown was seen); the event says that its writer stack is from after the write."""
        functions = [frame.get("function") or "" for frame in event.writer_stack]
        if any(name in qemu.WRITE_PATH_FUNCTIONS or name in qemu.LOCKED_DISCONNECT_FUNCTIONS
               or qemu.is_channel_write(name) for name in functions):
            return
        now = "unreadable"
        if event.address is not None:
            lock = read_mutex(snap, event.address + self.lock_offset, with_owner=False)
            now = (f"held by LWP {lock.owner_lwp}" if lock.locked else "free") \
                if lock.locked is not None else now
        event.problems.append(
            f"{WRITER_MOVED_ON}: LWP {event.writer_lwp} held chr_write_lock when the teardown "
            f"was seen, but gdb stops the other threads only after stop(): when stopped it was "
            f"in {functions[0] if functions else '?'}, not in a chardev write (chr_write_lock "
            f"now: {now}); its stack above is from after the write")

    def crash_event(self, signal_name):
        """Report the crash the process got while watched (the crashing thread selected)."""
        thread = gdb.selected_thread()
        stack = selected_thread_stack()
        label = address = None
        for frame in stack:
            chardev = frame.pointer("chr", "s")
            if chardev and chardev in self.tracked:
                label, address = self.tracked[chardev].label, chardev
                break
        event = wa.WatchEvent(
            id=wa.CRASH, seq=self.sink.new_id(),
            reason=f"the process got {signal_name} in LWP {thread_lwp(thread)} while watched",
            label=label, address=address, lwp=thread_lwp(thread),
            thread=thread.num if thread else None, thread_name=thread.name if thread else None,
            signal=signal_name, time=time.time(), stack=[f.to_json() for f in stack])
        self.counters.errors += 1
        self.sink.write_core(event, self.pid)
        self.sink.record(event)
        return event
