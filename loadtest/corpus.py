"""Test messages for load: sizes from a distribution, MIME with attachments, unique ids.

A size spec is either one size (``4096``, ``4KB``, ``1MB``: every message that
size) or weighted sizes, ``80%:4KB,15%:64KB,5%:1MB``, whose weights add up to
100. Units are B, KB (1024 bytes) and MB (1024 KB), case-insensitive; a size
is from 256 B (the headers alone take about that) to 64 MB.
:meth:`SizeDistribution.parse` explains a bad spec in one line.

:class:`MessageFactory` builds RFC 5322 messages of about the size drawn (the
whole message, headers included, within a few percent): a ``text/plain``
message below ``attachment_threshold``, and at or above it a
``multipart/mixed`` message with a short text part and a base64
``application/octet-stream`` attachment carrying the rest. Every message has a
unique ``Message-ID`` and an ``X-Mailharness-Token`` header (the same token),
which the delivery-path user searches for to see the message arrive.

Everything random comes from one ``random.Random(seed)``: with the same seed
and the same sequence of calls, the same sizes and the same content come out
(the ``Date`` header excepted). The seed is chosen at random when not given;
it is kept in :attr:`MessageFactory.seed` so a run can log it and be repeated.
Text is cut from a block of words made once per factory, so a 1 MB message
costs a copy, not a million random draws.
"""

from __future__ import annotations

import base64
import bisect
import email.utils
import itertools
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_SIZES",
    "GeneratedMessage",
    "MessageFactory",
    "SizeDistribution",
    "SizeSpecError",
    "format_size",
    "parse_size",
]

DEFAULT_SIZES = "80%:4KB,15%:64KB,5%:1MB"
MIN_SIZE = 256
MAX_SIZE = 64 * 1024 * 1024
_UNITS = {"": 1, "B": 1, "KB": 1024, "K": 1024, "MB": 1024 * 1024, "M": 1024 * 1024}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_WEIGHT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*")

_WORDS = [
    "mail",
    "server",
    "load",
    "test",
    "message",
    "queue",
    "delivery",
    "latency",
    "throughput",
    "mailbox",
    "relay",
    "header",
    "body",
    "envelope",
    "sender",
    "recipient",
    "transaction",
    "pipeline",
    "session",
    "capacity",
    "retry",
    "bounce",
    "spool",
    "storage",
    "folder",
    "flag",
    "index",
    "search",
    "fetch",
    "idle",
    "notify",
    "archive",
]


class SizeSpecError(ValueError):
    """A size spec that cannot be used; the message says why and how to write it."""


def parse_size(text: str) -> int:
    """``"64KB"`` -> 65536. Raises :class:`SizeSpecError` for anything else."""
    m = _SIZE.fullmatch(text)
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in _UNITS:
        raise SizeSpecError(
            f"message size {text.strip()!r} is not a size: write a number with an optional "
            "unit B, KB or MB (e.g. 4096, 64KB, 1MB)"
        )
    size = int(float(m.group(1)) * _UNITS[unit])
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise SizeSpecError(
            f"message size {text.strip()!r} ({size} bytes) is outside "
            f"{format_size(MIN_SIZE)}..{format_size(MAX_SIZE)}"
        )
    return size


def format_size(size: int) -> str:
    """65536 -> ``"64KB"``; sizes that are not whole KB or MB stay in bytes."""
    for unit, factor in (("MB", 1024 * 1024), ("KB", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


@dataclass(frozen=True)
class SizeDistribution:
    """Message sizes and their weights (percent, adding up to 100)."""

    choices: tuple[tuple[float, int], ...]

    @classmethod
    def parse(cls, spec: str) -> SizeDistribution:
        """Read ``4096``, ``4KB`` or ``80%:4KB,15%:64KB,5%:1MB``.

        Raises:
            SizeSpecError: one line saying what is wrong with ``spec``.
        """
        if not spec or not spec.strip():
            raise SizeSpecError(
                "message size spec is empty: give a size like 4096 or 4KB, "
                f"or weighted sizes like {DEFAULT_SIZES}"
            )
        if "%" not in spec and ":" not in spec and "," not in spec:
            return cls(((100.0, parse_size(spec)),))
        choices: list[tuple[float, int]] = []
        for item in spec.split(","):
            weight_text, colon, size_text = item.partition(":")
            w = _WEIGHT.fullmatch(weight_text)
            if not colon or w is None:
                raise SizeSpecError(
                    f"message size spec item {item.strip()!r} is not WEIGHT%:SIZE "
                    f"(e.g. {DEFAULT_SIZES})"
                )
            weight = float(w.group(1))
            if weight <= 0:
                raise SizeSpecError(f"message size spec item {item.strip()!r}: weight must be > 0%")
            choices.append((weight, parse_size(size_text)))
        total = sum(w for w, _ in choices)
        if abs(total - 100.0) > 0.01:
            raise SizeSpecError(
                f"message size weights add up to {total:g}%, not 100% (in {spec.strip()!r})"
            )
        return cls(tuple(choices))

    def draw(self, rng: random.Random) -> int:
        """One size, chosen with the weights."""
        if len(self.choices) == 1:
            return self.choices[0][1]
        cumulative = list(itertools.accumulate(w for w, _ in self.choices))
        index = bisect.bisect_right(cumulative, rng.random() * cumulative[-1])
        return self.choices[min(index, len(self.choices) - 1)][1]

    def mean(self) -> float:
        return sum(w * s for w, s in self.choices) / sum(w for w, _ in self.choices)

    def __str__(self) -> str:
        if len(self.choices) == 1:
            return format_size(self.choices[0][1])
        return ",".join(f"{w:g}%:{format_size(s)}" for w, s in self.choices)


@dataclass(slots=True)
class GeneratedMessage:
    """A message ready to send (a plain record: a load generator makes tens of
    thousands a second, and a frozen dataclass's ``__init__`` costs three times
    as much).

    Attributes:
        data: the message, CRLF line ends; no line starts with ``.``, so as an
            SMTP DATA payload it needs no dot-stuffing, only the final ``.`` line.
        token: unique per message; also in ``X-Mailharness-Token``.
        message_id: the ``Message-ID`` value, ``<token@domain>``.
        size: the size drawn (``len(data)`` is within a few percent of it).
        multipart: whether it carries an attachment.
    """

    data: bytes
    token: str
    message_id: str
    size: int
    multipart: bool


_date_second = -1
_date_value = ""


def _date_now() -> str:
    """``formatdate(usegmt=True)`` of now, formatted at most once a second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_second, _date_value = now, email.utils.formatdate(now, usegmt=True)
    return _date_value


class MessageFactory:
    """Builds messages with sizes from ``sizes``; see the module docstring.

    Args:
        sizes: the distribution (or a spec string for :meth:`SizeDistribution.parse`).
        seed: seeds the generator; ``None`` picks one (kept in :attr:`seed`).
        stream: distinguishes factories of one run (``"w0"``, ``"w1"`` for Locust
            workers) so their tokens never collide.
        attachment_threshold: messages of at least this many bytes get an attachment.
        domain: the right-hand side of Message-IDs.
    """

    def __init__(
        self,
        sizes: SizeDistribution | str = DEFAULT_SIZES,
        *,
        seed: int | None = None,
        stream: str = "0",
        attachment_threshold: int = 32 * 1024,
        domain: str = "loadtest.mailharness.invalid",
    ) -> None:
        self.sizes = SizeDistribution.parse(sizes) if isinstance(sizes, str) else sizes
        self.seed = random.SystemRandom().randrange(1, 2**32) if seed is None else seed
        self.stream = re.sub(r"[^A-Za-z0-9-]", "-", stream) or "0"
        self.attachment_threshold = attachment_threshold
        self.domain = domain
        self.rng = random.Random(f"{self.seed}/{self.stream}")
        self._counter = itertools.count(1)
        self._token_prefix = f"mh{self.seed:x}-{self.stream}-"
        self._text = self._make_text(self.rng)

    @staticmethod
    def _make_text(rng: random.Random, size: int = 16 * 1024) -> bytes:
        lines: list[str] = []
        total = 0
        while total < size:
            words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 11))]
            line = " ".join(words).capitalize() + "."
            lines.append(line)
            total += len(line) + 2
        return ("\r\n".join(lines) + "\r\n").encode("ascii")

    def _text_of(self, size: int) -> bytes:
        """``size`` bytes of text (whole lines, CRLF), starting at a random line."""
        if size <= 0:
            return b""
        block = self._text
        start = block.find(b"\r\n", self.rng.randrange(len(block))) + 2
        if start >= len(block):
            start = 0
        if start + size <= len(block):  # the common case, without building a copy first
            cut = block.rfind(b"\r\n", start, start + size)
            if cut > start:
                return block[start : cut + 2]
        out = bytearray()
        while len(out) < size:
            out += block[start:]
            start = 0
        cut = out.rfind(b"\r\n", 0, size)
        return bytes(out[: cut + 2]) if cut > 0 else b"x" * max(size - 2, 0) + b"\r\n"

    def new_token(self) -> str:
        """A token unique in this run: seed, stream, counter and 32 random bits."""
        return f"{self._token_prefix}{next(self._counter)}-{self.rng.getrandbits(32):08x}"

    def make(
        self, sender: str, recipients: Sequence[str], *, size: int | None = None
    ) -> GeneratedMessage:
        """A message from ``sender`` to ``recipients``, of a size drawn (or ``size``)."""
        target = self.sizes.draw(self.rng) if size is None else size
        token = self.new_token()
        message_id = f"<{token}@{self.domain}>"
        multipart = target >= self.attachment_threshold
        to = (
            f"<{recipients[0]}>"
            if len(recipients) == 1
            else ", ".join([f"<{r}>" for r in recipients])
        )
        headers = (
            f"From: <{sender}>\r\n"
            f"To: {to}\r\n"
            f"Subject: mailharness load {token}\r\n"
            f"Date: {_date_now()}\r\n"
            f"Message-ID: {message_id}\r\n"
            f"X-Mailharness-Token: {token}\r\n"
            "MIME-Version: 1.0\r\n"
        ).encode("ascii")
        if not multipart:
            head = headers + b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
            body = self._text_of(target - len(head))
            data = head + (body or b"\r\n")
        else:
            boundary = f"=_mh_{token}"
            text = self._text_of(min(2048, target // 8))
            attachment_head = (
                f"--{boundary}\r\n"
                "Content-Type: application/octet-stream\r\n"
                f'Content-Disposition: attachment; filename="{token}.bin"\r\n'
                "Content-Transfer-Encoding: base64\r\n\r\n"
            ).encode("ascii")
            head = (
                headers
                + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode("ascii")
                + b"This is a multi-part message in MIME format.\r\n"
                + f"--{boundary}\r\n".encode("ascii")
                + b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
                + text
                + attachment_head
            )
            tail = f"--{boundary}--\r\n".encode("ascii")
            room = max(target - len(head) - len(tail), 78)
            # base64 lines of 76 characters + CRLF carry 57 raw bytes each
            raw = self.rng.randbytes(max(room * 57 // 78, 1))
            encoded = base64.encodebytes(raw).replace(b"\n", b"\r\n")
            data = head + encoded + tail
        return GeneratedMessage(
            data=data, token=token, message_id=message_id, size=target, multipart=multipart
        )
