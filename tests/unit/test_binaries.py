"""cli/binaries.py: finding a core's binary (the pure choice, the build-id search) and the
coredumpctl command lines; postmortem's BINARY rule and text display.

Files are synthesized with ``elfbuild``: executables with a build-id note, cores, objects.
"""
import pytest

import elfbuild as eb
from qemu_chardev.cli import binaries as bn
from qemu_chardev.cli import postmortem
from qemu_chardev.files.elf import CoreInfo

ID_A = "aa" * 20
ID_B = "bb" * 20
QSD = "/opt/qemu/bin/qemu-storage-daemon"


def executable(path, build_id=None, rodata=b"", e_type=eb.ET_DYN):
    """An ELF executable at PATH (directories made), with BUILD_ID and .rodata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    notes = eb.build_id_note(build_id) if build_id else eb.note(1, b"GNU", b"\0" * 16)
    image = eb.Image(e_type, sections=[eb.Section(".rodata", eb.SHT_PROGBITS, rodata)])
    image.add(eb.PT_LOAD, b"\0" * 64).add(eb.PT_NOTE, notes)
    return image.write(path)


def here(path=QSD, build_id=ID_A):
    return bn.Candidate(path, build_id=build_id)


GONE = bn.Candidate(QSD, exists=False, executable=False)


# --- the choice -----------------------------------------------------------------------------

def test_recorded_binary_with_the_cores_build_id_is_used():
    choice = bn.choose("qemu-storage-da", QSD, ID_A, here(), matches=["/else/qsd"])
    assert (choice.path, choice.how, choice.found) == (QSD, bn.RECORDED, True)
    assert choice.line() == f"binary: {QSD} (recorded in the core, build-id matches)"
    assert choice.as_json() == {"path": QSD, "how": "recorded",
                                "why": "recorded in the core, build-id matches",
                                "core_build_id": ID_A, "problem": None}


def test_another_build_at_the_recorded_path_gives_way_to_binary_dir():
    choice = bn.choose("qemu-storage-da", QSD, ID_A, here(build_id=ID_B),
                       matches=["/d/z/qsd", "/d/a/qsd"], binary_dirs=["/d"])
    assert (choice.path, choice.how) == ("/d/a/qsd", bn.BINARY_DIR)
    assert choice.why == "found in --binary-dir by build-id"


def test_missing_binary_without_binary_dir_says_what_to_give():
    choice = bn.choose("qemu-storage-da", QSD, ID_A, GONE)
    assert not choice.found and choice.path is None
    assert choice.line() == choice.problem == (
        f"binary not found: core of 'qemu-storage-da': {QSD} (recorded in the core) does not "
        f"exist; give --binary-dir DIR holding build-id {ID_A[:12]}, or BINARY")
    assert choice.as_json()["why"] is None


@pytest.mark.parametrize("recorded,where", [
    (GONE, f"{QSD} (recorded in the core) does not exist"),
    (here(build_id=ID_B), f"{QSD} (recorded in the core) is another build: build-id "
                          f"{ID_B[:12]}, the core's is {ID_A[:12]}"),
    (here(build_id=None), f"{QSD} (recorded in the core) has no build-id"),
    (bn.Candidate(QSD, executable=False), f"{QSD} (recorded in the core) is not an ELF "
                                          "executable"),
    (bn.Candidate(QSD, executable=False, problem="Permission denied"),
     f"{QSD} (recorded in the core): Permission denied"),
])
def test_not_found_in_binary_dirs_says_where_and_why(recorded, where):
    choice = bn.choose("qemu-storage-da", QSD, ID_A, recorded, matches=[],
                       binary_dirs=["/b1", "/b2"])
    assert choice.problem == (f"binary not found: core of 'qemu-storage-da': {where}; no file "
                              f"under --binary-dir /b1, /b2 has build-id {ID_A[:12]}")


def test_debuginfod_only_when_enabled_and_only_with_a_build_id():
    choice = bn.choose("qemu-system-x86", QSD, ID_A, GONE, debuginfod=True)
    assert (choice.path, choice.how, choice.found) == (None, bn.DEBUGINFOD, True)
    assert choice.line() == (f"binary: (none) (not on this machine: left to gdb's debuginfod, "
                             f"by build-id {ID_A[:12]})")
    assert bn.choose("qemu-system-x86", QSD, ID_A, GONE, debuginfod=False).how is None
    assert bn.choose("qemu-system-x86", QSD, None, GONE, debuginfod=True).how is None


def test_core_without_build_id():
    unverified = bn.choose("test-char", QSD, None, here())
    assert unverified.how == bn.UNVERIFIED
    assert unverified.why == "recorded in the core; the core holds no build-id to check it against"
    missing = bn.choose("test-char", QSD, None, GONE, binary_dirs=["/b"])
    assert missing.problem == (f"binary not found: core of 'test-char': {QSD} (recorded in the "
                               "core) does not exist; the core holds no build-id of its "
                               "executable to search for")


def test_core_that_names_no_executable():
    choice = bn.choose(None, None, ID_A, None, matches=["/b/x"], binary_dirs=["/b"])
    assert (choice.path, choice.how) == ("/b/x", bn.BINARY_DIR)
    assert bn.choose(None, None, ID_A, None).problem == (
        "binary not found: core of an unknown program: the core names no executable (no "
        f"NT_FILE note); give --binary-dir DIR holding build-id {ID_A[:12]}, or BINARY")


def test_deleted_suffix_and_given():
    assert bn.recorded_path(QSD + " (deleted)") == QSD
    assert bn.recorded_path(QSD) == QSD and bn.recorded_path(None) is None
    assert bn.choose("q", QSD + " (deleted)", ID_A, GONE).problem.startswith(
        f"binary not found: core of 'q': {QSD} (recorded")
    assert bn.given("/b/qsd").line() == "binary: /b/qsd (given on the command line)"


def test_not_qemu_reason():
    choice = bn.Choice("/usr/bin/sleep", bn.RECORDED, ID_A)
    assert bn.not_qemu("sleep", choice) == ("core of 'sleep', not of a QEMU program "
                                            "(/usr/bin/sleep, recorded in the core, build-id "
                                            "matches)")


# --- the filesystem -------------------------------------------------------------------------

def test_inspect(tmp_path):
    exe = executable(tmp_path / "qsd", ID_A)
    assert bn.inspect(str(exe)) == bn.Candidate(str(exe), build_id=ID_A)
    assert bn.inspect(str(tmp_path / "nope")).exists is False
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert bn.inspect(str(text)) == bn.Candidate(str(text), executable=False)
    core = eb.core(b"").write(tmp_path / "core")
    assert bn.inspect(str(core)).executable is False


def test_index_walks_recursively_once_and_skips_what_is_not_an_executable(tmp_path):
    top = tmp_path / "bins"
    a = executable(top / "x" / "y" / "qemu-storage-daemon", ID_A)
    b = executable(top / "test-char", ID_B)
    executable(top / "obj.o", ID_A, e_type=1)                   # ET_REL: not indexed
    eb.core(b"").write(top / "core.1")
    (top / "README").write_text("no\n")
    (top / "link").symlink_to(b)                               # a link to a file counts
    outside = executable(tmp_path / "outside" / "other", ID_A)
    (top / "dirlink").symlink_to(outside.parent)               # not followed
    index = bn.BuildIdIndex([str(top)])
    assert index._by_id is None                                # nothing walked yet
    assert index.find(ID_A) == [str(a)]
    assert index.find(ID_B) == [str(top / "link"), str(b)]        # sorted by path
    assert index.find("cc" * 20) == [] and index.find(None) == []
    assert bn.BuildIdIndex([]).find(ID_A) == []


def _core(executable_path, build_id, program="qemu-storage-da"):
    return CoreInfo(path="/c", program=program, executable=executable_path,
                    executable_build_id=build_id, lwps=[1])


def test_discover_prefers_the_recorded_binary_and_walks_only_when_needed(tmp_path):
    recorded = executable(tmp_path / "usr" / "qsd", ID_A)
    moved = executable(tmp_path / "moved" / "qsd", ID_A)
    index = bn.BuildIdIndex([str(tmp_path / "moved")])
    choice = bn.discover(_core(str(recorded), ID_A), index)
    assert (choice.path, choice.how) == (str(recorded), bn.RECORDED)
    assert index._by_id is None                                # no search was needed
    gone = bn.discover(_core(str(tmp_path / "old" / "qsd"), ID_A), index)
    assert (gone.path, gone.how) == (str(moved), bn.BINARY_DIR)
    other = bn.discover(_core(str(recorded), ID_B), index)
    assert other.problem == (
        f"binary not found: core of 'qemu-storage-da': {recorded} (recorded in the core) is "
        f"another build: build-id {ID_A[:12]}, the core's is {ID_B[:12]}; no file under "
        f"--binary-dir {tmp_path / 'moved'} has build-id {ID_B[:12]}")
    assert bn.discover(_core(str(recorded), ID_B), index, debuginfod=True).how == bn.DEBUGINFOD


def test_qemu_program_by_its_read_only_data(tmp_path):
    qsd = executable(tmp_path / "qsd", ID_A,
                     rodata=b"x\0qemu-storage-daemon version 7.2.22\nCopyright\0")
    sleep = executable(tmp_path / "sleep", ID_B, rodata=b"Usage: %s NUMBER[SUFFIX]...\0")
    assert bn.is_qemu_program(str(qsd)) and bn.qemu_version(str(qsd)) == "7.2.22"
    assert not bn.is_qemu_program(str(sleep)) and bn.qemu_version(str(sleep)) is None
    assert not bn.is_qemu_program(str(tmp_path / "missing"))


# --- coredumpctl ----------------------------------------------------------------------------

def test_coredumpctl_command_and_reasons():
    assert bn.coredumpctl_dump_argv("-1", "/tmp/w/core") == [
        "coredumpctl", "--no-pager", "dump", "--output=/tmp/w/core", "--", "-1"]
    assert bn.coredumpctl_reason(1, "No journal files were found.\nNo match found.\n") == \
        "coredumpctl: No journal files were found. No match found."
    assert bn.coredumpctl_reason(1, "") == "coredumpctl dump failed (exit 1)"
    assert bn.coredumpctl_label("COREDUMP_UID=0") == "coredumpctl COREDUMP_UID=0"
    assert str(postmortem.Stored("1234")) == "coredumpctl 1234"


# --- postmortem: the BINARY rule, the text display ------------------------------------------

def test_first_input_is_binary_only_before_cores_and_when_not_a_core(tmp_path):
    exe = str(executable(tmp_path / "qsd", ID_A))
    core = str(eb.core(b"").write(tmp_path / "core.1"))
    zst = tmp_path / "core.qsd.0.b.1.2.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 16)
    split = postmortem.split_binary
    assert split([exe, core]) == (exe, [core])
    assert split([exe], more=True) == (exe, [])                 # BINARY --coredumpctl M
    assert split([core]) == (None, [core]) and split([exe]) == (None, [exe])
    assert split([core, exe]) == (None, [core, exe])
    assert split([str(zst), core]) == (None, [str(zst), core])
    assert split([str(tmp_path), core]) == (None, [str(tmp_path), core])
    missing = str(tmp_path / "nope")
    assert split([missing, core]) == (missing, [core])          # an invocation error, as before
    assert split([]) == (None, [])


def test_parse_args_binary_and_binary_dir(tmp_path):
    exe = str(executable(tmp_path / "qsd", ID_A))
    core = str(eb.core(b"").write(tmp_path / "core.1"))
    args = postmortem.parse_args(["--binary-dir", "/a", "--binary-dir", "/b", core])
    assert (args.binary, args.cores, args.binary_dir) == (None, [core], ["/a", "/b"])
    args = postmortem.parse_args(["--coredumpctl", "7", "--coredumpctl", "qemu-img"])
    assert args.cores == [] and args.coredumpctl == ["7", "qemu-img"]
    for argv in ([], ["--binary-dir", "/a", exe, core]):
        with pytest.raises(SystemExit) as exit_:
            postmortem.parse_args(argv)
        assert exit_.value.code == postmortem.EXIT_UNUSABLE


def test_text_display_adds_why_to_the_binary_line():
    analysed = {"target": {"binary": QSD}, "error": None,
                "postmortem": {"binary": bn.Choice(QSD, bn.RECORDED, ID_A).as_json()}}
    failed = {"target": {"binary": None}, "error": "binary not found: ...",
              "postmortem": {"binary": bn.Choice(None, None, ID_A, "x").as_json()}}
    shown = postmortem.with_binary_why([analysed, failed, {"target": {}, "error": "gone"}])
    assert shown[0]["target"]["binary"] == f"{QSD} (recorded in the core, build-id matches)"
    assert analysed["target"]["binary"] == QSD                 # the report itself unchanged
    assert shown[1:] == [failed, {"target": {}, "error": "gone"}]
