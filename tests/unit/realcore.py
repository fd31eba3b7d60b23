"""A real core file for the unit tests: gdb's ``gcore`` of a ``sleep`` this module starts.

The facts to check it against are read from /proc while the process runs: its threads, its
executable, its mappings and its auxiliary vector.  Tests using it are skipped (with the
reason) when gdb is missing or may not attach.
"""
import os
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass

import pytest

AT_PHDR, AT_ENTRY = 3, 9


@dataclass
class RealCore:
    path: object             # pathlib.Path of the core
    pid: int
    tasks: list              # sorted LWPs from /proc/PID/task
    executable: str          # realpath of /proc/PID/exe
    maps: list               # (start, end, path) of /proc/PID/maps lines naming a file
    auxv: dict               # {AT_*: value} from /proc/PID/auxv


def _wait_until_asleep(pid, binary, timeout=10.0):
    """Until PID runs ``binary`` and sleeps (its start-up, which maps locale files, is over)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
            if os.path.realpath(f"/proc/{pid}/exe") == binary and state == "S":
                return
        except OSError:
            pass
        time.sleep(0.01)
    pytest.fail(f"pid {pid} did not start {binary} and sleep")


def _maps(pid):
    out = []
    with open(f"/proc/{pid}/maps") as handle:
        for line in handle:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                out.append((start, end, parts[5].strip()))
    return out


def _auxv(pid):
    with open(f"/proc/{pid}/auxv", "rb") as handle:
        raw = handle.read()
    pairs = struct.iter_unpack("<QQ", raw[:len(raw) // 16 * 16])
    return {key: value for key, value in pairs if key}


def gcore_of_sleep(directory):
    """A RealCore of a ``sleep 100`` started here, or a pytest skip saying why there is none.
    The sleep is killed before this returns (the /proc facts were read while it ran)."""
    gdb = shutil.which("gdb")
    sleep = shutil.which("sleep")
    if not gdb or not sleep:
        pytest.skip("no real core: gdb or sleep is not installed")
    sleep = os.path.realpath(sleep)
    proc = subprocess.Popen([sleep, "100"], stdin=subprocess.DEVNULL)
    try:
        _wait_until_asleep(proc.pid, sleep)
        pid = proc.pid
        path = directory / "sleep.core"
        result = subprocess.run([gdb, "-nx", "-batch", "-p", str(pid), "-ex", f"gcore {path}"],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=120)
        if not path.is_file() or path.stat().st_size == 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"no real core: gdb could not gcore pid {pid} (ptrace not "
                        f"permitted?): {last}")
        # still asleep where gdb left it: the same threads and mappings as in the core
        tasks = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        return RealCore(path, pid, tasks, sleep, _maps(pid), _auxv(pid))
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def sleep_core(tmp_path_factory):
    return gcore_of_sleep(tmp_path_factory.mktemp("realcore"))
