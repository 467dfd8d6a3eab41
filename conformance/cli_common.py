"""What the ``mailharness`` subcommands share: their exit codes, and reading a target file.

Every command ends with the same codes (docs: README, targets.md): 0 all well,
1 something failed or was found, 2 bad input (nothing was run), 3 the target
could not be reached.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._yaml import LoadError
from .targets import Target, load_target

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "target_or_exit",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def target_or_exit(path: Path, *, insecure: bool = False, ca_file: Path | None = None) -> Target:
    """The target file at ``path`` (TLS overridden as asked); a file that does not load
    prints its one-line error (``path:line:column: message``) and exits with 2."""
    try:
        return load_target(path).with_tls(insecure=insecure, ca_file=ca_file)
    except LoadError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)
