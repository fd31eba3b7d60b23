"""The gdb work a command cannot avoid, measured without the extension: record, then replay.

Sourced into gdb (``-x bench/gdb_calls.py``).  ``record(COMMAND, OUT)``, with the extension
loaded, runs COMMAND once while noting every call it makes into gdb's symbol tables (types,
global and static symbols, expressions, ``block_for_pc``), every gdb CLI command it runs
(`maint info sections`, `info target`, ...), the threads whose stacks it unwinds and every
memory read (address, size), and writes them to OUT as JSON.  ``replay(OUT)``, in a gdb with
nothing loaded, makes the same calls in a plain loop, unwinds the same threads (name, line,
function and block of each frame: what a report's stacks need) and reads the same memory.

What the replay costs over `gdb -batch -ex 'info threads'` is what any tool reading these
structures through gdb pays for the same answers: gdb's symbol expansion and unwinding, and
one read per structure.  It leaves out the Python that turns those answers into a report, so
it is a lower bound on a command's cost, not an estimate of it.
"""
import json

import gdb

_CALLS = ("lookup_type", "lookup_global_symbol", "lookup_static_symbol", "parse_and_eval",
          "block_for_pc", "execute")
_FRAME_LIMIT = 64


def record(command, out):
    """Run ``command`` (a gdb command of the extension) and write the gdb calls it made."""
    from qemu_chardev.target import memory as target_memory
    log = {name: [] for name in _CALLS}
    log["read_memory"] = []
    log["unwound_threads"] = []
    originals = {name: getattr(gdb, name) for name in _CALLS + ("newest_frame",)}

    def noted(name):
        def call(*args, **kwargs):
            log[name].append([_plain(a) for a in args])
            return originals[name](*args, **kwargs)
        return call

    class Reads:
        """The inferior, its read_memory noted."""
        def __init__(self, inferior):
            self._inferior = inferior

        def read_memory(self, address, size):
            log["read_memory"].append([int(address), int(size)])
            return self._inferior.read_memory(address, size)

        def __getattr__(self, name):
            return getattr(self._inferior, name)

    def newest_frame():
        thread = gdb.selected_thread()
        if thread is not None and thread.global_num not in log["unwound_threads"]:
            log["unwound_threads"].append(thread.global_num)
        return originals["newest_frame"]()

    memory_init = target_memory.Memory.__init__

    def init(self, inferior=None):
        memory_init(self, inferior)
        self.inferior = Reads(self.inferior)

    for name in _CALLS:
        setattr(gdb, name, noted(name))
    gdb.newest_frame = newest_frame
    target_memory.Memory.__init__ = init
    try:
        originals["execute"](command, to_string=True)
    finally:
        for name, original in originals.items():
            setattr(gdb, name, original)
        target_memory.Memory.__init__ = memory_init
    log["execute"] = [a for a in log["execute"] if a and a[0] != command]
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(log, handle)
    gdb.write("recorded: " + ", ".join(f"{k} {len(v)}" for k, v in log.items()) + "\n")


def _plain(value):
    """A call's argument as JSON holds it (a gdb.Value or a block as its integer)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    try:
        return int(value)
    except (TypeError, ValueError, gdb.error):
        return str(value)


def replay(path):
    """Make the recorded calls, unwind the recorded threads, read the recorded memory."""
    with open(path, encoding="utf-8") as handle:
        log = json.load(handle)
    for name in _CALLS:
        call = getattr(gdb, name)
        for args in log[name]:
            try:
                if name == "execute":
                    call(args[0], to_string=True)
                else:
                    call(*args)
            except (gdb.error, RuntimeError, TypeError, ValueError):
                pass
    unwound = set(log["unwound_threads"])
    for thread in gdb.selected_inferior().threads():
        if thread.global_num not in unwound:
            continue
        thread.switch()
        frame, depth = gdb.newest_frame(), 0
        while frame is not None and depth < _FRAME_LIMIT:
            frame.name()
            frame.find_sal()
            try:
                frame.function()
                frame.block()
            except RuntimeError:
                pass
            frame, depth = frame.older(), depth + 1
    inferior = gdb.selected_inferior()
    for address, size in log["read_memory"]:
        try:
            inferior.read_memory(address, size)
        except gdb.MemoryError:
            pass
