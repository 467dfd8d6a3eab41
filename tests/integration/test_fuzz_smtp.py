"""The SMTP fuzzer finds bugs hidden in scripted servers and writes scenarios that replay them."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine_helpers import run_cli
from fuzz_support import PASSWORD, nodelay
from scripted import ScriptConn, ScriptedServer, TestCerts

from conformance.fuzz import PROTOCOLS, fuzz, write_finding
from conformance.fuzz.dialogue import Send
from conformance.fuzz.retrieve import retrieve_check_for
from conformance.fuzz.smtp_model import Delivered, SmtpModel
from conformance.targets import load_target

SMTP = PROTOCOLS["smtp"]
DEADLINE = 0.3


def buggy_smtp(
    bug: str, mailboxes: dict[str, list[bytes]] | None = None
) -> Callable[[ScriptConn], None]:
    """A small, mostly correct SMTP server with one bug: crash, rset, hang or lost.

    With ``mailboxes`` (address -> messages), a message is stored for each recipient
    that has a mailbox; ``lost``: not when an RSET came before it in the session,
    though the answer is 250 all the same."""

    def handler(conn: ScriptConn) -> None:
        conn.sendline("220 scripted ESMTP")
        mail = rcpts = 0
        to: list[str] = []
        had_rset = False
        while True:
            raw = conn.recv_line(timeout=10)
            line = raw.decode("utf-8", "replace")
            verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
            arg = line[len(verb) :]
            if b"\x00" in raw or not raw.isascii():
                if bug == "hang" and verb == "VRFY":
                    conn.wait_closed(10)
                    return
                conn.sendline("500 bad line")
            elif verb in ("EHLO", "HELO"):
                mail = rcpts = 0
                to = []
                conn.sendline("250 hi" if arg.strip() else "501 domain")
            elif verb == "MAIL":
                if bug == "crash" and re.search(r"\sX-", line, re.I):
                    conn.abort()
                    return
                if not re.fullmatch(r"(?i) FROM:<[^<> ]*>( \S+)*", arg):
                    conn.sendline("501 syntax")
                else:
                    mail, rcpts, to = 1, 0, []
                    conn.sendline("250 ok")
            elif verb == "RCPT":
                if not mail:
                    conn.sendline("503 need MAIL")
                elif m := re.fullmatch(r"(?i) TO:<([^<> ]+)>", arg):
                    rcpts += 1
                    to.append(m.group(1))
                    conn.sendline("250 ok")
                else:
                    conn.sendline("501 syntax")
            elif verb == "DATA":
                if arg:
                    conn.sendline("501 no args")
                elif not (mail and rcpts):
                    conn.sendline("503 need RCPT")
                else:
                    conn.sendline("354 go")
                    data = conn.recv_until(rb"\r\n\.\r\n")
                    if mailboxes is not None and not (bug == "lost" and had_rset):
                        for address in to:
                            if address in mailboxes:
                                mailboxes[address].append(data[: -len(b".\r\n")])
                    mail = rcpts = 0
                    to = []
                    conn.sendline("250 stored")
            elif verb == "RSET":
                if arg:
                    conn.sendline("501 no args")
                else:
                    if bug != "rset":
                        mail = rcpts = 0
                        to = []
                    had_rset = True
                    conn.sendline("250 ok")
            elif verb == "NOOP":
                conn.sendline("250 ok")
            elif verb == "VRFY":
                conn.sendline("252 maybe")
            elif verb == "EXPN":
                conn.sendline("502 no")
            elif verb == "HELP":
                conn.sendline("214 help")
            elif verb == "QUIT" and not arg:
                conn.sendline("221 bye")
                return
            else:
                conn.sendline("500 unknown")

    return handler


def target_file(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "target.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "host": "127.0.0.1",
                "domain": "example.test",
                "services": {"mx": {"port": port, "tls": "none"}},
                "accounts": {"alice": {"address": "alice@example.test", "password": "x"}},
                "timeouts": {"read": 2},
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("bug", "kind", "needle"),
    [("crash", "crash", "X-"), ("rset", "wrong-reply", "RSET"), ("hang", "hang", "VRFY")],
)
def test_fuzzer_finds_the_hidden_bug_and_the_scenario_replays_it(
    bug: str, kind: str, needle: str, tmp_path: Path, mail_server
) -> None:
    with ScriptedServer(buggy_smtp(bug)) as srv:
        tfile = target_file(tmp_path, srv.port)
        target = load_target(tfile)
        report = fuzz(SMTP, target, target.services["mx"], seed_value=7, deadline=DEADLINE)
        kinds = {f.kind for f in report.findings}
        assert kind in kinds, [f.message for f in report.findings]
        finding = next(f for f in report.findings if f.kind == kind)
        assert needle.encode() in finding.records[-1].send.wire or needle == "RSET"
        if bug == "rset":
            assert any(r.send.wire == b"RSET\r\n" for r in finding.records)
        shown = [(r.send.wire, r.outcome) for r in finding.records]
        assert len(finding.records) <= 8, shown  # shrunk
        out = tmp_path / "found"
        path, new = write_finding(SMTP, finding, target, "mx", out, deadline=DEADLINE)
        assert new and not write_finding(SMTP, finding, target, "mx", out, deadline=DEADLINE)[1]
        assert run_cli("validate", str(path))[0] == 0
        code, output = run_cli("run", str(path), "--target", str(tfile))
        assert code == 1, output
    # the same scenario passes against the reference server
    code, output = run_cli(
        "run", str(path), "--target", str(reference_target(mail_server, tmp_path))
    )
    assert code == 0, output


def test_cli_exit_codes_and_same_seed_same_dialogues(tmp_path: Path) -> None:
    with ScriptedServer(buggy_smtp("none")) as srv:
        tfile = target_file(tmp_path, srv.port)
        args = ["fuzz", "--protocol", "smtp", "--target", str(tfile), "--max-examples", "40"]
        code, out1 = run_cli(*args, "--seed", "3", "--out", str(tmp_path / "o"))
        assert code == 0, out1
        assert "seed 3" in out1 and "0 finding(s)" in out1
        code, out2 = run_cli(*args, "--seed", "3", "--out", str(tmp_path / "o"))
        assert re.search(r"verbs: .*", out1)[0] == re.search(r"verbs: .*", out2)[0]  # type: ignore[index]
    assert run_cli(*args, "--service", "nope")[0] == 2


def reference_target(mail_server: Any, tmp_path: Path) -> Path:
    host, port = mail_server.addr("mx")
    tfile = tmp_path / "ref.yaml"
    tfile.write_text(
        yaml.safe_dump(
            {
                "host": host,
                "domain": "example.test",
                "services": {"mx": {"port": port, "tls": "none"}},
                "accounts": {"alice": {"address": "alice@example.test", "password": "x"}},
            }
        )
    )
    return tfile


def test_a_short_run_against_the_reference_server_finds_nothing(mail_server, tmp_path) -> None:
    target = load_target(reference_target(mail_server, tmp_path))
    report = fuzz(SMTP, target, target.services["mx"], seed_value=11, max_examples=100)
    assert report.findings == [], [f.message for f in report.findings]
    assert {"GREETED", "MAIL", "RCPT"} <= report.stats.states


# -- a message acknowledged is retrievable ----------------------------------------------

ALICE = "alice@example.test"


def mailbox_imap(mailboxes: dict[str, list[bytes]]) -> Callable[[ScriptConn], None]:
    """Just enough IMAP (STARTTLS, LOGIN, SELECT INBOX, UID SEARCH HEADER, NOOP) to read
    the messages the scripted SMTP server stored; the UID of a message is its number."""

    def handler(conn: ScriptConn) -> None:
        nodelay(conn)
        conn.sendline("* OK [CAPABILITY IMAP4rev1 STARTTLS] scripted IMAP")
        box: list[bytes] | None = None
        user = None
        while True:
            tag, _, rest = conn.recv_line(timeout=10).decode("ascii", "replace").partition(" ")
            cmd, _, arg = rest.partition(" ")
            cmd = cmd.upper()
            login = re.fullmatch(r'"(\w+)" "(.*)"', arg)
            search = re.fullmatch(r"(?i)SEARCH (?:UID (\d+):\* )?HEADER Message-ID (\S+)", arg)
            if cmd == "CAPABILITY":
                conn.sendline("* CAPABILITY IMAP4rev1 STARTTLS")
            elif cmd == "STARTTLS" and not conn.tls:
                conn.sendline(f"{tag} OK go")
                conn.starttls()
                continue
            elif cmd == "LOGIN" and login and f"{login[1]}@example.test" in mailboxes:
                if login[2] != PASSWORD:
                    conn.sendline(f"{tag} NO wrong")
                    continue
                user = f"{login[1]}@example.test"
            elif cmd == "SELECT" and user and arg.upper() == "INBOX":
                box = mailboxes[user]
                conn.sendline(f"* {len(box)} EXISTS\r\n* OK [UIDVALIDITY 1] v")
                conn.sendline(f"* OK [UIDNEXT {len(box) + 1}] n")
            elif cmd == "UID" and box is not None and search:
                low, token = int(search[1] or 1), search[2].encode()
                field = re.compile(rb"(?im)^Message-ID:[^\r\n]*" + re.escape(token))
                hits = [str(n) for n, msg in enumerate(box, 1) if n >= low and field.search(msg)]
                conn.sendline(" ".join(["* SEARCH", *hits]))
            elif cmd == "LOGOUT":
                conn.sendline(f"* BYE bye\r\n{tag} OK bye")
                return
            elif cmd != "NOOP":
                conn.sendline(f"{tag} BAD no")
                continue
            conn.sendline(f"{tag} OK done")

    return handler


def mx_imap_target(
    path: Path, mx: int, imap: int, ca_file: Path, password: str, **more: Any
) -> Path:
    """A target with an mx service (plain) and an imap service (STARTTLS) and alice."""
    doc = {
        "host": "127.0.0.1",
        "domain": "example.test",
        "tls": {"verify": True, "ca_file": str(ca_file)},
        "services": {"mx": {"port": mx, "tls": "none"}, "imap": {"port": imap, "tls": "starttls"}},
        "accounts": {"alice": {"address": ALICE, "username": "alice", "password": password}},
        **more,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def reference_mx_imap(mail_server: Any, tmp_path: Path) -> Path:
    host, mx = mail_server.addr("mx")
    return mx_imap_target(
        tmp_path / "ref-mx-imap.yaml", mx, mail_server.addr("imap")[1], mail_server.ca_file,
        mail_server.passwords["alice"], host=host, server_name="mail.example.test",
    )  # fmt: skip


def test_fuzzer_finds_the_lost_message_and_the_scenario_replays_it(
    tmp_path: Path, mail_server, test_certs: TestCerts
) -> None:
    """The server answers 250 but does not store a message that came after an RSET in
    the same session: found within the default budget (200), the scenario searches the
    INBOX on a second connection; it fails there and passes against the reference."""
    mailboxes: dict[str, list[bytes]] = {ALICE: []}
    with (
        ScriptedServer(buggy_smtp("lost", mailboxes)) as smtp_srv,
        ScriptedServer(mailbox_imap(mailboxes), certs=test_certs) as imap_srv,
    ):
        tfile = mx_imap_target(
            tmp_path / "target.yaml", smtp_srv.port, imap_srv.port, test_certs.ca_file, PASSWORD,
            timeouts={"read": 2},
        )  # fmt: skip
        target = load_target(tfile)
        retrieve, note = retrieve_check_for(target, within=0.3, deadline=DEADLINE)
        assert retrieve is not None and note.startswith("on (imap INBOX of alice"), note
        report = fuzz(
            SMTP, target, target.services["mx"], seed_value=7,
            deadline=DEADLINE, retrieve=retrieve,
        )  # fmt: skip
        assert [f.kind for f in report.findings] == ["lost-message"], [
            f.message for f in report.findings
        ]
        finding = report.findings[0]
        assert any(r.send.verb == "RSET" for r in finding.records)
        assert [r.send.kind for r in finding.records].count("data") == 1
        shown = [(r.send.wire, r.outcome) for r in finding.records]
        assert len(finding.records) <= 10, shown  # shrunk (10 records at this seed)
        assert mailboxes[ALICE]  # messages without an RSET before them were stored
        path, new = write_finding(SMTP, finding, target, "mx", tmp_path / "found", deadline=2)
        assert new
        doc = yaml.safe_load(path.read_text())
        assert doc["connections"] == {"box": {"protocol": "imap", "service": "imap"}}
        data = next(s for s in doc["steps"] if "data" in s)
        assert "Message-ID: <fuzz.{run}.1@fuzz.test>" in data["data"]
        assert data["expect"] == {"code": 250}
        box = [s for s in doc["steps"] if s.get("conn") == "box"]
        assert box[0] == {"conn": "box", "starttls": True}
        assert box[1]["auth"] == {"mechanism": "native", "account": "alice"}
        assert box[-1]["send"] == "b2 UID SEARCH HEADER Message-ID fuzz.{run}.1"
        assert box[-1]["until"] == {"within": 2.0, "every": 0.2}
        assert run_cli("validate", str(path))[0] == 0
        code, output = run_cli("run", str(path), "--target", str(tfile))
        assert code == 1, output
        assert "SEARCH" in output
    code, output = run_cli(
        "run", str(path), "--target", str(reference_mx_imap(mail_server, tmp_path))
    )
    assert code == 0, output


def test_the_reference_server_keeps_every_message_over_sockets(mail_server, tmp_path) -> None:
    target = load_target(reference_mx_imap(mail_server, tmp_path))
    retrieve, _ = retrieve_check_for(target)
    assert retrieve is not None
    report = fuzz(
        SMTP, target, target.services["mx"], seed_value=12, max_examples=300, retrieve=retrieve
    )
    assert report.findings == [], [f.message for f in report.findings]
    assert retrieve.checks >= 10
    # the messages found were expunged again (UIDPLUS): the INBOX is left as it was
    inbox = mail_server.config.mail_dir / "alice"
    assert not [p for sub in ("new", "cur") for p in (inbox / sub).iterdir()]


def test_cli_retrieval_check_in_memory_and_when_it_is_off(tmp_path: Path) -> None:
    args = ["fuzz", "--protocol", "smtp", "--in-memory", "--seed", "20240611"]
    code, output = run_cli(*args, "--max-examples", "300", "--out", str(tmp_path / "o"))
    assert code == 0, output
    assert "retrieval check: on (imap INBOX of alice, bob, within 2s)" in output
    looked = re.search(r"retrieval check: (\d+) message\(s\) looked for", output)
    assert looked and int(looked[1]) >= 10, output
    code, output = run_cli(*args, "--max-examples", "5", "--no-retrieve-check")
    assert code == 0 and "retrieval check: off (--no-retrieve-check)" in output, output
    with ScriptedServer(buggy_smtp("none")) as srv:  # no imap service in the target
        tfile = target_file(tmp_path, srv.port)
        code, output = run_cli("fuzz", "--protocol", "smtp", "--target", str(tfile),
                               "--max-examples", "5", "--seed", "1")  # fmt: skip
        assert code == 0 and "retrieval check: off (the target has no imap service)" in output


def test_the_model_lists_messages_and_only_the_recipients_it_is_sure_of() -> None:
    model = SmtpModel()

    def step(line: bytes, code: int, *, wellformed: bool = True) -> Send | None:
        return model.observe(Send(verb=line.split()[0].split(b":")[0].upper().decode(),
                                  wire=line + b"\r\n", wellformed=wellformed), code)  # fmt: skip

    step(b"EHLO x", 250)
    step(b"MAIL FROM:<>", 250)
    step(b"RCPT TO:<bob@example.test>", 250)
    step(b"MAIL FROM: <>", 250, wellformed=False)  # may have restarted the transaction
    step(b"rcpt TO:<alice@example.test>", 250)
    step(b"RCPT TO:<carol@example.test> extra", 250, wellformed=False)  # what got accepted?
    step(b"RCPT TO:<dave@example.test>", 550)
    data = step(b"DATA", 354)
    assert data is not None and data.kind == "data"
    assert b"Message-ID: <fuzz.{run}.1@fuzz.test>\r\n" in data.wire
    assert data.wire.endswith(b"\r\n.\r\n") and "{run}" in data.text
    model.observe(data, 250)
    step(b"MAIL FROM:<>", 250)
    step(b"RCPT TO:<alice@example.test>", 250)
    second = step(b"DATA", 354)
    assert second is not None and b"fuzz.{run}.2@" in second.wire
    model.observe(second, 451)  # not acknowledged: nothing to look for
    assert model.delivered == [Delivered(1, ("alice@example.test",))]
