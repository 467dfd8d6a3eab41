"""Theory of operation: a permissive model of one SMTP session (RFC 5321).

The model knows three facts: whether the client has been greeted (an EHLO/HELO
got 250), whether a mail transaction is open (MAIL got 250) and how many
recipients were accepted (RCPT got 2xx). Before each command it predicts the set of
reply codes the server may give; after the answer it updates from the code the
server *actually* gave, so a server that refuses a recipient (which RFC 5321 always
allows) simply leads the model down another path.

It is deliberately permissive where RFC 5321 leaves a choice:

- any 4xx is allowed for any command (transient trouble, RFC 5321 §4.2.1), and 421
  may be followed by a close (RFC 5321 §3.8);
- a server may refuse any sender or recipient with 5xx (RFC 5321 §4.2.2 lists
  550, 551, 552, 553, 555 and more);
- a server may accept MAIL before EHLO/HELO (many do), so that is not judged;
- near-misses (a command line that breaks the grammar) may get any 2xx, 4xx or 5xx:
  servers are lenient in different ways (RFC 5321 §4.1.1 "Postel").

What it does judge: reply codes outside 2xx/4xx/5xx except DATA's 354; 354
without an accepted recipient (RFC 5321 §4.1.1.4: 503 or 554); RCPT outside a
transaction (RFC 5321 §4.1.4: 503); RSET and NOOP must answer 250
(§4.1.1.5, §4.1.1.9); QUIT must answer 221 and close (§4.1.1.10); EHLO/HELO
accept with 250 only (§4.3.2); after 221 the server closes.

It also lists the messages whose end of data got 2xx, with the recipients it is
sure of (:class:`Delivered`), for the retrieval check after the dialogue
(:mod:`conformance.fuzz.retrieve`): each message's Message-ID carries a token of
its own (:func:`message_token`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from conformance.fuzz.dialogue import Answer, Expectation, Send

__all__ = ["SmtpModel", "all_codes", "message", "message_token"]


def all_codes(first: int) -> frozenset[int]:
    """Every Reply-code with this first digit (RFC 5321 §4.2: second 0-5, third 0-9)."""
    return frozenset(
        first * 100 + second * 10 + third for second in range(6) for third in range(10)
    )


T4 = all_codes(4)  # RFC 5321 §4.2.1: transient failure, allowed for every command
P5 = all_codes(5)
P2 = all_codes(2)
ANY = P2 | T4 | P5


def message_token(index: int) -> str:
    """The token in the Message-ID of the dialogue's ``index``-th message (from 1):
    ``fuzz.{run}.N``, where ``{run}`` is the dialogue's token (the oracle fills it in,
    and it stays the ``{run}`` variable in a saved scenario)."""
    return f"fuzz.{{run}}.{index}"


def message(index: int) -> Send:
    """What is sent after the ``index``-th 354 of a dialogue (a scenario's ``data:`` step).

    Its Message-ID carries :func:`message_token`, so the retrieval check can find it
    in the recipient's mailbox (docs/fuzzing.md, "a message acknowledged is retrievable").
    """
    token = message_token(index)
    text = f"Message-ID: <{token}@fuzz.test>\nSubject: fuzz {index}\n\nfuzz\n"
    wire = text.replace("\n", "\r\n").encode("ascii") + b".\r\n"
    return Send(verb="DATA", wire=wire, kind="data", text=text)


_RCPT = re.compile(rb"(?i)RCPT TO:<([^<>\s]+)>\r\n\Z")


@dataclass(frozen=True)
class Delivered:
    """A message whose end of data got 2xx: its number in the dialogue (its token is
    :func:`message_token`) and the recipients the model is sure it was accepted for
    (well-formed ``RCPT TO:<address>`` lines that got 2xx in its transaction)."""

    index: int
    recipients: tuple[str, ...]


@dataclass
class SmtpModel:
    greeted: bool = False
    mail: bool = False
    recipients: int = 0
    in_data: bool = False
    unsure: bool = False  # a 354 can no longer be ruled out (see observe)
    messages: int = 0  # 354s so far: the number of the next message's token
    accepted: list[str] = field(default_factory=list)  # sure recipients (see Delivered)
    delivered: list[Delivered] = field(default_factory=list)  # for the retrieval check

    def state(self) -> str:
        if self.in_data:
            return "DATA"
        if self.recipients:
            return "RCPT"
        if self.mail:
            return "MAIL"
        return "GREETED" if self.greeted else "CONNECTED"

    def greeting(self) -> Expectation:
        # RFC 5321 §3.1: 220 to go on, 554 to refuse (a 421 also ends it, §3.8).
        return Expectation(
            codes=frozenset({220, 554}) | T4,
            why="greeting: 220, or 554/4xx to refuse (RFC 5321 §3.1)",
            may_close=True,
        )

    def expect(self, send: Send) -> Expectation:
        verb = send.verb
        if send.kind == "data":
            return Expectation(
                codes=frozenset({250}) | T4 | P5,
                why="end of message data: 250, 4xx or 5xx (RFC 5321 §4.1.1.4, §4.3.2)",
            )
        if send.terminal:
            return Expectation(
                codes=ANY | {354},
                why="a line with a bare CR or LF inside may be taken as one or two lines "
                "or refused, and the server may close (RFC 5321 §2.3.8, §7.8)",
                may_close=True,
            )
        no_rcpt = not (self.mail and self.recipients)
        if verb == "DATA" and no_rcpt and not self.unsure:
            ok = frozenset({503, 554}) if send.wellformed else P5
            return Expectation(
                codes=ok | T4,
                why="DATA without an accepted recipient: 503 or 554, never 354 "
                "(RFC 5321 §4.1.1.4, §3.3)",
            )
        if not send.wellformed:
            codes = ANY | ({354} if verb == "DATA" else set())
            return Expectation(
                codes=frozenset(codes),
                why="a malformed command may get any 2xx, 4xx or 5xx reply, and no close "
                "(RFC 5321 §4.2, §4.1.1)",
                may_close=verb == "QUIT",
            )
        if verb in ("EHLO", "HELO"):
            return Expectation(
                codes=frozenset({250}) | T4 | P5,
                why=f"{verb}: 250, or 4xx/5xx (RFC 5321 §4.3.2)",
            )
        if verb == "MAIL":
            return Expectation(
                codes=frozenset({250}) | T4 | P5,
                why="MAIL: 250, or a 4xx/5xx refusal (RFC 5321 §4.3.2)",
            )
        if verb == "RCPT":
            if not self.mail:
                return Expectation(
                    codes=frozenset({503}) | T4,
                    why="RCPT outside a mail transaction: 503 (RFC 5321 §4.1.4, §3.3)",
                )
            return Expectation(
                codes=frozenset({250, 251}) | T4 | P5,
                why="RCPT: 250/251, or a 4xx/5xx refusal (RFC 5321 §4.3.2)",
            )
        if verb == "DATA":
            return Expectation(
                codes=frozenset({354}) | T4 | P5,
                why="DATA after an accepted recipient: 354, or 4xx/5xx (RFC 5321 §4.3.2)",
            )
        if verb == "RSET":
            return Expectation(
                codes=frozenset({250}) | T4,
                why="RSET: 250 (RFC 5321 §4.1.1.5)",
            )
        if verb == "NOOP":
            return Expectation(codes=frozenset({250}) | T4, why="NOOP: 250 (RFC 5321 §4.1.1.9)")
        if verb in ("VRFY", "EXPN"):
            return Expectation(
                codes=frozenset({250, 251, 252}) | T4 | P5,
                why=f"{verb}: 250/251/252 or 4xx/5xx (RFC 5321 §3.5.3, §4.3.2)",
            )
        if verb == "HELP":
            return Expectation(
                codes=frozenset({211, 214}) | T4 | P5,
                why="HELP: 211/214 or 4xx/5xx (RFC 5321 §4.1.1.8, §4.3.2)",
            )
        if verb == "QUIT":
            return Expectation(
                codes=frozenset({221}) | T4,
                why="QUIT: 221, then the server closes (RFC 5321 §4.1.1.10)",
                closes=True,
            )
        return Expectation(codes=ANY, why=f"{verb}: any 2xx/4xx/5xx (RFC 5321 §4.2)")

    def observe(self, send: Send, code: Answer, answer: Any = None) -> Send | None:
        assert isinstance(code, int)
        if send.kind == "data":
            if 200 <= code < 300 and self.accepted:
                self.delivered.append(Delivered(self.messages, tuple(self.accepted)))
            self.in_data = False
            self.mail, self.recipients, self.unsure = False, 0, False
            self.accepted = []
            return None
        verb, ok = send.verb, 200 <= code < 300
        if ok and verb in ("EHLO", "HELO", "MAIL", "RSET"):
            # may have started or ended a transaction (also as a near-miss a lenient
            # server took): only recipients accepted after it are sure
            self.accepted = []
        if verb in ("EHLO", "HELO") and code == 250:
            # RFC 5321 §4.1.4: EHLO/HELO also clears any transaction, as RSET does
            self.greeted, self.mail, self.recipients, self.unsure = True, False, 0, False
        elif verb == "MAIL" and code == 250:
            # A second MAIL inside a transaction is a client error (RFC 5321 §4.1.4) whose
            # effect on the recipients already accepted the RFC does not fix: unsure.
            self.unsure = self.unsure or self.recipients > 0
            self.mail, self.recipients = True, 0
        elif verb == "RCPT" and ok and self.mail:
            self.recipients += 1
            rcpt = _RCPT.match(send.wire)
            if send.wellformed and rcpt is not None:
                self.accepted.append(rcpt.group(1).decode("utf-8", "replace"))
        elif verb == "RSET" and code == 250:
            self.mail, self.recipients, self.unsure = False, 0, False
        elif verb == "DATA" and code == 354:
            self.in_data = True
            self.messages += 1
            return message(self.messages)
        if ok and not send.wellformed:
            self.unsure = True  # what a lenient server made of a malformed line is unknown
        return None
