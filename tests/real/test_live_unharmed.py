"""A live QEMU is left unharmed by the extension (issue #8, "Live processes are left unharmed").

1. Every read-only command, run on a live qemu-storage-daemon held in a job-control stop,
   leaves its writable memory and its code byte-identical (read from /proc/PID/mem before gdb
   attaches and after it detached, the process still stopped), and the daemon serves QMP
   once continued.
2. The watch and trace commands leave no breakpoint or watchpoint behind after a detach, an
   error, a timeout, a Ctrl-C or gdb being killed: QEMU's code in memory equals its file, no
   thread has a debug register enabled (read with ptrace, not gdb), nobody traces the
   process, and it keeps serving QMP through connects and hang-ups on its socket chardevs.

Ground truth comes from the kernel (/proc/PID/maps, /proc/PID/mem, /proc/PID/stat,
TracerPid, PTRACE_PEEKUSER of the debug registers), the binary's own file and QMP.
"""
import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest

import support
from support import debugregs, memdump, procs
from support import watch as sw

MON0 = "mon_list.tqh_first->chr.chr"          # the monitor's Chardev *, found by plain gdb
MON0_SOCKET = f"((SocketChardev *){MON0})"


# --- a daemon with a chardev of each kind, connected -----------------------------------------

class Peers:
    """The daemon's other ends: the QMP client (mon0), a TCP client of tcp0, the unix server
    that cli0 connected to, and the ring buffer's content."""

    def __init__(self):
        self.qmp = None
        self.tcp = None
        self.listener = None
        self.accepted = None

    def close(self):
        for s in (self.qmp, self.tcp, self.accepted, self.listener):
            if s is not None:
                s.close()


@contextlib.contextmanager
def connected_daemon(build, workdir):
    """qemu-storage-daemon with mon0 (QMP, a negotiated client kept open), tcp0 (TCP server,
    a client connected), cli0 (socket client, connected to our unix server), ring0 (ringbuf
    holding data) and null0; yields (daemon, peers, monitor socket path)."""
    workdir = Path(workdir)
    mon = workdir / "mon0.sock"
    peer_path = workdir / "peer.sock"
    peers = Peers()
    peers.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peers.listener.bind(str(peer_path))
    peers.listener.listen(4)
    peers.listener.settimeout(10)
    version = support.binary_version(build.storage_daemon)
    args = [*support.monitor_args(mon), *support.tcp_server_args(),
            *support.reconnecting_client_args(peer_path, version),
            *support.plain_chardev_args("ringbuf", "ring0"),
            *support.plain_chardev_args("null", "null0")]
    try:
        with support.QemuDaemon(build.storage_daemon, args, workdir) as daemon:
            peers.accepted, _ = peers.listener.accept()          # cli0 connected
            port = procs.listening_tcp_ports(daemon.pid)[0]
            peers.tcp = socket.create_connection(("127.0.0.1", port), timeout=10)
            peers.qmp = support.QMPClient(mon)
            peers.qmp.negotiate()
            peers.qmp.execute("ringbuf-write", {"device": "ring0", "data": "unharmed\n"})
            support.wait_until(lambda: _all_connected(peers.qmp), 10,
                               what="mon0, tcp0 and cli0 connected")
            yield daemon, peers, mon
    finally:
        peers.close()


def _all_connected(qmp):
    """True once QMP's query-chardev shows mon0, tcp0 and cli0 connected (a socket chardev's
    filename starts with "disconnected:" until it is) and ring0, null0 exist."""
    files = {c["label"]: c["filename"] for c in qmp.execute("query-chardev")}
    return ({"ring0", "null0"} <= set(files)
            and all(label in files and not files[label].startswith("disconnected")
                    for label in ("mon0", "tcp0", "cli0")))


READ_ONLY_COMMANDS = (
    "qemu chardev list",
    "qemu chardev list --json",
    "qemu chardev show mon0",
    "qemu chardev show tcp0",
    "qemu chardev show cli0",
    "qemu chardev show ring0",
    "qemu chardev show null0 --json",
    f"qemu chardev show {MON0}",
    "qemu mutex mon0",
    "qemu mutex --json tcp0",
    f"qemu mutex &{MON0}->chr_write_lock",
    f"qemu mutex {MON0}",
    "qemu gsource census",
    "qemu gsource census --all --json",
    f"qemu gsource {MON0_SOCKET}->hup_source",
    f"qemu gsource --json {MON0_SOCKET}->hup_source",
    "qemu qiotask list",
    "qemu qiotask list --json",
    "qemu diagnose",
    "qemu diagnose --json",
    f"print *{MON0}",
    f"print *{MON0_SOCKET}",
    f"print {MON0}->chr_write_lock",
    f"print *{MON0_SOCKET}->hup_source",
)


def _held_stopped(pid):
    """Every thread of PID in the job-control stop (T), nobody tracing it."""
    states = memdump.thread_states(pid)
    return set(states.values()) == {"T"} and procs.tracer_pid(pid) == 0, states


def test_read_only_commands_leave_memory_byte_identical(qemu, workdir):
    """SIGSTOP the daemon, dump its writable and executable mappings from /proc/PID/mem, let
    gdb attach, run every read-only command and detach, dump again while it is still stopped.

    How gdb treats the stopped process (gdb's linux-nat.c, linux_nat_post_attach_wait): it
    finds each thread in "T (stopped)", queues a SIGSTOP to it and PTRACE_CONTs that one
    traced thread, which takes the SIGSTOP on its way back to user space (a ptrace stop) before
    running a single instruction; at detach it hands SIGSTOP back, so the process is in the
    job-control stop again.  No QEMU code runs in between, so nothing may differ: no mapping
    is exempt (the [vvar]/[vdso] pages are neither writable nor compared as such: [vdso] is
    executable and must be identical too; [vvar] is read-only and skipped).
    """
    with connected_daemon(qemu, workdir) as (daemon, peers, mon):
        pid = daemon.pid
        memdump.stop_all(pid)
        before = memdump.dump(pid)
        assert any(m.path == "[heap]" for m in before) and \
            any(m.executable and m.path == memdump.exe_path(pid) for m in before)
        result = support.run_gdb(qemu.storage_daemon, pid=pid,
                                 commands=list(READ_ONLY_COMMANDS), timeout=600)
        stopped, states = _held_stopped(pid)
        assert stopped, f"not in the job-control stop after gdb detached: {states}"
        after = memdump.dump(pid)
        changes = memdump.compare(before, after)
        still_stopped, states = _held_stopped(pid)
        assert still_stopped, f"the process ran during the second dump: {states}"
        result.check()
        assert "Traceback" not in result.stderr
        outs = dict(zip(READ_ONLY_COMMANDS, result.outputs))
        listing = outs["qemu chardev list"]
        for label in ("mon0", "tcp0", "cli0", "ring0", "null0"):
            assert label in listing, listing
        assert len([line for line in listing.splitlines()
                    if " connected " in f" {line} "]) == 3, listing
        assert outs["qemu diagnose --json"].lstrip().startswith("{")
        assert memdump.text_left_behind(pid) == []
        assert changes == [], "memory changed:\n" + "\n".join(map(str, changes))
        os.kill(pid, signal.SIGCONT)
        assert peers.qmp.execute("query-version")["qemu"]["major"] == qemu.version_tuple[0]
        ring = peers.qmp.execute("ringbuf-read", {"device": "ring0", "size": 64})
        assert ring == "unharmed\n"
        peers.qmp.close()                    # a socket chardev serves one client at a time
        assert sw.qmp_answers(mon)


# --- 2. the watch and the trace leave nothing behind -----------------------------------------

WATCHING = "qemu watch-disconnect: watching"
GUARDIAN = "qemu-chardev-gdb guardian:"


def _left_clean(pid):
    """None once PID is untraced, its code equals its file and no thread has a debug register
    enabled; else what is still wrong (a guardian may be repairing it right now)."""
    tracer = procs.tracer_pid(pid)
    if tracer:
        return f"traced by {tracer}"
    text = memdump.text_left_behind(pid)
    if text:
        return "code differs from the file: " + ", ".join(
            f"{address:#x}: {mem:#04x} (file {orig:#04x})" for address, mem, orig in text)
    try:
        armed = debugregs.armed_debug_registers(pid)
    except OSError as exc:            # someone attached meanwhile
        return f"debug registers not readable: {exc}"
    if armed:
        return "debug registers enabled: " + ", ".join(
            f"LWP {tid} DR7={dr7:#x}" for tid, dr7 in armed.items())
    return None


def _guardian_said(stderr):
    """The guardian's lines in STDERR (a callable: the text it inherited from the killed gdb),
    for an assertion message."""
    if stderr is None:
        return ""
    lines = [line.strip() for line in stderr().splitlines() if GUARDIAN in line]
    return "; " + (" | ".join(lines) if lines else "the guardian said nothing")


def assert_unharmed(daemon, peers, mon, timeout=20.0, guardian=None):
    """Nothing left behind, then a load that passes every spot the watch ever covered:
    QMP connects and hang-ups (mon0's state, tcp_chr_free_connection), tcp0's client hanging
    up and a new one, cli0's peer hanging up (teardown, socket_reconnect_timeout,
    qemu_chr_socket_connected on reconnect), a socket chardev added and removed
    (qmp_chardev_open_socket, char_socket_finalize).  A leftover int3 or debug register kills
    QEMU with SIGTRAP there.

    GUARDIAN, when gdb was killed armed: a callable giving the stderr its guardian inherited.
    The guardian must then report its repair, complete, in one line, and what it said is in
    every assertion message.  The checks here read the debug registers with ptrace while the
    guardian works: it must take each thread once the reader has let it go."""
    pid = daemon.pid
    problem = [None]

    def clean():
        problem[0] = _left_clean(pid)
        return problem[0] is None
    try:
        support.wait_until(clean, timeout, interval=0.1, what="the process left clean")
    except TimeoutError:
        raise AssertionError(f"left behind after {timeout:g} s: {problem[0]}"
                             + _guardian_said(guardian)) from None
    if guardian is not None:
        with contextlib.suppress(TimeoutError):     # its line follows its last detach
            support.wait_until(lambda: GUARDIAN in guardian(), 10, what="the guardian's line")
        said = _guardian_said(guardian)
        assert "died with" in said and "NOT repaired" not in said, said
    if peers.qmp is not None:
        peers.qmp.close()
        peers.qmp = None
    assert sw.qmp_answers(mon), "QMP does not answer"
    counts = sw.hangup_loop(mon, 10, 3)
    assert counts.refused == 0, counts
    peers.tcp.close()
    port = procs.listening_tcp_ports(pid)[0]
    peers.tcp = socket.create_connection(("127.0.0.1", port), timeout=10)
    peers.accepted.close()                      # cli0's peer hangs up: cli0 reconnects
    peers.listener.settimeout(15)
    peers.accepted, _ = peers.listener.accept()
    with contextlib.closing(support.QMPClient(mon)) as client:
        client.negotiate()
        client.execute("chardev-add", {"id": "hp0", "backend": {"type": "socket", "data": {
            "addr": {"type": "unix", "data": {"path": str(Path(mon).parent / "hp0.sock")}},
            "server": True, "wait": False}}})
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(Path(mon).parent / "hp0.sock"))
            time.sleep(0.1)
        time.sleep(0.1)
        client.execute("chardev-remove", {"id": "hp0"})
        assert client.execute("query-version")["qemu"]
    time.sleep(0.3)
    assert daemon.alive(), \
        f"the daemon died: exit status {daemon.proc.poll()}" + _guardian_said(guardian)
    assert sw.qmp_answers(mon)
    problem = _left_clean(pid)
    assert problem is None, problem + _guardian_said(guardian)


def _start_gdb(build, pid, commands, ready):
    """gdb with the extension running COMMANDS on PID, once READY(gdb stdout) and the
    process runs (not in a ptrace stop): gdb has inserted its points and resumed."""
    gdb = support.GdbProcess(build.storage_daemon, pid=pid, commands=commands)
    try:
        support.wait_until(lambda: ready(gdb.stdout_so_far()) or gdb.proc.poll() is not None,
                           60, what="gdb to start watching")
        assert gdb.proc.poll() is None, gdb.stdout_so_far() + gdb.stderr_so_far()
        support.wait_until(lambda: not procs.is_trace_stopped(pid), 30, what="gdb to resume")
        time.sleep(0.3)
    except BaseException:
        gdb.kill()
        raise
    return gdb


def _kill_gdb(gdb, pid):
    """SIGKILL gdb's whole process group (gdb leads it) while the inferior PID runs; return
    the int3 bytes gdb had in QEMU's code at that moment (read from /proc/PID/mem).  gdb's
    output files stay (the guardian writes to gdb's stderr): the test deletes them."""
    inserted = memdump.text_left_behind(pid)
    os.killpg(gdb.proc.pid, signal.SIGKILL)
    gdb.proc.wait(30)
    return inserted


def _children(pid):
    """The pids of PID's children (from /proc/PID/task/*/children)."""
    kids = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            kids += [int(k) for k in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return kids


HUP = f"((SocketChardev *){MON0})->hup_source"


def _watch_detach(build, daemon, peers, mon):
    result = support.run_gdb(build.storage_daemon, pid=daemon.pid, commands=[
        "qemu watch-disconnect --arm-only", "maint info breakpoints", "detach"])
    assert "hw watchpoint" in result.outputs[1]
    return result.stdout


def _watch_error(build, daemon, peers, mon):
    """Armed, then commands that fail (bad option, non-socket label); gdb then exits."""
    result = support.run_gdb(build.storage_daemon, pid=daemon.pid, commands=[
        "qemu watch-disconnect --arm-only",
        "qemu watch-disconnect --fields bogus",
        "qemu watch-disconnect ring0 --arm-only",
        "maint info breakpoints"])
    assert result.errors[1].strip() and result.errors[2].strip(), result.describe()
    assert "Traceback" not in result.stderr
    return result.stdout


def _watch_duration(build, daemon, peers, mon):
    gdb = support.GdbProcess(build.storage_daemon, pid=daemon.pid,
                             commands=["qemu watch-disconnect --duration 3"])
    try:
        support.wait_until(lambda: WATCHING in gdb.stdout_so_far(), 60, what="watching")
        peers.qmp.close()
        peers.qmp = None
        sw.hangup_loop(mon, 5, 0)
        result = gdb.finish(60)
    finally:
        gdb.kill()
    assert "duration elapsed" in result.outputs[0], result.describe()
    return result.stdout


def _watch_gdb_killed(build, daemon, peers, mon):
    gdb = _start_gdb(build, daemon.pid, ["qemu watch-disconnect --duration 600"],
                     lambda out: WATCHING in out)
    peers.qmp.close()
    peers.qmp = None
    sw.hangup_loop(mon, 5, 0)                 # the watch is working: stops come and go
    assert procs.tracer_pid(daemon.pid) == gdb.proc.pid
    inserted = _kill_gdb(gdb, daemon.pid)
    if not (inserted and all(mem == 0xCC for _a, mem, _f in inserted)):
        gdb.kill()
        raise AssertionError(f"no int3 of gdb's in QEMU's code: {inserted}")
    return gdb


def _ctrl_c(build, daemon, command, ready):
    """COMMAND running in gdb; Ctrl-C (SIGINT to gdb) while the inferior runs; gdb then
    leaves at the end of its batch."""
    gdb = _start_gdb(build, daemon.pid, [command], ready)
    try:
        gdb.proc.send_signal(signal.SIGINT)
        result = gdb.finish(60)
    finally:
        gdb.kill()
    assert "Traceback" not in result.stderr, result.describe()
    return result


def _watch_ctrl_c(build, daemon, peers, mon):
    result = _ctrl_c(build, daemon, "qemu watch-disconnect --duration 600",
                     lambda out: WATCHING in out)
    assert "qemu watch-disconnect: interrupted" in result.outputs[0], result.describe()
    return result.stdout


def _trace_ctrl_c(build, daemon, peers, mon):
    result = _ctrl_c(build, daemon, f"qemu gsource trace --timeout 600 {HUP}",
                     lambda out: "@@QCG-BEGIN 0" in out)
    assert "stopped: interrupted" in result.outputs[0], result.describe()
    return result.stdout


def _trace_timeout(build, daemon, peers, mon):
    result = support.run_gdb(build.storage_daemon, pid=daemon.pid, commands=[
        f"qemu gsource trace --timeout 2 {HUP}", "maint info breakpoints"])
    assert "timeout" in result.outputs[0], result.describe()
    assert "watchpoint" not in result.outputs[1]
    return result.stdout


def _trace_error(build, daemon, peers, mon):
    """The user holds three debug registers: gdb cannot insert both of the trace's
    watchpoints and refuses to resume, and the trace must end with both deleted; then a trace
    of no GSource at all."""
    result = support.run_gdb(build.storage_daemon, pid=daemon.pid, commands=[
        f"watch -l *(char *)((char *){MON0}->label)",
        f"watch -l *((char *){MON0}->label + 1)",
        f"watch -l *((char *){MON0}->label + 2)",
        f"qemu gsource trace --timeout 2 {HUP}",
        "qemu gsource trace --timeout 2 0",
        "delete",
        "maint info breakpoints"])
    assert "hardware watchpoint" in result.errors[3] or "debug registers" in result.errors[3], \
        result.describe()
    assert result.errors[4].strip() and "Traceback" not in result.stderr, result.describe()
    assert "cannot resume" in result.outputs[3], result.describe()
    return result.stdout


def _trace_gdb_killed(build, daemon, peers, mon):
    """gdb killed while the trace's watchpoints are armed: they are only in the debug
    registers (QEMU's code has no int3), so the checks read those while the guardian works."""
    gdb = _start_gdb(build, daemon.pid, [f"qemu gsource trace --timeout 600 {HUP}"],
                     lambda out: "@@QCG-BEGIN 0" in out)
    _kill_gdb(gdb, daemon.pid)
    return gdb


def _catcher(daemon, mon, workdir, extra=()):
    run = sw.CatcherRun(["--pid", daemon.pid, *extra], workdir=Path(workdir) / "c")
    run.wait_watching()
    return run


def _catcher_ctrl_c(build, daemon, peers, mon, workdir):
    run = _catcher(daemon, mon, workdir)
    peers.qmp.close()
    peers.qmp = None
    sw.hangup_loop(mon, 5, 0)
    rc = run.interrupt()
    assert rc == 0 and run.summary["reason"] == "stop requested", run.describe()
    return run.stdout()


def _catcher_error(build, daemon, peers, mon, workdir):
    """The watch fails once gdb is attached (a label that is not a socket chardev): the script
    exits 2 and gdb detaches."""
    run = sw.CatcherRun(["--pid", daemon.pid, "mon0", "ring0"], workdir=Path(workdir) / "c")
    rc = run.wait(120)
    assert rc == 2 and "not a socket chardev" in run.stdout() + run.stderr(), run.describe()
    return run.stderr()


def _catcher_duration(build, daemon, peers, mon, workdir):
    run = _catcher(daemon, mon, workdir, ["--duration", "3"])
    rc = run.wait(60)
    assert rc == 0 and run.summary["reason"] == "duration elapsed", run.describe()
    return run.stdout()


def _catcher_gdb_killed(build, daemon, peers, mon, workdir):
    run = _catcher(daemon, mon, workdir)
    peers.qmp.close()
    peers.qmp = None
    sw.hangup_loop(mon, 5, 0)
    gdb_pid = procs.tracer_pid(daemon.pid)
    assert gdb_pid in _children(run.proc.pid)
    inserted = memdump.text_left_behind(daemon.pid)
    assert inserted and all(mem == 0xCC for _a, mem, _f in inserted), inserted
    os.kill(gdb_pid, signal.SIGKILL)
    rc = run.wait(60)
    assert rc == 2 and "gdb did not complete the watch" in run.stderr(), run.describe()
    return run


ENDINGS = {
    "watch-detach": _watch_detach,
    "watch-error": _watch_error,
    "watch-duration": _watch_duration,
    "watch-gdb-killed": _watch_gdb_killed,
    "watch-ctrl-c": _watch_ctrl_c,
    "trace-timeout": _trace_timeout,
    "trace-ctrl-c": _trace_ctrl_c,
    "trace-error": _trace_error,
    "trace-gdb-killed": _trace_gdb_killed,
}
CATCHER_ENDINGS = {
    "catcher-ctrl-c": _catcher_ctrl_c,
    "catcher-error": _catcher_error,
    "catcher-duration": _catcher_duration,
    "catcher-gdb-killed": _catcher_gdb_killed,
}


@pytest.mark.parametrize("ending", [*ENDINGS, *CATCHER_ENDINGS])
def test_watch_and_trace_leave_nothing_behind(qemu, workdir, ending):
    """However the watch or the trace ends, the daemon is left as it was: see
    assert_unharmed.  When gdb is killed, the kernel keeps gdb's int3 bytes and the debug
    registers (it does not clear them when the tracer dies: measured); the engine's guardian
    process puts them back (the watch's int3 bytes are checked to be in QEMU's code while gdb
    runs, so that their absence afterwards means something)."""
    with connected_daemon(qemu, workdir) as (daemon, peers, mon):
        assert _left_clean(daemon.pid) is None
        if ending in ENDINGS:
            ended = ENDINGS[ending](qemu, daemon, peers, mon)
        else:
            ended = CATCHER_ENDINGS[ending](qemu, daemon, peers, mon, workdir)
        # gdb killed: its guardian writes to gdb's stderr (the catcher copies it to its own)
        guardian = ended.stderr_so_far if isinstance(ended, support.GdbProcess) else \
            ended.stderr if isinstance(ended, sw.CatcherRun) else None
        try:
            assert_unharmed(daemon, peers, mon, guardian=guardian)
        finally:
            if isinstance(ended, support.GdbProcess):
                ended.kill()
