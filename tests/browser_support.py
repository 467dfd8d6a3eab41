"""Headless Chromium for the tests that look at pages (the HTML report, the webmail).

Chromium comes from Debian (.ci/run installs it). On a machine without it the
tests skip, except under CI, where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

__all__ = ["CHROMIUM", "CHROMIUM_FLAGS", "unavailable"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# what a closed network needs: no background fetches, no QUIC, no first-run work
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def unavailable(reason: str) -> NoReturn:
    """Skip for ``reason``; under CI, fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (.ci/run installs Debian's chromium and the test extras)")
    pytest.skip(reason)
