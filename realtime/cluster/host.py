"""A session host: the body of the Ray actor that runs whole live sessions on one node (or one GPU).

It builds its models from the `HostConfig`'s `ModelSpec`, measures what it holds as `dancecam serve` does, and runs
its sessions' pipelines, worker threads and aiortc peers itself, so media flow between the browser and this process
directly; the front only passes offers, answers and requests here. Every method answers with plain values, or a
`Refused` with the HTTP status and message the front passes on. Design notes: docs/design-notes.md, realtime/cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import secrets
import time
from dataclasses import replace
from typing import Any

from engines.errors import DanceCamError, EngineStartError
from realtime import __version__
from realtime.cluster.config import HostConfig, Refused
from realtime.identity.source import PhotoInput
from realtime.live import capacity
from realtime.live.limits import Capacity
from realtime.live.peers import PeerSessions
from realtime.live.server import services_info
from realtime.live.session import LiveServices, LiveSettings, Session, SessionKind, SessionManager

log = logging.getLogger(__name__)

ENDED_REPORTED = 64  # ended sessions each status carries: the front learns their reasons from it


def versions() -> dict[str, str]:
    import aiortc
    import ray
    import torch

    return {
        "dancecam": __version__,
        "ray": ray.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "aiortc": aiortc.__version__,
    }


def _refused(error: DanceCamError) -> Refused:
    return Refused(error.http_status, str(error), type(error).__name__)


class SessionHost:
    """Sessions of one node. Ray runs it as an async actor: every method runs on the actor's one event loop, which
    Ray keeps running between calls, so the peers' tasks (ICE, DTLS, RTP, the watchdogs) live on it as they would
    on `dancecam serve`'s loop; frames run on each session's worker thread, never on that loop."""

    def __init__(self, config: HostConfig) -> None:
        import ray

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.config = config
        self.instance = secrets.token_hex(8)  # a host started again under the same name is another host
        self.node_id = ray.get_runtime_context().get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self.started = time.time()
        self.manager: SessionManager | None = None
        self.peers: PeerSessions | None = None
        self.reason: str | None = None  # why this host takes no sessions
        self.versions = versions()
        try:
            self._start_engine()
        except DanceCamError as e:
            self.reason = f"the engine could not start: {e}"
        except Exception as e:  # a broken device or library: this host says so and takes no sessions
            log.exception("session host %s could not start its engine", config.name)
            self.reason = f"the engine could not start: {type(e).__name__}: {e}"
        if self.reason:
            log.warning("session host %s takes no sessions: %s", config.name, self.reason)

    def _start_engine(self) -> None:
        c = self.config
        if c.peers.ice_addresses:
            from realtime.live.ice import check_addresses

            check_addresses(c.peers.ice_addresses)  # addresses of this node, where the peers gather
        services = LiveServices.from_spec(c.spec)
        if not services.ready:
            self.reason = services.weights.message or "the model weights are missing"
        if c.max_sessions is not None:
            limit = capacity.given(min(c.max_sessions, c.slots), c.target_fps)
        else:
            limit = capacity.measure(services, c.target_fps)  # the same probe as `dancecam serve`
        if limit.max_sessions > c.slots:
            limit = replace(limit, max_sessions=c.slots, reason=f"{limit.reason}; held to the {c.slots} slot(s) it has")
        self.manager = SessionManager(services, limit.max_sessions, c.defaults, limit)
        self.peers = PeerSessions(self.manager, c.peers)
        log.info("session host %s on node %s: %s", c.name, self.node_id[:12], limit.reason)

    @property
    def ready(self) -> bool:
        return self.reason is None and self.manager is not None

    # --- what the front polls ---------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """Who and how full this host is, and which sessions it runs and ended lately (polled every second)."""
        m = self.manager
        now_wall, now = time.time(), time.monotonic()
        sessions = (
            [{"id": s.id, "kind": s.kind, "created": now_wall - (now - s.created)} for s in m.sessions.values()]
            if m is not None
            else []
        )
        cap: Capacity | None = m.capacity if m is not None else None
        return {
            "name": self.config.name,
            "instance": self.instance,
            "node_id": self.node_id,
            "node_ip": self.node_ip,
            "pid": os.getpid(),
            "started": self.started,
            "ready": self.ready,
            "reason": self.reason,
            "max_sessions": m.max_sessions if m is not None and self.ready else 0,
            "capacity": cap.to_json() if cap is not None else None,
            "sessions": sessions,
            "ended": m.recently_ended(ENDED_REPORTED) if m is not None else [],
            "ended_total": m.ended if m is not None else 0,
            "ended_by_cause": dict(m.ended_by_cause) if m is not None else {},
            "services": services_info(m.services) if m is not None else None,
            "versions": self.versions,
        }

    # --- sessions ---------------------------------------------------------------------------------------------

    def _peers(self) -> PeerSessions:
        if self.peers is None or not self.ready:
            raise EngineStartError(f"session host {self.config.name} takes no sessions: {self.reason}")
        return self.peers

    async def start(self, kind: SessionKind, sdp: str, settings: LiveSettings) -> dict[str, Any] | Refused:
        """A new session answering `sdp`, with this node's ICE candidates in the answer."""
        try:
            session, answer = await self._peers().start(kind, sdp, settings)
        except DanceCamError as e:
            return _refused(e)
        return {"session": session.id, "answer": answer, "host": self.config.name}

    async def end(self, session_id: str, reason: str) -> Refused | None:
        try:
            peers = self._peers()
            await peers.end(peers.find(session_id), "client", reason)
        except DanceCamError as e:
            return _refused(e)
        return None

    async def end_all(self, reason: str) -> int:
        """End every session here, saying `reason` (a front that had lost this host and wrote its sessions off)."""
        if self.peers is None:
            return 0
        sessions = list(self.peers.manager.sessions.values())
        for session in sessions:
            await self.peers.end(session, "host_lost", reason)
        return len(sessions)

    def _session(self, session_id: str) -> Session:
        return self._peers().find(session_id)

    async def settings(self, session_id: str) -> dict[str, Any] | Refused:
        try:
            return self._session(session_id).settings.to_json()
        except DanceCamError as e:
            return _refused(e)

    async def update_settings(self, session_id: str, changes: object) -> dict[str, Any] | Refused:
        try:
            session = self._session(session_id)
            session.settings = session.settings.updated(changes)  # one reference swap, read by the worker per frame
        except DanceCamError as e:
            return _refused(e)
        return session.settings.to_json()

    async def stats(self, session_id: str | None = None) -> list[dict[str, Any]] | Refused:
        """Each session's stats (or the one named), each with the host and node it runs on."""
        try:
            peers = self._peers()
            sessions = [peers.find(session_id)] if session_id else list(peers.manager.sessions.values())
        except DanceCamError as e:
            return _refused(e)
        peers.refresh_states(sessions)
        return [{**s.stats(), "host": self.config.name, "node": self.node_id[:12]} for s in sessions]

    async def set_source(self, photos: list[PhotoInput]) -> dict[str, Any] | Refused:
        """The source identity of every session here (detection and ArcFace off the loop)."""
        try:
            services = self._peers().manager.services
            source = await asyncio.to_thread(services.set_source, photos)
        except DanceCamError as e:
            return _refused(e)
        return source.to_json()

    async def watch(self, session_id: str | None, sdp: str) -> dict[str, Any] | Refused:
        """A WHEP viewer of a session here (None: the newest) answering `sdp`."""
        try:
            peers = self._peers()
            viewer_id, answer = await peers.watch(peers.find(session_id) if session_id else None, sdp)
        except DanceCamError as e:
            return _refused(e)
        return {"viewer": viewer_id, "answer": answer}

    async def unwatch(self, viewer_id: str) -> Refused | None:
        try:
            await self._peers().unwatch(viewer_id)
        except DanceCamError as e:
            return _refused(e)
        return None

    async def shutdown(self) -> None:
        """End every session (`dancecam host --replace` before it stops this host)."""
        if self.peers is not None:
            await self.peers.close_all("its session host is being replaced")
