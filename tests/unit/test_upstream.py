"""Upstream bug signatures: a bug is named only when every check holds (real cores of each bug
are checked in tests/real/test_upstream_bugs.py)."""
import pathlib

from qemu_chardev.analysis import findings, upstream
from qemu_chardev.model.diagnosis import CrashFacts, DiagnosisInput, ThreadFacts
from qemu_chardev.model.objects import ChardevState, Frame
from qemu_chardev.model.upstream import CATALOGUE

LWP = 77
CHR = 0x5555_0000_1000


def _frames(*functions, chardev=CHR):
    return [Frame(level=i, function=name, file="x.c" if i else None, line=1,
                  is_qemu=bool(i), pointers=[("chr", "Chardev", chardev)] if i else [])
            for i, name in enumerate(functions)]


def _facts(signal, functions, assertion=None, fields=None):
    chardev = ChardevState(address=CHR, label="cli0", type="chardev-socket", is_socket=True,
                           fields=dict(fields or {}))
    return DiagnosisInput(threads=[ThreadFacts(lwp=LWP, num=1, frames=_frames(*functions))],
                          chardevs=[chardev], crash=CrashFacts(signal=signal, lwp=LWP, thread=1),
                          assertion=assertion, qemu_version="7.2.22")


def _ids(found):
    return [(f.id, f.evidence.get("bug")) for f in found]


def test_every_catalogued_bug_has_a_signature():
    assert {bug.id for bug in CATALOGUE} == set(upstream.SIGNATURES)
    assert len(CATALOGUE) >= 6
    assert sum(1 for bug in CATALOGUE if any(bug.debian.values())) >= 2


def test_reconnect_timer_matches_only_with_every_check():
    assertion = {"expression": "!s->reconnect_timer",
                 "function": "qemu_chr_socket_restart_timer", "file": "chardev/char-socket.c",
                 "line": 86, "text": "..."}
    frames = ("abort", "qemu_chr_socket_restart_timer", "tcp_chr_disconnect_locked")
    found = upstream.known_upstream_bugs(_facts(6, frames, assertion))
    assert _ids(found) == [("known-upstream-bug", "reconnect-timer")]
    assert "fixed in QEMU 5.1" in found[0].summary
    assert all(c["ok"] for c in found[0].evidence["checks"])
    assert "7.2.22" in found[0].detail
    # The same stack without the assertion message, or with another signal: no claim.
    assert upstream.known_upstream_bugs(_facts(6, frames)) == []
    assert upstream.known_upstream_bugs(_facts(11, frames, assertion)) == []


def test_double_free_needs_the_reported_error_flag():
    frames = ("__GI___libc_free", "error_free", "qemu_chr_socket_connected",
              "qio_task_complete")
    yes = _facts(11, frames, fields={"connect_err_reported": True})
    no = _facts(11, frames, fields={"connect_err_reported": False})
    assert _ids(upstream.known_upstream_bugs(yes)) == [("known-upstream-bug",
                                                        "connect-error-double-free")]
    assert upstream.known_upstream_bugs(no) == []
    # Without a known bug, the crash in chardev code is still an error (chardev-crash).
    assert [f.id for f in findings.diagnose(no)] == ["chardev-crash"]


def test_readme_lists_the_catalogue_as_the_model_has_it():
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    for bug in CATALOGUE:
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{bug.id}` |")),
                   None)
        assert row is not None, bug.id
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert bug.fix_title in cells[2] and cells[3].startswith(bug.fixed_in)
        still = [v.split()[0] for v, has in bug.debian.items() if has]
        assert cells[4] == (", ".join(still) if still else "none")
