"""Durations on the command line: ``90``, ``1.5``, ``30s``, ``2m``, ``1h30m``.

One parser for every option that takes a time span (``fuzz --time-budget``,
``load --run-time``), so they all accept what Locust's ``--run-time`` accepts.
"""

from __future__ import annotations

import re
from typing import Any

import click

__all__ = ["Duration", "parse_duration"]

_FORM = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """Seconds of ``text``: plain seconds (``90``, ``1.5``), or ``h``/``m``/``s`` parts.

    Raises:
        ValueError: not in that form (the message says which forms are).
    """
    m = _FORM.match(text.strip().replace(" ", ""))
    if not text.strip() or m is None or not any(m.groups()):
        raise ValueError(f"{text!r}: write seconds like 90, 30s, 2m or 1h30m")
    h, mi, s = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


class Duration(click.ParamType):
    """A click option type for :func:`parse_duration`; zero is refused."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r}: the duration must be more than zero", param, ctx)
        return seconds
