"""Fixtures of the fast gdb tier: the C programs of fixtures/c/, compiled once per session,
each started once per session (and kept blocked) and gcore'd once, so that every test attaches
a fresh `gdb -nx -batch` to a known process, or opens its core, in well under a second."""

import shutil
import tempfile
from pathlib import Path

import pytest

from support import cprogs

OPTS = ["O0", "O2"]
MODES = ["live", "core"]


@pytest.fixture(scope="session")
def build_dir():
    path = Path(tempfile.mkdtemp(prefix="qcg-c-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


_binaries = {}
_programs = {}


def _binary(build_dir, source, opt, pkg_config=()):
    """fixtures/c/SOURCE compiled with -OPT, once per session."""
    key = (source, opt)
    if key not in _binaries:
        _binaries[key] = cprogs.compile_c(source, build_dir, opt, pkg_config)
    return _binaries[key]


@pytest.fixture(scope="session")
def program(build_dir):
    """program(SOURCE, OPT): fixtures/c/SOURCE built with -OPT, started once per session (it
    prints its ground truth and blocks), and gcore'd once; stopped at the end of the session."""
    def get(source, opt, pkg_config=()):
        key = (source, opt)
        if key not in _programs:
            running = cprogs.start(_binary(build_dir, source, opt, pkg_config))
            _programs[key] = running
            running.take_core(build_dir / f"{Path(source).stem}-{opt}.core")
        return _programs[key]
    yield get
    for running in _programs.values():
        running.stop()
    _programs.clear()


@pytest.fixture(scope="session", params=OPTS)
def layouts(request, program):
    """fixtures/c/layouts.c built with -O0 and with -O2."""
    return program("layouts.c", request.param)


@pytest.fixture(scope="session")
def layouts_o0(program):
    """fixtures/c/layouts.c built with -O0 only (tests where the optimisation cannot matter)."""
    return program("layouts.c", "O0")


@pytest.fixture(scope="session", params=OPTS)
def threads(request, program):
    """fixtures/c/threads.c built with -O0 and with -O2, its threads blocked."""
    return program("threads.c", request.param)


@pytest.fixture(scope="session")
def heap(program):
    """fixtures/c/gsource-heap.c (GSources in every state, no big heap)."""
    return program("gsource-heap.c", "O0", ("glib-2.0",))


@pytest.fixture(params=MODES)
def mode(request):
    """'live' (gdb attaches to the running program) or 'core' (gdb opens its gcore)."""
    return request.param
