"""Reading a response's verdict: positive, a refusal, and a short form for messages.

Shared by the runner and the capability probe; a response is an SMTP
:class:`~conformance.wire.smtp.Reply`, a POP3 :class:`~conformance.wire.pop3.Pop3Response`,
an :class:`~.sessions.ImapExchange`, or :class:`~.sessions.Closed`.
"""

from __future__ import annotations

from ..wire.pop3 import Pop3Response
from ..wire.smtp import Reply
from .sessions import Closed, ImapExchange, response_text

__all__ = ["positive", "refusal", "show_response"]


def positive(resp: object) -> bool:
    if isinstance(resp, Reply):
        return 200 <= resp.code < 400
    if isinstance(resp, Pop3Response):
        return resp.ok
    if isinstance(resp, ImapExchange):
        if resp.tagged is not None:
            return resp.tagged.status == "OK"
        return bool(resp.untagged) and resp.untagged[0].keyword in ("OK", "PREAUTH")
    return False


def refusal(resp: object) -> bool:
    """A negative answer: SMTP 4xx/5xx, POP3 -ERR, IMAP NO/BAD or an untagged BYE."""
    if isinstance(resp, Reply):
        return resp.code >= 400
    if isinstance(resp, Pop3Response):
        return not resp.ok
    if isinstance(resp, ImapExchange):
        if resp.tagged is not None and resp.tagged.status in ("NO", "BAD"):
            return True
        return any(u.keyword == "BYE" for u in resp.untagged)
    return False


def show_response(resp: object) -> str:
    if isinstance(resp, Closed):
        return "the connection closed"
    text = response_text(resp).splitlines()
    return repr(text[-1] if isinstance(resp, ImapExchange) and text else (text[0] if text else ""))
