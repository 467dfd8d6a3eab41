"""A throwaway development setup, and the target file that lets the harness find it.

:func:`dev_config` makes everything a server needs in one directory
(``server.yaml``, ``accounts.yaml`` with two users and random passwords, a
development CA and certificate under ``data/tls/``) and loads it back
through :func:`reference_server.config.load_config`, so the setup is exactly
what a user could have written by hand.

:func:`write_target` writes a harness target file (docs/targets.md) for the
listeners a running server actually bound, so ``serve`` and ``run`` meet
without hand editing.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .auth import Accounts, hash_password
from .config import ServerConfig, load_config
from .tls import resolve_tls_files

__all__ = ["DEV_ACCOUNTS", "DEV_DOMAIN", "DEV_HOSTNAME", "dev_config", "write_target"]

DEV_DOMAIN = "example.test"  # RFC 2606 §2: reserved, never resolves
DEV_HOSTNAME = f"mail.{DEV_DOMAIN}"
DEV_ACCOUNTS = ("alice", "bob")


def dev_config(base_dir: Path, *, host: str = "127.0.0.1") -> tuple[ServerConfig, dict[str, str]]:
    """Write a complete development setup into ``base_dir`` and load it.

    Listeners ``mx``, ``submission``, ``submissions``, ``pop3``, ``pop3s``, ``imap``,
    ``imaps`` and ``web`` (kind ``http``, HTTPS) listen on ``host``,
    port 0 (any free port). Each call makes new random passwords; the
    certificates are reused while they fit (see
    :func:`reference_server.tls.generate_dev_certificates`).

    Args:
        base_dir: the directory for ``server.yaml``, ``accounts.yaml`` and ``data/``;
            created if missing.
        host: the IP address to listen on (no names: the server does no DNS lookups).

    Returns:
        The configuration, and each account's password in clear (user name -> password),
        to print or to pass to :func:`write_target`.

    Raises:
        ValueError: ``host`` is not an IP address.
    """
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"host {host!r}: expected an IP address like 127.0.0.1 or ::1") from None
    base_dir.mkdir(parents=True, exist_ok=True)
    passwords = {name: secrets.token_urlsafe(18) for name in DEV_ACCOUNTS}
    accounts = {
        "accounts": {
            name: {"password": hash_password(password), "addresses": [f"{name}@{DEV_DOMAIN}"]}
            for name, password in passwords.items()
        }
    }
    _write_yaml(
        base_dir / "accounts.yaml",
        "# Development accounts written by reference_server.devsetup (passwords are random).\n",
        accounts,
        mode=0o600,
    )
    listeners = {
        "mx": {"kind": "mx", "host": host, "port": 0, "tls": "starttls"},
        "submission": {"kind": "submission", "host": host, "port": 0, "tls": "starttls"},
        "submissions": {"kind": "submissions", "host": host, "port": 0, "tls": "implicit"},
        "pop3": {"kind": "pop3", "host": host, "port": 0, "tls": "starttls"},
        "pop3s": {"kind": "pop3s", "host": host, "port": 0, "tls": "implicit"},
        "imap": {"kind": "imap", "host": host, "port": 0, "tls": "starttls"},
        "imaps": {"kind": "imaps", "host": host, "port": 0, "tls": "implicit"},
        "web": {"kind": "http", "host": host, "port": 0, "tls": "implicit"},
    }
    server = {
        "hostname": DEV_HOSTNAME,
        "domains": [DEV_DOMAIN],
        "data_dir": "./data",
        "accounts_file": "./accounts.yaml",
        "postmaster": DEV_ACCOUNTS[0],
        "tls": {"generate": True},  # into data/tls/, since ./cert.pem and ./key.pem do not exist
        "listeners": listeners,
        # nothing leaves the machine: other domains go to a closed loopback port (and wait
        # in the queue), and the resolver is a loopback address where nobody answers
        "relay": {
            "routes": {"*": {"host": "127.0.0.1", "port": 1}},
            "dns": {"nameservers": ["127.0.0.1"], "port": 1, "timeout": 1},
        },
    }
    config_file = base_dir / "server.yaml"
    _write_yaml(
        config_file,
        "# Development setup written by reference_server.devsetup; see docs/reference-server.md.\n",
        server,
        mode=0o644,
    )
    config = load_config(config_file)
    resolve_tls_files(config)  # generate the certificates now, not at the first connection
    return config, passwords


def write_target(
    path: Path,
    config: ServerConfig,
    bound: Mapping[str, tuple[str, int]],
    passwords: Mapping[str, str],
    ca_file: Path | None,
) -> None:
    """Write a harness target file for the listeners a server opened.

    Services are named after the listeners and carry their TLS mode. Accounts
    come from the server's accounts file; a password missing from ``passwords``
    is written as ``${<NAME>_PASSWORD}``, read from the environment by the
    harness. A wildcard listen address (0.0.0.0, ::) becomes the loopback
    address of its family. The file is written with mode 0o600.

    Args:
        path: the target file to write.
        config: the server's configuration.
        bound: listener name -> (host, port) as opened (real ports, not 0).
        passwords: account name -> password in clear, for the accounts known.
        ca_file: the CA the harness should trust (a development CA), or None to
            verify against the system's trust store.

    Raises:
        ValueError: ``bound`` names an unknown listener, has port 0, or is empty.
        reference_server.auth.AccountsError: the accounts file is unusable.
    """
    if not bound:
        raise ValueError("no listeners are bound; a target needs at least one service")
    hosts: dict[str, str] = {}
    for name, (host, port) in bound.items():
        if name not in config.listeners:
            raise ValueError(f"bound listener {name!r} is not in the configuration")
        if not 1 <= port <= 65535:
            raise ValueError(f"listener {name!r}: port {port} is not a bound port")
        hosts[name] = _connectable(host)
    ordered = [name for name in config.listeners if name in bound]
    ordered += [name for name in bound if name not in ordered]
    main_host = hosts[ordered[0]]
    services: dict[str, dict[str, Any]] = {}
    for name in ordered:
        service: dict[str, Any] = {"port": bound[name][1], "tls": config.listeners[name].tls.value}
        if hosts[name] != main_host:
            service["host"] = hosts[name]
        services[name] = service
    domain = config.domains[0]
    accounts: dict[str, dict[str, str]] = {}
    for account in Accounts.load(config.accounts_file):
        name = account.username
        address = account.addresses[0] if account.addresses else f"{name}@{domain}"
        password = passwords.get(name, "${" + _env_name(name) + "}")
        accounts[name] = {"address": address, "username": name, "password": password}
    tls: dict[str, Any] = {"verify": True}
    if ca_file is not None:
        tls["ca_file"] = str(Path(ca_file).absolute())
    target: dict[str, Any] = {
        "host": main_host,
        "domain": domain,
        "server_name": config.hostname,
        "tls": tls,
        "services": services,
    }
    if accounts:
        target["accounts"] = accounts
    _write_yaml(
        path,
        f"# Target for the reference server at {main_host} ({config.hostname}), "
        "written by reference_server.devsetup.\n",
        target,
        mode=0o600,
    )


def _connectable(host: str) -> str:
    """The address to connect to for a listener bound to ``host``."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bound host {host!r}: expected an IP address") from None
    if ip.is_unspecified:  # bound to every address: reach it over loopback
        return "::1" if ip.version == 6 else "127.0.0.1"
    return str(ip)


def _env_name(account: str) -> str:
    """``alice`` -> ``ALICE_PASSWORD``: an environment variable name the harness expands."""
    stem = re.sub(r"[^A-Za-z0-9]", "_", account).upper()
    if stem[:1].isdigit():
        stem = "_" + stem
    return f"{stem}_PASSWORD"


def _write_yaml(path: Path, header: str, data: Mapping[str, Any], *, mode: int) -> None:
    """Write ``header`` and ``data`` as YAML, atomically, with ``mode`` from the start."""
    text = header + yaml.safe_dump(
        dict(data), sort_keys=False, default_flow_style=None, allow_unicode=True, width=100
    )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), mode)
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
