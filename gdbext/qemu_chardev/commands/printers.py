"""gdb pretty-printers for Chardev, SocketChardev, QemuMutex and GSource.

Registered through gdb.printing as "qemu-chardev-gdb", so `info pretty-printer` lists them
and `disable pretty-printer global qemu-chardev-gdb` turns them off.  Each prints a one-line
summary and then the structure's own fields as children, so `print *chr` loses nothing.
"""
import gdb
import gdb.printing

from qemu_chardev.model.errors import QcgError
from qemu_chardev.readers import glib
from qemu_chardev.readers.chardev import read_chardev
from qemu_chardev.readers.gsource import read_gsource
from qemu_chardev.readers.mutex import read_mutex
from qemu_chardev.render import base as render
from qemu_chardev.target.snapshot import Snapshot

PRINTER_NAME = "qemu-chardev-gdb"


class _Printer:
    def __init__(self, value):
        self.value = value

    def children(self):
        vtype = self.value.type.strip_typedefs()
        for field in vtype.fields():
            if field.name:
                yield field.name, self.value[field.name]

    def summary(self, snap, address):
        raise NotImplementedError

    def to_string(self):
        address = self.value.address
        if address is None:
            return None
        try:
            return self.summary(Snapshot(), int(address))
        except (QcgError, gdb.error, gdb.MemoryError) as exc:
            return f"<unreadable: {exc}>"


class ChardevPrinter(_Printer):
    def summary(self, snap, address):
        ch = read_chardev(snap, address, in_tree=None)
        text = f"Chardev {ch.label!r} ({ch.type})"
        if ch.is_socket:
            text += (f" state={ch.state} ioc={render.pointer(ch.ioc)}"
                     f" sioc={render.pointer(ch.sioc)}")
        return text + " chr_write_lock=" + render.lock_summary(ch.write_lock)


class MutexPrinter(_Printer):
    def summary(self, snap, address):
        lock = read_mutex(snap, address)
        text = "QemuMutex " + render.lock_summary(lock)
        return text + (f" (locked at {lock.locker})" if lock.locker else "")


class GSourcePrinter(_Printer):
    def summary(self, snap, address):
        src = read_gsource(snap, address)
        flags = "|".join(src.flag_names) or "none"
        text = f"GSource {src.state} ref_count={src.ref_count} flags={flags} id={src.source_id}"
        if src.funcs_symbol:
            text += f" funcs={src.funcs_symbol}"
        return text


class HashTablePointerPrinter:
    """``GHashTable *`` read without GLib debug info.

    GLib's own auto-loaded printer needs GLib's debug info and fails with "There is no member
    named keys" in the middle of `print *chr`; this one takes precedence over it.
    """

    def __init__(self, value):
        self.value = value

    def to_string(self):
        address = int(self.value)
        if not address:
            return "0x0"
        try:
            table = glib.HashTable(Snapshot().mem, address)
        except (QcgError, gdb.error, gdb.MemoryError):
            return f"0x{address:x} (GHashTable, unreadable)"
        return f"0x{address:x} (GHashTable, {table.nnodes} entries)"


_BY_NAME = {
    "Chardev": ChardevPrinter, "SocketChardev": ChardevPrinter,
    "QemuMutex": MutexPrinter,
    "GSource": GSourcePrinter, "_GSource": GSourcePrinter,
}


class _Lookup(gdb.printing.PrettyPrinter):
    """Matches by typedef name or struct tag (SocketChardev had no tag before QEMU 5.2)."""

    def __init__(self):
        super().__init__(PRINTER_NAME, [gdb.printing.SubPrettyPrinter(n)
                                        for n in [*_BY_NAME, "GHashTable"]])

    def __call__(self, value):
        vtype = value.type
        stripped = vtype.strip_typedefs()
        if stripped.code == gdb.TYPE_CODE_PTR:
            target_type = stripped.target()
            if (target_type.name == "GHashTable"
                    or target_type.strip_typedefs().tag == "_GHashTable") \
                    and self._enabled("GHashTable"):
                return HashTablePointerPrinter(value)
            return None
        if vtype.code == gdb.TYPE_CODE_TYPEDEF and vtype.name in _BY_NAME:
            name = vtype.name
        else:
            stripped = vtype.strip_typedefs()
            if stripped.code != gdb.TYPE_CODE_STRUCT:
                return None
            name = stripped.tag or vtype.name
        if name in _BY_NAME and self._enabled(name):
            return _BY_NAME[name](value)
        return None

    def _enabled(self, name):
        return self.enabled and any(sub.name == name and sub.enabled for sub in self.subprinters)


def _precede_glib_printers(objfile):
    """Put our lookup first in libglib's own printer list, where GLib's printer sits."""
    if objfile is None or "libglib-2.0" not in (objfile.filename or ""):
        return
    objfile.pretty_printers[:] = [p for p in objfile.pretty_printers
                                  if getattr(p, "name", None) != PRINTER_NAME]
    objfile.pretty_printers.insert(0, _LOOKUP)


_LOOKUP = None


def register():
    global _LOOKUP
    _LOOKUP = _Lookup()
    gdb.printing.register_pretty_printer(None, _LOOKUP, replace=True)
    for objfile in gdb.objfiles():
        _precede_glib_printers(objfile)
    gdb.events.new_objfile.connect(lambda event: _precede_glib_printers(event.new_objfile))
