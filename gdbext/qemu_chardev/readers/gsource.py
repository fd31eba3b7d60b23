"""Reading GSources (through QEMU's debug info or GLib's stable public layout)."""
from qemu_chardev.analysis import locks as analysis
from qemu_chardev.readers import glib
from qemu_chardev.target import memory as target
from qemu_chardev.model.errors import TargetReadError
from qemu_chardev.model.objects import GSourceState

NAME_LIMIT = 96


def read_gsource(snap, address, role=None):
    """A GSourceState with decoded flags, symbols and a one-word verdict."""
    state = GSourceState(address=address, role=role)
    try:
        view = snap.mem.view(glib.gsource_layout(), address, "GSource")
    except TargetReadError as exc:
        state.problems.append(str(exc))
        state.verdict = "unreadable"
        return state
    state.ref_count = view["ref_count"]
    state.flags = view["flags"]
    state.flag_names = analysis.gsource_flag_names(state.flags)
    state.context = view["context"]
    state.source_id = view["source_id"]
    state.priority = view["priority"]
    state.funcs = view["source_funcs"]
    state.verdict = analysis.gsource_verdict(state.ref_count, state.flags, state.context,
                                             state.priority)
    if state.verdict == "looks-freed":
        return state     # the rest is garbage; do not chase its pointers
    state.funcs_symbol = target.symbol_name(state.funcs)
    if view["name"]:
        try:
            state.name = snap.mem.cstring(view["name"], NAME_LIMIT, "GSource name")
        except TargetReadError:
            state.problems.append("name unreadable")
    func, data = glib.read_gsource_callback(snap.mem, view["callback_data"])
    if func:
        state.callback = func
        state.callback_symbol = target.symbol_name(func)
        state.callback_data = data
    return state
