"""Strings read from the target are shown escaped (issue #8): text, Markdown and JUnit alike,
and JSON keeps them valid.  One escaping, model.text, used by every renderer."""
import json
import xml.etree.ElementTree as ET

import pytest

from qemu_chardev.analysis import watch as wa
from qemu_chardev.model import text as tx
from qemu_chardev.model.objects import ChardevState, MutexState
from qemu_chardev.render import base as render
from qemu_chardev.render import report as report_render
from qemu_chardev.render import watch as watch_render
from test_report_render import race_report

# What a crashed or hostile QEMU can leave in a label, a path or an assertion message.  The
# invalid UTF-8 byte is as the readers decode it (Memory.cstring: backslashreplace).
ESC = "\x1b[31mRED\x1b[0m\x1b]0;pwned\x07"
HOSTILE = ("e" + ESC + "\rOVERWRITE\nsecond line\x00nul\x9bcsi\u202eevil\u2028"
           + b"\xff\xfe".decode("utf-8", "backslashreplace")
           + " | <script>alert(1)</script> ]]> [x](javascript:y) `tick` *b* &amp; ~s~")
RAW = set("\x1b\r\n\x00\x07\x9b\u202e\u2028")


def _assert_escaped(shown, multiline=True):
    """Every hostile character shown as an escape; only our own newlines are raw (and the
    hostile newline never starts a line of its own)."""
    assert not (RAW - {"\n"} if multiline else RAW) & set(shown), repr(shown)
    for piece in ("\\x1b[31mRED", "\\x1b]0;pwned\\x07\\rOVERWRITE\\nsecond",
                  "\\x00nul\\x9bcsi\\u202eevil\\u2028\\xff\\xfe"):
        assert piece in shown, piece
    assert not any(line.lstrip().startswith(("OVERWRITE", "second line", "nul"))
                   for line in shown.splitlines())


@pytest.mark.parametrize("raw,shown", [
    ("mon0", "mon0"),
    ("a\x1b[2Jb", "a\\x1b[2Jb"),
    ("cr\rlf\ntab\t", "cr\\rlf\\ntab\\t"),
    ("del\x7f c1\x85", "del\\x7f c1\\x85"),
    ("rlo\u202e iso\u2066 lrm\u200e", "rlo\\u202e iso\\u2066 lrm\\u200e"),
    ("surrogate\udcff", "surrogate\\udcff"),
    ("unicode é ✓ 中", "unicode é ✓ 中"),          # printable text stays as it is
    (None, None), (7, 7),
])
def test_printable(raw, shown):
    assert tx.printable(raw) == shown
    assert tx.printable(tx.printable(raw)) == shown         # idempotent


def test_decoding_keeps_invalid_bytes_visible_and_json_valid():
    decoded = b"sock\xff\xc3(.sock".decode("utf-8", "backslashreplace")    # as cstring does
    assert decoded == "sock\\xff\\xc3(.sock"
    assert json.loads(json.dumps({"p": decoded}, ensure_ascii=False))["p"] == decoded
    decoded.encode("utf-8")                                 # no surrogate: valid UTF-8


def test_markdown_text_cannot_act_as_markdown():
    md = tx.markdown(HOSTILE)
    assert not RAW & set(md)
    assert "\\\\x1b\\[31mRED" in md and "\\\\rOVERWRITE\\\\nsecond" in md
    for special in ("\\|", "\\<script\\>", "\\]\\]\\>", "\\[x\\]", "\\`tick\\`", "\\*b\\*",
                    "\\&amp;", "\\~s\\~"):
        assert special in md, special
    assert tx.markdown(None) == ""


def test_markdown_code_span_cannot_be_closed():
    assert tx.markdown_code("a``b") == "```a``b```"
    assert tx.markdown_code("`x`") == "`` `x` ``"
    assert tx.markdown_code("a|b", in_table=True) == "`a\\|b`"
    assert tx.markdown_code("a\nb") == "`a\\nb`"


def hostile_report():
    report = race_report()
    report["chardevs"][0]["label"] = HOSTILE
    report["chardevs"][0]["filename"] = "unix:/tmp/" + HOSTILE
    report["findings"][0]["chardev"] = HOSTILE
    report["findings"][0]["summary"] = f"chardev '{HOSTILE}': crashed"
    report["findings"][0]["detail"] += " " + HOSTILE
    report["crash"]["assertion"] = {"file": "a.c", "line": 1, "function": "f",
                                    "expression": None, "text": HOSTILE}
    report["threads"][0]["name"] = HOSTILE
    report["problems"] = [f"cannot read chardev '{HOSTILE}'"]
    report["complete"] = False
    return report


def test_text_report_escapes_every_target_string():
    shown = report_render.text(hostile_report())
    _assert_escaped(shown)
    assert "\\x1b" in shown.split("Chardevs")[1]              # the label in the table
    coloured = report_render.text(hostile_report(), colour=True)
    assert "\x1b[1m" in coloured and "\x1b[31mRED" not in coloured   # our colour, not theirs


def test_markdown_report_escapes_every_target_string():
    md = report_render.markdown([hostile_report()])
    assert not (RAW - {"\n"}) & set(md)
    span = tx.markdown_code(HOSTILE)            # a code span shows its text literally
    assert span in md
    outside = md.replace(span, "")
    assert "<script>" not in outside and "[x](" not in outside and "]]>" not in outside
    assert "\\<script\\>" in md
    rows = [line for line in md.splitlines() if line.startswith("| e\\\\x1b")]
    assert rows and rows[0].count(" | ") == 7          # the label stays in its cell


def test_junit_report_escapes_and_parses():
    doc = report_render.junit([hostile_report()])
    root = ET.fromstring(doc)                               # well-formed XML
    failure = root.find("testsuite/testcase/failure")
    _assert_escaped(failure.get("message"), multiline=False)
    _assert_escaped(failure.text)
    out = root.find("testsuite/testcase/system-out").text
    assert "<script>alert(1)</script> ]]>" in out           # as text: ET escaped it
    assert "]]>" not in doc.split("<system-out>")[1].split("</system-out>")[0]


def test_json_report_keeps_the_string_and_stays_valid_json():
    report = hostile_report()
    back = json.loads(render.to_json_text(report))
    assert back["chardevs"][0]["label"] == HOSTILE
    assert "\x1b" not in render.to_json_text(report)        # JSON escapes it as \u001b


def test_interactive_tables_and_watch_events_escape_labels():
    lock = MutexState(address=0x1000, kind="QemuMutex", locked=False, locker_file=HOSTILE,
                      locker_line=1)
    ch = ChardevState(address=0x2000, label=HOSTILE, type="chardev-socket", is_socket=True,
                      state="connected", write_lock=lock, filename="unix:" + HOSTILE,
                      problems=[HOSTILE])
    _assert_escaped(render.chardev_list([ch]))
    _assert_escaped(render.chardev_block(ch))
    _assert_escaped(render.mutex_block(lock))
    event = wa.WatchEvent(id=wa.DISCONNECT_WITHOUT_LOCK, seq=1, reason=f"state by {HOSTILE}",
                          label=HOSTILE, address=0x2000, thread=2, thread_name=HOSTILE,
                          lwp=5, problems=[HOSTILE])
    _assert_escaped(watch_render.event_block(event.to_json()))
    assert json.loads(json.dumps(event.to_json()))["chardev"]["label"] == HOSTILE
    _assert_escaped(watch_render.coverage_table(
        [{"label": HOSTILE, "address": 0x2000, "watched": ["state"], "registers": 1,
          "fallback": False}]))
