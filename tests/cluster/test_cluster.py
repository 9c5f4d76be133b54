"""`dancecam serve --cluster` against a real Ray cluster of simulated nodes on this machine (tests/cluster/
local_cluster.py): session hosts on two worker nodes (identity engine on the CPU, real MTCNN) and one on the head
that cannot start its engine; real aiortc clients; media between each client and its session's host on 127.0.0.1.

The tests share one cluster (module scope) and run in order: the last one kills a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import ray
from aiohttp.test_utils import TestServer
from aiortc import RTCPeerConnection

from realtime.assembly.spec import ModelSpec
from realtime.cluster.front import make_front_app
from realtime.cluster.pool import HostPool
from realtime.live import ice
from realtime.live.server import ServeOptions
from realtime.live.transport import rtc_configuration
from tests import faces
from tests.cluster.local_cluster import (
    ROOT,
    LocalCluster,
    free_port,
    host_config,
    listening_off_loopback,
    local_cluster,
)
from tests.live_client import Client, StampedFaceTrack, face_frame, offer, wait_for, whep, whip
from tests.web.harness import CHROMIUM, chromium_args, open_page, start_live
from tests.web.y4m import face_clip

pytestmark = pytest.mark.network

FPS = 10  # light enough for four sessions, their clients and three raylets on two cores


@dataclass
class Sim:
    cluster: LocalCluster
    hosts: dict[str, str]  # host name by node name
    no_weights: Path


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with local_cluster(head_slots=1) as cluster:
        cluster.add_node("a", 2)
        cluster.add_node("b", 2)
        no_weights = tmp_path_factory.mktemp("no-weights")
        # FaceDancer without its weights: this host cannot start its engine and must never be offered a session
        facedancer = ModelSpec(
            "facedancer", device="cpu", detector="mtcnn", model_dir=no_weights, weights_optional=True
        )
        hosts = cluster.start_hosts(
            {
                "a": host_config("", 2, max_sessions=None, target_fps=5.0),  # measured, as `dancecam serve` measures
                "b": host_config("", 2),
                "head": host_config("", 1, spec=facedancer),
            }
        )
        yield Sim(cluster, hosts, no_weights)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return face_frame(faces.astronaut()[40:440, 56:456], 320, 240)


@dataclass
class Front:
    base: str
    http: aiohttp.ClientSession
    pool: HostPool | None = None

    async def json(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, **kw) as r:
            return r.status, await r.json(content_type=None)

    async def text(self, path: str) -> str:
        async with self.http.get(self.base + path) as r:
            assert r.status == 200, r.status
            return await r.text()

    async def stats(self, session: str) -> tuple[int, Any]:
        return await self.json("GET", f"/api/stats?session={session}")

    async def host_of(self, session: str) -> str:
        status, body = await self.stats(session)
        assert status == 200, body
        return str(body["sessions"][0]["host"])

    async def ready_hosts(self) -> int:
        try:
            status, body = await self.json("GET", "/healthz")
        except aiohttp.ClientError:
            return -1
        return int(body["hosts"]) if status == 200 else -1


@contextlib.asynccontextmanager
async def front_in_process(hosts: int = 3, **options: Any) -> AsyncIterator[Front]:
    """The front's app in this process (what `dancecam serve --cluster` serves), once it sees `hosts` hosts."""
    pool = HostPool()
    server = TestServer(make_front_app(pool, ServeOptions(**options)), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            assert await wait_for(lambda: len(pool.hosts) >= hosts, timeout=30), f"hosts seen: {list(pool.hosts)}"
            yield Front(str(server.make_url("")).rstrip("/"), http, pool)
    finally:
        await server.close()


async def stream(front: Front, frame: np.ndarray) -> Client:
    return await offer(front.http, front.base, StampedFaceTrack(frame, FPS))


async def flowing(client: Client, more: int = 5, timeout: float = 20.0) -> bool:
    """Whether `more` stamped frames come back after now."""
    start = len([n for n in client.received.numbers if n is not None])
    return await wait_for(lambda: len([n for n in client.received.numbers if n is not None]) >= start + more, timeout)


async def close_all(front: Front, clients: list[Client]) -> None:
    for client in clients:
        await client.close()
    if front.pool is not None:  # each test leaves the hosts empty for the next
        assert await wait_for(lambda: not front.pool.placed, timeout=15), front.pool.placed  # type: ignore[union-attr]


async def offer_status(front: Front) -> tuple[int, Any]:
    """POST a real offer (loopback candidates, video) and return the status and body, without connecting."""
    pc = RTCPeerConnection(rtc_configuration())
    try:
        pc.addTransceiver("video", direction="sendrecv")
        with ice.host_addresses(ice.LOOPBACK):
            await pc.setLocalDescription(await pc.createOffer())
        return await front.json("POST", "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
    finally:
        await pc.close()


# --- placement, one view ----------------------------------------------------------------------------------------


async def test_cluster_places_sessions_on_different_nodes_and_shows_one_view(sim: Sim, frame: np.ndarray) -> None:
    a, b, head = sim.hosts["a"], sim.hosts["b"], sim.hosts["head"]
    async with front_in_process() as front:
        first, second = await stream(front, frame), await stream(front, frame)
        clients = [first, second]
        try:
            assert {await front.host_of(first.session), await front.host_of(second.session)} == {a, b}
            assert await flowing(first, 10)
            assert await flowing(second, 10)
            status, body = await front.json("GET", "/api/stats")
            assert status == 200
            assert {s["id"] for s in body["sessions"]} == {first.session, second.session}
            for s in body["sessions"]:  # the media run between the client and the host, both on loopback
                route = s["media_route"]
                assert route is not None, s
                assert ice.is_loopback(route["local"].rsplit(":", 1)[0]), route
                assert ice.is_loopback(route["remote"].rsplit(":", 1)[0]), route
            assert body["server"]["max_sessions"] == 4
            assert {h["name"]: h["ready"] for h in body["server"]["hosts"]} == {a: True, b: True, head: False}
            off = listening_off_loopback()  # Ray's processes, the hosts' peers and ours: loopback only
            assert off == [], "\n".join(off)

            status, info = await front.json("GET", "/api/info")
            assert status == 200
            assert info["engine"] == "identity"
            assert info["device"] == "cpu"
            assert info["can_swap"]["ok"] is True
            assert info["max_sessions"] == 4
            assert info["sessions"] == 2
            hosts = {h["name"]: h for h in info["cluster"]["hosts"]}
            assert set(hosts) == {a, b, head}
            assert hosts[a]["versions"]["ray"] == info["cluster"]["front"]["ray"]
            assert "weights" in hosts[head]["reason"].lower() or "missing" in hosts[head]["reason"].lower()
            measured = info["capacity"]["hosts"][a]
            assert measured["source"] == "measured", measured  # serve's own probe
            assert measured["runs_cpu_ms"], measured
            assert measured["max_sessions"] == 2, measured  # held to its node's slots

            metrics = await front.text("/metrics")
            fps = [line for line in metrics.splitlines() if line.startswith("dancecam_input_fps{")]
            assert {(s["id"], s["host"]) for s in body["sessions"]} == {
                (line.split('session="')[1].split('"')[0], line.split('host="')[1].split('"')[0]) for line in fps
            }, fps
            for name, up in ((a, 1), (b, 1), (head, 0)):
                assert any(
                    line.startswith("dancecam_host_up{") and f'host="{name}"' in line and line.endswith(f" {up}.0")
                    for line in metrics.splitlines()
                ), name
            assert "dancecam_sessions 2.0" in metrics

            # settings reach the session on its host; a bad one is refused there with the same 422
            status, settings = await front.json(
                "PUT", f"/api/settings?session={first.session}", json={"draw_boxes": True}
            )
            assert status == 200
            assert settings["draw_boxes"] is True
            status, settings = await front.json("GET", f"/api/settings?session={first.session}")
            assert status == 200
            assert settings["draw_boxes"] is True
            status, error = await front.json("PUT", f"/api/settings?session={first.session}", json={"max_faces": 0})
            assert status == 422
            assert "max_faces" in error["error"]
            status, settings = await front.json("GET", f"/api/settings?session={second.session}")
            assert status == 200
            assert settings["draw_boxes"] is False

            # a WHEP viewer of a session is served by that session's host
            viewer = await whep(front.http, front.base, f"?session={first.session}")
            clients.append(viewer)
            assert await wait_for(lambda: len(viewer.received.images) >= 3, timeout=15)
            async with front.http.delete(front.base + str(viewer.location)) as r:
                assert r.status == 204

            # WHIP (OBS) starts a session on a host too, and ends through the front
            publisher = await whip(front.http, front.base, StampedFaceTrack(frame, FPS))
            clients.append(publisher)
            assert await front.host_of(str(publisher.session)) in {a, b}
            async with front.http.delete(front.base + str(publisher.location)) as r:
                assert r.status == 204
            status, gone = await front.stats(str(publisher.session))
            assert status == 404
            assert gone["error"] == "the session ended: ended by the WHIP client"

            # DELETE reaches the session wherever it runs; the other carries on
            status, _ = await front.json("DELETE", f"/api/sessions/{second.session}")
            assert status == 204
            status, gone = await front.stats(str(second.session))
            assert status == 404
            assert gone["error"] == "the session ended: ended by the client"
            assert await flowing(first, 5)
        finally:
            await close_all(front, clients)


async def test_cluster_front_keeps_the_token_rule(sim: Sim, frame: np.ndarray) -> None:
    token = "a-token-of-24-characters"
    async with front_in_process(token=token) as front:
        for method, path in (("GET", "/api/stats"), ("GET", "/api/info"), ("GET", "/metrics"), ("POST", "/offer")):
            status, body = await front.json(method, path)
            assert status == 401, (method, path, body)
            assert body["error"].startswith("a valid token is required")
        async with front.http.get(front.base + "/") as r:
            assert r.status == 200  # the page stays open, as on `serve`
        with pytest.raises(RuntimeError, match=r"^401"):
            await offer(front.http, front.base, StampedFaceTrack(frame, FPS))
        client = await offer(front.http, front.base, StampedFaceTrack(frame, FPS), token=token)
        try:
            status, body = await front.json(
                "GET", f"/api/stats?session={client.session}", headers={"Authorization": f"Bearer {token}"}
            )
            assert status == 200, body
        finally:
            await close_all(front, [client])


# --- admission --------------------------------------------------------------------------------------------------


async def test_cluster_admission_at_capacity(sim: Sim, frame: np.ndarray) -> None:
    a, b, head = sim.hosts["a"], sim.hosts["b"], sim.hosts["head"]
    async with front_in_process() as front:
        clients: list[Client] = []
        try:
            for _ in range(4):
                clients.append(await stream(front, frame))
            placed = [await front.host_of(str(c.session)) for c in clients]
            assert sorted(placed) == sorted([a, a, b, b]), placed  # the least loaded host each time; never `head`
            status, body = await offer_status(front)
            assert status == 503, body
            assert body["error"].startswith("the cluster is full: 2 session host(s) hold 4 of 4 session(s)"), body
            assert head in body["error"], body  # named, with why it takes no sessions
            assert "try again when one ends" in body["error"], body

            freed = placed[0]
            status, _ = await front.json("DELETE", f"/api/sessions/{clients[0].session}")
            assert status == 204
            again = await stream(front, frame)
            clients.append(again)
            assert await front.host_of(str(again.session)) == freed  # the only host with a free slot
            assert await flowing(again, 5)
        finally:
            await close_all(front, clients)


# --- dancecam host ----------------------------------------------------------------------------------------------


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "no_proxy": "127.0.0.1,localhost", "COLUMNS": "200"}
    command = [sys.executable, "-m", "realtime", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_cluster_host_command_starts_the_hosts_of_its_node(sim: Sim) -> None:
    """`dancecam host --cluster HEAD:PORT` here joins the head (Ray picks the head of the nodes on one machine):
    this node's host runs already, so it says so; with --replace it ends that host and starts it again, and reports
    what the new one says of its engine."""
    head = sim.hosts["head"]
    before = ray.get(ray.get_actor(head).status.remote(), timeout=30)
    command = ["host", "--cluster", sim.cluster.address, "--engine", "facedancer", "--device", "cpu"]
    command += ["--detector", "mtcnn", "--model-dir", str(sim.no_weights), "--max-sessions", "1"]
    refused = run_cli(*command)
    assert refused.returncode == 2, refused.stderr
    assert f"session host {head} already runs on this node: give --replace" in refused.stderr
    replaced = run_cli(*command, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert f"{head} takes no sessions: model weights missing" in replaced.stderr, replaced.stderr
    after = ray.get(ray.get_actor(head).status.remote(), timeout=30)
    assert after["instance"] != before["instance"]
    assert after["ready"] is False
    assert after["node_id"] == before["node_id"]


# --- front restart ----------------------------------------------------------------------------------------------


def start_front(address: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`dancecam serve --cluster ADDRESS` in a process of its own (a front that can be killed); output: `log`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "no_proxy": "127.0.0.1,localhost"}
    command = [sys.executable, "-m", "realtime", "serve", "--cluster", address, "--port", str(port), "-q"]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


async def front_up(front: Front, process: subprocess.Popen[bytes], hosts: int = 2, timeout: float = 60) -> bool:
    """Whether the front process serves and sees `hosts` ready hosts within `timeout` seconds."""
    for _ in range(int(timeout / 0.3)):
        if process.poll() is not None:
            return False
        if await front.ready_hosts() >= hosts:
            return True
        await asyncio.sleep(0.3)
    return False


def _said(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


async def test_cluster_front_restart_keeps_sessions_running_and_reattaches_them(
    sim: Sim, frame: np.ndarray, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "front.log"
    process = start_front(sim.cluster.client_address, port, log)
    async with aiohttp.ClientSession() as http:
        front = Front(f"http://127.0.0.1:{port}", http)
        clients: list[Client] = []
        try:
            assert await front_up(front, process), _said(log)
            client = await stream(front, frame)
            clients.append(client)
            host = await front.host_of(str(client.session))
            assert await flowing(client, 5)

            process.kill()  # the front crashes: its sessions' media never went through it
            process.wait(10)
            assert await front.ready_hosts() == -1
            assert await flowing(client, 10)

            process = start_front(sim.cluster.client_address, port, log)
            assert await front_up(front, process), _said(log)
            status, body = await front.stats(str(client.session))  # re-attached: the new front found it on its host
            assert status == 200, body
            assert body["sessions"][0]["host"] == host
            assert body["sessions"][0]["fps_out"] > 0
            status, settings = await front.json(
                "PUT", f"/api/settings?session={client.session}", json={"detect_every": 3}
            )
            assert status == 200
            assert settings["detect_every"] == 3
            status, _ = await front.json("DELETE", f"/api/sessions/{client.session}")
            assert status == 204
            status, gone = await front.stats(str(client.session))
            assert status == 404
            assert gone["error"] == "the session ended: ended by the client"
        finally:
            for c in clients:
                await c.close()
            process.kill()
            process.wait(10)


# --- a node dies ------------------------------------------------------------------------------------------------


async def test_cluster_node_killed_mid_session(sim: Sim, frame: np.ndarray) -> None:
    a, b = sim.hosts["a"], sim.hosts["b"]
    async with front_in_process() as front:
        pool = front.pool
        assert pool is not None
        clients = [await stream(front, frame), await stream(front, frame)]
        try:
            on = {await front.host_of(str(c.session)): c for c in clients}
            assert set(on) == {a, b}
            doomed, survivor = on[a], on[b]
            assert await flowing(doomed, 5)
            assert await flowing(survivor, 5)

            killed = time.monotonic()
            sim.cluster.kill("a")
            ended_after = None
            while time.monotonic() - killed < 10:
                status, body = await front.stats(str(doomed.session))
                if status == 404:
                    ended_after = time.monotonic() - killed
                    break
                await asyncio.sleep(0.1)
            assert ended_after is not None
            assert ended_after <= 5.0, ended_after
            assert body["error"].startswith(f"the session ended: its session host {a} on 127.0.0.1 was lost"), body
            status, info = await front.json("GET", "/api/info")
            assert a not in {h["name"] for h in info["cluster"]["hosts"]}  # its slots are gone
            assert info["max_sessions"] == 2
            assert info["cluster"]["lost"][-1]["host"] == a
            metrics = await front.text("/metrics")
            assert f'host="{a}"' not in metrics
            assert "dancecam_hosts_lost_total 1.0" in metrics

            assert await flowing(survivor, 10)  # the other session carries on
            status, _ = await front.stats(str(survivor.session))
            assert status == 200

            # the client of the lost session reconnects: it gets a live host
            await doomed.close()
            back = await stream(front, frame)
            clients.append(back)
            assert await front.host_of(str(back.session)) == b
            assert await flowing(back, 5)
            status, body = await offer_status(front)
            assert status == 503, body
            assert "1 session host(s) hold 2 of 2" in body["error"], body

            # a node that joins gets a host, and the new sessions go there
            sim.cluster.add_node("c", 2)
            c = sim.cluster.start_hosts({"c": host_config("", 2)})["c"]
            assert await wait_for(lambda: c in pool.hosts, timeout=15)
            late = await stream(front, frame)
            clients.append(late)
            where = {h.name: (h.ready, pool.sessions_on(h.name), h.max_sessions) for h in pool.hosts.values()}
            assert await front.host_of(str(late.session)) == c, (where, pool.losses, dict(pool.ended))
            assert await flowing(late, 5)

            # a host's process dies on a node that lives: Ray says so at once, and the session ends saying it
            pid = pool.hosts[c].status["pid"]
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            assert await wait_for(lambda: late.session not in pool.placed, timeout=5)
            status, body = await front.stats(str(late.session))
            assert status == 404, body
            assert body["error"] == f"the session ended: its session host {c} on 127.0.0.1 was lost: its process died"
            assert time.monotonic() - killed < 3.0
            assert c not in pool.hosts
        finally:
            await close_all(front, clients)


# --- the page ---------------------------------------------------------------------------------------------------


def test_cluster_page_says_why_its_session_ended_when_its_node_dies(sim: Sim, tmp_path: Path) -> None:
    """The page (Chromium, a fake camera) on a front started as `dancecam serve --cluster` does: its session's node
    dies, and the page says so, with the reason, within 5 s of the page's next look at the stats."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install chromium; scripts/setup.sh --dev does it as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (scripts/setup.sh --dev)")
    sim.cluster.add_node("d", 1)
    sim.cluster.start_hosts({"d": host_config("", 1)})
    port, log = free_port(), tmp_path / "front.log"
    process = start_front(sim.cluster.address, port, log)  # joining by the GCS address (the restart test: ray://)
    clip = face_clip(tmp_path / "face.y4m", 320, 240, fps=15, seconds=2.0)
    # Playwright's own, closed at the end: its event loop must not outlive this test (the async tests after it)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(clip))
        try:
            front_url = f"http://127.0.0.1:{port}/"
            assert _wait_ready(front_url, hosts=2), _said(log)  # b and d (c's host was killed by the node test)
            page, console = open_page(browser, front_url)
            session_id = start_live(page)
            page.wait_for_function("window.dancecam.status().latency.frames >= 3", timeout=30_000)
            where = _get(f"{front_url}api/stats?session={session_id}")["sessions"][0]["host"]
            node = next(n for n, name in _hosts_by_node(sim).items() if name == where)
            killed = time.monotonic()
            sim.cluster.kill(node)
            page.wait_for_selector("#error", state="visible", timeout=10_000)
            shown = time.monotonic() - killed
            text = page.text_content("#error-text") or ""
            assert text.startswith(f"The session ended: its session host {where} on 127.0.0.1 was lost"), text
            assert shown <= 5.0 + 1.0, shown  # ended within 5 s; the page looks at its stats every second
            page.wait_for_function("window.dancecam.status().connection === 'idle'", timeout=5_000)
            assert page.is_enabled("#start")
            page.screenshot(path=str(tmp_path / "cluster-node-lost.png"))
            # 503: a stats poll while the host was silent, before it was written off (the page polls on)
            assert console.unexpected(404, 503) == [], console.errors
        finally:
            browser.close()
            process.kill()
            process.wait(10)


def _get(url: str) -> Any:
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _wait_ready(url: str, hosts: int, timeout: float = 60) -> bool:
    import urllib.error

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _get(url + "healthz")["hosts"] >= hosts:
                return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    return False


def _hosts_by_node(sim: Sim) -> dict[str, str]:
    """Host name by node name, for the nodes alive now."""
    from realtime.cluster.config import host_name

    return {name: host_name(node.node_id, 0) for name, node in sim.cluster.nodes.items()}
