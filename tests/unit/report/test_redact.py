"""Passwords never reach transcripts, messages or reports."""

from __future__ import annotations

import base64

from conformance.redact import MASK, Redactor
from conformance.results import ScenarioResult, Status
from conformance.transport import TranscriptEntry


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_plain_text_and_sasl_responses_are_masked() -> None:
    r = Redactor(["s3cret-pw", "ab"])
    assert r.text('a1 LOGIN "alice" "s3cret-pw"') == f'a1 LOGIN "alice" "{MASK}"'
    assert r.text("PASS s3cret-pw") == f"PASS {MASK}"
    plain = b64(b"\x00alice\x00s3cret-pw")
    assert r.text(f"AUTH PLAIN {plain}") == f"AUTH PLAIN {MASK}"
    assert r.text(b64(b"s3cret-pw")) == MASK  # AUTH LOGIN's password line
    assert r.text(b64(b"alice")) == b64(b"alice")  # the user name stays
    assert r.text("tab and abc") == "tab and abc"  # secrets under 4 characters are ignored
    assert r.text("250-STARTTLS 250 SIZE 26214400") == "250-STARTTLS 250 SIZE 26214400"


def test_a_result_is_redacted_in_place() -> None:
    result = ScenarioResult(
        id="x",
        title="t",
        path="p",
        status=Status.FAILED,
        message="expected OK, got: a1 NO bad password s3cret-pw",
        transcript=[TranscriptEntry(0.0, "main", "C", "PASS s3cret-pw")],
    )
    Redactor(["s3cret-pw"]).result(result)
    assert result.message == f"expected OK, got: a1 NO bad password {MASK}"
    assert result.transcript[0].text == f"PASS {MASK}"
