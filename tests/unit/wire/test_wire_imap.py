"""ImapResponseReader: RFC 9051 framing (literals, literal8) and response grammar."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_feed import FUZZ, drain, feed_all

from conformance.wire import NEED_DATA, ConnectionClosed, LocalProtocolError, RemoteProtocolError
from conformance.wire.imap import (
    ContinuationRequest,
    ImapResponseReader,
    TaggedResponse,
    UntaggedResponse,
)

EVENTS = TaggedResponse | UntaggedResponse | ContinuationRequest | ConnectionClosed


def one(data: bytes, **options: Any) -> Any:
    """The single response ``data`` holds."""
    events = drain(ImapResponseReader(**options), data)
    assert len(events) == 2, events
    assert events[1] == ConnectionClosed()
    return events[0]


def outcome(data: bytes, chunk: int | None, **options: Any) -> tuple[list[Any], str | None]:
    """Events (and the error, if any) from feeding ``data`` whole or ``chunk`` bytes at a time."""
    return feed_all(ImapResponseReader(**options), data, chunk)


# -- status responses and continuations -----------------------------------------

TAGGED = [
    (b"a1 OK LOGIN completed\r\n", "a1", "OK", None, None, "LOGIN completed"),
    (
        b"A002 ok [READ-WRITE] SELECT completed\r\n",
        "A002",
        "OK",
        "READ-WRITE",
        None,
        "SELECT completed",
    ),
    (b"a3 NO [TRYCREATE] no such mailbox\r\n", "a3", "NO", "TRYCREATE", None, "no such mailbox"),
    (b"a4 BAD\r\n", "a4", "BAD", None, None, ""),
    (b"a5 OK [UIDVALIDITY 3857529045]\r\n", "a5", "OK", "UIDVALIDITY", "3857529045", ""),
    (b"a6 OK [uidnext 4392] Predicted\r\n", "a6", "OK", "UIDNEXT", "4392", "Predicted"),
    (
        b"a7 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n",
        "a7",
        "OK",
        "COPYUID",
        "38505 304,319:320 3956:3958",
        "Done",
    ),
    (b"a8 OK [READ-ONLY]text\r\n", "a8", "OK", "READ-ONLY", None, "text"),
    (b"a9 OK text with ] and [ later\r\n", "a9", "OK", None, None, "text with ] and [ later"),
    (b"x]y OK \r\n", "x]y", "OK", None, None, ""),
]


@pytest.mark.parametrize(("data", "tag", "status", "code", "args", "text"), TAGGED)
def test_tagged(
    data: bytes, tag: str, status: str, code: str | None, args: str | None, text: str
) -> None:
    assert one(data) == TaggedResponse(
        tag=tag, status=status, code=code, code_args=args, text=text, raw=data
    )


UNTAGGED_STATUS = [
    (b"* OK IMAP4rev2 server ready\r\n", "OK", None, None, "IMAP4rev2 server ready"),
    (
        b"* OK [ALERT] System shutdown in 10 minutes\r\n",
        "OK",
        "ALERT",
        None,
        "System shutdown in 10 minutes",
    ),
    (
        b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n",
        "OK",
        "PERMANENTFLAGS",
        "(\\Deleted \\Seen \\*)",
        "Limited",
    ),
    (b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n", "OK", "CAPABILITY", "IMAP4rev1 IDLE", "ready"),
    (b"* NO [ALERT] disk full\r\n", "NO", "ALERT", None, "disk full"),
    (b"* BAD garbage\r\n", "BAD", None, None, "garbage"),
    (
        b"* BYE Autologout; idle for too long\r\n",
        "BYE",
        None,
        None,
        "Autologout; idle for too long",
    ),
    (
        b"* PREAUTH IMAP4rev2 server logged in as Smith\r\n",
        "PREAUTH",
        None,
        None,
        "IMAP4rev2 server logged in as Smith",
    ),
    (b"* ok\r\n", "OK", None, None, ""),
]


@pytest.mark.parametrize(("data", "keyword", "code", "args", "text"), UNTAGGED_STATUS)
def test_untagged_status(
    data: bytes, keyword: str, code: str | None, args: str | None, text: str
) -> None:
    assert one(data) == UntaggedResponse(
        keyword=keyword, code=code, code_args=args, text=text, line=data[:-2].decode(), raw=data
    )


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"+ Ready for literal data\r\n", "Ready for literal data"),
        (b"+\r\n", ""),
        (b"+ \r\n", ""),
        (b"+ dGVzdA==\r\n", "dGVzdA=="),
    ],
)
def test_continuation(data: bytes, text: str) -> None:
    assert one(data) == ContinuationRequest(text=text, raw=data)


# -- data responses -------------------------------------------------------------

DATA = [
    (b"* 23 EXISTS\r\n", "EXISTS", 23, ()),
    (b"* 0 EXISTS\r\n", "EXISTS", 0, ()),
    (b"* 5 RECENT\r\n", "RECENT", 5, ()),
    (b"* 44 EXPUNGE\r\n", "EXPUNGE", 44, ()),
    (
        b"* CAPABILITY IMAP4rev2 STARTTLS AUTH=GSSAPI LITERAL+ I18NLEVEL=1\r\n",
        "CAPABILITY",
        None,
        ("IMAP4rev2", "STARTTLS", "AUTH=GSSAPI", "LITERAL+", "I18NLEVEL=1"),
    ),
    (b"* CAPABILITY IMAP4rev1\r\n", "CAPABILITY", None, ("IMAP4rev1",)),
    (b"* ENABLED\r\n", "ENABLED", None, ()),
    (b"* ENABLED CONDSTORE UTF8=ACCEPT\r\n", "ENABLED", None, ("CONDSTORE", "UTF8=ACCEPT")),
    (
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)\r\n",
        "FLAGS",
        None,
        (("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "$Forwarded"),),
    ),
    (b"* FLAGS ()\r\n", "FLAGS", None, ((),)),
    (
        b'* LIST (\\Noselect) "/" ~/Mail/foo\r\n',
        "LIST",
        None,
        (("\\Noselect",), b"/", "~/Mail/foo"),
    ),
    (b'* LIST () "." INBOX.Sent\r\n', "LIST", None, ((), b".", "INBOX.Sent")),
    (b"* LIST () NIL inbox\r\n", "LIST", None, ((), None, "inbox")),
    (b'* LIST () "\\\\" "a \\"b\\""\r\n', "LIST", None, ((), b"\\", b'a "b"')),
    (
        b'* LIST (\\Subscribed) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))\r\n',
        "LIST",
        None,
        (("\\Subscribed",), b"/", b"Foo", (b"CHILDINFO", (b"SUBSCRIBED",))),
    ),
    (
        b'* LIST () "/" "Fo]o" ("OLDNAME" ("Bar"))\r\n',
        "LIST",
        None,
        ((), b"/", b"Fo]o", (b"OLDNAME", (b"Bar",))),
    ),
    (b'* LSUB () "." #news.comp.mail.misc\r\n', "LSUB", None, ((), b".", "#news.comp.mail.misc")),
    (
        b"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n",
        "STATUS",
        None,
        ("blurdybloop", ("MESSAGES", 231, "UIDNEXT", 44292)),
    ),
    (b'* STATUS "a b" ()\r\n', "STATUS", None, (b"a b", ())),
    (
        b"* STATUS x (SIZE 9223372036854775807 HIGHESTMODSEQ 7 MAILBOXID (F2212ea))\r\n",
        "STATUS",
        None,
        ("x", ("SIZE", 2**63 - 1, "HIGHESTMODSEQ", 7, "MAILBOXID", ("F2212ea",))),
    ),
    (b"* SEARCH\r\n", "SEARCH", None, ()),
    (b"* SEARCH 2 84 882\r\n", "SEARCH", None, (2, 84, 882)),
    (b"* SEARCH 2 5 (MODSEQ 917162500)\r\n", "SEARCH", None, (2, 5, ("MODSEQ", 917162500))),
    (b"* ESEARCH\r\n", "ESEARCH", None, ()),
    (
        b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\n',
        "ESEARCH",
        None,
        (("TAG", b"A282"), "MIN", 2, "COUNT", 3),
    ),
    (
        b"* ESEARCH (TAG A283) UID ALL 2,10:11 MAX 11\r\n",
        "ESEARCH",
        None,
        (("TAG", "A283"), "UID", "ALL", "2,10:11", "MAX", 11),
    ),
    (
        b"* ESEARCH UID COUNT 0 MODSEQ 5 PARTIAL (1:10 NIL)\r\n",
        "ESEARCH",
        None,
        ("UID", "COUNT", 0, "MODSEQ", 5, "PARTIAL", ("1:10", None)),
    ),
    (b'* NAMESPACE (("" "/")) NIL NIL\r\n', "NAMESPACE", None, (((b"", b"/"),), None, None)),
    (
        b'* NAMESPACE (("" "/")("#mh/" "/" "X-PARAM" ("FLAG1" "FLAG2"))) (("~" "/")) '
        b'(("#shared/" "/")("#public/" "/"))\r\n',
        "NAMESPACE",
        None,
        (
            ((b"", b"/"), (b"#mh/", b"/", b"X-PARAM", (b"FLAG1", b"FLAG2"))),
            ((b"~", b"/"),),
            ((b"#shared/", b"/"), (b"#public/", b"/")),
        ),
    ),
]


@pytest.mark.parametrize(("data", "keyword", "number", "parsed"), DATA)
def test_untagged_data(
    data: bytes, keyword: str, number: int | None, parsed: tuple[Any, ...] | None
) -> None:
    assert one(data) == UntaggedResponse(
        keyword=keyword, number=number, data=parsed, line=data[:-2].decode(), raw=data
    )


FETCH = [
    (b"* 12 FETCH (FLAGS (\\Seen) UID 4827313)", ("FLAGS", ("\\Seen",), "UID", 4827313)),
    (b"* 1 FETCH (FLAGS ())", ("FLAGS", ())),
    (
        b"* 1 fetch (flags (\\Recent) rfc822.size 44827)",
        ("flags", ("\\Recent",), "rfc822.size", 44827),
    ),
    (
        b'* 1 FETCH (INTERNALDATE "17-Jul-1996 02:44:25 -0700")',
        ("INTERNALDATE", b"17-Jul-1996 02:44:25 -0700"),
    ),
    (
        b'* 1 FETCH (INTERNALDATE " 7-jul-1996 02:44:25 +0000")',
        ("INTERNALDATE", b" 7-jul-1996 02:44:25 +0000"),
    ),
    (b"* 1 FETCH (BODY[] NIL)", ("BODY[]", None)),
    (b'* 1 FETCH (BODY[TEXT]<0> "hi")', ("BODY[TEXT]<0>", b"hi")),
    (b'* 1 FETCH (BODY[1.2.MIME] "")', ("BODY[1.2.MIME]", b"")),
    (
        b'* 1 FETCH (BODY[1.HEADER.FIELDS.NOT (To "Cc")] "")',
        ('BODY[1.HEADER.FIELDS.NOT (To "Cc")]', b""),
    ),
    (
        b'* 1 FETCH (RFC822.HEADER "x" RFC822.TEXT NIL RFC822 "y")',
        ("RFC822.HEADER", b"x", "RFC822.TEXT", None, "RFC822", b"y"),
    ),
    (
        b"* 1 FETCH (BINARY.SIZE[1] 1234 MODSEQ (624140003))",
        ("BINARY.SIZE[1]", 1234, "MODSEQ", (624140003,)),
    ),
    (
        b'* 1 FETCH (X-GM-LABELS (\\Inbox "Work stuff") X-GM-MSGID 1278455344230334865)',
        ("X-GM-LABELS", ("\\Inbox", b"Work stuff"), "X-GM-MSGID", 1278455344230334865),
    ),
    (
        b"* 1 FETCH (EMAILID (M6d99ac3275bb4e) PREVIEW NIL)",
        ("EMAILID", ("M6d99ac3275bb4e",), "PREVIEW", None),
    ),
    (b"* 1 FETCH (ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL))", ("ENVELOPE", (None,) * 10)),
    (
        b'* 1 FETCH (ENVELOPE ("d" "s" (("A" NIL "a" "x.test")("B" NIL "b" "x.test")) NIL NIL '
        b'((NIL NIL "c" "y.test")) NIL NIL "<r@x>" "<m@x>"))',
        (
            "ENVELOPE",
            (
                b"d",
                b"s",
                ((b"A", None, b"a", b"x.test"), (b"B", None, b"b", b"x.test")),
                None,
                None,
                ((None, None, b"c", b"y.test"),),
                None,
                None,
                b"<r@x>",
                b"<m@x>",
            ),
        ),
    ),
]


@pytest.mark.parametrize(("line", "items"), FETCH)
def test_fetch(line: bytes, items: tuple[Any, ...]) -> None:
    response = one(line + b"\r\n")
    assert isinstance(response, UntaggedResponse)
    assert response.keyword == "FETCH"
    assert response.data == (items,)


BODYSTRUCTURE = (
    b"* 3 FETCH (UID 9 BODYSTRUCTURE ("
    b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23 NIL NIL NIL NIL)'
    b'("MESSAGE" "RFC822" NIL "<id@x>" "fwd" "7BIT" 4554 '
    b'(NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL) '
    b'(("TEXT" "HTML" NIL NIL NIL "QUOTED-PRINTABLE" 10 1)("IMAGE" "PNG" ("NAME" "a.png") NIL NIL '
    b'"BASE64" 2000 NIL ("ATTACHMENT" ("FILENAME" "a.png")) "EN" "loc" 1 ("x" (2 NIL))) '
    b'"ALTERNATIVE" ("BOUNDARY" "b2") NIL ("EN" "DE")) 88)'
    b'("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64" 0 NIL ("INLINE" NIL))'
    b' "MIXED" ("BOUNDARY" "b1") NIL NIL NIL))'
)


def test_fetch_nested_bodystructure() -> None:
    response = one(BODYSTRUCTURE + b"\r\n")
    assert isinstance(response, UntaggedResponse)
    assert response.number == 3
    items: Any = response.data[0] if response.data else None
    assert items[:2] == ("UID", 9)
    assert items[2] == "BODYSTRUCTURE"
    text, message, attachment, subtype, params, dsp, lang, loc = items[3]
    assert text == (
        b"TEXT",
        b"PLAIN",
        (b"CHARSET", b"US-ASCII"),
        None,
        None,
        b"7BIT",
        1152,
        23,
        None,
        None,
        None,
        None,
    )
    assert message[:7] == (b"MESSAGE", b"RFC822", None, b"<id@x>", b"fwd", b"7BIT", 4554)
    inner_body = message[8]
    assert inner_body[2:5] == (b"ALTERNATIVE", (b"BOUNDARY", b"b2"), None)
    assert inner_body[1][-1] == (b"x", (2, None))
    assert message[9] == 88
    assert attachment[-1] == (b"INLINE", None)
    assert (subtype, params, dsp, lang, loc) == (b"MIXED", (b"BOUNDARY", b"b1"), None, None, None)


def test_fetch_binary_literals_with_crlf_and_nul() -> None:
    body = b"line1\r\n\x00\xff\r\n) BODY[] {99}\r\n"
    data = (
        b"* 7 FETCH (UID 12 BODY[] {%d}\r\n" % len(body) + body + b" BINARY[1] ~{4}\r\n\x00\r\n\x01"
        b" BODY[HEADER] {0}\r\n)\r\n"
    )
    response = one(data)
    assert isinstance(response, UntaggedResponse)
    assert response.data == (
        ("UID", 12, "BODY[]", body, "BINARY[1]", b"\x00\r\n\x01", "BODY[HEADER]", b""),
    )
    assert response.raw == data
    assert response.line == data[:-2].decode("utf-8", errors="surrogateescape")


def test_literal_in_astring_and_line_inlines_it() -> None:
    data = b'* LIST () "/" {5}\r\nfo\r\no\r\n'
    response = one(data)
    assert response.data == ((), b"/", b"fo\r\no")
    assert response.line == '* LIST () "/" {5}\r\nfo\r\no'


def test_literal_in_tagged_text_and_continuation() -> None:
    assert one(b"+ {3}\r\nabc\r\n") == ContinuationRequest(
        text="{3}\r\nabc", raw=b"+ {3}\r\nabc\r\n"
    )


# -- extension responses: lenient, never an error ---------------------------------

LENIENT = [
    (b"* XFOO\r\n", "XFOO", None, ()),
    (
        b'* ID ("name" "Dovecot" "version" NIL)\r\n',
        "ID",
        None,
        ((b"name", b"Dovecot", b"version", None),),
    ),
    (
        b"* THREAD (2)(3 6 (4 23)(44 7 96))\r\n",
        "THREAD",
        None,
        ((2,), (3, 6, (4, 23), (44, 7, 96))),
    ),
    (b'* QUOTA "" (STORAGE 10 512)\r\n', "QUOTA", None, (b"", ("STORAGE", 10, 512))),
    (b"* VANISHED (EARLIER) 41,43:116\r\n", "VANISHED", None, (("EARLIER",), "41,43:116")),
    (b"* 3 XNUMBERED  a   b\r\n", "XNUMBERED", 3, ("a", "b")),
    (
        b"* XBRACKET BODY[HEADER.FIELDS (A B)] x\r\n",
        "XBRACKET",
        None,
        ("BODY[HEADER.FIELDS (A B)]", "x"),
    ),
    (b"* XLIT {3}\r\nabc (x)\r\n", "XLIT", None, (b"abc", ("x",))),
    (b'* XQ "a\\qb"\r\n', "XQ", None, (b"aqb",)),
    (b"* XBAD (unclosed\r\n", "XBAD", None, None),
    (b'* XBAD "unclosed\r\n', "XBAD", None, None),
    (b"* XBAD)\r\n", "XBAD", None, None),
    (b"* XDEEP " + b"(" * 150 + b")" * 150 + b"\r\n", "XDEEP", None, None),
    (
        b"* XBIG 123456789012345678901234567890\r\n",
        "XBIG",
        None,
        ("123456789012345678901234567890",),
    ),
]


@pytest.mark.parametrize(("data", "keyword", "number", "parsed"), LENIENT)
def test_extension_responses_are_lenient(
    data: bytes, keyword: str, number: int | None, parsed: tuple[Any, ...] | None
) -> None:
    response = one(data)
    assert isinstance(response, UntaggedResponse)
    assert (response.keyword, response.number, response.data) == (keyword, number, parsed)
    assert response.text == ""


# -- framing --------------------------------------------------------------------


def test_pipelined_responses_in_one_chunk() -> None:
    data = (
        b"* 2 EXISTS\r\n* 1 FETCH (FLAGS (\\Seen) BODY[] {4}\r\nab\r\n)\r\n"
        b"a1 OK done\r\n+ go\r\nb2 NO [ALREADYEXISTS] exists\r\n"
    )
    events = drain(ImapResponseReader(), data)
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "UntaggedResponse",
        "UntaggedResponse",
        "TaggedResponse",
        "ContinuationRequest",
        "TaggedResponse",
        "ConnectionClosed",
    ]
    assert b"".join(e.raw for e in events[:-1]) == data


def test_pending_after_starttls_reply() -> None:
    reader = ImapResponseReader()
    reader.receive_data(b"a OK Begin TLS negotiation now\r\n* BYE injected\r\n")
    assert isinstance(reader.next_event(), TaggedResponse)
    assert reader.pending == b"* BYE injected\r\n"


def test_pending_includes_a_response_waiting_for_its_literal() -> None:
    reader = ImapResponseReader()
    assert drain(reader, b"* 1 FETCH (BODY[] {10}\r\nabc", eof=False) == [NEED_DATA]
    assert reader.pending == b"* 1 FETCH (BODY[] {10}\r\nabc"
    reader.receive_data(b"defghij)\r\n")
    assert isinstance(reader.next_event(), UntaggedResponse)
    assert reader.pending == b""


def test_literal_arrives_byte_by_byte() -> None:
    reader = ImapResponseReader()
    data = b"* 1 FETCH (BODY[] {3}\r\n\r\n\n)\r\n"
    for byte in data[:-1]:
        reader.receive_data(bytes([byte]))
        assert reader.next_event() is NEED_DATA
    reader.receive_data(data[-1:])
    response = reader.next_event()
    assert isinstance(response, UntaggedResponse)
    assert response.data == (("BODY[]", b"\r\n\n"),)


def test_bare_lf_accepted_when_not_strict() -> None:
    data = b"* 1 FETCH (BODY[] {2}\nab)\na1 OK x\n"
    events = drain(ImapResponseReader(strict=False), data)
    assert events[0].data == (("BODY[]", b"ab"),)
    assert events[1] == TaggedResponse(tag="a1", status="OK", text="x", raw=b"a1 OK x\n")


def test_eof_is_connection_closed_every_time() -> None:
    reader = ImapResponseReader()
    assert drain(reader, b"* BYE\r\n")[-1] == ConnectionClosed()
    assert reader.next_event() == ConnectionClosed()


def test_max_literal_fails_before_buffering() -> None:
    reader = ImapResponseReader(max_literal=100)
    reader.receive_data(b"* 1 FETCH (BODY[] {101}\r\n")
    with pytest.raises(RemoteProtocolError, match="max_literal=100"):
        reader.next_event()


def test_max_depth_is_bounded() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        ImapResponseReader(max_depth=10_000)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tag": "a1", "status": "PREAUTH"},
        {"tag": "a+", "status": "OK"},
        {"tag": "", "status": "OK"},
    ],
)
def test_tagged_validates_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        TaggedResponse(**kwargs)


def test_untagged_validates_at_construction() -> None:
    with pytest.raises(LocalProtocolError):
        UntaggedResponse(keyword="exists")


# -- malformed responses --------------------------------------------------------

BAD = [
    # framing
    (b"* OK x\n", "bare LF", "RFC 9051 §2.2"),
    (b"* 1 FETCH (BODY[] {3}\nabc)\r\n", "bare LF", "RFC 9051 §2.2"),
    (b"* OK x", "connection closed in the middle of a reply", "RFC 9051 §9"),
    (b"* 1 FETCH (BODY[] {10}\r\nabc", "inside a 10-byte literal, 3 byte(s)", "RFC 9051 §9"),
    (
        b"* 1 FETCH (BODY[] {3}\r\nabc",
        "connection closed in the middle of a reply",
        "RFC 9051 §9",
    ),
    (b"* OK x {5+}\r\nhello\r\n", "non-synchronizing literal", "RFC 9051 §4.3"),
    (b"* 1 FETCH (BODY[] {99999999999999999999}\r\n", "max_literal", "RFC 9051 §4.3"),
    # what starts a response
    (b"\r\n", "expected '*', '+' or a tag", "RFC 9051 §9"),
    (b"*OK\r\n", "untagged response at stream byte 0, offset 1: expected SP", "RFC 9051 §9"),
    (b"+OK\r\n", "continuation request at stream byte 0, offset 1: expected SP", "RFC 9051 §9"),
    (b"(a) OK x\r\n", "expected '*', '+' or a tag", "RFC 9051 §9"),
    (b"a1 PREAUTH x\r\n", "expected OK, NO or BAD after the tag", "RFC 9051 §9"),
    (b"a1 BYE x\r\n", "expected OK, NO or BAD", "RFC 9051 §9"),
    (b"a1  OK\r\n", "expected atom", "RFC 9051 §9"),
    (b"a1 OKAY\r\n", "expected OK, NO or BAD", "RFC 9051 §9"),
    (b"* (x)\r\n", "expected a response keyword", "RFC 9051 §9"),
    (b"* 1\r\n", "expected SP", "RFC 9051 §9"),
    # resp-text
    (
        b"* OK [ALERT text\r\n",
        "resp-text-code opened with '[' is never closed by ']'",
        "RFC 9051 §9",
    ),
    (b"a1 NO [\r\n", "never closed", "RFC 9051 §9"),
    (b"a1 NO []\r\n", "offset 7: expected atom", "RFC 9051 §9"),
    (b"a1 NO [X(y)]\r\n", "SP or ']' after the resp-text-code atom", "RFC 9051 §9"),
    (b"a1 OK [UIDVALIDITY 0]\r\n", "[UIDVALIDITY] needs SP nz-number", "RFC 9051 §9"),
    (b"a1 OK [UIDNEXT x]\r\n", "[UIDNEXT] needs SP nz-number", "RFC 9051 §9"),
    (b"* 3 OK x\r\n", "no message number before OK", "RFC 9051 §9"),
    (
        b"* OK[ALERT] x\r\n",
        "untagged OK response at stream byte 0, offset 4: expected SP",
        "RFC 9051 §9",
    ),
    # numbers
    (b"* EXISTS\r\n", "a message number before EXISTS", "RFC 9051 §9"),
    (b"* 0 EXPUNGE\r\n", "non-zero message number (nz-number) before EXPUNGE", "RFC 9051 §9"),
    (b"* 4294967296 EXISTS\r\n", "number 4294967296 is larger than 4294967295", "RFC 9051 §9"),
    (b"* 3 EXISTS now\r\n", "expected end of response", "RFC 9051 §9"),
    (b"* 3 CAPABILITY IMAP4rev2\r\n", "no message number before CAPABILITY", "RFC 9051 §9"),
    # CAPABILITY, FLAGS, LIST, STATUS, SEARCH, ESEARCH, NAMESPACE
    (b"* CAPABILITY IMAP4 IDLE\r\n", "neither IMAP4rev2 nor IMAP4rev1", "RFC 9051 §9"),
    (b"* CAPABILITY IMAP4rev1  IDLE\r\n", "offset 23: expected atom", "RFC 9051 §9"),
    (b"* FLAGS (\\Seen\r\n", "expected ')'", "RFC 9051 §9"),
    (b"* FLAGS (\\Seen  \\Draft)\r\n", "expected atom", "RFC 9051 §9"),
    (b"* FLAGS (\\*)\r\n", "expected atom", "RFC 9051 §9"),
    (b"* FLAGS \\Seen\r\n", "expected '('", "RFC 9051 §9"),
    (b'* LIST (Noselect) "/" x\r\n', "a mailbox attribute", "RFC 9051 §9"),
    (b'* LIST () "//" x\r\n', "one-character quoted hierarchy delimiter", "RFC 9051 §9"),
    (b'* LIST () "/" foo*\r\n', "expected end of response", "RFC 9051 §9"),
    (b'* LIST () "/"\r\n', "expected SP", "RFC 9051 §9"),
    (b"* STATUS x (MESSAGES x)\r\n", "expected number", "RFC 9051 §9"),
    (b"* STATUS x (UIDNEXT 0)\r\n", "nz-number", "RFC 9051 §9"),
    (b"* SEARCH 1 0\r\n", "nz-number", "RFC 9051 §9"),
    (b"* SEARCH 1 \r\n", "expected nz-number", "RFC 9051 §9"),
    (b"* SEARCH 1 (FOO 2)\r\n", "expected MODSEQ", "RFC 9051 §9"),
    (b"* ESEARCH (TOG x)\r\n", "expected TAG", "RFC 9051 §9"),
    (b"* ESEARCH ALL x\r\n", "expected sequence-set", "RFC 9051 §9"),
    (b"* ESEARCH ALL 1:x\r\n", "expected SP, found b':x'", "RFC 9051 §9"),
    (b"* NAMESPACE NIL NIL\r\n", "expected SP", "RFC 9051 §9"),
    (b"* NAMESPACE () NIL NIL\r\n", "expected '('", "RFC 9051 §9"),
    # FETCH
    (b"* 1 FETCH ()\r\n", "expected atom", "RFC 9051 §9"),
    (b"* 1 FETCH (UID 0)\r\n", "nz-number (no leading zero, not 0)", "RFC 9051 §9"),
    (b"* 1 FETCH (UID 01)\r\n", "nz-number", "RFC 9051 §9"),
    (b"* 1 FETCH (UID 1\r\n", "offset 16: expected ')'", "RFC 9051 §9"),
    (b"* 1 FETCH (UID 1) x\r\n", "expected end of response", "RFC 9051 §9"),
    (b"* 1 FETCH UID 1\r\n", "expected '('", "RFC 9051 §9"),
    (b"* 1 FETCH (UID 1  FLAGS ())\r\n", "expected atom", "RFC 9051 §9"),
    (b"* 1 FETCH (FLAGS (\\Seen)\r\n", "expected ')', found end of response", "RFC 9051 §9"),
    (b"* 1 FETCH (BODY[] ~{1}\r\nx)\r\n", "literal8 ~{n} is only for BINARY[]", "RFC 9051 §9"),
    (b"* 1 FETCH (BODY[] abc)\r\n", "expected nstring", "RFC 9051 §9"),
    (b"* 1 FETCH (BODY[FOO] NIL)\r\n", "expected HEADER, HEADER.FIELDS", "RFC 9051 §9"),
    (b"* 1 FETCH (BODY[MIME] NIL)\r\n", "HEADER.FIELDS.NOT, TEXT, found", "RFC 9051 §9"),
    (b"* 1 FETCH (BODY[1.0] NIL)\r\n", "nz-number", "RFC 9051 §9"),
    (b"* 1 FETCH (BODY[HEADER.FIELDS ()] NIL)\r\n", "expected astring", "RFC 9051 §9"),
    (b"* 1 FETCH (BODY[TEXT NIL)\r\n", "']' closing the section", "RFC 9051 §9"),
    (
        b'* 1 FETCH (INTERNALDATE "17-Jul-96 02:44:25 -0700")\r\n',
        "expected date-time",
        "RFC 9051 §9",
    ),
    (b"* 1 FETCH (RFC822.SIZE -1)\r\n", "expected number64", "RFC 9051 §9"),
    (b'* 1 FETCH (BODY[] "a\\tb")\r\n', "only '\\\"' and '\\\\' are escapes", "RFC 9051 §9"),
    (b'* 1 FETCH (BODY[] "abc)\r\n', "quoted string is not closed", "RFC 9051 §9"),
    (b'* 1 FETCH (BODY[] "a\x00b")\r\n', "quoted string contains b'\\x00'", "RFC 9051 §9"),
    (b"* 1 FETCH (BODY[] x{3}\r\nabc)\r\n", "expected nstring", "RFC 9051 §9"),
    (b"* 1 FETCH (ENVELOPE (NIL NIL))\r\n", "expected SP", "RFC 9051 §9"),
    (
        b"* 1 FETCH (ENVELOPE (NIL NIL () NIL NIL NIL NIL NIL NIL NIL))\r\n",
        "expected '('",
        "RFC 9051 §9",
    ),
    (
        b'* 1 FETCH (BODY ("TEXT" "PLAIN" () NIL NIL "7BIT" 1 1))\r\n',
        "expected string",
        "RFC 9051 §9",
    ),
    (b'* 1 FETCH (BODY ("TEXT" "PLAIN" NIL NIL NIL "7BIT" 1))\r\n', "expected SP", "RFC 9051 §9"),
    (b'* 1 FETCH (BODY ("A" "B" NIL NIL NIL 7BIT 1))\r\n', "expected string", "RFC 9051 §9"),
    (
        b'* 1 FETCH (BODY (("A" "B" NIL NIL NIL "7BIT" 1) '
        b'("A" "B" NIL NIL NIL "7BIT" 1) "MIXED"))\r\n',
        "body parts of a multipart are not separated by SP",
        "RFC 9051 §9",
    ),
    (b"* 1 FETCH (BODY " + b"(" * 150 + b"\r\n", "nested deeper than max_depth=100", "RFC 9051 §9"),
]


@pytest.mark.parametrize(("data", "message", "rfc_ref"), BAD)
def test_malformed_response(data: bytes, message: str, rfc_ref: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        drain(ImapResponseReader(), data)
    assert message in info.value.message
    assert info.value.rfc_ref == rfc_ref
    assert "\n" not in str(info.value)


def test_error_says_where() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        drain(ImapResponseReader(), b"* 2 EXISTS\r\n* 1 FETCH (UID 0)\r\n")
    assert info.value.message == (
        "untagged FETCH response at stream byte 12, offset 15: expected nz-number "
        "(no leading zero, not 0), found b'0)' (response begins b'* 1 FETCH (UID 0)\\r\\n')"
    )


# -- properties -----------------------------------------------------------------

ATOM = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_",
    min_size=1,
    max_size=8,
)
TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz []0123456789.:-", max_size=20).map(str.strip)
QUOTABLE = st.binary(max_size=10).map(lambda b: bytes(c for c in b if c not in b"\r\n\x00"))


def quote(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, object]:
    """One valid response and what it must parse to (a (type, key facts) pair)."""
    kind = draw(st.sampled_from(["tagged", "status", "exists", "fetch", "list", "search", "cont"]))
    if kind == "tagged":
        tag = draw(ATOM)
        status = draw(st.sampled_from(["OK", "NO", "BAD"]))
        text = draw(TEXT).strip("[] ") or "done"
        return f"{tag} {status} {text}\r\n".encode(), ("tagged", tag, status, text)
    if kind == "status":
        code = draw(ATOM).upper()
        text = draw(TEXT).strip("[] ")
        return f"* OK [{code}] {text}\r\n".encode(), ("status", code, text)
    if kind == "exists":
        number = draw(st.integers(0, 2**32 - 1))
        return b"* %d EXISTS\r\n" % number, ("exists", number)
    if kind == "fetch":
        number = draw(st.integers(1, 2**32 - 1))
        body = draw(st.binary(max_size=40))
        binary = draw(st.binary(max_size=10))
        data = (
            b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (number, number, len(body))
            + body
            + b" BINARY[1] ~{%d}\r\n" % len(binary)
            + binary
            + b")\r\n"
        )
        return data, ("fetch", number, body, binary)
    if kind == "list":
        name = draw(QUOTABLE)
        return b'* LIST (\\HasNoChildren) "/" ' + quote(name) + b"\r\n", ("list", name)
    if kind == "search":
        numbers = draw(st.lists(st.integers(1, 2**32 - 1), max_size=5))
        return b"".join([b"* SEARCH", *(b" %d" % n for n in numbers), b"\r\n"]), (
            "search",
            tuple(numbers),
        )
    text = draw(TEXT)
    return f"+ {text}\r\n".encode(), ("cont", text)


def facts(event: object) -> object:
    """The key facts :func:`responses` promised, read back from a parsed event."""
    if isinstance(event, TaggedResponse):
        return ("tagged", event.tag, event.status, event.text)
    if isinstance(event, ContinuationRequest):
        return ("cont", event.text)
    assert isinstance(event, UntaggedResponse)
    if event.keyword == "OK":
        return ("status", event.code, event.text)
    if event.keyword == "EXISTS":
        return ("exists", event.number)
    data: Any = event.data
    if event.keyword == "FETCH":
        return ("fetch", event.number, data[0][3], data[0][5])
    if event.keyword == "LIST":
        return ("list", data[2])
    return ("search", data)


@FUZZ
@given(st.lists(responses(), min_size=1, max_size=4), st.integers(min_value=1, max_value=11))
def test_whole_equals_chunked_on_valid_streams(
    stream: list[tuple[bytes, object]], chunk: int
) -> None:
    data = b"".join(raw for raw, _ in stream)
    events, error = outcome(data, None)
    assert error is None
    assert [facts(e) for e in events[:-1]] == [expected for _, expected in stream]
    assert b"".join(e.raw for e in events[:-1]) == data
    assert outcome(data, 1) == (events, None)
    assert outcome(data, chunk) == (events, None)


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_only_events_or_remote_errors(data: bytes, strict: bool) -> None:
    events, error = outcome(data, None, strict=strict)
    assert all(isinstance(e, EVENTS) for e in events)
    assert outcome(data, 1, strict=strict) == (events, error)


TOKENS = [
    b" ",
    b"(",
    b")",
    b"{",
    b"}",
    b"~",
    b"[",
    b"]",
    b'"',
    b"\\",
    b"\r\n",
    b"\n",
    b"NIL",
    b"0",
    b"7",
    b"{2}\r\n",
    b"~{1}\r\n",
    b"FETCH",
    b"* ",
    b"+",
    b"BODY[",
    b"UID",
    b"\x00",
    b"\xff",
]


@FUZZ
@given(st.lists(responses(), min_size=1, max_size=3), st.data())
def test_mutated_streams_only_events_or_remote_errors(
    stream: list[tuple[bytes, object]], data: st.DataObject
) -> None:
    mutated = bytearray(b"".join(raw for raw, _ in stream))
    for _ in range(data.draw(st.integers(1, 5))):
        at = data.draw(st.integers(0, len(mutated)))
        if data.draw(st.booleans()) and at < len(mutated):
            del mutated[at]
        else:
            mutated[at:at] = data.draw(st.sampled_from(TOKENS))
    events, error = outcome(bytes(mutated), None)
    assert all(isinstance(e, EVENTS) for e in events)
    assert outcome(bytes(mutated), 1) == (events, error)


@FUZZ
@given(
    st.lists(
        st.sampled_from([*TOKENS, b"a1 OK", b"* 1 FETCH ", b"* XFOO ", b"* LIST "]), max_size=30
    )
)
def test_token_soup_only_events_or_remote_errors(pieces: list[bytes]) -> None:
    data = b"".join(pieces) + b"\r\n"
    events, error = outcome(data, None)
    assert all(isinstance(e, EVENTS) for e in events)
    assert outcome(data, 1) == (events, error)
