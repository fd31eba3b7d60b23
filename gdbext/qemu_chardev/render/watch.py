"""Text for `qemu watch-disconnect`: coverage table, event reports, summaries (no gdb).

Labels and thread names come from the target: everything shown is ``printable``
(``model.text``)."""
from qemu_chardev.model.text import printable, printable_tree
from qemu_chardev.render import base as render
from qemu_chardev.analysis.watch import CALLBACK_ON_FINALIZED, CRASH, FINALIZED_WITH_PENDING_TASK

LIFECYCLE_KINDS = (CALLBACK_ON_FINALIZED, FINALIZED_WITH_PENDING_TASK)

PREFIX = "qemu watch-disconnect"
STACK_LINES = 8
BRIEF_STACK_LINES = 3


def coverage_table(rows, colour=False):
    """rows: [{label, address, watched: [fields], registers, fallback: bool}]."""
    if not rows:
        return "  (no socket chardev yet)"
    out = []
    for row in rows:
        if row["watched"]:
            how = "hardware watchpoint on " + " and ".join(row["watched"])
            regs = str(row["registers"])
        else:
            how = render.paint("no debug register left: breakpoint on tcp_chr_free_connection",
                               "yellow", colour)
            regs = "0"
        out.append([printable(row["label"]) or "?", f"0x{row['address']:x}", how, regs])
    return render.table(["CHARDEV", "ADDRESS", "WATCHED BY", "DEBUG REGS"], out)


def frame_line(frame):
    where = f" at {frame['file']}:{frame['line']}" if frame.get("file") else ""
    return f"#{frame['level']:<2} {frame.get('function') or '??'}{where}"


def stack_lines(frames, limit=STACK_LINES, indent="      "):
    lines = [indent + frame_line(f) for f in frames[:limit]]
    if len(frames) > limit:
        lines.append(f"{indent}... ({len(frames) - limit} more frames)")
    return lines


def event_block(event, colour=False, brief=False):
    """The report of one WatchEvent (from ``WatchEvent.to_json()``)."""
    event = printable_tree(event)
    severity = event["severity"]
    head = render.paint(f"[{event['seq']}] {severity.upper()} {event['id']}",
                        "red" if severity == "error" else "yellow", colour)
    chardev = event["chardev"]
    label = chardev["label"] if chardev["label"] is not None else "?"
    lines = [f"{PREFIX}: {head}: chardev '{label}' ({chardev['address']})"]
    lines.append(f"  {event['summary']}")
    who = f"LWP {event['lwp']}"
    if event.get("thread") is not None:
        who += f" (thread {event['thread']}"
        who += f" \"{event['thread_name']}\")" if event.get("thread_name") else ")"
    if event["id"] == CRASH:
        lines.append(f"  crashing thread {who}, signal {event.get('signal')}:")
    elif event["id"] in LIFECYCLE_KINDS:
        lines.append(f"  thread {who}:")
    else:
        lines.append(f"  disconnecting thread {who}:")
    lines += stack_lines(event.get("stack") or [],
                         limit=BRIEF_STACK_LINES if brief and severity != "error" else STACK_LINES)
    if event.get("writer_lwp") is not None:
        writer = f"LWP {event['writer_lwp']}"
        if event.get("writer_thread") is not None:
            writer += f" (thread {event['writer_thread']})"
        lines.append(f"  writer holding chr_write_lock: {writer}:")
        lines += stack_lines(event.get("writer_stack") or [])
    if event.get("core"):
        lines.append(f"  core written: {event['core']}")
    for problem in event.get("problems") or []:
        lines.append(render.paint(f"  ! {problem}", "red", colour))
    return "\n".join(lines)


def summary_line(summary):
    summary = printable_tree(summary)
    c = summary["counters"]
    text = (f"{PREFIX}: {summary['reason']}; {c['errors']} error(s), {c['warnings']} "
            f"warning(s); saw {c['teardowns']} teardown(s) ({c['locked_teardowns']} with the "
            f"lock, {c['finalizations']} in finalization), {c['connects']} connect(s), "
            f"{c['created']} chardev(s) created, {c['finalized']} finalized")
    if summary.get("json_log"):
        text += f"; events in {summary['json_log']}"
    return text
