"""Whether an object a pointer names is still alive: the words and the model, defined once.

A pointer a crashed thread, a QIOTask or a GSource still holds may name an object that was
finalized (its finalizer ran: QOM ``ref`` 0, ``chr_write_lock`` destroyed) or whose memory was
freed (glibc's chunk says so).  Readers gather the evidence; ``analysis.liveness`` decides.
No gdb imports.
"""
from dataclasses import dataclass, field
from typing import List, Optional

from qemu_chardev.model.objects import ptr

ALIVE = "alive"              # its own fields say live (QOM class and ref, GSource ref_count)
FINALIZED = "finalized"      # finalization ran or runs; the memory is not (yet) reused
FREED = "freed"              # the allocator holds the memory: a freed chunk
DAMAGED = "damaged"          # fields no live object has, and no allocator evidence of a free
UNREADABLE = "unreadable"    # the memory cannot be read (unmapped, cut from the core)
VERDICTS = (ALIVE, FINALIZED, FREED, DAMAGED, UNREADABLE)
DEAD = (FINALIZED, FREED)

# What kind of object a pointer names (the frame's pointer type, a field's type).
CHARDEV, CHANNEL, TASK, GSOURCE, MUTEX = "chardev", "channel", "task", "gsource", "mutex"
KINDS = (CHARDEV, CHANNEL, TASK, GSOURCE, MUTEX)
# Frame pointer types (target/snapshot.INTERESTING_POINTEE) -> kind.
POINTEE_KINDS = {
    "Chardev": CHARDEV, "SocketChardev": CHARDEV, "QIOChannel": CHANNEL,
    "QIOChannelSocket": CHANNEL, "QIOTask": TASK, "GSource": GSOURCE, "_GSource": GSOURCE,
    "QemuMutex": MUTEX, "QemuRecMutex": MUTEX,
}

# Chunk states (glibc malloc).
CHUNK_IN_USE = "in-use"
CHUNK_FREE = "free"
CHUNK_UNKNOWN = "unknown"


@dataclass
class ChunkFacts:
    """The malloc chunk around an object: its header and its first two words."""
    address: int                       # the user pointer (the object's address)
    size_word: Optional[int] = None    # at address - 8
    word0: Optional[int] = None        # the first 8 bytes: a free list's link when free
    word1: Optional[int] = None        # the next 8: tcache's key when in the tcache
    next_size_word: Optional[int] = None   # the following chunk's size word (PREV_INUSE bit)
    tcache_key: Optional[int] = None   # this process's tcache key, when known
    state: str = CHUNK_UNKNOWN
    evidence: List[str] = field(default_factory=list)


@dataclass
class Holder:
    """Something that still holds a pointer to the object (and may use it)."""
    what: str                      # "frame #3 qemu_chr_socket_connected: opaque", "QIOTask 0x..."
    kind: str = "frame"            # frame, task, gsource, chardev, census
    lwp: Optional[int] = None
    thread: Optional[int] = None
    level: Optional[int] = None    # the frame's level, for a frame
    function: Optional[str] = None

    def to_json(self):
        return {"what": self.what, "kind": self.kind, "lwp": self.lwp, "thread": self.thread,
                "level": self.level, "function": self.function}


@dataclass
class ObjectLiveness:
    """One object the report reaches, whether it is alive, and why we think so."""
    address: int
    kind: str
    verdict: str = UNREADABLE
    type_name: Optional[str] = None     # QOM type ("chardev-socket"), when it still reads
    label: Optional[str] = None         # a chardev's id, when known
    in_tree: Optional[bool] = None      # a chardev still under /chardevs
    part_of: Optional[int] = None       # a mutex that is this chardev's chr_write_lock
    evidence: List[str] = field(default_factory=list)
    holders: List[Holder] = field(default_factory=list)
    chunk: Optional[ChunkFacts] = None

    @property
    def dead(self):
        return self.verdict in DEAD

    def held_by(self, lwp):
        """The holders that are frames of thread ``lwp``."""
        return [h for h in self.holders if h.lwp == lwp]

    def describe(self):
        name = f"{self.kind} '{self.label}'" if self.label else self.kind
        what = f" ({self.type_name})" if self.type_name and not self.label else ""
        return f"{name} 0x{self.address:x}{what}"

    def to_json(self):
        return {"address": ptr(self.address), "kind": self.kind, "verdict": self.verdict,
                "type": self.type_name, "label": self.label, "in_tree": self.in_tree,
                "part_of": ptr(self.part_of),
                "evidence": list(self.evidence),
                "chunk": self.chunk.state if self.chunk else None,
                "holders": [h.to_json() for h in self.holders]}
