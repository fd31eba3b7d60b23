"""Liveness verdicts and the lifecycle findings, from synthesized evidence.

The chunk words below are those of a real qemu-storage-daemon 7.2 core after `chardev-remove`
(a 352-byte SocketChardev chunk, last in its tcache bin); the rules are also checked on real
cores in tests/real/.
"""
from qemu_chardev.analysis import findings, lifecycle
from qemu_chardev.analysis import liveness as judge
from qemu_chardev.model import glibc
from qemu_chardev.model.diagnosis import CrashFacts, DiagnosisInput, ThreadFacts
from qemu_chardev.model.liveness import (ALIVE, CHUNK_FREE, CHUNK_IN_USE, CHUNK_UNKNOWN,
                                         DAMAGED, FINALIZED, FREED, ChunkFacts, Holder,
                                         ObjectLiveness)
from qemu_chardev.model.objects import Frame

ADDR = 0x559A8A348860
KEY = 0x65E89A8A350CAFF0
MAIN = 100


def freed_chunk(key=KEY):
    return ChunkFacts(address=ADDR, size_word=0x160, word0=ADDR >> 12, word1=KEY,
                      next_size_word=0x31, tcache_key=key)


def live_chunk():
    return ChunkFacts(address=ADDR, size_word=0x161, word0=0x559A89000000,
                      word1=0x7F0000001234, next_size_word=0x31, tcache_key=KEY)


def test_tcache_key_makes_a_chunk_free():
    chunk = judge.judge_chunk(freed_chunk(), object_size=336)
    assert chunk.state == CHUNK_FREE and "tcache" in chunk.evidence[0]
    assert "next free chunk none" in chunk.evidence[0]   # word0 reveals to 0: last in its bin


def test_next_chunk_prev_inuse_clear_makes_a_chunk_free():
    chunk = ChunkFacts(address=ADDR, size_word=0x511, word0=1, word1=2, next_size_word=0x30,
                       tcache_key=KEY)
    assert judge.judge_chunk(chunk, 336).state == CHUNK_FREE


def test_without_the_key_a_chunk_is_not_called_free():
    chunk = judge.judge_chunk(freed_chunk(key=None), 336)
    assert chunk.state == CHUNK_UNKNOWN and "free-list link" in chunk.evidence[0]
    assert judge.judge_chunk(live_chunk(), 336).state == CHUNK_IN_USE


def test_no_chunk_header_is_unknown():
    chunk = ChunkFacts(address=ADDR, size_word=0x7, word0=0, word1=0)
    assert judge.judge_chunk(chunk, 336).state == CHUNK_UNKNOWN
    assert not glibc.plausible_size_word(0x20, 336)       # too small to hold the object
    assert glibc.plausible_size_word(0x161, 336)


def _obj(chunk):
    obj = ObjectLiveness(address=ADDR, kind="chardev")
    obj.chunk = judge.judge_chunk(chunk, 336) if chunk else None
    return obj


def test_qom_verdicts():
    assert judge.judge_qom(_obj(live_chunk()), ["chardev-socket", "chardev"], 2).verdict == ALIVE
    freed = judge.judge_qom(_obj(freed_chunk()), None, 0, ["its chr_write_lock was destroyed"])
    assert freed.verdict == FREED and freed.dead
    assert judge.judge_qom(_obj(live_chunk()), ["chardev-socket"], 0,
                           finalizing=True).verdict == FINALIZED
    assert judge.judge_qom(_obj(None), None, 0, ["lock destroyed"]).verdict == FINALIZED


def test_impossible_fields_with_an_in_use_chunk_are_damage_not_a_free():
    damaged = judge.judge_qom(_obj(live_chunk()), None, 7)
    assert damaged.verdict == DAMAGED and not damaged.dead
    assert any("damage, not a free" in e for e in damaged.evidence)
    # A "live" object in a free chunk contradicts itself: damage too.
    assert judge.judge_qom(_obj(freed_chunk()), ["chardev-socket"], 1).verdict == DAMAGED


def test_gsource_and_task_and_mutex_verdicts():
    src = ObjectLiveness(address=ADDR, kind="gsource")
    src.chunk = judge.judge_chunk(live_chunk(), 96)
    assert judge.judge_gsource(src, 0, 1, 0x1000, 0).verdict == DAMAGED  # ref 0, chunk in use
    src = ObjectLiveness(address=ADDR, kind="gsource")
    assert judge.judge_gsource(src, 0, 1, 0x1000, 0).verdict == FREED      # no chunk facts


def test_a_gsource_with_a_zero_count_and_intact_fields_is_damage_not_a_free():
    """GLib frees and NULLs priv before it frees a source: ref_count 0 with priv still set
    and a chunk the allocator does not call free is a damaged count (the false
    gsource-use-after-free of issue #8's campaign)."""
    src = ObjectLiveness(address=ADDR, kind="gsource")
    damaged = judge.judge_gsource(src, 0, 1, 0x1000, 0, priv=0x5555_0000_1000)
    assert damaged.verdict == DAMAGED and not damaged.dead
    assert any("damage, not a free" in e for e in damaged.evidence)
    src = ObjectLiveness(address=ADDR, kind="gsource")
    assert judge.judge_gsource(src, 0, 1, 0x1000, 0, priv=0).verdict == FREED
    src = ObjectLiveness(address=ADDR, kind="gsource")
    src.chunk = judge.judge_chunk(freed_chunk(), 96)
    assert judge.judge_gsource(src, 0, 1, 0x1000, 0, priv=0x5555_0000_1000).verdict == FREED


def test_a_zero_qom_ref_alone_is_damage_unless_a_finalizer_runs_or_signs_agree():
    """One zeroed word (Object.ref) of a chardev whose class, lock and chunk say live is not
    a finalized chardev: the campaign of issue #8 turned it into chardev-use-after-free."""
    damaged = judge.judge_qom(_obj(live_chunk()), ["chardev-socket", "chardev"], 0)
    assert damaged.verdict == DAMAGED
    assert any("a damaged count" in e for e in damaged.evidence)
    assert judge.judge_qom(_obj(live_chunk()), ["chardev-socket"], 0,
                           finalizing=True).verdict == FINALIZED
    assert judge.judge_qom(_obj(live_chunk()), ["chardev-socket"], 0,
                           ["its chr_write_lock was destroyed"]).verdict == FINALIZED
    assert judge.judge_qom(_obj(None), ["chardev-socket"], 0).verdict == FINALIZED


def test_a_misaligned_pointer_has_no_chunk_and_names_no_free_gsource():
    """A flipped low byte makes a pointer point inside some object: its "header" is garbage,
    whatever it reads; the source it names is damaged, not freed."""
    chunk = freed_chunk()
    chunk.address += 1
    assert judge.judge_chunk(chunk, 96).state == "unknown"
    src = ObjectLiveness(address=ADDR + 1, kind="gsource")
    src.chunk = judge.judge_chunk(chunk, 96)
    assert judge.judge_gsource(src, 1 << 30, 0x7f, 0, 0).verdict == DAMAGED


def test_a_clear_prev_inuse_bit_is_a_free_only_with_a_size_and_an_fd_link():
    """Campaign find: mon0's class pointer and the next chunk's size word zeroed read as a
    chunk "free in a malloc bin" and made chardev-use-after-free."""
    binned = ChunkFacts(address=ADDR, size_word=0x161, word0=0x7F0000001234, word1=0x7F00000012,
                        next_size_word=0x30, tcache_key=KEY)
    assert judge.judge_chunk(binned, 336).state == CHUNK_FREE
    zero_next = ChunkFacts(address=ADDR, size_word=0x161, word0=0x7F0000001234, word1=1,
                           next_size_word=0, tcache_key=KEY)
    assert judge.judge_chunk(zero_next, 336).state == "unknown"
    no_fd = ChunkFacts(address=ADDR, size_word=0x161, word0=0, word1=1, next_size_word=0x30,
                       tcache_key=KEY)
    assert judge.judge_chunk(no_fd, 336).state == "unknown"
    obj = _obj(judge.judge_chunk(ChunkFacts(address=ADDR, size_word=0x161, word0=0, word1=1,
                                            next_size_word=0, tcache_key=KEY), 336))
    assert judge.judge_qom(obj, None, 1).verdict == DAMAGED


def test_task_and_mutex_verdicts():
    task = ObjectLiveness(address=ADDR, kind="task")
    task.chunk = judge.judge_chunk(freed_chunk(), 64)
    assert judge.judge_task(task, None).verdict == FREED
    assert judge.judge_task(ObjectLiveness(address=ADDR, kind="task"),
                            "qemu_chr_socket_connected").verdict == ALIVE
    mutex = ObjectLiveness(address=ADDR + 0x40, kind="mutex")
    assert judge.judge_mutex(mutex, False, False).verdict == FINALIZED


def _abort_facts(obj):
    frames = [Frame(level=0, function="__pthread_kill_implementation", is_qemu=False),
              Frame(level=4, function="qemu_mutex_lock_impl", file="util/qemu-thread-posix.c",
                    line=88, pointers=[("mutex", "QemuMutex", ADDR + 0x40)]),
              Frame(level=6, function="qemu_chr_socket_connected",
                    file="chardev/char-socket.c", line=1100,
                    pointers=[("opaque", "Chardev", ADDR)])]
    return DiagnosisInput(
        threads=[ThreadFacts(lwp=MAIN, num=1, frames=frames)],
        crash=CrashFacts(signal=6, lwp=MAIN, thread=1),
        objects=[obj],
        assertion={"file": "../util/qemu-thread-posix.c", "line": 88,
                   "function": "qemu_mutex_lock_impl", "expression": "mutex->initialized",
                   "text": "..."})


def test_a_freed_chardev_held_by_the_crashing_frames_is_a_use_after_free():
    obj = judge.judge_qom(_obj(freed_chunk()), None, 0, ["its chr_write_lock was destroyed"])
    obj.holders.append(Holder(what="frame #6 qemu_chr_socket_connected: opaque (LWP 100)",
                              lwp=MAIN, thread=1, level=6,
                              function="qemu_chr_socket_connected"))
    found = findings.diagnose(_abort_facts(obj))
    assert [f.id for f in found] == ["chardev-use-after-free"]
    assert found[0].severity == "error" and "freed" in found[0].summary
    assert "mutex->initialized" in found[0].detail and "tcache" in found[0].detail


def test_a_chardev_crash_nothing_explains_still_gives_an_error():
    alive = judge.judge_qom(_obj(live_chunk()), ["chardev-socket"], 1)
    alive.holders.append(Holder(what="frame #6", lwp=MAIN, thread=1, level=6))
    found = findings.diagnose(_abort_facts(alive))
    assert [f.id for f in found] == [lifecycle.CHARDEV_CRASH]
    assert "chardev" in found[0].evidence["roles"] and "lock" in found[0].evidence["roles"]
    assert "alive" in found[0].detail


def test_a_crash_elsewhere_is_not_a_chardev_crash():
    facts = DiagnosisInput(threads=[ThreadFacts(lwp=MAIN, num=1, frames=[
        Frame(level=0, function="memcpy", is_qemu=False),
        Frame(level=1, function="blk_aio_write", file="block/block-backend.c", line=3)])],
        crash=CrashFacts(signal=11, lwp=MAIN, thread=1))
    assert findings.diagnose(facts) == []


def test_every_finding_names_its_objects_with_their_liveness():
    obj = judge.judge_qom(_obj(freed_chunk()), None, 0, ["its chr_write_lock was destroyed"])
    obj.holders.append(Holder(what="frame #6", lwp=MAIN, thread=1, level=6))
    found = findings.diagnose(_abort_facts(obj))
    assert found and all(f.evidence["liveness"] for f in found)
    assert found[0].evidence["liveness"][0] == {"address": f"0x{ADDR:x}", "kind": "chardev",
                                                "label": None, "verdict": FREED}
