"""What a packet capture becomes: TCP streams of ordered byte chunks, per side.

These types are the boundary between reading captures (``conformance.capture``:
pcap/pcapng frames, link layers, IP, TCP reassembly, protocol detection) and what
is built on the streams (``conformance.replay``: scenarios, replay, diff). The
reader never interprets mail protocols beyond detecting which one a stream
speaks; the replay side never looks at packets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Chunk", "Direction", "Endpoint", "Gap", "TcpStream"]

Direction = Literal["client", "server"]


@dataclass(frozen=True)
class Endpoint:
    """One end of a TCP connection, as the capture shows it (IPv4 or IPv6 text form)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Chunk:
    """Contiguous bytes one side sent, before the other side sent anything.

    Consecutive segments in the same direction are joined into one chunk; a chunk
    ends where the other side's bytes begin (in capture order) or at a gap.

    Attributes:
        direction: who sent the bytes.
        data: the payload, reassembled in sequence order (retransmissions and
            overlaps resolved: each byte of the stream appears once).
        frame: the capture's 1-based frame number of the first segment carrying
            these bytes (what Wireshark shows as "No.").
        time: that frame's timestamp (seconds since the epoch, float).
        last_frame: frame number of the last segment that added bytes to the chunk.
    """

    direction: Direction
    data: bytes
    frame: int
    time: float
    last_frame: int


@dataclass(frozen=True)
class Gap:
    """Bytes of one direction that the capture never saw.

    Attributes:
        direction: whose bytes are missing.
        frame: frame number of the first segment after the hole.
        missing: how many bytes are missing (from the sequence numbers).
        before_chunk: index into :attr:`TcpStream.chunks` of the first chunk after
            the hole (``len(chunks)`` if nothing of that direction came after it).
    """

    direction: Direction
    frame: int
    missing: int
    before_chunk: int


@dataclass
class TcpStream:
    """One TCP connection from a capture.

    Attributes:
        index: 0-based, in order of the connection's first frame in the capture.
        client: the side that sent the SYN (or, with no SYN in the capture, the
            side whose port is not a well-known mail port; failing that, the
            higher port).
        server: the other side.
        chunks: the bytes of both sides in capture order.
        gaps: holes in either direction; a stream with gaps is flagged, never
            silently joined across the hole.
        cut_at_start: the capture has no SYN for this connection (it began before
            the capture); the first bytes may be mid-dialogue.
        cut_at_end: no FIN or RST from either side (the capture ended first).
        reset: a RST ended the connection.
        protocol: ``"smtp"``, ``"pop3"`` or ``"imap"`` when detected (by server
            port, then by the server's greeting), else ``None``.
        first_frame: the frame number of the connection's first segment.
        tls: either side's first bytes are a TLS record (implicit TLS, as on
            ports 465, 993 and 995): the chunks are encrypted.
    """

    index: int
    client: Endpoint
    server: Endpoint
    chunks: list[Chunk] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    cut_at_start: bool = False
    cut_at_end: bool = False
    reset: bool = False
    protocol: str | None = None
    first_frame: int = 0
    tls: bool = False

    @property
    def flagged(self) -> bool:
        """The stream is incomplete: a gap, or cut at either end of the capture."""
        return bool(self.gaps) or self.cut_at_start or self.cut_at_end

    def sent(self, direction: Direction) -> bytes:
        """All bytes one side sent, joined (across gaps too: for detection only)."""
        return b"".join(c.data for c in self.chunks if c.direction == direction)
