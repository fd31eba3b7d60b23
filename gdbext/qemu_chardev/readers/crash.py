"""Reading the crash: which signal, which thread got it, and that thread's frames.

The signal comes from ``$_siginfo`` of each thread when gdb can read it (kernel cores carry
it for the thread that dumped, gcore for every thread, a live process for every stopped
thread), else from the core's ``$_exitsignal`` (prstatus) for the thread gdb selected.
Only crash signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS) make a crash: a gcore
snapshot carries SIGSTOP and a process stopped at a breakpoint SIGTRAP, which are reported
as the stop signal, not as a crash.
"""
import os

import gdb

from qemu_chardev.model import glib, glibc
from qemu_chardev.model.diagnosis import (FAULT_SIGNALS, SIGABRT, CrashFacts, frame_json,
                                          is_crash_signal, si_code_name)
from qemu_chardev.model.errors import TargetReadError
from qemu_chardev.model.qemu import ABORT_FUNCTIONS
from qemu_chardev.target import memory as target

SOURCE_FILE_LIMIT = 8 << 20
_source_cache = {}


def _siginfo():
    """(signo, code, fault address or None) of the selected thread, or None."""
    try:
        info = gdb.parse_and_eval("$_siginfo")
        if info.type.strip_typedefs().code != gdb.TYPE_CODE_STRUCT:
            return None
        signo = int(info["si_signo"])
        code = int(info["si_code"])
        address = None
        if signo in FAULT_SIGNALS:
            address = int(info["_sifields"]["_sigfault"]["si_addr"])
    except (gdb.error, gdb.MemoryError, RuntimeError, ValueError):
        return None
    return (signo, code, address) if signo > 0 else None


def _exit_signal():
    try:
        value = gdb.parse_and_eval("$_exitsignal")
        if value.type.strip_typedefs().code == gdb.TYPE_CODE_VOID:
            return None
        return int(value) or None
    except (gdb.error, RuntimeError, ValueError):
        return None


def read_signals(snap):
    """(crash, stop): CrashFacts of the crash (or None) and of a non-crash stop signal."""
    threads = snap.threads()
    selected = gdb.selected_thread()
    order = sorted(threads.items(), key=lambda item: (
        selected is None or item[1].ptid != selected.ptid, item[1].num))
    crash = stop = None
    with snap.switching_threads():
        for lwp, thread in order:
            if not thread.is_valid():
                continue
            thread.switch()
            info = _siginfo()
            if info is None:
                continue
            signo, code, address = info
            facts = CrashFacts(signal=signo, lwp=lwp, thread=thread.num, code=code,
                               fault_address=address)
            if is_crash_signal(signo):
                crash = facts
                break
            if stop is None:
                stop = facts
    if crash is None:
        signo = _exit_signal()
        if signo is not None and is_crash_signal(signo) and selected is not None:
            lwp = selected.ptid[1] or selected.ptid[2]
            crash = CrashFacts(signal=signo, lwp=lwp, thread=selected.num,
                               source="exitsignal")
            snap.note("no siginfo in the core: the crash signal comes from the core's "
                      "process status and the crashing thread is the one gdb selected")
    return crash, stop


def _read_source_line(fullname, line):
    if not fullname or not line:
        return None
    lines = _source_cache.get(fullname)
    if lines is None:
        try:
            if os.path.getsize(fullname) > SOURCE_FILE_LIMIT:
                lines = []
            else:
                with open(fullname, encoding="utf-8", errors="replace") as handle:
                    lines = handle.read().splitlines()
        except OSError:
            lines = []
        _source_cache[fullname] = lines
    if 0 < line <= len(lines):
        return lines[line - 1].rstrip()
    return None


def source_lines(frames):
    """{frame level: source text of the frame's line} (read from the files on disk)."""
    return {f.level: _read_source_line(f.fullname, f.line)
            for f in frames if f.fullname and f.line}


def crash_json(snap, crash, assertion=None):
    """The report's ``crash`` object: signal, code, address, thread, the failed assertion
    (``read_assertion``) and annotated frames."""
    if crash is None:
        return None
    frames = snap.stack(crash.lwp)
    sources = source_lines(frames)
    return {
        "signal": crash.signal, "signal_name": crash.signal_name,
        "code": crash.code, "code_name": si_code_name(crash.signal, crash.code),
        "fault_address": None if crash.fault_address is None
        else f"0x{crash.fault_address:x}",
        "lwp": crash.lwp, "thread": crash.thread, "signal_source": crash.source,
        "assertion": assertion,
        "frames": [frame_json(f, sources.get(f.level)) for f in frames],
    }


def read_assertion(snap, crash):
    """The failed assertion behind a SIGABRT, or None: {source, text, program, file, line,
    function, expression, frame}.  glibc's ``__abort_msg`` (assert) and GLib's
    ``__glib_assert_msg`` (g_assert) hold the message; ``frame`` is the level of the newest
    frame below the abort machinery (the code that asserted)."""
    if crash is None or crash.signal != SIGABRT:
        return None
    for symbol, parse, deref_offset in (
            (glibc.ABORT_MSG_SYMBOL, glibc.parse_assert_message, glibc.ABORT_MSG_TEXT_OFFSET),
            (glib.GLIB_ASSERT_MSG_SYMBOL, glib.parse_glib_assert_message, 0)):
        address = target.symbol_address(symbol)
        if not address:
            continue
        try:
            message = snap.mem.pointer(address, symbol)
            text = snap.mem.cstring(message + deref_offset, glibc.ABORT_MSG_LIMIT, symbol) \
                if message else None
        except TargetReadError as exc:
            snap.note(f"assertion message ({symbol}): {exc}")
            continue
        parsed = parse(text) if text else None
        if parsed is None:
            continue
        out = {"source": symbol, "text": text.strip(), "program": parsed.get("program"),
               "file": parsed["file"], "line": parsed["line"],
               "function": parsed.get("function"), "expression": parsed.get("expression"),
               "frame": None}
        frames = snap.stack(crash.lwp)
        asserting = next((f for f in frames if f.function not in ABORT_FUNCTIONS and
                          f.is_qemu), None)
        if asserting is not None:
            out["frame"] = asserting.level
        return out
    return None


def stop_json(stop):
    if stop is None:
        return None
    return {"signal": stop.signal, "signal_name": stop.signal_name, "lwp": stop.lwp,
            "thread": stop.thread}
