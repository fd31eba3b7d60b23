"""Where the watch's findings go: gdb's output, the JSON log, cores, the summary file.

``EventSink`` numbers the events, prints each (errors always, the rest unless quiet), appends
it to ``--json-log`` and, for errors, writes a core with ``gcore`` into ``--core-dir``; it
writes the summary object to ``--summary-json``.  It decides nothing about what an event is.

A core holds the guest's memory, keys and QMP traffic: what the sink creates (cores, the JSON
log, the summary) is created 0600, whatever gdb's umask (``gcore`` runs under a umask of 077).
"""
import contextlib
import json
import os

import gdb

from qemu_chardev.model.errors import QcgError
from qemu_chardev.render import watch as watch_render
from qemu_chardev.render.base import to_json_text


class EventSink:
    """Output of one watch session."""

    def __init__(self, quiet=False, colour=False, json_log=None, core_dir=None,
                 summary_path=None):
        self.quiet = quiet
        self.colour = colour
        self.json_log_path = json_log
        self.core_dir = core_dir
        self.summary_path = summary_path
        self.events = []
        self._next_id = 1
        self._log = None

    def open(self):
        """Check --core-dir (created 0700 if missing) and open --json-log (QcgError:
        nothing was opened)."""
        if self.core_dir and not os.path.isdir(self.core_dir):
            try:
                with private_umask():
                    os.makedirs(self.core_dir, mode=0o700)
            except OSError as exc:
                raise QcgError(f"--core-dir {self.core_dir}: {exc.strerror}") from None
        if self.json_log_path:
            try:
                self._log = open_private(self.json_log_path, "a")
            except OSError as exc:
                raise QcgError(f"cannot open --json-log {self.json_log_path}: {exc}") from None

    def close(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    # --- words -----------------------------------------------------------------------------

    @staticmethod
    def say(text):
        gdb.write(f"{watch_render.PREFIX}: {text}\n")
        gdb.flush()

    def info(self, text):
        """Routine news (chardevs created and armed): not with --quiet."""
        if not self.quiet:
            self.say(text)

    # --- events ----------------------------------------------------------------------------

    def new_id(self):
        """The ``seq`` of the next event (numbered in the order events are found)."""
        seq = self._next_id
        self._next_id += 1
        return seq

    def record(self, event):
        if event.seq is None:
            event.seq = self.new_id()
        self.events.append(event)
        obj = event.to_json()
        if self._log is not None:
            self._log.write(json.dumps(obj) + "\n")
            self._log.flush()
        if not self.quiet or event.severity == "error":
            gdb.write(watch_render.event_block(obj, self.colour,
                                               brief=event.severity != "error") + "\n")
            gdb.flush()

    def write_core(self, event, pid):
        """A core of the process as it is now, for ``event`` (with --core-dir)."""
        if not self.core_dir:
            return
        if event.seq is None:
            event.seq = self.new_id()
        path = os.path.join(self.core_dir, f"core.{pid}.{event.seq}")
        try:
            with private_umask():
                gdb.execute(f"gcore {path}", to_string=True)
        except gdb.error as exc:
            event.problems.append(f"gcore failed: {exc}")
            return
        if os.path.isfile(path):
            try:
                os.chmod(path, 0o600)       # a file that was there keeps its mode otherwise
            except OSError as exc:
                event.problems.append(f"cannot make {path} private: {exc.strerror}")
            event.core = path
        else:
            event.problems.append(f"gcore wrote no {path}")

    # --- the summary -----------------------------------------------------------------------

    def write_summary(self, summary):
        if not self.summary_path:
            return
        tmp = self.summary_path + ".tmp"
        with open_private(tmp, "w") as out:
            out.write(to_json_text(summary))
        os.replace(tmp, self.summary_path)


@contextlib.contextmanager
def private_umask():
    """gdb's umask tightened to at least 077 for the block (gcore creates its file itself)."""
    old = os.umask(0o077)
    os.umask(old | 0o077)
    try:
        yield
    finally:
        os.umask(old)


def open_private(path, mode):
    """``open(path, mode)`` ("a" or "w") for text, created 0600.  A file rewritten ("w") is
    made 0600 too; a log appended to keeps the mode its owner gave it."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    if mode != "a":
        os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode, encoding="utf-8")
