"""POP3 sessions on the reference server (RFC 1939, RFC 2449): greeting, CAPA, every
command of the TRANSACTION state, states, arguments, sizes, byte-stuffing, pipelining,
line limits, autologout and the connection limit.

Black-box over real sockets: the raw client in pop3_helpers reads the wire strictly
(CRLF only, stuffed dots), and poplib checks that a stock client gets along.
"""

from __future__ import annotations

import gc
import poplib
import re
import socket
import sys
import time
import warnings
from pathlib import Path

import pytest
from pop3_helpers import (
    TLS_MODES,
    RawPop3,
    crlf,
    maildir_name,
    message,
    poplib_session,
    raw_pop3,
    reset,
    shared_server,
    tls_session,
    write_message,
)


@pytest.fixture(scope="module")
def shared(dev_setup, tmp_path_factory):
    yield from shared_server(dev_setup, tmp_path_factory.mktemp("pop3-session"))


@pytest.fixture
def pop_server(shared):
    """The module's server with default settings and empty mailboxes."""
    reset(shared)
    yield shared
    reset(shared)


BASE_CAPS = {"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION"}
TRANSACTION_ONLY = ["STAT", "LIST", "LIST 1", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 0"]
TRANSACTION_ONLY += ["UIDL", "UIDL 1"]


def three_messages(srv, user: str = "alice") -> list[bytes]:
    """Store three distinct messages (one with dot lines); returns them in maildrop order.

    The files get names of one second with equally long microsecond parts, so their
    order does not depend on how the server compares delivery times (see
    test_maildrop_is_oldest_first_by_the_delivery_time_in_the_name).
    """
    msgs = [
        message("one", b"first body\r\n"),
        message("two", b".leading dot\r\n..two dots\r\n.\r\nend\r\n"),
        message("three", b"line 1\r\nline 2\r\nline 3\r\nline 4\r\n"),
    ]
    box = srv.config.mail_dir / user
    now = int(time.time())
    for i, m in enumerate(msgs):
        write_message(box, maildir_name(now, 100000 + i, i), m)
    return msgs


def assert_err(client: RawPop3, command: str | bytes) -> None:
    """``command`` gets a single-line -ERR (and nothing else)."""
    reply = client.cmd(command)
    assert not reply.ok, (command, reply)
    assert reply.raw.count(b"\r\n") == 1, (command, reply)


def on_disk(srv, user: str = "alice") -> list[Path]:
    box = srv.config.mail_dir / user
    return [p for sub in ("new", "cur") for p in (box / sub).iterdir()]


def stat(client: RawPop3) -> tuple[int, int]:
    reply = client.cmd("STAT")
    assert reply.ok, reply
    # RFC 1939 §5: "+OK" SP count SP size, both decimal
    assert re.fullmatch(r"\d+ \d+(?: .*)?", reply.text), reply.raw
    count, size = reply.words()[:2]
    return int(count), int(size)


def scan_listing(reply) -> dict[int, int]:
    """LIST body: message number -> size (RFC 1939 §5 scan listing)."""
    result: dict[int, int] = {}
    for line in reply.lines:
        assert re.fullmatch(rb"\d+ \d+", line), line
        number, size = line.split(b" ")
        result[int(number)] = int(size)
    return result


def uidl_listing(reply) -> dict[int, str]:
    result: dict[int, str] = {}
    for line in reply.lines:
        number, uid = line.decode("ascii").split(" ")
        result[int(number)] = uid
    return result


# -- greeting ------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["pop3", "pop3s"])
def test_greeting_is_one_ok_line_without_an_apop_timestamp(pop_server, listener):
    client = raw_pop3(pop_server, listener, greeting=False)
    reply = client.read_reply()
    assert reply.ok
    assert reply.raw.count(b"\r\n") == 1
    # no APOP (docs: the greeting carries no <timestamp>; RFC 1939 §7 msg-id form)
    assert not re.search(r"<[^>]*>", reply.text), reply.text
    client.assert_silent(0.1)


# -- CAPA ------------------------------------------------------------------------------------


def test_capa_before_stls_offers_stls_and_no_login(pop_server):
    client = raw_pop3(pop_server, "pop3")
    reply = client.cmd("CAPA", multiline=True)
    assert reply.ok
    caps = reply.capabilities()
    assert set(caps) >= BASE_CAPS | {"STLS"}
    assert "USER" not in caps
    assert "SASL" not in caps
    assert "LOGIN-DELAY" not in caps  # not configured
    assert caps["IMPLEMENTATION"], "IMPLEMENTATION carries a text"


def test_capa_lines_follow_the_rfc_2449_grammar(pop_server):
    client = tls_session(pop_server, "stls")
    reply = client.cmd("CAPA", multiline=True)
    # RFC 2449 §5: capability = capa-tag *(SP param); capa-tag = 1*cchar (printable ASCII)
    assert reply.lines
    for line in reply.lines:
        assert re.fullmatch(rb"[\x21-\x7e]+(?: [\x21-\x7e]+)*", line), line


@pytest.mark.parametrize("mode", TLS_MODES)
def test_capa_inside_tls_offers_user_and_sasl_plain_and_no_stls(pop_server, mode):
    client = tls_session(pop_server, mode)
    caps = client.cmd("CAPA", multiline=True).capabilities()
    assert set(caps) >= BASE_CAPS | {"USER", "SASL"}
    assert "PLAIN" in caps["SASL"]
    assert "STLS" not in caps


@pytest.mark.parametrize("mode", TLS_MODES)
def test_capa_in_transaction_repeats_the_authorization_capabilities(pop_server, mode):
    # RFC 2449 §5: capabilities available in the AUTHORIZATION state MUST be announced
    # in both states; the docs: the same list.
    client = tls_session(pop_server, mode)
    before = client.cmd("CAPA", multiline=True).capabilities()
    assert client.login("alice", pop_server.passwords["alice"]).ok
    after = client.cmd("CAPA", multiline=True).capabilities()
    assert after == before


def test_capa_with_poplib(pop_server):
    client = pop_server.pop3()
    caps = client.capa()
    assert "USER" in caps
    assert "PLAIN" in caps["SASL"]
    assert "STLS" not in caps


# -- every command -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", TLS_MODES)
def test_every_command_with_poplib(pop_server, mode):
    msgs = three_messages(pop_server)
    client = poplib_session(pop_server, mode, "alice")
    count, size = client.stat()
    assert (count, size) == (3, sum(map(len, msgs)))
    resp, listing, _ = client.list()
    assert resp.startswith(b"+OK")
    assert listing == [f"{i + 1} {len(m)}".encode() for i, m in enumerate(msgs)]
    assert client.list(2) == f"+OK 2 {len(msgs[1])}".encode()
    for i, m in enumerate(msgs, 1):
        _, lines, octets = client.retr(i)
        assert b"\r\n".join(lines) + b"\r\n" == m
        assert octets == len(m)
    _, lines, _ = client.top(3, 2)
    head, _ = msgs[2].split(b"\r\n\r\n", 1)
    assert lines == [*head.split(b"\r\n"), b"", b"line 1", b"line 2"]
    _, uids, _ = client.uidl()
    assert [u.split(b" ")[0] for u in uids] == [b"1", b"2", b"3"]
    assert client.uidl(2) == b"+OK " + uids[1]
    assert client.noop().startswith(b"+OK")
    assert client.dele(1).startswith(b"+OK")
    assert client.stat() == (2, len(msgs[1]) + len(msgs[2]))
    assert client.rset().startswith(b"+OK")
    assert client.stat() == (3, size)
    assert client.dele(2).startswith(b"+OK")
    assert client.quit().startswith(b"+OK")
    assert [crlf(m) for m in pop_server.messages("alice")] == [msgs[0], msgs[2]]


def test_stat_list_and_retr_agree_on_numbers_and_sizes(pop_server):
    msgs = three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    count, total = stat(client)
    listing = scan_listing(client.cmd("LIST", multiline=True))
    assert count == 3 == len(listing)
    assert sorted(listing) == [1, 2, 3]
    assert total == sum(listing.values())
    for number, size in listing.items():
        reply = client.cmd(f"LIST {number}")
        assert reply.ok
        assert reply.words()[:2] == [str(number), str(size)]
        retr = client.cmd(f"RETR {number}", multiline=True)
        assert retr.ok
        # RFC 1939 §5/§11: the size is the exact octet count, before byte-stuffing
        assert len(retr.body) == size
        assert retr.body == msgs[number - 1]


def subjects(client: RawPop3, count: int) -> list[bytes]:
    result = []
    for number in range(1, count + 1):
        body = client.cmd(f"RETR {number}", multiline=True).body
        found = re.search(rb"Subject: (\w+)", body)
        assert found is not None, body
        result.append(found.group(1))
    return result


def test_maildrop_is_oldest_first_by_the_delivery_time_in_the_name(pop_server):
    # docs: oldest first, by the delivery time in the file name. The store writes
    # "<seconds>.M<microseconds>..." without zero padding, so comparing names as
    # strings would put M100000 before M99999 of the same second.
    box = pop_server.config.mail_dir / "alice"
    write_message(box, maildir_name(1000, 100000, 1), message("third"))
    write_message(box, maildir_name(1000, 99999, 2), message("second"))
    write_message(box, maildir_name(999, 999999, 3), message("first"))
    write_message(box, maildir_name(10000, 0, 4), message("fourth"))
    client = tls_session(pop_server, "pop3s", "alice")
    assert subjects(client, 4) == [b"first", b"second", b"third", b"fourth"]


def test_maildrop_merges_new_and_cur_by_delivery_time(pop_server):
    box = pop_server.config.mail_dir / "alice"
    write_message(box, maildir_name(1002, 0, 1), message("third"))
    write_message(box, maildir_name(1001, 0, 2) + ":2,S", message("second"), sub="cur")
    write_message(box, maildir_name(1000, 0, 3), message("first"))
    client = tls_session(pop_server, "pop3s", "alice")
    assert subjects(client, 3) == [b"first", b"second", b"third"]


def test_retr_keeps_the_file_and_does_not_move_it(pop_server):
    msgs = three_messages(pop_server)
    before = sorted(p.name for p in pop_server.mailbox_new("alice").iterdir())
    client = tls_session(pop_server, "stls", "alice")
    for number in (1, 2, 3):
        assert client.cmd(f"RETR {number}", multiline=True).ok
    assert client.cmd("QUIT").ok
    assert client.read_all_until_close() == b""
    # docs: files are not moved or renamed by POP3
    assert sorted(p.name for p in pop_server.mailbox_new("alice").iterdir()) == before
    assert pop_server.messages("alice") == msgs


def test_top(pop_server):
    msgs = three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    head = msgs[2].split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    # RFC 1939 §7: the headers, the blank line, then n lines of the body
    assert client.cmd("TOP 3 0", multiline=True).body == head
    assert client.cmd("TOP 3 1", multiline=True).body == head + b"line 1\r\n"
    assert client.cmd("TOP 3 4", multiline=True).body == msgs[2]
    assert client.cmd("TOP 3 100", multiline=True).body == msgs[2]
    # dot lines in the part sent are stuffed (the strict reader checks) and come back
    top2 = client.cmd("TOP 2 3", multiline=True).body
    assert top2.endswith(b"\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n")
    assert top2.startswith(msgs[1].split(b"\r\n\r\n")[0])


def test_uidl(pop_server):
    three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    uids = uidl_listing(client.cmd("UIDL", multiline=True))
    assert sorted(uids) == [1, 2, 3]
    assert len(set(uids.values())) == 3
    for number, uid in uids.items():
        # RFC 1939 §7: unique-id is 1 to 70 characters in the range 0x21 to 0x7E
        assert re.fullmatch(r"[\x21-\x7e]{1,70}", uid), uid
        reply = client.cmd(f"UIDL {number}")
        assert reply.ok
        assert reply.words() == [str(number), uid]


def test_dele_hides_the_message_from_stat_list_and_uidl(pop_server):
    msgs = three_messages(pop_server)
    client = tls_session(pop_server, "stls", "alice")
    uids = uidl_listing(client.cmd("UIDL", multiline=True))
    assert client.cmd("DELE 2").ok
    # RFC 1939 §5: messages marked as deleted are not counted / listed
    assert stat(client) == (2, len(msgs[0]) + len(msgs[2]))
    assert scan_listing(client.cmd("LIST", multiline=True)) == {1: len(msgs[0]), 3: len(msgs[2])}
    assert uidl_listing(client.cmd("UIDL", multiline=True)) == {1: uids[1], 3: uids[3]}
    # numbers do not shift
    assert client.cmd("RETR 3", multiline=True).body == msgs[2]


def test_commands_on_a_deleted_message_are_err(pop_server):
    three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    assert client.cmd("DELE 2").ok
    for command in ["LIST 2", "RETR 2", "DELE 2", "TOP 2 0", "UIDL 2"]:
        assert_err(client, command)
    assert client.cmd("NOOP").ok


def test_rset_unmarks_and_answers_ok(pop_server):
    msgs = three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    for number in (1, 2, 3):
        assert client.cmd(f"DELE {number}").ok
    assert stat(client) == (0, 0)
    assert client.cmd("LIST", multiline=True).lines == ()
    assert client.cmd("RSET").ok
    assert stat(client) == (3, sum(map(len, msgs)))
    assert client.cmd("RETR 1", multiline=True).body == msgs[0]


def test_noop_in_transaction(pop_server):
    client = tls_session(pop_server, "pop3s", "alice")
    reply = client.cmd("NOOP")
    assert reply.ok
    assert reply.raw.count(b"\r\n") == 1


def test_empty_maildrop(pop_server):
    client = tls_session(pop_server, "stls", "bob")
    assert stat(client) == (0, 0)
    assert client.cmd("LIST", multiline=True).lines == ()
    assert client.cmd("UIDL", multiline=True).lines == ()
    assert not client.cmd("RETR 1").ok


@pytest.mark.parametrize("state", ["authorization", "transaction"])
def test_quit_answers_ok_and_closes(pop_server, state):
    client = tls_session(pop_server, "pop3s", "alice" if state == "transaction" else None)
    reply = client.cmd("QUIT")
    assert reply.ok
    assert client.read_all_until_close() == b""


def test_messages_delivered_during_a_session_appear_in_the_next_one(pop_server):
    three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    assert stat(client)[0] == 3
    late = message("late")
    pop_server.deliver("alice", late)
    assert stat(client)[0] == 3
    assert not client.cmd("RETR 4").ok
    assert client.cmd("DELE 1").ok
    assert client.cmd("QUIT").ok
    assert client.read_all_until_close() == b""
    # the late message was neither shown nor deleted
    client = tls_session(pop_server, "pop3s", "alice")
    assert stat(client)[0] == 3
    bodies = [client.cmd(f"RETR {n}", multiline=True).body for n in (1, 2, 3)]
    assert late in bodies


# -- states, unknown commands, arguments --------------------------------------------------------


def test_transaction_commands_in_authorization_are_err(pop_server):
    three_messages(pop_server)
    client = tls_session(pop_server, "pop3s")
    for command in TRANSACTION_ONLY:
        assert_err(client, command)
    # the session goes on, still in AUTHORIZATION
    assert client.login("alice", pop_server.passwords["alice"]).ok
    assert stat(client)[0] == 3  # and nothing was deleted by a DELE before login


def test_authorization_commands_in_transaction_are_err(pop_server):
    client = tls_session(pop_server, "pop3s", "alice")
    for command in ["USER alice", "PASS secret", "AUTH PLAIN AGFsaWNlAHg=", "STLS", "APOP a b"]:
        assert_err(client, command)
    assert client.cmd("NOOP").ok


UNKNOWN = ["XYZZY", "HELO x", "EHLO client.test", "LAST", "RETRX 1", "STATUS", "LISTX"]


@pytest.mark.parametrize("state", ["authorization", "transaction"])
def test_unknown_commands_are_err_and_the_session_goes_on(pop_server, state):
    client = tls_session(pop_server, "pop3s", "alice" if state == "transaction" else None)
    for command in UNKNOWN:
        assert_err(client, command)
    assert client.cmd("CAPA", multiline=True).ok


def test_lines_that_are_not_commands_are_err_and_the_session_goes_on(pop_server):
    three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    for line in [b"", b" ", b" STAT", b"\tSTAT", b"STAT\t", b"123", b"*", b"="]:
        assert_err(client, line)
    assert stat(client)[0] == 3


def test_keywords_are_case_insensitive(pop_server):
    three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    for line in ["stat", "Stat", "list", "LiSt 1", "retr 1", "tOp 1 0", "uidl", "uidl 1", "noop"]:
        multiline = line.lower() in ("list", "retr 1", "top 1 0", "uidl")
        reply = client.cmd(line, multiline=multiline)
        assert reply.ok, (line, reply)
        assert client.cmd(line.upper(), multiline=multiline).raw == reply.raw, line


def test_lower_case_login_and_quit(pop_server):
    client = tls_session(pop_server, "pop3s")
    assert client.cmd("user alice").ok
    assert client.cmd(f"pass {pop_server.passwords['alice']}").ok
    assert client.cmd("dele 1").ok is False  # empty maildrop, but the keyword was understood
    assert client.cmd("quit").ok
    assert client.read_all_until_close() == b""


def test_lower_case_stls(pop_server):
    client = raw_pop3(pop_server, "pop3")
    assert client.cmd("stls").ok
    client.starttls(pop_server.tls_context())
    assert client.login("alice", pop_server.passwords["alice"]).ok


BAD_NUMBERS = ["0", "4", "999", "abc", "-1", "+1", "1.0", "1x", "99999999999999999999999"]


@pytest.mark.parametrize("keyword", ["LIST", "RETR", "DELE", "UIDL"])
def test_invalid_message_numbers_are_err(pop_server, keyword):
    msgs = three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    for number in BAD_NUMBERS:
        assert_err(client, f"{keyword} {number}")
    assert stat(client) == (3, sum(map(len, msgs)))  # nothing was marked


def test_top_with_bad_arguments_is_err(pop_server):
    three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    for args in ["", " 1", " 0 1", " 4 1", " abc 1", " 1 abc", " 1 -1", " 1 1 1", " 1 1x"]:
        assert_err(client, f"TOP{args}")
    assert client.cmd("NOOP").ok


def test_missing_or_extra_arguments_are_err(pop_server):
    msgs = three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    for command in ["RETR", "DELE", "STAT 1", "NOOP 1", "RSET 1", "LIST 1 2", "UIDL 1 2"]:
        assert_err(client, command)
    assert stat(client) == (3, sum(map(len, msgs)))


@pytest.mark.parametrize("state", ["authorization", "transaction"])
def test_quit_with_an_argument_is_err_and_the_session_goes_on(pop_server, state):
    # RFC 1939 §6/§5: QUIT takes no argument; docs: a bad argument gets -ERR and the
    # session goes on (and nothing is deleted)
    msgs = three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice" if state == "transaction" else None)
    if state == "transaction":
        assert client.cmd("DELE 1").ok
    assert_err(client, "QUIT now")
    assert len(on_disk(pop_server)) == len(msgs)
    assert client.cmd("CAPA", multiline=True).ok


# -- byte-stuffing and sizes ------------------------------------------------------------------


def test_message_sent_over_smtp_comes_back_over_retr_byte_identical(pop_server):
    sent = (
        b"From: Sender <sender@remote.test>\r\n"
        b"To: alice@example.test\r\n"
        b"Subject: dots\r\n"
        b"\r\n"
        b".starts with a dot\r\n"
        b".\r\n"
        b"..\r\n"
        b"...three\r\n"
        b"a line with a . inside\r\n"
        b". \r\n"
        b"\r\n"
        b"last line\r\n"
    )
    smtp = pop_server.smtp()
    smtp.sendmail("sender@remote.test", ["alice@example.test"], sent)  # smtplib dot-stuffs
    (stored,) = pop_server.messages("alice")
    client = tls_session(pop_server, "stls", "alice")
    listing = scan_listing(client.cmd("LIST", multiline=True))
    reply = client.cmd("RETR 1", multiline=True)
    assert reply.ok
    # on the wire every line starting with "." was stuffed (the raw client checked)
    assert b"\r\n..starts with a dot\r\n" in reply.raw
    assert b"\r\n..\r\n...\r\n....three\r\n" in reply.raw
    assert reply.body == stored
    assert pop_server.split_trace(reply.body)[1] == sent
    assert listing == {1: len(stored)}


def test_message_that_is_only_dots_and_empty_lines(pop_server):
    body = b".\r\n\r\n.\r\n..\r\n\r\n"
    pop_server.deliver("alice", body)
    client = tls_session(pop_server, "pop3s", "alice")
    reply = client.cmd("RETR 1", multiline=True)
    assert reply.raw.endswith(b"\r\n..\r\n\r\n..\r\n...\r\n\r\n.\r\n")
    assert reply.body == body


def test_bare_lf_file_is_served_with_crlf_and_sized_in_crlf(pop_server):
    box = pop_server.config.mail_dir / "alice"
    stored = b"Subject: bare LF\nFrom: x@remote.test\n\n.dot line\nbody\n\nend\n"
    write_message(box, maildir_name(int(time.time()), 1, 1), stored)
    expected = crlf(stored)
    client = tls_session(pop_server, "pop3s", "alice")
    assert stat(client) == (1, len(expected))
    assert scan_listing(client.cmd("LIST", multiline=True)) == {1: len(expected)}
    assert client.cmd("LIST 1").words()[:2] == ["1", str(len(expected))]
    reply = client.cmd("RETR 1", multiline=True)
    assert reply.body == expected
    assert b"\r\n..dot line\r\n" in reply.raw
    head = client.cmd("TOP 1 1", multiline=True).body
    assert head == b"Subject: bare LF\r\nFrom: x@remote.test\r\n\r\n.dot line\r\n"


def test_bare_lf_file_named_with_its_file_size_is_still_sized_in_crlf(pop_server):
    # maildir(5) writers put ",S=<file size>" into the name; POP3 must count CRLF octets
    box = pop_server.config.mail_dir / "alice"
    stored = b"Subject: S=\n\none\ntwo\n"
    write_message(box, f"{maildir_name(int(time.time()), 2, 2)},S={len(stored)}", stored)
    client = tls_session(pop_server, "pop3s", "alice")
    assert stat(client) == (1, len(crlf(stored)))
    assert client.cmd("RETR 1", multiline=True).body == crlf(stored)


def test_mixed_line_ends_are_all_served_as_crlf(pop_server):
    box = pop_server.config.mail_dir / "alice"
    stored = b"Subject: mixed\r\n\nlf\r\ncrlf\n.\n"
    write_message(box, maildir_name(int(time.time()), 3, 3), stored)
    client = tls_session(pop_server, "pop3s", "alice")
    reply = client.cmd("RETR 1", multiline=True)
    assert reply.body == crlf(stored)
    assert stat(client)[1] == len(crlf(stored))


def test_file_without_a_final_newline_is_sized_as_it_is_sent(pop_server):
    # The terminating "." must be on a line of its own, so RETR has to add a CRLF after
    # the last line; LIST must announce the octets RETR delivers (issue 5: sizes
    # consistent between STAT, LIST and RETR; RFC 1939 §11: exact size in octets).
    box = pop_server.config.mail_dir / "alice"
    stored = b"Subject: no final newline\r\n\r\nlast line"
    write_message(box, maildir_name(int(time.time()), 4, 4), stored)
    client = tls_session(pop_server, "pop3s", "alice")
    reply = client.cmd("RETR 1", multiline=True)
    assert reply.body == stored + b"\r\n"
    assert stat(client)[1] == len(reply.body)
    assert scan_listing(client.cmd("LIST", multiline=True)) == {1: len(reply.body)}


def test_large_message_with_long_lines(pop_server):
    line = b"x" * 998 + b"\r\n"
    msg = message("big", (line + b"." + line) * 600)  # about 1.2 MB
    pop_server.deliver("alice", msg)
    client = tls_session(pop_server, "pop3s", "alice")
    assert stat(client) == (1, len(msg))
    assert client.cmd("RETR 1", multiline=True).body == msg


# -- pipelining (RFC 2449 §6.6) ------------------------------------------------------------------


def test_pipelined_commands_are_answered_in_order(pop_server):
    msgs = three_messages(pop_server)
    client = tls_session(pop_server, "pop3s")
    password = pop_server.passwords["alice"]
    client.send(
        f"USER alice\r\nPASS {password}\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 2\r\nLIST 9\r\n"
        "TOP 1 0\r\nDELE 1\r\nXYZZY\r\nLIST 1\r\nRSET\r\nNOOP\r\nLIST 1\r\nQUIT\r\n".encode()
    )
    shapes = [False, False, False, True, True, True, False, True, False, False, False]
    shapes += [False, False, False, False]
    (user, pw, st, lst, uidl, retr, bad, top, dele, unknown, gone, rset, noop, again, quit_) = (
        client.read_replies(shapes)
    )
    assert user.ok and pw.ok
    assert st.words()[:2] == ["3", str(sum(map(len, msgs)))]
    assert scan_listing(lst) == {i + 1: len(m) for i, m in enumerate(msgs)}
    assert sorted(uidl_listing(uidl)) == [1, 2, 3]
    assert retr.body == msgs[1]
    assert not bad.ok
    assert top.body == msgs[0].split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert dele.ok
    assert not unknown.ok
    assert not gone.ok
    assert rset.ok and noop.ok
    assert again.ok and again.words()[:2] == ["1", str(len(msgs[0]))]
    assert quit_.ok
    assert client.read_all_until_close() == b""
    assert len(pop_server.messages("alice")) == 3


def test_many_pipelined_commands_in_one_write(pop_server):
    three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    client.send(b"NOOP\r\nRETR 1\r\n" * 200)
    replies = client.read_replies([False, True] * 200)
    assert all(r.ok for r in replies)
    assert len({r.raw for r in replies[1::2]}) == 1
    client.assert_silent(0.1)


def test_pipelined_commands_before_login_are_answered_in_order(pop_server):
    client = raw_pop3(pop_server, "pop3")
    client.send(b"CAPA\r\nNOOP\r\nCAPA\r\n")
    first, noop, second = client.read_replies([True, False, True])
    assert first.ok and second.ok and first.raw == second.raw
    assert not noop.ok  # NOOP is a TRANSACTION command


# -- line limits ------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["authorization", "transaction"])
def test_too_long_line_is_err_and_the_session_goes_on(pop_server, state):
    three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice" if state == "transaction" else None)
    reply = client.cmd(b"NOOP " + b"x" * 2000)
    assert not reply.ok
    assert "too long" in reply.text.lower(), reply.text
    # the tail of the long line was not taken for a command; one -ERR only
    client.assert_silent(0.05)
    if state == "transaction":
        assert stat(client)[0] == 3
    else:
        assert client.login("alice", pop_server.passwords["alice"]).ok


def test_very_long_line_is_drained_not_buffered(pop_server):
    client = tls_session(pop_server, "pop3s", "alice")
    client.send(b"LIST " + b"1" * (2 * 1024 * 1024) + b"\r\nNOOP\r\n")
    too_long, noop = client.read_replies([False, False])
    assert not too_long.ok
    assert noop.ok


def test_command_line_of_1024_octets_is_accepted(pop_server):
    # docs: command lines up to 1024 octets (counted with or without the CRLF, this fits)
    client = tls_session(pop_server, "pop3s")
    line = b"USER " + b"a" * 1017
    assert len(line) + 2 == 1024
    reply = client.cmd(line)
    assert reply.ok, reply  # USER always answers +OK
    assert "too long" not in reply.text.lower()
    over = client.cmd(b"USER " + b"a" * 1020)  # 1025 octets before the CRLF
    assert not over.ok
    assert "too long" in over.text.lower()


def test_bare_lf_bare_cr_nul_and_non_utf8_lines_are_err(pop_server):
    three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    for line in [
        b"NOOP\nX\r\n",
        b"NO\rOP\r\n",
        b"NOOP\r\r\n",
        b"NO\x00OP\r\n",
        b"USER \xff\xfe\r\n",
    ]:
        client.send(line)
        reply = client.read_reply()
        assert not reply.ok, (line, reply)
    assert stat(client)[0] == 3


def test_bare_lf_does_not_end_a_command(pop_server):
    # RFC 1939 §3: commands end in CRLF; "DELE 1\nQUIT\r\n" is one bad line: neither a
    # DELE nor a QUIT runs
    three_messages(pop_server)
    client = tls_session(pop_server, "pop3s", "alice")
    client.send(b"DELE 1\nQUIT\r\n")
    (bad,) = client.read_replies([False])
    assert not bad.ok
    assert stat(client)[0] == 3
    assert client.cmd("QUIT").ok
    assert client.read_all_until_close() == b""
    assert len(pop_server.messages("alice")) == 3


# -- autologout (RFC 1939 §3) -------------------------------------------------------------------


@pytest.mark.parametrize("mode", TLS_MODES)
def test_autologout_closes_without_a_response_and_without_update(start_server, mode):
    srv = start_server(pop3={"autologout": 0.3})
    three_messages(srv)
    client = tls_session(srv, mode, "alice")
    assert client.cmd("DELE 1").ok
    started = time.monotonic()
    assert client.read_all_until_close() == b""  # closed, and no response of any kind
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3.0, elapsed
    assert len(srv.messages("alice")) == 3
    again = tls_session(srv, mode, "alice")  # and the lock is gone
    assert stat(again)[0] == 3


def test_autologout_in_authorization(start_server):
    srv = start_server(pop3={"autologout": 0.3})
    client = raw_pop3(srv, "pop3")
    started = time.monotonic()
    assert client.read_all_until_close() == b""
    assert time.monotonic() - started >= 0.25


def test_every_command_restarts_the_autologout_timer(start_server):
    srv = start_server(pop3={"autologout": 0.3})
    client = tls_session(srv, "pop3s", "alice")
    for _ in range(3):  # 0.6 s in all, twice the timer
        time.sleep(0.2)
        assert client.cmd("NOOP").ok


# -- connection limit ---------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["pop3", "pop3s"])
def test_connection_limit_is_err_sys_temp_and_close(start_server, listener):
    srv = start_server(limits={"max_connections": 2})
    first = raw_pop3(srv, "pop3")
    raw_pop3(srv, "pop3s")
    extra = raw_pop3(srv, listener, greeting=False)
    reply = extra.read_reply()
    assert not reply.ok
    assert reply.code == "SYS/TEMP"
    assert extra.read_all_until_close() == b""
    # the others still work, and a freed slot can be taken again
    assert first.cmd("QUIT").ok
    assert first.read_all_until_close() == b""
    deadline = time.monotonic() + 3
    while True:
        client = raw_pop3(srv, "pop3", greeting=False)
        reply = client.read_reply()
        if reply.ok or time.monotonic() > deadline:
            break
        client.close()
        time.sleep(0.05)
    assert reply.ok, reply


def test_a_client_that_never_reads_does_not_block_others(pop_server):
    big = message("big", b"z" * 998 + b"\r\n") + b"y" * 2_000_000 + b"\r\n"
    pop_server.deliver("alice", big)
    stuck = tls_session(pop_server, "pop3s", "alice")
    stuck.send(b"RETR 1\r\n" * 10)  # 20 MB of responses nobody reads
    # meanwhile another session is served normally
    other = tls_session(pop_server, "stls", "bob")
    assert stat(other) == (0, 0)
    assert other.cmd("QUIT").ok


def test_server_stop_closes_pop3_sessions_and_deletes_nothing(start_server):
    srv = start_server()
    three_messages(srv)
    client = tls_session(srv, "pop3s", "alice")
    assert client.cmd("DELE 1").ok
    srv.stop()
    client.sock.settimeout(5.0)
    data = client.read_all_until_close()
    # the docs do not say whether a shutdown notice is sent; nothing else may be
    assert data == b"" or data.startswith(b"-ERR"), data
    box = srv.config.mail_dir / "alice" / "new"
    assert len(list(box.iterdir())) == 3


def _unraisable_during_gc() -> list[str]:
    """Collect garbage; what ``__del__`` methods complained about (ResourceWarnings)."""
    found: list[str] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: found.append(f"{u.exc_type.__name__}: {u.exc_value}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        found += [str(w.message) for w in caught]
    finally:
        sys.unraisablehook = old_hook
    return found


@pytest.mark.parametrize("mode", TLS_MODES)
def test_quit_over_tls_closes_the_tcp_connection(pop_server, mode):
    # RFC 1939 §6: after the QUIT response the server closes the connection. With TLS
    # the server sends close_notify and need not wait for the client's (RFC 8446 §6.1);
    # a client that never answers must not keep the server's socket open.
    client = tls_session(pop_server, mode, "alice")
    assert client.cmd("QUIT").ok
    assert client.read_all_until_close() == b""  # close_notify
    tcp = socket.socket(fileno=client.sock.detach())
    client.sock = tcp
    tcp.settimeout(1.0)
    try:
        rest = tcp.recv(100)
    except TimeoutError:
        pytest.fail("the server kept the TCP connection open after QUIT and close_notify")
    except ConnectionResetError:
        rest = b""
    assert rest == b""


def test_server_stop_after_a_tls_quit_leaves_no_unclosed_transport(start_server):
    srv = start_server()
    client = tls_session(srv, "pop3s", "alice")
    assert client.cmd("QUIT").ok
    assert client.read_all_until_close() == b""
    srv.stop()  # the client has not closed its side yet
    leaks = [text for text in _unraisable_during_gc() if "unclosed" in text]
    assert leaks == []


def test_poplib_error_on_bad_message_number(pop_server):
    client = pop_server.pop3s("alice")
    with pytest.raises(poplib.error_proto):
        client.retr(1)
    assert client.noop().startswith(b"+OK")
