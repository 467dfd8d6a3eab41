"""Accounts, salted password hashes and SASL decoding for the reference server.

Passwords are stored only as scrypt hashes (``hashlib.scrypt``, RFC 7914) in a
self-describing string, ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``; the
accounts file refuses plain text. Verifying costs tens of milliseconds on
purpose, so servers run it in a worker thread (``MailServer.offload``, or
:meth:`Accounts.authenticate_async`). An unknown user name costs one
verification too (against a dummy hash), so the time of a failed AUTH does
not tell which user names exist.

The SASL helpers decode the client's base64 responses for PLAIN (RFC 4616) and
LOGIN; the protocol handlers own the exchanges themselves.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import yaml

__all__ = [
    "Account",
    "Accounts",
    "AccountsError",
    "decode_b64_text",
    "decode_plain",
    "hash_password",
    "is_password_hash",
    "verify_password",
]

SCHEME = "scrypt"
# Cost parameters for new hashes: n=2**14, r=8, p=1 (RFC 7914 §2 recommends
# r=8, p=1; n=2**14 is its interactive-login figure), 16 MiB and tens of ms.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# Bounds on parameters read from a file, so a hostile or mistyped hash cannot make
# one verification take gigabytes or minutes.
_MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
_MAX_P = 16
HASH_HINT = "make one with: python -m reference_server hash-password"


class _ScryptHash(NamedTuple):
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # scrypt needs about 128 * r * (n + p) bytes (RFC 7914 §6); leave room above it
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


def _parse_hash(stored: str) -> _ScryptHash | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        return None
    _, n_text, r_text, p_text, salt_text, digest_text = parts
    if not all(t.isascii() and t.isdigit() for t in (n_text, r_text, p_text)):
        return None
    n, r, p = int(n_text), int(r_text), int(p_text)
    if n < 2 or n & (n - 1) or r < 1 or not 1 <= p <= _MAX_P:
        return None  # RFC 7914 §2: N is a power of 2 greater than 1
    if 128 * r * n > _MAX_SCRYPT_MEMORY:
        return None
    try:
        salt = base64.b64decode(salt_text, validate=True)
        digest = base64.b64decode(digest_text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(salt) < 8 or not 16 <= len(digest) <= 64:
        return None
    return _ScryptHash(n, r, p, salt, digest)


def is_password_hash(stored: str) -> bool:
    """Whether ``stored`` is a password hash this module can verify.

    Args:
        stored: the string from an accounts file.

    Returns:
        ``True`` for a well-formed ``scrypt$...`` string with sane parameters.
    """
    return _parse_hash(stored) is not None


def hash_password(password: str) -> str:
    """Hash a password with scrypt and a fresh random 16-byte salt.

    Args:
        password: the password; hashed as its UTF-8 bytes (no normalisation).

    Returns:
        ``scrypt$16384$8$1$<salt b64>$<hash b64>``.
    """
    salt = os.urandom(SALT_BYTES)
    digest = _derive(password.encode("utf-8"), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Check a password against a stored hash, comparing in constant time.

    Args:
        password: what the client sent.
        stored: a hash made by :func:`hash_password` (other parameters are fine).

    Returns:
        Whether they match; ``False`` for a stored string in an unknown format.
    """
    parsed = _parse_hash(stored)
    if parsed is None:
        return False
    try:
        candidate = _derive(
            password.encode("utf-8"), parsed.salt, parsed.n, parsed.r, parsed.p, len(parsed.digest)
        )
    except UnicodeEncodeError:  # a lone surrogate cannot be anyone's password
        return False
    return hmac.compare_digest(candidate, parsed.digest)


# Verified against when the user name is unknown, so that failure takes as long as
# a wrong password for a real user. No password hashes to these zero bytes.
_DUMMY_HASH = (
    f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(bytes(SALT_BYTES))}${_b64(bytes(HASH_BYTES))}"
)


# -- accounts ------------------------------------------------------------------------------


class AccountsError(Exception):
    """An accounts file or account list is unusable; the message is one line saying why."""


@dataclass(frozen=True)
class Account:
    """One user of the reference server.

    Attributes:
        username: the login name, also the user's Maildir name.
        addresses: the mail addresses delivered to this account.
        password_hash: the stored scrypt hash (left out of ``repr``).
    """

    username: str
    addresses: tuple[str, ...]
    password_hash: str = field(repr=False)


def _address_key(address: str) -> str:
    # RFC 5321 §2.4 lets a server treat local parts as case-sensitive; like most
    # real servers we do not: the whole address compares case-insensitively.
    return address.lower()


def _username_problem(username: str) -> str | None:
    if not username:
        return "the account name is empty"
    if (
        any(c.isspace() or not c.isprintable() for c in username)
        or "/" in username
        or ".." in username
        or username.startswith(".")
        or len(username.encode("utf-8")) > 255
    ):
        return (
            "the account name must be usable as a mailbox directory name "
            "(no '/', '..', spaces or control characters, no leading '.', at most 255 bytes)"
        )
    return None


def _address_problem(address: str) -> str | None:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return f"address {address!r} is not of the form local-part@domain"
    if any(c.isspace() or not c.isprintable() or c in "<>" for c in address):
        return f"address {address!r} contains spaces, control characters or angle brackets"
    return None


def _password_problem(password_hash: str) -> str | None:
    if not is_password_hash(password_hash):
        return f"password is not a hash (plain text is refused); {HASH_HINT}"
    return None


class Accounts:
    """The accounts of a server: login checks and address ownership.

    Args:
        entries: the accounts.

    Raises:
        AccountsError: an account name is unusable or repeated, a password is not
            a hash, or an address is malformed or belongs to two accounts.
    """

    # A verified password is remembered this long (a keyed hash of it, in memory only),
    # so clients that log in again and again do not pay the scrypt cost each time.
    VERIFIED_TTL = 900.0

    def __init__(self, entries: Iterable[Account]) -> None:
        self._by_name: dict[str, Account] = {}
        self._by_address: dict[str, Account] = {}
        self._verified: dict[str, tuple[bytes, float]] = {}  # user -> (HMAC(password), until)
        self._cache_key = os.urandom(32)
        for account in entries:
            name = account.username
            problem = _username_problem(name) or _password_problem(account.password_hash)
            if problem is None and name in self._by_name:
                problem = "defined twice"
            if problem is not None:
                raise AccountsError(f"account {name!r}: {problem}")
            for address in account.addresses:
                problem = _address_problem(address)
                if problem is None:
                    problem = self._address_taken(address, name)
                if problem is not None:
                    raise AccountsError(f"account {name!r}: {problem}")
                self._by_address[_address_key(address)] = account
            self._by_name[name] = account

    def _address_taken(self, address: str, username: str) -> str | None:
        other = self._by_address.get(_address_key(address))
        if other is None:
            return None
        if other.username == username:
            return f"address {address!r} is listed twice"
        return f"address {address!r} already belongs to account {other.username!r}"

    @classmethod
    def load(cls, path: Path) -> Accounts:
        """Read an accounts file (YAML; see docs/reference-server.md).

        Args:
            path: the file.

        Returns:
            The accounts.

        Raises:
            AccountsError: the file cannot be read or is wrong; the message names the
                file, the line and the account, and says how to fix it.
        """
        return _load_accounts(Path(path))

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Account]:
        return iter(self._by_name.values())

    def __contains__(self, username: object) -> bool:
        return username in self._by_name

    def get(self, username: str) -> Account | None:
        """The account called ``username`` (exact match), or ``None``."""
        return self._by_name.get(username)

    def authenticate(self, username: str, password: str) -> Account | None:
        """Check a login; slow on purpose (see :meth:`authenticate_async`).

        An unknown user name costs one verification against a dummy hash, so a
        failure takes about as long whether or not the user exists.

        Args:
            username: the login name (exact match).
            password: the password the client sent.

        Returns:
            The account, or ``None`` if the name is unknown or the password wrong.
        """
        account = self._by_name.get(username)
        if account is None:
            verify_password(password, _DUMMY_HASH)
            return None
        # like Dovecot's auth cache: a success is remembered (never a failure, so
        # guessing still costs a full verification and the server's failure delay)
        tag = hmac.new(
            self._cache_key, password.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).digest()
        now = time.monotonic()
        known = self._verified.get(username)
        if known is not None and known[1] > now and hmac.compare_digest(known[0], tag):
            return account
        if not verify_password(password, account.password_hash):
            return None
        self._verified[username] = (tag, now + self.VERIFIED_TTL)
        return account

    async def authenticate_async(self, username: str, password: str) -> Account | None:
        """:meth:`authenticate` in a worker thread, so the event loop keeps serving.

        Args:
            username: the login name.
            password: the password the client sent.

        Returns:
            The account, or ``None``.
        """
        return await asyncio.to_thread(self.authenticate, username, password)

    def owner_of(self, address: str) -> Account | None:
        """The account an address delivers to, compared case-insensitively.

        Args:
            address: a bare address, ``local-part@domain`` (no angle brackets).

        Returns:
            The owning account, or ``None``.
        """
        return self._by_address.get(_address_key(address))

    def addresses_of(self, username: str) -> tuple[str, ...]:
        """The addresses of an account, as written in its definition.

        Args:
            username: the login name.

        Returns:
            The addresses; empty for an unknown user.
        """
        account = self._by_name.get(username)
        return account.addresses if account is not None else ()


# -- the accounts file ---------------------------------------------------------------------

_ACCOUNT_KEYS = ("password", "addresses")
# makes the one-line error for a node (its line is added when known)
_FailFn = Callable[[yaml.Node | None, str], AccountsError]


def _load_accounts(path: Path) -> Accounts:
    """Parse the YAML by hand from its node tree, to keep line numbers for errors."""
    where = str(path)

    def fail(node: yaml.Node | None, message: str) -> AccountsError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return AccountsError(f"{where}{line}: {message}")

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AccountsError(f"{where}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise AccountsError(f"{where}: cannot read the accounts file: {exc.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise AccountsError(f"{where}{line}: not valid YAML: {problem}") from None

    if root is None:
        raise AccountsError(f"{where}: the file is empty; it needs an 'accounts:' mapping")
    top = _mapping(root, "the top level", fail)
    for key, _ in top.values():
        if key.value != "accounts":
            raise fail(key, f"unknown key {key.value!r} (the file holds only 'accounts:')")
    if "accounts" not in top:
        raise fail(root, "no 'accounts:' mapping")
    accounts_node = top["accounts"][1]
    if not isinstance(accounts_node, yaml.MappingNode):
        raise fail(accounts_node, "'accounts' must map account names to their settings")

    accounts: list[Account] = []
    seen_names: set[str] = set()
    owners: dict[str, str] = {}
    for name_node, settings in accounts_node.value:
        if not isinstance(name_node, yaml.ScalarNode):
            raise fail(name_node, "an account name must be a plain string")
        name = name_node.value
        if name in seen_names:
            raise fail(name_node, f"account {name!r} is defined twice")
        seen_names.add(name)
        problem = _username_problem(name)
        if problem is not None:
            raise fail(name_node, f"account {name!r}: {problem}")

        def bad(node: yaml.Node, message: str, name: str = name) -> AccountsError:
            return fail(node, f"account {name!r}: {message}")

        fields = _mapping(settings, f"account {name!r}", fail)
        for key, _ in fields.values():
            if key.value not in _ACCOUNT_KEYS:
                raise bad(key, f"unknown field {key.value!r} (fields: password, addresses)")
        for required in _ACCOUNT_KEYS:
            if required not in fields:
                raise bad(name_node, f"missing field {required!r}")

        password_node = fields["password"][1]
        if not isinstance(password_node, yaml.ScalarNode) or not password_node.value:
            raise bad(password_node, f"password must be a hash string; {HASH_HINT}")
        problem = _password_problem(password_node.value)
        if problem is not None:
            raise bad(password_node, problem)

        addresses_node = fields["addresses"][1]
        if not isinstance(addresses_node, yaml.SequenceNode):
            raise bad(addresses_node, "addresses must be a list, like [alice@example.test]")
        addresses: list[str] = []
        for item in addresses_node.value:
            if not isinstance(item, yaml.ScalarNode):
                raise bad(item, "each address must be a string")
            address = item.value
            problem = _address_problem(address)
            address_key = _address_key(address)
            if problem is None and address_key in owners:
                other = owners[address_key]
                problem = (
                    f"address {address!r} is listed twice"
                    if other == name
                    else f"address {address!r} already belongs to account {other!r}"
                )
            if problem is not None:
                raise bad(item, problem)
            owners[address_key] = name
            addresses.append(address)
        accounts.append(Account(name, tuple(addresses), password_node.value))
    try:
        return Accounts(accounts)
    except AccountsError as exc:  # every check above came first; kept for safety
        raise AccountsError(f"{where}: {exc}") from None


def _mapping(
    node: yaml.Node,
    what: str,
    fail: _FailFn,
) -> dict[str, tuple[yaml.ScalarNode, yaml.Node]]:
    """The keys of a mapping node, refusing non-string and duplicate keys."""
    if not isinstance(node, yaml.MappingNode):
        raise fail(node, f"{what} must be a mapping (key: value lines)")
    result: dict[str, tuple[yaml.ScalarNode, yaml.Node]] = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            raise fail(key, f"{what}: keys must be plain strings")
        if key.value in result:
            raise fail(key, f"{what}: key {key.value!r} appears twice")
        result[key.value] = (key, value)
    return result


# -- SASL ----------------------------------------------------------------------------------


def _decode_base64(b64: str) -> bytes:
    try:
        return base64.b64decode(b64.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise ValueError(f"not valid base64 (RFC 4648 §4): {exc}") from None


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not valid UTF-8") from None


def decode_plain(b64: str) -> tuple[str, str, str]:
    """Decode a SASL PLAIN response (RFC 4616 §2).

    ``message = [authzid] UTF8NUL authcid UTF8NUL passwd``; authcid and passwd
    are ``1*SAFE``, so neither may be empty. An empty authzid means "act as
    authcid".

    Args:
        b64: the client's base64 response (an empty initial response ``=``
            must be turned into ``""`` by the caller).

    Returns:
        ``(authzid, authcid, password)``, decoded as strict UTF-8.

    Raises:
        ValueError: bad base64, not exactly two NUL separators, an empty
            authcid or password, or invalid UTF-8; the message says which.
    """
    raw = _decode_base64(b64)
    parts = raw.split(b"\x00")
    if len(parts) != 3:
        raise ValueError(
            "PLAIN response must be [authzid] NUL authcid NUL password (RFC 4616 §2); "
            f"it has {len(parts) - 1} NUL separators, not 2"
        )
    authzid_raw, authcid_raw, password_raw = parts
    if not authcid_raw:
        raise ValueError("PLAIN response has an empty authentication identity (RFC 4616 §2)")
    if not password_raw:
        raise ValueError("PLAIN response has an empty password (RFC 4616 §2)")
    return (
        _utf8(authzid_raw, "authorization identity"),
        _utf8(authcid_raw, "authentication identity"),
        _utf8(password_raw, "password"),
    )


def decode_b64_text(b64: str) -> str:
    """Decode one base64 response of AUTH LOGIN (user name or password).

    Args:
        b64: the client's base64 line.

    Returns:
        The text, decoded as strict UTF-8.

    Raises:
        ValueError: bad base64, invalid UTF-8, or a NUL in the text.
    """
    text = _utf8(_decode_base64(b64), "the decoded response")
    if "\x00" in text:
        raise ValueError("the decoded response contains NUL")
    return text
