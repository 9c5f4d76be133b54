"""FaceDancer generator: known answers for its layers, the official parameter counts, precision and layout."""

from __future__ import annotations

import math

import pytest
import torch

from engines.facedancer import (
    AFFA,
    AdaIN,
    FaceDancer,
    FaceDancerConfig,
    InstanceNorm,
    facedancer,
    parameter_count,
)

SMALL = FaceDancerConfig(widths=(4, 8, 8, 16, 16, 16, 16), mapping_width=16)


def test_parameter_counts_match_the_official_model() -> None:
    assert parameter_count(facedancer("config_c")) == 22_473_254
    assert parameter_count(facedancer("config_c_512")) == 24_505_894


def test_instance_norm_known_answer() -> None:
    """Biased variance and eps 1e-3: one channel holding 1, 2, 3, 4 → (x - 2.5) / sqrt(1.25 + 1e-3)."""
    norm = InstanceNorm(1)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / math.sqrt(1.25 + 1e-3)
    torch.testing.assert_close(norm(x).flatten(), expected, rtol=0, atol=1e-6)
    # the affine part: gamma, then beta
    with torch.no_grad():
        norm.weight.fill_(2.0)
        norm.bias.fill_(0.5)
    torch.testing.assert_close(norm(x).flatten(), 2 * expected + 0.5, rtol=0, atol=1e-6)
    # eps matters: with 1e-5 the result would differ by ~4e-4 here
    assert not torch.allclose(
        norm(x).flatten(), 2 * (torch.tensor([1.0, 2, 3, 4]) - 2.5) / math.sqrt(1.25 + 1e-5) + 0.5
    )


def test_adain_has_no_plus_one() -> None:
    ada = AdaIN(channels=2, w_dim=1)
    with torch.no_grad():
        ada.scale.weight.copy_(torch.tensor([[2.0], [3.0]]))
        ada.scale.bias.zero_()
        ada.shift.weight.zero_()
        ada.shift.bias.copy_(torch.tensor([0.5, -1.0]))
    x = torch.ones(1, 2, 1, 1)
    y = ada(x, torch.tensor([[1.0]]))
    assert y.flatten().tolist() == [2.5, 2.0]  # scale·x + shift, not (1 + scale)·x + shift


def test_affa_gates_skip_against_decoder() -> None:
    affa = AFFA(channels=4)
    with torch.no_grad():
        for p in affa.parameters():
            p.zero_()
        affa.norm.weight.fill_(1.0)
        affa.mask.bias.fill_(math.log(3.0))  # sigmoid(log 3) = 0.75 everywhere
    skip = torch.full((1, 4, 2, 2), 10.0)
    dec = torch.full((1, 4, 2, 2), 2.0)
    torch.testing.assert_close(affa(skip, dec), torch.full((1, 4, 2, 2), 0.25 * 10 + 0.75 * 2))


def test_forward_shapes_and_identity_split() -> None:
    torch.manual_seed(0)
    model = FaceDancer(SMALL).eval()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    z = torch.randn(1, 512)
    with torch.no_grad():
        w = model.map_identity(z)
        assert w.shape == (1, 16)
        y = model(x, w)  # one source broadcast over a batch of faces
        y_each = torch.cat([model(x[i : i + 1], w) for i in range(3)])
    assert y.shape == (3, 3, 64, 64)
    torch.testing.assert_close(y, y_each, rtol=1e-5, atol=1e-5)
    # the identity changes the output
    with torch.no_grad():
        other = model(x, model.map_identity(torch.randn(1, 512)))
    assert (other - y).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="2 rows for 3 crops"):
        model(x, torch.zeros(2, 16))


def test_output_is_linear_not_squashed() -> None:
    torch.manual_seed(1)
    model = FaceDancer(SMALL).eval()
    with torch.no_grad():
        model.decoder[-1].block.shortcut.bias.fill_(5.0)
        y = model(torch.zeros(1, 3, 64, 64), model.map_identity(torch.zeros(1, 512)))
    assert y.max() > 1.5  # no tanh at the end: callers clip


def test_channels_last_gives_the_same_result() -> None:
    torch.manual_seed(2)
    model = FaceDancer(SMALL).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    w = model.map_identity(torch.randn(1, 512))
    with torch.no_grad():
        ref = model(x, w)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), w)
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)


def _half_supported_on_cpu() -> bool:
    try:
        torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.half), torch.ones(1, 1, 1, 1, dtype=torch.half))
    except RuntimeError:
        return False
    return True


@pytest.mark.skipif(not _half_supported_on_cpu(), reason="this torch build has no float16 convolution on the CPU")
def test_float16_stays_close_to_float32() -> None:
    torch.manual_seed(3)
    model = FaceDancer(SMALL).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = torch.randn(1, 512)
    with torch.no_grad():
        ref = model(x, model.map_identity(z))
        half = model.half()
        out = half(x.half(), half.map_identity(z.half())).float()
    assert out.dtype == torch.float32
    err = (out - ref).abs()
    # fp16 has ~3 decimal digits; the InstanceNorm statistics stay in fp32, so errors do not blow up
    assert err.mean() < 5e-3 * ref.abs().mean() + 1e-3
    assert err.max() < 0.05 * ref.abs().max()


@pytest.mark.gpu
def test_cuda_fp32_and_fp16_match_cpu() -> None:
    torch.manual_seed(4)
    model = facedancer().eval()
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    z = torch.randn(1, 512)
    with torch.no_grad():
        ref = model(x, model.map_identity(z))
        gpu = model.cuda()
        out32 = gpu(x.cuda(), gpu.map_identity(z.cuda())).cpu()
        gpu16 = gpu.half()
        out16 = gpu16(x.cuda().half(), gpu16.map_identity(z.cuda().half())).float().cpu()
    torch.testing.assert_close(out32, ref, rtol=1e-3, atol=1e-3)
    assert (out16 - ref).abs().mean() < 1e-2


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="skips"):
        FaceDancerConfig(skips=("affa",) * 5)
    with pytest.raises(ValueError, match="skips"):
        FaceDancerConfig(skips=("affa", "affa", "affa", "affa", "affa", "bogus"))
    cfg = FaceDancerConfig(skips=("add", "d_affa", "do_affa", "affa", "no_skip", "concat"), mapping_width=512)
    assert FaceDancerConfig.from_dict(cfg.to_dict()) == cfg
