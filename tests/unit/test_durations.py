"""Durations on the command line (conformance/durations.py)."""

from __future__ import annotations

import click
import pytest

from conformance.durations import Duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("1.5", 1.5),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h30m", 5400.0),
        ("1h 2m 3s", 3723.0),
    ],
)
def test_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "1x", "-5", "2m1h", "1.5m"])
def test_refused_with_the_forms_named(text: str) -> None:
    with pytest.raises(ValueError, match="write seconds like 90, 30s, 2m or 1h30m"):
        parse_duration(text)


def test_click_type_refuses_zero() -> None:
    with pytest.raises(click.BadParameter, match="more than zero"):
        Duration().convert("0s", None, None)
    assert Duration().convert("60s", None, None) == 60.0
