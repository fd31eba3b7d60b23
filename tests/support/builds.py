"""Real QEMU builds: run fixtures/qemu/build-qemu once per (version, variant), cache the answer."""

import functools
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import procs
from .paths import BUILD_SCRIPT

DEFAULT_VERSIONS = "7.2 10.2"
BUILD_TIMEOUT = 3600  # a cold build with its source download takes a few minutes; be generous


class BuildError(RuntimeError):
    """fixtures/qemu/build-qemu failed; the message ends with the tail of its output."""


def versions_under_test() -> list:
    """QEMU versions to test, from env QCG_QEMU_VERSIONS (default "7.2 10.2")."""
    return os.environ.get("QCG_QEMU_VERSIONS", DEFAULT_VERSIONS).split()


def _run_build_script(version: str, variant: str) -> Path:
    """Run build-qemu and return the build directory it printed.

    build-qemu serialises builds of one tree itself (flock), so concurrent callers are safe.
    """
    started = time.monotonic()
    try:
        done = subprocess.run([str(BUILD_SCRIPT), version, variant], capture_output=True,
                              text=True, timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"build-qemu {version} {variant} timed out after {BUILD_TIMEOUT} s:\n"
                         f"{procs.tail(str(exc.stderr or ''))}") from None
    if done.returncode != 0:
        raise BuildError(f"build-qemu {version} {variant} failed (exit {done.returncode}, "
                         f"{time.monotonic() - started:.0f} s):\n"
                         f"{procs.tail(done.stderr + done.stdout)}")
    printed = done.stdout.strip().splitlines()
    build_dir = Path(printed[-1] if printed else "")
    if not printed or not build_dir.is_dir():
        raise BuildError(f"build-qemu {version} {variant} printed {build_dir}, not a directory")
    return build_dir


@functools.lru_cache(maxsize=None)
def _cached_build(version: str, variant: str):
    """(build_dir, None) or (None, BuildError), computed once per process."""
    try:
        return _run_build_script(version, variant), None
    except BuildError as exc:
        return None, exc


def qemu_build(version: str, variant: str = "fixed") -> Path:
    """The build directory of QEMU VERSION ("7.2", "10.2", ...) and VARIANT ("fixed"/"reverted").

    Runs fixtures/qemu/build-qemu the first time (it has its own on-disk cache); later calls in
    the same process return the same answer, including the same BuildError.
    """
    build_dir, error = _cached_build(version, variant)
    if error is not None:
        raise error
    return build_dir


@functools.lru_cache(maxsize=None)
def binary_version(binary: Path) -> tuple:
    """QEMU version of BINARY as ints, e.g. (7, 2, 22), from `BINARY --version`."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                         timeout=30, stdin=subprocess.DEVNULL).stdout
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
    if not match:
        raise RuntimeError(f"cannot parse the version of {binary} from {out!r}")
    return tuple(int(part or 0) for part in match.groups())


@dataclass(frozen=True)
class QemuBuild:
    """One real QEMU build: where it is and its two binaries."""

    version: str
    variant: str
    build_dir: Path

    @classmethod
    def get(cls, version: str, variant: str = "fixed") -> "QemuBuild":
        """Build (or find in the cache) VERSION/VARIANT; raises BuildError on failure."""
        return cls(version, variant, qemu_build(version, variant))

    @property
    def storage_daemon(self) -> Path:
        """BUILD/storage-daemon/qemu-storage-daemon."""
        return self.build_dir / "storage-daemon" / "qemu-storage-daemon"

    @property
    def test_char(self) -> Path:
        """BUILD/tests/unit/test-char."""
        return self.build_dir / "tests" / "unit" / "test-char"

    @property
    def version_tuple(self) -> tuple:
        """The storage daemon's own idea of its version, e.g. (10, 2, 2)."""
        return binary_version(self.storage_daemon)

    def __str__(self) -> str:
        return f"qemu-{self.version}-{self.variant}"


def require_build(version: str, variant: str = "fixed") -> QemuBuild:
    """The build, or a test failure (never a skip) carrying build-qemu's error tail."""
    try:
        return QemuBuild.get(version, variant)
    except BuildError as exc:
        error = exc
    pytest.fail(f"QEMU {version} ({variant}) build failed:\n{error}", pytrace=False)
