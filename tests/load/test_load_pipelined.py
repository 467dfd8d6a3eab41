"""``SmtpDriver.send_messages``: each transaction's MAIL, RCPT and DATA pipelined with the
message before (RFC 2920 §3.1), against a scripted server that keeps every byte."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from loadsupport import Scripted

from loadtest.drivers import Endpoint, ListRecorder, SmtpDriver, SmtpReplyError

MESSAGE = b"From: <a@x.test>\r\nTo: <b@x.test>\r\nSubject: t\r\n\r\n.dot\r\nbare\nlf\r\n"
PAYLOAD = MESSAGE.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
PAYLOAD += b".\r\n"
EHLO = b"250-scripted\r\n250-SIZE 100000\r\n250 PIPELINING\r\n"
NO_PIPELINING = b"250-scripted\r\n250 SIZE 100000\r\n"


def transaction(rcpts: int = 1, final: bytes = b"250 2.0.0 Ok: queued\r\n") -> list[bytes]:
    return [b"250 2.1.0 Ok\r\n", *[b"250 2.1.5 Ok\r\n"] * rcpts, b"354 go\r\n", final]


def envelope(sender: str, rcpts: list[str]) -> bytes:
    lines = [f"MAIL FROM:<{sender}> SIZE={len(PAYLOAD) - 3}\r\n"]
    lines += [f"RCPT TO:<{r}>\r\n" for r in rcpts]
    return ("".join(lines) + "DATA\r\n").encode()


class _SpySocket:
    """The driver's socket, keeping the bytes of every ``send``."""

    def __init__(self, sock: socket.socket, writes: list[bytes]) -> None:
        self.sock, self.writes = sock, writes

    def send(self, data: bytes) -> int:
        sent = self.sock.send(data)
        self.writes.append(bytes(data[:sent]))
        return sent

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def spy_writes(smtp: SmtpDriver) -> list[bytes]:
    """Every write of the driver's channel from now on."""
    writes: list[bytes] = []
    assert smtp._chan.sock is not None
    smtp._chan.sock = _SpySocket(smtp._chan.sock, writes)  # type: ignore[assignment]
    return writes


def items(n: int, rcpts: list[str]) -> Iterator[tuple[str, list[str], bytes]]:
    for i in range(n):
        yield f"s{i}@x.test", rcpts, MESSAGE


@pytest.mark.parametrize("per_message", [True, False])
def test_next_transaction_leaves_with_the_message_before(per_message: bool):
    rcpts = ["b@x.test", "c@x.test"]
    server = Scripted([EHLO, *transaction(2) * 3, b"221 bye\r\n"])
    rec = ListRecorder()
    smtp = SmtpDriver(Endpoint("127.0.0.1", server.port), recorder=rec, per_message=per_message)
    smtp.start()
    writes = spy_writes(smtp)
    assert smtp.send_messages(items(3, rcpts)) == 3
    smtp.quit()
    heads = [envelope(f"s{i}@x.test", rcpts) for i in range(3)]
    # one write per transaction: its message, then the next transaction's commands
    assert writes == [heads[0], PAYLOAD + heads[1], PAYLOAD + heads[2], PAYLOAD, b"QUIT\r\n"]
    assert server.join().endswith(b"".join(writes))
    one = ["SMTP message"] if per_message else ["SMTP MAIL", "SMTP RCPT", "SMTP RCPT", "SMTP DATA"]
    assert rec.names() == ["SMTP connect", "SMTP EHLO", *one * 3, "SMTP QUIT"]
    steps = rec.results[2:-1]
    assert all(r.exception is None and r.response_time >= 0 for r in steps)
    sizes = [r.response_length for r in steps if r.name in ("message", "DATA")]
    assert sizes == [len(PAYLOAD)] * 3
    if not per_message:
        assert [r.response_length for r in steps[:3]] == [14, 14, 14]  # the replies' bytes


@pytest.mark.parametrize("per_message", [True, False])
def test_failed_final_reply_fails_its_transaction_and_ends_the_visit(per_message: bool):
    server = Scripted(
        [EHLO, *transaction(), *transaction(final=b"451 4.3.0 try again later\r\n"), b"250 x\r\n"]
    )
    rec = ListRecorder()
    smtp = SmtpDriver(Endpoint("127.0.0.1", server.port), recorder=rec, per_message=per_message)
    smtp.start()
    with pytest.raises(SmtpReplyError) as err:
        smtp.send_messages(items(5, ["b@x.test"]))
    assert err.value.code == "451" and err.value.step == "DATA"
    assert str(err.value) == "451 4.3.0 try again later"
    assert not smtp.is_connected
    one = ["SMTP message"] if per_message else ["SMTP MAIL", "SMTP RCPT", "SMTP DATA"]
    # the third transaction went out with the second message, but got no replies: not reported
    assert rec.names() == ["SMTP connect", "SMTP EHLO", *one * 2]
    assert [r.exception for r in rec.results[2:]] == [None] * (2 * len(one) - 1) + [err.value]
    assert server.join().count(b"MAIL FROM") == 3


@pytest.mark.parametrize("per_message", [True, False])
def test_rejected_recipient_fails_with_its_code(per_message: bool):
    server = Scripted(
        [
            EHLO,
            *transaction(),
            b"250 2.1.0 Ok\r\n",
            b"550-5.1.1 no such user\r\n550 5.1.1 really\r\n",
            b"554 5.5.1 no valid recipients\r\n",
        ]
    )
    rec = ListRecorder()
    smtp = SmtpDriver(Endpoint("127.0.0.1", server.port), recorder=rec, per_message=per_message)
    smtp.start()
    with pytest.raises(SmtpReplyError) as err:
        smtp.send_messages(items(3, ["nobody@x.test"]))
    assert err.value.code == "550" and err.value.step == "RCPT"
    assert err.value.reply.lines == ("5.1.1 no such user", "5.1.1 really")
    failed = rec.results[-1]
    assert failed.name == ("message" if per_message else "RCPT") and failed.exception is err.value
    assert sum(r.name in ("message", "DATA") and r.exception is None for r in rec.results) == 1
    server.join()


def test_without_pipelining_one_command_at_a_time():
    server = Scripted([NO_PIPELINING, *transaction() * 2, b"221 bye\r\n"])
    rec = ListRecorder()
    smtp = SmtpDriver(Endpoint("127.0.0.1", server.port), recorder=rec)
    smtp.start()
    writes = spy_writes(smtp)
    assert smtp.send_messages(items(2, ["b@x.test"])) == 2
    smtp.quit()
    server.join()
    assert len(writes) == 2 * 4 + 1 and writes[3] == PAYLOAD
    assert rec.names()[2:] == ["SMTP MAIL", "SMTP RCPT", "SMTP DATA"] * 2 + ["SMTP QUIT"]


def test_messages_are_taken_one_ahead_and_none_is_fine():
    server = Scripted([EHLO, *transaction() * 2, b"221 bye\r\n"])
    smtp = SmtpDriver(Endpoint("127.0.0.1", server.port))
    smtp.start()
    assert smtp.send_messages([]) == 0
    taken: list[int] = []

    def lazy() -> Iterator[tuple[str, list[str], bytes]]:
        for i in range(2):
            taken.append(i)
            yield "a@x.test", ["b@x.test"], MESSAGE

    replies = smtp.send_messages(lazy())
    assert replies == 2 and taken == [0, 1]
    smtp.quit()
    server.join()
