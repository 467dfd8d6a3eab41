"""Crash durability of the reference server: SIGKILL under load loses no acknowledged message.

Acceptance: a subprocess server under a load of 1,000 messages is killed with
SIGKILL at a random moment, restarted, and every message that got a 250 is in
a Maildir, complete and byte-identical.

How: one data directory, one ``python -m reference_server`` after another on it.
Each of three rounds sends a load of 1,000 unique messages (``X-Seq: <n>``,
200 B - 20 KB, many lines starting with "." so dot-stuffing is exercised) over 8
concurrent connections, and SIGKILLs the server once a random number of them
got 250 (early: 50-200, middle: 350-650, late: 750-900) plus a random 0-5 ms.
Then a new server starts on the same data directory, and the Maildir must hold

* every message that got 250 (including 250s the client read after the kill),
  exactly once, byte-identical after the server's Received header;
* no message whose final dot was never completely written;
* nothing else in ``new/`` or ``cur/``: every file is one complete message of
  the sent set (``tmp/`` may hold leftovers of deliveries in flight);
* every message found after an earlier round, still.

The new server then takes one probe message (250, and in ``new/`` at once) and
is the one loaded, and killed, in the next round, so recovery from a crash with
leftovers in ``tmp/`` is exercised too.

The load stops at the kill, so a round sends about its kill count plus the
messages in flight (at most 8), not all 1,000: about 1,300-1,700 messages in
all. Runtime on 2 cores: 3-8 s (7 s with both cores busy with other work).

What SIGKILL cannot show: the kernel's page cache survives the process, so
this checks the order "store, then 250" and the tmp/ -> new/ rename, not the
fsyncs (a power cut would be needed for those; tests/unit/server/test_maildir.py
checks the fsync calls).

Replay: the seed is printed (run with ``-s``); ``CRASH_SEED=<seed>`` repeats
the same messages and kill counts (the timing of the kill cannot be repeated).
"""

from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from crash_client import (
    ACKED,
    DATA_SENT,
    PENDING,
    REJECTED,
    STARTED,
    LoadRun,
    make_messages,
    open_session,
    send_one,
)
from server_process import ServerProcess

from reference_server.auth import hash_password

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
LOAD = 1_000  # messages per round
THREADS = 8
# (first, last) acknowledged messages before the kill: early, middle, late
KILL_WINDOWS = ((50, 200), (350, 650), (750, 900))
PROBE_SEQ = 10_000_000  # X-Seq of the probe message sent after each restart (+ round)
_X_SEQ = re.compile(rb"^X-Seq: (\d+)\r$", re.MULTILINE)


def write_setup(base: Path) -> Path:
    """server.yaml (one MX listener, no TLS, port 0) and accounts.yaml with alice."""
    accounts = {
        "accounts": {
            "alice": {
                "password": hash_password("not-used-on-mx"),
                "addresses": ["alice@example.test"],
            }
        }
    }
    (base / "accounts.yaml").write_text(yaml.safe_dump(accounts), encoding="utf-8")
    server = {
        "hostname": "mail.example.test",
        "domains": ["example.test"],
        "data_dir": "./data",
        "accounts_file": "./accounts.yaml",
        "postmaster": "alice",
        "listeners": {"mx": {"kind": "mx", "host": HOST, "port": 0, "tls": "none"}},
    }
    config = base / "server.yaml"
    config.write_text(yaml.safe_dump(server, sort_keys=False), encoding="utf-8")
    return config


def strip_received(data: bytes) -> bytes | None:
    """The message after the server's Received header (None if it does not start with one).

    The header ends at the first line that neither starts with ``Received:`` nor
    is a continuation line (starts with a space or tab).
    """
    if data.startswith(b"Return-Path: "):  # final delivery puts it first (RFC 5321 §4.4)
        data = data[data.index(b"\r\n") + 2 :]
    if not data.startswith(b"Received: from client.test "):
        return None
    pos = 0
    while pos < len(data) and (
        data.startswith(b"Received:", pos) or data[pos : pos + 1] in (b" ", b"\t")
    ):
        end = data.find(b"\r\n", pos)
        if end < 0:
            return None
        pos = end + 2
    return data[pos:]


@dataclass
class MailboxScan:
    found: dict[int, list[Path]]  # X-Seq -> files holding exactly the sent message
    problems: list[str]  # files that are not one complete message of the sent set
    files: int
    tmp_files: int


def scan_mailbox(box: Path, sent: dict[int, bytes]) -> MailboxScan:
    found: dict[int, list[Path]] = {}
    problems: list[str] = []
    files = 0
    for sub in ("new", "cur"):
        for path in sorted((box / sub).iterdir()):
            files += 1
            data = path.read_bytes()
            body = strip_received(data)
            head = body.partition(b"\r\n\r\n")[0] + b"\r\n" if body is not None else b""
            match = _X_SEQ.search(head)
            seq = int(match.group(1)) if match else None
            if body is None or seq is None or seq not in sent:
                problems.append(f"{sub}/{path.name}: not a message of the sent set: {data[:300]!r}")
            elif body != sent[seq]:
                problems.append(
                    f"{sub}/{path.name}: X-Seq {seq} differs from what was sent "
                    f"({len(body)} bytes stored, {len(sent[seq])} sent; "
                    f"first difference at {_first_difference(body, sent[seq])})"
                )
            else:
                found.setdefault(seq, []).append(path)
    tmp_files = sum(1 for _ in (box / "tmp").iterdir())
    return MailboxScan(found, problems, files, tmp_files)


def _first_difference(a: bytes, b: bytes) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


@pytest.mark.slow
def test_sigkill_under_load_loses_no_acknowledged_message(tmp_path):
    seed = int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\ncrash durability: CRASH_SEED={seed}")
    config = write_setup(tmp_path)
    box = tmp_path / "data" / "mail" / "alice"
    log = tmp_path / "server.stderr"
    started = time.monotonic()

    sent: dict[int, bytes] = {}  # every message sent in full or in part, by X-Seq
    must_have: set[int] = set()  # got 250: must be there, exactly once
    must_not: set[int] = set()  # final dot never completely written: must not be there
    seen: set[int] = set()  # found after an earlier restart: must stay

    server = ServerProcess(config, log)
    try:
        for round_no, (low, high) in enumerate(KILL_WINDOWS):
            rng = random.Random(seed * 10 + round_no)
            kill_at = rng.randint(low, high)
            jitter = rng.uniform(0, 0.005)
            messages = make_messages(rng, round_no * LOAD, LOAD)

            load = LoadRun(HOST, server.ports["mx"], messages, threads=THREADS)
            load.start()
            reached = load.wait_for_acks(kill_at, timeout=40)
            time.sleep(jitter)
            acked_at_kill = load.acked
            server.kill()
            load.join(timeout=30)
            assert reached, (
                f"round {round_no}: only {load.acked} of {kill_at} messages acknowledged "
                f"before the clients stopped (seed {seed}); errors {load.errors[:3]}; "
                f"server stderr: {server.stderr_tail()}"
            )

            status = dict(zip((seq for seq, _ in messages), load.status, strict=True))
            rejected = {
                seq: load.replies[i]
                for i, (seq, _) in enumerate(messages)
                if status[seq] == REJECTED
            }
            assert not rejected, (
                f"round {round_no}: unexpected refusals {list(rejected.items())[:3]}"
            )
            for seq, body in messages:
                if status[seq] != PENDING:
                    sent[seq] = body
            must_have |= {seq for seq, s in status.items() if s == ACKED}
            must_not |= {seq for seq, s in status.items() if s == STARTED}

            server = ServerProcess(config, log)  # the same data directory, a new port
            scan = scan_mailbox(box, sent)
            lost = sorted(must_have - scan.found.keys())
            twice = {seq: len(paths) for seq, paths in scan.found.items() if len(paths) > 1}
            incomplete_stored = sorted(must_not & scan.found.keys())
            vanished = sorted(seen - scan.found.keys())
            this_round = {seq for seq, _ in messages}
            acked_round = sum(1 for seq in this_round if status[seq] == ACKED)
            found_round = len(this_round & scan.found.keys())
            unacked_stored = len(
                {seq for seq in this_round if status[seq] == DATA_SENT} & scan.found.keys()
            )
            print(
                f"round {round_no}: seed {seed * 10 + round_no}, kill after {kill_at} "
                f"(+{jitter * 1000:.1f} ms), acknowledged at kill {acked_at_kill}, "
                f"acknowledged in all {acked_round}, found {found_round} "
                f"({unacked_stored} without 250 seen), "
                f"duplicates {sum(twice.values()) - len(twice)}, "
                f"left in tmp/ {scan.tmp_files}, files in new/+cur/ {scan.files}, "
                f"lost {len(lost)}"
            )
            context = f"round {round_no}, CRASH_SEED={seed}"
            assert not scan.problems, f"{context}: partial or foreign files: {scan.problems[:5]}"
            assert not lost, (
                f"{context}: {len(lost)} acknowledged messages missing after the restart, "
                f"X-Seq {lost[:20]}"
            )
            assert not twice, f"{context}: acknowledged or sent-once messages stored twice: {twice}"
            assert not incomplete_stored, (
                f"{context}: messages whose final dot was never sent were stored: "
                f"{incomplete_stored[:20]}"
            )
            assert not vanished, f"{context}: messages gone since an earlier restart: {vanished}"
            seen |= scan.found.keys()

            # the restarted server works: one more message, stored by the time of its 250
            probe_seq = PROBE_SEQ + round_no
            ((_, probe),) = make_messages(rng, probe_seq, 1)
            sent[probe_seq] = probe
            conn = open_session(HOST, server.ports["mx"])
            try:
                code, text = send_one(conn, probe)
                conn.send(b"QUIT\r\n")
                conn.reply()
            finally:
                conn.close()
            assert code == 250, f"{context}: probe after restart got {text!r}"
            must_have.add(probe_seq)
            assert scan_mailbox(box, sent).found.get(probe_seq), "probe acknowledged, not stored"
            seen.add(probe_seq)
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    print(
        f"crash durability: {len(sent)} messages sent, {len(must_have)} acknowledged, "
        f"{elapsed:.1f} s"
    )
