"""The JSON API over the real HTTPS listener: every endpoint, and every refusal."""

from __future__ import annotations

import secrets
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import running_server
from webhelpers import (
    deliver,
    find_by_subject,
    logged_in,
    message_path,
    web_client,
)


@pytest.fixture(scope="module")
def srv(dev_setup, tmp_path_factory):
    yield from running_server(dev_setup, tmp_path_factory.mktemp("web-api"))


@pytest.fixture(scope="module")
def alice(srv):
    return logged_in(srv, "alice")


@pytest.fixture(scope="module")
def bob(srv):
    return logged_in(srv, "bob")


def _unique(prefix: str) -> str:
    return f"{prefix} {secrets.token_hex(4)}"


# -- login, sessions, cookies ---------------------------------------------------------------


def test_login_sets_a_host_only_secure_session_cookie(srv):
    client = web_client(srv)
    reply = client.login("alice", srv.passwords["alice"])
    assert reply.status == 200
    body = reply.json()
    assert body["username"] == "alice"
    assert body["addresses"] == ["alice@example.test"]
    assert len(body["csrf_token"]) >= 40
    (cookie,) = reply.cookies()
    assert cookie.startswith("__Host-mailharness-session=")
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "path=/", "samesite=strict"} <= attributes
    assert not any(a.startswith("domain") for a in attributes)
    assert client.get("/api/session").json()["csrf_token"] == body["csrf_token"]


def test_login_with_a_wrong_password_is_refused(srv):
    client = web_client(srv)
    reply = client.login("alice", "not-the-password")
    assert reply.status == 401
    assert reply.error_code == "login_failed"
    assert reply.cookies() == []
    assert client.login("nobody", "x").status == 401


def test_login_needs_a_json_body(srv):
    client = web_client(srv)
    reply = client.post(
        "/api/login",
        form={"username": "alice", "password": srv.passwords["alice"]},
        csrf=False,
    )
    assert reply.status == 415
    assert client.post("/api/login", json=["alice"]).status == 400
    assert client.post("/api/login", json={"username": 1, "password": "x"}).status == 400


def test_cross_origin_login_is_refused(srv):
    client = web_client(srv)
    reply = client.post(
        "/api/login",
        json={"username": "alice", "password": srv.passwords["alice"]},
        headers={"Origin": "https://evil.test"},
    )
    assert reply.status == 403
    assert reply.error_code == "bad_origin"
    assert reply.cookies() == []


def test_logout_ends_the_session(srv):
    client = logged_in(srv, "alice")
    cookies = dict(client.cookies)
    assert client.post("/api/logout").status == 200
    assert client.cookies == {}
    client.cookies = cookies  # the old cookie, replayed
    assert client.get("/api/mailboxes").status == 401


def test_a_new_login_replaces_the_old_session(srv):
    client = logged_in(srv, "alice")
    old = dict(client.cookies)
    client.login("alice", srv.passwords["alice"])
    assert client.cookies != old
    stale = web_client(srv)
    stale.cookies = old
    assert stale.get("/api/session").status == 401


ENDPOINTS = [
    ("GET", "/api/session"),
    ("GET", "/api/mailboxes"),
    ("GET", "/api/mailboxes/INBOX/messages"),
    ("GET", "/api/messages/INBOX/1/1"),
    ("GET", "/api/messages/INBOX/1/1/parts/1"),
    ("POST", "/api/messages/INBOX/1/1/flags"),
    ("DELETE", "/api/messages/INBOX/1/1"),
    ("POST", "/api/send"),
    ("POST", "/api/logout"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_needs_a_session(srv, method, path):
    client = web_client(srv)
    assert client.request(method, path, json={} if method == "POST" else None).status == 401
    client.cookies = {"__Host-mailharness-session": secrets.token_urlsafe(32)}
    reply = client.request(method, path, json={} if method == "POST" else None)
    assert reply.status == 401
    assert reply.error_code == "unauthenticated"


@pytest.mark.parametrize(("method", "path"), [e for e in ENDPOINTS if e[0] != "GET"])
def test_every_state_change_needs_the_csrf_token(srv, alice, method, path):
    body: dict[str, str] | None = {} if method == "POST" else None
    reply = alice.request(method, path, json=body, csrf=False)
    assert reply.status == 403
    assert reply.error_code == "csrf"
    wrong = alice.request(method, path, json=body, csrf=False, headers={"X-CSRF-Token": "x" * 43})
    assert wrong.status == 403
    assert alice.get("/api/session").status == 200  # still logged in


def test_the_token_of_another_session_does_not_count(srv, alice, bob):
    deliver(srv, "alice@example.test", subject := _unique("csrf-other"))
    item = find_by_subject(alice, "INBOX", subject)
    assert bob.csrf != alice.csrf
    reply = alice.post(
        f"/api/messages/{message_path(item)}/flags",
        json={"add": ["\\Flagged"]},
        csrf=False,
        headers={"X-CSRF-Token": bob.csrf or ""},
    )
    assert reply.status == 403


def test_cross_origin_state_change_is_refused_even_with_the_token(srv, alice):
    reply = alice.post("/api/logout", headers={"Origin": "https://evil.test"})
    assert reply.status == 403
    assert reply.error_code == "bad_origin"
    assert alice.get("/api/session").status == 200


def test_an_unknown_host_header_is_refused(srv, alice):
    reply = alice.get("/api/session", headers={"Host": "rebound.evil.test"})
    assert reply.status == 400
    assert reply.error_code == "bad_host"
    assert alice.get("/api/session", headers={"Host": "mail.example.test"}).status == 200


def test_responses_carry_a_script_free_content_security_policy(srv, alice):
    for path in ("/api/mailboxes", "/login", "/mailbox/INBOX"):
        reply = alice.get(path)
        csp = reply.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["X-Frame-Options"] == "DENY"
        assert reply.headers["Cache-Control"] == "no-store"


# -- reading ---------------------------------------------------------------------------------


def test_mailboxes_are_listed_with_counts_and_special_use(srv, alice):
    deliver(srv, "alice@example.test", _unique("count"))
    boxes = alice.get("/api/mailboxes").json()["mailboxes"]
    names = [b["name"] for b in boxes]
    assert names[0] == "INBOX"
    assert {"Drafts", "Sent", "Trash", "Junk"} <= set(names)
    trash = next(b for b in boxes if b["name"] == "Trash")
    assert trash["special_use"] == "\\Trash"
    inbox = boxes[0]
    assert inbox["messages"] >= 1 and inbox["unseen"] >= 1 and inbox["uidvalidity"] > 0


def test_messages_are_paged_newest_first(srv, start_server):
    own = start_server()
    client = logged_in(own, "bob")
    for i in range(7):
        deliver(own, "bob@example.test", f"page {i}")
    first = client.get("/api/mailboxes/INBOX/messages?per_page=3").json()
    assert (first["page"], first["pages"], first["total"], first["per_page"]) == (1, 3, 7, 3)
    assert [m["subject"] for m in first["messages"]] == ["page 6", "page 5", "page 4"]
    last = client.get("/api/mailboxes/INBOX/messages?per_page=3&page=3").json()
    assert [m["subject"] for m in last["messages"]] == ["page 0"]
    item = last["messages"][0]
    assert item["from"] == "Sender <sender@remote.test>"
    assert item["date"] == "2026-11-26T10:00:00Z"
    assert item["flags"] == [] and item["size"] > 100
    assert client.get("/api/mailboxes/INBOX/messages?page=0").status == 400
    assert client.get("/api/mailboxes/INBOX/messages?per_page=x").status == 400
    assert client.get("/api/mailboxes/Nope/messages").status == 404


def test_fetching_a_message_marks_it_seen_unless_peeking(srv, alice):
    deliver(srv, "alice@example.test", subject := _unique("fetch"), "Line one.\nLine two.\n")
    item = find_by_subject(alice, "INBOX", subject)
    path = f"/api/messages/{message_path(item)}"
    peek = alice.get(path + "?peek=1").json()
    assert "\\Seen" not in peek["flags"]
    assert peek["body"] == [{"part": "1", "type": "text", "content": "Line one.\nLine two.\n"}]
    assert peek["to"] == "alice@example.test"
    assert peek["attachments"] == []
    full = alice.get(path).json()
    assert "\\Seen" in full["flags"]
    assert find_by_subject(alice, "INBOX", subject)["flags"] == ["\\Seen"]


def test_a_script_in_html_is_never_served(srv, alice):
    msg = EmailMessage()
    msg["From"] = "Mallory <mallory@remote.test>"
    msg["To"] = "alice@example.test"
    msg["Subject"] = subject = _unique("<script>alert('subject')</script>")
    msg.set_content("plain <script>alert('plain')</script> version")
    msg.add_alternative(
        "<p onclick=\"alert('a')\">Hi <b>there</b><script>alert('x')</script>"
        '<img src="http://tracker.test/t.png" onerror="alert(1)">'
        '<a href="javascript:alert(2)">js</a> <a href="https://example.test/">ok</a>'
        "<style>body{display:none}</style><iframe src=//evil.test></iframe></p>",
        subtype="html",
    )
    deliver(srv, "alice@example.test", subject, message=msg)
    item = find_by_subject(alice, "INBOX", subject)
    path = message_path(item)
    data = alice.get(f"/api/messages/{path}?html=1").json()
    (block,) = data["body"]
    assert block["type"] == "html"
    html = block["content"]
    for bad in ("<script", "alert('x')", "onclick", "onerror", "<img", "javascript:", "<style"):
        assert bad not in html
    assert "<iframe" not in html
    assert "<b>there</b>" in html and 'href="https://example.test/"' in html
    assert data["has_alternative"] is True
    # the pages: the HTML version sanitised, the plain version and the subject escaped
    page = alice.get(f"/message/{path}?view=html").text
    assert "<script>alert" not in page and "onerror" not in page
    assert "&lt;script&gt;alert(&#39;subject&#39;)&lt;/script&gt;" in page
    plain = alice.get(f"/message/{path}").text
    assert "plain &lt;script&gt;alert(&#39;plain&#39;)&lt;/script&gt; version" in plain
    assert "<script>" not in plain
    listing = alice.get("/mailbox/INBOX").text
    assert "<script>alert" not in listing


def test_attachments_download_with_their_type_and_name(srv, alice):
    msg = EmailMessage()
    msg["From"] = "sender@remote.test"
    msg["To"] = "alice@example.test"
    msg["Subject"] = subject = _unique("attachments")
    msg.set_content("see attached")
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="r.pdf")
    msg.add_attachment("<script>alert(1)</script>", subtype="html", filename="Résumé ../x.html")
    deliver(srv, "alice@example.test", subject, message=msg)
    item = find_by_subject(alice, "INBOX", subject)
    data = alice.get(f"/api/messages/{message_path(item)}").json()
    assert [b["content"] for b in data["body"]] == ["see attached\n"]
    pdf, page = data["attachments"]
    assert pdf == {
        "part": "2",
        "content_type": "application/pdf",
        "filename": "r.pdf",
        "size": 13,
        "url": f"/api/messages/{message_path(item)}/parts/2",
    }
    reply = alice.get(pdf["url"])
    assert reply.status == 200
    assert reply.body == b"%PDF-1.4 fake"
    assert reply.headers["Content-Type"] == "application/pdf"
    assert reply.headers["Content-Disposition"].startswith('attachment; filename="r.pdf"')
    assert page["filename"] == "Résumé .._x.html"  # no path separators
    reply = alice.get(page["url"])
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    disposition = reply.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''R%C3%A9sum%C3%A9%20.._x.html" in disposition
    assert "sandbox" in reply.headers["Content-Security-Policy"]
    html_page = alice.get(f"/message/{message_path(item)}/part/3")
    assert html_page.body == reply.body
    assert alice.get(f"/api/messages/{message_path(item)}/parts/9").status == 404


# -- changing ----------------------------------------------------------------------------


def test_flags_are_added_and_removed(srv, alice):
    deliver(srv, "alice@example.test", subject := _unique("flags"))
    item = find_by_subject(alice, "INBOX", subject)
    url = f"/api/messages/{message_path(item)}/flags"
    reply = alice.post(url, json={"add": ["\\Seen", "\\Flagged", "$Important"]})
    assert reply.status == 200
    assert set(reply.json()["flags"]) == {"\\Seen", "\\Flagged", "$Important"}
    reply = alice.post(url, json={"remove": ["\\Seen", "$Important"]})
    assert reply.json()["flags"] == ["\\Flagged"]
    assert alice.post(url, json={"add": ["\\Recent"]}).status == 400
    assert alice.post(url, json={"add": "\\Seen"}).status == 400
    text = alice.post(url, json={"add": ["\\Seen"]}, headers={"Content-Type": "text/plain"})
    assert text.status == 415


def test_delete_moves_to_trash_and_deleting_in_trash_expunges(srv, alice):
    deliver(srv, "alice@example.test", subject := _unique("delete"))
    item = find_by_subject(alice, "INBOX", subject)
    reply = alice.delete(f"/api/messages/{message_path(item)}")
    assert reply.status == 200
    result = reply.json()
    assert result["expunged"] is False
    assert result["moved_to"]["mailbox"] == "Trash"
    assert alice.get(f"/api/messages/{message_path(item)}").status == 404
    trashed = find_by_subject(alice, "Trash", subject)
    assert trashed["id"] == result["moved_to"]
    reply = alice.delete(f"/api/messages/{message_path(trashed)}")
    assert reply.json() == {"expunged": True, "moved_to": None}
    with pytest.raises(AssertionError):
        find_by_subject(alice, "Trash", subject)


def test_delete_creates_trash_when_the_user_removed_it(start_server):
    own = start_server()
    client = logged_in(own, "alice")
    own.server.imap_store.delete("alice", "Trash")
    deliver(own, "alice@example.test", "no trash")
    item = find_by_subject(client, "INBOX", "no trash")
    assert client.delete(f"/api/messages/{message_path(item)}").status == 200
    assert find_by_subject(client, "Trash", "no trash")


# -- another user's ids -------------------------------------------------------------------------


def test_another_users_message_is_not_found(start_server):
    own = start_server()
    alice, bob = logged_in(own, "alice"), logged_in(own, "bob")
    deliver(own, "bob@example.test", subject := "bob only")
    item = find_by_subject(bob, "INBOX", subject)
    path = message_path(item)
    assert alice.get("/api/mailboxes").json()["mailboxes"][0]["messages"] == 0
    for reply in (
        alice.get(f"/api/messages/{path}"),
        alice.get(f"/api/messages/{path}/parts/1"),
        alice.post(f"/api/messages/{path}/flags", json={"add": ["\\Deleted"]}),
        alice.delete(f"/api/messages/{path}"),
        alice.get(f"/message/{path}"),
        alice.get(f"/message/{path}/part/1"),
        alice.post(f"/message/{path}/flags", form={"action": "seen"}),
        alice.post(f"/message/{path}/delete", form={}),
    ):
        assert reply.status == 404, reply
    assert find_by_subject(bob, "INBOX", subject)["flags"] == []  # untouched


@pytest.mark.parametrize(
    "name", ["../bob", "..", "%2e%2e", "INBOX/../../bob", "/etc", ".bob", "bob"]
)
def test_mailbox_names_cannot_reach_another_user(srv, alice, name):
    reply = alice.get(f"/api/mailboxes/{quote(name, safe='')}/messages")
    assert reply.status == 404
    assert reply.error_code == "not_found"


def test_malformed_ids_are_not_found(srv, alice):
    for path in ("INBOX/x/1", "INBOX/1/-1", "INBOX/0/1", "INBOX/1/99999999999"):
        assert alice.get(f"/api/messages/{path}").status == 404


# -- sending ------------------------------------------------------------------------------


def test_send_delivers_locally_through_the_submission_path(srv, alice, bob):
    subject = _unique("sent via api")
    reply = alice.post(
        "/api/send",
        json={"to": ["Bob <bob@example.test>"], "subject": subject, "body": "Hi Bob\n"},
    )
    assert reply.status == 200, reply.text
    result = reply.json()
    assert result["delivered"] == ["bob@example.test"] and result["queued"] == []
    assert result["message_id"].endswith("@mail.example.test>")
    assert result["saved_as"]["mailbox"] == "Sent"
    item = find_by_subject(bob, "INBOX", subject)
    data = bob.get(f"/api/messages/{message_path(item)}").json()
    assert data["from"] == "alice@example.test"
    assert data["to"] == "Bob <bob@example.test>"
    assert data["message_id"] == result["message_id"]
    assert data["body"][0]["content"] == "Hi Bob\n"
    raw = srv.server.imap_store.open("bob", "INBOX").read(item["id"]["uid"])
    assert raw.startswith(b"Return-Path: <alice@example.test>\r\nReceived: from [127.0.0.1]\r\n")
    assert b"with HTTPS id" in raw.split(b"\r\n\r\n")[0]
    assert find_by_subject(alice, "Sent", subject)["flags"] == ["\\Seen"]


def test_send_to_another_domain_goes_to_the_queue(srv, alice):
    reply = alice.post(
        "/api/send", json={"to": "carol@remote.test", "bcc": "bob@example.test", "subject": "q"}
    )
    assert reply.status == 200, reply.text
    result = reply.json()
    assert result["queued"] == ["carol@remote.test"]
    assert result["delivered"] == ["bob@example.test"]
    entry = srv.server.spool.get(result["queue_id"])
    assert (entry.sender, entry.recipients) == ("alice@example.test", ("carol@remote.test",))
    queued = entry.message_path.read_bytes()
    assert b"Bcc" not in queued and b"bob@example.test" not in queued


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"to": "nobody@example.test", "subject": "x"}, "no mailbox here"),
        ({"to": "not an address"}, "is not an address"),
        ({"subject": "nobody"}, "at least one recipient"),
        ({"to": "bob@example.test", "body": 5}, "must be a string"),
        ({"to": "bob@example.test", "x-header": "y"}, "unknown field"),
        ({"to": "bob@example.test\r\nBcc: carol@remote.test"}, "line breaks are not allowed"),
    ],
)
def test_send_refusals_deliver_nothing(srv, alice, body, message):
    before = len(list(Path(srv.config.mail_dir, "bob", "new").glob("*")))
    reply = alice.post("/api/send", json=body)
    assert reply.status == 400
    assert message in reply.json()["error"]["message"]
    assert len(list(Path(srv.config.mail_dir, "bob", "new").glob("*"))) == before


def test_a_subject_cannot_inject_header_fields(srv, alice, bob):
    reply = alice.post(
        "/api/send",
        json={"to": "bob@example.test", "subject": "hi\r\nBcc: carol@remote.test\r\nX-Evil: 1"},
    )
    assert reply.status == 200
    assert reply.json()["queued"] == []
    item = find_by_subject(bob, "INBOX", "hi Bcc: carol@remote.test X-Evil: 1")
    raw = srv.server.imap_store.open("bob", "INBOX").read(item["id"]["uid"])
    assert b"\r\nX-Evil:" not in raw and b"\r\nBcc:" not in raw
