"""Drive the scenario engine against scripted servers and look at the verdict.

A test gives a *handler* (what the server says, see ``tests/scripted.py``) and the
``steps:`` of a scenario; :func:`run_scenario` starts a :class:`ScriptedServer`, writes a
target file pointing at it and the scenario file, runs the scenario through
:class:`~conformance.scenario.runner.Runner` and returns the
:class:`~conformance.results.ScenarioResult`. Server-side assertion errors (the client sent
something the script did not expect) are raised when the server stops, so they fail the
test too.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from click.testing import CliRunner
from scripted import ScriptConn, ScriptedServer, TestCerts

from conformance.cli import main
from conformance.results import ScenarioResult, Status
from conformance.scenario.loader import load_paths
from conformance.scenario.runner import Runner
from conformance.targets import load_target

__all__ = [
    "Script",
    "assert_failed",
    "assert_malformed",
    "assert_passed",
    "expect_yaml",
    "explain",
    "run_cli",
    "run_scenario",
    "send_reply",
]

Handler = Callable[[ScriptConn], None]
ServiceTls = Literal["none", "starttls", "implicit"]
Reply = str | bytes

DEFAULT_SERVICE = {"smtp": "mx", "pop3": "pop3", "imap": "imap"}
GREETING = {
    "smtp": "220 mx.example.test ESMTP ready",
    "pop3": "+OK POP3 server ready",
    "imap": "* OK [CAPABILITY IMAP4rev2] IMAP server ready",
}
ACCOUNTS = {"alice": {"address": "alice@example.test", "username": "alice", "password": "pw"}}


def send_reply(conn: ScriptConn, reply: Reply) -> None:
    """Send a reply: ``bytes`` exactly as given; ``str`` line by line, each line + CRLF."""
    if isinstance(reply, bytes):
        conn.send(reply)
    else:
        conn.send("".join(line + "\r\n" for line in reply.split("\n")))


class Script:
    """A handler playing a fixed conversation, and a record of every connection's lines.

    Args:
        greeting: sent first (``None``: nothing is sent).
        exchanges: ``(command, reply)`` pairs: the client must send a line equal to
            ``command`` (case-insensitively), then ``reply`` is sent (see :func:`send_reply`).
        end: after the last exchange, ``"wait"`` for the client to close, ``"close"`` the
            connection at once, or ``"abort"`` it with a TCP RST.
    """

    def __init__(
        self,
        greeting: Reply | None,
        *exchanges: tuple[str, Reply],
        end: Literal["wait", "close", "abort"] = "wait",
    ) -> None:
        self.greeting = greeting
        self.exchanges = exchanges
        self.end = end
        self.received: list[list[bytes]] = []  # the lines of each connection

    def __call__(self, conn: ScriptConn) -> None:
        self.received.append(conn.received)
        if self.greeting is not None:
            send_reply(conn, self.greeting)
        for command, reply in self.exchanges:
            conn.expect(re.escape(command))
            send_reply(conn, reply)
        if self.end == "wait":
            conn.wait_closed(timeout=5.0)
        elif self.end == "abort":
            conn.abort()

    @property
    def lines(self) -> list[bytes]:
        """Every line received on every connection, in order."""
        return [line for conn in self.received for line in conn]


def _target(
    services: dict[str, tuple[int, ServiceTls]], certs: TestCerts | None, read_timeout: float
) -> dict[str, Any]:
    target: dict[str, Any] = {
        "host": "127.0.0.1",
        "domain": "example.test",
        "timeouts": {"connect": 3, "read": read_timeout},
        "services": {name: {"port": port, "tls": tls} for name, (port, tls) in services.items()},
        "accounts": ACCOUNTS,
    }
    if certs is not None:
        target["tls"] = {"verify": True, "ca_file": str(certs.ca_file)}
    return target


def run_scenario(
    tmp_path: Path,
    handler: Handler,
    steps: str,
    *,
    protocol: str = "smtp",
    service: str | None = None,
    tls: ServiceTls = "none",
    certs: TestCerts | None = None,
    header: str = "",
    preflight: bool = False,
    read_timeout: float = 5.0,
    more_services: dict[str, tuple[Handler, ServiceTls]] | None = None,
) -> ScenarioResult:
    """Run one scenario whose ``steps:`` are ``steps`` against a server running ``handler``.

    Args:
        steps: the YAML block sequence that goes under ``steps:`` (dedented here).
        header: more top-level YAML lines (``timeout: 1``, ``requires: [STARTTLS]``).
        tls: the service's TLS mode in the target; ``implicit`` makes the server implicit TLS.
        preflight: use ``Runner.run`` (preflight, then the scenario) instead of ``run_one``.
        read_timeout: the target's read timeout (a step's default ``timeout``).
        more_services: other services of the target, by name: ``(handler, tls)``.
    """
    service = service or DEFAULT_SERVICE[protocol]
    modes = [tls, *(mode for _, mode in (more_services or {}).values())]
    if any(mode != "none" for mode in modes) and certs is None:
        raise ValueError("a TLS service needs certs")
    scenario_text = (
        f"id: integration.{protocol}.case\n"
        f"protocol: {protocol}\n"
        f"service: {service}\n"
        "title: an integration test scenario\n"
        + textwrap.dedent(header)
        + "steps:\n"
        + textwrap.dedent(steps).strip("\n")
        + "\n"
    )
    specs = {service: (handler, tls), **(more_services or {})}
    with contextlib.ExitStack() as stack:
        ports: dict[str, tuple[int, ServiceTls]] = {}
        for name, (serve, mode) in specs.items():
            server_tls: Literal["none", "implicit"] = "implicit" if mode == "implicit" else "none"
            srv = stack.enter_context(ScriptedServer(serve, tls=server_tls, certs=certs))
            ports[name] = (srv.port, mode)
        target_path = tmp_path / "target.yaml"
        target_path.write_text(
            yaml.safe_dump(_target(ports, certs, read_timeout), sort_keys=False),
            encoding="utf-8",
        )
        scenario_path = tmp_path / "scenario.yaml"
        scenario_path.write_text(scenario_text, encoding="utf-8")
        target = load_target(target_path)
        (scenario,) = load_paths([scenario_path], accounts=set(target.accounts))
        runner = Runner(target)
        if preflight:
            (result,) = asyncio.run(runner.run([scenario]))
        else:
            result = asyncio.run(runner.run_one(scenario))
    return result


def explain(result: ScenarioResult) -> str:
    """The verdict, message and transcript, for assertion messages."""
    head = f"status={result.status.value} step={result.step} message={result.message!r}"
    return "\n".join([head, *(entry.render() for entry in result.transcript)])


def assert_passed(result: ScenarioResult) -> None:
    if result.status is not Status.PASSED:
        raise AssertionError("expected PASSED\n" + explain(result))


def assert_failed(result: ScenarioResult, *phrases: str, step: int | None = None) -> None:
    """FAILED (not ERROR), with every phrase in the message, at ``step`` (0-based) if given."""
    if result.status is not Status.FAILED:
        raise AssertionError("expected FAILED\n" + explain(result))
    message = result.message or ""
    missing = [p for p in phrases if p not in message]
    if missing:
        raise AssertionError(f"message lacks {missing!r}\n" + explain(result))
    if step is not None and result.step != step:
        raise AssertionError(f"expected the failure at step {step}\n" + explain(result))


def assert_malformed(result: ScenarioResult, *phrases: str) -> None:
    """FAILED with a message starting "malformed response from the server" (and the phrases)."""
    assert_failed(result, *phrases)
    if not (result.message or "").startswith("malformed response from the server"):
        raise AssertionError("expected a 'malformed response' message\n" + explain(result))


def expect_yaml(command: str, expect: str, extra: Sequence[str] = ()) -> str:
    """One step: ``send: command`` with ``expect: <flow mapping>``, plus extra step lines."""
    quoted = "'" + command.replace("'", "''") + "'"
    lines = [f"- send: {quoted}"]
    lines.append(f"  expect: {expect}")
    lines.extend(f"  {line}" for line in extra)
    return "\n".join(lines) + "\n"


def run_cli(*args: str) -> tuple[int, str]:
    """``mailharness ARGS`` in this process: (exit code, output)."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output
