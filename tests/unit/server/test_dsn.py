"""build_dsn: RFC 3464 reports that parse, carry the right fields, and cannot be subverted."""

from __future__ import annotations

import email
import email.message
import email.policy
import re
import secrets
from collections.abc import Iterator
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

import pytest

from reference_server.outbound.dsn import MAX_DIAGNOSTIC_OCTETS, RecipientReport, build_dsn

NOW = 1_700_000_000.0
ARRIVAL = NOW - 3600
ORIGINAL = (
    b"Received: from client.example.org by mx.example.org; Tue, 14 Nov 2023 21:13:20 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>, carol@example.net\r\n"
    b"Subject: quarterly figures\r\n"
    b"Message-ID: <orig-1@example.org>\r\n"
    b"\r\n"
    b"SECRET BODY LINE ONE\r\n"
    b"SECRET BODY LINE TWO\r\n"
)
POLICIES = pytest.mark.parametrize(
    "policy", [email.policy.default, email.policy.compat32], ids=["default", "compat32"]
)

BOB = RecipientReport(
    address="bob@example.net",
    action="failed",
    status="5.1.1",
    diagnostic="550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown",
    remote_mta="mx1.example.net",
    last_attempt=NOW - 60,
)
CAROL = RecipientReport(
    address="carol@example.net",
    action="failed",
    status="5.2.2",
    diagnostic="552 5.2.2 mailbox full",
    remote_mta="mx2.example.net",
    last_attempt=NOW - 30,
)
DAVE = RecipientReport(address="dave@example.com", action="failed", status="5.4.4")


def make(**overrides: Any) -> bytes:
    """A DSN from defaults, with some arguments replaced."""
    args: dict[str, Any] = {
        "reporting_mta": "mail.example.org",
        "original_sender": "alice@example.org",
        "original": ORIGINAL,
        "queue_id": "018bcfe7-1f2-3",
        "arrival": ARRIVAL,
        "recipients": [BOB, CAROL, DAVE],
        "now": NOW,
    }
    args.update(overrides)
    return build_dsn(**args)


def delayed(address: str = "bob@example.net", **overrides: Any) -> RecipientReport:
    """A "delayed" report for ``address``."""
    fields: dict[str, Any] = {
        "address": address,
        "action": "delayed",
        "status": "4.4.1",
        "diagnostic": "451 4.4.1 try again later",
        "remote_mta": "mx1.example.net",
        "last_attempt": NOW - 10,
        "will_retry_until": ARRIVAL + 5 * 86400,
    }
    fields.update(overrides)
    return RecipientReport(**fields)


def parse(data: bytes, policy: Any = email.policy.default) -> email.message.Message:
    return email.message_from_bytes(data, policy=policy)


def subparts(msg: email.message.Message) -> list[email.message.Message]:
    """The parts of a multipart (or the blocks of a delivery-status), checked to be messages."""
    payload = msg.get_payload()
    assert isinstance(payload, list)
    parts = [p for p in payload if isinstance(p, email.message.Message)]
    assert len(parts) == len(payload)
    return parts


def raw_parts(data: bytes) -> list[tuple[email.message.Message, bytes]]:
    """The top-level parts as (header fields, raw body), split by hand at the boundary."""
    boundary = parse(data).get_param("boundary")
    assert isinstance(boundary, str)
    delimiter = b"\r\n--" + boundary.encode()
    pieces = data.split(delimiter)
    assert pieces[-1] == b"--\r\n", "the closing delimiter ends the message"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n")
        head, sep, body = piece[2:].partition(b"\r\n\r\n")
        assert sep
        parts.append((email.message_from_bytes(head + b"\r\n\r\n"), body))
    return parts


def blocks(status_body: bytes) -> list[dict[str, str]]:
    """The field blocks of a (global-)delivery-status body, as UTF-8 text, unfolded."""
    out = []
    for block in status_body.decode("utf-8").split("\r\n\r\n"):
        if not block.strip():
            continue
        msg = email.message_from_string(
            block.rstrip("\r\n") + "\r\n\r\n", policy=email.policy.default
        )
        assert not msg.get_payload(), f"a block has no body: {block!r}"
        keys = [k.lower() for k in msg]
        assert len(keys) == len(set(keys)), f"a field repeats: {keys}"
        out.append({k: str(v) for k, v in msg.items()})
    return out


def unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def all_lines(data: bytes) -> Iterator[bytes]:
    assert data.endswith(b"\r\n")
    yield from data[:-2].split(b"\r\n")


@POLICIES
def test_failed_dsn_is_a_three_part_multipart_report(policy: Any) -> None:
    data = make()
    msg = parse(data, policy)
    assert b"\r\nTo: <alice@example.org>\r\n" in data.split(b"\r\n\r\n")[0]

    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = subparts(msg)
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert parts[0].get_content_charset() == "utf-8"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mail.example.org>"
    assert str(msg["To"]).strip("<>") == "alice@example.org"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert parsedate_to_datetime(str(msg["Date"])).timestamp() == NOW
    assert re.fullmatch(r"<[^<>@\s]+@mail\.example\.org>", str(msg["Message-ID"]))
    assert "018bcfe7-1f2-3" in str(msg["Message-ID"])


@POLICIES
def test_delivery_status_fields_for_several_recipients(policy: Any) -> None:
    blocks_ = subparts(subparts(parse(make(), policy))[1])
    fields = [{k: unfold(str(v)) for k, v in block.items()} for block in blocks_]

    assert fields[0] == {
        "Reporting-MTA": "dns; mail.example.org",
        "Arrival-Date": formatdate(ARRIVAL),
    }
    assert fields[1] == {
        "Final-Recipient": "rfc822; bob@example.net",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx1.example.net",
        "Diagnostic-Code": "smtp; " + str(BOB.diagnostic),
        "Last-Attempt-Date": formatdate(NOW - 60),
    }
    assert fields[2]["Final-Recipient"] == "rfc822; carol@example.net"
    assert fields[2]["Status"] == "5.2.2"
    assert fields[2]["Remote-MTA"] == "dns; mx2.example.net"
    assert fields[2]["Diagnostic-Code"] == "smtp; 552 5.2.2 mailbox full"
    # what is not known is left out rather than made up
    assert fields[3] == {
        "Final-Recipient": "rfc822; dave@example.com",
        "Action": "failed",
        "Status": "5.4.4",
    }
    assert len(fields) == 4


def test_human_part_names_each_recipient_and_what_the_server_said() -> None:
    text = subparts(parse(make()))[0]
    assert isinstance(text, email.message.EmailMessage)
    content = " ".join(text.get_content().split())

    assert "mail.example.org" in content
    for report in (BOB, CAROL, DAVE):
        assert f"<{report.address}>" in content
        assert report.status in content
    assert str(BOB.diagnostic) in content
    assert str(CAROL.diagnostic) in content


@POLICIES
def test_original_header_section_is_returned_without_the_body(policy: Any) -> None:
    data = make()
    part = subparts(parse(data, policy))[2]

    returned = part.get_payload(decode=True)
    assert returned == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert b"SECRET BODY" not in data


def test_delayed_dsn() -> None:
    until = ARRIVAL + 5 * 86400
    data = make(recipients=[delayed(), delayed("carol@example.net", will_retry_until=None)])
    msg = parse(data)

    assert msg["Subject"] == "Delayed Mail (still being retried)"
    parts = raw_parts(data)
    fields = blocks(parts[1][1])
    assert fields[1]["Action"] == "delayed"
    assert fields[1]["Status"] == "4.4.1"
    assert fields[1]["Will-Retry-Until"] == formatdate(until)
    assert fields[1]["Last-Attempt-Date"] == formatdate(NOW - 10)
    assert fields[2]["Action"] == "delayed"
    assert "Will-Retry-Until" not in fields[2]
    text = " ".join(parts[0][1].decode().split())
    assert f"keep trying until {formatdate(until)}" in text


def test_will_retry_until_is_only_for_delayed() -> None:
    report = RecipientReport(
        address="bob@example.net", action="failed", status="4.4.7", will_retry_until=NOW
    )
    fields = blocks(raw_parts(make(recipients=[report]))[1][1])
    assert "Will-Retry-Until" not in fields[1]
    assert fields[1]["Status"] == "4.4.7"


@pytest.mark.parametrize(
    "hostile",
    [
        "550 no such user\r\nAction: delivered\r\nX-Injected: yes",
        "550 no such user\r\n\r\nFinal-Recipient: rfc822; mallory@example.net",
        "550 no such user\nX-Injected: yes\rX-Injected2: yes",
        "550 no such user\x00\x0bX-Injected: yes\u2028X-Injected2: yes\x85",
    ],
    ids=["crlf", "blank-line", "bare-lf-cr", "other-separators"],
)
def test_line_breaks_in_a_diagnostic_do_not_add_fields(hostile: str) -> None:
    report = RecipientReport(
        address="bob@example.net",
        action="failed",
        status="5.1.1",
        diagnostic=hostile,
        remote_mta="evil.example\r\nX-Injected: yes",
    )
    data = make(recipients=[report])

    for policy in (email.policy.default, email.policy.compat32):
        blocks_ = subparts(subparts(parse(data, policy))[1])
        assert len(blocks_) == 2
        assert sorted(blocks_[1].keys()) == sorted(
            ["Final-Recipient", "Action", "Status", "Remote-MTA", "Diagnostic-Code"]
        )
        assert blocks_[1]["Action"] == "failed"
    fields = blocks(raw_parts(data)[1][1])
    # every control or line separator became a space, runs of spaces one space
    expected = " ".join(re.sub(r"[\x00-\x1f\x85\u2028]", " ", hostile).split())
    assert fields[1]["Diagnostic-Code"] == "smtp; " + expected
    assert b"\r\nX-Injected" not in data
    assert b"\r\nFinal-Recipient: rfc822; mallory" not in data


def test_a_boundary_planted_in_the_original_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    planted = "ab" * 16
    candidates = iter([planted, "cd" * 16])

    def token_hex(nbytes: int | None = None) -> str:
        return next(candidates) if nbytes == 16 else "ee" * (nbytes or 32)

    monkeypatch.setattr(secrets, "token_hex", token_hex)
    boundary = f"=_dsn_{planted}"
    original = (
        f"Subject: trap\r\nX-Trap: --{boundary}\r\n--{boundary}\r\n"
        f"Content-Type: text/plain\r\n\r\n--{boundary}--\r\n"
    ).encode()
    data = make(original=original)

    msg = parse(data)
    assert msg.get_param("boundary") == "=_dsn_" + "cd" * 16
    parts = subparts(msg)
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    returned = parts[2].get_payload(decode=True)
    assert returned == original.split(b"\r\n\r\n")[0] + b"\r\n"
    assert len(raw_parts(data)) == 3


def test_mime_lookalikes_in_the_original_do_not_break_the_structure() -> None:
    original = (
        b'Content-Type: multipart/mixed; boundary="x"\r\n'
        b"Subject: --x\r\n--x--\r\n--\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n"
    )
    msg = parse(make(original=original))
    parts = subparts(msg)
    assert len(parts) == 3
    assert parts[2].get_payload(decode=True) == original.split(b"\r\n\r\n")[0] + b"\r\n"


def test_non_ascii_original_headers_are_returned_as_global_headers() -> None:
    header = "From: Jürgen <juergen@example.org>\r\nSubject: Grüße, 你好\r\n".encode()
    data = make(original=header + b"\r\nbody\r\n")

    msg = parse(data)
    assert msg.get_param("report-type") == "delivery-status"
    parts = raw_parts(data)
    assert [p.get_content_type() for p, _ in parts] == [
        "text/plain",
        "message/delivery-status",
        "message/global-headers",
    ]
    head, body = parts[2]
    assert head["Content-Transfer-Encoding"] == "8bit"
    assert head.get_param("charset") is None  # RFC 6533 §6.3: MUST NOT have one
    assert body == header
    assert msg["Content-Transfer-Encoding"] == "8bit"
    # the addresses are ASCII, so the machine-readable part stays ASCII
    assert parts[0][1].isascii()
    assert parts[1][1].isascii()


def test_utf8_recipient_uses_global_delivery_status() -> None:
    jose = RecipientReport(
        address="josé@example.net",
        action="failed",
        status="5.1.1",
        diagnostic="550 5.1.1 usuário desconhecido",
        remote_mta="mx.example.net",
    )
    data = make(recipients=[jose, DAVE])

    msg = parse(data)
    assert msg.get_param("report-type") == "global-delivery-status"
    assert msg["Content-Transfer-Encoding"] == "8bit"
    parts = raw_parts(data)
    assert [p.get_content_type() for p, _ in parts] == [
        "text/plain",
        "message/global-delivery-status",
        "text/rfc822-headers",
    ]
    assert parts[1][0]["Content-Transfer-Encoding"] == "8bit"
    fields = blocks(parts[1][1])
    assert fields[1]["Final-Recipient"] == "utf-8; josé@example.net"
    assert fields[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 usuário desconhecido"
    assert fields[2]["Final-Recipient"] == "rfc822; dave@example.com"
    assert "<josé@example.net>" in parts[0][1].decode("utf-8")


def test_utf8_sender_uses_global_delivery_status_and_a_utf8_to() -> None:
    data = make(original_sender="álvaro@exemplo.br", recipients=[BOB])

    head = data.split(b"\r\n\r\n")[0]
    assert "\r\nTo: <álvaro@exemplo.br>\r\n".encode() in head
    parts = raw_parts(data)
    assert parts[1][0].get_content_type() == "message/global-delivery-status"
    assert blocks(parts[1][1])[1]["Final-Recipient"] == "rfc822; bob@example.net"


def test_an_ascii_dsn_stays_ascii_even_with_a_non_ascii_diagnostic() -> None:
    report = RecipientReport(
        address="bob@example.net",
        action="failed",
        status="5.1.1",
        diagnostic="550 5.1.1 Benutzer unbekannt \u2013 Grüße",
        remote_mta="mx.bücher.example",
    )
    data = make(recipients=[report])

    assert data.isascii()
    fields = blocks(raw_parts(data)[1][1])
    assert (
        fields[1]["Diagnostic-Code"]
        == r"smtp; 550 5.1.1 Benutzer unbekannt \x{2013} Gr\x{FC}\x{DF}e"
    )
    assert fields[1]["Remote-MTA"] == r"dns; mx.b\x{FC}cher.example"


def test_header_bytes_that_are_not_utf8_go_back_quoted_printable() -> None:
    header = b"Subject: caf\xe9\r\nX-Nul: a\x00b\r\nX-Long: " + b"y" * 1500 + b"\r\n"
    data = make(original=header + b"\r\nbody\r\n")

    assert data.isascii()
    part = subparts(parse(data))[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert part.get_payload(decode=True) == header


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        (b"Subject: no body\r\nX-A: 1\r\n", b"Subject: no body\r\nX-A: 1\r\n"),
        (b"Subject: no newline", b"Subject: no newline\r\n"),
        (b"Subject: bare lf\nX-A: 1\n\nbody\n", b"Subject: bare lf\r\nX-A: 1\r\n"),
        (b"Subject: folded\r\n  continued\r\n\r\nbody", b"Subject: folded\r\n  continued\r\n"),
        (b"\r\nonly a body\r\n", b""),
    ],
    ids=["no-blank-line", "no-line-end", "bare-lf", "folded", "no-headers"],
)
def test_header_section_boundaries(original: bytes, expected: bytes) -> None:
    part = subparts(parse(make(original=original)))[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert (part.get_payload(decode=True) or b"") == expected


def test_long_diagnostic_is_folded_and_unfolds_to_the_original() -> None:
    diagnostic = "550-5.7.1 " + " ".join(f"word{i}" for i in range(150))
    report = RecipientReport(
        address="bob@example.net", action="failed", status="5.7.1", diagnostic=diagnostic
    )
    data = make(recipients=[report])

    status = raw_parts(data)[1][1].decode()
    field = status[status.index("Diagnostic-Code:") :].split("\r\nLast", 1)[0].rstrip("\r\n")
    assert field.count("\r\n ") > 5
    assert all(len(line) <= 78 for line in field.split("\r\n"))
    assert blocks(status.encode())[1]["Diagnostic-Code"] == "smtp; " + diagnostic


def test_huge_diagnostic_is_cut() -> None:
    report = RecipientReport(
        address="bob@example.net", action="failed", status="5.7.1", diagnostic="550 " + "z " * 5000
    )
    fields = blocks(raw_parts(make(recipients=[report]))[1][1])
    value = fields[1]["Diagnostic-Code"]
    assert value.endswith(" ...")
    assert len(value.encode()) <= len("smtp; ") + MAX_DIAGNOSTIC_OCTETS


@pytest.mark.parametrize(
    "recipients",
    [
        [BOB, CAROL, DAVE],
        [
            RecipientReport(
                address="b@x.example", action="failed", status="5.0.0", diagnostic="5" * 3000
            )
        ],
        [
            RecipientReport(
                address="b@x.example", action="failed", status="5.0.0", diagnostic="é" * 1500
            )
        ],
        [RecipientReport(address="ü" * 600 + "@x.example", action="failed", status="5.0.0")],
        [delayed(diagnostic="451 " + "x" * 2000 + " " + "y " * 800)],
    ],
    ids=["plain", "long-word", "long-utf8-word", "long-utf8-address", "long-mixed"],
)
def test_every_line_ends_in_crlf_and_is_at_most_998_octets(
    recipients: list[RecipientReport],
) -> None:
    original = b"Subject: s\r\nX-Long: " + b"q" * 2000 + b"\r\n\r\nbody"
    data = make(recipients=recipients, original=original)

    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"\n" not in data.replace(b"\r\n", b"")
    for line in all_lines(data):
        assert len(line) <= 998
    msg = parse(data)
    assert len(subparts(msg)) == 3
    assert msg.defects == []


def test_each_dsn_gets_its_own_message_id_and_boundary() -> None:
    first, second = parse(make()), parse(make())
    assert first["Message-ID"] != second["Message-ID"]
    assert first.get_param("boundary") != second.get_param("boundary")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"recipients": []}, "at least one recipient"),
        ({"recipients": [BOB, delayed()]}, "same action"),
        ({"original_sender": ""}, "null reverse-path"),
        ({"reporting_mta": "mail.example.org\r\nX-Injected: yes"}, "not a host name"),
        ({"reporting_mta": ""}, "not a host name"),
        ({"recipients": [delayed(status="2.0.0")]}, "RFC 3463"),
        ({"recipients": [delayed(status="5.1")]}, "RFC 3463"),
        ({"recipients": [delayed(status="5.1.1 extra")]}, "RFC 3463"),
    ],
)
def test_bad_arguments_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**overrides)
