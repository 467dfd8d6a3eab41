"""Breaking cases for the IMAP core scenarios (RFC 9051 / RFC 3501, ``rfc9051-*.yaml``).

Each case is a scripted server that relays the session to the reference server and
changes one thing on the way: it rewrites one kind of command before the reference server
sees it, or one kind of response before the harness does (and may answer a command
itself, or slip in a command of its own whose answer the client never sees). So the server
behaves as the reference server does, which passes these scenarios, except for the one
rule each case breaks; the phrase shows that the scenario failed on that rule.

The reference server runs in this process for the whole module (one
:class:`~reference_server.controller.ServerThread`), with the accounts and passwords of
:data:`breaking_support.TARGET`. The relay speaks STARTTLS on both sides: when the client
sends STARTTLS, the relay passes it on, then does TLS with the reference server and with
the client.
"""

from __future__ import annotations

import dataclasses
import re
import select
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from breaking_support import TARGET, Handler, run_breaking
from scripted import ScriptConn

from reference_server.auth import hash_password
from reference_server.controller import ServerThread
from reference_server.devsetup import DEV_HOSTNAME, dev_config


@dataclasses.dataclass
class _Backend:
    host: str
    port: int
    tls: ssl.SSLContext


_BACKEND: _Backend | None = None


@pytest.fixture(scope="module", autouse=True)
def reference_backend() -> Iterator[_Backend]:
    """The reference server the relays talk to, with TARGET's accounts."""
    global _BACKEND
    directory = Path(tempfile.mkdtemp(prefix="mh-breaking-imap-"))
    try:
        config, _ = dev_config(directory)
        accounts = {
            "accounts": {
                name: {"password": hash_password(account["password"]), "addresses": [address]}
                for name, account in TARGET["accounts"].items()
                for address in [account["address"]]
            }
        }
        config.accounts_file.write_text(yaml.safe_dump(accounts), encoding="utf-8")
        config = dataclasses.replace(
            config, limits=dataclasses.replace(config.limits, auth_failure_delay=0.05)
        )
        thread = ServerThread(config).start()
        try:
            assert thread.server is not None
            host, port = thread.bound["imap"]
            context = ssl.create_default_context(cafile=str(thread.server.ca_file))
            _BACKEND = _Backend(host, port, context)
            yield _BACKEND
        finally:
            _BACKEND = None
            thread.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


_LITERAL_AT_END = re.compile(rb"~?\{(\d+)\+?\}$")
_COMMAND = re.compile(rb"^(\S+) (\S+)(?: (.*))?$")


class Relay:
    """One client connection, relayed to the reference server.

    Subclasses override :meth:`command` (each command line the client starts, without
    CRLF; return the lines to pass on, which may be none) and :meth:`response` (each
    complete response of the reference server, literals included; return what the
    client gets). Lines inside a literal or after one, and SASL responses, are relayed
    untouched.
    """

    def __init__(self, conn: ScriptConn) -> None:
        assert _BACKEND is not None, "the reference_backend fixture is not running"
        self.backend = _BACKEND
        self.conn = conn
        self.sock: socket.socket = socket.create_connection((_BACKEND.host, _BACKEND.port), 5)
        self.buf = bytearray()  # from the reference server, not yet relayed
        self.tag = b""  # of the last command the client started
        self.verb = b""
        self.args = b""
        self.hidden: set[bytes] = set()  # tags of commands the relay sent itself
        self._literal_left = 0  # octets of a client literal still to come
        self._continuing = False  # the next client line carries on a command

    # -- hooks ------------------------------------------------------------------------

    def command(self, line: bytes) -> list[bytes]:
        return [line]

    def response(self, resp: bytes) -> bytes:
        return resp

    # -- helpers for the hooks ---------------------------------------------------------

    def reply(self, data: bytes) -> None:
        """Answer the client directly."""
        self.conn.send(data)

    def inject(self, tag: bytes, line: bytes) -> None:
        """Send a command of the relay's own; its responses do not reach the client."""
        self.hidden.add(tag)
        self.sock.sendall(tag + b" " + line + b"\r\n")

    @staticmethod
    def tagged(resp: bytes, tag: bytes, status: bytes = b"") -> bool:
        return resp.startswith(tag + b" " + status)

    # -- the relay ----------------------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                if not self._pump_backend():
                    return
                if self.conn.readable(0.005):
                    self._client_line(self.conn.recv_line(30) + self.conn.last_terminator)
        finally:
            self.sock.close()

    def _backend_readable(self, timeout: float) -> bool:
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        return bool(select.select([self.sock], [], [], timeout)[0])

    def _read_backend(self) -> bytes | None:
        """What the reference server has sent: b"" for nothing yet, None at its EOF.

        Non-blocking, since a readable TLS socket may hold only a TLS record (a session
        ticket) and no data.
        """
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return b""
        finally:
            self.sock.settimeout(5)
        return data or None

    def _pump_backend(self, timeout: float = 0.005) -> bool:
        """Relay what the reference server sent; False once it closed the connection."""
        while self._backend_readable(timeout):
            data = self._read_backend()
            if data is None:
                self._relay_responses()
                return False
            if not data:
                break
            self.buf += data
            timeout = 0
        self._relay_responses()
        return True

    def _relay_responses(self) -> None:
        while (resp := _take_response(self.buf)) is not None:
            head = resp.split(b" ", 1)[0]
            if head in self.hidden:
                self.hidden.discard(head)
                continue
            if resp.startswith(b"* ") and self.hidden:
                continue  # untagged data while the relay's own command runs belongs to it
            out = self.response(resp)
            if out:
                self.conn.send(out)

    def _client_line(self, raw: bytes) -> None:
        if self._literal_left:
            if len(raw) <= self._literal_left:
                self._literal_left -= len(raw)
                self._continuing = self._literal_left == 0
                self.sock.sendall(raw)
                return
            rest = raw[self._literal_left :]
            self._literal_left = 0
            self.sock.sendall(raw)
            self._note_literal(rest.rstrip(b"\r\n"))
            return
        line = raw.rstrip(b"\r\n")
        if self._continuing:
            self._continuing = False
            self.sock.sendall(raw)
            self._note_literal(line)
            return
        m = _COMMAND.match(line)
        if m is not None:
            self.tag, self.verb, self.args = m.group(1), m.group(2).upper(), m.group(3) or b""
        if m is not None and self.verb == b"STARTTLS":
            self._starttls(raw)
            return
        for out in self.command(line):
            self.sock.sendall(out + b"\r\n")
            self._note_literal(out)

    def _note_literal(self, line: bytes) -> None:
        found = _LITERAL_AT_END.search(line)
        if found is not None:
            self._literal_left = int(found.group(1))
            self._continuing = self._literal_left == 0

    def _starttls(self, raw: bytes) -> None:
        self.sock.sendall(raw)
        while True:
            self._backend_readable(5)
            self.sock.settimeout(5)
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the reference server closed during STARTTLS")
            self.buf += data
            resp = _take_response(self.buf)
            if resp is not None:
                break
        self.conn.send(resp)
        if not self.tagged(resp, self.tag, b"OK"):
            return
        self.sock = self.backend.tls.wrap_socket(self.sock, server_hostname=DEV_HOSTNAME)
        self.conn.starttls(discard_pipelined=True)


def _take_response(buf: bytearray) -> bytes | None:
    """One complete response (with its literals) from the front of ``buf``, or None."""
    pos = 0
    while True:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        literal = _LITERAL_AT_END.search(bytes(buf[pos:end]))
        if literal is None:
            resp = bytes(buf[: end + 2])
            del buf[: end + 2]
            return resp
        pos = end + 2 + int(literal.group(1))
        if len(buf) < pos:
            return None


def _relay(cls: type[Relay]) -> Handler:
    def handle(conn: ScriptConn) -> None:
        cls(conn).run()

    return handle


# ---------------------------------------------------------------------------- the cases


class CloseSendsExpunge(Relay):
    def response(self, resp: bytes) -> bytes:
        if self.verb == b"CLOSE" and self.tagged(resp, self.tag, b"OK"):
            return b"* 1 EXPUNGE\r\n" + resp
        return resp


class UnselectExpunges(Relay):
    def command(self, line: bytes) -> list[bytes]:
        return [self.tag + b" CLOSE"] if self.verb == b"UNSELECT" else [line]


class FailedSelectKeepsMailbox(Relay):
    def command(self, line: bytes) -> list[bytes]:
        if self.verb in (b"SELECT", b"EXAMINE") and b"mh-no-such-mailbox" in self.args:
            return [self.tag + b" NOOP"]  # the mailbox selected before stays selected
        return [line]

    def response(self, resp: bytes) -> bytes:
        if b"mh-no-such-mailbox" in self.args and self.tagged(resp, self.tag, b"OK"):
            return self.tag + b" NO [NONEXISTENT] no such mailbox\r\n"
        return resp


class ExamineIsWritable(Relay):
    def command(self, line: bytes) -> list[bytes]:
        if self.verb == b"EXAMINE":
            return [self.tag + b" SELECT " + self.args]
        return [line]

    def response(self, resp: bytes) -> bytes:
        return resp.replace(b"[READ-WRITE]", b"[READ-ONLY]")


class RenameLeavesInferiors(Relay):
    def response(self, resp: bytes) -> bytes:
        if resp.startswith(b"* LIST "):
            return resp.replace(b"mh-ren-b/kid", b"mh-ren-a/kid")
        return resp


class UnsubscribeIgnored(Relay):
    subscribed = False

    def command(self, line: bytes) -> list[bytes]:
        if self.verb == b"SUBSCRIBE":
            self.subscribed = True
        if self.verb == b"UNSUBSCRIBE" and self.subscribed:
            return [self.tag + b" NOOP"]
        return [line]


class DeleteDropsSubscription(Relay):
    def command(self, line: bytes) -> list[bytes]:
        if self.verb == b"DELETE" and self.args == b"mh-subkeep":
            self.inject(b"mhx1", b"UNSUBSCRIBE mh-subkeep")
        return [line]


class PercentCrossesDelimiter(Relay):
    def command(self, line: bytes) -> list[bytes]:
        return [line.replace(b'"mh-lwc%"', b'"mh-lwc*"')] if self.verb == b"LIST" else [line]


class TrailingDelimiterKept(Relay):
    def response(self, resp: bytes) -> bytes:
        return resp.replace(b'"mh-crh"\r\n', b'"mh-crh/"\r\n') if b"* LIST" in resp else resp


class DeleteTakesInferiors(Relay):
    appended = False

    def command(self, line: bytes) -> list[bytes]:
        if self.verb == b"APPEND":
            self.appended = True
        if self.verb == b"DELETE" and self.args == b"mh-delp" and self.appended:
            self.inject(b"mhx1", b"DELETE mh-delp/kid")
        return [line]


class RecreatedMailboxReusesUids(Relay):
    first_uidvalidity: bytes | None = None

    def command(self, line: bytes) -> list[bytes]:
        if self.verb == b"UID" and self.args.startswith(b"FETCH 1:"):
            return [self.tag + b" UID FETCH 1:* UID"]  # the old UIDs are there again
        return [line]

    def response(self, resp: bytes) -> bytes:
        m = re.search(rb"\[UIDVALIDITY (\d+)\]", resp)
        if m is not None and self.verb == b"SELECT":
            if self.first_uidvalidity is None:
                self.first_uidvalidity = m.group(1)
            return resp.replace(m.group(1), self.first_uidvalidity)
        return resp


class UidsChangeBetweenSessions(Relay):
    selections = 0  # sessions that selected mh-uidp (class-wide)
    later = False  # this session is the second one to select it

    def command(self, line: bytes) -> list[bytes]:
        if self.verb == b"SELECT" and self.args == b"mh-uidp":
            type(self).selections += 1
            self.later = type(self).selections == 2
        return [line]

    def response(self, resp: bytes) -> bytes:
        if self.later and b" FETCH (" in resp:
            return re.sub(rb"\bUID (\d+)", lambda m: b"UID %d" % (int(m.group(1)) + 1000), resp)
        return resp


class ListsEightBitNames(Relay):
    def response(self, resp: bytes) -> bytes:
        return resp.replace(b"mh-caf&AOk-", "mh-café".encode()) if b"* LIST" in resp else resp


class HeaderFieldsWithoutBlankLine(Relay):
    def response(self, resp: bytes) -> bytes:
        whole = b"{41}\r\nSubject: mh sections\r\nX-Mh-Probe: one\r\n\r\n"
        return resp.replace(whole, b"{39}\r\nSubject: mh sections\r\nX-Mh-Probe: one\r\n")


class PartialWithoutOrigin(Relay):
    def response(self, resp: bytes) -> bytes:
        return resp.replace(b"BODY[]<0> {10}", b"BODY[] {10}")


class SenderNotDefaulted(Relay):
    def response(self, resp: bytes) -> bytes:
        ann = b'(("Ann Example" NIL "ann" "example.org"))'
        return resp.replace(ann + b" " + ann + b" " + ann, ann + b" NIL NIL", 1)


class PartsNumberedWrong(Relay):
    def response(self, resp: bytes) -> bytes:
        return resp.replace(b"BODY[2] {17}\r\n<p>part two</p>\r\n", b"BODY[2] {10}\r\npart one\r\n")


class ReversedRangeIsOneNumber(Relay):
    def command(self, line: bytes) -> list[bytes]:
        return [line.replace(b" FETCH 3:2 ", b" FETCH 3 ")]


class StarRangeMissesLastUid(Relay):
    def command(self, line: bytes) -> list[bytes]:
        return [line.replace(b"UID FETCH 4000000000:* ", b"UID FETCH 4000000000 ")]


class NotIgnored(Relay):
    def command(self, line: bytes) -> list[bytes]:
        return [line.replace(b" SEARCH NOT FLAGGED", b" SEARCH FLAGGED")]


class UnknownCharsetIsBad(Relay):
    def response(self, resp: bytes) -> bytes:
        if self.tagged(resp, self.tag, b"NO [BADCHARSET"):
            return self.tag + b" BAD unknown charset\r\n"
        return resp


class StoreFlagsAdds(Relay):
    def command(self, line: bytes) -> list[bytes]:
        return [line.replace(b" STORE 1 FLAGS (", b" STORE 1 +FLAGS (")]


class CopyDropsFlags(Relay):
    copied = False

    def command(self, line: bytes) -> list[bytes]:
        self.copied = self.copied or self.verb == b"COPY"
        return [line]

    def response(self, resp: bytes) -> bytes:
        if self.copied and b" FETCH (" in resp:
            return re.sub(rb"FLAGS \([^)]*\)", b"FLAGS ()", resp)
        return resp


class ExpungeOldNumbers(Relay):
    def response(self, resp: bytes) -> bytes:
        if self.verb != b"EXPUNGE":
            return resp
        if re.fullmatch(rb"\* \d+ EXPUNGE\r\n", resp):
            return b""
        if self.tagged(resp, self.tag, b"OK"):
            return b"* 2 EXPUNGE\r\n* 4 EXPUNGE\r\n" + resp  # as numbered before either went
        return resp


class ExpungeDuringFetch(Relay):
    expunged = False  # set by the session that expunges, seen by the other (class-wide)

    def response(self, resp: bytes) -> bytes:
        if self.verb == b"EXPUNGE" and self.tagged(resp, self.tag, b"OK"):
            type(self).expunged = True
        elif self.verb == b"FETCH" and self.expunged and self.tagged(resp, self.tag, b"OK"):
            type(self).expunged = False
            return b"* 2 EXPUNGE\r\n" + resp
        return resp


class ReordersPipeline(Relay):
    held: list[bytes]

    def command(self, line: bytes) -> list[bytes]:
        if self.verb == b"STORE" and self.tag.startswith(b"p"):
            self.held = [line]
            return []
        if self.verb == b"FETCH" and self.tag.startswith(b"p"):
            return [line, *self.held]  # the FETCH overtakes the STORE sent before it
        return [line]


class NoPlainWithoutInitialResponse(Relay):
    def command(self, line: bytes) -> list[bytes]:
        if self.verb == b"AUTHENTICATE" and self.args.upper() == b"PLAIN":
            self.reply(self.tag + b" BAD send the PLAIN response with the command\r\n")
            return []
        return [line]


class CancelGetsNo(Relay):
    cancelled = False

    def command(self, line: bytes) -> list[bytes]:
        self.cancelled = line == b"*"
        return [line]

    def response(self, resp: bytes) -> bytes:
        if self.cancelled and self.tagged(resp, self.tag, b"BAD"):
            return self.tag + b" NO authentication cancelled\r\n"
        return resp


class NumberBeyondExistsIgnored(Relay):
    def response(self, resp: bytes) -> bytes:
        if self.verb in (b"FETCH", b"STORE") and self.tagged(resp, self.tag, b"BAD"):
            return self.tag + b" OK " + self.verb + b" completed (nothing to do)\r\n"
        return resp


# scenario id -> (server breaking exactly the rule; phrase in the failure)
CASES: dict[str, tuple[Handler | dict[str, Handler], str]] = {
    "imap.close.expunges-silently": (
        _relay(CloseSendsExpunge),
        "expected no untagged response matching /^\\* \\d+ EXPUNGE$/",
    ),
    "imap.unselect.keeps-deleted": (
        _relay(UnselectExpunges),
        "expected an untagged response matching /^\\* STATUS",
    ),
    "imap.select.failure-leaves-none-selected": (_relay(FailedSelectKeepsMailbox), "capture 'r1'"),
    "imap.examine.no-permanent-changes": (
        _relay(ExamineIsWritable),
        "expected no untagged response matching /\\\\Flagged/",
    ),
    "imap.rename.mailbox-and-inferiors": (
        _relay(RenameLeavesInferiors),
        'mh-ren-b/kid"?$/',
    ),
    "imap.subscribe.lsub-round-trip": (
        _relay(UnsubscribeIgnored),
        "expected no untagged response matching /^\\* LSUB",
    ),
    "imap.subscribe.kept-after-delete": (
        _relay(DeleteDropsSubscription),
        "expected an untagged response matching /^\\* LSUB",
    ),
    "imap.list.wildcards-percent-star": (
        _relay(PercentCrossesDelimiter),
        'expected no untagged response matching /^\\* LIST \\([^)]*\\) \\S+ "?mh-lwc/',
    ),
    "imap.create.trailing-delimiter-and-levels": (
        _relay(TrailingDelimiterKept),
        'mh-crh/"?$/',
    ),
    "imap.delete.inferiors-survive": (
        _relay(DeleteTakesInferiors),
        "expected an untagged response matching /^\\* LIST",
    ),
    "imap.create.recreated-name-fresh-uids": (
        _relay(RecreatedMailboxReusesUids),
        "capture 'fresh'",
    ),
    "imap.uid.persist-and-ascend": (_relay(UidsChangeBetweenSessions), "capture 'kept'"),
    "imap.mailbox.modified-utf7-names": (
        _relay(ListsEightBitNames),
        'mh-caf&AOk-"?$/',
    ),
    "imap.fetch.header-fields-and-text": (
        _relay(HeaderFieldsWithoutBlankLine),
        "BODY[HEADER.FIELDS (SUBJECT X-MH-PROBE)] {39}",
    ),
    "imap.fetch.partial-substrings": (_relay(PartialWithoutOrigin), "got: * 1 FETCH (BODY[] {10}"),
    "imap.fetch.full-envelope-body": (
        _relay(SenderNotDefaulted),
        '(("Ann Example" NIL "ann" "example.org")) NIL NIL',
    ),
    "imap.fetch.multipart-structure-and-parts": (
        _relay(PartsNumberedWrong),
        "got: * 1 FETCH (BODY[2] {10}",
    ),
    "imap.fetch.sequence-set-forms": (
        _relay(ReversedRangeIsOneNumber),
        "expected an untagged response matching /^\\* 2 FETCH",
    ),
    "imap.uid.ranges-store-search-copy": (
        _relay(StarRangeMissesLastUid),
        "expected an untagged response matching /^\\* 2 FETCH \\(.*\\bUID",
    ),
    "imap.search.keys-and-combinations": (
        _relay(NotIgnored),
        "expected an untagged response matching /^\\* SEARCH (?:2 3|3 2)$/",
    ),
    "imap.search.charset-no-for-unknown": (_relay(UnknownCharsetIsBad), "expected tagged NO"),
    "imap.store.replace-and-keywords": (
        _relay(StoreFlagsAdds),
        "expected an untagged response matching /^\\* 1 FETCH \\(.*\\bFLAGS \\((?![^)]*\\\\Seen)",
    ),
    "imap.copy.keeps-flags-and-date": (
        _relay(CopyDropsFlags),
        "got: * 1 FETCH (FLAGS () INTERNALDATE",
    ),
    "imap.expunge.several-renumbered": (_relay(ExpungeOldNumbers), "capture 'order'"),
    "imap.expunge.not-during-fetch-store-search": (
        _relay(ExpungeDuringFetch),
        "expected no untagged response matching /^\\* \\d+ EXPUNGE$/",
    ),
    "imap.pipelining.in-order": (
        _relay(ReordersPipeline),
        "expected an untagged response matching "
        "/^\\* 1 FETCH \\((?=.*\\bUID \\d)(?=.*\\\\Flagged)(?=.*\\\\Answered)/",
    ),
    "imap.authenticate.plain-empty-challenge": (
        _relay(NoPlainWithoutInitialResponse),
        "expected tagged NO",
    ),
    "imap.authenticate.cancel-unknown-bad-base64": (_relay(CancelGetsNo), "expected tagged BAD"),
    "imap.fetch.number-beyond-exists-bad": (
        _relay(NumberBeyondExistsIgnored),
        "expected tagged BAD",
    ),
}


@pytest.mark.parametrize("scenario_id", sorted(CASES))
def test_fails_on_the_broken_rule(scenario_id, tmp_path, test_certs):
    handler, phrase = CASES[scenario_id]
    run_breaking(scenario_id, handler, phrase, tmp_path, test_certs)
