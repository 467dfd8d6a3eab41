"""``requires:``: a capability the service does not advertise makes the scenario not applicable
(never failed); an advertised one lets it run, including capabilities that only appear after
STARTTLS (the probe upgrades the connection when the service is ``tls: starttls``)."""

from __future__ import annotations

from engine_helpers import assert_failed, assert_passed, run_scenario

from conformance.results import Status

EHLO_PLAIN = ["mx.example.test", "PIPELINING", "SIZE 10240000", "STARTTLS"]
EHLO_TLS = ["mx.example.test", "PIPELINING", "SIZE 10240000", "AUTH PLAIN LOGIN"]

# The scenario steps send this; the probe never does.
MARKER = b"XSCENARIO"


class SmtpServer:
    """A small SMTP responder: EHLO (different before and after TLS), STARTTLS, QUIT, else 250."""

    def __init__(self, ehlo: list[str], ehlo_tls: list[str] | None = None) -> None:
        self.ehlo = ehlo
        self.ehlo_tls = ehlo_tls or ehlo
        self.sessions: list[list[bytes]] = []

    def __call__(self, conn) -> None:
        self.sessions.append(conn.received)
        conn.sendline("220 mx.example.test ESMTP ready")
        while True:
            line = conn.recv_line()
            verb = line.split(b" ")[0].upper()
            if verb == b"EHLO":
                keywords = self.ehlo_tls if conn.tls else self.ehlo
                *head, last = keywords
                conn.send("".join(f"250-{k}\r\n" for k in head) + f"250 {last}\r\n")
            elif verb == b"STARTTLS" and not conn.tls:
                conn.sendline("220 2.0.0 ready to start TLS")
                conn.starttls()
            elif verb == b"QUIT":
                conn.sendline("221 2.0.0 bye")
                return
            elif verb == MARKER:
                conn.sendline("550 5.5.1 the scenario ran")
            else:
                conn.sendline("250 2.0.0 OK")

    @property
    def scenario_ran(self) -> bool:
        return any(line.startswith(MARKER) for session in self.sessions for line in session)


FAILING_STEPS = """
- send: XSCENARIO
  expect: {code: 250}
"""


def test_capability_not_advertised_is_not_applicable(tmp_path):
    server = SmtpServer(EHLO_PLAIN)
    result = run_scenario(tmp_path, server, FAILING_STEPS, header="requires: [CHUNKING]\n")
    assert result.status is Status.NOT_APPLICABLE, result.message
    assert "does not advertise CHUNKING" in (result.message or "")
    assert not server.scenario_ran


def test_keyword_param_not_advertised_is_not_applicable(tmp_path):
    server = SmtpServer(EHLO_TLS)
    result = run_scenario(tmp_path, server, FAILING_STEPS, header="requires: [AUTH=CRAM-MD5]\n")
    assert result.status is Status.NOT_APPLICABLE, result.message
    assert not server.scenario_ran


def test_not_applicable_with_preflight(tmp_path):
    server = SmtpServer(EHLO_PLAIN)
    result = run_scenario(
        tmp_path, server, FAILING_STEPS, header="requires: [chunking]\n", preflight=True
    )
    assert result.status is Status.NOT_APPLICABLE, result.message
    assert not server.scenario_ran


def test_capability_advertised_runs_the_scenario(tmp_path):
    server = SmtpServer(EHLO_PLAIN)
    result = run_scenario(tmp_path, server, FAILING_STEPS, header="requires: [PIPELINING]\n")
    assert_failed(result, "expected reply code 250, got '550 5.5.1 the scenario ran'")
    assert server.scenario_ran


def test_keyword_param_advertised_runs_the_scenario(tmp_path):
    server = SmtpServer(EHLO_PLAIN)
    steps = """
    - send: EHLO client.example
      expect: {code: 250, ehlo_has: [SIZE=10240000]}
    """
    result = run_scenario(tmp_path, server, steps, header="requires: [SIZE=10240000]\n")
    assert_passed(result)


def test_capability_that_appears_only_after_starttls(tmp_path, test_certs):
    server = SmtpServer(EHLO_PLAIN, EHLO_TLS)
    steps = """
    - send: EHLO client.example
      expect: {code: 250, ehlo_has: [STARTTLS], ehlo_lacks: [AUTH]}
    - starttls: true
    - send: EHLO client.example
      expect: {code: 250, ehlo_has: [AUTH=PLAIN], ehlo_lacks: [STARTTLS]}
    - send: QUIT
      expect: {code: 221, closed: true}
    """
    result = run_scenario(
        tmp_path,
        server,
        steps,
        tls="starttls",
        certs=test_certs,
        header="requires: [AUTH=PLAIN]\n",
        preflight=True,
    )
    assert_passed(result)
    # probe (EHLO, STARTTLS, EHLO) and the scenario's own session
    assert [b"EHLO", b"STARTTLS", b"EHLO"] in [
        [line.split()[0] for line in s] for s in server.sessions
    ]


def test_imap_capability_not_advertised_is_not_applicable(tmp_path):
    seen: list[bytes] = []

    def handler(conn):
        conn.sendline("* OK [CAPABILITY IMAP4rev2] ready")
        while True:
            line = conn.recv_line()
            seen.append(line)
            tag, _, command = line.partition(b" ")
            if command.upper() == b"CAPABILITY":
                conn.send(b"* CAPABILITY IMAP4rev2 LITERAL+\r\n" + tag + b" OK done\r\n")
            else:
                conn.send(tag + b" BAD the scenario ran\r\n")

    steps = """
    - send: a1 IDLE
      expect: {continuation: true}
    """
    result = run_scenario(tmp_path, handler, steps, protocol="imap", header="requires: [IDLE]\n")
    assert result.status is Status.NOT_APPLICABLE, result.message
    assert not any(line.startswith(b"a1 ") for line in seen)


def test_imap_capability_from_the_greeting_runs_the_scenario(tmp_path):
    def handler(conn):
        conn.sendline("* OK [CAPABILITY IMAP4rev2 IDLE] ready")
        while True:
            line = conn.recv_line()
            tag, _, command = line.partition(b" ")
            if command.upper() == b"CAPABILITY":
                conn.send(b"* CAPABILITY IMAP4rev2 IDLE\r\n" + tag + b" OK done\r\n")
            elif command.upper() == b"IDLE":
                conn.sendline("+ idling")
            else:  # the probe's LOGIN
                conn.send(tag + b" NO not here\r\n")

    steps = """
    - send: a1 IDLE
      expect: {continuation: true}
    """
    result = run_scenario(tmp_path, handler, steps, protocol="imap", header="requires: [IDLE]\n")
    assert_passed(result)


def test_pop3_capability_from_capa(tmp_path):
    def handler(conn):
        conn.sendline("+OK ready")
        while True:
            line = conn.recv_line()
            if line.upper() == b"CAPA":
                conn.send(b"+OK\r\nUSER\r\nUIDL\r\nSASL PLAIN\r\n.\r\n")
            else:
                conn.sendline("+OK 1 whqtswO00WBw418f9t5JxYwZ")

    steps = """
    - send: UIDL 1
      expect: {status: ok}
    """
    result = run_scenario(tmp_path, handler, steps, protocol="pop3", header="requires: [UIDL]\n")
    assert_passed(result)
    result = run_scenario(
        tmp_path, handler, steps, protocol="pop3", header="requires: [SASL=LOGIN]\n"
    )
    assert result.status is Status.NOT_APPLICABLE, result.message


def test_requirement_on_another_service(tmp_path):
    """``SERVICE:CAPABILITY`` probes that service (here SMTP ``mx`` for an IMAP scenario)."""
    mx = SmtpServer(EHLO_PLAIN)

    def imap_handler(conn):
        conn.sendline("* OK [CAPABILITY IMAP4rev2] ready")
        conn.expect("a1 NOOP")
        conn.sendline("a1 OK done")
        conn.wait_closed()

    steps = """
    - send: a1 NOOP
      expect: {tagged: OK}
    """
    ran = run_scenario(
        tmp_path,
        imap_handler,
        steps,
        protocol="imap",
        header="requires: ['mx:PIPELINING']\n",
        more_services={"mx": (mx, "none")},
    )
    assert_passed(ran)
    skipped = run_scenario(
        tmp_path,
        imap_handler,
        steps,
        protocol="imap",
        header="requires: ['mx:CHUNKING']\n",
        more_services={"mx": (mx, "none")},
    )
    assert skipped.status is Status.NOT_APPLICABLE, skipped.message
    assert "'mx' does not advertise CHUNKING" in (skipped.message or "")


def test_probe_reads_a_legacy_auth_equals_line_leniently(tmp_path):
    """docs/decisions.md: ``requires`` reads ``AUTH=PLAIN LOGIN`` as AUTH with PLAIN LOGIN,
    so the scenario runs (and here fails on its own step); not an error, not skipped."""
    server = SmtpServer(["mx.example.test", "PIPELINING", "AUTH=PLAIN LOGIN"])
    result = run_scenario(tmp_path, server, FAILING_STEPS, header="requires: [AUTH=LOGIN]\n")
    assert_failed(result, "expected reply code 250, got '550 5.5.1 the scenario ran'")
    assert server.scenario_ran
