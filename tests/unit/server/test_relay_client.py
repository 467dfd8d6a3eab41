"""The relay client against scripted SMTP servers on loopback (real sockets, real TLS).

Each test scripts the server side of one conversation with a handler (tests/scripted.py)
and runs :func:`relay` with ``asyncio.run``. A failed ``expect`` in a handler fails the
test when the server is stopped. A client that simply goes away ends a handler silently,
so what the client sent is recorded (:class:`Recorder`) and asserted on afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

# tox runs mypy over all of tests/, where "scripted" resolves; a run on this file alone
# does not find it (tests/ is not on mypy's path), hence the tolerant ignore
from scripted import (  # type: ignore[import-not-found, unused-ignore]
    ScriptConn,
    ScriptedServer,
    TestCerts,
)

from reference_server.outbound.client import HopFailure, Outcome, dot_stuff, relay
from reference_server.outbound.routing import Hop
from reference_server.outbound.settings import RelayTimeouts, TlsPolicy

HELO = "mx.a.test"
SENDER = "from@a.test"
MX = "mx.b.test"
FAST = RelayTimeouts(
    connect=2.0, greeting=2.0, command=2.0, data_start=2.0, data_block=2.0, data_end=2.0
)
MESSAGE = (
    b"From: <from@a.test>\r\n"
    b"To: <to@b.test>\r\n"
    b"Subject: test\r\n"
    b"\r\n"
    b"line one\r\n"
    b".hidden\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"last line without CRLF"
)
# RFC 5321 §4.5.2: a line starting with "." gets another; the text ends with CRLF . CRLF
MESSAGE_ON_THE_WIRE = (
    b"From: <from@a.test>\r\n"
    b"To: <to@b.test>\r\n"
    b"Subject: test\r\n"
    b"\r\n"
    b"line one\r\n"
    b"..hidden\r\n"
    b"...two dots\r\n"
    b"..\r\n"
    b"last line without CRLF\r\n"
    b".\r\n"
)
Status = Literal["delivered", "deferred", "failed"]
EIGHT_BIT = "From: <from@a.test>\r\nSubject: plain\r\n\r\nGrüße aus Köln\r\n".encode()


@pytest.fixture(autouse=True)
def no_name_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client connects to IP literals only: fail if anything resolves a name."""
    real_getaddrinfo = socket.getaddrinfo

    def numeric_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None:
            text = host.decode() if isinstance(host, bytes) else str(host)
            try:
                ipaddress.ip_address(text)
            except ValueError:
                raise AssertionError(f"getaddrinfo asked to resolve {text!r}") from None
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)


# --------------------------------------------------------------------------- client side


def make_hop(
    port: int,
    tls: TlsPolicy = TlsPolicy.NONE,
    *,
    ca_file: Path | None = None,
    tls_name: str = MX,
) -> Hop:
    return Hop(
        host=MX,
        address="127.0.0.1",
        port=port,
        tls=tls,
        ca_file=ca_file,
        tls_name=tls_name,
        via="test",
    )


def run_relay(
    port: int,
    recipients: Sequence[str] = ("to@b.test",),
    *,
    message: bytes = MESSAGE,
    sender: str = SENDER,
    tls: TlsPolicy = TlsPolicy.NONE,
    ca_file: Path | None = None,
    tls_name: str = MX,
    timeouts: RelayTimeouts = FAST,
) -> dict[str, Outcome]:
    hop = make_hop(port, tls, ca_file=ca_file, tls_name=tls_name)
    return asyncio.run(
        relay(
            hop,
            helo=HELO,
            sender=sender,
            recipients=list(recipients),
            message=message,
            timeouts=timeouts,
        )
    )


def hop_failure(port: int, **kwargs: Any) -> HopFailure:
    with pytest.raises(HopFailure) as info:
        run_relay(port, **kwargs)
    return info.value


def delivered(diagnostic: str = "250 2.0.0 queued as 1234", code: str = "2.0.0") -> Outcome:
    return Outcome(status="delivered", code=code, diagnostic=diagnostic, remote_mta=MX)


# --------------------------------------------------------------------------- server side


class Recorder:
    """What the client sent on each connection: its command lines, its DATA text, TLS."""

    def __init__(self) -> None:
        # per connection, in the order the handlers started (not the order they ended)
        self.lines: list[list[str]] = []  # every line read with expect/recv_line
        self.tls: list[bool] = []  # whether TLS was on at the end
        self.data: list[bytes] = []  # every DATA text, dot-stuffed, with the final dot
        self._lock = threading.Lock()

    def wrap(self, handler: Callable[[ScriptConn], None]) -> Callable[[ScriptConn], None]:
        def run(conn: ScriptConn) -> None:
            with self._lock:
                index = len(self.lines)
                self.lines.append([])
                self.tls.append(False)
            try:
                handler(conn)
            finally:
                self.lines[index] = [line.decode("utf-8", "replace") for line in conn.received]
                self.tls[index] = conn.tls

        return run

    @property
    def commands(self) -> list[str]:
        """The lines of the only connection."""
        assert len(self.lines) == 1, f"expected one connection, got {len(self.lines)}"
        return self.lines[0]


@contextlib.contextmanager
def serve(
    handler: Callable[[ScriptConn], None], certs: TestCerts | None = None
) -> Iterator[tuple[ScriptedServer, Recorder]]:
    recorder = Recorder()
    with ScriptedServer(recorder.wrap(handler), certs=certs) as srv:
        yield srv, recorder


def send_lines(conn: ScriptConn, *lines: str) -> None:
    """Several lines in one write (line by line, Nagle and delayed ACKs would add 40 ms)."""
    conn.send("".join(f"{line}\r\n" for line in lines))


def ehlo(conn: ScriptConn, *extensions: str) -> None:
    """Expect EHLO and answer with a (multiline) 250 listing ``extensions``."""
    conn.expect(rf"EHLO {re.escape(HELO)}")
    lines = [f"{MX} greets {HELO}", *extensions]
    send_lines(conn, *(f"250-{line}" for line in lines[:-1]), f"250 {lines[-1]}")


def greet(conn: ScriptConn, *extensions: str) -> None:
    conn.sendline(f"220 {MX} ESMTP ready")
    ehlo(conn, *extensions)


def take_data(conn: ScriptConn, recorder: Recorder) -> None:
    """Expect DATA, answer 354 and read the text up to and including the final dot."""
    conn.expect("DATA")
    conn.sendline("354 End data with <CR><LF>.<CR><LF>")
    recorder.data.append(conn.recv_until(rb"\r\n\.\r\n"))


def finish(conn: ScriptConn) -> None:
    conn.expect("QUIT")
    conn.sendline("221 2.0.0 bye")


def nothing_more(conn: ScriptConn) -> None:
    """The client waits for our reply (no pipelining without PIPELINING)."""
    assert not conn.readable(0.1), "the client sent more before our reply"


def rest(conn: ScriptConn) -> None:
    """Answer whatever the client still sends until it closes: 221 to QUIT, 503 otherwise."""
    while True:
        try:
            line = conn.recv_line(timeout=3.0)
        except (EOFError, ConnectionError):
            return
        conn.sendline("221 2.0.0 bye" if line.upper() == b"QUIT" else "503 5.5.1 out of sequence")


def deliver_one(
    conn: ScriptConn, recorder: Recorder, mail: str = r"MAIL FROM:<from@a\.test>"
) -> None:
    """The usual cleartext transaction after the greeting: one recipient, delivered."""
    conn.expect(mail)
    conn.sendline("250 2.1.0 sender ok")
    conn.expect(r"RCPT TO:<to@b\.test>")
    conn.sendline("250 2.1.5 recipient ok")
    take_data(conn, recorder)
    conn.sendline("250 2.0.0 queued as 1234")
    finish(conn)


@contextlib.contextmanager
def unused_port() -> Iterator[int]:
    """A port nothing listens on: bound (so nobody else gets it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# --------------------------------------------------------------------------- dot-stuffing


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
        (b".start\r\n", b"..start\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a.b\r\n", b"a.b\r\n.\r\n"),
    ],
)
def test_dot_stuff(message: bytes, wire: bytes) -> None:
    assert dot_stuff(message) == wire


# --------------------------------------------------------------------------- transactions


def test_pipelined_transaction_with_per_recipient_results() -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "PIPELINING", "SIZE 1000000", "8BITMIME")
        # RFC 2920: MAIL and every RCPT arrive before we answer any of them
        conn.expect(rf"MAIL FROM:<from@a\.test> SIZE={len(MESSAGE)}")
        conn.expect(r"RCPT TO:<ok@b\.test>", timeout=1.0)
        conn.expect(r"RCPT TO:<busy@b\.test>", timeout=1.0)
        conn.expect(r"RCPT TO:<nobody@b\.test>", timeout=1.0)
        send_lines(
            conn,
            "250 2.1.0 sender ok",
            "250 2.1.5 recipient ok",
            "450 4.2.1 mailbox busy",
            "550 5.1.1 no such user",
        )
        take_data(conn, recorder)
        conn.sendline("250 2.0.0 queued as 1234")
        finish(conn)

    with serve(handler) as (srv, recorder):
        result = run_relay(srv.port, ["ok@b.test", "busy@b.test", "nobody@b.test"])
    assert result == {
        "ok@b.test": delivered(),
        "busy@b.test": Outcome(
            status="deferred", code="4.2.1", diagnostic="450 4.2.1 mailbox busy", remote_mta=MX
        ),
        "nobody@b.test": Outcome(
            status="failed", code="5.1.1", diagnostic="550 5.1.1 no such user", remote_mta=MX
        ),
    }
    assert recorder.data == [MESSAGE_ON_THE_WIRE]
    assert recorder.commands[-1] == "QUIT"


def test_without_pipelining_commands_go_one_at_a_time() -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "8BITMIME")
        conn.expect(r"MAIL FROM:<from@a\.test>")  # no SIZE= when SIZE is not offered
        nothing_more(conn)
        conn.sendline("250 2.1.0 sender ok")
        conn.expect(r"RCPT TO:<one@b\.test>")
        nothing_more(conn)
        conn.sendline("250 2.1.5 ok")
        conn.expect(r"RCPT TO:<two@b\.test>")
        nothing_more(conn)
        conn.sendline("550 5.1.1 no such user")
        take_data(conn, recorder)
        nothing_more(conn)
        conn.sendline("250 queued")  # no enhanced code: derived from the reply code
        finish(conn)

    with serve(handler) as (srv, recorder):
        result = run_relay(srv.port, ["one@b.test", "two@b.test"])
    assert result == {
        "one@b.test": delivered("250 queued"),
        "two@b.test": Outcome(
            status="failed", code="5.1.1", diagnostic="550 5.1.1 no such user", remote_mta=MX
        ),
    }
    assert recorder.data == [MESSAGE_ON_THE_WIRE]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-at-a-time"])
@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        ("451 4.3.0 try again later", "deferred", "4.3.0"),
        ("550 5.7.1 sender rejected", "failed", "5.7.1"),
        ("452 out of space", "deferred", "4.0.0"),
        ("553 mailbox name not allowed", "failed", "5.0.0"),
    ],
)
def test_mail_refused_applies_to_every_recipient(
    pipelining: bool, reply: str, status: Status, code: str
) -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, *(["PIPELINING"] if pipelining else []))
        conn.expect(r"MAIL FROM:<from@a\.test>")
        if pipelining:  # the RCPTs were sent with MAIL; a server answers them 503
            conn.expect(r"RCPT TO:<one@b\.test>", timeout=1.0)
            conn.expect(r"RCPT TO:<two@b\.test>", timeout=1.0)
            send_lines(conn, reply, "503 5.5.1 no valid sender", "503 5.5.1 no valid sender")
        else:
            nothing_more(conn)
            conn.sendline(reply)
        finish(conn)  # no RCPT after a refused MAIL, no DATA

    with serve(handler) as (srv, recorder):
        result = run_relay(srv.port, ["one@b.test", "two@b.test"])
    outcome = Outcome(status=status, code=code, diagnostic=reply, remote_mta=MX)
    assert result == {"one@b.test": outcome, "two@b.test": outcome}
    assert recorder.commands[-1] == "QUIT"


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-at-a-time"])
def test_no_recipient_accepted_means_no_data(pipelining: bool) -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, *(["PIPELINING"] if pipelining else []))
        conn.expect(r"MAIL FROM:<from@a\.test>")
        if not pipelining:
            conn.sendline("250 2.1.0 ok")
        conn.expect(r"RCPT TO:<one@b\.test>")
        if not pipelining:
            conn.sendline("550 5.1.1 no such user")
        conn.expect(r"RCPT TO:<two@b\.test>")
        if pipelining:
            send_lines(conn, "250 2.1.0 ok", "550 5.1.1 no such user", "451 4.7.1 greylisted")
        else:
            conn.sendline("451 4.7.1 greylisted")
        finish(conn)  # a DATA here would fail the expectation

    with serve(handler) as (srv, recorder):
        result = run_relay(srv.port, ["one@b.test", "two@b.test"])
    assert result == {
        "one@b.test": Outcome(
            status="failed", code="5.1.1", diagnostic="550 5.1.1 no such user", remote_mta=MX
        ),
        "two@b.test": Outcome(
            status="deferred",
            code="4.7.1",
            diagnostic="451 4.7.1 greylisted",
            remote_mta=MX,
        ),
    }
    assert "DATA" not in recorder.commands
    assert recorder.commands[-1] == "QUIT"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            "554 5.7.1 no valid recipients",
            Outcome(
                status="failed",
                code="5.7.1",
                diagnostic="554 5.7.1 no valid recipients",
                remote_mta=MX,
            ),
        ),
        (
            "451 local error",
            Outcome(status="deferred", code="4.0.0", diagnostic="451 local error", remote_mta=MX),
        ),
        (  # neither 354 nor an error: the hop broke the protocol, try again later
            "250 2.0.0 ok",
            Outcome(
                status="deferred",
                code="4.5.0",
                diagnostic=f"{MX} answered DATA with 250 2.0.0 ok",
                remote_mta=MX,
            ),
        ),
    ],
    ids=["554", "451", "250"],
)
def test_data_refused_applies_to_the_accepted_recipients(reply: str, expected: Outcome) -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "PIPELINING")
        conn.expect(r"MAIL FROM:<from@a\.test>")
        conn.expect(r"RCPT TO:<ok@b\.test>")
        conn.expect(r"RCPT TO:<nobody@b\.test>")
        send_lines(conn, "250 2.1.0 ok", "250 2.1.5 ok", "550 5.1.1 no such user")
        conn.expect("DATA")
        conn.sendline(reply)
        finish(conn)  # no message text after a refused DATA

    with serve(handler) as (srv, recorder):
        result = run_relay(srv.port, ["ok@b.test", "nobody@b.test"])
    assert result == {
        "ok@b.test": expected,
        "nobody@b.test": Outcome(
            status="failed", code="5.1.1", diagnostic="550 5.1.1 no such user", remote_mta=MX
        ),
    }
    assert recorder.commands[-1] == "QUIT"


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        ("451 4.3.0 queue file write error", "deferred", "4.3.0"),
        ("452 insufficient storage", "deferred", "4.0.0"),
        ("554 5.6.0 message content rejected", "failed", "5.6.0"),
    ],
)
def test_final_reply_applies_to_the_accepted_recipients(
    reply: str, status: Status, code: str
) -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn)
        conn.expect(r"MAIL FROM:<from@a\.test>")
        conn.sendline("250 2.1.0 ok")
        for _ in range(2):
            conn.expect(r"RCPT TO:<.*>")
            conn.sendline("250 2.1.5 ok")
        take_data(conn, recorder)
        conn.sendline(reply)
        finish(conn)

    with serve(handler) as (srv, recorder):
        result = run_relay(srv.port, ["one@b.test", "two@b.test"])
    outcome = Outcome(status=status, code=code, diagnostic=reply, remote_mta=MX)
    assert result == {"one@b.test": outcome, "two@b.test": outcome}
    assert recorder.data == [MESSAGE_ON_THE_WIRE]
    assert recorder.commands[-1] == "QUIT"


def test_null_sender() -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn)
        deliver_one(conn, recorder, mail="MAIL FROM:<>")

    with serve(handler) as (srv, recorder):
        assert run_relay(srv.port, sender="") == {"to@b.test": delivered()}


def test_multiline_replies() -> None:
    def handler(conn: ScriptConn) -> None:
        send_lines(conn, f"220-{MX} ESMTP", "220-no UCE", "220 welcome")
        conn.expect(rf"EHLO {re.escape(HELO)}")
        # keywords are case-insensitive; "AUTH=PLAIN" is the old syntax real servers send
        conn.send(f"250-{MX}\r\n250-AUTH=PLAIN LOGIN\r\n250-pipelining\r\n250 size 100000\r\n")
        conn.expect(rf"MAIL FROM:<from@a\.test> SIZE={len(MESSAGE)}")
        conn.expect(r"RCPT TO:<ok@b\.test>", timeout=1.0)
        conn.expect(r"RCPT TO:<gone@b\.test>", timeout=1.0)
        send_lines(
            conn,
            "250 2.1.0 ok",
            "250-2.1.5 ok,",
            "250 2.1.5 really",
            "550-5.1.1 The email account that you tried to reach does not exist.",
            "550-5.1.1 Please try double-checking the recipient's address",
            "550 5.1.1 for typos.",
        )
        take_data(conn, recorder)
        send_lines(conn, "250-2.0.0 accepted", "250 2.0.0 queued as 1234")
        finish(conn)

    with serve(handler) as (srv, recorder):
        result = run_relay(srv.port, ["ok@b.test", "gone@b.test"])
    assert result == {
        "ok@b.test": delivered("250 2.0.0 accepted 2.0.0 queued as 1234"),
        "gone@b.test": Outcome(
            status="failed",
            code="5.1.1",
            diagnostic="550 5.1.1 The email account that you tried to reach does not exist. "
            "5.1.1 Please try double-checking the recipient's address 5.1.1 for typos.",
            remote_mta=MX,
        ),
    }


# --------------------------------------------------------------------------- EHLO and HELO


def test_helo_when_ehlo_is_refused_and_then_no_extensions() -> None:
    def handler(conn: ScriptConn) -> None:
        conn.sendline(f"220 {MX} SMTP")
        conn.expect(rf"EHLO {re.escape(HELO)}")
        conn.sendline("500 5.5.1 command not recognized")
        conn.expect(rf"HELO {re.escape(HELO)}")
        conn.sendline(f"250 {MX}")
        # no SIZE=, BODY= or SMTPUTF8, and one command at a time
        conn.expect(r"MAIL FROM:<from@a\.test>")
        nothing_more(conn)
        conn.sendline("250 ok")
        conn.expect(r"RCPT TO:<to@b\.test>")
        nothing_more(conn)
        conn.sendline("250 ok")
        take_data(conn, recorder)
        conn.sendline("250 2.0.0 queued as 1234")
        finish(conn)

    with serve(handler) as (srv, recorder):
        assert run_relay(srv.port) == {"to@b.test": delivered()}


def test_ehlo_refused_with_4xx_is_a_hop_failure_without_helo() -> None:
    def handler(conn: ScriptConn) -> None:
        conn.sendline(f"220 {MX}")
        conn.expect(r"EHLO .*")
        conn.sendline("421 4.3.2 shutting down")

    with serve(handler) as (srv, recorder):
        failure = hop_failure(srv.port)
    assert failure.status == "4.3.2"
    assert failure.diagnostic == f"{MX} refused our greeting: 421 4.3.2 shutting down"
    assert not any(line.startswith("HELO") for line in recorder.commands)


def test_helo_refused_too_is_a_hop_failure() -> None:
    def handler(conn: ScriptConn) -> None:
        conn.sendline(f"220 {MX}")
        conn.expect(r"EHLO .*")
        conn.sendline("502 5.5.2 not implemented")
        conn.expect(r"HELO .*")
        conn.sendline("550 5.7.1 go away")
        rest(conn)

    with serve(handler) as (srv, _):
        failure = hop_failure(srv.port)
    assert failure.status == "4.7.1"  # a hop's refusal is never a verdict on the mail
    assert failure.diagnostic == f"{MX} refused our greeting: 550 5.7.1 go away"


# --------------------------------------------------------------------------- hop failures


@pytest.mark.parametrize(
    ("greeting", "status"),
    [("554 5.3.2 no service here", "4.3.2"), ("554 no SMTP service here", "4.0.0")],
)
def test_greeting_554_is_a_hop_failure(greeting: str, status: str) -> None:
    def handler(conn: ScriptConn) -> None:
        conn.sendline(greeting)
        rest(conn)

    with serve(handler) as (srv, recorder):
        failure = hop_failure(srv.port)
    assert failure.status == status
    assert failure.diagnostic == f"{MX} greeted with {greeting}"
    assert not any(line.startswith(("EHLO", "MAIL")) for line in recorder.commands)


def test_connection_refused_is_a_hop_failure_4_4_1() -> None:
    with unused_port() as port:
        failure = hop_failure(port)
    assert failure.status == "4.4.1"
    assert failure.diagnostic.startswith(f"connect to {MX}[127.0.0.1]:{port}: ")


def test_connection_refused_diagnostic_says_why() -> None:
    with unused_port() as port:
        failure = hop_failure(port)
    assert failure.diagnostic == f"connect to {MX}[127.0.0.1]:{port}: Connection refused"


def test_server_closing_after_the_greeting_is_a_hop_failure() -> None:
    def handler(conn: ScriptConn) -> None:
        conn.sendline(f"220 {MX}")  # and the handler returns: the server closes

    with serve(handler) as (srv, _):
        failure = hop_failure(srv.port)
    assert failure.status == "4.4.2"
    assert failure.diagnostic.startswith(f"conversation with {MX}[127.0.0.1]: ")


def test_silent_server_is_a_hop_failure_after_the_greeting_timeout() -> None:
    def handler(conn: ScriptConn) -> None:
        conn.wait_closed(timeout=5.0)

    timeouts = RelayTimeouts(
        connect=2.0, greeting=0.3, command=2.0, data_start=2.0, data_block=2.0, data_end=2.0
    )
    with serve(handler) as (srv, _):
        started = time.monotonic()
        failure = hop_failure(srv.port, timeouts=timeouts)
        assert time.monotonic() - started < 2.0
    assert failure.status == "4.4.2"
    assert failure.diagnostic == f"conversation with {MX}[127.0.0.1]: timed out"


def test_garbage_reply_is_a_hop_failure() -> None:
    def handler(conn: ScriptConn) -> None:
        conn.sendline("hello, this is not SMTP")
        rest(conn)

    with serve(handler) as (srv, _):
        failure = hop_failure(srv.port)
    assert failure.status == "4.4.2"
    assert "RFC 5321 §4.2" in failure.diagnostic


@pytest.mark.parametrize("how", ["close", "reset", "half-reply", "silence"])
def test_connection_lost_after_the_final_dot_defers(how: str) -> None:
    """RFC 5321 §6.1: the far side may have the message; a duplicate beats a loss."""

    def handler(conn: ScriptConn) -> None:
        greet(conn, "PIPELINING")
        conn.expect(r"MAIL FROM:<from@a\.test>")
        conn.expect(r"RCPT TO:<ok@b\.test>")
        conn.expect(r"RCPT TO:<nobody@b\.test>")
        send_lines(conn, "250 2.1.0 ok", "250 2.1.5 ok", "550 5.1.1 no such user")
        take_data(conn, recorder)
        if how == "reset":
            conn.abort()
        elif how == "half-reply":
            conn.send(b"250 2.0.0 queu")
        elif how == "silence":
            conn.wait_closed(timeout=5.0)
        # "close" (and the others, afterwards): the handler returns and the server closes

    timeouts = RelayTimeouts(
        connect=2.0, greeting=2.0, command=2.0, data_start=2.0, data_block=2.0, data_end=0.3
    )
    with serve(handler) as (srv, recorder):
        result = run_relay(srv.port, ["ok@b.test", "nobody@b.test"], timeouts=timeouts)
    lost = result["ok@b.test"]
    assert (lost.status, lost.code, lost.remote_mta) == ("deferred", "4.4.2", MX)
    assert lost.diagnostic.startswith(f"no answer from {MX} after the message was sent (")
    if how == "silence":
        assert lost.diagnostic.endswith("(timed out)")
    assert result["nobody@b.test"].status == "failed"  # its RCPT reply stands
    assert recorder.data == [MESSAGE_ON_THE_WIRE]


# ------------------------------------------------------------------ 8BITMIME, SMTPUTF8, SIZE


def test_8bit_body_without_8bitmime_fails_before_mail() -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "PIPELINING", "SIZE 1000000")
        rest(conn)

    with serve(handler) as (srv, recorder):
        result = run_relay(srv.port, ["one@b.test", "two@b.test"], message=EIGHT_BIT)
    outcome = Outcome(
        status="failed", code="5.6.3", diagnostic=f"{MX} does not offer 8BITMIME", remote_mta=None
    )
    assert result == {"one@b.test": outcome, "two@b.test": outcome}
    assert not any(line.startswith("MAIL") for line in recorder.commands)


def test_8bit_body_with_8bitmime_declares_it() -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "8BITMIME", "SIZE")  # SIZE without a limit
        deliver_one(
            conn, recorder, mail=rf"MAIL FROM:<from@a\.test> SIZE={len(EIGHT_BIT)} BODY=8BITMIME"
        )

    with serve(handler) as (srv, recorder):
        assert run_relay(srv.port, message=EIGHT_BIT) == {"to@b.test": delivered()}
    assert recorder.data == [EIGHT_BIT + b".\r\n"]  # the octets as they were


@pytest.mark.parametrize(
    ("sender", "recipient", "message"),
    [
        ("from@a.test", "jörg@b.test", MESSAGE),
        ("jörg@a.test", "to@b.test", MESSAGE),
        ("from@a.test", "to@b.test", "Subject: Grüße\r\n\r\nhi\r\n".encode()),
    ],
    ids=["recipient", "sender", "header"],
)
def test_smtputf8_needed(sender: str, recipient: str, message: bytes) -> None:
    def without(conn: ScriptConn) -> None:
        greet(conn, "PIPELINING", "8BITMIME")
        rest(conn)

    with serve(without) as (srv, recorder):
        result = run_relay(srv.port, [recipient], sender=sender, message=message)
    assert result == {
        recipient: Outcome(
            status="failed",
            code="5.6.7",
            diagnostic=f"{MX} does not offer SMTPUTF8",
            remote_mta=None,
        )
    }
    assert not any(line.startswith("MAIL") for line in recorder.commands)

    body = " BODY=8BITMIME" if not message.isascii() else ""

    def offering(conn: ScriptConn) -> None:
        greet(conn, "8BITMIME", "SMTPUTF8")
        conn.expect(rf"MAIL FROM:<{re.escape(sender)}>{body} SMTPUTF8")
        conn.sendline("250 2.1.0 ok")
        conn.expect(rf"RCPT TO:<{re.escape(recipient)}>")
        conn.sendline("250 2.1.5 ok")
        take_data(conn, recorder)
        conn.sendline("250 2.0.0 queued as 1234")
        finish(conn)

    with serve(offering) as (srv, recorder):
        result = run_relay(srv.port, [recipient], sender=sender, message=message)
    assert result == {recipient: delivered()}
    assert recorder.data == [dot_stuff(message)]


def test_message_larger_than_size_fails_before_mail() -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "PIPELINING", "SIZE 100")
        rest(conn)

    message = b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n"
    with serve(handler) as (srv, recorder):
        result = run_relay(srv.port, message=message)
    assert result == {
        "to@b.test": Outcome(
            status="failed",
            code="5.3.4",
            diagnostic=f"{MX} takes at most 100 octets (SIZE)",
            remote_mta=None,
        )
    }
    assert not any(line.startswith("MAIL") for line in recorder.commands)


def test_size_zero_means_no_limit() -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "SIZE 0")
        deliver_one(conn, recorder, mail=rf"MAIL FROM:<from@a\.test> SIZE={len(MESSAGE)}")

    with serve(handler) as (srv, recorder):
        assert run_relay(srv.port) == {"to@b.test": delivered()}


# --------------------------------------------------------------------------- STARTTLS


def test_may_upgrades_and_says_ehlo_again(test_certs: TestCerts) -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "STARTTLS", "SIZE 10")  # a limit that only applies before TLS
        conn.expect("STARTTLS")
        conn.sendline("220 2.0.0 ready to start TLS")
        conn.starttls()
        # RFC 3207 §4.2: the client forgets what it knew and asks again
        ehlo(conn, "PIPELINING", "SIZE 1000000")
        conn.expect(rf"MAIL FROM:<from@a\.test> SIZE={len(MESSAGE)}")
        conn.expect(r"RCPT TO:<to@b\.test>", timeout=1.0)
        send_lines(
            conn,
            "250 2.1.0 ok",
            "250 2.1.5 ok",
        )
        take_data(conn, recorder)
        conn.sendline("250 2.0.0 queued as 1234")
        finish(conn)

    with serve(handler, test_certs) as (srv, recorder):
        assert run_relay(srv.port, tls=TlsPolicy.MAY) == {"to@b.test": delivered()}
    assert recorder.tls == [True]
    assert recorder.data == [MESSAGE_ON_THE_WIRE]
    assert [line.split()[0] for line in recorder.commands if line.startswith("EHLO")] == [
        "EHLO",
        "EHLO",
    ]


def test_may_without_starttls_delivers_in_cleartext() -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "8BITMIME")
        deliver_one(conn, recorder)

    with serve(handler) as (srv, recorder):
        assert run_relay(srv.port, tls=TlsPolicy.MAY) == {"to@b.test": delivered()}
    assert recorder.tls == [False]


def test_may_goes_on_in_cleartext_when_starttls_is_refused(test_certs: TestCerts) -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "STARTTLS")
        conn.expect("STARTTLS")
        conn.sendline("454 4.7.0 TLS not available due to temporary reason")
        deliver_one(conn, recorder)

    with serve(handler, test_certs) as (srv, recorder):
        assert run_relay(srv.port, tls=TlsPolicy.MAY) == {"to@b.test": delivered()}
    assert srv.connections == 1
    assert recorder.tls == [False]


def test_policy_none_ignores_starttls(test_certs: TestCerts) -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "STARTTLS")
        deliver_one(conn, recorder)  # a STARTTLS here would fail the expectation

    with serve(handler, test_certs) as (srv, recorder):
        assert run_relay(srv.port, tls=TlsPolicy.NONE) == {"to@b.test": delivered()}


@pytest.mark.parametrize("tls", [TlsPolicy.ENCRYPT, TlsPolicy.VERIFY])
def test_required_tls_without_starttls_is_a_hop_failure(tls: TlsPolicy) -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "PIPELINING", "8BITMIME")
        rest(conn)

    with serve(handler) as (srv, recorder):
        failure = hop_failure(srv.port, tls=tls)
    assert failure.status == "4.7.4"
    assert failure.diagnostic == f"{MX} does not offer STARTTLS, and TLS is required"
    assert not any(line.startswith("MAIL") for line in recorder.commands)


def test_required_tls_refused_is_a_hop_failure(test_certs: TestCerts) -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "STARTTLS")
        conn.expect("STARTTLS")
        conn.sendline("454 4.7.0 TLS not available due to temporary reason")
        rest(conn)

    with serve(handler, test_certs) as (srv, recorder):
        failure = hop_failure(srv.port, tls=TlsPolicy.ENCRYPT)
    assert failure.status == "4.7.4"
    assert failure.diagnostic == (
        f"{MX} refused STARTTLS: 454 4.7.0 TLS not available due to temporary reason"
    )
    assert not any(line.startswith("MAIL") for line in recorder.commands)


def tls_handler(recorder: Recorder) -> Callable[[ScriptConn], None]:
    """STARTTLS, then one recipient delivered; a refused handshake ends it quietly."""

    def handler(conn: ScriptConn) -> None:
        greet(conn, "STARTTLS")
        conn.expect("STARTTLS")
        conn.sendline("220 2.0.0 go ahead")
        conn.starttls()
        ehlo(conn)
        deliver_one(conn, recorder)

    return handler


def test_encrypt_does_not_check_the_certificate(test_certs: TestCerts) -> None:
    # the hop's name (mx.b.test) is not in the certificate, whose CA we do not trust
    recorder = Recorder()
    with ScriptedServer(recorder.wrap(tls_handler(recorder)), certs=test_certs) as srv:
        assert run_relay(srv.port, tls=TlsPolicy.ENCRYPT) == {"to@b.test": delivered()}
    assert recorder.tls == [True]


def test_verify_with_the_right_ca_and_name_delivers(test_certs: TestCerts) -> None:
    recorder = Recorder()
    with ScriptedServer(recorder.wrap(tls_handler(recorder)), certs=test_certs) as srv:
        result = run_relay(
            srv.port, tls=TlsPolicy.VERIFY, ca_file=test_certs.ca_file, tls_name="localhost"
        )
    assert result == {"to@b.test": delivered()}
    assert recorder.tls == [True]
    assert recorder.data == [MESSAGE_ON_THE_WIRE]


@pytest.mark.parametrize("case", ["wrong-name", "unknown-ca"])
def test_verify_failure_is_a_hop_failure_4_7_5(test_certs: TestCerts, case: str) -> None:
    ca_file = test_certs.ca_file if case == "wrong-name" else None
    recorder = Recorder()
    with ScriptedServer(recorder.wrap(tls_handler(recorder)), certs=test_certs) as srv:
        failure = hop_failure(srv.port, tls=TlsPolicy.VERIFY, ca_file=ca_file, tls_name=MX)
    assert failure.status == "4.7.5"
    assert failure.diagnostic.startswith(f"{MX}: certificate not trusted: ")
    assert srv.connections == 1  # no cleartext retry under verify
    assert recorder.data == []
    assert not any(line.startswith("MAIL") for line in recorder.commands)


def test_replies_pipelined_before_the_handshake_are_dropped(test_certs: TestCerts) -> None:
    """RFC 3207 §4.2 (CVE-2011-0411 seen from the client): bytes after "220 go ahead" and
    before the handshake are not replies; here they arrive in the same segment as the 220,
    so the client holds them already when it starts TLS."""

    def handler(conn: ScriptConn) -> None:
        greet(conn, "STARTTLS")
        conn.expect("STARTTLS")
        conn.send(b"220 2.0.0 go ahead\r\n554 5.7.0 injected\r\n250 2.0.0 injected\r\n")
        conn.starttls()
        ehlo(conn, "SIZE 1000000")
        deliver_one(conn, recorder, mail=rf"MAIL FROM:<from@a\.test> SIZE={len(MESSAGE)}")

    with serve(handler, test_certs) as (srv, recorder):
        assert run_relay(srv.port, tls=TlsPolicy.MAY) == {"to@b.test": delivered()}
    assert srv.connections == 1
    assert recorder.tls == [True]


@pytest.mark.parametrize("how", ["garbage", "close"])
def test_may_retries_in_cleartext_when_the_handshake_fails(test_certs: TestCerts, how: str) -> None:
    connection = itertools.count(1)

    def handler(conn: ScriptConn) -> None:
        greet(conn, "STARTTLS", "PIPELINING")
        if next(connection) == 1:
            conn.expect("STARTTLS")
            conn.sendline("220 2.0.0 go ahead")
            conn.recv_exact(5)  # the ClientHello's record header: the client is in the handshake
            if how == "garbage":
                conn.send(b"this is not a TLS record\r\n" * 4)
                conn.wait_closed(timeout=3.0)
            return  # and the server closes
        # the second connection: cleartext, although STARTTLS is offered again
        conn.expect(r"MAIL FROM:<from@a\.test>")
        conn.expect(r"RCPT TO:<to@b\.test>")
        send_lines(
            conn,
            "250 2.1.0 ok",
            "250 2.1.5 ok",
        )
        take_data(conn, recorder)
        conn.sendline("250 2.0.0 queued as 1234")
        finish(conn)

    with serve(handler, test_certs) as (srv, recorder):
        assert run_relay(srv.port, tls=TlsPolicy.MAY) == {"to@b.test": delivered()}
    assert srv.connections == 2
    assert recorder.tls == [False, False]
    assert recorder.data == [MESSAGE_ON_THE_WIRE]
    assert "STARTTLS" not in recorder.lines[1]


def test_encrypt_handshake_failure_is_a_hop_failure(test_certs: TestCerts) -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "STARTTLS")
        conn.expect("STARTTLS")
        conn.sendline("220 2.0.0 go ahead")
        conn.recv_exact(5)
        conn.send(b"this is not a TLS record\r\n" * 4)
        conn.wait_closed(timeout=3.0)

    with serve(handler, test_certs) as (srv, _):
        failure = hop_failure(srv.port, tls=TlsPolicy.ENCRYPT)
    assert failure.status == "4.7.5"
    assert failure.diagnostic.startswith(f"{MX}: TLS handshake failed: ")
    assert srv.connections == 1  # no cleartext retry when TLS is required


# --------------------------------------------------------------------------- known bugs


def _no_8bitmime(conn: ScriptConn) -> None:
    greet(conn, "PIPELINING")
    rest(conn)


def _no_smtputf8(conn: ScriptConn) -> None:
    greet(conn, "PIPELINING", "8BITMIME")
    rest(conn)


def _small_size(conn: ScriptConn) -> None:
    greet(conn, "PIPELINING", "SIZE 10")
    rest(conn)


def _no_starttls(conn: ScriptConn) -> None:
    greet(conn, "PIPELINING")
    rest(conn)


def _starttls_refused(conn: ScriptConn) -> None:
    greet(conn, "STARTTLS")
    conn.expect("STARTTLS")
    conn.sendline("454 4.7.0 TLS not available")
    rest(conn)


def _greeting_554(conn: ScriptConn) -> None:
    conn.sendline("554 5.3.2 no service")
    rest(conn)  # RFC 5321 §3.1: the server waits for QUIT, answering 503 to the rest


def _helo_refused(conn: ScriptConn) -> None:
    conn.sendline(f"220 {MX}")
    conn.expect("EHLO .*")
    conn.sendline("500 5.5.1 what?")
    conn.expect("HELO .*")
    conn.sendline("550 5.7.1 go away")
    rest(conn)


@pytest.mark.parametrize(
    ("handler", "tls", "message", "recipient"),
    [
        (_no_8bitmime, TlsPolicy.NONE, EIGHT_BIT, "to@b.test"),
        (_no_smtputf8, TlsPolicy.NONE, MESSAGE, "jörg@b.test"),
        (_small_size, TlsPolicy.NONE, MESSAGE, "to@b.test"),
        (_no_starttls, TlsPolicy.ENCRYPT, MESSAGE, "to@b.test"),
        (_starttls_refused, TlsPolicy.ENCRYPT, MESSAGE, "to@b.test"),
        (_greeting_554, TlsPolicy.NONE, MESSAGE, "to@b.test"),
        (_helo_refused, TlsPolicy.NONE, MESSAGE, "to@b.test"),
    ],
    ids=["5.6.3", "5.6.7", "5.3.4", "no-starttls", "starttls-refused", "greeting-554", "helo"],
)
def test_quit_before_closing_when_giving_up(
    test_certs: TestCerts,
    handler: Callable[[ScriptConn], None],
    tls: TlsPolicy,
    message: bytes,
    recipient: str,
) -> None:
    with serve(handler, test_certs) as (srv, recorder), contextlib.suppress(HopFailure):
        run_relay(srv.port, [recipient], message=message, tls=tls)
    assert recorder.commands[-1:] == ["QUIT"]


def test_unparseable_size_parameter_is_not_a_crash() -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "SIZE ²")
        deliver_one(conn, recorder, mail=r"MAIL FROM:<from@a\.test>(?: SIZE=\d+)?")

    with serve(handler) as (srv, recorder):
        try:
            result = run_relay(srv.port)
        except HopFailure:
            return  # a fix may also refuse the hop
    assert result == {"to@b.test": delivered()}


def test_stalled_tls_handshake_respects_the_command_timeout(test_certs: TestCerts) -> None:
    def handler(conn: ScriptConn) -> None:
        greet(conn, "STARTTLS")
        conn.expect("STARTTLS")
        conn.sendline("220 2.0.0 go ahead")
        conn.wait_closed(timeout=8.0)  # reads the ClientHello and never answers it

    timeouts = RelayTimeouts(
        connect=2.0, greeting=2.0, command=0.3, data_start=2.0, data_block=2.0, data_end=2.0
    )
    with serve(handler, test_certs) as (srv, _):
        hop = make_hop(srv.port, TlsPolicy.ENCRYPT)
        call = relay(
            hop,
            helo=HELO,
            sender=SENDER,
            recipients=["to@b.test"],
            message=MESSAGE,
            timeouts=timeouts,
        )
        with pytest.raises(HopFailure) as info:
            asyncio.run(asyncio.wait_for(call, 1.5))
    assert info.value.status.startswith("4.")
