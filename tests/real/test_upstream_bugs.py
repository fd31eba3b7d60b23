"""Real upstream QEMU chardev bugs as real crash cores (fixtures/qemu/upstream-bugs.md), checked
with plain gdb.

Each case makes the core with fixtures/qemu/make-upstream-bug-core on the build that has the bug
(Debian's source as shipped where it still has it, else a build with the upstream fix reverted)
and reads the core with plain gdb (no extension): the signal, the crashing thread's frames and the
object states that prove the bug. The expected values come from the source code and the kernel,
not from the recipe's own report. Builds that carry the fix get the same trigger and must survive.
"""

import os
import re
from pathlib import Path

import pytest

import support
from support.upstream_bugs import BUGS, NO_CRASH, make_core, run_recipe, survives

VERSIONS = support.versions_under_test()
CASES = [(name, version) for name in BUGS for version in VERSIONS
         if BUGS[name].variant(version)]
SURVIVOR_CASES = [(name, version) for name in BUGS for version in VERSIONS
                  if BUGS[name].variant(version) not in (None, "fixed")]


def gdb_core(summary: dict, commands: list) -> list:
    """Plain gdb on the summary's core: the output of each command (all must succeed)."""
    result = support.run_gdb(summary["binary"], core=summary["core"], commands=commands,
                             extension=False, timeout=90).check()
    return [text.strip() for text in result.outputs]


def functions(backtrace: str) -> list:
    """The function names of a gdb `bt`, innermost first."""
    return re.findall(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\S+) \(", backtrace, re.M)


def assert_in_order(names: list, expected) -> None:
    position = 0
    for name in expected:
        assert name in names[position:], f"{name} not on the stack after {expected}: {names}"
        position = names.index(name, position) + 1


def crash_basics(summary: dict, bug) -> list:
    """Signal, crashing thread and frames, read from the core; returns the frame names."""
    signo, lwp, bt = gdb_core(summary, ["output $_siginfo.si_signo",
                                        "python print(gdb.selected_thread().ptid[1])", "bt"])
    assert int(signo) == bug.signal
    names = functions(bt)
    assert_in_order(names, bug.frames)
    if bug.crash_thread == "main":
        assert int(lwp) == summary["pid"], "the main thread (LWP = pid) crashed"
    else:
        assert int(lwp) == summary["io_lwp"] != summary["pid"], "the monitor I/O thread crashed"
    return names


def ints(texts) -> list:
    return [int(t, 0) if re.fullmatch(r"-?(0x[0-9a-f]+|\d+)", t) else t for t in texts]


# --- each bug's ground truth -------------------------------------------------------------------

def check_websock_handshake_uaf(summary: dict) -> None:
    """The handshake task's callback runs on the finalized Chardev; its lock is destroyed."""
    out = ints(gdb_core(summary, [
        "frame function tcp_chr_websock_handshake",
        "output (unsigned long)user_data",
        "output ((Object *)user_data)->ref",
        "output ((Chardev *)user_data)->chr_write_lock.initialized",
        "output ((Chardev *)user_data)->chr_write_lock.lock.__data.__kind",
        "output (unsigned long)((struct QIOTask *)task)->opaque",
        "output ((struct QIOTask *)task)->func == tcp_chr_websock_handshake",
        "output ((struct QIOTask *)task)->source->ref",
        "output ((struct QIOTask *)task)->source->class->type->name",
        "output (unsigned long)&((Chardev *)user_data)->chr_write_lock",
        "frame function qemu_mutex_lock_impl",
        "output (unsigned long)mutex",
    ])[1:])
    chardev, ref, initialized, kind, opaque, func_ok, src_ref, src_type, lock, _, mutex = out
    assert ref == 0, "the Chardev was finalized (Object.ref 0)"
    assert initialized == "false" and kind == -1, "chr_write_lock was destroyed"
    assert opaque == chardev and func_ok == 1, "the task's opaque is that Chardev"
    assert src_ref == 1 and '"qio-channel-websock"' in src_type, \
        "the task alone keeps the websocket channel alive"
    assert mutex == lock, "the aborting lock is the finalized Chardev's chr_write_lock"


def check_qmp_listener_race(summary: dict) -> None:
    """The main thread accepts on mon0's listener after the I/O thread connected mon0."""
    out = gdb_core(summary, [
        "frame function tcp_chr_change_state",
        "output (int)state",
        "output (int)s->state",
        "frame function tcp_chr_accept",
        "output ((Chardev *)chr)->label",
        "output ((Chardev *)chr)->gcontext == mon_iothread->worker_context",
        "output ((SocketChardev *)chr)->listener->io_func == 0",
        "output cioc != ((SocketChardev *)chr)->sioc",
        "output (unsigned long)((SocketChardev *)chr)->sioc != 0",
        "thread apply all bt",
    ])
    assert out[1] == "1" and out[2] == "2", "CONNECTING requested while mon0 is CONNECTED"
    assert out[4].endswith('"mon0"')
    assert out[5:9] == ["1", "1", "1", "1"], \
        "mon0 belongs to the I/O thread, whose accept already detached the listener; the " \
        "main thread accepted another client from a listener source of the main context"
    assert "iothread_run" in out[9]


def check_iowatch_ioc_uaf(summary: dict) -> None:
    """An IOWatchPoll the chardev no longer knows creates a watch on a freed channel."""
    out = ints(gdb_core(summary, [
        "frame function io_watch_poll_prepare",
        "output (unsigned long)iwp",
        "output (unsigned long)iwp->ioc",
        "output iwp->ioc->parent.ref",
        "output (unsigned long)iwp->ioc->parent.class",
        "output (unsigned long)((Chardev *)iwp->opaque)->gsource",
        "output (unsigned long)((SocketChardev *)iwp->opaque)->ioc",
        "output (int)((SocketChardev *)iwp->opaque)->state",
        "output iwp->parent.ref_count",
        "output iwp->parent.flags & 1",
        "output iwp->fd_read == tcp_chr_read",
        "output ((Chardev *)iwp->opaque)->label",
        "output (unsigned long)iwp->opaque == (unsigned long)mon_list.tqh_first->chr.chr",
    ])[1:])
    iwp, ioc, ioc_ref, ioc_class, gsource, chr_ioc, state, ref_count, active, read_ok, label, \
        is_mon = out
    assert is_mon == 1 and label.endswith('"mon0"') and read_ok == 1
    assert ref_count >= 1 and active == 1, "the IOWatchPoll is attached (ACTIVE)"
    assert gsource != iwp, "but chr->gsource is another IOWatchPoll: this one is orphaned"
    assert state == 2 and chr_ioc not in (0, ioc), "mon0 is connected on another channel"
    assert ioc_ref == 0, "the orphan's channel was finalized (Object.ref 0)"
    # freed into a glibc tcache: Object.class is now the safe-linked next pointer
    assert (ioc_class ^ (ioc >> 12)) % 16 == 0, f"class {ioc_class:#x} is a tcache link"


def check_connect_task_ref(summary: dict) -> None:
    """chardev-remove finalizes the chardev although its connect task still points at it."""
    out = ints(gdb_core(summary, [
        "frame function tcp_chr_free_connection",
        "output (unsigned long)chr",
        "output ((Object *)chr)->ref",
        "output (int)((SocketChardev *)chr)->state",
        "output (unsigned long)((SocketChardev *)chr)->sioc",
        "output ((SocketChardev *)chr)->registered_yank",
        "output (unsigned long)((struct QIOTask *)((SocketChardev *)chr)->connect_task)->opaque",
        "output (unsigned long)((struct QIOTask *)((SocketChardev *)chr)->connect_task)->destroy",
        "frame function yank_unregister_function",
        "output (unsigned long)opaque",
        "frame function qmp_chardev_remove",
        "output id",
        "thread apply all bt",
    ])[1:])
    chardev, ref, state, sioc, yank, task_opaque, task_destroy = out[:7]
    assert ref == 0 and state == 1 and sioc == 0 and yank == "true", \
        "finalizing a CONNECTING chardev whose sioc is not set yet"
    assert task_opaque == chardev and task_destroy == 0, \
        "its connect task holds the Chardev without a reference"
    assert out[8] == 0, "yank_unregister_function was asked for a NULL channel"
    assert out[10].endswith('"cli0"')
    assert "tcp_chr_connect_client_task" in out[11], "the connect thread is still connecting"


def check_connect_error_double_free(summary: dict) -> None:
    """error_free() of an Error that check_report_connect_error() already freed."""
    out = ints(gdb_core(summary, [
        "frame function qemu_chr_socket_connected",
        "output (unsigned long)err",
        "output ((SocketChardev *)opaque)->connect_err_reported",
        "output (int)((SocketChardev *)opaque)->state",
        "output ((SocketChardev *)opaque)->reconnect_timer != 0",
        "frame function error_free",
        "output (unsigned long)err",
        "output (unsigned long)err->msg",
    ])[1:])
    err, reported, state, timer, _, freed_err, msg = out
    assert reported == "true" and state == 0 and timer == 1, \
        "the error was reported (and freed) and the reconnect timer restarted"
    assert freed_err == err
    # the Error is a freed glibc tcache chunk: its first word (Error.msg) holds the safe-linked
    # `next` link, (address of the field >> 12) ^ next, which decodes to 0 or a 16-byte aligned
    # chunk; free() of that word is what faulted
    decoded = msg ^ (err >> 12)
    assert decoded % 16 == 0, f"Error.msg {msg:#x} is not a safe-linked tcache link"


def check_reconnect_timer(summary: dict) -> None:
    """The second disconnect restarts the reconnect timer the first one set."""
    out = ints(gdb_core(summary, [
        "frame function qemu_chr_socket_restart_timer",
        "output (int)((SocketChardev *)chr)->state",
        "output ((SocketChardev *)chr)->reconnect_timer->ref_count",
        "output ((SocketChardev *)chr)->reconnect_timer->flags & 1",
        "output ((Chardev *)chr)->label",
        "bt",
    ])[1:])
    state, ref_count, active, label, bt = out
    assert state == 0 and ref_count == 2 and active == 1, \
        "DISCONNECTED with the previous reconnect timer still attached (ref 2, ACTIVE)"
    assert label.endswith('"cdev0"')
    assert_in_order(functions(bt), ["tcp_chr_disconnect_locked", "tcp_chr_disconnect",
                                    "char_socket_client_test"])


CHECKS = {
    "websock-handshake-uaf": check_websock_handshake_uaf,
    "qmp-listener-race": check_qmp_listener_race,
    "iowatch-ioc-uaf": check_iowatch_ioc_uaf,
    "connect-task-ref": check_connect_task_ref,
    "connect-error-double-free": check_connect_error_double_free,
    "reconnect-timer": check_reconnect_timer,
}


# --- the tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,version", CASES, ids=[f"{n}-qemu{v}" for n, v in CASES])
def test_real_core_shows_the_bug(name, version, workdir):
    bug = BUGS[name]
    qemu = support.require_build(version, bug.variant(version))
    core_by = "gcore" if support.kernel_cores_possible() else "kernel"
    summary = make_core(name, qemu, workdir / f"{name}.core", core_by=core_by)
    assert summary["verified"] and Path(summary["core"]).stat().st_size > 0
    crash_basics(summary, bug)
    CHECKS[name](summary)


def test_issue_crash_is_the_shipped_7_2_websocket_handshake(workdir):
    """The crash of issue 12 (7.2 as shipped, SIGABRT in qemu_mutex_lock_impl under
    qio_task_complete and char-socket.c after chardev-remove) is the websocket handshake bug."""
    if "7.2" not in VERSIONS:
        pytest.skip("QEMU 7.2 not under test")
    summary = make_core("websock-handshake-uaf", support.require_build("7.2", "fixed"), workdir / "ws.core")
    names = crash_basics(summary, BUGS["websock-handshake-uaf"])
    assert names.index("qemu_mutex_lock_impl") < names.index("qio_task_complete")
    assert summary["facts"]["chardev_ref"] == 0
    assert summary["facts"]["chr_write_lock_initialized"] is False


@pytest.mark.parametrize("name,version", SURVIVOR_CASES,
                         ids=[f"{n}-qemu{v}" for n, v in SURVIVOR_CASES])
def test_debian_build_with_the_fix_survives_the_trigger(name, version):
    summary = survives(name, support.require_build(version, "fixed"))
    assert summary["outcome"] == "survived"


@pytest.mark.parametrize("version", VERSIONS)
def test_connect_task_of_removed_reconnecting_client_is_safe_as_shipped(version):
    """chardev-remove while a connect QIOTask is pending does not crash a Debian build: the task
    holds a reference on its Chardev (5.1), so its callback runs on a live object."""
    summary = survives("connect-task-ref", support.require_build(version, "fixed"))
    assert summary["outcome"] == "survived"


@pytest.mark.parametrize("version", [v for v in VERSIONS if v in ("10.0", "10.2")])
def test_shipped_10_x_does_not_crash_where_7_2_does(version, workdir):
    """Without --expect-no-crash the recipes say "no crash" (exit 3) on Debian's 10.x."""
    for name in ("websock-handshake-uaf", "qmp-listener-race"):
        done = run_recipe(name, support.require_build(version, "fixed").build_dir,
                          workdir / f"{name}.core",
                          timeout=30)
        assert done.returncode == NO_CRASH, done.stderr
        assert "no crash" in done.stderr
        assert not (workdir / f"{name}.core").exists()


def test_gcore_of_a_crash_reads_the_same(workdir):
    """--core-by gcore: gdb writes the core at the fatal signal; the same facts are in it."""
    version = VERSIONS[0]
    name = "websock-handshake-uaf"
    variant = BUGS[name].variant(version)
    if variant is None:
        pytest.skip(f"{name} not reproducible on {version}")
    summary = make_core(name, support.require_build(version, variant), workdir / "g.core",
                        core_by="gcore")
    assert summary["outcome"] == "crashed-gcore"
    crash_basics(summary, BUGS[name])
    check_websock_handshake_uaf(summary)


def test_recipe_cleans_up_after_itself(workdir):
    """No daemon or gdb of ours is left behind, whatever the outcome."""
    before = set(os.listdir("/proc"))
    version = VERSIONS[0]
    run_recipe("websock-handshake-uaf", support.require_build(version, "fixed").build_dir,
               workdir / "x.core", timeout=30)
    survivors = []
    for pid in set(os.listdir("/proc")) - before:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(workdir).encode() in cmdline or b"qcg-bug-" in cmdline:
            survivors.append(cmdline.decode(errors="replace"))
    assert not survivors
