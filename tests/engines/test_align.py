"""Five-point alignment against known transforms, scikit-image's estimate and insightface's estimate_norm."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage.transform import SimilarityTransform

from engines.align import (
    ARCFACE_TEMPLATE,
    apply_affine,
    estimate_norm,
    estimate_norms,
    invert_affine,
    similarity_transform,
    template,
)
from engines.registry import ARCFACE_112, Template
from tests.faces import ASTRONAUT_LANDMARKS


def _similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _skimage_estimate(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """scikit-image's Umeyama estimate, the one the official FaceDancer code aligns with."""
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        return SimilarityTransform.from_estimate(src, dst).params[:2]
    t = SimilarityTransform()
    assert t.estimate(src, dst)
    return t.params[:2]


def _insightface_face_align():
    """insightface.utils.face_align loaded from its file: the package __init__ imports dependencies that the
    --no-deps install lacks, this module needs only cv2, numpy and scikit-image."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("insightface is not installed (the test command installs it with --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "utils" / "face_align.py"
    module_spec = importlib.util.spec_from_file_location("_insightface_face_align", path)
    assert module_spec is not None
    assert module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_template_is_the_arcface_template_scaled_uniformly() -> None:
    t112 = template(112, dtype=torch.float64)
    assert torch.equal(t112, torch.tensor(ARCFACE_TEMPLATE, dtype=torch.float64))
    t256 = template(256, dtype=torch.float64)
    torch.testing.assert_close(t256, t112 * (256 / 112), rtol=0, atol=1e-12)
    assert template(256).dtype == torch.float32


@pytest.mark.parametrize("seed", range(5))
def test_known_similarity_is_recovered(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = _similarity(rng.uniform(0.3, 4.0), rng.uniform(-math.pi, math.pi), *rng.uniform(-300, 300, 2))
    src = np.asarray(ARCFACE_TEMPLATE)
    dst = _apply(m, src)
    got = similarity_transform(torch.from_numpy(src), torch.from_numpy(dst))
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), m, atol=1e-6)
    # float32 in, float32 out, still accurate: the solve runs in float64.
    got32 = similarity_transform(torch.from_numpy(src).float(), torch.from_numpy(dst).float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(_apply(got32.double().numpy(), src), dst, atol=1e-3)


@pytest.mark.parametrize("seed", range(5))
def test_noisy_points_give_the_least_squares_optimum_of_scikit_image(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    src = ASTRONAUT_LANDMARKS.astype(np.float64) + rng.normal(0, 3, (5, 2))
    dst = np.asarray(ARCFACE_TEMPLATE) * 256 / 112 + rng.normal(0, 2, (5, 2))
    ours = similarity_transform(torch.from_numpy(src), torch.from_numpy(dst)).numpy()
    np.testing.assert_allclose(ours, _skimage_estimate(src, dst), atol=1e-6)
    # A least-squares optimum: small perturbations of the matrix (within the similarity family) only add error.
    base = np.square(_apply(ours, src) - dst).sum()
    a, b = ours[0, 0], ours[1, 0]
    for da, db, dtx, dty in rng.normal(0, 1e-3, (20, 4)):
        p = np.array([[a + da, -(b + db), ours[0, 2] + dtx], [b + db, a + da, ours[1, 2] + dty]])
        assert np.square(_apply(p, src) - dst).sum() >= base


@pytest.mark.parametrize("seed", range(5))
def test_mirrored_points_never_give_a_reflection(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    src = np.asarray(ARCFACE_TEMPLATE) * rng.uniform(0.5, 3) + rng.uniform(-50, 50, 2)
    src[:, 0] *= -1  # a mirror image: the best fit with a reflection would be exact
    dst = np.asarray(ARCFACE_TEMPLATE) + rng.normal(0, 0.5, (5, 2))
    m = similarity_transform(torch.from_numpy(src), torch.from_numpy(dst)).numpy()
    assert np.linalg.det(m[:, :2]) > 0
    np.testing.assert_allclose(m, _skimage_estimate(src, dst), atol=1e-6)


def test_warped_landmarks_land_on_the_template(astronaut: np.ndarray) -> None:
    lmk = torch.from_numpy(ASTRONAUT_LANDMARKS)
    for size in (112, 256):
        m = estimate_norm(lmk, size)
        assert m.dtype == torch.float32
        assert m.shape == (2, 3)
        warped = apply_affine(m, lmk)
        # MTCNN landmarks of a real face are not an exact similarity of the template: a few pixels off.
        assert (warped - template(size)).norm(dim=-1).max() < 0.08 * size
        crop = cv2.warpAffine(astronaut, m.numpy().astype(np.float64), (size, size))
        assert crop.shape == (size, size, 3)
        assert crop.mean() > 20
    # On points that are an exact similarity of the template they land to float precision.
    exact = apply_affine(torch.from_numpy(_similarity(2.5, 0.3, 140, 60)).float(), template(112))
    torch.testing.assert_close(apply_affine(estimate_norm(exact, 256), exact), template(256), atol=1e-3, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_invert_affine_round_trip(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(3)
    ms = np.stack([_similarity(rng.uniform(0.2, 5), rng.uniform(-3, 3), *rng.uniform(-500, 500, 2)) for _ in range(8)])
    ms[0, :, :2] = [[1.5, 0.2], [-0.4, 0.7]]  # a general affine, too
    m = torch.from_numpy(ms).to(dtype)
    inv = invert_affine(m)
    assert inv.dtype == dtype
    assert inv.shape == (8, 2, 3)
    pts = torch.from_numpy(rng.uniform(-200, 800, (8, 5, 2))).to(dtype)
    atol = 1e-3 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(apply_affine(inv, apply_affine(m, pts)), pts, atol=atol, rtol=0)
    np.testing.assert_allclose(invert_affine(m[3]).double().numpy(), cv2.invertAffineTransform(ms[3]), atol=atol)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # insightface calls scikit-image's deprecated estimate()
@pytest.mark.parametrize("seed", range(4))
def test_matches_insightface_estimate_norm_at_112(seed: int) -> None:
    face_align = _insightface_face_align()
    rng = np.random.default_rng(300 + seed)
    angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.8, 3.0)
    lmk = _apply(_similarity(scale, angle, *rng.uniform(50, 400, 2)), np.asarray(ARCFACE_TEMPLATE))
    lmk = (lmk + rng.normal(0, 2, (5, 2))).astype(np.float32)
    if seed == 0:
        lmk = ASTRONAUT_LANDMARKS.copy()
    lmk64 = lmk.astype(np.float64)
    reference = face_align.estimate_norm(lmk64, 112)
    # The same solve: with insightface's own template (stored as float32) the matrices agree entry by entry.
    same_template = similarity_transform(
        torch.from_numpy(lmk64), torch.from_numpy(face_align.arcface_dst.astype(float))
    )
    np.testing.assert_allclose(same_template.numpy(), reference, atol=1e-5)
    # Ours keeps the template's decimal values. Their float32 rounding (< 4e-6) moves a translation of ~150 px by
    # up to ~3e-5 while the landmarks' positions in the crop, what alignment is for, move by ~2e-6 px.
    ours = estimate_norm(torch.from_numpy(lmk64), 112).numpy()
    np.testing.assert_allclose(ours[:, :2], reference[:, :2], atol=1e-5)
    np.testing.assert_allclose(ours[:, 2], reference[:, 2], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(_apply(ours, lmk64), _apply(reference, lmk64), atol=1e-5)
    # float32 in and out, as the pipeline runs it (scikit-image also solves float32 input in float32).
    ours32 = estimate_norm(torch.from_numpy(lmk), 112)
    assert ours32.dtype == torch.float32
    np.testing.assert_allclose(
        _apply(ours32.double().numpy(), lmk64), _apply(face_align.estimate_norm(lmk, 112), lmk64), atol=1e-4
    )


def test_batch_equals_singles() -> None:
    rng = np.random.default_rng(4)
    lmk = torch.from_numpy(ASTRONAUT_LANDMARKS[None] + rng.normal(0, 15, (6, 5, 2))).float()
    batch = estimate_norm(lmk, 256)
    assert batch.shape == (6, 2, 3)
    for i in range(6):
        torch.testing.assert_close(batch[i], estimate_norm(lmk[i], 256), atol=0, rtol=0)
    dst = torch.from_numpy(rng.normal(0, 50, (6, 5, 2)))
    src = torch.from_numpy(rng.normal(0, 50, (6, 5, 2)))
    both = similarity_transform(src, dst)
    for i in range(6):
        torch.testing.assert_close(both[i], similarity_transform(src[i], dst[i]), atol=0, rtol=0)


def test_degenerate_and_malformed_inputs() -> None:
    same = torch.full((5, 2), 7.0)
    m = similarity_transform(same, template(112))
    assert torch.isfinite(m).all()  # no NaN on the GPU path: everything maps to the template's centroid
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        estimate_norm(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="matching"):
        similarity_transform(torch.zeros(5, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"2, 3\)"):
        invert_affine(torch.zeros(3, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coincident_landmarks_give_exactly_the_degenerate_transform(dtype: torch.dtype) -> None:
    """Five equal points, wherever they are: scale 0 exactly (everything to the template's centroid), not a scale
    of float rounding noise over a vanishing spread (float64 points gave random rotations at scales up to ~100)."""
    points = np.random.default_rng(11).uniform((0, 0), (1920, 1080), (200, 2))
    lmk = torch.from_numpy(np.repeat(points[:, None], 5, axis=1)).to(dtype)
    m = estimate_norm(lmk, 256).double()
    assert (m[:, :, :2] == 0).all()
    centroid = template(256, dtype=torch.float64).mean(0)
    torch.testing.assert_close(m[:, :, 2], centroid.expand(200, 2), rtol=0, atol=1e-4)  # float32 rounding
    # points a fraction of a pixel apart are still a face's geometry
    near = lmk.double() + torch.from_numpy(np.random.default_rng(12).normal(0, 1e-3, (200, 5, 2)))
    assert (estimate_norm(near, 256)[:, :, :2].abs().amax((1, 2)) > 1).all()


def _faces(seed: int, n: int) -> np.ndarray:
    """n faces' landmarks: the astronaut's, each moved by a random similarity and 2 px of noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = _similarity(rng.uniform(0.3, 6), rng.uniform(-3, 3), *rng.uniform(-100, 1900, 2))
        out.append(_apply(m, ASTRONAUT_LANDMARKS.astype(np.float64)) + rng.normal(0, 2, (5, 2)))
    return np.stack(out)


@pytest.mark.parametrize("size", [112, 128, 256, 512])
@pytest.mark.parametrize(
    "base", [None, Template(128, ((40.0, 50.0), (88.0, 50.0), (64.0, 72.0), (45.0, 95.0), (83.0, 95.0)))]
)
def test_host_estimate_norms_is_the_torch_solve_to_float64_rounding(size: int, base: Template | None) -> None:
    lm = _faces(20 + size, 9)
    lm[0] = ASTRONAUT_LANDMARKS  # the real detection itself
    host = estimate_norms(lm, size, base)
    assert host.dtype == np.float64
    assert host.shape == (9, 2, 3)
    ref = estimate_norm(torch.from_numpy(lm), size, base).numpy()
    # the same products and sums (in another order for the means): a few units in the last place of each entry
    np.testing.assert_allclose(host, ref, rtol=1e-14, atol=1e-12)
    # float32 landmarks are solved in float64, as the pipeline's tracker hands them over
    lm32 = lm.astype(np.float32)
    np.testing.assert_allclose(
        estimate_norms(lm32, size, base),
        estimate_norm(torch.from_numpy(lm32).double(), size, base).numpy(),
        rtol=1e-14,
        atol=1e-12,
    )
    # a batch is its faces one by one
    for i in range(len(lm)):
        np.testing.assert_array_equal(estimate_norms(lm[i : i + 1], size, base)[0], host[i])
    assert estimate_norms(np.zeros((0, 5, 2)), size, base).shape == (0, 2, 3)


def test_host_estimate_norms_treats_coincident_landmarks_as_the_torch_solve_does() -> None:
    points = np.random.default_rng(11).uniform((0, 0), (1920, 1080), (200, 2))
    lm = np.repeat(points[:, None], 5, axis=1)
    host = estimate_norms(lm, 256)
    assert (host[:, :, :2] == 0).all()  # scale 0 exactly: everything to the template's centroid
    np.testing.assert_allclose(host, estimate_norm(torch.from_numpy(lm), 256).numpy(), rtol=1e-14, atol=1e-12)
    centroid = np.asarray(ARCFACE_112.points).mean(0) * 256 / 112
    np.testing.assert_allclose(host[:, :, 2], np.broadcast_to(centroid, (200, 2)), rtol=0, atol=1e-12)
    # points a fraction of a pixel apart are still a face's geometry, on both
    near = lm + np.random.default_rng(12).normal(0, 1e-3, (200, 5, 2))
    np.testing.assert_allclose(estimate_norms(near, 256), estimate_norm(torch.from_numpy(near), 256).numpy(), rtol=1e-9)
    assert (np.abs(estimate_norms(near, 256)[:, :, :2]).max((1, 2)) > 1).all()
    # one coincident face among real ones changes nothing for the others
    mixed = np.concatenate([lm[:1], _faces(3, 2)])
    np.testing.assert_array_equal(estimate_norms(mixed, 256)[1:], estimate_norms(mixed[1:], 256))


def test_host_estimate_norms_rejects_malformed_landmarks() -> None:
    for bad in (np.zeros((5, 2)), np.zeros((2, 4, 2)), np.zeros((1, 5, 3))):
        with pytest.raises(ValueError, match=r"\(B, 5, 2\)"):
            estimate_norms(bad)


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(5)
    lmk = torch.from_numpy(ASTRONAUT_LANDMARKS[None] + rng.normal(0, 15, (16, 5, 2))).float()
    cpu = estimate_norm(lmk, 256)
    gpu = estimate_norm(lmk.cuda(), 256)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
    torch.testing.assert_close(invert_affine(gpu).cpu(), invert_affine(cpu), atol=1e-4, rtol=1e-6)
