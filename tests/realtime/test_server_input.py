"""Bad input to `dancecam serve`, each checked as a user meets it: a clear 4xx JSON error (or a log line), the
session cleaned up with nothing left running, and, in one combined test, another session streaming at the same time
that keeps receiving frames throughout.

Cases are plain async functions over a running server, so each runs alone (one test per case, a fresh server) and
all of them run together against a server with a healthy stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import struct
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from engines.mtcnn import MTCNN
from realtime.live import ice
from realtime.live.session import LiveSettings
from realtime.live.transport import rtc_configuration
from tests import faces
from tests.live_client import Client, StampedFaceTrack, face_frame, offer, wait_for
from tests.realtime.live_fixtures import Live, Reply, assert_clean, identity_services, live_server, session_name

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]
SDP = {"Content-Type": "application/sdp"}


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN("cpu")


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return face_frame(faces.astronaut()[40:440, 56:456])


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, np.ascontiguousarray(image[:, :, ::-1]))
    assert ok
    return data.tobytes()


def expect_error(reply: Reply, status: int, *words: str) -> str:
    """`reply` is a JSON error with `status` whose message contains each of `words` (case-insensitive)."""
    assert reply.status == status, (reply.status, reply.body[:300])
    message = reply.error
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    return message


# --- offers made by a real aiortc peer --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def local_offer(video: str | None = "sendrecv", audio: bool = False) -> AsyncIterator[str]:
    """The offer SDP of a real aiortc peer (video "sendrecv", "sendonly", "recvonly" or None; audio on or off),
    closed afterwards."""
    pc = RTCPeerConnection(rtc_configuration())
    try:
        if video is not None:
            track = StampedFaceTrack(np.zeros((48, 64, 3), np.uint8)) if video != "recvonly" else "video"
            pc.addTransceiver(track, direction=video)
        if audio:
            pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
        with ice.host_addresses(ice.LOOPBACK):
            await pc.setLocalDescription(await pc.createOffer())
        yield pc.localDescription.sdp
    finally:
        await pc.close()


def only_unsupported_video_codecs(sdp: str) -> str:
    """The offer with its video codecs renamed to ones aiortc does not have (AV1, VP9), as a browser that offers
    only those would send it; rtx stays, pointing at them."""
    out, kind = [], None
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split()[0]
        if kind == "video":
            line = re.sub(r"^(a=rtpmap:\d+) VP8/90000", r"\1 AV1/90000", line)
            line = re.sub(r"^(a=rtpmap:\d+) H264/90000", r"\1 VP9/90000", line)
            if line.startswith("a=fmtp:") and "profile-level-id" in line:
                line = line.split()[0] + " profile-id=0"
        out.append(line)
    return "\r\n".join(out) + "\r\n"


# --- images -----------------------------------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header says `width`x`height` (a decompression bomb's calling card)."""
    data = bytearray(encode(np.zeros((8, 8, 3), np.uint8)))
    ihdr = bytearray(data[12:29])  # type + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(np.zeros((8, 8, 3), np.uint8), ".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def upload(data: bytes, name: str = "image", filename: str = "me.png", kind: str = "image/png") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field(name, data, filename=filename, content_type=kind)
    return form


# --- the cases --------------------------------------------------------------------------------------------------

Case = Callable[[Live], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn

    return register


def sdp_case(name: str, body: Any, status: int, *words: str, route: str = "/offer", **kw: Any) -> None:
    async def run(live: Live) -> None:
        if route == "/offer":
            args = {"json": body} if not isinstance(body, bytes) else {"data": body, **kw}
        else:
            args = {"data": body, "headers": kw.get("headers", SDP)}
        expect_error(await live.call("POST", route, **args), status, *words)

    CASES[name] = run


JSON = {"headers": {"Content-Type": "application/json"}}
BINARY = bytes(range(256)) * 4
sdp_case("offer: garbage SDP", {"sdp": "hello, I am an offer", "type": "offer"}, 400, "SDP")
sdp_case("offer: empty SDP", {"sdp": "", "type": "offer"}, 400, "SDP")
sdp_case("offer: SDP lines in a wrong order", {"sdp": "v=0\r\nm=video\r\nc=IN\r\n", "type": "offer"}, 400, "SDP")
sdp_case("offer: empty body", b"", 400, "JSON", **JSON)
sdp_case("offer: binary body", BINARY, 400, "JSON", **JSON)
sdp_case("offer: plain SDP instead of JSON", b"v=0\r\n", 400, "JSON", headers={"Content-Type": "application/sdp"})
sdp_case("offer: JSON without sdp", {"type": "offer"}, 400, '"sdp"')
sdp_case("offer: JSON array", [1, 2, 3], 400, '"sdp"')
sdp_case("offer: sdp not a string", {"sdp": 5, "type": "offer"}, 400, '"sdp"')
sdp_case("offer: lone surrogate", b'{"sdp": "v=0\\r\\nm=video \\ud800", "type": "offer"}', 400, "SDP", **JSON)
sdp_case("offer: oversized SDP", {"sdp": "v=0\r\nm=video 9\r\n" + "a=x:" + "p" * 70_000, "type": "offer"}, 413, "large")
sdp_case("WHIP: garbage SDP", b"hello, I am an offer", 400, "SDP", route="/whip")
sdp_case("WHIP: empty SDP", b"", 400, "SDP", route="/whip")
sdp_case("WHIP: binary SDP", BINARY, 400, "UTF-8", route="/whip")
sdp_case("WHIP: JSON instead of SDP", b'{"sdp": "v=0"}', 415, "application/sdp", route="/whip", **JSON)
sdp_case("WHIP: oversized SDP", ("v=0\r\n" + "a=x:" + "p" * 70_000).encode(), 413, "large", route="/whip")


@case("offer: type answer")
async def _(live: Live) -> None:
    async with local_offer() as sdp:
        reply = await live.call("POST", "/offer", json={"sdp": sdp, "type": "answer"})
    expect_error(reply, 400, '"type": "offer"')


@case("offer: cut in half")
async def _(live: Live) -> None:
    async with local_offer() as sdp:
        reply = await live.call("POST", "/offer", json={"sdp": sdp[: len(sdp) // 2], "type": "offer"})
    expect_error(reply, 400, "offer")


@case("offer: audio only")
async def _(live: Live) -> None:
    async with local_offer(video=None, audio=True) as sdp:
        reply = await live.call("POST", "/offer", json={"sdp": sdp, "type": "offer"})
    expect_error(reply, 400, "no video")


@case("WHIP: audio only")
async def _(live: Live) -> None:
    async with local_offer(video=None, audio=True) as sdp:
        reply = await live.call("POST", "/whip", data=sdp, headers=SDP)
    expect_error(reply, 400, "no video")


@case("offer: video it only wants to receive")
async def _(live: Live) -> None:
    async with local_offer(video="recvonly") as sdp:
        reply = await live.call("POST", "/offer", json={"sdp": sdp, "type": "offer"})
    expect_error(reply, 400, "no video")


@case("offer: video it only sends (the page must get it back)")
async def _(live: Live) -> None:
    async with local_offer(video="sendonly", audio=True) as sdp:
        reply = await live.call("POST", "/offer", json={"sdp": sdp, "type": "offer"})
    expect_error(reply, 400, "sendrecv")


@case("offer: only unsupported video codecs")
async def _(live: Live) -> None:
    async with local_offer(audio=True) as sdp:
        munged = only_unsupported_video_codecs(sdp)
        assert "VP8" not in munged
        assert "H264" not in munged
        assert "AV1/90000" in munged
        reply = await live.call("POST", "/offer", json={"sdp": munged, "type": "offer"})
    expect_error(reply, 400, "no video codec in common", "VP8")


@case("WHIP: only unsupported video codecs")
async def _(live: Live) -> None:
    async with local_offer(video="sendonly") as sdp:
        reply = await live.call("POST", "/whip", data=only_unsupported_video_codecs(sdp), headers=SDP)
    expect_error(reply, 400, "no video codec in common", "VP8")


@case("offer: bad settings")
async def _(live: Live) -> None:
    async with local_offer() as sdp:
        reply = await live.call("POST", "/offer", json={"sdp": sdp, "type": "offer", "settings": {"detect_every": 0}})
    expect_error(reply, 422, "detect_every")


@case("WHEP: garbage SDP")
async def _(live: Live) -> None:
    newest = live.manager.newest()
    query = f"?session={newest.id}" if newest else ""
    reply = await live.call("POST", f"/whep{query}", data=b"hello", headers=SDP)
    if newest is None:
        expect_error(reply, 404, "no live session")
    else:
        expect_error(reply, 400, "SDP")
        assert not newest.link.viewers


@case("WHEP: an offer with no video")
async def _(live: Live) -> None:
    newest = live.manager.newest()
    async with local_offer(video=None, audio=True) as sdp:
        reply = await live.call("POST", "/whep", data=sdp, headers=SDP)
    if newest is None:
        expect_error(reply, 404, "no live session")
    else:
        expect_error(reply, 400, "no video")
        assert not newest.link.viewers


# uploads (the source photo)


@case("upload: text file")
async def _(live: Live) -> None:
    reply = await live.call("POST", "/api/source", data=upload(b"hello, I am a photo", filename="me.txt"))
    expect_error(reply, 422, "not a supported image", "PNG")


@case("upload: truncated PNG")
async def _(live: Live) -> None:
    data = encode(faces.astronaut())
    reply = await live.call("POST", "/api/source", data=upload(data[: len(data) // 2]))
    expect_error(reply, 422, "could not be decoded")


@case("upload: PNG header only")
async def _(live: Live) -> None:
    reply = await live.call("POST", "/api/source", data=upload(b"\x89PNG\r\n\x1a\n"))
    expect_error(reply, 422, "corrupt PNG")


@case("upload: decompression bomb PNG")
async def _(live: Live) -> None:
    reply = await live.call("POST", "/api/source", data=upload(png_claiming(60_000, 60_000)))
    expect_error(reply, 422, "60000x60000", "megapixels", "smaller")


@case("upload: decompression bomb JPEG")
async def _(live: Live) -> None:
    reply = await live.call("POST", "/api/source", data=upload(jpeg_claiming(60_000, 60_000), kind="image/jpeg"))
    expect_error(reply, 422, "60000x60000", "megapixels", "smaller")


@case("upload: zero-size image")
async def _(live: Live) -> None:
    reply = await live.call("POST", "/api/source", data=upload(png_claiming(0, 8)))
    expect_error(reply, 422, "0x8")


@case("upload: empty file")
async def _(live: Live) -> None:
    expect_error(await live.call("POST", "/api/source", data=upload(b"")), 400, "no photo")


@case("upload: no field named image")
async def _(live: Live) -> None:
    reply = await live.call("POST", "/api/source", data=upload(encode(faces.astronaut()), name="photo"))
    expect_error(reply, 400, "image")


@case("upload: not multipart")
async def _(live: Live) -> None:
    reply = await live.call(
        "POST", "/api/source", data=encode(faces.astronaut()), headers={"Content-Type": "image/png"}
    )
    expect_error(reply, 415, "multipart/form-data")


@case("upload: broken multipart")
async def _(live: Live) -> None:
    reply = await live.call(
        "POST", "/api/source", data=b"--x\r\nnonsense", headers={"Content-Type": "multipart/form-data; boundary=y"}
    )
    assert reply.status == 400, reply.body
    assert reply.error


@case("upload: no face")
async def _(live: Live) -> None:
    reply = await live.call("POST", "/api/source", data=upload(encode(np.full((240, 320, 3), 127, np.uint8))))
    expect_error(reply, 422, "no face")


# settings: 422, and nothing changed

BAD_SETTINGS: list[tuple[str, Any]] = [
    ("detect_every", 0),
    ("detect_every", 121),
    ("detect_every", "5"),
    ("detect_every", True),
    ("detect_every", 2.5),
    ("detect_every", None),
    ("max_faces", 0),
    ("max_faces", 17),
    ("face_mode", "x"),
    ("face_mode", None),
    ("mask", "none"),
    ("swap", "yes"),
    ("swap", 1),
    ("colour_transfer", None),
    ("target_fps", 0),
    ("target_fps", 1000),
    ("target_fps", -30),
    ("target_fps", "NaN"),
    ("target_fps", "30"),
    ("target_fps", [30]),
]


async def _settings_unchanged(live: Live, query: str, body: bytes, status: int, *words: str) -> None:
    before = await live.json("GET", f"/api/settings{query}")
    reply = await live.call("PUT", f"/api/settings{query}", data=body, headers={"Content-Type": "application/json"})
    expect_error(reply, status, *words)
    assert await live.json("GET", f"/api/settings{query}") == before


def _queries(live: Live) -> list[str]:
    """The defaults, and each running session's own settings."""
    return ["", *(f"?session={sid}" for sid in live.manager.sessions)]


@case("settings: out of range and wrong types")
async def _(live: Live) -> None:
    for query in _queries(live):
        for key, value in BAD_SETTINGS:
            await _settings_unchanged(live, query, json.dumps({key: value}).encode(), 422, key)


@case("settings: NaN and Infinity")
async def _(live: Live) -> None:
    for query in _queries(live):
        for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
            await _settings_unchanged(live, query, f'{{"target_fps": {literal}}}'.encode(), 422, "target_fps")


@case("settings: unknown key")
async def _(live: Live) -> None:
    for query in _queries(live):
        await _settings_unchanged(live, query, b'{"detect_evry": 5}', 422, "unknown setting", "detect_evry")
        await _settings_unchanged(live, query, b'{"__class__": 5}', 422, "unknown setting")


@case("settings: a good change next to a bad one")
async def _(live: Live) -> None:
    for query in _queries(live):  # all or nothing: swap must stay as it was
        await _settings_unchanged(live, query, b'{"swap": false, "detect_every": 0}', 422, "detect_every")


@case("settings: not an object")
async def _(live: Live) -> None:
    for query in _queries(live):
        await _settings_unchanged(live, query, b"[1, 2]", 422, "JSON object")
        await _settings_unchanged(live, query, b"5", 422, "JSON object")
        await _settings_unchanged(live, query, b"{swap: false}", 400, "not valid JSON")
        await _settings_unchanged(live, query, b"\xff\xfe", 400, "not valid JSON")


# sessions that do not exist


@case("unknown session id")
async def _(live: Live) -> None:
    async with local_offer(video="recvonly") as whep_offer:
        for method, path, kw in (
            ("GET", "/api/settings?session=nope", {}),
            ("PUT", "/api/settings?session=nope", {"json": {"swap": False}}),
            ("GET", "/api/stats?session=nope", {}),
            ("DELETE", "/api/sessions/nope", {}),
            ("DELETE", "/whip/nope", {}),
            ("DELETE", "/whep/nope", {}),
            ("POST", "/whep?session=nope", {"data": whep_offer, "headers": SDP}),
        ):
            expect_error(await live.call(method, path, **kw), 404, "no such")


@case("WHIP DELETE of a page session")
async def _(live: Live) -> None:
    for sid in list(live.manager.sessions):  # /whip/<id> ends WHIP sessions only
        expect_error(await live.call("DELETE", f"/whip/{sid}"), 404, "no such WHIP session")


# --- one test per case, each on a fresh server ------------------------------------------------------------------


@pytest.fixture
async def identity_live(detector: MTCNN) -> AsyncIterator[Live]:
    async with live_server(identity_services(detector), max_sessions=2) as live:
        yield live


@pytest.mark.parametrize("name", list(CASES))
async def test_bad_input(identity_live: Live, name: str) -> None:
    live = identity_live
    defaults = live.manager.defaults
    await CASES[name](live)
    await assert_clean(live)
    assert live.manager.defaults == defaults
    status, body = await live.json("GET", "/healthz")
    assert status == 200
    assert body["sessions"] == 0


# --- every case at a server with one healthy stream -------------------------------------------------------------


def stamped(client: Client) -> list[int]:
    return [n for n in client.received.numbers if n is not None]


async def test_every_bad_input_leaves_a_running_session_alone(detector: MTCNN, frame: np.ndarray) -> None:
    options = {"max_sessions": 4, "connect_timeout": 2.0, "idle_timeout": 2.0}
    async with live_server(identity_services(detector), **options) as live:
        client = await offer(live.http, live.base, StampedFaceTrack(frame), settings={"detect_every": 7})
        try:
            assert await wait_for(lambda: len(stamped(client)) >= 5, timeout=20)
            healthy = live.manager.sessions[client.session]
            settings = healthy.settings
            keep = {
                "keep_sessions": [client.session],
                "keep_names": [session_name(client.session)],
                "keep_pcs": [client.pc, healthy.link.pc],
            }
            timeline: list[tuple[str, int, float]] = []  # frames received, and the time, when each case was done
            start = time.perf_counter()
            for name, run in CASES.items():
                await run(live)
                await assert_clean(live, **keep)
                timeline.append((name, len(stamped(client)), round(time.perf_counter() - start, 2)))
            # a client that posts an offer and never connects, and one whose camera stops: gone on their own
            await _never_connects(live, **keep)
            timeline.append(("never connects", len(stamped(client)), round(time.perf_counter() - start, 2)))
            other, track = await _streaming(live, frame)
            try:
                track.stop()
                assert await wait_for(lambda: other.session not in live.manager.sessions, timeout=8)
                await assert_clean(live, **{**keep, "keep_pcs": [*keep["keep_pcs"], other.pc]})
            finally:
                await other.close()
            timeline.append(("camera stops", len(stamped(client)), round(time.perf_counter() - start, 2)))
            received = len(stamped(client))
            await asyncio.sleep(1.0)
            timeline.append(("a second later", len(stamped(client)), round(time.perf_counter() - start, 2)))

            assert healthy.settings == settings, "a bad settings change reached the running session"
            assert live.manager.sessions.keys() == {client.session}
            numbers = stamped(client)
            assert numbers == sorted(numbers)
            assert len(numbers) - received >= 10, timeline  # still streaming at the end (~30 fps sent)
            # no stall anywhere while the cases ran (the server's loop was never blocked for long; 2 s: loaded CI)
            arrived = np.asarray(client.received.arrived) - start
            gaps = np.diff(arrived)
            worst = int(np.argmax(gaps))
            assert gaps[worst] < 2.0, (f"no frame from {arrived[worst]:.2f} s to {arrived[worst + 1]:.2f} s", timeline)
            status, stats = await live.json("GET", f"/api/stats?session={client.session}")
            assert status == 200
            counters = stats["sessions"][0]["counters"]
            assert counters["pipeline_errors"] == 0, counters
            assert counters["fail_closed"] == 0, counters
            assert stats["sessions"][0]["settings"]["detect_every"] == 7
        finally:
            await client.close()
        await assert_clean(live)


# --- clients that go away ---------------------------------------------------------------------------------------


async def _never_connects(live: Live, **keep: Any) -> None:
    """Post a real offer, then never apply the answer: the server gives the session up after its connect_timeout."""
    pc = RTCPeerConnection(rtc_configuration())
    pc.addTransceiver(StampedFaceTrack(np.zeros((48, 64, 3), np.uint8)), direction="sendrecv")
    try:
        with ice.host_addresses(ice.LOOPBACK):
            await pc.setLocalDescription(await pc.createOffer())
        status, body = await live.json("POST", "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        assert status == 200, body
        assert body["session"] in live.manager.sessions
        timeout = live.app.options.connect_timeout
        gone = await wait_for(lambda: body["session"] not in live.manager.sessions, timeout=timeout + 5)
        assert gone, f"a session whose peer never connected was kept past {timeout} s"
        await assert_clean(live, **{**keep, "keep_pcs": [*keep.get("keep_pcs", []), pc]})
    finally:
        await pc.close()


async def test_a_client_that_never_connects_is_given_up(detector: MTCNN, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="realtime")
    async with live_server(identity_services(detector), connect_timeout=2.0) as live:
        await _never_connects(live)
    assert "the peer did not connect" in caplog.text


async def _streaming(live: Live, frame: np.ndarray) -> tuple[Client, StampedFaceTrack]:
    track = StampedFaceTrack(frame)
    client = await offer(live.http, live.base, track)
    assert await wait_for(lambda: len(stamped(client)) >= 3, timeout=20)
    return client, track


async def test_a_client_that_closes_its_connection_without_delete(
    detector: MTCNN, frame: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="realtime")
    async with live_server(identity_services(detector), idle_timeout=30.0) as live:
        client, _ = await _streaming(live, frame)
        await client.close()  # the tab closed: no DELETE; the idle timeout is far off, so the close itself must end it
        assert await wait_for(lambda: not live.manager.sessions, timeout=5), "the session outlived its peer"
        await assert_clean(live)
    assert re.search(r"session \S+ ended: the connection (closed|failed)", caplog.text), caplog.text


async def test_a_client_whose_camera_stops_is_ended(
    detector: MTCNN, frame: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="realtime")
    async with live_server(identity_services(detector), idle_timeout=2.0) as live:
        client, track = await _streaming(live, frame)
        try:
            track.stop()  # the camera went away; the connection stays up
            assert await wait_for(lambda: not live.manager.sessions, timeout=8), "a session without video was kept"
            await assert_clean(live, keep_pcs=[client.pc])
            # what the page sees: the server closed the connection
            assert await wait_for(lambda: client.pc.connectionState == "closed", timeout=5), client.pc.connectionState
        finally:
            await client.close()
    assert "ended: no video for 2 s" in caplog.text


VANISHING_CLIENT = """
import asyncio, sys
import aiohttp
from tests import faces
from tests.live_client import StampedFaceTrack, face_frame, offer, wait_for

async def main():
    async with aiohttp.ClientSession() as http:
        client = await offer(http, sys.argv[1], StampedFaceTrack(face_frame(faces.astronaut())))
        await wait_for(lambda: len(client.received.images) >= 3, timeout=30)
        print("streaming", client.session, flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_client_process_killed_mid_stream(detector: MTCNN, caplog: pytest.LogCaptureFixture) -> None:
    """No DELETE, no DTLS close, no RTCP BYE: the process is gone. Its slot is free again within 5 s, and the
    session says why it ended."""
    caplog.set_level(logging.INFO, logger="realtime")
    async with live_server(identity_services(detector), max_sessions=1) as live:  # the default idle timeout
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", VANISHING_CLIENT, live.base, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 90)).decode()
            assert line.startswith("streaming"), line
            session = line.split()[1]
            assert session in live.manager.sessions
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            killed = time.monotonic()
            assert await wait_for(lambda: session not in live.manager.sessions, timeout=8), "a dead peer's session"
            assert time.monotonic() - killed <= 5.0, f"the slot was held {time.monotonic() - killed:.1f} s"
            await assert_clean(live)
            reply = await live.call("GET", f"/api/stats?session={session}")
            assert reply.status == 404
            assert "the session ended: the peer went silent" in reply.error
            metrics = (await live.call("GET", "/metrics")).body.decode()
            assert 'dancecam_sessions_ended_by_cause_total{cause="silent"} 1.0' in metrics
            # with a limit of one, the next user gets in
            frame = face_frame(faces.astronaut())
            client, _ = await _streaming(live, frame)
            await client.close()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert re.search(r"session \S+ ended: the peer went silent: no packets for 3 s", caplog.text), caplog.text


# --- capacity ---------------------------------------------------------------------------------------------------


async def test_max_sessions_refuses_with_a_reason_and_frees_a_slot(detector: MTCNN, frame: np.ndarray) -> None:
    async with live_server(identity_services(detector), max_sessions=1) as live:
        first, _ = await _streaming(live, frame)
        second: Client | None = None
        try:
            async with local_offer() as sdp:
                reply = await live.call("POST", "/offer", json={"sdp": sdp, "type": "offer"})
                expect_error(reply, 503, "limit of 1 session", "try again")
            async with local_offer(video="sendonly") as sdp:
                expect_error(await live.call("POST", "/whip", data=sdp, headers=SDP), 503, "limit")
            await assert_clean(
                live,
                keep_sessions=[first.session],
                keep_names=[session_name(first.session)],
                keep_pcs=[first.pc, live.manager.sessions[first.session].link.pc],
            )
            _status, info = await live.json("GET", "/api/info")
            assert (info["sessions"], info["max_sessions"]) == (1, 1)
            # one ends: its slot is free at once
            assert (await live.call("DELETE", f"/api/sessions/{first.session}")).status == 204
            await first.close()
            second, _ = await _streaming(live, frame)
            assert live.manager.sessions.keys() == {second.session}
        finally:
            await first.close()
            if second is not None:
                await second.close()
        await assert_clean(live)


def test_default_settings_are_in_range() -> None:
    """The defaults a session starts with pass the same checks a PUT does."""
    assert LiveSettings().updated(LiveSettings().to_json()) == LiveSettings()
