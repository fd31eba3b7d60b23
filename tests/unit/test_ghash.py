"""GHashTable decoding for every GLib header layout, from synthesized memory images.

The images follow GLib's ghash.c struct layouts (2.56-2.58, 2.60, 2.62-2.86): live slots have
hashes >= 2, 0 is unused and 1 a tombstone; 2.60+ starts with 4-byte key/value slots and widens
them when a value does not fit ("have_big_keys/values").
"""
import struct

import pytest

from qemu_chardev.model import ghash
from qemu_chardev.model.errors import TargetReadError

HEADER = 0x1000
KEYS, HASHES, VALUES = 0x2000, 0x3000, 0x4000


class FakeMemory:
    """Sparse memory: {address: bytes}; reads must fall inside one stored block."""

    def __init__(self):
        self.blocks = {}

    def put(self, address, data):
        self.blocks[address] = bytes(data)

    def read(self, address, size, what="memory"):
        for start, data in self.blocks.items():
            if start <= address and address + size <= start + len(data):
                return data[address - start:address - start + size]
        raise TargetReadError(what, address)


def _table(layout, entries, size=8, big_keys=True, big_values=True, tombstones=(),
           nnodes=None, as_set=False):
    """A memory image of one table in LAYOUT ("2.56", "2.60", "2.62+") holding ENTRIES."""
    mem = FakeMemory()
    hashes = [0] * size
    keys = [0] * size
    values = [0] * size
    for i, (k, v) in enumerate(entries):
        hashes[i], keys[i], values[i] = 2 + i, k, v
    for i in tombstones:
        hashes[i] = 1
    if layout == "2.56":
        big_keys = big_values = True
    kw, vw = (8 if big_keys else 4), (8 if big_values else 4)
    mem.put(HASHES, struct.pack(f"<{size}I", *hashes))
    mem.put(KEYS, b"".join(k.to_bytes(kw, "little") for k in keys))
    values_at = KEYS if as_set else VALUES
    if not as_set:
        mem.put(VALUES, b"".join(v.to_bytes(vw, "little") for v in values))
    count = len(entries) if nnodes is None else nnodes
    flags = (1 if big_keys else 0) | (2 if big_values else 0)
    if layout == "2.62+":
        header = struct.pack("<QIIIIIIQQQQQII", size, 7, size - 1, count, count + len(tombstones),
                             flags, 0, KEYS, HASHES, values_at, 0, 0, 1, 0)
    else:
        header = struct.pack("<iiiiiIQQQQQII", size, 7, size - 1, count,
                             count + len(tombstones), flags if layout == "2.60" else 0,
                             KEYS, HASHES, values_at, 0, 0, 1, 0)
    mem.put(HEADER, header.ljust(96, b"\0"))
    return mem


VERSIONS = {"2.56": (2, 56, 4), "2.60": (2, 60, 0), "2.62+": (2, 74, 6)}


@pytest.mark.parametrize("layout", ["2.56", "2.60", "2.62+"])
def test_each_layout_with_its_version(layout):
    entries = [(0x5555_0000_1000, 0x5555_0000_2000), (0x5555_0000_3000, 0x5555_0000_4000)]
    mem = _table(layout, entries, tombstones=(5,))
    table = ghash.HashTable(mem, HEADER, glib_version=VERSIONS[layout])
    assert table.layout_name == layout and table.problems == []
    assert table.items() == entries and table.problems == []


def test_small_slots_are_read_as_32_bit():
    entries = [(7, 0x5555_0000_2000), (9, 0x5555_0000_4000)]   # ids as keys (ctx->sources)
    mem = _table("2.62+", entries, big_keys=False, big_values=True)
    assert ghash.HashTable(mem, HEADER, glib_version=(2, 74, 6)).items() == entries


def test_set_reads_values_from_the_keys_array():
    entries = [(0x5555_0000_1000, 0x5555_0000_1000)]
    mem = _table("2.62+", entries, as_set=True)
    assert ghash.HashTable(mem, HEADER, glib_version=(2, 80, 0)).items() == entries


def test_unknown_version_tries_layouts_in_order():
    entries = [(0x10000000, 0x20000000)]
    table = ghash.HashTable(_table("2.62+", entries), HEADER, glib_version=None)
    assert table.layout_name == "2.62+" and table.items() == entries and table.problems == []


def test_unknown_version_cannot_tell_256_from_260_and_says_so():
    table = ghash.HashTable(_table("2.56", [(0x10000000, 0x20000000)]), HEADER,
                            glib_version=None)
    assert table.layout_name == "2.60"
    assert "GLib version unknown" in table.problems[0]


def test_version_mismatch_is_reported_not_silent():
    mem = _table("2.56", [(0x10000000, 0x20000000)])
    table = ghash.HashTable(mem, HEADER, glib_version=(2, 74, 6))
    assert table.layout_name != "2.62+"
    assert "GLib 2.74.6 expects the 2.62+ hash table layout but only" in table.problems[0]


def test_garbage_header_raises():
    mem = FakeMemory()
    mem.put(HEADER, bytes(range(96)))
    with pytest.raises(TargetReadError, match="no known GHashTable layout validates"):
        ghash.HashTable(mem, HEADER, glib_version=(2, 74, 6))


def test_count_mismatch_is_a_problem():
    mem = _table("2.62+", [(0x10000000, 0x20000000)], nnodes=1)
    # corrupt: a second live slot that nnodes does not count
    hashes = bytearray(mem.blocks[HASHES])
    hashes[4:8] = (9).to_bytes(4, "little")
    mem.put(HASHES, hashes)
    table = ghash.HashTable(mem, HEADER, glib_version=(2, 74, 6))
    assert len(table.items()) == 2
    assert "2 live slots but nnodes=1" in table.problems[0]


def test_unreadable_slots_raise():
    mem = _table("2.62+", [(0x10000000, 0x20000000)])
    del mem.blocks[HASHES]
    table = ghash.HashTable(mem, HEADER, glib_version=(2, 74, 6))
    with pytest.raises(TargetReadError):
        table.items()
