"""The aiortc glue, with in-memory tracks and no sockets: processed frames out with their input's pts and time base,
drops instead of queues under overload, never an unprocessed face, and a clean close."""

from __future__ import annotations

import asyncio
import threading

import av
import numpy as np
import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from engines.mtcnn import MTCNN
from realtime.live.transport import LiveSession, MarkerJitterBuffer, SwappedVideoTrack, decode_on_marker, drain
from realtime.pipeline.frame import FramePipeline, PipelineConfig
from realtime.pipeline.video import Frame
from tests import faces
from tests.fakes import TICKS_30FPS, VIDEO_TIME_BASE, FakeCamera, Painter, swapped_regions

TIME_BASE, TICKS = VIDEO_TIME_BASE, TICKS_30FPS


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, list[np.ndarray]]:
    """A 640x480 frame with faces, and a mask of each fully visible face's swapped region."""

    frame, placed = faces.compose_faces(640, 480)
    return frame, swapped_regions(placed, 640, 480)


def _assert_swapped(image: np.ndarray, regions: list[np.ndarray], pts: int) -> None:
    for region in regions:
        assert image[region].min() > 200, f"frame pts={pts} shows an unswapped face"


def _pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "transport-test"]


async def test_frames_come_back_processed_with_their_pts(detector: MTCNN, scene) -> None:  # type: ignore[no-untyped-def]
    image, regions = scene
    camera = FakeCamera(image, frames=90)
    tasks_before = asyncio.all_tasks()
    session = LiveSession(
        camera, FramePipeline(detector, Painter(), PipelineConfig(detect_every=5)), name="transport-test"
    )
    out: list[av.VideoFrame] = []
    try:
        for _ in range(8):
            out.append(await asyncio.wait_for(session.output.recv(), 10))
    finally:
        await session.close()
    assert asyncio.all_tasks() == tasks_before  # no drain, recv or stop-wait task left behind
    assert not _pipeline_threads()  # the worker thread has exited
    assert session.drain_task.done()
    pts = [f.pts for f in out]
    assert pts == sorted(pts)
    assert len(set(pts)) == len(pts)
    for frame in out:
        assert frame.time_base == TIME_BASE
        assert frame.pts in camera.sent  # fresh frames carry exactly their input's pts
        assert (frame.width, frame.height) == (640, 480)
        _assert_swapped(frame.to_ndarray(format="rgb24"), regions, frame.pts)
    with pytest.raises(MediaStreamError):
        await session.output.recv()  # closed


async def test_overload_drops_frames_never_shows_a_face_and_keeps_latency_bounded(detector: MTCNN, scene) -> None:  # type: ignore[no-untyped-def]
    """A 70 ms engine at 30 fps (over 2x overload): frames drop, the output repeats, latency stays bounded."""
    image, regions = scene
    camera = FakeCamera(image, frames=60)
    pipeline = FramePipeline(detector, Painter(delay_s=0.07), PipelineConfig(detect_every=5))
    session = LiveSession(camera, pipeline, repeat_after=0.04, name="transport-test")
    returned = []
    try:
        while not session.drain_task.done() or len(returned) < 5:
            frame = await asyncio.wait_for(session.output.recv(), 10)  # a consumer pulling as fast as it may
            assert session.output.last is not None
            returned.append((frame, session.output.last))
        await asyncio.sleep(0.3)  # let the last submitted frame finish
    finally:
        await session.close()
    counters = session.worker.counters()
    submitted = len(camera.sent)
    assert submitted == 60  # the drain kept up with the camera: nothing waited in aiortc's queue
    processed = max(p.sequence for _, p in returned)
    assert counters["dropped_frames"] > submitted // 3  # dropped, not queued
    assert counters["repeated_frames"] > 0  # the output repeated the last processed frame while waiting
    assert counters["dropped_frames"] + processed <= submitted
    for frame, _processed_frame in returned:
        _assert_swapped(frame.to_ndarray(format="rgb24"), regions, frame.pts)
        assert frame.time_base == TIME_BASE
    # latency: submission to end of processing is at most one frame waiting in the slot plus its own processing
    worst_processing = max(sum(p.result.stages_ms.values()) for _, p in returned)
    last = returned[-1][1]
    assert last.latency_ms < 3 * worst_processing, (last.latency_ms, worst_processing)
    assert max(p.latency_ms for _, p in returned) < 3 * worst_processing
    pts = [f.pts for f, _ in returned]
    assert pts == sorted(pts)
    assert len(set(pts)) == len(pts)


class Recorder:
    """A stand-in worker for the transport pieces that need no pipeline."""

    def __init__(self) -> None:
        self.submitted: list[tuple[object, object, float | None]] = []
        self.on_frame = None
        self.repeats = 0

    def submit(self, frame: Frame, t: float | None = None) -> None:
        assert frame.format == "yuv420p"  # decoded video goes on as packed yuv420p planes
        assert frame.data.shape == (72, 64)
        self.submitted.append((frame.pts, frame.time_base, frame.time if t is None else t))

    def count_repeat(self) -> None:
        self.repeats += 1


async def test_a_vanished_input_ends_the_drain_cleanly() -> None:
    camera = FakeCamera(np.zeros((48, 64, 3), np.uint8), frames=3, fps=1000)
    worker = Recorder()
    await asyncio.wait_for(drain(camera, worker), 5)  # type: ignore[arg-type]
    assert worker.submitted == [(k * TICKS, TIME_BASE, k * TICKS / 90000) for k in range(3)]
    assert camera.readyState == "ended"


async def test_stop_ends_a_drain_waiting_on_a_silent_track() -> None:
    class Silent(MediaStreamTrack):
        kind = "video"

        async def recv(self) -> av.VideoFrame:
            await asyncio.sleep(3600)
            raise AssertionError

    stop = asyncio.Event()
    before = asyncio.all_tasks()
    task = asyncio.create_task(drain(Silent(), Recorder(), stop))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert asyncio.all_tasks() == before


async def test_no_frame_before_the_first_processed_one() -> None:
    worker = Recorder()
    track = SwappedVideoTrack(worker, repeat_after=0.01)  # type: ignore[arg-type]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(track.recv(), 0.2)  # waits, never repeats nothing and never shows raw input
    track.stop()
    assert worker.on_frame is None


def _packet(seq: int, timestamp: int, marker: bool, payload: bytes) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=timestamp, marker=marker, payload=payload)
    packet._data = payload  # what aiortc's receiver stores after depayloading
    return packet


def test_a_video_frame_leaves_the_jitter_buffer_on_its_last_packet() -> None:
    ours, theirs = MarkerJitterBuffer(capacity=128, is_video=True), JitterBuffer(capacity=128, is_video=True)
    frame_one = [_packet(10, 3000, False, b"ab"), _packet(11, 3000, True, b"cd")]
    for buffer in (ours, theirs):
        assert buffer.add(frame_one[0])[1] is None
    released = ours.add(frame_one[1])[1]
    assert released is not None
    assert (released.data, released.timestamp) == (b"abcd", 3000)
    assert theirs.add(frame_one[1])[1] is None  # aiortc's own rule: wait for the next frame to begin
    # the next frame goes the same way, and nothing of the first one comes out twice
    assert ours.add(_packet(12, 6000, False, b"ef"))[1] is None
    released = ours.add(_packet(13, 6000, True, b"gh"))[1]
    assert released is not None
    assert released.data == b"efgh"


def test_an_incomplete_frame_is_not_released_on_its_marker() -> None:
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    assert buffer.add(_packet(20, 9000, False, b"a"))[1] is None
    # packet 21 is lost or late: the marker packet alone must not release a frame with a hole in it
    assert buffer.add(_packet(22, 9000, True, b"c"))[1] is None
    assert buffer.add(_packet(21, 9000, False, b"b"))[1] is None  # complete now, but not on its marker packet
    released = buffer.add(_packet(23, 12000, False, b"d"))[1]  # aiortc's own rule then releases it, whole
    assert released is not None
    assert released.data == b"abc"


def test_the_server_side_receiver_gets_the_marker_buffer() -> None:
    from aiortc import RTCPeerConnection

    async def check() -> bool:
        pc = RTCPeerConnection()
        transceiver = pc.addTransceiver("video", direction="recvonly")
        try:
            return decode_on_marker(transceiver.receiver)
        finally:
            await pc.close()

    assert asyncio.run(check()) is True
