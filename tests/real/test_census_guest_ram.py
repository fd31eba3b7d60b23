"""The GSource census of a qemu-system-x86_64 core skips the guest's RAM and TCG's code buffer.

QEMU 7.2 built for x86_64-softmmu (fixtures/qemu/build-qemu 7.2 system-x86_64: -O2 -g, TCG),
run as `-M none -nodefaults -m 1024`, gcore'd.  Ground truth: plain gdb walking `ram_list` and
printing `tcg_init_ctx`, and the live process's /proc/PID/maps; then the census with and
without the skip (in the same gdb) must find the same GSources.
"""
import os
import subprocess
import time

import pytest

import support

# needs the qemu-system-x86_64 build, which scripts/run-tests starts in the background
pytestmark = pytest.mark.late

GUEST_MIB = 1024
WALK_RAM_LIST = "python exec(" + repr(
    "b = gdb.parse_and_eval('ram_list.blocks.lh_first')\n"
    "while int(b):\n"
    "    gdb.write('RAMBLOCK %s 0x%x %d %d\\n' % (b['idstr'].string(), int(b['host']),"
    " int(b['max_length']), int(b['used_length'])))\n"
    "    b = b['next']['le_next']\n") + ")"
SAME_WITHOUT_SKIP = "python exec(" + repr(
    "from qemu_chardev.readers import census, not_heap\n"
    "from qemu_chardev.target.snapshot import Snapshot\n"
    "a = census.take_census(Snapshot())\n"
    "not_heap.not_heap = lambda *args: []\n"
    "b = census.take_census(Snapshot())\n"
    "key = lambda c: sorted((r.address, r.state) for r in c.records)\n"
    "gdb.write('SKIPPED %d %d SAME %s N %d\\n' % (a.bytes_skipped, b.bytes_skipped,"
    " key(a) == key(b), len(a.records)))\n") + ")"


@pytest.fixture(scope="module")
def system_core(session_workdir):
    """(binary, core, {start: size} of the live process's writable mappings)."""
    build = support.require_build("7.2", "system-x86_64")
    binary = build.build_dir / "qemu-system-x86_64"
    qmp = session_workdir / "sys-qmp.sock"
    proc = subprocess.Popen([str(binary), "-M", "none", "-nodefaults", "-display", "none",
                             "-m", str(GUEST_MIB), "-qmp", f"unix:{qmp},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not qmp.exists():
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
            assert time.monotonic() < deadline, "qemu-system-x86_64 did not start"
            time.sleep(0.05)
        time.sleep(0.5)
        maps = {}
        with open(f"/proc/{proc.pid}/maps") as f:
            for line in f:
                span, perms = line.split()[:2]
                start, end = (int(x, 16) for x in span.split("-"))
                if "w" in perms:
                    maps[start] = end - start
        core = support.gcore(proc.pid, session_workdir / "system.core", binary=binary)
    finally:
        proc.kill()
        proc.wait()
    return binary, core, maps


def test_census_skips_guest_ram_and_tcg_buffer(system_core):
    binary, core, maps = system_core
    truth = support.run_gdb(binary, core=core, extension=False,
                            commands=[WALK_RAM_LIST,
                                      "output/x tcg_init_ctx.code_gen_buffer",
                                      "output tcg_init_ctx.code_gen_buffer_size"]).check()
    blocks = [line.split()[1:] for line in truth.outputs[0].splitlines()
              if line.startswith("RAMBLOCK")]
    assert blocks, truth.describe()
    ram = {int(host, 16): int(max_length) for _name, host, max_length, _used in blocks}
    guest = [host for host, size in ram.items() if size == GUEST_MIB << 20]
    assert len(guest) == 1, blocks
    # /proc/PID/maps: the guest RAM is one writable mapping of at least 1 GiB at host
    containing = [s for s, size in maps.items() if s <= guest[0] < s + size]
    assert containing and maps[containing[0]] >= GUEST_MIB << 20
    tcg_start = int(truth.outputs[1], 16)
    tcg_size = int(truth.outputs[2])
    assert tcg_start and tcg_size > 0

    out = support.run_gdb(binary, core=core, commands=["qemu gsource census --json"]).json(0)
    census = out["census"]
    skipped = census["skipped"]
    by_what = {}
    for span in skipped:
        by_what.setdefault(span["what"], []).append(span)
    ram_spans = {int(s["start"], 16): s for s in by_what.get("guest RAM", [])}
    # every RAMBlock that lies in the core's writable memory is skipped whole
    assert guest[0] in ram_spans, skipped
    assert ram_spans[guest[0]]["bytes"] == GUEST_MIB << 20
    assert ram_spans[guest[0]]["end"] == f"0x{guest[0] + (GUEST_MIB << 20):x}"
    tcg = by_what.get("TCG code buffer", [])
    # the buffer from its page (the prologue) to code_gen_buffer + code_gen_buffer_size
    assert len(tcg) == 1 and int(tcg[0]["start"], 16) == tcg_start & ~0xfff, skipped
    assert int(tcg[0]["end"], 16) == tcg_start + tcg_size, skipped
    assert 0 < tcg[0]["bytes"] <= tcg_size + (tcg_start & 0xfff)
    assert census["bytes_skipped"] == sum(s["bytes"] for s in skipped)
    assert census["bytes_skipped"] >= (GUEST_MIB << 20)
    # what is left to scan is far smaller than the guest RAM
    assert census["bytes_scanned"] < (GUEST_MIB << 20) // 4, census["bytes_scanned"]
    assert census["counts"]["attached"] > 0, census["counts"]


def test_census_finds_the_same_gsources_without_the_skip(system_core):
    binary, core, _maps = system_core
    result = support.run_gdb(binary, core=core, commands=[SAME_WITHOUT_SKIP]).check()
    line = next(l for l in result.outputs[0].splitlines() if l.startswith("SKIPPED"))
    _, with_skip, without_skip, _, same, _, count = line.split()
    assert int(with_skip) >= GUEST_MIB << 20 and int(without_skip) == 0, line
    assert same == "True" and int(count) > 0, line


def test_diagnose_report_says_what_was_skipped(system_core):
    binary, core, _maps = system_core
    report = support.run_gdb(binary, core=core, commands=["qemu diagnose --json"]).json(0)
    section = report["sections"]["gsource_census"]
    assert {s["what"] for s in section["skipped"]} >= {"guest RAM", "TCG code buffer"}
    text = support.run_gdb(binary, core=core, commands=["qemu gsource census"]).check()
    line = next(l for l in text.outputs[0].splitlines() if "not scanned (not heap):" in l)
    assert "guest RAM 1024.0 MiB" in line and "TCG code buffer" in line, line
    assert os.path.getsize(core) > GUEST_MIB << 20 or section["bytes_skipped"] > 0
