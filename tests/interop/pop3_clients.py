"""Real POP3 retrieval clients, fetchmail and getmail6, run against a POP3 server on loopback.

Each client gets its own configuration, HOME and state in a test's directory, is bounded by
:data:`RUN_TIMEOUT`, delivers to files (never SMTP), and is configured to verify the
server's certificate against the development CA. See docs/interop.md.

**No name lookups.** Both clients ask for this machine's own name at start-up: fetchmail
6.4 canonicalises an undotted hostname with ``getaddrinfo(AI_CANONNAME)`` (for the
``Received:`` field it writes), getmail6 calls ``socket.getfqdn()`` on import when the
hostname has no dot. Either may become a DNS query. :func:`client_host` therefore starts
every client in a UTS namespace of its own whose hostname is :data:`CLIENT_HOSTNAME` (it
has a dot, so neither client looks anything up); where that is impossible (no
``unshare``, no privilege), it accepts a dotted hostname, or one that ``/etc/hosts``
answers before DNS is asked, and otherwise skips the test. The server is always given
as the IP literal 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

__all__ = [
    "CLIENT_HOSTNAME",
    "RUN_TIMEOUT",
    "ClientHost",
    "ClientRun",
    "Fetchmail",
    "Getmail",
    "Pop3Account",
    "client_host",
    "fetchmail_version",
    "getmail_expected",
    "getmail_maildir",
    "getmail_version",
    "local_user",
    "message_id",
    "require",
    "split_fetchmail_received",
]

RUN_TIMEOUT = 30.0  # seconds for one client run, start to exit
CLIENT_HOSTNAME = "client.test"  # RFC 2606 name the clients see as their own hostname
MDA_SCRIPT = Path(__file__).resolve().parent / "mda_to_dir.py"
DEBIAN_PACKAGES = {"fetchmail": "fetchmail", "getmail": "getmail6", "strace": "strace"}


def require(program: str) -> str:
    """The path of ``program``; skip the test if it is not installed (fail under CI)."""
    path = shutil.which(program)
    if path is None:
        reason = (
            f"{program} is not installed (Debian package {DEBIAN_PACKAGES.get(program, program)};"
            " .ci/run installs it)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must have it", pytrace=False)
        pytest.skip(reason)
    return path


# -- starting a client without name lookups ------------------------------------------------

# Runs in the new UTS namespace: set the hostname, then become the client.
_SET_HOSTNAME_AND_EXEC = (
    "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execvp(sys.argv[2], sys.argv[2:])"
)


@dataclasses.dataclass(frozen=True)
class ClientHost:
    """How clients are started so that they look no name up, and the name they then use."""

    prefix: tuple[str, ...]  # prepended to a client's argv
    name: str  # the client's idea of this machine's name (fetchmail's "Received: ... by NAME")
    private: bool  # a UTS namespace of its own: the client resolves no name at all

    def argv(self, argv: Sequence[str]) -> list[str]:
        return [*self.prefix, *argv]


@functools.cache
def _client_host() -> ClientHost | str:
    unshare = shutil.which("unshare")
    if unshare is not None:
        prefix: tuple[str, ...] = (unshare, "--uts", sys.executable, "-I", "-S", "-c")
        prefix += (_SET_HOSTNAME_AND_EXEC, CLIENT_HOSTNAME)
        probe = subprocess.run(
            [*prefix, "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10
        )
        if probe.returncode == 0:
            return ClientHost(prefix, CLIENT_HOSTNAME, private=True)
    hostname = socket.gethostname()  # uname(2): no lookup
    if "." in hostname:
        return ClientHost((), hostname, private=False)
    canonical = _etc_hosts_canonical(hostname)
    if canonical is not None and _nsswitch_hosts_files_first():
        return ClientHost((), canonical, private=False)
    return (
        f"this machine's hostname {hostname!r} has no dot and is not in /etc/hosts (looked up "
        "before DNS), and no UTS namespace could be made (unshare --uts needs root): "
        "fetchmail and getmail would look the name up in DNS"
    )


def client_host() -> ClientHost:
    """See the module docstring; skips the test when no lookup-free way exists."""
    found = _client_host()
    if isinstance(found, str):
        pytest.skip(found)
    return found


def _etc_hosts_canonical(hostname: str) -> str | None:
    """The official name (first name) of the first /etc/hosts line listing ``hostname``."""
    try:
        text = Path("/etc/hosts").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and hostname.lower() in (f.lower() for f in fields[1:]):
            return fields[1]
    return None


def _nsswitch_hosts_files_first() -> bool:
    try:
        text = Path("/etc/nsswitch.conf").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False  # glibc's default without the file is "dns [!UNAVAIL=return] files"
    for line in text.splitlines():
        key, _, sources = line.split("#", 1)[0].partition(":")
        if key.strip() == "hosts":
            return sources.split()[:1] == ["files"]
    return False


# -- running ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClientRun:
    """One finished client run: its exit status and its log (stdout and stderr merged)."""

    argv: list[str]
    returncode: int
    log: str

    def __str__(self) -> str:
        return f"$ {shlex.join(self.argv)}\n(exit status {self.returncode})\n{self.log}"


def _run(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, wrap: Sequence[str] = ()
) -> ClientRun:
    """Run a client (``wrap`` goes first, e.g. strace), bounded by :data:`RUN_TIMEOUT`."""
    full = [*wrap, *client_host().argv(argv)]
    try:
        proc = subprocess.run(
            full,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.output.decode("utf-8", "replace") if exc.output else ""
        pytest.fail(f"{argv[0]} did not finish within {RUN_TIMEOUT} s:\n{out}", pytrace=False)
    return ClientRun(full, proc.returncode, proc.stdout.decode("utf-8", "replace"))


def _base_env(home: Path) -> dict[str, str]:
    """A small, fixed environment: nothing of the test runner's (venv, proxies) leaks in."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LC_ALL": "C",
        "TZ": "UTC",
    }


def local_user() -> str:
    """This process's user name (fetchmail's local recipient, and the user its MDA runs as)."""
    return pwd.getpwuid(os.geteuid()).pw_name


@dataclasses.dataclass(frozen=True)
class Pop3Account:
    """Where and as whom a client logs in."""

    host: str  # an IP literal
    port: int
    user: str
    password: str
    ca_file: Path  # the CA that signed the server certificate
    cert_name: str  # a DNS name in the server certificate (fetchmail matches names only)


def message_id(message: bytes) -> bytes:
    """The Message-ID field body of ``message`` (test messages all have one)."""
    m = re.search(rb"^Message-ID: *(<[^>\r\n]+>)\r?$", message, re.IGNORECASE | re.MULTILINE)
    assert m is not None, f"no Message-ID in {message[:300]!r}"
    return m.group(1)


# -- fetchmail -------------------------------------------------------------------------------

# The trace field fetchmail 6.4 prepends to each message it delivers (with an MDA, in
# single-drop mode), with the message's own line ends (CRLF here, since "no stripcr").
_FETCHMAIL_RECEIVED = re.compile(
    rb"Received: from (?P<server>[^ \r\n]+) \[(?P<address>[^\]\r\n]+)\]\r\n"
    rb"\tby (?P<by>[^ \r\n]+) with POP3 \(fetchmail-(?P<version>[^)\r\n]+)\)\r\n"
    rb"\tfor <(?P<recipient>[^>\r\n]+)> \(single-drop\); (?P<date>[^\r\n]+)\r\n"
)


def split_fetchmail_received(delivered: bytes) -> tuple[dict[str, str], bytes]:
    """(the fields of fetchmail's leading Received: line, the message after it)."""
    m = _FETCHMAIL_RECEIVED.match(delivered)
    assert m is not None, f"no fetchmail Received: field first in {delivered[:400]!r}"
    fields = {k: v.decode("ascii", "replace") for k, v in m.groupdict().items()}
    return fields, delivered[m.end() :]


def _rc_string(value: str) -> str:
    """A fetchmail rcfile string literal (refusing what would need escapes)."""
    if any(c in value for c in '"\\\n%'):
        raise ValueError(f"not safe in a fetchmail rcfile string: {value!r}")
    return f'"{value}"'


class Fetchmail:
    """fetchmail with an rcfile, HOME, idfile and MDA output directory under ``workdir``.

    ``implicit_tls`` selects ``ssl`` (TLS from the first byte) instead of STLS, which
    ``sslproto`` then makes mandatory. ``keep`` leaves the messages on the server and
    tracks them by UIDL (fetchmail then fetches with ``TOP n 99999999``); otherwise
    ``fetchall`` and ``nokeep`` (RETR, then DELE).
    """

    def __init__(
        self, workdir: Path, account: Pop3Account, *, implicit_tls: bool, keep: bool
    ) -> None:
        self.workdir = workdir
        self.account = account
        self.implicit_tls = implicit_tls
        self.keep = keep
        self.home = workdir / "home"
        self.outdir = workdir / "delivered"
        self.rcfile = workdir / "fetchmailrc"
        self.idfile = workdir / "fetchids"
        self.pidfile = workdir / "fetchmail.pid"
        for d in (self.home, self.outdir):
            d.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.rcfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.rcfile_text())

    def rcfile_text(self) -> str:
        a = self.account
        mda = shlex.join([sys.executable, str(MDA_SCRIPT), str(self.outdir)])
        server_opts = "uidl" if self.keep else "no uidl"
        tls = "ssl " if self.implicit_tls else ""
        retrieval = "keep no fetchall" if self.keep else "no keep fetchall"
        return (
            "# fetchmail run control written by tests/interop/pop3_clients.py\n"
            "set no bouncemail\n"
            "set no syslog\n"
            f"poll {a.host} protocol POP3 service {a.port} timeout 20 {server_opts}\n"
            f"  user {_rc_string(a.user)} there with password {_rc_string(a.password)}"
            f" is {_rc_string(local_user())} here\n"
            f'  {tls}sslproto "TLS1.2+" sslcertck sslcertfile {_rc_string(str(a.ca_file))}'
            f" sslcommonname {_rc_string(a.cert_name)}\n"
            f"  mda {_rc_string(mda)}\n"
            f"  no stripcr no rewrite {retrieval}\n"
        )

    def run(self, *, wrap: Sequence[str] = ()) -> ClientRun:
        """One poll. Exit status 0: mail was fetched; 1: there was none; others: errors."""
        env = _base_env(self.home)
        # as root, fetchmail runs the MDA as this user (and warns about running as root)
        env["FETCHMAILUSER"] = local_user()
        env["FETCHMAILHOME"] = str(self.home)
        argv = [require("fetchmail"), "--verbose", "--nodetach", "-f", str(self.rcfile)]
        argv += ["--idfile", str(self.idfile), "--pidfile", str(self.pidfile)]
        return _run(argv, env=env, cwd=self.workdir, wrap=wrap)

    def delivered(self) -> list[bytes]:
        """What the MDA wrote, in delivery order."""
        return [p.read_bytes() for p in sorted(self.outdir.glob("*.eml"))]


@functools.cache
def fetchmail_version() -> str:
    """e.g. ``6.4.37`` (from ``fetchmail --version``, run like the tests run it)."""
    with tempfile.TemporaryDirectory(prefix="fetchmail-version-") as home:
        run = _run([require("fetchmail"), "--version"], env=_base_env(Path(home)), cwd=Path(home))
    m = re.search(r"^This is fetchmail release ([0-9][^+\s]*)", run.log, re.MULTILINE)
    assert m is not None, str(run)
    return m.group(1)


# -- getmail6 --------------------------------------------------------------------------------


@contextlib.contextmanager
def getmail_maildir(tmp_path: Path) -> Iterator[tuple[Path, str | None]]:
    """An empty Maildir for getmail, and the ``user`` its Maildir destination must name.

    getmail refuses to deliver as root ("refuse to deliver mail as root"); as root its
    destination names an unprivileged user (``nobody``) that it switches to for the
    delivery, and the Maildir is made, owned by that user, in a directory of the system
    temporary directory (pytest's ``tmp_path`` is mode 0700, closed to that user).
    """
    if os.geteuid() != 0:
        maildir = tmp_path / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        yield maildir, None
        return
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root, and there is no user 'nobody' for getmail to deliver as")
    base = Path(tempfile.mkdtemp(prefix="getmail-interop-"))
    try:
        maildir = base / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        for path in (base, maildir, *(maildir / s for s in ("cur", "new", "tmp"))):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        yield maildir, nobody.pw_name
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _ini_value(value: str) -> str:
    if any(c in value for c in "%\n\r") or value != value.strip():
        raise ValueError(f"not safe as a getmail configuration value: {value!r}")
    return value


class Getmail:
    """getmail6 with its getmaildir (rc file, oldmail, message log) under ``workdir``.

    ``implicit_tls``: SimplePOP3SSLRetriever, verifying against the CA (``ca_certs``) and
    the IP address in the certificate; otherwise SimplePOP3Retriever, cleartext (getmail6
    has no STLS). ``delete``: ``delete = true`` and ``read_all = true``; otherwise
    ``delete = false`` and ``read_all = false`` (only messages whose UIDL is not in the
    oldmail file). No Delivered-To: or Received: fields are added.
    """

    def __init__(
        self,
        workdir: Path,
        account: Pop3Account,
        *,
        implicit_tls: bool,
        delete: bool,
        maildir: Path,
        maildir_user: str | None,
    ) -> None:
        self.workdir = workdir
        self.account = account
        self.implicit_tls = implicit_tls
        self.delete = delete
        self.maildir = maildir
        self.maildir_user = maildir_user
        self.home = workdir / "home"
        self.getmaildir = workdir / "getmail"
        for d in (self.home, self.getmaildir):
            d.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.getmaildir / "getmailrc", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.rcfile_text())

    def rcfile_text(self) -> str:
        a = self.account
        lines = [
            "# getmail run control written by tests/interop/pop3_clients.py",
            "[retriever]",
            f"type = {'SimplePOP3SSLRetriever' if self.implicit_tls else 'SimplePOP3Retriever'}",
            f"server = {_ini_value(a.host)}",
            f"port = {a.port}",
            f"username = {_ini_value(a.user)}",
            f"password = {_ini_value(a.password)}",
            "timeout = 20",
        ]
        if self.implicit_tls:
            lines.append(f"ca_certs = {_ini_value(str(a.ca_file))}")
        lines += [
            "",
            "[destination]",
            "type = Maildir",
            f"path = {_ini_value(str(self.maildir))}/",
        ]
        if self.maildir_user is not None:
            lines.append(f"user = {_ini_value(self.maildir_user)}")
        flag = "true" if self.delete else "false"
        lines += [
            "",
            "[options]",
            "verbose = 2",
            f"read_all = {flag}",
            f"delete = {flag}",
            "delivered_to = false",
            "received = false",
            f"message_log = {_ini_value(str(self.getmaildir / 'message.log'))}",
            "",
        ]
        return "\n".join(lines)

    def run(self, *, wrap: Sequence[str] = ()) -> ClientRun:
        """One run. Exit status 0 also when there was nothing to retrieve."""
        argv = [require("getmail"), f"--getmaildir={self.getmaildir}", "--rcfile=getmailrc"]
        return _run(argv, env=_base_env(self.home), cwd=self.workdir, wrap=wrap)

    def delivered(self) -> list[bytes]:
        """The messages in the Maildir's ``new/`` (in no particular order)."""
        return [p.read_bytes() for p in sorted((self.maildir / "new").iterdir())]


def getmail_expected(stored: bytes) -> bytes:
    """What getmail6 (``delivered_to``/``received`` off) writes to a Maildir for ``stored``.

    It always prepends ``Return-Path: <sender>`` (the sender taken from a Return-Path: or
    Sender: field, which it removes, else ``unknown``) and writes the message with the
    platform's line end, LF. It also re-folds header lines over 78 characters (Python's
    ``email`` generator), so the test messages have none.
    """
    assert not re.search(rb"^(Return-Path|Sender):", stored, re.IGNORECASE | re.MULTILINE)
    head = stored.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n")), "getmail would re-fold"
    return b"Return-Path: <unknown>\n" + stored.replace(b"\r\n", b"\n")


@functools.cache
def getmail_version() -> str:
    """e.g. ``6.18.11`` (from ``getmail --version``)."""
    with tempfile.TemporaryDirectory(prefix="getmail-version-") as home:
        run = _run([require("getmail"), "--version"], env=_base_env(Path(home)), cwd=Path(home))
    m = re.search(r"^getmail ([0-9][^\s]*)", run.log, re.MULTILINE)
    assert m is not None, str(run)
    return m.group(1)
