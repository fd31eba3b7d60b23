"""GLib internals read without GLib debug info: GHashTable, GSource, version.

GLib's private structures (GHashTable, GMainContext) change layout between releases.  The
layout is chosen from the GLib version found in the target (``glib_minor_version``) and every
table header is validated before it is trusted; if validation fails, the other known layouts
are tried and the caller is told, never handed a silent guess.
"""
from . import target
from .errors import TargetReadError
from .target import FixedLayout, Layout

_version_cache = target.objfile_cache()

# GHashTable header layouts (x86_64), by the first GLib minor version that has them.
# Offsets: size, size width, nnodes, noccupied, have_big_* flags word (None: not present),
# keys, hashes, values, ref_count, and the header size.
_HASH_LAYOUTS = [
    ("2.62+", 62, dict(size=(0, 8), nnodes=16, noccupied=20, big=24,
                       keys=32, hashes=40, values=48, ref=72, header=96)),
    ("2.60", 60, dict(size=(0, 4), nnodes=12, noccupied=16, big=20,
                      keys=24, hashes=32, values=40, ref=64, header=88)),
    ("2.56", 0, dict(size=(0, 4), nnodes=12, noccupied=16, big=None,
                     keys=24, hashes=32, values=40, ref=64, header=88)),
]
HASH_TABLE_MAX_SIZE = 1 << 24


def glib_version():
    """(major, minor, micro) of the GLib loaded in the target, or None if not readable."""
    if "v" in _version_cache:
        return _version_cache["v"]
    version = None
    parts = []
    for name in ("glib_major_version", "glib_minor_version", "glib_micro_version"):
        address = target.symbol_address(name)
        if address is None:
            break
        try:
            parts.append(target.Memory().u32(address, name))
        except TargetReadError:
            break
    if len(parts) == 3 and parts[0] == 2:
        version = tuple(parts)
    _version_cache["v"] = version
    return version


def _hash_layout_order():
    version = glib_version()
    if version is None:
        return list(_HASH_LAYOUTS)
    chosen = [lay for lay in _HASH_LAYOUTS if version[1] >= lay[1]][:1]
    return chosen + [lay for lay in _HASH_LAYOUTS if lay not in chosen]


def _u(buf, offset, size):
    return int.from_bytes(buf[offset:offset + size], "little")


def _valid_header(buf, lay):
    size = _u(buf, *lay["size"])
    nnodes = _u(buf, lay["nnodes"], 4)
    noccupied = _u(buf, lay["noccupied"], 4)
    ref = _u(buf, lay["ref"], 4)
    if size < 8 or size > HASH_TABLE_MAX_SIZE or size & (size - 1):
        return False
    if not (nnodes <= noccupied <= size):
        return False
    if not _u(buf, lay["keys"], 8) or not _u(buf, lay["hashes"], 8):
        return False
    return 0 < ref < 1 << 20


class HashTable:
    """A validated GHashTable header.  ``items()`` yields (key, value) integers."""

    def __init__(self, mem, address, what="GHashTable"):
        self.mem = mem
        self.address = address
        self.what = what
        self.layout_name = None
        self.problems = []
        last = None
        for name, _minor, lay in _hash_layout_order():
            buf = mem.read(address, lay["header"], what)
            if _valid_header(buf, lay):
                self._lay, self._buf, self.layout_name = lay, buf, name
                break
            last = name
        else:
            raise TargetReadError(f"{what} (no known GHashTable layout validates; tried up to {last})",
                                  address)
        expected = _hash_layout_order()[0][0]
        if self.layout_name != expected:
            self.problems.append(f"{what} at 0x{address:x}: GLib {glib_version()} expects the "
                                 f"{expected} hash table layout but only {self.layout_name} validated")
        lay, buf = self._lay, self._buf
        self.size = _u(buf, *lay["size"])
        self.nnodes = _u(buf, lay["nnodes"], 4)
        flags = _u(buf, lay["big"], 4) if lay["big"] is not None else 3
        self.big_keys = bool(flags & 1)
        self.big_values = bool(flags & 2)
        self.keys = _u(buf, lay["keys"], 8)
        self.hashes = _u(buf, lay["hashes"], 8)
        self.values = _u(buf, lay["values"], 8)

    def _slots(self, address, big):
        width = 8 if big else 4
        buf = self.mem.read(address, self.size * width, self.what + " slots")
        return [int.from_bytes(buf[i:i + width], "little") for i in range(0, len(buf), width)]

    def items(self):
        """Every live (key, value), in slot order; records a problem if counts disagree."""
        hashes_buf = self.mem.read(self.hashes, self.size * 4, self.what + " hashes")
        keys = self._slots(self.keys, self.big_keys)
        if self.values == self.keys:
            values = keys
        else:
            values = self._slots(self.values, self.big_values)
        live = 0
        out = []
        for i in range(self.size):
            if int.from_bytes(hashes_buf[4 * i:4 * i + 4], "little") >= 2:
                live += 1
                out.append((keys[i], values[i]))
        if live != self.nnodes:
            self.problems.append(f"{self.what} at 0x{self.address:x}: {live} live slots but "
                                 f"nnodes={self.nnodes} (table being modified, or not a hash table)")
        return out


# struct _GSource is public and identical since GLib 2.28; QEMU's own debug info normally
# carries it.  This fallback is used only when it does not.
_GSOURCE_FALLBACK = FixedLayout("GSource", 96, {
    "callback_data": (0, 8, "pointer"), "callback_funcs": (8, 8, "pointer"),
    "source_funcs": (16, 8, "pointer"), "ref_count": (24, 4, "uint"),
    "context": (32, 8, "pointer"), "priority": (40, 4, "int", True), "flags": (44, 4, "uint"),
    "source_id": (48, 4, "uint"), "poll_fds": (56, 8, "pointer"), "prev": (64, 8, "pointer"),
    "next": (72, 8, "pointer"), "name": (80, 8, "pointer"), "priv": (88, 8, "pointer"),
})

# GSourceCallback {gint ref_count; GSourceFunc func; gpointer data; GDestroyNotify notify}
_GSOURCE_CALLBACK = FixedLayout("GSourceCallback", 32, {
    "ref_count": (0, 4, "int", True), "func": (8, 8, "pointer"),
    "data": (16, 8, "pointer"), "notify": (24, 8, "pointer"),
})


def gsource_layout():
    """Layout of GSource: from debug info when present, else GLib's stable public layout."""
    return Layout.of("GSource", "struct _GSource") or _GSOURCE_FALLBACK


def read_gsource_callback(mem, callback_data):
    """(func, data) of a GSourceCallback, or (None, None) if it does not look like one.

    Without GLib debug info the static ``g_source_callback_funcs`` cannot be named, so the
    structure is accepted only if its ref_count is sane and ``func`` is a known function.
    """
    if not callback_data:
        return None, None
    try:
        view = mem.view(_GSOURCE_CALLBACK, callback_data, "GSourceCallback")
    except TargetReadError:
        return None, None
    if not 0 < view["ref_count"] < 1 << 16:
        return None, None
    func = view["func"]
    if not func or target.symbol_name(func) is None:
        return None, None
    return func, view["data"]
