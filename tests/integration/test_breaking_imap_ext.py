"""The IMAP extension scenarios (IDLE, UIDPLUS, MOVE, LITERAL+, NAMESPACE, ENABLE,
CONDSTORE, ID, SPECIAL-USE, UNSELECT, APPENDLIMIT, SASL-IR, CHILDREN) each fail on a
broken rule.

Each case runs :class:`ExtToy`, the toy IMAP session of tests/toymail.py grown by the
extensions these scenarios need (ENABLE, CONDSTORE mod-sequences, SPECIAL-USE and
CHILDREN in LIST, STATUS APPENDLIMIT, UNSELECT without arguments), with exactly one rule
broken; the phrase names what the scenario must report. ExtToy advertises a bare
APPENDLIMIT (RFC 7889 §2 (b)) and gives the limit through STATUS.
"""

from __future__ import annotations

import re
import time
import weakref
from dataclasses import dataclass, field

import pytest
from breaking_support import Handler, run_breaking
from scripted import ScriptConn
from toymail import (
    _FETCH_ITEMS,
    _MACROS,
    Refused,
    ToyImap,
    ToyMail,
    _flag_list,
    _Folder,
    _parens,
    _quote,
    _text,
)

Args = list[str | bytes]

APPEND_LIMIT = 1_000_000  # octets; ExtToy's literals may be no longer (RFC 7889)
ACCOUNTS = {"alice": "alice-pw", "bob": "bob-pw"}


@dataclass
class _Mods:
    """A folder's mod-sequences (RFC 7162 §3.1): per UID, and the highest handed out."""

    highest: int = 1
    seqs: dict[int, int] = field(default_factory=dict)

    def bump(self, uid: int) -> None:
        self.highest += 1
        self.seqs[uid] = self.highest


_MODS: weakref.WeakKeyDictionary[_Folder, _Mods] = weakref.WeakKeyDictionary()


def mods(folder: _Folder) -> _Mods:
    """The folder's mod-sequences; messages added since the last call get new ones. Hold
    the toy's lock."""
    state = _MODS.setdefault(folder, _Mods())
    for uid in folder.sync():
        if uid not in state.seqs:
            state.bump(uid)
    return state


class ExtToy(ToyImap):
    """ToyImap plus ENABLE, CONDSTORE, SPECIAL-USE, CHILDREN, APPENDLIMIT and SASL-IR."""

    AUTHENTICATED = ToyImap.AUTHENTICATED | {"ENABLE"}
    SELECTED = ToyImap.SELECTED | {"ENABLE"}
    max_literal = APPEND_LIMIT
    EXTRA_CAPS = ("SASL-IR", "ENABLE", "CONDSTORE", "SPECIAL-USE", "CHILDREN", "APPENDLIMIT")

    def __init__(self, toy: ToyMail, conn: ScriptConn) -> None:
        super().__init__(toy, conn)
        self.condstore = False  # a CONDSTORE enabling command ran (RFC 7162 §3.1)
        self.selecting = False

    def capabilities(self) -> list[str]:
        return [*super().capabilities(), *self.EXTRA_CAPS]

    # ---- CONDSTORE plumbing
    def enable_condstore(self) -> None:
        """An enabling command: the first one with a mailbox selected reports HIGHESTMODSEQ."""
        if self.condstore:
            return
        self.condstore = True
        if self.mailbox is not None:
            with self.toy.lock:
                highest = mods(self.selected_folder()).highest
            self.untagged(f"OK [HIGHESTMODSEQ {highest}] CONDSTORE enabled")

    def ok(self, tag: str, text: str, code: str | None = None) -> None:
        if self.selecting and self.mailbox is not None and self.condstore:
            with self.toy.lock:
                highest = mods(self.selected_folder()).highest
            self.untagged(f"OK [HIGHESTMODSEQ {highest}] mod-sequences")
        super().ok(tag, text, code)

    def fetch_response(
        self, n: int, uid: int, message: bytes, flags: set[str], items: list[str], date: str
    ) -> bytes:
        plain = [i for i in items if i != "MODSEQ"]
        line = super().fetch_response(n, uid, message, flags, plain, date)
        if "MODSEQ" not in items:
            return line
        with self.toy.lock:
            modseq = mods(self.selected_folder()).seqs.get(uid, 0)
        head = b"MODSEQ (%d)" % modseq
        return line[:-3] + (b" " if plain else b"") + head + b")\r\n"

    # ---- commands
    def do_enable(self, tag: str, args: Args) -> None:
        if not args:
            raise Refused("ENABLE needs capability names")
        names = [_text(a).upper() for a in args]
        newly = ["CONDSTORE"] if "CONDSTORE" in names and not self.condstore else []
        if newly:
            self.enable_condstore()
        self.untagged("ENABLED" + "".join(f" {n}" for n in self.enabled_names(names, newly)))
        self.ok(tag, "ENABLE completed")

    def enabled_names(self, asked: list[str], newly: list[str]) -> list[str]:
        """What the ENABLED response lists (RFC 5161 §3.2: only what was enabled)."""
        return newly

    def do_select(self, tag: str, args: Args, verb: str = "SELECT") -> None:
        if len(args) == 4 and args[1] == "(" and _text(args[2]).upper() == "CONDSTORE":
            args = args[:1]
            self.condstore = True  # reported by this SELECT itself
        self.selecting = True
        try:
            super().do_select(tag, args, verb)
        finally:
            self.selecting = False

    def do_unselect(self, tag: str, args: Args) -> None:
        if args:
            raise Refused("UNSELECT takes no arguments")
        super().do_unselect(tag, args)

    def status_values(self, folder: _Folder, uids: list[int]) -> dict[str, object]:
        return {
            **super().status_values(folder, uids),
            "HIGHESTMODSEQ": mods(folder).highest,
            "APPENDLIMIT": APPEND_LIMIT,
        }

    def status_checked(self, items: list[str]) -> None:
        if "HIGHESTMODSEQ" in items:
            self.status_enables()

    def status_enables(self) -> None:
        """STATUS (HIGHESTMODSEQ) is a CONDSTORE enabling command (RFC 7162 §3.1)."""
        self.enable_condstore()

    def do_fetch(self, tag: str, args: Args, by_uid: bool = False) -> None:
        args = list(args)
        since = None
        if len(args) >= 6 and args[-4] == "(" and _text(args[-3]).upper() == "CHANGEDSINCE":
            since, args = int(_text(args[-2])), args[:-4]
        if len(args) < 2:
            raise Refused("FETCH takes a sequence set and items")
        items, rest = _parens(args[1:])
        items = [i.upper() for i in items]
        if len(items) == 1 and items[0] in _MACROS:
            items = _MACROS[items[0]]
        if rest or not items or any(i not in (*_FETCH_ITEMS, "MODSEQ") for i in items):
            raise Refused("unsupported FETCH items")
        if since is not None or "MODSEQ" in items:
            self.enable_condstore()
        if by_uid:
            items = self.uid_items(items)
        if self.condstore and "MODSEQ" not in items:
            items = [*items, "MODSEQ"]
        chunks: list[bytes] = []
        with self.toy.lock:
            folder = self.selected_folder()
            state = mods(folder)
            for n, uid in self.messages(args[0], by_uid):
                message = folder.get(uid)
                if message is None or not self.changed_since(state, uid, since):
                    continue
                flags = folder.flags[uid]
                if "BODY[]" in items and not self.readonly and "\\Seen" not in flags:
                    flags.add("\\Seen")
                    state.bump(uid)
                    if "FLAGS" not in items:
                        items = [*items, "FLAGS"]
                date = folder.dates.get(uid, "01-Jan-2024 00:00:00 +0000")
                chunks.append(self.fetch_response(n, uid, message, flags, items, date))
        self.conn.send(b"".join(chunks))
        self.ok(tag, "FETCH completed")

    def changed_since(self, state: _Mods, uid: int, since: int | None) -> bool:
        """CHANGEDSINCE (RFC 7162 §3.1.4.1): only mod-sequences above ``since``."""
        return since is None or state.seqs[uid] > since

    def do_store(self, tag: str, args: Args, by_uid: bool = False) -> None:
        args = list(args)
        unchanged = None
        if len(args) > 4 and args[1] == "(" and _text(args[2]).upper() == "UNCHANGEDSINCE":
            unchanged = int(_text(args[3]))
            del args[1:5]
            self.enable_condstore()
        if len(args) < 3:
            raise Refused("STORE takes a sequence set, an item and flags")
        m = re.fullmatch(r"([+-]?)FLAGS(\.SILENT)?", _text(args[1]).upper())
        if m is None:
            raise Refused("unsupported STORE item")
        flags, rest = _parens(args[2:])
        if rest:
            raise Refused("junk after the flags")
        if self.readonly:
            raise Refused("mailbox is read-only", "NO")
        failed: list[int] = []
        with self.toy.lock:
            folder = self.selected_folder()
            state = mods(folder)
            for n, uid in self.messages(args[0], by_uid):
                if uid not in folder.flags:
                    continue
                if unchanged is not None and not self.unchanged(state, uid, unchanged):
                    failed.append(uid if by_uid else n)
                    continue
                current = folder.flags[uid]
                new = {
                    "+": current | set(flags),
                    "-": current - set(flags),
                    "": set(flags),
                }[m.group(1)]
                if new != current:
                    current.clear()
                    current |= new
                    self.flags_changed(state, uid)
                if not m.group(2) or (self.condstore and unchanged is not None):
                    parts = [f"UID {uid}"] if by_uid else []
                    if not m.group(2):
                        parts.append(f"FLAGS {_flag_list(current)}")
                    if self.condstore:
                        parts.append(f"MODSEQ ({state.seqs[uid]})")
                    self.untagged(f"{n} FETCH ({' '.join(parts)})")
        if failed:
            code = "MODIFIED " + ",".join(str(x) for x in failed)
            self.ok(tag, "conditional STORE failed", code)
        else:
            self.ok(tag, "STORE completed")

    def unchanged(self, state: _Mods, uid: int, since: int) -> bool:
        """UNCHANGEDSINCE (RFC 7162 §3.1.3): the message's mod-sequence is at most ``since``."""
        return state.seqs[uid] <= since

    def flags_changed(self, state: _Mods, uid: int) -> None:
        """A flag changed: a new mod-sequence (RFC 7162 §3.1)."""
        state.bump(uid)

    def do_search(self, tag: str, args: Args, by_uid: bool = False) -> None:
        keys = [_text(a).upper() for a in args]
        if keys[:1] != ["MODSEQ"]:
            super().do_search(tag, args, by_uid)
            return
        if len(keys) != 2 or not keys[1].isdigit():
            raise Refused("only SEARCH MODSEQ n is supported here")
        self.enable_condstore()
        least = int(keys[1])
        with self.toy.lock:
            state = mods(self.selected_folder())
            hits = [(i + 1, u) for i, u in enumerate(self.view) if state.seqs.get(u, 0) >= least]
            top = max((state.seqs[u] for _, u in hits), default=None)
        found = " ".join(str(u if by_uid else n) for n, u in hits)
        self.untagged(self.search_line(found, top))
        self.ok(tag, "SEARCH completed")

    def search_line(self, found: str, top: int | None) -> str:
        """RFC 7162 §3.1.5: a non-empty result ends with the highest MODSEQ."""
        return f"SEARCH {found} (MODSEQ {top})" if found else "SEARCH"

    def do_list(self, tag: str, args: Args) -> None:
        args = list(args)
        selection: list[str] = []
        if args and args[0] == "(":
            selection, args = _parens(args)
        if len(args) > 2 and _text(args[2]).upper() == "RETURN":
            _, rest = _parens(args[3:])  # CHILDREN and SPECIAL-USE are always given
            if rest:
                raise Refused("junk after the return options")
            args = args[:2]
        if len(args) != 2:
            raise Refused("LIST takes a reference and a pattern")
        assert self.user is not None
        if not _text(args[1]):
            self.untagged('LIST (\\Noselect) "/" ""')
            self.ok(tag, "LIST completed")
            return
        pattern = _text(args[0]) + _text(args[1])
        rx = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern)
        with self.toy.lock:
            names = self.toy.names(self.user)
        special_only = "SPECIAL-USE" in (s.upper() for s in selection)
        for name in names:
            if not re.fullmatch(rx, name, re.I if name == "INBOX" else 0):
                continue
            if special_only and not self.lists_without_special_use():
                continue  # no toy mailbox has a special use (RFC 6154 §2)
            attrs = self.child_attributes(name, names)
            shown = name if name == "INBOX" else _quote(name)
            self.untagged(f'LIST ({" ".join(attrs)}) "/" {shown}')
        self.ok(tag, "LIST completed")

    def lists_without_special_use(self) -> bool:
        """Whether LIST (SPECIAL-USE) also lists mailboxes that have no special use."""
        return False

    def child_attributes(self, name: str, names: list[str]) -> list[str]:
        """RFC 3348: \\HasChildren when another mailbox lies below ``name``."""
        below = any(other.startswith(name + "/") for other in names)
        return ["\\HasChildren" if below else "\\HasNoChildren"]


def ext_toy(session: type[ExtToy] = ExtToy) -> dict[str, Handler]:
    """IMAP (``session``'s rules) on the service ``imap``, accounts as in ``TARGET``."""
    return {"imap": ToyMail(dict(ACCOUNTS)).imap_handler(session)}


# ---- one broken rule each


class IdleDoneCaseSensitive(ExtToy):
    """IDLE ends only on "DONE" in upper case; "done" is BAD."""

    def do_idle(self, tag: str, args: Args) -> bool:
        self.conn.sendline("+ idling")
        line = self.read_line()
        if line == b"DONE":
            self.ok(tag, "IDLE terminated")
        else:
            self.done(tag, "BAD", "expected DONE")
        return True


class IdleEndsOnNews(ExtToy):
    """IDLE ends with OK when the mailbox changes, leaving the news for the next command."""

    def do_idle(self, tag: str, args: Args) -> bool:
        self.conn.sendline("+ idling")
        deadline = time.monotonic() + self.toy.idle_timeout
        while time.monotonic() < deadline:
            with self.toy.lock:
                changed = self.toy.lock.wait_for(self.changed, timeout=0.02)
            if changed:
                self.conn.sendline(f"{tag} OK IDLE terminated")
                return True
            if self.conn.readable():
                self.read_line()
                self.conn.sendline(f"{tag} OK IDLE terminated")
                return True
        return False


class UidExpungeIgnoresSet(ExtToy):
    """UID EXPUNGE removes every \\Deleted message, named or not."""

    def do_uid(self, tag: str, args: Args) -> None:
        if args and _text(args[0]).upper() == "EXPUNGE":
            self.do_expunge(tag, [])
        else:
            super().do_uid(tag, args)


class CopyUidAsRange(ExtToy):
    """COPYUID joins the source UIDs into one range, taking in UIDs that were not copied."""

    def ok(self, tag: str, text: str, code: str | None = None) -> None:
        if code and code.startswith("COPYUID "):
            _, validity, src, dst = code.split(" ")
            uids = [int(u) for u in src.split(",")]
            code = f"COPYUID {validity} {min(uids)}:{max(uids)} {dst}"
        super().ok(tag, text, code)


class CopyUidAfterExpunge(ExtToy):
    """UID MOVE sends the EXPUNGE first and COPYUID only in the tagged OK (RFC 4315 style)."""

    def untagged(self, text: str) -> None:
        m = re.fullmatch(r"OK \[(COPYUID [^]]+)\] moved", text)
        if m:
            self.moved_code = m.group(1)
        else:
            super().untagged(text)

    def ok(self, tag: str, text: str, code: str | None = None) -> None:
        if text == "MOVE completed":
            code = getattr(self, "moved_code", None)
        super().ok(tag, text, code)


class MoveDropsFlags(ExtToy):
    """MOVE puts the message into the target without its flags."""

    def copy(self, tag: str, args: Args, by_uid: bool, move: bool) -> None:
        if move:
            with self.toy.lock:
                source = self.selected_folder()
                for _, uid in self.messages(args[0], by_uid):
                    source.flags.get(uid, set()).clear()
        super().copy(tag, args, by_uid, move)


class DropsRestAfterLiteral(ExtToy):
    """After a "{n+}" literal, the rest of the command line is lost."""

    after_literal = False

    def read_line(self) -> bytes:
        line = super().read_line()
        if self.after_literal:
            self.after_literal = False
            return b""
        self.after_literal = re.search(rb"\{\d+\+\}$", line) is not None
        return line


class PlusLiteralsSynchronise(ExtToy):
    """A "{n+}" literal is treated as "{n}": the server asks for it with "+"."""

    def read_line(self) -> bytes:
        return re.sub(rb"\{(\d+)\+\}$", rb"{\1}", super().read_line())


class NamespaceBeforeLogin(ExtToy):
    """NAMESPACE is answered before login too."""

    NOT_AUTHENTICATED = ExtToy.NOT_AUTHENTICATED | {"NAMESPACE"}

    def do_namespace(self, tag: str, args: Args) -> None:
        self.untagged('NAMESPACE (("" "/")) NIL NIL')
        self.ok(tag, "NAMESPACE completed")


class EnableEchoesUnknown(ExtToy):
    """ENABLED lists every name the client sent, known or not."""

    def enabled_names(self, asked: list[str], newly: list[str]) -> list[str]:
        return asked


class EnableBeforeLogin(ExtToy):
    """ENABLE is taken before login."""

    NOT_AUTHENTICATED = ExtToy.NOT_AUTHENTICATED | {"ENABLE"}


class StatusDoesNotEnable(ExtToy):
    """STATUS (HIGHESTMODSEQ) is not treated as a CONDSTORE enabling command."""

    def status_enables(self) -> None:
        pass


class StoreKeepsModseq(ExtToy):
    """A flag change leaves the message's mod-sequence as it was."""

    def flags_changed(self, state: _Mods, uid: int) -> None:
        pass


class IgnoresUnchangedSince(ExtToy):
    """STORE (UNCHANGEDSINCE m) is applied whatever the message's mod-sequence."""

    def unchanged(self, state: _Mods, uid: int, since: int) -> bool:
        return True


class SearchWithoutModseq(ExtToy):
    """SEARCH MODSEQ answers the numbers without the highest mod-sequence."""

    def search_line(self, found: str, top: int | None) -> str:
        return f"SEARCH {found}".rstrip()


class IgnoresChangedSince(ExtToy):
    """FETCH (CHANGEDSINCE m) answers for every message."""

    def changed_since(self, state: _Mods, uid: int, since: int | None) -> bool:
        return True


class LongIdField(ExtToy):
    """The ID response has a field name of 31 octets."""

    def do_id(self, tag: str, args: Args) -> None:
        self.untagged('ID ("name" "toymail" "' + "x" * 31 + '" "too long a field name")')
        self.ok(tag, "ID completed")


class SpecialUseSelectsAll(ExtToy):
    """LIST (SPECIAL-USE) lists every mailbox, special use or not."""

    def lists_without_special_use(self) -> bool:
        return True


class UnselectTakesArgument(ExtToy):
    """UNSELECT INBOX is taken as a plain UNSELECT."""

    def do_unselect(self, tag: str, args: Args) -> None:
        super().do_unselect(tag, [])


class AppendPastLimit(ExtToy):
    """STATUS says APPENDLIMIT 1000000, but a bigger literal still gets "+"."""

    max_literal = 1 << 40


class IgnoresInitialResponse(ExtToy):
    """AUTHENTICATE ignores the initial response and asks for one with "+"."""

    def do_authenticate(self, tag: str, args: Args) -> None:
        super().do_authenticate(tag, args[:1])


class ParentHasNoChildren(ExtToy):
    """Every mailbox is listed \\HasNoChildren, even one with a child."""

    def child_attributes(self, name: str, names: list[str]) -> list[str]:
        return ["\\HasNoChildren"]


# scenario id -> (server breaking exactly the rule; phrase in the failure)
CASES: dict[str, tuple[Handler | dict[str, Handler], str]] = {
    "imap.idle.done-any-case": (ext_toy(IdleDoneCaseSensitive), "expected tagged OK"),
    "imap.idle.expunge-pushed": (
        ext_toy(IdleEndsOnNews),
        "expected an untagged response matching /^\\* 1 EXPUNGE$/",
    ),
    "imap.uidplus.uid-expunge-only-given": (
        ext_toy(UidExpungeIgnoresSet),
        "expected no untagged response matching /^\\* [13] EXPUNGE$/",
    ),
    "imap.uidplus.copyuid-uid-sets": (ext_toy(CopyUidAsRange), "capture 'd'"),
    "imap.move.uid-move-copyuid-first": (ext_toy(CopyUidAfterExpunge), "capture 'd'"),
    "imap.move.keeps-flags-and-date": (
        ext_toy(MoveDropsFlags),
        "expected an untagged response matching /^\\* 1 FETCH \\((?=.*\\bFLAGS",
    ),
    "imap.literalplus.no-continuation-mid-command": (
        ext_toy(DropsRestAfterLiteral),
        "expected tagged OK, got 'a2 BAD",
    ),
    "imap.literalplus.append-without-continuation": (
        ext_toy(PlusLiteralsSynchronise),
        "expected tagged OK, got a continuation request",
    ),
    "imap.namespace.authenticated-and-selected-only": (
        ext_toy(NamespaceBeforeLogin),
        "expected no untagged response matching /(?i)^\\* NAMESPACE /",
    ),
    "imap.enable.unknown-ignored-capability-unchanged": (
        ext_toy(EnableEchoesUnknown),
        "expected no untagged response matching /(?i)X-MH-NO-SUCH-EXTENSION/",
    ),
    "imap.enable.refused-before-login": (
        ext_toy(EnableBeforeLogin),
        "expected no untagged response matching /(?i)^\\* ENABLED\\b/",
    ),
    "imap.condstore.select-reports-highestmodseq": (
        ext_toy(StatusDoesNotEnable),
        "expected an untagged response matching /^\\* OK \\[(?:HIGHESTMODSEQ",
    ),
    "imap.condstore.store-changes-modseq": (
        ext_toy(StoreKeepsModseq),
        "expected an untagged response matching /^\\* 1 FETCH \\((?=.*\\bFLAGS",
    ),
    "imap.condstore.unchangedsince-modified": (
        ext_toy(IgnoresUnchangedSince),
        "capture 'modified'",
    ),
    "imap.condstore.search-modseq": (
        ext_toy(SearchWithoutModseq),
        "expected an untagged response matching /^\\* SEARCH 1 \\(MODSEQ",
    ),
    "imap.condstore.fetch-changedsince": (
        ext_toy(IgnoresChangedSince),
        "expected no untagged response matching /^\\* [13] FETCH /",
    ),
    "imap.id.field-limits": (ext_toy(LongIdField), '"too long a field name")'),
    "imap.specialuse.selection-and-return-options": (
        ext_toy(SpecialUseSelectsAll),
        "expected no untagged response matching /(?i)^\\* LIST \\((?:\\s*",
    ),
    "imap.unselect.bad-without-mailbox-or-with-argument": (
        ext_toy(UnselectTakesArgument),
        "expected tagged BAD",
    ),
    "imap.appendlimit.toobig": (ext_toy(AppendPastLimit), "capture 'refused'"),
    "imap.saslir.plain-initial-response": (
        ext_toy(IgnoresInitialResponse),
        "did not match '+ '",
    ),
    "imap.children.attributes-consistent": (
        ext_toy(ParentHasNoChildren),
        "expected an untagged response matching /^\\* LIST \\((?![^)]*\\\\HasNoChildren)",
    ),
}


@pytest.mark.parametrize("scenario_id", sorted(CASES))
def test_fails_on_the_broken_rule(scenario_id, tmp_path, test_certs):
    handler, phrase = CASES[scenario_id]
    run_breaking(scenario_id, handler, phrase, tmp_path, test_certs)
