"""The live run: the scenes streamed back to back at 30 fps by an aiortc client to the server (in this process, on
127.0.0.1, media on loopback only) with the anonymize engine; every returned frame is matched to the frame it came
from by its stamp (realtime/live/stamp.py) and scored like file mode's. Frames the session dropped are not scored.

Before each scene its first frame is held for `hold` seconds (not scored): a file starts with a detection, a live
stream that cuts to a new shot does not, and the benchmark measures faces that move in, not cuts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fractions
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack

from benchmarks.e2e_webrtc import Api, read_frame
from benchmarks.privacy.clips import Clip, SceneScore, score
from realtime.live import ice, stamp
from realtime.live.session import LiveSettings
from realtime.live.transport import decode_on_marker, rtc_configuration

CLOCK_RATE = 90_000
GRACE_S = 1.5  # quiet seconds after the last frame that end a session


def has_setting(name: str) -> bool:
    """Whether live sessions take this setting on this branch."""
    return name in {f.name for f in dataclasses.fields(LiveSettings)}


@dataclass
class Playlist:
    """What the client sends: (clip index, frame index, scored) per frame number."""

    items: list[tuple[int, int, bool]]

    @classmethod
    def of(cls, clips: list[Clip], hold_frames: int) -> Playlist:
        items: list[tuple[int, int, bool]] = []
        for c, clip in enumerate(clips):
            items += [(c, 0, False)] * hold_frames
            items += [(c, k, True) for k in range(clip.scene.frames)]
        return cls(items)


@dataclass
class Received:
    sent: dict[int, float] = field(default_factory=dict)  # frame number -> perf_counter when handed to the encoder
    arrived: dict[int, float] = field(default_factory=dict)
    luma: dict[int, np.ndarray] = field(default_factory=dict)  # frame number -> returned luma (uint8)
    unreadable: int = 0
    repeats: int = 0
    levels: list[int] = field(default_factory=list)  # degradation levels seen while streaming (polled)


class PlaylistTrack(VideoStreamTrack):
    """The playlist's frames at `fps` on an absolute schedule, each stamped with its number."""

    kind = "video"

    def __init__(self, frames: list[list[np.ndarray]], playlist: Playlist, fps: float, record: Received) -> None:
        super().__init__()
        self.frames, self.playlist, self.fps, self.record = frames, playlist, fps, record
        self.number = 0
        self.start: float | None = None
        self.done = asyncio.Event()

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        if self.number >= len(self.playlist.items):
            self.done.set()
            self.stop()
            raise MediaStreamError
        due = self.start + self.number / self.fps
        if due > now:
            await asyncio.sleep(due - now)
        c, k, _ = self.playlist.items[self.number]
        rgb = self.frames[c][k].copy()
        stamp.stamp(rgb, self.number)  # the top-left corner: no scene's face goes there
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = round(self.number * CLOCK_RATE / self.fps)
        frame.time_base = fractions.Fraction(1, CLOCK_RATE)
        self.record.sent[self.number] = time.perf_counter()
        self.number += 1
        return frame


async def _consume(track: MediaStreamTrack, record: Received) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        t = time.perf_counter()
        number = read_frame(frame)
        if number is None:
            record.unreadable += 1
            continue
        newest = len(record.sent) - 1  # the stamp is 16 bits: the newest frame sent with this number
        index = number + (newest - number) // stamp.MODULO * stamp.MODULO if number <= newest else None
        if index is None:
            record.unreadable += 1
        elif index in record.arrived:
            record.repeats += 1
        else:
            record.arrived[index] = t
            # the luma plane as it came (limited range): the leak test's correlation ignores gain and offset
            plane = frame.planes[0] if frame.format.name in ("yuv420p", "yuvj420p") else None
            if plane is not None:
                y = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
                record.luma[index] = y.copy()
            else:
                record.luma[index] = frame.to_ndarray(format="gray").copy()


async def _poll_levels(api: Api, session: str, record: Received, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(Exception):
            found = await api.call("GET", f"/api/stats?session={session}")
            if found.get("sessions"):
                record.levels.append(int(found["sessions"][0].get("degradation", {}).get("level", 0)))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


@dataclass
class LiveRun:
    scores: dict[str, SceneScore]
    round_trip_ms: list[float]
    sent: int
    returned: int
    repeats: int
    unreadable: int
    server: dict[str, Any]
    levels: list[int]


async def run_session(
    url: str, clips: list[Clip], frames: list[list[np.ndarray]], settings: dict[str, Any], fps: float, hold: int
) -> LiveRun:
    """One session streaming every clip once with `settings`; the returned frames scored per clip."""
    playlist = Playlist.of(clips, hold)
    record = Received()
    pc = RTCPeerConnection(rtc_configuration())
    track = PlaylistTrack(frames, playlist, fps, record)
    transceiver = pc.addTransceiver(track, direction="sendrecv")
    decode_on_marker(transceiver.receiver)  # decode on a frame's last packet, as browsers and the server do
    tasks: list[asyncio.Task[None]] = []
    connected = asyncio.Event()

    @pc.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        if remote.kind == "video":
            tasks.append(asyncio.create_task(_consume(remote, record)))

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    session = None
    stats: dict[str, Any] = {}
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        api = Api(http, url, None)
        try:
            with ice.host_addresses(ice.LOOPBACK):  # media on loopback only
                await pc.setLocalDescription(await pc.createOffer())
            body = {"sdp": pc.localDescription.sdp, "type": "offer", "settings": settings}
            for attempt in range(20):  # the previous session may still be ending
                try:
                    answer = await api.call("POST", "/offer", json=body)
                    break
                except RuntimeError as e:
                    if " 503 " not in str(e) or attempt == 19:
                        raise
                    await asyncio.sleep(0.5)
            session = answer["session"]
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            await asyncio.wait_for(connected.wait(), 20)
            tasks.append(asyncio.create_task(_poll_levels(api, session, record, stop)))
            await asyncio.wait_for(track.done.wait(), len(playlist.items) / fps + 60)
            last, quiet = len(record.arrived), time.perf_counter()
            while time.perf_counter() - quiet < GRACE_S:
                await asyncio.sleep(0.1)
                if len(record.arrived) != last:
                    last, quiet = len(record.arrived), time.perf_counter()
            with contextlib.suppress(Exception):
                found = await api.call("GET", f"/api/stats?session={session}")
                stats = found["sessions"][0] if found.get("sessions") else {}
        finally:
            stop.set()
            if session is not None:
                with contextlib.suppress(Exception):
                    await api.call("DELETE", f"/api/sessions/{session}")
            await pc.close()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    outputs: list[dict[int, np.ndarray]] = [{} for _ in clips]
    for number, (c, k, scored) in enumerate(playlist.items):
        if scored and number in record.luma:
            outputs[c][k] = record.luma[number]
    scores = {clip.name: score(clip, out) for clip, out in zip(clips, outputs, strict=True)}
    trips = [(record.arrived[n] - record.sent[n]) * 1e3 for n in record.arrived if n in record.sent]
    keep = ("server_latency_ms", "end_to_end", "counters", "degradation", "fps_in", "fps_out", "settings")
    return LiveRun(
        scores,
        trips,
        len(record.sent),
        len(record.arrived),
        record.repeats,
        record.unreadable,
        {k: stats[k] for k in keep if k in stats},
        record.levels,
    )
