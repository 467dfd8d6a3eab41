"""Benchmark: durable Maildir delivery, MaildirStore (group commit) vs per-message fsyncs.

Storage only, no SMTP: C asyncio tasks deliver N messages of S bytes, each
delivery durable before the task goes on (the point where a server says 250).

- ``store``: :class:`reference_server.storage.MaildirStore.deliver` (file
  fsyncs in a pool, directory fsyncs shared by group commit, waits on the loop).
- ``executor``: per message, tmp write + fsync + rename + ``new/`` fsync in a
  thread pool of the same size (8), as ``benchmarks/peer_aiosmtpd.py --executor``
  does in the loop's default pool.
- ``inline``: the same work on the event loop itself (a plain aiosmtpd handler).

    python benchmarks/bench_maildir.py [--messages 3000] [--concurrency 20] [--size 1024]
                                       [--fsync-delay MS]

``--fsync-delay`` adds a sleep to every fsync of every variant, to model a disk
slower than this machine's (a laptop SSD without a write cache, a network disk).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reference_server.storage import MaildirStore

FSYNC_DELAY = 0.0  # seconds, set from --fsync-delay


def fsync(fd: int) -> None:
    if FSYNC_DELAY:
        time.sleep(FSYNC_DELAY)
    os.fsync(fd)


class PlainMaildir:
    """One message, one file fsync, one directory fsync; nothing shared."""

    def __init__(self, root: Path) -> None:
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.root = root
        self.seq = itertools.count()

    def store(self, data: bytes) -> None:
        name = f"{int(time.time())}.P{os.getpid()}Q{next(self.seq)}.bench"
        tmp = self.root / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.root / "new" / name)
        dfd = os.open(self.root / "new", os.O_RDONLY | os.O_DIRECTORY)
        try:
            fsync(dfd)
        finally:
            os.close(dfd)


async def drive(deliver: Callable[[bytes], Awaitable[object]], n: int, c: int, size: int) -> float:
    message = (b"x" * (size - 2)) + b"\r\n"
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            await deliver(message)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    return n / (time.perf_counter() - start)


def run_store(root: Path, n: int, c: int, size: int) -> tuple[float, int]:
    store = MaildirStore(root, hostname="bench", fsync_fn=fsync)

    async def main() -> float:
        try:
            return await drive(lambda m: store.deliver(["alice"], m), n, c, size)
        finally:
            await store.close()

    return asyncio.run(main()), store.directory_syncs


def run_executor(root: Path, n: int, c: int, size: int) -> float:
    maildir = PlainMaildir(root / "alice")

    async def main() -> float:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=8) as pool:  # as many threads as the store's
            return await drive(lambda m: loop.run_in_executor(pool, maildir.store, m), n, c, size)

    return asyncio.run(main())


def run_inline(root: Path, n: int, c: int, size: int) -> float:
    maildir = PlainMaildir(root / "alice")

    async def deliver(message: bytes) -> None:
        maildir.store(message)

    return asyncio.run(drive(deliver, n, c, size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fsync-delay", type=float, default=0.0, help="ms added to each fsync")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a tmp dir)"
    )
    args = parser.parse_args()
    global FSYNC_DELAY
    FSYNC_DELAY = args.fsync_delay / 1000

    results: dict[str, list[float]] = {"store": [], "executor": [], "inline": []}
    syncs: list[int] = []
    names = list(results)
    for round_number in range(args.rounds):
        # rotate the order, so no variant always runs first (or right after another)
        shift = round_number % len(names)
        for variant in names[shift:] + names[:shift]:
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                root = Path(tmp)
                if variant == "store":
                    rate, dir_syncs = run_store(root, args.messages, args.concurrency, args.size)
                    syncs.append(dir_syncs)
                elif variant == "executor":
                    rate = run_executor(root, args.messages, args.concurrency, args.size)
                else:
                    rate = run_inline(root, args.messages, args.concurrency, args.size)
                results[variant].append(rate)
    print(
        f"{args.messages} messages of {args.size} B, {args.concurrency} concurrent, "
        f"{os.cpu_count()} CPUs, fsync delay {args.fsync_delay} ms, median of {args.rounds}"
    )
    for variant, rates in results.items():
        each = ", ".join(f"{r:.0f}" for r in rates)
        print(f"  {variant:9} {statistics.median(rates):8.0f} msg/s   ({each})")
    print(f"  store: directory fsyncs per run {syncs} for {args.messages} messages")
    ratio = statistics.median(results["store"]) / statistics.median(results["executor"])
    print(f"  store / executor: {ratio:.2f}x")


if __name__ == "__main__":
    main()
