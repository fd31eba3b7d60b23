"""Reading GSources (through QEMU's debug info or GLib's stable public layout)."""
from qemu_chardev.model import glib as glib_facts
from qemu_chardev.model.errors import TargetReadError
from qemu_chardev.model.objects import GSourceState
from qemu_chardev.readers import glib
from qemu_chardev.target import memory as target

NAME_LIMIT = 96


_FIELDS = ("ref_count", "flags", "context", "source_id", "priority", "source_funcs", "name",
           "callback_data")


def read_gsource(snap, address, role=None):
    """A GSourceState with decoded flags, symbols and its state (``model.glib.STATES``).

    A structure that starts with this GSource (an IOWatchPoll) and was read already serves
    the read (``Memory.read``)."""
    src = GSourceState(address=address, role=role)
    try:
        view = snap.mem.view(glib.gsource_layout(), address, "GSource")
    except TargetReadError as exc:
        src.problems.append(str(exc))
        src.state = glib_facts.UNREADABLE
        return src
    (src.ref_count, src.flags, src.context, src.source_id, src.priority, src.funcs,
     name, callback_data) = view.values(*_FIELDS)
    src.flag_names = glib_facts.gsource_flag_names(src.flags)
    src.state = glib_facts.gsource_state(src.ref_count, src.flags, src.context, src.priority)
    if src.state in (glib_facts.FREED, glib_facts.INVALID):
        return src     # the rest is garbage; do not chase its pointers
    src.funcs_symbol = target.symbol_name(src.funcs)
    if name:
        try:
            src.name = snap.mem.cstring(name, NAME_LIMIT, "GSource name")
        except TargetReadError:
            src.problems.append("name unreadable")
    func, data = glib.read_gsource_callback(snap.mem.try_read, callback_data)
    if func:
        src.callback = func
        src.callback_symbol = target.symbol_name(func)
        src.callback_data = data
    return src
