"""The sample captures (tests/data/captures, made by make_captures.py) convert, and replay
against a fresh reference server with no differences.

Each run of the script is captured twice: by the harness itself (``run --capture``:
``NAME.pcap``) and by the kernel (scapy sniffing ``lo``: ``NAME-lo.pcapng``, every
frame twice, as an AF_PACKET socket on loopback sees each packet leave and arrive).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import RunningServer, StartServer
from scapy.utils import RawPcapNgReader

from conformance.capture import TcpStream, read_streams
from conformance.cli import main
from conformance.scenario.loader import load_paths
from reference_server.devsetup import write_target

CAPTURES = Path(__file__).resolve().parents[1] / "data" / "captures"
SERVICES: dict[str, dict[str, str]] = json.loads((CAPTURES / "services.json").read_text())
SAMPLES = ("smtp.pcap", "pop3.pcap", "imap.pcap")
SNIFFED = ("smtp-lo.pcapng", "pop3-lo.pcapng", "imap-lo.pcapng")
# the kernel also sees the run's two reachability probes (connect, close; the greeting)
SESSIONS = {**dict.fromkeys(SAMPLES, 3), **dict.fromkeys(SNIFFED, 5)}


def service_args(sample: str) -> list[str]:
    return [a for port, svc in SERVICES[sample].items() for a in ("--service", f"{port}={svc}")]


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def target(start_server: StartServer, tmp_path: Path) -> Iterator[Path]:
    """A fresh reference server that takes cleartext logins on pop3 and imap, as at capture."""
    srv: RunningServer = start_server(pop3={"plaintext_auth": True}, imap={"plaintext_auth": True})
    path = tmp_path / "target.yaml"
    write_target(path, srv.config, srv.thread.bound, srv.passwords, srv.ca_file)
    yield path


def test_samples_are_small_and_readable() -> None:
    for sample in SAMPLES:
        path = CAPTURES / sample
        assert path.stat().st_size < 50_000
        streams = read_streams(path)
        assert len(streams) == 3
        assert not any(s.flagged for s in streams), sample


# the scenarios' sessions, in order; the probes (any order) are of the services they use
SNIFFED_PROTOCOLS = {
    "smtp-lo.pcapng": (["smtp", "smtp", "smtp"], ["smtp", "smtp"]),
    "pop3-lo.pcapng": (["smtp", "pop3", "pop3"], ["pop3", "smtp"]),
    "imap-lo.pcapng": (["smtp", "imap", "imap"], ["imap", "smtp"]),
}


@pytest.mark.parametrize("sample", SNIFFED)
def test_sniffed_samples_read_whole(sample: str) -> None:
    path = CAPTURES / sample
    assert path.stat().st_size < 60_000
    streams = read_streams(path)
    assert len(streams) == 5
    for stream in streams:
        assert not stream.flagged and not stream.gaps, stream
        assert not stream.cut_at_start and not stream.cut_at_end  # SYN and FIN/RST seen
    sessions = [s for s in streams if s.sent("client")]
    probes = [s for s in streams if not s.sent("client")]
    expected_sessions, expected_probes = SNIFFED_PROTOCOLS[sample]
    assert [s.protocol for s in sessions] == expected_sessions
    assert sorted(str(s.protocol) for s in probes) == expected_probes
    for probe in probes:  # connected, closed (a RST if the greeting came before the close)
        greeting = probe.sent("server")
        assert greeting.endswith(b"\r\n") and greeting[:4] in (b"220 ", b"+OK ", b"* OK")
    upgraded = sessions[-1]
    assert not upgraded.tls  # STARTTLS: cleartext first, then the kernel saw the TLS records
    assert b"\x16\x03" in upgraded.sent("client") and b"\x16\x03" in upgraded.sent("server")
    # an AF_PACKET socket on lo sees each packet leave and arrive: every frame twice,
    # not always next to each other; the reassembler drops the copies as retransmissions
    with RawPcapNgReader(str(path)) as reader:
        frames = Counter(data for data, _ in reader)
    assert set(frames.values()) == {2}


@pytest.mark.parametrize("name", ["smtp", "pop3", "imap"])
def test_sniffed_and_written_captures_of_one_run_agree(name: str) -> None:
    """Our writer and the kernel recorded the same run: each side sent the same bytes.

    Only per side: our writer puts a received answer where the harness read it, the
    kernel where it arrived (a pipelined MAIL's 250 can come before the RCPT is sent).
    """
    written = read_streams(CAPTURES / f"{name}.pcap")
    sniffed: dict[tuple[str, str], TcpStream] = {
        (str(s.client), str(s.server)): s for s in read_streams(CAPTURES / f"{name}-lo.pcapng")
    }
    for stream in written:
        other = sniffed[(str(stream.client), str(stream.server))]
        for side in ("client", "server"):
            ours, kernel = stream.sent(side), other.sent(side)
            assert ours, (stream.index, side)
            # all of it; after STARTTLS the kernel's capture goes on with the TLS records
            assert kernel[: len(ours)] == ours, (stream.index, side)
            assert len(kernel) == len(ours) or kernel[len(ours) :].startswith(b"\x16\x03")


@pytest.mark.parametrize("sample", SAMPLES + SNIFFED)
@pytest.mark.parametrize("match", ["codes", "text"])
def test_sample_replays_the_same(sample: str, match: str, target: Path, tmp_path: Path) -> None:
    n = SESSIONS[sample]
    out = tmp_path / "result.json"
    result = cli(
        "replay",
        str(CAPTURES / sample),
        "--target",
        str(target),
        "--match",
        match,
        "--json",
        str(out),
        *service_args(sample),
    )
    assert result.exit_code == 0, result.output
    assert f"{n} of {n} session(s) answered as captured" in result.output
    data = json.loads(out.read_text())
    assert [r["differences"] for r in data["results"]] == [[]] * n


def captured_passwords(sample: str) -> list[str]:
    """The cleartext passwords the capture holds (POP3 PASS, IMAP LOGIN)."""
    raw = (CAPTURES / sample).read_bytes()
    found = re.findall(rb"PASS ([^\s]+)\r\n", raw) + re.findall(
        rb' LOGIN "?alice"? "?([^"\r\n]+)"?\r\n', raw
    )
    return sorted({f.decode() for f in found} - {"not-the-password"})


@pytest.mark.parametrize("sample", ["pop3.pcap", "imap.pcap", "pop3-lo.pcapng", "imap-lo.pcapng"])
def test_pcap2yaml_writes_no_captured_password(sample: str, tmp_path: Path) -> None:
    secrets = captured_passwords(sample)
    assert secrets, "the sample should hold a cleartext login"
    out = tmp_path / "out"
    result = cli(
        "pcap2yaml",
        str(CAPTURES / sample),
        "-o",
        str(out),
        "--match",
        "exact",
        *service_args(sample),
    )
    assert result.exit_code == 0, result.output
    for path in out.iterdir():
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, path
    assert not any(s in result.output for s in secrets)
    assert len(load_paths([out])) == SESSIONS[sample]  # every file loads


@pytest.mark.parametrize("sample", ["imap.pcap", "imap-lo.pcapng"])
def test_replay_transcript_holds_no_captured_password(
    sample: str, target: Path, tmp_path: Path
) -> None:
    secrets = captured_passwords(sample)
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    result = cli(
        "replay",
        str(CAPTURES / sample),
        "--target",
        str(target),
        "--json",
        str(out),
        "--junit",
        str(junit),
        "-v",
        *service_args(sample),
    )
    assert result.exit_code == 0, result.output
    for text in (out.read_text(), junit.read_text(), result.output):
        assert not any(s in text for s in secrets)
    assert "<testsuite" in junit.read_text()


def test_smtp_sample_scenarios(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli(
        "pcap2yaml", str(CAPTURES / "smtp.pcap"), "-o", str(out), *service_args("smtp.pcap")
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "smtp-session-0-message-1.eml",
        "smtp-session-0.yaml",
        "smtp-session-1-message-1.eml",
        "smtp-session-1.yaml",
        "smtp-session-2.yaml",
    ]
    message = (out / "smtp-session-0-message-1.eml").read_bytes()
    assert b"\r\n.a line that starts with a dot" in message  # dot-unstuffed
    assert not message.endswith(b".\r\n")
    submission = (out / "smtp-session-2.yaml").read_text()
    assert "service: submission" in submission
    assert "starttls: true" in submission and "re-templated" in submission
    assert "mechanism: PLAIN" in submission


def test_replay_names_the_differing_exchanges(target: Path, tmp_path: Path) -> None:
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    # as bob, whose INBOX lacks the message delivered to alice: FETCH 1:* answers one message
    result = cli(
        "replay",
        str(CAPTURES / "imap.pcap"),
        "--target",
        str(target),
        "--match",
        "text",
        "--account",
        "bob",
        "--json",
        str(out),
        "--junit",
        str(junit),
        *service_args("imap.pcap"),
    )
    assert result.exit_code == 1, result.output
    assert re.search(r"session 1 \(.*first frame \d+\): \d+ difference\(s\)", result.output)
    assert re.search(
        r"  frame \d+: sent 'a4 FETCH 1:\* \(FLAGS BODY.PEEK\[\]\)'  expected ", result.output
    )
    assert "2 of 3 session(s) answered as captured" in result.output
    data = json.loads(out.read_text())
    diffs = data["results"][1]["differences"]
    assert diffs and all(d["frames"] for d in diffs)
    assert data["results"][1]["status"] == "failed"
    assert "<failure" in junit.read_text()


def test_replay_exit_codes_for_bad_input_and_unreachable(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a capture at all")
    target = tmp_path / "t.yaml"
    target.write_text(
        "host: 127.0.0.1\nservices:\n  mx: {port: 1, tls: none}\n"
        "accounts:\n  alice: {address: alice@example.test, password: pw}\n"
    )
    result = cli("replay", str(junk), "--target", str(target))
    assert result.exit_code == 2 and "cannot read the capture" in result.output
    result = cli(
        "replay",
        str(CAPTURES / "smtp.pcap"),
        "--target",
        str(target),
        *[a for port in SERVICES["smtp.pcap"] for a in ("--service", f"{port}=mx")],
    )
    assert result.exit_code == 3, result.output
    result = cli(
        "pcap2yaml",
        str(CAPTURES / "smtp.pcap"),
        "-o",
        str(tmp_path / "o"),
        "--rewrite",
        "no-equals-sign",
    )
    assert result.exit_code == 2
