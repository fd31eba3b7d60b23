"""The x86-64 debug registers of every thread of a process, read with ptrace (no gdb).

    debug_registers(pid)  ->  {tid: {"dr0".."dr3", "dr6", "dr7"}}
    armed_debug_registers(pid) -> {tid: dr7} for the threads whose DR7 enables any slot

Each thread is attached with PTRACE_SEIZE, stopped with PTRACE_INTERRUPT, read with
PTRACE_PEEKUSER (offsetof(struct user, u_debugreg) is 848 on x86-64) and detached: no signal
is sent and nothing is written; a thread in a job-control stop stays stopped.  The process
must not be traced by anyone else (PermissionError/OSError otherwise).
"""

import ctypes
import errno
import os
import platform

PTRACE_PEEKUSER = 3
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000
U_DEBUGREG = 848            # offsetof(struct user, u_debugreg) on x86-64
DR7_ENABLE_BITS = 0xFF      # L0/G0 .. L3/G3

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def _ptrace(request, tid, addr=0, data=0):
    ctypes.set_errno(0)
    value = _libc.ptrace(request, tid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    err = ctypes.get_errno()
    if value == -1 and err:
        raise OSError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")
    return value


def _read_thread(tid: int) -> dict:
    _ptrace(PTRACE_SEIZE, tid)
    try:
        _ptrace(PTRACE_INTERRUPT, tid)
        while True:
            try:
                os.waitpid(tid, WALL)
                break
            except InterruptedError:
                continue
        regs = {}
        for n in (0, 1, 2, 3, 6, 7):
            regs[f"dr{n}"] = _ptrace(PTRACE_PEEKUSER, tid, U_DEBUGREG + 8 * n) & (2 ** 64 - 1)
        return regs
    finally:
        try:
            _ptrace(PTRACE_DETACH, tid)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise


def debug_registers(pid: int) -> dict:
    """{tid: {"dr0", "dr1", "dr2", "dr3", "dr6", "dr7"}} of every thread of PID."""
    if platform.machine() != "x86_64":
        raise OSError(errno.ENOSYS, "debug registers are read on x86-64 only")
    out = {}
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        try:
            out[tid] = _read_thread(tid)
        except OSError as exc:
            if exc.errno == errno.ESRCH:      # the thread exited meanwhile
                continue
            raise
    return out


def armed_debug_registers(pid: int) -> dict:
    """{tid: dr7} for each thread of PID with a debug register enabled in DR7."""
    return {tid: regs["dr7"] for tid, regs in debug_registers(pid).items()
            if regs["dr7"] & DR7_ENABLE_BITS}
