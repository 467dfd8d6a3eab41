"""Benchmark: durable SMTP acceptance of 1 KB messages, mailharness vs aiosmtpd vs Postfix.

Load: Postfix's smtp-source, 20 parallel sessions, 1024-byte bodies, N messages,
in two modes: a new connection per message, and connection reuse (``-d``: the
sessions send message after message over one connection). All servers run at
once, each on its own free loopback port, but only one is loaded at a time
(the rounds interleave the peers; Postfix's queue is drained before the next
run). Each must answer 250 to DATA only once the message is durable:

- aiosmtpd: a Maildir handler that writes to tmp/, fsyncs, renames into new/
  and fsyncs new/ before answering; the fsync work inline in ``handle_DATA``
  (blocking the loop, the straightforward way), and as a second variant in
  ``loop.run_in_executor`` (benchmarks/peer_aiosmtpd.py).
- postfix: a private instance (benchmarks/peer_postfix.py); its 250 means the
  queue file is fsynced (its durability promise); virtual(8) delivers to a
  Maildir afterwards, concurrently with the load.
- mailharness: ``python -m reference_server --config CONFIG``, an mx listener
  without TLS; its 250 means the message is fsynced into data_dir.

Goal (issue): mailharness at least 1.5x aiosmtpd and at least on par with
Postfix. After each run the messages each server stored are counted (Maildir
files; for Postfix once its queue has drained, bounded in time) and any
shortfall is reported.

    sudo benchmarks/setup_peers.sh         # once: postfix + smtp-source, aiosmtpd
    .venv/bin/python benchmarks/bench_smtp_accept.py [--messages 5000] [--rounds 3]
        [--only aiosmtpd,aiosmtpd-executor,postfix,mailharness] [--json out.json]

Runs as root (Postfix needs it). Traffic goes to 127.0.0.1 only, nothing is
looked up in DNS, and every run is bounded by --run-timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_postfix
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
PEERS = ("aiosmtpd", "aiosmtpd-executor", "postfix", "mailharness")
BASELINES = ("aiosmtpd", "postfix")
RECIPIENT = "bench@example.test"

MODES = {
    "new-connection": ("new connection per message", []),
    "reuse": ("connection reuse (smtp-source -d)", ["-d"]),
}

MEANING = {
    "aiosmtpd": "250 after write + fsync + rename into Maildir/new + fsync of new/, "
    "inline in handle_DATA (blocks the event loop)",
    "aiosmtpd-executor": "the same durable Maildir write, in loop.run_in_executor",
    "postfix": "250 once cleanup(8) has fsynced the queue file (Postfix's durability "
    "promise); the Maildir copy is written by virtual(8) afterwards",
    "mailharness": "250 once the message is fsynced into data_dir (reference server)",
}


@dataclass
class Server:
    """A running peer: where to send, and how to count what it stored."""

    port: int
    stored: Callable[[], int]
    settle: Callable[[float], bool] = lambda _timeout: True
    diagnostics: Callable[[], str] = lambda: ""


@dataclass
class Outcome:
    peer: str
    mode: str
    rates: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    # from the start of a run until every message it sent is in the peer's Maildir
    # (for Postfix: its queue has drained; for the others: the same as walls)
    stored_walls: list[float] = field(default_factory=list)
    sent: int = 0
    stored: int | None = None
    errors: list[str] = field(default_factory=list)
    per_round: int = 0

    @property
    def rate(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None


def wait_for_smtp(port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Return once 127.0.0.1:port answers with a 220 greeting (bounded by timeout)."""
    wait_for_greeting(port, timeout, alive, prefix=b"220", goodbye=b"QUIT\r\n", protocol="220")


def maildir_count(*dirs: Path) -> int:
    n = 0
    for d in dirs:
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                n += len(os.listdir(d / sub))
    return n


def count_maildir_files_under(root: Path) -> int:
    """Files in any new/ or cur/ directory below root (the reference server's layout
    is not settled yet: adjust here if its data_dir stores messages differently)."""
    n = 0
    for dirpath, _, files in os.walk(root):
        if Path(dirpath).name in ("new", "cur"):
            n += len(files)
    return n


# --- the peers -----------------------------------------------------------------------


def why_unavailable(peer: str) -> str | None:
    if peer.startswith("aiosmtpd"):
        if importlib.util.find_spec("aiosmtpd") is None:
            return "aiosmtpd is not installed in this interpreter (pip install -e '.[bench]')"
        return None
    if peer == "postfix":
        return peer_postfix.available()
    if peer == "mailharness":
        if importlib.util.find_spec("reference_server") is None or (
            importlib.util.find_spec("reference_server.__main__") is None
        ):
            return (
                "`python -m reference_server` is not available in this interpreter "
                "(not written yet, or the project is not installed: pip install -e .)"
            )
        return None
    return f"unknown peer {peer}"


@contextlib.contextmanager
def run_aiosmtpd(work: Path, executor: bool) -> Iterator[Server]:
    maildir = work / "Maildir"
    log = work / "aiosmtpd.log"
    cmd = [sys.executable, str(Path(__file__).parent / "peer_aiosmtpd.py"), "--maildir"]
    cmd += [str(maildir), *(["--executor"] if executor else [])]
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the peer prints its port once listening
        if not line.strip():
            raise RuntimeError(f"aiosmtpd peer did not start:\n{tail(log)}")
        port = int(line)
        wait_for_smtp(port, 30, lambda: proc.poll() is None)
        yield Server(port, lambda: maildir_count(maildir), diagnostics=lambda: tail(log))
    finally:
        stop_process(proc)


@contextlib.contextmanager
def run_postfix(work: Path) -> Iterator[Server]:
    port = free_port()
    with peer_postfix.PostfixPeer(work / "postfix", port, RECIPIENT) as pf:
        wait_for_smtp(port, 30)
        yield Server(port, pf.delivered, pf.wait_drained, pf.problems)


@contextlib.contextmanager
def run_mailharness(work: Path) -> Iterator[Server]:
    port = free_port()
    data = work / "data"
    data.mkdir()
    hashed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from reference_server.auth import hash_password; print(hash_password('x'))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    ).stdout.strip()
    accounts = work / "accounts.yaml"
    accounts.write_text(
        f"accounts:\n  bench:\n    password: {json.dumps(hashed)}\n    addresses: [{RECIPIENT}]\n"
    )
    config = work / "config.yaml"
    config.write_text(
        "hostname: mail.example.test\n"
        "domains: [example.test]\n"
        f"data_dir: {json.dumps(str(data))}\n"
        f"accounts_file: {json.dumps(str(accounts))}\n"
        "listeners:\n"
        f"  mx: {{kind: mx, host: 127.0.0.1, port: {port}, tls: none}}\n"
    )
    log = work / "mailharness.log"
    with reference_server(config, log, lambda alive: wait_for_smtp(port, 30, alive)):
        yield Server(port, lambda: count_maildir_files_under(data), diagnostics=lambda: tail(log))


def start(peer: str, work: Path) -> contextlib.AbstractContextManager[Server]:
    if peer == "aiosmtpd":
        return run_aiosmtpd(work, executor=False)
    if peer == "aiosmtpd-executor":
        return run_aiosmtpd(work, executor=True)
    if peer == "postfix":
        return run_postfix(work)
    return run_mailharness(work)


# --- the load ------------------------------------------------------------------------


def smtp_source(port: int | str, n: int, args: argparse.Namespace, extra: list[str]) -> list[str]:
    return smtp_source_command(
        port, n, sessions=args.sessions, size=args.size, recipient=RECIPIENT, extra=extra
    )


def load(port: int, n: int, args: argparse.Namespace, extra: list[str]) -> tuple[float, str]:
    """One smtp-source run; (wall seconds, error or "")."""
    cmd = smtp_source(port, n, args, extra)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - t0, f"smtp-source timed out after {args.run_timeout}s"
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return wall, f"smtp-source exit {proc.returncode}: " + " | ".join(msg)
    return wall, ""


def measure(
    servers: dict[str, Server], args: argparse.Namespace, outcomes: dict[tuple[str, str], Outcome]
) -> None:
    """Warm up each peer in each mode, then run the rounds interleaved: in every round each
    mode, then each peer in turn (the order rotating from round to round), so that a slow
    spell of the machine does not land on one peer only. Only the measured peer is busy:
    Postfix's queue is drained (bounded) before the next run starts."""
    names = list(servers)
    schedule: list[tuple[str, str, str, int]] = [
        ("warmup", mode, peer, args.warmup) for mode in MODES for peer in names if args.warmup
    ]
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        schedule += [
            (f"round {r + 1}", mode, peer, args.messages) for mode in MODES for peer in order
        ]
    for kind, mode, peer, n in schedule:
        out = outcomes[peer, mode]
        if out.errors:  # this peer already failed in this mode
            continue
        server = servers[peer]
        before = server.stored()
        t0 = time.perf_counter()
        wall, error = load(server.port, n, args, MODES[mode][1])
        out.sent += n
        settled = server.settle(args.drain_timeout)  # Postfix: until its queue is empty
        until_stored = time.perf_counter() - t0
        stored = server.stored() - before
        out.stored = (out.stored or 0) + stored
        if error:
            out.errors.append(f"{kind}: {error}")
        elif not settled:
            out.errors.append(f"{kind}: queue not drained within {args.drain_timeout}s")
        elif stored != n:
            out.errors.append(f"{kind}: stored {stored} of {n} accepted")
        if kind != "warmup" and not error:
            out.walls.append(wall)
            out.rates.append(n / wall)
            out.stored_walls.append(until_stored)
            out.per_round = n
        note = f"  !! {out.errors[-1]}" if out.errors and out.errors[-1].startswith(kind) else ""
        rate = "-" if error else f"{n / wall:.0f}/s"
        print(f"  {kind:8} {peer:18} {mode:15} {n:6} msgs {wall:6.2f}s {rate:>9}{note}")
        if note and (diag := server.diagnostics()):
            print("    " + diag.replace("\n", "\n    "))


# --- reporting -----------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    v: dict[str, str | None] = {"python": platform.python_version()}
    try:
        v["postfix"] = peer_postfix.postfix_version()
    except (OSError, subprocess.CalledProcessError):
        v["postfix"] = None
    try:
        from importlib.metadata import version

        v["aiosmtpd"] = version("aiosmtpd")
    except Exception:
        v["aiosmtpd"] = None
    try:
        from importlib.metadata import version

        v["mailharness"] = version("mailharness")
    except Exception:
        v["mailharness"] = None
    v["kernel"] = platform.release()
    return v


def filesystem(path: Path) -> str:
    """The file system that holds path, from /proc/self/mounts: "ext4 /dev/vda on / (rw,...)"."""
    best: list[str] = []
    target = str(path.resolve())
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in mounts:
        fields = line.split()
        if len(fields) < 4:
            continue
        mnt = fields[1]
        inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best[1] if best else ""):
            best = fields
    if not best:
        return "unknown"
    return f"{best[2]} {best[0]} on {best[1]} ({best[3]})"


def fsync_probe(directory: Path, seconds: float = 1.0) -> float:
    """Sequential durable 1 KB Maildir-style writes per second (write, fsync, rename,
    fsync dir) in directory, for seconds: how fast this disk is right now."""
    probe = directory / "fsync-probe"
    (probe / "tmp").mkdir(parents=True)
    (probe / "new").mkdir()
    dfd = os.open(probe / "new", os.O_RDONLY | os.O_DIRECTORY)
    n, data = 0, b"x" * 1300
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds and n < 100_000:
            fd = os.open(probe / "tmp" / str(n), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            os.rename(probe / "tmp" / str(n), probe / "new" / str(n))
            os.fsync(dfd)
            n += 1
    finally:
        os.close(dfd)
    rate = n / (time.perf_counter() - t0)
    shutil.rmtree(probe, ignore_errors=True)
    return rate


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def table(mode: str, peers: list[str], outcomes: list[Outcome], skipped: dict[str, str]) -> str:
    label = MODES[mode][0]
    by_peer = {o.peer: o for o in outcomes if o.mode == mode}
    rates = {p: o.rate for p, o in by_peer.items()}
    lines = [
        f"\n{label}",
        f"  {'peer':18} {'msgs/s':>8} {'vs aiosmtpd':>12} {'vs postfix':>11}  stored/accepted",
    ]
    for peer in peers:
        if peer in skipped:
            lines.append(f"  {peer:18} {'skipped':>8}  ({skipped[peer]})")
            continue
        if (o := by_peer.get(peer)) is None:
            continue
        r = o.rate
        stored = f"{o.stored}/{o.sent}" if o.stored is not None else "-"
        flag = "" if not o.errors else "  !! " + "; ".join(o.errors)
        lines.append(
            f"  {peer:18} {f'{r:.0f}' if r else '-':>8} "
            f"{ratio(r, rates.get('aiosmtpd')):>12} {ratio(r, rates.get('postfix')):>11}"
            f"  {stored}{flag}"
        )
    for o in by_peer.values():
        if o.stored_walls and o.rate:
            until = statistics.median(o.stored_walls)
            if until > 1.01 * statistics.median(o.walls):
                lines.append(
                    f"  {o.peer}: every message in its Maildir after {until:.2f}s "
                    f"(median) = {o.per_round / until:.0f} msgs/s accepted and delivered"
                )
    if (m := rates.get("mailharness")) is not None:
        a, p = rates.get("aiosmtpd"), rates.get("postfix")
        verdict = []
        if a:
            verdict.append(
                f"{m / a:.2f}x aiosmtpd (goal >= 1.5x: {'met' if m >= 1.5 * a else 'NOT met'})"
            )
        if p:
            verdict.append(f"{m / p:.2f}x postfix (goal >= 1.0x: {'met' if m >= p else 'NOT met'})")
        if verdict:
            lines.append("  mailharness: " + ", ".join(verdict))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", "-m", type=int, default=5000, help="per round (default 5000)")
    ap.add_argument("--sessions", "-s", type=int, default=20, help="smtp-source -s (default 20)")
    ap.add_argument("--size", "-l", type=int, default=1024, help="body bytes (default 1024)")
    ap.add_argument("--rounds", type=int, default=3, help="measured runs per mode (median)")
    ap.add_argument("--warmup", type=int, default=200, help="messages sent before measuring")
    ap.add_argument(
        "--only", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}"
    )
    ap.add_argument("--run-timeout", type=float, default=120, help="seconds per smtp-source run")
    ap.add_argument("--drain-timeout", type=float, default=60, help="seconds for Postfix's queue")
    ap.add_argument("--workdir", type=Path, help="where the servers store (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the stored messages and logs")
    ap.add_argument("--json", type=Path, help="also write parameters and figures here")
    args = ap.parse_args()

    peers = [p.strip() for p in args.only.split(",") if p.strip()]
    if unknown := [p for p in peers if p not in PEERS]:
        ap.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    if not Path(SMTP_SOURCE).exists():
        sys.exit("smtp-source not found: run benchmarks/setup_peers.sh (it ships with postfix)")

    # a SIGTERM (say, from `timeout`) unwinds like Ctrl-C, so the servers are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = Path(tempfile.mkdtemp(prefix="bench-smtp-", dir=args.workdir))
    base.chmod(0o755)  # Postfix's unprivileged processes must reach their queue below it
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(
        f"smtp-source -s {args.sessions} -l {args.size} -m {args.messages}, "
        f"{args.rounds} round(s) per mode after {args.warmup} warmup messages; "
        f"storage in {base} ({filesystem(base)})"
    )
    skipped: dict[str, str] = {}
    started = time.monotonic()
    machine: dict[str, object] = {"loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    try:
        machine["fsync_probe_before_per_s"] = round(fsync_probe(base))
        print(
            f"machine: load average {machine['loadavg_before']}, sequential durable writes "
            f"{machine['fsync_probe_before_per_s']}/s (write+fsync+rename+fsync dir)"
        )
        with contextlib.ExitStack() as stack:
            servers: dict[str, Server] = {}
            for peer in peers:
                if why := why_unavailable(peer):
                    print(f"SKIP {peer}: {why}")
                    skipped[peer] = why
                    continue
                work = base / peer
                work.mkdir()
                try:
                    servers[peer] = stack.enter_context(start(peer, work))
                except Exception as e:
                    print(f"FAIL {peer}: {e}")
                    skipped[peer] = f"failed to start: {e}".splitlines()[0]
            by_key = {(p, m): Outcome(p, m) for p in servers for m in MODES}
            measure(servers, args, by_key)
        outcomes = list(by_key.values())
        machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        machine["fsync_probe_after_per_s"] = round(fsync_probe(base))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    total = time.monotonic() - started

    for mode in MODES:
        print(table(mode, peers, outcomes, skipped))
    print("\nwhat each peer's 250 means:")
    for peer in peers:
        print(f"  {peer:18} {MEANING[peer]}")
    print(
        f"\nmachine after: load average {machine.get('loadavg_after')}, sequential durable "
        f"writes {machine.get('fsync_probe_after_per_s')}/s; total {total:.0f}s"
    )

    if args.json:
        doc = {
            "benchmark": "smtp durable acceptance",
            "date": date,
            "parameters": {
                "messages": args.messages,
                "sessions": args.sessions,
                "size": args.size,
                "rounds": args.rounds,
                "warmup": args.warmup,
                "modes": {
                    m: " ".join(smtp_source("PORT", args.messages, args, e))
                    for m, (_, e) in MODES.items()
                },
                "filesystem": filesystem(Path(args.workdir or tempfile.gettempdir())),
                "cpus": os.cpu_count(),
            },
            "versions": versions(),
            "meaning_of_250": {p: MEANING[p] for p in peers},
            "skipped": skipped,
            "results": {
                mode: {
                    o.peer: {
                        "msgs_per_s": round(o.rate, 1) if o.rate else None,
                        "rounds_msgs_per_s": [round(r, 1) for r in o.rates],
                        "rounds_wall_s": [round(w, 3) for w in o.walls],
                        "rounds_until_all_in_maildir_s": [round(w, 3) for w in o.stored_walls],
                        "sent": o.sent,
                        "stored": o.stored,
                        "errors": o.errors,
                    }
                    for o in outcomes
                    if o.mode == mode
                }
                for mode in MODES
            },
            "ratios": {
                mode: {
                    o.peer: {
                        f"vs_{b}": round(o.rate / rb, 3)
                        for b in BASELINES
                        if o.rate
                        and (
                            rb := next(
                                (x.rate for x in outcomes if x.mode == mode and x.peer == b), None
                            )
                        )
                    }
                    for o in outcomes
                    if o.mode == mode
                }
                for mode in MODES
            },
            "machine": machine,
            "total_s": round(total, 1),
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if any(o.errors for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
