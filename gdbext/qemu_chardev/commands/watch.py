"""`qemu watch-disconnect`: catch a socket chardev disconnected without its chr_write_lock."""
import gdb

from qemu_chardev.live import watch
from qemu_chardev.render import watch as watch_render
from qemu_chardev.analysis import watch as wa
from qemu_chardev.commands.base import QcgCommand, envelope, require_target
from qemu_chardev.model.errors import QcgError, UsageError


def _fields(text):
    fields = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in fields if f not in wa.WATCHABLE_FIELDS]
    if bad or not fields:
        raise UsageError(f"--fields: choose from {', '.join(wa.WATCHABLE_FIELDS)} "
                         f"(got {text!r})")
    return list(dict.fromkeys(fields))


class WatchDisconnect(QcgCommand):
    """Catch a socket chardev torn down by a thread that does not hold its chr_write_lock.

Usage: qemu watch-disconnect [LABEL...] [--duration SECONDS] [--stop] [--json-log FILE]
                             [--core-dir DIR] [--fields state[,ioc,sioc]]
                             [--max-debug-registers N] [--arm-only] [--quiet] [--json]
       qemu watch-disconnect            (again, while armed: resume watching)
       qemu watch-disconnect --status [--json]
       qemu watch-disconnect --off

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
until 'qemu watch-disconnect --off').  --json-log appends one JSON object per event (id,
kind, chardev label, lwp, writer_lwp, both stacks).  --core-dir writes a core per error.
When the watch ends otherwise, every breakpoint and watchpoint it set is deleted."""
    command = "qemu watch-disconnect"
    needs_target = False

    def build_parser(self, parser):
        parser.add_argument("labels", metavar="LABEL", nargs="*",
                            help="watch only these chardevs (also when created later)")
        parser.add_argument("--duration", type=float, metavar="SECONDS",
                            help="stop watching after SECONDS")
        parser.add_argument("--stop", action="store_true",
                            help="stop at the first error and stay at the scene")
        parser.add_argument("--json-log", metavar="FILE", help="append one JSON line per event")
        parser.add_argument("--core-dir", metavar="DIR", help="write a core at each error")
        parser.add_argument("--fields", type=_fields, default=list(watch.DEFAULT_FIELDS),
                            help="fields to watch in hardware (default: state)")
        parser.add_argument("--max-debug-registers", type=int, default=wa.X86_DEBUG_REGISTERS,
                            metavar="N", help="debug registers to use (default 4)")
        parser.add_argument("--arm-only", action="store_true",
                            help="arm and return to the prompt; run later with "
                                 "'qemu watch-disconnect'")
        parser.add_argument("--quiet", action="store_true", help="print errors only")
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")
        parser.add_argument("--summary", metavar="FILE", help="write the summary JSON to FILE")
        parser.add_argument("--control-fd", type=int, metavar="FD",
                            help="for scripts: stop watching when FD is readable or closed")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--off", action="store_true", help="disarm")
        mode.add_argument("--status", action="store_true", help="show what is watched")

    def run(self, args, snap):
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
        require_target()
        if args.max_debug_registers < 0:
            raise UsageError("--max-debug-registers must be >= 0")
        if args.duration is not None and args.duration <= 0:
            raise UsageError("--duration must be > 0")
        if session is None:
            session = watch.WatchSession(
                labels=args.labels, fields=args.fields, stop_on_error=args.stop,
                json_log=args.json_log, core_dir=args.core_dir,
                max_registers=args.max_debug_registers, quiet=args.quiet, colour=args.colour,
                summary_path=args.summary)
            session.arm()
            if not args.json:
                gdb.write(self._status_text(session, args) + "\n")
        elif args.labels or args.json_log or args.core_dir:
            raise QcgError("a watch is already armed: 'qemu watch-disconnect --off' first "
                           "(or run 'qemu watch-disconnect' alone to resume it)")
        else:
            session.stop_on_error = session.stop_on_error or args.stop
            session.summary_path = args.summary or session.summary_path
            if not args.json:
                gdb.write(f"{watch_render.PREFIX}: resuming\n")
        if args.arm_only:
            session.write_summary()
            return "", envelope(snap, **session.summary())
        session.run(duration=args.duration, control_fd=args.control_fd)
        summary = session.summary()
        return watch_render.summary_line(summary), envelope(snap, **summary)

    @staticmethod
    def _status_text(session, args):
        lines = [f"{watch_render.PREFIX}: watching {len(session.tracked)} socket chardev(s); "
                 f"{max(0, session.free_registers())} of {session.max_registers} debug "
                 f"register(s) free"]
        lines.append(watch_render.coverage_table(session.coverage(), args.colour))
        followed = [f"{role} ({bp.location})" for role, bp in session.function_breaks.items()]
        if followed:
            lines.append("  breakpoints (rare paths): " + ", ".join(followed))
        lines += [f"  note: {n}" for n in session.notes]
        return "\n".join(lines)


COMMANDS = [WatchDisconnect]
