"""The reference server's configuration: one YAML file, loaded into frozen dataclasses.

Theory of operation: :func:`load_config` parses the file (:mod:`.configreader`: a loader that
rejects duplicate keys and knows only ``true``/``false`` as booleans), then walks the
plain values section by section. Every value is checked where it is read,
and the first problem becomes a :class:`ConfigError` whose message is one
line naming the file and the key path, and saying how to fix it::

    server.yaml: listeners.submission.port: expected an integer 0-65535, got 'x'

Relative paths in the file are relative to the file's directory, so the
resulting configuration holds absolute paths only. Nothing here touches the
network: listener hosts must be IP literals and the server's own name comes
from ``hostname`` (no reverse lookups, no ``getfqdn``).

See docs/reference-server.md, section "Configuration", for every key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

from .configreader import ConfigError, Reader, is_int, is_ip, parse_yaml_file, show
from .outbound.configsections import parse_queue, parse_relay
from .outbound.settings import QueueSettings, RelaySettings

__all__ = [
    "ConfigError",
    "FaultRule",
    "ImapSettings",
    "Limits",
    "LineLimits",
    "ListenerConfig",
    "ListenerKind",
    "Pop3Settings",
    "ServerConfig",
    "StorageSettings",
    "Timeouts",
    "TlsConfig",
    "TlsMode",
    "load_config",
]


class ListenerKind(StrEnum):
    """The service a listener speaks."""

    MX = "mx"  # SMTP relay (RFC 5321): mail for the local domains only
    SUBMISSION = "submission"  # message submission (RFC 6409), STARTTLS then AUTH
    SUBMISSIONS = "submissions"  # submission over implicit TLS (RFC 8314 §3.3)
    POP3 = "pop3"  # POP3 (RFC 1939), STLS offered (RFC 2595)
    POP3S = "pop3s"  # POP3 over implicit TLS (RFC 8314 §3.3)
    IMAP = "imap"  # IMAP4 (RFC 9051, RFC 3501), STARTTLS offered
    IMAPS = "imaps"  # IMAP over implicit TLS (RFC 8314 §3.3)
    HTTP = "http"  # web access to the mailboxes (HTTP/1.1, RFC 9112; HTTPS, RFC 9110 §4.2.2)


SMTP_KINDS: Final = frozenset({ListenerKind.MX, ListenerKind.SUBMISSION, ListenerKind.SUBMISSIONS})
POP3_KINDS: Final = frozenset({ListenerKind.POP3, ListenerKind.POP3S})
IMAP_KINDS: Final = frozenset({ListenerKind.IMAP, ListenerKind.IMAPS})
HTTP_KINDS: Final = frozenset({ListenerKind.HTTP})


class TlsMode(StrEnum):
    """How a listener offers TLS."""

    NONE = "none"  # cleartext only
    STARTTLS = "starttls"  # cleartext, upgraded on request (RFC 3207)
    IMPLICIT = "implicit"  # TLS from the first byte (RFC 8314)


_DEFAULT_PORT: Final[Mapping[ListenerKind, int]] = {
    ListenerKind.MX: 25,
    ListenerKind.SUBMISSION: 587,  # RFC 6409 §3.1
    ListenerKind.SUBMISSIONS: 465,  # RFC 8314 §7.3
    ListenerKind.POP3: 110,  # RFC 1939 §3
    ListenerKind.POP3S: 995,  # RFC 8314 §7.3
    ListenerKind.IMAP: 143,  # RFC 9051 §2.1
    ListenerKind.IMAPS: 993,  # RFC 8314 §7.3
    ListenerKind.HTTP: 8443,  # unprivileged, beside a web server that may have 443
}
_DEFAULT_TLS: Final[Mapping[ListenerKind, TlsMode]] = {
    ListenerKind.MX: TlsMode.STARTTLS,
    ListenerKind.SUBMISSION: TlsMode.STARTTLS,
    ListenerKind.SUBMISSIONS: TlsMode.IMPLICIT,
    ListenerKind.POP3: TlsMode.STARTTLS,
    ListenerKind.POP3S: TlsMode.IMPLICIT,
    ListenerKind.IMAP: TlsMode.STARTTLS,
    ListenerKind.IMAPS: TlsMode.IMPLICIT,
    ListenerKind.HTTP: TlsMode.IMPLICIT,
}


@dataclass(frozen=True, kw_only=True)
class ListenerConfig:
    """One listening socket. Port 0 means any free port (the OS picks one)."""

    name: str
    kind: ListenerKind
    host: str = "127.0.0.1"
    port: int = 0
    tls: TlsMode = TlsMode.NONE


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """Where the certificate comes from.

    ``cert_file`` and ``key_file`` are used when both exist. When both are
    missing and ``generate`` is true, a development CA and certificate are
    generated into ``<data_dir>/tls/`` (see :func:`reference_server.tls.resolve_tls_files`).
    """

    cert_file: Path
    key_file: Path
    generate: bool = False


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """Seconds of silence the server waits for (RFC 5321 §4.5.3.2)."""

    command: float = 300.0  # next command; server timeout, RFC 5321 §4.5.3.2.7
    data_block: float = 180.0  # next chunk of message text, RFC 5321 §4.5.3.2.5
    data_end: float = 600.0  # storing after the final dot, RFC 5321 §4.5.3.2.6
    # first command after the greeting; None: the command timeout (a server waits at
    # least 5 minutes for a command, RFC 5321 §4.5.3.2.7)
    initial: float | None = None


@dataclass(frozen=True, kw_only=True)
class LineLimits:
    """Longest lines accepted, in octets including the CRLF."""

    command_line: int = 512  # RFC 5321 §4.5.3.1.4
    text_line: int = 1000  # RFC 5321 §4.5.3.1.6


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Resource limits of the server."""

    max_message_size: int = 26_214_400  # octets, announced as SIZE (RFC 1870)
    max_recipients: int = 1000  # per message; at least 100, RFC 5321 §4.5.3.1.8
    max_connections: int = 1000  # concurrent sessions; beyond this, 421
    max_line_length: LineLimits = field(default_factory=LineLimits)
    auth_failure_delay: float = 2.0  # seconds before a 535 answer
    timeouts: Timeouts = field(default_factory=Timeouts)


# RFC 1939 §3: "If a server has an inactivity autologout timer, that timer MUST be
# of at least 10 minutes' duration."
POP3_MIN_AUTOLOGOUT: Final = 600.0


@dataclass(frozen=True, kw_only=True)
class Pop3Settings:
    """How the POP3 listeners behave (docs/reference-server.md, section POP3)."""

    autologout: float = POP3_MIN_AUTOLOGOUT  # seconds without a command, then close (no UPDATE)
    plaintext_auth: bool = False  # USER/PASS and AUTH before STLS on a cleartext listener
    login_delay: int | None = None  # seconds between logins of one user (RFC 2449 §6.5)
    max_auth_failures: int = 5  # failed logins in one session before it is closed


# RFC 9051 §5.4: "If a server has an inactivity autologout timer that applies to
# sessions after authentication, the duration of that timer MUST be at least 30 minutes."
IMAP_MIN_AUTOLOGOUT: Final = 1800.0


@dataclass(frozen=True, kw_only=True)
class ImapSettings:
    """How the IMAP listeners behave (docs/reference-server.md, section IMAP)."""

    autologout: float = IMAP_MIN_AUTOLOGOUT  # seconds without a command after login
    login_timeout: float = 60.0  # seconds to log in after connecting (not bound by §5.4)
    plaintext_auth: bool = False  # LOGIN/AUTHENTICATE before STARTTLS (else LOGINDISABLED)
    max_auth_failures: int = 5  # failed logins in one session before it is closed
    max_line: int = 65536  # octets of a command line, literals excluded
    max_literal: int = 64 * 1024 * 1024  # octets of one literal (APPEND size limit)


@dataclass(frozen=True, kw_only=True)
class StorageSettings:
    """How local deliveries are stored (docs/reference-server.md, section ``storage``)."""

    delivery_process: bool = True  # write Maildirs from a helper process, not the server's
    delivery_threads: int = 8  # deliveries written and fsynced at once


@dataclass(frozen=True, kw_only=True)
class FaultRule:
    """Fault injection for one listener (or ``*``) and one command (or ``*``).

    Commands are upper-case verbs, plus ``CONNECT`` (before the greeting) and
    ``DATA_END`` (after the final dot of DATA). Each rule draws from its own
    ``random.Random(seed)``, so a run can be repeated.
    """

    listener: str = "*"
    command: str = "*"
    delay: float = 0.0  # seconds before answering
    reply_rate: float = 0.0  # share of matching commands answered with `reply`
    reply: str = "451 4.3.0 injected fault"
    drop_rate: float = 0.0  # share of matching commands where the connection is dropped
    seed: int = 0

    @property
    def reply_code(self) -> int:
        """The three-digit code of :attr:`reply`."""
        return int(self.reply[:3])

    @property
    def reply_text(self) -> str:
        """The text of :attr:`reply` after the code."""
        return self.reply[4:]

    def matches(self, listener: str, command: str) -> bool:
        """Whether the rule applies to ``command`` (any case) on ``listener``."""
        return self.listener in ("*", listener) and self.command in ("*", command.upper())


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The whole configuration; paths are absolute."""

    hostname: str
    domains: tuple[str, ...]
    data_dir: Path
    accounts_file: Path
    postmaster: str = "alice"
    tls: TlsConfig
    listeners: Mapping[str, ListenerConfig]
    limits: Limits = field(default_factory=Limits)
    pop3: Pop3Settings = field(default_factory=Pop3Settings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    faults: tuple[FaultRule, ...] = ()
    relay: RelaySettings = field(default_factory=RelaySettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    source: Path | None = None

    @property
    def mail_dir(self) -> Path:
        """Root of the Maildirs: ``<data_dir>/mail/<user>/``."""
        return self.data_dir / "mail"

    @property
    def spool_dir(self) -> Path:
        """The outbound queue."""
        return self.data_dir / "spool"

    @property
    def tls_dir(self) -> Path:
        """Where generated development certificates go."""
        return self.data_dir / "tls"

    @property
    def needs_tls(self) -> bool:
        """Whether any listener offers TLS."""
        return any(lst.tls is not TlsMode.NONE for lst in self.listeners.values())

    def is_local(self, domain: str) -> bool:
        """Whether mail for ``domain`` is delivered here (case-insensitive)."""
        return domain.lower().rstrip(".") in self.domains


_REPLY = re.compile(r"^[45][0-9][0-9](?: [^\r\n]*)?$")  # RFC 5321 §4.2 Reply-line, one line
_VERB = re.compile(r"^[A-Z]{1,20}$")
_SPECIAL_COMMANDS: Final = ("CONNECT", "DATA_END", "*")

# --- the sections ---------------------------------------------------------------------------

_TOP_KEYS: Final = (
    "hostname",
    "domains",
    "data_dir",
    "accounts_file",
    "postmaster",
    "tls",
    "listeners",
    "limits",
    "pop3",
    "imap",
    "storage",
    "faults",
    "relay",
    "queue",
)
_DEFAULT_LISTENERS: Final[Mapping[str, Mapping[str, object]]] = {
    "mx": {"kind": "mx"},
    "submission": {"kind": "submission"},
    "submissions": {"kind": "submissions"},
}


def load_config(path: str | Path) -> ServerConfig:
    """Read and check a server configuration file.

    Args:
        path: the YAML file; relative paths inside it are relative to its directory.

    Returns:
        The configuration, with absolute paths.

    Raises:
        ConfigError: the first problem, as one line naming the file and the key path.
    """
    shown = str(path)
    path = Path(path)
    raw = parse_yaml_file(path, shown)
    r = Reader(shown, path.absolute().parent)
    if raw is None:
        r.fail("", "the file is empty; give at least hostname (e.g. hostname: mail.example.test)")
    top = r.section(raw, "", _TOP_KEYS, "a mapping of settings at the top level")

    if "hostname" not in top:
        r.fail(
            "hostname",
            "missing; give the name used in the greeting and Received headers, "
            "e.g. hostname: mail.example.test",
        )
    hostname = r.domain(top["hostname"], "hostname", "mail.example.test")

    domains_raw = top.get("domains", ["example.test"])
    if not isinstance(domains_raw, list) or not domains_raw:
        r.fail(
            "domains",
            f"expected a list of domain names like [example.test], got {show(domains_raw)}",
        )
    domains: list[str] = []
    for i, item in enumerate(domains_raw):
        name = r.domain(item, f"domains[{i}]", "example.test").lower()
        if name not in domains:
            domains.append(name)

    data_dir = r.path(top.get("data_dir", "./data"), "data_dir")
    accounts_file = r.path(top.get("accounts_file", "./accounts.yaml"), "accounts_file")
    postmaster = r.string(top.get("postmaster", "alice"), "postmaster", "an account name")
    if "@" in postmaster:
        r.fail("postmaster", f"expected an account name (like alice), got {postmaster!r}")

    listeners = _listeners(r, top.get("listeners", _DEFAULT_LISTENERS))
    tls = _tls(r, top.get("tls"), listeners)
    limits = _limits(r, top.get("limits"))
    pop3 = _pop3(r, top.get("pop3"), listeners)
    imap = _imap(r, top.get("imap"), listeners)
    storage = _storage(r, top.get("storage"))
    faults = _faults(r, top.get("faults"), listeners)
    relay = parse_relay(r, top.get("relay"))
    queue = parse_queue(r, top.get("queue"))
    return ServerConfig(
        hostname=hostname,
        domains=tuple(domains),
        data_dir=data_dir,
        accounts_file=accounts_file,
        postmaster=postmaster,
        tls=tls,
        listeners=listeners,
        limits=limits,
        pop3=pop3,
        imap=imap,
        storage=storage,
        faults=faults,
        relay=relay,
        queue=queue,
        source=path.absolute(),
    )


def _listeners(r: Reader, value: object) -> dict[str, ListenerConfig]:
    if value is None or value == {}:
        r.fail("listeners", "no listeners; give at least one, e.g. mx: {kind: mx, port: 25}")
    specs = r.section(value, "listeners", None, "a mapping of listener name to listener")
    kinds = [k.value for k in ListenerKind]
    tls_modes = [m.value for m in TlsMode]
    result: dict[str, ListenerConfig] = {}
    taken: dict[tuple[str, int], str] = {}
    for name, spec_raw in specs.items():
        key = f"listeners.{name}"
        spec = r.section(spec_raw, key, ("kind", "host", "port", "tls"))
        if "kind" in spec:
            kind = ListenerKind(r.choice(spec["kind"], f"{key}.kind", "kind", kinds))
        elif name in kinds:
            kind = ListenerKind(name)
        else:
            r.fail(f"{key}.kind", f"missing; give one of {', '.join(kinds)}")
        host = spec.get("host", "127.0.0.1")
        if not isinstance(host, str) or not is_ip(host):
            r.fail(
                f"{key}.host",
                f"expected an IP address like 127.0.0.1 or ::1 (the server does no DNS lookups), "
                f"got {show(host)}",
            )
        host = str(ipaddress.ip_address(host))
        port = r.integer(spec.get("port", _DEFAULT_PORT[kind]), f"{key}.port", 0, 65535)
        tls = TlsMode(
            r.choice(spec.get("tls", _DEFAULT_TLS[kind].value), f"{key}.tls", "TLS mode", tls_modes)
        )
        implicit_only = (ListenerKind.SUBMISSIONS, ListenerKind.POP3S, ListenerKind.IMAPS)
        if kind in implicit_only and tls is not TlsMode.IMPLICIT:
            r.fail(f"{key}.tls", f"a {kind} listener uses implicit TLS (RFC 8314), got {tls}")
        if kind is ListenerKind.SUBMISSION and tls is TlsMode.NONE:
            r.fail(
                f"{key}.tls",
                "a submission listener needs starttls or implicit (AUTH is offered only over TLS)",
            )
        if kind is ListenerKind.HTTP:
            _check_http_tls(r, key, host, tls)
        if port != 0:
            other = taken.get((host, port))
            if other is not None:
                r.fail(f"{key}.port", f"port {port} on {host} is also used by listener {other!r}")
            taken[(host, port)] = name
        result[name] = ListenerConfig(name=name, kind=kind, host=host, port=port, tls=tls)
    return result


def _check_http_tls(r: Reader, key: str, host: str, tls: TlsMode) -> None:
    """HTTP has no STARTTLS, and cleartext HTTP (passwords, session cookies) stays on loopback."""
    if tls is TlsMode.STARTTLS:
        r.fail(f"{key}.tls", "HTTP has no STARTTLS; use implicit (HTTPS) or none")
    if tls is TlsMode.NONE and not ipaddress.ip_address(host).is_loopback:
        r.fail(
            f"{key}.tls",
            f"an http listener on {host} needs tls: implicit (cleartext HTTP would carry "
            "passwords and session cookies over the network); tls: none is for loopback "
            "addresses (127.0.0.1, ::1) only",
        )


def _tls(r: Reader, value: object, listeners: Mapping[str, ListenerConfig]) -> TlsConfig:
    spec = r.section(value, "tls", ("cert_file", "key_file", "generate"))
    tls = TlsConfig(
        cert_file=r.path(spec.get("cert_file", "./cert.pem"), "tls.cert_file"),
        key_file=r.path(spec.get("key_file", "./key.pem"), "tls.key_file"),
        generate=r.boolean(spec.get("generate", False), "tls.generate"),
    )
    user = next((lst for lst in listeners.values() if lst.tls is not TlsMode.NONE), None)
    if user is None:
        return tls
    have_cert, have_key = tls.cert_file.is_file(), tls.key_file.is_file()
    if have_cert and not have_key:
        r.fail("tls.key_file", f"no such file '{tls.key_file}'; cert_file and key_file go together")
    if have_key and not have_cert:
        r.fail(
            "tls.cert_file", f"no such file '{tls.cert_file}'; cert_file and key_file go together"
        )
    if not have_cert and not tls.generate:
        r.fail(
            "tls.cert_file",
            f"no such file '{tls.cert_file}', and listener {user.name!r} uses tls: {user.tls}; "
            "give cert_file and key_file, or set generate: true for a development certificate",
        )
    return tls


def _limits(r: Reader, value: object) -> Limits:
    known = (
        "max_message_size",
        "max_recipients",
        "max_connections",
        "max_line_length",
        "auth_failure_delay",
        "timeouts",
    )
    spec = r.section(value, "limits", known)
    d = Limits()
    recipients = spec.get("max_recipients", d.max_recipients)
    if is_int(recipients) and recipients < 100:
        r.fail(
            "limits.max_recipients",
            f"expected an integer of at least 100 (RFC 5321 §4.5.3.1.8), got {recipients}",
        )
    lines = r.section(
        spec.get("max_line_length"),
        "limits.max_line_length",
        ("command_line", "text_line"),
        "a mapping like {command_line: 512, text_line: 1000}",
    )
    dl, dt = LineLimits(), Timeouts()
    line_limits = LineLimits(
        # RFC 5321 §4.5.3.1.4: a server must accept command lines of 512 octets
        command_line=r.integer(
            lines.get("command_line", dl.command_line), "limits.max_line_length.command_line", 512
        ),
        # RFC 5321 §4.5.3.1.6: and text lines of 1000 octets
        text_line=r.integer(
            lines.get("text_line", dl.text_line), "limits.max_line_length.text_line", 1000
        ),
    )
    times = r.section(
        spec.get("timeouts"), "limits.timeouts", ("command", "data_block", "data_end", "initial")
    )
    timeouts = Timeouts(
        command=r.positive(times.get("command", dt.command), "limits.timeouts.command"),
        data_block=r.positive(times.get("data_block", dt.data_block), "limits.timeouts.data_block"),
        data_end=r.positive(times.get("data_end", dt.data_end), "limits.timeouts.data_end"),
        initial=(
            r.positive(times["initial"], "limits.timeouts.initial") if "initial" in times else None
        ),
    )
    return Limits(
        max_message_size=r.integer(
            spec.get("max_message_size", d.max_message_size), "limits.max_message_size", 1
        ),
        max_recipients=r.integer(recipients, "limits.max_recipients", 100),
        max_connections=r.integer(
            spec.get("max_connections", d.max_connections), "limits.max_connections", 1
        ),
        max_line_length=line_limits,
        auth_failure_delay=r.number(
            spec.get("auth_failure_delay", d.auth_failure_delay),
            "limits.auth_failure_delay",
            "a number of seconds, 0 or more",
            0.0,
            None,
        ),
        timeouts=timeouts,
    )


def _pop3(r: Reader, value: object, listeners: Mapping[str, ListenerConfig]) -> Pop3Settings:
    spec = r.section(
        value, "pop3", ("autologout", "plaintext_auth", "login_delay", "max_auth_failures")
    )
    d = Pop3Settings()
    autologout = r.positive(spec.get("autologout", d.autologout), "pop3.autologout")
    if autologout < POP3_MIN_AUTOLOGOUT:
        r.fail(
            "pop3.autologout",
            f"expected at least {POP3_MIN_AUTOLOGOUT:g} seconds (RFC 1939 §3: an autologout "
            f"timer MUST be of at least 10 minutes), got {autologout:g}",
        )
    delay = spec.get("login_delay")
    settings = Pop3Settings(
        autologout=autologout,
        plaintext_auth=r.boolean(
            spec.get("plaintext_auth", d.plaintext_auth), "pop3.plaintext_auth"
        ),
        login_delay=None if delay is None else r.integer(delay, "pop3.login_delay", 1),
        max_auth_failures=r.integer(
            spec.get("max_auth_failures", d.max_auth_failures), "pop3.max_auth_failures", 1
        ),
    )
    if not settings.plaintext_auth:
        for lst in listeners.values():
            if lst.kind is ListenerKind.POP3 and lst.tls is TlsMode.NONE:
                r.fail(
                    f"listeners.{lst.name}.tls",
                    "a pop3 listener with tls: none needs pop3.plaintext_auth: true, "
                    "or nobody can log in; use tls: starttls (STLS, RFC 2595)",
                )
    return settings


def _storage(r: Reader, value: object) -> StorageSettings:
    spec = r.section(value, "storage", ("delivery_process", "delivery_threads"))
    d = StorageSettings()
    return StorageSettings(
        delivery_process=r.boolean(
            spec.get("delivery_process", d.delivery_process), "storage.delivery_process"
        ),
        delivery_threads=r.integer(
            spec.get("delivery_threads", d.delivery_threads), "storage.delivery_threads", 1, 256
        ),
    )


def _imap(r: Reader, value: object, listeners: Mapping[str, ListenerConfig]) -> ImapSettings:
    keys = (
        "autologout",
        "login_timeout",
        "plaintext_auth",
        "max_auth_failures",
        "max_line",
        "max_literal",
    )
    spec = r.section(value, "imap", keys)
    d = ImapSettings()
    autologout = r.positive(spec.get("autologout", d.autologout), "imap.autologout")
    if autologout < IMAP_MIN_AUTOLOGOUT:
        r.fail(
            "imap.autologout",
            f"expected at least {IMAP_MIN_AUTOLOGOUT:g} seconds (RFC 9051 §5.4: an autologout "
            f"timer after authentication MUST be at least 30 minutes), got {autologout:g}",
        )
    settings = ImapSettings(
        autologout=autologout,
        login_timeout=r.positive(spec.get("login_timeout", d.login_timeout), "imap.login_timeout"),
        plaintext_auth=r.boolean(
            spec.get("plaintext_auth", d.plaintext_auth), "imap.plaintext_auth"
        ),
        max_auth_failures=r.integer(
            spec.get("max_auth_failures", d.max_auth_failures), "imap.max_auth_failures", 1
        ),
        # RFC 7162 §4 recommends accepting command lines of at least 8192 octets
        max_line=r.integer(spec.get("max_line", d.max_line), "imap.max_line", 8192),
        max_literal=r.integer(spec.get("max_literal", d.max_literal), "imap.max_literal", 1024),
    )
    if not settings.plaintext_auth:
        for lst in listeners.values():
            if lst.kind is ListenerKind.IMAP and lst.tls is TlsMode.NONE:
                r.fail(
                    f"listeners.{lst.name}.tls",
                    "an imap listener with tls: none needs imap.plaintext_auth: true, "
                    "or nobody can log in; use tls: starttls (RFC 9051 §6.2.1)",
                )
    return settings


def _faults(
    r: Reader, value: object, listeners: Mapping[str, ListenerConfig]
) -> tuple[FaultRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        r.fail("faults", f"expected a list of fault rules, got {show(value)}")
    known = ("listener", "command", "delay", "reply_rate", "reply", "drop_rate", "seed")
    d = FaultRule()
    rules: list[FaultRule] = []
    for i, item in enumerate(value):
        key = f"faults[{i}]"
        spec = r.section(item, key, known)
        listener = r.string(spec.get("listener", "*"), f"{key}.listener", "a listener name or '*'")
        smtp_names = [n for n, lst in listeners.items() if lst.kind in SMTP_KINDS]
        if listener != "*" and listener not in smtp_names:
            names = ", ".join(smtp_names)
            what = "is not an SMTP listener" if listener in listeners else "does not exist"
            r.fail(
                f"{key}.listener",
                f"listener {listener!r} {what} (faults apply to SMTP listeners); "
                f"expected one of {names} or '*'",
            )
        command_raw = spec.get("command", "*")
        command = command_raw.upper() if isinstance(command_raw, str) else ""
        if not (_VERB.match(command) or command in _SPECIAL_COMMANDS):
            r.fail(
                f"{key}.command",
                f"expected a command verb (like RCPT), CONNECT, DATA_END or '*', "
                f"got {show(command_raw)}",
            )
        reply = spec.get("reply", d.reply)
        if not isinstance(reply, str) or not _REPLY.match(reply):
            r.fail(
                f"{key}.reply",
                f'expected a reply with a 4xx or 5xx code, like "{d.reply}", got {show(reply)}',
            )
        rate = "a number from 0 to 1"
        rule = FaultRule(
            listener=listener,
            command=command,
            delay=r.number(
                spec.get("delay", d.delay),
                f"{key}.delay",
                "a number of seconds, 0 or more",
                0,
                None,
            ),
            reply_rate=r.number(spec.get("reply_rate", 0), f"{key}.reply_rate", rate, 0, 1),
            reply=reply,
            drop_rate=r.number(spec.get("drop_rate", 0), f"{key}.drop_rate", rate, 0, 1),
            seed=r.integer(spec.get("seed", d.seed), f"{key}.seed", 0),
        )
        if rule.delay == 0 and rule.reply_rate == 0 and rule.drop_rate == 0:
            r.fail(key, "this rule does nothing; give delay, reply_rate or drop_rate")
        rules.append(rule)
    return tuple(rules)
