"""Error types shared by every layer (importable without gdb)."""


class QcgError(Exception):
    """A failure the user should see as one clear line (never a traceback)."""


class TargetReadError(QcgError):
    """Target memory, a type or a symbol could not be read."""

    def __init__(self, what, address=None):
        self.address = address
        where = "" if address is None else f" at 0x{address:x}"
        super().__init__(f"cannot read {what}{where}")


class UsageError(QcgError):
    """The command line was malformed."""
