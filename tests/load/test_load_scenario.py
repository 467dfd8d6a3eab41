"""Shipped scenario files run as Locust load (``--profile scenario --scenario FILE``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from loadsupport import ROOT, LocustRun, run_locust

from reference_server.devsetup import write_target

pytestmark = pytest.mark.slow

SCENARIOS = ROOT / "scenarios"


@pytest.fixture
def dev_target(start_server, tmp_path: Path) -> Path:
    """A reference server with the development accounts (alice, bob) the scenarios name."""
    srv = start_server()
    path = tmp_path / "target.yaml"
    write_target(path, srv.config, srv.thread.bound, srv.passwords, srv.ca_file)
    return path


def scenario_run(tmp_path: Path, target: Path, scenario: Path, users: int = 3) -> LocustRun:
    return run_locust(
        tmp_path,
        target,
        "scenario",
        users=users,
        run_time="3s",
        extra=["--scenario", str(scenario)],
    )


@pytest.mark.parametrize(
    "path, scenario_id, steps",
    [
        ("imap/rfc9051-6.4.5-fetch.yaml", "imap.fetch.flags-size-uid", 7),
        # three users on alice's maildrop: they take turns (RFC 1939 §4), no -ERR [IN-USE]
        ("pop3/rfc1939-5-stat-list-retr.yaml", "pop3.transaction.stat-list-retr", 3),
    ],
)
def test_shipped_scenario_as_load(dev_target, tmp_path: Path, path, scenario_id, steps):
    run = scenario_run(tmp_path, dev_target, SCENARIOS / path)
    assert run.returncode == 0, run.explain()
    whole = run.count("SCENARIO", scenario_id)
    assert whole > 3, run.explain()
    for n in range(1, steps + 1):  # each step that talks is its own entry, once per run
        assert run.count("SCENARIO", f"{scenario_id} step {n}") == whole, run.explain()
    assert run.failure_count() == 0, run.explain()


def test_a_failing_step_is_the_failure(dev_target, tmp_path: Path):
    scenario = tmp_path / "wrong.yaml"
    scenario.write_text(
        "id: load.wrong-expectation\nprotocol: smtp\nservice: mx\n"
        "title: NOOP is expected to fail, which it does not\n"
        "steps:\n"
        "  - send: EHLO harness.example\n    expect: {code: 250}\n"
        "  - send: NOOP\n    expect: {code: 500}\n"
        "  - send: QUIT\n    expect: {code: 221}\n"
    )
    run = scenario_run(tmp_path, dev_target, scenario, users=1)
    whole = run.count("SCENARIO", "load.wrong-expectation")
    assert whole > 0 and run.returncode == 1, run.explain()
    failed = {f["Name"]: f for f in run.failures}
    assert set(failed) == {"load.wrong-expectation", "load.wrong-expectation step 2"}, failed
    assert "ScenarioFailed" in failed["load.wrong-expectation step 2"]["Error"]
    assert run.count("SCENARIO", "load.wrong-expectation step 3") == 0  # never reached
