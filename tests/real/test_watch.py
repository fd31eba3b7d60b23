"""`qemu watch-disconnect` and scripts/catch-disconnect-during-write on real QEMU.

Expected values come from outside the extension: the number of clients we hung up, QEMU's own
chr_socket_* trace events (9.x+), plain gdb (thread LWPs, a dprintf on tcp_chr_free_connection,
the fields of a written core), the kernel (/proc: tracer, pids) and test-char's own TAP output.
"""
import contextlib
import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import support
from support import procs
from support import watch as sw
from support.health import daemon_health, describe as describe_health

MON0 = "mon_list.tqh_first->chr.chr"          # the monitor's chardev, found by plain gdb
WARNING = "disconnect-without-write-lock"
ERROR = "disconnect-during-write"
# How the chardevs are covered: a debug register on each one's state (the default), or, with
# no debug register (what README advises for a connection per command), the breakpoint on
# tcp_chr_free_connection for all of them.
COVERS = {"watchpoint": [], "breakpoint": ["--max-debug-registers", "0"]}
# the field of the events each cover gives
COVER_FIELD = {"watchpoint": "state", "breakpoint": "teardown"}


def assert_covered_by(summary, cover):
    rows = summary["coverage"]
    assert rows and all(row["fallback"] == (cover == "breakpoint") for row in rows), rows


@contextlib.contextmanager
def qsd(build, workdir, *extra, trace=False):
    """qemu-storage-daemon with the QMP monitor mon0 (unix socket WORKDIR/mon0.sock)."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    sock = Path(workdir) / "mon0.sock"
    args = [*support.monitor_args(sock), *extra]
    if trace:
        args += support.trace_args(sw.CHR_TRACE)
    with support.QemuDaemon(build.storage_daemon, args, workdir) as daemon:
        support.wait_until(sock.exists, 10, what="mon0.sock")
        yield daemon, sock


def has_chr_trace(build):
    return build.version_tuple >= (9, 0)


def plain_gdb(build, pid, *commands):
    return support.run_gdb(build.storage_daemon, pid=pid, commands=list(commands),
                           extension=False).check().outputs


def assert_left_running(daemon, sock, build=None):
    """No tracer, QMP answers, and more hang-ups do not kill it (no breakpoint or debug
    register left behind: either would kill it with SIGTRAP).

    On a build with the 2019 fix reverted the hang-ups are all at once: hang-ups mid-burst
    there can strike the race itself, and a reverted 10.2 then aborts without any gdb
    attached (measured: 2 of 180 loops of 10 + 2 hang-ups), which says nothing about what
    the watch left behind.  Every teardown passes the watched field and the fallback
    breakpoint's function either way."""
    assert procs.tracer_pid(daemon.pid) == 0
    assert sw.qmp_answers(sock)
    mid_burst = 0 if build is not None and build.variant == "reverted" else 2
    assert sw.hangup_loop(sock, 10, mid_burst).refused == 0
    assert daemon.alive() and sw.qmp_answers(sock)


def stack_functions(frames):
    return [f["function"] for f in frames]


def qmp(sock):
    client = support.QMPClient(sock)
    client.negotiate()
    return client


def add_socket_chardev(client, label, path):
    client.execute("chardev-add", {"id": label, "backend": {"type": "socket", "data": {
        "addr": {"type": "unix", "data": {"path": str(path)}},
        "server": True, "wait": False}}})


def hang_up_on(path, times):
    for _ in range(times):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
            time.sleep(0.05)
        time.sleep(0.05)


# --- reverted build: every disconnect without the lock is reported ------------------------------

def test_reverted_every_hangup_is_reported(qemu_reverted, workdir):
    build = qemu_reverted
    trace = has_chr_trace(build)
    hangups = 25
    with qsd(build, workdir, trace=trace) as (daemon, sock):
        io_lwp = sw.iothread_lwp(build.storage_daemon, daemon.pid)
        with sw.loose_umask(), sw.CatcherRun(["--pid", daemon.pid], workdir=workdir / "c") as run:
            run.wait_watching()
            before = len(daemon.stderr_text())
            counts = sw.hangup_loop(sock, hangups, 0)
            time.sleep(0.5)
            window = daemon.stderr_text()[before:]
            rc = run.interrupt()
        assert counts.at_once == hangups and counts.refused == 0
        events = run.events()
        errors = [e for e in events if e["id"] == ERROR]
        assert rc == (1 if errors else 0), run.describe()
        assert len(events) == hangups, run.describe()
        if trace:
            assert sw.disconnect_trace_counts(window, "mon0") == \
                {"disconnects": hangups, "locked": 0}
        mon0, label, kind = plain_gdb(build, daemon.pid, f"output (unsigned long){MON0}",
                                      f"output {MON0}->label",
                                      f"output ((Object *){MON0})->class->type->name")
        assert label.endswith('"mon0"') and kind.endswith('"chardev-socket"')
        for event in events:
            assert event["chardev"] == {"label": "mon0", "address": f"0x{int(mon0):x}"}
            assert event["lwp"] == io_lwp                  # the monitor I/O thread
            assert event["field"] == "state"
            assert (event["old"], event["new"]) == ("connected", "disconnected")
            functions = stack_functions(event["stack"])
            assert functions[0] == "tcp_chr_change_state"
            assert "tcp_chr_free_connection" in functions and "tcp_chr_disconnect" in functions
            if event["id"] == ERROR:
                assert event["writer_lwp"] == daemon.pid and event["writer_stack"]
            else:
                assert event["id"] == WARNING and event["writer_lwp"] is None
                assert event["severity"] == "warning"
            # one vocabulary with the report's findings, one name per fact
            assert "kind" not in event and "reason" not in event     # id and summary only
        assert [e["seq"] for e in events] == list(range(1, hangups + 1))
        summary = run.summary
        sw.validate_events(events, summary)
        assert summary["events"] == events
        # the log and the summary hold guest data: owner only, though our umask is 022
        assert sw.file_mode(run.json_log) == 0o600
        assert sw.file_mode(run.summary_path) == 0o600
        assert summary["reason"] == "stop requested"
        assert summary["counters"]["teardowns"] == hangups
        assert summary["counters"]["locked_teardowns"] == 0
        assert "detached from process" in run.stdout()
        assert_left_running(daemon, sock, qemu_reverted)


def test_reverted_count_matches_a_separate_dprintf_run(qemu_reverted, workdir):
    """Ground truth in a separate run: plain gdb with a dprintf on tcp_chr_free_connection."""
    build = qemu_reverted
    hangups = 20
    with qsd(build, workdir / "a") as (daemon, sock):
        truth = sw.dprintf_teardowns(build.storage_daemon, daemon.pid,
                                     lambda: sw.hangup_loop(sock, hangups, 0))
    assert truth["mon0"]["unlocked"] == hangups and truth["mon0"]["locked"] == 0
    with qsd(build, workdir / "b") as (daemon, sock):
        with sw.CatcherRun(["--pid", daemon.pid, "--quiet", "mon0"],
                           workdir=workdir / "c") as run:
            run.wait_watching()
            sw.hangup_loop(sock, hangups, 0)
            time.sleep(0.5)
            run.interrupt()
    assert len(run.events()) == truth["mon0"]["unlocked"]
    assert "WARNING" not in run.stdout()                      # --quiet: errors only


@pytest.mark.parametrize("cover", COVERS)
def test_reverted_hangups_mid_burst_every_connection_judged(qemu_reverted, workdir, cover):
    """Some clients hang up while responses are being written.  Each connection is torn down
    once: by the main thread in tcp_chr_write with the lock (write error), or without it by
    the I/O thread - a warning, or an error if the main thread held the lock meanwhile.

    A vulnerable QEMU may also crash here: the race striking, with or without the catcher.
    Measured with this load on the reverted 10.2: with no debugger attached, 2 SIGABRT in 546
    runs (a kernel core of one: the main thread in tcp_chr_write's write-error teardown and
    the monitor I/O thread in tcp_chr_hup's, both in tcp_chr_free_connection of mon0, the
    main thread aborting in yank_unregister_function); under the catcher 46 in 788 (45 that
    same abort, 1 SIGSEGV on the NULL ioc in qio_channel_writev_full, all under
    tcp_chr_write: its timing stops make the window likelier).  The reverted 7.2: once in
    about 80 runs under the catcher (SIGABRT, under tcp_chr_write), never in 15 without.  The
    crash can come after the last client hung up (no connection refused) or after the
    catcher detached.  A client can also be refused with no crash (3 of the 788): QEMU closes
    its connection before the greeting (its trace shows one more teardown right after the
    I/O thread's, by the main thread's write error) and goes on serving QMP, with the catcher
    still attached; the catcher then watches on, so the test stops it and never waits for it
    to end (waiting for it was the test's hang).  No run left a live daemon that did not
    answer QMP.  So the test asserts on what the catcher reported, and the daemon's health
    afterwards is a fact in its output, except for what would be the catcher's doing: a
    SIGTRAP death, an int3 or a debug register left behind, a crash while watched that the
    catcher did not report."""
    build = qemu_reverted
    trace = has_chr_trace(build)
    with qsd(build, workdir, trace=trace) as (daemon, sock):
        with sw.CatcherRun(["--pid", daemon.pid, "--quiet", *COVERS[cover]],
                           workdir=workdir / "c") as run:
            run.wait_watching()
            before = len(daemon.stderr_text())
            counts = sw.hangup_loop(sock, 30, 10)
            time.sleep(0.5)
            window = daemon.stderr_text()[before:]
            rc = run.interrupt()
        events = run.events()
        summary = run.summary
        crashed = [e for e in events if e["id"] == "crash"]
        if crashed:       # the catcher let the signal through at its detach: QEMU dies of it
            with contextlib.suppress(TimeoutError):
                support.wait_until(lambda: not daemon.alive(), 10, what="the daemon to die")
        health = daemon_health(daemon, sock)
        print(f"hang-ups {counts}; catcher exit {rc}; {describe_health(health)}")
        sw.validate_events(events, summary)
        assert_covered_by(summary, cover)
        assert {e["field"] for e in events if e["id"] != "crash"} <= {COVER_FIELD[cover]}
        judged = len(events) - len(crashed) + summary["counters"]["locked_teardowns"]
        facts = f"{describe_health(health)}\n{run.describe()}"
        assert health["signal"] != "SIGTRAP" and not health["left_behind"], facts
        if crashed:
            assert len(crashed) == 1 and rc == 1, facts
            assert summary["reason"].startswith("the process crashed"), summary["reason"]
            # The race aborts the thread that tears the connection down second: under the
            # watchpoints, measured, always the main thread's write (tcp_chr_write).  The
            # breakpoint's stops at tcp_chr_free_connection can let the I/O thread come second
            # instead (seen once: the abort in yank_unregister_function under its
            # tcp_chr_free_connection, no tcp_chr_write on that stack).
            paths = {"tcp_chr_write"} | \
                ({"tcp_chr_free_connection"} if cover == "breakpoint" else set())
            assert paths & set(stack_functions(crashed[0]["stack"])), \
                stack_functions(crashed[0]["stack"])
            assert not health["alive"] and health["signal"] == crashed[0]["signal"], facts
            assert judged + 1 >= counts.total, facts
        else:
            # watched to the end: every hang-up judged; a death after the detach is QEMU's.
            # A client refused without a crash was accepted and torn down before its
            # greeting: one more teardown judged than hang-ups counted.
            assert summary["reason"] == "stop requested", facts
            # The watchpoint sees a connection's state change once.  The breakpoint stops
            # every call that finds the connection up: on this build the I/O thread's hang-up
            # and the main thread's write error can both be tearing one connection down (the
            # race itself), so a hang-up is judged once per thread, at most twice.
            most = 1 if cover == "watchpoint" else 2
            assert counts.total <= judged <= most * (counts.total + counts.refused), facts
            assert rc == (1 if summary["errors"] else 0), facts
        if trace:
            t = sw.disconnect_trace_counts(window, "mon0")
            # write-path teardowns need a write error first; the rest came without the lock
            assert summary["counters"]["locked_teardowns"] <= t["locked"]
            assert len(events) >= min(counts.total, t["disconnects"]) - t["locked"] - 1
            if cover == "breakpoint" and not crashed:
                # each judged teardown is a tcp_chr_disconnect_locked() call QEMU traced
                assert judged <= t["disconnects"], (judged, t, facts)
        for event in events:
            if event["id"] == ERROR:
                assert event["writer_lwp"] == daemon.pid
                assert event["lock"]["owner_lwp"] == daemon.pid
                # gdb runs stop() while the other threads still run (target-non-stop): the
                # writer may finish its write before it is stopped, and the event says so
                in_write = {"qemu_chr_write_buffer", "tcp_chr_write"} & \
                    set(stack_functions(event["writer_stack"]))
                moved_on = any(p.startswith("writer stack taken after the write")
                               for p in event["problems"])
                assert bool(in_write) != moved_on, \
                    (event["seq"], event["summary"], event["lock"], event["problems"],
                     stack_functions(event["writer_stack"]), stack_functions(event["stack"]))


# --- fixed build: never a report -----------------------------------------------------------------

@pytest.mark.parametrize("cover", COVERS)
def test_fixed_no_report_with_hangups_and_hotplug(qemu, workdir, cover):
    build = qemu
    trace = has_chr_trace(build)
    hotplug_sock = workdir / "hp0.sock"
    with qsd(build, workdir, trace=trace) as (daemon, sock):
        with sw.CatcherRun(["--pid", daemon.pid, *COVERS[cover]], workdir=workdir / "c") as run:
            run.wait_watching()
            before = len(daemon.stderr_text())
            counts = sw.hangup_loop(sock, 20, 10)
            with contextlib.closing(qmp(sock)) as client:
                add_socket_chardev(client, "hp0", hotplug_sock)
                hang_up_on(hotplug_sock, 5)
                client.execute("chardev-remove", {"id": "hp0"})
            time.sleep(0.5)
            window = daemon.stderr_text()[before:]
            rc = run.interrupt()
        assert rc == 0, run.describe()
        assert run.events() == [] and "ERROR" not in run.stdout() \
            and "WARNING" not in run.stdout()
        c = run.summary["counters"]
        # every teardown was seen and judged fine: mon0's hang-ups, the QMP client used for
        # chardev-add, and hp0's five
        assert c["teardowns"] == c["locked_teardowns"] == counts.total + 1 + 5, c
        assert (c["created"], c["finalized"]) == (1, 1)
        assert c["warnings"] == c["errors"] == 0
        assert "new chardev 'hp0'" in run.stdout()
        if trace:
            t = sw.disconnect_trace_counts(window, "mon0")
            assert t["disconnects"] >= counts.total + 1
            assert sw.disconnect_trace_counts(window, "hp0")["disconnects"] == 5
        assert [row["label"] for row in run.summary["coverage"]] == ["mon0"]
        assert_covered_by(run.summary, cover)
        assert_left_running(daemon, sock)


def test_distro_build_breakpoint_cover_judges_every_teardown(workdir):
    """As distributions build QEMU (-O2 -g, no debug-mutex): the breakpoint on
    tcp_chr_free_connection reads its ``chr`` argument and judges every hang-up, each with
    the lock held (the fixed code), one stop per connection."""
    build = support.require_build("7.2", "distro")
    with qsd(build, workdir) as (daemon, sock):
        with sw.CatcherRun(["--pid", daemon.pid, *COVERS["breakpoint"]],
                           workdir=workdir / "c") as run:
            run.wait_watching()
            counts = sw.hangup_loop(sock, 20, 10)
            time.sleep(0.5)
            rc = run.interrupt()
        assert rc == 0, run.describe()
        assert run.events() == [], run.describe()
        c = run.summary["counters"]
        assert c["teardowns"] == c["locked_teardowns"] == counts.total, c
        assert run.summary["stop_calls"] == counts.total, run.summary
        assert_covered_by(run.summary, "breakpoint")
        assert_left_running(daemon, sock)


def test_fixed_test_char_passes_under_the_catcher(qemu, workdir):
    with sw.CatcherRun(["--", qemu.test_char], workdir=workdir, cwd=workdir) as run:
        rc = run.wait(300)
    out = run.stdout()
    assert rc == 0, run.describe()
    assert run.summary["exit_status"] == 0
    plan = re.search(r"^1\.\.(\d+)$", out, re.M)
    assert plan and len(re.findall(r"^ok \d+", out, re.M)) == int(plan.group(1))
    assert not re.search(r"^not ok", out, re.M)
    assert run.events() == []
    c = run.summary["counters"]
    assert c["teardowns"] == c["locked_teardowns"] > 0
    # Ground truth for the chardevs that come and go: plain gdb dprintfs in a separate run
    # (test-char 5.2 finalizes 26 of the 30 socket chardevs it opens; later versions all).
    opened, finalized = _socket_chardevs_opened_and_finalized(qemu.test_char, workdir / "truth")
    assert (c["created"], c["finalized"]) == (opened, finalized) and opened > 0


def _socket_chardevs_opened_and_finalized(test_char, cwd):
    """(opens, finalizations) of socket chardevs in one test-char run under plain gdb."""
    cwd.mkdir()
    out = subprocess.run(
        ["gdb", "-nx", "-batch", "-ex", "set pagination off",
         "-ex", 'dprintf qmp_chardev_open_socket,"QCG-OPEN\\n"',
         "-ex", 'dprintf char_socket_finalize,"QCG-FINAL\\n"', "-ex", "run", str(test_char)],
        cwd=cwd, capture_output=True, text=True, timeout=300).stdout
    return (len(re.findall(r"^QCG-OPEN$", out, re.M)), len(re.findall(r"^QCG-FINAL$", out, re.M)))


def test_reverted_test_char_reports_what_fixed_does_with_the_lock(qemu_pair, workdir):
    qemu, qemu_reverted = qemu_pair
    runs = {}
    for variant, build in (("fixed", qemu), ("reverted", qemu_reverted)):
        with sw.CatcherRun(["--quiet", "--", build.test_char], workdir=workdir / variant,
                           cwd=workdir) as run:
            run.wait(300)
        runs[variant] = run
    fixed, reverted = runs["fixed"], runs["reverted"]
    assert reverted.summary["exit_status"] == 0
    events = reverted.events()
    assert len(events) == fixed.summary["counters"]["locked_teardowns"] > 0
    assert all(e["id"] == WARNING for e in events)
    assert reverted.returncode == 0


# --- budget, fallback, hot-plug on the reverted build --------------------------------------------

def test_budget_four_registers_then_breakpoint_fallback(qemu_reverted, workdir):
    build = qemu_reverted
    servers = [f"s{i}" for i in range(1, 6)]
    extra = []
    for label in servers:
        extra += ["--chardev", f"socket,id={label},path={workdir / label}.sock,"
                               "server=on,wait=off"]
    with qsd(build, workdir, *extra) as (daemon, sock):
        with sw.CatcherRun(["--pid", daemon.pid, "--quiet"], workdir=workdir / "c") as run:
            run.wait_watching()
            table = run.stdout()
            for label in servers:
                hang_up_on(workdir / f"{label}.sock", 2)
            sw.hangup_loop(sock, 2, 0)
            time.sleep(0.5)
            rc = run.interrupt()
    assert rc == 0, run.describe()
    coverage = {row["label"]: row for row in run.summary["coverage"]}
    watched = [label for label, row in coverage.items() if row["watched"]]
    assert watched == ["mon0", "s1", "s2", "s3"]
    assert all(coverage[label]["registers"] == 1 for label in watched)
    assert [label for label, row in coverage.items() if row["fallback"]] == ["s4", "s5"]
    for label in ("s4", "s5"):
        assert re.search(rf"^{label}\s.*no debug register left: breakpoint on "
                         r"tcp_chr_free_connection", table, re.M), table
    assert "0 of 4 debug register(s) free" in table
    per_label = {}
    for event in run.events():
        per_label.setdefault(event["chardev"]["label"], []).append(event)
    assert sorted(per_label) == ["mon0", *servers]
    for label, events in per_label.items():
        assert len(events) == 2, (label, events)
        assert {e["field"] for e in events} == ({"teardown"} if label in ("s4", "s5")
                                                else {"state"})
        assert all(e["id"] == WARNING for e in events)


def test_hotplugged_chardev_without_register_is_announced_and_caught(qemu_reverted, workdir):
    build = qemu_reverted
    hotplug_sock = workdir / "hp0.sock"
    with qsd(build, workdir) as (daemon, sock):
        with sw.CatcherRun(["--pid", daemon.pid, "--max-debug-registers", "1"],
                           workdir=workdir / "c") as run:
            run.wait_watching()
            with contextlib.closing(qmp(sock)) as client:
                add_socket_chardev(client, "hp0", hotplug_sock)
                hang_up_on(hotplug_sock, 3)
                client.execute("chardev-remove", {"id": "hp0"})
            sw.hangup_loop(sock, 2, 0)
            time.sleep(0.5)
            rc = run.interrupt()
    assert rc == 0, run.describe()
    out = run.stdout()
    assert re.search(r"new chardev 'hp0' \(0x[0-9a-f]+\): no debug register left, covered by "
                     r"the breakpoint on tcp_chr_free_connection", out), out
    by_label = {}
    for event in run.events():
        by_label.setdefault(event["chardev"]["label"], []).append(event)
    assert len(by_label["hp0"]) == 3 and {e["field"] for e in by_label["hp0"]} == {"teardown"}
    # mon0: the QMP client that added hp0, then two hang-ups; nothing for hp0's removal
    assert len(by_label["mon0"]) == 3 and {e["field"] for e in by_label["mon0"]} == {"state"}
    c = run.summary["counters"]
    assert (c["created"], c["finalized"], c["finalizations"]) == (1, 1, 0)


# --- --stop, --core-dir: the error, with the writer really in flight -----------------------------

SELECT_IOTHREAD = ("python [t.switch() for t in gdb.selected_inferior().threads() "
                   "if 'iothread_run' in gdb.execute('thread apply %d bt' % t.num, "
                   "to_string=True)]")


def test_stop_leaves_gdb_at_the_scene_and_writes_a_core(qemu_reverted, workdir):
    """The main thread is held in tcp_chr_write (chr_write_lock held) by a breakpoint; with
    scheduler-locking only the monitor I/O thread runs when the client hangs up."""
    build = qemu_reverted
    cores = workdir / "private" / "cores"             # made by the watch (0700)
    log = workdir / "events.jsonl"
    summary_path = workdir / "summary.json"
    with qsd(build, workdir) as (daemon, sock):
        io_lwp = sw.iothread_lwp(build.storage_daemon, daemon.pid)
        client = qmp(sock)
        commands = ["delete", SELECT_IOTHREAD, "set scheduler-locking on",
                    f"qemu watch-disconnect mon0 --stop --duration 60 --json-log {log} "
                    f"--core-dir {cores} --summary-json {summary_path}",
                    "bt 6", "info threads", "qemu watch-disconnect --status --json",
                    "qemu watch-disconnect --off", "set scheduler-locking off", "detach"]
        with sw.loose_umask():          # gdb (and its gcore) under a usual umask of 022
            gdb = support.GdbProcess(build.storage_daemon, pid=daemon.pid, commands=commands,
                                     setup=["break tcp_chr_write", "continue"])
        try:
            gdb.wait_for_marker("pre2", "BEGIN")       # "continue" after sourcing, break
            procs.wait_until(lambda: not procs.is_trace_stopped(daemon.pid), 30,
                             what="gdb to resume")
            client.send("query-version")
            procs.wait_until(lambda: "tcp_chr_write" in gdb.stdout_so_far(), 30,
                             what="the main thread to stop in tcp_chr_write")
            procs.wait_until(lambda: "qemu watch-disconnect: watching" in gdb.stdout_so_far(),
                             60, what="the watch to be armed")
            time.sleep(1.0)
            client.close()                               # the hang-up
            result = gdb.finish(120)
        finally:
            gdb.kill()
        watch_out, bt, threads, status = result.outputs[3:7]
        assert "ERROR disconnect-during-write" in watch_out, result.describe()
        assert "stopped at the scene" in watch_out
        frames = bt.splitlines()
        assert "tcp_chr_change_state" in frames[0] and "tcp_chr_free_connection" in bt
        assert re.search(rf"^\*\s+\d+\s+Thread 0x[0-9a-f]+ \(LWP {io_lwp}\)", threads, re.M)
        assert re.search(rf"\(LWP {daemon.pid}\).* tcp_chr_write ", threads)
        status = json.loads(status)
        assert status["armed"] and status["at_scene"] and status["errors"] == 1
        assert "disarmed" in result.outputs[7]
        events = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(events) == 1
        event = events[0]
        assert event["id"] == ERROR and event["chardev"]["label"] == "mon0"
        assert (event["seq"], event["severity"]) == (1, "error")
        assert (event["lwp"], event["writer_lwp"]) == (io_lwp, daemon.pid)
        assert stack_functions(event["writer_stack"])[0] == "tcp_chr_write"
        assert stack_functions(event["stack"])[:2] == ["tcp_chr_change_state",
                                                       "tcp_chr_free_connection"]
        assert event["lock"]["owner_lwp"] == daemon.pid
        core = Path(event["core"])
        assert core.parent == cores and core.stat().st_size > 0
        # a core holds the guest's memory: 0600 in a 0700 directory; the log and summary 0600
        assert sw.file_mode(core) == 0o600 and sw.file_mode(cores) == 0o700
        assert core.name == f"core.{daemon.pid}.1"
        assert sw.file_mode(log) == 0o600 and sw.file_mode(summary_path) == 0o600
        summary = json.loads(summary_path.read_text())
        sw.validate_events(events, summary)
        assert summary["events"] == events and summary["errors"] == 1
        # the core, read by plain gdb: the lock held by the main thread, mon0 disconnected
        owner, state, ioc, label = support.run_gdb(
            build.storage_daemon, core=core, extension=False, commands=[
                f"output {MON0}->chr_write_lock.lock.__data.__owner",
                f"output ((SocketChardev *){MON0})->state",
                f"output (unsigned long)((SocketChardev *){MON0})->ioc",
                f"output {MON0}->label"]).check().outputs
        assert int(owner) == daemon.pid
        assert state == "TCP_CHARDEV_STATE_DISCONNECTED" and int(ioc) == 0
        assert label.endswith('"mon0"')
        assert_left_running(daemon, sock, qemu_reverted)


# --- the command inside gdb ----------------------------------------------------------------------

def test_command_arms_reports_status_and_disarms(qemu, workdir):
    with qsd(qemu, workdir, "--chardev",
             f"socket,id=s1,path={workdir}/s1.sock,server=on,wait=off") as (daemon, sock):
        result = support.run_gdb(qemu.storage_daemon, pid=daemon.pid, commands=[
            "qemu watch-disconnect --arm-only --max-debug-registers 1",
            "qemu watch-disconnect --status --json",
            "maint info breakpoints",
            "qemu watch-disconnect --off",
            "maint info breakpoints",
            "qemu watch-disconnect nosuch --arm-only",
            "qemu watch-disconnect --off",
            "qemu watch-disconnect --fields bogus",
            "qemu watch-disconnect --arm-only --quiet",
            "qemu watch-disconnect --duration 1 --json",
            "qemu watch-disconnect --status"])
        armed = result.outputs[0]
        assert "0 of 1 debug register(s) free" in armed
        status = json.loads(result.outputs[1])
        assert status["armed"] and status["complete"]
        rows = {r["label"]: r for r in status["coverage"]}
        assert rows["mon0"]["watched"] == ["state"] and rows["s1"]["fallback"]
        before, after = result.outputs[2], result.outputs[4]
        assert "hw watchpoint" in before and "tcp_chr_free_connection" in before
        assert "qmp_chardev_open_socket" in before and "char_socket_finalize" in before
        for what in ("hw watchpoint", "tcp_chr_free_connection", "qmp_chardev_open_socket",
                     "char_socket_finalize"):
            assert what not in after
        assert "no chardev 'nosuch' yet" in result.outputs[5]
        assert "--fields" in result.errors[7] and "Traceback" not in result.stderr
        # armed at [8], run by [9]: gdb's own "received signal SIGINT" line may come first
        text = result.outputs[9]
        resumed = json.loads(text[text.index("\n{") + 1:] if not text.startswith("{") else text)
        assert resumed["reason"] == "duration elapsed" and not resumed["armed"]
        assert resumed["events"] == [] and resumed["counters"]["teardowns"] == 0
        assert "nothing armed" in result.outputs[10]
        assert "Fatal signal" not in result.stderr
    with qsd(qemu, workdir / "x") as (daemon, sock):
        # gdb leaves while armed: no crash, and the process runs on clean
        result = support.run_gdb(qemu.storage_daemon, pid=daemon.pid,
                                 commands=["qemu watch-disconnect --arm-only"])
        assert result.returncode == 0 and "Fatal signal" not in result.stderr
        assert_left_running(daemon, sock)


def test_finish_consumes_a_pending_sigint_and_detaches(qemu, workdir):
    """`qemu watch-disconnect --finish`, which the script ends with: disarm, let a SIGINT
    still queued for the process arrive in gdb (qemu-storage-daemon quits on SIGINT), detach."""
    with qsd(qemu, workdir) as (daemon, sock):
        result = support.run_gdb(qemu.storage_daemon, pid=daemon.pid, commands=[
            "qemu watch-disconnect --arm-only",
            f"shell kill -INT {daemon.pid}",
            "qemu watch-disconnect --finish --json",
            "qemu watch-disconnect --status",
            "maint info breakpoints"])
        text = result.outputs[2]          # after gdb's own "received signal SIGINT" line
        finished = json.loads(text[text.index("{"):])
        assert "received signal SIGINT" in text
        assert finished["finished"] == f"detached from process {daemon.pid}; it keeps running"
        assert finished["at_scene"] is False
        assert "nothing armed" in result.outputs[3]
        assert "hw watchpoint" not in result.outputs[4]
        assert_left_running(daemon, sock)


def test_command_refuses_a_core(qemu, workdir):
    with qsd(qemu, workdir) as (daemon, sock):
        core = support.gcore(daemon.pid, workdir / "q.core", binary=qemu.storage_daemon)
    result = support.run_gdb(qemu.storage_daemon, core=core,
                             commands=["qemu watch-disconnect --arm-only"])
    assert "needs a live process" in result.errors[0]
    assert "Traceback" not in result.stderr


# --- the script: exits, detaches, refuses bad input ----------------------------------------------

def test_script_survives_its_parent_dying(qemu_reverted, workdir):
    """SIGKILL of the script: gdb sees its control pipe close, disarms and detaches."""
    with qsd(qemu_reverted, workdir) as (daemon, sock):
        run = sw.CatcherRun(["--pid", daemon.pid], workdir=workdir / "c")
        run.wait_watching()
        sw.hangup_loop(sock, 3, 0)
        run.proc.send_signal(signal.SIGKILL)
        run.wait(30)
        procs.wait_until(lambda: procs.tracer_pid(daemon.pid) == 0, 30,
                         what="gdb to detach")
        assert_left_running(daemon, sock, qemu_reverted)


def test_script_bad_input_exits_2(qemu, workdir):
    script = str(sw.SCRIPT)

    def catch(*args):
        return subprocess.run([script, *map(str, args)], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    done = catch("--pid", "999999999")
    assert done.returncode == 2 and "no such process" in done.stderr
    done = catch("--", "/nonexistent/qemu")
    assert done.returncode == 2 and "command not found" in done.stderr
    done = catch("--duration", "5")
    assert done.returncode == 2 and "either --pid" in done.stderr
    done = catch("--pid", "1", "--", "x")
    assert done.returncode == 2
    done = catch("--pid", "1", "--fields", "bogus")     # the command's own option check
    assert done.returncode == 2 and "--fields" in done.stderr
    sleeper = procs.register(subprocess.Popen(["sleep", "300"], start_new_session=True))
    try:
        # not a QEMU: gdb attaches, the watch cannot arm, gdb detaches, sleep runs on; the
        # --core-dir it was given was made first, 0700 (cores hold the guest's memory)
        cores = workdir / "new" / "cores"
        with sw.loose_umask():
            done = catch("--pid", sleeper.pid, "--duration", "5", "--core-dir", cores)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "no QEMU debug info" in done.stdout + done.stderr
        assert sw.file_mode(cores) == 0o700 and sw.file_mode(cores.parent) == 0o700
        assert procs.process_exists(sleeper.pid) and procs.tracer_pid(sleeper.pid) == 0
        # already traced by another debugger
        other = support.GdbProcess(pid=sleeper.pid, extension=False, commands=["continue"])
        try:
            procs.wait_until(lambda: procs.tracer_pid(sleeper.pid) != 0, 30,
                             what="gdb to attach")
            done = catch("--pid", sleeper.pid)
            assert done.returncode == 2 and "already traced" in done.stderr
        finally:
            other.kill()
    finally:
        procs.kill_and_reap(sleeper)
    # a command that is not QEMU, started by the script: killed, not left running
    done = catch("--duration", "5", "--", "/bin/sleep", "300")
    assert done.returncode == 2
    killed = re.search(r"killed process (\d+)", done.stdout)
    assert killed, done.stdout
    assert not procs.process_exists(int(killed.group(1)))


def test_script_gdb_missing_without_python_or_too_old_exits_2_in_one_line(qemu, workdir):
    """Before anything is attached: gdb missing, a real gdb built without Python (Debian's
    gdb-minimal, unpacked, not installed), and a too-old gdb (a STUB: the real gdb told it is
    12.1).  One line each, exit 2; QEMU is not traced and still answers."""
    minimal = sw.gdb_minimal()
    old = sw.old_gdb_stub(workdir)
    with qsd(qemu, workdir) as (daemon, sock):
        cases = [("/nonexistent/gdb", "gdb not found: /nonexistent/gdb (Debian: apt-get "
                                      "install gdb)"),
                 (old, "qemu-chardev-gdb: gdb 12.1 is too old: needs gdb 13.0 or later")]
        if minimal is not None:
            cases.append((minimal, f"{minimal} was built without Python; install a gdb with "
                                   "Python (Debian: apt-get install gdb, not gdb-minimal)"))
        for gdb, line in cases:
            done = subprocess.run([str(sw.SCRIPT), "--gdb", str(gdb), "--pid", str(daemon.pid),
                                   "--duration", "5"], capture_output=True, text=True,
                                  timeout=120, stdin=subprocess.DEVNULL)
            assert done.returncode == 2, (gdb, done.stdout, done.stderr)
            assert done.stderr.splitlines() == [f"catch-disconnect-during-write: {line}"], \
                (gdb, done.stderr)
            assert done.stdout == ""
        assert procs.tracer_pid(daemon.pid) == 0 and sw.qmp_answers(sock)
    assert minimal is not None, "Debian's gdb-minimal package could not be unpacked"


def test_no_hardware_watchpoints_falls_back_visibly(qemu_reverted, workdir):
    """With `set can-use-hw-watchpoints 0` gdb would single-step a software watchpoint: the
    watch refuses that, says so, and covers the chardev with the breakpoint instead."""
    with qsd(qemu_reverted, workdir) as (daemon, sock):
        result = support.run_gdb(qemu_reverted.storage_daemon, pid=daemon.pid, commands=[
            "set can-use-hw-watchpoints 0",
            "qemu watch-disconnect --arm-only",
            "qemu watch-disconnect --status --json",
            "qemu watch-disconnect --off"])
        text = result.outputs[1]
        assert re.search(r"^mon0\s.*breakpoint on tcp_chr_free_connection", text, re.M), text
        assert "gdb gave no hardware watchpoint" in text
        status = json.loads(result.outputs[2])
        assert status["coverage"][0]["fallback"] and status["coverage"][0]["watched"] == []
        assert_left_running(daemon, sock, qemu_reverted)
