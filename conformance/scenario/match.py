"""Judge one response against an :class:`~conformance.scenario.model.Expectation`.

Each check returns a one-line reason when it fails, phrased as "expected
X, got Y" so the console, JUnit and the report can show it unchanged. All
checks run, so one failure message lists every mismatch of the step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..wire.imap import UntaggedResponse
from ..wire.pop3 import Pop3Continuation, Pop3Response
from ..wire.smtp import Reply
from .model import Expectation
from .sessions import Closed, ImapExchange, capability_set_smtp, response_text

__all__ = ["check", "message_octets", "same_message"]


def _enhanced_matches(pattern: str, actual: str | None) -> bool:
    if actual is None:
        return False
    want, got = pattern.split("."), actual.split(".")
    return len(got) == 3 and all(w == "x" or w == g for w, g in zip(want, got, strict=True))


def _smtp(exp: Expectation, reply: Reply, values: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    first = reply.lines[0] if reply.lines else ""
    got = f"{reply.code} {first}".rstrip()
    if exp.codes and reply.code not in exp.codes:
        want = " or ".join(str(c) for c in exp.codes)
        problems.append(f"expected reply code {want}, got {got!r}")
    if exp.reply_class is not None and reply.code // 100 != exp.reply_class:
        problems.append(f"expected a {exp.reply_class}xx reply, got {got!r}")
    if exp.enhanced is not None and not _enhanced_matches(exp.enhanced, reply.enhanced):
        problems.append(
            f"expected enhanced status code {exp.enhanced}, got "
            f"{reply.enhanced or 'none'} in {got!r}"
        )
    if exp.multiline is not None and reply.is_multiline != exp.multiline:
        shape = "a multiline" if exp.multiline else "a single-line"
        problems.append(f"expected {shape} reply, got {len(reply.lines)} line(s)")
    if exp.lines is not None:
        if len(exp.lines) != len(reply.lines):
            problems.append(f"expected {len(exp.lines)} reply line(s), got {len(reply.lines)}")
        for i, (tpl, line) in enumerate(zip(exp.lines, reply.lines, strict=False)):
            if not tpl.render_regex(values).search(line):
                problems.append(
                    f"reply line {i + 1}: expected /{tpl.render(values)}/, got {line!r}"
                )
    if exp.ehlo_has or exp.ehlo_lacks:
        caps = capability_set_smtp(reply) if reply.code == 250 else set()
        missing = [k for k in exp.ehlo_has if k not in caps]
        present = [k for k in exp.ehlo_lacks if k in caps]
        if missing:
            problems.append(f"expected EHLO keyword(s) {', '.join(missing)}, not advertised")
        if present:
            problems.append(
                f"expected EHLO keyword(s) {', '.join(present)} to be absent, but advertised"
            )
    return problems


def _pop3(
    exp: Expectation, resp: Pop3Response | Pop3Continuation, values: Mapping[str, str]
) -> list[str]:
    if isinstance(resp, Pop3Continuation):
        return [f"expected a status response, got a SASL continuation '+ {resp.text}'"]
    problems: list[str] = []
    head = resp.raw.split(b"\r\n", 1)[0].decode("utf-8", "replace")
    if exp.status_ok is not None and resp.ok != exp.status_ok:
        problems.append(f"expected {'+OK' if exp.status_ok else '-ERR'}, got {head!r}")
    if exp.resp_code is not None and (resp.code or "").upper() != exp.resp_code:
        problems.append(f"expected response code [{exp.resp_code}], got {head!r}")
    if exp.multiline is not None and (resp.lines is not None) != exp.multiline:
        problems.append(
            f"expected a {'multiline' if exp.multiline else 'single-line'} response, got {head!r}"
        )
    body = [b.decode("utf-8", "surrogateescape") for b in resp.lines or ()]
    if exp.body is not None:
        if resp.lines is None:
            problems.append(f"expected a multiline body, got the single line {head!r}")
        else:
            if len(exp.body) != len(body):
                problems.append(f"expected {len(exp.body)} body line(s), got {len(body)}")
            for i, (tpl, line) in enumerate(zip(exp.body, body, strict=False)):
                if not tpl.render_regex(values).search(line):
                    problems.append(
                        f"body line {i + 1}: expected /{tpl.render(values)}/, got {line!r}"
                    )
    if exp.body_text is not None and not exp.body_text.render_regex(values).search("\n".join(body)):
        problems.append(f"expected the body to match /{exp.body_text.render(values)}/")
    if exp.message is not None:
        if resp.lines is None:
            problems.append(f"expected a multiline response carrying the message, got {head!r}")
        else:
            got = b"".join(line + b"\r\n" for line in resp.lines)
            why = same_message(got, message_octets(exp.message.render(values)))
            if why:
                problems.append(why)
    return problems


def _imap(exp: Expectation, ex: ImapExchange, values: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    if exp.continuation and ex.continuation is None:
        got = _describe_tagged(ex)
        problems.append(f"expected a continuation request ('+'), got {got}")
    if exp.tagged is not None and (ex.tagged is None or ex.tagged.status != exp.tagged):
        problems.append(f"expected tagged {exp.tagged}, got {_describe_tagged(ex)}")
    if exp.resp_code is not None:
        status = ex.tagged if ex.tagged is not None else (ex.untagged[0] if ex.untagged else None)
        code = getattr(status, "code", None)
        if (code or "").upper() != exp.resp_code:
            problems.append(f"expected response code [{exp.resp_code}], got {_describe_tagged(ex)}")
    lines = [u.line for u in ex.untagged]
    used: set[int] = set()
    for tpl in exp.untagged:
        pat = tpl.render_regex(values)
        hit = next((i for i, line in enumerate(lines) if i not in used and pat.search(line)), None)
        if hit is None:
            shown = "; ".join(lines[:8]) or "none"
            problems.append(
                f"expected an untagged response matching /{tpl.render(values)}/, got: {shown}"
            )
        else:
            used.add(hit)
    if exp.untagged_only:
        extra = [line for i, line in enumerate(lines) if i not in used]
        if extra:
            problems.append(f"unexpected untagged response(s): {'; '.join(extra[:8])}")
    for tpl in exp.untagged_absent:
        pat = tpl.render_regex(values)
        bad = [line for line in lines if pat.search(line)]
        if bad:
            problems.append(
                f"expected no untagged response matching /{tpl.render(values)}/, got {bad[0]!r}"
            )
    if exp.message is not None:
        problems += _fetched_message(ex, message_octets(exp.message.render(values)))
    return problems


_WHOLE_MESSAGE = {"BODY[]", "RFC822"}


def _fetched_message(ex: ImapExchange, want: bytes) -> list[str]:
    """The FETCH responses' ``BODY[]`` (or ``RFC822``) must be ``want`` below added fields."""
    found: list[bytes] = []
    for u in ex.untagged:
        if u.keyword != "FETCH" or not u.data or not isinstance(u.data[0], tuple):
            continue
        items = u.data[0]
        for name, value in zip(items[::2], items[1::2], strict=False):
            if str(name).upper() in _WHOLE_MESSAGE and isinstance(value, bytes):
                found.append(value)
    if not found:
        shown = "; ".join(u.line[:80] for u in ex.untagged[:8]) or "none"
        return [f"expected a FETCH response carrying BODY[] (the whole message), got: {shown}"]
    reasons = [same_message(got, want) for got in found]
    return [] if any(r is None for r in reasons) else [next(r for r in reasons if r)]


# A header field (RFC 5322 §2.2, §3.6): a name of printable ASCII but ":", the colon
# (obs-syntax allows white space before it), the value, and folded continuation lines.
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


def message_octets(text: str) -> bytes:
    """A message as it goes on the wire: UTF-8, every line ended by CRLF (RFC 5322 §2.1).

    Line ends in ``text`` (CRLF, LF or CR) become CRLF and a last line gets one; this is
    what ``data:`` sends before dot-stuffing, so ``expect.message`` compares like with like.
    """
    body = text.encode("utf-8", errors="surrogateescape")
    lines = re.split(rb"\r\n|\n|\r", body)
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


def same_message(got: bytes, want: bytes) -> str | None:
    """None if ``got`` is ``want`` with zero or more whole header fields put before it.

    Servers add trace fields at the top (RFC 5321 §4.4: Received, Return-Path) and some
    add others there (Delivered-To, a DKIM signature, RFC 6409 §8.5); everything below
    must be the octets sent. Otherwise a one-line reason naming the first difference,
    measured from the start of the message sent.
    """
    starts = [0]  # where the message would begin after 0, 1, 2... leading header fields
    while (m := _FIELD.match(got, starts[-1])) is not None:
        starts.append(m.end())
    best_start, best_common = 0, -1
    for start in starts:
        if got[start:] == want:
            return None
        common = _common_prefix(got[start:], want)
        if common > best_common:
            best_start, best_common = start, common
    rest = got[best_start:]
    added = starts.index(best_start)
    below = f" below {added} added header field(s)" if added else ""
    line = want.count(b"\n", 0, best_common) + 1
    if best_common == len(want):
        return (
            f"the message differs from the message sent{below}: it goes on after the "
            f"{len(want)} octets sent with {rest[best_common : best_common + 40]!r}"
        )
    if best_common == len(rest):
        return (
            f"the message differs from the message sent{below}: it ends at octet "
            f"{best_common} (line {line}), before {want[best_common : best_common + 40]!r}"
        )
    return (
        f"the message differs from the message sent{below} at octet {best_common} (line "
        f"{line}): expected {want[best_common : best_common + 40]!r}, got "
        f"{rest[best_common : best_common + 40]!r}"
    )


def _common_prefix(a: bytes, b: bytes) -> int:
    """How many leading octets ``a`` and ``b`` share."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _describe_tagged(ex: ImapExchange) -> str:
    if ex.tagged is not None:
        return repr(ex.tagged.raw.decode("utf-8", "replace").rstrip("\r\n"))
    if ex.continuation is not None:
        return f"a continuation request '+ {ex.continuation.text}'"
    if ex.untagged:
        return f"only untagged data ({ex.untagged[-1].line!r})"
    return "nothing"


def check(exp: Expectation, resp: object, values: Mapping[str, str]) -> list[str]:
    """Every way ``resp`` departs from ``exp`` (empty when it matches)."""
    if isinstance(resp, Closed):
        return ["expected a response, but the server closed the connection"]
    problems: list[str] = []
    if isinstance(resp, Reply):
        problems += _smtp(exp, resp, values)
    elif isinstance(resp, Pop3Response | Pop3Continuation):
        problems += _pop3(exp, resp, values)
    elif isinstance(resp, ImapExchange):
        problems += _imap(exp, resp, values)
    elif isinstance(resp, UntaggedResponse):
        problems += _imap(exp, ImapExchange(untagged=[resp]), values)
    if exp.text is not None:
        text = _status_text(resp)
        if not exp.text.render_regex(values).search(text):
            problems.append(f"expected text matching /{exp.text.render(values)}/, got {text!r}")
    return problems


def _status_text(resp: object) -> str:
    """What ``text:`` is matched against: the human-readable part of the response."""
    if isinstance(resp, Pop3Response):
        return resp.text
    if isinstance(resp, ImapExchange):
        if resp.tagged is not None:
            return resp.tagged.text
        if resp.continuation is not None:
            return resp.continuation.text
        if resp.untagged:
            return resp.untagged[0].text or resp.untagged[0].line
        return ""
    return response_text(resp)
