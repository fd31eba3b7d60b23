"""A process's memory as the kernel has it: /proc/PID/maps and /proc/PID/mem, no debugger.

    before = dump(pid)                       # writable and executable mappings, bytes
    ... something that must not change them ...
    changes = compare(before, dump(pid))     # [] when byte-identical
    text_vs_file(pid)                        # executable mappings that differ from their file

Reading /proc/PID/mem needs the same rights as ptrace (same user, or root) but does not
attach: it stops nothing and writes nothing.  A mapping that cannot be read (a guard page, the
[vsyscall] page) is recorded as unreadable rather than skipped silently.
"""

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import procs

PAGE = 4096
_MAPS_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ (\d+)\s*(.*)$")


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str          # e.g. "rw-p", "r-xp"
    offset: int         # file offset of start (file-backed mappings)
    inode: int
    path: str           # "" for anonymous memory, "[heap]", "[stack]", a file name

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def size(self) -> int:
        return self.end - self.start

    def __str__(self) -> str:
        return f"{self.start:#x}-{self.end:#x} {self.perms} {self.path or '[anon]'}"


def mappings(pid: int) -> list:
    """Every mapping of PID, in address order."""
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        m = _MAPS_RE.match(line)
        if m:
            out.append(Mapping(int(m.group(1), 16), int(m.group(2), 16), m.group(3),
                               int(m.group(4), 16), int(m.group(5)), m.group(6).strip()))
    return out


def read(pid: int, address: int, size: int) -> bytes:
    """SIZE bytes of PID's memory at ADDRESS (OSError if unreadable)."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return os.pread(fd, size, address)
    finally:
        os.close(fd)


def dump(pid: int, writable: bool = True, executable: bool = True) -> dict:
    """{Mapping: bytes or None (unreadable)} for PID's readable writable and/or executable
    mappings.  Unreadable ones map to None, so that compare() still sees them."""
    out = {}
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for mapping in mappings(pid):
            if not ((writable and mapping.writable) or (executable and mapping.executable)):
                continue
            if not mapping.readable:
                out[mapping] = None
                continue
            try:
                data = os.pread(fd, mapping.size, mapping.start)
            except OSError:
                data = None
            out[mapping] = data
    finally:
        os.close(fd)
    return out


@dataclass
class Change:
    """How one mapping differs between two dumps."""

    mapping: Mapping
    what: str                   # "added", "removed", "unreadable", "bytes"
    pages: tuple = ()           # addresses of the differing pages ("bytes")
    first: Optional[int] = None  # address of the first differing byte

    def __str__(self) -> str:
        if self.what != "bytes":
            return f"{self.mapping}: {self.what}"
        shown = ", ".join(f"{p:#x}" for p in self.pages[:8])
        more = f" (+{len(self.pages) - 8})" if len(self.pages) > 8 else ""
        return (f"{self.mapping}: {len(self.pages)} page(s) differ, first byte at "
                f"{self.first:#x} (pages {shown}{more})")


def compare(before: dict, after: dict) -> list:
    """[Change] between two dump() results; [] when every mapping is byte-identical."""
    changes = []
    for mapping in sorted(set(before) | set(after), key=lambda m: (m.start, m.end)):
        if mapping not in after:
            changes.append(Change(mapping, "removed"))
            continue
        if mapping not in before:
            changes.append(Change(mapping, "added"))
            continue
        old, new = before[mapping], after[mapping]
        if old == new:
            continue
        if old is None or new is None:
            changes.append(Change(mapping, "unreadable"))
            continue
        pages = []
        first = None
        for off in range(0, max(len(old), len(new)), PAGE):
            a, b = old[off:off + PAGE], new[off:off + PAGE]
            if a != b:
                pages.append(mapping.start + off)
                if first is None:
                    first = mapping.start + off + next(
                        (i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        changes.append(Change(mapping, "bytes", tuple(pages), first))
    return changes


def text_vs_file(pid: int, path_filter=None) -> list:
    """Executable file-backed mappings whose bytes differ from their file (a software
    breakpoint's int3 left behind, for example): [(Mapping, [differing addresses])].

    PATH_FILTER(path) chooses the files (default: all).  A mapping's tail beyond the end of
    the file reads as zeros in memory and is compared as such."""
    out = []
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for mapping in mappings(pid):
            if not mapping.executable or not mapping.readable or not mapping.path.startswith("/"):
                continue
            if path_filter is not None and not path_filter(mapping.path):
                continue
            memory = os.pread(fd, mapping.size, mapping.start)
            with open(mapping.path, "rb") as handle:
                handle.seek(mapping.offset)
                data = handle.read(mapping.size)
            data += bytes(mapping.size - len(data))
            if memory != data:
                diffs = [mapping.start + i for i, (x, y) in enumerate(zip(memory, data))
                         if x != y]
                out.append((mapping, diffs))
    finally:
        os.close(fd)
    return out


def exe_path(pid: int) -> str:
    """The executable PID runs (the /proc/PID/exe link)."""
    return os.readlink(f"/proc/{pid}/exe")


def text_left_behind(pid: int) -> list:
    """Differences between PID's own executable code in memory and its file (see
    text_vs_file), with the bytes there: [(address, byte in memory, byte in the file)]."""
    exe = exe_path(pid)
    found = []
    for mapping, addresses in text_vs_file(pid, lambda p: p == exe):
        memory = read(pid, mapping.start, mapping.size)
        with open(mapping.path, "rb") as handle:
            handle.seek(mapping.offset)
            data = handle.read(mapping.size)
        for address in addresses:
            i = address - mapping.start
            found.append((address, memory[i], data[i] if i < len(data) else 0))
    return found


# --- a process held in a job-control stop (SIGSTOP) ----------------------------------------

def stat_state(pid: int) -> str:
    """The one-letter state in /proc/PID/stat: R, S, D, T (stopped), t (tracing stop), ..."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def thread_states(pid: int) -> dict:
    """{tid: one-letter state} of every thread of PID."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        out[int(tid)] = text[text.rindex(")") + 2]
    return out


def stop_all(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP PID and wait until every thread is in the job-control stop (T)."""
    os.kill(pid, signal.SIGSTOP)
    procs.wait_until(lambda: set(thread_states(pid).values()) == {"T"}, timeout,
                     interval=0.01, what=f"every thread of {pid} stopped (T)")
