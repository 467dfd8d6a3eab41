"""What a service advertises, for ``requires:``: asked once per run, before and after login.

Theory of operation: the probe opens its own connection to a service, reads the
greeting and the capabilities (EHLO, CAPA or CAPABILITY), asks again after
STARTTLS when the service offers it, and for POP3 and IMAP logs in as the
target's first account and asks once more, taking the union (IMAP servers such
as Dovecot list MOVE, UIDPLUS, CONDSTORE... only once logged in). A POP3 login
takes the maildrop's turn, as scenarios do. A failed login keeps what was seen
before it, and :attr:`CapabilityProbe.notes` says so for the "not applicable"
message. A probe that cannot run at all makes every scenario that needs the
service an error (:class:`SetupFailed`), not a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from ..targets import Target, TlsMode
from ..transport import Channel, ConnectFailed, Transcript
from .model import Protocol
from .responses import positive, show_response
from .sessions import (
    ImapSession,
    Pop3Session,
    Session,
    SmtpSession,
    StepFailure,
    make_session,
)

__all__ = ["CapabilityProbe", "SetupFailed", "guess_protocol"]


class SetupFailed(Exception):
    """The scenario's setup could not be done; the scenario cannot be judged."""


class CapabilityProbe:
    """Probes each service once; ``maildrop(account)`` gives that account's POP3 turn."""

    def __init__(self, target: Target, maildrop: Callable[[str], asyncio.Lock]) -> None:
        self.target = target
        self._maildrop = maildrop
        self._caps: dict[str, set[str] | str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.notes: dict[str, str] = {}  # service -> how its capabilities were probed

    async def capabilities(self, service: str, protocol: Protocol | None = None) -> set[str]:
        """What ``service`` advertises (probed once per run): before and after STARTTLS,
        and for POP3 and IMAP after logging in too, when the target has an account.

        Raises:
            SetupFailed: if the probe itself fails (the message says how).
        """
        if service not in self._caps:
            lock = self._locks.setdefault(service, asyncio.Lock())
            async with lock:
                if service not in self._caps:
                    try:
                        self._caps[service] = await self._probe_capabilities(service, protocol)
                    except (StepFailure, ConnectFailed, OSError) as exc:
                        self._caps[service] = (
                            f"capability probe of service {service!r} failed: {exc}"
                        )
        caps = self._caps[service]
        if isinstance(caps, str):
            raise SetupFailed(caps)
        return caps

    async def _probe_capabilities(self, service: str, protocol: Protocol | None) -> set[str]:
        svc = self.target.services[service]
        timeout = self.target.read_timeout
        channel = Channel(f"probe-{service}", svc, self.target, Transcript())
        await channel.open()
        protocol = protocol or guess_protocol(service, svc.port)
        session = make_session(protocol, channel)
        caps: set[str] = set()
        try:
            greeting = await session.read_greeting(timeout)
            if not positive(greeting):
                raise StepFailure(f"greeting was not positive: {show_response(greeting)}")
            caps |= session.capabilities
            caps |= await self._ask_caps(session, timeout)
            if svc.tls is TlsMode.STARTTLS and caps & {"STARTTLS", "STLS"}:
                resp = await session.starttls_command(timeout)
                if positive(resp):
                    await session.start_tls()
                    caps |= await self._ask_caps(session, timeout)
            if not isinstance(session, SmtpSession):
                caps |= await self._after_login(service, session, timeout)
        finally:
            await channel.close()
        return caps

    async def _after_login(self, service: str, session: Session, timeout: float) -> set[str]:
        """Log in as the target's first account and ask again. IMAP servers such as Dovecot
        list MOVE, UIDPLUS, CONDSTORE... only once logged in (RFC 3501 §6.2.3: a server MAY
        send its capabilities with LOGIN's OK, and they may differ); RFC 2449 §5 lets POP3
        servers announce more after login. A login that fails, or no account, leaves the
        capabilities from before login, and a note for the "not applicable" message."""
        if not self.target.accounts:
            self.notes[service] = "asked before login only: the target has no account"
            return set()
        name, account = next(iter(self.target.accounts.items()))
        before = session.capabilities
        mechanism, initial = "native", True
        if isinstance(session, ImapSession) and "LOGINDISABLED" in before:
            # RFC 9051 §6.2.3: LOGIN is refused; AUTHENTICATE PLAIN as scenarios' auth does
            mechanism, initial = "PLAIN", "SASL-IR" in before
            if "AUTH=PLAIN" not in before:
                self.notes[service] = (
                    "asked before login only: LOGINDISABLED and no AUTH=PLAIN, so the probe "
                    "did not log in"
                )
                return set()
        elif isinstance(session, Pop3Session) and "USER" not in before and "SASL=PLAIN" in before:
            mechanism = "PLAIN"  # RFC 5034 §4: AUTH PLAIN with an initial response
        pop3 = isinstance(session, Pop3Session)
        async with self._maildrop(name) if pop3 else contextlib.nullcontext():
            try:
                resp = await session.authenticate(  # type: ignore[attr-defined]
                    mechanism, account.username, account.password, initial, timeout
                )
                if not positive(resp):
                    self.notes[service] = (
                        f"asked before login only: the probe's login as {name!r} failed: "
                        f"{show_response(resp)}"
                    )
                    return set()
                after = await self._ask_caps(session, timeout)
                with contextlib.suppress(StepFailure, OSError):
                    await session.command("QUIT" if pop3 else "LOGOUT", timeout)  # type: ignore[attr-defined]
            except (StepFailure, OSError) as exc:
                self.notes[service] = (
                    f"asked before login only: the probe's login as {name!r} failed: {exc}"
                )
                return set()
        self.notes[service] = f"asked before and after logging in as {name!r}"
        return after

    async def _ask_caps(self, session: Session, timeout: float) -> set[str]:
        if isinstance(session, SmtpSession):
            await session.ehlo(timeout)
        elif isinstance(session, Pop3Session):
            await session.capa(timeout)
        elif isinstance(session, ImapSession):
            await session.capability(timeout)
        return set(session.capabilities)


def guess_protocol(service: str, port: int) -> Protocol:
    """The protocol a service speaks, from its conventional name or port."""
    name = service.lower()
    if name.startswith("pop") or port in (110, 995):
        return Protocol.POP3
    if name.startswith("imap") or port in (143, 993):
        return Protocol.IMAP
    return Protocol.SMTP
