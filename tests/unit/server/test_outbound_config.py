"""The ``relay:`` and ``queue:`` sections of the server config, and the retry schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_server.config import ConfigError, load_config
from reference_server.outbound.settings import (
    RFC_MIN_RETRY_INTERVAL,
    DnsSettings,
    QueueSettings,
    RelaySettings,
    RelayTimeouts,
    Route,
    TlsPolicy,
)

BASE = "hostname: mail.example.test\ntls: {generate: true}\n"


def write(tmp_path: Path, text: str, name: str = "server.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, BASE + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{path}: ")
    return info.value


# --------------------------------------------------------------------------- defaults


def test_defaults_when_the_sections_are_absent(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.relay == RelaySettings()
    assert config.queue == QueueSettings()
    assert config.queue.retry_interval == RFC_MIN_RETRY_INTERVAL == 1800
    assert config.queue.max_retry_interval == 4 * 3600
    assert config.queue.lifetime == 5 * 86400
    assert config.queue.delay_warning is None
    assert config.queue.test_timing is False
    assert config.relay.tls is TlsPolicy.MAY
    assert config.relay.routes == ()
    assert config.relay.helo_name is None
    assert config.relay.mx_port == 25
    assert config.relay.max_hops == 100
    assert config.relay.ca_file is None
    assert config.relay.dns == DnsSettings(nameservers=(), port=53, timeout=5.0)
    assert config.relay.timeouts == RelayTimeouts(
        connect=30, greeting=300, command=300, data_start=120, data_block=180, data_end=600
    )


def test_empty_sections_take_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + "relay:\nqueue: {}\n"))
    assert config.relay == RelaySettings()
    assert config.queue == QueueSettings()


# --------------------------------------------------------------------------- relay


FULL_RELAY = """\
relay:
  helo_name: out.example.test.
  tls: encrypt
  ca_file: ./ca.pem
  max_hops: 30
  mx_port: 2525
  dns: {nameservers: [127.0.0.1, "::1"], port: 5353, timeout: 1.5}
  timeouts: {connect: 5, greeting: 6, command: 7, data_start: 8, data_block: 9, data_end: 10.5}
  routes:
    b.test: {host: 127.0.0.1, port: 2525, tls: verify, ca_file: ./ca.pem, tls_name: mx.b.test}
    .c.test: "mx.c.test:2526"
    D.Test.: mx.d.test
    e.test: "::1"
    f.test: "192.0.2.1:587"
    g.test: {host: "2001:db8::1", tls: none}
    "*": {host: smarthost.example.test., port: 587, tls: may}
"""


DOCUMENTED = """\
relay:
  helo_name: mail.a.test       # default: hostname
  tls: may                     # none | may | encrypt | verify (Postfix's names)
  ca_file: ./ca.pem            # for verify; default: the system's CA store
  dns:
    nameservers: [127.0.0.1]   # default: /etc/resolv.conf
    port: 53
    timeout: 5                 # seconds per lookup
  routes:                      # static next hops, before any MX lookup
    b.test: 127.0.0.1:2525     # short form host:port
    .b.test: {host: 127.0.0.1, port: 2526}              # subdomains of b.test only
    "*": {host: 192.0.2.1, port: 25, tls: verify, ca_file: ./smarthost-ca.pem,
          tls_name: smtp.provider.test}                 # smart host for all the rest
  timeouts: {connect: 30, greeting: 300, command: 300, data_start: 120,
             data_block: 180, data_end: 600}            # RFC 5321 §4.5.3.2
  max_hops: 100                # Received headers before a message is taken for a loop
  mx_port: 25                  # the port of MX hosts; another one only for tests
queue:
  retry_interval: 1800         # first retry; at least 1800 unless test_timing: true
  max_retry_interval: 14400    # the interval doubles up to this
  lifetime: 432000             # 5 days, then the message is bounced
  delay_warning: 14400         # optional: one "delayed" DSN after this long
  max_deliveries: 20           # concurrent deliveries in all
  max_per_destination: 5       # concurrent deliveries to one domain
  test_timing: false
"""


def test_full_relay_section(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed here")
    relay = load_config(write(tmp_path, BASE + FULL_RELAY)).relay
    assert relay.helo_name == "out.example.test"
    assert relay.tls is TlsPolicy.ENCRYPT
    assert relay.ca_file == ca
    assert relay.max_hops == 30
    assert relay.mx_port == 2525
    assert relay.dns == DnsSettings(nameservers=("127.0.0.1", "::1"), port=5353, timeout=1.5)
    assert relay.timeouts == RelayTimeouts(
        connect=5, greeting=6, command=7, data_start=8, data_block=9, data_end=10.5
    )
    assert relay.routes == (
        Route(
            domain="b.test",
            host="127.0.0.1",
            port=2525,
            tls=TlsPolicy.VERIFY,
            ca_file=ca,
            tls_name="mx.b.test",
        ),
        Route(domain=".c.test", host="mx.c.test", port=2526),  # the short form host:port
        Route(domain="d.test", host="mx.d.test"),  # lower case, no final dot; port 25
        Route(domain="e.test", host="::1"),  # an IPv6 literal is not host:port
        Route(domain="f.test", host="192.0.2.1", port=587),
        Route(domain="g.test", host="2001:db8::1", tls=TlsPolicy.NONE),
        Route(domain="*", host="smarthost.example.test", port=587, tls=TlsPolicy.MAY),
    )
    # a route without tls, ca_file or tls_name takes the section's (routing.py does that)
    assert relay.routes[1].tls is None and relay.routes[1].ca_file is None
    assert relay.routes[1].tls_name is None


def test_the_documented_example(tmp_path: Path) -> None:
    """The relay and queue sections as docs/reference-server.md shows them."""
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "smarthost-ca.pem").write_text("x")
    config = load_config(write(tmp_path, BASE + DOCUMENTED))
    assert config.relay.routes == (
        Route(domain="b.test", host="127.0.0.1", port=2525),
        Route(domain=".b.test", host="127.0.0.1", port=2526),
        Route(
            domain="*",
            host="192.0.2.1",
            port=25,
            tls=TlsPolicy.VERIFY,
            ca_file=tmp_path / "smarthost-ca.pem",
            tls_name="smtp.provider.test",
        ),
    )
    assert config.relay.helo_name == "mail.a.test"
    assert config.relay.timeouts == RelayTimeouts()
    assert config.queue == QueueSettings(delay_warning=14400)


@pytest.mark.parametrize("policy", ["none", "may", "encrypt", "verify"])
def test_every_tls_policy(tmp_path: Path, policy: str) -> None:
    text = f"relay:\n  tls: {policy}\n  routes: {{b.test: {{host: 127.0.0.1, tls: {policy}}}}}\n"
    relay = load_config(write(tmp_path, BASE + text)).relay
    assert relay.tls is TlsPolicy(policy)
    assert relay.routes[0].tls is TlsPolicy(policy)


def test_ca_file_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "ca.pem").write_text("x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    relay = load_config(write(conf, BASE + "relay: {ca_file: ca.pem}\n")).relay
    assert relay.ca_file == conf / "ca.pem"


def test_ca_file_must_exist(tmp_path: Path) -> None:
    error = config_error(tmp_path, "relay: {ca_file: ./nope.pem}\n")
    assert error.key == "relay.ca_file"
    assert error.message == (
        f"no such file '{tmp_path / 'nope.pem'}'; give a PEM file of the CA certificates to trust"
    )


def test_route_ca_file_must_exist(tmp_path: Path) -> None:
    text = "relay:\n  routes:\n    b.test: {host: 127.0.0.1, tls: verify, ca_file: ca/x.pem}\n"
    error = config_error(tmp_path, text)
    assert error.key == "relay.routes.b.test.ca_file"
    assert error.message.startswith(f"no such file '{tmp_path / 'ca' / 'x.pem'}'")


def test_ca_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    error = config_error(tmp_path, "relay: {ca_file: certs}\n")
    assert error.key == "relay.ca_file"


def test_nameservers_must_be_ip_addresses(tmp_path: Path) -> None:
    error = config_error(tmp_path, "relay: {dns: {nameservers: [127.0.0.1, ns.example]}}\n")
    assert error.key == "relay.dns.nameservers"
    assert error.message.startswith("expected a list of IP addresses like [127.0.0.1]")


# --------------------------------------------------------------------------- queue


def test_full_queue_section(tmp_path: Path) -> None:
    text = """\
queue:
  retry_interval: 60
  max_retry_interval: 600
  lifetime: 3600
  delay_warning: 1800
  max_deliveries: 4
  max_per_destination: 2
  test_timing: true
"""
    assert load_config(write(tmp_path, BASE + text)).queue == QueueSettings(
        retry_interval=60,
        max_retry_interval=600,
        lifetime=3600,
        delay_warning=1800,
        max_deliveries=4,
        max_per_destination=2,
        test_timing=True,
    )


def test_test_timing_allows_a_short_retry_interval(tmp_path: Path) -> None:
    text = "queue: {retry_interval: 0.5, test_timing: true}\n"
    queue = load_config(write(tmp_path, BASE + text)).queue
    assert queue.retry_interval == 0.5
    assert queue.max_retry_interval == 4 * 3600


def test_the_rfc_minimum_itself_is_fine(tmp_path: Path) -> None:
    queue = load_config(write(tmp_path, BASE + "queue: {retry_interval: 1800}\n")).queue
    assert queue.retry_interval == 1800


def test_max_retry_interval_defaults_to_at_least_the_retry_interval(tmp_path: Path) -> None:
    queue = load_config(write(tmp_path, BASE + "queue: {retry_interval: 28800}\n")).queue
    assert queue.max_retry_interval == 28800


# --------------------------------------------------------------------------- errors


def routes(entry: str) -> str:
    return f"relay:\n  routes:\n    {entry}\n"


ERRORS = [
    pytest.param(
        "queue: {retry_interval: 60}\n",
        "queue.retry_interval: expected at least 1800 seconds (RFC 5321 §4.5.4.1: the retry "
        "interval SHOULD be at least 30 minutes), got 60; test setups may set "
        "queue.test_timing: true",
        id="retry-below-rfc",
    ),
    pytest.param(
        "queue: {retry_interval: 1799.5, test_timing: false}\n",
        "queue.retry_interval: expected at least 1800 seconds (RFC 5321 §4.5.4.1: the retry "
        "interval SHOULD be at least 30 minutes), got 1799.5; test setups may set "
        "queue.test_timing: true",
        id="retry-just-below-rfc",
    ),
    pytest.param(
        "queue: {retry_interval: 0, test_timing: true}\n",
        "queue.retry_interval: expected a positive number of seconds, got 0",
        id="retry-zero",
    ),
    pytest.param(
        "queue: {retry_interval: 3600, max_retry_interval: 1800}\n",
        "queue.max_retry_interval: expected at least queue.retry_interval (3600), got 1800",
        id="max-retry-below-retry",
    ),
    pytest.param(
        "queue: {delay_warning: 432000}\n",
        "queue.delay_warning: expected less than queue.lifetime (432000); a warning after the "
        "message was given up would never be sent",
        id="delay-warning-equals-lifetime",
    ),
    pytest.param(
        "queue: {lifetime: 3600, delay_warning: 7200}\n",
        "queue.delay_warning: expected less than queue.lifetime (3600); a warning after the "
        "message was given up would never be sent",
        id="delay-warning-after-lifetime",
    ),
    pytest.param(
        "queue: {lifetime: -1}\n",
        "queue.lifetime: expected a positive number of seconds, got -1",
        id="lifetime-negative",
    ),
    pytest.param(
        "queue: {test_timing: yes}\n",
        "queue.test_timing: expected true or false, got 'yes'",
        id="test-timing-yaml-1.1-boolean",
    ),
    pytest.param(
        "queue: {max_deliveries: 0}\n",
        "queue.max_deliveries: expected an integer of at least 1, got 0",
        id="max-deliveries-zero",
    ),
    pytest.param(
        "queue: {max_per_destination: 2.5}\n",
        "queue.max_per_destination: expected an integer of at least 1, got 2.5",
        id="max-per-destination-float",
    ),
    pytest.param(
        "queue: {retry_intervall: 1800}\n",
        "queue.retry_intervall: unknown key; did you mean 'retry_interval'?",
        id="queue-unknown-key",
    ),
    pytest.param(
        "queue: [1800]\n",
        "queue: expected a mapping, got a list",
        id="queue-not-mapping",
    ),
    pytest.param(
        "relay: {timeout: {connect: 5}}\n",
        "relay.timeout: unknown key; did you mean 'timeouts'?",
        id="relay-unknown-key",
    ),
    pytest.param(
        "relay: {colour: blue}\n",
        "relay.colour: unknown key; known keys: helo_name, tls, ca_file, dns, routes, timeouts, "
        "max_hops, mx_port",
        id="relay-unknown-key-lists",
    ),
    pytest.param(
        "relay: {timeouts: {conect: 5}}\n",
        "relay.timeouts.conect: unknown key; did you mean 'connect'?",
        id="timeouts-unknown-key",
    ),
    pytest.param(
        "relay: {dns: {nameserver: [127.0.0.1]}}\n",
        "relay.dns.nameserver: unknown key; did you mean 'nameservers'?",
        id="dns-unknown-key",
    ),
    pytest.param(
        routes("b.test: {hots: 127.0.0.1}"),
        "relay.routes.b.test.hots: unknown key; did you mean 'host'?",
        id="route-unknown-key",
    ),
    pytest.param(
        "relay: {timeouts: {command: 0}}\n",
        "relay.timeouts.command: expected a positive number of seconds, got 0",
        id="timeout-zero",
    ),
    pytest.param(
        "relay: {timeouts: {data_end: '600'}}\n",
        "relay.timeouts.data_end: expected a positive number of seconds, got '600'",
        id="timeout-string",
    ),
    pytest.param(
        "relay: {dns: {port: 0}}\n",
        "relay.dns.port: expected an integer 1-65535, got 0",
        id="dns-port-zero",
    ),
    pytest.param(
        "relay: {mx_port: 0}\n",
        "relay.mx_port: expected an integer 1-65535, got 0",
        id="mx-port-zero",
    ),
    pytest.param(
        "relay: {max_hops: 5}\n",
        "relay.max_hops: expected an integer of at least 10, got 5",
        id="max-hops-low",
    ),
    pytest.param(
        "relay: {helo_name: not a name}\n",
        "relay.helo_name: expected a domain name like mail.example.test, got 'not a name'",
        id="helo-name-invalid",
    ),
    pytest.param(
        "relay: {tls: required}\n",
        "relay.tls: unknown TLS policy 'required'; expected one of none, may, encrypt, verify",
        id="tls-unknown",
    ),
    pytest.param(
        "relay: {tls: true}\n",
        "relay.tls: unknown TLS policy True; expected one of none, may, encrypt, verify",
        id="tls-boolean",
    ),
    pytest.param(
        routes("b.test: {host: 127.0.0.1, tls: dane}"),
        "relay.routes.b.test.tls: unknown TLS policy 'dane'; expected one of none, may, "
        "encrypt, verify",
        id="route-tls-unknown",
    ),
    pytest.param(
        routes("b.test: {host: 'not a host!'}"),
        "relay.routes.b.test.host: expected an IP address or a host name, got 'not a host!'",
        id="route-host-invalid",
    ),
    pytest.param(
        routes("b.test: {host: '[192.0.2.1]'}"),
        "relay.routes.b.test.host: expected an IP address or a host name, got '[192.0.2.1]'",
        id="route-host-bracketed",
    ),
    pytest.param(
        routes("b.test: {host: '*'}"),
        "relay.routes.b.test.host: expected an IP address or a host name, got '*'",
        id="route-host-star",
    ),
    pytest.param(
        routes("b.test: {host: 25}"),
        "relay.routes.b.test.host: expected an IP address or a host name, got 25",
        id="route-host-number",
    ),
    pytest.param(
        routes("b.test: {port: 25}"),
        "relay.routes.b.test.host: missing; give the next hop's address, e.g. host: 127.0.0.1",
        id="route-host-missing",
    ),
    pytest.param(
        routes("b.test:"),
        "relay.routes.b.test.host: missing; give the next hop's address, e.g. host: 127.0.0.1",
        id="route-empty",
    ),
    pytest.param(
        routes("b.test: {host: 127.0.0.1, port: 0}"),
        "relay.routes.b.test.port: expected an integer 1-65535, got 0",
        id="route-port-zero",
    ),
    pytest.param(
        routes("b.test: {host: 127.0.0.1, port: 65536}"),
        "relay.routes.b.test.port: expected an integer 1-65535, got 65536",
        id="route-port-too-big",
    ),
    pytest.param(
        routes("b.test: {host: 127.0.0.1, port: smtp}"),
        "relay.routes.b.test.port: expected an integer 1-65535, got 'smtp'",
        id="route-port-name",
    ),
    pytest.param(
        routes("b.test: 'mx.b.test:smtp'"),
        "relay.routes.b.test.port: expected an integer 1-65535, got 'smtp'",
        id="short-form-port-name",
    ),
    pytest.param(
        routes("b.test: 'mx.b.test:99999'"),
        "relay.routes.b.test.port: expected an integer 1-65535, got 99999",
        id="short-form-port-too-big",
    ),
    pytest.param(
        routes("b.test: 'mx.b.test:'"),
        "relay.routes.b.test.port: expected an integer 1-65535, got ''",
        id="short-form-port-empty",
    ),
    pytest.param(
        routes("b.test: 'bad host:25'"),
        "relay.routes.b.test.host: expected an IP address or a host name, got 'bad host'",
        id="short-form-host-invalid",
    ),
    pytest.param(
        routes("b.test: '[::1]:2525'"),
        "relay.routes.b.test.host: expected an IP address or a host name, got '[::1]:2525'",
        id="short-form-bracketed-ipv6",
    ),
    pytest.param(
        routes("b.test: 25"),
        "relay.routes.b.test: expected a mapping, got 25",
        id="route-number",
    ),
    pytest.param(
        routes("b.test: {host: 127.0.0.1, tls_name: 'a b'}"),
        "relay.routes.b.test.tls_name: expected an IP address or a host name, got 'a b'",
        id="route-tls-name-invalid",
    ),
    pytest.param(
        routes("'*.b.test': 127.0.0.1"),
        "relay.routes: route keys are a domain (b.test), a parent domain (.b.test) or '*', "
        "got '*.b.test'",
        id="route-key-wildcard",
    ),
    pytest.param(
        routes("25: 127.0.0.1"),
        "relay.routes: keys must be strings, got 25",
        id="route-key-number",
    ),
    pytest.param(
        "relay: {routes: [b.test]}\n",
        "relay.routes: expected a mapping of domain to hop, got a list",
        id="routes-list",
    ),
    pytest.param(
        "relay: {dns: [127.0.0.1]}\n",
        "relay.dns: expected a mapping, got a list",
        id="dns-list",
    ),
    pytest.param(
        "relay: {dns: {nameservers: 127.0.0.1}}\n",
        "relay.dns.nameservers: expected a list of IP addresses like [127.0.0.1], got '127.0.0.1'",
        id="nameservers-not-list",
    ),
    pytest.param(
        "relay: smarthost\n",
        "relay: expected a mapping, got 'smarthost'",
        id="relay-not-mapping",
    ),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_errors_are_one_line_with_file_and_key_path(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, BASE + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- retry schedule


def test_retry_delay_doubles_up_to_the_cap() -> None:
    queue = QueueSettings(retry_interval=1800, max_retry_interval=4 * 3600)
    assert [queue.retry_delay(n) for n in range(1, 7)] == [
        1800,
        3600,
        7200,
        14400,
        14400,
        14400,
    ]


def test_retry_delay_edges() -> None:
    queue = QueueSettings(retry_interval=60, max_retry_interval=1000, test_timing=True)
    assert queue.retry_delay(0) == 60  # before any attempt: the first interval
    assert queue.retry_delay(1) == 60
    assert queue.retry_delay(5) == 960
    assert queue.retry_delay(6) == 1000  # not 1920: capped
    assert queue.retry_delay(10**9) == 1000  # no overflow however many attempts


def test_retry_delay_with_a_cap_below_the_interval_keeps_the_interval() -> None:
    # load_config refuses this; a QueueSettings built in code still behaves
    queue = QueueSettings(retry_interval=3600, max_retry_interval=60)
    assert queue.retry_delay(1) == queue.retry_delay(5) == 3600


def test_retry_delay_of_the_defaults() -> None:
    queue = QueueSettings()
    assert queue.retry_delay(1) == RFC_MIN_RETRY_INTERVAL
    assert queue.retry_delay(100) == queue.max_retry_interval


# --------------------------------------------------------------------------- known bugs


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("b.test: {host: .mx.b.test}", "relay.routes.b.test.host"),
        ("b.test: '.mx.b.test:2525'", "relay.routes.b.test.host"),
        ("b.test: {host: 127.0.0.1, tls_name: .mx.b.test}", "relay.routes.b.test.tls_name"),
    ],
    ids=["long-form", "short-form", "tls-name"],
)
def test_host_with_a_leading_dot_is_refused(tmp_path: Path, entry: str, key: str) -> None:
    path = write(tmp_path, BASE + routes(entry))
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert exc.key == key
    else:
        raise AssertionError(f"accepted: {config.relay.routes}")


def test_short_form_port_with_a_non_ascii_digit(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + routes("b.test: 'mx.b.test:²'"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "relay.routes.b.test.port"
