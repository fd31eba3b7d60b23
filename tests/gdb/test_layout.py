"""target.memory.Layout: field offsets, sizes and bitfields against gdb's own answers.

Ground truth: plain gdb (no extension) on the same binary: `output &((T *)0)->path`,
`output sizeof(...)` and `ptype /o T` (bit positions of bitfields).
"""
import re

import support
from support.cprogs import py

# Dotted paths as the extension spells them (anonymous members are looked through).
CHARDEV_PATHS = [
    "parent_obj", "parent_obj.class", "parent_obj.free", "parent_obj.ref", "parent_obj.parent",
    "chr_write_lock", "chr_write_lock.lock", "chr_write_lock.lock.__data.__lock",
    "chr_write_lock.lock.__data.__owner", "chr_write_lock.lock.__data.__kind",
    "chr_write_lock.file", "chr_write_lock.line", "chr_write_lock.initialized",
    "be", "label", "filename", "logfd", "be_open", "nested", "nested.x", "nested.y",
    "lo", "hi", "word", "state", "senum", "ok", "not_ok", "s8", "u8", "s16", "u16", "s32", "u32",
    "s64", "u64", "c", "uc", "name", "ratio", "ioc",
]
CHARDEV_BITFIELDS = ["flag1", "flag3", "wide", "sbits", "bbit"]
SOCKET_PATHS = ["parent", "parent.label", "parent.chr_write_lock.lock.__data.__owner",
                "parent.nested.y", "parent.hi", "state", "ioc", "tail"]
SOCKET_BITFIELDS = ["inner_a", "inner_b"]

# `ptype /o` line of a bitfield: "/*    134: 1   |       4 */    unsigned int flag3 : 3;"
_PTYPE_BITFIELD_RE = re.compile(r"^/\*\s+(\d+):\s*(\d+)\s+\|\s+\d+\s+\*/\s+.*?(\w+)\s*:\s*(\d+);")


def _extension_fields(binary, names, paths):
    """{path: [offset, size, bitpos, bitsize] or None} and the size, from Layout.of(*names)."""
    result = support.run_gdb(binary, setup=[support.cprogs.PRELUDE], commands=[py(f"""
        from qemu_chardev.target.memory import Layout
        layout = Layout.of(*{names!r})
        fields = {{}}
        for path in {paths!r}:
            f = layout.field(path)
            fields[path] = None if f is None else [f.offset, f.size, f.bitpos, f.bitsize]
        emit({{"size": layout.size, "fields": fields}})
    """)], timeout=60)
    return result.json(0)


def _ptype_bitfields(ptype_text):
    """{name: (absolute bit offset, bit size)} of the bitfields in `ptype /o T` output."""
    fields = {}
    for line in ptype_text.splitlines():
        match = _PTYPE_BITFIELD_RE.match(line.strip())
        if match:
            byte, bit, name, bits = match.groups()
            fields[name] = (int(byte) * 8 + int(bit), int(bits))
    return fields


def _check_layout(binary, names, ctype, paths, bitfields):
    got = _extension_fields(binary, names, paths + bitfields)
    commands = [f"output sizeof({ctype})"]
    for path in paths:
        commands += [f"output (unsigned long)&(({ctype} *)0)->{path}",
                     f"output sizeof((({ctype} *)0)->{path})"]
    commands.append(f"ptype /o {ctype}")
    raw = support.run_gdb(binary, commands=commands, extension=False,
                          timeout=60).check().outputs
    assert got["size"] == int(raw[0])
    for i, path in enumerate(paths):
        offset, size = int(raw[1 + 2 * i]), int(raw[2 + 2 * i])
        assert got["fields"][path] is not None, path
        assert got["fields"][path][:2] == [offset, size], path
        assert got["fields"][path][3] == 0, f"{path} is not a bitfield"
    truth = _ptype_bitfields(raw[-1])
    assert sorted(truth) == sorted(bitfields)    # the parse of ptype /o found them all
    for name in bitfields:
        offset, size, bitpos, bitsize = got["fields"][name]
        assert (offset * 8 + bitpos, bitsize) == truth[name], name
        # the bytes read hold the whole bitfield
        assert bitpos + bitsize <= size * 8, name


def test_chardev_like_struct_offsets_sizes_bitfields(layouts):
    """Nested and anonymous members, bitfields (one crossing two bytes), enums, pointers."""
    _check_layout(layouts.binary, ("Chardev", "struct Chardev"), "struct Chardev",
                  CHARDEV_PATHS, CHARDEV_BITFIELDS)


def test_typedef_of_anonymous_struct(layouts):
    """`typedef struct { Chardev parent; ... } SocketLike`: reachable by its typedef name only."""
    _check_layout(layouts.binary, ("struct SocketLike", "SocketLike"), "SocketLike",
                  SOCKET_PATHS, SOCKET_BITFIELDS)


def test_unknown_types_and_fields_are_none(layouts):
    """Types and fields this binary lacks give None (a QEMU version without them), never a
    guess; gdb itself knows no such types."""
    probe = py("""
        from qemu_chardev.target.memory import Layout
        chardev = Layout.of("Chardev")
        emit({
            "no_type": Layout.of("struct NoSuchType", "NoSuchType") is None,
            "struct_tag_of_anonymous": Layout.of("struct SocketLike") is None,
            "typedef_second": Layout.of("struct SocketLike", "SocketLike") is not None,
            "no_field": chardev.field("no_such_field") is None,
            "has_no_field": chardev.has("nested.z"),
            "through_pointer": chardev.field("parent_obj.parent.ref") is None,
            "through_scalar": chardev.field("logfd.x") is None,
            "cached": Layout.of("Chardev") is chardev,
            "top_level": [name for name, _f in chardev.top_level_fields()],
        })
    """)
    result = support.run_gdb(layouts.binary, setup=[support.cprogs.PRELUDE], timeout=60,
                             commands=[probe, "ptype struct NoSuchType",
                                       "ptype struct SocketLike", "ptype struct Chardev"])
    got = result.json(0)
    assert got["no_type"] and got["struct_tag_of_anonymous"] and got["typedef_second"]
    assert got["no_field"] and got["has_no_field"] is False
    assert got["through_pointer"] and got["through_scalar"] and got["cached"]
    assert "No struct type named NoSuchType" in result.errors[1]
    assert "No struct type named SocketLike" in result.errors[2]
    # top-level named members in declaration order, as gdb lists them (anonymous union left out)
    assert got["top_level"] == _top_level_members(result.outputs[3])


def _top_level_members(ptype_text):
    """Names of the named top-level members in `ptype struct T` output, in order."""
    names, depth = [], 0
    for line in ptype_text.splitlines():
        line = line.strip()
        closing = line.startswith("}")
        depth -= closing
        if depth == 1 and line.endswith(";"):
            match = (re.search(r"\(\*(\w+)\)\(.*;$", line)     # function pointer
                     or re.search(r"(\w+)(?:\[\d+\])*(?: : \d+)?;$", line))
            if match:
                names.append(match.group(1))
        depth += line.endswith("{")
    return names
