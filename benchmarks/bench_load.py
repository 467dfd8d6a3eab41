"""Benchmark: the Locust SMTP user against Postfix's smtp-source, both into smtp-sink;
then the reference server under the same user (durable acceptance, delivery latency).

Part 1, the load generator (issue: the load layer's cost). Postfix's smtp-sink
(``smtp-sink -u nobody 127.0.0.1:PORT 4096``: no ``-c``, no ``-v``, nothing
written) takes every message and throws it away, so the client is what is
measured. Into the same sink, in rounds whose order rotates:

- ``smtp-source reuse``: ``smtp-source -s 20 -l 1024 -m N -d`` (20 sessions,
  1024-byte bodies, connection reuse); msgs/s = N / its wall time;
- ``smtp-source new conn``: the same without ``-d`` (one connection per message);
- ``locust 1p per-message``: ``python -m locust -f loadtest/locustfile.py
  --headless --profile mx --message-size 1KB --messages-per-connection 1000000
  --events per-message`` (the MX user, connections reused, one ``SMTP message``
  request per transaction), one process;
- ``locust 1p per-step``: the same with ``--events per-step`` (``SMTP MAIL``,
  ``RCPT`` and ``DATA`` per message);
- ``locust 2p per-message``: ``--processes 2`` (a master and two workers).

A Locust run spawns all its users at once (``-r`` = ``-u``) and lasts
``--duration`` seconds. Its messages per second come from the final statistics
(``--json-file``, written once the users stopped; never the CSV, which Locust
rewrites once a second): the per-second counts of the message entry (``SMTP
message``, or ``SMTP DATA`` per step) over the measuring window, which starts
``--settle`` seconds after Locust logged "All users spawned" and ends a second
before the run time is up. The CPU time (user + system) of the Locust process
tree (master and workers) is sampled with psutil at both ends of that window,
so CPU per message is steady-state cost, without start-up and shutdown. The
whole run's CPU (``getrusage`` of the reaped children, imports included) is
recorded too. smtp-source's CPU is its whole run's.

Goals (issue): one process, per-message events >= 0.6x smtp-source (reuse);
two processes >= 0.9x; per-step events at most 1.25x the CPU per message of
per-message events.

Part 2, the reference server (``--skip-server`` skips it): ``python -m
reference_server`` with the development setup (benchmarks/procs.py), an
``mx`` listener in clear, ``submission`` and ``imap`` with STARTTLS. Its
sustained durable acceptance rate: the MX user as above, per-message, with
``--processes 2``, for ``--server-duration`` seconds (every 250 means the
message is fsynced; the messages stored are counted afterwards), and
smtp-source (reuse) against it as a cross-check. Then end-to-end delivery:
the ``delivery`` profile (loadtest/delivery.py: submit over submission,
watch over IMAP IDLE) at ``--delivery-rate`` messages per second (open model),
its ``DELIVERY delivery end-to-end`` p50/p95.

    .venv/bin/python benchmarks/bench_load.py [--rounds 3] [--duration 10] [--users 30]
        [--skip-server] [--json out.json]

Everything listens on 127.0.0.1 and is reached by address (no name is looked
up); every run is bounded in messages or time (``--run-timeout``). The
machine's load average is printed before and after: on a shared 2-core
machine, compare the ratios of one run, not absolute rates across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import (
    SMTP_SOURCE,
    free_port,
    reference_server,
    smtp_source_command,
    stop_process,
    tail,
    wait_for_greeting,
)

REPO = Path(__file__).resolve().parent.parent
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
RECIPIENT = "bench@sink.test"

CONFIGS = (
    "smtp-source reuse",
    "smtp-source new conn",
    "locust 1p per-message",
    "locust 1p per-step",
    "locust 2p per-message",
)


# --- measuring -----------------------------------------------------------------------


@dataclass
class Run:
    """One measured run of a generator."""

    config: str
    messages: int = 0  # in the measuring window (Locust) or in all (smtp-source)
    seconds: float = 0.0  # the measuring window, or smtp-source's wall time
    rate: float = 0.0  # messages / seconds
    cpu_s: float = 0.0  # CPU seconds in the window (Locust tree) or whole run (smtp-source)
    cpu_us_per_msg: float = 0.0
    cores: dict[str, float] = field(default_factory=dict)  # per process: CPU s / wall s
    sink_cores: float = 0.0  # smtp-sink's CPU s / wall s over the whole run
    total_messages: int = 0
    total_cpu_s: float = 0.0  # whole run, start-up included
    failures: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    per_second: list[int] = field(default_factory=list)
    error: str = ""


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def tree_cpu(pid: int) -> dict[int, float]:
    """User + system CPU seconds of ``pid`` and each of its descendants."""
    out: dict[int, float] = {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


def percentile(histogram: dict[str, int], q: float) -> float | None:
    """The q-quantile of Locust's response-time histogram (ms, as Locust rounds them)."""
    points = sorted((float(k), n) for k, n in histogram.items())
    total = sum(n for _, n in points)
    if not total:
        return None
    rank, seen = q * total, 0
    for value, n in points:
        seen += n
        if seen >= rank:
            return value
    return points[-1][0]


def smtp_source_cmd(
    port: int | str, n: int, args: argparse.Namespace, reuse: bool, rcpt: str = RECIPIENT
) -> list[str]:
    return smtp_source_command(
        port,
        n,
        sessions=args.sessions,
        size=args.size,
        recipient=rcpt,
        extra=["-d"] if reuse else [],
    )


def run_smtp_source(
    config: str, port: int, n: int, args: argparse.Namespace, reuse: bool, rcpt: str = RECIPIENT
) -> Run:
    run = Run(config)
    cmd = smtp_source_cmd(port, n, args, reuse, rcpt)
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        run.error = f"smtp-source timed out after {args.run_timeout}s"
        return run
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        run.error = f"smtp-source exit {proc.returncode}: " + " | ".join(
            (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        )
        return run
    run.messages = run.total_messages = n
    run.seconds = wall
    run.rate = n / wall
    run.cpu_s = run.total_cpu_s = children_cpu() - cpu0
    run.cpu_us_per_msg = run.cpu_s / n * 1e6
    return run


def locust_cmd(
    work: Path,
    target: Path,
    profile: str,
    *,
    users: int,
    duration: float,
    processes: int = 1,
    extra: list[str] | tuple[str, ...] = (),
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{duration:g}s",
        "--json-file",
        str(work / "stats"),
        "--only-summary",
        "--target-file",
        str(target),
        "--profile",
        profile,
        "--seed",
        "1",
        *(["--processes", str(processes)] if processes > 1 else []),
        *extra,
    ]


def run_locust(
    config: str,
    work: Path,
    cmd: list[str],
    entry: tuple[str, str],
    args: argparse.Namespace,
    *,
    duration: float,
) -> tuple[Run, list[dict[str, Any]]]:
    """Run Locust; measure ``entry``'s rate and the CPU of its processes in the window."""
    run = Run(config)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "locust.log"
    stats_file = work / "stats.json"
    stats_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cpu_before = children_cpu()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work, env=env
        )
    try:
        deadline = time.monotonic() + 60
        while b"All users spawned" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                run.error = f"Locust did not start its users:\n{tail(log)}"
                return run, []
            time.sleep(0.02)
        spawned = time.time()
        time.sleep(args.settle)
        w0, c0 = time.time(), tree_cpu(proc.pid)
        time.sleep(max(spawned + duration - 1.0 - time.time(), 0.5))
        w1, c1 = time.time(), tree_cpu(proc.pid)
        proc.wait(timeout=duration + args.run_timeout)
    except subprocess.TimeoutExpired:
        run.error = f"Locust did not finish within {duration + args.run_timeout:g}s"
        return run, []
    finally:
        stop_process(proc)
    run.total_cpu_s = children_cpu() - cpu_before
    if not stats_file.exists():
        run.error = f"no statistics (exit {proc.returncode}):\n{tail(log)}"
        return run, []
    stats = json.loads(stats_file.read_text())
    by_key = {(e["method"], e["name"]): e for e in stats}
    e = by_key.get(entry)
    run.failures = sum(int(x["num_failures"]) for x in stats)
    if e is None:
        run.error = f"no {' '.join(entry)} requests:\n{tail(log)}"
        return run, stats
    per_second = {int(k): int(v) for k, v in e["num_reqs_per_sec"].items()}
    inside = [s for s in sorted(per_second) if s >= w0 and s + 1 <= w1]
    run.per_second = [per_second[s] for s in inside]
    run.total_messages = int(e["num_requests"])
    run.messages = sum(run.per_second)
    run.seconds = float(len(inside))
    run.rate = run.messages / run.seconds if run.seconds else 0.0
    spent = {pid: c1[pid] - c0.get(pid, 0.0) for pid in c1}
    window = w1 - w0
    run.cpu_s = sum(spent.values())
    # CPU per message: the tree's CPU rate over the message rate, both in the window
    run.cpu_us_per_msg = (run.cpu_s / window) / run.rate * 1e6 if run.rate else 0.0
    run.cores = {
        ("master" if pid == proc.pid else f"pid {pid}"): round(s / window, 2)
        for pid, s in spent.items()
    }
    run.p50_ms = percentile(e["response_times"], 0.50)
    run.p95_ms = percentile(e["response_times"], 0.95)
    if proc.returncode not in (0, None) and not run.failures:
        run.error = f"Locust exit {proc.returncode}:\n{tail(log)}"
    return run, stats


# --- part 1: the generators into smtp-sink -------------------------------------------


@contextlib.contextmanager
def smtp_sink(work: Path) -> Iterator[tuple[int, int]]:
    """smtp-sink on a free loopback port, (port, pid); as root it must drop privileges
    (-u nobody)."""
    port = free_port()
    drop = ["-u", "nobody"] if os.geteuid() == 0 else []
    log = work / "smtp-sink.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [SMTP_SINK, *drop, f"127.0.0.1:{port}", "4096"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_greeting(
            port,
            10,
            lambda: proc.poll() is None,
            prefix=b"220",
            goodbye=b"QUIT\r\n",
            protocol="SMTP",
        )
        yield port, proc.pid
    finally:
        stop_process(proc)


def sink_target(path: Path, port: int) -> Path:
    doc = {
        "host": "127.0.0.1",
        "domain": "sink.test",
        "services": {"mx": {"port": port, "tls": "none"}},
        "accounts": {
            f"rcpt{i}": {"address": f"rcpt{i}@sink.test", "password": "unused"} for i in range(1, 5)
        },
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def generator_part(work: Path, args: argparse.Namespace) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {c: [] for c in args.configs}
    work.mkdir(parents=True, exist_ok=True)
    mx_args = ["--message-size", "1KB", "--messages-per-connection", "1000000"]
    with smtp_sink(work) as (port, sink_pid):
        target = sink_target(work / "sink-target.yaml", port)

        def sink_cpu() -> float:
            return sum(tree_cpu(sink_pid).values())

        def one(config: str, kind: str) -> Run:
            if config == "smtp-source reuse":
                return run_smtp_source(config, port, args.source_messages, args, True)
            if config == "smtp-source new conn":
                return run_smtp_source(config, port, args.source_messages_new, args, False)
            processes = 2 if config.startswith("locust 2p") else 1
            events = "per-step" if config.endswith("per-step") else "per-message"
            entry = ("SMTP", "DATA" if events == "per-step" else "message")
            cmd = locust_cmd(
                work / "locust",
                target,
                "mx",
                users=args.users,
                duration=args.duration,
                processes=processes,
                extra=[*mx_args, "--events", events],
            )
            return run_locust(config, work / "locust", cmd, entry, args, duration=args.duration)[0]

        # warm-up: page cache, the interpreter's bytecode, the sink
        one("smtp-source reuse", "warmup")
        for r in range(args.rounds):
            order = list(args.configs)
            order = order[r % len(order) :] + order[: r % len(order)]
            for config in order:
                t0, s0 = time.perf_counter(), sink_cpu()
                run = one(config, f"round {r + 1}")
                run.sink_cores = round((sink_cpu() - s0) / (time.perf_counter() - t0), 2)
                runs[config].append(run)
                cores = " ".join(f"{k} {v:.2f}" for k, v in run.cores.items())
                print(
                    f"  round {r + 1} {config:22} {run.rate:9.0f} msgs/s  "
                    f"{run.cpu_us_per_msg:6.1f} us CPU/msg  {run.messages:7} msgs "
                    f"{run.seconds:5.1f}s  sink {run.sink_cores:.2f} cores"
                    + (f"  Locust cores: {cores}" if cores else "")
                    + (f"  failures {run.failures}" if run.failures else "")
                    + (f"\n    !! {run.error}" if run.error else ""),
                    flush=True,
                )
    return runs


# --- part 2: the reference server ----------------------------------------------------


def server_setup(work: Path) -> tuple[Path, Path, dict[str, int]]:
    """The development setup with mx in clear, submission and imap with STARTTLS."""
    from reference_server.config import load_config
    from reference_server.devsetup import dev_config, write_target
    from reference_server.tls import resolve_tls_files

    config, passwords = dev_config(work)
    path = work / "server.yaml"
    doc = yaml.safe_load(path.read_text())
    ports = {name: free_port() for name in ("mx", "submission", "imap")}
    doc["listeners"] = {
        "mx": {"kind": "mx", "host": "127.0.0.1", "port": ports["mx"], "tls": "none"},
        "submission": {
            "kind": "submission",
            "host": "127.0.0.1",
            "port": ports["submission"],
            "tls": "starttls",
        },
        "imap": {"kind": "imap", "host": "127.0.0.1", "port": ports["imap"], "tls": "starttls"},
    }
    path.write_text(yaml.safe_dump(doc))
    config = load_config(path)
    files = resolve_tls_files(config)
    target = work / "target.yaml"
    bound = {name: ("127.0.0.1", port) for name, port in ports.items()}
    write_target(target, config, bound, passwords, files.ca_file)
    return path, target, ports


def stored_messages(root: Path) -> int:
    n = 0
    for dirpath, _, files in os.walk(root):
        if Path(dirpath).name in ("new", "cur"):
            n += len(files)
    return n


def server_part(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    config_file, target, ports = server_setup(work)
    data = work / "data"
    out: dict[str, Any] = {}

    def wait(alive: Any) -> None:
        for name in ("mx", "submission"):
            wait_for_greeting(
                ports[name], 30, alive, prefix=b"220", goodbye=b"QUIT\r\n", protocol="SMTP"
            )
        wait_for_greeting(
            ports["imap"], 30, alive, prefix=b"* OK", goodbye=b"a LOGOUT\r\n", protocol="IMAP"
        )

    with reference_server(config_file, work / "server.log", wait):
        # durable acceptance, our user (2 processes), per-message events
        before = stored_messages(data)
        cmd = locust_cmd(
            work / "accept",
            target,
            "mx",
            users=args.server_users,
            duration=args.server_duration,
            processes=2,
            extra=[
                "--message-size",
                "1KB",
                "--messages-per-connection",
                "1000000",
                "--events",
                "per-message",
            ],
        )
        accept, _ = run_locust(
            "reference server mx, locust 2p",
            work / "accept",
            cmd,
            ("SMTP", "message"),
            args,
            duration=args.server_duration,
        )
        time.sleep(0.5)
        accept_stored = stored_messages(data) - before
        out["accept"] = {
            **asdict(accept),
            "stored": accept_stored,
            "per_second_median": statistics.median(accept.per_second) if accept.per_second else 0,
            "per_second_min": min(accept.per_second) if accept.per_second else 0,
        }
        print(
            f"  reference server, MX, locust --processes 2 -u {args.server_users}: "
            f"{accept.rate:.0f} msgs/s over {accept.seconds:.0f}s (per second: median "
            f"{out['accept']['per_second_median']}, min {out['accept']['per_second_min']}), "
            f"p50 {accept.p50_ms} ms, p95 {accept.p95_ms} ms, failures {accept.failures}, "
            f"stored {accept_stored} of {accept.total_messages} accepted"
            + (f"\n    !! {accept.error}" if accept.error else ""),
            flush=True,
        )
        # cross-check: smtp-source with connection reuse
        before = stored_messages(data)
        source = run_smtp_source(
            "reference server mx, smtp-source reuse",
            ports["mx"],
            args.server_source_messages,
            args,
            True,
            rcpt="alice@example.test",
        )
        time.sleep(0.5)
        out["smtp_source"] = {**asdict(source), "stored": stored_messages(data) - before}
        command = " ".join(
            smtp_source_cmd("PORT", source.messages, args, True, "alice@example.test")
        )
        print(
            f"  reference server, MX, {command}"
            f": {source.rate:.0f} msgs/s, stored {out['smtp_source']['stored']}"
            + (f"\n    !! {source.error}" if source.error else ""),
            flush=True,
        )
        # end-to-end delivery at a modest rate
        results = work / "delivery" / "results.json"
        cmd = locust_cmd(
            work / "delivery",
            target,
            "delivery",
            users=args.delivery_users,
            duration=args.delivery_duration,
            extra=[
                "--message-size",
                "1KB",
                "--rate",
                f"{args.delivery_rate:g}",
                "--delivery-timeout",
                "10",
                "--mailharness-results",
                str(results),
            ],
        )
        delivery, stats = run_locust(
            "reference server delivery",
            work / "delivery",
            cmd,
            ("DELIVERY", "delivery end-to-end"),
            args,
            duration=args.delivery_duration,
        )
        counts: dict[str, Any] = {}
        if results.exists():
            counts = json.loads(results.read_text()).get("delivery", {})
        submit = next((e for e in stats if (e["method"], e["name"]) == ("SMTP", "DATA")), None)
        out["delivery"] = {
            **asdict(delivery),
            "counts": counts,
            "submit_p50_ms": percentile(submit["response_times"], 0.5) if submit else None,
            "submit_p95_ms": percentile(submit["response_times"], 0.95) if submit else None,
        }
        print(
            f"  delivery profile at {args.delivery_rate:g} msgs/s, -u {args.delivery_users}: "
            f"end-to-end p50 {delivery.p50_ms} ms, p95 {delivery.p95_ms} ms over "
            f"{delivery.total_messages} messages; SMTP DATA p50 {out['delivery']['submit_p50_ms']}"
            f" ms, p95 {out['delivery']['submit_p95_ms']} ms; counts "
            + ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, int))
            + (f"\n    !! {delivery.error}" if delivery.error else ""),
            flush=True,
        )
    return out


# --- reporting -----------------------------------------------------------------------


def median(runs: list[Run], attr: str) -> float | None:
    values = [getattr(r, attr) for r in runs if not r.error and getattr(r, attr)]
    return statistics.median(values) if values else None


def summary(runs: dict[str, list[Run]]) -> dict[str, Any]:
    med = {
        c: {"msgs_per_s": median(rs, "rate"), "cpu_us_per_msg": median(rs, "cpu_us_per_msg")}
        for c, rs in runs.items()
    }

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    src = med.get("smtp-source reuse", {}).get("msgs_per_s")
    one = med.get("locust 1p per-message", {}).get("msgs_per_s")
    two = med.get("locust 2p per-message", {}).get("msgs_per_s")
    step_cpu = med.get("locust 1p per-step", {}).get("cpu_us_per_msg")
    msg_cpu = med.get("locust 1p per-message", {}).get("cpu_us_per_msg")

    def per_round(a: str, b: str, attr: str) -> list[float]:
        pairs = zip(runs.get(a, []), runs.get(b, []), strict=False)
        return [
            round(getattr(x, attr) / getattr(y, attr), 3)
            for x, y in pairs
            if not x.error and not y.error and getattr(y, attr)
        ]

    goals: dict[str, dict[str, Any]] = {
        "one_process_vs_smtp_source": {
            "ratio": ratio(one, src),
            "goal": ">= 0.6",
            "per_round": per_round("locust 1p per-message", "smtp-source reuse", "rate"),
        },
        "two_processes_vs_smtp_source": {
            "ratio": ratio(two, src),
            "goal": ">= 0.9",
            "per_round": per_round("locust 2p per-message", "smtp-source reuse", "rate"),
        },
        "per_step_vs_per_message_cpu": {
            "ratio": ratio(step_cpu, msg_cpu),
            "goal": "<= 1.25",
            "per_round": per_round("locust 1p per-step", "locust 1p per-message", "cpu_us_per_msg"),
        },
    }
    for g in goals.values():
        r, goal = g["ratio"], str(g["goal"])
        bound = float(goal.split()[1])
        g["met"] = None if r is None else (r >= bound if goal.startswith(">=") else r <= bound)
    return {"medians": med, "goals": goals}


def table(runs: dict[str, list[Run]], summ: dict[str, Any]) -> str:
    src = summ["medians"].get("smtp-source reuse", {}).get("msgs_per_s")
    lines = [
        "",
        f"  {'generator':22} {'msgs/s':>9} {'vs source':>10} {'CPU us/msg':>11}  rounds (msgs/s)",
    ]
    for config, rs in runs.items():
        m = summ["medians"][config]
        rate, cpu = m["msgs_per_s"], m["cpu_us_per_msg"]
        vs = f"{rate / src:.2f}x" if rate and src else "-"
        rounds = ", ".join(f"{r.rate:.0f}" if not r.error else "error" for r in rs)
        lines.append(
            f"  {config:22} {f'{rate:.0f}' if rate else '-':>9} {vs:>10} "
            f"{f'{cpu:.1f}' if cpu else '-':>11}  {rounds}"
        )
    lines.append("")
    for name, g in summ["goals"].items():
        verdict = "-" if g["met"] is None else ("met" if g["met"] else "NOT met")
        lines.append(
            f"  {name:30} {g['ratio'] if g['ratio'] is not None else '-':>6}  goal {g['goal']:8}"
            f" {verdict:8} per round {g['per_round']}"
        )
    return "\n".join(lines)


def versions() -> dict[str, str | None]:
    from importlib.metadata import version

    v: dict[str, str | None] = {"python": platform.python_version(), "kernel": platform.release()}
    for pkg in ("locust", "gevent", "mailharness"):
        try:
            v[pkg] = version(pkg)
        except Exception:
            v[pkg] = None
    try:
        v["postfix"] = subprocess.run(
            ["postconf", "-h", "mail_version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        v["postfix"] = None
    return v


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every generator (median)")
    ap.add_argument("--duration", type=float, default=10, help="seconds per Locust run")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds after spawning, unmeasured")
    ap.add_argument("--users", "-u", type=int, default=30, help="Locust users (connections)")
    ap.add_argument("--sessions", "-s", type=int, default=20, help="smtp-source -s")
    ap.add_argument("--size", "-l", type=int, default=1024, help="smtp-source -l (body bytes)")
    ap.add_argument("--source-messages", type=int, default=150_000, help="smtp-source -m, reuse")
    ap.add_argument(
        "--source-messages-new", type=int, default=30_000, help="smtp-source -m, new connections"
    )
    ap.add_argument(
        "--only", default=",".join(CONFIGS), help=f"comma list of: {', '.join(CONFIGS)}"
    )
    ap.add_argument("--skip-server", action="store_true", help="skip the reference server part")
    ap.add_argument("--server-duration", type=float, default=15, help="seconds of MX load")
    ap.add_argument("--server-users", type=int, default=20, help="Locust users against the server")
    ap.add_argument(
        "--server-source-messages", type=int, default=10_000, help="smtp-source -m (server)"
    )
    ap.add_argument("--delivery-rate", type=float, default=20, help="delivery msgs/s (open model)")
    ap.add_argument("--delivery-users", type=int, default=4, help="delivery users")
    ap.add_argument("--delivery-duration", type=float, default=15, help="seconds of delivery load")
    ap.add_argument("--run-timeout", type=float, default=120, help="bound on each run, seconds")
    ap.add_argument("--workdir", type=Path, help="where to work (default: a temporary directory)")
    ap.add_argument("--json", type=Path, help="also write parameters and figures here")
    args = ap.parse_args()
    args.configs = [c.strip() for c in args.only.split(",") if c.strip()]
    if unknown := [c for c in args.configs if c not in CONFIGS]:
        ap.error(f"unknown generator(s) {unknown}; choose from {', '.join(CONFIGS)}")
    for tool in (SMTP_SINK, SMTP_SOURCE):
        if not Path(tool).exists():
            sys.exit(f"{tool} not found: apt-get install postfix (it ships smtp-sink/smtp-source)")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(
        f"{date}: smtp-sink on 127.0.0.1; smtp-source -s {args.sessions} -l {args.size}; "
        f"Locust -u {args.users} for {args.duration:g}s (window from {args.settle:g}s after "
        f"spawning to 1s before the end); {args.rounds} round(s); "
        f"{os.cpu_count()} CPUs, load average {load_before}",
        flush=True,
    )
    base = Path(tempfile.mkdtemp(prefix="bench-load-", dir=args.workdir))
    base.chmod(0o755)
    started = time.monotonic()
    server: dict[str, Any] | None = None
    try:
        runs = generator_part(base / "sink", args)
        summ = summary(runs)
        print(table(runs, summ), flush=True)
        load_mid = [round(x, 2) for x in os.getloadavg()]
        if not args.skip_server:
            print(f"\nreference server (load average {load_mid}):", flush=True)
            server = server_part(base / "server", args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load_after = [round(x, 2) for x in os.getloadavg()]
    total = time.monotonic() - started
    print(f"\nload average before {load_before}, after {load_after}; total {total:.0f}s")

    if args.json:
        doc = {
            "benchmark": "load generator vs smtp-source; reference server under load",
            "date": date,
            "parameters": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k not in ("json",)
            },
            "commands": {
                "smtp-sink": f"{SMTP_SINK} [-u nobody] 127.0.0.1:PORT 4096",
                "smtp-source reuse": " ".join(
                    smtp_source_cmd("PORT", args.source_messages, args, True)
                ),
                "smtp-source new conn": " ".join(
                    smtp_source_cmd("PORT", args.source_messages_new, args, False)
                ),
                "locust": " ".join(
                    locust_cmd(
                        Path("WORK"),
                        Path("TARGET"),
                        "mx",
                        users=args.users,
                        duration=args.duration,
                        extra=["--message-size", "1KB", "--messages-per-connection", "1000000"],
                    )[1:]
                )
                + " --events per-message|per-step [--processes 2]",
            },
            "versions": versions(),
            "cpus": os.cpu_count(),
            "loadavg": {"before": load_before, "after": load_after},
            "runs": {c: [asdict(r) for r in rs] for c, rs in runs.items()},
            "summary": summ,
            "server": server,
            "total_s": round(total, 1),
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    bad = any(r.error for rs in runs.values() for r in rs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
