"""Colour stages: yuv420p <-> RGB against PyAV (libswscale) and an exact BT.601 reference, Lab against scikit-image,
and the masked Lab colour transfer."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
import torch
from skimage.color import lab2rgb, rgb2lab

from realtime.pipeline.colour import (
    colour_transfer,
    lab_to_rgb,
    masked_lab_stats,
    rgb_to_lab,
    rgb_to_yuv420p,
    yuv420p_to_rgb,
)
from realtime.pipeline.masks import build_mask
from tests import faces

# ---------------------------------------------------------------------------------------------- references


def pyav_yuv420p(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    h, w = rgb.shape[:2]
    planes = frame.to_ndarray()  # (3H/2, W): Y, then U and V packed as rows
    return planes[:h], planes[h : h + h // 4].reshape(h // 2, w // 2), planes[h + h // 4 :].reshape(h // 2, w // 2)


def pyav_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    w = y.shape[1]
    packed = np.concatenate([y, u.reshape(-1, w), v.reshape(-1, w)], axis=0)
    return av.VideoFrame.from_ndarray(packed, format="yuv420p").to_ndarray(format="rgb24")


def exact_bt601_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # the textbook limited-range BT.601 inverse in float64, nearest chroma, rounded once
    yy = 1.164383562 * (y.astype(np.float64) - 16.0)
    cb = np.repeat(np.repeat(u.astype(np.float64) - 128.0, 2, axis=0), 2, axis=1)
    cr = np.repeat(np.repeat(v.astype(np.float64) - 128.0, 2, axis=0), 2, axis=1)
    rgb = np.stack([yy + 1.596026786 * cr, yy - 0.391762290 * cb - 0.812967647 * cr, yy + 2.017232143 * cb], -1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def frames() -> list[tuple[str, np.ndarray]]:
    return [("astronaut", faces.astronaut()), ("composed 640x480", faces.compose_faces(640, 480)[0])]


def absdiff(a: np.ndarray | torch.Tensor, b: np.ndarray) -> np.ndarray:
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


# ---------------------------------------------------------------------------------------------- yuv420p


@pytest.mark.parametrize(("name", "rgb"), frames(), ids=[n for n, _ in frames()])
def test_rgb_to_yuv420p_matches_pyav(name: str, rgb: np.ndarray) -> None:
    ours = rgb_to_yuv420p(torch.from_numpy(rgb))
    for plane, ref in zip(ours, pyav_yuv420p(rgb), strict=True):
        assert plane.dtype == torch.uint8
        assert plane.shape == ref.shape
        d = absdiff(plane, ref)
        # measured: max 1, mean <= 0.08 (swscale's fixed-point rounding); chroma filters are the same
        assert d.max() <= 1, name
        assert d.mean() < 0.1, name


@pytest.mark.parametrize(("name", "rgb"), frames(), ids=[n for n, _ in frames()])
def test_yuv420p_to_rgb_matches_pyav_and_exact_bt601(name: str, rgb: np.ndarray) -> None:
    y, u, v = pyav_yuv420p(rgb)
    ours = yuv420p_to_rgb(torch.from_numpy(y), torch.from_numpy(u), torch.from_numpy(v))
    assert ours.dtype == torch.uint8
    assert ours.shape == rgb.shape
    # exact BT.601 in float64: only float32 rounding can differ
    assert absdiff(ours, exact_bt601_rgb(y, u, v)).max() <= 1, name
    # swscale's fast yuv2rgb truncates each term, so its output sits ~0.5-1.5 levels below the exact values
    # (measured: max 3, mean 1.07-1.23 on these frames); we round to nearest instead
    ref = pyav_rgb(y, u, v)
    d = absdiff(ours, ref)
    assert d.max() <= 3, name
    assert d.mean() < 1.5, name
    signed = ours.numpy().astype(np.float64) - ref
    assert 0.0 <= signed.mean() < 1.5, name  # the difference is that bias, not noise


@pytest.mark.parametrize(("name", "rgb"), frames(), ids=[n for n, _ in frames()])
def test_round_trip_stays_close(name: str, rgb: np.ndarray) -> None:
    back = yuv420p_to_rgb(*rgb_to_yuv420p(torch.from_numpy(rgb)))
    ours = absdiff(back, rgb)
    theirs = absdiff(pyav_rgb(*pyav_yuv420p(rgb)), rgb)
    # 4:2:0 loses chroma detail at sharp edges for everyone; ours loses no more than PyAV's own round trip
    assert ours.mean() <= theirs.mean() + 0.1, name
    assert ours.mean() < 2.5, name
    # where chroma is flat, only 8-bit quantisation remains: a batch of single-colour frames
    colours = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    flat = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(colours[:, None, None], (256, 4, 4, 3))))
    assert absdiff(yuv420p_to_rgb(*rgb_to_yuv420p(flat)), flat.numpy()).max() <= 2, name


def test_batched_planes_equal_single_frames() -> None:
    a, b = faces.astronaut(), faces.compose_faces(512, 512)[0]
    batch = torch.from_numpy(np.stack([a, b]))
    y, u, v = rgb_to_yuv420p(batch)
    assert y.shape == (2, 512, 512)
    assert u.shape == v.shape == (2, 256, 256)
    for i, single in enumerate((a, b)):
        ys, us, vs = rgb_to_yuv420p(torch.from_numpy(single))
        assert torch.equal(y[i], ys)
        assert torch.equal(u[i], us)
        assert torch.equal(v[i], vs)
        assert torch.equal(yuv420p_to_rgb(y, u, v)[i], yuv420p_to_rgb(ys, us, vs))


def test_bad_sizes_and_types_are_rejected() -> None:
    with pytest.raises(ValueError, match="even width and height"):
        rgb_to_yuv420p(torch.zeros(5, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="even width and height"):
        rgb_to_yuv420p(torch.zeros(8, 7, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="even width and height"):
        yuv420p_to_rgb(*(torch.zeros(s, dtype=torch.uint8) for s in ((7, 8), (3, 4), (3, 4))))
    with pytest.raises(ValueError, match="chroma planes"):
        yuv420p_to_rgb(*(torch.zeros(s, dtype=torch.uint8) for s in ((8, 8), (4, 4), (4, 3))))
    with pytest.raises(ValueError, match="3 channels"):
        rgb_to_yuv420p(torch.zeros(8, 8, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        rgb_to_yuv420p(torch.zeros(8, 8, 3))


# ---------------------------------------------------------------------------------------------- Lab


def test_lab_matches_scikit_image() -> None:
    rng = np.random.default_rng(0)
    # real content plus random colours, so every branch (dark linear segment, gamut corners) is exercised
    rgb = np.concatenate([faces.astronaut() / 255.0, rng.random((64, 512, 3))], axis=0)
    rgb[0, :8] = [[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.01, 0.02, 0.03], [0.5, 0.5, 0.5], [1, 1, 0]]
    ref_lab = rgb2lab(rgb)
    lab = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)).permute(1, 2, 0).double().numpy()
    assert np.abs(lab - ref_lab).max() < 1e-3  # measured 5.5e-5 (float32 against float64)
    back = lab_to_rgb(torch.from_numpy(ref_lab).permute(2, 0, 1)).permute(1, 2, 0).double().numpy()
    assert np.abs(back - lab2rgb(ref_lab)).max() < 1e-5  # measured ~6e-7
    assert np.abs(back - rgb).max() < 1e-5


def test_lab_to_rgb_clips_out_of_gamut() -> None:
    lab = torch.tensor([[100.0, 0.0, 0.0], [50.0, 120.0, -120.0], [0.0, 0.0, 0.0], [150.0, 0.0, 0.0]]).T[:, :, None]
    rgb = lab_to_rgb(lab)
    assert torch.isfinite(rgb).all()
    assert rgb.min() >= 0.0
    assert rgb.max() <= 1.0


# ---------------------------------------------------------------------------------------------- colour transfer

S = 256


def face_crop() -> np.ndarray:
    # a square around the astronaut's face (box 181-268 x 62-172), at crop size: a real face for the statistics
    return cv2.resize(faces.astronaut()[32:202, 139:309], (S, S), interpolation=cv2.INTER_AREA)


def to_crop(rgb: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(rgb).float() - 127.5) / 127.5).permute(2, 0, 1)


def relit(rgb: np.ndarray, gains: tuple[float, float, float], gamma: float) -> np.ndarray:
    # the same face under different light: per-channel gain plus a tone curve, then flipped so pixels differ
    x = (rgb / 255.0) ** gamma * np.array(gains)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)[:, ::-1].copy()


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    target = face_crop()
    sources = [relit(target, (1.1, 0.85, 0.7), 1.3), relit(target, (0.75, 0.8, 0.95), 0.9)]
    targets = [target, target]
    mask = torch.from_numpy(build_mask(S).copy())
    return torch.stack([to_crop(s) for s in sources]), torch.stack([to_crop(t) for t in targets]), mask


def test_transfer_matches_target_statistics(pair: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    source, target, mask = pair
    out = colour_transfer(source, target, mask)
    assert out.shape == source.shape
    assert out.dtype == source.dtype
    assert out.min() >= -1.0
    assert out.max() <= 1.0
    mean_t, std_t = masked_lab_stats(target, mask)
    mean_s, _ = masked_lab_stats(source, mask)
    mean_o, std_o = masked_lab_stats(out, mask)
    assert (mean_s - mean_t).abs().max() > 5.0  # the sources really are lit differently
    # face 0 stays inside the sRGB gamut after the transfer: the match is exact up to float rounding
    assert (mean_o[0] - mean_t[0]).abs().max() < 0.1
    assert ((std_o[0] - std_t[0]).abs() / std_t[0]).max() < 0.01
    # face 1 needs colours outside the gamut, which lab_to_rgb clips: a residue below one JND (~2.3) remains
    # (measured: mean 1.6, std 8 %, from 13.8 Lab units apart)
    assert (mean_o - mean_t).abs().max() < 2.0
    assert ((std_o - std_t).abs() / std_t).max() < 0.1


def test_identity_when_source_is_target(pair: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    _, target, mask = pair
    out = colour_transfer(target, target, mask)
    assert (out - target).abs().max() < 1e-4


def test_pixels_outside_the_mask_do_not_matter(pair: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    source, target, mask = pair
    outside = mask == 0
    assert outside.any()
    assert (~outside).any()
    rng = torch.Generator().manual_seed(0)
    noisy_source, noisy_target = source.clone(), target.clone()
    noisy_source[:, :, outside] = torch.rand(noisy_source[:, :, outside].shape, generator=rng) * 2 - 1
    noisy_target[:, :, outside] = torch.rand(noisy_target[:, :, outside].shape, generator=rng) * 2 - 1
    a = colour_transfer(source, target, mask)
    b = colour_transfer(noisy_source, noisy_target, mask)
    assert torch.allclose(a[:, :, ~outside], b[:, :, ~outside], atol=1e-5)


def test_batch_equals_singles(pair: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    source, target, mask = pair
    per_face_mask = torch.stack([mask, mask.flip(-1)])[:, None]  # (N, 1, S, S): masks may differ per face
    batch = colour_transfer(source, target, per_face_mask)
    for i in range(source.shape[0]):
        single = colour_transfer(source[i : i + 1], target[i : i + 1], per_face_mask[i])
        assert torch.allclose(batch[i : i + 1], single, atol=1e-6)


def test_flat_source_and_empty_mask_are_safe(pair: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    source, target, mask = pair
    flat = torch.full_like(source, 0.2)  # zero std: the scale must not blow up
    out = colour_transfer(flat, target, mask)
    assert torch.isfinite(out).all()
    mean_o, _ = masked_lab_stats(out, mask)
    mean_t, _ = masked_lab_stats(target, mask)
    assert (mean_o - mean_t).abs().max() < 1.0  # a flat face takes the target's mean colour
    empty = torch.zeros_like(mask)
    assert torch.equal(colour_transfer(source, target, empty), source)  # nothing to measure: left as it was


def test_half_precision_inputs_keep_their_dtype(pair: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    source, target, mask = pair
    out = colour_transfer(source.half(), target.half(), mask.half())
    assert out.dtype == torch.float16
    assert (out.float() - colour_transfer(source, target, mask)).abs().max() < 5e-3


def test_bad_shapes_are_rejected(pair: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    source, target, mask = pair
    with pytest.raises(ValueError, match="crops"):
        colour_transfer(source, target[:1], mask)
    with pytest.raises(ValueError, match="mask shape"):
        colour_transfer(source, target, mask[:128])


# ---------------------------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_cuda_matches_cpu(pair: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    source, target, mask = pair
    dev = torch.device("cuda")
    # colour transfer: same maths on the device; float32 reductions may differ in order only
    gpu = colour_transfer(source.to(dev), target.to(dev), mask.to(dev))
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - colour_transfer(source, target, mask)).abs().max() < 1e-4
    # yuv420p both ways stays on the device and agrees with the CPU to one grey level (FMA rounding ties)
    rgb = torch.from_numpy(faces.compose_faces(640, 480)[0])
    planes_cpu = rgb_to_yuv420p(rgb)
    planes_gpu = rgb_to_yuv420p(rgb.to(dev))
    for cpu_plane, gpu_plane in zip(planes_cpu, planes_gpu, strict=True):
        assert gpu_plane.device.type == "cuda"
        assert absdiff(gpu_plane.cpu(), cpu_plane.numpy()).max() <= 1
    back_gpu = yuv420p_to_rgb(*planes_gpu)
    assert back_gpu.device.type == "cuda"
    assert absdiff(back_gpu.cpu(), yuv420p_to_rgb(*planes_cpu).numpy()).max() <= 1
