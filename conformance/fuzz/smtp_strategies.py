"""Hypothesis strategies for SMTP command lines (RFC 5321 §4.1), well-formed and near-miss.

A dialogue is a list of :class:`~conformance.fuzz.dialogue.Send`. Each command is
drawn well-formed first (verb, then arguments from the RFC 5321 §4.1.2 grammar:
domains, address literals, mailboxes, the null path, ESMTP parameters SIZE
(RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531) and unknown ``X-`` ones), then
maybe turned into a near-miss: the verb in another case (still well-formed:
RFC 5321 §2.4 makes verbs case-insensitive), the argument missing or one too many,
an overlong token (past RFC 5321 §4.5.3.1 limits), a NUL, 8-bit bytes, or a bare
CR or LF inside the line. Shrinking goes towards short lists of well-formed
upper-case commands with the simplest arguments.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from conformance.fuzz.dialogue import Send, StateStep
from conformance.targets import Target

__all__ = ["VERBS", "smtp_commands", "smtp_state_steps", "smtp_steps"]

# STARTTLS (and AUTH) are left out: a TLS upgrade is a different kind of dialogue.
VERBS = ("EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "VRFY", "EXPN", "HELP", "QUIT")
# More weight where the state lives; QUIT last (it ends the dialogue, so rare is better).
_WEIGHTED = (
    "EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "NOOP", "HELO", "VRFY", "EXPN",
    "HELP", "RCPT", "DATA", "RSET", "DATA", "RSET", "QUIT",
)  # fmt: skip

_label = st.from_regex(r"\A[a-z0-9]{1,10}\Z")
_domain = st.one_of(
    st.just("fuzz.test"),
    st.lists(_label, min_size=2, max_size=4).map(".".join),
)
_address_literal = st.sampled_from(["[127.0.0.1]", "[IPv6:::1]", "[192.0.2.1]"])
_local = st.one_of(
    st.from_regex(r"\A[a-z0-9]{1,8}(\.[a-z0-9+_-]{1,8})?\Z"),
    st.just('"fuzz user"'),
)


def _mailboxes(target: Target) -> st.SearchStrategy[str]:
    known = [a.address for a in target.accounts.values()] or [f"postmaster@{target.domain}"]
    return st.one_of(
        st.sampled_from(known),
        st.builds(lambda lp, d: f"{lp}@{d}", _local, st.one_of(_domain, _address_literal)),
        st.just(f"postmaster@{target.domain}"),
    )


_mail_param = st.one_of(
    st.integers(0, 99_999_999).map(lambda n: f"SIZE={n}"),
    st.sampled_from(["BODY=7BIT", "BODY=8BITMIME", "SMTPUTF8"]),
    st.from_regex(r"\AX-[A-Z0-9]{1,6}=[A-Za-z0-9]{1,6}\Z"),
)


def _wellformed(verb: str, target: Target) -> st.SearchStrategy[str]:
    mailbox = _mailboxes(target)
    if verb in ("EHLO", "HELO"):
        return st.one_of(_domain, _address_literal).map(lambda d: f"{verb} {d}")
    if verb == "MAIL":
        path = st.one_of(st.just("<>"), mailbox.map(lambda m: f"<{m}>"))
        params = st.lists(_mail_param, max_size=3)
        return st.builds(lambda p, ps: " ".join([f"MAIL FROM:{p}", *ps]), path, params)
    if verb == "RCPT":
        return st.one_of(mailbox.map(lambda m: f"RCPT TO:<{m}>"), st.just("RCPT TO:<postmaster>"))
    if verb in ("VRFY", "EXPN"):
        return st.one_of(mailbox, _local).map(lambda a: f"{verb} {a}")
    if verb in ("NOOP", "HELP"):
        return st.one_of(st.just(verb), _label.map(lambda a: f"{verb} {a}"))
    return st.just(verb)  # DATA, RSET, QUIT


@st.composite
def _command(draw: st.DrawFn, target: Target) -> Send:
    verb = draw(st.sampled_from(_WEIGHTED))
    line = draw(_wellformed(verb, target)).encode("utf-8")
    how = draw(
        st.sampled_from(
            ["none", "none", "none", "none", "case", "missing", "extra", "long", "nul", "8bit",
             "space", "bare"]
        )
    )  # fmt: skip
    head, sep, arg = line.partition(b" ")
    if verb in ("MAIL", "RCPT"):
        head, sep, arg = line.partition(b":")
    wellformed, terminal = True, False
    if how == "case":
        head = draw(st.sampled_from([head.lower(), head.capitalize(), head.swapcase().title()]))
    elif how == "missing":
        sep, arg, wellformed = b"", b"", verb in ("NOOP", "HELP", "DATA", "RSET", "QUIT")
    elif how == "extra":
        arg, sep = arg + (b" " if arg else b"") + b"extra", sep or b" "
        wellformed = verb in ("NOOP", "HELP", "VRFY", "EXPN")  # these take a string
    elif how == "long":
        n = draw(st.integers(300, 4000))
        arg, sep, wellformed = arg + b"a" * n, sep or b" ", False
    elif how in ("nul", "8bit", "bare"):
        insert = {
            "nul": st.just(b"\x00"),
            "8bit": st.sampled_from([b"\xff", b"\x80", "é".encode(), b"\xc3"]),
            "bare": st.sampled_from([b"\r", b"\n"]),
        }[how]
        blob = draw(insert)
        rest = head + sep + arg
        at = draw(st.integers(0, len(rest)))
        head, sep, arg = rest[:at] + blob + rest[at:], b"", b""
        wellformed, terminal = False, how == "bare"
    elif how == "space" and verb in ("MAIL", "RCPT"):
        arg, wellformed = b" " + arg, False  # "MAIL FROM: <a@b>": RFC 5321 §4.1.2 has no SP
    return Send(
        verb=verb, wire=head + sep + arg + b"\r\n", wellformed=wellformed, terminal=terminal
    )


def _line(verb: str, text: str) -> Send:
    return Send(verb=verb, wire=text.encode("utf-8") + b"\r\n")


def _transaction(target: Target) -> st.SearchStrategy[list[Send]]:
    """EHLO, MAIL, RCPT to a known mailbox, and half the time DATA (so a message follows
    and the retrieval check has something to look for): reaches the states random lists
    rarely do."""
    known = [a.address for a in target.accounts.values()] or [f"postmaster@{target.domain}"]
    return st.builds(
        lambda rcpt, data: [
            _line("EHLO", "EHLO fuzz.test"),
            _line("MAIL", "MAIL FROM:<>"),
            _line("RCPT", f"RCPT TO:<{rcpt}>"),
            *([_line("DATA", "DATA")] if data else []),
        ],
        st.sampled_from(known),
        st.booleans(),
    )


def smtp_steps(target: Target) -> st.SearchStrategy[list[Send]]:
    """One step of a session: a command, or the EHLO/MAIL/RCPT(/DATA) block."""
    return st.one_of(_command(target).map(lambda c: [c]), _transaction(target))


def smtp_commands(target: Target, max_size: int = 8) -> st.SearchStrategy[list[Send]]:
    """Command lists for one session; shrinks towards fewer, simpler commands."""
    return st.lists(smtp_steps(target), min_size=1, max_size=max_size).map(
        lambda items: [c for chunk in items for c in chunk]
    )


def smtp_state_steps(target: Target) -> tuple[StateStep, ...]:
    """In a transaction: a recipient the server should take (an account), or DATA once
    one was taken, so that the machine goes deeper where the model already is."""
    known = [a.address for a in target.accounts.values()] or [f"postmaster@{target.domain}"]

    def more(model: Any) -> st.SearchStrategy[list[Send]]:
        rcpt = st.sampled_from(known).map(lambda a: [_line("RCPT", f"RCPT TO:<{a}>")])
        if not model.recipients:
            return rcpt
        return st.one_of(rcpt, st.just([_line("DATA", "DATA")]))

    return (
        StateStep(
            name="in_transaction",
            applies=lambda model: bool(model.mail) and not model.in_data,
            sends=more,
        ),
    )
