"""CPU align and paste-back: an unchanged crop pasted back reproduces the frame, and nothing outside the faces moves."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engines.align import estimate_norm, template
from realtime.masks import build_mask
from realtime.warp_cpu import align_faces, face_box, paste_faces
from tests import faces


def _matrices(placed: list[faces.PlacedFace], size: int = 256) -> np.ndarray:
    lm = torch.tensor(np.stack([p.landmarks for p in placed]), dtype=torch.float64)
    return estimate_norm(lm, size).numpy()


def test_identity_round_trip(multi_face_frame: tuple[np.ndarray, list[faces.PlacedFace]]) -> None:
    """Inside each mask the output equals the input within 2 grey levels (mean abs), faces at and across the
    border included; outside every face's box not one pixel changes."""
    frame, placed = multi_face_frame
    h, w = frame.shape[:2]
    m = _matrices(placed)
    mask = build_mask(256)
    crops = align_faces(frame, m)
    assert crops.shape == (len(placed), 3, 256, 256)
    assert crops.dtype == np.float32
    assert -1.0 <= crops.min() <= crops.max() <= 1.0
    out = paste_faces(frame.copy(), crops, m, mask)

    touched = np.zeros((h, w), bool)
    for i in range(len(placed)):
        alpha = cv2.warpAffine(mask, m[i], (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        inside = alpha > 0.5
        assert inside.sum() > 1000
        mae = np.abs(out[inside].astype(np.float32) - frame[inside].astype(np.float32)).mean()
        assert mae < 2.0, (i, mae)
        box = face_box(m[i], 256, w, h)
        assert box is not None
        x0, y0, x1, y1 = box
        touched[y0:y1, x0:x1] = True
    assert np.array_equal(out[~touched], frame[~touched])


def test_crop_puts_the_landmarks_on_the_template(astronaut: np.ndarray) -> None:
    m = estimate_norm(torch.tensor(faces.ASTRONAUT_LANDMARKS, dtype=torch.float64), 256).numpy()
    crop = align_faces(astronaut, m[None])[0]
    # the eyes land where the template puts them: dark pupils near the template's eye points
    tpl = template(256).numpy()
    img = ((crop.transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
    ref = cv2.warpAffine(astronaut, m, (256, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert np.abs(img.astype(int) - ref.astype(int)).max() <= 1  # the same warp, only normalised
    for x, y in tpl[:2]:
        assert img[round(y), round(x)].mean() < 140  # an eye, not skin


def test_a_changed_face_is_blended_only_inside_the_mask() -> None:
    frame, placed = faces.compose_faces(640, 480)
    m = _matrices(placed[:1])
    mask = build_mask(256)
    white = np.ones((1, 3, 256, 256), np.float32)
    out = paste_faces(frame.copy(), white, m, mask)
    alpha = cv2.warpAffine(mask, m[0], (640, 480), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    assert out[alpha > 0.999].min() >= 254  # fully replaced where the mask is 1
    expected = frame + alpha[..., None] * (255.0 - frame)
    # a linear blend everywhere else; OpenCV interpolates on a 1/32-pixel grid, so the alpha of the box-offset
    # warp and of this whole-frame reference differ by up to ~1/128
    assert np.abs(out.astype(float) - expected).max() <= 2.5


def test_face_entirely_outside_is_skipped() -> None:
    frame = np.zeros((100, 100, 3), np.uint8)
    m = np.array([[1.0, 0, 5000], [0, 1.0, 5000]])  # maps frame pixels far outside the crop
    assert face_box(m, 256, 100, 100) is None
    out = paste_faces(frame.copy(), np.ones((1, 3, 256, 256), np.float32), m[None], build_mask(256))
    assert np.array_equal(out, frame)


@pytest.mark.parametrize("size", [112, 256])
def test_any_crop_size(size: int, astronaut: np.ndarray) -> None:
    m = estimate_norm(torch.tensor(faces.ASTRONAUT_LANDMARKS, dtype=torch.float64), size).numpy()
    assert align_faces(astronaut, m[None], size).shape == (1, 3, size, size)
