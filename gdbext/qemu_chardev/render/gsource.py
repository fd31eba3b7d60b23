"""Text rendering of the GSource census and refcount traces (no gdb imports).

A GSource's name is read from the target: it is shown ``printable`` (``model.text``)."""
from qemu_chardev.analysis import trace as ta
from qemu_chardev.model import glib
from qemu_chardev.model.text import printable
from qemu_chardev.render.base import GSOURCE_STATE_COLOURS, SEVERITY_COLOURS, paint, table

# A scan finds many freed sources in the heap, harmless by themselves: not alarming here.
_STATE_COLOURS = {**GSOURCE_STATE_COLOURS, glib.FREED: "dim"}
GROUP_COLUMNS = (glib.ATTACHED, glib.DISPATCHING, glib.UNATTACHED, glib.DESTROYED_REFERENCED,
                 glib.LEAKED, glib.FREED, glib.INVALID)
GROUP_HEADERS = ("ATTACHED", "DISPATCH", "UNATTACHED", "DESTROYED-REF", "LEAKED", "FREED",
                 "INVALID")


def _mib(n):
    return f"{n / (1 << 20):.1f} MiB"


def census_text(census, colour=False, show_all=False):
    """The `qemu gsource census` report: totals, groups, leaks, findings."""
    counts = census.counts()
    total = len(census.records)
    rate = census.bytes_scanned / census.seconds / (1 << 20) if census.seconds else 0
    lines = [paint(f"GSource census of {census.source}", "bold", colour),
             f"  scanned {_mib(census.bytes_scanned)} of writable memory in "
             f"{census.regions_scanned} regions, {census.seconds:.2f} s ({rate:.0f} MiB/s); "
             f"{len(census.anchors)} GSourceFuncs anchors",
             *skipped_lines(census.skipped),
             "  " + ", ".join(paint(f"{state} {counts[state]}", _STATE_COLOURS.get(state)
                                    if counts[state] and state in (glib.LEAKED, glib.INVALID)
                                    else None, colour)
                              for state in glib.STATES) + f"; total {total}"]
    rejected = sum(census.rejected.values())
    if rejected:
        reasons = ", ".join(f"{why} {n}" for why, n in sorted(census.rejected.items()))
        lines.append(f"  {rejected} candidate(s) rejected as not GSources ({reasons})")
    if total:
        lines += ["", groups_table(census.groups())]
    leaked = sorted(census.leaked(), key=lambda r: r.address)
    if leaked:
        lines += ["", paint(f"Leaked ({len(leaked)}):", "red", colour)]
        lines.append(table(["ADDRESS", "FUNCS", "REF", "PRIO", "CONTEXT", "NAME", "ORIGIN"],
                           [[f"0x{r.address:x}", r.funcs_name or f"0x{r.funcs:x}",
                             r.ref_count, r.priority, census.contexts.get(
                                 r.context, f"0x{r.context:x}" if r.context else "NULL"),
                             printable(r.name) or "-", r.origin] for r in leaked]))
    if show_all and total:
        lines += ["", "Every source:", source_table(census.records, colour)]
    found = census.findings()
    lines += ["", findings_text(found, colour) if found else "No GSource findings."]
    return "\n".join(lines)


def groups_table(groups):
    """Sources grouped by funcs, callback and name, one column per state."""
    rows = [[g["funcs"], g["callback"], printable(g["name"]),
             *[g[state] or "" for state in GROUP_COLUMNS], g["total"]] for g in groups]
    return table(["FUNCS", "CALLBACK", "NAME", *GROUP_HEADERS, "TOTAL"], rows)


def skipped_lines(skipped):
    """One line on the memory the census did not scan (guest RAM, TCG code), if any."""
    if not skipped:
        return []
    by_what = {}
    for span in skipped:
        by_what[span["what"]] = by_what.get(span["what"], 0) + span["bytes"]
    return ["  not scanned (not heap): "
            + ", ".join(f"{what} {_mib(count)}" for what, count in by_what.items())]


def census_section_text(section, colour=False):
    """The census as a section of a `qemu diagnose` / post-mortem report (from its JSON)."""
    counts = section.get("counts") or {}
    head = (f"GSource census: {_mib(section.get('bytes_scanned') or 0)} of writable memory in "
            f"{section.get('regions_scanned')} regions, {section.get('seconds')} s; "
            + ", ".join(f"{state} {counts.get(state, 0)}" for state in glib.STATES))
    lines = [head] + skipped_lines(section.get("skipped"))
    if section.get("groups"):
        lines.append(groups_table(section["groups"]))
    leaked = section.get("leaked") or []
    if leaked:
        lines.append(paint(f"leaked ({len(leaked)}): " + " ".join(leaked), "red", colour))
    return "\n".join(lines)


def source_table(records, colour=False):
    rows = []
    for r in sorted(records, key=lambda r: r.address):
        rows.append([f"0x{r.address:x}", paint(r.state, _STATE_COLOURS.get(r.state), colour),
                     r.ref_count, f"0x{r.flags:x}", f"0x{r.context:x}" if r.context else "NULL",
                     r.source_id, r.priority, r.funcs_name or f"0x{r.funcs:x}",
                     r.callback_name or "-", printable(r.name) or "-",
                     printable("; ".join(r.owners)) or "-"])
    return table(["ADDRESS", "STATE", "REF", "FLAGS", "CONTEXT", "ID", "PRIO", "FUNCS",
                  "CALLBACK", "NAME", "OWNERS"], rows)


def findings_text(found, colour=False):
    out = []
    for f in found:
        head = paint(f.severity, SEVERITY_COLOURS.get(f.severity), colour)
        out.append(f"{head} {f.id}: {printable(f.summary)}")
        out.append(f"    {printable(f.detail)}")
        out.append(f"    fix: {printable(f.fix)}")
    return "\n".join(out)


def trace_event_line(ev, address):
    """One log line per change, printed as it happens."""
    who = f"LWP {ev.lwp}" if ev.lwp else "?"
    if ev.thread is not None:
        who += f" (thread {ev.thread})"
    frames = " <- ".join(ev.frames) if ev.frames else "?"
    qemu = f" (QEMU: {ev.qemu_frame})" if ev.qemu_frame and ev.qemu_frame != ev.by else ""
    return f"[gsource 0x{address:x}] #{ev.index} {ev.describe()}  by {ev.by or '?'}{qemu}  " \
           f"in {who}\n    {frames}"


def trace_summary(address, start, events, reason, colour=False):
    """The table printed when a trace stops."""
    lines = [paint(f"Refcount history of GSource 0x{address:x}", "bold", colour),
             f"  at start: ref_count {start[0]}, flags 0x{start[1]:x}"]
    if events:
        lines.append(table(["#", "CHANGE", "BY", "QEMU FRAME", "THREAD"], ta.summary_rows(events)))
        net = ta.balance(events)
        if net:
            lines.append("  net references by function: " +
                         ", ".join(f"{k} {v:+d}" for k, v in sorted(net.items())))
    else:
        lines.append("  no change observed")
    lines.append(f"  stopped: {reason}")
    return "\n".join(lines)
