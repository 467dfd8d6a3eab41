"""Interop: real POP3 clients (fetchmail, getmail6) download from the reference server.

Each test stores messages in alice's Maildir, runs one client against the ``pop3``
listener (cleartext + STLS; login is refused before STLS) or the ``pop3s`` listener
(implicit TLS), verifying the certificate against the development CA, and compares:

* what the client delivered to files is byte for byte what the server stores, once the
  client's own, precisely known additions are accounted for (fetchmail: one Received:
  field it prepends; getmail6: a Return-Path: field, and LF line ends);
* "delete" leaves the maildrop empty (on disk and by POP3 STAT), "keep" leaves it as it
  was; a second "keep" run fetches nothing (fetchmail's UIDL idfile, getmail's oldmail
  file), and a third fetches exactly a message stored in between.

getmail6 has no STLS for POP3, so it runs on ``pop3s`` only; on ``pop3`` it must be
refused before it can send a password. fetchmail runs on both. See docs/interop.md;
the client programs are started by :mod:`pop3_clients`.
"""

from __future__ import annotations

import dataclasses
import email.utils
import re
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from pop3_clients import (
    ClientRun,
    Fetchmail,
    Getmail,
    Pop3Account,
    client_host,
    fetchmail_version,
    getmail_expected,
    getmail_maildir,
    local_user,
    message_id,
    require,
    split_fetchmail_received,
)

pytestmark = pytest.mark.interop

USER = "alice"


def _message(n: int, subject: bytes, body: bytes, extra_headers: bytes = b"") -> bytes:
    # header lines stay within 78 characters: getmail re-folds longer ones
    return (
        b"Date: Fri, 27 Nov 2026 10:00:%02d +0000\r\n" % n
        + b"From: Sender <sender@remote.test>\r\n"
        + b"To: Alice <alice@example.test>\r\n"
        + b"Subject: "
        + subject
        + b"\r\n"
        + b"Message-ID: <interop-%d@remote.test>\r\n" % n
        + extra_headers
        + b"\r\n"
        + body
    )


MESSAGES: tuple[bytes, ...] = (
    _message(1, b"plain", b"Hello Alice.\r\n"),
    # lines that must be byte-stuffed on the wire: ".", "..", ".x"
    _message(2, b"dots", b".\r\n..\r\n.hidden\r\n..double\r\n...\r\nend .\r\n"),
    _message(
        3,
        b"8bit",
        "Grüße, café, 日本語\r\n".encode(),
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n",
    ),
    _message(4, b"folded\r\n subject", b"body\r\n", b"X-Folded: one\r\n\ttwo\r\n three\r\n"),
    _message(5, b"empty body", b""),
    _message(6, b"998-octet line", b"y" * 996 + b"\r\n"),
    _message(
        7,
        b"multipart",
        b"preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\npart one\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAAECAwQFBgcICQ==\r\n--b1--\r\n",
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n',
    ),
    _message(8, b"From line", b"From the start\r\n>From quoted\r\ntrailing space \r\n\r\n\r\n"),
    # about 300 KiB: many reads and writes on both sides
    _message(9, b"big", b"".join(b"%06d " % i + b"z" * 69 + b"\r\n" for i in range(4000))),
)
LATE_MESSAGE = _message(10, b"stored after the first run", b"Late.\r\n")


# -- the server side -------------------------------------------------------------------------


def account(mail_server, listener: str) -> Pop3Account:
    host, port = mail_server.addr(listener)
    return Pop3Account(
        host=host,
        port=port,
        user=USER,
        password=mail_server.passwords[USER],
        ca_file=mail_server.ca_file,
        # the certificate's DNS name (it also has IP 127.0.0.1, which fetchmail cannot match)
        cert_name=mail_server.config.hostname,
    )


def store(mail_server, messages: Iterable[bytes]) -> list[bytes]:
    """Deliver ``messages`` to alice; returns them as stored (read back from the files)."""
    new = mail_server.config.mail_dir / USER / "new"
    return [(new / mail_server.deliver(USER, m)).read_bytes() for m in messages]


def on_disk(mail_server) -> list[bytes]:
    """Every message file in alice's Maildir (``new/`` and ``cur/``), sorted by content."""
    box: Path = mail_server.config.mail_dir / USER
    files = [p for sub in ("new", "cur") if (box / sub).is_dir() for p in (box / sub).iterdir()]
    return sorted(p.read_bytes() for p in files)


def pop3_stat(mail_server) -> tuple[int, int]:
    """(messages, octets) in alice's maildrop, by STAT over STLS."""
    mail_server.wait_idle()  # the client's session has ended and released the maildrop lock
    client = mail_server.pop3(USER)
    try:
        count, octets = client.stat()
    finally:
        client.quit()
    return count, octets


def assert_kept(mail_server, stored: list[bytes]) -> None:
    assert on_disk(mail_server) == sorted(stored), "the maildrop changed on disk"
    assert pop3_stat(mail_server) == (len(stored), sum(len(m) for m in stored))


def assert_emptied(mail_server) -> None:
    assert on_disk(mail_server) == [], "messages are left in the Maildir"
    assert pop3_stat(mail_server) == (0, 0)


def assert_same_messages(got: list[bytes], expected: list[bytes], run: ClientRun) -> None:
    """The same messages, in any order; on a difference, say which and show the client log."""
    if Counter(got) == Counter(expected):
        return
    want = {message_id(m): m for m in expected}
    have = {message_id(m): m for m in got}
    problems = [f"not delivered: {mid!r}" for mid in want.keys() - have.keys()]
    problems += [f"unexpected: {mid!r}" for mid in have.keys() - want.keys()]
    if len(got) != len(have):
        problems.append(f"{len(got)} files for {len(have)} distinct messages")
    for mid in sorted(want.keys() & have.keys()):
        a, b = want[mid], have[mid]
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
            at = min(len(a), len(b)) if at is None else at
            problems.append(
                f"{mid!r} differs at octet {at} (expected {len(a)} octets, got {len(b)}):\n"
                f"  expected ...{a[max(0, at - 40) : at + 40]!r}\n"
                f"  got      ...{b[max(0, at - 40) : at + 40]!r}"
            )
    raise AssertionError("\n".join(problems) + f"\n\nclient log:\n{run}")


# -- fetchmail -------------------------------------------------------------------------------

TRANSPORTS = {"stls": ("pop3", False), "pop3s": ("pop3s", True)}


def fetchmail_for(mail_server, tmp_path: Path, transport: str, *, keep: bool) -> Fetchmail:
    require("fetchmail")
    listener, implicit = TRANSPORTS[transport]
    return Fetchmail(
        tmp_path / "fetchmail", account(mail_server, listener), implicit_tls=implicit, keep=keep
    )


def unwrap_fetchmail(delivered: list[bytes]) -> list[bytes]:
    """The messages without the one Received: field fetchmail prepends, which is checked."""
    host = client_host()
    messages = []
    for data in delivered:
        fields, message = split_fetchmail_received(data)
        assert fields["server"] == "127.0.0.1", fields
        assert fields["address"] == "127.0.0.1", fields
        assert fields["by"] == host.name, fields
        assert fields["version"] == fetchmail_version(), fields
        assert fields["recipient"] == f"{local_user()}@localhost", fields
        email.utils.parsedate_to_datetime(fields["date"])  # raises if it is no date
        messages.append(message)
    return messages


def assert_fetchmail_tls(run: ClientRun, transport: str) -> None:
    """The session was encrypted the intended way, and the login came after that."""
    assert re.search(r"SSL/TLS: using protocol TLSv1\.[23]", run.log), run
    if transport == "stls":
        assert "POP3> STLS" in run.log, run
        assert "upgrade to TLS succeeded" in run.log, run
        assert run.log.index("upgrade to TLS succeeded") < run.log.index("POP3> PASS"), run
    else:
        assert "STLS" not in run.log, run


@pytest.mark.parametrize("transport", ["stls", "pop3s"])
def test_fetchmail_delete(mail_server, tmp_path: Path, transport: str) -> None:
    """fetchall + nokeep: RETR and DELE of every message; the maildrop is empty after."""
    fetchmail = fetchmail_for(mail_server, tmp_path, transport, keep=False)
    stored = store(mail_server, MESSAGES)

    run = fetchmail.run()
    assert run.returncode == 0, run
    assert_fetchmail_tls(run, transport)
    assert re.search(r"POP3> RETR \d", run.log), run
    assert_same_messages(unwrap_fetchmail(fetchmail.delivered()), stored, run)
    assert_emptied(mail_server)


@pytest.mark.parametrize("transport", ["stls", "pop3s"])
def test_fetchmail_keep_with_uidl(mail_server, tmp_path: Path, transport: str) -> None:
    """keep + uidl: everything once (by TOP n 99999999), then nothing, then only the new one."""
    fetchmail = fetchmail_for(mail_server, tmp_path, transport, keep=True)
    stored = store(mail_server, MESSAGES)

    run = fetchmail.run()
    assert run.returncode == 0, run
    assert_fetchmail_tls(run, transport)
    assert_same_messages(unwrap_fetchmail(fetchmail.delivered()), stored, run)
    assert_kept(mail_server, stored)

    again = fetchmail.run()
    assert again.returncode == 1, again  # PS_NOMAIL: every UIDL was seen before
    assert f"{len(stored)} messages ({len(stored)} seen)" in again.log, again
    assert len(fetchmail.delivered()) == len(stored), again

    late = store(mail_server, [LATE_MESSAGE])
    third = fetchmail.run()
    assert third.returncode == 0, third
    new = fetchmail.delivered()[len(stored) :]
    assert_same_messages(unwrap_fetchmail(new), late, third)
    assert_kept(mail_server, stored + late)


def test_fetchmail_reads_files_other_programs_put_in_the_maildir(
    mail_server, tmp_path: Path
) -> None:
    """A file with LF line ends in ``new/`` and a read one in ``cur/`` (``:2,S``), as other
    MDAs and IMAP servers leave them: fetchmail gets both, with CRLF line ends."""
    fetchmail = fetchmail_for(mail_server, tmp_path, "stls", keep=False)
    box: Path = mail_server.server.store.ensure_mailbox(USER)
    foreign = {
        box / "new" / "1795000000.M1P1Q1.mda.test": MESSAGES[1].replace(b"\r\n", b"\n"),
        box / "cur" / "1795000001.M2P1Q2.mda.test:2,S": MESSAGES[2],
    }
    for path, data in foreign.items():
        path.write_bytes(data)
    expected = [MESSAGES[1], MESSAGES[2]]
    assert pop3_stat(mail_server) == (2, sum(len(m) for m in expected))

    run = fetchmail.run()
    assert run.returncode == 0, run
    assert_same_messages(unwrap_fetchmail(fetchmail.delivered()), expected, run)
    assert_emptied(mail_server)


def test_fetchmail_refuses_a_certificate_it_cannot_verify(
    mail_server, tmp_path: Path, test_certs
) -> None:
    """With another CA as trust anchor, fetchmail stops before it logs in (sslcertck works)."""
    require("fetchmail")
    wrong = dataclasses.replace(account(mail_server, "pop3"), ca_file=test_certs.ca_file)
    fetchmail = Fetchmail(tmp_path / "fetchmail", wrong, implicit_tls=False, keep=False)
    stored = store(mail_server, MESSAGES[:2])

    run = fetchmail.run()
    assert run.returncode not in (0, 1), run
    assert "certificate verify failed" in run.log, run
    assert "POP3> PASS" not in run.log and "POP3> USER" not in run.log, run
    assert fetchmail.delivered() == []
    assert_kept(mail_server, stored)


# -- getmail6 --------------------------------------------------------------------------------


@pytest.fixture
def maildir(tmp_path: Path) -> Iterator[tuple[Path, str | None]]:
    require("getmail")
    with getmail_maildir(tmp_path) as found:
        yield found


def getmail_for(
    mail_server, tmp_path: Path, maildir, listener: str = "pop3s", *, delete: bool
) -> Getmail:
    path, user = maildir
    return Getmail(
        tmp_path / "getmail",
        account(mail_server, listener),
        implicit_tls=listener == "pop3s",
        delete=delete,
        maildir=path,
        maildir_user=user,
    )


def test_getmail_pop3s_delete(mail_server, tmp_path: Path, maildir) -> None:
    """SimplePOP3SSLRetriever, delete: every message into the Maildir, none left behind."""
    getmail = getmail_for(mail_server, tmp_path, maildir, delete=True)
    stored = store(mail_server, MESSAGES)

    run = getmail.run()
    assert run.returncode == 0, run
    assert f"{len(stored)} messages" in run.log and "0 skipped" in run.log, run
    assert_same_messages(getmail.delivered(), [getmail_expected(m) for m in stored], run)
    assert_emptied(mail_server)


def test_getmail_pop3s_keep_with_oldmail(mail_server, tmp_path: Path, maildir) -> None:
    """delete = false, read_all = false: everything once, then nothing, then only the new one."""
    getmail = getmail_for(mail_server, tmp_path, maildir, delete=False)
    stored = store(mail_server, MESSAGES)

    run = getmail.run()
    assert run.returncode == 0, run
    expected = [getmail_expected(m) for m in stored]
    assert_same_messages(getmail.delivered(), expected, run)
    assert_kept(mail_server, stored)

    again = getmail.run()
    assert again.returncode == 0, again
    assert f"0 messages (0 bytes) retrieved, {len(stored)} skipped" in again.log, again
    assert_same_messages(getmail.delivered(), expected, again)

    late = store(mail_server, [LATE_MESSAGE])
    third = getmail.run()
    assert third.returncode == 0, third
    assert f"1 messages ({len(late[0])} bytes) retrieved, {len(stored)} skipped" in third.log
    assert_same_messages(getmail.delivered(), [*expected, getmail_expected(late[0])], third)
    assert_kept(mail_server, stored + late)


def test_getmail_cleartext_pop3_is_refused_before_the_password(
    mail_server, tmp_path: Path, maildir
) -> None:
    """getmail6 has no STLS: on ``pop3`` its USER is refused, so no password is sent."""
    getmail = getmail_for(mail_server, tmp_path, maildir, "pop3", delete=True)
    stored = store(mail_server, MESSAGES[:2])

    run = getmail.run()
    assert run.returncode != 0, run
    assert "cleartext login is disabled" in run.log, run
    assert getmail.delivered() == []
    assert_kept(mail_server, stored)


def test_getmail_refuses_a_certificate_it_cannot_verify(
    mail_server, tmp_path: Path, maildir, test_certs
) -> None:
    """With another CA in ca_certs, getmail stops in the TLS handshake, before any login."""
    path, user = maildir
    wrong = dataclasses.replace(account(mail_server, "pop3s"), ca_file=test_certs.ca_file)
    getmail = Getmail(
        tmp_path / "getmail", wrong, implicit_tls=True, delete=True, maildir=path, maildir_user=user
    )
    stored = store(mail_server, MESSAGES[:2])

    run = getmail.run()
    assert run.returncode != 0, run
    assert "CERTIFICATE_VERIFY_FAILED" in run.log, run
    assert getmail.delivered() == []
    assert_kept(mail_server, stored)


# -- no name lookups ---------------------------------------------------------------------------

_INET_CONNECT = re.compile(
    r"connect\(\d+, \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\), "
    r"(?:sin_addr=inet_addr\(\"([^\"]+)\"\)|[^}]*inet_pton\(AF_INET6, \"([^\"]+)\")"
)


def traced_run(runner: Fetchmail | Getmail, trace: Path) -> ClientRun:
    """``runner.run()`` under ``strace -f`` (network calls and file opens) into ``trace``."""
    strace = require("strace")
    probe = subprocess.run([strace, "-o", "/dev/null", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode(errors='replace')}")
    return runner.run(
        wrap=[strace, "-f", "-qq", "-e", "trace=network,open,openat", "-o", str(trace)]
    )


def assert_no_name_lookups(trace: Path, port: int) -> None:
    """No UDP socket, nothing to port 53, every inet connect() to 127.0.0.1:``port``.

    In a UTS namespace of their own (see pop3_clients.client_host), the clients do not
    even open /etc/hosts: they resolve no name at all.
    """
    lines = trace.read_text(encoding="utf-8", errors="replace").splitlines()
    udp = [ln for ln in lines if "SOCK_DGRAM" in ln and "AF_INET" in ln]
    assert not udp, f"a UDP socket: {udp}"
    dns = [ln for ln in lines if "htons(53)" in ln]
    assert not dns, f"something went to port 53: {dns}"
    connects = [m.groups() for ln in lines if (m := _INET_CONNECT.search(ln))]
    assert connects, "no connect() seen in the trace"
    for c_port, v4, v6 in connects:
        assert (int(c_port), v4 or v6) == (port, "127.0.0.1"), (c_port, v4, v6)
    if client_host().private:
        hosts = [ln for ln in lines if "/etc/hosts" in ln and "ENOENT" not in ln]
        assert not hosts, f"the client read /etc/hosts: {hosts}"


def test_fetchmail_makes_no_name_lookups(mail_server, tmp_path: Path) -> None:
    fetchmail = fetchmail_for(mail_server, tmp_path, "stls", keep=True)
    store(mail_server, MESSAGES[:1])
    run = traced_run(fetchmail, tmp_path / "strace.log")
    assert run.returncode == 0, run
    assert len(fetchmail.delivered()) == 1, run
    assert_no_name_lookups(tmp_path / "strace.log", mail_server.addr("pop3")[1])


def test_getmail_makes_no_name_lookups(mail_server, tmp_path: Path, maildir) -> None:
    getmail = getmail_for(mail_server, tmp_path, maildir, delete=False)
    store(mail_server, MESSAGES[:1])
    run = traced_run(getmail, tmp_path / "strace.log")
    assert run.returncode == 0, run
    assert len(getmail.delivered()) == 1, run
    assert_no_name_lookups(tmp_path / "strace.log", mail_server.addr("pop3s")[1])
