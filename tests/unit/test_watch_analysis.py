"""Unit tests of the pure parts of `qemu watch-disconnect`: classification, budget, rendering,
options, stop decisions, states and the summary."""
import argparse
import json
import shlex

import pytest

from qemu_chardev.analysis import watch as wa
from qemu_chardev.model import stops, vocabulary
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
        id=kind, seq=7, reason="state connected -> disconnected by LWP 4242 ...",
        label="mon0", address=0x55D0C0A3E2B0, field_name="state", old=CONNECTED,
        new=DISCONNECTED, lwp=IO, thread=3, thread_name="IO mon_iothread",
        writer_lwp=MAIN if kind == wa.DISCONNECT_DURING_WRITE else None, writer_thread=1,
        stack=[_frame(0, "tcp_chr_change_state", "chardev/char-socket.c", 57),
               _frame(1, "tcp_chr_free_connection", "chardev/char-socket.c", 389)],
        writer_stack=[_frame(0, "tcp_chr_write", "chardev/char-socket.c", 112)])


def test_event_json_has_the_fields_the_log_promises():
    obj = _event().to_json()
    json.dumps(obj)
    assert obj["seq"] == 7 and obj["id"] == wa.DISCONNECT_DURING_WRITE
    assert "kind" not in obj and "reason" not in obj      # one name per fact: id, summary
    assert obj["summary"].startswith("state connected -> disconnected")
    assert obj["title"] == vocabulary.title(wa.DISCONNECT_DURING_WRITE)
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


# --- options: one declaration for the command and the script -------------------------------------

def _parser():
    parser = argparse.ArgumentParser(prog="qemu watch-disconnect", exit_on_error=False)
    wa.add_watch_options(parser)
    parser.add_argument("--control-fd", type=int)
    return parser


def test_options_parse_with_their_types_and_defaults():
    args = _parser().parse_args(["mon0", "s1", "--duration", "2.5", "--fields", "state,ioc,state",
                                 "--summary-json", "/tmp/s.json", "--quiet"])
    assert args.labels == ["mon0", "s1"] and args.duration == 2.5
    assert args.fields == ["state", "ioc"] and args.summary_json == "/tmp/s.json"
    assert args.quiet and not args.stop
    defaults = _parser().parse_args([])
    assert defaults.fields == ["state"] and defaults.max_debug_registers == 4
    assert defaults.labels == [] and defaults.duration is None


@pytest.mark.parametrize("words", [["--fields", "bogus"], ["--fields", ","],
                                   ["--duration", "0"], ["--duration", "soon"],
                                   ["--max-debug-registers", "-1"]])
def test_bad_option_values_are_usage_errors(words):
    with pytest.raises(argparse.ArgumentError) as info:
        _parser().parse_args(words)
    assert words[0] in str(info.value)


def test_command_args_round_trip_under_the_same_names():
    words = ["mon0", "--duration", "5", "--stop", "--json-log", "/tmp/a b.jsonl",
             "--core-dir", "/tmp/cores", "--fields", "state,sioc", "--max-debug-registers", "2",
             "--quiet"]
    args = _parser().parse_args(words)
    again = _parser().parse_args(wa.watch_command_args(args))
    assert vars(again) == vars(args)
    assert wa.watch_command_args(_parser().parse_args([])) == [
        "--fields", "state", "--max-debug-registers", "4"]


def _catcher_script():
    from qemu_chardev.cli import catch
    return catch


def test_the_script_passes_its_watch_options_on_by_the_same_names():
    script = _catcher_script()
    args = script.parse_args(["--pid", "4242", "mon0", "--duration", "3", "--fields",
                              "state,ioc", "--summary-json", "/tmp/sum mary.json", "--quiet"])
    argv = script.gdb_argv(args, control_fd=7, interactive=False)
    commands = [argv[i + 1] for i, word in enumerate(argv) if word == "-ex"]
    watch = next(c for c in commands if c.startswith("qemu watch-disconnect mon0"))
    passed = _parser().parse_args(shlex.split(watch)[2:])
    assert passed.labels == ["mon0"] and passed.duration == 3.0 and passed.quiet
    assert passed.fields == ["state", "ioc"] and passed.summary_json == "/tmp/sum mary.json"
    assert passed.control_fd == 7
    assert commands[-1] == "qemu watch-disconnect --finish"
    interactive = script.gdb_argv(args, control_fd=None, interactive=True)
    assert interactive[-1] == "qemu watch-disconnect --finish --at-scene --quit"
    # no Python is injected but the line that loads the extension
    from qemu_chardev.cli import gdbload
    assert [c for c in commands if "python" in c] == [gdbload.load_command()]
    with pytest.raises(script.BadInput):
        script.parse_args(["--pid", "1", "--fields", "bogus"])


# --- what a stop means ---------------------------------------------------------------------------

@pytest.mark.parametrize("stop,reason,state", [
    (stops.Stop(stops.STOP_EXITED, exit_code=3), "the process exited with status 3",
     wa.State.DISARMED),
    (stops.Stop(stops.STOP_EXITED), "the process exited", wa.State.DISARMED),
    (stops.Stop(stops.STOP_CTRL_C), "interrupted (Ctrl-C)", wa.State.DISARMED),
    (stops.Stop(stops.STOP_RESUME_FAILED, message="no"), "cannot resume the process: no",
     wa.State.DISARMED),
    (stops.Stop(stops.STOP_SIGNAL, signal="SIGINT", interrupt="duration elapsed"),
     "duration elapsed", wa.State.DISARMED),
    (stops.Stop(stops.STOP_SIGNAL, signal="SIGINT"), "interrupted (SIGINT)", wa.State.DISARMED),
    (stops.Stop(stops.STOP_SIGNAL, signal="SIGSEGV"), "the process crashed (SIGSEGV)",
     wa.State.AT_SCENE),
    (stops.Stop(stops.STOP_SIGNAL, signal="SIGTERM"), "the process got SIGTERM", wa.State.PAUSED),
    (stops.Stop(stops.STOP_FOREIGN), "stopped at a breakpoint that is not ours", wa.State.PAUSED),
    (stops.Stop(stops.STOP_OTHER), "the process stopped", wa.State.PAUSED),
    (stops.Stop(stops.STOP_NOTHING), "the process stopped", wa.State.DISARMED),
    (stops.Stop(stops.STOP_OURS), None, None),
])
def test_decide_stop(stop, reason, state):
    decision = wa.decide_stop(stop)
    assert (decision.reason, decision.state) == (reason, state)
    assert decision.crash == (stop.signal == "SIGSEGV")


def test_an_error_ends_the_watch_at_the_scene_only_with_stop_on_error():
    ours = stops.Stop(stops.STOP_OURS)
    first = wa.DISCONNECT_DURING_WRITE
    assert wa.decide_stop(ours, stop_on_error=False, first_error=first).reason is None
    decision = wa.decide_stop(ours, stop_on_error=True, first_error=first)
    assert (decision.reason, decision.state) == (
        "stopped at error [disconnect-during-write] (--stop)", wa.State.AT_SCENE)
    # the error wins over the SIGINT that arrived in the same stop; an exit does not wait
    sigint = stops.Stop(stops.STOP_SIGNAL, signal="SIGINT", interrupt="duration elapsed")
    assert wa.decide_stop(sigint, True, 1).state is wa.State.AT_SCENE
    assert wa.decide_stop(stops.Stop(stops.STOP_EXITED), True, 1).state is wa.State.DISARMED


def test_end_of_run_note_only_while_still_armed():
    assert "stopped at the scene; the watch is still armed" in \
        wa.end_of_run_note(wa.State.AT_SCENE, "x")
    assert wa.end_of_run_note(wa.State.PAUSED, "the process got SIGTERM").startswith(
        "paused (the process got SIGTERM); the watch is still armed")
    assert wa.end_of_run_note(wa.State.DISARMED, "x") is None


# --- the states ----------------------------------------------------------------------------------

def test_lifecycle_of_a_scripted_watch():
    life = wa.Lifecycle()
    assert life.state is wa.State.IDLE and not life.armed and not life.ran
    life.to(wa.State.ARMED)
    assert life.armed and not life.ran
    life.to(wa.State.RUNNING)
    life.to(wa.State.AT_SCENE)
    assert life.ran and life.armed and life.at_scene
    life.to(wa.State.RUNNING)                       # resumed from the scene
    assert not life.at_scene
    life.to(wa.State.PAUSED)
    life.to(wa.State.GONE)                          # detached or exited at the prompt
    assert life.armed
    life.to(wa.State.DISARMED)
    assert not life.armed and not life.at_scene and life.ran


def test_disarmed_at_the_scene_still_says_so():
    for last in ((wa.State.DISARMED,), (wa.State.GONE, wa.State.DISARMED)):
        life = wa.Lifecycle()
        for state in (wa.State.ARMED, wa.State.RUNNING, wa.State.AT_SCENE, *last):
            life.to(state)
        assert life.at_scene and not life.armed


@pytest.mark.parametrize("path", [
    (wa.State.RUNNING,),                                      # not armed yet
    (wa.State.ARMED, wa.State.AT_SCENE),                      # only a run ends at the scene
    (wa.State.ARMED, wa.State.RUNNING, wa.State.GONE),        # the loop sees exits itself
    (wa.State.ARMED, wa.State.RUNNING, wa.State.RUNNING),
    (wa.State.DISARMED, wa.State.ARMED),                      # final
    (wa.State.ARMED, wa.State.GONE, wa.State.RUNNING),
])
def test_forbidden_transitions_raise(path):
    life = wa.Lifecycle()
    with pytest.raises(wa.InvalidTransition):
        for state in path:
            life.to(state)


def test_every_state_has_its_transitions_and_can_be_disarmed():
    assert set(wa.TRANSITIONS) == set(wa.State)
    for state, targets in wa.TRANSITIONS.items():
        assert state is wa.State.DISARMED or wa.State.DISARMED in targets


# --- the summary ---------------------------------------------------------------------------------

def test_summary_object():
    life = wa.Lifecycle()
    life.to(wa.State.ARMED)
    counters = wa.Counters(teardowns=2, warnings=1, errors=1, locked_teardowns=0)
    event = _event()
    summary = wa.summary(life, "duration elapsed", 99, None, counters,
                         [{"label": "mon0", "address": 0x10, "watched": ["state"],
                           "registers": 1, "fallback": False}], ["state"], 4, "/tmp/e.jsonl",
                         ["a note"], [], True, 5, 0.0123456789, [event])
    json.dumps(summary)
    assert list(summary) == [
        "reason", "at_scene", "armed", "pid", "exit_status", "errors", "warnings", "counters",
        "coverage", "fields", "max_debug_registers", "json_log", "notes", "internal_errors",
        "interrupt_pending", "stop_calls", "stop_seconds", "events"]
    assert summary["armed"] and not summary["at_scene"]
    assert (summary["errors"], summary["warnings"]) == (1, 1)
    assert summary["coverage"][0]["address"] == "0x10"
    assert summary["stop_seconds"] == 0.012346 and summary["interrupt_pending"]
    assert summary["events"] == [event.to_json()]
    assert watch_render.summary_line(summary).startswith(
        "qemu watch-disconnect: duration elapsed; 1 error(s), 1 warning(s)")


def test_callback_on_a_finalized_chardev_is_an_error_and_a_live_one_is_not():
    assert wa.callback_on_finalized("qemu_chr_socket_connected", 1, True) is None
    reason = wa.callback_on_finalized("tcp_chr_websock_handshake", 0, False)
    assert "tcp_chr_websock_handshake() is about to run on a finalized chardev" in reason
    assert "Object.ref is 0" in reason and "chr_write_lock was destroyed" in reason
    assert wa.SEVERITY[wa.CALLBACK_ON_FINALIZED] == "error"
    assert "tcp_chr_read" not in wa.CHECKED_CALLBACKS     # the hot path is never stopped


def test_finalize_with_a_pending_connect_task_is_an_error():
    assert wa.finalized_with_pending_task(0) is None
    assert "0x1000 is pending" in wa.finalized_with_pending_task(0x1000)
