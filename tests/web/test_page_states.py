"""What the page says when something stands in the way, in a real Chromium against a real `dancecam serve`.

A token-protected server opened without its token, or with a wrong one, asks for it and then works; a server that
cannot be reached says so; media that cannot connect (the signalling works, every address offered leads nowhere)
are explained within 10 s; a facedancer server without weights shows its commands readably, also on
a phone-width screen, and keeps Start disabled with the reason.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.web.harness import PHONE, Server, assert_fits, open_page, start_live, status

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Route

pytestmark = pytest.mark.network


def test_token_missing_then_wrong_then_right(browser: Browser, identity_server: Server, artifacts: Path) -> None:
    server = identity_server
    page, console = open_page(browser, server.url)  # the address without its #token=
    page.wait_for_selector("#token-panel", state="visible", timeout=15_000)
    assert page.text_content("#token-heading") == "This server needs its access token"
    assert "printed by dancecam serve" in " ".join(page.inner_text("#token-missing").split())
    assert page.is_hidden("#token-wrong")
    assert page.text_content("#server-info") != "server not reachable"
    assert page.is_disabled("#start")
    assert "access token" in page.text_content("#start-reason")
    assert page.evaluate("document.activeElement.id") == "token-input", "the field is ready to paste into"
    page.screenshot(path=str(artifacts / "token-missing.png"))

    page.fill("#token-input", "not-" + str(server.token))
    page.press("#token-input", "Enter")
    page.wait_for_selector("#token-status:has-text('refused')", timeout=10_000)
    assert page.text_content("#token-heading") == "The access token is wrong"
    assert page.is_visible("#token-wrong")
    assert page.is_hidden("#token-missing")
    assert page.text_content("#token-status") == "The server refused that token."
    assert page.is_disabled("#start")

    # the whole address `dancecam serve` printed works as well as the bare token
    page.fill("#token-input", server.page_url)
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#token-panel", state="hidden", timeout=10_000)
    assert page.evaluate("window.location.hash") == f"#token={server.token}"
    assert "engine identity" in page.text_content("#server-info")
    start_live(page)
    page.click("#stop")
    page.wait_for_function("window.dancecam.status().connection === 'idle'", timeout=10_000)
    assert server.wait_no_sessions() == []
    assert status(page)["error"] is None
    assert console.unexpected(401) == [], console.errors
    page.context.close()

    # a phone-width look at the prompt
    phone, _ = open_page(browser, server.url, viewport=PHONE)
    phone.wait_for_selector("#token-panel", state="visible", timeout=15_000)
    phone.screenshot(path=str(artifacts / "token-missing-phone.png"), full_page=True)
    assert_fits(phone)
    phone.context.close()


def test_server_not_reachable(browser: Browser, identity_server: Server) -> None:
    page, _ = open_page(browser, identity_server.page_url, go=False)

    def unreachable(route: Route) -> None:
        route.abort("connectionrefused")  # what fetch() sees when the server is down

    page.route("**/api/**", unreachable)
    page.goto(identity_server.page_url)
    page.wait_for_selector("#error", state="visible", timeout=15_000)
    assert page.text_content("#server-info") == "server not reachable"
    assert "not reachable" in page.text_content("#error-text")
    assert page.is_hidden("#token-panel"), "an unreachable server is not a token problem"
    assert page.is_disabled("#start")
    page.context.close()


def to_blackhole(sdp: str, port: int) -> str:
    """`sdp` with each UDP candidate moved to 127.0.0.1:`port` (a socket that never answers) and the rest dropped."""
    lines = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            m = re.match(r"(a=candidate:\S+ \d+ )(udp)( \d+ )\S+ \d+( typ .*)$", line, re.IGNORECASE)
            if m is None:
                continue
            line = f"{m[1]}{m[2]}{m[3]}127.0.0.1 {port}{m[4]}"
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


@contextmanager
def udp_blackholes(count: int) -> Iterator[list[int]]:
    """Ports of UDP sockets on 127.0.0.1 that receive and never answer: a firewall that drops the media."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        yield [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_media_that_cannot_connect_are_explained(browser: Browser, identity_server: Server, artifacts: Path) -> None:
    server = identity_server
    page, console = open_page(browser, server.page_url)
    with udp_blackholes(2) as (browser_side, server_side):

        def unreachable_media(route: Route) -> None:
            # the signalling works; every address either side offers leads nowhere
            offer = json.loads(route.request.post_data or "{}")
            offer["sdp"] = to_blackhole(offer["sdp"], browser_side)
            response = route.fetch(post_data=json.dumps(offer))
            answer = response.json()
            answer["sdp"] = to_blackhole(answer["sdp"], server_side)
            route.fulfill(response=response, body=json.dumps(answer))

        page.route("**/offer", unreachable_media)
        page.wait_for_selector("#camera-status[data-kind=ok]", timeout=15_000)
        page.wait_for_selector("#start:enabled", timeout=15_000)
        clicked = time.monotonic()
        page.click("#start")
        page.wait_for_selector("#error", state="visible", timeout=12_000)
        took = time.monotonic() - clicked
    text = page.text_content("#error-text")
    assert text.startswith("Could not connect the media"), text
    for cause in ("--ice-address", "firewall", "VPN"):
        assert cause in text, text
    assert f"127.0.0.1:{server_side} udp" in text, "the message names what the server offers"
    assert took < 10.0, f"the page took {took:.1f} s to say the media cannot connect"
    assert status(page)["connection"] == "idle"
    assert page.is_enabled("#start")
    assert server.wait_no_sessions(3.0) == [], "the page must end the server's session"
    page.screenshot(path=str(artifacts / "ice-failed.png"))
    assert console.unexpected(404) == [], console.errors
    page.context.close()


def test_missing_weights_notice(browser: Browser, weightless_server: Server, artifacts: Path) -> None:
    server = weightless_server
    info = server.get("/api/info")
    assert info["weights"]["ok"] is False
    page, console = open_page(browser, server.url)
    page.wait_for_selector("#weights-notice", state="visible", timeout=15_000)
    message = page.inner_text("#weights-message")
    command = page.text_content("#weights-command")
    assert "missing" in message.lower(), message
    assert "`" not in page.inner_text("#weights-notice"), "commands show as code, not between backticks"
    # each backticked span of the server's message is a <code> element, its text as the server wrote it
    spans = page.eval_on_selector_all("#weights-message code", "els => els.map((e) => e.textContent)")
    assert spans == info["weights"]["message"].split("`")[1::2], spans
    assert command == info["weights"]["command"], command

    page.click("#copy-command")
    page.wait_for_function("document.getElementById('copy-status').textContent !== ''", timeout=5_000)
    if page.text_content("#copy-status") == "Copied.":
        assert page.evaluate("navigator.clipboard.readText()") == command

    # Start is disabled, and says why, before the user can try
    page.wait_for_selector("#camera-status[data-kind=ok]", timeout=15_000)
    assert page.is_disabled("#start")
    assert info["can_swap"]["ok"] is False
    assert "model weights missing" in info["can_swap"]["reason"], info["can_swap"]
    # the notice above has the server's whole message: beside Start, a pointer to it
    reason = page.text_content("#start-reason")
    assert reason == "The server has no model weights yet: see “Model weights are missing” above.", reason
    assert status(page)["connection"] == "idle"
    page.screenshot(path=str(artifacts / "weights-missing.png"), full_page=True)
    assert console.unexpected() == [], console.errors
    page.context.close()

    # a phone: long paths and commands stay inside their card, the page never scrolls sideways
    phone, console = open_page(browser, server.url, viewport=PHONE)
    phone.wait_for_selector("#weights-notice", state="visible", timeout=15_000)
    phone.wait_for_selector("#camera-status[data-kind=ok]", timeout=15_000)
    phone.screenshot(path=str(artifacts / "weights-missing-phone.png"))
    phone.screenshot(path=str(artifacts / "weights-missing-phone-full.png"), full_page=True)
    assert_fits(phone)
    assert "`" not in phone.inner_text("#weights-notice")
    assert console.unexpected() == [], console.errors
    phone.context.close()
