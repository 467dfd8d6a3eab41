"""A scripted authoritative DNS server for tests, on loopback, UDP and TCP, in a thread.

Theory of operation
-------------------
A test hands :class:`FakeDns` a table of records, name -> type -> rdata texts::

    records = {
        "b.test": {"MX": ["10 mx1.b.test.", "20 mx2.b.test."]},
        "mx1.b.test": {"A": ["127.0.0.2"], "AAAA": ["::1"]},
    }
    with FakeDns(records, servfail=["broken.test"], silent=[("mx1.b.test", "AAAA")]) as dns_server:
        ...  # point a resolver at 127.0.0.1, port dns_server.port
        assert ("b.test", "MX") in dns_server.queries

The table is parsed when the server is built, so a typo in an rdata fails the test at
once. Names are case-insensitive and may carry the final dot or not; relative names in
rdata (``"10 mx1.b.test"``) are taken as absolute. Answers follow the table like an
authoritative server would (RFC 1034 §4.3.2): a name not in the table is NXDOMAIN; a name
without the asked type is NOERROR with an empty answer (NODATA); a CNAME is followed
within the table. Records go out in the order the table lists them (not shuffled as
dnspython otherwise does), so answers are reproducible. Questions in ``servfail`` are
answered SERVFAIL and those in ``silent`` never answered, so a client times out; an
entry there is a name (every type) or a ``(name, type)`` pair (that type only). Every
question received is logged, in arrival order, as ``(name, type)`` in
:attr:`FakeDns.queries` (the name lower case, without the final dot), silent and
SERVFAIL ones included.

One thread serves a UDP socket and a TCP listener bound to the same free port (the
resolver retries over TCP on the same port when a UDP answer is truncated, RFC 7766);
a socket pair wakes it up for a prompt :meth:`FakeDns.close`. The server binds only the
given IP literal (127.0.0.1 by default) and never resolves anything itself.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["FakeDns", "Records"]

Records = Mapping[str, Mapping[str, Sequence[str] | str]]
Questions = Iterable[str | tuple[str, str]]  # a name (any type) or a (name, type) pair

# RFC 1035 §4.2.1: a UDP message without EDNS is at most 512 octets
CLASSIC_UDP_SIZE = 512
MAX_CNAME_CHAIN = 8
BIND_ATTEMPTS = 50


def _name(text: str) -> dns.name.Name:
    """The absolute name for ``text``, with or without the final dot."""
    return dns.name.from_text(text, origin=dns.name.root)


def _questions(entries: Questions) -> set[tuple[dns.name.Name, dns.rdatatype.RdataType | None]]:
    """``(name, type)`` pairs to match questions against; type ``None`` matches every type."""
    parsed: set[tuple[dns.name.Name, dns.rdatatype.RdataType | None]] = set()
    for entry in entries:
        if isinstance(entry, str):
            parsed.add((_name(entry), None))
        else:
            parsed.add((_name(entry[0]), dns.rdatatype.from_text(entry[1])))
    return parsed


@dataclass
class _TcpConnection:
    """A TCP client: RFC 1035 §4.2.2 frames each message with a two-octet length."""

    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)


class FakeDns:
    """An authoritative DNS server for ``records`` on ``host``, UDP and TCP, port :attr:`port`.

    Args:
        records: name -> rdata type (``"MX"``, ``"A"``, ...) -> rdata texts (a single
            text is fine too).
        servfail: questions answered SERVFAIL: names (every type) or (name, type) pairs.
        silent: questions never answered (to exercise timeouts), given the same way.
        ttl: the TTL of every record.
        host: the IP literal to bind.
    """

    def __init__(
        self,
        records: Records,
        *,
        servfail: Questions = (),
        silent: Questions = (),
        ttl: int = 300,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = 0
        self.queries: list[tuple[str, str]] = []  # appended by the server thread only
        self.errors: list[BaseException] = []
        self._zone: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rrset.RRset]] = {}
        for owner_text, by_type in records.items():
            owner = _name(owner_text)
            node = self._zone.setdefault(owner, {})
            for type_text, rdatas in by_type.items():
                texts = [rdatas] if isinstance(rdatas, str) else list(rdatas)
                rrset = dns.rrset.from_text_list(
                    owner,
                    ttl,
                    dns.rdataclass.IN,
                    type_text,
                    texts,
                    origin=dns.name.root,
                    relativize=False,
                )
                node[rrset.rdtype] = rrset
        self._servfail = _questions(servfail)
        self._silent = _questions(silent)
        self._selector: selectors.BaseSelector | None = None
        self._udp: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeDns:
        """Bind UDP and TCP on one free port and start serving."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._udp, self._listener = self._bind_pair(family)
        self.port = self._udp.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        for sock in (self._udp, self._listener, self._wake_r):
            sock.setblocking(False)
        self._selector.register(self._udp, selectors.EVENT_READ, "udp")
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name="fake-dns", daemon=True)
        self._thread.start()
        return self

    def _bind_pair(self, family: socket.AddressFamily) -> tuple[socket.socket, socket.socket]:
        """A UDP socket on a free port and a TCP listener on the same port (retried if taken)."""
        for _ in range(BIND_ATTEMPTS):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            port = udp.getsockname()[1]
            listener = socket.socket(family, socket.SOCK_STREAM)
            try:
                listener.bind((self.host, port))
            except OSError as exc:
                udp.close()
                listener.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            listener.listen(16)
            return udp, listener
        raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")

    def close(self) -> None:
        """Stop serving, close every socket, and re-raise the first error the thread hit."""
        self._stopping.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._selector is not None:
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()
            self._selector = None
        if self._wake_w is not None:
            self._wake_w.close()
            self._wake_w = None
        if self.errors:
            raise self.errors[0]

    def __enter__(self) -> FakeDns:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.errors.clear()  # the test's own failure matters more
        self.close()

    # ------------------------------------------------------------------ serving

    def _serve(self) -> None:
        assert self._selector is not None
        while not self._stopping.is_set():
            for key, _ in self._selector.select():
                if key.data == "wake":
                    return
                try:
                    if key.data == "udp":
                        self._serve_udp()
                    elif key.data == "accept":
                        self._accept()
                    else:
                        self._serve_tcp(key.data)
                except Exception as exc:  # a bug here must fail the test, not hang it
                    self.errors.append(exc)

    def _serve_udp(self) -> None:
        assert self._udp is not None
        try:
            wire, peer = self._udp.recvfrom(65535)
        except (BlockingIOError, ConnectionRefusedError):
            return
        query = self._parse(wire)
        if query is None:
            return
        response = self.answer(query)
        if response is None:
            return
        limit = max(query.payload, CLASSIC_UDP_SIZE) if query.edns >= 0 else CLASSIC_UDP_SIZE
        try:
            out = response.to_wire(max_size=limit, want_shuffle=False)
        except dns.exception.TooBig:
            # RFC 2181 §9: too big for UDP, so an empty answer with TC set; the client uses TCP
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC | dns.flags.AA
            out = truncated.to_wire()
        with contextlib.suppress(OSError):
            self._udp.sendto(out, peer)

    def _accept(self) -> None:
        assert self._listener is not None and self._selector is not None
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        sock.settimeout(2.0)  # for sendall; reads happen only when the selector says so
        self._selector.register(sock, selectors.EVENT_READ, _TcpConnection(sock))

    def _serve_tcp(self, conn: _TcpConnection) -> None:
        assert self._selector is not None
        try:
            chunk = conn.sock.recv(65535)
        except OSError:
            chunk = b""
        if not chunk:
            self._selector.unregister(conn.sock)
            conn.sock.close()
            return
        conn.buffer += chunk
        while len(conn.buffer) >= 2:
            (length,) = struct.unpack("!H", conn.buffer[:2])
            if len(conn.buffer) < 2 + length:
                break
            wire = bytes(conn.buffer[2 : 2 + length])
            del conn.buffer[: 2 + length]
            query = self._parse(wire)
            response = self.answer(query) if query is not None else None
            if response is not None:
                out = response.to_wire(want_shuffle=False)
                with contextlib.suppress(OSError):
                    conn.sock.sendall(struct.pack("!H", len(out)) + out)

    @staticmethod
    def _parse(wire: bytes) -> dns.message.Message | None:
        try:
            return dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # garbage is dropped, as a real server may do

    # ------------------------------------------------------------------ answers

    @staticmethod
    def _matches(
        questions: set[tuple[dns.name.Name, dns.rdatatype.RdataType | None]],
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
    ) -> bool:
        return (name, None) in questions or (name, rdtype) in questions

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response to ``query`` from the table, or ``None`` to stay silent."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        self.queries.append(
            (name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(rdtype))
        )
        if self._matches(self._silent, name, rdtype):
            return None
        if self._matches(self._servfail, name, rdtype):
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        if question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        for _ in range(MAX_CNAME_CHAIN):
            node = self._zone.get(name)
            if node is None:
                # RFC 6604 §3: the rcode speaks of the last name in the CNAME chain
                response.set_rcode(dns.rcode.NXDOMAIN)
                break
            if rdtype == dns.rdatatype.ANY:
                response.answer.extend(node.values())
                break
            if rdtype in node:
                response.answer.append(node[rdtype])
                break
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None:
                break  # NODATA: the name exists, the type does not
            response.answer.append(cname)
            name = cname[0].target
        return response
