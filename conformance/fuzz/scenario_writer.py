"""A shrunk finding as a scenario file that replays it (docs/scenario-format.md).

Each step of the dialogue becomes a ``send`` (printable lines), ``send_raw``
(lines with NUL, 8-bit bytes, bare CR/LF, escaped) or ``data`` step, with the
``expect`` the model had at that step, so that ``mailharness run FILE`` fails
against the server that showed the bug and passes against one that answers
within the model. A hang gets the step ``timeout`` the fuzzer used. Target
addresses are written as ``{account.NAME.address}`` so the file works against
other targets too.

The file name is the finding's kind plus a hash of its shrunk form (the bytes sent),
so the same finding found twice is written once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from conformance.fuzz.dialogue import Finding, Login, LostMessage, ProtocolFuzz, Send
from conformance.targets import Target

__all__ = ["finding_id", "scenario_for", "write_finding"]


def finding_id(proto: ProtocolFuzz, finding: Finding) -> str:
    digest = hashlib.sha256(b"\0".join(finding.shrunk_form())).hexdigest()[:10]
    return f"fuzz.{proto.name}.{finding.kind}.{digest}"


def _braces(text: str) -> str:
    # {run} (a fresh token per dialogue, IMAP mailbox names) stays the scenario variable
    return text.replace("{", "{{").replace("}", "}}").replace("{{run}}", "{run}")


def _variables(text: str, target: Target) -> str:
    for acc in target.accounts.values():
        text = text.replace(acc.address, f"{{account.{acc.name}.address}}")
    return text


# send_raw's escapes (docs/scenario-format.md): \\ \r \n \t \0, \xHH for the rest of the
# control and 8-bit bytes; printable ASCII stays itself
_RAW_ESCAPES = {
    **{b: f"\\x{b:02x}" for b in range(256) if not 0x20 <= b < 0x7F},
    0x5C: "\\\\",
    0x0D: "\\r",
    0x0A: "\\n",
    0x09: "\\t",
    0x00: "\\0",
}


def _escape_raw(data: bytes) -> str:
    return data.decode("latin-1").translate(_RAW_ESCAPES)


def _action(send: Send, target: Target) -> dict[str, Any]:
    if send.kind == "data":
        return {"data": _braces(send.text)}
    line = send.wire[:-2] if send.wire.endswith(b"\r\n") else send.wire
    printable = all(0x20 <= b < 0x7F for b in line) and line and line.strip() == line
    if printable:
        return {"send": _variables(_braces(line.decode("ascii")), target)}
    return {"send_raw": _variables(_braces(_escape_raw(send.wire)), target)}


def scenario_for(
    proto: ProtocolFuzz,
    finding: Finding,
    target: Target,
    service: str,
    *,
    deadline: float,
    login: Login | None = None,
) -> dict[str, Any]:
    """The scenario document (a dict) that replays ``finding``.

    With ``login``, the prefix follows the greeting as ``starttls: true`` and
    ``auth:`` steps (SMTP: EHLO around them).
    """
    steps: list[dict[str, Any]] = []
    records = finding.records
    last = records[-1]
    messages = 0
    for rec in records:
        if rec.send.verb == "(greeting)":
            steps.append({"expect": proto.expect_yaml(rec.expectation, rec.send)})
            if login is not None:
                steps.extend(proto.login_steps(login))
            continue
        step = _action(rec.send, target)
        step["expect"] = {**proto.expect_yaml(rec.expectation, rec.send), **rec.extra_expect}
        if rec is last and finding.kind == "hang":
            step["timeout"] = deadline
        if rec is last and finding.kind == "no-close":
            step["expect"] = {**step["expect"], "closed": True}
        if rec.send.kind == "data":
            messages += 1
            if isinstance(finding, LostMessage) and messages == finding.index:
                step["expect"] = {"code": 250}  # as the server acknowledged the lost message
        step["note"] = f"state {rec.state}; fuzzer saw: {rec.outcome}"[:300]
        steps.append(step)
    description = (
        f"Found by `mailharness fuzz` and shrunk to this dialogue. At the last step "
        f"the model expected: {last.expectation.why}. The server: {last.outcome}."
    )
    doc: dict[str, Any] = {
        "id": finding_id(proto, finding),
        "protocol": proto.name,
        "service": service,
        "title": f"fuzz: {finding.kind}: {finding.message}"[:200],
        "tags": ["fuzz", proto.name, finding.kind],
        "description": description,
        "steps": steps,
    }
    if isinstance(finding, LostMessage):
        doc = {k: v for k, v in doc.items() if k != "steps"}
        doc["connections"] = {"box": {"protocol": "imap", "service": finding.service}}
        doc["steps"] = steps
        doc["description"] = (
            "Found by `mailharness fuzz` and shrunk to this dialogue. The server answered "
            f"250 to the end of message {finding.index}'s data, a recipient being the "
            f"account {finding.account}, so the message must be in that account's INBOX "
            "(RFC 5321 §4.1.1.4, §6.1: with the 250 the server took responsibility for "
            "delivering it); the search for its Message-ID polls, then fails if it is not."
        )
        steps.extend(_retrieval_steps(finding))
    return doc


def _retrieval_steps(finding: LostMessage) -> list[dict[str, Any]]:
    """Log in to the IMAP service as the account on connection ``box``, select INBOX and
    poll the search for the message's Message-ID (``{run}`` stays the variable)."""
    box: list[dict[str, Any]] = [{"starttls": True}] if finding.starttls else []
    box.append({"auth": {"mechanism": "native", "account": finding.account}})
    box.append({"send": "b1 SELECT INBOX", "expect": {"tagged": "OK"}})
    box.append(
        {
            "send": f"b2 UID SEARCH HEADER Message-ID {finding.token}",
            "until": {"within": max(finding.within, 2.0), "every": 0.2},
            "expect": {"tagged": "OK", "untagged": [r"^\* SEARCH \d+"]},
            "note": f"the message the server acknowledged for {finding.account}",
        }
    )
    return [{"conn": "box", **step} for step in box]


def write_finding(
    proto: ProtocolFuzz,
    finding: Finding,
    target: Target,
    service: str,
    out_dir: Path,
    *,
    deadline: float,
    login: Login | None = None,
) -> tuple[Path, bool]:
    """Write the scenario for ``finding`` under ``out_dir``; (path, newly written)."""
    doc = scenario_for(proto, finding, target, service, deadline=deadline, login=login)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{doc['id']}.yaml"
    if path.exists():
        return path, False
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=False, width=100)
    path.write_text(text, encoding="utf-8")
    return path, True
