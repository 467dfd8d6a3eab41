"""The fuzzer against the reference server in memory, and the differential oracle."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from fuzz_support import reference_target, run_cli
from scripted import ScriptConn, ScriptedServer

from conformance.fuzz import PROTOCOLS, fuzz, write_finding
from conformance.fuzz.dialogue import Login
from conformance.fuzz.engine import SecondTarget
from conformance.fuzz.memory import MemoryConnector, dev_memory_target
from conformance.fuzz.oracle import SocketConnector
from conformance.targets import load_target


@pytest.mark.parametrize("protocol", ["smtp", "pop3", "imap"])
def test_200_dialogues_in_memory_find_nothing(protocol: str, tmp_path: Path) -> None:
    proto = PROTOCOLS[protocol]
    config, target = dev_memory_target(tmp_path)
    login = None
    if protocol != "smtp":  # as after TLS: no STARTTLS in the prefix
        login = Login(account=target.accounts["alice"], starttls=False)
    service = target.services[proto.default_service]
    with MemoryConnector(config, proto.default_service) as conn:
        report = fuzz(
            proto,
            target,
            service,
            seed_value=5,
            max_examples=200,
            login=login,
            connector=conn,
        )
    assert not report.findings, [f.message for f in report.findings]
    assert report.stats.dialogues >= 200
    assert len(report.stats.states) >= 2


def test_cli_in_memory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = run_cli(
        "fuzz", "--protocol", "pop3", "--in-memory", "--max-examples", "30", "--seed", "3",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, output
    assert "in memory" in output and "logged in as alice" in output and "seed 3" in output
    assert "TRANSACTION" in output
    assert not out.exists()
    tfile = tmp_path / "t.yaml"
    tfile.write_text(yaml.safe_dump({"host": "127.0.0.1", "services": {"mx": {"port": 1}}}))
    for args in (["--in-memory", "--target", str(tfile)], []):
        code, output = run_cli("fuzz", "--protocol", "smtp", *args)
        assert code == 2 and "exactly one of --target FILE and --in-memory" in output


def _reply(up: socket.socket, buf: bytearray) -> bytes:
    """One whole SMTP reply from the upstream server (b"" if it closed)."""
    while True:
        m = re.search(rb"(?m)^[0-9]{3}(?: [^\r\n]*)?\r\n", bytes(buf))
        if m:
            out = bytes(buf[: m.end()])
            del buf[: m.end()]
            return out
        data = up.recv(65536)
        if not data:
            return b""
        buf += data


def noop_502_proxy(upstream: tuple[str, int]) -> Callable[[ScriptConn], None]:
    """The reference server, relayed line by line, except that NOOP gets 502."""

    def handler(conn: ScriptConn) -> None:
        with socket.create_connection(upstream, timeout=5) as up:
            buf = bytearray()
            greeting = _reply(up, buf)
            conn.send(greeting)
            while True:
                line = conn.recv_until(rb"\n", timeout=10)  # raw, terminator included
                if line.split(b" ", 1)[0].strip().upper() == b"NOOP":
                    conn.sendline("502 5.5.1 NOOP is not offered here")
                    continue
                up.sendall(line)
                answer = _reply(up, buf)
                if not answer:
                    conn.close()
                    return
                conn.send(answer)
                if answer.startswith(b"354"):
                    up.sendall(conn.recv_until(rb"\r\n\.\r\n"))
                    conn.send(_reply(up, buf))
                elif answer.startswith((b"221", b"421")):
                    conn.close()
                    return

    return handler


def test_differential_finds_the_one_command_answered_differently(
    mail_server, tmp_path: Path
) -> None:
    smtp = PROTOCOLS["smtp"]
    ref_file = reference_target(mail_server, tmp_path, "mx")
    ref = load_target(ref_file)
    with ScriptedServer(noop_502_proxy(mail_server.addr("mx"))) as srv:
        proxy_file = tmp_path / "proxy.yaml"
        doc = yaml.safe_load(ref_file.read_text())
        doc["services"] = {"mx": {"port": srv.port, "tls": "none"}}
        proxy_file.write_text(yaml.safe_dump(doc))
        proxy = load_target(proxy_file)
        second = SecondTarget(SocketConnector(proxy.services["mx"]), proxy)
        report = fuzz(smtp, ref, ref.services["mx"], seed_value=9, max_examples=150, second=second)
        kinds = {f.kind for f in report.findings}
        assert kinds == {"differential"}, [f.message for f in report.findings]
        finding = report.findings[0]
        last = finding.records[-1]
        assert last.send.verb == "NOOP" and len(finding.records) == 2  # shrunk
        assert "502" in last.outcome and "250" in last.outcome
        path, _ = write_finding(smtp, finding, ref, "mx", tmp_path / "out", deadline=2.0)
        step = yaml.safe_load(path.read_text())["steps"][-1]
        assert step["expect"] == {"class": "2xx"} and "second target: 502" in step["note"]
        # the scenario passes against the first target and fails against the second
        assert run_cli("run", str(path), "--target", str(ref_file))[0] == 0
        assert run_cli("run", str(path), "--target", str(proxy_file))[0] == 1
        # the CLI: the same with --differential, exit code 1 and the file written
        code, output = run_cli(
            "fuzz", "--protocol", "smtp", "--target", str(ref_file), "--differential",
            str(proxy_file), "--max-examples", "150", "--seed", "9", "--out",
            str(tmp_path / "cli"),
        )  # fmt: skip
        assert code == 1, output
        assert "differential against" in output and "FINDING differential" in output


def test_differential_in_memory_against_itself_over_sockets(mail_server, tmp_path: Path) -> None:
    """The reference server in memory and over sockets answer alike (accounts translated)."""
    code, output = run_cli(
        "fuzz", "--protocol", "smtp", "--in-memory", "--differential",
        str(reference_target(mail_server, tmp_path, "mx")), "--max-examples", "80",
        "--seed", "4", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0, output


def test_memory_channel_answers_times_out_and_sees_the_close(tmp_path: Path) -> None:
    """The connector's channel runs the loop only while it waits: an answer, a wait that
    ends at its timeout (the hang oracle's case), and EOF after QUIT."""
    config, _ = dev_memory_target(tmp_path)
    with MemoryConnector(config, "mx") as conn:
        chan = conn.open()
        assert chan.recv(5.0).startswith(b"220")
        chan.send(b"NOOP")  # no CRLF: the server waits for the rest of the line
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            chan.recv(0.2)
        assert 0.15 < time.monotonic() - started < 2.0
        chan.send(b"\r\n")
        assert chan.recv(5.0).startswith(b"250")
        chan.send(b"QUIT\r\n")
        assert chan.recv(5.0).startswith(b"221")
        assert chan.recv(5.0) == b""
        chan.close()


def test_cli_jobs_side_by_side_in_memory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = run_cli(
        "fuzz", "--protocol", "pop3", "--in-memory", "--jobs", "2", "--max-examples", "20",
        "--seed", "3", "--out", str(out),
    )  # fmt: skip
    assert code == 0, output
    assert "2 jobs in memory, seeds 3..4" in output, output
    assert "--jobs 2 --seed 3 --max-examples 20" in output
    assert re.search(
        r"^\d+ dialogues \(\d+ commands\) in [\d.]+s, \d+/s over 2 jobs$", output, re.M
    )
    assert "TRANSACTION" in output and "0 finding(s)" in output
    tfile = tmp_path / "t.yaml"
    tfile.write_text(yaml.safe_dump({"host": "127.0.0.1", "services": {"mx": {"port": 1}}}))
    code, output = run_cli("fuzz", "--protocol", "smtp", "--target", str(tfile), "--jobs", "2")
    assert code == 2 and "--jobs needs --in-memory" in output
