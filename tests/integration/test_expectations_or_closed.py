"""``or_closed: true``: instead of the response, the server may close the connection (at
once, or after a refusal, or after a refusal the other keys accept and before its next
answer); the scenario then ends there, passed. Anything else is judged as usual."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable

import pytest
from engine_helpers import assert_failed, assert_passed, run_scenario
from scripted import ScriptConn

from conformance.results import ScenarioResult, Status
from conformance.scenario.loader import LoadErrors, load_paths


def smtp(answers: dict[str, Callable[[ScriptConn], bool]]) -> Callable[[ScriptConn], None]:
    """SMTP: each command's verb picks an action; it returns False to end the session."""

    def handle(conn: ScriptConn) -> None:
        conn.sendline("220 mx.example.test ESMTP")
        while True:
            try:
                verb = conn.recv_line(5).decode().partition(" ")[0].upper()
            except (EOFError, TimeoutError):
                return
            act = answers.get(verb)
            if act is None:
                conn.sendline("250 OK")
            elif not act(conn):
                return

    return handle


def close(conn: ScriptConn) -> bool:
    conn.close()
    return False


def refuse_and_close(conn: ScriptConn) -> bool:
    conn.sendline("521 5.5.2 bare LF received")
    conn.close()
    return False


def refuse(conn: ScriptConn) -> bool:
    conn.sendline("550 5.6.0 refused")
    return True


def answer_then_close(conn: ScriptConn) -> bool:
    conn.sendline("250 OK")
    conn.close()
    return False


def ended(result: ScenarioResult, *phrases: str) -> None:
    assert_passed(result)
    assert result.message is not None
    for phrase in phrases:
        assert phrase in result.message, result.message
    assert "which or_closed allows; the steps after that did not run" in result.message


STEPS = """
- send: XSMUGGLE
  expect: {code: 250, or_closed: true}
- send: NOOP
  expect: {code: 250}
"""


def test_a_close_instead_of_the_response_ends_the_scenario_passed(tmp_path):
    result = run_scenario(tmp_path, smtp({"XSMUGGLE": close}), STEPS)
    ended(result, "closed connection 'main' instead of answering at step 1")


def test_a_refusal_then_a_close_ends_the_scenario_passed(tmp_path):
    result = run_scenario(tmp_path, smtp({"XSMUGGLE": refuse_and_close}), STEPS)
    ended(result, "closed connection 'main' after refusing at step 1")


def test_a_refusal_that_the_expectation_takes_then_a_close_before_the_next_answer(tmp_path):
    def later(conn: ScriptConn) -> bool:
        conn.sendline("550 5.6.0 refused")
        time.sleep(0.3)  # the client has moved on to the next step by now
        conn.close()
        return False

    steps = """
    - send: XSMUGGLE
      expect: {class: 5, or_closed: true}
    - send: QUIT
      expect: {code: 221}
    """
    result = run_scenario(tmp_path, smtp({"XSMUGGLE": later}), steps)
    ended(result, "closed connection 'main' after refusing at step 1")
    assert result.step is None


def test_sends_that_read_nothing_keep_the_allowance(tmp_path):
    def later(conn: ScriptConn) -> bool:
        conn.sendline("421 4.7.0 closing")
        conn.recv_line(5)  # the pipelined NOOP
        conn.close()
        return False

    steps = """
    - send: XSMUGGLE
      expect: {class: 4, or_closed: true}
    - send: NOOP
    - send: QUIT
    - expect: {code: 250}
    """
    result = run_scenario(tmp_path, smtp({"XSMUGGLE": later}), steps)
    ended(result, "closed connection 'main' after refusing at step 1")


def test_a_positive_answer_then_a_close_is_still_a_failure(tmp_path):
    result = run_scenario(tmp_path, smtp({"XSMUGGLE": answer_then_close}), STEPS)
    assert_failed(result, "expected a response, but the server closed the connection", step=1)


def test_the_allowance_lasts_until_the_next_answer_only(tmp_path):
    steps = """
    - send: XSMUGGLE
      expect: {class: 5, or_closed: true}
    - send: NOOP
      expect: {code: 250}
    - send: XGONE
      expect: {code: 250}
    """
    result = run_scenario(tmp_path, smtp({"XSMUGGLE": refuse, "XGONE": close}), steps)
    assert_failed(result, "expected a response, but the server closed the connection", step=2)


def test_a_refusal_without_a_close_is_judged_as_usual(tmp_path):
    result = run_scenario(tmp_path, smtp({"XSMUGGLE": refuse}), STEPS, read_timeout=0.5)
    assert_failed(result, "expected reply code 250, got '550 5.6.0 refused'", step=0)


def test_the_expected_answer_goes_on_as_usual(tmp_path):
    result = run_scenario(tmp_path, smtp({}), STEPS)
    assert_passed(result)
    assert result.message is None


SILENCE = """
- send_raw: 'first part\\n.\\n'
- expect: {silence: 0.5, or_closed: true}
- send: NOOP
  expect: {code: 250}
"""


def data_handler(action: Callable[[ScriptConn], object]) -> Callable[[ScriptConn], None]:
    """Reads the data up to the LF.LF, does ``action``, then answers 250 to each line."""

    def handle(conn: ScriptConn) -> None:
        conn.sendline("220 mx.example.test ESMTP")
        conn.recv_until(rb"\n\.\n", 5)
        action(conn)
        try:
            while True:
                conn.recv_line(3)
                conn.sendline("250 OK")
        except (EOFError, TimeoutError, OSError):
            return

    return handle


@pytest.mark.parametrize(
    ("action", "outcome"),
    [
        (lambda conn: None, "silent"),
        (lambda conn: (conn.sendline("521 5.5.2 bare LF"), conn.close()), "after refusing"),
        (lambda conn: conn.close(), "instead of staying silent"),
    ],
)
def test_silence_or_a_close(tmp_path, action, outcome):
    result = run_scenario(tmp_path, data_handler(action), SILENCE)
    if outcome == "silent":
        assert_passed(result)
        assert result.message is None
    else:
        ended(result, f"closed connection 'main' {outcome} at step 2")


def test_silence_broken_by_an_answer_fails(tmp_path):
    result = run_scenario(
        tmp_path, data_handler(lambda conn: conn.sendline("250 2.0.0 queued")), SILENCE
    )
    assert_failed(
        result,
        "expected silence for 0.5s, but the server sent '250 2.0.0 queued' (and did not close "
        "the connection, which or_closed would allow)",
    )


def test_imap_bye_then_close(tmp_path):
    def handle(conn: ScriptConn) -> None:
        conn.sendline("* OK [CAPABILITY IMAP4rev2] ready")
        conn.recv_line(5)
        conn.sendline("* BYE too many errors")
        conn.close()

    result = run_scenario(
        tmp_path,
        handle,
        "- send: a1 NOOP\n  expect: {tagged: OK, or_closed: true}\n- send: a2 NOOP\n"
        "  expect: {tagged: OK}\n",
        protocol="imap",
    )
    ended(result, "after refusing at step 1")


def test_pop3_err_then_close(tmp_path):
    def handle(conn: ScriptConn) -> None:
        conn.sendline("+OK ready")
        conn.recv_line(5)
        conn.sendline("-ERR go away")
        conn.close()

    result = run_scenario(
        tmp_path,
        handle,
        "- send: NOOP\n  expect: {status: ok, or_closed: true}\n",
        protocol="pop3",
    )
    ended(result, "after refusing at step 1")


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ("{closed: true, or_closed: true}", "with 'closed: true' a close is expected anyway"),
        ("{silence: 1, code: 250, or_closed: true}", "'silence' cannot be combined"),
        ("{or_closed: false}", "must be True or left out"),
    ],
)
def test_load_errors(tmp_path, expect, message):
    path = tmp_path / "s.yaml"
    path.write_text(
        "id: t\nprotocol: smtp\ntitle: t\nsteps:\n"
        + textwrap.dedent(f"- send: NOOP\n  expect: {expect}\n"),
        encoding="utf-8",
    )
    with pytest.raises(LoadErrors) as caught:
        load_paths([path])
    assert message in str(caught.value)


def test_silence_with_or_closed_loads(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "id: t\nprotocol: smtp\ntitle: t\nsteps:\n- expect: {silence: 1, or_closed: true}\n",
        encoding="utf-8",
    )
    (scenario,) = load_paths([path])
    exp = scenario.steps[0].expect
    assert exp is not None and exp.or_closed and exp.silence == 1
    assert Status.PASSED.value == "passed"
