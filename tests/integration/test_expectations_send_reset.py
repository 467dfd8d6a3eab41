"""A send the server cuts short (it answers, then closes or resets the connection while the
client is still sending) does not fail the step by itself: the failed send goes into the
transcript and the step's expectation reads what the server sent before it went away, an
answer, a BYE, or the close (which fails unless ``or_closed`` allows it). What the server
sent before the reset is read even when it is still in the socket's receive buffer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from engine_helpers import assert_failed, assert_passed, explain, run_scenario
from scripted import ScriptConn, ScriptedServer

from conformance.targets import load_target
from conformance.transport import Channel, Transcript

LONG_LINE = """
- send_raw: 'x1 '
- send_raw: 'A'
  repeat: 8388608
- send_raw: '\\r\\nx1 NOOP\\r\\n'
  capture: {refused: '(?m)^(?:x1 BAD|\\* (?:BAD|BYE))\\b'}
- send: x2 NOOP
  expect: {or_closed: true, tagged: OK}
"""


def imap_refusing_long_lines(answer: str | None):
    """Reads 64 KiB of the line, sends ``answer`` (if any), then resets the connection
    with the rest of the line unread, as Dovecot does for "Input buffer full"."""

    def handle(conn: ScriptConn) -> None:
        conn.sendline("* OK [CAPABILITY IMAP4rev2] ready")
        conn.recv_exact(64 * 1024)
        if answer is not None:
            conn.sendline(answer)
            time.sleep(0.1)
        conn.abort()

    return handle


def test_an_answer_before_a_reset_mid_send_is_read(tmp_path):
    result = run_scenario(
        tmp_path,
        imap_refusing_long_lines("* BYE Input buffer full, aborting"),
        LONG_LINE,
        protocol="imap",
    )
    assert_passed(result)
    rendered = explain(result)
    assert "send failed" in rendered
    assert "the step goes on to read what the server sent" in rendered
    assert "S: * BYE Input buffer full, aborting" in rendered
    assert "which or_closed allows" in (result.message or "")


def test_a_reset_mid_send_without_an_answer_fails_the_step_that_reads(tmp_path):
    result = run_scenario(tmp_path, imap_refusing_long_lines(None), LONG_LINE, protocol="imap")
    assert_failed(result, "expected a response, but the server closed the connection", step=2)
    assert "send failed" in explain(result)


def test_or_closed_takes_a_reset_mid_send_without_an_answer(tmp_path):
    steps = """
    - send_raw: 'x1 '
    - send_raw: 'A'
      repeat: 8388608
    - send_raw: '\\r\\n'
      expect: {tagged: BAD, or_closed: true}
    """
    result = run_scenario(tmp_path, imap_refusing_long_lines(None), steps, protocol="imap")
    assert_passed(result)
    assert "closed connection 'main' instead of answering at step 3" in (result.message or "")


def test_smtp_data_cut_short_by_a_refusal(tmp_path):
    """An SMTP server that refuses a message while it arrives (RFC 5321 §4.5.3.1.10: 552)
    and hangs up: the reply is judged, not the failed send."""

    def handle(conn: ScriptConn) -> None:
        conn.sendline("220 mx.example.test ESMTP")
        for reply in ("250 mx.example.test", "250 2.1.0 ok", "250 2.1.5 ok", "354 go ahead"):
            conn.recv_line()
            conn.sendline(reply)
        conn.recv_exact(64 * 1024)
        conn.sendline("552 5.3.4 message too big")
        time.sleep(0.1)
        conn.abort()

    steps = """
    - send: EHLO client.example
      expect: {code: 250}
    - send: "MAIL FROM:<a@example.test>"
      expect: {code: 250}
    - send: "RCPT TO:<alice@example.test>"
      expect: {code: 250}
    - send: DATA
      expect: {code: 354}
    - data: {file: big.eml}
      expect: {code: 552}
    """
    (tmp_path / "big.eml").write_text("Subject: big\n\n" + ("x" * 998 + "\n") * 8192)
    result = run_scenario(tmp_path, handle, steps)
    assert_passed(result)
    assert "send failed" in explain(result)


def _target(tmp_path: Path, port: int):
    path = tmp_path / "target.yaml"
    path.write_text(
        "host: 127.0.0.1\ndomain: example.test\ntimeouts: {connect: 3, read: 3}\n"
        f"services: {{imap: {{port: {port}, tls: none}}}}\n",
        encoding="utf-8",
    )
    return load_target(path)


def test_what_arrived_before_a_reset_is_read_from_the_socket_buffer(tmp_path):
    """The answer and the reset are both in the kernel's buffers when the send fails, before
    the event loop ever looked at the socket: the answer must still come out of read()."""

    def handle(conn: ScriptConn) -> None:
        conn.sendline("* BYE going away")
        time.sleep(0.1)
        conn.abort()

    async def client(port: int) -> tuple[bytes, Transcript]:
        transcript = Transcript()
        target = _target(tmp_path, port)
        channel = Channel("main", target.services["imap"], target, transcript)
        await channel.open()
        time.sleep(0.5)  # blocks the loop: the BYE and the RST wait in the kernel
        with pytest.raises(ConnectionError):
            await channel.send(b"a1 NOOP\r\n")
        data = b""
        while chunk := await channel.read(1):
            data += chunk
        await channel.close()
        return data, transcript

    with ScriptedServer(handle) as srv:
        data, transcript = asyncio.run(client(srv.port))
    assert data == b"* BYE going away\r\n"
    events = [e.text for e in transcript.entries if e.direction == "*"]
    assert any(e.startswith("send failed: ") for e in events), events
    assert "server closed the connection" in events


def test_what_was_read_before_a_reset_stays_readable(tmp_path):
    """asyncio read the answer, then the reset: the answer comes out before the end."""

    def handle(conn: ScriptConn) -> None:
        conn.sendline("* BYE going away")
        time.sleep(0.1)
        conn.abort()

    async def client(port: int) -> bytes:
        target = _target(tmp_path, port)
        channel = Channel("main", target.services["imap"], target, Transcript())
        await channel.open()
        await asyncio.sleep(0.5)  # the loop reads the BYE, then meets the reset
        data = b""
        while chunk := await channel.read(1):
            data += chunk
        await channel.close()
        return data

    with ScriptedServer(handle) as srv:
        assert asyncio.run(client(srv.port)) == b"* BYE going away\r\n"
