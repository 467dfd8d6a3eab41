"""One IMAP session: the read / dispatch / respond loop, states, and login.

Theory of operation. Bytes from :class:`~reference_server.transport.Connection`
go into :class:`~conformance.wire.imap.ImapCommandReader`, which frames
commands and stops at each synchronising literal so the session can accept
it (``+``) or refuse it (tagged NO/BAD) before the client sends it (RFC 9051
§7.5). A complete command is typed by :func:`~conformance.wire.imap.parse_command`;
a bad one is answered BAD with the reason and the session goes on. Which
commands a state allows (RFC 9051 §3) is the handler table's call: a
command of another state gets BAD naming the state.

Responses are collected and written together just before the session waits
for input, so pipelined commands cost one write. Changes other sessions
make to the selected mailbox reach this one through
:class:`~reference_server.imap.selected.SelectedMailbox`, which decides when
an EXPUNGE may be sent (never during FETCH, STORE or SEARCH: RFC 9051 §7.5.1).

Nothing a client sends ends the session except LOGOUT, EOF, the autologout
timer (RFC 9051 §5.4), too many failed logins, or shutdown.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from conformance.wire import NEED_DATA, ConnectionClosed
from conformance.wire.imap import (
    Authenticate,
    Enable,
    Id,
    ImapBadCommand,
    ImapCommand,
    ImapCommandReader,
    LiteralRequest,
    Login,
    ParsedCommand,
    parse_command,
    quote,
)

from ..auth import decode_plain
from ..responsetext import ascii_text as _ascii
from ..storage.imapstore import MailboxNotFound
from ..transport import ConnectionTimeout

if TYPE_CHECKING:
    from ..auth import Account
    from ..transport import Connection
    from .selected import SelectedMailbox
    from .server import ImapListener

__all__ = ["Handler", "ImapSession", "State"]

log = logging.getLogger("reference_server.imap")


_NO_EXPUNGE_DURING = frozenset({"FETCH", "STORE", "SEARCH"})  # RFC 9051 §7.5.1


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"


class Close(Exception):
    """End the session once the responses so far are sent."""


Handler = Callable[["ImapSession", Any], Awaitable[None]]

# Capabilities whatever the state (RFC 9051 §6.1.1); login ones are added per connection.
BASE_CAPABILITIES = (
    "IMAP4rev1",
    "LITERAL+",
    "SASL-IR",
    "ID",
    "ENABLE",
    "IDLE",
    "NAMESPACE",
    "UIDPLUS",
    "MOVE",
    "UNSELECT",
    "CHILDREN",
    "SPECIAL-USE",
    "CONDSTORE",
)


class ImapSession:
    """State of one IMAP connection; handlers in :mod:`.commands` read and change it."""

    def __init__(self, listener: ImapListener, conn: Connection) -> None:
        self.listener = listener
        self.server = listener.server
        self.settings = self.server.config.imap
        self.conn = conn
        self.reader = ImapCommandReader(
            max_line=self.settings.max_line,
            max_literal=self.settings.max_literal,
            literal_plus=True,
        )
        self.state = State.NOT_AUTHENTICATED
        self.account: Account | None = None
        self.selected: SelectedMailbox | None = None
        self.enabled: set[str] = set()
        self.failures = 0
        self._out = bytearray()
        self.session_id = f"{int(time.time() * 1000):x}{random.getrandbits(24):06x}"

    # -- policy ---------------------------------------------------------------------------

    @property
    def user(self) -> str:
        assert self.account is not None
        return self.account.username

    @property
    def login_allowed(self) -> bool:
        """Whether passwords may be sent now (RFC 9051 §6.2.3, LOGINDISABLED)."""
        return self.conn.tls or self.settings.plaintext_auth

    @property
    def starttls_offered(self) -> bool:
        return (
            self.listener.tls_mode == "starttls" and not self.conn.tls and self.conn.can_start_tls
        )

    def capabilities(self) -> list[str]:
        caps = list(BASE_CAPABILITIES)
        caps.append(f"APPENDLIMIT={self.settings.max_literal}")  # RFC 7889
        if self.state is State.NOT_AUTHENTICATED:
            if self.starttls_offered:
                caps.append("STARTTLS")
            caps.append("AUTH=PLAIN" if self.login_allowed else "LOGINDISABLED")
        return caps

    # -- output ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out += data

    def untagged(self, text: str | bytes) -> None:
        self.send(b"* " + (_ascii(text) if isinstance(text, str) else text) + b"\r\n")

    def tagged(self, tag: str, status: str, text: str, code: str | None = None) -> None:
        """The command's completion (RFC 9051 §7.1); ``code`` goes in brackets."""
        self._flush_updates(tag_status=status)
        head = f"{tag} {status} " + (f"[{code}] " if code else "")
        self.send(_ascii(head + text) + b"\r\n")

    def ok(self, tag: str, text: str, code: str | None = None) -> None:
        self.tagged(tag, "OK", text, code)

    def no(self, tag: str, text: str, code: str | None = None) -> None:
        self.tagged(tag, "NO", text, code)

    def bad(self, tag: str | None, text: str, code: str | None = None) -> None:
        if tag is None:
            self.send(_ascii("* BAD " + (f"[{code}] " if code else "") + text) + b"\r\n")
        else:
            self.tagged(tag, "BAD", text, code)

    def _flush_updates(self, *, tag_status: str) -> None:
        """Untagged news about the selected mailbox goes before a completion (RFC 9051 §7)."""
        if self.selected is not None and self.state is State.SELECTED:
            self.send(self.selected.pending_updates(allow_expunge=self.expunge_allowed))

    expunge_allowed = True  # False while FETCH, STORE or SEARCH (not the UID forms) runs

    async def flush(self) -> None:
        if self._out:
            self.conn.write(bytes(self._out))
            self._out.clear()
            await self.conn.drain()

    # -- input ----------------------------------------------------------------------------

    def _timeout(self) -> float:
        if self.state is State.NOT_AUTHENTICATED:
            return self.settings.login_timeout
        return self.settings.autologout

    async def read_more(self) -> None:
        """Flush, then wait for input within the state's timeout.

        Raises:
            Close: the client was silent too long; it was told ``* BYE``.
        """
        await self.flush()
        try:
            data = await self.conn.read(self._timeout())
        except ConnectionTimeout:
            self.untagged("BYE autologout; idle for too long (RFC 9051 §5.4)")
            raise Close from None
        self.reader.receive_data(data)

    async def next_line(self) -> bytes | None:
        """A raw line (SASL response, IDLE's DONE); None at EOF or for a bad line."""
        while True:
            line = self.reader.next_line()
            if isinstance(line, ConnectionClosed):
                return None
            if isinstance(line, ImapBadCommand):
                return None
            if line is NEED_DATA:
                await self.read_more()
                continue
            assert isinstance(line, bytes)
            return line

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        host = self.server.config.hostname
        caps = " ".join(self.capabilities())
        self.untagged(f"OK [CAPABILITY {caps}] {host} IMAP4rev1 mailharness reference server ready")
        try:
            while True:
                event = self.reader.next_event()
                if event is NEED_DATA:
                    await self.read_more()
                    continue
                if isinstance(event, ConnectionClosed):
                    return
                if isinstance(event, LiteralRequest):
                    self._decide_literal(event)
                elif isinstance(event, ImapBadCommand):
                    self.bad(event.tag, event.reason, event.code)
                else:
                    assert isinstance(event, ImapCommand)
                    await self._command(event)
        except Close:
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                await self.flush()
            self.close_mailbox()

    def _decide_literal(self, request: LiteralRequest) -> None:
        if request.too_big:
            self.reader.reject_literal()
            self.no(request.tag, f"literal of {request.size} octets is too big", "TOOBIG")
            return
        allowed = _HANDLERS.get(request.name)
        if allowed is None or self.state not in allowed[0]:
            self.reader.reject_literal()
            self.bad(request.tag, f"{request.name} is not valid in the {self.state.value} state")
            return
        self.reader.accept_literal()
        self.send(b"+ go ahead\r\n")

    async def _command(self, cmd: ImapCommand) -> None:
        # RFC 9051 §7.5.1: no EXPUNGE while responding to FETCH, STORE or SEARCH (the UID
        # forms excepted), whatever the answer: a client's message numbers stay valid
        # through a refused FETCH just as through a completed one
        self.expunge_allowed = cmd.uid or cmd.name not in _NO_EXPUNGE_DURING
        try:
            await self._run_command(cmd)
        finally:
            self.expunge_allowed = True

    async def _run_command(self, cmd: ImapCommand) -> None:
        entry = _HANDLERS.get(cmd.name)
        if entry is None:
            self.bad(cmd.tag, f"unknown command {cmd.name}")
            return
        states, handler = entry
        if self.state not in states:
            state = self.state.value
            self.bad(cmd.tag, f"{cmd.name} is not valid in the {state} state (RFC 9051 §3)")
            return
        parsed = parse_command(cmd)
        if isinstance(parsed, ImapBadCommand):
            self.bad(parsed.tag, parsed.reason, parsed.code)
            return
        view = self.selected
        try:
            if view is not None and view.event.is_set():
                # another session changed the mailbox: its news goes out with this command
                view.event.clear()
                await self.server.offload(view.refresh)
            await handler(self, parsed)
        except MailboxNotFound:
            if view is None or self.selected is not view:
                raise
            # RFC 2180 §3: the selected mailbox was deleted or renamed elsewhere; of the
            # ways the RFC allows, ending the session is the one every client understands
            self.untagged("BYE [NONEXISTENT] the selected mailbox was deleted or renamed")
            raise Close from None

    def close_mailbox(self) -> None:
        """Leave the selected state without expunging (UNSELECT, or the session ends)."""
        if self.selected is not None:
            self.selected.close()
            self.selected = None
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    # -- any state ------------------------------------------------------------------------

    async def _capability(self, cmd: ParsedCommand) -> None:
        self.untagged("CAPABILITY " + " ".join(self.capabilities()))
        self.ok(cmd.tag, "CAPABILITY completed")

    async def _noop(self, cmd: ParsedCommand) -> None:
        if self.selected is not None:
            await self.server.offload(self.selected.refresh)
        self.ok(cmd.tag, "NOOP completed")

    async def _logout(self, cmd: ParsedCommand) -> None:
        self.untagged(f"BYE {self.server.config.hostname} logging out")
        self.ok(cmd.tag, "LOGOUT completed")
        raise Close

    async def _id(self, cmd: Id) -> None:
        # RFC 2971 §3.1: the server's own identification, whatever the client sent
        fields = b'"name" "mailharness reference server" "vendor" "mailharness"'
        self.untagged(b"ID (" + fields + b")")
        self.ok(cmd.tag, "ID completed")

    # -- not authenticated ------------------------------------------------------------------

    async def _starttls(self, cmd: ParsedCommand) -> None:
        if not self.starttls_offered:
            self.bad(cmd.tag, "STARTTLS is not offered here (TLS is active or not configured)")
            return
        assert self.server.tls_context is not None
        self.ok(cmd.tag, "begin TLS negotiation now")
        await self.flush()
        upgraded = await self.conn.upgrade(
            self.server.tls_context,
            unread=self.reader.discard_pending(),
            timeout=30.0,
            who=self.session_id,
            after="STARTTLS (RFC 9051 §6.2.1)",
        )
        if not upgraded:
            raise Close

    async def _login(self, cmd: Login) -> None:
        if not self.login_allowed:
            self.no(cmd.tag, "LOGIN is disabled before STARTTLS", "PRIVACYREQUIRED")
            return
        await self._authenticate_as(cmd.tag, cmd.username, cmd.password, "LOGIN")

    async def _authenticate(self, cmd: Authenticate) -> None:
        if cmd.mechanism != "PLAIN":
            self.no(cmd.tag, f"unsupported SASL mechanism {cmd.mechanism}; AUTH=PLAIN is offered")
            return
        if not self.login_allowed:
            self.no(cmd.tag, "authentication is disabled before STARTTLS", "PRIVACYREQUIRED")
            return
        token = cmd.initial_response
        if token is None:
            self.send(b"+ \r\n")  # an empty challenge: PLAIN starts with the client
            line = await self.next_line()
            if line is None:
                self.bad(cmd.tag, "bad SASL response line")
                return
            token = line.decode("ascii", "replace")
        if token == "*":
            # RFC 9051 §6.2.2: a "*" cancels; the server MUST answer BAD
            self.bad(cmd.tag, "authentication cancelled")
            return
        try:
            authzid, name, password = decode_plain(token)
        except (ValueError, binascii.Error) as exc:
            self.bad(cmd.tag, f"bad SASL PLAIN response: {exc}")
            return
        if authzid and authzid != name:
            self.no(cmd.tag, "acting as another user is not allowed", "AUTHORIZATIONFAILED")
            return
        await self._authenticate_as(cmd.tag, name, password, "AUTHENTICATE")

    async def _authenticate_as(self, tag: str, name: str, password: str, how: str) -> None:
        account = await self.server.offload(self.server.accounts.authenticate, name, password)
        if account is None:
            self.failures += 1
            delay = self.server.auth_throttle.record_failure(self.conn.peer[0])
            await self.flush()
            await asyncio.sleep(delay)
            if self.failures >= self.settings.max_auth_failures:
                self.untagged("BYE too many authentication failures")
                self.no(tag, "authentication failed", "AUTHENTICATIONFAILED")
                raise Close
            self.no(tag, "authentication failed", "AUTHENTICATIONFAILED")
            return
        self.account = account
        self.state = State.AUTHENTICATED
        log.info("%s: %s logged in", self.session_id, account.username)
        caps = " ".join(self.capabilities())
        self.ok(tag, f"{how} completed", f"CAPABILITY {caps}")

    # -- authenticated ----------------------------------------------------------------------

    async def _enable(self, cmd: Enable) -> None:
        # RFC 5161 §3.1: list only what this command newly enabled; unknown ones are ignored
        newly = [c for c in cmd.capabilities if c in ENABLEABLE and c not in self.enabled]
        self.enabled.update(newly)
        if "CONDSTORE" in newly and self.selected is not None:
            self.selected.condstore = True
        self.untagged("ENABLED" + "".join(f" {c}" for c in newly))
        self.ok(cmd.tag, "ENABLE completed")

    async def _namespace(self, cmd: ParsedCommand) -> None:
        # RFC 2342: one personal namespace, no shared or other users' ones
        self.untagged(b'NAMESPACE (("" ' + quote("/") + b")) NIL NIL")
        self.ok(cmd.tag, "NAMESPACE completed")


ENABLEABLE = frozenset({"CONDSTORE"})  # RFC 7162 §3.1: ENABLE CONDSTORE turns it on
ANY = frozenset(State)
NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})

_HANDLERS: dict[str, tuple[frozenset[State], Handler]] = {
    "CAPABILITY": (ANY, ImapSession._capability),
    "NOOP": (ANY, ImapSession._noop),
    "LOGOUT": (ANY, ImapSession._logout),
    "ID": (ANY, ImapSession._id),
    "STARTTLS": (NOT_AUTH, ImapSession._starttls),
    "LOGIN": (NOT_AUTH, ImapSession._login),
    "AUTHENTICATE": (NOT_AUTH, ImapSession._authenticate),
    "ENABLE": (AUTH, ImapSession._enable),
    "NAMESPACE": (AUTH, ImapSession._namespace),
}


def register(name: str, states: frozenset[State], handler: Handler) -> None:
    """Add a command handler (the mailbox and message commands live in other modules)."""
    _HANDLERS[name] = (states, handler)
