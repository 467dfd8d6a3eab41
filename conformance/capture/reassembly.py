"""TCP segments in capture order, put back together into streams of chunks.

Theory of operation
-------------------
A connection is found by its 4-tuple, in either direction (the table holds
both orientations). Each direction (a *half*) places its payload by sequence
number, relative to that side's first byte: the SYN's sequence number plus one,
or, with no SYN in the capture, the first segment seen (the stream is then
``cut_at_start``). Relative positions are unwrapped from 32 bits around the
position expected next, so sequence numbers that wrap past 2**32 continue
the stream.

* **In order** (the common case, kept fast): the segment starts where the half
  expects; its bytes are delivered at once.
* **Retransmission**: bytes before the expected position were delivered
  already and are dropped.
* **Overlap**: where two segments carry different bytes for the same stream
  position, the bytes received *first* win (as Wireshark's default, and as
  a receiver that has already taken the first copy would see it). The part of
  a later segment that covers bytes held or delivered is dropped.
* **Out of order**: a segment beyond the expected position is held until the
  hole before it fills, then delivered with it.
* **Gap**: a hole that never fills. It is decided when the peer acknowledges
  bytes inside the hole (the peer got them, so the capture missed them and no
  retransmission will come), else at the end of the connection. The hole
  becomes a :class:`~conformance.capture.model.Gap` and the held bytes after
  it are delivered as a new chunk: a chunk never spans a gap. A FIN beyond the
  last byte seen is a gap too (bytes missed just before the close).

Chunks of both directions are listed in *delivery order*: the capture order of
the frame that made their bytes deliverable. A segment that arrives early
is delivered when the segment that fills the hole before it arrives, so it
joins the chunk at that point; a chunk's ``frame`` and ``time`` are those of
the segment carrying its first byte, and ``last_frame`` is the highest frame
number among the segments that added bytes to it.

Client and server: the sender of a SYN without ACK is the client; the sender
of a SYN+ACK is the server. With neither, the side on a well-known mail port is
the server; failing that, the side with the higher port is the client (and on
equal ports, the sender of the first segment).

A SYN without ACK on a known 4-tuple starts a new stream unless it repeats the
SYN that opened the current one (same side, same sequence number; with the SYN
itself missed, the one the SYN+ACK acknowledged): after a FIN or RST that is
the usual port reuse, and without one the old connection ended unseen.
"""

from __future__ import annotations

import bisect
import socket
from collections.abc import Iterable

from conformance.capture.frames import Segment
from conformance.capture.model import Chunk, Direction, Endpoint, Gap, TcpStream

__all__ = ["MAIL_PORTS", "Reassembler", "reassemble"]

#: Ports whose side is taken for the server when the capture shows no SYN.
MAIL_PORTS = frozenset({25, 465, 587, 2525, 110, 995, 143, 993})

_FIN = 0x01
_SYN = 0x02
_RST = 0x04
_ACK = 0x10
_MASK = 0xFFFFFFFF
_HALF = 0x80000000
_DIRECTIONS: tuple[Direction, Direction] = ("client", "server")


class _Half:
    """One direction of a connection: where its bytes are and what is held back."""

    __slots__ = ("base", "fin_frame", "fin_rel", "isn", "next", "pending")

    def __init__(self) -> None:
        self.base: int | None = None  # sequence number of relative position 0
        self.isn: int | None = None  # the SYN's sequence number, if the SYN was seen
        self.next = 0  # relative position of the next byte to deliver
        # Held segments beyond a hole: sorted, non-overlapping (start, data, frame, time).
        self.pending: list[tuple[int, bytes, int, float]] = []
        self.fin_rel: int | None = None  # relative position of the FIN
        self.fin_frame = 0

    def rel(self, seq: int) -> int:
        """A sequence number as a position in this half, unwrapped around :attr:`next`."""
        assert self.base is not None
        diff = (seq - self.base - self.next) & _MASK
        if diff >= _HALF:
            diff -= 1 << 32
        return self.next + diff


class _GapRecord:
    """A :class:`Gap` whose chunk index is known only when that side's next chunk opens."""

    __slots__ = ("before_chunk", "direction", "frame", "missing")

    def __init__(self, direction: int, frame: int, missing: int) -> None:
        self.direction = direction
        self.frame = frame
        self.missing = missing
        self.before_chunk = -1  # not known yet


class _Conn:
    """A connection being reassembled; becomes a :class:`TcpStream` at the end."""

    __slots__ = (
        "addrs",
        "chunks",
        "cut_at_start",
        "fin",
        "first_frame",
        "gaps",
        "halves",
        "open_dir",
        "open_frame",
        "open_last",
        "open_parts",
        "open_time",
        "reset",
        "unresolved",
    )

    def __init__(
        self, client: tuple[bytes, int], server: tuple[bytes, int], frame: int, cut: bool
    ) -> None:
        self.addrs = (client, server)
        self.halves = (_Half(), _Half())
        self.chunks: list[Chunk] = []
        self.gaps: list[_GapRecord] = []
        self.unresolved = False
        self.open_dir = -1  # direction of the chunk being built, -1: none
        self.open_parts: list[bytes] = []
        self.open_frame = 0
        self.open_time = 0.0
        self.open_last = 0
        self.first_frame = frame
        self.cut_at_start = cut
        self.fin = False
        self.reset = False

    # Chunks --------------------------------------------------------------

    def deliver(self, d: int, data: bytes, frame: int, time: float) -> None:
        if self.open_dir == d:
            self.open_parts.append(data)
            if frame > self.open_last:
                self.open_last = frame
            return
        self.close_chunk()
        if self.unresolved:
            self._resolve(d, len(self.chunks))
        self.open_dir = d
        self.open_parts = [data]
        self.open_frame = frame
        self.open_time = time
        self.open_last = frame

    def close_chunk(self) -> None:
        if self.open_dir >= 0:
            data = self.open_parts[0] if len(self.open_parts) == 1 else b"".join(self.open_parts)
            self.chunks.append(
                Chunk(
                    _DIRECTIONS[self.open_dir],
                    data,
                    self.open_frame,
                    self.open_time,
                    self.open_last,
                )
            )
            self.open_dir = -1
            self.open_parts = []

    def _resolve(self, d: int | None, index: int) -> None:
        left = False
        for gap in self.gaps:
            if gap.before_chunk < 0:
                if d is None or gap.direction == d:
                    gap.before_chunk = index
                else:
                    left = True
        self.unresolved = left

    # Bytes of one half ---------------------------------------------------

    def segment(
        self, d: int, half: _Half, start: int, data: bytes, frame: int, time: float
    ) -> None:
        """Place bytes at a relative position (not the fast in-order case)."""
        end = start + len(data)
        if end <= half.next:
            return  # a retransmission of delivered bytes
        if start < half.next:
            data = data[half.next - start :]
            start = half.next
        pending = half.pending
        if pending:
            # Keep only the parts not held already: the first-received bytes win.
            pieces: list[tuple[int, bytes, int, float]] = []
            cur = start
            for p_start, p_data, _, _ in pending:
                p_end = p_start + len(p_data)
                if p_end <= cur:
                    continue
                if p_start >= end:
                    break
                if p_start > cur:
                    pieces.append((cur, data[cur - start : p_start - start], frame, time))
                cur = p_end
                if cur >= end:
                    break
            if cur < end:
                pieces.append((cur, data[cur - start :], frame, time))
            for piece in pieces:
                bisect.insort(pending, piece)
        elif start > half.next:
            pending.append((start, data, frame, time))
        else:
            self.deliver(d, data, frame, time)
            half.next = end
            return
        self.drain(d, half)

    def drain(self, d: int, half: _Half) -> None:
        """Deliver held segments that now continue the stream."""
        pending = half.pending
        while pending and pending[0][0] <= half.next:
            p_start, p_data, p_frame, p_time = pending.pop(0)
            p_end = p_start + len(p_data)
            if p_end > half.next:
                self.deliver(d, p_data[half.next - p_start :], p_frame, p_time)
                half.next = p_end

    def skip_hole(self, d: int, half: _Half, upto: int, frame: int) -> None:
        """Give up on the bytes before ``upto``: record a gap, deliver what follows."""
        self.gaps.append(_GapRecord(d, frame, upto - half.next))
        self.unresolved = True
        if self.open_dir == d:
            self.close_chunk()  # a chunk never spans a gap
        half.next = upto
        self.drain(d, half)

    def acked(self, d: int, ack: int) -> None:
        """The side opposite ``d`` acknowledged up to ``ack``: decide holes it proves lost."""
        half = self.halves[d]
        if half.base is not None and half.pending and half.rel(ack) > half.next:
            self.skip_hole(d, half, half.pending[0][0], half.pending[0][2])

    # The end -------------------------------------------------------------

    def finish(self, index: int) -> TcpStream:
        for d, half in enumerate(self.halves):
            while half.pending:
                self.skip_hole(d, half, half.pending[0][0], half.pending[0][2])
            if half.fin_rel is not None and half.fin_rel > half.next:
                self.skip_hole(d, half, half.fin_rel, half.fin_frame)
        self.close_chunk()
        if self.unresolved:
            self._resolve(None, len(self.chunks))
        gaps = [
            Gap(_DIRECTIONS[g.direction], g.frame, g.missing, g.before_chunk) for g in self.gaps
        ]
        (c_addr, c_port), (s_addr, s_port) = self.addrs
        return TcpStream(
            index=index,
            client=Endpoint(_host(c_addr), c_port),
            server=Endpoint(_host(s_addr), s_port),
            chunks=self.chunks,
            gaps=gaps,
            cut_at_start=self.cut_at_start,
            cut_at_end=not (self.fin or self.reset),
            reset=self.reset,
            first_frame=self.first_frame,
        )


def _host(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def _client_is_source(flags: int, sport: int, dport: int) -> bool:
    """Who the client is, from a connection's first segment (see the module docstring)."""
    if flags & _SYN:
        return not flags & _ACK
    s_mail, d_mail = sport in MAIL_PORTS, dport in MAIL_PORTS
    if s_mail != d_mail:
        return d_mail
    return sport >= dport


class Reassembler:
    """Takes segments in capture order (:meth:`add`) and gives the streams (:meth:`finish`)."""

    def __init__(self) -> None:
        # (src, sport, dst, dport) -> (connection, direction of a segment with that tuple)
        self._table: dict[tuple[bytes, int, bytes, int], tuple[_Conn, int]] = {}
        self._conns: list[_Conn] = []

    def add(
        self,
        frame: int,
        time: float,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        payload: bytes,
    ) -> None:
        """Take one TCP segment (see :data:`conformance.capture.frames.Segment`)."""
        entry = self._table.get((src, sport, dst, dport))
        if entry is None:
            entry = self._open(frame, src, sport, dst, dport, flags)
        elif flags & _SYN and not flags & _ACK:
            old, d = entry
            # The client's SYN again (its first byte known from the SYN or the
            # SYN+ACK) is a retransmission; any other SYN opens a new connection.
            if not (d == 0 and old.halves[0].base == (seq + 1) & _MASK):
                entry = self._open(frame, src, sport, dst, dport, flags)
        conn, d = entry
        half = conn.halves[d]

        if flags & _ACK:
            other = conn.halves[1 - d]
            if other.pending:
                conn.acked(1 - d, ack)
            elif other.base is None and not conn.cut_at_start:
                # In a handshake (the SYN or the SYN+ACK seen), the first ACK
                # names the peer's first byte even if the peer's SYN was missed.
                other.base = ack
        if flags & (_SYN | _FIN | _RST):
            if flags & _SYN:
                if half.isn is None:
                    half.isn = seq
                    if half.base is None:
                        half.base = (seq + 1) & _MASK
                seq = (seq + 1) & _MASK  # a SYN's payload (TCP Fast Open) starts after it
            if flags & _RST:
                conn.reset = True
            if flags & _FIN:
                conn.fin = True
                if half.base is None:
                    half.base = seq
                half.fin_rel = half.rel(seq) + len(payload)
                half.fin_frame = frame
        if not payload:
            return
        if half.base is None:
            half.base = seq
        elif (seq - half.base - half.next) & _MASK == 0 and not half.pending:
            conn.deliver(d, payload, frame, time)
            half.next += len(payload)
            return
        conn.segment(d, half, half.rel(seq), payload, frame, time)

    def _open(
        self, frame: int, src: bytes, sport: int, dst: bytes, dport: int, flags: int
    ) -> tuple[_Conn, int]:
        client_is_src = _client_is_source(flags, sport, dport)
        source, dest = (src, sport), (dst, dport)
        # A SYN without ACK opens it cleanly; a SYN+ACK may too (see add()).
        cut = not (flags & _SYN)
        client, server = (source, dest) if client_is_src else (dest, source)
        conn = _Conn(client, server, frame, cut)
        self._conns.append(conn)
        d = 0 if client_is_src else 1
        self._table[(src, sport, dst, dport)] = (conn, d)
        self._table[(dst, dport, src, sport)] = (conn, 1 - d)
        return conn, d

    def finish(self) -> list[TcpStream]:
        """The streams, in order of their first frame."""
        return [conn.finish(i) for i, conn in enumerate(self._conns)]


def reassemble(segments: Iterable[Segment]) -> list[TcpStream]:
    """Streams from segments in capture order (protocol not yet detected)."""
    r = Reassembler()
    add = r.add
    for seg in segments:
        add(*seg)
    return r.finish()
