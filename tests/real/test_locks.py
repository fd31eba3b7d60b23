"""`qemu mutex`: owners, waiters and deadlocks in QEMU's real mutex code.

fixtures/c/deadlock.c links a QEMU build's libqemuutil.a (qemu_mutex_lock_impl with
--enable-debug-mutex) and blocks its threads in three shapes that a healthy QEMU never shows.
LWPs come from the kernel (/proc/PID/task), lock words from raw gdb prints.
"""
import os
import pathlib
import subprocess
import time

import pytest

import support

FIXTURE_DIR = support.REPO_ROOT / "fixtures" / "c"
MODES = ["live", "core"]


@pytest.fixture(scope="module")
def deadlock_binary(qemu, tmp_path_factory):
    out = tmp_path_factory.mktemp("deadlock") / "deadlock"
    subprocess.run([str(FIXTURE_DIR / "build-deadlock"), str(qemu.build_dir), str(out)],
                   check=True, timeout=120)
    return out


@pytest.fixture
def blocked(deadlock_binary, workdir, request):
    """Start the fixture in a mode; yield (binary, where-kwargs per mode, main LWP, other LWPs)."""
    def start(shape):
        proc = subprocess.Popen([str(deadlock_binary), shape], stdout=subprocess.PIPE,
                                start_new_session=True)
        request.addfinalizer(lambda: (proc.kill(), proc.wait()))
        line = proc.stdout.readline().decode()
        assert line.startswith("ready"), line
        futex_waits = _settled_futex_waits(proc.pid)
        core = support.gcore(proc.pid, workdir / f"{shape}.core", binary=deadlock_binary)
        where = {"live": {"pid": proc.pid}, "core": {"core": core}}
        return where, proc.pid, futex_waits
    return start


FUTEX_SYSCALL_X86_64 = 202


def _futex_waits(pid):
    """{tid: futex address} of the threads the kernel has asleep in futex(2)."""
    waits = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = pathlib.Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
        if fields and fields[0] == str(FUTEX_SYSCALL_X86_64):
            waits[int(tid)] = int(fields[1], 16)
    return waits


def _settled_futex_waits(pid, polls=3, interval=0.1, timeout=10.0):
    """_futex_waits once it has stayed the same for a few polls (the threads are blocked)."""
    deadline = time.monotonic() + timeout
    history = []
    while time.monotonic() < deadline:
        history.append(_futex_waits(pid))
        if len(history) >= polls and all(h == history[-1] for h in history[-polls:]):
            return history[-1]
        time.sleep(interval)
    raise AssertionError(f"threads of {pid} never settled: {history[-polls:]}")


def _waiting_on(futex_waits, mutex_json):
    """LWPs the kernel says sleep on this mutex's lock word (QemuMutex starts with it)."""
    return sorted(t for t, addr in futex_waits.items() if addr == int(mutex_json["address"], 16))


def _mutex(binary, where, *specs):
    result = support.run_gdb(binary, commands=[f"qemu mutex --json {s}" for s in specs], **where)
    return [result.json(i) for i in range(len(specs))]


@pytest.mark.parametrize("mode", MODES)
def test_abba_deadlock(deadlock_binary, blocked, mode):
    where, main, futex_waits = blocked("abba")
    a, b = _mutex(deadlock_binary, where[mode], "&mutex_a", "&mutex_b")
    assert _waiting_on(futex_waits, b["mutex"]) == [main]
    (other,) = _waiting_on(futex_waits, a["mutex"])
    raw_a, raw_b = support.raw_gdb_values(deadlock_binary, exprs=[
        "mutex_a.lock.__data.__owner", "mutex_b.lock.__data.__owner"], **where[mode])
    assert a["mutex"]["owner_lwp"] == main == int(raw_a)
    assert b["mutex"]["owner_lwp"] == other == int(raw_b)
    assert [w["lwp"] for w in a["mutex"]["waiters"]] == [other]
    assert [w["lwp"] for w in b["mutex"]["waiters"]] == [main]
    assert a["mutex"]["owner_function"] == "main"
    assert b["mutex"]["owner_function"] == "take_b_then_a"
    assert a["mutex"]["locker"].endswith("deadlock.c:" + a["mutex"]["locker"].split(":")[-1])
    cycle = [(step["lwp"], step["mutex"]) for step in a["deadlocks"][0]]
    assert sorted(cycle) == sorted([(main, b["mutex"]["address"]), (other, a["mutex"]["address"])])
    assert a["deadlocks"] == b["deadlocks"] and len(a["deadlocks"]) == 1


@pytest.mark.parametrize("mode", MODES)
def test_self_deadlock(deadlock_binary, blocked, mode):
    where, main, futex_waits = blocked("self")
    a, b = _mutex(deadlock_binary, where[mode], "&mutex_a", "&mutex_b")
    assert _waiting_on(futex_waits, a["mutex"]) == [main]
    assert a["mutex"]["owner_lwp"] == main
    assert [w["lwp"] for w in a["mutex"]["waiters"]] == [main]
    assert a["deadlocks"] == [[{"lwp": main, "mutex": a["mutex"]["address"]}]]
    assert b["mutex"]["locked"] is False and b["deadlocks"] == []
    text = support.run_gdb(deadlock_binary, commands=["qemu mutex &mutex_a"],
                           **where[mode]).check().outputs[0]
    assert f"DEADLOCK: LWP {main} waits for {a['mutex']['address']}, which it already holds" \
        in text


@pytest.mark.parametrize("mode", MODES)
def test_waiter_without_deadlock(deadlock_binary, blocked, mode):
    where, main, futex_waits = blocked("waiter")
    (a,) = _mutex(deadlock_binary, where[mode], "&mutex_a")
    assert a["mutex"]["owner_lwp"] == main and a["mutex"]["owner_function"] == "main"
    waiters = _waiting_on(futex_waits, a["mutex"])
    assert len(waiters) == 1 and waiters[0] != main
    assert [w["lwp"] for w in a["mutex"]["waiters"]] == waiters
    assert a["mutex"]["waiters"][0]["function"] == "wait_for_a"
    assert a["deadlocks"] == []


@pytest.mark.parametrize("mode", MODES)
def test_recursive_mutex_held_twice(deadlock_binary, blocked, mode):
    where, main, futex_waits = blocked("rec")
    (rec,) = _mutex(deadlock_binary, where[mode], "&rec_mutex")
    lock = rec["mutex"]
    raw_count, raw_owner = support.raw_gdb_values(deadlock_binary, exprs=[
        "rec_mutex.m.lock.__data.__count", "rec_mutex.m.lock.__data.__owner"], **where[mode])
    assert lock["kind"] == "QemuRecMutex" and lock["type"] == "recursive"
    assert lock["count"] == int(raw_count) == 2
    assert lock["owner_lwp"] == int(raw_owner) == main
    waiters = _waiting_on(futex_waits, lock)
    assert len(waiters) == 1 and [w["lwp"] for w in lock["waiters"]] == waiters
    assert lock["waiters"][0]["function"] == "wait_for_rec"
    assert rec["deadlocks"] == []
