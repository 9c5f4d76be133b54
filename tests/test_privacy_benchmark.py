"""The privacy benchmark (benchmarks/privacy): the scenes' ground truth, the leak test on known cases, and short runs
of file mode and of a live session that produce results with the expected fields."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.privacy import leaks, run, scenes
from benchmarks.privacy.scenes import Occluder, Pose, Shot, compose
from realtime.bench.faces import visible_fraction


def _frame(shot: Shot) -> tuple[np.ndarray, list[scenes.FaceTruth]]:
    background = scenes.textured_background(scenes.WIDTH, scenes.HEIGHT, 0)
    return compose(background, shot, np.random.default_rng(0))


# --- ground truth -------------------------------------------------------------------------------------------------


def test_a_face_lands_where_its_ground_truth_says() -> None:
    """At scale 1 with a whole-pixel offset the frame holds the photo's own pixels inside the truth's core box."""
    photo = scenes.photos()[0]["astronaut"]
    box = photo.box
    height = float(box[3] - box[1])
    # the box centre lands on (cx, cy); choose it so that the shift from photo to frame is (150, 100) pixels
    shift = np.array([150.0, 100.0])
    cx, cy = (box[0] + box[2]) / 2 + shift[0], (box[1] + box[3]) / 2 + shift[1]
    frame, (truth,) = _frame(Shot((Pose("astronaut", cx, cy, height),)))
    np.testing.assert_allclose(truth.box, box + np.tile(shift, 2), atol=1e-6)
    np.testing.assert_allclose(truth.landmarks, photo.landmarks + shift, atol=1e-6)
    assert truth.inside == 1.0
    assert truth.core_visible > 0.95
    assert truth.counts
    x0, y0, x1, y1 = truth.core
    here = frame[y0:y1, x0:x1].astype(np.float32)
    there = photo.image[y0 - 100 : y1 - 100, x0 - 150 : x1 - 150].astype(np.float32)
    assert np.abs(here - there).mean() < 3.0  # the sensor noise (sigma 2) only
    off_by_two = photo.image[y0 - 100 : y1 - 100, x0 - 152 : x1 - 152].astype(np.float32)
    assert np.abs(here - off_by_two).mean() > 6.0  # the test can tell a misplaced face


def test_inside_fraction_as_a_face_enters_from_the_left() -> None:
    scene = scenes.all_scenes(1.0)["enter-left-medium"]
    inside = []
    for k in range(scene.frames):
        shot = scene.shot(k)  # the entering face is the last pose
        face = scenes.cutouts()["astronaut"]
        scale, offset = scenes.placed(face, shot.poses[-1])
        box = scenes.to_frame(face.box.reshape(2, 2), scale, offset).reshape(4)
        inside.append(visible_fraction(box, scenes.WIDTH, scenes.HEIGHT))
    assert inside[0] == 0.0
    assert inside[-1] == 1.0
    assert all(b >= a for a, b in itertools.pairwise(inside))  # it only moves in
    _, truths = scene.render(4)
    face = truths[-1]
    width = face.box[2] - face.box[0]
    assert face.inside == pytest.approx(min(1.0, max(0.0, face.box[2]) / width), abs=1e-6)
    assert face.counts == (face.inside >= 0.7)


def test_a_covered_face_does_not_count() -> None:
    pose = Pose("astronaut", 320, 240, 150)
    _, (bare,) = _frame(Shot((pose,)))
    _, (hidden,) = _frame(Shot((pose,), (Occluder((100, 50, 540, 430)),)))
    _, (half,) = _frame(Shot((pose,), (Occluder((0, 0, 320, 480)),)))
    assert bare.counts
    assert bare.core_visible > 0.95
    assert not hidden.counts
    assert hidden.core_visible == 0.0
    assert 0.35 < half.core_visible < 0.65  # the core's left half is behind the rectangle
    assert half.own[:, : half.own.shape[1] // 3].sum() == 0


def test_an_independent_detector_finds_the_face_where_the_truth_is() -> None:
    from benchmarks.privacy.reference import ReferenceDetector
    from realtime.pipeline.tracking import box_iou

    frame, truths = scenes.all_scenes(1.0)["cross"].render(0)
    found = ReferenceDetector()(frame)
    iou = box_iou(np.stack([t.box for t in truths]), found.boxes)
    assert iou.shape == (3, len(found.boxes))
    assert (iou.max(1) > 0.6).all(), iou  # each composited face is found, each where its truth says


# --- the leak test ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def face() -> tuple[np.ndarray, scenes.FaceTruth]:
    frame, (truth,) = _frame(Shot((Pose("astronaut", 320, 240, 140),)))
    return leaks.luma(frame), truth


def test_a_raw_face_is_leaked(face: tuple[np.ndarray, scenes.FaceTruth]) -> None:
    image, truth = face
    verdict = leaks.judge(image, image.copy(), truth)
    assert verdict.leaked
    assert verdict.correlation > 0.99
    assert verdict.cells == 4
    # a raw face under other light (gain and offset) and camera noise is still the raw face
    rng = np.random.default_rng(1)
    relit = np.clip(0.6 * image + 30 + rng.normal(0, 2, image.shape), 0, 255).astype(np.float32)
    assert leaks.judge(image, relit, truth).leaked


def _hide(image: np.ndarray, truth: scenes.FaceTruth, how: str) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in truth.box)
    out = image.copy()
    region = out[y0:y1, x0:x1]
    if how == "blur":
        out[y0:y1, x0:x1] = cv2.GaussianBlur(region, (0, 0), 0.25 * (x1 - x0))
    elif how == "pixelate":
        small = cv2.resize(region, (10, 10), interpolation=cv2.INTER_AREA)
        out[y0:y1, x0:x1] = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    else:
        out[y0:y1, x0:x1] = 0
    return out


@pytest.mark.parametrize("how", ["blur", "pixelate", "fill"])
def test_a_hidden_face_is_not_leaked(face: tuple[np.ndarray, scenes.FaceTruth], how: str) -> None:
    image, truth = face
    verdict = leaks.judge(image, _hide(image, truth, how), truth)
    assert not verdict.leaked
    assert verdict.correlation < leaks.UNCHANGED_CORRELATION


def test_one_bare_eye_is_a_leak(face: tuple[np.ndarray, scenes.FaceTruth]) -> None:
    image, truth = face
    hidden = _hide(image, truth, "blur")
    x0, y0, x1, y1 = truth.core
    mx, my = (x0 + x1) // 2, (y0 + y1) // 2
    hidden[y0:my, x0:mx] = image[y0:my, x0:mx]  # the top-left cell of the core (an eye) left as it was
    assert leaks.judge(image, hidden, truth).leaked


# --- short runs ---------------------------------------------------------------------------------------------------


def test_a_short_file_mode_run(tmp_path: Path) -> None:
    out = tmp_path / "privacy.json"
    argv = ["--scenes", "enter-left-fast", "--intervals", "10", "--modes", "file", "--seconds", "1"]
    assert run.main([*argv, "--reference-every", "10", "--jobs", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "privacy"
    assert {"device", "date", "command", "torch_threads", "check_available", "target"} <= set(result)
    assert result["scene_names"] == ["enter-left-fast"]
    (file_run,) = result["file"] if not result["check_available"]["file"] else result["file"][:1]
    assert file_run["interval"] == 10
    scene = file_run["scenes"]["enter-left-fast"]
    assert scene["frames_scored"] == 30
    # the still face in all 30 frames, the entering one from when 70 % of it is in (at 30 px/frame: frame 3)
    assert 30 + 20 <= scene["face_frames"] <= 30 + 28
    assert 0 <= scene["leaked"] == len(scene["leaks"]) <= scene["face_frames"]
    assert scene["detections"] >= 3  # frames 0, 10 and 20
    assert file_run["totals"]["face_frames"] == scene["face_frames"]
    assert file_run["pipeline_ms"]["n"] == 30
    assert 0 < file_run["pipeline_ms"]["p50"] <= file_run["pipeline_ms"]["p95"]
    calibration = result["calibration"]["file"]
    assert calibration["identity"]["judged_leaked"] == calibration["identity"]["face_frames"] > 0  # unchanged
    for style in ("pixelate", "blur", "fill"):
        assert calibration[f"anonymize {style}"]["judged_leaked"] == 0, style  # every frame detected: all hidden
    disagreements = result["reference"]["disagreements"]["enter-left-fast"]
    assert disagreements["frames_checked"] == 3
    assert "| mode | interval, check |" in out.with_suffix(".md").read_text()


@pytest.mark.network
def test_a_short_live_run(tmp_path: Path) -> None:
    out = tmp_path / "privacy.json"
    argv = ["--scenes", "cross", "--intervals", "5", "--modes", "live", "--seconds", "1", "--hold", "0.2"]
    assert run.main([*argv, "--reference-every", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    live = result["live"][0]
    assert live["interval"] == 5
    assert 0 < live["returned"] <= live["sent"] == 36  # 6 held + 30 scored frames
    scene = live["scenes"]["cross"]
    assert 0 < scene["frames_scored"] <= 30
    assert 0 <= scene["leaked"] <= scene["face_frames"] <= 3 * scene["frames_scored"]
    assert live["round_trip_ms"]["p50"] > 0
    swap_off = result["calibration"]["live"]["swap off"]
    assert swap_off["face_frames"] > 0
    assert swap_off["judged_leaked"] == swap_off["face_frames"]  # faces sent back unchanged are all leaks
