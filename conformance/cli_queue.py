"""``mailharness queue``: look at and act on the reference server's outbound queue.

``list`` and ``show`` read the spool directly (state files are replaced
atomically, so a running server never shows half a change). ``flush`` and
``delete`` go through the running server's control socket, because its queue
runner owns the queue while it runs; when no server is running they edit the
spool themselves.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from reference_server.config import ConfigError, ServerConfig, load_config
from reference_server.outbound.control import NotRunning, request
from reference_server.storage.spool import OutboundSpool, QueueState, SpoolEntry

from .cli_common import EXIT_USAGE

__all__ = ["queue"]

EXIT_NOT_FOUND = 1

_config_option = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The server's configuration file (the queue is in its data_dir).",
)


def _load(config_path: Path) -> ServerConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _in_flight(config: ServerConfig) -> set[str] | None:
    """Ids being delivered now, or None when no server is running."""
    try:
        answer = request(config.data_dir, "status")
    except (NotRunning, OSError):
        return None
    return set(answer.get("in_flight", []))


def _entries(spool: OutboundSpool) -> list[tuple[SpoolEntry, QueueState | None]]:
    result: list[tuple[SpoolEntry, QueueState | None]] = []
    for entry in spool.list():
        try:
            state: QueueState | None = spool.read_state(entry)
        except ValueError:
            state = None
        result.append((entry, state))
    return result


def _describe(entry: SpoolEntry, state: QueueState | None, now: float) -> dict[str, Any]:
    recipients = []
    for address in entry.recipients:
        rcpt = state.recipients.get(address) if state is not None else None
        recipients.append(
            {
                "address": address,
                "status": rcpt.status if rcpt else "pending",
                "code": rcpt.code if rcpt else None,
                "diagnostic": rcpt.diagnostic if rcpt else None,
                "remote_mta": rcpt.remote_mta if rcpt else None,
            }
        )
    return {
        "id": entry.id,
        "sender": entry.sender,
        "created": entry.created,
        "age": now - entry.created,
        "size": _size(entry.message_path),
        "received_from": entry.received_from,
        "attempts": state.attempts if state else 0,
        "last_attempt": state.last_attempt if state else None,
        "next_attempt": state.next_attempt if state else entry.created,
        "recipients": recipients,
    }


@click.group()
def queue() -> None:
    """The reference server's outbound queue (like mailq, postqueue -f, postsuper -d)."""


@queue.command("list")
@_config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def list_(config_path: Path, as_json: bool) -> None:
    """Each queued message: id, age, size, sender, attempts, next attempt, recipients."""
    config = _load(config_path)
    now = time.time()
    rows = [_describe(e, s, now) for e, s in _entries(OutboundSpool(config.spool_dir))]
    active = _in_flight(config) or set()
    if as_json:
        click.echo(json.dumps({"messages": rows, "in_flight": sorted(active)}, indent=1))
        return
    if not rows:
        click.echo("Mail queue is empty")
        return
    click.echo(f"{'ID':<32} {'AGE':>5} {'SIZE':>8}  {'TRIES':>5}  {'NEXT':<8} SENDER")
    for row in rows:
        mark = "*" if row["id"] in active else " "
        wait = row["next_attempt"] - now
        nxt = "now" if row["id"] in active or wait <= 0 else f"in {_ago(wait)}"
        sender = f"<{row['sender']}>"
        click.echo(
            f"{row['id'] + mark:<32} {_ago(row['age']):>5} {row['size']:>8}  "
            f"{row['attempts']:>5}  {nxt:<8} {sender}"
        )
        for rcpt in row["recipients"]:
            if rcpt["status"] == "delivered":
                continue
            click.echo(f"    {rcpt['address']}  {rcpt['status']}")
            if rcpt["diagnostic"]:
                click.echo(f"        ({rcpt['diagnostic']})")
    pending = sum(r["status"] == "pending" for row in rows for r in row["recipients"])
    click.echo(f"-- {len(rows)} message(s), {pending} recipient(s) pending; * = being delivered")


@queue.command()
@_config_option
@click.argument("queue_id")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
def show(config_path: Path, queue_id: str, as_json: bool) -> None:
    """One queued message: envelope, per-recipient state and the message's header section."""
    config = _load(config_path)
    spool = OutboundSpool(config.spool_dir)
    try:
        entry = spool.get(queue_id)
        state = spool.read_state(entry)
        message = entry.message_path.read_bytes()
    except (FileNotFoundError, ValueError) as exc:
        click.echo(f"queue show: {exc}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    row = _describe(entry, state, time.time())
    end = message.find(b"\r\n\r\n")
    headers = (message if end < 0 else message[: end + 2]).decode("utf-8", "replace")
    if as_json:
        click.echo(json.dumps({**row, "headers": headers}, indent=1))
        return
    click.echo(f"id: {row['id']}")
    click.echo(f"sender: <{row['sender']}>")
    click.echo(f"queued: {time.ctime(row['created'])} ({_ago(row['age'])} ago)")
    click.echo(f"from: {row['received_from'] or 'unknown'}")
    click.echo(f"size: {row['size']} octets")
    click.echo(f"attempts: {row['attempts']}")
    click.echo(f"next attempt: {time.ctime(row['next_attempt'])}")
    for rcpt in row["recipients"]:
        extra = f" ({rcpt['diagnostic']})" if rcpt["diagnostic"] else ""
        click.echo(f"recipient: <{rcpt['address']}> {rcpt['status']}{extra}")
    click.echo("")
    click.echo(headers.rstrip("\r\n").replace("\r\n", "\n"))


@queue.command()
@_config_option
def flush(config_path: Path) -> None:
    """Try every queued message now."""
    config = _load(config_path)
    try:
        answer = request(config.data_dir, "flush")
    except NotRunning:
        spool = OutboundSpool(config.spool_dir)
        entries = _entries(spool)
        for entry, state in entries:
            if state is not None:
                state.next_attempt = 0.0
                spool.write_state(entry.id, state)
        click.echo(f"no server is running; {len(entries)} message(s) will be tried when it starts")
        return
    except OSError as exc:
        click.echo(f"queue flush: {exc}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    click.echo(f"flushed: {answer.get('flushed', 0)} message(s) due now")


@queue.command()
@_config_option
@click.argument("queue_ids", nargs=-1, required=True)
def delete(config_path: Path, queue_ids: tuple[str, ...]) -> None:
    """Remove messages from the queue, without a bounce."""
    config = _load(config_path)
    failed = False
    for queue_id in queue_ids:
        try:
            answer = request(config.data_dir, "delete", id=queue_id)
        except NotRunning:
            try:
                OutboundSpool(config.spool_dir).remove(queue_id)
                answer = {"ok": True}
            except FileNotFoundError:
                answer = {"ok": False, "error": f"no queued message {queue_id}"}
            except ValueError as exc:
                answer = {"ok": False, "error": str(exc)}
        except OSError as exc:
            answer = {"ok": False, "error": str(exc)}
        if answer.get("ok"):
            click.echo(f"deleted: {queue_id}")
        else:
            click.echo(f"queue delete: {answer.get('error')}", err=True)
            failed = True
    if failed:
        sys.exit(EXIT_NOT_FOUND)
