"""Routing: the next hops (addresses to connect to, in order) for mail to one domain.

Theory of operation
-------------------
:meth:`Router.next_hops` answers, for a destination domain, the list of
:class:`Hop` to try in order, or raises :class:`RoutingError` whose enhanced status
code (RFC 3463) says whether to retry later (4.x.x) or bounce now (5.x.x).

The decision, in order:

1. Static routes (:class:`~reference_server.outbound.settings.Route`): an exact
   domain, else the longest ``.suffix`` route matching a subdomain, else ``*``.
   Several routes with the same winning pattern are tried in configuration order.
   A route's host is an IP literal (one hop) or a name resolved to its A then AAAA
   records; a route whose host does not resolve is the operator's to fix, so the
   mail waits (4.4.3) rather than bounces.
2. An address literal, ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321
   §4.1.3), is delivered to straight, without DNS.
3. Otherwise the MX records (RFC 5321 §5.1): ordered by preference, equal
   preferences shuffled; each exchange resolved to its A and AAAA records; no MX
   at all means the domain itself is the implicit MX; a lone null MX (RFC 7505)
   means the domain takes no mail.

Every lookup goes through one dnspython asyncio resolver, built on first use from
:class:`~reference_server.outbound.settings.DnsSettings`; nothing here calls the
system's ``getaddrinfo``. A and AAAA lookups run concurrently, and so do the
lookups of the exchanges, so one call takes about two DNS lifetimes at worst.
Work is bounded: at most :data:`MAX_EXCHANGES` exchanges are resolved and at most
:data:`MAX_HOPS` hops returned, duplicate addresses dropped.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import itertools
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver

from reference_server.outbound.settings import RelaySettings, Route, TlsPolicy

__all__ = ["MAX_EXCHANGES", "MAX_HOPS", "SMTP_PORT", "Hop", "Router", "RoutingError"]

log = logging.getLogger(__name__)

SMTP_PORT: Final = 25
MAX_HOPS: Final = 10  # addresses returned, at most
MAX_EXCHANGES: Final = 10  # MX exchanges resolved, at most (in preference order)

# RFC 3463 enhanced status codes used here
BAD_DESTINATION: Final = "5.1.2"  # bad destination system address (§3.2)
NULL_MX: Final = "5.1.10"  # recipient address has null MX (RFC 7505 §4, registered in §6)
ROUTING_FAILED: Final = "5.4.4"  # unable to route (§3.5)
ROUTING_TEMPFAIL: Final = "4.4.3"  # directory server failure (§3.5)


class RoutingError(Exception):
    """No next hop now (status 4.x.x: try later) or ever (5.x.x: bounce)."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text

    @property
    def permanent(self) -> bool:
        """Whether the mail should bounce rather than wait for a retry."""
        return self.status.startswith("5")


@dataclass(frozen=True, kw_only=True)
class Hop:
    """One address to try, with the TLS policy that applies to it.

    Attributes:
        host: the name (or IP literal, without brackets) this hop is known by: for
            logs, the DSN Remote-MTA field, and the default TLS name.
        address: the IP literal to connect to.
        port: the TCP port.
        tls: the STARTTLS policy.
        ca_file: the CA bundle for ``tls: verify``; ``None``: the system's store.
        tls_name: the name the certificate must carry when ``tls`` is VERIFY.
        via: how the hop was found, for logs ("route b.test", "MX 10 mx1.b.test", ...).
    """

    host: str
    address: str
    port: int
    tls: TlsPolicy
    ca_file: Path | None
    tls_name: str
    via: str


class _Outcome(enum.Enum):
    ANSWER = "answer"
    NODATA = "nodata"  # the name exists, without records of the type (RFC 2308 §2.2)
    NXDOMAIN = "nxdomain"  # the name does not exist (RFC 2308 §2.1)
    FAILED = "failed"  # timeout, SERVFAIL, no nameserver reachable: ask again later


@dataclass(frozen=True)
class _Lookup:
    """The result of one DNS question."""

    outcome: _Outcome
    rdatas: tuple[object, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class _Addresses:
    """The A and AAAA records of one name, merged."""

    addresses: tuple[str, ...]
    nxdomain: bool  # the name does not exist (and no address was found anyway)
    failure: str  # why a lookup failed temporarily; "" if none did


def _normalize(domain: str) -> str:
    """Domains compare case-insensitively (RFC 5321 §2.4), with or without the final dot."""
    return domain.lower().removesuffix(".")


def _parse_ip(text: str) -> str | None:
    """The canonical text of an IP address, bracketed or not; ``None`` if it is not one."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def _parse_address_literal(domain: str) -> str:
    """The address of an RFC 5321 §4.1.3 address literal; :class:`RoutingError` if malformed.

    ``[192.0.2.1]`` is IPv4; IPv6 needs the ``IPv6:`` tag. Other tags
    (General-address-literal) name no standardized address type, so they are refused,
    and so is an IPv6 zone ("%eth0"), which names an interface of ours, not an address.
    """
    inner = domain[1:-1]
    try:
        if "%" in inner:
            raise ValueError("zone index")
        if inner[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inner[5:]))
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        raise RoutingError(
            BAD_DESTINATION, f"{domain} is not a valid address literal (RFC 5321 §4.1.3)"
        ) from None


def _dns_name(domain: str) -> dns.name.Name:
    """The absolute DNS name for ``domain``, so no resolver search list ever applies."""
    return dns.name.from_text(domain, origin=dns.name.root)


class Router:
    """Finds the next hops for a destination domain from the static routes and the DNS.

    Args:
        settings: the relay settings (routes, resolver, default TLS policy).
        rng: shuffles MX records of equal preference (seed it in tests).
        mx_port: the port of hops found through MX records, implicit MX and address
            literals; 25 except in tests, which cannot bind it.
    """

    def __init__(
        self,
        settings: RelaySettings,
        *,
        rng: random.Random | None = None,
        mx_port: int = SMTP_PORT,
    ) -> None:
        self.settings = settings
        self.mx_port = mx_port
        self._rng = rng if rng is not None else random.Random()
        self._routes = [(_normalize(route.domain), route) for route in settings.routes]
        self._resolver: dns.asyncresolver.Resolver | None = None

    async def next_hops(self, domain: str) -> list[Hop]:
        """The hops to try in order for mail to ``domain``; never empty.

        Raises:
            RoutingError: no hop; ``permanent`` tells whether to bounce or retry later.
        """
        name = _normalize(domain)
        if not name:
            raise RoutingError(BAD_DESTINATION, "empty destination domain")
        routes = self._match_routes(name)
        if routes:
            hops = await self._route_hops(routes)
        elif name.startswith("["):
            address = _parse_address_literal(name)
            hops = [self._hop(address, address, via="address literal")]
        else:
            hops = await self._mx_hops(name)
        log.debug("next hops for %s: %s", name, ", ".join(f"{h.address} ({h.via})" for h in hops))
        return hops

    # ------------------------------------------------------------------ static routes

    def _match_routes(self, domain: str) -> list[Route]:
        """The routes for ``domain``: exact, else the longest ``.suffix``, else ``*``."""
        exact = [route for pattern, route in self._routes if pattern == domain]
        if exact:
            return exact
        if not domain.startswith("["):  # an address literal has no parent domains
            suffixes = [
                (pattern, route)
                for pattern, route in self._routes
                if pattern.startswith(".") and domain.endswith(pattern)
            ]
            if suffixes:
                longest = max(len(pattern) for pattern, _ in suffixes)
                return [route for pattern, route in suffixes if len(pattern) == longest]
        return [route for pattern, route in self._routes if pattern == "*"]

    async def _route_hops(self, routes: Sequence[Route]) -> list[Hop]:
        """Hops for the routes in order; 4.4.3 if none of them gives an address."""
        per_route = await asyncio.gather(*(self._one_route(route) for route in routes))
        hops = _dedupe(itertools.chain.from_iterable(hops for hops, _ in per_route))
        if not hops:
            reasons = "; ".join(reason for _, reason in per_route)
            raise RoutingError(ROUTING_TEMPFAIL, f"static route unusable: {reasons}")
        return hops

    async def _one_route(self, route: Route) -> tuple[list[Hop], str]:
        """The hops of one route, or none and the reason."""
        tls = route.tls if route.tls is not None else self.settings.tls
        ca_file = route.ca_file if route.ca_file is not None else self.settings.ca_file
        via = f"route {route.domain}"
        ip = _parse_ip(route.host)
        host = ip if ip is not None else _normalize(route.host)
        tls_name = route.tls_name if route.tls_name is not None else host

        def hop(address: str) -> Hop:
            return Hop(
                host=host,
                address=address,
                port=route.port,
                tls=tls,
                ca_file=ca_file,
                tls_name=tls_name,
                via=via,
            )

        if ip is not None:
            return [hop(ip)], ""
        try:
            qname = _dns_name(host)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return [], f"{via}: {route.host!r} is neither an IP address nor a host name"
        found = await self._addresses(qname)
        if not found.addresses:
            why = found.failure or ("no such host" if found.nxdomain else "no A/AAAA records")
            return [], f"{via}: cannot resolve {host}: {why}"
        return [hop(address) for address in found.addresses], ""

    # ------------------------------------------------------------------ MX

    async def _mx_hops(self, domain: str) -> list[Hop]:
        """RFC 5321 §5.1: MX records by preference, else the implicit MX."""
        try:
            qname = _dns_name(domain)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            raise RoutingError(BAD_DESTINATION, f"{domain} is not a valid domain name") from None
        mx = await self._lookup(qname, dns.rdatatype.MX)
        if mx.outcome is _Outcome.NXDOMAIN:
            raise RoutingError(BAD_DESTINATION, f"{domain}: no such domain (NXDOMAIN)")
        if mx.outcome is _Outcome.FAILED:
            raise RoutingError(ROUTING_TEMPFAIL, f"{domain}: MX lookup failed: {mx.reason}")
        if mx.outcome is _Outcome.NODATA:
            return await self._implicit_mx(domain, qname)

        records = [rd for rd in mx.rdatas if isinstance(rd, dns.rdtypes.ANY.MX.MX)]
        # RFC 7505 §3: an exchange of "." (the root) is the null MX, "this domain takes no
        # mail"; there is no falling back to address records. A domain must not mix it with
        # other MX records; if one does, the real ones are used and the "." ignored.
        real = [rd for rd in records if rd.exchange != dns.name.root]
        if not real:
            raise RoutingError(
                NULL_MX, f"{domain} accepts no mail: it publishes a null MX (RFC 7505)"
            )
        exchanges = self._order(real)[:MAX_EXCHANGES]
        results = await asyncio.gather(*(self._addresses(rd.exchange) for rd in exchanges))
        hops: list[Hop] = []
        for rd, found in zip(exchanges, results, strict=True):
            exchange = rd.exchange.to_text(omit_final_dot=True).lower()
            via = f"MX {rd.preference} {exchange}"
            # RFC 5321 §5.1: an exchange that does not resolve is skipped, not fatal
            if not found.addresses:
                log.info("%s: %s does not resolve: %s", domain, via, found.failure or "no address")
            hops.extend(self._hop(exchange, address, via=via) for address in found.addresses)
        hops = _dedupe(hops)
        if hops:
            return hops
        if all(found.nxdomain for found in results):
            raise RoutingError(ROUTING_FAILED, f"{domain}: no MX host exists")
        reasons = sorted({found.failure for found in results if found.failure})
        detail = "; ".join(reasons) if reasons else "no A/AAAA records"
        raise RoutingError(ROUTING_TEMPFAIL, f"{domain}: no MX host resolves: {detail}")

    def _order(self, records: Iterable[dns.rdtypes.ANY.MX.MX]) -> list[dns.rdtypes.ANY.MX.MX]:
        """By preference, lowest first; RFC 5321 §5.1: equal ones SHOULD be in random order.

        Peers are sorted by name before the shuffle, so the order depends on the rng
        alone, not on the order the DNS happened to list them in.
        """
        ordered: list[dns.rdtypes.ANY.MX.MX] = []
        by_preference = sorted(records, key=lambda rd: rd.preference)
        for _, group in itertools.groupby(by_preference, key=lambda rd: rd.preference):
            peers = sorted(group, key=lambda rd: rd.exchange)
            self._rng.shuffle(peers)
            ordered.extend(peers)
        return ordered

    async def _implicit_mx(self, domain: str, qname: dns.name.Name) -> list[Hop]:
        """RFC 5321 §5.1: with no MX, the domain's own address is an MX of preference 0."""
        found = await self._addresses(qname)
        if found.addresses:
            via = f"implicit MX {domain}"
            host = qname.to_text(omit_final_dot=True)  # the A-label form, for TLS
            return _dedupe(self._hop(host, address, via=via) for address in found.addresses)
        if found.failure and not found.nxdomain:
            raise RoutingError(
                ROUTING_TEMPFAIL, f"{domain}: address lookup failed: {found.failure}"
            )
        # RFC 5321 §5.1: "If MX records are present, but none of them are usable, or the
        # implicit MX is unusable, this situation MUST be reported as an error."
        raise RoutingError(ROUTING_FAILED, f"{domain}: no MX and no A/AAAA records")

    def _hop(self, host: str, address: str, *, via: str) -> Hop:
        """A hop found through the DNS or an address literal: port mx_port, relay-wide TLS."""
        return Hop(
            host=host,
            address=address,
            port=self.mx_port,
            tls=self.settings.tls,
            ca_file=self.settings.ca_file,
            tls_name=host,
            via=via,
        )

    # ------------------------------------------------------------------ DNS

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        """The resolver, built on first use so a router with static IP routes reads no config."""
        if self._resolver is None:
            dns_settings = self.settings.dns
            if dns_settings.nameservers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.port = dns_settings.port  # before nameservers: the setter binds it
                resolver.nameservers = list(dns_settings.nameservers)
            else:
                resolver = dns.asyncresolver.Resolver(configure=True)
            resolver.lifetime = dns_settings.timeout
            self._resolver = resolver
        return self._resolver

    async def _lookup(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Lookup:
        """Ask one question; every failure becomes an outcome, never an exception."""
        what = f"{qname.to_text(omit_final_dot=True)} {rdtype.name}"
        try:
            answer = await self._get_resolver().resolve(
                qname, rdtype, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN:
            return _Lookup(_Outcome.NXDOMAIN)
        except dns.exception.Timeout:
            return _Lookup(_Outcome.FAILED, reason=f"{what}: timed out")
        except dns.resolver.NoNameservers:
            reason = f"{what}: no nameserver answered (SERVFAIL or unreachable)"
            return _Lookup(_Outcome.FAILED, reason=reason)
        except dns.exception.DNSException as exc:  # YXDOMAIN, no resolver configuration, ...
            return _Lookup(_Outcome.FAILED, reason=f"{what}: {exc}")
        if answer.rrset is None:
            return _Lookup(_Outcome.NODATA)
        return _Lookup(_Outcome.ANSWER, tuple(answer.rrset))

    async def _addresses(self, qname: dns.name.Name) -> _Addresses:
        """The A then AAAA records of ``qname``, asked concurrently."""
        a, aaaa = await asyncio.gather(
            self._lookup(qname, dns.rdatatype.A), self._lookup(qname, dns.rdatatype.AAAA)
        )
        addresses = [
            rd.address
            for rd in (*a.rdatas, *aaaa.rdatas)
            if isinstance(rd, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA)
        ]
        nxdomain = not addresses and _Outcome.NXDOMAIN in (a.outcome, aaaa.outcome)
        failure = "; ".join(r.reason for r in (a, aaaa) if r.outcome is _Outcome.FAILED)
        return _Addresses(tuple(addresses), nxdomain, failure)


def _dedupe(hops: Iterable[Hop]) -> list[Hop]:
    """The first hop for each address, at most :data:`MAX_HOPS` of them."""
    seen: set[tuple[str, int]] = set()
    kept: list[Hop] = []
    for hop in hops:
        if (hop.address, hop.port) in seen:
            continue
        seen.add((hop.address, hop.port))
        kept.append(hop)
        if len(kept) == MAX_HOPS:
            break
    return kept
