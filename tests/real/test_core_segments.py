"""The census's segment table from gdb equals pyelftools' reading of the same core file.

``readers.process_memory`` takes a core's PT_LOAD segments from gdb's `maint info sections`
and its NT_FILE mappings from `info proc mappings` instead of parsing the file again with
pyelftools (whose import costs 60-80 ms of every `qemu diagnose`).  Both readings must give
the same memory: the same bytes at the same addresses, the same writability, the same count of
bytes a truncated file lacks, the same file-backed mappings.  Checked on a gcore (gdb's own
writer), on the kernel's SIGSEGV core of the 2019 race (read-only file mappings left out:
segments whose memory is larger than their file part, which BFD splits in two) and on that core
cut short at 60% and at a segment boundary.
"""
import json
import shutil

import pytest

import support
from support import postmortem as pm

pytestmark = pytest.mark.real

# Both readings of the core gdb has open, as JSON: each region with its file bytes
# [start, start + size) at file offset, and the address space it covers; missing bytes;
# mappings.  Pieces BFD split from one segment are joined again before comparing.
COMPARE = "python exec(" + repr("""
import json, os
from qemu_chardev.files import memscan
from qemu_chardev.readers import process_memory
from qemu_chardev.target import inferior
path = inferior.core_file_path()
def shape(segments):
    regions, missing, mappings = segments
    contents = sorted((r.start, r.size, r.offset, r.writable) for r in regions if r.size)
    covered = memscan.RegionMap(regions)
    spans = [[s, e] for s, e in zip(covered._starts, covered._ends)]
    return {"contents": contents, "covered": spans, "missing": missing,
            "mappings": sorted(mappings)}
from_gdb = process_memory.segments_from_gdb(os.stat(path).st_size)
print(json.dumps({"gdb": shape(from_gdb) if from_gdb else None,
                  "pyelftools": shape(memscan.core_regions(path))}))
""") + ")"


@pytest.fixture(scope="module")
def race():
    return pm.race_core(support.require_build("7.2", "reverted"))


@pytest.fixture(scope="module")
def idle():
    build = support.require_build("7.2", "fixed")
    return build.storage_daemon, pm.idle_core(build)


def readings(binary, core):
    out = support.run_gdb(binary, core=core, commands=[COMPARE]).check().outputs[0]
    return json.loads(out.strip().splitlines()[-1])


def assert_same(both):
    from_gdb, from_file = both["gdb"], both["pyelftools"]
    assert from_gdb is not None, "gdb's section listing could not be read"
    assert from_file["contents"] and from_file["mappings"]
    assert from_gdb == from_file


def test_gcore_segments_are_the_same(idle):
    assert_same(readings(*idle))


def test_kernel_core_segments_are_the_same(race):
    both = readings(race.binary, race.path)
    assert_same(both)
    # the kernel core leaves file contents out: address space without file bytes
    covered = sum(e - s for s, e in both["gdb"]["covered"])
    assert covered > sum(size for _s, size, _o, _w in both["gdb"]["contents"])


@pytest.mark.parametrize("where", ["60%", "segment boundary"])
def test_truncated_core_segments_and_missing_bytes_are_the_same(race, tmp_path, where):
    size = race.path.stat().st_size
    if where == "60%":
        length = size * 6 // 10
    else:
        offsets = sorted({o for _s, _size, o, _w in readings(race.binary, race.path)
                          ["pyelftools"]["contents"]})
        length = offsets[len(offsets) // 2]
    cut = tmp_path / "cut.core"
    with open(race.path, "rb") as src, open(cut, "wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.truncate(length)
    both = readings(race.binary, cut)
    assert_same(both)
    assert both["gdb"]["missing"] > 0
