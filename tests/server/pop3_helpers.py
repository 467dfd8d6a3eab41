"""A raw POP3 client for the server tests: bytes on a real socket, strict framing.

The reader here is written without ``conformance.wire`` on purpose: the server
byte-stuffs with ``conformance.wire.pop3``, so a client built on the same package
could share (and hide) its bugs. Every line must end in CRLF, every body line
starting with "." must be stuffed, and a multiline body is returned unstuffed,
with its CRLFs, exactly as RFC 1939 §3 defines the message octets.

Also here: Maildir file names and files written straight into a Maildir, the
two TLS modes the tests run in, and ``python -m reference_server`` as a
subprocess for the crash test.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raw_socket import RawSocketClient

ROOT = Path(__file__).resolve().parents[2]

#: the two ways to get a TLS session: STLS on the ``pop3`` listener, or ``pop3s``
TLS_MODES = ("stls", "pop3s")


class ServerClosed(Exception):
    """The server closed the connection before a complete response arrived."""


@dataclass(frozen=True)
class Pop3Reply:
    """One response. ``status`` is ``+OK``, ``-ERR`` or ``+`` (a SASL challenge)."""

    status: str
    code: str | None  # RFC 2449 §8 response code, upper-cased, without brackets
    text: str  # after the status (and code) and one SP
    raw: bytes  # the exact bytes read, stuffing and terminators included
    lines: tuple[bytes, ...] | None = None  # unstuffed body lines without CRLF

    @property
    def ok(self) -> bool:
        return self.status == "+OK"

    @property
    def body(self) -> bytes:
        """The multiline body, unstuffed, each line with its CRLF."""
        assert self.lines is not None, f"not a multiline response: {self.raw!r}"
        return b"".join(line + b"\r\n" for line in self.lines)

    def words(self) -> list[str]:
        """The status text split on spaces (``+OK 2 320`` -> ``["2", "320"]``)."""
        return self.text.split(" ") if self.text else []

    def capabilities(self) -> dict[str, tuple[str, ...]]:
        """CAPA body: capability tag (upper-cased) -> parameters."""
        assert self.lines is not None, self.raw
        caps: dict[str, tuple[str, ...]] = {}
        for line in self.lines:
            tag, *params = line.decode("ascii").split(" ")
            assert tag.upper() not in caps, f"capability listed twice: {line!r}"
            caps[tag.upper()] = tuple(params)
        return caps


def parse_status(line: bytes) -> tuple[str, str | None, str]:
    """(status, code, text) of one status line without its CRLF; strict RFC 1939 §3."""
    if line.startswith(b"+OK"):
        status, rest = "+OK", line[3:]
    elif line.startswith(b"-ERR"):
        status, rest = "-ERR", line[4:]
    elif line == b"+" or line.startswith(b"+ "):
        return "+", None, line[2:].decode("ascii")
    else:
        raise AssertionError(f"not a POP3 status line: {line!r}")
    assert rest == b"" or rest.startswith(b" "), f"no SP after the status: {line!r}"
    text = rest[1:].decode("utf-8")
    code = None
    if text.startswith("["):
        end = text.find("]")
        assert end > 1, f"unterminated response code: {line!r}"
        code = text[1:end].upper()
        assert re.fullmatch(
            r"[\x21-\x2e\x30-\x5c\x5e-\x7f]+(?:/[\x21-\x2e\x30-\x5c\x5e-\x7f]+)*", code
        )
        text = text[end + 1 :]
        text = text[1:] if text.startswith(" ") else text
    return status, code, text


class RawPop3(RawSocketClient):
    """A blocking POP3 client on a real socket that speaks bytes."""

    upgrade_reply = "STLS response"

    # -- sending ------------------------------------------------------------------------

    def cmd(self, line: str | bytes, *, multiline: bool = False) -> Pop3Reply:
        """Send one command line (CRLF added) and read its response."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.read_reply(multiline=multiline)

    def login(self, user: str, password: str) -> Pop3Reply:
        """USER (must be +OK), then PASS; the response to PASS."""
        reply = self.cmd(f"USER {user}")
        assert reply.ok, reply
        return self.cmd(f"PASS {password}")

    def auth_plain(self, user: str, password: str, authzid: str = "") -> Pop3Reply:
        """AUTH PLAIN with an initial response (RFC 5034 §4)."""
        return self.cmd(f"AUTH PLAIN {plain(user, password, authzid)}")

    # -- receiving ----------------------------------------------------------------------

    def read_line(self, *, status: bool = True) -> bytes:
        """One line including its CRLF (a bare LF, or a CR inside a status line, fails)."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line, self.buf = self.buf[: end + 1], self.buf[end + 1 :]
                assert line.endswith(b"\r\n"), f"line not ended by CRLF: {line!r}"
                assert not status or b"\r" not in line[:-2], f"CR in a status line: {line!r}"
                return line
            if not self._fill():
                raise ServerClosed(f"connection closed; partial line {self.buf!r}")

    def read_reply(self, *, multiline: bool = False) -> Pop3Reply:
        """One response; with ``multiline`` a +OK is followed by a body up to "." CRLF."""
        first = self.read_line()
        status, code, text = parse_status(first[:-2])
        if status != "+OK" or not multiline:
            return Pop3Reply(status, code, text, first)
        raw = [first]
        lines: list[bytes] = []
        while True:
            line = self.read_line(status=False)
            raw.append(line)
            if line == b".\r\n":
                break
            if line.startswith(b"."):
                assert line.startswith(b".."), f"body line not byte-stuffed: {line!r}"
                line = line[1:]
            lines.append(line[:-2])
        return Pop3Reply(status, code, text, b"".join(raw), tuple(lines))

    def read_replies(self, shapes: list[bool]) -> list[Pop3Reply]:
        """Responses to pipelined commands; ``shapes`` says which are multiline."""
        return [self.read_reply(multiline=multi) for multi in shapes]

    # -- TLS and closing ----------------------------------------------------------------


def plain(user: str, password: str, authzid: str = "") -> str:
    """A SASL PLAIN response, base64 (RFC 4616 §2)."""
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode("ascii")


# -- sessions against a RunningServer (tests/conftest.py) ---------------------------------


def raw_pop3(srv: Any, listener: str = "pop3", *, greeting: bool = True) -> RawPop3:
    """A raw client on ``listener`` (``pop3s``: after the TLS handshake); closed at teardown."""
    host, port = srv.addr(listener)
    client = RawPop3(host, port)
    srv._clients.append(client)
    if listener == "pop3s":
        client.starttls(srv.tls_context())
    if greeting:
        reply = client.read_reply()
        assert reply.ok, reply
    return client


def tls_session(srv: Any, mode: str, user: str | None = None) -> RawPop3:
    """A TLS session in AUTHORIZATION (``mode`` is one of TLS_MODES), logged in if ``user``."""
    if mode == "stls":
        client = raw_pop3(srv, "pop3")
        reply = client.cmd("STLS")
        assert reply.ok, reply
        client.starttls(srv.tls_context())
    else:
        assert mode == "pop3s", mode
        client = raw_pop3(srv, "pop3s")
    if user is not None:
        reply = client.login(user, srv.passwords[user])
        assert reply.ok, reply
    return client


def poplib_session(srv: Any, mode: str, user: str | None = None) -> Any:
    """A ``poplib.POP3`` (after STLS) or ``poplib.POP3_SSL``, logged in if ``user``."""
    return srv.pop3(user) if mode == "stls" else srv.pop3s(user)


def wait_for(predicate: Any, timeout: float = 3.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something true; that value (or the last one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# -- one server for a whole module -------------------------------------------------------


def shared_server(
    dev_setup: Any, data_dir: Path, *, auth_failure_delay: float = 0.05, **pop3: Any
) -> Iterator[Any]:
    """A RunningServer with the ``start_server`` defaults, for a module-scoped fixture.

    Starting and stopping a server costs about 0.1 s; tests that only need a server
    with the default settings and empty mailboxes share one and call :func:`reset`
    after each test. Tests that change settings, count auth failures (the failure
    delay grows per client address) or stop the server use ``start_server``.
    """
    from conftest import running_server

    yield from running_server(
        dev_setup, data_dir, limits={"auth_failure_delay": auth_failure_delay}, pop3=pop3
    )


def reset(srv: Any) -> None:
    """Close the test's clients, wait for their sessions to end, empty every Maildir."""
    srv.close_clients()
    srv.wait_idle()
    assert srv.server.active_sessions == 0, "a session of the last test is still running"
    if srv.config.mail_dir.exists():
        for box in srv.config.mail_dir.iterdir():
            for sub in ("tmp", "new", "cur"):
                for path in (box / sub).glob("*") if (box / sub).is_dir() else ():
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()


# -- Maildir files --------------------------------------------------------------------------


def maildir_name(seconds: int, micros: int, seq: int, host: str = "test.example") -> str:
    """A maildir(5) unique name in the store's format, ``<s>.M<us>P<pid>Q<n>.<host>``."""
    return f"{seconds}.M{micros}P{os.getpid()}Q{seq}.{host}"


def write_message(box: Path, name: str, data: bytes, sub: str = "new") -> Path:
    """Put ``data`` into ``box/sub/name`` (via tmp/ and a rename, as a delivery agent would)."""
    for d in ("tmp", "new", "cur"):
        (box / d).mkdir(parents=True, exist_ok=True)
    tmp = box / "tmp" / name.split(":")[0]
    tmp.write_bytes(data)
    target = box / sub / name
    os.rename(tmp, target)
    return target


def crlf(data: bytes) -> bytes:
    """``data`` with every bare LF made CRLF (the form whose octets POP3 counts)."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def message(subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    return (
        b"From: Sender <sender@remote.test>\r\n"
        b"To: Alice <alice@example.test>\r\n" + f"Subject: {subject}\r\n".encode() + b"\r\n" + body
    )
