"""Every shipped scenario covers catalogue requirements, and only real ones."""

from __future__ import annotations

from pathlib import Path

from conformance.requirements import shipped_catalogue
from conformance.scenario.loader import load_paths

ROOT = Path(__file__).resolve().parents[3]


def test_every_shipped_scenario_covers_known_requirements():
    catalogue = shipped_catalogue()
    problems = []
    for sc in load_paths([ROOT / "scenarios"]):
        if not sc.covers:
            problems.append(f"{sc.id}: no covers")
        problems += [
            f"{sc.id}: {rid} is not in the catalogue" for rid in sc.covers if rid not in catalogue
        ]
    assert problems == []
