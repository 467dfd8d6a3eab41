from pathlib import Path

import pytest

from reference_server.config import (
    ConfigError,
    FaultRule,
    Limits,
    LineLimits,
    ListenerKind,
    StorageSettings,
    Timeouts,
    TlsMode,
    load_config,
)

MINIMAL = "hostname: mail.example.test\ntls: {generate: true}\n"

FULL = """\
hostname: mail.example.test
domains: [example.test, Other.Example]
data_dir: ./data
accounts_file: ./accounts.yaml
postmaster: alice
tls:
  cert_file: ./cert.pem
  key_file: ./key.pem
  generate: false
listeners:
  mx:          {kind: mx,          host: 127.0.0.1, port: 25,  tls: starttls}
  submission:  {kind: submission,  host: 127.0.0.1, port: 587, tls: starttls}
  submissions: {kind: submissions, host: "::1",     port: 465, tls: implicit}
limits:
  max_message_size: 1000000
  max_recipients: 100
  max_connections: 10
  max_line_length: {command_line: 2048, text_line: 1000}
  auth_failure_delay: 0
  timeouts: {command: 30, data_block: 18.5, data_end: 60, initial: 30}
faults:
  - listener: mx
    command: rcpt
    delay: 0.5
    reply_rate: 0.1
    reply: "451 4.3.0 injected fault"
    drop_rate: 0.0
    seed: 1
  - {command: DATA_END, drop_rate: 1}
"""


def write(tmp_path: Path, text: str, name: str = "server.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_file_takes_the_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.hostname == "mail.example.test"
    assert config.domains == ("example.test",)
    assert config.data_dir == tmp_path / "data"
    assert config.accounts_file == tmp_path / "accounts.yaml"
    assert config.postmaster == "alice"
    assert config.tls.cert_file == tmp_path / "cert.pem"
    assert config.tls.generate is True
    assert [(n, lst.kind, lst.host, lst.port, lst.tls) for n, lst in config.listeners.items()] == [
        ("mx", ListenerKind.MX, "127.0.0.1", 25, TlsMode.STARTTLS),
        ("submission", ListenerKind.SUBMISSION, "127.0.0.1", 587, TlsMode.STARTTLS),
        ("submissions", ListenerKind.SUBMISSIONS, "127.0.0.1", 465, TlsMode.IMPLICIT),
    ]
    assert config.limits == Limits()
    assert config.limits.max_line_length == LineLimits(command_line=512, text_line=1000)
    assert config.limits.timeouts == Timeouts(
        command=300, data_block=180, data_end=600, initial=None
    )
    assert config.faults == ()
    assert config.storage == StorageSettings(delivery_process=True, delivery_threads=8)
    assert config.source == tmp_path / "server.yaml"
    assert config.mail_dir == tmp_path / "data" / "mail"
    assert config.spool_dir == tmp_path / "data" / "spool"
    assert config.needs_tls


def test_full_file(tmp_path):
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    config = load_config(write(tmp_path, FULL))
    assert config.domains == ("example.test", "other.example")
    assert config.is_local("EXAMPLE.test") and not config.is_local("elsewhere.test")
    assert config.listeners["submissions"].host == "::1"
    assert config.limits.max_line_length.command_line == 2048
    assert config.limits.auth_failure_delay == 0.0
    assert config.limits.timeouts.data_block == 18.5
    rule, drop = config.faults
    assert rule == FaultRule(
        listener="mx",
        command="RCPT",
        delay=0.5,
        reply_rate=0.1,
        reply="451 4.3.0 injected fault",
        drop_rate=0.0,
        seed=1,
    )
    assert (rule.reply_code, rule.reply_text) == (451, "4.3.0 injected fault")
    assert rule.matches("mx", "rcpt") and not rule.matches("submission", "RCPT")
    assert drop.listener == "*" and drop.matches("submission", "DATA_END")


def test_relative_paths_are_relative_to_the_file_not_the_working_directory(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    write(sub, MINIMAL + "data_dir: ../var/mail\naccounts_file: users.yaml\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/server.yaml"))
    assert config.data_dir == tmp_path / "etc" / ".." / "var" / "mail"
    assert config.accounts_file == tmp_path / "etc" / "users.yaml"


def test_listener_kind_and_port_default_from_the_name(tmp_path):
    config = load_config(write(tmp_path, "hostname: h.test\nlisteners: {mx: {tls: none}}\n"))
    (mx,) = config.listeners.values()
    assert (mx.kind, mx.port, mx.tls) == (ListenerKind.MX, 25, TlsMode.NONE)
    assert not config.needs_tls


def test_cleartext_listeners_need_no_tls_material(tmp_path):
    text = "hostname: h.test\nlisteners: {a: {kind: mx, port: 0, tls: none}}\n"
    assert load_config(write(tmp_path, text)).tls.generate is False


def test_port_zero_may_repeat(tmp_path):
    text = MINIMAL + "listeners: {a: {kind: mx, port: 0}, b: {kind: mx, port: 0}}\n"
    assert [lst.port for lst in load_config(write(tmp_path, text)).listeners.values()] == [0, 0]


def test_existing_certificate_files_satisfy_tls_without_generate(tmp_path):
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    config = load_config(
        write(tmp_path, "hostname: h.test\ntls: {cert_file: c.pem, key_file: k.pem}\n")
    )
    assert config.tls.cert_file == tmp_path / "c.pem"


def test_yaml_1_1_booleans_stay_strings(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + "listeners: {mx: {tls: off}}\n"))
    assert "unknown TLS mode 'off'" in str(info.value)


LISTENER = "hostname: h.test\ntls: {generate: true}\nlisteners:\n  mx: {kind: mx, port: 2525}\n"


def fault(line: str) -> str:
    return LISTENER + f"faults:\n  - {line}\n"


ERRORS = [
    pytest.param(
        LISTENER + "  submission: {kind: submission, port: x}\n",
        "listeners.submission.port: expected an integer 0-65535, got 'x'",
        id="port-not-integer",
    ),
    pytest.param(
        LISTENER + "  other: {kind: mx, port: 70000}\n",
        "listeners.other.port: expected an integer 0-65535, got 70000",
        id="port-out-of-range",
    ),
    pytest.param(
        LISTENER + "  other: {kind: mx, port: 2525}\n",
        "listeners.other.port: port 2525 on 127.0.0.1 is also used by listener 'mx'",
        id="port-taken-twice",
    ),
    pytest.param(
        "tls: {generate: true}\n",
        "hostname: missing; give the name used in the greeting and Received headers, "
        "e.g. hostname: mail.example.test",
        id="hostname-missing",
    ),
    pytest.param(
        "hostname: not a name\n",
        "hostname: expected a domain name like mail.example.test, got 'not a name'",
        id="hostname-invalid",
    ),
    pytest.param(
        LISTENER + "limits: {max_mesage_size: 10}\n",
        "limits.max_mesage_size: unknown key; did you mean 'max_message_size'?",
        id="unknown-key-suggests",
    ),
    pytest.param(
        LISTENER + "colour: blue\n",
        "colour: unknown key; known keys: hostname, domains, data_dir, accounts_file, "
        "postmaster, tls, listeners, limits, pop3, imap, storage, faults, relay, queue",
        id="unknown-key-lists",
    ),
    pytest.param(
        LISTENER + "  p: {kind: smtp}\n",
        "listeners.p.kind: unknown kind 'smtp'; expected one of mx, submission, submissions, "
        "pop3, pop3s, imap, imaps, http",
        id="unknown-kind",
    ),
    pytest.param(
        LISTENER + "  x: {port: 26}\n",
        "listeners.x.kind: missing; give one of mx, submission, submissions, pop3, pop3s, imap, "
        "imaps, http",
        id="kind-missing",
    ),
    pytest.param(
        LISTENER + "  p: {kind: pop3s, tls: starttls}\n",
        "listeners.p.tls: a pop3s listener uses implicit TLS (RFC 8314), got starttls",
        id="pop3s-not-implicit",
    ),
    pytest.param(
        LISTENER + "  p: {kind: pop3, tls: none}\n",
        "listeners.p.tls: a pop3 listener with tls: none needs pop3.plaintext_auth: true, "
        "or nobody can log in; use tls: starttls (STLS, RFC 2595)",
        id="pop3-cleartext-without-plaintext-auth",
    ),
    pytest.param(
        LISTENER + "pop3: {autologout: 60}\n",
        "pop3.autologout: expected at least 600 seconds (RFC 1939 §3: an autologout timer "
        "MUST be of at least 10 minutes), got 60",
        id="pop3-autologout-below-rfc",
    ),
    pytest.param(
        LISTENER + "pop3: {login_delay: 0}\n",
        "pop3.login_delay: expected an integer of at least 1, got 0",
        id="pop3-login-delay-zero",
    ),
    pytest.param(
        "hostname: h.test\nlisteners: {}\n",
        "listeners: no listeners; give at least one, e.g. mx: {kind: mx, port: 25}",
        id="no-listeners",
    ),
    pytest.param(
        LISTENER + "  s: {kind: submissions, tls: starttls}\n",
        "listeners.s.tls: a submissions listener uses implicit TLS (RFC 8314), got starttls",
        id="submissions-not-implicit",
    ),
    pytest.param(
        LISTENER + "  s: {kind: submission, tls: none}\n",
        "listeners.s.tls: a submission listener needs starttls or implicit "
        "(AUTH is offered only over TLS)",
        id="submission-cleartext",
    ),
    pytest.param(
        LISTENER + "  m: {kind: mx, host: localhost}\n",
        "listeners.m.host: expected an IP address like 127.0.0.1 or ::1 "
        "(the server does no DNS lookups), got 'localhost'",
        id="host-not-ip",
    ),
    pytest.param(
        LISTENER + "limits: {max_recipients: 50}\n",
        "limits.max_recipients: expected an integer of at least 100 (RFC 5321 §4.5.3.1.8), got 50",
        id="max-recipients-below-100",
    ),
    pytest.param(
        LISTENER + "limits: {max_line_length: {command_line: 100}}\n",
        "limits.max_line_length.command_line: expected an integer of at least 512, got 100",
        id="command-line-below-512",
    ),
    pytest.param(
        LISTENER + "limits: {max_line_length: 1000}\n",
        "limits.max_line_length: expected a mapping like {command_line: 512, text_line: 1000}, "
        "got 1000",
        id="line-length-not-mapping",
    ),
    pytest.param(
        LISTENER + "limits: {timeouts: {command: 0}}\n",
        "limits.timeouts.command: expected a positive number of seconds, got 0",
        id="timeout-zero",
    ),
    pytest.param(
        LISTENER + "limits: {auth_failure_delay: true}\n",
        "limits.auth_failure_delay: expected a number of seconds, 0 or more, got True",
        id="delay-boolean",
    ),
    pytest.param(
        fault('{reply_rate: 0.5, reply: "250 ok"}'),
        'faults[0].reply: expected a reply with a 4xx or 5xx code, like "451 4.3.0 injected '
        "fault\", got '250 ok'",
        id="reply-not-4xx-5xx",
    ),
    pytest.param(
        fault("{reply_rate: 1.5}"),
        "faults[0].reply_rate: expected a number from 0 to 1, got 1.5",
        id="rate-above-1",
    ),
    pytest.param(
        fault("{drop_rate: -0.1}"),
        "faults[0].drop_rate: expected a number from 0 to 1, got -0.1",
        id="rate-negative",
    ),
    pytest.param(
        fault("{listener: smtp, delay: 1}"),
        "faults[0].listener: listener 'smtp' does not exist (faults apply to SMTP listeners); "
        "expected one of mx or '*'",
        id="fault-unknown-listener",
    ),
    pytest.param(
        LISTENER + "  p: {kind: pop3}\nfaults:\n  - {listener: p, delay: 1}\n",
        "faults[0].listener: listener 'p' is not an SMTP listener (faults apply to SMTP "
        "listeners); expected one of mx or '*'",
        id="fault-pop3-listener",
    ),
    pytest.param(
        fault("{command: 'MAIL FROM', delay: 1}"),
        "faults[0].command: expected a command verb (like RCPT), CONNECT, DATA_END or '*', "
        "got 'MAIL FROM'",
        id="fault-bad-command",
    ),
    pytest.param(
        fault("{command: RCPT}"),
        "faults[0]: this rule does nothing; give delay, reply_rate or drop_rate",
        id="fault-does-nothing",
    ),
    pytest.param(
        LISTENER + "faults: {delay: 1}\n",
        "faults: expected a list of fault rules, got a mapping",
        id="faults-not-list",
    ),
    pytest.param(
        LISTENER + "domains: example.test\n",
        "domains: expected a list of domain names like [example.test], got 'example.test'",
        id="domains-not-list",
    ),
    pytest.param(
        LISTENER + "postmaster: alice@example.test\n",
        "postmaster: expected an account name (like alice), got 'alice@example.test'",
        id="postmaster-address",
    ),
    pytest.param(
        "hostname: h.test\nlisteners: {mx: {port: 0}}\ntls: {generate: yes}\n",
        "tls.generate: expected true or false, got 'yes'",
        id="generate-yaml-1.1-boolean",
    ),
    pytest.param(
        "- hostname: h.test\n",
        "expected a mapping of settings at the top level, got a list",
        id="top-level-list",
    ),
    pytest.param(
        "",
        "the file is empty; give at least hostname (e.g. hostname: mail.example.test)",
        id="empty-file",
    ),
    pytest.param(
        LISTENER + "storage: {delivery_threads: 0}\n",
        "storage.delivery_threads: expected an integer 1-256, got 0",
        id="storage-no-threads",
    ),
    pytest.param(
        LISTENER + "storage: {delivery_process: 'no'}\n",
        "storage.delivery_process: expected true or false, got 'no'",
        id="storage-process-not-boolean",
    ),
]


def test_storage_section(tmp_path):
    text = MINIMAL + "storage: {delivery_process: false, delivery_threads: 2}\n"
    config = load_config(write(tmp_path, text))
    assert config.storage == StorageSettings(delivery_process=False, delivery_threads=2)


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_errors_are_one_line_with_file_and_key_path(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"
    assert "\n" not in str(info.value)


def test_error_names_the_file_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "hostname: h.test\nlisteners: {mx: {port: x}}\n")
    with pytest.raises(ConfigError) as info:
        load_config("server.yaml")
    assert str(info.value) == "server.yaml: listeners.mx.port: expected an integer 0-65535, got 'x'"
    assert (info.value.file, info.value.key) == ("server.yaml", "listeners.mx.port")


def test_tls_material_missing(tmp_path):
    path = write(tmp_path, "hostname: h.test\nlisteners: {mx: {port: 0}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: tls.cert_file: no such file '{tmp_path / 'cert.pem'}', and listener 'mx' uses "
        "tls: starttls; give cert_file and key_file, or set generate: true for a development "
        "certificate"
    )


def test_key_without_certificate(tmp_path):
    (tmp_path / "key.pem").write_text("x")
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: tls.cert_file: no such file '{tmp_path / 'cert.pem'}'; "
        "cert_file and key_file go together"
    )


def test_duplicate_key_is_an_error_with_its_position(tmp_path):
    path = write(tmp_path, "hostname: a.test\nlisteners: {mx: {port: 0, port: 1}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2:27: invalid YAML: duplicate key 'port'"


def test_yaml_syntax_error_is_one_line(tmp_path):
    path = write(tmp_path, "hostname: [a\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value) == f"{path}:2:1: invalid YAML: expected ',' or ']', but got '<stream end>'"
    )


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: no such file; give the path of a server config"


def test_the_dataclasses_are_frozen(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(AttributeError):
        config.hostname = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.limits.max_recipients = 1  # type: ignore[misc]
