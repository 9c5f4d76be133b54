"""An aiortc client for the live server tests: sends real-face frames with a stamped frame number, records what
comes back. Stands in for the browser (POST /offer), OBS (WHIP) and a player (WHEP)."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack, VideoStreamTrack

from realtime.live import ice, stamp
from realtime.live.transport import rtc_configuration

VIDEO_CLOCK = 90_000


def face_frame(face: np.ndarray, width: int = 640, height: int = 480, shift: int = 0) -> np.ndarray:
    """The face photo centred on a plain grey-blue background, moved `shift` px to the right."""
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = (90, 100, 120)
    size = min(height - 40, face.shape[0])
    face = face[:size, :size] if face.shape[0] >= size else face
    y0 = (height - size) // 2
    x0 = (width - size) // 2 + shift
    frame[y0 : y0 + size, x0 : x0 + size] = face[:size, :size]
    return frame


class StampedFaceTrack(VideoStreamTrack):
    """`fps` frames per second of `frame`, each stamped with its number; send time and pts kept per number."""

    def __init__(self, frame: np.ndarray, fps: float = 30.0) -> None:
        super().__init__()
        self.frame = frame
        self.fps = fps
        self.number = 0
        self.sent: dict[int, float] = {}  # frame number → perf_counter when handed to the encoder
        self.pts: dict[int, int] = {}
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.perf_counter()
        due = self._start + self.number / self.fps
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        image = self.frame.copy()
        stamp.stamp(image, self.number)
        out = av.VideoFrame.from_ndarray(image, format="rgb24")
        out.pts = int(self.number * VIDEO_CLOCK / self.fps)
        out.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent[self.number] = time.perf_counter()
        self.pts[self.number] = out.pts
        self.number += 1
        return out


@dataclass
class Received:
    images: list[np.ndarray] = field(default_factory=list)
    numbers: list[int | None] = field(default_factory=list)
    pts: list[int | None] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    audio_frames: int = 0


async def collect(track: MediaStreamTrack, into: Received, keep_images: int = 120) -> None:
    """Read a remote track until it ends, decoding each video frame's stamp."""
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            if isinstance(frame, av.AudioFrame):
                into.audio_frames += 1
                continue
            image = frame.to_ndarray(format="rgb24")
            into.arrived.append(time.perf_counter())
            into.numbers.append(stamp.read(image))
            into.pts.append(frame.pts)
            into.images.append(image)
            if len(into.images) > keep_images:
                into.images[-keep_images - 1] = None  # type: ignore[call-overload]


@dataclass
class Client:
    pc: RTCPeerConnection
    received: Received
    session: str | None = None
    location: str | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _wire(pc: RTCPeerConnection, received: Received, tasks: list[asyncio.Task[Any]]) -> None:
    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        tasks.append(asyncio.ensure_future(collect(track, received)))


async def _local_offer(pc: RTCPeerConnection) -> str:
    with ice.host_addresses(ice.LOOPBACK):  # media on loopback only, like the test servers (ServeOptions)
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers candidates before returning
    return pc.localDescription.sdp


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def offer(
    http: aiohttp.ClientSession,
    base: str,
    video: MediaStreamTrack | None,
    audio: bool = False,
    settings: dict[str, Any] | None = None,
    token: str | None = None,
) -> Client:
    """Connect like the browser page: send video (and audio), receive the swapped stream back."""
    pc = RTCPeerConnection(rtc_configuration())
    received, tasks = Received(), []
    _wire(pc, received, tasks)
    if video is not None:
        pc.addTrack(video)
    if audio:
        pc.addTrack(AudioStreamTrack())
    body = {"sdp": await _local_offer(pc), "type": "offer", "settings": settings or {}}
    async with http.post(f"{base}/offer", json=body, headers=_headers(token)) as r:
        answer = await r.json()
        if r.status != 200:
            await pc.close()
            raise RuntimeError(f"{r.status}: {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    return Client(pc, received, session=answer["session"], tasks=tasks)


async def whip(http: aiohttp.ClientSession, base: str, video: MediaStreamTrack, audio: bool = False) -> Client:
    """Publish like OBS: send-only, SDP in and out, a Location to DELETE."""
    pc = RTCPeerConnection(rtc_configuration())
    pc.addTransceiver(video, direction="sendonly")
    if audio:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    sdp = await _local_offer(pc)
    async with http.post(f"{base}/whip", data=sdp, headers={"Content-Type": "application/sdp"}) as r:
        text = await r.text()
        if r.status != 201:
            await pc.close()
            raise RuntimeError(f"{r.status}: {text}")
        location = r.headers["Location"]
        assert r.content_type == "application/sdp"
    await pc.setRemoteDescription(RTCSessionDescription(text, "answer"))
    return Client(pc, Received(), session=location.rsplit("/", 1)[-1], location=location)


async def whep(http: aiohttp.ClientSession, base: str, query: str = "", audio: bool = False) -> Client:
    """Play like a WHEP player: receive-only."""
    pc = RTCPeerConnection(rtc_configuration())
    received, tasks = Received(), []
    _wire(pc, received, tasks)
    pc.addTransceiver("video", direction="recvonly")
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    sdp = await _local_offer(pc)
    async with http.post(f"{base}/whep{query}", data=sdp, headers={"Content-Type": "application/sdp"}) as r:
        text = await r.text()
        if r.status != 201:
            await pc.close()
            raise RuntimeError(f"{r.status}: {text}")
        location = r.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(text, "answer"))
    return Client(pc, received, location=location, tasks=tasks)


async def wait_for(condition: Any, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(step)
    return bool(condition())
