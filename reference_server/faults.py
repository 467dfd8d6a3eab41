"""Fault injection: configured delays, 4xx/5xx answers and dropped connections.

For people testing their senders (does the client retry a 451? survive a
dropped connection?) and for our own queue and load tests, in the manner of
Postfix's smtp-sink and Mailpit's chaos mode. Off unless configured; each
rule has its own seeded random generator so a run can be repeated exactly.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from conformance.wire.smtp import Reply

from .config import FaultRule

__all__ = ["Faults"]


class _Rule:
    def __init__(self, spec: FaultRule) -> None:
        self.command = spec.command.upper()
        self.delay = spec.delay
        self.reply_rate = spec.reply_rate
        self.drop_rate = spec.drop_rate
        self.random = random.Random(spec.seed)
        self.reply: Reply | None = None
        if spec.reply:
            code, _, rest = spec.reply.partition(" ")
            enhanced, _, text = rest.partition(" ")
            if not (enhanced[:1].isdigit() and enhanced.count(".") == 2):
                enhanced, text = "", rest
            self.reply = Reply.build(int(code), enhanced or None, text or "injected fault")

    def matches(self, command: str) -> bool:
        return self.command in ("*", command)


class Faults:
    """The fault rules that apply to one listener."""

    def __init__(self, specs: Sequence[FaultRule], listener: str) -> None:
        self._rules = [_Rule(s) for s in specs if s.listener in ("*", listener)]

    def __bool__(self) -> bool:
        return bool(self._rules)

    def drop(self, command: str) -> bool:
        """Should the connection be dropped, without a reply, at ``command``?"""
        return any(
            r.matches(command) and r.drop_rate > 0 and r.random.random() < r.drop_rate
            for r in self._rules
        )

    async def delay(self, command: str) -> None:
        total = sum(r.delay for r in self._rules if r.matches(command))
        if total > 0:
            await asyncio.sleep(total)

    async def apply(self, command: str) -> Reply | None:
        """Wait the configured delay; return an injected reply, or None to answer normally."""
        if not self._rules:
            return None
        await self.delay(command)
        for r in self._rules:
            if (
                r.matches(command)
                and r.reply is not None
                and r.reply_rate > 0
                and r.random.random() < r.reply_rate
            ):
                return r.reply
        return None
