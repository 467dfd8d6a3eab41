"""``mailharness load``: a thin wrapper over Locust's own runner (docs/load.md).

It builds a ``locust -f loadtest/locustfile.py`` command line from its
options and runs Locust in a subprocess; it never imports locust, which
monkey-patches the standard library with gevent at import and would break
asyncio code in this process. Around the run it:

- checks the target file (and the ``--scenario`` file) first, so an input
  error exits 2 before anything starts;
- samples the CPU of the Locust process and its workers once a second
  (``psutil``, which Locust depends on) and, like Locust's own "CPU usage
  above 90%" log line (which it also watches for), warns when the load
  generator itself is the bottleneck;
- records the run's parameters (every option, the versions, the target's
  services, the seed, start and end times, the Locust command) together with
  the results mailharness adds to Locust's (delivery counts, open-model
  arrivals, capacity search, CPU) as JSON next to the CSV or HTML results:
  ``PREFIX_params.json`` with ``--csv PREFIX``, else ``NAME_params.json``
  beside ``--html NAME.html``, else ``load-params.json`` in the current
  directory.

Exit codes: Locust's own (0 no failed requests, 1 some failed); 2 usage or
input error (nothing ran).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click

from . import __version__
from .cli_common import EXIT_USAGE, target_or_exit
from .durations import parse_duration
from .scenario.loader import LoadErrors, load_paths
from .scenario.runner import check_against_target
from .targets import Target

__all__ = ["PROFILES", "CpuMonitor", "load", "locust_command", "params_path"]


# profile -> services of the target it needs (any one of a tuple will do)
# (loadtest/users.py and loadtest/delivery.py define them; the locustfile checks again)
PROFILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "submission": (("submission",),),
    "submissions": (("submissions",),),
    "mx": (("mx",),),
    "pop3": (("pop3",),),
    "imap": (("imap",),),
    "imap-idle": (("imap",),),
    "mixed": (("submission",), ("pop3",), ("imap",)),
    "delivery": (("submission", "submissions"), ("imap", "imaps", "pop3", "pop3s")),
}
WEB_AUTOQUIT = 10  # seconds the web UI stays up after a --web run with --run-time
CPU_LIMIT = 90.0  # percent of one core, as Locust's own warning
CPU_SUSTAINED = 3  # samples (seconds) at or above the limit before warning
LOCUST_CPU_LINES = ("CPU usage above", "exceeded cpu threshold", "CPU usage was too high")
_SEED_LINE = re.compile(r"mailharness load: seed (\d+)")


def parse_run_time(text: str) -> float:
    """Seconds of a Locust run time (``90``, ``30s``, ``2m``, ``1h30m``).

    Raises:
        click.BadParameter: not in that form.
    """
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _locustfile() -> Path:
    spec = importlib.util.find_spec("loadtest")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise click.ClickException("the loadtest package is not installed next to conformance")
    return Path(next(iter(spec.submodule_search_locations))) / "locustfile.py"


def _locust_version() -> str | None:
    try:
        return importlib.metadata.version("locust")
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class LoadOptions:
    """Everything ``mailharness load`` was given (recorded as is in the params file)."""

    profile: str | None
    target: Path | None
    users: int
    spawn_rate: float | None
    run_time: str | None
    rate: float | None = None
    rate_shape: str = "constant"
    rate_start: float | None = None
    rate_steps: int = 5
    step_time: float = 10.0
    ramp_time: float | None = None
    max_lag: float = 1.0
    capacity: bool = False
    max_p95_ms: float = 1000.0
    max_error_rate: float = 0.01
    html: Path | None = None
    csv: str | None = None
    web: bool = False
    web_port: int = 8089
    scenario: Path | None = None
    processes: int | None = None
    master: bool = False
    worker: bool = False
    master_host: str = "127.0.0.1"
    master_port: int = 5557
    expect_workers: int = 1
    seed: int | None = None
    delivery_timeout: float = 10.0
    locust_args: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in vars(self).items():
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out


def params_path(opts: LoadOptions) -> Path:
    """Where the params JSON goes: beside the CSV, else the HTML, else ./load-params.json."""
    if opts.csv:
        return Path(f"{opts.csv}_params.json")
    if opts.html is not None:
        return opts.html.with_name(opts.html.stem + "_params.json")
    return Path("load-params.json")


def locust_command(opts: LoadOptions, locustfile: Path, results_file: Path | None) -> list[str]:
    """The ``python -m locust ...`` command line for ``opts``."""
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile)]
    if opts.target is not None:
        cmd += ["--target-file", str(opts.target)]
    if opts.profile is not None:
        cmd += ["--profile", opts.profile]
    if opts.scenario is not None:
        cmd += ["--profile", "scenario", "--scenario", str(opts.scenario)]
    if opts.seed is not None:
        cmd += ["--seed", str(opts.seed)]
    if opts.profile == "delivery":
        cmd += ["--delivery-timeout", f"{opts.delivery_timeout:g}"]
    if opts.worker:  # a worker takes everything else from its master
        cmd += ["--worker", "--master-host", opts.master_host]
        return [*cmd, "--master-port", str(opts.master_port), *opts.locust_args]
    cmd += ["--host", "127.0.0.1", "-u", str(opts.users)]
    cmd += ["-r", f"{opts.spawn_rate if opts.spawn_rate is not None else opts.users:g}"]
    run_time = opts.run_time
    if run_time is None and opts.capacity:  # the search's own bound, plus the start
        run_time = f"{int(opts.rate_steps * opts.step_time + 5)}s"
    if run_time is not None:
        cmd += ["-t", run_time]
    cmd += ["--stop-timeout", "5"]
    if opts.rate is not None:
        cmd += ["--rate", f"{opts.rate:g}", "--rate-shape", opts.rate_shape]
        cmd += ["--rate-steps", str(opts.rate_steps), "--step-time", f"{opts.step_time:g}"]
        cmd += ["--max-lag", f"{opts.max_lag:g}"]
        if opts.rate_start is not None:
            cmd += ["--rate-start", f"{opts.rate_start:g}"]
        if opts.ramp_time is not None:
            cmd += ["--ramp-time", f"{opts.ramp_time:g}"]
    if opts.capacity:
        cmd += ["--capacity", "--max-p95-ms", f"{opts.max_p95_ms:g}"]
        cmd += ["--max-error-rate", f"{opts.max_error_rate:g}"]
    if opts.csv:
        cmd += ["--csv", opts.csv]
    if opts.html is not None:
        cmd += ["--html", str(opts.html)]
    if opts.web:
        cmd += ["--web-host", "127.0.0.1", "--web-port", str(opts.web_port)]
        if run_time is not None:  # start at once, show it, quit a little after the end
            cmd += ["--autostart", "--autoquit", str(WEB_AUTOQUIT)]
    else:
        cmd += ["--headless"]
    if opts.processes is not None:
        cmd += ["--processes", str(opts.processes)]
    if opts.master:
        cmd += ["--master", "--expect-workers", str(opts.expect_workers)]
        cmd += ["--master-bind-port", str(opts.master_port)]
    if results_file is not None:
        cmd += ["--mailharness-results", str(results_file)]
    return [*cmd, *opts.locust_args]


# -- CPU of the load generator --------------------------------------------------------


class CpuMonitor:
    """Samples the CPU of a process and its children once a second, in a thread.

    A process counts as saturated after :data:`CPU_SUSTAINED` samples at or
    above :data:`CPU_LIMIT` percent (of one core: a Locust process runs on one).
    """

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid, self.interval = pid, interval
        self.samples: dict[int, list[float]] = {}
        self.names: dict[int, str] = {}
        self.available = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-monitor", daemon=True)

    def start(self) -> CpuMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            self.available = False
            return
        procs: dict[int, Any] = {}
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.wait(self.interval):
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for proc in family:
                try:
                    if proc.pid not in procs:
                        procs[proc.pid] = proc
                        proc.cpu_percent(None)  # the first call only starts the count
                        self.names[proc.pid] = "locust" if proc.pid == self.pid else "worker"
                        continue
                    self.samples.setdefault(proc.pid, []).append(proc.cpu_percent(None))
                except psutil.Error:
                    continue

    def saturated(self) -> dict[int, float]:
        """pid -> mean CPU % of the processes that sat at the limit."""
        out: dict[int, float] = {}
        for pid, values in self.samples.items():
            if sum(v >= CPU_LIMIT for v in values) >= CPU_SUSTAINED:
                out[pid] = sum(values) / len(values)
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "sampled": self.available,
            "limit_percent": CPU_LIMIT,
            "processes": {
                str(pid): {
                    "role": self.names.get(pid, "?"),
                    "samples": len(v),
                    "mean_percent": round(sum(v) / len(v), 1) if v else 0.0,
                    "max_percent": round(max(v), 1) if v else 0.0,
                }
                for pid, v in self.samples.items()
            },
        }


@dataclass
class Watched:
    """What :func:`run_locust` noticed in Locust's output."""

    cpu_lines: list[str] = field(default_factory=list)
    seed: int | None = None


def _pump(stream: IO[str], echo: Callable[[str], None], watched: Watched) -> None:
    for line in stream:
        echo(line.rstrip("\n"))
        if any(marker in line for marker in LOCUST_CPU_LINES):
            watched.cpu_lines.append(line.strip())
        m = _SEED_LINE.search(line)
        if m and watched.seed is None:
            watched.seed = int(m.group(1))


def run_locust(cmd: Sequence[str], env: dict[str, str]) -> tuple[int, CpuMonitor, Watched]:
    """Run Locust, echoing its output; returns (exit code, CPU samples, what it said)."""
    watched = Watched()
    with subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            threading.Thread(target=_pump, args=(proc.stdout, click.echo, watched), daemon=True),
            threading.Thread(
                target=_pump,
                args=(proc.stderr, lambda s: click.echo(s, err=True), watched),
                daemon=True,
            ),
        ]
        for t in pumps:
            t.start()
        monitor = CpuMonitor(proc.pid).start()
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()  # Locust stops the test and writes its reports on SIGTERM
            code = proc.wait()
        finally:
            monitor.stop()
            for t in pumps:
                t.join(5)
    return code, monitor, watched


# -- checks before the run ------------------------------------------------------------


def _check_inputs(opts: LoadOptions) -> Target | None:
    """Load the target and scenario file; exit 2 with the reasons if they will not do."""
    if opts.target is None:
        return None
    target = target_or_exit(opts.target)
    if opts.profile is not None:
        for choices in PROFILES[opts.profile]:
            if not any(name in target.services for name in choices):
                raise click.UsageError(
                    f"profile {opts.profile} needs a {' or '.join(choices)} service; "
                    f"{opts.target} has {', '.join(sorted(target.services)) or 'none'}"
                )
    if opts.scenario is not None:
        try:
            scenarios = load_paths([opts.scenario], accounts=set(target.accounts))
        except LoadErrors as exc:
            for err in exc.errors:
                click.echo(str(err), err=True)
            sys.exit(EXIT_USAGE)
        problems = [str(e) for e in check_against_target(scenarios, target)]
        problems += [
            f"{sc.location}: {sc.id} needs the outbound sink" for sc in scenarios if sc.sink
        ]
        if problems:
            for line in problems:
                click.echo(line, err=True)
            click.echo("--scenario: these scenarios cannot run as load", err=True)
            sys.exit(EXIT_USAGE)
    return target


def _describe(target: Target | None) -> dict[str, Any] | None:
    if target is None:
        return None
    return {
        "source": str(target.source) if target.source else None,
        "host": target.host,
        "domain": target.domain,
        "services": {n: f"{s.host}:{s.port}/{s.tls.value}" for n, s in target.services.items()},
        "accounts": len(target.accounts),
    }


def _validate(opts: LoadOptions) -> None:
    if opts.worker and (opts.master or opts.processes):
        raise click.UsageError("--worker excludes --master and --processes")
    if opts.master and opts.processes:
        raise click.UsageError("--master and --processes exclude each other")
    if not opts.worker and opts.target is None:
        raise click.UsageError("give --target FILE")
    if opts.profile is None and opts.scenario is None:
        raise click.UsageError("give --profile or --scenario FILE")
    if opts.profile is not None and opts.scenario is not None:
        raise click.UsageError("--profile and --scenario exclude each other")
    if opts.capacity and opts.rate is None:
        raise click.UsageError("--capacity needs --rate (the highest rate to try)")
    if opts.rate is not None and opts.rate <= 0:
        raise click.UsageError("--rate must be above 0")
    if opts.run_time is not None:
        parse_run_time(opts.run_time)
    if opts.run_time is None and not opts.capacity and not opts.web and not opts.worker:
        raise click.UsageError("give --run-time (a headless run needs an end), or --web")


def _summary(params: dict[str, Any], monitor: CpuMonitor, cpu_lines: list[str]) -> list[str]:
    """Lines for the end of the run, and the CPU verdict put into ``params``."""
    lines: list[str] = []
    results = params.get("results") or {}
    delivery = results.get("delivery") or {}
    if delivery.get("submitted"):
        counts = {k: delivery.get(k, 0) for k in ("submitted", "seen", "lost", "duplicated")}
        lines.append(
            "delivery: {submitted} submitted, {seen} seen, {lost} lost, "
            "{duplicated} duplicated".format(**counts)
        )
    open_model = results.get("open_model") or {}
    opts = params["options"]
    if opts.get("rate") is not None and open_model:
        seconds = params.get("run_seconds") or 0
        achieved = open_model.get("started", 0) / seconds if seconds else 0.0
        lines.append(
            f"open model: {open_model.get('started', 0)} arrivals started "
            f"(~{achieved:.2f}/s over {seconds:g}s; target {opts['rate']:g}/s), "
            f"{open_model.get('missed', 0)} missed"
        )
    capacity = results.get("capacity")
    if capacity:
        rate = capacity.get("sustainable_rate")
        verdict = f"{rate:.2f} msg/s" if rate is not None else "none (the first step failed)"
        lines.append(f"capacity: highest sustainable rate {verdict}; {capacity['stopped_because']}")
    saturated = monitor.saturated()
    warn = bool(saturated or cpu_lines)
    params["cpu"] = {**monitor.summary(), "saturated": warn, "locust_warnings": cpu_lines[:5]}
    if warn:
        which = ", ".join(
            f"{monitor.names.get(pid, '?')} pid {pid} averaged {mean:.0f}%"
            for pid, mean in sorted(saturated.items())
        )
        lines.append(
            "WARNING: the load generator itself is the bottleneck: "
            + (which or "Locust reported CPU usage above 90%")
            + ". Rates and latencies measured now understate the server; spread the load "
            "with --processes N or workers on more machines (see docs/load.md)."
        )
    return lines


# -- the command ----------------------------------------------------------------------

_FLOAT = click.FloatRange(min=0, min_open=True)


@click.command(context_settings={"ignore_unknown_options": False})
@click.option(
    "--profile",
    type=click.Choice(sorted(PROFILES)),
    default=None,
    help="Which users: submission, submissions, mx, pop3, imap, imap-idle, mixed, or "
    "delivery (submit, then watch the recipient's mailbox for the message).",
)
@click.option(
    "--target",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Target file (docs/targets.md); IP literals only, the harness resolves no names.",
)
@click.option(
    "--users",
    "-u",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Concurrent users (the open model: the most transactions at once).",
)
@click.option(
    "--spawn-rate",
    "-r",
    type=_FLOAT,
    default=None,
    help="Users started per second (default: all at once).",
)
@click.option("--run-time", "-t", default=None, help="How long: 30s, 5m, 1h30m.")
@click.option(
    "--rate",
    type=_FLOAT,
    default=None,
    metavar="MSGS/S",
    help="Open model: start messages at this rate, whatever the response times.",
)
@click.option(
    "--rate-shape",
    type=click.Choice(["constant", "step", "ramp"]),
    default="constant",
    show_default=True,
    help="How --rate develops over the run.",
)
@click.option(
    "--rate-start",
    type=click.FloatRange(min=0),
    default=None,
    help="First rate of step, ramp and --capacity.",
)
@click.option(
    "--rate-steps",
    type=click.IntRange(1, 50),
    default=5,
    show_default=True,
    help="Steps of --rate-shape step and of --capacity.",
)
@click.option("--step-time", type=_FLOAT, default=10.0, show_default=True, help="Seconds per step.")
@click.option(
    "--ramp-time",
    type=_FLOAT,
    default=None,
    help="Seconds of --rate-shape ramp (default: the run time).",
)
@click.option(
    "--max-lag",
    type=_FLOAT,
    default=1.0,
    show_default=True,
    help="Open model: an arrival overdue by more seconds is counted missed.",
)
@click.option(
    "--capacity",
    is_flag=True,
    help="Search the highest sustainable rate up to --rate (see docs/load.md).",
)
@click.option(
    "--max-p95-ms",
    type=_FLOAT,
    default=1000.0,
    show_default=True,
    help="Capacity search: p95 limit in ms.",
)
@click.option(
    "--max-error-rate",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Capacity search: limit on the failed fraction.",
)
@click.option(
    "--html",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write Locust's HTML report here.",
)
@click.option(
    "--csv",
    "csv_prefix",
    default=None,
    metavar="PREFIX",
    help="Write Locust's CSV statistics as PREFIX_stats.csv etc.",
)
@click.option("--web", is_flag=True, help="Locust's web UI on 127.0.0.1 instead of headless.")
@click.option("--web-port", type=click.IntRange(1, 65535), default=8089, show_default=True)
@click.option(
    "--scenario",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Run this scenario file (or directory) as load instead of a profile.",
)
@click.option(
    "--processes",
    type=click.IntRange(-1),
    default=None,
    help="Fork this many Locust worker processes on this machine (-1: one per core).",
)
@click.option("--master", is_flag=True, help="Be the master of workers on other machines.")
@click.option("--worker", is_flag=True, help="Be a worker of --master-host.")
@click.option(
    "--master-host",
    default="127.0.0.1",
    show_default=True,
    help="The master's address (an IP literal), for --worker.",
)
@click.option("--master-port", type=click.IntRange(1, 65535), default=5557, show_default=True)
@click.option(
    "--expect-workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="--master: wait for this many workers before starting.",
)
@click.option("--seed", type=int, default=None, help="Seed of the message generator.")
@click.option(
    "--delivery-timeout",
    type=_FLOAT,
    default=10.0,
    show_default=True,
    help="Delivery profile: seconds a message may take to arrive before it is lost.",
)
@click.argument("locust_args", nargs=-1, type=click.UNPROCESSED)
def load(**kwargs: Any) -> None:
    """Load-test a mail server with Locust (arguments after -- go to Locust as they are).

    Examples: `mailharness load --profile submission --target t.yaml -u 20 -r 5
    -t 1m --csv out/sub`; the open model at 50 messages/s: add `--rate 50`; the
    highest sustainable rate up to 200/s: `--rate 200 --capacity`.
    """
    opts = LoadOptions(
        csv=kwargs.pop("csv_prefix"),
        locust_args=tuple(kwargs.pop("locust_args")),
        **kwargs,
    )
    _validate(opts)
    target = _check_inputs(opts)
    locust = _locust_version()
    if locust is None:
        raise click.ClickException("Locust is not installed: pip install 'mailharness[load]'")
    with tempfile.TemporaryDirectory(prefix="mailharness-load-") as tmp:
        results_file = None if opts.worker else Path(tmp) / "results.json"
        cmd = locust_command(opts, _locustfile(), results_file)
        env = dict(os.environ)
        root = str(_locustfile().parent.parent)  # `-m locust` finds loadtest from a checkout
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        started = dt.datetime.now(dt.UTC)
        t0 = time.monotonic()
        code, monitor, watched = run_locust(cmd, env)
        elapsed = time.monotonic() - t0
        ended = dt.datetime.now(dt.UTC)
        results: dict[str, Any] = {}
        if results_file is not None and results_file.exists():
            results = json.loads(results_file.read_text(encoding="utf-8"))
    if opts.worker:
        sys.exit(code)
    params: dict[str, Any] = {
        "tool": "mailharness load",
        "version": __version__,
        "locust_version": locust,
        "python": sys.version.split()[0],
        "options": opts.to_json(),
        "seed": opts.seed if opts.seed is not None else watched.seed,
        "target": _describe(target),
        "locust_command": cmd[1:],
        "started_at": started.isoformat(timespec="seconds"),
        "ended_at": ended.isoformat(timespec="seconds"),
        "wall_seconds": round(elapsed, 2),
        "run_seconds": parse_run_time(opts.run_time) if opts.run_time else None,
        "exit_code": code,
        "results": results,
    }
    lines = _summary(params, monitor, watched.cpu_lines)
    out = params_path(opts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    for line in lines:
        click.echo(line, err=line.startswith("WARNING"))
    click.echo(f"parameters and results: {out}")
    sys.exit(code)
