"""Targets: where a server's services listen, how to reach them, who to log in as.

A target file is YAML (see DESIGN.md and docs/targets.md). Passwords may be
written as ``${ENV_VAR}`` so CI secrets stay out of the file; an unset
variable is a load error that names it. TLS verification is on unless the
file or ``--insecure`` turns it off.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import jsonschema

from ._yaml import LoadError, Located, load_yaml_documents
from .sink import DEFAULT_SINK_DOMAIN

__all__ = ["Account", "Service", "SinkSpec", "Target", "TlsMode", "load_target"]


class TlsMode(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    IMPLICIT = "implicit"


@dataclass(frozen=True)
class Service:
    name: str
    host: str
    port: int
    tls: TlsMode


@dataclass(frozen=True)
class Account:
    name: str
    address: str
    username: str
    password: str


@dataclass(frozen=True)
class SinkSpec:
    """Where the harness runs its outbound sink, and the domain routed to it.

    The operator routes ``domain`` on the server under test to ``host``:``port``
    (docs/targets.md); scenarios with ``sink: true`` then address recipients there.
    """

    host: str
    port: int
    domain: str = DEFAULT_SINK_DOMAIN


@dataclass(frozen=True)
class Target:
    host: str
    domain: str
    services: dict[str, Service]
    accounts: dict[str, Account]
    verify: bool = True
    ca_file: Path | None = None
    server_name: str | None = None  # TLS SNI / certificate name; defaults to host
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    sink: SinkSpec | None = None  # the outbound sink the server relays to, if any
    source: Path | None = field(default=None, compare=False)

    def variables(self) -> dict[str, str]:
        """The ``{variables}`` a scenario may use from this target."""
        values = {"domain": self.domain, "host": self.host}
        if self.sink is not None:
            values["sink.domain"] = self.sink.domain
        for acc in self.accounts.values():
            values[f"account.{acc.name}.address"] = acc.address
            values[f"account.{acc.name}.username"] = acc.username
            values[f"account.{acc.name}.password"] = acc.password
        return values

    def with_tls(self, *, insecure: bool = False, ca_file: Path | None = None) -> Target:
        """Apply the ``--insecure`` / ``--ca-file`` command-line overrides."""
        if insecure:
            return replace(self, verify=False)
        if ca_file is not None:
            return replace(self, verify=True, ca_file=ca_file)
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: verifying by default, with the target's CA if given."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


_port = {"type": "integer", "minimum": 1, "maximum": 65535}
_DOMAIN = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$"
TARGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["host", "services"],
    "properties": {
        "host": {"type": "string", "minLength": 1},
        "domain": {"type": "string", "minLength": 1},
        "server_name": {"type": "string", "minLength": 1},
        "tls": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"verify": {"type": "boolean"}, "ca_file": {"type": "string"}},
        },
        "timeouts": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "connect": {"type": "number", "exclusiveMinimum": 0},
                "read": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        "sink": {
            "type": "object",
            "additionalProperties": False,
            "required": ["port"],
            "properties": {
                "host": {"type": "string", "minLength": 1},
                "port": _port,
                "domain": {"type": "string", "pattern": _DOMAIN},
            },
        },
        "services": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["port"],
                "properties": {
                    "port": _port,
                    "host": {"type": "string", "minLength": 1},
                    "tls": {"enum": ["none", "starttls", "implicit"]},
                },
            },
        },
        "accounts": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["address", "password"],
                "properties": {
                    "address": {"type": "string", "minLength": 3},
                    "username": {"type": "string", "minLength": 1},
                    "password": {"type": "string"},
                },
            },
        },
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(TARGET_SCHEMA)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(doc: Located, key: tuple[str | int, ...], text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise doc.error(
                key, f"environment variable {name} is not set (used by {'.'.join(map(str, key))})"
            )
        return os.environ[name]

    return _ENV.sub(repl, text)


def load_target(path: Path) -> Target:
    """Read and check a target file.

    Raises:
        LoadError: ``path:line:column: message`` for the first problem.
    """
    docs = load_yaml_documents(path)
    if len(docs) != 1 or docs[0].value is None:
        raise LoadError(path, None, "a target file holds exactly one YAML document")
    doc = docs[0]
    errors = sorted(
        _VALIDATOR.iter_errors(doc.value), key=lambda e: list(map(str, e.absolute_path))
    )
    if errors:
        err = errors[0]
        where = ".".join(map(str, err.absolute_path)) or "target"
        if err.validator == "additionalProperties":
            extra = [k for k in err.instance if k not in err.schema.get("properties", {})]
            raise doc.error(
                (*err.absolute_path, extra[0]), f"unknown key {extra[0]!r} in {where}", at_key=True
            )
        raise doc.error(tuple(err.absolute_path), f"{where}: {err.message}")
    raw = doc.value
    host = raw["host"]
    services = {
        name: Service(name, spec.get("host", host), spec["port"], TlsMode(spec.get("tls", "none")))
        for name, spec in raw["services"].items()
    }
    accounts = {}
    for name, spec in raw.get("accounts", {}).items():
        address = spec["address"]
        accounts[name] = Account(
            name=name,
            address=address,
            username=spec.get("username", address),
            password=_expand_env(doc, ("accounts", name, "password"), spec["password"]),
        )
    domain = raw.get("domain")
    if domain is None:
        first = next(iter(accounts.values()), None)
        if first is None or "@" not in first.address:
            raise doc.error(
                (), "give 'domain' (the local mail domain), or an account whose address has one"
            )
        domain = first.address.rpartition("@")[2]
    tls = raw.get("tls", {})
    ca_file = tls.get("ca_file")
    ca_path = (path.parent / ca_file) if ca_file else None
    if ca_path is not None and not ca_path.is_file():
        raise doc.error(("tls", "ca_file"), f"tls.ca_file: no such file {str(ca_path)!r}")
    timeouts = raw.get("timeouts", {})
    sink_raw = raw.get("sink")
    sink = (
        None
        if sink_raw is None
        else SinkSpec(
            host=sink_raw.get("host", "127.0.0.1"),
            port=sink_raw["port"],
            domain=sink_raw.get("domain", DEFAULT_SINK_DOMAIN).lower(),
        )
    )
    return Target(
        host=host,
        domain=domain,
        services=services,
        accounts=accounts,
        verify=tls.get("verify", True),
        ca_file=ca_path,
        server_name=raw.get("server_name"),
        connect_timeout=float(timeouts.get("connect", 5.0)),
        read_timeout=float(timeouts.get("read", 10.0)),
        sink=sink,
        source=path,
    )
