"""The whole reference server: storage, accounts, TLS and every listener, run together."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

from .auth import Accounts
from .config import HTTP_KINDS, IMAP_KINDS, POP3_KINDS, SMTP_KINDS, ListenerKind, ServerConfig
from .imap.server import ImapListener
from .listener import Listener
from .outbound.control import ControlServer
from .outbound.runner import QueueRunner
from .pop3.server import Pop3Listener
from .smtp.server import SmtpListener
from .storage import MaildirStore, OutboundSpool
from .storage.imapstore import ImapStore
from .throttle import FailureThrottle
from .tls import resolve_tls_files, server_context
from .web.listener import HttpListener

__all__ = ["MailServer", "serve_until_signal"]

log = logging.getLogger("reference_server")

P = ParamSpec("P")
T = TypeVar("T")


class MailServer:
    """Builds the parts from a :class:`ServerConfig`; ``start`` opens the listeners."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.accounts = Accounts.load(config.accounts_file)
        self.store = MaildirStore(
            config.data_dir / "mail",
            workers=config.storage.delivery_threads,
            helper_process=config.storage.delivery_process,
        )
        self.spool = OutboundSpool(config.data_dir / "spool")
        self.imap_store = ImapStore(config.data_dir / "mail")
        self.ca_file: Path | None = None  # set when a development CA was generated
        self.tls_context = self._tls_context()
        self.stopping = False
        self.active_sessions = 0
        # run blocking work (disk, password checks) on the loop itself: the in-memory
        # server sets it (reference_server.memory), nothing else should
        self.inline_blocking = False
        self.auth_throttle = FailureThrottle(config.limits.auth_failure_delay)
        self.pop3_logins: dict[str, float] = {}  # user -> time of the last login (LOGIN-DELAY)
        self.listeners: list[Listener] = []
        kinds: list[tuple[frozenset[ListenerKind], type[Listener]]] = [
            (SMTP_KINDS, SmtpListener),
            (POP3_KINDS, Pop3Listener),
            (IMAP_KINDS, ImapListener),
            (HTTP_KINDS, HttpListener),
        ]
        for name, lst in config.listeners.items():
            cls = next(c for group, c in kinds if lst.kind in group)
            self.listeners.append(cls(self, name, lst.kind, lst.tls, lst.host, lst.port))
        self.bound: dict[str, tuple[str, int]] = {}
        self.queue = QueueRunner(self)
        self.control = ControlServer(self.queue, config.data_dir)

    def mailbox_for(self, address: str) -> str | None:
        """The account that receives ``address``, an address in a local domain or the bare
        ``postmaster``: the postmaster account for postmaster (RFC 5321 §4.5.1), else the
        account owning the address; None when no account does."""
        if address.partition("@")[0].lower() == "postmaster":
            return self.config.postmaster
        owner = self.accounts.owner_of(address)
        return owner.username if owner is not None else None

    async def offload(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)``, which blocks (disk work, a password check), run in a
        worker thread so the event loop keeps serving other sessions; with
        :attr:`inline_blocking`, run here on the loop instead (in memory, where the
        only client waits for this answer anyway and a thread hop costs more than
        the call)."""
        if self.inline_blocking:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def deliver_final(self, users: Sequence[str], reverse_path: str, message: bytes) -> None:
        """Final delivery into local mailboxes: ``Return-Path:`` first (RFC 5321 §4.4), stored
        durably, then IMAP sessions on those INBOXes (IDLE) are told.

        Raises:
            OSError: the message could not be stored.
        """
        stored = f"Return-Path: <{reverse_path}>\r\n".encode() + message
        if self.inline_blocking:
            self.store.deliver_sync(users, stored)
        else:
            await self.store.deliver(users, stored)
        for user in users:
            self.imap_store.notify_delivery(user)

    async def accept_message(
        self, sender: str, users: Sequence[str], remote: Sequence[str], message: bytes, peer: str
    ) -> str | None:
        """Store a submitted or received message: every local mailbox first, then the
        outbound spool for the remote recipients (the queue runner is told); returns the
        spool's queue id, if any. The SMTP handler and the web page's compose both end here.

        Raises:
            OSError: the message could not be stored (the caller says 451 / 503, never OK).
        """
        if users:
            await self.deliver_final(sorted(set(users)), sender, message)
        if not remote:
            return None
        queue_id = await self.spool.enqueue(sender, list(remote), message, received_from=peer)
        self.queue.submitted(queue_id)
        return queue_id

    def _tls_context(self) -> ssl.SSLContext | None:
        """The certificate from the config, or a generated development one; None without TLS."""
        if not any(lst.tls != "none" for lst in self.config.listeners.values()):
            return None
        files = resolve_tls_files(self.config)
        self.ca_file = files.ca_file
        return server_context(files.cert_file, files.key_file)

    async def start(self) -> dict[str, tuple[str, int]]:
        """Start the queue, open every listener; returns where each one is bound (port 0 becomes
        a real port)."""
        await self.queue.start()
        await self.control.start()
        for listener in self.listeners:
            self.bound[listener.name] = await listener.start()
            log.info(
                "listening: %s (%s) on %s:%d",
                listener.name,
                listener.kind,
                *self.bound[listener.name],
            )
        return dict(self.bound)

    async def stop(self) -> None:
        """421 to every session, close the listeners, finish storage work."""
        self.stopping = True
        await asyncio.gather(*(listener.stop() for listener in self.listeners))
        await self.control.stop()
        await self.queue.stop()
        await asyncio.to_thread(self.imap_store.close)
        await self.store.close()
        await self.spool.close()


async def serve_until_signal(
    config: ServerConfig, *, on_started: Callable[[MailServer], None] | None = None
) -> None:
    """Run until SIGINT or SIGTERM, then stop cleanly (421 to open sessions)."""
    server = MailServer(config)
    await server.start()
    if on_started is not None:
        on_started(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
