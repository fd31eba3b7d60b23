"""Rendering models as text tables, key/value blocks and JSON (no gdb imports).

tabulate and pygments are optional at run time: without them the output is plain but
complete, and ``MISSING_OPTIONAL`` says which is missing (the loader prints it once).

Colour is the caller's decision (``colour`` arguments: the gdb side says yes only on a
terminal, without NO_COLOR and with gdb's styling on).  Width is decided here, at render
time, from ``set_width_source``: the gdb side gives gdb's ``width`` (the terminal's, or
``set width``); a table wider than that first leaves out the columns its caller marks
optional, then, if still too wide, is printed as one block per row, so that gdb does not fold
its lines into an unreadable mess.  No source, or an unlimited width
(gdb -batch, ``set width 0``): tables are never reshaped.
"""
import json

try:
    from tabulate import tabulate as _tabulate
except ImportError:  # pragma: no cover - exercised by a test that hides the module
    _tabulate = None
import importlib.util
import re

try:        # what tabulate measures wide characters with (a dependency of it)
    from wcwidth import wcswidth as _wcswidth
except ImportError:  # pragma: no cover
    _wcswidth = None

from qemu_chardev.model import glib
from qemu_chardev.model.text import printable

# pygments costs tens of milliseconds to import: only do it when something is highlighted.
_HAVE_PYGMENTS = importlib.util.find_spec("pygments") is not None

MISSING_OPTIONAL = [name for name, present in (("tabulate", _tabulate is not None),
                                               ("pygments", _HAVE_PYGMENTS)) if not present]


def _highlight(text, lexer_name):
    """``text`` highlighted for a terminal, or None without pygments."""
    if not _HAVE_PYGMENTS:
        return None
    from pygments import highlight
    from pygments.formatters import TerminalFormatter
    from pygments.lexers import get_lexer_by_name
    return highlight(text, get_lexer_by_name(lexer_name), TerminalFormatter()).rstrip("\n")


_COLOURS = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}


def paint(text, colour, enabled):
    if not enabled or not colour:
        return text
    return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m"


# Columns kept free for the indent some callers put in front of a table (the report's).
TABLE_INDENT_ALLOWANCE = 2
_width_source = []


def set_width_source(source):
    """``source()`` returns the output's width in columns, or None/0 for unlimited; the gdb
    side sets it once (render never imports gdb).  ``None`` removes it."""
    _width_source[:] = [source] if source is not None else []


def output_width():
    """The width tables must fit in, or None (unlimited, or nobody said)."""
    if not _width_source:
        return None
    try:
        width = _width_source[0]()
    except Exception:       # a width we cannot read is no reason to fail a command
        return None
    return width if isinstance(width, int) and width > 0 else None


def table(headers, rows, width=None, optional=()):
    """A plain-text table (tabulate's "simple" format, or an aligned fallback) that fits in
    ``width`` columns (default ``output_width()``): the ``optional`` columns are left out, in
    that order, until it fits, and a line says which; a table that still does not fit is
    printed as one block of ``HEADER  value`` lines per row, every column kept."""
    rows = [["" if c is None else str(c) for c in row] for row in rows]
    width = output_width() if width is None else width
    text = _grid(headers, rows)
    if not width or not rows or _fits(text, width):
        return text
    keep = list(range(len(headers)))
    dropped = []
    for name in optional:
        if name not in headers:
            continue
        keep.remove(headers.index(name))
        dropped.append(name)
        narrower = _grid([headers[i] for i in keep], [[row[i] for i in keep] for row in rows])
        if _fits(narrower, width):
            return (narrower + f"\n({', '.join(dropped)} not shown at width {width}; "
                    "`set width 0` shows every column)")
    return _records(headers, rows)


def _fits(text, width):
    return max(_visible_len(line) for line in text.splitlines()) + TABLE_INDENT_ALLOWANCE <= width


def _records(headers, rows):
    """Each row as lines of ``HEADER  value``, rows apart by a blank line."""
    key_width = max(len(h) for h in headers)
    blocks = ["\n".join(f"{h.ljust(key_width)}  {c}".rstrip() for h, c in zip(headers, row))
              for row in rows]
    return "\n\n".join(blocks)


# tabulate 0.8.9 (Debian 12) infers a type for every cell, strings too: 0.12 ms per row of nine
# columns, 0.12-0.15 s for the chardev list of 1000 chardevs.  A longer table gets the same
# "simple" format from ``_simple_grid``, one pass per cell (tests/unit/test_render.py checks
# that both give the same text), as does every table when tabulate is not installed.
LARGE_TABLE_ROWS = 100
# Colour (SGR) sequences: what tabulate's "simple" format, and a terminal, do not count.
_SGR = re.compile(r"\x1b\[\d+[;\d]*m|\x1b\[\d*;\d*;\d*m")


def _grid(headers, rows):
    if _tabulate is not None and (len(rows) <= LARGE_TABLE_ROWS
                                  or not _single_line_sgr_only(headers, rows)):
        return _tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
    return _simple_grid(headers, rows)


def _single_line_sgr_only(headers, rows):
    """True when no cell holds a line break or an escape other than a colour (what
    ``_simple_grid`` lays out exactly as tabulate does)."""
    text = "\t".join(headers) + "".join("\t".join(row) for row in rows)
    return "\n" not in text and "\r" not in text and \
        _SGR.sub("", text).find("\x1b") < 0


def _simple_grid(headers, rows):
    """tabulate's "simple" format of string cells: each column as wide as its widest cell and
    at least its header plus two, cells stripped and left-aligned, two spaces between columns,
    a dashed rule under the headers, no trailing blanks."""
    rows = [[c.strip() for c in row] for row in rows]
    coloured = _SGR.search("\t".join([*headers, *(c for row in rows for c in row)]))
    width = _visible_width if coloured else _text_width
    widths = [width(h) + 2 for h in headers]
    for row in rows:
        widths = [max(w, width(c)) for w, c in zip(widths, row)]

    def line(cells):
        return "  ".join(c + " " * (w - width(c)) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), "  ".join("-" * w for w in widths),
                      *(line(row) for row in rows)])


def _text_width(text):
    """Columns ``text`` takes on a terminal (wide characters two, combining ones none), as
    tabulate measures it (-1 when it holds a control character); its length without wcwidth."""
    return _wcswidth(text) if _wcswidth is not None else len(text)


def _visible_width(text):
    """``_text_width`` of ``text`` without its colour sequences, as tabulate measures it."""
    return _text_width(_SGR.sub("", text))


def _visible_len(text):
    """Columns ``text`` takes on a terminal, colour sequences left out, a control character
    counted as one (whether a table fits)."""
    stripped = _SGR.sub("", text)
    width = _text_width(stripped)
    return width if width >= 0 else len(stripped)


def to_json_text(obj, colour=False, depth=None):
    """``obj`` as JSON, indented by two spaces; with ``depth``, only the first ``depth``
    levels of nesting are, and each value below them is on one line.

    json.dumps with ``indent`` runs in pure Python, without it in C: the report of 1000
    chardevs (3.3 MB) took 0.17 s indented and 0.05 s on one line.  Reports keep their
    sections indented and give each chardev, thread, finding or object one line."""
    text = _json_text(obj, depth, "") if depth is not None else json.dumps(obj, indent=2)
    return (colour and _highlight(text, "json")) or text


def _json_text(obj, depth, pad):
    if depth <= 0 or not obj or not isinstance(obj, (dict, list)):
        return json.dumps(obj, separators=(", ", ": "))
    inner = pad + "  "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(str(key))}: {_json_text(value, depth - 1, inner)}"
                 for key, value in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    items = [inner + _json_text(value, depth - 1, inner) for value in obj]
    return "[\n" + ",\n".join(items) + "\n" + pad + "]"


def highlight_c(line, colour):
    """A C source line, highlighted on a terminal."""
    return (colour and _highlight(line, "c")) or line


def pointer(value, colour=False, null_is_bad=False):
    if not value:
        return paint("NULL", "red" if null_is_bad else "dim", colour)
    return f"0x{value:x}"


def lock_summary(lock, colour=False):
    """'free', 'held by LWP 12 (thread 1) in tcp_chr_write', 'destroyed', '?'."""
    if lock is None or lock.locked is None:
        return paint("?", "red", colour)
    if lock.destroyed:
        return paint("destroyed", "red", colour)
    if lock.initialized is False:
        return paint("not initialized (destroyed)", "red", colour)
    if not lock.locked:
        return paint("free", "green", colour)
    if lock.owner is not None:
        text = "held by " + lock.owner.describe()
    elif lock.owner_lwp:
        text = f"held by LWP {lock.owner_lwp}"
    else:
        text = "held (owner unknown)"
    return paint(text, "yellow", colour)


def chardev_list(chardevs, colour=False):
    """The `qemu chardev list` table, with notes for chardevs found outside the QOM tree."""
    if not chardevs:
        return "No chardevs found."
    rows = []
    notes = []
    for ch in chardevs:
        label = printable(ch.label) if ch.label is not None else "?"
        if not ch.in_tree:
            label += " *"
            notes.append(f"* {printable(ch.label) or hex(ch.address)}: not in /chardevs, found in "
                         f"{ch.found_via}" + (f"; {ch.liveness}" if ch.liveness else ""))
        connected = ch.state == "connected"
        if ch.is_socket:
            sock = [paint(ch.state or "?", "green" if connected else "yellow", colour),
                    pointer(ch.ioc, colour, null_is_bad=connected),
                    pointer(ch.sioc, colour, null_is_bad=connected),
                    pointer(ch.listener, colour)]
        else:
            sock = ["-", "-", "-", "-"]
        rows.append([label, ch.type or "?", f"0x{ch.address:x}", *sock,
                     ch.be_open, lock_summary(ch.write_lock, colour)])
        for problem in ch.problems:
            notes.append(f"! {printable(ch.label) or hex(ch.address)}: {printable(problem)}")
    # In a narrow terminal the addresses go first (`qemu chardev show` has them all), then
    # what the other columns imply: STATE, IOC and the lock are the questions.
    text = table(["LABEL", "TYPE", "ADDRESS", "STATE", "IOC", "SIOC", "LISTENER", "BE_OPEN",
                  "CHR_WRITE_LOCK"], rows, optional=("ADDRESS", "LISTENER", "SIOC", "BE_OPEN"))
    return text + ("\n" + "\n".join(notes) if notes else "")


def _kv(pairs):
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"  {k.ljust(width)}  {'NULL' if v is None else v}" for k, v in pairs)


def mutex_block(lock, colour=False, cycles=()):
    pairs = [("address", f"0x{lock.address:x} ({lock.kind})"),
             ("state", lock_summary(lock, colour))]
    if lock.owner is not None and lock.owner.location:
        pairs.append(("owner at", lock.owner.location))
    if lock.locker:
        pairs.append(("locked at", printable(lock.locker) + " (debug-mutex)"))
    pairs += [("type", lock.mutex_type), ("lock word", lock.lock_word)]
    if lock.mutex_type == "recursive":
        pairs.append(("recursion", lock.count))
    if lock.initialized is not None:
        pairs.append(("initialized", lock.initialized))
    waiters = ", ".join(w.describe() for w in lock.waiters) or "none"
    pairs.append(("waiters", waiters))
    lines = [_kv(pairs)]
    for cycle in cycles:
        lines.append(paint("  DEADLOCK: " + cycle_text(cycle), "red", colour))
    for problem in lock.problems:
        lines.append(paint(f"  ! {problem}", "red", colour))
    return "\n".join(lines)


def cycle_text(cycle):
    """'LWP 5 waits for 0x.. held by LWP 6; LWP 6 waits for 0x.. held by LWP 5'."""
    parts = []
    for i, (lwp, mutex) in enumerate(cycle):
        holder = cycle[(i + 1) % len(cycle)][0]
        if holder == lwp:
            parts.append(f"LWP {lwp} waits for 0x{mutex:x}, which it already holds")
        else:
            parts.append(f"LWP {lwp} waits for 0x{mutex:x} held by LWP {holder}")
    return "; ".join(parts)


GSOURCE_STATE_COLOURS = {
    glib.ATTACHED: "green", glib.DISPATCHING: "green", glib.UNATTACHED: "yellow",
    glib.DESTROYED_REFERENCED: "yellow", glib.LEAKED: "red", glib.FREED: "red",
    glib.INVALID: "red", glib.UNREADABLE: "red"}
SEVERITY_COLOURS = {"error": "red", "warning": "yellow", "info": "dim"}


def gsource_state(state, colour=False):
    """A GSource state (``model.glib.STATES``), coloured by how bad it is."""
    return paint(state, GSOURCE_STATE_COLOURS.get(state), colour)


def gsource_block(src, colour=False):
    pairs = [("address", f"0x{src.address:x}" + (f" ({src.role})" if src.role else "")),
             ("state", gsource_state(src.state, colour)),
             ("ref_count", src.ref_count),
             ("flags", f"0x{src.flags:x} " + ("|".join(src.flag_names) or "none")
              if src.flags is not None else None),
             ("context", pointer(src.context)), ("source id", src.source_id),
             ("priority", src.priority), ("name", printable(src.name)),
             ("funcs", _sym(src.funcs, src.funcs_symbol)),
             ("callback", _sym(src.callback, src.callback_symbol)),
             ("callback data", pointer(src.callback_data) if src.callback else None)]
    lines = [_kv(pairs)]
    lines += [paint(f"  ! {p}", "red", colour) for p in src.problems]
    return "\n".join(lines)


def _sym(address, symbol):
    if not address:
        return None
    return f"0x{address:x} <{symbol}>" if symbol else f"0x{address:x}"


def gsource_rows(sources, colour=False):
    return table(["ROLE", "ADDRESS", "REF", "FLAGS", "CONTEXT", "ID", "PRIO", "FUNCS",
                  "CALLBACK", "STATE"],
                 [[s.role, f"0x{s.address:x}", s.ref_count, "|".join(s.flag_names) or "-",
                   pointer(s.context), s.source_id, s.priority, s.funcs_symbol or pointer(s.funcs),
                   s.callback_symbol or "-", gsource_state(s.state, colour)] for s in sources])


def object_rows(objects):
    return table(["ROLE", "ADDRESS", "TYPE", "REF", "FD"],
                 [[o.role, f"0x{o.address:x}", o.type or "?", o.ref,
                   o.fd if o.fd is not None else "-"] for o in objects])


def qiotask_block(task, colour=False):
    src = task.source
    pairs = [("address", f"0x{task.address:x}"), ("found via", task.found_via),
             ("source", f"0x{src.address:x} ({src.type})" if src else None),
             ("func", _sym(task.func, task.func_symbol)), ("opaque", pointer(task.opaque)),
             ("error", pointer(task.error)), ("result", pointer(task.result)),
             ("thread data", pointer(task.thread_data))]
    if task.thread_data:
        pairs += [("worker", task.worker_symbol), ("context", pointer(task.context))]
    if task.worker_thread:
        pairs.append(("worker thread", task.worker_thread.describe()))
    lines = [_kv(pairs)]
    if task.completion is not None:
        lines.append("  completion GSource:")
        lines.append("  " + gsource_block(task.completion, colour).replace("\n", "\n  "))
    lines += [paint(f"  ! {p}", "red", colour) for p in task.problems]
    return "\n".join(lines)


def chardev_block(ch, colour=False):
    head = f"Chardev '{printable(ch.label)}' ({ch.type}) at 0x{ch.address:x}"
    if not ch.in_tree:
        head += f"  [not in /chardevs; found in {ch.found_via}]"
    out = [paint(head, "bold", colour)]
    pairs = [("be_open", ch.be_open), ("filename", printable(ch.filename)),
             ("frontend", pointer(ch.frontend))]
    out.append(_kv(pairs))
    out.append("chr_write_lock:")
    out.append(mutex_block(ch.write_lock, colour))
    if ch.is_socket:
        out.append("SocketChardev fields:")
        out.append(_kv([(k, "n/a" if v == "n/a" else v) for k, v in ch.fields.items()]))
    if ch.objects:
        out.append("QIOChannel / listener objects:")
        out.append(object_rows(ch.objects))
    if ch.gsources:
        out.append("GSources:")
        out.append(gsource_rows(ch.gsources, colour))
    if ch.connect_task is not None:
        out.append("connect_task:")
        out.append(qiotask_block(ch.connect_task, colour))
    out += [paint(f"! {printable(p)}", "red", colour) for p in ch.problems]
    return "\n".join(out)


def problems_footer(problems):
    if not problems:
        return ""
    return "\nIncomplete: " + "; ".join(problems)
