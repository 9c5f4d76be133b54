"""The session limit `serve` measures at start: robust, worded as what it is, never for an engine that cannot start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engines.arcface import ArcFace, ArcFaceConfig
from engines.facedancer import FaceDancer, FaceDancerConfig
from engines.mtcnn import MTCNN
from realtime.live import capacity
from realtime.live.session import LiveServices, SessionManager
from tests.realtime.live_fixtures import identity_services, live_server

HOG = "import time\nend = time.time() + 120\nwhile time.time() < end: pass\n"


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN("cpu")


def test_the_probe_session_does_a_sessions_whole_work(detector: MTCNN) -> None:
    found = capacity.measure(identity_services(detector))
    assert found.source == "measured"
    assert found.max_sessions >= 1
    assert len(found.runs_cpu_ms) == capacity.RUNS
    assert found.cpu_ms_per_frame is not None
    assert found.cpu_ms_per_frame > 0
    assert found.cores == capacity.cpu_cores()
    assert found.probe["faces"] == 1  # a real face: detection, tracking, alignment, paste all run
    assert found.probe["codec"] == "VP8 decode + encode"
    assert found.reason.startswith(f"{found.max_sessions} session")
    assert "ms of CPU per frame" in found.reason
    assert "median of 5 runs" in found.reason


def test_a_heavier_engine_costs_more(detector: MTCNN) -> None:
    torch.manual_seed(0)
    wide = FaceDancer(FaceDancerConfig(widths=(64, 64, 64, 64, 64, 64, 64), mapping_width=16)).eval()
    swapping = LiveServices(torch.device("cpu"), detector, "facedancer", wide, ArcFace(ArcFaceConfig()).eval())
    identity = capacity.measure(identity_services(detector), runs=3)
    heavy = capacity.measure(swapping, runs=3)
    assert heavy.cpu_ms_per_frame > identity.cpu_ms_per_frame + 5  # the swap of one face is part of the cost


def test_an_engine_that_cannot_start_is_not_estimated(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    services = LiveServices.load("facedancer", "cpu", tmp_path / "models", "eager", "mtcnn")
    found = capacity.measure(services)
    assert found.source == "not measured"
    assert found.cpu_ms_per_frame is None
    assert "cannot start" in found.reason
    assert "missing" in found.reason


def test_five_starts_on_busy_cores_agree_within_one(detector: MTCNN) -> None:
    """Cores shared with other work, as a user's often are: a busy process on one of them while measuring."""
    hog = subprocess.Popen([sys.executable, "-c", HOG])
    try:
        limits = [capacity.measure(identity_services(detector)).max_sessions for _ in range(5)]
    finally:
        hog.kill()
        hog.wait()
    assert max(limits) - min(limits) <= 1, limits


async def test_info_shows_the_limit_and_how_it_was_measured(detector: MTCNN) -> None:
    services = identity_services(detector)
    measured = capacity.measure(services, runs=3)
    async with live_server(services) as live:
        live.manager.capacity = measured  # as `serve` builds its manager
        status, info = await live.json("GET", "/api/info")
    assert status == 200
    assert info["capacity"]["source"] == "measured"
    assert info["capacity"]["cpu_ms_per_frame"] == measured.cpu_ms_per_frame
    assert info["capacity"]["probe"]["size"] == "640x480"
    assert info["can_swap"] == {"ok": True, "reason": None}


def test_a_given_limit_says_so(detector: MTCNN) -> None:
    manager = SessionManager(identity_services(detector), 3)
    assert manager.capacity.source == "--max-sessions"
    assert manager.capacity.max_sessions == 3
