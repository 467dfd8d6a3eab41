"""Breaking cases for the RFC 5321 core scenarios (scenarios/smtp/rfc5321-*.yaml).

:class:`Smtp` is a small SMTP server (the MX role) that follows RFC 5321 in
everything the scenarios look at; each subclass below breaks exactly one rule,
and its scenario must fail saying why. Messages go into a :class:`ToyMail`
store, so the scenarios that read a message back over IMAP run against the
toy's IMAP on the same store.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable

import pytest
from breaking_support import Handler, run_breaking
from scripted import ScriptConn
from toymail import ToyMail

DOMAIN = "example.test"
ACCOUNTS = {"alice": "alice-pw", "bob": "bob-pw"}

# RFC 5321 §4.1.2 and §4.1.3, ASCII only (no SMTPUTF8 here)
_SUB = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"{_SUB}(?:\.{_SUB})*"
_LITERAL = r"\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]"
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL = rf'(?:{_ATEXT}+(?:\.{_ATEXT}+)*|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*")'
_PATH = re.compile(rf"<(?:@{_DOMAIN}(?:,@{_DOMAIN})*:)?({_LOCAL}@(?:{_DOMAIN}|{_LITERAL}))>")
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?")
_HELO_NAME = re.compile(rf"{_DOMAIN}|{_LITERAL}")
_BARE_EOL = re.compile(rb"(?<!\r)\n|\r(?!\n)")
_RECOGNISED_UNIMPLEMENTED = {"TURN", "SEND", "SOML", "SAML"}


class Refusal(Exception):
    """Answer the command with ``code text`` (and change nothing)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code, self.text = code, text


class Smtp:
    """One SMTP session, well-behaved per RFC 5321 (an MX: local mailboxes only).

    Each verb is a ``do_<verb>`` method taking the argument with trailing white
    space removed; the hooks around them (:meth:`read_command`, :meth:`verb`,
    :meth:`end_of_data`, :meth:`is_relay` ...) are what the subclasses bend.
    """

    hostname = "mx.example.test"
    max_line = 2048  # octets of a command line, CRLF included
    max_recipients = 1000
    max_size = 10 * 1024 * 1024

    def __init__(self, toy: ToyMail, conn: ScriptConn) -> None:
        self.toy, self.conn = toy, conn
        self.helo: str | None = None
        self.esmtp = False
        self.sender: str | None = None
        self.rcpts: list[str] = []  # mailbox users, one per accepted RCPT
        self.done = False

    # ---- plumbing
    def run(self) -> None:
        self.reply(220, f"{self.hostname} ESMTP scripted")
        while not self.done:
            line = self.read_command()
            if line is not None:
                self.command(line)

    def read_command(self) -> bytes | None:
        """The next command line without its CRLF (only CRLF ends one), or None if answered."""
        raw = self.conn.recv_until(rb"\r\n", timeout=10)
        if len(raw) > self.max_line:
            self.reply(500, "5.5.2 line too long")
            return None
        return raw[:-2]

    def reply(self, code: int, *lines: str) -> None:
        last = len(lines) - 1
        self.conn.send(
            "".join(f"{code}{' ' if i == last else '-'}{t}\r\n" for i, t in enumerate(lines))
        )

    def verb(self, word: str) -> str:
        return word.upper()

    def command(self, line: bytes) -> None:
        if re.search(rb"[\r\n\0]", line):
            self.reply(500, "5.5.2 bare CR, LF or NUL in a command line")
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.reply(500, "5.5.2 syntax error - invalid character")
            return
        word, _, arg = text.partition(" ")
        verb = self.verb(word)
        handler = getattr(self, f"do_{verb.lower()}", None) if verb.isalpha() else None
        if verb in _RECOGNISED_UNIMPLEMENTED:
            self.reply(502, "5.5.1 command not implemented")
        elif handler is None:
            self.reply(500, "5.5.2 command not recognized")
        else:
            try:
                handler(self.argument(arg))
            except Refusal as refusal:
                self.reply(refusal.code, refusal.text)

    def argument(self, arg: str) -> str:
        return arg.rstrip(" \t")  # RFC 5321 §4.1.1: trailing white space is tolerated

    def reset(self) -> None:
        self.sender, self.rcpts = None, []

    @staticmethod
    def path(arg: str, prefix: str) -> tuple[str, dict[str, str | None]]:
        """``FROM:<path> params`` or ``TO:<path> params``: the mailbox and the parameters."""
        if arg[: len(prefix)].upper() != prefix:
            raise Refusal(501, f"5.5.4 syntax: {prefix}<address>")
        rest = arg[len(prefix) :]
        if prefix == "FROM:" and rest.startswith("<>"):
            address, tail = "", rest[2:]
        elif prefix == "TO:" and rest[:12].lower() == "<postmaster>":
            address, tail = "postmaster", rest[12:]
        else:
            m = _PATH.match(rest)
            if m is None:
                raise Refusal(501, "5.1.3 bad address syntax")
            address, tail = m.group(1), rest[m.end() :]
        params: dict[str, str | None] = {}
        if tail and not tail.startswith(" "):
            raise Refusal(501, "5.5.4 a space goes between the path and the parameters")
        for word in tail.split(" ")[1:]:
            m = _PARAM.fullmatch(word)
            if m is None:
                raise Refusal(501, f"5.5.4 malformed parameter {word}")
            params[m.group(1).upper()] = m.group(2)
        return address, params

    def mailbox(self, address: str) -> str | None:
        """The local user an address delivers to, or None."""
        local, _, domain = address.rpartition("@")
        if address == "postmaster":
            return "alice"
        if domain.lower() != DOMAIN:
            return None
        if self.is_postmaster(local):
            return "alice"
        return local if local in self.toy.accounts else None

    def is_postmaster(self, local: str) -> bool:
        return local.lower() == "postmaster"

    def is_relay(self, address: str) -> bool:
        return address != "postmaster" and address.rpartition("@")[2].lower() != DOMAIN

    # ---- the greeting exchange
    def check_helo(self, arg: str) -> str:
        name = arg.split(" ", 1)[0]
        if not _HELO_NAME.fullmatch(name):
            raise Refusal(501, "5.5.4 syntax: EHLO domain-or-address-literal")
        return name

    def restart(self) -> None:
        """What an accepted EHLO or HELO does to the transaction (RFC 5321 §4.1.4)."""
        self.reset()

    def do_ehlo(self, arg: str) -> None:
        self.helo, self.esmtp = self.check_helo(arg), True
        self.restart()
        self.reply(
            250,
            f"{self.hostname} greets {self.helo}",
            "PIPELINING",
            f"SIZE {self.max_size}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
        )

    def do_helo(self, arg: str) -> None:
        self.helo, self.esmtp = self.check_helo(arg), False
        self.restart()
        self.reply(250, self.hostname)

    # ---- the mail transaction
    def do_mail(self, arg: str) -> None:
        if self.helo is None or self.sender is not None:
            raise Refusal(503, "5.5.1 bad sequence of commands")
        address, params = self.path(arg, "FROM:")
        self.check_params(params, {"SIZE", "BODY"} if self.esmtp else set())
        self.sender = address
        self.reply(250, "2.1.0 sender ok")

    def check_params(self, params: dict[str, str | None], known: set[str]) -> None:
        for key in params:
            if key not in known:
                raise Refusal(555, f"5.5.4 parameter {key} not recognized")

    def do_rcpt(self, arg: str) -> None:
        if self.sender is None:
            raise Refusal(503, "5.5.1 need MAIL first")
        address, params = self.path(arg, "TO:")
        self.check_params(params, set())
        if len(self.rcpts) >= self.max_recipients:
            raise Refusal(452, "4.5.3 too many recipients")
        user = self.mailbox(address)
        if user is None and self.is_relay(address):
            raise Refusal(550, "5.7.1 relaying denied")
        if user is None:
            raise Refusal(550, "5.1.1 no such mailbox")
        self.rcpts.append(user)
        self.reply(250, "2.1.5 recipient ok")

    def do_data(self, arg: str) -> None:
        if arg:
            raise Refusal(501, "5.5.4 DATA takes no parameters")
        if self.sender is None:
            raise Refusal(503, "5.5.1 need MAIL first")
        if not self.rcpts:
            raise Refusal(503, "5.5.1 need RCPT first")
        self.reply(354, "end data with <CR><LF>.<CR><LF>")
        raw = self.conn.recv_until(self.data_end(), timeout=10)
        try:
            self.end_of_data(raw[: raw.rfind(b".")])  # the data, CRLF of the last line kept
        except Refusal as refusal:
            self.reply(refusal.code, refusal.text)
        finally:
            self.reset()

    def data_end(self) -> bytes:
        return rb"(?:\A|\r\n)\.\r\n"  # the end of data is <CRLF>.<CRLF> only

    def end_of_data(self, data: bytes) -> None:
        if _BARE_EOL.search(data):
            raise Refusal(554, "5.6.0 bare CR or LF in the message")
        if len(data) > self.max_size:
            raise Refusal(552, "5.3.4 message too big")
        self.check_lines(data.split(b"\r\n"))
        message = b"\r\n".join(self.unstuff(line) for line in data.split(b"\r\n"))
        self.check_message(message)
        for user in dict.fromkeys(self.rcpts):
            self.toy.deliver(user, self.trace() + message)
        self.reply(250, "2.0.0 queued")

    def check_lines(self, lines: list[bytes]) -> None:
        """Line length limits (none here: RFC 5321 §4.5.3.1 prefers no limits)."""

    def check_message(self, message: bytes) -> None:
        """Content policy (none here: RFC 5321 §3.3)."""

    def unstuff(self, line: bytes) -> bytes:
        return line[1:] if line.startswith(b".") else line

    def trace(self) -> bytes:
        return self.return_path() + self.received()

    def return_path(self) -> bytes:
        return f"Return-Path: <{self.sender}>\r\n".encode()

    def received(self) -> bytes:
        date = email.utils.formatdate(time.time())
        proto = "ESMTP" if self.esmtp else "SMTP"
        return (
            f"Received: from {self.helo} ([127.0.0.1])\r\n"
            f"\tby {self.hostname} with {proto}; {date}\r\n"
        ).encode()

    # ---- anytime
    def do_rset(self, arg: str) -> None:
        if arg:
            raise Refusal(501, "5.5.4 RSET takes no parameters")
        self.reset()
        self.reply(250, "2.0.0 ok")

    def do_noop(self, arg: str) -> None:
        self.reply(250, "2.0.0 ok")

    def do_vrfy(self, arg: str) -> None:
        self.reply(252, "2.5.0 cannot VRFY user, but will accept message and attempt delivery")

    def do_expn(self, arg: str) -> None:
        self.reply(502, "5.5.1 EXPN not implemented")

    def do_help(self, arg: str) -> None:
        self.reply(214, "2.0.0 commands:", "2.0.0 EHLO HELO MAIL RCPT DATA RSET NOOP VRFY QUIT")

    def do_quit(self, arg: str) -> None:
        if arg:
            raise Refusal(501, "5.5.4 QUIT takes no parameters")
        self.reply(221, f"2.0.0 {self.hostname} closing connection")
        self.done = True


Session = Callable[[ToyMail, ScriptConn], Smtp]


def smtp(session: Session = Smtp) -> Handler:
    """An MX running ``session``, over a store of its own."""
    return _handler(session, ToyMail(dict(ACCOUNTS)))


def smtp_and_imap(session: Session = Smtp) -> dict[str, Handler]:
    """The MX running ``session``, and the toy's IMAP reading the same store."""
    toy = ToyMail(dict(ACCOUNTS))
    return {"mx": _handler(session, toy), "imap": toy.imap_handler()}


def _handler(session: Session, toy: ToyMail) -> Handler:
    def handle(conn: ScriptConn) -> None:
        session(toy, conn).run()

    return handle


# ---- one broken rule each


class UpperCaseVerbsOnly(Smtp):
    def verb(self, word: str) -> str:
        return word if word.isupper() else "?"


class EhloKeepsTransaction(Smtp):
    def restart(self) -> None:
        pass


class RefusedEhloResets(Smtp):
    def check_helo(self, arg: str) -> str:
        try:
            return super().check_helo(arg)
        except Refusal:
            self.reset()
            raise


class NeedsEhloFirst(Smtp):
    def command(self, line: bytes) -> None:
        if self.helo is None and line.split(b" ", 1)[0].upper() not in (b"EHLO", b"HELO", b"QUIT"):
            self.reply(503, "5.5.1 say EHLO first")
        else:
            super().command(line)


class NoNullSender(Smtp):
    def do_mail(self, arg: str) -> None:
        if arg.upper().startswith("FROM:<>"):
            raise Refusal(553, "5.1.7 the null sender is not accepted here")
        super().do_mail(arg)


class NestedMailRestarts(Smtp):
    def do_mail(self, arg: str) -> None:
        self.reset()
        super().do_mail(arg)


class MalformedMail553(Smtp):
    def do_mail(self, arg: str) -> None:
        try:
            super().do_mail(arg)
        except Refusal as refusal:
            raise Refusal(553 if refusal.code == 501 else refusal.code, refusal.text) from None


class UnknownParametersIgnored(Smtp):
    def check_params(self, params: dict[str, str | None], known: set[str]) -> None:
        pass


class TrailingSpaceIsArgument(Smtp):
    def argument(self, arg: str) -> str:
        return arg


class EightBitAccepted(Smtp):
    def command(self, line: bytes) -> None:
        # 8-bit octets are taken (as "?"), and control characters pass as address text
        super().command(line.decode("latin-1").encode("ascii", "replace"))

    @staticmethod
    def path(arg: str, prefix: str) -> tuple[str, dict[str, str | None]]:
        m = re.match(rf"{prefix}<([^>]*)>", arg, re.I)
        return (m.group(1), {}) if m else Smtp.path(arg, prefix)


class SourceRoutesRefused(Smtp):
    @staticmethod
    def path(arg: str, prefix: str) -> tuple[str, dict[str, str | None]]:
        if arg[len(prefix) :].startswith("<@"):
            raise Refusal(501, "5.1.3 source routes are a syntax error here")
        return Smtp.path(arg, prefix)


class NoAddressLiterals(Smtp):
    def check_helo(self, arg: str) -> str:
        if arg.startswith("["):
            raise Refusal(501, "5.5.4 give a host name")
        return super().check_helo(arg)


class CaseSensitivePostmaster(Smtp):
    def is_postmaster(self, local: str) -> bool:
        return local in ("postmaster", "Postmaster")


class FiftyRecipients(Smtp):
    max_recipients = 50


class DataWithoutRecipients(Smtp):
    def do_data(self, arg: str) -> None:
        if self.sender is not None and not self.rcpts:
            self.rcpts = ["alice"]  # as if there were someone to deliver to
        super().do_data(arg)


class TwoFinalReplies(Smtp):
    def end_of_data(self, data: bytes) -> None:
        super().end_of_data(data)
        self.reply(250, "2.0.0 queued, and said once more")


class LfEndsDataLines(Smtp):
    def data_end(self) -> bytes:
        return rb"(?:\A|\r?\n)\.\r?\n"


class CountsTheStuffingDot(Smtp):
    def check_lines(self, lines: list[bytes]) -> None:
        if any(len(line) + 2 > 1000 for line in lines):  # stuffed, as on the wire
            raise Refusal(554, "5.6.0 line longer than 1000 octets")


class SixtyKilobytes(Smtp):
    max_size = 60000


class ShortCommandLines(Smtp):
    max_line = 500


class LongLinesInPieces(Smtp):
    def read_command(self) -> bytes | None:
        piece = self.conn.recv_until(rb"\r\n|[^\r\n]{510}", timeout=10)
        return piece[:-2] if piece.endswith(b"\r\n") else piece


class RsetKeepsSender(Smtp):
    def do_rset(self, arg: str) -> None:
        self.rcpts = []
        self.reply(250, "2.0.0 ok")


class ArgumentsIgnored(Smtp):
    def do_rset(self, arg: str) -> None:
        super().do_rset("")

    def do_data(self, arg: str) -> None:
        super().do_data("")

    def do_quit(self, arg: str) -> None:
        super().do_quit("")


class HelpInTwoReplies(Smtp):
    def do_help(self, arg: str) -> None:
        self.reply(214, "2.0.0 commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY QUIT")
        self.reply(214, "2.0.0 see RFC 5321")


class HelpWithMixedCodes(Smtp):
    def do_help(self, arg: str) -> None:
        self.conn.send("214-2.0.0 commands: EHLO HELO MAIL RCPT DATA\r\n211 2.0.0 end\r\n")


class Unknown502(Smtp):
    def command(self, line: bytes) -> None:
        word = line.split(b" ", 1)[0].decode("ascii", "replace").upper()
        if word.isalpha() and not hasattr(self, f"do_{word.lower()}"):
            self.reply(502, "5.5.2 Error: command not recognized")  # as Postfix says it
        else:
            super().command(line)


class NoVrfy(Smtp):
    do_vrfy = None  # type: ignore[assignment]


class VrfyAfterSyntaxCheck(Smtp):
    def do_vrfy(self, arg: str) -> None:
        if _PATH.fullmatch(f"<{arg}>"):
            self.reply(250, f"2.1.5 <{arg}>")  # only the syntax was checked
        else:
            self.reply(252, "2.5.0 cannot VRFY user")


class Relay554(Smtp):
    def is_relay(self, address: str) -> bool:
        if super().is_relay(address):
            raise Refusal(554, "5.7.1 Relay access denied")  # Postfix's default code
        return False


class RefusesLoneResentTo(Smtp):
    def check_message(self, message: bytes) -> None:
        head = message.split(b"\r\n\r\n", 1)[0]
        if re.search(rb"(?im)^Resent-To:", head) and not re.search(rb"(?im)^Resent-From:", head):
            raise Refusal(554, "5.6.0 Resent-To without Resent-From")


class UnstuffsOnlyDoubledDots(Smtp):
    def unstuff(self, line: bytes) -> bytes:
        return line[1:] if line.startswith(b"..") else line


class NoReturnPath(Smtp):
    def return_path(self) -> bytes:
        return b""


# scenario id -> (the server(s) breaking exactly its rule, phrase in the failure)
CASES: dict[str, tuple[Handler | dict[str, Handler], str]] = {
    "smtp.syntax.verbs-any-case": (smtp(UpperCaseVerbsOnly), "expected reply code 250, got '500"),
    "smtp.ehlo.mid-session-resets": (
        smtp(EhloKeepsTransaction),
        "expected reply code 503, got '250",
    ),
    "smtp.ehlo.refused-keeps-state": (
        smtp(RefusedEhloResets),
        "expected reply code 250 or 251, got '503",
    ),
    "smtp.sequence.anytime-commands-before-ehlo": (
        smtp(NeedsEhloFirst),
        "expected reply code 250, got '503",
    ),
    "smtp.mail.null-reverse-path": (smtp(NoNullSender), "expected reply code 250, got '553"),
    "smtp.sequence.nested-mail": (smtp(NestedMailRestarts), "expected reply code 503, got '250"),
    "smtp.mail.malformed-501": (smtp(MalformedMail553), "expected reply code 501, got '553"),
    "smtp.mail.unknown-parameter-555": (
        smtp(UnknownParametersIgnored),
        "expected reply code 555, got '250",
    ),
    "smtp.syntax.trailing-white-space": (
        smtp(TrailingSpaceIsArgument),
        "expected reply code 250, got '501",
    ),
    "smtp.mail.invalid-characters-refused": (
        smtp(EightBitAccepted),
        "expected reply code 500 or 501, got '250",
    ),
    "smtp.rcpt.source-route": (
        smtp(SourceRoutesRefused),
        "got '501 5.1.3 source routes are a syntax error here'",
    ),
    "smtp.ehlo.address-literals": (smtp(NoAddressLiterals), "expected reply code 250, got '501"),
    "smtp.rcpt.postmaster-any-case": (
        smtp(CaseSensitivePostmaster),
        "expected reply code 250 or 251, got '550",
    ),
    "smtp.limits.100-recipients": (
        smtp(FiftyRecipients),
        "expected reply code 250 or 251, got '452",
    ),
    "smtp.sequence.data-needs-recipients": (
        smtp(DataWithoutRecipients),
        "expected reply code 503 or 554, got '354",
    ),
    "smtp.data.one-final-reply": (smtp(TwoFinalReplies), "expected silence"),
    "smtp.data.bare-lf-is-not-a-line-end": (smtp(LfEndsDataLines), "expected silence"),
    "smtp.limits.1000-octet-text-lines": (
        smtp_and_imap(CountsTheStuffingDot),
        "expected reply code 250, got '554",
    ),
    "smtp.limits.64k-message": (smtp(SixtyKilobytes), "expected reply code 250, got '552"),
    "smtp.limits.512-octet-command-line": (
        smtp(ShortCommandLines),
        "expected reply code 250, got '500",
    ),
    "smtp.limits.overlong-command-one-reply": (smtp(LongLinesInPieces), "expected silence"),
    "smtp.rset.clears-transaction": (smtp(RsetKeepsSender), "expected reply code 503, got '250"),
    "smtp.syntax.no-arguments-for-data-rset-quit": (
        smtp(ArgumentsIgnored),
        "expected reply code 501, got '250",
    ),
    "smtp.reply.one-per-command": (smtp(HelpInTwoReplies), "expected reply code 250, got '214"),
    "smtp.reply.code-and-multiline-syntax": (
        smtp(HelpWithMixedCodes),
        "all lines of a multiline reply carry the same code",
    ),
    "smtp.command.unknown-500": (smtp(Unknown502), "expected reply code 500, got '502"),
    "smtp.command.mandatory-set": (smtp(NoVrfy), "got '500 5.5.2 command not recognized'"),
    "smtp.vrfy.no-false-verification": (
        smtp(VrfyAfterSyntaxCheck),
        "expected reply code 252 or 550 or 551 or 553, got '250",
    ),
    "smtp.rcpt.relay-refused-550": (smtp(Relay554), "expected reply code 550, got '554"),
    "smtp.data.header-defects-accepted": (
        smtp(RefusesLoneResentTo),
        "expected reply code 250, got '554",
    ),
    "smtp.data.dot-unstuffing": (
        smtp_and_imap(UnstuffsOnlyDoubledDots),
        "expected an untagged response matching",
    ),
    "smtp.trace.received-and-return-path": (
        smtp_and_imap(NoReturnPath),
        "expected an untagged response matching",
    ),
}


@pytest.mark.parametrize("scenario_id", sorted(CASES))
def test_fails_on_the_broken_rule(scenario_id, tmp_path, test_certs):
    handler, phrase = CASES[scenario_id]
    run_breaking(scenario_id, handler, phrase, tmp_path, test_certs)
