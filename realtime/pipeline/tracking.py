"""Landmark smoothing and face tracking between detections.

Design notes: docs/design-notes.md, section realtime/pipeline/tracking.py.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["FaceTracker", "OneEuroFilter", "Track", "box_iou"]


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    # Smoothing factor of a first-order low-pass with this cutoff sampled at step dt (the paper's eq. for alpha).
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


class OneEuroFilter:
    """One Euro filter over an array of any fixed shape (each element filtered with its own adaptive cutoff).

    `min_cutoff` (Hz) sets the smoothing of a still signal, `beta` how fast the cutoff rises with speed (per unit of
    x / scale per second), `d_cutoff` (Hz) the smoothing of the speed estimate. Timestamps are in seconds and may be
    irregular; a sample whose timestamp does not advance is ignored (the previous estimate is returned).
    """

    __slots__ = ("_dx", "_t", "_x", "beta", "d_cutoff", "min_cutoff")

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        self.min_cutoff = _check_positive("min_cutoff", min_cutoff)
        self.d_cutoff = _check_positive("d_cutoff", d_cutoff)
        beta = float(beta)
        if not math.isfinite(beta) or beta < 0.0:
            raise ValueError(f"beta must be a non-negative finite number, got {beta!r}")
        self.beta = beta
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t = 0.0

    def reset(self) -> None:
        """Forget the state: the next sample passes through unchanged."""
        self._x = self._dx = None

    @property
    def initialised(self) -> bool:
        return self._x is not None

    @property
    def value(self) -> np.ndarray:
        """The last filtered value."""
        if self._x is None:
            raise RuntimeError("the filter has seen no sample yet")
        return self._x.copy()

    @property
    def velocity(self) -> np.ndarray:
        """The filtered derivative (units of x per second)."""
        if self._dx is None:
            raise RuntimeError("the filter has seen no sample yet")
        return self._dx.copy()

    @property
    def time(self) -> float:
        return self._t

    def __call__(self, x: np.ndarray | float, t: float, scale: float | None = None) -> np.ndarray:
        """Filter sample `x` taken at time `t` (seconds); `scale` divides the speed that drives the cutoff."""
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("the filter input must be finite")
        t = float(t)
        if self._x is None or self._dx is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        if x.shape != self._x.shape:
            raise ValueError(f"the filter was started with shape {self._x.shape}, got {x.shape}")
        dt = t - self._t
        if dt <= 0.0:
            return self._x.copy()
        speed_norm = 1.0 if scale is None else _check_positive("scale", scale)
        self._dx = self._dx + _alpha(self.d_cutoff, dt) * ((x - self._x) / dt - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx) / speed_norm
        self._x = self._x + _alpha(cutoff, dt) * (x - self._x)
        self._t = t
        return self._x.copy()

    def predict(self, t: float, horizon: float) -> np.ndarray:
        """The filtered value carried to time `t` at the filtered velocity, for at most `horizon` seconds."""
        if self._x is None or self._dx is None:
            raise RuntimeError("the filter has seen no sample yet")
        step = min(max(float(t) - self._t, 0.0), horizon)
        return self._x + self._dx * step


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every box of `a` (N, 4) and every box of `b` (M, 4), both x0, y0, x1, y1: an (N, M) array."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0.0, inter / np.where(union > 0.0, union, 1.0), 0.0)


@dataclass(frozen=True, slots=True)
class Track:
    """One tracked face as the pipeline sees it for one frame (a snapshot; the tracker keeps its own state)."""

    id: int
    box: np.ndarray  # (4,) x0, y0, x1, y1, smoothed (or extrapolated between detections)
    landmarks: np.ndarray  # (5, 2) smoothed, the Detections order
    confidence: float  # last detection score, halved for every detection the track missed since
    last_seen: float  # timestamp (s) of the last matched detection
    age: int  # detections matched to this track so far
    misses: int  # consecutive updates without a matching detection


class _DetectionsLike(Protocol):
    boxes: object
    scores: object
    landmarks: object


def _host(value: object) -> np.ndarray:
    # Detections carry torch tensors (possibly on the GPU); this is the one place they come to the host.
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()  # type: ignore[attr-defined]
    return np.asarray(value, dtype=np.float64)


@dataclass(slots=True)
class _State:
    id: int
    filter: OneEuroFilter
    score: float
    last_seen: float
    age: int = 1
    misses: int = 0


class FaceTracker:
    """Tracks faces across frames: IoU association on detection frames, One Euro smoothing, extrapolation between.

    Defaults are tuned for landmark noise of about 1.5 px on faces of about 100 px at 30 fps (see the tests): a still
    face's frame-to-frame jitter drops ~4x, a moving one's ~2x, and a moving face never trails by more than
    1 / (2π beta), about 2 %, of its size.
    """

    def __init__(
        self,
        iou_threshold: float = 0.3,
        max_misses: int = 2,
        min_cutoff: float = 1.0,
        beta: float = 8.0,
        d_cutoff: float = 1.0,
        horizon: float = 0.25,
    ) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_misses < 0:
            raise ValueError(f"max_misses must be >= 0, got {max_misses}")
        if not (math.isfinite(horizon) and horizon >= 0.0):
            raise ValueError(f"horizon must be a non-negative number of seconds, got {horizon}")
        OneEuroFilter(min_cutoff, beta, d_cutoff)  # validates the filter parameters once, here
        self.iou_threshold = float(iou_threshold)
        self.max_misses = int(max_misses)
        self.filter_params = (float(min_cutoff), float(beta), float(d_cutoff))
        self.horizon = float(horizon)
        self._states: list[_State] = []
        self._ids = itertools.count()

    def reset(self) -> None:
        """Drop every track (ids keep counting up, so an old id never names a new face)."""
        self._states.clear()

    @property
    def tracks(self) -> list[Track]:
        """The live tracks at their last filtered state."""
        return [self._snapshot(s, s.filter.value) for s in self._states]

    def update(
        self, detections: _DetectionsLike | tuple[object, object, object], t: float, count_misses: bool = True
    ) -> list[Track]:
        """Fold in one frame's detections (a `Detections`, or (boxes, scores, landmarks) arrays) taken at `t` s.
        `count_misses` False: an extra detection, looking for new faces; a track it does not match is kept as it was
        (its `max_misses` budget is spent by the scheduled detections only, so it covers as long as before)."""
        if isinstance(detections, tuple):
            boxes, scores, landmarks = (_host(v) for v in detections)
        elif hasattr(detections.boxes, "detach"):  # tensors, maybe on the GPU: one copy to the host, not three
            import torch

            n = int(detections.boxes.shape[0])  # type: ignore[attr-defined]
            parts = (detections.boxes, detections.scores, detections.landmarks)
            widths = (4, 1, 10)  # boxes, scores, 5 (x, y) landmarks
            flat = _host(torch.cat([t.reshape(n, k).double() for t, k in zip(parts, widths, strict=True)], 1))  # type: ignore[attr-defined]
            boxes, scores, landmarks = flat[:, :4], flat[:, 4], flat[:, 5:]
        else:
            boxes, scores, landmarks = _host(detections.boxes), _host(detections.scores), _host(detections.landmarks)
        boxes, landmarks = boxes.reshape(-1, 4), landmarks.reshape(-1, 5, 2)
        scores = scores.reshape(-1)
        if not len(boxes) == len(scores) == len(landmarks):
            raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(landmarks)} landmark sets differ")

        predicted = np.stack([s.filter.predict(t, self.horizon)[:4] for s in self._states]) if self._states else None
        pairs = self._associate(predicted, boxes)
        matched = set()
        for ti, di in pairs:
            state = self._states[ti]
            state.filter(np.concatenate([boxes[di], landmarks[di].reshape(-1)]), t, _face_size(state.filter.value))
            state.score, state.last_seen, state.misses = float(scores[di]), float(t), 0
            state.age += 1
            matched.add(ti)
        for ti, state in enumerate(self._states):
            if ti not in matched and count_misses:
                state.misses += 1
        self._states = [s for s in self._states if s.misses <= self.max_misses]
        taken = {di for _, di in pairs}
        for di in range(len(boxes)):
            if di not in taken:
                f = OneEuroFilter(*self.filter_params)
                f(np.concatenate([boxes[di], landmarks[di].reshape(-1)]), t)
                self._states.append(_State(next(self._ids), f, float(scores[di]), float(t)))
        # Coasting tracks (missed this time) are still reported, carried forward, so a face the detector missed
        # once stays covered (fail closed) until max_misses runs out.
        return self.predict(t)

    def predict(self, t: float) -> list[Track]:
        """The tracks at time `t` with no detection: extrapolated at constant velocity for at most `horizon` s."""
        return [self._snapshot(s, s.filter.predict(t, self.horizon)) for s in self._states]

    def _associate(self, predicted: np.ndarray | None, boxes: np.ndarray) -> list[tuple[int, int]]:
        if predicted is None or len(boxes) == 0:
            return []
        iou = box_iou(predicted, boxes)
        pairs = []
        # Greedy: best remaining pair first; exact assignment is not worth it for a few faces.
        for _ in range(min(iou.shape)):
            ti, di = np.unravel_index(int(np.argmax(iou)), iou.shape)
            if iou[ti, di] < self.iou_threshold:
                break
            pairs.append((int(ti), int(di)))
            iou[ti, :] = -1.0
            iou[:, di] = -1.0
        return pairs

    @staticmethod
    def _snapshot(state: _State, vector: np.ndarray) -> Track:
        return Track(
            id=state.id,
            box=vector[:4].astype(np.float32),
            landmarks=vector[4:].reshape(5, 2).astype(np.float32),
            confidence=state.score * 0.5**state.misses,
            last_seen=state.last_seen,
            age=state.age,
            misses=state.misses,
        )


def _face_size(vector: np.ndarray) -> float:
    # sqrt of the smoothed box area: steadier than the raw detection, and never zero.
    w, h = vector[2] - vector[0], vector[3] - vector[1]
    return max(math.sqrt(max(w, 0.0) * max(h, 0.0)), 1.0)
