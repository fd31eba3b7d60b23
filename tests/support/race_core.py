"""Cores of the 2019 char-socket race made by fixtures/qemu/make-race-core, for tests.

    core = make_race_core(build, workdir / "race.core")      # reverted build: SIGSEGV core
    core = make_race_core(build, path, expect_no_crash=True)  # fixed build: lock-wait gcore
    core.path, core.summary["main_lwp"], core.summary["io_lwp"], core.binary

run_recipe() runs the script and returns the CompletedProcess as is, for tests of its exit status.
"""

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .paths import REPO_ROOT

RECIPE = REPO_ROOT / "fixtures" / "qemu" / "make-race-core"
RECIPE_TIMEOUT = 45.0   # the script's own --timeout; it kills what it started when it expires


class RaceCoreError(RuntimeError):
    """make-race-core failed; the message has its exit status and its one-line reason."""


@dataclass
class RaceCore:
    """A core written by make-race-core and the script's --json summary of the run."""

    path: Path
    summary: dict

    @property
    def binary(self) -> Path:
        """The qemu-storage-daemon the core belongs to."""
        return Path(self.summary["binary"])


def run_recipe(build_dir, out, extra: Sequence[str] = (),
               timeout: float = RECIPE_TIMEOUT) -> subprocess.CompletedProcess:
    """Run make-race-core on BUILD_DIR writing OUT, with EXTRA options and --timeout TIMEOUT."""
    argv = [str(RECIPE), "--build", str(build_dir), "--out", str(out),
            "--timeout", f"{timeout:g}", *extra]
    # the script bounds itself; this outer limit only catches a script that does not
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout + 60)


def make_race_core(build, out, *, expect_no_crash: bool = False, core_by: str = "auto",
                   timeout: float = RECIPE_TIMEOUT) -> RaceCore:
    """Run the recipe on BUILD (a QemuBuild or a build directory) and return the RaceCore.

    Reverted builds give a SIGSEGV crash core; with EXPECT_NO_CRASH a fixed build gives a
    gcore of the I/O thread waiting for the chr_write_lock held by the writing main thread.
    """
    build_dir = getattr(build, "build_dir", build)
    extra = ["--json", "--core-by", core_by] + (["--expect-no-crash"] if expect_no_crash else [])
    done = run_recipe(build_dir, out, extra, timeout)
    if done.returncode != 0:
        raise RaceCoreError(f"make-race-core on {build_dir} exited {done.returncode}: "
                            f"{done.stderr.strip()}")
    return RaceCore(Path(out), json.loads(done.stdout))
