"""catch-disconnect-during-write: catch QEMU tearing down a socket chardev without its lock.

usage: catch-disconnect-during-write --pid PID [LABEL...] [options]
       catch-disconnect-during-write [LABEL...] [options] -- QEMU-COMMAND [ARGS...]
options: [--duration SECONDS] [--json-log FILE] [--stop] [--core-dir DIR]
         [--summary-json FILE] [--quiet] [--fields state[,ioc,sioc]]
         [--max-debug-registers N] [--gdb PATH]

Attaches gdb to a running QEMU (--pid) or starts QEMU-COMMAND under gdb, and runs the
qemu-chardev-gdb command `qemu watch-disconnect` on it: hardware watchpoints on every socket
chardev (or the LABEL ones) report each time a chardev's connection is torn down (state
leaves 'connected', ioc/sioc cleared) by a thread that does not hold its chr_write_lock:

  error    disconnect-during-write        another thread held the lock: a write was in
                                          flight (the 2019 ioc=0x0 crash in tcp_chr_write)
  warning  disconnect-without-write-lock  nobody held it: the same bug, not striking now

A fixed QEMU (4.2 and later) gives no report.  Nothing is stopped on the hot path; see
`help qemu watch-disconnect` in gdb for the debug-register budget and its fallback.

Options (LABEL... and the watch options are those of `qemu watch-disconnect`, by the same
names; it is given them as they are):
  LABEL...             watch only these chardevs (also when created later)
  --duration SECONDS   stop watching after SECONDS (default: until Ctrl-C or QEMU exits)
  --json-log FILE      write one JSON object per event (seq, id, severity, title, summary,
                       chardev, lwp, writer_lwp, both stacks: docs/event-log-schema.json,
                       the ids those of the report's findings); the file is truncated first
  --stop               stop at the first error and leave gdb at the scene (interactive gdb
                       when run on a terminal; otherwise the scene is printed, and gdb then
                       detaches)
  --core-dir DIR       write a core (gcore) at each error into DIR (created 0700 if missing)
  --summary-json FILE  write the final summary (counters, coverage, events) as JSON
  --quiet              print errors only (warnings still go to --json-log)
  --fields, --max-debug-registers   see `help qemu watch-disconnect`
  --pid PID, --gdb PATH, -- QEMU-COMMAND...   this script's own

On the end of the duration, Ctrl-C (or SIGTERM), QEMU's exit or the end of this script's
parent, every breakpoint and watchpoint is removed and gdb detaches (`qemu watch-disconnect
--finish`): QEMU goes on running.

A core holds the guest's memory, keys and QMP traffic: cores, the JSON log and the summary
are created 0600 (gdb runs with a umask of at least 077), and a --core-dir it creates is 0700.

Exit status: 0 no error caught (warnings do not count), 1 at least one error caught,
2 bad input (no such process, already traced, command not found, gdb missing, too old or
without Python, gdb failed to watch).

Runs with /usr/bin/python3, the standard library and the extension's gdb-free modules.
"""
import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

from qemu_chardev.analysis import watch as watch_options
from qemu_chardev.cli import gdbload
PROG = "catch-disconnect-during-write"
EXIT_OK, EXIT_ERRORS, EXIT_BAD_INPUT = 0, 1, 2
PRIVATE_UMASK = 0o077         # what we and gdb write holds guest memory: owner only
PROBE_MARK = "@@QCG-GDB-READY@@"
PROBE_TIMEOUT = 60.0
STDERR_TAIL = 200             # lines of gdb's stderr kept to explain a failure
GDB_SETTINGS = ("set pagination off", "set confirm off", "set width 0", "set height 0",
                "set debuginfod enabled off", "set print thread-events off",
                "set print inferior-events off")


class BadInput(Exception):
    """One line for the user; exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise BadInput(f"{message} (see --help)")


def parse_args(argv):
    command = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    parser = Parser(prog=PROG, description=__doc__.split("\n\n")[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid", type=int, help="attach to this QEMU process")
    parser.add_argument("--gdb", default="gdb", metavar="PATH",
                        help="the gdb to run (default: gdb)")
    watch_options.add_watch_options(parser)
    args = parser.parse_args(argv)
    args.command = command
    return args


def _proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def validate(args):
    """Raise BadInput for anything that cannot work; fill in args.executable."""
    if (args.pid is None) == (not args.command):
        raise BadInput("give either --pid PID or -- QEMU-COMMAND [ARGS...]")
    for label in args.labels:
        if not label or any(c.isspace() for c in label):
            raise BadInput(f"LABEL {label!r}: not a chardev id")
    problem = gdbload.check_gdb(args.gdb) or probe_gdb(args.gdb)
    if problem:
        raise BadInput(problem)
    if args.pid is not None:
        if args.pid <= 0:
            raise BadInput(f"--pid {args.pid}: not a process id")
        try:
            status = _proc_status(args.pid)
        except OSError:
            raise BadInput(f"--pid {args.pid}: no such process") from None
        if status.get("State", "").startswith(("Z", "X")):
            raise BadInput(f"--pid {args.pid}: the process is a zombie")
        tracer = int(status.get("TracerPid", "0") or 0)
        if tracer:
            raise BadInput(f"--pid {args.pid}: already traced by process {tracer} "
                           "(another debugger?)")
        try:
            args.executable = os.readlink(f"/proc/{args.pid}/exe")
        except OSError as exc:
            raise BadInput(f"--pid {args.pid}: cannot read its executable ({exc})") from None
    else:
        found = shutil.which(args.command[0])
        if found is None or not os.access(found, os.X_OK):
            raise BadInput(f"command not found or not executable: {args.command[0]}")
        args.executable = found
    if args.core_dir:
        try:
            os.makedirs(args.core_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"--core-dir {args.core_dir}: {exc}") from None
        if not os.access(args.core_dir, os.W_OK):
            raise BadInput(f"--core-dir {args.core_dir}: not writable")
        args.core_dir = os.path.abspath(args.core_dir)
    if args.summary_json:
        args.summary_json = os.path.abspath(args.summary_json)
        try:
            open(args.summary_json, "w", encoding="utf-8").close()
            os.unlink(args.summary_json)
        except OSError as exc:
            raise BadInput(f"--summary-json {args.summary_json}: {exc}") from None
    if args.json_log:
        args.json_log = os.path.abspath(args.json_log)
        try:
            create_private(args.json_log)
        except OSError as exc:
            raise BadInput(f"--json-log {args.json_log}: {exc}") from None


def create_private(path):
    """Create (or truncate) ``path`` as an empty file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)          # an existing file keeps its mode otherwise
    finally:
        os.close(fd)


def private_umask():
    """Tighten this process's umask (inherited by gdb, so by its gcore) to at least 077."""
    old = os.umask(PRIVATE_UMASK)
    os.umask(old | PRIVATE_UMASK)
    return old


def probe_gdb(gdb):
    """One line saying why ``gdb`` cannot run the extension (no Python, too old, cannot
    import it), or None: before anything is attached to QEMU."""
    # One python command: the mark is printed only if the extension started.
    argv = [gdb, "-nx", "-q", "-batch",
            "-ex", gdbload.load_command() + f'; print("{PROBE_MARK}")']
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=PROBE_TIMEOUT, start_new_session=True)
    except OSError as exc:
        return f"cannot run gdb {gdb}: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        return f"gdb {gdb} did not start within {PROBE_TIMEOUT:g} s"
    out = done.stdout.decode("utf-8", "replace")
    err = done.stderr.decode("utf-8", "replace")
    if PROBE_MARK in out and done.returncode == 0:
        return None
    return gdbload.explain_gdb_failure(gdb, err + "\n" + out) or \
        f"gdb {gdb} cannot load the extension: " + (
            next((line.strip() for line in reversed(err.splitlines()) if line.strip()),
                 f"exit status {done.returncode}"))


def _tee(stream, tail):
    """Copy gdb's stderr to ours line by line, keeping the last lines in ``tail``."""
    for raw in iter(stream.readline, b""):
        try:
            sys.stderr.buffer.write(raw)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        tail.append(raw.decode("utf-8", "replace"))
        del tail[:-STDERR_TAIL]
    stream.close()


def _quote(word):
    """Quote one argument of a gdb command (gdb.string_to_argv rules)."""
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"' if \
        any(c in word for c in " \t'\"\\") else word


def gdb_argv(args, control_fd, interactive):
    argv = [args.gdb, "-nx", "-q"]
    if not interactive:
        argv.append("-batch")
    for setting in GDB_SETTINGS:
        argv += ["-iex", setting]
    if not interactive:
        argv += ["-iex", "set style enabled off", "-iex", "set suppress-cli-notifications on"]
    watch = ["qemu", "watch-disconnect", *map(_quote, watch_options.watch_command_args(args))]
    if control_fd is not None:
        watch += ["--control-fd", str(control_fd)]
    argv += ["-ex", gdbload.load_command()]
    if args.pid is not None:
        argv += ["-ex", f"attach {args.pid}"]
    else:
        argv += ["-ex", "starti"]
    argv += ["-ex", " ".join(watch)]
    # The end, in every case (the watch ended, or never started): disarm, consume our
    # SIGINT if still queued, detach.  On a terminal with --stop, stay at the scene of an
    # error; otherwise quit the interactive gdb.
    argv += ["-ex", "qemu watch-disconnect --finish" +
             (" --at-scene --quit" if interactive else "")]
    if args.pid is None:
        argv += ["--args", args.executable, *args.command[1:]]
    return argv


def main(argv):
    private_umask()
    try:
        args = parse_args(argv)
        validate(args)
    except BadInput as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    interactive = args.stop and sys.stdin.isatty() and sys.stdout.isatty()
    workdir = tempfile.mkdtemp(prefix="catch-disconnect-")
    if not args.summary_json:
        args.summary_json = os.path.join(workdir, "summary.json")
    summary_path = args.summary_json
    control_r = control_w = None
    if not interactive:
        control_r, control_w = os.pipe()
        os.set_inheritable(control_r, True)
    argv = gdb_argv(args, control_r, interactive)
    if os.environ.get("QCG_DEBUG"):
        print(" ".join(shlex.quote(a) for a in argv), file=sys.stderr)
    try:
        proc = subprocess.Popen(argv, stdin=None if interactive else subprocess.DEVNULL,
                                stderr=None if interactive else subprocess.PIPE,
                                pass_fds=() if control_r is None else (control_r,),
                                start_new_session=not interactive)
    except OSError as exc:
        print(f"{PROG}: cannot start gdb: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    stderr_tail = []
    tee = None
    if proc.stderr is not None:
        tee = threading.Thread(target=_tee, args=(proc.stderr, stderr_tail), daemon=True)
        tee.start()
    if control_r is not None:
        os.close(control_r)
    requests = []

    def request_stop(signum, _frame):
        requests.append(signum)
        if interactive:
            if signum != signal.SIGINT:     # gdb itself gets Ctrl-C from the terminal
                proc.send_signal(signal.SIGINT)
            return
        if len(requests) == 1:
            print(f"{PROG}: stopping: removing watchpoints and detaching...", file=sys.stderr)
            try:
                os.write(control_w, b"stop\n")
            except OSError:
                pass
        elif len(requests) >= 3:
            print(f"{PROG}: asking gdb to quit", file=sys.stderr)
            proc.send_signal(signal.SIGTERM)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, request_stop)
    status = proc.wait()
    if tee is not None:
        tee.join(10)
    if control_w is not None:
        os.close(control_w)
    try:
        with open(summary_path, encoding="utf-8") as handle:
            summary = json.load(handle)
    except (OSError, ValueError):
        why = gdbload.explain_gdb_failure(args.gdb, "".join(stderr_tail))
        print(f"{PROG}: " + (why or f"gdb did not complete the watch (exit status {status}); "
                             "see its messages above"), file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return EXIT_BAD_INPUT
    shutil.rmtree(workdir, ignore_errors=True)
    errors, warnings = summary.get("errors", 0), summary.get("warnings", 0)
    line = f"{PROG}: {errors} error(s), {warnings} warning(s): {summary.get('reason')}"
    if summary.get("exit_status") is not None:
        line += f"; the program exited with status {summary['exit_status']}"
    print(line)
    for problem in summary.get("internal_errors") or []:
        print(f"{PROG}: {problem}", file=sys.stderr)
    return EXIT_ERRORS if errors else EXIT_OK


def run():
    """The console script's entry point."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
