"""Pure analysis of a GSource census: validating candidates, states, groups, leaks, findings.

A census candidate is a 96-byte GSource image found by its ``source_funcs`` pointer.  This
module decides whether it is a GSource at all, what state it is in, whether a destroyed one
is leaked (nothing that owns a reference points at it) and whether a live structure points
at one that looks freed.  No gdb imports: every function takes plain values.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from qemu_chardev.model.glib import (DESTROYED_REFERENCED, FREED, G_PRIORITY_DEFAULT_IDLE,
                                     INVALID, LEAKED, STATES, decode_gsource, gsource_state,
                                     impossible_field)
from qemu_chardev.model.diagnosis import Finding
from qemu_chardev.model.objects import ptr
from qemu_chardev.model.qemu import SOCKET_GSOURCE_FIELDS

QIO_TASK_ORIGIN = "qio_task_thread_worker completion"
QIO_TASK_FIX = ("apply upstream commit b65cb867cc \"main-loop: Fix GSource leak in "
                "qio_task_thread_worker()\" (QEMU 4.2): qio_task_thread_worker() must "
                "g_source_unref(task->thread->completion) after g_source_attach()")
CHARDEV_LOCK_FIX = ("apply upstream commit 78d01598ae \"char-socket: Lock "
                    "tcp_chr_disconnect() and socket_reconnect_timeout()\" (QEMU 4.2): the "
                    "pointer is cleared and its reference dropped under chr_write_lock")
GENERIC_UAF_FIX = ("whoever drops the last reference must clear this pointer first; run "
                   "'qemu gsource trace' on the source in a live process to see who drops it")
GENERIC_LEAK_FIX = ("find who still holds the last reference (run 'qemu gsource trace ADDR' "
                    "on a live process) and make it g_source_unref() the source")
LIST_LIMIT = 32


@dataclass
class SourceRecord:
    """One GSource image from the target, its state and what points at it."""
    address: int
    funcs: int = 0
    ref_count: int = 0
    flags: int = 0
    context: int = 0
    priority: int = 0
    source_id: int = 0
    poll_fds: int = 0
    prev: int = 0
    next: int = 0
    name_ptr: int = 0
    priv: int = 0
    callback_data: int = 0
    callback_funcs: int = 0
    funcs_name: Optional[str] = None
    name: Optional[str] = None
    callback: Optional[int] = None
    callback_name: Optional[str] = None
    found_via: str = "scan"
    state: Optional[str] = None
    origin: Optional[str] = None
    owners: List[str] = field(default_factory=list)

    def to_json(self):
        return {
            "address": ptr(self.address), "state": self.state, "ref_count": self.ref_count,
            "flags": self.flags, "context": ptr(self.context), "priority": self.priority,
            "source_id": self.source_id, "name": self.name, "funcs": ptr(self.funcs),
            "funcs_symbol": self.funcs_name, "callback": ptr(self.callback),
            "callback_symbol": self.callback_name, "found_via": self.found_via,
            "origin": self.origin, "owners": list(self.owners),
        }


@dataclass
class Owner:
    """A pointer to a GSource held by something we can name.

    ``kind``: chardev, task, pending (a context's pending_dispatches), child (a parent's
    child_sources), iowatch (IOWatchPoll.src), listener, frame (a thread's stack).
    ``check_freed``: a freed target means a use-after-free (not for stack locals, which
    may be stale).
    """
    source: int
    kind: str
    what: str
    chardev: Optional[str] = None
    lwp: Optional[int] = None
    thread: Optional[int] = None
    check_freed: bool = True

    def to_json(self):
        return {"source": ptr(self.source), "kind": self.kind, "what": self.what,
                "chardev": self.chardev, "lwp": self.lwp, "thread": self.thread}


def decode(buf, address, offsets=None, base=0):
    """A SourceRecord from the GSource image at ``buf[base:base + GSOURCE_SIZE]``."""
    values = decode_gsource(buf, offsets, base)
    return SourceRecord(
        address=address, funcs=values["source_funcs"], ref_count=values["ref_count"],
        flags=values["flags"], context=values["context"], priority=values["priority"],
        source_id=values["source_id"], poll_fds=values["poll_fds"], prev=values["prev"],
        next=values["next"], name_ptr=values["name"], priv=values["priv"],
        callback_data=values["callback_data"], callback_funcs=values["callback_funcs"])


def rejection(rec, is_mapped):
    """Why ``rec`` is not a GSource (a short reason), or None if it may be one.

    ``is_mapped(address)`` says whether an address is mapped in the target.  A freed GSource
    (ref_count 0) keeps its fields until its memory is reused, so it passes the same checks.
    """
    if rec.address & 7:
        return "misaligned"
    impossible = impossible_field(rec.ref_count, rec.flags, rec.priority)
    if impossible:
        return impossible
    # Finalizing frees priv and NULLs it; then free() reuses the first 16 bytes
    # (callback_data, callback_funcs) for its own (mangled) list pointers.
    freed = rec.ref_count == 0
    if freed:
        if rec.priv and (rec.priv & 7 or not is_mapped(rec.priv)):
            return "priv is not a mapped pointer"
    elif not rec.priv or rec.priv & 7 or not is_mapped(rec.priv):
        return "priv is not a mapped pointer"
    pointers = ("context", "prev", "next", "poll_fds") if freed else \
        ("context", "prev", "next", "poll_fds", "callback_data", "callback_funcs")
    for name in pointers:
        value = getattr(rec, name)
        if value and (value & 7 or not is_mapped(value)):
            return f"{name} is not a mapped pointer"
    if rec.name_ptr and not is_mapped(rec.name_ptr):
        return "name is not a mapped pointer"
    if rec.ref_count:
        if not rec.context and (rec.source_id or rec.prev or rec.next):
            return "list links or id without a context"
    return None


def is_qio_task_completion_leak(rec, idle_funcs):
    """True when a leaked source looks exactly like qio_task_thread_worker()'s completion.

    g_idle_source_new(), attached to the task's context, dispatched once (dispatch returned
    FALSE: destroyed, callback cleared, context's reference dropped) and never unreffed by
    its creator: ref 1, flags 0, priority G_PRIORITY_DEFAULT_IDLE, context still set, name
    "GIdleSource" (GLib >= 2.58) or none.
    """
    return (idle_funcs is not None and rec.funcs == idle_funcs and rec.ref_count == 1
            and rec.flags == 0 and rec.priority == G_PRIORITY_DEFAULT_IDLE
            and rec.context != 0 and not rec.callback_data and not rec.callback_funcs
            and rec.name in (None, "GIdleSource"))


def classify(records, owners, idle_funcs=None, has_qio_task=True):
    """Set every record's ``state``, ``owners`` and ``origin``.

    A destroyed source that still holds a reference is ``leaked`` when no owner points at it,
    else ``destroyed-referenced`` (normal for a moment).  A leak is attributed to
    qio_task_thread_worker only when it has that completion's signature and the target has
    QIOTasks at all (``has_qio_task``).  Returns {address: [Owner]}.
    """
    by_source = {}
    for owner in owners:
        by_source.setdefault(owner.source, []).append(owner)
    for rec in records:
        if rec.state != INVALID:
            rec.state = gsource_state(rec.ref_count, rec.flags, rec.context, rec.priority)
        rec.owners = [o.what for o in by_source.get(rec.address, [])]
        if rec.state == DESTROYED_REFERENCED and not rec.owners:
            rec.state = LEAKED
            rec.origin = QIO_TASK_ORIGIN if has_qio_task and \
                is_qio_task_completion_leak(rec, idle_funcs) else "unknown"
    return by_source


def use_after_free(records, owners):
    """[(Owner, SourceRecord)] for owners whose target looks freed or is no GSource any more."""
    by_address = {rec.address: rec for rec in records}
    out = []
    for owner in owners:
        if not owner.check_freed:
            continue
        rec = by_address.get(owner.source)
        if rec is not None and rec.state in (FREED, INVALID):
            out.append((owner, rec))
    return out


def counts(records):
    """{state: count} over every state (zeros included)."""
    out = {state: 0 for state in STATES}
    for rec in records:
        out[rec.state] = out.get(rec.state, 0) + 1
    return out


def groups(records):
    """[{funcs, callback, name, total, <state>: n}] grouped by funcs, callback and name.

    Freed and invalid records have no trustworthy callback or name, so they group by funcs.
    Sorted by total, largest first.
    """
    table = {}
    for rec in records:
        funcs = rec.funcs_name or (ptr(rec.funcs) or "?")
        live = rec.state not in (FREED, INVALID)
        key = (funcs, (rec.callback_name or ptr(rec.callback) or "-") if live else "-",
               (rec.name or "-") if live else "-")
        row = table.get(key)
        if row is None:
            row = {"funcs": key[0], "callback": key[1], "name": key[2], "total": 0}
            row.update({state: 0 for state in STATES})
            table[key] = row
        row[rec.state] += 1
        row["total"] += 1
    return sorted(table.values(), key=lambda r: (-r["total"], r["funcs"], r["callback"]))


def _address_list(addresses, limit=LIST_LIMIT):
    shown = ", ".join(f"0x{a:x}" for a in addresses[:limit])
    if len(addresses) > limit:
        shown += f", ... ({len(addresses) - limit} more)"
    return shown


def _finding(fid, severity, summary, detail, fix, chardev=None, lwp=None, thread=None,
             evidence=None):
    return Finding(fid, severity, summary, detail, fix, chardev, lwp, thread, evidence or {})


def leak_findings(records, context_labels=None):
    """gsource-leak findings: one for qio_task completion leaks, one for other leaks."""
    context_labels = context_labels or {}
    leaked = [r for r in records if r.state == LEAKED]
    out = []
    completion = sorted(r.address for r in leaked if r.origin == QIO_TASK_ORIGIN)
    other = [r for r in leaked if r.origin != QIO_TASK_ORIGIN]
    if completion:
        contexts = sorted({r.context for r in leaked if r.origin == QIO_TASK_ORIGIN})
        where = ", ".join(context_labels.get(c, f"0x{c:x}") for c in contexts)
        n = len(completion)
        out.append(_finding(
            "gsource-leak", "error",
            f"{n} leaked GSource{'s' if n != 1 else ''}: destroyed idle source"
            f"{'s' if n != 1 else ''} still holding a reference that nothing points to; "
            f"likely origin: {QIO_TASK_ORIGIN}",
            f"Each is a g_idle_source_new() completion source of a threaded QIOTask (one per "
            f"task run in a thread, e.g. every socket chardev connect or reconnect attempt): "
            f"ref_count 1, not ACTIVE, priority 200, callback cleared, still linked in its "
            f"context ({where}), which walks it on every main loop iteration. "
            f"qio_task_thread_worker() attached it and never dropped its own reference. "
            f"Addresses: {_address_list(completion)}.",
            QIO_TASK_FIX,
            evidence={"count": n, "origin": QIO_TASK_ORIGIN,
                      "sources": [ptr(a) for a in completion],
                      "contexts": [ptr(c) for c in contexts]}))
    if other:
        addresses = sorted(r.address for r in other)
        kinds = sorted({r.funcs_name or ptr(r.funcs) or "?" for r in other})
        n = len(addresses)
        out.append(_finding(
            "gsource-leak", "warning",
            f"{n} destroyed GSource{'s' if n != 1 else ''} ({', '.join(kinds)}) still "
            f"holding references, with no known owner pointing at {'them' if n != 1 else 'it'}",
            f"Destroyed (not ACTIVE) sources keep ref_count > 0 but no chardev field, live "
            f"QIOTask, pending dispatch, parent source or stack frame points at them: "
            f"probably leaked. Addresses: {_address_list(addresses)}.",
            GENERIC_LEAK_FIX,
            evidence={"count": n, "origin": "unknown", "funcs": kinds,
                      "sources": [ptr(a) for a in addresses]}))
    return out


def uaf_findings(pairs):
    """gsource-use-after-free findings, one per owner pointing at a freed-looking source."""
    out = []
    for owner, rec in pairs:
        if rec.state == FREED:
            looks = f"looks freed (ref_count 0, funcs {rec.funcs_name or ptr(rec.funcs)})"
        else:
            looks = "is no GSource any more (its memory was freed and reused)"
        chardev_field = owner.kind == "chardev" and \
            owner.what.rsplit(".", 1)[-1] in SOCKET_GSOURCE_FIELDS
        out.append(_finding(
            "gsource-use-after-free", "error",
            f"{owner.what} points at GSource 0x{rec.address:x}, which {looks}",
            f"A live structure ({owner.kind}: {owner.what}) still points at a GSource whose "
            f"last reference was dropped. Using it (g_source_destroy, g_source_unref, "
            f"dispatch) touches freed memory.",
            CHARDEV_LOCK_FIX if chardev_field else GENERIC_UAF_FIX,
            chardev=owner.chardev, lwp=owner.lwp, thread=owner.thread,
            evidence={"owner": owner.what, "owner_kind": owner.kind,
                      "source": ptr(rec.address), "state": rec.state,
                      "ref_count": rec.ref_count if rec.state == FREED else None}))
    return out


@dataclass
class Census:
    """Everything ``qemu gsource census`` found: records, owners, statistics, problems."""
    records: List[SourceRecord] = field(default_factory=list)
    owners: List[Owner] = field(default_factory=list)
    rejected: Dict[str, int] = field(default_factory=dict)
    anchors: Dict[int, str] = field(default_factory=dict)
    contexts: Dict[int, str] = field(default_factory=dict)
    source: str = ""               # "core FILE" or "live process PID"
    bytes_scanned: int = 0
    regions_scanned: int = 0
    seconds: float = 0.0
    uaf: list = field(default_factory=list)
    # Writable memory not scanned because QEMU says it is not heap (guest RAM, TCG code):
    # [{"what", "name", "start", "end", "bytes"}], "bytes" being what was left out.
    bytes_skipped: int = 0
    skipped: list = field(default_factory=list)

    def counts(self):
        return counts(self.records)

    def groups(self):
        return groups(self.records)

    def leaked(self):
        return [r for r in self.records if r.state == LEAKED]

    def findings(self):
        return leak_findings(self.records, self.contexts) + uaf_findings(self.uaf)

    def to_json(self):
        return {
            "source": self.source, "bytes_scanned": self.bytes_scanned,
            "regions_scanned": self.regions_scanned, "seconds": round(self.seconds, 3),
            "bytes_skipped": self.bytes_skipped, "skipped": list(self.skipped),
            "anchors": {ptr(a): n for a, n in sorted(self.anchors.items())},
            "counts": self.counts(),
            "rejected": dict(sorted(self.rejected.items())),
            "groups": self.groups(),
            "leaked": [ptr(r.address) for r in sorted(self.leaked(), key=lambda r: r.address)],
            "contexts": {ptr(a): label for a, label in sorted(self.contexts.items())},
            "owners": [o.to_json() for o in self.owners],
            "sources": [r.to_json() for r in sorted(self.records, key=lambda r: r.address)],
        }
