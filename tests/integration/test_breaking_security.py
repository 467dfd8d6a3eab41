"""The security scenarios added to scenarios/security/ each fail on a broken rule.

SMTP cases run :class:`SecSmtp`, a small SMTP session over a ToyMail store that keeps
every rule these scenarios check (data ends only at CRLF "." CRLF, STARTTLS drops what
came with it, no relaying without AUTH, AUTH on submission only inside TLS, VRFY 252,
a 512-octet line limit, 452 over the recipient limit); each case breaks exactly one of
them in a subclass or an attribute. POP3 and IMAP cases break the toy sessions of
tests/toymail.py. The phrase names what the scenario must report.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from typing import Any

import pytest
from breaking_support import Handler, run_breaking
from scripted import ScriptConn
from test_shipped_scenarios_fail import Pop3, RunsInjected, imap_toy, pop3_server
from toymail import Refused, ToyImap, ToyMail

ACCOUNTS = {"alice": "alice-pw", "bob": "bob-pw"}

Args = list[str | bytes]


class SecSmtp:
    """One SMTP session (RFC 5321 with STARTTLS, RFC 3207, and AUTH PLAIN/LOGIN, RFC 4954).

    ``submission`` makes it an MSA: AUTH is offered inside TLS only, and MAIL needs it.
    Local mail goes into the ToyMail INBOXes; mail to other domains is taken (and dropped)
    only from an authenticated client. Each command is a ``do_<verb>`` method.
    """

    max_line = 512  # octets of a command line with its CRLF (RFC 5321 §4.5.3.1.4)
    max_recipients = 1000
    too_many_reply = "452 4.5.3 too many recipients"
    data_end = rb"(?:\A|\r\n)\.\r\n"  # the end of the mail data (RFC 5321 §4.1.1.4)

    def __init__(self, toy: ToyMail, conn: ScriptConn, submission: bool) -> None:
        self.toy, self.conn, self.submission = toy, conn, submission
        self.helo = False
        self.user: str | None = None
        self.pending: list[bytes] = []  # command lines read ahead of time
        self.reset()

    def reset(self) -> None:
        self.sender: str | None = None
        self.rcpts: list[str] = []  # local users, one per accepted RCPT
        self.accepted = 0

    # ---- plumbing
    def reply(self, *lines: str) -> None:
        self.conn.send("".join(f"{line}\r\n" for line in lines))

    def replies(self, code: int, texts: list[str]) -> None:
        last = len(texts) - 1
        self.reply(*(f"{code}{' ' if i == last else '-'}{t}" for i, t in enumerate(texts)))

    def read_line(self) -> bytes:
        if self.pending:
            return self.pending.pop(0)
        return self.conn.recv_until(rb"\r\n", timeout=10)[:-2]

    def run(self) -> None:
        self.reply("220 mx.example.test ESMTP")
        while True:
            line = self.read_line()
            if len(line) + 2 > self.max_line and not line.upper().startswith(b"AUTH "):
                if self.too_long() is False:
                    return
                continue
            verb, _, arg = line.decode("utf-8", "replace").partition(" ")
            handler = getattr(self, f"do_{verb.lower()}", None)
            if handler is None:
                self.reply("500 5.5.2 command not recognized")
            elif handler(arg.strip()) is False:
                return

    def too_long(self) -> bool:
        self.reply("500 5.5.6 line too long")
        return True

    # ---- session
    def ehlo_keywords(self) -> list[str]:
        keywords = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]
        if not self.conn.tls:
            keywords.append("STARTTLS")
        if self.submission and self.conn.tls:
            keywords.append("AUTH PLAIN LOGIN")
        return keywords

    def do_ehlo(self, arg: str) -> None:
        if not arg:
            self.reply("501 5.5.4 EHLO needs a domain")
            return
        self.helo = True
        self.reset()
        self.replies(250, ["mx.example.test", *self.ehlo_keywords()])

    def do_helo(self, arg: str) -> None:
        self.helo = bool(arg)
        self.reset()
        self.reply("250 mx.example.test" if arg else "501 5.5.4 HELO needs a domain")

    def do_starttls(self, arg: str) -> None:
        if self.conn.tls:
            self.reply("503 5.5.1 TLS is already active")
            return
        self.reply("220 2.0.0 ready to start TLS")
        self.conn.starttls(discard_pipelined=True)  # RFC 3207 §4.2: nothing carried over
        self.helo, self.user = False, None
        self.reset()

    def do_noop(self, arg: str) -> None:
        self.reply("250 2.0.0 OK")

    def do_rset(self, arg: str) -> None:
        self.reset()
        self.reply("250 2.0.0 OK")

    def do_vrfy(self, arg: str) -> None:
        self.reply("252 2.5.0 cannot VRFY user, but will accept message for local recipients")

    def do_quit(self, arg: str) -> bool:
        self.reply("221 2.0.0 bye")
        return False

    # ---- AUTH
    def auth_refused(self) -> str | None:
        """Why AUTH cannot run now, as a reply; None when it can."""
        if not self.submission:
            return "502 5.5.1 AUTH is not offered here"
        if not self.conn.tls:
            return "538 5.7.11 encryption required for requested authentication mechanism"
        if not self.helo or self.user is not None or self.sender is not None:
            return "503 5.5.1 bad sequence of commands"
        return None

    def challenge(self, b64: str) -> str | None:
        """A 334 challenge; the client's answer, or None if it cancelled (after the 501)."""
        self.reply(f"334 {b64}".rstrip() if b64 else "334 ")
        answer = self.read_line().decode("ascii", "replace").strip()
        if answer == "*":
            self.cancelled()
            return None
        return answer

    def cancelled(self) -> None:
        self.reply("501 5.7.0 authentication cancelled")

    def do_auth(self, arg: str) -> None:
        refused = self.auth_refused()
        if refused is not None:
            self.reply(refused)
            return
        mech, _, initial = arg.partition(" ")
        try:
            if mech.upper() == "PLAIN":
                token = initial or self.challenge("")
                if token is None:
                    return
                _authzid, user, password = (
                    base64.b64decode(token, validate=True).decode().split("\0")
                )
            elif mech.upper() == "LOGIN":
                name = initial or self.challenge("VXNlcm5hbWU6")
                secret = None if name is None else self.challenge("UGFzc3dvcmQ6")
                if name is None or secret is None:
                    return
                user = base64.b64decode(name, validate=True).decode()
                password = base64.b64decode(secret, validate=True).decode()
            else:
                self.reply("504 5.5.4 unrecognized authentication mechanism")
                return
        except (binascii.Error, UnicodeDecodeError, ValueError):
            self.reply("501 5.5.2 cannot decode the response")
            return
        self.login(user, self.toy.accounts.get(user) == password)

    def login(self, user: str, good: bool) -> None:
        if good:
            self.user = user
            self.reply("235 2.7.0 authentication successful")
        else:
            self.reply("535 5.7.8 authentication credentials invalid")

    # ---- mail transaction
    def classify(self, address: str) -> tuple[str, str | None]:
        """("local", user), ("unknown", None) or ("foreign", None) for a forward-path."""
        if address.startswith("@"):  # a source route: only the mailbox counts (§4.1.1.3)
            address = address.partition(":")[2]
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, self.toy.domain  # <Postmaster>
        if domain.lower() != self.toy.domain:
            return "foreign", None
        if local.lower() == "postmaster":
            return "local", "alice"
        return ("local", local) if local in self.toy.accounts else ("unknown", None)

    def do_mail(self, arg: str) -> None:
        m = re.fullmatch(r"FROM:\s*<([^>]*)>.*", arg, re.I)
        if not self.helo or self.sender is not None:
            self.reply("503 5.5.1 bad sequence of commands")
        elif self.submission and self.user is None:
            self.reply("530 5.7.0 authentication required")
        elif m is None:
            self.reply("501 5.5.4 syntax: MAIL FROM:<address>")
        else:
            self.sender = m.group(1)
            self.reply("250 2.1.0 sender OK")

    def do_rcpt(self, arg: str) -> None:
        m = re.fullmatch(r"TO:\s*<(.+)>", arg, re.I)
        if self.sender is None:
            self.reply("503 5.5.1 need MAIL first")
            return
        if m is None:
            self.reply("501 5.5.4 syntax: RCPT TO:<address>")
            return
        if self.accepted >= self.max_recipients:
            self.reply(self.too_many_reply)
            return
        kind, user = self.classify(m.group(1))
        if kind == "unknown":
            self.reply("550 5.1.1 no such mailbox")
        elif kind == "foreign" and self.user is None:
            self.reply("550 5.7.1 relaying denied")
        else:
            if user is not None:
                self.rcpts.append(user)
            self.accepted += 1
            self.reply("250 2.1.5 recipient OK")

    def do_data(self, arg: str) -> None:
        if self.sender is None or not self.accepted:
            self.reply("503 5.5.1 need MAIL and RCPT first")
            return
        self.reply("354 end data with <CR><LF>.<CR><LF>")
        data = self.conn.recv_until(self.data_end, timeout=10)
        end = re.search(self.data_end, data)
        assert end is not None
        text = data[: end.start()] + (b"\r\n" if end.start() else b"")
        lines = text.split(b"\r\n")
        self.store(b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines))
        self.reset()
        self.reply("250 2.0.0 message accepted")

    def store(self, message: bytes) -> None:
        for user in sorted(set(self.rcpts)):
            self.toy.deliver(user, message)


def smtp(
    session: type[SecSmtp] = SecSmtp,
    service: str = "mx",
    toy: ToyMail | None = None,
    **attrs: Any,
) -> dict[str, Handler]:
    """``session`` on ``service`` (``submission`` makes it an MSA), attributes overridden."""
    store = toy or ToyMail(dict(ACCOUNTS))

    def handle(conn: ScriptConn) -> None:
        s = session(store, conn, submission=service == "submission")
        for name, value in attrs.items():
            setattr(s, name, value)
        s.run()

    return {service: handle}


def one_at_a_time(handlers: dict[str, Handler], service: str) -> dict[str, Handler]:
    """The ``service`` handler, serving one connection at a time: the next waits."""
    lock = threading.Lock()
    inner = handlers[service]

    def handle(conn: ScriptConn) -> None:
        if not lock.acquire(timeout=8):
            return
        try:
            inner(conn)
        finally:
            lock.release()

    return {**handlers, service: handle}


# ---------------------------------------------------------------------- broken SMTP


class RunsPipelinedAfterStarttls(SecSmtp):
    """Commands that came with STARTTLS are kept and run inside TLS (CVE-2011-0411)."""

    def do_starttls(self, arg: str) -> None:
        while not self.conn.tls and self.conn.readable(timeout=0.2):
            self.pending.append(self.conn.recv_until(rb"\r\n", timeout=1)[:-2])
        carried, self.pending = self.pending, []
        super().do_starttls(arg)
        self.pending = carried


class RoutesByFirstHop(SecSmtp):
    """A source route through a local domain counts as local, wherever the mailbox is."""

    def classify(self, address: str) -> tuple[str, str | None]:
        hop = address[1:].partition(":")[0].partition(",")[0]
        if address.startswith("@") and hop.lower() == self.toy.domain:
            return "local", None  # accepted, then relayed to the final mailbox
        return super().classify(address)


class PercentHack(SecSmtp):
    """user%host@local is taken as local, then relayed to user@host."""

    def classify(self, address: str) -> tuple[str, str | None]:
        local, _, domain = address.rpartition("@")
        if "%" in local and domain.lower() == self.toy.domain:
            return "local", None
        return super().classify(address)


class FailedAuthSticks(SecSmtp):
    """AUTH with a wrong password is answered 535, but the user is logged in all the same."""

    def login(self, user: str, good: bool) -> None:
        super().login(user, good)
        self.user = user


class CancelledAuthSticks(SecSmtp):
    """AUTH cancelled with "*" is answered 501, but the session counts as authenticated."""

    def cancelled(self) -> None:
        super().cancelled()
        self.user = "alice"


class AuthBeforeTls(SecSmtp):
    """AUTH is not advertised before STARTTLS, but taken there anyway."""

    def auth_refused(self) -> str | None:
        if self.submission and not self.conn.tls and self.helo and self.user is None:
            return None
        return super().auth_refused()


class VrfyVerifies(SecSmtp):
    """VRFY confirms local mailboxes with 250 and denies missing ones with 550."""

    def do_vrfy(self, arg: str) -> None:
        kind, user = self.classify(arg.strip("<>"))
        if kind == "local":
            self.reply(f"250 2.1.5 <{user}@{self.toy.domain}>")
        else:
            self.reply("550 5.1.1 no such mailbox")


class LongLineDrops(SecSmtp):
    """An over-long command line closes the connection without a word."""

    def too_long(self) -> bool:
        return False


class CutsAtFakeEnd(SecSmtp):
    """The whole message is read up to CRLF "." CRLF, but stored only up to <LF>.<CR><LF>."""

    def store(self, message: bytes) -> None:
        super().store(message.split(b"\n.\r\n", 1)[0] + b"\r\n")


class ImapSearchBody(ToyImap):
    """The toy IMAP session with SEARCH BODY (RFC 9051 §6.4.4), which the read-back needs."""

    def do_search(self, tag: str, args: Args, by_uid: bool = False) -> None:
        words = [a.decode() if isinstance(a, bytes) else a for a in args]
        upper = [w.upper() for w in words]
        if "BODY" in upper and upper.index("BODY") + 1 < len(words):
            i = upper.index("BODY")
            needle = words[i + 1].lower().encode()
            with self.toy.lock:
                folder = self.selected_folder()
                hits = [u for u in folder.sync() if needle in (folder.get(u) or b"").lower()]
            uids = ",".join(map(str, hits)) or "4294967295"  # an empty set: no such UID
            words[i : i + 2] = ["UID", uids]
        super().do_search(tag, list(words), by_uid)


def readback(session: type[SecSmtp]) -> dict[str, Handler]:
    """SMTP ``session`` on ``mx`` and IMAP (with SEARCH BODY) on ``imap``, one store."""
    toy = ToyMail(dict(ACCOUNTS))
    return {**smtp(session, toy=toy), "imap": toy.imap_handler(ImapSearchBody)}


# ---------------------------------------------------------------------- broken POP3 / IMAP


class Pop3UserBeforeTls(Pop3):
    """Before STLS, USER and SASL are not advertised and AUTH is refused, but USER/PASS works."""

    def capabilities(self) -> list[str]:
        caps = super().capabilities()
        if self.conn.tls:
            return caps
        return [c for c in caps if c != "USER" and not c.startswith("SASL")]

    def do_auth(self, arg: str) -> None:
        if self.conn.tls:
            super().do_auth(arg)
        else:
            self.err("[AUTH] use STLS first")


class ImapSaslBeforeTls(ToyImap):
    """Before STARTTLS, LOGINDISABLED is advertised and LOGIN refused, but AUTHENTICATE works."""

    def capabilities(self) -> list[str]:
        caps = super().capabilities()
        if self.conn.tls:
            return caps
        return [c for c in caps if not c.startswith("AUTH=")] + ["LOGINDISABLED"]

    def do_login(self, tag: str, args: Args) -> None:
        if not self.conn.tls:
            raise Refused("LOGIN is disabled before STARTTLS", "NO", "PRIVACYREQUIRED")
        super().do_login(tag, args)


def _smuggling(data_end: bytes) -> dict[str, Handler]:
    """An MX that takes ``data_end`` (besides CRLF "." CRLF) as the end of the mail data."""
    return smtp(data_end=data_end)


# scenario id -> (a server per service name, breaking exactly the rule; phrase in the failure)
CASES: dict[str, tuple[Handler | dict[str, Handler], str]] = {
    "security.smtp.smuggling-lf-dot-crlf": (
        _smuggling(rb"(?:\A|\r?\n)\.\r\n"),
        "expected reply code 221, got '250 2.1.0 sender OK'",
    ),
    "security.smtp.smuggling-crlf-dot-lf": (
        _smuggling(rb"(?:\A|\r\n)\.\r?\n"),
        "expected reply code 221, got '250 2.1.0 sender OK'",
    ),
    "security.smtp.smuggling-crlf-dot-cr": (
        _smuggling(rb"(?:\A|\r\n)\.\r\n?"),
        "expected reply code 221, got '250 2.1.0 sender OK'",
    ),
    "security.smtp.smuggling-nul-dot": (
        _smuggling(rb"(?:\A|\r\n)\x00?\.\r\n"),
        "expected reply code 221, got '250 2.1.0 sender OK'",
    ),
    "security.smtp.smuggling-readback": (
        readback(CutsAtFakeEnd),
        "expected an untagged response matching /^\\* SEARCH 1 *$/, got: * SEARCH",
    ),
    "security.smtp.starttls-injection-ehlo-mail": (
        smtp(RunsPipelinedAfterStarttls),
        "expected reply code 503, got '250",
    ),
    "security.pop3.stls-injection-user": (
        pop3_server(session=RunsInjected),
        "expected -ERR, got '+OK send PASS'",
    ),
    "security.smtp.relay-foreign-address-forms": (
        smtp(RoutesByFirstHop),
        "got '250 2.1.5 recipient OK'",
    ),
    "security.smtp.relay-local-part-tricks": (
        smtp(PercentHack),
        "got '250 2.1.5 recipient OK'",
    ),
    "security.smtp.failed-auth-no-relay": (
        smtp(FailedAuthSticks, "submission"),
        "got '250 2.1.5 recipient OK'",
    ),
    "security.smtp.cancelled-auth-no-relay": (
        smtp(CancelledAuthSticks, "submission"),
        "got '250 2.1.5 recipient OK'",
    ),
    "security.smtp.no-auth-before-tls": (
        smtp(AuthBeforeTls, "submission"),
        "got '235 2.7.0 authentication successful'",
    ),
    "security.pop3.no-login-before-tls": (
        pop3_server(session=Pop3UserBeforeTls),
        "expected -ERR, got '+OK maildrop locked",
    ),
    "security.imap.no-login-before-tls": (
        imap_toy(ImapSaslBeforeTls),
        " OK AUTHENTICATE completed'",
    ),
    "security.smtp.vrfy-no-enumeration": (
        smtp(VrfyVerifies),
        "got '250 2.1.5 <alice@example.test>'",
    ),
    "security.smtp.long-command-line": (
        smtp(LongLineDrops),
        "expected a response, but the server closed the connection",
    ),
    "security.smtp.too-many-recipients": (
        smtp(max_recipients=100, too_many_reply="552 5.5.3 too many recipients"),
        "expected reply code 250 or 251 or 452, got '552",
    ),
    "security.smtp.idle-client-does-not-block": (one_at_a_time(smtp(), "mx"), "no answer within"),
    "security.pop3.idle-client-does-not-block": (
        one_at_a_time(pop3_server(), "pop3"),
        "no answer within",
    ),
    "security.imap.idle-client-does-not-block": (
        one_at_a_time(imap_toy(), "imap"),
        "no answer within",
    ),
}


@pytest.mark.parametrize("scenario_id", sorted(CASES))
def test_fails_on_the_broken_rule(scenario_id, tmp_path, test_certs):
    handler, phrase = CASES[scenario_id]
    run_breaking(scenario_id, handler, phrase, tmp_path, test_certs)
