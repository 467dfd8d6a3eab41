"""Helpers for the load tests: a reference server with many accounts, target files, and
Locust run in a subprocess.

Locust monkey-patches ``socket``/``ssl`` with gevent when imported, which would break the
asyncio reference server and every other test in this process; so nothing here imports
locust. :func:`run_locust` runs ``python -m locust -f loadtest/locustfile.py --headless``
and reads its CSV statistics back.

The accounts get cheap scrypt hashes (N=1024): the production cost (N=16384) would make
every AUTH of a load test spend ~50 ms of server CPU.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import yaml
from conftest import RunningServer, reference_config

from reference_server.config import ServerConfig
from reference_server.devsetup import write_target

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
SMTP_SINK = Path("/usr/sbin/smtp-sink")


def cheap_hash(password: str) -> str:
    """A ``scrypt$...`` hash the reference server verifies, at 1/16 of the default cost."""
    salt = os.urandom(16)
    n, r, p = 1024, 8, 1
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def write_accounts(path: Path, names: Sequence[str], domain: str) -> dict[str, str]:
    """An accounts file for the reference server; returns name -> password."""
    passwords = {name: f"pw-{name}-{os.urandom(4).hex()}" for name in names}
    doc = {
        "accounts": {
            name: {"password": cheap_hash(pw), "addresses": [f"{name}@{domain}"]}
            for name, pw in passwords.items()
        }
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return passwords


@dataclasses.dataclass
class LoadServer:
    """A running reference server with ``user1..userN`` and a target file for it."""

    server: RunningServer
    target_file: Path
    passwords: dict[str, str]

    def messages(self, user: str) -> list[bytes]:
        """Everything in ``user``'s INBOX (new/ and cur/)."""
        base = self.server.config.mail_dir / user
        out: list[bytes] = []
        for sub in ("new", "cur"):
            folder = base / sub
            if folder.is_dir():
                out.extend(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())
        return out

    def total_messages(self) -> int:
        return sum(len(self.messages(user)) for user in self.passwords)


@contextlib.contextmanager
def load_server(
    dev_setup: tuple[ServerConfig, dict[str, str], Path],
    directory: Path,
    *,
    accounts: int = 4,
    **overrides: Any,
) -> Iterator[LoadServer]:
    """Start a reference server with ``accounts`` accounts ``user1..``; stop it at the end.

    ``overrides`` go to :func:`conftest.reference_config` (limits, timeouts, imap, ...).
    """
    base_config, _, ca_file = dev_setup
    directory.mkdir(parents=True, exist_ok=True)
    domain = base_config.domains[0]
    names = [f"user{i}" for i in range(1, accounts + 1)]
    passwords = write_accounts(directory / "accounts.yaml", names, domain)
    config = dataclasses.replace(
        reference_config(base_config, directory / "data", **overrides),
        accounts_file=directory / "accounts.yaml",
        postmaster=names[0],
    )
    srv = RunningServer(config, passwords, ca_file)
    srv.start()
    try:
        target = directory / "target.yaml"
        write_target(target, config, srv.thread.bound, passwords, ca_file)
        yield LoadServer(srv, target, passwords)
    finally:
        srv.close_clients()
        srv.wait_idle()
        srv.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def smtp_sink(directory: Path) -> Iterator[tuple[str, int]]:
    """Postfix's ``smtp-sink`` on a free loopback port (caller checks it is installed)."""
    port = free_port()
    log = (directory / "smtp-sink.log").open("wb")
    # -c: print a running count of deliveries; 1000: the listen backlog; as root it must
    # be told whose privileges to drop to (-u)
    drop = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(
        [str(SMTP_SINK), *drop, "-c", f"127.0.0.1:{port}", "1000"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                output = (directory / "smtp-sink.log").read_text(errors="replace")
                raise RuntimeError(f"smtp-sink did not start: {output.strip()}")
            time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def sink_target(path: Path, host: str, port: int) -> Path:
    """A target file whose ``mx`` service is an SMTP sink (cleartext, no accounts needed
    beyond recipients)."""
    target = {
        "host": host,
        "domain": "sink.test",
        "services": {"mx": {"port": port, "tls": "none"}},
        "accounts": {
            f"rcpt{i}": {"address": f"rcpt{i}@sink.test", "password": "unused"} for i in range(1, 5)
        },
    }
    path.write_text(yaml.safe_dump(target, sort_keys=False), encoding="utf-8")
    return path


@dataclasses.dataclass
class LocustRun:
    """What a headless Locust run left: its statistics and output.

    ``stats`` comes from ``--json-file`` (written once, after the users stopped);
    ``csv_stats`` from ``--csv``, which Locust rewrites every second and does not
    rewrite at exit, so its counts may lag the end of the run by up to a second.
    """

    returncode: int
    stats: dict[tuple[str, str], dict[str, Any]]  # (method, name) -> entry of the JSON file
    csv_stats: dict[tuple[str, str], dict[str, str]]  # (Type, Name) -> row of *_stats.csv
    failures: list[dict[str, str]]  # rows of *_failures.csv
    output: str

    def count(self, request_type: str, name: str) -> int:
        entry = self.stats.get((request_type, name))
        return int(entry["num_requests"]) if entry else 0

    def failure_count(self) -> int:
        return sum(int(e["num_failures"]) for e in self.stats.values())

    def names(self) -> set[str]:
        return {f"{t} {n}" for (t, n) in self.stats}

    def csv_names(self) -> set[str]:
        return {f"{t} {n}" for (t, n) in self.csv_stats if t}

    def explain(self) -> str:
        return (
            f"exit {self.returncode}\nfailures: {self.failures}\n"
            f"--- output ---\n{self.output[-6000:]}"
        )


def run_locust(
    workdir: Path,
    target_file: Path,
    profile: str,
    *,
    users: int = 2,
    spawn_rate: float = 10,
    run_time: str = "3s",
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> LocustRun:
    """``locust -f loadtest/locustfile.py --headless`` for ``run_time``; returns its stats."""
    prefix = workdir / "run"
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        "127.0.0.1",
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "-t",
        run_time,
        "--stop-timeout",
        "5",
        "--csv",
        str(prefix),
        "--json-file",
        str(prefix),
        "--only-summary",
        "--target-file",
        str(target_file),
        "--profile",
        profile,
        *extra,
    ]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(
        cmd, cwd=workdir, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    stats: dict[tuple[str, str], dict[str, Any]] = {}
    json_file = Path(f"{prefix}.json")
    if json_file.exists():
        stats = {(e["method"], e["name"]): e for e in json.loads(json_file.read_text())}
    csv_stats: dict[tuple[str, str], dict[str, str]] = {}
    stats_file = Path(f"{prefix}_stats.csv")
    if stats_file.exists():
        with stats_file.open(newline="") as f:
            for row in csv.DictReader(f):
                csv_stats[(row["Type"], row["Name"])] = row
    failures: list[dict[str, str]] = []
    failures_file = Path(f"{prefix}_failures.csv")
    if failures_file.exists():
        with failures_file.open(newline="") as f:
            failures = list(csv.DictReader(f))
    return LocustRun(proc.returncode, stats, csv_stats, failures, proc.stdout + proc.stderr)


def smtp_sink_available() -> bool:
    return SMTP_SINK.exists() and shutil.which(str(SMTP_SINK)) is not None


# -- scripted SMTP servers for one connection -------------------------------------------


def one_connection_server(
    greeting: bytes, talk: Callable[[socket.socket, BinaryIO], None]
) -> tuple[int, threading.Thread]:
    """A loopback server for one connection: sends ``greeting``, then ``talk(conn, lines)``
    runs in a thread (5 s timeouts); returns the port and the thread."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            conn.settimeout(5)
            conn.sendall(greeting)
            talk(conn, conn.makefile("rb"))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


class Scripted:
    """Answers each command (and each message, at its final dot) with the next reply of
    ``replies``; keeps everything the client sent in :attr:`received`."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = replies
        self.received = bytearray()
        self.port, self.thread = one_connection_server(b"220 scripted\r\n", self._talk)

    def _talk(self, conn: socket.socket, lines: BinaryIO) -> None:
        in_data = False
        for reply in self.replies:
            while True:
                line = lines.readline()
                self.received += line
                if not line:
                    return
                if not in_data or line == b".\r\n":
                    break
            in_data = reply.startswith(b"354")
            conn.sendall(reply)
        self.received += lines.read()  # to the client's close

    def join(self) -> bytes:
        self.thread.join(5)
        assert not self.thread.is_alive()
        return bytes(self.received)
