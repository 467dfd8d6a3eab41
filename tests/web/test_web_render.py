"""The message view and the message builder, in memory: part numbers, choices, sanitising."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage

import pytest

from reference_server.auth import Account
from reference_server.web.compose import ComposeError, Draft, build_message, parse_recipients
from reference_server.web.render import (
    find_part,
    leaves,
    parse_message,
    part_bytes,
    render_message,
    sanitise_html,
)


def _bytes(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=policy.SMTP)


def _nested() -> EmailMessage:
    """mixed( alternative(plain, related(html, image)), pdf, message/rfc822 )"""
    msg = EmailMessage()
    msg["Subject"] = "nested"
    msg.set_content("the plain body")
    msg.add_alternative("<p>the <i>html</i> body</p>", subtype="html")
    html = list(msg.iter_parts())[1]
    assert isinstance(html, EmailMessage)
    html.add_related(b"\x89PNG...", maintype="image", subtype="png", cid="<logo>")
    msg.make_mixed()
    msg.add_attachment(b"%PDF", maintype="application", subtype="pdf", filename="a.pdf")
    inner = EmailMessage()
    inner["Subject"] = "forwarded"
    inner.set_content("inner text")
    msg.add_attachment(inner)
    return msg


def test_parts_are_numbered_as_imap_numbers_them():
    msg = parse_message(_bytes(_nested()))
    numbered = [(n, p.get_content_type()) for n, p in leaves(msg)]
    assert numbered == [
        ("1.1", "text/plain"),
        ("1.2.1", "text/html"),
        ("1.2.2", "image/png"),
        ("2", "application/pdf"),
        ("3", "message/rfc822"),
    ]
    image, forwarded = find_part(msg, "1.2.2"), find_part(msg, "3")
    assert image is not None and forwarded is not None
    assert part_bytes(image) == b"\x89PNG..."
    assert b"Subject: forwarded" in part_bytes(forwarded)
    assert find_part(msg, "4") is None and find_part(msg, "1.2") is None
    single = parse_message(b"Subject: x\r\n\r\nbody\r\n")
    assert [n for n, _ in leaves(single)] == ["1"]


def test_plain_text_is_shown_and_html_on_request():
    data = _bytes(_nested())
    view = render_message(data)
    assert [(b.section, b.kind, b.content) for b in view.blocks] == [
        ("1.1", "text", "the plain body\n")
    ]
    assert view.has_alternative
    assert [(a.section, a.filename) for a in view.attachments] == [
        ("1.2.2", "part-1.2.2.png"),
        ("2", "a.pdf"),
        ("3", "part-3.eml"),
    ]
    html = render_message(data, prefer_html=True)
    assert [(b.section, b.kind) for b in html.blocks] == [("1.2.1", "html")]
    assert "<i>html</i>" in html.blocks[0].content


def test_html_only_mail_is_shown_sanitised():
    msg = EmailMessage()
    msg.set_content("<h1 style='x'>Hi</h1><script>bad()</script>", subtype="html")
    view = render_message(_bytes(msg))
    assert [(b.kind, b.content.strip()) for b in view.blocks] == [("html", "<h1>Hi</h1>")]
    assert not view.has_alternative and view.attachments == []


@pytest.mark.parametrize(
    ("html", "absent"),
    [
        ("<script>alert(1)</script>", "alert"),
        ('<img src=x onerror="alert(1)">', "onerror"),
        ('<a href="javascript:alert(1)">x</a>', "javascript"),
        ('<a href="data:text/html,<script>">x</a>', "data:"),
        ("<svg><script>alert(1)</script></svg>", "alert"),
        ('<div style="background:url(http://t.test)">x</div>', "url("),
        ("<form action=/logout><button>x</button></form>", "<form"),
        ('<meta http-equiv="refresh" content="0;url=http://evil.test">', "refresh"),
        ("<base href='http://evil.test/'>", "<base"),
        ('<img src="http://tracker.test/pixel.gif">', "tracker"),
    ],
)
def test_sanitiser_removes_what_could_run_or_report(html, absent):
    assert absent not in sanitise_html(html)


def test_links_are_kept_without_referrer():
    out = sanitise_html('<a href="https://example.test/x">x</a>')
    assert 'href="https://example.test/x"' in out and "noreferrer" in out


def test_unknown_charsets_and_broken_headers_still_show():
    data = (
        b"From: =?x-unknown?q?abc?= <a@b.test>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"Date: not a date\r\nContent-Type: text/plain; charset=x-klingon\r\n\r\n"
        b"caf\xc3\xa9 \xff\r\n"
    )
    view = render_message(data)
    assert view.subject == "café"
    assert view.date is None
    assert view.blocks[0].content.startswith("café")


def test_filenames_are_made_safe():
    msg = EmailMessage()
    msg.set_content("x")
    msg.add_attachment(b"1", maintype="application", subtype="x-a", filename="../../etc/passwd")
    msg.add_attachment(b"2", maintype="application", subtype="x-b", filename="a\x07b\\c:d.txt")
    view = render_message(_bytes(msg))
    assert [a.filename for a in view.attachments] == ["_.._etc_passwd", "a_b_c_d.txt"]


ALICE = Account(username="alice", password_hash="x", addresses=("alice@example.test",))


def test_messages_are_built_with_crlf_date_and_message_id():
    msg, message_id, rcpts = build_message(
        ALICE,
        Draft(
            to="Bob <bob@example.test>, carol@remote.test",
            bcc="dave@remote.test",
            subject="Grüße",
            body="line 1\nline 2",
        ),
        "mail.example.test",
        1_800_000_000,
    )
    data = msg.as_bytes()
    assert rcpts == ["bob@example.test", "carol@remote.test", "dave@remote.test"]
    assert b"\r\nTo: Bob <bob@example.test>, carol@remote.test\r\n" in data
    assert b"dave@" not in data and b"Bcc" not in data
    assert b"Subject: =?utf-8?" in data
    assert f"Message-ID: {message_id}".encode() in data
    assert message_id.endswith("@mail.example.test>")
    assert b"From: alice@example.test\r\n" in data
    assert b"\n" not in data.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("bob", "is not an address"),
        ("bob@", "is not an address"),
        ("bob@, carol@example.test", "is not an address"),
        ("bøb@example.test", "is not an address"),
        ("a@b.test\nBcc: x@y.test", "line breaks"),
    ],
)
def test_bad_recipients_are_refused(field, message):
    with pytest.raises(ComposeError, match=message):
        parse_recipients(field, "To")


def test_empty_items_are_skipped():
    assert [a.addr_spec for a in parse_recipients(" a@b.test, , c@d.test, ", "To")] == [
        "a@b.test",
        "c@d.test",
    ]
    assert parse_recipients("  ", "Cc") == []


def test_a_sender_needs_an_address():
    nobody = Account(username="nobody", password_hash="x", addresses=())
    with pytest.raises(ComposeError, match="no address to send from"):
        build_message(nobody, Draft(to="bob@example.test"), "h.test", 0)
