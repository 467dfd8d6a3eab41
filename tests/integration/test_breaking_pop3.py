"""The POP3 scenarios added for RFC 1939, 2449, 2595, 3206 and 5034 each fail on a broken rule.

Each case runs the toy POP3 session (tests/toymail.py, through ``pop3_server`` of
test_shipped_scenarios_fail.py) with exactly one rule broken, next to an SMTP
``mx`` that fills its maildrops for ``setup.deliver``; the phrase names what the
scenario must report.
"""

from __future__ import annotations

import base64
import binascii

import pytest
from breaking_support import Handler, run_breaking
from test_shipped_scenarios_fail import Pop3, pop3_server


class LongErrorText(Pop3):
    """-ERR for an unknown command carries a help text far past 512 octets."""

    def command(self, line: str) -> bool:
        verb = line.partition(" ")[0].upper()
        if not hasattr(self, f"do_{verb.lower()}"):
            self.err("unknown command; known: " + "USER PASS STAT LIST RETR DELE " * 20)
            return True
        return super().command(line)


class DeleRenumbers(Pop3):
    """DELE drops the message from the session's numbering at once."""

    def do_dele(self, arg: str) -> None:
        if (i := self.pick(arg)) is not None:
            del self.view[i]
            self.ok(f"message {i + 1} deleted")


class QuitBeforeLoginStaysOpen(Pop3):
    """QUIT in the AUTHORIZATION state answers +OK but keeps the connection open."""

    def do_quit(self, arg: str) -> bool:
        if self.locked:
            return super().do_quit(arg)
        self.ok("bye")
        return True


class UidlOfDeleted(Pop3):
    """UIDL n still answers for a message marked as deleted."""

    def do_uidl(self, arg: str) -> None:
        if arg.isdigit() and int(arg) - 1 in self.deleted:
            i = int(arg) - 1
            self.ok(f"{i + 1} {self.view[i][0]}")
            return
        super().do_uidl(arg)


class TopLinesOptional(Pop3):
    """TOP with the number of lines left out sends the headers, as if it were 0."""

    def do_top(self, arg: str) -> None:
        super().do_top(arg if " " in arg else f"{arg} 0")


class UserAfterLogin(Pop3):
    """USER is taken in the TRANSACTION state too."""

    TRANSACTION = Pop3.TRANSACTION | {"USER"}


class LockedWithoutCode(Pop3):
    """A login refused for a locked maildrop carries no [IN-USE] code."""

    def err(self, text: str) -> None:
        super().err(text.removeprefix("[IN-USE] "))


class AuthRespCode(Pop3):
    """The toy, announcing AUTH-RESP-CODE (its credential failures say [AUTH])."""

    def capabilities(self) -> list[str]:
        return [*super().capabilities(), "AUTH-RESP-CODE"]


class PassFailureUncoded(AuthRespCode):
    """A wrong password after USER gets -ERR without [AUTH]."""

    in_pass = False

    def do_pass(self, arg: str) -> None:
        self.in_pass = True
        try:
            super().do_pass(arg)
        finally:
            self.in_pass = False

    def err(self, text: str) -> None:
        super().err(text.removeprefix("[AUTH] ") if self.in_pass else text)


class SaslFailureUncoded(AuthRespCode):
    """A failed AUTH PLAIN gets -ERR without [AUTH]."""

    in_auth = False

    def do_auth(self, arg: str) -> None:
        self.in_auth = True
        try:
            super().do_auth(arg)
        finally:
            self.in_auth = False

    def err(self, text: str) -> None:
        super().err(text.removeprefix("[AUTH] ") if self.in_auth else text)


class SaslLoginUnlocked(Pop3):
    """A login through AUTH opens the maildrop without taking its lock."""

    def do_auth(self, arg: str) -> None:
        mech, _, response = arg.partition(" ")
        if mech.upper() != "PLAIN":
            super().do_auth(arg)
            return
        who = self.sasl_plain(response or self.challenge(""))
        if who is None:
            self.err("[AUTH] invalid credentials")
            return
        with self.toy.lock:
            self.locked = who  # TRANSACTION state, but not in toy._pop_locked
            self.view = list(zip(self.toy._sync(who), self.toy.mailboxes[who], strict=True))
            self.deleted = set()
        self.ok(f"maildrop ready, {len(self.view)} messages")


class StlsInsideTlsAccepted(Pop3):
    """STLS inside TLS answers +OK (and starts nothing)."""

    def do_stls(self, arg: str) -> None:
        if self.conn.tls:
            self.ok("already secure")
            return
        super().do_stls(arg)


class StlsAlwaysAnnounced(Pop3):
    """CAPA lists STLS in every state."""

    def capabilities(self) -> list[str]:
        caps = super().capabilities()
        return caps if "STLS" in caps else [*caps, "STLS"]


class StateFromBatchStart(Pop3):
    """Commands that arrive together are all judged in the state the first one found.

    STAT pipelined behind a successful PASS is still refused as "not logged in".
    """

    batch_locked: str | None = None
    more = False

    def read_line(self) -> str:
        line = super().read_line()
        if not self.more:  # the first line of a new read
            self.batch_locked = self.locked
        self.more = self.conn.readable()
        return line

    def command(self, line: str) -> bool:
        verb = line.partition(" ")[0].upper()
        if self.batch_locked is None and verb in {"STAT", "LIST", "NOOP"}:
            self.err("not logged in")
            return True
        return super().command(line)


class ChallengeAgainOnBadBase64(Pop3):
    """An answer that is not base64 gets the challenge again instead of -ERR."""

    def challenge(self, b64: str) -> str:
        while True:
            answer = super().challenge(b64)
            if answer == "*":
                return answer
            try:
                base64.b64decode(answer, validate=True)
            except binascii.Error:
                continue
            return answer


class SaslCommaList(Pop3):
    """The SASL capability separates its mechanisms with commas."""

    def capabilities(self) -> list[str]:
        return ["SASL PLAIN,LOGIN" if c == "SASL PLAIN" else c for c in super().capabilities()]


CASES: dict[str, tuple[Handler | dict[str, Handler], str]] = {
    "pop3.response.status-line-512-octets": (
        pop3_server(session=LongErrorText),
        "line_within_512_octets",
    ),
    "pop3.transaction.numbers-fixed-after-dele": (
        pop3_server(session=DeleRenumbers),
        "expected +OK",
    ),
    "pop3.quit.authorization-no-update": (
        pop3_server(session=QuitBeforeLoginStaysOpen),
        "expected the server to close the connection",
    ),
    "pop3.uidl.single-form-and-deleted": (pop3_server(session=UidlOfDeleted), "expected -ERR"),
    "pop3.top.bad-arguments-err": (pop3_server(session=TopLinesOptional), "expected -ERR"),
    "pop3.apop.fresh-timestamp-bad-digest": (
        pop3_server(greeting="+OK toy ready <1896.697170952@toy.test>"),
        "expected text matching",
    ),
    "pop3.state.commands-checked-against-state": (
        pop3_server(session=UserAfterLogin),
        "expected -ERR",
    ),
    "pop3.resp-codes.in-use-when-locked": (
        pop3_server(session=LockedWithoutCode),
        "expected response code [IN-USE]",
    ),
    "pop3.resp-codes.auth-on-wrong-password": (
        pop3_server(session=PassFailureUncoded),
        "expected response code [AUTH]",
    ),
    "pop3.resp-codes.auth-on-failed-sasl": (
        pop3_server(session=SaslFailureUncoded),
        "expected response code [AUTH]",
    ),
    "pop3.sasl.auth-locks-maildrop": (pop3_server(session=SaslLoginUnlocked), "expected -ERR"),
    "pop3.stls.refused-inside-tls": (pop3_server(session=StlsInsideTlsAccepted), "expected -ERR"),
    "pop3.stls.not-announced-after-login": (
        pop3_server(session=StlsAlwaysAnnounced),
        "expected the body to match",
    ),
    "pop3.pipelining.login-in-one-write": (
        pop3_server(session=StateFromBatchStart),
        "expected +OK",
    ),
    "pop3.sasl.undecodable-response-err": (
        pop3_server(session=ChallengeAgainOnBadBase64),
        "got a SASL continuation",
    ),
    "pop3.sasl.capa-lists-mechanisms": (
        pop3_server(session=SaslCommaList),
        "expected the body to match",
    ),
}


@pytest.mark.parametrize("scenario_id", sorted(CASES))
def test_fails_on_the_broken_rule(scenario_id, tmp_path, test_certs):
    handler, phrase = CASES[scenario_id]
    run_breaking(scenario_id, handler, phrase, tmp_path, test_certs)
