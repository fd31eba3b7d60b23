"""Real crash cores of catalogued upstream QEMU chardev bugs, for tests of the ground truth and
of the extension's findings (fixtures/qemu/upstream-bugs.md is the catalogue).

    bug = BUGS["websock-handshake-uaf"]
    variant = bug.variant("7.2")                       # "fixed": Debian 7.2 has the bug as shipped
    summary = make_core("websock-handshake-uaf", build_dir, workdir / "ws.core")
    summary["core"], summary["binary"], summary["signal"], summary["frames"], summary["facts"]

make_core() runs fixtures/qemu/make-upstream-bug-core --json and returns its summary (it has
already checked the core with plain gdb: the bug's signal and frames). survives() runs the same
trigger against a build that has the fix and checks that nothing crashes.
"""

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .paths import REPO_ROOT

RECIPE = REPO_ROOT / "fixtures" / "qemu" / "make-upstream-bug-core"
RECIPE_TIMEOUT = 60.0   # the script's own --timeout; it kills what it started when it expires
NO_CRASH = 3            # the script's exit status when the trigger did not crash the build
ATTEMPTS = 2            # make_core: runs of a recipe that failed a step (exit 1)


class UpstreamBugCoreError(RuntimeError):
    """make-upstream-bug-core failed; the message has its exit status and one-line reason."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


@dataclass(frozen=True)
class UpstreamBug:
    """One catalogued bug: its upstream fix and which build of each QEMU version has it.

    variants maps a QEMU version ("7.2", "10.2", ...) to the build variant that has the bug
    (the suite reproduces a bug fixed long ago on 7.2 only, and a recent one on 10.2 too, so a
    cold run builds five revert trees, not fifteen):
    "fixed" where Debian's source as shipped still has it, "revert-NAME" where the recipe needs
    the upstream fix undone. survivor_variant is the build that must not crash (None: every
    Debian build has the bug).
    """

    name: str
    fix: str
    fixed_in: str
    signal: int
    frames: tuple
    variants: dict = field(default_factory=dict)
    program: str = "qemu-storage-daemon"
    crash_thread: str = "main"      # "main" (LWP = pid) or "io" (the monitor I/O thread)

    def variant(self, version: str) -> Optional[str]:
        """The build variant of VERSION that has the bug (None: not reproducible there)."""
        return self.variants.get(version)

    def shipped_with_bug(self, version: str) -> bool:
        """True if Debian's VERSION as shipped has the bug."""
        return self.variants.get(version) == "fixed"


SIGABRT, SIGSEGV = 6, 11

BUGS = {bug.name: bug for bug in [
    UpstreamBug(
        "websock-handshake-uaf", "chardev: close QIOChannel before unref'ing", "9.0", SIGABRT,
        ("qemu_mutex_lock_impl", "tcp_chr_disconnect", "tcp_chr_websock_handshake",
         "qio_task_complete", "qio_channel_websock_handshake_io"),
        {"5.2": "fixed", "7.2": "fixed", "10.2": "revert-close-ioc"}),
    UpstreamBug(
        "qmp-listener-race",
        "monitor/qmp: cleanup SocketChardev listener sources early to avoid fd handling race",
        "11.0 (Debian backports: 10.0.13, 10.2.2)", SIGABRT,
        ("tcp_chr_change_state", "tcp_chr_accept", "qio_net_listener_channel_func"),
        {"5.2": "fixed", "7.2": "fixed", "10.2": "revert-qmp-listener"}),
    UpstreamBug(
        "iowatch-ioc-uaf", "chardev: Fix QIOChannel refcount",
        "11.0 (unverified; not in any Debian source)", SIGSEGV,
        ("object_class_dynamic_cast_assert", "qio_channel_create_watch",
         "io_watch_poll_prepare", "iothread_run"),
        {"5.2": "fixed", "7.2": "fixed", "10.0": "fixed", "10.2": "fixed"},
        crash_thread="io"),
    UpstreamBug(
        "connect-task-ref", "char: fix use-after-free with dup chardev & reconnect", "5.1",
        SIGABRT,
        ("yank_unregister_function", "tcp_chr_free_connection", "char_socket_finalize",
         "object_unref", "qmp_chardev_remove"),
        {"7.2": "revert-connect-task-ref"}),
    UpstreamBug(
        "connect-error-double-free", "chardev/tcp: Fix error message double free error", "5.1",
        SIGSEGV,
        ("__GI___libc_free", "error_free", "qemu_chr_socket_connected", "qio_task_complete",
         "qio_task_thread_result"),
        {"7.2": "revert-connect-error-double-free"}),
    UpstreamBug(
        "reconnect-timer",
        "char-socket: initialize reconnect timer only when the timer doesn't start", "5.1",
        SIGABRT, ("qemu_chr_socket_restart_timer", "tcp_chr_disconnect_locked"),
        {"7.2": "revert-reconnect-timer"},
        program="test-char"),
]}


def run_recipe(bug: str, build_dir, out=None, extra: Sequence[str] = (),
               timeout: float = RECIPE_TIMEOUT) -> subprocess.CompletedProcess:
    """Run make-upstream-bug-core for BUG on BUILD_DIR (writing OUT), as is."""
    argv = [str(RECIPE), "--bug", bug, "--build", str(build_dir), "--timeout", f"{timeout:g}"]
    if out is not None:
        argv += ["--out", str(out)]
    # the script bounds itself; this outer limit only catches a script that does not
    return subprocess.run(argv + list(extra), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout + 90)


def make_core(bug: str, build_dir, out_path, *, core_by: str = "auto",
              timeout: float = RECIPE_TIMEOUT) -> dict:
    """Make the real crash core of BUG from BUILD_DIR (a build directory or a QemuBuild) at
    OUT_PATH; return the recipe's summary: "core", "binary", "signal", "crash_lwp", "frames"
    (the crashing thread's functions, innermost first), "facts" (object addresses and states
    read from the core with plain gdb), "outcome", "core_by", "version" (daemon recipes)...
    Raises UpstreamBugCoreError when no core was made (returncode NO_CRASH: no crash).
    """
    build_dir = getattr(build_dir, "build_dir", build_dir)
    for attempt in range(ATTEMPTS):
        done = run_recipe(bug, build_dir, out_path, ["--json", "--core-by", core_by], timeout)
        # A recipe step that timed out (exit 1) is tried once more: the gdb-scheduled recipes
        # wait for QEMU's threads with bounded timeouts that a loaded machine can overrun.
        if done.returncode != 1:
            break
    if done.returncode != 0:
        raise UpstreamBugCoreError(f"make-upstream-bug-core --bug {bug} on {build_dir} exited "
                                   f"{done.returncode} ({attempt + 1} attempts): "
                                   f"{done.stderr.strip()}", done.returncode)
    summary = json.loads(done.stdout)
    summary["core"] = str(Path(summary["core"]))
    return summary


def survives(bug: str, build_dir, *, timeout: float = RECIPE_TIMEOUT) -> dict:
    """Run BUG's trigger against BUILD_DIR, which should have the fix: the summary, whose
    "outcome" is "survived". Raises UpstreamBugCoreError if the program crashed or failed."""
    build_dir = getattr(build_dir, "build_dir", build_dir)
    done = run_recipe(bug, build_dir, None, ["--json", "--expect-no-crash"], timeout)
    if done.returncode != 0:
        raise UpstreamBugCoreError(f"make-upstream-bug-core --bug {bug} --expect-no-crash on "
                                   f"{build_dir} exited {done.returncode}: "
                                   f"{done.stderr.strip()}", done.returncode)
    return json.loads(done.stdout)
