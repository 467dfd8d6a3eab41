"""An HTTP listener: the web application served by aiohttp in the server's own event loop.

It is a :class:`~reference_server.listener.Listener` for the server's
bookkeeping (name, kind, bound address, start and stop with the others), but
aiohttp owns the connections: HTTP parsing, keep-alive and TLS (the server's
context, so the same certificate as the mail listeners) are its business,
through :class:`aiohttp.web.AppRunner` and a :class:`aiohttp.web.SockSite`
on a socket bound here (so port 0 reports the port the OS chose). HTTP
requests are not counted against ``limits.max_connections``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

from aiohttp import web

from ..listener import Listener, Session
from ..transport import Connection
from .app import make_app

if TYPE_CHECKING:
    from ..app import MailServer

__all__ = ["HttpListener", "web_url"]

log = logging.getLogger("reference_server.web")

SHUTDOWN_TIMEOUT = 1.0  # seconds open requests get to finish at stop


def web_url(host: str, port: int, tls: str) -> str:
    """The URL of a listener bound to ``host``:``port`` (a wildcard becomes loopback)."""
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    shown = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{'https' if tls == 'implicit' else 'http'}://{shown}:{port}/"


class HttpListener(Listener):
    """Serves :func:`~.app.make_app` on one address; ``tls`` is ``implicit`` or ``none``."""

    log = log

    def __init__(
        self, server: MailServer, name: str, kind: str, tls: str, host: str, port: int
    ) -> None:
        super().__init__(server, name, kind, tls, host, port)
        self.secure = tls == "implicit"
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where a browser finds the page (after :meth:`start`)."""
        return web_url(self.host, self.port, self.tls_mode)

    async def start(self) -> tuple[str, int]:
        """Bind and serve; returns the address (port 0 becomes the port the OS chose)."""
        ssl_ctx = self.server.tls_context if self.secure else None
        if self.secure and ssl_ctx is None:
            raise RuntimeError(f"listener {self.name!r}: tls: implicit needs a TLS certificate")
        family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family, backlog=1024)
        runner = web.AppRunner(
            make_app(self.server, secure=self.secure),
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        try:
            await runner.setup()
            site = web.SockSite(runner, sock, ssl_context=ssl_ctx, backlog=1024)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(sock.getsockname()[1])
        log.info("web access: %s", self.url)
        return self.host, self.port

    async def stop(self, farewell: bytes | None = None) -> None:
        """Stop accepting, let open requests finish briefly, close every connection."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        for site in runner.sites:
            await site.stop()  # no new connections from here on
        server = runner.server
        handlers = server.connections if server is not None else []
        transports = [h.transport for h in handlers if h.transport is not None]
        await runner.cleanup()
        await asyncio.sleep(0.05)  # let the TLS close_notify go out
        for transport in transports:
            transport.abort()  # and never wait on a peer that does not answer it

    # a Listener's per-connection hooks: aiohttp serves the connections instead

    def new_session(self, conn: Connection) -> Session:
        raise NotImplementedError("HTTP connections are served by aiohttp")

    def refused(self, reason: str) -> bytes:
        return b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

    def internal_error(self) -> bytes:
        return (
            b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
