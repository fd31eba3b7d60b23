"""Report rendering (text, Markdown, JUnit, JSON envelope) and the report schema, without gdb."""
import copy
import json
import pathlib
import xml.etree.ElementTree as ET

import jsonschema
import pytest

from qemu_chardev.analysis import findings
from qemu_chardev.model import diagnosis
from qemu_chardev.render import report as report_render
from qemu_chardev.model.diagnosis import (CrashFacts, DiagnosisInput, DisconnectLocking,
                                          ThreadFacts, frame_json)
from qemu_chardev.model.objects import Frame
from qemu_chardev.model.qemu import display_path
from qemu_chardev.model.objects import ChardevState, MutexState

SCHEMA = json.loads((pathlib.Path(__file__).resolve().parents[2] / "docs" /
                     "report-schema.json").read_text())
MON = 0x55d0c0a3e2b0
MAIN = 4001


def crash_frames():
    return [Frame(0, "object_get_class", "qom/object.c", 1008),
            Frame(1, "qio_channel_writev_full", "io/channel.c", 78, [("ioc", "QIOChannel", 0)]),
            Frame(2, "tcp_chr_write", "chardev/char-socket.c", 112, [("chr", "Chardev", MON)]),
            Frame(3, "qemu_chr_write_buffer", "chardev/char.c", 121, [("s", "Chardev", MON)])]


def race_report():
    """A report dict as report.build_report makes it, from plain models."""
    lock = MutexState(address=MON + 40, kind="QemuMutex", locked=True, owner_lwp=MAIN)
    mon = ChardevState(address=MON, label="mon|0", type="chardev-socket", is_socket=True,
                       state="disconnected", write_lock=lock)
    facts = DiagnosisInput(threads=[ThreadFacts(MAIN, 1, None, crash_frames())],
                           chardevs=[mon], crash=CrashFacts(11, MAIN, 1, 1, 0),
                           disconnect_locking=DisconnectLocking(False, "no lock"))
    found = findings.diagnose(facts)
    return {
        "schema": "qemu-chardev-report/1", "tool": {"name": "qemu-chardev-gdb", "version": "0"},
        "target": {"kind": "core", "binary": "/b/qemu-storage-daemon", "core": "/c/core.1",
                   "pid": MAIN, "build_id": "ab12", "qemu_version": "7.2.22",
                   "core_program": "qemu-storage-da", "stop_signal": None,
                   "disconnect_locking": facts.disconnect_locking.to_json()},
        "complete": True, "problems": [], "error": None,
        "crash": {"signal": 11, "signal_name": "SIGSEGV", "code": 1, "code_name": "SEGV_MAPERR",
                  "fault_address": "0x0", "lwp": MAIN, "thread": 1, "signal_source": "siginfo",
                  "frames": [frame_json(f, "    return obj->class;" if f.level == 0 else None)
                             for f in crash_frames()]},
        "threads": [{"thread": 1, "lwp": MAIN, "name": None, "crashed": True,
                     "function": "object_get_class", "location": "qom/object.c:1008",
                     "waiting_on": None, "waiting_for": None, "holds_write_lock_of": ["mon|0"],
                     "frames": [frame_json(f) for f in crash_frames()]}],
        "chardevs": [mon.to_json()], "tasks": [], "sections": {},
        "findings": [f.to_json() for f in found],
        "summary": diagnosis.count_by_severity(found),
    }


def unusable(path, reason):
    return {"schema": "qemu-chardev-report/1", "tool": {"name": "x", "version": "0"},
            "target": {"kind": "core", "binary": "/b/qemu-storage-daemon", "core": path,
                       "qemu_version": None},
            "complete": False, "problems": [reason], "error": reason, "crash": None,
            "threads": [], "chardevs": [], "findings": [],
            "summary": {"error": 0, "warning": 0, "info": 0},
            "postmortem": {"input": path, "seconds": 0.1}}


def validator():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    return jsonschema.Draft202012Validator(SCHEMA)


def test_schema_accepts_reports_and_the_envelope():
    v = validator()
    one = race_report()
    v.validate(one)
    v.validate(report_render.envelope([one, unusable("/c/x", "no such file")]))
    assert report_render.envelope([one]) is one


@pytest.mark.parametrize("break_it", [
    lambda r: r.pop("findings"),
    lambda r: r["findings"][0].__setitem__("severity", "fatal"),
    lambda r: r["chardevs"][0].pop("write_lock"),
    lambda r: r["chardevs"][0].__setitem__("ioc", "NULL"),
    lambda r: r.__setitem__("schema", "qemu-chardev-report/2"),
    lambda r: r["crash"].__setitem__("lwp", 0),
    lambda r: r.__setitem__("error", "gdb crashed"),      # an error report must be incomplete
])
def test_schema_rejects_broken_reports(break_it):
    report = race_report()
    break_it(report)
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(report)


def test_text_report_sections_and_colour():
    report = race_report()
    plain = report_render.text(report)
    for heading in ("Crash", "Chardevs", "Threads", "Findings"):
        assert f"\n{heading}\n" in plain
    assert "SIGSEGV (SEGV_MAPERR) at address 0x0 in thread 1 (LWP 4001)" in plain
    assert " >#1  qio_channel_writev_full (ioc=NULL) at io/channel.c:78" in plain
    assert "return obj->class;" in plain and "\x1b[" not in plain
    assert "ERROR ioc-null-during-write" in plain and "tcp_chr_disconnect takes" in plain
    coloured = report_render.text(report, colour=True)
    assert "\x1b[" in coloured
    if not report_render.render.MISSING_OPTIONAL:        # pygments colours the source line
        assert "return obj->class;" not in coloured


def test_text_of_unusable_core_is_its_reason():
    assert report_render.text(unusable("/c/x", "no such file")) == \
        "/c/x: not analysed: no such file"


def test_markdown_escapes_cells_and_lists_every_core():
    md = report_render.markdown([race_report(), unusable("/c/x", "no such file")])
    assert "| `/c/core.1` | 7.2.22 | SIGSEGV | 1 | 0 | **FAIL** `ioc-null-during-write` |" in md
    assert "| mon\\|0 |" in md                       # a pipe in a label stays in its cell
    assert "**not analysed**: no such file" in md
    assert report_render.markdown([]).endswith("No core files to analyse.\n")


def test_junit_counts_and_xml_safety():
    bad = race_report()
    bad["findings"][0]["summary"] += "\x01\x1b"      # control bytes from target memory
    doc = report_render.junit([bad, copy.deepcopy(race_report()), unusable("/c/x", "boom")])
    root = ET.fromstring(doc)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "2", "1")
    [suite] = root
    assert [c.get("name") for c in suite] == ["/c/core.1", "/c/core.1", "/c/x"]
    failure = suite[0].find("failure")
    assert failure.get("type") == "ioc-null-during-write" and "\x01" not in failure.get("message")
    assert suite[2].find("error").get("type") == "unusable-core"


def test_display_path_shortens_build_tree_headers():
    assert display_path("/root/src/qemu-7.2/include/qemu/futex.h") == "include/qemu/futex.h"
    assert display_path("chardev/char.c") == "chardev/char.c" and display_path(None) is None


def test_report_json_indents_sections_and_puts_each_item_on_a_line():
    report = {"schema": "qemu-chardev-report/1", "target": {"kind": "core", "pid": 7},
              "problems": [], "chardevs": [{"label": "mon0", "state": "connected",
                                             "write_lock": {"locked": True, "owner_lwp": 5}},
                                            {"label": "caf\u00e9 \"q\"\n", "ioc": None}],
              "sections": {}, "findings": [{"id": "deadlock", "threads": [1, 2]}]}
    text = report_render.envelope_json([report])
    assert json.loads(text) == report
    lines = text.splitlines()
    # the report's keys and each section's items are indented; an item is one line
    assert '  "chardevs": [' in lines
    assert sum(1 for line in lines if line.startswith('    {"label": ')) == 2
    assert '    "pid": 7' in lines
    assert any(line.startswith('    {"id": "deadlock", "threads": [1, 2]}') for line in lines)
    assert '  "problems": [],' in lines and '  "sections": {},' in lines
    several = report_render.envelope_json([report, report])
    assert json.loads(several) == {"schema": "qemu-chardev-report/1",
                                   "reports": [report, report]}
    assert sum(1 for line in several.splitlines()
               if line.startswith('        {"label": ')) == 4
