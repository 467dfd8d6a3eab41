"""One POP3 session (RFC 1939): the read / dispatch / respond loop and every command.

Theory of operation. Bytes from :class:`~reference_server.transport.Connection`
go into :class:`~conformance.wire.pop3.Pop3CommandReader`; each command is
answered in order, and responses are written together just before the
session waits for more input, so pipelined commands (RFC 2449 §6.6) cost one
write. The state (AUTHORIZATION or TRANSACTION; UPDATE is the QUIT handler)
decides which table of handlers a keyword is looked up in; a keyword of the
other table gets ``-ERR`` naming the state (RFC 1939 §3).

Nothing the client sends ends the session except QUIT, EOF, the autologout
timer, too many failed logins, or shutdown; only QUIT from TRANSACTION
deletes anything (RFC 1939 §6). The maildrop lock is released in a
``finally``, however the session ends.
"""

from __future__ import annotations

import asyncio
import binascii
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from conformance.wire import NEED_DATA, ConnectionClosed
from conformance.wire.pop3 import Pop3BadLine, Pop3Command, Pop3CommandReader, byte_stuff

from ..auth import decode_plain
from ..responsetext import ascii_text as _ascii
from ..storage.maildrop import DropMessage, Maildrop, MaildropLocked
from ..transport import ConnectionTimeout

if TYPE_CHECKING:
    from ..auth import Account
    from ..transport import Connection
    from .server import Pop3Listener

__all__ = ["COMMAND_LINE_LIMIT", "Pop3Session", "State"]

log = logging.getLogger("reference_server.pop3")

# RFC 2449 §4: commands of up to 255 octets must be accepted; we take more.
COMMAND_LINE_LIMIT = 1024
# RFC 5034 §4 lifts the line limit for SASL responses; as SMTP AUTH (RFC 4954 §4).
SASL_LINE_LIMIT = 12288


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"


class _Close(Exception):
    """End the session after the responses so far are sent."""


Handler = Callable[["Pop3Session", Pop3Command], Awaitable[bytes]]


def _ok(text: str = "") -> bytes:
    return _ascii(f"+OK {text}\r\n") if text else b"+OK\r\n"


def _err(text: str) -> bytes:
    return _ascii(f"-ERR {text}\r\n")


class Pop3Session:
    """State of one POP3 connection."""

    def __init__(self, listener: Pop3Listener, conn: Connection) -> None:
        self.listener = listener
        self.server = listener.server
        self.settings = self.server.config.pop3
        self.conn = conn
        self.reader = Pop3CommandReader(max_line=SASL_LINE_LIMIT)
        self.state = State.AUTHORIZATION
        self.user_name: str | None = None  # after USER, until PASS
        self.account: Account | None = None
        self.drop: Maildrop | None = None
        self.failures = 0
        self._out = bytearray()
        self.session_id = f"{int(time.time() * 1000):x}{random.getrandbits(24):06x}"

    # -- capabilities and policy -----------------------------------------------------------

    @property
    def login_allowed(self) -> bool:
        """Whether passwords may be sent on this connection now (RFC 2595 §2.2)."""
        return self.conn.tls or self.settings.plaintext_auth

    @property
    def stls_offered(self) -> bool:
        return (
            self.listener.tls_mode == "starttls" and not self.conn.tls and self.conn.can_start_tls
        )

    def capabilities(self) -> list[str]:
        """The CAPA list (RFC 2449 §5); the same in both states, as §5 requires."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.login_allowed:
            caps += ["USER", "SASL PLAIN"]
        if self.stls_offered:
            caps.append("STLS")
        if self.settings.login_delay:
            caps.append(f"LOGIN-DELAY {self.settings.login_delay}")
        caps.append("IMPLEMENTATION mailharness-reference-server")
        return caps

    # -- I/O ---------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out += data

    async def flush(self) -> None:
        if self._out:
            self.conn.write(bytes(self._out))
            self._out.clear()
            await self.conn.drain()

    async def _next_event(self) -> Pop3Command | Pop3BadLine | None:
        """The next command from the client, or None at EOF (see :meth:`_read_more`)."""
        while True:
            event = self.reader.next_event()
            if isinstance(event, ConnectionClosed):
                return None
            if event is not NEED_DATA:
                assert isinstance(event, Pop3Command | Pop3BadLine)
                return event
            await self._read_more()

    async def _next_response_line(self) -> bytes | Pop3BadLine | None:
        """The client's answer to a SASL challenge, as :meth:`_next_event` does commands."""
        while True:
            line = self.reader.next_response_line()
            if isinstance(line, ConnectionClosed):
                return None
            if line is not NEED_DATA:
                assert isinstance(line, bytes | Pop3BadLine)
                return line
            await self._read_more()

    async def _read_more(self) -> None:
        """Flush responses, then wait for input within the autologout time.

        Raises:
            _Close: the autologout timer expired (RFC 1939 §3: no response, no UPDATE).
        """
        await self.flush()
        try:
            data = await self.conn.read(self.settings.autologout)
        except ConnectionTimeout:
            log.info("%s: autologout after %gs", self.session_id, self.settings.autologout)
            raise _Close from None
        self.reader.receive_data(data)

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self.send(_ok(f"{self.server.config.hostname} POP3 mailharness reference server ready"))
            while True:
                event = await self._next_event()
                if event is None:
                    return
                if isinstance(event, Pop3BadLine):
                    self.send(_err(event.reason))
                    continue
                if len(event.raw) > COMMAND_LINE_LIMIT:
                    self.send(_err(f"line too long (the limit is {COMMAND_LINE_LIMIT} octets)"))
                    continue
                self.send(await self._dispatch(event))
        except _Close:
            pass
        finally:
            await self._end()

    async def _end(self) -> None:
        try:
            await self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            if self.drop is not None:
                self.drop.close()  # releases the lock; nothing is deleted (not UPDATE)
                self.drop = None

    async def _dispatch(self, cmd: Pop3Command) -> bytes:
        table = _AUTHORIZATION if self.state is State.AUTHORIZATION else _TRANSACTION
        handler = table.get(cmd.keyword)
        if handler is not None:
            return await handler(self, cmd)
        if cmd.keyword == "APOP":
            return _err(
                "APOP is not offered: passwords are stored hashed; use USER/PASS or AUTH PLAIN"
            )
        other = _TRANSACTION if self.state is State.AUTHORIZATION else _AUTHORIZATION
        if cmd.keyword in other:
            return _err(f"{cmd.keyword} is not valid in the {self.state.value} state (RFC 1939 §3)")
        return _err(f"unknown command {cmd.keyword[:40]}")

    # -- AUTHORIZATION -----------------------------------------------------------------------

    def _no_cleartext_login(self) -> bytes | None:
        if self.login_allowed:
            return None
        return _err("[AUTH] cleartext login is disabled here; use STLS first (RFC 2595 §2.2)")

    async def _user(self, cmd: Pop3Command) -> bytes:
        refused = self._no_cleartext_login()
        if refused is not None:
            return refused
        if not cmd.arg:
            return _err("USER needs a name (RFC 1939 §7)")
        self.user_name = cmd.arg
        return _ok("send PASS")  # the same for every name: no user enumeration

    async def _pass(self, cmd: Pop3Command) -> bytes:
        refused = self._no_cleartext_login()
        if refused is not None:
            return refused
        name, self.user_name = self.user_name, None
        if name is None:
            return _err("send USER first (RFC 1939 §7)")
        if not cmd.arg:
            return _err("PASS needs the password (RFC 1939 §7)")
        # RFC 1939 §7: a server may treat spaces in the argument as part of the password
        return await self._login(name, cmd.arg)

    async def _auth(self, cmd: Pop3Command) -> bytes:
        if not cmd.args:
            # not in RFC 5034; clients probe with it (RFC 1734 practice), so list the mechanisms
            return b"+OK SASL mechanisms follow\r\n" + byte_stuff(b"PLAIN\r\n")
        refused = self._no_cleartext_login()
        if refused is not None:
            return refused
        mechanism, *rest = cmd.args
        if mechanism.upper() != "PLAIN":
            return _err(f"unsupported SASL mechanism {mechanism[:40]}; CAPA lists SASL PLAIN")
        if len(rest) > 1:
            return _err("AUTH takes a mechanism and at most an initial response (RFC 5034 §4)")
        if rest:
            token = "" if rest[0] == "=" else rest[0]
        else:
            self.send(b"+ \r\n")  # an empty challenge (RFC 5034 §4)
            line = await self._next_response_line()
            if line is None:
                raise _Close
            if isinstance(line, Pop3BadLine):
                return _err(f"bad SASL response: {line.reason}")
            token = line.decode("ascii", "replace")
        if token == "*":
            return _err("authentication cancelled (RFC 5034 §4)")
        try:
            authzid, name, password = decode_plain(token)
        except (ValueError, binascii.Error) as exc:
            return _err(f"bad SASL PLAIN response: {exc}")
        if authzid and authzid != name:
            return _err("[AUTH] acting as another user (authzid) is not allowed")
        return await self._login(name, password)

    async def _login(self, name: str, password: str) -> bytes:
        account = await self.server.offload(self.server.accounts.authenticate, name, password)
        if account is None:
            self.failures += 1
            delay = self.server.auth_throttle.record_failure(self.conn.peer[0])
            log.info("%s: failed login (%d in this session)", self.session_id, self.failures)
            await self.flush()
            await asyncio.sleep(delay)
            if self.failures >= self.settings.max_auth_failures:
                self.send(_err("[AUTH] too many failures; closing"))
                raise _Close
            return _err("[AUTH] invalid user name or password")
        min_gap = self.settings.login_delay
        last = self.server.pop3_logins.get(account.username)
        if min_gap and last is not None and time.monotonic() - last < min_gap:
            return _err(f"[LOGIN-DELAY] wait {min_gap} seconds between logins (RFC 2449 §8.1.1)")
        try:
            drop = await self.server.offload(self._open_maildrop, account.username)
        except MaildropLocked:
            return _err("[IN-USE] maildrop is locked by another session (RFC 1939 §4)")
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot open the maildrop of %s: %s", self.session_id, name, exc)
            return _err("[SYS/TEMP] cannot open the maildrop; try again later")
        self.drop, self.account, self.state = drop, account, State.TRANSACTION
        self.server.pop3_logins[account.username] = time.monotonic()
        count, octets = self._totals()
        log.info("%s: %s logged in, %d messages", self.session_id, account.username, count)
        return _ok(f"{account.username}'s maildrop has {count} messages ({octets} octets)")

    def _open_maildrop(self, user: str) -> Maildrop:
        return Maildrop.open(self.server.store.ensure_mailbox(user))

    async def _stls(self, cmd: Pop3Command) -> bytes:
        if self.conn.tls:
            return _err("TLS is already active (RFC 2595 §4)")
        if not self.stls_offered or self.server.tls_context is None:
            return _err("STLS is not offered here")
        if cmd.arg:
            return _err("STLS takes no arguments")
        self.send(_ok("begin TLS negotiation"))
        await self.flush()
        upgraded = await self.conn.upgrade(
            self.server.tls_context,
            unread=self.reader.discard_pending(),
            timeout=30.0,
            who=self.session_id,
            after="STLS (RFC 2595 §4)",
        )
        if not upgraded:
            raise _Close
        self.user_name = None
        return b""

    async def _capa(self, cmd: Pop3Command) -> bytes:
        body = "".join(f"{cap}\r\n" for cap in self.capabilities()).encode()
        return b"+OK capability list follows\r\n" + byte_stuff(body)

    async def _quit_authorization(self, cmd: Pop3Command) -> bytes:
        if bad := self._no_args(cmd):
            return bad
        self.send(_ok(f"{self.server.config.hostname} POP3 server signing off"))
        raise _Close

    # -- TRANSACTION -------------------------------------------------------------------------

    def _live(self) -> list[DropMessage]:
        assert self.drop is not None
        return [m for m in self.drop.messages if not m.deleted]

    def _totals(self) -> tuple[int, int]:
        live = self._live()
        return len(live), sum(m.size for m in live)

    def _message(self, arg: str) -> DropMessage | bytes:
        """The message numbered ``arg``, or the -ERR response."""
        assert self.drop is not None
        if not arg.isdigit() or not arg.isascii():
            return _err(f"{arg[:20]!r} is not a message number")
        number = int(arg)
        if not 1 <= number <= len(self.drop.messages):
            return _err(f"no such message: {number}")
        msg = self.drop.messages[number - 1]
        if msg.deleted:
            return _err(f"message {number} is deleted")
        return msg

    async def _read(self, msg: DropMessage) -> bytes | None:
        assert self.drop is not None
        try:
            return await self.server.offload(self.drop.read, msg)
        except OSError as exc:
            log.warning("%s: cannot read message %d: %s", self.session_id, msg.number, exc)
            return None

    @staticmethod
    def _no_args(cmd: Pop3Command) -> bytes | None:
        return _err(f"{cmd.keyword} takes no arguments") if cmd.arg else None

    async def _stat(self, cmd: Pop3Command) -> bytes:
        if bad := self._no_args(cmd):
            return bad
        count, octets = self._totals()
        return _ok(f"{count} {octets}")

    async def _list(self, cmd: Pop3Command) -> bytes:
        if len(cmd.args) > 1:
            return _err("LIST takes at most one message number")
        if cmd.args:
            msg = self._message(cmd.args[0])
            return msg if isinstance(msg, bytes) else _ok(f"{msg.number} {msg.size}")
        count, octets = self._totals()
        body = "".join(f"{m.number} {m.size}\r\n" for m in self._live()).encode()
        return _ok(f"{count} messages ({octets} octets)") + byte_stuff(body)

    async def _uidl(self, cmd: Pop3Command) -> bytes:
        if len(cmd.args) > 1:
            return _err("UIDL takes at most one message number")
        if cmd.args:
            msg = self._message(cmd.args[0])
            return msg if isinstance(msg, bytes) else _ok(f"{msg.number} {msg.uid}")
        body = "".join(f"{m.number} {m.uid}\r\n" for m in self._live()).encode()
        return _ok("unique-id listing follows") + byte_stuff(body)

    async def _retr(self, cmd: Pop3Command) -> bytes:
        if len(cmd.args) != 1:
            return _err("RETR takes one message number")
        msg = self._message(cmd.args[0])
        if isinstance(msg, bytes):
            return msg
        data = await self._read(msg)
        if data is None:
            return _err(f"[SYS/TEMP] message {msg.number} cannot be read now")
        return _ok(f"{msg.size} octets") + byte_stuff(data)

    async def _top(self, cmd: Pop3Command) -> bytes:
        if len(cmd.args) != 2:
            return _err("TOP takes a message number and a number of lines (RFC 1939 §7)")
        msg = self._message(cmd.args[0])
        if isinstance(msg, bytes):
            return msg
        lines_arg = cmd.args[1]
        if not lines_arg.isdigit() or not lines_arg.isascii():
            return _err(f"{lines_arg[:20]!r} is not a number of lines")
        data = await self._read(msg)
        if data is None:
            return _err(f"[SYS/TEMP] message {msg.number} cannot be read now")
        return _ok("top of message follows") + byte_stuff(_top_of(data, int(lines_arg)))

    async def _dele(self, cmd: Pop3Command) -> bytes:
        if len(cmd.args) != 1:
            return _err("DELE takes one message number")
        msg = self._message(cmd.args[0])
        if isinstance(msg, bytes):
            return msg
        msg.deleted = True
        return _ok(f"message {msg.number} deleted")

    async def _noop(self, cmd: Pop3Command) -> bytes:
        return self._no_args(cmd) or _ok()

    async def _rset(self, cmd: Pop3Command) -> bytes:
        if bad := self._no_args(cmd):
            return bad
        assert self.drop is not None
        for msg in self.drop.messages:
            msg.deleted = False
        count, octets = self._totals()
        return _ok(f"maildrop has {count} messages ({octets} octets)")

    async def _quit_transaction(self, cmd: Pop3Command) -> bytes:
        """The UPDATE state (RFC 1939 §6): remove the marked messages, then sign off."""
        if bad := self._no_args(cmd):
            return bad
        drop = self.drop
        assert drop is not None
        failed = await self.server.offload(drop.expunge)
        left = len(self._live())
        if failed:
            log.warning("%s: %d deleted messages not removed", self.session_id, failed)
            self.send(_err("[SYS/TEMP] some deleted messages not removed"))
        else:
            self.send(_ok(f"{self.server.config.hostname} signing off ({left} messages left)"))
        raise _Close


def _top_of(message: bytes, lines: int) -> bytes:
    """The header, the blank line, and the first ``lines`` lines of the body (RFC 1939 §7)."""
    text = message.replace(b"\r\n", b"\n")
    head, sep, body = text.partition(b"\n\n")
    if not sep:
        return message  # no body: the header is the whole message
    kept = body.split(b"\n")
    if kept and kept[-1] == b"":
        kept.pop()
    top = head + b"\n\n" + b"".join(line + b"\n" for line in kept[:lines])
    return top.replace(b"\n", b"\r\n")


_AUTHORIZATION: dict[str, Handler] = {
    "USER": Pop3Session._user,
    "PASS": Pop3Session._pass,
    "AUTH": Pop3Session._auth,
    "STLS": Pop3Session._stls,
    "CAPA": Pop3Session._capa,
    "QUIT": Pop3Session._quit_authorization,
}
_TRANSACTION: dict[str, Handler] = {
    "STAT": Pop3Session._stat,
    "LIST": Pop3Session._list,
    "RETR": Pop3Session._retr,
    "DELE": Pop3Session._dele,
    "NOOP": Pop3Session._noop,
    "RSET": Pop3Session._rset,
    "TOP": Pop3Session._top,
    "UIDL": Pop3Session._uidl,
    "CAPA": Pop3Session._capa,
    "QUIT": Pop3Session._quit_transaction,
}
