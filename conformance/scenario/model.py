"""Typed, frozen scenario objects: what the loader produces and the runner reads.

Nothing here parses YAML or touches a socket. Strings that may hold
``{variables}`` are :class:`~conformance.scenario.variables.Template`;
regexes are templates too (variables inside them match literally), and were
compiled once at load time with placeholder values to prove they are valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .._yaml import Located, Position
from .variables import Template

__all__ = [
    "Auth",
    "Close",
    "Connection",
    "Data",
    "Delivery",
    "Expectation",
    "Outbound",
    "Protocol",
    "Requirement",
    "Scenario",
    "Send",
    "Sleep",
    "StartTls",
    "Step",
    "TlsHandshake",
    "Until",
]

DEFAULT_SERVICE = {"smtp": "mx", "pop3": "pop3", "imap": "imap"}
MAIN = "main"


class Protocol(StrEnum):
    SMTP = "smtp"
    POP3 = "pop3"
    IMAP = "imap"


@dataclass(frozen=True)
class Connection:
    """A named connection of a scenario; opened on first use, again after ``close``."""

    name: str
    protocol: Protocol
    service: str


@dataclass(frozen=True)
class Send:
    """Send bytes: a line (CRLF added) or exact bytes (``raw``) repeated ``repeat`` times."""

    text: Template
    raw: bool = False
    repeat: int = 1


@dataclass(frozen=True)
class Data:
    """An SMTP message body: CRLF-normalised, dot-stuffed, then ``CRLF.CRLF``."""

    body: Template


@dataclass(frozen=True)
class StartTls:
    """Ask for TLS (STARTTLS / STLS / tag STARTTLS), expect success, then handshake."""


@dataclass(frozen=True)
class TlsHandshake:
    """Only the handshake: the scenario sent STARTTLS itself (say, pipelined, to test injection).

    ``or_failed``: a handshake the server ends (it closes the connection or sends a TLS
    alert) ends the scenario there, passed.
    """

    or_failed: bool = False


@dataclass(frozen=True)
class Auth:
    """Log in: SASL ``PLAIN``/``LOGIN``, or ``native`` (POP3 USER/PASS, IMAP LOGIN)."""

    mechanism: str
    username: Template
    password: Template
    initial_response: bool = True


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Close:
    """Close our side of the connection."""


@dataclass(frozen=True)
class Outbound:
    """Wait for mail the server under test relays to the harness's sink.

    Without ``attempts``: until the sink has accepted a message for ``to``.
    With ``attempts``: until that many delivery attempts for ``to`` have ended
    (refused at RCPT, deferred or accepted after the data).
    """

    to: Template
    within: float
    attempts: int | None = None


Action = Send | Data | StartTls | TlsHandshake | Auth | Sleep | Close | Outbound


@dataclass(frozen=True)
class Until:
    """Poll: repeat the step's command every ``every`` s until its expectation holds."""

    within: float
    every: float = 0.5


@dataclass(frozen=True)
class Expectation:
    """What the next response must look like. Unset fields are not checked.

    Which fields apply depends on the connection's protocol; the loader
    refuses a field that does not suit it.
    """

    closed: bool = False
    silence: float | None = None
    text: Template | None = None
    or_closed: bool = False  # a close (maybe after a refusal) instead ends the scenario, passed
    # SMTP
    codes: tuple[int, ...] = ()
    reply_class: int | None = None
    enhanced: str | None = None  # may contain "x" wildcards
    lines: tuple[Template, ...] | None = None
    multiline: bool | None = None  # SMTP: reply shape; POP3: response shape override
    ehlo_has: tuple[str, ...] = ()
    ehlo_lacks: tuple[str, ...] = ()
    # POP3
    status_ok: bool | None = None
    resp_code: str | None = None  # POP3 [CODE] or IMAP [CODE]
    body: tuple[Template, ...] | None = None
    body_text: Template | None = None
    # IMAP
    tagged: str | None = None
    tag: Template | None = None
    untagged: tuple[Template, ...] = ()
    untagged_absent: tuple[Template, ...] = ()
    untagged_only: bool = False
    continuation: bool = False
    # POP3 and IMAP: the message retrieved equals this one, below header fields added on top
    message: Template | None = None
    # outbound (mail at the sink): the envelope reverse-path ("" for the null path), and
    # regexes the message must not match
    sender: Template | None = None
    text_absent: tuple[Template, ...] = ()


@dataclass(frozen=True)
class Step:
    index: int  # 0-based position in ``steps``
    position: Position
    conn: str
    action: Action | None
    expect: Expectation | None
    capture: tuple[tuple[str, Template], ...] = ()
    timeout: float | None = None
    note: str | None = None
    until: Until | None = None


@dataclass(frozen=True)
class Requirement:
    """A capability a service must advertise, else the scenario is not applicable."""

    service: str
    capability: str


@dataclass(frozen=True)
class Delivery:
    """A message put into mailboxes over SMTP before the steps run."""

    recipients: tuple[Template, ...]
    sender: Template
    message: Template
    via: str = "mx"
    login_as: str | None = None  # account to AUTH as (needed on submission services)
    count: int = 1


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    path: Path
    protocol: Protocol
    service: str
    connections: dict[str, Connection]
    steps: tuple[Step, ...]
    covers: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    rfc: tuple[str, ...] = ()
    requires: tuple[Requirement, ...] = ()
    setup: tuple[Delivery, ...] = ()
    timeout: float | None = None
    description: str | None = None
    sink: bool = False  # needs the target's outbound sink; not applicable without one
    document: Located | None = field(default=None, compare=False, repr=False)

    @property
    def location(self) -> str:
        pos = self.document.where(()) if self.document else None
        return f"{self.path}:{pos.line}" if pos else str(self.path)

    def services(self) -> set[str]:
        """Every service a run of this scenario may connect to."""
        used = {c.service for c in self.connections.values()}
        used.update(d.via for d in self.setup)
        used.update(r.service for r in self.requires)
        return used
