"""Reading Chardev / SocketChardev and everything hanging off them."""
from qemu_chardev.model import qemu
from qemu_chardev.model.liveness import CHARDEV, DEAD
from qemu_chardev.readers import liveness, qom
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
    own_label = snap.mem.cstring(view[prefix + "label"], 256, "label")
    if label is not None and own_label != label:
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


def _read_socket_part(snap, state, layout, view, deep):
    state.state = qemu.socket_state_name(display_value(layout, view, "state"))
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
    if state.type == "qio-channel-socket":
        layout = Layout.of("QIOChannelSocket", "struct QIOChannelSocket")
        if layout is not None and layout.has("fd"):
            try:
                state.fd = snap.mem.view(layout, address, "QIOChannelSocket")["fd"]
            except TargetReadError as exc:
                state.problems.append(str(exc))
    return state


def find_chardevs(snap, deep=False, include_frames=True, alive=None):
    """Every chardev: those in the QOM tree, then those only seen in thread frames.

    A frame's chardev that is no live QOM chardev any more is listed when ``alive`` (a
    ``readers.liveness.Liveness``, made here if None) finds it finalized or freed, with that
    verdict and none of its (garbage) fields; other garbage pointers are not listed."""
    found = []
    seen = set()
    for label, address in qom.chardevs_in_tree(snap):
        found.append(read_chardev(snap, address, label=label, deep=deep))
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
            state = read_chardev(snap, address, found_via=where, in_tree=False, deep=deep)
        elif verdict in DEAD:
            state = ChardevState(address=address, label=None, type=None, in_tree=False,
                                 found_via=where)
        else:
            continue
        state.liveness = verdict
        found.append(state)
    return found


def resolve_chardev(snap, spec):
    """A Chardev address from a label, an address or a gdb expression."""
    for label, address in qom.chardevs_in_tree(snap):
        if label == spec:
            return address, label
    try:
        address, _pointee = target.address_of_expression(spec)
    except TargetReadError as exc:
        raise TargetReadError(f"chardev {spec!r}: no such label, and not an expression "
                              f"({exc})") from None
    if not qom.is_a(snap, address, "chardev"):
        raise QcgError(f"{spec!r} (0x{address:x}) is not a chardev: no QOM object of a chardev "
                       "type there")
    return address, None
