"""The page against `dancecam serve --engine anonymize`: no source panel, Start enabled with no photo and no weights,
and the style a live setting the page changes mid-session; a swapping server shows no style at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.web.harness import Server, open_page, serve, start_live, status

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def anonymize_server(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("anonymize-home")
    with serve(home, artifacts / "server-anonymize.log", "--engine", "anonymize", "--style", "pixelate") as s:
        yield s


def test_the_page_hides_faces_and_changes_the_style_live(
    browser: Browser, anonymize_server: Server, artifacts: Path
) -> None:
    server = anonymize_server
    page, console = open_page(browser, server.page_url)
    page.wait_for_selector("#server-info:has-text('engine anonymize')", timeout=15_000)
    assert page.is_hidden("#source-panel")  # nothing to upload: this server puts no face in
    assert page.is_visible("#style-field")
    assert page.input_value("#set-style") == "pixelate"  # the server's --style
    session = start_live(page)  # no photo, no weights: Start works
    page.select_option("#set-style", "fill")
    page.wait_for_selector("#settings-status:has-text('Applied')", timeout=10_000)
    (stats,) = server.get(f"/api/stats?session={session}")["sessions"]
    assert stats["settings"]["style"] == "fill"
    page.screenshot(path=str(artifacts / "anonymize-fill.png"))
    page.click("#stop")
    page.wait_for_function("window.dancecam.status().connection === 'idle'", timeout=10_000)
    assert status(page)["error"] is None
    assert console.unexpected() == [], console.errors
    page.context.close()


def test_a_swapping_server_shows_no_style(browser: Browser, identity_server: Server) -> None:
    page, _ = open_page(browser, identity_server.page_url)
    page.wait_for_selector("#server-info:has-text('engine identity')", timeout=15_000)
    assert page.is_hidden("#style-field")
    assert page.is_visible("#source-panel")
    page.context.close()


def test_hiding_bystanders_shows_the_style_and_reaches_the_session(browser: Browser, anonymize_server: Server) -> None:
    page, console = open_page(browser, anonymize_server.page_url)
    page.wait_for_selector("#server-info:has-text('engine anonymize')", timeout=15_000)
    assert page.is_checked("#set-detect-on-change")  # the entry check: on by default
    assert not page.is_checked("#set-hide-bystanders")
    session = start_live(page)
    page.check("#set-hide-bystanders")
    page.wait_for_selector("#settings-status:has-text('Applied')", timeout=10_000)
    (stats,) = anonymize_server.get(f"/api/stats?session={session}")["sessions"]
    assert stats["settings"]["hide_bystanders"] is True
    page.click("#stop")
    page.wait_for_function("window.dancecam.status().connection === 'idle'", timeout=10_000)
    assert console.unexpected() == [], console.errors
    page.context.close()


def test_a_swapping_server_shows_the_style_for_its_bystanders(browser: Browser, identity_server: Server) -> None:
    page, _ = open_page(browser, identity_server.page_url)
    page.wait_for_selector("#server-info:has-text('engine identity')", timeout=15_000)
    assert page.is_hidden("#style-field")
    page.check("#set-hide-bystanders")
    assert page.is_visible("#style-field")  # how the bystanders are hidden
    page.uncheck("#set-hide-bystanders")
    assert page.is_hidden("#style-field")
    page.context.close()
