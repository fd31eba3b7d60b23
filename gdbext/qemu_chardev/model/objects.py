"""Plain data models of what was read from the target (no gdb imports).

Addresses are ints in the models; ``to_json`` turns them into "0x..." strings and NULL into
None, the convention of every ``--json`` output and of the report schema.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional


def ptr(value):
    """JSON form of a pointer: "0x..." or None for NULL/unknown."""
    return None if not value else f"0x{value:x}"


@dataclass
class Frame:
    """One stack frame, copied out of gdb (gdb.Frame objects do not survive thread switches)."""
    level: int
    function: Optional[str]
    file: Optional[str] = None
    line: Optional[int] = None
    pointers: list = field(default_factory=list)    # [(name, pointee type, address)]
    pc: int = 0
    is_qemu: bool = True
    fullname: Optional[str] = None                  # the source file's path on this machine

    @property
    def location(self):
        return f"{self.file}:{self.line}" if self.file else None

    def pointer(self, *names):
        for name, _type, value in self.pointers:
            if name in names:
                return value
        return None

    def to_json(self):
        return {"level": self.level, "pc": ptr(self.pc), "function": self.function,
                "file": self.file, "line": self.line,
                "pointers": {name: ptr(v) for name, _t, v in self.pointers}}


@dataclass
class ThreadRef:
    """A thread as a user knows it: kernel LWP, gdb thread number, where it is."""
    lwp: Optional[int]
    num: Optional[int] = None
    name: Optional[str] = None
    function: Optional[str] = None      # innermost frame with QEMU debug info
    location: Optional[str] = None      # "file:line" of that frame

    def to_json(self):
        return {"lwp": self.lwp, "thread": self.num, "name": self.name,
                "function": self.function, "location": self.location}

    def describe(self):
        who = f"LWP {self.lwp}" if self.lwp else "unknown LWP"
        if self.num is not None:
            who += f" (thread {self.num})"
        else:
            who += " (no such thread)"
        if self.function:
            who += f" in {self.function}"
        return who


@dataclass
class MutexState:
    """A QemuMutex / QemuRecMutex / pthread_mutex_t and who owns and waits on it."""
    address: int
    kind: str
    locked: Optional[bool]
    owner_lwp: Optional[int] = None
    owner: Optional[ThreadRef] = None
    lock_word: Optional[int] = None
    count: Optional[int] = None
    mutex_type: Optional[str] = None     # normal / recursive / errorcheck / adaptive
    destroyed: bool = False
    initialized: Optional[bool] = None
    locker_file: Optional[str] = None    # --enable-debug-mutex: where it was taken
    locker_line: Optional[int] = None
    waiters: List[ThreadRef] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    @property
    def status(self):
        """"held", "free", "destroyed", "uninitialized" (QemuMutex.initialized false) or
        "unknown" (unreadable): a destroyed mutex is neither free nor held."""
        if self.locked is None:
            return "unknown"
        if self.destroyed:
            return "destroyed"
        if self.initialized is False:
            return "uninitialized"
        return "held" if self.locked else "free"

    @property
    def locker(self):
        if self.locker_file:
            return f"{self.locker_file}:{self.locker_line}"
        return None

    def to_json(self):
        owner = self.owner
        return {
            "address": ptr(self.address), "kind": self.kind, "status": self.status,
            "locked": self.locked,
            "owner_lwp": self.owner_lwp,
            "owner_thread": owner.num if owner else None,
            "owner_function": owner.function if owner else None,
            "owner_location": owner.location if owner else None,
            "locker": self.locker, "lock_word": self.lock_word, "count": self.count,
            "type": self.mutex_type, "destroyed": self.destroyed,
            "initialized": self.initialized,
            "waiters": [w.to_json() for w in self.waiters],
        }


@dataclass
class GSourceState:
    """One GSource as read from memory, with its state (``model.glib.STATES``)."""
    address: int
    role: Optional[str] = None           # e.g. "hup_source", "completion"
    ref_count: Optional[int] = None
    flags: Optional[int] = None
    flag_names: List[str] = field(default_factory=list)
    context: Optional[int] = None
    source_id: Optional[int] = None
    priority: Optional[int] = None
    name: Optional[str] = None
    funcs: Optional[int] = None
    funcs_symbol: Optional[str] = None
    callback: Optional[int] = None
    callback_symbol: Optional[str] = None
    callback_data: Optional[int] = None
    state: str = "unreadable"
    problems: List[str] = field(default_factory=list)

    def to_json(self):
        return {
            "address": ptr(self.address), "role": self.role, "ref_count": self.ref_count,
            "flags": self.flags, "flag_names": self.flag_names, "context": ptr(self.context),
            "source_id": self.source_id, "priority": self.priority, "name": self.name,
            "funcs": ptr(self.funcs), "funcs_symbol": self.funcs_symbol,
            "callback": ptr(self.callback), "callback_symbol": self.callback_symbol,
            "callback_data": ptr(self.callback_data), "state": self.state,
            "problems": self.problems,
        }


@dataclass
class ObjectState:
    """A QOM object seen through a pointer (a channel, a listener, a task's source)."""
    address: int
    role: Optional[str] = None
    type: Optional[str] = None
    ref: Optional[int] = None
    fd: Optional[int] = None
    problems: List[str] = field(default_factory=list)

    def to_json(self):
        return {"address": ptr(self.address), "role": self.role, "type": self.type,
                "ref": self.ref, "fd": self.fd, "problems": self.problems}


@dataclass
class QIOTaskState:
    """A QIOTask and, for threaded tasks, its QIOTaskThreadData."""
    address: int
    found_via: str = ""
    source: Optional[ObjectState] = None
    func: Optional[int] = None
    func_symbol: Optional[str] = None
    opaque: Optional[int] = None
    error: Optional[int] = None
    result: Optional[int] = None
    thread_data: Optional[int] = None
    worker_symbol: Optional[str] = None
    context: Optional[int] = None
    completion: Optional[GSourceState] = None
    worker_thread: Optional[ThreadRef] = None
    problems: List[str] = field(default_factory=list)

    def to_json(self):
        return {
            "address": ptr(self.address), "found_via": self.found_via,
            "source": self.source.to_json() if self.source else None,
            "func": ptr(self.func), "func_symbol": self.func_symbol, "opaque": ptr(self.opaque),
            "error": ptr(self.error), "result": ptr(self.result),
            "thread_data": ptr(self.thread_data), "worker_symbol": self.worker_symbol,
            "context": ptr(self.context),
            "completion": self.completion.to_json() if self.completion else None,
            "worker_thread": self.worker_thread.to_json() if self.worker_thread else None,
            "problems": self.problems,
        }


@dataclass
class ChardevState:
    """A Chardev (and, for sockets, its SocketChardev part)."""
    address: int
    label: Optional[str]
    type: Optional[str]
    in_tree: bool = True
    found_via: str = "qom"
    liveness: Optional[str] = None       # model.liveness verdict, for chardevs not in the tree
    is_socket: bool = False
    state: Optional[str] = None          # connected / connecting / disconnected (sockets)
    ioc: Optional[int] = None
    sioc: Optional[int] = None
    listener: Optional[int] = None
    be_open: Optional[int] = None
    filename: Optional[str] = None
    frontend: Optional[int] = None
    write_lock: Optional[MutexState] = None
    fields: Dict[str, object] = field(default_factory=dict)
    gsources: List[GSourceState] = field(default_factory=list)
    objects: List[ObjectState] = field(default_factory=list)
    connect_task: Optional[QIOTaskState] = None
    problems: List[str] = field(default_factory=list)

    def to_json(self):
        return {
            "label": self.label, "address": ptr(self.address), "type": self.type,
            "in_tree": self.in_tree, "found_via": self.found_via, "liveness": self.liveness,
            "state": self.state,
            "ioc": ptr(self.ioc) if self.is_socket else None,
            "sioc": ptr(self.sioc) if self.is_socket else None,
            "listener": ptr(self.listener) if self.is_socket else None,
            "be_open": self.be_open, "filename": self.filename,
            "frontend": ptr(self.frontend),
            "write_lock": self.write_lock.to_json() if self.write_lock else None,
            "fields": self.fields,
            "gsources": [g.to_json() for g in self.gsources],
            "objects": [o.to_json() for o in self.objects],
            "connect_task": self.connect_task.to_json() if self.connect_task else None,
            "problems": self.problems,
        }
