"""Every shipped scenario fails against a server that breaks exactly the rule it checks.

Each case is a scripted server that behaves well except for one thing; the
scenario must fail on that thing (the phrase names it). The toy servers in
test_end_to_end show the same scenarios passing. A guard makes sure every
shipped scenario id has a case here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from scripted import ScriptConn, ScriptedServer

from conformance.results import Status
from conformance.scenario.loader import load_paths
from conformance.scenario.runner import Runner
from conformance.targets import load_target

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {sc.id: sc for sc in load_paths([ROOT / "scenarios"])}

Handler = Callable[[ScriptConn], None]


GOOD_END = rb"\r\n\.\r\n"


def smtp_server(
    greeting: str = "220 mx.example.test ESMTP",
    *,
    data_end: bytes = GOOD_END,
    run_after_starttls: bool = False,
    **replies: list[str],
) -> Handler:
    """A well-behaved SMTP responder (an open relay, though) except where told otherwise.

    ``replies`` overrides a verb's answer (key ``VERB``, or ``VERB_TLS`` inside
    TLS; values are reply lines). ``data_end`` is the regex that ends message
    data. ``run_after_starttls`` runs a command pipelined after STARTTLS
    inside the TLS session (the CVE-2011-0411 bug).
    """

    def handle(conn: ScriptConn) -> None:
        conn.sendline(greeting)
        helo = False
        in_mail = False
        tls = False
        carried: list[str] = []
        while True:
            line = carried.pop(0) if carried else conn.recv_line(timeout=10).decode()
            verb = line.split(" ", 1)[0].upper()
            key = f"{verb}_TLS" if tls and f"{verb}_TLS" in replies else verb
            if key in replies:
                for reply in replies[key]:
                    conn.sendline(reply)
                if verb == "QUIT":
                    conn.wait_closed(timeout=3)
                    return
                continue
            if verb in ("EHLO", "HELO"):
                helo, in_mail = True, False
                if verb == "HELO":
                    conn.sendline("250 mx.example.test")
                else:
                    conn.sendline("250-mx.example.test")
                    conn.sendline("250-PIPELINING" if tls else "250-STARTTLS")
                    conn.sendline("250 8BITMIME")
            elif verb == "STARTTLS":
                if run_after_starttls and conn.readable(timeout=0.5):
                    carried.append(conn.recv_line().decode())  # kept across the handshake
                conn.sendline("220 2.0.0 go ahead")
                conn.starttls()
                tls, helo, in_mail = True, bool(carried), False
            elif verb == "MAIL":
                conn.sendline("250 2.1.0 ok" if helo else "503 5.5.1 EHLO first")
                in_mail = helo
            elif verb == "RCPT":
                conn.sendline("250 2.1.5 ok" if in_mail else "503 5.5.1 MAIL first")
            elif verb == "DATA":
                conn.sendline("354 go ahead")
                conn.recv_until(data_end, timeout=10)
                conn.sendline("250 2.0.0 queued")
                in_mail = False
            elif verb == "NOOP":
                conn.sendline("250 2.0.0 ok")
            elif verb == "QUIT":
                conn.sendline("221 2.0.0 bye")
                conn.close()
                return
            else:
                conn.sendline("502 5.5.1 not implemented")

    return handle


def pop3_server(greeting: str = "+OK ready", **replies: list[str]) -> Handler:
    def handle(conn: ScriptConn) -> None:
        conn.sendline(greeting)
        while True:
            verb = conn.recv_line(timeout=10).decode().split(" ", 1)[0].upper()
            if verb in replies:
                for reply in replies[verb]:
                    conn.sendline(reply)
            elif verb == "CAPA":
                for reply in ("+OK capabilities", "USER", "UIDL", "."):
                    conn.sendline(reply)
            elif verb == "QUIT":
                conn.sendline("+OK bye")
                conn.close()
                return
            else:
                conn.sendline("-ERR not now")

    return handle


def imap_server(greeting: str = "* OK IMAP4rev1 ready", **replies: list[str]) -> Handler:
    """``replies[VERB]`` lines are sent with ``{tag}`` filled in; LOGOUT closes afterwards."""

    def handle(conn: ScriptConn) -> None:
        conn.sendline(greeting)
        while True:
            tag, _, rest = conn.recv_line(timeout=10).decode().partition(" ")
            verb = rest.split(" ", 1)[0].upper()
            if verb in replies:
                for reply in replies[verb]:
                    conn.sendline(reply.format(tag=tag))
            elif verb == "CAPABILITY":
                conn.sendline("* CAPABILITY IMAP4rev1 STARTTLS")
                conn.sendline(f"{tag} OK done")
            elif verb == "LOGOUT":
                conn.sendline("* BYE see you")
                conn.sendline(f"{tag} OK done")
            else:
                conn.sendline(f"{tag} BAD what")
            if verb == "LOGOUT":
                conn.close()
                return

    return handle


# scenario id -> (protocol's server, breaking exactly the rule, phrase in the failure)
CASES: dict[str, tuple[Handler, str]] = {
    "smtp.greeting.220": (
        smtp_server(greeting="220 localhost-without-dots"),
        "expected text matching",
    ),
    "smtp.ehlo.multiline-250": (
        smtp_server(EHLO=["250-mx.example.test", "250-PIPE LINING", "250 -8BITMIME"]),
        "expected text matching",
    ),
    "smtp.helo.single-line": (
        smtp_server(HELO=["250-mx.example.test", "250 PIPELINING"]),
        "expected a single-line reply",
    ),
    "smtp.sequence.mail-before-ehlo": (
        smtp_server(MAIL=["250 2.1.0 ok"]),
        "expected reply code 503",
    ),
    "smtp.sequence.rcpt-before-mail": (
        smtp_server(RCPT=["250 2.1.5 ok"]),
        "expected reply code 503",
    ),
    "smtp.quit.221-then-close": (
        smtp_server(QUIT=["221 2.0.0 bye"]),  # ...and then keeps the connection open
        "expected the server to close the connection",
    ),
    "smtp.starttls.not-advertised-inside-tls": (
        smtp_server(EHLO_TLS=["250-mx.example.test", "250-STARTTLS", "250 8BITMIME"]),
        "expected EHLO keyword(s) STARTTLS to be absent",
    ),
    "smtp.submission.mail-needs-auth": (smtp_server(), "expected reply code 530"),
    "security.smtp.no-open-relay": (smtp_server(), "expected reply code 450 or 451"),
    "security.smtp.smuggling-lf-dot-lf": (
        smtp_server(data_end=rb"\n\.\n|\r\n\.\r\n"),
        "expected silence for 1s, but the server sent",
    ),
    "security.smtp.smuggling-cr-dot-cr": (
        smtp_server(data_end=rb"\r\.\r|\r\n\.\r\n"),
        "expected silence for 1s, but the server sent",
    ),
    "security.smtp.starttls-injection": (
        smtp_server(run_after_starttls=True),
        "expected reply code 503",
    ),
    "pop3.greeting.ok": (pop3_server(greeting="-ERR go away"), "expected +OK"),
    "pop3.capa.multiline-list": (
        pop3_server(CAPA=["+OK capabilities", " USER", "."]),
        "expected the body to match",
    ),
    "pop3.state.stat-before-login": (pop3_server(STAT=["+OK 0 0"]), "expected -ERR"),
    "imap.greeting.ok": (
        imap_server(greeting="* PREAUTH welcome"),
        "expected an untagged response matching",
    ),
    "imap.capability.one-response-with-version": (
        imap_server(CAPABILITY=["* CAPABILITY STARTTLS IDLE", "{tag} OK done"]),
        "CAPABILITY lists neither IMAP4rev2 nor IMAP4rev1",  # the reader applies RFC 9051 §9
    ),
    "imap.logout.bye-ok-close": (
        imap_server(LOGOUT=["{tag} OK done"]),  # no untagged BYE before the OK
        "expected an untagged response matching /^\\* BYE\\b/",
    ),
}


def test_every_shipped_scenario_has_a_breaking_case():
    assert sorted(SHIPPED) == sorted(CASES)


@pytest.mark.parametrize("scenario_id", sorted(CASES))
def test_shipped_scenario_fails_on_the_broken_rule(scenario_id, tmp_path, test_certs):
    handler, phrase = CASES[scenario_id]
    sc = SHIPPED[scenario_id]
    with ScriptedServer(handler, certs=test_certs) as srv:
        (tmp_path / "t.yaml").write_text(
            f"host: 127.0.0.1\ndomain: example.test\n"
            f"tls: {{verify: true, ca_file: {test_certs.ca_file}}}\n"
            f"timeouts: {{read: 1}}\n"
            f"services: {{{sc.service}: {{port: {srv.port}, tls: starttls}}}}\n"
            f"accounts: {{alice: {{address: alice@example.test, password: pw}}}}\n"
        )
        result = asyncio.run(Runner(load_target(tmp_path / "t.yaml")).run_one(sc))
    assert result.status is Status.FAILED, (result.status, result.message)
    assert phrase in (result.message or ""), result.message
