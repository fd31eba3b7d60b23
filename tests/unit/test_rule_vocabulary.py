"""One vocabulary for report findings and watch events (issue #10): every id is defined once,
in model.vocabulary, and everything that gives, documents or validates an id agrees with it."""
import ast
import json
import re
from pathlib import Path

import pytest

from qemu_chardev.analysis import census, findings, lifecycle, upstream
from qemu_chardev.analysis import watch as wa
from qemu_chardev.model import vocabulary
from qemu_chardev.model.diagnosis import SEVERITIES, Finding

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gdbext" / "qemu_chardev"
ID_SHAPE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def test_the_registry_is_well_formed():
    assert len(vocabulary.IDS) == len(vocabulary.RULES)           # no id twice
    for rule in vocabulary.RULES:
        assert ID_SHAPE.match(rule.id), rule.id
        assert rule.source in (vocabulary.REPORT, vocabulary.WATCH)
        assert rule.severities and set(rule.severities) <= set(SEVERITIES), rule.id
        assert rule.title and rule.title[0].islower() and not rule.title.endswith(".")
    assert set(vocabulary.REPORT_IDS) | set(vocabulary.WATCH_IDS) == set(vocabulary.IDS)


def _calls_giving_ids():
    """(file:line, literal) of every string literal given as the id of a finding or an event
    anywhere in the package: the first argument (or id=/kind=) of a call to Finding,
    WatchEvent or any helper whose name says it makes a finding."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else \
                func.attr if isinstance(func, ast.Attribute) else ""
            if not ("finding" in name.lower() or name == "WatchEvent"):
                continue
            args = list(node.args[:1]) + [k.value for k in node.keywords
                                          if k.arg in ("id", "kind", "fid")]
            for arg in args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", arg.value))
    return found


def test_every_literal_id_in_the_package_is_registered():
    literals = _calls_giving_ids()
    assert literals, "the scan found no call at all: it is broken"
    unknown = [(where, value) for where, value in literals if value not in vocabulary.BY_ID]
    assert not unknown


def test_every_id_constant_of_the_rules_is_registered():
    named = set(lifecycle.USE_AFTER_FREE_IDS.values()) | {
        lifecycle.CHARDEV_CRASH, upstream.UPSTREAM_BUG, wa.DISCONNECT_DURING_WRITE,
        wa.DISCONNECT_WITHOUT_LOCK, wa.CALLBACK_ON_FINALIZED, wa.FINALIZED_WITH_PENDING_TASK,
        wa.CRASH}
    assert named <= set(vocabulary.IDS)
    assert set(wa.SEVERITY) == set(vocabulary.WATCH_IDS)
    assert all(wa.SEVERITY[i] == vocabulary.rule(i).severity for i in wa.SEVERITY)


def test_the_rules_give_registered_ids_only():
    """The findings the unit fixtures produce (every built-in rule runs) carry registered
    ids, a title from the registry and a severity their rule allows."""
    from test_findings import race_facts
    found = findings.diagnose(race_facts())
    assert found
    for finding in found:
        obj = finding.to_json()
        rule = vocabulary.rule(obj["id"])
        assert obj["title"] == rule.title and obj["severity"] in rule.severities
    assert census.__name__      # census findings: covered by the literal scan above


def test_an_unregistered_id_or_severity_is_refused():
    with pytest.raises(ValueError, match="unknown finding/event id"):
        Finding("no-such-rule", "error", "summary")
    with pytest.raises(ValueError, match="never a 'info'"):
        Finding(vocabulary.DEADLOCK, "info", "summary")
    with pytest.raises(ValueError, match="unknown finding/event id"):
        wa.WatchEvent(id="no-such-event", reason="r")


def test_a_watch_event_speaks_the_findings_words():
    new = wa.WatchEvent(id=wa.DISCONNECT_WITHOUT_LOCK, seq=4, reason="state ... by LWP 5")
    obj = new.to_json()
    finding = Finding(vocabulary.WRITE_LOCK_HELD, "warning", "chardev 'mon0': ...").to_json()
    shared = {"id", "severity", "title", "summary"}
    assert shared <= set(obj) and shared <= set(finding)
    assert isinstance(obj["id"], str) and isinstance(finding["id"], str)
    assert obj["seq"] == 4 and obj["severity"] == "warning"
    assert obj["title"] == vocabulary.title(wa.DISCONNECT_WITHOUT_LOCK)


def _schema(name):
    return json.loads((ROOT / "docs" / name).read_text())


def test_both_schemas_list_exactly_the_registered_ids():
    report = _schema("report-schema.json")
    events = _schema("event-log-schema.json")
    assert report["$defs"]["rule_id"]["enum"] == list(vocabulary.IDS)
    assert events["$defs"]["rule_id"]["enum"] == list(vocabulary.IDS)
    assert report["$defs"]["finding"]["properties"]["id"] == {"$ref": "#/$defs/rule_id"}
    assert events["$defs"]["event"]["properties"]["id"] == {"$ref": "#/$defs/rule_id"}
    for rule_id in vocabulary.REPORT_IDS:
        assert rule_id in report["$defs"]["rule_id"]["description"]
    for rule_id in vocabulary.WATCH_IDS:
        assert rule_id in events["$defs"]["rule_id"]["description"]


def test_a_summary_and_its_events_follow_the_event_log_schema():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(_schema("event-log-schema.json"))
    events = [wa.WatchEvent(id=wa.DISCONNECT_DURING_WRITE, seq=1, reason="r", label="mon0",
                            address=0x1000, field_name="state", old=2, new=0, lwp=5, thread=2,
                            writer_lwp=4, writer_thread=1, lock={"locked": True},
                            stack=[{"level": 0, "pc": "0x1", "function": "f", "file": None,
                                    "line": None, "pointers": {"chr": "0x1000"}}]),
              wa.WatchEvent(id=wa.CRASH, seq=2, reason="the process got SIGSEGV",
                            signal="SIGSEGV", lwp=5)]
    for event in events:
        validator.validate(event.to_json())
    obj = wa.summary(wa.Lifecycle(), "stop requested", 42, None, wa.Counters(errors=2),
                     [{"label": "mon0", "address": 0x1000, "watched": ["state"],
                       "registers": 1, "fallback": False}], ["state"], 4, "/tmp/log", [], [],
                     False, 3, 0.25, events)
    validator.validate(obj)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**events[0].to_json(), "id": 1})      # the old numbering
