#!/usr/bin/python3
"""Benchmark and accuracy check of scripts/catch-disconnect-during-write on real QEMU.

    /usr/bin/python3 bench/watch_disconnect.py [--versions 7.2 10.2] [--at-once 100]
        [--mid-burst 20] [--connections 10] [--commands 300] [--repeat 3] [--no-valgrind]
        [--json FILE]

For each QEMU version (builds from fixtures/qemu/build-qemu, variants fixed and reverted):

  accuracy  reverted build, a qemu-storage-daemon with a QMP monitor on a unix socket (mon0,
            served by the monitor I/O thread); AT_ONCE clients hang up right after the greeting
            and MID_BURST hang up in the middle of a burst of responses, interleaved.
              - under the catcher, with QEMU's own chr_socket_* trace events on (QEMU 9.x+):
                reports (warnings + errors + a crash report) against the trace's count of
                disconnects that did not come from the write path (tcp_chr_write disconnects
                with the lock held and traces chr_socket_poll_err first) - same run;
              - in a separate run under plain gdb with a dprintf on tcp_chr_free_connection
                (state, lock owner, calling thread): its count of unlocked teardowns.
  fixed     the same loop on the fixed build under the catcher: reports (must be 0), and the
            teardowns the catcher saw done with the lock, against the trace's disconnects.
  speed     fixed build: CONNECTIONS clients in turn each doing COMMANDS query-version round
            trips (connects and hang-ups included), then one client doing all of them (the
            hot path alone); commands per second without gdb (baseline), with plain gdb
            attached and nothing armed, with plain gdb and one hardware watchpoint on mon0's
            state (the cost of armed debug registers, without any Python), under the catcher,
            and under Valgrind's Helgrind and DRD (first shape only).  Each measurement has a
            fresh daemon, warmed up by 300 untimed commands; the modes rotate REPEAT times;
            medians.  Ratios are against the baseline of this run.
  test-char QEMU's tests/unit/test-char launched under the catcher (fixed and reverted):
            its exit status, its TAP "ok" count, reports, teardowns seen.
  helgrind  the hang-up loop (10 + 10) under Valgrind's Helgrind, fixed and reverted: its race
            reports, and those naming the disconnect path.

Prints a Markdown table per part and, with --json, writes all numbers to FILE.
"""
import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import support  # noqa: E402
from support import watch as sw  # noqa: E402
from support.gdb import GdbProcess  # noqa: E402


def machine():
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="ascii", errors="replace"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gdb_version = subprocess.run(["gdb", "--version"], capture_output=True,
                                 text=True).stdout.splitlines()[0]
    return f"{os.cpu_count()}-core {cpu}, {platform.platform()}, {gdb_version}"


@contextlib.contextmanager
def daemon(binary, workdir, trace=False, wrapper=(), ready_timeout=30.0):
    """qemu-storage-daemon with QMP monitor mon0 on WORKDIR/mon0.sock (optionally wrapped,
    e.g. by valgrind); yields (QemuDaemon, socket path)."""
    sock = Path(workdir) / "mon0.sock"
    args = support.monitor_args(sock)
    if trace:
        args += support.trace_args(sw.CHR_TRACE)
    if wrapper:
        qsd = support.QemuDaemon(wrapper[0], [*wrapper[1:], str(binary), *args], workdir,
                                 ready_timeout=ready_timeout)
    else:
        qsd = support.QemuDaemon(binary, args, workdir, ready_timeout=ready_timeout)
    with qsd:
        support.wait_until(lambda: sock.exists() and sw.qmp_answers(sock), ready_timeout,
                           interval=0.2, what="QMP monitor")
        yield qsd, sock


def has_trace_events(binary):
    """QEMU 9.x+ has the chr_socket_* trace events (7.2 does not)."""
    out = subprocess.run([str(binary), "--trace", "help"], capture_output=True, text=True,
                         timeout=30).stdout
    return "chr_socket_disconnect" in out


def catcher_loop(binary, at_once, mid_burst, trace):
    """One daemon, the catcher attached, the hang-up loop; trace lines counted only while the
    catcher watched (the readiness and liveness checks also connect and hang up)."""
    with tempfile.TemporaryDirectory(prefix="qcg-bw-", dir="/tmp") as tmp:
        with daemon(binary, tmp, trace=trace) as (qsd, sock):
            with sw.CatcherRun(["--pid", qsd.pid, "--quiet"], workdir=Path(tmp) / "c") as run:
                run.wait_watching()
                before = len(qsd.stderr_text())
                counts = sw.hangup_loop(sock, at_once, mid_burst)
                time.sleep(0.5)
                window = qsd.stderr_text()[before:]
                rc = run.interrupt()
            summary = run.summary
            events = run.events()
            alive = qsd.alive() and sw.qmp_answers(sock)
    kinds = {}
    for e in events:
        kinds[e["id"]] = kinds.get(e["id"], 0) + 1
    c = summary["counters"]
    row = {"hangups": counts.total, "at_once": counts.at_once, "mid_burst": counts.mid_burst,
           "refused": counts.refused, "exit": rc,
           "warnings": kinds.get("disconnect-without-write-lock", 0),
           "errors": kinds.get("disconnect-during-write", 0), "crash": kinds.get("crash", 0),
           "reports": len(events), "teardowns": c["teardowns"],
           "locked_teardowns": c["locked_teardowns"], "reason": summary["reason"],
           "alive_after": alive,
           "labels": sorted({e["chardev"]["label"] for e in events if e["chardev"]["label"]})}
    if trace:
        t = sw.disconnect_trace_counts(window, "mon0")
        row["trace_disconnects"] = t["disconnects"]
        row["trace_locked"] = t["locked"]
    return row


def dprintf_loop(binary, at_once, mid_burst):
    with tempfile.TemporaryDirectory(prefix="qcg-bd-", dir="/tmp") as tmp:
        with daemon(binary, tmp) as (qsd, sock):
            counts = {}
            result = sw.dprintf_teardowns(
                binary, qsd.pid, lambda: counts.update(
                    done=sw.hangup_loop(sock, at_once, mid_burst)))
    row = result.get("mon0", {"teardowns": 0, "unlocked": 0, "locked": 0, "finalize": 0})
    return {"hangups": counts["done"].total, **row}


def accuracy(version, args, out):
    build = support.QemuBuild.get(version, "reverted")
    binary = build.storage_daemon
    trace = has_trace_events(binary)
    runs = [catcher_loop(binary, args.at_once, args.mid_burst, trace)
            for _ in range(args.repeat)]
    dprintf = dprintf_loop(binary, args.at_once, args.mid_burst)
    out["accuracy"][version] = {"catcher": runs, "dprintf": dprintf, "trace": trace}
    for r in runs:
        trace_cell = "n/a"
        if "trace_disconnects" in r:
            trace_cell = f"{r['trace_disconnects']} ({r['trace_locked']} from the write path)"
        print(f"| {version} | {r['hangups']} ({r['at_once']}+{r['mid_burst']}) | "
              f"{r['reports']} ({r['warnings']} W, {r['errors']} E, {r['crash']} crash) | "
              f"{r['locked_teardowns']} | {r['reports'] + r['locked_teardowns']} | "
              f"{trace_cell} | {dprintf['unlocked']} of {dprintf['hangups']} | {r['exit']} | "
              f"{r['reason']} |")


def fixed(version, args, out):
    build = support.QemuBuild.get(version, "fixed")
    trace = has_trace_events(build.storage_daemon)
    r = catcher_loop(build.storage_daemon, args.at_once, args.mid_burst, trace)
    out["fixed"][version] = r
    print(f"| {version} | {r['hangups']} | {r['reports']} | {r['teardowns']} "
          f"({r['locked_teardowns']} locked) | {r.get('trace_disconnects', 'n/a')} | "
          f"{r['exit']} | {r['alive_after']} |")


MON0_STATE = "&((SocketChardev *) mon_list.tqh_first->chr.chr)->state"


def _plain_gdb(binary, pid, setup, workload):
    """Run WORKLOAD while plain gdb (no extension) is attached with SETUP done."""
    gdb = GdbProcess(binary, pid=pid, extension=False,
                     setup=["handle SIGPIPE nostop noprint pass", *setup],
                     commands=["continue", "delete", "detach"])
    try:
        gdb.wait_for_marker("0", "BEGIN")
        support.wait_until(lambda: not support.procs.is_trace_stopped(pid), 30.0,
                           what="gdb to resume")
        time.sleep(0.3)
        result = workload()
        if gdb.proc.poll() is not None or support.procs.tracer_pid(pid) != gdb.proc.pid:
            raise RuntimeError("plain gdb let go of the process early:\n" + gdb.stdout_so_far())
        os.kill(pid, 2)            # SIGINT: gdb stops and does not pass it on
        gdb.finish(60)
    finally:
        gdb.kill()
    return result


def speed_once(binary, mode, connections, commands):
    with tempfile.TemporaryDirectory(prefix="qcg-bs-", dir="/tmp") as tmp:
        wrapper = ()
        timeout = 30.0
        if mode in ("helgrind", "drd"):
            wrapper = ("valgrind", f"--tool={mode}", "-q", "--log-file=" + str(Path(tmp) / "vg"))
            timeout = 300.0
        with daemon(binary, tmp, wrapper=wrapper, ready_timeout=timeout) as (qsd, sock):
            sw.qmp_round_trips(sock, 1, 50 if wrapper else 300)      # warm-up, not timed

            def workload():
                return sw.qmp_round_trips(sock, connections, commands)
            if mode == "catcher":
                with sw.CatcherRun(["--pid", qsd.pid, "--quiet"], workdir=Path(tmp) / "c") as run:
                    run.wait_watching()
                    result = workload()
                    rc = run.interrupt()
                if rc != 0 or run.summary["reason"] != "stop requested":
                    raise RuntimeError(f"catcher: exit {rc}\n{run.describe()}")
                result["reports"] = len(run.events())
                result["stop_calls"] = run.summary["stop_calls"]
                result["stop_seconds"] = run.summary["stop_seconds"]
            elif mode == "gdb-attached":
                result = _plain_gdb(binary, qsd.pid, [], workload)
            elif mode == "gdb+hw-watch":
                # the same debug register as the catcher's, with a false condition instead of
                # a Python stop(): gdb stops briefly on each change and goes on
                state = support.raw_gdb_values(binary, pid=qsd.pid,
                                               exprs=[f"(unsigned long){MON0_STATE}"])[0]
                result = _plain_gdb(binary, qsd.pid, [f"watch *(unsigned int *) {state}",
                                                      "condition 1 0"], workload)
            else:
                result = workload()
            if mode in ("helgrind", "drd"):
                text = (Path(tmp) / "vg").read_text(errors="replace")
                result["valgrind_reports"] = len(re.findall(r"^==\d+== (?:Possible data race|"
                                                            r"Conflicting)", text, re.M))
    return result


SPEED_MODES = ("baseline", "gdb-attached", "gdb+hw-watch", "catcher")


def speed(version, args, out):
    binary = support.QemuBuild.get(version, "fixed").storage_daemon
    out["speed"][version] = {}
    for connections, commands in ((args.connections, args.commands),
                                  (1, args.connections * args.commands)):
        shape = f"{connections}x{commands}"
        rates = {mode: [] for mode in SPEED_MODES}
        extra = {"stop_calls": 0, "stop_seconds": 0.0, "catcher_reports": 0}
        for rep in range(args.repeat):
            for mode in SPEED_MODES[rep % len(SPEED_MODES):] + SPEED_MODES[:rep % len(SPEED_MODES)]:
                r = speed_once(binary, mode, connections, commands)
                rates[mode].append(r["per_s"])
                if mode == "catcher":
                    extra["catcher_reports"] += r["reports"]
                    extra["stop_calls"] += r["stop_calls"]
                    extra["stop_seconds"] += r["stop_seconds"]
        if not args.no_valgrind and connections > 1:
            for mode in ("helgrind", "drd"):
                r = speed_once(binary, mode, connections, commands)
                rates[mode] = [r["per_s"]]
                extra[f"{mode}_reports"] = r["valgrind_reports"]
        base = statistics.median(rates["baseline"])
        result = {m: {"per_s": statistics.median(v), "runs": v,
                      "ratio": statistics.median(v) / base} for m, v in rates.items()}
        result.update(extra)
        out["speed"][version][shape] = result
        cells = " | ".join(f"{result[m]['per_s']:.0f}/s ({result[m]['ratio']:.3f})"
                           if m in result else "-" for m in (*SPEED_MODES, "helgrind", "drd"))
        print(f"| {version} | {shape} | {cells} | {extra['stop_calls'] // args.repeat} "
              f"({1000 * extra['stop_seconds'] / args.repeat:.1f} ms) |")


def test_char(version, args, out):
    rows = {}
    for variant in ("fixed", "reverted"):
        build = support.QemuBuild.get(version, variant)
        with tempfile.TemporaryDirectory(prefix="qcg-bt-", dir="/tmp") as tmp:
            started = time.monotonic()
            with sw.CatcherRun(["--quiet", "--", build.test_char], workdir=tmp, cwd=tmp) as run:
                rc = run.wait(600)
            seconds = time.monotonic() - started
            summary = run.summary
            oks = len(re.findall(r"^ok \d+", run.stdout(), re.M))
            not_ok = len(re.findall(r"^not ok \d+", run.stdout(), re.M))
            rows[variant] = {"exit": rc, "program_exit": summary["exit_status"], "ok": oks,
                             "not_ok": not_ok, "reports": len(run.events()),
                             "teardowns": summary["counters"]["teardowns"],
                             "locked": summary["counters"]["locked_teardowns"],
                             "created": summary["counters"]["created"], "seconds": seconds}
        r = rows[variant]
        print(f"| {version} | {variant} | {r['program_exit']} | {r['ok']} ok, {r['not_ok']} "
              f"not ok | {r['reports']} | {r['teardowns']} ({r['locked']} locked) | "
              f"{r['created']} | {r['exit']} | {r['seconds']:.1f} s |")
    out["test_char"][version] = rows


def helgrind_detection(version, args, out):
    """Race reports of Helgrind on the same hang-up loop, fixed and reverted (what a race
    detector tells apart, for comparison with the catcher's 0 vs every teardown)."""
    rows = {}
    for variant in ("fixed", "reverted"):
        binary = support.QemuBuild.get(version, variant).storage_daemon
        with tempfile.TemporaryDirectory(prefix="qcg-bh-", dir="/tmp") as tmp:
            log = Path(tmp) / "helgrind.log"
            wrapper = ("valgrind", "--tool=helgrind", "-q", f"--log-file={log}")
            with daemon(binary, tmp, wrapper=wrapper, ready_timeout=300.0) as (qsd, sock):
                counts = sw.hangup_loop(sock, 10, 10, pause=0.05)
                time.sleep(2.0)
            text = log.read_text(errors="replace")
        races = [b for b in re.split(r"(?m)^==\d+== -{10,}", text) if "Possible data race" in b]
        on_path = [b for b in races
                   if re.search(r"tcp_chr_free_connection|tcp_chr_change_state|"
                                r"tcp_chr_disconnect", b)]
        rows[variant] = {"hangups": counts.total, "race_reports": len(races),
                         "on_disconnect_path": len(on_path)}
        print(f"| {version} | {variant} | {counts.total} | {len(races)} | {len(on_path)} |")
    out["helgrind"][version] = rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", nargs="+", default=["7.2", "10.2"])
    parser.add_argument("--at-once", type=int, default=100)
    parser.add_argument("--mid-burst", type=int, default=20)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-valgrind", action="store_true")
    parser.add_argument("--parts", nargs="+",
                        default=["accuracy", "fixed", "speed", "test-char", "helgrind"])
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        args.no_valgrind = True
    out = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "args": vars(args),
           "accuracy": {}, "fixed": {}, "speed": {}, "test_char": {}, "helgrind": {}}
    print(f"{out['date']}, {out['machine']}\n")
    sections = (
        ("accuracy", accuracy,
         "| QEMU (reverted) | hang-ups | catcher reports | catcher: locked teardowns | "
         "reports + locked | trace: disconnects (same run) | dprintf: unlocked teardowns "
         "(separate run) | exit | ended |\n|---|---|---|---|---|---|---|---|---|"),
        ("fixed", fixed,
         "| QEMU (fixed) | hang-ups | reports | teardowns seen | trace: disconnects | "
         "exit | QMP answers after |\n|---|---|---|---|---|---|---|"),
        ("speed", speed,
         "| QEMU (fixed) | connections x commands | baseline | gdb attached | gdb + plain "
         "hw watchpoint | catcher | helgrind | drd | catcher stop() calls (time) |\n"
         "|---|---|---|---|---|---|---|---|---|"),
        ("test-char", test_char,
         "| QEMU | variant | test-char exit | TAP | reports | teardowns seen | "
         "chardevs created | catcher exit | time |\n|---|---|---|---|---|---|---|---|---|"),
    )
    for part, measure, header in sections:
        if part in args.parts:
            print(header)
            for version in args.versions:
                measure(version, args, out)
            print()
    if "helgrind" in args.parts and not args.no_valgrind:
        print("| QEMU | variant | hang-ups under Helgrind | race reports | reports naming the "
              "disconnect path |\n|---|---|---|---|---|")
        for version in args.versions:
            helgrind_detection(version, args, out)
        print()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
