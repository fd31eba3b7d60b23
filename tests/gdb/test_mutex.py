"""readers.mutex on fixtures/c/threads.c: a QemuMutex (debug-mutex fields) held by one thread and
waited for by another, plain, recursive, error-checking, free and destroyed pthread mutexes, an
ABBA deadlock; -O0 and -O2, live and from a core.

Ground truth: gettid() of each thread and the file:line the holder locked at, as threads.c
printed them; the lock words as plain gdb prints them; gdb's `info threads` numbering.
"""
import pytest

from support import cprogs
from support.cprogs import py

PTHREAD_FIELDS = ("__lock", "__count", "__owner", "__kind")
# name in threads.c's printout -> kind the extension is asked to read it as
MUTEXES = {"held_lock": "QemuMutex", "abba_a": "QemuMutex", "abba_b": "QemuMutex",
           "plain_lock": "pthread_mutex_t", "rec_lock": "pthread_mutex_t",
           "errcheck_lock": "pthread_mutex_t", "free_lock": "pthread_mutex_t",
           "destroyed_lock": "pthread_mutex_t"}

_runs = {}


def _run(threads, mode):
    key = (threads.binary, mode)
    if key in _runs:
        return _runs[key]
    addresses = {name: threads.address_of(name) for name in MUTEXES}
    commands = [py(f"""
        from qemu_chardev.analysis.locks import find_lock_cycles
        from qemu_chardev.readers import mutex
        from qemu_chardev.target.snapshot import Snapshot
        snap = Snapshot()
        out = {{}}
        for name, kind in {MUTEXES!r}.items():
            address = {addresses!r}[name]
            out[name] = mutex.read_mutex(snap, address, kind, with_waiters=True).to_json()
        # the QemuMutex's pthread_mutex_t read as one: the same lock, owner and waiters
        out["held_lock as pthread_mutex_t"] = mutex.read_mutex(
            snap, {addresses['held_lock']}, "pthread_mutex_t", with_waiters=True).to_json()
        waiting_on, owner_of = mutex.lock_graph(Snapshot())
        out["cycles"] = find_lock_cycles(waiting_on, owner_of)
        emit(out)
    """), "info threads", "qemu mutex --json chr0.chr_write_lock", "qemu mutex --json abba_a"]
    for name in MUTEXES:
        base = f"((pthread_mutex_t *){addresses[name]})->__data"
        commands += [f"output {base}.{field}" for field in PTHREAD_FIELDS]
    result = threads.gdb(mode, commands)
    got = result.json(0)
    result.check(1, *range(4, len(commands)))
    nums = cprogs.parse_info_threads(result.outputs[1])
    raw, index = {}, 4
    for name in MUTEXES:
        raw[name] = dict(zip(PTHREAD_FIELDS, (int(v) for v in result.outputs[index:index + 4])))
        index += 4
    _runs[key] = (got, nums, raw, result.json(2), result.json(3))
    return _runs[key]


def _tids(threads):
    return {name: int(tid) for name, tid in threads.values("tid").items()}


def _hex(address):
    return f"0x{address:x}"


def test_held_qemu_mutex_owner_locker_waiter(threads, mode):
    got, nums, raw, _cmd, _abba = _run(threads, mode)
    tids = _tids(threads)
    lock = got["held_lock"]
    assert lock["address"] == _hex(threads.address_of("held_lock"))
    assert lock["locked"] is True and lock["initialized"] is True
    assert lock["owner_lwp"] == tids["holder"] == raw["held_lock"]["__owner"]
    assert lock["owner_thread"] == nums[tids["holder"]]
    assert lock["owner_function"] == "holder_park"      # where the holder is: parked
    assert lock["locker"] == threads.values("locker")["held_lock"]   # where it locked
    assert lock["lock_word"] == raw["held_lock"]["__lock"] == 2     # contended
    assert [(w["lwp"], w["thread"], w["function"]) for w in lock["waiters"]] == \
        [(tids["waiter"], nums[tids["waiter"]], "waiter_wait")]
    as_pthread = got["held_lock as pthread_mutex_t"]
    for key in ("locked", "owner_lwp", "owner_thread", "owner_function", "waiters"):
        assert as_pthread[key] == lock[key], key
    assert as_pthread["locker"] is None               # a bare pthread_mutex_t records none


@pytest.mark.parametrize("name, owner, kind, count", [
    ("plain_lock", "holder", "normal", 0),
    ("rec_lock", "holder", "recursive", 2),
    ("errcheck_lock", "main", "errorcheck", 0),
])
def test_held_pthread_mutexes(threads, mode, name, owner, kind, count):
    got, nums, raw, _cmd, _abba = _run(threads, mode)
    tids = _tids(threads)
    lock = got[name]
    assert lock["locked"] is True
    assert lock["owner_lwp"] == tids[owner] == raw[name]["__owner"]
    assert lock["owner_thread"] == nums[tids[owner]]
    assert lock["type"] == kind
    assert lock["count"] == count == raw[name]["__count"]
    assert lock["waiters"] == [] and lock["destroyed"] is False


def test_free_and_destroyed_pthread_mutexes(threads, mode):
    got, _nums, raw, _cmd, _abba = _run(threads, mode)
    free, destroyed = got["free_lock"], got["destroyed_lock"]
    assert raw["free_lock"]["__lock"] == 0 and raw["free_lock"]["__owner"] == 0
    assert free["locked"] is False and free["owner_lwp"] is None and free["waiters"] == []
    assert raw["destroyed_lock"]["__kind"] == -1        # glibc marks a destroyed mutex so
    assert destroyed["destroyed"] is True and destroyed["locked"] is False


def test_abba_deadlock_cycle(threads, mode):
    got, nums, raw, _cmd, abba_cmd = _run(threads, mode)
    tids = _tids(threads)
    one, two = tids["abba-1"], tids["abba-2"]
    a, b = threads.address_of("abba_a"), threads.address_of("abba_b")
    assert got["abba_a"]["owner_lwp"] == one == raw["abba_a"]["__owner"]
    assert got["abba_b"]["owner_lwp"] == two == raw["abba_b"]["__owner"]
    assert [w["lwp"] for w in got["abba_a"]["waiters"]] == [two]
    assert [w["lwp"] for w in got["abba_b"]["waiters"]] == [one]
    # one cycle: abba-1 waits for abba_b (held by abba-2), which waits for abba_a; it starts
    # at the smaller LWP. The holder/waiter pair is not a cycle.
    expected = [[one, b], [two, a]] if one < two else [[two, a], [one, b]]
    assert got["cycles"] == [expected]
    # `qemu mutex --json abba_a` reports the same deadlock
    assert abba_cmd["mutex"]["owner_lwp"] == one
    cycle_lwps = sorted({lwp for d in abba_cmd["deadlocks"] for lwp in _lwps_in(d)})
    assert cycle_lwps == sorted([one, two])


def _lwps_in(obj):
    """Every value of an 'lwp' key anywhere in OBJ (the command's deadlock JSON)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "lwp" and isinstance(value, int):
                yield value
            else:
                yield from _lwps_in(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _lwps_in(item)


def test_qemu_mutex_command_json(threads, mode):
    """`qemu mutex --json EXPR` says what the reader says (a thin command over it)."""
    got, _nums, _raw, cmd, _abba = _run(threads, mode)
    mutex = cmd["mutex"]
    for key in ("address", "locked", "owner_lwp", "owner_thread", "owner_function", "locker",
                "waiters"):
        assert mutex[key] == got["held_lock"][key], key
    assert cmd["deadlocks"] == []
