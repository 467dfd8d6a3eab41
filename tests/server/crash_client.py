"""Load generator for the crash-durability test: unique messages, raw-socket SMTP clients.

Written for tests/server/test_crash_durability.py; no harness code is used on purpose,
so the client side cannot share a bug with the server's wire core.

* :func:`make_messages` builds messages that are unique (``X-Seq: <n>``), of varying size,
  and full of lines starting with "." so the server's dot-unstuffing is exercised.
* :class:`LoadRun` sends a list of messages over several concurrent connections and
  records, per message, how far it got: never started, started but the final dot
  not written, final dot written but no reply, acknowledged (250), or rejected.
  Each connection stops at its first connection error and never resends, so no
  message can legitimately be stored twice.
"""

from __future__ import annotations

import functools
import random
import socket
import threading
from collections.abc import Callable, Sequence

# What happened to one message, in order of progress.
PENDING = "pending"  # never started (the load stopped first)
STARTED = "started"  # MAIL/RCPT/DATA sent, final dot not (completely) written
DATA_SENT = "data_sent"  # final dot written, no reply seen: stored or not, both are fine
ACKED = "acked"  # 250 to the final dot: must survive any crash
REJECTED = "rejected"  # any other reply to the final dot (or to MAIL/RCPT/DATA)

CLIENT_NAME = "client.test"
SENDER = "load@client.test"
RECIPIENT = "alice@example.test"

_PRINTABLE = bytes(range(0x21, 0x7F)) + b"    "  # more spaces than other characters


def make_messages(rng: random.Random, first_seq: int, count: int) -> list[tuple[int, bytes]]:
    """``count`` messages with ``X-Seq`` from ``first_seq``, as (seq, bytes) pairs.

    Each message is what the server must store after the Received header: CRLF
    line ends, ending with CRLF, not dot-stuffed (see :func:`wire_data`). Sizes
    are 200 B to 20 KB; about one body line in eight starts with ".", including
    lines that are only ".", "..", or ". ".
    """
    pool = bytes(rng.choice(_PRINTABLE) for _ in range(1 << 16))
    messages: list[tuple[int, bytes]] = []
    for seq in range(first_seq, first_seq + count):
        target = rng.randint(200, 20_000)
        parts = [
            b"From: Load <load@client.test>\r\n",
            b"To: Alice <alice@example.test>\r\n",
            f"Subject: crash load {seq}\r\n".encode(),
            f"X-Seq: {seq}\r\n".encode(),
            b"\r\n",
        ]
        size = sum(map(len, parts))
        while size < target:
            pick = rng.random()
            if pick < 0.03:
                line = rng.choice((b".", b"..", b". ", b"..."))
            elif pick < 0.125:
                start = rng.randrange(len(pool) - 200)
                line = b"." + pool[start : start + rng.randint(0, 120)]
            elif pick < 0.15:
                line = b""
            else:
                length = rng.randint(1, 300) if rng.random() < 0.97 else rng.randint(300, 998)
                start = rng.randrange(len(pool) - length)
                line = pool[start : start + length]
            parts.append(line + b"\r\n")
            size += len(line) + 2
        messages.append((seq, b"".join(parts)))
    return messages


def wire_data(message: bytes) -> bytes:
    """``message`` as sent after the 354: dot-stuffed (RFC 5321 §4.5.2), then ``.`` CRLF."""
    assert message.endswith(b"\r\n")
    lines = message[:-2].split(b"\r\n")
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"\r\n".join(stuffed) + b"\r\n.\r\n"


class SmtpConn:
    """A blocking SMTP client connection: just enough for MAIL/RCPT/DATA with PIPELINING."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._in = self.sock.makefile("rb")

    def reply(self) -> tuple[int, bytes]:
        """The next reply: (code, every line); ConnectionError at EOF."""
        lines: list[bytes] = []
        while True:
            line = self._in.readline(2048)
            if not line.endswith(b"\n"):
                raise ConnectionError(f"connection closed inside a reply: {line!r}")
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                break
        try:
            code = int(lines[-1][:3])
        except ValueError:
            raise ConnectionError(f"not an SMTP reply: {lines!r}") from None
        return code, b"".join(lines)

    def expect(self, code: int) -> None:
        got, text = self.reply()
        if got != code:
            raise ConnectionError(f"expected {code}, got {text!r}")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self._in.close()
        finally:
            self.sock.close()


def open_session(host: str, port: int, timeout: float = 20.0) -> SmtpConn:
    """Connect, read the 220 and say EHLO; ConnectionError (or OSError) when that fails."""
    conn = SmtpConn(host, port, timeout)
    try:
        conn.expect(220)
        conn.send(f"EHLO {CLIENT_NAME}\r\n".encode())
        conn.expect(250)
    except BaseException:
        conn.close()
        raise
    return conn


def send_one(
    conn: SmtpConn, message: bytes, on_data_sent: Callable[[], None] | None = None
) -> tuple[int, bytes]:
    """One transaction, MAIL/RCPT/DATA pipelined (RFC 2920); the reply to the final dot.

    ``on_data_sent`` (a callable) runs once the final dot has been written.
    Raises ConnectionError (or OSError) on connection trouble; a refusal of
    MAIL, RCPT or DATA is returned as that reply (after RSET).
    """
    conn.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode())
    replies = [conn.reply() for _ in range(3)]
    for (code, text), want in zip(replies, (250, 250, 354), strict=True):
        if code != want:
            if replies[2][0] == 354:  # DATA was accepted after all: end it empty
                conn.send(b".\r\n")
                conn.reply()
            conn.send(b"RSET\r\n")
            conn.reply()
            return code, text
    conn.send(wire_data(message))
    if on_data_sent is not None:
        on_data_sent()
    return conn.reply()


class LoadRun:
    """Send ``messages`` over ``threads`` connections at once; see the module docstring.

    Attributes:
        status: per message (same index as ``messages``), one of the states above.
        replies: per message, the reply to the final dot (or the refusal), if any.
        errors: connection errors seen, one per thread that stopped on one.
    """

    def __init__(
        self, host: str, port: int, messages: Sequence[tuple[int, bytes]], threads: int = 8
    ) -> None:
        self.host, self.port = host, port
        self.messages = list(messages)
        self.status = [PENDING] * len(self.messages)
        self.replies: list[bytes | None] = [None] * len(self.messages)
        self.errors: list[str] = []
        self._next = 0
        self._acked = 0
        self._cond = threading.Condition()
        self._running = threads
        self._threads = [
            threading.Thread(target=self._worker, name=f"crash-client-{i}", daemon=True)
            for i in range(threads)
        ]

    @property
    def acked(self) -> int:
        with self._cond:
            return self._acked

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait_for_acks(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` messages got 250 (or every worker ended); whether they did."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._acked >= count or self._running == 0,
                timeout,
            )
            return self._acked >= count

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"client threads still running: {alive}"

    def _take(self) -> int | None:
        with self._cond:
            if self._next >= len(self.messages):
                return None
            index = self._next
            self._next += 1
            self.status[index] = STARTED
            return index

    def _set(self, index: int, status: str, reply: bytes | None = None) -> None:
        with self._cond:
            self.status[index] = status
            if reply is not None:
                self.replies[index] = reply
            if status == ACKED:
                self._acked += 1
            self._cond.notify_all()

    def _worker(self) -> None:
        try:
            self._work()
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _work(self) -> None:
        try:
            conn = open_session(self.host, self.port)
        except (OSError, ConnectionError) as exc:
            self._stopped(exc)
            return
        try:
            while (index := self._take()) is not None:
                code, text = send_one(
                    conn, self.messages[index][1], functools.partial(self._set, index, DATA_SENT)
                )
                self._set(index, ACKED if code == 250 else REJECTED, text)
        except (OSError, ConnectionError) as exc:
            self._stopped(exc)
        finally:
            conn.close()

    def _stopped(self, exc: BaseException) -> None:
        with self._cond:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self._cond.notify_all()
