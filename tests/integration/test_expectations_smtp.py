"""SMTP expectation keys (docs/scenario-format.md, RFC 5321 §4.2, RFC 3463), each passing and
failing against a scripted server that keeps or breaks exactly that rule."""

from __future__ import annotations

import time

import pytest
from engine_helpers import (
    Script,
    assert_failed,
    assert_malformed,
    assert_passed,
    expect_yaml,
    run_scenario,
)

GREETING = "220 mx.example.test ESMTP ready"
EHLO = "EHLO client.example"
EHLO_3 = "250-mx.example.test hello client.example\n250-PIPELINING\n250 SIZE 1000"
EHLO_AUTH = (
    "250-mx.example.test hello\n"
    "250-PIPELINING\n"
    "250-SIZE 10240000\n"
    "250-AUTH PLAIN LOGIN\n"
    "250 8BITMIME"
)
RCPT = "RCPT TO:<bob@example.test>"
MAIL = "MAIL FROM:<alice@example.test>"

# (command, server reply, expect mapping, None if the step passes else a phrase of the failure)
CASES = {
    # code
    "code-pass": ("NOOP", "250 2.0.0 OK", "{code: 250}", None),
    "code-fail": (
        "NOOP",
        "550 5.5.1 no",
        "{code: 250}",
        "expected reply code 250, got '550 5.5.1 no'",
    ),
    "code-list-pass": (RCPT, "251 2.1.5 will forward", "{code: [250, 251]}", None),
    "code-list-fail": (
        RCPT,
        "252 2.1.5 cannot verify",
        "{code: [250, 251]}",
        "expected reply code 250 or 251, got '252 2.1.5 cannot verify'",
    ),
    # class
    "class-int-pass": ("NOOP", "250 OK", "{class: 2}", None),
    "class-str-pass": (MAIL, "451 4.3.0 try again later", "{class: '4xx'}", None),
    "class-int-fail": (
        MAIL,
        "550 5.7.1 go away",
        "{class: 4}",
        "expected a 4xx reply, got '550 5.7.1 go away'",
    ),
    "class-str-fail": (MAIL, "250 2.1.0 OK", "{class: '5xx'}", "expected a 5xx reply, got '250"),
    # enhanced
    "enhanced-exact-pass": (RCPT, "550 5.7.1 relaying denied", "{enhanced: '5.7.1'}", None),
    "enhanced-exact-fail": (
        RCPT,
        "550 5.1.1 no such user",
        "{enhanced: '5.7.1'}",
        "expected enhanced status code 5.7.1, got 5.1.1 in '550 5.1.1 no such user'",
    ),
    "enhanced-x-detail-pass": (RCPT, "550 5.7.26 unauthenticated", "{enhanced: '5.7.x'}", None),
    "enhanced-x-subject-pass": (RCPT, "550 5.1.10 null MX", "{enhanced: '5.x.x'}", None),
    "enhanced-x-class-pass": (RCPT, "451 4.7.1 greylisted", "{enhanced: 'x.7.1'}", None),
    "enhanced-x-fail": (
        RCPT,
        "451 4.7.1 greylisted",
        "{enhanced: '5.x.x'}",
        "expected enhanced status code 5.x.x, got 4.7.1 in '451 4.7.1 greylisted'",
    ),
    "enhanced-x-detail-fail": (
        RCPT,
        "550 5.1.1 no such user",
        "{enhanced: '5.7.x'}",
        "expected enhanced status code 5.7.x, got 5.1.1",
    ),
    "enhanced-missing-fail": (
        RCPT,
        "550 relaying denied",
        "{enhanced: '5.7.1'}",
        "expected enhanced status code 5.7.1, got none in '550 relaying denied'",
    ),
    "enhanced-not-first-in-text-fail": (
        RCPT,
        "550 denied (5.7.1)",
        "{enhanced: '5.7.1'}",
        "expected enhanced status code 5.7.1, got none",
    ),
    # text: all reply lines joined with \n
    "text-pass": ("NOOP", "250 2.0.0 OK", "{text: '^2\\.0\\.0 OK$'}", None),
    "text-joined-lines-pass": (EHLO, EHLO_3, r"{text: 'client\.example\nPIPELINING\nSIZE'}", None),
    "text-fail": (
        "NOOP",
        "250 2.0.0 OK",
        "{text: 'Ok, done'}",
        "expected text matching /Ok, done/, got '2.0.0 OK'",
    ),
    # lines
    "lines-pass": (
        EHLO,
        EHLO_3,
        r"{lines: ['^mx\.example\.test ', '^PIPELINING$', 'SIZE \d+']}",
        None,
    ),
    "lines-count-fail": (
        EHLO,
        EHLO_3,
        "{lines: ['^mx', 'PIPELINING']}",
        "expected 2 reply line(s), got 3",
    ),
    "lines-too-many-fail": (
        "NOOP",
        "250 OK",
        "{lines: ['OK', 'more']}",
        "expected 2 reply line(s), got 1",
    ),
    "lines-line-fail": (
        EHLO,
        EHLO_3,
        "{lines: ['^mx', '^8BITMIME$', '^SIZE']}",
        "reply line 2: expected /^8BITMIME$/, got 'PIPELINING'",
    ),
    # multiline
    "multiline-true-pass": (EHLO, EHLO_3, "{multiline: true}", None),
    "multiline-true-fail": (
        "NOOP",
        "250 OK",
        "{multiline: true}",
        "expected a multiline reply, got 1 line(s)",
    ),
    "multiline-false-pass": ("NOOP", "250 OK", "{multiline: false}", None),
    "multiline-false-fail": (
        EHLO,
        EHLO_3,
        "{multiline: false}",
        "expected a single-line reply, got 3 line(s)",
    ),
    # ehlo_has / ehlo_lacks, with KEYWORD=PARAM
    "ehlo_has-pass": (
        EHLO,
        EHLO_AUTH,
        "{ehlo_has: [PIPELINING, 8bitmime, SIZE, SIZE=10240000, AUTH, AUTH=PLAIN, auth=login]}",
        None,
    ),
    "ehlo_has-keyword-fail": (
        EHLO,
        EHLO_AUTH,
        "{ehlo_has: [PIPELINING, STARTTLS]}",
        "expected EHLO keyword(s) STARTTLS, not advertised",
    ),
    "ehlo_has-param-fail": (
        EHLO,
        EHLO_AUTH,
        "{ehlo_has: [AUTH=PLAIN, AUTH=CRAM-MD5]}",
        "expected EHLO keyword(s) AUTH=CRAM-MD5, not advertised",
    ),
    "ehlo_has-greeting-line-is-no-keyword-fail": (
        EHLO,
        "250-PIPELINING hello\n250 SIZE 1000",
        "{ehlo_has: [PIPELINING]}",
        "expected EHLO keyword(s) PIPELINING, not advertised",
    ),
    "ehlo_has-not-250-fail": (
        EHLO,
        "502 5.5.1 EHLO not implemented",
        "{ehlo_has: [SIZE]}",
        "expected EHLO keyword(s) SIZE, not advertised",
    ),
    "ehlo_lacks-pass": (
        EHLO,
        EHLO_AUTH,
        "{ehlo_lacks: [STARTTLS, AUTH=CRAM-MD5, SIZE=0, CHUNKING]}",
        None,
    ),
    "ehlo_lacks-keyword-fail": (
        EHLO,
        EHLO_AUTH,
        "{ehlo_lacks: [STARTTLS, PIPELINING]}",
        "expected EHLO keyword(s) PIPELINING to be absent, but advertised",
    ),
    "ehlo_lacks-param-fail": (
        EHLO,
        EHLO_AUTH,
        "{ehlo_lacks: [AUTH=CRAM-MD5, AUTH=PLAIN]}",
        "expected EHLO keyword(s) AUTH=PLAIN to be absent, but advertised",
    ),
}


@pytest.mark.parametrize(("command", "reply", "expect", "failure"), CASES.values(), ids=CASES)
def test_smtp_expectation(tmp_path, command, reply, expect, failure):
    script = Script(GREETING, (command, reply), ("QUIT", "221 2.0.0 bye"), end="close")
    steps = expect_yaml(command, expect) + expect_yaml("QUIT", "{code: 221}")
    result = run_scenario(tmp_path, script, steps)
    if failure is None:
        assert_passed(result)
    else:
        assert_failed(result, failure, step=0)


def test_every_mismatch_of_a_step_is_reported_in_one_line(tmp_path):
    script = Script(GREETING, (MAIL, "451 4.3.0 try again later"))
    expect = "{code: 250, class: 2, enhanced: '2.1.0', multiline: true, text: 'Sender OK'}"
    result = run_scenario(tmp_path, script, expect_yaml(MAIL, expect))
    assert_failed(
        result,
        "expected reply code 250, got '451 4.3.0 try again later'",
        "expected a 2xx reply",
        "expected enhanced status code 2.1.0, got 4.3.0",
        "expected a multiline reply, got 1 line(s)",
        "expected text matching /Sender OK/",
    )
    assert "\n" not in (result.message or "")
    assert (result.message or "").count("; ") == 4


def test_enhanced_code_is_taken_from_the_first_line_only(tmp_path):
    reply = "550-relaying denied\n550 5.7.1 see https://example.test/policy"
    script = Script(GREETING, (RCPT, reply))
    result = run_scenario(tmp_path, script, expect_yaml(RCPT, "{code: 550, enhanced: '5.7.1'}"))
    assert_failed(result, "expected enhanced status code 5.7.1, got none")


# ----------------------------------------------------------------------- malformed replies

MALFORMED = {
    "non-digit-code": ("NOOP", b"2x0 hi\r\n", "does not start with a three-digit reply code"),
    "code-out-of-range": ("NOOP", b"260 hmm\r\n", "outside Reply-code"),
    "mixed-codes-in-multiline": (
        EHLO,
        b"250-mx.example.test\r\n251 PIPELINING\r\n",
        "reply line 2 has code 251 but line 1 has 250",
    ),
    "bare-lf-line-end": ("NOOP", b"250 OK\n", "bare LF"),
    "bare-lf-inside-multiline": (EHLO, b"250-mx.example.test\n250 SIZE 1\r\n", "bare LF"),
    "bad-separator": ("NOOP", b"250_OK\r\n", "expected '-', SP or end of line"),
    "control-character-in-text": ("NOOP", b"250 O\x00K\r\n", "control character"),
}


@pytest.mark.parametrize(("command", "reply", "phrase"), MALFORMED.values(), ids=MALFORMED)
def test_malformed_reply_is_a_failure_not_an_error(tmp_path, command, reply, phrase):
    script = Script(GREETING, (command, reply))
    result = run_scenario(tmp_path, script, expect_yaml(command, "{class: 2}"))
    assert_malformed(result, phrase)


def test_malformed_greeting_is_a_failure(tmp_path):
    script = Script(b"22O mx.example.test\r\n")
    result = run_scenario(tmp_path, script, "- send: EHLO client.example\n  expect: {code: 250}")
    assert_malformed(result, "three-digit reply code")
    assert script.lines == []  # nothing was sent after a greeting that could not be read


def test_connection_closed_in_the_middle_of_a_reply_is_malformed(tmp_path):
    script = Script(GREETING, (EHLO, b"250-mx.example.test\r\n250-PIPE"), end="close")
    result = run_scenario(tmp_path, script, expect_yaml(EHLO, "{code: 250}"))
    assert_malformed(result, "closed in the middle of a reply")


def test_reply_split_across_many_writes_is_reassembled(tmp_path):
    def handler(conn):
        conn.sendline(GREETING)
        conn.expect(EHLO)
        for chunk in (
            b"25",
            b"0-mx.example.test\r",
            b"\n250-PIPE",
            b"LINING\r\n250 SIZE 1",
            b"\r\n",
        ):
            conn.send(chunk)
            time.sleep(0.02)
        conn.wait_closed()

    expect = "{code: 250, lines: ['^mx', '^PIPELINING$', '^SIZE 1$']}"
    assert_passed(run_scenario(tmp_path, handler, expect_yaml(EHLO, expect)))


# A legacy line (Postfix's broken_sasl_auth_clients) that breaks ehlo-line (RFC 5321 §4.1.1.1);
# docs/decisions.md: ehlo_has / ehlo_lacks / requires read it leniently as AUTH PLAIN LOGIN.
LEGACY_AUTH = "250-mx.example.test\n250-SIZE 1000\n250 AUTH=PLAIN LOGIN"


def test_ehlo_has_reads_a_legacy_auth_equals_line_leniently(tmp_path):
    script = Script(GREETING, (EHLO, LEGACY_AUTH))
    expect = "{code: 250, ehlo_has: [AUTH, AUTH=PLAIN, AUTH=LOGIN, SIZE=1000]}"
    assert_passed(run_scenario(tmp_path, script, expect_yaml(EHLO, expect)))


def test_ehlo_has_on_a_legacy_auth_equals_line_still_fails_on_a_missing_keyword(tmp_path):
    script = Script(GREETING, (EHLO, LEGACY_AUTH))
    result = run_scenario(tmp_path, script, expect_yaml(EHLO, "{ehlo_has: [AUTH=CRAM-MD5]}"))
    assert_failed(result, "expected EHLO keyword(s) AUTH=CRAM-MD5, not advertised")


def test_ehlo_lacks_reads_a_legacy_auth_equals_line_leniently(tmp_path):
    script = Script(GREETING, (EHLO, LEGACY_AUTH))
    result = run_scenario(tmp_path, script, expect_yaml(EHLO, "{ehlo_lacks: [AUTH=LOGIN]}"))
    assert_failed(result, "expected EHLO keyword(s) AUTH=LOGIN to be absent, but advertised")
