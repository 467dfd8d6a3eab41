"""What every sans-IO reader shares: EOF, unconsumed bytes, and a sticky error.

A reader subclass builds its own :class:`ReceiveBuffer` (with the RFC rules
its errors cite) and implements ``_next_event``; this base owns the contract
of ``receive_data``/``next_event``/``pending`` so the three protocols keep it
the same way.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from conformance.wire._buffer import ReceiveBuffer
from conformance.wire._errors import LocalProtocolError, RemoteProtocolError
from conformance.wire._events import ConnectionClosed, NeedData

__all__ = ["ReaderBase"]

E = TypeVar("E")


class ReaderBase(Generic[E]):
    """Feeds bytes to ``_next_event``; after one RemoteProtocolError, raises it again."""

    def __init__(self, buffer: ReceiveBuffer) -> None:
        self._buffer = buffer
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._raw = bytearray()  # bytes of the event being assembled

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet returned as part of an event."""
        return bytes(self._raw) + self._buffer.pending

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the server; ``b""`` means the server closed the connection.

        Raises:
            LocalProtocolError: data was passed after EOF.
        """
        if self._eof and data:
            raise LocalProtocolError("receive_data() called with data after EOF (b'')")
        if data:
            self._buffer.feed(data)
        else:
            self._eof = True

    def next_event(self) -> E | NeedData | ConnectionClosed:
        """The next complete event, if all its bytes are here.

        Returns:
            An event; :data:`NEED_DATA` if more bytes are needed; or
            :class:`ConnectionClosed` after EOF once everything was consumed.

        Raises:
            RemoteProtocolError: the server's bytes break the protocol (the
                message names the rule). After that the reader is unusable and
                raises the same error again.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _next_event(self) -> E | NeedData | ConnectionClosed:
        raise NotImplementedError
