"""A cluster's front (`dancecam serve --cluster`): the same page, routes, guards and JSON as `dancecam serve`, over
the session hosts of a Ray cluster instead of this process's sessions.

Offers go to the host the pool chooses, which answers with its own ICE candidates: media flow between the browser
and that host, never through here. Settings, stats, WHEP and ending a session reach the host the session runs on;
/api/stats, /api/info and /metrics cover every host. Stopping the front leaves the sessions running on their hosts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import ray
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engines.errors import HostUnavailableError
from realtime import __version__
from realtime.cluster.config import Refused
from realtime.cluster.pool import CALL_TIMEOUT_S, HostPool
from realtime.live.server import (
    HttpError,
    ServeOptions,
    SessionTotals,
    WebFront,
    make_app,
    metrics_response,
    session_metrics,
    whep_created,
    whip_created,
)
from realtime.live.session import SETTING_LIMITS, LiveSettings, SessionKind

log = logging.getLogger(__name__)

STATS_TIMEOUT_S = 2.0  # the page polls every second: a host that cannot answer by then is left out of that poll


def _answer(result: Any) -> Any:
    """A host's answer, or the `HttpError` its `Refused` says."""
    if isinstance(result, Refused):
        raise HttpError(result.status, result.message)
    return result


class ClusterFront(WebFront):
    """Route handlers over a `HostPool`."""

    def __init__(self, pool: HostPool, options: ServeOptions, defaults: LiveSettings | None = None) -> None:
        super().__init__(options)
        self.pool = pool
        self.defaults = defaults or LiveSettings()
        self.viewers: dict[str, str] = {}  # WHEP viewer id → the host it watches on

    async def startup(self, app: web.Application | None = None) -> None:
        await self.pool.start()

    # --- health and info --------------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        ready = sum(1 for h in self.pool.hosts.values() if h.ready)
        return web.json_response(
            {"status": "ok", "version": __version__, "sessions": len(self.pool.placed), "hosts": ready}
        )

    def _hosts(self) -> list[dict[str, Any]]:
        now = self.pool.clock()
        return [h.summary(self.pool.sessions_on(h.name), now) for h in self.pool.hosts.values()]

    async def info(self, request: web.Request) -> web.Response:
        pool = self.pool
        hosts = sorted(pool.hosts.values(), key=lambda h: (not h.ready, h.name))
        ready = [h for h in hosts if h.ready]
        services = next((h.status.get("services") for h in hosts if h.status.get("services")), None) or {}
        if ready:  # the hosts run the same models: the first one speaks for them
            services = ready[0].status.get("services") or services
            can_swap = services.get("can_swap") or {"ok": True, "reason": None}
        else:
            can_swap = {"ok": False, "reason": pool.full_reason()}
        summaries = self._hosts()
        return web.json_response(
            {
                "version": __version__,
                "engine": services.get("engine", "none"),
                "device": ", ".join(sorted({str(s["device"]) for s in summaries if s["device"]})) or "none",
                "weights": services.get("weights") or {"ok": False, "message": pool.full_reason(), "command": None},
                "source": services.get("source") or {"set": False, "key": None, "note": None, "photos": []},
                "needs_source": services.get("needs_source", False),
                "can_swap": can_swap,
                "backend": services.get("backend") or {"name": None, "precision": None, "message": None},
                "max_sessions": pool.capacity,
                "capacity": {
                    "max_sessions": pool.capacity,
                    "reason": f"{pool.capacity} session(s) on {len(ready)} session host(s)",
                    "source": "cluster",
                    "hosts": {h.name: h.status.get("capacity") for h in hosts},
                },
                "sessions": len(pool.placed),
                "token_required": self._token is not None,
                "settings": self.defaults.to_json(),
                "limits": SETTING_LIMITS,
                "cluster": {
                    "hosts": summaries,
                    "lost": pool.losses[-16:],
                    "front": {"dancecam": __version__, "ray": ray.__version__},
                },
            }
        )

    # --- sessions ---------------------------------------------------------------------------------------------

    async def _on_host(self, session_id: str, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """`method(session_id, *args)` on the host session `session_id` runs on; a 404 saying why when the session
        ended (its host lost while asked included)."""
        _, host = self.pool.where(session_id)
        try:
            return _answer(await self.pool.call(host, method, session_id, *args, timeout=timeout))
        except HostUnavailableError:
            self.pool.where(session_id)  # lost with its host meanwhile: SessionNotFoundError with the reason
            raise

    async def _start(self, kind: SessionKind, sdp: str, settings: LiveSettings) -> dict[str, Any]:
        started = _answer(await self.pool.start_session(kind, sdp, settings))
        log.info("session %s (%s) started on %s", started["session"], kind, started["host"])
        return started

    async def offer(self, request: web.Request) -> web.Response:
        sdp, changes = await self._offer(request)
        settings = self.defaults.updated(changes)  # checked here: a bad setting never reaches a host
        started = await self._start("offer", sdp, settings)
        return web.json_response({"sdp": started["answer"], "type": "answer", "session": started["session"]})

    async def whip(self, request: web.Request) -> web.Response:
        sdp = await self._sdp(request)
        started = await self._start("whip", sdp, self.defaults)
        return whip_created(started["session"], started["answer"])

    async def _end(self, session_id: str, reason: str) -> None:
        await self._on_host(session_id, "end", reason)
        self.pool.forget(session_id, reason)

    async def end_session(self, request: web.Request) -> web.Response:
        session_id = self._session_id(request)
        assert session_id is not None
        await self._end(session_id, "ended by the client")
        return web.Response(status=204)

    async def whip_end(self, request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        placed = self.pool.placed.get(session_id)
        if placed is None or placed.kind != "whip":
            raise HttpError(404, "no such WHIP session (it may have ended)")
        await self._end(session_id, "ended by the WHIP client")
        return web.Response(status=204)

    async def whep(self, request: web.Request) -> web.Response:
        sdp = await self._sdp(request)
        session_id = self._session_id(request, required=False) or self.pool.newest()
        if session_id is None:
            raise HttpError(404, "no live session to watch: start one first (the page, or WHIP from OBS)")
        _, host = self.pool.where(session_id)
        watching = await self._on_host(session_id, "watch", sdp)
        self.viewers[watching["viewer"]] = host.name
        return whep_created(watching["viewer"], watching["answer"])

    async def whep_end(self, request: web.Request) -> web.Response:
        viewer_id = request.match_info["id"]
        host = self.pool.hosts.get(self.viewers.pop(viewer_id, ""))
        if host is None:
            raise HttpError(404, "no such WHEP viewer")
        _answer(await self.pool.call(host, "unwatch", viewer_id))
        return web.Response(status=204)

    # --- source, settings, stats, metrics ---------------------------------------------------------------------

    async def source(self, request: web.Request) -> web.Response:
        photos = await self._photos(request)
        source = _answer(await self.pool.set_source(photos))
        log.info("new source identity %s on every session host", str(source.get("key"))[:12])
        return web.json_response(source)

    async def get_settings(self, request: web.Request) -> web.Response:
        session_id = self._session_id(request, required=False)
        if session_id is None:
            return web.json_response(self.defaults.to_json())
        return web.json_response(await self._on_host(session_id, "settings"))

    async def put_settings(self, request: web.Request) -> web.Response:
        session_id = self._session_id(request, required=False)
        changes = await self._json(request)
        if session_id is None:
            self.defaults = self.defaults.updated(changes)
            return web.json_response(self.defaults.to_json())
        return web.json_response(await self._on_host(session_id, "update_settings", changes))

    async def _all_stats(self) -> list[dict[str, Any]]:
        answers = await self.pool.ask_all("stats", None, timeout=STATS_TIMEOUT_S)
        rows: list[dict[str, Any]] = []
        for name, answer in answers.items():
            if isinstance(answer, (HostUnavailableError, Refused)):
                log.info("session host %s left out of the stats: %s", name, answer)
                continue
            rows += answer
        return rows

    async def stats(self, request: web.Request) -> web.Response:
        session_id = self._session_id(request, required=False)
        if session_id is not None:
            rows = await self._on_host(session_id, "stats", timeout=STATS_TIMEOUT_S)
        else:
            rows = await self._all_stats()
        hosts = self._hosts()
        return web.json_response(
            {
                "server": {
                    "sessions": len(self.pool.placed),
                    "max_sessions": self.pool.capacity,
                    "device": ", ".join(sorted({str(h["device"]) for h in hosts if h["device"]})) or "none",
                    "engine": ", ".join(sorted({str(h["engine"]) for h in hosts if h["engine"]})) or "none",
                    "hosts": hosts,
                },
                "sessions": rows,
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        rows = await self._all_stats()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_ClusterCollector(self.pool, rows))  # type: ignore[arg-type]
        return metrics_response(await asyncio.to_thread(generate_latest, registry))

    async def close_all(self, app: web.Application | None = None) -> None:
        """Stop watching the hosts; their sessions run on (a front started again takes them back)."""
        await self.pool.close()


class _ClusterCollector:
    """The metrics of one scrape: the sessions' (with a `host` label), each host's, and the cluster's totals."""

    def __init__(self, pool: HostPool, rows: list[dict[str, Any]]) -> None:
        self.pool = pool
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        pool = self.pool
        hosts = list(pool.hosts.values())
        by_cause: dict[str, int] = {}
        for h in hosts:
            for cause, count in (h.status.get("ended_by_cause") or {}).items():
                by_cause[cause] = by_cause.get(cause, 0) + int(count)
        if pool.lost_sessions:
            by_cause["host_lost"] = by_cause.get("host_lost", 0) + pool.lost_sessions
        ended = sum(int(h.status.get("ended_total") or 0) for h in hosts) + pool.lost_sessions
        totals = SessionTotals(len(pool.placed), pool.capacity, ended, by_cause)
        yield from session_metrics(totals, self.rows, ("host",))
        labels = ["host", "node"]
        up = GaugeMetricFamily("dancecam_host_up", "1: the session host answers and takes sessions", labels=labels)
        live = GaugeMetricFamily("dancecam_host_sessions", "Live sessions on the host", labels=labels)
        limit = GaugeMetricFamily("dancecam_host_max_sessions", "The host's session limit", labels=labels)
        for h in hosts:
            key = [h.name, str(h.status.get("node_id", ""))[:12]]
            up.add_metric(key, 1 if h.ready else 0)
            live.add_metric(key, pool.sessions_on(h.name))
            limit.add_metric(key, h.max_sessions)
        yield up
        yield live
        yield limit
        yield GaugeMetricFamily("dancecam_hosts", "Session hosts the front sees", value=len(hosts))
        yield CounterMetricFamily(
            "dancecam_hosts_lost", "Session hosts lost since the front started", value=len(pool.losses)
        )


def make_front_app(pool: HostPool, options: ServeOptions, defaults: LiveSettings | None = None) -> web.Application:
    """The front's aiohttp application: `make_app`'s routes over `pool`, which starts with the app."""
    front = ClusterFront(pool, options, defaults)
    app = make_app(front)
    app.on_startup.append(front.startup)
    return app
