"""The protocols the fuzzer speaks: each plugs its model, strategies and reader in here.

A protocol is a ``*_model.py`` + ``*_strategies.py`` pair and one :class:`ProtocolFuzz`
below: how its answers are read (SMTP and POP3: one reply; IMAP: the untagged
responses up to the command's tagged one), how an answer is classed for the model,
how its login prefix goes, and how an expectation is written as a scenario ``expect``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

from conformance.fuzz.dialogue import AnswerClosed, Expectation, Login, ProtocolFuzz, Send
from conformance.fuzz.imap_model import ImapAnswer, ImapModel
from conformance.fuzz.imap_strategies import VERBS as IMAP_VERBS
from conformance.fuzz.imap_strategies import (
    imap_commands,
    imap_number,
    imap_state_steps,
    imap_steps,
)
from conformance.fuzz.pop3_model import Pop3Model
from conformance.fuzz.pop3_strategies import VERBS as POP3_VERBS
from conformance.fuzz.pop3_strategies import pop3_commands, pop3_state_steps, pop3_steps
from conformance.fuzz.smtp_model import P2, P5, T4, SmtpModel
from conformance.fuzz.smtp_strategies import VERBS, smtp_commands, smtp_state_steps, smtp_steps
from conformance.wire.imap import (
    ContinuationRequest,
    ImapResponseReader,
    TaggedResponse,
    UntaggedResponse,
)
from conformance.wire.pop3 import Pop3Continuation, Pop3Response, Pop3ResponseReader
from conformance.wire.smtp import Reply, SmtpReplyReader

__all__ = ["PROTOCOLS", "imap_expect_yaml", "pop3_expect_yaml", "smtp_expect_yaml"]

_LITERAL = re.compile(rb"\{[0-9]+\}\r\n\Z")


def _smtp_describe(reply: Reply) -> str:
    first = reply.lines[0] if reply.lines else ""
    more = f" (+{len(reply.lines) - 1} lines)" if len(reply.lines) > 1 else ""
    return f"{reply.code} {first[:80]}{more}".rstrip()


def smtp_expect_yaml(exp: Expectation, send: Send | None = None) -> dict[str, Any]:
    """The scenario ``expect`` that accepts exactly the codes the model allowed."""
    out: dict[str, Any] = {}
    codes = exp.codes
    whole = [c for c, full in ((2, P2), (4, T4), (5, P5)) if full <= codes]
    if set(codes) == set().union(*(f for f in (P2, T4, P5) if f <= codes)) and len(whole) == 1:
        out["class"] = f"{whole[0]}xx"
    elif not codes >= (P2 | T4 | P5):
        out["code"] = sorted(codes)
    if exp.may_close:
        out["or_closed"] = True
    return out


def _smtp() -> ProtocolFuzz:
    return ProtocolFuzz(
        name="smtp",
        default_service="mx",
        commands=smtp_commands,
        steps=smtp_steps,
        state_steps=smtp_state_steps,
        new_model=SmtpModel,
        new_reader=lambda: SmtpReplyReader(strict=True),
        code_of=lambda reply: reply.code,
        describe=_smtp_describe,
        expect_yaml=smtp_expect_yaml,
        verbs=VERBS,
        login_sends=_smtp_login,
        login_steps=_smtp_login_steps,
        class_of=_smtp_class,
        class_members=_smtp_class_members,
    )


def _smtp_class(code: Any) -> str:
    return f"{code // 100}xx" if isinstance(code, int) else str(code)


def _smtp_class_members(code: Any) -> frozenset[Any]:
    if isinstance(code, int):
        for members in (P2, T4, P5):
            if code in members:
                return members
    return frozenset({code})


# -- POP3 ------------------------------------------------------------------------------

_POP3_MULTI_ALWAYS = {"CAPA", "RETR", "TOP"}  # as conformance.scenario.sessions infers it
_POP3_MULTI_NO_ARG = {"LIST", "UIDL"}


def _pop3_prepare(reader: Any, send: Send) -> None:
    if send.kind == "sasl":  # an answer to a challenge: the AUTH's shape is still queued
        return
    words = send.wire.split()
    verb = words[0].upper().decode("ascii", "replace") if words else ""
    multi = verb in _POP3_MULTI_ALWAYS or (verb in _POP3_MULTI_NO_ARG and len(words) == 1)
    reader.expect(multiline=multi)


def _pop3_code(resp: Pop3Response | Pop3Continuation) -> str:
    if isinstance(resp, Pop3Continuation):
        return "+"
    return "+OK" if resp.ok else "-ERR"


def _pop3_describe(resp: Pop3Response | Pop3Continuation) -> str:
    if isinstance(resp, Pop3Continuation):
        return f"+ {resp.text[:80]}".rstrip()
    more = f" (+{len(resp.lines)} body lines)" if resp.lines is not None else ""
    code = f"[{resp.code}] " if resp.code else ""
    return f"{_pop3_code(resp)} {code}{resp.text[:80]}{more}".rstrip()


def pop3_expect_yaml(exp: Expectation, send: Send | None = None) -> dict[str, Any]:
    """``status: ok`` / ``err`` when the model allowed one; nothing when it allowed both."""
    out: dict[str, Any] = {}
    if exp.codes == {"+OK"}:
        out["status"] = "ok"
    elif exp.codes == {"-ERR"}:
        out["status"] = "err"
    if exp.may_close:
        out["or_closed"] = True
    return out


def _line(verb: str, text: str, tag: str = "") -> Send:
    return Send(verb=verb, wire=text.encode("utf-8") + b"\r\n", tag=tag)


def _pop3_login(login: Login) -> list[Send]:
    sends = [_line("STARTTLS", "STLS")] if login.starttls else []
    if login.account is not None:
        acc = login.account
        sends += [_line("USER", f"USER {acc.username}"), _line("PASS", f"PASS {acc.password}")]
    return sends


def _login_steps(mechanism: str) -> Callable[[Login], list[dict[str, Any]]]:
    def steps(login: Login) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"starttls": True}] if login.starttls else []
        if login.account is not None:
            out.append({"auth": {"mechanism": mechanism, "account": login.account.name}})
        return out

    return steps


def _pop3() -> ProtocolFuzz:
    return ProtocolFuzz(
        name="pop3",
        default_service="pop3",
        commands=pop3_commands,
        steps=pop3_steps,
        state_steps=pop3_state_steps,
        new_model=Pop3Model,
        new_reader=lambda: Pop3ResponseReader(strict=True),
        code_of=_pop3_code,
        describe=_pop3_describe,
        expect_yaml=pop3_expect_yaml,
        verbs=POP3_VERBS,
        prepare=_pop3_prepare,
        greeting_ok=lambda code: code == "+OK",
        final=frozenset(),
        closing=frozenset(),
        login_sends=_pop3_login,
        login_steps=_login_steps("native"),
        succeeded=lambda code: code == "+OK",
    )


# -- IMAP ------------------------------------------------------------------------------


def _imap_read(next_event: Callable[[], Any], send: Send) -> ImapAnswer:
    """Read up to ``send``'s tagged response (or a continuation, or BYE and the close)."""
    untagged: list[UntaggedResponse] = []
    while True:
        try:
            event = next_event()
        except AnswerClosed:
            if any(u.keyword == "BYE" for u in untagged):
                return ImapAnswer(code="BYE", untagged=tuple(untagged), text="* BYE, closed")
            if untagged:  # a close after some data: judged as a close
                raise
            raise
        if isinstance(event, UntaggedResponse):
            untagged.append(event)
            if send.verb == "(greeting)":
                return ImapAnswer(code=event.keyword, untagged=(event,), text=event.line[:80])
            if not send.tag and send.kind == "line" and event.keyword == "BAD":
                return ImapAnswer(code="BAD", untagged=tuple(untagged), text=event.line[:80])
            continue
        if isinstance(event, ContinuationRequest):
            return ImapAnswer(code="+", untagged=tuple(untagged), text=f"+ {event.text[:60]}")
        assert isinstance(event, TaggedResponse)
        text = event.raw.decode("utf-8", "replace").rstrip("\r\n")[:100]
        if send.tag and event.tag != send.tag:
            return ImapAnswer(code=f"tag {event.tag}", untagged=tuple(untagged), text=text)
        return ImapAnswer(code=event.status, untagged=tuple(untagged), tagged=event, text=text)


def _imap_describe(answer: ImapAnswer) -> str:
    more = f" (+{len(answer.untagged)} untagged)" if answer.untagged else ""
    return f"{answer.text}{more}"


def imap_expect_yaml(exp: Expectation, send: Send | None = None) -> dict[str, Any]:
    """``tagged:`` when the model allowed one status, ``continuation: true`` for a line
    ending in a literal marker, ``untagged: ['^\\* BAD']`` for a line without a tag."""
    out: dict[str, Any] = {}
    statuses = exp.codes - {"BYE", "+"}
    if send is not None and send.verb == "(greeting)":
        return {"or_closed": True} if exp.may_close and "OK" not in exp.codes else {}
    if send is not None and "+" in exp.codes and send.kind == "line":
        if _LITERAL.search(send.wire) and not send.terminal:
            out["continuation"] = True
    elif send is not None and not send.tag:
        out["untagged"] = [r"^\* BAD"]
    elif len(statuses) == 1:
        out["tagged"] = next(iter(statuses))
    if send is not None and send.tag:
        out["tag"] = send.tag
    if exp.may_close:  # not for BYE alone: or_closed would also pass a close without it
        out["or_closed"] = True
    return out


def _imap_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _imap_login(login: Login) -> list[Send]:
    sends = [_line("STARTTLS", "h1 STARTTLS", "h1")] if login.starttls else []
    if login.account is not None:
        acc = login.account
        line = f"h2 LOGIN {_imap_quote(acc.username)} {_imap_quote(acc.password)}"
        sends.append(_line("LOGIN", line, "h2"))
    return sends


def _imap() -> ProtocolFuzz:
    return ProtocolFuzz(
        name="imap",
        default_service="imap",
        commands=imap_commands,
        steps=imap_steps,
        state_steps=imap_state_steps,
        number=imap_number,
        new_model=ImapModel,
        new_reader=lambda: ImapResponseReader(strict=True),
        code_of=lambda answer: answer.code,
        describe=_imap_describe,
        expect_yaml=imap_expect_yaml,
        verbs=IMAP_VERBS,
        read_answer=_imap_read,
        greeting_ok=lambda code: code in ("OK", "PREAUTH"),
        final=frozenset({"BYE"}),
        closing=frozenset(),
        login_sends=_imap_login,
        login_steps=_login_steps("native"),
        succeeded=lambda code: code == "OK",
    )


# -- SMTP on a submission service: STARTTLS and AUTH PLAIN -----------------------------


def _smtp_login(login: Login) -> list[Send]:
    sends = [_line("EHLO", "EHLO fuzz.test")]
    if login.starttls:
        sends += [_line("STARTTLS", "STARTTLS"), _line("EHLO", "EHLO fuzz.test")]
    if login.account is not None:
        acc = login.account
        token = base64.b64encode(f"\0{acc.username}\0{acc.password}".encode()).decode()
        sends.append(_line("AUTH", f"AUTH PLAIN {token}"))
    return sends


def _smtp_login_steps(login: Login) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"send": "EHLO fuzz.test", "expect": {"code": 250}}]
    if login.starttls:
        out += [{"starttls": True}, {"send": "EHLO fuzz.test", "expect": {"code": 250}}]
    if login.account is not None:
        out.append({"auth": {"mechanism": "PLAIN", "account": login.account.name}})
    return out


PROTOCOLS: dict[str, ProtocolFuzz] = {"smtp": _smtp(), "pop3": _pop3(), "imap": _imap()}
