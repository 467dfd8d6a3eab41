"""``send_raw`` (exact bytes, escapes, ``repeat``, variables) checked on the server side, and
``capture`` (a value from one response used in later sends and regexes)."""

from __future__ import annotations

import pytest
from engine_helpers import Script, assert_failed, assert_passed, expect_yaml, run_scenario

GREETING = "220 mx.example.test ESMTP ready"

# (send_raw value as written in the YAML file, the bytes the server must receive)
RAW_CASES = {
    "bare-lf": (r"'MAIL FROM:<a@b>\n'", b"MAIL FROM:<a@b>\n"),
    "bare-cr-inside": (r"'NOOP\rx\r\n'", b"NOOP\rx\r\n"),
    "nul": (r"'NOOP\0x\r\n'", b"NOOP\x00x\r\n"),
    "8-bit-byte": (r"'MAIL FROM:<\xff@b>\r\n'", b"MAIL FROM:<\xff@b>\r\n"),
    "hex-escapes-any-case": (r"'\x4E\x4f\x4F\x50\r\n'", b"NOOP\r\n"),
    "tab-and-backslash": (r"'NOOP\tx\\y\r\n'", b"NOOP\tx\\y\r\n"),
    "non-ascii-as-utf8": ("'MAIL FROM:<\u00e9@b>\\r\\n'", "MAIL FROM:<\u00e9@b>\r\n".encode()),
    "yaml-double-quoted-escape-is-a-character": ('"NOOP \\xff\\r\\n"', b"NOOP \xc3\xbf\r\n"),
    "account-variable": (
        r"'MAIL FROM:<{account.alice.address}>\r\n'",
        b"MAIL FROM:<alice@example.test>\r\n",
    ),
    "target-variables-and-braces": (
        r"'NOOP {domain} {host} {{x}} {5}\r\n'",
        b"NOOP example.test 127.0.0.1 {x} {5}\r\n",
    ),
}


def _raw_receiver(size: int, got: list[bytes]):
    def handler(conn):
        conn.sendline(GREETING)
        got.append(conn.recv_exact(size, timeout=3))
        conn.sendline("250 2.0.0 OK")
        conn.expect("QUIT")  # nothing was appended to the raw bytes
        conn.sendline("221 2.0.0 bye")

    return handler


@pytest.mark.parametrize(("value", "expected"), RAW_CASES.values(), ids=RAW_CASES)
def test_send_raw_bytes_arrive_exactly(tmp_path, value, expected):
    got: list[bytes] = []
    steps = f"""
    - send_raw: {value}
      expect: {{code: 250}}
    - send: QUIT
      expect: {{code: 221}}
    """
    result = run_scenario(tmp_path, _raw_receiver(len(expected), got), steps)
    assert_passed(result)
    assert got == [expected]


def test_send_raw_100k_line_via_repeat(tmp_path):
    got: list[bytes] = []

    def handler(conn):
        conn.sendline(GREETING)
        got.append(conn.recv_exact(102400 + 2, timeout=5))
        conn.sendline("500 5.5.2 line too long")
        conn.expect("QUIT")
        conn.sendline("221 2.0.0 bye")

    steps = r"""
    - send_raw: 'A'
      repeat: 102400
    - send_raw: '\r\n'
      expect: {code: 500, enhanced: '5.5.2'}
    - send: QUIT
      expect: {code: 221}
    """
    assert_passed(run_scenario(tmp_path, handler, steps))
    assert got == [b"A" * 102400 + b"\r\n"]


def test_send_raw_repeat_of_a_whole_command_pipelines_it(tmp_path):
    def handler(conn):
        conn.sendline(GREETING)
        for _ in range(3):
            conn.expect("NOOP")
        conn.send(b"250 2.0.0 one\r\n250 2.0.0 two\r\n250 2.0.0 three\r\n")
        conn.wait_closed()

    steps = r"""
    - send_raw: 'NOOP\r\n'
      repeat: 3
    - expect: {code: 250, text: one}
    - expect: {code: 250, text: two}
    - expect: {code: 250, text: three}
    """
    assert_passed(run_scenario(tmp_path, handler, steps))


def test_send_raw_without_expect_reads_nothing(tmp_path):
    """A raw send without ``expect`` leaves the reply for the next expect-only step."""
    got: list[bytes] = []
    steps = r"""
    - send_raw: 'NOOP\r\n'
    - expect: {code: 250}
    - send: QUIT
      expect: {code: 221}
    """
    assert_passed(run_scenario(tmp_path, _raw_receiver(6, got), steps))
    assert got == [b"NOOP\r\n"]


def test_send_line_gets_crlf_appended(tmp_path):
    got: list[bytes] = []
    steps = """
    - send: 'NOOP  trailing spaces  '
      expect: {code: 250}
    - send: QUIT
      expect: {code: 221}
    """
    assert_passed(run_scenario(tmp_path, _raw_receiver(25, got), steps))
    assert got == [b"NOOP  trailing spaces  \r\n"]


# ----------------------------------------------------------------------- capture

BANNER = "220 mx-7.example.test ESMTP ready"


def test_capture_used_in_later_send_raw_and_regex(tmp_path):
    script = Script(
        BANNER,
        ("HELO mx-7.example.test", "250 mx-7.example.test hello"),
        ("VRFY mx-7.example.test", "252 2.1.5 mx-7.example.test"),
    )
    steps = r"""
    - expect: {code: 220}
      capture: {banner: '^(\S+) ESMTP'}
    - send: HELO {banner}
      expect: {code: 250, text: '^{banner} hello$'}
    - send_raw: 'VRFY {banner}\r\n'
      expect: {code: 252, lines: ['^2\.1\.5 {banner}$']}
    """
    assert_passed(run_scenario(tmp_path, script, steps))
    assert script.lines == [b"HELO mx-7.example.test", b"VRFY mx-7.example.test"]


def test_captured_value_matches_literally_in_a_regex(tmp_path):
    """``mx-7.example.test`` in a regex must not match ``mx-7Xexample-test``."""
    script = Script(BANNER, ("HELO mx-7.example.test", "250 mx-7Xexample-test hello"))
    steps = r"""
    - expect: {code: 220}
      capture: {banner: '^(\S+) ESMTP'}
    - send: HELO {banner}
      expect: {code: 250, text: '^{banner} hello$'}
    """
    result = run_scenario(tmp_path, script, steps)
    assert_failed(result, "expected text matching /^mx-7.example.test hello$/", step=1)


def test_capture_without_group_stores_the_whole_match(tmp_path):
    script = Script(
        GREETING,
        ("EHLO client.example", "250-mx.example.test\n250 SIZE 10240000"),
        ("XCHECK SIZE 10240000", "250 OK"),
    )
    steps = r"""
    - send: EHLO client.example
      capture: {size: 'SIZE \d+'}
    - send: XCHECK {size}
      expect: {code: 250}
    """
    assert_passed(run_scenario(tmp_path, script, steps))


def test_capture_that_does_not_match_fails(tmp_path):
    script = Script(GREETING, ("NOOP", "250 2.0.0 OK"))
    steps = expect_yaml("NOOP", "{code: 250}") + "  capture: {qid: 'queued as (\\w+)'}\n"
    result = run_scenario(tmp_path, script, steps)
    assert_failed(result, "capture 'qid'", "did not match", step=0)


def test_capture_is_checked_after_the_expectation(tmp_path):
    """A failed expectation is reported as such, not as a failed capture."""
    script = Script(GREETING, ("NOOP", "550 no"))
    steps = expect_yaml("NOOP", "{code: 250}") + "  capture: {qid: 'queued as (\\w+)'}\n"
    result = run_scenario(tmp_path, script, steps)
    assert_failed(result, "expected reply code 250, got '550 no'")


def test_capture_in_imap_from_untagged_data(tmp_path):
    select = (
        "* 2 EXISTS\n* OK [UIDVALIDITY 3857529045] UIDs valid\n* OK [UIDNEXT 4392] next\n"
        "a1 OK [READ-WRITE] SELECT completed"
    )
    script = Script(
        "* OK IMAP ready",
        ("a1 SELECT INBOX", select),
        ("a2 UID FETCH 4392 (UID)", "* 3 FETCH (UID 4392)\na2 OK done"),
        ("a3 STATUS INBOX (UIDVALIDITY)", "* STATUS INBOX (UIDVALIDITY 3857529045)\na3 OK done"),
    )
    steps = r"""
    - send: a1 SELECT INBOX
      capture: {uidvalidity: 'UIDVALIDITY (\d+)', uidnext: 'UIDNEXT (\d+)'}
      expect: {tagged: OK}
    - send: a2 UID FETCH {uidnext} (UID)
      expect: {tagged: OK, untagged: ['FETCH \(UID {uidnext}\)']}
    - send: a3 STATUS INBOX (UIDVALIDITY)
      expect: {tagged: OK, untagged: ['UIDVALIDITY {uidvalidity}\)']}
    """
    assert_passed(run_scenario(tmp_path, script, steps, protocol="imap"))
    assert b"a2 UID FETCH 4392 (UID)" in script.lines


def test_capture_in_pop3_from_the_body(tmp_path):
    script = Script(
        "+OK ready",
        ("UIDL", "+OK\n1 whqtswO00WBw418f9t5JxYwZ\n2 QhdPYR:00WBw1Ph7x7\n."),
        ("XUID QhdPYR:00WBw1Ph7x7", "+OK 2"),
    )
    steps = r"""
    - send: UIDL
      capture: {second: '(?m)^2 (\S+)$'}
      expect: {status: ok}
    - send: XUID {second}
      expect: {status: ok, text: '^2$'}
    """
    assert_passed(run_scenario(tmp_path, script, steps, protocol="pop3"))
