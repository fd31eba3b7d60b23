"""pytest set-up shared by all tests: markers, `import support`, builds and temp dirs."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
# The harness (support) and the extension's gdb-free layers (ground truth for catalogue facts).
for _path in (TESTS_DIR, TESTS_DIR.parent / "gdbext"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import support  # noqa: E402  (needs the sys.path entry above)

REAL_DIR = TESTS_DIR / "real"
GDB_DIR = TESTS_DIR / "gdb"


def pytest_configure(config):
    """Register our markers."""
    config.addinivalue_line(
        "markers", "real: needs real QEMU builds (fixtures/qemu/build-qemu); "
                   "versions from env QCG_QEMU_VERSIONS (default '7.2 10.2')")
    config.addinivalue_line(
        "markers", "late: needs the qemu-system-x86_64 build, the slowest by far, which "
                   "scripts/run-tests starts in the background: run after everything else")
    config.addinivalue_line(
        "markers", "gdb: runs gdb on small C programs of fixtures/c/ that it compiles itself "
                   "(gcc, GLib headers); no QEMU; seconds")


def pytest_collection_modifyitems(config, items):
    """Everything under tests/real/ is marked `real`, so `-m 'not real'` skips it; everything
    under tests/gdb/ is marked `gdb`, so `-m gdb` runs that tier alone.  Tests marked `late`
    go last (in their order), so that a cold run builds what they need meanwhile."""
    items[:] = ([item for item in items if item.get_closest_marker("late") is None]
                + [item for item in items if item.get_closest_marker("late") is not None])
    for item in items:
        parents = Path(str(item.fspath)).parents
        if REAL_DIR in parents:
            item.add_marker(pytest.mark.real)
        elif GDB_DIR in parents:
            item.add_marker(pytest.mark.gdb)


@pytest.fixture(scope="session", params=support.versions_under_test(),
                ids=lambda v: f"qemu{v}")
def qemu(request) -> support.QemuBuild:
    """Each QEMU version under test, "fixed" variant (Debian's source as is)."""
    return support.require_build(request.param, "fixed")


@pytest.fixture(scope="session", params=support.versions_under_test(),
                ids=lambda v: f"qemu{v}-reverted")
def qemu_reverted(request) -> support.QemuBuild:
    """Each QEMU version under test with the two August 2019 fixes reverted."""
    return support.require_build(request.param, "reverted")


@pytest.fixture(scope="session", params=support.versions_under_test(),
                ids=lambda v: f"qemu{v}-pair")
def qemu_pair(request) -> tuple:
    """(fixed, reverted) builds of each QEMU version under test."""
    return (support.require_build(request.param, "fixed"), support.require_build(request.param, "reverted"))


def _short_tempdir(prefix: str) -> Path:
    """A fresh directory under /tmp with a short path (unix socket paths must fit 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _remove_unless_kept(path: Path) -> None:
    """Delete PATH (cores are hundreds of MB) unless env QCG_KEEP_TMP is set."""
    if os.environ.get("QCG_KEEP_TMP"):
        print(f"kept {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def workdir():
    """A per-test temporary directory for sockets, logs and cores, deleted afterwards."""
    path = _short_tempdir("qcg-")
    yield path
    _remove_unless_kept(path)


@pytest.fixture(scope="session")
def session_workdir():
    """A temporary directory shared by the whole session (e.g. for cores reused by many tests)."""
    path = _short_tempdir("qcg-s-")
    yield path
    _remove_unless_kept(path)
