"""Rendering diagnosis reports (dicts of schema "qemu-chardev-report/1"): text, Markdown,
JUnit XML and the multi-report JSON envelope.  Pure: no gdb, stdlib plus the optional
tabulate/pygments of ``render.py``, so ``scripts/chardev-postmortem`` uses it outside gdb.

A report whose core could not be analysed carries ``error`` (a one-line reason) and empty
sections; every renderer shows that reason instead of findings.

Every string of a report may come from the target (labels, paths, assertion messages, and
the findings' sentences that quote them): each renderer first makes the whole report
``model.text.printable`` (control characters, bidi overrides and the like escaped), and
Markdown escapes what Markdown would act on (``model.text.markdown``).
"""
import html
import textwrap
import xml.etree.ElementTree as ET

from qemu_chardev.render import base as render
from qemu_chardev.render.gsource import census_section_text
from qemu_chardev.model.diagnosis import REPORT_SCHEMA, SEVERITIES
from qemu_chardev.model.qemu import display_path
from qemu_chardev.model.text import markdown as md_text
from qemu_chardev.model.text import markdown_code as md_code
from qemu_chardev.model.text import printable_tree

# Levels of a report indented in its JSON text: the report and its sections; each chardev,
# thread, finding or object is one line (json.dumps indents in pure Python, 3x slower).
REPORT_JSON_DEPTH = 2

WRAP = 100
_HIGHLIGHT_ROLES = {"chardev", "channel", "task"}


def _plural(count, word):
    return f"{count} {word}{'' if count == 1 else 's'}"


def counts(report):
    summary = report.get("summary") or {}
    return {s: summary.get(s, 0) for s in SEVERITIES}


def verdict(report):
    """'unusable', 'error', 'warning' or 'ok' for one report."""
    if report.get("error"):
        return "unusable"
    c = counts(report)
    if c["error"]:
        return "error"
    if c["warning"]:
        return "warning"
    return "ok"


def report_name(report):
    target = report.get("target") or {}
    post = report.get("postmortem") or {}
    return post.get("input") or target.get("core") or (
        f"pid {target['pid']}" if target.get("pid") else "target")


def counts_text(report):
    c = counts(report)
    return ", ".join([_plural(c["error"], "error"), _plural(c["warning"], "warning"),
                      _plural(c["info"], "info")])


def crash_headline(crash):
    if not crash:
        return None
    text = crash.get("signal_name") or f"signal {crash.get('signal')}"
    if crash.get("code_name"):
        text += f" ({crash['code_name']})"
    if crash.get("fault_address") is not None:
        text += f" at address {crash['fault_address']}"
    return text + f" in thread {crash.get('thread')} (LWP {crash.get('lwp')})"


def frame_line(frame):
    text = f"#{frame['level']:<2} {frame.get('function') or '??'}"
    pointers = frame.get("pointers") or {}
    args = [f"{name}={value or 'NULL'}" for name, value in pointers.items()]
    if args:
        text += " (" + ", ".join(args) + ")"
    if frame.get("file"):
        text += f" at {display_path(frame['file'])}:{frame.get('line')}"
    return text


# --- text -----------------------------------------------------------------------------------

def _wrap(text, indent):
    return textwrap.fill(text, WRAP, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def _target_lines(report, colour):
    target = report.get("target") or {}
    lines = []
    what = f"core {target['core']}" if target.get("core") else (
        f"live process {target['pid']}" if target.get("pid") else "target")
    head = f"QEMU chardev diagnosis of {what}"
    lines.append(render.paint(head, "bold", colour))
    facts = [("binary", target.get("binary")),
             ("QEMU version", target.get("qemu_version") or "not found in the binary")]
    locking = target.get("disconnect_locking") or {}
    if locking:
        takes = {True: "yes", False: "NO", None: "unknown"}[locking.get("takes_lock")]
        facts.append(("tcp_chr_disconnect takes chr_write_lock",
                      f"{takes} ({locking.get('evidence')})"))
    stop = target.get("stop_signal")
    if stop and not report.get("crash"):
        facts.append(("stop signal", f"{stop.get('signal_name')} in thread {stop.get('thread')} "
                      "(a snapshot or debugger stop, not a crash)"))
    width = max(len(k) for k, _v in facts)
    lines += [f"  {k.ljust(width)}  {v}" for k, v in facts if v is not None]
    return lines


def _crash_lines(crash, colour):
    lines = [render.paint("Crash", "bold", colour)]
    if not crash:
        lines.append("  no crash: no thread received a crash signal")
        return lines
    lines.append("  " + render.paint(crash_headline(crash), "red", colour))
    assertion = crash.get("assertion")
    if assertion:
        lines.append("  " + render.paint(assertion_text(assertion), "red", colour))
    for frame in crash.get("frames") or []:
        interesting = bool(_HIGHLIGHT_ROLES & set(frame.get("roles") or ()))
        text = frame_line(frame)
        marker = ">" if interesting else " "
        lines.append(f" {marker}{render.paint(text, 'bold', colour) if interesting else text}")
        if frame.get("source") is not None:
            source = frame["source"].strip()
            lines.append(f"      {frame.get('line'):>5}  {render.highlight_c(source, colour)}")
    return lines


def assertion_text(assertion):
    """'assertion `mutex->initialized' failed at util/qemu-thread-posix.c:88 in
    qemu_mutex_lock_impl()' (or the message itself when it has no expression)."""
    where = f"{display_path(assertion.get('file'))}:{assertion.get('line')}"
    if assertion.get("function"):
        where += f" in {assertion['function']}()"
    if assertion.get("expression"):
        return f"assertion `{assertion['expression']}' failed at {where}"
    return f"{assertion.get('text')} ({where})"


def _object_lines(report, colour):
    """The objects the report reached that are not alive (the alive ones are counted)."""
    objects = report.get("objects") or []
    if not objects:
        return []
    lines = [render.paint("Objects", "bold", colour)]
    alive = sum(1 for o in objects if o.get("verdict") == "alive")
    rest = [o for o in objects if o.get("verdict") != "alive"]
    lines.append(f"  {alive} of {len(objects)} reached objects alive"
                 + ("" if rest else "; none finalized, freed or damaged"))
    for obj in rest:
        name = f"{obj['kind']} '{obj['label']}'" if obj.get("label") else obj["kind"]
        head = f"  {render.paint(obj['verdict'], 'red', colour)} {name} {obj['address']}"
        lines.append(head)
        lines.append(_wrap("; ".join(obj.get("evidence") or []), "      "))
        holders = [h["what"] for h in obj.get("holders") or []]
        if holders:
            lines.append(_wrap("held by: " + "; ".join(holders), "      "))
    return lines


def _lock_text(lock):
    if not lock:
        return "?"
    if lock.get("destroyed"):
        return "destroyed"
    if lock.get("status") == "uninitialized":
        return "not initialized (destroyed)"
    if lock.get("locked") is None:
        return "?"
    if not lock.get("locked"):
        return "free"
    who = f"thread {lock.get('owner_thread')} (LWP {lock.get('owner_lwp')})" \
        if lock.get("owner_thread") is not None else f"LWP {lock.get('owner_lwp')}"
    if lock.get("owner_function"):
        who += f" in {lock['owner_function']}"
    waiters = lock.get("waiters") or []
    if waiters:
        who += f", {len(waiters)} waiting"
    return "held by " + who


def _chardev_rows(report):
    rows = []
    for ch in report.get("chardevs") or []:
        socket = ch.get("type") == "chardev-socket" or ch.get("state") is not None
        label = ch.get("label") or "?"
        if ch.get("in_tree") is False:
            # found only in a thread's frames (*) or through a GSource of the census (+)
            label += " +" if ch.get("found_by") == "census" else " *"
        rows.append([label, ch.get("type") or ch.get("liveness") or "?", ch.get("address"),
                     ch.get("state") or "-",
                     (ch.get("ioc") or "NULL") if socket else "-",
                     (ch.get("sioc") or "NULL") if socket else "-",
                     _lock_text(ch.get("write_lock")), ch.get("filename") or "-"])
    return rows


CHARDEV_HEADERS = ["LABEL", "TYPE", "ADDRESS", "STATE", "IOC", "SIOC", "CHR_WRITE_LOCK",
                   "FILENAME"]
THREAD_HEADERS = ["THREAD", "LWP", "NAME", "WHERE", "WAITING FOR", "HOLDS WRITE LOCK OF"]


def _thread_rows(report):
    rows = []
    for th in report.get("threads") or []:
        where = th.get("function") or "?"
        if th.get("location"):
            where += f" ({display_path(th['location'])})"
        if th.get("waiting_in") and th.get("waiting_in") != th.get("function"):
            where = f"{th['waiting_in']} -> " + where
        if th.get("crashed"):
            where = "CRASHED in " + where
        rows.append([th.get("thread"), th.get("lwp"), th.get("name") or "",
                     where, th.get("waiting_for") or "",
                     ", ".join(th.get("holds_write_lock_of") or [])])
    return rows


def _finding_lines(finding, colour):
    severity = finding.get("severity", "?")
    head = f"{severity.upper()} {finding.get('id')}"
    about = []
    if finding.get("chardev"):
        about.append(f"chardev {finding['chardev']}")
    if finding.get("thread") is not None or finding.get("lwp") is not None:
        about.append(f"thread {finding.get('thread')} / LWP {finding.get('lwp')}")
    if about:
        head += "  [" + ", ".join(about) + "]"
    lines = ["  " + render.paint(head, render.SEVERITY_COLOURS.get(severity), colour),
             _wrap(finding.get("summary") or "", "    ")]
    if finding.get("detail"):
        lines.append(_wrap(finding["detail"], "    "))
    liveness = (finding.get("evidence") or {}).get("liveness") or []
    if liveness:
        lines.append(_wrap("Objects: " + "; ".join(
            f"{o['kind']}{' ' + repr(o['label']) if o.get('label') else ''} {o['address']} "
            f"{o['verdict']}" for o in liveness), "    "))
    if finding.get("fix"):
        lines.append(_wrap("Fix: " + finding["fix"], "    "))
    return lines


def _section_lines(name, section, colour=False):
    if name == "gsource_census" and isinstance(section, dict) and "counts" in section:
        return ["  " + line for line in census_section_text(section, colour).splitlines()]
    lines = [f"  {name}:"]
    if isinstance(section, dict):
        for key, value in section.items():
            if isinstance(value, (str, int, float, bool)) or value is None:
                lines.append(f"    {key}: {value}")
            elif isinstance(value, list):
                lines.append(f"    {key}: {len(value)} item(s)")
    else:
        lines.append(f"    {section}")
    return lines


def text(report, colour=False, show_problems=True):
    """The full text report of one target (its strings ``printable``)."""
    report = printable_tree(report)
    if report.get("error"):
        return (f"{report_name(report)}: "
                + render.paint(f"not analysed: {report['error']}", "red", colour))
    out = _target_lines(report, colour)
    out.append("  verdict: " + counts_text(report)
               + ("" if report.get("complete", True) else "  (report incomplete)"))
    out.append("")
    out += _crash_lines(report.get("crash"), colour)
    out.append("")
    out.append(render.paint("Chardevs", "bold", colour))
    rows = _chardev_rows(report)
    out.append(_indent(render.table(CHARDEV_HEADERS, rows)) if rows else "  none found")
    chardevs = report.get("chardevs") or []
    if any(ch.get("in_tree") is False and ch.get("found_by") != "census" for ch in chardevs):
        out.append("  * not in /chardevs: found in a thread's frames (TYPE says if it is "
                   "finalized or freed)")
    if any(ch.get("in_tree") is False and ch.get("found_by") == "census" for ch in chardevs):
        out.append("  + not reached in /chardevs: found through a GSource of the census")
    for ch in chardevs:
        for what in ch.get("damaged") or []:
            out.append(f"  ! {ch.get('label') or ch.get('address')}: damaged: {what}")
    out.append("")
    out.append(render.paint("Threads", "bold", colour))
    out.append(_indent(render.table(THREAD_HEADERS, _thread_rows(report))))
    objects = _object_lines(report, colour)
    if objects:
        out.append("")
        out += objects
    tasks = report.get("tasks") or []
    if tasks:
        out.append("")
        out.append(render.paint("QIOTasks", "bold", colour))
        out.append(_indent(render.table(
            ["ADDRESS", "FOUND VIA", "FUNC", "WORKER", "COMPLETION"],
            [[t.get("address"), t.get("found_via"), t.get("func_symbol") or t.get("func"),
              t.get("worker_symbol") or "-",
              (t.get("completion") or {}).get("state", "-")] for t in tasks])))
    sections = report.get("sections") or {}
    if sections:
        out.append("")
        out.append(render.paint("More", "bold", colour))
        for name, section in sections.items():
            out += _section_lines(name, section, colour)
    out.append("")
    out.append(render.paint("Findings", "bold", colour))
    found = report.get("findings") or []
    if not found:
        out.append("  none")
    for finding in found:
        out += _finding_lines(finding, colour)
    if show_problems and report.get("problems"):
        out.append("")
        out.append(render.paint("Incomplete:", "yellow", colour))
        out += ["  - " + p for p in report["problems"]]
    return "\n".join(out)


def _indent(block, prefix="  "):
    return "\n".join(prefix + line for line in block.splitlines())


def text_many(reports, colour=False):
    """Several reports one after the other, then a one-line summary per core."""
    reports = [printable_tree(r) for r in reports]
    parts = [text(r, colour) for r in reports]
    summary = [render.paint("Summary", "bold", colour)]
    for report in reports:
        summary.append(f"  {report_name(report)}: " + (
            f"not analysed: {report['error']}" if report.get("error") else
            f"{verdict(report)} ({counts_text(report)})"))
    sep = "\n\n" + "=" * 78 + "\n\n"
    return sep.join(parts) + "\n\n" + "\n".join(summary)


# --- JSON -------------------------------------------------------------------------------------

def envelope(reports):
    """One report as itself; several as {"schema", "reports": [...]}."""
    if len(reports) == 1:
        return reports[0]
    return {"schema": REPORT_SCHEMA, "reports": list(reports)}


def envelope_json(reports):
    """``envelope(reports)`` as JSON text: a report and its sections indented, each chardev,
    thread, finding or object on one line (``base.to_json_text``)."""
    depth = REPORT_JSON_DEPTH + (0 if len(reports) == 1 else 2)     # + envelope, its list
    return render.to_json_text(envelope(reports), depth=depth)


# --- Markdown ---------------------------------------------------------------------------------

def _md_cell(value):
    """Markdown text for a table cell or a sentence: nothing in it acts as Markdown."""
    return md_text(value)


def _md_table(headers, rows, escape=True):
    """A GFM table; ``escape=False``: the cells are Markdown already."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(c) if escape else str(c) for c in row) + " |"
              for row in rows]
    return "\n".join(lines)


def _md_code(text):
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}\n{text}\n{fence}"


_MD_VERDICT = {"error": "**FAIL**", "warning": "warning", "ok": "ok",
               "unusable": "**not analysed**"}


def markdown(reports, title="QEMU chardev post-mortem"):
    """A Markdown summary (GitHub job summary, GitLab/GitHub merge-request comment)."""
    reports = [printable_tree(r) for r in reports]
    out = [f"## {md_text(title)}", ""]
    if not reports:
        out.append("No core files to analyse.")
        return "\n".join(out) + "\n"
    rows = []
    for report in reports:
        c = counts(report)
        crash = report.get("crash")
        first_error = next((f["id"] for f in report.get("findings") or []
                            if f.get("severity") == "error"), "")
        rows.append([md_code(report_name(report), in_table=True),
                     _md_cell((report.get("target") or {}).get("qemu_version") or ""),
                     _md_cell((crash or {}).get("signal_name") or
                              ("" if report.get("error") else "none")),
                     c["error"], c["warning"],
                     _MD_VERDICT[verdict(report)]
                     + (f" {md_code(first_error, in_table=True)}" if first_error else "")
                     + (f": {_md_cell(report['error'])}" if report.get("error") else "")])
    out.append(_md_table(["Core", "QEMU", "Crash", "Errors", "Warnings", "Verdict"], rows,
                         escape=False))
    for report in reports:
        out += ["", f"### {md_code(report_name(report))}", ""]
        if report.get("error"):
            out.append(f"Not analysed: {_md_cell(report['error'])}")
            continue
        if not report.get("complete", True):
            out.append("*Report incomplete:* "
                       + _md_cell("; ".join(report.get("problems") or [])))
            out.append("")
        found = [f for f in report.get("findings") or [] if f.get("severity") != "info"]
        if not found:
            out.append("No error or warning findings.")
        for finding in found:
            about = ", ".join(x for x in (
                f"chardev {md_code(finding['chardev'])}" if finding.get("chardev") else "",
                f"thread {finding['thread']} / LWP {finding['lwp']}"
                if finding.get("lwp") is not None else "") if x)
            out.append(f"- **{_md_cell(finding['severity'].upper())} {md_code(finding['id'])}**"
                       + (f" ({about})" if about else "")
                       + f": {_md_cell(finding.get('summary'))}")
            if finding.get("detail"):
                out.append(f"  <br>{_md_cell(finding['detail'])}")
            if finding.get("fix"):
                out.append(f"  <br>**Fix:** {_md_cell(finding['fix'])}")
        infos = [f for f in report.get("findings") or [] if f.get("severity") == "info"]
        crash = report.get("crash")
        if crash:
            out += ["", f"<details><summary>Crash: {html.escape(crash_headline(crash))}"
                    "</summary>", "",
                    _md_code("\n".join(frame_line(f) for f in crash.get("frames") or [])),
                    "", "</details>"]
        if report.get("chardevs"):
            out += ["", "<details><summary>Chardevs</summary>", "",
                    _md_table(CHARDEV_HEADERS, _chardev_rows(report)), "", "</details>"]
        if infos:
            out += ["", "<details><summary>Other findings</summary>", ""]
            out += [f"- {md_code(f['id'])}: {_md_cell(f.get('summary'))}" for f in infos]
            out += ["", "</details>"]
    return "\n".join(out) + "\n"


# --- JUnit XML --------------------------------------------------------------------------------

def _xml_text(text):
    """Text XML 1.0 can carry: the report's strings are already ``printable`` (control
    characters escaped, so shown rather than dropped); what is left (our own tabs and
    newlines are kept) is dropped.  ElementTree escapes ``<``, ``&`` and ``]]>``."""
    return "".join(ch for ch in str(text) if ch in "\t\n\r" or
                   (0x20 <= ord(ch) <= 0xD7FF) or (0xE000 <= ord(ch) <= 0xFFFD) or
                   ord(ch) >= 0x10000)


def junit(reports, suite="chardev-postmortem"):
    """JUnit XML: one testcase per core, one <failure> per error finding, an <error> for a
    core that could not be analysed.  Counts follow the Jenkins/GitLab JUnit schema:
    ``tests`` testcases, ``failures`` failure elements, ``errors`` error elements."""
    reports = [printable_tree(r) for r in reports]
    failures = errors = 0
    total_time = 0.0
    cases = []
    for report in reports:
        post = report.get("postmortem") or {}
        seconds = float(post.get("seconds") or 0.0)
        total_time += seconds
        binary = ((report.get("target") or {}).get("binary") or "qemu").rsplit("/", 1)[-1]
        case = ET.Element("testcase", {"classname": f"{suite}.{binary}",
                                       "name": _xml_text(report_name(report)),
                                       "time": f"{seconds:.3f}"})
        if report.get("error"):
            errors += 1
            element = ET.SubElement(case, "error", {"type": "unusable-core",
                                                    "message": _xml_text(report["error"])})
            element.text = _xml_text(report["error"])
        for finding in report.get("findings") or []:
            if finding.get("severity") != "error":
                continue
            failures += 1
            element = ET.SubElement(case, "failure", {
                "type": finding.get("id") or "finding",
                "message": _xml_text(finding.get("summary") or "")})
            body = [finding.get("summary") or "", "", finding.get("detail") or ""]
            if finding.get("fix"):
                body += ["", "Fix: " + finding["fix"]]
            crash = report.get("crash")
            if crash:
                body += ["", crash_headline(crash)]
                body += [frame_line(f) for f in crash.get("frames") or []]
            element.text = _xml_text("\n".join(body))
        if not report.get("error"):
            out = ET.SubElement(case, "system-out")
            out.text = _xml_text(text(report, colour=False))
        cases.append(case)
    attrs = {"name": suite, "tests": str(len(reports)), "failures": str(failures),
             "errors": str(errors), "time": f"{total_time:.3f}"}
    root = ET.Element("testsuites", attrs)
    testsuite = ET.SubElement(root, "testsuite", dict(attrs, skipped="0"))
    testsuite.extend(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"
