"""What IMAP FETCH and SEARCH read from a stored message: ENVELOPE, BODYSTRUCTURE, sections.

Expected values come from RFC 3501 §6.4.5 and §7.4.2 (RFC 9051 §6.4.5 and
§7.5.2), or are computed from the pieces a test message is built of, never
from the code under test. Every structure is also read back with the
harness's own client-side parser (``conformance.wire.imap``).
"""

from __future__ import annotations

import base64
import itertools
from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.wire import NEED_DATA
from conformance.wire.imap import ImapResponseReader, UntaggedResponse
from reference_server.imap.message import (
    MAX_DEPTH,
    ParsedMessage,
    Section,
    _parse_addresses,
    _parse_addresses_general,
    partial,
)

FUZZ = settings(max_examples=150, deadline=None, database=None)


def crlf(text: str) -> bytes:
    """``text`` (written with LF) as message bytes with CRLF line ends."""
    return text.replace("\n", "\r\n").encode("utf-8")


def fetch(*items: tuple[bytes, bytes]) -> dict[str, Any]:
    """Read ``* 1 FETCH (name value ...)`` with the client parser; its items by name."""
    reader = ImapResponseReader()
    reader.receive_data(
        b"* 1 FETCH (" + b" ".join(name + b" " + value for name, value in items) + b")\r\n"
    )
    event = reader.next_event()
    assert isinstance(event, UntaggedResponse), event
    assert event.keyword == "FETCH"
    assert reader.next_event() is NEED_DATA
    assert event.data is not None
    values = event.data[0]
    assert isinstance(values, tuple)
    names = [str(name) for name in values[::2]]
    return dict(zip(names, values[1::2], strict=True))


def envelope_of(message: ParsedMessage) -> tuple[Any, ...]:
    value = fetch((b"ENVELOPE", message.envelope()))["ENVELOPE"]
    assert isinstance(value, tuple)
    return value


def structure_of(message: ParsedMessage, extended: bool = True) -> tuple[Any, ...]:
    name = b"BODYSTRUCTURE" if extended else b"BODY"
    value = fetch((name, message.bodystructure(extended)))[name.decode()]
    assert isinstance(value, tuple)
    return value


def spec(text: str) -> Section:
    """``"4.2.HEADER"`` as a Section (the IMAP parser's job, done simply for the tests)."""
    numbers: list[int] = []
    words: list[str] = []
    for piece in text.split(".") if text else []:
        if piece.isdigit() and not words:
            numbers.append(int(piece))
        else:
            words.append(piece)
    return Section(tuple(numbers), ".".join(words) or None)


def lines_of(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def text_block(octets: int, lines: int, *, last_line_ended: bool = True) -> bytes:
    """Exactly ``lines`` lines in exactly ``octets`` octets."""
    breaks = lines if last_line_ended else lines - 1
    base, extra = divmod(octets - 2 * breaks, lines)
    rows = [bytes([97 + i % 26]) * (base + (i < extra)) for i in range(lines)]
    out = b"\r\n".join(rows) + (b"\r\n" if last_line_ended else b"")
    assert len(out) == octets
    return out


# -- the worked examples of RFC 3501 §7.4.2 and RFC 9051 §7.5.2 -----------------

RFC_ENVELOPE = (
    b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev%d WG mtg summary and minutes" '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'((NIL NIL "imap" "cac.washington.edu")) '
    b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
    b'NIL NIL "<B27397-0100000@cac.washington.edu>")'
)


def rfc_fetch_example(revision: int) -> bytes:
    """The message of the FETCH example: RFC822.SIZE 4286, a 3028-octet, 92-line body."""
    header = crlf(
        "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\n"
        "From: Terry Gray <gray@cac.washington.edu>\n"
        f"Subject: IMAP4rev{revision} WG mtg summary and minutes\n"
        "To: imap@cac.washington.edu\n"
        "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\n"
        "Message-Id: <B27397-0100000@cac.washington.edu>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n"
    )
    padding = 4286 - 3028 - len(header) - len(b"X-Padding: \r\n\r\n")
    assert padding > 0
    header += b"X-Padding: " + b"p" * padding + b"\r\n\r\n"
    return header + text_block(3028, 92)


@pytest.mark.parametrize("revision", [1, 2])
def test_the_rfc_fetch_example(revision):
    message = ParsedMessage.parse(rfc_fetch_example(revision))
    assert message.size == 4286
    assert message.envelope() == RFC_ENVELOPE % revision
    assert message.bodystructure(False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)'
    )
    items = fetch(
        (b"FLAGS", b"(\\Seen)"),
        (b"INTERNALDATE", b'"17-Jul-1996 02:44:25 -0700"'),
        (b"RFC822.SIZE", b"%d" % message.size),
        (b"ENVELOPE", message.envelope()),
        (b"BODY", message.bodystructure(False)),
    )
    assert items["RFC822.SIZE"] == 4286
    assert items["ENVELOPE"][4] == ((b"Terry Gray", None, b"gray", b"cac.washington.edu"),)
    assert items["BODY"] == (b"TEXT", b"PLAIN", (b"CHARSET", b"US-ASCII"), None, None, b"7BIT",
                             3028, 92)  # fmt: skip
    assert message.sent_date() == date(1996, 7, 17)


def test_the_rfc_simple_text_body_structure():
    # "A simple text message of 48 lines and 2279 octets" -- no Content-Type at all.
    message = ParsedMessage.parse(b"Subject: x\r\n\r\n" + text_block(2279, 48))
    assert message.bodystructure(False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 2279 48)'
    )
    assert message.bodystructure(True) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 2279 48 NIL NIL NIL NIL)'
    )


DIFF = (b"diff --git a/cc.c b/cc.c\n--- a/cc.c\n+++ b/cc.c\n@@ -1 +1 @@\n-old\n+new\n" * 60)[:3306]


def rfc_two_part_example() -> bytes:
    encoded = base64.b64encode(DIFF)
    assert len(encoded) == 4408
    rows = [encoded[i : i + 60] for i in range(0, 72 * 60, 60)] + [encoded[72 * 60 :]]
    attachment = b"\r\n".join(rows) + b"\r\n"
    return (
        crlf(
            "From: Terry Gray <gray@cac.washington.edu>\n"
            "MIME-Version: 1.0\n"
            'Content-Type: MULTIPART/MIXED; BOUNDARY="=_x"\n'
            "\n"
            "--=_x\n"
            "\n"
        )
        + text_block(1152, 23, last_line_ended=False)
        + crlf(
            "\n--=_x\n"
            "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME=cc.diff\n"
            "Content-ID: <960723163407.20117h@cac.washington.edu>\n"
            "Content-Description: Compiler diff\n"
            "Content-Transfer-Encoding: BASE64\n"
            "\n"
        )
        + attachment
        + crlf("\n--=_x--\n")
    )


def test_the_rfc_two_part_body_structure():
    message = ParsedMessage.parse(rfc_two_part_example())
    assert message.bodystructure(False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") '
        b'"<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73) "MIXED")'
    )
    assert message.bodystructure(True) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23 NIL NIL NIL NIL)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") '
        b'"<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73 '
        b'NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "=_x") NIL NIL NIL)'
    )
    structure_of(message)
    assert len(message.section(spec("1")) or b"") == 1152
    assert len(message.section(spec("2")) or b"") == 4554
    # SEARCH BODY looks inside the base64 attachment.
    assert message.text_contains("+++ B/CC.C", body_only=True)
    assert not message.text_contains("Terry Gray", body_only=True)
    assert message.text_contains("Terry Gray", body_only=False)


# -- MIME structures -------------------------------------------------------------

QP_UTF8 = "Gr=C3=BC=C3=9Fe aus K=C3=B6ln"
HTML = "<p>Hello</p>"
PDF_BASE64 = "JVBERi0xLjQKJcOkw7zDtsOfCg=="
QP_LATIN1 = "Caf=E9 cr=E8me"
MIXED = crlf(
    "From: Alice <alice@example.org>\n"
    "To: bob@example.org\n"
    "Subject: mixed\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="XYZ"\n'
    "\n"
    "This is a preamble.\n"
    "--XYZ\n"
    "Content-Type: multipart/alternative; boundary=alt\n"
    "\n"
    "--alt\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    f"{QP_UTF8}\n"
    "--alt\n"
    'Content-Type: text/html; charset="utf-8"\n'
    "\n"
    f"{HTML}\n"
    "--alt--\n"
    "--XYZ\n"
    'Content-Type: application/pdf; name="report.pdf"\n'
    "Content-Transfer-Encoding: base64\n"
    'Content-Disposition: attachment; filename="report.pdf"; size=12\n'
    "Content-Language: en, de\n"
    "Content-Location: http://example.org/report.pdf\n"
    "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n"
    "\n"
    f"{PDF_BASE64}\n"
    "--XYZ\n"
    "Content-Type: text/plain; charset=iso-8859-1\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "Content-Disposition: inline\n"
    "\n"
    f"{QP_LATIN1}\n"
    "--XYZ--\n"
    "This is the epilogue.\n"
)


def test_mixed_with_alternative_attachment_and_quoted_printable():
    message = ParsedMessage.parse(MIXED)
    alternative_body = MIXED.split(b"boundary=alt\r\n\r\n")[1].split(b"\r\n--XYZ")[0]
    assert message.bodystructure(True) == (
        b'((("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" %d 1 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" %d 1 NIL NIL NIL NIL) "ALTERNATIVE" '
        b'("BOUNDARY" "alt") NIL NIL NIL)'
        b'("APPLICATION" "PDF" ("NAME" "report.pdf") NIL NIL "BASE64" %d '
        b'"Q2hlY2sgSW50ZWdyaXR5IQ==" ("ATTACHMENT" ("FILENAME" "report.pdf" "SIZE" "12")) '
        b'("en" "de") "http://example.org/report.pdf")'
        b'("TEXT" "PLAIN" ("CHARSET" "iso-8859-1") NIL NIL "QUOTED-PRINTABLE" %d 1 '
        b'NIL ("INLINE" NIL) NIL NIL) "MIXED" ("BOUNDARY" "XYZ") NIL NIL NIL)'
    ) % (len(QP_UTF8), len(HTML), len(PDF_BASE64), len(QP_LATIN1))
    assert message.bodystructure(False) == (
        b'((("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 29 1)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 12 1) "ALTERNATIVE")'
        b'("APPLICATION" "PDF" ("NAME" "report.pdf") NIL NIL "BASE64" 28)'
        b'("TEXT" "PLAIN" ("CHARSET" "iso-8859-1") NIL NIL "QUOTED-PRINTABLE" 14 1) "MIXED")'
    )
    structure_of(message, extended=True)
    structure_of(message, extended=False)
    assert message.section(spec("1")) == alternative_body
    assert message.section(spec("1.1")) == QP_UTF8.encode()
    assert message.section(spec("1.2")) == HTML.encode()
    assert message.section(spec("1.2.MIME")) == b'Content-Type: text/html; charset="utf-8"\r\n\r\n'
    assert message.section(spec("2")) == PDF_BASE64.encode()
    assert message.section(spec("3")) == QP_LATIN1.encode()
    assert message.section(spec("4")) == b""
    assert message.section(spec("1.3")) == b""
    assert message.section(spec("TEXT")) == MIXED.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize(
    ("needle", "body_only", "found"),
    [
        ("grüße aus köln", True, True),  # quoted-printable UTF-8
        ("GRÜSSE", True, True),  # casefold: ß matches ss
        ("café crème", True, True),  # quoted-printable ISO-8859-1
        ("%pdf-1.4", True, True),  # inside the base64 attachment
        ("<p>hello", True, True),
        ("preamble", True, False),  # preamble and epilogue are not searched
        ("epilogue", True, False),
        ("=C3=BC", True, False),  # the encoded form is not what is searched
        ("alice@example", True, False),
        ("alice@example", False, True),  # TEXT searches the header too
        ("", True, True),
    ],
)
def test_search_body_and_text(needle, body_only, found):
    assert ParsedMessage.parse(MIXED).text_contains(needle, body_only) is found


INNER = crlf(
    "Date: Mon, 7 Feb 1994 21:52:25 -0800\n"
    "From: Fred Foobar <foobar@Blurdybloop.example>\n"
    "Subject: afternoon meeting\n"
    "To: mooch@owatagu.siam.edu.example\n"
    "Message-Id: <B27397-0100000@Blurdybloop.example>\n"
    "\n"
    "Hello Joe, do you think we can meet at 3:30 tomorrow?"
)
INNER_MIME = crlf("Content-Type: message/rfc822\nContent-Description: forwarded\n\n")
FORWARD = (
    crlf(
        "From: fwd@example.org\n"
        "Subject: Fwd: afternoon\n"
        "Content-Type: multipart/mixed; boundary=b1\n"
        "\n"
        "--b1\n"
        "Content-Type: text/plain\n"
        "\n"
        "see attached\n"
        "--b1\n"
    )
    + INNER_MIME
    + INNER
    + crlf("\n--b1--\n")
)
INNER_ENVELOPE = (
    b'("Mon, 7 Feb 1994 21:52:25 -0800" "afternoon meeting" '
    b'(("Fred Foobar" NIL "foobar" "Blurdybloop.example")) '
    b'(("Fred Foobar" NIL "foobar" "Blurdybloop.example")) '
    b'(("Fred Foobar" NIL "foobar" "Blurdybloop.example")) '
    b'((NIL NIL "mooch" "owatagu.siam.edu.example")) NIL NIL NIL '
    b'"<B27397-0100000@Blurdybloop.example>")'
)


def test_message_rfc822_attachment():
    message = ParsedMessage.parse(FORWARD)
    inner_body = INNER.split(b"\r\n\r\n", 1)[1]
    assert message.bodystructure(False) == (
        b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 12 1)'
        b'("MESSAGE" "RFC822" NIL NIL "forwarded" "7BIT" %d %b '
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" %d 1) %d) "MIXED")'
    ) % (len(INNER), INNER_ENVELOPE, len(inner_body), lines_of(INNER))
    assert lines_of(INNER) == 7
    structure_of(message)
    assert message.section(spec("2")) == INNER
    assert message.section(spec("2.MIME")) == INNER_MIME
    assert message.section(spec("2.HEADER")) == INNER.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert message.section(spec("2.TEXT")) == inner_body
    assert message.section(spec("2.1")) == inner_body  # a non-multipart message has part 1
    assert message.section(spec("2.2")) == b""
    assert message.section(Section((2,), "HEADER.FIELDS", ("SUBJECT", "x-none"))) == (
        b"Subject: afternoon meeting\r\n\r\n"
    )
    assert message.section(spec("1.HEADER")) == b""  # text/plain encapsulates no message
    assert message.text_contains("afternoon meeting", body_only=True)  # inner header is body
    assert not message.text_contains("Fwd", body_only=True)
    assert message.text_contains("3:30 TOMORROW", body_only=True)


def test_message_rfc822_as_the_whole_message():
    message = ParsedMessage.parse(b"Content-Type: message/rfc822\r\n\r\n" + INNER)
    inner_body = INNER.split(b"\r\n\r\n", 1)[1]
    assert message.section(spec("1")) == INNER
    assert message.section(spec("1.HEADER.FIELDS")) is not None
    assert message.section(spec("1.TEXT")) == inner_body
    assert message.section(spec("1.1")) == inner_body
    assert structure_of(message, extended=False)[7] == envelope_of(ParsedMessage.parse(INNER))


# RFC 3501 §6.4.5's example, built to that exact structure.
P3 = crlf(
    "From: b@example.org\n"
    "Subject: part 3\n"
    'Content-Type: MULTIPART/MIXED; boundary="m3"\n'
    "\n"
    "--m3\n"
    "Content-Type: TEXT/PLAIN\n"
    "\n"
    "part 3.1\n"
    "--m3\n"
    "Content-Type: APPLICATION/OCTET-STREAM\n"
    "\n"
    "part 3.2\n"
    "--m3--\n"
)
P422 = crlf(
    "--m422\n"
    "Content-Type: TEXT/PLAIN\n"
    "\n"
    "part 4.2.2.1\n"
    "--m422\n"
    "Content-Type: TEXT/RICHTEXT\n"
    "\n"
    "part 4.2.2.2\n"
    "--m422--"
)
P42 = (
    crlf(
        "From: c@example.org\n"
        "Subject: part 4.2\n"
        'Content-Type: MULTIPART/MIXED; boundary="m42"\n'
        "\n"
        "--m42\n"
        "Content-Type: TEXT/PLAIN\n"
        "\n"
        "part 4.2.1\n"
        "--m42\n"
        'Content-Type: MULTIPART/ALTERNATIVE; boundary="m422"\n'
        "\n"
    )
    + P422
    + crlf("\n--m42--")
)
P4 = (
    crlf(
        "--m4\n"
        "Content-Type: IMAGE/GIF\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
        "R0lGODlh\n"
        "--m4\n"
        "Content-Type: MESSAGE/RFC822\n"
        "\n"
    )
    + P42
    + crlf("\n--m4--")
)
TOP_HEADER = crlf(
    "From: a@example.org\n"
    "Subject: parts\n"
    "MIME-Version: 1.0\n"
    'Content-Type: MULTIPART/MIXED; boundary="outer"\n'
    "\n"
)
TOP_TEXT = (
    crlf(
        "preamble\n"
        "--outer\n"
        "Content-Type: TEXT/PLAIN\n"
        "\n"
        "part 1\n"
        "--outer\n"
        "Content-Type: APPLICATION/OCTET-STREAM\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
        "UGFydCAy\n"
        "--outer\n"
        "Content-Type: MESSAGE/RFC822\n"
        "\n"
    )
    + P3
    + crlf('\n--outer\nContent-Type: MULTIPART/MIXED; boundary="m4"\n\n')
    + P4
    + crlf("\n--outer--\nepilogue\n")
)
RFC_PARTS = TOP_HEADER + TOP_TEXT


def _header_and_text(message: bytes) -> tuple[bytes, bytes]:
    head, text = message.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", text


RFC_PARTS_SECTIONS = {
    "": RFC_PARTS,
    "HEADER": TOP_HEADER,
    "TEXT": TOP_TEXT,
    "1": b"part 1",
    "1.MIME": b"Content-Type: TEXT/PLAIN\r\n\r\n",
    "2": b"UGFydCAy",
    "3": P3,
    "3.MIME": b"Content-Type: MESSAGE/RFC822\r\n\r\n",
    "3.HEADER": _header_and_text(P3)[0],
    "3.TEXT": _header_and_text(P3)[1],
    "3.1": b"part 3.1",
    "3.2": b"part 3.2",
    "4": P4,
    "4.1": b"R0lGODlh",
    "4.1.MIME": b"Content-Type: IMAGE/GIF\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    "4.2": P42,
    "4.2.HEADER": _header_and_text(P42)[0],
    "4.2.TEXT": _header_and_text(P42)[1],
    "4.2.1": b"part 4.2.1",
    "4.2.2": P422,
    "4.2.2.1": b"part 4.2.2.1",
    "4.2.2.2": b"part 4.2.2.2",
    # parts that do not exist, and HEADER/TEXT of parts that are no message
    "5": b"",
    "1.1": b"",
    "3.3": b"",
    "4.3": b"",
    "4.2.3": b"",
    "4.2.2.3": b"",
    "2.HEADER": b"",
    "4.TEXT": b"",
}


@pytest.mark.parametrize(("section", "expected"), RFC_PARTS_SECTIONS.items())
def test_rfc3501_part_numbering_example(section, expected):
    assert ParsedMessage.parse(RFC_PARTS).section(spec(section)) == expected


def test_rfc3501_part_numbering_example_structure():
    message = ParsedMessage.parse(RFC_PARTS)
    types = {
        ".".join(map(str, path)): (body[0], body[1]) for path, body in leaves(structure_of(message))
    }
    assert types == {
        "1": (b"TEXT", b"PLAIN"),
        "2": (b"APPLICATION", b"OCTET-STREAM"),
        "3": (b"MESSAGE", b"RFC822"),
        "3.1": (b"TEXT", b"PLAIN"),
        "3.2": (b"APPLICATION", b"OCTET-STREAM"),
        "4.1": (b"IMAGE", b"GIF"),
        "4.2": (b"MESSAGE", b"RFC822"),
        "4.2.1": (b"TEXT", b"PLAIN"),
        "4.2.2.1": (b"TEXT", b"PLAIN"),
        "4.2.2.2": (b"TEXT", b"RICHTEXT"),
    }
    check_sizes(message)


def test_multipart_digest_parts_default_to_message_rfc822():
    message = ParsedMessage.parse(
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n"
        + INNER
        + b"\r\n--d\r\nContent-Type: text/plain\r\n\r\nnote\r\n--d--\r\n"
    )
    structure = structure_of(message, extended=False)
    assert structure[0][:2] == (b"MESSAGE", b"RFC822")
    assert structure[0][2] is None
    assert structure[1][:3] == (b"TEXT", b"PLAIN", None)
    assert message.section(spec("1.HEADER.FIELDS")) is not None
    assert message.section(spec("1")) == INNER


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, b'"TEXT" "PLAIN" ("CHARSET" "US-ASCII")'),
        (b"text/plain", b'"TEXT" "PLAIN" NIL'),
        (b"Text/HTML ; Charset = \"UTF-8\"", b'"TEXT" "HTML" ("CHARSET" "UTF-8")'),
        (b"text/plain; charset=us-ascii (Plain text)", b'"TEXT" "PLAIN" ("CHARSET" "us-ascii")'),
        (b"text/plain (a comment); format=flowed", b'"TEXT" "PLAIN" ("FORMAT" "flowed")'),
        (b'text/plain; name="a \\"b\\" c"', b'"TEXT" "PLAIN" ("NAME" "a \\"b\\" c")'),
        (b"text/plain; name=\"no end", b'"TEXT" "PLAIN" ("NAME" "no end")'),
        (b"text/plain; a=1; A=2; b", b'"TEXT" "PLAIN" ("A" "1")'),
        (b"text", b'"TEXT" "PLAIN" ("CHARSET" "US-ASCII")'),  # invalid: the default
        (b"", b'"TEXT" "PLAIN" ("CHARSET" "US-ASCII")'),
        (b"multipart/mixed", b'"TEXT" "PLAIN" ("CHARSET" "US-ASCII")'),  # no boundary
        (b"image/png; name=\"\xc3\xa9.png\"", b'"IMAGE" "PNG" ("NAME" {6}\r\n\xc3\xa9.png)'),
        (b"application/x-thing; filename*=utf-8''%C3%A9",
         b'"APPLICATION" "X-THING" ("FILENAME*" "utf-8\'\'%C3%A9")'),
    ],
)  # fmt: skip
def test_content_type(content_type, expected):
    header = b"" if content_type is None else b"Content-Type: " + content_type + b"\r\n"
    message = ParsedMessage.parse(header + b"\r\nbody\r\n")
    assert message.bodystructure(False).startswith(b"(" + expected + b" NIL NIL")
    structure_of(message)


def test_content_transfer_encoding_is_upper_case_and_7bit_by_default():
    for value, expected in [(None, b"7BIT"), (b"Base64", b"BASE64"), (b" 8bit (c)", b"8BIT")]:
        header = b"" if value is None else b"Content-Transfer-Encoding: " + value + b"\r\n"
        structure = structure_of(ParsedMessage.parse(header + b"\r\nx"))
        assert structure[5] == expected


def test_multipart_without_any_delimiter_is_one_part():
    message = ParsedMessage.parse(b"Content-Type: multipart/mixed; boundary=zz\r\n\r\nno parts\r\n")
    assert message.bodystructure(False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 1) "MIXED")'
    )
    assert message.section(spec("1")) == b"no parts\r\n"
    assert message.section(spec("1.MIME")) == b""


def test_multipart_without_close_delimiter_ends_at_the_end():
    message = ParsedMessage.parse(
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n\r\none\r\n--zz\r\n\r\ntwo\r\n"
    )
    assert message.section(spec("1")) == b"one"
    assert message.section(spec("2")) == b"two\r\n"
    check_sizes(message)


def test_delimiters_need_a_line_of_their_own():
    message = ParsedMessage.parse(
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n"
        b"--zz \t\r\n\r\na --zz\r\n--zzz\r\n--zz--x\r\n--zz--  \r\nepilogue"
    )
    assert message.section(spec("1")) == b"a --zz\r\n--zzz\r\n--zz--x"
    assert message.section(spec("2")) == b""


def test_nesting_deeper_than_the_limit_becomes_a_leaf():
    depth = MAX_DEPTH + 10
    data = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(depth)
    )
    message = ParsedMessage.parse(data + b"\r\ninnermost\r\n")
    structure = structure_of(message)  # parses with the client's max_depth of 100
    while isinstance(structure[0], tuple):
        structure = structure[0]
    assert structure[:2] == (b"APPLICATION", b"OCTET-STREAM")
    check_sizes(message)


def test_extension_data_of_a_multipart():
    message = ParsedMessage.parse(
        b"Content-Type: multipart/related; boundary=r; type=text/html\r\n"
        b"Content-Disposition: inline\r\nContent-Language: fr\r\n"
        b"Content-Location: cid:x\r\n\r\n--r\r\n\r\nx\r\n--r--\r\n"
    )
    assert message.bodystructure(True).endswith(
        b' "RELATED" ("BOUNDARY" "r" "TYPE" "text/html") ("INLINE" NIL) ("fr") "cid:x")'
    )


# -- ENVELOPE ----------------------------------------------------------------------


def envelope(header: bytes) -> tuple[Any, ...]:
    return envelope_of(ParsedMessage.parse(header + b"\r\n\r\nbody\r\n"))


def test_envelope_of_a_message_without_headers():
    assert envelope(b"") == (None,) * 10
    assert ParsedMessage.parse(b"").envelope() == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    assert ParsedMessage.parse(b"\r\nonly a body").envelope() == (
        b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    )


def test_sender_and_reply_to_default_to_from():
    from_ = ((b"A", None, b"a", b"x.example"),)
    assert envelope(b"From: A <a@x.example>")[2:5] == (from_, from_, from_)
    assert envelope(b"From: A <a@x.example>\r\nSender:\r\nReply-To: ,")[2:5] == (from_,) * 3
    other = envelope(b"From: A <a@x.example>\r\nSender: s@x.example\r\nReply-To: r@x.example")
    assert other[3:5] == (((None, None, b"s", b"x.example"),), ((None, None, b"r", b"x.example"),))
    assert envelope(b"Sender: s@x.example")[2:5] == (None, ((None, None, b"s", b"x.example"),),
                                                     None)  # fmt: skip


def test_envelope_string_fields_are_raw_and_unfolded():
    fields = envelope(
        b"Date: Thu, 1 Jan 2015\r\n  10:00:00 +0000\r\n"
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n =?utf-8?q?_aus_K=C3=B6ln?=\r\n"
        b"In-Reply-To: <a@x>\r\n\t<b@x>\r\n"
        b"Message-ID:    <id@x.example>   \r\n"
        b"Subject: the second one is ignored"
    )
    assert fields[0] == b"Thu, 1 Jan 2015  10:00:00 +0000"
    assert fields[1] == b"=?utf-8?q?Gr=C3=BC=C3=9Fe?= =?utf-8?q?_aus_K=C3=B6ln?="
    assert fields[8] == b"<a@x>\t<b@x>"
    assert fields[9] == b"<id@x.example>"


@pytest.mark.parametrize(
    ("subject", "wire"),
    [
        (b'say "hi" \\o/', b'"say \\"hi\\" \\\\o/"'),
        (b"", b'""'),
        (b"caf\xc3\xa9", b"{5}\r\ncaf\xc3\xa9"),  # UTF-8: a literal
        (b"caf\xe9", b"{4}\r\ncaf\xe9"),  # 8-bit, not UTF-8: a literal all the same
        (b"a\rb", b"{3}\r\na\rb"),  # a bare CR survives unfolding: a literal
        (b"nul\x00byte", b'"nulbyte"'),  # no IMAP string may hold NUL
        (b"x" * 2000, b"{2000}\r\n" + b"x" * 2000),
    ],
)
def test_envelope_strings_quoted_or_literal(subject, wire):
    message = ParsedMessage.parse(b"Subject: " + subject + b"\r\n\r\n")
    assert message.envelope() == b"(NIL " + wire + b" NIL NIL NIL NIL NIL NIL NIL NIL)"
    assert envelope_of(message)[1] == subject.replace(b"\x00", b"")


ADDRESSES = [
    (b"gray@example.org", [(None, None, b"gray", b"example.org")]),
    (b"Terry Gray <gray@example.org>", [(b"Terry Gray", None, b"gray", b"example.org")]),
    (b'"Gray, Terry" <gray@example.org>', [(b"Gray, Terry", None, b"gray", b"example.org")]),
    (b"gray@example.org (Terry Gray)", [(b"Terry Gray", None, b"gray", b"example.org")]),
    (b"Terry  \t Gray<gray@example.org>", [(b"Terry Gray", None, b"gray", b"example.org")]),
    (b"John Q. Public <jqp@example.org>", [(b"John Q. Public", None, b"jqp", b"example.org")]),
    (b"<gray@example.org>", [(None, None, b"gray", b"example.org")]),
    (b'"" <gray@example.org>', [(None, None, b"gray", b"example.org")]),
    (b'"john doe"@example.org', [(None, None, b"john doe", b"example.org")]),
    (b"joe . bloggs @ example . org", [(None, None, b"joe.bloggs", b"example.org")]),
    (b"joe@[192.0.2.1]", [(None, None, b"joe", b"[192.0.2.1]")]),
    (b"<@a.example,@b.example:joe@c.example>", [(None, b"@a.example,@b.example", b"joe",
                                                 b"c.example")]),
    (b"=?utf-8?q?Ren=C3=A9?= <rene@example.org>",
     [(b"=?utf-8?q?Ren=C3=A9?=", None, b"rene", b"example.org")]),
    (b"J\xc3\xb6rg <jorg@example.org>", [(b"J\xc3\xb6rg", None, b"jorg", b"example.org")]),
    (b"a@x.example, B <b@y.example>,, c@z.example,",
     [(None, None, b"a", b"x.example"), (b"B", None, b"b", b"y.example"),
      (None, None, b"c", b"z.example")]),
    # group syntax: start (NIL NIL name NIL), end (NIL NIL NIL NIL)
    (b"undisclosed-recipients:;", [(None, None, b"undisclosed-recipients", None),
                                   (None, None, None, None)]),
    (b'Team: a@x.example, "B" <b@x.example>; c@y.example',
     [(None, None, b"Team", None), (None, None, b"a", b"x.example"),
      (b"B", None, b"b", b"x.example"), (None, None, None, None),
      (None, None, b"c", b"y.example")]),
    (b'"The Team": a@x.example', [(None, None, b"The Team", None),
                                  (None, None, b"a", b"x.example"), (None, None, None, None)]),
    # malformed: never an error, something sensible
    (b"Terry Gray <gray@example.org", [(b"Terry Gray", None, b"gray", b"example.org")]),
    (b"A <a@x.example, B <b@y.example>", [(b"A", None, b"a", b"x.example"),
                                          (b"B", None, b"b", b"y.example")]),
    (b"Terry Gray gray@example.org", [(b"Terry Gray", None, b"gray", b"example.org")]),
    (b"gray", [(None, None, b"gray", b"")]),
    (b"Joe Bloggs", [(None, None, b"Joe Bloggs", b"")]),
    (b"gray@", [(None, None, b"gray", b"")]),
    (b"@example.org", [(None, None, b"", b"example.org")]),
    (b'"unterminated <a@b>', [(None, None, b"unterminated <a@b>", b"")]),
    (b"a@b (unterminated comment", [(b"unterminated comment", None, b"a", b"b")]),
    (b"<>", []),
    (b"Nobody <>", [(b"Nobody", None, b"", b"")]),
    (b" , ; : > ", [(None, None, b"", None), (None, None, None, None)]),
    (b"", []),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "expected"), ADDRESSES)
def test_addresses(raw, expected):
    assert envelope(b"To: " + raw)[5] == (tuple(expected) or None)
    assert _parse_addresses_general(raw) == expected


def test_utf8_and_8bit_names_go_as_literals():
    message = ParsedMessage.parse(b"From: J\xc3\xb6rg <j@x.example>\r\n\r\n")
    assert b'(({5}\r\nJ\xc3\xb6rg NIL "j" "x.example"))' in message.envelope()


# -- sections ------------------------------------------------------------------------

SIMPLE = crlf(
    "Received: from a\n\tby b; Thu, 1 Jan 2015 10:00:00 +0000\n"
    "From: Alice <alice@example.org>\n"
    "To: bob@example.org\n"
    "Subject: hello\n"
    "  again\n"
    "X-Empty:\n"
    "to: carol@example.org\n"
    "\n"
    "line one\n"
    "line two\n"
)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (Section(), SIMPLE),
        (Section(text="HEADER"), SIMPLE.split(b"\r\n\r\n")[0] + b"\r\n\r\n"),
        (Section(text="TEXT"), b"line one\r\nline two\r\n"),
        (Section(text="header"), SIMPLE.split(b"\r\n\r\n")[0] + b"\r\n\r\n"),
        (Section(text="HEADER.FIELDS", fields=("SUBJECT",)), b"Subject: hello\r\n  again\r\n\r\n"),
        (Section(text="HEADER.FIELDS", fields=("To", "x-empty", "From")),
         b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nX-Empty:\r\n"
         b"to: carol@example.org\r\n\r\n"),
        (Section(text="HEADER.FIELDS", fields=("X-Absent",)), b"\r\n"),
        (Section(text="HEADER.FIELDS.NOT", fields=("received", "TO", "subject", "X-EMPTY")),
         b"From: Alice <alice@example.org>\r\n\r\n"),
        (Section(text="HEADER.FIELDS.NOT", fields=()), SIMPLE.split(b"\r\n\r\n")[0] + b"\r\n\r\n"),
        (Section((1,)), b"line one\r\nline two\r\n"),  # part 1 of a non-multipart: the body
        (Section((1,), "MIME"), SIMPLE.split(b"\r\n\r\n")[0] + b"\r\n\r\n"),
        (Section((2,)), b""),
        (Section((1, 1)), b""),
        (Section((1,), "TEXT"), b""),
        (Section(text="MIME"), None),  # MIME needs a part number
        (Section(text="BODY"), None),
        (Section((0,)), None),
        (Section((1, 0)), None),
    ],
)  # fmt: skip
def test_sections(section, expected):
    assert ParsedMessage.parse(SIMPLE).section(section) == expected


@pytest.mark.parametrize(
    ("data", "header", "fields"),
    [
        (b"Subject: x\r\n", b"Subject: x\r\n", b"Subject: x\r\n"),  # no body, no blank line
        (b"Subject: x", b"Subject: x", b"Subject: x\r\n"),
        (b"Subject: x\r\n\r\n", b"Subject: x\r\n\r\n", b"Subject: x\r\n\r\n"),
        (b"", b"", b""),
        (b"\r\nbody", b"\r\n", b"\r\n"),
        # a line that is no header field ends the header; the body starts there
        (b"Subject: x\r\nnot a field\r\n", b"Subject: x\r\n", b"Subject: x\r\n\r\n"),
        (b" indented\r\nSubject: x\r\n\r\n", b"", b"\r\n"),  # continuing nothing
    ],
)
def test_header_edges(data, header, fields):
    message = ParsedMessage.parse(data)
    assert message.section(Section(text="HEADER")) == header
    assert message.section(Section(text="HEADER.FIELDS", fields=("subject",))) == fields
    assert message.section(Section(text="TEXT")) == data[len(header) :]


def test_partial():
    body = ParsedMessage.parse(SIMPLE).section(Section(text="TEXT"))
    assert body is not None
    assert partial(body, 0, 4) == b"line"
    assert partial(body, 5, 3) == b"one"
    assert partial(body, 15, 1000) == b"two\r\n"  # truncated at the end
    assert partial(body, len(body), 10) == b""
    assert partial(body, 1000, 10) == b""
    assert partial(body, 0, 0) == b""
    assert partial(body, -5, 4) == b"line"


def test_bare_lf_input_is_served_with_crlf():
    lf_text = MIXED.replace(b"\r\n", b"\n")
    lf, reference = ParsedMessage.parse(lf_text), ParsedMessage.parse(MIXED)
    assert lf.data == MIXED
    assert lf.size == len(MIXED)
    assert lf.envelope() == reference.envelope()
    assert lf.bodystructure(True) == reference.bodystructure(True)
    for text in ["", "HEADER", "TEXT", "1", "1.1", "1.2.MIME", "2", "3", "3.MIME"]:
        assert lf.section(spec(text)) == reference.section(spec(text)), text


def test_bare_lf_only_in_the_body():
    header, body = MIXED.split(b"\r\n\r\n", 1)
    message = ParsedMessage.parse(header + b"\r\n\r\n" + body.replace(b"\r\n", b"\n"))
    fields = Section(text="HEADER.FIELDS", fields=("Subject",))
    assert message.section(fields) == b"Subject: mixed\r\n\r\n"  # before the body is read
    assert message.envelope() == ParsedMessage.parse(MIXED).envelope()
    assert message.size == len(MIXED)
    assert message.section(Section()) == MIXED
    assert message.bodystructure(True) == ParsedMessage.parse(MIXED).bodystructure(True)


def test_mixed_line_ends_become_crlf_and_bare_cr_stays():
    message = ParsedMessage.parse(b"Subject: a\nTo: b@c\r\n\nx\ry\n")
    assert message.data == b"Subject: a\r\nTo: b@c\r\n\r\nx\ry\r\n"


# -- SEARCH helpers -------------------------------------------------------------------

SEARCHABLE = (
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n =?ISO-8859-1?Q?_aus_K=F6ln?= und\r\n\tmehr\r\n"
    b"From: =?utf-8?b?UmVuw6k=?= <rene@example.org>\r\n"
    b"X-Tag: one\r\nx-tag: Two\r\n"
    b"X-Raw: Stra\xc3\x9fe\r\n"
    b"X-Latin: Stra\xdfe\r\n"
    b"X-Bad: =?no-such-charset?q?abc?= =?utf-8?b?###?=\r\n"
    b"\r\nbody\r\n"
)


def test_header_value_decodes_and_unfolds():
    message = ParsedMessage.parse(SEARCHABLE)
    assert message.header_value("SUBJECT") == ["Grüße aus Köln und\tmehr"]
    assert message.header_value("from") == ["René <rene@example.org>"]
    assert message.header_value("X-Tag") == ["one", "Two"]
    assert message.header_value("x-raw") == ["Straße"]
    assert message.header_value("x-latin") == ["Straße"]
    assert message.header_value("X-Bad") == ["=?no-such-charset?q?abc?= =?utf-8?b?###?="]
    assert message.header_value("X-Absent") == []


@pytest.mark.parametrize(
    ("name", "needle", "found"),
    [
        ("subject", "GRÜSSE AUS", True),
        ("Subject", "köln und", True),
        ("from", "rené", True),
        ("from", "REne@EXAMPLE", True),
        ("x-tag", "two", True),
        ("x-raw", "strasse", True),
        ("subject", "=?utf-8", False),
        ("x-tag", "", True),  # an empty string matches any message with the field
        ("x-absent", "", False),
    ],
)
def test_header_contains(name, needle, found):
    assert ParsedMessage.parse(SEARCHABLE).header_contains(name, needle) is found


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Wed, 17 Jul 1996 02:23:25 -0700 (PDT)", date(1996, 7, 17)),
        (b"Thu, 1 Jan 2015 23:30:00 -0800", date(2015, 1, 1)),  # its own zone, not UTC's
        (b"1 Jan 2015 00:30:00 +1400", date(2015, 1, 1)),
        (b"Sat, 05 Sep 09 10:00 GMT", date(2009, 9, 5)),  # RFC 5322 §4.3 two-digit years
        (b"Sat, 05 Sep 99 10:00 GMT", date(1999, 9, 5)),
        (b"Sat, 05 Sep 103 10:00 GMT", date(2003, 9, 5)),
        (b"5-September-2009", date(2009, 9, 5)),
        (b"Wed Jul 17 02:23:25 1996", date(1996, 7, 17)),  # asctime
        (b"31 Feb 2015 10:00:00 +0000", None),
        (b"soon", None),
        (b"", None),
    ],
)
def test_sent_date(value, expected):
    assert ParsedMessage.parse(b"Date: " + value + b"\r\n\r\n").sent_date() == expected


def test_sent_date_without_date_field():
    assert ParsedMessage.parse(b"Subject: x\r\n\r\n").sent_date() is None


def test_text_contains_decodes_charsets_and_falls_back_to_raw_octets():
    message = ParsedMessage.parse(
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain; charset=koi8-r\r\n\r\n\xf0\xd2\xc9\xd7\xc5\xd4\r\n"
        b"--b\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\nna\xc3\xafve\r\n"
        b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"not base64 at all!\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n\r\nraw \xff octets\r\n--b--\r\n"
    )
    assert message.text_contains("привет", body_only=True)
    assert message.text_contains("NAÏVE", body_only=True)
    assert message.text_contains("raw \xff octets", body_only=True)
    check_sizes(message)


# -- properties: any bytes, balanced syntax, exact sizes ---------------------------------


def leaves(structure: tuple[Any, ...], prefix: tuple[int, ...] = ()) -> list[tuple[Any, Any]]:
    """(part number, body) of every non-multipart part of a parsed BODYSTRUCTURE."""
    if not prefix and not isinstance(structure[0], tuple):
        return leaves(structure, (1,))
    if isinstance(structure[0], tuple):
        children = list(itertools.takewhile(lambda item: isinstance(item, tuple), structure))
        out = []
        for number, child in enumerate(children, 1):
            out += leaves(child, (*prefix, number))
        return out
    out = [(prefix, structure)]
    if structure[0].upper() == b"MESSAGE" and structure[1].upper() in (b"RFC822", b"GLOBAL"):
        inner = structure[8]
        out += leaves(inner, prefix if isinstance(inner[0], tuple) else (*prefix, 1))
    return out


def check_sizes(message: ParsedMessage) -> None:
    """Every part's size and line count in BODYSTRUCTURE match its BODY[part] octets."""
    for path, body in leaves(structure_of(message)):
        content = message.section(Section(path))
        assert content is not None
        assert body[6] == len(content), (path, body)
        if body[0].upper() == b"TEXT":
            assert body[7] == lines_of(content), (path, body)
        if body[0].upper() == b"MESSAGE" and body[1].upper() in (b"RFC822", b"GLOBAL"):
            assert body[9] == lines_of(content), (path, body)
            assert body[7] == envelope_of(ParsedMessage.parse(content))


def check_all(message: ParsedMessage) -> None:
    items = fetch(
        (b"RFC822.SIZE", b"%d" % message.size),
        (b"ENVELOPE", message.envelope()),
        (b"BODY", message.bodystructure(False)),
        (b"BODYSTRUCTURE", message.bodystructure(True)),
    )
    assert items["RFC822.SIZE"] == len(message.data)
    check_sizes(message)
    for text in (None, "HEADER", "TEXT", "MIME"):
        for part in ((), (1,), (2,), (1, 1), (2, 1), (1, 2, 1)):
            found = message.section(Section(part, text))
            assert found is None or isinstance(found, bytes)
    for text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        found = message.section(Section((), text, ("subject", "TO")))
        assert found is not None
    message.header_value("subject")
    message.header_contains("from", "a")
    message.text_contains("a", body_only=True)
    message.text_contains("ß", body_only=False)
    message.sent_date()


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes(data):
    check_all(ParsedMessage.parse(data))


LINES = [
    b"Content-Type: multipart/mixed; boundary=a",
    b'Content-Type: multipart/alternative; boundary="b"',
    b"Content-Type: multipart/digest; boundary=a",
    b"Content-Type: message/rfc822",
    b"Content-Type: message/global",
    b"Content-Type: text/plain; charset=utf-8",
    b'Content-Type: text/html; charset="iso-8859-1"; name="\xe9"',
    b"Content-Type: image/gif",
    b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable",
    b'Content-Disposition: attachment; filename="x y"',
    b"Content-Language: en",
    b"Content-ID: <i@d>",
    b"From: A <a@b.c>",
    b'To: g: x@y, "q\\"" <z@w>;, (c) v',
    b'Subject: =?utf-8?q?x=C3=A9?= "\\',
    b"Date: 5 Sep 2009",
    b" folded",
    b"--a",
    b"--a--",
    b"--b",
    b"--b--",
    b"",
    b"",
    b"text line",
    b"SGVsbG8gd29ybGQ=",
    b"=E9t=C3=A9=",
    b"\xff\xfe 8 bit",
    b"\x00",
]


@FUZZ
@given(
    st.lists(st.sampled_from(LINES), max_size=40),
    st.sampled_from([b"\r\n", b"\n"]),
)
def test_mime_like_messages(lines, eol):
    check_all(ParsedMessage.parse(eol.join(lines)))


ADDRESS_PIECES = [b"a", b"b.c", b"x-y", b" ", b"\t", b"<", b">", b"@", b",", b";", b":", b".",
                  b'"', b'"q x"', b'"\\""', b"(c)", b"(", b")", b"\\", b"[1.2]", b"=?x?q?y?=",
                  b"\xc3\xa9", b"\x01"]  # fmt: skip


@FUZZ
@given(st.lists(st.sampled_from(ADDRESS_PIECES), max_size=16))
def test_address_fast_path_agrees_with_the_general_parser(pieces):
    raw = b"".join(pieces)
    assert _parse_addresses(raw) == _parse_addresses_general(raw)
    envelope(b"To: " + raw if raw.strip() else b"")


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from([b"A B", b'"C, D"', b"=?u?q?e?="])),
            st.sampled_from([b"a", b"a.b", b"x-y_z"]),
            st.sampled_from([b"b.c", b"ex.ample.org"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_address_fast_path_on_common_shapes(addresses):
    raw = b", ".join(
        local + b"@" + domain if name is None else name + b" <" + local + b"@" + domain + b">"
        for name, local, domain in addresses
    )
    assert _parse_addresses(raw) == _parse_addresses_general(raw)
    assert len(_parse_addresses(raw)) == len(addresses)
