"""Run qemu-storage-daemon in a temporary directory, and build its chardev arguments."""

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from . import procs
from .builds import binary_version

READY_TIMEOUT = 30.0
NO_PIDFILE_GRACE = 0.5      # seconds a daemon without --pidfile must survive to count as up


class DaemonStartError(RuntimeError):
    """qemu-storage-daemon exited or did not become ready; the message has its stderr tail."""


class QemuDaemon:
    """Context manager running BINARY with ARGS (plus --pidfile) in WORKDIR.

    WORKDIR (created and later deleted if not given) is the place for unix sockets; stderr
    (where `--trace` output goes) is captured to WORKDIR/qsd-stderr.txt. Entering waits until
    the daemon has written its pid file, which qemu-storage-daemon does after creating all
    chardevs, monitors and exports. Leaving kills it with SIGKILL and reaps it.

        with QemuDaemon(build.storage_daemon, monitor_args(sock)) as qsd:
            print(qsd.pid, qsd.stderr_text())
    """

    def __init__(self, binary, args: Sequence[str] = (), workdir=None,
                 ready_timeout: float = READY_TIMEOUT):
        self.binary = Path(binary)
        self.args = [str(a) for a in args]
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="qcg-qsd-") if workdir is None else workdir)
        self.ready_timeout = ready_timeout
        self.pidfile = self.workdir / "qsd.pid"
        self.stderr_path = self.workdir / "qsd-stderr.txt"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def pid(self) -> int:
        """The daemon's pid (= the LWP of its main thread)."""
        return self.proc.pid

    @property
    def version(self) -> tuple:
        """The binary's version, e.g. (7, 2, 22)."""
        return binary_version(self.binary)

    def start(self) -> "QemuDaemon":
        """Start the daemon and wait until ready; DaemonStartError (daemon killed) if not."""
        argv = [str(self.binary), *self.args]
        if supports_pidfile(self.binary):
            argv += ["--pidfile", str(self.pidfile)]
        self._started_at = time.monotonic()
        with open(self.stderr_path, "wb") as err:
            self.proc = procs.register(subprocess.Popen(
                argv, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True))
        try:
            procs.wait_until(self._ready, self.ready_timeout, what=f"{self.binary.name} pid file")
        except (TimeoutError, DaemonStartError) as exc:
            self.stop()
            raise DaemonStartError(f"{exc}\nargv: {argv}\n--- stderr tail ---\n"
                                   f"{procs.tail(self.stderr_text())}") from None
        return self

    def _ready(self) -> bool:
        """True once the pid file holds our pid; DaemonStartError if the daemon exited.

        Daemons older than 6.0 have no --pidfile: they count as ready once every server
        socket named in the arguments exists (unix) or listens (TCP).
        """
        if self.proc.poll() is not None:
            raise DaemonStartError(f"{self.binary.name} exited with status {self.proc.returncode}")
        if not supports_pidfile(self.binary):
            # A daemon that rejects its arguments exits at once; give it that moment.
            return (time.monotonic() - self._started_at > NO_PIDFILE_GRACE
                    and self._server_sockets_ready())
        try:
            return self.pidfile.read_text().strip() == str(self.pid)
        except FileNotFoundError:
            return False

    def _server_sockets_ready(self) -> bool:
        specs = [a for a in self.args if "server=on" in a]
        for spec in specs:
            path = re.search(r"(?:^|,)path=([^,]+)", spec)
            if path and not Path(path.group(1)).is_socket():
                return False
        if any(re.search(r"(?:^|,)port=", spec) for spec in specs):
            return bool(procs.listening_tcp_ports(self.pid))
        return True

    def stderr_text(self) -> str:
        """Everything the daemon wrote to stderr (and stdout) so far."""
        return self.stderr_path.read_text(errors="replace")

    def wait_for_stderr(self, pattern: str, count: int = 1, timeout: float = 10.0) -> list:
        """Wait until regex PATTERN matched COUNT lines of stderr; return the matching lines."""
        regex = re.compile(pattern)

        def matches():
            found = [line for line in self.stderr_text().splitlines() if regex.search(line)]
            return found if len(found) >= count else None
        return procs.wait_until(matches, timeout, interval=0.05,
                                what=f"{count} stderr line(s) matching {pattern!r}")

    def alive(self) -> bool:
        """True while the daemon runs (a ptrace-stopped daemon counts as running)."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> Optional[int]:
        """SIGKILL and reap the daemon (idempotent); return its exit status."""
        if self.proc is None:
            return None
        return procs.kill_and_reap(self.proc)

    def __enter__(self) -> "QemuDaemon":
        try:
            return self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --- command-line fragments -------------------------------------------------------------

_pidfile_support = {}


def supports_pidfile(binary) -> bool:
    """Whether this qemu-storage-daemon has --pidfile (added in QEMU 6.0)."""
    key = str(binary)
    if key not in _pidfile_support:
        out = subprocess.run([key, "--help"], capture_output=True, text=True, timeout=30)
        _pidfile_support[key] = "--pidfile" in out.stdout
    return _pidfile_support[key]


def reconnect_option(version: tuple, seconds: int = 1) -> str:
    """The socket chardev's reconnect option for QEMU VERSION.

    reconnect-ms=MS exists since 9.2, where reconnect=SECONDS became deprecated; 10.2 removed
    reconnect=. Older versions only know reconnect=SECONDS.
    """
    if tuple(version[:2]) >= (9, 2):
        return f"reconnect-ms={seconds * 1000}"
    return f"reconnect={seconds}"


def monitor_args(path, chardev_id: str = "mon0") -> list:
    """A QMP monitor served on unix socket PATH by socket chardev CHARDEV_ID."""
    return ["--chardev", f"socket,id={chardev_id},path={path},server=on,wait=off",
            "--monitor", f"chardev={chardev_id}"]


def reconnecting_client_args(path, version: tuple, chardev_id: str = "cli0",
                             seconds: int = 1) -> list:
    """A socket client chardev that keeps reconnecting to unix socket PATH every SECONDS."""
    return ["--chardev",
            f"socket,id={chardev_id},path={path},{reconnect_option(version, seconds)}"]


def tcp_server_args(chardev_id: str = "tcp0", host: str = "127.0.0.1", port: int = 0) -> list:
    """A TCP server socket chardev; PORT 0 lets the kernel choose (see listening_tcp_ports)."""
    return ["--chardev", f"socket,id={chardev_id},host={host},port={port},server=on,wait=off"]


def plain_chardev_args(backend: str, chardev_id: str) -> list:
    """A non-socket chardev such as ("ringbuf", "ring0") or ("null", "null0")."""
    return ["--chardev", f"{backend},id={chardev_id}"]


def trace_event_re(event: str) -> str:
    """Regex for a log-backend trace line of EVENT; QEMU before 6.0 prefixes 'PID@TIME:'."""
    return rf"^(?:\d+@\d+\.\d+:)?{event} "


def trace_args(pattern: str) -> list:
    """Enable trace events matching PATTERN (printed on stderr by these builds' log backend)."""
    return ["--trace", pattern]
