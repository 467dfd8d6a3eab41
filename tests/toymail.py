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

__all__ = ["ToyMail", "ToyPop3"]

IMAP_CAPS = "IMAP4rev1 STARTTLS AUTH=PLAIN LITERAL+"


class ToyMail:
    domain = "example.test"
    idle_timeout = 30.0  # a silent client is dropped after this long

    def __init__(self, accounts: dict[str, str] | None = None) -> None:
        self.accounts: dict[str, str] = dict(accounts or {})
        self.mailboxes: dict[str, list[bytes]] = {u: [] for u in self.accounts}
        self.lock = threading.Condition()  # guards mailboxes and everything below
        self._uids: dict[str, list[int]] = {}
        self._flags: dict[tuple[str, int], set[str]] = {}
        self._uidnext: dict[str, int] = {}
        self._pop_locked: set[str] = set()

    # ------------------------------------------------------------------ store
    def add_account(self, user: str, password: str) -> None:
        with self.lock:
            self.accounts[user] = password
            self.mailboxes.setdefault(user, [])

    def deliver(self, user: str, message: bytes, flags: set[str] | None = None) -> int:
        """Append a message to user's mailbox, wake IDLE waiters; returns its UID."""
        with self.lock:
            self.mailboxes.setdefault(user, []).append(message)
            uid = self._sync(user)[-1]
            if flags:
                self._flags[(user, uid)] = set(flags)
            self.lock.notify_all()
            return uid

    def _sync(self, user: str) -> list[int]:
        # Tests may append to mailboxes directly; give such messages UIDs lazily.
        box = self.mailboxes.setdefault(user, [])
        uids = self._uids.setdefault(user, [])
        if len(uids) > len(box):
            del uids[len(box) :]
        while len(uids) < len(box):
            nxt = self._uidnext.get(user, 1)
            uids.append(nxt)
            self._uidnext[user] = nxt + 1
        return uids

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
    def imap_handler(self) -> Callable[[ScriptConn], None]:
        def handle(conn: ScriptConn) -> None:
            conn.sendline(f"* OK [CAPABILITY {IMAP_CAPS}] toy ready")
            s = _ImapSession(self, conn)
            while s.step():
                pass

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


_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|([()])|([^\s()"]+)')


class _Lit(bytes):
    """A literal's bytes, as a token."""


class _ImapSession:
    def __init__(self, toy: ToyMail, conn: ScriptConn) -> None:
        self.toy, self.conn = toy, conn
        self.user: str | None = None
        self.selected = False
        self.known = 0  # EXISTS count last reported

    def read_command(self) -> list[str | bytes]:
        """One command as tokens; quoted strings unquoted, literals as _Lit, parens kept."""
        tokens: list[str | bytes] = []
        line = self.conn.recv_line(self.toy.idle_timeout)
        while True:
            m = re.search(rb"\{(\d+)(\+?)\}$", line)
            text = (line[: m.start()] if m else line).decode("utf-8", "replace")
            for q, p, a in _TOKEN.findall(text):
                tokens.append(re.sub(r"\\(.)", r"\1", q) if q or (not p and not a) else p or a)
            if m is None:
                return tokens
            if not m.group(2):
                self.conn.sendline("+ Ready")
            tokens.append(_Lit(self.conn.recv_exact(int(m.group(1)), self.toy.idle_timeout)))
            line = self.conn.recv_line(self.toy.idle_timeout)

    def step(self) -> bool:
        try:
            toks = self.read_command()
        except TimeoutError:
            self.conn.sendline("* BYE idle timeout")
            return False
        if len(toks) < 2 or not isinstance(toks[0], str) or not isinstance(toks[1], str):
            self.conn.sendline("* BAD invalid command")
            return True
        tag, cmd, args = toks[0], toks[1].upper(), toks[2:]
        if cmd == "UID" and args and isinstance(args[0], str):
            cmd, args = "UID " + args[0].upper(), args[1:]
        out = self.conn.sendline
        if cmd == "CAPABILITY":
            caps = IMAP_CAPS.replace(" STARTTLS", "") if self.conn.tls else IMAP_CAPS
            out(f"* CAPABILITY {caps} IDLE")
            out(f"{tag} OK CAPABILITY completed")
        elif cmd == "NOOP":
            self.report_new()
            out(f"{tag} OK NOOP completed")
        elif cmd == "LOGOUT":
            out("* BYE toy logging out")
            out(f"{tag} OK LOGOUT completed")
            return False
        elif cmd == "STARTTLS":
            if self.conn.tls or self.user or not self.conn.tls_available:
                out(f"{tag} BAD STARTTLS not allowed now")
            else:
                out(f"{tag} OK Begin TLS negotiation now")
                self.conn.starttls()
        elif cmd in ("LOGIN", "AUTHENTICATE"):
            self.login(tag, cmd, args)
        elif cmd in ("SELECT", "EXAMINE", "FETCH", "UID FETCH", "APPEND", "IDLE"):
            if self.user is None:
                out(f"{tag} NO not authenticated")
            elif cmd in ("FETCH", "UID FETCH") and not self.selected:
                out(f"{tag} BAD no mailbox selected")
            else:
                getattr(self, "do_" + cmd.replace("UID ", "uid_").lower())(tag, args)
        else:
            out(f"{tag} BAD unknown command")
        return True

    def login(self, tag: str, cmd: str, args: list[str | bytes]) -> None:
        if self.user is not None:
            self.conn.sendline(f"{tag} BAD already authenticated")
            return
        vals = [a.decode("utf-8", "replace") if isinstance(a, bytes) else a for a in args]
        who: str | None = None
        if cmd == "LOGIN" and len(vals) == 2:
            who = vals[0] if self.toy._check(vals[0], vals[1]) else None
        elif cmd == "AUTHENTICATE" and vals and vals[0].upper() == "PLAIN":
            resp = vals[1] if len(vals) > 1 else None
            if resp is None:
                self.conn.sendline("+ ")
                resp = self.conn.recv_line(self.toy.idle_timeout).decode("ascii", "replace")
                if resp.strip() == "*":
                    self.conn.sendline(f"{tag} BAD authentication cancelled")
                    return
            who = self.toy._sasl_plain("" if resp == "=" else resp)
        else:
            self.conn.sendline(f"{tag} BAD syntax error")
            return
        if who is None:
            self.conn.sendline(f"{tag} NO [AUTHENTICATIONFAILED] invalid credentials")
        else:
            self.user = who
            self.conn.sendline(f"{tag} OK {cmd} completed")

    def count(self) -> int:
        assert self.user is not None
        with self.toy.lock:
            return len(self.toy.mailboxes.get(self.user, []))

    def report_new(self) -> None:
        if self.selected and (n := self.count()) > self.known:
            self.known = n
            self.conn.sendline(f"* {n} EXISTS")

    def do_select(self, tag: str, args: list[str | bytes], verb: str = "SELECT") -> None:
        if len(args) != 1 or not isinstance(args[0], str) or args[0].upper() != "INBOX":
            self.selected = False
            self.conn.sendline(f"{tag} NO [NONEXISTENT] no such mailbox")
            return
        assert self.user is not None
        with self.toy.lock:
            self.known = len(self.toy._sync(self.user))
            uidnext = self.toy._uidnext.get(self.user, 1)
        self.selected = True
        mode = "READ-WRITE" if verb == "SELECT" else "READ-ONLY"
        self.conn.send(
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
            f"* {self.known} EXISTS\r\n* 0 RECENT\r\n"
            "* OK [UIDVALIDITY 1] UIDs valid\r\n"
            f"* OK [UIDNEXT {uidnext}] predicted next UID\r\n"
            f"{tag} OK [{mode}] {verb} completed\r\n"
        )

    def do_examine(self, tag: str, args: list[str | bytes]) -> None:
        self.do_select(tag, args, "EXAMINE")

    def do_uid_fetch(self, tag: str, args: list[str | bytes]) -> None:
        self.do_fetch(tag, args, by_uid=True)

    def do_fetch(self, tag: str, args: list[str | bytes], by_uid: bool = False) -> None:
        assert self.user is not None
        items = " ".join(a for a in args[1:] if isinstance(a, str)).upper()
        with self.toy.lock:
            uids = list(self.toy._sync(self.user))
            box = list(self.toy.mailboxes[self.user])
        limit = (uids[-1] if uids else 0) if by_uid else len(box)
        wanted = _seqset(str(args[0]) if args else "", limit)
        if wanted is None or not items:
            self.conn.sendline(f"{tag} BAD invalid FETCH arguments")
            return
        chunks: list[bytes] = []
        for i, (uid, msg) in enumerate(zip(uids, box, strict=True), start=1):
            if (uid if by_uid else i) not in wanted:
                continue
            key = (self.user, uid)
            parts = [f"UID {uid}"] if by_uid or "UID" in items.split() else []
            if "RFC822.SIZE" in items:
                parts.append(f"RFC822.SIZE {len(msg)}")
            body = "BODY[]" in items or "BODY.PEEK[]" in items
            if body and "BODY.PEEK[]" not in items:
                with self.toy.lock:
                    self.toy._flags.setdefault(key, set()).add("\\Seen")
            if "FLAGS" in items.split() or "(FLAGS" in items or "FLAGS)" in items:
                with self.toy.lock:
                    flags = " ".join(sorted(self.toy._flags.get(key, ())))
                parts.append(f"FLAGS ({flags})")
            head = f"* {i} FETCH ({' '.join(parts)}".encode()
            if body:
                head += f"{' ' if parts else ''}BODY[] {{{len(msg)}}}\r\n".encode() + msg
            chunks.append(head + b")\r\n")
        self.conn.send(b"".join(chunks) + f"{tag} OK FETCH completed\r\n".encode())

    def do_append(self, tag: str, args: list[str | bytes]) -> None:
        assert self.user is not None
        if not args or not isinstance(args[0], str) or args[0].upper() != "INBOX":
            self.conn.sendline(f"{tag} NO [TRYCREATE] no such mailbox")
            return
        if not isinstance(args[-1], _Lit):
            self.conn.sendline(f"{tag} BAD APPEND needs a literal")
            return
        flags: set[str] = set()
        if "(" in args and ")" in args:
            flags = {a for a in args[args.index("(") + 1 : args.index(")")] if isinstance(a, str)}
        self.toy.deliver(self.user, bytes(args[-1]), flags)
        self.conn.sendline(f"{tag} OK APPEND completed")

    def do_idle(self, tag: str, args: list[str | bytes]) -> None:
        self.conn.sendline("+ idling")
        deadline = time.monotonic() + self.toy.idle_timeout
        while time.monotonic() < deadline:
            if self.selected:
                with self.toy.lock:
                    self.toy.lock.wait_for(lambda: self.count() > self.known, timeout=0.02)
                self.report_new()
            else:
                time.sleep(0.02)
            if self.conn.readable():
                line = self.conn.recv_line()
                if line.upper() == b"DONE":
                    self.conn.sendline(f"{tag} OK IDLE terminated")
                else:
                    self.conn.sendline(f"{tag} BAD expected DONE")
                return
        self.conn.sendline("* BYE idle timeout")
        raise EOFError("IDLE timed out")


def _seqset(spec: str, limit: int) -> set[int] | None:
    """Parse an IMAP sequence set ("1", "2:4", "3:*", "1,5") against the highest number."""
    out: set[int] = set()
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+|\*)(?::(\d+|\*))?", part)
        if m is None:
            return None
        a = limit if m.group(1) == "*" else int(m.group(1))
        b = a if m.group(2) is None else limit if m.group(2) == "*" else int(m.group(2))
        lo, hi = min(a, b), max(a, b)
        if lo < 1:
            return None
        out.update(range(lo, min(hi, limit) + 1))
    return out
