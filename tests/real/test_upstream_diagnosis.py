"""The extension on real cores of the catalogued upstream bugs: every one is named, with every
check it made; the objects the crash touches carry their liveness; exit status 1.

Ground truth for the object states is plain gdb on the same core (the recipe's summary "facts",
read without the extension) and the catalogue's source quotes (fixtures/qemu/upstream-bugs.md).
"""
import json

import pytest

import support
from support import postmortem as pm
from support.upstream_bugs import BUGS, make_core

from qemu_chardev.model.upstream import CATALOGUE

VERSIONS = support.versions_under_test()
CASES = [(name, version) for name in BUGS for version in VERSIONS
         if BUGS[name].variant(version)]


def _report(summary):
    done = pm.run_postmortem(summary["binary"], summary["core"],
                             options=(pm.NO_CENSUS, "--format", "json"))
    report = json.loads(done.stdout)
    pm.validate_report(report)
    return done.returncode, report


@pytest.mark.parametrize("name,version", CASES, ids=[f"{n}-qemu{v}" for n, v in CASES])
def test_each_upstream_bug_core_is_named_with_its_checks(name, version, workdir):
    build = support.require_build(version, BUGS[name].variant(version))
    summary = make_core(name, build, workdir / f"{name}.core")
    rc, report = _report(summary)
    assert rc == 1, "an error finding makes exit 1"
    assert report["complete"], report["problems"]
    named = [f for f in report["findings"] if f["id"] == "known-upstream-bug"]
    assert [f["evidence"]["bug"] for f in named] == [name], "exactly this bug, no other"
    assert all(check["ok"] for check in named[0]["evidence"]["checks"])
    assert len(named[0]["evidence"]["checks"]) >= 3
    assert named[0]["lwp"] == summary["crash_lwp"]
    assert report["crash"]["lwp"] == summary["crash_lwp"]
    entry = next(b for b in CATALOGUE if b.id == name)
    assert entry.fix_title == BUGS[name].fix, "the catalogue and the recipes name one fix"
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert crashed["waiting_on"] is None, "a crashing thread is not waiting for a lock"


def _dead_object(report, kind):
    return next((o for o in report["objects"] if o["kind"] == kind and
                 o["verdict"] in ("finalized", "freed")), None)


@pytest.mark.parametrize("version", [v for v in VERSIONS
                                     if BUGS["websock-handshake-uaf"].variant(v)])
def test_websocket_handshake_on_a_removed_chardev(version, workdir):
    """The issue's crash: SIGABRT in qemu_mutex_lock_impl after chardev-remove, once 'no
    findings, exit 0' and the crashed thread 'WAITING FOR mutex'."""
    build = support.require_build(version, BUGS["websock-handshake-uaf"].variant(version))
    summary = make_core("websock-handshake-uaf", build, workdir / "ws.core")
    rc, report = _report(summary)
    facts = summary["facts"]          # plain gdb on the core: the handshake frame's values
    chardev = _dead_object(report, "chardev")
    assert chardev is not None and int(chardev["address"], 16) == facts["chardev"]
    assert facts["chardev_ref"] == 0 and facts["chr_write_lock_initialized"] is False
    assert any("chr_write_lock was destroyed" in e for e in chardev["evidence"])
    assert any(h["function"] == "tcp_chr_websock_handshake" for h in chardev["holders"])
    uaf = [f for f in report["findings"] if f["id"] == "chardev-use-after-free"]
    assert uaf and uaf[0]["severity"] == "error"
    assertion = report["crash"]["assertion"]
    assert assertion["expression"] == "mutex->initialized"
    assert assertion["function"] == "qemu_mutex_lock_impl"
    mutex = next(c for c in assertion["concerns"] if c["kind"] == "mutex")
    assert mutex["part_of"] == chardev["address"], "the aborting mutex is its chr_write_lock"
    listed = [c for c in report["chardevs"] if c["address"] == chardev["address"]]
    assert listed and not listed[0]["in_tree"] and listed[0]["liveness"] == chardev["verdict"]
    text = pm.run_postmortem(summary["binary"], summary["core"]).stdout
    assert "WAITING FOR mutex" not in text and "chardev-use-after-free" in text
    assert "assertion `mutex->initialized' failed" in text


@pytest.mark.parametrize("version", [v for v in VERSIONS if BUGS["iowatch-ioc-uaf"].variant(v)])
def test_stale_io_watch_on_a_freed_channel(version, workdir):
    """Unfixed in every Debian QEMU: the freed QIOChannel is found freed by the allocator."""
    summary = make_core("iowatch-ioc-uaf", support.require_build(version, "fixed"),
                        workdir / "iowatch.core")
    rc, report = _report(summary)
    channel = _dead_object(report, "channel")
    assert channel is not None and int(channel["address"], 16) == summary["facts"]["ioc"]
    assert summary["facts"]["ioc_ref"] == 0
    assert channel["verdict"] == "freed" and channel["chunk"] == "free"
    assert [f["id"] for f in report["findings"] if f["severity"] == "error"] == \
        ["channel-use-after-free", "known-upstream-bug"]


# Errors a crash in chardev code may get when an optimized build hides some of its evidence.
CHARDEV_CRASH_ERRORS = {"known-upstream-bug", "chardev-use-after-free", "chardev-crash",
                        "mutex-use-after-destroy"}


@pytest.mark.skipif("7.2" not in VERSIONS, reason="QEMU 7.2 is not under test")
def test_distribution_build_of_7_2_is_not_silent(workdir):
    """The issue's crash on a distribution-like build (QEMU's default -O2 -g, no debug-mutex):
    inlined frames and optimized-out arguments, still an error finding and exit 1."""
    summary = make_core("websock-handshake-uaf", support.require_build("7.2", "distro"),
                        workdir / "ws-distro.core")
    rc, report = _report(summary)
    assert rc == 1
    errors = {f["id"] for f in report["findings"] if f["severity"] == "error"}
    assert errors and errors <= CHARDEV_CRASH_ERRORS, report["findings"]
    crashed = next(t for t in report["threads"] if t["crashed"])
    assert crashed["waiting_on"] is None
    assert report["crash"]["assertion"]["expression"] == "mutex->initialized"
