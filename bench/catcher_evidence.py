#!/usr/bin/python3
"""Where the catcher's few percent of QMP throughput go: stops, context switches, CPU time.

    bench/catcher_evidence.py [--version 7.2] [--rounds 5] [--commands 3000] [--json FILE]
                              [--loads long-lived connect-per-command]

A qemu-storage-daemon (fixed build, QMP monitor mon0) serves query-version round trips, one
long-lived connection (1 x COMMANDS) and a connection per command (COMMANDS/10 x 1), under:
  none      no gdb
  control   plain gdb attached with one hardware watchpoint on mon0->state (condition 0)
  catcher   scripts/catch-disconnect-during-write --pid
  catcher-breakpoint  the same with --max-debug-registers 0: no watchpoint, the breakpoint on
            tcp_chr_free_connection for every chardev (one stop per connection's end)
The modes rotate within each round; each run has its own daemon, warmed by 300 commands.
Besides the rate (ratio to none, same round), each run records, from /proc, over the timed
load only: the daemon's context switches (voluntary + involuntary, every thread: each ptrace
stop is one), its CPU time (schedstat, every thread) and its thread count; so a mode that
stops the daemon per command or per connection, or makes it burn more CPU, shows it.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

import support  # noqa: E402
from support import watch as sw  # noqa: E402
import watch_disconnect as wd  # noqa: E402

MODES = ("none", "control", "catcher", "catcher-breakpoint")


def task_counters(pid):
    """(context switches, CPU ns, threads) summed over every thread of ``pid``."""
    switches = cpu = threads = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                cpu += int(f.read().split()[0])
            threads += 1
        except OSError:
            continue
    return switches, cpu, threads


def measured(pid, workload):
    s0, c0, _t = task_counters(pid)
    result = workload()
    s1, c1, threads = task_counters(pid)
    n = result["commands"]
    result.update(switches_per_command=(s1 - s0) / n, cpu_us_per_command=(c1 - c0) / n / 1000,
                  threads=threads)
    return result


def run_once(binary, mode, connections, commands):
    with tempfile.TemporaryDirectory(prefix="qcg-ce-", dir="/tmp") as tmp:
        with wd.daemon(binary, tmp) as (qsd, sock):
            sw.qmp_round_trips(sock, 1, 300)

            def workload():
                return measured(qsd.pid, lambda: sw.qmp_round_trips(sock, connections, commands))
            if mode.startswith("catcher"):
                extra = ["--max-debug-registers", "0"] if mode == "catcher-breakpoint" else []
                with sw.CatcherRun(["--pid", qsd.pid, "--quiet", *extra],
                                   workdir=Path(tmp) / "c") as run:
                    run.wait_watching()
                    result = workload()
                    rc = run.interrupt()
                if rc != 0:
                    raise RuntimeError(f"catcher: exit {rc}\n{run.describe()}")
                result["stop_calls"] = run.summary["stop_calls"]
            elif mode == "control":
                state = support.raw_gdb_values(binary, pid=qsd.pid,
                                               exprs=[f"(unsigned long){wd.MON0_STATE}"])[0]
                result = wd._plain_gdb(binary, qsd.pid, [f"watch *(unsigned int *) {state}",
                                                         "condition 1 0"], workload)
            else:
                result = workload()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="7.2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--commands", type=int, default=3000)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--loads", nargs="+", choices=("long-lived", "connect-per-command"),
                        default=["long-lived", "connect-per-command"])
    args = parser.parse_args()
    binary = support.QemuBuild.get(args.version, "fixed").storage_daemon
    out = {}
    for load, (connections, commands) in (("long-lived", (1, args.commands)),
                                          ("connect-per-command",
                                           (args.commands // 10, 1))):
        if load not in args.loads:
            continue
        runs = {m: [] for m in MODES}
        for rnd in range(args.rounds):
            order = MODES[rnd % len(MODES):] + MODES[:rnd % len(MODES)]
            for mode in order:
                runs[mode].append(run_once(binary, mode, connections, commands))
        base = [r["per_s"] for r in runs["none"]]
        summary = {}
        for mode in MODES:
            ratios = [r["per_s"] / b for r, b in zip(runs[mode], base)]
            summary[mode] = {
                "per_s": round(statistics.median(r["per_s"] for r in runs[mode])),
                "ratio": {"median": round(statistics.median(ratios), 3),
                          "min": round(min(ratios), 3), "max": round(max(ratios), 3),
                          "n": len(ratios)},
                "switches_per_command": round(statistics.median(
                    r["switches_per_command"] for r in runs[mode]), 2),
                "cpu_us_per_command": round(statistics.median(
                    r["cpu_us_per_command"] for r in runs[mode]), 1),
                "threads": max(r["threads"] for r in runs[mode]),
                "stop_calls": [r.get("stop_calls") for r in runs[mode]]
                if mode.startswith("catcher") else None}
        out[load] = {"connections": connections, "commands": commands, "modes": summary}
        print(f"{load} ({connections} x {commands}):")
        for mode, s in summary.items():
            print(f"  {mode:18} {s['per_s']:6}/s ratio {s['ratio']['median']:.3f} "
                  f"({s['ratio']['min']:.3f}-{s['ratio']['max']:.3f}, n={s['ratio']['n']}) "
                  f"switches/cmd {s['switches_per_command']} cpu us/cmd "
                  f"{s['cpu_us_per_command']} threads {s['threads']}"
                  + (f" stop() calls {s['stop_calls']}" if s["stop_calls"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
