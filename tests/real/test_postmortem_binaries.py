"""chardev-postmortem without BINARY: each core's own binary, found from the core.

One crash directory as systemd-coredump leaves it (``core.COMM.UID.BOOTID.PID.TIMESTAMP.zst``)
holds gcores of four programs: qemu-storage-daemon 7.2 and 10.2, test-char (a QEMU unit test)
and ``sleep`` (not QEMU).  The QEMU binaries run from hard-linked copies in an "install"
directory, so that a test can move them away (the cached builds are shared and stay put).

``--coredumpctl`` runs the real coredumpctl (systemd 252) on a real journal file: systemd is
not PID 1 here, so the journal entries are written in systemd-coredump's fields by the real
systemd-journal-remote, and a two-line shim on PATH adds ``--file=JOURNAL``; what is not
exercised is systemd-coredump receiving a core from the kernel.
"""
import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import support
from support import postmortem as pm

RECORDED = "recorded in the core, build-id matches"
BINARY_DIR = "found in --binary-dir by build-id"
GIVEN = "given on the command line"
NAMES = ("qsd72", "qsd102", "test-char", "sleep")


@dataclass
class CrashSite:
    install: Path          # install/{7.2,10.2}/qemu-storage-daemon, install/unit/test-char
    coredump: Path         # the systemd-coredump directory: one .zst per core
    binaries: dict         # name -> the binary the core was dumped by
    stored: dict           # name -> its .zst in ``coredump``
    build_ids: dict        # name -> the executable's build-id recorded in the core
    programs: dict         # name -> the program name in the core's notes (pr_fname)
    versions: dict         # name -> QEMU version for the storage daemons


@pytest.fixture(scope="module")
def site():
    from qemu_chardev.files import elf
    builds = {"qsd72": support.require_build("7.2"), "qsd102": support.require_build("10.2")}
    install = pm.core_dir() / "install"
    binaries = {
        "qsd72": pm.install_copy(builds["qsd72"].storage_daemon, install / "7.2"),
        "qsd102": pm.install_copy(builds["qsd102"].storage_daemon, install / "10.2"),
        "test-char": pm.install_copy(builds["qsd72"].test_char, install / "unit"),
        "sleep": Path(os.path.realpath("/bin/sleep")),
    }
    cores = {
        "qsd72": pm.daemon_core(binaries["qsd72"], "bd-qsd72"),
        "qsd102": pm.daemon_core(binaries["qsd102"], "bd-qsd102"),
        "test-char": pm.test_char_core(binaries["test-char"], "bd-test-char"),
        "sleep": pm.other_program_core(),
    }
    coredump = pm.core_dir() / "var-lib-systemd-coredump"
    stored = {name: pm.systemd_coredump_copy(core, coredump) for name, core in cores.items()}
    infos = {name: elf.read_core(str(core)) for name, core in cores.items()}
    build_ids = {name: info.executable_build_id for name, info in infos.items()}
    programs = {name: info.program for name, info in infos.items()}
    for name, core in cores.items():
        if name != "sleep":
            core.unlink()                  # hundreds of MB; the .zst copies stay
    versions = {name: ".".join(map(str, builds[name].version_tuple[:2])) for name in builds}
    return CrashSite(install, coredump, binaries, stored, build_ids, programs, versions)


@contextlib.contextmanager
def moved_away(site, keep=NAMES):
    """The install directory renamed away; yields a directory tree holding the binaries of
    KEEP (hard links) in other folders.  Put back afterwards."""
    gone = site.install.with_name("install.moved")
    elsewhere = pm.core_dir() / f"elsewhere-{len(os.listdir(pm.core_dir()))}"
    os.rename(site.install, gone)
    try:
        for name in keep:
            if name != "sleep":
                pm.install_copy(gone / site.binaries[name].relative_to(site.install),
                                elsewhere / "opt" / name)
        yield elsewhere
    finally:
        os.rename(gone, site.install)
        shutil.rmtree(elsewhere, ignore_errors=True)


def by_name(site, done):
    obj = json.loads(done.stdout)
    pm.validate_report(obj)
    names = {str(path): name for name, path in site.stored.items()}
    return {names[r["postmortem"]["input"]]: r for r in obj["reports"]}


def not_qemu_line(site):
    return (f"chardev-postmortem: {site.stored['sleep']}: core of 'sleep', not of a QEMU "
            f"program ({site.binaries['sleep']}, {RECORDED})")


def test_systemd_directory_each_core_analysed_with_its_recorded_binary(site):
    assert sorted(p.name.split(".")[1] for p in site.coredump.iterdir()) == [
        "qemu-storage-da", "qemu-storage-da", "sleep", "test-char"]
    done = pm.run_postmortem_inputs(site.coredump, options=[pm.NO_CENSUS, "--format", "json"])
    assert done.returncode == 2, done.stderr          # sleep's core: not QEMU, unusable
    reports = by_name(site, done)
    for name in ("qsd72", "qsd102", "test-char"):
        report = reports[name]
        assert report["error"] is None, report["error"]
        assert report["target"]["binary"] == str(site.binaries[name])
        assert report["postmortem"]["binary"] == {
            "path": str(site.binaries[name]), "how": "recorded", "why": RECORDED,
            "core_build_id": site.build_ids[name], "problem": None}
        assert report["postmortem"]["decompressed"] is True
        assert "mon0" in [c["label"] for c in report["chardevs"]] or name == "test-char"
    for name in ("qsd72", "qsd102"):
        assert reports[name]["target"]["qemu_version"].startswith(site.versions[name] + ".")
    assert reports["sleep"]["target"]["binary"] == str(site.binaries["sleep"])
    assert reports["sleep"]["findings"] == [] and reports["sleep"]["complete"] is False
    lines = done.stderr.splitlines()
    for name in ("qsd72", "qsd102", "test-char"):
        [line] = [line for line in lines if line.startswith("[") and str(site.stored[name]) in line]
        assert line.endswith(f"; binary: {site.binaries[name]} ({RECORDED})")
    assert [line for line in lines if line.startswith("chardev-postmortem:")] == [
        not_qemu_line(site)]


def test_text_output_says_which_binary_and_why(site):
    done = pm.run_postmortem_inputs(site.stored["qsd102"])
    assert done.returncode == 0, done.stderr
    assert re.search(rf"^  binary +{re.escape(str(site.binaries['qsd102']))} "
                     rf"\({RECORDED}\)$", done.stdout, re.M), done.stdout[:600]
    assert done.stderr == ""


def test_old_form_binary_then_cores_is_given_on_the_command_line(site):
    done = pm.run_postmortem(site.binaries["qsd72"], site.stored["qsd72"], site.stored["qsd102"],
                             options=[pm.NO_CENSUS, "--format", "json", "-q"])
    assert done.returncode == 2
    reports = by_name(site, done)
    assert reports["qsd72"]["error"] is None
    assert reports["qsd72"]["postmortem"]["binary"]["why"] == GIVEN
    assert reports["qsd102"]["error"] == (
        f"core of a different build of qemu-storage-daemon: build-id "
        f"{site.build_ids['qsd102'][:12]} in the core, {site.build_ids['qsd72'][:12]} in the "
        "binary")
    text = pm.run_postmortem(site.binaries["qsd72"], site.stored["qsd72"])
    assert text.returncode == 0, text.stderr
    assert f"{site.binaries['qsd72']} ({GIVEN})" in text.stdout


def test_moved_binaries_are_found_in_binary_dir_by_build_id(site):
    with moved_away(site) as elsewhere:
        done = pm.run_postmortem_inputs(site.coredump, "--binary-dir", elsewhere,
                                        options=[pm.NO_CENSUS, "--format", "json", "-j", "2"])
    assert done.returncode == 2, done.stderr
    reports = by_name(site, done)
    for name in ("qsd72", "qsd102", "test-char"):
        binary = reports[name]["postmortem"]["binary"]
        assert reports[name]["error"] is None, reports[name]["error"]
        assert binary["how"] == "binary-dir" and binary["why"] == BINARY_DIR
        assert binary["path"] == str(elsewhere / "opt" / name / site.binaries[name].name)
        assert reports[name]["target"]["binary"] == binary["path"]
    assert [line for line in done.stderr.splitlines()
            if line.startswith("chardev-postmortem:")] == [not_qemu_line(site)]


def test_a_core_whose_binary_is_nowhere_is_one_line_and_the_others_are_reported(site):
    with moved_away(site, keep=("qsd72", "qsd102")) as elsewhere:
        done = pm.run_postmortem_inputs(site.coredump, "--binary-dir", elsewhere,
                                        options=[pm.NO_CENSUS, "--format", "json", "-q"])
    assert done.returncode == 2
    reports = by_name(site, done)
    assert reports["qsd72"]["error"] is None and reports["qsd102"]["error"] is None
    reason = (f"binary not found: core of 'test-char': {site.binaries['test-char']} (recorded "
              f"in the core) does not exist; no file under --binary-dir {elsewhere} has "
              f"build-id {site.build_ids['test-char'][:12]}")
    assert reports["test-char"]["error"] == reason
    assert reports["test-char"]["target"]["binary"] is None
    assert done.stderr.splitlines() == [      # in input order: core.qemu-*, core.sleep.*, ...
        not_qemu_line(site), f"chardev-postmortem: {site.stored['test-char']}: {reason}"]


def test_without_binary_dir_a_missing_binary_says_what_to_give(site):
    with moved_away(site, keep=()):
        done = pm.run_postmortem_inputs(site.stored["qsd72"])
    assert done.returncode == 2
    assert done.stderr == (
        f"chardev-postmortem: {site.stored['qsd72']}: binary not found: core of "
        f"'{site.programs['qsd72']}': {site.binaries['qsd72']} (recorded in the core) does not "
        "exist; "
        f"give --binary-dir DIR holding build-id {site.build_ids['qsd72'][:12]}, or BINARY\n")


def test_a_rebuilt_binary_at_the_recorded_path_is_not_used(site):
    """The 10.2 daemon put where the 7.2 one was: build-ids differ, --binary-dir has the 7.2."""
    recorded = site.binaries["qsd72"]
    with moved_away(site, keep=("qsd72",)) as elsewhere:
        pm.install_copy(site.install.with_name("install.moved") / "10.2" / recorded.name,
                        recorded.parent)
        try:
            alone = pm.run_postmortem_inputs(site.stored["qsd72"])
            found = pm.run_postmortem_inputs(site.stored["qsd72"], "--binary-dir", elsewhere,
                                             options=[pm.NO_CENSUS, "--format", "json"])
        finally:
            shutil.rmtree(site.install)          # only the impostor; the real one comes back
    assert alone.returncode == 2
    assert (f"{recorded} (recorded in the core) is another build: build-id "
            f"{site.build_ids['qsd102'][:12]}, the core's is {site.build_ids['qsd72'][:12]}"
            ) in alone.stderr
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["postmortem"]["binary"]["why"] == BINARY_DIR


# --- systemd-coredump through coredumpctl ---------------------------------------------------

@pytest.fixture(scope="module")
def journal_path(site):
    if not shutil.which("coredumpctl") or not os.path.exists(pm.JOURNAL_REMOTE):
        pytest.skip("needs coredumpctl and systemd-journal-remote "
                    "(apt-get install systemd-coredump systemd-journal-remote)")
    return pm.coredump_journal(list(site.stored.values()),
                               pm.core_dir() / "coredump.journal")


def test_coredumpctl_matches_dump_the_stored_cores(site, journal_path, tmp_path):
    shim = pm.coredumpctl_on_journal(journal_path, tmp_path / "bin")
    pid = site.stored["qsd72"].name.split(".")[4]
    matches = [pid, "test-char", str(site.binaries["qsd102"]), "COREDUMP_COMM=sleep"]
    argv = [arg for match in matches for arg in ("--coredumpctl", match)]
    done = pm.run_postmortem_inputs(*argv, options=[pm.NO_CENSUS, "--format", "json", "-q"],
                                    env={"PATH": f"{shim.parent}:{os.environ['PATH']}"})
    assert done.returncode == 2, done.stderr
    obj = json.loads(done.stdout)
    pm.validate_report(obj)
    reports = obj["reports"]
    assert [r["postmortem"]["input"] for r in reports] == [f"coredumpctl {m}" for m in matches]
    assert [r["postmortem"]["coredumpctl"] for r in reports] == matches
    for report, name in zip(reports[:3], ("qsd72", "test-char", "qsd102")):
        assert report["error"] is None, report["error"]
        assert report["postmortem"]["binary"]["path"] == str(site.binaries[name])
        assert report["postmortem"]["binary"]["why"] == RECORDED
        assert report["target"]["core"] == report["postmortem"]["input"]
    assert reports[3]["error"] == ("core of 'sleep', not of a QEMU program "
                                   f"({site.binaries['sleep']}, {RECORDED})")


def test_coredumpctl_without_a_matching_core_is_one_line(site, journal_path, tmp_path):
    shim = pm.coredumpctl_on_journal(journal_path, tmp_path / "bin")
    done = pm.run_postmortem_inputs(site.stored["qsd102"], "--coredumpctl", "4242424",
                                    options=[pm.NO_CENSUS, "--format", "json", "-q"],
                                    env={"PATH": f"{shim.parent}:{os.environ['PATH']}"})
    assert done.returncode == 2
    assert done.stderr == "chardev-postmortem: coredumpctl 4242424: coredumpctl: No match found.\n"
    first, second = json.loads(done.stdout)["reports"]
    assert first["error"] is None and second["error"] == "coredumpctl: No match found."


def test_coredumpctl_of_this_machine_without_a_journal(site):
    """The real coredumpctl on the system journal (none here, or without this match)."""
    if not shutil.which("coredumpctl"):
        pytest.skip("coredumpctl is not installed")
    done = pm.run_postmortem_inputs("--coredumpctl", "COREDUMP_EXE=/nonexistent/qcg-test")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("chardev-postmortem: coredumpctl COREDUMP_EXE=/nonexistent/qcg-test: "
                           "coredumpctl: ") and line.endswith("No match found.")


def test_no_coredumpctl_on_the_machine_is_one_line(site, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = pm.run_postmortem_inputs("--coredumpctl", "1234", "--gdb", shutil.which("gdb"),
                                    env={"PATH": str(empty)})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("chardev-postmortem: --coredumpctl: coredumpctl is not installed "
                           "(Debian and Ubuntu: apt-get install systemd-coredump; Fedora: it "
                           "is part of systemd)\n")
