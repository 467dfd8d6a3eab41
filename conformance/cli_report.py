"""``mailharness report`` (re-render a saved run) and ``mailharness requirements`` (the catalogue
with its coverage by scenarios)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import click

from .cli_common import EXIT_USAGE
from .report.render import format_for, write_report
from .requirements import shipped_catalogue
from .scenario.loader import LoadErrors, load_paths

__all__ = ["report", "requirements"]

SHIPPED_SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


@click.command()
@click.argument("results", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "-o",
    "--output",
    "outputs",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write here; the format follows the name (.html, .md, .sarif, .json). Repeatable.",
)
def report(results: Path, outputs: tuple[Path, ...]) -> None:
    """Render a saved run (the file `--json` wrote) as HTML, Markdown or SARIF."""
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        click.echo(f"{results}: not a results file: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    if not isinstance(data, dict) or not {"tool", "results", "summary"} <= data.keys():
        click.echo(f"{results}: not a mailharness results file (no tool/results/summary)", err=True)
        sys.exit(EXIT_USAGE)
    data.setdefault("requirements", {})
    data.setdefault("failed_by_severity", {"must": data["summary"].get("failed", 0)})
    for path in outputs:
        try:
            fmt = format_for(path)
        except ValueError as exc:
            click.echo(f"-o {exc}", err=True)
            sys.exit(EXIT_USAGE)
        write_report(data, path, fmt)
        click.echo(f"wrote {path}")


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--rfc", "rfcs", multiple=True, help="Only this RFC (e.g. 5321). Repeatable.")
@click.option("--uncovered", is_flag=True, help="Only requirements no scenario covers.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def requirements(
    paths: tuple[Path, ...], rfcs: tuple[str, ...], uncovered: bool, as_json: bool
) -> None:
    """The requirement catalogue, with the scenarios that cover each requirement.

    Coverage is read from the scenarios in PATHS (default: the shipped suites).
    """
    catalogue = shipped_catalogue()
    try:
        scenarios = load_paths(list(paths) or [SHIPPED_SCENARIOS])
    except LoadErrors as exc:
        for error in exc.errors:
            click.echo(str(error), err=True)
        sys.exit(EXIT_USAGE)
    covering: dict[str, list[str]] = defaultdict(list)
    for sc in scenarios:
        for rid in sc.covers:
            covering[rid].append(sc.id)
    wanted = {r.removeprefix("RFC").strip() for r in rfcs}
    rows = [
        q
        for q in catalogue.values()
        if (not wanted or q.rfc.removeprefix("RFC").strip() in wanted)
        and (not uncovered or not covering[q.id])
    ]
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": q.id,
                        "rfc": q.rfc,
                        "section": q.section,
                        "level": q.level.value,
                        "summary": q.summary,
                        "scenarios": covering[q.id],
                    }
                    for q in rows
                ],
                indent=1,
                ensure_ascii=False,
            )
        )
        return
    by_rfc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for q in rows:
        tally = by_rfc[q.rfc]
        tally[0] += 1
        tally[1] += bool(covering[q.id])
        scen = ", ".join(covering[q.id]) or "-"
        click.echo(f"{q.id:<24} {q.level.value:<10} {q.cite:<28} {scen}")
        click.echo(f"    {q.summary}")
    click.echo("")
    for rfc, (total, covered) in sorted(by_rfc.items()):
        click.echo(f"{rfc:<32} {covered:>3}/{total:<3} covered")
    unknown = sorted(rid for rid in covering if rid not in catalogue)
    if unknown:
        click.echo(f"covered but not in the catalogue: {', '.join(unknown)}")
    total = sum(t for t, _ in by_rfc.values())
    done = sum(c for _, c in by_rfc.values())
    click.echo(f"{done} of {total} requirement(s) covered by {len(scenarios)} scenario(s)")
