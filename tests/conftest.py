"""Shared fixtures: real face images (see tests/faces.py), and the marker rules for GPU tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

from tests import faces
from tests.fileserver import FileServer, ServerThread

RESOLUTIONS = {"640x480": (640, 480), "1280x720": (1280, 720), "1920x1080": (1920, 1080)}


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return "no CUDA device on this machine"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    for item in items:
        if "gpu" in item.keywords:
            reason = reason or _cuda_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """512x512 RGB uint8 photo with one real face (box and landmarks in tests.faces)."""
    return faces.astronaut()


@pytest.fixture(scope="session")
def compose_faces() -> Callable[..., tuple[np.ndarray, list[faces.PlacedFace]]]:
    """compose_faces(width, height, placements=DEFAULT_PLACEMENTS) -> (frame, placed faces with ground truth)."""
    return faces.compose_faces


@pytest.fixture(scope="session", params=list(RESOLUTIONS), ids=list(RESOLUTIONS))
def multi_face_frame(request: pytest.FixtureRequest) -> tuple[np.ndarray, list[faces.PlacedFace]]:
    """A frame at 640x480, 1280x720 and 1920x1080 with four faces: large, small, near a corner, across a border."""
    width, height = RESOLUTIONS[request.param]
    return faces.compose_faces(width, height)


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    """A real HTTP server on 127.0.0.1 (aiohttp's TestServer) serving generated files; see tests/fileserver.py."""
    thread = ServerThread()
    server = thread.start()
    yield server
    thread.stop()


@pytest.fixture(autouse=True)
def _local_requests_skip_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk only to 127.0.0.1/localhost: never route that through a proxy from the environment."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(autouse=True)
def _media_on_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every packet a test sends stays on loopback: ICE gathering on the machine's interfaces fails the test.

    Servers in tests get `ice_addresses=ice.LOOPBACK` and clients gather inside `ice.host_addresses(ice.LOOPBACK)`.
    """
    try:
        from realtime.live import ice
    except ImportError:  # aioice absent (a GPU machine's image): no WebRTC test runs there either
        return

    def refuse(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        raise AssertionError(
            "ICE gathered on the machine's network interfaces: give this peer loopback addresses "
            "(ServeOptions(ice_addresses=ice.LOOPBACK), or gather inside ice.host_addresses(ice.LOOPBACK))"
        )

    monkeypatch.setattr(ice, "_interfaces", refuse)
