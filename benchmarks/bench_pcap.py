"""Benchmark: a large pcap read into TCP streams and converted to scenarios, vs scapy.

Generates a pcap of many interleaved SMTP sessions (Ethernet, IPv4, TCP; each
session: handshake, greeting, EHLO, MAIL, RCPT, DATA with a message of
``--message-bytes`` (2-60 KB by default) in 1448-byte segments with an ACK
every two, QUIT, FIN both ways), written with ``struct`` into a temporary
directory, then times:

- ``ours``: :func:`conformance.capture.read_streams` on the whole file (median
  of ``--rounds``), checked against what the generator wrote;
- ``pcap2yaml``: the whole conversion as ``mailharness pcap2yaml`` does it (read,
  every session into a scenario at ``--match``, the YAML and message files
  written to a temporary directory), once; the issue's goal (20 MB/s) is on this;
- ``scapy``: the usual scapy way, ``PcapReader`` building packet objects and
  joining ``TCP`` payloads per 4-tuple (no reordering, no retransmission
  handling), on the first ``--peer-mb`` MB of frames, as MB per second;
- ``tshark``: if installed, ``tshark -r FILE -q -z follow,tcp,raw,0`` (reads
  and dissects the whole file to follow one stream).

    python benchmarks/bench_pcap.py [--size-mb 100] [--rounds 3] [--peer-mb 5]
                                    [--sessions 64] [--message-bytes 2000-60000]
                                    [--pcapng] [--match codes] [--json PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from conformance.capture import read_streams
from conformance.replay.convert import ConvertOptions, convert_streams, write_converted

MSS = 1448
_ETH = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_REC = struct.Struct("<IIII")
_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
# pcapng: a section header block and one Ethernet interface (microsecond timestamps).
_PCAPNG_HEADER = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28) + struct.pack(
    "<IIHHII", 1, 20, 1, 0, 262144, 20
)
_EPB = struct.Struct("<IIIIIII")

FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10


def _body(rng: random.Random, size: int, text: bytes) -> bytes:
    start = rng.randrange(0, len(text) - size)
    head = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: bench\r\n\r\n"
    return head + text[start : start + size] + b"\r\n.\r\n"


def _session(
    rng: random.Random, n: int, text: bytes, sizes: tuple[int, int]
) -> Iterator[tuple[int, int, bytes]]:
    """(direction 0 client / 1 server, flags, payload) for one SMTP session."""
    yield 0, SYN, b""
    yield 1, SYN | ACK, b""
    yield 0, ACK, b""
    yield 1, PSH | ACK, b"220 mx.example.test ESMTP ready\r\n"
    yield 0, PSH | ACK, b"EHLO client%d.example.test\r\n" % n
    yield (
        1,
        PSH | ACK,
        (
            b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n"
            b"250-8BITMIME\r\n250 SMTPUTF8\r\n"
        ),
    )
    yield 0, PSH | ACK, b"MAIL FROM:<sender%d@example.test>\r\n" % n
    yield 1, PSH | ACK, b"250 2.1.0 Ok\r\n"
    yield 0, PSH | ACK, b"RCPT TO:<rcpt%d@example.test>\r\n" % n
    yield 1, PSH | ACK, b"250 2.1.5 Ok\r\n"
    yield 0, PSH | ACK, b"DATA\r\n"
    yield 1, PSH | ACK, b"354 End data with <CR><LF>.<CR><LF>\r\n"
    body = _body(rng, rng.randrange(*sizes), text)
    for i, off in enumerate(range(0, len(body), MSS)):
        yield 0, PSH | ACK, body[off : off + MSS]
        if i % 2:
            yield 1, ACK, b""
    yield 1, PSH | ACK, b"250 2.0.0 Ok: queued as %dABC\r\n" % n
    yield 0, PSH | ACK, b"QUIT\r\n"
    yield 1, PSH | ACK, b"221 2.0.0 Bye\r\n"
    yield 1, FIN | ACK, b""
    yield 0, FIN | ACK, b""
    yield 1, ACK, b""


class _Conn:
    def __init__(self, rng: random.Random, n: int, text: bytes, sizes: tuple[int, int]) -> None:
        self.packets = _session(rng, n, text, sizes)
        self.addr = (
            bytes((10, 1, (n >> 8) & 0xFF, n & 0xFF)),
            bytes((10, 2, 0, 1)),
        )
        self.port = (1024 + n % 60000, 25)
        self.seq = [rng.getrandbits(32), rng.getrandbits(32)]
        self.client_bytes = 0
        self.server_bytes = 0


def _record_pcap(usec: int, frame: bytes) -> bytes:
    head = _REC.pack(1_790_000_000 + usec // 1_000_000, usec % 1_000_000, len(frame), len(frame))
    return head + frame


def _record_pcapng(usec: int, frame: bytes) -> bytes:
    ts = 1_790_000_000_000_000 + usec
    pad = -len(frame) % 4
    length = 32 + len(frame) + pad
    head = _EPB.pack(6, length, 0, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame))
    return head + frame + b"\x00" * pad + struct.pack("<I", length)


def generate(
    path: Path,
    size_mb: float,
    sessions: int,
    *,
    sizes: tuple[int, int] = (2_000, 60_000),
    pcapng: bool = False,
    seed: int = 1,
) -> dict[str, int]:
    """Write the capture; return what it holds (for checking the reader)."""
    rng = random.Random(seed)
    text = b"".join(
        b"line %06d of the message, some words to fill it up\r\n" % i for i in range(40_000)
    )
    target = int(size_mb * 1_000_000)
    header = _PCAPNG_HEADER if pcapng else _PCAP_HEADER
    record = _record_pcapng if pcapng else _record_pcap
    written = len(header)
    frames = started = 0
    active: list[_Conn] = []
    done: list[_Conn] = []
    out: list[bytes] = [header]
    usec = 0
    with open(path, "wb") as f:
        while active or written < target:
            while written < target and len(active) < sessions:
                active.append(_Conn(rng, started, text, sizes))
                started += 1
            if not active:
                break
            conn = active[rng.randrange(len(active))]
            step = next(conn.packets, None)
            if step is None:
                active.remove(conn)
                done.append(conn)
                continue
            d, flags, payload = step
            seq, ack = conn.seq[d], conn.seq[1 - d]
            src, dst = conn.addr[d], conn.addr[1 - d]
            sport, dport = conn.port[d], conn.port[1 - d]
            ip = _IP.pack(0x45, 0, 40 + len(payload), frames & 0xFFFF, 0x4000, 64, 6, 0, src, dst)
            tcp = _TCP.pack(sport, dport, seq, ack if flags & ACK else 0, 0x50, flags, 65535, 0, 0)
            frame = _ETH + ip + tcp + payload
            usec += 7
            out.append(record(usec, frame))
            written += len(out[-1])
            frames += 1
            conn.seq[d] = (seq + len(payload) + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
            if d == 0:
                conn.client_bytes += len(payload)
            else:
                conn.server_bytes += len(payload)
            if len(out) > 4096:
                f.write(b"".join(out))
                out.clear()
        f.write(b"".join(out))
    return {
        "bytes": written,
        "frames": frames,
        "sessions": len(done),
        "client_bytes": sum(c.client_bytes for c in done),
        "server_bytes": sum(c.server_bytes for c in done),
    }


def time_ours(path: Path, expected: dict[str, int]) -> float:
    start = time.perf_counter()
    streams = read_streams(path)
    elapsed = time.perf_counter() - start
    client = sum(len(c.data) for s in streams for c in s.chunks if c.direction == "client")
    server = sum(len(c.data) for s in streams for c in s.chunks if c.direction == "server")
    got = (len(streams), client, server, sum(s.flagged for s in streams))
    want = (expected["sessions"], expected["client_bytes"], expected["server_bytes"], 0)
    if got != want or any(s.protocol != "smtp" for s in streams):
        sys.exit(f"read_streams got (streams, client, server, flagged) {got}, expected {want}")
    return elapsed


def time_convert(path: Path, out_dir: Path, match: str) -> tuple[float, int]:
    """The whole of ``mailharness pcap2yaml``: read, convert every session, write the
    scenarios and message files; (seconds, scenarios written)."""
    start = time.perf_counter()
    converted = convert_streams(read_streams(path), path, ConvertOptions(match=match))  # type: ignore[arg-type]
    written = write_converted(converted, out_dir)
    elapsed = time.perf_counter() - start
    shutil.rmtree(out_dir)
    return elapsed, len(written)


def time_scapy(path: Path, limit_mb: float) -> tuple[float, int]:
    """scapy's own way, on the first ``limit_mb`` of frames: (seconds, bytes of capture read)."""
    from scapy.layers.inet import IP, TCP
    from scapy.utils import PcapReader

    limit = int(limit_mb * 1_000_000)
    streams: dict[tuple[str, int, str, int], list[bytes]] = {}
    consumed = 0
    start = time.perf_counter()
    with PcapReader(str(path)) as reader:  # a PcapNgReader for pcapng, by the magic
        for pkt in reader:
            consumed = reader.f.tell()
            if TCP in pkt:
                ip, tcp = pkt[IP], pkt[TCP]
                a, b = (ip.src, tcp.sport), (ip.dst, tcp.dport)
                key = (*a, *b) if a <= b else (*b, *a)
                payload = bytes(tcp.payload)
                if payload:
                    streams.setdefault(key, []).append(payload)
            if consumed >= limit:
                break
    joined = {k: b"".join(v) for k, v in streams.items()}
    elapsed = time.perf_counter() - start
    assert joined
    return elapsed, consumed


def time_tshark(path: Path) -> float | None:
    tshark = shutil.which("tshark")
    if tshark is None:
        return None
    start = time.perf_counter()
    subprocess.run(
        [tshark, "-n", "-r", str(path), "-q", "-z", "follow,tcp,raw,0"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=float, default=100.0, help="capture size (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of read_streams (median)")
    parser.add_argument(
        "--peer-mb", type=float, default=5.0, help="MB of capture for the scapy peer"
    )
    parser.add_argument("--sessions", type=int, default=64, help="sessions open at once")
    parser.add_argument(
        "--message-bytes",
        default="2000-60000",
        help="range of message sizes, LOW-HIGH (default 2000-60000)",
    )
    parser.add_argument("--pcapng", action="store_true", help="write pcapng instead of pcap")
    parser.add_argument(
        "--match", default="codes", choices=("codes", "text", "exact"), help="for pcap2yaml"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", type=Path, help="write the capture here and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_pcap.") as tmp:
        name = "smtp-sessions.pcapng" if args.pcapng else "smtp-sessions.pcap"
        path = (args.keep or Path(tmp)) / name
        t0 = time.perf_counter()
        low, high = (int(x) for x in args.message_bytes.split("-"))
        info = generate(path, args.size_mb, args.sessions, sizes=(low, high), pcapng=args.pcapng)
        gen = time.perf_counter() - t0
        mb = info["bytes"] / 1e6
        print(
            f"capture: {path.suffix[1:]}, {mb:.1f} MB, {info['frames']:,} frames, "
            f"{info['sessions']:,} sessions ({args.sessions} at once), written in {gen:.1f} s"
        )
        rounds = [time_ours(path, info) for _ in range(args.rounds)]
        ours = statistics.median(rounds)
        conv_s, scenarios = time_convert(path, Path(tmp) / "scenarios", args.match)
        peer_s, peer_bytes = time_scapy(path, args.peer_mb)
        peer_rate = peer_bytes / 1e6 / peer_s
        tshark_s = time_tshark(path)

    ours_rate = mb / ours
    print(f"{'reader':<28} {'seconds':>9} {'MB/s':>9}")
    print(f"{'read_streams (median)':<28} {ours:>9.2f} {ours_rate:>9.1f}")
    print(f"{'  rounds':<28} " + ", ".join(f"{r:.2f}" for r in rounds))
    conv_rate = mb / conv_s
    print(f"{'pcap2yaml --match ' + args.match:<28} {conv_s:>9.2f} {conv_rate:>9.1f}")
    print(f"{'  scenarios written':<28} {scenarios:>9,}")
    peer_name = f"scapy PcapReader+TCP ({peer_bytes / 1e6:.1f} MB)"
    print(f"{peer_name:<28} {peer_s:>9.2f} {peer_rate:>9.1f}")
    if tshark_s is None:
        print("tshark: SKIP (not installed)")
    else:
        print(f"{'tshark follow,tcp,raw,0':<28} {tshark_s:>9.2f} {mb / tshark_s:>9.1f}")
    print(
        f"ratio read_streams / scapy: {ours_rate / peer_rate:.1f}x; "
        f"pcap2yaml / scapy: {conv_rate / peer_rate:.1f}x; goal >= 20 MB/s converted: "
        + ("met" if conv_rate >= 20 else "NOT met")
    )
    if args.json:
        figures = {
            "capture": {
                **info,
                "format": path.suffix[1:],
                "mb": mb,
                "concurrent_sessions": args.sessions,
                "message_bytes": args.message_bytes,
            },
            "read_streams": {"seconds": ours, "rounds": rounds, "mb_per_s": ours_rate},
            "pcap2yaml": {
                "seconds": conv_s,
                "mb_per_s": conv_rate,
                "match": args.match,
                "scenarios": scenarios,
            },
            "scapy": {"seconds": peer_s, "mb": peer_bytes / 1e6, "mb_per_s": peer_rate},
            "tshark": None
            if tshark_s is None
            else {"seconds": tshark_s, "mb_per_s": mb / tshark_s},
            "ratio": ours_rate / peer_rate,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
