"""Plain models of a diagnosis: frames, threads, the crash, findings (no gdb imports).

The readers (``crash.py``, ``report.py``) fill these from the target; ``findings.py`` draws
conclusions from them; ``report_render.py`` prints the report they end up in.  Frames only
are ``models.Frame``, the objects ``snapshot.Snapshot.stack()`` returns.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from qemu_chardev.model import tool, vocabulary
from qemu_chardev.model.objects import ptr
from qemu_chardev.model.qemu import display_location, frame_roles, innermost_qemu_frame

REPORT_SCHEMA = "qemu-chardev-report/1"
SEVERITIES = ("error", "warning", "info")

SIGABRT, SIGSEGV = 6, 11
# Linux x86_64 signal numbers (asm-generic) for the signals a report can show.
SIGNAL_NAMES = {
    1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT",
    7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2",
    13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 17: "SIGCHLD", 18: "SIGCONT",
    19: "SIGSTOP", 20: "SIGTSTP", 24: "SIGXCPU", 25: "SIGXFSZ", 31: "SIGSYS",
}
# Signals a program gets when it did something wrong (or aborted itself).  SIGSTOP/SIGTRAP in
# a core mean a gcore snapshot or a debugger stop instead, SIGQUIT a core asked for.
CRASH_SIGNALS = frozenset({4, 6, 7, 8, 11, 31})
CRASH_SIGNAL_NAMES = frozenset(SIGNAL_NAMES[s] for s in CRASH_SIGNALS)
# si_code values of a fault (asm-generic/siginfo.h) and of user-sent signals.
SI_CODES = {
    11: {1: "SEGV_MAPERR", 2: "SEGV_ACCERR", 3: "SEGV_BNDERR", 4: "SEGV_PKUERR"},
    7: {1: "BUS_ADRALN", 2: "BUS_ADRERR", 3: "BUS_OBJERR"},
    4: {1: "ILL_ILLOPC", 2: "ILL_ILLOPN", 3: "ILL_ILLADR", 4: "ILL_ILLTRP",
        5: "ILL_PRVOPC", 6: "ILL_PRVREG", 7: "ILL_COPROC", 8: "ILL_BADSTK"},
    8: {1: "FPE_INTDIV", 2: "FPE_INTOVF", 3: "FPE_FLTDIV", 4: "FPE_FLTOVF",
        5: "FPE_FLTUND", 6: "FPE_FLTRES", 7: "FPE_FLTINV", 8: "FPE_FLTSUB"},
}
GENERIC_SI_CODES = {0: "SI_USER", 0x80: "SI_KERNEL", -1: "SI_QUEUE", -6: "SI_TKILL"}
# Signals whose siginfo carries a faulting address.
FAULT_SIGNALS = frozenset({4, 7, 8, 11})


def signal_name(signo):
    if signo is None:
        return None
    return SIGNAL_NAMES.get(signo, f"signal {signo}")


def si_code_name(signo, code):
    if code is None:
        return None
    if code > 0 and code != 0x80:
        name = SI_CODES.get(signo, {}).get(code)
        if name:
            return name
    return GENERIC_SI_CODES.get(code, str(code))


def is_crash_signal(signo):
    return signo in CRASH_SIGNALS


# --- models ------------------------------------------------------------------------------

def frame_json(frame, source=None):
    """A frame in the report: level, pc, function, file, line, source, roles, pointers."""
    return {"level": frame.level, "pc": ptr(frame.pc) if frame.pc else None,
            "function": frame.function, "file": frame.file, "line": frame.line,
            "source": source, "roles": frame_roles(frame),
            "pointers": {name: ptr(value) for name, _t, value in (frame.pointers or ())}}


@dataclass
class ThreadFacts:
    """A thread as the analysis sees it: identity, stack (newest first), awaited mutex."""
    lwp: int
    num: Optional[int] = None
    name: Optional[str] = None
    frames: list = field(default_factory=list)
    waiting_on: Optional[int] = None

    def innermost_qemu_frame(self, skip_locking=False):
        """The newest QEMU frame (with ``skip_locking``: the first one outside QEMU's lock
        and thread plumbing, i.e. the code that wants the lock)."""
        return innermost_qemu_frame(self.frames, skip_plumbing=skip_locking)

    def describe(self, skip_locking=False):
        who = f"thread {self.num} (LWP {self.lwp})" if self.num is not None \
            else f"LWP {self.lwp}"
        frame = self.innermost_qemu_frame(skip_locking)
        if frame is not None and frame.function:
            who += f" in {frame.function}"
            if frame.file:
                who += f" ({display_location(frame)})"
        return who

    def has_function(self, names):
        return any(f.function in names for f in self.frames)


@dataclass
class CrashFacts:
    """The signal that killed (or stopped) the process, and the thread that got it."""
    signal: int
    lwp: Optional[int] = None
    thread: Optional[int] = None
    code: Optional[int] = None
    fault_address: Optional[int] = None
    source: str = "siginfo"      # "siginfo" or "exitsignal" (core prstatus, no siginfo)

    @property
    def signal_name(self):
        return signal_name(self.signal)

    @property
    def is_crash(self):
        return is_crash_signal(self.signal)


@dataclass
class DisconnectLocking:
    """Whether this binary's tcp_chr_disconnect() takes chr_write_lock (read from its code)."""
    takes_lock: Optional[bool]
    evidence: str
    function: str = "tcp_chr_disconnect"
    address: Optional[int] = None

    def to_json(self):
        return {"function": self.function, "address": ptr(self.address),
                "takes_lock": self.takes_lock, "evidence": self.evidence}


@dataclass
class Finding:
    """One conclusion: id (``model.vocabulary``), severity, what it concerns, and what to do."""
    id: str
    severity: str
    summary: str
    detail: str = ""
    fix: Optional[str] = None
    chardev: Optional[str] = None
    lwp: Optional[int] = None
    thread: Optional[int] = None
    evidence: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")
        vocabulary.check(self.id, self.severity)

    @property
    def title(self):
        return vocabulary.title(self.id)

    def to_json(self):
        return {"id": self.id, "severity": self.severity, "title": self.title,
                "chardev": self.chardev,
                "lwp": self.lwp, "thread": self.thread, "summary": self.summary,
                "detail": self.detail, "fix": self.fix, "evidence": self.evidence}


def chardev_label(chardev):
    """A chardev's id, or its address when it has none (None for no chardev)."""
    if chardev is None:
        return None
    return chardev.label if chardev.label is not None else f"0x{chardev.address:x}"


@dataclass
class DiagnosisInput:
    """Everything the finding rules look at.

    ``chardevs`` are ``models.ChardevState``; ``owner_of`` maps a mutex address to its owner
    LWP for every awaited mutex; ``extra_findings`` come from readers that draw their own
    conclusions from memory (e.g. a GSource census) and are merged into the result.
    """
    threads: List[ThreadFacts] = field(default_factory=list)
    chardevs: list = field(default_factory=list)
    crash: Optional[CrashFacts] = None
    owner_of: Dict[int, int] = field(default_factory=dict)
    mutex_symbols: Dict[int, str] = field(default_factory=dict)   # address -> "mutex_a"
    disconnect_locking: Optional[DisconnectLocking] = None
    tasks: list = field(default_factory=list)
    objects: list = field(default_factory=list)     # model.liveness.ObjectLiveness
    assertion: Optional[dict] = None                # readers.crash.read_assertion
    qemu_version: Optional[str] = None              # what the binary says it is
    extra_findings: List[Finding] = field(default_factory=list)

    def thread(self, lwp):
        return next((t for t in self.threads if t.lwp == lwp), None)

    def chardev_at(self, address):
        return next((c for c in self.chardevs if c.address == address), None)

    def crashed(self):
        """The crash (CrashFacts of a crash signal), or None for a snapshot or stop."""
        return self.crash if self.crash is not None and self.crash.is_crash else None

    def crash_thread(self):
        """ThreadFacts of the thread that crashed, or None."""
        crash = self.crashed()
        return self.thread(crash.lwp) if crash is not None else None

    def who(self, lwp):
        """'thread 1 (LWP 5) in tcp_chr_write (chardev/char-socket.c:112)'."""
        thread = self.thread(lwp)
        if thread is None:
            return f"LWP {lwp} (not a thread of this process)"
        return thread.describe()

    def short_who(self, lwp):
        """'thread 1 (LWP 5)'."""
        thread = self.thread(lwp)
        if thread is None or thread.num is None:
            return f"LWP {lwp}"
        return f"thread {thread.num} (LWP {lwp})"

    def chardev_of_lock(self, mutex):
        """The chardev whose chr_write_lock (or its pthread mutex) is at ``mutex``."""
        for chardev in self.chardevs:
            lock = chardev.write_lock
            if lock is not None and lock.address == mutex:
                return chardev
        return None


def count_by_severity(findings):
    """{"error": n, "warning": n, "info": n} of findings (Finding objects or JSON dicts)."""
    counts = {severity: 0 for severity in SEVERITIES}
    for finding in findings:
        severity = finding["severity"] if isinstance(finding, dict) else finding.severity
        if severity in counts:
            counts[severity] += 1
    return counts


def new_target(kind, binary=None, core=None, pid=None, build_id=None, qemu_version=None,
               core_program=None):
    """The report's ``target`` object (readers add what they learn from the target)."""
    return {"kind": kind, "binary": binary, "core": core, "pid": pid, "build_id": build_id,
            "qemu_version": qemu_version, "core_program": core_program}


MISSING_RANGES_SHOWN = 8
DAMAGED = "damaged: "          # a chardev problem that names a value no live chardev has


def range_json(start, end):
    return {"start": ptr(start), "end": ptr(end), "bytes": end - start}


def truncation_problem(what, missing):
    """The one problem line of a core cut short: how much and which address ranges."""
    total = sum(end - start for start, end in missing)
    shown = ", ".join(f"0x{s:x}-0x{e:x}" for s, e in missing[:MISSING_RANGES_SHOWN])
    more = f" and {len(missing) - MISSING_RANGES_SHOWN} more" \
        if len(missing) > MISSING_RANGES_SHOWN else ""
    return (f"core file {what}: {total} bytes of memory in {len(missing)} address "
            f"range(s) missing ({shown}{more}); nothing there was read")


def mark_truncated(report, what, missing):
    """Make ``report`` say its core was cut short (idempotent): missing ranges in
    ``target.missing_ranges``, one problem, complete false."""
    target = report.setdefault("target", {})
    if not target.get("missing_ranges"):
        target["missing_ranges"] = [range_json(s, e) for s, e in missing]
    problems = report.setdefault("problems", [])
    if not any(p.startswith("core file truncated") for p in problems):
        problems.insert(0, truncation_problem(what, missing))   # what explains the rest
    report["complete"] = False
    return report


def found_by(chardev):
    """How a chardev was found: "qom" (under /chardevs), "frame" (a thread frame's pointer)
    or "census" (a GSource's callback data or an IOWatchPoll's opaque)."""
    via = chardev.found_via or ""
    if via.startswith("census"):
        return "census"
    if via == "qom":
        return "qom"
    return "frame"


def chardev_json(chardev):
    """A chardev in the report: its own JSON plus ``found_by``."""
    out = chardev.to_json()
    out["found_by"] = found_by(chardev)
    damaged = [p[len(DAMAGED):] for p in chardev.problems if p.startswith(DAMAGED)]
    if damaged:
        out["damaged"] = damaged
    return out


def new_report(target, *, problems=(), error=None, crash=None, threads=(), chardevs=(),
               tasks=(), sections=None, findings=(), objects=()):
    """A "qemu-chardev-report/1" object (docs/report-schema.json): the one place its shape is
    written, for `qemu diagnose` and for a core that could not be analysed at all
    (``error``).  ``findings`` are JSON dicts, errors first."""
    findings = list(findings)
    return {
        "schema": REPORT_SCHEMA,
        "tool": {"name": tool.NAME, "version": tool.VERSION},
        "target": target,
        "complete": not problems and error is None,
        "problems": list(problems),
        "error": error,
        "crash": crash,
        "threads": list(threads),
        "chardevs": list(chardevs),
        "tasks": list(tasks),
        "objects": list(objects),
        "sections": dict(sections or {}),
        "findings": findings,
        "summary": count_by_severity(findings),
    }
