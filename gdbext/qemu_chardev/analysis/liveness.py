"""Deciding whether an object is alive, finalized or freed, from evidence read from memory.

Pure functions over ``model.liveness`` facts.  A verdict of ``finalized`` or ``freed`` needs
consistent evidence: the object's own fields (QOM ``ref`` 0, a destroyed ``QemuMutex``, GSource
``ref_count`` 0) or the allocator's (a chunk in glibc's tcache or bins).  Fields that no live
object has, with an allocator that says the memory is in use, are ``damaged``: never a
use-after-free on their own.  No gdb imports.
"""
from qemu_chardev.model import glib, glibc
from qemu_chardev.model.liveness import (ALIVE, CHUNK_FREE, CHUNK_IN_USE, CHUNK_UNKNOWN,
                                         DAMAGED, FINALIZED, FREED, UNREADABLE)

MAX_QOM_REF = 1 << 20


def judge_chunk(chunk, object_size=0):
    """Set ``chunk.state`` (in-use, free, unknown) and its evidence; returns the chunk."""
    if chunk.address % glibc.MALLOC_ALIGNMENT:
        chunk.state = CHUNK_UNKNOWN
        chunk.evidence.append(f"0x{chunk.address:x} is not {glibc.MALLOC_ALIGNMENT}-byte "
                              "aligned: no malloc chunk starts there (a damaged pointer?)")
        return chunk
    if chunk.size_word is None:
        chunk.state = CHUNK_UNKNOWN
        chunk.evidence.append("malloc chunk header unreadable")
        return chunk
    if not glibc.plausible_size_word(chunk.size_word, object_size):
        chunk.state = CHUNK_UNKNOWN
        chunk.evidence.append(f"no malloc chunk header before it (size word "
                              f"0x{chunk.size_word:x}): not a heap object of its own")
        return chunk
    size = glibc.chunk_size(chunk.size_word)
    if chunk.tcache_key is not None and chunk.word1 == chunk.tcache_key:
        chunk.state = CHUNK_FREE
        link = glibc.reveal(chunk.address, chunk.word0 or 0)
        chunk.evidence.append(
            f"free: its {size}-byte chunk is in glibc's tcache (its second word is this "
            f"process's tcache key 0x{chunk.tcache_key:x}; next free chunk "
            f"{'none' if not link else f'0x{link:x}'})")
        return chunk
    if chunk.next_size_word is not None and not chunk.size_word & glibc.IS_MMAPPED \
            and not chunk.next_size_word & glibc.PREV_INUSE:
        if not glibc.plausible_size_word(chunk.next_size_word) or not chunk.word0:
            # A chunk in a bin has its fd link set, and the next chunk's size word is a size:
            # one zeroed word is not a free.
            chunk.state = CHUNK_UNKNOWN
            chunk.evidence.append(
                f"the word after its {size}-byte chunk (0x{chunk.next_size_word:x}) has "
                "PREV_INUSE clear, but " + ("it is no chunk size" if not
                                            glibc.plausible_size_word(chunk.next_size_word)
                                            else "its own first word (a free chunk's fd link) "
                                                 "is 0") + ": damage, not evidence of a free")
            return chunk
        chunk.state = CHUNK_FREE
        chunk.evidence.append(f"free: the chunk after its {size}-byte chunk has PREV_INUSE "
                              "clear (free in a malloc bin)")
        return chunk
    chunk.state = CHUNK_IN_USE
    note = f"its {size}-byte malloc chunk is not in a free list"
    if chunk.tcache_key is None:
        chunk.state = CHUNK_UNKNOWN
        note = f"{size}-byte malloc chunk; this process's tcache key is unknown"
        if size <= glibc.TCACHE_MAX_CHUNK_SIZE and _looks_safe_linked(chunk):
            note += ", and its first word decodes as a free-list link"
    chunk.evidence.append(note)
    return chunk


def _looks_safe_linked(chunk):
    link = glibc.reveal(chunk.address, chunk.word0 or 0)
    return link == 0 or (link % glibc.MALLOC_ALIGNMENT == 0 and abs(link - chunk.address) < 1 << 32)


def judge_qom(obj, type_names, ref, dead_signs=(), finalizing=False):
    """Verdict of a QOM object (a Chardev, a QIOChannel) into ``obj``.

    ``type_names``: its type ancestry, or None when ``class`` no longer leads to a type;
    ``ref``: ``Object.ref``; ``dead_signs``: other evidence that it was finalized (e.g. "its
    chr_write_lock was destroyed"); ``finalizing``: a thread's frame of a finalizer holds it.
    ``obj.chunk`` must be judged already (or None).  ``ref`` 0 alone, with the type intact,
    the allocator saying in use and no finalizer running on it, is one damaged word: damaged.
    """
    chunk_free = obj.chunk is not None and obj.chunk.state == CHUNK_FREE
    chunk_used = obj.chunk is not None and obj.chunk.state == CHUNK_IN_USE
    if type_names:
        obj.type_name = type_names[0]
        obj.evidence.append(f"QOM type {type_names[0]}, Object.ref {ref}")
    else:
        obj.evidence.append("Object.class no longer leads to a QOM type")
        if ref is not None:
            obj.evidence.append(f"Object.ref {ref}")
    obj.evidence.extend(dead_signs)
    if obj.chunk is not None:
        obj.evidence.extend(obj.chunk.evidence)
    if ref is None:
        obj.verdict = UNREADABLE
    elif type_names and 0 < ref < MAX_QOM_REF and not dead_signs:
        obj.verdict = DAMAGED if chunk_free else ALIVE
    elif chunk_free:
        obj.verdict = FREED
    elif ref == 0 and type_names and chunk_used and not dead_signs and not finalizing:
        obj.verdict = DAMAGED
        obj.evidence.append("Object.ref 0, but its class still leads to its type, no finalizer "
                            "runs on it and its chunk is in use: a damaged count")
    elif ref == 0 or dead_signs:
        # Finalized; with the class pointer gone too, the memory was freed and (partly)
        # overwritten, but without the allocator's word we say no more than finalized.
        obj.verdict = FINALIZED
    else:
        obj.verdict = DAMAGED
    if obj.verdict == DAMAGED and chunk_used:
        obj.evidence.append("the allocator says this memory is in use: damage, not a free")
    return obj


def judge_gsource(obj, ref_count, flags, context, priority, priv=None):
    """Verdict of a GSource into ``obj``: GLib frees a source when its count reaches 0.

    ``priv`` (when read): g_source_unref() frees ``priv`` and NULLs it before it frees the
    source, so a ref_count-0 source whose ``priv`` is still set, in a chunk the allocator does
    not call free, is a damaged count, not a free."""
    state = glib.gsource_state(ref_count, flags, context, priority)
    obj.evidence.append(f"GSource {state} (ref_count {ref_count}, flags 0x{flags or 0:x})"
                        if state != glib.UNREADABLE else "GSource unreadable")
    if obj.chunk is not None:
        obj.evidence.extend(obj.chunk.evidence)
    chunk_state = obj.chunk.state if obj.chunk is not None else CHUNK_UNKNOWN
    if state == glib.UNREADABLE:
        obj.verdict = UNREADABLE
    elif obj.address % glibc.MALLOC_ALIGNMENT:
        # g_source_new() allocates with g_malloc0: no GSource starts at such an address
        obj.verdict = DAMAGED
        obj.evidence.append("no GSource starts at a misaligned address: the pointer to it is "
                            "damaged")
    elif state == glib.FREED:
        intact = chunk_state != CHUNK_FREE and priv
        obj.verdict = DAMAGED if chunk_state == CHUNK_IN_USE or intact else FREED
        if intact and chunk_state != CHUNK_IN_USE:
            obj.evidence.append(f"ref_count 0 but priv 0x{priv:x} is still set (GLib clears it "
                                "before freeing a source) and its chunk is not free: damage, "
                                "not a free")
    elif state == glib.INVALID:
        obj.verdict = FREED if chunk_state == CHUNK_FREE else DAMAGED
    else:
        obj.verdict = DAMAGED if chunk_state == CHUNK_FREE else ALIVE
    return obj


def judge_task(obj, func_symbol):
    """Verdict of a QIOTask (a plain g_new0 struct): alive while ``func`` names a function."""
    if obj.chunk is not None:
        obj.evidence.extend(obj.chunk.evidence)
    chunk_state = obj.chunk.state if obj.chunk is not None else CHUNK_UNKNOWN
    if func_symbol:
        obj.evidence.insert(0, f"QIOTask.func is {func_symbol}")
        obj.verdict = DAMAGED if chunk_state == CHUNK_FREE else ALIVE
    else:
        obj.evidence.insert(0, "QIOTask.func names no function")
        obj.verdict = FREED if chunk_state == CHUNK_FREE else DAMAGED
    return obj


def judge_mutex(obj, initialized, destroyed):
    """Verdict of a QemuMutex: ``initialized`` false or a destroyed pthread mutex is dead."""
    if destroyed or initialized is False:
        obj.verdict = FINALIZED
        obj.evidence.append("destroyed (pthread __kind -1)" if destroyed else
                            "QemuMutex.initialized is false: destroyed or never initialized")
    elif initialized is None and not destroyed:
        obj.verdict = UNREADABLE
    else:
        obj.verdict = ALIVE
        obj.evidence.append("initialized")
    return obj
