"""FP16 accuracy of FaceDancer against fp32 on real-face crops, and the float32 InstanceNorm statistics it relies on.

Errors are reported as mean and max absolute error of the linear output and PSNR over its [-1, 1] range (peak to
peak 2); the measured numbers are printed (uncaptured) so the GPU suite's log keeps them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from engines.align import estimate_norm
from engines.facedancer import FaceDancer, FaceDancerConfig, InstanceNorm, _spatial_mean_var, facedancer
from engines.runners.base import facedancer_io
from engines.runners.cuda_graphs import CudaGraphRunner
from engines.runners.eager import ieee_fp32_convolutions
from realtime.pipeline.warp_cpu import align_faces
from tests import faces

# config C's layout with a quarter of its channels: the same 256 px maps, ~16x cheaper on a CPU in fp16
NARROW = FaceDancerConfig(widths=(16, 32, 64, 128, 128, 128, 128))


def real_face_crops(n: int) -> torch.Tensor:
    """Up to 5 aligned 256x256 crops in [-1, 1]: the astronaut photo, then the four faces of a composed frame."""
    photo = faces.astronaut()
    frame, placed = faces.compose_faces(1280, 720)
    m_photo = estimate_norm(torch.from_numpy(faces.ASTRONAUT_LANDMARKS), 256).numpy()
    m_frame = estimate_norm(torch.from_numpy(np.stack([p.landmarks for p in placed])), 256).numpy()
    crops = np.concatenate([align_faces(photo, m_photo[None]), align_faces(frame, m_frame)])
    return torch.from_numpy(crops[:n])


def fp16_error(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    err = (out.float() - ref.float()).abs()
    mse = err.square().mean().item()
    return {
        "mean_abs": err.mean().item(),
        "max_abs": err.max().item(),
        "psnr_db": 10 * math.log10(4.0 / mse) if mse > 0 else math.inf,
        "ref_mean_abs": ref.abs().mean().item(),
    }


def _report(capsys: pytest.CaptureFixture[str], label: str, e: dict[str, float]) -> None:
    with capsys.disabled():
        print(
            f"\nFP16 accuracy {label}: mean abs {e['mean_abs']:.3e}, max abs {e['max_abs']:.3e}, "
            f"PSNR {e['psnr_db']:.1f} dB (output mean |y| {e['ref_mean_abs']:.3f})"
        )


def _check(e: dict[str, float], ref: torch.Tensor) -> None:
    # fp16 keeps ~3 decimal digits; measured on CPU for config C: mean 6.5e-5 (4e-4 of mean |y|), max 5.7e-4
    assert e["mean_abs"] < 3e-3 * ref.abs().mean().item()
    assert e["max_abs"] < 3e-2 * ref.abs().max().item()
    assert e["psnr_db"] > 55.0


# --- InstanceNorm statistics ---------------------------------------------------------------------------------


def _two_pass(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 reference: two passes over a float32 copy along the axis contiguous in memory (what
    `_spatial_mean_var` did for every input before half maps got their own path)."""
    x = x.float()
    b, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        v, dim = x.permute(0, 2, 3, 1).reshape(b, h * w, c), 1
    else:
        v, dim = x.reshape(b, c, h * w), 2
    mean = v.mean(dim, keepdim=True)
    var = (v - mean).square().mean(dim, keepdim=True)
    return mean.reshape(b, c, 1, 1), var.reshape(b, c, 1, 1)


def test_float32_statistics_are_unchanged_bit_for_bit() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 32, 32) * 3 + 1
    for xx in (x, x.to(memory_format=torch.channels_last)):
        mean, var = _spatial_mean_var(xx)
        ref_mean, ref_var = _two_pass(xx)
        assert torch.equal(mean, ref_mean)
        assert torch.equal(var, ref_var)


@pytest.mark.parametrize(("scale", "offset"), [(3.0, 0.0), (1000.0, 50.0), (0.5, 100.0)])
def test_half_statistics_are_float32_and_exact(scale: float, offset: float) -> None:
    """Large deviations (whose fp16 squares overflow) and a mean far above the spread (where E[x²] − mean²
    cancels): the statistics of half maps match float32 statistics of the same values."""
    torch.manual_seed(1)
    x = (torch.randn(2, 8, 64, 64) * scale + offset).half()
    ref_mean, ref_var = _two_pass(x)
    for xx in (x, x.to(memory_format=torch.channels_last)):
        mean, var = _spatial_mean_var(xx)
        assert mean.dtype == var.dtype == torch.float32
        torch.testing.assert_close(mean, ref_mean, rtol=1e-6, atol=1e-6 * scale)
        torch.testing.assert_close(var, ref_var, rtol=1e-4, atol=0)
    if scale >= 1000:  # what fp16 statistics would do here
        assert torch.isinf((x - x.mean()).square()).any()


def test_instance_norm_on_half_maps_matches_float32() -> None:
    torch.manual_seed(2)
    norm = InstanceNorm(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = (torch.randn(2, 8, 32, 32) * 1000 + 50).half()
    ref = norm(x.float())
    out = norm.half()(x)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=1e-2)


@pytest.mark.parametrize("ratio", [10.0, 100.0, 300.0])
def test_instance_norm_on_half_maps_with_a_mean_far_above_the_spread(ratio: float) -> None:
    """|mean| >> std: x·scale + shift would subtract two large fp16 numbers (error ~2⁻¹¹·ratio, 0.16 at 300);
    applied to the centred map the output keeps fp16's own resolution."""
    torch.manual_seed(3)
    norm = InstanceNorm(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = (torch.randn(2, 8, 32, 32) * 2.0 + 2.0 * ratio).half()
    ref = norm(x.float())
    for xx in (x, x.to(memory_format=torch.channels_last)):
        out = norm.half()(xx).float()
        norm.float()
        assert (out - ref).abs().max().item() < 1e-2  # outputs of a few units: fp16 resolution, not ratio x 2⁻¹¹


def test_instance_norm_on_a_near_constant_large_half_channel_stays_finite() -> None:
    """A channel near 3000 with a tiny spread: mean·scale passes 65504, the folded shift would be infinite."""
    norm = InstanceNorm(1)
    x = torch.full((1, 1, 16, 16), 3000.0)
    x[0, 0, ::2, ::2] += 2.0  # a spread of about 1
    ref = norm(x)
    out = norm.half()(x.half()).float()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-2)


# --- the whole network on real faces -------------------------------------------------------------------------


def _half_conv_on_cpu() -> bool:
    try:
        torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.half), torch.ones(1, 1, 1, 1, dtype=torch.half))
    except RuntimeError:
        return False
    return True


@pytest.mark.skipif(not _half_conv_on_cpu(), reason="this torch build has no float16 convolution on the CPU")
def test_fp16_error_on_real_faces_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = FaceDancer(NARROW).eval()
    x = real_face_crops(2)
    with torch.no_grad():
        w = model.map_identity(torch.randn(1, 512)).expand(len(x), -1)
        ref = model(x, w)
        half = model.half().to(memory_format=torch.channels_last)
        out = half(x.half().to(memory_format=torch.channels_last), w.half())
    e = fp16_error(out, ref)
    _report(capsys, "CPU eager, narrow config C, 2 real-face crops", e)
    _check(e, ref)


@pytest.mark.gpu
def test_fp16_error_on_real_faces_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model: nn.Module = facedancer().eval().cuda()
    x = real_face_crops(5).cuda()
    with torch.no_grad():
        w = model.map_identity(torch.randn(1, 512, device="cuda")).expand(len(x), -1).contiguous()  # type: ignore[operator]
        with ieee_fp32_convolutions():  # a true fp32 reference: no TF32 convolutions
            ref = model(x, w)
    with CudaGraphRunner(model, facedancer_io(), "cuda") as runner:
        graph = runner.infer({"target": x, "w": w})["swapped"]  # type: ignore[union-attr]
    with torch.no_grad():
        half = model.half().to(memory_format=torch.channels_last)  # after the runner took its copy
        eager = half(x.half().to(memory_format=torch.channels_last), w.half()).float()
    for label, out in (("CUDA eager fp16", eager), ("CUDA-graph fp16", graph)):
        e = fp16_error(out, ref)
        _report(capsys, f"{label}, config C, 5 real-face crops ({torch.cuda.get_device_name()})", e)
        _check(e, ref)
