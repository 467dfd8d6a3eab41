"""The socket half of the strict raw clients (POP3 and IMAP) the server tests use.

Each protocol's client (``pop3_helpers.RawPop3``, ``imap_helpers.RawImap``)
parses its own responses; what they share is here: a blocking socket with a
receive buffer, reading until the server closes, checking that the server
says nothing, the TLS upgrade, and vanishing without a goodbye.
"""

from __future__ import annotations

import socket
import ssl
from typing import Self

IO_TIMEOUT = 5.0


class RawSocketClient:
    """A blocking client socket with a receive buffer (``buf``)."""

    upgrade_reply = "TLS upgrade response"  # what the server answered before the handshake

    def __init__(self, host: str, port: int, *, timeout: float = IO_TIMEOUT) -> None:
        self.host = host
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        """Receive more into ``buf``; False once the server closed (or reset)."""
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_all_until_close(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        data, self.buf = self.buf, b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                return data
            if not chunk:
                return data
            data += chunk

    def assert_silent(self, seconds: float = 0.3) -> None:
        """Nothing arrives from the server for ``seconds``."""
        assert self.buf == b"", f"server sent {self.buf!r} with no command outstanding"
        self.sock.settimeout(seconds)
        try:
            data: bytes | None = self.sock.recv(4096)
        except TimeoutError:
            data = None
        finally:
            self.sock.settimeout(IO_TIMEOUT)
        assert data is None, f"server sent {data!r} with no command outstanding"

    def starttls(self, context: ssl.SSLContext) -> None:
        """Handshake now; bytes already buffered from the server would be an injection."""
        assert self.buf == b"", f"server sent bytes after its {self.upgrade_reply}: {self.buf!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)

    def abort(self) -> None:
        """Close with a TCP RST, no TLS close_notify, no goodbye: a client that vanished."""
        raw = self.sock
        if isinstance(raw, ssl.SSLSocket):
            raw = socket.socket(fileno=raw.detach())
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        raw.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
