"""Starting and ending sessions on a server that stays responsive: pipelines built off the event loop, the
backend activated before the session is accepted, and a session whose pipeline fails on every frame ended."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from engines.errors import CapacityError, EngineStartError
from engines.facedancer import FaceDancer, FaceDancerConfig
from engines.mtcnn import MTCNN
from engines.runners.base import RunnerBase, facedancer_io
from realtime.live.session import LiveServices, SessionManager
from realtime.pipeline.frame import FaceDancerSwap
from tests.live_client import StampedFaceTrack, offer, wait_for
from tests.realtime.live_fixtures import live_server


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN("cpu")


class SlowBuild(LiveServices):
    """Identity services whose pipelines take `delay` seconds to build (a blocking call, as a capture is)."""

    def __init__(self, detector: MTCNN, delay: float) -> None:
        super().__init__(torch.device("cpu"), detector, "identity")
        self.delay = delay
        self.threads: list[str] = []
        self.closed = 0

    def new_pipeline(self, settings: Any) -> Any:
        time.sleep(self.delay)
        self.threads.append(threading.current_thread().name)
        pipeline, version = super().new_pipeline(settings)
        close = pipeline.close

        def counted() -> None:
            self.closed += 1
            close()

        pipeline.close = counted  # type: ignore[method-assign]
        return pipeline, version


async def test_open_builds_off_the_loop_and_holds_its_place(detector: MTCNN) -> None:
    services = SlowBuild(detector, delay=0.5)
    manager = SessionManager(services, max_sessions=1)
    ticks: list[float] = []

    async def heartbeat() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    beat = asyncio.create_task(heartbeat())
    opening = asyncio.create_task(manager.open("offer"))
    await asyncio.sleep(0.1)
    with pytest.raises(CapacityError, match="limit of 1 session"):
        await manager.open("offer")  # the one being built holds the only place
    session = await opening
    beat.cancel()
    gaps = np.diff(ticks)
    assert gaps.max() < 0.2, gaps.max()  # the loop kept running through a 0.5 s build
    assert services.threads
    assert services.threads[0] != threading.current_thread().name
    assert manager.get(session.id) is session
    assert session.pipeline is not None
    session.pipeline.close()


async def test_cancelled_open_closes_what_it_built(detector: MTCNN) -> None:
    services = SlowBuild(detector, delay=0.3)
    manager = SessionManager(services, max_sessions=1)
    opening = asyncio.create_task(manager.open("offer"))
    await asyncio.sleep(0.05)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    with pytest.raises(CapacityError):  # the abandoned build still holds its place (and its device memory)
        await manager.open("offer")
    assert await wait_for(lambda: services.closed == 1, timeout=5)
    assert manager.sessions == {}
    session = await manager.open("offer")  # the place is free again
    assert session.pipeline is not None
    session.pipeline.close()


class FailingRunner(RunnerBase):
    """A backend whose activation fails, as a capture does when the device is out of memory."""

    backend = "cuda-graphs"
    precision = "fp16"

    def __init__(self) -> None:
        super().__init__()
        self.io = facedancer_io(16)
        self.device = torch.device("cpu")
        self.attempts = 0

    def _activate(self) -> None:
        self.attempts += 1
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def _infer(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise AssertionError("never activated, never run")


class FailingEngineServices(LiveServices):
    def __init__(self, detector: MTCNN) -> None:
        model = FaceDancer(FaceDancerConfig(widths=(4, 8, 8, 16, 16, 16, 16), mapping_width=16)).eval()
        super().__init__(torch.device("cpu"), detector, "identity")
        self.model = model
        self.runners: list[FailingRunner] = []

    def make_engine(self, source: Any, style: Any = None) -> FaceDancerSwap:
        self.runners.append(FailingRunner())
        return FaceDancerSwap(self.model, torch.zeros(512), self.runners[-1])


def test_a_backend_that_cannot_start_refuses_the_session(detector: MTCNN) -> None:
    services = FailingEngineServices(detector)
    manager = SessionManager(services, max_sessions=2)
    with pytest.raises(EngineStartError, match="the cuda-graphs backend could not start this session: CUDA out of"):
        manager.create("offer")
    assert manager.sessions == {}
    assert services.runners[0].attempts == 1
    assert services.runners[0].closed  # the pipeline built for it was closed, its runner with it


async def test_the_server_answers_503_when_the_backend_cannot_start(detector: MTCNN) -> None:
    async with live_server(FailingEngineServices(detector)) as live:
        track = StampedFaceTrack(np.zeros((480, 640, 3), np.uint8))
        with pytest.raises(RuntimeError, match=r"503: .*the cuda-graphs backend could not start this session"):
            await offer(live.http, live.base, track)
        track.stop()
        status, stats = await live.json("GET", "/api/stats")
        assert status == 200
        assert stats["sessions"] == []  # nothing half-started; the server goes on serving


class BrokenDetector:
    """A detector on a device that has failed for good (every call raises, as after an illegal address)."""

    device = torch.device("cpu")

    def __call__(self, image: torch.Tensor) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


async def test_a_session_whose_pipeline_fails_on_every_frame_is_ended(caplog: pytest.LogCaptureFixture) -> None:
    from tests import faces

    services = LiveServices(torch.device("cpu"), BrokenDetector(), "identity")  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="realtime.live.peers")  # where sessions start and end
    async with live_server(services) as live:
        track = StampedFaceTrack(faces.compose_faces(640, 480, seed=1)[0])
        client = await offer(live.http, live.base, track)
        try:
            assert await wait_for(lambda: not live.manager.sessions, timeout=20)
        finally:
            await client.close()
    ended = [r.getMessage() for r in caplog.records if "ended:" in r.getMessage()]
    assert ended, "the session was not ended"
    import re

    pattern = r"the pipeline failed on (\d+) frames in a row: RuntimeError: CUDA error: an illegal memory access"
    found = re.search(pattern, ended[0])
    assert found, ended[0]
    assert int(found.group(1)) >= 30  # the watchdog looks twice a second: at least the threshold
    dropped = [r for r in caplog.records if r.getMessage().startswith("frame dropped")]
    assert 1 <= len(dropped) <= 3  # logged for the first frames, not at the frame rate


async def test_an_offer_refused_before_its_video_closes_the_pipeline_built_for_it(detector: MTCNN) -> None:
    """The pipeline (with its backend already made ready) is built before negotiation: an offer refused for lack
    of video must not leave it for the garbage collector."""
    services = SlowBuild(detector, delay=0.0)
    async with live_server(services) as live:
        with pytest.raises(RuntimeError, match="400"):
            await offer(live.http, live.base, None, audio=True)
        assert await wait_for(lambda: services.closed == 1, timeout=5)
        assert live.manager.sessions == {}
