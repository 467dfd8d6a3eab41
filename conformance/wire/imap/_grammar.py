"""IMAP response productions of RFC 9051 §9 (and RFC 3501 §9), by recursive descent.

Theory of operation
-------------------
Each function below is one ABNF production, named after it and preceded by
the rule it implements. It takes a :class:`Cursor` just past what its caller
consumed, consumes exactly its production, and returns the values it matched
in the shape of :data:`ImapToken` (atoms ``str``, numbers ``int``, strings
``bytes``, NIL ``None``, lists ``tuple``). Anything else raises
:class:`ImapSyntaxError` saying what was expected at which offset.

Only responses whose syntax the RFCs fix are parsed here (:data:`UNNUMBERED`
and :data:`NUMBERED`); extension responses go through the lenient tokenizer
in :mod:`._lexer`. Where an RFC leaves room for extensions inside a fixed
response (``tagged-ext-val``, ``body-extension``, FETCH items of other RFCs),
the generic :meth:`Cursor.value` takes them.

RFC 3501 and RFC 9051 differ in places; servers speak either, so where the
grammars differ both are accepted (noted at each rule).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from conformance.wire.imap._lexer import Cursor, ImapSyntaxError, ImapToken

__all__ = ["NUMBERED", "STATUS_KEYWORDS", "UNNUMBERED", "resp_text"]

STATUS_KEYWORDS = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})
"""Keywords followed by ``resp-text`` (RFC 9051 §7.1)."""

# RFC 9051 §9:
#   date-time      = DQUOTE date-day-fixed "-" date-month "-" date-year
#                    SP time SP zone DQUOTE
#   date-day-fixed = (SP DIGIT) / 2DIGIT
#   date-month     = "Jan" / "Feb" / "Mar" / "Apr" / "May" / "Jun" /
#                    "Jul" / "Aug" / "Sep" / "Oct" / "Nov" / "Dec"
#   date-year      = 4DIGIT
#   time           = 2DIGIT ":" 2DIGIT ":" 2DIGIT
#   zone           = ("+" / "-") 4DIGIT
_DATE_TIME = re.compile(
    rb'"((?: [0-9]|[0-9]{2})-(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)-[0-9]{4}'
    rb' [0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4})"'
)
# RFC 9051 §9:
#   sequence-set   = (seq-number / seq-range) ["," sequence-set]
#   seq-range      = seq-number ":" seq-number
#   seq-number     = nz-number / "*"
_SEQ_NUMBER = r"(?:[1-9][0-9]*|\*)"
_SEQUENCE_SET = re.compile(
    rf"{_SEQ_NUMBER}(?::{_SEQ_NUMBER})?(?:,{_SEQ_NUMBER}(?::{_SEQ_NUMBER})?)*".encode()
)
# Section words (section-msgtext / section-text), before any SP or "]".
_SECTION_WORD = re.compile(rb"[A-Za-z.]+")


def resp_text(cur: Cursor) -> tuple[str | None, str | None, str]:
    """``resp-text``: an optional bracketed code, then human-readable text.

    RFC 9051 §9:
        resp-text      = ["[" resp-text-code "]" SP] [text]
        resp-text-code = "ALERT" / ... / "UIDNEXT" SP nz-number /
                         "UIDVALIDITY" SP nz-number / "UNSEEN" SP nz-number /
                         ... / atom [SP 1*<any TEXT-CHAR except "]">]
    RFC 3501 §9 made the text mandatory; servers omit it, and the SP after
    ``]``, often enough that both are accepted.

    Returns:
        (code upper-cased, code arguments, text).
    """
    code: str | None = None
    args: str | None = None
    if cur.accept(b"["):
        open_at = cur.pos - 1
        close = cur.buf.find(b"]", cur.pos)
        if close < 0:
            raise ImapSyntaxError(open_at, "resp-text-code opened with '[' is never closed by ']'")
        code = cur.atom().upper()
        raw_args = b""
        if cur.accept(b" "):
            raw_args = cur.buf[cur.pos : close]
            args = _decode(raw_args)
            cur.pos = close
        cur.expect(b"]", "SP or ']' after the resp-text-code atom")
        if code in ("UIDNEXT", "UIDVALIDITY", "UNSEEN"):
            _code_nz_number(cur, code, raw_args, open_at)
        cur.accept(b" ")
    return code, args, _decode(cur.buf[cur.pos :])


def _code_nz_number(cur: Cursor, code: str, args: bytes, pos: int) -> None:
    # "UIDNEXT" SP nz-number / "UIDVALIDITY" SP nz-number / "UNSEEN" SP nz-number
    check = Cursor(args, {}, cur.max_depth)
    try:
        check.nz_number()
        check.end()
    except ImapSyntaxError as exc:
        raise ImapSyntaxError(pos, f"[{code}] needs SP nz-number: {exc.message}") from None


# -- untagged responses without a message number ----------------------------


def capability_data(cur: Cursor) -> tuple[ImapToken, ...]:
    """``capability-data``.

    RFC 9051 §9:
        capability-data = "CAPABILITY" *(SP capability) SP "IMAP4rev2" *(SP capability)
        capability      = ("AUTH=" auth-type) / atom
    RFC 3501 §9: the same with "IMAP4rev1"; a server may list both.
    """
    start = cur.pos
    caps = _capabilities(cur)
    if not {str(c).upper() for c in caps} & {"IMAP4REV1", "IMAP4REV2"}:
        raise ImapSyntaxError(start, "CAPABILITY lists neither IMAP4rev2 nor IMAP4rev1")
    return caps


def enable_data(cur: Cursor) -> tuple[ImapToken, ...]:
    """``enable-data = "ENABLED" *(SP capability)`` (RFC 9051 §9, RFC 5161 §4)."""
    return _capabilities(cur)


def _capabilities(cur: Cursor) -> tuple[ImapToken, ...]:
    caps: list[ImapToken] = []
    while not cur.at_end():
        cur.sp()
        caps.append(cur.atom())
    return tuple(caps)


def flags_data(cur: Cursor) -> tuple[ImapToken, ...]:
    """``"FLAGS" SP flag-list`` (RFC 9051 §9 mailbox-data)."""
    cur.sp()
    flags = flag_list(cur)
    cur.end()
    return (flags,)


def flag_list(cur: Cursor) -> tuple[ImapToken, ...]:
    """``flag-list = "(" [flag *(SP flag)] ")"`` (RFC 9051 §9).

    Also serves ``"(" [flag-fetch *(SP flag-fetch)] ")"`` in FETCH, where
    ``flag-fetch = flag / obsolete-flag-recent`` and ``\\Recent`` is a flag-extension
    in form.
    """
    cur.open_list()
    flags: list[ImapToken] = []
    if cur.peek() != 0x29:
        flags.append(cur.flag())
        while cur.accept(b" "):
            flags.append(cur.flag())
    cur.close_list()
    return tuple(flags)


def mailbox(cur: Cursor) -> ImapToken:
    """``mailbox = "INBOX" / astring`` (RFC 9051 §9; INBOX is case-insensitive)."""
    return cur.astring()


def mailbox_list(cur: Cursor) -> tuple[ImapToken, ...]:
    """``"LIST" SP mailbox-list`` (also LSUB, RFC 3501 §9).

    RFC 9051 §9:
        mailbox-list       = "(" [mbx-list-flags] ")" SP
                             (DQUOTE QUOTED-CHAR DQUOTE / nil) SP mailbox
                             [SP mbox-list-extended]
        mbx-list-flags     = *(mbx-list-oflag SP) mbx-list-sflag *(SP mbx-list-oflag) /
                             mbx-list-oflag *(SP mbx-list-oflag)
        mbox-list-extended = "(" [mbox-list-extended-item
                             *(SP mbox-list-extended-item)] ")"
        mbox-list-extended-item = mbox-list-extended-item-tag SP tagged-ext-val
    Every list flag is a backslash-atom (``\\Noselect``, flag-extension).
    """
    cur.sp()
    cur.open_list()
    flags: list[ImapToken] = []
    if cur.peek() != 0x29:
        flags.append(_mbx_list_flag(cur))
        while cur.accept(b" "):
            flags.append(_mbx_list_flag(cur))
    cur.close_list()
    cur.sp()
    delimiter = _delimiter(cur)
    cur.sp()
    name = mailbox(cur)
    items: list[ImapToken] = [tuple(flags), delimiter, name]
    if cur.accept(b" "):
        items.append(_mbox_list_extended(cur))
    cur.end()
    return tuple(items)


def _mbx_list_flag(cur: Cursor) -> str:
    # mbx-list-oflag = "\Noinferiors" / child-mbox-flag / "\Subscribed" /
    #                  "\Remote" / flag-extension
    # mbx-list-sflag = "\NonExistent" / "\Noselect" / "\Marked" / "\Unmarked"
    cur.expect(b"\\", "a mailbox attribute ('\\' atom)")
    return "\\" + cur.atom()


def _delimiter(cur: Cursor) -> bytes | None:
    # (DQUOTE QUOTED-CHAR DQUOTE / nil): one character, or NIL for a flat namespace.
    if cur.at_nil():
        cur.nil()
        return None
    start = cur.pos
    delimiter = cur.quoted()
    if len(delimiter.decode("utf-8", errors="replace")) != 1:
        cur.fail("a one-character quoted hierarchy delimiter or NIL", start)
    return delimiter


def _mbox_list_extended(cur: Cursor) -> ImapToken:
    cur.open_list()
    items: list[ImapToken] = []
    if cur.peek() != 0x29:
        while True:
            items.append(cur.astring())  # mbox-list-extended-item-tag = astring
            cur.sp()
            items.append(cur.value())  # tagged-ext-val
            if not cur.accept(b" "):
                break
    cur.close_list()
    return tuple(items)


def status_data(cur: Cursor) -> tuple[ImapToken, ...]:
    """``"STATUS" SP mailbox SP "(" [status-att-list] ")"`` (RFC 9051 §9).

    RFC 9051 §9:
        status-att-list = status-att-val *(SP status-att-val)
        status-att-val  = ("MESSAGES" SP number) / ("UIDNEXT" SP nz-number) /
                          ("UIDVALIDITY" SP nz-number) / ("UNSEEN" SP number) /
                          ("DELETED" SP number) / ("SIZE" SP number64)
    RFC 3501 adds ``"RECENT" SP number``; extensions (RFC 7162 HIGHESTMODSEQ,
    RFC 8474 MAILBOXID) take a generic value.
    """
    cur.sp()
    name = mailbox(cur)
    cur.sp()
    cur.open_list()
    items: list[ImapToken] = []
    if cur.peek() != 0x29:
        while True:
            att = cur.atom()
            cur.sp()
            items.append(att)
            items.append(_status_att_value(cur, att.upper()))
            if not cur.accept(b" "):
                break
    cur.close_list()
    cur.end()
    return (name, tuple(items))


def _status_att_value(cur: Cursor, att: str) -> ImapToken:
    if att in ("UIDNEXT", "UIDVALIDITY"):
        return cur.nz_number()
    if att in ("MESSAGES", "UNSEEN", "DELETED", "RECENT"):
        return cur.number()
    if att in ("SIZE", "HIGHESTMODSEQ"):
        return cur.number64()
    return cur.value()


def search_data(cur: Cursor) -> tuple[ImapToken, ...]:
    """``"SEARCH" *(SP nz-number)`` (RFC 3501 §9), with RFC 7162's MODSEQ.

    RFC 7162 §7:
        search-sort-mod-seq = "(" "MODSEQ" SP mod-sequence-value ")"
    RFC 9051 keeps SEARCH only as ``obsolete-search-response``.
    """
    items: list[ImapToken] = []
    while not cur.at_end():
        cur.sp()
        if cur.peek() == 0x28:
            cur.open_list()
            word = cur.atom()
            if word.upper() != "MODSEQ":
                cur.fail("MODSEQ", cur.pos - len(word))
            cur.sp()
            items.append((word, cur.number64()))
            cur.close_list()
            cur.end()
            break
        items.append(cur.nz_number())
    return tuple(items)


def esearch_response(cur: Cursor) -> tuple[ImapToken, ...]:
    """``esearch-response`` (RFC 9051 §9, RFC 4731 §3.1).

    RFC 9051 §9:
        esearch-response   = "ESEARCH" [search-correlator] [SP "UID"]
                             *(SP search-return-data)
        search-correlator  = SP "(" "TAG" SP tag-string ")"
        search-return-data = "MIN" SP nz-number / "MAX" SP nz-number /
                             "ALL" SP sequence-set / "COUNT" SP number /
                             search-ret-data-ext
        search-ret-data-ext = search-modifier-name SP search-return-value
    """
    items: list[ImapToken] = []
    if cur.buf.startswith(b" (", cur.pos):
        cur.sp()
        cur.open_list()
        word = cur.atom()
        if word.upper() != "TAG":
            cur.fail("TAG", cur.pos - len(word))
        cur.sp()
        items.append((word, cur.astring()))  # tag-string = astring
        cur.close_list()
    seen_data = False
    while not cur.at_end():
        cur.sp()
        name = cur.atom()
        upper = name.upper()
        items.append(name)
        if upper == "UID" and not seen_data:
            seen_data = True
            continue
        seen_data = True
        cur.sp()
        if upper in ("MIN", "MAX"):
            items.append(cur.nz_number())
        elif upper == "COUNT":
            items.append(cur.number())
        elif upper == "ALL":
            items.append(sequence_set(cur))
        elif upper == "MODSEQ":
            items.append(cur.number64())
        else:
            items.append(cur.value())  # search-return-value = tagged-ext-val
    return tuple(items)


def sequence_set(cur: Cursor) -> str:
    """``sequence-set``, as its text (``"2,10:11"``)."""
    return cur.match(_SEQUENCE_SET, "sequence-set").decode("ascii")


def namespace_response(cur: Cursor) -> tuple[ImapToken, ...]:
    """``namespace-response`` (RFC 9051 §9, RFC 2342 §5).

    RFC 9051 §9:
        namespace-response = "NAMESPACE" SP namespace SP namespace SP namespace
                             ; personal, other users', shared
    """
    found: list[ImapToken] = []
    for _ in range(3):
        cur.sp()
        found.append(namespace(cur))
    cur.end()
    return tuple(found)


def namespace(cur: Cursor) -> ImapToken:
    """``namespace = nil / "(" 1*namespace-descr ")"``.

    RFC 9051 §9:
        namespace-descr = "(" string SP (DQUOTE QUOTED-CHAR DQUOTE / nil)
                          [namespace-response-extensions] ")"
        namespace-response-extensions = *namespace-response-extension
        namespace-response-extension = SP string SP "(" string *(SP string) ")"
    """
    if cur.at_nil():
        cur.nil()
        return None
    cur.open_list()
    descriptions: list[ImapToken] = []
    while True:
        cur.open_list()
        description: list[ImapToken] = [cur.string()]
        cur.sp()
        description.append(_delimiter(cur))
        while cur.accept(b" "):
            description.append(cur.string())
            cur.sp()
            cur.open_list()
            values = [cur.string()]
            while cur.accept(b" "):
                values.append(cur.string())
            cur.close_list()
            description.append(tuple(values))
        cur.close_list()
        descriptions.append(tuple(description))
        if cur.peek() != 0x28:
            break
    cur.close_list()
    return tuple(descriptions)


# -- untagged responses with a message number -------------------------------


def no_data(cur: Cursor) -> tuple[ImapToken, ...]:
    """``number SP "EXISTS"`` and the like (RECENT, EXPUNGE): nothing follows the keyword."""
    cur.end()
    return ()


def fetch_data(cur: Cursor) -> tuple[ImapToken, ...]:
    """``"FETCH" SP msg-att`` (RFC 9051 §9 message-data).

    RFC 9051 §9:
        msg-att         = "(" (msg-att-dynamic / msg-att-static)
                          *(SP (msg-att-dynamic / msg-att-static)) ")"
        msg-att-dynamic = "FLAGS" SP "(" [flag-fetch *(SP flag-fetch)] ")"
        msg-att-static  = "ENVELOPE" SP envelope /
                          "INTERNALDATE" SP date-time /
                          "RFC822.SIZE" SP number64 /
                          "BODY" ["STRUCTURE"] SP body /
                          "BODY" section ["<" number ">"] SP nstring /
                          "BINARY" section-binary SP (nstring / literal8) /
                          "BINARY.SIZE" section-binary SP number /
                          "UID" SP uniqueid
    RFC 3501 adds ``"RFC822" [".HEADER" / ".TEXT"] SP nstring``; RFC 3516 allows
    ``["<" number ">"]`` after BINARY's section. Items of other RFCs (MODSEQ,
    EMAILID, X-GM-*) take a generic value.
    """
    cur.sp()
    cur.open_list()
    items: list[ImapToken] = []
    while True:
        name, value = _msg_att(cur)
        items.append(name)
        items.append(value)
        if not cur.accept(b" "):
            break
    cur.close_list()
    cur.end()
    return (tuple(items),)


def _msg_att(cur: Cursor) -> tuple[str, ImapToken]:
    start = cur.pos
    word = cur.atom_before_bracket().upper()
    value: ImapToken
    if word in ("BODY", "BINARY", "BINARY.SIZE") and cur.peek() == 0x5B:
        if word == "BODY":
            section(cur)
        else:
            section_binary(cur)
        if word != "BINARY.SIZE" and cur.accept(b"<"):
            cur.number()
            cur.expect(b">", "'>'")
        name = _decode(cur.buf[start : cur.pos])
        cur.sp()
        if word == "BINARY.SIZE":
            value = cur.number()
        else:
            value = cur.nstring(allow_literal8=word == "BINARY")
        return name, value
    if cur.peek() == 0x5B:
        # An extension item with a section of its own: keep it whole.
        close = cur.buf.find(b"]", cur.pos)
        if close < 0:
            cur.fail("']' closing the section")
        cur.pos = close + 1
    name = _decode(cur.buf[start : cur.pos])
    cur.sp()
    if word == "FLAGS":
        value = flag_list(cur)
    elif word == "UID":
        value = cur.nz_number()  # uniqueid = nz-number
    elif word == "RFC822.SIZE":
        value = cur.number64()
    elif word in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
        value = cur.nstring()
    elif word == "INTERNALDATE":
        value = date_time(cur)
    elif word == "ENVELOPE":
        value = envelope(cur)
    elif word in ("BODY", "BODYSTRUCTURE"):
        value = body(cur)
    elif word == "MODSEQ":
        # RFC 7162 §7: fetch-mod-resp = "MODSEQ" SP "(" permsg-modsequence ")"
        cur.open_list()
        value = (cur.number64(),)
        cur.close_list()
    else:
        value = cur.value()
    return name, value


def section(cur: Cursor) -> None:
    """``section = "[" [section-spec] "]"``.

    RFC 9051 §9:
        section-spec    = section-msgtext / (section-part ["." section-text])
        section-msgtext = "HEADER" / "HEADER.FIELDS" [".NOT"] SP header-list / "TEXT"
        section-part    = nz-number *("." nz-number)
        section-text    = section-msgtext / "MIME"
        header-list     = "(" header-fld-name *(SP header-fld-name) ")"
        header-fld-name = astring
    """
    cur.expect(b"[", "'['")
    if cur.accept(b"]"):
        return
    if cur.at_digit():
        _section_part(cur)
        if cur.accept(b"."):
            _section_msgtext(cur, allow_mime=True)
    else:
        _section_msgtext(cur, allow_mime=False)
    cur.expect(b"]", "']' closing the section")


def section_binary(cur: Cursor) -> None:
    """``section-binary = "[" [section-part] "]"`` (RFC 9051 §9, RFC 3516 §4.4)."""
    cur.expect(b"[", "'['")
    if not cur.accept(b"]"):
        _section_part(cur)
        cur.expect(b"]", "']' closing the section")


def _section_part(cur: Cursor) -> None:
    cur.nz_number()
    while cur.buf[cur.pos : cur.pos + 1] == b"." and cur.buf[cur.pos + 1 : cur.pos + 2].isdigit():
        cur.pos += 1
        cur.nz_number()


def _section_msgtext(cur: Cursor, *, allow_mime: bool) -> None:
    start = cur.pos
    word = cur.match(_SECTION_WORD, "HEADER, HEADER.FIELDS, TEXT or MIME").upper()
    if word in (b"HEADER.FIELDS", b"HEADER.FIELDS.NOT"):
        cur.sp()
        cur.open_list()
        cur.astring()
        while cur.accept(b" "):
            cur.astring()
        cur.close_list()
    elif word not in (b"HEADER", b"TEXT") and not (allow_mime and word == b"MIME"):
        expected = "HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT" + (
            " or MIME" if allow_mime else ""
        )
        cur.fail(expected, start)


def date_time(cur: Cursor) -> bytes:
    """``date-time``: ``"17-Jul-1996 02:44:25 -0700"``, as the bytes inside the quotes."""
    found = _DATE_TIME.match(cur.buf, cur.pos)
    if found is None:
        cur.fail('date-time ("dd-Mon-yyyy hh:mm:ss +zzzz")')
    cur.pos = found.end()
    return found.group(1)


def envelope(cur: Cursor) -> ImapToken:
    """``envelope`` (RFC 9051 §9).

    RFC 9051 §9:
        envelope = "(" env-date SP env-subject SP env-from SP env-sender SP
                   env-reply-to SP env-to SP env-cc SP env-bcc SP
                   env-in-reply-to SP env-message-id ")"
        env-date, env-subject, env-in-reply-to, env-message-id = nstring
        env-from, env-sender, env-reply-to, env-to, env-cc, env-bcc =
                   "(" 1*address ")" / nil
    """
    cur.open_list()
    fields: list[ImapToken] = [cur.nstring()]
    cur.sp()
    fields.append(cur.nstring())
    for _ in range(6):
        cur.sp()
        fields.append(_address_list(cur))
    cur.sp()
    fields.append(cur.nstring())
    cur.sp()
    fields.append(cur.nstring())
    cur.close_list()
    return tuple(fields)


def _address_list(cur: Cursor) -> ImapToken:
    if cur.at_nil():
        cur.nil()
        return None
    cur.open_list()
    addresses = [address(cur)]
    while cur.peek() == 0x28:
        addresses.append(address(cur))
    cur.close_list()
    return tuple(addresses)


def address(cur: Cursor) -> ImapToken:
    """``address = "(" addr-name SP addr-adl SP addr-mailbox SP addr-host ")"``, all nstring."""
    cur.open_list()
    parts: list[ImapToken] = [cur.nstring()]
    for _ in range(3):
        cur.sp()
        parts.append(cur.nstring())
    cur.close_list()
    return tuple(parts)


def body(cur: Cursor) -> ImapToken:
    """``body = "(" (body-type-1part / body-type-mpart) ")"`` (RFC 9051 §9).

    RFC 9051 §9:
        body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
        body-type-1part = (body-type-basic / body-type-msg / body-type-text)
                          [SP body-ext-1part]
        body-type-basic = media-basic SP body-fields
        body-type-msg   = media-message SP body-fields SP envelope
                          SP body SP body-fld-lines
        body-type-text  = media-text SP body-fields SP body-fld-lines
        media-message   = DQUOTE "MESSAGE" DQUOTE SP
                          DQUOTE ("RFC822" / "GLOBAL") DQUOTE
        media-text      = DQUOTE "TEXT" DQUOTE SP media-subtype
        body-fld-lines  = number64
    RFC 3501: media-message is MESSAGE/RFC822 only, body-fld-lines a number.
    """
    cur.open_list()
    items: list[ImapToken] = []
    if cur.peek() == 0x28:
        while cur.peek() == 0x28:
            items.append(body(cur))
        cur.sp()
        if cur.peek() == 0x28:
            cur.fail("media-subtype (body parts of a multipart are not separated by SP)")
        items.append(cur.string())  # media-subtype = string
        if cur.accept(b" "):
            items.append(_body_fld_param(cur))  # body-ext-mpart
            _body_ext_tail(cur, items)
    else:
        media_type = cur.string()
        cur.sp()
        subtype = cur.string()
        items += [media_type, subtype]
        cur.sp()
        items += _body_fields(cur)
        kind = (media_type.upper(), subtype.upper())
        if kind in ((b"MESSAGE", b"RFC822"), (b"MESSAGE", b"GLOBAL")):
            cur.sp()
            items.append(envelope(cur))
            cur.sp()
            items.append(body(cur))
            cur.sp()
            items.append(cur.number64())
        elif kind[0] == b"TEXT":
            cur.sp()
            items.append(cur.number64())
        if cur.accept(b" "):
            items.append(cur.nstring())  # body-ext-1part starts with body-fld-md5
            _body_ext_tail(cur, items)
    cur.close_list()
    return tuple(items)


def _body_fields(cur: Cursor) -> list[ImapToken]:
    # body-fields = body-fld-param SP body-fld-id SP body-fld-desc SP
    #               body-fld-enc SP body-fld-octets
    # body-fld-id = nstring; body-fld-desc = nstring; body-fld-enc = string (quoted
    # known encodings or any string); body-fld-octets = number
    fields: list[ImapToken] = [_body_fld_param(cur)]
    cur.sp()
    fields.append(cur.nstring())
    cur.sp()
    fields.append(cur.nstring())
    cur.sp()
    fields.append(cur.string())
    cur.sp()
    fields.append(cur.number())
    return fields


def _body_fld_param(cur: Cursor) -> ImapToken:
    # body-fld-param = "(" string SP string *(SP string SP string) ")" / nil
    if cur.at_nil():
        cur.nil()
        return None
    cur.open_list()
    params: list[ImapToken] = [cur.string()]
    cur.sp()
    params.append(cur.string())
    while cur.accept(b" "):
        params.append(cur.string())
        cur.sp()
        params.append(cur.string())
    cur.close_list()
    return tuple(params)


def _body_ext_tail(cur: Cursor, items: list[ImapToken]) -> None:
    # body-ext-1part = body-fld-md5 [SP body-fld-dsp [SP body-fld-lang
    #                  [SP body-fld-loc *(SP body-extension)]]]
    # body-ext-mpart = body-fld-param [SP body-fld-dsp [SP body-fld-lang
    #                  [SP body-fld-loc *(SP body-extension)]]]
    # (the first element was taken by the caller)
    if not cur.accept(b" "):
        return
    items.append(_body_fld_dsp(cur))
    if not cur.accept(b" "):
        return
    items.append(_body_fld_lang(cur))
    if not cur.accept(b" "):
        return
    items.append(cur.nstring())  # body-fld-loc = nstring
    while cur.accept(b" "):
        items.append(_body_extension(cur))


def _body_fld_dsp(cur: Cursor) -> ImapToken:
    # body-fld-dsp = "(" string SP body-fld-param ")" / nil
    if cur.at_nil():
        cur.nil()
        return None
    cur.open_list()
    disposition = cur.string()
    cur.sp()
    params = _body_fld_param(cur)
    cur.close_list()
    return (disposition, params)


def _body_fld_lang(cur: Cursor) -> ImapToken:
    # body-fld-lang = nstring / "(" string *(SP string) ")"
    if cur.peek() != 0x28:
        return cur.nstring()
    cur.open_list()
    languages: list[ImapToken] = [cur.string()]
    while cur.accept(b" "):
        languages.append(cur.string())
    cur.close_list()
    return tuple(languages)


def _body_extension(cur: Cursor) -> ImapToken:
    # body-extension = nstring / number / number64 /
    #                  "(" body-extension *(SP body-extension) ")"
    byte = cur.peek()
    if byte == 0x28:
        cur.open_list()
        values = [_body_extension(cur)]
        while cur.accept(b" "):
            values.append(_body_extension(cur))
        cur.close_list()
        return tuple(values)
    if cur.at_digit():
        return cur.number64()
    return cur.nstring()


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


_Production = Callable[[Cursor], tuple[ImapToken, ...]]

UNNUMBERED: dict[str, _Production] = {
    "CAPABILITY": capability_data,
    "ENABLED": enable_data,
    "FLAGS": flags_data,
    "LIST": mailbox_list,
    "LSUB": mailbox_list,
    "STATUS": status_data,
    "SEARCH": search_data,
    "ESEARCH": esearch_response,
    "NAMESPACE": namespace_response,
}
"""Untagged keywords with fixed syntax and no message number, by production."""

NUMBERED: dict[str, tuple[bool, _Production]] = {
    # message-data = nz-number SP ("EXPUNGE" / ("FETCH" SP msg-att))
    "EXPUNGE": (True, no_data),
    "FETCH": (True, fetch_data),
    # mailbox-data =/ number SP "EXISTS"; RFC 3501: number SP "RECENT"
    "EXISTS": (False, no_data),
    "RECENT": (False, no_data),
}
"""Untagged keywords that follow a message number: (needs nz-number, production)."""
