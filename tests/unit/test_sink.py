"""The outbound sink: records what it accepts, answers by the recipient's local part."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Awaitable, Callable

import pytest

from conformance.sink import Sink


def send(port: int, sender: str, rcpts: list[str], data: bytes) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="relay.test", timeout=5) as client:
        return client.sendmail(sender, rcpts, data)


async def with_sink(body: Callable[[Sink], Awaitable[None]]) -> Sink:
    sink = Sink()
    await sink.start()
    try:
        await body(sink)
    finally:
        await sink.stop()
    return sink


def test_accepts_and_records_the_envelope_and_unstuffed_data() -> None:
    async def body(sink: Sink) -> None:
        data = b"Subject: hi\r\n\r\n.dot line\r\nend\r\n"
        await asyncio.to_thread(send, sink.port, "", ["a@sink.test", "b@sink.test"], data)
        await sink.wait_for(lambda s: s.messages, 5)
        (msg,) = sink.messages
        assert msg.sender == "" and msg.recipients == ("a@sink.test", "b@sink.test")
        assert msg.data == data and msg.ehlo == "relay.test"
        assert sink.for_recipient("B@sink.test") == [msg]

    asyncio.run(with_sink(body))


def test_reject_and_defer_follow_the_local_part() -> None:
    async def body(sink: Sink) -> None:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            await asyncio.to_thread(send, sink.port, "x@a.test", ["reject.1@sink.test"], b"x\r\n")
        assert refused.value.recipients["reject.1@sink.test"][0] == 550
        for _ in range(2):
            with pytest.raises(smtplib.SMTPDataError) as deferred:
                await asyncio.to_thread(
                    send, sink.port, "x@a.test", ["defer2.z@sink.test"], b"x\r\n"
                )
            assert deferred.value.smtp_code == 451
        await asyncio.to_thread(send, sink.port, "x@a.test", ["defer2.z@sink.test"], b"x\r\n")
        assert [a.code for a in sink.attempts_for("defer2.z@sink.test")] == [451, 451, 250]
        assert len(sink.for_recipient("defer2.z@sink.test")) == 1

    asyncio.run(with_sink(body))


def test_the_port_is_known_before_start_and_waiting_times_out() -> None:
    sink = Sink()
    assert sink.port > 0

    async def body() -> None:
        await sink.start()
        try:
            with pytest.raises(TimeoutError):
                await sink.wait_for(lambda s: s.messages, 0.2)
        finally:
            await sink.stop()

    asyncio.run(body())
