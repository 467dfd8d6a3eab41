"""Fuzz dialogues per second: the reference server over sockets vs in memory.

    .venv/bin/python benchmarks/bench_fuzz.py [--dialogues 300] [--rounds 3]
        [--protocols smtp,pop3,imap] [--jobs 2] [--disk] [--json PATH]

The same fixed list of 10-command dialogues (drawn once by the fuzzer's own
strategies with a fixed seed; commands that end a dialogue early, QUIT, LOGOUT,
STLS and lines with a bare CR/LF, are left out, so each dialogue plays its 10
commands) is played with :func:`conformance.fuzz.oracle.run_dialogue`, judged by the
model as in ``mailharness fuzz``, once per round against each peer:

- ``socket``: ``python -m reference_server`` as a subprocess (a development setup,
  listeners ``tls: none`` with plaintext logins, so no TLS handshake), one TCP
  connection per dialogue;
- ``memory``: the same server code in this process through
  :class:`conformance.fuzz.memory.MemoryConnector` (sessions as after TLS).

With ``--jobs N``, the memory figure is also taken with N in-memory servers side by
side in N processes (as ``mailharness fuzz --in-memory --jobs N`` runs), each playing
the same dialogues; a round is timed by the slowest.

Each protocol gets fresh servers (what the SMTP dialogues delivered would slow the
POP3 ones otherwise), with their data on ``/dev/shm`` (tmpfs) when the machine has
it, as ``mailharness fuzz --in-memory`` keeps it; ``--disk`` puts it in the
temporary directory instead, where each fsync costs about a millisecond here.

POP3 and IMAP dialogues start with the login prefix (USER/PASS, LOGIN), which is
counted in the time but not in the 10 commands. The figure is dialogues per
second (median of ``--rounds``, after one warm-up round); the ratio is memory over
socket. Hypothesis' drawing and shrinking are not in the figures (a fuzz run adds
them; its own rate is printed at the end of ``mailharness fuzz``). Everything is on
127.0.0.1; the server makes no DNS lookups.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import free_port, reference_server, wait_for_greeting

from conformance.fuzz import PROTOCOLS
from conformance.fuzz.dialogue import Finding, Login, ProtocolFuzz, Send
from conformance.fuzz.memory import MemoryConnector, dev_memory_target, scratch_base
from conformance.fuzz.oracle import Connector, SocketConnector, run_dialogue
from conformance.targets import Account, Service, Target, TlsMode
from reference_server.devsetup import dev_config

COMMANDS = 10
_ENDS = {"QUIT", "LOGOUT", "STLS"}
_GREETINGS = {"mx": b"220", "pop3": b"+OK", "imap": b"* OK"}
_GOODBYES = {"mx": b"QUIT\r\n", "pop3": b"QUIT\r\n", "imap": b"a LOGOUT\r\n"}


def draw_dialogues(proto: ProtocolFuzz, target: Target, count: int) -> list[list[Send]]:
    """``count`` dialogues of exactly COMMANDS commands, the same for the same code."""
    pool: list[Send] = []

    @seed(20240611)
    @settings(
        max_examples=count * 5,
        database=None,
        deadline=None,
        phases=(Phase.generate,),
        suppress_health_check=list(HealthCheck),
    )
    @given(proto.commands(target))
    def collect(sends: list[Send]) -> None:
        pool.extend(s for s in sends if not s.terminal and s.verb not in _ENDS)

    collect()
    out = [pool[i : i + COMMANDS] for i in range(0, len(pool) - COMMANDS + 1, COMMANDS)]
    if len(out) < count:
        raise RuntimeError(f"drew only {len(out)} dialogues of {COMMANDS} commands")
    return out[:count]


def play(
    proto: ProtocolFuzz, where: Connector, dialogues: list[list[Send]], login: Login | None
) -> tuple[float, int]:
    """Dialogues per second, and how many ended in a finding (there should be none)."""
    findings = 0
    started = time.perf_counter()
    for sends in dialogues:
        try:
            run_dialogue(proto, where, sends, deadline=5.0, login=login)
        except Finding:
            findings += 1
    return len(dialogues) / (time.perf_counter() - started), findings


def socket_setup(work: Path) -> tuple[Path, Target, dict[str, int]]:
    """A development config with cleartext listeners on free ports, and its target."""
    config, passwords = dev_config(work)
    path = work / "server.yaml"
    doc = yaml.safe_load(path.read_text())
    ports = {name: free_port() for name in ("mx", "pop3", "imap")}
    doc["listeners"] = {
        name: {"kind": name, "host": "127.0.0.1", "port": port, "tls": "none"}
        for name, port in ports.items()
    }
    doc["pop3"] = {"plaintext_auth": True}
    doc["imap"] = {"plaintext_auth": True}
    path.write_text(yaml.safe_dump(doc))
    domain = config.domains[0]
    target = Target(
        host="127.0.0.1",
        domain=domain,
        services={
            n: Service(name=n, host="127.0.0.1", port=p, tls=TlsMode.NONE) for n, p in ports.items()
        },
        accounts={
            n: Account(name=n, address=f"{n}@{domain}", username=n, password=pw)
            for n, pw in passwords.items()
        },
    )
    return path, target, ports


def bench_protocol(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Socket and memory rates for one protocol, each against a server of its own."""
    config_file, sock_target, ports = socket_setup(work / "socket")
    mem_config, mem_target = dev_memory_target(work / "memory")

    def wait(alive: Any) -> None:
        for svc, port in ports.items():
            goodbye = _GOODBYES[svc]
            wait_for_greeting(
                port, 20, alive, prefix=_GREETINGS[svc], goodbye=goodbye, protocol=svc
            )

    proto = PROTOCOLS[name]
    svc = proto.default_service
    with reference_server(config_file, work / "server.log", wait):
        dialogues = draw_dialogues(proto, sock_target, args.dialogues)
        mem_dialogues = draw_dialogues(proto, mem_target, args.dialogues)
        logins: dict[str, Login | None] = {"socket": None, "memory": None}
        if name != "smtp":
            logins = {
                "socket": Login(account=sock_target.accounts["alice"], starttls=False),
                "memory": Login(account=mem_target.accounts["alice"], starttls=False),
            }
        rates: dict[str, list[float]] = {"socket": [], "memory": []}
        found = {"socket": 0, "memory": 0}
        with MemoryConnector(mem_config, svc) as memory:
            peers: dict[str, tuple[Connector, list[list[Send]]]] = {
                "socket": (SocketConnector(sock_target.services[svc]), dialogues),
                "memory": (memory, mem_dialogues),
            }
            for rnd in range(args.rounds + 1):
                for peer, (where, dlg) in peers.items():
                    rate, findings = play(proto, where, dlg, logins[peer])
                    if rnd:  # round 0 warms up
                        rates[peer].append(rate)
                        found[peer] += findings
    med = {peer: statistics.median(r) for peer, r in rates.items()}
    return {
        "socket_per_s": round(med["socket"]),
        "memory_per_s": round(med["memory"]),
        "memory_over_socket": round(med["memory"] / med["socket"], 2),
        "rounds": rates,
        "findings": found,
    }


def _memory_job(
    name: str,
    dialogues: list[list[Send]],
    rounds: int,
    base: str | None,
    barrier: Any,
    out: Any,
) -> None:
    """One of ``--jobs`` processes: its own in-memory server, the same dialogues."""
    proto = PROTOCOLS[name]
    with tempfile.TemporaryDirectory(prefix="mh-bench-fuzz-job-", dir=base) as tmp:
        config, target = dev_memory_target(Path(tmp))
        login = None
        if name != "smtp":
            login = Login(account=target.accounts["alice"], starttls=False)
        with MemoryConnector(config, proto.default_service) as memory:
            play(proto, memory, dialogues, login)  # warm-up
            for _ in range(rounds):
                barrier.wait()
                started = time.perf_counter()
                _, findings = play(proto, memory, dialogues, login)
                out.put((time.perf_counter() - started, findings))


def parallel_memory(
    name: str, dialogues: list[list[Send]], jobs: int, rounds: int, base: str | None
) -> dict[str, Any]:
    """Dialogues per second of ``jobs`` in-memory servers side by side (as ``mailharness
    fuzz --in-memory --jobs N`` runs them): all play the dialogues at once, each round
    timed by the slowest."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(jobs), ctx.Queue()
    procs = [
        ctx.Process(target=_memory_job, args=(name, dialogues, rounds, base, barrier, out))
        for _ in range(jobs)
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=600) for _ in range(jobs * rounds)]
    for proc in procs:
        proc.join(60)
    per_round = [max(t for t, _ in results[i * jobs : (i + 1) * jobs]) for i in range(rounds)]
    rates = [jobs * len(dialogues) / t for t in per_round]
    return {"jobs": jobs, "per_s": round(statistics.median(rates)), "rounds": rates,
            "findings": sum(f for _, f in results)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialogues", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--protocols", default="smtp,pop3,imap")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="also time this many in-memory servers side by side (mailharness fuzz --jobs)",
    )
    parser.add_argument(
        "--disk",
        action="store_true",
        help="keep the servers' data in the temporary directory, not on /dev/shm",
    )
    args = parser.parse_args()
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    results: dict[str, Any] = {
        "dialogues": args.dialogues,
        "commands": COMMANDS,
        "rounds": args.rounds,
        "protocols": {},
    }
    base = None if args.disk else scratch_base()
    results["data_on"] = base or tempfile.gettempdir()
    for name in protocols:
        # each protocol on fresh servers: what one protocol stored does not slow the next
        with tempfile.TemporaryDirectory(prefix="mh-bench-fuzz-", dir=base) as tmp:
            results["protocols"][name] = bench_protocol(name, Path(tmp), args)
            if args.jobs > 1:
                _, target = dev_memory_target(Path(tmp) / "draw")
                drawn = draw_dialogues(PROTOCOLS[name], target, args.dialogues)
                results["protocols"][name]["memory_jobs"] = parallel_memory(
                    name, drawn, args.jobs, args.rounds, base
                )
    print(
        f"{args.dialogues} dialogues of {COMMANDS} commands, median of {args.rounds} rounds, "
        f"server data on {results['data_on']}"
    )
    print(f"{'protocol':<9}{'socket/s':>10}{'memory/s':>10}{'memory/socket':>15}  findings")
    for name, r in results["protocols"].items():
        print(
            f"{name:<9}{r['socket_per_s']:>10}{r['memory_per_s']:>10}"
            f"{r['memory_over_socket']:>14.2f}x  "
            f"{r['findings']['socket']}/{r['findings']['memory']}"
        )
        if "memory_jobs" in r:
            j = r["memory_jobs"]
            print(f"{'':<9}{'':>10}{j['per_s']:>10}  memory, {j['jobs']} jobs side by side")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
