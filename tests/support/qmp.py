"""A minimal, synchronous QMP client over a unix socket."""

import json
import socket
import time
from pathlib import Path
from typing import Optional


class QMPError(RuntimeError):
    """QEMU answered a command with an error, or the conversation broke."""


class QMPClient:
    """Connects to a QMP unix socket and reads the greeting; see negotiate() and execute().

    Usage:
        with QMPClient(path) as qmp:
            qmp.negotiate()
            chardevs = qmp.execute("query-chardev")
    Events received while waiting for a response are kept in .events.
    """

    def __init__(self, path, timeout: float = 10.0):
        self.path = Path(path)
        self.timeout = timeout
        self.events: list = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._buffer = b""
        try:
            self._sock.connect(str(self.path))
            self.greeting = self.read_message()
        except BaseException:
            self.close()
            raise
        if "QMP" not in self.greeting:
            self.close()
            raise QMPError(f"not a QMP greeting: {self.greeting}")

    def __enter__(self) -> "QMPClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Hang up (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._sock is None

    def read_message(self, timeout: Optional[float] = None) -> dict:
        """Read one JSON message (a greeting, response or event); QMPError on EOF or timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QMPError(f"no QMP message from {self.path} in time")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise QMPError(f"QMP connection {self.path} closed by QEMU")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def send(self, command: str, arguments: Optional[dict] = None) -> None:
        """Send COMMAND without waiting for its response."""
        message = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._sock.sendall(json.dumps(message).encode() + b"\n")

    def read_response(self, timeout: Optional[float] = None) -> dict:
        """Read messages until a response (not an event) arrives, and return it whole."""
        while True:
            message = self.read_message(timeout)
            if "event" in message:
                self.events.append(message)
            else:
                return message

    def execute(self, command: str, arguments: Optional[dict] = None):
        """Send COMMAND and return its "return" value; raise QMPError on an "error" answer."""
        self.send(command, arguments)
        response = self.read_response()
        if "error" in response:
            raise QMPError(f"{command}: {response['error']}")
        return response["return"]

    def negotiate(self) -> None:
        """Leave capabilities negotiation mode (qmp_capabilities)."""
        self.execute("qmp_capabilities")
