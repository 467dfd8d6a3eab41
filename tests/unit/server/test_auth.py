"""Password hashes, the accounts file, login checks and SASL decoding."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from reference_server import auth
from reference_server.auth import (
    Account,
    Accounts,
    AccountsError,
    decode_b64_text,
    decode_plain,
    hash_password,
    is_password_hash,
    verify_password,
)

HINT = "make one with: python -m reference_server hash-password"


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    return {"alice": hash_password("alice-pw"), "bob": hash_password("bob-pw")}


# -- hashes ----------------------------------------------------------------------------------


def test_hash_format_and_verification(hashes: dict[str, str]) -> None:
    stored = hashes["alice"]
    match = re.fullmatch(r"scrypt\$16384\$8\$1\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)", stored)
    assert match
    assert len(base64.b64decode(match[1])) == 16
    assert verify_password("alice-pw", stored)
    assert not verify_password("alice-PW", stored)
    assert not verify_password("", stored)


def test_every_hash_has_its_own_salt() -> None:
    assert hash_password("same") != hash_password("same")


def test_other_cost_parameters_verify_too() -> None:
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"pw", salt=salt, n=1024, r=4, p=2, dklen=24)
    stored = (
        f"scrypt$1024$4$2${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    )
    assert verify_password("pw", stored)
    assert not verify_password("pw2", stored)


def test_non_ascii_passwords(hashes: dict[str, str]) -> None:
    stored = hash_password("pässwörd ✓")
    assert verify_password("pässwörd ✓", stored)
    assert not verify_password("passwort", stored)
    assert not verify_password("\ud800", stored)  # not encodable: never a match


SALT = base64.b64encode(b"s" * 16).decode()
DIGEST = base64.b64encode(b"d" * 32).decode()


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "alice-pw",
        "scrypt$",
        f"bcrypt$16384$8$1${SALT}${DIGEST}",
        f"scrypt$16384$8$1${SALT}",
        f"scrypt$16383$8$1${SALT}${DIGEST}",  # n not a power of two
        f"scrypt$1$8$1${SALT}${DIGEST}",
        f"scrypt$1048576$8$1${SALT}${DIGEST}",  # 1 GiB of memory: refused
        f"scrypt$16384$0$1${SALT}${DIGEST}",
        f"scrypt$16384$8$99${SALT}${DIGEST}",
        f"scrypt$16384$8$-1${SALT}${DIGEST}",
        f"scrypt$16384$8$1$not base64!${DIGEST}",
        f"scrypt$16384$8$1${SALT}$AAAA",  # digest too short
        f"scrypt$\uff11\uff16\uff13\uff18\uff14$8$1${SALT}${DIGEST}",  # fullwidth digits
    ],
)
def test_unknown_or_unsafe_formats_never_verify(stored: str) -> None:
    assert not is_password_hash(stored)
    assert verify_password("anything", stored) is False


# -- the accounts file -----------------------------------------------------------------------


def write_accounts(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "accounts.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def accounts(tmp_path: Path, hashes: dict[str, str]) -> Accounts:
    return Accounts.load(
        write_accounts(
            tmp_path,
            f"""\
            accounts:
              alice:
                password: "{hashes["alice"]}"
                addresses: [alice@example.test, A.Smith@Example.test]
              bob:
                password: {hashes["bob"]}
                addresses:
                  - bob@example.test
            """,
        )
    )


def test_load_and_authenticate(accounts: Accounts) -> None:
    alice = accounts.authenticate("alice", "alice-pw")
    assert alice == Account(
        "alice",
        ("alice@example.test", "A.Smith@Example.test"),
        alice.password_hash if alice else "",
    )
    assert accounts.authenticate("alice", "bob-pw") is None
    assert accounts.authenticate("Alice", "alice-pw") is None  # user names are exact
    assert accounts.authenticate("nobody", "alice-pw") is None
    assert len(accounts) == 2 and "bob" in accounts and "carol" not in accounts
    assert [a.username for a in accounts] == ["alice", "bob"]
    assert accounts.get("bob") is not None and accounts.get("carol") is None


def test_addresses_compare_case_insensitively(accounts: Accounts) -> None:
    for address in ["alice@example.test", "ALICE@EXAMPLE.TEST", "a.smith@example.TEST"]:
        owner = accounts.owner_of(address)
        assert owner is not None and owner.username == "alice"
    assert accounts.owner_of("carol@example.test") is None
    assert accounts.owner_of("alice") is None
    assert accounts.addresses_of("alice") == ("alice@example.test", "A.Smith@Example.test")
    assert accounts.addresses_of("nobody") == ()


def test_the_hash_stays_out_of_repr(accounts: Accounts) -> None:
    alice = accounts.get("alice")
    assert alice is not None and "scrypt" not in repr(alice)


def test_unknown_users_cost_one_verification_too(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal work, not a timed assertion: a derivation runs whether or not the user exists."""
    calls: list[bytes] = []
    real = auth._derive

    def counting(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
        calls.append(password)
        return real(password, salt, n, r, p, dklen)

    monkeypatch.setattr(auth, "_derive", counting)
    assert accounts.authenticate("nobody", "guess") is None
    assert calls == [b"guess"]
    assert accounts.authenticate("alice", "guess") is None
    assert calls == [b"guess", b"guess"]


def test_authenticate_async_runs_in_another_thread(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    real = auth._derive

    def recording(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
        threads.append(threading.get_ident())
        return real(password, salt, n, r, p, dklen)

    monkeypatch.setattr(auth, "_derive", recording)

    async def main() -> tuple[Account | None, Account | None]:
        return await asyncio.gather(
            accounts.authenticate_async("bob", "bob-pw"),
            accounts.authenticate_async("bob", "wrong"),
        )

    good, bad = asyncio.run(main())
    assert good is not None and good.username == "bob" and bad is None
    assert threads and threading.get_ident() not in threads


# (name, file text with {alice}/{bob} hash placeholders, expected one-line error)
ERRORS = [
    (
        "plain-text-password",
        """\
        accounts:
          alice:
            password: hunter2
            addresses: [alice@example.test]
        """,
        f"accounts.yaml:3: account 'alice': password is not a hash (plain text is refused); {HINT}",
    ),
    (
        "missing-password",
        """\
        accounts:
          alice:
            addresses: [alice@example.test]
        """,
        "accounts.yaml:2: account 'alice': missing field 'password'",
    ),
    (
        "missing-addresses",
        """\
        accounts:
          alice:
            password: "{alice}"
        """,
        "accounts.yaml:2: account 'alice': missing field 'addresses'",
    ),
    (
        "empty-password",
        """\
        accounts:
          alice:
            password:
            addresses: [alice@example.test]
        """,
        f"accounts.yaml:3: account 'alice': password must be a hash string; {HINT}",
    ),
    (
        "address-in-two-accounts",
        """\
        accounts:
          alice:
            password: "{alice}"
            addresses: [alice@example.test, shared@example.test]
          bob:
            password: "{bob}"
            addresses: [bob@example.test, Shared@Example.Test]
        """,
        "accounts.yaml:7: account 'bob': address 'Shared@Example.Test' already belongs "
        "to account 'alice'",
    ),
    (
        "address-twice-in-one-account",
        """\
        accounts:
          alice:
            password: "{alice}"
            addresses: [alice@example.test, ALICE@example.test]
        """,
        "accounts.yaml:4: account 'alice': address 'ALICE@example.test' is listed twice",
    ),
    (
        "account-twice",
        """\
        accounts:
          alice:
            password: "{alice}"
            addresses: [alice@example.test]
          alice:
            password: "{alice}"
            addresses: [alice2@example.test]
        """,
        "accounts.yaml:5: account 'alice' is defined twice",
    ),
    (
        "unknown-field",
        """\
        accounts:
          alice:
            password: "{alice}"
            adresses: [alice@example.test]
        """,
        "accounts.yaml:4: account 'alice': unknown field 'adresses' (fields: password, addresses)",
    ),
    (
        "addresses-not-a-list",
        """\
        accounts:
          alice:
            password: "{alice}"
            addresses: alice@example.test
        """,
        "accounts.yaml:4: account 'alice': addresses must be a list, like [alice@example.test]",
    ),
    (
        "bad-address",
        """\
        accounts:
          alice:
            password: "{alice}"
            addresses: [alice]
        """,
        "accounts.yaml:4: account 'alice': address 'alice' is not of the form local-part@domain",
    ),
    (
        "unsafe-account-name",
        """\
        accounts:
          ../etc:
            password: "{alice}"
            addresses: [alice@example.test]
        """,
        "accounts.yaml:2: account '../etc': the account name must be usable as a mailbox "
        "directory name (no '/', '..', spaces or control characters, no leading '.', "
        "at most 255 bytes)",
    ),
    (
        "unknown-top-key",
        """\
        acounts:
          alice: {{}}
        """,
        "accounts.yaml:1: unknown key 'acounts' (the file holds only 'accounts:')",
    ),
    (
        "accounts-not-a-mapping",
        """\
        accounts: [alice]
        """,
        "accounts.yaml:1: 'accounts' must map account names to their settings",
    ),
    (
        "account-not-a-mapping",
        """\
        accounts:
          alice: secret
        """,
        "accounts.yaml:2: account 'alice' must be a mapping (key: value lines)",
    ),
    ("empty-file", "", "accounts.yaml: the file is empty; it needs an 'accounts:' mapping"),
    ("top-level-list", "- alice\n", "accounts.yaml:1: the top level must be a mapping"),
    (
        "yaml-syntax",
        """\
        accounts:
          alice: [unclosed
        """,
        "accounts.yaml:3: not valid YAML: expected ',' or ']', but got '<stream end>'",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_accounts_file_errors_are_one_line(
    tmp_path: Path, hashes: dict[str, str], text: str, expected: str
) -> None:
    path = write_accounts(tmp_path, text.format(**hashes))
    with pytest.raises(AccountsError) as info:
        Accounts.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert message[len(str(tmp_path)) + 1 :].startswith(expected), message


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AccountsError, match=r"nope\.yaml: cannot read the accounts file: No such"):
        Accounts.load(tmp_path / "nope.yaml")


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_bytes(b"accounts:\n  \xff: {}\n")
    with pytest.raises(AccountsError, match="not UTF-8"):
        Accounts.load(path)


def test_an_empty_accounts_mapping_is_allowed(tmp_path: Path) -> None:
    assert len(Accounts.load(write_accounts(tmp_path, "accounts: {}\n"))) == 0


CONSTRUCTOR_ERRORS: list[tuple[str, Callable[[str], list[Account]], str]] = [
    (
        "plain-text",
        lambda h: [Account("alice", ("alice@example.test",), "hunter2")],
        "account 'alice': password is not a hash",
    ),
    (
        "shared-address",
        lambda h: [
            Account("alice", ("alice@example.test",), h),
            Account("bob", ("ALICE@example.test",), h),
        ],
        "account 'bob': address 'ALICE@example.test' already belongs to account 'alice'",
    ),
    (
        "duplicate-name",
        lambda h: [Account("alice", (), h), Account("alice", (), h)],
        "account 'alice': defined twice",
    ),
    (
        "bad-name",
        lambda h: [Account("a b", (), h)],
        "account 'a b': the account name must be usable",
    ),
]


@pytest.mark.parametrize(
    ("entries", "expected"),
    [e[1:] for e in CONSTRUCTOR_ERRORS],
    ids=[e[0] for e in CONSTRUCTOR_ERRORS],
)
def test_accounts_constructor_checks_too(
    hashes: dict[str, str], entries: Callable[[str], list[Account]], expected: str
) -> None:
    with pytest.raises(AccountsError, match=re.escape(expected)):
        Accounts(entries(hashes["alice"]))


def test_accounts_from_code(hashes: dict[str, str]) -> None:
    accounts = Accounts([Account("carol", ("carol@example.test",), hashes["alice"])])
    assert accounts.authenticate("carol", "alice-pw") is not None
    owner = accounts.owner_of("Carol@Example.Test")
    assert owner is not None and owner.username == "carol"


# -- SASL ------------------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\x00alice\x00alice-pw", ("", "alice", "alice-pw")),
        (b"admin\x00alice\x00pw", ("admin", "alice", "pw")),
        ("\x00jörg\x00pässwörd".encode(), ("", "jörg", "pässwörd")),
        (b"\x00alice\x00pass word with spaces", ("", "alice", "pass word with spaces")),
    ],
)
def test_decode_plain(raw: bytes, expected: tuple[str, str, str]) -> None:
    assert decode_plain(b64(raw)) == expected


@pytest.mark.parametrize(
    ("b64_text", "reason"),
    [
        ("!!!!", "not valid base64"),
        (b64(b"alice\x00pw"), "it has 1 NUL separators, not 2"),
        (b64(b"a\x00b\x00c\x00d"), "it has 3 NUL separators, not 2"),
        (b64(b""), "it has 0 NUL separators, not 2"),
        (b64(b"\x00\x00pw"), "empty authentication identity"),
        (b64(b"\x00alice\x00"), "empty password"),
        (b64(b"\x00al\xffice\x00pw"), "authentication identity is not valid UTF-8"),
        (b64(b"\x00alice\x00\xc3"), "password is not valid UTF-8"),
        (b64(b"\xff\x00alice\x00pw"), "authorization identity is not valid UTF-8"),
        ("AGFsaWNlAHB3ZA", "not valid base64"),  # padding missing
        ("AGFs aWNl", "not valid base64"),
        ("ÄGFsaWNl", "not valid base64"),
    ],
)
def test_decode_plain_refuses(b64_text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        decode_plain(b64_text)


@pytest.mark.parametrize(
    ("b64_text", "expected"),
    [(b64(b"alice"), "alice"), (b64("jörg".encode()), "jörg"), ("", "")],
)
def test_decode_b64_text(b64_text: str, expected: str) -> None:
    assert decode_b64_text(b64_text) == expected


@pytest.mark.parametrize(
    ("b64_text", "reason"),
    [
        ("YWxpY2U", "not valid base64"),
        ("*", "not valid base64"),
        (b64(b"al\xffice"), "not valid UTF-8"),
        (b64(b"al\x00ice"), "contains NUL"),
    ],
)
def test_decode_b64_text_refuses(b64_text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        decode_b64_text(b64_text)


def test_a_verified_password_is_remembered_but_never_a_wrong_one(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = auth.verify_password

    def counting(password: str, stored: str) -> bool:
        calls.append(password)
        return real(password, stored)

    monkeypatch.setattr(auth, "verify_password", counting)
    assert accounts.authenticate("alice", "alice-pw") is not None
    assert accounts.authenticate("alice", "alice-pw") is not None
    assert calls == ["alice-pw"]  # the second login did not run scrypt
    assert accounts.authenticate("alice", "bob-pw") is None
    assert accounts.authenticate("alice", "bob-pw") is None
    assert calls == ["alice-pw", "bob-pw", "bob-pw"]  # failures: always


def test_the_remembered_password_expires(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert accounts.authenticate("alice", "alice-pw") is not None
    monkeypatch.setattr(Accounts, "VERIFIED_TTL", -1.0)
    accounts._verified.clear()
    assert accounts.authenticate("alice", "alice-pw") is not None
    calls: list[str] = []
    real = auth.verify_password

    def counting(password: str, stored: str) -> bool:
        calls.append(password)
        return real(password, stored)

    monkeypatch.setattr(auth, "verify_password", counting)
    assert accounts.authenticate("alice", "alice-pw") is not None
    assert calls == ["alice-pw"]  # expired at once: verified again
