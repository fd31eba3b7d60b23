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


def _enumerators(field):
    """{value: enumerator name} of an enum field's type (computed once per type)."""
    key = str(field.type)
    names = _enum_names.get(key)
    if names is None:
        names = {f.enumval: f.name for f in field.type.strip_typedefs().fields()}
        _enum_names[key] = names
    return names


# Chardev fields read_chardev decodes, all in one unpack (``View.values``).
_CHARDEV_PATHS = ("label", "be_open", "be", "fe", "filename", "gsource")
_plans = target.objfile_cache()


class _SocketPlan:
    """What ``_read_socket_part`` shows of one SocketChardev layout, worked out once per
    layout instead of once per chardev: the fields (those of interest, then every other
    scalar member), how each is shown, and one decoder for all of them."""

    def __init__(self, layout):
        names = list(SOCKET_FIELDS_OF_INTEREST)
        for name, field in layout.top_level_fields():
            if name not in names and name != "parent" and field is not None \
                    and field.kind in ("pointer", "int", "uint", "bool", "enum"):
                names.append(name)
        self.names = tuple(names)
        self.fields = tuple(layout.field(name) for name in names)
        self.decoder = layout.decoder(self.names)
        self.index = {name: i for i, name in enumerate(names)}
        # How each is shown to users: pointers as 0x... (NULL as None), enums by name (a
        # value no enumerator has as the number), a field this version lacks as n/a, the
        # rest as decoded.
        self.pointers = tuple((i, name) for i, (name, f) in enumerate(zip(names, self.fields))
                              if f is not None and f.kind == "pointer")
        self.enums = tuple((i, name, _enumerators(f))
                           for i, (name, f) in enumerate(zip(names, self.fields))
                           if f is not None and f.kind == "enum")
        self.missing = tuple(name for name, f in zip(names, self.fields) if f is None)
        # The declared type of each channel object (QIOChannel, QIOChannelSocket,
        # QIONetListener): read whole, it holds the Object and what else is shown.  Read
        # largest first, so that ioc, most often the same QIOChannelSocket as sioc, is a
        # part of sioc's read.
        self.pointees = {role: Layout.of_pointee(layout.field(role)) for role in SOCKET_OBJECTS}
        self.object_order = sorted(
            SOCKET_OBJECTS, key=lambda role: -(self.pointees[role].size
                                               if self.pointees[role] is not None else 0))

    @classmethod
    def of(cls, layout):
        plan = _plans.get(layout.name)
        if plan is None:
            plan = _plans[layout.name] = cls(layout)
        return plan

    def show(self, values):
        """{name: value as shown} from the decoded ``values``."""
        out = dict(zip(self.names, values))
        for i, name in self.pointers:
            value = values[i]
            out[name] = f"0x{value:x}" if value else None
        for i, name, enumerators in self.enums:
            out[name] = enumerators.get(values[i], values[i])
        for name in self.missing:
            out[name] = NA
        return out


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
    # The Chardev part of a SocketChardev ("parent") is in the bytes just read.
    chardev = view if layout is base else \
        snap.mem.view(base, view.address_of("parent"), within=view)
    label_ptr, be_open, be, fe, filename, gsource = chardev.values(*_CHARDEV_PATHS)
    try:
        own_label = snap.mem.cstring(label_ptr, 256, "label")
    except TargetReadError as exc:
        own_label = None
        _damaged(snap, state, f"chr->label 0x{label_ptr:x} unreadable ({exc})")
    if own_label is not None and not qom.printable_name(own_label):
        _damaged(snap, state, f"chr->label {own_label!r} is not a printable NUL-terminated "
                              "string")
        own_label = None
    if label is not None and own_label is not None and own_label != label:
        state.problems.append(f"QOM name {label!r} differs from chr->label {own_label!r}")
    state.label = own_label if own_label is not None else label
    state.be_open = be_open
    # the frontend field's name changed (be, then fe): the one this version has
    state.frontend = be if base.has("be") else fe
    try:
        state.filename = snap.mem.cstring(filename, 256, "filename")
    except TargetReadError:
        state.problems.append("filename unreadable")
    lock_address = chardev.address_of("chr_write_lock")
    state.write_lock = read_mutex(snap, lock_address, with_waiters=deep, within=chardev)
    if state.is_socket:
        _read_socket_part(snap, state, layout, view, deep)
    if deep and gsource:
        state.gsources[0:0] = _watch_poll_sources(snap, gsource)
    return state


def _watch_poll_sources(snap, address):
    """chr->gsource and, when it is an IOWatchPoll, the channel watch it drives (iwp->src).

    chr->gsource is always an IOWatchPoll (io_add_watch_poll), which starts with its
    GSource: the whole IOWatchPoll is read once and the GSource taken from it."""
    layout = Layout.of("IOWatchPoll", "struct IOWatchPoll")
    whole = None
    if layout is not None and layout.has("src"):
        try:
            whole = snap.mem.view(layout, address, "IOWatchPoll")
        except TargetReadError:
            whole = None    # read as a GSource alone below, and said so if it is one
    outer = read_gsource(snap, address, role="gsource")     # served from ``whole``
    found = [outer]
    if outer.funcs_symbol == "io_watch_poll_funcs" and layout is not None and layout.has("src"):
        try:
            if whole is None:
                whole = snap.mem.view(layout, address, "IOWatchPoll")
            inner = whole["src"]
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
    plan = _SocketPlan.of(layout)
    values = plan.decoder(view.buf)
    state.fields = fields = plan.show(values)
    raw_state = fields["state"]
    state.state = qemu.socket_state_name(raw_state)
    if isinstance(raw_state, int):        # no enumerator has this value
        _damaged(snap, state, f"state {raw_state} is outside the TCPChardevState enum")
    fields["state"] = state.state
    index = plan.index
    state.ioc = values[index["ioc"]]
    state.sioc = values[index["sioc"]]
    state.listener = values[index["listener"]]
    if not deep:
        return
    for role in qemu.SOCKET_GSOURCE_FIELDS:
        address = values[index[role]]
        if address:
            state.gsources.append(read_gsource(snap, address, role=role))
    objects = {}
    for role in plan.object_order:
        address = values[index[role]]
        if address:
            objects[role] = read_object(snap, address, role, plan.pointees[role])
    state.objects += [objects[role] for role in SOCKET_OBJECTS if role in objects]
    task = values[index["connect_task"]]
    if task:
        state.connect_task = read_qiotask(snap, task, found_via=f"{state.label}.connect_task")


def read_object(snap, address, role, declared=None):
    """An ObjectState: QOM type, refcount and, for socket channels, the fd.

    ``declared``: the ``Layout`` of the pointer's declared type (a QIOChannelSocket for
    ``sioc``), read whole once: the Object at its start and the fd are in it."""
    state = ObjectState(address=address, role=role)
    obj_layout = qom.layouts()[0]
    if declared is not None and declared.size >= obj_layout.size:
        # read whole once: the reads of its Object and fd below are served from it; if it
        # fails, the Object alone is read, for the error that says what failed
        snap.mem.try_read(address, declared.size)
    try:
        # Object's class and ref in one read
        try:
            obj = snap.mem.view(obj_layout, address, "Object")
        except TargetReadError:
            obj = None        # read field by field below, for the error that names which
        if obj is not None:
            class_address, ref = obj.values("class", "ref")
            state.type = qom.type_ancestry(snap, address, class_address=class_address)[0]
            state.ref = ref
        else:
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
                # the IOWatchPoll a chardev's read already holds (one read per structure)
                candidate = snap.mem.view(iwp, rec.address, "IOWatchPoll")["opaque"]
            except TargetReadError:
                try:
                    candidate = snap.mem.pointer(rec.address + opaque.offset,
                                                 "IOWatchPoll.opaque")
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
