"""GLib internals read without GLib debug info: GHashTable, GSource, version.

GLib's private structures (GHashTable, GMainContext) change layout between releases.  The
layout is chosen from the GLib version found in the target (``glib_minor_version``) and every
table header is validated before it is trusted; if validation fails, the other known layouts
are tried and the caller is told, never handed a silent guess.
"""
from qemu_chardev.model import ghash
from qemu_chardev.model import glib as glib_facts
from qemu_chardev.model.errors import TargetReadError
from qemu_chardev.target import memory as target
from qemu_chardev.target.memory import FixedLayout, Layout

_version_cache = target.objfile_cache()


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


def HashTable(mem, address, what="GHashTable"):
    """A validated ``ghash.HashTable`` using the target's GLib version to pick the layout."""
    return ghash.HashTable(mem, address, what, glib_version())


def _gsource_fallback():
    fields = {}
    for name, offset in glib_facts.GSOURCE_OFFSETS.items():
        if name in glib_facts.GSOURCE_U32_FIELDS:
            fields[name] = (offset, 4, "uint")
        elif name in glib_facts.GSOURCE_S32_FIELDS:
            fields[name] = (offset, 4, "int", True)
        else:
            fields[name] = (offset, 8, "pointer")
    return FixedLayout("GSource", glib_facts.GSOURCE_SIZE, fields)


# QEMU's debug info normally carries struct _GSource; GLib's public layout otherwise.
_GSOURCE_FALLBACK = _gsource_fallback()


def gsource_layout():
    """Layout of GSource: from debug info when present, else GLib's stable public layout."""
    return Layout.of("GSource", "struct _GSource") or _GSOURCE_FALLBACK


def gsource_offsets():
    """{field: offset} of GSource in this target (debug info when it has the type)."""
    layout = gsource_layout()
    return {name: layout.field(name).offset if layout.has(name) else default
            for name, default in glib_facts.GSOURCE_OFFSETS.items()}


def read_gsource_callback(read, callback_data):
    """(func, data) of the GSourceCallback at ``callback_data``, or (None, None).

    ``read(address, size)`` returns bytes or None (a ``Memory`` or a census reader).  The pair
    is trusted only when ``func`` is a known function (``model.glib.decode_gsource_callback``).
    """
    if not callback_data:
        return None, None
    func, data = glib_facts.decode_gsource_callback(read(callback_data,
                                                         glib_facts.GSOURCE_CALLBACK_SIZE))
    if not func or target.symbol_name(func) is None:
        return None, None
    return func, data
