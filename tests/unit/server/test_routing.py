"""Router: static routes, address literals and MX lookups, against a FakeDns on loopback.

Every lookup goes over real UDP (TCP when truncated) to a FakeDns on 127.0.0.1; an
autouse fixture fails any test that would read the system's resolver configuration or
resolve a name through getaddrinfo.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.resolver
import pytest
from dnsserver import FakeDns, Records

from reference_server.outbound.routing import MAX_EXCHANGES, MAX_HOPS, Hop, Router, RoutingError
from reference_server.outbound.settings import DnsSettings, RelaySettings, Route, TlsPolicy

MX_PORT = 2525  # stands in for 25, which tests cannot bind


@pytest.fixture(autouse=True)
def no_system_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail loudly if anything reaches for the machine's resolver instead of a FakeDns."""

    def refuse_resolv_conf(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the system's resolver configuration was read")

    real_getaddrinfo = socket.getaddrinfo

    def numeric_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None:
            text = host.decode() if isinstance(host, bytes) else str(host)
            try:
                ipaddress.ip_address(text.split("%")[0])
            except ValueError:
                raise AssertionError(f"getaddrinfo asked to resolve {text!r}") from None
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(dns.resolver.BaseResolver, "read_resolv_conf", refuse_resolv_conf)
    monkeypatch.setattr(socket, "getaddrinfo", numeric_getaddrinfo)
    yield


def relay_settings(
    server: FakeDns,
    *routes: Route,
    timeout: float = 2.0,
    tls: TlsPolicy = TlsPolicy.MAY,
    ca_file: Path | None = None,
) -> RelaySettings:
    dns_settings = DnsSettings(nameservers=("127.0.0.1",), port=server.port, timeout=timeout)
    return RelaySettings(dns=dns_settings, routes=routes, tls=tls, ca_file=ca_file)


def next_hops(settings: RelaySettings, domain: str, *, seed: int = 0) -> list[Hop]:
    router = Router(settings, rng=random.Random(seed), mx_port=MX_PORT)
    return asyncio.run(router.next_hops(domain))


def routing_error(settings: RelaySettings, domain: str) -> RoutingError:
    with pytest.raises(RoutingError) as info:
        next_hops(settings, domain)
    return info.value


def addresses(hops: list[Hop]) -> list[str]:
    return [hop.address for hop in hops]


# --------------------------------------------------------------------------- RoutingError


def test_routing_error_permanent_follows_the_status_class() -> None:
    bounce = RoutingError("5.1.2", "no such domain")
    later = RoutingError("4.4.3", "DNS timed out")
    assert bounce.permanent and not later.permanent
    assert (bounce.status, bounce.text) == ("5.1.2", "no such domain")
    assert str(later) == "4.4.3 DNS timed out"


# --------------------------------------------------------------------------- static routes


def test_exact_route_beats_suffix_which_beats_star() -> None:
    routes = (
        Route(domain="*", host="192.0.2.1"),
        Route(domain=".b.test", host="192.0.2.2"),
        Route(domain=".x.b.test", host="192.0.2.3"),
        Route(domain="x.b.test", host="192.0.2.4"),
    )
    with FakeDns({}) as server:
        settings = relay_settings(server, *routes)
        assert addresses(next_hops(settings, "x.b.test")) == ["192.0.2.4"]  # exact
        assert addresses(next_hops(settings, "y.x.b.test")) == ["192.0.2.3"]  # longest suffix
        assert addresses(next_hops(settings, "y.b.test")) == ["192.0.2.2"]
        assert addresses(next_hops(settings, "b.test")) == ["192.0.2.1"]  # ".b.test" is not b.test
        assert addresses(next_hops(settings, "c.test")) == ["192.0.2.1"]
        hop = next_hops(settings, "y.b.test")[0]
        assert hop.via == "route .b.test"
    assert server.queries == []  # IP-literal routes need no DNS


def test_route_matching_ignores_case_and_the_final_dot() -> None:
    with FakeDns({}) as server:
        settings = relay_settings(server, Route(domain="B.Test.", host="192.0.2.9"))
        assert addresses(next_hops(settings, "b.TEST.")) == ["192.0.2.9"]
        assert addresses(next_hops(settings, "b.test")) == ["192.0.2.9"]


def test_ip_literal_route_carries_its_own_port_and_tls() -> None:
    ca = Path("/etc/relay-ca.pem")
    route = Route(
        domain="b.test",
        host="192.0.2.7",
        port=587,
        tls=TlsPolicy.VERIFY,
        ca_file=ca,
        tls_name="relay.example",
    )
    with FakeDns({}) as server:
        hops = next_hops(relay_settings(server, route), "b.test")
    assert hops == [
        Hop(
            host="192.0.2.7",
            address="192.0.2.7",
            port=587,
            tls=TlsPolicy.VERIFY,
            ca_file=ca,
            tls_name="relay.example",
            via="route b.test",
        )
    ]


@pytest.mark.parametrize(
    ("host", "address"),
    [("2001:DB8::1", "2001:db8::1"), ("[IPv6:::1]", "::1"), ("[192.0.2.8]", "192.0.2.8")],
)
def test_route_defaults_come_from_the_relay_settings(host: str, address: str) -> None:
    ca = Path("/etc/default-ca.pem")
    with FakeDns({}) as server:
        settings = relay_settings(
            server, Route(domain="*", host=host), tls=TlsPolicy.ENCRYPT, ca_file=ca
        )
        (hop,) = next_hops(settings, "c.test")
    assert (hop.address, hop.host, hop.tls_name) == (address, address, address)
    assert (hop.port, hop.tls, hop.ca_file) == (25, TlsPolicy.ENCRYPT, ca)


def test_named_route_is_resolved_through_the_configured_resolver() -> None:
    records: Records = {"Relay.B.Test": {"A": ["127.0.0.5"], "AAAA": ["::1"]}}
    with FakeDns(records) as server:
        settings = relay_settings(server, Route(domain="b.test", host="relay.b.test.", port=2526))
        hops = next_hops(settings, "b.test")
    assert addresses(hops) == ["127.0.0.5", "::1"]  # A before AAAA
    assert {(hop.host, hop.tls_name, hop.port) for hop in hops} == {
        ("relay.b.test", "relay.b.test", 2526)
    }
    assert sorted(server.queries) == [("relay.b.test", "A"), ("relay.b.test", "AAAA")]


@pytest.mark.parametrize("trouble", ["nxdomain", "nodata", "servfail"])
def test_unresolvable_named_route_is_a_temporary_error(trouble: str) -> None:
    records: Records = {"relay.b.test": {"TXT": ['"no address"']}} if trouble == "nodata" else {}
    servfail = ["relay.b.test"] if trouble == "servfail" else []
    with FakeDns(records, servfail=servfail) as server:
        settings = relay_settings(server, Route(domain="b.test", host="relay.b.test"))
        error = routing_error(settings, "b.test")
    assert error.status == "4.4.3" and not error.permanent
    assert "relay.b.test" in error.text
    assert ("b.test", "MX") not in server.queries  # a route is never second-guessed by MX


def test_several_routes_for_one_domain_are_tried_in_order() -> None:
    routes = (
        Route(domain="b.test", host="gone.b.test"),
        Route(domain="b.test", host="192.0.2.20"),
        Route(domain="b.test", host="relay.b.test"),
    )
    with FakeDns({"relay.b.test": {"A": "127.0.0.21"}}) as server:
        hops = next_hops(relay_settings(server, *routes), "b.test")
    assert addresses(hops) == ["192.0.2.20", "127.0.0.21"]  # the broken one skipped


# --------------------------------------------------------------------------- address literals


@pytest.mark.parametrize(
    ("domain", "address"),
    [
        ("[127.0.0.1]", "127.0.0.1"),
        ("[IPv6:::1]", "::1"),
        ("[ipv6:2001:DB8::1]", "2001:db8::1"),
    ],
)
def test_address_literal_goes_straight_to_the_address(domain: str, address: str) -> None:
    with FakeDns({}) as server:
        (hop,) = next_hops(relay_settings(server), domain)
    assert (hop.address, hop.host, hop.port, hop.via) == (
        address,
        address,
        MX_PORT,
        "address literal",
    )
    assert server.queries == []


@pytest.mark.parametrize(
    "domain", ["[300.1.2.3]", "[::1]", "[x-tag:foo]", "[]", "[IPv6:1.2.3.4]", "[IPv6:fe80::1%lo]"]
)
def test_malformed_address_literal_bounces(domain: str) -> None:
    with FakeDns({}) as server:
        error = routing_error(relay_settings(server), domain)
    assert error.status == "5.1.2" and error.permanent
    assert server.queries == []


def test_address_literal_takes_a_matching_route() -> None:
    with FakeDns({}) as server:
        settings = relay_settings(server, Route(domain="*", host="192.0.2.30"))
        assert addresses(next_hops(settings, "[127.0.0.1]")) == ["192.0.2.30"]


# --------------------------------------------------------------------------- MX


def test_mx_hops_follow_preference_order() -> None:
    records: Records = {
        "b.test": {"MX": ["20 mx2.b.test.", "10 MX1.b.test.", "30 mx3.b.test."]},
        "mx1.b.test": {"A": ["127.0.0.11"], "AAAA": ["::1"]},
        "mx2.b.test": {"A": ["127.0.0.12"]},
        "mx3.b.test": {"AAAA": ["::3"]},
    }
    with FakeDns(records) as server:
        hops = next_hops(relay_settings(server, tls=TlsPolicy.VERIFY), "B.Test.")
    assert addresses(hops) == ["127.0.0.11", "::1", "127.0.0.12", "::3"]
    first = hops[0]
    assert (first.host, first.tls_name, first.via) == (
        "mx1.b.test",
        "mx1.b.test",
        "MX 10 mx1.b.test",
    )
    assert {(hop.port, hop.tls) for hop in hops} == {(MX_PORT, TlsPolicy.VERIFY)}
    assert ("b.test", "MX") in server.queries
    assert {("mx1.b.test", "A"), ("mx2.b.test", "AAAA"), ("mx3.b.test", "A")} <= set(server.queries)


def test_equal_preferences_are_shuffled_by_the_rng() -> None:
    records: Records = {
        "b.test": {"MX": ["10 a.b.test.", "10 b.b.test.", "5 first.b.test.", "20 last.b.test."]},
        "first.b.test": {"A": "127.0.0.1"},
        "a.b.test": {"A": "127.0.0.2"},
        "b.b.test": {"A": "127.0.0.3"},
        "last.b.test": {"A": "127.0.0.4"},
    }
    orders = set()
    with FakeDns(records) as server:
        settings = relay_settings(server)
        for seed in range(12):
            order = tuple(addresses(next_hops(settings, "b.test", seed=seed)))
            assert order == tuple(addresses(next_hops(settings, "b.test", seed=seed)))
            orders.add(order)
    assert orders == {
        ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"),
        ("127.0.0.1", "127.0.0.3", "127.0.0.2", "127.0.0.4"),
    }


def test_no_mx_means_the_domain_is_its_own_implicit_mx() -> None:
    records: Records = {"b.test": {"A": ["127.0.0.40"], "AAAA": ["::40"]}}
    with FakeDns(records) as server:
        hops = next_hops(relay_settings(server), "b.test")
    assert addresses(hops) == ["127.0.0.40", "::40"]
    assert {(hop.host, hop.tls_name, hop.via, hop.port) for hop in hops} == {
        ("b.test", "b.test", "implicit MX b.test", MX_PORT)
    }
    assert server.queries[0] == ("b.test", "MX")
    assert sorted(server.queries[1:]) == [("b.test", "A"), ("b.test", "AAAA")]


def test_aliases_are_followed() -> None:
    records: Records = {
        "b.test": {"CNAME": "real.b.test."},
        "real.b.test": {"MX": "10 mx.b.test."},
        "mx.b.test": {"CNAME": "host.b.test."},
        "host.b.test": {"A": "127.0.0.42"},
        "c.test": {"CNAME": "host.b.test."},
    }
    with FakeDns(records) as server:
        settings = relay_settings(server)
        (hop,) = next_hops(settings, "b.test")
        assert (hop.address, hop.host) == ("127.0.0.42", "mx.b.test")
        (hop,) = next_hops(settings, "c.test")  # no MX at the end of the alias: implicit MX
        assert (hop.address, hop.host, hop.via) == ("127.0.0.42", "c.test", "implicit MX c.test")


def test_no_mx_and_no_address_bounces_5_4_4() -> None:
    with FakeDns({"b.test": {"TXT": ['"mail? no"']}}) as server:
        error = routing_error(relay_settings(server), "b.test")
    assert error.status == "5.4.4" and error.permanent


def test_implicit_mx_uses_what_resolves_and_waits_when_nothing_does() -> None:
    records: Records = {"b.test": {"AAAA": ["::41"]}, "c.test": {"TXT": ['"x"']}}
    servfail = [("b.test", "A"), ("c.test", "A")]
    with FakeDns(records, servfail=servfail) as server:
        settings = relay_settings(server)
        assert addresses(next_hops(settings, "b.test")) == ["::41"]
        error = routing_error(settings, "c.test")
    assert error.status == "4.4.3" and not error.permanent


def test_nxdomain_bounces_5_1_2() -> None:
    with FakeDns({"b.test": {"A": "127.0.0.1"}}) as server:
        error = routing_error(relay_settings(server), "nowhere.b.test")
    assert error.status == "5.1.2" and error.permanent
    assert server.queries == [("nowhere.b.test", "MX")]


@pytest.mark.parametrize("domain", ["", ".", "a..b.test", "x" * 64 + ".test"])
def test_invalid_domain_name_bounces_5_1_2(domain: str) -> None:
    with FakeDns({}) as server:
        error = routing_error(relay_settings(server), domain)
    assert error.status == "5.1.2"
    assert server.queries == []


def test_lone_null_mx_bounces_5_1_10_without_falling_back_to_a() -> None:
    records: Records = {"b.test": {"MX": ["0 ."], "A": ["127.0.0.1"]}}
    with FakeDns(records) as server:
        error = routing_error(relay_settings(server), "b.test")
    assert error.status == "5.1.10" and error.permanent
    assert "accepts no mail" in error.text
    assert server.queries == [("b.test", "MX")]  # RFC 7505: no implicit MX


def test_null_mx_mixed_with_real_ones_is_ignored() -> None:
    records: Records = {
        "b.test": {"MX": ["0 .", "10 mx.b.test."]},
        "mx.b.test": {"A": ["127.0.0.50"]},
    }
    with FakeDns(records) as server:
        hops = next_hops(relay_settings(server), "b.test")
    assert addresses(hops) == ["127.0.0.50"]


def test_servfail_is_temporary_4_4_3() -> None:
    with FakeDns({"b.test": {"MX": "10 mx.b.test."}}, servfail=["b.test"]) as server:
        error = routing_error(relay_settings(server), "b.test")
    assert error.status == "4.4.3" and not error.permanent
    assert server.queries == [("b.test", "MX")]


def test_unanswered_query_times_out_as_temporary_4_4_3() -> None:
    with FakeDns({"b.test": {"MX": "10 mx.b.test."}}, silent=["b.test"]) as server:
        started = time.monotonic()
        error = routing_error(relay_settings(server, timeout=0.3), "b.test")
        elapsed = time.monotonic() - started
    assert error.status == "4.4.3" and not error.permanent
    assert "timed out" in error.text
    assert elapsed < 2.0
    assert server.queries and set(server.queries) == {("b.test", "MX")}


def test_exchange_that_does_not_resolve_is_skipped() -> None:
    records: Records = {
        "b.test": {"MX": ["10 gone.b.test.", "20 slow.b.test.", "30 mx.b.test."]},
        "slow.b.test": {"A": "127.0.0.1"},
        "mx.b.test": {"A": "127.0.0.60"},
    }
    with FakeDns(records, silent=["slow.b.test"]) as server:
        hops = next_hops(relay_settings(server, timeout=0.3), "b.test")
    assert [(hop.address, hop.via) for hop in hops] == [("127.0.0.60", "MX 30 mx.b.test")]


@pytest.mark.parametrize(
    ("exchange_trouble", "status"),
    [("nxdomain", "5.4.4"), ("servfail", "4.4.3"), ("nodata", "4.4.3")],
)
def test_no_exchange_resolving(exchange_trouble: str, status: str) -> None:
    records: Records = {"b.test": {"MX": ["10 mx1.b.test.", "20 mx2.b.test."]}}
    if exchange_trouble == "nodata":
        records = {**records, "mx1.b.test": {"TXT": '"x"'}, "mx2.b.test": {"TXT": '"x"'}}
    servfail = ["mx1.b.test", "mx2.b.test"] if exchange_trouble == "servfail" else []
    with FakeDns(records, servfail=servfail) as server:
        error = routing_error(relay_settings(server), "b.test")
    assert error.status == status


def test_duplicate_addresses_are_dropped() -> None:
    records: Records = {
        "b.test": {"MX": ["10 mx1.b.test.", "20 mx2.b.test."]},
        "mx1.b.test": {"A": "127.0.0.70"},
        "mx2.b.test": {"A": ["127.0.0.70", "127.0.0.71"]},
    }
    with FakeDns(records) as server:
        hops = next_hops(relay_settings(server), "b.test")
    assert [(hop.address, hop.host) for hop in hops] == [
        ("127.0.0.70", "mx1.b.test"),
        ("127.0.0.71", "mx2.b.test"),
    ]


def test_work_is_bounded() -> None:
    exchanges = [f"mx{i:02d}.b.test" for i in range(MAX_EXCHANGES + 5)]
    records: Records = {"b.test": {"MX": [f"{i} {name}." for i, name in enumerate(exchanges)]}}
    for i, name in enumerate(exchanges):
        records = {**records, name: {"A": [f"127.0.{i}.{j}" for j in range(1, 4)]}}
    with FakeDns(records) as server:
        hops = next_hops(relay_settings(server), "b.test")
    assert len(hops) == MAX_HOPS
    assert addresses(hops)[:4] == ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.1.1"]
    asked = {name for name, rdtype in server.queries if rdtype == "A"}
    assert asked == set(exchanges[:MAX_EXCHANGES])


def test_many_addresses_arrive_over_tcp_and_are_capped() -> None:
    records: Records = {"b.test": {"A": [f"10.0.{i // 200}.{i % 200 + 1}" for i in range(150)]}}
    with FakeDns(records) as server:
        hops = next_hops(relay_settings(server), "b.test")
    assert len(hops) == MAX_HOPS
    assert server.queries.count(("b.test", "A")) == 2  # truncated over UDP, then TCP


# --------------------------------------------------------------------------- resolver setup


def test_without_nameservers_the_system_configuration_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[bool] = []
    real_resolver = dns.asyncresolver.Resolver
    with FakeDns({"b.test": {"A": "127.0.0.80"}}) as server:

        def fake_resolver(configure: bool = True) -> dns.asyncresolver.Resolver:
            made.append(configure)
            resolver = real_resolver(configure=False)  # stands in for /etc/resolv.conf
            resolver.port = server.port
            resolver.nameservers = ["127.0.0.1"]
            return resolver

        monkeypatch.setattr(dns.asyncresolver, "Resolver", fake_resolver)
        router = Router(RelaySettings(), mx_port=MX_PORT)
        hops = asyncio.run(router.next_hops("b.test"))
        asyncio.run(router.next_hops("b.test"))
    assert addresses(hops) == ["127.0.0.80"]
    assert made == [True]  # built once, on first use


def test_static_ip_routes_build_no_resolver() -> None:
    settings = RelaySettings(routes=(Route(domain="*", host="192.0.2.90"),))
    router = Router(settings)
    assert addresses(asyncio.run(router.next_hops("c.test"))) == ["192.0.2.90"]
