"""Every shipped scenario fails against a server that breaks exactly the rule it checks.

Each case is a scripted server that behaves well except for one thing; the
scenario must fail on that thing (the phrase names it). The toy servers in
test_end_to_end show the same scenarios passing. A guard makes sure every
shipped scenario id has a case here.

POP3 cases run the toy's POP3 session (tests/toymail.py) with one method
overridden, next to an SMTP ``mx`` that fills its maildrops for
``setup.deliver``; the target has the accounts alice and bob.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from scripted import ScriptConn, ScriptedServer
from toymail import ToyMail, ToyPop3

from conformance.results import Status
from conformance.scenario.loader import load_paths
from conformance.scenario.runner import Runner
from conformance.targets import load_target

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {sc.id: sc for sc in load_paths([ROOT / "scenarios"])}

Handler = Callable[[ScriptConn], None]

TARGET = {
    "host": "127.0.0.1",
    "domain": "example.test",
    "timeouts": {"read": 1},
    "accounts": {
        user: {"address": f"{user}@example.test", "username": user, "password": f"{user}-pw"}
        for user in ("alice", "bob")
    },
}


GOOD_END = rb"\r\n\.\r\n"


def smtp_server(
    greeting: str = "220 mx.example.test ESMTP",
    *,
    data_end: bytes = GOOD_END,
    run_after_starttls: bool = False,
    **replies: list[str],
) -> Handler:
    """A well-behaved SMTP responder (an open relay, though) except where told otherwise.

    ``replies`` overrides a verb's answer (key ``VERB``, or ``VERB_TLS`` inside
    TLS; values are reply lines). ``data_end`` is the regex that ends message
    data. ``run_after_starttls`` runs a command pipelined after STARTTLS
    inside the TLS session (the CVE-2011-0411 bug).
    """

    def handle(conn: ScriptConn) -> None:
        conn.sendline(greeting)
        helo = False
        in_mail = False
        tls = False
        carried: list[str] = []
        while True:
            line = carried.pop(0) if carried else conn.recv_line(timeout=10).decode()
            verb = line.split(" ", 1)[0].upper()
            key = f"{verb}_TLS" if tls and f"{verb}_TLS" in replies else verb
            if key in replies:
                for reply in replies[key]:
                    conn.sendline(reply)
                if verb == "QUIT":
                    conn.wait_closed(timeout=3)
                    return
                continue
            if verb in ("EHLO", "HELO"):
                helo, in_mail = True, False
                if verb == "HELO":
                    conn.sendline("250 mx.example.test")
                else:
                    conn.sendline("250-mx.example.test")
                    conn.sendline("250-PIPELINING" if tls else "250-STARTTLS")
                    conn.sendline("250 8BITMIME")
            elif verb == "STARTTLS":
                if run_after_starttls and conn.readable(timeout=0.5):
                    carried.append(conn.recv_line().decode())  # kept across the handshake
                conn.sendline("220 2.0.0 go ahead")
                conn.starttls()
                tls, helo, in_mail = True, bool(carried), False
            elif verb == "MAIL":
                conn.sendline("250 2.1.0 ok" if helo else "503 5.5.1 EHLO first")
                in_mail = helo
            elif verb == "RCPT":
                conn.sendline("250 2.1.5 ok" if in_mail else "503 5.5.1 MAIL first")
            elif verb == "DATA":
                conn.sendline("354 go ahead")
                conn.recv_until(data_end, timeout=10)
                conn.sendline("250 2.0.0 queued")
                in_mail = False
            elif verb == "NOOP":
                conn.sendline("250 2.0.0 ok")
            elif verb == "QUIT":
                conn.sendline("221 2.0.0 bye")
                conn.close()
                return
            else:
                conn.sendline("502 5.5.1 not implemented")

    return handle


class Pop3(ToyPop3):
    """A well-behaved POP3 session (the toy's) with a scripted greeting and canned answers.

    ``replies[VERB]`` lines answer VERB in any state. Subclasses below break one rule each.
    """

    def __init__(
        self, toy: ToyMail, conn: ScriptConn, greeting: str, replies: dict[str, list[str]]
    ) -> None:
        super().__init__(toy, conn)
        self.greeting, self.replies = greeting, replies

    def command(self, line: str) -> bool:
        verb = line.partition(" ")[0].upper()
        if verb not in self.replies:
            return super().command(line)
        for reply in self.replies[verb]:
            self.conn.sendline(reply)
        return True


def pop3_server(
    greeting: str = "+OK ready", session: type[Pop3] = Pop3, **replies: list[str]
) -> dict[str, Handler]:
    """POP3 (``session``'s rules) on the service ``pop3``, and an SMTP ``mx`` that
    delivers into its maildrops for ``setup.deliver``. Accounts as in ``TARGET``."""
    toy = ToyMail({"alice": "alice-pw", "bob": "bob-pw"})
    make = functools.partial(session, greeting=greeting, replies=replies)
    return {"pop3": toy.pop3_handler(make), "mx": toy.smtp_handler()}


class CaseSensitive(Pop3):
    def command(self, line: str) -> bool:
        verb = line.partition(" ")[0]
        if verb != verb.upper():
            self.err("unknown command")
            return True
        return super().command(line)


class NoByteStuffing(Pop3):
    def stuff(self, line: bytes) -> bytes:
        return line


class NoLock(Pop3):
    def open_maildrop(self, who: str) -> bool:
        with self.toy.lock:
            self.toy._pop_locked.discard(who)
        return super().open_maildrop(who)


class AnyPassword(Pop3):
    def do_pass(self, arg: str) -> None:
        super().do_pass(self.toy.accounts.get(self.user or "", arg))


class RetrOfAbsentMessageIsEmpty(Pop3):
    def do_retr(self, arg: str) -> None:
        if arg.isdigit() and int(arg) > len(self.view):
            self.multiline("0 octets", [])
        else:
            super().do_retr(arg)


class RsetKeepsMarks(Pop3):
    def do_rset(self, arg: str) -> None:
        self.ok()


class QuitRemovesNothing(Pop3):
    def update(self) -> None:
        pass


class UpdateOnDrop(Pop3):
    def unlock(self) -> None:
        if self.locked:
            self.update()
        super().unlock()


class TopSendsWholeMessage(Pop3):
    def do_top(self, arg: str) -> None:
        self.do_retr(arg.partition(" ")[0])


class UidlPerSession(Pop3):
    sessions = itertools.count()

    def do_uidl(self, arg: str) -> None:
        session = next(self.sessions)
        self.listing(arg, lambda i: f"s{session}m{i + 1}")


class PassWithoutUser(Pop3):
    def do_pass(self, arg: str) -> None:
        self.user = self.user or "alice"
        super().do_pass(arg)


class CapaShrinksAfterLogin(Pop3):
    def capabilities(self) -> list[str]:
        caps = super().capabilities()
        return [c for c in caps if c not in ("USER", "SASL PLAIN")] if self.locked else caps


class ShortCommandLines(Pop3):
    def command(self, line: str) -> bool:
        if len(line) + 2 > 128:
            self.err("line too long")
            return True
        return super().command(line)


class FlushesInput(Pop3):
    def read_line(self) -> str:
        line = super().read_line()
        while self.conn.readable():  # what came along with the command is dropped
            self.conn.recv_line()
        return line


class StlsLogsIn(Pop3):
    def do_stls(self, arg: str) -> None:
        super().do_stls(arg)
        self.open_maildrop("alice")  # as if the TLS handshake had authenticated alice


class RunsInjected(Pop3):
    def do_stls(self, arg: str) -> None:
        carried = self.conn.recv_line().decode() if self.conn.readable(timeout=0.5) else ""
        super().do_stls(arg)
        if carried:  # kept across the handshake and run inside TLS
            self.command(carried)


class AuthAfterLogin(Pop3):
    TRANSACTION = Pop3.TRANSACTION | {"AUTH"}

    def do_auth(self, arg: str) -> None:
        if self.locked:
            self.ok("already logged in")
        else:
            super().do_auth(arg)


class ChattyChallenge(Pop3):
    def challenge(self, b64: str) -> str:
        return super().challenge(b64 or "go ahead")


class PlainIgnoresPassword(Pop3):
    def sasl_plain(self, response: str) -> str | None:
        _authzid, user, _password = base64.b64decode(response).decode().split("\0")
        return user


def imap_server(greeting: str = "* OK IMAP4rev1 ready", **replies: list[str]) -> Handler:
    """``replies[VERB]`` lines are sent with ``{tag}`` filled in; LOGOUT closes afterwards."""

    def handle(conn: ScriptConn) -> None:
        conn.sendline(greeting)
        while True:
            tag, _, rest = conn.recv_line(timeout=10).decode().partition(" ")
            verb = rest.split(" ", 1)[0].upper()
            if verb in replies:
                for reply in replies[verb]:
                    conn.sendline(reply.format(tag=tag))
            elif verb == "CAPABILITY":
                conn.sendline("* CAPABILITY IMAP4rev1 STARTTLS")
                conn.sendline(f"{tag} OK done")
            elif verb == "LOGOUT":
                conn.sendline("* BYE see you")
                conn.sendline(f"{tag} OK done")
            else:
                conn.sendline(f"{tag} BAD what")
            if verb == "LOGOUT":
                conn.close()
                return

    return handle


# scenario id -> (protocol's server, or a server per service name, breaking exactly the
# rule; phrase in the failure)
CASES: dict[str, tuple[Handler | dict[str, Handler], str]] = {
    "smtp.greeting.220": (
        smtp_server(greeting="220 localhost-without-dots"),
        "expected text matching",
    ),
    "smtp.ehlo.multiline-250": (
        smtp_server(EHLO=["250-mx.example.test", "250-PIPE LINING", "250 -8BITMIME"]),
        "expected text matching",
    ),
    "smtp.helo.single-line": (
        smtp_server(HELO=["250-mx.example.test", "250 PIPELINING"]),
        "expected a single-line reply",
    ),
    "smtp.sequence.mail-before-ehlo": (
        smtp_server(MAIL=["250 2.1.0 ok"]),
        "expected reply code 503",
    ),
    "smtp.sequence.rcpt-before-mail": (
        smtp_server(RCPT=["250 2.1.5 ok"]),
        "expected reply code 503",
    ),
    "smtp.quit.221-then-close": (
        smtp_server(QUIT=["221 2.0.0 bye"]),  # ...and then keeps the connection open
        "expected the server to close the connection",
    ),
    "smtp.starttls.not-advertised-inside-tls": (
        smtp_server(EHLO_TLS=["250-mx.example.test", "250-STARTTLS", "250 8BITMIME"]),
        "expected EHLO keyword(s) STARTTLS to be absent",
    ),
    "smtp.submission.mail-needs-auth": (smtp_server(), "expected reply code 530"),
    "security.smtp.no-open-relay": (smtp_server(), "expected reply code 450 or 451"),
    "security.smtp.smuggling-lf-dot-lf": (
        smtp_server(data_end=rb"\n\.\n|\r\n\.\r\n"),
        "expected silence for 1s, but the server sent",
    ),
    "security.smtp.smuggling-cr-dot-cr": (
        smtp_server(data_end=rb"\r\.\r|\r\n\.\r\n"),
        "expected silence for 1s, but the server sent",
    ),
    "security.smtp.starttls-injection": (
        smtp_server(run_after_starttls=True),
        "expected reply code 503",
    ),
    "pop3.greeting.ok": (pop3_server(greeting="-ERR go away"), "expected +OK"),
    "pop3.capa.multiline-list": (
        pop3_server(CAPA=["+OK capabilities", " USER", "."]),
        "expected the body to match",
    ),
    "pop3.state.stat-before-login": (pop3_server(STAT=["+OK 0 0"]), "expected -ERR"),
    "pop3.command.unknown-err-any-case": (pop3_server(session=CaseSensitive), "expected +OK"),
    "pop3.retr.byte-stuffed": (pop3_server(session=NoByteStuffing), "must be byte-stuffed"),
    "pop3.lock.second-session-refused": (pop3_server(session=NoLock), "expected -ERR"),
    "pop3.auth.wrong-password-err": (pop3_server(session=AnyPassword), "expected -ERR"),
    "pop3.transaction.stat-list-retr": (
        pop3_server(session=RetrOfAbsentMessageIsEmpty),
        "expected -ERR",
    ),
    "pop3.transaction.dele-rset-noop": (
        pop3_server(session=RsetKeepsMarks),
        "expected text matching",
    ),
    "pop3.update.quit-removes-marked": (
        pop3_server(session=QuitRemovesNothing),
        "expected text matching",
    ),
    "pop3.update.drop-deletes-nothing": (
        pop3_server(session=UpdateOnDrop),
        "expected text matching",
    ),
    "pop3.top.headers-and-n-lines": (
        pop3_server(session=TopSendsWholeMessage),
        "expected the body to match",
    ),
    "pop3.uidl.stable-and-well-formed": (
        pop3_server(session=UidlPerSession),
        "expected the body to match",
    ),
    "pop3.auth.pass-needs-user": (pop3_server(session=PassWithoutUser), "expected -ERR"),
    "pop3.capa.same-in-both-states": (
        pop3_server(session=CapaShrinksAfterLogin),
        "expected the body to match",
    ),
    "pop3.limits.255-octet-command": (
        pop3_server(session=ShortCommandLines),
        "expected text matching",
    ),
    "pop3.pipelining.answers-in-order": (pop3_server(session=FlushesInput), "no answer within"),
    "pop3.stls.stays-in-authorization": (pop3_server(session=StlsLogsIn), "expected -ERR"),
    "pop3.sasl.unknown-mechanism-and-second-auth": (
        pop3_server(session=AuthAfterLogin),
        "expected -ERR",
    ),
    "pop3.sasl.empty-challenge-cancel-bad-base64": (
        pop3_server(session=ChattyChallenge),
        "capture 'challenge'",
    ),
    "pop3.sasl.result-sets-state": (pop3_server(session=PlainIgnoresPassword), "expected -ERR"),
    "security.pop3.stls-injection": (pop3_server(session=RunsInjected), "expected -ERR"),
    "imap.greeting.ok": (
        imap_server(greeting="* PREAUTH welcome"),
        "expected an untagged response matching",
    ),
    "imap.capability.one-response-with-version": (
        imap_server(CAPABILITY=["* CAPABILITY STARTTLS IDLE", "{tag} OK done"]),
        "CAPABILITY lists neither IMAP4rev2 nor IMAP4rev1",  # the reader applies RFC 9051 §9
    ),
    "imap.logout.bye-ok-close": (
        imap_server(LOGOUT=["{tag} OK done"]),  # no untagged BYE before the OK
        "expected an untagged response matching /^\\* BYE\\b/",
    ),
}


def test_every_shipped_scenario_has_a_breaking_case():
    assert sorted(SHIPPED) == sorted(CASES)


@pytest.mark.parametrize("scenario_id", sorted(CASES))
def test_shipped_scenario_fails_on_the_broken_rule(scenario_id, tmp_path, test_certs):
    handler, phrase = CASES[scenario_id]
    sc = SHIPPED[scenario_id]
    handlers = handler if isinstance(handler, dict) else {sc.service: handler}
    assert sc.services() <= handlers.keys(), f"no scripted server for {sc.services()}"
    with contextlib.ExitStack() as stack:
        services: dict[str, dict[str, Any]] = {}
        for name in sc.services():
            srv = stack.enter_context(ScriptedServer(handlers[name], certs=test_certs))
            services[name] = {"port": srv.port, "tls": "starttls"}
        target = dict(TARGET, services=services)
        target["tls"] = {"verify": True, "ca_file": str(test_certs.ca_file)}
        (tmp_path / "t.yaml").write_text(yaml.safe_dump(target))
        result = asyncio.run(Runner(load_target(tmp_path / "t.yaml")).run_one(sc))
    assert result.status is Status.FAILED, (result.status, result.message)
    assert phrase in (result.message or ""), result.message
