"""warp_cuda's CUDA kernels, their exact source run on the CPU (tests/realtime/kernel_host.py), on real-face frames:
against the OpenCV path, against a float64 reference of the same maths, in shuffled thread order, under
AddressSanitizer/UBSan, and at the edges (faces off the frame, boxes on its edge, odd and 1-pixel frames, overlapping
faces, fp16 crops). They skip only where g++ is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from engines.align import estimate_norm
from realtime.pipeline import warp, warp_cpu
from realtime.pipeline.masks import build_mask
from tests import faces
from tests.realtime import kernel_host

pytestmark = pytest.mark.skipif(kernel_host.available() is not None, reason=str(kernel_host.available()))

SIZE = 256


@dataclass(frozen=True)
class Scene:
    frame: np.ndarray
    matrices: np.ndarray  # (N, 2, 3) frame -> crop
    crops: np.ndarray  # (N, 3, S, S) float32 crops to paste: altered aligned crops, partly beyond [-1, 1]


def _scene(width: int, height: int, placements: tuple[faces.Placement, ...], repeat_first: bool = False) -> Scene:
    frame, placed = faces.compose_faces(width, height, placements)
    landmarks = [p.landmarks for p in placed]
    if repeat_first:  # the same face again, nudged: it overlaps the first, so the order of blending matters
        landmarks.append(landmarks[0] + np.array([9.0, -6.0], np.float32))
    m = estimate_norm(torch.tensor(np.stack(landmarks), dtype=torch.float64), SIZE).numpy()
    aligned = warp_cpu.align_faces(frame, m, SIZE)
    # what a swap returns: the faces changed, each differently, the repeated one mirrored; FaceDancer's output is
    # linear, so some values lie beyond [-1, 1] and the kernel's clip is exercised
    shift = np.linspace(-0.3, 0.3, len(m), dtype=np.float32)[:, None, None, None]
    crops = aligned * 1.3 + shift
    if repeat_first:
        crops[-1] = crops[-1, :, :, ::-1]
    return Scene(frame, m, np.ascontiguousarray(crops, np.float32))


SCENES = {
    # a large face, a small one, one near the top-left corner, one across the right border, and an overlapping one
    "four-faces-640x480": lambda: _scene(640, 480, faces.DEFAULT_PLACEMENTS, repeat_first=True),
    # odd sizes; a face wholly off the frame, one across the top-left corner, one across the bottom edge
    "off-frame-641x359": lambda: _scene(
        641,
        359,
        (
            faces.Placement(0.45, 0.5, 0.5),
            faces.Placement(1.9, 0.5, 0.3),
            faces.Placement(0.02, 0.03, 0.45),
            faces.Placement(0.8, 0.97, 0.35),
        ),
    ),
    # a face larger than the frame: its box is clipped on all four edges, every pixel is pasted
    "face-over-the-edges-97x61": lambda: _scene(97, 61, (faces.Placement(0.5, 0.5, 1.7),)),
}


@pytest.fixture(scope="module", params=list(SCENES), ids=list(SCENES))
def scene(request: pytest.FixtureRequest) -> Scene:
    return SCENES[request.param]()


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    return build_mask(SIZE)


# --- a float64 reference of the kernels' maths -------------------------------------------------------------------


def _inverses(matrices: np.ndarray) -> np.ndarray:
    """The float32 (N, 6) inverses the kernel reads, from the host code that uploads them."""
    return kernel_host.inverses(matrices)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray, replicate: bool) -> np.ndarray:
    """`image` (H, W) or (H, W, C) sampled at float64 points: taps floor(x), floor(x) + 1 (and alike in y), each
    the border pixel outside (`replicate`) or zero."""
    h, w = image.shape[:2]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    if image.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]

    def tap(tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
        v = image[np.clip(ty, 0, h - 1).astype(np.int64), np.clip(tx, 0, w - 1).astype(np.int64)]
        if replicate:
            return v
        inside = (tx >= 0) & (ty >= 0) & (tx < w) & (ty < h)
        return np.where(inside[..., None] if image.ndim == 3 else inside, v, 0.0)

    top = tap(x0, y0) * (1 - fx) + tap(x0 + 1, y0) * fx
    bot = tap(x0, y0 + 1) * (1 - fx) + tap(x0 + 1, y0 + 1) * fx
    return top * (1 - fy) + bot * fy


def reference_align(frame: np.ndarray, inv: np.ndarray, size: int) -> np.ndarray:
    """align_kernel in float64: bilinear, border replicated, normalised to [-1, 1]; (N, 3, S, S)."""
    cy, cx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = np.empty((len(inv), 3, size, size))
    for n, m in enumerate(inv.astype(np.float64).reshape(-1, 6)):
        sx, sy = m[0] * cx + m[1] * cy + m[2], m[3] * cx + m[4] * cy + m[5]
        out[n] = np.moveaxis(_bilinear(frame.astype(np.float64), sx, sy, replicate=True) / 127.5 - 1, -1, 0)
    return out


def reference_paste(frame: np.ndarray, crops: np.ndarray, matrices: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """paste_kernel in float64: each face in turn over its clipped box, mask and clipped crop sampled bilinearly
    with zero outside, blended and rounded to an integer; pixels no face reaches are left as they are."""
    h, w = frame.shape[:2]
    size = crops.shape[-1]
    out = frame.astype(np.float64)
    pix = np.clip((crops.astype(np.float64) + 1) * 127.5, 0, 255)
    fwd = np.asarray(matrices, np.float64).reshape(-1, 6).astype(np.float32).astype(np.float64)  # as uploaded
    for n, box in enumerate(warp.face_boxes(matrices, size, w, h)):
        if box is None:
            continue
        bx0, by0, bx1, by1 = box
        py, px = np.mgrid[by0:by1, bx0:bx1].astype(np.float64)
        m = fwd[n]
        cx, cy = m[0] * px + m[1] * py + m[2], m[3] * px + m[4] * py + m[5]
        alpha = _bilinear(mask.astype(np.float64), cx, cy, replicate=False)
        face = _bilinear(np.moveaxis(pix[n], 0, -1), cx, cy, replicate=False)
        roi = out[by0:by1, bx0:bx1]
        on = alpha > 0
        roi[on] = np.floor(roi + alpha[..., None] * (face - roi) + 0.5)[on]
    return np.clip(out, 0, 255).astype(np.uint8)


# --- real faces: the OpenCV path, the float64 reference -----------------------------------------------------------


def test_emulated_align_matches_opencv_and_the_float64_reference(scene: Scene) -> None:
    """OpenCV rounds its crop to uint8 (0.5 grey levels at most, ~0.25 on average) and its interpolation weights
    to 1/32 px (a small share of a level on these smooth photos; seen: max 0.502, mean <= 0.243): max 1 level,
    mean 0.3. Against the same maths in float64 only float32 rounding differs, mostly of the sample point: a few
    ulp of coordinates up to ~10^3 px is ~2e-4 px, times a gradient of at most 255 levels per px, / 127.5: 3e-4
    of [-1, 1] at worst (seen: max 5e-5, mean 5e-7)."""
    gpu = kernel_host.align_faces(scene.frame, scene.matrices, SIZE)
    diff = (gpu - warp_cpu.align_faces(scene.frame, scene.matrices, SIZE)) * 127.5
    assert np.abs(diff).max() <= 1.0
    assert np.abs(diff).mean() <= 0.3
    ref = reference_align(scene.frame, _inverses(scene.matrices), SIZE)
    assert np.abs(gpu - ref).max() <= 3e-4
    assert np.abs(gpu - ref).mean() <= 5e-6


def test_emulated_paste_matches_opencv_and_the_float64_reference(scene: Scene, mask: np.ndarray) -> None:
    """Against OpenCV: both blend in float32 and round once per face, but OpenCV's weights are 1/32 px, which moves
    a value across a .5 now and then: max 2 grey levels (seen: 1), mean 0.01 (seen: <= 0.0015). Against float64:
    float32 can land on the other side of a .5 where the exact blend is within ~1e-4 of it: at most 1 level, at a
    few pixels in 10^4 (seen: <= 1.2e-4 of the values); a later face's blend carries such a level on, shrunk by
    its (1 - alpha). Pixels no box holds are the frame's."""
    gpu = kernel_host.paste_faces(scene.frame, scene.crops, scene.matrices, mask)
    cpu = warp_cpu.paste_faces(scene.frame.copy(), scene.crops, scene.matrices, mask)
    d = np.abs(gpu.astype(np.int16) - cpu.astype(np.int16))
    assert d.max() <= 2
    assert d.mean() <= 0.01
    ref = np.abs(gpu.astype(np.int16) - reference_paste(scene.frame, scene.crops, scene.matrices, mask))
    assert ref.max() <= 1
    assert (ref != 0).mean() <= 5e-4
    h, w = scene.frame.shape[:2]
    touched = np.zeros((h, w), bool)
    for b in warp.face_boxes(scene.matrices, SIZE, w, h):
        if b is not None:
            touched[b[1] : b[3], b[0] : b[2]] = True
    assert np.array_equal(gpu[~touched], scene.frame[~touched])
    assert (gpu[touched] != scene.frame[touched]).any()


# --- launch order and the sanitizers --------------------------------------------------------------------------------


def test_emulated_kernels_give_the_same_bits_in_any_thread_order(scene: Scene, mask: np.ndarray) -> None:
    """No thread reads what another writes (paste reads and writes only its own pixel), so any order of blocks and
    of threads within them gives the same bits."""
    align = kernel_host.align_faces(scene.frame, scene.matrices, SIZE)
    paste = kernel_host.paste_faces(scene.frame, scene.crops, scene.matrices, mask)
    for seed in (1, 2):
        assert np.array_equal(kernel_host.align_faces(scene.frame, scene.matrices, SIZE, seed=seed), align)
        assert np.array_equal(kernel_host.paste_faces(scene.frame, scene.crops, scene.matrices, mask, seed=seed), paste)


def test_emulated_kernels_run_clean_under_address_and_undefined_behaviour_sanitizers(
    scene: Scene, mask: np.ndarray
) -> None:
    """Each array in a heap block of exactly its size, so a read or write past any end is reported, as is undefined
    behaviour (float -> int overflow included); in shuffled order, fp16 crops too. Same bits as the plain build."""
    for dtype in (np.float32, np.float16):
        crops = scene.crops.astype(dtype)
        align = kernel_host.align_faces(scene.frame, scene.matrices, SIZE, dtype)
        assert np.array_equal(
            kernel_host.align_faces(scene.frame, scene.matrices, SIZE, dtype, seed=3, sanitize=True), align
        )
        paste = kernel_host.paste_faces(scene.frame, crops, scene.matrices, mask)
        assert np.array_equal(
            kernel_host.paste_faces(scene.frame, crops, scene.matrices, mask, seed=3, sanitize=True), paste
        )


def test_emulated_sanitizer_build_reports_a_write_past_the_frame() -> None:
    """The check can fail: the paste kernel without its frame bounds check, launched over a region that overhangs
    the frame (as an unchecked box would make it), writes past the frame's last byte, and AddressSanitizer says so;
    the real kernel, launched alike, pastes the part inside and nothing else."""
    guard = "if (px < 0 || py < 0 || px >= w || py >= h) return;"
    assert kernel_host.kernel_source().count(guard) == 1
    broken = kernel_host.kernel_source().replace(guard, "")
    w, h, size = 40, 30, 16
    fwd = np.array([[0.25, 0.0, 0.0], [0.0, 0.25, 0.0]], np.float32)
    launch = (fwd, np.array([[20, 10, 60, 50]]), (20, 10, 40, 40), np.ones((1, 3, size, size), np.float32))
    frame = np.zeros((h, w, 3), np.uint8)
    with pytest.raises(RuntimeError, match="heap-buffer-overflow"):
        kernel_host.paste(frame, w, h, *launch, np.ones((size, size), np.float32), sanitize=True, source=broken)
    frame = np.zeros((h, w, 3), np.uint8)
    kernel_host.paste(frame, w, h, *launch, np.ones((size, size), np.float32), sanitize=True)
    assert (frame[10:, 20:] == 255).all()
    assert frame.sum() == 255 * 3 * 20 * 20


# --- fp16 crops -------------------------------------------------------------------------------------------------------


def test_emulated_half_conversion_rounds_as_ieee() -> None:
    """The prelude's __float2half_rn is IEEE round to nearest, ties to even, as CUDA's: checked against numpy on
    every float16 value, the midpoints between neighbours (ties) and a float32 ulp either side of them, subnormals,
    overflow to infinity and signed zero."""
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = np.sort(halves[np.isfinite(halves)].astype(np.float32))
    mid = (finite[:-1].astype(np.float64) + finite[1:]) / 2  # exact in float32 (11-bit significands)
    mid = mid.astype(np.float32)
    values = np.concatenate([
        finite, mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf)),
        np.array([65519.99, 65520.0, 1e6, -1e6, np.inf, -np.inf, -0.0, 1e-8, -3e-8], np.float32),
    ])  # fmt: skip
    with np.errstate(over="ignore"):  # values past 65504 round to infinity: that is checked
        expected = values.astype(np.float16)
    assert np.array_equal(kernel_host.to_half(values).view(np.uint16), expected.view(np.uint16))


def test_emulated_fp16_crops_are_the_float32_results_rounded(scene: Scene, mask: np.ndarray) -> None:
    """align_kernel<__half> stores exactly the float32 result rounded to fp16; paste_kernel<__half> reads fp16
    crops exactly, so it pastes what the float32 kernel pastes for the same values widened."""
    align = kernel_host.align_faces(scene.frame, scene.matrices, SIZE)
    half = kernel_host.align_faces(scene.frame, scene.matrices, SIZE, np.float16)
    assert half.dtype == np.float16
    assert np.array_equal(half.view(np.uint16), align.astype(np.float16).view(np.uint16))
    crops = scene.crops.astype(np.float16)
    pasted = kernel_host.paste_faces(scene.frame, crops, scene.matrices, mask)
    assert np.array_equal(pasted, kernel_host.paste_faces(scene.frame, crops.astype(np.float32), scene.matrices, mask))
    assert not np.array_equal(pasted, kernel_host.paste_faces(scene.frame, scene.crops, scene.matrices, mask))


# --- edges: tiny frames, the frame's border, boxes on its edge, overlapping faces, far-off points ---------------------


def _similarity(scale: float, angle: float, centre: tuple[float, float], size: int) -> np.ndarray:
    """A frame -> crop matrix taking frame point `centre` to the crop's centre, `scale` crop px per frame px."""
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    x, y = centre
    return np.array([[[c, -s, size / 2 - (c * x - s * y)], [s, c, size / 2 - (s * x + c * y)]]])


EDGES = {
    # frames one pixel wide or high: every tap but one is the replicated border, in both directions
    "1x1": (1, 1, _similarity(4.0, 0.3, (0.0, 0.0), 16)),
    "1x7": (1, 7, _similarity(2.0, -0.2, (0.2, 3.0), 16)),
    "9x1": (9, 1, _similarity(1.5, 0.1, (4.0, 0.3), 16)),
    # the crop overhangs a 3x2 frame on every side: sample points from -1 to size on the frame and the crop
    "3x2-overhang": (3, 2, _similarity(3.0, 0.0, (1.25, 0.75), 16)),
    # a face whose reach ends on the frame's last column, and one on its first row
    # (its box is one pixel wider than what is pasted: the box starts where crop x is -1, which weighs nothing)
    "box-on-the-last-column": (40, 30, _similarity(1.0, 0.0, (47.5, 15.0), 16)),
    "box-on-the-first-row": (40, 30, _similarity(1.0, 0.0, (20.0, -7.5), 16)),
}


@pytest.mark.parametrize("case", list(EDGES))
def test_emulated_kernels_at_the_frame_edges(case: str) -> None:
    """Tiny frames and faces at the border, on both kernels: the float64 reference (tight), OpenCV (its tolerances),
    shuffled order and the sanitizer build (the same bits)."""
    w, h, m = EDGES[case]
    size = 16
    rng = np.random.default_rng(len(case))
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    crops = rng.uniform(-1.2, 1.2, (1, 3, size, size)).astype(np.float32)
    mask = np.ones((size, size), np.float32)
    box = warp.face_boxes(m, size, w, h)[0]
    assert box is not None
    if case == "box-on-the-last-column":
        assert (box[0], box[2]) == (w - 2, w)
    if case == "box-on-the-first-row":
        assert (box[1], box[3]) == (0, 2)

    align = kernel_host.align_faces(frame, m, size)
    assert np.abs(align - reference_align(frame, kernel_host.inverses(m), size)).max() <= 3e-4
    assert np.abs(align - warp_cpu.align_faces(frame, m, size)).max() * 127.5 <= 2.5  # 1/32 px on random pixels
    assert np.array_equal(kernel_host.align_faces(frame, m, size, seed=4, sanitize=True), align)

    paste = kernel_host.paste_faces(frame, crops, m, mask)
    assert np.abs(paste.astype(np.int16) - reference_paste(frame, crops, m, mask)).max() <= 1
    assert np.abs(paste.astype(np.int16) - warp_cpu.paste_faces(frame.copy(), crops, m, mask)).max() <= 4
    assert np.array_equal(kernel_host.paste_faces(frame, crops, m, mask, seed=4, sanitize=True), paste)
    if case == "box-on-the-last-column":
        assert not np.array_equal(paste[:, -1], frame[:, -1])
    elif case == "box-on-the-first-row":
        assert not np.array_equal(paste[0], frame[0])
    else:
        assert not np.array_equal(paste, frame)  # a face was pasted


def test_emulated_paste_reaches_the_crops_edge_texels_from_minus_one_to_size() -> None:
    """A frame pixel whose crop point lies in (-1, 0) or (size - 1, size) blends with the edge texel weighted by
    its distance, in the mask and in the crop alike (both zero outside); one at -1 or size and beyond gets nothing:
    the kernel, the reference and OpenCV agree."""
    size, w = 8, 40
    # 4 frame px per texel; frame x maps to crop x / 4 - 1.5: x = 0..39 -> -1.5 .. 8.25
    m = np.array([[[0.25, 0.0, -1.5], [0.0, 0.25, -1.5]]])
    frame = np.zeros((w, w, 3), np.uint8)
    crops, mask = np.ones((1, 3, size, size), np.float32), np.ones((size, size), np.float32)
    paste = kernel_host.paste_faces(frame, crops, m, mask)
    assert np.array_equal(paste, reference_paste(frame, crops, m, mask))
    row = paste[20, :, 0].astype(int)
    c = np.arange(w) * 0.25 - 1.5
    assert (row[c <= -1] == 0).all()
    assert (row[c >= size] == 0).all()
    assert row[c == -0.75] == round(255 * 0.25**2)  # alpha 0.25 times a face value of 0.25 * 255
    assert row[c == -0.25] == round(255 * 0.75**2)
    assert row[c == size - 0.75] == round(255 * 0.75**2)  # texel size - 1 weighs 1 - fx
    assert row[c == size - 0.25] == round(255 * 0.25**2)
    assert (row[(c >= 0) & (c <= size - 1)] == 255).all()
    assert np.abs(paste.astype(int) - warp_cpu.paste_faces(frame.copy(), crops, m, mask)).max() <= 4


def test_emulated_overlapping_faces_are_pasted_in_order(mask: np.ndarray) -> None:
    """Two faces on one spot: the later one is blended over the earlier, so the order shows in the overlap, and the
    kernel follows it as the reference and OpenCV do."""
    s = _scene(641, 359, (faces.Placement(0.5, 0.5, 0.6), faces.Placement(0.53, 0.48, 0.55)))
    results = []
    for order in ([0, 1], [1, 0]):
        m, crops = s.matrices[order], np.ascontiguousarray(s.crops[order])
        gpu = kernel_host.paste_faces(s.frame, crops, m, mask)
        assert np.abs(gpu.astype(np.int16) - reference_paste(s.frame, crops, m, mask)).max() <= 1
        assert np.abs(gpu.astype(np.int16) - warp_cpu.paste_faces(s.frame.copy(), crops, m, mask)).max() <= 2
        results.append(gpu)
    assert (results[0] != results[1]).sum() > 1000


def test_emulated_kernels_far_off_points_read_the_border_and_are_defined() -> None:
    """A sample point billions of pixels off the frame (a face matrix of absurd scale or offset) still reads the
    replicated border in align and nothing in paste, without a float -> int conversion out of range (undefined in
    C++; on the GPU it saturates and the crop became garbage)."""
    frame = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    size = 16
    far = np.array([[[1e-9, 0.0, -10.0], [0.0, 1e-9, 5e-9]]])  # crop -> frame: x = 1e9 u + 1e10, y = 1e9 v - 5
    align = kernel_host.align_faces(frame, far, size, sanitize=True)
    np.testing.assert_allclose(align, reference_align(frame, kernel_host.inverses(far), size), atol=1e-6)
    np.testing.assert_allclose(align[0, :, 0, 0], frame[0, -1] / 127.5 - 1, atol=1e-6)  # the top-right pixel
    huge = np.array([[[1e10, 0.0, -1e10 * 30.3], [0.0, 1e10, -1e10 * 20.2]]])  # a face a 1e-10 px dot
    assert warp.face_boxes(huge, size, 64, 48)[0] is not None
    crops, mask = np.ones((1, 3, size, size), np.float32), np.ones((size, size), np.float32)
    assert np.array_equal(kernel_host.paste_faces(frame, crops, huge, mask, sanitize=True), frame)
