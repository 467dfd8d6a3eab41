"""Conversion of hand-built captured streams into scenarios (no sockets)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from replay_streams import convert, dump, steps, stream, written

from conformance.capture import Gap
from conformance.replay.expect import Texts, escape_template, generalise
from conformance.scenario.loader import load_paths
from conformance.scenario.variables import parse_template

SECRET = "s3cret-Passw0rd"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


@given(st.text(alphabet="{}a5._ "))
def test_escape_template_round_trips(text: str) -> None:
    assert parse_template(escape_template(text)).render({}) == text


def test_generalise_keeps_words_and_generalises_volatile_parts() -> None:
    rx = re.compile(
        "^" + generalise("OK [UIDVALIDITY 1700000001] queued as 4F3A2B9C, 3 msgs") + "$"
    )
    assert rx.match("OK [UIDVALIDITY 42] queued as ZZ11, 17 msgs")
    assert not rx.match("NO [UIDVALIDITY 42] queued as ZZ11, 17 msgs")
    date = generalise("Date: Mon, 6 May 2024 10:11:12 +0200")
    assert re.fullmatch(date, "Date: Tue, 17 Dec 2025 00:01:02 -0500")


def test_smtp_auth_plain_becomes_an_auth_step_and_the_secret_is_gone(tmp_path: Path) -> None:
    token = b64(b"\0alice\0" + SECRET.encode())
    s = stream(
        "smtp",
        ("S", b"220 mx ready\r\n"),
        ("C", b"EHLO c\r\n"),
        ("S", b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n"),
        ("C", b"AUTH PLAIN " + token + b"\r\n"),
        ("S", b"235 2.7.0 ok\r\n"),
        ("C", b"MAIL FROM:<alice@old.example>\r\n"),
        ("S", b"250 ok\r\n"),
        ("C", b"QUIT\r\n"),
        ("S", b"221 bye\r\n"),
        port=587,
    )
    files = written(s, tmp_path, account="bob")
    text = b"".join(files.values())
    assert SECRET.encode() not in text and token not in text
    doc = convert(s, account="bob").document
    assert doc is not None and doc["service"] == "submission"
    auth = doc["steps"][2]
    assert auth["auth"] == {"mechanism": "PLAIN", "account": "bob"}
    assert "frame 7 → 8" in auth["note"] and "re-templated" in auth["note"]
    assert load_paths([tmp_path], accounts={"bob"})


def test_smtp_auth_login_lines_and_a_failed_login(tmp_path: Path) -> None:
    s = stream(
        "smtp",
        ("S", b"220 mx\r\n"),
        ("C", b"AUTH LOGIN\r\n"),
        ("S", b"334 VXNlcm5hbWU6\r\n"),
        ("C", b64(b"alice") + b"\r\n"),
        ("S", b"334 UGFzc3dvcmQ6\r\n"),
        ("C", b64(SECRET.encode()) + b"\r\n"),
        ("S", b"535 5.7.8 no\r\n"),
        ("C", b"AUTH PLAIN\r\n"),
        ("S", b"334 \r\n"),
        ("C", b64(b"\0alice\0" + SECRET.encode()) + b"\r\n"),
        ("S", b"235 ok\r\n"),
    )
    got = steps(s)
    assert got[1]["auth"]["mechanism"] == "LOGIN"
    assert got[1]["auth"]["password"] == "not-the-password-{run}"
    assert got[1]["expect"] == {"code": 535}
    assert got[2]["auth"] == {"mechanism": "PLAIN", "account": "alice", "initial_response": False}
    out = b"".join(written(s, tmp_path).values())
    assert SECRET.encode() not in out and b64(SECRET.encode()) not in out


def test_smtp_data_fixture_is_dot_unstuffed_and_rewritten(tmp_path: Path) -> None:
    body = b"From: a@old.example\r\nSubject: {x}\r\n\r\n..dot\r\nline\r\n.\r\n"
    s = stream(
        "smtp",
        ("S", b"220 mx\r\n"),
        ("C", b"MAIL FROM:<a@OLD.example>\r\n"),
        ("S", b"250 ok\r\n"),
        ("C", b"DATA\r\n"),
        ("S", b"354 go\r\n"),
        ("C", body),
        ("S", b"250 2.0.0 queued as ABC123\r\n"),
    )
    files = written(s, tmp_path, rewrites=(("old.example", "{domain}"),), match="text")
    fixture = files["sample-session-0-message-1.eml"]
    assert fixture == b"From: a@{domain}\r\nSubject: {{x}}\r\n\r\n.dot\r\nline\r\n"
    text = files["sample-session-0.yaml"].decode()
    assert "MAIL FROM:<a@{domain}>" in text
    assert "data:\n    file: sample-session-0-message-1.eml" in text
    (sc,) = load_paths([tmp_path / "sample-session-0.yaml"])
    data_step = sc.steps[3]
    rendered = data_step.action.body.render({"domain": "new.test"})  # type: ignore[union-attr]
    assert rendered.startswith("From: a@new.test\r\nSubject: {x}")
    assert re.search(data_step.expect.text.render({}), "2.0.0 queued as Q9")  # type: ignore[union-attr]


def test_smtp_bare_lf_message_is_sent_raw() -> None:
    s = stream(
        "smtp",
        ("S", b"220 mx\r\n"),
        ("C", b"DATA\r\n"),
        ("S", b"354 go\r\n"),
        ("C", b"a\nb\r\n.\r\n"),
        ("S", b"250 ok\r\n"),
    )
    got = steps(s)
    assert got[2]["send_raw"] == "a\\nb\\r\\n.\\r\\n"


def test_pop3_user_pass_apop_and_strictness() -> None:
    s = stream(
        "pop3",
        ("S", b"+OK ready <1.2@x>\r\n"),
        ("C", b"APOP alice 0123456789abcdef0123456789abcdef\r\n"),
        ("S", b"-ERR no\r\n"),
        ("C", b"USER alice\r\n"),
        ("S", b"+OK\r\n"),
        ("C", b"PASS " + SECRET.encode() + b"\r\n"),
        ("S", b"+OK 2 messages\r\n"),
        ("C", b"LIST\r\n"),
        ("S", b"+OK\r\n1 120\r\n2 200\r\n.\r\n"),
        ("C", b"RETR 1\r\n"),
        ("S", b"+OK 120 octets\r\n..x\r\n.\r\n"),
    )
    got = steps(s, match="exact")
    assert got[1]["expect"] == {"status": "err"} and got[1]["auth"]["mechanism"] == "native"
    assert got[2]["auth"] == {"mechanism": "native", "account": "alice"}
    assert got[3]["expect"]["body"] == ["^1 120$", "^2 200$"]
    assert got[4]["expect"]["body"] == [r"^\.x$"]
    text = steps(s, match="text")
    assert "body" not in text[4]["expect"] and text[4]["expect"]["text"] == r"^\d+ octets$"
    assert SECRET not in dump(got)


def test_imap_literals_login_authenticate_idle_and_pipelining() -> None:
    s = stream(
        "imap",
        ("S", b"* OK ready\r\n"),
        ("C", b"a1 LOGIN {5}\r\n"),
        ("S", b"+ go\r\n"),
        ("C", b"alice {15}\r\n"),
        ("S", b"+ go\r\n"),
        ("C", SECRET.encode() + b"\r\n"),
        ("S", b"a1 OK done\r\n"),
        ("C", b"a2 APPEND INBOX {3+}\r\nabc\r\n"),
        ("S", b"* 1 EXISTS\r\na2 OK [APPENDUID 7 1] done\r\n"),
        ("C", b"a3 NOOP\r\na4 NOOP\r\n"),
        ("S", b"a4 OK second\r\na3 OK first\r\n"),
        ("C", b"a5 IDLE\r\n"),
        ("S", b"+ idling\r\n* 2 EXISTS\r\n"),
        ("C", b"DONE\r\n"),
        ("S", b"a5 OK done\r\n"),
        ("C", b"a6 AUTHENTICATE PLAIN\r\n"),
        ("S", b"+ \r\n"),
        ("C", b64(b"\0alice\0" + SECRET.encode()) + b"\r\n"),
        ("S", b"a6 NO already\r\n"),
    )
    got = steps(s, match="text")
    assert got[1]["auth"] == {"mechanism": "native", "account": "alice"}
    assert "frames 5-10" in got[1]["note"]
    assert got[2]["send_raw"] == "a2 APPEND INBOX {3+}\\r\\nabc\\r\\n"
    assert got[2]["expect"]["code"] == "APPENDUID"
    assert got[2]["expect"]["untagged"] == [r"^\* \d+ EXISTS$"]
    assert got[3]["expect"]["text"] == "^first$" and got[4]["expect"]["text"] == "^second$"
    assert got[5] | {"note": ""} == {
        "send": "a5 IDLE",
        "expect": {"continuation": True, "text": "^idling$"},
        "note": "",
    }
    assert got[6]["send"] == "DONE" and got[6]["expect"]["untagged"] == [r"^\* \d+ EXISTS$"]
    assert got[7]["auth"]["mechanism"] == "PLAIN" and got[7]["expect"] == {"tagged": "NO"}
    assert SECRET not in dump(got)


def test_imap_sync_literal_in_an_ordinary_command() -> None:
    s = stream(
        "imap",
        ("S", b"* OK ready\r\n"),
        ("C", b"a1 APPEND INBOX {3}\r\n"),
        ("S", b"+ go\r\n"),
        ("C", b"abc\r\n"),
        ("S", b"a1 OK done\r\n"),
    )
    got = steps(s)
    assert got[1]["send"] == "a1 APPEND INBOX {3}" and got[1]["expect"] == {"continuation": True}
    assert got[2]["send"] == "abc" and got[2]["expect"] == {"tagged": "OK"}  # same octets


def test_starttls_cut_and_retemplating() -> None:
    s = stream(
        "imap",
        ("S", b"* OK ready\r\n"),
        ("C", b"a1 STARTTLS\r\n"),
        ("S", b"a1 OK go\r\n"),
        ("C", b"\x16\x03\x01\x00\x05hello"),
        ("S", b"\x16\x03\x03\x00\x05world"),
    )
    got = steps(s, account="bob")
    assert got[1]["starttls"] is True
    assert got[2]["auth"] == {"mechanism": "native", "account": "bob"}
    assert all("re-templated" in g["note"] for g in got[2:])
    smtp = stream(
        "smtp",
        ("S", b"220 mx\r\n"),
        ("C", b"EHLO me.example\r\n"),
        ("S", b"250 mx\r\n"),
        ("C", b"STARTTLS\r\n"),
        ("S", b"220 go\r\n"),
    )
    mx = steps(smtp)
    assert [next(iter(g)) for g in mx] == ["expect", "send", "starttls", "send", "send"]
    assert mx[3]["send"] == "EHLO me.example"
    sub = steps(smtp, services={25: "submission"})
    assert "auth" in sub[4]


def test_skipped_streams_and_incomplete_ones() -> None:
    tls = stream("smtp", ("C", b"\x16\x03\x01\x00\x05"), port=465)
    assert "implicit TLS" in (convert(tls).skipped or "")
    other = stream("smtp", ("S", b"HTTP/1.1 200\r\n"))
    other.protocol = None
    assert "not recognised" in (convert(other).skipped or "")
    gap = [Gap("client", frame=7, missing=10, before_chunk=3)]
    holed = stream(
        "smtp",
        ("S", b"220 mx\r\n"),
        ("C", b"NOOP\r\n"),
        ("S", b"250 ok\r\n"),
        ("C", b"QUIT\r\n"),
        ("S", b"221 bye\r\n"),
        gaps=gap,
    )
    assert "incomplete" in (convert(holed).skipped or "")
    conv = convert(holed, include_incomplete=True)
    assert conv.document is not None and "missed 10 byte(s)" in conv.document["description"]
    assert len(conv.document["steps"]) == 2  # up to the gap


def test_keep_timing_adds_sleeps() -> None:
    s = stream(
        "pop3",
        ("S", b"+OK\r\n"),
        ("C", b"NOOP\r\n"),
        ("S", b"+OK\r\n"),
        pause=0.8,
    )
    got = steps(s, keep_timing=True)
    assert got[1]["sleep"] == 0.8
    assert [next(iter(g)) for g in steps(s)] == ["expect", "send"]
    conv = convert(s, keep_timing=True)
    assert conv.document is not None and conv.document["timeout"] == 61


def test_secret_masked_where_else_it_appears() -> None:
    texts = Texts([("Bob", "{account.bob.address}")], [SECRET])
    assert texts.template(f"x {SECRET} bob {{y}}") == "x <redacted> {account.bob.address} {{y}}"
    assert texts.regex("to bob.", general=False) == r"to {account.bob.address}\."
