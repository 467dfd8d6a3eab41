"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3): examples, strict decoding, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_feed import FUZZ

from conformance.wire.imap import decode_mutf7, encode_mutf7

EXAMPLES = [
    ("", ""),
    ("INBOX", "INBOX"),
    ("&", "&-"),
    ("a&b", "a&-b"),
    ("Entwürfe", "Entw&APw-rfe"),
    # RFC 3501 §5.1.3
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("\U0001f4e7 mail", "&2D3c5w- mail"),  # outside the BMP: a surrogate pair in UTF-16
    ("tab\there", "tab&AAk-here"),
    ("ä&ö", "&AOQ-&-&APY-"),
]


@pytest.mark.parametrize(("text", "encoded"), EXAMPLES)
def test_encoding_and_decoding_the_examples(text: str, encoded: str) -> None:
    assert encode_mutf7(text) == encoded
    assert decode_mutf7(encoded) == text


def test_adjacent_base64_runs_are_accepted() -> None:
    assert decode_mutf7("&AOQ-&AOQ-") == "ää"


@pytest.mark.parametrize(
    ("encoded", "words"),
    [
        ("Entwürfe", "printable US-ASCII"),
        ("a\x7fb", "printable US-ASCII"),
        ("&U,BTFw", "never ends"),
        ("&", "never ends"),
        ("&Jj!o-", "not a modified BASE64 character"),
        ("&U/BTFw-", "not a modified BASE64 character"),  # "/" is "," here
        ("&U,BTFw==-", "not a modified BASE64 character"),  # no padding
        ("&A-", "stray character"),
        ("&AOR-", "non-zero padding bits"),
        ("&AA-", "odd number of octets"),
        ("&2AA-", "lone surrogate"),
        ("&AGE-", "must represent itself"),  # "a" in base64
        ("&ACY-", "must represent itself"),  # "&" in base64; "&-" is its one spelling
    ],
)
def test_invalid_modified_utf7_is_a_value_error_naming_the_rule(encoded: str, words: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3501 §5\.1\.3") as raised:
        decode_mutf7(encoded)
    assert words in str(raised.value)


def test_a_lone_surrogate_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        encode_mutf7("x\ud800y")


@FUZZ
@given(st.text())
def test_round_trip_for_any_text(text: str) -> None:
    encoded = encode_mutf7(text)
    assert all(" " <= c <= "~" for c in encoded)
    assert decode_mutf7(encoded) == text
    assert encode_mutf7(decode_mutf7(encoded)) == encoded
