"""Theory of operation: a permissive model of one POP3 session (RFC 1939, RFC 2449).

The model knows the state (AUTHORIZATION or TRANSACTION, RFC 1939 §3), whether a
USER was accepted (so a PASS may succeed), whether TLS is on, the size of the
maildrop once a STAT told it (messages marked as deleted are not counted, §5), and
which message numbers are marked as deleted. It updates from the answers the server
*actually* gave: a login counts only if it got ``+OK``, a DELE marks only if it got
``+OK``.

What it judges (RFC 1939 §3: "The POP3 server MUST respond to a command issued
when the session is in an incorrect state by responding with a negative status
indicator", and likewise to a syntactically invalid one):

- the greeting is ``+OK`` (or ``-ERR`` and a close);
- commands of the TRANSACTION state (STAT LIST RETR DELE NOOP RSET TOP UIDL) in
  AUTHORIZATION, and USER PASS APOP AUTH STLS in TRANSACTION, get ``-ERR``;
- PASS without an accepted USER gets ``-ERR`` (§7);
- a message number that is 0, negative, not a number, past the maildrop (once STAT
  told its size) or marked as deleted gets ``-ERR`` (§5: "may not refer to a
  message marked as deleted"); a TOP line count that is not a non-negative number
  too; a huge line count is valid (the whole message is sent);
- NOOP, RSET, STAT, LIST and UIDL without argument, CAPA get ``+OK`` (§5, RFC 2449 §5);
- QUIT gets ``+OK`` (or ``-ERR`` from the UPDATE state, §6) and then the close.

Permissive where the RFC leaves a choice: a valid RETR/LIST/TOP/DELE/UIDL may get
``-ERR`` (a busy or broken message); a login may fail and the server may close after
that; a near-miss (missing or extra argument, NUL, 8-bit bytes, an overlong line)
may get either status, since servers are lenient in different ways, and a ``+OK`` to
one makes the deletion marks unknown until the next RSET. An overlong line may be
answered by a close (RFC 2449 §4 limits commands to 255 octets); a line with a bare
CR or LF inside ends the dialogue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from conformance.fuzz.dialogue import Answer, Expectation, Send

__all__ = ["Pop3Model"]

OK, ERR, CONT = "+OK", "-ERR", "+"
_EITHER = frozenset({OK, ERR})
_TRANSACTION_ONLY = {"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL"}
_AUTHORIZATION_ONLY = {"USER", "PASS", "APOP", "AUTH", "STLS"}
_MSG_ARG = {"LIST", "RETR", "DELE", "TOP", "UIDL"}
_NUMBER = re.compile(rb"[0-9]+")
_STAT = re.compile(r"([0-9]+) ([0-9]+)")


def _err(why: str, *, may_close: bool = False) -> Expectation:
    return Expectation(codes=frozenset({ERR}), why=why, may_close=may_close)


def _ok(why: str) -> Expectation:
    return Expectation(codes=frozenset({OK}), why=why)


@dataclass
class Pop3Model:
    transaction: bool = False
    user_ok: bool = False
    tls: bool = False
    total: int | None = None  # messages in the maildrop, deleted ones included
    deleted: set[int] = field(default_factory=set)
    unsure: bool = False  # a near-miss got +OK: the deletion marks are not known
    maybe_gone: bool = False  # a near-miss QUIT got +OK: the server may close now

    def state(self) -> str:
        if not self.transaction:
            return "AUTHORIZATION"
        return "TRANSACTION+DELE" if self.deleted else "TRANSACTION"

    def greeting(self) -> Expectation:
        return Expectation(
            codes=_EITHER,
            why="greeting: +OK, or -ERR to refuse (RFC 1939 §4)",
            may_close=True,
        )

    def expect(self, send: Send) -> Expectation:
        exp = self._expect(send)
        if self.maybe_gone and not exp.may_close:
            exp = Expectation(codes=exp.codes, why=exp.why, closes=exp.closes, may_close=True)
        return exp

    def _args(self, send: Send) -> list[bytes]:
        return send.wire.removesuffix(b"\r\n").split(b" ")[1:]

    def _message(self, arg: bytes) -> str | None:
        """Why ``arg`` is not a message number that may be used now, or None if it may."""
        if not _NUMBER.fullmatch(arg):
            return f"{arg[:20]!r} is not a message number"
        n = int(arg)
        if n == 0:
            return "message 0 does not exist (numbers start at 1)"
        if self.total is not None and n > self.total and not self.unsure:
            return f"message {n} is past the maildrop's {self.total} (from STAT)"
        if n in self.deleted and not self.unsure:
            return f"message {n} is marked as deleted"
        return None

    def _expect(self, send: Send) -> Expectation:
        verb = send.verb
        if send.kind == "sasl":
            return _err("a cancelled SASL exchange ('*'): -ERR (RFC 5034 §4)", may_close=True)
        if send.terminal:
            return Expectation(
                codes=_EITHER | {CONT},
                why="a line with a bare CR or LF inside may be taken as one or two lines, "
                "or refused, and the server may close (RFC 1939 §3)",
                may_close=True,
            )
        if not send.wellformed:
            return Expectation(
                codes=_EITHER,
                why="a near-miss may get +OK or -ERR (RFC 1939 §3)"
                + ("; an overlong line may be closed on (RFC 2449 §4)" if len(send.wire) > 255
                   else ""),
                may_close=len(send.wire) > 255 or verb == "QUIT",
            )  # fmt: skip
        args = self._args(send)
        if verb == "CAPA":
            return _ok("CAPA: +OK and the capability list, in any state (RFC 2449 §5)")
        if verb == "QUIT":
            if self.transaction:
                return Expectation(
                    codes=_EITHER,
                    why="QUIT in TRANSACTION: +OK (or -ERR from UPDATE), then the close "
                    "(RFC 1939 §6)",
                    closes=True,
                )
            return Expectation(
                codes=frozenset({OK}), why="QUIT: +OK, then the close (RFC 1939 §4)", closes=True
            )
        if verb not in _TRANSACTION_ONLY | _AUTHORIZATION_ONLY:
            return _err(f"unknown command {verb}: -ERR (RFC 1939 §3)")
        if verb in _TRANSACTION_ONLY and not self.transaction:
            return _err(f"{verb} in the AUTHORIZATION state: -ERR (RFC 1939 §3)")
        if verb in _AUTHORIZATION_ONLY and self.transaction:
            return _err(f"{verb} in the TRANSACTION state: -ERR (RFC 1939 §3, RFC 2595 §4)")
        if verb == "STLS":
            if self.tls:
                return _err("STLS with TLS already on: -ERR (RFC 2595 §4)")
            return Expectation(codes=_EITHER, why="STLS: +OK or -ERR (RFC 2595 §4)")
        if verb == "PASS" and not self.user_ok:
            return _err("PASS without an accepted USER: -ERR (RFC 1939 §7)", may_close=True)
        if verb in ("USER", "PASS", "APOP"):
            return Expectation(
                codes=_EITHER,
                why=f"{verb}: +OK or -ERR, and the server may close after a failure (RFC 1939 §7)",
                may_close=True,
            )
        if verb == "AUTH":
            return Expectation(
                codes=_EITHER | {CONT},
                why="AUTH: a '+ ' challenge, +OK or -ERR (RFC 5034 §4)",
                may_close=True,
            )
        if verb in ("NOOP", "RSET"):
            return _ok(f"{verb}: +OK (RFC 1939 §5)")
        if verb == "STAT":
            return _ok("STAT: +OK nn mm (RFC 1939 §5)")
        if verb in ("LIST", "UIDL") and not args:
            return _ok(f"{verb} without argument: +OK and the list (RFC 1939 §5, §7)")
        if verb in _MSG_ARG and args:
            bad = self._message(args[0])
            if bad is None and verb == "TOP" and (len(args) < 2 or not _NUMBER.fullmatch(args[1])):
                bad = "TOP needs a non-negative number of lines"
            if bad is not None:
                return _err(f"{verb}: {bad}: -ERR (RFC 1939 §5, §7)")
            return Expectation(
                codes=_EITHER,
                why=f"{verb} of a message that exists and is not deleted: +OK (or -ERR for "
                "a message the server cannot read) (RFC 1939 §5, §7)",
            )
        return Expectation(codes=_EITHER, why=f"{verb}: +OK or -ERR (RFC 1939 §3)")

    def observe(self, send: Send, code: Answer, answer: Any = None) -> Send | None:
        verb, ok = send.verb, code == OK
        if verb in ("STLS", "STARTTLS") and ok:
            self.tls = True
        if code == CONT:  # a SASL challenge: cancel the exchange (RFC 5034 §4)
            return Send(verb="AUTH", wire=b"*\r\n", kind="sasl")
        if not send.wellformed:
            if ok and self.transaction:
                self.unsure = True
            if ok and verb == "QUIT":
                self.maybe_gone = True
            return None
        if verb == "USER":
            self.user_ok = ok
        elif verb in ("PASS", "APOP") or (verb == "AUTH" and send.kind != "sasl"):
            if ok and not self.transaction:
                self.transaction = True
        elif verb == "STAT" and ok and answer is not None:
            m = _STAT.match(getattr(answer, "text", ""))
            if m and not self.unsure:
                self.total = int(m.group(1)) + len(self.deleted)
        elif verb == "DELE" and ok:
            args = self._args(send)
            if args and _NUMBER.fullmatch(args[0]):
                self.deleted.add(int(args[0]))
        elif verb == "RSET" and ok:
            self.deleted.clear()
            self.unsure = False
        return None
