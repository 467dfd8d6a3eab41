"""The IMAP commands of the authenticated and selected states (RFC 9051 §6.3, §6.4).

Each handler takes the session and the typed command, sends its untagged
responses and its completion, and leaves the session's state right. Disk
work runs in worker threads (``MailServer.offload``), one hop per command: the
store calls a command makes one after the other run together in one blocking
helper (``_open_and_status``, ``_append_and_refresh``, ...), because waking a
worker thread costs more than most of the calls themselves. Big FETCHes are
built in batches, one hop each, so responses start flowing before the last
message is read. A store refusal that the command answers with NO is returned
by those helpers rather than raised, so that an error of a later step (the
selected mailbox deleted meanwhile) still ends the session as it would alone.
Store errors carry an RFC 5530 response code (``NONEXISTENT``, ``CANNOT``,
...) that goes into the NO.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterable
from typing import Literal, cast

from conformance.wire import NEED_DATA, ConnectionClosed, to_crlf
from conformance.wire.imap import (
    Append,
    CopyMove,
    Create,
    Expunge,
    Fetch,
    ListCommand,
    MailboxCommand,
    NoArguments,
    Rename,
    Search,
    Select,
    SequenceSet,
    Status,
    Store,
    decode_mutf7,
    encode_mutf7,
    quote,
)

from ..storage.imapstore import (
    ImapStore,
    ImapStoreError,
    InvalidFlag,
    Mailbox,
    MailboxNotFound,
    MailboxStatus,
    Selection,
    StoreResult,
)
from ..storage.mailbox_index import MessageInfo
from . import fetch as fetching
from . import search as searching
from .cache import StructureCache, unique_of
from .message import ParsedMessage
from .selected import SelectedMailbox
from .session import AUTH, SELECTED, Close, ImapSession, State, register

__all__ = ["FETCH_BATCH"]

FETCH_BATCH = 256  # messages per worker-thread step of a FETCH
STRUCTURES = StructureCache()
INLINE_SEARCH = 20_000  # a SEARCH on flags alone over at most this many runs on the loop
_STRUCTURE_ITEMS = frozenset({"ENVELOPE", "BODY", "BODYSTRUCTURE"})
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


# -- helpers ----------------------------------------------------------------------------------


def _decode_name(raw: str) -> str:
    """The Unicode name that ``raw`` spells in modified UTF-7 (RFC 3501 §5.1.3).

    Only the one spelling the encoder gives is accepted: RFC 3501 §5.1.3 does not permit
    superfluous shifts ("&AOQ-&AOQ-" for "&AOQA5A-"), and a server "MUST preserve the
    exact form of the modified BASE64 portion", which a name stored as Unicode and listed
    in its canonical spelling could not do for a second spelling.

    Raises:
        ValueError: not valid modified UTF-7, or not in its canonical form.
    """
    name = decode_mutf7(raw)
    canonical = encode_mutf7(name)
    if canonical != raw:
        raise ValueError(
            f"{raw!r} has a superfluous shift; the permitted spelling is {canonical!r} "
            "(RFC 3501 section 5.1.3)"
        )
    return name


def _name(session: ImapSession, tag: str, raw: str) -> str | None:
    """The mailbox name from the wire (modified UTF-7, RFC 3501 §5.1.3); BAD if invalid."""
    try:
        return _decode_name(raw)
    except ValueError as exc:
        session.bad(tag, f"mailbox name: {exc}")
        return None


def _wire_name(name: str) -> bytes:
    return quote(encode_mutf7(name))


def _refused(session: ImapSession, tag: str, exc: ImapStoreError) -> None:
    if isinstance(exc, InvalidFlag):
        session.bad(tag, exc.reason)
    else:
        session.no(tag, exc.reason, getattr(exc, "code", None))


def _store(session: ImapSession) -> ImapStore:
    return session.server.imap_store


def _uid_set(uids: Iterable[int]) -> str:
    """``1:3,7`` for UIDPLUS responses (RFC 4315 §3: uid-set)."""
    values = sorted(uids)
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}:{values[j]}")
        i = j + 1
    return ",".join(parts)


def _selected(session: ImapSession) -> SelectedMailbox:
    assert session.selected is not None
    return session.selected


def _flag_list(flags: Iterable[str]) -> bytes:
    return b"(" + " ".join(flags).encode() + b")"


async def _enable_condstore(session: ImapSession) -> None:
    """A CONDSTORE enabling command runs (RFC 7162 §3.1): MODSEQ goes into every FETCH
    response from now on, later SELECTs report HIGHESTMODSEQ, and the first such command
    with a mailbox selected reports that mailbox's HIGHESTMODSEQ."""
    session.enabled.add("CONDSTORE")
    view = session.selected
    if view is not None and not view.condstore:
        view.condstore = True
        mailbox = view.mailbox
        highest = await session.server.offload(lambda: mailbox.highest_modseq)
        session.untagged(f"OK [HIGHESTMODSEQ {highest}] CONDSTORE enabled")


async def _leave_mailbox(session: ImapSession) -> None:
    """``session.close_mailbox()``; in a worker thread only if a mailbox is selected (its
    watch may write the index), else inline (it then only sets the state)."""
    if session.selected is None:
        session.close_mailbox()
    else:
        await session.server.offload(session.close_mailbox)


# -- SELECT, EXAMINE, CLOSE, UNSELECT -----------------------------------------------------------


def _leave_and_select(
    session: ImapSession, name: str, *, readonly: bool, callback: Callable[[], None]
) -> tuple[Mailbox, Selection] | ImapStoreError:
    """Blocking: leave the selected mailbox, then open and select (or examine) ``name``.

    Returns the store's refusal of ``name`` rather than raising it.
    """
    session.close_mailbox()
    try:
        mailbox = _store(session).open(session.user, name)
        return mailbox, mailbox.select(claim_recent=not readonly, callback=callback)
    except ImapStoreError as exc:
        return exc


async def _select(session: ImapSession, cmd: Select) -> None:
    readonly = cmd.name == "EXAMINE"
    # RFC 9051 §6.3.2: a failed SELECT leaves no mailbox selected (left before the
    # answer, so that no news of the old mailbox goes out with it)
    try:
        name = _decode_name(cmd.mailbox)
    except ValueError as exc:
        await _leave_mailbox(session)
        session.bad(cmd.tag, f"mailbox name: {exc}")
        return
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def wake() -> None:
        loop.call_soon_threadsafe(event.set)

    selected = await session.server.offload(
        _leave_and_select, session, name, readonly=readonly, callback=wake
    )
    if isinstance(selected, ImapStoreError):
        _refused(session, cmd.tag, selected)
        return
    mailbox, selection = selected
    condstore = cmd.condstore or "CONDSTORE" in session.enabled
    if cmd.condstore:
        session.enabled.add("CONDSTORE")
    view = SelectedMailbox(mailbox, selection, readonly=readonly, event=event, condstore=condstore)
    session.selected = view
    session.state = State.SELECTED
    keywords = list(selection.keywords)
    flags = [*SYSTEM_FLAGS, *keywords]
    session.untagged(b"FLAGS " + _flag_list(flags))
    session.untagged(b"%d EXISTS" % len(selection.messages))
    session.untagged(b"%d RECENT" % len(selection.recent))
    unseen = next((i for i, m in enumerate(selection.messages, 1) if "\\Seen" not in m.flags), None)
    if unseen is not None:
        session.untagged(f"OK [UNSEEN {unseen}] first unseen message")
    session.untagged(f"OK [UIDVALIDITY {selection.uidvalidity}] UIDs valid")
    session.untagged(f"OK [UIDNEXT {selection.uidnext}] predicted next UID")
    if readonly:
        session.untagged("OK [PERMANENTFLAGS ()] read-only")
    else:
        permanent = [*flags, "\\*"] if selection.can_create_keywords else flags
        session.untagged(b"OK [PERMANENTFLAGS " + _flag_list(permanent) + b"] flags allowed")
    if condstore:
        session.untagged(f"OK [HIGHESTMODSEQ {selection.highest_modseq}] mod-sequences")
    mode = "READ-ONLY" if readonly else "READ-WRITE"
    session.ok(cmd.tag, f"{cmd.name} completed", mode)


def _expunge_silently_and_leave(session: ImapSession, view: SelectedMailbox) -> None:
    """Blocking: CLOSE's work. RFC 9051 §6.4.1: a read-write mailbox is expunged without
    EXPUNGE responses (a failure is not reported either), then left."""
    if not view.readonly:
        with contextlib.suppress(ImapStoreError, OSError):
            view.mailbox.expunge(None, origin=view.watch)
    session.close_mailbox()


async def _close(session: ImapSession, cmd: NoArguments) -> None:
    await session.server.offload(_expunge_silently_and_leave, session, _selected(session))
    session.ok(cmd.tag, "CLOSE completed")


async def _unselect(session: ImapSession, cmd: NoArguments) -> None:
    await _leave_mailbox(session)
    session.ok(cmd.tag, "UNSELECT completed")


# -- mailbox management -----------------------------------------------------------------------


async def _create(session: ImapSession, cmd: Create) -> None:
    name = _name(session, cmd.tag, cmd.mailbox)
    if name is None:
        return
    if name.upper() == "INBOX" or name.rstrip("/").upper() == "INBOX":
        session.no(cmd.tag, "INBOX exists already", "ALREADYEXISTS")
        return
    if cmd.special_use:
        session.no(cmd.tag, "CREATE-SPECIAL-USE is not offered", "USEATTR")
        return
    try:
        await session.server.offload(_store(session).create, session.user, name)
    except ImapStoreError as exc:
        _refused(session, cmd.tag, exc)
        return
    session.ok(cmd.tag, "CREATE completed")


def _leave_and_delete(session: ImapSession, name: str, *, leave: bool) -> ImapStoreError | None:
    """Blocking: leave the selected mailbox first if ``leave`` (it is ``name``), then
    delete ``name``.

    Returns the store's refusal rather than raising it.
    """
    if leave:
        session.close_mailbox()
    try:
        _store(session).delete(session.user, name)
    except ImapStoreError as exc:
        return exc
    return None


async def _delete(session: ImapSession, cmd: MailboxCommand) -> None:
    name = _name(session, cmd.tag, cmd.mailbox)
    if name is None:
        return
    leave = session.selected is not None and session.selected.name == name
    refused = await session.server.offload(_leave_and_delete, session, name, leave=leave)
    if refused is not None:
        _refused(session, cmd.tag, refused)
        return
    session.ok(cmd.tag, "DELETE completed")


async def _rename(session: ImapSession, cmd: Rename) -> None:
    old = _name(session, cmd.tag, cmd.source)
    new = _name(session, cmd.tag, cmd.destination) if old is not None else None
    if old is None or new is None:
        return
    try:
        await session.server.offload(_store(session).rename, session.user, old, new)
    except ImapStoreError as exc:
        _refused(session, cmd.tag, exc)
        return
    session.ok(cmd.tag, "RENAME completed")


async def _subscribe(session: ImapSession, cmd: MailboxCommand) -> None:
    name = _name(session, cmd.tag, cmd.mailbox)
    if name is None:
        return
    store = _store(session)
    try:
        if cmd.name == "SUBSCRIBE":
            await session.server.offload(store.subscribe, session.user, name)
        else:
            await session.server.offload(store.unsubscribe, session.user, name)
    except ImapStoreError as exc:
        _refused(session, cmd.tag, exc)
        return
    session.ok(cmd.tag, f"{cmd.name} completed")


def _pattern(text: str) -> re.Pattern[str]:
    """RFC 9051 §6.3.9: ``*`` matches anything, ``%`` anything but the delimiter."""
    out = []
    for ch in text:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append("[^/]*")
        else:
            out.append(re.escape(ch))
    body = "".join(out)
    # INBOX is case-insensitive: match it so, whatever case the pattern uses
    if body[:5].upper() == "INBOX":
        body = "(?i:INBOX)" + body[5:]
    return re.compile(body, re.DOTALL)


async def _list(session: ImapSession, cmd: ListCommand) -> None:
    lsub = cmd.name == "LSUB"
    # RFC 9051 §6.3.9: "Any syntactically valid pattern that is not accepted by a server
    # for any reason MUST be silently ignored", so a reference or pattern that is not
    # modified UTF-7 gets no LIST responses and a tagged OK, not BAD
    patterns: list[str] = []
    try:
        reference = _decode_name(cmd.reference)
    except ValueError:
        reference = None
    for raw in cmd.patterns if reference is not None else ():
        with contextlib.suppress(ValueError):
            patterns.append(_decode_name(raw))
    if reference is None or not patterns:
        session.ok(cmd.tag, f"{'LSUB' if lsub else 'LIST'} completed (nothing matches)")
        return
    if not lsub and patterns == [""]:
        # RFC 9051 §6.3.9: the hierarchy delimiter and the root of the reference
        root = reference.split("/", 1)[0] + "/" if "/" in reference else ""
        session.untagged(b'LIST (\\Noselect) "/" ' + _wire_name(root))
        session.ok(cmd.tag, "LIST completed")
        return
    try:
        infos = await session.server.offload(_store(session).list_mailboxes, session.user)
    except ImapStoreError as exc:
        _refused(session, cmd.tag, exc)
        return
    regexes = [_pattern(reference + p) for p in patterns]
    subscribed_only = lsub or "SUBSCRIBED" in cmd.selection
    special_only = "SPECIAL-USE" in cmd.selection
    show_subscribed = "SUBSCRIBED" in cmd.selection or "SUBSCRIBED" in cmd.return_options
    verb = "LSUB" if lsub else "LIST"
    shown: set[str] = set()
    for info in infos:
        if not any(r.fullmatch(info.name) for r in regexes):
            continue
        if subscribed_only and not info.subscribed:
            continue
        shown.add(info.name)
        attrs = set(info.attributes)
        if special_only and not attrs & {"\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive"}:
            continue
        if lsub:
            attrs = {a for a in attrs if a in ("\\Noselect", "\\NonExistent")}
            if "\\NonExistent" in attrs:
                attrs = {"\\Noselect"}
        elif "\\NonExistent" in attrs and not subscribed_only:
            continue  # subscribed but gone: only LSUB and LIST (SUBSCRIBED) show it
        if show_subscribed and info.subscribed:
            attrs.add("\\Subscribed")
        flags = " ".join(sorted(attrs)).encode()
        session.untagged(
            verb.encode()
            + b" ("
            + flags
            + b') "'
            + info.delimiter.encode()
            + b'" '
            + _wire_name(info.name)
        )
    if lsub:
        # RFC 3501 §6.3.9: with "foo/bar" subscribed and "foo" not, "%" must return
        # foo, flagged \Noselect
        for info in infos:
            if not info.subscribed or any(r.fullmatch(info.name) for r in regexes):
                continue
            levels = info.name.split("/")
            for depth in range(1, len(levels)):
                superior = "/".join(levels[:depth])
                if superior not in shown and any(r.fullmatch(superior) for r in regexes):
                    shown.add(superior)
                    session.untagged(b'LSUB (\\Noselect) "/" ' + _wire_name(superior))
    session.ok(cmd.tag, f"{verb} completed")


_STATUS_ITEMS = {
    "MESSAGES": "messages",
    "UIDNEXT": "uidnext",
    "UIDVALIDITY": "uidvalidity",
    "UNSEEN": "unseen",
    "DELETED": "deleted",
    "SIZE": "size",
    "RECENT": "recent",
    "HIGHESTMODSEQ": "highestmodseq",
    "APPENDLIMIT": "",  # RFC 7889 §3.1: the APPEND size limit, the same for every mailbox
}


def _open_and_status(store: ImapStore, user: str, name: str) -> tuple[Mailbox, MailboxStatus]:
    """Blocking: STATUS's rescan and counts of ``name``."""
    mailbox = store.open(user, name)
    return mailbox, mailbox.status()


async def _status(session: ImapSession, cmd: Status) -> None:
    name = _name(session, cmd.tag, cmd.mailbox)
    if name is None:
        return
    unknown = [item for item in cmd.items if item not in _STATUS_ITEMS]
    if unknown:
        session.bad(cmd.tag, f"unknown STATUS item {unknown[0]}")
        return
    try:
        mailbox, status = await session.server.offload(
            _open_and_status, _store(session), session.user, name
        )
    except ImapStoreError as exc:
        _refused(session, cmd.tag, exc)
        return
    if "HIGHESTMODSEQ" in cmd.items:
        await _enable_condstore(session)  # RFC 7162 §3.1: STATUS (HIGHESTMODSEQ) enables it
    limit = session.settings.max_literal  # what CAPABILITY advertises as APPENDLIMIT=
    values = " ".join(
        f"{item} {limit if item == 'APPENDLIMIT' else getattr(status, _STATUS_ITEMS[item])}"
        for item in cmd.items
    )
    session.untagged(b"STATUS " + _wire_name(mailbox.name) + f" ({values})".encode())
    session.ok(cmd.tag, "STATUS completed")


def _append_and_refresh(
    store: ImapStore, user: str, name: str, cmd: Append, view: SelectedMailbox | None
) -> tuple[int, int] | ImapStoreError:
    """Blocking: store the message durably in ``name``, then collect the news of the
    selected mailbox ``view`` (the new message's EXISTS when it went there, RFC 9051
    §6.3.12).

    Returns ``(UIDVALIDITY, UID)`` of the new message, or the store's refusal
    rather than raising it.
    """
    try:
        mailbox = store.open(user, name)
        origin = view.watch if view is not None and view.mailbox is mailbox else None
        uid = mailbox.append(to_crlf(cmd.message), cmd.flags, cmd.internal_date, origin=origin)
    except ImapStoreError as exc:
        return exc
    if view is not None:
        view.refresh()
    return mailbox.uidvalidity, uid


async def _append(session: ImapSession, cmd: Append) -> None:
    name = _name(session, cmd.tag, cmd.mailbox)
    if name is None:
        return
    appended = await session.server.offload(
        _append_and_refresh, _store(session), session.user, name, cmd, session.selected
    )
    if isinstance(appended, MailboxNotFound):
        session.no(cmd.tag, appended.reason, "TRYCREATE")  # RFC 9051 §6.3.12
        return
    if isinstance(appended, ImapStoreError):
        _refused(session, cmd.tag, appended)
        return
    uidvalidity, uid = appended
    session.ok(cmd.tag, "APPEND completed", f"APPENDUID {uidvalidity} {uid}")


# -- selected state ---------------------------------------------------------------------------


def _flush_and_refresh(view: SelectedMailbox) -> None:
    """Blocking: CHECK's work: write the index if it is behind, then collect the news."""
    view.mailbox.flush()
    view.refresh()


async def _check(session: ImapSession, cmd: NoArguments) -> None:
    await session.server.offload(_flush_and_refresh, _selected(session))
    session.ok(cmd.tag, "CHECK completed")


def _refresh_and_expunge(
    view: SelectedMailbox, uids: list[int] | None
) -> list[int] | ImapStoreError | OSError:
    """Blocking: collect the news, then expunge (only ``uids``, if given: UID EXPUNGE).

    Returns the expunged UIDs, or the expunge's failure rather than raising it.
    """
    view.refresh()
    try:
        return view.mailbox.expunge(uids, origin=view.watch)
    except (ImapStoreError, OSError) as exc:
        return exc


async def _expunge(session: ImapSession, cmd: Expunge) -> None:
    view = _selected(session)
    if view.readonly:
        session.no(cmd.tag, "the mailbox is read-only (EXAMINE)", "READ-ONLY")
        return
    uids = None
    if cmd.sequence is not None:  # the view's UIDs change on the loop only, not in refresh
        uids = [uid for _, uid in view.resolve(cmd.sequence, uid=True)]
    gone = await session.server.offload(_refresh_and_expunge, view, uids)
    if isinstance(gone, (ImapStoreError, OSError)):
        session.no(cmd.tag, f"expunge failed: {gone}", "SERVERBUG")
        return
    session.send(view.forget(gone))
    session.ok(cmd.tag, "EXPUNGE completed")


def _numbers_ok(
    session: ImapSession, tag: str, view: SelectedMailbox, sequence: SequenceSet
) -> bool:
    if sequence.saved:
        session.bad(tag, "$ (SEARCHRES, RFC 5182) is not offered")
        return False
    if not view.valid_numbers(sequence):
        session.bad(tag, f"invalid message sequence number in {sequence} (RFC 9051 §9 seq-number)")
        return False
    return True


async def _search(session: ImapSession, cmd: Search) -> None:
    view = _selected(session)
    if cmd.return_options is not None and "SAVE" in cmd.return_options:
        session.bad(cmd.tag, "RETURN (SAVE) needs SEARCHRES (RFC 5182), which is not offered")
        return
    problem = searching.check_charset(cmd.charset)
    if problem is not None:
        session.no(cmd.tag, problem, "BADCHARSET (UTF-8 US-ASCII)")
        return
    if searching.uses_modseq(cmd.criteria):
        await _enable_condstore(session)  # RFC 7162 §3.1: SEARCH MODSEQ enables CONDSTORE
    mailbox = view.mailbox
    recent = view.watch.recent
    uids = list(view.uids)

    def load(info: MessageInfo) -> bytes | None:
        try:
            return mailbox.read(info.uid)
        except (ImapStoreError, OSError):
            return None

    def run() -> bytes:
        snapshot = mailbox.snapshot()
        entries: Iterable[tuple[int, MessageInfo, bool]]
        same = len(snapshot) == len(uids) and (not uids or snapshot[-1].uid == uids[-1])
        if same and cmd.return_options is None:
            # UNSEEN, DELETED, ...: the commonest SEARCH, straight off the snapshot
            found = searching.search_flag(cmd.criteria, snapshot, uid=cmd.uid)
            if found is not None:
                return searching.format_search(found)
        if same:
            # the usual case: the view is the mailbox (both ascending; anything added
            # since would be above the view's last UID, anything expunged would
            # shorten the snapshot)
            infos = snapshot
            entries = ((seq, m, m.uid in recent) for seq, m in enumerate(snapshot, start=1))
        else:
            by_uid = {m.uid: m for m in snapshot}
            infos = [by_uid[uid] for uid in uids if uid in by_uid]
            entries = [
                (seq, by_uid[uid], uid in recent)
                for seq, uid in enumerate(uids, start=1)
                if uid in by_uid
            ]
        numbers = searching.search(
            cmd.criteria,
            entries,
            max_seq=len(uids),
            max_uid=uids[-1] if uids else 0,
            load=load,
        )
        results = [uids[n - 1] for n in numbers] if cmd.uid else list(numbers)
        modseqs = None
        if searching.uses_modseq(cmd.criteria):
            modseq_of = {m.uid: m.modseq for m in infos}
            modseqs = [modseq_of[uids[n - 1]] for n in numbers]
        if cmd.return_options is not None:
            return searching.format_esearch(
                cmd.tag, results, cmd.return_options, uid=cmd.uid, modseqs=modseqs
            )
        return searching.format_search(
            results, modseq=max(modseqs, default=None) if modseqs else None
        )

    if searching.needs_message(cmd.criteria) or len(uids) > INLINE_SEARCH:
        session.send(await session.server.offload(run))
    else:  # flags, sizes, dates, sets: memory only, cheaper than a thread hop
        session.send(run())
    session.ok(cmd.tag, f"{'UID ' if cmd.uid else ''}SEARCH completed")


async def _fetch(session: ImapSession, cmd: Fetch) -> None:
    view = _selected(session)
    if not cmd.uid and not _numbers_ok(session, cmd.tag, view, cmd.sequence):
        return
    problem = fetching.check_items(cmd.items)
    if problem is not None:
        session.bad(cmd.tag, problem)
        return
    if cmd.changedsince is not None or any(att.name == "MODSEQ" for att in cmd.items):
        await _enable_condstore(session)  # RFC 7162 §3.1: both are enabling commands
    targets = list(view.resolve(cmd.sequence, uid=cmd.uid))
    mailbox = view.mailbox
    seen = fetching.sets_seen(cmd.items) and not view.readonly
    infos: dict[int, MessageInfo] = {}  # filled by the first step, before the first batch
    body = fetching.needs_body(cmd.items)
    # ENVELOPE/BODY/BODYSTRUCTURE alone come from the structure cache (no file reads)
    body_items = [att for att in cmd.items if fetching.needs_body((att,))]
    structure_only = body and all(
        att.name in _STRUCTURE_ITEMS and att.section is None for att in body_items
    )
    # BODY[] / RFC822 alone: the stored bytes as they are, nothing to parse
    whole_only = body and all(_is_whole(att) for att in body_items)
    recent = view.watch.recent
    missing = 0

    unknown_cte: list[str] = []

    def build(batch: list[tuple[int, int]]) -> tuple[bytes, int]:
        out = bytearray()
        lost = 0
        for seq, uid in batch:
            info = infos.get(uid)
            if info is None:
                lost += 1
                continue
            if cmd.changedsince is not None and info.modseq <= cmd.changedsince:
                continue
            message: ParsedMessage | None = None
            if structure_only:

                def load(uid: int = uid, size: int = info.size) -> ParsedMessage:
                    raw = mailbox.read(uid)
                    return ParsedMessage.parse(raw, crlf=len(raw) == size)

                message = cast(ParsedMessage, STRUCTURES.view(unique_of(info.path), load))
            elif body:
                try:
                    raw = mailbox.read(uid)
                except (ImapStoreError, OSError):
                    lost += 1
                    continue
                if whole_only and len(raw) == info.size:
                    message = cast(ParsedMessage, _Whole(raw))
                else:
                    # stored at its RFC822.SIZE: no bare LF to convert (no scan needed)
                    message = ParsedMessage.parse(raw, crlf=len(raw) == info.size)
            try:
                out += fetching.fetch_response(
                    seq,
                    info,
                    cmd.items,
                    recent=uid in recent,
                    message=message,
                    include_uid=cmd.uid,
                    include_flags=seen and "\\Seen" in info.flags,
                    modseq=view.condstore,
                )
            except fetching.UnknownCte as exc:
                unknown_cte.append(str(exc) or f"message {seq}: unknown transfer encoding")
            except (ImapStoreError, OSError):  # the structure cache had to read a lost file
                lost += 1
        return bytes(out), lost

    def mark_seen_snapshot_and_build(batch: list[tuple[int, int]]) -> tuple[bytes, int]:
        """The first step: set \\Seen if the items do, take the state that every batch
        reports, and build the first batch."""
        if seen:
            mailbox.store([uid for _, uid in targets], "add", ["\\Seen"], origin=view.watch)
        infos.update((m.uid, m) for m in mailbox.snapshot())
        return build(batch)

    # one hop per batch, the first one with the \Seen marking and the snapshot (no
    # messages named, as by UIDs that are not here: nothing to mark, read or answer)
    step = mark_seen_snapshot_and_build
    for start in range(0, len(targets), FETCH_BATCH):
        chunk, lost = await session.server.offload(step, targets[start : start + FETCH_BATCH])
        step = build
        missing += lost
        session.send(chunk)
        await session.flush()
    if unknown_cte:  # RFC 9051 §6.4.5: BINARY of a part we cannot decode
        session.no(cmd.tag, unknown_cte[0], "UNKNOWN-CTE")
    elif missing and not cmd.uid:  # RFC 9051 §6.4.9: UIDs that are gone are ignored
        session.no(cmd.tag, "some of the messages no longer exist", "EXPUNGEISSUED")
    else:
        session.ok(cmd.tag, f"{'UID ' if cmd.uid else ''}FETCH completed")


def _is_whole(att: object) -> bool:
    section = getattr(att, "section", None)
    name = getattr(att, "name", "")
    if name == "RFC822":
        return True
    return name == "BODY" and section is not None and not section.part and section.text is None


class _Whole:
    """A message stored in CRLF form, for FETCH BODY[] / RFC822: served as it is."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    def section(self, spec: object) -> bytes | None:
        assert not getattr(spec, "part", ()) and getattr(spec, "text", None) is None
        return self.data


_STORE_MODES: dict[str, Literal["add", "remove", "replace"]] = {
    "add": "add",
    "remove": "remove",
    "set": "replace",
}


def _store_and_snapshot(
    view: SelectedMailbox, uids: list[int], cmd: Store, *, snapshot: bool
) -> tuple[StoreResult, list[MessageInfo] | None] | ImapStoreError:
    """Blocking: change the flags, then (with ``snapshot``) take the messages' new state
    for the FETCH responses.

    Returns the store's refusal rather than raising it.
    """
    try:
        result = view.mailbox.store(
            uids,
            _STORE_MODES[cmd.action],
            cmd.flags,
            unchanged_since=cmd.unchangedsince,
            origin=view.watch,
        )
    except ImapStoreError as exc:
        return exc
    return result, view.mailbox.snapshot() if snapshot else None


async def _store_flags(session: ImapSession, cmd: Store) -> None:
    view = _selected(session)
    if not cmd.uid and not _numbers_ok(session, cmd.tag, view, cmd.sequence):
        return
    if view.readonly:
        session.no(cmd.tag, "the mailbox is read-only (EXAMINE)", "READ-ONLY")
        return
    if cmd.unchangedsince is not None:
        await _enable_condstore(session)  # RFC 7162 §3.1: an enabling command
    targets = list(view.resolve(cmd.sequence, uid=cmd.uid))
    stored = await session.server.offload(
        _store_and_snapshot,
        view,
        [uid for _, uid in targets],
        cmd,
        snapshot=not cmd.silent or view.condstore,
    )
    if isinstance(stored, ImapStoreError):
        _refused(session, cmd.tag, stored)
        return
    result, snapshot = stored
    modified = set(result.modified)
    if snapshot is not None:
        infos = {m.uid: m for m in snapshot}
        changed = set(result.changed)
        for seq, uid in targets:
            info = infos.get(uid)
            if info is None or uid in modified:
                continue
            if cmd.silent and uid not in changed:
                continue
            session.send(
                fetching.flags_response(
                    seq, info, recent=uid in view.watch.recent, uid=cmd.uid, modseq=view.condstore
                )
            )
    if modified:
        positions = view.positions()
        numbers = modified if cmd.uid else {positions[u] for u in modified if u in positions}
        session.ok(cmd.tag, "conditional STORE failed for some", f"MODIFIED {_uid_set(numbers)}")
    else:
        session.ok(cmd.tag, f"{'UID ' if cmd.uid else ''}STORE completed")


def _open_and_transfer(
    store: ImapStore, user: str, name: str, view: SelectedMailbox, uids: list[int], *, move: bool
) -> tuple[int, list[tuple[int, int]]] | ImapStoreError:
    """Blocking: copy or move messages of the selected mailbox into ``name``.

    Returns the target's UIDVALIDITY and the ``(source UID, new UID)`` pairs, or
    the store's refusal rather than raising it.
    """
    try:
        dest = store.open(user, name)
        transfer = view.mailbox.move if move else view.mailbox.copy
        pairs = transfer(uids, dest, origin=view.watch)
    except ImapStoreError as exc:
        return exc
    return dest.uidvalidity, pairs


async def _copy_move(session: ImapSession, cmd: CopyMove) -> None:
    view = _selected(session)
    if not cmd.uid and not _numbers_ok(session, cmd.tag, view, cmd.sequence):
        return
    move = cmd.name == "MOVE"
    if move and view.readonly:
        session.no(cmd.tag, "the mailbox is read-only (EXAMINE)", "READ-ONLY")
        return
    name = _name(session, cmd.tag, cmd.mailbox)
    if name is None:
        return
    uids = [uid for _, uid in view.resolve(cmd.sequence, uid=cmd.uid)]
    transferred = await session.server.offload(
        _open_and_transfer, _store(session), session.user, name, view, uids, move=move
    )
    if isinstance(transferred, MailboxNotFound):
        session.no(cmd.tag, transferred.reason, "TRYCREATE")
        return
    if isinstance(transferred, ImapStoreError):
        _refused(session, cmd.tag, transferred)
        return
    uidvalidity, pairs = transferred
    code = None
    if pairs:
        src = _uid_set(p[0] for p in pairs)
        dst = _uid_set(p[1] for p in pairs)
        code = f"COPYUID {uidvalidity} {src} {dst}"
    if move:
        if code is not None:
            session.untagged(f"OK [{code}] moved")  # RFC 6851 §4.3
        session.send(view.forget([p[0] for p in pairs]))
        session.ok(cmd.tag, "MOVE completed")
    else:
        session.ok(cmd.tag, "COPY completed", code)


async def _idle(session: ImapSession, cmd: NoArguments) -> None:
    """RFC 2177: push news about the selected mailbox until the client says DONE."""
    view = session.selected
    session.send(b"+ idling\r\n")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + session.settings.autologout
    while True:
        line = session.reader.next_line()
        if isinstance(line, bytes):
            if line.strip().upper() != b"DONE":
                session.bad(cmd.tag, "expected DONE to end IDLE (RFC 2177 §3)")
                return
            break
        if isinstance(line, ConnectionClosed):
            raise Close
        if line is not NEED_DATA:
            session.bad(cmd.tag, "bad line during IDLE")
            return
        if view is not None:
            view.event.clear()
            await session.server.offload(view.refresh)
            session.send(view.pending_updates(allow_expunge=True))
        await session.flush()
        remaining = deadline - loop.time()
        if remaining <= 0:
            session.untagged("BYE autologout during IDLE (RFC 9051 §5.4)")
            raise Close
        read: asyncio.Future[bytes] = asyncio.ensure_future(session.conn.read(remaining))
        waits: set[asyncio.Future[object]] = {read}  # type: ignore[arg-type]
        if view is not None:
            waits.add(asyncio.ensure_future(view.event.wait()))
        done, pending = await asyncio.wait(
            waits, timeout=min(IDLE_POLL, remaining), return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if read in done:
            if read.exception() is not None:
                session.untagged("BYE autologout during IDLE (RFC 9051 §5.4)")
                raise Close
            session.reader.receive_data(read.result())
    session.ok(cmd.tag, "IDLE terminated")


IDLE_POLL = 2.0  # seconds between rescans during IDLE, for deliveries by other processes


register("SELECT", AUTH, _select)
register("EXAMINE", AUTH, _select)
register("CREATE", AUTH, _create)
register("DELETE", AUTH, _delete)
register("RENAME", AUTH, _rename)
register("SUBSCRIBE", AUTH, _subscribe)
register("UNSUBSCRIBE", AUTH, _subscribe)
register("LIST", AUTH, _list)
register("LSUB", AUTH, _list)
register("STATUS", AUTH, _status)
register("APPEND", AUTH, _append)
register("IDLE", AUTH, _idle)
register("CHECK", SELECTED, _check)
register("CLOSE", SELECTED, _close)
register("UNSELECT", SELECTED, _unselect)
register("EXPUNGE", SELECTED, _expunge)
register("SEARCH", SELECTED, _search)
register("FETCH", SELECTED, _fetch)
register("STORE", SELECTED, _store_flags)
register("COPY", SELECTED, _copy_move)
register("MOVE", SELECTED, _copy_move)
