"""Private Dovecot and Postfix instances on loopback, and a target file for them.

    python -m interop.peers [--dir DIR] [--target FILE] [--keep]

starts both peers from a temporary directory (or DIR), writes a target file in the
format of docs/targets.md, prints it, and stays up until SIGINT or SIGTERM. Tests use
the context manager::

    with running_peers() as peers:
        peers.target_file   # services mx, submission, submissions, pop3, pop3s, imap, imaps

What runs (everything as root, which the peers need to switch users):

- Postfix (``postfix -c <dir>/postfix/etc start``; its own queue, data directory and
  log in the temporary directory, never /etc/postfix or /var/spool/postfix) on
  127.0.0.1: ``mx`` (STARTTLS offered, no AUTH), ``submission`` (STARTTLS required,
  then AUTH PLAIN/LOGIN through Dovecot's auth socket) and ``submissions`` (implicit
  TLS, AUTH). Mail for example.test goes to Maildirs by virtual(8); anything else goes
  to the error(8) transport, so nothing is relayed or looked up.
- Dovecot (``dovecot -F -c <dir>/dovecot/dovecot.conf``; base_dir, state_dir and log
  in the temporary directory) on 127.0.0.2: ``imap`` (STARTTLS), ``imaps``, ``pop3``
  (STLS) and ``pop3s``, reading the Maildirs Postfix writes. Plaintext logins only
  after TLS (``disable_plaintext_auth = yes``). Dovecot treats a client whose address
  equals the server's as secure (plaintext allowed, no LOGINDISABLED), so it listens on
  127.0.0.2 while clients connect from 127.0.0.1.
- One CA and server certificate per run (reference_server.tls), for mail.example.test,
  127.0.0.1 and 127.0.0.2; accounts alice and bob with random passwords;
  postmaster@example.test is an alias of alice.

No name is looked up: host names are set in both configurations (and
DOVECOT_HOSTDOMAIN for Dovecot), Postfix does no client name lookups and has no SMTP
client, and every address is an IP literal.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import grp
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python interop/peers.py` from anywhere
    sys.path.insert(0, str(REPO))

from reference_server.tls import generate_dev_certificates  # noqa: E402

__all__ = [
    "ACCOUNTS",
    "DOMAIN",
    "HOSTNAME",
    "PeerError",
    "Peers",
    "running_peers",
    "versions",
    "why_unavailable",
]

DOMAIN = "example.test"
HOSTNAME = f"mail.{DOMAIN}"
ACCOUNTS = ("alice", "bob")
POSTMASTER = "alice"
POSTFIX_HOST = "127.0.0.1"
# not 127.0.0.1: Dovecot counts a client whose address equals its own as secured
DOVECOT_HOST = "127.0.0.2"
MAIL_USER = "nobody"

# service -> (peer, TLS mode in the target file)
SERVICES: dict[str, tuple[str, str]] = {
    "mx": ("postfix", "starttls"),
    "submission": ("postfix", "starttls"),
    "submissions": ("postfix", "implicit"),
    "pop3": ("dovecot", "starttls"),
    "pop3s": ("dovecot", "implicit"),
    "imap": ("dovecot", "starttls"),
    "imaps": ("dovecot", "implicit"),
}
GREETINGS = {
    "mx": b"220",
    "submission": b"220",
    "submissions": b"220",
    "pop3": b"+OK",
    "pop3s": b"+OK",
    "imap": b"* OK",
    "imaps": b"* OK",
}

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
DOVECOT = "/usr/sbin/dovecot"
DOVECOT_LIBEXEC = Path("/usr/lib/dovecot")


class PeerError(RuntimeError):
    """A peer could not be configured or started; the message carries its log."""


# --- availability and versions --------------------------------------------------------------


def why_unavailable() -> str | None:
    """None when both peers can run here, else why not (with the package to install)."""
    needs = {
        POSTFIX: "postfix",
        POSTCONF: "postfix",
        DOVECOT: "dovecot-core",
        str(DOVECOT_LIBEXEC / "imap"): "dovecot-imapd",
        str(DOVECOT_LIBEXEC / "pop3"): "dovecot-pop3d",
    }
    missing = sorted({pkg for path, pkg in needs.items() if not os.access(path, os.X_OK)})
    if missing:
        return f"not installed: {' '.join(missing)} (bash interop/install.sh)"
    if os.geteuid() != 0:
        return "the private Postfix and Dovecot instances have to be started as root"
    for user in ("postfix", "dovecot", "dovenull", MAIL_USER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"there is no user {user!r} (made by the Debian packages)"
    return None


def versions() -> dict[str, str]:
    """``{"dovecot": "2.3.19.1 (9b53102964)", "postfix": "3.7.11"}`` (installed versions)."""
    env = {**os.environ, "LANG": "C"}
    dovecot = subprocess.run(
        [DOVECOT, "--version"], capture_output=True, text=True, timeout=30, env=env
    )
    postfix = subprocess.run(
        [POSTCONF, "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=30, env=env
    )
    return {"dovecot": dovecot.stdout.strip(), "postfix": postfix.stdout.strip()}


# --- configuration --------------------------------------------------------------------------

POSTFIX_MAIN_CF = """\
# private Postfix instance written by interop/peers.py
compatibility_level = 3.6
queue_directory = {pf}/spool
data_directory = {pf}/data
maillog_file = {pf}/postfix.log
maillog_file_prefixes = {pf}
mail_owner = postfix
setgid_group = postdrop

# names are given, never derived from the host or looked up
myhostname = {hostname}
mydomain = {domain}
myorigin = $mydomain
mydestination =
inet_interfaces = {host}
inet_protocols = ipv4
# no client is trusted by address: the harness connects from 127.0.0.1 as the world would
mynetworks =
append_dot_mydomain = no
biff = no
readme_directory = no
alias_maps =
alias_database =
local_recipient_maps =
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled

# example.test is delivered to Maildirs; nothing is relayed
relayhost =
relay_domains =
default_transport = error:5.3.0 interop instance delivers locally only
relay_transport = error:5.3.0 interop instance delivers locally only
local_transport = error:5.3.0 interop instance delivers locally only
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {vmail}
virtual_mailbox_maps = texthash:{pf}/etc/vmailbox
virtual_alias_maps = texthash:{pf}/etc/virtual
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}

smtpd_banner = $myhostname ESMTP $mail_name
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =
smtpd_recipient_restrictions =
smtpd_relay_restrictions = reject_unauth_destination
# the suites provoke errors on purpose: no tarpit
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 200

smtpd_tls_security_level = may
smtpd_tls_chain_files = {key}, {cert}
smtpd_tls_loglevel = 0
tls_random_source = dev:/dev/urandom
smtpd_sasl_type = dovecot
smtpd_sasl_path = {auth_socket}
smtpd_sasl_auth_enable = no
smtpd_tls_auth_only = yes
smtpd_sasl_security_options = noanonymous
smtp_tls_security_level = none
{rfc_settings}"""

# Settings that switch on behaviour the RFCs ask for where Postfix's default differs;
# `--defaults` leaves them out (docs/interop.md lists what each one changes).
POSTFIX_RFC_SETTINGS = """\
# --- RFC behaviour that is not Postfix's default ---
# RFC 5321 4.1.4: a mail transaction starts after HELO/EHLO (503 before)
smtpd_helo_required = yes
# RFC 5321 2.3.8, 4.1.1.4: only CRLF ends a line; the fix for SMTP smuggling in Postfix < 3.9
smtpd_forbid_bare_newline = yes
# RFC 5321 4.1.2: MAIL FROM and RCPT TO paths in angle brackets, no RFC 822 phrases
strict_rfc821_envelopes = yes
# RFC 5321 3.6.2: "a 550 response SHOULD be returned" when relaying is refused (default 554)
relay_domains_reject_code = 550
"""

# No chroot (that would need copies of /etc files); only the services used. The
# submission entries follow Debian's master.cf template.
POSTFIX_MASTER_CF = """\
# private Postfix instance written by interop/peers.py
{host}:{mx} inet n - n - - smtpd
  -o syslog_name=postfix/mx
{host}:{submission} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
{host}:{submissions} inet n - n - - smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
virtual    unix  - n n -  - virtual
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""

DOVECOT_CONF = """\
# private Dovecot instance written by interop/peers.py
protocols = imap pop3
listen = {host}
base_dir = {dv}/run
state_dir = {dv}/state
log_path = {dv}/dovecot.log
hostname = {hostname}
import_environment = TZ DOVECOT_HOSTDOMAIN={hostname}
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull

ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
# LOGIN, USER/PASS and the PLAIN/LOGIN mechanisms only after TLS (LOGINDISABLED before)
disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_verbose = yes

mail_location = maildir:~/
namespace inbox {{
  inbox = yes
}}
# the suites open several sessions for one account from one address at once
mail_max_userip_connections = 100

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={vmail}/{domain}/%n
}}

service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {imap}
  }}
  inet_listener imaps {{
    address = {host}
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {host}
    port = {pop3}
  }}
  inet_listener pop3s {{
    address = {host}
    port = {pop3s}
    ssl = yes
  }}
}}
service auth {{
  # Postfix's SASL (smtpd_sasl_type = dovecot)
  unix_listener {auth_socket} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
# no authentication penalty and no failure delay: the suites fail logins on purpose, all
# from 127.0.0.1 (the reference server's delay is cut to 0.1 s for `mailharness check`, too)
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{rfc_settings}"""

DOVECOT_RFC_SETTINGS = """\
# --- RFC behaviour that is not Dovecot's default ---
# RFC 1939 4: the maildrop is locked for the session (-ERR [IN-USE] for a second one)
# (a second session gets -ERR [IN-USE] after Dovecot's fixed 10 s wait for the lock)
protocol pop3 {
  pop3_lock_session = yes
}
"""


# --- the peers ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Service:
    host: str
    port: int
    tls: str  # none | starttls | implicit


@dataclasses.dataclass
class Peers:
    """Running peers: where they listen, the accounts, and the files of this run."""

    root: Path
    target_file: Path
    ca_file: Path
    services: dict[str, Service]
    passwords: dict[str, str]  # account -> password
    postfix_log: Path
    dovecot_log: Path

    def describe(self) -> str:
        lines = [f"{'service':<12} {'peer':<8} {'address':<16} tls"]
        for name, svc in self.services.items():
            peer = SERVICES[name][0]
            lines.append(f"{name:<12} {peer:<8} {svc.host}:{svc.port:<6} {svc.tls}")
        return "\n".join(lines)

    def log_tails(self, lines: int = 20) -> str:
        return (
            f"--- {self.postfix_log} ---\n{_tail(self.postfix_log, lines)}\n"
            f"--- {self.dovecot_log} ---\n{_tail(self.dovecot_log, lines)}"
        )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports free on ``host`` now (all held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((host, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def _check_source_address() -> None:
    """Dovecot must see clients on another address than its own (see DOVECOT_HOST)."""
    with socket.socket() as server:
        server.bind((DOVECOT_HOST, 0))
        server.listen(1)
        with socket.create_connection(server.getsockname()[:2], timeout=5) as client:
            source = client.getsockname()[0]
    if source == DOVECOT_HOST:
        raise PeerError(
            f"connections to {DOVECOT_HOST} come from {source} on this machine; Dovecot "
            "would take them as secured and allow plaintext logins before TLS"
        )


def _searchable(path: Path) -> None:
    for parent in path.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            raise PeerError(f"{parent} is not searchable by the peers' users (chmod o+x)")


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "LANG": "C", "DOVECOT_HOSTDOMAIN": HOSTNAME},
    )


def _wait_listening(
    name: str, svc: Service, ca_file: Path, deadline: float, problem: Callable[[], str | None]
) -> None:
    """Return once the service greets (cleartext or over implicit TLS)."""
    prefix = GREETINGS[name]
    last = "no attempt"
    while time.monotonic() < deadline:
        why = problem()
        if why:
            raise PeerError(why)
        try:
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(
                    socket.create_connection((svc.host, svc.port), timeout=3)
                )
                if svc.tls == "implicit":
                    ctx = ssl.create_default_context(cafile=str(ca_file))
                    sock = stack.enter_context(ctx.wrap_socket(sock, server_hostname=HOSTNAME))
                line = sock.recv(512)
                if line.startswith(prefix):
                    return
                last = repr(line[:100])
        except (OSError, ssl.SSLError) as e:
            last = str(e)
        time.sleep(0.1)
    raise PeerError(f"{name} on {svc.host}:{svc.port} did not greet in time ({last})")


def _write_target(
    path: Path, services: dict[str, Service], passwords: dict[str, str], ca: Path
) -> None:
    target = {
        "host": POSTFIX_HOST,
        "domain": DOMAIN,
        "server_name": HOSTNAME,
        "tls": {"verify": True, "ca_file": str(ca)},
        "timeouts": {"connect": 5, "read": 10},
        "services": {
            name: {"port": svc.port, "tls": svc.tls}
            | ({} if svc.host == POSTFIX_HOST else {"host": svc.host})
            for name, svc in services.items()
        },
        "accounts": {
            user: {"address": f"{user}@{DOMAIN}", "username": user, "password": pw}
            for user, pw in passwords.items()
        },
    }
    text = (
        "# Target for private Dovecot and Postfix instances, written by interop/peers.py\n"
        + yaml.safe_dump(target, sort_keys=False, default_flow_style=None, width=100)
    )
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)  # appears whole: a waiting script may read it at once


class _Postfix:
    def __init__(self, pf: Path) -> None:
        self.pf = pf
        self.etc = pf / "etc"
        self.started = False

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return _run([POSTFIX, "-c", str(self.etc), *args], timeout=timeout)

    def start(self) -> None:
        proc = self._postfix("start")
        self.started = True
        if proc.returncode != 0:
            log = _tail(self.pf / "postfix.log")
            raise PeerError(f"postfix start failed:\n{proc.stdout}{proc.stderr}\n{log}")

    def master_pid(self) -> int | None:
        try:
            return int((self.pf / "spool" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def problem(self) -> str | None:
        if not self.started:
            return None
        pid = self.master_pid()
        if pid is not None:
            try:
                os.kill(pid, 0)
                return None
            except ProcessLookupError:
                pass
        return f"the Postfix master is not running\n{_tail(self.pf / 'postfix.log')}"

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        pid = self.master_pid()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._postfix("stop", timeout=30)
        deadline = time.monotonic() + 15
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        if pid is not None:  # `postfix stop` did not end the master we started in time
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class _Dovecot:
    def __init__(self, dv: Path) -> None:
        self.dv = dv
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.dv / "dovecot.out").open("wb") as out:
            self.proc = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.dv / "dovecot.conf")],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "LANG": "C", "DOVECOT_HOSTDOMAIN": HOSTNAME},
            )

    def problem(self) -> str | None:
        if self.proc is None or self.proc.poll() is None:
            return None
        return (
            f"dovecot exited with {self.proc.returncode}\n"
            f"{_tail(self.dv / 'dovecot.out')}\n{_tail(self.dv / 'dovecot.log')}"
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # the master stops its children
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _configure(
    root: Path, rfc_settings: bool
) -> tuple[dict[str, Service], dict[str, str], Path, Path, Path]:
    """Write both configurations, the accounts and the certificate into ``root``."""
    mail = pwd.getpwnam(MAIL_USER)
    uid, gid = mail.pw_uid, mail.pw_gid
    dovecot_gid = grp.getgrnam("dovecot").gr_gid

    certs = generate_dev_certificates(
        root / "tls", [HOSTNAME], ip_addresses=(POSTFIX_HOST, DOVECOT_HOST)
    )
    pf_ports = _free_ports(POSTFIX_HOST, 3)
    dv_ports = _free_ports(DOVECOT_HOST, 4)
    ports = dict(zip(("mx", "submission", "submissions"), pf_ports, strict=True))
    ports |= dict(zip(("pop3", "pop3s", "imap", "imaps"), dv_ports, strict=True))
    services = {
        name: Service(POSTFIX_HOST if peer == "postfix" else DOVECOT_HOST, ports[name], tls)
        for name, (peer, tls) in SERVICES.items()
    }
    passwords = {user: secrets.token_urlsafe(18) for user in ACCOUNTS}

    vmail = root / "vmail"
    for user in ACCOUNTS:
        for sub in ("cur", "new", "tmp"):
            (vmail / DOMAIN / user / sub).mkdir(parents=True)
    for dirpath, _, _ in os.walk(vmail):  # Postfix's virtual(8) and Dovecot both run as MAIL_USER
        os.chown(dirpath, uid, gid)
        os.chmod(dirpath, 0o700)

    auth_socket = root / "auth-postfix"
    pf = root / "postfix"
    (pf / "etc").mkdir(parents=True)
    (pf / "spool").mkdir()
    (pf / "data").mkdir()
    shutil.chown(pf / "data", "postfix")
    (pf / "etc" / "vmailbox").write_text("".join(f"{u}@{DOMAIN} {DOMAIN}/{u}/\n" for u in ACCOUNTS))
    (pf / "etc" / "virtual").write_text(f"postmaster@{DOMAIN} {POSTMASTER}@{DOMAIN}\n")
    (pf / "etc" / "main.cf").write_text(
        POSTFIX_MAIN_CF.format(
            pf=pf,
            hostname=HOSTNAME,
            domain=DOMAIN,
            host=POSTFIX_HOST,
            vmail=vmail,
            uid=uid,
            gid=gid,
            key=certs.key_file,
            cert=certs.cert_file,
            auth_socket=auth_socket,
            rfc_settings=POSTFIX_RFC_SETTINGS if rfc_settings else "",
        )
    )
    (pf / "etc" / "master.cf").write_text(POSTFIX_MASTER_CF.format(host=POSTFIX_HOST, **ports))
    (pf / "postfix.log").touch()

    dv = root / "dovecot"
    (dv / "state").mkdir(parents=True)
    passwd = dv / "passwd"
    passwd.write_text("".join(f"{u}:{{PLAIN}}{pw}::::::\n" for u, pw in passwords.items()))
    os.chown(passwd, 0, dovecot_gid)
    passwd.chmod(0o640)
    (dv / "dovecot.conf").write_text(
        DOVECOT_CONF.format(
            dv=dv,
            host=DOVECOT_HOST,
            hostname=HOSTNAME,
            domain=DOMAIN,
            cert=certs.cert_file,
            key=certs.key_file,
            passwd=passwd,
            uid=uid,
            gid=gid,
            vmail=vmail,
            auth_socket=auth_socket,
            rfc_settings=DOVECOT_RFC_SETTINGS if rfc_settings else "",
            **ports,
        )
    )
    return services, passwords, certs.ca_file, pf, dv


@contextlib.contextmanager
def running_peers(
    directory: Path | None = None,
    target_file: Path | None = None,
    keep: bool = False,
    rfc_settings: bool = True,
) -> Iterator[Peers]:
    """Start Dovecot and Postfix, write the target file, stop both on exit.

    Args:
        directory: an empty or missing directory for this run (default: a new temporary
            directory, removed afterwards unless ``keep``).
        target_file: where to write the target (default: ``<directory>/target.yaml``).
        keep: leave the directory (configuration, logs, Maildirs) after the run.
        rfc_settings: add the settings that switch on RFC behaviour where the peers'
            defaults differ (POSTFIX_RFC_SETTINGS, DOVECOT_RFC_SETTINGS); False runs
            the peers with their defaults there.

    Raises:
        PeerError: a peer cannot run here (see :func:`why_unavailable`) or did not start;
            the message has the end of its log.
    """
    why = why_unavailable()
    if why:
        raise PeerError(why)
    _check_source_address()
    made = directory is None
    root = Path(tempfile.mkdtemp(prefix="mailharness-interop-")) if directory is None else directory
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise PeerError(f"{root} is not empty")
    root.chmod(0o755)  # the postfix, dovecot and nobody users reach their files below
    postfix = _Postfix(root / "postfix")
    dovecot = _Dovecot(root / "dovecot")
    try:
        _searchable(root)
        services, passwords, ca_file, pf, dv = _configure(root, rfc_settings)
        check = _run([DOVECOT, "-c", str(dv / "dovecot.conf"), "-n"])
        if check.returncode != 0:
            raise PeerError(f"dovecot rejects its configuration:\n{check.stderr}")
        dovecot.start()
        postfix.start()

        def problem() -> str | None:
            return dovecot.problem() or postfix.problem()

        deadline = time.monotonic() + 30
        for name, svc in services.items():
            _wait_listening(name, svc, ca_file, deadline, problem)
        target = (target_file or root / "target.yaml").absolute()
        _write_target(target, services, passwords, ca_file)
        yield Peers(
            root=root,
            target_file=target,
            ca_file=ca_file,
            services=services,
            passwords=passwords,
            postfix_log=pf / "postfix.log",
            dovecot_log=dv / "dovecot.log",
        )
    finally:
        try:
            postfix.stop()
        finally:
            dovecot.stop()
            if made and not keep:
                shutil.rmtree(root, ignore_errors=True)


# --- command line ---------------------------------------------------------------------------


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m interop.peers",
        description="Run private Dovecot and Postfix instances on loopback until "
        "SIGINT/SIGTERM, and write a mailharness target file for them.",
    )
    parser.add_argument("--dir", type=Path, help="directory for this run (default: temporary)")
    parser.add_argument("--target", type=Path, help="target file (default: <dir>/target.yaml)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="leave out the settings that switch on RFC behaviour the peers do not have "
        "by default (see docs/interop.md)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    try:
        with running_peers(
            args.dir, args.target, keep=args.keep, rfc_settings=not args.defaults
        ) as peers:
            v = versions()
            print(f"dovecot {v['dovecot']}, postfix {v['postfix']}; files in {peers.root}")
            print(peers.describe())
            print(f"target: {peers.target_file}", flush=True)
            while True:
                signal.pause()
    except KeyboardInterrupt:
        return 0
    except PeerError as e:
        print(f"interop.peers: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
