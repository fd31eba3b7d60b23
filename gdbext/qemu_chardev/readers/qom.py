"""QOM: object type names and the object tree, read through raw memory.

``Object``, ``ObjectClass``, ``TypeImpl`` and ``ObjectProperty`` come from QEMU's own debug
info (TypeImpl is private to qom/object.c but gdb finds it in that unit's static block).
Property tables are GHashTables, read by ``glib.HashTable`` without GLib debug info.
"""
from qemu_chardev.readers import binary, glib
from qemu_chardev.target import memory as target
from qemu_chardev.model.errors import QcgError, TargetReadError
from qemu_chardev.target.memory import Layout

TYPE_ANCESTRY_LIMIT = 32
CHILDREN_LIMIT = 100000


class NoQemuDebugInfo(QcgError):
    pass


# What to do about it, appended to every "no QEMU debug info" line (kept on that one line).
DEBUG_INFO_HINT = (
    "install its debug info: Debian: the binary's package's -dbgsym from the debug archive "
    "(e.g. qemu-system-x86-dbgsym), Fedora: debuginfo-install qemu; or set DEBUGINFOD_URLS "
    "and gdb fetches it itself ('set debuginfod enabled on')")


_layouts = target.objfile_cache()


def layouts():
    """The QOM layouts, or NoQemuDebugInfo if this binary has no QEMU debug info."""
    found = _layouts.get("qom")       # asked for every object: looked up once per objfile
    if found is not None:
        return found
    obj = Layout.of("Object", "struct Object")
    klass = Layout.of("ObjectClass", "struct ObjectClass")
    impl = Layout.of("TypeImpl", "struct TypeImpl")
    prop = Layout.of("ObjectProperty", "struct ObjectProperty")
    if None in (obj, klass, impl, prop):
        raise NoQemuDebugInfo(
            "no QEMU debug info: type Object/Chardev unknown (is this a QEMU binary built "
            f"with -g, and does it match the core?); {DEBUG_INFO_HINT}")
    found = _layouts["qom"] = (obj, klass, impl, prop)
    return found


def chardev_layout():
    """Layout of Chardev (the readers of chardevs, their liveness and their locks share it)."""
    layout = Layout.of("Chardev", "struct Chardev")
    if layout is None:
        raise NoQemuDebugInfo("no QEMU debug info: type Chardev unknown (is this a QEMU "
                              "binary built with -g, and does it match the core?); "
                              + DEBUG_INFO_HINT)
    return layout


def socket_layout():
    # SocketChardev has no struct tag before QEMU 5.2: look it up by typedef first.
    return Layout.of("SocketChardev", "struct SocketChardev")


def type_ancestry(snap, obj_address, class_address=None):
    """[type name, parent type name, ...] of a QOM object; raises TargetReadError.

    ``class_address``: the object's ``class`` when the caller has already read it.  The
    answer is kept per class for the command (a thousand chardevs have a handful of
    classes)."""
    obj, klass, impl, _prop = layouts()
    if class_address is None:
        # The tree walk, the chardev reader and the census all ask about each chardev.
        cached = snap.object_types.get(obj_address)
        if cached is not None:
            return cached
        class_address = snap.mem.pointer(obj_address + obj.field("class").offset,
                                         "Object.class")
    cached = snap.type_names.get(class_address)
    if cached is not None:
        snap.object_types[obj_address] = cached
        return cached
    type_address = snap.mem.pointer(class_address + klass.field("type").offset,
                                    "ObjectClass.type")
    names = []
    seen = set()
    while type_address and type_address not in seen and len(names) < TYPE_ANCESTRY_LIMIT:
        seen.add(type_address)
        view = snap.mem.view(impl, type_address, "TypeImpl")
        name = snap.mem.cstring(view["name"], 128, "type name")
        if not name or not name.isprintable():
            raise TargetReadError("QOM type name (garbage)", type_address)
        names.append(name)
        type_address = view.get("parent_type")
    if not names:               # ObjectClass.type NULL: no class of a live object has that
        raise TargetReadError("QOM type (ObjectClass.type is NULL: damaged class)",
                              class_address)
    for name in names:
        if name.startswith("chardev") and not _static_type_name(name):
            raise TargetReadError(f"QOM type name {name!r} (no chardev type of this binary "
                                  "has it: damaged)", type_address or class_address)
    snap.type_names[class_address] = snap.object_types[obj_address] = names
    return names


def _static_type_name(name):
    """True when ``name`` is a string of the binary's read-only data (chardev types are all
    defined statically: TYPE_CHARDEV_SOCKET is "chardev-socket"), or when that data cannot be
    read (nothing to check against)."""
    data = binary.section_bytes(".rodata")
    return data is None or name.encode("utf-8", "replace") + b"\0" in data


def type_name(snap, obj_address):
    """QOM type name of an object, or None (with a problem noted) if unreadable."""
    try:
        return type_ancestry(snap, obj_address)[0]
    except TargetReadError as exc:
        snap.note(f"object at 0x{obj_address:x}: {exc}")
        return None


def is_a(snap, obj_address, wanted):
    try:
        return wanted in type_ancestry(snap, obj_address)
    except TargetReadError:
        return False


def object_ref(snap, obj_address):
    obj = layouts()[0]
    return snap.mem.u32(obj_address + obj.field("ref").offset, "Object.ref")


def children(snap, obj_address, what, container=False):
    """[(name, property type, opaque)] of an object's ``child<...>`` properties.

    A table or entry that cannot be read stops only that walk (or skips that entry): the
    problem is noted with the object, the address and what was expected there, and the
    children read so far are returned."""
    obj, _klass, _impl, prop = layouts()
    out = []
    try:
        table_address = snap.mem.pointer(obj_address + obj.field("properties").offset,
                                         f"{what} properties")
        table = glib.HashTable(snap.mem, table_address, f"{what} property table")
        items = table.items()[:CHILDREN_LIMIT]
    except TargetReadError as exc:
        snap.note(f"{what} (object 0x{obj_address:x}): {exc}: expected a GHashTable of "
                  "its properties; its children are not listed")
        return out
    for key, value in items:
        try:
            view = snap.mem.view(prop, value, "ObjectProperty")
            type_ptr, opaque = view.values("type", "opaque")
            ptype = snap.mem.cstring(type_ptr, 128, "property type")
            if not ptype or not ptype.startswith("child<"):
                if container:     # a container's properties are all children: damage
                    snap.note(f"{what}: property at 0x{value:x} has type {ptype!r}, expected "
                              "child<...> (damaged)")
                continue
            name = snap.mem.cstring(key, 256, "property name")
            if not printable_name(name):
                snap.note(f"{what}: property at 0x{value:x}: name {name!r} is not a "
                          "printable NUL-terminated string (damaged)")
                continue
            out.append((name, ptype, opaque))
        except TargetReadError as exc:
            snap.note(f"{what}: property at 0x{value:x}: {exc}")
    for problem in table.problems:
        snap.note(problem)
    return out


def printable_name(text):
    """True for a label or property name as QEMU makes them: a short printable string, valid
    UTF-8 (``Memory.cstring`` shows an invalid byte as ``\\xNN`` and a string without its NUL
    within the limit with a trailing "...")."""
    return bool(text) and text.isprintable() and "\\x" not in text \
        and not text.endswith("...")


def root_object():
    """Address of QOM's root object, or None before QOM was initialised."""
    return target.static_value_address("object_get_root::root")


def chardevs_in_tree(snap):
    """[(label, Chardev address)] under /chardevs, in the tree's own (hash) order.

    Read once per Snapshot.  A damaged tree gives what could be read and notes the rest."""
    cached = getattr(snap, "_chardevs_in_tree", None)
    if cached is not None:
        return list(cached)
    found = _chardevs_in_tree(snap)
    snap._chardevs_in_tree = list(found)
    return found


def _chardevs_in_tree(snap):
    layouts()
    root = root_object()
    if not root:
        snap.note("QOM root object is NULL: QEMU has not initialised QOM yet, or the binary "
                  "does not match the core")
        return []
    before = len(snap.problems)
    container = None
    for name, _ptype, opaque in children(snap, root, "QOM root", container=True):
        if name == "chardevs":
            container = opaque
            break
    if not container:
        if len(snap.problems) > before:
            snap.note(f"QOM root 0x{root:x}: no /chardevs container could be read: chardevs "
                      "are found only from thread frames (and, by `qemu diagnose` and "
                      "`qemu chardev show`, from the GSource census)")
        return []
    found = []
    seen = set()
    for name, _ptype, opaque in children(snap, container, "/chardevs", container=True):
        if opaque in seen:
            snap.note(f"/chardevs/{name} at 0x{opaque:x}: listed twice (damaged table)")
            continue
        seen.add(opaque)
        try:
            ancestry = type_ancestry(snap, opaque)
        except TargetReadError as exc:
            snap.note(f"/chardevs/{name} at 0x{opaque:x} is not a readable chardev object: "
                      f"{exc}")
            continue
        if "chardev" in ancestry:
            found.append((name, opaque))
        else:
            snap.note(f"/chardevs/{name} at 0x{opaque:x} is a {ancestry[0]}, not a chardev")
    return found
