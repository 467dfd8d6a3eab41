"""The webmail page in headless Chromium (Playwright): log in, read, see \\Seen over IMAP, send.

Chromium comes from Debian (.ci/run installs it) and Playwright drives it
through ``executable_path``; no browser is downloaded. Without either the
test is skipped, except under CI, where that is a failure. Screenshots go to
``test-artifacts/web/`` at the top of the repository (gitignored), so a CI
run keeps them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import CHROMIUM, CHROMIUM_FLAGS, unavailable
from webhelpers import deliver, imap_flags

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "web"
TIMEOUT_MS = 15_000

pytestmark = pytest.mark.slow


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        unavailable("chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_log_in_read_a_delivered_message_and_send_one(browser, start_server):
    srv = start_server()
    deliver(srv, "alice@example.test", "Lunch on Friday?", "Shall we meet at noon?\n")
    host, port = srv.addr("web")
    base = f"https://{host}:{port}"
    # the development CA is not in Chromium's trust store; the connection is still HTTPS,
    # so the Secure session cookie is set and sent as in real use
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 700})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    page.goto(base + "/")
    assert page.url == base + "/login"
    page.fill("#username", "alice")
    page.fill("#password", srv.passwords["alice"])
    page.click("#login")
    page.wait_for_url(base + "/mailbox/INBOX")
    cookies = {c["name"]: c for c in context.cookies()}
    session = cookies["__Host-mailharness-session"]
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
    row = page.locator("tr.unread", has_text="Lunch on Friday?")
    assert row.count() == 1
    page.screenshot(path=str(ARTIFACTS / "inbox.png"), full_page=True)

    row.get_by_role("link", name="Lunch on Friday?").click()
    page.wait_for_selector("#subject")
    assert page.inner_text("#subject") == "Lunch on Friday?"
    assert "Shall we meet at noon?" in page.inner_text("#body")
    assert "\\Seen" in page.inner_text("#flags")
    page.screenshot(path=str(ARTIFACTS / "message.png"), full_page=True)

    imap = srv.imap("alice")  # right after the page was shown
    imap.select("INBOX", readonly=True)
    typ, data = imap.uid("SEARCH", "SUBJECT", '"Lunch on Friday?"')
    assert typ == "OK"
    (uid,) = data[0].split()
    assert "\\Seen" in imap_flags(imap.uid("FETCH", uid.decode(), "(FLAGS)")[1])

    page.click("text=Compose")
    page.wait_for_selector("#to")
    page.fill("#to", "Bob <bob@example.test>")
    page.fill("#subject", "Re: Lunch on Friday?")
    page.fill("#body", "Noon works.\nSee you.")
    page.screenshot(path=str(ARTIFACTS / "compose.png"), full_page=True)
    page.click("#send")
    page.wait_for_url(base + "/mailbox/INBOX?notice=sent")
    assert "Message sent." in page.inner_text("main")

    bob = srv.imap("bob")
    bob.select("INBOX", readonly=True)
    typ, data = bob.uid("SEARCH", "SUBJECT", '"Re: Lunch on Friday?"')
    assert typ == "OK" and len(data[0].split()) == 1
    typ, fetched = bob.uid("FETCH", data[0].decode(), "(BODY.PEEK[])")
    raw = fetched[0][1]
    assert b"From: alice@example.test" in raw and b"Noon works.\r\nSee you.\r\n" in raw

    page.click("#logout")
    page.wait_for_url(base + "/login")
    page.goto(base + "/mailbox/INBOX")
    assert page.url == base + "/login"
    shot = (ARTIFACTS / "message.png").read_bytes()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    context.close()
