"""Our own sessions as pcap: the synthesised packets read back, and ``run --capture``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import StartServer

from conformance.capture import read_streams
from conformance.cli import main
from conformance.replay.pcapwriter import MSS, Connection, Event, write_pcap
from reference_server.devsetup import write_target


def two_connections() -> list[Connection]:
    big = bytes(range(256)) * 20  # more than one segment
    v4 = Connection(("127.0.0.1", 40000), ("127.0.0.1", 25), opened=100.0)
    v4.events += [
        Event(100.1, "data", "S", b"220 hi\r\n"),
        Event(100.2, "data", "C", b"EHLO x\r\n"),
        Event(100.3, "data", "S", b"250 ok\r\n"),
        Event(100.4, "data", "C", big),
        Event(100.5, "close", "C"),
        Event(100.6, "close", "S"),
    ]
    v6 = Connection(("::1", 40001), ("::1", 143), opened=100.05)
    v6.events += [
        Event(100.15, "data", "S", b"* OK hi\r\n"),
        Event(100.25, "data", "C", b"a STARTTLS\r\n"),
        Event(100.35, "data", "S", b"a OK go\r\n"),
        Event(100.36, "tls"),
        Event(100.7, "close", "S"),
    ]
    return [v4, v6]


def test_written_pcap_reads_back_as_the_same_streams(tmp_path: Path) -> None:
    path = tmp_path / "out.pcap"
    write_pcap(path, two_connections())
    s4, s6 = read_streams(path)
    assert (str(s4.client), str(s4.server)) == ("127.0.0.1:40000", "127.0.0.1:25")
    assert str(s6.server) == "[::1]:143"
    assert not s4.flagged and not s6.flagged and not s4.reset
    assert s4.sent("client") == b"EHLO x\r\n" + bytes(range(256)) * 20
    assert s4.sent("server") == b"220 hi\r\n250 ok\r\n"
    assert s6.sent("client") == b"a STARTTLS\r\n"
    assert (s4.protocol, s6.protocol) == ("smtp", "imap")
    assert s4.first_frame == 1 and s6.first_frame == 4  # frames interleave by time


def test_written_packets_have_valid_checksums(tmp_path: Path) -> None:
    scapy = pytest.importorskip("scapy.all")
    path = tmp_path / "out.pcap"
    write_pcap(path, two_connections())
    packets = scapy.rdpcap(str(path))
    assert max(len(p[scapy.TCP].payload) for p in packets) == MSS
    for packet in packets:
        rebuilt = packet.copy()
        ip = rebuilt[scapy.IP] if scapy.IP in rebuilt else rebuilt[scapy.IPv6]
        if scapy.IP in rebuilt:
            del ip.chksum
        del rebuilt[scapy.TCP].chksum
        fresh = scapy.Ether(bytes(rebuilt))
        assert fresh[scapy.TCP].chksum == packet[scapy.TCP].chksum
        if scapy.IP in packet:
            assert fresh[scapy.IP].chksum == packet[scapy.IP].chksum


SCENARIOS = """\
id: rec.smtp
protocol: smtp
service: submission
title: recorded
steps:
  - send: EHLO rec.example
    expect: {code: 250}
  - starttls: true
  - send: EHLO rec.example
    expect: {code: 250}
  - auth: {mechanism: PLAIN, account: alice}
  - send: QUIT
    expect: {code: 221}
---
id: rec.pop3
protocol: pop3
title: recorded
steps:
  - send: NOOP
    expect: {status: err}
  - send: QUIT
    expect: {status: ok}
"""


def test_run_capture_records_the_cleartext(start_server: StartServer, tmp_path: Path) -> None:
    srv = start_server()
    target = tmp_path / "target.yaml"
    write_target(target, srv.config, srv.thread.bound, srv.passwords, srv.ca_file)
    scenarios = tmp_path / "s.yaml"
    scenarios.write_text(textwrap.dedent(SCENARIOS))
    out = tmp_path / "run.pcap"
    result = CliRunner().invoke(
        main,
        ["run", "--target", str(target), "-j", "1", "--capture", str(out), str(scenarios)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    smtp, pop3 = read_streams(out)
    assert smtp.server.port == srv.addr("submission")[1]
    assert smtp.sent("client") == b"EHLO rec.example\r\nSTARTTLS\r\n"  # nothing after it
    assert smtp.sent("server").startswith(b"220 ") and b"STARTTLS" in smtp.sent("server")
    assert pop3.sent("client") == b"NOOP\r\nQUIT\r\n"
    assert pop3.sent("server").startswith(b"+OK") and b"-ERR" in pop3.sent("server")
    assert not smtp.flagged and not pop3.flagged
    assert srv.passwords["alice"].encode() not in out.read_bytes()
