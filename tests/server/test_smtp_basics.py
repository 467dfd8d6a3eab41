"""RFC 5321 basics of the reference server: greeting, EHLO/HELO, the mail transaction,
the simple commands and the error replies (500/501/502/503/504)."""

from __future__ import annotations

import re

import pytest

HOST = "mail.example.test"


def test_greeting_is_220_naming_the_server(mail_server):
    client = mail_server.raw(greeting=False)
    reply = client.read_reply()
    assert reply.code == 220
    assert len(reply.lines) == 1
    # RFC 5321 §4.2: Greeting = "220 " Domain ...
    assert reply.lines[0].split(" ")[0] == HOST
    # RFC 2034 §3: no enhanced status code on the greeting
    assert reply.enhanced is None


def test_ehlo_is_multiline_with_the_expected_keywords_on_mx(mail_server):
    client = mail_server.raw()
    reply = client.cmd("EHLO client.test")
    assert reply.code == 250
    assert len(reply.lines) > 1
    raw_lines = reply.raw.split(b"\r\n")[:-1]
    assert all(line.startswith(b"250-") for line in raw_lines[:-1])
    assert raw_lines[-1].startswith(b"250 ")
    assert reply.lines[0].split(" ")[0] == HOST
    kw = reply.keywords()
    assert kw["PIPELINING"] == ()
    assert kw["SIZE"] == (str(mail_server.config.limits.max_message_size),)
    for name in ("8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "STARTTLS"):
        assert name in kw, name
    assert "AUTH" not in kw  # MX offers no AUTH, before or after TLS


def test_ehlo_keyword_lines_follow_the_grammar(mail_server):
    client = mail_server.raw()
    reply = client.ehlo()
    # RFC 5321 §4.1.1.1: ehlo-line = ehlo-keyword *( SP ehlo-param )
    for line in reply.lines[1:]:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*(?: [\x21-\x7e]+)*", line), line
    # RFC 2034 §3: no enhanced status code in the EHLO response
    assert not re.match(r"\d\.\d{1,3}\.\d{1,3}", reply.lines[0])


def test_mx_offers_no_auth_even_after_starttls(mail_server):
    client = mail_server.raw("mx")
    client.ehlo()
    assert client.cmd("STARTTLS").code == 220
    client.starttls(mail_server.tls_context())
    kw = client.ehlo().keywords()
    assert "AUTH" not in kw
    assert "STARTTLS" not in kw


def test_submission_offers_auth_only_after_tls(mail_server):
    client = mail_server.raw("submission")
    before = client.ehlo().keywords()
    assert "STARTTLS" in before
    assert "AUTH" not in before  # RFC 4954 §4 / RFC 8314: no AUTH in cleartext
    assert client.cmd("STARTTLS").code == 220
    client.starttls(mail_server.tls_context())
    after = client.ehlo().keywords()
    assert "STARTTLS" not in after  # RFC 3207 §4.2
    assert set(after["AUTH"]) >= {"PLAIN", "LOGIN"}


def test_submissions_offers_auth_and_no_starttls(mail_server):
    client = mail_server.raw_tls("submissions")
    kw = client.ehlo().keywords()
    assert "STARTTLS" not in kw
    assert set(kw["AUTH"]) >= {"PLAIN", "LOGIN"}


def test_helo_reply_is_single_line(mail_server):
    client = mail_server.raw()
    reply = client.cmd("HELO client.test")
    assert reply.code == 250
    assert reply.raw.count(b"\r\n") == 1
    assert reply.raw.startswith(b"250 ")


def test_message_is_stored_byte_identical_after_received_and_dot_unstuffed(mail_server):
    client = mail_server.raw()
    client.ehlo()
    long_line = b"x" * 998
    wire = (
        b"From: Sender <sender@remote.test>\r\n"
        b"To: alice@example.test\r\n"
        b"Subject: byte for byte\r\n"
        b"\r\n"
        b"..starts with a dot\r\n"
        b"..\r\n"
        b"...two dots left after unstuffing\r\n"
        b"trailing spaces   \r\n"
        b"\ttab first\r\n"
        b"\r\n"
        b"\r\n" + long_line + b"\r\n"
        b"last line\r\n"
    )
    expected = (
        b"From: Sender <sender@remote.test>\r\n"
        b"To: alice@example.test\r\n"
        b"Subject: byte for byte\r\n"
        b"\r\n"
        b".starts with a dot\r\n"
        b".\r\n"
        b"..two dots left after unstuffing\r\n"
        b"trailing spaces   \r\n"
        b"\ttab first\r\n"
        b"\r\n"
        b"\r\n" + long_line + b"\r\n"
        b"last line\r\n"
    )
    reply = client.send_message(wire)
    assert reply.code == 250, reply
    (stored,) = mail_server.messages("alice")
    _, rest = mail_server.split_trace(stored)
    assert rest == expected
    assert mail_server.messages("bob") == []


def test_dot_stuffed_first_line_is_unstuffed(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.send_message(b"..first\r\nsecond\r\n").code == 250
    (stored,) = mail_server.messages("alice")
    assert mail_server.split_trace(stored)[1] == b".first\r\nsecond\r\n"


def test_empty_message_is_accepted_and_stored(mail_server):
    # RFC 5321 §4.1.1.4: with no mail data, the CRLF ending the DATA command is the
    # first CRLF of the end mark, so "." right after the 354 ends an empty message.
    client = mail_server.raw()
    client.sock.settimeout(2.0)
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(b".\r\n")
    assert client.read_reply().code == 250
    (stored,) = mail_server.messages("alice")
    assert mail_server.split_trace(stored)[1] == b""


def test_message_for_two_users_is_stored_in_both_maildirs(mail_server):
    client = mail_server.raw()
    client.ehlo()
    body = b"Subject: two\r\n\r\nhi\r\n"
    reply = client.send_message(body, recipients=["alice@example.test", "bob@example.test"])
    assert reply.code == 250
    for user in ("alice", "bob"):
        (stored,) = mail_server.messages(user)
        assert mail_server.split_trace(stored)[1] == body


def test_smtplib_sendmail_end_to_end(mail_server):
    client = mail_server.smtp()
    refused = client.sendmail(
        "sender@remote.test", ["bob@example.test"], b"Subject: via smtplib\r\n\r\nbody\r\n"
    )
    assert refused == {}
    (stored,) = mail_server.messages("bob")
    assert stored.endswith(b"Subject: via smtplib\r\n\r\nbody\r\n")
    assert client.quit()[0] == 221


def test_rset_clears_the_transaction(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    reply = client.cmd("RSET")
    assert reply.code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503
    assert client.cmd("DATA").code == 503
    # and a new transaction works
    assert client.send_message(b"Subject: after rset\r\n\r\n\r\n").code == 250
    assert len(mail_server.messages("alice")) == 1


def test_rset_before_ehlo_is_ok(mail_server):
    client = mail_server.raw()
    assert client.cmd("RSET").code == 250
    assert client.cmd("MAIL FROM:<a@remote.test>").code == 503  # still needs EHLO


def test_noop_with_an_argument(mail_server):
    client = mail_server.raw()
    assert client.cmd("NOOP").code == 250
    assert client.cmd("NOOP this is ignored").code == 250  # RFC 5321 §4.1.1.9


def test_quit_answers_221_then_closes(mail_server):
    client = mail_server.raw()
    client.ehlo()
    reply = client.cmd("QUIT")
    assert reply.code == 221
    assert client.read_all_until_close() == b""


@pytest.mark.parametrize(
    "arg",
    [
        "alice",
        "nosuchuser",
        "alice@example.test",
        "nosuchuser@example.test",
        "<bob@example.test>",
        "<nobody@example.test>",
    ],
)
def test_vrfy_answers_252_for_existing_and_unknown_users(mail_server, arg):
    client = mail_server.raw()
    client.ehlo()
    reply = client.cmd(f"VRFY {arg}")
    assert reply.code == 252  # RFC 5321 §3.5.3
    # no user enumeration: the answer does not depend on the user
    assert reply.raw == client.cmd("VRFY someone-else-entirely").raw


def test_help_answers_214(mail_server):
    client = mail_server.raw()
    reply = client.cmd("HELP")
    assert reply.code == 214
    assert client.cmd("HELP MAIL").code == 214


def test_verbs_are_case_insensitive(mail_server):
    client = mail_server.raw()
    assert client.cmd("ehlo client.test").code == 250
    assert client.cmd("mail from:<sender@remote.test>").code == 250
    assert client.cmd("Rcpt To:<alice@example.test>").code == 250
    assert client.cmd("dAtA").code == 354
    client.send(b"Subject: lower\r\n\r\n.\r\n")
    assert client.read_reply().code == 250
    assert client.cmd("nOoP").code == 250
    assert client.cmd("rset").code == 250
    assert client.cmd("quit").code == 221
    assert len(mail_server.messages("alice")) == 1


@pytest.mark.parametrize("line", ["FOO", "FOO bar", "XYZZY 1 2 3", "MAILFROM:<a@b.test>"])
def test_unknown_command_is_500_and_the_session_continues(mail_server, line):
    client = mail_server.raw()
    reply = client.cmd(line)
    assert reply.code == 500
    assert reply.enhanced == "5.5.2"
    assert client.cmd("NOOP").code == 250


@pytest.mark.parametrize(
    "line",
    [
        "MAIL FROM: <sender@remote.test>",  # RFC 5321 §4.1.1.2: no space after the colon
        "MAIL FROM:sender@remote.test",  # no angle brackets
        "MAIL FROM:<not an address>",
        "MAIL FROM:<sender@>",
        "MAIL FROM:<@remote.test>",
        "MAIL FROM:<sender@remote.test",
        "MAIL TO:<sender@remote.test>",
        "MAIL",
        "MAIL FROM:<sender@remote.test>  SIZE=10",  # two spaces
        "MAIL FROM:<sender@remote.test> SIZE=abc",
    ],
)
def test_mail_with_bad_syntax_is_501(mail_server, line):
    client = mail_server.raw()
    client.ehlo()
    reply = client.cmd(line)
    assert reply.code == 501, reply
    assert reply.enhanced is not None and reply.enhanced.startswith("5.")
    # nothing was opened
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503


@pytest.mark.parametrize(
    "line",
    [
        "RCPT TO: <alice@example.test>",
        "RCPT TO:alice@example.test",
        "RCPT TO:<>",  # the null path is for MAIL only
        "RCPT TO:<alice@example.test",
        "RCPT FROM:<alice@example.test>",
        "RCPT",
    ],
)
def test_rcpt_with_bad_syntax_is_501(mail_server, line):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    reply = client.cmd(line)
    assert reply.code == 501, reply
    assert client.cmd("DATA").code == 503  # no recipient was added


@pytest.mark.parametrize("line", ["EHLO", "HELO", "EHLO ", "EHLO bad..name", "HELO -bad.test"])
def test_ehlo_or_helo_without_a_valid_domain_is_501(mail_server, line):
    client = mail_server.raw()
    reply = client.cmd(line)
    assert reply.code == 501
    assert client.cmd("MAIL FROM:<a@remote.test>").code == 503  # still not greeted


def test_ehlo_with_an_address_literal_is_accepted(mail_server):
    client = mail_server.raw()
    assert client.cmd("EHLO [127.0.0.1]").code == 250
    assert client.cmd("EHLO [IPv6:::1]").code == 250


def test_data_with_an_argument_is_501(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    assert client.cmd("DATA now").code == 501
    assert client.cmd("DATA").code == 354


def test_mail_before_ehlo_is_503(mail_server):
    client = mail_server.raw()
    reply = client.cmd("MAIL FROM:<sender@remote.test>")
    assert reply.code == 503
    assert reply.enhanced == "5.5.1"


def test_rcpt_before_mail_is_503(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503


def test_data_before_mail_is_503(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("DATA").code == 503


def test_data_before_rcpt_is_503(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("DATA").code == 503
    # the transaction is still open: a recipient can still be added
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250


def test_data_after_only_rejected_recipients_is_503(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<nobody@example.test>").code == 550
    assert client.cmd("DATA").code == 503  # RFC 5321 §3.3: no valid recipient


def test_nested_mail_is_503(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<first@remote.test>").code == 250
    assert client.cmd("MAIL FROM:<second@remote.test>").code == 503
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250


def test_unknown_auth_mechanism_is_504(mail_server):
    client = mail_server.raw("submission")
    client.ehlo()
    assert client.cmd("STARTTLS").code == 220
    client.starttls(mail_server.tls_context())
    client.ehlo()
    reply = client.cmd("AUTH NO-SUCH-MECH")
    assert reply.code == 504
    assert client.cmd("NOOP").code == 250


def test_expn_is_502(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("EXPN staff").code == 502
    assert client.cmd("NOOP").code == 250


def test_unknown_local_recipient_is_550(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    reply = client.cmd("RCPT TO:<nobody@example.test>")
    assert reply.code == 550
    assert reply.enhanced == "5.1.1"


def test_local_recipient_is_case_insensitive(mail_server):
    client = mail_server.raw()
    client.ehlo()
    reply = client.send_message(b"Subject: case\r\n\r\n\r\n", recipients=["ALICE@Example.TEST"])
    assert reply.code == 250
    assert len(mail_server.messages("alice")) == 1


def test_null_reverse_path_is_accepted_on_mx(mail_server):
    client = mail_server.raw()
    client.ehlo()
    reply = client.send_message(b"Subject: bounce\r\n\r\nundeliverable\r\n", sender="")
    assert reply.code == 250
    assert len(mail_server.messages("alice")) == 1


@pytest.mark.parametrize(
    "rcpt",
    [
        "<postmaster>",
        "<Postmaster>",
        "<POSTMASTER>",
        "<postmaster@example.test>",
        "<PostMaster@EXAMPLE.test>",
    ],
)
def test_postmaster_is_always_accepted_and_delivered(mail_server, rcpt):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<>").code == 250
    assert client.cmd(f"RCPT TO:{rcpt}").code == 250  # RFC 5321 §4.5.1
    assert client.cmd("DATA").code == 354
    client.send(b"Subject: for the postmaster\r\n\r\n.\r\n")
    assert client.read_reply().code == 250
    postmaster = mail_server.config.postmaster
    (stored,) = mail_server.messages(postmaster)
    assert stored.endswith(b"Subject: for the postmaster\r\n\r\n")


def _variants(address: str, n: int) -> list[str]:
    """``n`` distinct spellings of ``address`` differing only in letter case."""
    letters = [i for i, c in enumerate(address) if c.isalpha()]
    assert n <= 2 ** len(letters)
    result = []
    for mask in range(n):
        chars = list(address)
        for bit, pos in enumerate(letters):
            if mask >> bit & 1:
                chars[pos] = chars[pos].upper()
        result.append("".join(chars))
    return result


def test_one_hundred_recipients_are_accepted(mail_server):
    # RFC 5321 §4.5.3.1.8: at least 100 recipients MUST be buffered
    client = mail_server.raw()
    client.ehlo()
    rcpts = _variants("alice@example.test", 50) + _variants("bob@example.test", 50)
    assert len(set(rcpts)) == 100
    client.send(
        b"MAIL FROM:<sender@remote.test>\r\n"
        + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts)
        + b"DATA\r\n"
    )
    replies = client.read_replies(102)
    assert replies[0].code == 250
    assert [r.code for r in replies[1:101]] == [250] * 100
    assert replies[101].code == 354
    client.send(b"Subject: many\r\n\r\n.\r\n")
    assert client.read_reply().code == 250
    # one copy per mailbox, however many spellings of the address
    assert len(mail_server.messages("alice")) == 1
    assert len(mail_server.messages("bob")) == 1


def test_one_hundred_rcpt_commands_for_the_same_address(mail_server):
    client = mail_server.raw()
    client.ehlo()
    client.send(b"MAIL FROM:<sender@remote.test>\r\n" + b"RCPT TO:<alice@example.test>\r\n" * 100)
    replies = client.read_replies(101)
    assert [r.code for r in replies] == [250] * 101
    assert client.cmd("DATA").code == 354
    client.send(b"Subject: dup\r\n\r\n.\r\n")
    assert client.read_reply().code == 250
    assert len(mail_server.messages("alice")) == 1


def test_recipient_over_the_default_limit_gets_452(mail_server):
    limit = mail_server.config.limits.max_recipients
    assert limit == 1000
    client = mail_server.raw()
    client.ehlo()
    rcpts = _variants("alice@example.test", limit + 1)
    client.send(
        b"MAIL FROM:<sender@remote.test>\r\n"
        + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts)
    )
    replies = client.read_replies(limit + 2)
    assert all(r.code == 250 for r in replies[: limit + 1])
    last = replies[-1]
    assert last.code == 452  # RFC 5321 §4.5.3.1.10
    assert last.enhanced == "4.5.3"
    # the transaction goes on with the recipients accepted so far
    assert client.cmd("DATA").code == 354
    client.send(b"Subject: limit\r\n\r\n.\r\n")
    assert client.read_reply().code == 250
    assert len(mail_server.messages("alice")) == 1


def test_recipient_over_a_configured_limit_gets_452(start_server):
    srv = start_server(limits={"max_recipients": 120})
    client = srv.raw()
    client.ehlo()
    rcpts = _variants("bob@example.test", 121)
    client.send(
        b"MAIL FROM:<sender@remote.test>\r\n"
        + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts)
    )
    replies = client.read_replies(122)
    assert [r.code for r in replies[:121]] == [250] * 121
    assert replies[121].code == 452


@pytest.mark.parametrize("greeting", ["EHLO", "HELO"])
def test_received_header_names_the_client_by_ip_literal_and_helo_name(mail_server, greeting):
    # no DNS: the trace shows the HELO name as given and the peer's IP literal
    client = mail_server.raw()
    assert client.cmd(f"{greeting} Some-Client.Example").code == 250
    assert client.send_message(b"Subject: trace\r\n\r\n\r\n").code == 250
    (stored,) = mail_server.messages("alice")
    trace, _ = mail_server.split_trace(stored)
    text = trace.decode()
    assert text.startswith("Received: from Some-Client.Example ([127.0.0.1])")
    assert f"by {HOST}" in text
    proto = "ESMTP" if greeting == "EHLO" else "SMTP"
    assert re.search(rf"\bwith {proto}\b", text), text
    assert "for <alice@example.test>" in text
    # RFC 5321 §4.4: the time stamp ends the field, after a ";"
    assert re.search(r";\s+\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\s*$", text), text


def test_received_header_after_starttls_says_esmtps(mail_server):
    client = mail_server.raw("mx")
    client.ehlo()
    assert client.cmd("STARTTLS").code == 220
    client.starttls(mail_server.tls_context())
    client.ehlo()
    assert client.send_message(b"Subject: tls\r\n\r\n\r\n").code == 250
    (stored,) = mail_server.messages("alice")
    trace, _ = mail_server.split_trace(stored)
    assert b"with ESMTPS " in trace  # RFC 3848


def test_received_header_is_added_to_every_message(mail_server):
    client = mail_server.raw()
    client.ehlo()
    for i in range(3):
        body = f"Subject: {i}\r\nReceived: from fake by fake; Mon, 1 Jan 2001 00:00:00 +0000\r\n"
        assert client.send_message(body.encode() + b"\r\n").code == 250
    stored = mail_server.messages("alice")
    assert len(stored) == 3
    for message in stored:
        trace, rest = mail_server.split_trace(message)
        assert b"[127.0.0.1]" in trace
        assert rest.startswith(b"Subject: ")


def test_reply_text_is_ascii_even_where_it_cites_an_rfc_section(mail_server):
    # RFC 5321 §4.2: textstring is HT, SP and printable US-ASCII
    client = mail_server.raw()
    client.ehlo()
    reply = client.cmd("RCPT TO:<alice@example.test>")
    assert reply.code == 503
    assert "RFC 5321 section 3.3" in reply.text, reply.text
    assert reply.raw.isascii(), reply.raw
