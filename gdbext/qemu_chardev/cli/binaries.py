"""Which executable dumped a core, found without being told: chardev-postmortem's binary discovery.

A CI job's crash directory holds cores of several programs (``qemu-system-*``,
``qemu-storage-daemon``, ``qemu-img``, unit tests such as ``test-char``).  Each core names its
executable (the NT_FILE mapping of the program, beside PRPSINFO's ``pr_fname``) and carries the
executable's build-id (its first page, dumped by default).  For each core, in this order:

1. the executable recorded in the core, if that file exists and its build-id is the core's
   ("recorded in the core, build-id matches");
2. a file with the core's build-id under a ``--binary-dir`` (searched recursively, once, and
   only when some core needs it) ("found in --binary-dir by build-id");
3. nothing local: gdb's debuginfod fetches it by build-id, only when the user enabled that
   ("left to gdb's debuginfod");
4. else the core cannot be analysed, and ``Choice.problem`` is the one-line reason.

A BINARY given on the command line bypasses all this ("given on the command line"); it is
checked against each core as before (``files.elf.core_matches_binary``).

``choose`` is the pure decision over facts (``Candidate``: what a file on disk is);
``inspect`` and ``BuildIdIndex`` gather those facts from the filesystem.  The end of the module
builds ``coredumpctl`` command lines and reads its answers (the cores systemd-coredump keeps).
No gdb: ``files`` and ``model`` only.
"""
import functools
import os
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from qemu_chardev.files import elf as corefile

GIVEN = "given"
RECORDED = "recorded"
BINARY_DIR = "binary-dir"
DEBUGINFOD = "debuginfod"
UNVERIFIED = "recorded-unverified"

_WHY = {
    GIVEN: "given on the command line",
    RECORDED: "recorded in the core, build-id matches",
    UNVERIFIED: "recorded in the core; the core holds no build-id to check it against",
    BINARY_DIR: "found in --binary-dir by build-id",
    DEBUGINFOD: "not on this machine: left to gdb's debuginfod, by build-id",
}
DELETED = " (deleted)"          # NT_FILE path of a file removed or replaced after it was mapped
SHORT_ID = 12                   # build-id digits shown in messages


@dataclass(frozen=True)
class Candidate:
    """What a file on disk is, as far as finding a core's binary goes."""
    path: str
    exists: bool = True
    executable: bool = True                 # an ELF executable or shared object
    build_id: Optional[str] = None
    problem: Optional[str] = None           # why it could not be read, when it exists


@dataclass(frozen=True)
class Choice:
    """The binary for one core and how it was found; ``path`` None with ``how`` None means
    not found (``problem`` says why), with ``how`` DEBUGINFOD gdb is to fetch it."""
    path: Optional[str]
    how: Optional[str]
    build_id: Optional[str] = None          # the core's executable's build-id, when known
    problem: Optional[str] = None

    @property
    def found(self):
        return self.how is not None

    @property
    def why(self):
        if self.how == DEBUGINFOD and self.build_id:
            return f"{_WHY[DEBUGINFOD]} {self.build_id[:SHORT_ID]}"
        return _WHY.get(self.how)

    def line(self):
        """'binary: PATH (why)', or the reason it was not found."""
        if not self.found:
            return self.problem
        return f"binary: {self.path or '(none)'} ({self.why})"

    def as_json(self):
        return {"path": self.path, "how": self.how, "why": self.why if self.found else None,
                "core_build_id": self.build_id, "problem": self.problem}


def recorded_path(executable):
    """The path a core's NT_FILE note records for its executable, without the kernel's
    ' (deleted)' suffix (the file was removed or replaced since it was mapped)."""
    if executable and executable.endswith(DELETED):
        return executable[:-len(DELETED)]
    return executable


def given(path):
    """The choice for a BINARY given on the command line."""
    return Choice(path, GIVEN)


def _short(build_id):
    return build_id[:SHORT_ID] if build_id else "none"


def choose(program, executable, build_id, recorded: Optional[Candidate],
           matches: Sequence[str] = (), binary_dirs: Sequence[str] = (),
           debuginfod: bool = False) -> Choice:
    """The binary of a core, from facts only.

    ``program`` and ``executable`` are what the core's notes name (pr_fname, the NT_FILE path),
    ``build_id`` the executable's build-id dumped in the core (None when the core lacks it);
    ``recorded`` what is at the recorded path now (None when the core records no path);
    ``matches`` the files under ``binary_dirs`` that have ``build_id``; ``debuginfod`` whether
    the user lets gdb fetch what is missing."""
    executable = recorded_path(executable)
    if recorded is not None and recorded.exists and recorded.executable:
        if build_id and recorded.build_id == build_id:
            return Choice(recorded.path, RECORDED, build_id)
        if not build_id:
            return Choice(recorded.path, UNVERIFIED, None)
    if build_id and matches:
        return Choice(sorted(matches)[0], BINARY_DIR, build_id)
    if build_id and debuginfod:
        return Choice(None, DEBUGINFOD, build_id)
    return Choice(None, None, build_id, _not_found(program, executable, build_id, recorded,
                                                   binary_dirs))


def _not_found(program, executable, build_id, recorded, binary_dirs):
    """The one-line reason no binary was found for a core."""
    who = f"core of '{program}'" if program else "core of an unknown program"
    if not executable:
        where = "the core names no executable (no NT_FILE note)"
    elif recorded is None or not recorded.exists:
        where = f"{executable} (recorded in the core) does not exist"
    elif recorded.problem:
        where = f"{executable} (recorded in the core): {recorded.problem}"
    elif not recorded.executable:
        where = f"{executable} (recorded in the core) is not an ELF executable"
    elif recorded.build_id is None:
        where = f"{executable} (recorded in the core) has no build-id"
    else:
        where = (f"{executable} (recorded in the core) is another build: build-id "
                 f"{_short(recorded.build_id)}, the core's is {_short(build_id)}")
    if not build_id:
        search = "the core holds no build-id of its executable to search for"
    elif binary_dirs:
        search = (f"no file under --binary-dir {', '.join(binary_dirs)} has build-id "
                  f"{_short(build_id)}")
    else:
        search = f"give --binary-dir DIR holding build-id {_short(build_id)}, or BINARY"
    return f"binary not found: {who}: {where}; {search}"


# --- the filesystem -------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def inspect(path) -> Candidate:
    """What the file at ``path`` is (cached: a binary serves many cores)."""
    if not os.path.isfile(path):
        return Candidate(path, exists=False, executable=False)
    try:
        kind = corefile.elf_type(path)
        if kind not in (corefile.ET_EXEC, corefile.ET_DYN):
            return Candidate(path, executable=False)
        return Candidate(path, build_id=corefile.binary_build_id(path))
    except OSError as exc:
        return Candidate(path, executable=False, problem=exc.strerror or str(exc))
    except corefile.ElfError as exc:
        return Candidate(path, executable=False,
                         problem=str(exc).replace(path + ": ", "", 1))


@functools.lru_cache(maxsize=None)
def _rodata(path):
    try:
        return corefile.section_bytes(path, ".rodata") or b""
    except (OSError, corefile.ElfError):
        return b""


def qemu_version(path):
    """The QEMU version a binary announces in its .rodata (read once per binary)."""
    return corefile.qemu_version_in(_rodata(path))


def is_qemu_program(path):
    """Whether a binary is a QEMU program: its read-only data names QEMU (every QEMU
    program's does, through its own messages and qemuutil's; ``sleep``'s does not)."""
    data = _rodata(path)
    return b"qemu" in data or b"QEMU" in data


def not_qemu(program, choice):
    """The one-line reason a core whose binary was found is not analysed: not QEMU."""
    who = f"'{program}'" if program else "an unknown program"
    return f"core of {who}, not of a QEMU program ({choice.path}, {choice.why})"


class BuildIdIndex:
    """The ELF executables and shared objects under some directories, by build-id.

    The directories are walked once, on the first lookup (never if every core's recorded
    binary matches), recursively, not following symbolic links to directories; a symbolic
    link to a file counts (as the link's path).  Files that are not ELF, ELF files of other
    kinds (objects, cores) and unreadable files are skipped.  Thread-safe."""

    def __init__(self, directories: Sequence[str]):
        self.directories = list(directories)
        self._lock = threading.Lock()
        self._by_id: Optional[Dict[str, List[str]]] = None

    def find(self, build_id) -> List[str]:
        if not build_id or not self.directories:
            return []
        with self._lock:
            if self._by_id is None:
                self._by_id = self._walk()
            return list(self._by_id.get(build_id, ()))

    def _walk(self):
        by_id: Dict[str, List[str]] = {}
        for top in self.directories:
            for root, dirs, files in os.walk(top):
                dirs.sort()
                for name in sorted(files):
                    candidate = _indexable(os.path.join(root, name))
                    if candidate is not None:
                        by_id.setdefault(candidate.build_id, []).append(candidate.path)
        return by_id


def _indexable(path) -> Optional[Candidate]:
    """A Candidate with a build-id for an ELF executable at ``path``, else None."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != b"\x7fELF":
                return None
    except OSError:
        return None
    candidate = inspect(path)
    return candidate if candidate.executable and candidate.build_id else None


def discover(core, index: BuildIdIndex, debuginfod=False) -> Choice:
    """The binary of ``core`` (a files.elf.CoreInfo): the recorded executable, else one under
    the index's directories with the core's build-id, else debuginfod if enabled."""
    executable = recorded_path(core.executable)
    recorded = inspect(os.path.abspath(executable)) if executable else None
    build_id = core.executable_build_id
    matches = ()
    if not (recorded and recorded.exists and recorded.executable
            and (build_id is None or recorded.build_id == build_id)):
        matches = index.find(build_id)
    return choose(core.program, core.executable, build_id, recorded, matches,
                  index.directories, debuginfod)


# --- systemd-coredump -----------------------------------------------------------------------

COREDUMPCTL = "coredumpctl"
COREDUMPCTL_MISSING = ("--coredumpctl: coredumpctl is not installed (Debian and Ubuntu: "
                       "apt-get install systemd-coredump; Fedora: it is part of systemd)")


def coredumpctl_dump_argv(match, output, coredumpctl=COREDUMPCTL):
    """The command that writes the most recent core matching ``match`` (a PID, an
    executable's name or path, or a journal match such as COREDUMP_UID=1000) to ``output``,
    uncompressed.  ``--`` keeps a match from being read as an option."""
    return [coredumpctl, "--no-pager", "dump", f"--output={output}", "--", match]


def coredumpctl_reason(returncode, stderr):
    """The one-line reason a ``coredumpctl dump`` failed, from what it printed (its last
    lines, e.g. "No journal files were found. No match found.")."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if lines:
        return "coredumpctl: " + " ".join(lines[-3:])
    return f"coredumpctl dump failed (exit {returncode})"


def coredumpctl_label(match):
    """How a core taken from coredumpctl is named in the reports."""
    return f"coredumpctl {match}"
