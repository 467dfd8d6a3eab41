"""Every kind of broken scenario file gives one line ``path:line:column: message`` and exit 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from conformance.cli import main
from conformance.scenario.loader import LoadErrors, load_paths

GOOD_HEAD = """\
id: t.one
protocol: smtp
title: a test
"""

# (name, file text, expected "line:column", a phrase the message must contain)
CASES = [
    (
        "yaml-syntax",
        GOOD_HEAD + "steps:\n  - send: [EHLO\n",
        "6:1",
        "did not find expected ',' or ']' "
        "(while parsing a flow sequence started at line 5, column 11)",
    ),
    (
        "tab-indent",
        GOOD_HEAD + "steps:\n\t- send: EHLO x\n",
        "5:1",
        "YAML syntax error",
    ),
    (
        "unknown-top-key",
        GOOD_HEAD + "titel: typo\nsteps:\n  - send: NOOP\n",
        "4:1",
        "unknown key 'titel'",
    ),
    (
        "unknown-step-key",
        GOOD_HEAD + "steps:\n  - sned: NOOP\n",
        "5:5",
        "unknown key 'sned' in steps[0]",
    ),
    (
        "unknown-expect-key",
        GOOD_HEAD + "steps:\n  - send: NOOP\n    expect: {cod: 250}\n",
        "6:14",
        "unknown key 'cod' in steps[0].expect",
    ),
    (
        "wrong-type-timeout",
        GOOD_HEAD + "steps:\n  - send: NOOP\n    timeout: soon\n",
        "6:14",
        "steps[0].timeout: 'soon' is not of type 'number'",
    ),
    (
        "wrong-type-smtp-code",
        GOOD_HEAD + "steps:\n  - send: NOOP\n    expect: {code: OK}\n",
        "6:20",
        "SMTP reply codes are numbers",
    ),
    (
        "code-out-of-range",
        GOOD_HEAD + "steps:\n  - send: NOOP\n    expect: {code: 700}\n",
        "6:20",
        "expected an SMTP reply code 200-599",
    ),
    (
        "bad-regex",
        GOOD_HEAD + "steps:\n  - send: NOOP\n    expect: {code: 250, text: 'ok ('}\n",
        "6:31",
        "invalid regular expression",
    ),
    (
        "unknown-variable",
        GOOD_HEAD + "steps:\n  - send: 'MAIL FROM:<{sender}>'\n",
        "5:11",
        "unknown variable {sender}",
    ),
    (
        "bad-account-field",
        GOOD_HEAD + "steps:\n  - send: 'RCPT TO:<{account.alice.adress}>'\n",
        "5:11",
        "FIELD one of address, username, password",
    ),
    (
        "capture-used-before-defined",
        GOOD_HEAD
        + "steps:\n  - send: 'NOOP {x}'\n  - send: NOOP\n"
        + "    capture: {x: '(\\d+)'}\n    expect: {code: 250}\n",
        "5:11",
        "unknown variable {x}",
    ),
    (
        "unknown-protocol",
        "id: t.one\nprotocol: smtpx\ntitle: a test\nsteps:\n  - send: NOOP\n",
        "2:11",
        "'smtpx' is not one of smtp, pop3, imap",
    ),
    (
        "missing-steps",
        GOOD_HEAD,
        "1:1",
        "'steps' is a required key",
    ),
    (
        "duplicate-key",
        GOOD_HEAD + "steps:\n  - send: NOOP\n    send: RSET\n",
        "6:5",
        "duplicate key 'send'",
    ),
    (
        "expectation-for-other-protocol",
        GOOD_HEAD + "steps:\n  - send: NOOP\n    expect: {tagged: OK}\n",
        "6:14",
        "'tagged' is an expectation for imap, but connection 'main' speaks smtp",
    ),
    (
        "two-actions",
        GOOD_HEAD + "steps:\n  - send: NOOP\n    sleep: 1\n",
        "6:5",
        "one action per step, found send and sleep",
    ),
    (
        "unknown-connection",
        GOOD_HEAD + "steps:\n  - conn: box\n    send: NOOP\n",
        "5:11",
        "unknown connection 'box'",
    ),
    (
        "bad-raw-escape",
        GOOD_HEAD + "steps:\n  - send_raw: 'NOOP\\q'\n",
        "5:15",
        "unknown escape '\\q'",
    ),
    (
        "crlf-in-send",
        GOOD_HEAD + 'steps:\n  - send: "NOOP\\r\\nRSET"\n',
        "5:11",
        "cannot contain CR or LF",
    ),
    (
        "data-file-missing",
        GOOD_HEAD + "steps:\n  - data: {file: nowhere.eml}\n",
        "5:18",
        "cannot read 'nowhere.eml'",
    ),
    (
        "data-on-pop3",
        "id: t.one\nprotocol: pop3\ntitle: a test\nsteps:\n  - data: hello\n",
        "5:5",
        "'data' sends an SMTP message body",
    ),
    (
        "native-auth-on-smtp",
        GOOD_HEAD + "steps:\n  - auth: {mechanism: native, account: alice}\n",
        "5:23",
        "SMTP has no native login",
    ),
    (
        "empty-file",
        "",
        None,
        "no scenario in this file",
    ),
    (
        "bad-enhanced-code",
        GOOD_HEAD + "steps:\n  - send: NOOP\n    expect: {enhanced: '2.1'}\n",
        "6:24",
        "steps[0].expect.enhanced: '2.1' does not match",
    ),
]


@pytest.mark.parametrize(("name", "text", "where", "phrase"), CASES, ids=[c[0] for c in CASES])
def test_broken_file_reports_position(
    tmp_path: Path, name: str, text: str, where: str | None, phrase: str
):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(LoadErrors) as info:
        load_paths([path])
    first = str(info.value.errors[0])
    prefix = f"{path}:{where}: " if where else f"{path}: "
    assert first.startswith(prefix), first
    assert phrase in first, first
    assert "\n" not in first


def test_validate_cli_exits_2_with_one_line_per_error(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(GOOD_HEAD + "steps:\n  - sned: NOOP\n")
    (tmp_path / "b.yaml").write_text(
        GOOD_HEAD.replace("t.one", "t.two") + "steps:\n  - send: NOOP\n    expect: {code: 9}\n"
    )
    result = CliRunner().invoke(main, ["validate", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"{tmp_path / 'a.yaml'}:5:5: unknown key 'sned'")
    assert lines[1].startswith(f"{tmp_path / 'b.yaml'}:6:20: ")
    assert "nothing was run" in lines[-1]


def test_duplicate_ids_across_files(tmp_path: Path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(GOOD_HEAD + "steps:\n  - send: NOOP\n")
    with pytest.raises(LoadErrors) as info:
        load_paths([tmp_path])
    assert str(info.value.errors[0]).startswith(
        f"{tmp_path / 'b.yaml'}:1:5: duplicate scenario id 't.one'"
    )


def test_several_errors_in_one_file_all_reported(tmp_path: Path):
    path = tmp_path / "x.yaml"
    path.write_text(
        GOOD_HEAD + "steps:\n  - sned: NOOP\n  - send: NOOP\n    expect: {tagged: OK}\n"
    )
    with pytest.raises(LoadErrors) as info:
        load_paths([path])
    assert len(info.value.errors) == 1  # schema errors stop before semantic checks
    path.write_text(
        GOOD_HEAD
        + "steps:\n  - send: '{nope}'\n  - send: NOOP\n    expect: {tagged: OK, text: '('}\n"
    )
    with pytest.raises(LoadErrors) as info:
        load_paths([path])
    assert [str(e).split(": ", 1)[0].rsplit(":", 2)[1] for e in info.value.errors] == [
        "5",
        "7",
        "7",
    ]


def test_fragments_and_hidden_files_are_skipped(tmp_path: Path):
    (tmp_path / "_shared").mkdir()
    (tmp_path / "_shared" / "frag.yaml").write_text("not: a scenario\n")
    (tmp_path / "ok.yaml").write_text(GOOD_HEAD + "steps:\n  - send: NOOP\n")
    assert [s.id for s in load_paths([tmp_path])] == ["t.one"]


def test_multi_document_file(tmp_path: Path):
    path = tmp_path / "two.yaml"
    path.write_text(
        GOOD_HEAD
        + "steps:\n  - send: NOOP\n---\n"
        + GOOD_HEAD.replace("t.one", "t.two")
        + "steps:\n  - sned: x\n"
    )
    with pytest.raises(LoadErrors) as info:
        load_paths([path])
    assert str(info.value.errors[0]).startswith(f"{path}:11:5: unknown key 'sned'")


def test_good_file_loads_with_defaults(tmp_path: Path):
    path = tmp_path / "g.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            id: g.one
            protocol: imap
            title: good
            connections:
              other: {protocol: smtp, service: submission}
            requires: [IDLE, "submission:AUTH=PLAIN"]
            steps:
              - expect: {untagged: ['^\\* OK']}
              - send: a1 SELECT INBOX
                capture: {uv: 'UIDVALIDITY (\\d+)'}
                expect: {tagged: ok}
              - conn: other
                send: 'NOOP {uv}'
                expect: {code: [250, 251], class: 2xx, enhanced: 2.0.x}
            """
        )
    )
    (sc,) = load_paths([path])
    assert sc.service == "imap"
    assert sc.connections["other"].service == "submission"
    assert [(r.service, r.capability) for r in sc.requires] == [
        ("imap", "IDLE"),
        ("submission", "AUTH=PLAIN"),
    ]
    assert sc.steps[1].expect is not None and sc.steps[1].expect.tagged == "OK"
    assert sc.steps[2].expect is not None and sc.steps[2].expect.codes == (250, 251)
    assert sc.steps[2].position.line == 12


def test_unknown_account_checked_against_target(tmp_path: Path):
    path = tmp_path / "a.yaml"
    path.write_text(GOOD_HEAD + "steps:\n  - send: 'RCPT TO:<{account.carol.address}>'\n")
    assert load_paths([path])  # no target: any account name is fine
    with pytest.raises(LoadErrors) as info:
        load_paths([path], accounts={"alice", "bob"})
    assert "the target has no account 'carol' (it has: alice, bob)" in str(info.value)


def test_shipped_scenarios_are_valid():
    root = Path(__file__).resolve().parents[3] / "scenarios"
    scenarios = load_paths([root])
    assert len(scenarios) >= 10
    assert all(s.rfc for s in scenarios), "every shipped scenario cites its RFC"
