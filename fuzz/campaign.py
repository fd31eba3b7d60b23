"""The fuzz campaign: damaged copies of real QEMU cores through every read-only command.

    fuzz/run-campaign --cores N --seed S [--work DIR] [--timeout SECONDS] [--out FILE]

Base cores (made once into --work and reused): a gcore of an idle qemu-storage-daemon 7.2
(fixed build; mon0 with a client, cli0 reconnecting, tcp0, ring0, null0) and the kernel crash
core of the 2019 race (7.2 with the fixes reverted, fixtures/qemu/make-race-core).

For each base, one healthy run records the report and the read set: every range the
extension read through ``target.memory.Memory`` during ``qemu diagnose`` (``QCG_READ_LOG``),
plus each thread's stack from its stack pointer to the end of its mapping (gdb's unwinder reads
those).  Then each mutated copy (see mutate.py) goes through ``chardev-postmortem`` and one
``gdb -batch`` running ``qemu chardev list``, ``qemu chardev show LABEL``, ``qemu mutex
LABEL``, ``qemu gsource ADDRESS``, ``qemu gsource census``, ``qemu qiotask list``,
``qemu diagnose`` (with and without --json).

The oracle (a run fails when any holds):
  traceback     a Python traceback or "Python Exception" anywhere, or an "internal error"
  gdb-crash     gdb died of a signal, or printed "Fatal signal" / "internal-error"
  timeout       a run went past --timeout
  refused       exit 2 (or a one-line refusal) for input that can be analysed: the notes and
                program headers are intact and the binary is the right one
  accepted      not exit 2 for input that cannot be analysed (wrong binary, cut in the notes)
  silent        the report says complete: true, the mutation changed bytes of the read set,
                and the report's conclusions differ from the healthy one's (crash, threads,
                chardevs with their type/state/lock owner, findings).  A change the report
                did not notice that changed no conclusion (an fd, a refcount within range) is
                not counted: no reader can tell a flipped integer from a real one.
  truncated     a cut-off core whose report says complete: true or names no missing range
  false-error   an error finding the healthy report does not have, when the mutation did not
                touch the read set of the finding's evidence, or a use-after-free error made of
                a damaged object (damage alone must never make a finding)
"""
import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "gdbext"))
sys.path.insert(0, str(REPO))

import mutate  # noqa: E402  (fuzz/ is on sys.path: this file's folder)

POSTMORTEM = REPO / "scripts" / "chardev-postmortem"
LOADER = REPO / "gdbext" / "qemu-chardev-gdb.py"
MARK = "@@QCG-FUZZ@@"
DEAD = ("finalized", "freed")
BAD_TEXT = re.compile(r"Traceback \(most recent call last\)|Python Exception|internal error"
                      r"|internal-error|Fatal signal")
GDB = ["gdb", "-nx", "-batch", "-iex", "set pagination off", "-iex", "set style enabled off",
       "-iex", "set width 0", "-iex", "set debuginfod enabled off", "-iex", "set confirm off"]


# --- base cores -------------------------------------------------------------------------

def base_cores(work, names=("idle-7.2", "race-7.2")):
    """[(name, core path, binary, wrong binary)] made once into ``work``.  A name is
    "idle-VERSION" (a gcore of an idle daemon of the fixed build: mon0 with a client, cli0
    reconnecting, tcp0, ring0, null0) or "race-VERSION" (make-race-core's kernel crash core
    of the 2019 race on the build with the fixes reverted)."""
    from tests.support.builds import QemuBuild
    out = []
    for name in names:
        kind, _, version = name.partition("-")
        fixed = QemuBuild.get(version, "fixed")
        reverted = QemuBuild.get(version, "reverted")
        if kind == "idle":
            core = work / name / "idle.core"
            if not core.is_file():
                from tests.support.gdb import gcore
                from tests.support.scenarios import all_chardevs_scenario
                core.parent.mkdir(parents=True, exist_ok=True)
                with all_chardevs_scenario(fixed.storage_daemon, core.parent) as sc:
                    time.sleep(1.5)
                    gcore(sc.daemon.pid, core, binary=fixed.storage_daemon)
            out.append((name, core, Path(fixed.storage_daemon), Path(reverted.storage_daemon)))
        elif kind == "race":
            core = work / name / "race.core"
            if not core.is_file():
                from tests.support.race_core import make_race_core
                core.parent.mkdir(parents=True, exist_ok=True)
                make_race_core(reverted, core)
            out.append((name, core, Path(reverted.storage_daemon), Path(fixed.storage_daemon)))
        else:
            raise SystemExit(f"fuzz: unknown base {name!r} (idle-VERSION or race-VERSION)")
    return out


# --- running ----------------------------------------------------------------------------

def _env(extra=None):
    env = dict(os.environ, NO_COLOR="1")
    env.pop("DEBUGINFOD_URLS", None)
    env.pop("QCG_DEBUG", None)
    env.update(extra or {})
    return env


def _run(argv, timeout, env=None):
    """(returncode or None on timeout, stdout, stderr, seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=_env(env), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        code = None
    return (code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
            time.monotonic() - started)


def run_postmortem(binary, core, timeout):
    code, out, err, secs = _run(["/usr/bin/python3", str(POSTMORTEM), "--format", "json",
                                 "--timeout", f"{timeout:g}", str(binary), str(core)],
                                timeout + 30)
    report = None
    if code is not None and out.strip():
        try:
            report = json.loads(out)
        except ValueError:
            report = None
    if isinstance(report, dict) and "reports" in report:
        report = report["reports"][0]
    return code, report, out, err, secs


def command_list(healthy):
    """The read-only commands to run, from what the healthy report holds."""
    cmds = ["qemu chardev list", "qemu chardev list --json", "qemu gsource census",
            "qemu qiotask list", "qemu diagnose --no-census", "qemu diagnose --json"]
    labels = [c["label"] for c in healthy.get("chardevs", []) if c.get("label")]
    for label in labels[:5]:
        cmds.append(f"qemu chardev show {label}")
    for label in labels[:2]:
        cmds.append(f"qemu mutex {label}")
    sources = [g.get("address") for c in healthy.get("chardevs", [])
               for g in c.get("gsources") or [] if g.get("address")]
    for address in sources[:3]:
        cmds.append(f"qemu gsource {address}")
    for task in (healthy.get("tasks") or [])[:2]:
        cmds.append(f"qemu qiotask {task['address']}")
    return cmds


def gdb_commands_argv(binary, core, cmds, pre=()):
    argv = list(GDB) + ["-ex", f"source {LOADER}"]
    for command in pre:
        argv += ["-ex", command]
    for i, command in enumerate(cmds):
        argv += ["-ex", f'python gdb.write("{MARK} {i}\\n")', "-ex", command]
    argv += ["-ex", f'python gdb.write("{MARK} end\\n")', str(binary), "--core", str(core)]
    return argv


STACKS = ("python\nimport gdb\nfor t in gdb.selected_inferior().threads():\n"
          "    t.switch()\n"
          "    gdb.write('@@SP@@ %d\\n' % int(gdb.parse_and_eval('$sp')))\nend")


def healthy_run(name, core, binary, work, timeout):
    """The healthy report, the commands and the read set of one base core."""
    log = work / f"{name}.reads"
    if log.exists():
        log.unlink()
    code, out, err, _secs = _run(gdb_commands_argv(binary, core, ["qemu diagnose --json"],
                                                   pre=[STACKS]),
                                 timeout, {"QCG_READ_LOG": str(log)})
    body = out.split(f"{MARK} 0\n", 1)[1].split(f"{MARK} end\n", 1)[0]
    healthy = json.loads(body)
    reads = set()
    if log.exists():
        for line in log.read_text().splitlines():
            a, n = line.split()
            reads.add((int(a, 16), int(n, 16)))
    img = mutate.CoreImage(core)
    for sp in re.findall(r"@@SP@@ (\d+)", out):
        seg = img.segment_of(int(sp))
        if seg is not None:
            start = max(seg.vaddr, int(sp) - 512)
            reads.add((start, seg.vaddr + seg.filesz - start))
    pm_code, pm_report, _o, pm_err, _s = run_postmortem(binary, core, timeout)
    if pm_code not in (0, 1) or pm_report is None or not pm_report.get("complete"):
        raise SystemExit(f"fuzz: the healthy {name} core does not give a complete report "
                         f"(exit {pm_code}): {pm_err.strip()[-300:]}")
    return {"report": pm_report, "reads": sorted(reads), "commands": command_list(healthy),
            "img": img}


# --- the oracle -------------------------------------------------------------------------

def conclusions(report):
    """What a report concludes (the parts the silent-damage oracle compares)."""
    crash = report.get("crash") or {}
    return {
        "crash": (crash.get("signal"), crash.get("lwp")),
        "threads": sorted((t["lwp"], t.get("function")) for t in report.get("threads", [])),
        "chardevs": sorted((str(c.get("label")), str(c.get("type")), str(c.get("state")),
                            str(c.get("liveness") if c.get("liveness") in DEAD else "-"),
                            str((c.get("write_lock") or {}).get("owner_lwp")))
                           for c in report.get("chardevs", [])),
        "findings": sorted((f["id"], f["severity"], str(f.get("chardev")))
                           for f in report.get("findings", [])),
    }


def _overlaps(touched, reads):
    for a, n in touched:
        for b, m in reads:
            if a < b + m and b < a + n:
                return True
    return False


def _reads_index(reads):
    return sorted(reads)


def touches(touched, reads):
    """True when a touched range overlaps one of the (sorted) read ranges."""
    import bisect
    starts = [r[0] for r in reads]
    longest = max((r[1] for r in reads), default=0)
    for a, n in touched:
        i = bisect.bisect_right(starts, a + n - 1)
        j = bisect.bisect_left(starts, a - longest)
        if _overlaps([(a, n)], reads[j:i]):
            return True
    return False


def judge(mutation, base, pm, cmd_run, timeout):
    """[(failure kind, explanation)] for one mutated core."""
    img, healthy = base["img"], base["report"]
    code, report, out, err, secs = pm
    failures = []
    unusable = mutate.expected_unusable(mutation, img)
    texts = [("postmortem", out + err)]
    if cmd_run is not None:
        texts.append(("commands", cmd_run[1] + cmd_run[2]))
    for who, text in texts:
        bad = BAD_TEXT.search(text)
        if bad:
            line = text[max(0, bad.start() - 200):bad.end() + 300]
            kind = "gdb-crash" if bad.group(0) in ("Fatal signal", "internal-error") \
                else "traceback"
            failures.append((kind, f"{who}: ...{line.strip()}"))
    if code is None:
        failures.append(("timeout", f"chardev-postmortem ran past {timeout:g} s"))
    if cmd_run is not None:
        if cmd_run[0] is None:
            failures.append(("timeout", f"the gdb commands ran past {timeout:g} s"))
        elif cmd_run[0] < 0:
            failures.append(("gdb-crash", f"gdb died of signal {-cmd_run[0]}"))
    if report is None:
        if code is not None:
            failures.append(("traceback", f"chardev-postmortem printed no report (exit {code}):"
                                          f" {err.strip()[-300:]}"))
        return failures
    if unusable:
        if code != 2 or not report.get("error"):
            failures.append(("accepted", f"exit {code} for an unusable input "
                                         f"({mutation.detail})"))
        return failures
    if code == 2:
        failures.append(("refused", f"exit 2: {report.get('error') or err.strip()[-200:]}"))
        return failures
    if code not in (0, 1):
        failures.append(("refused", f"exit {code}"))
    touched = touches(mutation.touched, base["reads"]) if mutation.touched else False
    cut = mutation.truncate_to is not None and mutation.truncate_to < max(
        s.offset + s.filesz for s in img.layout.loads)
    if cut:
        missing = (report.get("target") or {}).get("missing_ranges")
        if report.get("complete") or not missing:
            failures.append(("truncated", "a cut-off core gave complete: "
                             f"{report.get('complete')}, missing_ranges {missing!r}"))
        if not report.get("threads"):
            failures.append(("truncated", "a cut-off core's report lists no threads"))
        if healthy.get("crash") and not report.get("crash"):
            failures.append(("truncated", "a cut-off core's report lost the crash block"))
    elif report.get("complete") and touched and conclusions(report) != conclusions(healthy):
        before, after = conclusions(healthy), conclusions(report)
        diff = {k: {"healthy": before[k], "mutated": after[k]} for k in before
                if before[k] != after[k]}
        failures.append(("silent", "complete: true with different conclusions: "
                         + json.dumps(diff)[:600]))
    # By id: damage to a label makes the same finding name its chardev by address.
    healthy_errors = {f["id"] for f in healthy.get("findings", []) if f["severity"] == "error"}
    for finding in report.get("findings", []):
        if finding["severity"] != "error" or finding["id"] in healthy_errors:
            continue
        failures.append(("false-error", f"{finding['id']}: {finding['summary'][:300]}"))
    return failures


# --- the campaign -----------------------------------------------------------------------

def one_core(rng, base, work, args, index, replay=None):
    img = base["img"]
    copy = work / "mutant.core"
    choice = rng.random()
    saved = None
    if replay is not None:        # a recorded mutation: its kind decides how it is applied
        mutation = replay
        choice = 0.0 if mutation.truncate_to is not None else \
            0.13 if mutation.wrong_binary else 1.0
    if choice < 0.12:
        mutation = replay or mutate.truncation(img, rng)
        with open(base["core"], "rb") as src, open(copy, "wb") as dst:
            remaining = mutation.truncate_to
            while remaining > 0:
                chunk = src.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                dst.write(chunk)
                remaining -= len(chunk)
        target = copy
    elif choice < 0.16:
        mutation = replay or mutate.Mutation("wrong-binary", f"analysed with {base['wrong']}",
                                             wrong_binary=True)
        target = base["core"]
    else:
        if replay is None:
            with open(base["work_copy"], "rb") as handle:
                mutation = mutate.random_memory_mutation(img, rng, handle, base["reads"])
        saved = mutate.apply(base["work_copy"], mutation)
        target = base["work_copy"]
    binary = base["wrong"] if mutation.wrong_binary else base["binary"]
    try:
        pm = run_postmortem(binary, target, args.timeout)
        cmd_run = None
        if not mutate.expected_unusable(mutation, img):
            code, out, err, _secs = _run(gdb_commands_argv(binary, target, base["commands"]),
                                         args.timeout + 30)
            cmd_run = (code, out, err)
        failures = judge(mutation, base, pm, cmd_run, args.timeout)
    finally:
        if saved is not None:
            mutate.undo(base["work_copy"], saved)
        if copy.exists():
            copy.unlink()
    report = pm[1] or {}
    result = {"index": index, "base": base["name"], "mutation": mutation.to_json(),
              "exit": pm[0], "seconds": round(pm[4], 2), "complete": report.get("complete"),
              "problems": len(report.get("problems") or []),
              "touched_read_set": touches(mutation.touched, base["reads"])
              if mutation.touched else None,
              "failures": [{"kind": k, "detail": d} for k, d in failures]}
    if failures and args.keep_failing:
        kept = work / "failing"
        kept.mkdir(exist_ok=True)
        (kept / f"{index:04d}.json").write_text(json.dumps(result, indent=1))
    return result


def summarize(results, args, started):
    kinds = {}
    for r in results:
        for f in r["failures"]:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    by_mut = {}
    for r in results:
        k = r["mutation"]["kind"]
        row = by_mut.setdefault(k, {"cores": 0, "failing": 0, "complete_true": 0,
                                    "exit2": 0})
        row["cores"] += 1
        row["failing"] += bool(r["failures"])
        row["complete_true"] += bool(r["complete"])
        row["exit2"] += r["exit"] == 2
    touched = [r for r in results if r["touched_read_set"]]
    return {"seed": args.seed, "cores": len(results),
            "failing_cores": sum(1 for r in results if r["failures"]),
            "failures_by_kind": kinds, "by_mutation": by_mut,
            # memory mutations that changed bytes the healthy report read: how many the report
            # noticed (complete false), and how many it did not but concluded the same
            "read_set_touched": {"cores": len(touched),
                                 "noticed": sum(1 for r in touched if r["complete"] is False),
                                 "unnoticed_same_conclusions": sum(
                                     1 for r in touched if r["complete"] and not r["failures"])},
            "seconds": round(time.monotonic() - started, 1),
            "failing": [r for r in results if r["failures"]]}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="run-campaign", description=__doc__.split("\n")[0])
    parser.add_argument("--cores", type=int, default=20, help="mutated cores to try")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qcg-fuzz"),
                        help="base cores and scratch copies (kept between runs)")
    parser.add_argument("--timeout", type=float, default=120.0, help="per run, seconds")
    parser.add_argument("--out", type=Path, default=None,
                        help="summary JSON (default WORK/summary-SEED.json)")
    parser.add_argument("--bases", default="idle-7.2,race-7.2",
                        help="comma-separated idle-VERSION / race-VERSION base cores")
    parser.add_argument("--keep-failing", action="store_true",
                        help="write each failing core's result (its mutation included) to "
                             "WORK/failing/")
    parser.add_argument("--replay", type=Path, default=None, metavar="RESULT.json",
                        help="run again the mutation of one failing result (of WORK/failing/)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rng = random.Random(args.seed)
    replay = json.loads(args.replay.read_text()) if args.replay else None
    bases = []
    names = [n for n in args.bases.split(",") if n]
    if replay is not None:
        names = [replay["base"]]
    for name, core, binary, wrong in base_cores(args.work, names):
        base = healthy_run(name, core, binary, args.work, args.timeout)
        base.update(name=name, core=core, binary=binary, wrong=wrong,
                    work_copy=args.work / f"{name}.work.core")
        shutil.copyfile(core, base["work_copy"])
        bases.append(base)
    results = []
    if replay is not None:
        args.cores = 1
    try:
        for index in range(args.cores):
            base = bases[index % len(bases)]
            result = one_core(rng, base, args.work, args, index,
                              mutate.Mutation.from_json(replay["mutation"]) if replay else None)
            results.append(result)
            mark = "FAIL " + ",".join(f["kind"] for f in result["failures"]) \
                if result["failures"] else "ok"
            print(f"[{index + 1}/{args.cores}] {base['name']}: {result['mutation']['detail']}:"
                  f" exit {result['exit']}, complete {result['complete']}: {mark}",
                  flush=True)
    finally:
        for base in bases:
            try:
                os.unlink(base["work_copy"])
            except OSError:
                pass
        summary = summarize(results, args, started)
        out = args.out or args.work / f"summary-{args.seed}.json"
        out.write_text(json.dumps(summary, indent=1))
        print(f"{summary['cores']} cores, {summary['failing_cores']} failing "
              f"({summary['failures_by_kind']}), {summary['seconds']} s; summary in {out}")
    return 1 if summary["failing_cores"] else 0


if __name__ == "__main__":
    sys.exit(main())
