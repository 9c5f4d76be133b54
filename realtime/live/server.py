"""The HTTP side of `dancecam serve`: the page, signalling (/offer, WHIP, WHEP) and the session API.

Routes and their JSON are described in README ("Live serving"). Every error is JSON `{"error": message}` with a
4xx/5xx status; one bad request or one failing session never takes the server down. With a token set, every route
but the page and /healthz needs `Authorization: Bearer <token>`, compared in constant time. The page's files are read
into memory when the app is built: no request path or field ever reaches the file system.
"""

from __future__ import annotations

import abc
import asyncio
import hmac
import json
import logging
import mimetypes
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from yarl import URL

from engines.errors import ConfigError, DanceCamError, EngineStartError, NotReadyError, SignallingError
from realtime import __version__
from realtime.identity.cache import MAX_IMAGE_BYTES
from realtime.identity.source import DEFAULT_LABEL, MAX_PHOTOS, PhotoInput, check_weight
from realtime.live.peers import MAX_VIEWERS, PeerOptions, PeerSessions
from realtime.live.session import COUNTERS, SETTING_LIMITS, LiveServices, Session, SessionManager
from realtime.live.transport import CONNECT_TIMEOUT_S, IDLE_TIMEOUT_S, SILENCE_TIMEOUT_S, EndCause, Viewer

log = logging.getLogger(__name__)


def find_web_dir() -> Path:
    """The page's folder: the checkout's web/ when this code runs from one, else the installed `realtime/web`.

    The checkout comes first so that a worktree (or any clone run with its root on sys.path) serves its own page
    even where an editable install of another clone would map `realtime.web` elsewhere. A wheel carries web/ as
    package data of `realtime.web` (setup.py).
    """
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "web" / "index.html").is_file():
        return checkout / "web"
    return Path(str(resources.files("realtime") / "web"))


WEB_DIR = find_web_dir()
MAX_SDP_BYTES = 64 * 1024  # a browser offer with audio and video is 4-8 KiB
MAX_JSON_BYTES = 16 * 1024  # settings objects
SDP_TYPE = "application/sdp"
# on every response: no other site may frame the page (a framing page could click Start or upload through the
# Origin guard, whose requests would come from our own origin)
SECURITY_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ServeOptions:
    token: str | None = None  # required on API and signalling routes when set
    web_dir: Path = WEB_DIR
    max_sdp_bytes: int = MAX_SDP_BYTES
    max_upload_bytes: int = MAX_IMAGE_BYTES
    max_viewers: int = MAX_VIEWERS
    connect_timeout: float = CONNECT_TIMEOUT_S
    idle_timeout: float = IDLE_TIMEOUT_S
    silence_timeout: float = SILENCE_TIMEOUT_S
    # Host names a request may address; None: any. On a loopback bind this refuses DNS rebinding (a web page whose
    # own name resolves to 127.0.0.1 would otherwise be "same origin" with this server and could read it).
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS
    # the local addresses ICE offers (`--ice-address`); None: every interface but loopback (aioice's choice)
    ice_addresses: tuple[str, ...] | None = None

    def peer_options(self) -> PeerOptions:
        return PeerOptions(
            self.connect_timeout, self.idle_timeout, self.silence_timeout, self.ice_addresses, self.max_viewers
        )


# not in engines/errors.py: request framing (a status and headers chosen per request), never raised by library code
class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _same_origin(origin: str, request: web.Request) -> bool:
    """Whether a browser's Origin header names this server as the request addresses it (scheme, host and port)."""
    try:
        url = URL(origin)
    except ValueError:
        return False
    if not url.is_absolute() or url.scheme not in ("http", "https"):
        return False  # "null" (sandboxed pages, file://) and anything odd
    return url.scheme == request.scheme and url.host == request.url.host and url.port == request.url.port


def _amount(size: int) -> str:
    """A byte count for a message: "20 MB", "64 KiB", "900 bytes"."""
    if size >= 1_000_000 and size % 100_000 == 0:
        return f"{size / 1_000_000:g} MB"
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} bytes"


def _weighted(photos: list[PhotoInput], weighted: list[bool], text: str) -> PhotoInput:
    """The last photo with the `weight` field that follows it; `ConfigError` (422) for a weight out of place."""
    if not photos:
        raise ConfigError("a 'weight' field must follow the 'image' field it weighs")
    if weighted[-1]:
        raise ConfigError(f"two weights for {photos[-1].label}: give one 'weight' field after each 'image'")
    try:
        weight = float(text)
    except ValueError:
        raise ConfigError(f"the weight of {photos[-1].label} must be a number >= 0, got {text[:40]!r}") from None
    return replace(photos[-1], weight=check_weight(weight))  # all 0 is refused once all photos are in


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


# --- the page -------------------------------------------------------------------------------------------------


def load_page(web_dir: Path) -> dict[str, tuple[bytes, str]]:
    """Every file of the page, by URL path, read once: requests pick from this table and never touch the disk."""
    files: dict[str, tuple[bytes, str]] = {}
    if not web_dir.is_dir():
        return files
    for path in sorted(web_dir.rglob("*")):
        if not path.is_file() or path.name.startswith(".") or path.suffix in (".md", ".py"):
            continue
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix == ".js":
            kind = "text/javascript"  # ES modules need a JavaScript type, whatever the platform's table says
        if kind.startswith("text/") or kind.endswith(("javascript", "json", "svg+xml")):
            kind += "; charset=utf-8"
        files["/" + path.relative_to(web_dir).as_posix()] = (path.read_bytes(), kind)
    if "/index.html" in files:
        files["/"] = files["/index.html"]
    return files


# --- metrics --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionTotals:
    """The server-wide figures of the metrics: live sessions, their limit, and the sessions ended (by cause)."""

    sessions: int
    max_sessions: int
    ended: int
    ended_by_cause: dict[str, int]


def session_metrics(
    totals: SessionTotals, stats: list[dict[str, Any]], extra_labels: tuple[str, ...] = ()
) -> Iterator[Metric]:
    """Prometheus families for `totals` and per session from each session's `stats()`; `extra_labels` are keys of
    those stats added as labels after session and kind (a cluster's front adds "host")."""
    yield GaugeMetricFamily("dancecam_sessions", "Live sessions now", value=totals.sessions)
    yield GaugeMetricFamily("dancecam_max_sessions", "Session limit", value=totals.max_sessions)
    yield CounterMetricFamily("dancecam_sessions_ended", "Sessions ended since start", value=totals.ended)
    by_cause = CounterMetricFamily("dancecam_sessions_ended_by_cause", "Sessions ended, by why", labels=["cause"])
    for cause, count in sorted(totals.ended_by_cause.items()):
        by_cause.add_metric([cause], count)
    yield by_cause
    labels = ["session", "kind", *extra_labels]
    gauges = {
        "fps_in": GaugeMetricFamily("dancecam_input_fps", "Inbound video frames per second", labels=labels),
        "fps_out": GaugeMetricFamily("dancecam_output_fps", "Processed frames per second", labels=labels),
        "level": GaugeMetricFamily("dancecam_degradation_level", "0 = full quality", labels=labels),
    }
    counters = {
        name: CounterMetricFamily(f"dancecam_{name}", f"{name.replace('_', ' ').capitalize()}", labels=labels)
        for name in COUNTERS
    }
    faces = GaugeMetricFamily(
        "dancecam_faces", "Faces in the latest frame (detected: at the latest detection)", labels=[*labels, "state"]
    )
    stage = GaugeMetricFamily("dancecam_stage_ms", "Per-stage time (ms)", labels=[*labels, "stage", "quantile"])
    latency = GaugeMetricFamily(
        "dancecam_server_latency_ms", "Frame arrival to processed (ms)", labels=[*labels, "quantile"]
    )
    for s in stats:
        key = [s["id"], s["kind"], *(str(s.get(label, "")) for label in extra_labels)]
        gauges["fps_in"].add_metric(key, s["fps_in"])
        gauges["fps_out"].add_metric(key, s["fps_out"])
        gauges["level"].add_metric(key, s["degradation"].get("level", 0))
        for name, family in counters.items():
            family.add_metric(key, s["counters"].get(name, 0))
        for state, count in s["faces"].items():
            faces.add_metric([*key, state], count)
        for name, values in s["stages"].items():
            for q in ("p50", "p95", "p99"):
                if q in values:
                    stage.add_metric([*key, name, f"0.{q[1:]}"], values[q])
        for q, value in s["server_latency_ms"].items():
            latency.add_metric([*key, f"0.{q[1:]}"], value)
    yield from gauges.values()
    yield from counters.values()
    yield faces
    yield stage
    yield latency


class SessionCollector:
    """Prometheus metrics read from the sessions at scrape time: nothing is recorded on the hot path for them."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        m = self.manager
        totals = SessionTotals(len(m.sessions), m.max_sessions, m.ended, dict(m.ended_by_cause))
        yield from session_metrics(totals, [session.stats() for session in list(m.sessions.values())])


# --- the application ------------------------------------------------------------------------------------------


class WebFront(abc.ABC):
    """The HTTP side every DanceCam server shares: the page, the guards (allowed hosts, Origin, token), JSON errors,
    and reading requests (bodies within their limits, offers, source photos). A subclass answers the routes over
    its sessions: `LiveServer` over this process's, a cluster's front over its session hosts'."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.page = load_page(options.web_dir)
        self._token = options.token.encode() if options.token else None

    # --- middleware -------------------------------------------------------------------------------------------

    @web.middleware
    async def headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except HttpError as e:
            return _error(e.status, str(e), e.headers)
        except DanceCamError as e:  # each error type carries its status (engines/errors.py)
            if isinstance(e, EngineStartError):
                log.exception("%s %s failed", request.method, request.path)
            return _error(e.http_status, str(e))
        except web.HTTPException as e:
            if e.status < 400:
                raise
            message = e.reason or "error"
            if e.status == 404:
                message = f"not found: {request.path}"
            elif e.status == 405:
                message = f"{request.method} is not allowed on {request.path} (allowed: {e.headers.get('Allow', '')})"
            return _error(e.status, message, {k: v for k, v in e.headers.items() if k == "Allow"})
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return _error(500, "internal error: see the server's log")

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        allowed = self.options.allowed_hosts
        if allowed is not None and (request.url.host or "").strip("[]").lower() not in allowed:
            names = ", ".join(dict.fromkeys(allowed))
            raise HttpError(403, f"this server answers only to {names}, not to {request.host!r}")
        origin = request.headers.get("Origin")
        if origin is not None and request.method not in SAFE_METHODS and not _same_origin(origin, request):
            # browsers send Origin with every cross-site POST, PUT and DELETE: another site's page may not change
            # the source photo or settings, or start a session, through the user's browser
            raise HttpError(403, f"cross-origin request from {origin} refused: use the page this server serves")
        open_route = request.method in ("GET", "HEAD") and (request.path in self.page or request.path == "/healthz")
        if self._token is not None and not open_route:
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            # compare_digest takes the same time wherever the first difference is; header bytes that are not
            # UTF-8 (surrogate-escaped by aiohttp) make a wrong token, not a server error
            given_token = value.strip().encode("utf-8", "surrogateescape")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given_token, self._token):
                raise HttpError(
                    401,
                    "a valid token is required: send Authorization: Bearer <token>",
                    {"WWW-Authenticate": 'Bearer realm="dancecam"'},
                )
        return await handler(request)

    # --- the page ---------------------------------------------------------------------------------------------

    async def page_file(self, request: web.Request) -> web.Response:
        found = self.page.get(request.path)
        if found is None:
            raise HttpError(404, f"not found: {request.path}")
        body, kind = found
        return web.Response(body=body, headers={"Content-Type": kind})

    # --- request bodies ---------------------------------------------------------------------------------------

    async def _body(self, request: web.Request, limit: int, what: str) -> bytes:
        if request.content_length is not None and request.content_length > limit:
            raise HttpError(413, f"{what} is too large: at most {_amount(limit)}")
        data = await request.content.read(limit + 1)
        if len(data) > limit:
            raise HttpError(413, f"{what} is too large: at most {_amount(limit)}")
        return data

    async def _json(self, request: web.Request, limit: int = MAX_JSON_BYTES) -> Any:
        data = await self._body(request, limit, "the request body")
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "the request body is not valid JSON") from None

    async def _sdp(self, request: web.Request) -> str:
        if request.content_type != SDP_TYPE:
            raise HttpError(415, f"send the offer as {SDP_TYPE}, not {request.content_type or 'nothing'}")
        data = await self._body(request, self.options.max_sdp_bytes, "the offer")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise SignallingError("the offer is not UTF-8 text") from None

    async def _offer(self, request: web.Request) -> tuple[str, object]:
        """A page's `POST /offer` body: its SDP and its settings changes (not yet checked)."""
        body = await self._json(request, self.options.max_sdp_bytes + MAX_JSON_BYTES)
        if not isinstance(body, dict) or body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
            raise HttpError(400, 'send {"sdp": "<offer SDP>", "type": "offer"}')
        if len(body["sdp"].encode("utf-8", "surrogatepass")) > self.options.max_sdp_bytes:  # the body's limit is more
            raise HttpError(413, f"the offer is too large: at most {_amount(self.options.max_sdp_bytes)}")
        return body["sdp"], body.get("settings") or {}

    async def _photos(self, request: web.Request) -> list[PhotoInput]:
        """One or several photos (`image` fields, each optionally followed by a `weight` field), read within their
        limits; nothing is decoded yet."""
        limit = self.options.max_upload_bytes
        if request.content_length is not None and request.content_length > MAX_PHOTOS * (limit + 64 * 1024):
            raise HttpError(413, f"the upload is too large: at most {MAX_PHOTOS} photos of {_amount(limit)} each")
        if not request.content_type.startswith("multipart/"):
            raise HttpError(415, "send the photo as multipart/form-data with a file field named 'image'")
        photos: list[PhotoInput] = []
        weighted: list[bool] = []  # whether each photo's weight was given
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                name = getattr(part, "name", None)
                if name == "weight":
                    text = (await part.text()).strip()  # type: ignore[union-attr]
                    photos[-1:] = [_weighted(photos, weighted, text)]
                    weighted[-1] = True
                    continue
                if name != "image":
                    continue
                if len(photos) == MAX_PHOTOS:
                    raise ConfigError(f"more than {MAX_PHOTOS} source photos; one identity mixes at most {MAX_PHOTOS}")
                chunks, size = [], 0
                while chunk := await part.read_chunk(256 * 1024):  # type: ignore[union-attr]
                    size += len(chunk)
                    if size > limit:
                        raise HttpError(413, f"photo {len(photos) + 1} is too large: at most {_amount(limit)}")
                    chunks.append(chunk)
                data = b"".join(chunks)
                if not data:
                    raise HttpError(400, f"no photo in image field {len(photos) + 1}: it is empty")
                label = DEFAULT_LABEL if not photos else f"source photo {len(photos) + 1}"
                photos.append(PhotoInput(data, 1.0, label))
                weighted.append(False)
        except (ValueError, AssertionError) as e:
            raise HttpError(400, f"malformed multipart body: {e}") from None
        if not photos:
            raise HttpError(400, "no photo: send a non-empty file field named 'image'")
        if len(photos) > 1:
            photos[0] = replace(photos[0], label="source photo 1")
        return photos

    @staticmethod
    def _session_id(request: web.Request, required: bool = True) -> str | None:
        session_id = request.query.get("session") or request.match_info.get("id")
        if not session_id and required:
            raise HttpError(400, "name the session: ?session=<id>")
        return session_id or None

    # --- the routes (see `make_app`) --------------------------------------------------------------------------

    @abc.abstractmethod
    async def healthz(self, request: web.Request) -> web.Response: ...

    @abc.abstractmethod
    async def info(self, request: web.Request) -> web.Response: ...

    @abc.abstractmethod
    async def offer(self, request: web.Request) -> web.Response: ...

    @abc.abstractmethod
    async def end_session(self, request: web.Request) -> web.Response: ...

    @abc.abstractmethod
    async def whip(self, request: web.Request) -> web.Response: ...

    @abc.abstractmethod
    async def whip_end(self, request: web.Request) -> web.Response: ...

    @abc.abstractmethod
    async def whep(self, request: web.Request) -> web.Response: ...

    @abc.abstractmethod
    async def whep_end(self, request: web.Request) -> web.Response: ...

    @abc.abstractmethod
    async def source(self, request: web.Request) -> web.Response: ...

    @abc.abstractmethod
    async def get_settings(self, request: web.Request) -> web.Response: ...

    @abc.abstractmethod
    async def put_settings(self, request: web.Request) -> web.Response: ...

    @abc.abstractmethod
    async def stats(self, request: web.Request) -> web.Response: ...

    @abc.abstractmethod
    async def metrics(self, request: web.Request) -> web.Response: ...

    @abc.abstractmethod
    async def close_all(self, app: web.Application | None = None) -> None: ...


def whip_created(session_id: str, answer: str) -> web.Response:
    return web.Response(
        status=201,
        text=answer,
        content_type=SDP_TYPE,
        headers={"Location": f"/whip/{session_id}", "X-Session-Id": session_id},
    )


def whep_created(viewer_id: str, answer: str) -> web.Response:
    return web.Response(status=201, text=answer, content_type=SDP_TYPE, headers={"Location": f"/whep/{viewer_id}"})


def metrics_response(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


class LiveServer(WebFront):
    """Route handlers over one `SessionManager`: the sessions of this process."""

    def __init__(self, manager: SessionManager, options: ServeOptions) -> None:
        super().__init__(options)
        self.manager = manager
        self.services = manager.services
        self.peers = PeerSessions(manager, options.peer_options())
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SessionCollector(manager))  # type: ignore[arg-type]

    @property
    def viewers(self) -> dict[str, Viewer]:
        return self.peers.viewers

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__, "sessions": len(self.manager.sessions)})

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                **services_info(self.services),
                "version": __version__,
                "max_sessions": self.manager.max_sessions,
                "capacity": self.manager.capacity.to_json(),
                "sessions": len(self.manager.sessions),
                "token_required": self._token is not None,
                "settings": self.manager.defaults.to_json(),
                "limits": SETTING_LIMITS,
            }
        )

    def _session(self, request: web.Request, required: bool = True) -> Session | None:
        session_id = self._session_id(request, required)
        return self.peers.find(session_id) if session_id else None

    # --- sessions ---------------------------------------------------------------------------------------------

    async def end(self, session: Session, cause: EndCause, reason: str) -> None:
        await self.peers.end(session, cause, reason)

    async def offer(self, request: web.Request) -> web.Response:
        sdp, changes = await self._offer(request)
        settings = self.manager.defaults.updated(changes)
        session, answer = await self.peers.start("offer", sdp, settings)
        return web.json_response({"sdp": answer, "type": "answer", "session": session.id})

    async def end_session(self, request: web.Request) -> web.Response:
        session = self._session(request)
        assert session is not None
        await self.end(session, "client", "ended by the client")
        return web.Response(status=204)

    async def whip(self, request: web.Request) -> web.Response:
        sdp = await self._sdp(request)
        session, answer = await self.peers.start("whip", sdp, self.manager.defaults)
        return whip_created(session.id, answer)

    async def whip_end(self, request: web.Request) -> web.Response:
        session = self.manager.get(request.match_info["id"])
        if session is None or session.kind != "whip":
            raise HttpError(404, "no such WHIP session (it may have ended)")
        await self.end(session, "client", "ended by the WHIP client")
        return web.Response(status=204)

    async def whep(self, request: web.Request) -> web.Response:
        sdp = await self._sdp(request)
        viewer_id, answer = await self.peers.watch(self._session(request, required=False), sdp)
        return whep_created(viewer_id, answer)

    async def whep_end(self, request: web.Request) -> web.Response:
        await self.peers.unwatch(request.match_info["id"])
        return web.Response(status=204)

    # --- source, settings, stats, metrics ---------------------------------------------------------------------

    async def source(self, request: web.Request) -> web.Response:
        photos = await self._photos(request)
        # detection + ArcFace: off the loop; any error leaves the current identity as it was
        source = await asyncio.to_thread(self.services.set_source, photos)
        log.info(
            "new source identity %s (%d photo%s)", source.key[:12], len(source.photos), "s" * (len(source.photos) > 1)
        )
        return web.json_response(source.to_json())

    async def get_settings(self, request: web.Request) -> web.Response:
        session = self._session(request, required=False)
        return web.json_response((session.settings if session else self.manager.defaults).to_json())

    async def put_settings(self, request: web.Request) -> web.Response:
        session = self._session(request, required=False)
        changes = await self._json(request)
        if session is None:
            self.manager.defaults = self.manager.defaults.updated(changes)
            return web.json_response(self.manager.defaults.to_json())
        session.settings = session.settings.updated(changes)  # one reference swap, read by the worker per frame
        return web.json_response(session.settings.to_json())

    async def stats(self, request: web.Request) -> web.Response:
        session = self._session(request, required=False)
        sessions = [session] if session else list(self.manager.sessions.values())
        self.peers.refresh_states(sessions)
        return web.json_response(
            {
                "server": {
                    "sessions": len(self.manager.sessions),
                    "max_sessions": self.manager.max_sessions,
                    "device": str(self.services.device),
                    "engine": self.services.engine,
                },
                "sessions": [s.stats() for s in sessions],
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return metrics_response(await asyncio.to_thread(generate_latest, self.registry))

    async def close_all(self, app: web.Application | None = None) -> None:
        await self.peers.close_all()


def services_info(services: LiveServices) -> dict[str, Any]:
    """What /api/info says of the models and the source identity (a cluster's hosts say the same of theirs)."""
    source = services.source
    return {
        "engine": services.engine,
        "device": str(services.device),
        "weights": services.weights.to_json(),
        "source": {
            "set": source is not None,
            "key": source.key if source else None,
            "note": source.note if source else None,
            "photos": [p.to_json() for p in source.photos] if source else [],
        },
        "needs_source": services.engine == "facedancer",
        "can_swap": can_swap(services),
        "backend": {
            "name": services.backend if services.engine == "facedancer" else None,
            "precision": services.precision,
            "message": services.backend_message,
        },
    }


def can_swap(services: LiveServices) -> dict[str, Any]:
    """Whether a session can start now, and if not why (the page disables Start and shows it)."""
    try:
        services.check_can_swap()
    except NotReadyError as e:
        return {"ok": False, "reason": str(e)}
    return {"ok": True, "reason": None}


SERVER = web.AppKey("server", WebFront)


class _JsonErrorHandler(RequestHandler):
    """aiohttp answers a request it cannot parse (a URL or header over its limits, bad syntax) before any route or
    middleware, as plain text, and logs a traceback: answer it as JSON like every route, and log one line."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500 or not isinstance(exc, http_exceptions.HttpProcessingError):
            return super().handle_error(request, status, exc, message)  # a real fault: aiohttp's own report
        detail = str(exc.message or "").strip()
        if isinstance(exc, http_exceptions.LineTooLong):
            # the parser quotes the start of what it was reading: a URL starts with "/" (or a scheme)
            url = re.search(r"reading: (?:bytearray\()?b?['\"](/|https?:)", detail) is not None
            status, text = (414, "the URL is too long") if url else (431, "a request header is too long")
            text += f" (this server reads lines of up to {self.max_line_size} bytes)"
        else:
            first = detail.splitlines()[0].rstrip(": ") if detail else type(exc).__name__
            text = f"malformed HTTP request ({first})"
        log.warning("refused a request from %s: %s", request.remote, text)
        response = web.json_response({"error": text}, status=status, headers=SECURITY_HEADERS)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


def answer_unparsable_requests_as_json(app: web.Application) -> None:
    """Make every runner of `app` (aiohttp's AppRunner, its TestServer) serve connections with `_JsonErrorHandler`."""
    make = app._make_handler

    def make_handler(**kwargs: Any) -> web.Server:
        server = make(**kwargs)
        server.__class__ = _JsonErrorServer  # the same object; only its protocol factory differs
        return server

    app._make_handler = make_handler  # type: ignore[method-assign]


def make_app(server: WebFront) -> web.Application:
    """The aiohttp application over `server`'s routes. Closing the app calls its `close_all`."""
    # aiohttp's own body limit backs up the per-route ones (the upload is the largest body)
    app = web.Application(
        middlewares=[server.headers, server.errors, server.auth], client_max_size=server.options.max_upload_bytes * 2
    )
    answer_unparsable_requests_as_json(app)
    app[SERVER] = server
    r = app.router
    r.add_get("/healthz", server.healthz)
    r.add_get("/api/info", server.info)
    r.add_post("/offer", server.offer)
    r.add_delete("/api/sessions/{id}", server.end_session)
    r.add_post("/whip", server.whip)
    r.add_delete("/whip/{id}", server.whip_end)
    r.add_post("/whep", server.whep)
    r.add_delete("/whep/{id}", server.whep_end)
    r.add_post("/api/source", server.source)
    r.add_get("/api/settings", server.get_settings)
    r.add_put("/api/settings", server.put_settings)
    r.add_get("/api/stats", server.stats)
    r.add_get("/metrics", server.metrics)
    for path in server.page:
        r.add_get(path, server.page_file)
    app.on_shutdown.append(server.close_all)
    return app


def create_app(manager: SessionManager, options: ServeOptions | None = None) -> web.Application:
    """The aiohttp application for `manager`'s sessions. Closing the app ends every session."""
    return make_app(LiveServer(manager, options or ServeOptions()))
