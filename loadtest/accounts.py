"""Mailboxes for load: from the target file or a CSV pool, split between Locust workers.

Accounts come from the target file's ``accounts:`` or from ``--accounts-csv
FILE``, a CSV with a header row and the columns ``username``, ``password``,
``address`` (others are ignored; ``address`` may be empty when the username is
the address). In a distributed run each worker takes every *count*-th account
starting at its index (:func:`partition`), so two workers never share a
mailbox: one worker's POP3 deletions cannot race another's, and the messages a
worker finds in a mailbox are the ones it sent there. A run with more workers
than accounts stops with an error that says so.

Within one worker, :class:`AccountPool` hands accounts out: ``next()`` round
robin (senders, IMAP readers: sharing a mailbox is fine), ``lease()``
exclusively (POP3: RFC 1939 §8 lets a server lock the maildrop, so two
sessions on one mailbox would fail with ``-ERR [IN-USE]``).
"""

from __future__ import annotations

import csv
import itertools
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from conformance.targets import Account, Target

__all__ = [
    "AccountPool",
    "AccountsError",
    "accounts_from_csv",
    "accounts_from_target",
    "partition",
]

REQUIRED_COLUMNS = ("username", "password", "address")


class AccountsError(ValueError):
    """Accounts that cannot be used; the message says why, in one line."""


def accounts_from_target(target: Target) -> list[Account]:
    """The target's accounts, in the order of the file."""
    return list(target.accounts.values())


def accounts_from_csv(path: Path) -> list[Account]:
    """Read an accounts CSV (``username,password,address``, with a header row).

    Raises:
        AccountsError: ``path:line: message`` for the first problem.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise AccountsError(
            f"{path}: cannot read the accounts CSV: {exc.strerror or exc}"
        ) from None
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip().lower() for c in reader.fieldnames or ()]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise AccountsError(
            f"{path}:1: the header row needs columns {', '.join(REQUIRED_COLUMNS)} "
            f"(missing: {', '.join(missing)})"
        )
    reader.fieldnames = columns
    accounts: list[Account] = []
    seen: set[str] = set()
    for row in reader:
        line = reader.line_num
        username = (row.get("username") or "").strip()
        password = row.get("password") or ""
        address = (row.get("address") or "").strip() or username
        if not username:
            raise AccountsError(f"{path}:{line}: empty username")
        if "@" not in address:
            raise AccountsError(
                f"{path}:{line}: address {address!r} of {username!r} is not an email address"
            )
        if username in seen:
            raise AccountsError(f"{path}:{line}: username {username!r} is listed twice")
        seen.add(username)
        accounts.append(
            Account(name=username, address=address, username=username, password=password)
        )
    if not accounts:
        raise AccountsError(f"{path}: no accounts (only a header row?)")
    return accounts


def partition(accounts: Sequence[Account], index: int, count: int) -> list[Account]:
    """The accounts of worker ``index`` of ``count``: every ``count``-th from ``index``.

    Raises:
        AccountsError: fewer accounts than workers, or an index outside ``0..count-1``.
    """
    if count < 1:
        raise AccountsError(f"worker count must be at least 1, not {count}")
    if not 0 <= index < count:
        raise AccountsError(
            f"worker index {index} is outside 0..{count - 1}: did more workers connect than "
            f"--worker-count {count}?"
        )
    if len(accounts) < count:
        raise AccountsError(
            f"{len(accounts)} account(s) cannot be split between {count} workers: each worker "
            "needs a mailbox of its own; add accounts (--accounts-csv) or run fewer workers"
        )
    return list(accounts[index::count])


class AccountPool:
    """One worker's accounts; see the module docstring."""

    def __init__(self, accounts: Iterable[Account]) -> None:
        self.accounts = list(accounts)
        if not self.accounts:
            raise AccountsError(
                "no accounts to load with: add accounts: to the target file or give --accounts-csv"
            )
        self._cycle = itertools.cycle(self.accounts)
        self._free = list(reversed(self.accounts))
        self._leased: set[str] = set()

    def __len__(self) -> int:
        return len(self.accounts)

    def next(self) -> Account:
        """The next account, round robin (shared use)."""
        return next(self._cycle)

    def sample(
        self, rng: random.Random, k: int, *, exclude: Account | None = None
    ) -> list[Account]:
        """``k`` different accounts (fewer if the pool is smaller), avoiding ``exclude``
        when there are others."""
        if exclude is None:
            choices = self.accounts
        else:
            choices = [a for a in self.accounts if a is not exclude] or self.accounts
        if k == 1:  # the draw rng.sample(choices, 1) makes, without its set-up
            return [rng.choice(choices)]
        return rng.sample(choices, min(k, len(choices)))

    def lease(self) -> Account | None:
        """An account nobody else holds, or ``None`` when all are leased."""
        while self._free:
            account = self._free.pop()
            if account.name not in self._leased:
                self._leased.add(account.name)
                return account
        return None

    def release(self, account: Account) -> None:
        """Give a leased account back."""
        if account.name in self._leased:
            self._leased.discard(account.name)
            self._free.append(account)
