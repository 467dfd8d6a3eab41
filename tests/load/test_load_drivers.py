"""The blocking drivers against the reference server, in-process (no locust import)."""

from __future__ import annotations

import email
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from loadsupport import LoadServer, load_server

from conformance.targets import Target, TlsMode, load_target
from loadtest.drivers import (
    ConnectError,
    Endpoint,
    ImapDriver,
    ImapReplyError,
    ListRecorder,
    Pop3Driver,
    Pop3ReplyError,
    ProtocolViolation,
    SmtpDriver,
    SmtpReplyError,
    TlsError,
)


@pytest.fixture(scope="module")
def loaded(dev_setup, tmp_path_factory) -> Iterator[tuple[LoadServer, Target]]:
    with load_server(dev_setup, tmp_path_factory.mktemp("drivers"), accounts=3) as srv:
        yield srv, load_target(srv.target_file)


def msg(token: str, body: str = "hello\r\n") -> bytes:
    return (
        f"From: user1@example.test\r\nTo: user2@example.test\r\nSubject: t {token}\r\n"
        f"Message-ID: <{token}@loadtest.invalid>\r\nX-Mailharness-Token: {token}\r\n\r\n{body}"
    ).encode()


def test_submission_with_starttls_auth_and_pipelining(loaded):
    srv, target = loaded
    rec = ListRecorder()
    smtp = SmtpDriver(Endpoint.from_target(target, "submission"), recorder=rec)
    smtp.start(username="user1", password=srv.passwords["user1"])
    assert smtp.is_tls and smtp.can_pipeline
    body = "line\r\n.leading dot\r\n" * 3
    for i in range(2):
        reply = smtp.send_message(
            "user1@example.test", ["user2@example.test", "user3@example.test"], msg(f"p{i}", body)
        )
        assert reply.code == 250
    smtp.quit()
    assert rec.names() == [
        "SMTP connect",
        "SMTP EHLO",
        "SMTP STARTTLS",
        "SMTP EHLO",
        "SMTP AUTH",
        *(["SMTP MAIL", "SMTP RCPT", "SMTP RCPT", "SMTP DATA"] * 2),
        "SMTP QUIT",
    ]
    assert all(r.exception is None for r in rec.results)
    data = [r for r in rec.results if r.name == "DATA"]
    assert all(r.response_length > len(body) for r in data)
    stored = [m for m in srv.messages("user2") if b"t p1" in m]
    assert stored and b"\r\n.leading dot\r\n" in stored[0]  # dot-stuffing undone by the server


def test_implicit_tls_login_mechanism_without_pipelining(loaded):
    srv, target = loaded
    rec = ListRecorder()
    smtp = SmtpDriver(Endpoint.from_target(target, "submissions"), recorder=rec, pipelining=False)
    smtp.start(username="user2", password=srv.passwords["user2"], mechanism="LOGIN")
    assert smtp.is_tls
    smtp.send_message("user2@example.test", ["user1@example.test"], msg("login"))
    smtp.quit()
    assert "SMTP STARTTLS" not in rec.names()
    assert rec.names()[-4:] == ["SMTP MAIL", "SMTP RCPT", "SMTP DATA", "SMTP QUIT"]


def test_bad_password_fails_the_auth_step(loaded):
    _, target = loaded
    rec = ListRecorder()
    smtp = SmtpDriver(Endpoint.from_target(target, "submission"), recorder=rec)
    with pytest.raises(SmtpReplyError) as info:
        smtp.start(username="user1", password="wrong")
    assert info.value.code.startswith("5") and info.value.step == "AUTH"
    assert repr(info.value).startswith(f"SmtpReplyError: {info.value.code} ")
    assert not smtp.is_connected
    assert rec.results[-1].name == "AUTH" and rec.results[-1].exception is info.value


def test_mx_rejects_unknown_recipient_with_5xx(loaded):
    _, target = loaded
    smtp = SmtpDriver(Endpoint.from_target(target, "mx"))
    smtp.start()
    with pytest.raises(SmtpReplyError) as info:
        smtp.send_message("someone@remote.test", ["nobody@example.test"], msg("x"))
    assert info.value.step == "RCPT" and info.value.code.startswith("5")
    assert str(info.value).startswith(info.value.code + " 5.")


def test_imap_append_search_fetch_store_expunge_idle(loaded):
    srv, target = loaded
    rec = ListRecorder()
    imap = ImapDriver(Endpoint.from_target(target, "imap"), recorder=rec)
    imap.start(username="user3", password=srv.passwords["user3"])
    assert imap.is_tls
    imap.append("INBOX", msg("imap-a").replace(b"\r\n", b"\n"))
    box = imap.select("INBOX")
    assert box.exists >= 1 and box.uidvalidity
    uids = imap.search('HEADER X-Mailharness-Token "imap-a"', uid=True)
    assert len(uids) == 1
    fetched = imap.fetch(str(uids[0]), "(UID FLAGS BODY.PEEK[])", uid=True)
    assert fetched[0].uid == uids[0]
    parsed = email.message_from_bytes(fetched[0].body or b"")
    assert parsed["X-Mailharness-Token"] == "imap-a"
    imap.store(str(uids[0]), ["\\Seen", "\\Deleted"], uid=True)
    assert fetched[0].seq in imap.expunge()

    imap.idle()
    assert imap.idle_wait(0.2) == []
    # another connection delivers; the server pushes EXISTS
    other = SmtpDriver(Endpoint.from_target(target, "mx"))
    other.start()
    other.send_message("a@remote.test", ["user3@example.test"], msg("idle"))
    other.quit()
    pushed = imap.idle_wait(8.0, until=lambda r: r.keyword == "EXISTS")
    assert any(r.keyword == "EXISTS" for r in pushed)
    imap.done()
    imap.logout()
    names = rec.names()
    for step in ("connect", "STARTTLS", "LOGIN", "APPEND", "SELECT", "SEARCH", "FETCH"):
        assert f"IMAP {step}" in names
    assert names[-3:] == ["IMAP IDLE", "IMAP DONE", "IMAP LOGOUT"]
    assert all(r.exception is None for r in rec.results)


def test_imap_literal_login_and_no(loaded):
    srv, target = loaded
    imap = ImapDriver(Endpoint.from_target(target, "imaps"))
    imap.start()
    with pytest.raises(ImapReplyError) as info:
        imap.login("user1", 'ä"weird\\')  # 8-bit: goes as a literal
    assert info.value.code == "NO" and repr(info.value).startswith("ImapReplyError: NO")
    assert not imap.is_connected
    imap.start(username="user1", password=srv.passwords["user1"])
    with pytest.raises(ImapReplyError):
        imap.select("No Such Box")


def test_pop3_retrieve_and_delete(loaded):
    srv, target = loaded
    for i in range(2):
        srv.server.deliver("user2", msg(f"pop{i}"))
    rec = ListRecorder()
    pop = Pop3Driver(Endpoint.from_target(target, "pop3"), recorder=rec)
    pop.start(username="user2", password=srv.passwords["user2"])
    count, size = pop.stat()
    assert count >= 2 and size > 0
    sizes = pop.list()
    uids = pop.uidl()
    assert set(sizes) == set(uids) == set(range(1, count + 1))
    body = pop.retr(1)
    assert len(body) == sizes[1]
    assert pop.top(1, 0).endswith(b"\r\n\r\n")
    pop.dele(1)
    pop.quit()
    pop.start(username="user2", password=srv.passwords["user2"])
    assert pop.stat()[0] == count - 1
    with pytest.raises(Pop3ReplyError) as info:
        pop.retr(999)
    assert str(info.value).startswith("-ERR")
    assert "POP3 STLS" in rec.names() and "POP3 PASS" in rec.names()


def test_pop3s_implicit_tls(loaded):
    srv, target = loaded
    pop = Pop3Driver(Endpoint.from_target(target, "pop3s"))
    pop.start(username="user1", password=srv.passwords["user1"])
    assert pop.is_tls
    assert "UIDL" in pop.capa()
    pop.quit()


def test_endpoint_from_target_errors(loaded, tmp_path: Path):
    _, target = loaded
    with pytest.raises(KeyError, match=r"no service 'nope'.*it has: .*imap"):
        Endpoint.from_target(target, "nope")
    ep = Endpoint.from_target(target, "submission")
    assert ep.tls is TlsMode.STARTTLS and ep.server_hostname == target.server_name
    assert ep.ssl_context is Endpoint.from_target(target, "imap").ssl_context  # shared


def test_connect_refused_and_wrong_tls_name(loaded):
    _, target = loaded
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    smtp = SmtpDriver(Endpoint(host="127.0.0.1", port=port, service="mx"))
    with pytest.raises(ConnectError, match=r"mx at 127\.0\.0\.1"):
        smtp.connect()
    ep = Endpoint.from_target(target, "submissions")
    bad = Endpoint(
        host=ep.host, port=ep.port, tls=ep.tls, ssl_context=ep.ssl_context, server_hostname="x.test"
    )
    with pytest.raises(TlsError, match="TLS handshake failed"):
        SmtpDriver(bad).connect()


def test_malformed_reply_is_a_protocol_violation():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"2x0 hello\r\n")
                conn.recv(100)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        rec = ListRecorder()
        smtp = SmtpDriver(Endpoint(host="127.0.0.1", port=port), recorder=rec)
        with pytest.raises(ProtocolViolation, match="RFC 5321"):
            smtp.connect()
        t.join(5)
    assert rec.results[0].exception is not None
