"""Benchmark: IMAP reads of a large Maildir, mailharness vs Dovecot.

Both servers serve the same content: a Maildir of N messages (default 10,000; 2 to 10
KB each, realistic headers, three in four \\Seen) for user ``bench``, and the first
1,000 of them for user ``bench1k``, built once and copied byte for byte to each
server's place. The client is Python's imaplib, in this process, over cleartext IMAP on
127.0.0.1 (no TLS on either side). Per peer it measures:

- ``session``: connect, greeting, LOGIN, SELECT INBOX and
  ``FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)`` over all N messages;
- ``bodies``: ``FETCH 1:* (BODY.PEEK[])`` in that session (every message whole);
- ``search``: ``SEARCH UNSEEN`` in that session;
- ``session-1k``: connect, LOGIN, SELECT and ``FETCH 1:* (FLAGS RFC822.SIZE)`` for
  ``bench1k`` (the issue quotes about 16 ms for Dovecot there).

Warm runs: one warm-up round, then the median of ``--rounds`` (5), the peers taking
turns in rotating order within each round. Each answer is checked (message count,
RFC822.SIZE, the bodies byte for byte by hash, the UNSEEN count). Goal (issue 6):
mailharness within 2x of Dovecot's time. ``--profile DIR`` then samples the reference
server with py-spy while it repeats each operation and prints where its time goes.

Peers:

- dovecot: ``dovecot -F -c <tmp>/dovecot.conf``, a private instance (base_dir,
  state_dir and log in the temporary directory), passwd-file with a ``{PLAIN}``
  password (``--dovecot-scheme`` for a hashed one), ``mail_location = maildir:~``,
  ``ssl = no``, mail processes as ``nobody``, internal processes as ``dovecot`` and
  ``dovenull``. No name lookups: ``hostname`` is set, and DOVECOT_HOSTDOMAIN is given
  through ``import_environment`` (otherwise the master calls gethostbyname() on this
  machine's name).
- mailharness: ``python -m reference_server --config <tmp>/server.yaml`` with one
  ``imap`` listener (``tls: none``, ``imap.plaintext_auth: true``); the account's
  password is an scrypt hash (the only kind it has).

    apt-get install dovecot-imapd         # once (Debian package; the script runs as root)
    .venv/bin/python benchmarks/bench_imap.py [--messages 10000] [--rounds 5]
        [--only dovecot,mailharness] [--json out.json] [--profile DIR]

Traffic goes to 127.0.0.1 only, nothing is looked up in DNS, and every client socket
operation is bounded by --io-timeout.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import email.utils
import hashlib
import imaplib
import importlib.util
import json
import os
import platform
import pwd
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procs
from procs import free_port, reference_server, tail, wait_for_greeting

REPO = Path(__file__).resolve().parent.parent
PEERS = ("dovecot", "mailharness")
BASELINE = "dovecot"
USER, USER_1K = "bench", "bench1k"
PASSWORD = "bench-password"
HOSTNAME = "mail.example.test"
DOMAIN = "example.test"
GOAL = 2.0  # mailharness within 2x of Dovecot's time

OPS = {
    "session": "connect + LOGIN + SELECT + FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)",
    "bodies": "FETCH 1:* (BODY.PEEK[]) in that session",
    "search": "SEARCH UNSEEN in that session",
    "session-1k": "connect + LOGIN + SELECT + FETCH 1:* (FLAGS RFC822.SIZE), 1,000 messages",
}
PHASES = ("connect", "login", "select", "fetch")


# --- the mail ----------------------------------------------------------------------------

PEOPLE = [
    ("Ana Lima", "ana.lima@remote.test"),
    ("Björn Østergaard", "bjorn@lists.remote.test"),
    ("Chen Wei", "chen.wei@corp.test"),
    ("Dana Scully", "dana@fbi.test"),
    ("Émile Zola", "emile@lettres.test"),
    ("Farah Haddad", "farah.haddad@univ.test"),
    ("GitHub", "notifications@code.test"),
    ("Hiro Tanaka", "hiro@tanaka.test"),
    ("Release Bot", "noreply@ci.test"),
]
TOPICS = [
    "Quarterly report draft",
    "Meeting notes: storage layer",
    "Invoice 2026-0042",
    "[dev] Patch v3: fix UID reuse after crash",
    "Your order has shipped",
    "Lunch on Friday?",
    "Build failed: main #4711",
    "Re: holiday schedule",
    "Café in Zürich — Grüße",
    "Security advisory for imapd",
]
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "or",
    "from",
    "at",
    "which",
    "an",
    "have",
    "not",
    "but",
    "they",
    "his",
    "her",
    "all",
    "were",
    "there",
    "can",
    "been",
    "one",
    "had",
    "has",
    "more",
    "will",
    "would",
    "message",
    "server",
    "mailbox",
    "index",
    "storage",
    "client",
    "protocol",
    "folder",
    "request",
    "session",
]


def encoded_word(text: str) -> str:
    """An RFC 2047 Q encoded-word for non-ASCII text (else the text itself)."""
    if text.isascii():
        return text
    q = "".join(
        c
        if c.isascii() and c.isalnum()
        else "_"
        if c == " "
        else "".join(f"={b:02X}" for b in c.encode())
        for c in text
    )
    return f"=?UTF-8?Q?{q}?="


def text_lines(rng: random.Random, size: int) -> list[str]:
    """Lines of words (up to 72 characters) adding up to about ``size`` octets."""
    lines, total = [], 0
    while total < size:
        line = ""
        while len(line) < rng.randint(40, 72):
            line += rng.choice(WORDS) + " "
        lines.append(line.rstrip())
        if rng.random() < 0.08:
            lines.append("")
        total += len(line) + 2
    return lines


def make_message(rng: random.Random, n: int, when: float) -> bytes:
    """Message ``n``: trace fields, the usual headers, plain or multipart/alternative text,
    2 to 10 KB in all, CRLF line ends (as the reference server stores what SMTP gave it)."""
    name, addr = rng.choice(PEOPLE)
    date = email.utils.formatdate(when, usegmt=True)
    topic = rng.choice(TOPICS)
    subject = ("Re: " if rng.random() < 0.3 else "") + topic
    mid = f"<{n}.{rng.getrandbits(40):010x}@{addr.split('@')[1]}>"
    head = [
        f"Return-Path: <{addr}>",
        f"Received: from mx{rng.randint(1, 4)}.{addr.split('@')[1]} "
        f"(mx.{addr.split('@')[1]} [192.0.2.{rng.randint(1, 254)}])",
        f"\tby {HOSTNAME} with ESMTPS id {rng.getrandbits(48):012x}",
        f"\tfor <{USER}@{DOMAIN}>; {date}",
        f"Date: {date}",
        f"From: {encoded_word(name)} <{addr}>",
        f"To: Bench User <{USER}@{DOMAIN}>",
    ]
    if rng.random() < 0.3:
        others = rng.sample(PEOPLE, 2)
        head.append("Cc: " + ", ".join(f'"{encoded_word(a)}" <{b}>' for a, b in others))
    head += [f"Subject: {encoded_word(subject)}", f"Message-ID: {mid}"]
    if subject.startswith("Re: "):
        ref = f"<{max(0, n - rng.randint(1, 50))}.parent@{addr.split('@')[1]}>"
        head += [f"In-Reply-To: {ref}", f"References: {ref}"]
    if "[dev]" in topic:
        head.append("List-Id: Developers <dev.lists.remote.test>")
    head += ["MIME-Version: 1.0", "X-Mailer: BenchMail 1.0"]
    size = rng.randint(2048, 10240) - sum(len(h) + 2 for h in head) - 200
    if rng.random() < 0.3:
        boundary = f"b{rng.getrandbits(64):016x}"
        head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        plain = text_lines(rng, max(size // 2, 200))
        html = ["<html><body>"] + [f"<p>{ln}</p>" for ln in plain if ln] + ["</body></html>"]
        body = [
            f"--{boundary}",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
            "",
            *plain,
            f"--{boundary}",
            "Content-Type: text/html; charset=utf-8",
            "",
            *html,
            f"--{boundary}--",
        ]
    else:
        head += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
        body = text_lines(rng, max(size, 200))
    return ("\r\n".join([*head, "", *body]) + "\r\n").encode()


@dataclass
class Mailbox:
    """One user's Maildir as built: what a correct server must answer."""

    path: Path
    count: int = 0
    unseen: int = 0
    sizes: list[int] = field(default_factory=list)
    digests: collections.Counter[bytes] = field(default_factory=collections.Counter)

    def add(self, data: bytes, seen: bool) -> None:
        self.count += 1
        self.unseen += not seen
        self.sizes.append(len(data))
        self.digests[hashlib.sha256(data).digest()] += 1


def build_maildirs(base: Path, n: int, small: int, seed: int) -> dict[str, Mailbox]:
    """Maildirs for USER (n messages) and USER_1K (the first ``small`` of them), with
    Dovecot-style file names (``,S=`` and ``,W=`` sizes), mtime = the Date: field. Three
    in four are \\Seen (some also \\Answered or \\Flagged, in cur/); of the unseen, half
    are in new/ and half in cur/."""
    rng = random.Random(seed)
    boxes = {USER: Mailbox(base / USER), USER_1K: Mailbox(base / USER_1K)}
    for box in boxes.values():
        for sub in ("cur", "new", "tmp"):
            (box.path / sub).mkdir(parents=True)
    start = 1_767_225_600  # 2026-01-01
    for i in range(n):
        when = start + i * 3000 + rng.randint(0, 2999)
        data = make_message(rng, i, when)
        seen = rng.random() < 0.75
        flags = ""
        if seen:
            flags = "".join(
                sorted(
                    "S" + ("F" if rng.random() < 0.1 else "") + ("R" if rng.random() < 0.2 else "")
                )
            )
        elif rng.random() < 0.1:
            flags = "F"
        base_name = (
            f"{when}.M{i % 1000000:06d}P4242Q{i + 1}.bench.example.test,S={len(data)},W={len(data)}"
        )
        if not seen and rng.random() < 0.5 and flags == "":
            sub, name = "new", base_name
        else:
            sub, name = "cur", f"{base_name}:2,{flags}"
        for user, box in boxes.items():
            if user == USER_1K and i >= small:
                continue
            path = box.path / sub / name
            path.write_bytes(data)
            os.utime(path, (when, when))
            box.add(data, seen)
    return boxes


# --- the peers -----------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    pid: int  # the process to profile (mailharness) or the master (dovecot)
    log: Path


def wait_for_imap(port: int, timeout: float, alive: Callable[[], bool]) -> None:
    """Return once 127.0.0.1:port greets with ``* OK`` (bounded by timeout)."""
    wait_for_greeting(
        port, timeout, alive, prefix=b"* OK", goodbye=b"a LOGOUT\r\n", protocol="IMAP"
    )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    procs.stop_process(proc, 15)


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot",) if os.access(p, os.X_OK)), None
    )


def why_unavailable(peer: str) -> str | None:
    if peer == "dovecot":
        if dovecot_binary() is None:
            return "dovecot is not installed (apt-get install dovecot-imapd)"
        if not os.path.exists("/usr/lib/dovecot/imap"):
            return "dovecot's imap server is not installed (apt-get install dovecot-imapd)"
        if os.geteuid() != 0:
            return "a private Dovecot instance that switches users needs root"
        for user in ("dovecot", "dovenull", "nobody"):
            try:
                pwd.getpwnam(user)
            except KeyError:
                return f"there is no user {user!r} (made by the dovecot-core package)"
        return None
    if peer == "mailharness":
        if importlib.util.find_spec("reference_server") is None:
            return "`python -m reference_server` is not available (pip install -e .)"
        return None
    return f"unknown peer {peer}"


def dovecot_password(scheme: str) -> str:
    if scheme == "PLAIN":
        return "{PLAIN}" + PASSWORD
    out = subprocess.run(
        ["doveadm", "pw", "-s", scheme, "-p", PASSWORD],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


@contextlib.contextmanager
def run_dovecot(work: Path, source: Path, scheme: str) -> Iterator[Server]:
    port = free_port()
    mail = work / "mail"
    shutil.copytree(source, mail, symlinks=True)
    nobody = pwd.getpwnam("nobody")
    for dirpath, dirnames, filenames in os.walk(mail):
        for name in [".", *dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), nobody.pw_uid, nobody.pw_gid)
    for d in (work, mail):
        d.chmod(0o755)
    passwd = work / "passwd"
    hashed = dovecot_password(scheme)
    passwd.write_text("".join(f"{u}:{hashed}::::::\n" for u in (USER, USER_1K)))
    log = work / "dovecot.log"
    conf = work / "dovecot.conf"
    conf.write_text(
        f"""# private Dovecot instance written by benchmarks/bench_imap.py
protocols = imap
listen = 127.0.0.1
base_dir = {work}/run
state_dir = {work}/state
log_path = {log}
hostname = {HOSTNAME}
import_environment = TZ DOVECOT_HOSTDOMAIN={HOSTNAME}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = no
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
mail_location = maildir:~
passdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid={nobody.pw_uid} gid={nobody.pw_gid} home={mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""
    )
    (work / "state").mkdir()
    with (work / "dovecot.out").open("wb") as out:
        proc = subprocess.Popen(
            [str(dovecot_binary()), "-F", "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        try:
            wait_for_imap(port, 30, lambda: proc.poll() is None)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{tail(work / 'dovecot.out')}\n{tail(log)}") from None
        yield Server(port, proc.pid, log)
    finally:
        stop_process(proc)


@contextlib.contextmanager
def run_mailharness(work: Path, source: Path) -> Iterator[Server]:
    port = free_port()
    data = work / "data"
    shutil.copytree(source, data / "mail", symlinks=True)
    hashed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from reference_server.auth import hash_password; "
            "print(hash_password(sys.argv[1]))",
            PASSWORD,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    ).stdout.strip()
    accounts = work / "accounts.yaml"
    accounts.write_text(
        "accounts:\n"
        + "".join(
            f"  {u}:\n    password: {json.dumps(hashed)}\n    addresses: [{u}@{DOMAIN}]\n"
            for u in (USER, USER_1K)
        )
    )
    config = work / "server.yaml"
    config.write_text(
        f"hostname: {HOSTNAME}\n"
        f"domains: [{DOMAIN}]\n"
        f"data_dir: {json.dumps(str(data))}\n"
        f"accounts_file: {json.dumps(str(accounts))}\n"
        f"postmaster: {USER}\n"
        "listeners:\n"
        f"  imap: {{kind: imap, host: 127.0.0.1, port: {port}, tls: none}}\n"
        "imap:\n"
        "  plaintext_auth: true\n"
    )
    log = work / "mailharness.log"
    with reference_server(
        config, log, lambda alive: wait_for_imap(port, 30, alive), stop_timeout=15
    ) as proc:
        yield Server(port, proc.pid, log)


# --- the client ----------------------------------------------------------------------------


class CheckFailed(Exception):
    """A server's answer was not what the Maildir holds."""


_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_FETCH_START = re.compile(rb"^\d+ \(")


def fetch_heads(data: list[Any]) -> list[bytes]:
    """Each FETCH response in imaplib's ``fetch`` result, its text without the literals.

    imaplib gives a response without literals as one bytes item; one with literals as
    a tuple (text up to the literal, the literal) per literal, then the rest of the line
    as bytes. So an item starts a new response unless a tuple came just before it.
    """
    heads: list[bytes] = []
    after_literal = False
    for item in data:
        text = item[0] if isinstance(item, tuple) else item
        if not isinstance(text, bytes):
            raise CheckFailed(f"unexpected FETCH item {item!r:.200}")
        if after_literal and heads:
            heads[-1] += text
        elif _FETCH_START.match(text):
            heads.append(text)
        else:
            raise CheckFailed(f"not a FETCH response: {text[:200]!r}")
        after_literal = isinstance(item, tuple)
    return heads


def check_sizes(heads: list[bytes], box: Mailbox, what: str) -> None:
    sizes = []
    for h in heads:
        m = _SIZE.search(h)
        if m is None:
            raise CheckFailed(f"{what}: no RFC822.SIZE in {h[:200]!r}")
        sizes.append(int(m.group(1)))
    if len(sizes) != box.count:
        raise CheckFailed(f"{what}: {len(sizes)} FETCH responses for {box.count} messages")
    if sorted(sizes) != sorted(box.sizes):
        raise CheckFailed(f"{what}: the RFC822.SIZE values differ from the file sizes")


@dataclass
class Timing:
    total: float
    cpu: float  # this process's (the client's) CPU seconds in that time
    phases: dict[str, float] = field(default_factory=dict)


def ok(typ: str, data: Any, what: str) -> None:
    if typ != "OK":
        raise CheckFailed(f"{what}: {typ} {data[:1]!r}")


def open_session(
    port: int, user: str, query: str, io_timeout: float
) -> tuple[imaplib.IMAP4, Timing, list[Any]]:
    """Connect, LOGIN, SELECT INBOX, FETCH 1:* ``query``; timed phase by phase."""
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    client = imaplib.IMAP4("127.0.0.1", port, timeout=io_timeout)
    t1 = time.perf_counter()
    try:
        ok(*client.login(user, PASSWORD), "LOGIN")
        t2 = time.perf_counter()
        ok(*client.select("INBOX"), "SELECT")
        t3 = time.perf_counter()
        typ, fetched = client.fetch("1:*", query)
        ok(typ, fetched, "FETCH")
        t4 = time.perf_counter()
    except BaseException:
        with contextlib.suppress(Exception):
            client.shutdown()
        raise
    cpu = time.process_time() - cpu0
    phases = {"connect": t1 - t0, "login": t2 - t1, "select": t3 - t2, "fetch": t4 - t3}
    return client, Timing(t4 - t0, cpu, phases), fetched


def timed(fn: Callable[[], tuple[str, list[Any]]]) -> tuple[Timing, list[Any]]:
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    typ, data = fn()
    total = time.perf_counter() - t0
    ok(typ, data, "command")
    return Timing(total, time.process_time() - cpu0), data


def close(client: imaplib.IMAP4) -> None:
    with contextlib.suppress(Exception):
        client.logout()
    with contextlib.suppress(Exception):
        client.shutdown()


def round_for(port: int, boxes: dict[str, Mailbox], io_timeout: float) -> dict[str, Timing]:
    """One measurement of every operation against one server, answers checked."""
    box = boxes[USER]
    out: dict[str, Timing] = {}
    client, t, fetched = open_session(port, USER, "(UID FLAGS RFC822.SIZE ENVELOPE)", io_timeout)
    try:
        out["session"] = t
        check_sizes(fetch_heads(fetched), box, "session")
        del fetched
        t, bodies = timed(lambda: client.fetch("1:*", "(BODY.PEEK[])"))
        out["bodies"] = t
        got = collections.Counter(
            hashlib.sha256(item[1]).digest()
            for item in bodies
            if isinstance(item, tuple) and isinstance(item[1], bytes)
        )
        if got != box.digests:
            raise CheckFailed(
                f"bodies: {sum(got.values())} bodies, {sum((got - box.digests).values())} "
                f"not in the Maildir, {sum((box.digests - got).values())} missing"
            )
        del bodies
        t, found = timed(lambda: client.search(None, "UNSEEN"))
        out["search"] = t
        unseen = len(found[0].split()) if found and isinstance(found[0], bytes) else -1
        if unseen != box.unseen:
            raise CheckFailed(f"search: {unseen} UNSEEN, the Maildir has {box.unseen}")
    finally:
        close(client)
    client, t, fetched = open_session(port, USER_1K, "(FLAGS RFC822.SIZE)", io_timeout)
    close(client)
    out["session-1k"] = t
    check_sizes(fetch_heads(fetched), boxes[USER_1K], "session-1k")
    return out


@dataclass
class Outcome:
    peer: str
    timings: dict[str, list[Timing]] = field(default_factory=lambda: {op: [] for op in OPS})
    errors: list[str] = field(default_factory=list)

    def median(self, op: str) -> float | None:
        xs = [t.total for t in self.timings[op]]
        return statistics.median(xs) if xs else None

    def median_cpu(self, op: str) -> float | None:
        xs = [t.cpu for t in self.timings[op]]
        return statistics.median(xs) if xs else None

    def median_phases(self, op: str) -> dict[str, float]:
        ts = self.timings[op]
        if not ts or not ts[0].phases:
            return {}
        return {p: statistics.median(t.phases[p] for t in ts) for p in PHASES}


def measure(
    servers: dict[str, Server], boxes: dict[str, Mailbox], args: argparse.Namespace
) -> dict[str, Outcome]:
    outcomes = {p: Outcome(p) for p in servers}
    names = list(servers)
    schedule = [("warmup", p) for _ in range(args.warmup) for p in names]
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        schedule += [(f"round {r + 1}", p) for p in order]
    for kind, peer in schedule:
        out = outcomes[peer]
        if out.errors:
            continue
        try:
            got = round_for(servers[peer].port, boxes, args.io_timeout)
        except (CheckFailed, OSError, imaplib.IMAP4.error) as e:
            out.errors.append(f"{kind}: {type(e).__name__}: {e}")
            print(f"  {kind:8} {peer:12} !! {out.errors[-1]}")
            if diag := tail(servers[peer].log):
                print("    " + diag.replace("\n", "\n    "))
            continue
        if kind != "warmup":
            for op, t in got.items():
                out.timings[op].append(t)
        figures = "  ".join(f"{op} {got[op].total * 1000:7.1f} ms" for op in OPS)
        print(f"  {kind:8} {peer:12} {figures}")
    return outcomes


# --- profiling --------------------------------------------------------------------------------


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def idle_leaves() -> set[str]:
    """Innermost frames (``function (file:line)``, as py-spy writes them) where a thread
    waits rather than works: a pool worker waiting for work, the event loop in epoll, a
    condition wait. py-spy's own idle detection does not drop these in every sandbox."""
    import concurrent.futures.thread
    import inspect
    import selectors
    import threading

    waits: list[tuple[str, str, Any, str]] = [
        # (the name py-spy shows, the file as py-spy shows it, the function, the waiting call)
        (
            "_worker",
            "concurrent/futures/thread.py",
            concurrent.futures.thread._worker,
            "get(block=True)",
        ),
        ("EpollSelector.select", "selectors.py", selectors.EpollSelector.select, "_selector.poll("),
        ("Condition.wait", "threading.py", threading.Condition.wait, "waiter.acquire("),
    ]
    leaves: set[str] = set()
    for name, file, function, needle in waits:
        lines, first = inspect.getsourcelines(function)
        leaves.update(
            f"{name} ({file}:{first + i})" for i, line in enumerate(lines) if needle in line
        )
    return leaves


def summarize_raw(path: Path, top: int) -> dict[str, Any]:
    """Busy samples, and the functions with most of them, from a py-spy ``-f raw`` file
    (``frame;frame;... count`` per line): by own samples (the innermost frame), and by
    samples on the stack for the project's own functions (reference_server, conformance)."""
    idle = idle_leaves()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    busy = waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames or frames[-1] in idle:
            waiting += n
            continue
        busy += n
        names = [re.sub(r":\d+\)$", ")", f) for f in frames]  # group by function and file
        own[names[-1]] += n
        for name in set(names):
            if "(reference_server/" in name or "(conformance/" in name:
                inclusive[name] += n

    def rows(counter: collections.Counter[str]) -> list[list[Any]]:
        return [[name, k, round(100 * k / busy, 1)] for name, k in counter.most_common(top)]

    return {
        "busy_samples": busy,
        "idle_samples": waiting,
        "own": rows(own),
        "inclusive": rows(inclusive),
    }


def profile(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Sample the reference server with py-spy while each operation repeats, one raw
    profile per operation in args.profile; returns the top functions per operation.

    ``session`` and ``session-1k`` sample whole sessions (LOGIN included, as measured);
    ``bodies`` and ``search`` sample only the command, repeated in one session that
    logged in before sampling starts."""
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not found (it is in the project's venv)"}
    args.profile.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    repeat = args.profile_repeat

    def sessions(user: str, query: str, times: int) -> Callable[[imaplib.IMAP4], None]:
        def run(_unused: imaplib.IMAP4) -> None:
            for _ in range(times):
                close(open_session(server.port, user, query, args.io_timeout)[0])

        return run

    def commands(
        fn: Callable[[imaplib.IMAP4], object], times: int
    ) -> Callable[[imaplib.IMAP4], None]:
        def run(client: imaplib.IMAP4) -> None:
            for _ in range(times):
                fn(client)

        return run

    runs: dict[str, tuple[str, Callable[[imaplib.IMAP4], None]]] = {
        "session": (
            f"{repeat} sessions",
            sessions(USER, "(UID FLAGS RFC822.SIZE ENVELOPE)", repeat),
        ),
        "bodies": (
            f"{repeat} commands",
            commands(lambda c: c.fetch("1:*", "(BODY.PEEK[])"), repeat),
        ),
        "search": (
            f"{repeat * 20} commands",
            commands(lambda c: c.search(None, "UNSEEN"), repeat * 20),
        ),
        "session-1k": (
            f"{repeat * 5} sessions",
            sessions(USER_1K, "(FLAGS RFC822.SIZE)", repeat * 5),
        ),
    }
    for op, (what, run) in runs.items():
        raw = args.profile / f"mailharness-{op}.txt"
        spy_log = args.profile / f"mailharness-{op}.log"
        client, _, _ = open_session(server.port, USER, "(FLAGS)", args.io_timeout)
        try:
            with spy_log.open("wb") as log:
                proc = subprocess.Popen(
                    [
                        spy,
                        "record",
                        "-p",
                        str(server.pid),
                        "-f",
                        "raw",
                        "-o",
                        str(raw),
                        "-r",
                        "250",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            time.sleep(1.5)  # py-spy has attached
            t0 = time.perf_counter()
            run(client)
            wall = time.perf_counter() - t0
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            close(client)
        if not raw.exists():
            results[op] = {"error": tail(spy_log)}
            continue
        results[op] = {"raw_file": str(raw), "ran": what, "wall_s": round(wall, 3)}
        results[op].update(summarize_raw(raw, args.profile_top))
    return results


def print_profile(results: dict[str, Any]) -> None:
    print("\nwhere mailharness spends its time (py-spy at 250 Hz; samples of a thread waiting")
    print("for work, in epoll or on a condition are left out):")
    for op, res in results.items():
        if not isinstance(res, dict) or "busy_samples" not in res:
            print(f"  {op}: {res}")
            continue
        print(
            f"\n  {op}: {res['ran']} in {res['wall_s']}s, {res['busy_samples']} busy samples "
            f"({res['idle_samples']} idle), raw profile {res['raw_file']}"
        )
        print("    own time (the innermost frame):")
        for name, n, pct in res["own"]:
            print(f"      {pct:5.1f}% {n:6} {name}")
        print("    the project's functions, with what they call:")
        for name, n, pct in res["inclusive"]:
            print(f"      {pct:5.1f}% {n:6} {name}")


# --- reporting ------------------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    v: dict[str, str | None] = {"python": platform.python_version(), "kernel": platform.release()}
    binary = dovecot_binary()
    try:
        v["dovecot"] = (
            subprocess.run(
                [binary, "--version"], capture_output=True, text=True, timeout=30
            ).stdout.strip()
            if binary
            else None
        )
    except (OSError, subprocess.SubprocessError):
        v["dovecot"] = None
    try:
        from importlib.metadata import version

        v["mailharness"] = version("mailharness")
    except Exception:
        v["mailharness"] = None
    return v


def fmt_ms(x: float | None) -> str:
    return f"{x * 1000:.1f}" if x is not None else "-"


def table(peers: list[str], outcomes: dict[str, Outcome], skipped: dict[str, str]) -> str:
    lines = [
        f"\n{'operation':12} "
        + " ".join(f"{p + ' ms':>15}" for p in peers)
        + f" {'mailharness/dovecot':>20}  goal <= {GOAL:g}x"
    ]
    for op in OPS:
        cells = []
        for p in peers:
            o = outcomes.get(p)
            cells.append(f"{fmt_ms(o.median(op) if o else None):>15}")
        m = outcomes["mailharness"].median(op) if "mailharness" in outcomes else None
        d = outcomes[BASELINE].median(op) if BASELINE in outcomes else None
        ratio = f"{m / d:.2f}x" if m and d else "-"
        verdict = ("met" if m / d <= GOAL else "NOT met") if m and d else ""
        lines.append(f"{op:12} {' '.join(cells)} {ratio:>20}  {verdict}")
    lines.append(
        "\nphases of the session operations, medians in ms (connect+greeting, LOGIN, "
        "SELECT, FETCH):"
    )
    for op in ("session", "session-1k"):
        for p in peers:
            if p in outcomes and (ph := outcomes[p].median_phases(op)):
                lines.append(
                    f"  {op:11} {p:12} " + "  ".join(f"{k} {v * 1000:7.1f}" for k, v in ph.items())
                )
    lines.append("\nthe client's (imaplib's) own CPU time in each, median ms:")
    for p in peers:
        if p in outcomes:
            lines.append(
                f"  {p:12} " + "  ".join(f"{op} {fmt_ms(outcomes[p].median_cpu(op))}" for op in OPS)
            )
    for p, why in skipped.items():
        lines.append(f"  {p}: skipped ({why})")
    for o in outcomes.values():
        for e in o.errors:
            lines.append(f"  {o.peer}: !! {e}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", "-m", type=int, default=10000, help="in bench's INBOX")
    ap.add_argument("--small", type=int, default=1000, help="in bench1k's INBOX (default 1000)")
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds (median; default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="rounds before measuring (default 1)")
    ap.add_argument("--only", default=",".join(PEERS), help=f"subset of {','.join(PEERS)}")
    ap.add_argument("--seed", type=int, default=6, help="for the generated messages")
    ap.add_argument(
        "--dovecot-scheme",
        default="PLAIN",
        choices=["PLAIN", "SHA512-CRYPT", "ARGON2ID"],
        help="Dovecot's password scheme (default PLAIN; mailharness always has scrypt)",
    )
    ap.add_argument("--io-timeout", type=float, default=120, help="seconds per socket operation")
    ap.add_argument("--workdir", type=Path, help="where the Maildirs go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the Maildirs and logs")
    ap.add_argument("--json", type=Path, help="also write parameters and figures here")
    ap.add_argument("--profile", type=Path, help="then profile mailharness with py-spy into DIR")
    ap.add_argument("--profile-repeat", type=int, default=3, help="runs per operation profiled")
    ap.add_argument("--profile-top", type=int, default=15, help="functions listed per operation")
    args = ap.parse_args()

    peers = [p.strip() for p in args.only.split(",") if p.strip()]
    if unknown := [p for p in peers if p not in PEERS]:
        ap.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    if args.small > args.messages:
        ap.error("--small cannot exceed --messages")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = Path(tempfile.mkdtemp(prefix="bench-imap-", dir=args.workdir))
    base.chmod(0o755)  # Dovecot's mail processes (nobody) must reach their Maildir below it
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    skipped: dict[str, str] = {}
    started = time.monotonic()
    profile_results: dict[str, Any] | None = None
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    try:
        t0 = time.monotonic()
        boxes = build_maildirs(base / "source", args.messages, args.small, args.seed)
        box = boxes[USER]
        print(
            f"built {box.count} messages ({sum(box.sizes) / 1e6:.1f} MB, {box.unseen} unseen) "
            f"for {USER} and {boxes[USER_1K].count} for {USER_1K} in {time.monotonic() - t0:.1f}s "
            f"under {base}; load average {loadavg_before}"
        )
        with contextlib.ExitStack() as stack:
            servers: dict[str, Server] = {}
            for peer in peers:
                if why := why_unavailable(peer):
                    print(f"SKIP {peer}: {why}")
                    skipped[peer] = why
                    continue
                work = base / peer
                work.mkdir()
                try:
                    if peer == "dovecot":
                        cm = run_dovecot(work, base / "source", args.dovecot_scheme)
                    else:
                        cm = run_mailharness(work, base / "source")
                    servers[peer] = stack.enter_context(cm)
                except Exception as e:
                    print(f"FAIL {peer}: {e}")
                    skipped[peer] = f"failed to start: {e}".splitlines()[0]
            outcomes = measure(servers, boxes, args)
            if args.profile and "mailharness" in servers:
                profile_results = profile(servers["mailharness"], args)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    total = time.monotonic() - started
    loadavg_after = [round(x, 2) for x in os.getloadavg()]

    print(table(peers, outcomes, skipped))
    print(f"\nload average before {loadavg_before}, after {loadavg_after}; total {total:.0f}s")
    if profile_results is not None:
        print_profile(profile_results)

    if args.json:
        doc = {
            "benchmark": "imap reads of a large Maildir",
            "date": date,
            "parameters": {
                "messages": args.messages,
                "small": args.small,
                "octets": sum(box.sizes),
                "unseen": box.unseen,
                "rounds": args.rounds,
                "warmup": args.warmup,
                "seed": args.seed,
                "dovecot_password_scheme": args.dovecot_scheme,
                "operations": OPS,
                "client": f"imaplib (Python {platform.python_version()}), in the script",
                "cpus": os.cpu_count(),
            },
            "versions": versions(),
            "skipped": skipped,
            "results": {
                op: {
                    o.peer: {
                        "median_s": round(m, 5) if (m := o.median(op)) is not None else None,
                        "rounds_s": [round(t.total, 5) for t in o.timings[op]],
                        "client_cpu_median_s": round(c, 5)
                        if (c := o.median_cpu(op)) is not None
                        else None,
                        "phases_median_s": {k: round(v, 5) for k, v in o.median_phases(op).items()},
                        "errors": o.errors,
                    }
                    for o in outcomes.values()
                }
                for op in OPS
            },
            "ratios_mailharness_over_dovecot": {
                op: round(m / d, 3)
                for op in OPS
                if "mailharness" in outcomes
                and BASELINE in outcomes
                and (m := outcomes["mailharness"].median(op))
                and (d := outcomes[BASELINE].median(op))
            },
            "goal": f"mailharness/dovecot <= {GOAL}",
            "machine": {"loadavg_before": loadavg_before, "loadavg_after": loadavg_after},
            "profile": profile_results,
            "total_s": round(total, 1),
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if any(o.errors for o in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
