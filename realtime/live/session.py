"""Live sessions without the network: settings, the shared models, each session's pipeline, stats and capacity.

Design notes: docs/design-notes.md, section realtime/live/session.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from engines.choices import DEFAULT_BACKEND, DEFAULT_DETECTOR, DEFAULT_DEVICE
from engines.command import plain
from engines.detect import FaceDetector
from engines.errors import (
    CapacityError,
    ConfigError,
    DanceCamError,
    EngineStartError,
    NoSourceError,
    SettingsError,
    WeightsNotReadyError,
)
from realtime.assembly import builder
from realtime.assembly.builder import Models
from realtime.assembly.spec import ModelSpec
from realtime.identity.cache import IdentityCache
from realtime.identity.source import IdentityBuilder, PhotoInput, SourceIdentity
from realtime.live import allocator
from realtime.live.degrade import DegradationController
from realtime.live.limits import Capacity, given
from realtime.pipeline.anonymize import FaceAnonymizer
from realtime.pipeline.badge import Badge, check_badge_text
from realtime.pipeline.choices import (
    BADGE_POSITIONS,
    BADGE_TEXT_MAX,
    DEFAULT_BADGE_POSITION,
    DEFAULT_BADGE_TEXT,
    DEFAULT_DETECT_EVERY,
    DEFAULT_DETECT_ON_CHANGE,
    DEFAULT_ENGINE,
    DEFAULT_FACE_MODE,
    DEFAULT_MASK,
    DEFAULT_MAX_FACES,
    DEFAULT_STYLE,
    DETECT_EVERY_RANGE,
    LIVE_FACE_MODES,
    MASKS,
    MAX_FACES_RANGE,
    STYLES,
    AnonymizeStyle,
    BadgePosition,
    EngineName,
    LiveFaceMode,
    MaskKind,
)
from realtime.pipeline.counters import read_counters
from realtime.pipeline.face_choice import FaceChoice
from realtime.pipeline.frame import (
    FaceDancerSwap,
    FramePipeline,
    FrameResult,
    IdentitySwap,
    PipelineConfig,
    SimulatedCost,
)
from realtime.pipeline.masks import MaskSpec
from realtime.pipeline.profiler import Profiler
from realtime.pipeline.rate import RateMeter
from realtime.pipeline.video import Frame

log = logging.getLogger(__name__)

SessionKind = Literal["offer", "whip"]
ENDED_KEPT = 256
# every session counter, zero until it first counts (stats and metrics always carry them all)
COUNTERS = (
    "dropped_frames",
    "repeated_frames",
    "fail_closed",
    "pipeline_errors",
    "detections",
    "entry_detections",  # of the detections, those the entry check asked for (change outside the tracked faces)
    "faces_detected",
    "faces_swapped",
)  # ended sessions whose reason /api/stats?session= still tells


# --- settings -------------------------------------------------------------------------------------------------

SETTING_LIMITS: dict[str, Any] = {
    "swap": "bool",
    "face_mode": list(LIVE_FACE_MODES),
    "max_faces": list(MAX_FACES_RANGE),
    "mask": list(MASKS),
    "colour_transfer": "bool",
    "detect_every": list(DETECT_EVERY_RANGE),
    "detect_on_change": "bool",
    "target_fps": [1, 120, None],
    "draw_boxes": "bool",
    "hide_bystanders": "bool",
    "style": list(STYLES),  # the anonymize engine's (the other engines ignore it)
    "badge": "bool",
    "badge_text": {"max_length": BADGE_TEXT_MAX},  # printable ASCII, not empty
    "badge_position": list(BADGE_POSITIONS),
}


@dataclass(frozen=True, slots=True)
class LiveSettings:
    """What a user may change while streaming. `target_fps` None: follow the camera's frame rate."""

    swap: bool = True
    face_mode: LiveFaceMode = DEFAULT_FACE_MODE
    max_faces: int = DEFAULT_MAX_FACES
    mask: MaskKind = DEFAULT_MASK
    colour_transfer: bool = False
    detect_every: int = DEFAULT_DETECT_EVERY
    detect_on_change: bool = DEFAULT_DETECT_ON_CHANGE  # also detect where something changed outside the faces
    target_fps: float | None = None
    draw_boxes: bool = False  # outline the tracked faces in the returned video
    style: AnonymizeStyle = DEFAULT_STYLE  # how the anonymize engine hides faces (and the bystanders)
    hide_bystanders: bool = False  # hide the faces not chosen (face mode largest, or past max_faces)
    badge: bool = False  # a visible "altered video" mark on every returned frame
    badge_text: str = DEFAULT_BADGE_TEXT
    badge_position: BadgePosition = DEFAULT_BADGE_POSITION

    def updated(self, changes: object) -> LiveSettings:
        """A copy with `changes` (a JSON object) applied; `SettingsError` names the first bad key or value."""
        if not isinstance(changes, Mapping):
            raise SettingsError('settings must be a JSON object, e.g. {"swap": false}')
        known = [f.name for f in fields(self)]
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in known:
                raise SettingsError(f"unknown setting {key!r}; known settings: {', '.join(known)}")
            values[key] = _check_setting(key, value)
        return replace(self, **values)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def pipeline_config(self) -> PipelineConfig:
        return PipelineConfig(
            swap=self.swap,
            detect_every=self.detect_every,
            detect_on_change=self.detect_on_change,
            choice=FaceChoice(self.face_mode, self.max_faces),
            mask=MaskSpec(self.mask),
            colour_transfer=self.colour_transfer,
            draw_boxes=self.draw_boxes,
            hide_bystanders=self.hide_bystanders,
            bystander_style=self.style,
            badge=Badge(self.badge_text, self.badge_position) if self.badge else None,
        )


def _check_setting(key: str, value: object) -> Any:
    limit = SETTING_LIMITS[key]
    if limit == "bool":
        if not isinstance(value, bool):
            raise SettingsError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(limit, dict):  # text
        try:
            return check_badge_text(value)
        except ConfigError as e:
            raise SettingsError(f"{key}: {e}") from None
    if isinstance(limit[0], str):
        if value not in limit:
            raise SettingsError(f"{key} must be one of {', '.join(limit)}, got {value!r}")
        return value
    if value is None and None in limit:
        return None
    lo, hi = limit[0], limit[1]
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "target_fps":
        if not is_number or not math.isfinite(float(value)) or not lo <= float(value) <= hi:  # type: ignore[arg-type]
            raise SettingsError(f"target_fps must be a number from {lo} to {hi} (or null: the camera's), got {value!r}")
        return float(value)  # type: ignore[arg-type]
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise SettingsError(f"{key} must be a whole number from {lo} to {hi}, got {value!r}")
    return value


# --- models and the source identity ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WeightsStatus:
    ok: bool
    message: str | None = None
    command: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, "command": self.command}


def _commands(message: str) -> str | None:
    """The shell commands a `ModelMissingError` message names (between backticks), joined with &&."""
    from engines.command import prefix

    parts = message.split("`")[1::2]
    return " && ".join(p for p in parts if p.startswith(prefix() + " ")) or None


class LiveServices:
    """The models every session shares (a `realtime.assembly` `Models`), and the current source identity. Build with
    `load`, or from parts (tests)."""

    def __init__(
        self,
        device: torch.device,
        detector: FaceDetector,
        engine: EngineName,
        facedancer: torch.nn.Module | None = None,
        arcface: torch.nn.Module | None = None,
        identities: IdentityCache | None = None,
        weights: WeightsStatus | None = None,
        backend: str = "eager",
        precision: str | None = None,
        weights_key: str = "random",
        cache_dir: Path | None = None,
        simulate_ms: float = 0.0,
    ) -> None:
        if engine == "facedancer" and (weights is None or weights.ok) and (facedancer is None or arcface is None):
            raise ConfigError("the facedancer engine needs FaceDancer and ArcFace models")
        spec = ModelSpec(engine=engine, device=str(device), backend=backend, simulate_ms=simulate_ms)
        models = Models(spec, device, detector, "", facedancer, arcface, identities, weights_key, cache_dir)
        models.backend, models.precision = backend, precision  # decided by the caller
        self._init(models, weights)

    def _init(self, models: Models, weights: WeightsStatus | None) -> None:
        self.models = models
        self.device = models.device
        self.detector = models.detector
        self.engine: EngineName = models.spec.engine
        self.facedancer = models.facedancer
        self.arcface = models.arcface
        self.identities = models.identities
        self.weights = weights or WeightsStatus(True)
        self.weights_key = models.weights_key
        self.cache_dir = models.cache_dir
        self.simulate_ms = models.spec.simulate_ms  # checked by the spec, applied per engine
        self.source: SourceIdentity | None = None
        self._source_lock = threading.Lock()  # one upload at a time; the detector is shared with the sessions

    @classmethod
    def from_models(cls, models: Models) -> LiveServices:
        """Services over what `build_models` made; missing weights (`models.missing`) become `weights`."""
        services = cls.__new__(cls)
        missing = models.missing
        weights = WeightsStatus(False, str(missing), _commands(str(missing))) if missing is not None else None
        services._init(models, weights)
        return services

    @property
    def backend(self) -> str:
        """FaceDancer's backend, resolved ("auto" is decided once, at load)."""
        return self.models.backend or "eager"

    @property
    def precision(self) -> str | None:
        return self.models.precision

    @property
    def backend_message(self) -> str | None:
        return self.models.backend_message

    @classmethod
    def load(
        cls,
        engine: EngineName = DEFAULT_ENGINE,
        device: str = DEFAULT_DEVICE,
        model_dir: Path | None = None,
        backend: str = DEFAULT_BACKEND,
        detector_name: str = DEFAULT_DETECTOR,
        simulate_ms: float = 0.0,
    ) -> LiveServices:
        """Load the detector and, for FaceDancer, the converted weights from the model directory.

        Missing weights do not stop the server: it starts, reports them in `weights` (the page shows the commands
        that fetch them) and refuses swapping sessions until restarted with them.
        """
        spec = ModelSpec(
            engine=engine,
            device=device,
            detector=detector_name,
            backend=backend,
            model_dir=model_dir,
            weights_optional=True,
            simulate_ms=simulate_ms,
        )
        return cls.from_spec(spec)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> LiveServices:
        """`build_models(spec)`, FaceDancer's backend chosen once (each session then makes its own runner on it)."""
        models = builder.build_models(spec)  # looked up at run time: tests watch the one builder
        log.info("%s", plain(models.detector_note))
        services = cls.from_models(models)
        if services.engine == "facedancer" and services.weights.ok:
            services.choose_backend()
        return services

    def choose_backend(self, backend: str | None = None) -> str:
        """Decide FaceDancer's backend once (for "auto": time the ones present); returns the line that says which.
        `backend`: instead of the one the services were made with."""
        assert self.facedancer is not None
        if backend is not None:
            self.models.spec = replace(self.models.spec, backend=backend)
        return self.models.choose_backend()

    @property
    def ready(self) -> bool:
        return self.weights.ok

    def set_source(self, photos: Sequence[PhotoInput] | bytes) -> SourceIdentity:
        """Check, decode and (for FaceDancer) embed and mix the source photos; the identity, with its w mapped once,
        becomes every session's source.

        Blocking (detection and ArcFace): call it from a thread. Raises `ConfigError` (count, weights),
        `ImageError`, `NoFaceError`, or `WeightsNotReadyError` when the weights are missing; the current source stays.
        """
        if self.engine == "anonymize":
            raise ConfigError("this server hides faces (engine anonymize) and puts none in: it takes no source photo")
        if not self.weights.ok:
            reason = self.weights.message or "weights are missing"
            raise WeightsNotReadyError(f"the source photo cannot be used yet: {reason}")
        inputs = [PhotoInput(photos)] if isinstance(photos, bytes) else list(photos)
        with self._source_lock:
            version = (self.source.version + 1) if self.source else 1
            self.source = self.identity_builder().build(inputs, version)
            return self.source

    def identity_builder(self) -> IdentityBuilder:
        return self.models.identity_builder()

    def check_can_swap(self) -> None:
        """A `NotReadyError` (`WeightsNotReadyError` or `NoSourceError`) when a new swapping session cannot start."""
        if not self.weights.ok:
            raise WeightsNotReadyError(self.weights.message or "model weights are missing")
        if self.engine == "facedancer" and self.source is None:
            raise NoSourceError("no source photo yet: upload one (POST /api/source) before starting")

    def make_engine(
        self, source: SourceIdentity | None, style: AnonymizeStyle | None = None
    ) -> FaceDancerSwap | IdentitySwap | FaceAnonymizer | SimulatedCost:
        """This session's engine on the backend chosen at load (`NoSourceError` before a source photo); `style`:
        the anonymize engine's (None: the spec's)."""
        return self.models.swap_engine(source, style)

    def new_pipeline(self, settings: LiveSettings) -> tuple[FramePipeline, int]:
        """A pipeline of its own for one session (own stream, buffers, tracker, profiler); and the source version."""
        source = self.source
        try:
            pipeline = FramePipeline(
                self.detector,
                self.make_engine(source, settings.style),
                settings.pipeline_config(),
                profiler=Profiler(self.device, window=300),
            )
        except DanceCamError as e:  # the server's fault, not the request's: 503 with the reason
            raise EngineStartError(f"this session's pipeline could not start: {e}") from e
        runner = getattr(pipeline.engine, "runner", None)
        if runner is not None:
            # now, not on the first face: a CUDA-graph capture or a TensorRT load takes seconds, and a failure
            # here refuses the session instead of leaving it showing stand-ins
            try:
                with pipeline.context.activate():
                    runner.activate()
            except Exception as e:
                try:
                    pipeline.close()
                except Exception:  # the activation's error is the one to report
                    log.exception("closing a pipeline whose backend did not start failed")
                raise EngineStartError(f"the {runner.backend} backend could not start this session: {e}") from e
        return pipeline, source.version if source else 0


# --- one session's pipeline, run by the worker thread ---------------------------------------------------------


class SessionPipeline:
    """What a session's worker thread runs: the user's settings and the degradation level applied per frame.

    A `FrameProcessor` for `PipelineWorker` (`process`, `close`), and a `CounterSource` (its pipeline's counters) for
    the stats. Settings and the source are read once per frame from `Session`, which the event loop replaces whole
    (an atomic swap).
    """

    def __init__(self, session: Session, services: LiveServices) -> None:
        # weak: the session owns its pipeline; a pipeline holding its session back made a reference cycle, so an
        # ended session (its frames, tracker, peer connection) waited for a full garbage collection to be freed
        self._session = weakref.ref(session)
        self.services = services
        self.inner, self._source_version = services.new_pipeline(session.settings)
        self.profiler = self.inner.profiler
        self.controller = DegradationController(session.settings.target_fps)
        self._config_for: tuple[LiveSettings, int] | None = None  # what `inner.config` was made from
        self.output_rate = RateMeter()
        self.size: tuple[int, int] | None = None
        self.faces = {"detected": 0, "tracked": 0, "swapped": 0}  # of the latest frame (detected: latest detection)

    def counters(self) -> dict[str, int]:
        return self.inner.counters()

    @property
    def session(self) -> Session:
        session = self._session()
        if session is None:
            raise RuntimeError("the session of this pipeline has ended")
        return session

    def process(self, frame: Frame, t: float | None = None) -> FrameResult:
        session = self.session
        settings = session.settings
        source = self.services.source
        if source is not None and source.version != self._source_version:
            engine = self.inner.engine
            slow = engine if isinstance(engine, SimulatedCost) else None
            swap = slow.engine if slow is not None else engine
            if isinstance(swap, FaceDancerSwap) and source.z_id is not None:
                swap = swap.with_source(source.z_id, source.w)  # w mapped once per identity; same runner
                self.inner.engine = SimulatedCost(swap, slow.ms) if slow is not None else swap
            else:
                self.inner.engine = self.services.make_engine(source, settings.style)
                close = getattr(engine, "close", None)
                if close is not None:
                    close()
            self._source_version = source.version
        hider = _anonymizer(self.inner.engine)
        if hider is not None and hider.style != settings.style:  # a new style: a new engine (no state, no weights)
            self.inner.engine = self.services.make_engine(source, settings.style)
        if self.controller.target_fps != settings.target_fps:
            self.controller.target_fps = settings.target_fps
        if self._config_for != (settings, self.controller.level):  # rebuilt only when settings or level change
            self.inner.config = self.controller.apply(settings.pipeline_config())
            self._config_for = (settings, self.controller.level)
        start = time.perf_counter()
        result = self.inner.process(frame, t)
        ms = (time.perf_counter() - start) * 1e3
        self.size = (frame.width, frame.height)
        self.controller.observe(ms, session.input_rate.rate() or None)
        self.output_rate.tick()
        found = self.faces["detected"] if result.found is None else result.found
        self.faces = {"detected": found, "tracked": result.tracked, "swapped": result.faces}  # one reference swap
        return result

    def close(self) -> None:
        self.inner.close()


def _anonymizer(engine: object) -> FaceAnonymizer | None:
    """The anonymize engine inside `engine` (maybe under a simulated cost), else None."""
    inner = engine.engine if isinstance(engine, SimulatedCost) else engine
    return inner if isinstance(inner, FaceAnonymizer) else None


# --- sessions -------------------------------------------------------------------------------------------------


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0}
    p50, p95 = np.percentile(np.asarray(values, np.float64), [50, 95])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}


class Session:
    """One live stream's state on the event loop. `link` is the transport's object (peer connection, tracks)."""

    def __init__(self, kind: SessionKind, settings: LiveSettings) -> None:
        self.id = secrets.token_urlsafe(12)
        self.kind: SessionKind = kind
        self.settings = settings
        self.created = time.monotonic()
        self.input_rate = RateMeter()  # ticked by the transport for every inbound video frame
        self.pipeline: SessionPipeline | None = None
        self.link: Any = None  # realtime.live.transport.Publisher once negotiated
        self.state = "new"
        self.closed = False

    def latencies(self) -> list[float]:
        worker = getattr(self.link, "worker", None)
        return list(worker.latencies) if worker is not None else []

    def stats(self) -> dict[str, Any]:
        pipeline = self.pipeline
        snapshot = pipeline.profiler.snapshot() if pipeline else {"stages": {}, "end_to_end": {}}
        counters = {k: 0 for k in COUNTERS}
        counters.update(read_counters(pipeline, getattr(self.link, "worker", None)))
        config = self.settings.pipeline_config()
        degradation = pipeline.controller.state(config) if pipeline else {"level": 0}
        width, height = pipeline.size if pipeline and pipeline.size else (None, None)
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "age_s": round(time.monotonic() - self.created, 1),
            "width": width,
            "height": height,
            "fps_in": round(self.input_rate.rate(), 1),
            "fps_out": round(pipeline.output_rate.rate(), 1) if pipeline else 0.0,
            "target_fps": self.settings.target_fps,
            "degradation": degradation,
            "faces": dict(pipeline.faces) if pipeline else {"detected": 0, "tracked": 0, "swapped": 0},
            "stages": snapshot.get("stages", {}),
            "end_to_end": snapshot.get("end_to_end", {}),
            "server_latency_ms": _percentiles(self.latencies()),
            "counters": counters,
            "viewers": len(getattr(self.link, "viewers", ()) or ()),
            "media_route": self.link.media_route() if self.link is not None else None,
            "settings": self.settings.to_json(),
        }


def _close_built(build: asyncio.Future[Session]) -> None:
    """Close a session built for a request that was cancelled meanwhile (its device memory, off the loop)."""
    if build.cancelled() or build.exception() is not None:
        return
    pipeline = build.result().pipeline
    if pipeline is not None:
        asyncio.get_running_loop().run_in_executor(None, pipeline.close)


class SessionManager:
    """Sessions by id, the capacity limit, and the default settings for new sessions."""

    def __init__(
        self,
        services: LiveServices,
        max_sessions: int,
        defaults: LiveSettings | None = None,
        capacity: Capacity | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ConfigError(f"--max-sessions must be at least 1, got {max_sessions}")
        # each session's threads would get malloc arenas of their own, each keeping memory it cannot give back
        allocator.limit_arenas()
        self.services = services
        self.max_sessions = max_sessions
        self.capacity = capacity or given(max_sessions)  # how the limit was found, for /api/info
        self.defaults = defaults or LiveSettings()
        self.sessions: dict[str, Session] = {}
        self.ended = 0
        self.ended_by_cause: dict[str, int] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()  # session id → why it ended
        self._building = 0  # sessions whose pipelines are being built off the loop: they count against the limit

    def create(self, kind: SessionKind, settings: LiveSettings | None = None) -> Session:
        """A new session with its own pipeline, built on this thread; `CapacityError`, `NotReadyError` or
        `EngineStartError` when it cannot start."""
        self._admit()
        session = self._build(kind, settings)
        self.sessions[session.id] = session
        return session

    async def open(self, kind: SessionKind, settings: LiveSettings | None = None) -> Session:
        """`create` for the event loop: the pipeline is built on a worker thread (its engine, device context and
        the backend's activation take from milliseconds to seconds), while the capacity is checked and held here."""
        self._admit()
        self._building += 1
        build = asyncio.ensure_future(asyncio.to_thread(self._build, kind, settings))
        try:
            session = await asyncio.shield(build)
        except asyncio.CancelledError:  # the request went away: what the thread builds is closed, not kept, and
            build.add_done_callback(self._abandoned)  # its place stays taken until the thread has finished
            raise
        except BaseException:
            self._building -= 1
            raise
        self._building -= 1
        self.sessions[session.id] = session
        return session

    def _abandoned(self, build: asyncio.Future[Session]) -> None:
        self._building -= 1
        _close_built(build)

    def _admit(self) -> None:
        if len(self.sessions) + self._building >= self.max_sessions:
            raise CapacityError(
                f"the server is at its limit of {self.max_sessions} session(s); try again when one ends"
            )
        self.services.check_can_swap()

    def _build(self, kind: SessionKind, settings: LiveSettings | None) -> Session:
        session = Session(kind, settings or self.defaults)
        session.pipeline = SessionPipeline(session, self.services)
        return session

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    def newest(self) -> Session | None:
        return max(self.sessions.values(), key=lambda s: s.created, default=None)

    def forget(self, session: Session, cause: str = "client", reason: str = "ended") -> None:
        if self.sessions.pop(session.id, None) is not None:
            self.ended += 1
            self.ended_by_cause[cause] = self.ended_by_cause.get(cause, 0) + 1
            self._ended[session.id] = reason
            while len(self._ended) > ENDED_KEPT:
                self._ended.popitem(last=False)

    def recently_ended(self, limit: int = ENDED_KEPT) -> list[tuple[str, str]]:
        """The last `limit` sessions that ended, oldest first: (id, why)."""
        return list(self._ended.items())[-limit:]

    def ended_reason(self, session_id: str) -> str | None:
        """Why a recently ended session ended (the last `ENDED_KEPT` are remembered), else None."""
        return self._ended.get(session_id)
