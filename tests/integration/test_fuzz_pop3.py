"""The POP3 fuzzer finds bugs hidden in scripted servers and writes scenarios that replay them."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from fuzz_support import (
    PASSWORD,
    find_and_replay,
    load,
    login_for,
    nodelay,
    reference_target,
    run_cli,
)
from scripted import ScriptConn, TestCerts

from conformance.fuzz import PROTOCOLS, fuzz

POP3 = PROTOCOLS["pop3"]
DEADLINE = 0.3
MESSAGES = [f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode() for i in range(3)]
_NUM = r"[0-9]+"


def buggy_pop3(bug: str) -> Callable[[ScriptConn], None]:
    """A small, mostly correct POP3 server (STLS, USER/PASS) with one bug: deleted or top."""

    def handler(conn: ScriptConn) -> None:
        nodelay(conn)
        conn.sendline("+OK scripted POP3")
        user, authed, deleted = False, False, set[int]()
        while True:
            raw = conn.recv_line(timeout=10)
            line = raw.decode("ascii", "replace")
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if b"\x00" in raw or not raw.isascii() or b"\r" in raw or len(raw) > 255:
                conn.sendline("-ERR bad line")
            elif verb == "CAPA" and not arg:
                conn.sendline("+OK\r\nUSER\r\nSTLS\r\nUIDL\r\nTOP\r\n.")
            elif verb == "QUIT" and not arg:
                conn.sendline("+OK bye")
                return
            elif not authed:
                if verb == "STLS" and not arg and not conn.tls:
                    conn.sendline("+OK go")
                    conn.starttls()
                elif verb == "USER" and arg == "alice":
                    user = True
                    conn.sendline("+OK")
                elif verb == "PASS" and user and arg == PASSWORD:
                    authed = True
                    conn.sendline("+OK in")
                else:
                    conn.sendline("-ERR no")
            else:
                conn.sendline(transaction(verb, arg, deleted, bug, conn))

    return handler


def transaction(verb: str, arg: str, deleted: set[int], bug: str, conn: ScriptConn) -> str:
    def number(text: str, *, check_deleted: bool = True) -> int | None:
        if not re.fullmatch(_NUM, text) or not 1 <= int(text) <= len(MESSAGES):
            return None
        if check_deleted and int(text) in deleted:
            return None
        return int(text)

    live = [i for i in range(1, len(MESSAGES) + 1) if i not in deleted]
    if verb == "STAT" and not arg:
        return f"+OK {len(live)} {sum(len(MESSAGES[i - 1]) for i in live)}"
    if verb in ("LIST", "UIDL") and not arg:
        rows = [f"{i} {len(MESSAGES[i - 1]) if verb == 'LIST' else f'u{i}'}" for i in live]
        return "\r\n".join(["+OK", *rows, "."])
    if verb in ("LIST", "UIDL") and (n := number(arg)) is not None:
        return f"+OK {n} {len(MESSAGES[n - 1]) if verb == 'LIST' else f'u{n}'}"
    if verb == "RETR" and (n := number(arg, check_deleted=bug != "deleted")) is not None:
        return "+OK\r\n" + MESSAGES[n - 1].decode() + "."
    if verb == "TOP":
        parts = arg.split(" ")
        n = number(parts[0]) if len(parts) == 2 else None
        if n is not None and re.fullmatch(_NUM, parts[1]):
            if bug == "top" and int(parts[1]) > 100000:
                conn.wait_closed(10)
                raise EOFError
            return "+OK\r\n" + MESSAGES[n - 1].decode() + "."
        return "-ERR no"
    if verb == "DELE" and (n := number(arg)) is not None:
        deleted.add(n)
        return "+OK"
    if verb == "RSET" and not arg:
        deleted.clear()
        return "+OK"
    if verb == "NOOP" and not arg:
        return "+OK"
    return "-ERR no"


@pytest.mark.parametrize(
    ("bug", "kind", "needle"), [("deleted", "wrong-reply", b"DELE"), ("top", "hang", b"TOP")]
)
def test_fuzzer_finds_the_hidden_bug_and_the_scenario_replays_it(
    bug: str, kind: str, needle: bytes, tmp_path: Path, mail_server, test_certs: TestCerts
) -> None:
    path, finding = find_and_replay(
        POP3, "pop3", buggy_pop3(bug), kind, needle, tmp_path, test_certs,
        deadline=DEADLINE,
    )  # fmt: skip
    assert len(finding.records) <= 6  # shrunk
    assert "mechanism: native" in path.read_text()
    mail_server.deliver("alice", MESSAGES[0])
    ref = reference_target(mail_server, tmp_path, "pop3")
    code, output = run_cli("run", str(path), "--target", str(ref))
    assert code == 0, output


def test_a_short_logged_in_run_against_the_reference_server_finds_nothing(
    mail_server, tmp_path: Path
) -> None:
    for message in MESSAGES:
        mail_server.deliver("alice", message)
    target = load(reference_target(mail_server, tmp_path, "pop3"))
    report = fuzz(
        POP3, target, target.services["pop3"], seed_value=11, max_examples=100,
        login=login_for(target, "pop3"),
    )  # fmt: skip
    assert report.findings == [], [f.message for f in report.findings]
    assert {"TRANSACTION", "TRANSACTION+DELE"} <= report.stats.states
    assert len(mail_server.messages("alice")) == len(MESSAGES)  # QUIT never committed a DELE


def test_cli_pop3_logs_in_by_default_and_exit_codes(mail_server, tmp_path: Path) -> None:
    ref = str(reference_target(mail_server, tmp_path, "pop3"))
    args = ["fuzz", "--protocol", "pop3", "--target", ref, "--max-examples", "20", "--seed", "3"]
    code, out = run_cli(*args, "--out", str(tmp_path / "o"))
    assert code == 0, out
    assert "logged in as alice" in out and "0 finding(s)" in out
    assert run_cli(*args, "--login", "nobody")[0] == 2
