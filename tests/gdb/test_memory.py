"""target.memory: View decoding, Memory reads and strings, symbols and user expressions, on
fixtures/c/layouts.c, live and from its core.

Ground truth: plain gdb commands (`output`, `info address`, `info symbol`; the extension plays
no part in them) run in the same gdb after the extension's Python, what layouts.c printed
(addresses, the unmapped page) and the values fill_chardev() was written to store.
"""
from pathlib import Path


from support.cprogs import parse_output, py

# path -> gdb `output` format; enums print as numbers with /d.
CHARDEV_SCALARS = {
    "parent_obj.ref": "", "parent_obj.parent": "", "parent_obj.free": "",
    "chr_write_lock.line": "", "chr_write_lock.initialized": "",
    "chr_write_lock.lock.__data.__kind": "", "chr_write_lock.lock.__data.__owner": "",
    "be": "", "label": "", "filename": "", "logfd": "", "be_open": "",
    "nested.x": "", "nested.y": "", "lo": "", "hi": "", "word": "",
    "flag1": "", "flag3": "", "wide": "", "bbit": "", "state": "/d",
    "ok": "", "not_ok": "", "s8": "", "u8": "", "s16": "", "u16": "", "s32": "", "u32": "",
    "s64": "", "u64": "", "c": "", "uc": "", "ioc": "",
}
SOCKET_SCALARS = {"inner_a": "", "inner_b": "", "tail": "", "state": "/d", "ioc": "",
                  "parent.label": "", "parent.s64": "", "parent.hi": "", "parent.wide": ""}
BITFIELDS = {"flag1", "flag3", "wide", "bbit", "inner_a", "inner_b", "parent.wide", "sbits"}


def _decode_and_output(program, mode, structs):
    """For each (layout names, C type, address, {path: format}) of STRUCTS: the extension's
    {path: View[path]} and plain gdb's {path: `output/FMT ((T *)address)->path`}."""
    commands = [py(f"""
        from qemu_chardev.target.memory import Layout, Memory
        mem = Memory()
        out = []
        for names, address, paths in {[(n, a, list(f)) for n, _t, a, f in structs]!r}:
            view = mem.view(Layout.of(*names), address)
            out.append({{path: view[path] for path in paths}})
        emit(out)
    """)]
    for _names, ctype, address, fields in structs:
        commands += [f"output{fmt} (({ctype} *){address})->{path}"
                     for path, fmt in fields.items()]
    result = program.gdb(mode, commands)
    decoded = result.json(0)
    raw, index = [], 1
    for _names, _ctype, _address, fields in structs:
        result.check(*range(index, index + len(fields)))
        raw.append({path: parse_output(result.outputs[index + i])
                    for i, path in enumerate(fields)})
        index += len(fields)
    return decoded, raw


def _assert_same(got, raw):
    for path, expected in raw.items():
        assert got[path] == expected, (path, got[path], expected)
        if path not in BITFIELDS:
            # a bool field decodes to a bool, an integer to an int
            assert isinstance(got[path], bool) == isinstance(expected, bool), path


def test_view_decodes_fields_like_gdb(layouts, mode):
    """Signed/unsigned integers of every size, char, bool, enum, pointers (data and function),
    unsigned bitfields, anonymous and nested members, a typedef'd anonymous struct: the values
    plain gdb prints, for a global, a heap object and a struct embedding a Chardev."""
    structs = [(("Chardev",), "Chardev", layouts.address("chr_global"), CHARDEV_SCALARS),
               (("Chardev",), "Chardev", layouts.address("chr_heap"), CHARDEV_SCALARS),
               (("SocketLike",), "SocketLike", layouts.address("sock_global"), SOCKET_SCALARS)]
    decoded, raw = _decode_and_output(layouts, mode, structs)
    for got, expected in zip(decoded, raw):
        _assert_same(got, expected)
    # the fixture's own values, so that a wrong `output` parse cannot hide anything
    assert raw[0]["s64"] == -9000000000000000000 and raw[0]["u64"] == 18000000000000000000
    assert raw[0]["c"] == -5 and raw[0]["hi"] == -0x34 and raw[0]["ok"] is True
    assert raw[1]["state"] == 1 and raw[2]["inner_b"] == 0x1234567


def test_view_decodes_signed_bitfield(layouts_o0):
    structs = [(("Chardev",), "Chardev", layouts_o0.address("chr_global"), {"sbits": ""})]
    decoded, raw = _decode_and_output(layouts_o0, "live", structs)
    assert raw[0]["sbits"] == -3                  # what fill_chardev() stored
    assert decoded == raw


def test_view_decodes_negative_enum(layouts_o0):
    structs = [(("Chardev",), "Chardev", layouts_o0.address("chr_global"), {"senum": "/d"})]
    decoded, raw = _decode_and_output(layouts_o0, "live", structs)
    assert raw[0]["senum"] == -2
    assert decoded == raw


def test_view_addresses_bytes_and_non_scalars(layouts_o0):
    """address_of/bytes_of against gdb's `&field` and the bytes of a char array; members that
    are not scalars (array, double, struct, union) decode to None, never to garbage; get()
    takes the first field this structure has; an unknown field is a KeyError."""
    address = layouts_o0.address("chr_global")
    paths = ("label", "nested.y", "hi", "u64")
    probe = py(f"""
        from qemu_chardev.target.memory import Layout, Memory
        view = Memory().view(Layout.of("Chardev"), {address})
        try:
            view["no_such"]
            missing = "no error"
        except KeyError:
            missing = "KeyError"
        emit({{
            "address_of": [view.address_of(p) for p in {paths!r}],
            "name": view.bytes_of("name").hex(),
            "none": {{p: view[p] for p in ("name", "ratio", "nested", "parent_obj",
                                           "chr_write_lock.lock")}},
            "get": [view.get("no_such", "logfd"), view.get("no_such", default="n/a")],
            "missing": missing,
        }})
    """)
    result = layouts_o0.gdb("live", [probe, "output chr_global.name",
                                     *[f"output (unsigned long)&chr_global.{p}" for p in paths],
                                     "output (unsigned long)&((Chardev *)0)->label"])
    got = result.json(0)
    result.check()
    assert got["address_of"] == [int(text) for text in result.outputs[2:6]]
    assert got["address_of"][0] == address + int(result.outputs[6])
    name = bytes.fromhex(got["name"])
    assert len(name) == 16 and name.rstrip(b"\0") == b"chr0-name"
    assert result.outputs[1].startswith('"chr0-name\\000')
    assert got["none"] == {p: None for p in got["none"]}
    assert got["get"] == [-1, "n/a"]
    assert got["missing"] == "KeyError"


def test_one_read_per_structure_and_per_command_cache(layouts_o0):
    """Memory.view reads a structure in one read_memory call of sizeof(T) bytes, whatever the
    number of fields decoded; the same structure again is served from the cache; a new
    Memory (a new command) reads again. Counted on gdb's Inferior.read_memory itself."""
    layouts = layouts_o0
    address = layouts.address("chr_global")
    result = layouts.gdb("live", [py(f"""
        from qemu_chardev.target.memory import Layout, Memory

        class CountingInferior:
            def __init__(self, inferior):
                self.inferior, self.calls = inferior, []
            def read_memory(self, address, size):
                self.calls.append([address, size])
                return self.inferior.read_memory(address, size)

        inferior = CountingInferior(gdb.selected_inferior())
        layout = Layout.of("Chardev")
        mem = Memory(inferior)
        view = mem.view(layout, {address})
        fields = [name for name, _f in layout.top_level_fields()]
        values = [view.get(name) for name in fields] + [view["chr_write_lock.line"]]
        after_view = list(inferior.calls)
        mem.view(layout, {address})
        after_second_view = list(inferior.calls)
        label = mem.cstring(view["label"])
        mem.cstring(view["label"])
        after_strings = list(inferior.calls)
        other = Memory(inferior)
        other.view(layout, {address})
        emit({{"after_view": after_view, "after_second_view": after_second_view,
               "after_strings": after_strings, "total": inferior.calls, "reads": mem.reads,
               "other_reads": other.reads, "fields": len(fields), "label": label}})
    """), "output sizeof(Chardev)"])
    got = result.json(0)
    size = int(result.check(1).outputs[1])
    assert got["fields"] > 20
    assert got["after_view"] == [[address, size]]
    assert got["after_second_view"] == [[address, size]]
    assert got["label"] == "chr0"
    # the label's read(s) start at the string and none is repeated
    string_reads = got["after_strings"][1:]
    assert string_reads and string_reads[0][0] == layouts.address("label")
    assert len(string_reads) == len({tuple(r) for r in string_reads})
    assert got["reads"] == len(got["after_strings"])
    assert got["total"][len(got["after_strings"]):] == [[address, size]]
    assert got["other_reads"] == 1


def _quoted(text):
    """The string plain gdb printed for a `char *`: '0x55... <sym> "abc"' -> '"abc"...'."""
    return text[text.index('"'):] if '"' in text else text


def test_cstring(layouts_o0, mode):
    """Memory.cstring: whole strings, the limit, empty and NULL, a string running into an
    unmapped page (partial, marked '...'), a string in the binary's read-only data."""
    layouts = layouts_o0
    a = {k: layouts.address(k) for k in ("label", "long_string", "empty_string",
                                         "tail_string", "end_string", "rodata_string")}
    calls = {
        "label": (a["label"], 256), "long_full": (a["long_string"], 1000),
        "long_256": (a["long_string"], 256), "long_10": (a["long_string"], 10),
        "empty": (a["empty_string"], 256), "null": (0, 256), "tail": (a["tail_string"], 256),
        "end": (a["end_string"], 256), "rodata": (a["rodata_string"], 256),
    }
    raw_keys = ["label", "long_string", "empty_string", "tail_string", "end_string",
                "rodata_string"]
    result = layouts.gdb(mode, [py(f"""
        from qemu_chardev.target.memory import Memory
        out = {{}}
        for key, (address, limit) in {calls!r}.items():
            try:
                out[key] = Memory().cstring(address, limit)
            except Exception as exc:
                out[key] = "raised " + type(exc).__name__
        emit(out)
    """), "set print elements 0", *[f"output (char *){a[k]}" for k in raw_keys]])
    got = result.json(0)
    raw = {k: _quoted(text) for k, text in zip(raw_keys, result.outputs[2:])}
    long_string = "".join(chr(ord("a") + i % 26) for i in range(300))   # what layouts.c wrote
    assert raw["long_string"] == f'"{long_string}"'
    assert got["long_full"] == long_string
    assert got["long_256"] == long_string[:256] + "..."
    assert got["long_10"] == long_string[:10] + "..."
    assert got["null"] is None
    for key, raw_key in (("label", "label"), ("empty", "empty_string"), ("end", "end_string"),
                         ("rodata", "rodata_string")):
        assert raw[raw_key] == f'"{got[key]}"', key
    assert got["label"] == "chr0" and got["rodata"] == "read-only data" and got["empty"] == ""
    # gdb reads "tail" and then fails on the unmapped page; cstring returns what it could read
    assert raw["tail_string"].startswith('"tail"<error: Cannot access memory'), raw
    assert got["tail"] == "tail..."


def _mapped(pid, address):
    """True if /proc/PID/maps has a mapping containing ADDRESS."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if start <= address < end:
            return True
    return False


def test_unreadable_memory_raises_target_read_error(layouts_o0, mode):
    """Every way of reading memory gdb cannot read gives TargetReadError (a one-line QcgError),
    never gdb.MemoryError, OverflowError or a traceback."""
    layouts = layouts_o0
    hole = layouts.address("unmapped_page")
    assert not _mapped(layouts.pid, hole) and _mapped(layouts.pid, hole - 1)
    attempts = {
        "read_unmapped": f"mem.read({hole}, 8)",
        "read_straddling": f"mem.read({hole} - 4, 8)",
        "view_straddling": f"mem.view(Layout.of('Chardev'), {hole} - 16)",
        "pointer_null": "mem.pointer(0)",
        "u32_unmapped": f"mem.u32({hole})",
        "cstring_unmapped": f"mem.cstring({hole})",
        "read_past_end_of_address_space": "mem.read(2**64 - 4, 8)",
        "read_beyond_64_bits": "mem.read(2**64 + 16, 8)",
        "read_negative": "mem.read(-4096, 8)",
    }
    result = layouts.gdb(mode, [py(f"""
        from qemu_chardev.model.errors import QcgError, TargetReadError
        from qemu_chardev.target.memory import Layout, Memory
        out = {{}}
        for key, code in {attempts!r}.items():
            mem = Memory()
            try:
                eval(code)
                out[key] = ["no error"]
            except TargetReadError as exc:
                out[key] = ["TargetReadError", isinstance(exc, QcgError), str(exc)]
            except BaseException as exc:
                out[key] = [type(exc).__name__, False, str(exc)]
        emit(out)
    """), f"output *(long *){hole}", f"output *(long *)({hole} - 4)"])
    got = result.json(0)
    # gdb itself cannot read them either
    assert all("Cannot access memory" in e for e in result.errors[1:]), result.errors
    for key, outcome in got.items():
        assert outcome[0] == "TargetReadError" and outcome[1], (key, outcome)
        assert "\n" not in outcome[2], key


def _info_address(text):
    """The address in `info address` output, or None (typedef, unknown symbol)."""
    hexes = [int(w.rstrip("."), 16) for w in text.split() if w.startswith("0x")]
    return hexes[0] if hexes else None


def _info_symbol(text):
    """"name", "name+off" or None from `info symbol` output."""
    if text.startswith("No symbol matches"):
        return None
    return text.split(" in section ")[0].strip().replace(" + ", "+")


def test_symbols_like_info_address_and_info_symbol(layouts_o0, mode):
    """symbol_address: globals, file statics, functions, and names gdb knows no address for (a
    typedef, nothing) give what `info address` gives, which is also what the program printed.
    symbol_name: function starts and insides, data symbols with and without an offset, a
    static, heap and mmap addresses (no symbol) give what `info symbol` names."""
    layouts = layouts_o0
    names = ["chr_global", "sock_global", "chr_heap", "file_static", "fixture_stop", "main",
             "long_string", "SocketLike", "no_such_symbol_anywhere"]
    stop, chr_global = layouts.address("fixture_stop"), layouts.address("chr_global")
    addresses = [stop, stop + 4, chr_global, chr_global + 8, chr_global + 104,
                 layouts.address("file_static"), layouts.address("sock_global"),
                 layouts.address("chr_heap"), layouts.address("tail_string")]
    result = layouts.gdb(mode, [py(f"""
        from qemu_chardev.target.memory import symbol_address, symbol_name
        emit({{"addresses": [symbol_address(name) for name in {names!r}],
               "names": [symbol_name(a) for a in {addresses!r}]}})
    """), *[f"info address {name}" for name in names],
        *[f"info symbol {a}" for a in addresses]])
    got = result.json(0)
    raw_addresses = [_info_address(result.outputs[i] + result.errors[i])
                     for i in range(1, 1 + len(names))]
    raw_names = [_info_symbol(text) for text in result.outputs[1 + len(names):]]
    assert got["addresses"] == raw_addresses
    by_name = dict(zip(names, got["addresses"]))
    for name in ("chr_global", "sock_global", "file_static", "fixture_stop", "long_string"):
        assert by_name[name] == layouts.address(name), name
    assert by_name["SocketLike"] is None and by_name["no_such_symbol_anywhere"] is None
    assert got["names"] == raw_names
    assert got["names"][0] == "fixture_stop" and got["names"][2] == "chr_global"
    assert got["names"][7] is None


def test_address_of_expression(layouts_o0):
    """A pointer gives its value and pointee type; a struct its address and type; a struct that
    is not in memory, or an expression gdb cannot evaluate, a TargetReadError."""
    layouts = layouts_o0
    specs = ["chr_heap", "&chr_global", "chr_global", "*chr_heap", "sock_global.parent",
             "chr_global.parent_obj.parent", "(long)&sock_global", "$copy",
             "no_such_variable", "chr_global.no_such_field"]
    result = layouts.gdb("live", ["set $copy = chr_global", py(f"""
        from qemu_chardev.model.errors import TargetReadError
        from qemu_chardev.target.memory import address_of_expression
        out = {{}}
        for spec in {specs!r}:
            try:
                address, vtype = address_of_expression(spec)
                out[spec] = [address, None if vtype is None else str(vtype)]
            except TargetReadError as exc:
                out[spec] = "TargetReadError"
            except BaseException as exc:
                out[spec] = type(exc).__name__
        emit(out)
    """), "output chr_global.parent_obj.parent"])
    got = result.json(1)
    chr_global, chr_heap = layouts.address("chr_global"), layouts.address("chr_heap")
    sock = layouts.address("sock_global")
    assert got["chr_heap"] == [chr_heap, "Chardev"]
    assert got["&chr_global"] == [chr_global, "Chardev"]
    assert got["chr_global"] == [chr_global, "Chardev"]
    assert got["*chr_heap"] == [chr_heap, "Chardev"]
    assert got["sock_global.parent"] == [sock, "Chardev"]
    assert got["chr_global.parent_obj.parent"] == [parse_output(result.check(2).outputs[2]),
                                                   "Object"]
    assert got["(long)&sock_global"] == [sock, None]
    assert got["$copy"] == "TargetReadError"           # a value, not an object in memory
    assert got["no_such_variable"] == "TargetReadError"
    assert got["chr_global.no_such_field"] == "TargetReadError"
