"""Small C programs of fixtures/c/ for the fast gdb tier (tests/gdb/): build, run, gcore.

Each program prints what a test needs to know about it ("<key> <value>" lines, e.g.
"tid holder 1234" or "chr_global 0x55..."), then "READY <pid>", and blocks until killed. That
printout is ground truth the extension never saw.
"""

import re
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import procs
from .gdb import GdbResult, gcore, raw_gdb_values, run_gdb
from .paths import REPO_ROOT

C_DIR = REPO_ROOT / "fixtures" / "c"
CFLAGS = ("-g", "-Wall", "-Wextra", "-pthread")


def compile_c(source: str, out_dir, opt: str = "O0", pkg_config: Sequence[str] = ()) -> Path:
    """Compile fixtures/c/SOURCE with gcc -g -OPT into OUT_DIR/<stem>-<opt>; the binary's path.

    The source is given to gcc by its absolute path, so __FILE__ and the debug info's file
    name are that path.
    """
    src = C_DIR / source
    out = Path(out_dir) / f"{src.stem}-{opt}"
    flags = []
    if pkg_config:
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", *pkg_config], check=True,
                               capture_output=True, text=True, timeout=60).stdout.split()
    done = subprocess.run(["gcc", *CFLAGS, f"-{opt}", "-o", str(out), str(src), *flags],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"gcc {src.name} -{opt} failed:\n{done.stderr}")
    return out


@dataclass
class Program:
    """A running fixture program and what it printed before READY."""

    binary: Path
    proc: subprocess.Popen
    lines: List[str] = field(default_factory=list)
    core: Optional[Path] = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def values(self, key: str) -> Dict[str, str]:
        """{name: value} of the lines "KEY NAME VALUE" (e.g. values("tid")["holder"])."""
        out = {}
        for line in self.lines:
            parts = line.split(None, 2)
            if len(parts) == 3 and parts[0] == key:
                out[parts[1]] = parts[2]
        return out

    def value(self, key: str) -> str:
        """VALUE of the line "KEY VALUE"."""
        for line in self.lines:
            word, _, rest = line.partition(" ")
            if word == key:
                return rest.strip()
        raise KeyError(f"{self.binary.name} printed no {key!r} line: {self.lines}")

    def address(self, key: str) -> int:
        return int(self.value(key), 16)

    def address_of(self, name: str) -> int:
        """The address printed on the line "addr NAME 0x..."."""
        return int(self.values("addr")[name], 16)

    def addresses(self, key: str) -> List[int]:
        """Every address printed on a line "KEY 0x..." (e.g. gsource-heap's "leaked 0x...")."""
        out = []
        for line in self.lines:
            word, _, rest = line.partition(" ")
            if word == key and rest.startswith("0x"):
                out.append(int(rest, 16))
        return out

    def task_ids(self) -> List[int]:
        """The kernel's thread ids of the process (/proc/PID/task), sorted."""
        return sorted(int(p.name) for p in Path(f"/proc/{self.pid}/task").iterdir())

    def comm(self, tid: int) -> str:
        """The kernel's name of thread TID (/proc/PID/task/TID/comm)."""
        return Path(f"/proc/{self.pid}/task/{tid}/comm").read_text().strip()

    def where(self, mode: str) -> dict:
        """run_gdb keyword arguments for MODE "live" (attach) or "core"."""
        if mode == "live":
            return {"pid": self.pid}
        if mode == "core":
            if self.core is None:
                raise RuntimeError(f"no core of {self.binary.name} was taken")
            return {"core": self.core}
        raise ValueError(mode)

    def gdb(self, mode: str, commands: Sequence[str], **kw) -> GdbResult:
        """Run COMMANDS in gdb (extension sourced, PRELUDE run) on the process or its core."""
        setup = [PRELUDE, *kw.pop("setup", ())]
        return run_gdb(self.binary, commands=list(commands), setup=setup, timeout=60,
                       **self.where(mode), **kw)

    def raw(self, mode: str, exprs: Sequence[str]) -> List[str]:
        """Plain gdb (no extension) `output EXPR` of each of EXPRS."""
        return raw_gdb_values(self.binary, exprs=list(exprs), timeout=60, **self.where(mode))

    def raw_commands(self, mode: str, commands: Sequence[str]) -> GdbResult:
        """Plain gdb (no extension) running COMMANDS; checked."""
        return run_gdb(self.binary, commands=list(commands), extension=False, timeout=60,
                       **self.where(mode)).check()

    def take_core(self, path) -> Path:
        self.core = gcore(self.pid, path, binary=self.binary, timeout=60)
        return self.core

    def stop(self) -> None:
        procs.kill_and_reap(self.proc)


def start(binary, *args: str, timeout: float = 30.0) -> Program:
    """Run BINARY ARGS; return once it printed READY, with the lines it printed before."""
    proc = procs.register(subprocess.Popen([str(binary), *args], stdout=subprocess.PIPE,
                                           stdin=subprocess.DEVNULL, text=True,
                                           start_new_session=True))
    program = Program(Path(binary), proc)
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith("READY "):
            return program
        program.lines.append(line)
        if time.monotonic() > deadline:
            break
    program.stop()
    raise RuntimeError(f"{Path(binary).name} did not print READY: {program.lines}")


def py(code: str) -> str:
    """A one-line gdb command that runs the (multi-line) Python CODE in gdb's __main__.

    Names it defines stay defined for the next `py` commands of the same gdb run.
    """
    return "python exec(" + repr(textwrap.dedent(code).strip() + "\n") + ")"


# Run first in every gdb of this tier: `emit(obj)` prints obj as one line of JSON.
PRELUDE = py("""
    import json
    import gdb
    def emit(obj):
        print(json.dumps(obj))
""")


def hex_int(text: str) -> int:
    """The first 0x... number in raw gdb output."""
    match = re.search(r"0x[0-9a-fA-F]+", text)
    if not match:
        raise ValueError(f"no address in {text!r}")
    return int(match.group(0), 16)


# `bt` line: "#3  0x... in name (args) at file:line", "#7  name (args) at ...", "from /lib.."
_BT_RE = re.compile(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(\S+) \((.*?)\)"
                    r"(?: at (\S+):(\d+)| from (\S+))?$")
_THREAD_RE = re.compile(r'^(?:\*\s*)?(\d+)\s+(?:Thread 0x[0-9a-f]+ \(LWP (\d+)\)|LWP (\d+))')


@dataclass
class RawFrame:
    level: int
    function: str
    args: str
    file: Optional[str]
    line: Optional[int]


def parse_backtraces(text: str) -> Dict[int, List[RawFrame]]:
    """{LWP: [RawFrame]} from plain gdb's `thread apply all bt` output."""
    stacks = {}
    current = None
    for line in text.splitlines():
        header = re.match(r"^Thread \d+ \(.*?LWP (\d+)\)", line)
        if header:
            current = stacks.setdefault(int(header.group(1)), [])
            continue
        match = _BT_RE.match(line.rstrip())
        if match and current is not None:
            current.append(RawFrame(int(match.group(1)), match.group(2), match.group(3),
                                    match.group(4), int(match.group(5)) if match.group(5)
                                    else None))
    return stacks


def parse_info_threads(text: str) -> Dict[int, int]:
    """{LWP: gdb thread number} from plain gdb's `info threads` output."""
    out = {}
    for line in text.splitlines():
        match = _THREAD_RE.match(line.strip())
        if match:
            out[int(match.group(2) or match.group(3))] = int(match.group(1))
    return out


def source_line(path, marker: str) -> int:
    """The 1-based number of the only line of source file PATH containing MARKER."""
    hits = [i for i, text in enumerate(Path(path).read_text().splitlines(), 1) if marker in text]
    if len(hits) != 1:
        raise ValueError(f"{marker!r} is on lines {hits} of {path}")
    return hits[0]


def parse_output(text: str):
    """The value plain gdb's `output` printed for a scalar: True/False for bools, an int for
    integers, chars and enums printed with /d, the address of a pointer."""
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    text = re.sub(r"^\(.*\)\s+(?=-?(?:0x|\d))", "", text)     # "(void *) 0x55..."
    match = re.match(r"-?(?:0x[0-9a-fA-F]+|\d+)", text)
    if not match:
        raise ValueError(f"not a scalar: {text!r}")
    return int(match.group(0), 0)
