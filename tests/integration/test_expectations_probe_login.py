"""``requires:`` for POP3 and IMAP probes after login too: servers such as Dovecot list MOVE,
UIDPLUS, CONDSTORE... only once a user is logged in (RFC 9051 §6.2.3 and §7.2.2 allow it;
RFC 2449 §5 lets POP3 announce more after login). When the target has an account, the
probe logs in as the first one (after STARTTLS if the service uses it; IMAP LOGIN, or
AUTHENTICATE PLAIN when LOGINDISABLED; POP3 USER/PASS, or AUTH PLAIN), asks again and
takes the union. A failed login keeps what was advertised before it, and the "not
applicable" message says so. The POP3 probe takes its turn on the maildrop (RFC 1939 §4)
like scenarios do. SMTP is probed by EHLO only (tests/integration/test_expectations_requires.py)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from pathlib import Path

import yaml
from engine_helpers import ACCOUNTS, assert_passed, explain, run_scenario
from scripted import ScriptConn, ScriptedServer

from conformance.results import Status
from conformance.scenario.loader import load_paths
from conformance.scenario.runner import Runner
from conformance.targets import load_target

PRE = "IMAP4rev2 ID IDLE"
POST = "IMAP4rev2 ID IDLE MOVE UIDPLUS"
STEPS = "- send: a1 NOOP\n  expect: {tagged: OK}\n"


class Imap:
    """CAPABILITY lists ``pre`` before login and ``post`` after; LOGIN (unless
    ``logindisabled``) and AUTHENTICATE PLAIN log in with alice's password "pw"."""

    def __init__(self, pre: str = PRE, post: str = POST, *, logindisabled: bool = False):
        self.pre, self.post, self.logindisabled = pre, post, logindisabled
        self.lines: list[str] = []

    def __call__(self, conn: ScriptConn) -> None:
        pre = self.pre + (" LOGINDISABLED AUTH=PLAIN SASL-IR" if self.logindisabled else "")
        conn.sendline(f"* OK [CAPABILITY {pre}] ready")
        logged_in = False
        while True:
            try:
                line = conn.recv_line(5).decode()
            except (EOFError, TimeoutError):
                return
            self.lines.append(line)
            tag, _, rest = line.partition(" ")
            verb, _, args = rest.partition(" ")
            verb = verb.upper()
            if verb == "CAPABILITY":
                conn.sendline(f"* CAPABILITY {self.post if logged_in else pre}")
                conn.sendline(f"{tag} OK done")
            elif verb == "LOGIN" and not self.logindisabled:
                logged_in = args == '"alice" "pw"'
                conn.sendline(f"{tag} OK logged in" if logged_in else f"{tag} NO wrong password")
            elif verb == "AUTHENTICATE" and args.upper().startswith("PLAIN "):
                token = base64.b64decode(args.split()[1])
                logged_in = token == b"\0alice\0pw"
                conn.sendline(f"{tag} OK logged in" if logged_in else f"{tag} NO wrong password")
            elif verb in ("LOGIN", "AUTHENTICATE"):
                conn.sendline(f"{tag} NO not that way")
            elif verb == "LOGOUT":
                conn.sendline("* BYE bye")
                conn.sendline(f"{tag} OK done")
                return
            else:
                conn.sendline(f"{tag} OK done")


def test_a_capability_listed_only_after_login_makes_the_scenario_applicable(tmp_path):
    server = Imap()
    result = run_scenario(tmp_path, server, STEPS, protocol="imap", header="requires: [MOVE]\n")
    assert_passed(result)
    assert 'LOGIN "alice" "pw"' in [line.partition(" ")[2] for line in server.lines]
    assert "LOGOUT" in [line.partition(" ")[2] for line in server.lines]


def test_capabilities_before_login_still_count(tmp_path):
    """The union: a capability listed only before login (here IDLE is dropped after) counts."""
    server = Imap(post="IMAP4rev2 MOVE")
    result = run_scenario(tmp_path, server, STEPS, protocol="imap", header="requires: [IDLE]\n")
    assert_passed(result)


def test_not_advertised_before_or_after_login_is_not_applicable(tmp_path):
    result = run_scenario(tmp_path, Imap(), STEPS, protocol="imap", header="requires: [NOTIFY]\n")
    assert result.status is Status.NOT_APPLICABLE, explain(result)
    assert result.message == (
        "service 'imap' does not advertise NOTIFY (asked before and after logging in as 'alice')"
    )


def test_logindisabled_makes_the_probe_use_authenticate_plain(tmp_path):
    server = Imap(logindisabled=True)
    result = run_scenario(tmp_path, server, STEPS, protocol="imap", header="requires: [MOVE]\n")
    assert_passed(result)
    token = base64.b64encode(b"\0alice\0pw").decode()
    assert f"AUTHENTICATE PLAIN {token}" in [line.partition(" ")[2] for line in server.lines]


def test_the_probe_logs_in_after_starttls(tmp_path, test_certs):
    """Dovecot's way: LOGINDISABLED before TLS, LOGIN inside it, MOVE only after login."""
    lines: list[str] = []

    def handle(conn: ScriptConn) -> None:
        conn.sendline(f"* OK [CAPABILITY {PRE} STARTTLS LOGINDISABLED] ready")
        logged_in = False
        while True:
            try:
                line = conn.recv_line(5).decode()
            except (EOFError, TimeoutError):
                return
            lines.append(("tls " if conn.tls else "") + line)
            tag, _, rest = line.partition(" ")
            verb = rest.partition(" ")[0].upper()
            if verb == "CAPABILITY":
                caps = POST if logged_in else PRE if conn.tls else f"{PRE} STARTTLS LOGINDISABLED"
                conn.sendline(f"* CAPABILITY {caps}")
                conn.sendline(f"{tag} OK done")
            elif verb == "STARTTLS":
                conn.sendline(f"{tag} OK begin TLS")
                conn.starttls()
            elif verb == "LOGIN":
                logged_in = conn.tls
                conn.sendline(f"{tag} OK logged in" if conn.tls else f"{tag} NO LOGINDISABLED")
            else:
                conn.sendline(f"{tag} OK done")

    result = run_scenario(
        tmp_path,
        handle,
        STEPS,
        protocol="imap",
        tls="starttls",
        certs=test_certs,
        header="requires: [MOVE]\n",
    )
    assert_passed(result)
    verbs = [" ".join(w for w in line.split()[:3] if not w.startswith("h")) for line in lines]
    assert verbs[:6] == [
        "CAPABILITY",
        "STARTTLS",
        "tls CAPABILITY",
        "tls LOGIN",
        "tls CAPABILITY",
        "tls LOGOUT",
    ]


def test_a_failed_login_keeps_the_capabilities_from_before_and_says_so(tmp_path):
    server = Imap()
    header = "requires: [MOVE]\n"
    result = run_scenario(tmp_path, server, STEPS, protocol="imap", header=header)
    assert_passed(result)

    wrong = {**ACCOUNTS, "alice": {**ACCOUNTS["alice"], "password": "not-pw"}}
    result = _run_with_accounts(tmp_path, server, wrong, "requires: [MOVE]\n")
    assert result.status is Status.NOT_APPLICABLE, explain(result)
    assert result.message == (
        "service 'imap' does not advertise MOVE (asked before login only: the probe's login "
        "as 'alice' failed: 'h2 NO wrong password')"
    )
    result = _run_with_accounts(tmp_path, server, wrong, "requires: [IDLE]\n")
    assert result.status is Status.PASSED, explain(result)


def test_without_an_account_the_probe_asks_before_login_only(tmp_path):
    server = Imap()
    result = _run_with_accounts(tmp_path, server, {}, "requires: [MOVE]\n")
    assert result.status is Status.NOT_APPLICABLE, explain(result)
    assert "(asked before login only: the target has no account)" in (result.message or "")
    assert not any(" LOGIN " in f" {line} " for line in server.lines)


def test_pop3_capa_after_login(tmp_path):
    lines: list[str] = []

    def handle(conn: ScriptConn) -> None:
        conn.sendline("+OK ready")
        state = "auth"
        while True:
            try:
                line = conn.recv_line(5).decode()
            except (EOFError, TimeoutError):
                return
            lines.append(line)
            verb = line.split()[0].upper()
            if verb == "CAPA":
                extra = "X-AFTER-LOGIN\r\n" if state == "trans" else ""
                conn.send(f"+OK\r\nUSER\r\nUIDL\r\n{extra}.\r\n")
            elif verb == "USER":
                conn.sendline("+OK send PASS")
            elif verb == "PASS":
                state = "trans" if line == "PASS pw" else "auth"
                conn.sendline("+OK in" if state == "trans" else "-ERR [AUTH] no")
            elif verb == "QUIT":
                conn.sendline("+OK bye")
                return
            else:
                conn.sendline("+OK")

    steps = "- send: NOOP\n  expect: {status: ok}\n"
    result = run_scenario(
        tmp_path, handle, steps, protocol="pop3", header="requires: [X-AFTER-LOGIN]\n"
    )
    assert_passed(result)
    assert lines[:5] == ["CAPA", "USER alice", "PASS pw", "CAPA", "QUIT"]


def test_the_pop3_probe_takes_its_turn_on_the_maildrop(tmp_path):
    """A scenario logged in as alice holds her maildrop for a while; another scenario's
    requirement needs a probe, which logs in as alice too: it waits for its turn, so
    neither meets a locked maildrop (RFC 1939 §4)."""
    holder = threading.Lock()
    refused: list[str] = []

    def handle(conn: ScriptConn) -> None:
        conn.sendline("+OK ready")
        locked = False
        try:
            while True:
                try:
                    line = conn.recv_line(5).decode()
                except (EOFError, TimeoutError):
                    return
                verb = line.split()[0].upper()
                if verb == "CAPA":
                    extra = "X-AFTER-LOGIN\r\n" if locked else ""
                    conn.send(f"+OK\r\nUSER\r\n{extra}.\r\n")
                elif verb == "USER":
                    conn.sendline("+OK send PASS")
                elif verb == "PASS":
                    locked = holder.acquire(blocking=False)
                    if not locked:
                        refused.append(line)
                    conn.sendline("+OK in" if locked else "-ERR [IN-USE] maildrop locked")
                elif verb == "QUIT":
                    conn.sendline("+OK bye")
                    return
                else:
                    if verb == "NOOP":
                        time.sleep(0.3)
                    conn.sendline("+OK")
        finally:
            if locked:
                holder.release()

    holds = """
    - auth: {mechanism: native, account: alice}
    - send: NOOP
      expect: {status: ok}
    - send: NOOP
      expect: {status: ok}
    - send: QUIT
      expect: {status: ok}
    """
    needs_probe = "- send: STAT\n  expect: {status: ok}\n"
    with ScriptedServer(handle) as srv:
        target = _target_file(tmp_path, {"pop3": srv.port}, ACCOUNTS)
        first = _scenario(tmp_path, "holds", holds, "")
        second = _scenario(tmp_path, "probes", needs_probe, "requires: [X-AFTER-LOGIN]\n")
        scenarios = load_paths([first, second], accounts={"alice"})
        results = asyncio.run(Runner(load_target(target), jobs=4).run(scenarios))
    for result in results:
        assert result.status is Status.PASSED, explain(result)
    assert refused == []


# -- helpers -------------------------------------------------------------------------


def _target_file(tmp_path: Path, ports: dict[str, int], accounts: dict) -> Path:
    target = {
        "host": "127.0.0.1",
        "domain": "example.test",
        "timeouts": {"connect": 3, "read": 5},
        "services": {name: {"port": port, "tls": "none"} for name, port in ports.items()},
        "accounts": accounts,
    }
    path = tmp_path / "target.yaml"
    path.write_text(yaml.safe_dump(target, sort_keys=False), encoding="utf-8")
    return path


def _scenario(tmp_path: Path, name: str, steps: str, header: str) -> Path:
    import textwrap

    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"id: probe.{name}\nprotocol: pop3\ntitle: {name}\n{header}steps:\n"
        + textwrap.dedent(steps).strip("\n")
        + "\n",
        encoding="utf-8",
    )
    return path


def _run_with_accounts(tmp_path: Path, handler, accounts: dict, header: str):
    with ScriptedServer(handler) as srv:
        target = load_target(_target_file(tmp_path, {"imap": srv.port}, accounts))
        path = tmp_path / "scenario.yaml"
        path.write_text(
            f"id: probe.case\nprotocol: imap\ntitle: t\n{header}steps:\n{STEPS}", encoding="utf-8"
        )
        (scenario,) = load_paths([path], accounts=set(target.accounts))
        return asyncio.run(Runner(target).run_one(scenario))
