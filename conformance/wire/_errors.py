"""Two-sided protocol errors that carry their wire meaning.

A :class:`RemoteProtocolError` means the *peer* broke the protocol (for the
harness: the server under test sent something malformed, which is a finding,
not a crash). A :class:`LocalProtocolError` means we were asked to do
something illegal. Any other exception escaping a core is a bug in the core.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """A protocol rule was broken; says which rule and what to answer.

    Args:
        message: one line saying what was wrong, in terms of the bytes seen.
        rfc_ref: the rule broken, written ``RFC 5321 §4.2`` (one form, greppable).
        reply_hint: what a server would answer (``"500"``, ``"-ERR"``, ``"BAD"``), if anything.
    """

    def __init__(self, message: str, *, rfc_ref: str | None = None, reply_hint: str | None = None):
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise Local- or RemoteProtocolError")
        super().__init__(message)
        self.message = message
        self.rfc_ref = rfc_ref
        self.reply_hint = reply_hint

    def __str__(self) -> str:
        if self.rfc_ref:
            return f"{self.message} ({self.rfc_ref})"
        return self.message


class LocalProtocolError(ProtocolError):
    """We (the caller of the core) tried to do something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes the protocol does not allow."""
