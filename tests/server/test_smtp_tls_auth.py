"""STARTTLS (RFC 3207), the command-injection guard (CVE-2011-0411), AUTH (RFC 4954,
RFC 4616) and message submission policy (RFC 6409, RFC 8314)."""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import email.utils
import smtplib
import time

import pytest


def _plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _tls_session(srv, listener="submission"):
    """A raw client on ``listener`` after EHLO, STARTTLS and EHLO again."""
    client = srv.raw(listener)
    client.ehlo()
    assert client.cmd("STARTTLS").code == 220
    client.starttls(srv.tls_context())
    client.ehlo()
    return client


def _assert_silent(client, seconds=0.3):
    """Nothing arrives from the server for ``seconds`` (no reply to an injected command)."""
    client.sock.settimeout(seconds)
    try:
        data = client.sock.recv(4096)
    except TimeoutError:
        data = None
    finally:
        client.sock.settimeout(5.0)
    assert data is None, f"server sent {data!r} with no command outstanding"


# -- STARTTLS --------------------------------------------------------------------------


def test_starttls_resets_the_session(mail_server):
    client = mail_server.raw("mx")
    client.ehlo()
    reply = client.cmd("STARTTLS")
    assert reply.code == 220
    client.starttls(mail_server.tls_context())
    # RFC 3207 §4.2: the server forgets the EHLO; a new one is needed
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 503
    client.ehlo()
    assert client.send_message(b"Subject: over tls\r\n\r\n\r\n").code == 250
    assert len(mail_server.messages("alice")) == 1


def test_starttls_with_smtplib_verifies_against_the_dev_ca(mail_server):
    client = mail_server.smtp("mx")
    code, _ = client.starttls(context=mail_server.tls_context())
    assert code == 220
    client.ehlo()
    assert not client.has_extn("starttls")
    client.sendmail("sender@remote.test", ["bob@example.test"], b"Subject: s\r\n\r\nx\r\n")
    assert len(mail_server.messages("bob")) == 1


def test_starttls_with_an_argument_is_501(mail_server):
    client = mail_server.raw("mx")
    client.ehlo()
    reply = client.cmd("STARTTLS now")
    assert reply.code == 501
    assert client.cmd("NOOP").code == 250  # still cleartext, still talking


def test_starttls_before_ehlo_is_503(mail_server):
    client = mail_server.raw("mx")
    assert client.cmd("STARTTLS").code == 503
    assert client.cmd("NOOP").code == 250


def test_second_starttls_inside_tls_is_503(mail_server):
    client = _tls_session(mail_server, "mx")
    reply = client.cmd("STARTTLS")
    assert reply.code == 503
    assert client.cmd("NOOP").code == 250


def test_starttls_on_implicit_tls_is_refused(mail_server):
    client = mail_server.raw_tls("submissions")
    client.ehlo()
    reply = client.cmd("STARTTLS")
    assert reply.code in (502, 503)
    assert client.cmd("NOOP").code == 250


def test_starttls_inside_a_transaction_is_503(mail_server):
    client = mail_server.raw("mx")
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("STARTTLS").code == 503


@pytest.mark.parametrize("injected", [b"NOOP\r\n", b"HELP\r\n", b"RSET\r\nNOOP\r\n"])
def test_commands_pipelined_after_starttls_are_never_run(mail_server, injected):
    client = mail_server.raw("mx")
    client.ehlo()
    client.send(b"STARTTLS\r\n" + injected)
    reply = client.read_reply()
    assert reply.code == 220
    # the 220 is alone: no cleartext answer to the injected command
    client.starttls(mail_server.tls_context())
    # nor an answer inside TLS
    _assert_silent(client)
    reply = client.cmd("EHLO client.test")
    assert reply.code == 250
    assert reply.lines[0].startswith("mail.example.test")
    assert client.cmd("NOOP").code == 250


def test_injected_mail_after_starttls_leaves_no_transaction(mail_server):
    client = mail_server.raw("mx")
    client.ehlo()
    client.send(b"STARTTLS\r\nMAIL FROM:<x@y.test>\r\nRCPT TO:<bob@example.test>\r\n")
    assert client.read_reply().code == 220
    client.starttls(mail_server.tls_context())
    _assert_silent(client)
    client.ehlo()
    # no transaction was opened by the injected MAIL: RCPT is out of sequence ...
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503
    # ... and a MAIL right after EHLO is accepted normally (not a nested MAIL)
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(b"Subject: after tls\r\n\r\n.\r\n")
    assert client.read_reply().code == 250
    assert len(mail_server.messages("alice")) == 1
    assert mail_server.messages("bob") == []


def test_injected_auth_after_starttls_does_not_authenticate(mail_server):
    client = mail_server.raw("submission")
    client.ehlo()
    plain = _plain("alice", mail_server.passwords["alice"])
    client.send(f"STARTTLS\r\nAUTH PLAIN {plain}\r\n".encode())
    assert client.read_reply().code == 220
    client.starttls(mail_server.tls_context())
    _assert_silent(client)
    client.ehlo()
    # still not authenticated
    assert client.cmd("MAIL FROM:<alice@example.test>").code == 530


def test_injected_data_in_the_same_segment_as_the_handshake_start(mail_server):
    # the injected bytes may also arrive after the 220 was sent, before the ClientHello
    client = mail_server.raw("mx")
    client.ehlo()
    client.send(b"STARTTLS\r\n")
    assert client.read_reply().code == 220
    client.send(b"MAIL FROM:<x@y.test>\r\n")
    time.sleep(0.1)  # let the cleartext reach the server before the handshake
    try:
        client.starttls(mail_server.tls_context())
    except (OSError, ConnectionError):
        # refusing the handshake is safe too; the command must not have run
        return
    _assert_silent(client)
    client.ehlo()
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503


# -- AUTH ----------------------------------------------------------------------------------


def test_auth_plain_with_initial_response_after_tls(mail_server):
    client = _tls_session(mail_server)
    reply = client.cmd(f"AUTH PLAIN {_plain('alice', mail_server.passwords['alice'])}")
    assert reply.code == 235
    assert reply.enhanced == "2.7.0"


def test_auth_plain_without_initial_response(mail_server):
    client = _tls_session(mail_server)
    reply = client.cmd("AUTH PLAIN")
    assert reply.code == 334
    reply = client.cmd(_plain("bob", mail_server.passwords["bob"]))
    assert reply.code == 235


def test_auth_login_after_tls(mail_server):
    client = _tls_session(mail_server)
    reply = client.cmd("AUTH LOGIN")
    assert reply.code == 334
    assert base64.b64decode(reply.lines[0]) == b"Username:"
    reply = client.cmd(_b64("alice"))
    assert reply.code == 334
    assert base64.b64decode(reply.lines[0]) == b"Password:"
    reply = client.cmd(_b64(mail_server.passwords["alice"]))
    assert reply.code == 235


def test_auth_login_with_initial_username(mail_server):
    client = _tls_session(mail_server)
    reply = client.cmd(f"AUTH LOGIN {_b64('bob')}")
    assert reply.code == 334
    assert client.cmd(_b64(mail_server.passwords["bob"])).code == 235


def test_smtplib_login_plain_and_login(mail_server):
    for mech in ("PLAIN", "LOGIN"):
        client = mail_server.submission(login=False)
        client.user, client.password = "alice", mail_server.passwords["alice"]
        method = client.auth_plain if mech == "PLAIN" else client.auth_login
        code, _ = client.auth(mech, method)
        assert code == 235
        client.quit()


def test_auth_cancelled_with_star(mail_server):
    client = _tls_session(mail_server)
    assert client.cmd("AUTH LOGIN").code == 334
    assert client.cmd("*").code == 501  # RFC 4954 §4
    assert client.cmd("NOOP").code == 250


def test_auth_with_bad_base64_is_501(mail_server):
    client = _tls_session(mail_server)
    assert client.cmd("AUTH PLAIN !!!notbase64!!!").code == 501
    assert client.cmd("NOOP").code == 250


def test_auth_before_tls_on_submission_is_538(mail_server):
    client = mail_server.raw("submission")
    client.ehlo()
    plain = _plain("alice", mail_server.passwords["alice"])
    reply = client.cmd(f"AUTH PLAIN {plain}")
    assert reply.code == 538  # RFC 4954 §6
    assert reply.enhanced == "5.7.11"
    assert client.cmd("MAIL FROM:<alice@example.test>").code == 530


@pytest.mark.parametrize("tls", [False, True])
def test_auth_on_mx_is_502(mail_server, tls):
    client = _tls_session(mail_server, "mx") if tls else mail_server.raw("mx")
    if not tls:
        client.ehlo()
    plain = _plain("alice", mail_server.passwords["alice"])
    assert client.cmd(f"AUTH PLAIN {plain}").code == 502
    assert client.cmd("NOOP").code == 250


@pytest.mark.parametrize(
    ("user", "password"), [("alice", "wrong-password"), ("nosuchuser", "whatever")]
)
def test_bad_credentials_are_535_after_the_configured_delay(start_server, user, password):
    delay = 0.3
    srv = start_server(limits={"auth_failure_delay": delay})
    client = _tls_session(srv)
    started = time.monotonic()
    reply = client.cmd(f"AUTH PLAIN {_plain(user, password)}")
    elapsed = time.monotonic() - started
    assert reply.code == 535
    assert reply.enhanced == "5.7.8"
    assert elapsed >= delay
    # the session goes on and a correct login still works
    assert client.cmd(f"AUTH PLAIN {_plain('alice', srv.passwords['alice'])}").code == 235


def test_bad_password_with_smtplib(mail_server):
    client = mail_server.submission(login=False)
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        client.login("alice", "nope")
    assert info.value.smtp_code == 535


def test_second_auth_is_503(mail_server):
    client = _tls_session(mail_server)
    plain = _plain("alice", mail_server.passwords["alice"])
    assert client.cmd(f"AUTH PLAIN {plain}").code == 235
    assert client.cmd(f"AUTH PLAIN {plain}").code == 503  # RFC 4954 §4


def test_auth_with_a_foreign_authzid_is_refused(mail_server):
    client = _tls_session(mail_server)
    reply = client.cmd(f"AUTH PLAIN {_plain('alice', mail_server.passwords['alice'], 'bob')}")
    assert reply.code == 535
    assert client.cmd("MAIL FROM:<bob@example.test>").code == 530


def test_auth_during_a_transaction_is_503(mail_server):
    client = mail_server.submission()
    code, _ = client.mail("alice@example.test")
    assert code == 250
    code, _ = client.docmd("AUTH", f"PLAIN {_plain('bob', mail_server.passwords['bob'])}")
    assert code == 503


# -- submission policy -------------------------------------------------------------------


def test_submission_mail_without_auth_is_530(mail_server):
    client = _tls_session(mail_server)
    reply = client.cmd("MAIL FROM:<alice@example.test>")
    assert reply.code == 530
    assert reply.enhanced == "5.7.0"


def test_submission_mail_without_tls_or_auth_is_530(mail_server):
    client = mail_server.raw("submission")
    client.ehlo()
    assert client.cmd("MAIL FROM:<alice@example.test>").code == 530


@pytest.mark.parametrize("sender", ["bob@example.test", "alice@elsewhere.test", "x@remote.test"])
def test_submission_mail_from_someone_elses_address_is_553(mail_server, sender):
    client = mail_server.submission("alice")
    code, _ = client.mail(sender)
    assert code == 553
    code, _ = client.rcpt("bob@example.test")
    assert code == 503  # no transaction was opened


def test_submission_accepts_the_null_reverse_path_after_auth(mail_server):
    # docs/decisions.md, RFC 6409 §3.2: MDNs (RFC 8098) are sent with MAIL FROM:<>
    client = mail_server.submission("alice")
    code, _ = client.mail("")
    assert code == 250


def test_submission_sender_address_is_case_insensitive(mail_server):
    client = mail_server.submission("alice")
    code, _ = client.mail("Alice@Example.Test")
    assert code == 250


def test_submission_delivers_locally(mail_server):
    client = mail_server.submission("alice")
    client.sendmail(
        "alice@example.test",
        ["bob@example.test"],
        b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: hi bob\r\n\r\nhello\r\n",
    )
    (stored,) = mail_server.messages("bob")
    trace, _ = mail_server.split_trace(stored)
    assert b"with ESMTPSA " in trace  # RFC 3848: ESMTP, TLS, authenticated


def test_submissions_implicit_tls_end_to_end(mail_server):
    client = mail_server.submissions("bob")
    assert client.has_extn("auth")
    assert not client.has_extn("starttls")
    refused = client.sendmail(
        "bob@example.test",
        ["alice@example.test"],
        b"From: bob@example.test\r\nSubject: implicit\r\n\r\nvia 465\r\n",
    )
    assert refused == {}
    (stored,) = mail_server.messages("alice")
    trace, rest = mail_server.split_trace(stored)
    assert b"with ESMTPSA " in trace
    assert rest.endswith(b"Subject: implicit\r\n\r\nvia 465\r\n")
    assert client.quit()[0] == 221


def test_submissions_requires_auth_too(mail_server):
    client = mail_server.submissions(login=False)
    code, _ = client.mail("alice@example.test")
    assert code == 530


def test_mail_to_another_domain_after_auth_goes_to_the_spool(mail_server):
    client = mail_server.submission("alice")
    content = b"From: alice@example.test\r\nTo: friend@remote.test\r\nSubject: out\r\n\r\nbye\r\n"
    refused = client.sendmail(
        "alice@example.test", ["friend@remote.test", "other@far.test"], content
    )
    assert refused == {}
    (entry,) = mail_server.server.spool.list()
    assert entry.sender == "alice@example.test"
    assert entry.recipients == ("friend@remote.test", "other@far.test")
    assert entry.received_from == "127.0.0.1"
    stored = entry.message_path.read_bytes()
    _, rest = mail_server.split_trace(stored)
    assert b"Subject: out\r\n" in rest
    assert rest.endswith(b"\r\n\r\nbye\r\n")
    assert mail_server.messages("alice") == []


def test_mixed_local_and_remote_recipients_after_auth(mail_server):
    client = mail_server.submission("bob")
    client.sendmail(
        "bob@example.test",
        ["alice@example.test", "friend@remote.test"],
        b"Subject: mixed\r\n\r\nx\r\n",
    )
    assert len(mail_server.messages("alice")) == 1
    (entry,) = mail_server.server.spool.list()
    assert entry.recipients == ("friend@remote.test",)


def test_relaying_from_mx_without_auth_is_550(mail_server):
    client = mail_server.raw("mx")
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    reply = client.cmd("RCPT TO:<victim@elsewhere.test>")
    assert reply.code == 550
    assert reply.enhanced == "5.7.1"
    assert client.cmd("DATA").code == 503
    assert mail_server.server.spool.list() == []


def test_relaying_from_mx_with_tls_is_still_550(mail_server):
    client = _tls_session(mail_server, "mx")
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<victim@elsewhere.test>").code == 550


def _headers(message: bytes) -> email.message.Message:
    return email.message_from_bytes(message, policy=email.policy.compat32)


def test_submission_adds_message_id_and_date_when_missing(mail_server):
    client = mail_server.submission("alice")
    client.sendmail(
        "alice@example.test", ["bob@example.test"], b"Subject: bare\r\n\r\nno id, no date\r\n"
    )
    (stored,) = mail_server.messages("bob")
    msg = _headers(stored)
    assert len(msg.get_all("Message-ID", [])) == 1
    assert len(msg.get_all("Date", [])) == 1
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith(">")
    assert "@" in msg["Message-ID"]
    assert email.utils.parsedate_to_datetime(msg["Date"]) is not None
    assert stored.endswith(b"Subject: bare\r\n\r\nno id, no date\r\n")


def test_submission_keeps_message_id_and_date_when_present(mail_server):
    client = mail_server.submission("alice")
    content = (
        b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        b"Message-Id: <keep-me@client.test>\r\n"
        b"Subject: dressed\r\n\r\nbody\r\n"
    )
    client.sendmail("alice@example.test", ["bob@example.test"], content)
    (stored,) = mail_server.messages("bob")
    _, rest = mail_server.split_trace(stored)
    assert rest == content  # nothing added, nothing changed
    msg = _headers(stored)
    assert msg.get_all("Message-ID") == ["<keep-me@client.test>"]
    assert msg.get_all("Date") == ["Mon, 01 Jan 2024 10:00:00 +0000"]


def test_submission_adds_ids_to_distinct_messages(mail_server):
    client = mail_server.submission("alice")
    for _ in range(2):
        client.sendmail("alice@example.test", ["bob@example.test"], b"Subject: s\r\n\r\nx\r\n")
    ids = [_headers(m)["Message-ID"] for m in mail_server.messages("bob")]
    assert len(ids) == 2
    assert ids[0] != ids[1]


def test_mx_does_not_add_message_id_or_date(mail_server):
    client = mail_server.raw("mx")
    client.ehlo()
    assert client.send_message(b"Subject: relay me\r\n\r\nas is\r\n").code == 250
    (stored,) = mail_server.messages("alice")
    msg = _headers(stored)
    assert msg["Message-ID"] is None
    assert msg["Date"] is None
