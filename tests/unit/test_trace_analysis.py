"""Pure refcount-trace analysis: when to stop, who took or dropped a reference, summary."""
import pytest

from qemu_chardev.render import gsource as render_gsource
from qemu_chardev.analysis import trace as ta
from qemu_chardev.model import stops
from qemu_chardev.model import glib


def ev(index, old, new, flags=1, frames=(), what="ref_count", qemu=None):
    return ta.RefEvent(index=index, what=what, old=old, new=new, flags=flags, lwp=100,
                       thread=1, frames=list(frames), qemu_frame=qemu)


def test_stop_reasons():
    assert ta.stop_reason(ev(1, 2, 3)) is None
    assert ta.stop_reason(ev(1, 2, 1)) is None
    assert ta.stop_reason(ev(1, 1, 0, flags=0)) == ta.STOP_ZERO
    assert ta.stop_reason(ev(1, 1, 2, flags=0)) == ta.STOP_DESTROYED_GAIN
    assert ta.stop_reason(ev(1, 2, 1, flags=0)) is None
    assert ta.stop_reason(ev(1, 1, 0, what="flags")) is None


def test_attribution_skips_refcount_helpers_and_unnamed_frames():
    assert ta.attribute(["g_source_unref_internal", "0x7f0012", "socket_reconnect_timeout",
                         "g_main_dispatch"]) == "socket_reconnect_timeout"
    assert ta.attribute(["0x7f0012", "g_main_context_check"]) == "g_main_context_check"
    assert ta.attribute(["g_source_ref"]) == "g_source_ref"
    assert ta.attribute([]) is None


def test_flag_change_and_delta():
    assert ta.flag_change(0x1, 0x0) == "destroyed"
    assert ta.flag_change(0x0, 0x1) == "activated"
    assert ta.flag_change(0x1, 0x11) == "bits 0x10 changed"
    assert ev(1, 3, 2).delta == -1 and ev(1, 0x1, 0x0, what="flags").delta is None


def test_summary_and_balance():
    events = [ev(1, 2, 3, frames=["0x7f1", "g_main_context_check"], qemu="glib_pollfds_poll"),
              ev(2, 3, 2, frames=["g_source_unref", "socket_reconnect_timeout"],
                 qemu="socket_reconnect_timeout"),
              ev(3, 1, 0, what="flags", flags=0, frames=["g_main_dispatch"]),
              ev(4, 2, 1, flags=0, frames=["g_main_dispatch"]),
              ev(5, 1, 0, flags=0, frames=["g_main_dispatch"])]
    rows = ta.summary_rows(events)
    assert rows[0][:4] == [1, "2->3 (+1)", "g_main_context_check", "glib_pollfds_poll"]
    assert rows[2][1] == "flags 0x1->0x0 destroyed"
    assert ta.balance(events) == {"g_main_context_check": 1, "socket_reconnect_timeout": -1,
                                  "g_main_dispatch": -2}
    text = render_gsource.trace_summary(0x1000, (2, 1), events, ta.STOP_ZERO)
    assert "socket_reconnect_timeout -1" in text and ta.STOP_ZERO in text
    assert "no change observed" in render_gsource.trace_summary(0x1000, (2, 1), [], "timeout")


def test_the_active_bit_is_glibs():
    assert ta.G_SOURCE_ACTIVE is glib.G_SOURCE_ACTIVE


@pytest.mark.parametrize("stop,reason", [
    (stops.Stop(stops.STOP_EXITED, exit_code=0), "the process exited"),
    (stops.Stop(stops.STOP_CTRL_C), "interrupted"),
    (stops.Stop(stops.STOP_RESUME_FAILED, message="boom"), "cannot resume: boom"),
    (stops.Stop(stops.STOP_SIGNAL, signal="SIGINT", interrupt="timeout"), "timeout"),
    (stops.Stop(stops.STOP_SIGNAL, signal="SIGINT"), "interrupted"),
    (stops.Stop(stops.STOP_SIGNAL, signal="SIGPIPE"), "the process got SIGPIPE"),
    (stops.Stop(stops.STOP_FOREIGN), "another breakpoint was hit"),
    (stops.Stop(stops.STOP_NOTHING), "the process is not running"),
    (stops.Stop(stops.STOP_OTHER), "the process stopped"),
    (stops.Stop(stops.STOP_OURS), "the process stopped"),
])
def test_end_reason(stop, reason):
    assert ta.end_reason(stop) == reason
