"""What the browser tests share: `dancecam serve` in a subprocess on 127.0.0.1, Chromium's launch arguments, and
helpers that look at the page the way a user does (canvas grabs read with `realtime.stamp`, layout checks).

Every packet stays on loopback: the server offers ICE only 127.0.0.1, and Chromium runs with
--allow-loopback-in-peer-connection so that it offers its own 127.0.0.1 candidate too.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from realtime.live import stamp

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SERVER_START_S = 90.0  # imports torch and loads MTCNN: ~10 s on 2 cores
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 360, "height": 780}  # a small phone's CSS pixels
# Failed requests the tests provoke on purpose; Chromium logs each as a console error.
EXPECTED_HTTP_ERROR = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


def chromium_args(clip: Path) -> list[str]:
    """Chromium with a fake camera playing `clip`, its media on loopback."""
    return [
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
        "--disable-features=WebRtcHideLocalIpsWithMdns",  # no mDNS announcements of its host candidates
        "--allow-loopback-in-peer-connection",  # its 127.0.0.1 candidate: the media stay on loopback
    ]


# --- the server ---------------------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    token: str | None = None
    log: list[str] = field(default_factory=list)

    @property
    def page_url(self) -> str:
        """The address `dancecam serve` prints: the page, with its token in the fragment."""
        return f"{self.url}#token={self.token}" if self.token else self.url

    def call(self, path: str, method: str = "GET") -> tuple[int, Any]:
        """(status, JSON body) of an API request with the server's token; HTTP errors are returned, not raised."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(self.url.rstrip("/") + path, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
                return response.status, json.loads(body) if body else None
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def get(self, path: str) -> Any:
        status, body = self.call(path)
        assert status == 200, (path, status, body)
        return body

    def wait_no_sessions(self, seconds: float = 10.0) -> list[Any]:
        """The server's sessions once none are left, or whatever is left after `seconds`."""
        deadline = time.monotonic() + seconds
        while (sessions := self.get("/api/stats")["sessions"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        return sessions


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


# --- the page -----------------------------------------------------------------------------------------------------


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


def open_page(browser: Browser, url: str, viewport: dict[str, int] = DESKTOP, go: bool = True) -> tuple[Page, Console]:
    """A fresh context (its own localStorage) and page; `go=False` leaves the navigation to the caller."""
    context = browser.new_context(viewport=viewport)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url.split("/#")[0].rstrip("/"))
    page = context.new_page()
    console = Console()
    page.on("console", lambda m: console.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.errors.append(f"uncaught: {e}"))
    if go:
        page.goto(url)
    return page, console


def write_image(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def status(page: Page) -> dict[str, Any]:
    return page.evaluate("window.dancecam.status()")


def stat(page: Page, key: str) -> str:
    return page.text_content(f'#overlay [data-stat="{key}"]') or ""


def start_live(page: Page, timeout_ms: int = 20_000) -> str:
    """Press Start once the camera runs; the session id once the connection is up."""
    page.wait_for_selector("#camera-status[data-kind=ok]", timeout=15_000)
    page.wait_for_selector("#start:enabled", timeout=15_000)
    page.click("#start")
    page.wait_for_function("window.dancecam.status().connection === 'connected'", timeout=timeout_ms)
    return status(page)["session"]


# A <video> or <canvas> at its own size as a PNG data URL (null while it has no picture).
GRAB = """(selector) => {
  const el = document.querySelector(selector);
  const w = el.videoWidth || el.width, h = el.videoHeight || el.height;
  if (!w || !h) return null;
  const c = document.createElement('canvas');
  c.width = w; c.height = h;
  c.getContext('2d').drawImage(el, 0, 0, w, h);
  return c.toDataURL('image/png');
}"""


def grab(page: Page, selector: str) -> np.ndarray:
    """The picture `selector` (a video or canvas) shows, RGB uint8 at its own size."""
    url = page.evaluate(GRAB, selector)
    assert url, f"{selector} has no picture yet"
    png = base64.b64decode(url.split(",", 1)[1])
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def stamps_seen(page: Page, selector: str, frames: int = 5, gap_ms: int = 120) -> list[int | None]:
    """The frame-number codes `realtime.stamp.read` finds in `frames` grabs of `selector`, `gap_ms` apart."""
    out = []
    for _ in range(frames):
        out.append(stamp.read(grab(page, selector)))
        page.wait_for_timeout(gap_ms)
    return out


# Elements that stick out of the viewport on the right, and the page's scroll width: a phone must not scroll sideways.
WIDER_THAN_VIEWPORT = """() => {
  const width = window.innerWidth;
  const out = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (!r.width || !r.height || el.closest('.offscreen')) continue;
    if (r.right > width + 0.5) out.push(`${el.tagName.toLowerCase()}#${el.id}.${el.className} right=${r.right}`);
  }
  return { scrollWidth: document.documentElement.scrollWidth, innerWidth: width, wider: out };
}"""


def assert_fits(page: Page) -> None:
    """No element sticks out of the viewport on the right, and the page does not scroll sideways."""
    found = page.evaluate(WIDER_THAN_VIEWPORT)
    assert found["wider"] == [], found
    assert found["scrollWidth"] <= found["innerWidth"], found
