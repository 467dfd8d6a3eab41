"""The delivery-path user against the reference server (Locust in a subprocess)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from loadsupport import LoadServer, load_server, run_locust

pytestmark = pytest.mark.slow

TOKEN = re.compile(rb"^X-Mailharness-Token: (\S+)", re.MULTILINE)


def delivery_run(srv: LoadServer, tmp_path: Path, *extra: str, target: Path | None = None):
    results = tmp_path / "results.json"
    run = run_locust(
        tmp_path,
        target or srv.target_file,
        "delivery",
        users=3,
        run_time="3s",
        extra=["--mailharness-results", str(results), "--message-size", "2KB", *extra],
    )
    assert results.exists(), run.explain()
    return run, json.loads(results.read_text())["delivery"]


def tokens_in_mailboxes(srv: LoadServer) -> list[bytes]:
    return [
        m.group(1)
        for user in srv.passwords
        for msg in srv.messages(user)
        for m in TOKEN.finditer(msg)
    ]


def test_every_message_submitted_is_seen_exactly_once(dev_setup, tmp_path: Path):
    with load_server(dev_setup, tmp_path / "srv", accounts=4) as srv:
        run, counts = delivery_run(srv, tmp_path, "--delivery-timeout", "5")
        stored = tokens_in_mailboxes(srv)
    assert counts["submitted"] > 10, run.explain()
    assert counts["seen"] == counts["submitted"], (counts, run.explain())
    assert (counts["lost"], counts["duplicated"], counts["late"]) == (0, 0, 0), counts
    # Locust's statistics agree: one end-to-end entry per message, no failed request
    assert run.count("DELIVERY", "delivery end-to-end") == counts["submitted"], run.explain()
    assert run.count("SMTP", "DATA") == counts["submitted"]
    assert run.failure_count() == 0, run.explain()
    # and the server holds each submitted message exactly once
    assert len(stored) == len(set(stored)) == counts["submitted"]


def test_a_message_accepted_and_dropped_is_counted_lost(dev_setup, tmp_path: Path):
    # the server says 250 after DATA for a third of the messages and never delivers them
    drop = {
        "listener": "submission",
        "command": "DATA_END",
        "reply_rate": 0.3,
        "reply": "250 2.0.0 accepted (and dropped)",
        "seed": 7,
    }
    with load_server(dev_setup, tmp_path / "srv", accounts=4, faults=[drop]) as srv:
        run, counts = delivery_run(srv, tmp_path, "--delivery-timeout", "1.5")
        stored = tokens_in_mailboxes(srv)
    assert counts["lost"] > 0, counts
    assert counts["seen"] + counts["lost"] == counts["submitted"], counts
    # a message later than the timeout is lost (and late); it is in the mailbox all the same
    assert len(stored) == counts["seen"] + counts["late"], counts
    assert counts["duplicated"] == 0, counts
    # lost messages are failed requests of the end-to-end entry, in the statistics too
    lost = [f for f in run.failures if f["Name"] == "delivery end-to-end"]
    assert lost and "MessageLost" in lost[0]["Error"], run.failures
    assert sum(int(f["Occurrences"]) for f in lost) == counts["lost"]
    assert len(counts["lost_tokens"]) == min(counts["lost"], 20)


def test_without_imap_the_watcher_polls_pop3(dev_setup, tmp_path: Path):
    with load_server(dev_setup, tmp_path / "srv", accounts=4) as srv:
        doc = yaml.safe_load(srv.target_file.read_text())
        for name in ("imap", "imaps", "web"):
            doc["services"].pop(name, None)
        target = tmp_path / "no-imap.yaml"
        target.write_text(yaml.safe_dump(doc))
        run, counts = delivery_run(
            srv, tmp_path, "--delivery-timeout", "5", "--delivery-poll", "0.3", target=target
        )
    assert counts["submitted"] > 5, run.explain()
    assert counts["seen"] == counts["submitted"] and counts["lost"] == 0, counts
    assert run.failure_count() == 0, run.explain()
