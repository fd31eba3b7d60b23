"""Damaged and cut-off cores (issue #8): missing ranges, truncation in the report, how a
chardev was found, and the fuzzer's mutations and truncation points (no gdb)."""
import random
import sys

import elfbuild as eb
from qemu_chardev.files import elf as corefile
from qemu_chardev.files.elf import LoadSegment, missing_ranges
from qemu_chardev.model import diagnosis
from qemu_chardev.model.objects import ChardevState

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "fuzz"))
import mutate  # noqa: E402


def seg(vaddr, filesz, present, offset=0):
    return LoadSegment(vaddr, filesz, offset, filesz, 6, present)


def test_missing_ranges_merge_adjacent_segments_and_skip_whole_ones():
    loads = [seg(0x3000, 0x1000, 0), seg(0x1000, 0x1000, 0x1000), seg(0x2000, 0x1000, 0x800),
             seg(0x9000, 0x1000, 0)]
    assert missing_ranges(loads) == [(0x2800, 0x4000), (0x9000, 0xa000)]
    assert missing_ranges([seg(0x1000, 0x1000, 0x1000)]) == []


def test_a_truncated_report_says_so_once_with_its_ranges():
    report = diagnosis.new_report(diagnosis.new_target("core"))
    assert report["complete"] is True
    missing = [(0x1000 * i, 0x1000 * i + 0x10) for i in range(1, 12)]
    for _ in range(2):
        diagnosis.mark_truncated(report, "truncated (10 of 20 bytes)", missing)
    assert report["complete"] is False
    [problem] = report["problems"]
    assert problem.startswith("core file truncated (10 of 20 bytes): 176 bytes")
    assert "0x1000-0x1010" in problem and "and 3 more" in problem
    assert report["target"]["missing_ranges"][0] == {"start": "0x1000", "end": "0x1010",
                                                     "bytes": 16}
    assert len(report["target"]["missing_ranges"]) == 11


def test_found_by_and_damaged_fields():
    qom = ChardevState(address=0x10, label="mon0", type="chardev-socket", in_tree=True,
                       found_via="qom")
    frame = ChardevState(address=0x20, label="x", type=None, in_tree=False,
                         found_via="frame of tcp_chr_write (LWP 7)")
    census = ChardevState(address=0x30, label="y", type=None, in_tree=False,
                          found_via="census: IOWatchPoll 0x40 opaque")
    census.problems.append("damaged: state 9 is outside the TCPChardevState enum")
    assert [diagnosis.found_by(c) for c in (qom, frame, census)] == ["qom", "frame", "census"]
    assert "damaged" not in diagnosis.chardev_json(qom)
    out = diagnosis.chardev_json(census)
    assert out["found_by"] == "census"
    assert out["damaged"] == ["state 9 is outside the TCPChardevState enum"]


def _core(tmp_path):
    notes = (eb.note(eb.NT_PRSTATUS, b"CORE", eb.prstatus(7, 11))
             + eb.note(eb.NT_PRPSINFO, b"CORE", eb.prpsinfo(b"qemu-storage-da", 7)))
    loads = [(0x555500000000, eb.PF_R | eb.PF_W, b"\x11" * 8192),
             (0x7f0000000000, eb.PF_R | eb.PF_W, b"\x22" * 4096)]
    return eb.core(notes, loads=loads).write(tmp_path / "c")


def test_truncation_points_and_which_are_unusable(tmp_path):
    path = _core(tmp_path)
    img = mutate.CoreImage(path)
    points = dict(mutate.truncations(img, random.Random(1)))
    for name in ("inside ELF header", "inside program headers", "inside notes"):
        cut = mutate.truncation(img, random.Random(1), (name, points[name]))
        assert mutate.expected_unusable(cut, img), name
        data = path.read_bytes()[:points[name]]
        (tmp_path / "cut").write_bytes(data)
        try:
            corefile.read_core(str(tmp_path / "cut"))
        except corefile.ElfError:
            pass
        else:
            raise AssertionError(f"{name}: read_core accepted it")
    for name in ("right after notes", "at a segment boundary", "at 50%"):
        cut = mutate.truncation(img, random.Random(1), (name, points[name]))
        assert not mutate.expected_unusable(cut, img), name
        (tmp_path / "cut").write_bytes(path.read_bytes()[:points[name]])
        info = corefile.read_core(str(tmp_path / "cut"))
        assert info.lwps == [7]


def test_memory_mutations_stay_inside_writable_segments_and_undo(tmp_path):
    path = _core(tmp_path)
    original = path.read_bytes()
    img = mutate.CoreImage(path)
    rng = random.Random(5)
    with open(path, "rb") as handle:
        for make in (lambda: mutate.flip_bytes(img, rng, handle, img.writable, 16),
                     lambda: mutate.zero_words(img, rng, handle, img.writable, 4),
                     lambda: mutate.read_set_mutation(img, rng, handle,
                                                      [(0x555500000100, 64)], 4)):
            mutation = make()
            for address, size in mutation.touched:
                assert img.segment_of(address) is not None
                assert img.segment_of(address + size - 1) is not None
            saved = mutate.apply(path, mutation)
            assert path.read_bytes() != original
            mutate.undo(path, saved)
            assert path.read_bytes() == original
