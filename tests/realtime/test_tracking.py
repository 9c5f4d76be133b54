"""One Euro smoothing and face tracking on synthetic point sequences (the tracker only sees points, so no images).

Faces follow the astronaut's ground-truth box and landmarks through a known similarity per frame at 30 fps, with
gaussian detection noise. Jitter is the std of frame-to-frame differences minus the true differences.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engines.detect import Detections
from realtime.pipeline.tracking import FaceTracker, OneEuroFilter, box_iou
from tests import faces

FPS = 30.0
SIGMA = 1.5  # px of landmark and box noise
WARMUP = 15  # frames before measuring: a new track starts with zero velocity


def _jitter(values: np.ndarray, truth: np.ndarray) -> float:
    return float(np.std(np.diff(values, axis=0) - np.diff(truth, axis=0)))


# --- OneEuroFilter ---------------------------------------------------------------------------------------------------


def test_constant_signal_passes_unchanged() -> None:
    f = OneEuroFilter(min_cutoff=1.0, beta=0.5)
    x = np.random.default_rng(0).uniform(0, 500, (5, 2))
    for k in range(30):
        np.testing.assert_array_equal(f(x, k / FPS), x)


def test_step_converges() -> None:
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    f(np.zeros(3), 0.0)
    out = [f(np.full(3, 10.0), k / FPS) for k in range(1, 31)]
    assert 0.0 < out[0][0] < 5.0  # smoothed, not jumped
    assert np.all(np.diff([o[0] for o in out]) > 0)  # monotone, no overshoot
    np.testing.assert_allclose(out[-1], 10.0, atol=0.1)  # within 1 % after one second


def test_noisy_sinusoid_jitter_drops() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(300) / FPS
    truth = 40.0 * np.sin(2 * np.pi * 0.3 * t)  # slow head sway, up to 75 px/s
    raw = truth + rng.normal(0.0, SIGMA, t.shape)
    f = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    out = np.array([f(x, tk) for x, tk in zip(raw, t, strict=True)])
    ratio = _jitter(out, truth) / _jitter(raw, truth)
    print(f"one euro jitter ratio on a noisy sinusoid: {ratio:.3f}")
    assert ratio < 0.5
    assert np.abs(out - truth)[WARMUP:].mean() < SIGMA


def _ramp_error(v: float, times: np.ndarray, f: OneEuroFilter) -> np.ndarray:
    return np.array([v * tk - f(v * tk, tk) for tk in times])


def test_ramp_lag_is_bounded_and_matches_theory() -> None:
    # At steady state on x = v t the error e solves e = v tau(fc), fc = min_cutoff + beta (v + e / dt): the speed is
    # estimated against the previous filtered value, as in the paper.
    v, m, beta, dt = 100.0, 1.0, 0.05, 1 / FPS
    err = _ramp_error(v, np.arange(90) * dt, OneEuroFilter(m, beta, 1.0))
    a, b = 2 * np.pi * beta / dt, 2 * np.pi * (m + beta * v)
    theory = (-b + math.sqrt(b * b + 4 * a * v)) / (2 * a)
    print(f"ramp lag at {v} px/s, 30 fps: {err[-1]:.2f} px (theory {theory:.2f})")
    assert err[-1] == pytest.approx(theory, rel=0.02)
    assert 0.0 < err[-1] < 2.0  # px at 100 px/s; beta = 0 would trail by v / (2 pi) = 16 px


def test_irregular_timestamps() -> None:
    rng = np.random.default_rng(2)
    times = np.cumsum(rng.uniform(0.01, 0.07, 120))  # 14 to 100 fps, jittered
    err = _ramp_error(100.0, times, OneEuroFilter(1.0, 0.05, 1.0))
    assert np.isfinite(err).all()
    assert np.abs(err[30:]).max() < 3.0
    # A repeated timestamp is ignored rather than dividing by zero.
    f = OneEuroFilter()
    f(np.array([1.0]), 0.0)
    f(np.array([2.0]), 0.1)
    before = f.value
    np.testing.assert_array_equal(f(np.array([50.0]), 0.1), before)


def test_scale_makes_the_filter_size_invariant() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(60) / FPS
    x = np.cumsum(rng.normal(0, 3, (60, 14)), axis=0)
    big, small = OneEuroFilter(1.0, 8.0), OneEuroFilter(1.0, 8.0)
    for xk, tk in zip(x, t, strict=True):
        np.testing.assert_allclose(small(0.25 * xk, tk, scale=25.0), 0.25 * big(xk, tk, scale=100.0), atol=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_cutoff": 0.0},
        {"min_cutoff": -1.0},
        {"min_cutoff": float("nan")},
        {"d_cutoff": 0.0},
        {"d_cutoff": float("inf")},
        {"beta": -0.1},
    ],
)
def test_invalid_parameters_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        OneEuroFilter(**kwargs)


def test_invalid_inputs_raise() -> None:
    f = OneEuroFilter()
    f(np.zeros((5, 2)), 0.0)
    with pytest.raises(ValueError, match="shape"):
        f(np.zeros(3), 0.1)
    with pytest.raises(ValueError, match="scale"):
        f(np.zeros((5, 2)), 0.1, scale=0.0)
    with pytest.raises(ValueError, match="finite"):
        f(np.full((5, 2), np.nan), 0.2)
    f.reset()
    np.testing.assert_array_equal(f(np.ones(3), 1.0), np.ones(3))  # after reset any shape starts afresh


# --- FaceTracker -----------------------------------------------------------------------------------------------------


def _face(
    t: float, velocity: tuple[float, float], origin: tuple[float, float], size: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth box and landmarks of the astronaut face at time t: translated, swaying and breathing in scale."""
    lm0 = faces.ASTRONAUT_LANDMARKS.astype(np.float64)
    b0 = faces.ASTRONAUT_BOX.astype(np.float64)
    c0, half = (b0[:2] + b0[2:]) / 2, (b0[2:] - b0[:2]) / 2
    angle = 0.25 * np.sin(2 * np.pi * 0.12 * t)
    s = size * (1.0 + 0.15 * np.sin(2 * np.pi * 0.15 * t))
    rot = s * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.asarray(origin) + np.asarray(velocity) * t
    return np.concatenate([centre - s * half, centre + s * half]), (lm0 - c0) @ rot.T + centre


def _sequence(
    n: int, velocity: tuple[float, float], seed: int, size: float = 1.0, origin: tuple[float, float] = (300.0, 250.0)
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Times, true boxes, true landmarks, noisy boxes, noisy landmarks (noise scaled with the face)."""
    rng = np.random.default_rng(seed)
    times = np.arange(n) / FPS
    truth = [_face(t, velocity, origin, size) for t in times]
    boxes = np.array([b for b, _ in truth])
    lms = np.array([lm for _, lm in truth])
    noise = size * SIGMA
    return times, boxes, lms, boxes + rng.normal(0, noise, boxes.shape), lms + rng.normal(0, noise, lms.shape)


def _track_single(
    times: np.ndarray, raw_boxes: np.ndarray, raw_lms: np.ndarray, every: int = 1, tracker: FaceTracker | None = None
) -> np.ndarray:
    tracker = tracker or FaceTracker()
    out = []
    for k, t in enumerate(times):
        if k % every == 0:
            tracks = tracker.update((raw_boxes[k : k + 1], np.ones(1), raw_lms[k : k + 1]), t)
        else:
            tracks = tracker.predict(t)
        assert len(tracks) == 1
        out.append(tracks[0].landmarks.astype(np.float64))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_moving_face_is_smoothed_with_bounded_lag(seed: int) -> None:
    velocity = (60.0, 20.0)  # px/s: 2 px a frame, about 0.6 face heights a second, plus sway and scale
    times, _, lms, raw_boxes, raw_lms = _sequence(150, velocity, seed)
    smooth = _track_single(times, raw_boxes, raw_lms)
    s, g, r = smooth[WARMUP:], lms[WARMUP:], raw_lms[WARMUP:]
    ratio = _jitter(s, g) / _jitter(r, g)
    err, raw_err = np.linalg.norm(s - g, axis=2).mean(), np.linalg.norm(r - g, axis=2).mean()
    direction = np.asarray(velocity) / np.linalg.norm(velocity)
    lag = float(-((s.mean(axis=1) - g.mean(axis=1)) @ direction).mean())
    print(f"moving face: jitter ratio {ratio:.3f}, error {err:.2f} px (raw {raw_err:.2f}), lag {lag:.2f} px")
    assert ratio < 0.6
    assert err < raw_err  # better than the detections themselves, lag included
    assert lag < 2.0  # px at 63 px/s; the filter bounds it by face size / (2 pi beta) = 1.9 px


def test_still_face_error_is_below_the_noise() -> None:
    times, _, lms, raw_boxes, raw_lms = _sequence(150, (0.0, 0.0), seed=4)
    smooth = _track_single(times, raw_boxes, raw_lms)
    s, g, r = smooth[WARMUP:], lms[WARMUP:], raw_lms[WARMUP:]
    ratio = _jitter(s, g) / _jitter(r, g)
    err = np.linalg.norm(s - g, axis=2).mean()
    print(f"still face: jitter ratio {ratio:.3f}, error {err:.2f} px (noise sigma {SIGMA})")
    assert ratio < 0.35
    assert err < SIGMA


def test_small_and_large_faces_are_smoothed_alike() -> None:
    times, _, _, raw_boxes, raw_lms = _sequence(60, (60.0, 20.0), seed=5)
    large = _track_single(times, raw_boxes, raw_lms)
    small = _track_single(times, 0.25 * raw_boxes, 0.25 * raw_lms)
    np.testing.assert_allclose(small, 0.25 * large, atol=1e-3)


def test_predict_between_detections_keeps_error_bounded() -> None:
    times, _, lms, raw_boxes, raw_lms = _sequence(150, (60.0, 20.0), seed=6)
    predicted = _track_single(times, raw_boxes, raw_lms, every=3)
    tracker, held = FaceTracker(), []
    for k, t in enumerate(times):  # the same, but holding the last estimate instead of extrapolating
        if k % 3 == 0:
            tracker.update((raw_boxes[k : k + 1], np.ones(1), raw_lms[k : k + 1]), t)
        held.append(tracker.tracks[0].landmarks)
    err = np.linalg.norm(predicted - lms, axis=2)[WARMUP:]
    held_err = np.linalg.norm(np.array(held) - lms, axis=2)[WARMUP:]
    print(f"detect every 3rd frame: error mean {err.mean():.2f} max {err.max():.2f} px (held: {held_err.mean():.2f})")
    assert err.mean() < 3.0
    assert err.max() < 8.0
    assert err.mean() < held_err.mean()


def test_predict_is_clamped_to_the_horizon() -> None:
    tracker = FaceTracker(horizon=0.2)
    for k in range(10):  # 300 px/s to the right
        box = np.array([[100.0 + 10 * k, 100, 200 + 10 * k, 220]])
        tracker.update((box, np.ones(1), np.tile(box[:, None, :2], (1, 5, 1))), k / FPS)
    t = 9 / FPS
    np.testing.assert_array_equal(tracker.predict(t + 10.0)[0].box, tracker.predict(t + 0.2)[0].box)
    assert tracker.predict(t + 0.2)[0].box[0] > tracker.predict(t)[0].box[0] + 30.0
    assert tracker.predict(t + 10.0)[0].misses == 0  # predicting is not missing


def test_crossing_faces_keep_their_ids() -> None:
    rng = np.random.default_rng(7)
    a = _sequence(60, (240.0, 0.0), seed=8, origin=(150.0, 240.0))
    b = _sequence(60, (-240.0, 0.0), seed=9, size=0.8, origin=(630.0, 270.0))
    tracker = FaceTracker()
    ids_a, ids_b, crossed = set(), set(), False
    for k, t in enumerate(a[0]):
        order = rng.permutation(2)  # detectors give no order
        boxes = np.stack([a[3][k], b[3][k]])[order]
        lms = np.stack([a[4][k], b[4][k]])[order]
        tracks = tracker.update((boxes, np.array([0.9, 0.8])[order], lms), t)
        assert len(tracks) == 2
        crossed |= box_iou(a[1][k], b[1][k])[0, 0] > 0.3
        for truth, ids in ((a[2][k], ids_a), (b[2][k], ids_b)):
            nearest = min(tracks, key=lambda tr, g=truth: np.linalg.norm(tr.landmarks - g))
            ids.add(nearest.id)
    assert crossed  # the boxes really did overlap
    assert len(ids_a) == len(ids_b) == 1
    assert ids_a != ids_b


def test_vanished_face_is_dropped_after_max_misses() -> None:
    a = _sequence(20, (30.0, 0.0), seed=10, origin=(200.0, 200.0))
    b = _sequence(20, (0.0, 0.0), seed=11, origin=(500.0, 200.0))
    tracker = FaceTracker(max_misses=2)
    counts, misses = [], []
    for k, t in enumerate(a[0]):
        if k < 10:
            det = (np.stack([a[3][k], b[3][k]]), np.array([0.9, 0.9]), np.stack([a[4][k], b[4][k]]))
        else:
            det = (a[3][k : k + 1], np.array([0.9]), a[4][k : k + 1])
        tracks = tracker.update(det, t)
        counts.append(len(tracks))
        misses.append(max(tr.misses for tr in tracks))
    assert counts[:12] == [2] * 12  # coasting through two misses, still covered
    assert counts[12:] == [1] * 8
    assert misses[10:13] == [1, 2, 0]
    coasting = tracker.update(det, a[0][-1] + 1 / FPS)  # a itself now stays seen
    assert [tr.id for tr in coasting] == [tr.id for tr in tracks]


def test_tracker_takes_detections_and_empty_frames() -> None:
    box = torch.tensor([[100.0, 100.0, 200.0, 220.0]])
    lms = torch.as_tensor(faces.ASTRONAUT_LANDMARKS - faces.ASTRONAUT_BOX[:2] + 100.0).unsqueeze(0)
    tracker = FaceTracker(max_misses=1)
    (track,) = tracker.update(Detections(box, torch.tensor([0.95]), lms), 0.0)
    assert track.id == 0
    assert track.box.shape == (4,)
    assert track.landmarks.shape == (5, 2)
    assert track.confidence == pytest.approx(0.95)
    np.testing.assert_allclose(track.landmarks, lms[0].numpy(), atol=1e-4)
    (missed,) = tracker.update(Detections.empty(), 1 / FPS)
    assert missed.confidence == pytest.approx(0.95 / 2)
    assert tracker.update(Detections.empty(), 2 / FPS) == []
    (fresh,) = tracker.update(Detections(box, torch.tensor([0.9]), lms), 3 / FPS)
    assert fresh.id == 1  # ids are never reused


def test_tracker_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="iou_threshold"):
        FaceTracker(iou_threshold=0.0)
    with pytest.raises(ValueError, match="max_misses"):
        FaceTracker(max_misses=-1)
    with pytest.raises(ValueError, match="min_cutoff"):
        FaceTracker(min_cutoff=0.0)


# --- rendered frames through the real detector ----------------------------------------------------------------------


def test_rendered_moving_face_through_mtcnn_is_smoothed() -> None:
    """The astronaut photo itself moved (translated, rotated, scaled) frame to frame at 30 fps, detected by MTCNN
    on every frame, plus 1 px of landmark noise: the tracked landmarks jitter less than the detections and lag the
    motion by a bounded amount."""
    import cv2

    from engines.detect import image_tensor
    from engines.mtcnn import MTCNN

    detector = MTCNN()
    image = faces.astronaut()
    rng = np.random.default_rng(7)
    tracker = FaceTracker()
    raw, smooth, truth = [], [], []
    velocity = np.array([45.0, 15.0])  # px/s
    for k in range(45):
        t = k / FPS
        angle = 8.0 * math.sin(2 * math.pi * 0.3 * t)  # degrees
        scale = 1.0 + 0.1 * math.sin(2 * math.pi * 0.25 * t)
        m = cv2.getRotationMatrix2D((224.0, 117.0), angle, scale)
        m[:, 2] += velocity * t - (30.0, 10.0)
        frame = cv2.warpAffine(image, m, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        found = detector(image_tensor(frame, "cpu"))
        assert len(found) >= 1, f"frame {k}: the face was not detected"
        lm = found.landmarks[:1].numpy().astype(np.float64) + rng.normal(0, 1.0, (1, 5, 2))
        tracks = tracker.update((found.boxes[:1].numpy(), found.scores[:1].numpy(), lm), t)
        raw.append(lm[0])
        smooth.append(tracks[0].landmarks.astype(np.float64))
        truth.append(faces.ASTRONAUT_LANDMARKS.astype(np.float64) @ m[:, :2].T + m[:, 2])
    s, r, g = (np.array(a)[WARMUP:] for a in (smooth, raw, truth))
    ratio = _jitter(s, g) / _jitter(r, g)
    direction = velocity / np.linalg.norm(velocity)
    lag = float(-((s.mean(axis=1) - g.mean(axis=1)) @ direction).mean())
    raw_bias = float(-((r.mean(axis=1) - g.mean(axis=1)) @ direction).mean())  # the detector's own offset
    print(f"rendered moving face via MTCNN: jitter ratio {ratio:.3f}, lag {lag - raw_bias:.2f} px")
    assert ratio < 0.7
    assert abs(lag - raw_bias) < 3.0
