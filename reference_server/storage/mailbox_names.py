"""IMAP mailbox names and the Maildir++ directories that hold them.

Theory of operation
-------------------
Names arrive as Unicode ``str`` (the protocol layer has already decoded
modified UTF-7, RFC 3501 §5.1.3). The hierarchy delimiter is ``/``. A name is
made *canonical* once, at the edge (:func:`canonical_name`), and everything
after that works with canonical names only:

- ``INBOX`` is case-insensitive (RFC 3501 §5.1): a first level spelt ``inbox``,
  ``Inbox`` ... becomes ``INBOX``, so ``inbox/Child`` is ``INBOX/Child``. Every
  other level is case-sensitive, as stored.
- Refused, with a one-line reason (:class:`InvalidMailboxName`): the empty
  name, empty levels (``a//b``, ``/a``, ``a/`` except where a trailing
  delimiter is allowed, as for ``CREATE foo/``, RFC 3501 §6.3.3), the levels
  ``.`` and ``..``, control characters (C0, DEL, C1; RFC 9051 §5.1 asks for
  Net-Unicode names), lone surrogates (no UTF-8 form), and names whose
  directory name would exceed 255 bytes (``NAME_MAX``).
- The list wildcards ``%`` and ``*`` are valid in names (RFC 3501 §5.1 only
  warns that they are awkward with LIST), and so are ``.`` and ``~`` inside
  a level.

On disk, INBOX is the user's Maildir itself (``<root>/<user>/``) and every
other mailbox is a Maildir++ folder, one flat directory in it:
``<root>/<user>/.<level1>.<level2>...``, so ``/`` in the name becomes ``.`` on
disk. Each level is escaped first (:func:`escape_level`): ``%``, ``.``, ``/``
and control characters become ``%XX`` per UTF-8 byte (upper-case hex);
everything else, non-ASCII included, is stored as UTF-8. A directory is a
mailbox only if decoding and re-encoding its name gives it back
(:func:`dirname_to_name`), so the mapping is one-to-one and nothing a user or
another program drops in (``..foo``, ``.a%2e``, ``.INBOX``) is misread. A
canonical name never yields ``.``, ``..``, a ``/`` or a NUL in the directory
name, so no name can leave the user's directory.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = [
    "DELIMITER",
    "INBOX",
    "ImapStoreError",
    "InvalidMailboxName",
    "canonical_name",
    "dirname_to_name",
    "escape_level",
    "is_inferior",
    "mailbox_dirname",
    "mailbox_path",
    "parent_names",
    "unescape_level",
]

DELIMITER = "/"
INBOX = "INBOX"
# NAME_MAX on Linux and the BSDs: the whole hierarchy lives in one directory name.
_NAME_MAX = 255
# Escaped in every level: the escape character itself, the on-disk delimiter,
# the IMAP delimiter, and what RFC 9051 §5.1 keeps out of names anyway.
_ALWAYS_ESCAPED = frozenset("%./")


class ImapStoreError(Exception):
    """A refusal by the IMAP store; ``reason`` is one line the IMAP layer can send.

    ``code`` is the RFC 5530 response code that fits (``None`` if none does);
    the IMAP layer answers ``NO [code] reason`` (or ``BAD`` for syntax-like
    refusals such as :class:`InvalidFlag <reference_server.storage.mailbox_index.InvalidFlag>`).
    """

    code: str | None = None

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidMailboxName(ImapStoreError):
    """The name cannot be a mailbox name here (RFC 3501 §5.1; RFC 5530 CANNOT)."""

    code = "CANNOT"


def _is_control(char: str) -> bool:
    point = ord(char)
    return point < 0x20 or 0x7F <= point <= 0x9F


def escape_level(level: str) -> str:
    """Escape one hierarchy level for a directory name (reversible, see the module doc).

    Raises:
        InvalidMailboxName: the level holds a lone surrogate (it has no UTF-8 form).
    """
    if level.isalnum() and level.isascii():
        return level  # the common case, without a loop
    out: list[str] = []
    for char in level:
        if char in _ALWAYS_ESCAPED or _is_control(char):
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
        elif 0xD800 <= ord(char) <= 0xDFFF:
            raise InvalidMailboxName("mailbox name holds a lone surrogate (not valid Unicode)")
        else:
            out.append(char)
    return "".join(out)


def unescape_level(text: str) -> str:
    """Undo :func:`escape_level`.

    Raises:
        ValueError: a ``%`` is not followed by two hex digits, or the escaped
            bytes are not UTF-8.
    """
    if "%" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%":
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in "0123456789ABCDEFabcdef" for c in pair):
                raise ValueError(f"bad escape in {text!r}")
            out.append(int(pair, 16))
            i += 3
        else:
            out += char.encode("utf-8", "surrogateescape")
            i += 1
    return out.decode("utf-8")


@functools.lru_cache(maxsize=4096)  # a pure function, called for every name on every command
def canonical_name(name: str, *, allow_trailing_delimiter: bool = False) -> str:
    """Check a mailbox name and return its canonical form.

    Args:
        name: the name as the client sent it (Unicode, ``/`` as delimiter).
        allow_trailing_delimiter: accept one trailing ``/`` and drop it (CREATE,
            RFC 3501 §6.3.3: "the client intends to create names under this name").

    Returns:
        The name with a first level of INBOX in any case spelt ``INBOX``.

    Raises:
        InvalidMailboxName: the name is refused; the reason says why.
    """
    if allow_trailing_delimiter and name.endswith(DELIMITER) and len(name) > 1:
        name = name[:-1]
    if not name:
        raise InvalidMailboxName("mailbox name is empty")
    bad = next((c for c in name if _is_control(c)), None)
    if bad is not None:
        raise InvalidMailboxName(
            f"mailbox name contains the control character U+{ord(bad):04X}; remove it"
        )
    levels = name.split(DELIMITER)
    for level in levels:
        if not level:
            raise InvalidMailboxName(
                f"mailbox name {name!r} has an empty hierarchy level "
                f"(leading, trailing or doubled {DELIMITER!r})"
            )
        if level in (".", ".."):
            raise InvalidMailboxName(f"mailbox name {name!r} has a {level!r} level")
    if levels[0].upper() == INBOX:
        levels[0] = INBOX
    canonical = DELIMITER.join(levels)
    if canonical != INBOX and len(mailbox_dirname(canonical).encode("utf-8")) > _NAME_MAX:
        raise InvalidMailboxName(
            f"mailbox name is too long (at most {_NAME_MAX} bytes on disk, after escaping)"
        )
    return canonical


@functools.lru_cache(maxsize=4096)
def mailbox_dirname(name: str) -> str:
    """The Maildir++ directory name of a canonical name other than INBOX (``a/b`` → ``.a.b``).

    Raises:
        InvalidMailboxName: the name holds a lone surrogate.
    """
    return "." + ".".join(escape_level(level) for level in name.split(DELIMITER))


def mailbox_path(user_root: Path, name: str) -> Path:
    """Where the mailbox ``name`` (canonical) lives: the user's Maildir for INBOX."""
    if name == INBOX:
        return user_root
    return user_root / mailbox_dirname(name)


def dirname_to_name(dirname: str) -> str | None:
    """The canonical mailbox name a directory holds, or ``None`` if it is not one of ours.

    Only names that :func:`mailbox_dirname` would produce for a valid canonical
    name count; anything else (hidden files, ``..``, non-canonical escapes,
    ``.INBOX`` which is not where INBOX lives) is not a mailbox.
    """
    if len(dirname) < 2 or dirname[0] != ".":
        return None
    try:
        levels = [unescape_level(part) for part in dirname[1:].split(".")]
        name = canonical_name(DELIMITER.join(levels))
        if name == INBOX or mailbox_dirname(name) != dirname:
            return None
    except (ValueError, InvalidMailboxName):
        return None
    return name


def parent_names(name: str) -> list[str]:
    """The superior names of ``name``, outermost first (``a/b/c`` → ``["a", "a/b"]``)."""
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:i]) for i in range(1, len(levels))]


def is_inferior(name: str, ancestor: str) -> bool:
    """Whether ``name`` is below ``ancestor`` in the hierarchy (not equal to it)."""
    return name.startswith(ancestor + DELIMITER)
