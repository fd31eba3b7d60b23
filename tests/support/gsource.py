"""GSource census helpers: the gsource-heap C fixture and QEMU reconnect churn with traces.

Ground truth comes from outside the extension: the fixture prints the address and state of
every GSource it made; QEMU prints `qio_task_thread_source_attach task=0x... source=0x...`
trace events for every completion source it attaches.
"""

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set

from . import daemon as qsd
from . import procs
from .builds import binary_version
from .gdb import gcore
from .paths import REPO_ROOT

FIXTURE_SOURCE = REPO_ROOT / "fixtures" / "c" / "gsource-heap.c"
ATTACH_TRACE = "qio_task_thread_source_attach"
_ATTACH_RE = re.compile(ATTACH_TRACE + r"\b.*\btask=(0x[0-9a-f]+)\b.*\bsource=(0x[0-9a-f]+)")


def build_gsource_heap(out_dir) -> Path:
    """Compile fixtures/c/gsource-heap.c into OUT_DIR (gcc + pkg-config glib-2.0)."""
    out = Path(out_dir) / "gsource-heap"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "glib-2.0"], check=True,
                           capture_output=True, text=True, timeout=60).stdout.split()
    subprocess.run(["gcc", "-O1", "-g", "-Wall", "-o", str(out), str(FIXTURE_SOURCE), *flags],
                   check=True, timeout=120, capture_output=True)
    return out


@dataclass
class HeapFixture:
    """A running gsource-heap and what it printed: {state: [address]}."""
    proc: subprocess.Popen
    binary: Path
    objects: Dict[str, List[int]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def addresses(self, state: str) -> Set[int]:
        return set(self.objects.get(state, []))

    def stop(self) -> None:
        procs.kill_and_reap(self.proc)


def start_gsource_heap(binary, *args: str, timeout: float = 120.0) -> HeapFixture:
    """Run the fixture with ARGS; return once it printed READY (its objects parsed)."""
    proc = procs.register(subprocess.Popen([str(binary), *args], stdout=subprocess.PIPE,
                                           stdin=subprocess.DEVNULL, text=True,
                                           start_new_session=True))
    fixture = HeapFixture(proc, Path(binary))
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        word, _, rest = line.strip().partition(" ")
        if word == "READY":
            return fixture
        if rest.startswith("0x"):
            fixture.objects.setdefault(word, []).append(int(rest, 16))
        if time.monotonic() > deadline:
            break
    fixture.stop()
    raise RuntimeError(f"gsource-heap {args} did not become ready")


def attach_events(stderr_text: str) -> List[tuple]:
    """[(task, source)] of every qio_task_thread_source_attach event in a daemon's stderr."""
    return [(int(m.group(1), 16), int(m.group(2), 16))
            for m in map(_ATTACH_RE.search, stderr_text.splitlines()) if m]


def reconnect_churn_args(workdir, binary) -> list:
    """Trace events first (options are processed in order: the first connect is traced
    too), then a socket client chardev "cli0" reconnecting every second to a missing path."""
    return (qsd.trace_args(ATTACH_TRACE)
            + qsd.reconnecting_client_args(Path(workdir) / "missing.sock",
                                           binary_version(Path(binary))))


def wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Wait until every thread of PID is in a stop state (after SIGSTOP)."""
    def stopped():
        for task in Path(f"/proc/{pid}/task").iterdir():
            state = procs.proc_status(int(task.name)).get("State", "")
            if not state.startswith(("T", "t")):
                return False
        return True
    procs.wait_until(stopped, timeout, what=f"pid {pid} to stop")


@dataclass
class ChurnCore:
    """A core of a daemon that churned reconnects, and the attach events before it."""
    core: Path
    binary: Path
    events: List[tuple]

    @property
    def traced_sources(self) -> Set[int]:
        return {source for _task, source in self.events}


def reconnect_churn_core(binary, workdir, seconds: float = 6.0,
                         min_events: int = 4) -> ChurnCore:
    """Run the reconnect churn for SECONDS, freeze the daemon (SIGSTOP) so that its stderr
    and its memory describe the same moment, read the trace events, then gcore and kill it."""
    workdir = Path(workdir)
    with qsd.QemuDaemon(binary, reconnect_churn_args(workdir, binary), workdir) as daemon:
        daemon.wait_for_stderr(qsd.trace_event_re(ATTACH_TRACE), count=min_events,
                               timeout=seconds + 10.0)
        remaining = seconds - 1.0 * min_events
        if remaining > 0:
            time.sleep(remaining)
        os.kill(daemon.pid, signal.SIGSTOP)
        wait_stopped(daemon.pid)
        events = attach_events(daemon.stderr_text())
        core = gcore(daemon.pid, workdir / "churn.core", binary=binary)
    return ChurnCore(core, Path(binary), events)


def find_finding(findings: list, fid: str, severity: Optional[str] = None) -> list:
    """Findings with id FID (and SEVERITY if given)."""
    return [f for f in findings if f["id"] == fid and (severity is None or
                                                       f["severity"] == severity)]
