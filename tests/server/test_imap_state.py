"""IMAP state on the reference server: UIDs, persistence, \\Seen and \\Recent, several
sessions of one user, IDLE, autologout, robustness and mailbox-name containment.

Black-box over real TLS sockets (the ``imaps`` listener). The raw client below reads
every response line strictly (CRLF, literals by their announced length), so a test can
see exactly which untagged responses came before a command's completion: that is how
RFC 9051 §7.5.1 (no EXPUNGE during FETCH, STORE, SEARCH) is checked. It stays small
and independent of imap_helpers (whose strict parser checks response syntax elsewhere).
Every test also fails if the server logged an error (a session that crashed).

References: RFC 3501 / RFC 9051 (IMAP4rev1 / rev2), RFC 2177 (IDLE), RFC 7888
(LITERAL+), docs/reference-server.md section "IMAP", issue 6 points 4 and 5.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

IO_TIMEOUT = 5.0


class ServerClosed(Exception):
    """The server closed the connection before a complete response arrived."""


@dataclass
class Reply:
    """A command's untagged responses (and continuations) and its completion."""

    tag: str
    untagged: list[bytes] = field(default_factory=list)
    tagged: bytes = b""

    @property
    def status(self) -> str:
        """OK, NO or BAD; BYE when the server said ``* BYE`` and closed instead."""
        if not self.tagged:
            return "BYE"
        return self.tagged.split(b" ", 2)[1].decode()

    @property
    def bye(self) -> bool:
        return any(line.startswith(b"* BYE") for line in self.untagged)

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    def numbers(self, kind: str) -> list[int]:
        """``n`` of every ``* n KIND`` (EXISTS, RECENT, EXPUNGE), in order."""
        pattern = re.compile(rb"^\* (\d+) " + kind.encode() + rb"$")
        return [int(m.group(1)) for line in self.untagged if (m := pattern.match(line))]

    def fetches(self) -> list[tuple[int, bytes]]:
        """``(sequence number, the data inside the parentheses)`` of every FETCH response."""
        pattern = re.compile(rb"^\* (\d+) FETCH \((.*)\)$", re.DOTALL)
        return [
            (int(m.group(1)), m.group(2)) for line in self.untagged if (m := pattern.match(line))
        ]

    def code(self, name: str) -> str | None:
        """The argument of a response code ``[NAME arg]`` in any response."""
        pattern = re.compile(rb"\[" + name.encode() + rb"(?: ([^\]]*))?\]")
        for line in [*self.untagged, self.tagged]:
            m = pattern.search(line)
            if m:
                return (m.group(1) or b"").decode()
        return None


@pytest.fixture(autouse=True)
def no_session_crashes(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture):
    """The server logs a session's unexpected exception at ERROR ("internal error").

    Checked after tests that passed; a failed test shows the log in its own report.
    """
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        return
    errors = [
        r for r in caplog.get_records("call") if r.levelno >= 40 and r.name.startswith("reference")
    ]
    assert not errors, "server errors logged: " + "; ".join(
        f"{r.name}: {r.getMessage()} {r.exc_text or ''}" for r in errors
    )


def uid_of(data: bytes) -> int | None:
    m = re.search(rb"\bUID (\d+)", data)
    return int(m.group(1)) if m else None


def flags_of(data: bytes, *, recent: bool = False) -> set[str] | None:
    """The FLAGS in FETCH data; ``\\Recent`` (session-specific) only if ``recent``."""
    m = re.search(rb"\bFLAGS \(([^)]*)\)", data)
    if m is None:
        return None
    flags = set(m.group(1).decode().split())
    return flags if recent else flags - {"\\Recent"}


class RawImap:
    """Bytes on a socket, with strict IMAP response framing (RFC 9051 §2.2.2, §4.3)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.counter = 0
        self.closed = False

    # -- wire ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, timeout: float | None) -> bool:
        self.sock.settimeout(IO_TIMEOUT if timeout is None else timeout)
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        return True

    def _raw_line(self, timeout: float | None) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line, self.buf = self.buf[: end + 1], self.buf[end + 1 :]
                assert line.endswith(b"\r\n"), f"response line without CRLF: {line!r}"
                return line[:-2]
            if not self._fill(timeout):
                raise ServerClosed(f"connection closed (unfinished: {self.buf!r})")

    def read_response(self, timeout: float | None = None) -> bytes:
        """One response, literals included in place (their CRLF-framed octets)."""
        line = self._raw_line(timeout)
        while (m := re.search(rb"\{(\d+)\}$", line)) is not None:
            size = int(m.group(1))
            while len(self.buf) < size:
                if not self._fill(timeout):
                    raise ServerClosed("connection closed inside a literal")
            line += b"\r\n" + self.buf[:size]
            self.buf = self.buf[size:]
            line += self._raw_line(timeout)
        return line

    def poll(self, timeout: float) -> bytes | None:
        """A response if one starts within ``timeout`` seconds, else None."""
        if b"\n" not in self.buf:
            try:
                if not self._fill(timeout):
                    raise ServerClosed("connection closed")
            except TimeoutError:
                return None
        return self.read_response()

    def read_until_close(self, timeout: float = IO_TIMEOUT) -> list[bytes]:
        """Every response until the server closes the connection."""
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"the server did not close the connection; got {out!r}"
            try:
                out.append(self.read_response(left))
            except ServerClosed:
                return out

    # -- commands -----------------------------------------------------------------------

    def next_tag(self) -> str:
        self.counter += 1
        return f"t{self.counter}"

    def read_reply(self, tag: str, timeout: float | None = None) -> Reply:
        reply = Reply(tag)
        while True:
            try:
                line = self.read_response(timeout)
            except ServerClosed:
                if reply.bye:  # * BYE, then the close: a clean end (RFC 9051 §7.1.5)
                    return reply
                raise
            if line.startswith(tag.encode() + b" "):
                reply.tagged = line
                return reply
            assert line.startswith((b"* ", b"+ ")) or line == b"+", f"stray line {line!r}"
            reply.untagged.append(line)

    def command(self, text: str | bytes, timeout: float | None = None) -> Reply:
        """Send ``tag text`` and read up to its completion."""
        tag = self.next_tag()
        data = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + data + b"\r\n")
        return self.read_reply(tag, timeout)

    def ok(self, text: str | bytes) -> Reply:
        reply = self.command(text)
        assert reply.ok, (text, reply)
        return reply

    def append(self, mailbox: str, message: bytes, flags: str = "") -> int:
        """APPEND with a LITERAL+ literal; the new UID from APPENDUID (RFC 4315)."""
        flag_part = f"({flags}) " if flags else ""
        reply = self.ok(f"APPEND {mailbox} {flag_part}{{{len(message)}+}}\r\n".encode() + message)
        code = reply.code("APPENDUID")
        assert code is not None, reply
        return int(code.split()[1])

    def select(self, mailbox: str = "INBOX", *, examine: bool = False) -> Reply:
        return self.ok(f"{'EXAMINE' if examine else 'SELECT'} {mailbox}")

    def uid_map(self) -> dict[int, int]:
        """Sequence number -> UID, from ``FETCH 1:* (UID)``."""
        reply = self.ok("FETCH 1:* (UID)")
        out: dict[int, int] = {}
        for seq, data in reply.fetches():
            uid = uid_of(data)
            assert uid is not None, data
            out[seq] = uid
        return out

    def flags_by_uid(self, *, recent: bool = False) -> dict[int, set[str]]:
        reply = self.ok("UID FETCH 1:* (FLAGS)")
        out: dict[int, set[str]] = {}
        for _, data in reply.fetches():
            uid, flags = uid_of(data), flags_of(data, recent=recent)
            assert uid is not None and flags is not None, data
            out[uid] = flags
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def connect(srv: Any, user: str | None = "alice", *, greeting: bool = True) -> RawImap:
    """A raw client on the implicit-TLS ``imaps`` listener, logged in as ``user``."""
    host, port = srv.addr("imaps")
    sock = socket.create_connection((host, port), timeout=IO_TIMEOUT)
    try:
        tls = srv.tls_context().wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    client = srv.track(RawImap(tls))
    if greeting:
        first = client.read_response()
        assert first.startswith(b"* OK"), first
    if user is not None:
        assert greeting
        client.ok(f'LOGIN {user} "{srv.passwords[user]}"')
    return client


def message(subject: str, body: str = "hello") -> bytes:
    return (
        f"From: sender@remote.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@remote.test>\r\n\r\n{body}\r\n"
    ).encode()


def fill_inbox(srv: Any, n: int, user: str = "alice") -> None:
    """``n`` messages in ``user``'s Maildir ``new/``, as an outside delivery would leave them."""
    for i in range(1, n + 1):
        srv.deliver(user, message(f"message {i}", f"body {i}"))


def apply_expunges(uids: list[int], reply: Reply) -> list[int]:
    """The client's view after the ``* n EXPUNGE`` responses in ``reply`` (RFC 9051 §7.5.1)."""
    view = list(uids)
    for n in reply.numbers("EXPUNGE"):
        assert 1 <= n <= len(view), (n, view)
        del view[n - 1]
    return view


def assert_alive(srv: Any) -> None:
    """A fresh session logs in, selects INBOX and fetches."""
    client = connect(srv)
    client.select()
    client.ok("FETCH 1:* (UID FLAGS)")
    client.ok("LOGOUT")
    client.close()


# == UIDs ===================================================================================


def test_uids_ascend_and_are_never_reused(mail_server):
    a = connect(mail_server)
    first = [a.append("INBOX", message(f"m{i}")) for i in range(3)]
    assert first == sorted(first) and len(set(first)) == 3, first
    a.select()
    # expunge the highest UID: the next message must not get it again (RFC 9051 §2.3.1.1)
    a.ok(f"UID STORE {first[-1]} +FLAGS.SILENT (\\Deleted)")
    assert a.ok("EXPUNGE").numbers("EXPUNGE") == [3]
    again = a.append("INBOX", message("m3"))
    assert again > first[-1]
    # a delivery from outside gets a higher one still
    mail_server.deliver("alice", message("delivered"))
    noop = a.ok("NOOP")
    assert noop.numbers("EXISTS") == [4]
    uids = a.uid_map()
    assert list(uids.values()) == sorted(uids.values())
    assert uids[4] > again
    # expunge everything, then append: UIDNEXT keeps climbing
    a.ok("STORE 1:* +FLAGS.SILENT (\\Deleted)")
    a.ok("EXPUNGE")
    last = a.append("INBOX", message("m5"))
    assert last > uids[4]
    b = connect(mail_server)
    status = b.ok("STATUS INBOX (UIDNEXT MESSAGES)")
    assert b"MESSAGES 1" in status.untagged[0]
    assert int(re.findall(rb"UIDNEXT (\d+)", status.untagged[0])[0]) > last


def test_uidvalidity_uidnext_and_flags_survive_a_restart(start_server):
    srv = start_server()
    a = connect(srv)
    a.ok("CREATE Work")
    seen = a.append("INBOX", message("seen"), "\\Seen")
    flagged = a.append("INBOX", message("flagged"), "\\Flagged $Important")
    plain = a.append("INBOX", message("plain"))
    work_uid = a.append("Work", message("work"), "\\Answered")
    sel = a.select()
    # messages that arrive while the session is open are claimed when it is told of them
    srv.deliver("alice", message("arrived"))
    srv.deliver("alice", message("doomed"))
    noop = a.ok("NOOP")
    assert noop.numbers("EXISTS") == [5] and noop.numbers("RECENT") == [5], noop
    uids = a.uid_map()
    assert list(uids.values())[:3] == [seen, flagged, plain]
    arrived, doomed = uids[4], uids[5]
    a.ok(f"UID STORE {plain} +FLAGS (\\Draft custom)")
    a.ok(f"UID STORE {doomed} +FLAGS (\\Deleted)")
    a.ok("EXPUNGE")  # the highest UID goes: UIDNEXT must stay above it
    before_flags = a.flags_by_uid()
    status = a.ok("STATUS Work (UIDVALIDITY UIDNEXT)").untagged[0]
    a.ok("LOGOUT")
    watcher = connect(srv)
    watcher.select("Work")
    srv.stop()
    # RFC 9051 §7.1.5: a server that shuts down says BYE to its sessions
    rest = watcher.read_until_close()
    assert any(line.startswith(b"* BYE") for line in rest), rest

    again = start_server(data_dir=srv.config.data_dir)
    b = connect(again)
    sel2 = b.select()
    assert sel2.code("UIDVALIDITY") == sel.code("UIDVALIDITY")
    # RFC 9051 §2.3.1.1: UIDNEXT does not change unless messages were added
    assert sel2.code("UIDNEXT") == str(doomed + 1)
    assert sel2.numbers("EXISTS") == [4]
    # every message was claimed by the session before the restart (RFC 3501 §2.3.2)
    assert sel2.numbers("RECENT") == [0]
    after_flags = b.flags_by_uid()
    assert after_flags == before_flags
    assert after_flags[flagged] == {"\\Flagged", "$Important"}
    assert after_flags[plain] == {"\\Draft", "custom"}
    assert after_flags[arrived] == set()
    assert b.ok("STATUS Work (UIDVALIDITY UIDNEXT)").untagged[0] == status
    b.ok("EXAMINE Work")
    assert b.flags_by_uid() == {work_uid: {"\\Answered"}}
    assert b.append("INBOX", message("after restart")) == doomed + 1


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_lost_index_gets_a_new_uidvalidity(start_server, damage):
    """docs: "A lost or corrupt index gets a new UIDVALIDITY, never silently reused UIDs"
    (RFC 9051 §2.3.1.1: UIDs of a mailbox with the same UIDVALIDITY are never reused)."""
    srv = start_server()
    a = connect(srv)
    for i in range(3):
        a.append("INBOX", message(f"m{i}"))
    sel = a.select()
    a.ok("LOGOUT")
    srv.close_clients()
    srv.wait_idle()
    srv.stop()
    index = srv.config.mail_dir / "alice" / "mailharness-imap-index"
    assert index.is_file()
    if damage == "missing":
        index.unlink()
    else:
        index.write_bytes(b"\x00garbage\xff" * 50)
    again = start_server(data_dir=srv.config.data_dir)
    b = connect(again)
    sel2 = b.select()
    assert sel2.numbers("EXISTS") == [3]
    before, after = sel.code("UIDVALIDITY"), sel2.code("UIDVALIDITY")
    assert before is not None and after is not None and int(after) > int(before)
    uids = list(b.uid_map().values())
    assert uids == sorted(uids) and len(set(uids)) == 3


def test_a_mailbox_created_again_gets_a_new_uidvalidity(mail_server):
    """RFC 9051 §2.3.1.1: a new mailbox with an old name must not reuse UIDVALIDITY."""
    a = connect(mail_server)
    a.ok("CREATE Again")
    a.append("Again", message("one"))
    first = a.ok("STATUS Again (UIDVALIDITY)").untagged[0]
    a.ok("DELETE Again")
    a.ok("CREATE Again")
    second = a.ok("STATUS Again (UIDVALIDITY)").untagged[0]
    old = int(re.findall(rb"UIDVALIDITY (\d+)", first)[0])
    new = int(re.findall(rb"UIDVALIDITY (\d+)", second)[0])
    assert new > old


# == \Seen and \Recent ======================================================================


def test_seen_is_set_by_body_and_not_by_peek(mail_server):
    fill_inbox(mail_server, 3)
    a = connect(mail_server)
    a.select()
    peek = a.ok("FETCH 1 (BODY.PEEK[])")
    [(seq, data)] = peek.fetches()
    assert seq == 1 and b"body 1" in data
    assert a.flags_by_uid()[a.uid_map()[1]] == set()
    assert a.ok("FETCH 1 (BODY.PEEK[HEADER] BODY.PEEK[TEXT] RFC822.HEADER)").fetches()
    assert "\\Seen" not in a.flags_by_uid()[a.uid_map()[1]]

    body = a.ok("FETCH 1 (BODY[])")
    [(_, data)] = body.fetches()
    # RFC 9051 §6.4.5: the \Seen flag is implicitly set; the server sends the new FLAGS
    assert flags_of(data) == {"\\Seen"}, data
    assert "\\Seen" in a.flags_by_uid()[a.uid_map()[1]]
    a.ok("FETCH 2 (BODY[TEXT])")
    a.ok("FETCH 3 (RFC822)")
    assert all("\\Seen" in f for f in a.flags_by_uid().values())

    # EXAMINE is read-only: BODY[] there sets nothing (RFC 9051 §6.3.3)
    a.ok("STORE 1:* -FLAGS (\\Seen)")
    e = connect(mail_server)
    e.select(examine=True)
    e.ok("FETCH 1:* (BODY[])")
    assert not any("\\Seen" in f for f in e.flags_by_uid().values())
    assert not any("\\Seen" in f for f in a.flags_by_uid().values())


def test_recent_belongs_to_the_first_session_that_selects(mail_server):
    fill_inbox(mail_server, 2)
    # EXAMINE sees them as recent without claiming them
    e = connect(mail_server)
    assert e.select(examine=True).numbers("RECENT") == [2]
    e.ok("CLOSE")
    status = connect(mail_server).ok("STATUS INBOX (RECENT MESSAGES)").untagged[0]
    assert b"RECENT 2" in status

    a = connect(mail_server)
    sel = a.select()
    assert sel.numbers("EXISTS") == [2] and sel.numbers("RECENT") == [2]
    assert all("\\Recent" in f for f in a.flags_by_uid(recent=True).values())
    b = connect(mail_server)
    assert b.select().numbers("RECENT") == [0]
    assert not any("\\Recent" in f for f in b.flags_by_uid(recent=True).values())
    assert connect(mail_server).select(examine=True).numbers("RECENT") == [0]
    status = connect(mail_server).ok("STATUS INBOX (RECENT)").untagged[0]
    assert b"RECENT 0" in status

    # a new message goes to exactly one of the sessions that have the mailbox selected;
    # "* n RECENT" counts all the recent messages of the session (RFC 3501 §7.3.2)
    mail_server.deliver("alice", message("third"))
    first = a.ok("NOOP")
    second = b.ok("NOOP")
    assert first.numbers("EXISTS") == [3] and second.numbers("EXISTS") == [3]
    assert first.numbers("RECENT") == [3] and second.numbers("RECENT") == [0]
    assert "\\Recent" in a.flags_by_uid(recent=True)[a.uid_map()[3]]
    assert "\\Recent" not in b.flags_by_uid(recent=True)[b.uid_map()[3]]
    # \Recent "can not be altered by the client" (RFC 3501 §2.3.2)
    assert b.command("STORE 1 +FLAGS (\\Recent)").status in ("BAD", "NO")


# == several sessions of one user =========================================================


def test_store_in_one_session_is_reported_to_another_on_noop(mail_server):
    fill_inbox(mail_server, 3)
    a, b = connect(mail_server), connect(mail_server)
    a.select()
    b.select()
    uids = b.uid_map()
    a.ok("STORE 2 +FLAGS.SILENT (\\Flagged $Later)")
    noop = b.ok("NOOP")
    [(seq, data)] = noop.fetches()
    assert seq == 2 and flags_of(data) == {"\\Flagged", "$Later"}
    uid = uid_of(data)
    assert uid in (None, uids[2])
    # nothing is told twice
    assert b.ok("NOOP").untagged == []
    # and the other way round, via UID STORE
    b.ok(f"UID STORE {uids[3]} FLAGS (\\Answered)")
    [(seq, data)] = a.ok("NOOP").fetches()
    assert seq == 3 and flags_of(data) == {"\\Answered"}


@pytest.mark.parametrize("how", ["EXPUNGE", "UID EXPUNGE", "CLOSE", "MOVE"])
def test_expunge_in_one_session_renumbers_another_on_noop(mail_server, how):
    fill_inbox(mail_server, 5)
    a, b = connect(mail_server), connect(mail_server)
    a.select()
    b.select()
    uids = b.uid_map()
    view = [uids[i] for i in range(1, 6)]
    if how == "MOVE":
        a.ok("MOVE 2,4 Trash")
    else:
        a.ok("STORE 2,4 +FLAGS.SILENT (\\Deleted)")
        if how == "UID EXPUNGE":  # RFC 4315 §2.1
            own = a.ok(f"UID EXPUNGE {view[1]},{view[3]}")
            assert apply_expunges(view, own) == [view[0], view[2], view[4]]
        else:
            a.ok(how)  # CLOSE expunges silently (RFC 9051 §6.4.1)
    noop = b.ok("NOOP")
    assert len(noop.numbers("EXPUNGE")) == 2, noop
    assert apply_expunges(view, noop) == [view[0], view[2], view[4]]
    assert b.uid_map() == {1: view[0], 2: view[2], 3: view[4]}
    assert b.ok("FETCH 3 (UID)").fetches() == [(3, b"UID %d" % view[4])]
    # message numbers beyond the new end are invalid now (RFC 9051 §6.4.5: BAD)
    assert b.command("FETCH 4 (UID)").status in ("BAD", "NO")
    assert b.ok("SEARCH ALL").untagged == [b"* SEARCH 1 2 3"]


def _expunge_message_2_elsewhere(srv: Any) -> None:
    other = connect(srv)
    other.select()
    other.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert other.ok("EXPUNGE").numbers("EXPUNGE") == [2]
    other.ok("LOGOUT")
    other.close()


@pytest.mark.parametrize(
    "command",
    [
        "FETCH 1:* (UID FLAGS)",
        "FETCH 3 (BODY.PEEK[HEADER])",
        "STORE 3 +FLAGS (\\Answered)",
        "SEARCH ALL",
        "SEARCH UNSEEN",
        "STORE 1,3 -FLAGS.SILENT (\\Answered)",
    ],
)
def test_no_expunge_during_fetch_store_or_search(mail_server, command):
    """RFC 9051 §7.5.1: EXPUNGE is not sent while FETCH, STORE or SEARCH (non-UID) runs."""
    fill_inbox(mail_server, 5)
    b = connect(mail_server)
    b.select()
    uids = b.uid_map()
    _expunge_message_2_elsewhere(mail_server)
    reply = b.command(command)
    assert reply.status in ("OK", "NO"), reply  # NO [EXPUNGEISSUED] is fine (RFC 2180 §4.1.2)
    assert reply.numbers("EXPUNGE") == [], reply
    # numbers in the answer are still the old ones: message 3 is the old third one
    for seq, data in reply.fetches():
        uid = uid_of(data)
        assert uid is None or uid == uids[seq], (seq, data, uids)
    if command.startswith("FETCH 1:*"):
        numbers = [seq for seq, _ in reply.fetches()]
        assert {1, 3, 4, 5} <= set(numbers) and set(numbers) <= {1, 2, 3, 4, 5}
    noop = b.ok("NOOP")
    assert noop.numbers("EXPUNGE") == [2], noop
    assert b.uid_map() == {1: uids[1], 2: uids[3], 3: uids[4], 4: uids[5]}


@pytest.mark.parametrize(
    "command",
    ["FETCH 3 BODY.PEEK[MIME]", "FETCH 9 (FLAGS)", "STORE 3 +FLAGS (", "SEARCH NOSUCHKEY"],
)
def test_no_expunge_with_a_refused_fetch_store_or_search(mail_server, command):
    """RFC 9051 §7.5.1 holds for a FETCH, STORE or SEARCH answered BAD too: a client that
    goes on with its message numbers (as after the MIME part FETCH a suite sends) must not
    have them shifted under it."""
    fill_inbox(mail_server, 5)
    b = connect(mail_server)
    b.select()
    _expunge_message_2_elsewhere(mail_server)
    reply = b.command(command)
    assert reply.status == "BAD", reply
    assert reply.numbers("EXPUNGE") == [], reply
    assert b.ok("NOOP").numbers("EXPUNGE") == [2]


def test_a_held_back_expunge_comes_with_noop_or_a_uid_command(mail_server):
    """After FETCH and SEARCH held it back, the EXPUNGE comes with the next command that
    may carry it: UID FETCH may (RFC 9051 §7.5.1 allows it), NOOP must."""
    fill_inbox(mail_server, 4)
    b = connect(mail_server)
    b.select()
    uids = b.uid_map()
    _expunge_message_2_elsewhere(mail_server)
    assert b.ok("FETCH 1 (FLAGS)").numbers("EXPUNGE") == []
    assert b.ok("SEARCH ALL").numbers("EXPUNGE") == []
    uid_fetch = b.command("UID FETCH 1:* (FLAGS)")
    assert uid_fetch.status in ("OK", "NO"), uid_fetch  # OK: see the next test
    told = uid_fetch.numbers("EXPUNGE")
    assert told in ([], [2]), uid_fetch
    # a UID FETCH response names the message by UID, whatever the numbering
    assert {uid_of(data) for _, data in uid_fetch.fetches()} == {uids[1], uids[3], uids[4]}
    assert b.ok("NOOP").numbers("EXPUNGE") == ([] if told else [2])
    # after that, every command uses the new numbers
    assert b.uid_map() == {1: uids[1], 2: uids[3], 3: uids[4]}


@pytest.mark.parametrize(
    "command",
    [
        "UID FETCH 1:* (FLAGS)",
        "UID STORE 1:* +FLAGS (\\Answered)",
        "UID COPY 1:* Trash",
        "UID MOVE 1:* Trash",
        "UID SEARCH ALL",
    ],
)
def test_uid_commands_after_another_sessions_expunge_are_ok(mail_server, command):
    """RFC 9051 §6.4.9 (RFC 3501 §6.4.8): "a non-existent unique identifier is ignored
    without any error message generated", so UID FETCH, COPY, MOVE and STORE answer OK.
    A message another session expunged is such a UID, told to this session or not."""
    fill_inbox(mail_server, 4)
    b = connect(mail_server)
    b.select()
    uids = b.uid_map()
    _expunge_message_2_elsewhere(mail_server)
    reply = b.command(command)
    assert reply.ok, reply
    # the EXPUNGEs (the held-back one, MOVE's own) must add up in the client's view
    view = apply_expunges([uids[1], uids[2], uids[3], uids[4]], reply)
    left = [] if "MOVE" in command else [uids[1], uids[3], uids[4]]
    assert view in (left, sorted([*left, uids[2]])), reply
    if command.startswith(("UID FETCH", "UID STORE")):
        assert {uid_of(data) for _, data in reply.fetches()} == {uids[1], uids[3], uids[4]}
    if command.startswith("UID SEARCH"):
        found = [line for line in reply.untagged if line.startswith(b"* SEARCH")]
        assert found == [b"* SEARCH %d %d %d" % (uids[1], uids[3], uids[4])], reply
    b.ok("NOOP")
    assert list(b.uid_map().values()) == left
    reply = b.command(f"UID FETCH {uids[2]} (FLAGS)")
    assert reply.ok and reply.fetches() == [], reply


def test_exists_counts_messages_whose_expunge_is_held_back(mail_server):
    """RFC 9051 §7.5.1 / §7.4.1: while an EXPUNGE is held back, EXISTS still counts the
    message, so the client's numbers stay consistent; NOOP then sends the EXPUNGE."""
    fill_inbox(mail_server, 5)
    b = connect(mail_server)
    b.select()
    uids = b.uid_map()
    _expunge_message_2_elsewhere(mail_server)
    smtp = mail_server.smtp()
    smtp.sendmail("sender@remote.test", ["alice@example.test"], message("sixth"))
    time.sleep(0.2)
    reply = b.command("FETCH 1:* (UID)")
    assert reply.numbers("EXPUNGE") == [], reply
    if reply.numbers("EXISTS"):
        assert reply.numbers("EXISTS") == [6], reply  # 5 known (one held back) + 1 new
    noop = b.ok("NOOP")
    assert noop.numbers("EXPUNGE") == [2], noop
    exists = (reply.numbers("EXISTS") + noop.numbers("EXISTS"))[-1:]
    assert exists == [6], (reply, noop)
    view = b.uid_map()
    assert list(view.values())[:4] == [uids[1], uids[3], uids[4], uids[5]]
    assert len(view) == 5 and view[5] > uids[5]


def test_other_sessions_changes_arrive_after_any_command(mail_server):
    """docs/reference-server.md: changes reach the others "on NOOP, after any command"."""
    fill_inbox(mail_server, 2)
    a, b = connect(mail_server), connect(mail_server)
    a.select()
    b.select()
    a.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    smtp = mail_server.smtp()
    smtp.sendmail("sender@remote.test", ["alice@example.test"], message("pushed"))
    time.sleep(0.2)
    reply = b.ok("UID SEARCH ALL")
    assert reply.numbers("EXISTS") == [3], reply
    assert [seq for seq, _ in reply.fetches()] == [1], reply


# == IDLE ===================================================================================


def _idle(client: RawImap) -> str:
    tag = client.next_tag()
    client.send(tag.encode() + b" IDLE\r\n")
    cont = client.read_response()
    assert cont.startswith(b"+"), cont
    return tag


def _wait_for(client: RawImap, pattern: bytes, timeout: float) -> tuple[bytes, float]:
    start = time.monotonic()
    deadline = start + timeout
    seen: list[bytes] = []
    while (left := deadline - time.monotonic()) > 0:
        line = client.poll(left)
        if line is None:
            break
        seen.append(line)
        if re.match(pattern, line):
            return line, time.monotonic() - start
    raise AssertionError(f"no {pattern!r} within {timeout} s; got {seen!r}")


def test_idle_pushes_an_smtp_delivery_within_a_second(mail_server):
    fill_inbox(mail_server, 1)
    a = connect(mail_server)
    a.select()
    tag = _idle(a)
    smtp = mail_server.smtp()
    smtp.sendmail("sender@remote.test", ["alice@example.test"], message("pushed"))
    _, took = _wait_for(a, rb"^\* 2 EXISTS$", 1.0)
    assert took < 1.0, took
    a.send(b"DONE\r\n")
    done = a.read_reply(tag)
    assert done.ok, done
    assert done.numbers("EXISTS") == [] and a.uid_map().keys() == {1, 2}


def test_idle_finds_an_outside_delivery_within_the_poll(mail_server):
    a = connect(mail_server)
    a.select()
    tag = _idle(a)
    time.sleep(0.1)
    mail_server.deliver("alice", message("dropped in"))
    _, took = _wait_for(a, rb"^\* 1 EXISTS$", 3.0)
    assert took < 2.5, took  # the rescan every 2 s (docs: IMAP, "Several sessions")
    a.send(b"DONE\r\n")
    assert a.read_reply(tag).ok


def test_idle_pushes_another_sessions_store_and_expunge(mail_server):
    fill_inbox(mail_server, 3)
    a, b = connect(mail_server), connect(mail_server)
    a.select()
    b.select()
    tag = _idle(b)
    a.ok("STORE 3 +FLAGS.SILENT (\\Flagged)")
    line, _ = _wait_for(b, rb"^\* 3 FETCH ", 1.0)
    assert flags_of(line) == {"\\Flagged"}
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.ok("EXPUNGE")
    _wait_for(b, rb"^\* 1 EXPUNGE$", 1.0)
    b.send(b"DONE\r\n")
    assert b.read_reply(tag).ok
    assert len(b.uid_map()) == 2


def test_idle_done_and_idle_without_a_mailbox(mail_server):
    a = connect(mail_server)
    tag = _idle(a)  # authenticated state: RFC 2177 allows IDLE there too
    a.send(b"DONE\r\n")
    done = a.read_reply(tag)
    assert done.ok and done.untagged == [], done
    a.select()
    tag = _idle(a)
    a.send(b"DONE\r\n")
    assert a.read_reply(tag).ok
    # "DONE" is case-insensitive like every IMAP keyword (RFC 9051 §9, ABNF strings)
    tag = _idle(a)
    a.send(b"done\r\n")
    assert a.read_reply(tag).ok
    # anything but DONE ends IDLE with BAD (RFC 2177 §3), and the session goes on
    tag = _idle(a)
    a.send(b"NOPE\r\n")
    assert a.read_reply(tag).status == "BAD"
    a.ok("NOOP")


def test_pop3_deletion_reaches_an_imap_session_as_expunge(mail_server):
    fill_inbox(mail_server, 3)
    a = connect(mail_server)
    a.select()
    uids = a.uid_map()
    pop = mail_server.pop3("alice")
    assert pop.stat()[0] == 3
    pop.dele(2)
    pop.quit()
    noop = a.ok("NOOP")
    assert noop.numbers("EXPUNGE") == [2], noop
    assert a.uid_map() == {1: uids[1], 2: uids[3]}


# == timeouts ===============================================================================


def test_autologout_sends_bye_and_closes(start_server):
    srv = start_server(imap={"autologout": 0.5, "login_timeout": 0.5})
    fresh = connect(srv, None)
    logged_in = connect(srv)
    logged_in.select()
    idling = connect(srv)
    idling.select()
    _idle(idling)
    active = connect(srv)
    started = time.monotonic()
    for _ in range(4):  # commands keep a session alive
        time.sleep(0.25)
        active.ok("NOOP")
    for client in (fresh, logged_in, idling):
        rest = client.read_until_close(3.0)
        assert any(line.startswith(b"* BYE") for line in rest), rest
    assert time.monotonic() - started < 3.0
    active.ok("NOOP")


# == robustness =============================================================================


def test_garbage_lines_get_bad_and_the_session_goes_on(mail_server):
    rng = random.Random(6)
    a = connect(mail_server)
    alphabet = bytes(b for b in range(1, 256) if b not in b"\r\n{}")
    lines = [bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 200))) for _ in range(40)]
    lines += [b"", b" ", b"*", b"+ x", b"a", b"a ", b"a FETCH", b'a SELECT "INBOX', b"a (((((("]
    lines += [b"a FETCH 1 " + b"(" * 5000, b"a UID", b"a UID NOOP", b"\x80\xff NOOP"]
    a.send(b"".join(line + b"\r\n" for line in lines))
    tag = a.next_tag()
    a.send(tag.encode() + b" NOOP\r\n")
    responses = []
    while True:
        line = a.read_response()
        if line.startswith(tag.encode() + b" "):
            assert line.startswith(tag.encode() + b" OK"), line
            break
        responses.append(line)
    assert len(responses) == len(lines), responses
    for line in responses:
        assert re.match(rb"^(\*|a) BAD ", line), line
    a.select()
    assert_alive(mail_server)


def test_nul_bytes_are_refused(mail_server):
    a = connect(mail_server)
    for bad in [b"t NOOP\x00", b"t\x00 NOOP", b"t SELECT IN\x00BOX", b"t LOGOUT\x00"]:
        a.send(bad + b"\r\n")
        line = a.read_response()
        assert re.match(rb"^(\*|t) BAD ", line), (bad, line)
    # a NUL inside a literal (RFC 9051 §4.3: not allowed in a literal)
    reply = a.command(b"CREATE {5+}\r\nab\x00cd")
    assert reply.status in ("BAD", "NO"), reply
    a.ok("NOOP")
    root = mail_server.config.mail_dir / "alice"
    assert not root.exists() or not any("\x00" in p.name for p in root.iterdir())


def test_a_100_kb_line_gets_bad_and_the_session_goes_on(mail_server):
    a = connect(mail_server)
    reply = a.command(b"NOOP " + b"x" * 100_000)
    assert reply.status == "BAD", reply
    reply = a.command(b"SEARCH " + b"ALL " * 25_000)
    assert reply.status == "BAD", reply
    a.send(b"y" * 100_000 + b"\r\n")
    assert re.match(rb"^\* BAD ", a.read_response())
    a.select()
    # also during IDLE: the line is refused, not taken for DONE or a command
    tag = _idle(a)
    a.send(b"D" * 100_000 + b"\r\n")
    assert a.read_reply(tag).status == "BAD"
    a.ok("NOOP")


@pytest.mark.parametrize("marker", [b"{1000}", b"{1000+}"])
def test_an_unterminated_literal_then_disconnect(mail_server, marker):
    probe = connect(mail_server)
    before = probe.ok("STATUS INBOX (MESSAGES)").untagged[0]
    a = connect(mail_server)
    a.send(b"t1 APPEND INBOX " + marker + b"\r\n")
    if marker == b"{1000}":
        assert a.read_response().startswith(b"+")
    a.send(message("half")[:100])
    a.close()
    time.sleep(0.2)
    assert probe.ok("STATUS INBOX (MESSAGES)").untagged[0] == before
    assert_alive(mail_server)
    leftovers = list((mail_server.config.mail_dir / "alice" / "tmp").iterdir())
    assert leftovers == []


def test_a_huge_literal_is_refused_before_it_is_sent(mail_server):
    a = connect(mail_server)
    reply = a.command(b"APPEND INBOX {99999999999}")
    # RFC 9051 §7.5 / RFC 7888 §4: a tagged NO (or BAD) instead of "+"; [TOOBIG] (RFC 4469)
    assert reply.status in ("NO", "BAD") and reply.untagged == [], reply
    assert reply.code("TOOBIG") is not None, reply
    # the client sends no literal after a refusal; the next line is a new command
    a.ok("NOOP")
    reply = a.command(b"APPEND INBOX {99999999999999999999999999}")
    assert reply.status in ("NO", "BAD"), reply
    a.ok("NOOP")
    b = connect(mail_server, None)
    reply = b.command(b"LOGIN {99999999999}")
    assert reply.status in ("NO", "BAD"), reply
    b.ok("NOOP")
    assert_alive(mail_server)


def test_a_huge_non_synchronising_literal_does_not_block_other_sessions(mail_server):
    a = connect(mail_server)
    a.send(b"t1 APPEND INBOX {99999999999+}\r\n" + b"z" * 100_000)
    # this session may answer BAD [TOOBIG] at once, drain, or close: others go on regardless
    assert_alive(mail_server)
    a.close()
    assert_alive(mail_server)


def test_fifty_concurrent_sessions_select_and_fetch(mail_server):
    fill_inbox(mail_server, 20)
    clients = [connect(mail_server) for _ in range(50)]
    barrier = threading.Barrier(len(clients))

    def work(client: RawImap) -> tuple[int, dict[int, int], int]:
        barrier.wait(IO_TIMEOUT)
        sel = client.select()
        reply = client.ok("FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        subjects = {seq: uid_of(data) or 0 for seq, data in reply.fetches()}
        assert all(b"Subject: message %d" % seq in data for seq, data in reply.fetches())
        client.ok("LOGOUT")
        return sel.numbers("RECENT")[0], subjects, sel.numbers("EXISTS")[0]

    with ThreadPoolExecutor(len(clients)) as pool:
        results = list(pool.map(work, clients))
    recents = sorted(r[0] for r in results)
    # exactly one SELECT claims the 20 new messages (RFC 3501 §2.3.2)
    assert recents == [0] * 49 + [20], recents
    assert all(r[2] == 20 for r in results)
    maps = [r[1] for r in results]
    assert all(m == maps[0] for m in maps) and sorted(maps[0]) == list(range(1, 21))
    assert_alive(mail_server)


# == mailbox names ==========================================================================

TRAVERSAL = ["../bob", "INBOX/../../x", "..", ".", "a/../../../etc", "../../bob/new"]
TRAVERSAL += ["/etc", "INBOX/..", "x/./y", "../alice", "..%2Fbob", "%2E%2E/bob"]
# must be refused outright; the modified UTF-7 spellings (RFC 3501 §5.1.3) decode to "..",
# "." and NUL
REFUSED = ["../bob", "INBOX/../../x", "..", "../../bob/new", "&AC4ALg-/bob", "&AC4-"]
REFUSED += ["&AAA-", "x&AAA-y", "INBOX/&AC4ALg-/&AC4ALg-/bob"]


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_mailbox_names_cannot_leave_the_users_directory(mail_server):
    mail_dir: Path = mail_server.config.mail_dir
    mail_server.deliver("bob", message("for bob only"))
    a = connect(mail_server)
    a.ok('LIST "" *')  # make sure alice's special-use mailboxes exist
    connect(mail_server, "bob").ok('LIST "" *')
    outside = mail_dir.parent
    before = _tree(outside)
    for name in TRAVERSAL:
        quoted = '"' + name + '"'
        for cmd in (f"CREATE {quoted}", f"SELECT {quoted}", f"STATUS {quoted} (MESSAGES)"):
            reply = a.command(cmd)
            if reply.ok:
                # a harmless escaped name is acceptable; reaching bob's mail is not
                assert not any(b"EXISTS" in u and not u.startswith(b"* 0 ") for u in reply.untagged)
                assert b"MESSAGES 1" not in b"".join(reply.untagged), (cmd, reply)
        for cmd in (
            f"RENAME INBOX {quoted}",
            f"DELETE {quoted}",
            f"APPEND {quoted} {{3+}}\r\nx\r\n",
        ):
            a.command(cmd)
    # NUL and other control characters in a name, as a literal (RFC 9051 §5.1)
    for raw in [b"a\x00b", b"../\x00bob", b"x\x01y", b"\x00"]:
        reply = a.command(b"CREATE {%d+}\r\n" % len(raw) + raw)
        assert reply.status in ("NO", "BAD"), (raw, reply)
        reply = a.command(b"SELECT {%d+}\r\n" % len(raw) + raw)
        assert reply.status in ("NO", "BAD"), (raw, reply)
    for name in REFUSED:
        reply = a.command(f'CREATE "{name}"')
        assert reply.status in ("NO", "BAD"), (name, reply)
        reply = a.command(f'SELECT "{name}"')
        assert reply.status in ("NO", "BAD"), (name, reply)
    created = _tree(outside) - before
    alice_root = (mail_dir / "alice").resolve()
    for path in created:
        if not path.name.startswith("mailharness-"):  # the server's own state files
            assert path.resolve().is_relative_to(alice_root), path
    bob_files = [p for sub in ("new", "cur") for p in (mail_dir / "bob" / sub).iterdir()]
    assert len(bob_files) == 1, bob_files
    assert_alive(mail_server)


@pytest.mark.parametrize("first", ["NOOP", "FETCH 1:* (UID FLAGS)", "STORE 1 +FLAGS (\\Seen)"])
@pytest.mark.parametrize("change", ["DELETE Work", "RENAME Work Play"])
def test_selected_mailbox_deleted_or_renamed_by_another_session(mail_server, change, first):
    """The next command gets a tagged NO/BAD (or OK), or ``* BYE`` and a close; never an
    internal error. RFC 2180 §3 leaves the choice open; a session crash is none of them."""
    a = connect(mail_server)
    a.ok("CREATE Work")
    for i in range(3):
        a.append("Work", message(f"work {i}"))
    b = connect(mail_server)
    b.select("Work")
    a.ok(change)
    for cmd in [first, "SEARCH ALL", "FETCH 2 (BODY[])", "EXPUNGE", "NOOP", "CLOSE"]:
        try:
            reply = b.command(cmd)
        except ServerClosed:
            raise AssertionError(f"{cmd}: connection closed without a response") from None
        assert reply.code("SERVERBUG") is None, (cmd, reply)
        if reply.bye:
            assert b.read_until_close() == []
            break
        assert reply.status in ("OK", "NO", "BAD"), (cmd, reply)
    else:
        b.ok("LOGOUT")
    a.ok('LIST "" *')
    assert_alive(mail_server)


def test_selected_mailbox_deleted_during_idle(mail_server):
    a = connect(mail_server)
    a.ok("CREATE Work")
    a.append("Work", message("work"))
    b = connect(mail_server)
    b.select("Work")
    tag = _idle(b)
    a.ok("DELETE Work")
    time.sleep(0.3)
    b.send(b"DONE\r\n")
    try:
        reply = b.read_reply(tag)
    except ServerClosed:
        raise AssertionError("connection closed without a response") from None
    assert reply.code("SERVERBUG") is None, reply
    if reply.bye:
        assert b.read_until_close() == []
    else:
        assert reply.status in ("OK", "NO", "BAD"), reply
    assert_alive(mail_server)


def test_expunging_a_message_never_announced_leaves_the_numbers_consistent(mail_server):
    fill_inbox(mail_server, 2)
    a = mail_server.imaps("alice")
    a.select("INBOX")
    b = mail_server.imaps("alice")
    typ, _ = b.append("INBOX", "(\\Deleted)", None, message("born deleted"))
    assert typ == "OK"
    a.response("EXISTS")  # forget what SELECT said
    typ, _ = a.expunge()  # A first hears of the new message here, and expunges it
    assert typ == "OK"
    a.noop()
    _, exists = a.response("EXISTS")
    # never told of the message, and it is gone: no EXISTS may count it (RFC 9051 §7.4.1)
    assert exists in ([None], [b"2"]), exists
    typ, data = a.search(None, "ALL")
    seen_by_a = data[0].split() if data and data[0] else []
    typ, status = b.status("INBOX", "(MESSAGES)")
    assert typ == "OK"
    messages = int(status[0].split(b"MESSAGES ")[1].rstrip(b")"))
    assert len(seen_by_a) == messages == 2, (seen_by_a, status)
