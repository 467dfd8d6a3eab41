"""``tls_handshake: {or_failed: true}``: after a STARTTLS with a command pipelined behind it,
a server may feed those bytes to its TLS stack, which then fails the handshake (RFC 9051
§6.2.1, option 1; RFC 2595 §4: TLS "begins immediately after the CRLF"). A handshake the
server ends by closing the connection or with a TLS alert then ends the scenario, passed.
A certificate that does not verify, a hang, or bytes that are not TLS (maybe a cleartext
answer to the injected command) still fail, and so does everything a server that runs the
injected command does."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest
from engine_helpers import assert_failed, assert_passed, run_scenario
from scripted import ScriptConn, TestCerts, make_test_certs

from conformance.results import ScenarioResult

OR_FAILED = """
- send: a1 NOOP
  expect: {tagged: OK}
- send_raw: 'a2 STARTTLS\\r\\nb2 NOOP\\r\\n'
  expect: {tag: a2, tagged: OK}
- tls_handshake: {or_failed: true}
- expect: {silence: 0.5}
- send: a3 NOOP
  expect: {tag: a3, tagged: OK}
"""

PLAIN_HANDSHAKE = OR_FAILED.replace("tls_handshake: {or_failed: true}", "tls_handshake: true")


def tls_on_the_raw_bytes(conn: ScriptConn, ctx: ssl.SSLContext) -> bool:
    """A server that starts TLS on whatever follows the STARTTLS line, pipelined bytes
    included (option 1): OpenSSL on a memory BIO, fed the buffered bytes, then the socket.
    True if the handshake completed; on a failure any alert goes out and False returns."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(bytes(conn._buf))  # what the client sent after STARTTLS<CRLF>
    conn._buf.clear()
    while True:
        try:
            tls.do_handshake()
            return True
        except ssl.SSLWantReadError:
            if outgoing.pending:
                conn.send(outgoing.read())
            data = conn._sock.recv(65536)
            if not data:
                return False
            incoming.write(data)
        except ssl.SSLError:
            if outgoing.pending:
                conn.send(outgoing.read())
            return False


def imap(after_starttls) -> object:
    """An IMAP server: NOOP answers OK; STARTTLS answers OK, then ``after_starttls(conn)``
    (it returns True to go on serving inside TLS)."""

    def handle(conn: ScriptConn) -> None:
        conn.sendline("* OK [CAPABILITY IMAP4rev2 STARTTLS] ready")
        while True:
            try:
                line = conn.recv_line(5).decode()
            except (EOFError, TimeoutError):
                return
            tag, _, command = line.partition(" ")
            if command.upper() == "STARTTLS":
                conn.sendline(f"{tag} OK begin TLS")
                if not after_starttls(conn):
                    return
            elif command.upper() == "CAPABILITY":
                conn.sendline("* CAPABILITY IMAP4rev2 STARTTLS")
                conn.sendline(f"{tag} OK done")
            else:
                conn.sendline(f"{tag} OK done")

    return handle


def run(tmp_path: Path, handler, certs: TestCerts, steps: str = OR_FAILED) -> ScenarioResult:
    return run_scenario(
        tmp_path, handler, steps, protocol="imap", tls="starttls", certs=certs, read_timeout=3
    )


def test_a_handshake_that_fails_on_the_injected_bytes_ends_the_scenario_passed(
    tmp_path, test_certs
):
    def option_1(conn: ScriptConn) -> bool:
        tls_on_the_raw_bytes(conn, test_certs.server_context())
        return False  # and the connection closes

    result = run(tmp_path, imap(option_1), test_certs)
    assert_passed(result)
    message = result.message or ""
    assert "the TLS handshake on connection 'main' failed at step 3" in message, message
    assert "the server closed the connection during the handshake" in message
    assert "which or_failed allows; the steps after that did not run" in message
    assert result.step is None


def test_without_or_failed_the_failed_handshake_fails(tmp_path, test_certs):
    def option_1(conn: ScriptConn) -> bool:
        tls_on_the_raw_bytes(conn, test_certs.server_context())
        return False

    result = run(tmp_path, imap(option_1), test_certs, PLAIN_HANDSHAKE)
    assert_failed(result, "TLS handshake failed: the server closed the connection", step=2)


def test_a_tls_alert_ends_the_scenario_passed(tmp_path, test_certs):
    def alert(conn: ScriptConn) -> bool:
        conn.recv_until(rb"b2 NOOP\r\n")
        conn.recv_exact(5)  # the ClientHello's record header
        conn.send(bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0A]))  # fatal unexpected_message
        time.sleep(0.2)
        return False

    result = run(tmp_path, imap(alert), test_certs)
    assert_passed(result)
    assert "the server sent a TLS alert" in (result.message or ""), result.message


def test_discarding_the_injected_bytes_goes_on_with_the_scenario(tmp_path, test_certs):
    """Option 2: the bytes are thrown away, the handshake works, the steps after it run."""

    def option_2(conn: ScriptConn) -> bool:
        conn.starttls(discard_pipelined=True)
        return True

    result = run(tmp_path, imap(option_2), test_certs)
    assert_passed(result)
    assert result.message is None


def test_running_the_injected_command_inside_tls_still_fails(tmp_path, test_certs):
    def runs_it(conn: ScriptConn) -> bool:
        carried = conn.recv_line(2).decode() if conn.readable(0.5) else ""
        conn.starttls()
        if carried:
            conn.sendline(f"{carried.split()[0]} OK done")
        return True

    result = run(tmp_path, imap(runs_it), test_certs)
    assert_failed(result, "expected silence for 0.5s, but the server sent", step=3)


def test_a_cleartext_answer_during_the_handshake_is_not_a_failed_handshake(tmp_path, test_certs):
    """Bytes that are not TLS where the ServerHello belongs may answer the injected command
    in cleartext: or_failed does not cover them."""

    def answers_in_cleartext(conn: ScriptConn) -> bool:
        conn.recv_until(rb"b2 NOOP\r\n")
        conn.recv_exact(5)  # the ClientHello has begun: the client is in its handshake
        conn.sendline("b2 OK NOOP completed")
        time.sleep(0.3)
        return False

    result = run(tmp_path, imap(answers_in_cleartext), test_certs)
    assert_failed(
        result,
        "the server did not answer with TLS",
        "may answer what was sent after STARTTLS",
        "or_failed allows a handshake the server ends by closing the connection or with a TLS "
        "alert, not this",
        step=2,
    )


def test_a_cleartext_answer_before_the_handshake_still_fails(tmp_path, test_certs):
    def handle(conn: ScriptConn) -> None:
        conn.sendline("* OK [CAPABILITY IMAP4rev2 STARTTLS] ready")
        conn.expect("a1 NOOP")
        conn.sendline("a1 OK done")
        conn.expect("a2 STARTTLS")
        conn.send(b"a2 OK begin TLS\r\nb2 OK NOOP completed\r\n")  # one segment
        time.sleep(0.5)

    result = run(tmp_path, handle, test_certs)
    assert_failed(result, "server sent b'b2 OK NOOP completed\\r\\n' after its STARTTLS reply")


def test_a_certificate_that_does_not_verify_still_fails(tmp_path, test_certs):
    stranger = make_test_certs(tmp_path / "stranger")

    def wrong_certificate(conn: ScriptConn) -> bool:
        conn.recv_until(rb"b2 NOOP\r\n")
        tls_on_the_raw_bytes(conn, stranger.server_context())
        return False

    result = run(tmp_path, imap(wrong_certificate), test_certs)
    assert_failed(result, "the certificate did not verify", "not this", step=2)


def test_a_handshake_that_hangs_still_fails(tmp_path, test_certs):
    def hangs(conn: ScriptConn) -> bool:
        conn.wait_closed(timeout=6)  # reads the ClientHello, answers nothing
        return False

    started = time.monotonic()
    result = run(tmp_path, imap(hangs), test_certs)
    assert_failed(result, "no TLS handshake within the connect timeout", "not this", step=2)
    assert time.monotonic() - started < 6


@pytest.mark.parametrize("protocol", ["smtp", "pop3"])
def test_or_failed_loads_for_every_protocol(tmp_path, protocol):
    from conformance.scenario.loader import load_paths

    path = tmp_path / "s.yaml"
    path.write_text(
        f"id: x.{protocol}\nprotocol: {protocol}\ntitle: t\n"
        "steps:\n  - tls_handshake: {or_failed: true}\n  - tls_handshake: true\n",
        encoding="utf-8",
    )
    (scenario,) = load_paths([path])
    assert [s.action.or_failed for s in scenario.steps] == [True, False]  # type: ignore[union-attr]


def test_or_failed_with_another_key_is_a_load_error(tmp_path):
    from conformance.scenario.loader import LoadErrors, load_paths

    path = tmp_path / "s.yaml"
    path.write_text(
        "id: x\nprotocol: imap\ntitle: t\nsteps:\n  - tls_handshake: {or_closed: true}\n",
        encoding="utf-8",
    )
    with pytest.raises(LoadErrors) as err:
        load_paths([path])
    assert "steps[0].tls_handshake: expected true, or {or_failed: true}" in str(err.value)
