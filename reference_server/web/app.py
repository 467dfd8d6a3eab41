"""The web application: routes for the pages and the JSON API, and the middlewares around them.

Theory of operation: one aiohttp :class:`~aiohttp.web.Application` per HTTP
listener, running in the server's event loop (:mod:`.listener`). Three
middlewares wrap every handler, outermost first:

1. errors: a :class:`WebError` (or aiohttp's own 404/405/413) becomes a JSON
   error under ``/api/`` and an HTML page elsewhere;
2. host: the ``Host`` header must be an IP address, ``localhost`` or the
   server's ``hostname``, so a DNS-rebinding page cannot talk to us under a
   name of its own;
3. auth: every route but the login ones needs a live session (API: 401;
   pages: a redirect to ``/login``); every POST, PUT, PATCH and DELETE needs
   the session's CSRF token and a same-origin ``Origin`` if any
   (:mod:`.csrf`); the login POSTs need the same-origin check only.

Handlers get the session from ``request[SESSION]`` and pass its user name to
:class:`~.mail.MailAccess`, whose every lookup is scoped to that user: a
message id of another user is a 404, the same as one that never existed.
Store calls block on disk, so they run in ``asyncio.to_thread``, as the IMAP
commands do. Every response carries a Content-Security-Policy without any
script source (the pages use no JavaScript), ``nosniff``, no referrer and no
framing; attachments are served as ``Content-Disposition: attachment`` with a
sandboxing policy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import jinja2
from aiohttp import web
from markupsafe import Markup

from .compose import ComposeError, Draft, submit
from .csrf import CSRF_FIELD, UNSAFE_METHODS, origin_ok, request_token, token_ok
from .mail import (
    MAX_PAGE_SIZE,
    PAGE_SIZE,
    BadFlags,
    MailAccess,
    MessageRef,
    NotFound,
    flags_from,
)
from .render import attachment_filename as filename_of
from .render import content_type, find_part, parse_message, part_bytes, render_message
from .sessions import LoginGate, SessionStore, WebSession, cookie_name

if TYPE_CHECKING:
    from ..app import MailServer
    from ..auth import Account

__all__ = ["CONTEXT", "SESSION", "WebContext", "WebError", "make_app"]

log = logging.getLogger("reference_server.web")

TEMPLATES: Final = Path(__file__).parent / "templates"
STATIC: Final = Path(__file__).parent / "static"
PAGE_CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
DOWNLOAD_CSP: Final = "default-src 'none'; sandbox"
MAX_CREDENTIAL: Final = 1024  # characters of a user name or password
HOME: Final = "/mailbox/INBOX"
NOTICES: Final = {
    "sent": "Message sent.",
    "deleted": "Message moved to Trash.",
    "expunged": "Message deleted.",
    "unread": "Message marked as unread.",
}
# the form actions of the message page: action -> (mode, flag)
FLAG_ACTIONS: Final = {
    "seen": ("add", "\\Seen"),
    "unseen": ("remove", "\\Seen"),
    "flag": ("add", "\\Flagged"),
    "unflag": ("remove", "\\Flagged"),
}
_PUBLIC: Final = frozenset({"/login", "/api/login", "/static/style.css"})
_TOKEN: Final = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+$")


class WebError(Exception):
    """An answer other than success: HTTP status, a short code for the API, a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class WebContext:
    """What the handlers share: the mail server, sessions, templates."""

    server: MailServer
    secure: bool
    sessions: SessionStore
    mail: MailAccess
    templates: jinja2.Environment
    gate: LoginGate

    @property
    def cookie(self) -> str:
        return cookie_name(self.secure)


CONTEXT: Final = web.AppKey("mailharness-web", WebContext)
SESSION: Final = web.RequestKey("mailharness-session", WebSession)


def make_app(server: MailServer, *, secure: bool) -> web.Application:
    """The application for one HTTP listener.

    Args:
        server: the mail server whose accounts and store it serves.
        secure: whether the listener uses TLS (cookies are ``Secure`` then).
    """
    app = web.Application(
        middlewares=[_errors, _host, _auth],
        client_max_size=server.config.limits.max_message_size + 65536,
    )
    app[CONTEXT] = WebContext(
        server=server,
        secure=secure,
        sessions=SessionStore(),
        mail=MailAccess(server.imap_store),
        templates=_templates(),
        gate=LoginGate(),
    )
    app.on_response_prepare.append(_security_headers)
    r = app.router
    r.add_get("/", index)
    r.add_get("/login", login_page)
    r.add_post("/login", login_form)
    r.add_post("/logout", logout_form)
    r.add_get("/mailbox/{mailbox}", mailbox_page)
    r.add_get("/message/{mailbox}/{uidvalidity}/{uid}", message_page)
    r.add_get("/message/{mailbox}/{uidvalidity}/{uid}/part/{section}", download)
    r.add_post("/message/{mailbox}/{uidvalidity}/{uid}/flags", flags_form)
    r.add_post("/message/{mailbox}/{uidvalidity}/{uid}/delete", delete_form)
    r.add_get("/compose", compose_page)
    r.add_post("/compose", compose_form)
    r.add_get("/static/style.css", stylesheet)
    r.add_post("/api/login", api_login)
    r.add_post("/api/logout", api_logout)
    r.add_get("/api/session", api_session)
    r.add_get("/api/mailboxes", api_mailboxes)
    r.add_get("/api/mailboxes/{mailbox}/messages", api_messages)
    r.add_get("/api/messages/{mailbox}/{uidvalidity}/{uid}", api_message)
    r.add_get("/api/messages/{mailbox}/{uidvalidity}/{uid}/parts/{section}", download)
    r.add_post("/api/messages/{mailbox}/{uidvalidity}/{uid}/flags", api_flags)
    r.add_delete("/api/messages/{mailbox}/{uidvalidity}/{uid}", api_delete)
    r.add_post("/api/send", api_send)
    return app


# -- templates ----------------------------------------------------------------------------


def _size(value: int) -> str:
    if value < 1024:
        return f"{value} B"
    if value < 1024 * 1024:
        return f"{value / 1024:.1f} KB"
    return f"{value / (1024 * 1024):.1f} MB"


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value is escaped unless it is Markup (sanitised HTML only)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = _size
    env.filters["when"] = _when
    env.filters["urlpart"] = lambda value: quote(str(value), safe="")
    return env


def _render(request: web.Request, name: str, status: int = 200, **values: Any) -> web.Response:
    ctx = request.app[CONTEXT]
    session = request.get(SESSION)
    text = ctx.templates.get_template(name).render(
        session=session,
        csrf_field=CSRF_FIELD,
        hostname=ctx.server.config.hostname,
        **values,
    )
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _redirect(location: str) -> web.Response:
    """303 See Other: after a form POST the browser GETs ``location``."""
    return web.Response(status=303, headers={"Location": location})


# -- middlewares --------------------------------------------------------------------------


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def _error_response(request: web.Request, status: int, code: str, message: str) -> web.Response:
    if _is_api(request):
        return web.json_response(
            {"error": {"status": status, "code": code, "message": message}}, status=status
        )
    try:
        return _render(request, "error.html.j2", status, code=status, message=message)
    except jinja2.TemplateError:  # never let the error page hide the error
        return web.Response(text=message, status=status)


_HTTP_CODES: Final = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except WebError as exc:
        return _error_response(request, exc.status, exc.code, exc.message)
    except NotFound:
        return _error_response(request, 404, "not_found", "no such mailbox or message")
    except web.HTTPException as exc:
        if exc.status in _HTTP_CODES:
            return _error_response(request, exc.status, _HTTP_CODES[exc.status], exc.reason)
        raise


def _host_ok(request: web.Request) -> bool:
    # request.host would fall back to socket.getfqdn() (a DNS lookup) without a Host header;
    # RFC 9112 §3.2: a request without Host is answered 400
    host = request.headers.get("Host", "")
    if not host:
        return False
    if host.startswith("["):  # [v6]:port
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    name = name.lower().rstrip(".")
    return name in ("localhost", request.app[CONTEXT].server.config.hostname.lower())


@web.middleware
async def _host(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if not _host_ok(request):
        raise WebError(
            400,
            "bad_host",
            "unknown Host; use the server's address or its name "
            f"{request.app[CONTEXT].server.config.hostname}",
        )
    return await handler(request)


@web.middleware
async def _auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    unsafe = request.method in UNSAFE_METHODS
    if request.path in _PUBLIC:
        if unsafe and not origin_ok(request):
            raise WebError(403, "bad_origin", "cross-origin request refused")
        return await handler(request)
    session = ctx.sessions.get(request.cookies.get(ctx.cookie))
    if session is None:
        if _is_api(request):
            raise WebError(401, "unauthenticated", "log in first (POST /api/login)")
        return _redirect("/login")
    if unsafe:
        if not origin_ok(request):
            raise WebError(403, "bad_origin", "cross-origin request refused")
        if not token_ok(session.csrf_token, await request_token(request)):
            raise WebError(
                403,
                "csrf",
                "missing or wrong CSRF token: send the session's token in the X-CSRF-Token "
                "header (API) or the csrf_token form field",
            )
    request[SESSION] = session
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", PAGE_CSP)
    headers.setdefault("Cache-Control", "no-store")
    headers["X-Content-Type-Options"] = "nosniff"
    # not no-referrer: with it, browsers send "Origin: null" on our own form posts
    headers["Referrer-Policy"] = "same-origin"
    headers["X-Frame-Options"] = "DENY"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    headers["Server"] = "mailharness"


# -- helpers ------------------------------------------------------------------------------


def _session(request: web.Request) -> WebSession:
    return request[SESSION]


def _account(request: web.Request) -> Account:
    ctx = request.app[CONTEXT]
    session = _session(request)
    account = ctx.server.accounts.get(session.username)
    if account is None:  # removed from the accounts file since login
        ctx.sessions.drop(session.id)
        raise WebError(401, "unauthenticated", "the account no longer exists")
    return account


def _ref(request: web.Request) -> MessageRef:
    info = request.match_info
    try:
        uidvalidity, uid = int(info["uidvalidity"]), int(info["uid"])
    except ValueError:
        raise NotFound("no such message") from None
    if not (0 < uidvalidity < 2**32 and 0 < uid < 2**32):
        raise NotFound("no such message")
    return MessageRef(info["mailbox"], uidvalidity, uid)


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise WebError(400, "bad_request", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise WebError(400, "bad_request", f"{name} must be {low} to {high}")
    return value


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise WebError(415, "unsupported_media_type", "send a JSON body (application/json)")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise WebError(400, "bad_request", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise WebError(400, "bad_request", "the body must be a JSON object")
    return body


def _set_session_cookie(ctx: WebContext, response: web.StreamResponse, session: WebSession) -> None:
    response.set_cookie(
        ctx.cookie, session.id, path="/", secure=ctx.secure, httponly=True, samesite="Strict"
    )


def _clear_session_cookie(ctx: WebContext, response: web.StreamResponse) -> None:
    response.del_cookie(ctx.cookie, path="/", secure=ctx.secure, httponly=True, samesite="Strict")


async def _login(request: web.Request, username: object, password: object) -> WebSession | None:
    """Check a password with the failure delay the IMAP and POP3 logins use; a new
    session on success (any session the client had before ends)."""
    ctx = request.app[CONTEXT]
    if not isinstance(username, str) or not isinstance(password, str):
        raise WebError(400, "bad_request", "username and password must be strings")
    if len(username) > MAX_CREDENTIAL or len(password) > MAX_CREDENTIAL:
        raise WebError(400, "bad_request", f"at most {MAX_CREDENTIAL} characters each")
    peer = request.remote or "unknown"
    async with ctx.gate.hold(peer):
        account = await ctx.server.accounts.authenticate_async(username, password)
        if account is None:
            log.info("web login failed for %r from %s", username, peer)
            await asyncio.sleep(ctx.server.auth_throttle.record_failure(peer))
            return None
    old = request.cookies.get(ctx.cookie)
    if old:
        ctx.sessions.drop(old)
    log.info("web login: %s from %s", account.username, peer)
    return ctx.sessions.create(account.username)


def _session_json(ctx: WebContext, session: WebSession) -> dict[str, Any]:
    account = ctx.server.accounts.get(session.username)
    return {
        "username": session.username,
        "addresses": list(account.addresses) if account is not None else [],
        "csrf_token": session.csrf_token,
    }


async def _sidebar(request: web.Request) -> list[Any]:
    ctx = request.app[CONTEXT]
    return await asyncio.to_thread(ctx.mail.mailboxes, _session(request).username)


# -- pages --------------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    return _redirect(HOME)


async def login_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    if ctx.sessions.get(request.cookies.get(ctx.cookie)) is not None:
        return _redirect(HOME)
    return _render(request, "login.html.j2", error=None, username="")


async def login_form(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    form = await request.post()
    username, password = form.get("username", ""), form.get("password", "")
    session = await _login(request, username, password)
    if session is None:
        shown = username if isinstance(username, str) else ""
        return _render(
            request, "login.html.j2", 401, error="Wrong user name or password.", username=shown
        )
    response = _redirect(HOME)
    _set_session_cookie(ctx, response, session)
    return response


async def logout_form(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    ctx.sessions.drop(_session(request).id)
    response = _redirect("/login")
    _clear_session_cookie(ctx, response)
    return response


async def mailbox_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    name = request.match_info["mailbox"]
    number = _int_query(request, "page", 1, 1, 10**9)
    page = await asyncio.to_thread(ctx.mail.page, _session(request).username, name, number)
    notice = NOTICES.get(request.query.get("notice", ""))
    return _render(
        request,
        "mailbox.html.j2",
        mailboxes=await _sidebar(request),
        current=page.mailbox.name,
        page=page,
        notice=notice,
    )


async def message_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    ref = _ref(request)
    summary, data = await asyncio.to_thread(
        ctx.mail.read, _session(request).username, ref, mark_seen=True
    )
    prefer_html = request.query.get("view") == "html"
    view = await asyncio.to_thread(render_message, data, prefer_html=prefer_html)
    blocks = [(b.kind, Markup(b.content) if b.kind == "html" else b.content) for b in view.blocks]
    return _render(
        request,
        "message.html.j2",
        mailboxes=await _sidebar(request),
        current=ref.mailbox,
        ref=ref,
        summary=summary,
        view=view,
        blocks=blocks,
        prefer_html=prefer_html,
        notice=NOTICES.get(request.query.get("notice", "")),
    )


async def download(request: web.Request) -> web.StreamResponse:
    """One part of a message, as a download with its own type and file name."""
    ctx = request.app[CONTEXT]
    ref = _ref(request)
    _, data = await asyncio.to_thread(
        ctx.mail.read, _session(request).username, ref, mark_seen=False
    )
    msg = await asyncio.to_thread(parse_message, data)
    section = request.match_info["section"]
    part = find_part(msg, section)
    if part is None:
        raise NotFound("no such part")
    ctype = content_type(part)
    charset = part.get_content_charset()
    if charset and ctype.startswith("text/") and _TOKEN.match(charset):
        ctype += f"; charset={charset}"
    name = filename_of(part, section)
    fallback = "".join(c if c.isascii() and c.isprintable() else "_" for c in name)
    disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
    return web.Response(
        body=part_bytes(part),
        headers={
            "Content-Type": ctype,
            "Content-Disposition": disposition,
            "Content-Security-Policy": DOWNLOAD_CSP,
        },
    )


async def flags_form(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    ref = _ref(request)
    form = await request.post()
    action = FLAG_ACTIONS.get(str(form.get("action", "")))
    if action is None:
        raise WebError(400, "bad_request", f"action must be one of {', '.join(FLAG_ACTIONS)}")
    mode, flag = action
    add, remove = ([flag], []) if mode == "add" else ([], [flag])
    await asyncio.to_thread(ctx.mail.set_flags, _session(request).username, ref, add, remove)
    if flag == "\\Seen" and mode == "remove":  # reopening the message would mark it again
        return _redirect(f"/mailbox/{quote(ref.mailbox, safe='')}?notice=unread")
    return _redirect(f"/message/{ref.path}")


async def delete_form(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    ref = _ref(request)
    result = await asyncio.to_thread(ctx.mail.delete, _session(request).username, ref)
    notice = "expunged" if result.expunged else "deleted"
    return _redirect(f"/mailbox/{quote(ref.mailbox, safe='')}?notice={notice}")


async def compose_page(request: web.Request) -> web.StreamResponse:
    return _render(
        request,
        "compose.html.j2",
        mailboxes=await _sidebar(request),
        current=None,
        draft=Draft(),
        error=None,
        sender=_account(request).addresses[:1],
    )


async def compose_form(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    form = await request.post()
    fields = {key: str(form.get(key, "")) for key in ("to", "cc", "bcc", "subject", "body")}
    draft = Draft(**fields)
    account = _account(request)
    try:
        _, content = await submit(
            ctx.server, account, draft, peer=request.remote or "unknown", secure=ctx.secure
        )
    except ComposeError as exc:
        return _render(
            request,
            "compose.html.j2",
            exc.status,
            mailboxes=await _sidebar(request),
            current=None,
            draft=draft,
            error=str(exc),
            sender=account.addresses[:1],
        )
    await asyncio.to_thread(ctx.mail.save_sent, account.username, content)
    return _redirect(f"{HOME}?notice=sent")


async def stylesheet(request: web.Request) -> web.StreamResponse:
    return web.Response(
        body=(STATIC / "style.css").read_bytes(),
        content_type="text/css",
        charset="utf-8",
        headers={"Cache-Control": "max-age=3600"},
    )


# -- the JSON API -------------------------------------------------------------------------


async def api_login(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    body = await _json_body(request)
    session = await _login(request, body.get("username"), body.get("password"))
    if session is None:
        raise WebError(401, "login_failed", "wrong user name or password")
    response = web.json_response(_session_json(ctx, session))
    _set_session_cookie(ctx, response, session)
    return response


async def api_logout(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    ctx.sessions.drop(_session(request).id)
    response = web.json_response({"logged_out": True})
    _clear_session_cookie(ctx, response)
    return response


async def api_session(request: web.Request) -> web.StreamResponse:
    return web.json_response(_session_json(request.app[CONTEXT], _session(request)))


async def api_mailboxes(request: web.Request) -> web.StreamResponse:
    boxes = await _sidebar(request)
    return web.json_response({"mailboxes": [box.to_json() for box in boxes]})


async def api_messages(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    number = _int_query(request, "page", 1, 1, 10**9)
    per_page = _int_query(request, "per_page", PAGE_SIZE, 1, MAX_PAGE_SIZE)
    page = await asyncio.to_thread(
        ctx.mail.page, _session(request).username, request.match_info["mailbox"], number, per_page
    )
    return web.json_response(page.to_json())


async def api_message(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    ref = _ref(request)
    peek = request.query.get("peek") in ("1", "true")
    summary, data = await asyncio.to_thread(
        ctx.mail.read, _session(request).username, ref, mark_seen=not peek
    )
    prefer_html = request.query.get("html") in ("1", "true")
    view = await asyncio.to_thread(render_message, data, prefer_html=prefer_html)
    base = f"/api/messages/{ref.path}/parts/"
    result = summary.to_json()
    result.update(
        {
            "to": view.to,
            "cc": view.cc,
            "message_id": view.message_id,
            "body": [
                {"part": b.section, "type": b.kind, "content": b.content} for b in view.blocks
            ],
            "has_alternative": view.has_alternative,
            "attachments": [
                {**a.to_json(), "url": base + quote(a.section, safe="")} for a in view.attachments
            ],
        }
    )
    return web.json_response(result)


async def api_flags(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    ref = _ref(request)
    body = await _json_body(request)
    try:
        add, remove = flags_from(body.get("add")), flags_from(body.get("remove"))
        summary = await asyncio.to_thread(
            ctx.mail.set_flags, _session(request).username, ref, add, remove
        )
    except BadFlags as exc:
        raise WebError(400, "bad_flags", str(exc)) from None
    return web.json_response(summary.to_json())


async def api_delete(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    result = await asyncio.to_thread(ctx.mail.delete, _session(request).username, _ref(request))
    return web.json_response(result.to_json())


def _field(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    if not isinstance(value, str):
        raise WebError(400, "bad_request", f"{key} must be a string (or a list, for addresses)")
    return value


async def api_send(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    body = await _json_body(request)
    unknown = sorted(set(body) - {"to", "cc", "bcc", "subject", "body"})
    if unknown:
        raise WebError(400, "bad_request", f"unknown field {unknown[0]!r}")
    draft = Draft(**{key: _field(body, key) for key in ("to", "cc", "bcc", "subject", "body")})
    account = _account(request)
    try:
        sent, content = await submit(
            ctx.server, account, draft, peer=request.remote or "unknown", secure=ctx.secure
        )
    except ComposeError as exc:
        raise WebError(exc.status, "not_sent", str(exc)) from None
    saved = await asyncio.to_thread(ctx.mail.save_sent, account.username, content)
    result = sent.to_json()
    result["saved_as"] = saved.to_json() if saved is not None else None
    return web.json_response(result)
