"""The live side of the catalogue: `qemu watch-disconnect` sees a chardev callback about to run
on a finalized chardev before the process crashes on it (websock-handshake-uaf, Debian's 7.2 as
shipped), and says nothing on a QEMU that has the fix.

Ground truth: QEMU's own trace event for the handshake start, QMP's chardev list, the process's
fate (it dies of SIGABRT a moment after the event, or lives on), and the recipe's catalogue.
"""
import socket
import time
from pathlib import Path

import pytest

import support
from support import watch as sw
from support.upstream_bugs import BUGS

HANDSHAKE_TRACE = "qio_channel_websock_handshake_start"
VERSIONS = support.versions_under_test()


def _websocket_then_remove(build, workdir, attach):
    """A websocket server chardev with a client mid-handshake; `attach(daemon)` starts the
    watch; then chardev-remove and the client hangs up.  Returns (daemon alive, run)."""
    workdir = Path(workdir)
    mon = workdir / "mon0.sock"
    ws_sock = workdir / "ws0.sock"
    args = [*support.monitor_args(mon), *support.trace_args(HANDSHAKE_TRACE)]
    (workdir / "qsd").mkdir(parents=True, exist_ok=True)
    with support.QemuDaemon(build.storage_daemon, args, workdir / "qsd") as daemon:
        support.wait_until(mon.exists, 10, what="mon0.sock")
        with support.QMPClient(mon) as qmp:
            qmp.negotiate()
            qmp.execute("chardev-add", {"id": "ws0", "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": str(ws_sock)}},
                "server": True, "wait": False, "websocket": True}}})
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(ws_sock))
            daemon.wait_for_stderr(support.trace_event_re(HANDSHAKE_TRACE), timeout=10)
            with attach(daemon) as run:
                run.wait_watching()
                qmp.execute("chardev-remove", {"id": "ws0"})
                client.close()
                support.wait_until(lambda: not daemon.alive() or run.proc.poll() is not None,
                                   5, what="the handshake to complete") \
                    if BUGS["websock-handshake-uaf"].shipped_with_bug(build.version) else \
                    time.sleep(2)
                alive = daemon.alive()
                if run.proc.poll() is None:
                    run.interrupt()
                else:
                    run.wait()
    return alive, run


@pytest.mark.parametrize("version", [v for v in VERSIONS
                                     if BUGS["websock-handshake-uaf"].shipped_with_bug(v)])
def test_callback_on_the_removed_chardev_is_caught_before_the_crash(version, workdir):
    build = support.require_build(version, "fixed")
    alive, run = _websocket_then_remove(
        build, workdir, lambda d: sw.CatcherRun(["--pid", d.pid], workdir=Path(workdir) / "c"))
    events = run.events()
    kinds = [e["id"] for e in events]
    assert kinds and kinds[0] == "callback-on-finalized-chardev", run.describe()
    first = events[0]
    assert first["severity"] == "error"
    assert "tcp_chr_websock_handshake() is about to run on a finalized chardev" in first["summary"]
    assert first["chardev"]["label"] == "ws0"
    assert any(f["function"] == "tcp_chr_websock_handshake" for f in first["stack"])
    assert not alive and "crash" in kinds[1:], "the crash it announced came after it"
    assert run.returncode == 1


@pytest.mark.parametrize("version", [v for v in VERSIONS if v in ("10.0", "10.2")])
def test_fixed_qemu_gives_no_lifecycle_report(version, workdir):
    build = support.require_build(version, "fixed")
    alive, run = _websocket_then_remove(
        build, workdir, lambda d: sw.CatcherRun(["--pid", d.pid], workdir=Path(workdir) / "c"))
    assert alive and run.events() == [], run.describe()
    assert run.returncode == 0
