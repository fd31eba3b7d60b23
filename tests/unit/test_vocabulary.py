"""The one GLib/QEMU vocabulary (model.glib, model.qemu): states, flags, names, frames."""
import pytest

from qemu_chardev.analysis import census as ca
from qemu_chardev.model import glib, qemu
from qemu_chardev.model.objects import Frame


def test_gsource_flag_names():
    assert glib.gsource_flag_names(0x1) == ["ACTIVE"]
    assert glib.gsource_flag_names(0x43) == ["ACTIVE", "IN_CALL", "BLOCKED"]
    assert glib.gsource_flag_names(0x100) == ["0x100"]
    assert glib.gsource_flag_names(None) == []


@pytest.mark.parametrize("ref,flags,context,expected", [
    (2, 0x1, 0x1000, "attached"),
    (1, 0x3, 0x1000, "dispatching"),
    (1, 0x1, 0, "unattached"),
    (1, 0x0, 0x1000, "destroyed-referenced"),   # the 2019 leaked completion
    (2, 0x2, 0x1000, "destroyed-referenced"),   # destroyed from inside its own dispatch
    (0, 0x1, 0x1000, "freed"),
    (5, 0xdead00, 0x1000, "invalid"),
    (1 << 24, 0x1, 0x1000, "invalid"),
    (None, 0x1, 0x1000, "unreadable"),
])
def test_gsource_state(ref, flags, context, expected):
    assert glib.gsource_state(ref, flags, context) == expected


def test_gsource_state_absurd_priority_is_damage():
    assert glib.gsource_state(1, 1, 0x1000, priority=1 << 30) == "invalid"


@pytest.mark.parametrize("ref,flags,context", [
    (2, 0x2, 0x1000), (1, 0x3, 0x1000), (1, 0x1, 0), (1, 0x0, 0x1000), (0, 0x1, 0x1000),
    (3, 0x11, 0x1000),
])
def test_census_and_qemu_gsource_use_the_same_state(ref, flags, context):
    """`qemu gsource` and the census once disagreed on (2, IN_CALL, context)."""
    rec = ca.SourceRecord(address=0x1000, ref_count=ref, flags=flags, context=context,
                          priority=0)
    owner = ca.Owner(0x1000, "frame", "f:src")      # owned, so never called leaked
    ca.classify([rec], [owner])
    assert rec.state == glib.gsource_state(ref, flags, context)


def test_every_state_has_a_meaning():
    assert set(glib.STATES) | {glib.UNREADABLE} == set(glib.STATE_MEANINGS)


def test_socket_state_names():
    assert qemu.socket_state_name("TCP_CHARDEV_STATE_CONNECTED") == "connected"
    assert qemu.socket_state_name(1) == "connecting"
    assert qemu.socket_state_name(9) == "unknown(9)"
    assert qemu.socket_state_name(None) is None


def _frame(function, file, is_qemu=True):
    return Frame(level=0, function=function, file=file, line=1, is_qemu=is_qemu)


def test_innermost_qemu_frame_skips_thread_plumbing():
    frames = [_frame("__futex_abstimed_wait_common", None, is_qemu=False),
              _frame("qemu_mutex_lock_impl", "util/qemu-thread-posix.c"),
              _frame("qemu_chr_write_buffer", "chardev/char.c"),
              _frame("main", "softmmu/main.c")]
    assert qemu.innermost_qemu_frame(frames).function == "qemu_chr_write_buffer"
    assert qemu.innermost_qemu_frame(frames, skip_plumbing=False).function == \
        "qemu_mutex_lock_impl"
    only_plumbing = frames[:2]
    assert qemu.innermost_qemu_frame(only_plumbing).function == "qemu_mutex_lock_impl"
    assert qemu.innermost_qemu_frame(frames[:1]) is None


def test_a_thread_aborting_inside_the_lock_code_is_not_waiting():
    lock = Frame(level=3, function="qemu_mutex_lock_impl", file="util/qemu-thread-posix.c",
                 line=88, pointers=[("mutex", "QemuMutex", 0x5000)])
    caller = _frame("qemu_chr_write_buffer", "chardev/char.c")
    waiting = [_frame("futex_wait", None, is_qemu=False),
               _frame("__lll_lock_wait", None, is_qemu=False), lock, caller]
    aborting = [_frame("__pthread_kill_implementation", None, is_qemu=False),
                _frame("raise", None, is_qemu=False), _frame("abort", None, is_qemu=False),
                _frame("__assert_fail", None, is_qemu=False), lock, caller]
    assert qemu.blocked_on(waiting) == 0x5000
    assert qemu.blocked_on(aborting) is None


def test_glibc_assert_message_is_parsed():
    from qemu_chardev.model import glibc
    text = ("qemu-storage-daemon: ../util/qemu-thread-posix.c:88: qemu_mutex_lock_impl: "
            "Assertion `mutex->initialized' failed.\n")
    parsed = glibc.parse_assert_message(text)
    assert parsed == {"program": "qemu-storage-daemon", "file": "../util/qemu-thread-posix.c",
                      "line": 88, "function": "qemu_mutex_lock_impl",
                      "expression": "mutex->initialized"}
    assert glibc.parse_assert_message("free(): double free detected in tcache 2\n") is None


def test_glib_assert_message_is_parsed():
    parsed = glib.parse_glib_assert_message(
        "ERROR:../chardev/char-socket.c:1234:tcp_chr_foo: assertion failed: (s->ioc == NULL)")
    assert (parsed["file"], parsed["line"], parsed["function"], parsed["expression"]) == \
        ("../chardev/char-socket.c", 1234, "tcp_chr_foo", "s->ioc == NULL")


def test_mutex_status_never_calls_a_destroyed_mutex_free():
    from qemu_chardev.model.objects import MutexState
    assert MutexState(address=1, kind="QemuMutex", locked=False, destroyed=True).status == \
        "destroyed"
    assert MutexState(address=1, kind="QemuMutex", locked=False,
                      initialized=False).status == "uninitialized"
    assert MutexState(address=1, kind="QemuMutex", locked=True, initialized=True).status == \
        "held"
    assert MutexState(address=1, kind="QemuMutex", locked=None).status == "unknown"
