"""Known upstream QEMU chardev bugs: does this crash match one, and what was checked.

Each signature is a list of named checks over the diagnosis facts (the crash, its assertion,
the crashing thread's frames, the chardevs and the liveness of the objects the frames hold).
A bug is named only when every check holds; the finding lists each check with what it saw, so a
reader can tell a match from a guess.  The catalogue itself (fix titles, releases, which Debian
QEMU has the bug) is ``model.upstream``.  No gdb imports.
"""
from qemu_chardev.model import vocabulary
from qemu_chardev.model.diagnosis import SIGABRT, SIGSEGV, Finding
from qemu_chardev.model.liveness import CHANNEL, CHARDEV
from qemu_chardev.model.upstream import CATALOGUE

UPSTREAM_BUG = vocabulary.KNOWN_UPSTREAM_BUG


class Check:
    """One named condition of a signature and what it saw."""

    def __init__(self, what, ok, saw):
        self.what, self.ok, self.saw = what, bool(ok), saw

    def to_json(self):
        return {"check": self.what, "ok": self.ok, "saw": self.saw}


def _functions(facts):
    thread = facts.crash_thread()
    return [f.function or "?" for f in thread.frames] if thread is not None else []


def _signal(facts, signo):
    crash = facts.crashed()
    saw = crash.signal_name if crash is not None else "no crash"
    return Check(f"the process died of signal {signo}", crash is not None and crash.signal == signo,
                 saw)


def _frames(facts, *names):
    functions = _functions(facts)
    missing = [n for n in names if n not in functions]
    return Check("the crashing thread runs " + " <- ".join(names), not missing,
                 "missing: " + ", ".join(missing) if missing else "all on its stack")


def _assertion(facts, expression, function=None):
    assertion = facts.assertion or {}
    saw = (f"`{assertion.get('expression')}` in {assertion.get('function')}()"
           if assertion else "no assertion message")
    ok = bool(assertion) and expression in (assertion.get("expression") or "") and \
        (function is None or assertion.get("function") == function)
    return Check(f"the failed assertion is `{expression}`"
                 + (f" in {function}()" if function else ""), ok, saw)


def _held_dead(facts, kind):
    """The first dead object of ``kind`` that the crashing thread holds (or None)."""
    crash = facts.crashed()
    if crash is None:
        return None
    return next((o for o in facts.objects if o.kind == kind and o.dead and
                 o.held_by(crash.lwp)), None)


def _dead(facts, kind, what):
    obj = _held_dead(facts, kind)
    return Check(f"the {what} its frames hold is finalized or freed", obj is not None,
                 f"{obj.describe()} {obj.verdict}" if obj is not None else
                 f"no dead {kind} on the crashing thread's stack")


def _crash_chardev(facts):
    """The live chardev (from the report's list) a crashing frame points at, or None."""
    thread = facts.crash_thread()
    for frame in thread.frames if thread is not None else []:
        for _name, pointee, value in frame.pointers or ():
            chardev = facts.chardev_at(value) if pointee in ("Chardev", "SocketChardev") \
                else None
            if chardev is not None and chardev.type:
                return chardev
    return None


def _chardev_field(facts, name, predicate, wording):
    chardev = _crash_chardev(facts)
    value = chardev.fields.get(name) if chardev is not None else None
    return Check(f"the crashing chardev's {name} {wording}",
                 chardev is not None and predicate(value),
                 f"{name}={value}" if chardev is not None else "no chardev on the stack")


def _stale_channel(facts):
    """The dead channel the crashing frames hold is no chardev's current ioc or sioc."""
    channel = _held_dead(facts, CHANNEL)
    current = {c.ioc for c in facts.chardevs} | {c.sioc for c in facts.chardevs}
    ok = channel is not None and channel.address not in current
    return Check("the dead QIOChannel is no chardev's current ioc/sioc (a stale watch)", ok,
                 "no dead channel" if channel is None else
                 f"0x{channel.address:x} is " + ("not" if ok else "still") +
                 " a chardev's ioc/sioc")


SIGNATURES = {
    "websock-handshake-uaf": lambda f: [
        _signal(f, SIGABRT), _assertion(f, "mutex->initialized", "qemu_mutex_lock_impl"),
        _frames(f, "tcp_chr_disconnect", "tcp_chr_websock_handshake"),
        _dead(f, CHARDEV, "chardev")],
    "iowatch-ioc-uaf": lambda f: [
        _signal(f, SIGSEGV), _frames(f, "qio_channel_create_watch", "io_watch_poll_prepare"),
        _dead(f, CHANNEL, "QIOChannel"), _stale_channel(f)],
    "qmp-listener-race": lambda f: [
        _signal(f, SIGABRT), _assertion(f, "TCP_CHARDEV_STATE_DISCONNECTED"),
        _frames(f, "tcp_chr_accept", "qio_net_listener_channel_func"),
        _chardev_field(f, "state", lambda v: v not in (None, "disconnected"),
                       "is no longer disconnected (another thread accepted a client)")],
    "connect-task-ref": lambda f: [
        _signal(f, SIGABRT),
        _frames(f, "yank_unregister_function", "tcp_chr_free_connection",
                "char_socket_finalize"),
        _chardev_field(f, "connect_task", lambda v: v not in (None, "n/a", "NULL", 0),
                       "is still set (its connect task is pending)")],
    "connect-error-double-free": lambda f: [
        _signal(f, SIGSEGV), _frames(f, "error_free", "qemu_chr_socket_connected"),
        _chardev_field(f, "connect_err_reported", lambda v: v in (True, 1, "true"),
                       "is set (the error was reported, and freed, already)")],
    "reconnect-timer": lambda f: [
        _signal(f, SIGABRT),
        _assertion(f, "!s->reconnect_timer", "qemu_chr_socket_restart_timer"),
        _frames(f, "qemu_chr_socket_restart_timer", "tcp_chr_disconnect_locked")],
}


def known_upstream_bugs(facts):
    """An error finding for each catalogued bug whose every check holds."""
    out = []
    for bug in CATALOGUE:
        checks = SIGNATURES[bug.id](facts)
        if not all(c.ok for c in checks):
            continue
        crash = facts.crashed()
        chardev = _crash_chardev(facts)
        detail = (f"{bug.symptom} Checked: " + "; ".join(f"{c.what} ({c.saw})" for c in checks)
                  + f". {bug.debian_text()}")
        if facts.qemu_version:
            detail += f" This binary says it is QEMU {facts.qemu_version}."
        out.append(Finding(
            UPSTREAM_BUG, "error",
            f"matches known upstream bug {bug.id}: {bug.short}, fixed in QEMU "
            f"{bug.fixed_in_text}",
            detail, f'upstream fix "{bug.fix_title}" (QEMU {bug.fixed_in_text}'
            + (f", commit {bug.commit}" if bug.commit else "") + ")",
            chardev=chardev.label if chardev is not None else None,
            lwp=crash.lwp, thread=crash.thread,
            evidence={"bug": bug.id, "fix": bug.fix_title, "fixed_in": bug.fixed_in,
                      "commit": bug.commit, "checks": [c.to_json() for c in checks]}))
    return out
