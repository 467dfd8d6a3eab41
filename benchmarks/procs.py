"""Process plumbing the benchmark scripts share: ports, logs, waiting for a greeting,
stopping, the reference server as a subprocess on a config of the script's, and the
``smtp-source`` command line (Postfix's load generator).

Everything is on 127.0.0.1 and bounded in time.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = [
    "SMTP_SOURCE",
    "free_port",
    "reference_server",
    "smtp_source_command",
    "stop_process",
    "tail",
    "wait_for_greeting",
]

REPO = Path(__file__).resolve().parent.parent
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
BENCH_HELO = "bench.example.org"
BENCH_SENDER = "bench@example.org"


def smtp_source_command(
    port: int | str,
    messages: int,
    *,
    sessions: int,
    size: int,
    recipient: str,
    extra: Sequence[str] = (),
) -> list[str]:
    """``smtp-source`` sending ``messages`` of ``size`` bytes over ``sessions`` parallel
    sessions to 127.0.0.1:``port``, from the benchmarks' sender and HELO name; ``extra``
    goes before the address (``-d``: reuse connections)."""
    return [
        SMTP_SOURCE,
        "-s",
        str(sessions),
        "-l",
        str(size),
        "-m",
        str(messages),
        "-M",
        BENCH_HELO,
        "-f",
        BENCH_SENDER,
        "-t",
        recipient,
        *extra,
        f"127.0.0.1:{port}",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for_greeting(
    port: int,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    *,
    prefix: bytes,
    goodbye: bytes,
    protocol: str,
) -> None:
    """Return once 127.0.0.1:port greets with ``prefix`` (then say ``goodbye``), within timeout."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the server exited before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                f = s.makefile("rb")
                line = f.readline()
                if line.startswith(prefix):
                    s.sendall(goodbye)
                    f.readline()
                    return
                last = repr(line)
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError(f"127.0.0.1:{port} gave no {protocol} greeting within {timeout}s ({last})")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it takes longer than ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def reference_server(
    config: Path, log: Path, wait: Callable[[Callable[[], bool]], None], *, stop_timeout: float = 10
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m reference_server --config config``, output to ``log``, until ``wait`` says
    it listens (``wait(alive)`` raises RuntimeError otherwise; the log's tail is added)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reference_server", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )
    try:
        try:
            wait(lambda: proc.poll() is None)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{tail(log)}") from None
        yield proc
    finally:
        stop_process(proc, stop_timeout)
