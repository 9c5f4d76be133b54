"""Graceful degradation: when a live session cannot hold its frame rate, it gives up quality in a fixed order, one
step at a time, and takes the steps back when the load allows.

Design notes: docs/design-notes.md, section realtime/live/degrade.py.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from engines.errors import ConfigError
from realtime.pipeline.frame import PipelineConfig

MAX_TARGET_FPS = 240.0


@dataclass(frozen=True, slots=True)
class Level:
    """One degradation level, as reductions applied to the user's configuration (never increases)."""

    name: str
    detect_factor: int = 1  # detect_every is multiplied by this ...
    min_detect_every: int = 1  # ... and raised to at least this
    detect_scale: float = 1.0  # upper bound on the detector's input scale
    max_faces: int | None = None  # upper bound on the faces swapped per frame

    def apply(self, config: PipelineConfig) -> PipelineConfig:
        detect_every = min(120, max(config.detect_every * self.detect_factor, self.min_detect_every))
        choice, hide = config.choice, config.hide_bystanders
        if self.max_faces is not None and choice.max_faces > self.max_faces:
            # the faces no longer swapped are hidden (cheap), never shown: degrading costs quality, not privacy
            choice, hide = replace(choice, max_faces=self.max_faces), True
        return replace(
            config,
            detect_every=detect_every,
            detect_scale=min(config.detect_scale, self.detect_scale),
            choice=choice,
            hide_bystanders=hide,
        )


LEVELS: tuple[Level, ...] = (
    Level("full"),
    Level("detect less often", detect_factor=2, min_detect_every=2),
    Level("detect much less often", detect_factor=4, min_detect_every=4),
    Level("detect at half resolution", detect_factor=4, min_detect_every=4, detect_scale=0.5),
    Level("one face", detect_factor=4, min_detect_every=4, detect_scale=0.5, max_faces=1),
)


def validate_target_fps(value: float | None) -> float | None:
    """A target frame rate in (0, 240], or None (follow the input); ConfigError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"target frame rate must be a number of frames per second or null, got {value!r}")
    if not 0.0 < value <= MAX_TARGET_FPS:  # also rejects NaN
        raise ConfigError(f"target frame rate must be above 0 and at most {MAX_TARGET_FPS:g} fps, got {value}")
    return float(value)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What the event loop reads: replaced whole, never mutated, so a read is always consistent."""

    level: int = 0
    target_fps: float | None = None
    achieved_fps: float | None = None


class DegradationController:
    """Chooses the degradation level of one live session from its per-frame processing times.

    `observe` and `apply` are called from the session's worker thread; `state`, `level` and `name` may be read
    from any thread.
    """

    def __init__(
        self,
        target_fps: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        levels: tuple[Level, ...] = LEVELS,
        smoothing: float = 0.1,  # EMA weight of the newest frame
        outlier_cap: float = 4.0,  # a frame counts at most this many budgets
        degrade_after_s: float = 1.0,
        degrade_min_frames: int = 5,
        recover_fraction: float = 0.7,
        recover_after_s: float = 3.0,
        recover_min_frames: int = 10,
        recover_max_s: float = 30.0,
        probation_s: float = 10.0,  # a recovery undone within this long counts as a bounce
        settle_s: float = 0.5,
        fps_window_s: float = 2.0,
    ) -> None:
        if not levels or levels[0].apply(PipelineConfig()) != PipelineConfig():
            raise ConfigError("the first degradation level must leave the configuration unchanged")
        if not 0.0 < smoothing <= 1.0 or not 0.0 < recover_fraction < 1.0:
            raise ConfigError("smoothing must be in (0, 1] and the recovery fraction in (0, 1)")
        self.clock = clock
        self.levels = levels
        self.smoothing = smoothing
        self.outlier_cap = outlier_cap
        self.degrade_after_s = degrade_after_s
        self.degrade_min_frames = degrade_min_frames
        self.recover_fraction = recover_fraction
        self.recover_after_s = recover_after_s
        self.recover_min_frames = recover_min_frames
        self.recover_max_s = recover_max_s
        self.probation_s = probation_s
        self.settle_s = settle_s
        self.fps_window_s = fps_window_s
        self._lock = threading.Lock()
        self._target = validate_target_fps(target_fps)
        self._snapshot = _Snapshot()
        self._times: deque[float] = deque()
        self.reset()

    # --- settings and readings (any thread) ----------------------------------------------------------------

    @property
    def target_fps(self) -> float | None:
        """The set target; None follows the measured input rate."""
        return self._target

    @target_fps.setter
    def target_fps(self, value: float | None) -> None:
        value = validate_target_fps(value)
        with self._lock:
            self._target = value
            self._restart()  # old measurements were judged against another budget

    @property
    def level(self) -> int:
        return self._snapshot.level

    @property
    def name(self) -> str:
        return self.levels[self._snapshot.level].name

    def apply(self, config: PipelineConfig) -> PipelineConfig:
        """The user's config with this level's reductions (a copy); level 0 returns `config` itself."""
        level = self._snapshot.level
        return config if level == 0 else self.levels[level].apply(config)

    def state(self, config: PipelineConfig) -> dict[str, Any]:
        """The level and what it means for `config` (the user's), the target being held and the output rate."""
        snap = self._snapshot
        applied = config if snap.level == 0 else self.levels[snap.level].apply(config)
        choice = applied.choice
        return {
            "level": snap.level,
            "name": self.levels[snap.level].name,
            "detect_every": applied.detect_every,
            "detect_scale": applied.detect_scale,
            "max_faces": 1 if choice.mode == "largest" else choice.max_faces,
            "target_fps": None if snap.target_fps is None else round(snap.target_fps, 2),
            "achieved_fps": None if snap.achieved_fps is None else round(snap.achieved_fps, 2),
        }

    # --- the worker thread -----------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to level 0 with no history (a new stream)."""
        with self._lock:
            self._level = 0
            self._times.clear()
            self._recover_wait = self.recover_after_s
            self._last_change: tuple[float, int] | None = None  # (when, direction) of the last change
            self._restart()
            self._judge_from = -math.inf
            self._publish(None, None)

    def observe(self, processing_ms: float, input_fps: float | None, now: float | None = None) -> bool:
        """Record one processed frame; True when the level changed (apply() gives the new config)."""
        now = self.clock() if now is None else now
        with self._lock:
            self._times.append(now)
            while now - self._times[0] > self.fps_window_s:
                self._times.popleft()
            target = self._effective_target(input_fps)
            changed = False
            if target is not None and math.isfinite(processing_ms) and now >= self._judge_from:
                changed = self._judge(max(0.0, processing_ms), 1000.0 / target, now)
            self._publish(target, self._achieved())
            return changed

    # --- internals (under the lock) --------------------------------------------------------------------------

    def _effective_target(self, input_fps: float | None) -> float | None:
        if input_fps is None or not math.isfinite(input_fps) or input_fps <= 0:
            return self._target  # input rate not known (yet)
        rate = min(float(input_fps), MAX_TARGET_FPS)
        return rate if self._target is None else min(self._target, rate)  # output cannot outrun the input

    def _judge(self, ms: float, budget: float, now: float) -> bool:
        ms = min(ms, self.outlier_cap * budget)
        self._ema = ms if self._ema is None else self._ema + self.smoothing * (ms - self._ema)
        if self._ema > budget:
            self._under = None
            self._over = (now, 0) if self._over is None else self._over
            self._over = (self._over[0], self._over[1] + 1)
            since, frames = self._over
            if now - since >= self.degrade_after_s and frames >= self.degrade_min_frames:
                return self._change(+1, now)
        elif self._ema < self.recover_fraction * budget:
            self._over = None
            self._under = (now, 0) if self._under is None else self._under
            self._under = (self._under[0], self._under[1] + 1)
            since, frames = self._under
            if now - since >= self._recover_wait and frames >= self.recover_min_frames:
                return self._change(-1, now)
        else:  # inside the hysteresis band: neither
            self._over = self._under = None
        return False

    def _change(self, step: int, now: float) -> bool:
        new = min(max(self._level + step, 0), len(self.levels) - 1)
        if new == self._level:  # already at the last (or first) level: keep watching
            self._restart()
            return False
        if self._last_change is not None:
            when, last_step = self._last_change
            if step > 0 and last_step < 0 and now - when < self.probation_s:
                # the last recovery did not hold: wait longer before trying again
                self._recover_wait = min(2 * self._recover_wait, self.recover_max_s)
            elif last_step < 0 and (step < 0 or now - when >= self.probation_s):  # that recovery held
                self._recover_wait = self.recover_after_s
        self._level = new
        self._last_change = (now, step)
        self._restart()
        self._judge_from = now + self.settle_s
        return True

    def _restart(self) -> None:
        self._ema: float | None = None
        self._over: tuple[float, int] | None = None  # (since, frames) the average has been over budget
        self._under: tuple[float, int] | None = None  # (since, frames) it has been comfortably under

    def _achieved(self) -> float | None:
        if len(self._times) < 2 or self._times[-1] <= self._times[0]:
            return None
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])

    def _publish(self, target: float | None, achieved: float | None) -> None:
        self._snapshot = _Snapshot(self._level, target, achieved)
