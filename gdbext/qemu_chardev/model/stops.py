"""Why `continue` returned: the live engine's stop vocabulary (no gdb imports).

``live/engine.py`` classifies gdb's events into a ``Stop``; `qemu watch-disconnect` and
`qemu gsource trace` decide what each kind means for them.
"""
from dataclasses import dataclass
from typing import Optional

# Kinds of ``Stop`` (live/engine.py classifies gdb's events into one of these; `qemu gsource
# trace` uses the same vocabulary).
STOP_EXITED = "exited"                     # the process exited (or was detached)
STOP_CTRL_C = "ctrl-c"                     # Ctrl-C reached gdb's `continue` as KeyboardInterrupt
STOP_RESUME_FAILED = "resume-failed"       # `continue` raised a gdb error
STOP_SIGNAL = "signal"                     # the process got a signal
STOP_FOREIGN = "foreign-breakpoint"        # a breakpoint that is not ours stopped it
STOP_OURS = "ours"                         # only our breakpoints and watchpoints stopped it
STOP_OTHER = "other"                       # a stop with no signal and no breakpoint
STOP_NOTHING = "nothing"                   # `continue` returned without a stop event


@dataclass
class Stop:
    """Why `continue` returned."""
    kind: str
    signal: Optional[str] = None           # STOP_SIGNAL: its name
    interrupt: Optional[str] = None        # a SIGINT we sent: why we sent it
    exit_code: Optional[int] = None        # STOP_EXITED
    message: Optional[str] = None          # STOP_RESUME_FAILED: gdb's error
