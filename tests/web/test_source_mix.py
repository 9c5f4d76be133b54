"""Identity mixing on the page, in a real Chromium against a real `dancecam serve --engine identity` (127.0.0.1).

Photos are added (several at once, and more later), weighted with a slider and removed; each change re-uploads the
set and the server's `GET /api/info` then lists exactly those photos with the normalised weights, and the page shows
the faces found per photo. All weights 0 sends nothing; a photo the server refuses shows its message as text and the
server keeps its identity; after a reload the page lists the server's photos by key and weight, on a 360 px phone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pytest

from tests.faces import Placement, astronaut, compose_faces
from tests.web.harness import DESKTOP, PHONE, Server, assert_fits, open_page, status, write_image

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Request, Route

pytestmark = pytest.mark.network

DEBOUNCE_S = 0.4  # web/source.js DEBOUNCE_MS


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real faces: the astronaut (512x512), her mirror image (384x384), two faces in one photo, and no face."""
    folder = tmp_path_factory.mktemp("source-photos")
    mirror = cv2.resize(np.ascontiguousarray(astronaut()[:, ::-1]), (384, 384), interpolation=cv2.INTER_AREA)
    two, _ = compose_faces(480, 360, (Placement(0.3, 0.5, 0.45), Placement(0.74, 0.45, 0.3)))
    images = {
        "astronaut.png": astronaut(),
        "mirror.png": mirror,
        "two-faces.png": two,
        "blank.png": np.full((240, 320, 3), 128, np.uint8),
    }
    return {name: write_image(folder / name, rgb) for name, rgb in images.items()}


def key(path: Path) -> str:
    """The identity engine's key of a photo: the SHA-256 of its file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card(name: str) -> str:
    return f'li.source-photo[data-name="{name}"]'


def source(page: Page) -> dict[str, Any]:
    return status(page)["source"]


def wait_uploaded(page: Page, uploads: int) -> None:
    """Until the page's `uploads`-th upload (or a later one) was answered and the page shows the server's set."""
    page.wait_for_function(
        f"(() => {{ const s = window.dancecam.status().source; return s.uploads >= {uploads} && s.synced; }})()",
        timeout=20_000,
    )


def server_weights(server: Server) -> dict[str, tuple[float, int]]:
    """The server's current photos: key -> (normalised weight, faces found)."""
    listed = server.get("/api/info")["source"]["photos"]
    return {p["key"]: (p["weight"], p["faces_found"]) for p in listed}


def add(page: Page, *files: Path) -> None:
    page.set_input_files("#source-file", [str(f) for f in files])


def open_mixer(browser: Browser, server: Server, viewport: dict[str, int] = DESKTOP) -> tuple[Page, Any]:
    page, console = open_page(browser, server.page_url, viewport=viewport)
    page.wait_for_selector("#source-status:not(:empty)", timeout=15_000)  # /api/info has been read
    return page, console


def test_weighted_photos_added_then_one_removed(
    browser: Browser, identity_server: Server, photos: dict[str, Path], artifacts: Path
) -> None:
    server = identity_server
    page, console = open_mixer(browser, server)
    add(page, photos["astronaut.png"])
    wait_uploaded(page, 1)
    assert server_weights(server) == {key(photos["astronaut.png"]): (1.0, 1)}

    add(page, photos["two-faces.png"])  # a second photo later: it joins the first
    wait_uploaded(page, 2)
    assert server_weights(server) == {key(photos["astronaut.png"]): (0.5, 1), key(photos["two-faces.png"]): (0.5, 2)}

    page.fill(f"{card('two-faces.png')} input[type=range]", "0.25")
    assert page.text_content("#source-status") == "Sending the new mix…", "a change shows at once"
    wait_uploaded(page, 3)
    assert server_weights(server) == {key(photos["astronaut.png"]): (0.8, 1), key(photos["two-faces.png"]): (0.2, 2)}
    # what the server found, per photo; the weights as set and as shares of the mix
    assert page.text_content(f"{card('astronaut.png')} .weight-value") == "1.00 · 80 %"
    assert page.text_content(f"{card('two-faces.png')} .weight-value") == "0.25 · 20 %"
    assert page.text_content(f"{card('astronaut.png')} .photo-status").startswith("1 face found")
    assert page.text_content(f"{card('two-faces.png')} .photo-status").startswith("2 faces found")
    assert "using the largest" in page.text_content(f"{card('two-faces.png')} .photo-status")
    assert page.is_visible(f"{card('astronaut.png')} .face-box")
    assert page.text_content("#source-status") == "The server swaps in a mix of these 2 photos now."
    assert page.is_hidden("#source-server"), "the photos shown are the server's: no second list"
    assert source(page)["uploads"] == 3, "one upload per change: a slider move is debounced"
    page.screenshot(path=str(artifacts / "source-mix.png"), full_page=True)

    page.click(f"{card('astronaut.png')} .remove")
    wait_uploaded(page, 4)
    assert server_weights(server) == {key(photos["two-faces.png"]): (1.0, 2)}
    assert page.locator("li.source-photo").count() == 1
    assert page.text_content("#source-status") == "The server swaps in this photo now."
    assert console.unexpected() == [], console.errors
    page.context.close()


def test_all_zero_and_refused_photos_keep_the_identity(
    browser: Browser, identity_server: Server, photos: dict[str, Path]
) -> None:
    server = identity_server
    page, console = open_mixer(browser, server)
    posts: list[Request] = []
    page.on("request", lambda r: posts.append(r) if r.method == "POST" and r.url.endswith("/api/source") else None)
    add(page, photos["astronaut.png"], photos["mirror.png"])  # two at once: one upload
    wait_uploaded(page, 1)
    both = {key(photos["astronaut.png"]): (0.5, 1), key(photos["mirror.png"]): (0.5, 1)}
    assert server_weights(server) == both
    assert len(posts) == 1

    # every weight 0: nothing is sent, the server keeps its identity and the page lists it
    page.fill(f"{card('astronaut.png')} input[type=range]", "0")
    page.fill(f"{card('mirror.png')} input[type=range]", "0")
    page.wait_for_timeout(int(3 * DEBOUNCE_S * 1000))
    text = page.text_content("#source-status")
    assert text.startswith("All weights are 0: give at least one photo a weight above 0. Nothing was sent: the"), text
    assert "the server keeps its current identity (2 photos, listed above)" in text
    assert page.get_attribute("#source-status", "data-kind") == "error"
    assert len(posts) == 1, "all-zero weights must not be sent"
    assert server_weights(server) == both
    assert page.is_visible("#source-server")
    assert page.locator("#source-server-list li").count() == 2

    # one weight back: only that photo is sent, the other is left out
    page.fill(f"{card('mirror.png')} input[type=range]", "0.6")
    wait_uploaded(page, 2)
    assert server_weights(server) == {key(photos["mirror.png"]): (1.0, 1)}
    assert page.text_content(f"{card('astronaut.png')} .photo-status") == "weight 0: left out of the mix"

    # a photo without a face: the server's message, verbatim; the photo is marked; the identity stays
    before = server.get("/api/info")["source"]["key"]
    add(page, photos["blank.png"])
    page.wait_for_selector(f"{card('blank.png')}[data-state=refused]", timeout=20_000)
    text = page.text_content("#source-status")
    assert text.startswith("Not used: no face found in source photo 2: use a photo where one face"), text
    assert text.endswith(". The server keeps its current identity (1 photo, listed above)."), text
    assert server.get("/api/info")["source"]["key"] == before
    assert page.is_visible("#source-server")

    # a refusal is shown as text, never as HTML
    message = "<b>weights</b> of `source photo 1` <img src=x onerror=window.hit=1>"

    def refuse(route: Route) -> None:
        route.fulfill(status=422, content_type="application/json", body=json.dumps({"error": message}))

    page.route("**/api/source", refuse)
    page.click(f"{card('blank.png')} .remove")
    page.wait_for_selector(f"{card('mirror.png')}[data-state=refused]", timeout=10_000)
    assert page.inner_text("#source-status").startswith("Not used: <b>weights</b> of source photo 1 <img src=x")
    assert page.locator("#source-status b, #source-status img").count() == 0
    assert page.evaluate("window.hit") is None
    assert server.get("/api/info")["source"]["key"] == before
    assert console.unexpected(422) == [], console.errors
    page.context.close()


def test_a_reload_lists_the_server_set_on_a_phone(
    browser: Browser, identity_server: Server, photos: dict[str, Path], artifacts: Path
) -> None:
    server = identity_server
    page, console = open_mixer(browser, server, viewport=PHONE)
    add(page, photos["astronaut.png"], photos["two-faces.png"])
    page.wait_for_selector(card("two-faces.png"))
    page.fill(f"{card('two-faces.png')} input[type=range]", "0.5")
    wait_uploaded(page, 1)
    held = server_weights(server)
    assert held == {key(photos["astronaut.png"]): (0.666667, 1), key(photos["two-faces.png"]): (0.333333, 2)}
    page.locator("#source-photos").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "source-mix-phone.png"))
    assert_fits(page)

    page.reload()
    page.wait_for_selector("#source-server", state="visible", timeout=15_000)
    assert page.locator("li.source-photo").count() == 0, "the page has no copies of the files after a reload"
    assert "keeps no copies of the photos after a reload" in page.text_content("#source-server-note")
    items = page.locator("#source-server-list li").all_text_contents()
    listed = server.get("/api/info")["source"]["photos"]
    assert len(items) == 2
    for item, photo in zip(items, listed, strict=True):
        assert f"weight {photo['weight']:.2f}" in item, item
        assert f"key {photo['key'][:12]}" in item, item
        assert f"{photo['width']}×{photo['height']}" in item, item
    assert sorted(i.split(" · ")[1] for i in items) == ["weight 0.33", "weight 0.67"]
    assert page.text_content("#source-status") == "Add photos to replace this set: the first upload replaces it."
    page.locator("#source-server").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "source-reloaded-phone.png"))
    assert_fits(page)

    add(page, photos["mirror.png"])  # replaces the server's set
    wait_uploaded(page, 1)
    assert server_weights(server) == {key(photos["mirror.png"]): (1.0, 1)}
    assert page.is_hidden("#source-server")
    assert console.unexpected() == [], console.errors
    page.context.close()
