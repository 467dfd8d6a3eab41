"""Certificates and TLS contexts for the reference server.

A deployment gives its own certificate chain and key (``tls.cert_file`` and
``tls.key_file``). For development, :func:`generate_dev_certificates` makes
a private CA and a server certificate signed by it, so clients can verify
the server properly (``ca_file`` in a target) instead of turning
verification off. The directory holds:

- ``ca.pem`` and ``ca-key.pem``: the development CA (trust ``ca.pem``),
- ``cert.pem``: the server certificate followed by the CA (the chain),
- ``key.pem``: the server key.

Keys are written with mode 0o600. Existing files are reused while they are
intact, unexpired and cover the requested names; a server certificate that
no longer fits is re-issued under the same CA, so clients that already
trust ``ca.pem`` keep working. Keys are ECDSA P-256 (fast to generate).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import secrets
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import ServerConfig, TlsMode

__all__ = [
    "DevCertificates",
    "TlsError",
    "TlsFiles",
    "generate_dev_certificates",
    "resolve_tls_files",
    "server_context",
    "server_context_for",
]

try:  # POSIX: serialise two processes generating into one directory
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

_CA_DAYS = 3650
_LEAF_DAYS = 397  # the longest lifetime browsers accept (CA/Browser Forum), habits carry over
_RENEW_BEFORE = dt.timedelta(days=7)  # re-issue certificates this close to expiry
_BACKDATE = dt.timedelta(hours=1)  # tolerate clocks a little behind ours
_ORG = "mailharness development"


class TlsError(Exception):
    """TLS material that cannot be used; the message says which file and how to fix it."""


@dataclass(frozen=True)
class DevCertificates:
    """Files written by :func:`generate_dev_certificates`."""

    ca_file: Path  # the CA certificate clients should trust
    cert_file: Path  # server certificate + CA, PEM
    key_file: Path  # server key, PEM (PKCS#8), mode 0o600


@dataclass(frozen=True)
class TlsFiles:
    """The certificate chain and key a server uses, and the CA to trust when known."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # set for generated development certificates only


def server_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """A server-side TLS context: TLS 1.2 or newer, the chain and key loaded.

    Python's default cipher list (forward secrecy, AEAD first, no RC4/3DES/NULL)
    is kept; compression and renegotiation are off; no client certificates
    are requested.

    Raises:
        TlsError: a file is missing, is not PEM, or the key does not match.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8996 retires TLS 1.0 and 1.1
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    for path in (cert_file, key_file):
        if not Path(path).is_file():
            raise TlsError(f"cannot load TLS material: no such file '{path}'")
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as exc:
        raise TlsError(
            f"cannot load certificate chain '{cert_file}' with key '{key_file}': "
            f"{exc.reason or exc}; both must be PEM and the key must belong to the "
            "first certificate"
        ) from None
    return ctx


def resolve_tls_files(config: ServerConfig) -> TlsFiles:
    """The certificate files the configured server should use.

    The configured ``cert_file`` and ``key_file`` when both exist; otherwise, with
    ``tls.generate``, development certificates in ``<data_dir>/tls/`` for the
    server's ``hostname`` and the loopback and listener IP addresses (generated
    now if missing or stale).

    Raises:
        TlsError: no certificate is configured and ``generate`` is off.
    """
    tls = config.tls
    if tls.cert_file.is_file() and tls.key_file.is_file():
        return TlsFiles(cert_file=tls.cert_file, key_file=tls.key_file)
    if not tls.generate:
        raise TlsError(
            f"no certificate: '{tls.cert_file}' or '{tls.key_file}' is missing; "
            "give both in tls.cert_file and tls.key_file, or set tls.generate: true"
        )
    ips = ["127.0.0.1", "::1"]
    for listener in config.listeners.values():
        offers_tls = listener.tls is not TlsMode.NONE
        if offers_tls and listener.host not in ips and not _unspecified(listener.host):
            ips.append(listener.host)
    dev = generate_dev_certificates(config.tls_dir, [config.hostname], ips)
    return TlsFiles(cert_file=dev.cert_file, key_file=dev.key_file, ca_file=dev.ca_file)


def _unspecified(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


def server_context_for(config: ServerConfig) -> ssl.SSLContext:
    """:func:`server_context` for the files :func:`resolve_tls_files` picks."""
    files = resolve_tls_files(config)
    return server_context(files.cert_file, files.key_file)


def generate_dev_certificates(
    directory: Path,
    hostnames: Sequence[str],
    ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
) -> DevCertificates:
    """Make (or reuse) a development CA and a server certificate signed by it.

    Args:
        directory: where the files go; created if missing.
        hostnames: DNS names the certificate must cover (ASCII; IDNs as A-labels).
        ip_addresses: IP literals the certificate must cover.

    Returns:
        The paths of ``ca.pem``, ``cert.pem`` (chain) and ``key.pem``.

    Raises:
        ValueError: a name is not ASCII or an address is not an IP literal, or
            there is neither.
    """
    names = [_check_name(name) for name in hostnames]
    ips = [ipaddress.ip_address(ip) for ip in ip_addresses]
    if not names and not ips:
        raise ValueError("a certificate needs at least one hostname or IP address")
    directory.mkdir(parents=True, exist_ok=True)
    files = DevCertificates(
        ca_file=directory / "ca.pem",
        cert_file=directory / "cert.pem",
        key_file=directory / "key.pem",
    )
    ca_key_file = directory / "ca-key.pem"
    with _locked(directory / ".lock"):
        now = _now()
        ca = _load_ca(files.ca_file, ca_key_file, now)
        if ca is not None and _leaf_fits(files, ca[0], names, ips, now):
            _private(files.key_file)
            return files
        if ca is None:
            ca = _make_ca(now)
            _write(ca_key_file, _key_pem(ca[1]), 0o600)
            _write(files.ca_file, ca[0].public_bytes(serialization.Encoding.PEM), 0o644)
        ca_cert, ca_key = ca
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = _make_leaf(ca_cert, ca_key, leaf_key, names, ips, now)
        chain = leaf.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(
            serialization.Encoding.PEM
        )
        _write(files.key_file, _key_pem(leaf_key), 0o600)
        _write(files.cert_file, chain, 0o644)
    return files


# --- building certificates -------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_name(name: str) -> str:
    if not name or not name.isascii() or any(c.isspace() for c in name):
        raise ValueError(f"hostname {name!r}: expected an ASCII DNS name (IDNs as xn-- A-labels)")
    return name.lower().rstrip(".")


def _make_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    # a unique subject per CA, so two development CAs are never mistaken for each other
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{_ORG} CA {secrets.token_hex(4)}"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    names: Sequence[str],
    ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    now: dt.datetime,
) -> x509.Certificate:
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ip) for ip in ips]
    common = names[0] if names else str(ips[0])
    public = key.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
                    x509.NameAttribute(NameOID.COMMON_NAME, common[:64]),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + dt.timedelta(days=_LEAF_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


# --- reusing what is there -------------------------------------------------------------------


def _fresh(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now and now + _RENEW_BEFORE < cert.not_valid_after_utc


def _same_key(cert: x509.Certificate, key: object) -> bool:
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _load_ca(
    ca_file: Path, ca_key_file: Path, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The CA in the directory, if it is intact, matches its key and is not about to expire."""
    try:
        cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
        key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not basic.ca:
        return None
    return (cert, key) if _fresh(cert, now) and _same_key(cert, key) else None


def _leaf_fits(
    files: DevCertificates,
    ca: x509.Certificate,
    names: Sequence[str],
    ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    now: dt.datetime,
) -> bool:
    try:
        chain = x509.load_pem_x509_certificates(files.cert_file.read_bytes())
        key = serialization.load_pem_private_key(files.key_file.read_bytes(), password=None)
        leaf = chain[0]
        leaf.verify_directly_issued_by(ca)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    have_names = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    return (
        _fresh(leaf, now)
        and _same_key(leaf, key)
        and set(names) <= have_names
        and set(ips) <= have_ips
    )


# --- files ------------------------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically: a temporary file with the final mode from the start, then rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # the umask may have narrowed or widened it
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _private(path: Path) -> None:
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    with lock_file.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
