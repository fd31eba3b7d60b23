"""The thin layer between gdb and the modules: argument parsing, errors, output.

Every command is a ``QcgCommand`` subclass whose class docstring is its gdb ``help`` text and
whose ``build_parser`` states its arguments (argparse gives usage errors).  Every failure
reaches the user as one ``gdb.GdbError`` line; with ``QCG_DEBUG=1`` in the environment the
original exception propagates instead, for developers.
"""
import argparse
import importlib.util
import os
import sys

import gdb

from qemu_chardev.render import base as render
from qemu_chardev.model.errors import QcgError, UsageError
from qemu_chardev.target.snapshot import Snapshot, colour_wanted


def deferred(name):
    """The module ``name``, executed on its first attribute access, not now.

    gdb sources the extension at every start, and a command's readers are needed only when it
    runs: importing them all at load time cost more than gdb opening a small core.  Declared at
    module level like an import (tests/unit/test_layers.py checks these too)."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class _HelpRequested(Exception):
    pass


class ArgParser(argparse.ArgumentParser):
    """argparse that reports errors as UsageError instead of exiting gdb."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}  (see 'help {self.prog}')")

    def exit(self, status=0, message=None):
        if message:
            raise UsageError(message.strip())
        raise _HelpRequested()

    def print_help(self, file=None):
        gdb.write(self.format_help())

    def _get_formatter(self):
        # argparse would ask shutil for the terminal's size, importing shutil, bz2 and lzma
        # (~6 ms of a command's first run); gdb's `width` is the one that counts here.
        width = render.output_width()
        return self.formatter_class(prog=self.prog, width=width if width else 80)


def require_target():
    """Raise unless there is a live process or a core to look at."""
    inferior = gdb.selected_inferior()
    if inferior is None or inferior.pid == 0 or not inferior.threads():
        raise QcgError("no live process or core file: use 'gdb -p PID' or 'gdb BINARY CORE'")
    thread = gdb.selected_thread()
    if thread is not None and thread.is_running():
        raise QcgError("the process is running: interrupt it first (Ctrl-C or 'interrupt')")


def write(text):
    gdb.write(text + ("\n" if not text.endswith("\n") else ""))


class QcgCommand(gdb.Command):
    """Base class; subclasses set ``command``, ``build_parser`` and ``run``."""

    command = None
    prefix = False
    completer = gdb.COMPLETE_EXPRESSION
    needs_target = True
    # Every command's --json, declared here once; None: the command has none.
    json_help = "machine-readable output"
    # The metavar of the command's one free-text operand (an expression, a label), if any:
    # its words are joined into ``args.spec``.
    operand = None

    def __init__(self):
        if "complete" in type(self).__dict__:
            # gdb ignores a complete() method when a completer class is given.
            super().__init__(self.command, gdb.COMMAND_DATA, prefix=self.prefix)
        else:
            super().__init__(self.command, gdb.COMMAND_DATA, self.completer, self.prefix)

    def build_parser(self, parser):
        """Add this command's arguments to ``parser``."""

    def run(self, args, snap):
        """Return (text, json_object); the base class prints the right one."""
        raise NotImplementedError

    def invoke(self, argument, from_tty):
        self.dont_repeat()
        try:
            parser = ArgParser(prog=self.command, add_help=True,
                               description=(self.__doc__ or "").split("\n")[0])
            if self.json_help:
                parser.add_argument("--json", action="store_true", help=self.json_help)
            self.build_parser(parser)
            if self.operand:
                parser.add_argument("spec", metavar=self.operand, nargs="+")
            try:
                args = parser.parse_args(gdb.string_to_argv(argument))
            except _HelpRequested:
                return
            if self.operand:
                args.spec = " ".join(args.spec)
            if self.needs_target:
                require_target()
            snap = Snapshot()
            colour = colour_wanted() and not getattr(args, "json", False)
            args.colour = colour
            text, obj = self.run(args, snap)
            if getattr(args, "json", False):
                write(render.to_json_text(obj))
            elif text:
                write(text + render.problems_footer(snap.problems))
        except gdb.GdbError:
            raise
        except QcgError as exc:
            raise gdb.GdbError(str(exc)) from None
        except KeyboardInterrupt:
            raise gdb.GdbError(f"{self.command}: interrupted") from None
        except Exception as exc:  # a bug in the extension must not look like a gdb crash
            if os.environ.get("QCG_DEBUG"):
                raise
            raise gdb.GdbError(f"{self.command}: internal error: {type(exc).__name__}: {exc} "
                               "(QCG_DEBUG=1 shows the traceback)") from None


class HelpPrefix(QcgCommand):
    """A prefix command that, alone, shows its own help (its subcommands)."""
    prefix = True
    completer = gdb.COMPLETE_COMMAND

    def invoke(self, argument, from_tty):
        gdb.execute(f"help {self.command}", from_tty)


def envelope(snap, **payload):
    """The JSON object every command prints: completeness, problems, then its payload."""
    out = {"complete": not snap.problems, "problems": list(snap.problems)}
    out.update(payload)
    return out
