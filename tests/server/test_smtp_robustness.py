"""Hostile and unlucky clients: bad bytes, huge lines, many connections, vanishing
clients, the connection limit, timeouts (RFC 5321 §4.5.3.2) and shutdown (§3.8)."""

from __future__ import annotations

import base64
import gc
import resource
import socket
import time
import warnings

import pytest


def _assert_usable(client):
    assert client.cmd("NOOP").code == 250
    assert client.cmd("RSET").code == 250


# -- bad bytes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [b"NO\0OP", b"\0", b"NOOP \0", b"EHLO client\0.test", b"MAIL FROM:<a\0@remote.test>"],
    ids=["in-verb", "alone", "in-arg", "in-ehlo", "in-mail"],
)
def test_nul_in_a_command_is_500_and_the_session_continues(mail_server, line):
    client = mail_server.raw()
    client.ehlo()
    reply = client.cmd(line)
    assert reply.code == 500
    _assert_usable(client)
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503  # no MAIL went through


# 8-bit bytes that are not UTF-8 (0xff, 0xfe never occur in UTF-8) or valid UTF-8 in
# places where the session has not negotiated it. Each must get a reply, not a crash.
EIGHT_BIT = [
    pytest.param(b"\xff\xfe", None, id="verb-only"),
    pytest.param(b"N\xd6OP", None, id="in-verb"),
    pytest.param(b"NOOP \xff\xfe", None, id="noop-arg"),
    pytest.param(b"VRFY \xff", None, id="vrfy-arg"),
    pytest.param(b"HELP \xff", None, id="help-arg"),
    pytest.param(b"EHLO \xff", None, id="ehlo-invalid-utf8"),
    pytest.param(b"EHLO client\xff.test", None, id="ehlo-invalid-utf8-in-name"),
    pytest.param(b"HELO \xff\xfe", None, id="helo-invalid-utf8"),
    pytest.param(b"MAIL FROM:<\xff@remote.test>", None, id="mail-invalid-utf8"),
    pytest.param(b"MAIL FROM:<s@remote.test> \xff=1", None, id="mail-param"),
    pytest.param(b"RCPT TO:<\xff@example.test>", "MAIL", id="rcpt-invalid-utf8"),
    pytest.param(b"RCPT TO:<\xff@example.test>", "MAIL-UTF8", id="rcpt-invalid-utf8-smtputf8"),
    pytest.param(b"RCPT TO:<\xff@elsewhere.test>", "MAIL-UTF8", id="rcpt-remote-invalid-utf8"),
    pytest.param(b"DATA \xff", "RCPT", id="data-arg"),
]


@pytest.mark.parametrize(("line", "setup"), EIGHT_BIT)
def test_8bit_bytes_in_a_command_get_a_reply_not_a_crash(mail_server, line, setup):
    client = mail_server.raw()
    client.ehlo()
    if setup in ("MAIL", "RCPT"):
        assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    if setup == "MAIL-UTF8":
        assert client.cmd("MAIL FROM:<sender@remote.test> SMTPUTF8").code == 250
    if setup == "RCPT":
        assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    client.send(line + b"\r\n")
    reply = client.read_reply()  # ServerClosed here means the session crashed
    assert 200 <= reply.code < 600
    if not line.startswith((b"NOOP", b"VRFY", b"HELP")):
        assert reply.code >= 500, f"{line!r} was accepted: {reply}"
    _assert_usable(client)


def test_mail_from_with_invalid_utf8_is_refused_even_with_smtputf8(mail_server):
    # RFC 6531 §3.3: addresses are UTF-8 (RFC 3629); 0xff is never part of UTF-8
    client = mail_server.raw()
    client.ehlo()
    reply = client.cmd(b"MAIL FROM:<\xff\xfe@remote.test> SMTPUTF8")
    assert reply.code >= 500, reply


def test_auth_mechanism_with_invalid_utf8_gets_a_reply(mail_server):
    client = mail_server.raw("submission")
    client.ehlo()
    assert client.cmd("STARTTLS").code == 220
    client.starttls(mail_server.tls_context())
    client.ehlo()
    reply = client.cmd(b"AUTH \xff\xfe")
    assert reply.code >= 500
    _assert_usable(client)


def test_valid_utf8_ehlo_name_is_fine(mail_server):
    client = mail_server.raw()
    reply = client.cmd("EHLO bücher.test")
    assert reply.code == 250
    _assert_usable(client)


# -- long lines ------------------------------------------------------------------------


def test_100k_command_line_is_500_line_too_long_and_the_session_continues(mail_server):
    client = mail_server.raw()
    client.ehlo()
    client.send(b"NOOP " + b"a" * 100_000 + b"\r\n")
    reply = client.read_reply()
    assert reply.code == 500
    assert "too long" in reply.text
    _assert_usable(client)


def test_100k_line_in_chunks_is_one_error(mail_server):
    client = mail_server.raw()
    client.ehlo()
    client.send(b"MAIL FROM:<")
    for _ in range(25):
        client.send(b"b" * 4000)
        time.sleep(0.002)
    client.send(b"@remote.test>\r\nNOOP\r\n")
    replies = client.read_replies(2)
    assert [r.code for r in replies] == [500, 250]
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503  # the MAIL did not run


def test_512_octet_command_line_is_accepted(mail_server):
    # RFC 5321 §4.5.3.1.4: at least 512 octets including the CRLF
    client = mail_server.raw()
    line = b"NOOP " + b"x" * (512 - 7)
    assert len(line + b"\r\n") == 512
    assert client.cmd(line).code == 250


def test_long_auth_line_within_12288_is_read(mail_server):
    # RFC 4954 §4: AUTH lines may be up to 12288 octets
    client = mail_server.raw("submission")
    client.ehlo()
    assert client.cmd("STARTTLS").code == 220
    client.starttls(mail_server.tls_context())
    client.ehlo()
    token = base64.b64encode(b"\0alice\0" + b"p" * 8000).decode()
    reply = client.cmd(f"AUTH PLAIN {token}")
    assert reply.code == 535  # read and judged, not cut off as too long


# -- many connections -------------------------------------------------------------------


def _raise_nofile(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return None
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} descriptors needed")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (ValueError, OSError) as exc:
        pytest.skip(f"cannot raise RLIMIT_NOFILE to {needed}: {exc}")
    return soft, hard


@pytest.mark.slow
def test_2000_idle_connections_while_another_client_gets_service(start_server):
    n = 2000
    # this process holds both ends of every connection, plus some slack
    previous = _raise_nofile(2 * n + 512)
    srv = start_server(limits={"max_connections": n + 50}, timeouts={"command": 30.0})
    host, port = srv.addr("mx")
    idle: list[socket.socket] = []
    try:
        for _ in range(n):
            idle.append(socket.create_connection((host, port), timeout=10))
        # another client is served while 2000 sit idle
        client = srv.raw()
        client.ehlo()
        assert client.send_message(b"Subject: busy server\r\n\r\nstill here\r\n").code == 250
        assert len(srv.messages("alice")) == 1
        assert client.cmd("QUIT").code == 221
        # and every idle one got its greeting (accepted and served, not left in the backlog)
        for sock in idle:
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(512)
                assert chunk, "an idle connection was closed"
                data += chunk
            assert data.startswith(b"220 ")
    finally:
        for sock in idle:
            sock.close()
        if previous is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, previous)


def test_client_vanishing_mid_data_stores_nothing(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(b"Subject: half\r\n\r\nthe first half of the bo")
    client.close()
    # the server keeps serving
    other = mail_server.raw()
    other.ehlo()
    assert other.send_message(b"Subject: whole\r\n\r\ncomplete\r\n").code == 250
    assert other.cmd("QUIT").code == 221
    (stored,) = mail_server.messages("alice")
    assert mail_server.split_trace(stored)[1] == b"Subject: whole\r\n\r\ncomplete\r\n"


def test_client_resetting_mid_data_stores_nothing(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<bob@example.test>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(b"Subject: half\r\n\r\nline\r\n")
    # abortive close: RST instead of FIN
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()
    other = mail_server.raw()
    other.ehlo()
    reply = other.send_message(b"Subject: x\r\n\r\n\r\n", recipients=["alice@example.test"])
    assert reply.code == 250
    assert mail_server.messages("bob") == []


def test_client_vanishing_without_data_after_dot_stuffing_ambiguity(mail_server):
    # ends right after "\r\n." (could be the start of the end mark): still nothing stored
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(b"Subject: cut\r\n\r\nbody\r\n.")
    client.sock.shutdown(socket.SHUT_WR)
    assert client.read_all_until_close() == b""
    assert mail_server.messages("alice") == []


def test_connection_limit_421_for_the_extra_client_and_the_others_work(start_server):
    srv = start_server(limits={"max_connections": 5})
    clients = [srv.raw() for _ in range(5)]  # each has its 220
    extra = srv.raw(greeting=False)
    reply = extra.read_reply()
    assert reply.code == 421
    assert reply.enhanced == "4.7.0"
    assert extra.read_all_until_close() == b""
    # the first five still work
    for i, client in enumerate(clients):
        client.ehlo()
        body = f"Subject: client {i}\r\n\r\n\r\n".encode()
        assert client.send_message(body).code == 250
    assert len(srv.messages("alice")) == 5
    # a slot freed by QUIT can be used again
    assert clients[0].cmd("QUIT").code == 221
    assert clients[0].read_all_until_close() == b""
    again = srv.raw()  # gets 220
    again.ehlo()


def test_connection_limit_counts_all_listeners(start_server):
    srv = start_server(limits={"max_connections": 2})
    srv.raw("mx")
    srv.raw("submission")
    extra = srv.raw_tls("submissions", greeting=False)
    assert extra.read_reply().code == 421


# -- timeouts -------------------------------------------------------------------------


def test_idle_client_gets_421_timeout_and_is_disconnected(start_server):
    srv = start_server(timeouts={"command": 0.5})
    client = srv.raw()
    started = time.monotonic()
    reply = client.read_reply()
    elapsed = time.monotonic() - started
    assert reply.code == 421
    assert reply.enhanced == "4.4.2"
    assert "timeout" in reply.text
    assert elapsed >= 0.5 - 0.05
    assert client.read_all_until_close() == b""


def test_configured_initial_timeout_applies_before_the_first_command(start_server):
    # docs/reference-server.md: timeouts.initial is "seconds to wait for the first
    # command after the greeting"; here it is much shorter than timeouts.command
    srv = start_server(timeouts={"initial": 0.5, "command": 10.0})
    client = srv.raw()
    client.sock.settimeout(2.0)
    reply = client.read_reply()
    assert reply.code == 421
    assert reply.enhanced == "4.4.2"


def test_idle_client_after_ehlo_gets_421_timeout(start_server):
    srv = start_server(timeouts={"command": 0.5})
    client = srv.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    reply = client.read_reply()
    assert reply.code == 421
    assert reply.enhanced == "4.4.2"
    assert client.read_all_until_close() == b""


def test_activity_keeps_a_session_alive(start_server):
    srv = start_server(timeouts={"command": 0.5})
    client = srv.raw()
    for _ in range(4):
        time.sleep(0.2)
        assert client.cmd("NOOP").code == 250


def test_client_idle_in_data_gets_421_and_nothing_is_stored(start_server):
    srv = start_server(timeouts={"data_block": 0.5})
    client = srv.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(b"Subject: slow\r\n\r\nand then nothing")
    reply = client.read_reply()
    assert reply.code == 421
    assert reply.enhanced == "4.4.2"
    assert client.read_all_until_close() == b""
    assert srv.messages("alice") == []


def test_client_idle_during_an_auth_exchange_gets_421_timeout(start_server):
    srv = start_server(timeouts={"command": 0.5})
    client = srv.raw("submission")
    client.ehlo()
    assert client.cmd("STARTTLS").code == 220
    client.starttls(srv.tls_context())
    client.ehlo()
    assert client.cmd("AUTH LOGIN").code == 334
    # the client never answers the challenge: the same timeout and 421 apply
    reply = client.read_reply()
    assert reply.code == 421
    assert reply.enhanced == "4.4.2"
    assert client.read_all_until_close() == b""


def test_client_idle_during_the_tls_handshake_is_disconnected(start_server):
    srv = start_server(timeouts={"command": 0.5})
    client = srv.raw("mx")
    client.ehlo()
    assert client.cmd("STARTTLS").code == 220
    # no ClientHello ever comes: the server gives up and closes
    assert client.read_all_until_close() == b""


# -- shutdown ------------------------------------------------------------------------


def test_stop_sends_421_to_an_idle_session_before_closing(mail_server):
    client = mail_server.raw()
    client.ehlo()
    mail_server.stop()
    reply = client.read_reply()
    assert reply.code == 421  # RFC 5321 §3.8
    assert reply.enhanced is not None and reply.enhanced.startswith("4.")
    assert client.read_all_until_close() == b""


def test_stop_sends_421_to_every_cleartext_session(mail_server):
    clients = [mail_server.raw("mx"), mail_server.raw("mx"), mail_server.raw("submission")]
    clients[0].ehlo()
    assert clients[1].cmd("HELO client.test").code == 250
    mail_server.stop()
    for client in clients:
        assert client.read_reply().code == 421
        assert client.read_all_until_close() == b""


@pytest.mark.parametrize("how", ["implicit", "starttls"])
def test_stop_sends_421_to_tls_sessions_and_closes_their_connections(mail_server, how):
    if how == "implicit":
        client = mail_server.raw_tls("submissions")
    else:
        client = mail_server.raw("mx")
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
        client.starttls(mail_server.tls_context())
    client.ehlo()
    try:
        mail_server.stop()
        reply = client.read_reply()
        assert reply.code == 421
        assert client.read_all_until_close() == b""  # the server's TLS close_notify
        # and then the server must close the TCP connection itself: the server thread
        # has ended, so an open connection now is a socket nobody will ever close
        try:
            tcp = client.sock.unwrap()
        except OSError:
            return  # already closed underneath: fine
        client.sock = tcp
        tcp.settimeout(1.0)
        try:
            data = tcp.recv(1)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            pytest.fail("after shutdown the server left the TCP connection of a TLS session open")
        assert data == b""
    finally:
        # finalise the server's leaked transport here, not in whatever test runs next
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            gc.collect()


def test_stop_during_data_stores_nothing_and_sends_421(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    assert client.cmd("RCPT TO:<alice@example.test>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(b"Subject: interrupted\r\n\r\npartial")
    time.sleep(0.05)
    mail_server.stop()
    assert client.read_reply().code == 421
    assert mail_server.messages("alice") == []


def test_after_stop_the_port_is_closed(mail_server):
    host, port = mail_server.addr("mx")
    mail_server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=2).close()
