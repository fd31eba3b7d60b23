"""Well-known paths of the repository, computed from this file's location."""

from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS_DIR.parent
EXTENSION_PATH = REPO_ROOT / "gdbext" / "qemu-chardev-gdb.py"
BUILD_SCRIPT = REPO_ROOT / "fixtures" / "qemu" / "build-qemu"
