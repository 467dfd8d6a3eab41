"""``--events per-message`` (one ``SMTP message`` request per transaction) and the SMTP
driver's reading of replies it has seen before, against smtp-sink and a scripted server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from loadsupport import (
    Scripted,
    one_connection_server,
    run_locust,
    sink_target,
    smtp_sink,
    smtp_sink_available,
)

from loadtest.drivers import DataPayload, Endpoint, ListRecorder, SmtpDriver, SmtpReplyError

needs_sink = pytest.mark.skipif(not smtp_sink_available(), reason="smtp-sink not installed")

MESSAGE = b"From: <a@sink.test>\r\nTo: <b@sink.test>\r\nSubject: t\r\n\r\n.dot\r\nbare\nlf\r\n"


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[str, int]]:
    if not smtp_sink_available():
        pytest.skip("smtp-sink not installed")
    with smtp_sink(tmp_path) as where:
        yield where


def test_driver_reports_one_message_step_per_transaction(sink):
    host, port = sink
    rec = ListRecorder()
    smtp = SmtpDriver(Endpoint(host, port), recorder=rec, per_message=True)
    smtp.start()
    for _ in range(3):
        assert smtp.send_message("a@sink.test", ["b@sink.test", "c@sink.test"], MESSAGE).code == 250
    smtp.quit()
    assert rec.names() == ["SMTP connect", "SMTP EHLO", *["SMTP message"] * 3, "SMTP QUIT"]
    assert all(r.exception is None for r in rec.results)
    # the message step's size is the DATA payload: dot-stuffed, CRLF, with the final dot
    assert rec.results[2].response_length == len(MESSAGE) + 1 + 1 + 3


def test_driver_per_step_is_unchanged(sink):
    host, port = sink
    rec = ListRecorder()
    smtp = SmtpDriver(Endpoint(host, port), recorder=rec, pipelining=False)
    smtp.start()
    smtp.send_message("a@sink.test", ["b@sink.test"], MESSAGE)
    smtp.quit()
    assert rec.names()[2:] == ["SMTP MAIL", "SMTP RCPT", "SMTP DATA", "SMTP QUIT"]


def test_seen_replies_and_reader_agree_on_failures():
    # "250 2.1.0 Ok" is read twice (the second time from the replies seen); then a
    # multiline 550 to RCPT fails the message step with the reader's reply, unchanged
    server = Scripted(
        [
            b"250-scripted\r\n250 PIPELINING\r\n",  # EHLO
            b"250 2.1.0 Ok\r\n",  # MAIL
            b"250 2.1.5 Ok\r\n",  # RCPT
            b"354 go\r\n",  # DATA
            b"250 2.0.0 Ok\r\n",  # the message
            b"250 2.1.0 Ok\r\n",  # MAIL
            b"550-5.1.1 no such user\r\n550 5.1.1 really\r\n",  # RCPT
        ]
    )
    rec = ListRecorder()
    smtp = SmtpDriver(
        Endpoint("127.0.0.1", server.port), recorder=rec, per_message=True, pipelining=False
    )
    smtp.start()
    assert smtp.send_message("a@x.test", ["b@x.test"], MESSAGE).lines == ("2.0.0 Ok",)
    with pytest.raises(SmtpReplyError) as err:
        smtp.send_message("a@x.test", ["nobody@x.test"], MESSAGE)
    assert err.value.code == "550" and err.value.step == "RCPT"
    assert err.value.reply.lines == ("5.1.1 no such user", "5.1.1 really")
    assert not smtp.is_connected
    assert rec.names()[-1] == "SMTP message" and rec.results[-1].exception is err.value
    server.join()


@needs_sink
def test_mx_profile_per_message_events(tmp_path: Path):
    with smtp_sink(tmp_path) as (host, port):
        target = sink_target(tmp_path / "sink.yaml", host, port)
        run = run_locust(
            tmp_path,
            target,
            "mx",
            users=3,
            run_time="2s",
            extra=[
                "--message-size",
                "1KB",
                "--messages-per-connection",
                "50",
                "--events",
                "per-message",
            ],
        )
    assert run.returncode == 0, run.explain()
    assert run.count("SMTP", "message") > 50, run.explain()
    assert not {"SMTP MAIL", "SMTP RCPT", "SMTP DATA"} & run.names(), run.names()
    assert run.failure_count() == 0, run.explain()


def recording_server() -> tuple[int, threading.Thread, list[bytes]]:
    """Says yes to everything (PIPELINING offered) and keeps each DATA payload it got."""
    payloads: list[bytes] = []

    def talk(conn: socket.socket, lines: BinaryIO) -> None:
        while line := lines.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                conn.sendall(b"250-recording\r\n250 PIPELINING\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go\r\n")
                payload = b""
                while (line := lines.readline()) != b".\r\n":
                    payload += line
                payloads.append(payload)
                conn.sendall(b"250 2.0.0 kept\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"250 ok\r\n")

    port, thread = one_connection_server(b"220 recording\r\n", talk)
    return port, thread, payloads


def test_data_payload_is_sent_as_it_is_and_plain_bytes_are_stuffed():
    port, thread, payloads = recording_server()
    calls: list[int] = []
    endpoint = Endpoint("127.0.0.1", port, cooperate=lambda: calls.append(1))
    smtp = SmtpDriver(endpoint, recorder=ListRecorder(), per_message=True)
    smtp.start()
    stuffed = DataPayload.of(b"Subject: s\r\n\r\n.one dot\nbare lf\r\n")
    assert stuffed == b"Subject: s\r\n\r\n..one dot\r\nbare lf\r\n.\r\n"
    assert DataPayload.of(stuffed[:-3]) != stuffed  # of() stuffs again; only the type is trusted
    # a DataPayload goes out byte for byte (already stuffed: the server unstuffs "..")
    smtp.send_messages(
        [
            ("a@x.test", ["b@x.test"], stuffed),
            ("a@x.test", ["b@x.test"], b"Subject: t\r\n\r\n.leading dot\r\n"),
        ]
    )
    smtp.quit()
    thread.join(5)
    # as the server read them, before taking the stuffing off
    assert payloads == [
        b"Subject: s\r\n\r\n..one dot\r\nbare lf\r\n",
        b"Subject: t\r\n\r\n..leading dot\r\n",
    ]
    # the endpoint's cooperate hook ran before reads (greeting, EHLO, the replies, QUIT)
    assert len(calls) >= 4
