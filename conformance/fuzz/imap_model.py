"""Theory of operation: a permissive model of one IMAP session (RFC 9051, RFC 3501).

The model knows the state (not authenticated, authenticated, selected: RFC 9051 §3),
the selected mailbox and whether it is read-only (EXAMINE), its message count from
``EXISTS`` / ``EXPUNGE``, and the UIDs it has seen: per message number, the UID a
``FETCH`` reported, and the highest UID seen (``UIDNEXT``, ``APPENDUID``, ``FETCH``).
It updates from the answers the server *actually* gave: a LOGIN counts only if it
got OK, a SELECT only if it got OK (a NO leaves no mailbox selected, §6.3.2).

The answer to a command is the class of its tagged response (``OK``/``NO``/``BAD``),
``+`` for a continuation request (an APPEND literal), or ``BYE`` for an untagged BYE
followed by the close (allowed at any time: autologout or shutdown, §7.1.5). The
oracle checks that every command gets exactly one tagged response with its tag.

What the model judges:

- the greeting is ``* OK``, ``* PREAUTH`` or ``* BYE`` (§7.1);
- CAPABILITY and NOOP get OK (§6.1.1, §6.1.2); LOGOUT gets ``* BYE``, OK and the
  close (§6.1.3);
- commands of the authenticated state before a login, and of the selected state
  without a selected mailbox, are not OK (§6: "valid only in" that state);
- a command whose tag is not a tag gets an untagged ``* BAD`` (§7.1.3);
- the data: ``EXPUNGE`` and ``FETCH`` name existing messages (the count never goes
  negative), ``EXISTS`` does not go down without EXPUNGE (§7.4.1), a message keeps
  its UID, UIDs ascend with message numbers, a new message's UID is above every UID
  seen, and ``UIDNEXT`` does not go down (§2.3.1.1); no ``* BYE`` without the close
  except on LOGOUT.

Everything else well-formed may get OK, NO or BAD (a server may refuse a mailbox
name, a sequence number past the end is BAD or NO, UNSELECT is an extension in
RFC 3501), and a near-miss may get any of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from conformance.fuzz.dialogue import Answer, Expectation, Send, Violation

__all__ = ["MESSAGE", "ImapAnswer", "ImapModel"]

MESSAGE = b"Subject: fuzz\r\nFrom: <fuzz@mh-fuzz.test>\r\n\r\nfuzz\r\n"

_AUTHED = {"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "LIST", "STATUS", "APPEND",
           "SUBSCRIBE", "LSUB", "NAMESPACE"}  # fmt: skip
_SELECTED = {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "UID",
             "MOVE"}  # fmt: skip
_LITERAL = re.compile(rb"\{([0-9]{1,6})\}\r\n\Z")
_ANY = frozenset({"OK", "NO", "BAD", "BYE"})


@dataclass(frozen=True)
class ImapAnswer:
    """One command's answer: the untagged responses, then the tagged one (or not)."""

    code: str  # "OK" / "NO" / "BAD", "+", "BYE" (closed after BYE), "tag X" (wrong tag)
    untagged: tuple[Any, ...] = ()
    tagged: Any = None
    text: str = ""


def _absent(resp: Any) -> dict[str, Any]:
    """The scenario check that fails on exactly this untagged response."""
    return {"untagged_absent": ["^" + re.escape(resp.line[:200])]}


@dataclass
class ImapModel:
    authed: bool = False
    selected: str | None = None
    read_only: bool = False
    unsure: bool = False  # a near-miss got OK: the selection is not known
    exists: int = 0
    uids: list[int | None] = field(default_factory=list)
    floors: list[int] = field(default_factory=list)  # a new message's UID must be above
    high: int = 0  # the highest UID seen in the selected mailbox
    uidnext: int = 0
    uidvalidity: str = ""

    def state(self) -> str:
        if self.selected is not None:
            return "SELECTED-RO" if self.read_only else "SELECTED"
        return "AUTHENTICATED" if self.authed else "NOT-AUTHENTICATED"

    def greeting(self) -> Expectation:
        return Expectation(
            codes=frozenset({"OK", "PREAUTH", "BYE"}),
            why="greeting: * OK, * PREAUTH or * BYE (RFC 9051 §7.1)",
            may_close=True,
        )

    def expect(self, send: Send) -> Expectation:
        lit = frozenset({"+"}) if _LITERAL.search(send.wire) else frozenset()
        if send.kind == "literal":
            return Expectation(codes=_ANY, why="the end of an APPEND: OK, NO or BAD (§6.3.12)")
        if send.terminal:
            return Expectation(
                codes=_ANY | {"+"},
                why="a line with a bare CR or LF inside may be taken as one or two lines, or "
                "refused, and the server may close (RFC 9051 §2.2)",
                may_close=True,
            )
        if not send.tag:
            return Expectation(
                codes=frozenset({"BAD", "BYE"}),
                why="a command whose tag is not a tag: an untagged * BAD (RFC 9051 §7.1.3)",
            )
        verb = send.verb
        if verb == "LOGOUT" and send.wellformed:
            return Expectation(
                codes=frozenset({"OK", "BYE"}),
                why="LOGOUT: * BYE, the tagged OK, then the close (RFC 9051 §6.1.3)",
                closes=True,
            )
        if not send.wellformed:
            return Expectation(
                codes=_ANY | lit,
                why="a near-miss may get OK, NO or BAD, tagged (RFC 9051 §7.1)",
                may_close=len(send.wire) > 1000 or verb == "LOGOUT",
            )
        if verb in ("CAPABILITY", "NOOP"):
            return Expectation(codes=frozenset({"OK", "BYE"}), why=f"{verb}: OK (RFC 9051 §6.1)")
        if verb in _AUTHED and not self.authed and not self.unsure:
            return Expectation(
                codes=frozenset({"NO", "BAD", "BYE"}),
                why=f"{verb} before a login: NO or BAD (RFC 9051 §6.3: authenticated state)",
            )
        if verb in _SELECTED and self.selected is None and not self.unsure:
            return Expectation(
                codes=frozenset({"NO", "BAD", "BYE"}),
                why=f"{verb} without a selected mailbox: NO or BAD (RFC 9051 §6.4)",
            )
        if verb == "LOGIN" and self.authed:
            return Expectation(
                codes=frozenset({"NO", "BAD", "BYE"}),
                why="LOGIN when already logged in: NO or BAD (RFC 9051 §6.2.3)",
            )
        return Expectation(codes=_ANY | lit, why=f"{verb}: OK, NO or BAD (RFC 9051 §7.1)")

    def _reset_mailbox(self) -> None:
        self.exists, self.uids, self.floors = 0, [], []
        self.high, self.uidnext, self.uidvalidity = 0, 0, ""

    def observe(self, send: Send, code: Answer, answer: Any = None) -> Send | None:
        verb = send.verb
        if code == "+":
            m = _LITERAL.search(send.wire)
            size = int(m.group(1)) if m else 0
            data = (MESSAGE * (size // len(MESSAGE) + 1))[:size]
            return Send(verb=verb, wire=data + b"\r\n", kind="literal", tag=send.tag)
        if send.kind != "literal" and verb in ("SELECT", "EXAMINE") and send.wellformed:
            self._reset_mailbox()
            if code == "NO":
                self.selected = None
        untagged = answer.untagged if isinstance(answer, ImapAnswer) else ()
        if verb != "LOGOUT" and code != "BYE":
            for resp in untagged:
                if resp.keyword == "BYE":
                    raise Violation(
                        "an untagged BYE, but the server did not close (RFC 9051 §7.1.5: "
                        "BYE only on LOGOUT or when closing)",
                        _absent(resp),
                    )
        if verb == "LOGOUT" and code == "OK" and not any(u.keyword == "BYE" for u in untagged):
            raise Violation(
                "LOGOUT got OK without an untagged BYE first (RFC 9051 §6.1.3)",
                {"untagged": [r"^\* BYE"]},
            )
        if self.selected is not None or verb in ("SELECT", "EXAMINE"):
            for resp in untagged:
                self._data(resp)
        ok = code == "OK"
        if not send.wellformed:
            if ok and verb in ("SELECT", "EXAMINE", "CLOSE", "UNSELECT", "LOGIN"):
                self.unsure = True
            return None
        if verb == "LOGIN" and ok:
            self.authed = True
        elif verb in ("SELECT", "EXAMINE") and ok:
            self.selected = send.wire.split(b" ")[2].decode("ascii", "replace")
            self.read_only = verb == "EXAMINE"
        elif verb in ("CLOSE", "UNSELECT") and ok:
            self.selected = None
            self._reset_mailbox()
        return None

    def _data(self, resp: Any) -> None:
        key, n = resp.keyword, resp.number
        if key in ("OK", "NO", "BAD") and resp.code == "UIDVALIDITY":
            if resp.code_args != self.uidvalidity:
                self.uids, self.floors = [None] * self.exists, [0] * self.exists
                self.high, self.uidnext = 0, 0
            self.uidvalidity = resp.code_args or ""
        elif key == "OK" and resp.code == "UIDNEXT" and (resp.code_args or "").isdigit():
            nxt = int(resp.code_args)
            if nxt < self.uidnext or nxt <= self.high:
                raise Violation(
                    f"UIDNEXT {nxt} went below {max(self.uidnext, self.high + 1)} "
                    "(RFC 9051 §2.3.1.1: UIDs only grow)",
                    _absent(resp),
                )
            self.uidnext = nxt
        elif key == "EXISTS" and n is not None:
            if n < self.exists:
                raise Violation(
                    f"EXISTS went down from {self.exists} to {n} without EXPUNGE (RFC 9051 §7.4.1)",
                    _absent(resp),
                )
            self.uids.extend([None] * (n - self.exists))
            self.floors.extend([max(self.high, self.uidnext - 1)] * (n - self.exists))
            self.exists = n
        elif key == "EXPUNGE" and n is not None:
            if not 1 <= n <= self.exists:
                raise Violation(
                    f"EXPUNGE of message {n}, but the mailbox has {self.exists} "
                    "(RFC 9051 §7.5.1: the count would go negative)",
                    _absent(resp),
                )
            del self.uids[n - 1]
            del self.floors[n - 1]
            self.exists -= 1
        elif key == "FETCH" and n is not None:
            if not 1 <= n <= self.exists:
                raise Violation(
                    f"FETCH for message {n}, but the mailbox has {self.exists} (RFC 9051 §7.5.2)",
                    _absent(resp),
                )
            uid = _uid_of(resp.data)
            if uid is not None:
                self._check_uid(resp, n, uid)

    def _check_uid(self, resp: Any, n: int, uid: int) -> None:
        known = self.uids[n - 1]
        why = ""
        if known is not None and known != uid:
            why = f"message {n} had UID {known}, now {uid}"
        else:
            lower = [u for u in self.uids[: n - 1] if u is not None]
            upper = [u for u in self.uids[n:] if u is not None]
            if lower and uid <= max(lower):
                why = f"UID {uid} of message {n} is not above message {n - 1}'s and lower ones'"
            elif upper and uid >= min(upper):
                why = f"UID {uid} of message {n} is not below a later message's"
            elif known is None and uid <= self.floors[n - 1]:
                why = (
                    f"message {n} is new, but its UID {uid} is not above {self.floors[n - 1]}, "
                    "the highest seen before it arrived"
                )
        if why:
            raise Violation(
                why + " (RFC 9051 §2.3.1.1: UIDs ascend and a message keeps its UID)",
                _absent(resp),
            )
        self.uids[n - 1] = uid
        self.high = max(self.high, uid)


def _uid_of(data: Any) -> int | None:
    if not data:
        return None
    items = data[0] if isinstance(data[0], tuple) else data
    for key, value in zip(items[::2], items[1::2], strict=False):
        if isinstance(key, str) and key.upper() == "UID" and isinstance(value, int):
            return value
    return None
