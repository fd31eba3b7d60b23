"""Reading the evidence of whether an object is alive: QOM fields, mutexes, GSources, malloc.

``Liveness(snap)`` judges the objects the report reaches (frame pointers, a QIOTask's source
and opaque, a GSource's callback data) once each, remembering who holds each pointer.  It
reads, without GLib or glibc debug info: the QOM ``Object`` head and type, a chardev's place in
the QOM tree and its ``chr_write_lock``, a GSource's fields, and the glibc malloc chunk around
the object: its size word, the next chunk's PREV_INUSE bit, and whether its second word is this
process's tcache key.  The key is found in a ``tcache_perthread_struct`` (the first chunk of a
malloc heap): the chunks its bins list all carry the key.  ``analysis.liveness`` decides.
"""
from qemu_chardev.analysis import liveness as judge
from qemu_chardev.files import memscan
from qemu_chardev.model import glib as glib_facts
from qemu_chardev.model import glibc
from qemu_chardev.model.errors import QcgError, TargetReadError
from qemu_chardev.model.liveness import (CHARDEV, CHANNEL, GSOURCE, MUTEX, POINTEE_KINDS, TASK,
                                         UNREADABLE, ChunkFacts, Holder, ObjectLiveness)
from qemu_chardev.readers import glib, process_memory, qom
from qemu_chardev.readers.mutex import read_mutex
from qemu_chardev.target import memory as target
from qemu_chardev.target.memory import Layout

# tcache_perthread_struct (glibc >= 2.30): uint16_t counts[64]; tcache_entry *entries[64].
TCACHE_BINS = 64
TCACHE_COUNT_LIMIT = 7          # the default tcache_count; a bin never holds more
TCACHE_STRUCT_SIZE = 2 * TCACHE_BINS + 8 * TCACHE_BINS
TCACHE_CHUNK_SIZE = 0x290       # its chunk: 0x280 bytes rounded up with the header
NON_MAIN_HEAP_SEARCH = 0x1000   # a thread arena's heap: heap_info and malloc_state come first
NON_MAIN_HEAP_ALIGN = 64 << 20  # HEAP_MAX_SIZE on 64-bit
REGIONS_CHECKED = 4096

_UNSET = object()


class Liveness:
    """Judges objects for one Snapshot; ``objects()`` lists every one judged."""

    def __init__(self, snap):
        self.snap = snap
        self._objects = {}
        self._key = _UNSET
        self._in_tree = None

    def objects(self):
        """Every object judged; a mutex that is a judged chardev's chr_write_lock says so."""
        objects = list(self._objects.values())
        chardevs = {o.address: o for o in objects if o.kind == CHARDEV}
        if chardevs:
            offset = qom.chardev_layout().field("chr_write_lock").offset
            for obj in objects:
                owner = chardevs.get(obj.address - offset) if obj.kind == MUTEX else None
                if owner is not None and obj.part_of is None:
                    obj.part_of = owner.address
                    obj.label = owner.label
                    obj.evidence.append(f"the chr_write_lock of {owner.describe()}")
        return objects

    def judge(self, address, kind, holder=None, label=None):
        """The ObjectLiveness of ``address`` seen as ``kind`` (judged once; ``holder`` added)."""
        key = (address, kind)
        obj = self._objects.get(key)
        if obj is None:
            obj = ObjectLiveness(address=address, kind=kind, label=label)
            self._objects[key] = obj
            try:
                _JUDGES[kind](self, obj)
            except TargetReadError as exc:
                obj.verdict = UNREADABLE
                obj.evidence.append(str(exc))
        if holder is not None and holder not in obj.holders:
            obj.holders.append(holder)
        if label and not obj.label:
            obj.label = label
        return obj

    # --- the allocator ---------------------------------------------------------------------

    def chunk(self, address, object_size):
        """ChunkFacts of the malloc chunk holding ``address``, judged."""
        facts = ChunkFacts(address=address)
        head = self.snap.mem.try_read(address - glibc.CHUNK_HEADER_SIZE,
                                      glibc.CHUNK_HEADER_SIZE + 16)
        if head is not None:
            facts.size_word = int.from_bytes(head[8:16], "little")
            facts.word0 = int.from_bytes(head[16:24], "little")
            facts.word1 = int.from_bytes(head[24:32], "little")
            if glibc.plausible_size_word(facts.size_word, object_size):
                nxt = self.snap.mem.try_read(
                    address + glibc.chunk_size(facts.size_word) + glibc.SIZE_WORD_OFFSET, 8)
                if nxt is not None:
                    facts.next_size_word = int.from_bytes(nxt, "little")
                facts.tcache_key = self.tcache_key()
        return judge.judge_chunk(facts, object_size)

    def tcache_key(self):
        """This process's tcache key (glibc >= 2.34), or None when no tcache shows it."""
        if self._key is _UNSET:
            self._key = self._find_tcache_key()
        return self._key

    def _find_tcache_key(self):
        try:
            reader, _source = process_memory.open_reader()
        except (QcgError, memscan.ScanError):
            return None
        try:
            regions = [r for r in reader.regions if r.writable][:REGIONS_CHECKED]
        finally:
            reader.close()
        for region in regions:
            for start in self._tcache_candidates(region):
                key = self._key_from_tcache(start)
                if key is not None:
                    return key
        return None

    def _tcache_candidates(self, region):
        """User addresses where a tcache_perthread_struct may start in this mapping."""
        head = self.snap.mem.try_read(region.start, 16)
        if head is not None and glibc.chunk_size(int.from_bytes(head[8:16], "little")) \
                == TCACHE_CHUNK_SIZE:
            yield region.start + glibc.CHUNK_HEADER_SIZE          # the main heap ([heap])
        if region.start % NON_MAIN_HEAP_ALIGN == 0:
            block = self.snap.mem.try_read(region.start, NON_MAIN_HEAP_SEARCH)
            for offset in range(8, len(block or b"") - 8, glibc.MALLOC_ALIGNMENT):
                size_word = int.from_bytes(block[offset:offset + 8], "little")
                if glibc.chunk_size(size_word) == TCACHE_CHUNK_SIZE and \
                        size_word & glibc.NON_MAIN_ARENA:
                    yield region.start + offset + 8

    def _key_from_tcache(self, start):
        """The key every chunk in this tcache's bins carries, if it is one (validated)."""
        data = self.snap.mem.try_read(start, TCACHE_STRUCT_SIZE)
        if data is None:
            return None
        counts = [int.from_bytes(data[2 * i:2 * i + 2], "little") for i in range(TCACHE_BINS)]
        entries = [int.from_bytes(data[128 + 8 * i:136 + 8 * i], "little")
                   for i in range(TCACHE_BINS)]
        if any(c > TCACHE_COUNT_LIMIT for c in counts) or \
                any(bool(c) != bool(e) for c, e in zip(counts, entries)):
            return None
        keys = set()
        for entry in entries:
            if entry:
                word = self.snap.mem.try_read(entry + 8, 8)
                if word is None:
                    return None
                keys.add(int.from_bytes(word, "little"))
        return keys.pop() if len(keys) == 1 else None

    # --- per kind ---------------------------------------------------------------------------

    def _qom(self, obj, size, dead_signs=()):
        o_layout = qom.layouts()[0]
        view = self.snap.mem.view(o_layout, obj.address, "Object")
        try:
            names = qom.type_ancestry(self.snap, obj.address)
        except TargetReadError:
            names = None
        obj.chunk = self.chunk(obj.address, size)
        judge.judge_qom(obj, names, view["ref"], list(dead_signs),
                        finalizing=self._finalizing(obj.address))
        return names

    def _finalizing(self, address):
        """True when a thread is in a finalizer (``*_finalize``, object_deinit) whose frame
        holds ``address``: an Object.ref of 0 is then expected, not damage."""
        try:
            for _lwp, frame, _name, value in self.snap.frame_pointers(*POINTEE_KINDS):
                function = frame.function or ""
                if value == address and (function.endswith("finalize")
                                         or function == "object_deinit"):
                    return True
        except QcgError:
            return False
        return False

    def _chardev(self, obj):
        layout = qom.chardev_layout()
        signs = []
        lock = read_mutex(self.snap, obj.address + layout.field("chr_write_lock").offset,
                          with_owner=False)
        if lock.destroyed or lock.initialized is False:
            signs.append("its chr_write_lock was destroyed (char_finalize ran)")
        self._qom(obj, layout.size, signs)
        obj.in_tree = obj.address in self._tree()
        obj.evidence.append("still in the QOM tree under /chardevs" if obj.in_tree
                            else "not in the QOM tree (/chardevs)")
        if obj.in_tree and not obj.label:
            obj.label = self._tree()[obj.address]

    def _channel(self, obj):
        layout = Layout.of("QIOChannel", "struct QIOChannel")
        self._qom(obj, layout.size if layout is not None else 0)

    def _task(self, obj):
        layout = Layout.of("QIOTask", "struct QIOTask")
        if layout is None:
            raise TargetReadError("type QIOTask (no QEMU debug info?)")
        view = self.snap.mem.view(layout, obj.address, "QIOTask")
        obj.chunk = self.chunk(obj.address, layout.size)
        symbol = target.symbol_name(view.get("func"))
        judge.judge_task(obj, symbol if symbol and "+" not in symbol else None)

    def _gsource(self, obj):
        view = self.snap.mem.view(glib.gsource_layout(), obj.address, "GSource")
        obj.chunk = self.chunk(obj.address, glib_facts.GSOURCE_SIZE)
        judge.judge_gsource(obj, view["ref_count"], view["flags"], view["context"],
                            view["priority"], view.get("priv"))

    def _mutex(self, obj):
        lock = read_mutex(self.snap, obj.address, with_owner=False)
        if lock.locked is None:
            raise TargetReadError("QemuMutex", obj.address)
        judge.judge_mutex(obj, lock.initialized, lock.destroyed)

    def _tree(self):
        if self._in_tree is None:
            try:
                self._in_tree = {a: label for label, a in qom.chardevs_in_tree(self.snap)}
            except QcgError:
                self._in_tree = {}
        return self._in_tree


_JUDGES = {CHARDEV: Liveness._chardev, CHANNEL: Liveness._channel, TASK: Liveness._task,
           GSOURCE: Liveness._gsource, MUTEX: Liveness._mutex}


def frame_holder(lwp, thread, frame, name):
    """The Holder for pointer ``name`` of ``frame`` in thread (lwp, thread number)."""
    return Holder(what=f"frame #{frame.level} {frame.function}: {name} (LWP {lwp})",
                  kind="frame", lwp=lwp, thread=thread, level=frame.level,
                  function=frame.function)
