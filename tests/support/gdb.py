"""Drive `gdb -nx -batch` as a subprocess, with every command's output and errors kept apart.

Each command is wrapped in markers written by gdb's Python to both stdout and stderr
(`@@QCG-BEGIN KEY` / `@@QCG-END KEY`), so that the text a command printed on either stream can
be told apart from the others and from gdb's own banners. Keys are "0", "1", ... for the
caller's commands, "pre0", ... for set-up commands and "post0", ... for tear-down commands.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from . import procs
from .paths import EXTENSION_PATH

GDB = "gdb"
DEFAULT_TIMEOUT = 120.0
MARKER = "@@QCG"
# Settings applied before gdb loads anything (-iex), so that banners are plain text too.
GDB_SETTINGS = ("set pagination off", "set style enabled off", "set confirm off",
                "set width 0", "set debuginfod enabled off")
_SECTION_RE = re.compile(MARKER + r"-BEGIN (\S+)\n(.*?)" + MARKER + r"-END \1\n", re.S)
# stderr lines that do not mean the command failed
_HARMLESS_STDERR_RE = re.compile(r"^(warning: .*|\s*)$")


class GdbTimeout(RuntimeError):
    """gdb did not finish in time; it was killed. The message has the tails of its output."""


class GdbCommandError(RuntimeError):
    """A gdb command printed an error (or never ran); raised by GdbResult.check()."""


def _marker(kind: str, key: str) -> str:
    """A gdb command printing the marker line KIND KEY to stdout and to stderr, flushed."""
    line = f"{MARKER}-{kind} {key}\\n"
    return (f'python gdb.write("{line}"); gdb.write("{line}", gdb.STDERR); '
            f"gdb.flush(gdb.STDOUT); gdb.flush(gdb.STDERR)")


def _sections(text: str) -> dict:
    """{key: text between that key's BEGIN and END markers} found in TEXT."""
    return {m.group(1): m.group(2) for m in _SECTION_RE.finditer(text)}


@dataclass
class Section:
    """What one gdb command printed. Output/error are None if the command never finished."""

    key: str
    command: str
    output: Optional[str]
    error: Optional[str]

    @property
    def failed(self) -> bool:
        """True if the command did not finish or printed something other than warnings on stderr."""
        if self.output is None or self.error is None:
            return True
        return any(not _HARMLESS_STDERR_RE.match(line) for line in self.error.splitlines())


@dataclass
class GdbResult:
    """The outcome of one gdb run.

    .outputs[i] / .errors[i]: stdout / stderr text of the caller's command i (None if it never
    finished); .sections: every Section by key, set-up and tear-down commands included;
    .stdout / .stderr: everything; .returncode: gdb's exit status (0 even when most commands
    failed: gdb -batch only reports its last command).
    """

    argv: list
    returncode: int
    stdout: str
    stderr: str
    sections: dict
    commands: list = field(default_factory=list)

    @property
    def outputs(self) -> list:
        """stdout text of each of the caller's commands, in order."""
        return [self.sections[str(i)].output for i in range(len(self.commands))]

    @property
    def errors(self) -> list:
        """stderr text of each of the caller's commands, in order."""
        return [self.sections[str(i)].error for i in range(len(self.commands))]

    def json(self, i: int):
        """json.loads of the output of command I (raises GdbCommandError if that failed)."""
        self.check(i)
        return json.loads(self.outputs[i])

    def failures(self) -> list:
        """Every Section (set-up and tear-down included) that failed."""
        return [s for s in self.sections.values() if s.failed]

    def check(self, *indexes: int) -> "GdbResult":
        """Raise GdbCommandError if any command (or just the given caller's commands) failed."""
        sections = ([self.sections[str(i)] for i in indexes] if indexes
                    else list(self.sections.values()))
        failed = [s for s in sections if s.failed]
        if failed:
            lines = [f"  [{s.key}] {s.command!r}: "
                     f"{'did not finish' if s.error is None else s.error.strip()}" for s in failed]
            raise GdbCommandError("gdb command(s) failed:\n" + "\n".join(lines)
                                  + f"\n--- gdb stderr tail ---\n{procs.tail(self.stderr)}")
        return self

    def describe(self) -> str:
        """A human-readable dump of every section, for assertion messages."""
        parts = [f"gdb exit {self.returncode}"]
        for s in self.sections.values():
            parts.append(f"[{s.key}] {s.command}\n  out: {s.output!r}\n  err: {s.error!r}")
        return "\n".join(parts)


def _gdb_env(env: Optional[dict]) -> dict:
    """The environment for gdb: ours, no colours, no debuginfod, then ENV on top."""
    merged = dict(os.environ)
    merged.pop("DEBUGINFOD_URLS", None)
    merged["NO_COLOR"] = "1"
    merged.update(env or {})
    return merged


class GdbProcess:
    """A running `gdb -nx -batch`; normally used through run_gdb().

    Its stdout/stderr go to files in a private temporary directory, so they can be watched
    while gdb runs (see wait_for_marker()). finish() waits and parses; kill() cleans up.
    """

    def __init__(self, binary=None, *, core=None, pid=None, commands: Sequence[str] = (),
                 setup: Sequence[str] = (), teardown: Sequence[str] = (),
                 extension: bool = True, env: Optional[dict] = None):
        if core is not None and pid is not None:
            raise ValueError("give core or pid, not both")
        if extension:
            if not EXTENSION_PATH.is_file():
                raise FileNotFoundError(f"gdb extension not found: {EXTENSION_PATH}")
            setup = [f"source {EXTENSION_PATH}", *setup]
        self.keyed = ([(f"pre{i}", c) for i, c in enumerate(setup)]
                      + [(str(i), c) for i, c in enumerate(commands)]
                      + [(f"post{i}", c) for i, c in enumerate(teardown)])
        self.commands = list(commands)
        self.argv = self._argv(binary, core, pid)
        self._dir = Path(tempfile.mkdtemp(prefix="qcg-gdb-"))
        self.stdout_path = self._dir / "stdout"
        self.stderr_path = self._dir / "stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = procs.register(subprocess.Popen(
                self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env=_gdb_env(env), start_new_session=True))

    def _argv(self, binary, core, pid) -> list:
        """gdb's command line: settings, marker-wrapped commands, then the target."""
        argv = [GDB, "-nx", "-batch"]
        for setting in GDB_SETTINGS:
            argv += ["-iex", setting]
        for key, command in self.keyed:
            argv += ["-ex", _marker("BEGIN", key), "-ex", command, "-ex", _marker("END", key)]
        if binary is not None:
            argv.append(str(binary))
        if core is not None:
            argv += ["--core", str(core)]
        if pid is not None:
            argv += ["-p", str(pid)]
        return argv

    def stdout_so_far(self) -> str:
        """What gdb has written to stdout until now."""
        return self.stdout_path.read_text(errors="replace")

    def stderr_so_far(self) -> str:
        """What gdb has written to stderr until now."""
        return self.stderr_path.read_text(errors="replace")

    def wait_for_marker(self, key: str, kind: str = "BEGIN", timeout: float = 60.0) -> None:
        """Block until gdb has printed the KIND ("BEGIN"/"END") marker of command KEY.

        A BEGIN marker means gdb is about to run that command. Raises GdbTimeout (after
        killing gdb) if gdb exits first or TIMEOUT passes.
        """
        needle = f"{MARKER}-{kind} {key}\n"

        def seen():
            if needle in self.stdout_so_far():
                return True
            if self.proc.poll() is not None:
                raise self.abort(f"gdb exited ({self.proc.returncode}) before {kind} {key}")
            return False
        try:
            procs.wait_until(seen, timeout, what=f"gdb marker {kind} {key}")
        except TimeoutError as exc:
            raise self.abort(str(exc)) from None

    def finish(self, timeout: float = DEFAULT_TIMEOUT) -> GdbResult:
        """Wait for gdb to exit (killing it after TIMEOUT: GdbTimeout) and parse its output."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self.abort(f"gdb timed out after {timeout:g} s") from None
        try:
            return self._result()
        finally:
            self.kill()

    def _result(self) -> GdbResult:
        """Build the GdbResult from the finished gdb's output files."""
        stdout, stderr = self.stdout_so_far(), self.stderr_so_far()
        outs, errs = _sections(stdout), _sections(stderr)
        sections = {key: Section(key, command, outs.get(key), errs.get(key))
                    for key, command in self.keyed}
        return GdbResult(self.argv, self.proc.returncode, stdout, stderr, sections,
                         self.commands)

    def abort(self, why: str) -> GdbTimeout:
        """Kill gdb and return a GdbTimeout describing WHY, with the tails of its output."""
        stdout, stderr = self.stdout_so_far(), self.stderr_so_far()
        self.kill()
        return GdbTimeout(f"{why}\ncommands: {[c for _, c in self.keyed]}\n"
                          f"--- stdout tail ---\n{procs.tail(stdout)}\n"
                          f"--- stderr tail ---\n{procs.tail(stderr)}")

    def kill(self) -> None:
        """Kill gdb if still running, reap it, and delete its output files (idempotent)."""
        procs.kill_and_reap(self.proc)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "GdbProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def run_gdb(binary=None, *, core=None, pid=None, commands: Iterable[str] = (),
            extension: bool = True, timeout: float = DEFAULT_TIMEOUT,
            env: Optional[dict] = None, setup: Sequence[str] = (),
            teardown: Sequence[str] = ()) -> GdbResult:
    """Run `gdb -nx -batch` on BINARY with CORE or attached to PID, running COMMANDS.

    With EXTENSION, gdbext/qemu-chardev-gdb.py is sourced first. gdb is killed after TIMEOUT
    seconds (GdbTimeout). Attaching to PID leaves the process running when gdb exits.
    """
    with GdbProcess(binary, core=core, pid=pid, commands=list(commands), setup=setup,
                    teardown=teardown, extension=extension, env=env) as gdb:
        return gdb.finish(timeout)


def raw_gdb_values(binary=None, *, core=None, pid=None, exprs: Iterable[str] = (),
                   timeout: float = DEFAULT_TIMEOUT) -> list:
    """Ground truth from plain gdb (no extension): `output EXPR` for each of EXPRS, as strings.

    Raises GdbCommandError if gdb could not evaluate any of them.
    """
    result = run_gdb(binary, core=core, pid=pid, commands=[f"output {e}" for e in exprs],
                     extension=False, timeout=timeout)
    return result.check().outputs


def gcore(pid: int, path, *, binary=None, timeout: float = 300.0) -> Path:
    """Write a core of running process PID to PATH with gdb's gcore; PID keeps running."""
    path = Path(path)
    result = run_gdb(binary, pid=pid, commands=[f"gcore {path}"], extension=False,
                     timeout=timeout)
    if not path.is_file() or path.stat().st_size == 0:
        raise GdbCommandError(f"gcore {path} of pid {pid} wrote no core:\n{result.describe()}")
    return path
