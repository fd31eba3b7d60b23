"""`qemu diagnose`: the one command that says what happened to a QEMU's chardevs."""
import json

import gdb

from qemu_chardev.commands.base import QcgCommand, deferred

report = deferred("qemu_chardev.readers.report")
report_render = deferred("qemu_chardev.render.report")


class DiagnoseCommand(QcgCommand):
    """Diagnose a live QEMU or a core: the crash, every chardev and thread, and findings.

Usage: qemu diagnose [--json [--compact]] [--no-census] [--core-checked]

Reads, without changing anything: the crash (signal, crashing thread, its frames with the
chardev / channel / task frames marked and their source lines), every chardev with its state,
ioc/sioc and chr_write_lock owner, every thread and where it is (and which mutex it waits
for), QIOTasks, and whether this binary's own tcp_chr_disconnect() takes chr_write_lock
(read from its code).  Then it draws findings, each with an id, a severity, the chardev and
thread concerned, a summary, an explanation and a fix:
  ioc-null-during-write  (error)  a thread crashed or stopped writing through ioc=NULL
  deadlock               (error)  threads wait on each other's mutexes, or on one they hold
  write-lock-held        (info; warning when the owner is not in the write path)
plus those of optional report sections: the GSource census (gsource-leak,
gsource-use-after-free; a scan of writable memory, skipped with --no-census).
--json prints the report object of schema "qemu-chardev-report/1" (docs/report-schema.json),
as scripts/chardev-postmortem collects it."""
    command = "qemu diagnose"
    json_help = 'print the "qemu-chardev-report/1" JSON object'

    def build_parser(self, parser):
        parser.add_argument("--no-census", action="store_true",
                            help="skip the GSource census (a scan of writable memory)")
        parser.add_argument("--compact", action="store_true",
                            help="with --json: the object on one line, without indentation "
                                 "(what chardev-postmortem reads; several times faster to "
                                 "write for thousands of chardevs)")

        parser.add_argument("--core-checked", action="store_true",
                            help="the core file's notes (program, build-id, truncation) were "
                                 "checked by the caller: do not read them again "
                                 "(chardev-postmortem passes it and adds them to the report)")

    def run(self, args, snap):
        obj = report.build_report(snap, ("gsource_census",) if args.no_census else (),
                                  core_checked=args.core_checked)
        if args.json:   # printed here, and no text rendered (tables, colour)
            # --compact: one line, json.dumps' C encoder (what chardev-postmortem reads);
            # else each chardev, thread, finding on a line: indenting everything is pure
            # Python, 0.3-0.5 s for 1000 chardevs against 0.05-0.1 s
            gdb.write((json.dumps(obj, separators=(",", ":")) if args.compact
                       else report_render.envelope_json([obj])) + "\n")
            args.json = False
            return None, obj
        # The base class appends snap.problems under the text; do not list them twice.
        return report_render.text(obj, args.colour, show_problems=False), obj
