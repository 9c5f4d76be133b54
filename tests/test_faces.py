"""The composed test frames must carry true ground truth: later detector and pipeline tests rely on it."""

from __future__ import annotations

import cv2
import numpy as np

from tests import faces


def test_astronaut_is_the_known_photo(astronaut: np.ndarray) -> None:
    assert astronaut.shape == (512, 512, 3)
    assert astronaut.dtype == np.uint8
    # the landmarks sit inside the face box, eyes above nose above mouth
    x0, y0, x1, y1 = faces.ASTRONAUT_BOX
    lm = faces.ASTRONAUT_LANDMARKS
    assert np.all((lm[:, 0] > x0) & (lm[:, 0] < x1) & (lm[:, 1] > y0) & (lm[:, 1] < y1))
    assert lm[0, 1] < lm[2, 1] < lm[3, 1]


def test_frame_layout(multi_face_frame: tuple[np.ndarray, list[faces.PlacedFace]]) -> None:
    frame, placed = multi_face_frame
    h, w = frame.shape[:2]
    assert frame.dtype == np.uint8
    assert frame.shape[2] == 3
    assert len(placed) == len(faces.DEFAULT_PLACEMENTS)
    large, small, corner, border = placed
    assert large.inside
    assert small.inside
    assert corner.box[0] < 0.12 * w
    assert corner.box[1] < 0.12 * h  # near the top-left corner
    assert 0.2 < border.visible_fraction < 0.8  # across the right border
    assert large.height > 2 * small.height


def test_ground_truth_maps_back_onto_the_astronaut(
    astronaut: np.ndarray, multi_face_frame: tuple[np.ndarray, list[faces.PlacedFace]]
) -> None:
    """Warping each fully visible face back with the transform implied by its ground-truth landmarks gives the
    astronaut's face again: boxes and landmarks are where the pixels are."""
    frame, placed = multi_face_frame
    x0, y0, x1, y1 = faces.ASTRONAUT_BOX.astype(int)
    errors = []
    for face in placed:
        if not face.inside:
            continue
        # least-squares scale + translation from astronaut landmarks to the placed ones
        src, dst = faces.ASTRONAUT_LANDMARKS, face.landmarks
        s = np.linalg.norm(dst - dst.mean(0)) / np.linalg.norm(src - src.mean(0))
        t = dst.mean(0) - s * src.mean(0)
        assert abs(s - face.scale) < 1e-3 * face.scale
        m = np.array([[s, 0, t[0]], [0, s, t[1]]], dtype=np.float64)
        back = cv2.warpAffine(frame, m, (512, 512), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        diff = np.abs(back[y0:y1, x0:x1].astype(np.float32) - astronaut[y0:y1, x0:x1].astype(np.float32))
        errors.append(float(diff.mean()))
    assert errors
    # resampling (down to 0.5x and up to 4x) costs a few grey levels; a misplaced face costs tens
    assert max(errors) < 12, errors


def test_composition_is_deterministic() -> None:
    a, fa = faces.compose_faces(320, 240, seed=3)
    b, fb = faces.compose_faces(320, 240, seed=3)
    assert np.array_equal(a, b)
    assert all(np.array_equal(p.landmarks, q.landmarks) for p, q in zip(fa, fb, strict=True))
