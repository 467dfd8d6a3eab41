"""The reference server as a subprocess (``python -m reference_server``), for crash tests.

Ports are read from the "listening: NAME (KIND) on HOST:PORT" lines the
server logs to stdout, so every listener may use port 0.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

__all__ = ["ServerProcess"]

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """``python -m reference_server --config FILE``; ports read from its stdout."""

    def __init__(self, config: Path, log: Path, timeout: float = 30.0) -> None:
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reference_server", "--config", str(config)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                bufsize=0,  # unbuffered: select() on the pipe must see every line
            )
        self.ports: dict[str, int] = {}
        try:
            self._read_ports(timeout, expect=len(_listener_names(config)))
        except BaseException:
            self.kill()
            raise

    def _read_ports(self, timeout: float, expect: int) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen: list[bytes] = []
        while len(self.ports) < expect:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(remaining, 0))
            line = self.proc.stdout.readline() if ready else b""
            if line:
                seen.append(line)
                found = re.match(rb"listening: (\S+) \(\S+\) on [^ ]+:(\d+)$", line.rstrip())
                if found:
                    self.ports[found.group(1).decode()] = int(found.group(2))
                continue
            raise AssertionError(
                f"server did not announce its listeners; stdout {seen!r}; "
                f"stderr: {self.stderr_tail()}"
            )

    def stderr_tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs in the server."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if that takes too long."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()

    def _close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _listener_names(config: Path) -> list[str]:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    return list(data["listeners"])
