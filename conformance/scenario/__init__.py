"""Scenarios: the YAML format, its loader, the matcher and the runner."""

from .loader import LoadErrors, load_paths, load_scenario_file
from .model import Scenario
from .runner import Runner

__all__ = ["LoadErrors", "Runner", "Scenario", "load_paths", "load_scenario_file"]
