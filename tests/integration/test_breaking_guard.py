"""Every shipped scenario has exactly one breaking case (a check that cannot fail is a defect)."""

from __future__ import annotations

import importlib
from pathlib import Path

from breaking_support import SHIPPED

HERE = Path(__file__).parent
MODULES = [
    "test_shipped_scenarios_fail",
    *sorted(p.stem for p in HERE.glob("test_breaking_*.py") if p.stem != "test_breaking_guard"),
]


def test_every_shipped_scenario_has_exactly_one_breaking_case():
    seen: dict[str, str] = {}
    for name in MODULES:
        for scenario_id in importlib.import_module(name).CASES:
            assert scenario_id not in seen, f"{scenario_id} in both {seen[scenario_id]} and {name}"
            seen[scenario_id] = name
    assert sorted(SHIPPED) == sorted(seen)
