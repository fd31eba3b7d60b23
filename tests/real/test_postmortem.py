"""scripts/chardev-postmortem on real cores: exit codes, formats, bad inputs, gdb failures.

The cores come from real qemu-storage-daemon builds (make-race-core's SIGSEGV core of the 2019
race on a reverted build, gcore snapshots of ordinary states) and from /bin/sleep.
"""
import json
import os
import signal
import stat
import subprocess
import xml.etree.ElementTree as ET

import pytest

import support
from support import postmortem as pm

RACE_ID = "ioc-null-during-write"


@pytest.fixture(scope="module")
def race(qemu_reverted):
    return pm.race_core(qemu_reverted)


def reports_of(done):
    obj = json.loads(done.stdout)
    pm.validate_report(obj)
    return obj["reports"] if "reports" in obj else [obj]


def error_ids(report):
    return [f["id"] for f in report["findings"] if f["severity"] == "error"]


def fake_gdb(tmp_path, body):
    """An executable standing in for gdb: a shell script with BODY."""
    path = tmp_path / "fake-gdb"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_race_core_exit_1_with_the_cause_in_text(race):
    done = pm.run_postmortem(race.binary, race.path)
    assert done.returncode == 1, done.stderr
    assert f"ERROR {RACE_ID}  [chardev mon0, thread 1 / LWP {race.summary['main_lwp']}]" \
        in done.stdout
    assert done.stderr == ""          # one core: no progress lines, nothing unusable


def test_race_core_with_default_options_includes_the_census(race):
    done = pm.run_postmortem(race.binary, race.path, options=["--format", "json"])
    assert done.returncode == 1, done.stderr
    [report] = reports_of(done)
    assert RACE_ID in error_ids(report) and "gsource_census" in report["sections"]


def test_json_for_one_and_for_several_cores(qemu_reverted, race):
    idle = pm.idle_core(qemu_reverted)
    one = pm.run_postmortem(race.binary, race.path, options=[pm.NO_CENSUS, "--format", "json"])
    obj = json.loads(one.stdout)
    assert obj["schema"] == "qemu-chardev-report/1" and "target" in obj
    many = pm.run_postmortem(race.binary, idle, race.path,
                             options=[pm.NO_CENSUS, "--format", "json", "-q"])
    assert many.returncode == 1
    reports = reports_of(many)
    assert [r["postmortem"]["input"] for r in reports] == [str(idle), str(race.path)]
    assert error_ids(reports[0]) == [] and error_ids(reports[1]) == [RACE_ID]
    assert reports[1]["target"]["core"] == str(race.path)


def test_fixed_build_cores_exit_0(qemu):
    wait, idle = pm.lock_wait_core(qemu), pm.idle_core(qemu)
    done = pm.run_postmortem(qemu.storage_daemon, wait.path, idle,
                             options=[pm.NO_CENSUS, "--format", "json"])
    assert done.returncode == 0, done.stderr
    reports = reports_of(done)
    assert [r["summary"]["error"] for r in reports] == [0, 0]
    assert [l for l in done.stderr.splitlines() if l.startswith("[")] == [
        l for l in done.stderr.splitlines() if l.startswith(("[1/2]", "[2/2]"))]
    assert len(done.stderr.splitlines()) == 2      # two progress lines, nothing else


def test_directory_of_cores(qemu_reverted, race, tmp_path):
    idle = pm.idle_core(qemu_reverted)
    cores = tmp_path / "cores"
    cores.mkdir()
    (cores / "core.qemu-storage-da.1").symlink_to(race.path)
    (cores / "core.qemu-storage-da.2").symlink_to(idle)
    (cores / "notes.txt").write_text("not a core\n")
    done = pm.run_postmortem(race.binary, cores, options=[pm.NO_CENSUS, "--format", "json"])
    assert done.returncode == 1, done.stderr
    reports = reports_of(done)
    assert [os.path.basename(r["postmortem"]["input"]) for r in reports] == [
        "core.qemu-storage-da.1", "core.qemu-storage-da.2"]
    assert "skipped 1 file(s) that are not core files" in done.stderr


def test_empty_directory_is_nothing_to_do(race, tmp_path):
    done = pm.run_postmortem(race.binary, tmp_path)
    assert done.returncode == 0 and "No core files to analyse" in done.stdout
    junit = pm.run_postmortem(race.binary, tmp_path, options=["--format", "junit"])
    assert ET.fromstring(junit.stdout).get("tests") == "0"


@pytest.mark.parametrize("ext", [".zst", ".xz", ".lz4"])
def test_compressed_cores_are_read_and_the_temporary_file_removed(race, ext, tmp_path):
    packed = pm.compressed(race.path, ext)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = pm.run_postmortem(race.binary, packed, options=[pm.NO_CENSUS, "--format", "json"],
                             env={"TMPDIR": str(scratch)})
    assert done.returncode == 1, done.stderr
    [report] = reports_of(done)
    assert error_ids(report) == [RACE_ID]
    assert report["postmortem"]["decompressed"] is True
    assert report["target"]["core"] == str(packed)
    assert list(scratch.iterdir()) == []


def test_unusable_inputs_get_one_line_reasons_and_the_rest_is_analysed(race, tmp_path):
    truncated = tmp_path / "truncated.core"   # cut in its program headers: nothing to read
    with open(race.path, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(1000))
    text = tmp_path / "readme.core"
    text.write_text("hello\n")
    sleep = pm.other_program_core()
    missing = tmp_path / "missing.core"
    done = pm.run_postmortem(race.binary, race.path, missing, sleep, truncated, text,
                             options=[pm.NO_CENSUS, "--format", "json", "-q"])
    assert done.returncode == 2
    reasons = dict(line.split(": ", 1)[1:] and (line.split(": ")[1], line.split(": ", 2)[2])
                   for line in done.stderr.splitlines())
    assert reasons == {
        str(missing): "no such file",
        str(sleep): "core of 'sleep' (/usr/bin/sleep), not of qemu-storage-daemon",
        str(truncated): reasons[str(truncated)],
        str(text): "not an ELF file",
    }
    assert reasons[str(truncated)].startswith("truncated")
    reports = reports_of(done)
    assert error_ids(reports[0]) == [RACE_ID]
    for report in reports[1:]:
        assert report["error"] and report["complete"] is False and report["findings"] == []


def test_junit_one_testcase_per_core_one_failure_per_error(qemu_reverted, race, tmp_path):
    idle = pm.idle_core(qemu_reverted)
    missing = tmp_path / "gone.core"
    as_json = pm.run_postmortem(race.binary, race.path, idle, missing,
                                options=[pm.NO_CENSUS, "--format", "json", "-q"])
    expected_failures = sum(len(error_ids(r)) for r in reports_of(as_json))
    done = pm.run_postmortem(race.binary, race.path, idle, missing,
                             options=[pm.NO_CENSUS, "--format", "junit", "-q"])
    assert done.returncode == 2
    root = ET.fromstring(done.stdout)
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [str(race.path), str(idle), str(missing)]
    failures = suite.findall("testcase/failure")
    assert expected_failures == 1 and len(failures) == expected_failures
    assert failures[0].get("type") == RACE_ID and "mon0" in failures[0].get("message")
    assert "Fix:" in failures[0].text and "tcp_chr_write" in failures[0].text
    [error] = suite.findall("testcase/error")
    assert error.get("message") == "no such file"
    for element in (root, suite):      # the Jenkins/GitLab JUnit schema's counters
        assert element.get("tests") == "3" and element.get("failures") == "1"
        assert element.get("errors") == "1" and float(element.get("time")) >= 0
    for case in cases:
        assert case.get("classname") == "chardev-postmortem.qemu-storage-daemon"
        float(case.get("time"))
        assert {child.tag for child in case} <= {"failure", "error", "system-out"}


def test_markdown_summary(race, tmp_path):
    missing = tmp_path / "gone.core"
    done = pm.run_postmortem(race.binary, race.path, missing,
                             options=[pm.NO_CENSUS, "--format", "markdown", "-q"])
    assert done.returncode == 2
    md = done.stdout
    assert md.startswith("## QEMU chardev post-mortem\n")
    assert "| Core | QEMU | Crash | Errors | Warnings | Verdict |" in md
    assert f"| `{race.path}` |" in md and f"**FAIL** `{RACE_ID}`" in md
    assert f"### `{missing}`\n\nNot analysed: no such file" in md
    assert "<details><summary>Crash: SIGSEGV" in md


def test_output_files_from_one_analysis(race, tmp_path):
    out, junit, md = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.md"
    done = pm.run_postmortem(race.binary, race.path, options=[
        pm.NO_CENSUS, "--format", "json", "--output", str(out),
        "--write", f"junit={junit}", "--write", f"markdown={md}"])
    assert done.returncode == 1 and done.stdout == ""
    pm.validate_report(json.loads(out.read_text()))
    assert ET.parse(junit).getroot().get("failures") == "1"
    assert RACE_ID in md.read_text()


def test_parallel_jobs_keep_input_order_and_report_progress(qemu_reverted, race):
    idle = pm.idle_core(qemu_reverted)
    packed = pm.compressed(race.path, ".zst")
    done = pm.run_postmortem(race.binary, race.path, idle, packed,
                             options=[pm.NO_CENSUS, "--format", "json", "-j", "2"])
    assert done.returncode == 1
    reports = reports_of(done)
    assert [r["postmortem"]["input"] for r in reports] == [str(race.path), str(idle),
                                                            str(packed)]
    assert [len(error_ids(r)) for r in reports] == [1, 0, 1]
    progress = sorted(l.split("]")[0] for l in done.stderr.splitlines() if l.startswith("["))
    assert progress == ["[1/3", "[2/3", "[3/3"]


def test_gdb_timeout_is_a_reason_and_gdb_is_killed(race, tmp_path):
    marker = tmp_path / "started"
    gdb = fake_gdb(tmp_path, f"echo $$ > {marker}; exec sleep 60")
    done = pm.run_postmortem(race.binary, race.path,
                             options=["--gdb", str(gdb), "--timeout", "2"], timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("gdb timed out after 2 s")
    pid = int(marker.read_text())
    assert not support.procs.process_exists(pid)


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("how,status", [("SIGINT", 130), ("SIGTERM", 128 + 15)])
def test_interrupted_run_kills_its_gdb(race, tmp_path, jobs, how, status):
    """Ctrl-C or SIGTERM while gdb works: every gdb started goes (they run in their own
    session, out of reach of the terminal's signals), and the exit status says why."""
    gdb = fake_gdb(tmp_path, f"echo $$ >> {tmp_path / 'started'}; exec sleep 60")
    inputs = [race.path, race.path] if jobs == "2" else [race.path]
    proc = subprocess.Popen(["/usr/bin/python3", str(pm.POSTMORTEM), "--gdb", str(gdb),
                             "-j", jobs, "-q", str(race.binary), *map(str, inputs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    expected = len(inputs)
    assert support.procs.wait_until(
        lambda: len((tmp_path / "started").read_text().split()) >= expected
        if (tmp_path / "started").exists() else False, timeout=60)
    proc.send_signal(getattr(signal, how))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    for pid in map(int, (tmp_path / "started").read_text().split()):
        assert support.procs.wait_until(lambda pid=pid: not support.procs.process_exists(pid),
                                        timeout=10), f"gdb {pid} still runs"


def test_a_core_of_another_build_has_its_early_gdb_killed(qemu_pair, tmp_path):
    """With BINARY given, gdb starts while the core is checked; a core that fails the check
    gets its one-line reason, and its gdb does not outlive the run."""
    fixed, reverted = qemu_pair
    core = pm.idle_core(reverted)
    gdb = fake_gdb(tmp_path, f"echo $$ > {tmp_path / 'started'}; exec sleep 60")
    done = pm.run_postmortem(fixed.storage_daemon, core, options=["--gdb", str(gdb)],
                             timeout=60)
    assert done.returncode == 2
    assert "core of a different build of qemu-storage-daemon" in done.stderr
    started = tmp_path / "started"
    if started.exists():        # else it was killed before its first command
        assert not support.procs.process_exists(int(started.read_text()))


@pytest.mark.parametrize("body,reason", [
    ("exit 0", "gdb did not run the diagnosis: no output"),
    ('echo "@@CHARDEV-POSTMORTEM-REPORT-BEGIN@@"; echo "qemu diagnose: boom" >&2; exit 0',
     "no complete report: qemu diagnose: boom"),
    ('echo "@@CHARDEV-POSTMORTEM-REPORT-BEGIN@@"; kill -SEGV $$', "gdb crashed (signal 11)"),
    ('printf "@@CHARDEV-POSTMORTEM-REPORT-BEGIN@@\\n{\\"x\\": 1}\\n'
     '@@CHARDEV-POSTMORTEM-REPORT-END@@\\n"', "unexpected report from gdb"),
])
def test_gdb_exit_status_is_not_trusted(race, tmp_path, body, reason):
    gdb = fake_gdb(tmp_path, body)
    done = pm.run_postmortem(race.binary, race.path, options=["--gdb", str(gdb)])
    assert done.returncode == 2
    assert reason in done.stderr.strip().splitlines()[-1]


def test_gdb_missing_without_python_or_too_old_is_one_line_exit_2(race, tmp_path):
    """gdb missing; a real gdb built without Python (Debian's gdb-minimal, unpacked, not
    installed); a too-old gdb (a STUB: the real gdb told it is 12.1)."""
    from support import watch as sw
    missing = pm.run_postmortem(race.binary, race.path, options=["--gdb", "/nonexistent/gdb"])
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        "chardev-postmortem: gdb not found: /nonexistent/gdb (Debian: apt-get install gdb)"]
    minimal = sw.gdb_minimal()
    cases = [(sw.old_gdb_stub(tmp_path),
              "qemu-chardev-gdb: gdb 12.1 is too old: needs gdb 13.0 or later")]
    if minimal is not None:
        cases.append((minimal, f"{minimal} was built without Python; install a gdb with "
                               "Python (Debian: apt-get install gdb, not gdb-minimal)"))
    for gdb, reason in cases:
        done = pm.run_postmortem(race.binary, race.path,
                                 options=[pm.NO_CENSUS, "--gdb", str(gdb)])
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [
            f"chardev-postmortem: {race.path}: gdb did not run the diagnosis: {reason}"]
    assert minimal is not None, "Debian's gdb-minimal package could not be unpacked"


# A socket path can hold any byte but NUL and '/': an ESC sequence, a newline, Markdown, HTML
# and CDATA specials, and a byte that is not UTF-8 (0xff, passed to QEMU as that byte).
ODD_NAME = "s\x1b[31mX\rY\nZ|<b>]]>&`\udcff.sock"
ODD_SHOWN = "s\\x1b[31mX\\rY\\nZ|<b>]]>&`\\xff.sock"      # as every text output shows it


def test_target_strings_are_escaped_in_text_markdown_and_junit(qemu, tmp_path):
    """Strings read from the target (here a socket chardev's filename, QEMU's
    "unix:PATH,server=on") are shown escaped in text, Markdown and JUnit, and are the
    target's own string in JSON (an invalid byte as the four characters \\xNN)."""
    workdir = pm.core_dir() / f"odd-{qemu}"
    workdir.mkdir()
    odd = workdir / ODD_NAME
    args = [*support.monitor_args(workdir / "mon0.sock"),
            "--chardev", f"socket,id=odd0,path={odd},server=on,wait=off"]
    with support.QemuDaemon(qemu.storage_daemon, args, workdir) as daemon:
        support.wait_until(lambda: os.path.exists(os.fsencode(odd)), 10, what="the odd socket")
        core = support.gcore(daemon.pid, workdir / "odd.core", binary=qemu.storage_daemon)
    md_path, junit_path, json_path = (tmp_path / n for n in ("r.md", "r.xml", "r.json"))
    done = pm.run_postmortem(qemu.storage_daemon, core, options=[
        pm.NO_CENSUS, "--write", f"markdown={md_path}", "--write", f"junit={junit_path}",
        "--write", f"json={json_path}"])
    assert done.returncode == 0, done.stderr
    raw = set("\x1b\r") | {"\udcff", "\xff"}
    # text: the filename column, escaped; no raw ESC/CR, and the newline did not split a row
    row = next(line for line in done.stdout.splitlines() if line.strip().startswith("odd0 "))
    assert f"{workdir}/{ODD_SHOWN}" in row, row
    assert not raw & set(done.stdout)
    assert not any(line.startswith("Z|") for line in done.stdout.splitlines())
    # Markdown: the same, with what Markdown acts on escaped, the row kept in its cells
    md = md_path.read_text()
    assert not raw & set(md)
    md_row = next(line for line in md.splitlines() if line.startswith("| odd0 |"))
    assert "/s\\\\x1b\\[31mX\\\\rY\\\\nZ\\|\\<b\\>\\]\\]\\>\\&\\`\\\\xff.sock" in md_row, md_row
    assert md_row.count(" | ") == len(CHARDEV_COLUMNS) - 1
    # JUnit: well-formed; the text report inside it, escaped the same way
    root = ET.parse(junit_path).getroot()
    out = root.find("testsuite/testcase/system-out").text
    assert f"{workdir}/{ODD_SHOWN}" in out and not raw & set(out)
    assert "]]>" not in junit_path.read_text().split("<system-out>")[1]
    # JSON: the target's string itself (valid JSON, valid UTF-8)
    report = json.loads(json_path.read_text())
    pm.validate_report(report)
    [chardev] = [c for c in report["chardevs"] if c["label"] == "odd0"]
    assert f"{workdir}/{ODD_NAME.replace(chr(0xdcff), chr(92) + 'xff')}" in chardev["filename"]


CHARDEV_COLUMNS = ("LABEL", "TYPE", "ADDRESS", "STATE", "IOC", "SIOC", "CHR_WRITE_LOCK",
                   "FILENAME")


def test_stripped_binary_is_unusable(race, tmp_path):
    stripped = support.strip_debug(race.binary, tmp_path / "qemu-storage-daemon")
    done = pm.run_postmortem(stripped, race.path)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()        # one line, saying what to install
    assert ": no QEMU debug info: type Object/Chardev unknown (is this a QEMU binary built " \
        "with -g, and does it match the core?); install its debug info: Debian: " in line
    assert "qemu-system-x86-dbgsym" in line and "debuginfo-install qemu" in line
    assert line.endswith("or set DEBUGINFOD_URLS and gdb fetches it itself "
                         "('set debuginfod enabled on')")


def test_invocation_errors_exit_2(race, tmp_path):
    missing_binary = pm.run_postmortem(tmp_path / "nope", race.path)
    assert missing_binary.returncode == 2
    assert missing_binary.stderr.strip() == f"chardev-postmortem: {tmp_path / 'nope'}: no such file"
    no_gdb = pm.run_postmortem(race.binary, race.path, options=["--gdb", str(tmp_path / "gdb")])
    assert no_gdb.returncode == 2 and "gdb not found" in no_gdb.stderr
    bad_option = pm.run_postmortem(race.binary, race.path, options=["--format", "yaml"])
    assert bad_option.returncode == 2 and "invalid choice" in bad_option.stderr
    not_elf = pm.run_postmortem(pm.SCHEMA_PATH, race.path)
    assert not_elf.returncode == 2 and "not an ELF executable" in not_elf.stderr
