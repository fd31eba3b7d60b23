"""Unit tests of the pure layers: importable without gdb."""
import pathlib
import sys

GDBEXT = pathlib.Path(__file__).resolve().parents[2] / "gdbext"
if str(GDBEXT) not in sys.path:
    sys.path.insert(0, str(GDBEXT))
