"""Fixtures of the browser tests, shared by the whole tests/web run: one Chromium, one token-protected identity
server and one weightless facedancer server (each server starts in ~10 s on 2 cores).
Screenshots and logs go to $DANCECAM_TEST_ARTIFACTS/web, else to an `artifacts` folder under pytest's tmp path.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.web.harness import CHROMIUM, Server, chromium_args, serve
from tests.web.y4m import face_clip

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = os.environ.get("DANCECAM_TEST_ARTIFACTS")
    folder = Path(base) / "web" if base else tmp_path_factory.mktemp("artifacts") / "web"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def playwright() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install chromium; scripts/setup.sh --dev does it as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (scripts/setup.sh --dev)")
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def camera_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake camera: a looping clip of the astronaut's face moving, 640x480 at 30 fps."""
    return face_clip(tmp_path_factory.mktemp("camera") / "face.y4m", 640, 480, fps=30, seconds=2.0)


@pytest.fixture(scope="session")
def browser(playwright: Any, camera_clip: Path) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(camera_clip))
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture(scope="session")
def identity_server(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[Server]:
    """`dancecam serve --engine identity` with a token (on loopback too: every request of the page must carry it)."""
    home = tmp_path_factory.mktemp("identity-home")
    with serve(home, artifacts / "server-identity.log", "--engine", "identity", token=secrets.token_urlsafe(18)) as s:
        yield s


@pytest.fixture(scope="session")
def weightless_server(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[Server]:
    """`dancecam serve --engine facedancer` with an empty model directory: it serves, but cannot swap."""
    empty = tmp_path_factory.mktemp("no-models")
    home = tmp_path_factory.mktemp("weightless-home")
    log = artifacts / "server-no-weights.log"
    with serve(home, log, "--engine", "facedancer", "--model-dir", str(empty)) as s:
        yield s
