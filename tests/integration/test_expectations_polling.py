"""``until: {within, every}``: a step's command is sent again until its expectation holds,
for things that happen some time after the server answered (a bounce in a mailbox)."""

from __future__ import annotations

import textwrap

import pytest
from engine_helpers import assert_failed, assert_passed, run_scenario
from scripted import ScriptConn

from conformance.scenario.loader import LoadErrors, load_paths


class Counter:
    """SMTP: ``COUNT`` answers ``250 <n>``, n = 1, 2, 3...; ``SAY x`` answers ``250 x``."""

    def __init__(self, close_at: int | None = None) -> None:
        self.count = 0
        self.close_at = close_at
        self.said: list[str] = []

    def __call__(self, conn: ScriptConn) -> None:
        conn.sendline("220 mx.example.test ESMTP")
        while True:
            try:
                line = conn.recv_line(5).decode()
            except (EOFError, TimeoutError):
                return
            verb, _, arg = line.partition(" ")
            if verb == "COUNT":
                self.count += 1
                if self.count == self.close_at:
                    conn.close()
                    return
                conn.sendline(f"250 {self.count}")
            elif verb == "SAY":
                self.said.append(arg)
                conn.sendline(f"250 {arg}")
            else:
                conn.sendline("250 OK")


def test_polls_until_the_expectation_holds_and_captures_from_that_answer(tmp_path):
    server = Counter()
    result = run_scenario(
        tmp_path,
        server,
        """
        - send: COUNT
          until: {within: 5, every: 0.05}
          capture: {n: '(\\d+)'}
          expect: {code: 250, text: '^[3-9]$'}
        - send: "SAY {n}"
          expect: {code: 250}
        """,
    )
    assert_passed(result)
    assert server.count == 3 and server.said == ["3"]
    assert any(e.text == "polled: 3 tries" for e in result.transcript)


def test_gives_up_after_within_and_reports_the_last_answer(tmp_path):
    server = Counter()
    result = run_scenario(
        tmp_path,
        server,
        """
        - send: COUNT
          until: {within: 0.5, every: 0.1}
          expect: {code: 250, text: '^99$'}
        """,
    )
    assert_failed(result, "expected text matching /^99$/, got '", "tries in 0.5s, one every 0.1s")
    assert 3 <= server.count <= 7
    assert f"got '{server.count}'" in (result.message or "")


def test_a_close_while_polling_fails_at_once(tmp_path):
    result = run_scenario(
        tmp_path,
        Counter(close_at=2),
        """
        - send: COUNT
          until: {within: 30, every: 0.05}
          expect: {code: 250, text: '^5$'}
        """,
    )
    assert_failed(result, "expected a response, but the server closed the connection")
    assert result.duration < 10


def imap_search(conn: ScriptConn) -> None:
    """IMAP: every ``SEARCH`` finds message 7 from the third try on, with the same tag."""
    conn.sendline("* OK [CAPABILITY IMAP4rev2] ready")
    tries = 0
    while True:
        try:
            tag, _, rest = conn.recv_line(5).decode().partition(" ")
        except (EOFError, TimeoutError):
            return
        if rest.upper().startswith("SEARCH"):
            tries += 1
            conn.sendline("* SEARCH 7" if tries >= 3 else "* SEARCH")
        conn.sendline(f"{tag} OK done")


def test_imap_polling_sends_the_same_tag_again(tmp_path):
    result = run_scenario(
        tmp_path,
        imap_search,
        """
        - send: a1 SEARCH TEXT x
          until: {within: 5, every: 0.05}
          capture: {n: '(?m)^\\* SEARCH (\\d+)'}
          expect: {tagged: OK, untagged: ['^\\* SEARCH \\d+']}
        - send: a2 FETCH {n} FLAGS
          expect: {tagged: OK}
        """,
        protocol="imap",
    )
    assert_passed(result)
    sent = [e.text for e in result.transcript if e.direction == "C"]
    assert sent == ["a1 SEARCH TEXT x"] * 3 + ["a2 FETCH 7 FLAGS"]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("- send: NOOP\n  until: {within: 1}\n", "'until' repeats a 'send' or 'send_raw'"),
        (
            "- auth: {mechanism: PLAIN, account: alice}\n  until: {within: 1}\n"
            "  expect: {code: 235}\n",
            "this step has no such pair",
        ),
        (
            "- send: QUIT\n  until: {within: 1}\n  expect: {code: 221, closed: true}\n",
            "cannot be combined with 'closed', 'silence' or 'or_closed'",
        ),
        (
            "- send: NOOP\n  until: {within: 1, every: 2}\n  expect: {code: 250}\n",
            "'every' (2s) is longer than 'within' (1s)",
        ),
        ("- send: NOOP\n  until: {every: 2}\n  expect: {code: 250}\n", "'within'"),
    ],
)
def test_load_errors(tmp_path, steps, message):
    path = tmp_path / "s.yaml"
    path.write_text(
        "id: t\nprotocol: smtp\ntitle: t\nsteps:\n" + textwrap.dedent(steps), encoding="utf-8"
    )
    with pytest.raises(LoadErrors) as caught:
        load_paths([path])
    assert message in str(caught.value)
