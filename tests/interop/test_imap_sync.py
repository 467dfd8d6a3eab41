"""Interop: a real IMAP sync client, mbsync (isync), against the reference server.

alice's INBOX gets 1,000 messages; mbsync syncs it to a local Maildir over the ``imap``
listener (STARTTLS; LOGIN is refused before it) or ``imaps`` (implicit TLS), verifying
the certificate against the development CA, and the test checks:

* **first sync**: every message arrived once, byte for byte what the server stores once
  mbsync's own, precisely known changes are accounted for (one ``X-TUID:`` field added
  at the end of the header, LF line ends), each file named with the server's UID for
  that message; the server's messages and flags are untouched (mbsync fetches with
  BODY.PEEK, nothing gets \\Seen);
* **second sync**, after one message was marked seen and flagged in the Maildir (renamed
  to ``cur/...:2,FS``) and another was deleted there: the server shows exactly
  ``\\Flagged \\Seen`` on the first (IMAP FETCH FLAGS), the second is expunged (gone
  from FETCH and from the server's Maildir), nothing else changed;
* **third sync**: changes nothing: mbsync's counters show 0 changes, and the server's
  messages and flags, the local Maildir and mbsync's sync state are as before.

mbsync is started by :mod:`imap_clients` (see there, and docs/interop.md, for the
tunnel it connects through and why).
"""

from __future__ import annotations

import dataclasses
import imaplib
import re
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
from imap_clients import (
    ImapAccount,
    Mbsync,
    counters,
    imap_commands,
    mbsync_version,
    near_uid_and_flags,
    require_mbsync,
    split_tuid,
)
from pop3_clients import ClientRun, client_host, message_id, require

pytestmark = pytest.mark.interop

USER = "alice"
MANY = 1000


# -- messages ----------------------------------------------------------------------------------

_BODIES: tuple[tuple[bytes, bytes], ...] = (
    (b"", b"Hello Alice,\r\n\r\nthe minutes are attached below.\r\n\r\n-- \r\nS.\r\n"),
    # lines that are special elsewhere: ".", "..", "From "
    (b"", b".\r\n..\r\n.hidden\r\nFrom the start\r\n>From quoted\r\ntrailing space \r\n"),
    (
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n",
        "Grüße, café, 日本語\r\n".encode(),
    ),
    (b"X-Folded: one\r\n\ttwo\r\n three\r\n", b"folded header above\r\n"),
    (b"", b""),  # empty body
    (b"", b"y" * 996 + b"\r\n"),  # a 998-octet line
    (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n',
        b"preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\npart one\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAAECAwQFBgcICQ==\r\n--b1--\r\n",
    ),
)


def make_message(n: int) -> bytes:
    """Message ``n``: realistic headers, one of the bodies above, and filler text of a
    size that varies with ``n`` (222 octets to 6.5 KB, 3.1 MB for the first 1,000)."""
    extra, body = _BODIES[n % len(_BODIES)]
    filler = b"".join(
        b"line %04d of message %d: lorem ipsum dolor sit amet\r\n" % (i, n)
        for i in range((n * 37) % 100)
    )
    return (
        b"Return-Path: <sender%d@remote.test>\r\n" % (n % 13)
        + b"Date: Fri, 27 Nov 2026 %02d:%02d:%02d +0000\r\n"
        % (n // 3600 % 24, n // 60 % 60, n % 60)
        + b"From: Sender %d <sender%d@remote.test>\r\n" % (n % 13, n % 13)
        + b"To: Alice <alice@example.test>\r\n"
        + b"Subject: message %d of the sync test\r\n" % n
        + b"Message-ID: <sync-%d@remote.test>\r\n" % n
        + extra
        + b"\r\n"
        + body
        + filler
    )


# -- the server side ---------------------------------------------------------------------------


def account(mail_server, listener: str, ca_file: Path | None = None) -> ImapAccount:
    host, port = mail_server.addr(listener)
    return ImapAccount(
        host=host,
        port=port,
        user=USER,
        password=mail_server.passwords[USER],
        ca_file=ca_file or mail_server.ca_file,
        cert_name=mail_server.config.hostname,  # a DNS name of the certificate: see imap_clients
    )


def store(mail_server, messages: Iterable[bytes]) -> dict[bytes, bytes]:
    """Deliver ``messages`` to alice; returns them as stored, by Message-ID."""
    new = mail_server.config.mail_dir / USER / "new"
    stored = [(new / mail_server.deliver(USER, m)).read_bytes() for m in messages]
    return {message_id(m): m for m in stored}


def server_files(mail_server) -> dict[str, bytes]:
    """alice's Maildir on the server (``new/`` and ``cur/``): file name -> content."""
    box: Path = mail_server.config.mail_dir / USER
    return {
        p.name: p.read_bytes()
        for sub in ("new", "cur")
        if (box / sub).is_dir()
        for p in (box / sub).iterdir()
    }


@dataclasses.dataclass(frozen=True)
class ServerMessage:
    uid: int
    flags: frozenset[str]


_FETCH_FLAGS = re.compile(rb"^\d+ \(UID (\d+) FLAGS \(([^)]*)\)\)$")
_FETCH_MID = re.compile(rb"^\d+ \(UID (\d+) BODY\[HEADER\.FIELDS \(MESSAGE-ID\)\] \{\d+\}$")


def server_view(mail_server) -> dict[bytes, ServerMessage]:
    """alice's INBOX by IMAP (EXAMINE: read-only, so looking changes nothing): for each
    Message-ID its UID and flags."""
    mail_server.wait_idle()  # mbsync's session has ended
    client: imaplib.IMAP4 = mail_server.imap(USER)
    try:
        typ, _ = client.select("INBOX", readonly=True)
        assert typ == "OK"
        typ, data = client.fetch("1:*", "(UID FLAGS)")
        assert typ == "OK", data
        flags: dict[int, frozenset[str]] = {}
        for line in data:
            assert isinstance(line, bytes), line
            m = _FETCH_FLAGS.match(line)
            assert m is not None, line
            flags[int(m.group(1))] = frozenset(m.group(2).decode().split())
        typ, data = client.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert typ == "OK", data
        view: dict[bytes, ServerMessage] = {}
        for item in data:
            if not isinstance(item, tuple):
                assert item == b")", item
                continue
            m = _FETCH_MID.match(item[0])
            assert m is not None, item
            uid = int(m.group(1))
            mid = message_id(item[1])
            assert mid not in view, f"{mid!r} twice"
            view[mid] = ServerMessage(uid, flags[uid])
        assert len(view) == len(flags)
        client.close()
    finally:
        client.logout()
    return view


# -- the near side -------------------------------------------------------------------------------


def near_expected(stored: bytes) -> bytes:
    """What mbsync writes for ``stored``, once its X-TUID field is taken out: LF line ends."""
    return stored.replace(b"\r\n", b"\n")


def near_messages(mbsync: Mbsync) -> dict[bytes, tuple[Path, int, str, bytes]]:
    """Each local message by Message-ID: (file, UID from its name, flag letters, content
    without the X-TUID field, which must be the last header field)."""
    found: dict[bytes, tuple[Path, int, str, bytes]] = {}
    for name, path in mbsync.files().items():
        uid, flags = near_uid_and_flags(name)
        _, rest = split_tuid(path.read_bytes())
        mid = message_id(rest)
        assert mid not in found, f"{mid!r} twice in the Maildir"
        found[mid] = (path, uid, flags, rest)
    return found


def assert_synced(
    near: dict[bytes, tuple[Path, int, str, bytes]],
    stored: dict[bytes, bytes],
    server: dict[bytes, ServerMessage],
    run: ClientRun,
) -> None:
    """The same messages on both sides, each byte for byte (after mbsync's changes) and
    under the server's UID; on a difference, says which and shows the client log."""
    problems = [f"not in the Maildir: {mid!r}" for mid in stored.keys() - near.keys()]
    problems += [f"unexpected in the Maildir: {mid!r}" for mid in near.keys() - stored.keys()]
    for mid in sorted(stored.keys() & near.keys()):
        _, uid, _, got = near[mid]
        want = near_expected(stored[mid])
        if got != want:
            at = next((i for i, (x, y) in enumerate(zip(want, got, strict=False)) if x != y), None)
            at = min(len(want), len(got)) if at is None else at
            problems.append(
                f"{mid!r} differs at octet {at} (expected {len(want)} octets, got {len(got)}):\n"
                f"  expected ...{want[max(0, at - 40) : at + 40]!r}\n"
                f"  got      ...{got[max(0, at - 40) : at + 40]!r}"
            )
        if uid != server[mid].uid:
            problems.append(
                f"{mid!r}: U={uid} in the file name, the server's UID is {server[mid].uid}"
            )
    if problems:
        shown = "\n".join(problems[:20]) + (
            f"\n... {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise AssertionError(f"{shown}\n\nclient log:\n{run}")


def assert_tls(run: ClientRun) -> None:
    """The session was encrypted before the login, and the login worked."""
    assert run.returncode == 0, run
    encrypted, login = run.log.find("Connection is now encrypted"), run.log.find("Logging in...")
    assert 0 <= encrypted < login, run


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["imap", "imaps"])
def test_mbsync_two_way_sync(mail_server, tmp_path: Path, listener: str) -> None:
    """1,000 messages down; a flag change and a deletion up; then a sync with nothing to do.

    Both listeners: STARTTLS (``imap``) and implicit TLS (``imaps``).
    """
    require_mbsync()
    count = MANY  # messages
    mbsync = Mbsync(
        tmp_path / "mbsync", account(mail_server, listener), implicit_tls=listener == "imaps"
    )
    stored = store(mail_server, (make_message(n) for n in range(count)))
    on_server = server_files(mail_server)
    assert len(on_server) == count

    # 1: everything down, nothing changed on the server
    first = mbsync.run()
    assert_tls(first)
    c = counters(first)
    assert (c.near_new, c.far_new, c.far_flags, c.far_deleted) == (
        (count, count),
        (0, 0),
        (0, 0),
        (0, 0),
    ), first
    server = server_view(mail_server)
    assert set(server) == set(stored)
    assert all(m.flags == frozenset() for m in server.values()), "mbsync set flags on the server"
    near = near_messages(mbsync)
    assert_synced(near, stored, server, first)
    assert all(flags == "" for _, _, flags, _ in near.values()), first
    assert sorted(server_files(mail_server).values()) == sorted(on_server.values())

    # 2: mark one message seen and flagged, delete another, both in the local Maildir
    ids = sorted(stored)
    flagged, deleted = ids[count // 3], ids[2 * count // 3]
    path, uid, _, _ = near[flagged]
    path.rename(mbsync.maildir / "cur" / (path.name.rsplit(":2,", 1)[0] + ":2,FS"))
    near[deleted][0].unlink()
    second = mbsync.run()
    assert_tls(second)
    c = counters(second)
    # the deletion goes up as a flag change (\\Deleted), expunged by CLOSE (Expunge Both)
    assert (c.far_flags, c.far_deleted, c.far_new) == ((2, 2), (0, 0), (0, 0)), second
    assert (c.near_new, c.near_flags, c.near_deleted) == ((0, 0), (0, 0), (0, 0)), second
    after = server_view(mail_server)
    assert after[flagged] == ServerMessage(uid, frozenset({"\\Seen", "\\Flagged"})), second
    assert deleted not in after, f"{deleted!r} is still on the server:\n{second}"
    assert {mid: m for mid, m in after.items() if mid != flagged} == {
        mid: m for mid, m in server.items() if mid not in (flagged, deleted)
    }, "other messages changed on the server"
    files = server_files(mail_server)
    assert sorted(files.values()) == sorted(m for mid, m in stored.items() if mid != deleted)
    assert next(n for n, data in files.items() if message_id(data) == flagged).endswith(":2,FS")

    # 3: nothing to do
    near_before, state_before = sorted(mbsync.files()), mbsync.state()
    third = mbsync.run()
    assert_tls(third)
    c = counters(third)
    assert c.changes() == 0, third
    assert (c.channels, c.boxes) == ((1, 1), (1, 1)), third
    assert server_view(mail_server) == after
    assert server_files(mail_server) == files
    assert sorted(mbsync.files()) == near_before
    assert mbsync.state() == state_before


# IMAP commands that only read (or end the session): all a sync with nothing to do may send
READ_ONLY = re.compile(
    r"^(STARTTLS|CAPABILITY|AUTHENTICATE PLAIN <authdata>|LOGIN .*|NAMESPACE|"
    r"SELECT \"INBOX\"|UID FETCH [0-9:]+ \(UID FLAGS\)|CLOSE|LOGOUT)$"
)


def test_mbsync_imap_dialogue(mail_server, tmp_path: Path) -> None:
    """mbsync's own log of the IMAP dialogue (``-Dn``) on the ``imap`` listener: STARTTLS
    first, authentication only after it, messages fetched with BODY.PEEK[] (no \\Seen);
    a second sync with nothing to do sends only commands that read."""
    mbsync = Mbsync(tmp_path / "mbsync", account(mail_server, "imap"), implicit_tls=False)
    stored = store(mail_server, [make_message(n) for n in range(len(_BODIES))])

    first = mbsync.run(debug_net=True)
    assert first.returncode == 0, first
    commands = imap_commands(first)
    assert commands[0] == "STARTTLS", first
    auth = [i for i, c in enumerate(commands) if c.startswith(("AUTHENTICATE", "LOGIN"))]
    assert len(auth) == 1 and auth[0] > 0, first
    assert first.log.index("Connection is now encrypted") < first.log.index(commands[auth[0]])
    bodies = [c for c in commands if "BODY" in c]
    assert len(bodies) == len(stored), first
    assert all(re.fullmatch(r"UID FETCH \d+ \(BODY\.PEEK\[\]\)", c) for c in bodies), first
    assert len(near_messages(mbsync)) == len(stored)

    again = mbsync.run(debug_net=True)
    assert again.returncode == 0, again
    commands = imap_commands(again)
    assert commands[0] == "STARTTLS", again
    assert [c for c in commands if not READ_ONLY.match(c)] == [], again


def test_mbsync_refuses_a_certificate_it_cannot_verify(
    mail_server, tmp_path: Path, test_certs
) -> None:
    """With another CA as its only trust anchor, mbsync stops before it logs in."""
    mbsync = Mbsync(
        tmp_path / "mbsync",
        account(mail_server, "imaps", ca_file=test_certs.ca_file),
        implicit_tls=True,
    )
    stored = store(mail_server, [make_message(n) for n in range(3)])
    run = mbsync.run()
    assert run.returncode != 0, run
    # OpenSSL's reason: the server sends its CA with the chain, which is not trusted here
    assert "SSL error connecting" in run.log, run
    assert "self-signed certificate in certificate chain" in run.log, run
    assert "Logging in" not in run.log and "Authenticating" not in run.log, run
    assert mbsync.files() == {}
    assert Counter(server_files(mail_server).values()) == Counter(stored.values())


def test_mbsync_version_is_known() -> None:
    require_mbsync()
    assert re.fullmatch(r"[0-9]+\.[0-9]+(\.[0-9]+)?", mbsync_version())


# -- no name lookups -----------------------------------------------------------------------------

_INET_CONNECT = re.compile(
    r"connect\(\d+, \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\), "
    r"(?:sin_addr=inet_addr\(\"([^\"]+)\"\)|[^}]*inet_pton\(AF_INET6, \"([^\"]+)\")"
)


def test_mbsync_makes_no_name_lookups(mail_server, tmp_path: Path) -> None:
    """Under ``strace -f`` (mbsync, its SASL library and the tunnel): no UDP socket,
    nothing to port 53, every inet connect() to 127.0.0.1 and the IMAP port; in a UTS
    namespace of its own (see pop3_clients.client_host), /etc/hosts is not even opened."""
    require_mbsync()
    strace = require("strace")
    probe = subprocess.run([strace, "-o", "/dev/null", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode(errors='replace')}")
    mbsync = Mbsync(tmp_path / "mbsync", account(mail_server, "imap"), implicit_tls=False)
    store(mail_server, [make_message(n) for n in range(3)])
    trace = tmp_path / "strace.log"
    run = mbsync.run(
        wrap=[strace, "-f", "-qq", "-e", "trace=network,open,openat", "-o", str(trace)]
    )
    assert_tls(run)
    assert len(mbsync.files()) == 3, run
    lines = trace.read_text(encoding="utf-8", errors="replace").splitlines()
    assert not [ln for ln in lines if "SOCK_DGRAM" in ln and "AF_INET" in ln], "a UDP socket"
    assert not [ln for ln in lines if "htons(53)" in ln], "something went to port 53"
    connects = [m.groups() for ln in lines if (m := _INET_CONNECT.search(ln))]
    assert connects, "no connect() seen in the trace"
    port = mail_server.addr("imap")[1]
    for c_port, v4, v6 in connects:
        assert (int(c_port), v4 or v6) == (port, "127.0.0.1"), (c_port, v4, v6)
    if client_host().private:
        hosts = [ln for ln in lines if "/etc/hosts" in ln and "ENOENT" not in ln]
        assert not hosts, f"mbsync read /etc/hosts: {hosts}"
