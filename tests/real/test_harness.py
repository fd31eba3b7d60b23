"""Tests of the test harness itself, against real QEMU builds, with plain gdb only.

They check facts about real qemu-storage-daemon processes and cores through raw gdb
expressions, so they also pin down what the extension's tests may rely on.
"""

import re
import time
from pathlib import Path

import pytest

import support
from support import procs


def _address(gdb_pointer: str) -> str:
    """The hex address in gdb output such as '(Chardev *) 0x55d0c0a8e5e0'."""
    return re.search(r"0x[0-9a-f]+", gdb_pointer).group(0)


# --- gdb runner (no QEMU needed) ------------------------------------------------------------

def test_run_gdb_splits_outputs_and_errors():
    result = support.run_gdb(commands=["output 1+2", "no-such-command", 'output "[1]"',
                                       "echo {\"a\": 2}\\n"], extension=False, timeout=30)
    assert result.outputs == ["3", "", '"[1]"', '{"a": 2}\n']
    assert result.errors[0] == "" and result.errors[2] == ""
    assert 'Undefined command: "no-such-command"' in result.errors[1]
    assert [s.failed for s in result.sections.values()] == [False, True, False, False]
    assert result.json(3) == {"a": 2}
    with pytest.raises(support.GdbCommandError, match="no-such-command"):
        result.check()
    result.check(0, 2, 3)


def test_run_gdb_timeout_kills_gdb():
    started = time.monotonic()
    with pytest.raises(support.GdbTimeout, match="timed out after 2 s"):
        support.run_gdb(commands=["output 1", "shell sleep 60"], extension=False, timeout=2)
    assert time.monotonic() - started < 10


def test_raw_gdb_values_raises_on_bad_expression():
    assert support.raw_gdb_values(exprs=["6*7", "sizeof(int)"]) == ["42", "4"]
    with pytest.raises(support.GdbCommandError, match="no_such_symbol"):
        support.raw_gdb_values(exprs=["no_such_symbol"])


# --- builds and the daemon ------------------------------------------------------------------

def test_build_binaries_have_debug_info(qemu):
    assert qemu.test_char.is_file()
    assert ".".join(map(str, qemu.version_tuple)).startswith(qemu.version + ".")
    size, state = support.raw_gdb_values(
        qemu.storage_daemon, exprs=["sizeof(Chardev)", "(int)TCP_CHARDEV_STATE_CONNECTED"])
    assert int(size) > 100 and state == "2"


def test_daemon_start_failure_is_reported(qemu, workdir):
    daemon = support.QemuDaemon(qemu.storage_daemon, ["--chardev", "bogus,id=x"], workdir)
    with pytest.raises(support.DaemonStartError, match="bogus"):
        daemon.start()
    assert not daemon.alive()


def test_monitor_scenario(qemu, workdir):
    with support.monitor_scenario(qemu.storage_daemon, workdir) as sc:
        pid = sc.daemon.pid
        chardevs = {c["label"]: c for c in sc.client.execute("query-chardev")}
        assert chardevs["mon0"]["frontend-open"] is True
        label, state, owner = support.raw_gdb_values(qemu.storage_daemon, pid=pid, exprs=[
            "mon_list.tqh_first->chr.chr->label",
            "((SocketChardev*)mon_list.tqh_first->chr.chr)->state",
            "mon_list.tqh_first->chr.chr->chr_write_lock.lock.__data.__owner"])
        assert label.endswith('"mon0"')
        assert state == "TCP_CHARDEV_STATE_CONNECTED"
        assert owner == "0"
        # gdb detached: the daemon still answers on the same connection
        assert sc.client.execute("query-version")["qemu"]["major"] == qemu.version_tuple[0]
    assert not procs.process_exists(pid)


def test_reconnect_scenario(qemu, workdir):
    with support.reconnect_scenario(qemu.storage_daemon, workdir, min_attaches=2) as sc:
        lines = sc.daemon.wait_for_stderr(
            support.trace_event_re("qio_task_thread_source_attach"), count=2)
        assert all(re.search(r"task=0x[0-9a-f]+ source=0x[0-9a-f]+", line) for line in lines)
        cmdline = Path(f"/proc/{sc.daemon.pid}/cmdline").read_bytes()
        expected = b"reconnect-ms=1000" if qemu.version_tuple >= (9, 2) else b"reconnect=1"
        assert expected in cmdline
        listen, state = support.raw_gdb_values(qemu.storage_daemon, pid=sc.daemon.pid, exprs=[
            '((SocketChardev*)qemu_chr_find("cli0"))->is_listen',
            '((SocketChardev*)qemu_chr_find("cli0"))->state'])
        assert listen == "false"
        assert state in ("TCP_CHARDEV_STATE_DISCONNECTED", "TCP_CHARDEV_STATE_CONNECTING")


def test_tcp_server_scenario(qemu, workdir):
    with support.tcp_server_scenario(qemu.storage_daemon, workdir) as sc:
        assert sc.tcp_port > 0
        assert support.listening_tcp_ports(sc.daemon.pid) == [sc.tcp_port]
        listen, state = support.raw_gdb_values(qemu.storage_daemon, pid=sc.daemon.pid, exprs=[
            '((SocketChardev*)qemu_chr_find("tcp0"))->is_listen',
            '((SocketChardev*)qemu_chr_find("tcp0"))->state'])
        assert (listen, state) == ("true", "TCP_CHARDEV_STATE_DISCONNECTED")


def test_plain_chardevs_scenario(qemu, workdir):
    with support.plain_chardevs_scenario(qemu.storage_daemon, workdir) as sc:
        names = support.raw_gdb_values(qemu.storage_daemon, pid=sc.daemon.pid, exprs=[
            f'qemu_chr_find("{cid}")->parent_obj.class->type->name' for cid in sc.chardev_ids])
        assert [n.split()[-1] for n in names] == ['"chardev-ringbuf"', '"chardev-null"']


# --- (e) stopped in tcp_chr_write, and its core ---------------------------------------------

def test_stopped_in_write_holds_chr_write_lock(qemu, workdir):
    core = workdir / "in-write.core"
    lock = "chr->chr_write_lock"
    with support.monitor_scenario(qemu.storage_daemon, workdir) as sc:
        pid = sc.daemon.pid
        result = support.run_gdb_stopped_in_write(
            sc.daemon, sc.client, ["output chr", "output chr->label",
                                   f"output {lock}.lock.__data.__owner",
                                   f"output {lock}.lock.__data.__lock", f"output {lock}.file",
                                   "output $_thread"],
            core_path=core, extension=False)
        assert not sc.daemon.alive()
    result.check()
    chr_ptr, label, owner, lock_word, file, thread = result.outputs
    assert label.endswith('"mon0"')
    assert (owner, lock_word, thread) == (str(pid), "1", "1")
    assert file.endswith('"../chardev/char.c"')  # --enable-debug-mutex records the lock site
    chardev = f"((Chardev*){_address(chr_ptr)})"
    in_core = support.raw_gdb_values(qemu.storage_daemon, core=core, exprs=[
        f"{chardev}->label", f"{chardev}->chr_write_lock.lock.__data.__owner",
        "$_siginfo.si_signo", "$_thread"])
    assert in_core == [label, str(pid), "5", "1"]  # SIGTRAP: gcore'd at a breakpoint


# --- (f) no debug info --------------------------------------------------------------------

def test_stripped_core_has_no_debug_info(qemu, workdir):
    stripped, core = support.stripped_core(qemu.storage_daemon, workdir)
    result = support.run_gdb(stripped, core=core, extension=False, commands=[
        "output sizeof(Chardev)", "output (long)&qemu_chr_find != 0"])
    assert result.sections["0"].failed and "Chardev" in result.errors[0]
    assert result.check(1).outputs[1] == "1"
