"""How a gdb finds and loads this package, wherever it is installed.

gdb's embedded Python (/usr/bin/python3 on Debian) is not the Python that pip installed
this package into, so gdb cannot simply ``import qemu_chardev``: the one gdb command built
here imports the package from the folder that holds it (a checkout's gdbext/, or a venv's
site-packages), then moves that folder, and those of its pure-Python dependencies
(tabulate, pygments, pyelftools), to the end of gdb's ``sys.path``, where gdb's own
packages take precedence: a venv's site-packages fills the gaps of gdb's Python and shadows
nothing in it.  Then it starts the extension.  The same command serves the scripts
(``-ex``), ``~/.gdbinit`` (``python3 -m qemu_chardev --gdb-init``) and gdb auto-load
scripts.
"""
import importlib.util
import os
import shutil

# The dependencies that gdb's Python may lack.  numpy is left out on purpose: it is compiled
# for one Python version, and the census falls back to bytes.find without it.
PURE_PYTHON_DEPENDENCIES = ("tabulate", "pygments", "elftools")


def package_parent():
    """The folder that holds the ``qemu_chardev`` package (a checkout's gdbext/, or a
    site-packages)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dependency_dirs():
    """The folders, in this Python, that hold the pure-Python dependencies."""
    dirs = []
    for name in PURE_PYTHON_DEPENDENCIES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin:
            continue
        folder = os.path.dirname(os.path.dirname(spec.origin)) if spec.submodule_search_locations \
            else os.path.dirname(spec.origin)
        if folder not in dirs:
            dirs.append(folder)
    return dirs


def load_statements(parent=None, extra=None, entry="start"):
    """The Python statements (one line) that make gdb import the extension and call
    ``qemu_chardev.ENTRY()`` (``start``; ``warm_up`` for ``warm_up_command``).

    ``parent`` is first on sys.path only while ``qemu_chardev`` itself is imported (its
    ``__init__`` imports nothing else; the rest of the package is found through the
    package's own ``__path__``); the entry inserted for that is popped again, and
    ``parent`` and the dependencies' folders are appended unless gdb's path has them."""
    parent = parent or package_parent()
    extra = [d for d in (dependency_dirs() if extra is None else extra) if d != parent]
    return ("import sys; "
            f"sys.path.insert(0, {parent!r}); "
            "import qemu_chardev; "
            "sys.path.pop(0); "
            f"sys.path.extend(d for d in {[*extra, parent]!r} if d not in sys.path); "
            f"qemu_chardev.{entry}()")


def load_command(parent=None, extra=None):
    """The gdb command (for -ex, -ix or ~/.gdbinit) that loads the extension."""
    return "python " + load_statements(parent, extra)


def warm_up_command(parent=None, extra=None):
    """The gdb command for ``-iex`` that imports the extension's gdb-free layers on a thread
    while gdb reads the binary and the core; ``load_command`` (-ex) then finishes the load."""
    return "python " + load_statements(parent, extra, entry="warm_up")


def auto_load_script(parent=None, extra=None):
    """The text of a ``BINARY-gdb.py`` auto-load script that loads the extension."""
    return ("# Loads the qemu-chardev-gdb extension (`help qemu` lists its commands).\n"
            "# Written by `python3 -m qemu_chardev --auto-load-script`.\n"
            + load_statements(parent, extra).replace("; ", "\n") + "\n")


def check_gdb(gdb):
    """One-line reason why ``gdb`` cannot be run, or None (its Python and version are
    checked where it runs: see ``explain_gdb_failure``)."""
    if shutil.which(gdb) is None:
        return f"gdb not found: {gdb} (Debian: apt-get install gdb)"
    return None


# What gdb prints when it cannot run the extension at all, and what to tell the user.
_GDB_FAILURES = (
    ("Python scripting is not supported in this copy of GDB",
     "{gdb} was built without Python; install a gdb with Python (Debian: apt-get install gdb, "
     "not gdb-minimal)"),
    ("qemu-chardev-gdb: gdb ",
     None),     # our own too-old message: shown as it is
    ("No module named 'qemu_chardev'",
     "gdb's Python cannot import qemu_chardev (is the package where this script is?)"),
)


def explain_gdb_failure(gdb, stderr):
    """A one-line reason for a gdb that could not run the extension, from its stderr (None
    when stderr says nothing of the kind).  Our own too-old message is given as it is, without
    the "gdb.GdbError: " or "Python Exception ..." gdb puts in front of it."""
    for line in (stderr or "").splitlines():
        for needle, message in _GDB_FAILURES:
            if needle in line:
                return message.format(gdb=gdb) if message else line[line.index(needle):].strip()
    return None
