"""Cross-site request forgery: a per-session token on every state change, and an Origin check.

Every POST, PUT, PATCH and DELETE of a logged-in session must carry the
session's token: in the ``X-CSRF-Token`` header (the JSON API) or in the
``csrf_token`` field of a form (the pages put it in every form). Another
site can make a browser send a request, but cannot read the token, so it
cannot forge one. The comparison takes constant time.

The login requests have no session yet, so no token; what protects them
from a forged login (logging the victim into the attacker's account) is
the Origin check: a browser names the page's origin in ``Origin`` on every
cross-origin POST, and a request whose ``Origin`` is not this server is
refused. The JSON login also insists on ``Content-Type: application/json``,
which a cross-site form cannot send. ``SameSite=Strict`` on the session
cookie is a third, independent layer.
"""

from __future__ import annotations

import hmac
from typing import Final

from aiohttp import web

__all__ = ["CSRF_FIELD", "CSRF_HEADER", "UNSAFE_METHODS", "origin_ok", "token_ok"]

CSRF_HEADER: Final = "X-CSRF-Token"
CSRF_FIELD: Final = "csrf_token"
UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def token_ok(expected: str, given: str | None) -> bool:
    """Whether ``given`` is the session's token (constant-time comparison)."""
    if not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


async def request_token(request: web.Request) -> str | None:
    """The token a request carries: the header, else the form field (form posts)."""
    header = request.headers.get(CSRF_HEADER)
    if header is not None:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()  # cached: the handler reads it again for free
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def origin_ok(request: web.Request) -> bool:
    """Whether the request's ``Origin`` (if any) is this server.

    Requests without ``Origin`` (non-browser clients) pass; browsers send it on
    every cross-origin POST, and ``null`` from sandboxed or privacy-preserving
    contexts is refused.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    host = request.headers.get("Host")  # not request.host: no getfqdn() fallback
    return host is not None and origin == f"{request.scheme}://{host}"
