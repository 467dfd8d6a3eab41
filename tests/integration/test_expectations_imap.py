"""IMAP expectation keys (docs/scenario-format.md, RFC 9051 §2.2.2, §7), each passing and
failing against a scripted server: tagged status, tags and pipelining, response codes,
untagged data in any order, continuations, literals (binary included) and IDLE."""

from __future__ import annotations

import time
from textwrap import dedent

import pytest
from engine_helpers import (
    Script,
    assert_failed,
    assert_malformed,
    assert_passed,
    expect_yaml,
    run_scenario,
)

GREETING = "* OK [CAPABILITY IMAP4rev2 IDLE] IMAP server ready"
SELECT = "a1 SELECT INBOX"
# In the reverse order of the patterns the tests list.
SELECT_REPLY = "\n".join(
    [
        '* LIST () "/" INBOX',
        "* 172 EXISTS",
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        "* OK [UIDNEXT 4392] Predicted next UID",
        "* OK [UIDVALIDITY 3857529045] UIDs valid",
        "a1 OK [READ-WRITE] SELECT completed",
    ]
)
SELECT_PATTERNS = r"['UIDVALIDITY \d+', 'UIDNEXT \d+', '^\* FLAGS \(', '^\* 172 EXISTS$']"


def imap(tmp_path, handler, steps, **kwargs):
    return run_scenario(tmp_path, handler, steps, protocol="imap", **kwargs)


# (command, server reply, expect mapping, None if the step passes else a phrase of the failure)
CASES = {
    # tagged
    "tagged-ok-pass": ("a1 NOOP", "a1 OK NOOP completed", "{tagged: OK}", None),
    "tagged-ok-fail": (
        "a1 NOOP",
        "a1 NO not now",
        "{tagged: OK}",
        "expected tagged OK, got 'a1 NO not now'",
    ),
    "tagged-no-pass": ("a1 SELECT Nowhere", "a1 NO [NONEXISTENT] no mailbox", "{tagged: no}", None),
    "tagged-no-fail": (
        "a1 SELECT INBOX",
        "a1 OK SELECT completed",
        "{tagged: NO}",
        "expected tagged NO, got 'a1 OK SELECT completed'",
    ),
    "tagged-bad-pass": ("a1 FROBNICATE", "a1 BAD unknown command", "{tagged: BAD}", None),
    "tagged-bad-fail": (
        "a1 FROBNICATE",
        "a1 NO unknown command",
        "{tagged: BAD}",
        "expected tagged BAD, got 'a1 NO unknown command'",
    ),
    # code (of the tagged response)
    "code-pass": (
        "a1 COPY 1 Nowhere",
        "a1 NO [TRYCREATE] no such mailbox",
        "{tagged: NO, code: TRYCREATE}",
        None,
    ),
    "code-with-args-pass": (SELECT, SELECT_REPLY, "{code: READ-WRITE}", None),
    "code-fail": (
        "a1 COPY 1 Nowhere",
        "a1 NO [NONEXISTENT] no such mailbox",
        "{code: TRYCREATE}",
        "expected response code [TRYCREATE], got 'a1 NO [NONEXISTENT] no such mailbox'",
    ),
    "code-missing-fail": (
        "a1 COPY 1 Nowhere",
        "a1 NO no such mailbox",
        "{code: '[TRYCREATE]'}",
        "expected response code [TRYCREATE], got 'a1 NO no such mailbox'",
    ),
    "code-of-untagged-is-not-the-tagged-code-fail": (
        SELECT,
        SELECT_REPLY,
        "{code: UIDVALIDITY}",
        "expected response code [UIDVALIDITY], got 'a1 OK [READ-WRITE] SELECT completed'",
    ),
    # text (of the tagged response)
    "text-pass": ("a1 NOOP", "a1 OK NOOP completed", "{text: '^NOOP completed$'}", None),
    "text-after-code-pass": (SELECT, SELECT_REPLY, "{text: '^SELECT completed$'}", None),
    "text-fail": (
        "a1 NOOP",
        "a1 OK NOOP completed",
        "{text: '^done$'}",
        "expected text matching /^done$/, got 'NOOP completed'",
    ),
    # untagged: every pattern matches a different response, in any order
    "untagged-any-order-pass": (SELECT, SELECT_REPLY, f"{{untagged: {SELECT_PATTERNS}}}", None),
    "untagged-with-tagged-pass": (
        SELECT,
        SELECT_REPLY,
        f"{{tagged: OK, untagged: {SELECT_PATTERNS}}}",
        None,
    ),
    "untagged-missing-fail": (
        SELECT,
        SELECT_REPLY,
        r"{tagged: OK, untagged: ['EXISTS', '\d+ RECENT']}",
        r"expected an untagged response matching /\d+ RECENT/, got: * LIST",
    ),
    "untagged-each-a-different-response-fail": (
        SELECT,
        SELECT_REPLY,
        "{tagged: OK, untagged: [EXISTS, '\\d+ EXISTS']}",
        r"expected an untagged response matching /\d+ EXISTS/",
    ),
    "untagged-none-received-fail": (
        "a1 NOOP",
        "a1 OK NOOP completed",
        "{tagged: OK, untagged: [EXISTS]}",
        "expected an untagged response matching /EXISTS/, got: none",
    ),
    # untagged_absent
    "untagged_absent-pass": (
        SELECT,
        SELECT_REPLY,
        "{tagged: OK, untagged_absent: [RECENT, PERMANENTFLAGS, '^\\* NO ']}",
        None,
    ),
    "untagged_absent-fail": (
        SELECT,
        SELECT_REPLY,
        "{tagged: OK, untagged_absent: [RECENT, UIDNEXT]}",
        "expected no untagged response matching /UIDNEXT/, got '* OK [UIDNEXT 4392] Predicted",
    ),
    # untagged_only
    "untagged_only-pass": (
        "a1 STATUS INBOX (MESSAGES)",
        "* STATUS INBOX (MESSAGES 17)\na1 OK STATUS completed",
        "{tagged: OK, untagged: ['^\\* STATUS INBOX \\(MESSAGES 17\\)$'], untagged_only: true}",
        None,
    ),
    "untagged_only-nothing-at-all-pass": (
        "a1 NOOP",
        "a1 OK NOOP completed",
        "{tagged: OK, untagged_only: true}",
        None,
    ),
    "untagged_only-fail": (
        SELECT,
        SELECT_REPLY,
        f"{{tagged: OK, untagged: {SELECT_PATTERNS}, untagged_only: true}}",
        'unexpected untagged response(s): * LIST () "/" INBOX',
    ),
}


@pytest.mark.parametrize(("command", "reply", "expect", "failure"), CASES.values(), ids=CASES)
def test_imap_expectation(tmp_path, command, reply, expect, failure):
    script = Script(GREETING, (command, reply), ("a2 NOOP", "a2 OK after"))
    steps = expect_yaml(command, expect) + expect_yaml("a2 NOOP", "{tagged: OK, text: after}")
    result = imap(tmp_path, script, steps)
    if failure is None:
        assert_passed(result)
    else:
        assert_failed(result, failure, step=0)


# ----------------------------------------------------------------------- tags and pipelining


def _pipelined(*replies: bytes):
    def handler(conn):
        conn.sendline(GREETING)
        conn.expect("a1 NOOP")
        conn.expect("a2 SELECT Nowhere")
        for reply in replies:
            conn.send(reply)
            time.sleep(0.02)
        conn.wait_closed()

    return handler


PIPELINED_SENDS = """
- send: a1 NOOP
- send: a2 SELECT Nowhere
"""


def test_pipelined_answers_in_order(tmp_path):
    handler = _pipelined(b"* 3 EXISTS\r\na1 OK NOOP completed\r\n", b"a2 NO no such mailbox\r\n")
    steps = PIPELINED_SENDS + dedent("""
    - expect: {tag: a1, tagged: OK, untagged: ['3 EXISTS']}
    - expect: {tag: a2, tagged: NO, text: no such mailbox}
    """)
    assert_passed(imap(tmp_path, handler, steps))


def test_pipelined_answer_waited_for_out_of_order_is_kept_for_its_own_expect(tmp_path):
    handler = _pipelined(b"a1 OK NOOP completed\r\n", b"a2 NO no such mailbox\r\n")
    steps = PIPELINED_SENDS + dedent("""
    - expect: {tag: a2, tagged: NO}
    - expect: {tag: a1, tagged: OK, text: NOOP completed}
    """)
    assert_passed(imap(tmp_path, handler, steps))


def test_server_answering_pipelined_commands_in_reverse_order(tmp_path):
    handler = _pipelined(b"a2 NO no such mailbox\r\n", b"a1 OK NOOP completed\r\n")
    steps = PIPELINED_SENDS + dedent("""
    - expect: {tag: a1, tagged: OK}
    - expect: {tag: a2, tagged: NO}
    """)
    assert_passed(imap(tmp_path, handler, steps))


def test_tag_whose_answer_never_comes_fails(tmp_path):
    handler = _pipelined(b"a1 OK NOOP completed\r\n")
    steps = PIPELINED_SENDS + dedent("""
    - expect: {tag: a1, tagged: OK}
    - expect: {tag: a2, tagged: NO}
      timeout: 0.5
    """)
    result = imap(tmp_path, handler, steps)
    assert_failed(result, "no answer within 0.5s", step=3)


def test_tag_status_mismatch_names_the_tagged_line(tmp_path):
    handler = _pipelined(b"a1 OK NOOP completed\r\na2 OK selected anyway\r\n")
    steps = PIPELINED_SENDS + dedent("""
    - expect: {tag: a2, tagged: NO}
    """)
    result = imap(tmp_path, handler, steps)
    assert_failed(result, "expected tagged NO, got 'a2 OK selected anyway'")


def test_default_tag_is_the_last_command_sent(tmp_path):
    """Without ``tag:``, the step waits for the last command's answer; others are stashed."""
    handler = _pipelined(b"a1 NO hmm\r\n", b"a2 OK [READ-ONLY] done\r\n")
    steps = PIPELINED_SENDS + dedent("""
    - expect: {tagged: OK, code: READ-ONLY}
    """)
    assert_passed(imap(tmp_path, handler, steps))


# ----------------------------------------------------------------------- continuations


def _login_literal(answer: bytes):
    seen: list[bytes] = []

    def handler(conn):
        conn.sendline(GREETING)
        conn.expect(r"a1 LOGIN \{5\}")
        conn.send(answer)
        if not answer.startswith(b"+"):
            conn.wait_closed()
            return
        seen.append(conn.recv_exact(5))
        seen.append(conn.recv_line())
        conn.sendline("a1 OK LOGIN completed")
        conn.wait_closed()

    return handler, seen


LOGIN_LITERAL = """
- send: a1 LOGIN {5}
  expect: {continuation: true, text: '^Ready for literal data$'}
- send: alice "pw"
  expect: {tagged: OK, text: LOGIN completed}
"""


def test_continuation_then_literal_data(tmp_path):
    handler, seen = _login_literal(b"+ Ready for literal data\r\n")
    assert_passed(imap(tmp_path, handler, LOGIN_LITERAL))
    assert seen == [b"alice", b' "pw"']


def test_continuation_expected_but_command_refused(tmp_path):
    handler, seen = _login_literal(b"a1 NO [CANNOT] literal too big\r\n")
    result = imap(tmp_path, handler, LOGIN_LITERAL)
    assert_failed(
        result,
        "expected a continuation request ('+'), got 'a1 NO [CANNOT] literal too big'",
        step=0,
    )
    assert seen == []


def test_continuation_text_mismatch(tmp_path):
    handler, _ = _login_literal(b"+ go on\r\n")
    result = imap(tmp_path, handler, LOGIN_LITERAL)
    assert_failed(result, "expected text matching /^Ready for literal data$/, got 'go on'")


# ----------------------------------------------------------------------- server literals

FETCH_DATA = b"ab\x00cd\r\na1 OK not the end\r\n\xff"


def _fetch(data: bytes):
    def handler(conn):
        conn.sendline(GREETING)
        conn.expect(r"a1 FETCH 1 BODY\[\]")
        conn.send(b"* 1 FETCH (UID 7 BODY[] {%d}\r\n%s)\r\n" % (len(data), data))
        conn.sendline("a1 OK FETCH completed")
        conn.wait_closed()

    return handler


def test_literal_with_nul_and_crlf_matched_by_regex(tmp_path):
    steps = r"""
    - send: a1 FETCH 1 BODY[]
      expect:
        tagged: OK
        text: '^FETCH completed$'
        untagged: ['^\* 1 FETCH \(UID 7 BODY\[\] \{27\}\r\nab\x00cd\r\na1 OK not the end\r\n.\)$']
        untagged_only: true
    """
    result = imap(tmp_path, _fetch(FETCH_DATA), steps)
    assert_passed(result)


def test_literal_content_mismatch_fails(tmp_path):
    steps = r"""
    - send: a1 FETCH 1 BODY[]
      expect: {tagged: OK, untagged: ['\{27\}\r\nab\x00cd\r\nXX']}
    """
    result = imap(tmp_path, _fetch(FETCH_DATA), steps)
    assert_failed(result, r"expected an untagged response matching /\{27\}\r\nab\x00cd\r\nXX/")


def test_literal_split_across_writes(tmp_path):
    def handler(conn):
        conn.sendline(GREETING)
        conn.expect(r"a1 FETCH 1 BODY\[\]")
        for chunk in (
            b"* 1 FETCH (BODY[] {8}\r",
            b"\nab\r\n",
            b"\x00\r\n",
            b"x)\r\na1 OK done\r\n",
        ):
            conn.send(chunk)
            time.sleep(0.02)
        conn.wait_closed()

    steps = r"""
    - send: a1 FETCH 1 BODY[]
      expect: {tagged: OK, untagged: ['\{8\}\r\nab\r\n\x00\r\nx\)$']}
    """
    assert_passed(imap(tmp_path, handler, steps))


# ----------------------------------------------------------------------- IDLE


def _idle(*pushes: bytes):
    def handler(conn):
        conn.sendline(GREETING)
        conn.expect("a1 IDLE")
        conn.sendline("+ idling")
        for push in pushes:
            time.sleep(0.1)
            conn.send(push)
        conn.expect("DONE")
        conn.sendline("a1 OK IDLE terminated")
        conn.wait_closed()

    return handler


IDLE_STEPS = """
- send: a1 IDLE
  expect: {continuation: true, text: idling}
- expect: {untagged: ['^\\* 4 EXISTS$', '^\\* 1 RECENT$']}
  timeout: 0.5
- send: DONE
  expect: {tagged: OK, text: IDLE terminated}
"""


def test_idle_waits_for_pushed_untagged_data(tmp_path):
    result = imap(tmp_path, _idle(b"* 1 RECENT\r\n", b"* 4 EXISTS\r\n"), IDLE_STEPS)
    assert_passed(result)


def test_idle_without_push_times_out(tmp_path):
    result = imap(tmp_path, _idle(), IDLE_STEPS)
    assert_failed(result, "no answer within 0.5s", step=1)


def test_idle_with_only_part_of_the_data_times_out(tmp_path):
    result = imap(tmp_path, _idle(b"* 4 EXISTS\r\n"), IDLE_STEPS)
    assert_failed(result, "no answer within 0.5s", step=1)


def test_untagged_wait_ends_at_a_tagged_response(tmp_path):
    """``untagged`` without ``tagged`` reads until the patterns match *or* the tagged answer."""
    script = Script(GREETING, ("a1 NOOP", "* 2 EXPUNGE\na1 OK NOOP completed"))
    steps = expect_yaml("a1 NOOP", "{untagged: ['4 EXISTS']}", ["timeout: 3"])
    result = imap(tmp_path, script, steps)
    assert_failed(result, "expected an untagged response matching /4 EXISTS/, got: * 2 EXPUNGE")
    assert result.duration < 2


# ----------------------------------------------------------------------- greeting, LOGOUT


def test_greeting_judged_by_first_bare_expect(tmp_path):
    script = Script(GREETING, ("a1 NOOP", "a1 OK done"))
    steps = """
    - expect: {code: CAPABILITY, text: 'IMAP server ready', untagged: ['IMAP4rev2']}
    - send: a1 NOOP
      expect: {tagged: OK}
    """
    assert_passed(imap(tmp_path, script, steps))


def test_preauth_greeting_is_positive(tmp_path):
    script = Script("* PREAUTH [CAPABILITY IMAP4rev2] logged in as alice", ("a1 NOOP", "a1 OK"))
    assert_passed(imap(tmp_path, script, expect_yaml("a1 NOOP", "{tagged: OK}")))


def test_bye_greeting_before_a_send_fails(tmp_path):
    script = Script("* BYE [UNAVAILABLE] server too busy")
    result = imap(tmp_path, script, expect_yaml("a1 NOOP", "{tagged: OK}"))
    assert_failed(result, "greeting on 'main' was not positive", "too busy")
    assert script.lines == []


def test_logout_bye_tagged_and_close(tmp_path):
    script = Script(
        GREETING, ("a1 LOGOUT", "* BYE logging out\na1 OK LOGOUT completed"), end="close"
    )
    steps = expect_yaml("a1 LOGOUT", "{tagged: OK, untagged: ['^\\* BYE '], closed: true}")
    assert_passed(imap(tmp_path, script, steps))


# ----------------------------------------------------------------------- malformed responses

MALFORMED = {
    "unbalanced-parenthesis-in-fetch": (
        "a1 FETCH 1 (FLAGS)",
        b"* 1 FETCH (FLAGS (\\Seen)\r\na1 OK done\r\n",
    ),
    "bare-lf": ("a1 NOOP", b"a1 OK done\n"),
    "tagged-status-not-ok-no-bad": ("a1 NOOP", b"a1 MAYBE done\r\n"),
    "exists-without-number": ("a1 NOOP", b"* EXISTS\r\na1 OK done\r\n"),
    "non-synchronizing-literal-from-server": (
        "a1 FETCH 1 BODY[]",
        b"* 1 FETCH (BODY[] {2+}\r\nab)\r\na1 OK done\r\n",
    ),
}


@pytest.mark.parametrize(("command", "reply"), MALFORMED.values(), ids=MALFORMED)
def test_malformed_response_is_a_failure_not_an_error(tmp_path, command, reply):
    script = Script(GREETING, (command, reply))
    result = imap(tmp_path, script, expect_yaml(command, "{tagged: OK}"))
    assert_malformed(result)


def test_default_tag_ignores_the_lines_of_literal_data(tmp_path):
    """APPEND with a message literal (RFC 9051 §6.3.12): the literal's lines (``Subject: hi``)
    are data, not commands, so the default tag is still ``a1``."""
    message = b"From: alice@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
    got: list[bytes] = []

    def handler(conn):
        conn.sendline(GREETING)
        conn.expect(rf"a1 APPEND INBOX \{{{len(message)}\}}")
        conn.sendline("+ Ready for literal data")
        got.append(conn.recv_exact(len(message)))
        conn.expect("")  # the CRLF that ends the command
        conn.sendline("a1 OK [APPENDUID 38505 3955] APPEND completed")
        conn.wait_closed()

    steps = rf"""
    - send: a1 APPEND INBOX {{{len(message)}}}
      expect: {{continuation: true}}
    - send_raw: 'From: alice@example.test\r\nSubject: hi\r\n\r\nbody\r\n'
    - send: ''
      expect: {{tagged: OK, code: APPENDUID}}
      timeout: 1
    """
    result = imap(tmp_path, handler, steps)
    assert got == [message]
    assert_passed(result)
