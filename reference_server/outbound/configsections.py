"""The ``relay:`` and ``queue:`` sections of the server configuration.

Each value is checked where it is read, with :class:`~reference_server.configreader.Reader`,
so a mistake is one line naming the file and the key path, like the rest of the file::

    server.yaml: queue.retry_interval: expected at least 1800 seconds (RFC 5321 §4.5.4.1 ...
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from reference_server.configreader import Reader, is_ip, show

from .settings import (
    RFC_MIN_RETRY_INTERVAL,
    DnsSettings,
    QueueSettings,
    RelaySettings,
    RelayTimeouts,
    Route,
    TlsPolicy,
)

__all__ = ["parse_queue", "parse_relay"]

_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME: Final = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_HOST: Final = re.compile(rf"^{_NAME}$")  # a host name
_ROUTE_DOMAIN: Final = re.compile(rf"^(?:\*|\.?{_NAME})$")  # b.test, .b.test (subdomains), *
_POLICIES: Final = tuple(p.value for p in TlsPolicy)


def _policy(r: Reader, value: object, key: str) -> TlsPolicy:
    return TlsPolicy(r.choice(value, key, "TLS policy", _POLICIES))


def _host(r: Reader, value: object, key: str) -> str:
    if isinstance(value, str) and (is_ip(value) or _HOST.match(value)):
        return value.rstrip(".")
    r.fail(key, f"expected an IP address or a host name, got {show(value)}")


def _ca_file(r: Reader, value: object, key: str) -> Path:
    path = r.path(value, key)
    if not path.is_file():
        r.fail(key, f"no such file '{path}'; give a PEM file of the CA certificates to trust")
    return path


def _route(r: Reader, domain: object, value: object) -> Route:
    if not isinstance(domain, str) or not _ROUTE_DOMAIN.match(domain):
        r.fail(
            "relay.routes",
            f"route keys are a domain (b.test), a parent domain (.b.test) or '*', "
            f"got {show(domain)}",
        )
    key = f"relay.routes.{domain}"
    if isinstance(value, str):  # the short form "host" or "host:port"
        host, sep, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
        spec: dict[str, object] = {"host": host if sep else value}
        if sep:
            spec["port"] = int(port) if port.isascii() and port.isdigit() else port
    else:
        spec = r.section(value, key, ("host", "port", "tls", "ca_file", "tls_name"))
    if "host" not in spec:
        r.fail(f"{key}.host", "missing; give the next hop's address, e.g. host: 127.0.0.1")
    return Route(
        domain=domain.lower().rstrip("."),
        host=_host(r, spec["host"], f"{key}.host"),
        port=r.integer(spec.get("port", 25), f"{key}.port", 1, 65535),
        tls=_policy(r, spec["tls"], f"{key}.tls") if "tls" in spec else None,
        ca_file=_ca_file(r, spec["ca_file"], f"{key}.ca_file") if "ca_file" in spec else None,
        tls_name=_host(r, spec["tls_name"], f"{key}.tls_name") if "tls_name" in spec else None,
    )


def parse_relay(r: Reader, value: object) -> RelaySettings:
    """The ``relay:`` section: greeting name, TLS policy, resolver, routes and timeouts."""
    known = ("helo_name", "tls", "ca_file", "dns", "routes", "timeouts", "max_hops", "mx_port")
    spec = r.section(value, "relay", known)
    d = RelaySettings()
    dns_spec = r.section(spec.get("dns"), "relay.dns", ("nameservers", "port", "timeout"))
    servers = dns_spec.get("nameservers", [])
    if not isinstance(servers, list) or not all(isinstance(s, str) and is_ip(s) for s in servers):
        r.fail(
            "relay.dns.nameservers",
            f"expected a list of IP addresses like [127.0.0.1], got {show(servers)}",
        )
    dd = DnsSettings()
    dns = DnsSettings(
        nameservers=tuple(servers),
        port=r.integer(dns_spec.get("port", dd.port), "relay.dns.port", 1, 65535),
        timeout=r.positive(dns_spec.get("timeout", dd.timeout), "relay.dns.timeout"),
    )
    routes_spec = r.section(spec.get("routes"), "relay.routes", None, "a mapping of domain to hop")
    routes = tuple(_route(r, domain, hop) for domain, hop in routes_spec.items())
    dt = RelayTimeouts()
    names = ("connect", "greeting", "command", "data_start", "data_block", "data_end")
    times = r.section(spec.get("timeouts"), "relay.timeouts", names)
    timeouts = RelayTimeouts(
        **{n: r.positive(times.get(n, getattr(dt, n)), f"relay.timeouts.{n}") for n in names}
    )
    helo = spec.get("helo_name")
    return RelaySettings(
        helo_name=None if helo is None else r.domain(helo, "relay.helo_name", "mail.example.test"),
        tls=_policy(r, spec.get("tls", d.tls.value), "relay.tls"),
        ca_file=_ca_file(r, spec["ca_file"], "relay.ca_file") if "ca_file" in spec else None,
        dns=dns,
        routes=routes,
        timeouts=timeouts,
        max_hops=r.integer(spec.get("max_hops", d.max_hops), "relay.max_hops", 10),
        mx_port=r.integer(spec.get("mx_port", d.mx_port), "relay.mx_port", 1, 65535),
    )


def parse_queue(r: Reader, value: object) -> QueueSettings:
    """The ``queue:`` section: retry schedule, lifetime, delay warnings and concurrency."""
    known = (
        "retry_interval",
        "max_retry_interval",
        "lifetime",
        "delay_warning",
        "max_deliveries",
        "max_per_destination",
        "test_timing",
    )
    spec = r.section(value, "queue", known)
    d = QueueSettings()
    test_timing = r.boolean(spec.get("test_timing", d.test_timing), "queue.test_timing")
    retry = r.positive(spec.get("retry_interval", d.retry_interval), "queue.retry_interval")
    if retry < RFC_MIN_RETRY_INTERVAL and not test_timing:
        r.fail(
            "queue.retry_interval",
            f"expected at least {RFC_MIN_RETRY_INTERVAL:g} seconds (RFC 5321 §4.5.4.1: the "
            f"retry interval SHOULD be at least 30 minutes), got {retry:g}; "
            "test setups may set queue.test_timing: true",
        )
    warning = spec.get("delay_warning")
    settings = QueueSettings(
        retry_interval=retry,
        max_retry_interval=r.positive(
            spec.get("max_retry_interval", max(d.max_retry_interval, retry)),
            "queue.max_retry_interval",
        ),
        lifetime=r.positive(spec.get("lifetime", d.lifetime), "queue.lifetime"),
        delay_warning=None if warning is None else r.positive(warning, "queue.delay_warning"),
        max_deliveries=r.integer(
            spec.get("max_deliveries", d.max_deliveries), "queue.max_deliveries", 1
        ),
        max_per_destination=r.integer(
            spec.get("max_per_destination", d.max_per_destination), "queue.max_per_destination", 1
        ),
        test_timing=test_timing,
    )
    if settings.max_retry_interval < settings.retry_interval:
        r.fail(
            "queue.max_retry_interval",
            f"expected at least queue.retry_interval ({retry:g}), "
            f"got {settings.max_retry_interval:g}",
        )
    if settings.delay_warning is not None and settings.delay_warning >= settings.lifetime:
        r.fail(
            "queue.delay_warning",
            f"expected less than queue.lifetime ({settings.lifetime:g}); a warning after the "
            "message was given up would never be sent",
        )
    return settings
