"""POP3 login on the reference server: USER/PASS (RFC 1939 §7), AUTH PLAIN (RFC 5034,
RFC 4616), STLS (RFC 2595) and its command-injection guard (CVE-2011-0411), no
cleartext login unless configured, no APOP, response codes (RFC 2449 §8, RFC 3206),
the failure delay, max_auth_failures and LOGIN-DELAY (RFC 2449 §6.5)."""

from __future__ import annotations

import base64
import time

import pytest
from pop3_helpers import (
    TLS_MODES,
    RawPop3,
    plain,
    raw_pop3,
    reset,
    shared_server,
    tls_session,
)


@pytest.fixture(scope="module")
def shared(dev_setup, tmp_path_factory):
    # failures add up per client address over the module: keep their delay tiny
    yield from shared_server(
        dev_setup,
        tmp_path_factory.mktemp("pop3-auth"),
        auth_failure_delay=0.001,
        max_auth_failures=20,
    )


@pytest.fixture
def pop_server(shared):
    """The module's server: default settings, but failures cost ~nothing and never close."""
    reset(shared)
    yield shared
    reset(shared)


def logged_in(client: RawPop3) -> bool:
    """Whether the session is in TRANSACTION (STAT works only there)."""
    return client.cmd("STAT").ok


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- USER/PASS and AUTH PLAIN inside TLS ----------------------------------------------------


@pytest.mark.parametrize("mode", TLS_MODES)
def test_user_pass(pop_server, mode):
    client = tls_session(pop_server, mode)
    user = client.cmd("USER alice")
    assert user.ok
    reply = client.cmd(f"PASS {pop_server.passwords['alice']}")
    assert reply.ok, reply
    assert logged_in(client)


@pytest.mark.parametrize("mode", TLS_MODES)
def test_user_pass_with_poplib(pop_server, mode):
    client = pop_server.pop3("bob") if mode == "stls" else pop_server.pop3s("bob")
    assert client.stat() == (0, 0)
    assert client.quit().startswith(b"+OK")


@pytest.mark.parametrize("mode", TLS_MODES)
def test_auth_plain_with_initial_response(pop_server, mode):
    client = tls_session(pop_server, mode)
    reply = client.auth_plain("alice", pop_server.passwords["alice"])
    assert reply.ok, reply
    assert logged_in(client)


@pytest.mark.parametrize("mode", TLS_MODES)
def test_auth_plain_without_initial_response(pop_server, mode):
    client = tls_session(pop_server, mode)
    challenge = client.cmd("AUTH PLAIN")
    # RFC 5034 §4: the server sends an empty challenge, "+ " (or "+")
    assert challenge.status == "+", challenge
    assert challenge.text == ""
    reply = client.cmd(plain("alice", pop_server.passwords["alice"]))
    assert reply.ok, reply
    assert logged_in(client)


def test_auth_plain_keyword_and_mechanism_are_case_insensitive(pop_server):
    client = tls_session(pop_server, "pop3s")
    reply = client.cmd(f"auth plain {plain('alice', pop_server.passwords['alice'])}")
    assert reply.ok, reply


def test_auth_plain_with_authzid_equal_to_authcid(pop_server):
    # RFC 4616 §2: an authzid that names the authenticated user is no change of identity
    client = tls_session(pop_server, "pop3s")
    reply = client.auth_plain("alice", pop_server.passwords["alice"], authzid="alice")
    assert reply.ok, reply


def test_auth_plain_with_empty_initial_response_then_credentials(pop_server):
    # RFC 5034 §4: "=" is an initial response of zero length; PLAIN needs credentials,
    # so the server either fails it or asks for them; it must not log anyone in
    client = tls_session(pop_server, "pop3s")
    reply = client.cmd("AUTH PLAIN =")
    if reply.status == "+":
        reply = client.cmd("*")
    assert not reply.ok
    assert not logged_in(client)


def test_sasl_response_with_plus_and_slash_is_read_as_base64(pop_server):
    # base64 responses may contain "+", "/" and "=", and start with any of them
    password = "\u00fb\u00ff?>"
    response = b64(f"\0alice\0{password}".encode())
    assert set(response) & {"+", "/"}, response
    client = tls_session(pop_server, "pop3s")
    assert client.cmd("AUTH PLAIN").status == "+"
    reply = client.cmd(response)
    assert not reply.ok
    assert reply.code == "AUTH", reply  # judged as credentials, not as a bad line
    for line in ("+/+/", "////", "+"):
        assert client.cmd("AUTH PLAIN").status == "+"
        reply = client.cmd(line)
        assert not reply.ok, (line, reply)
    assert client.auth_plain("alice", pop_server.passwords["alice"]).ok


def test_long_sasl_response_is_not_a_line_too_long(pop_server):
    # docs: AUTH responses may be up to 12288 octets (RFC 5034 §4 allows long ones)
    client = tls_session(pop_server, "pop3s")
    assert client.cmd("AUTH PLAIN").status == "+"
    reply = client.cmd(b64(b"\0alice\0" + b"x" * 6000))
    assert not reply.ok
    assert reply.code == "AUTH", reply
    assert "too long" not in reply.text.lower()


def test_auth_star_cancels(pop_server):
    client = tls_session(pop_server, "pop3s")
    assert client.cmd("AUTH PLAIN").status == "+"
    reply = client.cmd("*")
    # RFC 5034 §4: the server MUST reject the AUTH command with -ERR
    assert not reply.ok, reply
    assert not logged_in(client)
    # still in AUTHORIZATION: a login works
    assert client.auth_plain("alice", pop_server.passwords["alice"]).ok


def test_auth_with_bad_base64_is_err_and_the_session_goes_on(pop_server):
    client = tls_session(pop_server, "pop3s")
    for bad in ["!!!notbase64!!!", "YWxpY2U", "YW=xpY2U=", "\u00e9"]:
        reply = client.cmd(f"AUTH PLAIN {bad}")
        assert not reply.ok, (bad, reply)
        assert client.cmd("AUTH PLAIN").status == "+"
        assert not client.cmd(bad).ok, bad
    assert client.auth_plain("alice", pop_server.passwords["alice"]).ok


MALFORMED_PLAIN = {
    "one NUL": b"alice\0alice",
    "empty password": b"\0alice\0",
    "empty authcid": b"\0\0pw",
    "three NULs": b"a\0b\0c\0d",
    "not UTF-8": b"\0alice\0\xff\xfe",
}


def test_malformed_plain_responses_are_err(pop_server):
    client = tls_session(pop_server, "pop3s")
    for what, response in MALFORMED_PLAIN.items():
        reply = client.cmd(f"AUTH PLAIN {b64(response)}")
        assert not reply.ok, (what, reply)
        assert not logged_in(client), what


def test_auth_unknown_mechanism_is_err(pop_server):
    client = tls_session(pop_server, "pop3s")
    for command in ["AUTH LOGIN", "AUTH CRAM-MD5", "AUTH XOAUTH2 abc", "AUTH GSSAPI ="]:
        reply = client.cmd(command)
        assert not reply.ok, (command, reply)  # never a challenge for a mechanism not offered
    assert client.auth_plain("alice", pop_server.passwords["alice"]).ok


def test_auth_plain_with_a_foreign_authzid_is_refused(start_server):
    srv = start_server()
    client = tls_session(srv, "pop3s")
    reply = client.auth_plain("alice", srv.passwords["alice"], authzid="bob")
    assert not reply.ok, reply
    assert not logged_in(client)
    # and bob's maildrop was not opened: bob can log in
    assert tls_session(srv, "pop3s", "bob")


def test_pass_without_user_is_err(pop_server):
    client = tls_session(pop_server, "pop3s")
    reply = client.cmd(f"PASS {pop_server.passwords['alice']}")
    assert not reply.ok
    assert not logged_in(client)
    assert client.login("alice", pop_server.passwords["alice"]).ok


def test_user_without_argument_is_err(pop_server):
    client = tls_session(pop_server, "pop3s")
    assert not client.cmd("USER").ok
    assert client.login("alice", pop_server.passwords["alice"]).ok


def test_second_user_replaces_the_first(pop_server):
    client = tls_session(pop_server, "pop3s")
    assert client.cmd("USER bob").ok
    assert client.cmd("USER alice").ok
    assert client.cmd(f"PASS {pop_server.passwords['alice']}").ok


def test_password_with_spaces_is_taken_whole(start_server):
    # RFC 1939 §7 PASS: the argument is the rest of the line; "pw with space" is
    # not "pw"; a wrong password, so a failure (not a crash or a syntax error)
    srv = start_server()
    client = tls_session(srv, "pop3s")
    assert client.cmd("USER alice").ok
    reply = client.cmd(f"PASS {srv.passwords['alice']} trailing words")
    assert not reply.ok
    assert reply.code == "AUTH"
    assert client.login("alice", srv.passwords["alice"]).ok


# -- no cleartext login (docs: "No cleartext passwords over cleartext") --------------------


def test_login_before_stls_is_refused_with_auth_code(pop_server):
    client = raw_pop3(pop_server, "pop3")
    password = pop_server.passwords["alice"]
    for command in ["USER alice", f"PASS {password}", f"AUTH PLAIN {plain('alice', password)}"]:
        reply = client.cmd(command)
        assert not reply.ok, (command, reply)
        assert reply.code == "AUTH", reply
        assert "STLS" in reply.text
    assert client.cmd("AUTH PLAIN").status != "+"  # no challenge either
    assert not logged_in(client)
    # after STLS the same session can log in
    assert client.cmd("STLS").ok
    client.starttls(pop_server.tls_context())
    assert client.login("alice", password).ok


def test_refused_cleartext_user_pass_then_stls_needs_user_again(pop_server):
    client = raw_pop3(pop_server, "pop3")
    assert not client.cmd("USER alice").ok
    assert client.cmd("STLS").ok
    client.starttls(pop_server.tls_context())
    # USER before TLS was refused, so PASS has no user to go with
    assert not client.cmd(f"PASS {pop_server.passwords['alice']}").ok
    assert not logged_in(client)


@pytest.mark.parametrize("listener", ["pop3", "pop3s"])
def test_plaintext_auth_setting_allows_and_advertises_cleartext_login(start_server, listener):
    srv = start_server(pop3={"plaintext_auth": True})
    client = raw_pop3(srv, listener)
    caps = client.cmd("CAPA", multiline=True).capabilities()
    assert "USER" in caps
    assert "PLAIN" in caps["SASL"]
    assert ("STLS" in caps) == (listener == "pop3")  # STLS still offered on the plain port
    assert client.login("alice", srv.passwords["alice"]).ok
    assert logged_in(client)
    other = raw_pop3(srv, listener)
    assert other.auth_plain("bob", srv.passwords["bob"]).ok


def test_plaintext_auth_still_allows_stls_first(start_server):
    srv = start_server(pop3={"plaintext_auth": True})
    client = tls_session(srv, "stls", "alice")
    assert logged_in(client)


# -- STLS -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "injected",
    [b"CAPA\r\n", b"NOOP\r\nCAPA\r\n", b"QUIT\r\n"],
    ids=["capa", "noop-capa", "quit"],
)
def test_commands_pipelined_after_stls_are_never_run(pop_server, injected):
    client = raw_pop3(pop_server, "pop3")
    client.send(b"STLS\r\n" + injected)
    reply = client.read_reply()
    assert reply.ok
    # the +OK is alone: no cleartext answer to the injected command ...
    client.starttls(pop_server.tls_context())
    # ... nor one inside TLS
    client.assert_silent(0.1)
    # the next command gets exactly one answer: CAPA, once, and still in AUTHORIZATION
    client.send(b"CAPA\r\n")
    caps = client.read_reply(multiline=True).capabilities()
    assert "USER" in caps and "STLS" not in caps
    reply = client.cmd("NOOP")
    assert not reply.ok  # NOOP is TRANSACTION-only: the state is AUTHORIZATION
    client.assert_silent(0.05)


def test_injected_login_after_stls_does_not_log_in(pop_server):
    client = raw_pop3(pop_server, "pop3")
    password = pop_server.passwords["alice"]
    client.send(f"STLS\r\nUSER alice\r\nPASS {password}\r\n".encode())
    assert client.read_reply().ok
    client.starttls(pop_server.tls_context())
    client.assert_silent(0.1)
    assert not logged_in(client)
    # nor is a USER remembered: PASS alone fails
    assert not client.cmd(f"PASS {password}").ok
    # and no lock was taken on alice's maildrop
    assert tls_session(pop_server, "pop3s", "alice")


def test_injected_bytes_after_the_ok_before_the_handshake(pop_server):
    # the injected bytes may also arrive after the +OK was sent, before the ClientHello
    client = raw_pop3(pop_server, "pop3")
    client.send(b"STLS\r\n")
    assert client.read_reply().ok
    client.send(b"CAPA\r\n")
    time.sleep(0.1)  # let the cleartext reach the server before the handshake
    try:
        client.starttls(pop_server.tls_context())
    except (OSError, ConnectionError):
        return  # refusing the handshake is safe too; the command must not have run
    client.assert_silent(0.1)
    assert not client.cmd("NOOP").ok


def test_stls_inside_tls_is_err(pop_server):
    client = tls_session(pop_server, "stls")
    reply = client.cmd("STLS")
    assert not reply.ok
    assert client.login("alice", pop_server.passwords["alice"]).ok  # the session goes on


def test_stls_on_implicit_tls_is_err(pop_server):
    client = tls_session(pop_server, "pop3s")
    assert not client.cmd("STLS").ok
    assert client.login("alice", pop_server.passwords["alice"]).ok


def test_stls_with_an_argument_is_err(pop_server):
    client = raw_pop3(pop_server, "pop3")
    assert not client.cmd("STLS now").ok
    assert client.cmd("STLS").ok
    client.starttls(pop_server.tls_context())
    assert client.login("alice", pop_server.passwords["alice"]).ok


def test_stls_in_transaction_is_err(start_server):
    srv = start_server(pop3={"plaintext_auth": True})
    client = raw_pop3(srv, "pop3")
    assert client.login("alice", srv.passwords["alice"]).ok
    assert not client.cmd("STLS").ok  # RFC 2595 §4: only in AUTHORIZATION
    assert client.cmd("NOOP").ok


def test_failed_handshake_after_stls_leaves_no_session(pop_server):
    client = raw_pop3(pop_server, "pop3")
    assert client.cmd("STLS").ok
    client.send(b"this is not a TLS ClientHello\r\n" * 4)
    client.sock.settimeout(3.0)
    data = client.read_all_until_close()
    assert b"+OK" not in data
    pop_server.wait_idle()
    # the server is fine
    assert tls_session(pop_server, "stls", "alice")


# -- APOP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", TLS_MODES)
def test_apop_is_err(pop_server, mode):
    client = tls_session(pop_server, mode)
    reply = client.cmd("APOP alice c4c9334bac560ecc979e58001b3e22fb")
    assert not reply.ok
    assert not logged_in(client)
    assert "APOP" not in client.cmd("CAPA", multiline=True).capabilities()
    assert client.login("alice", pop_server.passwords["alice"]).ok


# -- failures ----------------------------------------------------------------------------------


def test_wrong_password_and_unknown_user_get_identical_responses(start_server):
    srv = start_server(limits={"auth_failure_delay": 0.01})
    client = tls_session(srv, "pop3s")
    wrong_user = client.cmd("USER alice")
    wrong_pass = client.cmd("PASS not-the-password")
    nobody_user = client.cmd("USER nobody")
    nobody_pass = client.cmd("PASS not-the-password")
    assert wrong_user.raw == nobody_user.raw
    assert wrong_user.ok
    assert wrong_pass.raw == nobody_pass.raw
    assert not wrong_pass.ok
    assert wrong_pass.code == "AUTH"  # RFC 3206 §4


def test_auth_plain_wrong_password_and_unknown_user_get_identical_responses(start_server):
    srv = start_server(limits={"auth_failure_delay": 0.01})
    client = tls_session(srv, "stls")
    wrong = client.auth_plain("alice", "not-the-password")
    nobody = client.auth_plain("nobody", "not-the-password")
    assert wrong.raw == nobody.raw
    assert wrong.code == "AUTH"


def test_unknown_user_and_wrong_password_take_about_the_same_time(start_server):
    # docs: an unknown user costs the same scrypt work; the failure delay is the same
    srv = start_server(limits={"auth_failure_delay": 0.01}, pop3={"max_auth_failures": 10})
    client = tls_session(srv, "pop3s")
    times: dict[str, list[float]] = {"alice": [], "nobody": []}
    for _ in range(2):
        for user in ("alice", "nobody"):
            assert client.cmd(f"USER {user}").ok
            started = time.monotonic()
            assert not client.cmd("PASS not-the-password").ok
            times[user].append(time.monotonic() - started)
    # the delay grows with each failure, so compare the pairs made next to each other
    for known, unknown in zip(times["alice"], times["nobody"], strict=True):
        assert unknown >= known * 0.5, times


def test_failures_are_slowed_more_each_time(start_server):
    delay = 0.1
    srv = start_server(limits={"auth_failure_delay": delay})
    client = tls_session(srv, "pop3s")
    elapsed = []
    for _ in range(2):
        assert client.cmd("USER alice").ok
        started = time.monotonic()
        reply = client.cmd("PASS not-the-password")
        elapsed.append(time.monotonic() - started)
        assert not reply.ok
    # docs: auth_failure_delay times the recent failures from the client address
    assert elapsed[0] >= delay * 0.9, elapsed
    assert elapsed[1] >= 2 * delay * 0.9, elapsed
    assert elapsed[1] > elapsed[0] + delay * 0.5, elapsed


def test_failure_delay_counts_failures_from_the_address_across_sessions(start_server):
    delay = 0.08
    srv = start_server(limits={"auth_failure_delay": delay})
    first = tls_session(srv, "pop3s")
    assert not first.login("alice", "wrong").ok
    second = tls_session(srv, "stls")  # a new session from the same address
    started = time.monotonic()
    assert not second.auth_plain("bob", "wrong").ok
    assert time.monotonic() - started >= 2 * delay * 0.9


def test_a_right_password_is_not_slowed(start_server):
    srv = start_server(limits={"auth_failure_delay": 0.5})
    client = tls_session(srv, "pop3s")
    assert client.cmd("USER alice").ok
    started = time.monotonic()
    assert client.cmd(f"PASS {srv.passwords['alice']}").ok
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("how", ["pass", "auth"])
def test_max_auth_failures_closes_the_session(start_server, how):
    srv = start_server(limits={"auth_failure_delay": 0.01}, pop3={"max_auth_failures": 3})
    client = tls_session(srv, "pop3s")

    def fail():
        if how == "pass":
            assert client.cmd("USER alice").ok
            return client.cmd("PASS wrong")
        return client.auth_plain("alice", "wrong")

    for _ in range(2):
        reply = fail()
        assert not reply.ok
        assert reply.code == "AUTH"
    last = fail()
    assert not last.ok
    assert last.code == "AUTH"
    assert "too many" in last.text.lower(), last
    assert client.read_all_until_close() == b""
    # a new session may try again
    assert tls_session(srv, "pop3s", "alice")


def test_max_auth_failures_counts_per_session(start_server):
    srv = start_server(limits={"auth_failure_delay": 0.01}, pop3={"max_auth_failures": 2})
    for _ in range(3):
        client = tls_session(srv, "pop3s")
        reply = client.login("alice", "wrong")
        assert reply.code == "AUTH"
        assert "too many" not in reply.text.lower()
        assert client.cmd("QUIT").ok


def test_login_refusals_before_stls_do_not_close_the_session(start_server):
    # the -ERR [AUTH] ... use STLS first answers are not failed logins
    srv = start_server(pop3={"max_auth_failures": 1})
    client = raw_pop3(srv, "pop3")
    for _ in range(3):
        assert not client.cmd("USER alice").ok
    assert client.cmd("STLS").ok
    client.starttls(srv.tls_context())
    assert client.login("alice", srv.passwords["alice"]).ok


# -- LOGIN-DELAY (RFC 2449 §6.5) -----------------------------------------------------------


def test_login_delay_is_advertised_in_both_states(start_server):
    srv = start_server(pop3={"login_delay": 1})
    client = tls_session(srv, "pop3s")
    assert client.cmd("CAPA", multiline=True).capabilities()["LOGIN-DELAY"] == ("1",)
    assert client.login("alice", srv.passwords["alice"]).ok
    assert client.cmd("CAPA", multiline=True).capabilities()["LOGIN-DELAY"] == ("1",)


def test_login_delay_refuses_a_second_login_too_soon(start_server):
    srv = start_server(pop3={"login_delay": 1})
    first = tls_session(srv, "pop3s")
    started = time.monotonic()
    assert first.login("alice", srv.passwords["alice"]).ok
    assert first.cmd("QUIT").ok
    assert first.read_all_until_close() == b""

    again = tls_session(srv, "stls")
    reply = again.login("alice", srv.passwords["alice"])
    assert not reply.ok
    assert reply.code == "LOGIN-DELAY", reply
    assert not logged_in(again)  # still in AUTHORIZATION
    # the delay is per user: bob is not held up
    assert again.login("bob", srv.passwords["bob"]).ok
    assert again.cmd("QUIT").ok

    # and a wrong password says nothing about the delay (it would confirm the user)
    probe = tls_session(srv, "pop3s")
    reply = probe.login("alice", "wrong")
    assert reply.code == "AUTH", reply
    assert not probe.auth_plain("alice", srv.passwords["alice"]).ok  # AUTH PLAIN too

    time.sleep(max(0.0, 1.05 - (time.monotonic() - started)))
    late = tls_session(srv, "pop3s")
    assert late.login("alice", srv.passwords["alice"]).ok


def test_no_login_delay_by_default(pop_server):
    for _ in range(2):
        client = tls_session(pop_server, "pop3s")
        assert "LOGIN-DELAY" not in client.cmd("CAPA", multiline=True).capabilities()
        assert client.login("alice", pop_server.passwords["alice"]).ok
        assert client.cmd("QUIT").ok
        assert client.read_all_until_close() == b""
