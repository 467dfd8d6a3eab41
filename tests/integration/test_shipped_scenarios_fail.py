"""Every shipped scenario fails against a server that breaks exactly the rule it checks.

Each case is a scripted server that behaves well except for one thing; the
scenario must fail on that thing (the phrase names it). The reference server
shows them passing (``mailharness check``). More cases live in
``test_breaking_*.py``; test_breaking_guard.py makes sure every shipped
scenario id has exactly one.

POP3 and most IMAP cases run the toy's session (tests/toymail.py) with one
method overridden, next to an SMTP ``mx`` that fills its mailboxes for
``setup.deliver``; the target has the accounts alice and bob.
"""

from __future__ import annotations

import base64
import functools
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from breaking_support import run_breaking
from scripted import ScriptConn
from toymail import Refused, ToyImap, ToyMail, ToyPop3

Handler = Callable[[ScriptConn], None]


GOOD_END = rb"\r\n\.\r\n"


def smtp_server(
    greeting: str = "220 mx.example.test ESMTP",
    *,
    data_end: bytes = GOOD_END,
    run_after_starttls: bool = False,
    **replies: list[str],
) -> Handler:
    """A well-behaved SMTP responder (an open relay, though) except where told otherwise.

    ``replies`` overrides a verb's answer (key ``VERB``, or ``VERB_TLS`` inside
    TLS; values are reply lines). ``data_end`` is the regex that ends message
    data. ``run_after_starttls`` runs a command pipelined after STARTTLS
    inside the TLS session (the CVE-2011-0411 bug).
    """

    def handle(conn: ScriptConn) -> None:
        conn.sendline(greeting)
        helo = False
        in_mail = False
        tls = False
        carried: list[str] = []
        while True:
            line = carried.pop(0) if carried else conn.recv_line(timeout=10).decode()
            verb = line.split(" ", 1)[0].upper()
            key = f"{verb}_TLS" if tls and f"{verb}_TLS" in replies else verb
            if key in replies:
                for reply in replies[key]:
                    conn.sendline(reply)
                if verb == "QUIT":
                    conn.wait_closed(timeout=3)
                    return
                continue
            if verb in ("EHLO", "HELO"):
                helo, in_mail = True, False
                if verb == "HELO":
                    conn.sendline("250 mx.example.test")
                else:
                    conn.sendline("250-mx.example.test")
                    conn.sendline("250-PIPELINING" if tls else "250-STARTTLS")
                    conn.sendline("250 8BITMIME")
            elif verb == "STARTTLS":
                if run_after_starttls and conn.readable(timeout=0.5):
                    carried.append(conn.recv_line().decode())  # kept across the handshake
                conn.sendline("220 2.0.0 go ahead")
                conn.starttls()
                tls, helo, in_mail = True, bool(carried), False
            elif verb == "MAIL":
                conn.sendline("250 2.1.0 ok" if helo else "503 5.5.1 EHLO first")
                in_mail = helo
            elif verb == "RCPT":
                conn.sendline("250 2.1.5 ok" if in_mail else "503 5.5.1 MAIL first")
            elif verb == "DATA":
                conn.sendline("354 go ahead")
                conn.recv_until(data_end, timeout=10)
                conn.sendline("250 2.0.0 queued")
                in_mail = False
            elif verb == "NOOP":
                conn.sendline("250 2.0.0 ok")
            elif verb == "QUIT":
                conn.sendline("221 2.0.0 bye")
                conn.close()
                return
            else:
                conn.sendline("502 5.5.1 not implemented")

    return handle


class Pop3(ToyPop3):
    """A well-behaved POP3 session (the toy's) with a scripted greeting and canned answers.

    ``replies[VERB]`` lines answer VERB in any state. Subclasses below break one rule each.
    """

    def __init__(
        self, toy: ToyMail, conn: ScriptConn, greeting: str, replies: dict[str, list[str]]
    ) -> None:
        super().__init__(toy, conn)
        self.greeting, self.replies = greeting, replies

    def command(self, line: str) -> bool:
        verb = line.partition(" ")[0].upper()
        if verb not in self.replies:
            return super().command(line)
        for reply in self.replies[verb]:
            self.conn.sendline(reply)
        return True


def pop3_server(
    greeting: str = "+OK ready", session: type[Pop3] = Pop3, **replies: list[str]
) -> dict[str, Handler]:
    """POP3 (``session``'s rules) on the service ``pop3``, and an SMTP ``mx`` that
    delivers into its maildrops for ``setup.deliver``. Accounts as in ``TARGET``."""
    toy = ToyMail({"alice": "alice-pw", "bob": "bob-pw"})
    make = functools.partial(session, greeting=greeting, replies=replies)
    return {"pop3": toy.pop3_handler(make), "mx": toy.smtp_handler()}


class CaseSensitive(Pop3):
    def command(self, line: str) -> bool:
        verb = line.partition(" ")[0]
        if verb != verb.upper():
            self.err("unknown command")
            return True
        return super().command(line)


class NoByteStuffing(Pop3):
    def stuff(self, line: bytes) -> bytes:
        return line


class NoLock(Pop3):
    def open_maildrop(self, who: str) -> bool:
        with self.toy.lock:
            self.toy._pop_locked.discard(who)
        return super().open_maildrop(who)


class AnyPassword(Pop3):
    def do_pass(self, arg: str) -> None:
        super().do_pass(self.toy.accounts.get(self.user or "", arg))


class RetrOfAbsentMessageIsEmpty(Pop3):
    def do_retr(self, arg: str) -> None:
        if arg.isdigit() and int(arg) > len(self.view):
            self.multiline("0 octets", [])
        else:
            super().do_retr(arg)


class RsetKeepsMarks(Pop3):
    def do_rset(self, arg: str) -> None:
        self.ok()


class QuitRemovesNothing(Pop3):
    def update(self) -> None:
        pass


class UpdateOnDrop(Pop3):
    def unlock(self) -> None:
        if self.locked:
            self.update()
        super().unlock()


class TopSendsWholeMessage(Pop3):
    def do_top(self, arg: str) -> None:
        self.do_retr(arg.partition(" ")[0])


class UidlPerSession(Pop3):
    sessions = itertools.count()

    def do_uidl(self, arg: str) -> None:
        session = next(self.sessions)
        self.listing(arg, lambda i: f"s{session}m{i + 1}")


class PassWithoutUser(Pop3):
    def do_pass(self, arg: str) -> None:
        self.user = self.user or "alice"
        super().do_pass(arg)


class CapaShrinksAfterLogin(Pop3):
    def capabilities(self) -> list[str]:
        caps = super().capabilities()
        return [c for c in caps if c not in ("USER", "SASL PLAIN")] if self.locked else caps


class ShortCommandLines(Pop3):
    def command(self, line: str) -> bool:
        if len(line) + 2 > 128:
            self.err("line too long")
            return True
        return super().command(line)


class FlushesInput(Pop3):
    def read_line(self) -> str:
        line = super().read_line()
        while self.conn.readable():  # what came along with the command is dropped
            self.conn.recv_line()
        return line


class StlsLogsIn(Pop3):
    def do_stls(self, arg: str) -> None:
        super().do_stls(arg)
        self.open_maildrop("alice")  # as if the TLS handshake had authenticated alice


class RunsInjected(Pop3):
    def do_stls(self, arg: str) -> None:
        carried = self.conn.recv_line().decode() if self.conn.readable(timeout=0.5) else ""
        super().do_stls(arg)
        if carried:  # kept across the handshake and run inside TLS
            self.command(carried)


class AuthAfterLogin(Pop3):
    TRANSACTION = Pop3.TRANSACTION | {"AUTH"}

    def do_auth(self, arg: str) -> None:
        if self.locked:
            self.ok("already logged in")
        else:
            super().do_auth(arg)


class ChattyChallenge(Pop3):
    def challenge(self, b64: str) -> str:
        return super().challenge(b64 or "go ahead")


class PlainIgnoresPassword(Pop3):
    def sasl_plain(self, response: str) -> str | None:
        _authzid, user, _password = base64.b64decode(response).decode().split("\0")
        return user


def imap_server(greeting: str = "* OK IMAP4rev1 ready", **replies: list[str]) -> Handler:
    """``replies[VERB]`` lines are sent with ``{tag}`` filled in; LOGOUT closes afterwards."""

    def handle(conn: ScriptConn) -> None:
        conn.sendline(greeting)
        while True:
            tag, _, rest = conn.recv_line(timeout=10).decode().partition(" ")
            verb = rest.split(" ", 1)[0].upper()
            if verb in replies:
                for reply in replies[verb]:
                    conn.sendline(reply.format(tag=tag))
            elif verb == "CAPABILITY":
                conn.sendline("* CAPABILITY IMAP4rev1 STARTTLS")
                conn.sendline(f"{tag} OK done")
            elif verb == "LOGOUT":
                conn.sendline("* BYE see you")
                conn.sendline(f"{tag} OK done")
            else:
                conn.sendline(f"{tag} BAD what")
            if verb == "LOGOUT":
                conn.close()
                return

    return handle


def imap_toy(session: type[ToyImap] = ToyImap) -> dict[str, Handler]:
    """IMAP (``session``'s rules) on the service ``imap``, and an SMTP ``mx`` that
    delivers into its INBOXes for ``setup.deliver``. Accounts as in ``TARGET``."""
    toy = ToyMail({"alice": "alice-pw", "bob": "bob-pw"})
    return {"imap": toy.imap_handler(session), "mx": toy.smtp_handler()}


Args = list[str | bytes]


class StarttlsStaysAdvertised(ToyImap):
    def capabilities(self) -> list[str]:
        caps = super().capabilities()
        return caps if "STARTTLS" in caps else [*caps, "STARTTLS"]


class LoginDisabledIgnored(ToyImap):
    def capabilities(self) -> list[str]:
        caps = super().capabilities()
        return caps if self.conn.tls else [*caps, "LOGINDISABLED"]  # ...but LOGIN still works


class ImapRunsInjected(ToyImap):
    carried: bytes | None = None

    def do_starttls(self, tag: str, args: Args) -> None:
        if self.conn.readable(timeout=0.5):
            self.carried = self.read_line()  # kept across the handshake
        super().do_starttls(tag, args)

    def read_line(self) -> bytes:
        line, self.carried = self.carried, None
        return line if line is not None else super().read_line()


class LoginAnyPassword(ToyImap):
    def do_login(self, tag: str, args: Args) -> None:
        user = args[0] if args and args[0] in self.toy.accounts else None
        super().do_login(tag, [user, self.toy.accounts[user]] if user else args)


class FetchWithoutMailbox(ToyImap):
    AUTHENTICATED = ToyImap.AUTHENTICATED | {"FETCH"}

    def do_fetch(self, tag: str, args: Args, by_uid: bool = False) -> None:
        if self.mailbox is None:
            self.ok(tag, "FETCH completed (nothing to fetch)")
        else:
            super().do_fetch(tag, args, by_uid)


class NoopTakesArguments(ToyImap):
    def do_noop(self, tag: str, args: Args) -> None:
        super().do_noop(tag, [])


class UppercasesTags(ToyImap):
    def done(self, tag: str, status: str, text: str, code: str | None = None) -> None:
        super().done(tag.upper(), status, text, code)


class NoMailboxUpdates(ToyImap):
    def updates(self) -> None:
        pass


class SelectWithoutUidnext(ToyImap):
    def untagged(self, text: str) -> None:
        if not text.startswith("OK [UIDNEXT "):
            super().untagged(text)


class ExamineSetsSeen(ToyImap):
    def do_fetch(self, tag: str, args: Args, by_uid: bool = False) -> None:
        readonly, self.readonly = self.readonly, False
        try:
            super().do_fetch(tag, args, by_uid)
        finally:
            self.readonly = readonly


class CaseSensitiveInbox(ToyImap):
    def target(self, name: str | bytes, code: str = "NONEXISTENT") -> Any:
        text = name.decode() if isinstance(name, bytes) else name
        if text.upper() == "INBOX" and text != "INBOX":
            raise Refused("no such mailbox", "NO", code)
        return super().target(name, code)


class ListWithoutDelimiter(ToyImap):
    def do_list(self, tag: str, args: Args) -> None:
        if len(args) == 2 and args[1] == "":
            self.ok(tag, "LIST completed")  # without the delimiter and root
        else:
            super().do_list(tag, args)


class CreateExistingOk(ToyImap):
    def do_create(self, tag: str, args: Args) -> None:
        try:
            super().do_create(tag, args)
        except Refused:
            self.ok(tag, "CREATE completed (it was there already)")


class StatusOfMissingMailbox(ToyImap):
    def do_status(self, tag: str, args: Args) -> None:
        try:
            super().do_status(tag, args)
        except Refused:
            self.untagged(f"STATUS {args[0]!s} (MESSAGES 0)")
            self.ok(tag, "STATUS completed")


class AppendDropsFlags(ToyImap):
    def do_append(self, tag: str, args: Args) -> None:
        if "(" in args and ")" in args:
            args = args[: args.index("(")] + args[args.index(")") + 1 :]
        super().do_append(tag, args)


class AppendCreates(ToyImap):
    def do_append(self, tag: str, args: Args) -> None:
        assert self.user is not None
        with self.toy.lock:
            self.toy.create(self.user, str(args[0]))
        super().do_append(tag, args)


class CopyWithoutTrycreate(ToyImap):
    def copy(self, tag: str, args: Args, by_uid: bool, move: bool) -> None:
        try:
            super().copy(tag, args, by_uid, move)
        except Refused as refused:
            raise Refused(refused.text, refused.status) from None  # no [TRYCREATE]


class SizeWithoutCr(ToyImap):
    def fetch_response(self, n: int, uid: int, message: bytes, *rest: Any) -> bytes:
        real = super().fetch_response(n, uid, message, *rest)
        bare = len(message.replace(b"\r\n", b"\n"))
        return real.replace(f"RFC822.SIZE {len(message)}".encode(), f"RFC822.SIZE {bare}".encode())


class PeekSetsSeen(ToyImap):
    def do_fetch(self, tag: str, args: Args, by_uid: bool = False) -> None:
        args = [a.replace("BODY.PEEK[]", "BODY[]") if isinstance(a, str) else a for a in args]
        super().do_fetch(tag, args, by_uid)


class StoreIgnoresSilent(ToyImap):
    def do_store(self, tag: str, args: Args, by_uid: bool = False) -> None:
        args = [a.replace(".SILENT", "") if isinstance(a, str) else a for a in args]
        super().do_store(tag, args, by_uid)


class UidFetchWithoutUid(ToyImap):
    def uid_items(self, items: list[str]) -> list[str]:
        return items


class SearchSilentOnNoMatch(ToyImap):
    def untagged(self, text: str) -> None:
        if text != "SEARCH":
            super().untagged(text)


class ExpungeWithoutResponses(ToyImap):
    def expunged(self, gone: set[int]) -> None:
        self.view = [uid for uid in self.view if uid not in gone]


class IdleNeverDone(ToyImap):
    def ok(self, tag: str, text: str, code: str | None = None) -> None:
        if text != "IDLE terminated":  # DONE is read, but IDLE never completes
            super().ok(tag, text, code)


class OddIdResponse(ToyImap):
    def do_id(self, tag: str, args: Args) -> None:
        self.untagged('ID ("name")')  # a field without its value
        self.ok(tag, "ID completed")


class NoPersonalNamespace(ToyImap):
    def do_namespace(self, tag: str, args: Args) -> None:
        self.untagged("NAMESPACE NIL NIL NIL")
        self.ok(tag, "NAMESPACE completed")


class AppendUidRange(ToyImap):
    def ok(self, tag: str, text: str, code: str | None = None) -> None:
        if code and code.startswith("APPENDUID "):
            uid = code.rsplit(" ", 1)[1]
            code = f"{code}:{uid}"  # "123:123", which RFC 9051 §7.1 forbids
        super().ok(tag, text, code)


class MoveSetsDeleted(ToyImap):
    def expunged(self, gone: set[int]) -> None:
        for i, uid in enumerate(self.view):
            if uid in gone:
                self.untagged(f"{i + 1} FETCH (FLAGS (\\Deleted))")  # as COPY+STORE+EXPUNGE
        super().expunged(gone)


class NoContinuationForEmptyLiteral(ToyImap):
    def continuation(self, size: int) -> None:
        if size:  # {0} is read at once, without the "+" the client waits for
            super().continuation(size)


class LongLineCloses(ToyImap):
    max_line = 1 << 30

    def read_line(self) -> bytes:
        line = super().read_line()
        if len(line) > 64 * 1024:
            raise EOFError("line too long")  # and the connection closes without a word
        return line


class HugeLiteralContinues(ToyImap):
    max_literal = 1 << 70

    def read_command(self) -> list[str | bytes]:
        try:
            return super().read_command()
        except TimeoutError:
            raise EOFError("the client never sent the literal") from None


# scenario id -> (protocol's server, or a server per service name, breaking exactly the
# rule; phrase in the failure)
CASES: dict[str, tuple[Handler | dict[str, Handler], str]] = {
    "smtp.greeting.220": (
        smtp_server(greeting="220 localhost-without-dots"),
        "expected text matching",
    ),
    "smtp.ehlo.multiline-250": (
        smtp_server(EHLO=["250-mx.example.test", "250-PIPE LINING", "250 -8BITMIME"]),
        "expected text matching",
    ),
    "smtp.helo.single-line": (
        smtp_server(HELO=["250-mx.example.test", "250 PIPELINING"]),
        "expected a single-line reply",
    ),
    "smtp.sequence.mail-before-ehlo": (
        smtp_server(MAIL=["250 2.1.0 ok"]),
        "expected reply code 503",
    ),
    "smtp.sequence.rcpt-before-mail": (
        smtp_server(RCPT=["250 2.1.5 ok"]),
        "expected reply code 503",
    ),
    "smtp.quit.221-then-close": (
        smtp_server(QUIT=["221 2.0.0 bye"]),  # ...and then keeps the connection open
        "expected the server to close the connection",
    ),
    "smtp.starttls.not-advertised-inside-tls": (
        smtp_server(EHLO_TLS=["250-mx.example.test", "250-STARTTLS", "250 8BITMIME"]),
        "expected EHLO keyword(s) STARTTLS to be absent",
    ),
    "smtp.submission.mail-needs-auth": (smtp_server(), "expected reply code 530"),
    "security.smtp.no-open-relay": (smtp_server(), "expected reply code 450 or 451"),
    "security.smtp.smuggling-lf-dot-lf": (
        smtp_server(data_end=rb"\n\.\n|\r\n\.\r\n"),
        "expected silence for 1s, but the server sent",
    ),
    "security.smtp.smuggling-cr-dot-cr": (
        smtp_server(data_end=rb"\r\.\r|\r\n\.\r\n"),
        "expected silence for 1s, but the server sent",
    ),
    "security.smtp.starttls-injection": (
        smtp_server(run_after_starttls=True),
        "expected reply code 503",
    ),
    "pop3.greeting.ok": (pop3_server(greeting="-ERR go away"), "expected +OK"),
    "pop3.capa.multiline-list": (
        pop3_server(CAPA=["+OK capabilities", " USER", "."]),
        "expected the body to match",
    ),
    "pop3.state.stat-before-login": (pop3_server(STAT=["+OK 0 0"]), "expected -ERR"),
    "pop3.command.unknown-err-any-case": (pop3_server(session=CaseSensitive), "expected +OK"),
    "pop3.retr.byte-stuffed": (pop3_server(session=NoByteStuffing), "must be byte-stuffed"),
    "pop3.lock.second-session-refused": (pop3_server(session=NoLock), "expected -ERR"),
    "pop3.auth.wrong-password-err": (pop3_server(session=AnyPassword), "expected -ERR"),
    "pop3.transaction.stat-list-retr": (
        pop3_server(session=RetrOfAbsentMessageIsEmpty),
        "expected -ERR",
    ),
    "pop3.transaction.dele-rset-noop": (
        pop3_server(session=RsetKeepsMarks),
        "expected text matching",
    ),
    "pop3.update.quit-removes-marked": (
        pop3_server(session=QuitRemovesNothing),
        "expected text matching",
    ),
    "pop3.update.drop-deletes-nothing": (
        pop3_server(session=UpdateOnDrop),
        "expected text matching",
    ),
    "pop3.top.headers-and-n-lines": (
        pop3_server(session=TopSendsWholeMessage),
        "expected the body to match",
    ),
    "pop3.uidl.stable-and-well-formed": (
        pop3_server(session=UidlPerSession),
        "expected the body to match",
    ),
    "pop3.auth.pass-needs-user": (pop3_server(session=PassWithoutUser), "expected -ERR"),
    "pop3.capa.same-in-both-states": (
        pop3_server(session=CapaShrinksAfterLogin),
        "expected the body to match",
    ),
    "pop3.limits.255-octet-command": (
        pop3_server(session=ShortCommandLines),
        "expected text matching",
    ),
    "pop3.pipelining.answers-in-order": (pop3_server(session=FlushesInput), "no answer within"),
    "pop3.stls.stays-in-authorization": (pop3_server(session=StlsLogsIn), "expected -ERR"),
    "pop3.sasl.unknown-mechanism-and-second-auth": (
        pop3_server(session=AuthAfterLogin),
        "expected -ERR",
    ),
    "pop3.sasl.empty-challenge-cancel-bad-base64": (
        pop3_server(session=ChattyChallenge),
        "capture 'challenge'",
    ),
    "pop3.sasl.result-sets-state": (pop3_server(session=PlainIgnoresPassword), "expected -ERR"),
    "security.pop3.stls-injection": (pop3_server(session=RunsInjected), "expected -ERR"),
    "imap.greeting.ok": (
        imap_server(greeting="* PREAUTH welcome"),
        "expected an untagged response matching",
    ),
    "imap.capability.one-response-with-version": (
        imap_server(CAPABILITY=["* CAPABILITY STARTTLS IDLE", "{tag} OK done"]),
        "CAPABILITY lists neither IMAP4rev2 nor IMAP4rev1",  # the reader applies RFC 9051 §9
    ),
    "imap.logout.bye-ok-close": (
        imap_server(LOGOUT=["{tag} OK done"]),  # no untagged BYE before the OK
        "expected an untagged response matching /^\\* BYE\\b/",
    ),
    "imap.starttls.capability-again": (
        imap_toy(StarttlsStaysAdvertised),
        "expected no untagged response matching /(?i)^\\* CAPABILITY",
    ),
    "imap.login.logindisabled-refuses-login": (
        imap_toy(LoginDisabledIgnored),
        "capture 'refused'",
    ),
    "security.imap.starttls-injection": (
        imap_toy(ImapRunsInjected),
        "expected silence for 1s, but the server sent",
    ),
    "imap.login.failure-no": (imap_toy(LoginAnyPassword), "expected tagged NO"),
    "imap.state.wrong-state-refused": (imap_toy(FetchWithoutMailbox), "capture 'r4'"),
    "imap.command.unknown-and-malformed-bad": (
        imap_toy(NoopTakesArguments),
        "expected tagged BAD",
    ),
    "imap.tag.echoed-and-reusable": (imap_toy(UppercasesTags), "no answer within"),
    "imap.noop.any-state-reports-new-mail": (
        imap_toy(NoMailboxUpdates),
        "expected an untagged response matching /^\\* 1 EXISTS$/",
    ),
    "imap.select.required-data": (
        imap_toy(SelectWithoutUidnext),
        "expected an untagged response matching /^\\* OK \\[UIDNEXT",
    ),
    "imap.examine.read-only": (
        imap_toy(ExamineSetsSeen),
        "expected no untagged response matching /\\\\Seen/",
    ),
    "imap.mailbox.inbox-any-case": (imap_toy(CaseSensitiveInbox), "expected tagged OK"),
    "imap.list.delimiter-and-inbox": (
        imap_toy(ListWithoutDelimiter),
        "expected an untagged response matching /^\\* LIST",
    ),
    "imap.mailbox.create-and-delete": (imap_toy(CreateExistingOk), "expected tagged NO"),
    "imap.status.requested-items": (imap_toy(StatusOfMissingMailbox), "expected tagged NO"),
    "imap.append.literal-then-fetch": (
        imap_toy(AppendDropsFlags),
        "expected an untagged response matching /(?s)^\\* 1 FETCH \\((?=.*\\bFLAGS",
    ),
    "imap.append.missing-mailbox-trycreate": (imap_toy(AppendCreates), "expected tagged NO"),
    "imap.copy.trycreate-and-copy": (
        imap_toy(CopyWithoutTrycreate),
        "expected response code [TRYCREATE]",
    ),
    "imap.fetch.flags-size-uid": (
        imap_toy(SizeWithoutCr),
        "got: * 1 FETCH (BODY[] {44}",  # RFC822.SIZE said 41
    ),
    "imap.fetch.body-sets-seen-peek-does-not": (
        imap_toy(PeekSetsSeen),
        "expected no untagged response matching /\\\\Seen/",
    ),
    "imap.store.flags-returned-and-kept": (
        imap_toy(StoreIgnoresSilent),
        "expected no untagged response matching /^\\* 1 FETCH \\(.*\\bFLAGS /",
    ),
    "imap.uid.fetch-includes-uid": (
        imap_toy(UidFetchWithoutUid),
        "got: * 1 FETCH (FLAGS ())",
    ),
    "imap.search.results": (imap_toy(SearchSilentOnNoMatch), "capture 'none'"),
    "imap.expunge.untagged-expunge": (
        imap_toy(ExpungeWithoutResponses),
        "expected an untagged response matching /^\\* 2 EXPUNGE$/",
    ),
    "imap.idle.continuation-updates-done": (imap_toy(IdleNeverDone), "no answer within 3s"),
    "imap.id.answers-in-any-state": (
        imap_toy(OddIdResponse),
        "got '* ID (\"name\")'",
    ),
    "imap.namespace.personal-namespace": (
        imap_toy(NoPersonalNamespace),
        "got: * NAMESPACE NIL NIL NIL",
    ),
    "imap.uidplus.appenduid-copyuid": (imap_toy(AppendUidRange), "capture 'u'"),
    "imap.move.expunges-source": (
        imap_toy(MoveSetsDeleted),
        "got '* 1 FETCH (FLAGS (\\\\Deleted))'",
    ),
    "imap.literal.synchronising-continuation": (
        imap_toy(NoContinuationForEmptyLiteral),
        "no answer within",
    ),
    "security.imap.long-line": (
        imap_toy(LongLineCloses),
        "expected a response, but the server closed the connection",
    ),
    "security.imap.literal-abuse": (imap_toy(HugeLiteralContinues), "capture 'refused'"),
}


@pytest.mark.parametrize("scenario_id", sorted(CASES))
def test_shipped_scenario_fails_on_the_broken_rule(scenario_id, tmp_path, test_certs):
    handler, phrase = CASES[scenario_id]
    run_breaking(scenario_id, handler, phrase, tmp_path, test_certs)
