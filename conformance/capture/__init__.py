"""Packet captures (pcap, pcapng) read into TCP streams of mail sessions."""

from __future__ import annotations

import os

from conformance.capture.detect import detect_protocol, looks_like_tls
from conformance.capture.errors import CaptureError
from conformance.capture.frames import tcp_segments
from conformance.capture.model import Chunk, Direction, Endpoint, Gap, TcpStream
from conformance.capture.reassembly import reassemble

__all__ = [
    "CaptureError",
    "Chunk",
    "Direction",
    "Endpoint",
    "Gap",
    "TcpStream",
    "detect_protocol",
    "looks_like_tls",
    "read_streams",
]


def read_streams(path: str | os.PathLike[str]) -> list[TcpStream]:
    """Read a pcap or pcapng file into its TCP streams.

    Args:
        path: the capture; pcap or pcapng is told by the magic number.

    Returns:
        Every TCP connection in the capture, in order of its first frame, with
        ``protocol`` and ``tls`` set by :func:`detect_protocol` and
        :func:`looks_like_tls`.

    Raises:
        CaptureError: the file is not a capture, is truncated, or uses a link
            type this reader does not know.
    """
    streams = reassemble(tcp_segments(path))
    for stream in streams:
        stream.protocol = detect_protocol(stream)
        stream.tls = looks_like_tls(stream)
    return streams
