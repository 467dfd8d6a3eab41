"""A stored message as the page shows it: header fields, text, sanitised HTML, attachments.

Theory of operation: the message is parsed with Python's email package
(``policy.default``: RFC 2047 words and RFC 2231 parameters decoded). Parts
are numbered as IMAP numbers them (RFC 3501 §6.4.5: ``1``, ``2.1``, ...), so
an attachment's URL names the same part a ``BODY[2.1]`` would fetch. The
bytes under a UID never change, so a part number always names the same part.

What is shown inline: ``text/plain`` parts, and of a ``multipart/alternative``
the plain version (the HTML one when there is no plain one, or when the
reader asks for it). HTML is never shown as it came: :func:`sanitise_html`
runs it through ammonia (``nh3``) with an allow-list of tags and attributes,
no scripts, no styles, no images (remote images report that a message was
read), and links only to ``http``, ``https`` and ``mailto``; the page's
Content-Security-Policy forbids scripts anyway. Every other part, and every
part marked ``Content-Disposition: attachment``, is an attachment to
download.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Final

import nh3

from .mail import header_text, message_date

__all__ = [
    "Attachment",
    "Block",
    "MessageView",
    "attachment_filename",
    "find_part",
    "parse_message",
    "part_bytes",
    "render_message",
    "sanitise_html",
]

# ammonia's defaults without images and image maps (no remote fetches from a message)
_HTML_TAGS: Final = frozenset(nh3.ALLOWED_TAGS) - {"img", "map", "area"}
_URL_SCHEMES: Final = frozenset({"http", "https", "mailto"})
_CONTENT_TYPE: Final = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")
_UNSAFE_NAME: Final = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


@dataclass(frozen=True, slots=True)
class Block:
    """Text shown inline: ``kind`` is ``"text"`` (escaped on output) or ``"html"`` (sanitised)."""

    section: str
    kind: str
    content: str


@dataclass(frozen=True, slots=True)
class Attachment:
    """A part to download."""

    section: str
    content_type: str
    filename: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "part": self.section,
            "content_type": self.content_type,
            "filename": self.filename,
            "size": self.size,
        }


@dataclass(slots=True)
class MessageView:
    """Everything the message page and ``GET /api/messages/...`` show."""

    sender: str
    to: str
    cc: str
    subject: str
    date: datetime | None
    message_id: str
    blocks: list[Block] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    # the body comes as plain text and as HTML (multipart/alternative): the page offers both
    has_alternative: bool = False


def parse_message(data: bytes) -> EmailMessage:
    """The stored bytes as an :class:`EmailMessage` (``policy.default``)."""
    msg = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    return msg


def sanitise_html(html: str) -> str:
    """HTML from a message, safe to put into our page (see the module doc)."""
    return nh3.clean(
        html,
        tags=set(_HTML_TAGS),
        url_schemes=set(_URL_SCHEMES),
        link_rel="noopener noreferrer nofollow",
    )


def _is_multipart(part: EmailMessage) -> bool:
    return part.is_multipart() and part.get_content_maintype() == "multipart"


def _children(part: EmailMessage) -> list[EmailMessage]:
    return [child for child in part.iter_parts() if isinstance(child, EmailMessage)]


def leaves(msg: EmailMessage) -> list[tuple[str, EmailMessage]]:
    """Every non-multipart part with its IMAP part number (a ``message/rfc822`` is one leaf)."""
    if not _is_multipart(msg):
        return [("1", msg)]
    out: list[tuple[str, EmailMessage]] = []

    def walk(part: EmailMessage, prefix: str) -> None:
        for i, child in enumerate(_children(part), 1):
            section = f"{prefix}{i}"
            if _is_multipart(child):
                walk(child, section + ".")
            else:
                out.append((section, child))

    walk(msg, "")
    return out


def find_part(msg: EmailMessage, section: str) -> EmailMessage | None:
    """The leaf part numbered ``section``, or None."""
    return next((part for number, part in leaves(msg) if number == section), None)


def part_bytes(part: EmailMessage) -> bytes:
    """A leaf's content with its transfer encoding undone (a ``message/rfc822`` as bytes)."""
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload(0)
        if isinstance(inner, EmailMessage):
            return inner.as_bytes(policy=policy.SMTP)
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def content_type(part: EmailMessage) -> str:
    """The part's media type, or ``application/octet-stream`` if it is not a plain token pair."""
    ctype = part.get_content_type()
    return ctype if _CONTENT_TYPE.match(ctype) else "application/octet-stream"


def attachment_filename(part: EmailMessage, section: str) -> str:
    """A safe file name: the part's own (RFC 2231 decoded, path and control characters
    removed), else ``part-<section>`` with an extension for its type."""
    try:
        name = part.get_filename()
    except Exception:  # malformed parameters: fall back to a made-up name
        name = None
    if name:
        name = _UNSAFE_NAME.sub("_", unicodedata.normalize("NFC", name)).strip(" .")
    if not name:
        ext = mimetypes.guess_extension(content_type(part)) or ".bin"
        name = f"part-{section}{ext}"
    return name[:200]


def _text(part: EmailMessage) -> str:
    """A text part decoded by its charset (unknown charsets: UTF-8 with replacements), LF line
    ends."""
    text = ""
    try:
        content = part.get_content()
        if isinstance(content, str):
            text = content
    except Exception:  # unknown charset, broken encoding: show what can be shown
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return text.replace("\r\n", "\n")  # stored with CRLF; shown and served with LF


def _inline_text(part: EmailMessage) -> bool:
    return part.get_content_type() in ("text/plain", "text/html") and not part.is_attachment()


def _shown(part: EmailMessage, prefix: str, prefer_html: bool, out: dict[str, str]) -> None:
    """Collect the parts shown inline: section -> ``"text"`` or ``"html"``."""
    if not _is_multipart(part):
        if _inline_text(part):
            out[prefix or "1"] = "html" if part.get_content_subtype() == "html" else "text"
        return
    numbered = [(f"{prefix}{i}", child) for i, child in enumerate(_children(part), 1)]
    if part.get_content_subtype() == "alternative" and numbered:
        # plain text unless asked for HTML; failing that, the last (richest, RFC 2046
        # §5.1.4) alternative that has something to show
        wanted = "text/html" if prefer_html else "text/plain"
        best = next((n for n in numbered if _has_type(n[1], wanted)), None)
        if best is None:
            best = next((n for n in reversed(numbered) if _has_inline(n[1])), numbered[-1])
        numbered = [best]
    for section, child in numbered:
        _shown(child, section + "." if _is_multipart(child) else section, prefer_html, out)


def _has_type(part: EmailMessage, ctype: str) -> bool:
    if not _is_multipart(part):
        return part.get_content_type() == ctype and not part.is_attachment()
    return any(_has_type(child, ctype) for child in _children(part))


def _has_html(part: EmailMessage) -> bool:
    return _has_type(part, "text/html")


def _has_inline(part: EmailMessage) -> bool:
    return _has_type(part, "text/plain") or _has_html(part)


def render_message(data: bytes, *, prefer_html: bool = False) -> MessageView:
    """The page's view of a stored message (see the module doc)."""
    msg = parse_message(data)
    view = MessageView(
        sender=header_text(msg, "From"),
        to=header_text(msg, "To"),
        cc=header_text(msg, "Cc"),
        subject=header_text(msg, "Subject"),
        date=message_date(msg),
        message_id=header_text(msg, "Message-ID"),
    )
    shown: dict[str, str] = {}
    _shown(msg, "", prefer_html, shown)
    alternatives = _alternative_sections(msg)
    kinds = {part.get_content_subtype() for number, part in leaves(msg) if number in alternatives}
    view.has_alternative = kinds >= {"plain", "html"}
    for section, part in leaves(msg):
        kind = shown.get(section)
        if kind == "text":
            view.blocks.append(Block(section, "text", _text(part)))
        elif kind == "html":
            view.blocks.append(Block(section, "html", sanitise_html(_text(part))))
        elif section not in alternatives:
            view.attachments.append(
                Attachment(
                    section=section,
                    content_type=content_type(part),
                    filename=attachment_filename(part, section),
                    size=len(part_bytes(part)),
                )
            )
    return view


def _alternative_sections(msg: EmailMessage) -> set[str]:
    """Inline text parts inside a ``multipart/alternative``: versions of the body, never
    attachments, whether shown or not."""
    out: set[str] = set()

    def walk(part: EmailMessage, prefix: str, in_alternative: bool) -> None:
        for i, child in enumerate(_children(part), 1):
            section = f"{prefix}{i}"
            if _is_multipart(child):
                alt = in_alternative or child.get_content_subtype() == "alternative"
                walk(child, section + ".", alt)
            elif in_alternative and _inline_text(child):
                out.add(section)

    if _is_multipart(msg):
        walk(msg, "", msg.get_content_subtype() == "alternative")
    return out
