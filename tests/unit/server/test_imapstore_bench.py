"""Timings of the IMAP store on a 10,000-message INBOX (issue 6's benchmark size).

As a test it checks generous bounds (a loaded CI machine must not fail it); as a
script it prints the timings::

    .venv/bin/python tests/unit/server/test_imapstore_bench.py [messages] [--fsync]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reference_server.storage.imapstore import INBOX, ImapStore

MSG = b"Subject: bench\r\nFrom: a@example.test\r\n\r\n" + b"body line\r\n" * 40


def fill(root: Path, count: int) -> None:
    """``count`` deliveries in ``new/``, named as MaildirStore names them."""
    box = root / "alice"
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = f"{1_700_000_000 + i // 100}.M{i % 100 * 7}P4242Q{i + 1}.bench,S={len(MSG)}"
        (box / "new" / name).write_bytes(MSG)


def measure(root: Path, count: int, *, fsync: bool = False) -> dict[str, float]:
    """Seconds per operation, in the order they ran."""
    timings: dict[str, float] = {}

    def timed(label: str, action: Callable[[], object]) -> None:
        start = time.perf_counter()
        action()
        timings[label] = time.perf_counter() - start

    fill(root, count)
    first = ImapStore(root, fsync=fsync, special_use=False)
    timed(
        "first open: UIDs for every file, new/ -> cur/",
        lambda: first.open("alice", INBOX).snapshot(),
    )
    first.close()
    settled = time.time() - 10  # as if the last delivery was a while ago
    for sub in ("new", "cur"):
        os.utime(root / "alice" / sub, (settled, settled))

    store = ImapStore(root, fsync=fsync, special_use=False)
    inbox = store.open("alice", INBOX)
    timed("open with a current index (load + rescan)", lambda: inbox.uidvalidity)
    timed("snapshot (first: builds MessageInfo)", inbox.snapshot)
    timed("snapshot (cached)", inbox.snapshot)
    timed("refresh, nothing changed", inbox.refresh)
    every = range(1, count + 1)
    timed("store +FLAGS (\\Seen) 1:*", lambda: inbox.store(every, "add", ["\\Seen"]))
    timed("refresh after the store (relists)", inbox.refresh)
    timed("store -FLAGS (\\Seen) 1:*", lambda: inbox.store(every, "remove", ["\\Seen"]))
    timed("select (rescan + snapshot + watch)", inbox.select)
    timed("status", inbox.status)
    timed("append one message", lambda: inbox.append(MSG))
    timed("flush the index", inbox.flush)
    store.close()
    return timings


@pytest.mark.slow
def test_ten_thousand_messages(tmp_path: Path) -> None:
    timings = measure(tmp_path, 10_000)
    for label, seconds in timings.items():
        print(f"{label:48s} {seconds * 1000:8.1f} ms")
    # measured around 30 / 20 / 0 / 85 ms on a 2-core VM: these bounds are 20x or more
    assert timings["open with a current index (load + rescan)"] < 1.0
    assert timings["refresh, nothing changed"] < 0.05
    assert timings["store +FLAGS (\\Seen) 1:*"] < 3.0
    assert timings["snapshot (cached)"] < 0.1


if __name__ == "__main__":
    messages = int(next((a for a in sys.argv[1:] if a.isdigit()), "10000"))
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(Path(tmp), messages, fsync="--fsync" in sys.argv)
    print(f"{messages} messages, fsync={'--fsync' in sys.argv}")
    for label, seconds in results.items():
        print(f"  {label:48s} {seconds * 1000:8.1f} ms")
