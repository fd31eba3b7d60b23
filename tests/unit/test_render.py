"""Rendering of models: tables, lock summaries, colour rules, JSON field names."""
import json

import pytest

from qemu_chardev.render import base as render
from qemu_chardev.model.objects import ChardevState, GSourceState, MutexState, ThreadRef


def _socket(label="mon0", ioc=0x1000, state="connected", locked=False):
    lock = MutexState(address=0x2000, kind="QemuMutex", locked=locked)
    if locked:
        lock.owner_lwp = 77
        lock.owner = ThreadRef(lwp=77, num=1, function="tcp_chr_write",
                               location="chardev/char-socket.c:135")
    return ChardevState(address=0x3000, label=label, type="chardev-socket", is_socket=True,
                        state=state, ioc=ioc, sioc=ioc, be_open=1, write_lock=lock)


def test_list_shows_owner_and_null_ioc():
    text = render.chardev_list([_socket(ioc=0, locked=True)])
    row = [line for line in text.splitlines() if line.startswith("mon0")][0]
    assert "NULL" in row
    assert "held by LWP 77 (thread 1) in tcp_chr_write" in row


def test_list_marks_chardevs_outside_the_tree():
    ch = _socket()
    ch.in_tree, ch.found_via = False, "frame of tcp_chr_write (LWP 77)"
    text = render.chardev_list([ch])
    assert "mon0 *" in text and "not in /chardevs" in text


def test_no_colour_codes_unless_asked():
    ch = _socket(ioc=0)
    assert "\x1b[" not in render.chardev_list([ch], colour=False)
    assert "\x1b[31m" in render.chardev_list([ch], colour=True)


def test_json_uses_report_field_names():
    obj = _socket(locked=True).to_json()
    assert obj["ioc"] == "0x1000" and obj["label"] == "mon0" and obj["state"] == "connected"
    assert obj["write_lock"]["locked"] is True
    assert obj["write_lock"]["owner_lwp"] == 77
    assert obj["write_lock"]["owner_thread"] == 1
    assert obj["write_lock"]["owner_function"] == "tcp_chr_write"
    json.dumps(obj)


def test_null_pointers_are_json_null():
    assert _socket(ioc=0).to_json()["ioc"] is None


def test_non_socket_has_no_socket_pointers():
    ch = ChardevState(address=0x10, label="ring0", type="chardev-ringbuf")
    assert ch.to_json()["ioc"] is None and ch.to_json()["state"] is None


def test_gsource_block_lists_flags_and_state():
    src = GSourceState(address=0x50, ref_count=1, flags=0, flag_names=[], context=0x60,
                       source_id=9, priority=200, name="GIdleSource",
                       state="destroyed-referenced")
    text = render.gsource_block(src)
    assert "destroyed-referenced" in text and "GIdleSource" in text and "0x0 none" in text


def test_cycle_text_self_deadlock():
    assert "which it already holds" in render.cycle_text([(5, 0xA)])


def test_plain_table_fallback_aligns(monkeypatch):
    monkeypatch.setattr(render, "_tabulate", None)
    text = render.table(["A", "BB"], [["x", render.paint("yy", "red", True)]])
    lines = text.splitlines()
    assert lines[0] == "A    BB" and lines[1] == "---  ----"
    assert lines[2] == "x    " + render.paint("yy", "red", True)


def _random_cell(rng):
    if rng.random() < 0.1:          # what tabulate would parse as numbers, were it asked to
        return rng.choice(["12", "1.5", "True", "-3", "1e5", "nan", "0x10"])
    pieces = ["a", "Z", "0", ".", " ", "-", ":", "/", "\t", "\u4e2d", "e\u0301", "\u00e9",
              "\x1b[31m", "\x1b[0m", "\x1b[1;32m"]
    return "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 10)))


def test_large_tables_are_laid_out_as_tabulate_does():
    """Above LARGE_TABLE_ROWS rows the grid comes from ``_simple_grid``, not tabulate: the
    same text, for 3000 random tables of colours, wide and combining characters, tabs,
    blank-edged and number-like cells, and for the chardev list of 1000 chardevs."""
    tabulate = pytest.importorskip("tabulate").tabulate
    import random
    rng = random.Random(7)
    for _ in range(3000):
        headers = [rng.choice(["LABEL", " TYPE", "A ", "12", "X Y", ""])
                   for _ in range(rng.randrange(1, 6))]
        rows = [[_random_cell(rng) for _ in headers] for _ in range(rng.randrange(0, 6))]
        assert render._simple_grid(headers, rows) == tabulate(
            rows, headers=headers, tablefmt="simple", disable_numparse=True), (headers, rows)
    headers = ["LABEL", "TYPE", "ADDRESS", "STATE", "IOC", "SIOC", "CHR_WRITE_LOCK",
               "FILENAME"]
    rows = [[f"lis{i}", "chardev-socket", f"0x55d3d21{i:05x}", "listening", "NULL", "NULL",
             "free", f"disconnected:unix:/tmp/q/l{i},server=on"] for i in range(1000)]
    assert len(rows) > render.LARGE_TABLE_ROWS
    assert render.table(headers, rows) == tabulate(rows, headers=headers, tablefmt="simple",
                                                   disable_numparse=True)
    # a line break or an escape other than a colour: tabulate lays it out
    rows[5][7] = "two\nlines"
    assert render.table(headers, rows) == tabulate(rows, headers=headers, tablefmt="simple",
                                                   disable_numparse=True)


def test_a_table_too_wide_drops_its_optional_columns_then_turns_into_blocks():
    headers = ["LABEL", "ADDRESS", "STATE", "LISTENER"]
    rows = [["mon0", "0x5574519fc5f0", "connected", "0x5574519fca90"]]
    full = render.table(headers, rows, width=200, optional=("ADDRESS", "LISTENER"))
    assert full.splitlines()[0].split() == headers
    one = render.table(headers, rows, width=40, optional=("ADDRESS", "LISTENER"))
    assert one.splitlines()[0].split() == ["LABEL", "STATE", "LISTENER"]
    assert one.splitlines()[-1].startswith("(ADDRESS not shown at width 40;")
    assert all(len(line) <= 40 for line in one.splitlines()[:-1])
    two = render.table(headers, rows, width=25, optional=("ADDRESS", "LISTENER"))
    assert two.splitlines()[0].split() == ["LABEL", "STATE"]
    assert "ADDRESS, LISTENER not shown" in two
    blocks = render.table(headers, rows, width=12, optional=("ADDRESS", "LISTENER"))
    assert blocks.splitlines() == ["LABEL     mon0", "ADDRESS   0x5574519fc5f0",
                                   "STATE     connected", "LISTENER  0x5574519fca90"]
    assert render.table(headers, rows, width=None) == render.table(headers, rows, width=0)
