"""``mailharness queue list|show|flush|delete`` against a running server and a stopped one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mail_system import Sink, wait_for, write_instance
from test_queue import message, running, spool_entries, submit

from conformance.cli import main

pytestmark = pytest.mark.slow


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_list_show_flush_and_delete_on_a_running_server(tmp_path: Path) -> None:
    accept = False
    with Sink(decide=lambda n: "250 2.0.0 ok" if accept else "451 4.3.0 greylisted") as sink:
        a = write_instance(
            tmp_path / "a",
            domain="a.test",
            relay={"routes": {"b.test": f"127.0.0.1:{sink.port}"}},
            queue={"retry_interval": 3600, "max_retry_interval": 3600},
        )
        config = str(a.config)
        with running(a) as srv:
            for subject in ("first", "second"):
                submit(a, srv.bound["submission"][1], message(subject))
            wait_for(lambda: len(sink.transactions) == 2, what="both first attempts")
            first, second = sorted(spool_entries(a))
            wait_for(
                lambda: (a.data_dir / "spool" / second / "state.json").exists(), what="the state"
            )

            code, out, _ = cli("queue", "list", "--config", config)
            assert code == 0
            assert first in out and second in out
            assert "<alice@a.test>" in out
            assert "carol@b.test  pending" in out
            assert "(451 4.3.0 greylisted)" in out
            assert "in 59m" in out or "in 1h" in out
            assert "2 message(s), 2 recipient(s) pending" in out

            code, out, _ = cli("queue", "list", "--config", config, "--json")
            listing = json.loads(out)
            assert [m["id"] for m in listing["messages"]] == [first, second]
            assert listing["messages"][0]["attempts"] == 1
            assert listing["messages"][0]["recipients"][0]["code"] == "4.3.0"

            code, out, _ = cli("queue", "show", "--config", config, first)
            assert code == 0
            assert "Subject: first" in out
            assert "recipient: <carol@b.test> pending (451 4.3.0 greylisted)" in out

            code, out, _ = cli("queue", "delete", "--config", config, second)
            assert (code, out) == (0, f"deleted: {second}\n")
            assert spool_entries(a) == [first]

            accept = True
            code, out, _ = cli("queue", "flush", "--config", config)
            assert code == 0
            assert "flushed: 1 message(s)" in out
            wait_for(lambda: sink.accepted, what="delivery after the flush")
            wait_for(lambda: not spool_entries(a), what="the spool to empty")
            code, out, _ = cli("queue", "list", "--config", config)
            assert out == "Mail queue is empty\n"
        assert [parse_subject(m.data) for m in sink.accepted] == ["first"]


def parse_subject(data: bytes) -> str:
    for line in data.split(b"\r\n"):
        if line.startswith(b"Subject: "):
            return line[9:].decode()
    return ""


def test_without_a_running_server_flush_and_delete_edit_the_spool(tmp_path: Path) -> None:
    with Sink(decide=lambda n: "451 4.3.0 later") as sink:
        a = write_instance(
            tmp_path / "a",
            domain="a.test",
            relay={"routes": {"b.test": f"127.0.0.1:{sink.port}"}},
            queue={"retry_interval": 3600, "max_retry_interval": 3600},
        )
        with running(a) as srv:
            for subject in ("one", "two"):
                submit(a, srv.bound["submission"][1], message(subject))
            wait_for(lambda: len(sink.transactions) == 2, what="both first attempts")
        config = str(a.config)
        assert not (a.data_dir / "control.sock").exists()
        one, two = sorted(spool_entries(a))
        code, out, _ = cli("queue", "flush", "--config", config)
        assert code == 0
        assert "no server is running; 2 message(s) will be tried when it starts" in out
        listing = json.loads(cli("queue", "list", "--config", config, "--json")[1])
        assert [m["next_attempt"] for m in listing["messages"]] == [0.0, 0.0]
        assert cli("queue", "delete", "--config", config, one)[:2] == (0, f"deleted: {one}\n")
        assert spool_entries(a) == [two]


def test_bad_ids_and_configs_are_one_line_errors(tmp_path: Path) -> None:
    a = write_instance(tmp_path / "a", domain="a.test")
    config = str(a.config)
    code, _, err = cli("queue", "show", "--config", config, "0000-nope")
    assert code == 1
    assert err == "queue show: no queued message 0000-nope\n"
    code, _, err = cli("queue", "delete", "--config", config, "../etc")
    assert code == 1
    assert err == "queue delete: not a queue id: '../etc'\n"
    code, _, err = cli("queue", "list", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2
    assert err.count("\n") == 1 and "missing.yaml" in err
