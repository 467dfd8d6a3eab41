"""Frames of a pcap or pcapng file, cut down to the TCP segments in them.

Theory of operation
-------------------
scapy's raw readers (``RawPcapReader``, ``RawPcapNgReader``) do the file
formats: headers, byte order, pcapng blocks and interfaces. They hand back each
frame as bytes plus its metadata. Building scapy packet objects per frame would
cost tens of microseconds each, so the headers below TCP are read here by hand,
with ``struct`` and indexing on the raw bytes, and only as far as needed: the
link layer to find IP, IP to find TCP, TCP for ports, sequence numbers, flags
and the payload.

* Link types: ``DLT_NULL`` (0; the BSD loopback header, a 4-byte address
  family in the byte order of the machine that captured it, so both are
  accepted), ``DLT_EN10MB`` (1; 802.1Q and 802.1ad VLAN tags, stacked or not),
  ``LINKTYPE_RAW`` (101), ``DLT_LOOP`` (108; the family in network order),
  ``LINUX_SLL`` (113), ``LINKTYPE_IPV4`` (228), ``LINKTYPE_IPV6`` (229) and
  ``LINUX_SLL2`` (276). Any other link type is a :class:`CaptureError`.
* IPv4: the header length comes from IHL and the payload end from the total
  length (Ethernet pads short frames; the padding is not payload). Fragments
  are skipped, first ones included: TCP carried in IP fragments is not
  reassembled, and its bytes show up as a gap in the stream.
* IPv6: hop-by-hop, routing, destination options and AH extension headers are
  walked; a fragment header means the packet is skipped, as for IPv4.
* A frame cut short by the capture's snapshot length yields the payload bytes
  it has; the rest of the segment is missing, which reassembly reports as a gap.
* Frames that are not TCP over IP, or too short for their own headers, are
  skipped silently: captures are full of ARP, DNS and the like.

scapy does not tell a truncated file from a clean end (both end its iteration),
so the reader checks it: a pcap file's records must add up to its size, and a
pcapng file must end on a block boundary with no packet block left unread.
scapy's own warnings are muted while reading: each problem it warns about ends
here in a CaptureError that names the file, or in a skipped frame.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

from scapy.error import Scapy_Exception
from scapy.utils import RawPcapReader

from conformance.capture.errors import CaptureError

__all__ = ["LINK_TYPES", "Frame", "Segment", "read_frames", "tcp_segments"]

#: Link types this reader understands, by number, with their libpcap names.
LINK_TYPES: dict[int, str] = {
    0: "DLT_NULL",
    1: "DLT_EN10MB",
    101: "LINKTYPE_RAW",
    108: "DLT_LOOP",
    113: "LINUX_SLL",
    228: "LINKTYPE_IPV4",
    229: "LINKTYPE_IPV6",
    276: "LINUX_SLL2",
}

#: (frame number, timestamp, link type, frame bytes)
Frame = tuple[int, float, int, bytes]

#: (frame number, timestamp, source address, source port, destination address,
#: destination port, sequence number, acknowledgement number, TCP flags, payload).
#: Addresses are the packed 4 or 16 bytes.
Segment = tuple[int, float, bytes, int, bytes, int, int, int, int, bytes]

_PCAP_MAGICS = {b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1"}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"
# Blocks scapy reads rather than skips: packet, simple packet, enhanced packet,
# and a section header (which may also switch the byte order).
_PCAPNG_FRAME_BLOCKS = frozenset({2, 3, 6, 0x0A0D0D0A})
_PCAP_FILE_HEADER = 24
_PCAP_RECORD_HEADER = 16
# Larger than any snapshot length in use (libpcap's maximum is 262144); scapy
# reads at most 4 * 65535 bytes of a record and skips the rest.
_SNAP = 262140

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN = frozenset({0x8100, 0x88A8, 0x9100})
# AF_INET6 differs between systems: Linux 10, NetBSD/OpenBSD 24, FreeBSD 28,
# macOS 30. AF_INET is 2 everywhere.
_AF_INET6 = frozenset({10, 24, 28, 30})
_IPV6_SKIPPABLE = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_IPV6_AH = 51
_TCP = 6

_TCP_HEADER = struct.Struct("!HHIIBB")


def read_frames(path: str | os.PathLike[str]) -> Iterator[Frame]:
    """Yield every frame of a pcap or pcapng file, in file order.

    The format is told by the magic number, not the file name.

    Raises:
        CaptureError: not a capture, a truncated header or record, or a link type
            this reader does not know.
    """
    try:
        f = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise CaptureError(path, f"cannot open: {exc.strerror or exc}") from exc
    _SCAPY_LOG.addFilter(_QUIET)
    try:
        with f:
            yield from _frames(path, f)
    finally:
        _SCAPY_LOG.removeFilter(_QUIET)


def _frames(path: str | os.PathLike[str], f: BinaryIO) -> Iterator[Frame]:
    magic = f.read(4)
    f.seek(0)
    if magic in _PCAP_MAGICS:
        yield from _pcap_frames(path, f)
    elif magic == _PCAPNG_MAGIC:
        yield from _pcapng_frames(path, f)
    elif magic[:2] == _GZIP_MAGIC:
        raise CaptureError(path, "gzip-compressed; decompress it first (gunzip)")
    elif not magic:
        raise CaptureError(path, "not a capture file: the file is empty")
    else:
        raise CaptureError(
            path, f"not a pcap or pcapng capture file (starts with {magic.hex(' ')})"
        )


class _Quiet(logging.Filter):
    """Drops scapy's reading warnings: each problem it warns about ends in a
    CaptureError or a skipped frame here, with a message that names the file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


_SCAPY_LOG = logging.getLogger("scapy.runtime")
_QUIET = _Quiet()


def _unsupported(path: str | os.PathLike[str], linktype: int, frame: int | None) -> CaptureError:
    known = ", ".join(f"{n} ({name})" for n, name in LINK_TYPES.items())
    return CaptureError(path, f"unsupported link type {linktype}; supported: {known}", frame=frame)


def _open_reader(path: str | os.PathLike[str], f: BinaryIO, kind: str) -> Any:
    # scapy's metaclass takes an open file too (its __init__ says str) and picks
    # RawPcapReader or RawPcapNgReader from the magic, which it reads again.
    opener: Any = RawPcapReader
    try:
        return opener(f)
    except Scapy_Exception as exc:
        raise CaptureError(path, f"damaged or truncated {kind} file header ({exc})") from exc


def _pcap_frames(path: str | os.PathLike[str], f: BinaryIO) -> Iterator[Frame]:
    header = f.read(_PCAP_FILE_HEADER)
    if len(header) < _PCAP_FILE_HEADER:
        raise CaptureError(
            path, f"truncated pcap file header ({len(header)} of {_PCAP_FILE_HEADER} bytes)"
        )
    f.seek(0)
    reader = _open_reader(path, f, "pcap")
    linktype: int = reader.linktype
    if linktype not in LINK_TYPES:
        raise _unsupported(path, linktype, None)
    scale = 1e-9 if reader.nano else 1e-6
    read = reader._read_packet
    offset = _PCAP_FILE_HEADER
    frame = 0
    while True:
        try:
            data, meta = read(_SNAP)
        except EOFError:
            break
        frame += 1
        caplen = meta.caplen
        if len(data) < caplen and len(data) < _SNAP:
            raise CaptureError(
                path, f"truncated: {len(data)} of {caplen} captured bytes present", frame=frame
            )
        offset += _PCAP_RECORD_HEADER + caplen
        yield frame, meta.sec + meta.usec * scale, linktype, data
    if f.tell() > offset:
        raise CaptureError(path, "truncated: the record header is incomplete", frame=frame + 1)


def _pcapng_frames(path: str | os.PathLike[str], f: BinaryIO) -> Iterator[Frame]:
    reader = _open_reader(path, f, "pcapng")
    read = reader._read_packet
    tell = f.tell
    supported = LINK_TYPES
    end_of_last = tell()
    frame = 0
    last_time = 0.0
    while True:
        try:
            data, meta = read(_SNAP)
        except EOFError:
            break
        frame += 1
        end_of_last = tell()
        linktype = meta.linktype
        if linktype not in supported:
            raise _unsupported(path, linktype, frame)
        if meta.tshigh is not None:  # a Simple Packet Block has no timestamp
            last_time = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
        yield frame, last_time, linktype, data
    _check_pcapng_tail(path, f, end_of_last, frame, reader.endian)


def _check_pcapng_tail(
    path: str | os.PathLike[str], f: BinaryIO, pos: int, frames: int, endian: str
) -> None:
    """Walk the blocks after the last frame: they must end exactly at the end of the file."""
    size = os.fstat(f.fileno()).st_size
    while pos < size:
        f.seek(pos)
        head = f.read(12)
        if len(head) < 12:
            break
        kind, length = struct.unpack(endian + "II", head[:8])
        if length < 12 or length % 4 or pos + length > size:
            break
        if kind in _PCAPNG_FRAME_BLOCKS:
            # scapy stopped before a block it would have read: it found it damaged.
            raise CaptureError(path, f"damaged pcapng block after frame {frames}")
        pos += length
    if pos != size:
        raise CaptureError(
            path, f"truncated or damaged after frame {frames}: the file ends inside a block"
        )


def tcp_segments(path: str | os.PathLike[str]) -> Iterator[Segment]:
    """Yield the TCP segments of a capture, in capture order; other frames are skipped.

    Raises:
        CaptureError: as :func:`read_frames`.
    """
    unpack_tcp = _TCP_HEADER.unpack_from
    vlan = _ETH_VLAN
    for frame, ts, linktype, data in read_frames(path):
        try:
            # Link layer: find the network protocol (an EtherType) and where it starts.
            if linktype == 1:
                et = data[12] << 8 | data[13]
                off = 14
            elif linktype == 113:
                et = data[14] << 8 | data[15]
                off = 16
            elif linktype == 276:
                et = data[0] << 8 | data[1]
                off = 20
            elif linktype == 0 or linktype == 108:
                if linktype == 108 or (data[0] == 0 and data[1] == 0):
                    family = int.from_bytes(data[0:4], "big")
                else:
                    family = int.from_bytes(data[0:4], "little")
                et = _ETH_IPV4 if family == 2 else _ETH_IPV6 if family in _AF_INET6 else 0
                off = 4
            elif linktype == 228:
                et, off = _ETH_IPV4, 0
            elif linktype == 229:
                et, off = _ETH_IPV6, 0
            else:  # 101, raw IP: the version says which
                version = data[0] >> 4
                et = _ETH_IPV4 if version == 4 else _ETH_IPV6 if version == 6 else 0
                off = 0
            while et in vlan:  # 802.1Q / 802.1ad tags: 2 bytes TCI, then the next type
                et = data[off + 2] << 8 | data[off + 3]
                off += 4

            # Network layer: addresses, where TCP starts and where the payload ends.
            if et == _ETH_IPV4:
                b0 = data[off]
                if not 0x45 <= b0 <= 0x4F or data[off + 9] != _TCP:  # version 4, IHL >= 5
                    continue
                if data[off + 6] & 0x3F or data[off + 7]:  # MF flag or a fragment offset
                    continue
                total = data[off + 2] << 8 | data[off + 3]
                end = off + total if total else len(data)  # 0: TSO, length unknown
                src = data[off + 12 : off + 16]
                dst = data[off + 16 : off + 20]
                tcp = off + (b0 & 0x0F) * 4
            elif et == _ETH_IPV6:
                if data[off] >> 4 != 6:
                    continue
                nxt = data[off + 6]
                plen = data[off + 4] << 8 | data[off + 5]
                src = data[off + 8 : off + 24]
                dst = data[off + 24 : off + 40]
                tcp = off + 40
                end = tcp + plen if plen else len(data)  # 0: a jumbogram
                while nxt != _TCP:
                    if nxt in _IPV6_SKIPPABLE:
                        nxt, tcp = data[tcp], tcp + (data[tcp + 1] + 1) * 8
                    elif nxt == _IPV6_AH:
                        nxt, tcp = data[tcp], tcp + (data[tcp + 1] + 2) * 4
                    else:  # a fragment header, ESP, no next header, ...
                        break
                if nxt != _TCP:
                    continue
            else:
                continue

            sport, dport, seq, ack, doff, flags = unpack_tcp(data, tcp)
            if doff < 0x50:  # a data offset under 5 words: not a TCP header
                continue
            start = tcp + (doff >> 4) * 4
        except (IndexError, struct.error):
            continue  # too short for its own headers
        payload = data[start:end] if end > start else b""
        yield frame, ts, src, sport, dst, dport, seq, ack, flags, payload
