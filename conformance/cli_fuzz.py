"""``mailharness fuzz``: property-based command fuzzing (docs/fuzzing.md).

Exit codes: 0 nothing found, 1 findings written, 2 usage or input error,
3 the target was unreachable (or the login prefix failed).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import click

from ._yaml import LoadError
from .fuzz import PROTOCOLS, write_finding
from .fuzz.dialogue import Login, LoginFailed
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
@click.option(
    "--service",
    default=None,
    help="Service of the target (default: mx for SMTP, pop3 for POP3, imap for IMAP).",
)
@click.option(
    "--login",
    "login_name",
    default=None,
    metavar="ACCOUNT",
    help="Start every dialogue with STARTTLS (when the service is tls: starttls) and a "
    "login as this account of the target (SMTP: AUTH PLAIN). Default for POP3 and IMAP: "
    "the target's first account.",
)
@click.option(
    "--no-login", is_flag=True, help="POP3/IMAP: fuzz the state before login, in cleartext."
)
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
    login_name: str | None,
    no_login: bool,
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
    login: Login | None = None
    if login_name is not None and no_login:
        raise click.UsageError("--login and --no-login exclude each other")
    if login_name is None and not no_login and protocol != "smtp" and target.accounts:
        login_name = next(iter(target.accounts))
    if login_name is not None:
        account = target.accounts.get(login_name)
        if account is None:
            known = ", ".join(sorted(target.accounts)) or "none"
            raise click.UsageError(f"the target has no account {login_name!r} (it has: {known})")
        login = Login(
            account=account,
            starttls=svc.tls.value == "starttls",
            context=target.ssl_context(),
            server_name=target.server_name or svc.host,
        )
    if seed_value is None:
        seed_value = random.SystemRandom().randrange(2**32)
    how = f"  logged in as {login_name}" if login is not None else ""
    click.echo(f"fuzz {protocol} {name} at {svc.host}:{svc.port}{how}  seed {seed_value}")
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
            login=login,
        )
    except LoginFailed as exc:
        click.echo(f"the login prefix failed: {exc}", err=True)
        sys.exit(3)
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
        path, new = write_finding(
            proto, finding, target, name, out_dir, deadline=deadline, login=login
        )
        written += new
        click.echo(f"FINDING {finding.kind}: {finding.message}")
        click.echo(f"  {'written' if new else 'already known'}: {path}")
    click.echo(f"{len(report.findings)} finding(s), {written} new scenario file(s)")
    sys.exit(1 if report.findings else 0)
