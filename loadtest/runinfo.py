"""Results beyond Locust's request statistics, gathered from every process of a run.

Theory of operation. Some of what a mail load test finds cannot be carried by
Locust's request statistics alone: the delivery path's counts of messages
submitted, seen, lost and duplicated; the open model's arrivals started and
missed; the capacity search's steps and verdict. Each such part registers a
:class:`Section` under a name. When a test stops (``test_stop``), the process
that owns the statistics gathers them:

- a local runner finishes its sections itself;
- a master broadcasts :data:`COLLECT` to its workers and waits (bounded by
  :data:`COLLECT_TIMEOUT` plus the longest section's own ``grace``) for one
  :data:`REPORT` from each. A worker finishes its sections (the delivery
  section waits for messages still in flight), flushes its statistics to the
  master, then answers with its sections' data.

The gathered data is merged (numbers summed, ``max_`` keys maximised, lists
concatenated and capped), each section's ``publish`` runs once in the owning
process (the delivery section turns lost and duplicated messages into failed
requests there, so they show in the statistics, CSV and HTML exactly once),
and the whole is written as JSON to ``--mailharness-results FILE`` if given.
``mailharness load`` passes that option and folds the file into its
``*_params.json``. Nothing here runs unless a section is registered or data is
put, so a plain closed-model run is unaffected.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import gevent
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

__all__ = ["COLLECT", "REPORT", "Section", "merge", "provide", "register"]

log = logging.getLogger("loadtest.runinfo")

COLLECT = "mailharness_collect"  # master -> workers: finish your sections and report
REPORT = "mailharness_report"  # worker -> master: {"sections": {...}}
COLLECT_TIMEOUT = 10.0  # seconds a master waits for reports, beyond the sections' grace
MAX_LIST = 50  # merged lists are capped (samples of lost tokens and the like)
CSV_SETTLE = 1.2  # seconds: Locust's CSV writer rewrites its files every second (stats.py)


@dataclass
class Section:
    """One named part of the results.

    Args:
        finish: called once per test in each process that runs users (the local
            runner, or each worker); returns this process's data. May block (gevent)
            up to ``grace`` seconds.
        publish: called once per test in the process that owns the statistics,
            with the data merged over all processes.
        grace: the longest ``finish`` may take, in seconds.
    """

    finish: Callable[[Environment], dict[str, Any]]
    publish: Callable[[Environment, dict[str, Any]], None] | None = None
    grace: Callable[[Environment], float] = field(default=lambda env: 0.0)


_SECTIONS: dict[str, Section] = {}
_PROVIDERS: dict[str, Callable[[Environment], dict[str, Any] | None]] = {}
_REPORTS: WeakKeyDictionary[Environment, list[dict[str, Any]]] = WeakKeyDictionary()


def register(name: str, section: Section) -> None:
    """Add (or replace) a section gathered at the end of every test."""
    _SECTIONS[name] = section


def provide(name: str, provider: Callable[[Environment], dict[str, Any] | None]) -> None:
    """Add data only the owning process has (the capacity search's verdicts) under ``name``;
    ``provider`` is called at the end of each test there, and None leaves the name out."""
    _PROVIDERS[name] = provider


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge dicts from several processes: sum numbers, maximise ``max_*``, join lists."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key not in out:
                out[key] = list(value)[:MAX_LIST] if isinstance(value, list) else value
                if isinstance(value, dict):
                    out[key] = merge([value])
            elif isinstance(value, bool) or not isinstance(value, int | float | list | dict):
                continue  # first wins
            elif isinstance(value, dict):
                out[key] = merge([out[key], value])
            elif isinstance(value, list):
                out[key] = (out[key] + value)[:MAX_LIST]
            elif key.startswith("max_"):
                out[key] = max(out[key], value)
            else:
                out[key] = out[key] + value
    return out


def _finish_local(environment: Environment) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, section in list(_SECTIONS.items()):
        try:
            data[name] = section.finish(environment)
        except Exception:  # a section's bug must not hide the others
            log.exception("finishing results section %s failed", name)
    return data


def _publish(environment: Environment, sections: dict[str, dict[str, Any]]) -> None:
    for name, data in sections.items():
        section = _SECTIONS.get(name)
        if section is not None and section.publish is not None:
            try:
                section.publish(environment, data)
            except Exception:
                log.exception("publishing results section %s failed", name)


def _grace(environment: Environment) -> float:
    return max((s.grace(environment) for s in _SECTIONS.values()), default=0.0)


def _gather_from_workers(environment: Environment, runner: MasterRunner) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = []
    _REPORTS[environment] = reports
    expected = runner.worker_count
    if expected == 0:
        return reports
    runner.send_message(COLLECT, {})
    deadline = time.monotonic() + _grace(environment) + COLLECT_TIMEOUT
    while len(reports) < expected and time.monotonic() < deadline:
        gevent.sleep(0.1)
    if len(reports) < expected:
        log.warning("only %d of %d workers sent their results in time", len(reports), expected)
    return list(reports)


def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return
    if isinstance(runner, MasterRunner):
        parts = [r.get("sections", {}) for r in _gather_from_workers(environment, runner)]
        workers = len(parts)
    else:
        parts = [_finish_local(environment)]
        workers = 0
    sections: dict[str, dict[str, Any]] = {}
    for name in sorted({n for p in parts for n, data in p.items() if data}):
        sections[name] = merge([p[name] for p in parts if p.get(name)])
    _publish(environment, sections)
    for name, provider in _PROVIDERS.items():
        try:
            data = provider(environment)
        except Exception:
            log.exception("results provider %s failed", name)
            continue
        if data is not None:
            sections[name] = data
    sections["processes"] = {"workers_reported": workers}
    _write(environment, sections)
    options = environment.parsed_options
    if set(sections) - {"processes"} and getattr(options, "csv_prefix", None):
        # requests fired while finishing (lost messages) reach the CSV files only on the
        # writer's next round; the run ends right after this listener
        gevent.sleep(CSV_SETTLE)


def _write(environment: Environment, sections: dict[str, Any]) -> None:
    options = environment.parsed_options
    path = getattr(options, "mailharness_results", None) if options is not None else None
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(sections, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _on_collect(environment: Environment, msg: Any, **_kwargs: Any) -> None:
    """Worker side of :data:`COLLECT` (runs in its own greenlet)."""
    runner = environment.runner
    data = _finish_local(environment)
    send_stats = getattr(runner, "_send_stats", None)
    if callable(send_stats):  # the requests made while finishing reach the master first
        send_stats()
    if runner is not None:
        runner.send_message(REPORT, {"sections": data})


def _on_report(environment: Environment, msg: Any, **_kwargs: Any) -> None:
    reports = _REPORTS.get(environment)
    if reports is not None and isinstance(msg.data, dict):
        reports.append(msg.data)


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.register_message(COLLECT, _on_collect, concurrent=True)
    elif isinstance(runner, MasterRunner):
        runner.register_message(REPORT, _on_report)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--mailharness-results",
        default=None,
        metavar="FILE",
        help="Write mailharness's own results (delivery counts, open-model arrivals, "
        "capacity search) to this JSON file at the end of the test.",
    )


events.test_stop.add_listener(_on_test_stop)
