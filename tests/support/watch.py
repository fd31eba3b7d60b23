"""Helpers for `qemu watch-disconnect` / scripts/catch-disconnect-during-write tests and benches.

    with CatcherRun(["--pid", str(pid)], json_log=path) as run:   # the script, in background
        run.wait_watching()
        counts = hangup_loop(monitor_path, at_once=40, mid_burst=10)
        run.interrupt()                 # like Ctrl-C: disarm and detach
    run.returncode, run.summary, run.events()

Ground truth that does not use the extension: QEMU's own trace events (10.x has
chr_socket_disconnect / chr_socket_poll_err; `disconnect_trace_counts`) and plain gdb
(`dprintf_teardowns`: a dprintf on tcp_chr_free_connection, `iothread_lwp`).
"""

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from . import procs
from .paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "catch-disconnect-during-write"
CHR_TRACE = "chr_socket_*"
EVENT_SCHEMA_PATH = REPO_ROOT / "docs" / "event-log-schema.json"
CACHE = Path(os.environ.get("QEMU_CHARDEV_GDB_CACHE",
                            Path.home() / ".cache" / "qemu-chardev-gdb"))


# --- the event log's schema, the modes of what the watch writes ------------------------------

@functools.lru_cache(maxsize=None)
def event_schema() -> dict:
    return json.loads(EVENT_SCHEMA_PATH.read_text())


def validate_events(events=(), summary=None) -> None:
    """Raise jsonschema.ValidationError unless every event (a --json-log line) and SUMMARY
    (--summary-json) follow docs/event-log-schema.json."""
    import jsonschema

    def validator(definition=None):
        schema = dict(event_schema())
        if definition:
            schema.pop("oneOf")
            schema["$ref"] = f"#/$defs/{definition}"
        return jsonschema.Draft202012Validator(schema)

    for event in events:
        validator("event").validate(event)
        validator().validate(event)
    if summary is not None:
        validator("summary").validate(summary)
        validator().validate(summary)


def file_mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def loose_umask(mask: int = 0o022):
    """This test process (and what it starts) under a usual user umask: files 0644."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# --- gdbs that cannot run the extension -------------------------------------------------------

def gdb_minimal() -> Optional[Path]:
    """Debian's gdb-minimal (a real gdb built without Python), unpacked from its package into
    the cache: never installed, since the package replaces /usr/bin/gdb.  None when the
    package cannot be had (no apt, no network)."""
    target = CACHE / "gdb-minimal" / "usr" / "bin" / "gdb"
    if target.exists():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None
    work = Path(tempfile.mkdtemp(prefix="qcg-gdb-minimal-"))
    try:
        debs = sorted(Path("/var/cache/apt/archives").glob("gdb-minimal_*.deb"))
        if not debs:
            subprocess.run(["apt-get", "download", "gdb-minimal"], cwd=work, timeout=300,
                           capture_output=True)
            debs = sorted(work.glob("gdb-minimal_*.deb"))
        if not debs:
            return None
        unpacked = work / "root"
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)], check=True,
                       timeout=300, capture_output=True)
        (CACHE / "gdb-minimal").parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(CACHE / "gdb-minimal", ignore_errors=True)
        shutil.move(str(unpacked), str(CACHE / "gdb-minimal"))
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target if target.exists() else None


def old_gdb_stub(directory, version: str = "12.1") -> Path:
    """A STUB of a too-old gdb: the real gdb, told by -iex that it is VERSION (no gdb older
    than Debian 12's 13.1 is installable here).  It checks the message and exit path, not a
    real old gdb."""
    path = Path(directory) / "gdb-old"
    real = shutil.which("gdb")
    path.write_text(f"#!/bin/sh\nexec {real} -iex \"python gdb.VERSION = '{version}'\" "
                    "\"$@\"\n")
    path.chmod(0o755)
    return path


# --- QMP clients that hang up ------------------------------------------------------------------

@dataclass
class HangupCounts:
    at_once: int = 0        # connected, read the greeting, hung up
    mid_burst: int = 0      # negotiated, sent a burst of commands, hung up mid-responses
    refused: int = 0        # could not connect (the daemon died)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.at_once + self.mid_burst


def _connect(path, timeout=10.0):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def _read_line(sock) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def hangup_once(path, burst: int = 0) -> None:
    """One QMP client on unix socket PATH: greeting, then hang up at once (BURST 0), or
    negotiate, send BURST query-version commands, read part of the answers and hang up.

    A connection closed or reset before the greeting was never served (the kernel took it into
    the listen backlog; QEMU died before accepting it): ConnectionRefusedError, as QEMU never
    had a connection to tear down."""
    with _connect(path) as sock:
        try:
            greeting = _read_line(sock)
        except ConnectionResetError:
            greeting = b""
        if not greeting:
            raise ConnectionRefusedError(f"{path}: closed before the QMP greeting")
        if burst:
            sock.sendall(b'{"execute": "qmp_capabilities"}\n')
            _read_line(sock)
            sock.sendall(b'{"execute": "query-version"}\n' * burst)
            sock.recv(256)


def hangup_loop(path, at_once: int, mid_burst: int, burst: int = 50,
                pause: float = 0.005, time_limit: float = 120.0) -> HangupCounts:
    """AT_ONCE + MID_BURST hang-ups, interleaved (every k-th one mid-burst); stops early when
    the daemon refuses connections or TIME_LIMIT passes."""
    counts = HangupCounts()
    total = at_once + mid_burst
    started = time.monotonic()
    for i in range(total):
        mid = mid_burst and (i * mid_burst) // total != ((i + 1) * mid_burst) // total
        try:
            hangup_once(path, burst if mid else 0)
        except (ConnectionRefusedError, FileNotFoundError):
            counts.refused += 1
            break
        except (ConnectionResetError, BrokenPipeError, socket.timeout):
            pass          # the hang-up happened anyway
        if mid:
            counts.mid_burst += 1
        else:
            counts.at_once += 1
        if time.monotonic() - started > time_limit:
            break
        time.sleep(pause)
    counts.seconds = time.monotonic() - started
    return counts


def qmp_round_trips(path, connections: int, commands: int,
                    command: bytes = b'{"execute": "query-version"}\n') -> dict:
    """Throughput workload: CONNECTIONS clients in turn, each negotiating and doing COMMANDS
    request/response round trips, then hanging up. Returns {"commands", "seconds", "per_s"}."""
    started = time.monotonic()
    done = 0
    for _ in range(connections):
        with _connect(path) as sock:
            reader = sock.makefile("rb")
            reader.readline()
            sock.sendall(b'{"execute": "qmp_capabilities"}\n')
            reader.readline()
            for _ in range(commands):
                sock.sendall(command)
                line = reader.readline()
                if not line.startswith(b'{"return"'):
                    raise RuntimeError(f"unexpected QMP answer {line[:80]!r}")
                done += 1
            reader.close()
    seconds = time.monotonic() - started
    return {"commands": done, "seconds": seconds, "per_s": done / seconds}


def qmp_answers(path, timeout: float = 10.0) -> bool:
    """True if the QMP monitor on PATH greets, negotiates and answers query-version."""
    try:
        with _connect(path, timeout) as sock:
            reader = sock.makefile("rb")
            if b"QMP" not in reader.readline():
                return False
            sock.sendall(b'{"execute": "qmp_capabilities"}\n')
            reader.readline()
            sock.sendall(b'{"execute": "query-version"}\n')
            return b'"qemu"' in reader.readline()
    except OSError:
        return False


# --- the catcher script ----------------------------------------------------------------------

class CatcherRun:
    """scripts/catch-disconnect-during-write running in the background (own session).

    stdout/stderr go to files; the summary (--summary-json) is read after exit.
    Leaving the context sends SIGINT (the script's Ctrl-C path) if it still runs.
    CWD is where a launched program runs: QEMU's test-char creates "test-char.sock" in its
    current directory, so two test-char runs sharing one directory disturb each other.
    """

    def __init__(self, args: Sequence[str], json_log=None, workdir=None,
                 env: Optional[dict] = None, cwd=None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="qcg-catch-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.json_log = Path(json_log) if json_log else self.workdir / "events.jsonl"
        self.summary_path = self.workdir / "summary.json"
        self.stdout_path = self.workdir / "catch.out"
        self.stderr_path = self.workdir / "catch.err"
        self.argv = [str(SCRIPT), "--json-log", str(self.json_log),
                     "--summary-json", str(self.summary_path), *map(str, args)]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = procs.register(subprocess.Popen(
                self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                start_new_session=True, env={**os.environ, "NO_COLOR": "1", **(env or {})}))
        self.returncode = None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_watching(self, timeout: float = 60.0) -> None:
        """Until the watch runs (its coverage table printed), or RuntimeError."""
        def ready():
            if "qemu watch-disconnect: watching" in self.stdout():
                return True
            if self.proc.poll() is not None:
                raise RuntimeError(f"the catcher exited {self.proc.returncode} before "
                                   f"watching:\n{self.describe()}")
            return False
        procs.wait_until(ready, timeout, interval=0.05, what="the catcher to start watching")
        time.sleep(0.3)       # from the table being printed to `continue`

    def interrupt(self, timeout: float = 60.0) -> int:
        """SIGINT (Ctrl-C) and wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def wait(self, timeout: float = 120.0) -> int:
        self.returncode = self.proc.wait(timeout=timeout)
        procs.kill_and_reap(self.proc)
        return self.returncode

    @property
    def summary(self) -> dict:
        return json.loads(self.summary_path.read_text())

    def events(self) -> list:
        if not self.json_log.exists():
            return []
        return [json.loads(line) for line in self.json_log.read_text().splitlines() if line]

    def describe(self) -> str:
        return (f"argv: {self.argv}\nexit: {self.proc.poll()}\n--- stdout ---\n"
                f"{procs.tail(self.stdout(), 60)}\n--- stderr ---\n{procs.tail(self.stderr())}")

    def __enter__(self) -> "CatcherRun":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            try:
                self.interrupt(60)
            except subprocess.TimeoutExpired:
                procs.kill_and_reap(self.proc)


# --- ground truth ------------------------------------------------------------------------

def disconnect_trace_counts(stderr_text: str, label: str) -> dict:
    """From QEMU's chr_socket_* trace events (QEMU 9.x+): {"disconnects", "locked"}.

    Every tcp_chr_disconnect_locked() call traces chr_socket_disconnect; the one made by
    tcp_chr_write() on a write error, with chr_write_lock held, is preceded by
    chr_socket_poll_err.  The others come through tcp_chr_disconnect(), which takes the lock
    only in a fixed QEMU.
    """
    suffix = f"({label})"
    lines = [line for line in stderr_text.splitlines() if line.rstrip().endswith(suffix)]
    disconnects = sum(1 for line in lines if re.search(r"\bchr_socket_disconnect\b", line))
    locked = sum(1 for line in lines if re.search(r"\bchr_socket_poll_err\b", line))
    return {"disconnects": disconnects, "locked": locked}


def iothread_lwp(binary, pid: int) -> int:
    """The LWP of the thread running iothread_run (plain gdb, no extension)."""
    from .gdb import run_gdb
    result = run_gdb(binary, pid=pid, commands=["thread apply all bt"], extension=False)
    text = result.outputs[0] or ""
    current = None
    for line in text.splitlines():
        m = re.match(r"Thread \d+ \(Thread 0x[0-9a-f]+ \(LWP (\d+)\)", line)
        if m:
            current = int(m.group(1))
        elif "iothread_run" in line and current is not None:
            return current
    raise RuntimeError(f"no iothread_run thread in:\n{text}")


FREE_RE = re.compile(r"^QCG-FREE (\S+) state=(-?\d+) owner=(-?\d+) fin=(\d) thread=(\d+)$",
                     re.M)


def dprintf_teardowns(binary, pid: int, workload, timeout: float = 300.0) -> dict:
    """Count teardowns in a run of WORKLOAD() under plain gdb with a dprintf on
    tcp_chr_free_connection (no extension involved).

    Returns {label: {"teardowns", "unlocked", "locked", "finalize"}}: a teardown is a call
    on a connected chardev (or one with a channel); it is unlocked when chr_write_lock's
    owner is not the calling thread (thread numbers mapped to LWPs by `info threads`).
    """
    from .gdb import GdbProcess
    fmt = ('"QCG-FREE %s state=%d owner=%d fin=%d thread=%d\\n", chr->label, '
           '(int)((SocketChardev *)chr)->state, chr->chr_write_lock.lock.__data.__owner, '
           '$_any_caller_is("char_socket_finalize", 8), $_thread')
    gdb = GdbProcess(binary, pid=pid, extension=False,
                     setup=["handle SIGPIPE nostop noprint pass",
                            f"dprintf tcp_chr_free_connection,{fmt}"],
                     commands=["continue", "info threads", "delete", "detach"])
    try:
        cont_key = next(key for key, command in gdb.keyed if command == "continue")
        gdb.wait_for_marker(cont_key, "BEGIN", timeout=60.0)
        procs.wait_until(lambda: not procs.is_trace_stopped(pid), 30.0, what="gdb to resume")
        workload()
        time.sleep(0.5)
        os.kill(pid, signal.SIGINT)          # gdb stops on SIGINT and does not pass it on
        result = gdb.finish(timeout)
    finally:
        gdb.kill()
    lwps = {int(num): int(lwp) for num, lwp in
            re.findall(r"^\*?\s+(\d+)\s+Thread 0x[0-9a-f]+ \(LWP (\d+)\)", result.outputs[1] or "",
                       re.M)}
    out = {}
    for label, state, ioc_owner, fin, thread in FREE_RE.findall(result.stdout):
        label = label.strip('"')
        row = out.setdefault(label, {"teardowns": 0, "unlocked": 0, "locked": 0, "finalize": 0})
        if int(state) != 2:
            continue
        row["teardowns"] += 1
        if int(fin):
            row["finalize"] += 1
        elif int(ioc_owner) and int(ioc_owner) == lwps.get(int(thread)):
            row["locked"] += 1
        else:
            row["unlocked"] += 1
    return out
