"""`qemu diagnose` on real qemu-storage-daemon cores and processes.

Expected values come from outside the extension: the kernel (the daemon's pid, futex waits),
fixtures/qemu/make-race-core's own account of the threads it scheduled, plain gdb prints on the
same core, and the source files on disk.
"""
import os
import pathlib
import subprocess
import time

import pytest

import support
from support import postmortem as pm

MON0 = "mon_list.tqh_first->chr.chr"
MON0_SOCKET = f"((SocketChardev *){MON0})"
FIXTURE_DIR = support.REPO_ROOT / "fixtures" / "c"


def by_label(report, label):
    return next(c for c in report["chardevs"] if c["label"] == label)


def errors(report):
    return [f for f in report["findings"] if f["severity"] == "error"]


@pytest.fixture(scope="module")
def race(qemu_reverted):
    core = pm.race_core(qemu_reverted)
    report, text, _result = pm.diagnose(core.binary, core=core.path)
    truth = pm.raw(core.binary, core.path, "output $_siginfo.si_signo",
                   "python print(gdb.selected_thread().ptid[1])",
                   f"output {MON0}->label",
                   f"output (unsigned long){MON0_SOCKET}->ioc",
                   f"output {MON0}->chr_write_lock.lock.__data.__owner",
                   f"output (unsigned long){MON0}")
    return core, report, text, truth


def test_race_core_names_ioc_null_during_write_on_the_monitor(race):
    core, report, _text, truth = race
    pm.validate_report(report)
    signo, crash_lwp, label, ioc, owner, mon0 = truth
    assert int(signo) == 11 and int(crash_lwp) == core.summary["main_lwp"]
    crash = report["crash"]
    assert crash["signal"] == 11 and crash["signal_name"] == "SIGSEGV"
    assert crash["lwp"] == int(crash_lwp) and crash["fault_address"] == "0x0"
    [finding] = errors(report)
    assert finding["id"] == "ioc-null-during-write"
    assert label.endswith(' "mon0"') and finding["chardev"] == "mon0"
    assert finding["lwp"] == crash["lwp"] and finding["thread"] == crash["thread"]
    # the writer that crashed is the lock owner, as the raw mutex says
    assert finding["evidence"]["lock_owner_lwp"] == int(owner) == crash["lwp"]
    mon = by_label(report, "mon0")
    assert int(mon["address"], 16) == int(mon0)
    assert mon["ioc"] is None and int(ioc) == 0 and mon["state"] == "disconnected"
    assert mon["write_lock"]["owner_lwp"] == int(owner)
    assert mon["write_lock"]["owner_thread"] == crash["thread"]
    assert report["summary"]["error"] == 1 and report["complete"] is True


def test_race_core_reads_the_binary_without_the_fix(race):
    _core, report, _text, _truth = race
    locking = report["target"]["disconnect_locking"]
    assert locking["takes_lock"] is False
    assert "tcp_chr_disconnect_locked" in locking["evidence"]
    [finding] = errors(report)
    assert "does NOT take chr_write_lock" in finding["detail"]
    assert "78d01598ae" in finding["fix"]


def test_race_core_shows_the_io_thread_in_the_disconnect_path(race):
    core, report, _text, _truth = race
    io = next(t for t in report["threads"] if t["lwp"] == core.summary["io_lwp"])
    functions = [f["function"] for f in io["frames"]]
    assert "tcp_chr_disconnect" in functions
    [finding] = errors(report)
    assert f"(LWP {core.summary['io_lwp']}) is in the disconnect path now" in finding["detail"]
    assert "without holding chr_write_lock" in finding["detail"]


def test_race_core_crash_frames_are_annotated_with_source(race, qemu_reverted):
    _core, report, text, _truth = race
    frames = report["crash"]["frames"]
    write = next(f for f in frames if f["function"] == "tcp_chr_write")
    assert {"chardev", "write-path"} <= set(write["roles"])
    channel = next(f for f in frames if f["function"] == "qio_channel_writev_full")
    assert "channel" in channel["roles"] and channel["pointers"]["ioc"] is None
    source = qemu_reverted.build_dir.parent / write["file"]
    line = source.read_text().splitlines()[write["line"] - 1]
    assert write["source"] == line.rstrip()
    assert "io_channel_send_full(s->ioc" in write["source"]
    # the text report: crash, chardevs, threads, findings, with those lines
    for heading in ("Crash", "Chardevs", "Threads", "Findings"):
        assert f"\n{heading}\n" in text
    assert "ERROR ioc-null-during-write" in text and line.strip() in text
    assert "\x1b[" not in text      # no colour without a terminal


def test_fixed_build_lock_wait_is_held_not_deadlocked(qemu):
    core = pm.lock_wait_core(qemu)
    report, _text, _result = pm.diagnose(core.binary, core=core.path)
    pm.validate_report(report)
    lock_word, owner = pm.raw(core.binary, core.path,
                              f"output {MON0}->chr_write_lock.lock.__data.__lock",
                              f"output {MON0}->chr_write_lock.lock.__data.__owner")
    main, io = core.summary["main_lwp"], core.summary["io_lwp"]
    assert int(lock_word) == 2 and int(owner) == main
    assert report["crash"] is None
    assert report["target"]["stop_signal"]["signal_name"] == "SIGTRAP"
    assert report["target"]["disconnect_locking"]["takes_lock"] is True
    assert errors(report) == [] and report["summary"]["warning"] == 0
    [held] = [f for f in report["findings"] if f["id"] == "write-lock-held"]
    assert held["severity"] == "info" and held["chardev"] == "mon0" and held["lwp"] == main
    assert held["evidence"]["waiters"] == [io]
    io_thread = next(t for t in report["threads"] if t["lwp"] == io)
    assert io_thread["waiting_for"] == "chr_write_lock of 'mon0'"
    assert io_thread["waiting_in"] == "tcp_chr_disconnect"


def test_ordinary_core_of_fixed_build_has_no_errors(qemu):
    core = pm.idle_core(qemu)
    report, text, _result = pm.diagnose(qemu.storage_daemon, core=core)
    pm.validate_report(report)
    ioc, = pm.raw(qemu.storage_daemon, core, f"output (unsigned long){MON0_SOCKET}->ioc")
    assert errors(report) == [] and report["crash"] is None
    assert report["target"]["stop_signal"]["signal_name"] == "SIGSTOP"
    assert {c["label"] for c in report["chardevs"]} == {"mon0", "cli0", "tcp0", "ring0", "null0"}
    mon = by_label(report, "mon0")
    assert mon["state"] == "connected" and int(mon["ioc"], 16) == int(ioc)
    version = ".".join(map(str, qemu.version_tuple))
    assert report["target"]["qemu_version"] == version
    assert "no crash" in text


def test_live_process_stopped_in_write_is_not_a_crash(qemu, workdir):
    with support.monitor_scenario(qemu.storage_daemon, workdir) as sc:
        result = support.run_gdb_stopped_in_write(
            sc.daemon, sc.client, [f"qemu diagnose --json {pm.NO_CENSUS}"])
        pid = sc.daemon.pid
    report = result.json(0)
    pm.validate_report(report)
    assert report["target"]["kind"] == "live" and report["target"]["core"] is None
    assert report["target"]["pid"] == pid
    assert report["crash"] is None and report["target"]["stop_signal"]["signal"] == 5
    assert errors(report) == []
    [held] = [f for f in report["findings"] if f["id"] == "write-lock-held"]
    assert held["lwp"] == pid and held["severity"] == "info"
    assert "tcp_chr_write" in held["summary"]


def test_core_of_another_build_is_refused_in_one_line(qemu, qemu_reverted):
    core = pm.race_core(qemu_reverted)
    result = support.run_gdb(qemu.storage_daemon, core=core.path,
                             commands=[f"qemu diagnose --json {pm.NO_CENSUS}"])
    error = result.errors[0].strip()
    assert "core of a different build of qemu-storage-daemon" in error
    assert len(error.splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.outputs[0].strip() == ""


@pytest.fixture(scope="module")
def deadlock_program(qemu, tmp_path_factory):
    """fixtures/c/deadlock.c linked with this QEMU build's real mutex code."""
    out = tmp_path_factory.mktemp("deadlock") / "deadlock"
    subprocess.run([str(FIXTURE_DIR / "build-deadlock"), str(qemu.build_dir), str(out)],
                   check=True, timeout=120, capture_output=True)
    return out


def _futex_waiters(pid):
    """LWPs the kernel has asleep in futex(2) (syscall 202 on x86_64)."""
    found = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = pathlib.Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
        if fields and fields[0] == "202":
            found.add(int(tid))
    return found


@pytest.mark.parametrize("shape,blocked", [("self", 1), ("abba", 2)])
def test_deadlock_in_qemu_mutex_code(deadlock_program, workdir, request, shape, blocked):
    proc = subprocess.Popen([str(deadlock_program), shape], stdout=subprocess.PIPE,
                            start_new_session=True)
    request.addfinalizer(lambda: (proc.kill(), proc.wait()))
    assert proc.stdout.readline().decode().startswith("ready")
    time.sleep(0.3)
    core = support.gcore(proc.pid, workdir / f"{shape}.core", binary=deadlock_program)
    sleepers = _futex_waiters(proc.pid)
    report, _text, _result = pm.diagnose(deadlock_program, core=core)
    pm.validate_report(report)
    assert report["target"]["qemu_debug_info"] is False and report["complete"] is False
    [dead] = [f for f in report["findings"] if f["id"] == "deadlock"]
    assert dead["severity"] == "error"
    cycle = [step["lwp"] for step in dead["evidence"]["cycle"]]
    assert len(cycle) == blocked and set(cycle) <= sleepers
    if shape == "self":
        assert cycle == [proc.pid] and dead["evidence"]["self_deadlock"] is True
        assert "mutex_a" in dead["summary"]
    else:
        assert "mutex_a" in dead["detail"] and "mutex_b" in dead["detail"]
