"""The live server end to end: an aiortc client ↔ `dancecam serve`'s app on 127.0.0.1 (real sockets, real ICE,
VP8 both ways), with real faces and the real MTCNN."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
import torch

from engines.arcface import ArcFace, ArcFaceConfig
from engines.facedancer import facedancer
from engines.mtcnn import MTCNN
from realtime.live import stamp
from realtime.live.session import LiveServices
from tests import faces
from tests.live_client import StampedFaceTrack, face_frame, offer, wait_for, whep, whip
from tests.realtime.live_fixtures import Live, live_server

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN("cpu")


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return face_frame(faces.astronaut()[40:440, 56:456])


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    assert ok
    return data.tobytes()


@pytest.fixture
async def identity_live(detector: MTCNN) -> AsyncIterator[Live]:
    async with live_server(LiveServices(torch.device("cpu"), detector, "identity")) as live:
        yield live


def face_box_mask(shape: tuple[int, ...], box: np.ndarray, grow: float = 0.25) -> np.ndarray:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    mask = np.zeros(shape[:2], bool)
    mask[max(0, int(y0 - grow * h)) : int(y1 + grow * h), max(0, int(x0 - grow * w)) : int(x1 + grow * w)] = True
    return mask


async def stream(live: Live, frame: np.ndarray, seconds: float, **kw: Any) -> tuple[Any, StampedFaceTrack]:
    track = StampedFaceTrack(frame)
    client = await offer(live.http, live.base, track, **kw)
    await wait_for(lambda: len(client.received.images) >= 1, timeout=15)
    await asyncio.sleep(seconds)
    return client, track


async def test_identity_engine_returns_the_input_within_codec_tolerance(identity_live: Live, frame: np.ndarray) -> None:
    client, track = await stream(identity_live, frame, 2.0)
    try:
        got = client.received
        numbers = [n for n in got.numbers if n is not None]
        assert len(numbers) >= 20, f"only {len(numbers)} stamped frames came back"
        assert numbers == sorted(numbers)
        last = next(im for im in reversed(got.images) if im is not None)
        x0, y0, x1, y1 = stamp.stamp_region(640, 480)
        diff = np.abs(last.astype(np.int16) - frame.astype(np.int16))
        diff[y0:y1, x0:x1] = 0
        assert diff.mean() < 4.0, diff.mean()  # VP8 at aiortc's default bitrate
        # pts: the intervals between returned frames are the intervals between the input frames they came from
        # (FFmpeg's VP8 decoder sometimes reports a pts 2 ticks of 90 kHz early: 22 µs, not a frame)
        pairs = [(n, p) for n, p in zip(got.numbers, got.pts, strict=True) if n is not None and p is not None]
        n0, p0 = pairs[0]
        assert all(abs((p - p0) - (track.pts[n] - track.pts[n0])) <= 2 for n, p in pairs), pairs
    finally:
        await client.close()
    assert await wait_for(lambda: not identity_live.manager.sessions, timeout=5)


def random_facedancer_services(detector: MTCNN) -> LiveServices:
    torch.manual_seed(0)
    return LiveServices(
        torch.device("cpu"), detector, "facedancer", facedancer("config_c").eval(), ArcFace(ArcFaceConfig()).eval()
    )


async def test_random_facedancer_changes_the_face_and_not_the_background(detector: MTCNN, frame: np.ndarray) -> None:
    services = random_facedancer_services(detector)
    async with live_server(services) as live:
        status, body = await live.json("POST", "/offer", json={"sdp": "v=0", "type": "offer"})
        assert status == 409, body  # no source photo yet
        form = aiohttp.FormData()
        form.add_field("image", png(faces.astronaut()), filename="me.png", content_type="image/png")
        status, body = await live.json("POST", "/api/source", data=form)
        assert status == 200, body
        assert body["face"]["box"][2] > body["face"]["box"][0]
        client, _ = await stream(live, frame, 3.0, settings={"detect_every": 2})
        try:
            await wait_for(lambda: len([n for n in client.received.numbers if n is not None]) >= 4, timeout=20)
            last = next(im for im in reversed(client.received.images) if im is not None)
        finally:
            await client.close()
    found = detector(torch.from_numpy(frame))
    box = found.boxes[0].numpy()
    x0, y0, x1, y1 = stamp.stamp_region(640, 480)
    diff = np.abs(last.astype(np.int16) - frame.astype(np.int16)).mean(axis=2)
    diff[y0:y1, x0:x1] = 0
    face, background = diff[face_box_mask(frame.shape, box, grow=0.0)], diff[~face_box_mask(frame.shape, box, grow=0.6)]
    # at ~2 processed fps VP8 runs at a low quality: the background carries codec noise, the face a new face
    assert face.mean() > 12
    assert face.mean() > 3 * background.mean(), (face.mean(), background.mean())
    assert np.median(background) <= 8.0, "the background changed"  # codec noise: 3-6 grey levels here


async def test_overload_drops_frames_and_keeps_latency_bounded(detector: MTCNN, frame: np.ndarray) -> None:
    # 30 fps in, about 15 fps of processing: half the frames must drop, and the delay must not grow
    # the identity engine with 66 ms of simulated work per frame (`serve --engine identity --simulate-ms 66`)
    slow = LiveServices(torch.device("cpu"), detector, "identity", simulate_ms=66)
    async with live_server(slow) as live:
        client, track = await stream(live, frame, 6.0, settings={"detect_every": 120})
        try:
            got = client.received
            status, stats = await live.json("GET", f"/api/stats?session={client.session}")
        finally:
            await client.close()
    assert status == 200
    session = stats["sessions"][0]
    assert session["counters"]["dropped_frames"] > 30, session["counters"]
    rtts = [
        (arrived, (arrived - track.sent[n]) * 1e3)
        for n, arrived in zip(got.numbers, got.arrived, strict=True)
        if n is not None and n in track.sent
    ]
    assert len(rtts) > 30
    t0 = rtts[0][0]
    early = [ms for t, ms in rtts if t - t0 < 1.5]
    late = [ms for t, ms in rtts if t - t0 > 4.0]
    assert np.median(late) < 500, np.median(late)
    assert np.median(late) < np.median(early) + 150, (np.median(early), np.median(late))  # does not grow


async def test_whip_publish_and_whep_playback(identity_live: Live, frame: np.ndarray) -> None:
    live = identity_live
    track = StampedFaceTrack(frame)
    publisher = await whip(live.http, live.base, track, audio=True)
    try:
        assert publisher.location == f"/whip/{publisher.session}"
        assert await wait_for(lambda: live.manager.sessions.get(publisher.session) is not None, timeout=5)
        viewer = await whep(live.http, live.base, query=f"?session={publisher.session}", audio=True)
        try:
            assert viewer.location is not None
            assert viewer.location.startswith("/whep/")
            got = viewer.received
            assert await wait_for(lambda: len([n for n in got.numbers if n is not None]) >= 15, timeout=20)
            assert await wait_for(lambda: got.audio_frames > 10, timeout=10), "the audio did not pass through"
            status, stats = await live.json("GET", f"/api/stats?session={publisher.session}")
            assert status == 200
            assert stats["sessions"][0]["kind"] == "whip"
            assert stats["sessions"][0]["viewers"] == 1
            async with live.http.delete(live.base + viewer.location) as r:
                assert r.status == 204
            assert await wait_for(lambda: not live.manager.sessions[publisher.session].link.viewers, timeout=5)
        finally:
            await viewer.close()
        async with live.http.delete(live.base + publisher.location) as r:
            assert r.status == 204
        assert publisher.session not in live.manager.sessions
        async with live.http.delete(live.base + publisher.location) as r:
            assert r.status == 404  # already ended
    finally:
        await publisher.close()


async def test_settings_stats_metrics_and_audio_for_a_browser_session(identity_live: Live, frame: np.ndarray) -> None:
    live = identity_live
    client, _ = await stream(live, frame, 1.5, audio=True, settings={"detect_every": 3})
    try:
        sid = client.session
        assert await wait_for(lambda: client.received.audio_frames > 10, timeout=10), "no audio came back"
        # one face in the picture: detected, tracked and swapped, in the stats and the metrics
        status, stats = await live.json("GET", f"/api/stats?session={sid}")
        assert stats["sessions"][0]["faces"] == {"detected": 1, "tracked": 1, "swapped": 1}, stats["sessions"][0]
        assert stats["sessions"][0]["counters"]["faces_swapped"] > 0
        async with live.http.get(live.base + "/metrics") as r:
            assert f'dancecam_faces{{kind="offer",session="{sid}",state="swapped"}} 1.0' in await r.text()
        status, settings = await live.json("PUT", f"/api/settings?session={sid}", json={"draw_boxes": True})
        assert status == 200
        assert settings["draw_boxes"] is True
        status, settings = await live.json("GET", f"/api/settings?session={sid}")
        assert status == 200
        assert settings["detect_every"] == 3
        status, settings = await live.json(
            "PUT", f"/api/settings?session={sid}", json={"swap": False, "mask": "ellipse"}
        )
        assert status == 200
        assert settings["swap"] is False
        assert settings["mask"] == "ellipse"
        status, defaults = await live.json("GET", "/api/settings")
        assert defaults["swap"] is True  # the defaults for new sessions did not change
        await asyncio.sleep(0.5)
        status, stats = await live.json("GET", f"/api/stats?session={sid}")
        s = stats["sessions"][0]
        assert s["fps_in"] > 15
        assert s["fps_out"] > 10
        assert s["width"] == 640
        assert s["height"] == 480
        assert {"level", "name", "detect_every", "detect_scale", "max_faces"} <= set(s["degradation"])
        assert {"dropped_frames", "repeated_frames", "fail_closed"} <= set(s["counters"])
        assert {"detect", "align", "paste"} <= set(s["stages"])
        assert s["server_latency_ms"]["p50"] > 0
        async with live.http.get(live.base + "/metrics") as r:
            text = await r.text()
        assert r.status == 200
        assert "dancecam_sessions 1.0" in text
        assert f'dancecam_input_fps{{kind="offer",session="{sid}"}}' in text
        status, health = await live.json("GET", "/healthz")
        assert health == {"status": "ok", "version": health["version"], "sessions": 1}
        async with live.http.delete(f"{live.base}/api/sessions/{sid}") as r:
            assert r.status == 204
        assert not live.manager.sessions
    finally:
        await client.close()


@pytest.mark.gpu
async def test_a_cuda_session_returns_what_the_cpu_session_returns(frame: np.ndarray) -> None:
    """The server on CUDA (own stream and buffers per session, memory measured at start) against the CPU server."""
    from realtime.live import capacity

    results = {}
    for device in ("cpu", "cuda"):
        services = LiveServices(torch.device(device), MTCNN(device), "identity")
        cost = capacity.measure(services)
        assert cost.max_sessions >= 1
        if device == "cuda":
            assert cost.memory_mib > 0
        async with live_server(services) as live:
            client, _ = await stream(live, frame, 1.5, settings={"detect_every": 1})
            try:
                status, stats = await live.json("GET", f"/api/stats?session={client.session}")
                results[device] = next(im for im in reversed(client.received.images) if im is not None)
            finally:
                await client.close()
        assert status == 200
        assert stats["server"]["device"].startswith(device)
        assert stats["sessions"][0]["counters"]["pipeline_errors"] == 0
    diff = np.abs(results["cuda"].astype(np.int16) - results["cpu"].astype(np.int16))
    assert diff.mean() < 4.0, diff.mean()  # two VP8 encodes of the same frames


def test_services_load_converted_weights_and_choose_a_backend(tmp_path: Path) -> None:
    from tests.realtime.test_filemode import tiny_weights

    tiny_weights(tmp_path)
    services = LiveServices.load("facedancer", "cpu", tmp_path, backend="auto")
    assert services.ready
    assert services.backend in ("eager", "onnxruntime")
    assert services.backend_message is not None
    assert services.backend_message.startswith(f"backend auto: {services.backend} fp32")
    assert list((tmp_path / "compiled").glob("facedancer-*.onnx"))  # auto tried ONNX Runtime: its export is cached
    source = services.set_source(png(faces.astronaut()))
    assert list((tmp_path / "identities").glob("*.safetensors"))  # the source's identity is cached on disk
    engine = services.make_engine(source)
    try:
        assert engine.runner.backend == services.backend
        crops = torch.rand(2, 3, 256, 256) * 2 - 1
        out = engine(crops)
        assert out.shape == crops.shape
        assert float(out.abs().max()) <= 1.0
    finally:
        engine.close()
    missing = LiveServices.load("facedancer", "cpu", tmp_path / "empty")
    assert not missing.ready
    assert "dancecam models download facedancer_c_hq arcface_r50" in (missing.weights.command or "")
