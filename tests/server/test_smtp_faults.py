"""Fault injection from the config's ``faults`` rules: injected replies, dropped
connections, delays, and repeatable random choices (fixed seeds)."""

from __future__ import annotations

import time


def test_injected_reply_at_rcpt(start_server):
    srv = start_server(
        faults=[
            {
                "listener": "mx",
                "command": "RCPT",
                "reply_rate": 1.0,
                "reply": "451 4.3.0 injected",
                "seed": 1,
            }
        ]
    )
    client = srv.raw("mx")
    client.ehlo()
    assert client.cmd("MAIL FROM:<sender@remote.test>").code == 250
    for _ in range(3):
        reply = client.cmd("RCPT TO:<alice@example.test>")
        assert reply.code == 451
        assert reply.enhanced == "4.3.0"
        assert reply.lines == ("4.3.0 injected",)
    assert client.cmd("DATA").code == 503  # no recipient was really accepted
    assert client.cmd("NOOP").code == 250  # other commands are untouched


def test_injected_reply_applies_to_its_listener_only(start_server):
    srv = start_server(
        faults=[{"listener": "mx", "command": "RCPT", "reply_rate": 1.0, "reply": "451 4.3.0 x"}]
    )
    client = srv.submission("alice")
    code, _ = client.mail("alice@example.test")
    assert code == 250
    code, _ = client.rcpt("bob@example.test")
    assert code == 250


def test_drop_at_mail_closes_without_a_reply(start_server):
    srv = start_server(faults=[{"listener": "mx", "command": "MAIL", "drop_rate": 1.0}])
    client = srv.raw("mx")
    client.ehlo()
    client.send(b"MAIL FROM:<sender@remote.test>\r\n")
    assert client.read_all_until_close() == b""
    # the server goes on serving other connections
    other = srv.raw("mx")
    assert other.cmd("NOOP").code == 250


def test_drop_at_connect_sends_no_greeting(start_server):
    srv = start_server(faults=[{"command": "CONNECT", "drop_rate": 1.0}])
    client = srv.raw("mx", greeting=False)
    assert client.read_all_until_close() == b""


def test_delay_on_noop_is_measurable(start_server):
    delay = 0.3
    srv = start_server(faults=[{"listener": "mx", "command": "NOOP", "delay": delay}])
    client = srv.raw("mx")
    started = time.monotonic()
    reply = client.cmd("NOOP")
    elapsed = time.monotonic() - started
    assert reply.code == 250  # delayed, not changed
    assert elapsed >= delay


def test_injected_reply_at_data_end_stores_nothing(start_server):
    srv = start_server(
        faults=[{"command": "DATA_END", "reply_rate": 1.0, "reply": "452 4.3.1 injected full"}]
    )
    client = srv.raw("mx")
    client.ehlo()
    reply = client.send_message(b"Subject: fault\r\n\r\n\r\n")
    assert reply.code == 452
    assert reply.enhanced == "4.3.1"
    assert srv.messages("alice") == []
    assert client.cmd("RCPT TO:<alice@example.test>").code == 503  # transaction over


def test_injected_reply_without_an_enhanced_code(start_server):
    srv = start_server(
        faults=[{"command": "HELP", "reply_rate": 1.0, "reply": "554 no help today"}]
    )
    client = srv.raw("mx")
    reply = client.cmd("HELP")
    assert reply.code == 554
    assert reply.text == "no help today"


def _noop_codes(srv, n):
    client = srv.raw("mx")
    codes = [client.cmd("NOOP").code for _ in range(n)]
    assert client.cmd("QUIT").code == 221
    return codes


def test_fixed_seed_gives_the_same_sequence_in_two_runs(start_server):
    rule = {
        "listener": "mx",
        "command": "NOOP",
        "reply_rate": 0.5,
        "reply": "451 4.3.0 injected",
        "seed": 1234,
    }
    first = _noop_codes(start_server(faults=[rule]), 40)
    second = _noop_codes(start_server(faults=[rule]), 40)
    assert first == second
    assert set(first) == {250, 451}  # a real mixture, not all or nothing
    other = _noop_codes(start_server(faults=[{**rule, "seed": 4321}]), 40)
    assert other != first  # the seed matters


def test_fixed_seed_sequence_spans_connections(start_server):
    # the rule's generator belongs to the listener: the sequence continues across sessions
    rule = {"command": "NOOP", "reply_rate": 0.5, "reply": "451 4.3.0 injected", "seed": 7}
    srv = start_server(faults=[rule])
    split = _noop_codes(srv, 10) + _noop_codes(srv, 10)
    whole = _noop_codes(start_server(faults=[rule]), 20)
    assert split == whole
