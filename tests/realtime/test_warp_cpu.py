"""CPU align and paste-back: an unchanged crop pasted back reproduces the frame, and nothing outside the faces moves."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engines.align import estimate_norm, template
from realtime.pipeline import warp, warp_cpu
from realtime.pipeline.crops import zoom_out
from realtime.pipeline.masks import MaskSpec, build_mask
from realtime.pipeline.warp_cpu import SUPPORT_THRESHOLD, align_faces, face_box, mask_support, paste_faces
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


def large_face(size: int = 64, scale: float = 5.0, offset: float = 30.0) -> np.ndarray:
    """Frame → crop for a face `scale` frame pixels per crop pixel (a close-up: 1280 px for a 256 crop at 5)."""
    return np.array([[1 / scale, 0.0, -offset / scale], [0.0, 1 / scale, -offset / scale]])


def test_a_large_face_is_pasted_up_to_the_last_pixel_bilinear_sampling_reaches() -> None:
    """Bilinear sampling gives weight to crop texels from crop coordinate -1 to `size` (not -0.5 to size - 0.5):
    for a large face that band is several frame pixels wide, and the box must hold it."""
    size, w, h = 64, 400, 400
    m = large_face(size)
    frame = np.zeros((h, w, 3), np.uint8)
    out = paste_faces(frame.copy(), np.ones((1, 3, size, size), np.float32), m[None], np.ones((size, size), np.float32))
    py, px = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = m[0, 0] * px + m[0, 2], m[1, 1] * py + m[1, 2]
    alpha = _bilinear(np.ones((size, size, 1)), cx, cy, replicate=False)[..., 0]
    # the face's colour is sampled with the same zero border as the mask (the kernels' semantics): alpha · alpha · 255
    expected = np.floor(alpha * alpha * 255 + 0.5)
    assert np.abs(out[..., 0].astype(float) - expected).max() <= 2  # OpenCV's 1/32 px weights
    # outside the crop's own area (-0.5 to size - 0.5), where the old boxes ended, and visibly changed
    band = (expected >= 3) & ((cx < -0.5) | (cy < -0.5) | (cx > size - 0.5) | (cy > size - 0.5))
    assert band.sum() > 4 * 2 * 300  # two pixels on each side (crop coordinates -0.8, -0.6, 63.6, 63.8)
    assert (out[band] > 0).all()
    box = face_box(m, size, w, h)
    assert box is not None
    x0, y0, x1, y1 = box
    on = np.argwhere(alpha > 0)
    assert (x0, y0) <= (on[:, 1].min(), on[:, 0].min())
    assert (x1, y1) > (on[:, 1].max(), on[:, 0].max())


@pytest.mark.parametrize("size", [112, 256])
def test_any_crop_size(size: int, astronaut: np.ndarray) -> None:
    m = estimate_norm(torch.tensor(faces.ASTRONAUT_LANDMARKS, dtype=torch.float64), size).numpy()
    assert align_faces(astronaut, m[None], size).shape == (1, 3, size, size)


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray, replicate: bool) -> np.ndarray:
    """Float64 bilinear taps of an (H, W, C) image at float coordinates: edge replicated, or zero outside."""
    h, w = img.shape[:2]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    out = np.zeros((*x.shape, img.shape[2]))
    for dx, dy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (yi >= 0) & (xi < w) & (yi < h)
        tap = img[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)].astype(np.float64)
        if not replicate:
            tap[~inside] = 0.0
        out += wt * tap
    return out


def _gpu_align(frame: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """warp_cuda's align kernel in float64 numpy: (3, size, size) in [-1, 1]."""
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    cy, cx = np.mgrid[0:size, 0:size].astype(np.float64)
    sx, sy = inv[0, 0] * cx + inv[0, 1] * cy + inv[0, 2], inv[1, 0] * cx + inv[1, 1] * cy + inv[1, 2]
    return (_bilinear(frame, sx, sy, replicate=True) / 127.5 - 1.0).transpose(2, 0, 1)


def _gpu_paste(frame: np.ndarray, crops: np.ndarray, matrices: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """warp_cuda's paste kernel in float64 numpy: faces in order over their boxes, each blend rounded."""
    h, w = frame.shape[:2]
    out = frame.astype(np.float64)
    size = crops.shape[-1]
    for crop, m in zip(crops, matrices, strict=True):
        box = face_box(m, size, w, h)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        py, px = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        cx, cy = m[0, 0] * px + m[0, 1] * py + m[0, 2], m[1, 0] * px + m[1, 1] * py + m[1, 2]
        alpha = _bilinear(mask[..., None], cx, cy, replicate=False)
        face = _bilinear(np.clip((crop.transpose(1, 2, 0) + 1.0) * 127.5, 0, 255), cx, cy, replicate=False)
        roi = out[y0:y1, x0:x1]
        roi[...] = np.where(alpha > 0, np.floor(roi + alpha * (face - roi) + 0.5), roi)
    return out.astype(np.uint8)


def test_cpu_path_keeps_the_gpu_kernels_semantics(multi_face_frame: tuple[np.ndarray, list[faces.PlacedFace]]) -> None:
    """Against a float64 model of warp_cuda's kernels. Align: the crop is the model's rounded to uint8 (max 0.5
    grey levels; mean ~0.24, which is the rounding alone). Paste: OpenCV's 1/32 px interpolation grid leaves at
    most 2 grey levels, mean 0.01, overlapping and out-of-range faces included (tighter than the GPU parity test's
    max 4, mean 0.2, which also covers float16)."""
    frame, placed = multi_face_frame
    placed = [*placed, placed[0]]  # a repeated face overlaps the first: the order of blending matters
    m = _matrices(placed)
    crops = align_faces(frame, m)
    for i in range(len(m)):
        diff = (crops[i] - _gpu_align(frame, m[i], 256)) * 127.5
        assert np.abs(diff).max() <= 0.51
        assert np.abs(diff).mean() <= 0.26
    altered = np.clip(crops * 0.8 + 0.1, -1, 1).astype(np.float32)
    altered[0, :, 100:110] = 1.5  # out of range: clipped before the warp, as the kernel clips each tap
    mask = build_mask(256)
    ours = paste_faces(frame.copy(), altered, m, mask)
    d = np.abs(ours.astype(np.int16) - _gpu_paste(frame, altered, m, mask).astype(np.int16))
    assert d.max() <= 2
    assert d.mean() <= 0.01


def test_paste_restricted_to_the_mask_support_equals_the_whole_box_paste(
    multi_face_frame: tuple[np.ndarray, list[faces.PlacedFace]],
) -> None:
    """Visiting only where the warped mask can reach 0.5/255 gives the whole-box result within 1 grey level (the
    two warps start at different origins, so OpenCV's 1/32 px rounding differs), for the official and the ellipse
    mask, and with the support passed explicitly."""
    frame, placed = multi_face_frame
    m = _matrices(placed)
    crops = np.clip(align_faces(frame, m) * 0.7 - 0.2, -1, 1).astype(np.float32)
    for mask in (build_mask(256), build_mask(256, MaskSpec(kind="ellipse", feather_px=4))):
        support = mask_support(mask)
        assert support is not None
        x0, y0, x1, y1 = support
        outside = np.ones(mask.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert mask[outside].max(initial=0.0) < SUPPORT_THRESHOLD <= mask[y0:y1, x0:x1].max()
        assert (x1 - x0) * (y1 - y0) < 0.8 * mask.size  # the official mask is zero on a wide border
        whole = paste_faces(frame.copy(), crops, m, mask, support=False)
        restricted = paste_faces(frame.copy(), crops, m, mask)
        explicit = paste_faces(frame.copy(), crops, m, mask, support=support)
        assert np.array_equal(restricted, explicit)
        d = np.abs(whole.astype(np.int16) - restricted.astype(np.int16))
        assert d.max() <= 1
        assert d.mean() < 0.01
        assert not np.array_equal(whole, frame)


def test_a_writable_mask_is_read_afresh_each_call() -> None:
    """Support and mask caches hold only read-only masks: a caller's own mask may change between frames."""
    frame, placed = faces.compose_faces(640, 480)
    m = _matrices(placed[:1])
    white = np.ones((1, 3, 256, 256), np.float32)
    mask = np.zeros((256, 256), np.float32)
    mask[100:140, 100:140] = 1.0
    first = paste_faces(frame.copy(), white, m, mask)
    mask[...] = 0.0
    mask[20:60, 180:220] = 1.0
    second = paste_faces(frame.copy(), white, m, mask)
    expected = paste_faces(frame.copy(), white, m, mask.copy(), support=False)
    assert not np.array_equal(first, second)
    assert np.abs(second.astype(np.int16) - expected.astype(np.int16)).max() <= 1
    mask[...] = 0.0
    assert np.array_equal(paste_faces(frame.copy(), white, m, mask), frame)


@pytest.mark.parametrize("zoom", [1.0, 1.6])
def test_face_matrices_are_the_torch_estimate_zoomed_out(
    zoom: float, multi_face_frame: tuple[np.ndarray, list[faces.PlacedFace]]
) -> None:
    """The pipeline's host matrix step gives today's matrices (torch estimate_norm, then zoom_out) to float64
    rounding, and so the same boxes and the same crops."""
    frame, placed = multi_face_frame
    h, w = frame.shape[:2]
    lm = [p.landmarks for p in placed]
    m = warp.face_matrices(lm, 256, None, zoom)
    ref = zoom_out(_matrices(placed), 256, zoom)
    assert m.shape == (len(placed), 2, 3)
    np.testing.assert_allclose(m, ref, rtol=1e-14, atol=1e-12)
    assert warp.face_boxes(m, 256, w, h) == warp.face_boxes(ref, 256, w, h)
    np.testing.assert_array_equal(align_faces(frame, m), align_faces(frame, ref))


def test_face_matrices_of_coincident_landmarks_have_no_box_and_paste_nothing() -> None:
    """Five equal landmarks: the zero linear part, as estimate_norm gives it; no box, a crop of the frame's corner
    pixel, nothing pasted (the behaviour tests/realtime/test_warp_cuda.py checks on both paths)."""
    frame = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    lm = np.array([[[30.25, 20.75]] * 5], np.float32)
    m = warp.face_matrices(lm, 32)
    assert (m[:, :, :2] == 0).all()
    np.testing.assert_allclose(m, estimate_norm(torch.from_numpy(lm).double(), 32).numpy(), rtol=1e-14, atol=1e-12)
    assert warp.face_boxes(m, 32, 64, 48) == [None]
    corner = frame[0, 0].astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(align_faces(frame, m, 32)[0], np.broadcast_to(corner[:, None, None], (3, 32, 32)))
    out = warp.paste(torch.from_numpy(frame.copy()), torch.ones(1, 3, 32, 32), m, torch.ones(32, 32), [None])
    assert np.array_equal(out.numpy(), frame)


def test_a_mask_tensor_is_prepared_once_while_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """warp.paste hands warp_cpu the same read-only view of a mask tensor frame after frame, so the mask's support
    and contiguous part are made once (they were made every frame: `tensor.numpy()` is a new writable array each
    call); an in-place change to the tensor is seen on the next call."""
    made: list[tuple] = []
    real = warp_cpu._cached

    def counting(cache: dict, key: tuple, mask: np.ndarray, make):
        return real(cache, key, mask, lambda: made.append(key) or make())

    monkeypatch.setattr(warp_cpu, "_cached", counting)
    frame, placed = faces.compose_faces(640, 480)
    h, w = frame.shape[:2]
    m = _matrices(placed[:1])
    boxes = [face_box(m[0], 256, w, h)]
    white = torch.ones(1, 3, 256, 256)
    mask = torch.zeros(256, 256)
    mask[100:140, 100:140] = 1.0
    first = [warp.paste(torch.from_numpy(frame.copy()), white, m, mask, boxes) for _ in range(3)]
    assert len(made) == 2  # the support and the mask's part, once
    assert all(np.array_equal(f.numpy(), first[0].numpy()) for f in first)
    mask[...] = 0.0
    mask[20:60, 180:220] = 1.0
    second = warp.paste(torch.from_numpy(frame.copy()), white, m, mask, boxes).numpy()
    assert len(made) == 4
    expected = paste_faces(frame.copy(), white.numpy(), m, mask.numpy().copy(), support=False)
    assert np.abs(second.astype(np.int16) - expected.astype(np.int16)).max() <= 1
    assert not np.array_equal(second, first[0].numpy())


def test_paste_skips_the_faces_without_a_box_and_pastes_the_others() -> None:
    frame, placed = faces.compose_faces(640, 480)
    h, w = frame.shape[:2]
    lm = np.stack([placed[0].landmarks, np.full((5, 2), 7.0, np.float32), placed[1].landmarks])
    m = warp.face_matrices(lm, 256)
    boxes = warp.face_boxes(m, 256, w, h)
    assert boxes[1] is None
    assert None not in (boxes[0], boxes[2])
    crops = np.clip(align_faces(frame, m) * 0.8 + 0.1, -1, 1).astype(np.float32)
    out = warp.paste(
        torch.from_numpy(frame.copy()), torch.from_numpy(crops), m, torch.from_numpy(build_mask(256).copy()), boxes
    )
    expected = paste_faces(frame.copy(), crops[[0, 2]], m[[0, 2]], build_mask(256))
    assert np.array_equal(out.numpy(), expected)
    assert not np.array_equal(expected, frame)


def test_a_face_box_of_one_pixel_is_pasted_without_error() -> None:
    """A face almost all outside the frame whose box holds one pixel is blended like any other box (OpenCV read the
    1x1 alpha beside a scalar as a 4-vector and raised): the pixel's sample lies on the crop's far edge, so it keeps
    its value, as on the GPU (tests/realtime/test_kernels_emulated.py)."""
    frame = np.full((480, 640, 3), 40, np.uint8)
    m = np.array([[[2.56, 0.0, 256.0], [0.0, 2.56, 256.0]]])  # the crop spans the 100 px up to the top-left corner
    assert face_box(m[0], 256, 640, 480) == (0, 0, 1, 1)
    out = paste_faces(frame.copy(), np.ones((1, 3, 256, 256), np.float32), m, np.ones((256, 256), np.float32))
    assert np.array_equal(out, frame)
    m[0, :, 2] = 255.0  # one crop pixel nearer: the corner pixel is the crop's last texel, white
    out = paste_faces(frame.copy(), np.ones((1, 3, 256, 256), np.float32), m, np.ones((256, 256), np.float32))
    assert np.argwhere((out != frame).any(-1)).tolist() == [[0, 0]]
    assert out[0, 0].tolist() == [255, 255, 255]
