"""Scripted servers for tests: real TCP/TLS sockets on loopback, one thread per connection.

A test writes a *handler* (a plain function taking a :class:`ScriptConn`) that plays the
server side of a conversation line by line, and runs it inside :class:`ScriptedServer`::

    def handler(conn):
        conn.sendline("220 hello")
        conn.expect(r"EHLO \\S+")
        conn.sendline("250 ok")

    with ScriptedServer(handler) as srv:
        ...  # connect a client to (srv.host, srv.port)

An exception raised by a handler (a failed ``expect``, a timeout waiting for the client) is
re-raised when the ``with`` block exits, so a broken expectation on the server side fails the
test. A client that simply went away (EOF, reset, broken pipe, refused TLS handshake) is not
an error. Servers bind port 0 on an IP literal; nothing here ever resolves a name.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import trustme

__all__ = [
    "ScriptConn",
    "ScriptedServer",
    "TLSHandshakeError",
    "TestCerts",
    "make_test_certs",
]

Handler = Callable[["ScriptConn"], None]


# --------------------------------------------------------------------------- certificates


class TestCerts:
    """A throwaway CA plus a leaf certificate for ``localhost``, ``127.0.0.1`` and ``::1``."""

    __test__ = False  # not a pytest test class, even when imported into a test module

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._ca = trustme.CA()
        self._leaf = self._ca.issue_cert("localhost", "127.0.0.1", "::1")
        self.ca_file = directory / "ca.pem"
        self.cert_file = directory / "server-chain.pem"
        self.key_file = directory / "server-key.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))
        with self.cert_file.open("wb") as f:
            for blob in self._leaf.cert_chain_pems:
                f.write(blob.bytes())
        self._leaf.private_key_pem.write_to_path(str(self.key_file))
        self._server_ctx: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def server_context(self) -> ssl.SSLContext:
        """Server-side context (shared; SSLContext is safe to use from many threads)."""
        with self._lock:
            if self._server_ctx is None:
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                self._leaf.configure_cert(ctx)
                self._server_ctx = ctx
            return self._server_ctx

    def client_context(self) -> ssl.SSLContext:
        """A fresh verifying client context that trusts only the test CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_test_certs(directory: Path) -> TestCerts:
    return TestCerts(directory)


# --------------------------------------------------------------------------- connection


class TLSHandshakeError(ConnectionError):
    """The TLS handshake with the client failed (the client refused us, or spoke no TLS)."""


# A client that went away: not a failure of the server-side script.
_CLIENT_GONE = (EOFError, ConnectionError)


class ScriptConn:
    """One accepted connection, driven by a handler in its own thread."""

    max_line = 1 << 20  # a longer line without LF is an AssertionError (use recv_exact)
    linger = 0.5  # close(): how long to drain the client's bytes after our FIN

    def __init__(self, sock: socket.socket, server: ScriptedServer) -> None:
        self._sock: socket.socket = sock
        self._server = server
        self._buf = bytearray()
        self._eof = False
        self._closed = False
        self.peer: tuple[Any, ...] = sock.getpeername()
        self.tls = False
        self.received: list[bytes] = []
        self.last_terminator: bytes = b""

    # ---- info
    @property
    def tls_available(self) -> bool:
        """Whether :meth:`starttls` can work (the server was given certificates)."""
        return self._server.certs is not None

    # ---- sending
    def send(self, data: bytes | str, timeout: float = 5.0) -> None:
        """Send exactly these bytes (str is UTF-8 encoded; nothing is appended)."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(data)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError) as e:
            raise BrokenPipeError(f"client went away while we sent {data[:60]!r}") from e

    def sendline(self, line: str | bytes) -> None:
        """Send one line followed by CRLF."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")

    # ---- receiving
    def _fill(self, deadline: float, what: str) -> None:
        if self._eof:
            raise EOFError(f"client closed the connection (waiting for {what})")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out waiting for {what}; buffered {bytes(self._buf)[:200]!r}")
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(65536)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = b""
        except TimeoutError:
            raise TimeoutError(
                f"timed out waiting for {what}; buffered {bytes(self._buf)[:200]!r}"
            ) from None
        if not data:
            self._eof = True
            raise EOFError(f"client closed the connection (waiting for {what})")
        self._buf += data

    def recv_line(self, timeout: float = 5.0) -> bytes:
        """One line without its terminator; CRLF or a bare LF ends it (see last_terminator)."""
        deadline = time.monotonic() + timeout
        scanned = 0
        while True:
            i = self._buf.find(b"\n", scanned)
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 1]
                if line.endswith(b"\r"):
                    line, self.last_terminator = line[:-1], b"\r\n"
                else:
                    self.last_terminator = b"\n"
                self.received.append(line)
                return line
            scanned = len(self._buf)
            if scanned > self.max_line:
                raise AssertionError(f"client sent a line longer than {self.max_line} bytes")
            self._fill(deadline, "a line")

    def recv_until(self, pattern: bytes, timeout: float = 5.0) -> bytes:
        """Raw bytes up to and including the first match of the regex ``pattern``."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            m = regex.search(self._buf)
            if m is not None:
                data = bytes(self._buf[: m.end()])
                del self._buf[: m.end()]
                return data
            self._fill(deadline, f"bytes matching {pattern!r}")

    def recv_exact(self, n: int, timeout: float = 5.0) -> bytes:
        """Exactly n bytes (for literals and the like); not recorded in ``received``."""
        deadline = time.monotonic() + timeout
        while len(self._buf) < n:
            self._fill(deadline, f"{n} bytes")
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def expect(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        """Read a line and re.fullmatch it (case-insensitively) against pattern."""
        raw = self.recv_line(timeout)
        text = raw.decode("utf-8", "surrogateescape")
        m = re.fullmatch(pattern, text, re.IGNORECASE)
        if m is None:
            raise AssertionError(f"expected a line matching {pattern!r}, client sent {raw!r}")
        return m

    def readable(self, timeout: float = 0.0) -> bool:
        """True if a line is buffered or the socket has bytes (or EOF) to read."""
        if b"\n" in self._buf or self._eof:
            return True
        if isinstance(self._sock, ssl.SSLSocket) and self._sock.pending():
            return True
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            return bool(sel.select(timeout))

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Wait for the client to close; True if it did. Bytes read meanwhile stay buffered."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._fill(deadline, "EOF")
            except EOFError:
                return True
            except ConnectionError:
                self._eof = True
                return True
            except TimeoutError:
                return False

    # ---- TLS
    def starttls(self, timeout: float = 5.0, *, discard_pipelined: bool = False) -> None:
        """Wrap the socket in server-side TLS and handshake now.

        Bytes the client sent after the STARTTLS command but before the handshake are a
        client bug (RFC 3207 §4.2 and friends): AssertionError, unless ``discard_pipelined``
        asks for what a correct server does, dropping them unexecuted. A failed handshake
        raises :class:`TLSHandshakeError`, which counts as the client going away (it is
        recorded in ``server.tls_failures``).
        """
        if self.tls:
            raise AssertionError("starttls() on a connection that is already TLS")
        if discard_pipelined:
            self._buf.clear()
        if self._buf:
            raise AssertionError(
                f"client pipelined plaintext after STARTTLS: {bytes(self._buf)[:200]!r}"
            )
        self._handshake(timeout)

    def _handshake(self, timeout: float) -> None:
        certs = self._server.certs
        if certs is None:
            raise RuntimeError("ScriptedServer has no certs: pass certs=... to use TLS")
        ctx = certs.server_context()
        tls_sock = ctx.wrap_socket(self._sock, server_side=True, do_handshake_on_connect=False)
        self._sock = tls_sock  # the plain socket object is detached by wrap_socket
        tls_sock.settimeout(timeout)
        try:
            tls_sock.do_handshake()
        except TimeoutError:
            raise TimeoutError("client did not complete the TLS handshake") from None
        except (ssl.SSLError, OSError) as e:
            self._eof = True
            err = TLSHandshakeError(f"TLS handshake failed: {e}")
            self._server._note_tls_failure(err)
            raise err from e
        self.tls = True

    # ---- closing
    def close(self) -> None:
        """Orderly close: TLS close_notify, FIN, drain what the client still sends, close."""
        if self._closed:
            return
        self._closed = True
        sock = self._sock
        try:
            if isinstance(sock, ssl.SSLSocket) and self.tls:
                sock.settimeout(0.0)
                with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                    sock.unwrap()  # sends close_notify; would block waiting for the peer's
            sock.shutdown(socket.SHUT_WR)
            if not self._eof:
                deadline = time.monotonic() + self.linger
                while (remaining := deadline - time.monotonic()) > 0:
                    sock.settimeout(remaining)
                    if not sock.recv(65536):
                        break
        except (OSError, ValueError):
            pass
        finally:
            sock.close()

    def abort(self) -> None:
        """Close with a TCP RST (SO_LINGER 0): a connection that dies abruptly."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._sock.close()

    def _force_shutdown(self) -> None:
        # Called from the server thread to unblock a handler stuck in recv; bypasses
        # SSLSocket.shutdown (which would drop the TLS state under the handler's feet).
        with contextlib.suppress(OSError, ValueError):
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)


# --------------------------------------------------------------------------- server


class ScriptedServer:
    """Loopback server running ``handler(conn)`` for each connection in its own thread."""

    shutdown_grace = 2.0  # on exit: time handlers get to finish on their own
    shutdown_force = 3.0  # then sockets are shut down and handlers get this long

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        tls: Literal["none", "implicit"] = "none",
        certs: TestCerts | None = None,
        backlog: int = 512,
    ) -> None:
        if tls not in ("none", "implicit"):
            raise ValueError(f"tls must be 'none' or 'implicit', not {tls!r}")
        if tls == "implicit" and certs is None:
            raise ValueError("tls='implicit' needs certs")
        self.handler = handler
        self.host = host
        self.port = 0
        self.tls = tls
        self.certs = certs
        self.backlog = backlog
        self.connections = 0
        self.errors: list[BaseException] = []
        self.tls_failures: list[BaseException] = []
        self._lock = threading.Lock()
        self._live: dict[threading.Thread, ScriptConn] = {}
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __repr__(self) -> str:
        return f"<ScriptedServer {self.host!r}:{self.port} tls={self.tls}>"

    # ---- lifecycle
    def start(self) -> ScriptedServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.bind((self.host, 0))
            listener.listen(self.backlog)
            listener.setblocking(False)
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"scripted-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()
        return self

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if not self.errors:
            return
        first = self.errors[0]
        if exc is not None:
            exc.add_note(f"{self!r}: handler also failed: {first!r}")
            return
        for other in self.errors[1:]:
            first.add_note(f"{self!r}: another handler failed: {other!r}")
        raise first

    def stop(self) -> None:
        """Stop accepting, let handlers finish (bounded), then force their sockets shut."""
        if self._accept_thread is None:
            return
        self._stopping.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        self._accept_thread.join(5.0)
        self._accept_thread = None
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._join_until(time.monotonic() + self.shutdown_grace)
        with self._lock:
            stuck = list(self._live.values())
        for conn in stuck:
            conn._force_shutdown()
        self._join_until(time.monotonic() + self.shutdown_force)
        with self._lock:
            left = list(self._live)
        for t in left:
            self.errors.append(RuntimeError(f"{self!r}: handler thread {t.name} did not finish"))

    def _join_until(self, deadline: float) -> None:
        while True:
            with self._lock:
                threads = list(self._live)
            if not threads:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            threads[0].join(remaining)

    # ---- internals
    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        # Clients whose connect() already succeeded get served too.
                        self._accept_ready(final=True)
                        return
                    self._accept_ready()

    def _accept_ready(self, final: bool = False) -> None:
        assert self._listener is not None
        while final or not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionError:
                continue
            except OSError as e:  # EMFILE and the like: report, back off a little
                with self._lock:
                    self.errors.append(e)
                time.sleep(0.05)
                return
            sock.setblocking(True)
            try:
                conn = ScriptConn(sock, self)
            except OSError:  # the client already vanished (getpeername failed)
                sock.close()
                continue
            with self._lock:
                self.connections += 1
                n = self.connections
            t = threading.Thread(
                target=self._serve, args=(conn,), name=f"scripted-{self.port}-{n}", daemon=True
            )
            with self._lock:
                self._live[t] = conn
            t.start()

    def _serve(self, conn: ScriptConn) -> None:
        try:
            if self.tls == "implicit":
                conn._handshake(5.0)
            self.handler(conn)
        except _CLIENT_GONE:
            pass
        except BaseException as e:
            with self._lock:
                self.errors.append(e)
        finally:
            try:
                conn.close()
            finally:
                with self._lock:
                    self._live.pop(threading.current_thread(), None)

    def _note_tls_failure(self, err: BaseException) -> None:
        with self._lock:
            self.tls_failures.append(err)
