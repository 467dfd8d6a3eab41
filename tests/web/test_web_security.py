"""Sessions, CSRF on the form pages, login slowing, cleartext on loopback, and the http config."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import http.client
import ssl
import textwrap
import threading
import time

import pytest
from conftest import RunningServer, reference_config
from webhelpers import deliver, find_by_subject, logged_in, message_path, web_client

from reference_server.config import (
    ConfigError,
    ListenerConfig,
    ListenerKind,
    TlsMode,
    load_config,
)
from reference_server.web.sessions import LoginGate, SessionStore, cookie_name

# -- sessions, in memory ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_when_idle_and_after_the_absolute_limit():
    clock = Clock()
    store = SessionStore(idle=10, absolute=25, clock=clock)
    session = store.create("alice")
    assert len(session.id) >= 43 and session.id != session.csrf_token
    clock.now += 9
    assert store.get(session.id) is session  # restarts the idle timer
    clock.now += 9
    assert store.get(session.id) is session
    clock.now += 8  # 26 s after login: past the absolute limit although active
    assert store.get(session.id) is None
    idle = store.create("alice")
    clock.now += 10
    assert store.get(idle.id) is None
    assert store.get(None) is None and store.get("") is None


def test_the_oldest_sessions_go_first_and_a_user_can_be_logged_out_everywhere():
    clock = Clock()
    store = SessionStore(max_sessions=2, clock=clock)
    first, second = store.create("a"), store.create("b")
    store.get(first.id)  # now the most recently used
    third = store.create("b")
    assert store.get(second.id) is None
    assert store.get(first.id) is first and store.get(third.id) is third
    store.drop_user("b")
    assert store.get(third.id) is None and len(store) == 1


def test_login_gate_serialises_one_address_and_forgets_it():
    gate = LoginGate()
    order: list[str] = []

    async def attempt(address: str, name: str, hold: float) -> None:
        async with gate.hold(address):
            order.append(f"{name}+")
            await asyncio.sleep(hold)
            order.append(f"{name}-")

    async def main() -> None:
        await asyncio.gather(attempt("a", "1", 0.02), attempt("a", "2", 0), attempt("b", "3", 0))

    asyncio.run(main())
    assert order.index("1-") < order.index("2+")  # same address: one after the other
    assert order.index("3+") < order.index("1-")  # another address does not wait
    assert len(gate) == 0


def test_cookie_names():
    assert cookie_name(True) == "__Host-mailharness-session"
    assert cookie_name(False) == "mailharness-session"


# -- login slowing ---------------------------------------------------------------------------


@pytest.mark.slow
def test_failed_logins_are_slowed_per_address_and_parallel_guesses_queue(start_server):
    srv = start_server(limits={"auth_failure_delay": 0.1})
    client = web_client(srv)
    took = []
    for _ in range(3):
        start = time.monotonic()
        assert client.login("alice", "wrong").status == 401
        took.append(time.monotonic() - start)
    assert took[0] >= 0.1 and took[1] >= 0.2 and took[2] >= 0.3
    start = time.monotonic()
    assert client.login("alice", srv.passwords["alice"]).status == 200  # no delay on success
    assert time.monotonic() - start < 0.3
    # two guesses at once: the second waits for the first one's delay (0.4 s), then its own
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(web_client(srv).login("bob", "x").status))
        for _ in range(2)
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [401, 401]
    assert time.monotonic() - start >= 0.4 + 0.5
    assert srv.server.auth_throttle.recent("127.0.0.1") == 5  # shared with IMAP and POP3


def test_imap_failures_slow_web_logins_too(start_server):
    srv = start_server(limits={"auth_failure_delay": 0.1})
    imap = srv.imap()
    with pytest.raises(imap.error):
        imap.login("alice", "wrong")
    start = time.monotonic()
    assert web_client(srv).login("alice", "wrong").status == 401
    assert time.monotonic() - start >= 0.2  # the second failure from this address


# -- the form pages ------------------------------------------------------------------------


@pytest.fixture
def srv(start_server):
    return start_server()


def test_pages_without_a_session_redirect_to_login(srv):
    client = web_client(srv)
    for path in ("/", "/mailbox/INBOX", "/compose", "/message/INBOX/1/1"):
        reply = client.get(path)
        assert (reply.status, reply.headers["Location"]) == (303, "/login"), path
    assert client.post("/compose", form={"to": "bob@example.test"}).status == 303
    assert "Log in" in client.get("/login").text


def test_form_login_and_logout(srv):
    client = web_client(srv)
    bad = client.post("/login", form={"username": "alice", "password": "nope"})
    assert bad.status == 401 and "Wrong user name or password." in bad.text
    assert 'value="alice"' in bad.text
    ok = client.post("/login", form={"username": "alice", "password": srv.passwords["alice"]})
    assert (ok.status, ok.headers["Location"]) == (303, "/mailbox/INBOX")
    page = client.get("/mailbox/INBOX")
    assert page.status == 200 and "INBOX" in page.text
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    assert client.post("/logout", form={}).status == 403  # no token
    client.csrf = token
    out = client.post("/logout", form={})
    assert (out.status, out.headers["Location"]) == (303, "/login")
    assert client.get("/mailbox/INBOX").status == 303


def test_form_login_from_another_origin_is_refused(srv):
    client = web_client(srv)
    reply = client.post(
        "/login",
        form={"username": "alice", "password": srv.passwords["alice"]},
        headers={"Origin": "https://evil.test"},
    )
    assert reply.status == 403 and "cross-origin" in reply.text
    assert client.cookies == {}


def test_form_posts_need_the_token_in_the_form(srv):
    client = logged_in(srv, "alice")
    deliver(srv, "alice@example.test", "form flags")
    item = find_by_subject(client, "INBOX", "form flags")
    url = f"/message/{message_path(item)}/flags"
    assert client.post(url, form={"action": "flag"}, csrf=False).status == 403
    reply = client.post(url, form={"action": "flag", "csrf_token": "forged"}, csrf=False)
    assert reply.status == 403
    assert find_by_subject(client, "INBOX", "form flags")["flags"] == []
    reply = client.post(url, form={"action": "flag"})
    assert (reply.status, reply.headers["Location"]) == (303, f"/message/{message_path(item)}")
    assert find_by_subject(client, "INBOX", "form flags")["flags"] == ["\\Flagged"]
    assert client.post(url, form={"action": "explode"}).status == 400
    unread = client.post(url, form={"action": "unseen"})
    assert unread.headers["Location"] == "/mailbox/INBOX?notice=unread"
    gone = client.post(f"/message/{message_path(item)}/delete", form={})
    assert gone.headers["Location"] == "/mailbox/INBOX?notice=deleted"
    assert "Message moved to Trash." in client.get(gone.headers["Location"]).text


def test_compose_errors_keep_the_draft_escaped(srv):
    client = logged_in(srv, "alice")
    page = client.get("/compose")
    assert page.status == 200 and 'value="alice@example.test"' in page.text
    reply = client.post(
        "/compose",
        form={"to": "<script>x</script>", "subject": '"><b>', "body": "</textarea><script>"},
    )
    assert reply.status == 400
    assert "&lt;script&gt;x&lt;/script&gt;" in reply.text
    assert "&#34;&gt;&lt;b&gt;" in reply.text
    assert "&lt;/textarea&gt;&lt;script&gt;" in reply.text
    assert "<script>" not in reply.text


def test_unknown_pages_and_methods(srv):
    client = logged_in(srv, "alice")
    assert client.get("/nowhere").status == 404
    assert client.get("/api/nowhere").json()["error"]["code"] == "not_found"
    assert client.request("PUT", "/api/send", json={}).status in (403, 405)


# -- cleartext on loopback ---------------------------------------------------------------------


def test_a_cleartext_listener_on_loopback_has_no_secure_cookie(dev_setup, tmp_path):
    base, passwords, ca_file = dev_setup
    config = reference_config(base, tmp_path / "data")
    plain = ListenerConfig(
        name="plain", kind=ListenerKind.HTTP, host="127.0.0.1", port=0, tls=TlsMode.NONE
    )
    config = dataclasses.replace(config, listeners={**config.listeners, "plain": plain})
    srv = RunningServer(config, passwords, ca_file).start()
    try:
        client = web_client(srv, "plain")
        assert client.context is None
        reply = client.login("bob", passwords["bob"])
        assert reply.status == 200
        (cookie,) = reply.cookies()
        assert cookie.startswith("mailharness-session=")
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= attributes
        assert "secure" not in attributes
        assert client.get("/api/mailboxes").status == 200
        assert web_client(srv).login("bob", passwords["bob"]).status == 200  # HTTPS beside it
    finally:
        srv.close_clients()
        srv.stop()


# -- configuration -------------------------------------------------------------------------


def _load(tmp_path, listeners: str):
    path = tmp_path / "server.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            hostname: mail.example.test
            tls: {generate: true}
            listeners:
            """
        )
        + listeners
    )
    return load_config(path)


def test_http_listener_defaults_to_https_on_8443(tmp_path):
    config = _load(tmp_path, "  web: {kind: http}\n")
    web = config.listeners["web"]
    assert (web.kind, web.port, web.tls, web.host) == (
        ListenerKind.HTTP,
        8443,
        TlsMode.IMPLICIT,
        "127.0.0.1",
    )
    assert _load(tmp_path, "  http: {}\n").listeners["http"].kind is ListenerKind.HTTP
    plain = _load(tmp_path, "  w: {kind: http, host: '::1', tls: none}\n").listeners["w"]
    assert plain.tls is TlsMode.NONE


@pytest.mark.parametrize(
    ("listeners", "message"),
    [
        ("  w: {kind: http, tls: starttls}\n", "listeners.w.tls: HTTP has no STARTTLS"),
        (
            "  w: {kind: http, host: 0.0.0.0, tls: none}\n",
            "listeners.w.tls: an http listener on 0.0.0.0 needs tls: implicit",
        ),
        ("  w: {kind: http, host: 192.0.2.1, tls: none}\n", "tls: none is for loopback"),
    ],
)
def test_http_listener_refusals(tmp_path, listeners, message):
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, listeners)


def test_stop_closes_open_keep_alive_connections(start_server):
    srv = start_server()
    host, port = srv.addr("web")
    conn = http.client.HTTPSConnection(host, port, timeout=5, context=srv.tls_context())
    try:
        conn.request("GET", "/login")
        response = conn.getresponse()
        response.read()
        assert response.getheader("Connection") != "close"  # kept alive
        srv.stop()
        gc.collect()  # an unclosed server transport would warn here (warnings are errors)
        with pytest.raises((ConnectionError, http.client.HTTPException, ssl.SSLError, OSError)):
            conn.request("GET", "/login")
            conn.getresponse().read()
    finally:
        conn.close()
