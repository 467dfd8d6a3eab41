"""aiosmtpd with a durable Maildir handler, as a benchmark peer (run as a subprocess).

    python benchmarks/peer_aiosmtpd.py --maildir DIR [--executor]

Prints the loopback port it listens on, then serves until SIGTERM/SIGINT.

The handler answers 250 to DATA only after the message is durable: written to
DIR/tmp, fsynced, renamed into DIR/new, and DIR/new fsynced. By default it
does that work inline in ``handle_DATA``, blocking the event loop, the way a
straightforward aiosmtpd handler does; with ``--executor`` the same work runs in
the loop's default thread pool (``loop.run_in_executor``).

The server runs in aiosmtpd's usual ``Controller`` (the loop in a thread of its
own), with its host name given so aiosmtpd does not call ``socket.getfqdn()``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller  # type: ignore[import-not-found, unused-ignore]
from procs import free_port  # this script runs from benchmarks/, where procs is


class DurableMaildir:
    """Deliver into a Maildir, returning only once the message is on disk."""

    def __init__(self, root: Path) -> None:
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.tmp = root / "tmp"
        self.new = root / "new"
        self.new_fd = os.open(self.new, os.O_RDONLY | os.O_DIRECTORY)
        self.prefix = f"P{os.getpid()}Q"
        self.seq = itertools.count()

    def store(self, data: bytes) -> str:
        name = f"{int(time.time())}.{self.prefix}{next(self.seq)}.bench"
        tmp = self.tmp / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.new / name)
        os.fsync(self.new_fd)
        return name


class InlineHandler:
    def __init__(self, maildir: DurableMaildir) -> None:
        self.maildir = maildir

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.maildir.store(envelope.original_content or envelope.content)
        return "250 2.0.0 OK stored"


class ExecutorHandler(InlineHandler):
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content
        await asyncio.get_running_loop().run_in_executor(None, self.maildir.store, data)
        return "250 2.0.0 OK stored"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--maildir", type=Path, required=True)
    ap.add_argument("--executor", action="store_true", help="fsync in the default thread pool")
    ap.add_argument("--port", type=int, default=0, help="default: a free one")
    args = ap.parse_args()

    maildir = DurableMaildir(args.maildir)
    handler = ExecutorHandler(maildir) if args.executor else InlineHandler(maildir)
    # the controller's thread inherits this mask, so only the main thread gets them
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=args.port or free_port(),
        server_hostname="mx.aiosmtpd.example.test",
    )
    controller.start()
    print(controller.port, flush=True)
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        controller.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
