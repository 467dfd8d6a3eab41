"""Locust users for mail: submission, MX delivery, POP3 and IMAP retrieval, IMAP IDLE holders.

The users are thin (STYLE.md practice 12): each task is one visit of a mail
client, written as calls on a measured client (:mod:`loadtest.clients`), and
every protocol step of it is one Locust request (``SMTP MAIL``, ``IMAP
FETCH``, ...). A step that fails has been counted by the time its exception
reaches the task, which then drops the connection and ends the visit; the next
visit starts afresh.

============================  ============  =====================================================
user                          profile       one task (visit)
============================  ============  =====================================================
:class:`SubmissionUser`       submission    connect to ``submission`` (587), STARTTLS, AUTH, send
                                            ``--messages-per-connection`` messages, QUIT
:class:`SubmissionsUser`      submissions   the same on ``submissions`` (465, implicit TLS)
:class:`MxUser`               mx            connect to ``mx`` (25), STARTTLS if the target says
                                            so, no AUTH, send, QUIT
:class:`Pop3RetrievalUser`    pop3          STLS, USER/PASS, STAT, LIST, UIDL, RETR and DELE up
                                            to ``--fetch-count`` messages, QUIT
:class:`ImapRetrievalUser`    imap          STARTTLS, LOGIN, SELECT, UID SEARCH, UID FETCH, STORE
                                            \\Seen, STORE \\Deleted and EXPUNGE, LOGOUT
:class:`ImapIdleUser`         imap-idle     keeps one logged-in connection; IDLE, hold
                                            ``--idle-time`` seconds, DONE, again
============================  ============  =====================================================

Profile ``mixed`` runs submission, pop3 and imap users together (weights
3:1:1). ``--profile`` takes a comma list too (``submission,imap-idle``), and
other modules add profiles with :func:`register_profile`.

Everything a user needs from the command line and the target file is in one
:class:`LoadContext` per Locust environment (process), built when the first
user starts: the target, this worker's share of the accounts, the message
factory (seeded), the endpoints (one TLS context each, shared by all
connections).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from weakref import WeakKeyDictionary

import gevent
from locust import User, task
from locust.env import Environment
from locust.runners import WorkerRunner

from conformance.targets import Account, Target, load_target

from .accounts import AccountPool, accounts_from_csv, accounts_from_target, partition
from .clients import MeasuredImapClient, MeasuredPop3Client, MeasuredSmtpClient
from .corpus import DEFAULT_SIZES, MessageFactory, SizeDistribution, parse_size
from .drivers import DataPayload, DriverError, Endpoint, NullRecorder, SmtpDriver

__all__ = [
    "PROFILES",
    "ImapIdleUser",
    "ImapRetrievalUser",
    "ImapUser",
    "LoadContext",
    "LoadSettings",
    "MxUser",
    "Pop3RetrievalUser",
    "Pop3User",
    "SmtpUser",
    "SubmissionUser",
    "SubmissionsUser",
    "load_context",
    "register_profile",
    "resolve_profile",
    "set_load_context",
]

log = logging.getLogger("loadtest.users")


# -- settings -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSettings:
    """The traffic options (``loadtest/locustfile.py`` documents each on the command line)."""

    target_file: Path | None = None
    profile: str = "submission"
    accounts_csv: Path | None = None
    worker_count: int = 0  # 0: 1 for a local run; the master fills it in for its workers
    seed: int | None = None
    message_size: str = DEFAULT_SIZES
    attachment_threshold: int = 32 * 1024
    messages_per_connection: int = 1
    recipients: int = 1
    pipelining: bool = True
    events: str = "per-step"  # or "per-message": one SMTP request per transaction
    auth_mechanism: str | None = None  # None: PLAIN if offered, else LOGIN
    sender_domain: str = "loadtest.mailharness.invalid"
    helo_name: str = "loadtest.mailharness.invalid"
    fetch_count: int = 5
    delete: bool = True
    top_up: int = 3
    idle_time: float = 60.0
    think_time: float = 0.0
    services: dict[str, str] = field(default_factory=dict)  # key -> value of --<key>-service

    @classmethod
    def from_options(cls, options: argparse.Namespace | None) -> LoadSettings:
        """From Locust's parsed options (missing ones take the defaults)."""
        if options is None:
            return cls()

        def get(name: str, default: Any) -> Any:
            value = getattr(options, name, None)
            return default if value is None else value

        target = get("target_file", None)
        csv_file = get("accounts_csv", None)
        mech = str(get("auth_mechanism", "auto")).upper()
        seed = int(get("seed", 0))
        # every --<key>-service option given, this module's or another's
        services = {
            key.removesuffix("_service").replace("_", "-"): str(value)
            for key, value in vars(options).items()
            if key.endswith("_service") and value
        }
        return cls(
            target_file=Path(target) if target else None,
            profile=str(get("profile", "submission")),
            accounts_csv=Path(csv_file) if csv_file else None,
            worker_count=int(get("worker_count", 0)),
            seed=seed or None,
            message_size=str(get("message_size", DEFAULT_SIZES)),
            attachment_threshold=parse_size(str(get("attachment_threshold", "32KB"))),
            messages_per_connection=max(int(get("messages_per_connection", 1)), 1),
            recipients=max(int(get("recipients", 1)), 1),
            pipelining=not bool(get("no_pipelining", False)),
            events=str(get("events", "per-step")),
            auth_mechanism=None if mech == "AUTO" else mech,
            sender_domain=str(get("sender_domain", cls.sender_domain)),
            helo_name=str(get("helo_name", cls.helo_name)),
            fetch_count=max(int(get("fetch_count", 5)), 1),
            delete=not bool(get("keep_messages", False)),
            top_up=max(int(get("top_up", 3)), 0),
            idle_time=max(float(get("idle_time", 60.0)), 0.05),
            think_time=max(float(get("think_time", 0.0)), 0.0),
            services=services,
        )


# -- per-process context --------------------------------------------------------------


class LoadContext:
    """What the users of one process share. Build with :func:`load_context`.

    Args:
        settings: the options.
        target: the loaded target file.
        worker_index: this process's index among the workers (0 for a local run).
        worker_count: how many workers share the accounts.

    Raises:
        AccountsError: fewer accounts than workers, or a bad CSV.
        SizeSpecError: a bad ``--message-size``.
    """

    def __init__(
        self,
        settings: LoadSettings,
        target: Target,
        *,
        worker_index: int = 0,
        worker_count: int = 1,
    ) -> None:
        self.settings = settings
        self.target = target
        self.worker_index = worker_index
        self.worker_count = worker_count
        every = (
            accounts_from_csv(settings.accounts_csv)
            if settings.accounts_csv
            else accounts_from_target(target)
        )
        self.accounts = AccountPool(partition(every, worker_index, worker_count))
        self.factory = MessageFactory(
            SizeDistribution.parse(settings.message_size),
            seed=settings.seed,
            stream=f"w{worker_index}",
            attachment_threshold=settings.attachment_threshold,
        )
        self.seed = self.factory.seed
        self.rng = random.Random(f"{self.seed}/w{worker_index}/recipients")
        self._endpoints: dict[str, Endpoint] = {}
        self._warned: set[str] = set()

    def endpoint(self, service: str) -> Endpoint:
        """The endpoint of ``service`` (one per process: the TLS context is shared)."""
        ep = self._endpoints.get(service)
        if ep is None:
            # users yield to each other before every read (see Endpoint.cooperate)
            ep = dataclasses.replace(
                Endpoint.from_target(self.target, service), cooperate=gevent.sleep
            )
            self._endpoints[service] = ep
        return ep

    def service_for(self, key: str, default: str) -> str:
        """The service named by ``--<key>-service``, else ``default``."""
        return self.settings.services.get(key, default)

    def recipients(self, sender: Account | None) -> list[str]:
        """``--recipients`` addresses from this worker's accounts (not the sender if avoidable)."""
        picked = self.accounts.sample(self.rng, self.settings.recipients, exclude=sender)
        return [a.address for a in picked]

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def top_up(self, account: Account, count: int) -> int:
        """Deliver ``count`` messages to ``account`` over SMTP, unmeasured (setup, not load).

        Uses the ``mx`` service if the target has one, else ``submission`` with the
        account's own login. Returns how many were accepted.
        """
        services = self.target.services
        service = "mx" if "mx" in services else "submission" if "submission" in services else None
        if service is None or count <= 0:
            self.warn_once(
                "top-up",
                "no mx or submission service in the target: empty mailboxes stay empty "
                "(fill them before the run, or add a service)",
            )
            return 0
        smtp = SmtpDriver(
            self.endpoint(service), recorder=NullRecorder(), helo_name=self.settings.helo_name
        )
        sent = 0
        try:
            if service == "mx":
                smtp.start()
                sender = f"top-up@{self.settings.sender_domain}"
            else:
                smtp.start(username=account.username, password=account.password)
                sender = account.address
            for _ in range(count):
                message = self.factory.make(sender, [account.address])
                smtp.send_message(sender, [account.address], message.data)
                sent += 1
            smtp.quit()
        except DriverError as exc:
            smtp.close()
            self.warn_once("top-up-failed", f"topping up {account.address} failed: {exc!r}")
        return sent


_CONTEXTS: WeakKeyDictionary[Environment, LoadContext] = WeakKeyDictionary()


def worker_position(environment: Environment, settings: LoadSettings) -> tuple[int, int]:
    """(index, count) of this process among the workers; (0, 1) for a local run.

    A worker's index comes from its master (``runner.worker_index``); the count
    from ``--worker-count``, which the master fills in with the workers
    connected when the test starts, else from ``--expect-workers``.
    """
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        return 0, max(settings.worker_count, 1)
    index = max(int(runner.worker_index), 0)
    count = settings.worker_count
    if count <= 0:
        options = environment.parsed_options
        count = int(getattr(options, "expect_workers", 1) or 1)
    return index, count


def load_context(environment: Environment) -> LoadContext:
    """The environment's :class:`LoadContext`, built on first use from its parsed options.

    Raises:
        ValueError: no ``--target-file`` was given.
    """
    ctx = _CONTEXTS.get(environment)
    if ctx is None:
        settings = LoadSettings.from_options(environment.parsed_options)
        if settings.target_file is None:
            raise ValueError(
                "no target: give --target-file T.yaml (see docs/targets.md), "
                "or call set_load_context() when running Locust from Python"
            )
        index, count = worker_position(environment, settings)
        ctx = LoadContext(
            settings, load_target(settings.target_file), worker_index=index, worker_count=count
        )
        _CONTEXTS[environment] = ctx
        log.info(
            "mailharness load: seed %d (repeat with --seed %d), worker %d of %d, %d account(s), "
            "message sizes %s",
            ctx.seed,
            ctx.seed,
            index,
            count,
            len(ctx.accounts),
            ctx.factory.sizes,
        )
    return ctx


def set_load_context(environment: Environment, context: LoadContext) -> None:
    """Use ``context`` for ``environment`` (running Locust from Python, without options)."""
    _CONTEXTS[environment] = context


# -- users ----------------------------------------------------------------------------


class MailUser(User):
    """Common ground: the context, the think time, and leasing an account."""

    abstract = True
    profile: ClassVar[str] = ""
    default_service: ClassVar[str] = ""
    ctx: LoadContext

    def wait_time(self) -> float:
        return self.ctx.settings.think_time if hasattr(self, "ctx") else 0.0

    def on_start(self) -> None:
        self.ctx = load_context(self.environment)

    @property
    def service(self) -> str:
        """The target service to use: ``--<default_service>-service`` or ``default_service``."""
        return self.ctx.service_for(self.default_service, self.default_service)


class SmtpUser(MailUser):
    """Abstract: sends mail; one visit is one connection with one or more messages."""

    abstract = True
    authenticate: ClassVar[bool] = True
    client: MeasuredSmtpClient

    def on_start(self) -> None:
        super().on_start()
        s = self.ctx.settings
        self.client = MeasuredSmtpClient(
            self.environment,
            self.ctx.endpoint(self.service),
            helo_name=s.helo_name,
            pipelining=s.pipelining,
            per_message=s.events == "per-message",
        )
        self.stream = f"w{self.ctx.worker_index}"

    def on_stop(self) -> None:
        self.client.close()

    def messages(
        self, account: Account | None, sender: str
    ) -> Iterator[tuple[str, list[str], bytes]]:
        """The visit's ``--messages-per-connection`` messages, made one at a time as the
        driver asks (it pipelines each one's commands with the message before)."""
        ctx = self.ctx
        make, recipients_for = ctx.factory.make, ctx.recipients
        for _ in range(ctx.settings.messages_per_connection):
            recipients = recipients_for(account)
            # the factory's lines are CRLF and none starts with ".": only the final dot
            yield sender, recipients, DataPayload(make(sender, recipients).data + b".\r\n")

    def sender(self) -> tuple[Account | None, str]:
        """The account to log in as (``None``: no AUTH) and the envelope sender."""
        account = self.ctx.accounts.next()
        return account, account.address

    @task
    def send(self) -> None:
        account, sender = self.sender()
        s = self.ctx.settings
        try:
            if self.authenticate and account is not None:
                self.client.start(
                    username=account.username, password=account.password, mechanism=s.auth_mechanism
                )
            else:
                self.client.start()
            self.client.send_messages(self.messages(account, sender))
            self.client.quit()
        except DriverError:
            self.client.close()  # counted as a failed request already


class SubmissionUser(SmtpUser):
    """Message submission on port 587 style: STARTTLS, AUTH (RFC 6409, RFC 3207, RFC 4954)."""

    profile = "submission"
    default_service = "submission"


class SubmissionsUser(SmtpUser):
    """Message submission over implicit TLS, port 465 style (RFC 8314)."""

    profile = "submissions"
    default_service = "submissions"


class MxUser(SmtpUser):
    """MX delivery, port 25 style: no AUTH, a remote sender, local recipients."""

    profile = "mx"
    default_service = "mx"
    authenticate = False

    def sender(self) -> tuple[Account | None, str]:
        return None, f"load-{self.stream}@{self.ctx.settings.sender_domain}"


class _MailboxUser(MailUser):
    """Holds one account for its life: exclusive if the pool has one free (and
    ``exclusive``), else shared."""

    abstract = True
    exclusive: ClassVar[bool] = True

    def on_start(self) -> None:
        super().on_start()
        if not self.exclusive:
            self._leased = False
            self.account = self.ctx.accounts.next()
            return
        leased = self.ctx.accounts.lease()
        self._leased = leased is not None
        if leased is None:
            self.ctx.warn_once(
                f"shared-{self.profile}",
                f"more {self.profile} users than accounts in this worker "
                f"({len(self.ctx.accounts)}): some share a mailbox"
                + (
                    " (expect -ERR [IN-USE] failures from POP3 locks)"
                    if self.profile == "pop3"
                    else ""
                ),
            )
        self.account = leased or self.ctx.accounts.next()

    def on_stop(self) -> None:
        if self._leased:
            self.ctx.accounts.release(self.account)


class Pop3User(_MailboxUser):
    """Abstract: a POP3 client of one mailbox."""

    abstract = True
    client: MeasuredPop3Client

    def on_start(self) -> None:
        super().on_start()
        self.client = MeasuredPop3Client(self.environment, self.ctx.endpoint(self.service))
        self.needs_mail = True

    def on_stop(self) -> None:
        self.client.close()
        super().on_stop()


class Pop3RetrievalUser(Pop3User):
    """Logs in, lists, retrieves and deletes up to ``--fetch-count`` messages, quits.

    A mailbox found with fewer messages than that is topped up (``--top-up``
    messages over SMTP, not measured) before the next visit.
    """

    profile = "pop3"
    default_service = "pop3"

    @task
    def visit(self) -> None:
        s = self.ctx.settings
        if self.needs_mail and s.top_up:
            self.ctx.top_up(self.account, s.top_up)
        client = self.client
        try:
            client.start(username=self.account.username, password=self.account.password)
            count, _ = client.stat()
            client.list()
            client.uidl()
            numbers = list(range(1, min(count, s.fetch_count) + 1))
            for number in numbers:
                client.retr(number)
                if s.delete:
                    client.dele(number)
            client.quit()
            left = count - (len(numbers) if s.delete else 0)
            self.needs_mail = left < s.fetch_count
        except DriverError:
            client.close()


class ImapUser(_MailboxUser):
    """Abstract: an IMAP client of one mailbox."""

    abstract = True
    client: MeasuredImapClient

    def on_start(self) -> None:
        super().on_start()
        self.client = MeasuredImapClient(self.environment, self.ctx.endpoint(self.service))

    def on_stop(self) -> None:
        self.client.close()
        super().on_stop()


class ImapRetrievalUser(ImapUser):
    """Logs in, selects INBOX, reads the oldest ``--fetch-count`` messages, flags them
    \\Seen, deletes them (unless ``--keep-messages``), logs out.

    A mailbox with fewer messages is topped up with ``--top-up`` APPENDs first
    (measured: ``IMAP APPEND``).
    """

    profile = "imap"
    default_service = "imap"

    @task
    def visit(self) -> None:
        s = self.ctx.settings
        client = self.client
        try:
            client.start(username=self.account.username, password=self.account.password)
            box = client.select("INBOX")
            if box.exists < s.fetch_count and s.top_up:
                for _ in range(s.top_up):
                    message = self.ctx.factory.make(self.account.address, [self.account.address])
                    client.append("INBOX", message.data)
            uids = client.search("ALL", uid=True)[: s.fetch_count]
            if uids:
                chosen = ",".join(map(str, uids))
                client.fetch(chosen, "(UID FLAGS RFC822.SIZE BODY.PEEK[])", uid=True)
                client.store(chosen, ["\\Seen"], uid=True)
                if s.delete:
                    client.store(chosen, ["\\Deleted"], uid=True)
                    client.expunge()
            client.logout()
        except DriverError:
            client.close()


class ImapIdleUser(ImapUser):
    """Keeps a connection open in IDLE (RFC 2177), re-issued every ``--idle-time`` seconds.

    Many of these per process are the point: each holds one socket (one file
    descriptor; raise ``ulimit -n``), a TLS session and a small reader buffer,
    and a greenlet. Server pushes during the hold are read and dropped.
    """

    profile = "imap-idle"
    default_service = "imap"
    exclusive = False  # IMAP serves many sessions per mailbox; holders share freely

    @task
    def hold(self) -> None:
        client = self.client
        try:
            if not client.is_connected:
                client.start(username=self.account.username, password=self.account.password)
                client.select("INBOX")
            client.idle()
            client.idle_wait(self.ctx.settings.idle_time, until=_never)
            client.done()
        except DriverError:
            client.close()


def _never(_response: object) -> bool:
    return False


# -- profiles -------------------------------------------------------------------------

PROFILES: dict[str, tuple[type[User], ...]] = {
    "submission": (SubmissionUser,),
    "submissions": (SubmissionsUser,),
    "mx": (MxUser,),
    "pop3": (Pop3RetrievalUser,),
    "imap": (ImapRetrievalUser,),
    "imap-idle": (ImapIdleUser,),
    "mixed": (SubmissionUser, Pop3RetrievalUser, ImapRetrievalUser),
}
"""``--profile`` name -> the user classes it runs."""

MIXED_WEIGHTS: dict[type[User], int] = {
    SubmissionUser: 3,
    Pop3RetrievalUser: 1,
    ImapRetrievalUser: 1,
}


def register_profile(name: str, *user_classes: type[User]) -> None:
    """Make ``--profile name`` run ``user_classes`` (e.g. from ``loadtest.delivery``)."""
    if not user_classes:
        raise ValueError(f"profile {name!r} needs at least one user class")
    PROFILES[name] = tuple(user_classes)


def resolve_profile(spec: str) -> list[type[User]]:
    """``"submission,imap-idle"`` -> the user classes, in order, without repeats.

    Raises:
        ValueError: an unknown profile name (the message lists the known ones).
    """
    classes: list[type[User]] = []
    for name in (part.strip() for part in spec.split(",")):
        if name not in PROFILES:
            known = ", ".join(sorted(PROFILES))
            raise ValueError(f"unknown --profile {name!r}: choose from {known} (or a comma list)")
        classes.extend(c for c in PROFILES[name] if c not in classes)
    return classes


def apply_profile(environment: Environment, spec: str) -> list[type[User]]:
    """Make the profile's classes the environment's user classes; returns them."""
    classes = resolve_profile(spec)
    mixed = "mixed" in {p.strip() for p in spec.split(",")}
    for cls in classes:
        if mixed and cls in MIXED_WEIGHTS:
            cls.weight = MIXED_WEIGHTS[cls]
    environment.user_classes[:] = classes
    return classes


def check_before_start(settings: LoadSettings, worker_count: int) -> list[str]:
    """Problems with the options that would only show once users start, as one-liners."""
    problems: list[str] = []
    if settings.target_file is None:
        problems.append("give --target-file T.yaml (see docs/targets.md)")
        return problems
    try:
        target = load_target(settings.target_file)
    except Exception as exc:
        problems.append(str(exc))
        return problems
    try:
        SizeDistribution.parse(settings.message_size)
    except ValueError as exc:
        problems.append(f"--message-size: {exc}")
    try:
        classes = resolve_profile(settings.profile)
    except ValueError as exc:
        problems.append(str(exc))
        classes = []
    for cls in classes:
        # other modules' users check their own services when they start
        if issubclass(cls, MailUser) and cls.default_service and cls.__module__ == __name__:
            service = settings.services.get(cls.default_service, cls.default_service)
            if service not in target.services:
                have = ", ".join(sorted(target.services))
                problems.append(
                    f"profile {cls.profile!r} needs service {service!r}, which the target lacks "
                    f"(it has: {have})"
                )
    try:
        every: Sequence[Account] = (
            accounts_from_csv(settings.accounts_csv)
            if settings.accounts_csv
            else accounts_from_target(target)
        )
        partition(every, 0, max(worker_count, 1))
    except ValueError as exc:
        problems.append(str(exc))
    return problems
