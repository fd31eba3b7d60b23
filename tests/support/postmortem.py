"""Cores and runs for the tests of `qemu diagnose` and scripts/chardev-postmortem.

Cores are made once per test process and shared by every test that asks for the same one
(they are hundreds of MB): race cores from fixtures/qemu/make-race-core, gcore snapshots of a
daemon in an ordinary state, a core of another program, and compressed copies.  They live in
one temporary directory, removed at exit unless QCG_KEEP_TMP is set.
"""

import atexit
import functools
import json
import lzma
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from . import procs
from .gdb import gcore, run_gdb
from .paths import REPO_ROOT
from .race_core import make_race_core
from .scenarios import all_chardevs_scenario

POSTMORTEM = REPO_ROOT / "scripts" / "chardev-postmortem"
SCHEMA_PATH = REPO_ROOT / "docs" / "report-schema.json"
NO_CENSUS = "--no-census"
_dir: Optional[Path] = None


def core_dir() -> Path:
    """The shared directory for cores (short path: daemons put unix sockets there)."""
    global _dir
    if _dir is None:
        _dir = Path(tempfile.mkdtemp(prefix="qcg-pm-", dir="/tmp"))
        atexit.register(_remove_core_dir)
    return _dir


def _remove_core_dir() -> None:
    if _dir is not None and not os.environ.get("QCG_KEEP_TMP"):
        shutil.rmtree(_dir, ignore_errors=True)


def _fresh(name: str) -> Path:
    path = core_dir() / name
    path.mkdir()
    return path


@functools.lru_cache(maxsize=None)
def race_core(build):
    """make-race-core's SIGSEGV core of the 2019 race (BUILD: a reverted QemuBuild)."""
    return make_race_core(build, _fresh(f"race-{build}") / "race.core")


@functools.lru_cache(maxsize=None)
def lock_wait_core(build):
    """make-race-core --expect-no-crash on a fixed build: main thread in tcp_chr_write holding
    mon0's chr_write_lock, the I/O thread's disconnect waiting for it (a gcore, SIGTRAP)."""
    return make_race_core(build, _fresh(f"wait-{build}") / "wait.core", expect_no_crash=True)


@functools.lru_cache(maxsize=None)
def idle_core(build) -> Path:
    """A gcore of a daemon with mon0 (client connected), cli0 (reconnecting), tcp0, ring0 and
    null0, in its main loop: an ordinary state."""
    workdir = _fresh(f"idle-{build}")
    with all_chardevs_scenario(build.storage_daemon, workdir) as sc:
        time.sleep(1.5)          # let cli0 go through a reconnect attempt or two
        return gcore(sc.daemon.pid, workdir / "idle.core", binary=build.storage_daemon)


@functools.lru_cache(maxsize=None)
def other_program_core() -> Path:
    """A gcore of /bin/sleep: a core, but not of QEMU."""
    workdir = _fresh("sleep")
    proc = procs.register(subprocess.Popen(["sleep", "600"], start_new_session=True))
    try:
        return gcore(proc.pid, workdir / "sleep.core", binary="/bin/sleep")
    finally:
        procs.kill_and_reap(proc)


@functools.lru_cache(maxsize=None)
def compressed(core: Path, ext: str) -> Path:
    """CORE compressed as systemd-coredump does: ".zst", ".lz4" or ".xz" (next to a copy)."""
    out = _fresh(f"{ext[1:]}-{core.parent.name}") / (core.name + ext)
    if ext == ".xz":
        with open(core, "rb") as src, lzma.open(out, "wb", preset=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    else:
        tool = {".zst": ["zstd", "-q", "-1", "-c"], ".lz4": ["lz4", "-q", "-c"]}[ext]
        with open(out, "wb") as dst:
            subprocess.run(tool + [str(core)], stdout=dst, check=True, timeout=300)
    return out


def run_postmortem(binary, *inputs, options: Sequence[str] = (NO_CENSUS,),
                   timeout: float = 900.0, env: Optional[dict] = None,
                   python: str = "/usr/bin/python3") -> subprocess.CompletedProcess:
    """Run scripts/chardev-postmortem with /usr/bin/python3; returns the CompletedProcess."""
    argv = [python, str(POSTMORTEM), *options, str(binary), *[str(i) for i in inputs]]
    merged = dict(os.environ, NO_COLOR="1")
    merged.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=merged)


@functools.lru_cache(maxsize=None)
def report_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_report(obj) -> None:
    """Raise jsonschema.ValidationError unless OBJ follows docs/report-schema.json."""
    import jsonschema
    jsonschema.Draft202012Validator(report_schema()).validate(obj)


def diagnose(binary, *, core=None, pid=None, options: str = NO_CENSUS, timeout: float = 300.0):
    """(report dict, text output, GdbResult) of `qemu diagnose` on CORE or PID."""
    result = run_gdb(binary, core=core, pid=pid, timeout=timeout,
                     commands=[f"qemu diagnose --json {options}".strip(),
                               f"qemu diagnose {options}".strip()])
    return result.json(0), result.outputs[1], result


def raw(binary, core, *commands, timeout: float = 120.0) -> list:
    """Outputs of plain gdb (no extension) commands on CORE: the ground truth."""
    return run_gdb(binary, core=core, commands=list(commands), extension=False,
                   timeout=timeout).check().outputs
