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
    async def _serve(self, conn: Connection) -> None:
        server = self.server
        reason = self.refusal()
        if reason is not None:
            conn.write(f"* BYE [UNAVAILABLE] {server.config.hostname} {reason}\r\n".encode())
            return
        session = ImapSession(self, conn)
        self.sessions.add(session)
        server.active_sessions += 1
        try:
            await session.run()
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection error: %s", session.session_id, exc)
        except Exception:  # a bug must end this session only, never the server
            log.exception("%s: internal error; session closed", session.session_id)
            conn.write(b"* BYE [SERVERBUG] internal error; closing\r\n")
        finally:
            server.active_sessions -= 1
            self.sessions.discard(session)

    async def stop(self, farewell: bytes | None = None) -> None:
        """Stop accepting; ``* BYE`` to every session (RFC 9051 §7.1.5) and close it."""
        bye = f"* BYE [UNAVAILABLE] {self.server.config.hostname} shutting down\r\n".encode()
        await super().stop(farewell or bye)
