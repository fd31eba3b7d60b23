"""chardev-postmortem: diagnose QEMU core files in batch (a CI post-mortem step).

usage: chardev-postmortem [--format text|json|junit|markdown] [--output FILE]
                          [--write FORMAT=FILE]... [--timeout SECONDS] [-j N] [--gdb PATH]
                          [--no-census] [--quiet] [--binary-dir DIR]...
                          [--coredumpctl MATCH]... [BINARY] CORE|DIR...

For every core (a directory contributes the core files in it, compressed ones included) it
runs `gdb -nx -batch` with the qemu-chardev-gdb extension and `qemu diagnose --json`, checks
that a complete report came back (gdb's exit status proves nothing), and prints all reports
as text, JSON, JUnit XML or Markdown (--write adds more formats from the same analysis,
e.g. JUnit for the CI's test report and Markdown for its job summary).

Cores compressed by systemd-coredump (.zst, .lz4, .xz) are decompressed to a temporary file
that is always removed.  A core that cannot be analysed (missing, not a core, a core of
another program or build, gdb failing or timing out) gets a one-line reason on stderr and in
the output; the other cores are still analysed.

Without BINARY each core's own executable is used (cli/binaries.py): the one recorded in the
core if its build-id matches, else one found by build-id under a --binary-dir, else, with
--debuginfod, what gdb's debuginfod fetches; each report says which and why.  The first
positional argument is BINARY when more inputs follow and it is neither a directory nor a
core file (ELF core, or a compressed core with its magic), so `BINARY CORE...` means what it
always did.  --coredumpctl MATCH analyses the core systemd-coredump stored for MATCH (a PID,
an executable name or path, a journal match), as `coredumpctl dump` writes it.

Exit status: 0 no error finding; 1 at least one error finding; 2 unusable input or
invocation (takes precedence over 1; the reports of the usable cores are still written).
A directory without cores is not an error: the output says there was nothing to analyse.

Runs with /usr/bin/python3 and the standard library only (tabulate and pygments are used
for nicer text when installed).
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import json

from qemu_chardev.cli import gdbload
from qemu_chardev.files import elfhead
from qemu_chardev.model.tool import VERSION as __version__


# Until gdb has started every import is on its way: what is needed only with a report in
# hand is imported then (render.report pulls tabulate, html and xml: ~15 ms; model.diagnosis
# the report's data classes: ~8 ms), and what a core's check needs once gdb has started
# (binaries and files.elf: dataclasses and typing, ~15 ms).

def discovery():
    """Binary discovery and the build-id checks (``cli.binaries``)."""
    from qemu_chardev.cli import binaries
    return binaries


def core_notes():
    """A core's notes: program, build-id, truncation (``files.elf``)."""
    from qemu_chardev.files import elf
    return elf


def report_render():
    """The report renderers."""
    from qemu_chardev.render import report
    return report


def diagnosis():
    """The report's shape (``model.diagnosis``)."""
    from qemu_chardev.model import diagnosis as shape
    return shape


BEGIN = "@@CHARDEV-POSTMORTEM-REPORT-BEGIN@@"
END = "@@CHARDEV-POSTMORTEM-REPORT-END@@"
DEFAULT_TIMEOUT = 300.0
GDB_SETTINGS = ("set pagination off", "set style enabled off", "set confirm off",
                "set width 0", "set height 0")
COMPRESSED = {  # extension: (magic, command or None for Python's lzma)
    ".zst": (b"\x28\xb5\x2f\xfd", ["zstd", "-d", "-q", "-c", "--"]),
    ".lz4": (b"\x04\x22\x4d\x18", ["lz4", "-d", "-q", "-c", "--"]),
    ".xz": (b"\xfd7zXZ\x00", None),
}
EXIT_OK, EXIT_ERRORS, EXIT_UNUSABLE = 0, 1, 2
SIGNAL_POLL = 0.2           # seconds: how soon -j N notices a signal (see analysed)
FORMATS = ("text", "json", "junit", "markdown")


class Unusable(Exception):
    """This core cannot be analysed; the message is the one-line reason."""


class Cleanup:
    """Temporary directories and gdb processes to get rid of, whatever happens."""

    def __init__(self):
        self.lock = threading.Lock()
        self.dirs = set()
        self.procs = set()
        self.stopping = False

    def tempdir(self):
        path = tempfile.mkdtemp(prefix="chardev-postmortem-")
        with self.lock:
            self.dirs.add(path)
        return path

    def remove(self, path):
        shutil.rmtree(path, ignore_errors=True)
        with self.lock:
            self.dirs.discard(path)

    def started(self, proc):
        with self.lock:
            if self.stopping:
                kill_group(proc)
            self.procs.add(proc)

    def finished(self, proc):
        with self.lock:
            self.procs.discard(proc)

    def kill_now(self):
        """Kill every child now, from a signal handler: without the lock, which the code the
        signal interrupted may hold (``list`` of a set is atomic under the GIL)."""
        self.stopping = True
        for proc in list(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def everything(self):
        with self.lock:
            self.stopping = True
            procs, dirs = list(self.procs), list(self.dirs)
        for proc in procs:
            kill_group(proc)
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)


CLEANUP = Cleanup()


def kill_group(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


class Tracked:
    """A child in its own session, killed with its group on timeout, when it is no longer
    wanted, or when we are stopped."""

    def __init__(self, argv, stdout=subprocess.PIPE, env=None):
        self.proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        CLEANUP.started(self.proc)

    def wait(self, timeout, timed_out):
        """(returncode, stdout bytes or None, stderr bytes); Unusable(``timed_out``) when it
        runs past ``timeout`` seconds."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            raise Unusable(timed_out) from None
        except BaseException:       # interrupted (Ctrl-C, SIGTERM): the child goes too
            kill_group(self.proc)
            raise
        finally:
            CLEANUP.finished(self.proc)
        return self.proc.returncode, out, err

    def abandon(self):
        kill_group(self.proc)
        self.proc.communicate()
        CLEANUP.finished(self.proc)


def run_tracked(argv, timeout, timed_out, stdout=subprocess.PIPE, env=None):
    """Run ``argv`` as a ``Tracked`` child to its end: (returncode, stdout, stderr)."""
    return Tracked(argv, stdout, env).wait(timeout, timed_out)


# --- inputs ---------------------------------------------------------------------------------

def _head(path, size=64):
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return b""


def compression_of(path):
    for ext, (magic, _cmd) in COMPRESSED.items():
        if path.endswith(ext):
            return ext
    return None


def looks_like_core(path):
    """True for an ELF core file or a file compressed like systemd-coredump's cores."""
    ext = compression_of(path)
    if ext:
        return _head(path).startswith(COMPRESSED[ext][0])
    try:
        return elfhead.elf_type(path) == elfhead.ET_CORE
    except (OSError, elfhead.ElfError):
        return False


def expand_inputs(paths):
    """([input path], [(directory, number of skipped files)]) in command-line order."""
    items, skipped = [], []
    for path in paths:
        if os.path.isdir(path):
            found, other = [], 0
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                if os.path.isfile(full) and looks_like_core(full):
                    found.append(full)
                elif os.path.isfile(full):
                    other += 1
            items += found
            if other:
                skipped.append((path, other))
        else:
            items.append(path)
    return items, skipped


def decompress(path, ext, workdir, timeout):
    """Decompress ``path`` into ``workdir`` (a 0700 mkdtemp); returns the new file's path.
    The copy holds the guest's memory: it is created 0600, whatever the umask."""
    out = os.path.join(workdir, os.path.basename(path)[:-len(ext)] or "core")

    def _private_file(name):
        return os.fdopen(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")

    command = COMPRESSED[ext][1]
    if command is None:
        import lzma         # only for .xz cores
        try:
            with lzma.open(path, "rb") as src, _private_file(out) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (lzma.LZMAError, EOFError) as exc:
            raise Unusable(f"cannot decompress ({exc})") from None
        return out
    if shutil.which(command[0]) is None:
        raise Unusable(f"cannot decompress {ext} cores: {command[0]} is not installed")
    with _private_file(out) as dst:
        returncode, _out, err = run_tracked(
            command + [path], timeout, f"decompression timed out after {timeout:g} s",
            stdout=dst)
    if returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise Unusable(f"cannot decompress: {command[0]}: {last}")
    return out


# --- running gdb ----------------------------------------------------------------------------

_BYTECODE_LOCK = threading.Lock()
_bytecode_checked = []


def fresh_bytecode():
    """Compile the package's modules whose bytecode is stale or missing, once per run.

    gdb's Python never writes bytecode (it runs with dont_write_bytecode set), so in a checkout
    whose sources changed every gdb recompiled them: 35-90 ms of each core's analysis, for the
    15 modules an edit had touched.  This Python is gdb's on Debian; for another one the files
    are written under its own tag and change nothing.  A read-only install is left alone.
    It runs once gdb has started: gdb imports most of the package only after it has opened the
    binary and the core (a few hundred ms; its warm-up thread imports the gdb-free folders
    meanwhile), and py_compile replaces a file atomically, so a gdb that reads one meanwhile
    sees the old or the new bytecode, whole."""
    with _BYTECODE_LOCK:
        if _bytecode_checked:
            return
        _bytecode_checked.append(True)
        import compileall   # ~14 ms: imported after gdb has started (see start_gdb)
        try:
            compileall.compile_dir(os.path.join(gdbload.package_parent(), "qemu_chardev"),
                                   quiet=2)
        except OSError:
            pass


def gdb_argv(args, core):
    argv = [args.gdb, "-nx", "-batch"]
    for setting in GDB_SETTINGS:
        argv += ["-iex", setting]
    argv += ["-iex", f"set debuginfod enabled {'on' if args.debuginfod else 'off'}"]
    argv += ["-iex", gdbload.warm_up_command()]
    # --compact: one line (json.dumps without indent is the C encoder, several times faster)
    # --core-checked: analyse() has read the core's notes; gdb need not import pyelftools
    diagnose = "qemu diagnose --json --compact --core-checked" + (
        " --no-census" if args.no_census else "")
    argv += ["-ex", gdbload.load_command(),
             "-ex", f'python gdb.write("{BEGIN}\\n"); gdb.flush()',
             "-ex", diagnose,
             "-ex", f'python gdb.write("{END}\\n"); gdb.flush()',
             *([args.binary] if args.binary else []), "--core", core]
    return argv


def _reason_from_stderr(stderr):
    """The last line gdb printed that is not a warning: the error of the failed command."""
    lines = [line.strip() for line in stderr.splitlines()]
    errors = [line for line in lines if line and not line.startswith("warning:")]
    return errors[-1] if errors else None


def start_gdb(args, core):
    """gdb diagnosing ``core``, started: a ``Tracked`` for ``report_of``."""
    env = dict(os.environ, NO_COLOR="1")
    if not args.debuginfod:     # no network, no waiting on a server, unless asked for
        env.pop("DEBUGINFOD_URLS", None)
    try:
        started = Tracked(gdb_argv(args, core), env=env)
    except OSError as exc:
        raise Unusable(f"cannot run gdb {args.gdb}: {exc.strerror or exc}") from None
    fresh_bytecode()
    return started


def run_gdb(args, core, timeout):
    """The report dict gdb printed for ``core``; Unusable if none came back complete."""
    return report_of(args, start_gdb(args, core), timeout)


def report_of(args, gdb_run, timeout):
    """The report dict the started gdb prints; Unusable if none came back complete."""
    report_render()     # imported while gdb works (~25 ms), not after it has answered
    returncode, stdout, stderr = gdb_run.wait(timeout, f"gdb timed out after {args.timeout:g} s")
    stdout = stdout.decode("utf-8", "replace")
    stderr = stderr.decode("utf-8", "replace")
    died = f"gdb crashed (signal {-returncode})" if returncode < 0 else None
    start = stdout.find(BEGIN + "\n")
    # gdb without Python, too old, or unable to import the package: one line that says so
    # (a too-old gdb still prints the markers: `-batch` goes on after the failed load)
    unfit = None if died else gdbload.explain_gdb_failure(args.gdb, stderr)
    end = stdout.find(END + "\n", start + len(BEGIN) + 1) if start >= 0 else -1
    if start < 0 or (unfit and (end < 0 or not stdout[start + len(BEGIN) + 1:end].strip())):
        why = died or unfit or _reason_from_stderr(stderr) or "no output"
        raise Unusable(f"gdb did not run the diagnosis: {why}")
    start += len(BEGIN) + 1
    if end < 0:
        if "Fatal signal" in stderr:
            died = died or "gdb crashed (fatal signal inside gdb)"
        why = died or _reason_from_stderr(stderr) or "gdb stopped early"
        raise Unusable(f"no complete report: {why}")
    body = stdout[start:end].strip()
    if not body:
        why = _reason_from_stderr(stderr) or "qemu diagnose printed nothing"
        raise Unusable(why)
    try:
        report = json.loads(body)
    except ValueError as exc:
        raise Unusable(f"garbled report from gdb ({exc})") from None
    schema = diagnosis().REPORT_SCHEMA
    if not isinstance(report, dict) or report.get("schema") != schema:
        raise Unusable(f"unexpected report from gdb (schema {report.get('schema')!r}, "
                       f"expected {schema!r})" if isinstance(report, dict)
                       else "unexpected report from gdb")
    missing = [key for key in ("target", "complete", "crash", "threads", "chardevs",
                               "findings", "summary") if key not in report]
    if missing:
        raise Unusable(f"incomplete report from gdb (no {', '.join(missing)})")
    if report["target"].get("qemu_debug_info") is False:
        raise Unusable(next((p for p in report.get("problems") or []
                             if p.startswith("no QEMU debug info")),
                            "no QEMU debug info in the binary"))
    return report


def stub_report(args, path, reason, program=None):
    """The report of a core that could not be analysed: the reason, nothing else."""
    binary = os.path.abspath(args.binary) if args.binary else None
    target = diagnosis().new_target("core", binary, os.path.abspath(path),
                                  qemu_version=discovery().qemu_version(binary) if binary else None,
                                  core_program=program)
    return diagnosis().new_report(target, problems=[reason], error=reason)


class Stored:
    """A core kept by systemd-coredump, named by a coredumpctl match (--coredumpctl)."""

    def __init__(self, match):
        self.match = match

    def __str__(self):
        return discovery().coredumpctl_label(self.match)


def dump_stored(match, workdir, timeout):
    """`coredumpctl dump` the core stored for ``match`` into ``workdir``; its path."""
    out = os.path.join(workdir, "core")
    returncode, _out, err = run_tracked(
        discovery().coredumpctl_dump_argv(match, out), timeout,
        f"coredumpctl dump timed out after {timeout:g} s", stdout=subprocess.DEVNULL)
    if returncode != 0 or not os.path.isfile(out) or os.path.getsize(out) == 0:
        raise Unusable(discovery().coredumpctl_reason(returncode, err.decode(errors="replace")))
    return out


def for_binary(args, path):
    """``args`` for one core whose binary is ``path`` (None: gdb is to fetch it)."""
    core_args = argparse.Namespace(**vars(args))
    core_args.binary = path
    return core_args


def analyse(args, item):
    """The report for one input: a path, or a Stored core (never raises for a bad core).

    Its binary is ``args.binary`` when one was given, else the core's own (binaries.discover);
    ``report["postmortem"]["binary"]`` says which and why."""
    started = time.monotonic()
    workdir = None
    program = None
    decompressed = False
    early_gdb = None
    label = str(item)
    choice = None
    core_args = args
    try:
        workdir = CLEANUP.tempdir() if isinstance(item, Stored) or compression_of(label) \
            else None
        if isinstance(item, Stored):
            core = dump_stored(item.match, workdir, args.timeout)
        else:
            if not os.path.exists(label):
                raise Unusable("no such file")
            if not os.path.isfile(label):
                raise Unusable("not a regular file")
            if not os.access(label, os.R_OK):
                raise Unusable("not readable")
            core = label
            ext = compression_of(label)
            if ext:
                core = decompress(label, ext, workdir, args.timeout)
                decompressed = True
        if args.binary and not decompressed and not isinstance(item, Stored):
            # BINARY is known: gdb starts now, and opens binary and core (most of its time)
            # while the core's notes are checked below; a core that fails the check never
            # gets its report read.
            early_gdb = start_gdb(args, core)
        binaries = discovery()
        if args.binary:
            choice = binaries.given(args.binary)
        try:
            info = core_notes().read_core(core)
        except elfhead.ElfError as exc:
            raise Unusable(str(exc).replace(core + ": ", "", 1)) from None
        except OSError as exc:
            raise Unusable(f"unreadable: {exc.strerror}") from None
        program = info.program
        if choice is None:
            choice = binaries.discover(info, args.binary_index,
                                     bool(getattr(args, "debuginfod", False)))
            if not choice.found:
                raise Unusable(choice.problem)
            core_args = for_binary(args, choice.path)
            if choice.path and not binaries.is_qemu_program(choice.path):
                raise Unusable(binaries.not_qemu(program, choice))
        if core_args.binary is not None:
            ok, reason = core_notes().core_matches_binary(
                info, core_args.binary, binaries.inspect(core_args.binary).build_id)
            if not ok:
                raise Unusable(reason if choice.how == binaries.GIVEN
                               else f"{choice.line()}: {reason}")
        left = max(1.0, args.timeout - (time.monotonic() - started))
        try:
            if early_gdb is not None:     # waited for (and killed if need be) by report_of
                gdb_run, early_gdb = early_gdb, None
                report = report_of(core_args, gdb_run, left)
            else:
                report = run_gdb(core_args, core, left)
        except Unusable as exc:
            if choice.how == binaries.GIVEN:
                raise
            raise Unusable(f"{choice.line()}: {exc}") from None
        report["target"]["core_program"] = info.program
        if info.truncated:          # cut short after its notes: analysed, never complete
            diagnosis().mark_truncated(report, info.truncated, info.missing)
        if isinstance(item, Stored):
            report["target"]["core"] = label
        elif decompressed:
            report["target"]["core"] = os.path.abspath(label)
    except Unusable as exc:
        report = stub_report(core_args, label, str(exc), program)
    except OSError as exc:
        report = stub_report(core_args, label, f"{exc.strerror or exc}", program)
    finally:
        if early_gdb is not None:
            early_gdb.abandon()
        if workdir is not None:
            CLEANUP.remove(workdir)
    if isinstance(item, Stored) and report.get("error"):
        report["target"]["core"] = label
    report["postmortem"] = {"input": label, "decompressed": decompressed,
                            "seconds": round(time.monotonic() - started, 3)}
    if isinstance(item, Stored):
        report["postmortem"]["coredumpctl"] = item.match
    if choice is None and args.binary:      # the input failed before its core was read
        choice = discovery().given(args.binary)
    if choice is not None:
        report["postmortem"]["binary"] = choice.as_json()
    return report


# --- output ---------------------------------------------------------------------------------

def render(fmt, to_terminal, reports, skipped):
    if fmt == "json":
        return report_render().envelope_json(reports) + "\n"
    if fmt == "junit":
        return report_render().junit(reports)
    if fmt == "markdown":
        return report_render().markdown(reports)
    colour = to_terminal and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    if not reports:
        where = ", ".join(d for d, _n in skipped) or "the given directories"
        return f"No core files to analyse (none found in {where}).\n"
    if len(reports) == 1:
        return report_render().text(reports[0], colour) + "\n"
    return report_render().text_many(reports, colour) + "\n"


def write_output(path, text):
    if path is None or path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".chardev-postmortem-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def exit_status(reports):
    if any(r.get("error") for r in reports):
        return EXIT_UNUSABLE
    if any((r.get("summary") or {}).get("error") for r in reports):
        return EXIT_ERRORS
    return EXIT_OK


def progress(index, total, report):
    name = report_render().report_name(report)
    post = report.get("postmortem") or {}
    if report.get("error"):
        state = f"not analysed: {report['error']}"
    else:
        state = f"{report_render().verdict(report)} ({report_render().counts_text(report)})"
    binary = post.get("binary") or {}
    found = f"; binary: {binary['path'] or '(none)'} ({binary['why']})" \
        if binary.get("how") and not report.get("error") else ""
    print(f"[{index}/{total}] {name}: {state} ({post.get('seconds', 0):.1f} s){found}",
          file=sys.stderr, flush=True)


# --- main -----------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: {message}", file=sys.stderr)
        sys.exit(EXIT_UNUSABLE)


def parse_args(argv):
    parser = Parser(prog="chardev-postmortem",
                    description="Diagnose QEMU core files (chardev locks, GSources) in batch.",
                    epilog="Exit status: 0 no error finding, 1 error findings, 2 unusable "
                           "input or invocation.")
    parser.add_argument("inputs", metavar="[BINARY] CORE|DIR", nargs="*",
                        help="core files (.zst/.lz4/.xz too) or directories of them, after "
                             "an optional BINARY for all of them (the QEMU binary, with debug "
                             "info): the first argument is BINARY when more inputs follow and "
                             "it is neither a directory nor a core file; without BINARY each "
                             "core's own executable is used (recorded in the core, or "
                             "--binary-dir)")
    parser.add_argument("--binary-dir", action="append", default=[], metavar="DIR",
                        help="without BINARY: where to look, recursively and by build-id, for "
                             "a core's executable when the one recorded in the core is missing "
                             "or another build (repeatable)")
    parser.add_argument("--coredumpctl", action="append", default=[], metavar="MATCH",
                        help="also analyse the core systemd-coredump stored for MATCH: a PID, "
                             "an executable name or path, or a coredumpctl match such as "
                             "COREDUMP_UID=1000 (the most recent matching core; repeatable)")
    parser.add_argument("--format", choices=FORMATS,
                        default="text", help="output format (default: text)")
    parser.add_argument("--output", "-o", metavar="FILE", help="write the output to FILE")
    parser.add_argument("--write", action="append", default=[], metavar="FORMAT=FILE",
                        help="also write the reports in FORMAT to FILE (repeatable), e.g. "
                             "--write junit=postmortem.xml --write markdown=summary.md")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"per core, decompression included (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                        help="analyse N cores in parallel (default 1)")
    parser.add_argument("--gdb", default="gdb", metavar="PATH", help="the gdb to run")
    parser.add_argument("--debuginfod", action="store_true",
                        help="let gdb fetch missing debug info from the debuginfod servers in "
                             "DEBUGINFOD_URLS ('set debuginfod enabled on'); by default "
                             "DEBUGINFOD_URLS is removed from gdb's environment and gdb never "
                             "asks a server")
    parser.add_argument("--no-census", action="store_true",
                        help="skip the GSource census (a scan of each core's writable memory)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress lines on stderr (reasons for unusable cores stay)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("-j must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    extra = []
    for spec in args.write:
        fmt, sep, path = spec.partition("=")
        if not sep or fmt not in FORMATS or not path:
            parser.error(f"--write {spec!r}: expected FORMAT=FILE with FORMAT one of "
                         + ", ".join(FORMATS))
        extra.append((fmt, path))
    args.write = extra
    args.binary, args.cores = split_binary(args.inputs, more=bool(args.coredumpctl))
    if not args.cores and not args.coredumpctl:
        parser.error("no core given: CORE|DIR or --coredumpctl MATCH")
    if args.binary and args.binary_dir:
        parser.error("--binary-dir is for finding each core's binary: give it or BINARY, "
                     "not both")
    return args


def split_binary(inputs, more=False):
    """(BINARY or None, the inputs that are cores or directories).  The first input is BINARY
    when other inputs follow (``more``: --coredumpctl ones) and it is neither a directory nor
    a core file: `BINARY CORE...` keeps its meaning, errors included (a BINARY that does not
    exist or is not an executable is an invocation error, not an unusable core)."""
    if not inputs or (len(inputs) == 1 and not more):
        return None, list(inputs)
    first = inputs[0]
    if os.path.isdir(first) or looks_like_core(first):
        return None, list(inputs)
    return first, list(inputs[1:])


def check_invocation(args):
    """One-line reason why nothing can be analysed at all, or None."""
    problem = _check_binary(args.binary) if args.binary else None
    for directory in args.binary_dir:
        if not os.path.isdir(directory):
            problem = problem or f"--binary-dir {directory}: not a directory"
    if args.coredumpctl and shutil.which(discovery().COREDUMPCTL) is None:
        problem = problem or discovery().COREDUMPCTL_MISSING
    if problem:
        return problem
    problem = gdbload.check_gdb(args.gdb)
    if problem:
        return problem
    return None


def _check_binary(binary):
    if not os.path.isfile(binary):
        return f"{binary}: no such file"
    try:
        kind = elfhead.elf_type(binary)
    except OSError as exc:
        return f"{binary}: {exc.strerror}"
    except elfhead.ElfError as exc:
        return str(exc)
    if kind not in (elfhead.ET_EXEC, elfhead.ET_DYN):
        return f"{binary}: not an ELF executable"
    return None


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    problem = check_invocation(args)
    if problem:
        print(f"chardev-postmortem: {problem}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.binary:
        args.binary = os.path.abspath(args.binary)
    else:
        args.binary_index = discovery().BuildIdIndex(
            [os.path.abspath(d) for d in args.binary_dir])
    paths, skipped = expand_inputs(args.cores)
    paths += [Stored(match) for match in args.coredumpctl]
    show_progress = len(paths) > 1 and not args.quiet
    if show_progress:
        for directory, count in skipped:
            print(f"chardev-postmortem: {directory}: skipped {count} file(s) that are not "
                  "core files", file=sys.stderr)
    reports = [None] * len(paths)
    done = 0
    try:
        for index, report in analysed(args, paths):
            reports[index] = report
            done += 1
            if show_progress:
                progress(done, len(paths), report)
    except KeyboardInterrupt:       # main() called without run()'s signal handlers
        INTERRUPTED.append(signal.SIGINT)
    finally:
        CLEANUP.everything()
    if INTERRUPTED:
        print("chardev-postmortem: interrupted", file=sys.stderr)
        return 128 + INTERRUPTED[0]
    for report in reports:
        if report.get("error"):
            print(f"chardev-postmortem: {report_render().report_name(report)}: "
                  f"{report['error']}", file=sys.stderr)
    outputs = [(args.format, args.output)] + args.write
    for fmt, path in outputs:
        try:
            shown = with_binary_why(reports) if fmt == "text" else reports
            write_output(path, render(fmt, path in (None, "-"), shown, skipped))
        except OSError as exc:
            print(f"chardev-postmortem: cannot write {path}: {exc.strerror}", file=sys.stderr)
            return EXIT_UNUSABLE
    return exit_status(reports)


def analysed(args, paths):
    """(index, report) of each input as its analysis ends: one after the other in this thread
    for -j 1, else in a pool of ``args.jobs`` threads (concurrent.futures is imported only
    then: with logging, ~10 ms before gdb could start)."""
    if args.jobs == 1 or len(paths) < 2:
        for index, path in enumerate(paths):
            if INTERRUPTED:
                return
            yield index, analyse(args, path)
        return
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(analyse, args, path): i for i, path in enumerate(paths)}
        pending = set(futures)
        try:
            while pending:
                if INTERRUPTED:         # the gdbs are dead: what runs ends soon
                    for future in pending:
                        future.cancel()
                    return
                # Waits of SIGNAL_POLL seconds: the kernel may hand Ctrl-C or SIGTERM to a
                # worker thread, and Python runs the handler only when the main thread runs.
                done, pending = concurrent.futures.wait(
                    pending, timeout=SIGNAL_POLL,
                    return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    yield futures[future], future.result()
        except BaseException:   # interrupted: the pool's shutdown must not wait for the gdbs
            CLEANUP.everything()
            raise


def with_binary_why(reports):
    """Copies of the reports for the text output, whose ``binary`` line also says how the
    binary was found: "PATH (recorded in the core, build-id matches)"."""
    shown = []
    for report in reports:
        binary = (report.get("postmortem") or {}).get("binary") or {}
        target = report.get("target") or {}
        if binary.get("how") and not report.get("error"):
            report = dict(report, target=dict(
                target, binary=f"{target.get('binary') or '(none)'} ({binary['why']})"))
        shown.append(report)
    return shown


INTERRUPTED = []     # the signal that stopped the run (run() installs _interrupted)


def _interrupted(signum, _frame):
    """SIGINT, SIGTERM: every child dies now, the analyses under way end as they notice it,
    none starts, and main() returns 128 + the signal.  Nothing is raised here: an exception
    raised wherever the main thread happens to be (inside a thread pool's wait) can leave a
    lock taken, and the pool's shutdown then waits for ever."""
    if not INTERRUPTED:
        INTERRUPTED.append(signum)
    CLEANUP.kill_now()


def run():
    """The console script's entry point."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupted)
    sys.exit(main())


if __name__ == "__main__":
    run()
