"""The foundation commands on real qemu-storage-daemon processes and cores.

Every expected value comes from an independent source: the command line we started QEMU with,
plain gdb `output` of the same expression (no extension loaded), QEMU's own trace events, or
the kernel (pids).  Each test runs against a live process and against a gcore of it.
"""
import pathlib
import re
import shutil
import tempfile
import time

import pytest

import support

MODES = ["live", "core"]


class Target:
    """A daemon with mon0 (client connected), cli0 (reconnecting), tcp0, ring0, null0."""

    def __init__(self, sc, core):
        self.sc = sc
        self.binary = sc.daemon.binary
        self.core = core

    def where(self, mode):
        return {"pid": self.sc.daemon.pid} if mode == "live" else {"core": self.core}

    def gdb(self, mode, *commands, **kw):
        return support.run_gdb(self.binary, commands=list(commands), **self.where(mode), **kw)

    def raw(self, mode, *exprs):
        return support.raw_gdb_values(self.binary, exprs=list(exprs), **self.where(mode))


@pytest.fixture(scope="module")
def target(qemu):
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="qcg-f-", dir="/tmp"))
    try:
        with support.all_chardevs_scenario(qemu.storage_daemon, workdir) as sc:
            # cli0 fails its first connect at start-up and arms its reconnect timer.
            time.sleep(1.5)
            core = support.gcore(sc.daemon.pid, workdir / "all.core", binary=qemu.storage_daemon)
            yield Target(sc, core)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _hex(text):
    """The pointer in raw gdb output, in the extension's JSON convention (NULL is None)."""
    m = re.search(r"0x[0-9a-f]+", text)
    return m.group(0) if m and int(m.group(0), 16) else None


def _by_label(listing):
    return {c["label"]: c for c in listing["chardevs"]}


@pytest.mark.parametrize("mode", MODES)
def test_list_finds_every_chardev_with_raw_gdb_agreeing(target, mode):
    result = target.gdb(mode, "qemu chardev list --json")
    listing = result.json(0)
    assert listing["complete"], listing["problems"]
    chardevs = _by_label(listing)
    assert set(chardevs) == {"mon0", "cli0", "tcp0", "ring0", "null0"}
    for label, ch in chardevs.items():
        addr = ch["address"]
        raw_label, raw_type, raw_lock = target.raw(
            mode, f"((Chardev*){addr})->label", f"((Object*){addr})->class->type->name",
            f"((Chardev*){addr})->chr_write_lock.lock.__data.__lock")
        assert raw_label.endswith(f'"{label}"')
        assert raw_type.endswith(f'"{ch["type"]}"')
        assert ch["write_lock"]["locked"] is (raw_lock != "0")
        assert ch["in_tree"]
    assert chardevs["ring0"]["type"] == "chardev-ringbuf" and chardevs["ring0"]["ioc"] is None
    assert chardevs["null0"]["type"] == "chardev-null"
    for label in ("mon0", "cli0", "tcp0"):
        ch = chardevs[label]
        assert ch["type"] == "chardev-socket"
        state, ioc, sioc, listener = target.raw(
            mode, f"((SocketChardev*){ch['address']})->state",
            f"((SocketChardev*){ch['address']})->ioc", f"((SocketChardev*){ch['address']})->sioc",
            f"((SocketChardev*){ch['address']})->listener")
        assert ch["state"] == state.replace("TCP_CHARDEV_STATE_", "").lower()
        assert ch["ioc"] == _hex(ioc) and ch["sioc"] == _hex(sioc)
        assert ch["listener"] == _hex(listener)
    # The command line says what each socket must be doing.
    assert chardevs["mon0"]["state"] == "connected" and chardevs["mon0"]["ioc"]
    assert chardevs["cli0"]["state"] in ("disconnected", "connecting")
    assert chardevs["cli0"]["ioc"] is None and chardevs["cli0"]["listener"] is None
    assert chardevs["tcp0"]["state"] == "disconnected" and chardevs["tcp0"]["listener"]


@pytest.mark.parametrize("mode", MODES)
def test_list_text_table(target, mode):
    text = target.gdb(mode, "qemu chardev list").check().outputs[0]
    header, rule, *rows = text.splitlines()
    assert header.split()[:4] == ["LABEL", "TYPE", "ADDRESS", "STATE"]
    mon0 = next(r for r in rows if r.startswith("mon0 "))
    assert "chardev-socket" in mon0 and "connected" in mon0 and mon0.rstrip().endswith("free")
    ring0 = next(r for r in rows if r.startswith("ring0 "))
    assert "chardev-ringbuf" in ring0
    assert "\x1b[" not in text        # NO_COLOR and not a terminal


@pytest.mark.parametrize("mode", MODES)
def test_show_socket_client_reconnect_timer(target, mode):
    addr = _by_label(target.gdb(mode, "qemu chardev list --json").json(0))["cli0"]["address"]
    # The timer is re-created every second on a live process: read it and the raw fields in
    # one gdb session, while the process stays stopped.
    timer_expr = f"((SocketChardev*){addr})->reconnect_timer"
    result = target.gdb(mode, "qemu chardev show --json cli0", "ptype SocketChardev",
                        *(f"output {timer_expr}->{f}"
                          for f in ("ref_count", "flags", "source_id", "priority")))
    shown = result.json(0)["chardev"]
    fields = shown["fields"]
    for name in ("reconnect_time", "reconnect_time_ms", "registered_yank"):
        present = re.search(rf"\b{name};", result.outputs[1]) is not None
        assert (fields[name] != "n/a") is present, name
    timer = next(g for g in shown["gsources"] if g["role"] == "reconnect_timer")
    ref, flags, src_id, prio = result.check().outputs[2:6]
    assert (timer["ref_count"], timer["flags"], timer["source_id"], timer["priority"]) == \
        (int(ref), int(flags), int(src_id), int(prio))
    assert timer["ref_count"] == 2 and timer["state"] == "attached"
    assert timer["funcs_symbol"] == "g_timeout_funcs"
    assert timer["callback_symbol"] == "socket_reconnect_timeout"
    assert shown["write_lock"]["locked"] is False


@pytest.mark.parametrize("mode", MODES)
def test_show_monitor_channels_and_sources(target, mode):
    shown = target.gdb(mode, "qemu chardev show --json mon0").json(0)["chardev"]
    addr = shown["address"]
    ioc = next(o for o in shown["objects"] if o["role"] == "ioc")
    raw_ref, raw_fd, raw_hup_ref = target.raw(
        mode, f"((Object*)((SocketChardev*){addr})->ioc)->ref",
        f"((QIOChannelSocket*)((SocketChardev*){addr})->sioc)->fd",
        f"((SocketChardev*){addr})->hup_source->ref_count")
    assert ioc["type"] == "qio-channel-socket"
    assert ioc["ref"] == int(raw_ref) and ioc["fd"] == int(raw_fd)
    roles = {g["role"]: g for g in shown["gsources"]}
    assert roles["hup_source"]["ref_count"] == int(raw_hup_ref)
    assert roles["hup_source"]["funcs_symbol"] == "qio_channel_fd_source_funcs"
    assert roles["hup_source"]["callback_symbol"] == "tcp_chr_hup"
    assert roles["gsource"]["funcs_symbol"] == "io_watch_poll_funcs"
    assert all(g["state"] == "attached" for g in roles.values())
    listener = next(o for o in shown["objects"] if o["role"] == "listener")
    assert listener["type"] == "qio-net-listener"


@pytest.mark.parametrize("mode", MODES)
def test_gsource_command_matches_raw_fields(target, mode):
    listing = _by_label(target.gdb(mode, "qemu chardev list --json").json(0))
    addr = listing["mon0"]["address"]
    expr = f"((SocketChardev*){addr})->hup_source"
    src = target.gdb(mode, f"qemu gsource --json {expr}").json(0)["gsource"]
    raw = target.raw(mode, f"{expr}->ref_count", f"{expr}->context", f"{expr}->source_id")
    assert src["ref_count"] == int(raw[0]) and src["context"] == _hex(raw[1])
    assert src["source_id"] == int(raw[2]) and src["flag_names"] == ["ACTIVE"]
    text = target.gdb(mode, f"qemu gsource {expr}").check().outputs[0]
    assert "attached" in text and "qio_channel_fd_source_funcs" in text


@pytest.mark.parametrize("mode", MODES)
def test_mutex_on_plain_qemu_mutex_and_pthread_mutex(target, mode):
    result = target.gdb(mode, "qemu mutex --json &monitor_lock",
                        "qemu mutex --json &monitor_lock.lock", "qemu mutex --json mon0")
    qm, pm, chr_lock = result.json(0)["mutex"], result.json(1)["mutex"], result.json(2)["mutex"]
    raw_lock, raw_init = target.raw(mode, "monitor_lock.lock.__data.__lock",
                                    "monitor_lock.initialized")
    assert qm["kind"] == "QemuMutex" and pm["kind"] == "pthread_mutex_t"
    assert qm["locked"] is (raw_lock != "0") and pm["locked"] is qm["locked"]
    assert qm["initialized"] is (raw_init == "true")
    assert chr_lock["kind"] == "QemuMutex" and chr_lock["locked"] is False


def test_pretty_printers_and_disable(target):
    listing = _by_label(target.gdb("core", "qemu chardev list --json").json(0))
    addr = listing["mon0"]["address"]
    result = target.gdb("core", f"print *(Chardev*){addr}",
                        f"print ((SocketChardev*){addr})->hup_source[0]",
                        f"print ((Chardev*){addr})->chr_write_lock",
                        "output object_get_root::root->properties->nnodes",
                        "disable pretty-printer global qemu-chardev-gdb;Chardev",
                        f"print *(Chardev*){addr}")
    result.check(0, 1, 2, 4, 5)
    assert "Chardev 'mon0' (chardev-socket) state=connected" in result.outputs[0]
    assert "chr_write_lock=free" in result.outputs[0]
    assert "label = " in result.outputs[0]          # the fields are still there
    # GHashTable* fields print through our reader instead of failing in GLib's own printer,
    # which needs GLib debug info ("There is no member named keys").
    assert "(GHashTable, 0 entries)" in result.outputs[0]
    assert "GSource attached ref_count=2 flags=ACTIVE" in result.outputs[1]
    assert "QemuMutex free" in result.outputs[2]
    assert "no member named" in result.errors[3]      # GLib has no debug info here
    assert "Chardev 'mon0'" not in result.outputs[5] and "label = " in result.outputs[5]


def test_label_completion(target):
    out = target.gdb("core", "complete qemu chardev show m", "complete qemu chardev show ")
    assert out.check().outputs[0].split() == ["qemu", "chardev", "show", "mon0"]
    assert {line.split()[-1] for line in out.outputs[1].splitlines()} >= {"mon0", "cli0", "tcp0"}


def test_help_texts(target):
    out = target.gdb("core", "help qemu chardev list", "help qemu mutex", "help qemu gsource",
                      "help qemu qiotask", "qemu chardev list --help").check()
    assert "chr_write_lock" in out.outputs[0] and "--json" in out.outputs[0]
    assert "debug-mutex" in out.outputs[1]
    assert "destroyed-referenced" in out.outputs[2]
    assert "usage: qemu chardev list" in out.outputs[4]


@pytest.mark.parametrize("command", [
    "qemu chardev show 0x1234", "qemu gsource 0xdeadbeef", "qemu mutex 0x10",
    "qemu chardev show no_such_label", "qemu qiotask 0x8", "qemu chardev list --bogus",
    "qemu gsource ((SocketChardev*)0)->hup_source",
])
def test_bad_input_is_one_clear_line(target, command):
    result = target.gdb("core", command)
    error = result.errors[0].strip()
    assert error and "\n" not in error, error
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "Python Exception" not in result.stderr


def test_binary_without_debug_info_gives_clear_error(qemu, workdir):
    stripped, core = support.stripped_core(qemu.storage_daemon, workdir)
    result = support.run_gdb(stripped, core=core, commands=["qemu chardev list",
                                                            "qemu chardev show mon0"])
    for error in result.errors:
        assert error.strip().startswith("no QEMU debug info"), error
    assert "Traceback" not in result.stderr


def test_no_target_gives_clear_error(qemu):
    result = support.run_gdb(qemu.storage_daemon, commands=["qemu chardev list"])
    assert "no live process or core file" in result.errors[0]


# --- the main thread stopped in tcp_chr_write, holding chr_write_lock ------------------------

@pytest.fixture(scope="module")
def stopped_in_write(qemu):
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="qcg-w-", dir="/tmp"))
    core = workdir / "in-write.core"
    try:
        with support.monitor_scenario(qemu.storage_daemon, workdir) as sc:
            pid = sc.daemon.pid
            live = support.run_gdb_stopped_in_write(
                sc.daemon, sc.client, ["qemu chardev list --json", "qemu mutex --json chr",
                                       "qemu mutex chr", "output chr->chr_write_lock.file",
                                       "info threads"], core_path=core)
        yield pid, live, core
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _check_lock_held_by_main(pid, listing, mutex):
    mon0 = _by_label(listing)["mon0"]
    lock = mon0["write_lock"]
    assert lock["locked"] is True
    assert lock["owner_lwp"] == pid                  # the main thread's LWP is the pid
    assert lock["owner_thread"] == 1
    assert lock["owner_function"] == "tcp_chr_write"
    assert mon0["state"] == "connected" and mon0["ioc"] is not None
    assert mutex["owner_lwp"] == pid and mutex["owner_function"] == "tcp_chr_write"
    assert mutex["owner_location"].startswith("chardev/char-socket.c:")
    assert mutex["waiters"] == []


def test_lock_owner_while_stopped_in_write_live(qemu, stopped_in_write):
    pid, live, core = stopped_in_write
    mutex = live.json(1)["mutex"]
    _check_lock_held_by_main(pid, live.json(0), mutex)
    # --enable-debug-mutex records in the QemuMutex where it was locked (its `file` and `line`
    # fields). Plain gdb, without the extension, reads them from the core taken at this stop.
    raw_file_text, raw_line = support.raw_gdb_values(
        qemu.storage_daemon, core=core,
        exprs=[f"((QemuMutex *){mutex['address']})->file",
               f"((QemuMutex *){mutex['address']})->line"])
    raw_file = re.search(r'"(.*)"', raw_file_text).group(1)
    assert re.search(r'"(.*)"', live.outputs[3]).group(1) == raw_file   # live gdb, same field
    locker_file, _, locker_line = mutex["locker"].rpartition(":")
    assert int(locker_line) == int(raw_line)
    # the recorded path as is ("../chardev/char.c", relative to the build directory) or
    # without its leading "../"
    assert locker_file in (raw_file, raw_file[3:] if raw_file.startswith("../") else raw_file)
    # and that source line is where chr_write_lock is taken (qemu_chr_write_buffer)
    source = (qemu.build_dir / raw_file).resolve()
    assert source.name == "char.c"
    assert "chr_write_lock" in source.read_text().splitlines()[int(raw_line) - 1]
    text = live.outputs[2]
    assert f"held by LWP {pid} (thread 1) in tcp_chr_write" in text
    assert re.search(r"locked at\s+" + re.escape(mutex["locker"]) + r"\b", text), text


def test_lock_owner_while_stopped_in_write_core(qemu, stopped_in_write):
    pid, _live, core = stopped_in_write
    result = support.run_gdb(qemu.storage_daemon, core=core,
                             commands=["qemu chardev list --json", "qemu mutex --json mon0"])
    _check_lock_held_by_main(pid, result.json(0), result.json(1)["mutex"])
    raw_owner = support.raw_gdb_values(
        qemu.storage_daemon, core=core,
        exprs=[f"((Chardev*){_by_label(result.json(0))['mon0']['address']})"
               "->chr_write_lock.lock.__data.__owner"])
    assert int(raw_owner[0]) == pid


# --- QIOTasks ------------------------------------------------------------------------------

def test_qiotask_in_worker_and_completion(qemu, workdir):
    """Stop in qio_task_thread_result (main loop, completion being dispatched)."""
    with support.reconnect_scenario(qemu.storage_daemon, workdir, min_attaches=1) as sc:
        result = support.run_gdb(
            qemu.storage_daemon, pid=sc.daemon.pid,
            setup=["break qio_task_thread_result", "continue"],
            commands=["qemu qiotask --json (QIOTask *)opaque", "qemu qiotask list --json",
                      "qemu chardev show --json cli0", "output opaque"],
            teardown=["detach"])
        trace = sc.daemon.stderr_text()
    task = result.json(0)["task"]
    assert task["address"] == _hex(result.outputs[3])
    assert task["source"]["type"] == "qio-channel-socket"
    assert task["func_symbol"] == "qemu_chr_socket_connected"
    assert task["worker_symbol"] == "tcp_chr_connect_client_task"
    completion = task["completion"]
    assert completion["funcs_symbol"] == "g_idle_funcs"
    assert completion["callback_symbol"] == "qio_task_thread_result"
    assert "IN_CALL" in completion["flag_names"] and completion["state"] == "dispatching"
    # QEMU's own trace names the same task and completion source.
    attaches = re.findall(r"qio_task_thread_source_attach .*task=(0x[0-9a-f]+) source=(0x[0-9a-f]+)",
                          trace)
    assert (task["address"], completion["address"]) in attaches
    cli0 = result.json(2)["chardev"]
    assert cli0["connect_task"]["address"] == task["address"]
    assert cli0["state"] == "connecting"
    listed = {t["address"]: t for t in result.json(1)["tasks"]}
    assert listed[task["address"]]["found_via"] == "cli0.connect_task"
