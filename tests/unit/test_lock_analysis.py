"""Pure lock analysis: glibc mutex words and deadlock cycles."""

from qemu_chardev.analysis import locks


def test_free_normal_mutex():
    d = locks.decode_pthread_mutex(lock=0, count=0, owner=0, kind=0)
    assert d["locked"] is False and d["owner_lwp"] is None and d["type"] == "normal"


def test_held_mutex_reports_owner_and_contention():
    held = locks.decode_pthread_mutex(lock=1, count=0, owner=4242, kind=0)
    assert held["locked"] and held["owner_lwp"] == 4242 and not held["waiters_flagged"]
    contended = locks.decode_pthread_mutex(lock=2, count=0, owner=4242, kind=0)
    assert contended["waiters_flagged"]


def test_recursive_mutex_depth():
    d = locks.decode_pthread_mutex(lock=1, count=3, owner=7, kind=1)
    assert d["type"] == "recursive" and d["recursion"] == 3


def test_destroyed_mutex():
    for kind in (-1, 0xFFFFFFFF):
        d = locks.decode_pthread_mutex(lock=0, count=0, owner=0, kind=kind)
        assert d["destroyed"] and not d["locked"]


def test_robust_mutex_owner_comes_from_lock_word():
    d = locks.decode_pthread_mutex(lock=0x80000000 | 1234, count=0, owner=0, kind=16)
    assert d["locked"] and d["owner_lwp"] == 1234 and d["waiters_flagged"]


def test_no_cycle_when_owner_runs():
    assert locks.find_lock_cycles({10: 0xA}, {0xA: 11}) == []


def test_self_deadlock_is_a_cycle_of_one():
    assert locks.find_lock_cycles({10: 0xA}, {0xA: 10}) == [[(10, 0xA)]]


def test_two_thread_cycle_reported_once_from_smallest_lwp():
    cycles = locks.find_lock_cycles({11: 0xB, 10: 0xA}, {0xA: 11, 0xB: 10})
    assert cycles == [[(10, 0xA), (11, 0xB)]]


def test_chain_into_cycle_reports_only_the_cycle():
    waiting = {1: 0xA, 2: 0xB, 3: 0xC}
    owners = {0xA: 2, 0xB: 3, 0xC: 2}
    assert locks.find_lock_cycles(waiting, owners) == [[(2, 0xB), (3, 0xC)]]
