"""100 browser sessions connect, stream a moment and go (by DELETE or by vanishing): nothing may stay behind."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

import numpy as np
import pytest
import torch

from engines.mtcnn import MTCNN
from realtime.live.session import LiveServices
from tests import faces
from tests.live_client import StampedFaceTrack, face_frame, offer, wait_for, whep, whip
from tests.realtime.live_fixtures import live_server

pytestmark = pytest.mark.network

CYCLES = 100


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def session_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("dancecam-")]


async def test_hundred_connect_disconnect_cycles_leave_nothing_behind() -> None:
    frame = face_frame(faces.astronaut()[40:440, 56:456], 320, 240)
    services = LiveServices(torch.device("cpu"), MTCNN("cpu"), "identity")
    async with live_server(services, max_sessions=1, idle_timeout=5.0) as live:
        baseline = set(asyncio.all_tasks())
        memory: list[float] = []
        started = time.monotonic()
        for cycle in range(CYCLES):
            client = await offer(live.http, live.base, StampedFaceTrack(frame), settings={"detect_every": 30})
            assert await wait_for(lambda c=client: len(c.received.images) >= 1, timeout=15), f"cycle {cycle}"
            if cycle % 2 == 0:
                async with live.http.delete(f"{live.base}/api/sessions/{client.session}") as r:
                    assert r.status == 204
                await client.close()
            else:  # vanish: the peer connection closes without a word to the server
                await client.close()
            # max_sessions=1: the next offer only succeeds once this session has been cleaned up
            assert await wait_for(lambda: not live.manager.sessions, timeout=10), f"cycle {cycle} left its session"
            if cycle % 10 == 9:
                gc.collect()
                memory.append(rss_mib())
        elapsed = time.monotonic() - started
        assert await wait_for(lambda: not session_threads(), timeout=10), session_threads()
        await asyncio.sleep(0.5)
        # what may remain: the test itself, and aiohttp's handlers of the client's keep-alive HTTP connections
        leftover = [
            t
            for t in asyncio.all_tasks() - baseline
            if not t.done() and t.get_coro().__qualname__ != "RequestHandler.start"  # type: ignore[union-attr]
        ]
        assert not leftover, [repr(t) for t in leftover]
        assert live.manager.ended == CYCLES
    # memory flat: after the first 20 cycles (allocator and codec warm-up) it grows by less than 40 MiB in 80 cycles
    growth = memory[-1] - memory[1]
    print(f"{CYCLES} cycles in {elapsed:.1f} s; RSS every 10 cycles: {np.round(memory).tolist()} MiB")
    assert growth < 40, (growth, memory)


async def test_a_closed_whep_viewer_is_freed_without_a_garbage_collection() -> None:
    """aiortc's transports hold handlers on the connection that made them (a cycle): a viewer's connection must be
    freed when the viewer goes, not at the next full collection, which a server with a large heap runs rarely."""
    frame = face_frame(faces.astronaut()[40:440, 56:456], 320, 240)
    services = LiveServices(torch.device("cpu"), MTCNN("cpu"), "identity")
    enabled = gc.isenabled()
    gc.disable()
    try:
        async with live_server(services, max_sessions=1) as live:
            publisher = await whip(live.http, live.base, StampedFaceTrack(frame))
            try:
                assert await wait_for(lambda: publisher.session in live.manager.sessions, timeout=5)
                viewer = await whep(live.http, live.base, query=f"?session={publisher.session}")
                try:
                    assert await wait_for(lambda: len(viewer.received.images) >= 3, timeout=20)
                    (server_side,) = live.app.viewers.values()
                    connection = weakref.ref(server_side.pc)
                    del server_side
                    assert viewer.location is not None
                    async with live.http.delete(live.base + viewer.location) as r:
                        assert r.status == 204
                finally:
                    await viewer.close()
                assert await wait_for(lambda: connection() is None, timeout=5), gc.get_referrers(connection())
            finally:
                await publisher.close()
    finally:
        if enabled:
            gc.enable()
