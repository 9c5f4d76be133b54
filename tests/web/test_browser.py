"""The page in a real browser against a real `dancecam serve` on 127.0.0.1.

Chromium (Debian's /usr/bin/chromium, driven by Playwright) gets a fake camera that plays a y4m clip of a real face
(made in the test). The page uploads a source photo, starts a WebRTC session, and the test checks that processed
frames come back, that the frame-number stamp is read back into glass-to-glass numbers, that the stats overlay
fills in, that a setting reaches the server, that stop ends the session, and that nothing logs a console error. A
second server started with the facedancer engine and an empty model directory must make the page show the
missing-weights notice with the command to run.

Screenshots and server logs go to $DANCECAM_TEST_ARTIFACTS/web when that is set, else to an `artifacts` folder
under pytest's temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pytest

from realtime.live import ice
from tests.faces import astronaut
from tests.web.y4m import face_clip

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.network

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SERVER_START_S = 90.0  # imports torch and loads MTCNN: ~10 s on 2 cores
# Failed requests the tests provoke on purpose; Chromium logs each as a console error.
EXPECTED_HTTP_ERROR = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing (Debian: apt-get install chromium; scripts/setup.sh --dev does it as root)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (scripts/setup.sh --dev)")


# --- the server ---------------------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    token: str | None = None
    log: list[str] = field(default_factory=list)

    def get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(self.url.rstrip("/") + path, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log[-lines:])


@contextmanager
def serve(home: Path, log_path: Path, *args: str, token: str | None = None) -> Iterator[Server]:
    """`dancecam serve` in a subprocess on a free port of 127.0.0.1; stopped (and its log saved) on exit."""
    command = [sys.executable, "-m", "realtime", "serve", "--port", "0", "--device", "cpu", "--max-sessions", "2"]
    command += ["--ice-address", "127.0.0.1"]  # media on loopback only (Chromium runs with loopback allowed)
    command += [*args, *(["--token", token] if token else [])]
    env = {**os.environ, "DANCECAM_HOME": str(home), "COLUMNS": "400", "NO_COLOR": "1"}
    pipe = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    process = subprocess.Popen(command, cwd=ROOT, env=env, text=True, **pipe)
    log: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def drain() -> None:  # keep reading: a full pipe would stall the server
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line.rstrip("\n"))
            if not found.is_set() and (m := re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)):
                url.append(m.group(1))
                found.set()
        found.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        if not found.wait(SERVER_START_S) or not url:
            raise AssertionError("dancecam serve did not start:\n" + "\n".join(log[-40:]))
        yield Server(url[0], process, token, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        reader.join(5)
        log_path.write_text("\n".join(log) + "\n")


# --- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = os.environ.get("DANCECAM_TEST_ARTIFACTS")
    folder = Path(base) / "web" if base else tmp_path_factory.mktemp("artifacts") / "web"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    clip = face_clip(tmp_path_factory.mktemp("camera") / "face.y4m", 640, 480, fps=30, seconds=2.0)
    args = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--allow-loopback-in-peer-connection",  # its 127.0.0.1 candidate: the media stay on loopback
    ]
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Console:
    errors: list[str] = field(default_factory=list)

    def unexpected(self, *allowed_statuses: int) -> list[str]:
        """Console errors other than the failed requests (by HTTP status) a test provoked on purpose."""
        out = []
        for text in self.errors:
            m = EXPECTED_HTTP_ERROR.search(text)
            if m is None or int(m.group(1)) not in allowed_statuses:
                out.append(text)
        return out


def open_page(browser: Browser, url: str) -> tuple[Page, Console]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url.split("/#")[0].rstrip("/"))
    page = context.new_page()
    console = Console()
    page.on("console", lambda m: console.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.errors.append(f"uncaught: {e}"))
    page.goto(url)
    return page, console


def write_image(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


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


def stat(page: Page, key: str) -> str:
    return page.text_content(f'#overlay [data-stat="{key}"]') or ""


# --- tests --------------------------------------------------------------------------------------------------------


def test_live_session_round_trip(browser: Browser, artifacts: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    token = secrets.token_urlsafe(18)  # a token on loopback too: every fetch of the page must carry it
    with serve(tmp_path / "home", artifacts / "server-identity.log", "--engine", "identity", token=token) as server:
        page, console = open_page(browser, f"{server.url}#token={token}")
        page.wait_for_selector("#camera-status[data-kind=ok]", timeout=15_000)
        assert "640×480" in page.text_content("#camera-status"), page.text_content("#camera-status")
        assert "engine identity" in page.text_content("#server-info")

        # a photo without a face: the server's own message is shown, nothing else breaks
        blank = write_image(tmp_path / "blank.png", np.full((240, 320, 3), 128, np.uint8))
        page.set_input_files("#source-file", str(blank))
        page.wait_for_selector("#source-status[data-kind=error]", timeout=20_000)
        assert "no face" in page.text_content("#source-status")
        page.screenshot(path=str(artifacts / "source-no-face.png"))

        page.set_input_files("#source-file", str(write_image(tmp_path / "astronaut.png", astronaut())))
        page.wait_for_selector("#source-status[data-kind=ok]", timeout=20_000)
        assert "Face found" in page.text_content("#source-status")
        assert page.is_visible("#source-box")

        t_start = time.monotonic()
        page.click("#start")
        page.wait_for_function("window.dancecam.status().connection === 'connected'", timeout=20_000)
        # processed frames come back with their stamps: 20 glass-to-glass samples
        page.wait_for_function("window.dancecam.status().latency.n >= 20", timeout=30_000)
        first_frames_s = time.monotonic() - t_start

        before = np.array(page.evaluate(SAMPLE_RETURNED))
        page.wait_for_timeout(700)
        after = np.array(page.evaluate(SAMPLE_RETURNED))
        assert before.std() > 10, "the returned video is flat: no picture came back"
        assert np.abs(after - before).mean() > 1.0, "the returned video does not change"

        # the overlay: client fps, glass-to-glass, the server's numbers (polled once a second)
        page.wait_for_function(
            """() => {
              const t = (k) => document.querySelector(`#overlay [data-stat="${k}"]`).textContent;
              return parseFloat(t('fps_client')) > 0 && parseFloat(t('fps_out')) > 0 && t('g2g').includes('ms')
                && t('server_latency').includes('ms') && document.querySelectorAll('#overlay tbody tr').length > 0;
            }""",
            timeout=10_000,
        )
        status = page.evaluate("window.dancecam.status()")
        latency = status["latency"]
        assert latency["read"] > 0, latency
        assert 0 < latency["p50"] <= latency["p95"], latency
        assert re.fullmatch(r"\d+(\.\d)? ms / \d+(\.\d)? ms", stat(page, "g2g")), stat(page, "g2g")
        session_id = status["session"]
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
        read = page.evaluate("window.dancecam.status().latency.read")
        page.select_option("#fps", "24")
        page.wait_for_selector("#camera-status[data-kind=ok]", timeout=15_000)
        page.wait_for_function(f"window.dancecam.status().latency.read >= {read + 20}", timeout=15_000)
        assert page.evaluate("window.dancecam.status().connection") == "connected"

        page.wait_for_timeout(1200)  # one more stats poll, so the screenshot shows the overlay filled in
        page.screenshot(path=str(artifacts / "live.png"))
        page.screenshot(path=str(artifacts / "live-full.png"), full_page=True)

        page.click("#stop")
        page.wait_for_function("window.dancecam.status().connection === 'idle'", timeout=10_000)
        deadline = time.monotonic() + 10
        while server.get("/api/stats")["sessions"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.get("/api/stats")["sessions"] == [], "stop did not end the server's session"
        assert page.evaluate("window.dancecam.status().error") is None
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


def test_missing_weights_notice(browser: Browser, artifacts: Path, tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    log = artifacts / "server-no-weights.log"
    with serve(tmp_path / "home", log, "--engine", "facedancer", "--model-dir", str(empty)) as server:
        assert server.get("/api/info")["weights"]["ok"] is False
        page, console = open_page(browser, server.url)
        page.wait_for_selector("#weights-notice", state="visible", timeout=15_000)
        message = page.text_content("#weights-message")
        command = page.text_content("#weights-command")
        assert "missing" in (message or "").lower(), message
        # the form that works where the server was started (engines/command.py): here the venv's entry point
        assert "dancecam models download " in command, command
        assert "`" not in command, command

        page.click("#copy-command")
        page.wait_for_function("document.getElementById('copy-status').textContent !== ''", timeout=5_000)
        if page.text_content("#copy-status") == "Copied.":
            assert page.evaluate("navigator.clipboard.readText()") == command

        # starting anyway: the server refuses, and its reason is shown inline
        page.wait_for_selector("#camera-status[data-kind=ok]", timeout=15_000)
        page.click("#start")
        page.wait_for_selector("#error", state="visible", timeout=15_000)
        assert "Could not start" in page.text_content("#error-text")
        assert page.evaluate("window.dancecam.status().connection") == "idle"
        page.screenshot(path=str(artifacts / "weights-missing.png"), full_page=True)
        assert console.unexpected(503, 409) == [], console.errors
        page.context.close()
