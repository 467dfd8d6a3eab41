"""``requires:`` with valued capabilities: an IMAP server advertising ``APPENDLIMIT=67108864``
satisfies ``requires: [APPENDLIMIT]`` (the bare name is recorded too, as SMTP does for
EHLO keywords with parameters), and ``APPENDLIMIT=67108864`` names the value."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from engine_helpers import assert_passed, run_scenario
from scripted import ScriptConn

from conformance.results import Status
from conformance.scenario.sessions import capability_set_imap


def imap(greeting_caps: str, caps: str) -> Callable[[ScriptConn], None]:
    def handle(conn: ScriptConn) -> None:
        conn.sendline(f"* OK [CAPABILITY {greeting_caps}] ready")
        while True:
            try:
                tag, _, rest = conn.recv_line(5).decode().partition(" ")
            except (EOFError, TimeoutError):
                return
            if rest.upper() == "CAPABILITY":
                conn.sendline(f"* CAPABILITY {caps}")
            conn.sendline(f"{tag} OK done")

    return handle


STEPS = "- send: a1 NOOP\n  expect: {tagged: OK}\n"


@pytest.mark.parametrize(
    ("requires", "status"),
    [
        ("[APPENDLIMIT]", Status.PASSED),
        ("[appendlimit=67108864]", Status.PASSED),
        ("[APPENDLIMIT=1]", Status.NOT_APPLICABLE),
        ("[AUTH]", Status.PASSED),
        ("[AUTH=PLAIN]", Status.PASSED),
        ("[AUTH=LOGIN]", Status.NOT_APPLICABLE),
    ],
)
def test_a_valued_capability_satisfies_its_bare_name(tmp_path, requires, status):
    server = imap("IMAP4rev2", "IMAP4rev2 APPENDLIMIT=67108864 AUTH=PLAIN")
    result = run_scenario(
        tmp_path, server, STEPS, protocol="imap", header=f"requires: {requires}\n"
    )
    assert result.status is status, result.message


def test_the_greeting_capabilities_count_too(tmp_path):
    server = imap("IMAP4rev2 APPENDLIMIT=100", "IMAP4rev2")
    result = run_scenario(
        tmp_path, server, STEPS, protocol="imap", header="requires: [APPENDLIMIT]\n"
    )
    assert_passed(result)


def test_capability_set_imap():
    assert capability_set_imap(["imap4rev2", "AppendLimit=5", "AUTH=PLAIN", "=x"]) == {
        "IMAP4REV2",
        "APPENDLIMIT=5",
        "APPENDLIMIT",
        "AUTH=PLAIN",
        "AUTH",
        "=X",
    }
