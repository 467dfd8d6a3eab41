"""The protocols the fuzzer speaks: each plugs its model, strategies and reader in here.

Adding POP3 or IMAP means a ``pop3_model.py`` + ``pop3_strategies.py`` pair and one
entry below; the oracle, engine and scenario writer do not change.
"""

from __future__ import annotations

from typing import Any

from conformance.fuzz.dialogue import Expectation, ProtocolFuzz
from conformance.fuzz.smtp_model import P2, P5, T4, SmtpModel
from conformance.fuzz.smtp_strategies import VERBS, smtp_commands
from conformance.wire.smtp import Reply, SmtpReplyReader

__all__ = ["PROTOCOLS", "smtp_expect_yaml"]


def _smtp_describe(reply: Reply) -> str:
    first = reply.lines[0] if reply.lines else ""
    more = f" (+{len(reply.lines) - 1} lines)" if len(reply.lines) > 1 else ""
    return f"{reply.code} {first[:80]}{more}".rstrip()


def smtp_expect_yaml(exp: Expectation) -> dict[str, Any]:
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
        new_model=SmtpModel,
        new_reader=lambda: SmtpReplyReader(strict=True),
        code_of=lambda reply: reply.code,
        describe=_smtp_describe,
        expect_yaml=smtp_expect_yaml,
        verbs=VERBS,
    )


PROTOCOLS: dict[str, ProtocolFuzz] = {"smtp": _smtp()}
