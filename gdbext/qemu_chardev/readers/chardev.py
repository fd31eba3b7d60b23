"""Reading Chardev / SocketChardev and everything hanging off them."""
from qemu_chardev.model import qemu
from qemu_chardev.model.liveness import CHARDEV, DAMAGED, DEAD, UNREADABLE
from qemu_chardev.readers import census, glib, liveness, qom
from qemu_chardev.readers.qom import chardev_layout, socket_layout
from qemu_chardev.target import memory as target
from qemu_chardev.model.errors import QcgError, TargetReadError
from qemu_chardev.readers.gsource import read_gsource
from qemu_chardev.model.objects import ChardevState, ObjectState
from qemu_chardev.readers.mutex import read_mutex
from qemu_chardev.readers.qiotask import read_qiotask
from qemu_chardev.target.memory import Layout

SOCKET_TYPE = "chardev-socket"
SOCKET_OBJECTS = ("ioc", "sioc", "listener")
# Fields every version is shown with; a version that lacks one shows "n/a".
SOCKET_FIELDS_OF_INTEREST = (
    "state", "ioc", "sioc", "listener", "hup_source", "is_listen", "is_telnet", "is_websock",
    "tls_creds", "telnet_source", "reconnect_timer", "reconnect_time", "reconnect_time_ms",
    "connect_err_reported", "connect_task", "registered_yank", "max_size", "do_nodelay",
)
NA = "n/a"
DAMAGED_PREFIX = "damaged: "
MAX_QOM_REF = 1 << 20
CENSUS_CALLBACKS = ("tcp_chr_hup", "tcp_chr_read", "tcp_chr_accept", "socket_reconnect_timeout",
                    "tcp_chr_telnet_init_io", "char_socket_yank_iochannel")
CENSUS_CHARDEV_LIMIT = 256

_enum_names = target.objfile_cache()


def enum_name(field, value):
    """Enumerator name of an enum field's value (cached per enum type)."""
    key = str(field.type)
    names = _enum_names.get(key)
    if names is None:
        names = {f.enumval: f.name for f in field.type.strip_typedefs().fields()}
        _enum_names[key] = names
    return names.get(value, value)


def display_value(layout, view, name):
    """A field as shown to users: pointers as 0x..., NULL as None, enums by name."""
    field = layout.field(name)
    if field is None:
        return NA
    value = field.decode(view.buf)
    if field.kind == "pointer":
        return None if not value else f"0x{value:x}"
    if field.kind == "enum":
        return enum_name(field, value)
    return value


def read_chardev(snap, address, label=None, found_via="qom", in_tree=True, deep=False):
    """A ChardevState for the Chardev at ``address``.

    The shallow read (for lists) costs one read of the structure, its label and its type;
    ``deep`` adds GSources, channel objects, the connect task and lock waiters.
    """
    base = chardev_layout()
    state = ChardevState(address=address, label=label, type=None, in_tree=in_tree,
                         found_via=found_via)
    try:
        ancestry = qom.type_ancestry(snap, address)
    except TargetReadError as exc:
        state.problems.append(f"not a readable QOM object: {exc}")
        snap.note(f"chardev at 0x{address:x}: {exc}")
        return state
    state.type = ancestry[0]
    state.is_socket = SOCKET_TYPE in ancestry
    layout = socket_layout() if state.is_socket else base
    if layout is None:
        layout = base
        state.problems.append("type SocketChardev unknown: socket fields not shown")
        state.is_socket = False
    try:
        view = snap.mem.view(layout, address, state.type)
    except TargetReadError as exc:
        state.problems.append(str(exc))
        return state
    prefix = "parent." if layout is not base else ""
    try:
        own_label = snap.mem.cstring(view[prefix + "label"], 256, "label")
    except TargetReadError as exc:
        own_label = None
        _damaged(snap, state, f"chr->label 0x{view[prefix + 'label']:x} unreadable ({exc})")
    if own_label is not None and not qom.printable_name(own_label):
        _damaged(snap, state, f"chr->label {own_label!r} is not a printable NUL-terminated "
                              "string")
        own_label = None
    if label is not None and own_label is not None and own_label != label:
        state.problems.append(f"QOM name {label!r} differs from chr->label {own_label!r}")
    state.label = own_label if own_label is not None else label
    state.be_open = view.get(prefix + "be_open")
    state.frontend = view.get(prefix + "be", prefix + "fe")
    try:
        state.filename = snap.mem.cstring(view.get(prefix + "filename"), 256, "filename")
    except TargetReadError:
        state.problems.append("filename unreadable")
    lock_address = view.address_of(prefix + "chr_write_lock")
    state.write_lock = read_mutex(snap, lock_address, with_waiters=deep)
    if state.is_socket:
        _read_socket_part(snap, state, layout, view, deep)
    if deep:
        gsource = view.get(prefix + "gsource")
        if gsource:
            state.gsources[0:0] = _watch_poll_sources(snap, gsource)
    return state


def _watch_poll_sources(snap, address):
    """chr->gsource and, when it is an IOWatchPoll, the channel watch it drives (iwp->src)."""
    outer = read_gsource(snap, address, role="gsource")
    found = [outer]
    layout = Layout.of("IOWatchPoll", "struct IOWatchPoll")
    if outer.funcs_symbol == "io_watch_poll_funcs" and layout is not None and layout.has("src"):
        try:
            inner = snap.mem.view(layout, address, "IOWatchPoll")["src"]
        except TargetReadError as exc:
            outer.problems.append(f"IOWatchPoll: {exc}")
            inner = 0
        if inner:
            found.append(read_gsource(snap, inner, role="gsource.src"))
    return found


def _damaged(snap, state, what):
    """A field value no live chardev has: shown as read, never trusted, noted."""
    state.problems.append(f"{DAMAGED_PREFIX}{what}")
    who = f"chardev {state.label} at" if state.label else "chardev at"
    snap.note(f"{who} 0x{state.address:x}: damaged: {what}")


def _read_socket_part(snap, state, layout, view, deep):
    raw_state = display_value(layout, view, "state")
    state.state = qemu.socket_state_name(raw_state)
    if isinstance(raw_state, int):        # no enumerator has this value
        _damaged(snap, state, f"state {raw_state} is outside the TCPChardevState enum")
    state.ioc = view["ioc"]
    state.sioc = view["sioc"]
    state.listener = view["listener"]
    state.fields = {name: display_value(layout, view, name) for name in SOCKET_FIELDS_OF_INTEREST}
    state.fields["state"] = state.state
    for name, field in layout.top_level_fields():
        if name not in state.fields and name != "parent" and field is not None \
                and field.kind in ("pointer", "int", "uint", "bool", "enum"):
            state.fields[name] = display_value(layout, view, name)
    if not deep:
        return
    for role in qemu.SOCKET_GSOURCE_FIELDS:
        address = view[role]
        if address:
            state.gsources.append(read_gsource(snap, address, role=role))
    for role in SOCKET_OBJECTS:
        address = view[role]
        if address:
            state.objects.append(read_object(snap, address, role))
    task = view.get("connect_task")
    if task:
        state.connect_task = read_qiotask(snap, task, found_via=f"{state.label}.connect_task")


def read_object(snap, address, role):
    """An ObjectState: QOM type, refcount and, for socket channels, the fd."""
    state = ObjectState(address=address, role=role)
    try:
        state.type = qom.type_ancestry(snap, address)[0]
        state.ref = qom.object_ref(snap, address)
    except TargetReadError as exc:
        state.problems.append(str(exc))
        return state
    if state.ref >= MAX_QOM_REF:      # shown as read, never trusted
        state.problems.append(f"{DAMAGED_PREFIX}Object.ref {state.ref} is no live object's "
                              "count")
    if state.type == "qio-channel-socket":
        layout = Layout.of("QIOChannelSocket", "struct QIOChannelSocket")
        if layout is not None and layout.has("fd"):
            try:
                state.fd = snap.mem.view(layout, address, "QIOChannelSocket")["fd"]
            except TargetReadError as exc:
                state.problems.append(str(exc))
    return state


def find_chardevs(snap, deep=False, include_frames=True, alive=None, census=None):
    """Every chardev: those in the QOM tree, then those only seen in thread frames, then
    those only a GSource of ``census`` (a ``Census``, optional) leads to.

    A frame's chardev that is no live QOM chardev any more is listed when ``alive`` (a
    ``readers.liveness.Liveness``, made here if None) finds it finalized or freed, with that
    verdict and none of its (garbage) fields; other garbage pointers are not listed.  A tree
    that cannot be read (a damaged heap) is noted and the other sources still searched."""
    found = []
    seen = set()
    try:
        in_tree = qom.chardevs_in_tree(snap)
    except qom.NoQemuDebugInfo:
        raise
    except QcgError as exc:
        snap.note(f"QOM tree: {exc}")
        in_tree = []
    for label, address in in_tree:
        found.append(_read_guarded(snap, address, label=label, deep=deep))
        seen.add(address)
    if not include_frames:
        return found
    alive = alive or liveness.Liveness(snap)
    for lwp, frame, name, address in snap.frame_pointers("Chardev", "SocketChardev"):
        if address in seen:
            continue
        seen.add(address)
        where = f"frame of {frame.function} (LWP {lwp})"
        verdict = alive.judge(address, CHARDEV, liveness.frame_holder(
            lwp, snap.threads()[lwp].num, frame, name)).verdict
        if qom.is_a(snap, address, "chardev"):
            state = _read_guarded(snap, address, found_via=where, in_tree=False, deep=deep)
        elif verdict in DEAD or verdict in (DAMAGED, UNREADABLE):
            # dead: listed with its verdict; damaged or unreadable: listed as such, never
            # trusted (a frame of chardev code holds it, so it should be one)
            state = ChardevState(address=address, label=None, type=None, in_tree=False,
                                 found_via=where)
            if verdict not in DEAD:
                snap.note(f"{where}: {name}=0x{address:x} is no readable chardev "
                          f"({verdict})")
        else:
            snap.note(f"{where}: {name}=0x{address:x} is an object of another QOM type, not "
                      "a chardev (damaged pointer or type)")
            continue
        state.liveness = verdict
        found.append(state)
    if census is not None:
        found += census_chardevs(snap, census, seen, deep)
    return found


def census_chardevs(snap, census, seen, deep=False):
    """Chardevs that only the census leads to: the opaque of a live IOWatchPoll and the
    callback data of a live source whose callback is a chardev's (tcp_chr_hup, ...)."""
    out = []
    iwp = Layout.of("IOWatchPoll", "struct IOWatchPoll")
    opaque = iwp.field("opaque") if iwp is not None else None
    for rec in census.records:
        if len(out) >= CENSUS_CHARDEV_LIMIT:
            break
        if not rec.ref_count or rec.state in ("freed", "invalid"):
            continue
        candidate, why = None, None
        if rec.funcs_name == "io_watch_poll_funcs" and opaque is not None:
            try:
                candidate = snap.mem.pointer(rec.address + opaque.offset, "IOWatchPoll.opaque")
            except TargetReadError:
                continue
            why = f"census: IOWatchPoll 0x{rec.address:x} opaque"
        elif rec.callback_name in CENSUS_CALLBACKS and rec.callback_data:
            _func, candidate = glib.read_gsource_callback(snap.mem.try_read, rec.callback_data)
            why = f"census: GSource 0x{rec.address:x} callback {rec.callback_name} data"
        if not candidate or candidate in seen:
            continue
        seen.add(candidate)
        if qom.is_a(snap, candidate, "chardev"):
            out.append(_read_guarded(snap, candidate, found_via=why, in_tree=False, deep=deep))
    return out


def _label_elsewhere(snap, spec):
    """The address of the chardev labelled ``spec`` among those found in thread frames or
    through the census (for a damaged QOM tree), or None."""
    try:
        result = census.take_census(snap, with_frames=False)
    except QcgError as exc:
        snap.note(f"GSource census (to find chardev {spec!r}): {exc}")
        result = None
    for chardev in find_chardevs(snap, census=result):
        if chardev.label == spec:
            return chardev.address
    return None


def _read_guarded(snap, address, **kwargs):
    """read_chardev, with a read failure it did not expect kept to this chardev."""
    try:
        return read_chardev(snap, address, **kwargs)
    except qom.NoQemuDebugInfo:
        raise
    except QcgError as exc:
        snap.note(f"chardev at 0x{address:x}: {exc}")
        state = ChardevState(address=address, label=kwargs.get("label"), type=None,
                             in_tree=kwargs.get("in_tree", True),
                             found_via=kwargs.get("found_via", "qom"))
        state.problems.append(str(exc))
        return state


def resolve_chardev(snap, spec):
    """A Chardev address from a label, an address or a gdb expression.  A label the QOM tree
    does not have, when the tree could not be read whole, is looked for in thread frames and
    through the GSource census too."""
    damaged_before = len(snap.problems)
    for label, address in qom.chardevs_in_tree(snap):
        if label == spec:
            return address, label
    if len(snap.problems) > damaged_before or getattr(snap, "_chardevs_in_tree", None) == []:
        found = _label_elsewhere(snap, spec)
        if found is not None:
            return found, spec
    try:
        address, _pointee = target.address_of_expression(spec)
    except TargetReadError as exc:
        raise TargetReadError(f"chardev {spec!r}: no such label, and not an expression "
                              f"({exc})") from None
    if not qom.is_a(snap, address, "chardev"):
        raise QcgError(f"{spec!r} (0x{address:x}) is not a chardev: no QOM object of a chardev "
                       "type there")
    return address, None
