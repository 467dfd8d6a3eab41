"""Feeding a reader whole or in pieces, shared by the wire tests of every protocol."""

from __future__ import annotations

from typing import Any

from hypothesis import settings

from conformance.wire import NEED_DATA, ConnectionClosed, RemoteProtocolError

FUZZ = settings(max_examples=150, deadline=None, database=None)


def drain(reader: Any, data: bytes, *, eof: bool = True) -> list[Any]:
    """Feed ``data`` (then EOF) and collect events up to NEED_DATA or ConnectionClosed."""
    reader.receive_data(data)
    if eof:
        reader.receive_data(b"")
    events: list[Any] = []
    while True:
        event = reader.next_event()
        events.append(event)
        if event is NEED_DATA or isinstance(event, ConnectionClosed):
            return events


def feed_all(reader: Any, data: bytes, chunk: int | None) -> tuple[list[Any], str | None]:
    """Events (and the error, if any) from feeding ``data`` whole or in ``chunk``-byte pieces."""
    events: list[Any] = []
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    try:
        for piece in [*pieces, b""]:
            reader.receive_data(piece)
            while True:
                event = reader.next_event()
                if event is NEED_DATA:
                    break
                events.append(event)
                if isinstance(event, ConnectionClosed):
                    return events, None
    except RemoteProtocolError as exc:
        return events, str(exc)
    raise AssertionError("no ConnectionClosed after EOF")
