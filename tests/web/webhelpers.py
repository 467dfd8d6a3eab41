"""A small HTTP client for the web listener's tests: real sockets, its own cookie jar.

``http.client`` rather than a browser-like client, so every test says exactly
which cookie, token and headers a request carries (the refusals depend on
that).
"""

from __future__ import annotations

import http.client
import json as jsonlib
import re
import ssl
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote, urlencode

from conftest import IO_TIMEOUT, RunningServer

__all__ = [
    "Reply",
    "WebClient",
    "deliver",
    "find_by_subject",
    "imap_flags",
    "logged_in",
    "message_path",
    "web_client",
]


@dataclass
class Reply:
    """One HTTP response, read whole."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    @property
    def error_code(self) -> str:
        return str(self.json()["error"]["code"])

    def cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []


@dataclass
class WebClient:
    """Requests to one HTTP listener; cookies set by the server are sent back."""

    host: str
    port: int
    context: ssl.SSLContext | None  # None: cleartext
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str | None = None

    @property
    def origin(self) -> str:
        return f"{'https' if self.context else 'http'}://{self.host}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        csrf: bool = True,
    ) -> Reply:
        """Send one request on a new connection.

        ``json`` or ``form`` is the body. The session's CSRF token goes in the
        ``X-CSRF-Token`` header of a JSON (or bodiless) POST/DELETE and in the form
        field of a form post, unless ``csrf`` is false.
        """
        conn: http.client.HTTPConnection
        if self.context is not None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=IO_TIMEOUT, context=self.context
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=IO_TIMEOUT)
        sent = dict(headers or {})
        body: bytes | None = None
        if json is not None:
            body = jsonlib.dumps(json).encode()
            sent.setdefault("Content-Type", "application/json")
        elif form is not None:
            values = dict(form)
            if csrf and self.csrf is not None:
                values.setdefault("csrf_token", self.csrf)
            body = urlencode(values).encode()
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if csrf and self.csrf is not None and form is None and method in ("POST", "DELETE"):
            sent.setdefault("X-CSRF-Token", self.csrf)
        if self.cookies:
            sent.setdefault("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        try:
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            reply = Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()
        for raw in reply.cookies():
            jar: SimpleCookie = SimpleCookie()
            jar.load(raw)
            for name, morsel in jar.items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return reply

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Reply:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Reply:
        return self.request("DELETE", path, **kwargs)

    def login(self, username: str, password: str) -> Reply:
        reply = self.post("/api/login", json={"username": username, "password": password})
        if reply.status == 200:
            self.csrf = reply.json()["csrf_token"]
        return reply


def web_client(srv: RunningServer, listener: str = "web") -> WebClient:
    """A client for ``listener``: HTTPS verified against the development CA, or cleartext."""
    host, port = srv.addr(listener)
    tls = srv.config.listeners[listener].tls.value == "implicit"
    return WebClient(host, port, srv.tls_context() if tls else None)


def logged_in(srv: RunningServer, user: str, listener: str = "web") -> WebClient:
    client = web_client(srv, listener)
    reply = client.login(user, srv.passwords[user])
    assert reply.status == 200, reply
    return client


def deliver(
    srv: RunningServer,
    to: str,
    subject: str,
    body: str = "Hello.\n",
    *,
    message: EmailMessage | bytes | None = None,
) -> None:
    """One message over the real MX listener (smtplib), from a remote sender."""
    if message is None:
        msg = EmailMessage()
        msg["From"] = "Sender <sender@remote.test>"
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
        msg.set_content(body)
        message = msg
    data = message.as_bytes(policy=policy.SMTP) if isinstance(message, EmailMessage) else message
    client = srv.smtp("mx")
    client.sendmail("sender@remote.test", [to], data)
    client.quit()


def message_path(item: dict[str, Any]) -> str:
    """``<mailbox>/<uidvalidity>/<uid>`` from a message id in API JSON."""
    ident = item.get("id", item)
    return f"{quote(ident['mailbox'], safe='')}/{ident['uidvalidity']}/{ident['uid']}"


def find_by_subject(client: WebClient, mailbox: str, subject: str) -> dict[str, Any]:
    """The listed message with ``subject`` (the newest if several), or AssertionError."""
    reply = client.get(f"/api/mailboxes/{quote(mailbox, safe='')}/messages?per_page=200")
    assert reply.status == 200, reply
    for item in reply.json()["messages"]:
        if item["subject"] == subject:
            return dict(item)
    raise AssertionError(f"no message {subject!r} in {mailbox}")


def imap_flags(fetch_data: list[Any]) -> set[str]:
    """The flags in an imaplib FETCH (FLAGS) answer."""
    raw = b" ".join(d if isinstance(d, bytes) else d[0] for d in fetch_data if d)
    m = re.search(rb"FLAGS \(([^)]*)\)", raw)
    assert m is not None, raw
    return set(m.group(1).decode().split())
