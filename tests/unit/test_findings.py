"""Finding rules (pure): ioc-null-during-write, deadlock, write-lock-held, providers."""
import pytest

from qemu_chardev.analysis import findings
from qemu_chardev.model import diagnosis
from qemu_chardev.model.diagnosis import (CrashFacts, DiagnosisInput, DisconnectLocking, Finding,
                                          ThreadFacts, si_code_name)
from qemu_chardev.model.objects import Frame
from qemu_chardev.model.qemu import frame_roles
from qemu_chardev.model.objects import ChardevState, MutexState

MON = 0x5555_0000_1000
LOCK = MON + 0x28
OTHER_LOCK = 0x5555_0000_9000
MAIN, IOTHREAD, WORKER = 4001, 4002, 4003


def chardev(label="mon0", address=MON, ioc=None, state="disconnected", owner=None,
            locker=None, lock_address=None, socket=True):
    lock = MutexState(address=lock_address or address + 0x28, kind="QemuMutex",
                      locked=owner is not None, owner_lwp=owner, locker_file=locker,
                      locker_line=112 if locker else None)
    return ChardevState(address=address, label=label, type="chardev-socket",
                        is_socket=socket, state=state, ioc=ioc, sioc=ioc, write_lock=lock)


def f(level, function, file=None, line=None, **pointers):
    ptrs = []
    for name, value in pointers.items():
        ptype = {"chr": "Chardev", "s": "Chardev", "ioc": "QIOChannel",
                 "mutex": "QemuMutex", "task": "QIOTask"}[name]
        ptrs.append((name, ptype, value))
    return Frame(level, function, file, line, ptrs)


def writer_stack(ioc_arg=0, chardev_address=MON):
    """The 2019 crash: object_get_class(NULL) under tcp_chr_write, monitor output."""
    return [f(0, "object_get_class", "qom/object.c", 1004),
            f(1, "qio_channel_writev_full", "io/channel.c", 248, ioc=ioc_arg),
            f(2, "io_channel_send_full", "chardev/char-io.c", 123, ioc=ioc_arg),
            f(3, "tcp_chr_write", "chardev/char-socket.c", 170, chr=chardev_address),
            f(4, "qemu_chr_write_buffer", "chardev/char.c", 122, s=chardev_address),
            f(5, "qemu_chr_write", "chardev/char.c", 186, s=chardev_address),
            f(6, "monitor_flush_locked", "monitor/monitor.c", 160),
            f(7, "main", "storage-daemon/qemu-storage-daemon.c", 400)]


def idle_iothread():
    return ThreadFacts(IOTHREAD, 2, None, [f(0, "__ppoll"), f(1, "g_main_context_iterate"),
                                           f(2, "iothread_run", "iothread.c", 70)])


def race_facts(takes_lock=False, **kw):
    threads = [ThreadFacts(MAIN, 1, None, writer_stack()), idle_iothread()]
    return DiagnosisInput(
        threads=threads,
        chardevs=[chardev(owner=MAIN, locker="../chardev/char.c", **kw)],
        crash=CrashFacts(signal=11, lwp=MAIN, thread=1, code=1, fault_address=0),
        disconnect_locking=DisconnectLocking(
            takes_lock, "calls tcp_chr_disconnect_locked without qemu_mutex_lock"
            if not takes_lock else "loads qemu_mutex_lock_func, calls qemu_mutex_unlock_impl"))


def ids(found):
    return [(x.id, x.severity) for x in found]


def test_race_crash_gives_ioc_null_during_write_naming_writer_as_lock_owner():
    found = findings.diagnose(race_facts())
    errors = [x for x in found if x.severity == "error"]
    assert [x.id for x in errors] == ["ioc-null-during-write"]
    err = errors[0]
    assert err.chardev == "mon0" and err.lwp == MAIN and err.thread == 1
    assert err.evidence["lock_owner_lwp"] == MAIN
    assert err.evidence["crashed"] is True and err.evidence["ioc_argument_null"] is True
    assert err.evidence["disconnect_takes_lock"] is False
    assert "SIGSEGV" in err.summary and "mon0" in err.summary
    assert "78d01598ae" in err.detail and "does NOT take chr_write_lock" in err.detail
    assert "state=disconnected" in err.detail
    assert "tcp_chr_write at chardev/char-socket.c:170 -> io_channel_send_full(ioc=NULL)" \
        in err.detail
    assert "4.2" in err.fix
    # the lock is held by the writer: an info finding, not a warning
    held = [x for x in found if x.id == "write-lock-held"]
    assert ids(held) == [("write-lock-held", "info")]


def test_fixed_binary_changes_the_explanation_and_the_fix():
    err = findings.diagnose(race_facts(takes_lock=True))[0]
    assert err.id == "ioc-null-during-write"
    assert "does take chr_write_lock" in err.detail
    assert "every path into tcp_chr_free_connection()" in err.fix


def test_unknown_disconnect_locking_is_said_so():
    facts = race_facts()
    facts.disconnect_locking = None
    err = findings.diagnose(facts)[0]
    assert "could not be determined" in err.detail


def test_ioc_null_found_from_current_chardev_state_without_null_argument():
    """Stopped (no crash) past the state check with a stale channel pointer."""
    threads = [ThreadFacts(MAIN, 1, None, writer_stack(ioc_arg=0x5555_0000_7000)[1:])]
    facts = DiagnosisInput(threads=threads, chardevs=[chardev(owner=MAIN)])
    found = findings.diagnose(facts)
    assert ids(found)[0] == ("ioc-null-during-write", "error")
    assert "is stopped" in found[0].summary
    assert found[0].evidence["ioc_argument_null"] is False


def test_write_entry_of_disconnected_chardev_is_not_an_error():
    """tcp_chr_write on a disconnected chardev returns before touching ioc."""
    threads = [ThreadFacts(MAIN, 1, None, writer_stack()[3:])]
    facts = DiagnosisInput(threads=threads, chardevs=[chardev(owner=MAIN)])
    assert ids(findings.diagnose(facts)) == [("write-lock-held", "info")]


def test_connected_chardev_with_null_ioc_in_write_entry_is_an_error():
    threads = [ThreadFacts(MAIN, 1, None, writer_stack()[3:])]
    facts = DiagnosisInput(threads=threads, chardevs=[chardev(owner=MAIN, state="connected")])
    assert ids(findings.diagnose(facts))[0] == ("ioc-null-during-write", "error")


def test_healthy_write_gives_only_info():
    threads = [ThreadFacts(MAIN, 1, None, writer_stack(ioc_arg=0x77)[3:]), idle_iothread()]
    facts = DiagnosisInput(threads=threads,
                           chardevs=[chardev(owner=MAIN, ioc=0x77, state="connected")])
    found = findings.diagnose(facts)
    assert ids(found) == [("write-lock-held", "info")]
    assert "thread 1 (LWP 4001) in tcp_chr_write" in found[0].summary


def test_crash_elsewhere_is_not_blamed_on_the_chardev():
    threads = [ThreadFacts(MAIN, 1, None, [f(0, "memcpy"), f(1, "block_job_foo", "b.c", 3)])]
    facts = DiagnosisInput(threads=threads, chardevs=[chardev(ioc=0x77, state="connected")],
                           crash=CrashFacts(signal=11, lwp=MAIN, thread=1))
    assert findings.diagnose(facts) == []


def test_writer_blocked_behind_disconnect_is_a_waiter_not_a_deadlock():
    """The fixed build: the I/O thread's disconnect waits for the lock the writer holds."""
    io_stack = [f(0, "__lll_lock_wait"), f(1, "qemu_mutex_lock_impl", "util/q.c", 94,
                                           mutex=LOCK),
                f(2, "tcp_chr_disconnect", "chardev/char-socket.c", 491, chr=MON),
                f(3, "tcp_chr_read", "chardev/char-socket.c", 560, chr=MON)]
    threads = [ThreadFacts(MAIN, 1, None, writer_stack(ioc_arg=0x77)[3:]),
               ThreadFacts(IOTHREAD, 2, None, io_stack, waiting_on=LOCK)]
    facts = DiagnosisInput(threads=threads, owner_of={LOCK: MAIN},
                           chardevs=[chardev(owner=MAIN, ioc=0x77, state="connected")])
    found = findings.diagnose(facts)
    assert ids(found) == [("write-lock-held", "info")]
    assert found[0].evidence["waiters"] == [IOTHREAD]
    assert "1 thread(s) waiting" in found[0].summary
    assert "tcp_chr_disconnect" in found[0].detail


def test_self_deadlock_on_chr_write_lock_from_closed_event():
    stack = [f(0, "__lll_lock_wait"), f(1, "qemu_mutex_lock_impl", "util/q.c", 94, mutex=LOCK),
             f(2, "qemu_chr_write_buffer", "chardev/char.c", 115, s=MON),
             f(3, "qemu_chr_fe_write", "chardev/char-fe.c", 42),
             f(4, "frontend_event", "hw/x.c", 10),
             f(5, "qemu_chr_be_event", "chardev/char.c", 70, s=MON),
             f(6, "tcp_chr_disconnect_locked", "chardev/char-socket.c", 480, chr=MON)]
    facts = DiagnosisInput(threads=[ThreadFacts(IOTHREAD, 2, None, stack, waiting_on=LOCK)],
                           chardevs=[chardev(owner=IOTHREAD, state="disconnected")],
                           owner_of={LOCK: IOTHREAD})
    found = findings.diagnose(facts)
    assert ids(found)[0] == ("deadlock", "error")
    dead = found[0]
    assert dead.chardev == "mon0" and dead.lwp == IOTHREAD and dead.evidence["self_deadlock"]
    assert "CHR_EVENT_CLOSED" in dead.detail and "CHR_EVENT_CLOSED" in dead.fix
    # the owner waits for its own lock: the lock itself is reported too, as info (write path)
    assert ("write-lock-held", "info") in ids(found)


def test_two_thread_deadlock_cycle():
    a = [f(0, "__lll_lock_wait"), f(1, "qemu_mutex_lock_impl", mutex=OTHER_LOCK),
         f(2, "tcp_chr_write", "chardev/char-socket.c", 170, chr=MON)]
    b = [f(0, "__lll_lock_wait"), f(1, "qemu_mutex_lock_impl", mutex=LOCK),
         f(2, "some_function", "x.c", 5)]
    facts = DiagnosisInput(
        threads=[ThreadFacts(MAIN, 1, None, a, waiting_on=OTHER_LOCK),
                 ThreadFacts(WORKER, 3, None, b, waiting_on=LOCK)],
        chardevs=[chardev(owner=MAIN, ioc=0x77, state="connected")],
        owner_of={LOCK: MAIN, OTHER_LOCK: WORKER})
    found = findings.diagnose(facts)
    dead = [x for x in found if x.id == "deadlock"]
    assert len(dead) == 1 and dead[0].severity == "error"
    assert [c["lwp"] for c in dead[0].evidence["cycle"]] == [MAIN, WORKER]
    assert "chr_write_lock of 'mon0'" in dead[0].detail
    # the owner of mon0's lock is blocked on another mutex: warning
    held = [x for x in found if x.id == "write-lock-held"]
    assert ids(held) == [("write-lock-held", "warning")]


def test_lock_owner_outside_write_path_is_a_warning():
    stack = [f(0, "__ppoll"), f(1, "some_frontend_handler", "hw/x.c", 10)]
    facts = DiagnosisInput(threads=[ThreadFacts(MAIN, 1, None, stack)],
                           chardevs=[chardev(owner=MAIN, ioc=0x77, state="connected")])
    found = findings.diagnose(facts)
    assert ids(found) == [("write-lock-held", "warning")]
    assert "not in the chardev write path" in found[0].detail


def test_lock_owner_gone_is_a_warning():
    facts = DiagnosisInput(threads=[idle_iothread()],
                           chardevs=[chardev(owner=9999, ioc=0x77, state="connected")])
    found = findings.diagnose(facts)
    assert ids(found) == [("write-lock-held", "warning")]
    assert "not a thread of this process" in found[0].summary


def test_locked_disconnect_is_info():
    stack = [f(0, "tcp_chr_free_connection", "chardev/char-socket.c", 430, chr=MON),
             f(1, "tcp_chr_disconnect_locked", "chardev/char-socket.c", 480, chr=MON),
             f(2, "tcp_chr_disconnect", "chardev/char-socket.c", 490, chr=MON)]
    facts = DiagnosisInput(threads=[ThreadFacts(IOTHREAD, 2, None, stack)],
                           chardevs=[chardev(owner=IOTHREAD)])
    assert ids(findings.diagnose(facts)) == [("write-lock-held", "info")]


def test_extra_findings_and_registered_providers_are_merged_errors_first():
    leak = Finding("gsource-leak", "error", "3 leaked completion GSources", chardev="cli0")
    facts = DiagnosisInput(threads=[idle_iothread()],
                           chardevs=[chardev(owner=IOTHREAD, ioc=0x77, state="connected")],
                           extra_findings=[leak])
    seen = []

    def uaf_rule(given):
        seen.append(given)
        return [Finding("gsource-use-after-free", "error", "freed GSource still referenced")]

    found = findings.diagnose(facts, providers=list(findings.DEFAULT_PROVIDERS) + [uaf_rule])
    assert seen == [facts]
    assert [x.id for x in found] == ["gsource-use-after-free", "gsource-leak",
                                     "write-lock-held"]


def test_broken_provider_becomes_a_problem_not_a_crash():
    def broken(_facts):
        raise KeyError("boom")
    problems = []
    found = findings.diagnose(race_facts(), providers=[broken, findings.deadlock],
                              problems=problems)
    assert found == [] and len(problems) == 1 and "broken" in problems[0]
    with pytest.raises(KeyError):
        findings.diagnose(race_facts(), providers=[broken])


def test_finding_rejects_unknown_severity_and_serialises():
    with pytest.raises(ValueError):
        Finding("write-lock-held", "fatal", "y")
    obj = Finding("write-lock-held", "info", "s", "d", None, "mon0", 1, 2).to_json()
    assert set(obj) >= {"id", "severity", "title", "chardev", "lwp", "thread", "summary",
                        "detail", "fix"}


def test_counts_and_helpers():
    found = findings.diagnose(race_facts())
    assert diagnosis.count_by_severity(found) == {"error": 1, "warning": 0, "info": 1}
    assert diagnosis.count_by_severity([x.to_json() for x in found])["error"] == 1
    assert si_code_name(11, 1) == "SEGV_MAPERR" and si_code_name(6, -6) == "SI_TKILL"
    roles = frame_roles(writer_stack()[1])
    assert "channel" in roles and "write-path" in roles
    assert "chardev" in frame_roles(writer_stack()[3])
