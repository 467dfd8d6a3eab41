"""What every listener shares: the listening socket, the connection limit, and shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from .transport import TLS_SHUTDOWN_TIMEOUT, Connection

if TYPE_CHECKING:
    from .app import MailServer

__all__ = ["Listener", "Session"]


class Session(Protocol):
    conn: Connection
    session_id: str

    async def run(self) -> None: ...


class Listener:
    """One listening socket of the server; subclasses serve each connection."""

    def __init__(
        self, server: MailServer, name: str, kind: str, tls: str, host: str, port: int
    ) -> None:
        self.server = server
        self.name = name
        self.kind = kind
        self.tls_mode = tls
        self.host = host
        self.port = port
        self.sessions: set[Session] = set()
        # every open connection, including those whose session ended while TLS closes
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None

    def _connection(self) -> Connection:
        conn = Connection(self._serve, on_lost=self.connections.discard)
        self.connections.add(conn)
        return conn

    async def start(self) -> tuple[str, int]:
        """Bind and listen; returns the address (port 0 becomes the port the OS chose)."""
        loop = asyncio.get_running_loop()
        ssl_ctx = self.server.tls_context if self.tls_mode == "implicit" else None
        self._server = await loop.create_server(
            self._connection,
            self.host,
            self.port,
            ssl=ssl_ctx,
            ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT if ssl_ctx is not None else None,
            backlog=1024,
            reuse_address=True,
        )
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])
        return self.host, self.port

    def refusal(self) -> str | None:
        """Why a new connection is turned away now (shutdown, too many), or None."""
        server = self.server
        if server.stopping:
            return "shutting down"
        if server.active_sessions >= server.config.limits.max_connections:
            return "too many connections, try later"
        return None

    # -- what a protocol fills in ----------------------------------------------------------

    log = logging.getLogger("reference_server")

    def new_session(self, conn: Connection) -> Session:
        raise NotImplementedError

    def refused(self, reason: str) -> bytes:
        """What a connection turned away hears (a 421, ``-ERR [SYS/TEMP]``, ``* BYE``)."""
        raise NotImplementedError

    def internal_error(self) -> bytes:
        """What a session hears when a bug ends it."""
        raise NotImplementedError

    async def _serve(self, conn: Connection) -> None:
        reason = self.refusal()
        if reason is not None:
            conn.write(self.refused(reason))
            return
        server = self.server
        session = self.new_session(conn)
        self.sessions.add(session)
        server.active_sessions += 1
        try:
            await session.run()
        except (ConnectionError, OSError) as exc:
            self.log.info("%s: connection error: %s", session.session_id, exc)
        except Exception:  # a bug must end this session only, never the server
            self.log.exception("%s: internal error; session closed", session.session_id)
            conn.write(self.internal_error())
        finally:
            server.active_sessions -= 1
            self.sessions.discard(session)

    async def stop(self, farewell: bytes | None = None) -> None:
        """Stop accepting; send ``farewell`` to every session and close it."""
        if self._server is not None:
            self._server.close()
        conns = [session.conn for session in self.sessions]
        for conn in conns:
            if farewell:
                conn.write(farewell)
            conn.close()  # TLS: starts close_notify, which needs the loop a moment longer
            if conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in conns if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        await asyncio.sleep(0.05)  # let the close_notify go out
        for conn in [*conns, *self.connections]:
            conn.abort()  # and never wait on a peer that does not answer it
        if self._server is not None:
            await self._server.wait_closed()
