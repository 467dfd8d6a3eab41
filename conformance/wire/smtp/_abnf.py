"""RFC 5321 envelope grammar (with RFC 6531 UTF-8), transcribed and compiled once.

Theory of operation: the MAIL and RCPT arguments are a path in angle
brackets followed by ESMTP parameters. Each regex below quotes the ABNF it
implements; :func:`parse_path_and_params` returns the mailbox and the
parameters, or raises :class:`~conformance.wire.RemoteProtocolError` with a
reply hint (501 syntax, 555 parameter) and the rule that was broken.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conformance.wire._errors import RemoteProtocolError

__all__ = ["EnvelopeArgs", "parse_mail_from", "parse_rcpt_to"]

# atext = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "/" /
#         "=" / "?" / "^" / "_" / "`" / "{" / "|" / "}" / "~"      (RFC 5322 §3.2.3)
# RFC 6531 §3.3: atext =/ UTF8-non-ascii
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]"
# Dot-string = Atom *("." Atom); Atom = 1*atext
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
# Quoted-string = DQUOTE *QcontentSMTP DQUOTE
# QcontentSMTP = qtextSMTP / quoted-pairSMTP; quoted-pairSMTP = %d92 %d32-126
# qtextSMTP = %d32-33 / %d35-91 / %d93-126   (RFC 6531: =/ UTF8-non-ascii)
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
# sub-domain = Let-dig [Ldh-str]; Let-dig = ALPHA / DIGIT
# Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig
# RFC 6531 §3.3: sub-domain =/ U-label
_LET_DIG = r"[A-Za-z0-9\u0080-\U0010ffff]"
_SUB_DOMAIN = rf"{_LET_DIG}(?:[A-Za-z0-9\-\u0080-\U0010ffff]*{_LET_DIG})?"
# Domain = sub-domain *("." sub-domain)
_DOMAIN = rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*"
# address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
#                         General-address-literal ) "]"
# (checked loosely here: a bracketed run of the characters those forms use)
_ADDRESS_LITERAL = r"\[[A-Za-z0-9.:\-]+\]"
# Mailbox = Local-part "@" ( Domain / address-literal )
_MAILBOX = rf"(?:{_DOT_STRING}|{_QUOTED})@(?:{_DOMAIN}|{_ADDRESS_LITERAL})"
# Path = "<" [ A-d-l ":" ] Mailbox ">"; A-d-l = At-domain *( "," At-domain ); At-domain = "@" Domain
_PATH = re.compile(rf"<(?:@{_DOMAIN}(?:,@{_DOMAIN})*:)?({_MAILBOX})>")
# esmtp-param = esmtp-keyword ["=" esmtp-value]
# esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"); esmtp-value = 1*(%d33-60 / %d62-126)
# (RFC 6531 §3.3: esmtp-value =/ UTF8-non-ascii)
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9\-]*)(?:=([\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+))?")
_RULE = "RFC 5321 §4.1.2"


@dataclass(frozen=True)
class EnvelopeArgs:
    """A parsed MAIL or RCPT argument: the mailbox ("" for the null path) and parameters."""

    address: str
    params: dict[str, str | None]


def _params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for word in text.split(" "):
        if not word:
            raise RemoteProtocolError(
                "parameters are separated by single spaces",
                rfc_ref="RFC 5321 §4.1.2",
                reply_hint="501 5.5.4",
            )
        m = _PARAM.fullmatch(word)
        if m is None:
            raise RemoteProtocolError(
                f'malformed parameter {word!r} (esmtp-param = keyword ["=" value])',
                rfc_ref=_RULE,
                reply_hint="501 5.5.4",
            )
        key = m.group(1).upper()
        if key in params:
            raise RemoteProtocolError(
                f"parameter {key} given twice", rfc_ref=_RULE, reply_hint="501 5.5.4"
            )
        params[key] = m.group(2)
    return params


def _split(arg: str, prefix: str, *, null_ok: bool) -> EnvelopeArgs:
    if arg[: len(prefix)].upper() != prefix:
        raise RemoteProtocolError(
            f"syntax: {prefix}<address> [parameters]",
            rfc_ref="RFC 5321 §4.1.1",
            reply_hint="501 5.5.4",
        )
    rest = arg[len(prefix) :]
    if rest.startswith(" "):
        raise RemoteProtocolError(
            f"no space is allowed after {prefix} ({prefix}<address>)",
            rfc_ref="RFC 5321 §4.1.1",
            reply_hint="501 5.5.4",
        )
    if rest.startswith("<>"):
        if not null_ok:
            raise RemoteProtocolError(
                "the null path <> is only valid in MAIL FROM", rfc_ref=_RULE, reply_hint="501 5.1.3"
            )
        address, params = "", rest[2:]
    elif prefix == "TO:" and rest[:12].lower() == "<postmaster>":  # RFC 5321 §4.1.1.3
        address, params = "postmaster", rest[12:]
    else:
        m = _PATH.match(rest)
        if m is None:
            shown = rest.split(" ", 1)[0]
            raise RemoteProtocolError(
                f"malformed address {shown!r}", rfc_ref=_RULE, reply_hint="501 5.1.3"
            )
        address, params = m.group(1), rest[m.end() :]
    if params and not params.startswith(" "):
        raise RemoteProtocolError(
            "a space must separate the path from parameters", rfc_ref=_RULE, reply_hint="501 5.5.4"
        )
    params = params[1:].rstrip(" ")  # trailing spaces: harmless, tolerated
    return EnvelopeArgs(address, _params(params) if params else {})


def parse_mail_from(arg: str) -> EnvelopeArgs:
    """``FROM:<reverse-path> [SP Mail-parameters]`` (RFC 5321 §4.1.1.2)."""
    return _split(arg, "FROM:", null_ok=True)


def parse_rcpt_to(arg: str) -> EnvelopeArgs:
    """``TO:<forward-path> [SP Rcpt-parameters]`` or ``TO:<Postmaster>`` (RFC 5321 §4.1.1.3)."""
    return _split(arg, "TO:", null_ok=False)
