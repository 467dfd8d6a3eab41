"""Shared fixtures: test certificates, scripted and toy servers, the reference server."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import contextlib
import dataclasses
import gc
import imaplib
import os
import poplib
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, settings
from scripted import ScriptedServer, TestCerts, make_test_certs
from toymail import ToyMail

from reference_server.app import MailServer
from reference_server.config import (
    FaultRule,
    ImapSettings,
    Pop3Settings,
    ServerConfig,
    TlsConfig,
)
from reference_server.controller import ServerThread
from reference_server.devsetup import dev_config
from reference_server.tls import resolve_tls_files

# Hypothesis: a loaded 2-core machine must not turn "generation was slow" into a
# failure, every failure prints the blob that reproduces it, and under CI the
# examples are derandomized so a CI run can be repeated exactly.
settings.register_profile("dev", suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def test_certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_test_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def toy() -> ToyMail:
    return ToyMail({"alice": "alice-pw", "bob": "bob-pw"})


class ToyServers:
    """The four toy services of one ToyMail, running; see :meth:`target_yaml`."""

    def __init__(
        self, toy: ToyMail, certs: TestCerts, host: str, smtp_options: dict[str, Any]
    ) -> None:
        self.toy, self.certs, self.host = toy, certs, host
        smtp = toy.smtp_handler(**smtp_options)
        self.smtp = ScriptedServer(smtp, host=host, certs=certs)
        self.submissions = ScriptedServer(smtp, host=host, tls="implicit", certs=certs)
        self.submission = ScriptedServer(
            toy.smtp_handler(**{**smtp_options, "require_auth": True}), host=host, certs=certs
        )
        self.pop3 = ScriptedServer(toy.pop3_handler(), host=host, certs=certs)
        self.imap = ScriptedServer(toy.imap_handler(), host=host, certs=certs)
        self.servers = [self.smtp, self.submissions, self.submission, self.pop3, self.imap]

    def target(self) -> dict[str, Any]:
        accounts = {
            user: {"address": f"{user}@{self.toy.domain}", "username": user, "password": pw}
            for user, pw in self.toy.accounts.items()
        }
        return {
            "host": self.host,
            "domain": self.toy.domain,
            "tls": {"verify": True, "ca_file": str(self.certs.ca_file)},
            "services": {
                "mx": {"port": self.smtp.port, "tls": "starttls"},
                "submissions": {"port": self.submissions.port, "tls": "implicit"},
                "submission": {"port": self.submission.port, "tls": "starttls"},
                "pop3": {"port": self.pop3.port, "tls": "starttls"},
                "imap": {"port": self.imap.port, "tls": "starttls"},
            },
            "accounts": accounts,
        }

    def target_yaml(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.target(), sort_keys=False), encoding="utf-8")
        return path


@pytest.fixture
def toy_servers_factory(toy: ToyMail, test_certs: TestCerts) -> Iterator[Callable[..., ToyServers]]:
    """Start (more) toy service sets: ``toy_servers_factory(host="::1", ehlo_keywords=...)``.

    Keyword arguments other than ``host`` go to :meth:`ToyMail.smtp_handler`. Every set
    started is stopped at teardown (and server-side errors fail the test there).
    """
    with contextlib.ExitStack() as stack:

        def start(*, host: str = "127.0.0.1", **smtp_options: Any) -> ToyServers:
            ts = ToyServers(toy, test_certs, host, smtp_options)
            for srv in ts.servers:
                stack.enter_context(srv)
            return ts

        yield start


@pytest.fixture
def toy_servers(toy_servers_factory: Callable[..., ToyServers]) -> ToyServers:
    """smtp (plain, STARTTLS offered), submissions (implicit TLS), pop3, imap on 127.0.0.1."""
    return toy_servers_factory()


# -- the reference server, for tests/server ----------------------------------------
# Fixtures for black-box tests of the reference SMTP server over real loopback sockets.
#
# ``mail_server`` is a running :class:`~reference_server.controller.ServerThread` on
# 127.0.0.1, port 0, built from :func:`reference_server.devsetup.dev_config` with short
# timeouts and a short AUTH failure delay; ``start_server(...)`` starts more with other
# limits or fault rules. The development setup (accounts, CA, certificate) is made once per
# session; every server gets its own data directory.
#
# Clients never resolve names: smtplib always gets ``local_hostname="client.test"`` and
# an IP literal, and TLS is verified against the development CA.

CLIENT_NAME = "client.test"
IO_TIMEOUT = 5.0  # seconds a test client waits for any one reply

_LAST_LINE = re.compile(rb"^[0-9]{3}(?: [^\r\n]*)?\r\n$")
_ANY_LINE = re.compile(rb"^[0-9]{3}[ -]")


@dataclasses.dataclass(frozen=True)
class SmtpReply:
    """One reply as read from the wire."""

    code: int
    lines: tuple[str, ...]  # text after "250-" / "250 ", per line
    raw: bytes

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        m = re.match(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$)", self.lines[0])
        return m.group(1) if m else None

    def keywords(self) -> dict[str, tuple[str, ...]]:
        """EHLO keywords (upper-cased) and their parameters; line 1 is the greeting."""
        result: dict[str, tuple[str, ...]] = {}
        for line in self.lines[1:]:
            keyword, *params = line.split(" ")
            result[keyword.upper()] = tuple(params)
        return result


class ServerClosed(Exception):
    """The server closed the connection before a complete reply arrived."""


class RawClient:
    """A plain socket speaking bytes, with just enough SMTP reply framing for tests."""

    def __init__(self, host: str, port: int, *, timeout: float = IO_TIMEOUT) -> None:
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    # -- sending ------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str | bytes) -> SmtpReply:
        """Send one command line (CRLF added) and read its reply."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.read_reply()

    def ehlo(self, name: str = CLIENT_NAME) -> SmtpReply:
        reply = self.cmd(f"EHLO {name}")
        assert reply.code == 250, reply
        return reply

    def send_message(
        self,
        content: bytes,
        *,
        sender: str = "sender@remote.test",
        recipients: Sequence[str] = ("alice@example.test",),
    ) -> SmtpReply:
        """MAIL, RCPT..., DATA (each must succeed), then ``content`` and the final dot.

        ``content`` is sent as given (already dot-stuffed) and must end with CRLF.
        Returns the reply to the end of data.
        """
        assert content.endswith(b"\r\n"), "content must end with CRLF"
        reply = self.cmd(f"MAIL FROM:<{sender}>")
        assert reply.code == 250, reply
        for rcpt in recipients:
            reply = self.cmd(f"RCPT TO:<{rcpt}>")
            assert reply.code == 250, reply
        reply = self.cmd("DATA")
        assert reply.code == 354, reply
        self.send(content + b".\r\n")
        return self.read_reply()

    # -- receiving ----------------------------------------------------------------------

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_reply(self) -> SmtpReply:
        """Read one complete (possibly multiline) reply."""
        lines: list[bytes] = []
        while True:
            end = self.buf.find(b"\r\n")
            if end < 0:
                if not self._fill():
                    raise ServerClosed(
                        "the server closed the connection without a complete reply "
                        f"(partial: {b''.join(lines)!r}); see its log for a crashed session"
                    )
                continue
            line, self.buf = self.buf[: end + 2], self.buf[end + 2 :]
            if not _ANY_LINE.match(line) and not _LAST_LINE.match(line):
                raise AssertionError(f"not an SMTP reply line: {line!r}")
            lines.append(line)
            if _LAST_LINE.match(line):
                break
        codes = {int(line[:3]) for line in lines}
        assert len(codes) == 1, f"reply lines disagree on the code: {lines!r}"
        texts = tuple(line[4:-2].decode("utf-8", "replace") for line in lines)
        return SmtpReply(codes.pop(), texts, b"".join(lines))

    def read_replies(self, n: int) -> list[SmtpReply]:
        return [self.read_reply() for _ in range(n)]

    def read_all_until_close(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        data, self.buf = self.buf, b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    # -- TLS and closing ----------------------------------------------------------------

    def starttls(self, context: ssl.SSLContext, server_hostname: str = "127.0.0.1") -> None:
        """Handshake now; bytes already buffered from the server would be an injection."""
        assert self.buf == b"", f"server sent bytes after its STARTTLS reply: {self.buf!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ImapCloser:
    """imaplib's close() is CLOSE (a command); teardown wants the socket shut."""

    def __init__(self, client: imaplib.IMAP4) -> None:
        self.client = client

    def close(self) -> None:
        self.client.shutdown()


class RunningServer:
    """A reference server in a thread, and clients for it that are closed at teardown."""

    def __init__(self, config: ServerConfig, passwords: Mapping[str, str], ca_file: Path) -> None:
        self.config = config
        self.passwords = dict(passwords)
        self.ca_file = ca_file
        self.thread = ServerThread(config)
        self._clients: list[Any] = []
        self._stopped = False

    def start(self) -> RunningServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.thread.stop()

    def close_clients(self) -> None:
        for client in reversed(self._clients):
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()

    def wait_idle(self, timeout: float = 2.0) -> None:
        """Give the server a moment to notice that its clients left (clean TLS closes)."""
        if self._stopped or self.thread.server is None:
            return
        deadline = time.monotonic() + timeout
        while self.thread.server.active_sessions and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.005)

    @property
    def server(self) -> MailServer:
        assert self.thread.server is not None
        return self.thread.server

    def addr(self, listener: str = "mx") -> tuple[str, int]:
        return self.thread.bound[listener]

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    # -- clients ------------------------------------------------------------------------

    def raw(self, listener: str = "mx", *, greeting: bool = True) -> RawClient:
        """A raw socket to ``listener``; with ``greeting`` the 220 is read and checked."""
        host, port = self.addr(listener)
        client = RawClient(host, port)
        self._clients.append(client)
        if greeting:
            reply = client.read_reply()
            assert reply.code == 220, reply
        return client

    def raw_tls(self, listener: str = "submissions", *, greeting: bool = True) -> RawClient:
        """A raw client on an implicit-TLS listener."""
        client = self.raw(listener, greeting=False)
        client.starttls(self.tls_context())
        if greeting:
            reply = client.read_reply()
            assert reply.code == 220, reply
        return client

    def smtp(self, listener: str = "mx", *, ehlo: bool = True) -> smtplib.SMTP:
        host, port = self.addr(listener)
        client = smtplib.SMTP(host, port, local_hostname=CLIENT_NAME, timeout=IO_TIMEOUT)
        self._clients.append(client)
        if ehlo:
            code, _ = client.ehlo()
            assert code == 250
        return client

    def submission(self, user: str = "alice", *, login: bool = True) -> smtplib.SMTP:
        """Submission port after STARTTLS (and AUTH as ``user`` when ``login``)."""
        client = self.smtp("submission")
        code, _ = client.starttls(context=self.tls_context())
        assert code == 220
        client.ehlo()
        if login:
            client.login(user, self.passwords[user])
        return client

    def submissions(self, user: str = "alice", *, login: bool = True) -> smtplib.SMTP_SSL:
        host, port = self.addr("submissions")
        client = smtplib.SMTP_SSL(
            host,
            port,
            local_hostname=CLIENT_NAME,
            timeout=IO_TIMEOUT,
            context=self.tls_context(),
        )
        self._clients.append(client)
        client.ehlo()
        if login:
            client.login(user, self.passwords[user])
        return client

    def pop3(self, user: str | None = None, *, stls: bool = True) -> poplib.POP3:
        """The ``pop3`` listener, after STLS when ``stls``, logged in as ``user`` if given."""
        host, port = self.addr("pop3")
        client = poplib.POP3(host, port, timeout=IO_TIMEOUT)
        self._clients.append(client)
        if stls:
            client.stls(context=self.tls_context())
        if user is not None:
            client.user(user)
            client.pass_(self.passwords[user])
        return client

    def pop3s(self, user: str | None = None) -> poplib.POP3_SSL:
        """The implicit-TLS ``pop3s`` listener, logged in as ``user`` if given."""
        host, port = self.addr("pop3s")
        client = poplib.POP3_SSL(host, port, timeout=IO_TIMEOUT, context=self.tls_context())
        self._clients.append(client)
        if user is not None:
            client.user(user)
            client.pass_(self.passwords[user])
        return client

    def imap(self, user: str | None = None, *, starttls: bool = True) -> imaplib.IMAP4:
        """The ``imap`` listener, after STARTTLS when ``starttls``, logged in if ``user``."""
        host, port = self.addr("imap")
        client = imaplib.IMAP4(host, port, timeout=IO_TIMEOUT)
        self._clients.append(_ImapCloser(client))
        if starttls:
            client.starttls(ssl_context=self.tls_context())
        if user is not None:
            client.login(user, self.passwords[user])
        return client

    def imaps(self, user: str | None = None) -> imaplib.IMAP4_SSL:
        """The implicit-TLS ``imaps`` listener, logged in as ``user`` if given."""
        host, port = self.addr("imaps")
        client = imaplib.IMAP4_SSL(host, port, ssl_context=self.tls_context(), timeout=IO_TIMEOUT)
        self._clients.append(_ImapCloser(client))
        if user is not None:
            client.login(user, self.passwords[user])
        return client

    def track(self, client: Any) -> Any:
        """Close ``client`` (anything with ``close()``) at teardown."""
        self._clients.append(client)
        return client

    # -- storage ------------------------------------------------------------------------

    def deliver(self, user: str, message: bytes) -> str:
        """Store ``message`` durably in ``user``'s Maildir ``new/``; returns the file name."""
        return self.server.store.deliver_sync([user], message)[0]

    @staticmethod
    def split_trace(message: bytes) -> tuple[bytes, bytes]:
        """(the leading Received: field with its folded lines, the rest), past the
        Return-Path: line that final delivery puts first (RFC 5321 §4.4)."""
        m = re.match(
            rb"(?:Return-Path: <[^>\r\n]*>\r\n)?"
            rb"(Received: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)",
            message,
        )
        assert m is not None, f"no leading Received: field in {message[:200]!r}"
        return m.group(1), message[m.end() :]

    def mailbox_new(self, user: str) -> Path:
        return self.config.mail_dir / user / "new"

    def messages(self, user: str) -> list[bytes]:
        """The stored messages in ``user``'s ``new/``, oldest file name first."""
        return [path.read_bytes() for path in self.server.store.list_new(user)]


@pytest.fixture(scope="session")
def dev_setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ServerConfig, dict[str, str], Path]:
    """One development setup (accounts, CA, certificate) shared by every server."""
    base = tmp_path_factory.mktemp("devsetup")
    config, passwords = dev_config(base)
    files = resolve_tls_files(config)
    assert files.ca_file is not None
    tls = TlsConfig(cert_file=files.cert_file, key_file=files.key_file, generate=False)
    return dataclasses.replace(config, tls=tls), passwords, files.ca_file


StartServer = Callable[..., RunningServer]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Finalise dead objects before a failure is formatted.

    A session task that crashed in the server is logged by asyncio ("Task exception was
    never retrieved") only when the garbage collector finalises it. If that happens in
    the middle of pytest's own ``ast.parse`` of the test source, CPython 3.11 raises
    ``SystemError: AST constructor recursion depth mismatch`` (the traceback formatter
    re-enters ``ast.parse``) and the run ends with INTERNALERROR. Collecting first makes
    the failure report (and the server's log of the crash) come out normally.
    """
    if call.excinfo is not None:
        gc.collect()
    return (yield)


def reference_config(
    base_config: ServerConfig,
    data_dir: Path,
    *,
    limits: Mapping[str, Any] | None = None,
    timeouts: Mapping[str, Any] | None = None,
    faults: Sequence[Mapping[str, Any]] = (),
    pop3: Mapping[str, Any] | None = None,
    imap: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """The development config with the test defaults (short timeouts and failure delay),
    and the overrides :func:`start_server` documents."""
    defaults = base_config.limits
    times = dataclasses.replace(
        defaults.timeouts, **{"command": 10.0, "data_block": 10.0, **(timeouts or {})}
    )
    lim = dataclasses.replace(
        defaults,
        **{"auth_failure_delay": 0.05, "timeouts": times, **(limits or {})},
    )
    return dataclasses.replace(
        base_config,
        data_dir=data_dir,
        limits=lim,
        pop3=Pop3Settings(**{"autologout": 30.0, **(pop3 or {})}),
        imap=ImapSettings(**{"autologout": 30.0, **(imap or {})}),
        faults=tuple(FaultRule(**rule) for rule in faults),
    )


def running_server(
    dev_setup: tuple[ServerConfig, dict[str, str], Path], data_dir: Path, **overrides: Any
) -> Iterator[RunningServer]:
    """A server for a module-scoped fixture (``yield from``), stopped at its end;
    ``overrides`` as for :func:`reference_config`."""
    base_config, passwords, ca_file = dev_setup
    srv = RunningServer(reference_config(base_config, data_dir, **overrides), passwords, ca_file)
    srv.start()
    try:
        yield srv
    finally:
        srv.close_clients()
        srv.wait_idle()
        srv.stop()


@pytest.fixture
def start_server(
    dev_setup: tuple[ServerConfig, dict[str, str], Path], tmp_path: Path
) -> Iterator[StartServer]:
    """``start_server(limits={...}, timeouts={...}, faults=[{...}])`` -> a running server.

    ``limits`` and ``timeouts`` override fields of :class:`~reference_server.config.Limits`
    and :class:`~reference_server.config.Timeouts`, ``pop3`` and ``imap`` those of
    :class:`~reference_server.config.Pop3Settings` and ``ImapSettings``; ``faults`` are
    FaultRule keyword dicts.
    ``data_dir`` reuses a directory (a restart over the same Maildirs).
    """
    base_config, passwords, ca_file = dev_setup
    started: list[RunningServer] = []

    def start(
        *,
        limits: Mapping[str, Any] | None = None,
        timeouts: Mapping[str, Any] | None = None,
        faults: Sequence[Mapping[str, Any]] = (),
        pop3: Mapping[str, Any] | None = None,
        imap: Mapping[str, Any] | None = None,
        data_dir: Path | None = None,
    ) -> RunningServer:
        config = reference_config(
            base_config,
            data_dir if data_dir is not None else tmp_path / f"data{len(started)}",
            limits=limits,
            timeouts=timeouts,
            faults=faults,
            pop3=pop3,
            imap=imap,
        )
        srv = RunningServer(config, passwords, ca_file)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        srv.close_clients()
        srv.wait_idle()
        srv.stop()


@pytest.fixture
def mail_server(start_server: StartServer) -> RunningServer:
    """A running reference server with the default test settings."""
    return start_server()
