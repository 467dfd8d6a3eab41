import socket
import ssl
import stat
import threading

import pytest
import yaml

from conformance.targets import TlsMode, load_target
from reference_server.auth import Accounts
from reference_server.config import ListenerKind, load_config
from reference_server.devsetup import dev_config, write_target
from reference_server.tls import resolve_tls_files, server_context


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    base = tmp_path_factory.mktemp("dev")
    config, passwords = dev_config(base)
    return base, config, passwords


def test_dev_config_writes_a_loadable_config(dev):
    base, config, _ = dev
    assert load_config(base / "server.yaml") == config
    assert config.hostname == "mail.example.test"
    assert config.domains == ("example.test",)
    assert config.data_dir == base / "data"
    assert config.postmaster == "alice"
    assert {
        n: (lst.kind, lst.host, lst.port, lst.tls.value) for n, lst in config.listeners.items()
    } == {
        "mx": (ListenerKind.MX, "127.0.0.1", 0, "starttls"),
        "submission": (ListenerKind.SUBMISSION, "127.0.0.1", 0, "starttls"),
        "submissions": (ListenerKind.SUBMISSIONS, "127.0.0.1", 0, "implicit"),
        "pop3": (ListenerKind.POP3, "127.0.0.1", 0, "starttls"),
        "pop3s": (ListenerKind.POP3S, "127.0.0.1", 0, "implicit"),
        "imap": (ListenerKind.IMAP, "127.0.0.1", 0, "starttls"),
        "imaps": (ListenerKind.IMAPS, "127.0.0.1", 0, "implicit"),
        "web": (ListenerKind.HTTP, "127.0.0.1", 0, "implicit"),
    }


def test_dev_accounts_log_in_with_the_returned_passwords(dev):
    _, config, passwords = dev
    assert set(passwords) == {"alice", "bob"}
    assert passwords["alice"] != passwords["bob"]
    accounts = Accounts.load(config.accounts_file)
    for name, password in passwords.items():
        account = accounts.authenticate(name, password)
        assert account is not None and account.addresses == (f"{name}@example.test",)
    assert accounts.authenticate("alice", passwords["bob"]) is None
    assert stat.S_IMODE(config.accounts_file.stat().st_mode) == 0o600
    assert "scrypt$" in config.accounts_file.read_text()
    assert passwords["alice"] not in config.accounts_file.read_text()


def test_dev_certificates_are_generated_up_front(dev):
    base, config, _ = dev
    tls_dir = base / "data" / "tls"
    assert {p.name for p in tls_dir.glob("*.pem")} >= {"ca.pem", "cert.pem", "key.pem"}
    files = resolve_tls_files(config)
    assert files.ca_file == tls_dir / "ca.pem"


def test_each_call_makes_new_passwords_but_keeps_the_ca(tmp_path):
    _, first = dev_config(tmp_path)
    ca = (tmp_path / "data" / "tls" / "ca.pem").read_bytes()
    _, second = dev_config(tmp_path)
    assert first["alice"] != second["alice"]
    assert (tmp_path / "data" / "tls" / "ca.pem").read_bytes() == ca


def test_dev_config_on_ipv6(tmp_path):
    config, _ = dev_config(tmp_path, host="::1")
    assert {lst.host for lst in config.listeners.values()} == {"::1"}


def test_dev_config_refuses_host_names(tmp_path):
    with pytest.raises(ValueError, match="expected an IP address"):
        dev_config(tmp_path, host="localhost")


def test_target_file_loads_in_the_harness(dev, tmp_path, monkeypatch):
    _, config, passwords = dev
    bound = {"mx": ("127.0.0.1", 2525), "submissions": ("127.0.0.1", 4650)}
    ca_file = resolve_tls_files(config).ca_file
    path = tmp_path / "target.yaml"
    write_target(path, config, bound, {"alice": passwords["alice"]}, ca_file)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "password: '${BOB_PASSWORD}'" in path.read_text()
    monkeypatch.setenv("BOB_PASSWORD", "from-env")
    target = load_target(path)
    assert target.host == "127.0.0.1"
    assert target.domain == "example.test"
    assert target.server_name == "mail.example.test"
    assert target.verify and target.ca_file == ca_file
    assert {n: (s.host, s.port, s.tls) for n, s in target.services.items()} == {
        "mx": ("127.0.0.1", 2525, TlsMode.STARTTLS),
        "submissions": ("127.0.0.1", 4650, TlsMode.IMPLICIT),
    }
    alice, bob = target.accounts["alice"], target.accounts["bob"]
    assert (alice.address, alice.username, alice.password) == (
        "alice@example.test",
        "alice",
        passwords["alice"],
    )
    assert bob.password == "from-env"


def test_wildcard_and_mixed_hosts(dev, tmp_path):
    _, config, passwords = dev
    bound = {"mx": ("0.0.0.0", 25), "submission": ("::", 587), "submissions": ("::1", 465)}
    path = tmp_path / "target.yaml"
    write_target(path, config, bound, passwords, None)
    raw = yaml.safe_load(path.read_text())
    assert raw["host"] == "127.0.0.1"
    assert raw["tls"] == {"verify": True}
    assert raw["services"] == {
        "mx": {"port": 25, "tls": "starttls"},
        "submission": {"port": 587, "tls": "starttls", "host": "::1"},
        "submissions": {"port": 465, "tls": "implicit", "host": "::1"},
    }


@pytest.mark.parametrize(
    ("bound", "message"),
    [
        ({}, "no listeners are bound"),
        ({"gopher": ("127.0.0.1", 143)}, "not in the configuration"),
        ({"mx": ("127.0.0.1", 0)}, "not a bound port"),
        ({"mx": ("localhost", 25)}, "expected an IP address"),
    ],
)
def test_write_target_refuses_bad_bindings(dev, tmp_path, bound, message):
    _, config, passwords = dev
    with pytest.raises(ValueError, match=message):
        write_target(tmp_path / "t.yaml", config, bound, passwords, None)


def test_target_tls_settings_verify_the_dev_server(dev, tmp_path):
    """The harness's own client context, built from the target file, accepts the server."""
    _, config, passwords = dev
    files = resolve_tls_files(config)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    path = tmp_path / "target.yaml"
    write_target(path, config, {"submissions": ("127.0.0.1", port)}, passwords, files.ca_file)
    target = load_target(path)

    def serve() -> None:
        conn, _ = listener.accept()
        with server_context(files.cert_file, files.key_file).wrap_socket(
            conn, server_side=True
        ) as s:
            s.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        service = target.services["submissions"]
        with (
            socket.create_connection((service.host, service.port), timeout=10) as raw,
            target.ssl_context().wrap_socket(raw, server_hostname=target.server_name) as tls,
        ):
            assert tls.recv(2) == b"ok"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        thread.join(10)
        listener.close()
    assert isinstance(target.ssl_context(), ssl.SSLContext)
