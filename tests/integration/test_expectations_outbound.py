"""Outbound checks: the sink in target files, ``sink: true``, ``{sink.domain}``, ``{run}``
and the ``outbound`` step (waiting for mail the server relays to the sink, then judging
its envelope sender and text).

The "server under test" is a scripted SMTP service: a ``RELAY <address>`` command makes it
send a message (sender and text given by the test) to the harness's sink from a thread,
the way a queue delivers after its 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import smtplib
import socket
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from engine_helpers import assert_failed, assert_passed, explain
from scripted import ScriptConn, ScriptedServer

from conformance._yaml import LoadError
from conformance.cli import _start_embedded, main
from conformance.results import ScenarioResult, Status
from conformance.scenario.loader import LoadErrors, load_paths
from conformance.scenario.runner import Runner, TargetUnreachable
from conformance.sink import Sink
from conformance.targets import load_target

Handler = Callable[[ScriptConn], None]

ACCOUNTS = {"alice": {"address": "alice@example.test", "username": "alice", "password": "pw"}}


@dataclass
class Hop:
    """Where a Relay sends: a sink's address (the runner makes and serves the sink)."""

    host: str = "127.0.0.1"
    port: int = 0
    domain: str = "sink.test"


class Relay:
    """SMTP: ``RELAY <address> [times]`` answers 250, then sends to the sink from a thread.

    ``sender`` and ``message`` make the transaction; each of ``times`` (default 1)
    transactions follows the last. ``sent`` is set once all of them ended.
    """

    def __init__(
        self,
        sink: Sink | Hop,
        sender: str = "alice@example.test",
        message: bytes = b"Subject: relayed\r\nMessage-ID: <m1@example.test>\r\n\r\nbody\r\n",
        delay: float = 0.0,
    ) -> None:
        self.sink, self.sender, self.message, self.delay = sink, sender, message, delay
        self.sent = threading.Event()
        self.commands: list[str] = []

    def __call__(self, conn: ScriptConn) -> None:
        conn.sendline("220 mx.example.test ESMTP")
        while True:
            try:
                line = conn.recv_line(5).decode()
            except (EOFError, TimeoutError):
                return
            self.commands.append(line)
            verb, _, arg = line.partition(" ")
            if verb.upper() == "QUIT":
                conn.sendline("221 bye")
                return
            if verb.upper() == "RELAY":
                to, _, times = arg.partition(" ")
                conn.sendline("250 queued")
                threading.Thread(target=self.relay, args=(to, int(times or 1)), daemon=True).start()
            else:
                conn.sendline("250 OK")

    def relay(self, to: str, times: int) -> None:
        try:
            for _ in range(times):
                if self.delay:
                    threading.Event().wait(self.delay)
                with smtplib.SMTP(self.sink.host, self.sink.port, timeout=5) as client:
                    client.ehlo("relay.example.test")
                    client.mail(self.sender)
                    if client.rcpt(to)[0] < 300:
                        client.data(self.message)
                    client.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            self.sent.set()


def scenario_file(tmp_path: Path, steps: str, header: str = "sink: true\n") -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(
        "id: integration.outbound.case\nprotocol: smtp\nservice: mx\ntitle: an outbound case\n"
        + textwrap.dedent(header)
        + "steps:\n"
        + textwrap.dedent(steps).strip("\n")
        + "\n",
        encoding="utf-8",
    )
    return path


def write_target(tmp_path: Path, port: int, sink: dict[str, Any] | None) -> Path:
    target: dict[str, Any] = {
        "host": "127.0.0.1",
        "domain": "example.test",
        "timeouts": {"connect": 3, "read": 3},
        "services": {"mx": {"port": port, "tls": "none"}},
        "accounts": ACCOUNTS,
    }
    if sink is not None:
        target["sink"] = sink
    path = tmp_path / "target.yaml"
    path.write_text(yaml.safe_dump(target), encoding="utf-8")
    return path


def recording_relay() -> tuple[list[Relay], Callable[[Sink], Handler]]:
    """A handler factory for run_outbound, and the list holding the one Relay it makes."""
    relays: list[Relay] = []

    def handler(sink: Sink) -> Handler:
        relays.append(Relay(sink))
        return relays[0]

    return relays, handler


def run_outbound(
    tmp_path: Path,
    make_handler: Callable[[Sink], Handler],
    steps: str,
    *,
    header: str = "sink: true\n",
    with_sink: bool = True,
) -> ScenarioResult:
    """Run a scenario against ``make_handler(sink)``, the sink passed to the runner."""
    sink = Sink()
    try:
        with ScriptedServer(make_handler(sink)) as srv:
            spec = {"host": sink.host, "port": sink.port, "domain": sink.domain}
            target = load_target(write_target(tmp_path, srv.port, spec if with_sink else None))
            (scenario,) = load_paths([scenario_file(tmp_path, steps, header)], accounts={"alice"})
            runner = Runner(target, sink=sink if with_sink else None)
            return asyncio.run(runner.run_one(scenario))
    finally:
        sink.close()


def sink_lines(result: ScenarioResult) -> list[str]:
    return [e.text for e in result.transcript if e.conn == "sink"]


# ---------------------------------------------------------------------- outbound steps


def test_outbound_waits_for_the_message_then_checks_sender_and_text(tmp_path):
    relay: list[Relay] = []

    def handler(sink: Sink) -> Handler:
        relay.append(Relay(sink, delay=0.3))
        return relay[0]

    result = run_outbound(
        tmp_path,
        handler,
        """
        - send: "RELAY accept.{run}@{sink.domain}"
          expect: {code: 250}
        - outbound: {to: "accept.{run}@{sink.domain}", within: 5}
          expect:
            sender: "{account.alice.address}"
            text: '(?m)^Subject: relayed$\\n(?s:.*)^body$'
            text_absent: ['(?im)^Return-Path:']
        """,
    )
    assert_passed(result)
    lines = sink_lines(result)
    assert lines[0].startswith("waiting up to 5s for a message for <accept.")
    assert any(
        line.startswith("accepted from 127.0.0.1 (EHLO relay.example.test)") for line in lines
    )
    assert "| Subject: relayed" in lines and "| body" in lines


def test_outbound_says_that_nothing_arrived(tmp_path):
    result = run_outbound(
        tmp_path,
        Relay,
        """
        - send: NOOP
          expect: {code: 250}
        - outbound: {to: "accept.{run}@{sink.domain}", within: 0.3}
        """,
    )
    assert_failed(
        result,
        "a message for <accept.",
        "did not reach the sink within 0.3s",
        "no delivery attempt",
    )
    assert result.step == 1


def test_outbound_reports_the_envelope_sender_it_got(tmp_path):
    result = run_outbound(
        tmp_path,
        Relay,
        """
        - send: "RELAY x.{run}@{sink.domain}"
          expect: {code: 250}
        - outbound: {to: "x.{run}@{sink.domain}", within: 5}
          expect: {sender: ""}
        """,
    )
    assert_failed(result, "expected the envelope sender (MAIL FROM) <>, got <alice@example.test>")


def test_null_sender_is_written_as_an_empty_string(tmp_path):
    result = run_outbound(
        tmp_path,
        lambda sink: Relay(sink, sender=""),
        """
        - send: "RELAY x.{run}@{sink.domain}"
          expect: {code: 250}
        - outbound: {to: "x.{run}@{sink.domain}", within: 5}
          expect: {sender: ""}
        """,
    )
    assert_passed(result)


def test_text_and_text_absent_failures_show_the_message(tmp_path):
    result = run_outbound(
        tmp_path,
        lambda sink: Relay(sink, message=b"Return-Path: <a@b>\r\nSubject: s\r\n\r\nbody\r\n"),
        """
        - send: "RELAY x.{run}@{sink.domain}"
          expect: {code: 250}
        - outbound: {to: "x.{run}@{sink.domain}", within: 5}
          expect:
            text: '(?m)^Received:'
            text_absent: ['(?im)^return-path:']
        """,
    )
    assert_failed(
        result,
        "expected the message at the sink to match /(?m)^Received:/ (it begins 'Return-Path:",
        "expected no match for /(?im)^return-path:/ in the message at the sink, got "
        "'Return-Path: <a@b>'",
    )


def test_attempts_count_refusals_at_rcpt(tmp_path):
    steps = """
        - send: "RELAY reject.{run}@{sink.domain}"
          expect: {code: 250}
        - outbound: {to: "reject.{run}@{sink.domain}", within: 5, attempts: 1}
        """
    result = run_outbound(tmp_path, Relay, steps)
    assert_passed(result)
    assert any(
        "attempt 1: MAIL FROM:<alice@example.test>, refused at RCPT with 550" in line
        for line in sink_lines(result)
    )


def test_a_refused_recipient_is_no_message(tmp_path):
    result = run_outbound(
        tmp_path,
        Relay,
        """
        - send: "RELAY reject.{run}@{sink.domain}"
          expect: {code: 250}
        - outbound: {to: "reject.{run}@{sink.domain}", within: 0.5}
        """,
    )
    assert_failed(result, "did not reach the sink", "1 attempt(s) for <reject.", "(550 at RCPT)")


def test_attempts_wait_for_a_retry_and_check_the_message_accepted(tmp_path):
    steps = """
        - send: "RELAY defer1.{run}@{sink.domain} 2"
          expect: {code: 250}
        - outbound: {to: "defer1.{run}@{sink.domain}", within: 5, attempts: 2}
          expect: {sender: "alice@example.test"}
        """
    result = run_outbound(tmp_path, Relay, steps)
    assert_passed(result)
    text = "\n".join(sink_lines(result))
    assert "attempt 1: MAIL FROM:<alice@example.test>, answered after the data with 451" in text
    assert "attempt 2: MAIL FROM:<alice@example.test>, answered after the data with 250" in text


def test_attempts_not_reached_says_what_the_sink_saw(tmp_path):
    result = run_outbound(
        tmp_path,
        Relay,
        """
        - send: "RELAY defer1.{run}@{sink.domain} 1"
          expect: {code: 250}
        - outbound: {to: "defer1.{run}@{sink.domain}", within: 0.8, attempts: 2}
        """,
    )
    assert_failed(
        result,
        "2 delivery attempt(s) for <defer1.",
        "did not reach the sink within 0.8s: 1 attempt(s)",
        "(451 after the data), 0 message(s) accepted",
    )


def test_expectations_need_an_accepted_message(tmp_path):
    result = run_outbound(
        tmp_path,
        Relay,
        """
        - send: "RELAY reject.{run}@{sink.domain}"
          expect: {code: 250}
        - outbound: {to: "reject.{run}@{sink.domain}", within: 5, attempts: 1}
          expect: {sender: ""}
        """,
    )
    assert_failed(result, "no message for <reject.", "was accepted by the sink")


def test_capture_from_the_message_at_the_sink(tmp_path):
    relays, handler = recording_relay()

    result = run_outbound(
        tmp_path,
        handler,
        """
        - send: "RELAY x.{run}@{sink.domain}"
          expect: {code: 250}
        - outbound: {to: "x.{run}@{sink.domain}", within: 5}
          capture: {mid: '(?im)^Message-ID: *<([^>]+)>'}
        - send: "NOOP {mid}"
          expect: {code: 250}
        """,
    )
    assert_passed(result)
    assert "NOOP m1@example.test" in relays[0].commands


def test_run_is_ten_hex_digits_new_for_each_execution(tmp_path):
    seen: list[str] = []

    def handler(sink: Sink) -> Handler:
        relay = Relay(sink)

        def handle(conn: ScriptConn) -> None:
            relay(conn)
            seen.extend(c for c in relay.commands if c.startswith("NOOP"))

        return handle

    steps = """
        - send: "NOOP {run}"
          expect: {code: 250}
        - send: "NOOP {run}"
          expect: {code: 250}
        - send: QUIT
          expect: {code: 221}
        """
    for _ in range(2):
        assert_passed(run_outbound(tmp_path, handler, steps, header=""))
    tokens = [c.split()[1] for c in seen]
    assert len(tokens) == 4 and all(re.fullmatch(r"[0-9a-f]{10}", t) for t in tokens)
    assert tokens[0] == tokens[1] and tokens[2] == tokens[3] and tokens[0] != tokens[2]


def test_sink_scenario_is_not_applicable_without_a_sink(tmp_path):
    relays, handler = recording_relay()

    result = run_outbound(
        tmp_path,
        handler,
        """
        - send: "RELAY x.{run}@{sink.domain}"
          expect: {code: 250}
        """,
        with_sink=False,
    )
    assert result.status is Status.NOT_APPLICABLE, explain(result)
    assert "the target has no outbound sink" in (result.message or "")
    assert relays[0].commands == []


def test_runner_serves_the_sink_the_target_names_and_frees_its_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = {"port": port, "domain": "out.example"}
    with ScriptedServer(Relay(Hop(port=port, domain="out.example"))) as srv:
        target = load_target(write_target(tmp_path, srv.port, spec))
        assert target.sink is not None and target.sink.host == "127.0.0.1"
        scenario_path = scenario_file(
            tmp_path,
            """
            - send: "RELAY x.{run}@{sink.domain}"
              expect: {code: 250}
            - outbound: {to: "x.{run}@out.example", within: 5}
              expect: {sender: "alice@example.test"}
            """,
        )
        (scenario,) = load_paths([scenario_path], accounts={"alice"})
        (result,) = asyncio.run(Runner(target).run([scenario]))
    assert_passed(result)
    with socket.socket() as s:  # the sink is gone: its port can be bound again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_runner_makes_no_sink_when_no_scenario_needs_it(tmp_path):
    with socket.socket() as busy:  # the target's sink port is taken: no matter, unused
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with ScriptedServer(Relay(Hop())) as srv:
            target = load_target(write_target(tmp_path, srv.port, {"port": port}))
            path = scenario_file(tmp_path, "- send: NOOP\n  expect: {code: 250}\n", header="")
            (scenario,) = load_paths([path], accounts={"alice"})
            (result,) = asyncio.run(Runner(target).run([scenario]))
        assert_passed(result)


def test_a_sink_that_cannot_listen_makes_the_target_unreachable(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with ScriptedServer(Relay(Hop())) as srv:
            target = load_target(write_target(tmp_path, srv.port, {"port": port}))
            path = scenario_file(tmp_path, "- send: NOOP\n  expect: {code: 250}\n")
            (scenario,) = load_paths([path], accounts={"alice"})
            with pytest.raises(TargetUnreachable, match="the outbound sink cannot listen on"):
                asyncio.run(Runner(target).run([scenario]))


# ---------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    ("header", "steps", "message"),
    [
        (
            "",
            '- send: "RCPT TO:<a@{sink.domain}>"\n  expect: {code: 250}\n',
            "{sink.domain} needs 'sink: true' at the top of the scenario",
        ),
        (
            "",
            '- outbound: {to: "a@b.test"}\n',
            "waiting for mail at the sink needs 'sink: true'",
        ),
        (
            "sink: true\n",
            '- outbound: {to: "a@{sink.domain}"}\n  conn: main\n',
            "an outbound step reads the sink, not a connection",
        ),
        (
            "sink: true\n",
            '- outbound: {to: "a@{sink.domain}"}\n  expect: {code: 250}\n',
            "'code' does not apply to mail at the sink (an outbound step expects: sender, text, "
            "text_absent)",
        ),
        (
            "sink: true\n",
            '- send: NOOP\n  expect: {sender: ""}\n',
            "'sender' is an expectation of outbound steps",
        ),
        (
            "sink: true\n",
            "- outbound: {to: a@b.test, within: 0}\n",
            "steps[0].outbound.within",
        ),
        ("", "- send: NOOP {nope}\n  expect: {code: 250}\n", "or {run}"),
    ],
)
def test_load_errors(tmp_path, header, steps, message):
    with pytest.raises(LoadErrors) as caught:
        load_paths([scenario_file(tmp_path, steps, header)])
    assert message in str(caught.value)


def test_sink_true_makes_sink_domain_and_run_known(tmp_path):
    steps = """
        - send: "RCPT TO:<accept.{run}@{sink.domain}>"
          expect: {code: 250}
        - outbound: {to: "accept.{run}@{sink.domain}"}
        """
    (scenario,) = load_paths([scenario_file(tmp_path, steps)])
    assert scenario.sink
    assert scenario.steps[1].action.within == 30.0  # type: ignore[union-attr]


# ---------------------------------------------------------------------- targets


def test_target_sink_section_defaults(tmp_path):
    target = load_target(write_target(tmp_path, 25, {"port": 2525}))
    assert target.sink is not None
    assert (target.sink.host, target.sink.port, target.sink.domain) == (
        "127.0.0.1",
        2525,
        "sink.test",
    )
    assert target.variables()["sink.domain"] == "sink.test"
    assert "sink.domain" not in load_target(write_target(tmp_path, 25, None)).variables()


@pytest.mark.parametrize(
    ("sink", "message"),
    [
        ({"port": 2525, "name": "x"}, "unknown key 'name' in sink"),
        ({"host": "127.0.0.1"}, "'port' is a required property"),
        ({"port": 0}, "sink.port"),
        ({"port": 2525, "domain": "bad domain"}, "sink.domain"),
    ],
)
def test_target_sink_section_errors(tmp_path, sink, message):
    with pytest.raises(LoadError) as caught:
        load_target(write_target(tmp_path, 25, sink))
    assert message in str(caught.value)


# ---------------------------------------------------------------------- the sink itself


def test_the_sink_records_a_refused_rcpt_as_an_attempt():
    async def body() -> None:
        sink = Sink()
        await sink.start()
        try:

            def send() -> None:
                with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
                    client.ehlo("relay.test")
                    client.mail("")
                    assert client.rcpt("reject.1@sink.test")[0] == 550
                    assert client.rcpt("ok.1@sink.test")[0] == 250
                    client.data(b"Subject: x\r\n\r\ny\r\n")

            await asyncio.to_thread(send)
            await sink.wait_for(lambda s: len(s.attempts) == 2, 5)
            refused, accepted = sink.attempts
            assert (refused.recipients, refused.code, refused.stage, refused.sender) == (
                ("reject.1@sink.test",),
                550,
                "rcpt",
                "",
            )
            assert (accepted.recipients, accepted.code, accepted.stage) == (
                ("ok.1@sink.test",),
                250,
                "data",
            )
            assert sink.attempts_for("REJECT.1@sink.test") == [refused]
        finally:
            await sink.stop()

    asyncio.run(body())


# ---------------------------------------------------------------------- the embedded server


def test_embedded_reference_server_relays_the_sink_domain_to_the_sink(tmp_path):
    thread, target_path, sink = _start_embedded(tmp_path)
    try:
        target = load_target(target_path)
        assert target.sink is not None
        assert (target.sink.host, target.sink.port, target.sink.domain) == (
            sink.host,
            sink.port,
            sink.domain,
        )
        assert thread.server is not None
        config = thread.server.config
        assert config.queue.test_timing and config.queue.retry_interval <= 1.0
        (route,) = [r for r in config.relay.routes if r.domain == sink.domain]
        assert (route.host, route.port) == ("127.0.0.1", sink.port)
    finally:
        thread.stop()
        sink.close()


def test_check_runs_outbound_scenarios_against_the_embedded_server():
    result = CliRunner().invoke(
        main,
        [
            "check",
            "--no-progress",
            "-k",
            "outbound.relay-trace",
            "-k",
            "outbound.retry-after-4xx",
            "-k",
            "outbound.dsn-on-refusal",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "3 passed, 0 failed" in result.output
    with contextlib.suppress(AttributeError):
        assert "outbound sink (sink.test) 127.0.0.1:" in result.stderr


def test_a_given_sink_serves_one_run_and_later_runs_listen_on_its_port_again(tmp_path):
    sink = Sink()
    port = sink.port
    with ScriptedServer(Relay(Hop(port=port))) as srv:
        spec = {"host": sink.host, "port": port, "domain": sink.domain}
        target = load_target(write_target(tmp_path, srv.port, spec))
        path = scenario_file(
            tmp_path,
            """
            - send: "RELAY x.{run}@{sink.domain}"
              expect: {code: 250}
            - outbound: {to: "x.{run}@{sink.domain}", within: 5}
            """,
        )
        (scenario,) = load_paths([path], accounts={"alice"})
        runner = Runner(target, sink=sink)
        first = asyncio.run(runner.run_one(scenario))
        second = asyncio.run(runner.run_one(scenario))
    assert_passed(first)
    assert_passed(second)
    assert len(sink.messages) == 1  # the second run had a sink of its own, on the same port


def test_scenarios_started_together_share_one_sink(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ScriptedServer(Relay(Hop(port=port))) as srv:
        target = load_target(write_target(tmp_path, srv.port, {"port": port}))
        path = scenario_file(
            tmp_path,
            """
            - send: "RELAY x.{run}@{sink.domain}"
              expect: {code: 250}
            - outbound: {to: "x.{run}@{sink.domain}", within: 5}
            """,
        )
        (scenario,) = load_paths([path], accounts={"alice"})
        runner = Runner(target)

        async def both() -> list[ScenarioResult]:
            return list(await asyncio.gather(runner.run_one(scenario), runner.run_one(scenario)))

        results = asyncio.run(both())
    for result in results:
        assert_passed(result)
