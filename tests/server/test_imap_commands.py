"""IMAP commands on the reference server, one by one (RFC 3501, RFC 9051 and the
extensions the server announces: LITERAL+ RFC 7888, SASL-IR RFC 4959, ID RFC 2971,
ENABLE RFC 5161, NAMESPACE RFC 2342, UIDPLUS RFC 4315, MOVE RFC 6851, UNSELECT
RFC 3691, CHILDREN RFC 3348, SPECIAL-USE RFC 6154, APPENDLIMIT RFC 7889,
ESEARCH RFC 4731).

Black-box over real sockets: the raw client in imap_helpers reads every response
strictly (CRLF, literals, quoting, tags), and imaplib and imapclient check that
stock clients get along. Most tests share one server and work in mailboxes of
their own; tests that need a whole account to themselves (LIST of everything,
INBOX, failed logins, other limits) start their own server.
"""

from __future__ import annotations

import datetime
import imaplib
import os
import re
import time
from collections.abc import Iterator

import imapclient  # type: ignore[import-untyped]
import pytest
from imap_helpers import (
    TLS_MODES,
    Literal,
    RawImap,
    Result,
    Token,
    append,
    as_int,
    capabilities,
    end_sessions,
    flag_set,
    imapclient_session,
    message,
    parse_internaldate,
    plain,
    quoted,
    raw_imap,
    shared_imap_server,
    tls_imap,
    unique_name,
)


@pytest.fixture(scope="module")
def shared(dev_setup, tmp_path_factory):
    yield from shared_imap_server(dev_setup, tmp_path_factory.mktemp("imap-commands"))


@pytest.fixture
def srv(shared):
    """The module's server; the test's sessions are closed (and gone) afterwards."""
    end_sessions(shared)
    yield shared
    end_sessions(shared)


@pytest.fixture
def alice(srv) -> RawImap:
    """A raw session of alice over implicit TLS, authenticated."""
    return tls_imap(srv, "imaps", "alice")


@pytest.fixture
def box(alice) -> str:
    """A new, empty mailbox of alice's that only this test uses."""
    name = unique_name()
    result = alice.cmd(f"CREATE {quoted(name)}")
    assert result.ok, result.raw
    return name


@pytest.fixture(scope="class")
def own_session(shared) -> Iterator[RawImap]:
    """One authenticated session of alice for a whole class of tests (a login costs ~40 ms).

    Not tracked by the server fixture: the class closes it when its last test is done.
    Tests that use it must not use ``srv`` (whose teardown waits for every session to end).
    """
    end_sessions(shared)
    host, port = shared.addr("imaps")
    client = RawImap(host, port)
    try:
        client.starttls(shared.tls_context())
        client.read_greeting()
        assert client.login("alice", shared.passwords["alice"]).ok
        yield client
    finally:
        client.close()
        end_sessions(shared)


SPEC_CAPABILITIES = {
    "IMAP4REV1",
    "LITERAL+",
    "SASL-IR",
    "ID",
    "ENABLE",
    "IDLE",
    "NAMESPACE",
    "UIDPLUS",
    "MOVE",
    "UNSELECT",
    "CHILDREN",
    "SPECIAL-USE",
}
SYSTEM_FLAGS = {"\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"}


def select(client: RawImap, name: str, *, examine: bool = False) -> Result:
    result = client.cmd(f"{'EXAMINE' if examine else 'SELECT'} {quoted(name)}")
    assert result.ok, result.raw
    return result


def fill(client: RawImap, name: str, count: int, flags: str = "") -> list[int]:
    """Append ``count`` small messages; their UIDs."""
    return [append(client, name, message(f"message {i + 1}"), flags) for i in range(count)]


def status(client: RawImap, name: str, items: str = "MESSAGES") -> dict[str, int]:
    result = client.cmd(f"STATUS {quoted(name)} ({items})")
    assert result.ok, result.raw
    resp = result.one("STATUS")
    assert len(resp.data) == 3, resp.raw
    values = resp.data[2]
    assert isinstance(values, list) and len(values) % 2 == 0, resp.raw
    return {str(k).upper(): as_int(v) for k, v in zip(values[::2], values[1::2], strict=True)}


def bytes_of(value: Token) -> bytes:
    assert isinstance(value, bytes), value
    return value


def assert_bad(client: RawImap, line: str | bytes) -> Result:
    """``line`` gets a tagged BAD with a reason, and the session goes on."""
    result = client.cmd(line)
    assert result.status == "BAD", (line, result.raw)
    assert result.text.strip(), f"BAD without a reason: {result.raw!r}"
    assert client.cmd("NOOP").ok
    return result


# -- greeting and CAPABILITY ---------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["imap", "imaps"])
def test_greeting_is_ok_with_a_capability_code(srv, listener):
    client = raw_imap(srv, listener, greeting=False)
    greeting = client.read_greeting()
    assert greeting.status == "OK", greeting.raw
    assert greeting.raw.count(b"\r\n") == 1
    caps = capabilities(greeting)
    assert "IMAP4REV1" in caps
    if listener == "imap":  # RFC 9051 §6.2.1, §6.2.3: STARTTLS offered, no login in clear
        assert {"STARTTLS", "LOGINDISABLED"} <= caps
        assert not any(c.startswith("AUTH=") for c in caps)
    else:
        assert "AUTH=PLAIN" in caps
        assert not caps & {"STARTTLS", "LOGINDISABLED"}
    # the code tells the same as the command (RFC 9051 §7.1: CAPABILITY response code)
    assert capabilities(client.cmd("CAPABILITY")) == caps


def test_capability_before_and_after_starttls_and_login(srv):
    client = raw_imap(srv, "imap")
    before = client.cmd("CAPABILITY")
    assert before.ok
    assert len(before.of("CAPABILITY")) == 1
    caps = capabilities(before)
    assert caps >= SPEC_CAPABILITIES, SPEC_CAPABILITIES - caps
    assert {"STARTTLS", "LOGINDISABLED"} <= caps and "AUTH=PLAIN" not in caps
    limits = [c for c in caps if c.startswith("APPENDLIMIT=")]
    assert len(limits) == 1 and limits[0].split("=")[1].isdigit(), caps

    assert client.cmd("STARTTLS").ok
    client.starttls(srv.tls_context())
    inside = capabilities(client.cmd("CAPABILITY"))
    # RFC 9051 §6.2.1: the client must discard what it knew; the server offers login now
    assert "AUTH=PLAIN" in inside
    assert not inside & {"STARTTLS", "LOGINDISABLED"}

    login = client.login("alice", srv.passwords["alice"])
    assert login.ok, login.raw
    after = capabilities(client.cmd("CAPABILITY"))
    assert after >= SPEC_CAPABILITIES
    assert not any(c.startswith("AUTH=") or c in ("STARTTLS", "LOGINDISABLED") for c in after)
    if login.code is not None:  # a CAPABILITY code on the completion must be the truth
        assert capabilities(login.tagged) == after


def test_imaplib_sees_the_capabilities(srv):
    client = srv.imap()  # after STARTTLS
    assert "AUTH=PLAIN" in client.capabilities
    assert "IMAP4REV1" in client.capabilities
    typ, _ = client.login("alice", srv.passwords["alice"])
    assert typ == "OK"
    typ, data = client.capability()
    assert typ == "OK"
    assert {"UIDPLUS", "MOVE", "IDLE"} <= set(data[0].decode().upper().split())


# -- STARTTLS ------------------------------------------------------------------------------------


def test_starttls_discards_commands_pipelined_after_it(srv):
    client = raw_imap(srv, "imap")
    client.send(b"a STARTTLS\r\nb CAPABILITY\r\n")
    result = client.read_result("a")
    assert result.ok and not result.untagged, result.raw
    client.starttls(srv.tls_context())  # asserts nothing followed the completion in clear
    noop = client.cmd("NOOP", tag="c")
    # RFC 9051 §6.2.1 (CVE-2011-0411): "b" must never run, neither before nor after
    assert noop.ok and not noop.untagged, noop.raw
    assert b"CAPABILITY" not in noop.raw
    client.assert_silent(0.2)


@pytest.mark.parametrize("where", ["inside STARTTLS", "imaps", "authenticated"])
def test_starttls_where_it_is_not_offered_is_refused(srv, where):
    if where == "imaps":
        client = raw_imap(srv, "imaps")
    else:
        client = tls_imap(srv, "starttls", "alice" if where == "authenticated" else None)
    result = client.cmd("STARTTLS")
    assert result.status in ("BAD", "NO"), result.raw
    assert client.cmd("NOOP").ok  # and the TLS session goes on


def test_login_before_starttls_is_refused(srv):
    client = raw_imap(srv, "imap")
    result = client.login("alice", srv.passwords["alice"])
    # RFC 9051 §6.2.3: LOGINDISABLED; the server must not accept the password in clear
    assert result.status == "NO", result.raw
    assert client.cmd("AUTHENTICATE PLAIN " + plain("alice", srv.passwords["alice"])).status in (
        "NO",
        "BAD",
    )
    assert client.cmd('SELECT "INBOX"').status == "BAD"  # still not authenticated


# -- LOGIN and AUTHENTICATE ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", TLS_MODES)
def test_login_with_quoted_strings_and_with_a_literal(srv, mode):
    client = tls_imap(srv, mode)
    result = client.command('LOGIN "alice" ', Literal(srv.passwords["alice"].encode()))
    assert result.ok, result.raw
    assert len(result.continuations) == 1
    assert client.cmd('SELECT "INBOX"').ok


def test_authenticate_plain_with_an_initial_response(srv):
    client = tls_imap(srv, "imaps")
    result = client.cmd("AUTHENTICATE PLAIN " + plain("alice", srv.passwords["alice"]))
    assert result.ok, result.raw  # RFC 4959: no continuation needed
    assert not result.continuations
    assert client.cmd("NAMESPACE").ok


def test_authenticate_plain_after_an_empty_continuation(srv):
    client = tls_imap(srv, "imaps")
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    challenge = client.read_response()
    # RFC 4616 §2: PLAIN starts with the client, so the challenge is empty ("+ ")
    assert challenge.tag == "+" and challenge.text == "", challenge.raw
    client.send(plain("alice", srv.passwords["alice"]).encode() + b"\r\n")
    result = client.read_result("a")
    assert result.ok, result.raw


def test_authenticate_cancelled_with_a_star_is_bad(srv):
    client = tls_imap(srv, "imaps")
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    assert client.read_response().tag == "+"
    client.send(b"*\r\n")
    result = client.read_result("a")
    assert result.status == "BAD", result.raw  # RFC 9051 §6.2.2
    assert client.login("alice", srv.passwords["alice"]).ok


def test_authenticate_with_bad_base64_is_bad(srv):
    client = tls_imap(srv, "imaps")
    result = client.cmd("AUTHENTICATE PLAIN !!!notbase64!!!")
    assert result.status == "BAD", result.raw  # RFC 9051 §6.2.2
    assert client.login("alice", srv.passwords["alice"]).ok


def test_authenticate_with_an_unknown_mechanism_is_no(srv):
    client = tls_imap(srv, "imaps")
    result = client.cmd("AUTHENTICATE X-UNKNOWN-MECH")
    assert result.status == "NO", result.raw  # RFC 9051 §6.2.2: "SHOULD ... tagged NO"


def test_authenticate_as_another_user_is_refused(srv):
    client = tls_imap(srv, "imaps")
    result = client.cmd("AUTHENTICATE PLAIN " + plain("alice", srv.passwords["alice"], "bob"))
    assert result.status == "NO", result.raw
    assert client.cmd('SELECT "INBOX"').status == "BAD"


@pytest.fixture
def fast_failures(start_server):
    """A server of its own: failures count per client address."""
    return start_server(limits={"auth_failure_delay": 0.001}, imap={"max_auth_failures": 3})


@pytest.mark.parametrize("how", ["LOGIN", "AUTHENTICATE"])
def test_wrong_password_is_no_authenticationfailed(fast_failures, how):
    client = tls_imap(fast_failures, "imaps")
    if how == "LOGIN":
        result = client.login("alice", "not-the-password")
    else:
        result = client.cmd("AUTHENTICATE PLAIN " + plain("alice", "not-the-password"))
    assert result.status == "NO", result.raw
    assert result.code_name == "AUTHENTICATIONFAILED", result.raw  # RFC 5530 §3
    assert client.cmd('SELECT "INBOX"').status == "BAD"
    assert client.login("alice", fast_failures.passwords["alice"]).ok


def test_too_many_failures_end_the_session_with_bye(fast_failures):
    client = tls_imap(fast_failures, "imaps")
    for _ in range(2):
        assert client.login("alice", "wrong").status == "NO"
    client.send(b"z LOGIN alice wrong\r\n")
    rest = client.read_all_until_close()
    assert re.search(rb"^\* BYE ", rest, re.MULTILINE), rest
    assert not re.search(rb"^z OK", rest, re.MULTILINE), rest


def test_imaplib_and_imapclient_log_in(srv):
    client = srv.imaps()
    typ, _ = client.authenticate("PLAIN", lambda _: f"\0alice\0{srv.passwords['alice']}".encode())
    assert typ == "OK"
    other = imapclient_session(srv, None)
    other.plain_login("bob", srv.passwords["bob"])
    assert other.folder_exists("INBOX")
    third = imapclient_session(srv, "alice", mode="starttls")
    assert third.select_folder("INBOX")[b"UIDVALIDITY"] > 0


# -- ID, ENABLE, NAMESPACE -----------------------------------------------------------------------


@pytest.mark.parametrize("argument", ['("name" "test-client" "version" "1")', "NIL"])
def test_id_in_any_state(srv, argument):
    client = tls_imap(srv, "imaps")
    for _ in range(2):
        result = client.cmd(f"ID {argument}")
        assert result.ok, result.raw
        resp = result.one("ID")  # RFC 2971 §3.1: one ID response
        assert len(resp.data) == 2, resp.raw
        fields = resp.data[1]
        assert fields is None or (
            isinstance(fields, list)
            and len(fields) % 2 == 0
            and all(isinstance(x, bytes) for x in fields[::2])
        ), resp.raw
        client.login("alice", srv.passwords["alice"])


def test_imapclient_id(srv):
    client = imapclient_session(srv)
    info = client.id_({"name": "imapclient"})
    # RFC 2971 §3.2: the server's field-value pairs (or NIL)
    assert info is None or (len(info) == 1 and len(info[0]) % 2 == 0), info


def test_enable_lists_only_what_it_enabled(alice, box):
    unknown = alice.cmd("ENABLE X-NO-SUCH-EXTENSION")
    assert unknown.ok, unknown.raw
    assert [r.data for r in unknown.of("ENABLED")] == [("ENABLED",)]  # RFC 5161 §3.1
    caps = capabilities(alice.cmd("CAPABILITY"))
    result = alice.cmd("ENABLE CONDSTORE")
    assert result.ok, result.raw
    enabled = {str(w).upper() for r in result.of("ENABLED") for w in r.data[1:]}
    if "CONDSTORE" in caps:
        # RFC 7162 §3.1: a server announcing CONDSTORE enables it on ENABLE CONDSTORE
        assert enabled == {"CONDSTORE"}, result.raw
        sel = select(alice, box)
        assert "HIGHESTMODSEQ" in sel.codes(), sel.raw  # RFC 7162 §3.1.2.1
    else:
        assert enabled == set()


def test_enable_before_login_is_bad(srv):
    client = tls_imap(srv, "imaps")
    assert client.cmd("ENABLE CONDSTORE").status == "BAD"  # RFC 5161 §3.1: authenticated


def test_namespace(alice, srv):
    result = alice.cmd("NAMESPACE")
    assert result.ok
    resp = result.one("NAMESPACE")
    # RFC 2342 §5: personal, other users', shared; one personal namespace "" with "/"
    assert resp.data == ("NAMESPACE", [[b"", b"/"]], None, None), resp.raw
    client = srv.imaps("alice")
    typ, data = client.namespace()
    assert typ == "OK" and data[0] == b'(("" "/")) NIL NIL'
    personal, other, shared = imapclient_session(srv).namespace()
    assert personal == (("", "/"),) and other is None and shared is None


# -- LIST and LSUB -------------------------------------------------------------------------------


def listing(client: RawImap, command: str) -> dict[str, set[str]]:
    """``LIST``/``LSUB`` responses: mailbox name (as on the wire) -> attributes.

    Checks the shape of each (RFC 9051 §7.3.1): attributes, the delimiter "/", a name.
    """
    result = client.cmd(command)
    assert result.ok, result.raw
    verb = command.split(" ", 1)[0].upper()
    out: dict[str, set[str]] = {}
    for resp in result.untagged:
        assert resp.kind == verb, resp.raw
        assert len(resp.data) == 4, resp.raw
        _, attrs, delimiter, name = resp.data
        assert delimiter == b"/", resp.raw
        assert isinstance(name, bytes), resp.raw
        wire = name.decode("ascii")
        assert wire not in out, f"listed twice: {resp.raw!r}"
        out[wire] = flag_set(attrs)
    return out


@pytest.fixture
def own_server(start_server):
    """A server of its own, for tests that look at the whole account."""
    return start_server()


@pytest.fixture
def tree(own_server) -> RawImap:
    """alice with Work, Work/Projects, Work/Projects/2021 and Archive besides the defaults."""
    client = tls_imap(own_server, "imaps", "alice")
    for name in ("Work/Projects/2021", "Archive"):
        assert client.cmd(f"CREATE {quoted(name)}").ok
    return client


DEFAULTS = {"INBOX", "Drafts", "Sent", "Trash", "Junk"}


def test_list_star_names_every_mailbox_with_attributes(tree):
    found = listing(tree, 'LIST "" "*"')
    tree_names = {"Work", "Work/Projects", "Work/Projects/2021", "Archive"}
    assert set(found) == DEFAULTS | tree_names
    # RFC 3348 (CHILDREN): exactly one of \HasChildren / \HasNoChildren
    assert "\\HasChildren" in found["Work"] and "\\HasChildren" in found["Work/Projects"]
    for name in ("Work/Projects/2021", "Archive", "Drafts"):
        assert "\\HasNoChildren" in found[name], (name, found[name])
    for attrs in found.values():
        assert len(attrs & {"\\HasChildren", "\\HasNoChildren"}) <= 1, attrs
        assert "\\Noselect" not in attrs
    # RFC 6154 §2: special-use attributes on the mailboxes made for each new user
    for name, use in [("Drafts", "\\Drafts"), ("Sent", "\\Sent"), ("Trash", "\\Trash")]:
        assert use in found[name], (name, found[name])
    assert "\\Junk" in found["Junk"]
    assert not found["Work"] & {"\\Drafts", "\\Sent", "\\Trash", "\\Junk"}


def test_list_percent_stops_at_the_delimiter(tree):
    assert set(listing(tree, 'LIST "" "%"')) == DEFAULTS | {"Work", "Archive"}
    assert set(listing(tree, 'LIST "" "Work/%"')) == {"Work/Projects"}
    assert set(listing(tree, 'LIST "" "Work/*"')) == {"Work/Projects", "Work/Projects/2021"}
    assert set(listing(tree, 'LIST "" "*2021"')) == {"Work/Projects/2021"}
    assert set(listing(tree, 'LIST "" "%/%"')) == {"Work/Projects"}
    assert listing(tree, 'LIST "" "Nothing*"') == {}


def test_list_reference_is_prefixed_to_the_pattern(tree):
    # RFC 9051 §6.3.9: the reference and the pattern are interpreted together
    assert set(listing(tree, 'LIST "Work/" "%"')) == {"Work/Projects"}
    assert set(listing(tree, 'LIST "Work/" "*"')) == {"Work/Projects", "Work/Projects/2021"}


def test_list_empty_pattern_gives_the_delimiter(tree):
    result = tree.cmd('LIST "" ""')
    assert result.ok
    resp = result.one("LIST")
    # RFC 9051 §6.3.9: the hierarchy delimiter and the root name ("" for a "" reference)
    assert resp.data == ("LIST", ["\\Noselect"], b"/", b""), resp.raw


@pytest.mark.parametrize("spelling", ["INBOX", "inbox", "InBoX"])
def test_inbox_is_case_insensitive(tree, spelling):
    found = listing(tree, f'LIST "" "{spelling}"')
    assert [n.upper() for n in found] == ["INBOX"], found  # RFC 9051 §5.1
    assert tree.cmd(f"SELECT {spelling}").ok
    assert tree.cmd(f"STATUS {spelling} (MESSAGES)").ok


def test_lsub_lists_the_default_subscriptions(tree):
    # docs: Drafts, Sent, Trash and Junk are created and subscribed for each new user
    assert {"Drafts", "Sent", "Trash", "Junk"} <= set(listing(tree, 'LSUB "" "*"'))
    assert "Work" not in listing(tree, 'LSUB "" "*"')


def test_subscribe_and_unsubscribe(tree):
    assert tree.cmd('SUBSCRIBE "Archive"').ok
    assert "Archive" in listing(tree, 'LSUB "" "*"')
    assert "Archive" in listing(tree, 'LSUB "" "Arch%"')
    assert tree.cmd('UNSUBSCRIBE "Archive"').ok
    assert "Archive" not in listing(tree, 'LSUB "" "*"')
    # the mailbox itself is untouched
    assert "Archive" in listing(tree, 'LIST "" "*"')


def test_lsub_percent_shows_an_unsubscribed_parent_as_noselect(tree):
    assert tree.cmd('SUBSCRIBE "Work/Projects/2021"').ok
    found = listing(tree, 'LSUB "" "%"')
    # RFC 3501 §6.3.9: "A "%" wildcard to LSUB must return foo, not foo/bar, in the LSUB
    # response, and it MUST be flagged with the \Noselect attribute."
    assert "Work/Projects/2021" not in found
    assert "Work" in found, found
    assert "\\Noselect" in found["Work"]


def test_list_with_imapclient_and_imaplib(own_server):
    client = imapclient_session(own_server)
    folders = {name: (flags, delim) for flags, delim, name in client.list_folders()}
    assert set(folders) == DEFAULTS
    assert all(delim == b"/" for _, delim in folders.values())
    assert b"\\Sent" in folders["Sent"][0]
    typ, data = own_server.imaps("alice").list('""', "%")
    assert typ == "OK" and len(data) == len(DEFAULTS)


# -- CREATE, DELETE, RENAME ----------------------------------------------------------------------


def test_create_and_refusals(alice, box):
    assert box in listing(alice, f"LIST {quoted('')} {quoted(box)}")
    again = alice.cmd(f"CREATE {quoted(box)}")
    assert again.status == "NO", again.raw  # RFC 9051 §6.3.4: exists already
    inbox = alice.cmd("CREATE inbox")
    assert inbox.status == "NO", inbox.raw  # RFC 9051 §6.3.4: INBOX always exists


def test_create_makes_the_superiors(alice):
    top = unique_name()
    assert alice.cmd(f'CREATE "{top}/a/b"').ok
    found = listing(alice, f'LIST "" "{top}*"')
    # RFC 9051 §6.3.4: "the server SHOULD create any superior hierarchical names"
    assert set(found) == {top, f"{top}/a", f"{top}/a/b"}
    assert "\\HasChildren" in found[top] and "\\HasNoChildren" in found[f"{top}/a/b"]


def test_create_with_a_trailing_delimiter(alice):
    name = unique_name()
    assert alice.cmd(f'CREATE "{name}/"').ok
    # RFC 9051 §6.3.4: the trailing delimiter says inferiors will come; the name is "name"
    assert set(listing(alice, f'LIST "" "{name}*"')) == {name}
    assert alice.cmd(f'CREATE "{name}/child"').ok


def test_delete_a_mailbox(alice, box):
    fill(alice, box, 2)
    assert alice.cmd(f"DELETE {quoted(box)}").ok
    assert listing(alice, f'LIST "" {quoted(box)}') == {}
    missing = alice.cmd(f"STATUS {quoted(box)} (MESSAGES)")
    assert missing.status == "NO"
    gone = alice.cmd(f"DELETE {quoted(box)}")
    assert gone.status == "NO", gone.raw  # RFC 9051 §6.3.5: no such mailbox


def test_delete_inbox_is_refused(alice):
    result = alice.cmd("DELETE INBOX")
    assert result.status == "NO", result.raw  # RFC 9051 §6.3.5
    assert alice.cmd("SELECT INBOX").ok


def test_delete_with_inferiors_leaves_a_noselect_name(alice, box):
    assert alice.cmd(f'CREATE "{box}/child"').ok
    fill(alice, box, 2)
    assert alice.cmd(f"DELETE {quoted(box)}").ok
    # RFC 3501 §6.3.4: the messages go, the name stays with \Noselect
    found = listing(alice, f'LIST "" "{box}*"')
    assert set(found) == {box, f"{box}/child"}
    assert "\\Noselect" in found[box]
    # RFC 9051 §6.3.9: "%" returns the level too, \Noselect since it is not selectable
    assert "\\Noselect" in listing(alice, f'LIST "" "{box}%"')[box]
    assert alice.cmd(f"SELECT {quoted(box)}").status == "NO"
    # and a \Noselect name with inferiors cannot be deleted (RFC 3501 §6.3.4)
    assert alice.cmd(f"DELETE {quoted(box)}").status == "NO"
    assert alice.cmd(f'DELETE "{box}/child"').ok
    assert alice.cmd(f"DELETE {quoted(box)}").ok
    assert listing(alice, f'LIST "" "{box}*"') == {}


def test_delete_the_selected_mailbox(alice, box):
    select(alice, box)
    assert alice.cmd(f"DELETE {quoted(box)}").ok
    assert alice.cmd("FETCH 1:* FLAGS").status in ("BAD", "NO")


def test_rename_moves_the_inferiors(alice, box):
    assert alice.cmd(f'CREATE "{box}/child/grandchild"').ok
    uids = fill(alice, box, 2)
    new = unique_name()
    assert alice.cmd(f"RENAME {quoted(box)} {quoted(new)}").ok
    assert listing(alice, f'LIST "" "{box}*"') == {}
    assert set(listing(alice, f'LIST "" "{new}*"')) == {
        new,
        f"{new}/child",
        f"{new}/child/grandchild",
    }
    assert status(alice, new, "MESSAGES UIDNEXT")["MESSAGES"] == 2
    select(alice, new)
    fetched = alice.cmd("UID FETCH 1:* (UID)").fetches()
    assert sorted(as_int(v["UID"]) for v in fetched.values()) == uids


def test_rename_refusals(alice, box):
    other = unique_name()
    assert alice.cmd(f"CREATE {quoted(other)}").ok
    exists = alice.cmd(f"RENAME {quoted(box)} {quoted(other)}")
    assert exists.status == "NO", exists.raw  # RFC 9051 §6.3.6: the new name exists
    missing = alice.cmd(f'RENAME "{unique_name()}" "{unique_name()}"')
    assert missing.status == "NO", missing.raw
    to_inbox = alice.cmd(f"RENAME {quoted(box)} INBOX")
    assert to_inbox.status == "NO", to_inbox.raw
    below = alice.cmd(f'RENAME {quoted(box)} "{box}/under"')
    assert below.status == "NO", below.raw


def test_rename_inbox_moves_the_messages_and_leaves_it_empty(own_server):
    for i in range(2):
        own_server.deliver("alice", message(f"inbox {i}"))
    client = tls_imap(own_server, "imaps", "alice")
    assert client.cmd('CREATE "INBOX/sub"').ok
    assert client.cmd('RENAME INBOX "Old mail"').ok
    # RFC 9051 §6.3.6: all messages move to the new name, INBOX stays (empty);
    # INBOX's inferiors are not renamed
    assert status(client, "Old mail")["MESSAGES"] == 2
    assert status(client, "INBOX")["MESSAGES"] == 0
    found = listing(client, 'LIST "" "*"')
    assert {"INBOX", "INBOX/sub", "Old mail"} <= set(found)
    select(client, "Old mail")
    subjects = client.cmd("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])").fetches()
    assert sorted(bytes_of(v["BODY[HEADER.FIELDS (SUBJECT)]"]) for v in subjects.values()) == [
        b"Subject: inbox 0\r\n\r\n",
        b"Subject: inbox 1\r\n\r\n",
    ]
    own_server.deliver("alice", message("after the rename"))
    assert status(client, "INBOX")["MESSAGES"] == 1


# -- STATUS --------------------------------------------------------------------------------------


def test_status_items(alice, box):
    uids = [append(alice, box, message("a"), "\\Seen"), *fill(alice, box, 2)]
    values = status(alice, box, "MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN")
    assert values["MESSAGES"] == 3
    assert values["UNSEEN"] == 2
    assert values["RECENT"] == 3  # nobody has selected it yet (RFC 9051 §2.3.2)
    assert values["UIDNEXT"] > max(uids)  # RFC 9051 §2.3.1.1
    result = alice.cmd(f"APPEND {quoted(box)} {{1+}}\r\nx")
    assert result.code_args.split(" ")[0] == str(values["UIDVALIDITY"])
    sel = select(alice, box)
    assert sel.codes()["UIDVALIDITY"] == str(values["UIDVALIDITY"])
    # the name in the response is the mailbox's (RFC 9051 §7.3.4)
    named = alice.cmd(f"STATUS {quoted(box)} (MESSAGES)").one("STATUS").data[1]
    assert named == box.encode()


def test_status_refusals(alice, box):
    assert alice.cmd(f'STATUS "{unique_name()}" (MESSAGES)').status == "NO"
    assert_bad(alice, f"STATUS {quoted(box)} (NOSUCHITEM)")
    assert_bad(alice, f"STATUS {quoted(box)} MESSAGES")


def test_imapclient_folder_status(srv, box):
    client = imapclient_session(srv)
    client.append(box, message("x"), flags=[imapclient.SEEN])
    info = client.folder_status(box, ["MESSAGES", "UNSEEN", "UIDNEXT", "UIDVALIDITY"])
    assert info[b"MESSAGES"] == 1 and info[b"UNSEEN"] == 0
    assert info[b"UIDNEXT"] > 0 and info[b"UIDVALIDITY"] > 0


# -- modified UTF-7 names ------------------------------------------------------------------------


def test_modified_utf7_names_round_trip(srv, alice):
    prefix = unique_name()
    name = f"{prefix}Entwürfe"
    client = imapclient_session(srv)
    client.create_folder(name)  # imapclient encodes it: RFC 3501 §5.1.3
    wire = listing(alice, f'LIST "" "{prefix}*"')
    assert set(wire) == {f"{prefix}Entw&APw-rfe"}
    assert {n for _, _, n in client.list_folders(pattern=f"{prefix}*")} == {name}
    # UTF-8 on disk (docs/reference-server.md, IMAP layout)
    assert (srv.config.mail_dir / "alice" / f".{name}").is_dir()
    client.append(name, message("umlaut"))
    assert client.select_folder(name)[b"EXISTS"] == 1
    assert status(alice, f"{prefix}Entw&APw-rfe")["MESSAGES"] == 1
    # "&" itself is "&-"; a character outside the BMP uses surrogates
    assert alice.cmd(f'CREATE "{prefix}A&-B/&2D3eAA-"').ok
    assert {n for _, _, n in client.list_folders(pattern=f"{prefix}A*")} == {
        f"{prefix}A&B",
        f"{prefix}A&B/\U0001f600",
    }


@pytest.mark.parametrize("bad", ["&Jjo", "&AGE-", "&-&"])
def test_invalid_modified_utf7_names_are_refused(alice, bad):
    # "&Jjo": no closing "-"; "&AGE-": "a" must be itself; "&-&": a lone "&" at the end
    name = unique_name() + bad
    result = alice.cmd(f"CREATE {quoted(name)}")
    assert result.status in ("BAD", "NO"), result.raw


# -- SELECT and EXAMINE --------------------------------------------------------------------------


def test_select_responses(srv, alice, box):
    uids = [append(alice, box, message("seen"), "\\Seen"), *fill(alice, box, 2)]
    sel = select(alice, box)
    flags = flag_set(sel.one("FLAGS").data[1])
    assert flags >= SYSTEM_FLAGS  # RFC 9051 §7.3.5
    assert sel.one("EXISTS").number == 3
    assert sel.one("RECENT").number == 3  # RFC 3501 §7.3.2: first session to see them
    codes = sel.codes()
    assert as_int(codes["UIDVALIDITY"]) > 0
    assert as_int(codes["UIDNEXT"]) > max(uids)
    assert codes.get("UNSEEN") == "2"  # RFC 3501 §6.3.1: the first unseen message
    permanent = set(codes["PERMANENTFLAGS"].strip("()").split(" "))
    assert permanent >= SYSTEM_FLAGS and "\\*" in permanent  # keywords can be created
    assert "\\Recent" not in permanent
    assert sel.code_name == "READ-WRITE"  # RFC 9051 §6.3.2
    # a second session is not the first to see them any more (RFC 3501 §2.3.2, \Recent)
    again = select(tls_imap(srv, "starttls", "alice"), box)
    assert again.one("RECENT").number == 0


def test_examine_is_read_only_and_keeps_recent(srv, alice, box):
    fill(alice, box, 2)
    exam = select(alice, box, examine=True)
    assert exam.code_name == "READ-ONLY"
    assert exam.one("EXISTS").number == 2
    # RFC 3501 §6.3.2: EXAMINE MUST NOT cause messages to lose \Recent
    sel = select(tls_imap(srv, "starttls", "alice"), box)
    assert sel.one("RECENT").number == 2
    store = alice.cmd("STORE 1 +FLAGS (\\Flagged)")
    assert store.status == "NO", store.raw  # RFC 9051 §6.3.3: read-only
    fetched = alice.cmd("FETCH 1 (BODY[])").fetches()
    assert "FLAGS" not in fetched[1] or "\\Seen" not in flag_set(fetched[1]["FLAGS"])
    assert "\\Seen" not in flag_set(alice.cmd("FETCH 1 FLAGS").fetches()[1]["FLAGS"])
    assert alice.cmd("EXPUNGE").status == "NO"


def test_select_of_a_missing_mailbox_deselects(alice, box):
    select(alice, box)
    result = alice.cmd(f'SELECT "{unique_name()}"')
    assert result.status == "NO", result.raw
    # RFC 9051 §6.3.2: a failed SELECT leaves no mailbox selected
    assert alice.cmd("FETCH 1:* FLAGS").status == "BAD"
    assert alice.cmd('SELECT "inbox"').ok  # INBOX in any case


def test_select_with_imaplib_and_imapclient(srv, box):
    lib = srv.imaps("alice")
    lib.append(box, None, None, message("one"))
    typ, data = lib.select(box)
    assert typ == "OK" and data == [b"1"]
    assert lib.response("UIDVALIDITY")[1][0].isdigit()
    typ, data = lib.select(box, readonly=True)
    assert typ == "OK"
    client = imapclient_session(srv)
    info = client.select_folder(box, readonly=True)
    assert info[b"EXISTS"] == 1 and info[b"READ-ONLY"] == [b""]
    assert b"\\Seen" in info[b"FLAGS"]


# -- APPEND --------------------------------------------------------------------------------------


def test_append_with_flags_and_a_date(alice, box):
    data = message("dated", b"line\r\n")
    result = alice.command(
        f'APPEND {quoted(box)} (\\Seen \\Flagged $Work) "05-Jan-2021 10:11:12 +0100" ',
        Literal(data),
    )
    assert result.ok, result.raw
    assert len(result.continuations) == 1
    # RFC 4315 §3: APPENDUID uidvalidity uid
    assert result.code_name == "APPENDUID", result.raw
    validity, uid = (int(x) for x in result.code_args.split(" "))
    assert validity == status(alice, box, "UIDVALIDITY")["UIDVALIDITY"]
    select(alice, box)
    got = alice.cmd(f"UID FETCH {uid} (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])").fetches()
    item = got[1]
    assert as_int(item["UID"]) == uid
    assert {"\\Seen", "\\Flagged", "$Work"} <= flag_set(item["FLAGS"])
    # RFC 9051 §6.3.12: the date-time given becomes the internal date (same instant)
    expected = datetime.datetime(
        2021, 1, 5, 10, 11, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )
    assert parse_internaldate(item["INTERNALDATE"]) == expected
    assert as_int(item["RFC822.SIZE"]) == len(data)
    assert item["BODY[]"] == data


def test_append_with_a_non_synchronising_literal(alice, box):
    data = message("plus")
    # the whole command in one write: the server must not ask to go ahead (RFC 7888 §3)
    result = alice.command(f"APPEND {quoted(box)} ", Literal(data, plus=True))
    assert result.ok and not result.continuations and not result.untagged, result.raw
    assert status(alice, box)["MESSAGES"] == 1


def test_append_to_the_selected_mailbox_announces_it(alice, box):
    fill(alice, box, 1)
    select(alice, box)
    result = alice.command(f"APPEND {quoted(box)} ", Literal(message("new"), plus=True))
    assert result.ok
    # RFC 9051 §6.3.12: the server SHOULD notify the client via an untagged EXISTS
    assert [r.number for r in result.of("EXISTS")] == [2], result.raw


def test_append_to_a_missing_mailbox_is_trycreate(alice):
    name = unique_name()
    result = alice.command(f"APPEND {quoted(name)} ", Literal(message("x"), plus=True))
    assert result.status == "NO", result.raw
    assert result.code_name == "TRYCREATE"  # RFC 9051 §6.3.12
    assert alice.cmd(f"STATUS {quoted(name)} (MESSAGES)").status == "NO"


def test_append_with_imaplib_and_imapclient(srv, box):
    lib = srv.imaps("alice")
    when = datetime.datetime(2020, 2, 29, 23, 59, 58, tzinfo=datetime.UTC)
    typ, data = lib.append(box, "(\\Draft)", imaplib.Time2Internaldate(when), message("lib"))
    assert typ == "OK", data
    assert b"APPENDUID" in data[0]
    client = imapclient_session(srv)
    reply = client.append(box, message("client"), flags=[b"$Label1"], msg_time=when)
    assert b"APPENDUID" in reply
    client.select_folder(box)
    client.normalise_times = False  # keep the zone the server sends
    uids = client.search("ALL")
    fetched = client.fetch(uids, ["FLAGS", "INTERNALDATE"])
    assert len(fetched) == 2
    flags = [set(fetched[uid][b"FLAGS"]) for uid in sorted(uids)]
    assert b"\\Draft" in flags[0] and b"$Label1" in flags[1]
    assert all(v[b"INTERNALDATE"] == when for v in fetched.values())


@pytest.fixture
def small_literals(start_server):
    return start_server(imap={"max_literal": 2048})


def test_too_big_synchronising_literal_is_toobig(small_literals):
    client = tls_imap(small_literals, "imaps", "alice")
    caps = capabilities(client.cmd("CAPABILITY"))
    assert "APPENDLIMIT=2048" in caps  # RFC 7889
    result = client.command("APPEND INBOX ", Literal(b"x" * 5000))
    # refused before the client sends it: no "+", a tagged NO [TOOBIG] (RFC 9051 §7.1)
    assert not result.continuations
    assert result.status == "NO" and result.code_name == "TOOBIG", result.raw
    assert client.cmd("NOOP").ok
    assert status(client, "INBOX")["MESSAGES"] == 0
    ok = client.command("APPEND INBOX ", Literal(message("fits")))
    assert ok.ok, ok.raw


def test_too_big_non_synchronising_literal_never_runs_as_commands(small_literals):
    client = tls_imap(small_literals, "imaps", "alice")
    data = (b"X1 LOGOUT\r\nX2 DELETE Sent\r\n" * 400)[:5000]
    result = client.command("APPEND INBOX ", Literal(data, plus=True))
    assert result.status in ("NO", "BAD"), result.raw
    assert result.code_name == "TOOBIG", result.raw
    noop = client.cmd("NOOP")
    assert noop.ok and not noop.untagged, noop.raw  # nothing from X1 or X2
    assert "Sent" in listing(client, 'LIST "" "Sent"')
    assert status(client, "INBOX")["MESSAGES"] == 0


# -- FETCH ---------------------------------------------------------------------------------------

PART1 = b"Plain body line 1\r\nPlain body line 2\r\n"
PART1_MIME = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
PART2 = b"<p>Hello</p>"
PART3 = b"AAECAwQFBgc="
HEADER = (
    b'From: "Sender, Esq." <sender@remote.test>\r\n'
    b"To: Alice <alice@example.test>, bob@example.test\r\n"
    b"Cc: Carol <carol@example.test>\r\n"
    b"Subject: Multipart test\r\n"
    b"Date: Mon, 07 Jun 2021 10:00:00 +0200\r\n"
    b"Message-ID: <mp1@remote.test>\r\n"
    b"In-Reply-To: <parent@remote.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\r\n'
    b"\r\n"
)
TEXT = (
    b"preamble\r\n"
    b"--XYZ\r\n" + PART1_MIME + PART1 + b"\r\n"
    b"--XYZ\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n" + PART2 + b"\r\n"
    b"--XYZ\r\n"
    b'Content-Type: application/octet-stream; name="a.bin"\r\n'
    b'Content-Disposition: attachment; filename="a.bin"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + PART3 + b"\r\n"
    b"--XYZ--\r\n"
    b"epilogue\r\n"
)
MULTIPART = HEADER + TEXT


@pytest.fixture
def multipart(alice, box) -> RawImap:
    """``box`` selected, holding MULTIPART (unseen) as message 1."""
    append(alice, box, MULTIPART)
    select(alice, box)
    return alice


def fetch1(client: RawImap, items: str) -> dict[str, Token]:
    result = client.cmd(f"FETCH 1 {items}")
    assert result.ok, result.raw
    fetched = result.fetches()
    assert list(fetched) == [1], result.raw
    return fetched[1]


def is_seen(client: RawImap) -> bool:
    return "\\Seen" in flag_set(fetch1(client, "(FLAGS)")["FLAGS"])


def text_eq(value: Token, expected: str) -> bool:
    return isinstance(value, bytes) and value.decode().upper() == expected.upper()


def test_fetch_flags_internaldate_size(multipart):
    item = fetch1(multipart, "(FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    assert "\\Seen" not in flag_set(item["FLAGS"])
    assert "\\Recent" in flag_set(item["FLAGS"])  # this session saw it first
    stamp = parse_internaldate(item["INTERNALDATE"])
    assert abs(stamp - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=5)
    body = item["BODY[]"]
    assert body == MULTIPART
    assert as_int(item["RFC822.SIZE"]) == len(MULTIPART)  # RFC 9051 §6.4.5: octets of BODY[]


def test_fetch_envelope(multipart):
    env = fetch1(multipart, "ENVELOPE")["ENVELOPE"]
    assert isinstance(env, list) and len(env) == 10, env  # RFC 9051 §7.5.2
    date, subject, from_, sender, reply_to, to, cc, bcc, in_reply_to, message_id = env
    assert date == b"Mon, 07 Jun 2021 10:00:00 +0200"
    assert subject == b"Multipart test"
    assert from_ == [[b"Sender, Esq.", None, b"sender", b"remote.test"]]
    # RFC 9051 §7.5.2: sender and reply-to default to from
    assert sender == from_ and reply_to == from_
    assert to == [
        [b"Alice", None, b"alice", b"example.test"],
        [None, None, b"bob", b"example.test"],
    ]
    assert cc == [[b"Carol", None, b"carol", b"example.test"]]
    assert bcc is None
    assert in_reply_to == b"<parent@remote.test>"
    assert message_id == b"<mp1@remote.test>"


def test_fetch_bodystructure_of_a_multipart_message(multipart):
    item = fetch1(multipart, "(BODYSTRUCTURE BODY[1] BODY[2] BODY[3])")
    bs = item["BODYSTRUCTURE"]
    assert isinstance(bs, list), bs
    # RFC 9051 §7.5.2: (part)(part)(part) subtype params disposition language location
    text, html, attachment = bs[:3]
    assert text_eq(bs[3], "MIXED")
    params = bs[4]
    assert isinstance(params, list) and len(params) == 2
    assert text_eq(params[0], "BOUNDARY") and params[1] == b"XYZ"
    assert isinstance(text, list) and isinstance(html, list) and isinstance(attachment, list)
    # body-type-text: type subtype params id description encoding size lines [md5 dsp ...]
    assert text_eq(text[0], "TEXT") and text_eq(text[1], "PLAIN")
    assert isinstance(text[2], list) and text_eq(text[2][0], "CHARSET")
    assert isinstance(text[2][1], bytes) and text[2][1].lower() == b"utf-8"
    assert text[3] is None and text[4] is None
    assert text_eq(text[5], "7BIT")
    assert as_int(text[6]) == len(PART1) == len(item["BODY[1]"])  # type: ignore[arg-type]
    assert as_int(text[7]) == 2
    assert text_eq(html[0], "TEXT") and text_eq(html[1], "HTML")
    assert text_eq(html[5], "QUOTED-PRINTABLE")
    assert as_int(html[6]) == len(PART2) == len(item["BODY[2]"])  # type: ignore[arg-type]
    # body-type-basic: type subtype params id description encoding size [md5 dsp ...]
    assert text_eq(attachment[0], "APPLICATION") and text_eq(attachment[1], "OCTET-STREAM")
    assert isinstance(attachment[2], list) and attachment[2][1] == b"a.bin"
    assert text_eq(attachment[5], "BASE64")
    assert as_int(attachment[6]) == len(PART3)
    dsp = attachment[8]
    assert isinstance(dsp, list) and text_eq(dsp[0], "ATTACHMENT"), attachment
    assert isinstance(dsp[1], list) and dsp[1][1] == b"a.bin"
    assert item["BODY[1]"] == PART1 and item["BODY[2]"] == PART2 and item["BODY[3]"] == PART3


def test_fetch_body_is_bodystructure_without_extensions(multipart):
    body = fetch1(multipart, "BODY")["BODY"]
    assert isinstance(body, list) and len(body) == 4, body  # three parts and the subtype
    assert text_eq(body[3], "MIXED")
    text = body[0]
    assert isinstance(text, list) and len(text) == 8, text  # no md5, disposition...
    attachment = body[2]
    assert isinstance(attachment, list) and len(attachment) == 7, attachment


def test_fetch_with_imapclient_parses_the_structures(srv, box):
    client = imapclient_session(srv)
    client.append(box, MULTIPART)
    client.select_folder(box)
    (uid,) = client.search("ALL")
    data = client.fetch([uid], ["ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "BODY.PEEK[]"])[uid]
    env = data[b"ENVELOPE"]
    assert env.subject == b"Multipart test"
    assert env.from_[0].mailbox == b"sender" and env.from_[0].host == b"remote.test"
    assert env.message_id == b"<mp1@remote.test>"
    structure = data[b"BODYSTRUCTURE"]
    assert structure.is_multipart
    assert data[b"RFC822.SIZE"] == len(data[b"BODY[]"]) == len(MULTIPART)


def test_fetch_sections(multipart):
    item = fetch1(
        multipart,
        "(BODY.PEEK[1.MIME] BODY.PEEK[HEADER.FIELDS (Subject)] BODY.PEEK[HEADER] "
        "BODY.PEEK[HEADER.FIELDS.NOT (Subject Date)] BODY.PEEK[TEXT]<0.10> BODY.PEEK[]<5.7>)",
    )
    assert item["BODY[1.MIME]"] == PART1_MIME
    # RFC 9051 §6.4.5: HEADER.FIELDS includes the blank line that ends the header
    assert item["BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: Multipart test\r\n\r\n"
    assert item["BODY[HEADER]"] == HEADER
    not_fields = item["BODY[HEADER.FIELDS.NOT (SUBJECT DATE)]"]
    assert isinstance(not_fields, bytes)
    assert not_fields.endswith(b"\r\n\r\n") and b"Subject:" not in not_fields
    assert b"Date:" not in not_fields and b"Message-ID: <mp1@remote.test>" in not_fields
    # partial: the response names the origin only (RFC 9051 §7.5.2)
    assert item["BODY[TEXT]<0>"] == TEXT[:10]
    assert item["BODY[]<5>"] == MULTIPART[5:12]


def test_fetch_partial_beyond_the_end_is_empty(multipart):
    item = fetch1(multipart, f"(BODY.PEEK[TEXT]<{len(TEXT) + 10}.5>)")
    assert item[f"BODY[TEXT]<{len(TEXT) + 10}>"] == b""


def test_body_peek_does_not_set_seen_and_body_does(multipart):
    peek = fetch1(multipart, "(BODY.PEEK[] BODY.PEEK[TEXT])")
    assert "FLAGS" not in peek
    assert not is_seen(multipart)
    item = fetch1(multipart, "(BODY[TEXT])")
    # RFC 3501 §6.4.5: \Seen is set, and the changed flags SHOULD come in the response
    assert "\\Seen" in flag_set(item["FLAGS"]), item
    assert item["BODY[TEXT]"] == TEXT
    assert is_seen(multipart)


@pytest.mark.parametrize(
    ("items", "sets_seen"),
    [
        ("RFC822", True),
        ("RFC822.TEXT", True),
        ("RFC822.HEADER", False),
        ("BODY[HEADER]", True),
        ("BODY.PEEK[1]", False),
        ("BODYSTRUCTURE", False),
    ],
)
def test_which_items_set_seen(multipart, items, sets_seen):
    fetch1(multipart, f"({items})")
    assert is_seen(multipart) is sets_seen  # RFC 3501 §6.4.5


def test_fetch_rfc822_items(multipart):
    item = fetch1(multipart, "(RFC822.HEADER RFC822.TEXT RFC822 RFC822.SIZE)")
    # RFC 3501 §6.4.5: RFC822 = BODY[], RFC822.HEADER = BODY.PEEK[HEADER], RFC822.TEXT = BODY[TEXT]
    assert item["RFC822"] == MULTIPART
    assert item["RFC822.HEADER"] == HEADER
    assert item["RFC822.TEXT"] == TEXT
    assert as_int(item["RFC822.SIZE"]) == len(MULTIPART)


def test_fetch_macros(multipart):
    # RFC 9051 §6.4.5: FAST, ALL, FULL
    assert set(fetch1(multipart, "FAST")) == {"FLAGS", "INTERNALDATE", "RFC822.SIZE"}
    assert set(fetch1(multipart, "ALL")) == {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"}
    full = fetch1(multipart, "FULL")
    assert set(full) == {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"}


def test_fetch_with_imaplib(srv, box):
    lib = srv.imaps("alice")
    lib.append(box, None, None, MULTIPART)
    lib.select(box)
    typ, data = lib.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK"
    head, body = data[0]
    m = re.search(rb"RFC822\.SIZE (\d+)", head)
    assert m is not None and int(m.group(1)) == len(body) == len(MULTIPART)
    typ, data = lib.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and data[0][1] == b"Subject: Multipart test\r\n\r\n"


def test_fetch_of_valid_sets(alice, box):
    fill(alice, box, 3)
    select(alice, box)
    assert set(alice.cmd("FETCH * FLAGS").fetches()) == {3}
    assert set(alice.cmd("FETCH 3:1 FLAGS").fetches()) == {1, 2, 3}  # RFC 9051 §9: either order
    assert set(alice.cmd("FETCH 1,3 FLAGS").fetches()) == {1, 3}
    assert set(alice.cmd("FETCH 2:* FLAGS").fetches()) == {2, 3}


# -- STORE ---------------------------------------------------------------------------------------


def flags_of(result: Result) -> dict[int, set[str]]:
    return {n: flag_set(v["FLAGS"]) for n, v in result.fetches().items()}


def test_store_add_remove_replace_and_silent(alice, box):
    fill(alice, box, 3)
    select(alice, box)
    added = alice.cmd("STORE 1 +FLAGS (\\Flagged $Label1)")
    assert added.ok
    # RFC 9051 §6.4.6: the new value of the flags comes back in FETCH responses
    assert flags_of(added)[1] >= {"\\Flagged", "$Label1"}
    removed = alice.cmd("STORE 1 -FLAGS (\\Flagged)")
    got = flags_of(removed)[1]
    assert "$Label1" in got and "\\Flagged" not in got
    replaced = alice.cmd("STORE 2 FLAGS (\\Answered)")
    assert flags_of(replaced)[2] - {"\\Recent"} == {"\\Answered"}
    silent = alice.cmd("STORE 1:3 +FLAGS.SILENT (\\Seen)")
    assert silent.ok and not silent.of("FETCH"), silent.raw  # .SILENT: no FETCH
    quiet = alice.cmd("STORE 2 FLAGS.SILENT (\\Draft)")
    assert quiet.ok and not quiet.of("FETCH"), quiet.raw
    now = flags_of(alice.cmd("FETCH 1:3 FLAGS"))
    assert now[1] - {"\\Recent"} == {"\\Seen", "$Label1"}
    assert now[2] - {"\\Recent"} == {"\\Draft"}
    assert now[3] - {"\\Recent"} == {"\\Seen"}
    # the keyword is now one of the mailbox's flags (RFC 9051 §7.3.5)
    again = select(alice, box)
    assert "$Label1" in flag_set(again.one("FLAGS").data[1])
    assert "$Label1" in again.codes()["PERMANENTFLAGS"]


def test_store_keywords_persist_across_sessions(srv, alice, box):
    fill(alice, box, 1)
    select(alice, box)
    assert alice.cmd("STORE 1 +FLAGS.SILENT (Important $Forwarded)").ok
    other = tls_imap(srv, "starttls", "alice")
    select(other, box, examine=True)
    assert {"Important", "$Forwarded"} <= flags_of(other.cmd("FETCH 1 FLAGS"))[1]


def test_store_with_imaplib_and_imapclient(srv, box):
    lib = srv.imaps("alice")
    lib.append(box, None, None, message("a"))
    lib.select(box)
    typ, data = lib.store("1", "+FLAGS", "(\\Flagged)")
    assert typ == "OK" and b"\\Flagged" in data[0]
    client = imapclient_session(srv)
    client.select_folder(box)
    (uid,) = client.search("ALL")
    assert b"\\Flagged" in client.get_flags([uid])[uid]
    client.add_flags([uid], [b"$Todo"])
    client.remove_flags([uid], [b"\\Flagged"])
    assert set(client.get_flags([uid])[uid]) >= {b"$Todo"}
    assert b"\\Flagged" not in client.get_flags([uid])[uid]


# -- UID commands --------------------------------------------------------------------------------


def test_uid_fetch_and_store(alice, box):
    uids = fill(alice, box, 3)
    select(alice, box)
    result = alice.cmd(f"UID FETCH {uids[1]}:{uids[2]} (FLAGS)")
    fetched = result.fetches()
    # RFC 9051 §6.4.9: UID is in every FETCH response of a UID command
    assert {n: as_int(v["UID"]) for n, v in fetched.items()} == {2: uids[1], 3: uids[2]}
    stored = alice.cmd(f"UID STORE {uids[0]} +FLAGS (\\Flagged)")
    assert stored.ok
    [(number, item)] = stored.fetches().items()
    assert number == 1 and as_int(item["UID"]) == uids[0]
    assert "\\Flagged" in flag_set(item["FLAGS"])


def test_uid_fetch_of_missing_uids_is_silent(alice, box):
    uids = fill(alice, box, 2)
    select(alice, box)
    result = alice.cmd(f"UID FETCH {uids[-1] + 100} FLAGS")
    # RFC 9051 §6.4.9: a UID that does not exist is ignored, no error
    assert result.ok and not result.untagged, result.raw
    # "n:*" always includes the last message, even when n is above every UID
    high = alice.cmd(f"UID FETCH {uids[-1] + 100}:* (UID)").fetches()
    assert {n: as_int(v["UID"]) for n, v in high.items()} == {2: uids[-1]}


def test_uid_search_copy_move_expunge(alice, box):
    dest = unique_name()
    assert alice.cmd(f"CREATE {quoted(dest)}").ok
    uids = fill(alice, box, 4)
    select(alice, box)
    assert alice.cmd(f"UID STORE {uids[1]},{uids[3]} +FLAGS.SILENT (\\Deleted)").ok
    search = alice.cmd("UID SEARCH DELETED")
    assert search.search() == [uids[1], uids[3]]

    copy = alice.cmd(f"UID COPY {uids[0]}:{uids[1]} {quoted(dest)}")
    assert copy.ok and copy.code_name == "COPYUID", copy.raw
    validity, source, target = copy.code_args.split(" ")
    assert int(validity) == status(alice, dest, "UIDVALIDITY")["UIDVALIDITY"]
    assert expand(source) == [uids[0], uids[1]] and len(expand(target)) == 2

    move = alice.cmd(f"UID MOVE {uids[2]} {quoted(dest)}")
    assert move.ok, move.raw
    assert "COPYUID" in move.codes()
    assert move.expunged() == [3]

    # UIDPLUS (RFC 4315 §2.1): only the UIDs named go, though both are \Deleted
    expunge = alice.cmd(f"UID EXPUNGE {uids[3]}")
    assert expunge.ok and expunge.expunged() == [3], expunge.raw
    left = alice.cmd("UID FETCH 1:* (UID FLAGS)").fetches()
    assert [as_int(v["UID"]) for v in left.values()] == [uids[0], uids[1]]
    assert status(alice, dest)["MESSAGES"] == 3


def expand(sequence_set: str) -> list[int]:
    """``1:3,7`` -> [1, 2, 3, 7] (no ``*``)."""
    out: list[int] = []
    for part in sequence_set.split(","):
        low, _, high = part.partition(":")
        a, b = int(low), int(high or low)
        out.extend(range(min(a, b), max(a, b) + 1))
    return out


# -- SEARCH --------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def searchable(own_session) -> tuple[RawImap, list[int]]:
    """Four messages of varied senders, subjects, dates, sizes and flags, examined."""
    alice = own_session
    box = unique_name()
    assert alice.cmd(f"CREATE {quoted(box)}").ok
    specs = [
        (
            message("Quarterly report", sender="Alice Anders <aa@remote.test>"),
            "\\Seen",
            "01-Feb-2021",
        ),
        (message("lunch", b"x" * 2000 + b"\r\n", sender="bob@remote.test"), "", "15-Mar-2021"),
        (message("Report draft", sender="carol@remote.test"), "\\Flagged $Work", "10-Apr-2021"),
        (
            message("misc", b"find the needle here\r\n", sender="aa@remote.test"),
            "\\Seen \\Deleted",
            "10-Apr-2021",
        ),
    ]
    uids = [append(alice, box, data, flags, f"{day} 12:00:00 +0000") for data, flags, day in specs]
    select(alice, box, examine=True)
    return alice, uids


def test_search_utf8_literal_matches_an_encoded_word(alice, box):
    append(alice, box, message("=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus Berlin"))
    append(alice, box, message("plain"))
    select(alice, box)
    result = alice.command("SEARCH CHARSET UTF-8 SUBJECT ", Literal("grüße".encode()))
    assert result.ok, result.raw
    # RFC 9051 §6.4.4: strings match the decoded header, case-insensitively
    assert result.search() == [1]


def esearch(result: Result) -> tuple[Token, dict[str, str]]:
    """``* ESEARCH (TAG "x") [UID] name value ...``: the correlator, and the returned data."""
    resp = result.one("ESEARCH")
    data = list(resp.data[1:])
    correlator = data.pop(0) if data and isinstance(data[0], list) else None
    out: dict[str, str] = {}
    if data and data[0] == "UID":
        out["UID"] = ""
        data.pop(0)
    assert len(data) % 2 == 0, resp.raw
    for name, value in zip(data[::2], data[1::2], strict=True):
        assert isinstance(name, str) and isinstance(value, str), resp.raw
        out[name.upper()] = value
    return correlator, out


class TestSearch:
    """SEARCH and ESEARCH over one examined mailbox (searching changes nothing)."""

    @pytest.mark.parametrize(
        ("criteria", "expected"),
        [
            ("ALL", [1, 2, 3, 4]),
            ("UNSEEN", [2, 3]),
            ("SEEN", [1, 4]),
            ("FROM aa@", [1, 4]),
            ('FROM "anders"', [1]),
            ("SUBJECT REPORT", [1, 3]),
            ("SINCE 10-Apr-2021", [3, 4]),
            ("BEFORE 15-Mar-2021", [1]),
            ("ON 15-Mar-2021", [2]),
            ("LARGER 1000", [2]),
            ("SMALLER 1000", [1, 3, 4]),
            ("OR SEEN FLAGGED", [1, 3, 4]),
            ("NOT SEEN", [2, 3]),
            ("NOT OR SEEN FLAGGED", [2]),
            ("FLAGGED UNSEEN", [3]),
            ("KEYWORD $Work", [3]),
            ("UNKEYWORD $Work", [1, 2, 4]),
            ("DELETED", [4]),
            ("UNDELETED", [1, 2, 3]),
            ("BODY needle", [4]),
            ("TEXT quarterly", [1]),
            ("HEADER Subject lunch", [2]),
            ("2:3", [2, 3]),
            ("2,4", [2, 4]),
            ("*", [4]),
            ("(SEEN LARGER 1) SUBJECT misc", [4]),
            ("CHARSET UTF-8 SUBJECT lunch", [2]),
            ("CHARSET US-ASCII FROM bob", [2]),
            ("BODY quarterly", []),  # BODY is the text only; TEXT includes the header
            # RFC 9051 §9: date = date-text / DQUOTE date-text DQUOTE
            ('SINCE "10-Apr-2021"', [3, 4]),
            ("SINCE 1-feb-2021", [1, 2, 3, 4]),  # date-day = 1*2DIGIT; month case-insensitive
            ("NEW", [2, 3]),  # RECENT UNSEEN (RFC 3501 §6.4.4); recent: nobody selected it
            ("OLD", []),
            ("ANSWERED", []),
            ("OR OR ANSWERED DRAFT FLAGGED", [3]),
            ("NOT 1:3", [4]),
        ],
    )
    def test_search_keys(self, searchable, criteria, expected):
        client, _ = searchable
        result = client.cmd(f"SEARCH {criteria}")
        assert result.ok, result.raw
        assert len(result.of("SEARCH")) == 1, result.raw  # RFC 9051 §7.3.6 (IMAP4rev1 form)
        assert sorted(result.search()) == expected

    def test_search_uid_ranges(self, searchable):
        client, uids = searchable
        assert client.cmd(f"SEARCH UID {uids[1]}:{uids[2]}").search() == [2, 3]
        assert client.cmd(f"UID SEARCH UID {uids[0]},{uids[3]}").search() == [uids[0], uids[3]]
        assert client.cmd(f"UID SEARCH UID {uids[3] + 50}:*").search() == [uids[3]]
        assert client.cmd(f"UID SEARCH NOT UID {uids[0]}").search() == uids[1:]

    def test_search_with_an_empty_result(self, searchable):
        client, _ = searchable
        result = client.cmd("SEARCH SUBJECT no-such-thing")
        assert result.ok and [r.data for r in result.of("SEARCH")] == [("SEARCH",)]

    def test_search_with_an_unknown_charset_is_badcharset(self, searchable):
        client, _ = searchable
        result = client.cmd("SEARCH CHARSET KOI8-R SUBJECT report")
        assert result.status == "NO", result.raw
        assert result.code_name == "BADCHARSET", result.raw  # RFC 9051 §6.4.4, §7.1

    def test_esearch_return_options(self, searchable):
        client, uids = searchable
        result = client.cmd("SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN", tag="e1")
        assert result.ok and not result.of("SEARCH"), result.raw
        correlator, data = esearch(result)
        # RFC 4731 §3.1: (TAG "e1") correlates; MIN MAX COUNT ALL as asked
        assert correlator == ["TAG", b"e1"], result.raw
        assert data == {"MIN": "2", "MAX": "3", "COUNT": "2", "ALL": data["ALL"]}
        assert expand(data["ALL"]) == [2, 3]
        _, uid_data = esearch(client.cmd("UID SEARCH RETURN (MIN MAX) SEEN"))
        assert uid_data == {"UID": "", "MIN": str(uids[0]), "MAX": str(uids[3])}
        _, all_data = esearch(client.cmd("SEARCH RETURN () FLAGGED"))  # () means ALL
        assert set(all_data) == {"ALL"} and expand(all_data["ALL"]) == [3]

    def test_esearch_without_matches(self, searchable):
        client, _ = searchable
        _, data = esearch(client.cmd("SEARCH RETURN (MIN MAX COUNT ALL) SUBJECT nothing"))
        # RFC 4731 §3.1: MIN, MAX and ALL are left out when nothing matches; COUNT is 0
        assert data == {"COUNT": "0"}


def test_search_with_imaplib_and_imapclient(srv, box):
    lib = srv.imaps("alice")
    lib.append(box, "(\\Seen)", None, message("alpha"))
    lib.append(box, None, None, message("beta"))
    lib.select(box)
    typ, data = lib.search(None, "UNSEEN")
    assert typ == "OK" and data == [b"2"]
    typ, data = lib.uid("SEARCH", "SUBJECT", "alpha")
    assert typ == "OK" and len(data[0].split()) == 1
    client = imapclient_session(srv)
    client.select_folder(box)
    assert len(client.search(["SUBJECT", "beta"])) == 1
    assert len(client.search(["SEEN"])) == 1


# -- COPY and MOVE -------------------------------------------------------------------------------


@pytest.fixture
def two_boxes(alice, box) -> tuple[str, str, list[int]]:
    """``box`` selected with three messages (the 2nd \\Flagged), and an empty ``dest``."""
    dest = unique_name()
    assert alice.cmd(f"CREATE {quoted(dest)}").ok
    uids = fill(alice, box, 1)
    uids.append(append(alice, box, message("flagged"), "\\Flagged", "02-Mar-2020 08:00:00 +0000"))
    uids += fill(alice, box, 1)
    select(alice, box)
    return box, dest, uids


def test_copy_with_copyuid_keeps_flags_and_date(alice, two_boxes):
    box, dest, uids = two_boxes
    result = alice.cmd(f"COPY 2:3 {quoted(dest)}")
    assert result.ok, result.raw
    assert not result.of("EXPUNGE")
    # RFC 4315 §3: COPYUID uidvalidity source-uids destination-uids, in matching order
    assert result.code_name == "COPYUID", result.raw
    validity, source, target = result.code_args.split(" ")
    assert expand(source) == uids[1:]
    dest_status = status(alice, dest, "MESSAGES UIDVALIDITY RECENT")
    assert int(validity) == dest_status["UIDVALIDITY"]
    assert dest_status["MESSAGES"] == 2
    assert dest_status["RECENT"] == 2  # RFC 9051 §6.4.7: copies get \Recent (3501)
    assert status(alice, box)["MESSAGES"] == 3
    select(alice, dest)
    copied = alice.cmd(f"UID FETCH {expand(target)[0]} (FLAGS INTERNALDATE)").fetches()
    (item,) = copied.values()
    # RFC 9051 §6.4.7: flags and internal date SHOULD be preserved
    assert "\\Flagged" in flag_set(item["FLAGS"])
    assert parse_internaldate(item["INTERNALDATE"]) == datetime.datetime(
        2020, 3, 2, 8, 0, tzinfo=datetime.UTC
    )


def test_move_reports_copyuid_then_expunge(alice, two_boxes):
    _, dest, uids = two_boxes
    result = alice.cmd(f"MOVE 1:2 {quoted(dest)}")
    assert result.ok, result.raw
    # RFC 6851 §4.3 / §4.4: an untagged OK [COPYUID ...] before the EXPUNGEs
    kinds = [r.kind for r in result.untagged]
    assert kinds[0] == "OK" and result.untagged[0].code_name == "COPYUID", result.raw
    validity, source, target = result.untagged[0].code_args.split(" ")
    assert expand(source) == uids[:2] and len(expand(target)) == 2
    assert int(validity) == status(alice, dest, "UIDVALIDITY")["UIDVALIDITY"]
    assert sorted(result.expunged()) in ([1, 1], [1, 2]), result.raw
    assert kinds[1:] == ["EXPUNGE", "EXPUNGE"]
    assert status(alice, dest)["MESSAGES"] == 2
    left = alice.cmd("FETCH 1:* (UID)").fetches()
    assert [as_int(v["UID"]) for v in left.values()] == [uids[2]]


@pytest.mark.parametrize("verb", ["COPY", "MOVE", "UID COPY", "UID MOVE"])
def test_copy_or_move_to_a_missing_mailbox_is_trycreate(alice, two_boxes, verb):
    _, _, uids = two_boxes
    which = f"{uids[0]}" if verb.startswith("UID") else "1"
    result = alice.cmd(f'{verb} {which} "{unique_name()}"')
    assert result.status == "NO" and result.code_name == "TRYCREATE", result.raw  # RFC 9051 §6.4.7
    assert not result.of("EXPUNGE")
    assert len(alice.cmd("FETCH 1:* FLAGS").fetches()) == 3


@pytest.mark.parametrize("verb", ["COPY", "MOVE"])
def test_copy_or_move_of_invalid_numbers_is_bad(alice, two_boxes, verb):
    _, dest, _ = two_boxes
    assert_bad(alice, f"{verb} 4 {quoted(dest)}")


def test_move_and_copy_with_imapclient(srv, two_boxes):
    box, dest, uids = two_boxes
    client = imapclient_session(srv)
    client.select_folder(box)
    client.copy([uids[0]], dest)
    client.move([uids[1]], dest)
    assert client.search("ALL") == [uids[0], uids[2]]
    assert client.folder_status(dest, ["MESSAGES"])[b"MESSAGES"] == 2


# -- EXPUNGE, CLOSE, UNSELECT, CHECK -------------------------------------------------------------


def test_expunge_responses_renumber_as_they_go(alice, box):
    uids = fill(alice, box, 5)
    select(alice, box)
    assert alice.cmd("STORE 2,3,5 +FLAGS.SILENT (\\Deleted)").ok
    result = alice.cmd("EXPUNGE")
    assert result.ok
    # RFC 9051 §7.5.1: each EXPUNGE uses the numbers as they are after the ones before it
    view = list(uids)
    for number in result.expunged():
        assert 1 <= number <= len(view), result.raw
        del view[number - 1]
    assert view == [uids[0], uids[3]]
    left = alice.cmd("FETCH 1:* (UID)").fetches()
    assert {n: as_int(v["UID"]) for n, v in left.items()} == {1: uids[0], 2: uids[3]}
    assert alice.cmd("EXPUNGE").expunged() == []


def test_expunge_with_imaplib(srv, box):
    lib = srv.imaps("alice")
    for i in range(3):
        lib.append(box, None, None, message(f"m{i}"))
    lib.select(box)
    lib.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = lib.expunge()
    assert typ == "OK" and data == [b"1"]
    typ, data = lib.search(None, "ALL")
    assert data == [b"1 2"]


def test_close_expunges_silently(alice, box):
    fill(alice, box, 3)
    select(alice, box)
    assert alice.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)").ok
    result = alice.cmd("CLOSE")
    # RFC 9051 §6.4.1: no untagged EXPUNGE responses are sent
    assert result.ok and not result.untagged, result.raw
    assert alice.cmd("FETCH 1 FLAGS").status == "BAD"  # back in the authenticated state
    assert status(alice, box)["MESSAGES"] == 2


def test_close_after_examine_does_not_expunge(srv, alice, box):
    fill(alice, box, 2)
    select(alice, box)
    assert alice.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)").ok
    other = tls_imap(srv, "imaps", "alice")
    select(other, box, examine=True)
    assert other.cmd("CLOSE").ok
    assert status(alice, box)["MESSAGES"] == 2


def test_unselect_does_not_expunge(alice, box):
    fill(alice, box, 3)
    select(alice, box)
    assert alice.cmd("STORE 1:2 +FLAGS.SILENT (\\Deleted)").ok
    result = alice.cmd("UNSELECT")
    assert result.ok and not result.untagged, result.raw  # RFC 3691 §2
    assert alice.cmd("FETCH 1 FLAGS").status == "BAD"
    assert status(alice, box)["MESSAGES"] == 3


def test_check(alice, box):
    fill(alice, box, 1)
    select(alice, box)
    result = alice.cmd("CHECK")
    assert result.ok, result.raw
    assert alice.cmd("UNSELECT").ok
    assert alice.cmd("CHECK").status == "BAD"  # RFC 9051 §6.4: selected state only


# -- states, unknown commands, malformed arguments ----------------------------------------------

NOT_AUTHENTICATED_BAD = [
    "SELECT INBOX",
    "EXAMINE INBOX",
    "CREATE x",
    "DELETE x",
    "RENAME x y",
    "SUBSCRIBE x",
    'LIST "" "*"',
    'LSUB "" "*"',
    "STATUS INBOX (MESSAGES)",
    "NAMESPACE",
    "ENABLE CONDSTORE",
    "IDLE",
    "CHECK",
    "CLOSE",
    "UNSELECT",
    "EXPUNGE",
    "FETCH 1 FLAGS",
    "UID FETCH 1 FLAGS",
    "SEARCH ALL",
    "STORE 1 +FLAGS (\\Seen)",
    "COPY 1 INBOX",
    "MOVE 1 INBOX",
]
AUTHENTICATED_BAD = [
    "LOGIN alice secret",
    "AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==",
    "STARTTLS",
    "CHECK",
    "CLOSE",
    "UNSELECT",
    "EXPUNGE",
    "FETCH 1 FLAGS",
    "UID FETCH 1 FLAGS",
    "UID SEARCH ALL",
    "SEARCH ALL",
    "STORE 1 +FLAGS (\\Seen)",
    "UID STORE 1 +FLAGS (\\Seen)",
    "COPY 1 INBOX",
    "MOVE 1 INBOX",
    "UID EXPUNGE 1",
]


def test_commands_of_other_states_are_bad(srv):
    client = tls_imap(srv, "imaps")
    # RFC 9051 §3 / §6: a command that is not valid in the state is a protocol error
    for line in NOT_AUTHENTICATED_BAD:
        assert_bad(client, line)
    assert client.login("alice", srv.passwords["alice"]).ok
    for line in AUTHENTICATED_BAD:
        assert_bad(client, line)
    assert client.cmd('SELECT "INBOX"').ok
    for line in AUTHENTICATED_BAD[:3]:
        assert_bad(client, line)


def test_unknown_commands_are_bad(alice):
    for line in ["XYZZY", "XYZZY with arguments", "UID XYZZY 1", "FETCHX 1 FLAGS", "LOG IN"]:
        assert_bad(alice, line)


@pytest.fixture(scope="class")
def three(own_session) -> tuple[RawImap, str]:
    """A mailbox of alice's with three messages, and the class's session."""
    box = unique_name()
    assert own_session.cmd(f"CREATE {quoted(box)}").ok
    fill(own_session, box, 3)
    return own_session, box


class TestMalformed:
    """Syntax errors and numbers out of range: BAD with a reason, and the session goes on."""

    @pytest.mark.parametrize(
        "line",
        [
            "SELECT",
            'SELECT "unterminated',
            "SELECT a b",
            "CREATE",
            "RENAME onlyone",
            'LIST ""',
            "STATUS INBOX",
            "NOOP extra",
            "CAPABILITY extra",
            "LOGOUT now",
            "APPEND",
            "APPEND INBOX (\\Seen",
            'APPEND INBOX "not a date" {1+}\r\nx',
            "FETCH",
            "FETCH 1",
            "FETCH x FLAGS",
            "FETCH 1 (FLAGS",
            "FETCH 1 FLAGS)",
            "FETCH 1:2:3 FLAGS",
            "FETCH 1 BODY[1",
            "FETCH 1 BODY[]<1.x>",
            "SEARCH",
            "COPY 1",
            "UID",
            "EXPUNGE 1",
            "ENABLE",
            "SUBSCRIBE",
            # message numbers above EXISTS (3) are a protocol error (RFC 9051 §9 seq-number)
            "FETCH 0 FLAGS",
            "FETCH 4 FLAGS",
            "FETCH 2:4 FLAGS",
            "FETCH 1,9 FLAGS",
            "FETCH 4:* FLAGS",
            "STORE 4 +FLAGS (\\Seen)",
            "COPY 4 INBOX",
            "MOVE 4 INBOX",
            "STORE 1 +FLAGS",
            "STORE 1 BOGUS (\\Seen)",
            "STORE 1 +FLAGS ((x))",
            "STORE 1 +FLAGS (\\Recent)",  # RFC 3501 §2.3.2: never set by a client
            "STORE 1 +FLAGS (a]b)",  # "]" is no ATOM-CHAR
            "FETCH 1 (FLAGS NOSUCHITEM)",
            "FETCH 1 BODY[NOSUCHSECTION]",
            "FETCH 1 BODY[0]",
            "FETCH 1 BODY[MIME]",  # MIME needs a part number
            "FETCH 1 BODY[]<0.0>",  # partial = "<" number "." nz-number ">"
            "SEARCH NOSUCHKEY",
            "SEARCH SINCE yesterday",
            "SEARCH LARGER x",
            "SEARCH OR SEEN",
            "SEARCH ()",
            "SEARCH UID 0",
        ],
    )
    def test_malformed_arguments_are_bad_with_a_reason(self, three, line):
        client, box = three
        select(client, box)  # again: a wrong answer to an earlier line must not spill over
        assert_bad(client, line)


def test_a_line_without_a_tag_is_an_untagged_bad(alice):
    alice.send(b"\r\n")
    resp = alice.read_response()
    # RFC 9051 §7.1.3: the untagged form, where the command cannot be determined
    assert resp.tag == "*" and resp.status == "BAD", resp.raw
    assert alice.cmd("NOOP").ok


# -- a message from SMTP, byte for byte ----------------------------------------------------------


def test_message_with_dot_lines_from_smtp_comes_back_byte_identical(own_server):
    content = (
        b"From: Sender <sender@remote.test>\r\n"
        b"To: Alice <alice@example.test>\r\n"
        b"Subject: dots\r\n"
        b"\r\n"
        b".leading dot\r\n"
        b"..two dots\r\n"
        b".\r\n"
        b"end\r\n"
    )
    smtp = own_server.smtp()
    smtp.sendmail("sender@remote.test", ["alice@example.test"], content)  # dot-stuffs
    client = tls_imap(own_server, "imaps", "alice")
    select(client, "INBOX")
    item = fetch1(client, "(BODY.PEEK[] RFC822.SIZE)")
    box = own_server.config.mail_dir / "alice"
    (stored,) = [p for sub in ("new", "cur") for p in (box / sub).iterdir()]
    data = stored.read_bytes()
    assert data.endswith(content)  # only the trace field was added
    assert item["BODY[]"] == data
    assert as_int(item["RFC822.SIZE"]) == len(data)


# -- LOGOUT --------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["not authenticated", "authenticated", "selected"])
def test_logout_says_bye_then_ok_then_closes(srv, state):
    client = tls_imap(srv, "imaps", None if state == "not authenticated" else "alice")
    if state == "selected":
        select(client, "INBOX")
    result = client.cmd("LOGOUT")
    assert result.ok, result.raw
    # RFC 9051 §6.1.3: an untagged BYE before the tagged OK, then the server closes
    assert [r.kind for r in result.untagged] == ["BYE"], result.raw
    assert client.read_all_until_close() == b""


def test_logout_with_imaplib(srv):
    client = srv.imaps("alice")
    typ, data = client.logout()
    assert typ == "BYE", data


# -- more on names, sizes, sections --------------------------------------------------------------


def test_mailbox_names_with_quotes_dots_and_percent_round_trip(alice):
    prefix = unique_name()
    names = [
        f'{prefix}say "hi"',
        f"{prefix}back\\slash",
        f"{prefix}v1.2",
        f"{prefix}50%",
        f"{prefix}a b",
    ]
    for name in names:
        assert alice.cmd(f"CREATE {quoted(name)}").ok, name
    found = listing(alice, f'LIST "" "{prefix}*"')
    # "." is no delimiter here ("/" is): "v1.2" is one level (docs: Maildir++ escaping)
    assert set(found) == set(names)
    assert all("\\HasNoChildren" in attrs for attrs in found.values())
    for name in names:
        assert status(alice, name)["MESSAGES"] == 0


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/abs", "a//b", "a/", "."])
def test_names_that_would_leave_the_user_directory_are_refused(srv, alice, name):
    before = sorted(p.name for p in srv.config.mail_dir.iterdir())
    result = alice.cmd(f"CREATE {quoted(name)}")
    if name == "a/":  # a trailing delimiter is allowed (RFC 9051 §6.3.4) and means "a"
        assert result.ok, result.raw
        assert alice.cmd("DELETE a").ok
    else:
        assert result.status in ("NO", "BAD"), result.raw
    assert sorted(p.name for p in srv.config.mail_dir.iterdir()) == before
    assert not (srv.config.mail_dir.parent / "escape").exists()


def test_delete_keeps_the_subscription(alice, box):
    assert alice.cmd(f"SUBSCRIBE {quoted(box)}").ok
    assert alice.cmd(f"DELETE {quoted(box)}").ok
    # RFC 9051 §6.3.5 / RFC 3501 §6.3.6: the server MUST NOT remove a name from the
    # subscriptions unilaterally, even when the mailbox is gone
    assert box in listing(alice, f'LSUB "" {quoted(box)}')
    assert alice.cmd(f"UNSUBSCRIBE {quoted(box)}").ok


def test_uidvalidity_changes_when_a_name_comes_back(alice, box):
    first = append(alice, box, message("first life"))
    before = status(alice, box, "UIDVALIDITY")["UIDVALIDITY"]
    assert alice.cmd(f"DELETE {quoted(box)}").ok
    assert alice.cmd(f"CREATE {quoted(box)}").ok
    second = append(alice, box, message("second life"))
    after = status(alice, box, "UIDVALIDITY")["UIDVALIDITY"]
    # RFC 9051 §2.3.1.1: a new mailbox of an old name must not reuse UIDs under one UIDVALIDITY
    assert after != before or second > first
    renamed = unique_name()
    assert alice.cmd(f"RENAME {quoted(box)} {quoted(renamed)}").ok
    assert alice.cmd(f"CREATE {quoted(box)}").ok
    third = append(alice, box, message("third life"))
    again = status(alice, box, "UIDVALIDITY")["UIDVALIDITY"]
    assert again not in (before, after) or third > max(first, second)


def test_login_and_names_as_literals(srv):
    client = tls_imap(srv, "imaps")
    result = client.command(
        "LOGIN ",
        Literal(b"alice", plus=True),
        " ",
        Literal(srv.passwords["alice"].encode(), plus=True),
    )
    assert result.ok and not result.continuations, result.raw  # RFC 7888 §3
    name = unique_name()
    assert client.command("CREATE ", Literal(name.encode(), plus=True)).ok
    sel = client.command("SELECT ", Literal(name.encode()))
    assert sel.ok and len(sel.continuations) == 1, sel.raw
    assert sel.code_name == "READ-WRITE"


@pytest.mark.parametrize(
    "date",
    [" 5-Jan-2021 10:11:12 +0100", "05-JAN-2021 10:11:12 +0100", "05-jan-2021 10:11:12 +0100"],
)
def test_append_date_forms(alice, box, date):
    # RFC 9051 §9: date-day-fixed = (SP DIGIT) / 2DIGIT; ABNF strings are case-insensitive
    result = alice.command(f'APPEND {quoted(box)} "{date}" ', Literal(message("d"), plus=True))
    assert result.ok, result.raw
    select(alice, box)
    stamp = parse_internaldate(fetch1(alice, "INTERNALDATE")["INTERNALDATE"])
    assert stamp == datetime.datetime(
        2021, 1, 5, 10, 11, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )


LF_MESSAGE = b"From: lf@remote.test\nSubject: bare LF\n\nline one\nline two\n"


def test_rfc822_size_is_the_size_of_what_body_sends_for_an_appended_lf_message(alice, box):
    result = alice.command(f"APPEND {quoted(box)} ", Literal(LF_MESSAGE, plus=True))
    if not result.ok:  # refusing bare LFs is allowed; then there is nothing to check
        assert result.status == "NO", result.raw
        return
    select(alice, box)
    item = fetch1(alice, "(RFC822.SIZE BODY.PEEK[])")
    body = item["BODY[]"]
    assert isinstance(body, bytes)
    # RFC 9051 §2.3.4: the size is that of the message in RFC 5322 form, i.e. of BODY[]
    assert as_int(item["RFC822.SIZE"]) == len(body), item


def test_rfc822_size_of_a_maildir_file_with_lf_line_ends(srv, alice, box):
    folder = srv.config.mail_dir / "alice" / f".{box}"
    assert (folder / "cur").is_dir(), "docs: a/b is the Maildir++ folder .a.b"
    target = folder / "new" / f"{int(time.time())}.M1P{os.getpid()}Q1.lf.test"
    target.write_bytes(LF_MESSAGE)  # as procmail or another MDA writes it
    select(alice, box)
    item = fetch1(alice, "(RFC822.SIZE BODY.PEEK[] BODY.PEEK[TEXT])")
    body = item["BODY[]"]
    assert isinstance(body, bytes) and body.replace(b"\r\n", b"\n") == LF_MESSAGE
    assert as_int(item["RFC822.SIZE"]) == len(body), item  # RFC 9051 §2.3.4
    assert alice.cmd("SEARCH LARGER 1").search() == [1]


NESTED = (
    b"From: a@remote.test\r\n"
    b"To: undisclosed-recipients:;\r\n"
    b"Cc: Team: x@remote.test, y@remote.test;, z@remote.test\r\n"
    b'Subject: say "hi" \\ there\r\n'
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=outer\r\n"
    b"\r\n"
    b"--outer\r\n"
    b"Content-Type: multipart/alternative; boundary=inner\r\n"
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"plain\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<b>x</b>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: n@remote.test\r\n"
    b"Subject: nested\r\n"
    b"\r\n"
    b"nested body\r\n"
    b"--outer--\r\n"
)


def test_fetch_of_a_nested_message(alice, box):
    append(alice, box, NESTED)
    select(alice, box)
    item = fetch1(
        alice,
        "(ENVELOPE BODYSTRUCTURE BODY.PEEK[1.1] BODY.PEEK[1.2] BODY.PEEK[2.HEADER] "
        "BODY.PEEK[2.TEXT] BODY.PEEK[2.1] BODY.PEEK[1.MIME])",
    )
    env = item["ENVELOPE"]
    assert isinstance(env, list)
    assert env[1] == b'say "hi" \\ there'  # quoted with escapes, or a literal
    # RFC 9051 §7.5.2: groups are (NIL NIL name NIL) ... (NIL NIL NIL NIL)
    assert env[5] == [[None, None, b"undisclosed-recipients", None], [None, None, None, None]]
    assert env[6] == [
        [None, None, b"Team", None],
        [None, None, b"x", b"remote.test"],
        [None, None, b"y", b"remote.test"],
        [None, None, None, None],
        [None, None, b"z", b"remote.test"],
    ]
    bs = item["BODYSTRUCTURE"]
    assert isinstance(bs, list) and text_eq(bs[2], "MIXED")
    alternative, rfc822 = bs[0], bs[1]
    assert isinstance(alternative, list) and text_eq(alternative[2], "ALTERNATIVE")
    # body-type-msg: "MESSAGE" "RFC822" params id desc enc size envelope body lines
    assert isinstance(rfc822, list)
    assert text_eq(rfc822[0], "MESSAGE") and text_eq(rfc822[1], "RFC822")
    nested_env, nested_body = rfc822[7], rfc822[8]
    assert isinstance(nested_env, list) and nested_env[1] == b"nested"
    assert isinstance(nested_body, list) and text_eq(nested_body[0], "TEXT")
    assert as_int(rfc822[9]) >= 3  # body-fld-lines
    assert item["BODY[1.1]"] == b"plain"
    assert item["BODY[1.2]"] == b"<b>x</b>"
    assert item["BODY[1.MIME]"] == b"Content-Type: multipart/alternative; boundary=inner\r\n\r\n"
    assert item["BODY[2.HEADER]"] == b"From: n@remote.test\r\nSubject: nested\r\n\r\n"
    assert item["BODY[2.TEXT]"] == b"nested body"
    assert item["BODY[2.1]"] == b"nested body"  # the encapsulated message's only part


def test_eight_bit_header_text_comes_as_a_literal(alice, box):
    append(alice, box, message("Grüße aus Köln"))
    select(alice, box)
    # a strict reader: 8-bit text in a quoted string is no IMAP4rev1 (RFC 3501 §9 QUOTED-CHAR)
    env = fetch1(alice, "ENVELOPE")["ENVELOPE"]
    assert isinstance(env, list) and env[1] == "Grüße aus Köln".encode()


def test_body_1_of_a_single_part_message_is_its_body(alice, box):
    append(alice, box, message("single", b"just text\r\n"))
    select(alice, box)
    item = fetch1(alice, "(BODY.PEEK[1] BODY.PEEK[TEXT] BODYSTRUCTURE)")
    # RFC 9051 §6.4.5: a non-multipart message has a part 1, its body
    assert item["BODY[1]"] == item["BODY[TEXT]"] == b"just text\r\n"
    bs = item["BODYSTRUCTURE"]
    assert isinstance(bs, list) and text_eq(bs[0], "TEXT") and text_eq(bs[1], "PLAIN")
    assert as_int(bs[6]) == len(b"just text\r\n") and as_int(bs[7]) == 1


def test_header_fields_details(alice, box):
    data = (
        b"Subject: one\r\nX-Folded: first\r\n  second\r\nReceived: a\r\nreceived: b\r\n\r\nbody\r\n"
    )
    append(alice, box, data)
    select(alice, box)
    item = fetch1(
        alice,
        "(BODY.PEEK[HEADER.FIELDS (x-folded)] BODY.PEEK[HEADER.FIELDS (RECEIVED)] "
        "BODY.PEEK[HEADER.FIELDS (X-None)] BODY.PEEK[HEADER.FIELDS.NOT (Received X-Folded)])",
    )
    # RFC 9051 §6.4.5: field names match case-insensitively; folded lines stay; every
    # occurrence; and the blank line ends each result, even an empty one
    assert item["BODY[HEADER.FIELDS (X-FOLDED)]"] == b"X-Folded: first\r\n  second\r\n\r\n"
    assert item["BODY[HEADER.FIELDS (RECEIVED)]"] == b"Received: a\r\nreceived: b\r\n\r\n"
    assert item["BODY[HEADER.FIELDS (X-NONE)]"] == b"\r\n"
    assert item["BODY[HEADER.FIELDS.NOT (RECEIVED X-FOLDED)]"] == b"Subject: one\r\n\r\n"


def test_response_text_is_7bit_even_where_it_cites_an_rfc_section(srv):
    # RFC 3501 §9: text = 1*TEXT-CHAR, 7-bit; our texts cite "RFC 9051 §3" as "section 3"
    client = tls_imap(srv, "imaps")
    result = client.cmd("FETCH 1 (FLAGS)")  # not valid before login
    assert result.status == "BAD", result.raw
    assert b"section" in result.raw and result.raw.isascii(), result.raw
