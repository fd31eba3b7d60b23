"""Damaged and cut-off real cores still give a report (issue #8, "Degrade, never give up").

A heap-damaged gcore of an idle qemu-storage-daemon 7.2, the kernel crash core of the 2019
race cut short (at 90%, at a segment boundary, inside its notes), and a GSource whose count
was zeroed by damage: every report keeps its threads, crash block and locks, says
complete: false with the address that could not be read, and never turns damage into an
error finding.  Exit 2 only for a core that cannot be analysed at all.
"""
import json
import random
import re
import shutil
import struct
import subprocess
import sys

import pytest

import support
from support import postmortem as pm
from support.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "fuzz"))
import mutate  # noqa: E402

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def fixed72():
    return support.require_build("7.2", "fixed")


@pytest.fixture(scope="module")
def reverted72():
    return support.require_build("7.2", "reverted")


@pytest.fixture(scope="module")
def idle(fixed72):
    return pm.idle_core(fixed72)


@pytest.fixture(scope="module")
def race(reverted72):
    return pm.race_core(reverted72)


def gdb_value(binary, core, expression):
    done = subprocess.run(["gdb", "-nx", "-batch", "-ex", f"p/x {expression}", str(binary),
                           "--core", str(core)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    found = re.findall(r"^\$1 = (0x[0-9a-f]+)", done.stdout, re.M)
    assert found, done.stdout + done.stderr
    return int(found[0], 16)


def patch(path, img, address, data):
    with open(path, "r+b") as handle:
        handle.seek(img.offset_of(address))
        handle.write(data)


def damaged_copy(core, path, *patches):
    """A copy of CORE at PATH with each (address, bytes) of PATCHES written over it."""
    shutil.copyfile(core, path)
    img = mutate.CoreImage(path)
    for address, data in patches:
        patch(path, img, address, data)
    return path


def report_of(done):
    obj = json.loads(done.stdout)
    pm.validate_report(obj)
    return obj["reports"][0] if "reports" in obj else obj


def postmortem(binary, core, census=True, fmt="json"):
    options = ["--format", fmt] + ([] if census else [pm.NO_CENSUS])
    return pm.run_postmortem(binary, core, options=options, timeout=300)


@pytest.fixture(scope="module")
def damaged_heap(fixed72, idle, tmp_path_factory):
    """The idle core with the QOM root's property table pointer zeroed and 64 bytes of the
    [heap] flipped (seeded, away from the chardevs' own bytes)."""
    binary = fixed72.storage_daemon
    slot = gdb_value(binary, idle, "&object_get_root::root->properties")
    healthy = report_of(postmortem(binary, idle, census=False))
    keep = [(int(c["address"], 16), 0x200) for c in healthy["chardevs"]]
    path = tmp_path_factory.mktemp("damaged") / "heap.core"
    shutil.copyfile(idle, path)
    img = mutate.CoreImage(path)
    assert img.heap is not None and img.heap.vaddr <= slot < img.heap.vaddr + img.heap.filesz
    patch(path, img, slot, bytes(8))
    rng = random.Random(8)
    flipped = 0
    with open(path, "r+b") as handle:
        while flipped < 64:
            address = img.heap.vaddr + rng.randrange(img.heap.filesz)
            if any(a <= address < a + n for a, n in keep) or abs(address - slot) < 64:
                continue
            handle.seek(img.offset_of(address))
            old = handle.read(1)
            handle.seek(img.offset_of(address))
            handle.write(bytes([old[0] ^ rng.randrange(1, 256)]))
            flipped += 1
    return binary, path, slot, healthy


def test_heap_damaged_core_gives_an_incomplete_report(damaged_heap):
    binary, path, slot, healthy = damaged_heap
    done = postmortem(binary, path)
    assert done.returncode in (0, 1), done.stderr
    report = report_of(done)
    assert report["error"] is None and report["complete"] is False
    root = slot - 16
    assert any(f"0x{root:x}" in p and "property table" in p for p in report["problems"]), \
        report["problems"]
    assert [t["lwp"] for t in report["threads"]] == [t["lwp"] for t in healthy["threads"]]
    assert all(t["frames"] for t in report["threads"])
    assert report["target"]["stop_signal"]["signal"] == 19           # SIGSTOP: a gcore
    # whatever chardevs stayed readable: the QOM walk reached none, the census leads to some
    assert report["chardevs"], report["problems"]
    assert {c["found_by"] for c in report["chardevs"]} <= {"census", "frame"}
    labels = {c["label"]: c for c in report["chardevs"]}
    assert "mon0" in labels and labels["mon0"]["write_lock"]["locked"] is False
    assert not [f for f in report["findings"] if f["severity"] == "error"]


def test_heap_damaged_core_in_text_says_how_each_chardev_was_found(damaged_heap):
    binary, path, slot, _healthy = damaged_heap
    done = postmortem(binary, path, fmt="text")
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert re.search(r"^  mon0 \+ ", done.stdout, re.M), done.stdout
    assert "found through a GSource of the census" in done.stdout
    assert f"0x{slot - 16:x}" in done.stdout            # the problem, with its address


def test_without_the_census_the_report_still_comes(damaged_heap):
    binary, path, _slot, healthy = damaged_heap
    report = report_of(postmortem(binary, path, census=False))
    assert report["complete"] is False and len(report["threads"]) == len(healthy["threads"])


def test_heap_damaged_race_core_keeps_crash_block_locks_and_frame_chardevs(race, tmp_path):
    """The 2019 race's crash core with the QOM root's property table pointer zeroed: the crash
    block, the threads, mon0 (found from the crashing thread's frames) and who holds its
    chr_write_lock are all still there, and so is the error finding."""
    slot = gdb_value(race.binary, race.path, "&object_get_root::root->properties")
    path = damaged_copy(race.path, tmp_path / "race-heap.core", (slot, bytes(8)))
    done = postmortem(race.binary, path)
    assert done.returncode == 1, done.stderr
    report = report_of(done)
    assert report["complete"] is False
    assert any(f"0x{slot - 16:x}" in p for p in report["problems"]), report["problems"]
    assert report["crash"]["signal"] == 11
    assert report["crash"]["lwp"] == race.summary["main_lwp"]
    [mon0] = [c for c in report["chardevs"] if c["label"] == "mon0"]
    assert mon0["found_by"] == "frame" and mon0["in_tree"] is False
    assert mon0["write_lock"]["owner_lwp"] == race.summary["main_lwp"]
    assert "ioc-null-during-write" in [f["id"] for f in report["findings"]
                                       if f["severity"] == "error"]


def test_impossible_values_are_reported_as_damaged_never_trusted(fixed72, idle, tmp_path):
    """mon0's socket state set outside its enum and an ESC byte put in cli0's label: both
    chardevs are still listed, each value is named as damaged, no finding comes of it."""
    binary = fixed72.storage_daemon
    healthy = report_of(postmortem(binary, idle, census=False))
    address = {c["label"]: c["address"] for c in healthy["chardevs"]}
    state = gdb_value(binary, idle, f"&((SocketChardev *){address['mon0']})->state")
    label = gdb_value(binary, idle, f"((Chardev *){address['cli0']})->label")
    path = damaged_copy(idle, tmp_path / "impossible.core",
                        (state, struct.pack("<I", 77)), (label + 1, b"\x1b"))
    done = postmortem(binary, path, census=False)
    assert done.returncode == 0, done.stderr
    report = report_of(done)
    assert report["complete"] is False
    by_address = {c["address"]: c for c in report["chardevs"]}
    mon0, cli0 = by_address[address["mon0"]], by_address[address["cli0"]]
    assert mon0["damaged"] == ["state 77 is outside the TCPChardevState enum"]
    assert cli0["label"] == "cli0"          # the QOM name, not the damaged chr->label
    assert any("chr->label" in d and "printable" in d for d in cli0["damaged"])
    assert any(address["mon0"] in p and "damaged: state 77" in p for p in report["problems"])
    assert not report["findings"] or all(f["severity"] != "error" for f in report["findings"])
    text = postmortem(binary, path, census=False, fmt="text").stdout
    assert "! mon0: damaged: state 77 is outside the TCPChardevState enum" in text
    assert "\x1b" not in text


def test_a_zeroed_object_ref_is_no_use_after_free(race, tmp_path):
    """mon0's Object.ref zeroed in the race core (its class, its chr_write_lock, its place in
    /chardevs and its malloc chunk all say live): damaged, not chardev-use-after-free."""
    address = int(race.summary["writer"]["chardev"]["address"], 16)
    ref = gdb_value(race.binary, race.path, f"&((Object *){address:#x})->ref")
    path = damaged_copy(race.path, tmp_path / "ref0.core", (ref, struct.pack("<I", 0)))
    report = report_of(postmortem(race.binary, path, census=False))
    errors = [f["id"] for f in report["findings"] if f["severity"] == "error"]
    assert errors == ["ioc-null-during-write"]          # the crash itself, nothing made of damage
    assert report["complete"] is False
    assert any(f"0x{address:x}" in p and "damaged" in p for p in report["problems"])
    [judged] = [o for o in report["objects"] if o["kind"] == "chardev"]
    assert judged["verdict"] == "damaged"


def test_found_by_the_campaign_garbage_lock_word_and_a_null_class_type(race, tmp_path):
    """Two cores the fuzz campaign found: a chr_write_lock whose futex word is no glibc state
    (was: "held, owner not recorded", a finding, complete: true) and a listener whose
    ObjectClass.type is NULL (was: an IndexError).  Both are damage, named with the address."""
    healthy = report_of(postmortem(race.binary, race.path, census=False))
    mon0 = next(c for c in healthy["chardevs"] if c["label"] == "mon0")
    lock = int(mon0["write_lock"]["address"], 16)
    klass = gdb_value(race.binary, race.path, f"&((Object *){mon0['listener']})->class->type")
    path = damaged_copy(race.path, tmp_path / "lock-class.core",
                        (lock, b"\x5a" * 4), (klass, bytes(8)))
    done = postmortem(race.binary, path, census=False)
    assert done.returncode == 1, done.stderr
    report = report_of(done)
    assert report["complete"] is False
    assert not any("internal error" in p for p in report["problems"]), report["problems"]
    assert any(f"QemuMutex at 0x{lock:x}: damaged: lock word 0x5a5a5a5a" in p
               for p in report["problems"]), report["problems"]
    assert any("ObjectClass.type is NULL" in p and mon0["listener"] in p
               for p in report["problems"]), report["problems"]
    [after] = [c for c in report["chardevs"] if c["label"] == "mon0"]
    assert after["write_lock"]["locked"] is None and after["write_lock"]["status"] == "unknown"
    ids = [f["id"] for f in report["findings"]]
    assert "ioc-null-during-write" in ids and "write-lock-held" not in ids


def test_found_by_the_campaign_a_zeroed_class_and_next_size_word_is_no_free(race, tmp_path):
    """mon0's class pointer and the size word of the malloc chunk after it zeroed: the
    PREV_INUSE bit reads clear, but a zero is no chunk size and the chunk has no fd link, so
    this is damage, not a freed chardev (was: chardev-use-after-free)."""
    address = int(race.summary["writer"]["chardev"]["address"], 16)
    img = mutate.CoreImage(race.path)
    with open(race.path, "rb") as handle:
        size = struct.unpack("<Q", img.read_at(handle, address - 8, 8))[0] & ~7
    path = damaged_copy(race.path, tmp_path / "class-next.core",
                        (address, bytes(8)), (address - 16 + size + 8, bytes(8)))
    report = report_of(postmortem(race.binary, path, census=False))
    errors = [f["id"] for f in report["findings"] if f["severity"] == "error"]
    assert "chardev-use-after-free" not in errors and "ioc-null-during-write" in errors
    judged = [o for o in report["objects"] if o["kind"] == "chardev"
              and o["address"] == f"0x{address:x}"]
    assert judged and judged[0]["verdict"] == "damaged", judged
    assert report["complete"] is False


def test_found_by_the_campaign_a_negative_owner_and_a_flipped_type_name(race, tmp_path):
    """chr_write_lock's owner set to -1 (was: "held by LWP -1", a write-lock-held warning on a
    complete report) and mon0's type name "chardev-socket" turned into "chardevTsocket" (was:
    listed as a chardev of that type, complete): both are damage, noted."""
    healthy = report_of(postmortem(race.binary, race.path, census=False))
    mon0 = next(c for c in healthy["chardevs"] if c["label"] == "mon0")
    lock = int(mon0["write_lock"]["address"], 16)
    name = gdb_value(race.binary, race.path, f"((Object *){mon0['address']})->class->type->name")
    path = damaged_copy(race.path, tmp_path / "owner-type.core",
                        (lock + 8, b"\xff" * 4), (name + 7, b"T"))
    report = report_of(postmortem(race.binary, path, census=False))
    assert report["complete"] is False
    assert any(f"QemuMutex at 0x{lock:x}: damaged: owner -1 is no thread id" in p
               for p in report["problems"]), report["problems"]
    assert any("'chardevTsocket'" in p and "damaged" in p for p in report["problems"]), \
        report["problems"]
    assert not any(c["type"] == "chardevTsocket" for c in report["chardevs"])
    assert "write-lock-held" not in [f["id"] for f in report["findings"]]


def cut(core, length, tmp_path, name):
    out = tmp_path / name
    with open(core, "rb") as src, open(out, "wb") as dst:
        dst.write(src.read(length))
    return out


def _check_cut_report(done, race):
    assert done.returncode in (0, 1), done.stderr
    report = report_of(done)
    assert report["error"] is None and report["complete"] is False
    missing = report["target"]["missing_ranges"]
    assert missing and all(int(r["end"], 16) > int(r["start"], 16) for r in missing)
    assert any(p.startswith("core file truncated") and missing[0]["start"] in p
               for p in report["problems"])
    assert report["crash"]["signal"] == 11
    assert report["crash"]["lwp"] == race.summary["main_lwp"]
    lwps = {t["lwp"] for t in report["threads"]}
    assert {race.summary["main_lwp"], race.summary["io_lwp"]} <= lwps
    return report


def test_race_core_cut_at_90_percent(race, tmp_path):
    size = race.path.stat().st_size
    path = cut(race.path, size * 9 // 10, tmp_path, "race90.core")
    report = _check_cut_report(postmortem(race.binary, path), race)
    assert sum(r["bytes"] for r in report["target"]["missing_ranges"]) >= size // 10 - 4096


def test_race_core_cut_at_a_segment_boundary(race, tmp_path):
    img = mutate.CoreImage(race.path)
    offsets = sorted({s.offset for s in img.layout.loads if s.filesz})
    boundary = offsets[len(offsets) // 2]
    path = cut(race.path, boundary, tmp_path, "race-seg.core")
    report = _check_cut_report(postmortem(race.binary, path, census=False), race)
    first = min(s.vaddr for s in img.layout.loads if s.offset == boundary and s.filesz)
    assert report["target"]["missing_ranges"][0]["start"] == f"0x{first:x}"
    # the text says it too
    text = postmortem(race.binary, path, census=False, fmt="text")
    assert "core file truncated" in text.stdout and f"0x{first:x}" in text.stdout


def test_race_core_cut_inside_its_notes_is_refused_in_one_line(race, tmp_path):
    img = mutate.CoreImage(race.path)
    with open(race.path, "rb") as handle:
        header = handle.read(64)
    phoff = struct.unpack_from("<Q", header, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", header, 54)
    notes = mutate._note_ranges(str(race.path), phoff, phentsize, phnum)
    start, end = notes[0]
    path = cut(race.path, (start + end) // 2, tmp_path, "race-notes.core")
    done = pm.run_postmortem(race.binary, path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "truncated (notes cut off)" in lines[0], done.stderr
    assert img.layout.loads


def test_a_gsource_count_zeroed_by_damage_is_no_use_after_free(fixed72, idle, tmp_path):
    """mon0's hup_source with ref_count 0 but priv and the rest intact, in a malloc chunk in
    use: damage, not a freed source (issue #8's false gsource-use-after-free)."""
    binary = fixed72.storage_daemon
    healthy = report_of(postmortem(binary, idle, census=False))
    mon0 = next(c for c in healthy["chardevs"] if c["label"] == "mon0")
    source = next(g for g in mon0["gsources"] if g["role"] == "hup_source")
    path = damaged_copy(idle, tmp_path / "refzero.core",
                        (int(source["address"], 16) + 24, struct.pack("<I", 0)))
    done = postmortem(binary, path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    report = report_of(done)
    assert not [f for f in report["findings"] if f["severity"] == "error"]
    assert report["complete"] is False
    assert any(source["address"] in p and "damaged, not freed" in p
               for p in report["problems"]), report["problems"]
