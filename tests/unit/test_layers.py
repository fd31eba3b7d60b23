"""The package's layering, enforced: each folder imports only the folders below it.

    commands  ->  live  ->  readers  ->  target          (gdb side)
        \\           \\          \\          \\
    cli ->  render  ->  analysis  ->  model;  files      (no gdb: unit-tested, used by scripts)

Every import in every module is checked, function-local ones and the commands' deferred
imports (``deferred("qemu_chardev...")``) included, so a dependency cannot hide.  A gdb import
in a gdb-free folder, a reader importing a command, or a script outside gdb importing the gdb
side fails here.
"""
import ast
import pathlib

import pytest

import qemu_chardev

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gdbext" / "qemu_chardev"
PACKAGE_NAME = "qemu_chardev"

# folder -> the package folders it may import (itself included).
ALLOWED = {
    "model": {"model"},
    "files": {"files", "model"},
    "analysis": {"analysis", "model"},
    "render": {"render", "analysis", "model"},
    "target": {"target", "model"},
    "readers": {"readers", "target", "analysis", "files", "model"},
    "live": {"live", "readers", "target", "render", "analysis", "model"},
    "commands": {"commands", "live", "readers", "target", "render", "analysis", "files",
                 "model"},
    # programs outside gdb: they start gdb, they never import it
    "cli": {"cli", "render", "analysis", "files", "model"},
}
# the package's own list: what its warm-up imports on a thread while gdb reads symbols
GDB_FREE = set(qemu_chardev.GDB_FREE_LAYERS) | {"cli"}
# Imports that may stay inside a function, each for a reason that the module states.
LAZY_IMPORTS_ALLOWED = {
    # `import qemu_chardev` (scripts read __version__) must not import gdb: load() does.
    ("__init__.py", "qemu_chardev.commands"),
    ("__init__.py", "qemu_chardev.render"),
    ("__init__.py", "gdb"),
    ("render/base.py", "pygments"),            # costs tens of ms; only when highlighting
    ("render/base.py", "pygments.formatters"),
    ("render/base.py", "pygments.lexers"),
    ("files/memscan.py", "numpy"),             # optional accelerator of the census scan
    # chardev-postmortem: every import before gdb starts delays it (render: tabulate, html,
    # xml; compileall: after gdb has started; lzma: .xz cores only)
    ("cli/postmortem.py", "qemu_chardev.render"),
    ("cli/postmortem.py", "compileall"),
    ("cli/postmortem.py", "lzma"),
    ("cli/postmortem.py", "qemu_chardev.model"),
    ("cli/postmortem.py", "concurrent.futures"),
    ("cli/postmortem.py", "qemu_chardev.cli"),     # binaries: dataclasses, typing
    ("cli/postmortem.py", "qemu_chardev.files"),   # elf: the same
    # pyelftools costs tens of ms to import: only when a file is parsed (files/elf._Pyelftools)
    ("files/elf.py", "elftools.common.exceptions"),
    ("files/elf.py", "elftools.construct"),
    ("files/elf.py", "elftools.elf.elffile"),
    ("files/elf.py", "elftools.elf.enums"),
    ("files/elf.py", "elftools.elf.notes"),
}
# Scripts that run outside gdb, with /usr/bin/python3 (wrappers of cli/).
GDB_FREE_SCRIPTS = ("scripts/chardev-postmortem", "scripts/catch-disconnect-during-write")
# Modules at the package root besides __init__.py.
ROOT_MODULES = {"__init__.py", "__main__.py"}


def _imports(tree):
    """(module imported, lineno, inside a function?) for every import statement."""
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Call) and getattr(child.func, "id", None) == "deferred" \
                    and child.args and isinstance(child.args[0], ast.Constant):
                out.append((child.args[0].value, child.lineno, in_function))   # lazy import
            elif isinstance(child, ast.Import):
                out.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    out.append((".", child.lineno, in_function))   # relative: not allowed
                elif child.module == PACKAGE_NAME:
                    out.extend((f"{PACKAGE_NAME}.{a.name}", child.lineno, in_function)
                               for a in child.names)
                else:
                    out.append((child.module, child.lineno, in_function))
            visit(child, nested)
    visit(tree, False)
    return out


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _folder(path):
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else None


def test_every_module_lives_in_a_known_folder():
    loose = [p.name for p in _modules() if _folder(p) is None and p.name not in ROOT_MODULES]
    assert loose == []
    assert {p.relative_to(PACKAGE).parts[0] for p in _modules() if _folder(p)} == set(ALLOWED)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
    folder = _folder(path)
    rel = str(path.relative_to(PACKAGE))
    violations = []
    for module, line, in_function in _imports(ast.parse(path.read_text(), str(path))):
        where = f"{rel}:{line} imports {module}"
        if module == ".":
            violations.append(f"{where}: relative import (use qemu_chardev....)")
            continue
        top = module.split(".")[0]
        if folder in GDB_FREE and top == "gdb":
            violations.append(f"{where}: gdb in a gdb-free folder")
        if top == PACKAGE_NAME and folder is not None:
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else None
            if target in ALLOWED and target not in ALLOWED[folder]:
                violations.append(f"{where}: {folder}/ may not import {target}/")
            if target not in ALLOWED and target not in (None, "__version__"):
                violations.append(f"{where}: unknown package part {target}")
        if in_function and (rel, module) not in LAZY_IMPORTS_ALLOWED:
            violations.append(f"{where}: import inside a function hides a dependency")
    assert violations == []


@pytest.mark.parametrize("script", GDB_FREE_SCRIPTS)
def test_scripts_outside_gdb_import_only_the_gdb_free_layers(script):
    tree = ast.parse((ROOT / script).read_text())
    bad = [m for m, _line, _f in _imports(tree)
           if m.split(".")[0] == "gdb" or (m.startswith(PACKAGE_NAME + ".") and
                                           m.split(".")[1] not in GDB_FREE | {"__version__"})]
    assert bad == []


def test_the_checker_sees_what_it_must_refuse():
    """The rules above can fail: a synthetic module breaking each of them is caught."""
    source = ("import gdb\n"
              "from qemu_chardev.commands import base\n"
              "from . import sibling\n"
              "def f():\n"
              "    from qemu_chardev.readers import qom\n"
              "live = deferred('qemu_chardev.live.watch')\n")
    found = _imports(ast.parse(source))
    assert ("gdb", 1, False) in found
    assert ("qemu_chardev.commands", 2, False) in found
    assert (".", 3, False) in found
    assert ("qemu_chardev.readers", 5, True) in found
    assert ("qemu_chardev.live.watch", 6, False) in found
