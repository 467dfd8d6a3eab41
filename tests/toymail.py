"""ToyMail: a deliberately small in-memory SMTP/POP3/IMAP server for engine tests.

Not the reference server: it speaks just well enough to drive the harness. Handlers returned
by the ``*_handler`` factories run under :class:`scripted.ScriptedServer`.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
from collections.abc import Callable

from scripted import ScriptConn

__all__ = ["Refused", "ToyImap", "ToyMail", "ToyPop3"]

IMAP_CAPS = "IMAP4rev1 STARTTLS AUTH=PLAIN LITERAL+ IDLE ID NAMESPACE UIDPLUS MOVE UNSELECT"
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class _Folder:
    """One mailbox: messages in UID order, their UIDs and flags (RFC 9051 §2.3.1.1)."""

    def __init__(self, uidvalidity: int, messages: list[bytes] | None = None) -> None:
        self.messages: list[bytes] = [] if messages is None else messages
        self.uids: list[int] = []
        self.flags: dict[int, set[str]] = {}
        self.dates: dict[int, str] = {}  # INTERNALDATE when APPEND gave one
        self.uidnext = 1
        self.uidvalidity = uidvalidity

    def sync(self) -> list[int]:
        """The UIDs, in step with ``messages`` (tests may append messages directly)."""
        if len(self.uids) > len(self.messages):
            del self.uids[len(self.messages) :]
        while len(self.uids) < len(self.messages):
            self.uids.append(self.uidnext)
            self.uidnext += 1
        return self.uids

    def add(self, message: bytes, flags: set[str] | None = None) -> int:
        self.messages.append(message)
        uid = self.sync()[-1]
        self.flags[uid] = set(flags or ())
        return uid

    def get(self, uid: int) -> bytes | None:
        uids = self.sync()
        return self.messages[uids.index(uid)] if uid in uids else None

    def remove(self, gone: set[int]) -> None:
        keep = [i for i, uid in enumerate(self.sync()) if uid not in gone]
        self.messages[:] = [self.messages[i] for i in keep]
        self.uids[:] = [self.uids[i] for i in keep]
        for uid in gone:
            self.flags.pop(uid, None)
            self.dates.pop(uid, None)


class ToyMail:
    domain = "example.test"
    idle_timeout = 30.0  # a silent client is dropped after this long

    def __init__(self, accounts: dict[str, str] | None = None) -> None:
        self.accounts: dict[str, str] = dict(accounts or {})
        self.mailboxes: dict[str, list[bytes]] = {u: [] for u in self.accounts}  # INBOXes
        self.lock = threading.Condition()  # guards mailboxes and everything below
        self._folders: dict[str, dict[str, _Folder]] = {}  # user -> mailbox name -> folder
        self._uidvalidity = 1  # the last UIDVALIDITY handed out (INBOXes have 1)
        self._pop_locked: set[str] = set()

    # ------------------------------------------------------------------ store
    def add_account(self, user: str, password: str) -> None:
        with self.lock:
            self.accounts[user] = password
            self.mailboxes.setdefault(user, [])

    def deliver(self, user: str, message: bytes, flags: set[str] | None = None) -> int:
        """Append a message to user's INBOX, wake IDLE waiters; returns its UID."""
        with self.lock:
            uid = self.inbox(user).add(message, flags)
            self.lock.notify_all()
            return uid

    def inbox(self, user: str) -> _Folder:
        """The user's INBOX, whose messages are ``mailboxes[user]``. Hold the lock."""
        box = self.mailboxes.setdefault(user, [])
        folders = self._folders.setdefault(user, {})
        inbox = folders.get("INBOX")
        if inbox is None:
            inbox = folders["INBOX"] = _Folder(1, box)
        elif inbox.messages is not box:  # a test put a new list there
            inbox.messages = box
        return inbox

    def folder(self, user: str, name: str) -> _Folder | None:
        """The mailbox ``name`` (INBOX in any case), or None. Hold the lock."""
        if name.upper() == "INBOX":
            return self.inbox(user)
        return self._folders.setdefault(user, {}).get(name)

    def create(self, user: str, name: str) -> bool:
        """Create a mailbox; False if one of that name exists. Hold the lock."""
        if self.folder(user, name) is not None:
            return False
        self._uidvalidity += 1  # a re-created name gets a new UIDVALIDITY (RFC 9051 §6.3.4)
        self._folders[user][name] = _Folder(self._uidvalidity)
        return True

    def names(self, user: str) -> list[str]:
        """Every mailbox name of ``user``, INBOX first. Hold the lock."""
        self.inbox(user)
        return ["INBOX", *sorted(n for n in self._folders[user] if n != "INBOX")]

    def _sync(self, user: str) -> list[int]:
        return self.inbox(user).sync()

    def _check(self, user: str, password: str) -> bool:
        return user in self.accounts and self.accounts[user] == password

    def _sasl_plain(self, b64: str) -> str | None:
        """Decode a PLAIN response; the user name if the credentials are good."""
        try:
            raw = base64.b64decode(b64.strip(), validate=True).decode("utf-8")
            _authzid, user, password = raw.split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        return user if self._check(user, password) else None

    # ------------------------------------------------------------------ SMTP
    def smtp_handler(
        self,
        *,
        ehlo_keywords: tuple[str, ...] = (
            "PIPELINING",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "STARTTLS",
            "AUTH PLAIN LOGIN",
        ),
        greeting: str = "220 toy.test ESMTP toy",
        require_auth: bool = False,
    ) -> Callable[[ScriptConn], None]:
        def handle(conn: ScriptConn) -> None:
            conn.sendline(greeting)
            helo = authed = None
            sender: str | None = None
            rcpts: list[str] = []
            while True:
                try:
                    line = conn.recv_line(self.idle_timeout).decode("utf-8", "replace")
                except TimeoutError:
                    conn.sendline("421 4.4.2 toy.test idle timeout")
                    return
                verb, _, arg = line.partition(" ")
                verb, arg = verb.upper(), arg.strip()
                if verb in ("EHLO", "HELO"):
                    if not arg:
                        conn.sendline("501 5.5.4 domain required")
                        continue
                    helo, sender, rcpts = arg, None, []
                    kws = [k for k in ehlo_keywords if not (conn.tls and k == "STARTTLS")]
                    if verb == "HELO" or not kws:
                        conn.sendline("250 toy.test")
                    else:
                        lines = ["toy.test", *kws]
                        conn.send(
                            "".join(
                                f"250{' ' if i == len(lines) - 1 else '-'}{t}\r\n"
                                for i, t in enumerate(lines)
                            )
                        )
                elif verb == "MAIL":
                    m = re.fullmatch(r"FROM:\s*<([^>]*)>.*", arg, re.I)
                    if helo is None or sender is not None:
                        conn.sendline("503 5.5.1 bad sequence of commands")
                    elif require_auth and authed is None:
                        conn.sendline("530 5.7.0 authentication required")
                    elif m is None:
                        conn.sendline("501 5.5.4 syntax: MAIL FROM:<address>")
                    else:
                        sender = m.group(1)
                        conn.sendline("250 2.1.0 Ok")
                elif verb == "RCPT":
                    m = re.fullmatch(r"TO:\s*<([^>@]+)@([^>]+)>.*", arg, re.I)
                    if sender is None:
                        conn.sendline("503 5.5.1 need MAIL first")
                    elif m is None:
                        conn.sendline("501 5.5.4 syntax: RCPT TO:<address>")
                    elif m.group(2).lower() != self.domain or m.group(1) not in self.mailboxes:
                        conn.sendline("550 5.1.1 no such mailbox")
                    else:
                        rcpts.append(m.group(1))
                        conn.sendline("250 2.1.5 Ok")
                elif verb == "DATA":
                    if arg:
                        conn.sendline("501 5.5.4 no parameters allowed")
                        continue
                    if not rcpts:
                        conn.sendline("503 5.5.1 need RCPT first")
                        continue
                    conn.sendline("354 End data with <CR><LF>.<CR><LF>")
                    # only CRLF "." CRLF ends the data (RFC 5321 §4.1.1.4): a "." line
                    # ended by a bare LF, or after one, is content (no smuggling)
                    body: list[bytes] = []
                    crlf_before = True
                    while True:
                        raw = conn.recv_line(self.idle_timeout)
                        crlf = conn.last_terminator == b"\r\n"
                        if raw == b"." and crlf and crlf_before:
                            break
                        body.append(raw[1:] if raw.startswith(b".") else raw)
                        crlf_before = crlf
                    msg = b"".join(b + b"\r\n" for b in body)
                    for user in rcpts:
                        self.deliver(user, msg)
                    sender, rcpts = None, []
                    conn.sendline("250 2.0.0 Ok queued")
                elif verb == "RSET":
                    sender, rcpts = None, []
                    conn.sendline("250 2.0.0 Ok")
                elif verb == "NOOP":
                    conn.sendline("250 2.0.0 Ok")
                elif verb == "QUIT":
                    conn.sendline("221 2.0.0 Bye")
                    return
                elif verb == "STARTTLS":
                    if conn.tls or "STARTTLS" not in ehlo_keywords:
                        conn.sendline("503 5.5.1 TLS not available now")
                    elif not conn.tls_available:
                        conn.sendline("454 4.7.0 TLS not available")
                    elif arg:
                        conn.sendline("501 5.5.4 no parameters allowed")
                    else:
                        conn.sendline("220 2.0.0 Ready to start TLS")
                        conn.starttls(discard_pipelined=True)  # RFC 3207 §4.2
                        helo = authed = sender = None
                        rcpts = []
                elif verb == "AUTH":
                    if helo is None or authed is not None or sender is not None:
                        conn.sendline("503 5.5.1 bad sequence of commands")
                        continue
                    who = self._smtp_auth(conn, arg)
                    if who is None:
                        continue
                    if who:
                        authed = who
                        conn.sendline("235 2.7.0 Authentication successful")
                    else:
                        conn.sendline("535 5.7.8 Authentication credentials invalid")
                else:
                    conn.sendline("500 5.5.2 unknown command")

        return handle

    def _smtp_auth(self, conn: ScriptConn, arg: str) -> str | None:
        """Run an AUTH exchange: user name, "" on bad credentials, None if already answered."""
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()

        def ask(challenge: str) -> str | None:
            conn.sendline(f"334 {challenge}")
            answer = conn.recv_line(self.idle_timeout).decode("utf-8", "replace").strip()
            if answer == "*":
                conn.sendline("501 5.0.0 authentication cancelled")
                return None
            return answer

        def b64(text: str) -> str | None:
            try:
                return base64.b64decode(text, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None

        if mech == "PLAIN":
            resp = initial or ask("")
            if resp is None:
                return None
            return self._sasl_plain("" if resp == "=" else resp) or ""
        if mech == "LOGIN":
            user_b64 = initial or ask("VXNlcm5hbWU6")
            if user_b64 is None:
                return None
            pw_b64 = ask("UGFzc3dvcmQ6")
            if pw_b64 is None:
                return None
            user, pw = b64(user_b64), b64(pw_b64)
            if user is None or pw is None:
                conn.sendline("501 5.5.2 invalid base64")
                return None
            return user if self._check(user, pw) else ""
        conn.sendline("504 5.5.4 unrecognized authentication mechanism")
        return None

    # ------------------------------------------------------------------ POP3
    def pop3_handler(
        self, session: Callable[[ToyMail, ScriptConn], ToyPop3] | None = None
    ) -> Callable[[ScriptConn], None]:
        """POP3 sessions made by ``session`` (a ToyPop3 subclass may break a rule on purpose)."""
        make = session or ToyPop3

        def handle(conn: ScriptConn) -> None:
            make(self, conn).run()

        return handle

    # ------------------------------------------------------------------ IMAP
    def imap_handler(
        self, session: Callable[[ToyMail, ScriptConn], ToyImap] | None = None
    ) -> Callable[[ScriptConn], None]:
        """IMAP sessions made by ``session`` (a ToyImap subclass may break a rule on purpose)."""
        make = session or ToyImap

        def handle(conn: ScriptConn) -> None:
            make(self, conn).run()

        return handle


class ToyPop3:
    """One POP3 session: RFC 1939 with CAPA (RFC 2449), STLS (RFC 2595), AUTH PLAIN (RFC 5034).

    Each command is a ``do_<verb>`` method taking the rest of the line, so a test can
    subclass this to break exactly one rule. The maildrop is locked from login to the end
    of the session; a session that ends without QUIT deletes nothing.
    """

    greeting = "+OK toy POP3 ready"
    AUTHORIZATION = frozenset({"USER", "PASS", "AUTH", "STLS", "CAPA", "QUIT"})
    TRANSACTION = frozenset(
        {"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "CAPA", "QUIT"}
    )

    def __init__(self, toy: ToyMail, conn: ScriptConn) -> None:
        self.toy, self.conn = toy, conn
        self.user: str | None = None  # named by the USER just before, for PASS
        self.locked: str | None = None  # whose maildrop, once in TRANSACTION state
        self.view: list[tuple[int, bytes]] = []  # (uid, message), as at login
        self.deleted: set[int] = set()  # indexes into view

    # ---- plumbing
    def run(self) -> None:
        self.conn.sendline(self.greeting)
        try:
            while True:
                try:
                    line = self.read_line()
                except TimeoutError:
                    return  # autologout: no UPDATE (RFC 1939 §3)
                if not self.command(line):
                    return
        finally:
            self.unlock()

    def read_line(self) -> str:
        return self.conn.recv_line(self.toy.idle_timeout).decode("utf-8", "replace")

    def command(self, line: str) -> bool:
        """Answer one command line; False ends the session."""
        verb, _, arg = line.partition(" ")
        verb = verb.upper()  # keywords are case-insensitive (RFC 1939 §3)
        user, self.user = self.user, None  # PASS only right after USER (RFC 1939 §7)
        if verb == "PASS":
            self.user = user
        handler = getattr(self, f"do_{verb.lower()}", None)
        if handler is None:
            self.err("unknown command")
        elif verb not in (self.TRANSACTION if self.locked else self.AUTHORIZATION):
            self.err(f"{verb} not valid in this state")
        else:
            return handler(arg) is not False
        return True

    def ok(self, text: str = "") -> None:
        self.conn.sendline(f"+OK {text}".rstrip())

    def err(self, text: str) -> None:
        self.conn.sendline(f"-ERR {text}")

    def multiline(self, text: str, lines: list[bytes]) -> None:
        body = b"".join(self.stuff(line) + b"\r\n" for line in lines)
        self.conn.send(f"+OK {text}\r\n".encode() + body + b".\r\n")

    def stuff(self, line: bytes) -> bytes:
        """Byte-stuff a line of a multiline response (RFC 1939 §3)."""
        return b"." + line if line.startswith(b".") else line

    def capabilities(self) -> list[str]:
        caps = ["USER", "UIDL", "TOP", "SASL PLAIN", "RESP-CODES", "PIPELINING"]
        if not self.conn.tls and not self.locked and self.conn.tls_available:
            caps.append("STLS")  # announced in AUTHORIZATION state only (RFC 2595 §4)
        return caps

    # ---- maildrop
    def login(self, who: str | None) -> None:
        if who is None:
            self.err("[AUTH] invalid credentials")
        elif not self.open_maildrop(who):
            self.err("[IN-USE] maildrop locked")
        else:
            self.ok(f"maildrop locked, {len(self.view)} messages")

    def open_maildrop(self, who: str) -> bool:
        """Lock ``who``'s maildrop and enter TRANSACTION state; False if it is in use."""
        toy = self.toy
        with toy.lock:
            if who in toy._pop_locked:
                return False
            toy._pop_locked.add(who)
            self.locked = who
            self.view = list(zip(toy._sync(who), toy.mailboxes[who], strict=True))
            self.deleted = set()
        return True

    def unlock(self) -> None:
        if self.locked:
            with self.toy.lock:
                self.toy._pop_locked.discard(self.locked)
            self.locked = None

    def update(self) -> None:
        """The UPDATE state: remove the messages marked as deleted (RFC 1939 §6)."""
        assert self.locked is not None
        toy, gone = self.toy, {self.view[i][0] for i in self.deleted}
        with toy.lock:
            uids, box = toy._sync(self.locked), toy.mailboxes[self.locked]
            keep = [i for i, uid in enumerate(uids) if uid not in gone]
            box[:] = [box[i] for i in keep]
            uids[:] = [uids[i] for i in keep]

    def live(self) -> list[int]:
        return [i for i in range(len(self.view)) if i not in self.deleted]

    def pick(self, arg: str) -> int | None:
        """The index of message-number ``arg``, or None after answering -ERR."""
        i = int(arg) - 1 if arg.isdigit() else -1
        if 0 <= i < len(self.view) and i not in self.deleted:
            return i
        self.err("no such message")
        return None

    @staticmethod
    def lines(message: bytes) -> list[bytes]:
        lines = message.split(b"\r\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return lines

    # ---- AUTHORIZATION state
    def do_capa(self, arg: str) -> None:
        self.multiline("capability list follows", [c.encode() for c in self.capabilities()])

    def do_stls(self, arg: str) -> None:
        if self.conn.tls or not self.conn.tls_available:
            self.err("TLS not available now")
            return
        self.ok("begin TLS negotiation")
        self.conn.starttls(discard_pipelined=True)  # never run what came with STLS

    def do_user(self, arg: str) -> None:
        if not arg or " " in arg:
            self.err("usage: USER name")
            return
        self.user = arg
        self.ok("send PASS")

    def do_pass(self, arg: str) -> None:
        if self.user is None:
            self.err("USER first")
            return
        user, self.user = self.user, None
        self.login(user if self.toy._check(user, arg) else None)

    def do_auth(self, arg: str) -> None:
        mech, _, response = arg.partition(" ")
        if mech.upper() != "PLAIN":
            self.err("unsupported SASL mechanism")
            return
        if not response:
            response = self.challenge("")
            if response == "*":
                self.err("authentication cancelled")
                return
        self.login(self.sasl_plain(response))

    def challenge(self, b64: str) -> str:
        """Send a SASL challenge (RFC 5034 §4) and return the client's answer."""
        self.conn.sendline(f"+ {b64}")
        return self.read_line().strip()

    def sasl_plain(self, response: str) -> str | None:
        """The user a PLAIN response logs in (None: bad credentials or base64)."""
        return self.toy._sasl_plain("" if response == "=" else response)

    def do_quit(self, arg: str) -> bool:
        if self.locked:
            self.update()
        self.ok("toy POP3 signing off")
        return False

    # ---- TRANSACTION state
    def do_stat(self, arg: str) -> None:
        live = self.live()
        self.ok(f"{len(live)} {sum(len(self.view[i][1]) for i in live)}")

    def do_list(self, arg: str) -> None:
        self.listing(arg, lambda i: str(len(self.view[i][1])))

    def do_uidl(self, arg: str) -> None:
        self.listing(arg, lambda i: str(self.view[i][0]))

    def listing(self, arg: str, value: Callable[[int], str]) -> None:
        if arg:
            if (i := self.pick(arg)) is not None:
                self.ok(f"{i + 1} {value(i)}")
            return
        live = self.live()
        self.multiline(f"{len(live)} messages", [f"{i + 1} {value(i)}".encode() for i in live])

    def do_retr(self, arg: str) -> None:
        if (i := self.pick(arg)) is not None:
            message = self.view[i][1]
            self.multiline(f"{len(message)} octets", self.lines(message))

    def do_top(self, arg: str) -> None:
        msg, _, n = arg.partition(" ")
        if not n.isdigit():
            self.err("usage: TOP msg n")
        elif (i := self.pick(msg)) is not None:
            lines = self.lines(self.view[i][1])
            blank = lines.index(b"") if b"" in lines else len(lines)
            self.multiline("top of message follows", lines[: blank + 1 + int(n)])

    def do_dele(self, arg: str) -> None:
        if (i := self.pick(arg)) is not None:
            self.deleted.add(i)
            self.ok(f"message {i + 1} deleted")

    def do_rset(self, arg: str) -> None:
        self.deleted.clear()
        self.ok()

    def do_noop(self, arg: str) -> None:
        self.ok()


# ---------------------------------------------------------------------- IMAP

_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|([()])|([^\s()"]+)')
_LITERAL = re.compile(rb"\{(\d+)(\+?)\}$")
_FETCH_ITEMS = ("UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", "BODY[]", "BODY.PEEK[]")
_DATE_TIME = r"[ \d]\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}"  # RFC 9051 §9
_MACROS = {"FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"], "ALL": ["FLAGS", "INTERNALDATE"]}
_SEARCH_FLAGS = {
    "SEEN": ("\\Seen", True),
    "UNSEEN": ("\\Seen", False),
    "FLAGGED": ("\\Flagged", True),
    "UNFLAGGED": ("\\Flagged", False),
    "DELETED": ("\\Deleted", True),
    "UNDELETED": ("\\Deleted", False),
    "ANSWERED": ("\\Answered", True),
    "UNANSWERED": ("\\Answered", False),
    "DRAFT": ("\\Draft", True),
    "UNDRAFT": ("\\Draft", False),
}


class _Lit(bytes):
    """A literal's bytes, as a token."""


class Refused(Exception):
    """Answer the command with this status (BAD unless told) and go on."""

    def __init__(self, text: str, status: str = "BAD", code: str | None = None) -> None:
        super().__init__(text)
        self.text, self.status, self.code = text, status, code


def _text(token: str | bytes) -> str:
    return token.decode("utf-8", "replace") if isinstance(token, bytes) else token


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _flag_list(flags: set[str]) -> str:
    return "(" + " ".join(sorted(flags)) + ")"


def _parens(args: list[str | bytes]) -> tuple[list[str], list[str | bytes]]:
    """A parenthesised list of atoms at the start of ``args`` (or one atom), and the rest."""
    if not args:
        raise Refused("missing argument")
    if args[0] != "(":
        return [_text(args[0])], args[1:]
    if ")" not in args:
        raise Refused("unbalanced parentheses")
    end = args.index(")")
    return [_text(a) for a in args[1:end]], args[end + 1 :]


class ToyImap:
    """One IMAP4rev1 session (RFC 3501 / RFC 9051) with STARTTLS, LITERAL+, IDLE, ID,
    NAMESPACE, UIDPLUS, MOVE and UNSELECT, over the toy's mailboxes.

    Each command is a ``do_<verb>`` method taking its tag and argument tokens (quoted
    strings unquoted, literals as bytes, parentheses as separate tokens); a test
    subclasses this to break exactly one rule. Untagged news about the selected mailbox
    (EXISTS, EXPUNGE) goes out before each tagged response, EXPUNGE never during FETCH,
    STORE or SEARCH (RFC 9051 §7.5.1).
    """

    greeting = "toy ready"
    max_line = 64 * 1024  # octets of a command line, literals excluded
    max_literal = 10 * 1024 * 1024
    ANY = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})
    NOT_AUTHENTICATED = ANY | {"STARTTLS", "LOGIN", "AUTHENTICATE"}
    AUTHENTICATED = ANY | {
        "SELECT",
        "EXAMINE",
        "CREATE",
        "DELETE",
        "LIST",
        "STATUS",
        "APPEND",
        "IDLE",
        "NAMESPACE",
    }
    SELECTED = AUTHENTICATED | {
        "CHECK",
        "CLOSE",
        "UNSELECT",
        "EXPUNGE",
        "SEARCH",
        "FETCH",
        "STORE",
        "COPY",
        "MOVE",
        "UID",
    }

    def __init__(self, toy: ToyMail, conn: ScriptConn) -> None:
        self.toy, self.conn = toy, conn
        self.user: str | None = None
        self.mailbox: str | None = None  # the selected one
        self.readonly = False
        self.view: list[int] = []  # UIDs of the selected mailbox, as the client knows them
        self.expunge_ok = True  # False while FETCH, STORE or SEARCH runs
        self.tag = "*"  # the tag of the command being read

    # ---- plumbing
    def run(self) -> None:
        self.conn.sendline(f"* OK [CAPABILITY {' '.join(self.capabilities())}] {self.greeting}")
        while True:
            try:
                if not self.step():
                    return
            except TimeoutError:
                self.conn.sendline("* BYE idle timeout")
                return

    def capabilities(self) -> list[str]:
        caps = IMAP_CAPS.split()
        if self.conn.tls or not self.conn.tls_available:
            caps.remove("STARTTLS")
        return caps

    def read_line(self) -> bytes:
        line = self.conn.recv_until(rb"\n", self.toy.idle_timeout)
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]

    def read_command(self) -> list[str | bytes]:
        """One command as tokens; literals are read (after a "+" if synchronising)."""
        tokens: list[str | bytes] = []
        line = self.read_line()
        self.tag = line.split(b" ", 1)[0].decode("utf-8", "replace") or "*"  # for a refusal
        while True:
            if len(line) > self.max_line:
                raise Refused("line too long")
            m = _LITERAL.search(line)
            text = (line[: m.start()] if m else line).decode("utf-8", "replace")
            for q, p, a in _TOKEN.findall(text):
                tokens.append(re.sub(r"\\(.)", r"\1", q) if q or (not p and not a) else p or a)
            if m is None:
                return tokens
            size = int(m.group(1))
            if size > self.max_literal:
                if m.group(2):  # the octets are on their way: no way to go on
                    self.conn.sendline("* BYE [TOOBIG] literal too big")
                    raise EOFError("literal too big")
                raise Refused("literal too big", "NO", "TOOBIG")
            if not m.group(2):
                self.continuation(size)
            tokens.append(_Lit(self.conn.recv_exact(size, self.toy.idle_timeout)))
            line = self.read_line()

    def continuation(self, size: int) -> None:
        """Ask for the octets of a synchronising literal (RFC 9051 §4.3)."""
        self.conn.sendline("+ Ready")

    def allowed(self) -> frozenset[str]:
        if self.user is None:
            return self.NOT_AUTHENTICATED
        return self.AUTHENTICATED if self.mailbox is None else self.SELECTED

    def step(self) -> bool:
        """Read and answer one command; False ends the session."""
        self.tag = tag = "*"
        try:
            toks = self.read_command()
            if not toks or not isinstance(toks[0], str) or toks[0] in ("*", "+"):
                self.conn.sendline("* BAD invalid tag")
                return True
            tag = toks[0]
            if len(toks) < 2 or not isinstance(toks[1], str):
                raise Refused("missing command")
            verb, args = toks[1].upper(), toks[2:]
            handler = getattr(self, f"do_{verb.lower()}", None)
            if handler is None:
                raise Refused("unknown command")
            if verb not in self.allowed():
                raise Refused(f"{verb} not valid in this state")
            self.expunge_ok = verb not in ("FETCH", "STORE", "SEARCH")
            return handler(tag, args) is not False
        except Refused as refused:
            self.done(tag if tag != "*" else self.tag, refused.status, refused.text, refused.code)
            return True

    def untagged(self, text: str) -> None:
        self.conn.sendline(f"* {text}")

    def done(self, tag: str, status: str, text: str, code: str | None = None) -> None:
        """The tagged response, after any news about the selected mailbox."""
        self.updates()
        self.conn.sendline(f"{tag} {status} {'[' + code + '] ' if code else ''}{text}")

    def ok(self, tag: str, text: str, code: str | None = None) -> None:
        self.done(tag, "OK", text, code)

    def updates(self) -> None:
        """EXPUNGE (when allowed) and EXISTS for changes made by other sessions."""
        if self.mailbox is None or self.user is None:
            return
        with self.toy.lock:
            folder = self.toy.folder(self.user, self.mailbox)
            current = list(folder.sync()) if folder else []
        if self.expunge_ok:
            live = set(current)
            for i in range(len(self.view) - 1, -1, -1):
                if self.view[i] not in live:
                    self.untagged(f"{i + 1} EXPUNGE")
                    del self.view[i]
        top = max(self.view, default=0)
        new = [uid for uid in current if uid > top]
        if new:
            self.view.extend(new)
            self.untagged(f"{len(self.view)} EXISTS")

    def selected_folder(self) -> _Folder:
        assert self.user is not None and self.mailbox is not None
        folder = self.toy.folder(self.user, self.mailbox)
        if folder is None:
            raise Refused("the selected mailbox is gone", "NO")
        return folder

    def target(self, name: str | bytes, code: str = "NONEXISTENT") -> _Folder:
        """An existing mailbox by name (hold the lock), else NO with ``code``."""
        assert self.user is not None
        folder = self.toy.folder(self.user, _text(name))
        if folder is None:
            raise Refused("no such mailbox", "NO", code)
        return folder

    def messages(self, spec: str | bytes, by_uid: bool) -> list[tuple[int, int]]:
        """(sequence number, UID) of the messages a sequence or UID set names."""
        ranges = _seqset(_text(spec), max(self.view, default=0) if by_uid else len(self.view))
        if ranges is None:
            raise Refused("invalid sequence set")
        if not by_uid and any(hi > len(self.view) for _, hi in ranges):
            raise Refused("no such message")
        return [
            (i + 1, uid)
            for i, uid in enumerate(self.view)
            if any(lo <= (uid if by_uid else i + 1) <= hi for lo, hi in ranges)
        ]

    # ---- any state
    def do_capability(self, tag: str, args: list[str | bytes]) -> None:
        if args:
            raise Refused("CAPABILITY takes no arguments")
        self.untagged("CAPABILITY " + " ".join(self.capabilities()))
        self.ok(tag, "CAPABILITY completed")

    def do_noop(self, tag: str, args: list[str | bytes]) -> None:
        if args:
            raise Refused("NOOP takes no arguments")
        self.ok(tag, "NOOP completed")

    def do_logout(self, tag: str, args: list[str | bytes]) -> bool:
        self.untagged("BYE toy logging out")
        self.conn.sendline(f"{tag} OK LOGOUT completed")
        return False

    def do_id(self, tag: str, args: list[str | bytes]) -> None:
        self.untagged('ID ("name" "toymail" "vendor" "mailharness tests")')
        self.ok(tag, "ID completed")

    # ---- not authenticated
    def do_starttls(self, tag: str, args: list[str | bytes]) -> None:
        if self.conn.tls or not self.conn.tls_available:
            raise Refused("STARTTLS not allowed now")
        self.conn.sendline(f"{tag} OK Begin TLS negotiation now")
        self.conn.starttls(discard_pipelined=True)  # never run what came with STARTTLS

    def do_login(self, tag: str, args: list[str | bytes]) -> None:
        if len(args) != 2:
            raise Refused("LOGIN takes a user name and a password")
        user, password = _text(args[0]), _text(args[1])
        self.logged_in(tag, "LOGIN", user if self.toy._check(user, password) else None)

    def do_authenticate(self, tag: str, args: list[str | bytes]) -> None:
        if not args or _text(args[0]).upper() != "PLAIN" or len(args) > 2:
            raise Refused("only AUTHENTICATE PLAIN is supported", "NO")
        if len(args) == 2:
            resp = _text(args[1])
        else:
            self.conn.sendline("+ ")
            resp = self.read_line().decode("ascii", "replace")
            if resp.strip() == "*":
                raise Refused("authentication cancelled")
        self.logged_in(tag, "AUTHENTICATE", self.toy._sasl_plain("" if resp == "=" else resp))

    def logged_in(self, tag: str, verb: str, who: str | None) -> None:
        if who is None:
            raise Refused("invalid credentials", "NO", "AUTHENTICATIONFAILED")
        self.user = who
        self.ok(tag, f"{verb} completed")

    # ---- authenticated
    def do_select(self, tag: str, args: list[str | bytes], verb: str = "SELECT") -> None:
        if len(args) != 1:
            raise Refused(f"{verb} takes one mailbox name")
        assert self.user is not None
        self.mailbox, self.view = None, []  # a failed SELECT leaves nothing selected
        with self.toy.lock:
            folder = self.target(args[0])
            uids = list(folder.sync())
            uidnext, uidvalidity = folder.uidnext, folder.uidvalidity
        name = _text(args[0])
        self.mailbox = "INBOX" if name.upper() == "INBOX" else name
        self.readonly, self.view = verb == "EXAMINE", uids
        permanent = "()" if self.readonly else "(" + " ".join(SYSTEM_FLAGS) + " \\*)"
        self.untagged("FLAGS (" + " ".join(SYSTEM_FLAGS) + ")")
        self.untagged(f"{len(uids)} EXISTS")
        self.untagged("0 RECENT")
        self.untagged(f"OK [UIDVALIDITY {uidvalidity}] UIDs valid")
        self.untagged(f"OK [UIDNEXT {uidnext}] predicted next UID")
        self.untagged(f"OK [PERMANENTFLAGS {permanent}] flags that stick")
        self.ok(tag, f"{verb} completed", "READ-ONLY" if self.readonly else "READ-WRITE")

    def do_examine(self, tag: str, args: list[str | bytes]) -> None:
        self.do_select(tag, args, "EXAMINE")

    def do_create(self, tag: str, args: list[str | bytes]) -> None:
        if len(args) != 1:
            raise Refused("CREATE takes one mailbox name")
        assert self.user is not None
        name = _text(args[0]).rstrip("/")
        with self.toy.lock:
            if not name or not self.toy.create(self.user, name):
                raise Refused("mailbox exists", "NO", "ALREADYEXISTS")
        self.ok(tag, "CREATE completed")

    def do_delete(self, tag: str, args: list[str | bytes]) -> None:
        if len(args) != 1:
            raise Refused("DELETE takes one mailbox name")
        assert self.user is not None
        name = _text(args[0])
        if name.upper() == "INBOX":
            raise Refused("INBOX cannot be deleted", "NO", "CANNOT")
        with self.toy.lock:
            self.target(name)
            del self.toy._folders[self.user][name]
        self.ok(tag, "DELETE completed")

    def do_list(self, tag: str, args: list[str | bytes]) -> None:
        if len(args) != 2:
            raise Refused("LIST takes a reference and a pattern")
        assert self.user is not None
        pattern = _text(args[0]) + _text(args[1])
        if not _text(args[1]):
            self.untagged('LIST (\\Noselect) "/" ""')
        else:
            rx = "".join(
                ".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern
            )
            with self.toy.lock:
                names = self.toy.names(self.user)
            for name in names:
                hit = re.fullmatch(rx, name, re.I if name == "INBOX" else 0)
                if hit:
                    self.untagged(f'LIST () "/" {name if name == "INBOX" else _quote(name)}')
        self.ok(tag, "LIST completed")

    def do_status(self, tag: str, args: list[str | bytes]) -> None:
        if len(args) < 2:
            raise Refused("STATUS takes a mailbox name and a list of items")
        items, rest = _parens(args[1:])
        if rest or not items:
            raise Refused("bad STATUS items")
        with self.toy.lock:
            folder = self.target(args[0])
            values = self.status_values(folder, folder.sync())
        if any(i.upper() not in values for i in items):
            raise Refused("unknown STATUS item")
        self.status_checked([i.upper() for i in items])
        data = " ".join(f"{i.upper()} {values[i.upper()]}" for i in items)
        self.untagged(f"STATUS {_quote(_text(args[0]))} ({data})")
        self.ok(tag, "STATUS completed")

    def status_values(self, folder: _Folder, uids: list[int]) -> dict[str, object]:
        """The STATUS items this toy knows, for ``folder`` (subclasses add more)."""
        return {
            "MESSAGES": len(uids),
            "RECENT": 0,
            "UIDNEXT": folder.uidnext,
            "UIDVALIDITY": folder.uidvalidity,
            "UNSEEN": sum("\\Seen" not in folder.flags.get(u, ()) for u in uids),
            "DELETED": sum("\\Deleted" in folder.flags.get(u, ()) for u in uids),
        }

    def status_checked(self, items: list[str]) -> None:
        """Called once the STATUS items are known to be valid, before the answer."""

    def do_append(self, tag: str, args: list[str | bytes]) -> None:
        assert self.user is not None
        if len(args) < 2 or not isinstance(args[-1], _Lit):
            raise Refused("APPEND needs a mailbox name and a literal")
        flags: list[str] = []
        rest = args[1:-1]
        if rest and rest[0] == "(":
            flags, rest = _parens(rest)
        date = _text(rest.pop(0)) if rest else None
        if rest or (date is not None and not re.fullmatch(_DATE_TIME, date)):
            raise Refused("bad APPEND arguments")
        with self.toy.lock:
            folder = self.target(args[0], "TRYCREATE")
            uid = folder.add(bytes(args[-1]), set(flags))
            if date is not None:
                folder.dates[uid] = date
            self.toy.lock.notify_all()
        self.ok(tag, "APPEND completed", f"APPENDUID {folder.uidvalidity} {uid}")

    def do_namespace(self, tag: str, args: list[str | bytes]) -> None:
        self.untagged('NAMESPACE (("" "/")) NIL NIL')
        self.ok(tag, "NAMESPACE completed")

    def do_idle(self, tag: str, args: list[str | bytes]) -> bool:
        self.conn.sendline("+ idling")
        deadline = time.monotonic() + self.toy.idle_timeout
        while time.monotonic() < deadline:
            if self.mailbox is not None:
                with self.toy.lock:
                    self.toy.lock.wait_for(self.changed, timeout=0.02)
                self.updates()
            else:
                time.sleep(0.02)
            if self.conn.readable():
                if self.read_line().upper() == b"DONE":
                    self.ok(tag, "IDLE terminated")
                else:
                    self.done(tag, "BAD", "expected DONE")
                return True
        self.untagged("BYE idle timeout")
        return False

    def changed(self) -> bool:
        assert self.user is not None and self.mailbox is not None
        folder = self.toy.folder(self.user, self.mailbox)
        return (list(folder.sync()) if folder else []) != self.view

    # ---- selected
    def do_check(self, tag: str, args: list[str | bytes]) -> None:
        self.ok(tag, "CHECK completed")

    def do_close(self, tag: str, args: list[str | bytes]) -> None:
        if not self.readonly:
            with self.toy.lock:
                folder = self.selected_folder()
                folder.remove({u for u in folder.sync() if "\\Deleted" in folder.flags[u]})
        self.mailbox, self.view = None, []
        self.ok(tag, "CLOSE completed")

    def do_unselect(self, tag: str, args: list[str | bytes]) -> None:
        self.mailbox, self.view = None, []
        self.ok(tag, "UNSELECT completed")

    def do_expunge(self, tag: str, args: list[str | bytes], only: set[int] | None = None) -> None:
        if self.readonly:
            raise Refused("mailbox is read-only", "NO")
        with self.toy.lock:
            folder = self.selected_folder()
            gone = {
                u
                for u in folder.sync()
                if "\\Deleted" in folder.flags[u] and (only is None or u in only)
            }
            folder.remove(gone)
        self.expunged(gone)
        self.ok(tag, "EXPUNGE completed")

    def expunged(self, gone: set[int]) -> None:
        """Tell the client, highest number first so the others stay valid."""
        for i in range(len(self.view) - 1, -1, -1):
            if self.view[i] in gone:
                self.untagged(f"{i + 1} EXPUNGE")
                del self.view[i]

    def do_uid(self, tag: str, args: list[str | bytes]) -> None:
        sub = _text(args[0]).upper() if args else ""
        if sub == "EXPUNGE" and len(args) == 2:
            self.do_expunge(tag, [], only={uid for _, uid in self.messages(args[1], True)})
        elif sub in ("FETCH", "STORE", "SEARCH", "COPY", "MOVE"):
            getattr(self, f"do_{sub.lower()}")(tag, args[1:], by_uid=True)
        else:
            raise Refused("unknown UID command")

    def do_search(self, tag: str, args: list[str | bytes], by_uid: bool = False) -> None:
        keys = [_text(a) for a in args]
        if len(keys) >= 2 and keys[0].upper() == "CHARSET":
            if keys[1].upper() not in ("US-ASCII", "UTF-8"):
                raise Refused("charset not supported", "NO", "BADCHARSET (US-ASCII UTF-8)")
            keys = keys[2:]
        if not keys:
            raise Refused("SEARCH needs criteria")
        with self.toy.lock:
            folder = self.selected_folder()
            live = set(folder.sync())
            hits = [(i + 1, u) for i, u in enumerate(self.view) if u in live]
            while keys:
                key = keys.pop(0)
                upper = key.upper()
                if upper == "ALL":
                    continue
                if upper in _SEARCH_FLAGS:
                    flag, present = _SEARCH_FLAGS[upper]
                    hits = [h for h in hits if (flag in folder.flags[h[1]]) == present]
                elif upper in ("UID", "SUBJECT") and keys:
                    arg = keys.pop(0)
                    if upper == "UID":
                        uids = {u for _, u in self.messages(arg, True)}
                        hits = [h for h in hits if h[1] in uids]
                    else:
                        hits = [h for h in hits if _subject_has(folder.get(h[1]) or b"", arg)]
                elif re.fullmatch(r"[\d*:,]+", key):
                    numbers = {n for n, _ in self.messages(key, False)}
                    hits = [h for h in hits if h[0] in numbers]
                else:
                    raise Refused(f"unsupported search key {key}")
        found = " ".join(str(u if by_uid else n) for n, u in hits)
        self.untagged(f"SEARCH {found}".rstrip())
        self.ok(tag, "SEARCH completed")

    def do_fetch(self, tag: str, args: list[str | bytes], by_uid: bool = False) -> None:
        if len(args) < 2:
            raise Refused("FETCH takes a sequence set and items")
        items, rest = _parens(args[1:])
        items = [i.upper() for i in items]
        if len(items) == 1 and items[0] in _MACROS:
            items = _MACROS[items[0]]
        if rest or not items or any(i not in _FETCH_ITEMS for i in items):
            raise Refused("unsupported FETCH items")
        if by_uid:
            items = self.uid_items(items)
        chunks: list[bytes] = []
        with self.toy.lock:
            folder = self.selected_folder()
            for n, uid in self.messages(args[0], by_uid):
                message = folder.get(uid)
                if message is None:
                    continue  # expunged by another session, not yet reported
                flags = folder.flags[uid]
                if "BODY[]" in items and not self.readonly and "\\Seen" not in flags:
                    flags.add("\\Seen")
                    if "FLAGS" not in items:
                        items = [*items, "FLAGS"]  # the change, reported (RFC 9051 §6.4.5)
                date = folder.dates.get(uid, "01-Jan-2024 00:00:00 +0000")
                chunks.append(self.fetch_response(n, uid, message, flags, items, date))
        self.conn.send(b"".join(chunks))
        self.ok(tag, "FETCH completed")

    def uid_items(self, items: list[str]) -> list[str]:
        """What UID FETCH returns: UID always (RFC 9051 §6.4.9)."""
        return items if "UID" in items else ["UID", *items]

    def fetch_response(
        self, n: int, uid: int, message: bytes, flags: set[str], items: list[str], date: str
    ) -> bytes:
        parts: list[bytes] = []
        for item in items:
            if item == "UID":
                parts.append(f"UID {uid}".encode())
            elif item == "FLAGS":
                parts.append(f"FLAGS {_flag_list(flags)}".encode())
            elif item == "RFC822.SIZE":
                parts.append(f"RFC822.SIZE {len(message)}".encode())
            elif item == "INTERNALDATE":
                parts.append(f'INTERNALDATE "{date}"'.encode())
            else:  # BODY[] and BODY.PEEK[] both answer as BODY[]
                parts.append(f"BODY[] {{{len(message)}}}\r\n".encode() + message)
        return f"* {n} FETCH (".encode() + b" ".join(parts) + b")\r\n"

    def do_store(self, tag: str, args: list[str | bytes], by_uid: bool = False) -> None:
        if len(args) < 3:
            raise Refused("STORE takes a sequence set, an item and flags")
        item = _text(args[1]).upper()
        m = re.fullmatch(r"([+-]?)FLAGS(\.SILENT)?", item)
        if m is None:
            raise Refused("unsupported STORE item")
        flags, rest = _parens(args[2:])
        if rest:
            raise Refused("junk after the flags")
        if self.readonly:
            raise Refused("mailbox is read-only", "NO")
        with self.toy.lock:
            folder = self.selected_folder()
            for n, uid in self.messages(args[0], by_uid):
                if uid not in folder.flags:
                    continue
                current = folder.flags[uid]
                if m.group(1) == "+":
                    current |= set(flags)
                elif m.group(1) == "-":
                    current -= set(flags)
                else:
                    current.clear()
                    current |= set(flags)
                if not m.group(2):
                    uid_part = f"UID {uid} " if by_uid else ""
                    self.untagged(f"{n} FETCH ({uid_part}FLAGS {_flag_list(current)})")
        self.ok(tag, "STORE completed")

    def do_copy(self, tag: str, args: list[str | bytes], by_uid: bool = False) -> None:
        self.copy(tag, args, by_uid, move=False)

    def do_move(self, tag: str, args: list[str | bytes], by_uid: bool = False) -> None:
        self.copy(tag, args, by_uid, move=True)

    def copy(self, tag: str, args: list[str | bytes], by_uid: bool, move: bool) -> None:
        verb = "MOVE" if move else "COPY"
        if len(args) != 2:
            raise Refused(f"{verb} takes a sequence set and a mailbox name")
        if move and self.readonly:
            raise Refused("mailbox is read-only", "NO")
        with self.toy.lock:
            source = self.selected_folder()
            chosen = self.messages(args[0], by_uid)
            dest = self.target(args[1], "TRYCREATE")
            pairs = []
            for _, uid in chosen:
                message = source.get(uid)
                if message is not None:
                    new = dest.add(message, set(source.flags[uid]))
                    if uid in source.dates:
                        dest.dates[new] = source.dates[uid]
                    pairs.append((uid, new))
            if move:
                source.remove({uid for uid, _ in pairs})
            self.toy.lock.notify_all()
        code = None
        if pairs:
            src = ",".join(str(s) for s, _ in pairs)
            dst = ",".join(str(d) for _, d in pairs)
            code = f"COPYUID {dest.uidvalidity} {src} {dst}"
        if move:
            if code:
                self.untagged(f"OK [{code}] moved")  # before the EXPUNGEs (RFC 9051 §6.4.8)
            self.expunged({uid for uid, _ in pairs})
            self.ok(tag, "MOVE completed")
        else:
            self.ok(tag, "COPY completed", code)


def _subject_has(message: bytes, text: str) -> bool:
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    m = re.search(r"(?im)^Subject:(.*)$", head)
    return m is not None and text.lower() in m.group(1).lower()


def _seqset(spec: str, limit: int) -> list[tuple[int, int]] | None:
    """An IMAP sequence set ("1", "2:4", "3:*", "1,5") as ranges; "*" is ``limit``."""
    out: list[tuple[int, int]] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+|\*)(?::(\d+|\*))?", part)
        if m is None:
            return None
        a = limit if m.group(1) == "*" else int(m.group(1))
        b = a if m.group(2) is None else limit if m.group(2) == "*" else int(m.group(2))
        if 0 in (a, b) and "*" not in part:  # numbers start at 1; "*" of nothing is 0
            return None
        out.append((min(a, b), max(a, b)))
    return out
