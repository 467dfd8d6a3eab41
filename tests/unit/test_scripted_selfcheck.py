"""Self-checks for the scripted-server library and the toy mail server."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from scripted import ScriptConn, ScriptedServer, TestCerts
from toymail import ToyMail


def _connect(srv: ScriptedServer) -> socket.socket:
    return socket.create_connection(srv.address, timeout=5)


def test_plain_conversation_and_line_terminators() -> None:
    seen: list[bytes] = []

    def handler(conn: ScriptConn) -> None:
        conn.sendline("220 hi")
        m = conn.expect(r"EHLO (\S+)")
        assert m.group(1) == "client.test"
        assert conn.last_terminator == b"\r\n"
        assert conn.recv_line() == b"bare"
        assert conn.last_terminator == b"\n"
        assert conn.recv_exact(4) == b"1234"
        conn.send(b"250 ok\r\n")
        assert conn.wait_closed()
        seen.extend(conn.received)

    with ScriptedServer(handler) as srv:
        assert srv.host == "127.0.0.1" and srv.port > 0
        with _connect(srv) as c, c.makefile("rb") as f:
            assert f.readline() == b"220 hi\r\n"
            c.sendall(b"ehlo client.test\r\nbare\n1234")
            assert f.readline() == b"250 ok\r\n"
    assert srv.connections == 1
    assert seen == [b"ehlo client.test", b"bare"]


def test_implicit_tls(test_certs: TestCerts) -> None:
    def handler(conn: ScriptConn) -> None:
        assert conn.tls
        conn.sendline("* OK tls")
        conn.expect("a LOGOUT")
        conn.sendline("a OK bye")

    with ScriptedServer(handler, tls="implicit", certs=test_certs) as srv:
        ctx = test_certs.client_context()
        with (
            _connect(srv) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as c,
            c.makefile("rb") as f,
        ):
            assert f.readline() == b"* OK tls\r\n"
            c.sendall(b"a LOGOUT\r\n")
            assert f.readline() == b"a OK bye\r\n"


def test_implicit_tls_refused_by_client_is_not_an_error(test_certs: TestCerts) -> None:
    with ScriptedServer(lambda conn: None, tls="implicit", certs=test_certs) as srv:
        untrusting = ssl.create_default_context()  # does not know the test CA
        with _connect(srv) as raw, pytest.raises(ssl.SSLCertVerificationError):
            untrusting.wrap_socket(raw, server_hostname="localhost")
    assert len(srv.tls_failures) == 1


def test_starttls(test_certs: TestCerts) -> None:
    def handler(conn: ScriptConn) -> None:
        conn.sendline("220 hi")
        conn.expect("STARTTLS")
        conn.sendline("220 go ahead")
        conn.starttls()
        assert conn.tls
        conn.expect(r"EHLO \S+")
        conn.sendline("250 secure")

    with ScriptedServer(handler, certs=test_certs) as srv, _connect(srv) as raw:
        with raw.makefile("rb") as f:
            assert f.readline() == b"220 hi\r\n"
            raw.sendall(b"STARTTLS\r\n")
            assert f.readline() == b"220 go ahead\r\n"
        ctx = test_certs.client_context()
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as c, c.makefile("rb") as f:
            c.sendall(b"EHLO x\r\n")
            assert f.readline() == b"250 secure\r\n"


def test_plaintext_pipelined_after_starttls_fails_the_test(test_certs: TestCerts) -> None:
    def handler(conn: ScriptConn) -> None:
        conn.expect("STARTTLS")  # the same segment carried the pipelined EHLO
        conn.starttls()

    srv = ScriptedServer(handler, certs=test_certs)
    with pytest.raises(AssertionError, match="pipelined plaintext"), srv, _connect(srv) as c:
        c.sendall(b"STARTTLS\r\nEHLO sneaky\r\n")
        c.recv(1)  # returns b"" when the server gives up


def test_ipv6_loopback() -> None:
    def handler(conn: ScriptConn) -> None:
        assert conn.peer[0] == "::1"
        conn.sendline("+OK v6")

    with (
        ScriptedServer(handler, host="::1") as srv,
        socket.create_connection(("::1", srv.port), timeout=5) as c,
        c.makefile("rb") as f,
    ):
        assert f.readline() == b"+OK v6\r\n"


def test_handler_assertion_surfaces_at_exit() -> None:
    def handler(conn: ScriptConn) -> None:
        conn.expect("QUIT")

    srv = ScriptedServer(handler)
    with pytest.raises(AssertionError, match=r"'QUIT'.*b'HELO x'"), srv, _connect(srv) as c:
        c.sendall(b"HELO x\r\n")
        c.recv(1)
    assert len(srv.errors) == 1


def test_handler_timeout_surfaces_and_client_eof_does_not() -> None:
    def slow(conn: ScriptConn) -> None:
        conn.recv_line(timeout=0.1)

    srv = ScriptedServer(slow)
    with pytest.raises(TimeoutError), srv, _connect(srv) as c:
        c.recv(1)

    def never(conn: ScriptConn) -> None:
        conn.expect("never")

    with ScriptedServer(never) as srv:
        _connect(srv).close()
    assert srv.errors == [] and srv.connections == 1


def test_many_concurrent_short_connections() -> None:
    def handler(conn: ScriptConn) -> None:
        conn.sendline("220 hi")
        n = conn.expect(r"PING (\d+)").group(1)
        conn.sendline(f"PONG {n}")

    def one(i: int) -> bytes:
        with socket.create_connection(srv.address, timeout=10) as c, c.makefile("rb") as f:
            f.readline()
            c.sendall(f"PING {i}\r\n".encode())
            return f.readline()

    with ScriptedServer(handler) as srv, ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(one, range(300)))
    assert replies == [f"PONG {i}\r\n".encode() for i in range(300)]
    assert srv.connections == 300


# ----------------------------------------------------------------------------- toymail


def test_toy_smtp_pop3_imap_round_trip(
    toy_servers: Any, toy: ToyMail, test_certs: TestCerts
) -> None:
    ctx = test_certs.client_context()
    msg = b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n"
    second = b"Subject: 2\r\n\r\nsecond\r\n"
    with smtplib.SMTP(toy_servers.host, toy_servers.smtp.port, local_hostname="client.test") as s:
        s.starttls(context=ctx)
        s.ehlo("client.test")
        s.login("alice", "alice-pw")
        s.sendmail("alice@example.test", ["bob@example.test"], msg)
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("alice@example.test", ["nobody@example.test"], msg)
    with smtplib.SMTP_SSL(
        toy_servers.host, toy_servers.submissions.port, local_hostname="client.test", context=ctx
    ) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("bob", "wrong")
        s.login("bob", "bob-pw")
        s.sendmail("bob@example.test", ["bob@example.test"], second)
    assert toy.mailboxes["bob"][0] == msg

    p = poplib.POP3(toy_servers.host, toy_servers.pop3.port, timeout=5)
    p.stls(context=ctx)
    p.user("bob")
    p.pass_("bob-pw")
    p2 = poplib.POP3(toy_servers.host, toy_servers.pop3.port, timeout=5)
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        p2.user("bob")
        p2.pass_("bob-pw")
    p2.quit()
    assert p.stat() == (2, len(msg) + len(second))
    assert p.retr(1)[1] == [b"Subject: hi", b"", b".leading dot", b"body"]
    assert p.uidl(2).split()[-1] == b"2"
    p.dele(2)
    p.quit()
    assert toy.mailboxes["bob"] == [msg]

    m = imaplib.IMAP4(toy_servers.host, toy_servers.imap.port, timeout=5)
    m.starttls(ssl_context=ctx)
    assert m.login("bob", "bob-pw")[0] == "OK"
    assert m.select("INBOX") == ("OK", [b"1"])
    typ, data = m.fetch("1", "(UID BODY[])")
    assert typ == "OK" and isinstance(data[0], tuple) and data[0][1] == msg
    assert m.append("INBOX", None, None, b"Subject: 3\r\n\r\nthird\r\n")[0] == "OK"
    assert m.noop()[0] == "OK" and m.untagged_responses["EXISTS"][-1] == b"2"
    m.logout()


def test_toy_imap_idle_sees_delivery(toy_servers: Any, toy: ToyMail) -> None:
    with _connect(toy_servers.imap) as c, c.makefile("rb") as f:
        assert f.readline().startswith(b"* OK [CAPABILITY IMAP4rev1")
        c.sendall(b"a LOGIN {5}\r\n")
        assert f.readline() == b"+ Ready\r\n"
        c.sendall(b'alice "alice-pw"\r\nb SELECT INBOX\r\n')
        assert f.readline() == b"a OK LOGIN completed\r\n"
        while not (line := f.readline()).startswith(b"b "):
            pass
        assert line == b"b OK [READ-WRITE] SELECT completed\r\n"
        c.sendall(b"c IDLE\r\n")
        assert f.readline() == b"+ idling\r\n"
        toy.deliver("alice", b"Subject: pushed\r\n\r\nx\r\n")
        assert f.readline() == b"* 1 EXISTS\r\n"
        c.sendall(b"DONE\r\nd LOGOUT\r\n")
        assert f.readline() == b"c OK IDLE terminated\r\n"
        assert f.readline() == b"* BYE toy logging out\r\n"


def test_toy_target_yaml(toy_servers: Any, tmp_path: Path, test_certs: TestCerts) -> None:
    data = yaml.safe_load(toy_servers.target_yaml(tmp_path / "target.yaml").read_text())
    assert data["host"] == "127.0.0.1" and data["domain"] == "example.test"
    assert data["tls"] == {"verify": True, "ca_file": str(test_certs.ca_file)}
    assert data["services"]["submissions"] == {
        "port": toy_servers.submissions.port,
        "tls": "implicit",
    }
    assert data["accounts"]["bob"] == {
        "address": "bob@example.test",
        "username": "bob",
        "password": "bob-pw",
    }
