"""``mailharness fuzz``: property-based command fuzzing (docs/fuzzing.md).

Exit codes: 0 nothing found, 1 findings written, 2 usage or input error,
3 the target was unreachable.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import click

from ._yaml import LoadError
from .fuzz import PROTOCOLS, write_finding
from .fuzz.engine import fuzz as run_fuzz
from .fuzz.oracle import DialogueStats
from .targets import load_target

__all__ = ["fuzz"]


@click.command()
@click.option(
    "--protocol", type=click.Choice(sorted(PROTOCOLS)), required=True, help="What to fuzz."
)
@click.option(
    "--target",
    "target_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Target file (see docs/targets.md); only plain (tls: none or starttls) services.",
)
@click.option("--service", default=None, help="Service of the target (default: mx for SMTP).")
@click.option("--max-examples", type=click.IntRange(1), default=200, show_default=True)
@click.option(
    "--time-budget",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds after which no new dialogue starts (shrinking still finishes).",
)
@click.option("--seed", "seed_value", type=int, default=None, help="Seed (default: random).")
@click.option(
    "--deadline",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Seconds the server has for each answer before it counts as a hang.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("fuzz-findings"),
    show_default=True,
    help="Directory the finding scenarios are written to.",
)
def fuzz(
    protocol: str,
    target_file: Path,
    service: str | None,
    max_examples: int,
    time_budget: float | None,
    seed_value: int | None,
    deadline: float,
    out_dir: Path,
) -> None:
    """Fuzz a server's command parser; save each shrunk finding as a scenario."""
    proto = PROTOCOLS[protocol]
    try:
        target = load_target(target_file)
    except LoadError as err:
        click.echo(str(err), err=True)
        sys.exit(2)
    name = service or proto.default_service
    svc = target.services.get(name)
    if svc is None:
        known = ", ".join(sorted(target.services)) or "none"
        raise click.UsageError(f"the target has no service {name!r} (it has: {known})")
    if svc.tls.value == "implicit":
        raise click.UsageError(f"service {name!r} uses implicit TLS; fuzzing speaks plain TCP")
    if seed_value is None:
        seed_value = random.SystemRandom().randrange(2**32)
    click.echo(f"fuzz {protocol} {name} at {svc.host}:{svc.port}  seed {seed_value}")
    click.echo(f"(repeat with --seed {seed_value})")
    last = [time.monotonic()]

    def progress(stats: DialogueStats) -> None:
        now = time.monotonic()
        if now - last[0] >= 2.0:
            last[0] = now
            click.echo(f"  {stats.dialogues} dialogues, {stats.steps} commands", err=True)

    try:
        report = run_fuzz(
            proto,
            target,
            svc,
            seed_value=seed_value,
            max_examples=max_examples,
            time_budget=time_budget,
            deadline=deadline,
            progress=progress,
        )
    except OSError as exc:
        click.echo(f"target unreachable: {svc.host}:{svc.port}: {exc}", err=True)
        sys.exit(3)
    stats = report.stats
    rate = stats.dialogues / report.elapsed if report.elapsed else 0.0
    click.echo(
        f"{stats.dialogues} dialogues ({stats.steps} commands) in {report.elapsed:.1f}s, "
        f"{rate:.0f}/s" + (" (time budget reached)" if report.out_of_time else "")
    )
    click.echo("verbs: " + ", ".join(f"{v} {n}" for v, n in sorted(stats.verbs.items())))
    click.echo("model states reached: " + ", ".join(sorted(stats.states)))
    written = 0
    for finding in report.findings:
        path, new = write_finding(proto, finding, target, name, out_dir, deadline=deadline)
        written += new
        click.echo(f"FINDING {finding.kind}: {finding.message}")
        click.echo(f"  {'written' if new else 'already known'}: {path}")
    click.echo(f"{len(report.findings)} finding(s), {written} new scenario file(s)")
    sys.exit(1 if report.findings else 0)
