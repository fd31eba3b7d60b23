"""Ready-made qemu-storage-daemon set-ups that tests (and the extension's tests) share.

Each scenario is a context manager yielding a Scenario: the running QemuDaemon plus the facts a
test needs (socket paths, port, QMP client). Leaving it hangs up and kills the daemon.

    with monitor_scenario(build.storage_daemon, workdir) as sc:
        sc.client.execute("query-chardev"); sc.daemon.pid; sc.monitor_path
"""

import contextlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from . import daemon as qsd
from . import procs
from .builds import binary_version
from .gdb import GdbCommandError, GdbProcess, GdbResult, gcore
from .qmp import QMPClient

PLAIN_CHARDEVS = (("ringbuf", "ring0"), ("null", "null0"))
QIO_TASK_TRACE = "qio_task_*"


@dataclass
class Scenario:
    """A running daemon and what a test needs to know about it (unused fields are None)."""

    daemon: qsd.QemuDaemon
    chardev_ids: tuple
    client: Optional[QMPClient] = None      # connected and negotiated, on monitor_path
    monitor_path: Optional[Path] = None     # unix socket of the QMP monitor chardev "mon0"
    missing_path: Optional[Path] = None     # the path "cli0" keeps trying to connect to
    tcp_port: Optional[int] = None          # the port "tcp0" listens on (127.0.0.1)


@contextlib.contextmanager
def scenario(binary, workdir, *, monitor: bool = False, reconnecting_client: bool = False,
             tcp_server: bool = False, plain: bool = False, trace: Optional[str] = None,
             extra_args: Sequence[str] = ()) -> Iterator[Scenario]:
    """Start one daemon with any combination of the standard chardevs; yield its Scenario.

    monitor: QMP monitor on socket chardev "mon0" with a negotiated client kept open;
    reconnecting_client: socket client "cli0" reconnecting every second to a missing path;
    tcp_server: TCP server "tcp0" on 127.0.0.1, kernel-chosen port, no client;
    plain: "ring0" (ringbuf) and "null0" (null); trace: a --trace pattern.
    """
    workdir = Path(workdir)
    args, ids = list(extra_args), []
    monitor_path = workdir / "mon0.sock" if monitor else None
    missing_path = workdir / "missing.sock" if reconnecting_client else None
    if monitor:
        args += qsd.monitor_args(monitor_path)
        ids.append("mon0")
    if reconnecting_client:
        args += qsd.reconnecting_client_args(missing_path, binary_version(Path(binary)))
        ids.append("cli0")
    if tcp_server:
        args += qsd.tcp_server_args()
        ids.append("tcp0")
    if plain:
        for backend, chardev_id in PLAIN_CHARDEVS:
            args += qsd.plain_chardev_args(backend, chardev_id)
            ids.append(chardev_id)
    if trace:
        args += qsd.trace_args(trace)
    with qsd.QemuDaemon(binary, args, workdir) as daemon:
        sc = Scenario(daemon, tuple(ids), monitor_path=monitor_path, missing_path=missing_path)
        if tcp_server:
            sc.tcp_port = procs.listening_tcp_ports(daemon.pid)[0]
        if monitor:
            sc.client = QMPClient(monitor_path)
        try:
            if sc.client:
                sc.client.negotiate()
            yield sc
        finally:
            if sc.client:
                sc.client.close()


def monitor_scenario(binary, workdir, **kw):
    """(a) QMP monitor on unix socket chardev "mon0", a negotiated QMPClient connected."""
    return scenario(binary, workdir, monitor=True, **kw)


@contextlib.contextmanager
def reconnect_scenario(binary, workdir, *, min_attaches: int = 1, **kw) -> Iterator[Scenario]:
    """(b) Socket client "cli0" reconnecting every second to a missing path, with
    --trace 'qio_task_*'; entered once MIN_ATTACHES completion sources were attached."""
    with scenario(binary, workdir, reconnecting_client=True, trace=QIO_TASK_TRACE, **kw) as sc:
        if min_attaches:
            sc.daemon.wait_for_stderr(qsd.trace_event_re("qio_task_thread_source_attach"),
                                      count=min_attaches,
                                      timeout=5.0 + 2.0 * min_attaches)
        yield sc


def tcp_server_scenario(binary, workdir, **kw):
    """(c) TCP server chardev "tcp0" listening on 127.0.0.1 (port in .tcp_port), no client."""
    return scenario(binary, workdir, tcp_server=True, **kw)


def plain_chardevs_scenario(binary, workdir, **kw):
    """(d) Non-socket chardevs "ring0" (ringbuf) and "null0" (null)."""
    return scenario(binary, workdir, plain=True, **kw)


def all_chardevs_scenario(binary, workdir, **kw):
    """(a)+(b)+(c)+(d) in one daemon (no trace, no waiting): mon0, cli0, tcp0, ring0, null0."""
    return scenario(binary, workdir, monitor=True, reconnecting_client=True, tcp_server=True,
                    plain=True, **kw)


# --- (e) stopped in tcp_chr_write, holding chr_write_lock ----------------------------------

def run_gdb_stopped_in_write(daemon: qsd.QemuDaemon, client: QMPClient,
                             commands: Sequence[str] = (), *, core_path=None,
                             extension: bool = True, qmp_command: str = "query-version",
                             finish: str = "kill", timeout: float = 120.0) -> GdbResult:
    """(e) Run COMMANDS in gdb while the daemon's main thread is stopped in tcp_chr_write.

    gdb attaches to DAEMON, sets `break tcp_chr_write` and continues; then QMP_COMMAND is sent
    on CLIENT, and the main thread stops while writing the response, holding the monitor
    chardev's chr_write_lock (frame 0 is tcp_chr_write, its argument `chr` the Chardev). gdb
    then runs COMMANDS (result.outputs[i]), `gcore CORE_PATH` if given, and FINISH ("kill" or
    "detach"). The daemon is killed afterwards in any case: use one daemon per call.
    """
    setup = ["break tcp_chr_write", "continue"]
    teardown = ([f"gcore {core_path}"] if core_path else []) + [finish]
    gdb = GdbProcess(daemon.binary, pid=daemon.pid, commands=commands, setup=setup,
                     teardown=teardown, extension=extension)
    try:
        _stop_in_write(gdb, daemon, client, qmp_command)
        result = gdb.finish(timeout)
    finally:
        gdb.kill()
        daemon.stop()
    cont = next(s for s in result.sections.values() if s.command == "continue")
    if not cont.output or "tcp_chr_write" not in cont.output:
        raise GdbCommandError("gdb did not stop in tcp_chr_write:\n" + result.describe())
    if core_path and not Path(core_path).is_file():
        raise GdbCommandError(f"gcore wrote no {core_path}:\n" + result.describe())
    return result


def _stop_in_write(gdb: GdbProcess, daemon: qsd.QemuDaemon, client: QMPClient,
                   qmp_command: str) -> None:
    """Send QMP_COMMAND once gdb has resumed the daemon with the breakpoint inserted, then wait
    until the daemon is stopped again (at the breakpoint).

    Synchronisation: gdb prints the BEGIN marker of `continue` just before running it, while
    the attached daemon is still in a ptrace stop ("t" in /proc/PID/status). gdb inserts
    breakpoints before resuming, so once the state leaves "t" the breakpoint is armed.
    """
    cont_key = next(key for key, command in gdb.keyed if command == "continue")
    gdb.wait_for_marker(cont_key, "BEGIN", timeout=60.0)
    try:
        procs.wait_until(lambda: not procs.is_trace_stopped(daemon.pid), 30.0,
                         what="gdb to resume the daemon")
        client.send(qmp_command)
        procs.wait_until(lambda: procs.is_trace_stopped(daemon.pid), 30.0,
                         what="the daemon to stop at tcp_chr_write")
    except TimeoutError as exc:
        raise gdb.abort(str(exc)) from None


# --- (f) no debug info -----------------------------------------------------------------------

def strip_debug(binary, dest) -> Path:
    """Copy BINARY to DEST without its debug info (objcopy --strip-debug); return DEST."""
    dest = Path(dest)
    shutil.copy2(binary, dest)
    subprocess.run(["objcopy", "--strip-debug", str(dest)], check=True, timeout=120,
                   capture_output=True)
    return dest


def stripped_core(binary, workdir) -> tuple:
    """(f) Run a debug-stripped copy of BINARY as in (a), gcore it, kill it.

    Returns (stripped_binary, core) in WORKDIR.
    """
    workdir = Path(workdir)
    stripped = strip_debug(binary, workdir / f"{Path(binary).name}-stripped")
    with monitor_scenario(stripped, workdir) as sc:
        core = gcore(sc.daemon.pid, workdir / "stripped.core", binary=stripped)
    return stripped, core
