"""The ways people run gdb: -batch with -ex, -x FILE, an interactive terminal with the pager
on and a narrow screen, TUI mode; colour only where it belongs and tables that fit the width.

Interactive gdb runs in a pseudo-terminal made here (its size set before gdb starts), with
TERM=xterm; what it prints is read from the terminal's master side, escapes included.
"""
import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time

import pytest

import support
from support import postmortem as pm
from support import procs

LABELS = ("mon0", "cli0", "tcp0", "ring0", "null0")
PAGER = b"--Type <RET> for more, q to quit, c to continue without paging--"
PROMPT = b"(gdb) "
# Bracketed-paste mode switches readline sends around every prompt: not ours.
READLINE_ESCAPES = re.compile(rb"\x1b\[\?2004[hl]")
SGR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def build():
    return support.require_build(support.versions_under_test()[-1], "fixed")


@pytest.fixture(scope="module")
def core(build):
    """A gcore of a daemon with mon0 (connected), cli0, tcp0, ring0 and null0."""
    return pm.idle_core(build)


class Terminal:
    """gdb in a pseudo-terminal of ROWS x COLS."""

    def __init__(self, argv, rows=24, cols=80, env=None):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        merged = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS",
                                                                    "LINES")}
        merged.update(TERM="xterm", **(env or {}))
        merged.pop("DEBUGINFOD_URLS", None)
        self.proc = procs.register(subprocess.Popen(
            [str(a) for a in argv], stdin=slave, stdout=slave, stderr=slave, env=merged,
            start_new_session=True, close_fds=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0)))
        os.close(slave)
        self.fd = master
        self.seen = b""

    def expect(self, needle: bytes, timeout=60.0) -> bytes:
        """What gdb printed up to and including NEEDLE (consumed); AssertionError if it never
        comes (gdb blocked, e.g. in the pager)."""
        end = time.monotonic() + timeout
        while needle not in self.seen:
            left = end - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not self._ready(0):
                raise AssertionError(f"gdb did not print {needle!r}; last output:\n"
                                     f"{self.seen[-3000:]!r}")
            if self._ready(min(left, 0.5)):
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    data = b""
                if not data and self.proc.poll() is not None:
                    continue
                self.seen += data
        at = self.seen.index(needle) + len(needle)
        got, self.seen = self.seen[:at], self.seen[at:]
        return got

    def _ready(self, timeout):
        return bool(select.select([self.fd], [], [], timeout)[0])

    def send(self, text: str):
        os.write(self.fd, text.encode())

    def command(self, line: str, timeout=60.0) -> str:
        """Run LINE at the prompt; its output (after the echoed line) up to the next prompt."""
        self.send(line + "\n")
        out = READLINE_ESCAPES.sub(b"", self.expect(PROMPT, timeout)[:-len(PROMPT)])
        return text(out).split("\n", 1)[-1]

    def close(self):
        procs.kill_and_reap(self.proc)
        os.close(self.fd)


def text(raw: bytes) -> str:
    """Terminal output as text: without readline's escapes and carriage returns."""
    return READLINE_ESCAPES.sub(b"", raw).decode(errors="replace").replace("\r", "")


@pytest.fixture
def terminal(build, core):
    """terminal(rows=, cols=, env=, settings=) -> a Terminal at gdb's first prompt, the
    extension loaded and CORE open."""
    opened = []

    def start(rows=24, cols=80, env=None, settings=()):
        argv = ["gdb", "-nx", "-q", "-iex", "set debuginfod enabled off"]
        for setting in settings:
            argv += ["-iex", setting]
        argv += ["-ex", f"source {support.EXTENSION_PATH}", build.storage_daemon, core]
        term = Terminal(argv, rows, cols, env)
        opened.append(term)
        term.expect(PROMPT)
        return term

    yield start
    for term in opened:
        term.close()


def assert_chardev_list(text):
    for label in LABELS:
        assert re.search(rf"^{label}\s|^LABEL\s+{label}$", text, re.M), text


def assert_records(text, width):
    """`qemu chardev list` as one block per chardev, every line within WIDTH columns."""
    for label in LABELS:
        assert re.search(rf"^LABEL\s+{label}$", text, re.M), text
    assert "CHR_WRITE_LOCK  free" in SGR.sub("", text)
    assert max(len(SGR.sub("", line)) for line in text.splitlines()) <= width, text


# --- gdb -batch, -ex, -x ---------------------------------------------------------------------

def run_batch(argv, timeout=120):
    env = dict(os.environ)
    env.pop("DEBUGINFOD_URLS", None)
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def test_batch_with_ex(build, core):
    done = run_batch(["gdb", "-nx", "-batch", "-ex", f"source {support.EXTENSION_PATH}",
                      "-ex", "qemu chardev list", "-ex", "qemu mutex mon0",
                      build.storage_daemon, core])
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr
    assert_chardev_list(done.stdout)
    assert "\x1b[" not in done.stdout                   # not a terminal: no colour
    assert re.search(r"^  state\s+free$", done.stdout, re.M), done.stdout


def test_x_file(build, core, tmp_path):
    script = tmp_path / "commands.gdb"
    script.write_text(f"source {support.EXTENSION_PATH}\nqemu chardev list\n"
                      "qemu chardev show mon0\n")
    done = run_batch(["gdb", "-nx", "-batch", "-x", script, build.storage_daemon, core])
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr
    assert_chardev_list(done.stdout)
    assert "Chardev 'mon0' (chardev-socket) at 0x" in done.stdout


def test_batch_with_pagination_on_and_a_narrow_screen_never_waits(build, core):
    result = support.run_gdb(build.storage_daemon, core=core, timeout=120,
                             setup=["set pagination on", "set height 20", "set width 60"],
                             commands=["qemu chardev list", "qemu diagnose --no-census"])
    listed, diagnosis = result.check().outputs
    assert "--Type <RET>" not in result.stdout
    assert_records(listed, 60)
    assert "Findings" in diagnosis


# --- an interactive terminal -----------------------------------------------------------------

def test_pager_in_a_narrow_terminal(terminal):
    """`set pagination on`, 60 x 20: our output goes through gdb's pager like gdb's own: it
    stops at a screenful, `c` prints the rest and returns to the prompt, `q` ends the command
    in one line; the table is reshaped to fit 60 columns."""
    term = terminal(rows=20, cols=60, env={"NO_COLOR": "1"}, settings=(
        "set pagination on", "set width 60", "set height 20"))
    term.send("qemu chardev list\n")
    first = term.expect(PAGER)
    assert first.count(b"\n") <= 20
    term.send("c\n")
    rest = term.expect(PROMPT)
    shown = text(first + rest).split("\n", 1)[1].replace(PAGER.decode(), "")
    assert_records(shown[:shown.rindex(PROMPT.decode())], 60)

    term.send("qemu chardev list\n")
    term.expect(PAGER)
    term.send("q\n")
    quitted = text(term.expect(PROMPT))
    assert "qemu chardev list: interrupted" in quitted
    assert "internal error" not in quitted and "Traceback" not in quitted

    term.command("set height 0")                 # no pager: straight back to the prompt
    assert_records(term.command("qemu chardev list"), 60)


def test_tui_mode(terminal):
    term = terminal(rows=40, cols=160, env={"NO_COLOR": "1"})
    term.send("tui enable\n")
    term.expect(PROMPT)
    term.send("qemu chardev list\n")
    shown = term.expect(b"mon0", timeout=60) + term.expect(PROMPT)
    for word in (b"LABEL", b"CHR_WRITE_LOCK", b"chardev-socket", b"ring0", b"null0"):
        assert word in shown, shown
    assert b"internal error" not in shown and b"Python Exception" not in shown
    term.send("info win\n")
    windows = term.expect(PROMPT)
    assert b"The TUI is not active" not in windows and b"cmd" in windows, windows


@pytest.mark.parametrize("how", ["default", "NO_COLOR", "style-off"])
def test_colour_only_on_a_terminal_without_NO_COLOR_or_style_off(terminal, how):
    term = terminal(rows=40, cols=200, env={"NO_COLOR": "1"} if how == "NO_COLOR" else None,
                    settings=("set style enabled off",) if how == "style-off" else ())
    out = term.command("qemu chardev list")
    assert_chardev_list(SGR.sub("", out))
    if how == "default":
        assert "\x1b[32mfree\x1b[0m" in out and "\x1b[2mNULL\x1b[0m" in out, out
    else:
        assert "\x1b[" not in out, out


def test_tables_follow_the_terminal_width(terminal):
    wide = terminal(rows=40, cols=200, env={"NO_COLOR": "1"})
    table = wide.command("qemu chardev list")
    assert re.search(r"^LABEL +TYPE +ADDRESS +STATE +IOC +SIOC +LISTENER +BE_OPEN +"
                     r"CHR_WRITE_LOCK *$", table, re.M), table
    # 100 columns: the optional columns go, the rest stays a table, and a line says so
    narrow = terminal(rows=100, cols=100, env={"NO_COLOR": "1"})
    compact = narrow.command("qemu chardev list")
    assert re.search(r"^LABEL +TYPE +STATE +IOC +", compact, re.M), compact
    assert "ADDRESS" not in compact.split("\n(")[0], compact
    assert re.search(r"^\((ADDRESS, LISTENER)[A-Z_, ]* not shown at width 100; ", compact,
                     re.M), compact
    assert max(len(line) for line in compact.splitlines()) <= 100, compact
    for label in LABELS:
        assert re.search(rf"^{label}\s", compact, re.M), compact
    # too narrow even without them: one block per chardev, every column kept
    narrow.command("set width 50")
    assert_records(narrow.command("qemu chardev list"), 50)
    narrow.command("set width unlimited")
    assert "LABEL    TYPE" in narrow.command("qemu chardev list")
