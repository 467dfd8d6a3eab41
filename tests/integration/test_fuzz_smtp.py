"""The SMTP fuzzer finds bugs hidden in scripted servers and writes scenarios that replay them."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine_helpers import run_cli
from scripted import ScriptConn, ScriptedServer

from conformance.fuzz import PROTOCOLS, fuzz, write_finding
from conformance.targets import load_target

SMTP = PROTOCOLS["smtp"]
DEADLINE = 0.3


def buggy_smtp(bug: str) -> Callable[[ScriptConn], None]:
    """A small, mostly correct SMTP server with one bug: crash, rset or hang."""

    def handler(conn: ScriptConn) -> None:
        conn.sendline("220 scripted ESMTP")
        mail = rcpts = 0
        while True:
            raw = conn.recv_line(timeout=10)
            line = raw.decode("utf-8", "replace")
            verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
            arg = line[len(verb) :]
            if b"\x00" in raw or not raw.isascii():
                if bug == "hang" and verb == "VRFY":
                    conn.wait_closed(10)
                    return
                conn.sendline("500 bad line")
            elif verb in ("EHLO", "HELO"):
                mail = rcpts = 0
                conn.sendline("250 hi" if arg.strip() else "501 domain")
            elif verb == "MAIL":
                if bug == "crash" and re.search(r"\sX-", line, re.I):
                    conn.abort()
                    return
                if not re.fullmatch(r"(?i) FROM:<[^<> ]*>( \S+)*", arg):
                    conn.sendline("501 syntax")
                else:
                    mail, rcpts = 1, 0
                    conn.sendline("250 ok")
            elif verb == "RCPT":
                if not mail:
                    conn.sendline("503 need MAIL")
                elif re.fullmatch(r"(?i) TO:<[^<> ]+>", arg):
                    rcpts += 1
                    conn.sendline("250 ok")
                else:
                    conn.sendline("501 syntax")
            elif verb == "DATA":
                if arg:
                    conn.sendline("501 no args")
                elif not (mail and rcpts):
                    conn.sendline("503 need RCPT")
                else:
                    conn.sendline("354 go")
                    conn.recv_until(rb"\r\n\.\r\n")
                    mail = rcpts = 0
                    conn.sendline("250 stored")
            elif verb == "RSET":
                if arg:
                    conn.sendline("501 no args")
                else:
                    if bug != "rset":
                        mail = rcpts = 0
                    conn.sendline("250 ok")
            elif verb == "NOOP":
                conn.sendline("250 ok")
            elif verb == "VRFY":
                conn.sendline("252 maybe")
            elif verb == "EXPN":
                conn.sendline("502 no")
            elif verb == "HELP":
                conn.sendline("214 help")
            elif verb == "QUIT" and not arg:
                conn.sendline("221 bye")
                return
            else:
                conn.sendline("500 unknown")

    return handler


def target_file(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "target.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "host": "127.0.0.1",
                "domain": "example.test",
                "services": {"mx": {"port": port, "tls": "none"}},
                "accounts": {"alice": {"address": "alice@example.test", "password": "x"}},
                "timeouts": {"read": 2},
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("bug", "kind", "needle"),
    [("crash", "crash", "X-"), ("rset", "wrong-reply", "RSET"), ("hang", "hang", "VRFY")],
)
def test_fuzzer_finds_the_hidden_bug_and_the_scenario_replays_it(
    bug: str, kind: str, needle: str, tmp_path: Path, mail_server
) -> None:
    with ScriptedServer(buggy_smtp(bug)) as srv:
        tfile = target_file(tmp_path, srv.port)
        target = load_target(tfile)
        report = fuzz(
            SMTP, target, target.services["mx"], seed_value=7, max_examples=800, deadline=DEADLINE
        )
        kinds = {f.kind for f in report.findings}
        assert kind in kinds, [f.message for f in report.findings]
        finding = next(f for f in report.findings if f.kind == kind)
        assert needle.encode() in finding.records[-1].send.wire or needle == "RSET"
        if bug == "rset":
            assert any(r.send.wire == b"RSET\r\n" for r in finding.records)
        assert len(finding.records) <= 8  # shrunk
        out = tmp_path / "found"
        path, new = write_finding(SMTP, finding, target, "mx", out, deadline=DEADLINE)
        assert new and not write_finding(SMTP, finding, target, "mx", out, deadline=DEADLINE)[1]
        assert run_cli("validate", str(path))[0] == 0
        code, output = run_cli("run", str(path), "--target", str(tfile))
        assert code == 1, output
    # the same scenario passes against the reference server
    code, output = run_cli(
        "run", str(path), "--target", str(reference_target(mail_server, tmp_path))
    )
    assert code == 0, output


def test_cli_exit_codes_and_same_seed_same_dialogues(tmp_path: Path) -> None:
    with ScriptedServer(buggy_smtp("none")) as srv:
        tfile = target_file(tmp_path, srv.port)
        args = ["fuzz", "--protocol", "smtp", "--target", str(tfile), "--max-examples", "40"]
        code, out1 = run_cli(*args, "--seed", "3", "--out", str(tmp_path / "o"))
        assert code == 0, out1
        assert "seed 3" in out1 and "0 finding(s)" in out1
        code, out2 = run_cli(*args, "--seed", "3", "--out", str(tmp_path / "o"))
        assert re.search(r"verbs: .*", out1)[0] == re.search(r"verbs: .*", out2)[0]  # type: ignore[index]
    assert run_cli(*args, "--service", "nope")[0] == 2


def reference_target(mail_server: Any, tmp_path: Path) -> Path:
    host, port = mail_server.addr("mx")
    tfile = tmp_path / "ref.yaml"
    tfile.write_text(
        yaml.safe_dump(
            {
                "host": host,
                "domain": "example.test",
                "services": {"mx": {"port": port, "tls": "none"}},
                "accounts": {"alice": {"address": "alice@example.test", "password": "x"}},
            }
        )
    )
    return tfile


def test_a_short_run_against_the_reference_server_finds_nothing(mail_server, tmp_path) -> None:
    target = load_target(reference_target(mail_server, tmp_path))
    report = fuzz(SMTP, target, target.services["mx"], seed_value=11, max_examples=100)
    assert report.findings == [], [f.message for f in report.findings]
    assert {"GREETED", "MAIL", "RCPT"} <= report.stats.states
