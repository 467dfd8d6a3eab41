"""Our own sessions written as a pcap file (``mailharness run --capture``).

Theory of operation. :class:`CaptureRecorder` is a byte tap for
:class:`~conformance.transport.Channel` (installed with
:data:`~conformance.transport.CHANNEL_TAP`): every channel reports when it
connected (its real local and remote address), the cleartext bytes it sent
and received, when TLS began, and when either side closed. :func:`write_pcap`
then synthesises what a packet capture on the wire would have shown: for each
connection a TCP three-way handshake, the bytes as segments of at most
:data:`MSS` octets with consistent sequence and acknowledgement numbers, and
FIN/ACK from each side, framed as Ethernet + IPv4 (or IPv6) with valid
checksums, in the classic pcap format (microsecond timestamps, link type
Ethernet) that Wireshark, tcpdump and ``mailharness pcap2yaml`` read.

Only cleartext is recorded. Once a connection starts TLS (STARTTLS/STLS, or
implicit TLS from the start) no more payload is written for it: the recorded
stream carries the cleartext up to the upgrade, then nothing until its FIN,
as if the capture could not see inside the TLS records (which it could not
decrypt either). Nothing is recorded in place of the encrypted bytes, so a
reader never mistakes them for protocol data.
"""

from __future__ import annotations

import ipaddress
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["MSS", "CaptureRecorder", "Connection", "Event", "write_pcap"]

MSS = 1460  # payload octets per synthesised segment (Ethernet MTU 1500 - IPv4 - TCP)
_LINKTYPE_ETHERNET = 1
_SNAPLEN = 262144
_CLIENT_MAC = bytes.fromhex("020000000001")
_SERVER_MAC = bytes.fromhex("020000000002")
_FIN, _SYN, _PSH, _ACK = 0x01, 0x02, 0x08, 0x10

EventKind = Literal["data", "tls", "close"]
Side = Literal["C", "S"]


@dataclass(frozen=True)
class Event:
    """Something on one connection: bytes sent by a side, TLS began, or a side closed."""

    time: float
    kind: EventKind
    side: Side = "C"
    data: bytes = b""


@dataclass
class Connection:
    """One recorded TCP connection: its ends and what happened on it, in order."""

    client: tuple[str, int]
    server: tuple[str, int]
    opened: float
    events: list[Event] = field(default_factory=list)
    tls: bool = False


class CaptureRecorder:
    """Collects the cleartext of every channel while installed as the channel tap.

    Thread-safe: channels of several event loops may report at once.
    """

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self._by_key: dict[int, Connection] = {}
        self._lock = threading.Lock()

    def opened(self, key: object, local: tuple[str, int], peer: tuple[str, int], tls: bool) -> None:
        conn = Connection(client=local[:2], server=peer[:2], opened=time.time(), tls=tls)
        with self._lock:
            self.connections.append(conn)
            self._by_key[id(key)] = conn

    def _event(self, key: object, event: Event) -> None:
        with self._lock:
            conn = self._by_key.get(id(key))
            if conn is None:
                return
            if event.kind == "data" and conn.tls:
                return
            if event.kind == "tls":
                conn.tls = True
            conn.events.append(event)
            if event.kind == "close" and event.side == "C":
                del self._by_key[id(key)]

    def data(self, key: object, side: Side, data: bytes) -> None:
        if data:
            self._event(key, Event(time.time(), "data", side, bytes(data)))

    def tls_started(self, key: object) -> None:
        self._event(key, Event(time.time(), "tls"))

    def closed(self, key: object, side: Side) -> None:
        self._event(key, Event(time.time(), "close", side))

    def write(self, path: Path) -> int:
        """Write everything recorded so far as a pcap file; the number of connections."""
        with self._lock:
            conns = list(self.connections)
        write_pcap(path, conns)
        return len(conns)


# -- packets -------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class _Packets:
    """Frames of one connection, built in order (seq/ack kept per side)."""

    def __init__(self, conn: Connection, ip_id: list[int]) -> None:
        self.conn = conn
        self.src = ipaddress.ip_address(conn.client[0])
        self.dst = ipaddress.ip_address(conn.server[0])
        self.v6 = self.src.version == 6
        if self.dst.version != self.src.version:  # a v4-mapped peer: write both as v6
            self.src = ipaddress.IPv6Address(f"::ffff:{self.src}") if not self.v6 else self.src
            self.dst = (
                ipaddress.IPv6Address(f"::ffff:{self.dst}") if self.dst.version == 4 else self.dst
            )
            self.v6 = True
        self.seq = {"C": 0x10000000, "S": 0x20000000}  # next sequence number of each side
        self.ip_id = ip_id

    def segment(self, side: Side, flags: int, payload: bytes = b"") -> bytes:
        other: Side = "S" if side == "C" else "C"
        sport = self.conn.client[1] if side == "C" else self.conn.server[1]
        dport = self.conn.server[1] if side == "C" else self.conn.client[1]
        src, dst = (self.src, self.dst) if side == "C" else (self.dst, self.src)
        ack = self.seq[other] if flags & _ACK else 0
        header = struct.pack(
            "!HHIIBBHHH", sport, dport, self.seq[side], ack, 5 << 4, flags, 65535, 0, 0
        )
        tcp_len = len(header) + len(payload)
        if self.v6:
            pseudo = src.packed + dst.packed + struct.pack("!I3xB", tcp_len, 6)
        else:
            pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 6, tcp_len)
        csum = _checksum(pseudo + header + payload)
        tcp = header[:16] + struct.pack("!H", csum) + header[18:] + payload
        self.seq[side] = (self.seq[side] + len(payload) + (1 if flags & (_SYN | _FIN) else 0)) & (
            0xFFFFFFFF
        )
        if self.v6:
            ip = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + src.packed + dst.packed
            ethertype = 0x86DD
        else:
            self.ip_id[0] = (self.ip_id[0] + 1) & 0xFFFF
            head = struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0,
                20 + len(tcp),
                self.ip_id[0],
                0x4000,
                64,
                6,
                0,
                src.packed,
                dst.packed,
            )
            ip = head[:10] + struct.pack("!H", _checksum(head)) + head[12:]
            ethertype = 0x0800
        macs = (_SERVER_MAC + _CLIENT_MAC) if side == "C" else (_CLIENT_MAC + _SERVER_MAC)
        return macs + struct.pack("!H", ethertype) + ip + tcp


def _frames(conn: Connection, ip_id: list[int]) -> list[tuple[float, bytes]]:
    pk = _Packets(conn, ip_id)
    t = conn.opened
    out = [
        (t, pk.segment("C", _SYN)),
        (t, pk.segment("S", _SYN | _ACK)),
        (t, pk.segment("C", _ACK)),
    ]
    closed: list[Side] = []  # sides in the order they sent FIN
    last = t
    for ev in conn.events:
        last = max(last, ev.time)
        if ev.kind == "data" and ev.side not in closed:
            for pos in range(0, len(ev.data), MSS):
                out.append((ev.time, pk.segment(ev.side, _ACK | _PSH, ev.data[pos : pos + MSS])))
        elif ev.kind == "close" and ev.side not in closed:
            closed.append(ev.side)
            out.append((ev.time, pk.segment(ev.side, _FIN | _ACK)))
    sides: tuple[Side, Side] = ("C", "S")
    for side in sides:  # a side not seen closing: closed when the recording ended
        if side not in closed:
            closed.append(side)
            out.append((last, pk.segment(side, _FIN | _ACK)))
    out.append((last, pk.segment(closed[0], _ACK)))  # the first to close acks the last FIN
    return out


def write_pcap(path: Path, connections: Iterable[Connection]) -> None:
    """Write the connections as one classic pcap file, frames in time order."""
    frames: list[tuple[float, int, bytes]] = []
    ip_id = [0]
    order = 0
    for conn in sorted(connections, key=lambda c: c.opened):
        for t, frame in _frames(conn, ip_id):
            frames.append((t, order, frame))
            order += 1
    frames.sort(key=lambda f: (f[0], f[1]))
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, _SNAPLEN, _LINKTYPE_ETHERNET))
    for t, _, frame in frames:
        sec = int(t)
        usec = min(round((t - sec) * 1_000_000), 999_999)
        out += struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))
