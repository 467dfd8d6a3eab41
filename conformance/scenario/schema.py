"""The JSON Schema of a scenario file: the one place its shape is written down.

Validation runs on the plain values :mod:`conformance._yaml` builds, before
anything touches the network. What a schema cannot say (which expectation
keys suit which protocol, that a variable is defined before use, that a
regex compiles) is checked next in :mod:`conformance.scenario.loader`.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "ACTION_KEYS",
    "IMAP_EXPECT",
    "OUTBOUND_EXPECT",
    "POP3_EXPECT",
    "SCENARIO_SCHEMA",
    "SMTP_EXPECT",
]

_str_list: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
_nonneg: dict[str, Any] = {"type": "number", "minimum": 0}
_positive: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0}
_regex_list: dict[str, Any] = {"type": "array", "items": {"type": "string"}}

#: Expectation keys any protocol understands.
COMMON_EXPECT: Final = frozenset({"closed", "silence", "text", "or_closed"})
#: Expectations of an ``outbound`` step: the mail as the sink received it.
OUTBOUND_EXPECT: Final = frozenset({"sender", "text", "text_absent"})
#: SMTP reply expectations (RFC 5321 §4.2, RFC 3463 enhanced codes, EHLO keywords).
SMTP_EXPECT: Final = frozenset(
    {"code", "class", "enhanced", "lines", "multiline", "ehlo_has", "ehlo_lacks"}
)
#: POP3 expectations (RFC 1939 §3 status and multiline, RFC 2449 §8 response codes).
POP3_EXPECT: Final = frozenset({"status", "code", "multiline", "body", "body_text", "message"})
#: IMAP expectations (RFC 9051 §2.2.2 tagged status, §7 untagged data, continuation).
IMAP_EXPECT: Final = frozenset(
    {
        "tagged",
        "tag",
        "code",
        "untagged",
        "untagged_absent",
        "untagged_only",
        "continuation",
        "message",
    }
)

#: A message given inline or as a file beside the scenario (``data:``, ``expect.message``).
_message: dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["file"],
            "properties": {"file": {"type": "string"}},
        },
    ]
}

_expect: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        # common
        "closed": {"const": True},
        "silence": _positive,
        "text": {"type": "string"},
        "or_closed": {"const": True},
        # smtp (and "code" doubles as the POP3/IMAP response code, checked per protocol)
        "code": {
            "anyOf": [
                {"type": "integer", "minimum": 200, "maximum": 599},
                {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 200, "maximum": 599},
                    "minItems": 1,
                },
                {"type": "string", "minLength": 1},
            ]
        },
        "class": {
            "anyOf": [
                {"type": "integer", "minimum": 2, "maximum": 5},
                {"type": "string", "pattern": "^[2-5](xx)?$"},
            ]
        },
        "enhanced": {"type": "string", "pattern": r"^[245x]\.(\d{1,3}|x)\.(\d{1,3}|x)$"},
        "lines": _regex_list,
        "multiline": {"type": "boolean"},
        "ehlo_has": _str_list,
        "ehlo_lacks": _str_list,
        # pop3
        "status": {"enum": ["ok", "err", "OK", "ERR"]},
        "body": _regex_list,
        "body_text": {"type": "string"},
        # imap
        "tagged": {"enum": ["OK", "NO", "BAD", "ok", "no", "bad"]},
        "tag": {"type": "string", "minLength": 1},
        "untagged": _regex_list,
        "untagged_absent": _regex_list,
        "untagged_only": {"type": "boolean"},
        "continuation": {"const": True},
        # pop3 and imap: the message retrieved (RETR, FETCH BODY[]) is the one given
        "message": _message,
        # outbound: the envelope reverse-path the sink saw ("" is the null path)
        "sender": {"type": "string"},
        "text_absent": _regex_list,
    },
}

_auth: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["mechanism"],
    "properties": {
        "mechanism": {"enum": ["PLAIN", "LOGIN", "native", "plain", "login"]},
        "account": {"type": "string"},
        "username": {"type": "string"},
        "password": {"type": "string"},
        "initial_response": {"type": "boolean"},
    },
}

#: Keys of a step that do something on the wire (at most one per step).
ACTION_KEYS: Final = (
    "send",
    "send_raw",
    "data",
    "starttls",
    "tls_handshake",
    "auth",
    "sleep",
    "close",
    "outbound",
)

_step: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "conn": {"type": "string", "minLength": 1},
        "send": {"type": "string"},
        "send_raw": {"type": "string"},
        "repeat": {"type": "integer", "minimum": 1, "maximum": 64 * 1024 * 1024},
        "data": _message,
        "starttls": {"const": True},
        "tls_handshake": {
            "anyOf": [
                {"const": True},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"or_failed": {"const": True}},
                },
            ]
        },
        "auth": _auth,
        "sleep": _nonneg,
        "close": {"const": True},
        "outbound": {
            "type": "object",
            "additionalProperties": False,
            "required": ["to"],
            "properties": {
                "to": {"type": "string", "minLength": 1},
                "within": _positive,
                "attempts": {"type": "integer", "minimum": 1, "maximum": 100},
            },
        },
        "until": {
            "type": "object",
            "additionalProperties": False,
            "required": ["within"],
            "properties": {"within": _positive, "every": _positive},
        },
        "expect": _expect,
        "capture": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        },
        "timeout": _positive,
        "note": {"type": "string"},
    },
}

_delivery: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["to"],
    "properties": {
        "to": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "from": {"type": "string"},
        "message": {"type": "string"},
        "file": {"type": "string"},
        "via": {"type": "string"},
        "as": {"type": "string"},
        "count": {"type": "integer", "minimum": 1, "maximum": 10000},
    },
}

SCENARIO_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "protocol", "title", "steps"],
    "properties": {
        "id": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*$"},
        "protocol": {"enum": ["smtp", "pop3", "imap"]},
        "service": {"type": "string", "minLength": 1},
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "rfc": {"anyOf": [{"type": "string"}, _str_list]},
        "covers": _str_list,
        "tags": _str_list,
        "requires": _str_list,
        "sink": {"type": "boolean"},
        "timeout": _positive,
        "connections": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_-]*$"},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["protocol"],
                "properties": {
                    "protocol": {"enum": ["smtp", "pop3", "imap"]},
                    "service": {"type": "string", "minLength": 1},
                },
            },
        },
        "setup": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"deliver": {"type": "array", "items": _delivery}},
        },
        "steps": {"type": "array", "minItems": 1, "items": _step},
    },
}
