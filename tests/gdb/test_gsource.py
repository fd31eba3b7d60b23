"""readers.gsource and readers.glib on fixtures/c/gsource-heap.c (GSources attached, kept,
unattached, destroyed-but-referenced, freed), live and from its core.

Ground truth: the address and state of every GSource as gsource-heap printed them (and how it
made each: idle or timeout source, callback set or not), plain gdb's `output` of the public
struct _GSource fields and `info symbol`/`info address`, GLib's public header (`ptype /o`) and
pkg-config's GLib version.
"""
import subprocess

from support.cprogs import parse_output, py

FIELDS = ("ref_count", "flags", "context", "priority", "source_id", "callback_data")
# How gsource-heap made each kind: (state, funcs table, callback set and kept)
DESIGN = {
    "attached": ("attached", "g_idle_funcs", True),
    "kept": ("attached", "g_timeout_funcs", True),
    "unattached": ("unattached", "g_idle_funcs", False),
    "leaked": ("destroyed-referenced", "g_idle_funcs", False),   # destroy clears the callback
    "freed": ("freed", None, False),
}
# The verdict words of the commit before "One GSource and QEMU vocabulary", for a tree in flux.
OLD_WORDS = {"destroyed-but-referenced": "destroyed-referenced", "looks-freed": "freed"}

_runs = {}


def _sources(heap):
    return {kind: heap.addresses(kind) for kind in DESIGN}


def _run(heap, mode):
    key = mode
    if key in _runs:
        return _runs[key]
    sources = _sources(heap)
    everything = [a for addresses in sources.values() for a in addresses]
    probe = py(f"""
        from qemu_chardev.readers import glib
        from qemu_chardev.readers.gsource import read_gsource
        from qemu_chardev.target.snapshot import Snapshot
        snap = Snapshot()
        out = {{"sources": {{}}}}
        for address in {everything!r}:
            out["sources"][address] = read_gsource(snap, address).to_json()
        out["nowhere"] = read_gsource(snap, 16).to_json()
        out["version"] = glib.glib_version()
        out["offsets"] = glib.gsource_offsets()
        emit(out)
    """)
    commands = [probe, "info address never_called",
                *[f"output *(unsigned int *)&glib_{part}_version"
                  for part in ("major", "minor", "micro")]]
    for address in everything:
        commands += [f"output ((GSource *){address})->{field}" for field in FIELDS]
        commands += [f"info symbol ((GSource *){address})->source_funcs",
                     f"output ((GSource *){address})->name"]
    result = heap.gdb(mode, commands)
    got = result.json(0)
    result.check(*range(1, len(commands)))
    never_called = int(result.outputs[1].split(" at address ")[1].strip().rstrip("."), 16)
    version = tuple(int(result.outputs[i]) for i in (2, 3, 4))
    raw, index = {}, 5
    for address in everything:
        values = dict(zip(FIELDS, (parse_output(t) for t in result.outputs[index:index + 6])))
        values["funcs_symbol"] = result.outputs[index + 6].split(" in section ")[0].strip()
        name = result.outputs[index + 7]
        values["name"] = name[name.index('"') + 1:name.rindex('"')] if '"' in name else None
        raw[address] = values
        index += 8
    got["sources"] = {int(a): s for a, s in got["sources"].items()}
    _runs[key] = (got, raw, never_called, version)
    return _runs[key]


def _state(src):
    word = src.get("state", src.get("verdict"))
    return OLD_WORDS.get(word, word)


def test_gsource_fields_and_states(heap, mode):
    got, raw, never_called, _version = _run(heap, mode)
    context = heap.address("context")
    for kind, addresses in _sources(heap).items():
        state, funcs, with_callback = DESIGN[kind]
        assert addresses, kind
        for address in addresses:
            src, truth = got["sources"][address], raw[address]
            where = (kind, hex(address))
            assert _state(src) == state, (where, src)
            assert src["ref_count"] == truth["ref_count"], where
            if kind == "freed":
                assert truth["ref_count"] == 0
                continue
            assert src["ref_count"] == (2 if kind == "kept" else 1), where
            for field in ("flags", "priority", "source_id"):
                assert src[field] == truth[field], (where, field)
            assert src["context"] == (None if kind == "unattached" else f"0x{context:x}")
            assert truth["context"] == (0 if kind == "unattached" else context)
            assert ("ACTIVE" in src["flag_names"]) == (kind != "leaked"), where
            assert src["funcs_symbol"] == funcs == truth["funcs_symbol"], where
            assert src["name"] == truth["name"], where
            if with_callback:
                assert src["callback"] == f"0x{never_called:x}", where
                assert src["callback_symbol"] == "never_called", where
                assert src["callback_data"] is None, where       # set with data NULL
            else:
                assert src["callback"] is None and truth["callback_data"] == 0, where


def test_unreadable_gsource_is_a_state_not_an_exception(heap, mode):
    got, _raw, _nc, _version = _run(heap, mode)
    nowhere = got["nowhere"]
    assert _state(nowhere) == "unreadable" and nowhere["problems"]


def test_glib_version_and_gsource_layout(heap, mode):
    """glib_version() from the target's glib_*_version words (no GLib debug info needed),
    the same as plain gdb reads and pkg-config says; the GSource offsets the extension uses
    (and GLib's public layout it falls back to) are those of GLib's header."""
    got, _raw, _nc, version = _run(heap, mode)
    assert tuple(got["version"]) == version
    installed = subprocess.run(["pkg-config", "--modversion", "glib-2.0"], check=True,
                               capture_output=True, text=True).stdout.strip()
    assert ".".join(map(str, version)) == installed
    header = heap.gdb(mode, [py("""
        from qemu_chardev.model import glib as facts
        emit([facts.GSOURCE_OFFSETS, facts.GSOURCE_SIZE])
    """), "ptype /o struct _GSource"])
    fallback, size = header.json(0)
    ptype = header.check(1).outputs[1]
    offsets = {}
    for line in ptype.splitlines():
        parts = line.split("*/")
        if len(parts) == 2 and "|" in parts[0] and parts[1].strip().endswith(";"):
            offset = int(parts[0].split("|")[0].strip("/* "))
            offsets[parts[1].strip().rstrip(";").split()[-1].lstrip("*")] = offset
    assert got["offsets"] == offsets
    assert fallback == offsets
    assert f"total size (bytes):   {size} */" in ptype
