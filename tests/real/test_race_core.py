"""fixtures/qemu/make-race-core: real cores of the 2019 char-socket race, checked with plain gdb.

The expected values come from outside the recipe's own report where possible: the kernel (the
daemon's wait status, the core's crashing thread), and plain gdb (no extension) reading the core.
"""

import re
import signal
import stat
from pathlib import Path

import pytest

import support
from support import procs
from support.race_core import make_race_core, run_recipe

NO_RACE = "no race possible: disconnect takes chr_write_lock"
MON0 = "mon_list.tqh_first->chr.chr"          # the monitor's chardev, found without the frame
MON0_SOCKET = f"((SocketChardev *){MON0})"


def thread_stacks(text: str) -> dict:
    """{lwp: backtrace text} from the output of `thread apply all bt`."""
    stacks = {}
    for block in re.split(r"\n(?=Thread \d+ \()", "\n" + text):
        match = re.match(r"Thread \d+ \(.*?\(LWP (\d+)\)\)", block)
        if match:
            stacks[int(match.group(1))] = block
    return stacks


def read_core(binary, core) -> dict:
    """Facts from plain gdb on CORE: signal, crashing LWP, stacks, and the mon0 chardev."""
    commands = ["output $_siginfo.si_signo",
                "python print(gdb.selected_thread().ptid[1])",
                "bt",
                "thread apply all bt",
                f"output {MON0}->label",
                f"output (unsigned long){MON0}",
                f"output (unsigned long){MON0_SOCKET}->ioc",
                f"output (int){MON0_SOCKET}->state",
                f"output {MON0}->chr_write_lock.lock.__data.__owner",
                f"output {MON0}->chr_write_lock.lock.__data.__lock",
                f"output (unsigned long)&{MON0}->chr_write_lock"]
    result = support.run_gdb(binary, core=core, commands=commands, extension=False,
                             timeout=60).check()
    out = result.outputs
    return {"banner": result.stdout, "signo": int(out[0]), "lwp": int(out[1]),
            "bt": out[2], "stacks": thread_stacks(out[3]), "label": out[4],
            "chr": int(out[5]), "ioc": int(out[6]), "state": int(out[7]),
            "owner": int(out[8]), "lock_word": int(out[9]), "lock_address": int(out[10])}


def frame_arg(stack: str, function: str, arg: str) -> int:
    """The value of pointer argument ARG of FUNCTION's frame in backtrace text STACK."""
    match = re.search(rf"\b{function} \([^)]*?\b{arg}=(0x[0-9a-f]+)", stack)
    assert match, f"no {function}({arg}=...) in:\n{stack}"
    return int(match.group(1), 16)


# --- reverted builds: the crash ----------------------------------------------------------------

@pytest.mark.parametrize("core_by", ["kernel", "gcore"])
def test_reverted_build_crashes_with_null_ioc_under_tcp_chr_write(qemu_reverted, workdir,
                                                                    core_by):
    if core_by == "kernel" and support.kernel_cores_possible():
        pytest.skip(support.kernel_cores_possible())
    race = make_race_core(qemu_reverted, workdir / "race.core", core_by=core_by)
    pid, io_lwp = race.summary["pid"], race.summary["io_lwp"]
    assert race.summary["core_by"] == core_by and race.path.stat().st_size > 0
    if core_by == "kernel":
        # the kernel's word: the daemon died of SIGSEGV and dumped core
        assert race.summary["wait_status"] == "signal SIGSEGV (core dumped)"

    core = read_core(race.binary, race.path)
    assert core["signo"] == signal.SIGSEGV
    assert "Program terminated with signal SIGSEGV" in core["banner"]
    assert core["lwp"] == pid                      # the main thread (its LWP is the pid)
    bt = core["bt"]
    assert re.search(r"#0 .* in object_get_class \(obj=0x0\)", bt), bt
    assert "qio_channel_writev_full (ioc=0x0" in bt and "io_channel_send_full (ioc=0x0" in bt
    assert frame_arg(bt, "tcp_chr_write", "chr") == core["chr"]
    assert core["label"].endswith('"mon0"')
    assert core["ioc"] == 0
    assert core["state"] == 0                      # TCP_CHARDEV_STATE_DISCONNECTED
    assert core["owner"] == core["lwp"]            # the crashing writer holds chr_write_lock
    assert core["lock_word"] == 1                  # locked, nobody waiting

    # the other side of the race: the monitor I/O thread, stopped right after it freed the
    # connection without taking the lock
    io_stack = core["stacks"][io_lwp]
    assert re.search(r"#0 .*tcp_chr_disconnect_locked \(chr=", io_stack), io_stack
    assert "tcp_chr_disconnect (chr=" in io_stack and "iothread_run" in io_stack
    assert "qemu_mutex_lock" not in io_stack
    assert {pid, io_lwp} <= set(core["stacks"])


def test_expect_no_crash_fails_on_a_reverted_build(qemu_reverted, workdir):
    done = run_recipe(qemu_reverted.build_dir, workdir / "none.core", ["--expect-no-crash"])
    assert done.returncode == 1
    assert done.stderr.strip() == ("make-race-core: the disconnect cleared s->ioc without taking "
                                   "chr_write_lock: this build has the race")
    assert not (workdir / "none.core").exists()


# --- fixed builds: no race ---------------------------------------------------------------------

def test_fixed_build_cannot_race(qemu, workdir):
    done = run_recipe(qemu.build_dir, workdir / "none.core")
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip() == f"make-race-core: {NO_RACE}"
    assert not (workdir / "none.core").exists()


def test_fixed_build_lock_wait_core(qemu, workdir):
    race = make_race_core(qemu, workdir / "wait.core", expect_no_crash=True)
    pid, io_lwp = race.summary["pid"], race.summary["io_lwp"]
    assert race.summary["outcome"] == "lock-wait-gcore"
    core = read_core(race.binary, race.path)
    assert core["signo"] == signal.SIGTRAP         # a gcore at a debugger stop, not a crash
    assert core["label"].endswith('"mon0"')
    assert core["ioc"] != 0 and core["state"] == 2  # still connected: nothing was freed
    assert core["owner"] == pid                    # the writer holds the lock ...
    assert core["lock_word"] == 2                  # ... and someone waits for it
    writer = core["stacks"][pid]
    assert re.search(r"#0 .*tcp_chr_write \(chr=", writer), writer
    assert frame_arg(writer, "tcp_chr_write", "chr") == core["chr"]
    waiter = core["stacks"][io_lwp]
    assert re.search(r"#0 .*futex_wait", waiter), waiter
    assert frame_arg(waiter, "qemu_mutex_lock_impl", "mutex") == core["lock_address"]
    assert frame_arg(waiter, "tcp_chr_disconnect", "chr") == core["chr"]
    assert "iothread_run" in waiter


# --- clean-up ------------------------------------------------------------------------------------

def test_timeout_kills_daemon_and_gdb(qemu_reverted, workdir):
    """A gdb that never finishes: the recipe gives up after --timeout and kills everything."""
    fake_gdb = workdir / "fake-gdb"
    pids = workdir / "pids"
    fake_gdb.write_text(f'#!/bin/sh\necho "$QCG_RACE_PID $$ $PWD" > {pids}\nexec sleep 300\n')
    fake_gdb.chmod(fake_gdb.stat().st_mode | stat.S_IXUSR)
    done = run_recipe(qemu_reverted.build_dir, workdir / "none.core",
                      ["--gdb", str(fake_gdb)], timeout=3)
    assert done.returncode == 1
    assert done.stderr.startswith("make-race-core: timed out after 3 s;"), done.stderr
    daemon_pid, gdb_pid, recipe_dir = pids.read_text().split()
    for pid in (int(daemon_pid), int(gdb_pid)):
        assert not procs.process_exists(pid), f"pid {pid} survived"
    assert not (workdir / "none.core").exists()
    assert not Path(recipe_dir).exists()           # its private directory is gone too
