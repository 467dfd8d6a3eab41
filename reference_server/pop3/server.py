"""A POP3 listener: ``pop3`` (cleartext with STLS, RFC 2595) or ``pop3s`` (implicit TLS)."""

from __future__ import annotations

import logging

from ..listener import Listener
from ..transport import Connection
from .session import Pop3Session

__all__ = ["Pop3Listener"]

log = logging.getLogger("reference_server.pop3")


class Pop3Listener(Listener):
    log = log

    def new_session(self, conn: Connection) -> Pop3Session:
        return Pop3Session(self, conn)

    def refused(self, reason: str) -> bytes:
        return f"-ERR [SYS/TEMP] {self.server.config.hostname} {reason}\r\n".encode()

    def internal_error(self) -> bytes:
        return b"-ERR [SYS/TEMP] internal error; closing\r\n"
