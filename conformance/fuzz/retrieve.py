"""The retrieval check: a message acknowledged is retrievable (docs/fuzzing.md).

After an SMTP dialogue that ended without a finding, every message whose end of
data got 2xx for an account of the target (:class:`~.smtp_model.Delivered`)
must be in that account's INBOX. The check keeps one IMAP connection per account
for the whole run (STARTTLS as the target says, then ``LOGIN`` and ``SELECT
INBOX``; in memory, a connection to the ``imap`` listener of the same in-memory
server) and looks for the message's token in its Message-ID::

    r7 NOOP
    r8 UID SEARCH UID <low>:* HEADER Message-ID fuzz.<run>.<n>

The NOOP lets the server announce the mail that came since the last check
(RFC 9051 §5.2; the reference server, for one, does not look for new mail at a
SEARCH); it is left out right after the SELECT. ``<low>`` is UIDNEXT at the
SELECT of :meth:`RetrieveCheck.probe` (before the run), then one above the highest
UID found: a message that arrives later has a higher UID (RFC 9051 §2.3.1.1), so
the search reads only the new messages (without a probe: the whole INBOX). A
message not found is searched again every ``every`` seconds (a NOOP first) for
up to ``within`` seconds, and finally without the UID range; then the dialogue
is a :class:`~.dialogue.LostMessage` finding. A connection the server closed is
opened again once. Dialogues without such a message cost nothing.

The messages found are deleted again, by UID, 50 at a time and at the end of the
run (``UID STORE +FLAGS.SILENT (\\Deleted)``, ``UID EXPUNGE``: only when the
server has UIDPLUS, RFC 4315, or is IMAP4rev2), so a long run leaves the INBOX as
it found it and the server's per-command cost does not grow with it (the
reference server's NOOP gets slower with the mailbox's size).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conformance.fuzz.dialogue import (
    AnswerClosed,
    AnswerMalformed,
    AnswerTimeout,
    Login,
    LoginFailed,
    LostMessage,
    Send,
    StepRecord,
)
from conformance.fuzz.oracle import _GREETING, Connector, SocketConnector, _Conn, _play_login
from conformance.fuzz.protocols import PROTOCOLS
from conformance.fuzz.smtp_model import Delivered, message_token
from conformance.targets import Target

if TYPE_CHECKING:
    from conformance.fuzz.memory import MemoryConnector

__all__ = ["RETRIEVE_SERVICE", "RetrieveCheck", "RetrieveFailed", "retrieve_check_for"]

#: the target's service the check logs in to
RETRIEVE_SERVICE = "imap"

_IMAP = PROTOCOLS["imap"]


class RetrieveFailed(LoginFailed):
    """The retrieval service could not be used (not a finding: the run cannot go on)."""


#: found messages are expunged in batches of this many (when the server has UIDPLUS)
PURGE_BATCH = 50


class _Session:
    """One IMAP connection, logged in as one account with INBOX selected, kept for the
    run; ``validity`` and ``uidnext`` as the SELECT said, ``found`` the UIDs of the
    fuzzer's messages found and not yet expunged."""

    def __init__(self, connector: Connector, login: Login, deadline: float) -> None:
        self.deadline = deadline
        self.conn = _Conn(_IMAP, connector.open(), b"")
        self.tags = 0
        self.found: list[int] = []
        self.uidplus = False
        try:
            self._start(login)
        except BaseException:
            self.close()
            raise

    def _start(self, login: Login) -> None:
        try:
            greeting = self.conn.answer(_GREETING, self.deadline)
        except (AnswerClosed, AnswerTimeout, AnswerMalformed) as exc:
            raise RetrieveFailed(f"retrieval check: no greeting ({exc!r})") from None
        if greeting.code != "OK":
            raise RetrieveFailed(f"retrieval check: greeting {greeting.text}")
        try:
            _play_login(_IMAP, self.conn, _IMAP.new_model(), login, self.deadline)
        except LoginFailed as exc:
            name = login.account.name if login.account else "?"
            raise RetrieveFailed(f"retrieval check, as {name}: {exc}") from None
        caps = self.command("CAPABILITY").untagged
        words = {w.upper() for u in caps if u.keyword == "CAPABILITY" for w in u.line.split()}
        self.uidplus = bool(words & {"UIDPLUS", "IMAP4REV2"})  # UID EXPUNGE: RFC 4315, 9051
        selected = self.command("SELECT INBOX")
        self.validity, self.uidnext = "", 1
        for u in selected.untagged:
            if u.keyword == "OK" and u.code == "UIDVALIDITY":
                self.validity = u.code_args or ""
            elif u.keyword == "OK" and u.code == "UIDNEXT" and (u.code_args or "").isdigit():
                self.uidnext = int(u.code_args)

    def command(self, text: str) -> Any:
        """Send ``text`` with a new tag and return its answer, which must be OK.

        Raises:
            _Gone: the server closed the connection (it may have logged us out).
            RetrieveFailed: no usable answer, or not OK.
        """
        self.tags += 1
        tag = f"r{self.tags}"
        send = Send(verb=text.split(" ", 1)[0], wire=f"{tag} {text}\r\n".encode(), tag=tag)
        self.conn.send(send)
        what = " ".join(text.split(" ", 2)[:2])
        try:
            answer = self.conn.answer(send, self.deadline)
        except AnswerClosed:
            raise _Gone from None
        except (AnswerTimeout, AnswerMalformed) as exc:
            raise RetrieveFailed(f"retrieval check: no usable answer to {what} ({exc!r})") from None
        if answer.code == "BYE":
            raise _Gone
        if answer.code != "OK":
            raise RetrieveFailed(f"retrieval check: {what}: {answer.text}")
        return answer

    def search(self, token: str, low: int) -> list[int]:
        """The UIDs of the INBOX's messages with ``token`` in their Message-ID, at or
        above ``low``."""
        where = f"UID {low}:* " if low > 1 else ""
        answer = self.command(f"UID SEARCH {where}HEADER Message-ID {token}")
        return [n for u in answer.untagged if u.keyword == "SEARCH" for n in u.data or ()]

    def purge(self, batch: int) -> None:
        """Expunge the messages found, by UID (only those), once ``batch`` are waiting:
        a long run does not fill the INBOX (nor slow down the server's NOOP and SEARCH)."""
        if not self.uidplus or not self.found or len(self.found) < batch:
            return
        uids = ",".join(str(uid) for uid in sorted(set(self.found)))
        self.found = []
        try:
            self.command(f"UID STORE {uids} +FLAGS.SILENT (\\Deleted)")
            self.command(f"UID EXPUNGE {uids}")
        except RetrieveFailed:  # refused: the messages stay, the check goes on
            self.uidplus = False

    def close(self) -> None:
        with contextlib.suppress(_Gone, RetrieveFailed, OSError):
            self.purge(1)
        self.conn.chan.close()


class _Gone(Exception):
    """The retrieval connection was closed by the server."""


@dataclass
class RetrieveCheck:
    """Looks for the messages of a dialogue in their recipients' INBOXes over IMAP.

    ``logins`` maps an account's address (as the strategies write it in ``RCPT TO``)
    to the login prefix for that account on the IMAP service ``connector`` reaches;
    recipients that are not in it are not checked. ``service`` and ``starttls`` are
    what a saved scenario's second connection uses. One connection per account is
    opened at the first check (or :meth:`probe`) and kept until :meth:`close`.
    """

    connector: Connector
    logins: dict[str, Login]
    service: str = "imap"
    starttls: bool = False
    within: float = 2.0
    every: float = 0.1
    deadline: float = 2.0
    checks: int = 0  # messages looked for
    _sessions: dict[str, _Session] = field(default_factory=dict)
    #: address -> (UIDVALIDITY, the lowest UID a message still to come can have)
    _low: dict[str, tuple[str, int]] = field(default_factory=dict)

    def probe(self) -> None:
        """Log in as every account and search once (before the run: fail fast).

        Raises:
            RetrieveFailed: a login, SELECT INBOX or the search did not succeed.
        """
        try:
            for address, login in self.logins.items():
                session = self._sessions.get(address)
                if session is None:
                    session = self._sessions[address] = _Session(
                        self.connector, login, self.deadline
                    )
                # nothing was sent yet: what comes has a UID from UIDNEXT on
                self._low[address] = (session.validity, session.uidnext)
                session.search("fuzz.probe", 1)
        except _Gone:
            self.close()
            raise RetrieveFailed("retrieval check: the IMAP server closed the connection") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connections (a later check opens new ones)."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()

    def check(self, run: bytes, delivered: Sequence[Delivered], records: list[StepRecord]) -> None:
        """Raise :class:`LostMessage` for the first delivered message not found.

        Raises:
            LostMessage: a message acknowledged for an account is not in its INBOX.
            RetrieveFailed: the IMAP service could not be used.
        """
        wanted: dict[str, list[int]] = {}
        for msg in delivered:
            for rcpt in msg.recipients:
                if rcpt in self.logins and msg.index not in wanted.setdefault(rcpt, []):
                    wanted[rcpt].append(msg.index)
        for address, indexes in wanted.items():
            self.checks += len(indexes)
            missing = self._look(address, run, indexes)
            if missing:
                account = self.logins[address].account
                assert account is not None
                token = message_token(missing[0])
                shown = token.replace("{run}", run.decode("ascii"))
                raise LostMessage(
                    f"the message with Message-ID <{shown}@fuzz.test> got 250 for {address}, "
                    f"but {account.name}'s INBOX ({self.service}) does not have it after "
                    f"{self.within:g}s",
                    records,
                    account=account.name,
                    index=missing[0],
                    token=token,
                    within=self.within,
                    service=self.service,
                    starttls=self.starttls,
                )

    def _look(self, address: str, run: bytes, indexes: list[int]) -> list[int]:
        """The indexes of the messages not found in ``address``'s INBOX (a connection
        the server closed in between is opened again, once)."""
        for attempt in (1, 2):
            session = self._sessions.get(address)
            fresh = session is None
            if session is None:
                session = self._sessions[address] = _Session(
                    self.connector, self.logins[address], self.deadline
                )
            try:
                return self._search(address, session, run, indexes, fresh=fresh)
            except _Gone:
                self._sessions.pop(address, None)
                session.close()
                if attempt == 2 or fresh:
                    raise RetrieveFailed(
                        "retrieval check: the IMAP server closed the connection"
                    ) from None
        raise AssertionError("unreachable")

    def _search(
        self, address: str, session: _Session, run: bytes, indexes: list[int], *, fresh: bool
    ) -> list[int]:
        tokens = {i: message_token(i).replace("{run}", run.decode("ascii")) for i in indexes}
        seen = self._low.get(address)
        low = seen[1] if seen is not None and seen[0] == session.validity else 1
        uids: list[int] = []

        def missing_of(among: list[int], low: int) -> list[int]:
            left = []
            for i in among:
                hits = session.search(tokens[i], low)
                uids.extend(hits)
                if not hits:
                    left.append(i)
            return left

        if not fresh:  # new mail may show only after a command that announces it (§5.2)
            session.command("NOOP")
        missing = missing_of(indexes, low)
        end = time.monotonic() + self.within
        while missing and time.monotonic() + self.every <= end:
            time.sleep(self.every)
            session.command("NOOP")
            missing = missing_of(missing, low)
        if missing and low > 1:  # a UID below the range would break RFC 9051, but is no loss
            missing = missing_of(missing, 1)
        if uids:  # a message that arrives later gets a higher UID (RFC 9051 §2.3.1.1)
            self._low[address] = (session.validity, max(low, max(uids) + 1))
            session.found.extend(uids)
            session.purge(PURGE_BATCH)
        return missing


def retrieve_check_for(
    target: Target,
    *,
    memory: MemoryConnector | None = None,
    within: float = 2.0,
    deadline: float = 2.0,
) -> tuple[RetrieveCheck | None, str]:
    """The retrieval check for ``target``, or None; and a line for the run summary.

    Active when the target has an ``imap`` service that is not implicit TLS and an
    account with a password (every such account is checked). ``memory``: the SMTP
    fuzzing runs in memory, and the check uses the ``imap`` listener of that server.
    """
    svc = target.services.get(RETRIEVE_SERVICE)
    if svc is None:
        return None, f"off (the target has no {RETRIEVE_SERVICE} service)"
    if svc.tls.value == "implicit":
        return None, f"off ({RETRIEVE_SERVICE} uses implicit TLS)"
    accounts = [acc for acc in target.accounts.values() if acc.password]
    if not accounts:
        return None, "off (no account with a password)"
    starttls = svc.tls.value == "starttls"
    logins = {
        acc.address: Login(
            account=acc,
            starttls=starttls and memory is None,  # memory: as after TLS
            context=None if memory is not None else target.ssl_context(),
            server_name=target.server_name or svc.host,
        )
        for acc in accounts
    }
    connector: Connector
    if memory is not None:
        connector = memory.sibling(RETRIEVE_SERVICE)
    else:
        connector = SocketConnector(svc, target.connect_timeout)
    check = RetrieveCheck(
        connector,
        logins,
        service=RETRIEVE_SERVICE,
        starttls=starttls,
        within=within,
        deadline=deadline,
    )
    names = ", ".join(acc.name for acc in accounts)
    return check, f"on ({RETRIEVE_SERVICE} INBOX of {names}, within {within:g}s)"
