import datetime as dt
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from reference_server.config import load_config
from reference_server.tls import (
    TlsError,
    generate_dev_certificates,
    resolve_tls_files,
    server_context,
)

NAMES = ["mail.example.test"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return generate_dev_certificates(tmp_path_factory.mktemp("tls"), NAMES)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str):
    """One TLS handshake and a byte each way over a real loopback TCP connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    outcome: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                outcome["server_version"] = tls.version()
                tls.sendall(tls.recv(1))
        except (ssl.SSLError, OSError) as exc:
            outcome["server_error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            tls.sendall(b"x")
            assert tls.recv(1) == b"x"
            return tls.version(), tls.getpeercert()
    finally:
        thread.join(10)
        listener.close()


def client_trusting(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


@pytest.mark.parametrize("server_hostname", ["mail.example.test", "127.0.0.1"])
def test_generated_certificate_verifies_against_its_ca(certs, server_hostname):
    version, peer = handshake(
        server_context(certs.cert_file, certs.key_file),
        client_trusting(certs.ca_file),
        server_hostname,
    )
    assert version in ("TLSv1.2", "TLSv1.3")
    assert ("DNS", "mail.example.test") in peer["subjectAltName"]


def test_ipv6_loopback_is_in_the_certificate(certs):
    leaf = x509.load_pem_x509_certificates(certs.cert_file.read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }


def test_a_client_without_the_ca_refuses(certs):
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(
            server_context(certs.cert_file, certs.key_file),
            ssl.create_default_context(),
            "mail.example.test",
        )


def test_a_name_not_in_the_certificate_is_refused(certs):
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(
            server_context(certs.cert_file, certs.key_file),
            client_trusting(certs.ca_file),
            "other.example.test",
        )


def test_files_and_modes(certs):
    assert stat.S_IMODE(certs.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((certs.ca_file.parent / "ca-key.pem").stat().st_mode) == 0o600
    chain = x509.load_pem_x509_certificates(certs.cert_file.read_bytes())
    ca = x509.load_pem_x509_certificate(certs.ca_file.read_bytes())
    assert len(chain) == 2 and chain[1] == ca
    chain[0].verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not chain[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_existing_files_are_reused_while_they_fit(tmp_path):
    first = generate_dev_certificates(tmp_path, NAMES)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.pem")}
    again = generate_dev_certificates(tmp_path, [n.upper() for n in NAMES], ["::1"])
    assert again == first
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.pem")} == before


def test_new_names_reissue_the_leaf_under_the_same_ca(tmp_path):
    first = generate_dev_certificates(tmp_path, NAMES)
    ca_before = first.ca_file.read_bytes()
    leaf_before = first.cert_file.read_bytes()
    second = generate_dev_certificates(tmp_path, [*NAMES, "other.example.test"], ["192.0.2.7"])
    assert second.ca_file.read_bytes() == ca_before
    assert second.cert_file.read_bytes() != leaf_before
    handshake(
        server_context(second.cert_file, second.key_file),
        client_trusting(first.ca_file),
        "other.example.test",
    )


def test_a_damaged_leaf_is_replaced(tmp_path):
    first = generate_dev_certificates(tmp_path, NAMES)
    first.key_file.write_text("not a key")
    second = generate_dev_certificates(tmp_path, NAMES)
    handshake(
        server_context(second.cert_file, second.key_file),
        client_trusting(second.ca_file),
        "mail.example.test",
    )


def test_a_damaged_ca_replaces_everything(tmp_path):
    first = generate_dev_certificates(tmp_path, NAMES)
    ca_before = first.ca_file.read_bytes()
    first.ca_file.write_text("garbage")
    second = generate_dev_certificates(tmp_path, NAMES)
    assert second.ca_file.read_bytes() not in (ca_before, b"garbage")
    handshake(
        server_context(second.cert_file, second.key_file),
        client_trusting(second.ca_file),
        "mail.example.test",
    )


def test_a_leaf_near_expiry_is_reissued(tmp_path, monkeypatch):
    first = generate_dev_certificates(tmp_path, NAMES)
    leaf = x509.load_pem_x509_certificates(first.cert_file.read_bytes())[0]
    later = leaf.not_valid_after_utc - dt.timedelta(days=1)
    monkeypatch.setattr("reference_server.tls._now", lambda: later)
    second = generate_dev_certificates(tmp_path, NAMES)
    monkeypatch.undo()
    renewed = x509.load_pem_x509_certificates(second.cert_file.read_bytes())[0]
    assert renewed.not_valid_after_utc > leaf.not_valid_after_utc


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="ASCII DNS name"):
        generate_dev_certificates(tmp_path, ["mäil.example.test"])
    with pytest.raises(ValueError):
        generate_dev_certificates(tmp_path, NAMES, ["localhost"])
    with pytest.raises(ValueError, match="at least one"):
        generate_dev_certificates(tmp_path, [], [])


def test_server_context_is_tls_1_2_or_newer(certs):
    ctx = server_context(certs.cert_file, certs.key_file)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.verify_mode == ssl.CERT_NONE


def test_server_context_errors_name_the_files(tmp_path, certs):
    missing = tmp_path / "missing.pem"
    with pytest.raises(TlsError, match="no such file"):
        server_context(missing, certs.key_file)
    other = generate_dev_certificates(tmp_path / "other", NAMES)
    with pytest.raises(TlsError, match="the key must belong to the first certificate") as info:
        server_context(certs.cert_file, other.key_file)
    assert str(certs.cert_file) in str(info.value)


def test_resolve_prefers_configured_files(tmp_path, certs):
    (tmp_path / "server.yaml").write_text(
        f"hostname: mail.example.test\ntls: {{cert_file: '{certs.cert_file}', "
        f"key_file: '{certs.key_file}'}}\n"
    )
    files = resolve_tls_files(load_config(tmp_path / "server.yaml"))
    assert (files.cert_file, files.key_file, files.ca_file) == (
        certs.cert_file,
        certs.key_file,
        None,
    )


def test_resolve_generates_into_data_dir_with_listener_addresses(tmp_path):
    (tmp_path / "server.yaml").write_text(
        "hostname: mx.example.test\ntls: {generate: true}\n"
        "listeners:\n"
        "  mx: {port: 0, host: 192.0.2.1}\n"
        "  any: {kind: mx, port: 0, host: 0.0.0.0}\n"
    )
    config = load_config(tmp_path / "server.yaml")
    files = resolve_tls_files(config)
    assert files.ca_file == tmp_path / "data" / "tls" / "ca.pem"
    assert files.cert_file.parent == tmp_path / "data" / "tls"
    leaf = x509.load_pem_x509_certificates(files.cert_file.read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mx.example.test"]
    assert ipaddress.ip_address("192.0.2.1") in san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("0.0.0.0") not in san.get_values_for_type(x509.IPAddress)


def test_resolve_without_material_says_how_to_fix(tmp_path):
    (tmp_path / "server.yaml").write_text("hostname: h.test\ntls: {generate: true}\n")
    config = load_config(tmp_path / "server.yaml")
    object.__setattr__(config.tls, "generate", False)  # as if the config changed under us
    with pytest.raises(TlsError, match=r"set tls\.generate: true"):
        resolve_tls_files(config)
