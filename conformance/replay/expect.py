"""Captured text made into scenario strings: rewriting, masking, generalising, expectations.

Theory of operation. Everything a converted scenario says about the capture
goes through one :class:`Texts` object, in one order: captured secrets are
masked first (so no later step can reveal them), then the user's
``--rewrite old=new`` rules are applied (case-insensitively; ``new`` may name
target variables such as ``{account.bob.address}`` and is kept as written),
then what remains of the captured text is escaped for where it goes: a
template (``send``, ``data``: only ``{{``, ``}}`` and ``{name}`` need
doubling) or a regex (``text``, ``lines``, ``untagged``, ``body``).

Strictness (``--match``):

- ``codes``: the SMTP reply code, the POP3 ``+OK``/``-ERR``, the IMAP tagged
  status (or that a continuation request came).
- ``text``: plus the text, as an anchored regex in which the obvious volatile
  parts are generalised: every run of letters and digits holding a digit
  (counts, sizes, UIDs, UIDVALIDITY, queue and session ids, times; digits
  alone become ``\\d+``, a mix ``[A-Za-z0-9]+``), dates in RFC 5322 and IMAP
  form, and IMAP literals (a response is matched up to its first literal).
  SMTP enhanced status codes at the start of a line stay literal. POP3
  bodies are matched for CAPA, LIST and UIDL, not for RETR and TOP (the
  message on the replay target is another one).
- ``exact``: every line as captured, anchored, nothing generalised; IMAP
  untagged responses with ``untagged_only``, POP3 bodies of every multiline
  response. Line ends and the arguments of IMAP response codes are not compared.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from conformance.redact import MASK
from conformance.scenario.variables import _TOKEN as _TEMPLATE_TOKEN
from conformance.wire import (
    ContinuationRequest,
    Pop3Continuation,
    Pop3Response,
    Reply,
    TaggedResponse,
    UntaggedResponse,
)

__all__ = ["Match", "Texts", "escape_template", "expectation", "generalise"]

Match = Literal["codes", "text", "exact"]

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
# RFC 5322 §3.3 date-time, and RFC 9051 §9 date-time ("17-Jul-1996 02:44:25 -0700")
_RFC5322_DATE = (
    rf"(?:{_DAY}, )?\d{{1,2}} {_MONTH} \d{{4}} \d{{2}}:\d{{2}}(?::\d{{2}})? [+-]\d{{4}}"
    r"(?: \([A-Za-z ]+\))?"
)
_IMAP_DATE = rf"\d{{1,2}}-{_MONTH}-\d{{4}} \d{{2}}:\d{{2}}:\d{{2}} [+-]\d{{4}}"
_VOLATILE = re.compile(
    rf"(?P<date>{_RFC5322_DATE})|(?P<idate>{_IMAP_DATE})"
    r"|(?P<token>(?<![A-Za-z0-9])[A-Za-z0-9]*[0-9][A-Za-z0-9]*(?![A-Za-z0-9]))"
)
_GENERIC_DATE = (
    r"(?:[A-Z][a-z]{2}, )?\d{1,2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}(?::\d{2})? [+-]\d{4}"
    r"(?: \([A-Za-z ]+\))?"
)
_GENERIC_IDATE = r"\d{1,2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}"
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(?= |$)")
_IMAP_LITERAL = re.compile(r"\{\d+\+?\}\r\n")
_SPECIAL = re.compile(r"([.^$*+?()\[\]{}|\\])")


def _escape(text: str) -> str:
    """Like re.escape, but only the characters special outside a class (more readable)."""
    return _SPECIAL.sub(r"\\\1", text).replace("\r", "\\r").replace("\n", "\\n")


def escape_template(text: str) -> str:
    """``text`` as template source that renders to ``text`` (docs/scenario-format.md).

    Only what the template syntax would take as syntax is doubled: ``{{``, ``}}``
    and ``{name}``; IMAP literal markers such as ``{5}`` stay as they are.
    """
    return _TEMPLATE_TOKEN.sub(lambda m: m.group(0).replace("{", "{{").replace("}", "}}"), text)


def generalise(text: str) -> str:
    """A regex (unanchored) for ``text`` with its volatile parts generalised."""
    out: list[str] = []
    pos = 0
    for m in _VOLATILE.finditer(text):
        out.append(_escape(text[pos : m.start()]))
        if m.group("date"):
            out.append(_GENERIC_DATE)
        elif m.group("idate"):
            out.append(_GENERIC_IDATE)
        else:
            out.append(r"\d+" if m.group().isdigit() else "[A-Za-z0-9]+")
        pos = m.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


class Texts:
    """Masking, rewriting and escaping of captured text (see the module docstring).

    Args:
        rewrites: ``(old, new)`` pairs, applied in order, ``old`` case-insensitively.
        secrets: captured credentials; each is replaced by ``<redacted>`` wherever it
            appears (secrets shorter than 4 characters too, as whole words).
    """

    def __init__(self, rewrites: Sequence[tuple[str, str]], secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.rewrites = [(re.compile(re.escape(old), re.IGNORECASE), new) for old, new in rewrites]

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if len(secret) >= 4:
                text = text.replace(secret, MASK)
            else:
                text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", MASK, text)
        return text

    def mask_bytes(self, data: bytes) -> bytes:
        return self.mask(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    def _segments(self, text: str) -> list[tuple[bool, str]]:
        """``(rewritten, piece)``: captured text (masked) cut where a rewrite applied."""
        pieces: list[tuple[bool, str]] = [(False, self.mask(text))]
        for pattern, new in self.rewrites:
            cut: list[tuple[bool, str]] = []
            for done, piece in pieces:
                if done:
                    cut.append((done, piece))
                    continue
                pos = 0
                for m in pattern.finditer(piece):
                    cut += [(False, piece[pos : m.start()]), (True, new)]
                    pos = m.end()
                cut.append((False, piece[pos:]))
            pieces = [(d, p) for d, p in cut if p]
        return pieces

    def template(self, text: str) -> str:
        """Template source for captured text (a send line, a message)."""
        return "".join(p if done else escape_template(p) for done, p in self._segments(text))

    def regex(self, text: str, *, general: bool) -> str:
        """An unanchored regex for captured text; ``general``: volatile parts generalised."""
        out = []
        for done, piece in self._segments(text):
            if done:  # the user's replacement: its {variables} match their value literally
                pos, parts = 0, []
                for m in _TEMPLATE_TOKEN.finditer(piece):
                    parts += [_escape(piece[pos : m.start()]), m.group(0)]
                    pos = m.end()
                parts.append(_escape(piece[pos:]))
                out.append("".join(parts))
            else:
                out.append(generalise(piece) if general else _escape(piece))
        return "".join(out)

    def line_regex(self, text: str, *, general: bool, smtp: bool = False) -> str:
        """An anchored regex for one line (SMTP: a leading enhanced status code stays literal)."""
        return "^" + self._line(text, general=general, smtp=smtp) + "$"

    def lines_regex(self, lines: Sequence[str], *, general: bool, smtp: bool = False) -> str:
        """An anchored regex for lines joined with LF (the SMTP ``text`` of a reply)."""
        return "^" + "\\n".join(self._line(t, general=general, smtp=smtp) for t in lines) + "$"

    def _line(self, text: str, *, general: bool, smtp: bool) -> str:
        m = _ENHANCED.match(text) if smtp and general else None
        if m is not None:
            return _escape(m.group()) + self.regex(text[m.end() :], general=True)
        return self.regex(text, general=general)

    def imap_regex(self, line: str, *, general: bool) -> str:
        """An untagged IMAP response: ``text`` strictness stops at its first literal."""
        m = _IMAP_LITERAL.search(line) if general else None
        if m is not None:
            return "^" + self.regex(line[: m.start()], general=True) + r"\{\d+\+?\}"
        return "^" + self.regex(line, general=general) + "$"


def _imap_greeting_keyword(events: list[Any]) -> str | None:
    first = next((e for e in events if isinstance(e, UntaggedResponse)), None)
    return first.keyword if first is not None else None


def expectation(
    protocol: str, verb: str, events: list[Any], match: Match, texts: Texts
) -> dict[str, Any] | None:
    """The ``expect`` for a captured answer, or None if it is empty or incomplete.

    Args:
        protocol: ``smtp``, ``pop3`` or ``imap``.
        verb: the command answered ("" for a greeting or unsolicited responses).
        events: the server's responses to it, as the wire readers framed them.
        match: strictness.
        texts: masking, rewriting and escaping.
    """
    if not events:
        return None
    general = match == "text"
    if protocol == "smtp":
        reply = events[-1]
        assert isinstance(reply, Reply)
        exp: dict[str, Any] = {"code": reply.code}
        if match == "text":
            exp["text"] = texts.lines_regex(reply.lines, general=True, smtp=True)
        elif match == "exact":
            exp["lines"] = [texts.line_regex(line, general=False) for line in reply.lines]
        return exp
    if protocol == "pop3":
        resp = events[-1]
        if isinstance(resp, Pop3Continuation):
            return None  # an AUTH exchange cut short; logins become auth steps
        assert isinstance(resp, Pop3Response)
        exp = {"status": "ok" if resp.ok else "err"}
        if match == "codes":
            return exp
        if resp.code:
            exp["code"] = resp.code
        exp["text"] = texts.line_regex(resp.text, general=general)
        body_checked = match == "exact" or verb not in ("RETR", "TOP")
        if resp.lines is not None and body_checked:
            exp["body"] = [
                texts.line_regex(b.decode("utf-8", "surrogateescape"), general=general)
                for b in resp.lines
            ]
        return exp
    return _imap_expectation(events, match, texts)


def _imap_expectation(events: list[Any], match: Match, texts: Texts) -> dict[str, Any] | None:
    general = match == "text"
    last = events[-1]
    untagged = [e for e in events if isinstance(e, UntaggedResponse)]
    exp: dict[str, Any] = {}
    if isinstance(last, TaggedResponse):
        exp["tagged"] = last.status
        if match != "codes":
            if last.code:
                exp["code"] = last.code.upper()
            exp["text"] = texts.line_regex(last.text, general=general)
    elif isinstance(last, ContinuationRequest):
        exp["continuation"] = True
        if match != "codes":
            exp["text"] = texts.line_regex(last.text, general=general)
    elif not untagged:
        return None
    if match == "codes":
        if "tagged" not in exp and "continuation" not in exp:
            keyword = _imap_greeting_keyword(events)
            exp["untagged"] = [rf"^\* {re.escape(keyword or 'OK')}\b"]
        return exp
    if untagged:
        exp["untagged"] = [texts.imap_regex(u.line, general=general) for u in untagged]
        if match == "exact":
            exp["untagged_only"] = True
    return exp
