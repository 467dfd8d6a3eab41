"""An SMTP listener: accepts connections and runs a session on each.

The listener's kind decides policy: ``mx`` takes mail for local domains
only and offers no AUTH; ``submission`` (STARTTLS, RFC 6409) and
``submissions`` (implicit TLS, RFC 8314) require AUTH and relay for the
authenticated user.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from conformance.wire.smtp import Reply

from ..faults import Faults
from ..listener import Listener
from ..transport import Connection
from .session import SmtpSession

if TYPE_CHECKING:
    from ..app import MailServer

__all__ = ["SmtpListener"]

log = logging.getLogger("reference_server.smtp")


class SmtpListener(Listener):
    def __init__(
        self, server: MailServer, name: str, kind: str, tls: str, host: str, port: int
    ) -> None:
        super().__init__(server, name, kind, tls, host, port)
        self.offers_auth = kind in ("submission", "submissions")
        self.requires_auth = self.offers_auth
        self.faults = Faults(server.config.faults, name)

    log = log

    def new_session(self, conn: Connection) -> SmtpSession:
        return SmtpSession(self, conn)

    def refused(self, reason: str) -> bytes:
        return Reply.build(421, "4.7.0", f"{self.server.config.hostname} {reason}").raw

    def internal_error(self) -> bytes:
        return Reply.build(421, "4.3.0", f"{self.server.config.hostname} internal error").raw

    async def stop(self, farewell: bytes | None = None) -> None:
        """Stop accepting; tell every session 421 (RFC 5321 §3.8) and close it."""
        hostname = self.server.config.hostname
        await super().stop(farewell or Reply.build(421, "4.3.2", f"{hostname} shutting down").raw)
