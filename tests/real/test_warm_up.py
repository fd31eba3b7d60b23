"""The scripts' warm-up: gdb imports the extension's gdb-free layers on a thread while it reads
the binary and the core (``-iex`` of ``gdbload.warm_up_command``), and the load that follows
(``-ex`` of ``gdbload.load_command``) finishes it.

Real gdb, real qemu-storage-daemon cores.  What is checked: the thread imported every module of
the gdb-free layers and nothing of the gdb side; the commands then give what they give without
the warm-up; gdb ending while the thread still imports ends cleanly.
"""
import json
import pathlib
import subprocess

import support
from support import postmortem as pm

import qemu_chardev
from qemu_chardev.cli import gdbload

PACKAGE = pathlib.Path(qemu_chardev.__file__).parent
GDB = ["gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off",
       "-iex", "set style enabled off"]

# Run at the first -ex, before the load: wait for the thread (as start() does) and list what
# it imported, and whether the gdb side was left alone.
CHECK = ("python import sys, threading, qemu_chardev as q; w = q._warming; "
         "print('WARM-THREAD', w is not None and w is not threading.main_thread()); "
         "w.join(); "
         "print('WARM-GDB-FREE', sorted(m for m in sys.modules if m.split('.')[1:2] and "
         "m.split('.')[0] == 'qemu_chardev' and m.split('.')[1] in q.GDB_FREE_LAYERS "
         "and m.count('.') == 2)); "
         "print('WARM-GDB-SIDE', sorted(m for m in sys.modules if m.startswith("
         "('qemu_chardev.commands', 'qemu_chardev.readers', 'qemu_chardev.target', "
         "'qemu_chardev.live')))); sys.stdout.flush()")


def gdb_free_modules():
    """qemu_chardev.LAYER.NAME of every module file in the gdb-free folders, from the disk."""
    return sorted(f"qemu_chardev.{layer}.{path.stem}"
                  for layer in qemu_chardev.GDB_FREE_LAYERS
                  for path in (PACKAGE / layer).glob("*.py") if path.stem != "__init__")


def run(argv, timeout=120):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def line(stdout, key):
    return next(text.split(" ", 1)[1] for text in stdout.splitlines()
                if text.startswith(key + " "))


def test_the_thread_imports_every_gdb_free_module_and_nothing_else(qemu):
    core = pm.idle_core(qemu)
    done = run(GDB + ["-iex", gdbload.warm_up_command(), "-ex", CHECK,
                      "-ex", gdbload.load_command(), "-ex", "qemu chardev list --json",
                      str(qemu.storage_daemon), "--core", str(core)])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Python Exception" not in done.stderr
    assert line(done.stdout, "WARM-THREAD") == "True"
    assert eval(line(done.stdout, "WARM-GDB-FREE")) == gdb_free_modules()   # noqa: S307
    assert eval(line(done.stdout, "WARM-GDB-SIDE")) == []                   # noqa: S307

    # The same command without the warm-up: the same answer.
    plain = run(GDB + ["-ex", gdbload.load_command(), "-ex", "qemu chardev list --json",
                       str(qemu.storage_daemon), "--core", str(core)])
    assert plain.returncode == 0, plain.stderr

    def listing(stdout):
        return json.loads(stdout[stdout.index("{"):])
    warmed, cold = listing(done.stdout), listing(plain.stdout)
    assert [c["label"] for c in warmed["chardevs"]] == \
        [c["label"] for c in cold["chardevs"]] != []
    assert warmed == cold


def test_gdb_that_ends_during_the_warm_up_ends_cleanly(qemu, tmp_path):
    """gdb quitting at once, or failing to open the core, while the thread imports: the exit
    status it has without the warm-up, no Python error, no hang (the thread is waited for)."""
    warm_up = ["-iex", gdbload.warm_up_command()]
    for rest in (["-ex", "quit"],
                 [str(qemu.storage_daemon), "--core", str(tmp_path / "no-such.core")]):
        warm = run(GDB + warm_up + rest, timeout=60)
        cold = run(GDB + rest, timeout=60)
        assert warm.returncode == cold.returncode, (warm.stderr, cold.stderr)
        for text in ("Traceback", "Fatal Python error", "Python Exception"):
            assert text not in warm.stderr
