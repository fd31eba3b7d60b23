"""Small process utilities: /proc inspection, polling, and killing what we started."""

import atexit
import os
import resource
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

# Every subprocess.Popen started by the harness is registered here, so that an interrupted
# session (Ctrl-C, a crash in a fixture) still kills them when the interpreter exits.
_LIVE: set = set()


def register(proc: subprocess.Popen) -> subprocess.Popen:
    """Remember PROC so that kill_all_registered() (run at exit) can kill it."""
    _LIVE.add(proc)
    return proc


def kill_and_reap(proc: subprocess.Popen, timeout: float = 10.0) -> Optional[int]:
    """SIGKILL PROC's process group (PROC leads it: start_new_session=True) and reap PROC.

    Returns the exit status, or None when PROC could not be reaped within TIMEOUT (for
    example while a debugger that has not let go of it is still alive).
    """
    if proc.poll() is None:
        for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL),
                     lambda: os.kill(proc.pid, signal.SIGKILL)):
            try:
                kill()
                break
            except (ProcessLookupError, PermissionError):
                continue
    try:
        status = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    _LIVE.discard(proc)
    return status


@atexit.register
def kill_all_registered() -> None:
    """Kill and reap every process the harness started and did not reap yet."""
    for proc in list(_LIVE):
        kill_and_reap(proc, timeout=5)


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.02,
               what: str = "condition") -> T:
    """Poll PREDICATE until it returns a truthy value, and return that value.

    Raises TimeoutError naming WHAT after TIMEOUT seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def proc_status(pid: int) -> dict:
    """Fields of /proc/PID/status as a dict of strings ({} if the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def tracer_pid(pid: int) -> int:
    """The pid of the process ptrace-attached to PID (0 if none or if PID is gone)."""
    return int(proc_status(pid).get("TracerPid", "0"))


def is_trace_stopped(pid: int) -> bool:
    """True while PID's main thread is in a ptrace stop (State "t"), e.g. at a breakpoint."""
    return proc_status(pid).get("State", "").startswith("t")


def process_exists(pid: int) -> bool:
    """True if PID exists and is not a zombie."""
    state = proc_status(pid).get("State", "")
    return bool(state) and not state.startswith(("Z", "X"))


def listening_tcp_ports(pid: int) -> list:
    """TCP ports (IPv4 and IPv6) on which process PID has a listening socket, sorted."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                ports.add(int(local.rpartition(":")[2], 16))
    return sorted(ports)


def tail(text: str, lines: int = 30) -> str:
    """The last LINES lines of TEXT."""
    return "\n".join(text.splitlines()[-lines:])


def kernel_cores_possible() -> str:
    """'' if the kernel can write a core file here, else why not."""
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|"):
        return f"kernel.core_pattern is a pipe: {pattern}"
    if resource.getrlimit(resource.RLIMIT_CORE)[1] != resource.RLIM_INFINITY:
        return "hard RLIMIT_CORE is limited"
    return ""
