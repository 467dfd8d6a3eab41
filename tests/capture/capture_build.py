"""Synthetic captures for the capture tests: scapy builds the packets, small writers the files."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

T0 = 1_790_000_000.0

CLIENT = ("10.0.0.1", 40000)
SERVER = ("10.0.0.2", 25)


class Conn:
    """One TCP connection's segments, with sequence numbers kept for both sides.

    Side 0 is the client, 1 the server. Methods return scapy IP/IPv6 packets
    and advance the sender's sequence number unless ``seq`` is given.
    """

    def __init__(
        self,
        client: tuple[str, int] = CLIENT,
        server: tuple[str, int] = SERVER,
        isn: tuple[int, int] = (1000, 5000),
    ) -> None:
        self.ends = (client, server)
        self.seq = list(isn)

    def _ip(self, d: int) -> Packet:
        src, dst = self.ends[d][0], self.ends[1 - d][0]
        return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)

    def seg(
        self, d: int, data: bytes = b"", flags: str = "PA", *, seq: int | None = None
    ) -> Packet:
        """A segment from side ``d``; ``seq`` given: sent at that number, nothing advanced."""
        use = self.seq[d] if seq is None else seq
        tcp = TCP(
            sport=self.ends[d][1],
            dport=self.ends[1 - d][1],
            seq=use & 0xFFFFFFFF,
            ack=self.seq[1 - d] & 0xFFFFFFFF if "A" in flags else 0,
            flags=flags,
        )
        pkt = self._ip(d) / tcp
        if data:
            pkt = pkt / Raw(data)
        if seq is None:
            self.seq[d] = (self.seq[d] + len(data) + ("S" in flags) + ("F" in flags)) & 0xFFFFFFFF
        return pkt

    def handshake(self) -> list[Packet]:
        return [self.seg(0, flags="S"), self.seg(1, flags="SA"), self.seg(0, flags="A")]

    def close(self) -> list[Packet]:
        return [self.seg(0, flags="FA"), self.seg(1, flags="FA"), self.seg(0, flags="A")]

    def dialogue(self, *lines: bytes) -> list[Packet]:
        """Alternating server, client, server, ... segments, one per line."""
        return [self.seg(1 - i % 2, line) for i, line in enumerate(lines)]


SMTP_LINES = (
    b"220 mx.example.test ESMTP\r\n",
    b"EHLO client.test\r\n",
    b"250-mx.example.test\r\n250 PIPELINING\r\n",
    b"QUIT\r\n",
    b"221 bye\r\n",
)


def smtp_session(conn: Conn | None = None) -> list[Packet]:
    conn = conn or Conn()
    return conn.handshake() + conn.dialogue(*SMTP_LINES) + conn.close()


# Link layers ---------------------------------------------------------------

LINKTYPES = {
    "eth": 1,
    "vlan": 1,
    "qinq": 1,
    "null-le": 0,
    "null-be": 0,
    "loop": 108,
    "raw": 101,
    "ipv4": 228,
    "ipv6": 229,
    "sll": 113,
    "sll2": 276,
}


def ether() -> Packet:
    """An Ethernet header with both addresses given: without them scapy would look
    the destination up on the network (ARP, neighbour discovery)."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def frame(pkt: Packet, link: str) -> bytes:
    """The bytes of an IP packet wrapped in a link layer named as in :data:`LINKTYPES`."""
    v6 = isinstance(pkt, IPv6)
    ethertype = 0x86DD if v6 else 0x0800
    if link == "eth":
        return bytes(ether() / pkt)
    if link == "vlan":
        return bytes(ether() / Dot1Q(vlan=7) / pkt)
    if link == "qinq":
        return bytes(ether() / Dot1AD(vlan=100) / Dot1Q(vlan=7) / pkt)
    if link in ("null-le", "null-be", "loop"):
        family = 30 if v6 else 2  # macOS's AF_INET6
        order = "<" if link == "null-le" else ">"
        return struct.pack(order + "I", family) + bytes(pkt)
    if link in ("raw", "ipv4", "ipv6"):
        return bytes(pkt)
    if link == "sll":
        return bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, proto=ethertype) / pkt)
    if link == "sll2":
        return bytes(CookedLinuxV2(proto=ethertype, lladdrtype=1, lladdrlen=6) / pkt)
    raise ValueError(link)


# Files ---------------------------------------------------------------------


def pcap_bytes(frames: Iterable[bytes], linktype: int = 1, *, big_endian: bool = False) -> bytes:
    """A pcap file (microsecond timestamps, frame i at T0 + i ms)."""
    e = ">" if big_endian else "<"
    out = [struct.pack(e + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)]
    for i, data in enumerate(frames):
        usec = i * 1000
        out.append(
            struct.pack(e + "IIII", int(T0) + usec // 10**6, usec % 10**6, len(data), len(data))
        )
        out.append(data)
    return b"".join(out)


def write_pcap(path: Path, packets: Sequence[Packet], link: str = "eth") -> Path:
    path.write_bytes(pcap_bytes((frame(p, link) for p in packets), LINKTYPES[link]))
    return path


def _block(kind: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def pcapng_bytes(interfaces: Sequence[int], frames: Iterable[tuple[int, bytes]]) -> bytes:
    """A pcapng file: one section, an IDB per link type given, EPBs of (interface, bytes)."""
    out = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    out += [_block(1, struct.pack("<HHI", linktype, 0, 262144)) for linktype in interfaces]
    for i, (interface, data) in enumerate(frames):
        ts = int(T0 * 10**6) + i * 1000
        head = struct.pack("<IIIII", interface, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
        out.append(_block(6, head + data))
    # Interface statistics at the end, as dumpcap writes them.
    out.append(_block(5, struct.pack("<III", 0, 0, 0)))
    return b"".join(out)
