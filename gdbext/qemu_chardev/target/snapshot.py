"""One consistent look at the target for the duration of one command.

A ``Snapshot`` owns the memory cache, the thread map and the (lazily unwound) thread
stacks.  Threads are unwound only when a question needs them: who owns a lock needs that
owner's stack; who waits on a lock, or which chardevs sit in thread frames, needs all stacks.
The user's selected thread and frame are restored after every unwind.
"""
import contextlib
import os

import gdb

from qemu_chardev.model.objects import Frame, ThreadRef
from qemu_chardev.model.qemu import (CALLBACK_DATA_ARGUMENTS, CHARDEV_CALLBACKS, blocked_on,
                                     innermost_qemu_frame)
from qemu_chardev.target.memory import Memory, objfile_cache

STACK_DEPTH_LIMIT = 48

# Pointer types worth remembering when they appear as arguments or locals in a frame.
INTERESTING_POINTEE = {
    "Chardev", "SocketChardev", "QIOTask", "QemuMutex", "QemuRecMutex", "GSource",
    "_GSource", "QIOChannel", "QIOChannelSocket", "MonitorQMP", "Monitor",
}


def short_path(filename):
    """'chardev/char-socket.c' from '../chardev/char-socket.c' (meson builds in build/)."""
    while filename.startswith("../"):
        filename = filename[3:]
    return filename


@contextlib.contextmanager
def preserved_selection():
    """Restore the user's selected thread and frame, whatever the body switches to."""
    thread = gdb.selected_thread()
    try:
        frame = gdb.selected_frame()
    except gdb.error:
        frame = None
    try:
        yield
    finally:
        if thread is not None and thread.is_valid():
            thread.switch()
            if frame is not None and frame.is_valid():
                frame.select()


_block_pointers = objfile_cache()     # (block start, end) -> [(gdb.Symbol, pointee)]


def _pointee_name(gdb_type):
    stripped = gdb_type.strip_typedefs()
    if stripped.code != gdb.TYPE_CODE_PTR:
        return None
    target_type = stripped.target()
    names = {str(target_type), target_type.strip_typedefs().tag or ""}
    names.discard("")
    for name in names:
        name = name.replace("struct ", "")
        if name in INTERESTING_POINTEE:
            return name
    return None


def _frame_pointers(frame):
    """Interesting pointer-typed arguments and locals of a QEMU frame.

    The untyped data argument of a chardev callback (``qemu_chr_socket_connected(task,
    opaque)``) counts as a Chardev pointer: after ``CHARDEV(opaque)`` it is one, and in an
    optimized build the typed local may be gone."""
    try:
        block = frame.block()
    except RuntimeError:
        return []
    out = []
    for sym, pointee in _pointer_symbols(frame, block):
        try:
            value = int(frame.read_var(sym))
        except (gdb.error, gdb.MemoryError, RuntimeError, ValueError):
            continue
        out.append((sym.name, pointee, value))
    return out


def _pointer_symbols(frame, block):
    """[(gdb.Symbol, pointee)] of the interesting pointers in scope in ``block``; the same for
    every frame stopped in that block, so worked out once per block (the iothreads of a
    core all stop in the same few blocks: 512 threads, a handful of lookups)."""
    key = (block.start, block.end)
    found = _block_pointers.get(key)
    if found is not None:
        return found
    try:
        callback_data = frame.name() in CHARDEV_CALLBACKS
    except gdb.error:
        callback_data = False
    found, seen = [], set()
    while block is not None:
        for sym in block:
            if not (sym.is_argument or sym.is_variable) or sym.name in seen:
                continue
            pointee = _pointee_name(sym.type)
            if pointee is None and callback_data and sym.is_argument \
                    and sym.name in CALLBACK_DATA_ARGUMENTS:
                pointee = "Chardev"
            if pointee is None:
                continue
            seen.add(sym.name)
            found.append((sym, pointee))
        if block.function is not None:
            break
        block = block.superblock
    _block_pointers[key] = found
    return found


def _in_main_executable(symtab):
    """True for code of the program itself (QEMU), false for glibc/GLib even with debug info."""
    objfile = symtab.objfile
    objfile = getattr(objfile, "owner", None) or objfile
    main = gdb.current_progspace().filename
    return main is not None and objfile.filename == main


def walk_frames(depth=STACK_DEPTH_LIMIT):
    """(level, gdb.Frame) of the selected thread, newest first, at most ``depth`` of them."""
    try:
        frame = gdb.newest_frame()
    except gdb.error:
        return
    level = 0
    while frame is not None and level < depth:
        yield level, frame
        try:
            frame = frame.older()
        except gdb.error:
            return
        level += 1


def frame_model(level, frame):
    """A models.Frame copied out of a gdb.Frame (valid only until the next thread switch)."""
    try:
        name = frame.name()
    except gdb.error:
        name = None
    sal = frame.find_sal()
    symtab = sal.symtab if sal is not None else None
    is_qemu = symtab is not None and frame.function() is not None \
        and _in_main_executable(symtab)
    pointers = _frame_pointers(frame) if is_qemu else []
    return Frame(level=level, pc=frame.pc(), function=name,
                 file=short_path(symtab.filename) if symtab else None,
                 line=sal.line if symtab else None, is_qemu=is_qemu, pointers=pointers,
                 fullname=symtab.fullname() if symtab else None)


def selected_thread_stack(depth=STACK_DEPTH_LIMIT):
    """[models.Frame] of the selected thread, newest first, without switching threads."""
    frames = []
    for level, frame in walk_frames(depth):
        try:
            frames.append(frame_model(level, frame))
        except gdb.error:
            break
    return frames


def _newest_sp():
    """The selected thread's newest frame's stack pointer, or None (gdb has that frame cached
    right after an unwinding of the thread)."""
    try:
        return int(gdb.newest_frame().read_register("sp"))
    except (gdb.error, RuntimeError, ValueError):
        return None


class Snapshot:
    """Per-command state: memory cache, threads, stacks, QOM type-name cache, problems."""

    def __init__(self):
        self.mem = Memory()
        self.problems = []
        self.type_names = {}           # class address -> [type name, parent, ...]
        self.object_types = {}         # object address -> the same list (read once)
        self._threads = None
        self._stacks = {}
        self._stack_pointers = {}      # lwp -> its newest frame's sp, read while unwinding
        self._switching = False
        self._refs = {}
        self._lock_waits = None
        self.census = None             # the GSource census, when a command took one

    def note(self, problem):
        """Record something that could not be read; the report is then incomplete."""
        if problem not in self.problems:
            self.problems.append(problem)

    def threads(self):
        """{lwp: gdb.InferiorThread} of the selected inferior."""
        if self._threads is None:
            self._threads = {}
            for thread in gdb.selected_inferior().threads():
                lwp = thread.ptid[1] or thread.ptid[2]
                self._threads[lwp] = thread
        return self._threads

    @contextlib.contextmanager
    def switching_threads(self):
        """A run of thread switches (every thread's stack, every thread's $_siginfo): the
        user's thread and frame are saved and restored once around it, not once per thread
        (a few hundred microseconds each: 0.1 s on a core of 512 threads)."""
        if self._switching:
            yield
            return
        self._switching = True
        try:
            with preserved_selection():
                yield
        finally:
            self._switching = False

    def stack(self, lwp, depth=STACK_DEPTH_LIMIT):
        """[models.Frame] of a thread, newest first (unwound once to this depth, then cached)."""
        cached = self._stacks.get(lwp)
        if cached is not None and (cached[0] >= depth or len(cached[1]) < cached[0]):
            return cached[1][:depth]
        thread = self.threads().get(lwp)
        frames = []
        if thread is not None and thread.is_valid():
            with self.switching_threads():
                thread.switch()
                frames = selected_thread_stack(depth)
                self._stack_pointers[lwp] = _newest_sp()
        self._stacks[lwp] = (depth, frames)
        return frames

    def stack_pointer(self, lwp):
        """The thread's stack pointer (its newest frame's sp), or None if unreadable: taken
        from the unwinding of its stack when that was done, else read by switching to it."""
        if lwp not in self._stack_pointers:
            thread = self.threads().get(lwp)
            sp = None
            if thread is not None and thread.is_valid():
                with self.switching_threads():
                    try:
                        thread.switch()
                    except (gdb.error, RuntimeError):
                        pass
                    else:
                        sp = _newest_sp()
            self._stack_pointers[lwp] = sp
        return self._stack_pointers[lwp]

    def frame_pointers(self, *pointees):
        """(lwp, frame, name, address) of every non-NULL frame argument or local pointing at
        one of ``pointees`` (e.g. "Chardev", "SocketChardev"), in every thread's stack."""
        for lwp in self.threads():
            for frame in self.stack(lwp):
                for name, pointee, value in frame.pointers:
                    if value and pointee in pointees:
                        yield lwp, frame, name, value

    def thread_ref(self, lwp):
        """ThreadRef for an LWP: gdb number, name, innermost QEMU frame (unwinds that thread)."""
        if lwp in self._refs:
            return self._refs[lwp]
        thread = self.threads().get(lwp)
        if thread is None:
            ref = ThreadRef(lwp=lwp)
        else:
            qemu_frame = innermost_qemu_frame(self.stack(lwp))
            ref = ThreadRef(lwp=lwp, num=thread.num, name=thread.name,
                            function=qemu_frame.function if qemu_frame else None,
                            location=qemu_frame.location if qemu_frame else None)
        self._refs[lwp] = ref
        return ref

    def lock_waits(self):
        """{lwp: address of the pthread mutex it is blocked on}, from every thread's stack.

        A thread waits when frames without QEMU debug info (glibc's lock path) sit on top of
        ``qemu_mutex_lock_impl`` / ``qemu_rec_mutex_lock_impl``; the mutex is that frame's
        ``mutex`` argument (QemuMutex and QemuRecMutex start with their pthread mutex).
        """
        if self._lock_waits is None:
            self._lock_waits = {}
            for lwp in self.threads():
                mutex = blocked_on(self.stack(lwp, depth=12))
                if mutex:
                    self._lock_waits[lwp] = mutex
        return self._lock_waits


def colour_wanted():
    """Colour only on a terminal, never with NO_COLOR or ``set style enabled off``."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        if not gdb.parameter("style enabled"):
            return False
    except (gdb.error, RuntimeError):
        return False
    try:
        return os.isatty(1)
    except OSError:
        return False
