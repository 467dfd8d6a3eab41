"""An IMAP listener: ``imap`` (cleartext with STARTTLS) or ``imaps`` (implicit TLS, RFC 8314)."""

from __future__ import annotations

import logging

from ..listener import Listener
from ..transport import Connection
from . import commands as _commands  # noqa: F401  (registers the mailbox and message commands)
from .session import ImapSession

__all__ = ["ImapListener"]

log = logging.getLogger("reference_server.imap")


class ImapListener(Listener):
    log = log

    def new_session(self, conn: Connection) -> ImapSession:
        return ImapSession(self, conn)

    def refused(self, reason: str) -> bytes:
        return f"* BYE [UNAVAILABLE] {self.server.config.hostname} {reason}\r\n".encode()

    def internal_error(self) -> bytes:
        return b"* BYE [SERVERBUG] internal error; closing\r\n"

    async def stop(self, farewell: bytes | None = None) -> None:
        """Stop accepting; ``* BYE`` to every session (RFC 9051 §7.1.5) and close it."""
        bye = f"* BYE [UNAVAILABLE] {self.server.config.hostname} shutting down\r\n".encode()
        await super().stop(farewell or bye)
