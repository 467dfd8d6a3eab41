"""``mailharness pcap2yaml`` and ``mailharness replay``: captured sessions as scenarios.

Exit codes as for ``run``: 0 every session answered as captured (pcap2yaml:
scenarios written), 1 some exchange answered differently, 2 usage or input
error (an unreadable capture, nothing convertible, a bad option), 3 the
target was unreachable.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .capture import CaptureError, TcpStream, read_streams
from .cli_common import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, target_or_exit
from .redact import Redactor
from .replay.convert import (
    Converted,
    ConvertOptions,
    convert_streams,
    session_label,
    write_converted,
)
from .replay.diff import ReplayRunner, session_reports
from .report.junit import write_junit
from .results import RunResult
from .scenario.loader import LoadErrors, load_paths
from .scenario.runner import TargetUnreachable, check_against_target
from .targets import Target

__all__ = ["pcap2yaml", "replay"]


def _pair(value: str, option: str) -> tuple[str, str]:
    old, sep, new = value.partition("=")
    if not sep or not old:
        raise click.BadParameter(f"expected OLD=NEW, got {value!r}", param_hint=option)
    return old, new


def _service_ports(values: tuple[str, ...]) -> dict[int, str]:
    ports: dict[int, str] = {}
    for value in values:
        port, name = _pair(value, "--service")
        if not port.isdigit() or not 0 < int(port) < 65536 or not name:
            raise click.BadParameter(
                f"expected PORT=SERVICE, got {value!r}", param_hint="--service"
            )
        ports[int(port)] = name
    return ports


def conversion_options(func: Callable[..., None]) -> Callable[..., None]:
    """The options ``pcap2yaml`` and ``replay`` share."""
    options = [
        click.option(
            "--match",
            type=click.Choice(["codes", "text", "exact"]),
            default="codes",
            show_default=True,
            help="How closely answers must match the capture: reply codes and statuses; "
            "plus their text with volatile parts (numbers, ids, dates) generalised; "
            "or every line exactly.",
        ),
        click.option(
            "--rewrite",
            "rewrites",
            multiple=True,
            metavar="OLD=NEW",
            help="Replace OLD (case-insensitively) by NEW in what is sent and expected, e.g. "
            "an address or domain of the capture by one of the target "
            "(NEW may use target variables: {account.bob.address}, {domain}). Repeatable.",
        ),
        click.option(
            "--account",
            default=None,
            metavar="NAME",
            help="The target account logins are made as (default: the target's first "
            "account; without --target, alice).",
        ),
        click.option(
            "--service",
            "services",
            multiple=True,
            metavar="PORT=SERVICE",
            help="Replay sessions to this server port of the capture on this service of "
            "the target (default: 25 mx, 587 submission, 110 pop3, 143 imap, else by "
            "protocol; with --target, a port equal to a target service's port is that "
            "service). Repeatable.",
        ),
        click.option(
            "--keep-timing",
            is_flag=True,
            help="Keep the capture's pauses between commands as sleep steps.",
        ),
        click.option(
            "--pause",
            type=click.FloatRange(min=0),
            default=0.5,
            show_default=True,
            help="With --keep-timing: the shortest pause (seconds) kept.",
        ),
        click.option(
            "--include-incomplete",
            is_flag=True,
            help="Also convert sessions the capture did not see whole (gaps, or begun "
            "before the capture); they are converted up to the first gap, with a warning.",
        ),
    ]

    @functools.wraps(func)
    def packed(**kwargs: Any) -> None:
        conversion = {name: kwargs.pop(name) for name in _CONVERSION_PARAMS}
        func(conversion=conversion, **kwargs)

    for option in reversed(options):
        packed = option(packed)
    return packed


# the parameters of conversion_options, handed to the command as one dict
_CONVERSION_PARAMS = (
    "match",
    "rewrites",
    "account",
    "services",
    "keep_timing",
    "pause",
    "include_incomplete",
)


def _convert(capture: Path, target: Target | None, conversion: dict[str, Any]) -> list[Converted]:
    """The capture's sessions as scenarios, with the options the command was given."""
    return convert_streams(_read(capture), capture, _options(target=target, **conversion))


def _read(capture: Path) -> list[TcpStream]:
    try:
        return read_streams(capture)
    except CaptureError as exc:
        click.echo(f"cannot read the capture: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except OSError as exc:
        click.echo(f"cannot read the capture: {capture}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_USAGE)


def _options(
    *,
    match: str,
    rewrites: tuple[str, ...],
    account: str | None,
    services: tuple[str, ...],
    keep_timing: bool,
    pause: float,
    include_incomplete: bool,
    target: Target | None,
) -> ConvertOptions:
    ports: dict[int, str] = {}
    if target is not None:
        ports = {s.port: name for name, s in target.services.items() if s.tls.value != "implicit"}
        if account is None and target.accounts:
            account = next(iter(target.accounts))
        if account is not None and account not in target.accounts:
            known = ", ".join(target.accounts) or "none"
            raise click.BadParameter(
                f"the target has no account {account!r} (it has: {known})", param_hint="--account"
            )
    ports.update(_service_ports(services))
    return ConvertOptions(
        match=match,  # type: ignore[arg-type]
        rewrites=tuple(_pair(r, "--rewrite") for r in rewrites),
        account=account or "alice",
        keep_timing=keep_timing,
        pause=pause,
        services=ports,
        include_incomplete=include_incomplete,
    )


def _announce(converted: list[Converted], written: dict[str, Path] | None = None) -> None:
    for conv in converted:
        label = session_label(conv.stream)
        if conv.document is None:
            click.echo(f"{label}: skipped: {conv.skipped}", err=True)
            continue
        where = f" -> {written[conv.name]}" if written and conv.name in written else ""
        steps = len(conv.document["steps"])
        proto = conv.document["protocol"]
        click.echo(f"{label}: {proto}, {steps} step(s){where}", err=True)
        for warning in conv.warnings:
            click.echo(f"  warning: {warning}", err=True)


@click.command()
@click.argument("capture", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory the scenarios (one per session) and their message files go to.",
)
@click.option(
    "--target",
    "target_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A target file, for the default account and the service of each port.",
)
@conversion_options
def pcap2yaml(
    capture: Path,
    out_dir: Path,
    target_file: Path | None,
    conversion: dict[str, Any],
) -> None:
    """Turn each SMTP, POP3 and IMAP session of a capture (pcap, pcapng) into a scenario.

    Credentials are never written: logins become auth steps as a target
    account. See docs/replay.md.
    """
    target = target_or_exit(target_file) if target_file is not None else None
    converted = _convert(capture, target, conversion)
    paths = write_converted(converted, out_dir)
    _announce(converted, {p.stem: p for p in paths})
    if not paths:
        click.echo("no session of the capture could be converted; nothing written", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(f"{len(paths)} scenario(s) written to {out_dir}")


@click.command()
@click.argument("capture", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--target",
    "target_file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Target file: the server the sessions are replayed against.",
)
@conversion_options
@click.option("--junit", type=click.Path(path_type=Path, dir_okay=False), help="Write JUnit XML.")
@click.option(
    "--json",
    "json_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the results (with transcripts and differences) as JSON here.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds one session may take (default 60).",
)
@click.option(
    "--ca-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Trust this CA for TLS (overrides the target file).",
)
@click.option("--insecure", is_flag=True, help="Do not verify TLS certificates.")
@click.option("-v", "--verbose", is_flag=True, help="Show the transcript of sessions that differ.")
def replay(
    capture: Path,
    target_file: Path,
    conversion: dict[str, Any],
    junit: Path | None,
    json_file: Path | None,
    timeout: float | None,
    ca_file: Path | None,
    insecure: bool,
    verbose: bool,
) -> None:
    """Replay every session of a capture against a target; show what answers differently.

    The sessions are converted as pcap2yaml would (in memory) and run one after
    another in the order they began. Exit 1 if any exchange differs.
    """
    target = target_or_exit(target_file, ca_file=ca_file, insecure=insecure)
    converted = _convert(capture, target, conversion)
    _announce(converted)
    chosen = [c for c in converted if c.document is not None]
    if not chosen:
        click.echo("no session of the capture could be converted; nothing to replay", err=True)
        sys.exit(EXIT_USAGE)
    with tempfile.TemporaryDirectory(prefix="mailharness-replay-") as tmp:
        paths = write_converted(chosen, Path(tmp))
        try:
            scenarios = load_paths(paths, accounts=set(target.accounts))
        except LoadErrors as exc:  # a converter bug, or a --rewrite that broke a template
            for err in exc.errors:
                click.echo(str(err), err=True)
            sys.exit(EXIT_USAGE)
        order = {c.document["id"]: i for i, c in enumerate(chosen) if c.document}
        scenarios.sort(key=lambda sc: order.get(sc.id, 0))
        errors = check_against_target(scenarios, target)
        if errors:
            for err in errors:
                click.echo(f"{err} (map the capture's port with --service PORT=SERVICE)", err=True)
            sys.exit(EXIT_USAGE)
        runner = ReplayRunner(target, jobs=1, scenario_timeout=timeout)
        started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        t0 = time.monotonic()
        try:
            results = asyncio.run(runner.run(scenarios))
        except TargetUnreachable as exc:
            click.echo(f"target unreachable: {exc}", err=True)
            sys.exit(EXIT_UNREACHABLE)
    redactor = Redactor(a.password for a in target.accounts.values())
    reports = session_reports(runner, chosen, results)
    for report in reports:
        redactor.result(report.result)
        for line in report.render():
            click.echo(line)
        if verbose and not report.same:
            for entry in report.result.transcript:
                click.echo("    " + entry.render())
    run_result = RunResult(
        results=[r.result for r in reports],
        target={"source": str(target_file), "capture": str(capture), "match": conversion["match"]},
        started_at=started_at,
        duration=time.monotonic() - t0,
        argv=sys.argv[1:],
        fail_on="may",
    )
    if json_file is not None:
        data = run_result.to_json()
        for item, report in zip(data["results"], reports, strict=True):
            item["session"] = {
                "index": report.converted.stream.index,
                "client": str(report.converted.stream.client),
                "server": str(report.converted.stream.server),
                "first_frame": report.converted.stream.first_frame,
            }
            item["differences"] = [d.to_json() for d in report.differences]
        data["skipped"] = [
            {"session": c.stream.index, "reason": c.skipped} for c in converted if c.skipped
        ]
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    if junit is not None:
        write_junit(run_result, junit)
    same = sum(1 for r in reports if r.same)
    click.echo(f"{same} of {len(reports)} session(s) answered as captured")
    sys.exit(EXIT_OK if same == len(reports) else EXIT_FAILED)
