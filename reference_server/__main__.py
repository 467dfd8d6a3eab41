"""``python -m reference_server --config server.yaml``: run the reference mail server.

Also ``python -m reference_server hash-password`` to make a password hash
for the accounts file (the password is read from the terminal or stdin).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from .app import MailServer, serve_until_signal
from .config import ConfigError, load_config


def _announce(server: MailServer) -> None:
    for name, (host, port) in server.bound.items():
        print(
            f"listening: {name} ({server.config.listeners[name].kind}) on {host}:{port}", flush=True
        )


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Server configuration (YAML); see docs/reference-server.md.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every session event.")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, verbose: bool) -> None:
    """The mailharness reference mail server."""
    if ctx.invoked_subcommand is not None:
        return
    if config_path is None:
        raise click.UsageError(
            "give --config FILE (or use `mailharness serve` for a development setup)"
        )
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    asyncio.run(serve_until_signal(config, on_started=_announce))


@main.command("hash-password")
def hash_password_cmd() -> None:
    """Print a salted scrypt hash of a password, for the accounts file."""
    from .auth import hash_password

    if sys.stdin.isatty():
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    click.echo(hash_password(password))


if __name__ == "__main__":
    main()
