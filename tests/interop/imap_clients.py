"""A real IMAP sync client, mbsync (Debian package ``isync``), run against an IMAP server
on loopback.

:class:`Mbsync` writes one channel (the far side's INBOX to a local Maildir) with its
configuration, HOME and Maildir under a test's directory, and runs ``mbsync`` bounded by
:data:`RUN_TIMEOUT`, verifying the server's certificate against a given CA only (no
system trust store). See docs/interop.md.

**How mbsync reaches the server.** mbsync 1.4 matches the certificate against DNS names
only (subjectAltName dNSName entries, then the CommonName), never against an IP address:
``Host 127.0.0.1`` fails with "certificate owner does not match hostname 127.0.0.1"
although the certificate lists that address. ``Host`` is therefore the server's DNS name
(``mail.example.test``), which must not be looked up, and the connection is made by a
``Tunnel`` command, :mod:`tcp_relay`, that connects to the IP literal and relays the
bytes: mbsync still does STARTTLS or implicit TLS, verification and IMAP itself, over
the tunnel's pipes (``SSLType`` is given explicitly, since it defaults to ``None`` with
a tunnel).

**No name lookups.** Cyrus SASL, which mbsync uses for AUTHENTICATE, canonicalises this
machine's own hostname with ``getaddrinfo(AI_CANONNAME)`` when it has no dot: a DNS
query unless ``/etc/hosts`` answers first. mbsync is started like fetchmail and getmail6
(:func:`pop3_clients.client_host`: a UTS namespace of its own whose hostname has a dot).

**Progress counters.** mbsync prints its counters (``C: 1/1  B: 1/1  F: +0/0 *0/0 #0/0
N: +0/0 *0/0 #0/0``) only when standard output is a terminal, so it runs on a
pseudo-terminal; :func:`counters` reads the final ones from the log.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pty
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from pop3_clients import RUN_TIMEOUT, ClientRun, client_host

__all__ = [
    "RELAY_SCRIPT",
    "Counters",
    "ImapAccount",
    "Mbsync",
    "counters",
    "imap_commands",
    "mbsync_version",
    "require_mbsync",
    "split_tuid",
]

RELAY_SCRIPT = Path(__file__).resolve().parent / "tcp_relay.py"


def require_mbsync() -> str:
    """The path of ``mbsync``; skip the test if it is not installed (fail under CI)."""
    path = shutil.which("mbsync")
    if path is None:
        reason = "mbsync is not installed (Debian package isync; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must have it", pytrace=False)
        pytest.skip(reason)
    return path


@dataclasses.dataclass(frozen=True)
class ImapAccount:
    """Where and as whom mbsync logs in."""

    host: str  # an IP literal: what the tunnel connects to
    port: int
    user: str
    password: str
    ca_file: Path  # the CA that signed the server certificate
    cert_name: str  # a DNS name in the server certificate: mbsync's Host


# -- running on a pseudo-terminal -------------------------------------------------------------


def _run_on_tty(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float
) -> ClientRun:
    """Run ``argv`` with standard output and error on a new pseudo-terminal, standard
    input from /dev/null; the log is everything written there (CRLF made LF)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([master], [], [], min(left, 1.0))
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if timed_out:
            os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait(timeout=10)
    log = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    if timed_out:
        pytest.fail(
            f"{argv[0]} did not finish within {timeout} s:\n$ {shlex.join(argv)}\n{log}",
            pytrace=False,
        )
    return ClientRun(list(argv), returncode, log)


def _base_env(home: Path) -> dict[str, str]:
    """A small, fixed environment: nothing of the test runner's (venv, proxies) leaks in."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LC_ALL": "C",
        "TZ": "UTC",
        "TERM": "dumb",
    }


# -- mbsync ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Counters:
    """mbsync's final progress counters: (done, total) per kind.

    ``far_*`` are changes made on the far side (the IMAP server), ``near_*`` on the near
    side (the Maildir): ``new`` messages propagated, ``flags`` flag updates, ``deleted``
    messages deleted.
    """

    channels: tuple[int, int]
    boxes: tuple[int, int]
    far_new: tuple[int, int]
    far_flags: tuple[int, int]
    far_deleted: tuple[int, int]
    near_new: tuple[int, int]
    near_flags: tuple[int, int]
    near_deleted: tuple[int, int]

    def changes(self) -> int:
        """How many changes were made, on either side."""
        kinds = [self.far_new, self.far_flags, self.far_deleted]
        kinds += [self.near_new, self.near_flags, self.near_deleted]
        return sum(done for done, _ in kinds)


_COUNTERS = re.compile(
    r"C: (\d+)/(\d+)  B: (\d+)/(\d+)  "
    r"F: \+(\d+)/(\d+) \*(\d+)/(\d+) #(\d+)/(\d+)  "
    r"N: \+(\d+)/(\d+) \*(\d+)/(\d+) #(\d+)/(\d+)"
)


def counters(run: ClientRun) -> Counters:
    """The last progress counters in ``run``'s log."""
    found = _COUNTERS.findall(run.log)
    assert found, f"no progress counters in the log:\n{run}"
    n = [int(x) for x in found[-1]]
    pairs = [(n[i], n[i + 1]) for i in range(0, len(n), 2)]
    return Counters(*pairs)


# mbsync logs each command with the CRLF it sent (and the terminal adds a CR)
_COMMAND = re.compile(r"^(?:\(\d+ in progress\) )?>>> (\d+) (.*?)\r*$", re.MULTILINE)


def imap_commands(run: ClientRun) -> list[str]:
    """The IMAP commands in a ``debug_net`` run's log, in order, without their tags
    (AUTHENTICATE's data shows as ``<authdata>``, LOGIN's as ``<user> <pass>``)."""
    return [m.group(2) for m in _COMMAND.finditer(run.log)]


def _rc_string(value: str) -> str:
    """An mbsync configuration string, quoted (refusing what would need escapes)."""
    if any(c in value for c in '"\\\n\r'):
        raise ValueError(f"not safe in an mbsync configuration string: {value!r}")
    return f'"{value}"'


class Mbsync:
    """mbsync with its configuration, HOME and near-side Maildir under ``workdir``.

    One channel, ``inbox``: the far side's INBOX (``account``, over STARTTLS, or implicit
    TLS with ``implicit_tls``) and the Maildir :attr:`maildir`, ``Sync All`` (new
    messages, flags and deletions, both ways), ``Create Near``, ``Expunge Both``, the
    sync state in the Maildir (``SyncState *``: ``.mbsyncstate``).
    """

    CHANNEL = "inbox"

    def __init__(self, workdir: Path, account: ImapAccount, *, implicit_tls: bool) -> None:
        self.workdir = workdir
        self.account = account
        self.implicit_tls = implicit_tls
        self.home = workdir / "home"
        self.root = workdir / "mail"  # the Maildir store's Path: must exist
        self.maildir = self.root / "INBOX"  # made by mbsync (Create Near)
        self.rcfile = workdir / "mbsyncrc"
        for d in (self.home, self.root):
            d.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.rcfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.rcfile_text())

    def tunnel(self) -> str:
        a = self.account
        return shlex.join([sys.executable, "-I", "-S", str(RELAY_SCRIPT), a.host, str(a.port)])

    def rcfile_text(self) -> str:
        a = self.account
        return "\n".join(
            [
                "# mbsync configuration written by tests/interop/imap_clients.py",
                "IMAPAccount alice",
                f"Host {a.cert_name}",  # for certificate verification only: see the module doc
                f"Tunnel {_rc_string(self.tunnel())}",
                f"User {_rc_string(a.user)}",
                f"Pass {_rc_string(a.password)}",
                f"SSLType {'IMAPS' if self.implicit_tls else 'STARTTLS'}",
                "SSLVersions TLSv1.2 TLSv1.3",
                "SystemCertificates no",
                f"CertificateFile {_rc_string(str(a.ca_file))}",
                "Timeout 20",
                "",
                "IMAPStore far",
                "Account alice",
                "",
                "MaildirStore near",
                f"Path {_rc_string(str(self.root) + '/')}",
                f"Inbox {_rc_string(str(self.maildir))}",
                "",
                f"Channel {self.CHANNEL}",
                "Far :far:",
                "Near :near:",
                "Create Near",
                "Sync All",
                "Expunge Both",
                "SyncState *",
                "",
            ]
        )

    def run(self, *, debug_net: bool = False, wrap: Sequence[str] = ()) -> ClientRun:
        """One sync of the channel, verbose (``-V``); exit status 0 on success.

        ``debug_net``: ``-Dn`` instead, which logs the IMAP dialogue (see
        :func:`imap_commands`) but turns the progress counters off.
        """
        argv = [require_mbsync(), "-Dn" if debug_net else "-V", "-c", str(self.rcfile)]
        argv.append(self.CHANNEL)
        full = [*wrap, *client_host().argv(argv)]
        return _run_on_tty(full, env=_base_env(self.home), cwd=self.workdir, timeout=RUN_TIMEOUT)

    # -- the near side -------------------------------------------------------------------

    def files(self) -> dict[str, Path]:
        """The message files of the near-side Maildir (``new/`` and ``cur/``), by name."""
        return {
            p.name: p
            for sub in ("new", "cur")
            if (self.maildir / sub).is_dir()
            for p in (self.maildir / sub).iterdir()
        }

    def state(self) -> bytes:
        """mbsync's sync state file for the channel."""
        return (self.maildir / ".mbsyncstate").read_bytes()


_NEAR_NAME = re.compile(r"^[^:]+,U=(?P<uid>[1-9][0-9]*):2,(?P<flags>[A-Z]*)$")


def near_uid_and_flags(name: str) -> tuple[int, str]:
    """(the far side's UID, the Maildir flag letters) from a near-side file name.

    mbsync names the files it writes ``<time>.<pid>_<n>.<host>,U=<uid>:2,<flags>``.
    """
    m = _NEAR_NAME.match(name)
    assert m is not None, f"not a file name mbsync writes: {name!r}"
    return int(m.group("uid")), m.group("flags")


# X-TUID: mbsync's transaction id, 12 characters of its random alphabet, with the
# Maildir's line end
_TUID = re.compile(rb"^X-TUID: [A-Za-z0-9+/]{12}\n", re.MULTILINE)


def split_tuid(near: bytes) -> tuple[bytes, bytes]:
    """(the ``X-TUID:`` line mbsync added to the header, the message without it).

    mbsync 1.4 inserts one ``X-TUID:`` field as the last header field of every message
    it copies (it finds copied messages by it when a store cannot report UIDs).
    """
    head_end = near.find(b"\n\n")
    assert head_end >= 0, f"no end of header: {near[:600]!r}"
    found = list(_TUID.finditer(near[: head_end + 1]))
    assert len(found) == 1, f"expected one X-TUID field in the header: {near[:600]!r}"
    m = found[0]
    assert m.end() == head_end + 1, f"X-TUID is not the last header field: {near[:600]!r}"
    return m.group(0), near[: m.start()] + near[m.end() :]


@functools.cache
def mbsync_version() -> str:
    """e.g. ``1.4.4`` (from ``mbsync --version``: ``isync 1.4.4``)."""
    with tempfile.TemporaryDirectory(prefix="mbsync-version-") as home:
        out = subprocess.run(
            [require_mbsync(), "--version"],
            env=_base_env(Path(home)),
            capture_output=True,
            timeout=30,
            check=False,
        )
    text = out.stdout.decode("utf-8", "replace")
    m = re.search(r"^isync ([0-9][^\s]*)", text, re.MULTILINE)
    assert m is not None, text
    return m.group(1)
