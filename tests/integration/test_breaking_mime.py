"""The MIME round-trip scenarios (scenarios/mime/) fail against servers that break their rule.

Each case is the toy mail system of tests/toymail.py (SMTP submission with AUTH, POP3, and
IMAP) with one thing broken. The toy's IMAP is extended here with what the scenarios ask
for: FETCH of BODYSTRUCTURE, ENVELOPE and any BODY[section], SEARCH by HEADER, SUBJECT and
BODY, and ENABLE UTF8=ACCEPT. The MIME structure comes from the reference server's parser
(reference_server.imap.message), so the well-behaved toy answers as the reference does;
a case overrides one method to break one rule, or makes the toy's store change messages
on delivery (an MSA that rewraps base64, strips the eighth bit, or keeps stuffed dots).
"""

from __future__ import annotations

import functools
import quopri
import re
from collections.abc import Callable

import pytest
from breaking_support import SHIPPED, run_breaking, run_scenario
from scripted import ScriptConn
from toymail import Refused, ToyImap, ToyMail, _parens, _text

from conformance.results import Status
from reference_server.imap.message import ParsedMessage, Section

Handler = Callable[[ScriptConn], None]
Args = list[str | bytes]

_SECTION_ITEM = re.compile(r"BODY(?:\.PEEK)?\[([^\]]*)\]", re.IGNORECASE)
_SUBMISSION_KEYWORDS = (
    "PIPELINING",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "STARTTLS",
    "AUTH PLAIN LOGIN",
)


class MimeImap(ToyImap):
    """The toy's IMAP with MIME: BODYSTRUCTURE, ENVELOPE, BODY[section], SEARCH, ENABLE."""

    AUTHENTICATED = ToyImap.AUTHENTICATED | {"ENABLE"}
    SELECTED = ToyImap.SELECTED | {"ENABLE"}

    def capabilities(self) -> list[str]:
        return [*super().capabilities(), "ENABLE", "UTF8=ACCEPT"]

    def do_enable(self, tag: str, args: Args) -> None:
        # RFC 5161 §3.1: ENABLED lists what this command enabled
        enabled = [_text(a).upper() for a in args if _text(a).upper() == "UTF8=ACCEPT"]
        self.untagged("ENABLED" + "".join(f" {name}" for name in enabled))
        self.ok(tag, "ENABLE completed")

    # ---- what a case may break
    def parsed(self, message: bytes) -> ParsedMessage:
        return ParsedMessage.parse(message)

    def section(self, message: bytes, spec: str) -> bytes | None:
        """The octets of BODY[spec]; None if spec is invalid (answered BAD)."""
        if not spec:
            return message
        words = spec.split(".")
        part: list[int] = []
        while words and words[0].isdigit():
            part.append(int(words.pop(0)))
        text = ".".join(words).upper() or None
        return self.parsed(message).section(Section(tuple(part), text))

    def bodystructure(self, message: bytes) -> bytes:
        return self.parsed(message).bodystructure(extended=True)

    def header_has(self, message: bytes, name: str, needle: str) -> bool:
        return self.parsed(message).header_contains(name, needle)

    def body_has(self, message: bytes, needle: str) -> bool:
        return self.parsed(message).text_contains(needle, body_only=True)

    # ---- the commands
    def fetch_item(self, uid: int, message: bytes, flags: set[str], item: str) -> bytes:
        upper = item.upper()
        if upper == "UID":
            return f"UID {uid}".encode()
        if upper == "FLAGS":
            return f"FLAGS ({' '.join(sorted(flags))})".encode()
        if upper == "RFC822.SIZE":
            return f"RFC822.SIZE {len(message)}".encode()
        if upper == "BODYSTRUCTURE":
            return b"BODYSTRUCTURE " + self.bodystructure(message)
        if upper == "ENVELOPE":
            return b"ENVELOPE " + self.parsed(message).envelope()
        m = _SECTION_ITEM.fullmatch(item)
        if m is None:
            raise Refused(f"unsupported FETCH item {item}")
        data = self.section(message, m.group(1))
        if data is None:
            raise Refused(f"invalid section {m.group(1)}")
        return f"BODY[{m.group(1)}] {{{len(data)}}}\r\n".encode() + data

    def do_fetch(self, tag: str, args: Args, by_uid: bool = False) -> None:
        if len(args) < 2:
            raise Refused("FETCH takes a sequence set and items")
        items, rest = _parens(args[1:])
        if rest or not items:
            raise Refused("bad FETCH items")
        out = b""
        with self.toy.lock:
            folder = self.selected_folder()
            for n, uid in self.messages(args[0], by_uid):
                message = folder.get(uid)
                if message is None:
                    continue
                flags = folder.flags[uid]
                parts = [self.fetch_item(uid, message, flags, item) for item in items]
                out += f"* {n} FETCH (".encode() + b" ".join(parts) + b")\r\n"
        self.conn.send(out)
        self.ok(tag, "FETCH completed")

    def do_search(self, tag: str, args: Args, by_uid: bool = False) -> None:
        keys = list(args)
        if len(keys) >= 2 and _text(keys[0]).upper() == "CHARSET":
            if _text(keys[1]).upper() not in ("US-ASCII", "UTF-8"):
                raise Refused("charset not supported", "NO", "BADCHARSET (US-ASCII UTF-8)")
            keys = keys[2:]
        tests: list[Callable[[bytes], bool]] = []
        while keys:
            key = _text(keys.pop(0)).upper()
            if key == "ALL":
                continue
            if key == "HEADER" and len(keys) >= 2:
                name, needle = _text(keys.pop(0)), _text(keys.pop(0))
                tests.append(functools.partial(self.header_has, name=name, needle=needle))
            elif key == "SUBJECT" and keys:
                needle = _text(keys.pop(0))
                tests.append(functools.partial(self.header_has, name="Subject", needle=needle))
            elif key == "BODY" and keys:
                tests.append(functools.partial(self.body_has, needle=_text(keys.pop(0))))
            else:
                raise Refused(f"unsupported search key {key}")
        with self.toy.lock:
            folder = self.selected_folder()
            found = [
                (i + 1, uid, message)
                for i, uid in enumerate(self.view)
                if (message := folder.get(uid)) is not None
            ]
        hits = [uid if by_uid else n for n, uid, m in found if all(t(m) for t in tests)]
        self.untagged(("SEARCH " + " ".join(str(h) for h in hits)).rstrip())
        self.ok(tag, "SEARCH completed")


def mime_toy(mail: type[ToyMail] = ToyMail, imap: type[MimeImap] = MimeImap) -> dict[str, Handler]:
    """Submission (AUTH required), IMAP and POP3 of one toy; accounts as in TARGET."""
    toy = mail({"alice": "alice-pw", "bob": "bob-pw"})
    return {
        "submission": toy.smtp_handler(require_auth=True, ehlo_keywords=_SUBMISSION_KEYWORDS),
        "imap": toy.imap_handler(imap),
        "pop3": toy.pop3_handler(),
    }


# ---- stores that change messages on delivery


class RewrapsBase64(ToyMail):
    """Re-encodes base64 at 64 characters a line, as some MSAs do (RFC 6409 §8.4 allows it
    only "if needed")."""

    def deliver(self, user: str, message: bytes, flags: set[str] | None = None) -> int:
        def rewrap(m: re.Match[bytes]) -> bytes:
            text = m.group(0).replace(b"\r\n", b"")
            return b"".join(text[i : i + 64] + b"\r\n" for i in range(0, len(text), 64))

        message = re.sub(
            rb"(?m)^(?:[A-Za-z0-9+/]{76}\r\n)+[A-Za-z0-9+/=]{1,76}\r\n", rewrap, message
        )
        return super().deliver(user, message, flags)


class StripsEighthBit(ToyMail):
    """Treats an 8BITMIME body as 7-bit data (RFC 6152 §3)."""

    def deliver(self, user: str, message: bytes, flags: set[str] | None = None) -> int:
        return super().deliver(user, bytes(b & 0x7F for b in message), flags)


class KeepsStuffedDots(ToyMail):
    """Stores lines as they came in DATA, with the transparency dot (RFC 5321 §4.5.2)."""

    def deliver(self, user: str, message: bytes, flags: set[str] | None = None) -> int:
        stuffed = re.sub(rb"(?m)^\.", b"..", message)
        return super().deliver(user, stuffed, flags)


# ---- IMAP sessions that break one rule


class DecodesSections(MimeImap):
    """Sends BODY[1] of a quoted-printable body decoded (RFC 9051 §7.5.2 sends it encoded)."""

    def section(self, message: bytes, spec: str) -> bytes | None:
        data = super().section(message, spec)
        if spec and data is not None and b"quoted-printable" in message.lower():
            return quopri.decodestring(data)
        return data


class DowngradesHeaders(MimeImap):
    """Sends a surrogate with '?' for UTF-8 in the header, though UTF8=ACCEPT was enabled."""

    def section(self, message: bytes, spec: str) -> bytes | None:
        if spec:
            return super().section(message, spec)
        head, sep, body = message.partition(b"\r\n\r\n")
        return re.sub(rb"[\x80-\xff]+", b"?", head) + sep + body


class SearchesRawHeaders(MimeImap):
    """Matches header text as stored, encoded words and all (RFC 9051 §6.4.4 decodes them)."""

    def header_has(self, message: bytes, name: str, needle: str) -> bool:
        head = message.partition(b"\r\n\r\n")[0].decode("utf-8", "replace")
        values = re.findall(rf"(?im)^{re.escape(name)}:(.*(?:\r\n[ \t].*)*)", head)
        return any(needle.lower() in v.lower() for v in values)


class FlatPartNumbers(MimeImap):
    """Reads BODY[1.2] as part 2 of the message: nested part numbers ignored."""

    def section(self, message: bytes, spec: str) -> bytes | None:
        words = spec.split(".")
        numbers = [w for w in words if w.isdigit()]
        if len(numbers) > 1:
            spec = ".".join([numbers[-1], *words[len(numbers) :]])
        return super().section(message, spec)


class EnvelopeWithoutDefaults(MimeImap):
    """Leaves sender and reply-to NIL when the header has no such fields (RFC 9051 §7.5.2:
    they default to from)."""

    def bodystructure(self, message: bytes) -> bytes:
        carol = b'(("Carol Example" NIL "carol" "inner.example"))'
        return super().bodystructure(message).replace(b" ".join([carol] * 3), carol + b" NIL NIL")


class Utf8DefaultCharset(MimeImap):
    """Takes a part without Content-Type as text/plain; charset=UTF-8 (RFC 2045 §5.2 says
    US-ASCII)."""

    def bodystructure(self, message: bytes) -> bytes:
        return re.sub(
            rb'\("CHARSET" "US-ASCII"\)', b'("CHARSET" "UTF-8")', super().bodystructure(message)
        )


class PreambleIsAPart(MimeImap):
    """Counts the preamble of a multipart as its first part (RFC 2046 §5.1.1: ignored)."""

    def parsed(self, message: bytes) -> ParsedMessage:
        return super().parsed(
            message.replace(b"\r\n\r\nThis preamble", b"\r\n\r\n--mh-pe\r\nThis preamble", 1)
        )


BODYSTRUCTURE_MISMATCH = (
    r"expected an untagged response matching /(?i)^\* 1 FETCH \(.*BODYSTRUCTURE"
)

# scenario id -> (a server per service, breaking exactly the rule; phrase in the failure)
CASES: dict[str, tuple[Handler | dict[str, Handler], str]] = {
    "mime.base64-attachment-roundtrip": (
        mime_toy(mail=RewrapsBase64),
        "the message differs from the message sent at octet",
    ),
    "mime.quoted-printable-roundtrip": (
        mime_toy(imap=DecodesSections),
        r"expected an untagged response matching /^\* 1 FETCH \(.*BODY\[1\] [{]429[}]",
    ),
    "mime.8bitmime-utf8-body-roundtrip": (
        mime_toy(mail=StripsEighthBit),
        "the message differs from the message sent at octet",
    ),
    "mime.smtputf8-utf8-headers-roundtrip": (
        mime_toy(imap=DowngradesHeaders),
        "the message differs from the message sent at octet 8 (line 1)",
    ),
    "mime.encoded-word-subject-search": (mime_toy(imap=SearchesRawHeaders), "capture 'subject'"),
    "mime.nested-alternative-part-addressing": (
        mime_toy(imap=FlatPartNumbers),
        r"expected an untagged response matching /^\* 1 FETCH \((?=.*BODY\[1\.1\]",
    ),
    "mime.message-rfc822-attachment": (
        mime_toy(imap=EnvelopeWithoutDefaults),
        BODYSTRUCTURE_MISMATCH,
    ),
    "mime.missing-content-type-defaults": (
        mime_toy(imap=Utf8DefaultCharset),
        BODYSTRUCTURE_MISMATCH,
    ),
    "mime.preamble-epilogue-not-parts": (mime_toy(imap=PreambleIsAPart), BODYSTRUCTURE_MISMATCH),
    "mime.long-lines-and-leading-dots-roundtrip": (
        mime_toy(mail=KeepsStuffedDots),
        "the message differs from the message sent at octet",
    ),
}


@pytest.mark.parametrize("scenario_id", sorted(CASES))
def test_fails_on_the_broken_rule(scenario_id, tmp_path, test_certs):
    handler, phrase = CASES[scenario_id]
    run_breaking(scenario_id, handler, phrase, tmp_path, test_certs)


@pytest.mark.parametrize("scenario_id", sorted(CASES))
def test_the_unbroken_toy_passes(scenario_id, tmp_path, test_certs):
    """The toy the cases start from passes every MIME scenario, so each failure above comes
    from the one thing its case breaks."""
    result = run_scenario(SHIPPED[scenario_id], mime_toy(), tmp_path, test_certs)
    assert result.status is Status.PASSED, (result.message, result.transcript[-20:])
