"""The frame pipeline on real faces: identity round trip, a real (random-weight) swap, fail-closed, scheduling."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engines.align import estimate_norm
from engines.facedancer import FaceDancer, FaceDancerConfig
from engines.mtcnn import MTCNN
from realtime import warp_cpu
from realtime.masks import build_mask
from realtime.pipeline import FaceDancerSwap, FramePipeline, IdentitySwap, PipelineConfig, pixelate
from tests import faces


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


def _alphas(placed: list[faces.PlacedFace], w: int, h: int) -> list[np.ndarray]:
    """Each ground-truth face's blend mask in frame coordinates."""
    lm = torch.tensor(np.stack([p.landmarks for p in placed]), dtype=torch.float64)
    mask = build_mask(256)
    return [
        cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        for m in estimate_norm(lm, 256).numpy()
    ]


def test_identity_engine_round_trip(
    detector: MTCNN, multi_face_frame: tuple[np.ndarray, list[faces.PlacedFace]]
) -> None:
    """Detect → track → align → identity → paste reproduces the frame within 2 grey levels inside every mask."""
    frame, placed = multi_face_frame
    h, w = frame.shape[:2]
    result = FramePipeline(detector, IdentitySwap(), PipelineConfig(detect_every=1)).process(frame, 0.0)
    assert result.detected
    assert result.faces >= 3
    assert not result.fail_closed
    for face, alpha in zip(placed, _alphas(placed, w, h), strict=True):
        if not face.inside:
            continue
        inside = alpha > 0.5
        mae = np.abs(result.frame[inside].astype(np.float32) - frame[inside].astype(np.float32)).mean()
        assert mae < 2.0
    assert set(result.stages_ms) >= {"detect", "track", "align", "swap", "paste"}


def test_random_facedancer_changes_faces_and_nothing_else(detector: MTCNN, astronaut: np.ndarray) -> None:
    torch.manual_seed(0)
    model = FaceDancer(FaceDancerConfig(widths=(4, 8, 8, 16, 16, 16, 16), mapping_width=16)).eval()
    engine = FaceDancerSwap(model, torch.randn(512))
    result = FramePipeline(detector, engine).process(astronaut, 0.0)
    assert result.faces == 1
    (alpha,) = _alphas([faces.PlacedFace(faces.ASTRONAUT_BOX, faces.ASTRONAUT_LANDMARKS, 1.0, 1.0)], 512, 512)
    changed = np.abs(result.frame.astype(np.int16) - astronaut.astype(np.int16)).max(axis=2)
    assert changed[alpha > 0.9].mean() > 10  # the face is replaced
    assert changed[alpha == 0].max() == 0  # nothing outside the mask moves


class FlakyEngine:
    """Paints every face white, but fails on chosen frames (raises, or returns NaN)."""

    def __init__(self, raise_on: set[int], nan_on: set[int]) -> None:
        self.calls = 0
        self.raise_on, self.nan_on = raise_on, nan_on

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        i = self.calls
        self.calls += 1
        if i in self.raise_on:
            raise RuntimeError("injected failure")
        if i in self.nan_on:
            return torch.full_like(crops, float("nan"))
        return torch.ones_like(crops)


def test_fail_closed_never_shows_the_real_face(detector: MTCNN) -> None:
    frame, placed = faces.compose_faces(640, 480)
    alphas = _alphas(placed, 640, 480)
    engine = FlakyEngine(raise_on={1, 3}, nan_on={4})
    pipe = FramePipeline(detector, engine, PipelineConfig(detect_every=2))
    flags = []
    for k in range(6):
        result = pipe.process(frame, k / 30)
        flags.append(result.fail_closed)
        for face, alpha in zip(placed, alphas, strict=True):
            if face.inside:
                inside = alpha > 0.9
                # every frame shows the swapped (white) face: the last good swap stands in for a failed one
                assert result.frame[inside].mean() > 240, (k, face.box)
    assert flags == [False, True, False, True, True, False]
    assert pipe.fail_closed_events == 3


def test_a_first_failure_pixelates_the_face(detector: MTCNN, astronaut: np.ndarray) -> None:
    """No earlier swap to repeat: the face region is replaced by its own pixelated crop, pasted with the mask."""
    pipe = FramePipeline(detector, FlakyEngine(raise_on={0}, nan_on=set()))
    result = pipe.process(astronaut, 0.0)
    assert result.fail_closed
    assert pipe.fail_closed_events == 1
    (track,) = pipe.tracker.tracks
    m = estimate_norm(torch.tensor(track.landmarks[None], dtype=torch.float64), 256).numpy()
    crops = warp_cpu.align_faces(astronaut, m, 256)
    expected = warp_cpu.paste_faces(astronaut.copy(), pixelate(crops[0])[None], m, build_mask(256))
    assert np.abs(result.frame.astype(np.int16) - expected.astype(np.int16)).max() <= 1
    (alpha,) = _alphas([faces.PlacedFace(faces.ASTRONAUT_BOX, faces.ASTRONAUT_LANDMARKS, 1.0, 1.0)], 512, 512)
    inside = alpha > 0.99
    # the real face is gone: eyes, nose and mouth differ by far more than any codec or blending error
    assert np.abs(result.frame[inside].astype(np.float32) - astronaut[inside].astype(np.float32)).mean() > 15


def test_pixelate_keeps_colour_and_removes_detail() -> None:
    crop = np.random.default_rng(0).uniform(-1, 1, (3, 256, 256)).astype(np.float32)
    p = pixelate(crop)
    assert p.shape == crop.shape
    assert abs(float(p.mean() - crop.mean())) < 0.01
    assert len(np.unique(p[0])) <= 64


def test_swap_off_is_a_passthrough(detector: MTCNN, astronaut: np.ndarray) -> None:
    result = FramePipeline(detector, IdentitySwap(), PipelineConfig(swap=False)).process(astronaut, 0.0)
    assert np.array_equal(result.frame, astronaut)
    assert not result.detected


def test_detection_runs_every_n_frames_and_tracking_carries_between(detector: MTCNN, astronaut: np.ndarray) -> None:
    calls = []

    class Counting:
        device = detector.device

        def __call__(self, image: torch.Tensor):  # type: ignore[no-untyped-def]
            calls.append(1)
            return detector(image)

    pipe = FramePipeline(Counting(), IdentitySwap(), PipelineConfig(detect_every=5))
    results = [pipe.process(astronaut, k / 30) for k in range(10)]
    assert len(calls) == 2
    assert [r.detected for r in results] == [True, False, False, False, False, True, False, False, False, False]
    assert all(r.faces == 1 for r in results)
