"""Message generation (sizes, MIME, ids, seeds) and account partitioning; no sockets."""

from __future__ import annotations

import collections
import email
import email.policy
import random
from pathlib import Path

import pytest

from conformance.targets import Account
from conformance.wire.pop3 import byte_stuff
from loadtest.accounts import (
    AccountPool,
    AccountsError,
    accounts_from_csv,
    partition,
)
from loadtest.corpus import MessageFactory, SizeDistribution, SizeSpecError, parse_size

# -- size specs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "choices"),
    [
        ("4096", ((100.0, 4096),)),
        ("4KB", ((100.0, 4096),)),
        (" 1mb ", ((100.0, 1048576),)),
        ("512b", ((100.0, 512),)),
        ("80%:4KB,15%:64KB,5%:1MB", ((80.0, 4096), (15.0, 65536), (5.0, 1048576))),
        ("50% : 1.5KB , 50%:2K", ((50.0, 1536), (50.0, 2048))),
    ],
)
def test_size_specs(spec, choices):
    assert SizeDistribution.parse(spec).choices == choices


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "message size spec is empty: give a size like 4096"),
        ("4XB", "message size '4XB' is not a size: write a number with an optional unit"),
        ("-5", "is not a size"),
        ("10", "message size '10' (10 bytes) is outside 256..64MB"),
        ("65MB", "outside 256..64MB"),
        ("80%:4KB,15%:64KB", "message size weights add up to 95%, not 100%"),
        ("80:4KB,20%:1KB", "item '80:4KB' is not WEIGHT%:SIZE"),
        ("80%4KB", "item '80%4KB' is not WEIGHT%:SIZE"),
        ("100%:lots", "message size 'lots' is not a size"),
        ("0%:1KB,100%:2KB", "weight must be > 0%"),
    ],
)
def test_bad_size_specs_say_why_in_one_line(spec, message):
    with pytest.raises(SizeSpecError) as info:
        SizeDistribution.parse(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_spec_round_trips_through_str():
    for spec in ("4KB", "80%:4KB,15%:64KB,5%:1MB", "1000"):
        assert str(SizeDistribution.parse(spec)) == spec
    assert parse_size("64KB") == 65536


def test_sizes_are_drawn_with_the_weights():
    dist = SizeDistribution.parse("80%:4KB,15%:64KB,5%:1MB")
    rng = random.Random(1)
    counts = collections.Counter(dist.draw(rng) for _ in range(20000))
    assert set(counts) == {4096, 65536, 1048576}
    assert 0.77 < counts[4096] / 20000 < 0.83
    assert 0.13 < counts[65536] / 20000 < 0.17
    assert 0.04 < counts[1048576] / 20000 < 0.06
    assert dist.mean() == pytest.approx(0.8 * 4096 + 0.15 * 65536 + 0.05 * 1048576)


# -- messages ---------------------------------------------------------------------------


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    assert not msg.defects, msg.defects
    return msg


@pytest.mark.parametrize("size", [256, 1000, 4096, 20000, 32 * 1024, 100_000, 1024 * 1024])
def test_messages_are_about_the_size_drawn(size):
    factory = MessageFactory(str(size), seed=3)
    message = factory.make("a@example.test", ["b@example.test"])
    assert message.size == size
    slack = max(size * 0.05, 400)
    assert abs(len(message.data) - size) <= slack, (len(message.data), size)
    assert message.data.endswith(b"\r\n")
    assert b"\n" not in message.data.replace(b"\r\n", b"")  # CRLF only
    assert max(len(line) for line in message.data.split(b"\r\n")) <= 998  # RFC 5322 §2.1.1


@pytest.mark.parametrize("spec", ["256", "1KB", "4KB", "40KB", "80%:4KB,15%:64KB,5%:1MB"])
def test_messages_need_no_dot_stuffing(spec):
    # what the load users rely on to send them as DataPayload without a scan
    factory = MessageFactory(spec, seed=7, stream="w1")
    for _ in range(40):
        data = factory.make("a@example.test", ["b@example.test", "c@example.test"]).data
        assert byte_stuff(data) == data + b".\r\n"


def test_small_message_is_plain_text():
    message = MessageFactory("4KB", seed=1).make("a@example.test", ["b@example.test"])
    msg = parse(message.data)
    assert not message.multipart
    assert msg.get_content_type() == "text/plain"
    assert msg["Message-ID"] == message.message_id
    assert msg["X-Mailharness-Token"] == message.token
    assert message.message_id == f"<{message.token}@loadtest.mailharness.invalid>"
    assert msg["From"] == "a@example.test" and msg["To"] == "b@example.test"
    assert msg["Date"] is not None


def test_large_message_has_an_attachment_that_decodes():
    factory = MessageFactory("64KB", seed=2, attachment_threshold=32 * 1024)
    message = factory.make("a@example.test", ["b@example.test", "c@example.test"])
    msg = parse(message.data)
    assert message.multipart and msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "application/octet-stream"]
    attachment = parts[1]
    assert attachment.get_filename() == f"{message.token}.bin"
    payload = attachment.get_content()
    assert isinstance(payload, bytes) and len(payload) > 40_000


def test_message_ids_are_unique_and_streams_do_not_collide():
    a = MessageFactory("1KB", seed=5, stream="w0")
    b = MessageFactory("1KB", seed=5, stream="w1")
    ids = [
        f.make("x@example.test", ["y@example.test"]).message_id for f in (a, b) for _ in range(500)
    ]
    assert len(set(ids)) == 1000


def test_same_seed_same_traffic():
    def run(seed: int) -> list[tuple[int, bytes]]:
        f = MessageFactory("50%:1KB,50%:40KB", seed=seed, stream="w3")
        out = []
        for _ in range(20):
            m = f.make("x@example.test", ["y@example.test"])
            body = m.data.split(b"\r\n\r\n", 1)[1]
            out.append((m.size, body))
        return out

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_seed_is_chosen_and_kept_when_not_given():
    f = MessageFactory("1KB")
    assert isinstance(f.seed, int) and f.seed > 0
    assert f.new_token().startswith(f"mh{f.seed:x}-0-")


# -- accounts ---------------------------------------------------------------------------


def accounts(n: int) -> list[Account]:
    return [Account(f"u{i}", f"u{i}@example.test", f"u{i}", "pw") for i in range(n)]


def test_partition_never_shares_a_mailbox():
    every = accounts(10)
    shares = [partition(every, i, 3) for i in range(3)]
    names = [a.name for share in shares for a in share]
    assert sorted(names) == sorted(a.name for a in every)  # each exactly once
    assert [len(s) for s in shares] == [4, 3, 3]


def test_partition_errors():
    with pytest.raises(AccountsError, match=r"2 account\(s\) cannot be split between 3 workers"):
        partition(accounts(2), 0, 3)
    with pytest.raises(AccountsError, match=r"worker index 3 is outside 0\.\.2"):
        partition(accounts(5), 3, 3)
    with pytest.raises(AccountsError, match="at least 1"):
        partition(accounts(5), 0, 0)


def test_pool_leases_exclusively_and_round_robins():
    pool = AccountPool(accounts(2))
    first, second = pool.lease(), pool.lease()
    assert first is not None and second is not None and first is not second
    assert pool.lease() is None
    pool.release(first)
    assert pool.lease() is first
    assert [pool.next().name for _ in range(4)] == ["u0", "u1", "u0", "u1"]
    picked = pool.sample(random.Random(1), 5, exclude=first)
    assert picked == [second]
    with pytest.raises(AccountsError, match="no accounts"):
        AccountPool([])


def test_accounts_csv(tmp_path: Path):
    path = tmp_path / "a.csv"
    path.write_text(
        "Username,password,address,comment\nann,pw1,ann@example.test,x\nbob@example.test,pw2,,\n"
    )
    got = accounts_from_csv(path)
    assert [(a.username, a.password, a.address) for a in got] == [
        ("ann", "pw1", "ann@example.test"),
        ("bob@example.test", "pw2", "bob@example.test"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user,password\nann,pw\n", "a.csv:1: the header row needs columns username, password"),
        ("username,password,address\n,pw,a@x.test\n", "a.csv:2: empty username"),
        ("username,password,address\nann,pw,nope\n", "a.csv:2: address 'nope' of 'ann'"),
        ("username,password,address\nann,p,a@x.test\nann,p,a@x.test\n", "a.csv:3: username 'ann'"),
        ("username,password,address\n", "a.csv: no accounts"),
    ],
)
def test_accounts_csv_errors(tmp_path: Path, text, message):
    path = tmp_path / "a.csv"
    path.write_text(text)
    with pytest.raises(AccountsError) as info:
        accounts_from_csv(path)
    assert message in str(info.value)
