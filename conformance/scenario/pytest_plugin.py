"""pytest plugin: each YAML scenario is a test item.

``pytest scenarios/ --mail-target target.yaml`` collects every scenario
document under ``scenarios/`` (or any YAML file when ``--mail-target`` is
given), checks it at collection (a broken file is a collection error naming
``file:line:column``, and nothing touches the network), runs it with the
same runner as ``mailharness run``, and on failure shows the reason, the
step's own YAML lines and the transcript. Not-applicable scenarios are
skipped with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .._yaml import LoadError
from ..results import ScenarioResult, Status
from ..targets import Target, load_target
from .loader import LoadErrors, load_scenario_file
from .model import Scenario
from .runner import Runner, TargetUnreachable, check_against_target

_TARGET_KEY = pytest.StashKey["Target | None"]()
_RUNNER_KEY = pytest.StashKey["Runner | None"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mailharness", "mailharness scenarios")
    group.addoption(
        "--mail-target", metavar="FILE", help="Target file to run YAML scenarios against."
    )
    group.addoption("--mail-insecure", action="store_true", help="Do not verify TLS certificates.")
    group.addoption("--mail-ca-file", metavar="FILE", help="Trust this CA for TLS.")


def pytest_configure(config: pytest.Config) -> None:
    target_file = config.getoption("--mail-target", None)
    target: Target | None = None
    if target_file:
        try:
            target = load_target(Path(target_file))
        except LoadError as exc:
            raise pytest.UsageError(str(exc)) from None
        ca = config.getoption("--mail-ca-file")
        target = target.with_tls(
            insecure=config.getoption("--mail-insecure"), ca_file=Path(ca) if ca else None
        )
    config.stash[_TARGET_KEY] = target
    config.stash[_RUNNER_KEY] = Runner(target) if target else None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    if any(part.startswith(("_", ".")) for part in file_path.parts[-3:]):
        return None
    has_target = parent.config.stash.get(_TARGET_KEY, None) is not None
    if not has_target and "scenarios" not in file_path.parts:
        return None
    return ScenarioFile.from_parent(parent, path=file_path)


class ScenarioLoadError(Exception):
    pass


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        target = self.config.stash.get(_TARGET_KEY, None)
        try:
            scenarios = load_scenario_file(
                self.path, accounts=set(target.accounts) if target else None
            )
        except LoadErrors as exc:
            raise self.CollectError(str(exc)) from None
        for sc in scenarios:
            yield ScenarioItem.from_parent(self, name=sc.id, scenario=sc)


class ScenarioFailed(Exception):
    def __init__(self, result: ScenarioResult):
        super().__init__(result.message)
        self.result = result


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario: Scenario, **kwargs: Any):
        super().__init__(**kwargs)
        self.scenario = scenario

    def runtest(self) -> None:
        target = self.config.stash.get(_TARGET_KEY, None)
        runner = self.config.stash.get(_RUNNER_KEY, None)
        if target is None or runner is None:
            pytest.skip("no --mail-target given")
        errors = check_against_target([self.scenario], target)
        if errors:
            raise ScenarioLoadError("\n".join(map(str, errors)))
        try:
            asyncio.run(runner.preflight([self.scenario]))
        except TargetUnreachable as exc:
            pytest.fail(f"target unreachable: {exc}", pytrace=False)
        result = asyncio.run(runner.run_one(self.scenario))
        if result.status is Status.NOT_APPLICABLE:
            pytest.skip(f"not applicable: {result.message}")
        if result.status is not Status.PASSED:
            raise ScenarioFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioLoadError):
            return str(excinfo.value)
        if not isinstance(excinfo.value, ScenarioFailed):
            return str(super().repr_failure(excinfo))
        r = excinfo.value.result
        out = [f"{r.status.value.upper()}: {r.message}", f"scenario {r.id}: {r.title}"]
        if r.step is not None:
            step = self.scenario.steps[r.step]
            out.append(f"\nstep {r.step + 1} at {self.path}:{step.position.line}:")
            out.extend("  | " + line for line in _step_lines(self.path, step.position.line))
        out.append("\ntranscript:")
        show_conn = len({e.conn for e in r.transcript}) > 1
        out.extend("  " + e.render(show_conn=show_conn) for e in r.transcript)
        return "\n".join(out)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        line = self.scenario.document.where(()) if self.scenario.document else None
        return self.path, (line.line - 1) if line else None, f"scenario {self.scenario.id}"


def _step_lines(path: Path, line: int, limit: int = 12) -> list[str]:
    """The YAML lines of the step starting at ``line`` (1-based), up to the next step."""
    lines = path.read_text(encoding="utf-8").splitlines()
    first = lines[line - 1]
    indent = len(first) - len(first.lstrip(" -"))
    out = [first]
    for text in lines[line : line - 1 + limit]:
        stripped = text.lstrip()
        depth = len(text) - len(stripped)
        if (stripped.startswith("- ") and depth <= indent - 2) or (stripped and depth < indent - 2):
            break
        out.append(text)
    return out
