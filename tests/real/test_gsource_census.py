"""`qemu gsource census` and `qemu gsource trace` on real QEMU and on the gsource-heap fixture.

Ground truth: QEMU's own `qio_task_thread_source_attach` trace events (every completion source
a threaded QIOTask attached), the fixture's printed addresses and states, and raw gdb prints.
"""
import pytest

import support
from support import gsource as gs

SET_CLI0 = ("python from qemu_chardev.readers import qom; from qemu_chardev.target.snapshot import Snapshot; "
            "gdb.set_convenience_variable('cli0', "
            "dict(qom.chardevs_in_tree(Snapshot()))['cli0'])")
RECONNECT_TIMER = "((SocketChardev *)$cli0)->reconnect_timer"


def _census(binary, **where):
    result = support.run_gdb(binary, commands=["qemu gsource census --json"], **where)
    return result.json(0)


def _by_address(census):
    return {int(s["address"], 16): s for s in census["census"]["sources"]}


# --- leaks: reverted build against QEMU's trace events ----------------------------------

def test_census_counts_exactly_the_traced_leaked_completions(qemu_reverted, workdir):
    churn = gs.reconnect_churn_core(qemu_reverted.storage_daemon, workdir, seconds=6.0)
    traced = churn.traced_sources
    assert len(traced) >= 4, churn.events
    out = _census(churn.binary, core=churn.core)
    sources = _by_address(out)
    leaked = {int(a, 16) for a in out["census"]["leaked"]}

    # Every leak is a completion source QEMU said it attached ...
    assert leaked <= traced, sorted(hex(a) for a in leaked - traced)
    # ... and every attached completion leaked, except one still pending dispatch.
    pending = traced - leaked
    assert len(pending) <= 1, sorted(hex(a) for a in pending)
    for address in pending:
        assert sources[address]["state"] == "attached"
        assert sources[address]["callback_symbol"] == "qio_task_thread_result"
    for address in leaked:
        src = sources[address]
        assert src["origin"] == "qio_task_thread_worker completion"
        assert (src["ref_count"], src["flags"], src["priority"]) == (1, 0, 200)
        assert src["funcs_symbol"] == "g_idle_funcs"

    found = gs.find_finding(out["findings"], "gsource-leak", "error")
    assert len(found) == 1, out["findings"]
    assert found[0]["summary"].startswith(f"{len(leaked)} leaked GSource")
    assert "qio_task_thread_worker" in found[0]["summary"]
    assert "Fix GSource leak in qio_task_thread_worker()" in found[0]["fix"]
    for address in leaked:
        assert f"0x{address:x}" in found[0]["detail"]
    assert {int(a, 16) for a in found[0]["evidence"]["sources"]} == leaked

    # Independent check of two leaked sources' fields with plain gdb.
    sample = sorted(leaked)[:2]
    exprs = [f"((GSource *){a:#x})->{f}" for a in sample for f in ("ref_count", "flags")]
    raw = support.raw_gdb_values(churn.binary, core=churn.core, exprs=exprs)
    assert raw == ["1", "0"] * len(sample)


def test_no_leak_on_fixed_build_under_the_same_churn(qemu, workdir):
    churn = gs.reconnect_churn_core(qemu.storage_daemon, workdir, seconds=6.0)
    assert len(churn.traced_sources) >= 4, churn.events
    out = _census(churn.binary, core=churn.core)
    assert out["census"]["leaked"] == []
    assert gs.find_finding(out["findings"], "gsource-leak") == []
    sources = out["census"]["sources"]
    # The census sees QEMU's own sources (AioContext) and the live reconnect timer.
    assert any(s["funcs_symbol"] == "aio_source_funcs" and s["state"] == "attached"
               for s in sources)
    timers = [s for s in sources if "cli0.reconnect_timer" in s["owners"]]
    raw = support.raw_gdb_values(churn.binary, core=churn.core,
                                 exprs=[f"(long)({RECONNECT_TIMER.replace('$cli0', hex(_cli0(churn)))})"])
    if int(raw[0]) == 0:
        assert timers == []
    else:
        assert [int(t["address"], 16) for t in timers] == [int(raw[0])]
        assert timers[0]["callback_symbol"] == "socket_reconnect_timeout"


def _cli0(churn):
    result = support.run_gdb(churn.binary, core=churn.core,
                             commands=["qemu chardev list --json --no-frames"])
    return next(int(c["address"], 16) for c in result.json(0)["chardevs"]
                if c["label"] == "cli0")


# --- live: refcount trace and a use-after-free made by hand --------------------------------

def test_trace_shows_reconnect_timer_refcount_history(qemu, workdir):
    args = gs.reconnect_churn_args(workdir, qemu.storage_daemon)
    with support.QemuDaemon(qemu.storage_daemon, args, workdir) as daemon:
        daemon.wait_for_stderr(support.trace_event_re(gs.ATTACH_TRACE), count=2, timeout=15)
        for _attempt in range(5):
            result = support.run_gdb(qemu.storage_daemon, pid=daemon.pid, commands=[
                SET_CLI0, f"output {RECONNECT_TIMER}->ref_count",
                f"qemu gsource trace --json --timeout 30 {RECONNECT_TIMER}",
                "maint info breakpoints"], timeout=90)
            if result.sections["1"].error == "" and "NULL" not in (result.errors[2] or ""):
                break
        result.check()
    start_ref = int(result.outputs[1])
    trace = result.json(2)
    events = trace["events"]
    assert trace["start"]["ref_count"] == start_ref == 2   # s->reconnect_timer + the context
    assert trace["stopped"].startswith("ref_count reached 0"), trace
    refs = [e for e in events if e["what"] == "ref_count"]
    assert refs[-1]["new"] == 0
    for before, after in zip(refs, refs[1:]):
        assert after["old"] == before["new"]
    assert any(e["qemu_frame"] == "socket_reconnect_timeout" and e["delta"] == -1
               for e in refs), events
    destroyed = [e for e in events if e["what"] == "flags"]
    assert destroyed and not destroyed[-1]["new"] & 1
    assert all(e["lwp"] == daemon.pid for e in events)    # the main loop thread
    assert "watchpoint" not in result.outputs[3]


def test_trace_stops_when_a_leaked_source_gains_a_reference(qemu_reverted, workdir):
    """A leaked completion stays linked in its context, so every main loop iteration's
    g_source_iter_next() takes a temporary reference on it: a destroyed source gaining one."""
    args = gs.reconnect_churn_args(workdir, qemu_reverted.storage_daemon)
    with support.QemuDaemon(qemu_reverted.storage_daemon, args, workdir) as daemon:
        daemon.wait_for_stderr(support.trace_event_re(gs.ATTACH_TRACE), count=2, timeout=15)
        leaked = gs.attach_events(daemon.stderr_text())[0][1]    # dispatched a second ago
        result = support.run_gdb(qemu_reverted.storage_daemon, pid=daemon.pid, commands=[
            f"output ((GSource *){leaked:#x})->ref_count",
            f"qemu gsource trace --json --timeout 20 {leaked:#x}",
            "qemu gsource trace 0"], timeout=90)
    trace = result.json(1)
    assert result.outputs[0] == "1"
    assert trace["start"] == {"ref_count": 1, "flags": 0}
    assert trace["stopped"] == "a destroyed source gained a reference", trace
    first = trace["events"][0]
    assert (first["old"], first["new"], first["flags"]) == (1, 2, 0)
    assert first["qemu_frame"] in ("glib_pollfds_poll", "os_host_main_loop_wait"), first
    assert "is NULL" in result.errors[2]


def test_trace_refuses_a_core(qemu_reverted, workdir):
    churn = gs.reconnect_churn_core(qemu_reverted.storage_daemon, workdir, seconds=2.0,
                                    min_events=1)
    source = sorted(churn.traced_sources)[0]
    result = support.run_gdb(churn.binary, core=churn.core,
                             commands=[f"qemu gsource trace {source:#x}"])
    assert "needs a live process" in result.errors[0]
    assert "Python Exception" not in result.stderr


def test_census_reports_chardev_pointing_at_freed_source(qemu, workdir):
    """The state the 2019 race can leave: s->hup_source aimed at a freed GSource.

    The daemon's memory is changed by plain gdb (`set var`) to create it; the extension only
    reads."""
    args = gs.reconnect_churn_args(workdir, qemu.storage_daemon)
    pick_freed = ("python from qemu_chardev.readers import census; "
                  "from qemu_chardev.target.snapshot import Snapshot; "
                  "c = census.take_census(Snapshot(), with_frames=False); "
                  "f = [r.address for r in c.records if r.state == 'freed']; "
                  "gdb.set_convenience_variable('freed', f[0] if f else 0)")
    with support.QemuDaemon(qemu.storage_daemon, args, workdir) as daemon:
        daemon.wait_for_stderr(support.trace_event_re(gs.ATTACH_TRACE), count=4, timeout=20)
        result = support.run_gdb(qemu.storage_daemon, pid=daemon.pid, commands=[
            SET_CLI0, pick_freed, "output (long)$freed",
            "output ((GSource *)$freed)->ref_count",
            "qemu gsource census --json",
            "set var ((SocketChardev *)$cli0)->hup_source = (GSource *)$freed",
            "qemu gsource census --json"], teardown=["kill"])
    result.check()
    freed = int(result.outputs[2])
    assert freed and result.outputs[3] == "0"          # plain gdb: ref_count 0
    assert gs.find_finding(result.json(4)["findings"], "gsource-use-after-free") == []
    found = gs.find_finding(result.json(6)["findings"], "gsource-use-after-free", "error")
    assert len(found) == 1, result.json(6)["findings"]
    assert found[0]["chardev"] == "cli0"
    assert f"cli0.hup_source points at GSource 0x{freed:x}" in found[0]["summary"]
    assert "78d01598ae" in found[0]["fix"]


# --- the gsource-heap fixture: every state, core and live -------------------------------

@pytest.fixture(scope="module")
def heap_binary(tmp_path_factory):
    return gs.build_gsource_heap(tmp_path_factory.mktemp("gsource-heap"))


@pytest.mark.parametrize("mode", ["core", "live"])
def test_census_states_match_the_fixture(heap_binary, workdir, mode):
    fixture = gs.start_gsource_heap(heap_binary, "--heap-mib", "64", "--attached", "7",
                                    "--kept", "3", "--unattached", "2", "--leaked", "9",
                                    "--freed", "5", "--decoys", "6")
    try:
        if mode == "core":
            where = {"core": support.gcore(fixture.pid, workdir / "heap.core",
                                           binary=heap_binary)}
        else:
            where = {"pid": fixture.pid}
        out = _census(heap_binary, **where)
    finally:
        fixture.stop()
    sources = _by_address(out)
    states = {}
    for address, src in sources.items():
        states.setdefault(src["state"], set()).add(address)
    assert states.get("attached") == fixture.addresses("attached") | fixture.addresses("kept")
    assert states.get("unattached") == fixture.addresses("unattached")
    assert states.get("leaked") == fixture.addresses("leaked")
    assert states.get("freed") == fixture.addresses("freed")
    assert set(states) == {"attached", "unattached", "leaked", "freed"}
    for address in fixture.addresses("kept"):
        assert sources[address]["ref_count"] == 2
        assert sources[address]["funcs_symbol"] == "g_timeout_funcs"
    for decoy in fixture.addresses("decoy"):
        assert decoy not in sources
    assert sum(out["census"]["rejected"].values()) >= len(fixture.addresses("decoy"))
    # Not QEMU: the leak is reported, but not blamed on qio_task_thread_worker.
    assert gs.find_finding(out["findings"], "gsource-leak", "error") == []
    warn = gs.find_finding(out["findings"], "gsource-leak", "warning")
    assert len(warn) == 1 and warn[0]["summary"].startswith("9 destroyed GSources")
    assert out["complete"] is False          # no QEMU debug info: owners not checked
    assert out["census"]["bytes_scanned"] >= 64 << 20


def test_truncated_core_is_reported_incomplete_not_a_traceback(heap_binary, workdir):
    fixture = gs.start_gsource_heap(heap_binary, "--heap-mib", "32")
    try:
        core = support.gcore(fixture.pid, workdir / "full.core", binary=heap_binary)
    finally:
        fixture.stop()
    cut = workdir / "cut.core"
    with open(core, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(core.stat().st_size * 2 // 3))
    result = support.run_gdb(heap_binary, core=cut, commands=["qemu gsource census --json"])
    assert "Traceback" not in result.stderr and "Python Exception" not in result.stderr
    if result.sections["0"].failed:
        assert result.errors[0].count("\n") <= 1, result.errors[0]   # one clear line
    else:
        out = result.json(0)
        assert out["complete"] is False
        assert any("could not be read" in p for p in out["problems"]), out["problems"]


def test_census_without_qemu_debug_info_still_finds_the_leaks(qemu_reverted, workdir):
    """A debug-stripped QEMU (symbol table kept): anchors and the leak signature still work,
    chardev owners cannot be read, so the report says it is incomplete."""
    stripped = support.strip_debug(qemu_reverted.storage_daemon, workdir / "qsd-stripped")
    churn = gs.reconnect_churn_core(stripped, workdir, seconds=4.0, min_events=3)
    out = _census(stripped, core=churn.core)
    leaked = {int(a, 16) for a in out["census"]["leaked"]}
    assert leaked and leaked <= churn.traced_sources
    assert len(churn.traced_sources - leaked) <= 1
    assert gs.find_finding(out["findings"], "gsource-leak", "error")
    assert out["complete"] is False
    assert any("not checked as owners" in p for p in out["problems"]), out["problems"]
