"""Expectations every protocol has (``closed``, ``silence``, ``text``), greetings, and the two
kinds of timeout (a step's read timeout and the scenario's ``timeout:``)."""

from __future__ import annotations

import time

from engine_helpers import Script, assert_failed, assert_passed, expect_yaml, run_scenario

GREETING = "220 mx.example.test ESMTP ready"


# ----------------------------------------------------------------------- closed


def test_closed_after_quit(tmp_path):
    script = Script(GREETING, ("QUIT", "221 2.0.0 bye"), end="close")
    steps = """
    - send: QUIT
      expect: {code: 221}
    - expect: {closed: true}
    """
    assert_passed(run_scenario(tmp_path, script, steps))


def test_closed_combined_with_code(tmp_path):
    script = Script(GREETING, ("QUIT", "221 2.0.0 bye"), end="close")
    assert_passed(run_scenario(tmp_path, script, expect_yaml("QUIT", "{code: 221, closed: true}")))


def test_closed_after_a_reset_counts_as_closed(tmp_path):
    script = Script(GREETING, ("QUIT", "221 2.0.0 bye"), end="abort")
    assert_passed(run_scenario(tmp_path, script, expect_yaml("QUIT", "{code: 221, closed: true}")))


def test_closed_fails_when_server_stays_open(tmp_path):
    script = Script(GREETING, ("QUIT", "221 2.0.0 bye"))
    steps = expect_yaml("QUIT", "{code: 221, closed: true}", ["timeout: 0.5"])
    started = time.monotonic()
    result = run_scenario(tmp_path, script, steps)
    assert_failed(result, "expected the server to close the connection", "0.5s", step=0)
    assert time.monotonic() - started < 3


def test_closed_alone_fails_when_server_stays_open(tmp_path):
    script = Script(GREETING, ("QUIT", "221 2.0.0 bye"))
    steps = """
    - send: QUIT
      expect: {code: 221}
    - expect: {closed: true}
      timeout: 0.5
    """
    result = run_scenario(tmp_path, script, steps)
    assert_failed(result, "expected the server to close the connection", "0.5s", step=1)


def test_closed_alone_fails_when_a_reply_arrives_before_the_close(tmp_path):
    """Alone, ``closed`` means nothing may arrive before the close."""
    script = Script(GREETING, ("QUIT", "221 2.0.0 bye"), end="close")
    result = run_scenario(tmp_path, script, expect_yaml("QUIT", "{closed: true}"))
    assert_failed(result, "expected the server to close the connection, got b'221 2.0.0 bye")


def test_closed_with_code_fails_on_the_code(tmp_path):
    script = Script(GREETING, ("QUIT", "250 2.0.0 OK"), end="close")
    result = run_scenario(tmp_path, script, expect_yaml("QUIT", "{code: 221, closed: true}"))
    assert_failed(result, "expected reply code 221, got '250 2.0.0 OK'")


def test_closed_with_code_fails_when_the_server_closes_without_replying(tmp_path):
    def handler(conn):
        conn.sendline(GREETING)
        conn.expect("QUIT")

    result = run_scenario(tmp_path, handler, expect_yaml("QUIT", "{code: 221, closed: true}"))
    assert_failed(result, "expected a response, but the server closed the connection")


def test_code_alone_fails_when_the_server_closes_without_replying(tmp_path):
    def handler(conn):
        conn.sendline(GREETING)
        conn.expect("NOOP")

    result = run_scenario(tmp_path, handler, expect_yaml("NOOP", "{code: 250}"))
    assert_failed(result, "expected a response, but the server closed the connection")


# ----------------------------------------------------------------------- silence


def test_silence_passes_while_a_partial_command_is_pending(tmp_path):
    script = Script(GREETING)
    steps = """
    - send_raw: 'NOOP'
      expect: {silence: 0.3}
    """
    assert_passed(run_scenario(tmp_path, script, steps))


def test_silence_fails_when_the_server_sends_something(tmp_path):
    def handler(conn):
        conn.sendline(GREETING)
        time.sleep(0.2)
        conn.sendline("421 4.4.2 idle for too long")
        conn.wait_closed()

    steps = """
    - expect: {code: 220}
    - expect: {silence: 1}
    """
    result = run_scenario(tmp_path, handler, steps)
    assert_failed(result, "expected silence for 1s, but the server sent b'421 4.4.2", step=1)


def test_silence_fails_when_bytes_are_already_buffered(tmp_path):
    script = Script(GREETING + "\n421 4.4.2 go away")
    steps = """
    - expect: {code: 220}
    - expect: {silence: 0.3}
    """
    result = run_scenario(tmp_path, script, steps)
    assert_failed(result, "expected silence", "421 4.4.2 go away", step=1)


def test_silence_fails_when_the_server_closes(tmp_path):
    script = Script(GREETING, end="close")
    steps = """
    - expect: {code: 220}
    - expect: {silence: 1}
    """
    result = run_scenario(tmp_path, script, steps)
    assert_failed(result, "expected silence for 1s, but the server closed the connection")


def test_silence_then_the_conversation_goes_on(tmp_path):
    script = Script(GREETING, ("NOOP", "250 2.0.0 OK"))
    steps = """
    - expect: {code: 220}
    - expect: {silence: 0.2}
    - send: NOOP
      expect: {code: 250}
    """
    assert_passed(run_scenario(tmp_path, script, steps))


def test_silence_on_pop3(tmp_path):
    script = Script("+OK ready", ("NOOP", "+OK\n+OK extra"))
    steps = """
    - send: NOOP
      expect: {status: ok}
    - expect: {silence: 0.3}
    """
    result = run_scenario(tmp_path, script, steps, protocol="pop3")
    assert_failed(result, "expected silence", "+OK extra", step=1)


# ----------------------------------------------------------------------- greeting


def test_first_bare_expect_judges_the_greeting(tmp_path):
    script = Script("220-mx.example.test ESMTP\n220 welcome", ("NOOP", "250 OK"))
    steps = """
    - expect: {code: 220, multiline: true, text: '^mx\\.example\\.test ESMTP\\nwelcome$'}
    - send: NOOP
      expect: {code: 250}
    """
    assert_passed(run_scenario(tmp_path, script, steps))


def test_negative_greeting_can_be_expected(tmp_path):
    script = Script("554 5.3.2 no service here")
    steps = """
    - expect: {code: 554, enhanced: '5.3.2'}
    """
    assert_passed(run_scenario(tmp_path, script, steps))


def test_greeting_421_then_close(tmp_path):
    script = Script("421 4.3.2 mx.example.test too busy, try later", end="close")
    assert_passed(run_scenario(tmp_path, script, "- expect: {code: 421, closed: true}"))


def test_greeting_is_read_again_on_a_connection_reopened_after_close(tmp_path):
    script = Script(GREETING, ("NOOP", "250 2.0.0 OK"))
    steps = """
    - send: NOOP
      expect: {code: 250}
    - close: true
    - expect: {code: 220, text: ESMTP}
    - send: NOOP
      expect: {code: 250}
    """
    assert_passed(run_scenario(tmp_path, script, steps))
    assert script.received == [[b"NOOP"], [b"NOOP"]]


def test_greeting_expectation_mismatch(tmp_path):
    script = Script("554 5.3.2 no service here")
    result = run_scenario(tmp_path, script, "- expect: {code: 220}")
    assert_failed(result, "expected reply code 220, got '554 5.3.2 no service here'", step=0)


def test_negative_greeting_before_a_send_fails(tmp_path):
    script = Script("554 5.3.2 no service here")
    result = run_scenario(tmp_path, script, expect_yaml("EHLO client.example", "{code: 250}"))
    assert_failed(result, "greeting on 'main' was not positive", "no service here", step=0)
    assert script.lines == []  # the EHLO was never sent


def test_greeting_is_read_before_the_first_send(tmp_path):
    """Without a bare expect, the greeting is consumed: the first expect sees the EHLO reply."""
    script = Script(GREETING, ("EHLO client.example", "250 mx.example.test"))
    result = run_scenario(tmp_path, script, expect_yaml("EHLO client.example", "{code: 250}"))
    assert_passed(result)


def test_server_closing_instead_of_greeting_fails(tmp_path):
    script = Script(None, end="close")
    result = run_scenario(tmp_path, script, expect_yaml("EHLO client.example", "{code: 250}"))
    assert_failed(result, "greeting on 'main' was not positive", "the connection closed")


# ----------------------------------------------------------------------- timeouts


def test_no_answer_within_the_step_timeout(tmp_path):
    script = Script(GREETING, ("NOOP", b""))
    steps = expect_yaml("NOOP", "{code: 250}", ["timeout: 0.5"])
    started = time.monotonic()
    result = run_scenario(tmp_path, script, steps)
    assert_failed(result, "no answer within 0.5s", step=0)
    assert time.monotonic() - started < 3


def test_step_timeout_defaults_to_the_target_read_timeout(tmp_path):
    script = Script(GREETING, ("NOOP", b""))
    result = run_scenario(tmp_path, script, expect_yaml("NOOP", "{code: 250}"), read_timeout=0.5)
    assert_failed(result, "no answer within 0.5s", step=0)


def test_no_greeting_within_the_step_timeout(tmp_path):
    script = Script(None)
    result = run_scenario(tmp_path, script, "- expect: {code: 220}\n  timeout: 0.5")
    assert_failed(result, "no answer within 0.5s", step=0)


def test_partial_reply_then_nothing_times_out(tmp_path):
    script = Script(GREETING, ("EHLO client.example", b"250-mx.example.test\r\n250-PIPE"))
    steps = expect_yaml("EHLO client.example", "{code: 250}", ["timeout: 0.5"])
    assert_failed(run_scenario(tmp_path, script, steps), "no answer within 0.5s")


def test_scenario_timeout_exceeded(tmp_path):
    script = Script(GREETING, ("NOOP", b""))
    steps = expect_yaml("NOOP", "{code: 250}", ["timeout: 5"])
    started = time.monotonic()
    result = run_scenario(tmp_path, script, steps, header="timeout: 0.5\n")
    assert_failed(result, "scenario did not finish within 0.5s", step=0)
    assert time.monotonic() - started < 3


def test_scenario_timeout_covers_sleep_steps(tmp_path):
    script = Script(GREETING, ("NOOP", "250 OK"))
    steps = """
    - send: NOOP
      expect: {code: 250}
    - sleep: 3
    """
    result = run_scenario(tmp_path, script, steps, header="timeout: 0.5\n")
    assert_failed(result, "scenario did not finish within 0.5s at step 2")


def test_scenario_within_its_timeout_passes(tmp_path):
    script = Script(GREETING, ("NOOP", "250 OK"))
    steps = """
    - sleep: 0.1
    - send: NOOP
      expect: {code: 250}
    """
    assert_passed(run_scenario(tmp_path, script, steps, header="timeout: 2\n"))
