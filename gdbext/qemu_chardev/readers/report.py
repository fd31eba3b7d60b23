"""Assembling the full diagnosis report ("qemu-chardev-report/1") of a live QEMU or a core.

``build_report(snap)`` reads the target (chardevs, threads, the crash, QIOTasks, the binary's
own disconnect code), runs the finding rules of ``findings.py`` and returns a JSON-ready dict,
the object that ``qemu diagnose --json`` prints and ``scripts/chardev-postmortem`` collects.
The schema is docs/report-schema.json.

Sections beyond the built-in ones (today the GSource census) are listed in ``SECTIONS``; a
section that cannot be read is a problem of the report, never its end.
"""
import gdb

from qemu_chardev.analysis import findings, lifecycle
from qemu_chardev.files import elf as corefile
from qemu_chardev.model.diagnosis import (DiagnosisInput, DisconnectLocking, ThreadFacts,
                                          chardev_json,
                                          frame_json, new_report, new_target, range_json,
                                          truncation_problem)
from qemu_chardev.model.errors import QcgError
from qemu_chardev.model.objects import ptr
from qemu_chardev.model.liveness import CHANNEL, CHARDEV, DAMAGED, POINTEE_KINDS, TASK, Holder
from qemu_chardev.model.qemu import CHARDEV_CALLBACKS
from qemu_chardev.readers import binary, census, crash, liveness
from qemu_chardev.readers.chardev import census_chardevs, find_chardevs
from qemu_chardev.readers.mutex import lock_graph
from qemu_chardev.readers.qiotask import reachable_tasks
from qemu_chardev.readers.qom import NoQemuDebugInfo
from qemu_chardev.target import inferior
from qemu_chardev.target import memory as target


def _census_section(snap):
    """The GSource census section and its findings (the census is kept on ``snap`` for
    the chardevs only its sources lead to)."""
    result, found = census.census_and_findings(snap)
    snap.census = result
    return result.to_json(), found


# Sections a report holds besides the built-in ones: name -> reader(snap) -> (json, findings).
SECTIONS = {"gsource_census": _census_section}


def target_json(snap, read_notes=True):
    """The report's ``target``: binary, core, pid, QEMU version, build-id; raises QcgError
    when the core was not dumped by this binary.

    ``read_notes`` False leaves the core's notes (program name, build-id match, truncation)
    to a caller that has read them already: chardev-postmortem checks every core before it
    starts gdb, and reading them again here costs pyelftools' import (60-80 ms)."""
    objfile = binary.main_objfile()
    binary_path = objfile.filename if objfile is not None else None
    core = inferior.core_file_path()
    kind = "core" if core or inferior.is_core() else "live"
    out = new_target(kind, binary_path, core, gdb.selected_inferior().pid or None,
                     getattr(objfile, "build_id", None) if objfile else None,
                     binary.qemu_version())
    if core and binary_path and read_notes:
        try:
            info = corefile.read_core(core)
        except (OSError, corefile.ElfError) as exc:
            snap.note(f"core file notes unreadable: {exc}")
        else:
            out["core_program"] = info.program
            ok, reason = corefile.core_matches_binary(info, binary_path, out["build_id"])
            if not ok:
                raise QcgError(reason)
            if info.truncated:
                out["missing_ranges"] = [range_json(s, e) for s, e in info.missing]
                snap.note(truncation_problem(info.truncated, info.missing))
    return out


def _thread_facts(snap, waits):
    threads = []
    for lwp, thread in sorted(snap.threads().items(), key=lambda item: item[1].num):
        threads.append(ThreadFacts(lwp=lwp, num=thread.num, name=thread.name,
                                   frames=snap.stack(lwp), waiting_on=waits.get(lwp)))
    return threads


def _mutex_symbols(addresses):
    """{address: symbol} of awaited mutexes that are global or static variables."""
    out = {}
    for address in set(addresses):
        name = target.symbol_name(address)
        if name:
            out[address] = name
    return out


def _judge_reached(alive, facts):
    """Liveness of every object the report reaches: pointers in thread frames, each QIOTask,
    its source and (for chardev callbacks) its opaque."""
    for thread in facts.threads:
        for frame in thread.frames:
            for name, pointee, value in frame.pointers:
                kind = POINTEE_KINDS.get(pointee)
                if value and kind:
                    alive.judge(value, kind, liveness.frame_holder(thread.lwp, thread.num,
                                                                   frame, name))
    for task in facts.tasks:
        where = f"QIOTask 0x{task.address:x}"
        alive.judge(task.address, TASK, Holder(what=task.found_via or where, kind="chardev"))
        if task.source is not None:
            alive.judge(task.source.address, CHANNEL, Holder(what=f"{where} source", kind="task"))
        if task.opaque and task.func_symbol in CHARDEV_CALLBACKS:
            alive.judge(task.opaque, CHARDEV, Holder(
                what=f"{where} opaque (callback {task.func_symbol})", kind="task"))
    return alive.objects()


def _thread_json(facts, thread, crash_facts):
    frame = thread.innermost_qemu_frame()
    waiting = thread.waiting_on
    caller = thread.innermost_qemu_frame(skip_locking=True) if waiting else None
    holds = [c.label for c in facts.chardevs if c.write_lock is not None
             and c.write_lock.locked and c.write_lock.owner_lwp == thread.lwp]
    waited_chardev = facts.chardev_of_lock(waiting) if waiting else None
    return {
        "thread": thread.num, "lwp": thread.lwp, "name": thread.name,
        "crashed": crash_facts is not None and crash_facts.lwp == thread.lwp,
        "function": frame.function if frame else None,
        "location": frame.location if frame else None,
        "waiting_on": ptr(waiting),
        "waiting_in": caller.function if caller else None,
        "waiting_for": (f"chr_write_lock of '{waited_chardev.label}'" if waited_chardev
                        else ("mutex " + ptr(waiting)) if waiting else None),
        "holds_write_lock_of": holds,
        "frames": [frame_json(f) for f in thread.frames],
    }


def _step(snap, what, read, default):
    """``read()``, or ``default`` with the failure noted: one part of the report that cannot
    be read (a damaged heap, a core cut short) never loses the others."""
    try:
        return read()
    except NoQemuDebugInfo:
        raise
    except QcgError as exc:
        snap.note(f"{what}: {exc}")
    except (gdb.error, gdb.MemoryError) as exc:
        snap.note(f"{what}: gdb: {exc}")
    except Exception as exc:  # noqa: BLE001  a reader's bug must not lose the report
        snap.note(f"{what}: internal error: {type(exc).__name__}: {exc}")
    return default() if callable(default) else default


def _nested_problems(snap, chardevs, tasks):
    """What could not be read inside a chardev or task (a GSource, a channel) makes the
    report incomplete too: each is noted with the object it belongs to."""
    for chardev in chardevs:
        who = f"chardev {chardev.label or '?'} at 0x{chardev.address:x}"
        for problem in chardev.problems:
            if not problem.startswith("damaged: "):       # noted when found
                snap.note(f"{who}: {problem}")
        for part in list(chardev.gsources) + list(chardev.objects):
            for problem in part.problems:
                snap.note(f"{who}: {part.role} 0x{part.address:x}: {problem}")
    for task in tasks:
        for problem in task.problems:
            snap.note(f"QIOTask 0x{task.address:x} ({task.found_via}): {problem}")


def build_report(snap, skip_sections=(), core_checked=False):
    """The complete report dict (see docs/report-schema.json); ``skip_sections`` names
    optional sections not to compute (e.g. "gsource_census", a scan of writable memory);
    ``core_checked``: the caller has read the core's notes (see ``target_json``).

    Every part is read on its own (``_step``): what fails is a problem of the report, which
    then says ``complete: false``, and the other parts are still there."""
    target_info = target_json(snap, read_notes=not core_checked)
    alive = liveness.Liveness(snap)
    with snap.switching_threads():
        for lwp in snap.threads():      # full stacks first: later reads reuse them
            _step(snap, f"stack of LWP {lwp}", lambda lwp=lwp: snap.stack(lwp), None)
    try:
        chardevs = _step(snap, "chardevs", lambda: find_chardevs(snap, deep=True, alive=alive),
                         list)
        target_info["qemu_debug_info"] = True
    except NoQemuDebugInfo as exc:     # still worth reporting: the crash, threads, deadlocks
        snap.note(str(exc))
        chardevs = []
        target_info["qemu_debug_info"] = False
    crash_facts, stop_facts = _step(snap, "signal", lambda: crash.read_signals(snap),
                                    (None, None))
    assertion = _step(snap, "assertion", lambda: crash.read_assertion(snap, crash_facts), None)
    waiting_on, owner_of = _step(snap, "lock graph", lambda: lock_graph(snap), ({}, {}))
    sections = {}
    extra_findings = []
    for name, read_section in SECTIONS.items():
        if name in skip_sections:
            continue
        try:
            section, extra = read_section(snap)
        except QcgError as exc:
            snap.note(f"{name}: {exc}")
            continue
        except Exception as exc:  # a failing section must not lose the report
            snap.note(f"{name} failed: {type(exc).__name__}: {exc}")
            continue
        if section is not None:
            sections[name] = section
        extra_findings.extend(extra or [])
    census_result = getattr(snap, "census", None)
    if census_result is not None and target_info.get("qemu_debug_info"):
        seen = {c.address for c in chardevs}
        chardevs += _step(snap, "chardevs found by the census",
                          lambda: census_chardevs(snap, census_result, seen, deep=True), list)
    tasks = _step(snap, "QIOTasks", lambda: reachable_tasks(snap, chardevs), list)
    _nested_problems(snap, chardevs, tasks)
    locking = _step(snap, "tcp_chr_disconnect code", binary.disconnect_locking,
                    lambda: DisconnectLocking(None, "not read"))
    facts = DiagnosisInput(threads=_thread_facts(snap, waiting_on), chardevs=chardevs,
                           crash=crash_facts, owner_of=owner_of,
                           mutex_symbols=_step(snap, "mutex symbols",
                                               lambda: _mutex_symbols(waiting_on.values()), {}),
                           disconnect_locking=locking,
                           tasks=tasks, assertion=assertion,
                           qemu_version=target_info.get("qemu_version"))
    facts.extra_findings.extend(extra_findings)
    facts.objects = _step(snap, "liveness", lambda: _judge_reached(alive, facts), list)
    for obj in facts.objects:       # read, shown, never trusted: the report is not complete
        if obj.verdict == DAMAGED:
            why = next((e for e in obj.evidence if "damage" in e), obj.evidence[-1:] or [""])
            snap.note(f"{obj.describe()}: damaged ({why if isinstance(why, str) else why[0]})")
    if assertion is not None:
        assertion["concerns"] = [{"address": ptr(o.address), "kind": o.kind,
                                  "verdict": o.verdict, "part_of": ptr(o.part_of)}
                                 for o in lifecycle.assertion_concerns(facts)]
    problems = []
    found = findings.diagnose(facts, problems=problems)
    for problem in problems:
        snap.note(problem)
    target_info["stop_signal"] = crash.stop_json(stop_facts) if crash_facts is None else None
    target_info["disconnect_locking"] = facts.disconnect_locking.to_json()
    crash_section = _step(snap, "crash", lambda: crash.crash_json(snap, crash_facts, assertion),
                          None)
    return new_report(
        target_info, problems=snap.problems, crash=crash_section,
        threads=[_thread_json(facts, t, crash_facts) for t in facts.threads],
        chardevs=[chardev_json(c) for c in chardevs], tasks=[t.to_json() for t in facts.tasks],
        sections=sections, findings=[f.to_json() for f in found],
        objects=[o.to_json() for o in facts.objects])
