"""The SMTP session state machine, as data (RFC 5321 §4.1.4, §3.3; RFC 3207 §4.2).

Theory of operation
-------------------
Two rules, after h11: everything about which command may come when lives in
this table, and the table does not know which role uses it. The server asks
:func:`allowed` before running a command (and answers 503 when not); a client
or the fuzzer can ask the same question before sending one.

The table says where a *successful* command leads. A command that fails
(501, 550, ...) leaves the state as it was; the handler decides success.
``RSET``, ``NOOP``, ``HELP``, ``VRFY``, ``QUIT`` are allowed in every state
(RFC 5321 §4.1.4: they "may be issued at any time"); EHLO/HELO too, and an
accepted one resets the transaction like RSET.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["ANYTIME", "TRANSITIONS", "SmtpState", "allowed", "next_state"]


class SmtpState(enum.Enum):
    GREETED = "greeted"  # 220 sent; no EHLO/HELO yet
    READY = "ready"  # EHLO/HELO accepted; no transaction
    MAIL = "mail"  # MAIL accepted; no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # 354 sent; reading the message


#: Commands valid in every state except DATA; where they lead is below.
ANYTIME: Final = frozenset({"NOOP", "HELP", "VRFY", "EXPN", "RSET", "QUIT", "EHLO", "HELO"})

#: (state, verb) -> state after the command succeeded.
TRANSITIONS: Final[dict[tuple[SmtpState, str], SmtpState]] = {
    # greeting exchange (RFC 5321 §4.1.1.1); STARTTLS and AUTH need it first
    (SmtpState.GREETED, "EHLO"): SmtpState.READY,
    (SmtpState.GREETED, "HELO"): SmtpState.READY,
    (SmtpState.READY, "EHLO"): SmtpState.READY,
    (SmtpState.READY, "HELO"): SmtpState.READY,
    # RFC 3207 §4.2: after the handshake the session is back at the start
    (SmtpState.READY, "STARTTLS"): SmtpState.GREETED,
    # RFC 4954 §4: AUTH only outside a transaction
    (SmtpState.READY, "AUTH"): SmtpState.READY,
    # the mail transaction (RFC 5321 §3.3)
    (SmtpState.READY, "MAIL"): SmtpState.MAIL,
    (SmtpState.MAIL, "RCPT"): SmtpState.RCPT,
    (SmtpState.RCPT, "RCPT"): SmtpState.RCPT,
    (SmtpState.RCPT, "DATA"): SmtpState.DATA,
    # EHLO/HELO in a transaction reset it (RFC 5321 §4.1.4)
    (SmtpState.MAIL, "EHLO"): SmtpState.READY,
    (SmtpState.MAIL, "HELO"): SmtpState.READY,
    (SmtpState.RCPT, "EHLO"): SmtpState.READY,
    (SmtpState.RCPT, "HELO"): SmtpState.READY,
}


def allowed(state: SmtpState, verb: str) -> bool:
    """May ``verb`` be issued in ``state``? (Unknown verbs are the handler's 500/502.)"""
    if state is SmtpState.DATA:
        return False
    return verb in ANYTIME or (state, verb) in TRANSITIONS


def next_state(state: SmtpState, verb: str, *, greeted: bool) -> SmtpState:
    """Where a successful ``verb`` leads; ``greeted`` says whether EHLO/HELO was accepted."""
    if (state, verb) in TRANSITIONS:
        return TRANSITIONS[(state, verb)]
    if verb == "RSET":  # RFC 5321 §4.1.1.5: back to just after EHLO
        return SmtpState.READY if greeted else SmtpState.GREETED
    return state
