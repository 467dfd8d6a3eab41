"""The queue's control socket, so ``mailharness queue flush|delete`` reach a running server.

Theory of operation
-------------------
A running server listens on the Unix socket ``<data_dir>/control.sock`` (mode
0600, in a directory only the server's user can enter). A request is one JSON
line, ``{"op": "flush"}`` or ``{"op": "delete", "id": "..."}``, and the answer
is one JSON line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
Changes go through the running :class:`~.runner.QueueRunner`, which owns the
queue's state while it runs; reading (``queue list``/``show``) needs no socket
since state files are replaced atomically.

When no server answers, :func:`request` raises :class:`NotRunning` and the
command line edits the spool itself (nobody else is using it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Final

from .runner import QueueBusy, QueueRunner

__all__ = ["SOCKET_NAME", "ControlServer", "NotRunning", "request", "socket_path"]

log = logging.getLogger(__name__)

SOCKET_NAME: Final = "control.sock"
_MAX_PATH: Final = 107  # sun_path is 108 bytes on Linux, NUL included
_MAX_REQUEST: Final = 4096


class NotRunning(Exception):
    """No server is listening on the control socket."""


def socket_path(data_dir: Path) -> Path:
    """Where the server for ``data_dir`` listens."""
    return data_dir / SOCKET_NAME


class ControlServer:
    """Answers control requests for one queue runner."""

    def __init__(self, runner: QueueRunner, data_dir: Path) -> None:
        self.runner = runner
        self.path = socket_path(data_dir)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen; a stale socket left by a killed server is replaced; too long a path warns."""
        if len(os.fsencode(self.path)) > _MAX_PATH:
            log.warning(
                "control socket path %s is too long for a Unix socket; "
                "'mailharness queue flush/delete' will not reach this server",
                self.path,
            )
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if _answers(self.path):
                raise OSError(f"another server is running on {self.path}")
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10.0)
            answer = await self._answer(line)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line[:_MAX_REQUEST])
        except ValueError:
            return {"ok": False, "error": "a request is one line of JSON"}
        op = req.get("op") if isinstance(req, dict) else None
        if op == "flush":
            return {"ok": True, "flushed": self.runner.flush()}
        if op == "delete":
            queue_id = req.get("id")
            if not isinstance(queue_id, str):
                return {"ok": False, "error": "delete needs an id"}
            try:
                await self.runner.delete(queue_id)
            except FileNotFoundError:
                return {"ok": False, "error": f"no queued message {queue_id}"}
            except (QueueBusy, ValueError) as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "deleted": queue_id}
        if op == "status":
            return {"ok": True, "in_flight": sorted(self.runner.in_flight)}
        return {"ok": False, "error": f"unknown op {op!r}; expected flush, delete or status"}


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return False
    return True


def request(data_dir: Path, op: str, **args: str) -> dict[str, Any]:
    """Send one request to the server running on ``data_dir`` (blocking).

    Raises:
        NotRunning: no server listens there.
        OSError: the server did not answer properly.
    """
    path = socket_path(data_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30.0)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            raise NotRunning(f"no server is running on {data_dir}") from None
        sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        answer = json.loads(data)
    except ValueError:
        raise OSError(f"the server on {path} gave no answer") from None
    if not isinstance(answer, dict):
        raise OSError(f"the server on {path} gave an unexpected answer")
    return answer
