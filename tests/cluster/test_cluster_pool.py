"""The front's `HostPool` against hosts that stand in for Ray actors (no cluster): admission, re-attachment, why
sessions ended, losing a silent or dead host, and taking a lost host back only after it ended its sessions."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import ray.exceptions

from engines.errors import CapacityError, SessionNotFoundError
from realtime.cluster import nodes
from realtime.cluster.config import Refused
from realtime.cluster.pool import HostPool
from realtime.live.session import LiveSettings
from tests.live_client import wait_for


class _Ref:
    def __init__(self, future: concurrent.futures.Future[Any]) -> None:
        self._future = future

    def future(self) -> concurrent.futures.Future[Any]:
        return self._future


class _Method:
    def __init__(self, host: FakeHost, name: str) -> None:
        self.host, self.name = host, name

    def remote(self, *args: Any) -> _Ref:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.host.calls.append((self.name, args))
        if self.host.dead:
            future.set_exception(ray.exceptions.ActorDiedError())
        elif not self.host.silent:  # a silent host's calls never complete
            future.set_result(getattr(self.host, f"do_{self.name}")(*args))
        return _Ref(future)


class FakeHost:
    """What the pool sees of a session host actor: its methods' answers, or silence, or death."""

    def __init__(self, name: str, max_sessions: int = 2, ready: bool = True) -> None:
        self.name = name
        self.instance = f"{name}-1"
        self.max_sessions = max_sessions
        self.ready = ready
        self.sessions: dict[str, str] = {}  # id → kind
        self.ended: list[tuple[str, str]] = []
        self.silent = False
        self.dead = False
        self.full = False
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._count = 0

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("do_") or name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)

    def do_status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "instance": self.instance,
            "node_id": self.name.ljust(12, "0"),
            "node_ip": "127.0.0.1",
            "ready": self.ready,
            "reason": None if self.ready else "model weights missing",
            "max_sessions": self.max_sessions if self.ready else 0,
            "capacity": {"reason": f"{self.max_sessions} session(s)"},
            "sessions": [{"id": i, "kind": k, "created": 0.0} for i, k in self.sessions.items()],
            "ended": list(self.ended),
            "services": {"source": {"key": None}},
        }

    def do_start(self, kind: str, sdp: str, settings: LiveSettings) -> dict[str, Any] | Refused:
        if self.full or len(self.sessions) >= self.max_sessions:
            return Refused(503, f"{self.name} is full", "CapacityError")
        self._count += 1
        session = f"{self.name}-s{self._count}"
        self.sessions[session] = kind
        return {"session": session, "answer": "v=0", "host": self.name}

    def do_end_all(self, reason: str) -> int:
        for session in list(self.sessions):
            self.end(session, reason)
        return len(self.ended)

    def end(self, session: str, reason: str) -> None:
        del self.sessions[session]
        self.ended.append((session, reason))


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeHost]:
    """The hosts Ray would list by name."""
    hosts: dict[str, FakeHost] = {}
    monkeypatch.setattr(nodes, "host_names", lambda: sorted(hosts))
    monkeypatch.setattr(nodes, "host_handle", hosts.get)
    return hosts


@pytest.fixture
async def pool(registry: dict[str, FakeHost]) -> AsyncIterator[HostPool]:
    pool = HostPool(poll_interval=0.05, lost_after=0.4, discover_interval=0.05)
    await pool.start()
    yield pool
    await pool.close()


async def joined(pool: HostPool, *names: str) -> bool:
    return await wait_for(lambda: set(names) <= set(pool.hosts), timeout=5)


def _on(pool: HostPool) -> Callable[[str], str]:
    return lambda session: pool.placed[session].host


async def test_cluster_pool_places_on_the_least_loaded_host_and_says_why_it_is_full(
    registry: dict[str, FakeHost], pool: HostPool
) -> None:
    registry["h-a"], registry["h-b"] = FakeHost("h-a", 2), FakeHost("h-b", 1)
    registry["h-c"] = FakeHost("h-c", 4, ready=False)
    assert await joined(pool, "h-a", "h-b", "h-c")
    on = _on(pool)
    placed = [on((await pool.start_session("offer", "v=0", LiveSettings()))["session"]) for _ in range(3)]
    # by the share of each host's slots in use: a (0/2), b (0/1), then a (1/2 against b's 1/1); never c
    assert placed == ["h-a", "h-b", "h-a"]
    with pytest.raises(CapacityError) as full:
        await pool.start_session("offer", "v=0", LiveSettings())
    assert str(full.value) == (
        "the cluster is full: 2 session host(s) hold 3 of 3 session(s) (1 more take no sessions: h-c: model weights "
        "missing); try again when one ends"
    )
    assert pool.capacity == 3


async def test_cluster_pool_without_hosts_says_how_to_start_them(pool: HostPool) -> None:
    assert await wait_for(pool.discovered.is_set, timeout=5)
    with pytest.raises(CapacityError, match=r"no session host in the cluster yet: start them .*dancecam host"):
        pool.choose()


async def test_cluster_pool_tries_another_host_when_one_is_full_by_its_own_count(
    registry: dict[str, FakeHost], pool: HostPool
) -> None:
    registry["h-a"], registry["h-b"] = FakeHost("h-a", 2), FakeHost("h-b", 2)
    assert await joined(pool, "h-a", "h-b")
    registry["h-a"].full = True  # e.g. another front's sessions, not yet seen here
    started = await pool.start_session("offer", "v=0", LiveSettings())
    assert started["host"] == "h-b"
    assert [c[0] for c in registry["h-a"].calls].count("start") == 1  # asked first (equal load, by name), refused


async def test_cluster_pool_reattaches_sessions_and_learns_why_they_ended(
    registry: dict[str, FakeHost], pool: HostPool
) -> None:
    host = registry["h-a"] = FakeHost("h-a", 4)
    host.sessions["running"] = "offer"  # started before this front: a restarted front takes it back
    assert await joined(pool, "h-a")
    assert pool.where("running")[1].name == "h-a"
    started = await pool.start_session("whip", "v=0", LiveSettings())
    host.end(started["session"], "the peer went silent")
    assert await wait_for(lambda: started["session"] not in pool.placed, timeout=5)
    with pytest.raises(SessionNotFoundError, match=r"^the session ended: the peer went silent$"):
        pool.where(started["session"])
    assert pool.where("running")[1].name == "h-a"


async def test_cluster_pool_keeps_a_session_started_after_the_status_was_asked_for(
    registry: dict[str, FakeHost], pool: HostPool
) -> None:
    host = registry["h-a"] = FakeHost("h-a", 4)
    assert await joined(pool, "h-a")
    asked = pool.clock()
    started = await pool.start_session("offer", "v=0", LiveSettings())
    old_status = {**host.do_status(), "sessions": []}  # asked before the session existed, answered after
    pool._update(pool.hosts["h-a"], old_status, asked)
    assert started["session"] in pool.placed


async def test_cluster_pool_loses_a_silent_host_and_ends_its_sessions_with_the_reason(
    registry: dict[str, FakeHost], pool: HostPool
) -> None:
    registry["h-a"], registry["h-b"] = FakeHost("h-a", 2), FakeHost("h-b", 2)
    assert await joined(pool, "h-a", "h-b")
    first = (await pool.start_session("offer", "v=0", LiveSettings()))["session"]
    second = (await pool.start_session("offer", "v=0", LiveSettings()))["session"]
    doomed, survivor = (first, second) if pool.placed[first].host == "h-a" else (second, first)
    registry["h-a"].silent = True
    assert await wait_for(lambda: "h-a" not in pool.hosts, timeout=5)
    with pytest.raises(SessionNotFoundError) as ended:
        pool.where(doomed)
    assert (
        str(ended.value) == "the session ended: its session host h-a on 127.0.0.1 was lost: it did not answer for 0.4 s"
    )
    assert pool.where(survivor)[1].name == "h-b"
    assert pool.capacity == 2
    assert pool.losses[-1]["host"] == "h-a"
    assert pool.losses[-1]["sessions"] == 1

    # it answers again, still the same instance: its sessions were written off, so it ends them before it takes more
    registry["h-a"].silent = False
    assert await joined(pool, "h-a")
    assert registry["h-a"].sessions == {}
    assert registry["h-a"].ended[-1][0] == doomed
    assert "lost contact" in registry["h-a"].ended[-1][1]


async def test_cluster_pool_loses_a_dead_host_at_once_and_places_on_the_others(
    registry: dict[str, FakeHost], pool: HostPool
) -> None:
    registry["h-a"], registry["h-b"] = FakeHost("h-a", 2), FakeHost("h-b", 2)
    assert await joined(pool, "h-a", "h-b")
    registry["h-a"].dead = True
    started = await pool.start_session("offer", "v=0", LiveSettings())  # h-a first by name: dead, so h-b
    assert started["host"] == "h-b"
    assert "h-a" not in pool.hosts
    assert pool.losses[-1]["why"] == "its process died"
    del registry["h-a"]  # Ray forgets the dead actor's name
    await asyncio.sleep(0.2)
    assert "h-a" not in pool.hosts
