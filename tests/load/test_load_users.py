"""Short headless Locust runs of every profile, against the reference server and smtp-sink.

Locust runs in a subprocess (see loadsupport): importing it here would monkey-patch this
process with gevent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from loadsupport import (
    LoadServer,
    load_server,
    run_locust,
    sink_target,
    smtp_sink,
    smtp_sink_available,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(dev_setup, tmp_path_factory) -> Iterator[LoadServer]:
    with load_server(dev_setup, tmp_path_factory.mktemp("users"), accounts=6) as srv:
        yield srv


def assert_clean(run, names: set[str]) -> None:
    assert run.returncode == 0, run.explain()
    missing = names - run.names()
    assert not missing, f"missing request names {sorted(missing)}; have {sorted(run.names())}"
    assert names <= run.csv_names(), run.explain()  # the CSV report has the entries too
    assert run.failure_count() == 0, run.explain()
    assert not run.failures, run.explain()


def smtp_names(*extra: str) -> set[str]:
    return {f"SMTP {n}" for n in ("connect", "EHLO", "MAIL", "RCPT", "DATA", "QUIT", *extra)}


def test_submission_profile(loaded: LoadServer, tmp_path: Path):
    before = loaded.total_messages()
    run = run_locust(
        tmp_path,
        loaded.target_file,
        "submission",
        users=3,
        extra=[
            "--messages-per-connection",
            "2",
            "--recipients",
            "2",
            "--message-size",
            "70%:1KB,30%:40KB",
            "--seed",
            "7",
        ],
    )
    assert_clean(run, smtp_names("STARTTLS", "AUTH"))
    n = {name: run.count("SMTP", name) for name in ("connect", "EHLO", "AUTH", "QUIT")}
    n |= {name: run.count("SMTP", name) for name in ("MAIL", "RCPT", "DATA")}
    n["stored"] = loaded.total_messages() - before
    # the end of the run may cut a transaction short (at most one per user, 3 users)
    assert 0 < n["DATA"] <= n["MAIL"] <= n["DATA"] + 3, n
    assert 2 * n["MAIL"] - 6 <= n["RCPT"] <= 2 * n["MAIL"], n
    assert n["connect"] - 3 <= n["QUIT"] <= n["AUTH"] <= n["connect"], n
    assert 2 * n["connect"] - 6 <= n["EHLO"] <= 2 * n["connect"], n
    assert 2 * n["connect"] - 6 <= n["DATA"] <= 2 * n["connect"], n  # two per connection
    # each message went to two mailboxes and was stored before its 250
    assert 2 * n["DATA"] <= n["stored"] <= 2 * (n["DATA"] + 3), n
    assert "seed 7" in run.output, run.explain()


def test_submissions_profile_implicit_tls_login(loaded: LoadServer, tmp_path: Path):
    run = run_locust(
        tmp_path,
        loaded.target_file,
        "submissions",
        users=2,
        run_time="2s",
        extra=["--message-size", "2KB", "--auth-mechanism", "LOGIN", "--no-pipelining"],
    )
    assert_clean(run, smtp_names("AUTH"))
    assert "SMTP STARTTLS" not in run.names()


def test_mx_profile(loaded: LoadServer, tmp_path: Path):
    before = loaded.total_messages()
    run = run_locust(
        tmp_path, loaded.target_file, "mx", users=2, run_time="2s", extra=["--message-size", "4KB"]
    )
    assert_clean(run, smtp_names("STARTTLS"))
    assert "SMTP AUTH" not in run.names()
    datas = run.count("SMTP", "DATA")
    assert datas > 0 and datas <= loaded.total_messages() - before <= datas + 2


def test_pop3_profile(loaded: LoadServer, tmp_path: Path):
    run = run_locust(
        tmp_path,
        loaded.target_file,
        "pop3",
        users=2,
        run_time="3s",
        extra=["--fetch-count", "2", "--top-up", "3", "--message-size", "2KB"],
    )
    names = {f"POP3 {n}" for n in ("connect", "STLS", "USER", "PASS", "STAT", "LIST", "UIDL")}
    assert_clean(run, names | {"POP3 RETR", "POP3 DELE", "POP3 QUIT"})
    retrs, deles = run.count("POP3", "RETR"), run.count("POP3", "DELE")
    assert deles > 0 and deles <= retrs <= deles + 2  # the end may cut a visit short
    assert "SMTP DATA" not in run.names()  # the top-up is not part of the measured load


def test_imap_profile(loaded: LoadServer, tmp_path: Path):
    run = run_locust(
        tmp_path,
        loaded.target_file,
        "imap",
        users=2,
        run_time="3s",
        extra=["--fetch-count", "2", "--top-up", "2", "--message-size", "50%:2KB,50%:40KB"],
    )
    # (APPEND only when a mailbox ran low, which depends on what earlier tests left)
    steps = ("connect", "STARTTLS", "LOGIN", "SELECT", "SEARCH", "FETCH", "STORE")
    assert_clean(run, {f"IMAP {n}" for n in (*steps, "EXPUNGE", "LOGOUT")})
    stores, expunges = run.count("IMAP", "STORE"), run.count("IMAP", "EXPUNGE")
    assert expunges > 0 and 2 * expunges <= stores <= 2 * expunges + 4
    assert run.count("IMAP", "FETCH") > 0


def test_imap_idle_profile_keeps_connections(loaded: LoadServer, tmp_path: Path):
    users = 20
    run = run_locust(
        tmp_path,
        loaded.target_file,
        "imap-idle",
        users=users,
        spawn_rate=100,
        run_time="3s",
        extra=["--idle-time", "0.5"],
    )
    assert_clean(run, {f"IMAP {n}" for n in ("connect", "LOGIN", "SELECT", "IDLE", "DONE")})
    assert run.count("IMAP", "connect") == run.count("IMAP", "LOGIN") == users  # held open
    assert run.count("IMAP", "IDLE") >= 2 * users
    assert run.count("IMAP", "DONE") >= run.count("IMAP", "IDLE") - users


def test_mixed_profile(loaded: LoadServer, tmp_path: Path):
    run = run_locust(
        tmp_path,
        loaded.target_file,
        "mixed",
        users=5,
        spawn_rate=50,
        run_time="2s",
        extra=["--message-size", "2KB", "--fetch-count", "1"],
    )
    assert_clean(run, {"SMTP DATA", "POP3 RETR", "IMAP FETCH"})


def test_mx_profile_against_smtp_sink(tmp_path: Path):
    if not smtp_sink_available():
        if os.environ.get("CI"):
            pytest.fail("/usr/sbin/smtp-sink is missing (Debian package postfix); CI needs it")
        pytest.skip("/usr/sbin/smtp-sink is not installed (Debian package postfix)")
    with smtp_sink(tmp_path) as (host, port):
        target = sink_target(tmp_path / "sink-target.yaml", host, port)
        run = run_locust(
            tmp_path,
            target,
            "mx",
            users=4,
            run_time="2s",
            extra=["--message-size", "80%:4KB,20%:64KB", "--messages-per-connection", "3"],
        )
    assert_clean(run, smtp_names())
    assert "SMTP STARTTLS" not in run.names()  # the target says tls: none
    datas = run.count("SMTP", "DATA")
    quits = run.count("SMTP", "QUIT")
    assert datas > 0 and datas <= run.count("SMTP", "MAIL") <= datas + 4
    assert 3 * quits <= datas <= 3 * quits + 12  # three messages per connection


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--message-size", "80%:4KB,10%:1MB"], "weights add up to 90%, not 100%"),
        (["--profile", "nope"], "unknown --profile 'nope'"),
        (["--worker-count", "9"], "cannot be split between 9 workers"),
    ],
)
def test_bad_options_stop_before_the_run(loaded: LoadServer, tmp_path: Path, extra, message):
    run = run_locust(tmp_path, loaded.target_file, "submission", run_time="1s", extra=extra)
    assert run.returncode == 2, run.explain()
    assert "mailharness load: " in run.output and message in run.output, run.explain()
    assert not run.stats


def test_accounts_csv_and_worker_share(loaded: LoadServer, tmp_path: Path):
    """A CSV pool, split as if for two workers: this (only) worker mails its half alone."""
    rows = ["username,password,address"]
    rows += [f"{u},{pw},{u}@example.test" for u, pw in sorted(loaded.passwords.items())]
    csv_file = tmp_path / "accounts.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    before = {u: len(loaded.messages(u)) for u in loaded.passwords}
    run = run_locust(
        tmp_path,
        loaded.target_file,
        "submission",
        users=2,
        run_time="2s",
        extra=["--accounts-csv", str(csv_file), "--worker-count", "2", "--message-size", "1KB"],
    )
    assert_clean(run, smtp_names("AUTH"))
    grew = {u for u in loaded.passwords if len(loaded.messages(u)) > before[u]}
    assert grew and grew <= {"user1", "user3", "user5"}  # worker 0 of 2: every other account
