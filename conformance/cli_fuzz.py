"""``mailharness fuzz``: property-based command fuzzing (docs/fuzzing.md).

Exit codes: 0 nothing found, 1 findings written, 2 usage or input error,
3 the target was unreachable (or the login prefix failed).
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from .cli_common import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, target_or_exit
from .durations import Duration
from .fuzz import PROTOCOLS, write_finding
from .fuzz.dialogue import Login, LoginFailed
from .fuzz.engine import DEFAULT_EXAMPLES, SecondTarget
from .fuzz.engine import fuzz as run_fuzz
from .fuzz.memory import MemoryConnector, dev_memory_target, scratch_base
from .fuzz.oracle import Connector, DialogueStats, SocketConnector
from .fuzz.retrieve import RetrieveCheck, RetrieveFailed, retrieve_check_for
from .targets import Service, Target

__all__ = ["fuzz"]


@click.command()
@click.option(
    "--protocol", type=click.Choice(sorted(PROTOCOLS)), required=True, help="What to fuzz."
)
@click.option(
    "--target",
    "target_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Target file (see docs/targets.md); only plain (tls: none or starttls) services.",
)
@click.option(
    "--in-memory",
    is_flag=True,
    help="Fuzz the bundled reference server in memory (a development setup in a "
    "temporary directory; no sockets, sessions run as after TLS). Excludes --target.",
)
@click.option(
    "--differential",
    "second_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="A second target file: play every dialogue against it too and report each "
    "step where the two answers differ in class (SMTP first digit, POP3 +OK/-ERR, "
    "IMAP OK/NO/BAD).",
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
@click.option("--max-examples", type=click.IntRange(1), default=DEFAULT_EXAMPLES, show_default=True)
@click.option(
    "--time-budget",
    type=Duration(),
    default=None,
    help="After this long (90, 60s, 5m) no new dialogue starts (shrinking still finishes).",
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
    "--no-retrieve-check",
    is_flag=True,
    help="SMTP: do not check that a message acknowledged with 250 for an account of the "
    "target is in its INBOX (over the target's imap service).",
)
@click.option(
    "--retrieve-within",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="SMTP: seconds the retrieval check polls for a message before it counts as lost.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("fuzz-findings"),
    show_default=True,
    help="Directory the finding scenarios are written to.",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="With --in-memory: run this many fuzzers side by side, each with its own "
    "in-memory server and the seeds S, S+1, ...; --max-examples is shared out.",
)
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), hidden=True)
def fuzz(
    protocol: str,
    target_file: Path | None,
    in_memory: bool,
    second_file: Path | None,
    service: str | None,
    login_name: str | None,
    no_login: bool,
    max_examples: int,
    time_budget: float | None,
    seed_value: int | None,
    deadline: float,
    no_retrieve_check: bool,
    retrieve_within: float,
    out_dir: Path,
    jobs: int,
    summary_json: Path | None,
) -> None:
    """Fuzz a server's command parser; save each shrunk finding as a scenario."""
    if in_memory == (target_file is not None):
        raise click.UsageError("give exactly one of --target FILE and --in-memory")
    if login_name is not None and no_login:
        raise click.UsageError("--login and --no-login exclude each other")
    if jobs > 1:
        if not in_memory or second_file is not None:
            raise click.UsageError(
                "--jobs needs --in-memory (each job fuzzes a server of its own) and no "
                "--differential"
            )
        args = [f"--protocol={protocol}", "--in-memory", f"--deadline={deadline}"]
        args += [f"--out={out_dir}", f"--retrieve-within={retrieve_within}"]
        args += [f"--service={service}"] if service else []
        args += [f"--login={login_name}"] if login_name else []
        args += ["--no-login"] if no_login else []
        args += ["--no-retrieve-check"] if no_retrieve_check else []
        args += [f"--time-budget={time_budget}"] if time_budget is not None else []
        run_jobs(protocol, args, jobs, max_examples, seed_value)
        return
    with contextlib.ExitStack() as stack:
        if in_memory:
            tmp = Path(
                stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="mh-fuzz-", dir=scratch_base())
                )
            )
            config, target = dev_memory_target(tmp)
        else:
            assert target_file is not None
            config, target = None, target_or_exit(target_file)
        name = service or PROTOCOLS[protocol].default_service
        svc = _service(target, name)
        login = _login(target, svc, protocol, login_name, no_login, memory=in_memory)
        connector: Connector
        memory: MemoryConnector | None = None
        if config is not None:
            try:
                memory = stack.enter_context(MemoryConnector(config, name))
            except KeyError as exc:
                raise click.UsageError(str(exc.args[0])) from None
            connector = memory
        else:
            connector = SocketConnector(svc, target.connect_timeout)
        retrieve, retrieve_note = None, ""
        if protocol == "smtp":
            if no_retrieve_check:
                retrieve_note = "off (--no-retrieve-check)"
            else:
                retrieve, retrieve_note = retrieve_check_for(
                    target, memory=memory, within=retrieve_within, deadline=deadline
                )
        second: SecondTarget | None = None
        if second_file is not None:
            other = target_or_exit(second_file)
            other_svc = _service(other, name)
            other_login = None
            if login is not None and login.account is not None:
                acc = login.account.name if login.account.name in other.accounts else None
                other_login = _login(other, other_svc, protocol, acc, False, memory=False)
            second = SecondTarget(
                SocketConnector(other_svc, other.connect_timeout), other, other_login
            )
        _run(
            protocol,
            target,
            name,
            svc,
            login,
            connector,
            second,
            login_name=login.account.name if login and login.account else None,
            max_examples=max_examples,
            time_budget=time_budget,
            seed_value=seed_value,
            deadline=deadline,
            out_dir=out_dir,
            memory=in_memory,
            retrieve=retrieve,
            retrieve_note=retrieve_note,
            summary_json=summary_json,
        )


def _service(target: Target, name: str) -> Service:
    svc = target.services.get(name)
    if svc is None:
        known = ", ".join(sorted(target.services)) or "none"
        raise click.UsageError(f"the target has no service {name!r} (it has: {known})")
    if svc.tls.value == "implicit":
        raise click.UsageError(f"service {name!r} uses implicit TLS; fuzzing speaks plain TCP")
    return svc


def _login(
    target: Target,
    svc: Service,
    protocol: str,
    login_name: str | None,
    no_login: bool,
    *,
    memory: bool,
) -> Login | None:
    if login_name is None and not no_login and protocol != "smtp" and target.accounts:
        login_name = next(iter(target.accounts))
    if login_name is None:
        return None
    account = target.accounts.get(login_name)
    if account is None:
        known = ", ".join(sorted(target.accounts)) or "none"
        raise click.UsageError(f"the target has no account {login_name!r} (it has: {known})")
    return Login(
        account=account,
        starttls=svc.tls.value == "starttls" and not memory,  # memory: as after TLS
        context=None if memory else target.ssl_context(),
        server_name=target.server_name or svc.host,
    )


def _run(
    protocol: str,
    target: Target,
    name: str,
    svc: Service,
    login: Login | None,
    connector: Connector,
    second: SecondTarget | None,
    *,
    login_name: str | None,
    max_examples: int,
    time_budget: float | None,
    seed_value: int | None,
    deadline: float,
    out_dir: Path,
    memory: bool,
    retrieve: RetrieveCheck | None = None,
    retrieve_note: str = "",
    summary_json: Path | None = None,
) -> None:
    proto = PROTOCOLS[protocol]
    if seed_value is None:
        seed_value = random.SystemRandom().randrange(2**32)
    how = f"  logged in as {login_name}" if login is not None else ""
    where = "in memory (reference server)" if memory else f"{svc.host}:{svc.port}"
    if second is not None:
        other = second.connector
        if isinstance(other, SocketConnector):
            where += f", differential against {other.service.host}:{other.service.port}"
    at = "" if memory else "at "
    click.echo(f"fuzz {protocol} {name} {at}{where}{how}  seed {seed_value}")
    click.echo(f"(repeat with --seed {seed_value})")
    if retrieve_note:
        click.echo(f"retrieval check: {retrieve_note}")
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
            connector=connector,
            second=second,
            retrieve=retrieve,
        )
    except RetrieveFailed as exc:
        click.echo(f"{exc} (skip the check with --no-retrieve-check)", err=True)
        sys.exit(EXIT_UNREACHABLE)
    except LoginFailed as exc:
        click.echo(f"the login prefix failed: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    except OSError as exc:
        click.echo(f"target unreachable: {where}: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    stats = report.stats
    rate = stats.dialogues / report.elapsed if report.elapsed else 0.0
    click.echo(
        f"{stats.dialogues} dialogues ({stats.steps} commands) in {report.elapsed:.1f}s, "
        f"{rate:.0f}/s" + (" (time budget reached)" if report.out_of_time else "")
    )
    click.echo("verbs: " + ", ".join(f"{v} {n}" for v, n in sorted(stats.verbs.items())))
    click.echo("model states reached: " + ", ".join(sorted(stats.states)))
    if retrieve is not None:
        click.echo(f"retrieval check: {retrieve.checks} message(s) looked for")
    written = 0
    for finding in report.findings:
        path, new = write_finding(
            proto, finding, target, name, out_dir, deadline=deadline, login=login
        )
        written += new
        click.echo(f"FINDING {finding.kind}: {finding.message}")
        click.echo(f"  {'written' if new else 'already known'}: {path}")
    click.echo(f"{len(report.findings)} finding(s), {written} new scenario file(s)")
    if summary_json is not None:
        summary = {
            "seed": seed_value,
            "dialogues": stats.dialogues,
            "steps": stats.steps,
            "elapsed": report.elapsed,
            "verbs": stats.verbs,
            "states": sorted(stats.states),
            "findings": len(report.findings),
            "written": written,
            "retrieved": retrieve.checks if retrieve is not None else None,
            "out_of_time": report.out_of_time,
        }
        summary_json.write_text(json.dumps(summary))
    sys.exit(EXIT_FAILED if report.findings else EXIT_OK)


def run_jobs(protocol: str, args: list[str], jobs: int, examples: int, seed: int | None) -> None:
    """``jobs`` fuzzers side by side (processes, each its own in-memory server and seed),
    their findings into the same --out (file names are hashes of the shrunk dialogue,
    so one found twice is written once); exits as one run would."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**32 - jobs)
    share = -(-examples // jobs)
    click.echo(f"fuzz {protocol}: {jobs} jobs in memory, seeds {seed}..{seed + jobs - 1}")
    click.echo(f"(repeat with --jobs {jobs} --seed {seed} --max-examples {examples})")
    with tempfile.TemporaryDirectory(prefix="mh-fuzz-jobs-") as tmp:
        procs = []
        for i in range(jobs):
            summary, log = Path(tmp) / f"job{i}.json", Path(tmp) / f"job{i}.log"
            cmd = [sys.executable, "-m", "conformance", "fuzz", *args]
            cmd += [f"--seed={seed + i}", f"--max-examples={share}", f"--summary-json={summary}"]
            with log.open("wb") as out:
                procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), i))
        started = time.monotonic()
        codes = {i: proc.wait() for proc, i in procs}
        elapsed = time.monotonic() - started
        totals: dict[str, Any] = {"dialogues": 0, "steps": 0, "findings": 0, "written": 0}
        verbs: dict[str, int] = {}
        states: set[str] = set()
        for i in range(jobs):
            log_text = (Path(tmp) / f"job{i}.log").read_text(errors="replace")
            for line in log_text.splitlines():
                if line.startswith(("FINDING", "  written", "  already known")):
                    click.echo(f"[job {i}] {line}")
            summary_path = Path(tmp) / f"job{i}.json"
            if not summary_path.exists():  # it stopped before its summary: show why
                click.echo(f"[job {i}] exited with {codes[i]}:\n{log_text[-2000:]}", err=True)
                continue
            one = json.loads(summary_path.read_text())
            for key in totals:
                totals[key] += one[key]
            for verb, n in one["verbs"].items():
                verbs[verb] = verbs.get(verb, 0) + n
            states.update(one["states"])
    rate = totals["dialogues"] / elapsed if elapsed else 0.0
    click.echo(
        f"{totals['dialogues']} dialogues ({totals['steps']} commands) in {elapsed:.1f}s, "
        f"{rate:.0f}/s over {jobs} jobs"
    )
    click.echo("verbs: " + ", ".join(f"{v} {n}" for v, n in sorted(verbs.items())))
    click.echo("model states reached: " + ", ".join(sorted(states)))
    click.echo(f"{totals['findings']} finding(s), {totals['written']} new scenario file(s)")
    sys.exit(max(codes.values()))
