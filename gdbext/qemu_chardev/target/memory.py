"""Reading the target: cached types and field layouts, one memory read per structure.

Every other module reads the inferior through this one.  Types are looked up once and their
field offsets computed once; both caches are dropped when gdb loads or unloads symbols.
Structures are fetched with a single ``read_memory`` call and decoded in Python with
``struct``, which is an order of magnitude cheaper than walking ``gdb.Value`` fields.

Nothing here writes target memory or calls inferior functions.
"""
import operator
import os
import struct

import gdb

from qemu_chardev.model.errors import TargetReadError

POINTER_SIZE = 8
_PAGE = 4096
_INT_FORMATS = {1: "b", 2: "h", 4: "i", 8: "q"}

_type_cache = {}
_layout_cache = {}
_symbol_address_cache = {}
_symbol_name_cache = {}


_other_caches = []


def clear_caches(_event=None):
    """Forget every cached type, layout and symbol (new or removed objfiles)."""
    _type_cache.clear()
    _layout_cache.clear()
    _symbol_address_cache.clear()
    _symbol_name_cache.clear()
    for cache in _other_caches:
        cache.clear()


def objfile_cache():
    """A dict that is emptied together with the type caches (for other modules' lookups)."""
    cache = {}
    _other_caches.append(cache)
    return cache


gdb.events.new_objfile.connect(clear_caches)
gdb.events.clear_objfiles.connect(clear_caches)


def lookup_type(*names):
    """The first of ``names`` that gdb knows as a type, or None.

    Accepts typedef names and ``struct TAG`` spellings; anonymous typedef'd structs are
    only reachable through their typedef name, so callers list both.
    """
    key = names
    if key in _type_cache:
        return _type_cache[key]
    found = None
    for name in names:
        try:
            found = gdb.lookup_type(name)
            break
        except gdb.error:
            continue
    _type_cache[key] = found
    return found


_SCALAR_KINDS = ("pointer", "uint", "enum", "bool", "int")
_structs = {}


def _struct_of(fmt):
    """A compiled ``struct.Struct`` per format, shared by every field and decoder."""
    compiled = _structs.get(fmt)
    if compiled is None:
        compiled = _structs[fmt] = struct.Struct(fmt)
    return compiled


class Field:
    """Where a (possibly nested) field lives in a structure and how to decode it."""

    __slots__ = ("offset", "size", "kind", "signed", "bitpos", "bitsize", "type", "code",
                 "_unpack")

    def __init__(self, offset, size, kind, signed=False, bitpos=0, bitsize=0, gdb_type=None):
        self.offset = offset
        self.size = size
        self.kind = kind
        self.signed = signed
        self.bitpos = bitpos
        self.bitsize = bitsize
        self.type = gdb_type
        # The struct format of a plain scalar, decided once: decode() is called tens of
        # thousands of times for a thousand chardevs.  None: a bitfield or no scalar.
        self.code = self._unpack = None
        if not bitsize and kind in _SCALAR_KINDS and size in _INT_FORMATS:
            fmt = _INT_FORMATS[size]
            # "?": a one-byte bool unpacks as Python's bool, as C's _Bool reads
            self.code = "?" if kind == "bool" and size == 1 else fmt if signed else fmt.upper()
            self._unpack = _struct_of("<" + self.code).unpack_from

    def decode(self, buf, base=0):
        """Decode this field from ``buf`` (which starts ``base`` bytes before the struct)."""
        unpack = self._unpack
        if unpack is not None:
            value = unpack(buf, base + self.offset)[0]
            return bool(value) if self.kind == "bool" else value
        if self.bitsize:
            start = base + self.offset
            raw = int.from_bytes(buf[start:start + self.size], "little")
            value = (raw >> self.bitpos) & ((1 << self.bitsize) - 1)
            if self.signed and value >> (self.bitsize - 1):
                value -= 1 << self.bitsize
            return bool(value) if self.kind == "bool" else value
        return None


_NONE = (None,)


class Decoder:
    """Several fields of one layout decoded together: ``decoder(buf)`` is the tuple of their
    values in the order asked, a field the layout lacks (or no scalar) as None.

    Plain scalars that do not overlap are unpacked by one ``struct`` call and picked into
    the order asked by one ``itemgetter``; bitfields and union members that overlap another
    field are decoded one by one.  Built once per layout and list of fields
    (``Layout.decoder``), for the readers that run once per object."""

    __slots__ = ("_struct", "_pick", "_others", "_bools")

    def __init__(self, fields):
        plain = sorted(((f.offset, i, f) for i, f in enumerate(fields)
                        if f is not None and f.code is not None), key=lambda t: t[:2])
        fmt, end, positions, others = "<", 0, {}, []
        for offset, i, f in plain:
            if offset < end:        # overlaps the previous one (a union): decoded alone
                others.append((i, f))
                continue
            fmt += (f"{offset - end}x" if offset > end else "") + f.code
            end = offset + f.size
            positions[i] = len(positions)
        others += [(i, f) for i, f in enumerate(fields)
                   if f is not None and f.code is None and f.bitsize]
        self._struct = _struct_of(fmt) if positions else None
        # the unpacked values with one None after them: a field not unpacked picks that
        picked = [positions.get(i, len(positions)) for i in range(len(fields))]
        if len(picked) > 1:
            self._pick = operator.itemgetter(*picked)
        else:           # itemgetter of one index gives the item, not a tuple
            self._pick = lambda values, at=tuple(picked): tuple(values[i] for i in at)
        self._others = tuple(others)
        # a bool of one byte is unpacked as one ("?"); any other size is converted here
        self._bools = tuple(i for i, f in enumerate(fields) if f is not None
                            and f.kind == "bool" and f.code is not None and f.code != "?")

    def __call__(self, buf, base=0):
        values = self._struct.unpack_from(buf, base) + _NONE if self._struct else _NONE
        out = self._pick(values)
        if self._others or self._bools:
            out = list(out)
            for i, f in self._others:
                out[i] = f.decode(buf, base)
            for i in self._bools:
                out[i] = bool(out[i])
            out = tuple(out)
        return out


_KINDS = {gdb.TYPE_CODE_PTR: "pointer", gdb.TYPE_CODE_BOOL: "bool",
          gdb.TYPE_CODE_ENUM: "enum", gdb.TYPE_CODE_STRUCT: "struct",
          gdb.TYPE_CODE_UNION: "union", gdb.TYPE_CODE_ARRAY: "array"}


def _kind_of(stripped):
    """(kind, signed) of a type: how ``Field.decode`` reads it."""
    code = stripped.code
    if code in (gdb.TYPE_CODE_INT, gdb.TYPE_CODE_CHAR):
        return "int", stripped.is_signed if hasattr(stripped, "is_signed") else True
    if code == gdb.TYPE_CODE_ENUM:
        # An enum with a negative enumerator has a signed underlying type.
        return "enum", bool(getattr(stripped, "is_signed", False))
    return _KINDS.get(code, "other"), False


class Layout:
    """Field offsets of one struct type, resolved lazily by dotted path and cached.

    ``Layout.of(*names)`` returns None when the type is unknown in this binary, so a caller
    can probe for types that only some QEMU versions have.
    """

    def __init__(self, gdb_type):
        self.type = gdb_type.strip_typedefs()
        self.size = self.type.sizeof
        self.name = str(gdb_type)
        self._fields = {}
        self._top = None
        self._decoders = {}

    @classmethod
    def of(cls, *names):
        key = names
        if key not in _layout_cache:
            found = lookup_type(*names)
            _layout_cache[key] = cls(found) if found is not None else None
        return _layout_cache[key]

    @classmethod
    def of_pointee(cls, field):
        """The ``Layout`` of what a pointer ``Field`` points to (its declared type), or None
        when it is no pointer to a struct with a size."""
        if field is None or field.kind != "pointer" or field.type is None:
            return None
        try:
            pointee = field.type.strip_typedefs().target()
            if pointee.strip_typedefs().code != gdb.TYPE_CODE_STRUCT or not pointee.sizeof:
                return None
        except (gdb.error, RuntimeError):
            return None
        return cls.of_type(pointee)

    @classmethod
    def of_type(cls, gdb_type):
        key = ("<type>", str(gdb_type))
        if key not in _layout_cache:
            _layout_cache[key] = cls(gdb_type)
        return _layout_cache[key]

    def field(self, path):
        """The ``Field`` for ``path`` ("a.b.c"), or None if this version has no such field."""
        if path in self._fields:
            return self._fields[path]
        found = _resolve(self.type, path.split("."), 0)
        self._fields[path] = found
        return found

    def has(self, path):
        return self.field(path) is not None

    def decoder(self, paths):
        """The ``Decoder`` of ``paths`` (a tuple of field paths) in this layout, built once."""
        found = self._decoders.get(paths)
        if found is None:
            found = self._decoders[paths] = Decoder([self.field(p) for p in paths])
        return found

    def top_level_fields(self):
        """(name, Field) for each named top-level member, in declaration order (computed once
        per layout: ``Type.fields()`` is slow, and lists call this once per object)."""
        if self._top is None:
            self._top = tuple((f.name, self.field(f.name)) for f in self.type.fields() if f.name)
        return list(self._top)


def _resolve(stripped, parts, base_bits):
    name, rest = parts[0], parts[1:]
    for f in stripped.fields():
        if f.name is None or f.name == "":
            # anonymous struct/union member: look inside it
            inner = f.type.strip_typedefs()
            if inner.code in (gdb.TYPE_CODE_STRUCT, gdb.TYPE_CODE_UNION):
                found = _resolve(inner, parts, base_bits + f.bitpos)
                if found is not None:
                    return found
            continue
        if f.name != name:
            continue
        ftype = f.type.strip_typedefs()
        bits = base_bits + f.bitpos
        if rest:
            if ftype.code not in (gdb.TYPE_CODE_STRUCT, gdb.TYPE_CODE_UNION):
                return None
            return _resolve(ftype, rest, bits)
        kind, signed = _kind_of(ftype)
        if f.bitsize:
            return Field(bits // 8, (f.bitsize + bits % 8 + 7) // 8,
                         "bool" if kind == "bool" else "int", signed and kind != "bool",
                         bits % 8, f.bitsize, f.type)
        return Field(bits // 8, ftype.sizeof, kind, signed, 0, 0, f.type)
    return None


class FixedLayout:
    """A ``Layout`` for structures whose type is not in the debug info (GLib internals).

    ``fields`` maps a name to (offset, size, kind[, signed]); offsets come from the GLib
    version in use and are validated by the caller before being trusted.
    """

    def __init__(self, name, size, fields):
        self.name = name
        self.size = size
        self._fields = {key: Field(spec[0], spec[1], spec[2], *spec[3:])
                        for key, spec in fields.items()}
        self._decoders = {}

    def field(self, path):
        return self._fields.get(path)

    def has(self, path):
        return path in self._fields

    decoder = Layout.decoder

    def top_level_fields(self):
        return list(self._fields.items())


class View:
    """One structure read from the target in a single memory read, decoded on demand."""

    __slots__ = ("layout", "address", "buf")

    def __init__(self, layout, address, buf):
        self.layout = layout
        self.address = address
        self.buf = buf

    def __getitem__(self, path):
        # Layout.field inlined (its cache is a dict): views are decoded in every loop.
        fields = self.layout._fields
        f = fields[path] if path in fields else self.layout.field(path)
        if f is None:
            raise KeyError(f"{self.layout.name} has no field {path}")
        return f.decode(self.buf)

    def get(self, *paths, default=None):
        """Value of the first of ``paths`` this structure has, else ``default`` (n/a)."""
        fields = self.layout._fields
        for path in paths:
            f = fields[path] if path in fields else self.layout.field(path)
            if f is not None:
                return f.decode(self.buf)
        return default

    def values(self, *paths):
        """(value of each of ``paths``), None for a field this version lacks: one ``struct``
        unpack for all of them (``Layout.decoder``), for readers that run once per object."""
        return self.layout.decoder(paths)(self.buf)

    def has(self, path):
        return self.layout.field(path) is not None

    def address_of(self, path):
        return self.address + self.layout.field(path).offset

    def bytes_of(self, path):
        f = self.layout.field(path)
        return self.buf[f.offset:f.offset + f.size]

    def holds(self, address, size):
        """True when [address, address + size) lies inside this structure's bytes."""
        return self.address <= address and address + size <= self.address + len(self.buf)

    def inner(self, layout, address):
        """A ``View`` of the structure at ``address`` inside this one (a Chardev's
        chr_write_lock, a SocketChardev's Chardev), made of bytes already read."""
        start = address - self.address
        return View(layout, address, self.buf[start:start + layout.size])


class Memory:
    """Reads target memory, with a per-command cache so a structure is read only once.

    Create a fresh ``Memory`` for every command: a live process changes between stops.
    ``reads`` counts the read_memory calls made (benchmarks and tests use it).
    """

    def __init__(self, inferior=None):
        self.inferior = inferior or gdb.selected_inferior()
        self._cache = {}
        self._longest = {}      # address -> the longest bytes read there
        self.reads = 0
        # QCG_READ_LOG=FILE: append "address size" of every read (the fuzzer's oracle of
        # which bytes a report depends on, recorded from a healthy run).
        self._log = os.environ.get("QCG_READ_LOG")

    def read(self, address, size, what="memory"):
        if not address:
            raise TargetReadError(f"{what} (NULL pointer)")
        key = (address, size)
        buf = self._cache.get(key)
        if buf is None:
            longest = self._longest.get(address)
            if longest is not None and len(longest) >= size:
                # the start of a structure already read (an Object's class in its Chardev,
                # a GSource in its IOWatchPoll): no second read of the same bytes
                buf = self._cache[key] = longest[:size]
                return buf
            try:
                buf = bytes(self.inferior.read_memory(address, size))
            except (gdb.MemoryError, gdb.error, OverflowError, ValueError) as exc:
                raise TargetReadError(what, address) from exc
            self.reads += 1
            self._cache[key] = buf
            if longest is None or size > len(longest):
                self._longest[address] = buf
            if self._log:
                _log_read(self._log, address, size)
        return buf

    def try_read(self, address, size):
        """Like ``read``, but None instead of an error (for pointers that may be garbage)."""
        try:
            return self.read(address, size)
        except TargetReadError:
            return None

    def view(self, layout, address, what=None, within=None):
        """Read ``layout.size`` bytes at ``address`` and return a ``View``; when ``within`` (a
        ``View``) already holds those bytes, they are taken from it instead of read again."""
        if within is not None and within.holds(address, layout.size):
            return within.inner(layout, address)
        return View(layout, address, self.read(address, layout.size, what or layout.name))

    def pointer(self, address, what="pointer"):
        return int.from_bytes(self.read(address, POINTER_SIZE, what), "little")

    def u32(self, address, what="integer"):
        return int.from_bytes(self.read(address, 4, what), "little")

    def cstring(self, address, limit=256, what="string"):
        """A NUL-terminated string (at most ``limit`` bytes); None for NULL; '?' if unreadable.
        An invalid UTF-8 byte reads as ``\\xNN`` (``model.text``: shown escaped, valid JSON)."""
        if not address:
            return None
        # One read up to the end of the page (never past the end of a mapping) finds nearly
        # every string (labels, type and property names) at once.
        step = min(_PAGE - address % _PAGE, limit)
        try:
            piece = self.read(address, step, what)
        except TargetReadError:
            piece = None        # e.g. a core cut inside the page: the short reads below
        if piece is not None:
            nul = piece.find(b"\0")
            if nul >= 0:
                return piece[:nul].decode("utf-8", "backslashreplace")
            if step == limit:
                return piece.decode("utf-8", "backslashreplace") + "..."
        out = b""
        chunk = 64
        try:
            while len(out) < limit:
                # Aligned chunks: as much of the string as can be read.
                step = min(chunk - (address + len(out)) % chunk, limit - len(out))
                piece = self.read(address + len(out), step, what)
                nul = piece.find(b"\0")
                if nul >= 0:
                    return (out + piece[:nul]).decode("utf-8", "backslashreplace")
                out += piece
        except TargetReadError:
            if not out:
                raise
        return out.decode("utf-8", "backslashreplace") + "..."


def _log_read(path, address, size):
    try:
        with open(path, "a", encoding="ascii") as handle:
            handle.write(f"{address:x} {size:x}\n")
    except OSError:
        pass


def symbol_address(name):
    """Address of a global or static symbol (data or function), with or without debug info.

    Returns None when the symbol is unknown (e.g. a library not loaded yet).
    """
    if name in _symbol_address_cache:
        return _symbol_address_cache[name]
    address = None
    try:
        sym = gdb.lookup_global_symbol(name) or gdb.lookup_static_symbol(name)
        if sym is not None and sym.addr_class != gdb.SYMBOL_LOC_TYPEDEF:
            address = int(sym.value().address)
    except (gdb.error, RuntimeError):
        address = None
    if address is None:
        address = _minimal_symbol_address(name)
    _symbol_address_cache[name] = address
    return address


# `info address NAME` of a minimal (ELF) symbol, e.g. GLib's g_idle_funcs without debug info.
_INFO_ADDRESS_MINSYM = ("is at 0x", "in a file compiled without debugging")


def _minimal_symbol_address(name):
    """The address of a symbol that has no debug info, or None.  ``info address`` answers in
    well under a millisecond; ``parse_and_eval("&'name'")`` took 7-10 ms per name (found or
    not) on a QEMU with debug info, and the census asks for about twenty names."""
    try:
        text = gdb.execute(f"info address {name}", to_string=True)
    except gdb.error:
        return None             # "No symbol ... in current context."
    head, at, tail = text.partition(_INFO_ADDRESS_MINSYM[0])
    if at and _INFO_ADDRESS_MINSYM[1] in tail and head.startswith(f'Symbol "{name}"'):
        try:
            return int("0x" + tail.split()[0], 16)
        except ValueError:
            pass
    try:
        # Any other answer (another gdb's wording): the expression, slower but general.
        return int(gdb.parse_and_eval(f"(unsigned long)&'{name}'"))
    except gdb.error:
        return None


def symbol_name(address):
    """The symbol at ``address`` ("func", "sym+8"), or None if there is none."""
    if not address:
        return None
    if address in _symbol_name_cache:
        return _symbol_name_cache[address]
    name = None
    try:
        block = gdb.block_for_pc(address)
        func = block.function if block is not None else None
        while block is not None and func is None:
            block = block.superblock
            func = block.function if block is not None else None
        if func is not None and func.value().address is not None \
                and int(func.value().address) == address:
            name = func.print_name
    except (RuntimeError, gdb.error):
        name = None
    if name is None:
        try:
            text = gdb.format_address(address)
        except (gdb.error, ValueError, RuntimeError):
            text = ""
        # "0x5555... <g_idle_funcs>" or "0x... <sym+16>"; no angle brackets: no symbol.
        lt = text.find("<")
        if lt >= 0 and text.endswith(">"):
            name = text[lt + 1:-1]
            if " in " in name:  # "<sym in /lib/libx.so>"
                name = name.split(" in ")[0]
    _symbol_name_cache[address] = name
    return name


def static_value_address(spec):
    """The value of a pointer variable such as ``object_get_root::root``; None if unknown.

    Called a handful of times per command, never in loops.
    """
    try:
        return int(gdb.parse_and_eval(spec))
    except gdb.error:
        return None


def address_of_expression(spec):
    """Address a user expression designates: a pointer's value or a struct's address."""
    try:
        value = gdb.parse_and_eval(spec)
        vtype = value.type.strip_typedefs()
        if vtype.code in (gdb.TYPE_CODE_STRUCT, gdb.TYPE_CODE_UNION):
            if value.address is None:
                raise TargetReadError(f"{spec!r} (not an lvalue)")
            return int(value.address), value.type
        if vtype.code == gdb.TYPE_CODE_PTR:
            return int(value), vtype.target()
        return int(value), None
    except (gdb.error, gdb.MemoryError) as exc:
        raise TargetReadError(f"{spec!r}: {exc}") from None
