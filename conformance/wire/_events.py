"""Outcomes of ``next_event()`` that belong to no protocol in particular.

Every reader in :mod:`conformance.wire` (SMTP replies, POP3 responses, IMAP
responses) can also answer "I need more bytes" or "the peer closed the
connection cleanly". Keeping those two values here, shared, lets one driver loop
serve all three protocols: ``if event is NEED_DATA: read more``, ``if
isinstance(event, ConnectionClosed): stop``. This is h11's design.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = ["NEED_DATA", "ConnectionClosed", "NeedData"]


class NeedData(enum.Enum):
    """The type of :data:`NEED_DATA`.

    An enum with one member, so ``event is NEED_DATA`` narrows the type under
    mypy, and the sentinel survives copying and pickling as the same object.
    """

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA
"""Returned by ``next_event()`` when the buffered bytes do not yet hold a whole event."""


@dataclass(frozen=True, kw_only=True)
class ConnectionClosed:
    """The peer closed the connection, and nothing it sent is left unparsed.

    Readers return it after ``receive_data(b"")`` once their buffer is empty,
    and keep returning it on every later ``next_event()`` call.
    """
