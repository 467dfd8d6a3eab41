"""The outbound scenarios (scenarios/outbound/) each fail on a server breaking its rule.

The server under test is :class:`RelayMsa`: a submission server (STARTTLS, AUTH PLAIN;
:class:`SecSmtp` of test_breaking_security.py) over a ToyMail store that hands mail
for other domains to a small queue, as a real MTA would: after its 250 a thread
connects to the harness's sink (the address the target names), prepends a Received
field and relays with the envelope sender; a 4xx is retried, a 5xx bounced to a local
sender as an RFC 3464 DSN (multipart/report) put into that sender's INBOX with
Return-Path: <>, and a message with the null reverse-path is never bounced. The
INBOX is read over :class:`ReportImap`, the toy IMAP session plus the few things the
scenarios ask of it (SEARCH TEXT, BODYSTRUCTURE, part and header-field sections).
Each case breaks exactly one of those rules in a subclass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import smtplib
import threading
import time
from email.utils import formatdate
from pathlib import Path

import pytest
import yaml
from breaking_support import SHIPPED, TARGET, Handler, run_breaking
from scripted import ScriptConn, ScriptedServer, TestCerts
from test_breaking_security import SecSmtp
from toymail import ToyImap, ToyMail, _text

from conformance.results import Status
from conformance.scenario.model import Outbound, Scenario
from conformance.scenario.runner import Runner
from conformance.sink import Sink
from conformance.targets import load_target

ACCOUNTS = {"alice": "alice-pw", "bob": "bob-pw"}
HOSTNAME = "mx.example.test"

Args = list[str | bytes]


# ---------------------------------------------------------------------- the relaying MSA


class RelayMsa(SecSmtp):
    """A submission server that relays mail for other domains to ``next_hop`` (the sink)."""

    next_hop: tuple[str, int] = ("127.0.0.1", 0)  # set per test
    retry_delay = 0.3  # seconds between attempts after a 4xx
    max_attempts = 5

    def reset(self) -> None:
        super().reset()
        self.remote: list[str] = []

    def do_rcpt(self, arg: str) -> None:
        before = self.accepted
        super().do_rcpt(arg)
        m = re.fullmatch(r"TO:\s*<(.+)>", arg, re.I)
        if m and self.accepted > before and self.classify(m.group(1))[0] == "foreign":
            self.remote.append(m.group(1))

    def store(self, message: bytes) -> None:
        super().store(message)
        if self.remote:
            job = (self.sender or "", list(self.remote), message)
            threading.Thread(target=self.queue, args=job, daemon=True).start()

    # ---- the queue
    def received(self) -> bytes:
        """The trace field this hop prepends (RFC 5321 §4.4)."""
        return (
            f"Received: from harness.example ([127.0.0.1])\r\n\tby {HOSTNAME} with ESMTPSA;\r\n"
            f"\t{formatdate()}\r\n"
        ).encode()

    def outgoing(self, sender: str, message: bytes) -> bytes:
        return self.received() + message

    def queue(self, sender: str, rcpts: list[str], message: bytes) -> None:
        try:
            pending, failed = list(rcpts), {}
            for _ in range(self.max_attempts):
                codes = self.attempt(sender, pending, self.outgoing(sender, message))
                failed.update({r: c for r, c in codes.items() if c >= 500})
                pending = [r for r in pending if 400 <= codes[r] < 500]
                if not pending:
                    break
                if not self.retries(pending, codes, failed):
                    break
                time.sleep(self.retry_delay)
            failed.update(dict.fromkeys(pending, 451))
            if failed:
                self.bounce(sender, failed, message)
        except (OSError, smtplib.SMTPException):  # the sink is gone: the test is over
            return

    def retries(self, pending: list[str], codes: dict[str, int], failed: dict[str, int]) -> bool:
        """After a 4xx: try again later (RFC 5321 §4.5.4.1)."""
        return True

    def attempt(self, sender: str, rcpts: list[str], message: bytes) -> dict[str, int]:
        """One SMTP transaction with the next hop: each recipient's reply code."""
        codes: dict[str, int] = {}
        with smtplib.SMTP(*self.next_hop, local_hostname=HOSTNAME, timeout=5) as client:
            client.ehlo()
            client.mail(sender)
            taken = []
            for rcpt in rcpts:
                codes[rcpt] = client.rcpt(rcpt)[0]
                if codes[rcpt] < 300:
                    taken.append(rcpt)
            if taken:
                code = client.data(message)[0]
                codes.update(dict.fromkeys(taken, code))
            client.quit()
        return codes

    # ---- notifications
    def bounce(self, sender: str, failed: dict[str, int], message: bytes) -> None:
        """A DSN to a local sender; none for the null reverse-path (RFC 5321 §6.1)."""
        to = self.notify_whom(sender, message)
        local, _, domain = to.rpartition("@")
        if domain.lower() == self.toy.domain and local in self.toy.accounts:
            self.toy.deliver(local, self.return_path() + self.dsn(to, failed, message))

    def notify_whom(self, sender: str, message: bytes) -> str:
        return sender

    def return_path(self) -> bytes:
        """Final delivery of a notification sent with MAIL FROM:<> (RFC 5321 §4.4, §6.1)."""
        return b"Return-Path: <>\r\n"

    def dsn(self, to: str, failed: dict[str, int], message: bytes) -> bytes:
        """RFC 3464 §2: multipart/report; report-type=delivery-status, in three parts."""
        head = message.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        blocks = "".join(
            f"\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: failed\r\n"
            f"Status: {code // 100}.0.0\r\n"
            for rcpt, code in failed.items()
        )
        return (
            (
                f"From: MAILER-DAEMON@{HOSTNAME}\r\nTo: <{to}>\r\n"
                "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
                'Content-Type: multipart/report; report-type=delivery-status; boundary="b0"\r\n'
                "\r\n--b0\r\nContent-Type: text/plain\r\n\r\n"
                f"Your message could not be delivered to {', '.join(failed)}.\r\n"
                "--b0\r\nContent-Type: message/delivery-status\r\n\r\n"
                f"Reporting-MTA: dns; {HOSTNAME}\r\n{blocks}"
                "--b0\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            ).encode()
            + head
            + b"--b0--\r\n"
        )


class NoReceived(RelayMsa):
    def received(self) -> bytes:
        return b""


class AddsReturnPath(RelayMsa):
    def outgoing(self, sender: str, message: bytes) -> bytes:
        return f"Return-Path: <{sender}>\r\n".encode() + super().outgoing(sender, message)


class PlainTextBounce(RelayMsa):
    def dsn(self, to: str, failed: dict[str, int], message: bytes) -> bytes:
        return (
            f"From: MAILER-DAEMON@{HOSTNAME}\r\nTo: <{to}>\r\nSubject: failure notice\r\n\r\n"
            f"Your message could not be delivered to {', '.join(failed)} (Status: 5.0.0).\r\n"
        ).encode()


class BounceFromMailerDaemon(RelayMsa):
    """Sends its notifications with a reverse-path of its own, not the null one."""

    def return_path(self) -> bytes:
        return f"Return-Path: <MAILER-DAEMON@{HOSTNAME}>\r\n".encode()


class BouncesToHeaderFrom(RelayMsa):
    """With the null reverse-path, notifies the From field's address instead of no one."""

    def notify_whom(self, sender: str, message: bytes) -> str:
        if sender:
            return sender
        m = re.search(rb"(?im)^From:[^\r\n]*<([^>]+)>", message)
        return m.group(1).decode() if m else ""


class NoRetry(RelayMsa):
    """Takes a 4xx from the next hop as final."""

    def retries(self, pending: list[str], codes: dict[str, int], failed: dict[str, int]) -> bool:
        return False


# ---------------------------------------------------------------------- the IMAP side


def _sections(message: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The header, and each part of a multipart message as (MIME header, body)."""
    head, _, body = message.partition(b"\r\n\r\n")
    m = re.search(rb'(?i)boundary="?([^";\r\n]+)"?', head)
    if m is None:
        return head + b"\r\n", []
    parts = []
    for chunk in body.split(b"--" + m.group(1))[1:]:
        if chunk.startswith(b"--"):
            break
        mime, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        parts.append((mime + b"\r\n\r\n", content.removesuffix(b"\r\n")))
    return head + b"\r\n\r\n", parts


def _media(header: bytes) -> tuple[str, str, str]:
    m = re.search(rb"(?im)^Content-Type:[ \t]*([\w.-]+)/([\w.-]+)(.*)$", header)
    if m is None:
        return "TEXT", "PLAIN", ""
    return m.group(1).decode().upper(), m.group(2).decode().upper(), m.group(3).decode()


def _leaf(kind: str, sub: str, content: bytes) -> str:
    """A non-multipart body (RFC 9051 §7.5.2): TEXT parts also give their line count."""
    lines = f" {len(content.splitlines())}" if kind == "TEXT" else ""
    return f'("{kind}" "{sub}" NIL NIL NIL "7BIT" {len(content)}{lines})'


def _bodystructure(message: bytes) -> str:
    head, parts = _sections(message)
    kind, sub, params = _media(head)
    if kind != "MULTIPART":
        return _leaf(kind, sub, message)
    leaves = "".join(_leaf(*_media(mime)[:2], content) for mime, content in parts)
    pairs = re.findall(r';\s*([\w-]+)="?([^";]+)"?', params)
    plist = " ".join(f'"{k.upper()}" "{v}"' for k, v in pairs)
    return f'({leaves} "{sub}" ({plist}))'


class ReportImap(ToyImap):
    """The toy IMAP session, plus SEARCH TEXT and the FETCH items the DSN checks use."""

    def do_search(self, tag: str, args: Args, by_uid: bool = False) -> None:
        keys = [_text(a) for a in args]
        if len(keys) != 2 or keys[0].upper() != "TEXT":
            super().do_search(tag, args, by_uid)
            return
        needle = keys[1].lower().encode()
        with self.toy.lock:
            folder = self.selected_folder()
            live = set(folder.sync())
            hits = [
                (n, uid)
                for n, uid in enumerate(self.view, 1)
                if uid in live and needle in (folder.get(uid) or b"").lower()
            ]
        found = " ".join(str(uid if by_uid else n) for n, uid in hits)
        self.untagged(f"SEARCH {found}".rstrip())
        self.ok(tag, "SEARCH completed")

    def do_fetch(self, tag: str, args: Args, by_uid: bool = False) -> None:
        items = "".join(_text(a) for a in args[1:]).upper()
        special = re.fullmatch(r"\((BODYSTRUCTURE|BODY\.PEEK\[([^\]]*)\])\)", items)
        if special is None:
            super().do_fetch(tag, args, by_uid)
            return
        chunks = []
        with self.toy.lock:
            folder = self.selected_folder()
            for n, uid in self.messages(_text(args[0]), by_uid):
                message = folder.get(uid) or b""
                head, parts = _sections(message)
                section = special.group(2)
                if section is None:
                    item = f"BODYSTRUCTURE {_bodystructure(message)}".encode()
                else:
                    if section == "HEADER.FIELDS(RETURN-PATH)":
                        name = "HEADER.FIELDS (RETURN-PATH)"
                        fields = re.findall(rb"(?im)^Return-Path:[^\r\n]*\r\n", head)
                        value = b"".join(fields) + b"\r\n"
                    else:
                        number, _, text = section.partition(".")
                        mime, content = parts[int(number) - 1]
                        name, value = section, mime if text == "MIME" else content
                    item = f"BODY[{name}] {{{len(value)}}}\r\n".encode() + value
                chunks.append(f"* {n} FETCH (UID {uid} ".encode() + item + b")\r\n")
        self.conn.send(b"".join(chunks))
        self.ok(tag, "FETCH completed")


# ---------------------------------------------------------------------- the cases

CASES: dict[str, tuple[type[RelayMsa], str]] = {
    "outbound.relay-trace": (NoReceived, "expected the message at the sink to match"),
    "outbound.relay-no-return-path": (AddsReturnPath, "expected no match for /(?im)^return-path"),
    "outbound.dsn-on-refusal": (PlainTextBounce, '"REPORT-TYPE" "delivery-status"'),
    "outbound.dsn-null-reverse-path": (BounceFromMailerDaemon, r"Return-Path:[ \t]*<[ \t]*>"),
    "outbound.no-dsn-for-null-reverse-path": (BouncesToHeaderFrom, r"^\* SEARCH *$"),
    "outbound.retry-after-4xx": (NoRetry, "2 delivery attempt(s) for <defer1."),
}

SHORT_WAIT = 3.0  # seconds: an outbound step waiting for mail that never comes


def _shorter_waits(sc: Scenario) -> Scenario:
    """The scenario with outbound waits cut to SHORT_WAIT (the rules stay the same)."""
    steps = tuple(
        dataclasses.replace(s, action=dataclasses.replace(s.action, within=SHORT_WAIT))
        if isinstance(s.action, Outbound)
        else s
        for s in sc.steps
    )
    return dataclasses.replace(sc, steps=steps)


def relay_handlers(session: type[RelayMsa], sink: Sink) -> dict[str, Handler]:
    """``session`` on ``submission``, relaying to ``sink``; IMAP over the same mailboxes."""
    toy = ToyMail(dict(ACCOUNTS))

    def submission(conn: ScriptConn) -> None:
        s = session(toy, conn, submission=True)
        s.next_hop = (sink.host, sink.port)
        s.run()

    return {"submission": submission, "imap": toy.imap_handler(ReportImap)}


@pytest.mark.parametrize("scenario_id", sorted(CASES))
def test_outbound_scenario_fails_on_its_broken_rule(
    scenario_id: str, tmp_path: Path, test_certs: TestCerts
) -> None:
    session, phrase = CASES[scenario_id]
    sink = Sink()
    run_breaking(
        scenario_id,
        relay_handlers(session, sink),
        phrase,
        tmp_path,
        test_certs,
        sink=sink,
        adjust=_shorter_waits,
    )


@pytest.mark.parametrize("scenario_id", sorted(CASES))
def test_outbound_scenario_passes_against_the_unbroken_relay(
    scenario_id: str, tmp_path: Path, test_certs: TestCerts
) -> None:
    """The same toy without the break passes, so each case fails for its rule alone."""
    certs = test_certs
    sink = Sink()
    handlers = relay_handlers(RelayMsa, sink)
    sc = SHIPPED[scenario_id]
    with (
        ScriptedServer(handlers["submission"], certs=certs) as sub,
        ScriptedServer(handlers["imap"], certs=certs) as imap,
    ):
        target = dict(
            TARGET,
            services={
                "submission": {"port": sub.port, "tls": "starttls"},
                "imap": {"port": imap.port, "tls": "starttls"},
            },
            tls={"verify": True, "ca_file": str(certs.ca_file)},
            sink={"host": sink.host, "port": sink.port, "domain": sink.domain},
        )
        (tmp_path / "t.yaml").write_text(yaml.safe_dump(target))
        result = asyncio.run(Runner(load_target(tmp_path / "t.yaml"), sink=sink).run_one(sc))
    assert result.status is Status.PASSED, (result.message, [e.render() for e in result.transcript])
