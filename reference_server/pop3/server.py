"""A POP3 listener: ``pop3`` (cleartext with STLS, RFC 2595) or ``pop3s`` (implicit TLS)."""

from __future__ import annotations

import logging

from ..listener import Listener
from ..transport import Connection
from .session import Pop3Session

__all__ = ["Pop3Listener"]

log = logging.getLogger("reference_server.pop3")


class Pop3Listener(Listener):
    async def _serve(self, conn: Connection) -> None:
        server = self.server
        reason = self.refusal()
        if reason is not None:
            conn.write(f"-ERR [SYS/TEMP] {server.config.hostname} {reason}\r\n".encode())
            return
        session = Pop3Session(self, conn)
        self.sessions.add(session)
        server.active_sessions += 1
        try:
            await session.run()
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection error: %s", session.session_id, exc)
        except Exception:  # a bug must end this session only, never the server
            log.exception("%s: internal error; session closed", session.session_id)
            conn.write(b"-ERR [SYS/TEMP] internal error; closing\r\n")
        finally:
            server.active_sessions -= 1
            self.sessions.discard(session)
