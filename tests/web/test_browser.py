"""The page in a real browser against a real `dancecam serve --engine identity` on 127.0.0.1 (with a token).

Chromium (Debian's /usr/bin/chromium, driven by Playwright) gets a fake camera that plays a y4m clip of a real face.
The page uploads a source photo, starts a WebRTC session, and the tests check what a user sees: Start disabled with
the reason until the server can swap; processed frames come back without the glass-to-glass code until "measure" is
ticked, then with it and with latency numbers; the overlay fills in, hides and stays hidden after a reload; a setting
reaches the server; Stop ends the session; a session the server ends shows the server's reason and leaves the camera
running; the faces counts appear and "draw boxes" outlines the face in the returned video, on a phone-width screen.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from realtime.live import ice
from tests.faces import astronaut
from tests.web.harness import (
    DESKTOP,
    PHONE,
    Server,
    assert_fits,
    grab,
    open_page,
    stamps_seen,
    start_live,
    stat,
    status,
    write_image,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

pytestmark = pytest.mark.network


# Grey levels of the returned video below its top quarter (the stamp lives in the top-left corner), 64x48 grid.
SAMPLE_RETURNED = """() => {
  const v = document.getElementById('remote');
  const c = document.createElement('canvas');
  c.width = 64; c.height = 48;
  const ctx = c.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(v, 0, 0, 64, 48);
  const d = ctx.getImageData(0, 12, 64, 36).data;
  const out = [];
  for (let i = 0; i < d.length; i += 4) out.push((d[i] + d[i + 1] + d[i + 2]) / 3);
  return out;
}"""


# The remote address of the candidate pair Chromium's transport selected.
SELECTED_REMOTE = """async () => {
  const stats = await window.dancecam.peerStats();
  if (!stats) return null;
  const byId = new Map();
  stats.forEach((r) => byId.set(r.id, r));
  for (const r of byId.values()) {
    if (r.type !== 'transport' || !r.selectedCandidatePairId) continue;
    const pair = byId.get(r.selectedCandidatePairId);
    return byId.get(pair.remoteCandidateId).address;
  }
  return null;
}"""

# The camera preview keeps playing: a live track, and the video's clock moves on.
PREVIEW_PLAYING = """async () => {
  const v = document.getElementById('local');
  const track = v.srcObject && v.srcObject.getVideoTracks()[0];
  const t0 = v.currentTime;
  await new Promise((r) => setTimeout(r, 300));
  return Boolean(track && track.readyState === 'live' && !v.paused && v.currentTime > t0);
}"""

NO_SOURCE_YET = "no source photo on the server yet: upload one"


def needs_source_until_upload(page: Page) -> None:
    """/api/info as a server that needs a source photo answers it: `can_swap` false until this page set one (the
    shared server may hold another test's source already)."""
    uploaded: list[bool] = []  # (a route would lose the multipart body of the upload: watch its answer instead)
    page.on("response", lambda r: uploaded.append(True) if r.url.endswith("/api/source") and r.ok else None)

    def info(route: Route) -> None:
        response = route.fetch()
        body = response.json()
        if not uploaded:
            body["source"] = {"set": False, "key": None, "note": None, "photos": []}
            body["can_swap"] = {"ok": False, "reason": NO_SOURCE_YET}
        route.fulfill(response=response, body=json.dumps(body))

    page.route("**/api/info", info)


def test_live_session_round_trip(browser: Browser, identity_server: Server, artifacts: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    server = identity_server
    page, console = open_page(browser, server.page_url, go=False)
    needs_source_until_upload(page)
    page.goto(server.page_url)
    page.wait_for_selector("#camera-status[data-kind=ok]", timeout=15_000)
    assert "640×480" in page.text_content("#camera-status"), page.text_content("#camera-status")
    assert "engine identity" in page.text_content("#server-info")
    # the server cannot swap yet: Start is disabled and says why
    assert page.is_disabled("#start")
    assert page.text_content("#start-reason") == NO_SOURCE_YET

    # a photo without a face: the server's own message is shown, nothing else breaks, Start stays disabled
    blank = write_image(tmp_path / "blank.png", np.full((240, 320, 3), 128, np.uint8))
    page.set_input_files("#source-file", str(blank))
    page.wait_for_selector("#source-status[data-kind=error]", timeout=20_000)
    assert "no face" in page.text_content("#source-status")
    assert page.is_disabled("#start")
    page.screenshot(path=str(artifacts / "source-no-face.png"))

    # a real face instead (the refused photo removed): the page reads /api/info again, and Start is enabled
    page.click('li.source-photo[data-name="blank.png"] .remove')
    page.set_input_files("#source-file", str(write_image(tmp_path / "astronaut.png", astronaut())))
    page.wait_for_selector("#source-status[data-kind=ok]", timeout=20_000)
    assert page.text_content('li.source-photo[data-name="astronaut.png"] .photo-status').startswith("1 face found")
    assert page.is_visible('li.source-photo[data-name="astronaut.png"] .face-box')
    page.wait_for_selector("#start:enabled", timeout=5_000)
    assert page.text_content("#start-reason") == ""

    t_start = time.monotonic()
    assert not page.is_checked("#measure"), "glass-to-glass must be off until the user measures"
    session_id = start_live(page)
    page.wait_for_function("window.dancecam.status().latency.frames >= 15", timeout=30_000)
    first_frames_s = time.monotonic() - t_start

    before = np.array(page.evaluate(SAMPLE_RETURNED))
    page.wait_for_timeout(700)
    after = np.array(page.evaluate(SAMPLE_RETURNED))
    assert before.std() > 10, "the returned video is flat: no picture came back"
    assert np.abs(after - before).mean() > 1.0, "the returned video does not change"

    # not measuring: no code in what the page sends nor in what comes back, and the overlay says how to turn it on
    assert stamps_seen(page, "#send-canvas") == [None] * 5
    assert stamps_seen(page, "#remote") == [None] * 5
    assert status(page)["latency"]["read"] == 0
    page.wait_for_function("document.querySelector('#overlay [data-stat=\"g2g\"]').textContent.startsWith('off')")
    assert "measure glass-to-glass" in stat(page, "g2g")

    # measuring: the code goes out and comes back, and glass-to-glass numbers appear
    page.check("#measure")
    page.wait_for_function("window.dancecam.status().latency.n >= 20", timeout=30_000)
    assert any(n is not None for n in stamps_seen(page, "#remote", frames=8)), "the stamp does not come back"
    page.wait_for_function(
        """() => {
          const t = (k) => document.querySelector(`#overlay [data-stat="${k}"]`).textContent;
          return parseFloat(t('fps_client')) > 0 && parseFloat(t('fps_out')) > 0 && t('g2g').includes('ms')
            && t('server_latency').includes('ms') && document.querySelectorAll('#overlay tbody tr').length > 0;
        }""",
        timeout=10_000,
    )
    latency = status(page)["latency"]
    assert latency["read"] > 0, latency
    assert 0 < latency["p50"] <= latency["p95"], latency
    assert re.fullmatch(r"\d+(\.\d)? ms / \d+(\.\d)? ms", stat(page, "g2g")), stat(page, "g2g")
    stats = server.get(f"/api/stats?session={session_id}")["sessions"][0]
    # every packet on loopback: the pair the server uses, and the one Chromium selected (it hides its own
    # address in its stats, so only the remote end is read there)
    route = stats["media_route"]
    assert ice.all_loopback([route["local"].rsplit(":", 1)[0], route["remote"].rsplit(":", 1)[0]]), route
    assert page.evaluate(SELECTED_REMOTE) == "127.0.0.1"
    assert stats["fps_out"] > 0, stats
    assert stats["counters"]["pipeline_errors"] == 0, stats

    # a setting changed while live reaches the session
    page.select_option("#set-face-mode", "largest")
    page.wait_for_selector("#settings-status[data-kind=ok]", timeout=10_000)
    assert server.get(f"/api/settings?session={session_id}")["face_mode"] == "largest"
    assert server.get("/api/settings")["face_mode"] == "all", "the defaults for new sessions must stay"

    # another frame rate while live: the page swaps its outgoing track without renegotiating
    read = status(page)["latency"]["read"]
    page.select_option("#fps", "24")
    page.wait_for_selector("#camera-status[data-kind=ok]", timeout=15_000)
    page.wait_for_function(f"window.dancecam.status().latency.read >= {read + 20}", timeout=15_000)
    assert status(page)["connection"] == "connected"

    page.wait_for_timeout(1200)  # one more stats poll, so the screenshot shows the overlay filled in
    page.screenshot(path=str(artifacts / "live.png"))
    page.screenshot(path=str(artifacts / "live-full.png"), full_page=True)

    # measuring off: the very next outgoing frames carry no code
    page.uncheck("#measure")
    assert stamps_seen(page, "#send-canvas", frames=3) == [None] * 3
    page.wait_for_function("document.querySelector('#overlay [data-stat=\"g2g\"]').textContent.startsWith('off')")

    # a hidden overlay is not drawn at all, while the stats keep coming; shown again, it is drawn at once
    page.uncheck("#show-overlay")
    assert page.is_hidden("#overlay")
    renders = status(page)["overlay"]["renders"]
    page.wait_for_timeout(2500)
    assert status(page)["overlay"]["renders"] == renders
    page.check("#show-overlay")
    assert page.is_visible("#overlay")
    page.wait_for_function(f"window.dancecam.status().overlay.renders > {renders}", timeout=3_000)

    page.click("#stop")
    page.wait_for_function("window.dancecam.status().connection === 'idle'", timeout=10_000)
    assert server.wait_no_sessions() == [], "stop did not end the server's session"
    assert status(page)["error"] is None
    assert console.unexpected(422) == [], console.errors
    summary = {
        "first_frames_s": round(first_frames_s, 2),
        "g2g_p50_ms": round(latency["p50"], 1),
        "g2g_p95_ms": round(latency["p95"], 1),
        "server_latency_ms": stats["server_latency_ms"],
        "fps_out": stats["fps_out"],
        "test_s": round(time.monotonic() - started, 1),
    }
    (artifacts / "live-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    page.context.close()


def test_overlay_choice_survives_reload(browser: Browser, identity_server: Server) -> None:
    page, console = open_page(browser, identity_server.page_url)
    page.wait_for_selector("#start:enabled", timeout=15_000)
    assert page.is_checked("#show-overlay"), "the overlay is shown by default"
    page.focus("#show-overlay")
    page.keyboard.press("Space")  # the keyboard alone hides it
    assert not page.is_checked("#show-overlay")
    assert page.get_attribute("#overlay", "hidden") is not None
    page.reload()
    page.wait_for_selector("#start:enabled", timeout=15_000)
    assert not page.is_checked("#show-overlay"), "hiding the overlay is remembered"
    assert page.get_attribute("#overlay", "hidden") is not None
    page.focus("#show-overlay")
    page.keyboard.press("Space")
    page.reload()
    page.wait_for_selector("#start:enabled", timeout=15_000)
    assert page.is_checked("#show-overlay")
    assert page.get_attribute("#overlay", "hidden") is None
    assert console.unexpected() == [], console.errors
    page.context.close()


def ended_text(server_error: str) -> str:
    """What the page shows for the error text of the server's 404 on an ended session."""
    if server_error.lower().startswith("the session ended"):
        return server_error[0].upper() + server_error[1:]
    return f"The server ended this session: {server_error}"


def test_session_ended_by_the_server_says_why(browser: Browser, identity_server: Server, artifacts: Path) -> None:
    server = identity_server
    page, console = open_page(browser, server.page_url)
    session_id = start_live(page)
    page.wait_for_function("window.dancecam.status().latency.frames >= 5", timeout=30_000)

    # the session ends without the user pressing Stop (here: another client ends it)
    assert server.call(f"/api/sessions/{session_id}", method="DELETE")[0] == 204
    code, body = server.call(f"/api/stats?session={session_id}")
    assert code == 404, (code, body)
    page.wait_for_selector("#error", state="visible", timeout=10_000)
    assert page.text_content("#error-text") == ended_text(body["error"])
    page.wait_for_function("window.dancecam.status().connection === 'idle'", timeout=5_000)
    assert page.evaluate(PREVIEW_PLAYING), "the camera preview must keep running"
    assert page.is_enabled("#start")
    assert page.is_disabled("#stop")
    page.screenshot(path=str(artifacts / "session-ended.png"))
    assert console.unexpected(404) == [], console.errors
    page.context.close()


def outline_pixels(rgb: np.ndarray) -> float:
    """The share of a frame's pixels in the colours `draw_boxes` outlines faces with (green: swapped, orange: not)."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    green = (g > 150) & (r < 110) & (b < 110)
    orange = (r > 180) & (g > 100) & (g < 200) & (b < 80)
    return float((green | orange).mean())


def test_faces_counts_and_boxes_option(browser: Browser, identity_server: Server, artifacts: Path) -> None:
    server = identity_server
    page, console = open_page(browser, server.page_url, viewport=PHONE)  # and a look at a live phone screen
    assert not page.is_checked("#set-draw-boxes"), "boxes are off by default"
    session_id = start_live(page)

    # one face in the camera clip: the overlay shows the server's counts of the latest frame
    page.wait_for_function(
        "parseInt(document.querySelector('#overlay [data-stat=faces_tracked]').textContent) >= 1", timeout=15_000
    )
    faces = server.get(f"/api/stats?session={session_id}")["sessions"][0]["faces"]
    assert faces["detected"] >= 1, faces
    assert faces["tracked"] >= 1, faces
    cells = [stat(page, f"faces_{k}") for k in ("detected", "tracked", "swapped")]
    assert all(c.isdigit() for c in cells), cells
    without = max(outline_pixels(grab(page, "#remote")) for _ in range(3))

    # "draw boxes": the server outlines the tracked face in the video it sends back
    page.check("#set-draw-boxes")
    page.wait_for_selector("#settings-status[data-kind=ok]", timeout=10_000)
    assert server.get(f"/api/settings?session={session_id}")["draw_boxes"] is True
    deadline = time.monotonic() + 10
    while (drawn := outline_pixels(grab(page, "#remote"))) < 0.004 and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert without < 0.001, f"outline colours before boxes were asked for: {without:.4f}"
    assert drawn >= 0.004, f"no face outline in the returned video: {drawn:.4f}"

    page.wait_for_timeout(1200)  # one more stats poll for the screenshot
    page.screenshot(path=str(artifacts / "live-phone.png"), full_page=True)
    assert_fits(page)
    page.set_viewport_size(DESKTOP)
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(1200)
    page.screenshot(path=str(artifacts / "live-boxes.png"))
    page.click("#stop")
    page.wait_for_function("window.dancecam.status().connection === 'idle'", timeout=10_000)
    assert console.unexpected() == [], console.errors
    page.context.close()
