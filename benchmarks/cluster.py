"""Scale-out with Ray on simulated nodes: what the front costs, what a node holds, how fast a dead node's sessions end.

    python -m benchmarks.cluster                      # 20 offers each way, 3 node deaths
    python -m benchmarks.cluster --offers 40 --kills 5 --note "quiet machine"

Everything runs on this machine (tests/cluster/local_cluster.py): a Ray head and worker nodes (a raylet each, with
its own slot resource), session hosts of the identity engine on the CPU (real MTCNN), the front in this process, and
aiortc clients; every packet on 127.0.0.1.

1. Answer time: POST /offer until the answer, through the front (offer → Ray → the host builds the session and
   answers with its candidates → Ray → front) against a single `dancecam serve` app in this process, each session
   ended (DELETE) before the next offer.
2. Sessions per node until 503: hosts whose limit is measured as `serve` measures it (30 fps), offers until the
   front answers 503; how many each host took, and the 503's text.
3. Node death: a node whose host runs two sessions with media is killed (its raylet and processes, SIGKILL); the
   time until each session's /api/stats answers 404 (ended, with the reason), until /api/info no longer counts the
   node's slots, and until Ray itself marks the node dead; a session on another node streams on meanwhile.
Results: benchmarks/results/cluster-<device>-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

# before Ray is imported (tests/cluster/__init__.py): the driver keeps 127.0.0.1
import tests.cluster  # noqa: F401

FPS = 10


def _percentiles(values: list[float]) -> dict[str, float]:
    p50, p95 = np.percentile(np.asarray(values), [50, 95])
    return {"p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1), "n": len(values)}


async def _offer_sdp() -> tuple[Any, str]:
    from aiortc import RTCPeerConnection

    from realtime.live import ice
    from realtime.live.transport import rtc_configuration

    pc = RTCPeerConnection(rtc_configuration())
    pc.addTransceiver("video", direction="sendrecv")
    with ice.host_addresses(ice.LOOPBACK):
        await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def answer_times(http: Any, base: str, offers: int, warmup: int = 2) -> dict[str, Any]:
    """Time `offers` POST /offer round trips (after `warmup`), each session ended before the next."""
    times: list[float] = []
    for index in range(warmup + offers):
        pc, sdp = await _offer_sdp()
        try:
            start = time.perf_counter()
            async with http.post(f"{base}/offer", json={"sdp": sdp, "type": "offer"}) as r:
                body = await r.json()
                took = (time.perf_counter() - start) * 1e3
                if r.status != 200:
                    raise RuntimeError(f"offer {index}: {r.status} {body}")
            async with http.delete(f"{base}/api/sessions/{body['session']}") as r:
                assert r.status == 204, r.status
        finally:
            await pc.close()
        if index >= warmup:
            times.append(took)
    return {**_percentiles(times), "runs_ms": [round(t, 1) for t in times]}


@contextlib.asynccontextmanager
async def _front(hosts: int) -> AsyncIterator[tuple[Any, str, Any]]:
    import aiohttp
    from aiohttp.test_utils import TestServer

    from realtime.cluster.front import make_front_app
    from realtime.cluster.pool import HostPool
    from realtime.live.server import ServeOptions
    from tests.live_client import wait_for

    pool = HostPool()
    server = TestServer(make_front_app(pool, ServeOptions()), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            if not await wait_for(lambda: sum(h.ready for h in pool.hosts.values()) >= hosts, timeout=60):
                raise RuntimeError(f"the front sees {list(pool.hosts)}, not {hosts} ready hosts")
            yield http, str(server.make_url("")).rstrip("/"), pool
    finally:
        await server.close()


async def single_server(offers: int) -> dict[str, Any]:
    from engines.mtcnn import MTCNN
    from tests.realtime.live_fixtures import identity_services, live_server

    async with live_server(identity_services(MTCNN("cpu")), max_sessions=4) as live:
        return await answer_times(live.http, live.base, offers)


async def fill(http: Any, base: str, pool: Any) -> dict[str, Any]:
    """Offer until the front answers 503: sessions per host, and what the 503 said."""
    pcs, sessions, refusal = [], [], None
    try:
        for _ in range(64):
            pc, sdp = await _offer_sdp()
            pcs.append(pc)
            async with http.post(f"{base}/offer", json={"sdp": sdp, "type": "offer"}) as r:
                body = await r.json()
            if r.status == 503:
                refusal = body["error"]
                break
            sessions.append(body["session"])
        per_host = {h.name: pool.sessions_on(h.name) for h in pool.hosts.values() if h.ready}
        limits = {h.name: (h.status.get("capacity") or {}).get("reason") for h in pool.hosts.values() if h.ready}
        for session in sessions:
            async with http.delete(f"{base}/api/sessions/{session}") as r:
                assert r.status == 204, r.status
    finally:
        for pc in pcs:
            await pc.close()
    return {"sessions": len(sessions), "per_host": per_host, "limits": limits, "refusal": refusal}


class _Watch:
    """Pollers (each on its own, every 50 ms, at most 60 s) of what a client and an operator see after a kill."""

    def __init__(self, http: Any, base: str, since: float) -> None:
        self.http, self.base, self.since = http, base, since

    def _now(self) -> float:
        return round(time.monotonic() - self.since, 2)

    async def ended(self, session: str) -> tuple[float, str]:
        """When GET /api/stats?session= first answers 404, and what it says."""
        for _ in range(1200):
            async with self.http.get(f"{self.base}/api/stats?session={session}") as r:
                if r.status == 404:
                    return self._now(), (await r.json())["error"]
            await asyncio.sleep(0.05)
        raise RuntimeError(f"session {session} still there 60 s after its node died")

    async def slots_below(self, slots: int) -> float:
        """When /api/info first counts fewer than `slots` session slots."""
        for _ in range(1200):
            async with self.http.get(f"{self.base}/api/info") as r:
                if (await r.json())["max_sessions"] < slots:
                    return self._now()
            await asyncio.sleep(0.05)
        raise RuntimeError("the dead node's slots still counted after 60 s")

    async def node_dead(self, node_id: str) -> float | None:
        """When Ray's own node table first says the node is dead (None: not within 60 s)."""
        import ray

        for _ in range(600):
            alive = await asyncio.to_thread(lambda: any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()))
            if not alive:
                return self._now()
            await asyncio.sleep(0.1)
        return None


async def node_deaths(kills: int) -> list[dict[str, Any]]:
    from tests import faces
    from tests.cluster.local_cluster import host_config, local_cluster
    from tests.live_client import StampedFaceTrack, face_frame, offer, wait_for

    frame = face_frame(faces.astronaut()[40:440, 56:456], 320, 240)
    rounds: list[dict[str, Any]] = []
    with local_cluster() as cluster:
        cluster.add_node("survivor", 1)
        cluster.start_hosts({"survivor": host_config("", 1)})
        async with _front(1) as (http, base, pool):
            keeper = await offer(http, base, StampedFaceTrack(frame, FPS))  # fills the survivor: new ones go to victims
            try:
                for index in range(kills):
                    name = f"victim{index}"
                    node = cluster.add_node(name, 2)
                    host = cluster.start_hosts({name: host_config("", 2)})[name]
                    assert await wait_for(lambda h=host: h in pool.hosts, timeout=30)
                    clients = [await offer(http, base, StampedFaceTrack(frame, FPS)) for _ in range(2)]
                    assert {pool.placed[str(c.session)].host for c in clients} == {host}
                    assert await wait_for(lambda cs=clients: all(len(c.received.numbers) >= 5 for c in cs), 30)
                    before = len(keeper.received.numbers)
                    killed, killed_wall = time.monotonic(), time.time()
                    cluster.kill(name)
                    watch = _Watch(http, base, killed)
                    ended, slots_left, ray_dead = await asyncio.gather(
                        asyncio.gather(*(watch.ended(str(c.session)) for c in clients)),
                        watch.slots_below(3),
                        watch.node_dead(node.node_id),
                    )
                    lost = next((x for x in reversed(pool.losses) if x["host"] == host), None)
                    rounds.append(
                        {
                            "front_lost_host_s": None if lost is None else round(lost["at"] - killed_wall, 2),
                            "sessions_ended_s": sorted(round(t, 2) for t, _ in ended),
                            "slots_left_s": slots_left,
                            "ray_marked_node_dead_s": ray_dead,
                            "reason": ended[-1][1],
                            "other_session_frames_meanwhile": len(keeper.received.numbers) - before,
                        }
                    )
                    for c in clients:
                        await c.close()
            finally:
                await keeper.close()
    return rounds


async def run(offers: int, kills: int) -> dict[str, Any]:
    from tests.cluster.local_cluster import host_config, local_cluster

    single = await single_server(offers)
    with local_cluster() as cluster:
        cluster.add_node("a", 4)
        cluster.add_node("b", 4)
        started = time.monotonic()
        # limits measured as `dancecam serve` measures them (30 fps), held to the node's 4 slots
        cluster.start_hosts({n: host_config("", 4, max_sessions=None, target_fps=30.0) for n in ("a", "b")})
        hosts_started_s = time.monotonic() - started
        async with _front(2) as (http, base, pool):
            through_front = await answer_times(http, base, offers)
            filled = await fill(http, base, pool)
    deaths = await node_deaths(kills) if kills else []
    return {
        "answer_time": {"single_serve": single, "cluster_front": through_front},
        "hosts_started_s": round(hosts_started_s, 1),
        "until_503": filled,
        "node_deaths": deaths,
    }


def markdown(result: dict[str, Any]) -> str:
    r = result["result"]
    single, front = r["answer_time"]["single_serve"], r["answer_time"]["cluster_front"]
    lines = [
        f"# Cluster on simulated nodes: {result['device']}, {result['date'][:10]}",
        "",
        f"`{result['command']}`; Ray {result['ray']}, Python {result['python']}, {result['cpus']} CPU(s); load "
        f"average (1 min) {result['load_average_1min']['before']} before, {result['load_average_1min']['after']} "
        "after. " + (result["note"] or ""),
        "",
        "| POST /offer until the answer | p50 ms | p95 ms | n |",
        "| --- | ---: | ---: | ---: |",
        f"| single `serve` (this process) | {single['p50_ms']} | {single['p95_ms']} | {single['n']} |",
        f"| through the front (Ray → host → Ray) | {front['p50_ms']} | {front['p95_ms']} | {front['n']} |",
        "",
        f"Sessions until 503 (two hosts, limits measured at 30 fps, 4 slots a node): {r['until_503']['sessions']}, "
        f"per host {r['until_503']['per_host']}.",
        "",
        f"- limits: {r['until_503']['limits']}",
        f"- the 503: {r['until_503']['refusal']}",
        "",
    ]
    if r["node_deaths"]:
        lines += [
            "Seconds after a node was killed (SIGKILL of its raylet and every process on it):",
            "",
            "| kill | the front loses its host | its 2 sessions answer 404 (the reason) | its slots leave /api/info "
            "| Ray marks the node dead | frames of a session elsewhere meanwhile |",
            "| --- | ---: | --- | ---: | ---: | ---: |",
        ]
        for i, d in enumerate(r["node_deaths"]):
            lines.append(
                f"| {i + 1} | {d['front_lost_host_s']} | {', '.join(str(t) for t in d['sessions_ended_s'])} "
                f"| {d['slots_left_s']} | {d['ray_marked_node_dead_s']} | {d['other_session_frames_meanwhile']} |"
            )
        lines += ["", f"Reason the page and /api/stats give: {r['node_deaths'][-1]['reason']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from benchmarks.engines import RESULTS, cpu_name

    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--offers", type=int, default=20, help="timed offers each way (default 20)")
    parser.add_argument("--kills", type=int, default=3, help="nodes killed one after another (default 3; 0: none)")
    parser.add_argument("--note", default="", help="a sentence for the report, e.g. that the machine was shared")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/cluster-...json)")
    args = parser.parse_args(argv)
    if args.offers < 1 or args.kills < 0:
        parser.error("--offers must be at least 1 and --kills at least 0")
    console = Console(width=140)
    load_before = os.getloadavg()
    res = asyncio.run(run(args.offers, args.kills))
    load_after = os.getloadavg()

    import aiortc
    import ray

    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    name = cpu_name()
    slug = "cpu-" + "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")[:40]
    result = {
        "benchmark": "cluster",
        "device": name,
        "device_type": "cpu",
        "cpus": os.cpu_count(),
        "date": date,
        "command": shlex.join(["python", "-m", "benchmarks.cluster", *(argv if argv is not None else sys.argv[1:])]),
        "note": args.note,
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "python": platform.python_version(),
        "ray": ray.__version__,
        "aiortc": aiortc.__version__,
        "result": res,
    }
    text = markdown(result)
    console.print(text)
    out = args.out or RESULTS / f"cluster-{slug}-{date[:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    console.print(f"saved {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
