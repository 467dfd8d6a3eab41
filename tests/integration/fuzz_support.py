"""Helpers shared by the POP3 and IMAP fuzzer tests: target files, the CLI, and the
find-then-replay check every hidden-bug test makes."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import yaml
from engine_helpers import run_cli
from scripted import ScriptConn, ScriptedServer, TestCerts

from conformance.fuzz import fuzz, write_finding
from conformance.fuzz.dialogue import Finding, Login, ProtocolFuzz
from conformance.targets import Target, load_target

PASSWORD = "fuzz-pw"


def scripted_target(tmp_path: Path, service: str, port: int, certs: TestCerts) -> Path:
    """A target for a scripted server on 127.0.0.1 that offers STARTTLS with the test CA."""
    path = tmp_path / f"{service}-target.yaml"
    doc = {
        "host": "127.0.0.1",
        "domain": "example.test",
        "tls": {"verify": True, "ca_file": str(certs.ca_file)},
        "services": {service: {"port": port, "tls": "starttls"}},
        "accounts": {
            "alice": {"address": "alice@example.test", "username": "alice", "password": PASSWORD}
        },
        "timeouts": {"read": 2},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def reference_target(mail_server: Any, tmp_path: Path, service: str) -> Path:
    """A target for the reference server's ``service`` (STARTTLS, the dev CA)."""
    host, port = mail_server.addr(service)
    path = tmp_path / f"ref-{service}.yaml"
    doc = {
        "host": host,
        "domain": "example.test",
        "server_name": "mail.example.test",
        "tls": {"verify": True, "ca_file": str(mail_server.ca_file)},
        "services": {service: {"port": port, "tls": "starttls"}},
        "accounts": {
            "alice": {
                "address": "alice@example.test",
                "username": "alice",
                "password": mail_server.passwords["alice"],
            }
        },
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def login_for(target: Target, service: str) -> Login:
    return Login(
        account=target.accounts["alice"],
        starttls=True,
        context=target.ssl_context(),
        server_name=target.server_name or target.services[service].host,
    )


def load(path: Path) -> Target:
    return load_target(path)


def nodelay(conn: ScriptConn) -> None:
    """Answers of several lines go out at once (no Nagle wait on loopback)."""
    conn._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def find_and_replay(
    protocol: ProtocolFuzz,
    service: str,
    handler: Any,
    kind: str,
    needle: bytes,
    tmp_path: Path,
    certs: TestCerts,
    *,
    deadline: float,
) -> tuple[Path, Finding]:
    """Fuzz a scripted server hiding one bug (seed 7, logged in after STARTTLS, the default
    budget of examples): a finding
    of ``kind`` whose dialogue sends ``needle`` is saved as a scenario that validates and
    fails against that server. Returns the scenario file and the finding."""
    with ScriptedServer(handler, certs=certs) as srv:
        tfile = scripted_target(tmp_path, service, srv.port, certs)
        target = load(tfile)
        login = login_for(target, service)
        report = fuzz(
            protocol, target, target.services[service], seed_value=7,
            deadline=deadline, login=login,
        )  # fmt: skip
        found = [f for f in report.findings if f.kind == kind]
        assert found, [f.message for f in report.findings]
        finding = found[0]
        assert any(needle in r.send.wire for r in finding.records), finding.records
        path, new = write_finding(
            protocol, finding, target, service, tmp_path / "found", deadline=deadline,
            login=login,
        )  # fmt: skip
        assert new
        assert "starttls: true" in path.read_text()
        assert run_cli("validate", str(path))[0] == 0
        code, output = run_cli("run", str(path), "--target", str(tfile))
        assert code == 1, output
    return path, finding
