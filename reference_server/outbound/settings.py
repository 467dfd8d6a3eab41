"""Settings of the outbound path: how the next hop is found and how the queue retries.

They are plain frozen dataclasses, filled by :func:`reference_server.config.load_config`
from the ``relay:`` and ``queue:`` sections (docs/reference-server.md, section
"Outbound queue and relay").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

__all__ = [
    "RFC_MIN_RETRY_INTERVAL",
    "DnsSettings",
    "QueueSettings",
    "RelaySettings",
    "RelayTimeouts",
    "Route",
    "TlsPolicy",
]

# RFC 5321 §4.5.4.1: "the retry interval SHOULD be at least 30 minutes"
RFC_MIN_RETRY_INTERVAL: Final = 1800.0


class TlsPolicy(StrEnum):
    """How the relay client uses STARTTLS (the names of Postfix's smtp_tls_security_level)."""

    NONE = "none"  # never, even when offered
    MAY = "may"  # when offered, without checking the certificate (opportunistic, RFC 3207)
    ENCRYPT = "encrypt"  # required; the certificate is not checked
    VERIFY = "verify"  # required; the certificate must chain to ca_file and name tls_name


@dataclass(frozen=True, kw_only=True)
class Route:
    """A static next hop for one destination domain.

    ``domain`` is an exact domain (``b.test``), a parent domain with a leading dot
    that matches its subdomains only (``.b.test``), or ``*`` for every domain
    without a more specific route (a smart host). ``host`` is an IP literal or a
    name resolved through the configured resolver, never the system's.
    """

    domain: str
    host: str
    port: int = 25
    tls: TlsPolicy | None = None  # None: RelaySettings.tls
    ca_file: Path | None = None  # None: RelaySettings.ca_file
    tls_name: str | None = None  # the name to verify; None: host


@dataclass(frozen=True, kw_only=True)
class DnsSettings:
    """The resolver for MX and address lookups.

    With no ``nameservers`` dnspython reads /etc/resolv.conf; tests always give a
    loopback server so they never reach the machine's resolver.
    """

    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 5.0  # seconds for one lookup, all servers included


@dataclass(frozen=True, kw_only=True)
class RelayTimeouts:
    """Client-side waits, RFC 5321 §4.5.3.2 (seconds)."""

    connect: float = 30.0
    greeting: float = 300.0  # §4.5.3.2.1
    command: float = 300.0  # MAIL §4.5.3.2.2, RCPT §4.5.3.2.3, EHLO and STARTTLS too
    data_start: float = 120.0  # §4.5.3.2.4
    data_block: float = 180.0  # §4.5.3.2.5
    data_end: float = 600.0  # §4.5.3.2.6


@dataclass(frozen=True, kw_only=True)
class RelaySettings:
    """How mail leaves: the name we greet with, TLS, the resolver and static routes."""

    helo_name: str | None = None  # None: the server's hostname
    tls: TlsPolicy = TlsPolicy.MAY
    ca_file: Path | None = None  # for tls: verify; None: the system's CA store
    dns: DnsSettings = field(default_factory=DnsSettings)
    routes: tuple[Route, ...] = ()
    timeouts: RelayTimeouts = field(default_factory=RelayTimeouts)
    max_hops: int = 100  # Received headers before a message is taken for a loop (§6.3)
    mx_port: int = 25  # the port of hosts found by MX lookup; another one only for tests


@dataclass(frozen=True, kw_only=True)
class QueueSettings:
    """Retry schedule, lifetime and concurrency of the outbound queue."""

    retry_interval: float = RFC_MIN_RETRY_INTERVAL  # first retry after a failed attempt
    max_retry_interval: float = 4 * 3600.0  # the backoff doubles up to this
    lifetime: float = 5 * 86400.0  # then give up and bounce (§4.5.4.1: 4-5 days)
    delay_warning: float | None = None  # send a "delayed" DSN once after this long
    max_deliveries: int = 20  # concurrent deliveries in all
    max_per_destination: int = 5  # concurrent deliveries to one domain
    test_timing: bool = False  # allow a retry_interval under RFC_MIN_RETRY_INTERVAL

    def retry_delay(self, attempts: int) -> float:
        """Seconds from the end of attempt number ``attempts`` (1-based) to the next one."""
        delay: float = self.retry_interval * 2.0 ** min(max(attempts - 1, 0), 64)
        return min(delay, max(self.max_retry_interval, self.retry_interval))
