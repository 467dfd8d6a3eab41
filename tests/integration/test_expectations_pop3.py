"""POP3 expectation keys (docs/scenario-format.md, RFC 1939 §3, RFC 2449 §8), each passing and
failing against a scripted server; the response shape is inferred from the command sent."""

from __future__ import annotations

import pytest
from engine_helpers import (
    Script,
    assert_failed,
    assert_malformed,
    assert_passed,
    expect_yaml,
    run_scenario,
)

GREETING = "+OK POP3 server ready"
MESSAGE = "+OK 52 octets\nSubject: hi\n\nHello\n."
LISTING = "+OK 2 messages\n1 120\n2 200\n."
STUFFED = "+OK 40 octets\nbefore\n..hidden\n...two\n..\n."  # "..": a stuffed lone "."
NOOP_AFTER = ("NOOP", "+OK after")

# (command, server reply, expect mapping, None if the step passes else a phrase of the failure)
CASES = {
    # status
    "status-ok-pass": ("NOOP", "+OK", "{status: ok}", None),
    "status-ok-fail": ("NOOP", "-ERR not now", "{status: ok}", "expected +OK, got '-ERR not now'"),
    "status-err-pass": ("DELE 9", "-ERR no such message", "{status: err}", None),
    "status-err-fail": (
        "DELE 1",
        "+OK message 1 deleted",
        "{status: ERR}",
        "expected -ERR, got '+OK message 1 deleted'",
    ),
    # code
    "code-pass": ("PASS pw", "-ERR [IN-USE] maildrop locked", "{status: err, code: IN-USE}", None),
    "code-bracketed-pass": ("PASS pw", "-ERR [IN-USE] maildrop locked", "{code: '[in-use]'}", None),
    "code-hierarchical-pass": ("STAT", "-ERR [SYS/TEMP] try later", "{code: SYS/TEMP}", None),
    "code-fail": (
        "PASS pw",
        "-ERR [AUTH] invalid password",
        "{code: IN-USE}",
        "expected response code [IN-USE], got '-ERR [AUTH] invalid password'",
    ),
    "code-missing-fail": (
        "PASS pw",
        "-ERR maildrop locked",
        "{code: IN-USE}",
        "expected response code [IN-USE], got '-ERR maildrop locked'",
    ),
    # text: after the status (and code)
    "text-pass": ("STAT", "+OK 2 320", "{text: '^2 320$'}", None),
    "text-after-code-pass": ("PASS pw", "-ERR [IN-USE] locked", "{text: '^locked$'}", None),
    "text-fail": (
        "STAT",
        "+OK 2 320",
        "{text: '^3 '}",
        "expected text matching /^3 /, got '2 320'",
    ),
    # multiline inferred from the command
    "capa-is-multiline": (
        "CAPA",
        "+OK capability list follows\nTOP\nUSER\nUIDL\n.",
        "{status: ok, multiline: true, body: [TOP, USER, UIDL]}",
        None,
    ),
    "retr-is-multiline": (
        "RETR 1",
        MESSAGE,
        "{multiline: true, body: ['^Subject: hi$', '^$', '^Hello$']}",
        None,
    ),
    "top-is-multiline": ("TOP 1 0", "+OK\nSubject: hi\n\n.", "{body: ['^Subject', '^$']}", None),
    "list-without-argument-is-multiline": (
        "LIST",
        LISTING,
        "{multiline: true, body: ['^1 120$', '^2 200$']}",
        None,
    ),
    "uidl-without-argument-is-multiline": (
        "UIDL",
        "+OK\n1 whqtswO00WBw418f9t5JxYwZ\n2 QhdPYR:00WBw1Ph7x7\n.",
        "{body: ['^1 whq', '^2 QhdPYR']}",
        None,
    ),
    "list-1-is-single-line": ("LIST 1", "+OK 1 120", "{multiline: false, text: '^1 120$'}", None),
    "uidl-1-is-single-line": ("UIDL 1", "+OK 1 whqtswO00WBw418f9t5JxYwZ", "{status: ok}", None),
    "err-to-retr-is-single-line": (
        "RETR 9",
        "-ERR no such message",
        "{status: err, multiline: false}",
        None,
    ),
    "err-to-capa-is-single-line": ("CAPA", "-ERR unknown command", "{status: err}", None),
    "multiline-true-fails-on-err": (
        "RETR 9",
        "-ERR no such message",
        "{multiline: true}",
        "expected a multiline response, got '-ERR no such message'",
    ),
    # multiline override: read a response of the other shape
    "override-multiline-true": (
        "XSTATS",
        "+OK statistics follow\nmessages: 2\n.",
        "{multiline: true, body: ['^messages: 2$']}",
        None,
    ),
    "override-multiline-false": (
        "LIST",
        "+OK scan listing suppressed",
        "{multiline: false, text: suppressed}",
        None,
    ),
    # body
    "body-count-fail": ("LIST", LISTING, "{body: ['^1 ']}", "expected 1 body line(s), got 2"),
    "body-count-too-many-fail": (
        "LIST",
        LISTING,
        "{body: ['^1 ', '^2 ', '^3 ']}",
        "expected 3 body line(s), got 2",
    ),
    "body-regex-fail": (
        "LIST",
        LISTING,
        "{body: ['^1 120$', '^2 999$']}",
        "body line 2: expected /^2 999$/, got '2 200'",
    ),
    "body-on-single-line-fail": (
        "LIST 1",
        "+OK 1 120",
        "{body: ['^1 120']}",
        "expected a multiline body, got the single line '+OK 1 120'",
    ),
    "body-empty-pass": ("LIST", "+OK 0 messages\n.", "{body: []}", None),
    "body-dot-unstuffed": (
        "RETR 1",
        STUFFED,
        r"{body: ['^before$', '^\.hidden$', '^\.\.two$', '^\.$']}",
        None,
    ),
    "body-dot-unstuffed-fail": (
        "RETR 1",
        STUFFED,
        r"{body: ['^before$', '^\.\.hidden$', '.', '.']}",
        r"body line 2: expected /^\.\.hidden$/, got '.hidden'",
    ),
    # body_text: the body lines joined with \n
    "body_text-pass": ("RETR 1", MESSAGE, r"{body_text: '(?s)^Subject: hi\n\nHello$'}", None),
    "body_text-unstuffed-pass": (
        "RETR 1",
        STUFFED,
        r"{body_text: '^before\n\.hidden\n\.\.two\n\.$'}",
        None,
    ),
    "body_text-fail": (
        "RETR 1",
        MESSAGE,
        "{body_text: Goodbye}",
        "expected the body to match /Goodbye/",
    ),
    "body_text-does-not-see-status-line-fail": (
        "RETR 1",
        MESSAGE,
        "{body_text: octets}",
        "expected the body to match /octets/",
    ),
}


@pytest.mark.parametrize(("command", "reply", "expect", "failure"), CASES.values(), ids=CASES)
def test_pop3_expectation(tmp_path, command, reply, expect, failure):
    # The NOOP after the step proves the response was framed exactly (no bytes left over,
    # none missing).
    script = Script(GREETING, (command, reply), NOOP_AFTER)
    steps = expect_yaml(command, expect) + expect_yaml("NOOP", "{status: ok, text: '^after$'}")
    result = run_scenario(tmp_path, script, steps, protocol="pop3")
    if failure is None:
        assert_passed(result)
    else:
        assert_failed(result, failure, step=0)


def test_capa_answered_single_line_is_read_as_multiline(tmp_path):
    """The shape follows the command: a one-line +OK to CAPA leaves the reader waiting."""
    script = Script(GREETING, ("CAPA", "+OK"))
    steps = expect_yaml("CAPA", "{status: ok}", ["timeout: 0.5"])
    result = run_scenario(tmp_path, script, steps, protocol="pop3")
    assert_failed(result, "no answer within 0.5s")


def test_pipelined_commands_keep_their_shapes_in_order(tmp_path):
    def handler(conn):
        conn.sendline(GREETING)
        for pattern in ("LIST 1", "LIST", "RETR 1", "STAT"):
            conn.expect(pattern)
        conn.send(b"+OK 1 120\r\n+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n")
        conn.send(b"+OK 52 octets\r\nSubject: hi\r\n\r\nHello\r\n.\r\n+OK 2 320\r\n")
        conn.wait_closed()

    steps = """
    - send: LIST 1
    - send: LIST
    - send: RETR 1
    - send: STAT
    - expect: {text: '^1 120$', multiline: false}
    - expect: {body: ['^1 120$', '^2 200$']}
    - expect: {body_text: 'Hello$'}
    - expect: {text: '^2 320$'}
    """
    assert_passed(run_scenario(tmp_path, handler, steps, protocol="pop3"))


def test_response_code_from_native_login(tmp_path):
    script = Script(GREETING, ("USER alice", "+OK"), ("PASS pw", "-ERR [IN-USE] locked"))
    steps = """
    - auth: {mechanism: native, account: alice}
      expect: {status: err, code: IN-USE}
    """
    assert_passed(run_scenario(tmp_path, script, steps, protocol="pop3"))
    assert script.lines == [b"USER alice", b"PASS pw"]


def test_quit_then_close(tmp_path):
    script = Script(GREETING, ("QUIT", "+OK bye"), end="close")
    steps = expect_yaml("QUIT", "{status: ok, closed: true}")
    assert_passed(run_scenario(tmp_path, script, steps, protocol="pop3"))


def test_greeting_judged_by_first_bare_expect(tmp_path):
    script = Script("+OK POP3 server ready <1896.697170952@dbc.mailcom.test>", NOOP_AFTER)
    steps = """
    - expect: {status: ok, text: '^POP3 server ready <[^>]+>$'}
    - send: NOOP
      expect: {status: ok}
    """
    assert_passed(run_scenario(tmp_path, script, steps, protocol="pop3"))


def test_negative_greeting_before_a_send_fails(tmp_path):
    script = Script("-ERR [SYS/TEMP] too busy")
    result = run_scenario(tmp_path, script, expect_yaml("CAPA", "{status: ok}"), protocol="pop3")
    assert_failed(result, "greeting on 'main' was not positive", "too busy")
    assert script.lines == []


# ----------------------------------------------------------------------- malformed responses

MALFORMED = {
    "lower-case-ok": ("NOOP", b"+ok\r\n", "+ok"),
    "lower-case-err": ("NOOP", b"-err no\r\n", "-err"),
    "status-glued-to-text": ("NOOP", b"+OKdone\r\n", "instead of SP"),
    "bare-lf": ("NOOP", b"+OK\n", "bare LF"),
    "unstuffed-dot-in-body": ("RETR 1", b"+OK\r\n.hidden\r\n.\r\n", "byte-stuffed"),
    "unclosed-response-code": ("PASS pw", b"-ERR [IN-USE locked\r\n", "never closed"),
}


@pytest.mark.parametrize(("command", "reply", "phrase"), MALFORMED.values(), ids=MALFORMED)
def test_malformed_response_is_a_failure_not_an_error(tmp_path, command, reply, phrase):
    script = Script(GREETING, (command, reply))
    result = run_scenario(tmp_path, script, expect_yaml(command, "{status: ok}"), protocol="pop3")
    assert_malformed(result, phrase)


def test_close_before_the_end_of_a_multiline_body_is_malformed(tmp_path):
    script = Script(GREETING, ("RETR 1", b"+OK\r\nSubject: hi\r\n"), end="close")
    result = run_scenario(tmp_path, script, expect_yaml("RETR 1", "{status: ok}"), protocol="pop3")
    assert_malformed(result, "terminating '.'")


def test_shape_follows_a_command_sent_in_fragments(tmp_path):
    """``LIST`` sent as ``LI`` + ``ST<CRLF>`` is still LIST without argument: multiline."""
    script = Script(GREETING, ("LIST", LISTING), NOOP_AFTER)
    steps = r"""
    - send_raw: 'LI'
    - send_raw: 'ST\r\n'
      expect: {body: ['^1 120$', '^2 200$']}
    - send: NOOP
      expect: {status: ok, text: '^after$'}
    """
    result = run_scenario(tmp_path, script, steps, protocol="pop3")
    assert_passed(result)
    assert script.lines == [b"LIST", b"NOOP"]
