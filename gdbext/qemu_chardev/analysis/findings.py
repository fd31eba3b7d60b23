"""Pure analysis: findings about chardev locks and channels from a ``DiagnosisInput``.

A finding provider is a function ``provider(facts) -> [Finding]``.  ``diagnose`` runs the
built-in providers and merges ``facts.extra_findings`` (conclusions that readers drew from memory,
such as a GSource census).  Nothing here imports gdb.

Built-in finding ids (each defined once, with its title, in ``model.vocabulary``):
  ioc-null-during-write  error    a thread crashed or stopped writing through a NULL channel
  deadlock               error    threads wait on each other's mutexes (or on one they hold)
  write-lock-held        info     who holds a chr_write_lock and where; warning when the owner
                                  is not in the write path (or waits, or is gone)
those of ``analysis.lifecycle`` (use-after-free of each object kind, and the catch-all
chardev-crash for a crash in chardev code that nothing else explains), and
known-upstream-bug from ``analysis.upstream`` (a crash that matches a catalogued bug).
"""
from qemu_chardev.analysis import lifecycle, locks, upstream
from qemu_chardev.model import vocabulary as ids
from qemu_chardev.model.diagnosis import SEVERITIES, Finding, chardev_label
from qemu_chardev.model.qemu import (DISCONNECT_FUNCTIONS, EVENT_FUNCTIONS,
                                     LOCKED_DISCONNECT_FUNCTIONS, WRITE_ENTRY,
                                     WRITE_PATH_FUNCTIONS, display_location, in_write_path,
                                     is_channel_write)
from qemu_chardev.model.objects import ptr

UPSTREAM_LOCK_FIX = ('"char-socket: Lock tcp_chr_disconnect() and socket_reconnect_timeout()" '
                     "(QEMU 4.2, commit 78d01598ae)")
CHARDEV_TYPES = ("Chardev", "SocketChardev")


# --- ioc-null-during-write ---------------------------------------------------------------

def _chardev_of_writer(facts, thread):
    """(chardev or None, address or None) that ``thread`` is writing to."""
    candidates = []
    for frame in thread.frames:
        for _name, ptype, value in frame.pointers or ():
            if ptype in CHARDEV_TYPES and value:
                weight = 0 if frame.function == WRITE_ENTRY else \
                    1 if frame.function in WRITE_PATH_FUNCTIONS else 2
                candidates.append((weight, frame.level, value))
    for _w, _l, address in sorted(candidates):
        chardev = facts.chardev_at(address)
        if chardev is not None:
            return chardev, address
    for chardev in facts.chardevs:
        lock = chardev.write_lock
        if lock is not None and lock.locked and lock.owner_lwp == thread.lwp:
            return chardev, chardev.address
    if candidates:
        return None, sorted(candidates)[0][2]
    return None, None


def _path_text(thread, crashed):
    """'tcp_chr_write (chardev/char-socket.c:170) -> io_channel_send_full(ioc=NULL) -> ...'."""
    frames = list(thread.frames)
    outer = max((i for i, f in enumerate(frames) if in_write_path(f.function)), default=None)
    if outer is None:
        return ""
    shown = frames[:outer + 1]
    if not crashed:
        inner = min(i for i, f in enumerate(frames) if in_write_path(f.function))
        shown = frames[inner:outer + 1]
    parts = []
    for frame in reversed(shown):
        text = frame.function or "??"
        ioc = frame.pointer("ioc") if is_channel_write(frame.function) else None
        if is_channel_write(frame.function) and ioc is not None:
            text += "(ioc=NULL)" if ioc == 0 else f"(ioc=0x{ioc:x})"
        if frame.file:
            text += f" at {display_location(frame)}"
        parts.append(text)
    return " -> ".join(parts)


def _disconnect_chain(thread):
    """'tcp_chr_hup -> tcp_chr_disconnect -> tcp_chr_disconnect_locked at FILE:LINE'."""
    indexes = [i for i, f in enumerate(thread.frames) if f.function in DISCONNECT_FUNCTIONS]
    inner, outer = min(indexes), max(indexes)
    shown = thread.frames[inner:min(outer + 2, len(thread.frames))]
    text = " -> ".join(f.function or "??" for f in reversed(shown))
    location = display_location(thread.frames[inner])
    return text + (f" at {location}" if location else "")


def _locking_sentence(locking):
    if locking is None or locking.takes_lock is None:
        why = f" ({locking.evidence})" if locking is not None and locking.evidence else ""
        return ("Whether this binary's tcp_chr_disconnect() takes chr_write_lock could not be "
                f"determined{why}.")
    if locking.takes_lock:
        return ("This binary's tcp_chr_disconnect() does take chr_write_lock "
                f"({locking.evidence}): the upstream fix is present, so s->ioc was cleared by "
                "a path that still runs without the lock (e.g. tcp_chr_free_connection() "
                "called from char_socket_finalize(), or a QEMU-specific change).")
    return ("This binary's tcp_chr_disconnect() does NOT take chr_write_lock "
            f"({locking.evidence}): the fix is missing (QEMU older than 4.2, or reverted).")


def ioc_null_during_write(facts):
    """A thread crashed or stopped in tcp_chr_write / qio_channel_writev* / io_channel_send*
    of a socket chardev whose ``ioc`` is NULL (or with a NULL channel argument)."""
    out = []
    crash = facts.crashed()
    for thread in facts.threads:
        path = [f for f in thread.frames if in_write_path(f.function)]
        if not path:
            continue
        chardev, address = _chardev_of_writer(facts, thread)
        null_argument = any(is_channel_write(f.function) and f.pointer("ioc") == 0
                            for f in path)
        past_state_check = any(is_channel_write(f.function) for f in path)
        crashed = crash is not None and crash.lwp == thread.lwp
        ioc_null = chardev is not None and chardev.is_socket and not chardev.ioc
        if not (null_argument or (ioc_null and (crashed or past_state_check
                                                or chardev.state == "connected"))):
            continue
        out.append(_ioc_null_finding(facts, thread, chardev, address, crash if crashed
                                     else None, null_argument))
    return out


def _ioc_null_finding(facts, thread, chardev, address, crash, null_argument):
    label = chardev_label(chardev) or (f"0x{address:x}" if address else "unknown chardev")
    lock = chardev.write_lock if chardev is not None else None
    owner_lwp = lock.owner_lwp if lock is not None and lock.locked else None
    writer = facts.short_who(thread.lwp)
    if crash is not None:
        what = f"crashed with {crash.signal_name}"
        if crash.fault_address is not None:
            what += f" at address 0x{crash.fault_address:x}"
    else:
        what = "is stopped"
    summary = (f"chardev '{label}': {writer} {what} in the socket write path with a NULL "
               "channel (ioc=NULL)")
    lines = [f"{writer} {what} in the socket chardev write path: "
             f"{_path_text(thread, crash is not None)}."]
    if chardev is not None:
        lines.append(f"Chardev '{label}' (0x{chardev.address:x}, {chardev.type}) now has "
                     f"state={chardev.state or '?'}, ioc={ptr(chardev.ioc) or 'NULL'}, "
                     f"sioc={ptr(chardev.sioc) or 'NULL'}.")
    if null_argument:
        lines.append("The channel argument of the write is NULL: s->ioc was read after it "
                     "had been cleared.")
    if lock is None or lock.locked is None:
        lines.append("Who holds its chr_write_lock could not be read.")
    elif not lock.locked:
        lines.append("Its chr_write_lock is free although a write is in progress "
                     "(qemu_chr_write_buffer() takes it in every QEMU version).")
    elif owner_lwp == thread.lwp:
        where = f", taken at {lock.locker} (debug-mutex)" if lock.locker else ""
        lines.append(f"The writer holds chr_write_lock: owner {writer}{where}.")
    else:
        lines.append(f"chr_write_lock is held by {facts.who(owner_lwp)}, not by the writer.")
    lines.append("A NULL ioc under a writer that holds chr_write_lock is the signature of a "
                 "disconnect that did not take chr_write_lock: the chardev's read or hang-up "
                 "handler (tcp_chr_read() / tcp_chr_hup(), run in the chardev's I/O context, "
                 "e.g. the monitor I/O thread) saw the peer hang up and called "
                 "tcp_chr_disconnect() -> tcp_chr_free_connection(), which set s->ioc = NULL "
                 "and state = disconnected while this thread was between the state check and "
                 "the write in tcp_chr_write().")
    for other in facts.threads:
        if other.lwp == thread.lwp or not other.has_function(DISCONNECT_FUNCTIONS):
            continue
        chain = _disconnect_chain(other)
        holds = lock is not None and lock.locked and lock.owner_lwp == other.lwp
        lines.append(f"{facts.short_who(other.lwp)} is in the disconnect path now ({chain})"
                     + (" and holds chr_write_lock." if holds
                        else " without holding chr_write_lock."))
    lines.append(f"Upstream fix: {UPSTREAM_LOCK_FIX}.")
    locking = facts.disconnect_locking
    lines.append(_locking_sentence(locking))
    if locking is not None and locking.takes_lock:
        fix = ("Find the caller that clears s->ioc without chr_write_lock: every path into "
               "tcp_chr_free_connection() must hold the chardev's chr_write_lock.")
    else:
        fix = (f"Use QEMU 4.2 or later, or backport {UPSTREAM_LOCK_FIX}: "
               "tcp_chr_disconnect() must take chr_write_lock around "
               "tcp_chr_disconnect_locked().")
    evidence = {
        "chardev_address": ptr(chardev.address if chardev else address),
        "state": chardev.state if chardev else None,
        "ioc": ptr(chardev.ioc) if chardev else None,
        "writer_lwp": thread.lwp, "writer_thread": thread.num,
        "lock_owner_lwp": owner_lwp,
        "lock_owner_thread": facts.thread(owner_lwp).num
        if owner_lwp and facts.thread(owner_lwp) else None,
        "crashed": crash is not None, "ioc_argument_null": null_argument,
        "write_path": [f.function for f in thread.frames if in_write_path(f.function)],
        "disconnect_takes_lock": locking.takes_lock if locking else None,
    }
    return Finding(ids.IOC_NULL_DURING_WRITE, "error", summary, " ".join(lines), fix,
                   chardev=chardev_label(chardev), lwp=thread.lwp, thread=thread.num,
                   evidence=evidence)


# --- deadlock ------------------------------------------------------------------------------

def _mutex_name(facts, mutex):
    chardev = facts.chardev_of_lock(mutex)
    if chardev is not None:
        return f"chr_write_lock of '{chardev_label(chardev)}' (0x{mutex:x})"
    symbol = facts.mutex_symbols.get(mutex)
    return f"mutex {symbol} (0x{mutex:x})" if symbol else f"mutex 0x{mutex:x}"


def deadlock(facts):
    """Cycles in the wait-for graph, including a thread waiting for a lock it holds."""
    waiting_on = {t.lwp: t.waiting_on for t in facts.threads if t.waiting_on}
    out = []
    for cycle in locks.find_lock_cycles(waiting_on, facts.owner_of):
        first_lwp, first_mutex = cycle[0]
        chardev = next((facts.chardev_of_lock(m) for _l, m in cycle
                        if facts.chardev_of_lock(m) is not None), None)
        thread = facts.thread(first_lwp)
        if len(cycle) == 1:
            out.append(_self_deadlock(facts, thread or first_lwp, first_mutex, chardev))
            continue
        steps = []
        for i, (lwp, mutex) in enumerate(cycle):
            holder = cycle[(i + 1) % len(cycle)][0]
            waiter = facts.thread(lwp)
            steps.append(f"{waiter.describe(skip_locking=True) if waiter else facts.who(lwp)} "
                         f"waits for {_mutex_name(facts, mutex)}, "
                         f"held by {facts.short_who(holder)}")
        summary = ("deadlock: " + ", ".join(facts.short_who(lwp) for lwp, _m in cycle)
                   + " wait on each other's mutexes")
        if chardev is not None:
            summary = f"chardev '{chardev_label(chardev)}': " + summary
        out.append(Finding(
            ids.DEADLOCK, "error", summary,
            "; ".join(steps) + ". None of these threads can continue.",
            "Take these mutexes in one global order, or drop one before taking the other.",
            chardev=chardev_label(chardev), lwp=first_lwp, thread=thread.num if thread else None,
            evidence={"cycle": locks.cycle_json(cycle)}))
    return out


def _self_deadlock(facts, thread, mutex, chardev):
    lwp = thread if isinstance(thread, int) else thread.lwp
    num = None if isinstance(thread, int) else thread.num
    name = _mutex_name(facts, mutex)
    who = thread.describe(skip_locking=True) if not isinstance(thread, int) \
        else facts.who(lwp)
    detail = [f"{who} waits in qemu_mutex_lock_impl() for {name}, which it already holds "
              "(the mutex's __owner is its own LWP)."]
    fix = "Do not take a non-recursive QemuMutex again while holding it."
    if chardev is not None:
        detail.append("chr_write_lock is not recursive, so this thread can never continue, "
                      f"and every later writer of '{chardev_label(chardev)}' blocks behind it.")
        if not isinstance(thread, int) and (thread.has_function(EVENT_FUNCTIONS)
                                            or thread.has_function({"tcp_chr_disconnect_locked"})):
            detail.append("Its stack goes through tcp_chr_disconnect_locked() / "
                          "qemu_chr_be_event(): since QEMU 4.2 the disconnect raises "
                          "CHR_EVENT_CLOSED with chr_write_lock held, and the frontend's "
                          "event handler wrote to the same chardev.")
        fix = ("The frontend must not write to the chardev synchronously from its "
               "CHR_EVENT_CLOSED handler (defer the write to a bottom half or the main "
               "loop), or char-socket must raise CHR_EVENT_CLOSED after dropping "
               "chr_write_lock.")
    summary = f"self-deadlock: {facts.short_who(lwp)} waits for {name}, which it holds"
    if chardev is not None:
        summary = f"chardev '{chardev_label(chardev)}': " + summary
    return Finding(ids.DEADLOCK, "error", summary, " ".join(detail), fix,
                   chardev=chardev_label(chardev), lwp=lwp, thread=num,
                   evidence={"cycle": [{"lwp": lwp, "mutex": ptr(mutex)}],
                             "self_deadlock": True})


# --- write-lock-held -----------------------------------------------------------------------

def _lock_context(owner):
    """(in a chr_write_lock critical section?, the frame that explains where)."""
    for frame in owner.frames:
        if frame.function in WRITE_PATH_FUNCTIONS or is_channel_write(frame.function):
            return "write", frame
        if frame.function in LOCKED_DISCONNECT_FUNCTIONS:
            return "disconnect", frame
    return None, owner.innermost_qemu_frame()


def write_lock_held(facts):
    """Who holds which chr_write_lock and where: info in the write path (or the locked
    disconnect), warning elsewhere, when the owner waits for another lock, or is gone."""
    out = []
    for chardev in facts.chardevs:
        lock = chardev.write_lock
        if lock is None or not lock.locked or lock.destroyed:
            continue
        label = chardev_label(chardev)
        waiters = [t for t in facts.threads
                   if t.waiting_on is not None and t.waiting_on == lock.address
                   and t.lwp != lock.owner_lwp]
        owner = facts.thread(lock.owner_lwp) if lock.owner_lwp else None
        detail = []
        where_taken = f" It was taken at {lock.locker} (debug-mutex)." if lock.locker else ""
        if owner is None:
            severity = "warning"
            if lock.owner_lwp:
                summary = (f"chardev '{label}': chr_write_lock held by LWP {lock.owner_lwp}, "
                           "which is not a thread of this process")
                detail.append("The owner exited (or was killed) while holding the lock, or "
                              "the mutex is corrupt: nobody will ever release it.")
            else:
                summary = f"chardev '{label}': chr_write_lock held, owner not recorded"
                detail.append("The mutex is locked but glibc recorded no owner (lock "
                              "elision, or a corrupt mutex).")
            fix = "Find who took chr_write_lock without releasing it."
        else:
            context, frame = _lock_context(owner)
            summary = f"chardev '{label}': chr_write_lock held by {owner.describe()}"
            if owner.waiting_on is not None and owner.waiting_on != lock.address:
                severity = "warning"
                detail.append(f"The owner is itself blocked waiting for "
                              f"{_mutex_name(facts, owner.waiting_on)} while holding it.")
                fix = ("Do not wait for another mutex while holding chr_write_lock.")
            elif context == "write":
                severity = "info"
                detail.append(f"The owner is in the chardev write path ({frame.function}).")
                fix = None
            elif context == "disconnect":
                severity = "info"
                detail.append(f"The owner is in {frame.function}(), which holds "
                              "chr_write_lock by design since QEMU 4.2.")
                fix = None
            else:
                severity = "warning"
                detail.append("The owner is not in the chardev write path (nor in the locked "
                              "disconnect): the lock is held somewhere unexpected, and every "
                              "writer of this chardev waits for it.")
                fix = "Release chr_write_lock before leaving the write path."
        if where_taken:
            detail.append(where_taken.strip())
        if waiters:
            summary += f"; {len(waiters)} thread(s) waiting"
            detail.append("Waiting for it: "
                          + "; ".join(t.describe(skip_locking=True) for t in waiters) + ".")
        out.append(Finding(
            ids.WRITE_LOCK_HELD, severity, summary, " ".join(detail), fix, chardev=label,
            lwp=lock.owner_lwp, thread=owner.num if owner else None,
            evidence={"mutex": ptr(lock.address), "owner_lwp": lock.owner_lwp,
                      "locker": lock.locker, "waiters": [t.lwp for t in waiters]}))
    return out


# --- running the rules ---------------------------------------------------------------------

DEFAULT_PROVIDERS = (ioc_null_during_write, deadlock, write_lock_held,
                     lifecycle.use_after_free, upstream.known_upstream_bugs)


def severity_rank(severity):
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def sort_findings(findings):
    """Errors first, then warnings, then infos; otherwise in the order found."""
    return sorted(findings, key=lambda f: severity_rank(f.severity))


def diagnose(facts, providers=None, problems=None):
    """All findings for ``facts``: the providers' (default: the built-in rules) and
    ``facts.extra_findings``, errors first.  A provider that fails adds a line to
    ``problems`` (if given) instead of hiding the others' findings."""
    chosen = list(DEFAULT_PROVIDERS if providers is None else providers)
    found = []
    for provider in chosen:
        try:
            found.extend(provider(facts) or [])
        except Exception as exc:  # a broken rule must not hide the other findings
            if problems is None:
                raise
            problems.append(f"finding rule {getattr(provider, '__name__', provider)} failed: "
                            f"{type(exc).__name__}: {exc}")
    found.extend(facts.extra_findings)
    if providers is None:
        found.extend(lifecycle.chardev_crash(facts, found))   # only when nothing else explains
    for finding in found:
        lifecycle.name_objects(finding, facts)
    return sort_findings(found)
