"""Sessions with their peers: a `SessionManager`'s sessions, each with its `Publisher`, and the WHEP viewers.

What starts and ends a live session once its request has been read, wherever it runs: `dancecam serve`'s HTTP
handlers call it on their loop, and so does a cluster's session host on its actor's loop.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from engines.errors import CapacityError, SessionNotFoundError
from realtime.live.session import LiveSettings, Session, SessionKind, SessionManager
from realtime.live.transport import CONNECT_TIMEOUT_S, IDLE_TIMEOUT_S, SILENCE_TIMEOUT_S, EndCause, Publisher, Viewer

log = logging.getLogger(__name__)

MAX_VIEWERS = 8  # WHEP players per session: each costs one video encode
NO_SUCH_SESSION = "no such session (it may have ended)"


@dataclass(frozen=True, slots=True)
class PeerOptions:
    connect_timeout: float = CONNECT_TIMEOUT_S
    idle_timeout: float = IDLE_TIMEOUT_S
    silence_timeout: float = SILENCE_TIMEOUT_S
    # the local addresses ICE offers (`--ice-address`); None: every interface but loopback (aioice's choice)
    ice_addresses: tuple[str, ...] | None = None
    max_viewers: int = MAX_VIEWERS


class PeerSessions:
    """Start, watch and end `manager`'s sessions over WebRTC. Call it on the event loop the peers live on."""

    def __init__(self, manager: SessionManager, options: PeerOptions | None = None) -> None:
        self.manager = manager
        self.options = options or PeerOptions()
        self.viewers: dict[str, Viewer] = {}

    async def start(self, kind: SessionKind, sdp: object, settings: LiveSettings) -> tuple[Session, str]:
        """A new session answering `sdp`; `CapacityError`, `NotReadyError`, `EngineStartError` or
        `SignallingError` when it cannot start (nothing of it stays behind)."""
        session = await self.manager.open(kind, settings)  # built off the loop
        assert session.pipeline is not None
        o = self.options
        publisher = Publisher(
            session.pipeline,
            echo=kind == "offer",
            on_end=lambda cause, reason: self.end(session, cause, reason),
            on_input=session.input_rate.tick,
            name=f"dancecam-{kind}-{session.id[:6]}",
            connect_timeout=o.connect_timeout,
            idle_timeout=o.idle_timeout,
            ice_addresses=o.ice_addresses,
            silence_timeout=o.silence_timeout,
        )
        session.link = publisher
        try:
            answer = await publisher.answer(sdp)
        except BaseException as e:  # a bad offer, or the request was cancelled: nothing of it may stay behind
            await self.end(session, "negotiation_failed", f"negotiation failed: {e}")
            raise
        log.info("session %s (%s) started", session.id, kind)
        return session, answer

    async def end(self, session: Session, cause: EndCause, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        self.manager.forget(session, cause, reason)
        log.info("session %s ended: %s", session.id, reason)
        for viewer_id, viewer in list(self.viewers.items()):
            if viewer.publisher is session.link:
                self.viewers.pop(viewer_id, None)
        if session.link is not None:
            try:
                await session.link.close()
            except Exception:
                log.exception("closing session %s failed", session.id)

    def find(self, session_id: str) -> Session:
        """The live session `session_id`; `SessionNotFoundError` saying why it ended when it is remembered."""
        session = self.manager.get(session_id)
        if session is None:
            ended = self.manager.ended_reason(session_id)
            raise SessionNotFoundError(f"the session ended: {ended}" if ended else NO_SUCH_SESSION)
        return session

    async def watch(self, session: Session | None, sdp: object) -> tuple[str, str]:
        """A WHEP viewer of `session` (None: the newest) answering `sdp`: its id and the answer."""
        session = session or self.manager.newest()
        if session is None or session.link is None or session.link.live is None:
            raise SessionNotFoundError("no live session to watch: start one first (the page, or WHIP from OBS)")
        publisher: Publisher = session.link
        if len(publisher.viewers) >= self.options.max_viewers:
            raise CapacityError(f"that session already has {self.options.max_viewers} viewers")
        viewer = Viewer(publisher)
        try:
            answer = await viewer.answer(sdp)
        except BaseException:
            await viewer.close()
            raise
        viewer_id = secrets.token_urlsafe(12)
        self.viewers[viewer_id] = viewer
        return viewer_id, answer

    async def unwatch(self, viewer_id: str) -> None:
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None:
            raise SessionNotFoundError("no such WHEP viewer")
        await viewer.close()

    def refresh_states(self, sessions: list[Session]) -> None:
        """Each session's `state` from its peer connection (read when stats are asked for)."""
        for s in sessions:
            if s.link is not None:
                s.state = s.link.state

    async def close_all(self, reason: str = "the server is shutting down") -> None:
        for viewer in list(self.viewers.values()):
            await viewer.close()
        self.viewers.clear()
        for session in list(self.manager.sessions.values()):
            await self.end(session, "shutdown", reason)
