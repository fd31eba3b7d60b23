"""Assembling the full diagnosis report ("qemu-chardev-report/1") of a live QEMU or a core.

``build_report(snap)`` reads the target (chardevs, threads, the crash, QIOTasks, the binary's
own disconnect code), runs the finding rules of ``findings.py`` and returns a JSON-ready dict,
the object that ``qemu diagnose --json`` prints and ``scripts/chardev-postmortem`` collects.
The schema is docs/report-schema.json.

Extension point for readers that add a section and findings of their own: a provider is
``provider(snap, facts) -> (section, findings)`` (``facts`` is the ``DiagnosisInput`` with
chardevs, threads and tasks already read; findings are ``Finding`` objects or dicts with the
same keys).  Its section lands in ``report["sections"][NAME]``, its findings among the
others.  Built in: "gsource_census" from ``census.census_and_findings`` when that module is
present.  ``register_report_provider(name, provider)`` adds more.
"""
import importlib
import re

import gdb

from qemu_chardev import __version__
from qemu_chardev.readers import binary
from qemu_chardev.files import elf as corefile
from qemu_chardev.readers import crash
from qemu_chardev.analysis import findings
from qemu_chardev.target import memory as target
from qemu_chardev.readers.chardev import find_chardevs
from qemu_chardev.model.diagnosis import REPORT_SCHEMA, DiagnosisInput, ThreadFacts, finding_from, frame_json
from qemu_chardev.model.errors import QcgError
from qemu_chardev.model.objects import ptr
from qemu_chardev.readers.mutex import lock_graph
from qemu_chardev.readers.qiotask import read_qiotask, tasks_in_threads
from qemu_chardev.readers.qom import NoQemuDebugInfo

_registered_providers = []
_CORE_FILE_RE = re.compile(r"Local core dump file:\s*`(.+?)', file type")


def register_report_provider(name, provider):
    """Call ``provider(snap, facts) -> (section, findings)`` for every report."""
    _registered_providers.append((name, provider))


def _census_provider(snap, _facts):
    from qemu_chardev.readers import census
    result, found = census.census_and_findings(snap)
    return result.to_json(), found


def _optional(name, provider, module):
    """``provider`` if ``module`` (a sibling module) can be imported, else None."""
    try:
        importlib.import_module(f"{__package__}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__package__}.{module}":
            return None
        raise
    return name, provider


def _report_providers(snap, skip):
    out = []
    for name, provider, module in (("gsource_census", _census_provider, "census"),):
        if name in skip:
            continue
        try:
            found = _optional(name, provider, module)
        except Exception as exc:  # a broken optional module must not lose the report
            snap.note(f"report section {name} unavailable: {type(exc).__name__}: {exc}")
            continue
        if found is not None:
            out.append(found)
    return out + [(n, p) for n, p in _registered_providers if n not in skip]


def core_file_name():
    """Path of the core file gdb has open, or None (live process).  gdb 13's Python API has
    no accessor for it, so it comes from the one line of `info target` that names it."""
    inferior = gdb.selected_inferior()
    connection = getattr(inferior, "connection", None)
    if connection is None or getattr(connection, "type", None) != "core":
        return None
    try:
        text = gdb.execute("info target", to_string=True)
    except gdb.error:
        return None
    match = _CORE_FILE_RE.search(text)
    return match.group(1) if match else None


def target_json(snap):
    """The report's ``target``: binary, core, pid, QEMU version, build-id; raises QcgError
    when the core was not dumped by this binary."""
    inferior = gdb.selected_inferior()
    objfile = binary.main_objfile()
    binary_path = objfile.filename if objfile is not None else None
    core = core_file_name()
    connection = getattr(inferior, "connection", None)
    kind = "core" if core or getattr(connection, "type", None) == "core" else "live"
    out = {"kind": kind, "binary": binary_path, "core": core, "pid": inferior.pid or None,
           "build_id": getattr(objfile, "build_id", None) if objfile else None,
           "qemu_version": binary.qemu_version(), "core_program": None}
    if core and binary_path:
        try:
            info = corefile.read_core(core)
        except (OSError, corefile.ElfError) as exc:
            snap.note(f"core file notes unreadable: {exc}")
        else:
            out["core_program"] = info.program
            ok, reason = corefile.core_matches_binary(info, binary_path, out["build_id"])
            if not ok:
                raise QcgError(reason)
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


def _tasks(snap, chardevs):
    tasks = {}
    for chardev in chardevs:
        if chardev.connect_task is not None:
            tasks[chardev.connect_task.address] = chardev.connect_task
    for lwp, address in tasks_in_threads(snap):
        task = tasks.get(address) or read_qiotask(snap, address,
                                                  found_via=f"worker thread LWP {lwp}")
        task.worker_thread = snap.thread_ref(lwp)
        tasks[address] = task
    return list(tasks.values())


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


def build_report(snap, skip_sections=()):
    """The complete report dict (see docs/report-schema.json); ``skip_sections`` names
    optional sections not to compute (e.g. "gsource_census", a scan of writable memory)."""
    target_info = target_json(snap)
    for lwp in snap.threads():      # full stacks first: later reads reuse them
        snap.stack(lwp)
    try:
        chardevs = find_chardevs(snap, deep=True)
        target_info["qemu_debug_info"] = True
    except NoQemuDebugInfo as exc:     # still worth reporting: the crash, threads, deadlocks
        snap.note(str(exc))
        chardevs = []
        target_info["qemu_debug_info"] = False
    crash_facts, stop_facts = crash.read_signals(snap)
    waiting_on, owner_of = lock_graph(snap)
    facts = DiagnosisInput(threads=_thread_facts(snap, waiting_on), chardevs=chardevs,
                           crash=crash_facts, owner_of=owner_of,
                           mutex_symbols=_mutex_symbols(waiting_on.values()),
                           disconnect_locking=binary.disconnect_locking(),
                           tasks=_tasks(snap, chardevs))
    sections = {}
    for name, provider in _report_providers(snap, set(skip_sections)):
        try:
            section, extra = provider(snap, facts)
        except QcgError as exc:
            snap.note(f"{name}: {exc}")
            continue
        except Exception as exc:  # an optional section must not lose the report
            snap.note(f"{name} failed: {type(exc).__name__}: {exc}")
            continue
        if section is not None:
            sections[name] = section
        facts.extra_findings.extend(finding_from(item) for item in extra or [])
    problems = []
    found = findings.diagnose(facts, problems=problems)
    for problem in problems:
        snap.note(problem)
    target_info["stop_signal"] = crash.stop_json(stop_facts) if crash_facts is None else None
    target_info["disconnect_locking"] = facts.disconnect_locking.to_json()
    crash_section = crash.crash_json(snap, crash_facts)
    return {
        "schema": REPORT_SCHEMA,
        "tool": {"name": "qemu-chardev-gdb", "version": __version__},
        "target": target_info,
        "complete": not snap.problems,
        "problems": list(snap.problems),
        "error": None,
        "crash": crash_section,
        "threads": [_thread_json(facts, t, crash_facts) for t in facts.threads],
        "chardevs": [c.to_json() for c in chardevs],
        "tasks": [t.to_json() for t in facts.tasks],
        "sections": sections,
        "findings": [f.to_json() for f in found],
        "summary": findings.count_by_severity(found),
    }
