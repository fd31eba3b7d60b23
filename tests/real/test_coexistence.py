"""Our `qemu` commands and those of QEMU's own scripts/qemu-gdb.py, loaded together.

Both define the `qemu` prefix; gdb replaces a redefined prefix together with its
subcommands, so the load order matters unless the extension takes care of it.  For the
qemu-gdb.py of every QEMU source tree the suite builds (5.2, 7.2, 10.0, 10.2: each build
directory is a whole Debian source tree), in both orders, with our extension sourced twice
and qemu-gdb.py sourced twice after us, every subcommand of both stays in `help qemu` and
runs: `qemu chardev list` (and `qemu chardev show`, a subcommand of a subcommand) on a real
core, and qemu-gdb.py's `qemu coroutine`.  None of qemu-gdb.py's commands that read QEMU
state answers cleanly on a qemu-storage-daemon core (`timers`: "There is no member named
last" on 7.2, `handlers`: no fd_coroutine_enter, `mtree`: no address_space_memory,
`tcg-lock-status`: no iothread_locked, `bt`: fails after the backtrace on a core), so theirs
is run as `qemu coroutine` without an argument, which prints its usage: their own code
answering under the `qemu` prefix.  qemu-gdb.py is sourced by its path in the tree (it puts
its own folder on sys.path for `qemugdb`).
"""
import functools
import re

import pytest

import support
from support import postmortem as pm

# Every QEMU source tree the suite builds (scripts/run-tests), whatever QCG_QEMU_VERSIONS says.
ALL_VERSIONS = ("5.2", "7.2", "10.0", "10.2")
LABELS = ("mon0", "cli0", "tcp0", "ring0", "null0")
COROUTINE_USAGE = "usage: qemu coroutine <coroutine-pointer>\n"
ORDERS = {
    "ours-then-theirs": ("ours", "theirs"),
    "theirs-then-ours": ("theirs", "ours"),
    "ours-twice-then-theirs-twice": ("ours", "ours", "theirs", "theirs"),
    "theirs-ours-theirs-ours": ("theirs", "ours", "theirs", "ours"),
}


@pytest.fixture(scope="module", params=ALL_VERSIONS, ids=lambda v: f"qemu{v}")
def tree(request):
    """(build, its qemu-gdb.py, an idle core of its qemu-storage-daemon)."""
    build = support.require_build(request.param, "fixed")
    script = build.build_dir.parent / "scripts" / "qemu-gdb.py"
    assert script.is_file(), f"{script}: not in the source tree of {build}"
    return build, script, pm.idle_core(build)


def sources(order, script):
    return [f"source {support.EXTENSION_PATH if who == 'ours' else script}" for who in order]


def subcommands(help_text):
    """The subcommand names `help qemu` lists."""
    return set(re.findall(r"^qemu (\S+) -- ", help_text, re.M))


@functools.lru_cache(maxsize=None)
def alone(build, script, who):
    """The subcommands `help qemu` lists with only ours, or only qemu-gdb.py, loaded."""
    result = support.run_gdb(build.storage_daemon, extension=False,
                             setup=sources((who,), script), commands=["help qemu"])
    return subcommands(result.check().outputs[0])


def test_each_alone_lists_its_own_subcommands(tree):
    build, script, _core = tree
    ours, theirs = alone(build, script, "ours"), alone(build, script, "theirs")
    assert {"chardev", "mutex", "gsource", "qiotask", "diagnose", "watch-disconnect"} <= ours
    assert {"coroutine", "mtree", "timers", "handlers", "tcg-lock-status"} <= theirs
    assert not ours & theirs


@pytest.mark.parametrize("order", ORDERS.values(), ids=ORDERS.keys())
def test_every_subcommand_of_both_is_listed_and_runs(tree, order):
    build, script, core = tree
    expected = alone(build, script, "ours") | alone(build, script, "theirs")
    result = support.run_gdb(build.storage_daemon, core=core, extension=False,
                             setup=sources(order, script),
                             commands=["help qemu", "qemu chardev list", "qemu chardev show mon0",
                                       "qemu coroutine", "help qemu chardev"])
    result.check()          # every source and command: no error on stderr
    listed, chardevs, mon0, coroutine, chardev_help = result.outputs
    assert subcommands(listed) == expected, listed
    for label in LABELS:
        assert re.search(rf"^{label}\s", chardevs, re.M), chardevs
    assert mon0.startswith("Chardev 'mon0' (chardev-socket) at 0x"), mon0
    assert coroutine == COROUTINE_USAGE
    assert "qemu chardev list" in chardev_help and "qemu chardev show" in chardev_help
