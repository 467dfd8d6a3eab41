"""Hypothesis strategies for IMAP commands (RFC 9051 §6, RFC 3501 §6), well-formed and near-miss.

Each command is drawn without its tag; the dialogue's commands are then tagged
``a1``, ``a2``... in order. Arguments come from the RFC 9051 §9 grammar: sequence
sets (``1``, ``1:*``, ``*``, ``2,4``; ``0`` and past-the-end ones too), search keys,
fetch items and sections, store operations and flags, and mailbox names.

Mailboxes: only names starting ``mh-fuzz-{run}`` are created, selected, changed or
deleted, where ``{run}`` is replaced by a token new for each dialogue (the oracle
does it, and a written scenario keeps ``{run}``, a scenario variable), so a fuzzed
session starts from an empty mailbox and never touches an account's own mail.
INBOX is only EXAMINEd (read-only), listed or asked its STATUS. The fuzzer leaves
its ``mh-fuzz-*`` mailboxes behind.

The near-misses: the command name in another case (still well-formed: RFC 9051 §9
"case-insensitive"), an argument missing or one too many, an overlong line, a NUL,
8-bit bytes, a bare CR or LF (ends the dialogue), a tag that is not a tag
(``*``, ``+``, ``a(b``...), a broken literal marker (``{x}``), unbalanced parentheses.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import strategies as st

from conformance.fuzz.dialogue import Send, StateStep
from conformance.fuzz.imap_model import MESSAGE
from conformance.targets import Target

__all__ = ["BOX", "VERBS", "imap_commands", "imap_number", "imap_state_steps", "imap_steps"]

VERBS = (
    "CAPABILITY", "NOOP", "LOGOUT", "LOGIN", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME",
    "LIST", "STATUS", "APPEND", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH",
    "STORE", "COPY", "UID",
)  # fmt: skip
_WEIGHTED = (
    "FETCH", "FETCH", "STORE", "SEARCH", "EXPUNGE", "NOOP", "UID", "UID", "SELECT", "EXAMINE",
    "APPEND", "CREATE", "DELETE", "RENAME", "LIST", "STATUS", "COPY", "CHECK", "CLOSE",
    "UNSELECT", "CAPABILITY", "LOGIN", "FETCH", "NOOP",
)  # fmt: skip
_UNTAGGED = "?"  # Send.tag of a command that gets the next tag

BOX = "mh-fuzz-{run}"
_box = st.sampled_from([BOX, BOX, f"{BOX}-b", f"{BOX}-none"])
_any_box = st.one_of(_box, st.just("INBOX"))
_seq = st.sampled_from(["1", "1:*", "*", "2", "1:2", "1,3", "2:*", "0", "999", "4294967296"])
_fetch_att = st.sampled_from([
    "UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY.PEEK[]",
    "BODY.PEEK[HEADER]", "BODY.PEEK[TEXT]", "BODY.PEEK[1]", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]",
    "BODY.PEEK[]<0.5>", "BODY[]", "RFC822.HEADER", "BINARY.PEEK[1]",
])  # fmt: skip
_fetch_items = st.one_of(
    st.sampled_from(["ALL", "FAST", "FULL"]),
    _fetch_att,
    st.lists(_fetch_att, min_size=1, max_size=4, unique=True).map(lambda a: f"({' '.join(a)})"),
)
_search = st.sampled_from([
    "ALL", "UNSEEN", "DELETED", "SEEN", "SUBJECT fuzz", "UID 1:*", "LARGER 10", "NOT SEEN",
    "OR SEEN DELETED", "SINCE 1-Jan-2020", "HEADER Subject fuzz", "1:2", "TEXT fuzz",
])  # fmt: skip
_store = st.sampled_from([
    "+FLAGS (\\Deleted)", "+FLAGS (\\Deleted)", "-FLAGS (\\Seen)", "FLAGS.SILENT (\\Flagged)",
    "+FLAGS.SILENT (\\Seen $Fuzz)", "-FLAGS (\\Deleted)",
])  # fmt: skip
_LITERAL_SIZE = len(MESSAGE)


def _wellformed(verb: str, target: Target) -> st.SearchStrategy[str]:
    users = [a.username for a in target.accounts.values()] or ["fuzz"]
    if verb == "LOGIN":
        return st.sampled_from(users).map(lambda u: f'LOGIN "{u}" "mh-fuzz-wrong"')
    if verb == "SELECT":
        return _box.map(lambda b: f"SELECT {b}")
    if verb == "EXAMINE":
        return _any_box.map(lambda b: f"EXAMINE {b}")
    if verb in ("CREATE", "DELETE"):
        return _box.map(lambda b: f"{verb} {b}")
    if verb == "RENAME":
        return st.builds(lambda a, b: f"RENAME {a} {b}", _box, _box)
    if verb == "LIST":
        return st.sampled_from(['LIST "" mh-fuzz-*', 'LIST "" INBOX', 'LIST "" ""', 'LIST "" %'])
    if verb == "STATUS":
        items = st.sampled_from(["(MESSAGES)", "(MESSAGES UIDNEXT UIDVALIDITY)", "(UNSEEN)"])
        return st.builds(lambda b, i: f"STATUS {b} {i}", _any_box, items)
    if verb == "APPEND":
        flags = st.sampled_from(["", " (\\Seen)", " (\\Deleted)", " ()"])
        return st.builds(lambda b, f: f"APPEND {b}{f} {{{_LITERAL_SIZE}}}", _box, flags)
    if verb == "SEARCH":
        return _search.map(lambda k: f"SEARCH {k}")
    if verb == "FETCH":
        return st.builds(lambda s, i: f"FETCH {s} {i}", _seq, _fetch_items)
    if verb == "STORE":
        return st.builds(lambda s, o: f"STORE {s} {o}", _seq, _store)
    if verb == "COPY":
        return st.builds(lambda s, b: f"COPY {s} {b}", _seq, _box)
    if verb == "UID":
        return st.one_of(
            st.builds(lambda s, i: f"UID FETCH {s} {i}", _seq, _fetch_items),
            _search.map(lambda k: f"UID SEARCH {k}"),
            st.builds(lambda s, o: f"UID STORE {s} {o}", _seq, _store),
            st.builds(lambda s, b: f"UID COPY {s} {b}", _seq, _box),
        )
    if verb == "NOOP":
        return st.just("NOOP")
    return st.just(verb)  # CAPABILITY LOGOUT CHECK CLOSE UNSELECT EXPUNGE


_BAD_TAGS = [b"*", b"+", b"a(b", b"a{b", b"a%b", b'a"b', b"a\\b"]


_IN_MAILBOX = ("FETCH", "FETCH", "UID", "STORE", "SEARCH", "COPY", "EXPUNGE", "NOOP")


@st.composite
def _command(draw: st.DrawFn, target: Target, verbs: tuple[str, ...] = _WEIGHTED) -> Send:
    verb = draw(st.sampled_from(verbs))
    line = draw(_wellformed(verb, target)).encode("utf-8")
    hows = ["none", "none", "none", "none", "none", "none", "case", "missing", "extra", "long",
            "nul", "8bit", "bare", "tag", "literal", "paren"]  # fmt: skip
    if b" " not in line:  # NOOP, CHECK...: an argument where none belongs is the near-miss
        hows += ["extra", "extra", "extra"]
    how = draw(st.sampled_from(hows))
    head, sep, arg = line.partition(b" ")
    wellformed, terminal, tag = True, False, _UNTAGGED
    if how == "case":
        head = draw(st.sampled_from([head.lower(), head.capitalize()]))
    elif how == "missing" and arg:
        sep, arg, wellformed = b"", b"", False
    elif how == "extra":
        arg, sep, wellformed = arg + (b" " if arg else b"") + b"extra", b" ", False
        if arg.endswith(b"}") or b"} " in arg:  # a literal marker no longer ends the line
            arg = arg.replace(f" {{{_LITERAL_SIZE}}}".encode(), b"")
    elif how == "long":
        n = draw(st.integers(1100, 9000))
        arg, sep, wellformed = arg.split(b" {")[0] + b" " + b"a" * n, b" ", False
    elif how in ("nul", "8bit", "bare"):
        insert = {
            "nul": st.just(b"\x00"),
            "8bit": st.sampled_from([b"\xff", b"\x80", "é".encode()]),
            "bare": st.sampled_from([b"\r", b"\n"]),
        }[how]
        blob = draw(insert)
        rest = (head + sep + arg).split(b" {")[0]  # no literal after a broken line
        at = draw(st.integers(1, len(rest)))
        head, sep, arg = rest[:at] + blob + rest[at:], b"", b""
        wellformed, terminal = False, how == "bare"
    elif how == "tag":
        bad = draw(st.sampled_from(_BAD_TAGS))
        rest = (head + sep + arg).split(b" {")[0]
        return Send(verb=verb, wire=bad + b" " + rest + b"\r\n", wellformed=False, tag="")
    elif how == "literal" and (verb == "APPEND" or arg):
        broken = draw(st.sampled_from([b"{x}", b"{}", b"{-1}", b"{3", b"{18446744073709551616x}"]))
        arg, sep, wellformed = arg.split(b" {")[0] + b" " + broken, b" ", False
    elif how == "paren" and (b"(" in arg or b")" in arg):
        arg = arg.replace(b")", b"", 1) if b")" in arg else arg + b")"
        wellformed = False
    return Send(
        verb=verb, wire=head + sep + arg + b"\r\n", wellformed=wellformed, terminal=terminal,
        tag=tag,
    )  # fmt: skip


def _cmd(verb: str, text: str) -> Send:
    return Send(verb=verb, wire=text.encode("ascii") + b"\r\n", tag=_UNTAGGED)


def _setup() -> list[Send]:
    """A mailbox of this dialogue with two messages, selected (then commands of the
    selected state follow)."""
    append = _cmd("APPEND", f"APPEND {BOX} {{{_LITERAL_SIZE}}}")
    return [_cmd("CREATE", f"CREATE {BOX}"), append, append, _cmd("SELECT", f"SELECT {BOX}")]


def _expunge_block() -> st.SearchStrategy[list[Send]]:
    """UIDs before and after an EXPUNGE or an APPEND: where UIDs must only grow."""
    change = st.sampled_from([
        [_cmd("STORE", "STORE 1 +FLAGS (\\Deleted)"), _cmd("EXPUNGE", "EXPUNGE")],
        [_cmd("APPEND", f"APPEND {BOX} {{{_LITERAL_SIZE}}}"), _cmd("NOOP", "NOOP")],
        [_cmd("UID", "UID STORE 1:* +FLAGS (\\Deleted)"), _cmd("CLOSE", "CLOSE"),
         _cmd("SELECT", f"SELECT {BOX}")],
    ])  # fmt: skip
    fetch = _cmd("FETCH", "FETCH 1:* (UID)")
    return change.map(lambda c: [fetch, *c, fetch])


def _tagged(items: list[list[Send]]) -> list[Send]:
    out: list[Send] = []
    for chunk in items:
        for send in chunk:
            if send.tag == _UNTAGGED:
                tag = f"a{len(out) + 1}"
                send = replace(send, tag=tag, wire=tag.encode() + b" " + send.wire)
            out.append(send)
            if send.terminal or send.verb == "LOGOUT":
                return out
    return out


def imap_steps(target: Target) -> st.SearchStrategy[list[Send]]:
    """One step of a session, untagged (:func:`imap_number` tags it): a command, a
    mailbox set up and selected with commands of the selected state, UIDs around a
    change, or LOGOUT."""
    in_mailbox = st.lists(_command(target, _IN_MAILBOX), min_size=1, max_size=3)
    return st.one_of(
        _command(target).map(lambda c: [c]),
        in_mailbox.map(lambda cs: [*_setup(), *cs]),
        _expunge_block(),
        st.just([_cmd("LOGOUT", "LOGOUT")]),
    )


def imap_number(sends: list[Send], sent: int) -> list[Send]:
    """Tag a step's commands as the ones after the ``sent`` already sent."""
    out: list[Send] = []
    for send in sends:
        if send.tag == _UNTAGGED:
            tag = f"a{sent + len(out) + 1}"
            send = replace(send, tag=tag, wire=tag.encode() + b" " + send.wire)
        out.append(send)
    return out


def imap_commands(target: Target, max_size: int = 8) -> st.SearchStrategy[list[Send]]:
    """Tagged command lists for one session; shrinks towards fewer, simpler commands."""
    return st.lists(imap_steps(target), min_size=1, max_size=max_size).map(_tagged)


def imap_state_steps(target: Target) -> tuple[StateStep, ...]:
    """With a mailbox of this dialogue selected and messages in it: FETCH, STORE,
    COPY and their UID forms on messages that exist (or the one just past the last),
    by number or by a UID the session has seen: where the data invariants live."""

    def on_messages(model: Any) -> st.SearchStrategy[list[Send]]:
        n = st.integers(1, model.exists + 1)
        seq = st.one_of(n.map(str), st.builds(lambda a, b: f"{min(a, b)}:{max(a, b)}", n, n))
        seen = sorted({u for u in model.uids if u is not None})
        uid = st.sampled_from(seen).map(str) if seen else st.just("1")
        uid_set = st.one_of(uid, uid.map(lambda u: f"{u}:*"))
        line = st.one_of(
            st.builds(lambda s, i: f"FETCH {s} {i}", seq, _fetch_items),
            st.builds(lambda s, o: f"STORE {s} {o}", seq, _store),
            st.builds(lambda s, i: f"UID FETCH {s} {i}", uid_set, _fetch_items),
            st.builds(lambda s, o: f"UID STORE {s} {o}", uid_set, _store),
            st.builds(lambda s: f"COPY {s} {BOX}-b", seq),
        )
        return line.map(lambda text: [_cmd(text.split()[0], text)])

    return (
        StateStep(
            name="on_messages",
            applies=lambda model: (
                model.selected is not None
                and model.selected.startswith(BOX)
                and not model.read_only
                and model.exists > 0
            ),
            sends=on_messages,
        ),
    )
