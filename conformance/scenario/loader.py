"""Load scenario files into :class:`~conformance.scenario.model.Scenario` objects.

Order of checks, all before anything runs: YAML syntax (with the parser's
position), then the JSON Schema in :mod:`.schema` (shape, types, unknown
keys), then what a schema cannot express: expectation keys that do not suit
the connection's protocol, regexes that do not compile, variables used
before they are captured, files that do not exist. Every problem becomes a
:class:`~conformance._yaml.LoadError` that prints as ``path:line:column:
message``; the loader collects them all so a user fixes a file in one go.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema

from .._yaml import LoadError, Located, PathKey, load_yaml_documents
from .model import (
    DEFAULT_SERVICE,
    MAIN,
    Action,
    Auth,
    Close,
    Connection,
    Data,
    Delivery,
    Expectation,
    Outbound,
    Protocol,
    Requirement,
    Scenario,
    Send,
    Sleep,
    StartTls,
    Step,
    TlsHandshake,
    Until,
)
from .schema import (
    ACTION_KEYS,
    COMMON_EXPECT,
    IMAP_EXPECT,
    OUTBOUND_EXPECT,
    POP3_EXPECT,
    SCENARIO_SCHEMA,
    SMTP_EXPECT,
)
from .variables import Template, is_known, parse_template

__all__ = ["LoadErrors", "discover", "load_paths", "load_scenario_file"]

_VALIDATOR = jsonschema.Draft202012Validator(SCENARIO_SCHEMA)
DEFAULT_OUTBOUND_WITHIN = 30.0  # seconds an outbound step waits for mail at the sink
DEFAULT_UNTIL_EVERY = 0.5  # seconds between the tries of a polling step
_EXPECT_KEYS = {
    Protocol.SMTP: COMMON_EXPECT | SMTP_EXPECT,
    Protocol.POP3: COMMON_EXPECT | POP3_EXPECT,
    Protocol.IMAP: COMMON_EXPECT | IMAP_EXPECT,
}
_ANYOF_HINTS = {
    "code": "an SMTP reply code 200-599 or a list of them (SMTP), or a response code such as "
    "IN-USE or TRYCREATE (POP3, IMAP)",
    "class": "a reply class: 2, 3, 4, 5 or '2xx'..'5xx'",
    "data": "a message as a string, or {file: PATH}",
    "message": "a message as a string, or {file: PATH}",
    "to": "an address or a list of addresses",
    "rfc": "a reference such as 'RFC 5321 §4.1.4' or a list of them",
    "tls_handshake": "true, or {or_failed: true}",
}


class LoadErrors(Exception):
    """One or more load errors; ``str()`` gives one line per error."""

    def __init__(self, errors: list[LoadError]):
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


def _dotted(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "document"


def _schema_errors(doc: Located) -> list[LoadError]:
    errors: list[LoadError] = []
    for err in _VALIDATOR.iter_errors(doc.value):
        path: PathKey = tuple(err.absolute_path)
        where = _dotted(path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = sorted(err.schema.get("properties", {}))
            for key in err.instance:
                if key not in err.schema.get("properties", {}):
                    errors.append(
                        doc.error(
                            (*path, key),
                            f"unknown key {key!r} in {where} (allowed: {', '.join(allowed)})",
                            at_key=True,
                        )
                    )
            continue
        if err.validator == "required":
            errors.append(doc.error(path, f"{where}: {err.message.replace('property', 'key')}"))
            continue
        if err.validator == "anyOf":
            leaf = next((p for p in reversed(path) if isinstance(p, str)), "")
            hint = _ANYOF_HINTS.get(str(leaf), "a value of another type")
            errors.append(doc.error(path, f"{where}: expected {hint}, got {err.instance!r}"))
            continue
        if err.validator == "enum":
            choices = ", ".join(str(c) for c in err.validator_value)
            errors.append(doc.error(path, f"{where}: {err.instance!r} is not one of {choices}"))
            continue
        if err.validator == "const":
            errors.append(doc.error(path, f"{where}: must be {err.validator_value!r} or left out"))
            continue
        if err.validator == "propertyNames":
            key = err.instance
            errors.append(doc.error((*path, key), f"{where}: invalid name {key!r}", at_key=True))
            continue
        errors.append(doc.error(path, f"{where}: {err.message}"))
    errors.sort(key=lambda e: (e.position.line, e.position.column) if e.position else (0, 0))
    return errors


class _Builder:
    """Turns one schema-valid document into a Scenario, collecting semantic errors."""

    def __init__(self, doc: Located, accounts: set[str] | None):
        self.doc = doc
        self.accounts = accounts
        self.errors: list[LoadError] = []
        self.captured: set[str] = set()
        self.sink = bool(doc.value.get("sink", False))

    def fail(self, key: PathKey, message: str, *, at_key: bool = False) -> None:
        self.errors.append(self.doc.error(key, message, at_key=at_key))

    def template(self, key: PathKey, text: str) -> Template:
        tpl = parse_template(text)
        for ref in tpl.variables:
            why = is_known(ref.name, self.captured, self.accounts, sink=self.sink)
            if why:
                self.fail(key, why)
        return tpl

    def regex(self, key: PathKey, text: str) -> Template:
        tpl = self.template(key, text)
        try:
            tpl.render_regex({v.name: "x" for v in tpl.variables})
        except re.error as exc:
            self.fail(key, f"{_dotted(key)}: invalid regular expression {text!r}: {exc}")
        return tpl

    def regexes(self, key: PathKey, texts: list[str]) -> tuple[Template, ...]:
        return tuple(self.regex((*key, i), t) for i, t in enumerate(texts))

    def read_file(self, key: PathKey, name: str) -> str:
        path = (self.doc.path.parent / name).resolve()
        try:
            return path.read_bytes().decode("utf-8", errors="surrogateescape")
        except OSError as exc:
            self.fail(
                key,
                f"{_dotted(key)}: cannot read {name!r} (relative to this file): "
                f"{exc.strerror or exc}",
            )
            return ""

    # -- parts ---------------------------------------------------------------

    def connections(
        self, raw: dict[str, Any], protocol: Protocol, service: str
    ) -> dict[str, Connection]:
        conns = {MAIN: Connection(MAIN, protocol, service)}
        for name, spec in raw.get("connections", {}).items():
            if name == MAIN:
                self.fail(
                    ("connections", name),
                    "connection name 'main' is reserved for the "
                    "scenario's own protocol and service",
                    at_key=True,
                )
                continue
            proto = Protocol(spec["protocol"])
            conns[name] = Connection(name, proto, spec.get("service", DEFAULT_SERVICE[proto.value]))
        return conns

    def expectation(
        self, key: PathKey, raw: dict[str, Any], conn: Connection, *, outbound: bool = False
    ) -> Expectation:
        allowed = OUTBOUND_EXPECT if outbound else _EXPECT_KEYS[conn.protocol]
        for k in raw:
            if k in allowed:
                continue
            if outbound:
                self.fail(
                    (*key, k),
                    f"{_dotted((*key, k))}: {k!r} does not apply to mail at the sink "
                    f"(an outbound step expects: {', '.join(sorted(OUTBOUND_EXPECT))})",
                    at_key=True,
                )
                continue
            fits = [p.value for p, keys in _EXPECT_KEYS.items() if k in keys]
            if not fits:  # only outbound steps know it
                self.fail(
                    (*key, k),
                    f"{_dotted((*key, k))}: {k!r} is an expectation of outbound steps "
                    "(mail at the sink), not of a connection",
                    at_key=True,
                )
                continue
            self.fail(
                (*key, k),
                f"{_dotted((*key, k))}: {k!r} is an expectation for "
                f"{'/'.join(fits)}, but connection {conn.name!r} speaks {conn.protocol.value}",
                at_key=True,
            )
        if "or_closed" in raw and "closed" in raw:
            self.fail(
                (*key, "or_closed"),
                f"{_dotted(key)}: 'or_closed' allows a close instead of the response; "
                "with 'closed: true' a close is expected anyway",
                at_key=True,
            )
        if "silence" in raw and len(set(raw) - {"or_closed"}) > 1:
            self.fail(
                (*key, "silence"),
                f"{_dotted(key)}: 'silence' cannot be combined with "
                "other expectations (it expects no bytes at all)",
                at_key=True,
            )
        fields: dict[str, Any] = {}
        fields["closed"] = bool(raw.get("closed", False))
        fields["silence"] = raw.get("silence")
        fields["or_closed"] = bool(raw.get("or_closed", False))
        if "sender" in raw:
            fields["sender"] = self.template((*key, "sender"), raw["sender"])
        if "text_absent" in raw:
            fields["text_absent"] = self.regexes((*key, "text_absent"), raw["text_absent"])
        if "text" in raw:
            fields["text"] = self.regex((*key, "text"), raw["text"])
        code = raw.get("code")
        if code is not None:
            if conn.protocol is Protocol.SMTP:
                if isinstance(code, str):
                    self.fail(
                        (*key, "code"),
                        f"{_dotted((*key, 'code'))}: SMTP reply codes are "
                        f"numbers (e.g. 250), got {code!r}",
                    )
                else:
                    fields["codes"] = tuple(code) if isinstance(code, list) else (code,)
            elif not isinstance(code, str):
                self.fail(
                    (*key, "code"),
                    f"{_dotted((*key, 'code'))}: {conn.protocol.value} "
                    f"response codes are words in brackets (e.g. IN-USE), got {code!r}",
                )
            else:
                fields["resp_code"] = code.strip("[]").upper()
        if "class" in raw:
            fields["reply_class"] = int(str(raw["class"])[0])
        if "enhanced" in raw:
            fields["enhanced"] = raw["enhanced"]
        if "lines" in raw:
            fields["lines"] = self.regexes((*key, "lines"), raw["lines"])
        for name in ("multiline", "untagged_only"):
            if name in raw:
                fields[name] = raw[name]
        if "ehlo_has" in raw:
            fields["ehlo_has"] = tuple(s.upper() for s in raw["ehlo_has"])
        if "ehlo_lacks" in raw:
            fields["ehlo_lacks"] = tuple(s.upper() for s in raw["ehlo_lacks"])
        if "status" in raw:
            fields["status_ok"] = raw["status"].lower() == "ok"
        if "body" in raw:
            fields["body"] = self.regexes((*key, "body"), raw["body"])
        if "body_text" in raw:
            fields["body_text"] = self.regex((*key, "body_text"), raw["body_text"])
        if "tagged" in raw:
            fields["tagged"] = raw["tagged"].upper()
        if "tag" in raw:
            fields["tag"] = self.template((*key, "tag"), raw["tag"])
        if "untagged" in raw:
            fields["untagged"] = self.regexes((*key, "untagged"), raw["untagged"])
        if "untagged_absent" in raw:
            fields["untagged_absent"] = self.regexes(
                (*key, "untagged_absent"), raw["untagged_absent"]
            )
        if "message" in raw:
            value = raw["message"]
            text = (
                value
                if isinstance(value, str)
                else self.read_file((*key, "message", "file"), value["file"])
            )
            fields["message"] = self.template((*key, "message"), text)
        fields["continuation"] = bool(raw.get("continuation", False))
        if fields["continuation"] and "tagged" in raw:
            self.fail(
                (*key, "continuation"),
                f"{_dotted(key)}: expect either a continuation "
                "request or a tagged status, not both",
                at_key=True,
            )
        return Expectation(**fields)

    def action(self, key: PathKey, raw: dict[str, Any], conn: Connection) -> Action | None:
        present = [k for k in ACTION_KEYS if k in raw]
        if len(present) > 1:
            self.fail(
                (*key, present[1]),
                f"{_dotted(key)}: one action per step, found "
                f"{' and '.join(present)}; split them into separate steps",
                at_key=True,
            )
        if "repeat" in raw and "send_raw" not in raw:
            self.fail(
                (*key, "repeat"), f"{_dotted(key)}: 'repeat' goes with 'send_raw'", at_key=True
            )
        if not present:
            return None
        kind = present[0]
        value = raw[kind]
        if kind == "send":
            if "\r" in value or "\n" in value:
                self.fail(
                    (*key, "send"),
                    f"{_dotted(key)}.send: a line cannot contain CR or LF "
                    "(CRLF is added); use send_raw for exact bytes",
                )
            return Send(self.template((*key, "send"), value))
        if kind == "send_raw":
            tpl = self.template((*key, "send_raw"), value)
            try:
                decode_raw("".join(p for p in tpl.parts if isinstance(p, str)))
            except ValueError as exc:
                self.fail((*key, "send_raw"), f"{_dotted(key)}.send_raw: {exc}")
            return Send(tpl, raw=True, repeat=raw.get("repeat", 1))
        if kind == "data":
            if conn.protocol is not Protocol.SMTP:
                self.fail(
                    (*key, "data"),
                    f"{_dotted(key)}: 'data' sends an SMTP message body, "
                    f"but connection {conn.name!r} speaks {conn.protocol.value}",
                    at_key=True,
                )
            text = (
                value
                if isinstance(value, str)
                else self.read_file((*key, "data", "file"), value["file"])
            )
            return Data(self.template((*key, "data"), text))
        if kind == "starttls":
            return StartTls()
        if kind == "tls_handshake":
            return TlsHandshake(or_failed=isinstance(value, dict) and bool(value.get("or_failed")))
        if kind == "auth":
            return self.auth((*key, "auth"), value, conn)
        if kind == "sleep":
            return Sleep(float(value))
        if kind == "outbound":
            return self.outbound((*key, "outbound"), value, raw)
        return Close()

    def outbound(self, key: PathKey, value: dict[str, Any], step: dict[str, Any]) -> Outbound:
        if not self.sink:
            self.fail(
                key,
                f"{_dotted(key)}: waiting for mail at the sink needs 'sink: true' at the top "
                "of the scenario",
                at_key=True,
            )
        if "conn" in step:
            self.fail(
                (*key[:-1], "conn"),
                f"{_dotted(key[:-1])}: an outbound step reads the sink, not a connection; "
                "leave out 'conn'",
                at_key=True,
            )
        return Outbound(
            to=self.template((*key, "to"), value["to"]),
            within=float(value.get("within", DEFAULT_OUTBOUND_WITHIN)),
            attempts=value.get("attempts"),
        )

    def auth(self, key: PathKey, raw: dict[str, Any], conn: Connection) -> Auth:
        mech = raw["mechanism"]
        mech = mech if mech == "native" else mech.upper()
        if mech == "native" and conn.protocol is Protocol.SMTP:
            self.fail(
                (*key, "mechanism"),
                f"{_dotted(key)}: SMTP has no native login; "
                "use mechanism PLAIN or LOGIN (RFC 4954)",
            )
        account = raw.get("account")
        if account is not None and ("username" in raw or "password" in raw):
            self.fail(key, f"{_dotted(key)}: give either 'account' or 'username' and 'password'")
        if account is not None:
            user = self.template((*key, "account"), f"{{account.{account}.username}}")
            password = self.template((*key, "account"), f"{{account.{account}.password}}")
        elif "username" in raw and "password" in raw:
            user = self.template((*key, "username"), raw["username"])
            password = self.template((*key, "password"), raw["password"])
        else:
            self.fail(
                key,
                f"{_dotted(key)}: name an 'account' of the target, or give "
                "'username' and 'password'",
            )
            user = password = parse_template("")
        return Auth(mech, user, password, raw.get("initial_response", True))

    def step(self, index: int, raw: dict[str, Any], conns: dict[str, Connection]) -> Step | None:
        key: PathKey = ("steps", index)
        conn_name = raw.get("conn", MAIN)
        conn = conns.get(conn_name)
        if conn is None:
            names = ", ".join(sorted(conns))
            self.fail(
                (*key, "conn"),
                f"steps[{index}].conn: unknown connection {conn_name!r} "
                f"(declared: {names}); declare it under 'connections:'",
            )
            return None
        action = self.action(key, raw, conn)
        expect = (
            self.expectation(
                (*key, "expect"), raw["expect"], conn, outbound=isinstance(action, Outbound)
            )
            if "expect" in raw
            else None
        )
        until = self.until(key, raw, action, expect)
        captures: list[tuple[str, Template]] = []
        for name, pattern in raw.get("capture", {}).items():
            captures.append((name, self.regex((*key, "capture", name), pattern)))
        if action is None and expect is None and not captures:
            self.fail(
                key,
                f"steps[{index}]: a step needs an action ({', '.join(ACTION_KEYS)}) or an 'expect'",
            )
        if isinstance(action, Sleep | Close | TlsHandshake) and (expect or captures):
            self.fail(
                key,
                f"steps[{index}]: '{type(action).__name__.lower()}' reads no response; "
                "put the expectation in its own step",
            )
        for name, _ in captures:  # usable from the next step on
            self.captured.add(name)
        return Step(
            index=index,
            position=self.doc.where(key) or self.doc.where(()),  # type: ignore[arg-type]
            conn=conn_name,
            action=action,
            expect=expect,
            capture=tuple(captures),
            timeout=raw.get("timeout"),
            note=raw.get("note"),
            until=until,
        )

    def until(
        self, key: PathKey, raw: dict[str, Any], action: Action | None, expect: Expectation | None
    ) -> Until | None:
        spec = raw.get("until")
        if spec is None:
            return None
        if not isinstance(action, Send) or expect is None:
            self.fail(
                (*key, "until"),
                f"{_dotted(key)}: 'until' repeats a 'send' or 'send_raw' until its "
                "'expect' holds; this step has no such pair",
                at_key=True,
            )
        elif expect.closed or expect.silence is not None or expect.or_closed:
            self.fail(
                (*key, "until"),
                f"{_dotted(key)}: 'until' polls for a response; it cannot be combined "
                "with 'closed', 'silence' or 'or_closed'",
                at_key=True,
            )
        within = float(spec["within"])
        every = float(spec.get("every", DEFAULT_UNTIL_EVERY))
        if every > within:
            self.fail(
                (*key, "until", "every"),
                f"{_dotted((*key, 'until'))}: 'every' ({every:g}s) is longer than "
                f"'within' ({within:g}s)",
            )
        return Until(within=within, every=every)

    def requirement(
        self, index: int, text: str, service: str, conns: dict[str, Connection]
    ) -> Requirement:
        svc, sep, cap = text.rpartition(":")
        if not sep:
            return Requirement(service, text.upper())
        if not cap or not svc:
            self.fail(
                ("requires", index),
                f"requires[{index}]: write CAPABILITY or SERVICE:CAPABILITY, got {text!r}",
            )
        return Requirement(svc, cap.upper())

    def delivery(self, index: int, raw: dict[str, Any]) -> Delivery:
        key: PathKey = ("setup", "deliver", index)
        if ("message" in raw) == ("file" in raw):
            self.fail(key, f"setup.deliver[{index}]: give exactly one of 'message' or 'file'")
        text = raw.get("message", "")
        if "file" in raw:
            text = self.read_file((*key, "file"), raw["file"])
        to = raw["to"] if isinstance(raw["to"], list) else [raw["to"]]
        via = raw.get("via", "mx")
        login_as = raw.get("as")
        if login_as is not None:
            self.template((*key, "as"), f"{{account.{login_as}.username}}")
        default_from = f"{{account.{login_as}.address}}" if login_as else "harness@{domain}"
        return Delivery(
            recipients=tuple(self.template((*key, "to", i), t) for i, t in enumerate(to)),
            sender=self.template((*key, "from"), raw.get("from", default_from)),
            message=self.template((*key, "message"), text),
            via=via,
            login_as=login_as,
            count=raw.get("count", 1),
        )

    def build(self) -> Scenario | None:
        raw = self.doc.value
        protocol = Protocol(raw["protocol"])
        service = raw.get("service", DEFAULT_SERVICE[protocol.value])
        conns = self.connections(raw, protocol, service)
        setup = tuple(
            self.delivery(i, d) for i, d in enumerate(raw.get("setup", {}).get("deliver", []))
        )
        steps = [self.step(i, s, conns) for i, s in enumerate(raw["steps"])]
        requires = tuple(
            self.requirement(i, r, service, conns) for i, r in enumerate(raw.get("requires", []))
        )
        rfc = raw.get("rfc", ())
        if self.errors:
            return None
        return Scenario(
            id=raw["id"],
            title=raw["title"],
            path=self.doc.path,
            protocol=protocol,
            service=service,
            connections=conns,
            steps=tuple(s for s in steps if s is not None),
            covers=tuple(raw.get("covers", ())),
            tags=tuple(raw.get("tags", ())),
            rfc=(rfc,) if isinstance(rfc, str) else tuple(rfc),
            requires=requires,
            setup=setup,
            timeout=raw.get("timeout"),
            description=raw.get("description"),
            sink=self.sink,
            document=self.doc,
        )


_RAW_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|[rnt0\\]|.|$)", re.DOTALL)
_SIMPLE = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}


def decode_raw(text: str) -> bytes:
    """Bytes of a ``send_raw`` string.

    Backslash escapes ``\\r \\n \\t \\0 \\\\ \\xHH`` stand for single bytes
    (write them in a single-quoted YAML string, where YAML leaves them alone);
    every other character is sent as UTF-8.

    Raises:
        ValueError: on an unknown escape, so a typo is not sent silently.
    """
    out = bytearray()
    pos = 0
    for m in _RAW_ESCAPE.finditer(text):
        out += text[pos : m.start()].encode("utf-8", errors="surrogateescape")
        esc = m.group(1)
        if esc.startswith("x") and len(esc) == 3:
            out.append(int(esc[1:], 16))
        elif esc in _SIMPLE:
            out += _SIMPLE[esc]
        else:
            raise ValueError(
                f"unknown escape '\\{esc}' at offset {m.start()} "
                "(known: \\r \\n \\t \\0 \\\\ \\xHH)"
            )
        pos = m.end()
    out += text[pos:].encode("utf-8", errors="surrogateescape")
    return bytes(out)


def load_scenario_file(path: Path, *, accounts: set[str] | None = None) -> list[Scenario]:
    """Load every scenario document in one file.

    Args:
        accounts: the target's account names, to check ``{account.NAME...}``
            variables; None skips that check (``mailharness validate``).

    Raises:
        LoadErrors: all problems found in the file, each with its position.
    """
    try:
        docs = load_yaml_documents(path)
    except LoadError as exc:
        raise LoadErrors([exc]) from None
    scenarios: list[Scenario] = []
    errors: list[LoadError] = []
    for doc in docs:
        if doc.value is None:
            continue
        schema_errors = _schema_errors(doc)
        if schema_errors:
            errors.extend(schema_errors)
            continue
        builder = _Builder(doc, accounts)
        scenario = builder.build()
        errors.extend(builder.errors)
        if scenario is not None:
            scenarios.append(scenario)
    if not docs or all(d.value is None for d in docs):
        errors.append(LoadError(path, None, "no scenario in this file (it is empty)"))
    if errors:
        raise LoadErrors(errors)
    return scenarios


def discover(paths: Iterable[Path]) -> Iterator[Path]:
    """Scenario files under ``paths``, sorted; names starting with ``_`` or ``.`` are fragments."""
    for path in paths:
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                rel = found.relative_to(path).parts
                if (
                    found.suffix in (".yaml", ".yml")
                    and found.is_file()
                    and not any(p.startswith(("_", ".")) for p in rel)
                ):
                    yield found
        else:
            yield path


def load_paths(paths: Iterable[Path], *, accounts: set[str] | None = None) -> list[Scenario]:
    """Load all scenarios under ``paths``; duplicate ids across files are errors too.

    Raises:
        LoadErrors: every problem in every file.
    """
    scenarios: list[Scenario] = []
    errors: list[LoadError] = []
    seen: dict[str, Scenario] = {}
    for path in discover(paths):
        if not path.exists():
            errors.append(LoadError(path, None, "no such file or directory"))
            continue
        try:
            loaded = load_scenario_file(path, accounts=accounts)
        except LoadErrors as exc:
            errors.extend(exc.errors)
            continue
        for sc in loaded:
            if sc.id in seen:
                assert sc.document is not None
                errors.append(
                    sc.document.error(
                        ("id",),
                        f"duplicate scenario id {sc.id!r} "
                        f"(first defined at {seen[sc.id].location})",
                    )
                )
                continue
            seen[sc.id] = sc
            scenarios.append(sc)
    if errors:
        raise LoadErrors(errors)
    return scenarios
