"""The reference server in memory (reference_server.memory): the real SMTP, POP3 and IMAP
sessions over an in-memory pipe, no sockets.

Each test runs its own event loop (``asyncio.run``) with a :class:`MemoryServer` on a
fresh data directory; :class:`Wire` reads whole replies off a :class:`MemoryClient`.
The last test prints how many short SMTP dialogues per second the memory pipe and a
loopback socket carry (``pytest -s`` shows it; nothing is asserted about speed).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningServer, reference_config

from reference_server.config import ServerConfig
from reference_server.memory import MemoryClient, MemoryServer

DevSetup = tuple[ServerConfig, dict[str, str], Path]

MESSAGE = (
    b"From: bob@example.test\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: in memory\r\n"
    b"\r\n"
    b"Hello without sockets.\r\n"
    b"..a line that starts with a dot\r\n"
)

_SMTP_LAST = re.compile(rb"(?m)^[0-9]{3}(?: [^\r\n]*)?\r\n")


class Wire:
    """Whole replies from a :class:`MemoryClient`: SMTP replies, lines, tagged IMAP ends."""

    def __init__(self, client: MemoryClient) -> None:
        self.client = client
        self.buf = bytearray()

    async def _more(self) -> None:
        data = await self.client.recv(5.0)
        if not data:
            raise EOFError(f"server closed; unread {bytes(self.buf)!r}")
        self.buf += data

    async def until(self, done: Callable[[bytes], int]) -> bytes:
        """Read until ``done(buffer)`` gives the length of a complete response (> 0)."""
        while not (end := done(bytes(self.buf))):
            await self._more()
        out = bytes(self.buf[:end])
        del self.buf[:end]
        return out

    async def reply(self) -> tuple[int, bytes]:
        """One SMTP reply (RFC 5321 §4.2): its code and raw bytes."""

        def end(buf: bytes) -> int:
            m = _SMTP_LAST.search(buf)
            return m.end() if m else 0

        raw = await self.until(end)
        return int(raw[:3]), raw

    async def cmd(self, line: str) -> tuple[int, bytes]:
        await self.client.send(line.encode() + b"\r\n")
        return await self.reply()

    async def line(self) -> bytes:
        return await self.until(lambda buf: buf.find(b"\r\n") + 2 if b"\r\n" in buf else 0)

    async def multiline(self) -> bytes:
        """A POP3 multi-line response (RFC 1939 §3), status line included."""
        return await self.until(
            lambda buf: buf.find(b"\r\n.\r\n") + 5 if b"\r\n.\r\n" in buf else 0
        )

    async def tagged(self, tag: str) -> bytes:
        """IMAP responses up to and including the completion tagged ``tag``."""
        pattern = re.compile(rb"(?m)^" + re.escape(tag.encode()) + rb" [^\r\n]*\r\n")

        def end(buf: bytes) -> int:
            m = pattern.search(buf)
            return m.end() if m else 0

        return await self.until(end)

    async def eof(self) -> bool:
        """Whether the server closes next, with nothing more sent."""
        return not self.buf and await self.client.recv(5.0) == b""


@pytest.fixture
def config(dev_setup: DevSetup, tmp_path: Path) -> ServerConfig:
    return reference_config(dev_setup[0], tmp_path / "data")


@pytest.fixture
def passwords(dev_setup: DevSetup) -> dict[str, str]:
    return dev_setup[1]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to open a socket, listen or resolve fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("memory mode touched the network")

    loop_cls = asyncio.SelectorEventLoop
    for name in ("create_server", "create_connection", "create_unix_server", "getaddrinfo"):
        monkeypatch.setattr(loop_cls, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


def run(config: ServerConfig, body: Callable[[MemoryServer], Awaitable[None]], **kw: Any) -> None:
    """``body(server)`` on a new MemoryServer, in a new event loop."""

    async def main() -> None:
        async with MemoryServer(config, **kw) as srv:
            await body(srv)

    asyncio.run(main())


async def greeted(srv: MemoryServer, listener: str = "mx", **kw: Any) -> Wire:
    wire = Wire(await srv.connect(listener, **kw))
    if listener in ("mx", "submission", "submissions"):
        code, _ = await wire.reply()
        assert code == 220
    else:
        assert (await wire.line()).startswith((b"+OK", b"* OK"))
    return wire


async def wait_idle(srv: MemoryServer) -> None:
    for _ in range(200):
        if srv.active_sessions == 0 and not any(lst.connections for lst in srv.server.listeners):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"sessions still open: {srv!r}")


# -- SMTP ------------------------------------------------------------------------------


def test_smtp_delivers_into_the_maildir(config: ServerConfig, no_network: None) -> None:
    async def body(srv: MemoryServer) -> None:
        for lst in srv.server.listeners:  # nothing listens
            assert lst._server is None
        wire = await greeted(srv, "mx")
        code, ehlo = await wire.cmd("EHLO client.test")
        assert code == 250 and b"PIPELINING" in ehlo
        assert (await wire.cmd("MAIL FROM:<bob@example.test>"))[0] == 250
        assert (await wire.cmd("RCPT TO:<alice@example.test>"))[0] == 250
        assert (await wire.cmd("DATA"))[0] == 354
        await wire.client.send(MESSAGE + b".\r\n")
        code, raw = await wire.reply()
        assert code == 250, raw
        assert (await wire.cmd("QUIT"))[0] == 221
        assert await wire.eof()
        stored = [path.read_bytes() for path in srv.server.store.list_new("alice")]
        assert len(stored) == 1
        assert stored[0].endswith(MESSAGE.replace(b"\r\n..a", b"\r\n.a"))
        assert b"Received: from client.test ([127.0.0.1])" in stored[0]

    run(config, body)


@pytest.mark.parametrize("inline", [True, False])
def test_blocking_work_runs_inline_unless_asked_otherwise(
    config: ServerConfig, passwords, inline: bool
) -> None:
    # inline (the default): the Maildir delivery and the POP3 login and maildrop run on
    # the loop's own thread; otherwise in worker threads, as on sockets. Same answers.
    threads: set[int] = set()

    async def body(srv: MemoryServer) -> None:
        assert srv.server.inline_blocking is inline
        offload = srv.server.offload

        async def spy(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            def call() -> Any:
                threads.add(threading.get_ident())
                return fn(*args, **kwargs)

            return await offload(call)

        srv.server.offload = spy  # type: ignore[method-assign]
        wire = await greeted(srv, "mx")
        await wire.cmd("EHLO client.test")
        await wire.cmd("MAIL FROM:<bob@example.test>")
        await wire.cmd("RCPT TO:<alice@example.test>")
        await wire.cmd("DATA")
        await wire.client.send(MESSAGE + b".\r\n")
        assert (await wire.reply())[0] == 250
        # the delivery helper process (the config's default) starts with the first
        # delivery off the loop
        store = srv.server.store
        assert (store._helper is not None) is not inline
        assert not store._threads
        pop = await greeted(srv, "pop3")
        await pop.client.send(b"USER alice\r\n")
        await pop.line()
        await pop.client.send(f"PASS {passwords['alice']}\r\n".encode())
        assert (await pop.line()).startswith(b"+OK")
        await pop.client.send(b"STAT\r\n")
        assert (await pop.line()).startswith(b"+OK 1 ")

    run(config, body, inline_blocking=inline)
    assert threads, "nothing was offloaded"
    assert (threads == {threading.get_ident()}) is inline


def test_mail_for_another_domain_waits_in_the_spool(config: ServerConfig, passwords, no_network):
    async def body(srv: MemoryServer) -> None:
        wire = await greeted(srv, "submission")
        await wire.cmd("EHLO client.test")
        token = base64.b64encode(f"\0alice\0{passwords['alice']}".encode()).decode()
        assert (await wire.cmd(f"AUTH PLAIN {token}"))[0] == 235
        assert (await wire.cmd("MAIL FROM:<alice@example.test>"))[0] == 250
        assert (await wire.cmd("RCPT TO:<someone@elsewhere.test>"))[0] == 250
        assert (await wire.cmd("DATA"))[0] == 354
        await wire.client.send(MESSAGE + b".\r\n")
        assert (await wire.reply())[0] == 250
        await asyncio.sleep(0.05)  # a started queue runner would try now (and hit no_network)
        assert len(srv.server.spool.list()) == 1

    run(config, body)


def test_submission_auth_with_assume_tls(config: ServerConfig, passwords) -> None:
    async def body(srv: MemoryServer) -> None:
        wire = await greeted(srv, "submission")
        code, ehlo = await wire.cmd("EHLO client.test")
        assert b"AUTH PLAIN LOGIN" in ehlo
        assert b"STARTTLS" not in ehlo
        assert (await wire.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong").decode()))[
            0
        ] == 535
        token = base64.b64encode(f"\0alice\0{passwords['alice']}".encode()).decode()
        code, raw = await wire.cmd(f"AUTH PLAIN {token}")
        assert code == 235, raw
        # the session thinks it is on TLS: STARTTLS is refused as on a TLS connection
        assert (await wire.cmd("STARTTLS"))[0] == 503

    run(config, body)


def test_without_assume_tls_starttls_is_neither_offered_nor_accepted(config: ServerConfig):
    async def body(srv: MemoryServer) -> None:
        wire = await greeted(srv, "submission")
        _, ehlo = await wire.cmd("EHLO client.test")
        assert b"STARTTLS" not in ehlo and b"AUTH" not in ehlo
        assert (await wire.cmd("STARTTLS"))[0] == 502
        assert (await wire.cmd("AUTH PLAIN AGFsaWNlAHg="))[0] == 538
        assert (await wire.cmd("NOOP"))[0] == 250  # the session goes on

        pop = await greeted(srv, "pop3")
        await pop.client.send(b"CAPA\r\n")
        assert b"STLS" not in await pop.multiline()
        await pop.client.send(b"STLS\r\n")
        assert (await pop.line()).startswith(b"-ERR")

        imap = await greeted(srv, "imap")
        await imap.client.send(b"a1 CAPABILITY\r\n")
        caps = await imap.tagged("a1")
        assert b"STARTTLS" not in caps and b"LOGINDISABLED" in caps
        await imap.client.send(b"a2 STARTTLS\r\n")
        assert (await imap.tagged("a2")).startswith(b"a2 BAD")

        # an implicit-TLS listener runs as on TLS whatever assume_tls says
        wire = await greeted(srv, "submissions")
        assert b"AUTH PLAIN" in (await wire.cmd("EHLO client.test"))[1]

    run(config, body, assume_tls=False)


def test_quit_closes_and_the_client_sees_eof(config: ServerConfig) -> None:
    async def body(srv: MemoryServer) -> None:
        wire = await greeted(srv)
        assert (await wire.cmd("QUIT"))[0] == 221
        assert await wire.eof()
        assert wire.client.closed
        with pytest.raises(BrokenPipeError):
            await wire.client.send(b"NOOP\r\n")
        await wait_idle(srv)

    run(config, body)


def test_clients_that_vanish_mid_command_do_not_hurt_the_server(
    config: ServerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(srv: MemoryServer) -> None:
        # half a command, then a clean close (FIN)
        wire = await greeted(srv)
        await wire.client.send(b"MAIL FROM:<bob@exa")
        wire.client.close()
        # in the middle of DATA
        wire = await greeted(srv)
        await wire.cmd("EHLO client.test")
        await wire.cmd("MAIL FROM:<bob@example.test>")
        await wire.cmd("RCPT TO:<alice@example.test>")
        assert (await wire.cmd("DATA"))[0] == 354
        await wire.client.send(b"Subject: cut\r\n\r\nhalf a mess")
        wire.client.close()
        # with replies left unread (a reset), and an outright abort
        wire = await greeted(srv)
        await wire.client.send(b"EHLO client.test\r\nNOOP\r\n")
        await asyncio.sleep(0.01)
        wire.client.close()
        wire = await greeted(srv, "imap")
        await wire.client.send(b"a1 LOGIN alice {5}\r\n")
        wire.client.abort()
        await wait_idle(srv)
        assert srv.server.store.list_new("alice") == []
        # and the server still serves
        wire = await greeted(srv)
        assert (await wire.cmd("NOOP"))[0] == 250
        with pytest.raises(ConnectionAbortedError):
            wire.client.close()
            await wire.client.send(b"NOOP\r\n")

    with caplog.at_level(logging.INFO, logger="reference_server"):
        run(config, body)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_fifty_concurrent_smtp_dialogues(config: ServerConfig) -> None:
    async def dialogue(srv: MemoryServer, n: int) -> None:
        wire = await greeted(srv)
        await wire.cmd("EHLO client.test")
        assert (await wire.cmd("MAIL FROM:<bob@example.test>"))[0] == 250
        assert (await wire.cmd("RCPT TO:<alice@example.test>"))[0] == 250
        assert (await wire.cmd("DATA"))[0] == 354
        await wire.client.send(f"Subject: number {n}\r\n\r\nbody {n}\r\n.\r\n".encode())
        assert (await wire.reply())[0] == 250
        assert (await wire.cmd("QUIT"))[0] == 221
        assert await wire.eof()

    async def body(srv: MemoryServer) -> None:
        await asyncio.gather(*(dialogue(srv, n) for n in range(50)))
        stored = {path.read_bytes() for path in srv.server.store.list_new("alice")}
        assert {re.search(rb"body (\d+)", m).group(1) for m in stored} == {  # type: ignore[union-attr]
            str(n).encode() for n in range(50)
        }
        await wait_idle(srv)

    run(config, body)


def test_the_server_waits_while_the_client_does_not_read(config: ServerConfig, passwords):
    """Flow control: past the pipe's buffer the session waits (pause_writing) until the
    client reads, and takes no further command meanwhile."""
    big = (b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n") * 300  # ~300 KB

    async def body(srv: MemoryServer) -> None:
        srv.server.store.deliver_sync(["alice"], big)
        wire = await greeted(srv, "pop3")
        await wire.client.send(f"USER alice\r\nPASS {passwords['alice']}\r\n".encode())
        assert (await wire.line()).startswith(b"+OK")
        assert (await wire.line()).startswith(b"+OK")
        transport = wire.client.transport
        await wire.client.send(b"RETR 1\r\n")
        for _ in range(400):
            await asyncio.sleep(0.005)
            if transport.get_write_buffer_size():
                break
        await wire.client.send(b"NOOP\r\n")
        await asyncio.sleep(0.05)
        retr = await wire.multiline()
        assert retr.split(b"\r\n", 1)[1] == big + b".\r\n"
        assert wire.buf == b""  # the NOOP was not answered while the client did not read
        assert (await wire.line()).startswith(b"+OK")  # and is, now that it did

    run(config, body, buffer_limit=64 * 1024)


def test_send_nowait_and_recv_nowait_without_running_the_loop(config: ServerConfig) -> None:
    """The synchronous half of the client: bytes go in at once, the answer is there
    only after the loop ran; EOF is ``b""``, nothing yet is ``None``."""

    async def body(srv: MemoryServer) -> None:
        wire = await greeted(srv)
        client = wire.client
        assert client.recv_nowait() is None and not client.readable()
        assert client.send_nowait(b"NOOP\r\n")
        assert client.recv_nowait() is None  # the session has not run yet
        for _ in range(100):
            if client.readable():
                break
            await asyncio.sleep(0)
        assert (client.recv_nowait() or b"").startswith(b"250")
        assert client.send_nowait(b"QUIT\r\n")
        while not client.closed:
            await asyncio.sleep(0.001)
        assert (client.recv_nowait() or b"").startswith(b"221")
        assert client.recv_nowait() == b""  # EOF
        with pytest.raises(BrokenPipeError):
            client.send_nowait(b"NOOP\r\n")
        client.close()
        with pytest.raises(ConnectionAbortedError):
            client.recv_nowait()

    run(config, body)


def test_stop_says_goodbye_to_open_sessions(config: ServerConfig) -> None:
    async def main() -> None:
        srv = MemoryServer(config)
        wire = await greeted(srv)
        await srv.stop()
        code, _ = await wire.reply()
        assert code == 421
        assert await wire.eof()
        with pytest.raises(RuntimeError):
            await srv.connect("mx")
        with pytest.raises(KeyError):
            srv.listener("nonesuch")

    asyncio.run(main())


# -- POP3 and IMAP ---------------------------------------------------------------------


def test_pop3_login_stat_retr(config: ServerConfig, passwords, no_network) -> None:
    async def body(srv: MemoryServer) -> None:
        srv.server.store.deliver_sync(["alice"], MESSAGE)
        wire = await greeted(srv, "pop3")
        await wire.client.send(b"USER alice\r\n")
        assert (await wire.line()).startswith(b"+OK")
        await wire.client.send(f"PASS {passwords['alice']}\r\n".encode())
        assert (await wire.line()).startswith(b"+OK"), "login"
        await wire.client.send(b"STAT\r\n")
        assert await wire.line() == f"+OK 1 {len(MESSAGE)}\r\n".encode()
        await wire.client.send(b"RETR 1\r\n")
        retr = await wire.multiline()
        status, content = retr.split(b"\r\n", 1)
        assert status.startswith(b"+OK")
        assert content == MESSAGE.replace(b"\r\n..a", b"\r\n...a") + b".\r\n"  # byte-stuffed
        await wire.client.send(b"QUIT\r\n")
        assert (await wire.line()).startswith(b"+OK")
        assert await wire.eof()

    run(config, body)


def test_imap_login_select_fetch(config: ServerConfig, passwords, no_network) -> None:
    async def body(srv: MemoryServer) -> None:
        srv.server.store.deliver_sync(["alice"], MESSAGE)
        wire = await greeted(srv, "imap")
        await wire.client.send(f'a1 LOGIN alice "{passwords["alice"]}"\r\n'.encode())
        assert b"a1 OK" in await wire.tagged("a1")
        await wire.client.send(b"a2 SELECT INBOX\r\n")
        select = await wire.tagged("a2")
        assert b"* 1 EXISTS" in select and b"a2 OK" in select
        await wire.client.send(b"a3 FETCH 1 (BODY.PEEK[] RFC822.SIZE)\r\n")
        fetch = await wire.tagged("a3")
        assert f"RFC822.SIZE {len(MESSAGE)}".encode() in fetch
        assert f"BODY[] {{{len(MESSAGE)}}}\r\n".encode() + MESSAGE in fetch
        assert b"\r\na3 OK" in fetch
        await wire.client.send(b"a4 LOGOUT\r\n")
        assert b"* BYE" in await wire.tagged("a4")
        assert await wire.eof()

    run(config, body)


# -- speed, for the record ---------------------------------------------------------------

DIALOGUE = [  # ten commands, no DATA: the transport and the session, not the disk
    "EHLO client.test",
    "MAIL FROM:<bob@example.test>",
    "RCPT TO:<alice@example.test>",
    "RSET",
    "NOOP",
    "HELP",
    "VRFY alice",
    "MAIL FROM:<bob@example.test>",
    "RCPT TO:<bob@example.test>",
    "QUIT",
]


async def memory_dialogue(srv: MemoryServer) -> None:
    wire = await greeted(srv)
    for command in DIALOGUE:
        code, raw = await wire.cmd(command)
        assert code < 600, raw
    assert await wire.eof()


def socket_dialogue(addr: tuple[str, int]) -> None:
    with socket.create_connection(addr, timeout=5.0) as sock:
        buf = b""

        def reply() -> None:
            nonlocal buf
            while not (m := _SMTP_LAST.search(buf)):
                data = sock.recv(65536)
                assert data, "server closed"
                buf += data
            buf = buf[m.end() :]

        reply()
        for command in DIALOGUE:
            sock.sendall(command.encode() + b"\r\n")
            reply()
        assert sock.recv(1) == b""


def test_dialogues_per_second_memory_versus_loopback(
    config: ServerConfig, mail_server: RunningServer
) -> None:
    seconds = 0.75

    async def memory_rate() -> float:
        async with MemoryServer(config) as srv:
            await memory_dialogue(srv)  # warm up
            n, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                await memory_dialogue(srv)
                n += 1
            return n / elapsed

    memory = asyncio.run(memory_rate())
    addr = mail_server.addr("mx")
    socket_dialogue(addr)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        socket_dialogue(addr)
        n += 1
    loopback = n / elapsed
    print(
        f"\n10-command SMTP dialogues/s, one at a time: memory {memory:.0f}, "
        f"loopback socket (ServerThread) {loopback:.0f}, ratio {memory / loopback:.1f}x"
    )
