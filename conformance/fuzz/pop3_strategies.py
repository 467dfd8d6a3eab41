"""Hypothesis strategies for POP3 command lines (RFC 1939, RFC 2449, RFC 5034).

Each command is drawn well-formed first, then maybe made a near-miss, as for SMTP
(:mod:`.smtp_strategies`). Message numbers are drawn small (1-4, where the messages
are), or 0, huge, negative or not a number; those stay "well-formed" lines, since
the model judges them (``-ERR``). The near-misses that break the grammar: the
keyword in another case (still well-formed: RFC 1939 §3 keywords are
case-insensitive), an argument missing or one too many, an overlong line, a NUL,
8-bit bytes, a bare CR or LF (ends the dialogue).

STLS is only ever the last command of a dialogue: when it succeeds the TLS
handshake would follow, which the fuzzer does not do inside a dialogue. QUIT always
comes after an RSET, so a fuzzed session never makes the server delete a message
(RFC 1939 §6: deletions happen at QUIT in the TRANSACTION state).
"""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import strategies as st

from conformance.fuzz.dialogue import Send, StateStep
from conformance.targets import Target

__all__ = ["VERBS", "pop3_commands", "pop3_state_steps", "pop3_steps"]

VERBS = (
    "USER", "PASS", "APOP", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL",
    "CAPA", "QUIT", "AUTH", "STLS",
)  # fmt: skip
_WEIGHTED = (
    "STAT", "LIST", "RETR", "DELE", "RETR", "DELE", "RSET", "TOP", "UIDL", "NOOP", "CAPA",
    "LIST", "RETR", "TOP", "USER", "PASS", "APOP", "AUTH", "STAT", "UIDL", "DELE", "STLS",
)  # fmt: skip

_msg = st.one_of(
    st.integers(1, 4).map(str),
    st.integers(1, 4).map(str),
    st.sampled_from(["0", "-1", "abc", "1.5", "4294967296", "999999999"]),
)
_lines = st.one_of(
    st.integers(0, 3).map(str), st.sampled_from(["999999999", "-1", "x", "4294967296"])
)


def _wellformed(verb: str, target: Target) -> st.SearchStrategy[str]:
    users = [a.username for a in target.accounts.values()] or ["fuzz"]
    if verb == "USER":
        return st.one_of(st.sampled_from(users), st.just("mh-fuzz")).map(lambda u: f"USER {u}")
    if verb == "PASS":
        return st.just("PASS mh-fuzz-wrong")
    if verb == "APOP":
        return st.sampled_from(users).map(lambda u: f"APOP {u} {'0' * 32}")
    if verb == "AUTH":
        plain = base64.b64encode(b"\0mh-fuzz\0wrong").decode()
        return st.sampled_from([f"AUTH PLAIN {plain}", "AUTH PLAIN", "AUTH X-MH-FUZZ"])
    if verb in ("LIST", "UIDL"):
        return st.one_of(st.just(verb), _msg.map(lambda n: f"{verb} {n}"))
    if verb in ("RETR", "DELE"):
        return _msg.map(lambda n: f"{verb} {n}")
    if verb == "TOP":
        return st.builds(lambda n, k: f"TOP {n} {k}", _msg, _lines)
    return st.just(verb)  # STAT NOOP RSET CAPA QUIT STLS


@st.composite
def _command(draw: st.DrawFn, target: Target) -> Send:
    verb = draw(st.sampled_from(_WEIGHTED))
    line = draw(_wellformed(verb, target)).encode("utf-8")
    how = draw(
        st.sampled_from(
            ["none", "none", "none", "none", "none", "case", "missing", "extra", "long", "nul",
             "8bit", "bare"]
        )
    )  # fmt: skip
    head, sep, arg = line.partition(b" ")
    wellformed, terminal = True, verb == "STLS"
    if how == "case":
        head = draw(st.sampled_from([head.lower(), head.capitalize()]))
    elif how == "missing" and arg:
        sep, arg = b"", b""
        wellformed = verb in ("LIST", "UIDL")  # the argument is optional
        if verb == "AUTH":  # a bare AUTH lists mechanisms (multiline) on some servers
            wellformed, arg, sep = False, b"PLAIN x y", b" "
    elif how == "extra" and verb != "STLS":
        arg, sep, wellformed = arg + (b" " if arg else b"") + b"extra", b" ", False
    elif how == "long":
        n = draw(st.integers(300, 3000))
        arg, sep, wellformed = arg + b"a" * n, b" ", False
    elif how in ("nul", "8bit", "bare"):
        insert = {
            "nul": st.just(b"\x00"),
            "8bit": st.sampled_from([b"\xff", b"\x80", "é".encode()]),
            "bare": st.sampled_from([b"\r", b"\n"]),
        }[how]
        blob = draw(insert)
        rest = head + sep + arg
        at = draw(st.integers(1, len(rest)))
        head, sep, arg = rest[:at] + blob + rest[at:], b"", b""
        wellformed, terminal = False, terminal or how == "bare"
    return Send(
        verb=verb, wire=head + sep + arg + b"\r\n", wellformed=wellformed, terminal=terminal
    )


def _line(verb: str, text: str) -> Send:
    return Send(verb=verb, wire=text.encode("ascii") + b"\r\n")


def _deleted_block() -> st.SearchStrategy[list[Send]]:
    """STAT, DELE n, then a command on n: the path where deletion marks are judged."""
    follow = st.sampled_from(["RETR {n}", "TOP {n} 0", "LIST {n}", "UIDL {n}", "DELE {n}"])
    return st.builds(
        lambda n, f: [
            _line("STAT", "STAT"),
            _line("DELE", f"DELE {n}"),
            _line(f.split()[0], f.format(n=n)),
        ],
        st.integers(1, 3),
        follow,
    )


def _quit() -> list[Send]:
    return [_line("RSET", "RSET"), _line("QUIT", "QUIT")]


def pop3_steps(target: Target) -> st.SearchStrategy[list[Send]]:
    """One step of a session: a command, the STAT/DELE/use block, or RSET and QUIT."""
    return st.one_of(_command(target).map(lambda c: [c]), _deleted_block(), st.just(_quit()))


def pop3_state_steps(target: Target) -> tuple[StateStep, ...]:
    """In TRANSACTION once STAT told the maildrop's size: a command on a message
    that exists (or the one just past the last), the numbers a draw made up front
    can only guess."""

    def on_message(model: Any) -> st.SearchStrategy[list[Send]]:
        number = st.integers(1, model.total + 1)
        verb = st.sampled_from(["RETR {n}", "TOP {n} 0", "TOP {n} 2", "LIST {n}", "UIDL {n}",
                                "DELE {n}"])  # fmt: skip
        return st.builds(lambda n, v: [_line(v.split()[0], v.format(n=n))], number, verb)

    return (
        StateStep(
            name="on_a_message",
            applies=lambda model: bool(model.transaction) and model.total is not None,
            sends=on_message,
        ),
    )


def pop3_commands(target: Target, max_size: int = 8) -> st.SearchStrategy[list[Send]]:
    """Command lists for one session; shrinks towards fewer, simpler commands.

    A dialogue that draws STLS ends with it; one that draws QUIT gets an RSET first.
    """
    item = pop3_steps(target)

    def flatten(items: list[list[Send]]) -> list[Send]:
        out: list[Send] = []
        for chunk in items:
            out.extend(chunk)
            if any(c.terminal or c.verb == "QUIT" for c in chunk):
                break
        return out

    return st.lists(item, min_size=1, max_size=max_size).map(flatten)
