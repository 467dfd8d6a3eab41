"""The web and IMAP share one mailbox state: changes on either side show on the other at once."""

from __future__ import annotations

import pytest
from conftest import running_server
from webhelpers import deliver, find_by_subject, imap_flags, logged_in, message_path


@pytest.fixture(scope="module")
def srv(dev_setup, tmp_path_factory):
    yield from running_server(dev_setup, tmp_path_factory.mktemp("web-shared"))


@pytest.fixture(scope="module")
def alice(srv):
    return logged_in(srv, "alice")


def test_mail_delivered_by_smtp_shows_without_a_restart(srv, alice):
    before = alice.get("/api/mailboxes/INBOX/messages").json()["total"]
    page = alice.get("/mailbox/INBOX").text
    assert "arrives later" not in page
    deliver(srv, "alice@example.test", "arrives later")
    assert alice.get("/api/mailboxes/INBOX/messages").json()["total"] == before + 1
    assert "arrives later" in alice.get("/mailbox/INBOX").text


def test_reading_on_the_page_shows_seen_in_an_open_imap_session(srv, alice):
    deliver(srv, "alice@example.test", "read me on the web")
    item = find_by_subject(alice, "INBOX", "read me on the web")
    uid = item["id"]["uid"]
    imap = srv.imap("alice")
    imap.select("INBOX")
    typ, data = imap.uid("FETCH", str(uid), "(FLAGS)")
    assert typ == "OK" and "\\Seen" not in imap_flags(data)
    assert alice.get(f"/message/{message_path(item)}").status == 200
    typ, _ = imap.noop()  # the session is told of the change ...
    assert typ == "OK"
    flag_updates = imap.untagged_responses.get("FETCH", [])
    assert any(b"\\Seen" in u for u in flag_updates if isinstance(u, bytes))
    typ, data = imap.uid("FETCH", str(uid), "(FLAGS)")  # ... and FETCH says so
    assert "\\Seen" in imap_flags(data)
    fresh = srv.imap("alice")
    fresh.select("INBOX", readonly=True)
    assert "\\Seen" in imap_flags(fresh.uid("FETCH", str(uid), "(FLAGS)")[1])


def test_flags_set_over_imap_show_on_the_web(srv, alice):
    deliver(srv, "alice@example.test", "flag me over imap")
    item = find_by_subject(alice, "INBOX", "flag me over imap")
    imap = srv.imap("alice")
    imap.select("INBOX")
    typ, _ = imap.uid("STORE", str(item["id"]["uid"]), "+FLAGS", "(\\Flagged)")
    assert typ == "OK"
    assert find_by_subject(alice, "INBOX", "flag me over imap")["flags"] == ["\\Flagged"]


def test_a_web_delete_is_an_expunge_in_imap_and_an_arrival_in_trash(srv, alice):
    deliver(srv, "alice@example.test", "delete me on the web")
    item = find_by_subject(alice, "INBOX", "delete me on the web")
    imap = srv.imap("alice")
    imap.select("INBOX")
    assert alice.delete(f"/api/messages/{message_path(item)}").status == 200
    imap.noop()
    assert imap.untagged_responses.get("EXPUNGE")
    typ, data = imap.uid("SEARCH", "SUBJECT", '"delete me on the web"')
    assert typ == "OK" and data == [b""]
    imap.select("Trash")
    typ, data = imap.uid("SEARCH", "SUBJECT", '"delete me on the web"')
    assert data[0].split()
