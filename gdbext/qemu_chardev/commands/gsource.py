"""`qemu gsource EXPR`, `qemu gsource census` and `qemu gsource trace`."""
import gdb

from qemu_chardev.commands.base import QcgCommand, deferred, envelope
from qemu_chardev.model import glib as glib_facts
from qemu_chardev.model.errors import QcgError, TargetReadError
from qemu_chardev.render import base as render
from qemu_chardev.target.memory import address_of_expression

census = deferred("qemu_chardev.readers.census")
glib = deferred("qemu_chardev.readers.glib")
gsource = deferred("qemu_chardev.readers.gsource")
render_gsource = deferred("qemu_chardev.render.gsource")
trace = deferred("qemu_chardev.live.trace")


class GSourcePrefix(QcgCommand):
    """Decode a GSource: refcount, flags, context, id, funcs and callback, state.

Usage: qemu gsource [--json] EXPR

EXPR is a GSource* (or any pointer/address of one, e.g. 's->hup_source' or
'task->thread->completion').  Read without GLib debug info.  States (the census's words):
attached, dispatching, unattached, destroyed-referenced (g_source_destroy ran but a
reference is still held: a leak if nobody points at it), freed (ref_count 0), invalid
(fields no GSource has: garbage or reused memory)."""
    command = "qemu gsource"
    prefix = True
    operand = "EXPR"

    def run(self, args, snap):
        spec = args.spec
        address, _pointee = address_of_expression(spec)
        src = gsource.read_gsource(snap, address)
        if src.state == glib_facts.UNREADABLE:
            raise TargetReadError(f"GSource {spec!r}", address)
        return render.gsource_block(src, args.colour), envelope(snap, gsource=src.to_json())


class GSourceCensus(QcgCommand):
    """Find every GSource in memory; count, classify and check them for leaks.

Usage: qemu gsource census [--json] [--all] [--no-frames]

Scans the writable memory of the core file or live process for GSource objects (anchored
on the GSourceFuncs tables: GLib's g_idle_funcs, g_timeout_funcs, ... and QEMU's own),
without GLib debug info, so unreachable (leaked) sources are found too.  Each source is
classified: attached, dispatching, unattached, destroyed-referenced (destroyed, still
referenced by a known owner), leaked (destroyed, still referenced, nothing known points at
it), freed (ref_count 0).  Owners checked: chardev fields (gsource, hup_source,
telnet_source, reconnect_timer), live QIOTasks' completion, listener sources, contexts'
pending dispatches, parent sources, IOWatchPoll.src and GSource pointers in QEMU stack frames
(--no-frames skips unwinding the threads).

Findings: gsource-leak (e.g. one idle source per threaded QIOTask, the bug fixed by
"main-loop: Fix GSource leak in qio_task_thread_worker()", QEMU 4.2) and
gsource-use-after-free (a live structure pointing at a source that looks freed).
--all lists every source; --json prints the census and the findings."""
    command = "qemu gsource census"

    def build_parser(self, parser):
        parser.add_argument("--all", action="store_true", help="list every source found")
        parser.add_argument("--no-frames", action="store_true",
                            help="do not unwind threads to find GSource pointers in frames")

    def run(self, args, snap):
        result = census.take_census(snap, with_frames=not args.no_frames)
        text = render_gsource.census_text(result, args.colour, show_all=args.all)
        return text, envelope(snap, census=result.to_json(),
                              findings=[f.to_json() for f in result.findings()])


class GSourceTrace(QcgCommand):
    """Trace one GSource's reference count on a live process with hardware watchpoints.

Usage: qemu gsource trace [--max-events N] [--timeout SECONDS] [--depth N] [--json] EXPR

EXPR is a GSource* (e.g. 's->reconnect_timer', '((SocketChardev *)0x...)->hup_source', or an
address).  Watchpoints on its ref_count and flags log every change with the thread and a
short backtrace (who took and who dropped each reference); the process runs until the count
reaches 0, a destroyed source gains a reference, N changes were seen (default 200), the
timeout expires or you press Ctrl-C.  Then a summary table is printed and the watchpoints
are removed.  Read-only: nothing is called in the inferior and nothing is written."""
    command = "qemu gsource trace"
    operand = "EXPR"
    json_help = "print the history as JSON at the end"

    def build_parser(self, parser):
        parser.add_argument("--max-events", type=int, default=trace.DEFAULT_MAX_EVENTS,
                            metavar="N", help="stop after N changes")
        parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                            help="stop after SECONDS (interrupts the process)")
        parser.add_argument("--depth", type=int, default=trace.DEFAULT_DEPTH, metavar="N",
                            help="frames of backtrace per change")

    def run(self, args, snap):
        inferior = gdb.selected_inferior()
        connection = getattr(inferior, "connection", None)
        if connection is not None and connection.type == "core":
            raise QcgError("qemu gsource trace needs a live process, not a core file")
        if args.max_events < 1 or args.depth < 1:
            raise QcgError("--max-events and --depth must be at least 1")
        spec = args.spec
        address, _type = address_of_expression(spec)
        if not address:
            raise QcgError(f"{spec!r} is NULL: no GSource to trace")
        src = gsource.read_gsource(snap, address)
        if src.state == glib_facts.UNREADABLE:
            raise TargetReadError(f"GSource {spec!r}", address)
        if src.state in (glib_facts.FREED, glib_facts.INVALID):
            raise QcgError(f"GSource {spec!r} at 0x{address:x} looks freed (ref_count "
                           f"{src.ref_count}): nothing to trace")
        layout = glib.gsource_layout()
        tracer = trace.Tracer(address, layout.field("ref_count").offset,
                              layout.field("flags").offset, depth=args.depth,
                              max_events=args.max_events, log=not args.json)
        tracer.arm()
        if not args.json:
            gdb.write(f"Tracing GSource 0x{address:x} ({src.funcs_symbol or 'unknown funcs'}, "
                      f"ref_count {tracer.start[0]}, flags 0x{tracer.start[1]:x}); "
                      f"Ctrl-C to stop.\n")
        reason = tracer.run(timeout=args.timeout, quiet=args.json)
        text = render_gsource.trace_summary(address, tracer.start, tracer.events, reason,
                                            args.colour)
        return text, envelope(snap, gsource=f"0x{address:x}",
                              start={"ref_count": tracer.start[0], "flags": tracer.start[1]},
                              events=[e.to_json() for e in tracer.events], stopped=reason)


COMMANDS = (GSourcePrefix, GSourceCensus, GSourceTrace)
