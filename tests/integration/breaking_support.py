"""Running a shipped scenario against a scripted server that breaks its rule.

Shared by test_shipped_scenarios_fail.py and the ``test_breaking_*.py`` modules:
each module maps scenario ids to ``(handler, phrase)`` in a ``CASES`` dict, where
``handler`` is a scripted server (or a dict of them, one per service) and
``phrase`` must appear in the failure message. test_breaking_guard.py checks that
every shipped scenario has exactly one case across the modules.

Outbound scenarios (``sink: true``) need the harness's sink: the test makes a
:class:`~conformance.sink.Sink` first (its port is bound at once), gives its address
to the scripted server, which relays there, and passes it as ``sink=``; the target
then names it and the runner serves it while the scenario runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from scripted import ScriptConn, ScriptedServer, TestCerts

from conformance.results import ScenarioResult, Status
from conformance.scenario.loader import load_paths
from conformance.scenario.model import Scenario
from conformance.scenario.runner import Runner
from conformance.sink import Sink
from conformance.targets import load_target

__all__ = ["ROOT", "SHIPPED", "TARGET", "Handler", "run_breaking", "run_scenario"]

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {sc.id: sc for sc in load_paths([ROOT / "scenarios"])}

Handler = Callable[[ScriptConn], None]

TARGET: dict[str, Any] = {
    "host": "127.0.0.1",
    "domain": "example.test",
    "timeouts": {"read": 1},
    "accounts": {
        user: {"address": f"{user}@example.test", "username": user, "password": f"{user}-pw"}
        for user in ("alice", "bob")
    },
}


def run_scenario(
    sc: Scenario,
    handlers: dict[str, Handler],
    tmp_path: Path,
    certs: TestCerts,
    *,
    sink: Sink | None = None,
    served: dict[str, Literal["none", "implicit"]] | None = None,
    declared: dict[str, str] | None = None,
) -> ScenarioResult:
    """Run ``sc`` against one scripted server per service it uses.

    Args:
        sink: the outbound sink the scripted server relays to (for ``sink: true``).
        served: how a service's scripted server speaks (``implicit`` TLS; default none,
            with STARTTLS up to the handler).
        declared: the TLS mode the target file gives a service (default ``starttls``);
            differing from ``served`` is how a server that forgot its TLS is played.
    """
    served, declared = served or {}, declared or {}
    with contextlib.ExitStack() as stack:
        services: dict[str, dict[str, Any]] = {}
        for name in sc.services():
            srv = stack.enter_context(
                ScriptedServer(handlers[name], certs=certs, tls=served.get(name, "none"))
            )
            services[name] = {"port": srv.port, "tls": declared.get(name, "starttls")}
        target = dict(TARGET, services=services)
        target["tls"] = {"verify": True, "ca_file": str(certs.ca_file)}
        if sink is not None:
            target["sink"] = {"host": sink.host, "port": sink.port, "domain": sink.domain}
        (tmp_path / "t.yaml").write_text(yaml.safe_dump(target))
        runner = Runner(load_target(tmp_path / "t.yaml"), sink=sink)
        return asyncio.run(runner.run_one(sc))


def run_breaking(
    scenario_id: str,
    handler: Handler | dict[str, Handler],
    phrase: str,
    tmp_path: Path,
    certs: TestCerts,
    *,
    sink: Sink | None = None,
    adjust: Callable[[Scenario], Scenario] | None = None,
    served: dict[str, Literal["none", "implicit"]] | None = None,
    declared: dict[str, str] | None = None,
) -> None:
    """Run the shipped scenario against ``handler``; it must fail, saying ``phrase``.

    Args:
        sink, served, declared: as for :func:`run_scenario`.
        adjust: changes the scenario before it runs (say, a shorter wait for mail that
            a broken server never sends, so the case fails in seconds, not a minute).
    """
    sc = SHIPPED[scenario_id]
    if adjust is not None:
        sc = adjust(sc)
    handlers = handler if isinstance(handler, dict) else {sc.service: handler}
    assert sc.services() <= handlers.keys(), f"no scripted server for {sc.services()}"
    result = run_scenario(
        sc, handlers, tmp_path, certs, sink=sink, served=served, declared=declared
    )
    assert result.status is Status.FAILED, (result.status, result.message)
    assert phrase in (result.message or ""), result.message
