"""The durability contract: 250 after the final dot only once the message is stored; a
storage failure is 451 4.3.0 (RFC 5321 §4.2.5: never a 250 for a message not kept)."""

from __future__ import annotations

import shutil
import smtplib

BODY = b"Subject: durable\r\n\r\nkeep me\r\n"


def _break_new_dir(new_dir):
    """Replace ``new/`` with a regular file (chmod would not stop root)."""
    if new_dir.exists():
        shutil.rmtree(new_dir)
    new_dir.parent.mkdir(parents=True, exist_ok=True)
    new_dir.write_bytes(b"not a directory\n")


def _restore_new_dir(new_dir):
    new_dir.unlink()
    new_dir.mkdir(mode=0o700)


def test_storage_failure_is_451_never_250_and_delivery_recovers(mail_server):
    client = mail_server.raw()
    client.ehlo()
    assert client.send_message(BODY).code == 250  # the Maildir exists now
    new_dir = mail_server.mailbox_new("alice")
    _break_new_dir(new_dir)

    reply = client.send_message(BODY)
    assert reply.code == 451, reply
    assert reply.enhanced == "4.3.0"
    # nothing half-written is left behind in tmp/
    assert list((new_dir.parent / "tmp").iterdir()) == []

    # the same session goes on; after the repair, delivery works again
    _restore_new_dir(new_dir)
    assert client.send_message(BODY).code == 250
    (stored,) = mail_server.messages("alice")
    assert mail_server.split_trace(stored)[1] == BODY


def test_storage_failure_before_the_first_delivery(mail_server):
    # the Maildir does not exist yet and cannot be created
    new_dir = mail_server.mailbox_new("bob")
    _break_new_dir(new_dir)
    client = mail_server.raw()
    client.ehlo()
    reply = client.send_message(BODY, recipients=["bob@example.test"])
    assert reply.code == 451
    _restore_new_dir(new_dir)
    (new_dir.parent / "cur").mkdir(exist_ok=True)
    (new_dir.parent / "tmp").mkdir(exist_ok=True)
    assert client.send_message(BODY, recipients=["bob@example.test"]).code == 250
    assert len(mail_server.messages("bob")) == 1


def test_one_failing_mailbox_fails_the_whole_message(mail_server):
    client = mail_server.raw()
    client.ehlo()
    both = ["alice@example.test", "bob@example.test"]
    assert client.send_message(BODY, recipients=both).code == 250
    _break_new_dir(mail_server.mailbox_new("bob"))
    reply = client.send_message(BODY, recipients=both)
    assert reply.code == 451
    # alice's copy of the refused message was taken back: the client will retry
    assert len(mail_server.messages("alice")) == 1


def test_storage_failure_with_smtplib_is_a_transient_error(mail_server):
    client = mail_server.smtp()
    client.sendmail("s@remote.test", ["alice@example.test"], BODY)
    _break_new_dir(mail_server.mailbox_new("alice"))
    try:
        client.sendmail("s@remote.test", ["alice@example.test"], BODY)
    except smtplib.SMTPDataError as exc:
        assert exc.smtp_code == 451
    else:
        raise AssertionError("a failed delivery was acknowledged")


def test_spool_failure_after_auth_is_451(mail_server):
    client = mail_server.submission("alice")
    spool = mail_server.config.spool_dir
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.write_bytes(b"not a directory\n")
    try:
        client.sendmail("alice@example.test", ["friend@remote.test"], BODY)
    except smtplib.SMTPDataError as exc:
        assert exc.smtp_code == 451
    else:
        raise AssertionError("a message that could not be spooled was acknowledged")
    spool.unlink()
    client.rset()
    client.sendmail("alice@example.test", ["friend@remote.test"], BODY)
    assert len(mail_server.server.spool.list()) == 1
