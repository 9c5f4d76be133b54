"""The page's disclosure badge: off by default, "Mark the video as altered" with its text and corner sent as live
settings mid-session, and the mark then in the video the server sends back; text the badge cannot draw stays on
the page with its reason."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from realtime.pipeline import choices as pc
from realtime.pipeline.badge import Badge, render_badge
from tests.web.harness import Server, grab, open_page, start_live, status

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.network

TEXT = "Parody: not real"


def box_levels(rgb: np.ndarray, badge: Badge) -> tuple[float, float]:
    """Inside the box `badge` takes at this frame size: the mean grey level and the share of near-white pixels."""
    h, w = rgb.shape[:2]
    image = render_badge(badge, w, h)
    bh, bw = image.rgba.shape[:2]
    region = rgb[image.y : image.y + bh, image.x : image.x + bw].astype(float).mean(-1)
    return float(region.mean()), float((region > 200).mean())


def test_the_page_marks_the_video_as_altered(browser: Browser, identity_server: Server, artifacts: Path) -> None:
    server = identity_server
    page, console = open_page(browser, server.page_url)
    page.wait_for_selector("#server-info:has-text('engine identity')", timeout=15_000)
    info = server.get("/api/info")
    options = page.eval_on_selector_all("#set-badge-position option", "els => els.map(e => e.value)")
    assert options == info["limits"]["badge_position"] == list(pc.BADGE_POSITIONS)
    assert not page.is_checked("#set-badge"), "the badge is off by default"
    assert page.input_value("#set-badge-text") == pc.DEFAULT_BADGE_TEXT
    assert page.get_attribute("#set-badge-text", "maxlength") == str(pc.BADGE_TEXT_MAX)
    session = start_live(page)
    badge = Badge(TEXT, "bottom-left")
    deadline = time.monotonic() + 15  # the returned video is playing: the corner shows the scene, not black
    before = (0.0, 0.0)
    while time.monotonic() < deadline:
        if page.evaluate("document.querySelector('#remote').videoWidth > 0"):
            before = box_levels(grab(page, "#remote"), badge)
            if before[0] > 30:
                break
        page.wait_for_timeout(200)
    assert before[0] > 30, f"the returned video never showed the scene: {before}"

    page.fill("#set-badge-text", TEXT)
    page.press("#set-badge-text", "Tab")  # a text field reports its change when it is left
    page.wait_for_selector("#settings-status[data-kind=ok]", timeout=10_000)
    page.select_option("#set-badge-position", "bottom-left")
    page.check("#set-badge")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        settings = server.get(f"/api/settings?session={session}")
        if settings["badge"] and settings["badge_position"] == "bottom-left":
            break
        page.wait_for_timeout(200)
    assert (settings["badge"], settings["badge_text"], settings["badge_position"]) == (True, TEXT, "bottom-left")

    # the server draws it into the video it sends back: the box darkens the corner, the letters are light
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = box_levels(grab(page, "#remote"), badge)
        if after[0] < 0.7 * before[0] and after[1] > 0.02:
            break
        page.wait_for_timeout(200)
    assert after[0] < 0.7 * before[0], f"the corner is not darker: {before} -> {after}"
    assert after[1] > 0.02, f"no light letters in the box: {before} -> {after}"
    page.screenshot(path=str(artifacts / "badge.png"))

    # text the badge's font cannot draw is stopped on the page and never sent
    page.fill("#set-badge-text", "vidéo modifiée")
    page.press("#set-badge-text", "Tab")
    page.wait_for_timeout(500)
    assert page.evaluate("!document.querySelector('#set-badge-text').checkValidity()")
    assert server.get(f"/api/settings?session={session}")["badge_text"] == TEXT

    page.click("#stop")
    page.wait_for_function("window.dancecam.status().connection === 'idle'", timeout=10_000)
    assert status(page)["error"] is None
    assert console.unexpected() == [], console.errors
    page.context.close()
