"""`qemu watch-disconnect`: catch a socket chardev disconnected without its chr_write_lock."""
import gdb

from qemu_chardev.commands.base import QcgCommand, deferred, envelope, require_target
from qemu_chardev.model.errors import QcgError, UsageError
from qemu_chardev.render.base import to_json_text

watch = deferred("qemu_chardev.live.watch")
watch_render = deferred("qemu_chardev.render.watch")
wa = deferred("qemu_chardev.analysis.watch")


class WatchDisconnect(QcgCommand):
    """Catch a socket chardev torn down by a thread that does not hold its chr_write_lock.

Usage: qemu watch-disconnect [LABEL...] [--duration SECONDS] [--stop] [--json-log FILE]
                             [--core-dir DIR] [--fields state[,ioc,sioc]]
                             [--max-debug-registers N] [--summary-json FILE] [--quiet]
                             [--arm-only] [--json]
       qemu watch-disconnect            (again, while armed: resume watching)
       qemu watch-disconnect --status [--json]
       qemu watch-disconnect --off
       qemu watch-disconnect --finish [--at-scene] [--quit]

Arms hardware watchpoints on each socket chardev (only the LABELs given, if any) and runs
the process until Ctrl-C, --duration, the process exits, or with --stop the first error.
Reports, with the stacks of the threads involved:
  error   disconnect-during-write: s->state left 'connected' (or s->ioc/sioc was cleared)
          by a thread while another thread held chr_write_lock: a write was in flight
          (the 2019 crash: ioc=0x0 in qio_channel_writev_full under tcp_chr_write).
  warning disconnect-without-write-lock: the same teardown with nobody holding the lock:
          the same latent bug, on a run where the race did not strike.
Connects are not violations, and neither is char_socket_finalize freeing the connection.
A fixed QEMU (4.2+, tcp_chr_disconnect takes chr_write_lock) produces no report at all.

Cost: nothing on the hot path.  One x86 debug register per chardev watches s->state (the
default; its trap comes after tcp_chr_free_connection has cleared ioc and so does not widen
the race window - a watch on ioc, via --fields, stops the disconnecting thread inside the
window and makes a vulnerable QEMU crash much sooner).  Chardevs beyond the four debug
registers (fewer if you use hardware watchpoints yourself, or --max-debug-registers) are
announced and covered by a breakpoint on tcp_chr_free_connection (a brief stop per
disconnect).  Breakpoints on qmp_chardev_open_socket and char_socket_finalize follow
chardevs created (chardev-add) and removed while watching.

--stop leaves you at the scene (the disconnecting thread selected; the watch stays armed
until 'qemu watch-disconnect --off').  --json-log appends one JSON object per event
(docs/event-log-schema.json: seq, the rule's id, severity, title and summary as the report's
findings have them, chardev, lwp, writer_lwp, both stacks).  --core-dir writes a core (0600,
in a 0700 directory) per error.
--summary-json writes the summary (counters, coverage, events) when a run ends.
When the watch ends otherwise, every breakpoint and watchpoint it set is deleted.

--finish ends a watch for good, as scripts/catch-disconnect-during-write does: disarm,
let a SIGINT the watch sent and the process has not received yet arrive in gdb (so the
process never gets it), then detach; a process started under gdb whose watch never ran
is killed instead.  --at-scene: do nothing if the watch stopped at the scene of an error
(you keep the prompt there).  --quit: then quit gdb (not when left at the scene)."""
    command = "qemu watch-disconnect"
    json_help = "print the summary as JSON"
    needs_target = False

    def build_parser(self, parser):
        wa.add_watch_options(parser)
        parser.add_argument("--arm-only", action="store_true",
                            help="arm and return to the prompt; run later with "
                                 "'qemu watch-disconnect'")
        parser.add_argument("--control-fd", type=int, metavar="FD",
                            help="for scripts: stop watching when FD is readable or closed")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--off", action="store_true", help="disarm")
        mode.add_argument("--status", action="store_true", help="show what is watched")
        mode.add_argument("--finish", action="store_true",
                          help="disarm, consume our pending SIGINT, detach (for scripts)")
        parser.add_argument("--at-scene", action="store_true",
                            help="with --finish: stay if stopped at the scene of an error")
        parser.add_argument("--quit", action="store_true",
                            help="with --finish: then quit gdb (unless left at the scene)")

    def run(self, args, snap):
        if (args.at_scene or args.quit) and not args.finish:
            raise UsageError("--at-scene and --quit go with --finish")
        if args.finish:
            return self._finish(args, snap)
        session = watch.current_session()
        if args.off:
            if session is None:
                return f"{watch_render.PREFIX}: nothing armed", envelope(snap, armed=False)
            session.disarm()
            session.reason = session.reason or "disarmed (--off)"
            summary = session.summary()
            return (f"{watch_render.PREFIX}: disarmed.\n" + watch_render.summary_line(summary),
                    envelope(snap, **summary))
        if args.status:
            if session is None:
                return f"{watch_render.PREFIX}: nothing armed", envelope(snap, armed=False)
            return self._status_text(session, args), envelope(snap, **session.summary())
        if session is not None and session.state is wa.State.GONE:
            session.disarm()         # gone at no prompt (gdb -batch): as the next prompt does
            session = None
        require_target()
        if session is None:
            session = watch.WatchSession(
                labels=args.labels, fields=args.fields, stop_on_error=args.stop,
                json_log=args.json_log, core_dir=args.core_dir,
                max_registers=args.max_debug_registers, quiet=args.quiet, colour=args.colour,
                summary_path=args.summary_json)
            session.arm()
            if not args.json:
                gdb.write(self._status_text(session, args) + "\n")
        elif args.labels or args.json_log or args.core_dir:
            raise QcgError("a watch is already armed: 'qemu watch-disconnect --off' first "
                           "(or run 'qemu watch-disconnect' alone to resume it)")
        else:
            session.stop_on_error = session.stop_on_error or args.stop
            session.sink.summary_path = args.summary_json or session.sink.summary_path
            if not args.json:
                gdb.write(f"{watch_render.PREFIX}: resuming\n")
        if args.arm_only:
            session.write_summary()
            return "", envelope(snap, **session.summary())
        session.run(duration=args.duration, control_fd=args.control_fd)
        summary = session.summary()
        return watch_render.summary_line(summary), envelope(snap, **summary)

    @staticmethod
    def _finish(args, snap):
        what, left = watch.finish(stay_at_scene=args.at_scene)
        text = f"{watch_render.PREFIX}: {what}"
        obj = envelope(snap, finished=what, at_scene=left)
        if args.quit and not left:
            gdb.write((to_json_text(obj) if args.json else text) + "\n")
            gdb.flush()
            gdb.execute("quit")
        return text, obj

    @staticmethod
    def _status_text(session, args):
        w = session.watch
        lines = [f"{watch_render.PREFIX}: watching {len(w.tracked)} socket chardev(s); "
                 f"{max(0, w.free_registers())} of {w.max_registers} debug "
                 f"register(s) free"]
        lines.append(watch_render.coverage_table(w.coverage(), args.colour))
        followed = [f"{role} ({bp.location})" for role, bp in w.function_breaks.items()]
        if followed:
            lines.append("  breakpoints (rare paths): " + ", ".join(followed))
        lines += [f"  note: {n}" for n in w.notes]
        return "\n".join(lines)


COMMANDS = [WatchDisconnect]
