"""GSource census: every GSource in the target's writable memory, and who points at them.

Leaked sources are unreachable by definition, so they are found by scanning memory rather
than by walking structures: a GSource's ``source_funcs`` (offset 16) points at one of a few
``GSourceFuncs`` tables, GLib's exported ones (``g_idle_funcs``, ...) and QEMU's own (from its
symbol table).  Every 8-byte aligned word equal to such an anchor is a candidate, validated by
``analysis.census.rejection``.  Only writable memory is scanned: libglib's read-only ``.got``
also holds ``&g_idle_funcs``.

Then the structures that own or borrow GSource pointers are read (chardev fields, live
QIOTasks, contexts' pending dispatches, parents' child lists, IOWatchPoll.src, listener
sources, QEMU stack frames), so that a destroyed source nobody points at is called leaked
and a pointer to a freed source is called a use-after-free.

Entry points: ``take_census(snap)`` -> ``Census``; ``census_and_findings(snap)``.
"""
import time

from qemu_chardev.analysis import census as ca
from qemu_chardev.files import memscan
from qemu_chardev.model import glib as glib_facts
from qemu_chardev.model.errors import QcgError, TargetReadError
from qemu_chardev.model.liveness import DEAD, GSOURCE
from qemu_chardev.model.qemu import SOCKET_GSOURCE_FIELDS
from qemu_chardev.readers import glib, not_heap, process_memory, qom
from qemu_chardev.readers.qom import chardev_layout, socket_layout
from qemu_chardev.readers.liveness import Liveness
from qemu_chardev.readers.qiotask import tasks_in_threads
from qemu_chardev.target import memory as target
from qemu_chardev.target.memory import Layout

QEMU_FUNCS = ("qio_channel_fd_source_funcs", "qio_channel_fd_pair_source_funcs",
              "qio_channel_socket_source_funcs", "qio_channel_websock_source_funcs",
              "qio_channel_buffer_source_funcs", "qio_channel_null_source_funcs",
              "qio_channel_tls_source_funcs", "qio_channel_rdma_source_funcs",
              "io_watch_poll_funcs", "fd_source_funcs", "SpiceCharSourceFuncs",
              "aio_source_funcs")
CHILD_LIMIT = 64
PENDING_LIMIT = 1 << 16
LISTENER_LIMIT = 1024
NAME_LIMIT = 96

_anchor_cache = target.objfile_cache()


def anchors():
    """{address of a GSourceFuncs table: its name} for every table this target has."""
    if "anchors" not in _anchor_cache:
        found = {}
        for name in glib_facts.GLIB_SOURCE_FUNCS + QEMU_FUNCS:
            address = target.symbol_address(name)
            if address:
                found.setdefault(address, name)
        _anchor_cache["anchors"] = found
    return _anchor_cache["anchors"]


def take_census(snap, with_frames=True, window=memscan.WINDOW):
    """Scan memory for GSources, read their owners, classify them: a ``Census``."""
    started = time.perf_counter()
    table = anchors()
    if not table:
        raise QcgError("no GSourceFuncs table found (is GLib loaded? g_idle_funcs is unknown)")
    try:
        reader, source = process_memory.open_reader()
    except memscan.ScanError as exc:
        raise QcgError(str(exc)) from None
    census = ca.Census(anchors=dict(table), source=source)
    offsets = glib.gsource_offsets()
    try:
        mapped = memscan.RegionMap(reader.regions, reader.extra_mapped)
        is_mapped = mapped.__contains__
        # Guest RAM, the TCG code buffer and unused stacks hold no GSource: not scanned.
        spans = not_heap.not_heap(snap, is_mapped, reader.regions)
        skipped = {}
        try:
            hits, census.bytes_scanned = memscan.scan(
                reader, table, before=offsets["source_funcs"], span=glib_facts.GSOURCE_SIZE,
                window=window, exclude=[(s.start, s.end, i) for i, s in enumerate(spans)],
                skipped=skipped)
        except memscan.ScanError as exc:
            raise QcgError(str(exc)) from None
        census.skipped = [dict(spans[i].to_json(), bytes=count)
                          for i, count in sorted(skipped.items()) if count]
        census.bytes_skipped = sum(skipped.values())
        census.regions_scanned = sum(1 for r in reader.regions if r.writable and
                                     (r.size if reader.kind == "core" else r.length))
        if reader.missing:
            snap.note(f"{reader.missing} bytes of writable memory could not be read "
                      f"(truncated core or unreadable mappings): the census may be short")
        _decode_hits(census, reader, hits, offsets, is_mapped, table)
        enricher = _Enricher(snap, reader, table)
        for rec in census.records:
            enricher.enrich(rec)
        census.contexts = _context_labels(snap, census.records)
        census.owners = _owners(snap, census, reader, offsets, with_frames)
        _add_owned_unknowns(census, reader, offsets, is_mapped, enricher)
    finally:
        reader.close()
    ca.classify(census.records, census.owners, _idle_funcs(table),
                has_qio_task=target.symbol_address("qio_task_thread_worker") is not None)
    census.uaf = _confirmed_frees(snap, ca.use_after_free(census.records, census.owners))
    census.seconds = time.perf_counter() - started
    return census


def _confirmed_frees(snap, pairs):
    """The (owner, record) pairs whose source the allocator confirms freed, or whose fields
    show what a free leaves; a "freed" source with its other fields intact and its chunk not
    free is damage (noted), never a use-after-free on its own."""
    alive = Liveness(snap)
    out = []
    for owner, rec in pairs:
        verdict = alive.judge(rec.address, GSOURCE).verdict
        if verdict in DEAD and not rec.funcs_name:
            # freeing leaves source_funcs (offset 16) alone: a freed chunk without it was no
            # GSource, and a pointer to it is a damaged pointer as much as a stale one
            verdict = "freed memory that holds no GSourceFuncs"
        if verdict in DEAD:
            out.append((owner, rec))
        else:
            snap.note(f"GSource 0x{rec.address:x} ({owner.what}) reads {rec.state} but the "
                      f"allocator and its other fields say {verdict}: damaged, not freed")
    return out


def census_and_findings(snap, with_frames=True):
    """(Census, [finding dict]) in one scan, for callers that show both."""
    census = take_census(snap, with_frames=with_frames)
    return census, census.findings()


def _idle_funcs(table):
    return next((a for a, n in table.items() if n == glib_facts.IDLE_SOURCE_FUNCS), None)


def _decode_hits(census, reader, hits, offsets, is_mapped, table):
    before = offsets["source_funcs"]
    seen = set()
    for hit in hits:
        address = hit.address - before
        if address in seen:
            continue
        seen.add(address)
        data = hit.data or reader.read(address, glib_facts.GSOURCE_SIZE)
        if data is None:
            census.rejected["unreadable"] = census.rejected.get("unreadable", 0) + 1
            continue
        rec = ca.decode(data, address, offsets)
        reason = ca.rejection(rec, is_mapped)
        if reason:
            census.rejected[reason] = census.rejected.get(reason, 0) + 1
            continue
        rec.funcs_name = table.get(rec.funcs)
        census.records.append(rec)


class _Enricher:
    """Names, callbacks and symbols of live records (freed ones hold garbage pointers)."""

    def __init__(self, snap, reader, table):
        self.snap = snap
        self.reader = reader
        self.table = table
        self.names = {}

    def read(self, address, size):
        data = self.reader.read(address, size)
        if data is None:
            try:
                data = self.snap.mem.read(address, size, "memory")
            except TargetReadError:
                return None
        return data

    def enrich(self, rec):
        if rec.funcs_name is None:
            rec.funcs_name = self.table.get(rec.funcs) or target.symbol_name(rec.funcs)
        if rec.ref_count == 0:
            return
        if rec.name_ptr:
            if rec.name_ptr not in self.names:
                try:
                    self.names[rec.name_ptr] = self.snap.mem.cstring(rec.name_ptr, NAME_LIMIT,
                                                                     "GSource name")
                except TargetReadError:
                    self.names[rec.name_ptr] = None
            rec.name = self.names[rec.name_ptr]
        func, _data = glib.read_gsource_callback(self.read, rec.callback_data)
        if func:
            rec.callback, rec.callback_name = func, target.symbol_name(func)


def _context_labels(snap, records):
    """{context address: label}; the main loop's context is found via qemu_aio_context."""
    labels = {}
    for rec in records:
        if rec.ref_count and rec.context:
            labels.setdefault(rec.context, f"GMainContext 0x{rec.context:x}")
    aio = target.static_value_address("qemu_aio_context")
    if aio:
        try:
            context = snap.mem.pointer(aio + glib.gsource_offsets()["context"],
                                       "qemu_aio_context")
        except TargetReadError:
            context = 0
        if context:
            labels[context] = f"main loop GMainContext 0x{context:x}"
    return labels


def _owners(snap, census, reader, offsets, with_frames):
    owners = []
    by_address = {rec.address: rec for rec in census.records}
    read = _Enricher(snap, reader, {}).read
    try:
        owners += _chardev_owners(snap)
    except qom.NoQemuDebugInfo as exc:
        snap.note(f"chardevs and QIOTasks not checked as owners: {exc}")
    except QcgError as exc:
        snap.note(f"chardevs not checked as owners: {exc}")
    owners += _pending_owners(snap, census, read)
    owners += _child_owners(census, read, offsets)
    owners += _iowatch_owners(snap, census, by_address)
    if with_frames:
        owners += _frame_owners(snap)
    return owners


def _chardev_owners(snap):
    out = []
    owned = SOCKET_GSOURCE_FIELDS + ("connect_task", "listener")
    base = chardev_layout()
    sock = socket_layout()
    for label, address in qom.chardevs_in_tree(snap):
        try:
            ancestry = qom.type_ancestry(snap, address)
            is_socket = "chardev-socket" in ancestry and sock is not None
            layout = sock if is_socket else base
            view = snap.mem.view(layout, address, "Chardev")
        except TargetReadError as exc:
            snap.note(f"chardev {label}: {exc}")
            continue
        if not is_socket:
            gsource = view.get("gsource")
            if gsource:
                out.append(ca.Owner(gsource, "chardev", f"{label}.gsource", chardev=label))
            continue
        # every pointer a socket chardev owns sources through, in one unpack
        gsource, *sources, task, listener = view.values("parent.gsource", *owned)
        if gsource:
            out.append(ca.Owner(gsource, "chardev", f"{label}.gsource", chardev=label))
        for role, value in zip(SOCKET_GSOURCE_FIELDS, sources):
            if value:
                out.append(ca.Owner(value, "chardev", f"{label}.{role}", chardev=label))
        if task:
            out += _task_owners(snap, task, f"{label}.connect_task", chardev=label)
        if listener:
            out += _listener_owners(snap, listener, label)
    for lwp, task in tasks_in_threads(snap):
        ref = snap.thread_ref(lwp)
        out += _task_owners(snap, task, f"QIOTask 0x{task:x} (worker LWP {lwp})", lwp=lwp,
                            thread=ref.num)
    return out


def _task_owners(snap, task, what, chardev=None, lwp=None, thread=None):
    layout = Layout.of("QIOTask", "struct QIOTask")
    data_layout = Layout.of("struct QIOTaskThreadData", "QIOTaskThreadData")
    if layout is None or data_layout is None:
        return []
    try:
        thread_data = snap.mem.view(layout, task, "QIOTask").get("thread")
        if not thread_data:
            return []
        completion = snap.mem.view(data_layout, thread_data, "QIOTaskThreadData")["completion"]
    except TargetReadError as exc:
        snap.note(f"{what}: {exc}")
        return []
    if not completion:
        return []
    return [ca.Owner(completion, "task", f"{what}->thread->completion", chardev=chardev,
                     lwp=lwp, thread=thread)]


def _listener_owners(snap, listener, label):
    """Sources of a QIONetListener: io_source[] (<= 10.1) or source[i]->io_source (10.2+)."""
    layout = Layout.of("QIONetListener", "struct QIONetListener")
    if layout is None:
        return []
    out = []
    try:
        view = snap.mem.view(layout, listener, "QIONetListener")
        count = view.get("nsioc") or 0
        if not 0 < count <= LISTENER_LIMIT:
            return []
        if layout.has("io_source"):
            array = view["io_source"]
            for i in range(count):
                value = snap.mem.pointer(array + 8 * i, "listener io_source") if array else 0
                if value:
                    out.append(ca.Owner(value, "listener", f"{label}.listener->io_source[{i}]",
                                        chardev=label))
        elif layout.has("source"):
            elem = Layout.of("QIONetListenerSource", "struct QIONetListenerSource")
            array = view["source"]
            for i in range(count):
                item = snap.mem.pointer(array + 8 * i, "listener source") if array else 0
                if item and elem is not None:
                    value = snap.mem.view(elem, item, "QIONetListenerSource").get("io_source")
                    if value:
                        out.append(ca.Owner(value, "listener",
                                            f"{label}.listener->source[{i}]->io_source",
                                            chardev=label))
    except TargetReadError as exc:
        snap.note(f"{label}.listener: {exc}")
    return out


def _u(buf, offset, size):
    return int.from_bytes(buf[offset:offset + size], "little")


def _pending_owners(snap, census, read):
    """Sources in each context's pending_dispatches (each holds a reference)."""
    out = []
    contexts = sorted({rec.context for rec in census.records if rec.ref_count and rec.context})
    for context in contexts:
        head = read(context, glib_facts.CONTEXT_PENDING_OFFSET + 8)
        if head is None:
            continue
        ref = _u(head, glib_facts.CONTEXT_REF_OFFSET, 4)
        array = _u(head, glib_facts.CONTEXT_PENDING_OFFSET, 8)
        if not 0 < ref < 1 << 20 or not array:
            continue
        arr = read(array, 12)
        if arr is None:
            continue
        pdata = int.from_bytes(arr[0:8], "little")
        length = int.from_bytes(arr[8:12], "little")
        if not pdata or not 0 < length <= PENDING_LIMIT:
            continue
        items = read(pdata, 8 * length)
        if items is None:
            snap.note(f"GMainContext 0x{context:x}: pending_dispatches unreadable")
            continue
        label = census.contexts.get(context, f"GMainContext 0x{context:x}")
        for i in range(length):
            value = int.from_bytes(items[8 * i:8 * i + 8], "little")
            if value:
                out.append(ca.Owner(value, "pending", f"{label} pending_dispatches[{i}]"))
    return out


def _child_owners(census, read, offsets):
    """Each live source's priv->child_sources list: the parent holds a reference."""
    out = []
    for rec in census.records:
        if not rec.ref_count or not rec.priv:
            continue
        head = read(rec.priv, 8)
        node = int.from_bytes(head, "little") if head else 0
        steps = 0
        while node and steps < CHILD_LIMIT:
            cell = read(node, 16)
            if cell is None:
                break
            child = int.from_bytes(cell[0:8], "little")
            if child:
                out.append(ca.Owner(child, "child", f"child of GSource 0x{rec.address:x}",
                                    check_freed=bool(rec.flags & glib_facts.G_SOURCE_ACTIVE)))
            node = _u(cell, glib_facts.GSLIST_NEXT_OFFSET, 8)
            steps += 1
    return out


def _iowatch_owners(snap, census, by_address):
    """IOWatchPoll.src of live (ACTIVE) chardev watch sources."""
    layout = Layout.of("IOWatchPoll")
    if layout is None or layout.field("src") is None:
        return []
    out = []
    for rec in census.records:
        if rec.funcs_name != "io_watch_poll_funcs" or not rec.flags & glib_facts.G_SOURCE_ACTIVE \
                or not rec.ref_count:
            continue
        try:        # the chardev reader has read this IOWatchPoll whole: served from that read
            src = snap.mem.view(layout, rec.address, "IOWatchPoll")["src"]
        except TargetReadError:
            continue
        if src:
            out.append(ca.Owner(src, "iowatch", f"IOWatchPoll 0x{rec.address:x}"
                                f" ({rec.name or 'unnamed'})->src"))
    return out


def _frame_owners(snap):
    """GSource pointers in QEMU stack frames: they keep a source from counting as leaked."""
    return [ca.Owner(value, "frame", f"{frame.function}:{name} (LWP {lwp})", lwp=lwp,
                     check_freed=False)
            for lwp, frame, name, value in snap.frame_pointers("GSource", "_GSource")]


def _add_owned_unknowns(census, reader, offsets, is_mapped, enricher):
    """Records for owned pointers the scan did not find (unknown funcs, or memory reused)."""
    known = {rec.address for rec in census.records}
    for owner in census.owners:
        if owner.source in known or not owner.check_freed:
            continue
        known.add(owner.source)
        data = enricher.read(owner.source, glib_facts.GSOURCE_SIZE)
        if data is None:
            rec = ca.SourceRecord(address=owner.source, found_via="owner",
                                  state=ca.INVALID)
            census.records.append(rec)
            continue
        rec = ca.decode(data, owner.source, offsets)
        rec.found_via = "owner"
        if ca.rejection(rec, is_mapped) or (rec.ref_count and
                                            target.symbol_name(rec.funcs) is None):
            rec.state = ca.INVALID
        else:
            enricher.enrich(rec)
        census.records.append(rec)
