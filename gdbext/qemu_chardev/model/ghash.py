"""GLib's GHashTable read from raw memory, without GLib debug info (no gdb imports).

The header layout changed in GLib 2.60 (have_big_keys/values), 2.62 (gsize size) and 2.76
(unsigned counts, same offsets).  The layout is chosen from the GLib version when known; every
header is validated before it is trusted, and when the expected layout does not validate the
others are tried and the mismatch is reported in ``problems``, never silently.

``mem`` is anything with ``read(address, size, what) -> bytes`` raising TargetReadError.
"""
from qemu_chardev.model.errors import TargetReadError

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


def hash_layout_order(version):
    """Layouts to try for GLib ``version`` ((2, minor, micro) or None), expected one first."""
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
    """A validated GHashTable header.  ``items()`` returns its (key, value) integers."""

    def __init__(self, mem, address, what="GHashTable", glib_version=None):
        self.mem = mem
        self.address = address
        self.what = what
        self.layout_name = None
        self.problems = []
        last = None
        order = hash_layout_order(glib_version)
        for name, _minor, lay in order:
            buf = mem.read(address, lay["header"], what)
            if _valid_header(buf, lay):
                self._lay, self._buf, self.layout_name = lay, buf, name
                break
            last = name
        else:
            raise TargetReadError(f"{what} (no known GHashTable layout validates; "
                                  f"tried up to {last})", address)
        expected = order[0][0]
        if glib_version is not None and self.layout_name != expected:
            version_text = ".".join(map(str, glib_version))
            self.problems.append(f"{what} at 0x{address:x}: GLib {version_text} expects the "
                                 f"{expected} hash table layout but only "
                                 f"{self.layout_name} validated")
        lay, buf = self._lay, self._buf
        if glib_version is None and self.layout_name == "2.60" \
                and not _u(buf, lay["big"], 4) & 3:
            # 2.56-2.58 headers are the 2.60 header without this flags word (padding, 0):
            # only the version can tell whether slots are 4 or 8 bytes wide.
            self.problems.append(f"{what} at 0x{address:x}: GLib version unknown; read with "
                                 "the 2.60+ layout (4-byte slots), which GLib 2.56/2.58 "
                                 "tables do not have")
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
                                 f"nnodes={self.nnodes} (table being modified, or not a hash "
                                 f"table)")
        return out
