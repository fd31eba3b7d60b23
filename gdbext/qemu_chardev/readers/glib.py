"""GLib internals read without GLib debug info: GHashTable, GSource, version.

GLib's private structures (GHashTable, GMainContext) change layout between releases.  The
layout is chosen from the GLib version found in the target (``glib_minor_version``) and every
table header is validated before it is trusted; if validation fails, the other known layouts
are tried and the caller is told, never handed a silent guess.
"""
from qemu_chardev.model import ghash
from qemu_chardev.target import memory as target
from qemu_chardev.model.errors import TargetReadError
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
