"""target.snapshot: the thread map, stacks, frame models, lock waits, thread references and the
user's selection, on fixtures/c/threads.c (five threads with known call chains, three of them
blocked in a qemu_mutex_lock_impl look-alike), built -O0 and -O2, live and from its core.

Ground truth: the kernel (/proc/PID/task, comm), what threads.c printed (gettid() of each
thread, lock addresses), its source (call chains, line numbers) and plain gdb's own
`info threads`, `thread apply all bt`, `thread` and `frame`, run in the same gdb.
"""
import re

from support import cprogs
from support.cprogs import py

# Pointer arguments threads.c gives types the extension remembers (Chardev *, QemuMutex *).
INTERESTING_ARGS = {"chr", "mutex", "first", "second"}

SNAPSHOT_PROBE = py("""
    from qemu_chardev.target.snapshot import (Snapshot, blocked_on, innermost_qemu_frame,
                                              walk_frames)
    snap = Snapshot()
    out = {"threads": {}, "stacks": {}, "refs": {}, "innermost": {}, "blocked_on": {}}
    for lwp, thread in snap.threads().items():
        frames = snap.stack(lwp)
        out["threads"][lwp] = [thread.num, thread.name]
        out["stacks"][lwp] = [dict(f.to_json(), is_qemu=f.is_qemu) for f in frames]
        inner = innermost_qemu_frame(frames)
        out["innermost"][lwp] = inner.function if inner else None
        out["blocked_on"][lwp] = blocked_on(frames)
        out["refs"][lwp] = snap.thread_ref(lwp).to_json()
    out["lock_waits"] = snap.lock_waits()
    # a shallow unwind first must not hide the deeper stack asked for next
    fresh = Snapshot()
    first = min(fresh.threads())
    out["shallow"] = [f.function for f in fresh.stack(first, depth=2)]
    out["deep_after_shallow"] = [f.function for f in fresh.stack(first)]
    out["walk_3"] = [level for level, _frame in walk_frames(3)]
    emit(out)
""")


_runs = {}


def _run(threads, mode):
    """(extension's answers, raw {LWP: thread number}, raw {LWP: [RawFrame]}); one gdb run per
    program and mode, shared by the tests below."""
    key = (threads.binary, mode)
    if key not in _runs:
        _runs[key] = _probe(threads, mode)
    return _runs[key]


def _probe(threads, mode):
    result = threads.gdb(mode, [SNAPSHOT_PROBE, "info threads", "thread apply all bt"])
    got = result.json(0)
    result.check(1, 2)
    for key in ("threads", "stacks", "refs", "innermost", "blocked_on", "lock_waits"):
        got[key] = {int(lwp): value for lwp, value in got[key].items()}
    return (got, cprogs.parse_info_threads(result.outputs[1]),
            cprogs.parse_backtraces(result.outputs[2]))


def _tids(threads):
    return {name: int(tid) for name, tid in threads.values("tid").items()}


def _functions(frames):
    return [f["function"] for f in frames]


def _contains_run(functions, run):
    """True if RUN appears in FUNCTIONS as consecutive items."""
    return any(functions[i:i + len(run)] == run for i in range(len(functions)))


def _raw_pointer_args(raw_frame):
    """{arg: address} of the interesting pointer arguments plain gdb's bt line shows."""
    out = {}
    for name in INTERESTING_ARGS:
        # "chr=0x55... <chr0>" or "mutex=mutex@entry=0x55..."; "<optimized out>" is absent
        for part in raw_frame.args.split(", "):
            key, _, value = part.partition("=")
            if key == name:
                value = value.split("=")[-1].split()[0]
                if value.startswith("0x"):
                    out[name] = int(value, 16)
    return out


def test_threads_and_stacks_match_kernel_and_gdb(threads, mode):
    got, raw_nums, raw_stacks = _run(threads, mode)
    tids = _tids(threads)
    # the thread map: every kernel task, nothing else, numbered as gdb numbers them
    assert sorted(got["threads"]) == threads.task_ids() == sorted(tids.values())
    assert {lwp: num for lwp, (num, _name) in got["threads"].items()} == raw_nums
    if mode == "live":
        assert {lwp: name for lwp, (_n, name) in got["threads"].items()} == \
            {tid: threads.comm(tid) for tid in tids.values()}
    # every stack, frame by frame, as `bt` shows it
    assert sorted(got["stacks"]) == sorted(raw_stacks)
    for lwp, frames in got["stacks"].items():
        raw = raw_stacks[lwp]
        assert [f["level"] for f in frames] == list(range(len(frames)))
        assert _functions(frames) == [r.function for r in raw], lwp
        for frame, raw_frame in zip(frames, raw):
            ours = raw_frame.file == str(cprogs.C_DIR / "threads.c")
            assert frame["is_qemu"] == ours, (lwp, frame)
            if ours:
                assert (frame["file"], frame["line"]) == (raw_frame.file, raw_frame.line)
                pointers = {k: int(v, 16) for k, v in frame["pointers"].items() if v}
                assert pointers == _raw_pointer_args(raw_frame), (lwp, frame)
    # the call chains threads.c was written with
    stacks = {name: _functions(got["stacks"][tid]) for name, tid in tids.items()}
    assert _contains_run(stacks["main"], ["chain_three", "chain_two", "chain_one", "main"])
    assert _contains_run(stacks["holder"], ["holder_park", "holder_work", "holder_entry"])
    assert _contains_run(stacks["waiter"], ["qemu_mutex_lock_impl", "waiter_wait",
                                            "waiter_entry"])
    for name in ("abba-1", "abba-2"):
        assert _contains_run(stacks[name], ["qemu_mutex_lock_impl", "abba_take"])
    chr0 = threads.address_of("chr0")
    main_frames = {f["function"]: f for f in got["stacks"][tids["main"]]}
    assert main_frames["chain_two"]["pointers"]["chr"] == f"0x{chr0:x}"
    if threads.binary.name.endswith("-O0"):
        source = cprogs.C_DIR / "threads.c"
        assert main_frames["chain_two"]["line"] == cprogs.source_line(source, "chain_three(chr);")
        assert main_frames["chain_one"]["line"] == cprogs.source_line(source, "chain_two(chr);")
    # a shallow unwind then a deep one; walk_frames stops at its depth
    assert got["shallow"] == _functions(got["stacks"][min(tids.values())])[:2]
    assert got["deep_after_shallow"] == _functions(got["stacks"][min(tids.values())])
    assert got["walk_3"] == [0, 1, 2]


def test_lock_waits_and_thread_refs(threads, mode):
    """Who waits for which lock (blocked in qemu_mutex_lock_impl under glibc frames), and
    where each thread is: its innermost frame of the program, lock plumbing passed over."""
    got, raw_nums, raw_stacks = _run(threads, mode)
    tids = _tids(threads)
    held, abba_a, abba_b = (threads.address_of(k) for k in ("held_lock", "abba_a", "abba_b"))
    assert got["lock_waits"] == {tids["waiter"]: held, tids["abba-1"]: abba_b,
                                 tids["abba-2"]: abba_a}
    assert {lwp: m for lwp, m in got["blocked_on"].items() if m} == got["lock_waits"]
    expected_inner = {"main": "chain_three", "holder": "holder_park", "waiter": "waiter_wait",
                      "abba-1": "abba_take", "abba-2": "abba_take"}
    for name, tid in tids.items():
        assert got["innermost"][tid] == expected_inner[name], name
        ref = got["refs"][tid]
        [raw_frame] = [r for r in raw_stacks[tid] if r.function == expected_inner[name]]
        assert ref == {"lwp": tid, "thread": raw_nums[tid], "name": got["threads"][tid][1],
                       "function": expected_inner[name],
                       "location": f"{raw_frame.file}:{raw_frame.line}"}, name


def test_selection_is_preserved(threads, mode):
    """Unwinding every thread (stacks, lock waits, owners and waiters of a mutex) leaves the
    thread and frame the user had selected selected, as gdb's `thread`/`frame` report."""
    held = threads.address_of("held_lock")
    result = threads.gdb(mode, [
        "thread 3", "frame 2", "thread", "frame",
        py(f"""
            from qemu_chardev.readers import mutex
            from qemu_chardev.target.snapshot import Snapshot
            snap = Snapshot()
            for lwp in snap.threads():
                snap.stack(lwp)
            state = mutex.read_mutex(snap, {held}, "QemuMutex", with_waiters=True)
            mutex.lock_graph(Snapshot())
            emit([len(snap.threads()), len(state.waiters)])
        """),
        "thread", "frame", "python emit(gdb.selected_frame().level())"])
    result.check(2, 3, 4, 5, 6, 7)     # (`thread 3`, `frame 2` complain of glibc's sources)
    before = result.outputs[2:4]
    assert before[0].startswith("[Current thread is 3 ") and before[1].startswith("#2 ")
    assert result.json(4) == [5, 1]           # it did unwind: five threads, one waiter
    assert result.outputs[5:7] == before
    assert result.json(7) == 2


def test_stack_pointers_are_each_threads_sp(threads, mode):
    """Snapshot.stack_pointer (what the census leaves below each stack) is the thread's own sp,
    whether it was read while the stack was unwound or by switching to the thread on its own,
    and a run of switches in switching_threads() leaves the user's selection as it was.
    Ground truth: plain gdb's `thread apply all output $sp` in the same process or core."""
    result = threads.gdb(mode, [
        "thread 2", "frame 1", "thread", "frame",
        py("""
            from qemu_chardev.target.snapshot import Snapshot
            unwound, alone = Snapshot(), Snapshot()
            with unwound.switching_threads():
                for lwp in unwound.threads():
                    unwound.stack(lwp)
            emit({"unwound": {lwp: unwound.stack_pointer(lwp) for lwp in unwound.threads()},
                  "alone": {lwp: alone.stack_pointer(lwp) for lwp in alone.threads()}})
        """),
        "thread", "frame"])
    result.check(2, 3, 4, 5, 6)
    assert result.outputs[5:7] == result.outputs[2:4]
    got = result.json(4)
    raw = threads.raw_commands(mode, ["thread apply all -q output $sp"]).outputs[0]
    # "(void *) 0x7f..." per thread, without newlines: compare as sets of addresses
    expected = {int(word, 16) for word in re.findall(r"0x[0-9a-f]+", raw)}
    assert len(expected) == len(threads.task_ids()) == len(got["unwound"])
    assert set(got["unwound"].values()) == expected
    assert got["alone"] == got["unwound"]
