"""Pure analysis: lock words, GSource flags and verdicts, lock cycles."""
import pytest

from qemu_chardev.analysis import locks as analysis


def test_free_normal_mutex():
    d = analysis.decode_pthread_mutex(lock=0, count=0, owner=0, kind=0)
    assert d["locked"] is False and d["owner_lwp"] is None and d["type"] == "normal"


def test_held_mutex_reports_owner_and_contention():
    held = analysis.decode_pthread_mutex(lock=1, count=0, owner=4242, kind=0)
    assert held["locked"] and held["owner_lwp"] == 4242 and not held["waiters_flagged"]
    contended = analysis.decode_pthread_mutex(lock=2, count=0, owner=4242, kind=0)
    assert contended["waiters_flagged"]


def test_recursive_mutex_depth():
    d = analysis.decode_pthread_mutex(lock=1, count=3, owner=7, kind=1)
    assert d["type"] == "recursive" and d["recursion"] == 3


def test_destroyed_mutex():
    for kind in (-1, 0xFFFFFFFF):
        d = analysis.decode_pthread_mutex(lock=0, count=0, owner=0, kind=kind)
        assert d["destroyed"] and not d["locked"]


def test_robust_mutex_owner_comes_from_lock_word():
    d = analysis.decode_pthread_mutex(lock=0x80000000 | 1234, count=0, owner=0, kind=16)
    assert d["locked"] and d["owner_lwp"] == 1234 and d["waiters_flagged"]


def test_gsource_flag_names():
    assert analysis.gsource_flag_names(0x1) == ["ACTIVE"]
    assert analysis.gsource_flag_names(0x43) == ["ACTIVE", "IN_CALL", "BLOCKED"]
    assert analysis.gsource_flag_names(0x100) == ["0x100"]
    assert analysis.gsource_flag_names(None) == []


@pytest.mark.parametrize("ref,flags,context,expected", [
    (2, 0x1, 0x1000, "attached"),
    (1, 0x3, 0x1000, "dispatching"),
    (1, 0x1, 0, "unattached"),
    (1, 0x0, 0x1000, "destroyed-but-referenced"),   # the 2019 leaked completion
    (0, 0x1, 0x1000, "looks-freed"),
    (5, 0xdead00, 0x1000, "looks-freed"),
    (None, 0x1, 0x1000, "unreadable"),
])
def test_gsource_verdict(ref, flags, context, expected):
    assert analysis.gsource_verdict(ref, flags, context) == expected


def test_gsource_verdict_absurd_priority_is_garbage():
    assert analysis.gsource_verdict(1, 1, 0x1000, priority=1 << 30) == "looks-freed"


def test_socket_state_names():
    assert analysis.socket_state_name("TCP_CHARDEV_STATE_CONNECTED") == "connected"
    assert analysis.socket_state_name(1) == "connecting"
    assert analysis.socket_state_name(9) == "unknown(9)"
    assert analysis.socket_state_name(None) is None


def test_no_cycle_when_owner_runs():
    assert analysis.find_lock_cycles({10: 0xA}, {0xA: 11}) == []


def test_self_deadlock_is_a_cycle_of_one():
    assert analysis.find_lock_cycles({10: 0xA}, {0xA: 10}) == [[(10, 0xA)]]


def test_two_thread_cycle_reported_once_from_smallest_lwp():
    cycles = analysis.find_lock_cycles({11: 0xB, 10: 0xA}, {0xA: 11, 0xB: 10})
    assert cycles == [[(10, 0xA), (11, 0xB)]]


def test_chain_into_cycle_reports_only_the_cycle():
    waiting = {1: 0xA, 2: 0xB, 3: 0xC}
    owners = {0xA: 2, 0xB: 3, 0xC: 2}
    assert analysis.find_lock_cycles(waiting, owners) == [[(2, 0xB), (3, 0xC)]]
