"""Benchmark: ``mailharness run`` over N trivial scenarios against a local scripted server.

Target (issue 2): 200 trivial scenarios finish in under 3 s wall on a 2-core
machine, measured as the whole command (interpreter start, loading and
validating 200 files, preflight, running, reporting).

The peer, run in the same script against the same server: a bare asyncio
client doing the same 200 dialogues (connect, greeting, QUIT, 221) with the
same concurrency and no harness at all. The ratio harness/peer shows what
the harness costs on top of the network dialogue itself.

    python benchmarks/bench_run.py [--scenarios 200] [--jobs 8] [--rounds 3]

The server is a small asyncio SMTP responder in a subprocess on a free
loopback port, so it does not share the harness's interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SERVER = textwrap.dedent(
    """
    import asyncio, sys

    async def handle(reader, writer):
        writer.write(b"220 bench.test ESMTP\\r\\n")
        try:
            while line := await reader.readline():
                verb = line.split(b" ", 1)[0].strip().upper()
                if verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\\r\\n")
                    await writer.drain()
                    break
                if verb in (b"EHLO", b"HELO", b"NOOP"):
                    writer.write(b"250 2.0.0 ok\\r\\n")
                else:
                    writer.write(b"502 5.5.1 not here\\r\\n")
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())
    """
)

SCENARIO = """\
id: bench.trivial.{n:04d}
protocol: smtp
service: mx
title: trivial scenario {n}
rfc: RFC 5321 §4.1.1.10
steps:
  - expect: {{code: 220}}
  - send: NOOP
    expect: {{code: 250}}
  - send: QUIT
    expect: {{code: 221}}
"""


async def peer_round(port: int, n: int, jobs: int) -> float:
    gate = asyncio.Semaphore(jobs)

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert (await reader.readline()).startswith(b"220")
            writer.write(b"NOOP\r\n")
            assert (await reader.readline()).startswith(b"250")
            writer.write(b"QUIT\r\n")
            assert (await reader.readline()).startswith(b"221")
            writer.close()
            await writer.wait_closed()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scenarios", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "scenarios").mkdir()
            for n in range(args.scenarios):
                (root / "scenarios" / f"s{n:04d}.yaml").write_text(SCENARIO.format(n=n))
            (root / "target.yaml").write_text(
                "host: 127.0.0.1\ndomain: bench.test\n"
                f"services:\n  mx: {{port: {port}, tls: none}}\n"
            )
            cmd = [
                sys.executable,
                "-m",
                "conformance",
                "run",
                str(root / "scenarios"),
                "--target",
                str(root / "target.yaml"),
                "--jobs",
                str(args.jobs),
                "--no-progress",
            ]
            harness, peer = [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": ""}
                )
                harness.append(time.perf_counter() - t0)
                if proc.returncode != 0 or f"{args.scenarios} passed, 0 failed" not in proc.stdout:
                    sys.exit(
                        f"mailharness run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                    )
                peer.append(asyncio.run(peer_round(port, args.scenarios, args.jobs)))
    finally:
        server.terminate()
        server.wait(timeout=5)

    h, p = statistics.median(harness), statistics.median(peer)
    figures = {
        "scenarios": args.scenarios,
        "jobs": args.jobs,
        "rounds": args.rounds,
        "harness_wall_s_median": round(h, 3),
        "harness_wall_s_all": [round(x, 3) for x in harness],
        "peer_bare_asyncio_s_median": round(p, 4),
        "ratio_harness_over_peer": round(h / p, 1),
        "harness_scenarios_per_s": round(args.scenarios / h, 1),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    print(json.dumps(figures, indent=2))
    print(
        f"\nmailharness run, {args.scenarios} scenarios: {h:.2f}s wall (goal < 3 s) "
        f"= {h / p:.1f}x a bare asyncio client doing the same dialogues ({p * 1000:.0f} ms)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
