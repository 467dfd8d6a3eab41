"""Keeping account passwords out of transcripts, console output and saved reports.

Theory of operation: reports are meant to be shared (CI artifacts, code-scanning
uploads), but transcripts hold what was sent, LOGIN and PASS lines and SASL
responses included. :class:`Redactor` replaces each password of the target's
accounts where it appears as text, and any base64 token (a SASL response) whose
decoded bytes contain one, with ``<redacted>``. The saved run is redacted too, so
nothing downstream can leak what it never received.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Iterable
from typing import Final

from .results import ScenarioResult

__all__ = ["MASK", "Redactor"]

MASK: Final = "<redacted>"
_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/]{8,}={0,2}")


class Redactor:
    """Masks the given secrets (passwords); secrets shorter than 4 characters are ignored,
    since masking them would mangle ordinary text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._raw = [s.encode("utf-8") for s in self._secrets]

    def text(self, text: str) -> str:
        if not self._secrets:
            return text
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return _BASE64_TOKEN.sub(self._token, text)

    def _token(self, match: re.Match[str]) -> str:
        token = match.group()
        try:
            decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
        except (binascii.Error, ValueError):
            return token
        return MASK if any(raw in decoded for raw in self._raw) else token

    def result(self, result: ScenarioResult) -> None:
        """Redact a result's message and transcript in place."""
        if not self._secrets:
            return
        if result.message:
            result.message = self.text(result.message)
        result.transcript = [
            dataclasses.replace(e, text=self.text(e.text)) for e in result.transcript
        ]
