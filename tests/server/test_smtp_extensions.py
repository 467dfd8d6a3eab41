"""ESMTP extensions: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152),
SMTPUTF8 (RFC 6531) and ENHANCEDSTATUSCODES (RFC 2034, RFC 3463)."""

from __future__ import annotations

import re

import pytest


def test_pipelined_transaction_is_answered_in_order(mail_server):
    client = mail_server.raw()
    client.ehlo()
    client.send(
        b"MAIL FROM:<sender@remote.test>\r\n"
        b"RCPT TO:<alice@example.test>\r\n"
        b"RCPT TO:<nobody@example.test>\r\n"
        b"RCPT TO:<bob@example.test>\r\n"
        b"DATA\r\n"
    )
    replies = client.read_replies(5)
    assert [r.code for r in replies] == [250, 250, 550, 250, 354]
    assert "nobody@example.test" in replies[2].text
    client.send(b"Subject: pipelined\r\n\r\nhello\r\n.\r\n")
    assert client.read_reply().code == 250
    assert len(mail_server.messages("alice")) == 1
    assert len(mail_server.messages("bob")) == 1


def test_whole_session_in_one_write(mail_server):
    # a greedy client (not RFC 2920 conformant, but harmless): the server still answers
    # every command in order and reads the message after its 354
    client = mail_server.raw()
    client.send(
        b"EHLO client.test\r\n"
        b"MAIL FROM:<sender@remote.test>\r\n"
        b"RCPT TO:<bob@example.test>\r\n"
        b"DATA\r\n"
        b"Subject: greedy\r\n\r\nbody\r\n.\r\n"
        b"RSET\r\n"
        b"NOOP\r\n"
        b"QUIT\r\n"
    )
    replies = client.read_replies(8)
    assert [r.code for r in replies] == [250, 250, 250, 354, 250, 250, 250, 221]
    assert client.read_all_until_close() == b""
    (stored,) = mail_server.messages("bob")
    assert mail_server.split_trace(stored)[1] == b"Subject: greedy\r\n\r\nbody\r\n"


def test_two_pipelined_transactions_on_one_connection(mail_server):
    client = mail_server.raw()
    client.ehlo()
    for user in ("alice", "bob"):
        client.send(
            b"MAIL FROM:<sender@remote.test>\r\n"
            + f"RCPT TO:<{user}@example.test>\r\n".encode()
            + b"DATA\r\n"
        )
        assert [r.code for r in client.read_replies(3)] == [250, 250, 354]
        client.send(f"Subject: to {user}\r\n\r\n.\r\n".encode())
        assert client.read_reply().code == 250
    assert len(mail_server.messages("alice")) == 1
    assert len(mail_server.messages("bob")) == 1


def test_size_is_announced_with_the_configured_limit(start_server):
    srv = start_server(limits={"max_message_size": 10_000})
    client = srv.raw()
    assert client.ehlo().keywords()["SIZE"] == ("10000",)


@pytest.mark.parametrize("size", [10_001, 10**12, 10**19])
def test_mail_size_over_the_limit_is_552(start_server, size):
    srv = start_server(limits={"max_message_size": 10_000})
    client = srv.raw()
    client.ehlo()
    reply = client.cmd(f"MAIL FROM:<sender@remote.test> SIZE={size}")
    assert reply.code == 552  # RFC 1870 §6.1
    assert reply.enhanced == "5.3.4"
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503
    assert client.cmd("MAIL FROM:<sender@remote.test> SIZE=10000").code == 250


@pytest.mark.parametrize("size", ["", "=", "=10k", "=" + "1" * 21, "=\u00b2"])
def test_mail_size_that_is_not_a_size_value_is_501(start_server, size):
    srv = start_server(limits={"max_message_size": 10_000})
    client = srv.raw()
    client.ehlo()
    # RFC 1870 §3: size-value ::= 1*20DIGIT (a missing value or 21 digits are syntax errors)
    reply = client.cmd(f"MAIL FROM:<sender@remote.test> SIZE{size}")
    assert reply.code == 501, reply
    assert client.cmd("MAIL FROM:<sender@remote.test> SIZE=10000").code == 250


def test_mail_size_within_the_limit_is_accepted(start_server):
    srv = start_server(limits={"max_message_size": 10_000})
    client = srv.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test> SIZE=123").code == 250


def test_message_over_the_size_limit_is_552_after_the_data(start_server):
    srv = start_server(limits={"max_message_size": 10_000})
    client = srv.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    assert client.cmd("DATA").code == 354
    line = b"y" * 78 + b"\r\n"
    client.send(b"Subject: big\r\n\r\n" + line * 700 + b".\r\n")  # ~56 KB
    reply = client.read_reply()
    assert reply.code == 552  # RFC 1870 §6.3
    assert reply.enhanced == "5.3.4"
    assert srv.messages("alice") == []
    # the session is still usable, and a small message goes through
    assert client.cmd("NOOP").code == 250
    assert client.send_message(b"Subject: small\r\n\r\nok\r\n").code == 250
    (stored,) = srv.messages("alice")
    assert srv.split_trace(stored)[1] == b"Subject: small\r\n\r\nok\r\n"


def test_message_over_the_size_limit_sent_in_chunks(start_server):
    srv = start_server(limits={"max_message_size": 10_000})
    client = srv.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    assert client.cmd("DATA").code == 354
    for _ in range(40):
        client.send(b"z" * 998 + b"\r\n")
    client.send(b".\r\n")
    assert client.read_reply().code == 552
    assert srv.messages("alice") == []
    assert client.cmd("RSET").code == 250


def test_message_exactly_at_the_limit_is_accepted(start_server):
    srv = start_server(limits={"max_message_size": 10_000})
    client = srv.raw()
    client.ehlo()
    content = b"a" * 98 + b"\r\n"
    content = content * 100  # 10,000 octets
    assert len(content) == 10_000
    assert client.send_message(content).code == 250
    (stored,) = srv.messages("alice")
    assert srv.split_trace(stored)[1] == content


@pytest.mark.parametrize("body", ["8BITMIME", "8bitmime", "7BIT"])
def test_body_parameter_is_accepted(mail_server, body):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd(f"MAIL FROM:<sender@remote.test> BODY={body}").code == 250


def test_8bitmime_body_is_stored_unchanged(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test> BODY=8BITMIME").code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    assert client.cmd("DATA").code == 354
    content = (
        b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + "Grüße, ça va? 日本語\r\n".encode()
        + b"\x80\xfe raw high bytes\r\n"
    )
    client.send(content + b".\r\n")
    assert client.read_reply().code == 250
    (stored,) = mail_server.messages("alice")
    assert mail_server.split_trace(stored)[1] == content


def test_body_binarymime_is_501(mail_server):
    client = mail_server.raw()
    client.ehlo()
    reply = client.cmd("MAIL FROM:<sender@remote.test> BODY=BINARYMIME")
    assert reply.code == 501  # CHUNKING/BINARYMIME (RFC 3030) is not offered
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503


def test_unknown_mail_parameter_is_555(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test> FROBNICATE=yes").code == 555
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<alice@example.test> NOTIFY=NEVER").code == 555


def test_esmtp_parameters_after_helo_are_refused(mail_server):
    # RFC 5321 §4.1.1.2: parameters are for EHLO sessions only
    client = mail_server.raw()
    assert client.cmd("HELO client.test").code == 250
    reply = client.cmd("MAIL FROM:<sender@remote.test> SIZE=10")
    assert reply.code in (501, 555)


def test_smtputf8_address_with_the_parameter_is_accepted(mail_server):
    client = mail_server.raw()
    client.ehlo()
    reply = client.cmd("MAIL FROM:<jörg@bücher.test> SMTPUTF8")
    assert reply.code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    assert client.cmd("DATA").code == 354
    content = "From: jörg@bücher.test\r\nSubject: ünïcödé\r\n\r\nhallo\r\n".encode()
    client.send(content + b".\r\n")
    assert client.read_reply().code == 250
    (stored,) = mail_server.messages("alice")
    assert mail_server.split_trace(stored)[1] == content


def test_smtputf8_address_without_the_parameter_is_550(mail_server):
    client = mail_server.raw()
    client.ehlo()
    reply = client.cmd("MAIL FROM:<jörg@bücher.test>")
    assert reply.code == 550  # RFC 6531 §3.5: 550 on MAIL, 553 on RCPT
    assert reply.enhanced == "5.6.7"
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503


def test_non_ascii_address_after_helo_is_501(mail_server):
    client = mail_server.raw()
    assert client.cmd("HELO client.test").code == 250
    # no extension is in effect after HELO: RFC 5321 §4.1.2 wants 501
    assert client.cmd("MAIL FROM:<jörg@bücher.test>").code == 501


@pytest.mark.parametrize("param", ["SMTPUTF8=YES", "BODY", "BODY=BINARY"])
def test_mail_parameter_with_a_bad_value_is_501(mail_server, param):
    client = mail_server.raw()
    client.ehlo()
    # RFC 6531 §3.4: SMTPUTF8 takes no value; RFC 6152 §2: body-value = "7BIT" / "8BITMIME"
    assert client.cmd(f"MAIL FROM:<sender@remote.test> {param}").code == 501
    assert client.cmd("MAIL FROM:<sender@remote.test> SMTPUTF8 BODY=8BITMIME").code == 250


def test_smtputf8_recipient_without_the_mail_parameter_is_553(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    reply = client.cmd("RCPT TO:<jörg@example.test>")
    assert reply.code == 553
    assert reply.enhanced == "5.6.7"


def _check_enhanced(reply):
    assert reply.enhanced is not None, f"no enhanced status code in {reply.raw!r}"
    # RFC 3463 §2: the class digit is the first digit of the reply code
    assert reply.enhanced[0] == str(reply.code)[0], reply
    # RFC 2034 §4: on every line of a multiline reply
    for line in reply.lines:
        assert line.startswith(reply.enhanced), reply


def test_enhanced_status_codes_on_replies(mail_server):
    client = mail_server.raw()
    greeting_free = client.ehlo()
    assert not re.match(r"\d\.\d", greeting_free.lines[0])
    replies = [
        client.cmd("NOOP"),
        client.cmd("VRFY alice"),
        client.cmd("FOO"),
        client.cmd("RCPT TO:<alice@example.test>"),  # 503
        client.cmd("MAIL FROM:sender@remote.test"),  # 501
        client.cmd("MAIL FROM:<sender@remote.test>"),
        client.cmd("RCPT TO:<nobody@example.test>"),  # 550
        client.cmd("RCPT TO:<someone@elsewhere.test>"),  # 550 relaying
        client.cmd("RCPT TO:<alice@example.test>"),
        client.cmd("RSET"),
        client.cmd("EXPN x"),
        client.cmd("HELP"),
    ]
    for reply in replies:
        _check_enhanced(reply)
    assert client.send_message(b"Subject: x\r\n\r\n\r\n").code == 250
    replies = [client.cmd("QUIT")]
    for reply in replies:
        _check_enhanced(reply)


def test_enhanced_status_code_on_end_of_data(mail_server):
    client = mail_server.raw()
    client.ehlo()
    reply = client.send_message(b"Subject: x\r\n\r\n\r\n")
    assert reply.code == 250
    _check_enhanced(reply)
