"""Run scenarios against a target and turn what happens into verdicts.

Theory of operation. Scenarios run concurrently (at most ``jobs`` at once),
each with its own transcript and an overall deadline. A scenario's
connections open lazily at the first step that names them and again after a
``close``. Before the first step that *sends* on a connection, the greeting
is read and must be positive; a step with only ``expect`` as the very first
step of a connection checks the greeting itself instead. A step reads a
response when it has ``expect`` or ``capture``; a bare ``send`` reads nothing,
which is how pipelining is written. ``starttls`` and ``auth`` run their
whole exchange and expect success unless the step's ``expect`` says
otherwise. A send the server cuts short (it closed or reset the connection)
does not fail its step: the step's expectation reads what arrived before.

Capabilities for ``requires`` are probed once per service: before and after
STARTTLS, and for POP3 and IMAP after logging in as the target's first
account (a failed login keeps what came before). The POP3 probe, like the
scenarios, takes its turn on the account's maildrop (RFC 1939 §4).

Outbound checks. When the target names a ``sink`` (or one is handed to the
runner already bound, as for the embedded reference server), the runner
serves a :class:`~conformance.sink.Sink` on its own event loop while
scenarios that say ``sink: true`` run; without one those scenarios are not
applicable. An ``outbound`` step waits on the sink, never on a connection.
Each execution of a scenario gets its own ``{run}`` token, so scenarios
running side by side address different recipients at the sink.

Polling (``until``) sends a step's command again every ``every`` seconds
until its expectation holds or ``within`` runs out; ``or_closed`` lets a
server close the connection instead of answering (at once, or after a
refusal), and ``tls_handshake: {or_failed: true}`` lets it end the handshake
(a close or a TLS alert: RFC 9051 §6.2.1 option 1), which ends the scenario
there, passed.

Verdicts: ``passed``; ``failed`` (the server did something the scenario
says it must not, including malformed responses and timeouts);
``not_applicable`` (a ``requires`` capability is not advertised, or the
scenario needs a sink the target lacks); ``error`` (the scenario could not
get to a verdict: setup delivery failed, or a harness bug, which is
reported with its traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from .._yaml import LoadError
from ..results import ScenarioResult, Status
from ..sink import Sink, SinkMessage
from ..targets import SinkSpec, Target, TlsMode
from ..transport import (
    Channel,
    ConnectFailed,
    ReadTimeout,
    TlsHandshakeFailed,
    Transcript,
    show_bytes,
)
from ..wire.smtp import Reply
from .loader import decode_raw
from .match import check, message_octets
from .model import (
    Auth,
    Close,
    Connection,
    Data,
    Delivery,
    Expectation,
    Outbound,
    Protocol,
    Scenario,
    Send,
    Sleep,
    StartTls,
    Step,
    TlsHandshake,
)
from .probe import CapabilityProbe, SetupFailed
from .responses import positive, refusal, show_response
from .sessions import (
    Closed,
    ImapSession,
    Pop3Session,
    Session,
    SmtpSession,
    StepFailure,
    make_session,
    response_text,
)
from .variables import Template, TemplateError

__all__ = [
    "Runner",
    "ScenarioEnded",
    "SetupFailed",
    "TargetUnreachable",
    "check_against_target",
    "dot_stuff",
]

DEFAULT_SCENARIO_TIMEOUT = 60.0
_SINK_SHOW_LINES = 40  # lines of a message at the sink shown in the transcript
_NO_SINK = (
    "the target has no outbound sink (give it a 'sink:' section and route its domain "
    "to it: docs/targets.md)"
)


class TargetUnreachable(Exception):
    """A service the scenarios need does not accept connections (exit code 3)."""


class ScenarioEnded(Exception):
    """The server closed a connection where ``or_closed`` allows it: the scenario passed."""


def check_against_target(scenarios: Iterable[Scenario], target: Target) -> list[LoadError]:
    """Services the scenarios name that the target does not define, with positions."""
    errors: list[LoadError] = []
    known = ", ".join(sorted(target.services)) or "none"
    for sc in scenarios:
        doc = sc.document
        assert doc is not None
        for name, conn in sc.connections.items():
            if conn.service not in target.services:
                key: tuple[str | int, ...] = (
                    ("service",) if name == "main" else ("connections", name, "service")
                )
                if name != "main" and "service" not in doc.value["connections"][name]:
                    key = ("connections", name)
                errors.append(
                    doc.error(key, f"unknown service {conn.service!r}: the target defines {known}")
                )
        for i, d in enumerate(sc.setup):
            if d.via not in target.services:
                errors.append(
                    doc.error(
                        ("setup", "deliver", i, "via"),
                        f"unknown service {d.via!r}: the target defines {known}",
                    )
                )
        for i, r in enumerate(sc.requires):
            if r.service not in target.services:
                errors.append(
                    doc.error(
                        ("requires", i),
                        f"unknown service {r.service!r}: the target defines {known}",
                    )
                )
    return errors


def dot_stuff(text: str) -> bytes:
    """An SMTP DATA body: CRLF line ends, dots doubled, CRLF.CRLF added (RFC 5321 §4.5.2)."""
    lines = message_octets(text).split(b"\r\n")[:-1]
    out = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return out + b".\r\n"


@dataclass
class _Execution:
    """State of one scenario run."""

    scenario: Scenario
    target: Target
    values: dict[str, str]
    transcript: Transcript = field(default_factory=Transcript)
    sessions: dict[str, Session] = field(default_factory=dict)
    step: Step | None = None
    # connection -> the or_closed step whose refusal lets the server close it before
    # the next response on that connection
    may_close: dict[str, Step] = field(default_factory=dict)


class Runner:
    """Runs scenarios against one target.

    Args:
        sink: an outbound sink already bound (its port routed to by the server under
            test), served while scenarios that need it run; by default one is made
            from the target's ``sink`` section, if it has one. A sink is stopped when
            the run (or ``run_one``) that served it ends; a later one listens anew on
            the same address.
    """

    def __init__(
        self,
        target: Target,
        *,
        jobs: int = 8,
        scenario_timeout: float | None = None,
        on_result: Callable[[ScenarioResult], None] | None = None,
        sink: Sink | None = None,
    ):
        self.target = target
        self.jobs = max(1, jobs)
        self.scenario_timeout = scenario_timeout
        self.on_result = on_result
        # account -> lock: RFC 1939 §4, one POP3 session per maildrop (scenarios and probe)
        self._maildrops: dict[str, asyncio.Lock] = {}
        self._probe = CapabilityProbe(target, self._maildrop)
        self._given_sink = sink  # used (started, then stopped) by the first run only
        self._sink_spec: SinkSpec | None = (
            SinkSpec(sink.host, sink.port, sink.domain) if sink is not None else target.sink
        )
        self.sink: Sink | None = None  # the sink being served, while scenarios need it
        self._sink_users = 0
        self._sink_ready = asyncio.Event()  # made anew on the loop that starts the sink

    @property
    def sink_domain(self) -> str | None:
        """The domain routed to the sink, or None when there is no sink."""
        return self._sink_spec.domain if self._sink_spec is not None else None

    @contextlib.asynccontextmanager
    async def serving_sink(self, needed: bool = True) -> AsyncIterator[Sink | None]:
        """Serve the sink on this event loop for the duration (nested uses share it).

        Raises:
            TargetUnreachable: the sink cannot listen on the target's ``sink`` address.
        """
        if not needed or self.sink_domain is None:
            yield self.sink
            return
        self._sink_users += 1
        try:
            if self._sink_users == 1:
                self._sink_ready = asyncio.Event()
                try:
                    self.sink = await self._start_sink()
                finally:
                    self._sink_ready.set()
            else:  # another scenario is starting it: wait (synchronous up to here)
                await self._sink_ready.wait()
            yield self.sink
        finally:
            self._sink_users -= 1
            if self._sink_users == 0 and self.sink is not None:
                sink, self.sink = self.sink, None
                await sink.stop()

    async def _start_sink(self) -> Sink:
        sink, self._given_sink = self._given_sink, None
        if sink is None:
            spec = self._sink_spec
            assert spec is not None
            try:
                sink = Sink(spec.host, spec.port, domain=spec.domain)
            except OSError as exc:
                where = (
                    f"[{spec.host}]:{spec.port}"
                    if ":" in spec.host
                    else (f"{spec.host}:{spec.port}")
                )
                raise TargetUnreachable(
                    f"the outbound sink cannot listen on {where}: {exc.strerror or exc}"
                ) from None
        await sink.start()
        return sink

    # -- whole runs ----------------------------------------------------------

    async def preflight(self, scenarios: Iterable[Scenario]) -> None:
        """Check every service the scenarios use accepts a TCP connection.

        Raises:
            TargetUnreachable: naming the first service that does not.
        """
        services = sorted({s for sc in scenarios for s in sc.services()})

        async def probe(name: str) -> None:
            svc = self.target.services[name]
            where = f"[{svc.host}]:{svc.port}" if ":" in svc.host else f"{svc.host}:{svc.port}"
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(svc.host, svc.port), timeout=self.target.connect_timeout
                )
            except TimeoutError:
                raise TargetUnreachable(
                    f"service {name!r} at {where}: no connection within "
                    f"{self.target.connect_timeout:g}s"
                ) from None
            except OSError as exc:
                raise TargetUnreachable(
                    f"service {name!r} at {where}: {exc.strerror or exc}"
                ) from None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

        await asyncio.gather(*(probe(s) for s in services))

    async def run(self, scenarios: list[Scenario]) -> list[ScenarioResult]:
        """Run all scenarios, ``jobs`` at a time; results come back in input order.

        A scenario that needs a service the target does not define is not
        applicable (``mailharness check`` runs every suite against servers that
        offer only some protocols; ``run`` refuses such files before this).
        """
        offered = set(self.target.services)
        await self.preflight([sc for sc in scenarios if sc.services() <= offered])
        async with self.serving_sink(any(sc.sink for sc in scenarios)):
            return await self._run_all(scenarios, offered)

    async def _run_all(self, scenarios: list[Scenario], offered: set[str]) -> list[ScenarioResult]:
        gate = asyncio.Semaphore(self.jobs)

        async def one(sc: Scenario) -> ScenarioResult:
            missing = sorted(sc.services() - offered)
            if missing:
                result = ScenarioResult(
                    id=sc.id,
                    title=sc.title,
                    path=str(sc.path),
                    status=Status.NOT_APPLICABLE,
                    message=f"the target offers no {', '.join(missing)} service",
                    covers=sc.covers,
                    tags=sc.tags,
                    rfc=sc.rfc,
                )
            else:
                # probed first: a POP3 probe logs in, and takes its maildrop's turn too
                await self._probe_requirements(sc)
                async with contextlib.AsyncExitStack() as held:
                    # RFC 1939 §4: a maildrop takes one POP3 session at a time, so
                    # scenarios that log in to the same account take turns (locks
                    # taken in sorted order, so no two scenarios wait on each other).
                    for account in sorted(_pop3_accounts(sc)):
                        await held.enter_async_context(self._maildrop(account))
                    async with gate:
                        result = await self.run_one(sc)
            if self.on_result is not None:
                self.on_result(result)
            return result

        return list(await asyncio.gather(*(one(sc) for sc in scenarios)))

    # -- capabilities ----------------------------------------------------------

    def _maildrop(self, account: str) -> asyncio.Lock:
        return self._maildrops.setdefault(account, asyncio.Lock())

    @staticmethod
    def _requirement_protocol(scenario: Scenario, service: str) -> Protocol | None:
        return next(
            (c.protocol for c in scenario.connections.values() if c.service == service), None
        )

    async def _probe_requirements(self, scenario: Scenario) -> None:
        """Probe the services the scenario's ``requires`` name (a failure is kept for run_one)."""
        for req in scenario.requires:
            with contextlib.suppress(SetupFailed):
                await self.capabilities(
                    req.service, self._requirement_protocol(scenario, req.service)
                )

    async def capabilities(self, service: str, protocol: Protocol | None = None) -> set[str]:
        """What ``service`` advertises (see :class:`~.probe.CapabilityProbe`).

        Raises:
            SetupFailed: if the probe itself fails (the message says how).
        """
        return await self._probe.capabilities(service, protocol)

    # -- one scenario ----------------------------------------------------------

    async def run_one(self, scenario: Scenario) -> ScenarioResult:
        async with self.serving_sink(scenario.sink):
            return await self._run_one(scenario)

    async def _run_one(self, scenario: Scenario) -> ScenarioResult:
        values = dict(self.target.variables())
        values["run"] = secrets.token_hex(5)  # unique per execution: addresses, Message-IDs
        if self.sink_domain is not None:
            values["sink.domain"] = self.sink_domain
        ex = _Execution(scenario, self.target, values)
        started = time.monotonic()
        result = ScenarioResult(
            id=scenario.id,
            title=scenario.title,
            path=str(scenario.path),
            status=Status.PASSED,
            covers=scenario.covers,
            tags=scenario.tags,
            rfc=scenario.rfc,
        )
        deadline = scenario.timeout or self.scenario_timeout or DEFAULT_SCENARIO_TIMEOUT
        if scenario.sink and self.sink is None:
            result.status, result.message = Status.NOT_APPLICABLE, _NO_SINK
            return result
        try:
            for req in scenario.requires:
                protocol = self._requirement_protocol(scenario, req.service)
                caps = await self.capabilities(req.service, protocol)
                if req.capability not in caps:
                    result.status = Status.NOT_APPLICABLE
                    result.message = f"service {req.service!r} does not advertise {req.capability}"
                    note = self._probe.notes.get(req.service)
                    if note:
                        result.message += f" ({note})"
                    return result
            await asyncio.wait_for(self._execute(ex), timeout=deadline)
        except ScenarioEnded as exc:
            result.message = str(exc)
            ex.transcript.event("harness", str(exc))
        except StepFailure as exc:
            result.status, result.message = Status.FAILED, str(exc)
        except TimeoutError:
            result.status = Status.FAILED
            where = f" at step {ex.step.index + 1}" if ex.step else ""
            result.message = f"scenario did not finish within {deadline:g}s{where}"
        except ConnectFailed as exc:
            result.status, result.message = Status.FAILED, str(exc)
        except (ConnectionError, BrokenPipeError) as exc:
            result.status, result.message = Status.FAILED, f"connection lost: {exc}"
        except SetupFailed as exc:
            result.status, result.message = Status.ERROR, str(exc)
        except TemplateError as exc:
            result.status, result.message = Status.ERROR, str(exc)
        except Exception as exc:  # a harness bug: say so, with the traceback as evidence
            result.status = Status.ERROR
            result.message = f"harness error: {type(exc).__name__}: {exc}"
            for line in traceback.format_exc().splitlines():
                ex.transcript.event("harness", line)
        finally:
            for session in ex.sessions.values():
                await session.channel.close()
            result.duration = time.monotonic() - started
            result.transcript = ex.transcript.entries
        if result.status is Status.FAILED and ex.step is not None:
            result.step, result.line = ex.step.index, ex.step.position.line
        return result

    async def _execute(self, ex: _Execution) -> None:
        for delivery in ex.scenario.setup:
            await self._deliver(ex, delivery)
        for step in ex.scenario.steps:
            ex.step = step
            await self._step(ex, step)

    async def _session(
        self, ex: _Execution, conn: Connection, timeout: float | None = None
    ) -> Session:
        """The connection's session, opened now if needed (within the step's timeout)."""
        session = ex.sessions.get(conn.name)
        if session is None or not session.channel.is_open:
            channel = Channel(
                conn.name, self.target.services[conn.service], self.target, ex.transcript
            )
            await channel.open(timeout)
            session = make_session(conn.protocol, channel)
            ex.sessions[conn.name] = session
        return session

    def _timeout(self, step: Step) -> float:
        return step.timeout or self.target.read_timeout

    async def _step(self, ex: _Execution, step: Step) -> None:
        conn = ex.scenario.connections[step.conn]
        if isinstance(step.action, Close):
            session = ex.sessions.get(conn.name)
            if session is not None:
                await session.channel.close()
            ex.may_close.pop(conn.name, None)
            return
        if isinstance(step.action, Sleep):
            await asyncio.sleep(step.action.seconds)
            return
        if isinstance(step.action, Outbound):
            await self._outbound(ex, step, step.action)
            return
        allowed = ex.may_close.get(conn.name)  # an or_closed refusal before this step
        try:
            await self._converse(ex, step, conn)
        except (StepFailure, ConnectionError) as exc:
            session = ex.sessions.get(conn.name)
            closed = isinstance(exc, ConnectionError) or (
                session is not None and session.channel.eof
            )
            if allowed is not None and closed:
                raise ScenarioEnded(
                    f"the server closed connection {conn.name!r} after refusing at step "
                    f"{allowed.index + 1}, which or_closed allows; the steps after that "
                    "did not run"
                ) from None
            raise
        reads = step.expect is not None or step.capture or isinstance(step.action, StartTls | Auth)
        if reads and allowed is not None and ex.may_close.get(conn.name) is allowed:
            del ex.may_close[conn.name]  # the server answered again: the allowance is spent

    async def _converse(self, ex: _Execution, step: Step, conn: Connection) -> None:
        """A step that talks on a connection."""
        session = await self._session(ex, conn, step.timeout)
        timeout = self._timeout(step)
        if not session.greeted:
            if step.action is None:  # this step's expectation is about the greeting
                session.greeted = True
                await self._expect(ex, session, step, timeout, greeting=True)
                return
            greeting = await session.read_greeting(timeout)
            if not positive(greeting):
                raise StepFailure(
                    f"greeting on {conn.name!r} was not positive: {show_response(greeting)}"
                )
        action = step.action
        if isinstance(action, Send) and step.until is not None:
            await self._poll(ex, session, step, action, timeout)
            return
        if isinstance(action, Send):
            await self._send(ex, session, action)
        elif isinstance(action, Data):
            await self._write(session, dot_stuff(action.body.render(ex.values)))
        elif isinstance(action, StartTls):
            resp = await session.starttls_command(timeout)
            self._judge(ex, step, resp, default_ok=True)
            if positive(resp):
                await session.start_tls()
            return
        elif isinstance(action, TlsHandshake):
            try:
                await session.start_tls()
            except TlsHandshakeFailed as exc:
                if action.or_failed and exc.how in ("closed", "alert"):
                    raise ScenarioEnded(
                        f"the TLS handshake on connection {conn.name!r} failed at step "
                        f"{step.index + 1} ({str(exc).removeprefix('TLS handshake failed: ')}), "
                        "which or_failed allows; the steps after that did not run"
                    ) from None
                if action.or_failed:
                    hint = (
                        " (bytes in cleartext here may answer what was sent after STARTTLS)"
                        if exc.how == "not-tls"
                        else ""
                    )
                    raise StepFailure(
                        f"{exc}{hint}; or_failed allows a handshake the server ends by closing "
                        "the connection or with a TLS alert, not this"
                    ) from None
                raise
            return
        elif isinstance(action, Auth):
            resp = await session.authenticate(  # type: ignore[attr-defined]
                action.mechanism,
                action.username.render(ex.values),
                action.password.render(ex.values),
                action.initial_response,
                timeout,
            )
            self._judge(ex, step, resp, default_ok=True)
            return
        if step.expect is not None or step.capture:
            await self._expect(ex, session, step, timeout)

    async def _send(self, ex: _Execution, session: Session, action: Send) -> None:
        if action.raw:
            data = self._raw_bytes(action.text, ex.values) * action.repeat
        else:
            data = action.text.render(ex.values).encode("utf-8", errors="surrogateescape") + b"\r\n"
        session.note_sent(data)
        await self._write(session, data)

    @staticmethod
    async def _write(session: Session, data: bytes) -> None:
        """Send; a connection the server closed or reset meanwhile does not fail the step by
        itself: the step's expectation reads what the server sent before (an answer, a BYE,
        or the close, which ``or_closed`` may allow)."""
        try:
            await session.channel.send(data)
        except ConnectionError:
            session.channel.transcript.event(
                session.channel.name, "the step goes on to read what the server sent"
            )

    async def _poll(
        self, ex: _Execution, session: Session, step: Step, action: Send, timeout: float
    ) -> None:
        """Send the command again every ``until.every`` s until the expectation holds."""
        until = step.until
        assert until is not None and step.expect is not None
        deadline = time.monotonic() + until.within
        tries = 0
        while True:
            tries += 1
            await self._send(ex, session, action)
            resp = await self._read(ex, session, step.expect, timeout, greeting=False)
            problems = self._problems(ex, step, resp, default_ok=False)
            if not problems or isinstance(resp, Closed):
                break
            if time.monotonic() + until.every > deadline:
                problems[-1] += (
                    f" (the last of {tries} tries in {until.within:g}s, one every {until.every:g}s)"
                )
                break
            await asyncio.sleep(until.every)
        if tries > 1:
            ex.transcript.event(session.channel.name, f"polled: {tries} tries")
        self._conclude(ex, step, resp, problems)

    @staticmethod
    def _raw_bytes(tpl: Template, values: dict[str, str]) -> bytes:
        out = b""
        for part in tpl.parts:
            if isinstance(part, str):
                out += decode_raw(part)
            elif part.name in values:
                out += values[part.name].encode("utf-8")
            else:
                raise TemplateError(f"unknown variable {{{part.name}}}", part.offset)
        return out

    async def _expect(
        self, ex: _Execution, session: Session, step: Step, timeout: float, greeting: bool = False
    ) -> None:
        exp = step.expect or Expectation()
        if exp.silence is not None and exp.or_closed:
            await self._silence_or_close(ex, session, step, exp.silence, timeout)
            return
        if exp.silence is not None:
            await session.expect_silence(exp.silence)
            return
        only_closed = exp.closed and exp == Expectation(closed=True)
        if only_closed:
            await session.expect_closed(timeout)
            return
        resp = await self._read(ex, session, exp, timeout, greeting)
        if exp.or_closed:
            await self._or_closed(ex, session, step, resp, timeout)
        self._judge(ex, step, resp, default_ok=False)
        if exp.closed:
            await session.expect_closed(timeout)

    def _ended(self, session: Session, step: Step, how: str) -> ScenarioEnded:
        return ScenarioEnded(
            f"the server closed connection {session.channel.name!r} {how} at step "
            f"{step.index + 1}, which or_closed allows; the steps after that did not run"
        )

    async def _or_closed(
        self, ex: _Execution, session: Session, step: Step, resp: object, timeout: float
    ) -> None:
        """``or_closed``: a close instead of the response, or a refusal then a close."""
        if isinstance(resp, Closed):
            raise self._ended(session, step, "instead of answering")
        if not refusal(resp):
            return
        if self._problems(ex, step, resp, default_ok=False):
            # not the answer expected, but a refusal: acceptable only if the server closes now
            if await self._closes(session, timeout):
                raise self._ended(session, step, "after refusing")
            return  # _judge reports the mismatch
        # the refusal was acceptable; the server may still close before its next answer
        ex.may_close[session.channel.name] = step

    @staticmethod
    async def _closes(session: Session, timeout: float) -> bool:
        try:
            await session.expect_closed(timeout)
        except StepFailure:
            return False
        return True

    async def _silence_or_close(
        self, ex: _Execution, session: Session, step: Step, seconds: float, timeout: float
    ) -> None:
        """Silence, or a close (at once, or after a refusal): both end well."""
        if not session.reader.pending:
            try:
                data = await session.channel.read(seconds)
            except ReadTimeout:
                return  # silent: the expectation holds
            if not data:
                raise self._ended(session, step, "instead of staying silent")
            session.reader.receive_data(data)
        resp = await self._read(ex, session, Expectation(), timeout, greeting=False)
        if isinstance(resp, Closed):
            raise self._ended(session, step, "instead of staying silent")
        if refusal(resp) and await self._closes(session, timeout):
            raise self._ended(session, step, "after refusing")
        raw = getattr(resp, "raw", None)
        shown = (
            repr(raw.decode("utf-8", "replace").split("\r\n")[0]) if raw else show_response(resp)
        )
        raise StepFailure(
            f"expected silence for {seconds:g}s, but the server sent {shown} "
            "(and did not close the connection, which or_closed would allow)"
        )

    async def _read(
        self, ex: _Execution, session: Session, exp: Expectation, timeout: float, greeting: bool
    ) -> object:
        if isinstance(session, SmtpSession):
            return await session.read_reply(timeout)
        if isinstance(session, Pop3Session):
            return await session.read_response(
                timeout, multiline=False if greeting else exp.multiline
            )
        assert isinstance(session, ImapSession)
        if greeting:
            return await session.read_exchange(timeout, tag=None, until_continuation=False)
        tag = exp.tag.render(ex.values) if exp.tag is not None else None
        if tag is None and (exp.tagged is not None or not exp.untagged or exp.continuation):
            tag = session.pending_tags[-1] if session.pending_tags else None
        if exp.untagged and exp.tagged is None and not exp.continuation:
            patterns = [t.render_regex(ex.values) for t in exp.untagged]
            return await session.read_exchange(
                timeout, tag=tag, until_continuation=False, until_untagged=patterns
            )
        if tag is None and not exp.continuation and exp.tagged is not None:
            raise StepFailure("no IMAP command is waiting for a tagged response; give expect.tag")
        return await session.read_exchange(timeout, tag=tag, until_continuation=exp.continuation)

    @staticmethod
    def _problems(ex: _Execution, step: Step, resp: object, *, default_ok: bool) -> list[str]:
        if step.expect is not None:
            return check(step.expect, resp, ex.values)
        if default_ok:
            return [] if positive(resp) else [f"expected success, got {show_response(resp)}"]
        if isinstance(resp, Closed):
            return ["expected a response, but the server closed the connection"]
        return []

    def _judge(self, ex: _Execution, step: Step, resp: object, *, default_ok: bool) -> None:
        self._conclude(ex, step, resp, self._problems(ex, step, resp, default_ok=default_ok))

    @staticmethod
    def _conclude(ex: _Execution, step: Step, resp: object, problems: list[str]) -> None:
        """Fail with ``problems``, or store the step's captures from ``resp``."""
        if problems:
            raise StepFailure("; ".join(problems))
        _capture(ex, step, response_text(resp))

    # -- the outbound sink --------------------------------------------------------

    async def _outbound(self, ex: _Execution, step: Step, action: Outbound) -> None:
        """Wait for mail at the sink for one recipient, then check it."""
        sink = self.sink
        if sink is None:  # run_one checks first; kept for direct callers
            raise SetupFailed(_NO_SINK)
        to = action.to.render(ex.values)
        wanted = action.attempts
        what = (
            f"{wanted} delivery attempt(s) for <{to}>"
            if wanted is not None
            else f"a message for <{to}>"
        )
        ex.transcript.event("sink", f"waiting up to {action.within:g}s for {what}")

        def ready(s: Sink) -> bool:
            if wanted is None:
                return bool(s.for_recipient(to))
            return len(s.attempts_for(to)) >= wanted

        try:
            await sink.wait_for(ready, action.within)
        except TimeoutError:
            _record_sink(ex, sink, to)
            raise StepFailure(
                f"{what} did not reach the sink within {action.within:g}s: "
                + _sink_summary(sink, to)
            ) from None
        _record_sink(ex, sink, to)
        messages = sink.for_recipient(to)
        exp = step.expect
        if not messages:
            if exp is not None and (exp.sender, exp.text, exp.text_absent) != (None, None, ()):
                raise StepFailure(
                    f"no message for <{to}> was accepted by the sink: {_sink_summary(sink, to)}"
                )
            if step.capture:
                raise StepFailure(f"nothing to capture from: {_sink_summary(sink, to)}")
            return
        msg = messages[0]
        text = msg.data.decode("utf-8", "surrogateescape").replace("\r\n", "\n")
        problems: list[str] = []
        if exp is not None and exp.sender is not None:
            want = exp.sender.render(ex.values)
            if msg.sender.lower() != want.lower():
                problems.append(
                    f"expected the envelope sender (MAIL FROM) <{want}>, got <{msg.sender}>"
                )
        if (
            exp is not None
            and exp.text is not None
            and not exp.text.render_regex(ex.values).search(text)
        ):
            problems.append(
                f"expected the message at the sink to match /{exp.text.render(ex.values)}/"
                f" (it begins {_first_lines(text)!r})"
            )
        for tpl in exp.text_absent if exp is not None else ():
            m = tpl.render_regex(ex.values).search(text)
            if m is not None:
                line_start = text.rfind("\n", 0, m.start()) + 1
                line_end = text.find("\n", m.end())
                shown = text[line_start : line_end if line_end >= 0 else len(text)]
                problems.append(
                    f"expected no match for /{tpl.render(ex.values)}/ in the message at the "
                    f"sink, got {shown[:200]!r}"
                )
        if problems:
            raise StepFailure(f"mail for <{to}> at the sink: " + "; ".join(problems))
        _capture(ex, step, text)

    # -- setup -------------------------------------------------------------------

    async def _deliver(self, ex: _Execution, d: Delivery) -> None:
        """Put a message into mailboxes over SMTP (RFC 5321 §3.3) before the steps run."""
        svc = self.target.services[d.via]
        channel = Channel(f"setup-{d.via}", svc, self.target, ex.transcript)
        timeout = self.target.read_timeout
        try:
            await channel.open()
            smtp = SmtpSession(channel)

            async def ok(resp: object, what: str, codes: tuple[int, ...]) -> None:
                if not isinstance(resp, Reply) or resp.code not in codes:
                    raise SetupFailed(
                        f"setup delivery via {d.via!r}: {what} got {show_response(resp)}"
                    )

            await ok(await smtp.read_greeting(timeout), "greeting", (220,))
            await ok(await smtp.ehlo(timeout), "EHLO", (250,))
            if svc.tls is TlsMode.STARTTLS:
                await ok(await smtp.command("STARTTLS", timeout), "STARTTLS", (220,))
                await smtp.start_tls()
                await ok(await smtp.ehlo(timeout), "EHLO after STARTTLS", (250,))
            if d.login_as is not None:
                acc = self.target.accounts[d.login_as]
                await ok(
                    await smtp.authenticate("PLAIN", acc.username, acc.password, True, timeout),
                    "AUTH PLAIN",
                    (235,),
                )
            recipients = []
            for tpl in d.recipients:
                rcpt = tpl.render(ex.values)
                if "@" not in rcpt and rcpt in self.target.accounts:
                    rcpt = self.target.accounts[rcpt].address
                recipients.append(rcpt)
            body = dot_stuff(d.message.render(ex.values))
            for _ in range(d.count):
                await ok(
                    await smtp.command(f"MAIL FROM:<{d.sender.render(ex.values)}>", timeout),
                    "MAIL",
                    (250,),
                )
                for rcpt in recipients:
                    await ok(
                        await smtp.command(f"RCPT TO:<{rcpt}>", timeout), f"RCPT {rcpt}", (250, 251)
                    )
                await ok(await smtp.command("DATA", timeout), "DATA", (354,))
                await channel.send(body)
                await ok(await smtp.read_reply(timeout), "end of data", (250,))
            await smtp.command("QUIT", timeout)
        except (StepFailure, ConnectFailed, OSError) as exc:
            raise SetupFailed(f"setup delivery via {d.via!r} failed: {exc}") from None
        finally:
            await channel.close()


def _capture(ex: _Execution, step: Step, text: str) -> None:
    for name, tpl in step.capture:
        m = tpl.render_regex(ex.values).search(text)
        if m is None:
            raise StepFailure(f"capture {name!r}: /{tpl.render(ex.values)}/ did not match {text!r}")
        ex.values[name] = m.group(1) if m.re.groups else m.group(0)


def _first_lines(text: str, count: int = 3) -> str:
    return "\n".join(text.split("\n", count)[:count])


def _sink_summary(sink: Sink, to: str) -> str:
    """What the sink saw for ``to``, in one phrase, for failure messages."""
    attempts = sink.attempts_for(to)
    accepted = sink.for_recipient(to)
    if not attempts:
        return f"the sink saw no delivery attempt for <{to}>"
    shown = ", ".join(
        f"{a.code} {'at RCPT' if a.stage == 'rcpt' else 'after the data'}" for a in attempts
    )
    return (
        f"{len(attempts)} attempt(s) for <{to}> ended ({shown}), "
        f"{len(accepted)} message(s) accepted"
    )


def _record_sink(ex: _Execution, sink: Sink, to: str) -> None:
    """Put what the sink saw for ``to`` into the transcript as ``*`` events."""
    for n, a in enumerate(sink.attempts_for(to), 1):
        stage = "refused at RCPT" if a.stage == "rcpt" else "answered after the data"
        ex.transcript.event("sink", f"attempt {n}: MAIL FROM:<{a.sender}>, {stage} with {a.code}")
    for msg in sink.for_recipient(to):
        _record_message(ex, msg)


def _record_message(ex: _Execution, msg: SinkMessage) -> None:
    rcpts = ", ".join(f"<{r}>" for r in msg.recipients)
    ex.transcript.event(
        "sink",
        f"accepted from {msg.peer} (EHLO {msg.ehlo}): MAIL FROM:<{msg.sender}>, "
        f"RCPT {rcpts}, {len(msg.data)} octets:",
    )
    lines = re.split(rb"\r\n", msg.data)
    if lines and lines[-1] == b"":
        lines.pop()
    for line in lines[:_SINK_SHOW_LINES]:
        ex.transcript.event("sink", "| " + show_bytes(line))
    if len(lines) > _SINK_SHOW_LINES:
        ex.transcript.event("sink", f"| … ({len(lines) - _SINK_SHOW_LINES} more lines)")


def _pop3_accounts(scenario: Scenario) -> set[str]:
    """The accounts a scenario names in commands or logins on its POP3 connections.

    These are the maildrops it may lock; a user name written out literally
    instead of as ``{account.NAME.username}`` is not seen.
    """
    pop3 = {c.name for c in scenario.connections.values() if c.protocol is Protocol.POP3}
    names: set[str] = set()
    for step in scenario.steps:
        if step.conn not in pop3:
            continue
        if isinstance(step.action, Auth):
            templates = [step.action.username]
        elif isinstance(step.action, Send):
            templates = [step.action.text]
        else:
            continue
        for tpl in templates:
            for ref in tpl.variables:
                kind, _, rest = ref.name.partition(".")
                if kind == "account":
                    names.add(rest.partition(".")[0])
    return names
