"""How a qemu-storage-daemon is doing, as facts for a test's output rather than preconditions.

    facts = daemon_health(daemon, monitor_socket)
    facts["alive"], facts["signal"], facts["qmp_answers"], facts["left_behind"], ...

A daemon with a QEMU bug may crash or wedge by itself; what a debugger left in it (an int3 in
its code, a debug register, a tracer) is told apart: a SIGTRAP death or a non-empty
``left_behind`` is the debugger's doing, a SIGABRT or SIGSEGV is QEMU's own.
"""

import os
import signal
from pathlib import Path

from . import debugregs, memdump, procs
from . import watch as sw


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def left_behind(pid: int) -> list:
    """What a debugger left in live process PID: int3 bytes in its code, threads with a debug
    register enabled, a tracer.  [] when nothing."""
    found = []
    tracer = procs.tracer_pid(pid)
    if tracer:
        found.append(f"traced by {tracer}")
        return found
    for address, mem, orig in memdump.text_left_behind(pid):
        found.append(f"code at {address:#x} is {mem:#04x}, the file has {orig:#04x}")
    try:
        for tid, dr7 in debugregs.armed_debug_registers(pid).items():
            found.append(f"LWP {tid} has DR7={dr7:#x}")
    except OSError as exc:
        found.append(f"debug registers not readable: {exc}")
    return found


def thread_waits(pid: int) -> dict:
    """{tid: (state letter, wchan)} of every thread of PID."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = (memdump.thread_states(pid).get(int(tid), "?"),
                             Path(f"/proc/{pid}/task/{tid}/wchan").read_text())
        except OSError:
            continue
    return out


def daemon_health(daemon, monitor_socket, qmp_timeout: float = 5.0) -> dict:
    """Facts about DAEMON (a support.QemuDaemon) now: alive, exit status and signal, whether
    the QMP monitor on MONITOR_SOCKET answers query-version, what a debugger left behind, and
    for a live daemon that does not answer, what each thread waits in."""
    facts = {"alive": daemon.alive(), "exit_status": None, "signal": None,
             "qmp_answers": False, "left_behind": [], "threads": None}
    if not facts["alive"]:
        status = daemon.proc.poll()
        facts["exit_status"] = status
        if status is not None and status < 0:
            facts["signal"] = _signal_name(-status)
        return facts
    facts["left_behind"] = left_behind(daemon.pid)
    facts["qmp_answers"] = sw.qmp_answers(monitor_socket, timeout=qmp_timeout)
    if not facts["qmp_answers"] and daemon.alive():
        facts["threads"] = thread_waits(daemon.pid)
    return facts


def describe(facts: dict) -> str:
    """One line for a test's output."""
    if not facts["alive"]:
        how = f"killed by {facts['signal']}" if facts["signal"] else \
            f"exited with status {facts['exit_status']}"
        return f"daemon dead ({how})"
    parts = ["daemon alive", "QMP answers" if facts["qmp_answers"] else "QMP does NOT answer"]
    if facts["left_behind"]:
        parts.append("left behind: " + "; ".join(facts["left_behind"]))
    if facts["threads"]:
        parts.append("threads: " + ", ".join(f"{tid} {st} {wchan}" for tid, (st, wchan)
                                             in sorted(facts["threads"].items())))
    return ", ".join(parts)
