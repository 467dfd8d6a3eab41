"""The IMAP fuzzer finds bugs hidden in scripted servers and writes scenarios that replay them."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from fuzz_support import (
    PASSWORD,
    find_and_replay,
    load,
    login_for,
    nodelay,
    reference_target,
    run_cli,
)
from scripted import ScriptConn, TestCerts

from conformance.fuzz import PROTOCOLS, fuzz

IMAP = PROTOCOLS["imap"]
DEADLINE = 0.3
_TAG = re.compile(r"[A-Za-z0-9.]+")
_BOX = re.compile(r"mh-fuzz-[a-z0-9{}-]+|INBOX")


def _seqset(text: str, top: int) -> list[int] | None:
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+|\*)(?::(\d+|\*))?", part)
        if m is None:
            return None
        a, b = (top if g == "*" else int(g) for g in (m.group(1), m.group(2) or m.group(1)))
        if not (1 <= a <= top and 1 <= b <= top):
            return None
        out.extend(range(min(a, b), max(a, b) + 1))
    return sorted(set(out))


def buggy_imap(bug: str) -> Callable[[ScriptConn], None]:
    """A small, mostly correct IMAP server with one bug: uid, noop or fetch."""
    boxes: dict[str, list[list[int]]] = {"INBOX": []}  # name -> [[uid, deleted], ...]
    nexts: dict[str, int] = {"INBOX": 1}

    def handler(conn: ScriptConn) -> None:
        nodelay(conn)
        conn.sendline("* OK [CAPABILITY IMAP4rev1 STARTTLS] scripted IMAP")
        authed, sel, ro = False, None, False
        while True:
            raw = conn.recv_line(timeout=10)
            line = raw.decode("ascii", "replace")
            tag, _, rest = line.partition(" ")
            if not _TAG.fullmatch(tag):
                conn.sendline("* BAD no tag")
                continue
            cmd, _, arg = rest.partition(" ")
            cmd = cmd.upper()
            if cmd == "UID":
                sub, _, arg = arg.partition(" ")
                cmd = "UID " + sub.upper()

            def done(status: str = "OK", text: str = "done", *, t: str = tag) -> None:
                conn.sendline(f"{t} {status} {text}")

            if b"\x00" in raw or not raw.isascii() or b"\r" in raw or len(raw) > 1000:
                done("BAD", "bad line")
            elif cmd in ("CAPABILITY", "NOOP") and not arg:
                if cmd == "CAPABILITY":
                    conn.sendline("* CAPABILITY IMAP4rev1 STARTTLS")
                done()
            elif cmd == "NOOP" and bug == "noop":
                continue  # no tagged response
            elif cmd == "LOGOUT" and not arg:
                conn.sendline("* BYE bye")
                done()
                return
            elif cmd == "STARTTLS" and not arg and not conn.tls and not authed:
                done()
                conn.starttls()
            elif cmd == "LOGIN" and not authed and arg == f'"alice" "{PASSWORD}"':
                authed = True
                done()
            elif not authed:
                done("BAD", "not now")
            elif cmd in ("CREATE", "DELETE") and _BOX.fullmatch(arg) and arg != "INBOX":
                if (cmd == "CREATE") == (arg in boxes):
                    done("NO", "no")
                elif cmd == "CREATE":
                    boxes[arg], nexts[arg] = [], 1
                    done()
                else:
                    del boxes[arg]
                    if sel == arg:  # nothing is selected any more
                        sel = None
                    done()
            elif cmd == "APPEND" and (m := re.fullmatch(r"(\S+)(?: \([^()]*\))? \{(\d+)\}", arg)):
                conn.sendline("+ go")
                conn.recv_exact(int(m.group(2)))
                conn.recv_line()
                if m.group(1) not in boxes or m.group(1) == "INBOX":
                    done("NO", "[TRYCREATE] no")
                    continue
                box = m.group(1)
                boxes[box].append([nexts[box], 0])
                nexts[box] += 1
                if box == sel:
                    conn.sendline(f"* {len(boxes[box])} EXISTS")
                done()
            elif (
                cmd in ("SELECT", "EXAMINE")
                and arg in boxes
                and (cmd == "EXAMINE" or arg != "INBOX")
            ):
                sel, ro = arg, cmd == "EXAMINE"
                conn.sendline(f"* {len(boxes[arg])} EXISTS")
                conn.sendline("* OK [UIDVALIDITY 1] v")
                conn.sendline(f"* OK [UIDNEXT {nexts[arg]}] n")
                done()
            elif cmd in ("SELECT", "EXAMINE"):
                sel = None
                done("NO", "no such mailbox")
            elif sel is None:
                done("BAD", "select first")
            elif cmd in ("CLOSE", "UNSELECT") and not arg:
                sel = None
                done()
            elif cmd == "EXPUNGE" and not arg and not ro:
                msgs = boxes[sel]
                for i in range(len(msgs), 0, -1):
                    if msgs[i - 1][1]:
                        del msgs[i - 1]
                        conn.sendline(f"* {i} EXPUNGE")
                if bug == "uid":
                    for i, msg in enumerate(msgs):
                        msg[0] = i + 1
                done()
            elif cmd in ("FETCH", "UID FETCH", "STORE", "UID STORE"):
                seq, _, what = arg.partition(" ")
                msgs = boxes[sel]
                if cmd.startswith("UID"):
                    uids = [m[0] for m in msgs]
                    nums = [
                        uids.index(u) + 1 for u in range(1, max(uids, default=0) + 1) if u in uids
                    ]
                    picked = _seqset(seq, max(uids, default=0)) if msgs else None
                    nums = [uids.index(u) + 1 for u in picked or [] if u in uids]
                else:
                    nums = _seqset(seq, len(msgs)) or []
                if not nums and not (cmd.startswith("UID") and msgs):
                    done("BAD", "bad sequence")
                    continue
                if bug == "fetch" and "FETCH" in cmd and "BODYSTRUCTURE" in what.upper():
                    conn.abort()
                    return
                if "STORE" in cmd and ro:
                    done("NO", "read-only")
                    continue
                for n in nums:
                    if "STORE" in cmd and "\\Deleted" in what:
                        msgs[n - 1][1] = 0 if what.startswith("-") else 1
                    flags = "(\\Deleted)" if msgs[n - 1][1] else "()"
                    conn.sendline(f"* {n} FETCH (UID {msgs[n - 1][0]} FLAGS {flags})")
                done()
            else:
                done("BAD", "unsupported")

    return handler


@pytest.mark.parametrize(
    ("bug", "kind", "needle"),
    [("uid", "inconsistent", b"EXPUNGE"), ("noop", "hang", b"NOOP"),
     ("fetch", "crash", b"BODYSTRUCTURE")],
)  # fmt: skip
def test_fuzzer_finds_the_hidden_bug_and_the_scenario_replays_it(
    bug: str, kind: str, needle: bytes, tmp_path: Path, mail_server, test_certs: TestCerts
) -> None:
    path, _ = find_and_replay(
        IMAP, "imap", buggy_imap(bug), kind, needle, tmp_path, test_certs,
        deadline=DEADLINE,
    )  # fmt: skip
    ref = reference_target(mail_server, tmp_path, "imap")
    code, output = run_cli("run", str(path), "--target", str(ref))
    assert code == 0, output + path.read_text()


def test_a_short_logged_in_run_against_the_reference_server_finds_nothing(
    mail_server, tmp_path: Path
) -> None:
    target = load(reference_target(mail_server, tmp_path, "imap"))
    report = fuzz(
        IMAP, target, target.services["imap"], seed_value=11, max_examples=100,
        login=login_for(target, "imap"),
    )  # fmt: skip
    assert report.findings == [], [f.message for f in report.findings]
    assert {"AUTHENTICATED", "SELECTED"} <= report.stats.states
