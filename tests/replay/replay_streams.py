"""Building captured streams by hand for the conversion tests: a dialogue in, a TcpStream out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from conformance.capture import Chunk, Endpoint, Gap, TcpStream
from conformance.replay.convert import Converted, ConvertOptions, convert_streams, write_converted

PORTS = {"smtp": 25, "pop3": 110, "imap": 143}


def stream(
    protocol: str,
    *exchanges: tuple[str, bytes],
    port: int | None = None,
    pause: float = 0.01,
    gaps: list[Gap] | None = None,
    index: int = 0,
) -> TcpStream:
    """A stream from ``("C" | "S", bytes)`` pairs, one frame each, ``pause`` seconds apart."""
    chunks = []
    t = 1_700_000_000.0
    for frame, (side, data) in enumerate(exchanges, start=4):
        chunks.append(Chunk("client" if side == "C" else "server", data, frame, t, frame))
        t += pause
    return TcpStream(
        index=index,
        client=Endpoint("192.0.2.1", 50000 + index),
        server=Endpoint("192.0.2.2", port or PORTS[protocol]),
        chunks=chunks,
        gaps=gaps or [],
        protocol=protocol,
        first_frame=1,
    )


def convert(st: TcpStream, **options: Any) -> Converted:
    (conv,) = convert_streams([st], "sample.pcap", ConvertOptions(**options))
    return conv


def steps(st: TcpStream, **options: Any) -> list[dict[str, Any]]:
    conv = convert(st, **options)
    assert conv.document is not None, conv.skipped
    return list(conv.document["steps"])


def written(st: TcpStream, out: Path, **options: Any) -> dict[str, bytes]:
    """Convert and write; every file written, by name."""
    write_converted([convert(st, **options)], out)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False)
