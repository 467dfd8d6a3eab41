"""Captured sessions made into scenario documents (docs/replay.md).

Theory of operation. Each TCP stream of a capture becomes one scenario, or a
reason it was skipped (not SMTP/POP3/IMAP, TLS from the first byte,
incomplete). :func:`~.turns.split_stream` cuts it into turns; each turn
becomes a step: the greeting an expect-only step, a command a ``send`` (or
``send_raw`` when it is not a plain printable line), an SMTP message a
``data`` step whose message is a fixture file next to the scenario, server
responses after the client's last command expect-only steps. The answer
becomes the step's ``expect`` at the chosen strictness (:mod:`.expect`).

Logins never carry the captured credentials: SMTP ``AUTH`` with its SASL
lines, POP3 ``USER``/``PASS``, ``APOP`` and ``AUTH``, IMAP ``LOGIN`` and
``AUTHENTICATE`` become one ``auth`` step as an account of the target. A
captured login that failed is replayed with a password that is not the
account's and expects the captured refusal. Every secret found (passwords,
SASL responses raw and decoded) is also masked anywhere else it appears.

A stream the server switched to TLS (STARTTLS/STLS answered positively) is
cut there; the scenario goes on with ``starttls: true`` and re-templated
steps, marked in their notes: SMTP says EHLO again, logs in when the session
was on the submission service (RFC 6409 wants a login there), and QUITs;
POP3 and IMAP log in (a client upgrades before it logs in) and QUIT/LOGOUT.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from conformance.capture import TcpStream
from conformance.fuzz.scenario_writer import _escape_raw
from conformance.transport import show_bytes
from conformance.wire import Pop3Response, Reply, TaggedResponse

from .expect import Match, Texts, expectation
from .turns import Split, Turn, split_stream

__all__ = [
    "DEFAULT_SERVICES",
    "IMPLICIT_TLS_PORTS",
    "ConvertOptions",
    "Converted",
    "StepOrigin",
    "convert_streams",
    "session_label",
    "write_converted",
]

DEFAULT_SERVICES: Mapping[int, str] = {25: "mx", 587: "submission", 110: "pop3", 143: "imap"}
IMPLICIT_TLS_PORTS = frozenset({465, 993, 995})
_PROTOCOL_SERVICE = {"smtp": "mx", "pop3": "pop3", "imap": "imap"}
_WRONG_PASSWORD = "not-the-password-{run}"
_RETEMPLATED = "re-templated"
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r?\n")


@dataclass(frozen=True)
class ConvertOptions:
    """How captured sessions become scenarios.

    Attributes:
        match: strictness of expectations (``codes``, ``text``, ``exact``).
        rewrites: ``(old, new)`` text replacements (addresses, domains).
        account: the target account logins are replayed as.
        keep_timing: add ``sleep`` steps for the capture's pauses.
        pause: the shortest pause (seconds) kept with ``keep_timing``.
        services: server port -> target service name, over :data:`DEFAULT_SERVICES`.
        include_incomplete: convert streams with gaps or cut at the start too.
    """

    match: Match = "codes"
    rewrites: tuple[tuple[str, str], ...] = ()
    account: str = "alice"
    keep_timing: bool = False
    pause: float = 0.5
    services: Mapping[int, str] = field(default_factory=dict)
    include_incomplete: bool = False


@dataclass(frozen=True)
class StepOrigin:
    """Where a step came from, for the replay's diff.

    Attributes:
        frames: capture frame numbers (client bytes, then the answer).
        sent: what the client sent there, shown (secrets masked).
        expected: the captured answer's first line, shown ("" if none).
    """

    frames: tuple[int, ...]
    sent: str
    expected: str


@dataclass
class Converted:
    """One stream's scenario (or why there is none)."""

    stream: TcpStream
    name: str
    document: dict[str, Any] | None = None
    fixtures: dict[str, bytes] = field(default_factory=dict)
    origins: list[StepOrigin] = field(default_factory=list)
    skipped: str | None = None
    warnings: list[str] = field(default_factory=list)


def session_label(stream: TcpStream) -> str:
    """``session N (client → server, first frame F)``, N as Wireshark's ``tcp.stream``."""
    return (
        f"session {stream.index} ({stream.client} → {stream.server}, "
        f"first frame {stream.first_frame})"
    )


# -- credentials ---------------------------------------------------------------


def _b64(token: bytes) -> bytes | None:
    token = token.strip()
    if not token or token == b"=" or token == b"*":
        return None
    try:
        return base64.b64decode(token + b"=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _imap_astrings(data: bytes) -> list[bytes]:
    """The astring arguments of an IMAP command's bytes (atoms, quoted, literals)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        ch = data[pos : pos + 1]
        if ch in (b" ", b"\r", b"\n"):
            pos += 1
        elif ch == b'"':
            value = bytearray()
            pos += 1
            while pos < len(data) and data[pos : pos + 1] != b'"':
                if data[pos : pos + 1] == b"\\":
                    pos += 1
                value += data[pos : pos + 1]
                pos += 1
            out.append(bytes(value))
            pos += 1
        elif (m := _LITERAL.match(data, pos)) is not None:
            size = int(m.group(1))
            out.append(data[m.end() : m.end() + size])
            pos = m.end() + size
        else:
            end = pos
            while end < len(data) and data[end : end + 1] not in (b" ", b"\r", b"\n"):
                end += 1
            out.append(data[pos:end])
            pos = end
    return out


@dataclass
class _Login:
    """A login found in the turns: which turns, how, and whether it worked."""

    start: int
    end: int  # exclusive
    mechanism: str  # PLAIN, LOGIN or native for the auth step
    captured: str  # what the capture used, for the note
    initial_response: bool = True
    secrets: list[str] = field(default_factory=list)


def _sasl_secrets(tokens: Iterable[bytes]) -> list[str]:
    found: list[str] = []
    for token in tokens:
        token = token.strip()
        if not token:
            continue
        found.append(_text(token))
        decoded = _b64(token)
        if decoded is not None:
            parts = [p for p in decoded.split(b"\0") if p]
            # PLAIN: authzid NUL authcid NUL passwd (RFC 4616 §2); the last part is secret
            found += [_text(parts[-1])] if b"\0" in decoded and parts else [_text(decoded)]
    return found


def _find_login(protocol: str, turns: list[Turn], i: int) -> _Login | None:
    turn = turns[i]
    if turn.kind != "command":
        return None
    words = turn.line.split()
    verb = turn.verb

    def following(kinds: tuple[str, ...]) -> int:
        end = i + 1
        while end < len(turns) and turns[end].kind in kinds:
            end += 1
        return end

    if protocol in ("smtp", "pop3") and verb == "AUTH" and len(words) >= 2:
        mech = _text(words[1]).upper()
        end = following(("sasl",))
        tokens = words[2:3] + [t.line for t in turns[i + 1 : end]]
        login = _Login(i, end, mech if mech in ("PLAIN", "LOGIN") else "PLAIN", f"AUTH {mech}")
        login.initial_response = len(words) > 2 or mech != "PLAIN"
        login.secrets = _sasl_secrets(tokens)
        return login
    if protocol == "pop3" and verb in ("USER", "PASS", "APOP"):
        if verb == "USER":
            if i + 1 < len(turns) and turns[i + 1].verb == "PASS":
                password = turns[i + 1].line.split(None, 1)[1:]
                return _Login(i, i + 2, "native", "USER/PASS", secrets=[_text(p) for p in password])
            return None
        rest = turn.line.split(None, 1)[1:]
        secret = rest[0].split()[-1:] if verb == "APOP" and rest else rest
        return _Login(i, i + 1, "native", verb, secrets=[_text(s) for s in secret])
    if protocol == "imap" and verb in ("LOGIN", "AUTHENTICATE"):
        end = following(("continued",))
        data = b"".join(t.sent for t in turns[i:end])
        if verb == "LOGIN":
            args = _imap_astrings(data)[2:]
            return _Login(i, end, "native", "LOGIN", secrets=[_text(a) for a in args[1:2]])
        mech = _text(words[2]).upper() if len(words) > 2 else ""
        tokens = words[3:4] + [t.line for t in turns[i + 1 : end]]
        login = _Login(
            i, end, mech if mech in ("PLAIN", "LOGIN") else "PLAIN", f"AUTHENTICATE {mech}"
        )
        login.initial_response = len(words) > 3 or mech != "PLAIN"
        login.secrets = _sasl_secrets(tokens)
        return login
    return None


def _positive(event: Any) -> bool:
    if isinstance(event, Reply):
        return 200 <= event.code < 300
    if isinstance(event, Pop3Response):
        return event.ok
    if isinstance(event, TaggedResponse):
        return event.status == "OK"
    return False


def _refusal_expect(protocol: str, event: Any) -> dict[str, Any] | None:
    if isinstance(event, Reply):
        return {"code": event.code}
    if isinstance(event, Pop3Response):
        return {"status": "err"}
    if isinstance(event, TaggedResponse):
        return {"tagged": event.status}
    return None


# -- steps ---------------------------------------------------------------------


def _frames_note(frames: Sequence[int]) -> str:
    if len(frames) == 1:
        return f"frame {frames[0]}"
    return (
        f"frames {frames[0]}-{frames[-1]}"
        if len(frames) > 2
        else f"frame {frames[0]} → {frames[1]}"
    )


def _shown_answer(events: list[Any]) -> str:
    """The first line of the (last) response, as the server sent it."""
    if not events:
        return ""
    last = events[-1]
    first = getattr(last, "raw", b"").split(b"\r\n", 1)[0]
    more = isinstance(last, Reply) and len(last.lines) > 1
    return show_bytes(first) + (" …" if more else "")


class _Builder:
    def __init__(self, stream: TcpStream, split: Split, options: ConvertOptions, name: str):
        self.stream = stream
        self.split = split
        self.options = options
        self.name = name
        self.protocol = stream.protocol or ""
        self.service = options.services.get(
            stream.server.port,
            DEFAULT_SERVICES.get(stream.server.port, _PROTOCOL_SERVICE[self.protocol]),
        )
        self.steps: list[dict[str, Any]] = []
        self.origins: list[StepOrigin] = []
        self.fixtures: dict[str, bytes] = {}
        self.logins: dict[int, _Login] = {}
        secrets: list[str] = []
        for i in range(len(split.turns)):
            login = _find_login(self.protocol, split.turns, i)
            if login is not None:
                self.logins[i] = login
                secrets += login.secrets
        self.texts = Texts(options.rewrites, secrets)
        self.slept = 0.0
        self.last_time: float | None = None

    def add(self, step: dict[str, Any], frames: Sequence[int], sent: str, expected: str) -> None:
        parts = [_frames_note(frames) if frames else "", step.get("note", "")]
        step["note"] = "; ".join(p for p in parts if p)
        self.steps.append(step)
        self.origins.append(StepOrigin(tuple(frames), sent, expected))

    def expect(self, turn: Turn, verb: str | None = None) -> dict[str, Any] | None:
        return expectation(
            self.protocol,
            turn.verb if verb is None else verb,
            turn.answer,
            self.options.match,
            self.texts,
        )

    def pause(self, turn: Turn) -> None:
        if turn.client_time is None:
            return
        if (
            self.options.keep_timing
            and self.last_time is not None
            and turn.client_time - self.last_time >= self.options.pause
        ):
            seconds = round(turn.client_time - self.last_time, 2)
            self.slept += seconds
            frames = [turn.client_frame] if turn.client_frame is not None else []
            self.add({"sleep": seconds, "note": "a pause in the capture"}, frames, "", "")
        self.last_time = turn.answer_time or turn.client_time

    def send_step(self, sent: bytes) -> dict[str, Any]:
        line = sent[:-2] if sent.endswith(b"\r\n") else None
        if line is not None and b"\r" not in line and b"\n" not in line and line.strip() == line:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text and text.isprintable():
                return {"send": self.texts.template(text)}
        return {"send_raw": self.texts.template(_escape_raw(sent))}

    def shown(self, data: bytes) -> str:
        return self.texts.mask(show_bytes(data))

    def build(self) -> None:
        turns = self.split.turns
        i = 0
        while i < len(turns):
            turn = turns[i]
            login = self.logins.get(i)
            if login is not None:
                self.pause(turn)
                self.login_step(login, turns)
                i = login.end
                continue
            if turn.kind in ("greeting", "unsolicited"):
                exp = self.expect(turn, "")
                if exp is not None:
                    self.add({"expect": exp}, turn.frames, "", _shown_answer(turn.answer))
                self.last_time = turn.answer_time or self.last_time
            elif turn.kind == "data":
                self.pause(turn)
                self.data_step(turn)
            elif self.split.tls_cut and i == len(turns) - 1:
                self.pause(turn)
                exp = self.expect(turn)
                step: dict[str, Any] = {"starttls": True}
                if exp is not None:
                    step["expect"] = exp
                self.add(step, turn.frames, self.shown(turn.line), _shown_answer(turn.answer))
            elif self.protocol == "pop3" and turn.verb == "USER":
                self.pause(turn)
                step = {
                    "send": f"USER {{account.{self.options.account}.username}}",
                    "note": f"{_RETEMPLATED}: the captured user name is the target account's",
                }
                if (exp := self.expect(turn)) is not None:
                    step["expect"] = exp
                self.add(step, turn.frames, "USER …", _shown_answer(turn.answer))
            else:
                self.pause(turn)
                step = self.send_step(turn.sent)
                if (exp := self.expect(turn)) is not None:
                    step["expect"] = exp
                self.add(step, turn.frames, self.shown(turn.line), _shown_answer(turn.answer))
            i += 1
        if self.split.tls_cut:
            self.after_tls(turns[-1])

    def data_step(self, turn: Turn) -> None:
        body = turn.sent[:-3] if turn.sent.endswith(b".\r\n") else turn.sent
        # dot-unstuffing (RFC 5321 §4.5.2): a line beginning with "." lost its first dot
        unstuffed = body[1:] if body.startswith(b".") else body
        unstuffed = unstuffed.replace(b"\r\n.", b"\r\n")
        crlf = unstuffed.count(b"\r\n")  # a bare CR or LF: more of either than of CRLF
        bare = unstuffed.count(b"\n") != crlf or unstuffed.count(b"\r") != crlf
        if bare:  # a fixture would have its line ends made CRLF: send the bytes as they were
            step: dict[str, Any] = {"send_raw": self.texts.template(_escape_raw(turn.sent))}
        else:
            name = f"{self.name}-message-{len(self.fixtures) + 1}.eml"
            text = self.texts.template(_text(unstuffed))
            self.fixtures[name] = text.encode("utf-8", "surrogateescape")
            step = {"data": {"file": name}}
        if (exp := self.expect(turn)) is not None:
            step["expect"] = exp
        size = len(turn.sent)
        self.add(step, turn.frames, f"(message, {size} octets)", _shown_answer(turn.answer))

    def login_step(self, login: _Login, turns: list[Turn]) -> None:
        last = turns[login.end - 1]
        final = last.answer[-1] if last.answer else None
        account = self.options.account
        auth: dict[str, Any] = {"mechanism": login.mechanism}
        note = f"{_RETEMPLATED}: the captured login ({login.captured}) is made as the target's "
        step: dict[str, Any] = {"auth": auth}
        if final is not None and not _positive(final):
            auth["username"] = f"{{account.{account}.username}}"
            auth["password"] = _WRONG_PASSWORD
            note += f"account {account} with a wrong password, as the capture's login failed"
            step["expect"] = _refusal_expect(self.protocol, final)
        else:
            auth["account"] = account
            note += f"account {account}"
        if login.mechanism == "PLAIN" and not login.initial_response:
            auth["initial_response"] = False
        if login.mechanism not in login.captured and login.mechanism != "native":
            note += f" (as {login.mechanism})"
        step["note"] = note
        frames = sorted({f for t in turns[login.start : login.end] for f in t.frames})
        self.add(step, frames, f"(login: {login.captured})", _shown_answer(last.answer))

    def after_tls(self, starttls: Turn) -> None:
        frame = starttls.client_frame
        why = (
            f"{_RETEMPLATED}: the capture is encrypted after STARTTLS"
            f"{f' (frame {frame})' if frame else ''}; this step is not in it"
        )
        account = self.options.account
        if self.protocol == "smtp":
            helo = next(
                (t.line for t in reversed(self.split.turns) if t.verb in ("EHLO", "HELO")), b""
            )
            name = _text(helo.split(None, 1)[1]) if len(helo.split(None, 1)) > 1 else "replay.test"
            steps: list[dict[str, Any]] = [
                {"send": f"EHLO {self.texts.template(name)}", "expect": {"code": 250}}
            ]
            if self.service == "submission":
                steps.append({"auth": {"mechanism": "PLAIN", "account": account}})
            steps.append({"send": "QUIT", "expect": {"code": 221}})
        elif self.protocol == "pop3":
            steps = [
                {"auth": {"mechanism": "native", "account": account}},
                {"send": "QUIT", "expect": {"status": "ok"}},
            ]
        else:
            steps = [
                {"auth": {"mechanism": "native", "account": account}},
                {"send": "r1 LOGOUT", "expect": {"tagged": "OK"}},
            ]
        for step in steps:
            step["note"] = why
            sent = step.get("send") or f"(login as {account})"
            self.add(step, [], str(sent), "")


def _stem(capture: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(capture).stem).strip("-.") or "capture"
    return stem if stem[0].isalnum() else f"c{stem}"


def _skip_reason(stream: TcpStream, options: ConvertOptions) -> str | None:
    first = stream.sent("client")[:2] or stream.sent("server")[:2]
    if stream.tls or stream.server.port in IMPLICIT_TLS_PORTS or first == b"\x16\x03":
        return "TLS from the first byte (implicit TLS): nothing to read in it"
    if stream.protocol not in _PROTOCOL_SERVICE:
        return "not recognised as SMTP, POP3 or IMAP"
    if not stream.chunks:
        return "no bytes were exchanged"
    if (stream.gaps or stream.cut_at_start) and not options.include_incomplete:
        why = "the capture missed bytes of it" if stream.gaps else "it began before the capture"
        return f"incomplete: {why} (--include-incomplete converts it anyway)"
    return None


def _convert(stream: TcpStream, capture: str, options: ConvertOptions) -> Converted:
    name = f"{_stem(capture)}-session-{stream.index}"
    conv = Converted(stream=stream, name=name)
    conv.skipped = _skip_reason(stream, options)
    if conv.skipped is not None:
        return conv
    split = split_stream(stream)
    if not split.turns:
        conv.skipped = "nothing in it could be read as the protocol"
        return conv
    builder = _Builder(stream, split, options, name)
    builder.build()
    if not builder.steps:
        conv.skipped = "nothing in it to replay"
        return conv
    if stream.gaps:
        conv.warnings.append(
            f"the capture missed {sum(g.missing for g in stream.gaps)} byte(s) of this session "
            f"(first at frame {stream.gaps[0].frame}); it is converted up to there"
        )
    if stream.cut_at_start:
        conv.warnings.append("the session began before the capture did: its start is missing")
    if stream.cut_at_end:
        conv.warnings.append("the capture ended before the session did")
    if split.problem:
        conv.warnings.append(f"converted up to {split.problem}")
    if split.tls_cut:
        conv.warnings.append(
            "the session switched to TLS; the steps after STARTTLS are re-templated, not captured"
        )
    last = max((c.last_frame for c in stream.chunks), default=stream.first_frame)
    description = (
        f"Converted by `mailharness pcap2yaml` from {Path(capture).name}, "
        f"{session_label(stream)}, frames {stream.first_frame}-{last}; answers are matched "
        f"at strictness '{options.match}'. Step notes give the capture's frame numbers."
    )
    if conv.warnings:
        description += " Warning: " + "; ".join(conv.warnings) + "."
    doc: dict[str, Any] = {
        "id": f"capture.{_stem(capture)}.session-{stream.index}",
        "protocol": stream.protocol,
        "service": builder.service,
        "title": f"Replay of {session_label(stream)} from {Path(capture).name}",
        "tags": ["capture", stream.protocol],
        "description": builder.texts.mask(description),
    }
    if builder.slept:
        doc["timeout"] = math.ceil(builder.slept + 60)
    doc["steps"] = builder.steps
    conv.document = doc
    conv.fixtures = builder.fixtures
    conv.origins = builder.origins
    return conv


def convert_streams(
    streams: Iterable[TcpStream], capture: str | Path, options: ConvertOptions
) -> list[Converted]:
    """Convert every stream of a capture (``capture`` names it in ids and descriptions)."""
    return [_convert(s, str(capture), options) for s in streams]


# libyaml's emitter when PyYAML has it: the pure-Python one is most of a large conversion's time
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def write_converted(converted: Iterable[Converted], out_dir: Path) -> list[Path]:
    """Write each scenario (and its message fixtures) under ``out_dir``; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for conv in converted:
        if conv.document is None:
            continue
        for name, data in conv.fixtures.items():
            (out_dir / name).write_bytes(data)
        path = out_dir / f"{conv.name}.yaml"
        text = yaml.dump(
            conv.document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
        )
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
