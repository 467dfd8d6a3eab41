"""Server-side web sessions: a random id in a cookie, everything else in memory.

The cookie carries only the session id (256 random bits from :mod:`secrets`);
the user name and the CSRF token stay on the server, so a cookie cannot be
forged or edited into another user's. A new id is made at every login (no
session fixation) and dropped at logout. Sessions end after
:data:`IDLE_TIMEOUT` without a request, and at the latest
:data:`ABSOLUTE_TIMEOUT` after login; a restart ends them all.

Cookie attributes: ``HttpOnly`` (no script reads it), ``SameSite=Strict``
(no cross-site request carries it), ``Path=/``, and on a TLS listener
``Secure`` with the ``__Host-`` name prefix (RFC 6265bis §4.1.3.2: the
browser then refuses the cookie unless it is Secure, host-only and for
``/``). A cleartext listener is allowed on loopback addresses only
(:mod:`reference_server.config`), and there the cookie cannot be Secure.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ABSOLUTE_TIMEOUT",
    "IDLE_TIMEOUT",
    "LoginGate",
    "SessionStore",
    "WebSession",
    "cookie_name",
]

IDLE_TIMEOUT: Final = 1800.0  # seconds without a request before a session ends
ABSOLUTE_TIMEOUT: Final = 12 * 3600.0  # seconds after login, whatever the activity
MAX_SESSIONS: Final = 10_000  # beyond this the least recently used session ends


def cookie_name(secure: bool) -> str:
    """The session cookie's name: ``__Host-`` prefixed when it is Secure."""
    return "__Host-mailharness-session" if secure else "mailharness-session"


@dataclass(slots=True)
class WebSession:
    """One logged-in browser or API client.

    Attributes:
        id: the cookie value.
        username: the account (its Maildir name); every lookup is scoped to it.
        csrf_token: the token every state-changing request must carry.
        created: when the session began (the store's clock).
        last_seen: the last request (the store's clock).
    """

    id: str
    username: str
    csrf_token: str
    created: float
    last_seen: float


class SessionStore:
    """Sessions by id, with idle and absolute expiry.

    Args:
        idle: seconds without a request before a session ends.
        absolute: seconds after login before a session ends.
        max_sessions: sessions kept at once; the least recently used go first.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        *,
        idle: float = IDLE_TIMEOUT,
        absolute: float = ABSOLUTE_TIMEOUT,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle = idle
        self.absolute = absolute
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: dict[str, WebSession] = {}  # insertion order is recency

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, username: str) -> WebSession:
        """A new session for ``username``, with a fresh id and CSRF token."""
        now = self._clock()
        session = WebSession(
            id=secrets.token_urlsafe(32),
            username=username,
            csrf_token=secrets.token_urlsafe(32),
            created=now,
            last_seen=now,
        )
        self._sessions[session.id] = session
        # the least recently used come first: drop the idle ones, and any beyond the cap
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_seen < self.idle and len(self._sessions) <= self.max_sessions:
                break
            del self._sessions[oldest.id]
        return session

    def get(self, session_id: str | None) -> WebSession | None:
        """The live session with this id (its idle timer restarted), or None."""
        if not session_id:
            return None
        session = self._sessions.pop(session_id, None)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen >= self.idle or now - session.created >= self.absolute:
            return None  # expired: already removed
        session.last_seen = now
        self._sessions[session_id] = session  # re-inserted: most recently used last
        return session

    def drop(self, session_id: str) -> None:
        """End a session (logout); unknown ids are ignored."""
        self._sessions.pop(session_id, None)

    def drop_user(self, username: str) -> None:
        """End every session of ``username``."""
        for sid in [s.id for s in self._sessions.values() if s.username == username]:
            del self._sessions[sid]


class LoginGate:
    """One password check at a time per client address.

    The failure delay (:class:`reference_server.throttle.FailureThrottle`) is
    served while the gate is held, so guesses sent in parallel from one
    address wait behind each other's delays instead of running side by side.
    """

    def __init__(self) -> None:
        self._gates: dict[str, tuple[asyncio.Lock, int]] = {}  # address -> (lock, holders)

    def __len__(self) -> int:
        return len(self._gates)

    @contextlib.asynccontextmanager
    async def hold(self, address: str) -> AsyncIterator[None]:
        """Wait for the address's turn; the entry is dropped when nobody waits any more."""
        lock, users = self._gates.get(address, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._gates[address] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._gates[address]
            if users <= 1:
                del self._gates[address]
            else:
                self._gates[address] = (lock, users - 1)
