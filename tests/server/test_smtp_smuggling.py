"""End of data is CRLF "." CRLF and nothing else (RFC 5321 §4.1.1.4, §2.3.8): no
SMTP-smuggling variant ends a message early or sneaks a second one in."""

from __future__ import annotations

import pytest

# Each variant is a would-be end of data that is not CRLF "." CRLF.
VARIANTS = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CR": b"\r.\r",
    "CRLF.CR": b"\r\n.\r",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "LF.CR": b"\n.\r",
    "CR.LF": b"\r.\n",
}

SMUGGLED = (
    b"MAIL FROM:<evil@x.test>\r\n"
    b"RCPT TO:<bob@example.test>\r\n"
    b"DATA\r\n"
    b"From: evil@x.test\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"
)


def _open_data(srv):
    client = srv.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    assert client.cmd("DATA").code == 354
    return client


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_smuggling_variant_does_not_end_the_message(mail_server, variant):
    client = _open_data(mail_server)
    client.send(b"Subject: innocent\r\n\r\nfirst part" + variant + SMUGGLED + b".\r\n")
    # exactly one reply, at the real end: the message is refused as ambiguous
    reply = client.read_reply()
    assert reply.code == 554, reply
    assert reply.enhanced == "5.6.0"
    # no further replies queued up (the smuggled MAIL/RCPT/DATA were never commands)
    assert client.cmd("NOOP").code == 250
    assert client.buf == b""
    assert mail_server.messages("bob") == []
    assert mail_server.messages("alice") == []
    # and the session is still in a clean state
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503
    assert client.send_message(b"Subject: clean\r\n\r\nafter\r\n").code == 250
    assert len(mail_server.messages("alice")) == 1


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_smuggling_variant_sent_in_separate_writes(mail_server, variant):
    # the same, with the would-be terminator split across TCP segments
    client = _open_data(mail_server)
    client.send(b"Subject: innocent\r\n\r\nfirst part")
    for byte in variant:
        client.send(bytes([byte]))
    client.send(SMUGGLED)
    client.send(b".\r\n")
    reply = client.read_reply()
    assert reply.code == 554
    assert client.cmd("NOOP").code == 250
    assert mail_server.messages("bob") == []
    assert mail_server.messages("alice") == []


def test_brief_example_lf_dot_lf_with_smuggled_transaction(mail_server):
    client = _open_data(mail_server)
    client.send(
        b"Subject: hello\r\n\r\nhi\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<bob@example.test>\r\n"
        b"DATA\r\nsmuggled\r\n.\r\n"
    )
    reply = client.read_reply()
    assert reply.code == 554
    assert reply.enhanced == "5.6.0"
    assert client.cmd("NOOP").code == 250
    assert mail_server.messages("bob") == []
    assert mail_server.messages("alice") == []


@pytest.mark.parametrize("bare", [b"\n", b"\r"], ids=["LF", "CR"])
def test_bare_cr_or_lf_anywhere_in_the_data_is_554(mail_server, bare):
    client = _open_data(mail_server)
    client.send(b"Subject: x\r\n\r\nline" + bare + b"continued\r\n.\r\n")
    assert client.read_reply().code == 554
    assert mail_server.messages("alice") == []


def test_dot_line_variants_inside_the_data_are_text(mail_server):
    # ". " and ".x" and ".." lines are data (RFC 5321 §4.5.2), not an end
    client = _open_data(mail_server)
    client.send(b"Subject: x\r\n\r\n. \r\n.x\r\n..\r\n.\t\r\nend\r\n.\r\n")
    assert client.read_reply().code == 250
    (stored,) = mail_server.messages("alice")
    assert mail_server.split_trace(stored)[1] == b"Subject: x\r\n\r\n \r\nx\r\n.\r\n\t\r\nend\r\n"


@pytest.mark.parametrize("line", [b"NOOP\n", b"MAIL FROM:<a@remote.test>\n", b"RSET\n", b"QUIT\n"])
def test_a_bare_lf_does_not_end_a_command_line(mail_server, line):
    client = mail_server.raw()
    client.ehlo()
    # RFC 5321 §2.3.8: only CRLF ends a line, so what follows the bare LF belongs to the
    # same (bad) line: one 500, and neither part runs
    client.send(line + b"RCPT TO:<alice@example.test>\r\n")
    reply = client.read_reply()
    assert reply.code == 500
    assert reply.enhanced == "5.5.2"
    # the bare-LF MAIL did not open a transaction, the bare-LF QUIT did not close
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503
    assert client.cmd("NOOP").code == 250


def test_command_with_a_bare_cr_inside_is_500(mail_server):
    client = mail_server.raw()
    client.ehlo()
    client.send(b"NOOP\rMAIL FROM:<a@remote.test>\r\n")
    assert client.read_reply().code == 500
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503
