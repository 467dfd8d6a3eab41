"""The POP3 maildrop on the reference server: the exclusive lock (RFC 1939 §4, [IN-USE]),
deletion only in the UPDATE state (RFC 1939 §6), UIDL stability (RFC 1939 §7), and a
SIGKILLed server leaves no stale lock."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import yaml
from pop3_helpers import (
    TLS_MODES,
    RawPop3,
    maildir_name,
    message,
    reset,
    shared_server,
    tls_session,
    wait_for,
    write_message,
)
from server_process import ServerProcess

from reference_server.auth import hash_password


@pytest.fixture(scope="module")
def shared(dev_setup, tmp_path_factory):
    yield from shared_server(dev_setup, tmp_path_factory.mktemp("pop3-maildrop"))


@pytest.fixture
def pop_server(shared):
    """The module's server with default settings and empty mailboxes."""
    reset(shared)
    yield shared
    reset(shared)


def store(srv, user: str = "alice", count: int = 3) -> list[bytes]:
    """``count`` messages in ``user``'s new/, in maildrop order (equal-length times)."""
    box = srv.config.mail_dir / user
    now = int(time.time())
    msgs = [message(f"message {i}", f"body {i}\r\n.dot {i}\r\n".encode()) for i in range(count)]
    for i, m in enumerate(msgs):
        write_message(box, maildir_name(now, 100000 + i, i), m)
    return msgs


def on_disk(srv, user: str = "alice") -> list[bytes]:
    box = srv.config.mail_dir / user
    return sorted(p.read_bytes() for sub in ("new", "cur") for p in (box / sub).iterdir())


def uidls(client: RawPop3) -> dict[int, str]:
    reply = client.cmd("UIDL", multiline=True)
    assert reply.ok and reply.lines is not None, reply
    return {int(n): uid for n, uid in (line.decode("ascii").split(" ") for line in reply.lines)}


def login(srv, mode: str, user: str = "alice"):
    """(client, reply to PASS) for a fresh TLS session."""
    client = tls_session(srv, mode)
    return client, client.login(user, srv.passwords[user])


def login_eventually(srv, mode: str, user: str = "alice", timeout: float = 3.0) -> RawPop3:
    """Log in, retrying while the server still reports the maildrop in use."""
    deadline = time.monotonic() + timeout
    while True:
        client, reply = login(srv, mode, user)
        if reply.ok:
            return client
        assert reply.code == "IN-USE", reply
        assert time.monotonic() < deadline, "the maildrop lock was never released"
        client.close()
        time.sleep(0.05)


# -- the lock ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", TLS_MODES)
def test_second_session_gets_in_use_and_stays_in_authorization(pop_server, mode):
    store(pop_server)
    first, reply = login(pop_server, "pop3s")
    assert reply.ok
    second, reply = login(pop_server, mode)
    assert not reply.ok
    assert reply.code == "IN-USE", reply
    # still in AUTHORIZATION: another maildrop can be opened in the same session
    assert not second.cmd("STAT").ok
    assert second.login("bob", pop_server.passwords["bob"]).ok
    # the first session is undisturbed
    assert first.cmd("STAT").text.startswith("3 ")


def test_in_use_also_for_auth_plain(pop_server):
    first, _ = login(pop_server, "stls")
    second = tls_session(pop_server, "pop3s")
    reply = second.auth_plain("alice", pop_server.passwords["alice"])
    assert not reply.ok
    assert reply.code == "IN-USE"
    assert first.cmd("NOOP").ok


def test_in_use_is_not_an_auth_failure(start_server):
    # a right password refused for [IN-USE] must not count towards max_auth_failures
    srv = start_server(pop3={"max_auth_failures": 1})
    login(srv, "pop3s")
    second = tls_session(srv, "pop3s")
    for _ in range(3):
        assert second.login("alice", srv.passwords["alice"]).code == "IN-USE"
    assert second.login("bob", srv.passwords["bob"]).ok


def test_a_wrong_password_takes_no_lock(pop_server):
    # docs: the maildrop is locked once the password is right
    prober = tls_session(pop_server, "pop3s")
    assert prober.login("alice", "wrong").code == "AUTH"
    _, reply = login(pop_server, "stls")
    assert reply.ok, reply


def test_lock_released_after_quit(pop_server):
    first, _ = login(pop_server, "pop3s")
    assert first.cmd("QUIT").ok
    assert first.read_all_until_close() == b""
    # QUIT's +OK comes after UPDATE, so the lock is free once it is read
    _, reply = login(pop_server, "stls")
    assert reply.ok, reply


def test_lock_released_after_quit_in_authorization_state(pop_server):
    # a session refused with [IN-USE] holds nothing
    holder, _ = login(pop_server, "pop3s")
    waiting, reply = login(pop_server, "pop3s")
    assert reply.code == "IN-USE"
    assert waiting.cmd("QUIT").ok
    assert holder.cmd("QUIT").ok
    assert holder.read_all_until_close() == b""
    assert login(pop_server, "pop3s")[1].ok


@pytest.mark.parametrize("mode", TLS_MODES)
def test_lock_released_after_the_client_vanishes(pop_server, mode):
    store(pop_server)
    first, _ = login(pop_server, mode)
    assert first.cmd("DELE 1").ok
    first.abort()  # RST, no QUIT, no TLS close_notify
    client = login_eventually(pop_server, "pop3s")
    assert client.cmd("STAT").text.startswith("3 ")  # no UPDATE for a dropped connection


def test_lock_released_after_a_clean_close_without_quit(pop_server):
    store(pop_server)
    first, _ = login(pop_server, "stls")
    assert first.cmd("DELE 2").ok
    first.close()
    client = login_eventually(pop_server, "pop3s")
    assert client.cmd("STAT").text.startswith("3 ")


def test_lock_released_when_the_server_stops(start_server, tmp_path):
    data = tmp_path / "shared-data"
    srv = start_server(data_dir=data)
    msgs = store(srv)
    client, _ = login(srv, "pop3s")
    assert client.cmd("DELE 1").ok
    srv.stop()
    client.read_all_until_close()
    # a server in this same process would conflict with a flock still held
    again = start_server(data_dir=data)
    client, reply = login(again, "pop3s")
    assert reply.ok, reply
    assert client.cmd("STAT").text.startswith("3 ")
    assert on_disk(again) == sorted(msgs)


def test_users_do_not_block_each_other(pop_server):
    alice, _ = login(pop_server, "pop3s", "alice")
    bob, reply = login(pop_server, "stls", "bob")
    assert reply.ok
    assert alice.cmd("NOOP").ok and bob.cmd("NOOP").ok


def test_lock_file_is_in_the_maildir(pop_server):
    login(pop_server, "pop3s")
    # docs: flock(2) on <maildir>/mailharness-pop3.lock
    assert (pop_server.config.mail_dir / "alice" / "mailharness-pop3.lock").exists()


def test_lock_file_is_not_a_message(pop_server):
    msgs = store(pop_server)
    first, _ = login(pop_server, "pop3s")
    assert first.cmd("QUIT").ok
    first.read_all_until_close()
    client, _ = login(pop_server, "pop3s")
    assert client.cmd("STAT").text.startswith(f"{len(msgs)} ")


def test_login_for_a_user_whose_maildir_does_not_exist_yet(pop_server):
    box = pop_server.config.mail_dir / "bob"
    assert not (box / "new").exists() or not any((box / "new").iterdir())
    client, reply = login(pop_server, "pop3s", "bob")
    assert reply.ok, reply
    assert client.cmd("STAT").text.startswith("0 0")


# -- deletion (RFC 1939 §6: only in the UPDATE state) -------------------------------------------


@pytest.mark.parametrize("mode", TLS_MODES)
def test_dele_then_dropped_connection_keeps_the_message(pop_server, mode):
    msgs = store(pop_server)
    client, _ = login(pop_server, mode)
    assert client.cmd("DELE 1").ok
    assert client.cmd("DELE 3").ok
    client.abort()
    client = login_eventually(pop_server, "pop3s")
    assert client.cmd("STAT").text.startswith("3 ")
    assert on_disk(pop_server) == sorted(msgs)


@pytest.mark.parametrize("mode", TLS_MODES)
def test_dele_then_quit_removes_the_files_before_the_ok(pop_server, mode):
    msgs = store(pop_server)
    client, _ = login(pop_server, mode)
    assert client.cmd("DELE 1").ok
    assert client.cmd("DELE 3").ok
    reply = client.cmd("QUIT")
    assert reply.ok, reply
    # docs: marked files are unlinked (and the directories fsynced) before the +OK
    assert on_disk(pop_server) == [msgs[1]]
    assert client.read_all_until_close() == b""
    client, _ = login(pop_server, "pop3s")
    assert client.cmd("STAT").text.startswith(f"1 {len(msgs[1])}")
    assert client.cmd("RETR 1", multiline=True).body == msgs[1]


def test_dele_all_then_quit_empties_the_maildrop(pop_server):
    store(pop_server, count=5)
    client, _ = login(pop_server, "pop3s")
    for number in range(1, 6):
        assert client.cmd(f"DELE {number}").ok
    assert client.cmd("QUIT").ok
    assert on_disk(pop_server) == []


def test_dele_works_on_files_in_cur_too(pop_server):
    box = pop_server.config.mail_dir / "alice"
    write_message(box, maildir_name(1000, 0, 1) + ":2,S", message("seen"), sub="cur")
    write_message(box, maildir_name(1001, 0, 2), message("unseen"))
    client, _ = login(pop_server, "pop3s")
    assert client.cmd("DELE 1").ok
    assert client.cmd("QUIT").ok
    assert [p.name for p in (box / "cur").iterdir()] == []
    assert len(list((box / "new").iterdir())) == 1


def test_rset_unmarks_before_quit(pop_server):
    msgs = store(pop_server)
    client, _ = login(pop_server, "stls")
    assert client.cmd("DELE 1").ok
    assert client.cmd("DELE 2").ok
    assert client.cmd("RSET").ok
    assert client.cmd("DELE 3").ok
    assert client.cmd("QUIT").ok
    assert on_disk(pop_server) == sorted(msgs[:2])


def test_quit_in_authorization_deletes_nothing(pop_server):
    msgs = store(pop_server)
    client = tls_session(pop_server, "pop3s")
    assert not client.cmd("DELE 1").ok
    assert client.cmd("QUIT").ok
    assert on_disk(pop_server) == sorted(msgs)


def test_quit_after_dele_with_poplib(pop_server):
    msgs = store(pop_server)
    client = pop_server.pop3s("alice")
    client.dele(2)
    assert client.quit().startswith(b"+OK")
    assert on_disk(pop_server) == sorted([msgs[0], msgs[2]])


def test_a_message_removed_by_someone_else_during_the_session(pop_server):
    msgs = store(pop_server)
    client, _ = login(pop_server, "pop3s")
    box = pop_server.config.mail_dir / "alice" / "new"
    victim = sorted(box.iterdir())[0]
    victim.unlink()
    # the server cannot serve it (storage error), and the session goes on
    reply = client.cmd("RETR 1", multiline=True)
    assert not reply.ok
    assert client.cmd("RETR 2", multiline=True).body == msgs[1]
    assert client.cmd("NOOP").ok


def test_quit_when_a_deleted_file_is_already_gone(pop_server):
    store(pop_server)
    client, _ = login(pop_server, "pop3s")
    assert client.cmd("DELE 1").ok
    assert client.cmd("DELE 2").ok
    sorted((pop_server.config.mail_dir / "alice" / "new").iterdir())[0].unlink()
    reply = client.cmd("QUIT")
    # the message is gone either way; what matters is that the other one was removed
    # and the answer is a proper status line
    assert reply.ok or reply.code == "SYS/TEMP", reply
    assert len(on_disk(pop_server)) == 1


def test_quit_reports_a_removal_that_failed(pop_server):
    msgs = store(pop_server)
    client, _ = login(pop_server, "pop3s")
    assert client.cmd("DELE 1").ok
    assert client.cmd("DELE 3").ok
    # make the first marked file impossible to unlink (even for root): a directory
    first = sorted((pop_server.config.mail_dir / "alice" / "new").iterdir())[0]
    first.unlink()
    first.mkdir()
    (first / "keep").write_bytes(b"x")
    reply = client.cmd("QUIT")
    # docs: "-ERR [SYS/TEMP] some deleted messages not removed"
    assert not reply.ok, reply
    assert reply.code == "SYS/TEMP", reply
    assert client.read_all_until_close() == b""
    # the other marked message was removed, the unmarked one kept
    files = sorted(p for p in (pop_server.config.mail_dir / "alice" / "new").iterdir())
    assert [p.read_bytes() for p in files if p.is_file()] == [msgs[1]]


# -- UIDL (RFC 1939 §7) -----------------------------------------------------------------------


def test_uidl_is_the_maildir_unique_name(pop_server):
    store(pop_server)
    names = sorted(p.name for p in (pop_server.config.mail_dir / "alice" / "new").iterdir())
    client, _ = login(pop_server, "pop3s")
    assert list(uidls(client).values()) == names


def test_uidl_unique_and_well_formed(pop_server):
    store(pop_server, count=6)
    box = pop_server.config.mail_dir / "alice"
    # names a UIDL cannot carry: too long, a space, non-ASCII, a control character
    write_message(box, "x" * 71, message("long name"))
    write_message(box, "a name with spaces", message("spaces"))
    write_message(box, "h\u00f4te.name", message("non-ascii"))
    write_message(box, "tab\tname", message("tab"))
    write_message(box, "y" * 71 + ":2,S", message("long name in cur"), sub="cur")
    client, _ = login(pop_server, "pop3s")
    uids = uidls(client)
    assert len(uids) == 11
    assert len(set(uids.values())) == 11
    for uid in uids.values():
        # RFC 1939 §7: 1 to 70 characters in the range 0x21 to 0x7E
        assert re.fullmatch(r"[\x21-\x7e]{1,70}", uid), uid


def test_uidl_stable_across_sessions(pop_server):
    store(pop_server)
    box = pop_server.config.mail_dir / "alice"
    write_message(box, "z" * 80, message("odd name"))
    first, _ = login(pop_server, "pop3s")
    before = uidls(first)
    assert first.cmd("QUIT").ok
    first.read_all_until_close()
    second, _ = login(pop_server, "stls")
    assert uidls(second) == before


def test_uidl_unchanged_when_a_reader_moves_the_file_to_cur(pop_server):
    store(pop_server)
    box = pop_server.config.mail_dir / "alice"
    first, _ = login(pop_server, "pop3s")
    before = set(uidls(first).values())
    assert first.cmd("QUIT").ok
    first.read_all_until_close()
    # a Maildir reader (an IMAP server, a MUA) marks every message seen
    for path in list((box / "new").iterdir()):
        os.rename(path, box / "cur" / f"{path.name}:2,S")
    second, _ = login(pop_server, "pop3s")
    assert set(uidls(second).values()) == before


def test_uidl_of_a_deleted_message_is_not_reused(pop_server):
    store(pop_server)
    first, _ = login(pop_server, "pop3s")
    before = uidls(first)
    assert first.cmd("DELE 1").ok
    assert first.cmd("QUIT").ok
    first.read_all_until_close()
    pop_server.deliver("alice", message("new one"))
    second, _ = login(pop_server, "pop3s")
    after = uidls(second)
    assert before[1] not in after.values()
    assert set(before.values()) - {before[1]} <= set(after.values())


def test_uidl_stable_across_a_restart(start_server, tmp_path):
    data = tmp_path / "restart-data"
    srv = start_server(data_dir=data)
    for i in range(3):
        srv.deliver("alice", message(f"restart {i}"))
    write_message(srv.config.mail_dir / "alice", "w" * 90, message("odd"))
    client, _ = login(srv, "pop3s")
    before = uidls(client)
    sizes = client.cmd("LIST", multiline=True).raw
    assert client.cmd("QUIT").ok
    client.read_all_until_close()
    client.close()  # (see test_pop3_session: a TLS QUIT left open leaks at stop)
    srv.stop()
    again = start_server(data_dir=data)
    client, reply = login(again, "stls")
    assert reply.ok
    assert uidls(client) == before
    assert client.cmd("LIST", multiline=True).raw == sizes


# -- a crash leaves no stale lock ----------------------------------------------------------


def write_process_setup(base: Path, password: str) -> Path:
    """server.yaml (one cleartext pop3 listener, port 0) and accounts.yaml with alice."""
    accounts = {
        "accounts": {
            "alice": {"password": hash_password(password), "addresses": ["alice@example.test"]}
        }
    }
    (base / "accounts.yaml").write_text(yaml.safe_dump(accounts), encoding="utf-8")
    server = {
        "hostname": "mail.example.test",
        "domains": ["example.test"],
        "data_dir": "./data",
        "accounts_file": "./accounts.yaml",
        "postmaster": "alice",
        "listeners": {"pop3": {"kind": "pop3", "host": "127.0.0.1", "port": 0, "tls": "none"}},
        "pop3": {"plaintext_auth": True},
        "limits": {"auth_failure_delay": 0.01},
    }
    config = base / "server.yaml"
    config.write_text(yaml.safe_dump(server, sort_keys=False), encoding="utf-8")
    return config


def test_sigkill_with_a_session_holding_the_lock_leaves_no_stale_lock(tmp_path):
    password = "crash-test-password"
    config = write_process_setup(tmp_path, password)
    box = tmp_path / "data" / "mail" / "alice"
    msgs = [message(f"crash {i}", b"line\r\n.dot\r\n" * (i + 1)) for i in range(3)]
    for i, m in enumerate(msgs):
        write_message(box, maildir_name(1_700_000_000, 100000 + i, i), m)
    log = tmp_path / "server.stderr"

    server = ServerProcess(config, log)
    try:
        holder = RawPop3("127.0.0.1", server.ports["pop3"])
        with holder:
            assert holder.read_reply().ok
            assert holder.login("alice", password).ok
            assert holder.cmd("DELE 1").ok
            assert holder.cmd("DELE 2").ok
            # the lock is held: a second session is refused
            with RawPop3("127.0.0.1", server.ports["pop3"]) as probe:
                assert probe.read_reply().ok
                assert probe.login("alice", password).code == "IN-USE"
            server.kill()  # no QUIT, no shutdown code
            # the client side sees the connection end
            assert wait_for(lambda: holder.read_all_until_close() == b"", timeout=5)
        server = ServerProcess(config, log)  # same data directory
        with RawPop3("127.0.0.1", server.ports["pop3"]) as client:
            assert client.read_reply().ok
            reply = client.login("alice", password)
            assert reply.ok, f"{reply}; server stderr: {log.read_text(errors='replace')[-2000:]}"
            stat = client.cmd("STAT")
            assert stat.words()[:2] == ["3", str(sum(map(len, msgs)))]
            for number, m in enumerate(msgs, 1):
                assert client.cmd(f"RETR {number}", multiline=True).body == m
            assert client.cmd("QUIT").ok
    finally:
        server.stop()
    assert sorted(p.read_bytes() for p in (box / "new").iterdir()) == sorted(msgs)
