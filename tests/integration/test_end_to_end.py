"""The engine end to end over real sockets: CLI, TLS, AUTH, several connections, setup."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from engine_helpers import run_cli

from conformance.results import Status
from conformance.scenario.loader import load_paths
from conformance.scenario.runner import Runner
from conformance.targets import load_target

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def toy_suite(tmp_path: Path) -> Path:
    """The shipped scenarios the toy servers implement (tests/integration/toy_suite.txt),
    copied into ``tmp_path``: the toys are test doubles, not conformant servers, so the
    suites grow without them."""
    suite = tmp_path / "toy-suite"
    listing = Path(__file__).with_name("toy_suite.txt").read_text().split()
    for name in listing:
        (suite / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "scenarios" / name, suite / name)
    return suite


def test_shipped_scenarios_pass_against_the_toy_servers(toy_servers, tmp_path):
    target = toy_servers.target_yaml(tmp_path / "target.yaml")
    junit, out_json = tmp_path / "out.xml", tmp_path / "out.json"
    code, output = run_cli(
        "run",
        str(toy_suite(tmp_path)),
        "--target",
        str(target),
        "--junit",
        str(junit),
        "--json",
        str(out_json),
    )
    assert code == 0, output
    assert "0 failed" in output
    data = json.loads(out_json.read_text())
    assert data["tool"]["name"] == "mailharness" and data["tool"]["version"]
    assert data["summary"]["passed"] == len(data["results"]) >= 10
    assert all(r["transcript"] for r in data["results"])
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    assert int(suite.get("tests", "0")) == len(data["results"])


def test_submit_then_read_over_imap_and_pop3_in_one_scenario(toy_servers, tmp_path):
    """One file, three connections and three protocols, two of them upgraded with STARTTLS."""
    target = toy_servers.target_yaml(tmp_path / "target.yaml")
    scenario = write(
        tmp_path / "flow.yaml",
        """\
        id: flow.submit-read
        protocol: smtp
        service: submissions
        title: submit over implicit TLS, see it over IMAP and POP3
        connections:
          box: {protocol: imap}
          pop: {protocol: pop3}
        steps:
          - send: EHLO harness.example
            expect: {code: 250, ehlo_has: [AUTH=PLAIN]}
          - auth: {mechanism: LOGIN, account: alice}
          - send: "MAIL FROM:<{account.alice.address}>"
            expect: {code: 250, enhanced: 2.1.0}
          - send: "RCPT TO:<{account.bob.address}>"
            expect: {code: 250}
          - send: DATA
            expect: {code: 354}
          - data: |
              Subject: over the wire

              .a line starting with a dot
              bye
            expect: {code: 250}
          - conn: box
            starttls: true
          - conn: box
            auth: {mechanism: PLAIN, account: bob}
          - conn: box
            send: a1 SELECT INBOX
            capture: {exists: '(\\d+) EXISTS'}
            expect: {tagged: OK, untagged: ['^\\* 1 EXISTS$']}
          - conn: box
            send: a2 FETCH {exists} (BODY[])
            expect:
              tagged: OK
              untagged:
                - '(?s)BODY\\[\\] \\{\\d+\\}\\r\\nSubject: over the wire.*\\r\\n\\.a line starting'

          - conn: pop
            starttls: true
          - conn: pop
            auth: {mechanism: native, account: bob}
          - conn: pop
            send: RETR 1
            expect:
              status: ok
              body: ['^Subject: over the wire$', '^$', '^\\.a line starting with a dot$', '^bye$']
          - conn: pop
            send: QUIT
            expect: {status: ok, closed: true}
        """,
    )
    code, output = run_cli("run", str(scenario), "--target", str(target), "-v")
    assert code == 0, output
    assert toy_servers.toy.mailboxes["bob"][0].startswith(b"Subject: over the wire\r\n")


def test_setup_delivery_then_pop3_retr(toy_servers, tmp_path):
    target = toy_servers.target_yaml(tmp_path / "target.yaml")
    (tmp_path / "fixtures").mkdir()
    (tmp_path / "fixtures" / "m.eml").write_bytes(b"Subject: fixture\n\nfrom a file\n")
    scenario = write(
        tmp_path / "setup.yaml",
        """\
        id: setup.deliver
        protocol: pop3
        title: setup delivers before the steps
        setup:
          deliver:
            - to: alice
              message: "Subject: inline\\n\\nhello\\n"
            - to: ["{account.alice.address}"]
              file: fixtures/m.eml
              count: 2
        steps:
          - auth: {mechanism: native, account: alice}
          - send: STAT
            expect: {status: ok, text: '^3 \\d+'}
          - send: LIST
            expect: {status: ok, body: ['^1 ', '^2 ', '^3 ']}
          - send: TOP 2 0
            expect: {status: ok, body_text: 'Subject: fixture'}
        """,
    )
    code, output = run_cli("run", str(scenario), "--target", str(target))
    assert code == 0, output


def test_setup_failure_is_an_error_not_a_failure(toy_servers, tmp_path):
    target = toy_servers.target_yaml(tmp_path / "target.yaml")
    scenario = write(
        tmp_path / "s.yaml",
        """\
        id: setup.bad
        protocol: pop3
        title: setup to a mailbox that does not exist
        setup:
          deliver: [{to: nobody@example.test, message: "x"}]
        steps:
          - send: NOOP
        """,
    )
    code, output = run_cli("run", str(scenario), "--target", str(target))
    assert code == 1
    assert "ERROR setup.bad" in output and "setup delivery via 'mx'" in output
    assert "1 errors" in output


HELLO = {"smtp": "EHLO harness.example", "pop3": "CAPA", "imap": "a0 CAPABILITY"}
REFUSED = {"smtp": "code: 535", "pop3": "status: err", "imap": "tagged: NO"}


@pytest.mark.parametrize(
    ("proto", "mechanism"),
    [
        ("smtp", "PLAIN"),
        ("smtp", "LOGIN"),
        ("pop3", "PLAIN"),
        ("pop3", "native"),
        ("imap", "PLAIN"),
        ("imap", "native"),
    ],
)
def test_auth_after_starttls(toy_servers, tmp_path, proto, mechanism):
    target = toy_servers.target_yaml(tmp_path / "target.yaml")
    scenario = tmp_path / "auth.yaml"
    scenario.write_text(
        f"""\
id: auth.{proto}
protocol: {proto}
title: auth {mechanism} over {proto}
steps:
  - send: {HELLO[proto]}
    expect: {{}}
  - starttls: true
  - send: {HELLO[proto]}
    expect: {{}}
  - auth: {{mechanism: {mechanism}, username: bob, password: wrong}}
    expect: {{{REFUSED[proto]}}}
  - auth: {{mechanism: {mechanism}, account: alice}}
"""
    )
    code, output = run_cli("run", str(scenario), "--target", str(target))
    assert code == 0, output


def test_plain_without_initial_response(toy_servers, tmp_path):
    target = toy_servers.target_yaml(tmp_path / "target.yaml")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "".join(
            f"""---
id: ir.{proto}
protocol: {proto}
service: {svc}
title: PLAIN waits for the empty challenge
steps:
  - send: {"EHLO harness.example" if proto == "smtp" else "NOOP"}
    expect: {{}}
  - auth: {{mechanism: PLAIN, account: alice, initial_response: false}}
"""
            for proto, svc in (("smtp", "submissions"), ("pop3", "pop3"), ("imap", "imap"))
        )
    )
    code, output = run_cli("run", str(scenario), "--target", str(target))
    assert code == 0, output


def test_tls_is_verified_by_default(toy_servers, tmp_path):
    """Without the test CA the handshake fails (a finding); --insecure and --ca-file fix it."""
    data = toy_servers.target()
    del data["tls"]
    target = tmp_path / "target.yaml"
    target.write_text(yaml.safe_dump(data))
    scenario = write(
        tmp_path / "s.yaml",
        """\
        id: tls.implicit
        protocol: smtp
        service: submissions
        title: implicit TLS
        steps:
          - send: NOOP
            expect: {code: 250}
        """,
    )
    code, output = run_cli("run", str(scenario), "--target", str(target))
    assert code == 1
    assert "TLS handshake failed" in output and "CERTIFICATE_VERIFY_FAILED" in output
    assert run_cli("run", str(scenario), "--target", str(target), "--insecure")[0] == 0
    ca = str(toy_servers.certs.ca_file)
    assert run_cli("run", str(scenario), "--target", str(target), "--ca-file", ca)[0] == 0


def test_ipv6_target(toy_servers_factory, tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    servers = toy_servers_factory(host="::1")
    target = servers.target_yaml(tmp_path / "target.yaml")
    code, output = run_cli("run", str(toy_suite(tmp_path)), "--target", str(target), "-k", "smtp")
    assert code == 0, output
    assert "[::1]" not in output  # nothing failed, so no transcript shown


def test_unreachable_target_exits_3(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = write(
        tmp_path / "t.yaml",
        f"""\
        host: 127.0.0.1
        domain: example.test
        services: {{mx: {{port: {port}}}}}
        accounts:
          alice: {{address: alice@example.test, password: pw}}
          bob: {{address: bob@example.test, password: pw}}
        """,
    )
    code, output = run_cli(
        "run", str(ROOT / "scenarios" / "smtp"), "--target", str(target), "-k", "smtp.ehlo.*"
    )
    assert code == 3
    assert f"target unreachable: service 'mx' at 127.0.0.1:{port}" in output


def test_unknown_service_is_an_input_error(toy_servers, tmp_path):
    data = toy_servers.target()
    del data["services"]["pop3"]
    target = tmp_path / "t.yaml"
    target.write_text(yaml.safe_dump(data))
    code, output = run_cli("run", str(ROOT / "scenarios" / "pop3"), "--target", str(target))
    assert code == 2
    assert "rfc1939-4-greeting.yaml:3:10: unknown service 'pop3'" in output


def test_target_file_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("MH_TEST_UNSET", raising=False)
    target = write(
        tmp_path / "t.yaml",
        """\
        host: 127.0.0.1
        services: {mx: {port: 25}}
        accounts:
          alice: {address: alice@example.test, password: "${MH_TEST_UNSET}"}
        """,
    )
    code, output = run_cli("run", str(ROOT / "scenarios"), "--target", str(target))
    assert code == 2
    assert f"{target}:4:50: environment variable MH_TEST_UNSET is not set" in output
    monkeypatch.setenv("MH_TEST_UNSET", "pw")
    target.write_text(target.read_text().replace("port: 25", "port: 25, tls: maybe"))
    code, output = run_cli("run", str(ROOT / "scenarios"), "--target", str(target))
    assert code == 2
    assert f"{target}:2:" in output and "'maybe' is not one of" in output


def test_k_filter_and_no_match(toy_servers, tmp_path):
    target = toy_servers.target_yaml(tmp_path / "target.yaml")
    code, output = run_cli(
        "run",
        str(toy_suite(tmp_path)),
        "--target",
        str(target),
        "-k",
        "imap.*",
        "-k",
        "!imap.logout*",
        "-v",
    )
    assert code == 0, output
    assert "PASSED imap.greeting.ok" in output and "imap.logout" not in output
    assert "smtp." not in output
    code, output = run_cli(
        "run", str(ROOT / "scenarios"), "--target", str(target), "-k", "nothing-like-this"
    )
    assert code == 2 and "no scenario matches" in output


def test_failure_output_shows_reason_and_transcript(toy_servers, tmp_path):
    target = toy_servers.target_yaml(tmp_path / "target.yaml")
    scenario = write(
        tmp_path / "f.yaml",
        """\
        id: show.failure
        protocol: smtp
        title: a scenario that fails
        steps:
          - send: EHLO harness.example
            expect: {code: 250}
          - send: NOOP
            expect: {code: 554}
        """,
    )
    junit = tmp_path / "j.xml"
    code, output = run_cli("run", str(scenario), "--target", str(target), "--junit", str(junit))
    assert code == 1
    assert (
        f"FAILED [MUST] show.failure ({scenario}:7) step 2: expected reply code 554, got '250"
        in output
    )
    assert "C: NOOP" in output and "S: 250" in output
    assert "0 passed, 1 failed" in output
    failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
    assert failure is not None and "expected reply code 554" in failure.get("message", "")
    assert failure.text is not None and "C: NOOP" in failure.text


def test_pytest_plugin_collects_and_runs_scenarios(toy_servers, tmp_path):
    target = toy_servers.target_yaml(tmp_path / "target.yaml")
    suite = tmp_path / "scenarios"
    suite.mkdir()
    write(
        suite / "pass.yaml",
        """\
        id: p.pass
        protocol: smtp
        title: passes
        steps:
          - send: NOOP
            expect: {code: 250}
        ---
        id: p.na
        protocol: smtp
        title: not applicable
        requires: [XNOTHING]
        steps:
          - send: NOOP
        """,
    )
    write(
        suite / "fail.yaml",
        """\
        id: p.fail
        protocol: smtp
        title: fails
        steps:
          - send: NOOP
            expect: {code: 421}
        """,
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(suite),
            "--mail-target",
            str(target),
            "-rs",
            "-p",
            "no:cacheprovider",
            "-o",
            "filterwarnings=error",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 failed, 1 passed, 1 skipped" in out
    assert "expected reply code 421, got '250" in out
    assert "C: NOOP" in out  # the transcript is in the failure report
    assert "  |   - send: NOOP" in out  # and the step's own YAML lines
    assert "not applicable: service 'mx' does not advertise XNOTHING" in out
    broken = write(suite / "broken.yaml", "id: b\nprotocol: smtp\ntitle: t\nsteps:\n  - sned: x\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(broken),
            "--mail-target",
            str(target),
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode != 0
    assert f"{broken}:5:5: unknown key 'sned'" in proc.stdout + proc.stderr


def test_step_timeout_bounds_the_connect(tmp_path):
    """A listener that never accepts (full backlog) times out at the step's own deadline."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(0)
    port = blocker.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue so further connects hang
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        target = write(
            tmp_path / "t.yaml",
            f"""\
            host: 127.0.0.1
            domain: example.test
            timeouts: {{connect: 30}}
            services: {{mx: {{port: {port}, tls: implicit}}}}
            """,
        )
        scenario = write(
            tmp_path / "s.yaml",
            """\
            id: connect.timeout
            protocol: smtp
            title: connect bounded by the step
            steps:
              - send: NOOP
                timeout: 0.5
                expect: {code: 250}
            """,
        )
        (sc,) = load_paths([scenario])
        t0 = time.monotonic()
        result = asyncio.run(Runner(load_target(target)).run_one(sc))
        assert time.monotonic() - t0 < 5
        assert result.status is Status.FAILED
        assert "no connection within 0.5s" in (result.message or ""), result.message
    finally:
        for s in fillers:
            s.close()
        blocker.close()


def test_check_runs_the_shipped_suites_against_the_embedded_server(tmp_path):
    """README's first command: every applicable shipped scenario passes on the reference server."""
    out_json = tmp_path / "check.json"
    code, output = run_cli("check", "--no-progress", "--json", str(out_json))
    assert code == 0, output
    data = json.loads(out_json.read_text())
    summary = data["summary"]
    assert summary["failed"] == 0 and summary["error"] == 0
    assert summary["passed"] >= 12
    na = {r["id"]: r["message"] for r in data["results"] if r["status"] == "not_applicable"}
    # the gaps docs/reference-server.md lists under "Checks it cannot pass yet"
    known_gaps = {"mime.smtputf8-utf8-headers-roundtrip": "does not advertise UTF8=ACCEPT"}
    assert {i: m for i, m in na.items() if i not in known_gaps} == {}
    assert all(known_gaps[i] in m for i, m in na.items())
    assert set(data["target"]["services"]) == {
        "mx",
        "submission",
        "submissions",
        "pop3",
        "pop3s",
        "imap",
        "imaps",
        "web",
    }
