"""``{name}`` variables in scenario strings.

A variable is ``{`` + a dotted identifier + ``}``: ``{account.alice.address}``,
``{domain}``, ``{uidvalidity}``. Anything else in braces stays literal, so
IMAP literal markers like ``{5}`` and ``{12+}`` need no escaping; ``{{`` and
``}}`` write a literal brace where it would otherwise start a variable.

Names come from these places:

- the target: ``domain``, ``host``, ``account.NAME.address``,
  ``account.NAME.username``, ``account.NAME.password``, and ``sink.domain``
  (the domain routed to the harness's outbound sink) in scenarios that say
  ``sink: true``;
- the run: ``run``, a token of 10 lowercase hex digits new to each execution
  of a scenario, for unique addresses, subjects and Message-IDs;
- ``capture:`` in an earlier step of the same scenario;
- nothing else; an unknown name is a load error, never an empty string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ACCOUNT_FIELDS", "Template", "TemplateError", "VarRef", "parse_template"]

ACCOUNT_FIELDS = ("address", "username", "password")

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\}")


class TemplateError(ValueError):
    """A variable could not be resolved; ``offset`` is its index in the string."""

    def __init__(self, message: str, offset: int = 0):
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True)
class VarRef:
    name: str
    offset: int  # index of the "{" in the source string


@dataclass(frozen=True)
class Template:
    """A string with variable references, rendered against a value table."""

    source: str
    parts: tuple[str | VarRef, ...]

    @property
    def variables(self) -> tuple[VarRef, ...]:
        return tuple(p for p in self.parts if isinstance(p, VarRef))

    def render(self, values: Mapping[str, str]) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, VarRef):
                try:
                    out.append(values[part.name])
                except KeyError:
                    raise TemplateError(f"unknown variable {{{part.name}}}", part.offset) from None
            else:
                out.append(part)
        return "".join(out)

    def render_regex(self, values: Mapping[str, str]) -> re.Pattern[str]:
        """Compile as a regex in which variable values match literally."""
        escaped = {k: re.escape(v) for k, v in values.items()}
        return re.compile(self.render(escaped))


def parse_template(source: str) -> Template:
    parts: list[str | VarRef] = []
    literal: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(source):
        literal.append(source[pos : m.start()])
        token = m.group(0)
        if token == "{{":
            literal.append("{")
        elif token == "}}":
            literal.append("}")
        else:
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(VarRef(m.group(1), m.start()))
        pos = m.end()
    literal.append(source[pos:])
    text = "".join(literal)
    if text:
        parts.append(text)
    return Template(source, tuple(parts))


def is_known(
    name: str, captured: set[str], accounts: set[str] | None, *, sink: bool = False
) -> str | None:
    """Return None if ``name`` may be used here, else why not (one phrase).

    ``accounts`` is None when no target is known yet (``mailharness validate``):
    then any account name is accepted and checked again against the target.
    ``sink``: the scenario says ``sink: true``, so ``{sink.domain}`` is defined.
    """
    if name in captured or name in ("domain", "host", "run"):
        return None
    if name == "sink.domain":
        if sink:
            return None
        return (
            "{sink.domain} needs 'sink: true' at the top of the scenario "
            "(it then runs only against targets with an outbound sink)"
        )
    head, _, rest = name.partition(".")
    if head == "account":
        account, _, fld = rest.partition(".")
        if not account or fld not in ACCOUNT_FIELDS:
            return (
                f"unknown variable {{{name}}}: write {{account.NAME.FIELD}} with FIELD one of "
                + ", ".join(ACCOUNT_FIELDS)
            )
        if accounts is not None and account not in accounts:
            known = ", ".join(sorted(accounts)) or "none"
            return (
                f"unknown variable {{{name}}}: the target has no account {account!r} "
                f"(it has: {known})"
            )
        return None
    hint = f"; captured so far: {', '.join(sorted(captured))}" if captured else ""
    return (
        f"unknown variable {{{name}}}: not captured by an earlier step and not a target "
        f"variable (domain, host, account.NAME.address|username|password, sink.domain) "
        f"or {{run}}{hint}"
    )
