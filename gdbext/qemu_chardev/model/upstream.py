"""The catalogue of upstream QEMU chardev bugs this tool recognises (facts, no gdb imports).

Each entry: the upstream fix's title (and commit, where verified), the first upstream release
with it, and which QEMU that Debian ships still has the bug, as read in Debian's source trees.
``analysis.upstream`` holds each bug's signature; fixtures/qemu/upstream-bugs.md says how each
was reproduced and what its core shows.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional


@dataclass(frozen=True)
class UpstreamBug:
    id: str
    short: str                      # one line: what goes wrong
    symptom: str                    # what the crash looks like and why
    fix_title: str
    fixed_in: str                   # first upstream release with the fix
    commit: Optional[str] = None    # only where verified
    fixed_in_verified: bool = True  # False: the release is the mailing list's word
    # Debian QEMU source -> True when that source still has the bug (read in its tree).
    debian: Dict[str, bool] = field(default_factory=dict)

    @property
    def fixed_in_text(self):
        return self.fixed_in if self.fixed_in_verified else \
            f"{self.fixed_in} (per qemu-devel; release not verified)"

    def debian_text(self):
        if not self.debian:
            return ""
        still = [v for v, has in self.debian.items() if has]
        fixed = [v for v, has in self.debian.items() if not has]
        parts = []
        if still:
            parts.append("still in Debian's QEMU " + ", ".join(still))
        if fixed:
            parts.append("fixed in Debian's QEMU " + ", ".join(fixed))
        return "Upstream bug " + "; ".join(parts) + "."


DEBIAN_SOURCES = ("5.2 (bullseye)", "7.2 (bookworm)", "10.0 (trixie)", "10.2 (sid)")


def _debian(*has):
    return dict(zip(DEBIAN_SOURCES, has))


CATALOGUE = (
    UpstreamBug(
        "websock-handshake-uaf",
        "a websocket chardev's handshake task completes on the freed Chardev",
        "A websocket server chardev was removed while its client's websocket handshake was "
        "pending; when the client hung up, the handshake QIOTask completed and "
        "tcp_chr_websock_handshake() ran with the finalized Chardev as its user_data, so "
        "tcp_chr_disconnect() locked the destroyed chr_write_lock.",
        "chardev: close QIOChannel before unref'ing", "9.0",
        debian=_debian(True, True, False, False)),
    UpstreamBug(
        "iowatch-ioc-uaf",
        "the chardev's IOWatchPoll uses a QIOChannel that was already freed",
        "io_watch_poll_prepare() of an IOWatchPoll the chardev no longer points at (its "
        "chr->gsource is another one) created a watch on IOWatchPoll.ioc, a QIOChannel whose "
        "last reference was already dropped: the IOWatchPoll never held a reference of its "
        "own, and the chardev moved on to a new channel.",
        "chardev: Fix QIOChannel refcount", "11.0", fixed_in_verified=False,
        debian=_debian(True, True, True, True)),
    UpstreamBug(
        "qmp-listener-race",
        "a QMP monitor socket accepts clients in two threads at once",
        "A client connected before monitor_qmp_setup_handlers_bh() moved the monitor's "
        "listener to the monitor I/O thread: the I/O thread accepted a client and the main "
        "thread, still polling the old listener source, accepted another on the same "
        "SocketChardev; tcp_chr_change_state() found it no longer disconnected.",
        "monitor/qmp: cleanup SocketChardev listener sources early to avoid fd handling race",
        "11.0", commit="e714f1a3d4d1", debian=_debian(True, True, False, False)),
    UpstreamBug(
        "connect-task-ref",
        "a removed client chardev is finalized while its connect task is pending",
        "The connect QIOTask held no reference on the Chardev, so chardev-remove finalized it "
        "while the task was still connecting; char_socket_finalize() -> "
        "tcp_chr_free_connection() then unregistered a yank function that was never "
        "registered for a NULL sioc.",
        "char: fix use-after-free with dup chardev & reconnect", "5.1",
        debian=_debian(False, False, False, False)),
    UpstreamBug(
        "connect-error-double-free",
        "a failed connect of a reconnecting client frees its Error twice",
        "qemu_chr_socket_connected() reported the first connect error with "
        "error_reportf_err(), which frees it, and then freed it again.",
        "chardev/tcp: Fix error message double free error", "5.1",
        debian=_debian(False, False, False, False)),
    UpstreamBug(
        "reconnect-timer",
        "a second disconnect restarts a reconnect timer that already runs",
        "tcp_chr_disconnect_locked() ran twice for a reconnecting client; the second "
        "qemu_chr_socket_restart_timer() found s->reconnect_timer already set.",
        "char-socket: initialize reconnect timer only when the timer doesn't start", "5.1",
        debian=_debian(False, False, False, False)),
)
