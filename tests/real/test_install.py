"""Installed with pip, loaded into gdb three ways: the package as a QEMU developer gets it.

A fresh virtualenv (gdb's own /usr/bin/python3 makes it) gets `pip install` of a copy of the
checkout (a copy: setuptools writes egg-info and build/ into the tree it builds), and
`python -m build` makes a wheel and an sdist that install into their own fresh virtualenvs.
pip fetches setuptools, build and the dependencies from PyPI.  Then, on a real QEMU core:
the console scripts from the venv's bin/, gdb loading the installed copy through the line
`python -m qemu_chardev --gdb-init` prints, and gdb auto-loading `qemu-storage-daemon-gdb.py`
from the debug directory and from beside the binary (where gdb's auto-load safe-path must be
widened first, or gdb declines it).  The venvs are made once per module.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import support
from support import postmortem as pm

PYTHON = "/usr/bin/python3"
LABELS = ("mon0", "cli0", "tcp0", "ring0", "null0")
PIP_TIMEOUT = 600


def run(argv, timeout=300, **kw):
    kw.setdefault("env", dict(os.environ, NO_COLOR="1", PIP_DISABLE_PIP_VERSION_CHECK="1"))
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    return done


def check(argv, timeout=300, **kw):
    done = run(argv, timeout, **kw)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def make_venv(path: Path, *requirements) -> Path:
    check([PYTHON, "-m", "venv", path])
    if requirements:
        check([path / "bin" / "pip", "install", "-q", *requirements], timeout=PIP_TIMEOUT)
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the checkout's files (tracked and new, without ignored ones)."""
    listed = check(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                   cwd=support.REPO_ROOT).stdout.split("\0")
    dest = tmp_path_factory.mktemp("checkout")
    for name in filter(None, listed):
        src = support.REPO_ROOT / name
        if "__pycache__" in name or not src.is_file():
            continue          # a file deleted in the working tree, not yet in the index
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def venv(tree, tmp_path_factory) -> Path:
    """A fresh venv with `pip install CHECKOUT`."""
    return make_venv(tmp_path_factory.mktemp("venv") / "v", tree)


@pytest.fixture(scope="module")
def dists(tree, tmp_path_factory) -> dict:
    """{"wheel": path, "sdist": path} from `python -m build` (the wheel built from the sdist)."""
    tools = make_venv(tmp_path_factory.mktemp("build") / "v", "build")
    out = tmp_path_factory.mktemp("dist")
    check([tools / "bin" / "python", "-m", "build", "--outdir", out, tree], timeout=PIP_TIMEOUT)
    [wheel], [sdist] = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def build():
    return support.require_build(support.versions_under_test()[-1], "fixed")


@pytest.fixture(scope="module")
def core(build) -> Path:
    """A gcore of a daemon with mon0 (connected), cli0, tcp0, ring0 and null0."""
    return pm.idle_core(build)


def gdb_init_file(venv: Path, where: Path) -> Path:
    line = check([venv / "bin" / "python", "-m", "qemu_chardev", "--gdb-init"], cwd="/").stdout
    path = where / "gdb-init"
    path.write_text(line)
    return path


def gdb_batch(*args, binary, core, timeout=180, env=None):
    argv = ["gdb", "-nx", "-batch", "-iex", "set style enabled off",
            "-iex", "set debuginfod enabled off", *args, binary, core]
    return run(argv, timeout, cwd="/", env=dict(os.environ, NO_COLOR="1", **(env or {})))


WHERE_FROM = "python import qemu_chardev, sys, tabulate; print('FROM', qemu_chardev.__file__); " \
             "print('CHECKOUT-ON-PATH', any('gdbext' in p for p in sys.path)); " \
             "print('PATH-END', sys.path[-1]); print('TABULATE', tabulate.__file__)"


def assert_chardev_list(text):
    assert "CHR_WRITE_LOCK" in text, text
    for label in LABELS:
        assert f"\n{label} " in text, text


def assert_installed_copy(text, venv):
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert f"FROM {site}/qemu_chardev/__init__.py\n" in text, text
    assert "CHECKOUT-ON-PATH False\n" in text, text
    # the venv's site-packages is last on gdb's path: gdb's own packages come first
    assert f"PATH-END {site}\n" in text, text
    assert "TABULATE /usr/lib/python3/dist-packages/tabulate" in text, text


# --- packaging -------------------------------------------------------------------------------

def test_build_makes_a_wheel_and_an_sdist_with_what_a_build_needs(dists):
    assert dists["wheel"].name == "qemu_chardev_gdb-0.1.0-py3-none-any.whl"
    names = check(["tar", "tzf", dists["sdist"]]).stdout.split()
    top = "qemu_chardev_gdb-0.1.0/"
    for needed in ("pyproject.toml", "setup.cfg", "README.md", "MANIFEST.in",
                   "gdbext/qemu-chardev-gdb.py", "gdbext/qemu_chardev/__init__.py",
                   "gdbext/qemu_chardev/cli/gdbload.py", "docs/report-schema.json"):
        assert top + needed in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    wheel = check([PYTHON, "-m", "zipfile", "-l", dists["wheel"]]).stdout
    assert "qemu_chardev/render/base.py" in wheel and "entry_points.txt" in wheel


def test_pip_install_gives_the_dependencies_and_both_console_scripts(venv):
    python = venv / "bin" / "python"
    done = check([python, "-c", "import qemu_chardev, tabulate, pygments, elftools; "
                  "print(qemu_chardev.__file__)"], cwd="/")
    assert done.stdout.startswith(str(venv / "lib")), done.stdout
    # numpy is the optional extra `fast`, not a requirement
    assert run([python, "-c", "import numpy"], cwd="/").returncode != 0
    for script in ("chardev-postmortem", "catch-disconnect-during-write"):
        helped = check([venv / "bin" / script, "--help"], cwd="/")
        assert f"usage: {script}" in helped.stdout
    assert "--debuginfod" in check([venv / "bin" / "chardev-postmortem", "--help"]).stdout


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_wheel_and_sdist_install_and_load_into_gdb(kind, dists, tmp_path, build, core):
    venv = make_venv(tmp_path / "v", dists[kind])
    init = gdb_init_file(venv, tmp_path)
    done = gdb_batch("-ix", init, "-ex", "qemu chardev list", "-ex", WHERE_FROM,
                     binary=build.storage_daemon, core=core)
    assert done.returncode == 0, done.stderr
    assert_chardev_list(done.stdout)
    assert_installed_copy(done.stdout, venv)
    version = check([venv / "bin" / "chardev-postmortem", "--version"], cwd="/")
    assert version.stdout.strip() == "chardev-postmortem 0.1.0"


# --- the console scripts ---------------------------------------------------------------------

def test_chardev_postmortem_from_the_venv_reports_on_a_real_core(venv, build, core):
    done = run([venv / "bin" / "chardev-postmortem", "--no-census", build.storage_daemon, core],
               timeout=600, cwd="/")
    assert done.returncode == 0, done.stderr
    assert "Findings" in done.stdout and "mon0" in done.stdout, done.stdout
    json_done = run([venv / "bin" / "chardev-postmortem", "--no-census", "--format", "json",
                     build.storage_daemon, core], timeout=600, cwd="/")
    report = __import__("json").loads(json_done.stdout)
    pm.validate_report(report)
    assert sorted(c["label"] for c in report["chardevs"]) == sorted(LABELS)


def test_catch_disconnect_during_write_from_the_venv_watches_a_live_daemon(venv, build,
                                                                           workdir):
    with support.all_chardevs_scenario(build.storage_daemon, workdir) as sc:
        done = run([venv / "bin" / "catch-disconnect-during-write", "--duration", "2",
                    "--pid", sc.daemon.pid], timeout=300, cwd="/")
        assert sc.daemon.proc.poll() is None        # detached, the daemon runs on
    assert done.returncode == 0, done.stdout + done.stderr
    assert "qemu watch-disconnect: watching" in done.stdout
    assert "catch-disconnect-during-write: 0 error(s), 0 warning(s)" in done.stdout


# --- gdb loads the installed copy ------------------------------------------------------------

def test_gdb_init_line_loads_the_installed_copy(venv, tmp_path, build, core):
    init = gdb_init_file(venv, tmp_path)
    text = init.read_text()
    assert text.count("\n") == 1 and text.startswith("python import sys; ")
    done = gdb_batch("-ix", init, "-ex", "qemu chardev list", "-ex", WHERE_FROM,
                     binary=build.storage_daemon, core=core)
    assert done.returncode == 0, done.stderr
    assert_chardev_list(done.stdout)
    assert_installed_copy(done.stdout, venv)
    assert "not importable by gdb's Python" not in done.stdout + done.stderr


def auto_load_script(venv, path: Path) -> Path:
    text = check([venv / "bin" / "python", "-m", "qemu_chardev", "--auto-load-script"],
                 cwd="/").stdout
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_auto_load_from_the_debug_directory(venv, tmp_path, build, core):
    """DIR/<realpath of the binary>-gdb.py, DIR the debug-file-directory: `$debugdir` is in
    gdb's default safe-path, so nothing needs widening.  gdb (13.1) expands `$debugdir` in
    the safe-path once, with the debug-file-directory it starts with (/usr/lib/debug): after
    `set debug-file-directory DIR` the safe-path must be set again (to the same default) for
    DIR to count, which the first run shows."""
    debugdir = tmp_path / "debug"
    binary = Path(os.path.realpath(build.storage_daemon))
    script = auto_load_script(venv, debugdir / f"{binary}-gdb.py".lstrip("/"))
    declined = gdb_batch("-iex", f"set debug-file-directory {debugdir}",
                         "-ex", "qemu chardev list", binary=binary, core=core)
    assert f'warning: File "{script}" auto-loading has been declined' in declined.stderr
    done = gdb_batch("-iex", f"set debug-file-directory {debugdir}",
                     "-iex", "set auto-load safe-path $debugdir:$datadir/auto-load",
                     "-ex", "qemu chardev list", "-ex", WHERE_FROM, "-ex", "info auto-load",
                     binary=binary, core=core)
    assert_auto_loaded(done, script, venv)
    assert "declined" not in done.stderr


def assert_auto_loaded(done, script, venv):
    """gdb loaded SCRIPT by itself (`info auto-load`), the installed copy answered."""
    assert done.returncode == 0, done.stderr
    assert_chardev_list(done.stdout)
    assert_installed_copy(done.stdout, venv)
    assert f"Yes     {script}" in done.stdout, done.stdout


@pytest.fixture
def binary_copy(build, tmp_path) -> Path:
    """The daemon copied to a folder of its own (its build folder is shared with other tests:
    a script beside it there would be found, and declined, by every gdb they run)."""
    dest = tmp_path / "bin" / "qemu-storage-daemon"
    dest.parent.mkdir()
    shutil.copy2(build.storage_daemon, dest)
    return dest


def test_auto_load_beside_the_binary_after_add_auto_load_safe_path(venv, binary_copy, core):
    script = auto_load_script(venv, binary_copy.parent / "qemu-storage-daemon-gdb.py")
    done = gdb_batch("-iex", f"add-auto-load-safe-path {binary_copy.parent}",
                     "-ex", "qemu chardev list", "-ex", WHERE_FROM, "-ex", "info auto-load",
                     binary=binary_copy, core=core)
    assert_auto_loaded(done, script, venv)


def test_auto_load_beside_the_binary_is_declined_without_the_safe_path(venv, binary_copy,
                                                                        core):
    script = auto_load_script(venv, binary_copy.parent / "qemu-storage-daemon-gdb.py")
    done = gdb_batch("-ex", "qemu chardev list", binary=binary_copy, core=core)
    assert (f'warning: File "{script}" auto-loading has been declined by your '
            "`auto-load safe-path' set to \"$debugdir:$datadir/auto-load\".") in done.stderr
    assert 'Undefined command: "qemu"' in done.stderr
    assert "CHR_WRITE_LOCK" not in done.stdout


def test_chardev_postmortem_lets_gdb_use_debuginfod_only_when_asked(venv, build, core,
                                                                      tmp_path):
    """A stand-in gdb records its environment and arguments: DEBUGINFOD_URLS reaches gdb,
    with `set debuginfod enabled on`, only with --debuginfod."""
    record = tmp_path / "seen"
    fake = tmp_path / "gdb"
    fake.write_text("#!/bin/sh\nprintf 'URLS=%s ARGS=%s\\n' \"${DEBUGINFOD_URLS-unset}\" \"$*\" "
                    f">> {record}\n")
    fake.chmod(0o755)
    env = dict(os.environ, NO_COLOR="1", DEBUGINFOD_URLS="https://debuginfod.example")
    for options in ([], ["--debuginfod"]):
        done = run([venv / "bin" / "chardev-postmortem", "--no-census", "--gdb", fake,
                    *options, build.storage_daemon, core], cwd="/", env=env)
        assert done.returncode == 2             # the stand-in printed no report
    # the runs on the core (the program may start gdb before, to check it)
    without, with_ = [line for line in record.read_text().splitlines() if "--core" in line]
    assert without.startswith("URLS=unset ") and "set debuginfod enabled off" in without
    assert with_.startswith("URLS=https://debuginfod.example ")
    assert "set debuginfod enabled on" in with_ and "debuginfod enabled off" not in with_
