"""Pieces for outbound tests: a next-hop SMTP sink and whole server instances on loopback.

:class:`Sink` plays the recipient's server on a :class:`~scripted.ScriptedServer`:
it records what it accepts and answers each transaction as the test says.
:func:`write_instance` writes the config of one reference-server instance (its
own hostname, domain, accounts and routes) for :class:`ServerThread` or a
subprocess. Nothing resolves a name: routes are IP literals and the resolver,
where one is configured at all, is a loopback port nobody answers on.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from scripted import ScriptConn, ScriptedServer

from reference_server.auth import hash_password

__all__ = ["Accepted", "Instance", "Sink", "parse", "wait_for", "write_instance"]

Decide = Callable[[int], str]  # transaction number (1-based) -> final reply to DATA


@dataclass(frozen=True)
class Accepted:
    """One message the sink answered 2xx for (on a connection still open)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    at: float


@dataclass
class Sink:
    """A next hop that accepts everything, or answers DATA as ``decide`` says.

    ``rcpt`` maps a recipient to the reply to its RCPT (default 250). With
    ``hold`` set, the sink keeps the final reply of transaction ``hold`` until
    :attr:`release` is set, and records the message only if the client is still
    there then (a real server drops a transaction whose client vanished).
    """

    decide: Decide = lambda n: "250 2.0.0 queued"
    rcpt: Mapping[str, str] = field(default_factory=dict)
    hold: int | None = None
    accepted: list[Accepted] = field(default_factory=list)
    transactions: list[float] = field(default_factory=list)  # when each DATA ended
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    delay: float = 0.0  # seconds before answering DATA (to make deliveries overlap)
    connected: int = 0  # connections open now
    most_connected: int = 0  # the most open at once
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: ScriptedServer | None = None

    def __enter__(self) -> Sink:
        self.server = ScriptedServer(self.handler).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        assert self.server is not None
        self.server.__exit__(None, None, None)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def handler(self, conn: ScriptConn) -> None:
        with self._lock:
            self.connected += 1
            self.most_connected = max(self.most_connected, self.connected)
        done = [False]
        try:
            self._converse(conn, done)
        finally:
            if not done[0]:
                self._disconnected(done)

    def _disconnected(self, done: list[bool]) -> None:
        with self._lock:
            self.connected -= 1
        done[0] = True

    def _converse(self, conn: ScriptConn, done: list[bool]) -> None:
        conn.sendline("220 sink.test ESMTP")
        sender, recipients = "", list[str]()
        while True:
            line = conn.recv_line(timeout=30).decode("utf-8", "surrogateescape")
            verb = line[:4].upper()
            if verb == "EHLO":
                conn.send("250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
            elif verb == "HELO":
                conn.sendline("250 sink.test")
            elif verb == "MAIL":
                sender, recipients = line[10:].partition(">")[0].lstrip("<"), []
                conn.sendline("250 2.1.0 ok")
            elif verb == "RCPT":
                address = line[8:].partition(">")[0].lstrip("<")
                reply = self.rcpt.get(address, "250 2.1.5 ok")
                if reply.startswith("2"):
                    recipients.append(address)
                conn.sendline(reply)
            elif verb == "DATA":
                conn.sendline("354 go ahead")
                data = conn.recv_until(rb"\r\n\.\r\n", timeout=30)
                self._finish(conn, sender, recipients, data)
            elif verb == "QUIT":
                # no longer counted before the client can read the 221: a client that
                # connects again at once must not find this one still counted
                self._disconnected(done)
                conn.sendline("221 2.0.0 bye")
                return
            else:
                conn.sendline("250 2.0.0 ok")

    def _finish(self, conn: ScriptConn, sender: str, recipients: list[str], data: bytes) -> None:
        with self._lock:
            self.transactions.append(time.monotonic())
            number = len(self.transactions)
        reply = self.decide(number)
        time.sleep(self.delay)
        if number == self.hold:
            self.holding.set()
            self.release.wait(30)
            if conn.wait_closed(timeout=0.5):
                return  # the client is gone: nothing was acknowledged, nothing kept
        if reply.startswith("2"):
            body = data[: -len(b".\r\n")].replace(b"\r\n..", b"\r\n.")
            with self._lock:
                self.accepted.append(Accepted(sender, tuple(recipients), body, time.monotonic()))
        conn.sendline(reply)


def parse(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Instance:
    """The files of one server instance."""

    config: Path
    passwords: dict[str, str]
    data_dir: Path

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    def maildir_new(self, user: str) -> list[bytes]:
        new = self.data_dir / "mail" / user / "new"
        if not new.is_dir():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir())]


def write_instance(
    base: Path,
    *,
    domain: str,
    users: tuple[str, ...] = ("alice", "bob"),
    relay: Mapping[str, Any] | None = None,
    queue: Mapping[str, Any] | None = None,
    listeners: tuple[str, ...] = ("mx", "submission"),
) -> Instance:
    """A server for ``domain`` (hostname ``mail.<domain>``) with its accounts, in ``base``."""
    base.mkdir(parents=True, exist_ok=True)
    passwords = {user: f"pw-{user}-{domain}" for user in users}
    accounts = {
        "accounts": {
            user: {"password": hash_password(pw), "addresses": [f"{user}@{domain}"]}
            for user, pw in passwords.items()
        }
    }
    (base / "accounts.yaml").write_text(yaml.safe_dump(accounts))
    tls_of = {"mx": "starttls", "submission": "starttls", "submissions": "implicit"}
    config = {
        "hostname": f"mail.{domain}",
        "domains": [domain],
        "data_dir": "./data",
        "accounts_file": "./accounts.yaml",
        "postmaster": users[0],
        "tls": {"generate": True},
        "listeners": {
            name: {"kind": name, "host": "127.0.0.1", "port": 0, "tls": tls_of[name]}
            for name in listeners
        },
        "limits": {"auth_failure_delay": 0.05},
        "relay": {
            "dns": {"nameservers": ["127.0.0.1"], "port": 1, "timeout": 0.5},
            **(relay or {}),
        },
        "queue": {
            "test_timing": True,
            "retry_interval": 0.3,
            "max_retry_interval": 0.3,
            **(queue or {}),
        },
    }
    path = base / "server.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return Instance(config=path, passwords=passwords, data_dir=base / "data")
