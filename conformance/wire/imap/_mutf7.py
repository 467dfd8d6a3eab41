"""Modified UTF-7, the IMAP4rev1 spelling of international mailbox names (RFC 3501 §5.1.3).

Why this exists: an IMAP4rev1 client that has not enabled UTF8=ACCEPT sends
and expects mailbox names in modified UTF-7, while storage keeps real
Unicode names; the server converts at the boundary and the harness checks
that it does. RFC 9051 §5.1 keeps the encoding for clients that do not
enable UTF-8 (Appendix A of RFC 9051 lists the differences).

The encoding: printable US-ASCII (0x20-0x7E) stands for itself, except "&",
which is written "&-". Any other run of characters is encoded as UTF-16BE,
then base64 with "," instead of "/" and no "=" padding, between "&" and "-".

Decoding is strict, so that a name has one spelling only: printable ASCII
inside a base64 run, non-zero padding bits, an odd octet count, a lone
surrogate, a character outside 0x20-0x7E written as itself, or a "&" run
that never ends are all errors, each saying which rule it breaks. Two
adjacent base64 runs (``&AOQ-&AOQ-``, which an encoder would merge) are
accepted: RFC 3501 does not forbid them.
"""

from __future__ import annotations

import binascii
import re

__all__ = ["decode_mutf7", "encode_mutf7"]

_RULE = "RFC 3501 §5.1.3"
_B64_RUN = re.compile(r"[A-Za-z0-9+,]*")


def encode_mutf7(name: str) -> str:
    """``name`` in modified UTF-7.

    Raises:
        ValueError: ``name`` holds a lone surrogate, which UTF-16 cannot encode.
    """
    out: list[str] = []
    run: list[str] = []
    for char in name:
        if " " <= char <= "~":
            if run:
                out.append(_shift("".join(run)))
                run.clear()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    if run:
        out.append(_shift("".join(run)))
    return "".join(out)


def _shift(text: str) -> str:
    try:
        data = text.encode("utf-16-be")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{text[exc.start]!r} is a lone surrogate; mailbox names are Unicode text ({_RULE})"
        ) from None
    encoded = binascii.b2a_base64(data, newline=False).decode("ascii")
    return "&" + encoded.rstrip("=").replace("/", ",") + "-"


def decode_mutf7(name: str) -> str:
    """The Unicode name that modified UTF-7 ``name`` spells.

    Raises:
        ValueError: ``name`` is not valid modified UTF-7; the message gives the
            offset and the rule.
    """
    out: list[str] = []
    i = 0
    while i < len(name):
        char = name[i]
        if not " " <= char <= "~":
            raise ValueError(
                f"{char!r} at offset {i} is not printable US-ASCII; it must be encoded "
                f"between '&' and '-' ({_RULE})"
            )
        if char != "&":
            out.append(char)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError(f"'&' at offset {i} starts a run that never ends with '-' ({_RULE})")
        run = name[i + 1 : end]
        if not run:
            out.append("&")
        else:
            out.append(_unshift(run, i + 1))
        i = end + 1
    return "".join(out)


def _unshift(run: str, at: int) -> str:
    found = _B64_RUN.fullmatch(run)
    if found is None:
        bad = next(n for n, c in enumerate(run) if not _B64_RUN.fullmatch(c))
        raise ValueError(
            f"{run[bad]!r} at offset {at + bad} is not a modified BASE64 character "
            f"(A-Z a-z 0-9 + ,) ({_RULE})"
        )
    if len(run) % 4 == 1:
        raise ValueError(f"modified BASE64 run at offset {at} has a stray character ({_RULE})")
    padded = run.replace(",", "/") + "=" * (-len(run) % 4)
    data = binascii.a2b_base64(padded.encode("ascii"))
    if binascii.b2a_base64(data, newline=False).decode("ascii").rstrip("=") != padded.rstrip("="):
        raise ValueError(
            f"modified BASE64 run at offset {at} ends with non-zero padding bits ({_RULE})"
        )
    if len(data) % 2:
        raise ValueError(
            f"modified BASE64 run at offset {at} decodes to an odd number of octets; "
            f"it must be UTF-16 ({_RULE})"
        )
    try:
        text = data.decode("utf-16-be")
    except UnicodeDecodeError:
        raise ValueError(
            f"modified BASE64 run at offset {at} is not valid UTF-16 (a lone surrogate) ({_RULE})"
        ) from None
    for char in text:
        if " " <= char <= "~":
            raise ValueError(
                f"modified BASE64 run at offset {at} encodes {char!r}, which must represent "
                f"itself ({_RULE})"
            )
    return text
