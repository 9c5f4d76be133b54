"""FFmpeg's own WHIP muxer publishing to DanceCam's /whip on 127.0.0.1, the swapped video pulled back over WHEP.

Two FFmpegs, each in a process of its own: PyAV's (libavformat with GnuTLS: tests/realtime/pyav_whip.py) and,
where imageio-ffmpeg is installed, an `ffmpeg` command line built with OpenSSL. FFmpeg offers no ICE candidate of
its own: it sends from one socket to the candidates of our answer, which are 127.0.0.1 (ServeOptions), so its
packets stay on loopback; each test checks the offer and the address the media came from.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from engines.mtcnn import MTCNN
from realtime.live import stamp, transport
from realtime.live.session import LiveServices
from tests import faces
from tests.live_client import Client, face_frame, wait_for, whep
from tests.realtime.live_fixtures import Live, live_server

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 6.0  # what a publisher sends; DTLS takes about a second of it (FFmpeg answers the second ClientHello)
TOKEN = "ffmpeg-whip-test-token-0123456789"  # a token as `serve --token` takes it (16 characters or more)


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN("cpu")


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return face_frame(faces.astronaut()[40:440, 56:456])  # what tests/realtime/pyav_whip.py sends


@pytest.fixture
async def live(detector: MTCNN, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Live]:
    async with live_server(LiveServices(torch.device("cpu"), detector, "identity"), token=TOKEN) as server:
        server.offers = record_offers(monkeypatch)  # type: ignore[attr-defined]
        yield server


def record_offers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every offer SDP the server is given from now on, as the client sent it."""
    offers: list[str] = []
    original = transport._offer

    def recording(sdp: object, *args: Any, **kw: Any) -> Any:
        offers.append(str(sdp))
        return original(sdp, *args, **kw)

    monkeypatch.setattr(transport, "_offer", recording)
    return offers


def p256_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate and its key as PEM files, what the README's openssl line makes."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ffmpeg-whip")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "whip-cert.pem", directory / "whip-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Publisher:
    """A publishing process; `done` once it exited, `output` its stdout and stderr."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.output = ""
        self._reader = asyncio.ensure_future(process.communicate())

    @property
    def done(self) -> bool:
        return self._reader.done()

    async def wait(self, timeout: float = SECONDS + 20) -> int:
        try:
            out, _ = await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except asyncio.TimeoutError:
            self.process.kill()
            out, _ = await self._reader
        self.output = out.decode(errors="replace")
        assert self.process.returncode is not None
        return self.process.returncode


async def start(*command: str | Path) -> Publisher:
    process = await asyncio.create_subprocess_exec(
        *map(str, command), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    return Publisher(process)


async def pyav_publisher(live: Live, *options: str | Path) -> Publisher:
    return await start(
        sys.executable, "-m", "tests.realtime.pyav_whip", f"{live.base}/whip", "--seconds", str(SECONDS), *options
    )


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


async def stats_of(live: Live, session_id: str) -> dict[str, Any]:
    status, stats = await live.json("GET", f"/api/stats?session={session_id}", headers=auth())
    assert status == 200, stats
    return stats["sessions"][0]


def assert_ffmpeg_on_loopback(live: Live, stats: dict[str, Any]) -> None:
    """FFmpeg offered no candidate off loopback, and its media came from 127.0.0.1."""
    # FFmpeg's muxer writes o=FFmpeg ... and s=FFmpegPublishSession; the other offer is our WHEP viewer's
    offers = [sdp for sdp in live.offers if "\ns=FFmpegPublishSession" in sdp]  # type: ignore[attr-defined]
    assert len(offers) == 1, live.offers  # type: ignore[attr-defined]
    candidates = re.findall(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) ", offers[0], re.MULTILINE)
    assert all(address.startswith("127.") for address in candidates), candidates
    route = stats["media_route"]
    assert route is not None, stats
    assert route["local"].startswith("127.0.0.1:"), route
    assert route["remote"].startswith("127.0.0.1:"), route


async def pull_and_check(live: Live, frame: np.ndarray, publisher: Publisher, stamped: bool = True) -> None:
    """The one WHIP session's swapped video pulled over WHEP: 30 frames or more (`stamped`: their numbers in
    order), the picture FFmpeg sent."""
    posted = await wait_for(lambda: len(live.manager.sessions) == 1 or publisher.done, timeout=15)
    assert posted, "FFmpeg did not post an offer"
    assert len(live.manager.sessions) == 1, f"no WHIP session; FFmpeg: {await publisher.wait()}, {publisher.output}"
    session_id = next(iter(live.manager.sessions))
    assert (await stats_of(live, session_id))["kind"] == "whip"
    async with aiohttp.ClientSession(headers=auth()) as http:  # the server was started with a token
        viewer: Client = await whep(http, live.base, query=f"?session={session_id}")
    try:
        got = viewer.received
        counted = (lambda: [n for n in got.numbers if n is not None]) if stamped else (lambda: got.images)
        await wait_for(lambda: len(counted()) >= 30 or publisher.done, timeout=20)
        why = live.manager.ended_reason(session_id)
        assert len(counted()) >= 30, f"{len(counted())} frames came back; the session ended: {why}"
        if stamped:
            assert counted() == sorted(counted())
        last = next(image for image in reversed(got.images) if image is not None)
        x0, y0, x1, y1 = stamp.stamp_region(frame.shape[1], frame.shape[0])
        diff = np.abs(last.astype(np.int16) - frame.astype(np.int16))
        diff[y0:y1, x0:x1] = 0
        assert diff.mean() < 6.0, diff.mean()  # H.264 in, VP8 out: the identity engine returns what came in
        assert_ffmpeg_on_loopback(live, await stats_of(live, session_id))
    finally:
        await viewer.close()


async def test_pyav_ffmpeg_publishes_with_a_p256_certificate(live: Live, frame: np.ndarray, tmp_path: Path) -> None:
    cert_file, key_file = p256_certificate(tmp_path)
    publisher = await pyav_publisher(live, "--token", TOKEN, "--cert-file", cert_file, "--key-file", key_file)
    try:
        await pull_and_check(live, frame, publisher)
    finally:
        code = await publisher.wait()
    assert code == 0, publisher.output
    assert await wait_for(lambda: not live.manager.sessions, timeout=5), "FFmpeg's DELETE did not end the session"


async def test_pyav_ffmpeg_with_its_own_certificate_is_told_what_to_change(live: Live) -> None:
    seen: set[str] = set()  # the session's id, noted while it lives (about a second)
    publisher = await pyav_publisher(live, "--token", TOKEN)
    await wait_for(lambda: seen.update(live.manager.sessions) or publisher.done, timeout=20)
    code = await publisher.wait()
    if code == 0:  # an FFmpeg that makes a P-256 certificate itself needs no workaround
        pytest.skip("this FFmpeg's own DTLS certificate is accepted: the -cert_file workaround is not needed")
    assert "DTLS" in publisher.output, publisher.output
    assert len(seen) == 1, seen
    reason = live.manager.ended_reason(seen.pop())
    assert reason is not None
    assert reason.startswith("the connection failed: the peer's DTLS certificate is on secp224r1"), reason
    assert "-cert_file and -key_file" in reason, reason


def ffmpeg_command_line() -> str:
    """The `ffmpeg` that imageio-ffmpeg ships (a static build with OpenSSL and the whip muxer), else a skip."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg (the dev extra) ships an ffmpeg")
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    muxers = subprocess.run([exe, "-hide_banner", "-muxers"], capture_output=True, text=True, timeout=30).stdout
    if not re.search(r"^\s*E\s+whip\b", muxers, re.MULTILINE):
        pytest.skip(f"{exe} has no whip muxer (FFmpeg 8 or later has)")
    return exe


async def test_ffmpeg_command_line_publishes_as_the_readme_says(live: Live, frame: np.ndarray, tmp_path: Path) -> None:
    exe = ffmpeg_command_line()
    picture = tmp_path / "face.png"
    assert cv2.imwrite(str(picture), np.ascontiguousarray(frame[:, :, ::-1]))
    publisher = await start(
        # the README's line, with a still picture for the camera (so the returned video can be compared)
        *(exe, "-hide_banner", "-loglevel", "warning", "-re", "-loop", "1", "-framerate", "30", "-i", picture),
        *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(SECONDS)),
        *("-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency", "-bf", "0", "-pix_fmt", "yuv420p"),
        *("-c:a", "libopus", "-ar", "48000", "-ac", "2"),
        *("-authorization", TOKEN, "-f", "whip", f"{live.base}/whip"),
    )
    try:
        await pull_and_check(live, frame, publisher, stamped=False)
    finally:
        code = await publisher.wait()
    assert code == 0, publisher.output
    assert await wait_for(lambda: not live.manager.sessions, timeout=5), "FFmpeg's DELETE did not end the session"
