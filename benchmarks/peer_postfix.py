"""A private Postfix instance for benchmarks: loopback only, no DNS, delivers to Maildir.

Everything lives under one directory (config, queue, data, mailboxes, log), so it
never touches the system instance in /etc/postfix and /var/spool/postfix:

    with PostfixPeer(root, port) as pf:      # writes main.cf/master.cf, `postfix -c ... start`
        ...                                  # SMTP on 127.0.0.1:port
        pf.wait_drained(timeout=60)
        pf.delivered()                       # files in the Maildir's new/ and cur/
    # `postfix -c ... stop` on exit, even after an error

Mail for bench@example.test goes to a virtual mailbox domain (virtual(8), Maildir,
delivered as the unprivileged `nobody`); every other destination, and every
local one, goes to the error(8) transport, so nothing is ever looked up or
relayed. The SMTP server does no client name lookups and has its rate limits,
error sleeps and inflow throttling switched off, so the benchmark measures
acceptance, not Postfix's defences.

Postfix answers 250 to DATA once cleanup(8) has written and fsynced the queue
file (its durability promise); virtual(8) writes the Maildir copy afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"

# Queue directories whose files are messages not yet delivered.
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop

# names are given, never derived from the host or the resolver
myhostname = mx.postfix.example.test
mydomain = example.test
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks_style = host
mynetworks = 127.0.0.0/8
append_dot_mydomain = no
biff = no
readme_directory = no
alias_maps =
alias_database =
local_recipient_maps =

# no DNS anywhere, and nothing but the virtual mailbox domain is delivered
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
relayhost =
relay_domains =
default_transport = error:5.3.0 benchmark instance delivers locally only
relay_transport = error:5.3.0 benchmark instance delivers locally only
local_transport = error:5.3.0 benchmark instance delivers locally only

virtual_mailbox_domains = example.test
virtual_mailbox_base = {root}/vmail
virtual_mailbox_maps = texthash:{root}/etc/vmailbox
virtual_alias_maps =
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}

# acceptance, not defences: no restrictions beyond the relay check, no throttling
smtpd_banner = $myhostname ESMTP
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =
smtpd_recipient_restrictions =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_client_connection_rate_limit = 0
smtpd_client_connection_count_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
default_process_limit = 100
in_flow_delay = 0s
smtpd_tls_security_level = none
smtp_tls_security_level = none
"""

# No chroot (a chroot would need copies of /etc files); only the services used.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
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


def postfix_version() -> str:
    out = subprocess.run(
        [POSTCONF, "-d", "-h", "mail_version"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def available() -> str | None:
    """None when a private instance can be run here, else why not."""
    if not Path(POSTFIX).exists():
        return "postfix is not installed (run benchmarks/setup_peers.sh)"
    if os.geteuid() != 0:
        return "a Postfix instance has to be started as root"
    return None


class PostfixPeer:
    def __init__(self, root: Path, port: int, recipient: str = "bench@example.test") -> None:
        self.root = root
        self.port = port
        self.recipient = recipient
        self.etc = root / "etc"
        self.spool = root / "spool"
        self.maildir = root / "vmail" / "example.test" / recipient.split("@")[0]
        self.log = root / "postfix.log"
        self.started = False

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.etc), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LANG": "C"},
        )

    def start(self) -> None:
        nobody = pwd.getpwnam("nobody")
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the postfix user must be able to reach its queue
        for parent in self.root.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise RuntimeError(f"{parent} is not searchable by the postfix user (chmod o+x)")
        self.etc.mkdir(parents=True)
        self.spool.mkdir()
        (self.root / "data").mkdir()
        shutil.chown(self.root / "data", "postfix")
        vmail = self.root / "vmail"
        vmail.mkdir()
        os.chown(vmail, nobody.pw_uid, nobody.pw_gid)
        user = self.recipient.split("@")[0]
        (self.etc / "vmailbox").write_text(f"{self.recipient} example.test/{user}/\n")
        (self.etc / "main.cf").write_text(
            MAIN_CF.format(root=self.root, uid=nobody.pw_uid, gid=nobody.pw_gid)
        )
        (self.etc / "master.cf").write_text(MASTER_CF.format(port=self.port))
        self.log.touch()
        proc = self._postfix("start")
        self.started = True
        if proc.returncode != 0:
            log = self.log_tail(20)
            fatal = [line for line in log.splitlines() if "fatal:" in line]
            first = fatal[0].split("fatal:", 1)[1].strip() if fatal else f"exit {proc.returncode}"
            raise RuntimeError(f"postfix start failed: {first}\n{proc.stdout}{proc.stderr}\n{log}")

    def master_pid(self) -> int | None:
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        pid = self.master_pid()
        self._postfix("stop", timeout=30)
        deadline = time.monotonic() + 15
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        if pid is not None:
            # `postfix stop` did not end it in time: end the master we started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def queued(self) -> int:
        """Messages in the queue that are not delivered (or bounced) yet."""
        n = 0
        for q in QUEUES:
            for _, _, files in os.walk(self.spool / q):
                n += len(files)
        return n

    def delivered(self) -> int:
        return sum(
            len(os.listdir(self.maildir / sub))
            for sub in ("new", "cur")
            if (self.maildir / sub).is_dir()
        )

    def wait_drained(self, timeout: float) -> bool:
        """Wait (bounded) until the queue is empty; True when it is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queued() == 0:
                return True
            time.sleep(0.1)
        return self.queued() == 0

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def problems(self, lines: int = 10) -> str:
        """The last warnings, errors and rejections in the instance's log."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        keys = ("warning:", "fatal:", "error:", "panic:", "reject:", "status=bounced")
        hits = [line for line in text.splitlines() if any(k in line for k in keys)]
        return "\n".join(hits[-lines:])

    def __enter__(self) -> PostfixPeer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
