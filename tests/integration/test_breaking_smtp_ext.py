"""Breaking cases for the SMTP extension scenarios (STARTTLS, AUTH, submission, SIZE,
8BITMIME, PIPELINING, ENHANCEDSTATUSCODES, SMTPUTF8).

Each case runs :class:`Esmtp`, a scripted ESMTP session that follows the RFCs (MX
policy, or submission policy: AUTH only inside TLS, MAIL only after AUTH), with one
method overridden so that it breaks exactly the rule its scenario checks; the phrase
is what the scenario's failure message must say. Scenarios on the ``submissions``
service run against an implicit-TLS scripted server (``run_breaking`` gives every
service STARTTLS), see :func:`run_case`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
from breaking_support import SHIPPED, run_breaking
from scripted import ScriptConn, TestCerts

Handler = Callable[[ScriptConn], None]

DOMAIN = "example.test"
ACCOUNTS = {"alice": "alice-pw", "bob": "bob-pw"}
VERBS = frozenset(
    {"EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT"}
)
_PATH = r"<([^<>]*)>((?: [^ ]+)*)"
_MAILBOX = re.compile(r"([^@\s<>]+)@([^@\s<>]+)")


class Esmtp:
    """A well-behaved ESMTP session; subclasses below break one rule each."""

    size_limit = 10_240_000

    def __init__(self, conn: ScriptConn, *, submission: bool) -> None:
        self.conn = conn
        self.submission = submission
        self.helo: str | None = None
        self.esmtp = False
        self.user: str | None = None
        self.sender: str | None = None
        self.rcpts: list[str] = []
        self.utf8 = False
        self.declared_size: int | None = None

    # -- plumbing ----------------------------------------------------------------------

    def reply(self, code: int, enhanced: str | None, *texts: str) -> None:
        lines = texts or ("",)
        prefix = f"{enhanced} " if enhanced else ""
        last = len(lines) - 1
        self.conn.send(
            "".join(
                f"{code}{' ' if i == last else '-'}{prefix}{text}\r\n"
                for i, text in enumerate(lines)
            )
        )

    def run(self) -> None:
        self.reply(220, None, "toy.example.test ESMTP")
        while True:
            try:
                raw = self.conn.recv_line(timeout=10)
            except TimeoutError:
                return
            verb, _, arg = raw.decode("utf-8", "surrogateescape").partition(" ")
            verb = verb.upper()
            if verb not in VERBS:
                self.unknown(verb)
            elif getattr(self, f"do_{verb.lower()}")(arg) is False:
                return

    def unknown(self, verb: str) -> None:
        self.reply(500, "5.5.2", "command unrecognized")

    def reset(self) -> None:
        self.sender, self.rcpts, self.utf8, self.declared_size = None, [], False, None

    def keywords(self) -> list[str]:
        words = ["PIPELINING", f"SIZE {self.size_limit}", "8BITMIME", "SMTPUTF8"]
        words.append("ENHANCEDSTATUSCODES")
        if not self.conn.tls:
            words.append("STARTTLS")
        if self.submission and self.conn.tls:
            words.append("AUTH PLAIN LOGIN")
        return words

    # -- session -------------------------------------------------------------------------

    def do_ehlo(self, arg: str) -> None:
        if not arg:
            self.reply(501, "5.5.4", "EHLO needs a domain")
            return
        self.helo, self.esmtp = arg, True
        self.reset()
        self.reply(250, None, f"toy.example.test greets {arg}", *self.keywords())

    def do_helo(self, arg: str) -> None:
        if not arg:
            self.reply(501, "5.5.4", "HELO needs a domain")
            return
        self.helo, self.esmtp = arg, False
        self.reset()
        self.reply(250, None, "toy.example.test")

    def do_starttls(self, arg: str) -> bool | None:
        if arg:
            self.reply(501, "5.5.4", "STARTTLS takes no parameters")
        elif self.conn.tls:
            self.reply(503, "5.5.1", "TLS already active")
        else:
            self.reply(220, "2.0.0", "ready to start TLS")
            self.start_tls()
        return None

    def start_tls(self) -> None:
        self.conn.starttls(discard_pipelined=True)
        self.helo, self.esmtp, self.user = None, False, None
        self.reset()

    def do_rset(self, arg: str) -> None:
        self.reset()
        self.reply(250, "2.0.0", "OK")

    def do_noop(self, arg: str) -> None:
        self.reply(250, "2.0.0", "OK")

    def do_quit(self, arg: str) -> bool:
        self.reply(221, "2.0.0", "bye")
        self.conn.close()
        return False

    # -- AUTH (RFC 4954) -------------------------------------------------------------------

    def auth_refusal(self) -> tuple[int, str, str] | None:
        if not self.submission:
            return 502, "5.5.1", "AUTH is not offered here"
        if self.helo is None or self.user is not None or self.sender is not None:
            return 503, "5.5.1", "bad sequence of commands"
        if not self.conn.tls:
            return 538, "5.7.11", "encryption required for requested authentication mechanism"
        return None

    def ask(self, challenge: str) -> str | None:
        """A 334 challenge; the client's answer, or None if it cancelled (answered 501)."""
        self.reply(334, None, challenge)
        answer = self.conn.recv_line(timeout=10).decode("utf-8", "replace")
        if answer == "*":
            self.reply(501, "5.7.0", "authentication cancelled")
            return None
        return answer

    def b64(self, text: str) -> bytes:
        return base64.b64decode(text, validate=True)

    def check(self, user: str, password: str) -> bool:
        return ACCOUNTS.get(user) == password

    def do_auth(self, arg: str) -> None:
        refusal = self.auth_refusal()
        if refusal is not None:
            self.reply(*refusal)
            return
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        if mech not in ("PLAIN", "LOGIN"):
            self.reply(504, "5.5.4", "unrecognized authentication mechanism")
            return
        try:
            if mech == "PLAIN":
                resp = initial or self.ask("")
                if resp is None:
                    return
                parts = self.b64("" if resp == "=" else resp).decode().split("\0")
                user, password = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
            else:
                user_b64 = initial or self.ask("VXNlcm5hbWU6")
                if user_b64 is None:
                    return
                pw_b64 = self.ask("UGFzc3dvcmQ6")
                if pw_b64 is None:
                    return
                user, password = self.b64(user_b64).decode(), self.b64(pw_b64).decode()
        except (binascii.Error, UnicodeDecodeError):
            self.reply(501, "5.5.2", "cannot decode the response")
            return
        self.finish_auth(user, password)

    def finish_auth(self, user: str, password: str) -> None:
        if self.check(user, password):
            self.user = user
            self.reply(235, "2.7.0", "authentication successful")
        else:
            self.reply(535, "5.7.8", "authentication credentials invalid")

    # -- the transaction ---------------------------------------------------------------------

    def params(self, text: str) -> dict[str, str | None] | None:
        out: dict[str, str | None] = {}
        for word in text.split():
            key, eq, value = word.partition("=")
            if key.upper() in out:
                return None
            out[key.upper()] = value if eq else None
        return out

    def mail_refusal(self, address: str, params: dict[str, str | None]) -> tuple[int, str, str]:
        """Why MAIL is refused, or (250, ...) when it is not."""
        for key, value in params.items():
            refusal = self.mail_param(key, value)
            if refusal is not None:
                return refusal
        if not address.isascii() and "SMTPUTF8" not in params:
            if not self.esmtp:
                return 501, "5.5.2", "non-ASCII characters in the address"
            return 550, "5.6.7", "non-ASCII address needs SMTPUTF8"
        if self.submission and address and self.user != address.partition("@")[0]:
            return 553, "5.7.1", "sender is not yours to use"
        return 250, "2.1.0", "sender OK"

    def mail_param(self, key: str, value: str | None) -> tuple[int, str, str] | None:
        if not self.esmtp:
            return 555, "5.5.4", f"{key} not recognized"
        if key == "SIZE":
            if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                return 501, "5.5.4", "bad SIZE value"
            self.declared_size = int(value)
            if int(value) > self.size_limit:
                return 552, "5.3.4", "message size exceeds fixed maximum message size"
            return None
        if key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                return 501, "5.5.4", "BODY must be 7BIT or 8BITMIME"
            return None
        if key == "SMTPUTF8":
            if value is not None:
                return 501, "5.5.4", "SMTPUTF8 takes no value"
            self.utf8 = True
            return None
        return 555, "5.5.4", f"{key} not recognized"

    def do_mail(self, arg: str) -> None:
        if self.helo is None or self.sender is not None:
            self.reply(503, "5.5.1", "bad sequence of commands")
            return
        if self.submission and self.user is None:
            self.reply(530, "5.7.0", "authentication required")
            return
        m = re.fullmatch(f"FROM:{_PATH}", arg, re.IGNORECASE)
        params = self.params(m.group(2)) if m else None
        if m is None or params is None:
            self.reply(501, "5.5.4", "syntax: MAIL FROM:<address> [parameters]")
            return
        address = m.group(1)
        if address and not _MAILBOX.fullmatch(address):
            self.reply(501, "5.1.7", "bad sender address syntax")
            return
        self.utf8, self.declared_size = False, None
        code, enhanced, text = self.mail_refusal(address, params)
        if code == 250:
            self.sender, self.rcpts = address, []
        else:
            self.utf8, self.declared_size = False, None
        self.reply(code, enhanced, text)

    def do_rcpt(self, arg: str) -> None:
        if self.sender is None:
            self.reply(503, "5.5.1", "need MAIL before RCPT")
            return
        m = re.fullmatch(f"TO:{_PATH}", arg, re.IGNORECASE)
        box = _MAILBOX.fullmatch(m.group(1)) if m else None
        if m is None or box is None:
            self.reply(501, "5.1.3", "bad recipient address syntax")
            return
        local, domain = box.group(1), box.group(2).lower()
        if not box.group(0).isascii() and not self.utf8:
            self.reply(553, "5.6.7", "non-ASCII address needs SMTPUTF8")
        elif domain == DOMAIN and local not in ACCOUNTS:
            self.reply(550, "5.1.1", "no such mailbox")
        elif domain != DOMAIN and self.user is None:
            self.reply(550, "5.7.1", "relaying denied")
        else:
            self.rcpts.append(box.group(0))
            self.reply(250, "2.1.5", "recipient OK")

    def do_data(self, arg: str) -> None:
        if arg:
            self.reply(501, "5.5.4", "DATA takes no parameters")
            return
        if self.sender is None or not self.rcpts:
            self.reply(503, "5.5.1", "need MAIL and RCPT before DATA")
            return
        self.reply(354, None, "end data with <CR><LF>.<CR><LF>")
        self.message_received(self.read_message())

    def read_message(self) -> bytes:
        return self.conn.recv_until(rb"\r\n\.\r\n", timeout=10)

    def message_received(self, content: bytes) -> None:
        self.reset()
        self.reply(250, "2.0.0", "queued")


def serve(session: type[Esmtp] = Esmtp, *, submission: bool = False) -> Handler:
    def handle(conn: ScriptConn) -> None:
        session(conn, submission=submission).run()

    return handle


class Cleartext:
    """A handler for the ``submissions`` service that speaks cleartext, not implicit TLS."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def __call__(self, conn: ScriptConn) -> None:
        self.handler(conn)


# -- STARTTLS (RFC 3207) ------------------------------------------------------------------


class NoHandshakeAfter220(Esmtp):
    def do_starttls(self, arg: str) -> bool | None:
        if self.helo != "harness.example":  # the harness's capability probe gets its TLS
            return super().do_starttls(arg)
        self.reply(220, "2.0.0", "ready to start TLS")
        self.conn.close()  # ...and no handshake
        return False


class StarttlsIgnoresArgument(Esmtp):
    def do_starttls(self, arg: str) -> bool | None:
        return super().do_starttls("")


class StarttlsAgainInsideTls(Esmtp):
    def do_starttls(self, arg: str) -> bool | None:
        if not self.conn.tls:
            return super().do_starttls(arg)
        self.reply(220, "2.0.0", "ready to start TLS")
        return None


class MailNeedsTls(Esmtp):
    def do_mail(self, arg: str) -> None:
        if not self.conn.tls:
            self.reply(530, "5.7.0", "Must issue a STARTTLS command first")
        else:
            super().do_mail(arg)


# -- AUTH (RFC 4954, RFC 4616) -----------------------------------------------------------


class AuthAdvertisedInCleartext(Esmtp):
    def keywords(self) -> list[str]:
        words = super().keywords()
        return words if self.conn.tls else [*words, "AUTH PLAIN LOGIN"]


class AuthAcceptedInCleartext(Esmtp):
    def auth_refusal(self) -> tuple[int, str, str] | None:
        if not self.conn.tls and self.helo is not None:
            return None
        return super().auth_refusal()


class NoPlainAfterTls(Esmtp):
    def keywords(self) -> list[str]:
        return [("AUTH LOGIN" if w.startswith("AUTH ") else w) for w in super().keywords()]


class AuthForgotten(Esmtp):
    def finish_auth(self, user: str, password: str) -> None:
        super().finish_auth(user, password)
        self.user = None


class ChallengeWithText(Esmtp):
    def ask(self, challenge: str) -> str | None:
        return super().ask(challenge or "Go ahead")


class LoginRefusesGoodCredentials(Esmtp):
    def check(self, user: str, password: str) -> bool:
        # the LOGIN answers are taken in the wrong order
        return ACCOUNTS.get(password) == user


class AnyPassword(Esmtp):
    def check(self, user: str, password: str) -> bool:
        return user in ACCOUNTS


class AuthAgainAllowed(Esmtp):
    def auth_refusal(self) -> tuple[int, str, str] | None:
        self.user = None
        return super().auth_refusal()


class UnknownMechanismIs501(Esmtp):
    def do_auth(self, arg: str) -> None:
        if arg.partition(" ")[0].upper() not in ("PLAIN", "LOGIN"):
            self.reply(501, "5.5.4", "unsupported mechanism")
        else:
            super().do_auth(arg)


class LenientBase64(Esmtp):
    def b64(self, text: str) -> bytes:
        return base64.b64decode(text.encode(), validate=False)


class NullSenderRefused(Esmtp):
    def mail_refusal(self, address: str, params: dict[str, str | None]) -> tuple[int, str, str]:
        if not address:
            return 553, "5.7.1", "a sender address is required"
        return super().mail_refusal(address, params)


class StarttlsOnImplicitPort(Esmtp):
    def keywords(self) -> list[str]:
        words = super().keywords()
        return words if "STARTTLS" in words else [*words, "STARTTLS"]


# -- SIZE (RFC 1870), 8BITMIME (RFC 6152) -------------------------------------------------


class SizeNotChecked(Esmtp):
    def mail_param(self, key: str, value: str | None) -> tuple[int, str, str] | None:
        return None if key == "SIZE" else super().mail_param(key, value)


class SizeDigitsOnlyWhereFound(Esmtp):
    def mail_param(self, key: str, value: str | None) -> tuple[int, str, str] | None:
        if key == "SIZE":
            self.declared_size = int(re.sub(r"\D", "", value or "") or 0) % 10**20
            return None
        return super().mail_param(key, value)


class SizeEndsData(Esmtp):
    def read_message(self) -> bytes:
        if self.declared_size is None:
            return super().read_message()
        return self.conn.recv_exact(self.declared_size, timeout=10)


class Refuses8bitContent(Esmtp):
    def message_received(self, content: bytes) -> None:
        if content.isascii():
            super().message_received(content)
        else:
            self.reset()
            self.reply(554, "5.6.0", "8-bit content refused")


class AnyBody(Esmtp):
    def mail_param(self, key: str, value: str | None) -> tuple[int, str, str] | None:
        return None if key == "BODY" else super().mail_param(key, value)


# -- PIPELINING (RFC 2920) ----------------------------------------------------------------


class TwoRepliesToRcpt(Esmtp):
    def do_rcpt(self, arg: str) -> None:
        super().do_rcpt(arg)
        self.reply(250, "2.1.5", "recipient noted")


class BadRcptSwallowsNextCommand(Esmtp):
    def do_rcpt(self, arg: str) -> None:
        before = len(self.rcpts)
        super().do_rcpt(arg)
        if len(self.rcpts) == before:
            self.conn.recv_line(timeout=10)  # lost: never answered


class DataWithoutRecipient(Esmtp):
    def do_data(self, arg: str) -> None:
        if self.sender is not None and not self.rcpts:
            self.rcpts.append(f"nobody@{DOMAIN}")
        super().do_data(arg)


# -- ENHANCEDSTATUSCODES (RFC 2034, RFC 3463) ----------------------------------------------


class NoCodeOnMailReply(Esmtp):
    def reply(self, code: int, enhanced: str | None, *texts: str) -> None:
        super().reply(code, None if enhanced == "2.1.0" else enhanced, *texts)


class CodeOnFirstLineOnly(Esmtp):
    def do_rcpt(self, arg: str) -> None:
        if self.sender is None:
            self.conn.send("503-5.5.1 need MAIL\r\n503 before RCPT\r\n")
        else:
            super().do_rcpt(arg)


class CodesOnlyAfterEhlo(Esmtp):
    def reply(self, code: int, enhanced: str | None, *texts: str) -> None:
        super().reply(code, enhanced if self.esmtp else None, *texts)


# -- SMTPUTF8 (RFC 6531) ----------------------------------------------------------------


class AsciiAddressesOnly(Esmtp):
    def mail_refusal(self, address: str, params: dict[str, str | None]) -> tuple[int, str, str]:
        if not address.isascii():
            return 553, "5.6.7", "non-ASCII addresses are not accepted"
        return super().mail_refusal(address, params)


class Utf8WithoutParameter(Esmtp):
    def mail_refusal(self, address: str, params: dict[str, str | None]) -> tuple[int, str, str]:
        self.utf8 = True
        return super().mail_refusal(address, {**params, "SMTPUTF8": None})


class Utf8ValueIgnored(Esmtp):
    def mail_param(self, key: str, value: str | None) -> tuple[int, str, str] | None:
        return super().mail_param(key, None if key == "SMTPUTF8" else value)


def _sub(session: type[Esmtp]) -> Handler:
    return serve(session, submission=True)


CASES: dict[str, tuple[Handler | dict[str, Handler], str]] = {
    # STARTTLS
    "smtp.starttls.220-then-tls": (serve(NoHandshakeAfter220), "TLS handshake failed"),
    "smtp.starttls.argument-501": (serve(StarttlsIgnoresArgument), "expected reply code 501"),
    "smtp.starttls.refused-inside-tls": (
        serve(StarttlsAgainInsideTls),
        "expected reply code 454 or 500 or 502 or 503 or 504 or 554, got '220",
    ),
    "smtp.starttls.mx-accepts-cleartext-mail": (
        serve(MailNeedsTls),
        "expected reply code 250, got '530",
    ),
    # AUTH
    "smtp.auth.no-plaintext-mechanism-in-cleartext": (
        _sub(AuthAdvertisedInCleartext),
        "expected EHLO keyword(s) AUTH=PLAIN, AUTH=LOGIN to be absent",
    ),
    "smtp.auth.plaintext-mechanism-refused-in-cleartext": (
        _sub(AuthAcceptedInCleartext),
        "got '535 5.7.8",
    ),
    "smtp.auth.plain-offered-after-tls": (
        _sub(NoPlainAfterTls),
        "expected EHLO keyword(s) AUTH=PLAIN, not advertised",
    ),
    "smtp.auth.plain-initial-response": (_sub(AuthForgotten), "got '530 5.7.0"),
    "smtp.auth.plain-empty-challenge": (_sub(ChallengeWithText), "reply line 1: expected /^$/"),
    "smtp.auth.login": (_sub(LoginRefusesGoodCredentials), "expected reply code 235"),
    "smtp.auth.bad-credentials-535": (_sub(AnyPassword), "expected reply code 535, got '235"),
    "smtp.auth.second-auth-503": (_sub(AuthAgainAllowed), "expected reply code 503, got '235"),
    "smtp.auth.unknown-mechanism-504": (
        _sub(UnknownMechanismIs501),
        "expected reply code 504, got '501",
    ),
    "smtp.auth.invalid-base64-501": (_sub(LenientBase64), "expected reply code 501, got '535"),
    # submission, submissions
    "smtp.submission.null-sender-accepted": (
        _sub(NullSenderRefused),
        "expected reply code 250, got '553",
    ),
    "smtp.submissions.implicit-tls-greeting": (
        Cleartext(serve(submission=True)),
        "TLS handshake failed",
    ),
    "smtp.submissions.no-starttls": (
        _sub(StarttlsOnImplicitPort),
        "expected EHLO keyword(s) STARTTLS to be absent",
    ),
    # SIZE
    "smtp.size.over-limit": (serve(SizeNotChecked), "expected reply code 452 or 552, got '250"),
    "smtp.size.bad-value": (
        serve(SizeDigitsOnlyWhereFound),
        "expected reply code 501 or 555, got '250",
    ),
    "smtp.size.not-end-of-data": (serve(SizeEndsData), "expected silence"),
    # 8BITMIME
    "smtp.8bitmime.8bit-body-accepted": (
        serve(Refuses8bitContent),
        "expected reply code 250, got '554",
    ),
    "smtp.8bitmime.unknown-body-refused": (
        serve(AnyBody),
        "expected reply code 501 or 504 or 555, got '250",
    ),
    # PIPELINING
    "smtp.pipelining.group-in-order": (serve(TwoRepliesToRcpt), "expected reply code 354"),
    "smtp.pipelining.bad-rcpt-in-group": (
        serve(BadRcptSwallowsNextCommand),
        "expected reply code 250 or 251, got '354",
    ),
    "smtp.pipelining.data-without-recipient": (
        serve(DataWithoutRecipient),
        "expected reply code 503 or 554, got '354",
    ),
    # ENHANCEDSTATUSCODES
    "smtp.enhanced.transaction-codes": (serve(NoCodeOnMailReply), "expected text matching"),
    "smtp.enhanced.error-codes": (serve(CodeOnFirstLineOnly), "expected text matching"),
    "smtp.enhanced.after-helo": (serve(CodesOnlyAfterEhlo), "expected text matching"),
    # SMTPUTF8
    "smtp.smtputf8.utf8-sender-accepted": (
        serve(AsciiAddressesOnly),
        "expected reply code 250, got '553",
    ),
    "smtp.smtputf8.utf8-needs-param": (
        serve(Utf8WithoutParameter),
        "expected reply code 501 or 550 or 553, got '250",
    ),
    "smtp.smtputf8.param-takes-no-value": (
        serve(Utf8ValueIgnored),
        "expected reply code 501 or 555, got '250",
    ),
}


def run_case(
    scenario_id: str,
    handler: Handler | dict[str, Handler],
    phrase: str,
    tmp_path: Path,
    certs: TestCerts,
) -> None:
    """``run_breaking``, except that the ``submissions`` service is implicit TLS.

    A :class:`Cleartext` handler is served without TLS while the target still says
    ``implicit``: the server that forgot to start TLS on port 465.
    """
    if SHIPPED[scenario_id].services() != {"submissions"}:
        run_breaking(scenario_id, handler, phrase, tmp_path, certs)
        return
    tls: Literal["none", "implicit"] = "none" if isinstance(handler, Cleartext) else "implicit"
    run_breaking(
        scenario_id,
        handler,
        phrase,
        tmp_path,
        certs,
        served={"submissions": tls},
        declared={"submissions": "implicit"},
    )


@pytest.mark.parametrize("scenario_id", sorted(CASES))
def test_fails_on_the_broken_rule(scenario_id, tmp_path, test_certs):
    handler, phrase = CASES[scenario_id]
    run_case(scenario_id, handler, phrase, tmp_path, test_certs)
