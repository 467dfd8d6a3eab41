"""An SMTP listener: accepts connections and runs a session on each.

The listener's kind decides policy: ``mx`` takes mail for local domains
only and offers no AUTH; ``submission`` (STARTTLS, RFC 6409) and
``submissions`` (implicit TLS, RFC 8314) require AUTH and relay for the
authenticated user.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from conformance.wire.smtp import Reply

from ..faults import Faults
from ..transport import Connection
from .session import SmtpSession

if TYPE_CHECKING:
    from ..app import MailServer

__all__ = ["SmtpListener"]

log = logging.getLogger("reference_server.smtp")


class SmtpListener:
    def __init__(
        self, server: MailServer, name: str, kind: str, tls: str, host: str, port: int
    ) -> None:
        self.server = server
        self.name = name
        self.kind = kind
        self.tls_mode = tls
        self.host = host
        self.port = port
        self.offers_auth = kind in ("submission", "submissions")
        self.requires_auth = self.offers_auth
        self.faults = Faults(server.config.faults, name)
        self.sessions: set[SmtpSession] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        ssl_ctx = self.server.tls_context if self.tls_mode == "implicit" else None
        self._server = await loop.create_server(
            lambda: Connection(self._serve),
            self.host,
            self.port,
            ssl=ssl_ctx,
            backlog=1024,
            reuse_address=True,
        )
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])
        return self.host, self.port

    async def _serve(self, conn: Connection) -> None:
        server = self.server
        if server.stopping or server.active_sessions >= server.config.limits.max_connections:
            reason = "shutting down" if server.stopping else "too many connections, try later"
            conn.write(Reply.build(421, "4.7.0", f"{server.config.hostname} {reason}").raw)
            return
        session = SmtpSession(self, conn)
        self.sessions.add(session)
        server.active_sessions += 1
        try:
            await session.run()
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection error: %s", session.session_id, exc)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must end this session only, never the server
            log.exception("%s: internal error; session closed", session.session_id)
            conn.write(Reply.build(421, "4.3.0", f"{server.config.hostname} internal error").raw)
        finally:
            server.active_sessions -= 1
            self.sessions.discard(session)

    async def stop(self) -> None:
        """Stop accepting; tell every session 421 (RFC 5321 §3.8) and close it."""
        if self._server is not None:
            self._server.close()
        hostname = self.server.config.hostname
        conns = [session.conn for session in self.sessions]
        for conn in conns:
            conn.write(Reply.build(421, "4.3.2", f"{hostname} shutting down").raw)
            conn.close()  # TLS: starts close_notify, which needs the loop a moment longer
            if conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in conns if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        await asyncio.sleep(0.05)  # let the close_notify go out
        for conn in conns:
            conn.abort()  # and never wait on a peer that does not answer it
        if self._server is not None:
            await self._server.wait_closed()
