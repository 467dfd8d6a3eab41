"""The outbound queue end to end: relay to a next hop, retries, give-up DSNs, restarts.

Each test runs real reference-server instances (in a thread, or a subprocess
when it is killed) with short test timings (``queue.test_timing``), and a
scripted next hop (:class:`mail_system.Sink`) on loopback via a static route.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from dnsserver import FakeDns
from mail_system import Instance, Sink, parse, wait_for, write_instance
from server_process import ServerProcess

from reference_server.config import load_config
from reference_server.controller import ServerThread
from reference_server.storage.spool import OutboundSpool

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def running(instance: Instance) -> Iterator[ServerThread]:
    with ServerThread(load_config(instance.config)) as thread:
        yield thread


def message(subject: str, to: str = "carol@b.test", sender: str = "alice@a.test") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@a.test>"
    msg.set_content(f"body of {subject}\n.leading dot line\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def submit(
    instance: Instance,
    port: int,
    data: bytes,
    *,
    sender: str = "alice@a.test",
    to: tuple[str, ...] = ("carol@b.test",),
) -> None:
    """Submit over the submission port with STARTTLS and AUTH as alice."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
        client.starttls(context=ssl.create_default_context(cafile=str(instance.ca_file)))
        client.login("alice", instance.passwords["alice"])
        refused = client.sendmail(sender, list(to), data)
        assert refused == {}


def spool_entries(instance: Instance) -> list[str]:
    spool = instance.data_dir / "spool"
    return [p.name for p in spool.iterdir() if not p.name.startswith(".")] if spool.is_dir() else []


def a_test(tmp_path: Path, sink: Sink, **queue: object) -> Instance:
    return write_instance(
        tmp_path / "a",
        domain="a.test",
        relay={"routes": {"b.test": f"127.0.0.1:{sink.port}", "c.test": "127.0.0.1:1"}},
        queue=queue,
    )


def delivery_status(dsn: bytes) -> tuple[EmailMessage, list[dict[str, str]]]:
    """The DSN parsed, and its delivery-status blocks (per-message first)."""
    msg = parse(dsn)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    payload = parts[1].get_payload()
    assert isinstance(payload, list)
    blocks = [dict(block.items()) for block in payload if not isinstance(block, str)]
    return msg, blocks


def test_a_submitted_message_is_relayed_once_to_the_static_route(tmp_path: Path) -> None:
    with Sink() as sink:
        a = a_test(tmp_path, sink)
        with running(a) as srv:
            submit(a, srv.bound["submission"][1], message("hello"))
            wait_for(lambda: sink.accepted, what="the sink to receive the message")
            wait_for(lambda: not spool_entries(a), what="the spool to empty")
            time.sleep(0.3)
        (got,) = sink.accepted
        assert got.sender == "alice@a.test"
        assert got.recipients == ("carol@b.test",)
        assert b"\r\n.leading dot line\r\n" in got.data  # dot-stuffed on the wire, undone here
        assert got.data.startswith(b"Received: from client.test")
        assert a.maildir_new("alice") == []  # no DSN


def test_a_4xx_is_retried_on_the_schedule_and_delivered_once(tmp_path: Path) -> None:
    decide = lambda n: "451 4.3.0 try again later" if n <= 2 else "250 2.0.0 queued"  # noqa: E731
    with Sink(decide=decide) as sink:
        a = a_test(tmp_path, sink, retry_interval=0.5, max_retry_interval=1.0)
        with running(a) as srv:
            submit(a, srv.bound["submission"][1], message("retried"))
            wait_for(lambda: sink.accepted, what="the third attempt")
            wait_for(lambda: not spool_entries(a), what="the spool to empty")
        first, second, third = sink.transactions
        # attempt 2 after retry_interval, attempt 3 after twice that (the cap is 1.0)
        assert 0.45 <= second - first < 1.5
        assert 0.95 <= third - second < 2.0
        assert len(sink.accepted) == 1
        assert a.maildir_new("alice") == []


def test_a_hop_that_always_defers_gets_a_dsn_after_the_lifetime(tmp_path: Path) -> None:
    with Sink(decide=lambda n: "451 4.3.0 mailbox busy, try later") as sink:
        a = a_test(tmp_path, sink, retry_interval=0.2, max_retry_interval=0.2, lifetime=1.2)
        with running(a) as srv:
            submit(a, srv.bound["submission"][1], message("never"))
            (dsn,) = wait_for(lambda: a.maildir_new("alice"), what="the DSN")
            wait_for(lambda: not spool_entries(a), what="the spool to empty")
        assert len(sink.transactions) >= 3
        assert sink.accepted == []
        msg, blocks = delivery_status(dsn)
        assert msg["To"].addresses[0].addr_spec == "alice@a.test"
        assert msg["Auto-Submitted"] == "auto-replied"
        assert blocks[0]["Reporting-MTA"] == "dns; mail.a.test"
        (rcpt,) = blocks[1:]
        assert rcpt["Final-Recipient"] == "rfc822; carol@b.test"
        assert rcpt["Action"] == "failed"
        assert rcpt["Status"] == "4.3.0"
        assert "451 4.3.0 mailbox busy" in rcpt["Diagnostic-Code"]
        headers = list(msg.iter_parts())[2].get_content()
        assert "Subject: never" in headers
        assert "body of never" not in headers


def test_a_5xx_fails_that_recipient_at_once_and_the_others_are_delivered(tmp_path: Path) -> None:
    with Sink(rcpt={"nobody@b.test": "550 5.1.1 no such user"}) as sink:
        a = a_test(tmp_path, sink)
        with running(a) as srv:
            submit(
                a,
                srv.bound["submission"][1],
                message("mixed"),
                to=("carol@b.test", "nobody@b.test"),
            )
            (dsn,) = wait_for(lambda: a.maildir_new("alice"), what="the DSN")
            wait_for(lambda: not spool_entries(a), what="the spool to empty")
        (got,) = sink.accepted
        assert got.recipients == ("carol@b.test",)
        _, blocks = delivery_status(dsn)
        (rcpt,) = blocks[1:]
        assert rcpt["Final-Recipient"] == "rfc822; nobody@b.test"
        assert rcpt["Status"] == "5.1.1"
        assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
        assert rcpt["Remote-MTA"] == "dns; 127.0.0.1"


def test_no_dsn_for_a_message_with_a_null_sender(tmp_path: Path) -> None:
    with Sink(rcpt={"nobody@b.test": "550 5.1.1 no such user"}) as sink:
        a = a_test(tmp_path, sink)
        with running(a) as srv:
            submit(
                a, srv.bound["submission"][1], message("bounce"), sender="", to=("nobody@b.test",)
            )
            wait_for(lambda: not spool_entries(a), what="the failed entry to go")
            time.sleep(0.5)  # a DSN, if one were made, would be queued or stored by now
            assert spool_entries(a) == []
        assert a.maildir_new("alice") == []
        assert sink.accepted == []


def test_a_dsn_for_a_remote_sender_is_relayed_with_a_null_sender(tmp_path: Path) -> None:
    # submission only takes the user's own addresses, so the entry is put in the spool
    # directly (as a forwarding rule would) before the server starts and finds it
    with Sink(rcpt={"nobody@b.test": "550 5.1.1 no such user"}) as sink:
        a = write_instance(
            tmp_path / "a",
            domain="a.test",
            relay={
                "routes": {"b.test": f"127.0.0.1:{sink.port}", "c.test": f"127.0.0.1:{sink.port}"}
            },
        )
        spool = OutboundSpool(a.data_dir / "spool")
        spool.enqueue_sync(
            "dave@c.test", ["nobody@b.test"], message("forwarded", sender="dave@c.test")
        )
        with running(a):
            (got,) = wait_for(lambda: sink.accepted, what="the DSN at the sender's server")
            wait_for(lambda: not spool_entries(a), what="the spool to empty")
        assert got.sender == ""
        assert got.recipients == ("dave@c.test",)
        _, blocks = delivery_status(got.data)
        assert blocks[1]["Final-Recipient"] == "rfc822; nobody@b.test"


def test_a_delay_warning_comes_once_before_the_final_dsn(tmp_path: Path) -> None:
    with Sink(decide=lambda n: "451 4.4.5 system congested") as sink:
        a = a_test(
            tmp_path,
            sink,
            retry_interval=0.2,
            max_retry_interval=0.2,
            lifetime=1.5,
            delay_warning=0.5,
        )
        with running(a) as srv:
            submit(a, srv.bound["submission"][1], message("slow"))
            notices = wait_for(lambda: len(a.maildir_new("alice")) >= 2 and a.maildir_new("alice"))
            wait_for(lambda: not spool_entries(a), what="the spool to empty")
        actions = sorted(delivery_status(n)[1][1]["Action"] for n in notices)
        assert actions == ["delayed", "failed"]
        delayed = next(n for n in notices if b"Action: delayed" in n)
        assert "Will-Retry-Until" in delivery_status(delayed)[1][1]


def test_the_queue_survives_a_restart_and_keeps_its_attempt_count(tmp_path: Path) -> None:
    refusing = True
    with Sink(decide=lambda n: "451 4.3.0 later" if refusing else "250 2.0.0 ok") as sink:
        a = a_test(tmp_path, sink, retry_interval=0.3, max_retry_interval=0.3)
        with running(a) as srv:
            submit(a, srv.bound["submission"][1], message("persistent"))
            wait_for(lambda: len(sink.transactions) >= 2, what="two attempts")
        (queue_id,) = spool_entries(a)
        state = (a.data_dir / "spool" / queue_id / "state.json").read_text()
        assert '"attempts"' in state
        refusing = False
        with running(a):
            wait_for(lambda: sink.accepted, what="delivery after the restart")
            wait_for(lambda: not spool_entries(a), what="the spool to empty")
        assert len(sink.accepted) == 1


def test_two_instances_a_submission_at_a_lands_in_the_maildir_at_b(tmp_path: Path) -> None:
    b = write_instance(tmp_path / "b", domain="b.test", users=("carol",), listeners=("mx",))
    with running(b) as b_srv:
        b_port = b_srv.bound["mx"][1]
        route = {
            "host": "127.0.0.1",
            "port": b_port,
            "tls": "verify",
            "ca_file": str(b.ca_file),
            "tls_name": "mail.b.test",
        }
        a = write_instance(tmp_path / "a", domain="a.test", relay={"routes": {"b.test": route}})
        with running(a) as a_srv:
            submit(a, a_srv.bound["submission"][1], message("across"))
            (got,) = wait_for(lambda: b.maildir_new("carol"), what="the message at b.test")
            wait_for(lambda: not spool_entries(a), what="a's spool to empty")
    received = parse(got).get_all("Received") or []
    assert len(received) == 2
    assert "by mail.b.test with ESMTPS" in " ".join(received[0].split())  # TLS on the hop
    assert "by mail.a.test with ESMTPSA" in " ".join(received[1].split())
    assert parse(got)["Subject"] == "across"


def test_sigkill_while_relaying_then_restart_delivers_every_message_exactly_once(
    tmp_path: Path,
) -> None:
    count = 5
    with Sink(hold=3) as sink:
        a = a_test(tmp_path, sink, max_deliveries=1, max_per_destination=1)
        log = tmp_path / "a.log"
        first = ServerProcess(a.config, log)
        try:
            wait_for(a.ca_file.is_file, what="the development CA")
            for i in range(count):
                submit(a, first.ports["submission"], message(f"kill {i}"))
            assert sink.holding.wait(20), "the third transaction never reached the final dot"
        finally:
            first.kill()  # while the sink holds the reply to the third message
        sink.release.set()
        assert len(sink.accepted) == 2
        second = ServerProcess(a.config, log)
        try:
            wait_for(lambda: len(sink.accepted) >= count, timeout=20, what="all messages")
            wait_for(lambda: not spool_entries(a), what="the spool to empty")
            time.sleep(0.5)
        finally:
            second.stop()
    ids = sorted(parse(m.data)["Message-ID"] for m in sink.accepted)
    assert ids == sorted(f"<kill-{i}@a.test>" for i in range(count))


def mx_instance(tmp_path: Path, dns_port: int, mx_port: int) -> Instance:
    """a.test with no static routes: next hops come from MX lookups at the fake DNS."""
    return write_instance(
        tmp_path / "a",
        domain="a.test",
        relay={
            "dns": {"nameservers": ["127.0.0.1"], "port": dns_port, "timeout": 1},
            "mx_port": mx_port,
        },
    )


def test_mx_lookup_at_the_configured_resolver_finds_the_next_hop(tmp_path: Path) -> None:
    records = {
        "b.test": {"MX": ["10 mx1.b.test.", "20 mx2.b.test."]},
        "mx1.b.test": {"A": ["127.0.0.1"]},
        "mx2.b.test": {"A": ["127.0.0.1"]},
    }
    with Sink() as sink, FakeDns(records) as dns_server:
        a = mx_instance(tmp_path, dns_server.port, sink.port)
        with running(a) as srv:
            submit(a, srv.bound["submission"][1], message("by mx"))
            wait_for(lambda: sink.accepted, what="delivery through the MX")
            wait_for(lambda: not spool_entries(a), what="the spool to empty")
        assert ("b.test", "MX") in dns_server.queries
        assert ("mx1.b.test", "A") in dns_server.queries
        assert len(sink.accepted) == 1


@pytest.mark.parametrize(
    ("records", "status"),
    [
        ({"b.test": {"MX": ["0 ."]}}, "5.1.10"),  # null MX, RFC 7505 §3
        ({"other.test": {"A": ["127.0.0.1"]}}, "5.1.2"),  # b.test does not exist
    ],
    ids=["null-mx", "nxdomain"],
)
def test_a_domain_that_takes_no_mail_bounces_at_once(
    tmp_path: Path, records: dict[str, dict[str, list[str]]], status: str
) -> None:
    with FakeDns(records) as dns_server:
        a = mx_instance(tmp_path, dns_server.port, 1)
        with running(a) as srv:
            submit(a, srv.bound["submission"][1], message("nowhere"))
            (dsn,) = wait_for(lambda: a.maildir_new("alice"), what="the DSN")
            wait_for(lambda: not spool_entries(a), what="the spool to empty")
        _, blocks = delivery_status(dsn)
        assert blocks[1]["Status"] == status
        assert blocks[1]["Action"] == "failed"


def test_deliveries_to_one_destination_respect_the_concurrency_limit(tmp_path: Path) -> None:
    count = 6
    with Sink(delay=0.3) as sink:
        a = a_test(tmp_path, sink, max_per_destination=2)
        with running(a) as srv:
            for i in range(count):
                submit(a, srv.bound["submission"][1], message(f"parallel {i}"))
            wait_for(lambda: len(sink.accepted) == count, what="every message")
            wait_for(lambda: not spool_entries(a), what="the spool to empty")
        assert sink.most_connected == 2
