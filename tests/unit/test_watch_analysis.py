"""Unit tests of the pure parts of `qemu watch-disconnect`: classification, budget, rendering."""
import json

import pytest

from qemu_chardev.analysis import watch as wa
from qemu_chardev.render import watch as watch_render

CONNECTED, CONNECTING, DISCONNECTED = wa.STATE_CONNECTED, wa.STATE_CONNECTING, \
    wa.STATE_DISCONNECTED
IO, MAIN = 4242, 4200
IOC = 0x7F0000001000


# --- what counts as a teardown ---------------------------------------------------------------

@pytest.mark.parametrize("field,old,new,expected", [
    ("ioc", IOC, 0, True),                 # cleared
    ("sioc", IOC, 0, True),
    ("ioc", 0, IOC, False),                # connect
    ("ioc", IOC, IOC + 64, False),         # TLS/websock wrapper replaces the channel
    ("ioc", 0, 0, False),
    ("state", CONNECTED, DISCONNECTED, True),
    ("state", CONNECTED, CONNECTING, True),
    ("state", CONNECTING, CONNECTED, False),
    ("state", DISCONNECTED, CONNECTING, False),
    ("state", CONNECTING, DISCONNECTED, False),   # failed handshake: no writer can race
])
def test_is_teardown(field, old, new, expected):
    assert wa.is_teardown(field, old, new) is expected


def test_teardown_breakpoint_judges_by_the_fields_at_entry():
    assert wa.is_teardown(wa.TEARDOWN, None, None, state_now=CONNECTED, ioc_now=IOC)
    assert wa.is_teardown(wa.TEARDOWN, None, None, state_now=CONNECTING, ioc_now=IOC)
    assert not wa.is_teardown(wa.TEARDOWN, None, None, state_now=DISCONNECTED, ioc_now=0)


def test_unknown_field_is_a_programming_error():
    with pytest.raises(ValueError):
        wa.is_teardown("listener", 1, 0)


# --- classification ----------------------------------------------------------------------------

def test_disconnect_while_another_thread_holds_the_lock_is_an_error():
    verdict = wa.classify("state", CONNECTED, DISCONNECTED, IO, True, MAIN,
                          state_now=DISCONNECTED, ioc_now=0)
    assert verdict.kind == wa.DISCONNECT_DURING_WRITE
    assert verdict.severity == "error"
    assert verdict.writer_lwp == MAIN
    assert f"LWP {IO}" in verdict.reason and f"LWP {MAIN}" in verdict.reason


def test_disconnect_with_nobody_holding_the_lock_is_a_warning():
    verdict = wa.classify("state", CONNECTED, DISCONNECTED, IO, False, None,
                          state_now=DISCONNECTED, ioc_now=0)
    assert verdict.kind == wa.DISCONNECT_WITHOUT_LOCK
    assert verdict.severity == "warning"
    assert verdict.writer_lwp is None


def test_disconnect_by_the_lock_owner_is_what_the_fix_does():
    assert wa.assess("state", CONNECTED, DISCONNECTED, IO, True, IO) == (wa.LOCKED, None)
    assert wa.classify("ioc", IOC, 0, MAIN, True, MAIN) is None


def test_finalization_is_not_a_violation_even_without_the_lock():
    assert wa.assess("ioc", IOC, 0, MAIN, False, None, in_finalizer=True) == \
        (wa.FINALIZATION, None)


def test_connects_and_other_changes_are_not_violations():
    assert wa.assess("ioc", 0, IOC, IO, False, None) == (wa.CONNECT, None)
    assert wa.assess("state", CONNECTING, CONNECTED, IO, False, None) == (wa.CONNECT, None)
    assert wa.assess("state", DISCONNECTED, CONNECTING, IO, False, None) == (wa.CHANGE, None)
    assert wa.assess("ioc", IOC, IOC + 8, IO, False, None) == (wa.CHANGE, None)


def test_state_change_after_a_watched_ioc_clear_is_not_reported_twice():
    first = wa.classify("ioc", IOC, 0, IO, False, None, state_now=CONNECTED, ioc_now=0,
                        ioc_watched=True)
    assert first is not None
    again = wa.assess("state", CONNECTED, DISCONNECTED, IO, False, None,
                      state_now=DISCONNECTED, ioc_now=0, ioc_watched=True)
    assert again == (wa.DUPLICATE, None)
    # without an ioc watch the state change is the report
    assert wa.classify("state", CONNECTED, DISCONNECTED, IO, False, None,
                       state_now=DISCONNECTED, ioc_now=0, ioc_watched=False) is not None


def test_held_lock_with_unknown_owner_is_reported_without_inventing_a_writer():
    verdict = wa.classify("state", CONNECTED, DISCONNECTED, IO, True, None)
    assert verdict.kind == wa.DISCONNECT_WITHOUT_LOCK
    assert verdict.writer_lwp is None and "not recorded" in verdict.reason


def test_in_finalizer_scans_function_names():
    assert wa.in_finalizer(["tcp_chr_free_connection", "char_socket_finalize",
                            "object_finalize"])
    assert not wa.in_finalizer(["tcp_chr_free_connection", "tcp_chr_disconnect", None])


# --- counters ------------------------------------------------------------------------------------

def test_counters_follow_outcomes():
    counters = wa.Counters()
    cases = [("state", CONNECTING, CONNECTED, IO, False, None, False),     # connect
             ("state", CONNECTED, DISCONNECTED, IO, True, IO, False),       # locked
             ("state", CONNECTED, DISCONNECTED, IO, False, None, False),    # warning
             ("state", CONNECTED, DISCONNECTED, IO, True, MAIN, False),     # error
             ("ioc", IOC, 0, MAIN, False, None, True)]                     # finalization
    for field, old, new, lwp, locked, owner, final in cases:
        outcome, verdict = wa.assess(field, old, new, lwp, locked, owner, in_finalizer=final)
        wa.count(counters, field, outcome, verdict)
    outcome, verdict = wa.assess(wa.TEARDOWN, None, None, IO, False, None,
                                 state_now=CONNECTED, ioc_now=IOC)
    wa.count(counters, wa.TEARDOWN, outcome, verdict)
    assert counters.to_json() == {
        "changes": 5, "connects": 1, "teardowns": 5, "locked_teardowns": 1,
        "finalizations": 1, "warnings": 2, "errors": 1, "fallback_hits": 1,
        "created": 0, "finalized": 0}


# --- the debug-register budget -------------------------------------------------------------------

@pytest.mark.parametrize("address,length,expected", [
    (0x1000, 8, 1), (0x1004, 4, 1), (0x1002, 4, 2), (0x1001, 8, 4), (0x1000, 16, 2),
    (0x1006, 2, 1), (0x1007, 1, 1),
])
def test_debug_registers_needed(address, length, expected):
    assert wa.debug_registers_needed(address, length) == expected


def _chardev(i, state_offset=0xd0):
    base = 0x5555_0000_0000 + i * 0x1000
    return (f"c{i}", base, {"state": (base + state_offset, 4), "ioc": (base + 0xa8, 8),
                            "sioc": (base + 0xb0, 8)})


def test_four_registers_cover_four_chardevs_and_the_rest_fall_back_in_order():
    chardevs = [_chardev(i) for i in range(6)]
    covered, uncovered = wa.plan_watches(chardevs, ["state"], 4)
    assert [p.label for p in covered] == ["c0", "c1", "c2", "c3"]
    assert [p.label for p in uncovered] == ["c4", "c5"]
    assert all(p.registers == 1 and p.fields == ["state"] for p in covered)
    assert all(p.fields == [] and p.registers == 0 for p in uncovered)


def test_a_chardev_is_covered_whole_or_not_at_all():
    chardevs = [_chardev(i) for i in range(3)]
    covered, uncovered = wa.plan_watches(chardevs, ["state", "ioc"], 3)
    assert [p.label for p in covered] == ["c0"]          # 2 registers; 1 left is not enough
    assert [p.label for p in uncovered] == ["c1", "c2"]
    covered, _ = wa.plan_watches(chardevs, ["state"], 0)
    assert covered == []
    covered, _ = wa.plan_watches(chardevs, ["state"], -2)   # the user holds them all
    assert covered == []


def test_unaligned_state_costs_two_registers():
    chardevs = [_chardev(0, state_offset=0xd2), _chardev(1)]
    covered, uncovered = wa.plan_watches(chardevs, ["state"], 2)
    assert [(p.label, p.registers) for p in covered] == [("c0", 2)]
    assert [p.label for p in uncovered] == ["c1"]


# --- events and rendering ------------------------------------------------------------------------

def _frame(level, function, file=None, line=None):
    return {"level": level, "pc": "0x1", "function": function, "file": file, "line": line,
            "pointers": {}}


def _event(kind=wa.DISCONNECT_DURING_WRITE):
    return wa.WatchEvent(
        id=7, kind=kind, reason="state connected -> disconnected by LWP 4242 ...",
        label="mon0", address=0x55D0C0A3E2B0, field_name="state", old=CONNECTED,
        new=DISCONNECTED, lwp=IO, thread=3, thread_name="IO mon_iothread",
        writer_lwp=MAIN if kind == wa.DISCONNECT_DURING_WRITE else None, writer_thread=1,
        stack=[_frame(0, "tcp_chr_change_state", "chardev/char-socket.c", 57),
               _frame(1, "tcp_chr_free_connection", "chardev/char-socket.c", 389)],
        writer_stack=[_frame(0, "tcp_chr_write", "chardev/char-socket.c", 112)])


def test_event_json_has_the_fields_the_log_promises():
    obj = _event().to_json()
    json.dumps(obj)
    assert obj["id"] == 7 and obj["kind"] == wa.DISCONNECT_DURING_WRITE
    assert obj["severity"] == "error"
    assert obj["chardev"] == {"label": "mon0", "address": "0x55d0c0a3e2b0"}
    assert (obj["lwp"], obj["writer_lwp"]) == (IO, MAIN)
    assert (obj["old"], obj["new"]) == ("connected", "disconnected")
    assert obj["stack"][0]["function"] == "tcp_chr_change_state"
    assert obj["writer_stack"][0]["function"] == "tcp_chr_write"


def test_pointer_fields_render_as_hex_or_null():
    event = _event()
    event.field_name, event.old, event.new = "ioc", IOC, 0
    obj = event.to_json()
    assert (obj["old"], obj["new"]) == (f"0x{IOC:x}", None)


def test_event_block_shows_both_stacks_for_an_error():
    text = watch_render.event_block(_event().to_json())
    assert "ERROR disconnect-during-write" in text and "'mon0'" in text
    assert "disconnecting thread LWP 4242 (thread 3 \"IO mon_iothread\")" in text
    assert "#0  tcp_chr_change_state at chardev/char-socket.c:57" in text
    assert "writer holding chr_write_lock: LWP 4200 (thread 1)" in text
    assert "tcp_chr_write at chardev/char-socket.c:112" in text
    assert "\x1b[" not in text


def test_brief_warning_block_has_no_writer_and_colour_only_when_asked():
    obj = _event(wa.DISCONNECT_WITHOUT_LOCK).to_json()
    text = watch_render.event_block(obj, colour=True, brief=True)
    assert "WARNING disconnect-without-write-lock" in text and "\x1b[33m" in text
    assert "writer" not in text and "tcp_chr_change_state" in text


def test_coverage_table_names_the_fallback():
    rows = [{"label": "mon0", "address": 0x10, "watched": ["state"], "registers": 1,
             "fallback": False},
            {"label": "s5", "address": 0x20, "watched": [], "registers": 0, "fallback": True}]
    text = watch_render.coverage_table(rows)
    lines = text.splitlines()
    assert "hardware watchpoint on state" in lines[2]
    assert "s5" in lines[3] and "breakpoint on tcp_chr_free_connection" in lines[3]
    assert "no socket chardev" in watch_render.coverage_table([])


def test_summary_line_counts():
    counters = wa.Counters(teardowns=5, locked_teardowns=1, warnings=3, errors=1, connects=5)
    line = watch_render.summary_line({"reason": "duration elapsed",
                                      "counters": counters.to_json(), "json_log": "/tmp/x"})
    assert line.startswith("qemu watch-disconnect: duration elapsed; 1 error(s), 3 warning(s)")
    assert "saw 5 teardown(s) (1 with the lock" in line and "/tmp/x" in line
