"""The ``message`` expectation (docs/scenario-format.md, "Messages retrieved"): a POP3 body
or an IMAP ``BODY[]`` must be the message sent, octet for octet, below any whole header
fields the server put on top (RFC 5321 §4.4 trace fields). Each case passes and fails
against a scripted server; the comparison itself is tested directly too."""

from __future__ import annotations

from textwrap import dedent

import pytest
from engine_helpers import Script, assert_failed, assert_passed, run_scenario

from conformance.scenario.loader import LoadErrors, load_paths
from conformance.scenario.match import message_octets, same_message
from conformance.scenario.runner import dot_stuff

SENT = b"Subject: probe\r\nX-Note: a=b\r\n\r\n.dot line\r\nlast\r\n"
TRACE = b"Received: from harness.example ([127.0.0.1])\r\n\tby mx.example.test; Mon, 1 Jan 2024\r\n"


# -- the comparison --------------------------------------------------------------------------


def test_message_octets_makes_every_line_end_crlf():
    assert message_octets("a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert message_octets("a\n") == b"a\r\n"
    assert message_octets("") == b""
    assert message_octets("caf\u00e9\n") == "caf\u00e9\r\n".encode()


def test_dot_stuff_is_message_octets_stuffed():
    text = "Subject: x\n\n.one\n..two\nthree"
    assert dot_stuff(text) == b"Subject: x\r\n\r\n..one\r\n...two\r\nthree\r\n.\r\n"
    assert dot_stuff(text)[:-3] == message_octets(text).replace(b"\r\n.", b"\r\n..")


@pytest.mark.parametrize(
    "got",
    [
        SENT,
        TRACE + SENT,
        b"Return-Path: <a@b.example>\r\n" + TRACE + SENT,
        b"Delivered-To: bob@example.test\r\nDKIM-Signature: v=1;\r\n b=xyz\r\n" + SENT,
        b"Received : obsolete spacing\r\n" + SENT,
    ],
    ids=["same", "received", "return-path-and-received", "other-fields", "obs-colon"],
)
def test_same_message_allows_whole_fields_on_top(got):
    assert same_message(got, SENT) is None


@pytest.mark.parametrize(
    ("got", "phrase"),
    [
        (
            SENT.replace(b".dot", b"dot"),
            "the message differs from the message sent at octet 31 (line 4): expected b'.dot line",
        ),
        (
            TRACE + SENT.replace(b"a=b", b"a=3Db"),
            "differs from the message sent below 1 added header field(s) at octet 26 (line 2)",
        ),
        (SENT[:-2], "it ends at octet 46 (line 5), before b'\\r\\n'"),
        (SENT + b"footer\r\n", "it goes on after the 48 octets sent with b'footer\\r\\n'"),
        (b"not a field\r\n" + SENT, "differs from the message sent at octet 0 (line 1)"),
        (SENT.replace(b"\r\n", b"\n"), "at octet 14 (line 1): expected b'\\r\\n"),
    ],
    ids=["changed", "changed-below-trace", "truncated", "extended", "junk-on-top", "bare-lf"],
)
def test_same_message_names_the_first_difference(got, phrase):
    why = same_message(got, SENT)
    assert why is not None and phrase in why, why


def test_a_field_added_lower_down_is_a_difference():
    got = SENT.replace(b"X-Note", b"X-Added: 1\r\nX-Note")
    why = same_message(got, SENT)
    assert why is not None and "at octet 18 (line 2)" in why, why


# -- POP3 --------------------------------------------------------------------------------------


def _retr(body: bytes, status: str = "+OK message follows") -> bytes:
    stuffed = b"".join(
        (b"." + line if line.startswith(b".") else line) + b"\r\n"
        for line in body.split(b"\r\n")[:-1]
    )
    return status.encode() + b"\r\n" + stuffed + b".\r\n"


POP3_STEP = """\
- send: RETR 1
  expect:
    status: ok
    message: |
      Subject: probe
      X-Note: a=b

      .dot line
      last
"""


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        (SENT, None),
        (TRACE + SENT, None),
        (SENT.replace(b"last", b"LAST"), "differs from the message sent at octet 42 (line 5)"),
        (SENT + b"-- \r\nfooter\r\n", "it goes on after the 48 octets sent"),
    ],
    ids=["same-pass", "trace-pass", "changed-fail", "footer-fail"],
)
def test_pop3_retr_message(tmp_path, body, phrase):
    script = Script("+OK ready", ("RETR 1", _retr(body)))
    result = run_scenario(tmp_path, script, POP3_STEP, protocol="pop3")
    if phrase is None:
        assert_passed(result)
    else:
        assert_failed(result, phrase, step=0)


def test_pop3_single_line_answer_fails(tmp_path):
    script = Script("+OK ready", ("RETR 1", "-ERR no such message"))
    result = run_scenario(tmp_path, script, POP3_STEP, protocol="pop3")
    assert_failed(result, "expected a multiline response carrying the message", "-ERR no such")


def test_pop3_message_from_a_file_with_variables(tmp_path):
    (tmp_path / "m.eml").write_bytes(b"To: {account.alice.address}\n\nhello\n")
    sent = b"To: alice@example.test\r\n\r\nhello\r\n"
    script = Script("+OK ready", ("RETR 1", _retr(TRACE + sent)))
    steps = "- send: RETR 1\n  expect: {message: {file: m.eml}}\n"
    assert_passed(run_scenario(tmp_path, script, steps, protocol="pop3"))


# -- IMAP --------------------------------------------------------------------------------------

IMAP_GREETING = "* OK [CAPABILITY IMAP4rev1] ready"
IMAP_STEP = """\
- send: a1 FETCH 7 (UID BODY.PEEK[])
  expect:
    tagged: OK
    message: "Subject: probe\\nX-Note: a=b\\n\\n.dot line\\nlast\\n"
"""


def _fetch(*items: bytes) -> bytes:
    return b"* 7 FETCH (" + b" ".join(items) + b")\r\na1 OK FETCH completed\r\n"


def _literal(name: bytes, data: bytes) -> bytes:
    return name + b" {" + str(len(data)).encode() + b"}\r\n" + data


@pytest.mark.parametrize(
    ("reply", "phrase"),
    [
        (_fetch(b"UID 9", _literal(b"BODY[]", TRACE + SENT)), None),
        (_fetch(_literal(b"RFC822", SENT)), None),
        (
            _fetch(b"UID 9", _literal(b"BODY[]", SENT.replace(b"a=b", b"a=c"))),
            "differs from the message sent at octet 26 (line 2): expected b'b\\r\\n",
        ),
        (
            _fetch(b"UID 9", _literal(b"BODY[TEXT]", SENT)),
            "expected a FETCH response carrying BODY[] (the whole message), got: * 7 FETCH",
        ),
        (_fetch(b"UID 9", b"BODY[] NIL"), "expected a FETCH response carrying BODY[]"),
        (b"a1 OK nothing\r\n", "expected a FETCH response carrying BODY[] (the whole message)"),
    ],
    ids=["body-pass", "rfc822-pass", "changed-fail", "wrong-section-fail", "nil-fail", "none-fail"],
)
def test_imap_fetch_body_message(tmp_path, reply, phrase):
    script = Script(IMAP_GREETING, ("a1 FETCH 7 (UID BODY.PEEK[])", reply))
    result = run_scenario(tmp_path, script, IMAP_STEP, protocol="imap")
    if phrase is None:
        assert_passed(result)
    else:
        assert_failed(result, phrase, step=0)


def test_imap_any_of_several_fetch_responses_may_carry_it(tmp_path):
    reply = (
        _literal(b"* 6 FETCH (BODY[]", b"Subject: other\r\n\r\nx\r\n")
        + b")\r\n"
        + _fetch(_literal(b"BODY[]", SENT))
    )
    script = Script(IMAP_GREETING, ("a1 FETCH 7 (UID BODY.PEEK[])", reply))
    assert_passed(run_scenario(tmp_path, script, IMAP_STEP, protocol="imap"))


# -- loading -----------------------------------------------------------------------------------


def _load(tmp_path, body: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(dedent(body), encoding="utf-8")
    load_paths([path])


def test_message_on_an_smtp_connection_is_a_load_error(tmp_path):
    with pytest.raises(LoadErrors) as err:
        _load(
            tmp_path,
            """\
            id: x
            protocol: smtp
            title: t
            steps:
              - send: NOOP
                expect: {message: hi}
            """,
        )
    assert "'message' is an expectation for pop3/imap" in str(err.value)


def test_missing_message_file_is_a_load_error(tmp_path):
    with pytest.raises(LoadErrors) as err:
        _load(
            tmp_path,
            """\
            id: x
            protocol: pop3
            title: t
            steps:
              - send: RETR 1
                expect: {message: {file: nowhere.eml}}
            """,
        )
    assert "cannot read 'nowhere.eml' (relative to this file)" in str(err.value)


def test_message_of_another_type_is_a_load_error(tmp_path):
    with pytest.raises(LoadErrors) as err:
        _load(
            tmp_path,
            """\
            id: x
            protocol: imap
            title: t
            steps:
              - send: a1 FETCH 1 BODY[]
                expect: {message: [a, b]}
            """,
        )
    assert "expected a message as a string, or {file: PATH}" in str(err.value)
