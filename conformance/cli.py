"""The ``mailharness`` command line.

Exit codes (stable, for CI): 0 every applicable scenario passed; 1 some
failed or could not be judged; 2 usage or input error (nothing ran);
3 the target was unreachable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import fnmatch
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click

from conformance.cli_fuzz import fuzz
from conformance.cli_load import load
from conformance.cli_queue import queue
from conformance.cli_replay import pcap2yaml, replay
from conformance.cli_report import report, requirements
from reference_server.app import MailServer, serve_until_signal
from reference_server.config import ConfigError, load_config
from reference_server.controller import ServerThread
from reference_server.devsetup import dev_config, write_target
from reference_server.outbound.settings import Route, TlsPolicy
from reference_server.web.listener import web_url

from . import __version__
from ._yaml import LoadError
from .cli_common import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from .redact import Redactor
from .replay.pcapwriter import CaptureRecorder
from .report.console import print_result, print_summary
from .report.junit import write_junit
from .report.render import format_for, write_report
from .requirements import shipped_catalogue
from .results import FAIL_ON, RunResult, ScenarioResult
from .scenario.loader import LoadErrors, load_paths
from .scenario.model import Scenario
from .scenario.runner import Runner, TargetUnreachable, check_against_target
from .sink import Sink
from .targets import Target, load_target
from .transport import CHANNEL_TAP

__all__ = ["main", "select"]


def select(scenarios: list[Scenario], patterns: tuple[str, ...]) -> list[Scenario]:
    """Keep scenarios whose id or a tag matches any ``-k`` pattern.

    A pattern with ``*``/``?``/``[`` is a glob over the whole id or tag;
    otherwise it matches as a substring of the id or equals a tag. A
    leading ``!`` excludes instead.
    """
    include = [p for p in patterns if not p.startswith("!")]
    exclude = [p[1:] for p in patterns if p.startswith("!")]

    def hit(sc: Scenario, pat: str) -> bool:
        if any(ch in pat for ch in "*?["):
            return fnmatch.fnmatchcase(sc.id, pat) or any(
                fnmatch.fnmatchcase(t, pat) for t in sc.tags
            )
        return pat in sc.id or pat in sc.tags

    return [
        sc
        for sc in scenarios
        if (not include or any(hit(sc, p) for p in include))
        and not any(hit(sc, p) for p in exclude)
    ]


def _fail_input(errors: list[LoadError]) -> None:
    for err in errors:
        click.echo(str(err), err=True)
    click.echo(f"{len(errors)} error(s) in scenario or target files; nothing was run", err=True)
    sys.exit(EXIT_USAGE)


def _default_paths(paths: tuple[Path, ...]) -> list[Path]:
    if paths:
        return list(paths)
    default = Path("scenarios")
    if not default.is_dir():
        raise click.UsageError("give scenario files or directories (there is no ./scenarios here)")
    return [default]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailharness")
def main() -> None:
    """Conformance checks and load tests for SMTP, POP3 and IMAP servers."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def validate(paths: tuple[Path, ...]) -> None:
    """Check scenario files without running them (exit 2 on any error)."""
    try:
        scenarios = load_paths(_default_paths(paths))
    except LoadErrors as exc:
        _fail_input(exc.errors)
    click.echo(f"{len(scenarios)} scenario(s) OK")


def run_options(func: Callable[..., None]) -> Callable[..., None]:
    """The options ``run`` and ``check`` share: reports, selection, concurrency, TLS, output."""
    options = [
        click.option(
            "--junit", type=click.Path(path_type=Path, dir_okay=False), help="Write JUnit XML here."
        ),
        click.option(
            "--json",
            "json_file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Write the full results (with transcripts) as JSON here.",
        ),
        click.option(
            "--report",
            "reports",
            multiple=True,
            type=click.Path(path_type=Path, dir_okay=False),
            help="Write a report here: .html (one self-contained page), .md or .sarif. Repeatable.",
        ),
        click.option(
            "--sarif",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Write SARIF 2.1.0 here (rules are requirement ids).",
        ),
        click.option(
            "--fail-on",
            type=click.Choice(FAIL_ON),
            default="should",
            show_default=True,
            help="The weakest requirement level whose failure fails the exit code "
            "(must: only MUST failures; should: MUST and SHOULD; may: all). Errors always do.",
        ),
        click.option(
            "-k",
            "patterns",
            multiple=True,
            metavar="PATTERN",
            help="Run only scenarios whose id or tag matches (glob or substring; "
            "!PATTERN excludes). Repeatable.",
        ),
        click.option(
            "-j",
            "--jobs",
            type=click.IntRange(1, 512),
            default=8,
            show_default=True,
            help="Scenarios run at once.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            default=None,
            help="Seconds one scenario may take (default: the scenario's own, else 60).",
        ),
        click.option(
            "--ca-file",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="Trust this CA for TLS (overrides the target file).",
        ),
        click.option("--insecure", is_flag=True, help="Do not verify TLS certificates."),
        click.option(
            "-v", "--verbose", is_flag=True, help="Show every result and whole transcripts."
        ),
        click.option(
            "--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _report_targets(reports: tuple[Path, ...], sarif: Path | None) -> list[tuple[Path, str]]:
    """(path, format) for each --report and --sarif; a name without a known format: exit 2."""
    targets: list[tuple[Path, str]] = []
    for path in reports:
        try:
            targets.append((path, format_for(path)))
        except ValueError as exc:
            click.echo(f"--report {exc}", err=True)
            sys.exit(EXIT_USAGE)
    if sarif is not None:
        targets.append((sarif, "sarif"))
    return targets


def _prepare(
    target_file: Path,
    roots: list[Path],
    patterns: tuple[str, ...],
    *,
    ca_file: Path | None,
    insecure: bool,
    require_services: bool,
) -> tuple[Target, list[Scenario]]:
    """Load the target and the scenarios, select with ``-k``; exit 2 on any input error.

    ``require_services``: a chosen scenario naming a service the target lacks is
    an input error (``run``); otherwise it is reported not applicable (``check``).
    """
    try:
        target = load_target(target_file).with_tls(insecure=insecure, ca_file=ca_file)
    except LoadError as exc:
        _fail_input([exc])
    try:
        scenarios = load_paths(roots, accounts=set(target.accounts))
    except LoadErrors as exc:
        _fail_input(exc.errors)
    chosen = select(scenarios, patterns)
    if not chosen:
        click.echo(
            f"no scenario matches {' '.join(patterns)} (of {len(scenarios)} loaded)", err=True
        )
        sys.exit(EXIT_USAGE)
    if require_services:
        service_errors = check_against_target(chosen, target)
        if service_errors:
            _fail_input(service_errors)
    return target, chosen


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--target",
    "target_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Target file: hosts, ports, TLS and accounts of the server under test.",
)
@click.option(
    "--capture",
    "capture_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Record the run's sessions (their cleartext: up to STARTTLS) as a pcap file here.",
)
@run_options
def run(
    paths: tuple[Path, ...],
    target_file: Path,
    capture_file: Path | None,
    junit: Path | None,
    json_file: Path | None,
    reports: tuple[Path, ...],
    sarif: Path | None,
    fail_on: str,
    patterns: tuple[str, ...],
    jobs: int,
    timeout: float | None,
    ca_file: Path | None,
    insecure: bool,
    verbose: bool,
    progress: bool | None,
) -> None:
    """Run scenarios against a target server."""
    target, chosen = _prepare(
        target_file,
        _default_paths(paths),
        patterns,
        ca_file=ca_file,
        insecure=insecure,
        require_services=True,
    )
    recorder = CaptureRecorder() if capture_file is not None else None
    token = CHANNEL_TAP.set(recorder)
    try:
        code = execute(
            chosen,
            target,
            junit=junit,
            json_file=json_file,
            reports=_report_targets(reports, sarif),
            fail_on=fail_on,
            jobs=jobs,
            timeout=timeout,
            verbose=verbose,
            progress=progress,
        )
    finally:
        CHANNEL_TAP.reset(token)
        if recorder is not None and capture_file is not None:
            count = recorder.write(capture_file)
            click.echo(f"capture: {count} connection(s) written to {capture_file}", err=True)
    sys.exit(code)


def execute(
    scenarios: list[Scenario],
    target: Target,
    *,
    junit: Path | None = None,
    json_file: Path | None = None,
    reports: list[tuple[Path, str]] | None = None,
    fail_on: str = "should",
    jobs: int = 8,
    timeout: float | None = None,
    verbose: bool = False,
    progress: bool | None = None,
    sink: Sink | None = None,
) -> int:
    """Run, report, and return the exit code (shared by ``run`` and ``check``).

    ``sink``: an outbound sink already bound (the embedded server's route points at
    it); without it the runner makes one from the target's ``sink`` section, if any.
    """
    show_progress = sys.stderr.isatty() if progress is None else progress
    out = sys.stdout
    done = [0]

    catalogue = shipped_catalogue()
    redactor = Redactor(a.password for a in target.accounts.values())

    def on_result(r: ScenarioResult) -> None:
        r.severity = catalogue.severity_of(r.covers).value
        redactor.result(r)
        done[0] += 1
        if show_progress:
            click.echo(f"\r[{done[0]}/{len(scenarios)}] {r.id[:60]:<60}", err=True, nl=False)
        if verbose or r.status.value in ("failed", "error"):
            if show_progress:
                click.echo("\r" + " " * 80 + "\r", err=True, nl=False)
            print_result(r, out, verbose=verbose)

    runner = Runner(target, jobs=jobs, scenario_timeout=timeout, on_result=on_result, sink=sink)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    try:
        results = asyncio.run(runner.run(scenarios))
    except TargetUnreachable as exc:
        click.echo(f"target unreachable: {exc}", err=True)
        return EXIT_UNREACHABLE
    if show_progress:
        click.echo("\r" + " " * 80 + "\r", err=True, nl=False)
    covered: dict[str, dict[str, str]] = {}
    for r in results:
        r.severity = catalogue.severity_of(r.covers).value
        for rid in r.covers:
            if rid in catalogue and rid not in covered:
                q = catalogue[rid]
                covered[rid] = {
                    "rfc": q.rfc,
                    "section": q.section,
                    "cite": q.cite,
                    "level": q.level.value,
                    "summary": q.summary,
                    "check": q.check,
                }
    run_result = RunResult(
        results=results,
        target=_describe_target(target),
        started_at=started_at,
        duration=time.monotonic() - t0,
        argv=sys.argv[1:],
        fail_on=fail_on,
        requirements=covered,
    )
    data = run_result.to_json()
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    if junit is not None:
        write_junit(run_result, junit)
    for path, fmt in reports or []:
        write_report(data, path, fmt)
    print_summary(run_result, out)
    return EXIT_OK if run_result.ok else EXIT_FAILED


SHIPPED_SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--target",
    "target_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Check this server instead of the embedded reference server.",
)
@run_options
def check(
    paths: tuple[Path, ...],
    target_file: Path | None,
    junit: Path | None,
    json_file: Path | None,
    reports: tuple[Path, ...],
    sarif: Path | None,
    fail_on: str,
    patterns: tuple[str, ...],
    jobs: int,
    timeout: float | None,
    ca_file: Path | None,
    insecure: bool,
    verbose: bool,
    progress: bool | None,
) -> None:
    """Run the shipped suites against a server (default: the embedded reference server).

    Without --target the reference server starts in this process on free
    loopback ports, with a throwaway certificate and accounts, and stops at
    the end; it relays sink.test to an outbound sink the harness runs, and
    retries its queue after a second. Scenarios for services the target does
    not offer (or that need a sink it lacks) are reported as not applicable.
    """
    roots = list(paths) or [SHIPPED_SCENARIOS]
    with tempfile.TemporaryDirectory(prefix="mailharness-check-") as tmp:
        embedded = sink = None
        if target_file is None:
            embedded, target_file, sink = _start_embedded(Path(tmp))
            click.echo(
                f"embedded reference server: {_listeners(embedded)}; "
                f"outbound sink ({sink.domain}) {sink.host}:{sink.port}",
                err=True,
            )
        try:
            target, chosen = _prepare(
                target_file,
                roots,
                patterns,
                ca_file=ca_file,
                insecure=insecure,
                require_services=False,
            )
            code = execute(
                chosen,
                target,
                junit=junit,
                json_file=json_file,
                reports=_report_targets(reports, sarif),
                fail_on=fail_on,
                jobs=jobs,
                timeout=timeout,
                verbose=verbose,
                progress=progress,
                sink=sink,
            )
        finally:
            if embedded is not None:
                embedded.stop()
            if sink is not None:
                sink.close()  # its listening socket, if no scenario needed it served
    sys.exit(code)


# The embedded server's queue retries quickly, so the outbound suite can watch a retry
# (RFC 5321 §4.5.4.1 wants 30 minutes; queue.test_timing allows less on a test setup).
EMBEDDED_RETRY = 1.0  # seconds before the first retry
EMBEDDED_MAX_RETRY = 2.0  # the backoff stops doubling here
EMBEDDED_LIFETIME = 30.0  # then the queue gives up and bounces


def _start_embedded(directory: Path) -> tuple[ServerThread, Path, Sink]:
    """Start the reference server in a thread, relaying the sink's domain to a new sink.

    The sink is bound first (a free loopback port) so the server's route can name
    its port; it is served later by the runner, on the runner's event loop. The
    target file written for the server carries the sink's address.
    """
    # the embedded server's own log lines would interleave with the report
    logging.getLogger("reference_server").addHandler(logging.NullHandler())
    logging.getLogger("reference_server").propagate = False
    sink = Sink("127.0.0.1", 0)
    config, passwords = dev_config(directory / "server")
    route = Route(domain=sink.domain, host=sink.host, port=sink.port, tls=TlsPolicy.NONE)
    config = dataclasses.replace(
        config,
        # the suites fail logins on purpose; a throwaway loopback server need not make
        # each one wait the production delay (which grows with every failure)
        limits=dataclasses.replace(config.limits, auth_failure_delay=0.1),
        relay=dataclasses.replace(config.relay, routes=(route, *config.relay.routes)),
        queue=dataclasses.replace(
            config.queue,
            test_timing=True,
            retry_interval=EMBEDDED_RETRY,
            max_retry_interval=EMBEDDED_MAX_RETRY,
            lifetime=EMBEDDED_LIFETIME,
        ),
    )
    try:
        thread = ServerThread(config).start()
    except BaseException:
        sink.close()
        raise
    assert thread.server is not None
    target_path = directory / "target.yaml"
    write_target(target_path, config, thread.bound, passwords, thread.server.ca_file)
    with target_path.open("a", encoding="utf-8") as out:  # the file is one YAML mapping
        out.write(f"sink: {{host: '{sink.host}', port: {sink.port}, domain: {sink.domain}}}\n")
    return thread, target_path, sink


def _listeners(thread: ServerThread) -> str:
    return ", ".join(f"{name} {host}:{port}" for name, (host, port) in thread.bound.items())


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Server configuration; without it, a development setup on free ports.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the development setup keeps mail, accounts and certificates "
    "(default: a new temporary directory).",
)
@click.option(
    "--write-target",
    "target_out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write a target file for the listeners opened, for `mailharness run --target`.",
)
def serve(config_path: Path | None, data_dir: Path | None, target_out: Path | None) -> None:
    """Run the reference mail server until Ctrl-C.

    With no --config: a development setup (domain example.test, accounts alice
    and bob with fresh passwords, a generated certificate) on free loopback
    ports, printed at start.
    """
    if config_path is not None:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            sys.exit(EXIT_USAGE)
        passwords: dict[str, str] = {}
    else:
        base = data_dir or Path(tempfile.mkdtemp(prefix="mailharness-serve-"))
        config, passwords = dev_config(base)

    def started(server: MailServer) -> None:
        for name, (host, port) in server.bound.items():
            lst = config.listeners[name]
            click.echo(f"listening: {name} ({lst.kind}, tls {lst.tls}) on {host}:{port}")
            if lst.kind == "http":
                click.echo(f"webmail: {web_url(host, port, str(lst.tls))}")
        click.echo(f"data: {config.data_dir}")
        for user, password in passwords.items():
            click.echo(f"account: {user} password {password}")
        if server.ca_file is not None:
            click.echo(f"CA certificate: {server.ca_file}")
        if target_out is not None:
            write_target(target_out, config, server.bound, passwords, server.ca_file)
            click.echo(f"target file: {target_out}")
        click.echo("Ctrl-C stops the server.", err=True)

    asyncio.run(serve_until_signal(config, on_started=started))


def _describe_target(target: Target) -> dict[str, object]:
    return {
        "host": target.host,
        "domain": target.domain,
        "source": str(target.source) if target.source else None,
        "services": {n: f"{s.host}:{s.port}/{s.tls.value}" for n, s in target.services.items()},
        "tls_verify": target.verify,
    }


main.add_command(queue)
main.add_command(report)
main.add_command(requirements)
main.add_command(fuzz)
main.add_command(load)
main.add_command(pcap2yaml)
main.add_command(replay)


if __name__ == "__main__":  # pragma: no cover
    main()
