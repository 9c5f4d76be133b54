"""ArcFace (Keras-applications ResNet50 + embedding head): conversion checked against a numpy forward pass."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.arcface import ArcFace, ArcFaceConfig, checkpoint_filter_fn, load_arcface
from engines.convert.keras_h5 import read_keras_h5
from engines.errors import CheckpointFormatError
from tests.engines.keras_files import KerasBuilder, build_arcface, nest, run_numpy, write_h5, write_nested_h5
from tests.engines.parity import assert_fp32_parity, assert_fp64_exact


def _run(model: ArcFace, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x).float().permute(0, 3, 1, 2)).double().numpy()


def _run64(model: ArcFace, x: np.ndarray) -> np.ndarray:
    """The converted weights in float64: what is left against the float64 reference is conversion error."""
    with torch.no_grad():
        return copy.deepcopy(model).double()(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()


def _check(model: ArcFace, b: KerasBuilder, out: str, x: np.ndarray) -> None:
    ref = run_numpy(b, out, {"input_1": x})
    assert_fp64_exact(_run64(model, x), ref)
    assert_fp32_parity(_run(model, x), ref)


def _convert(path: Path) -> ArcFace:
    config, state = checkpoint_filter_fn(read_keras_h5(path))
    model = ArcFace(config).eval()
    model.load_state_dict(state, strict=True)
    return model


def test_default_model_is_resnet50_with_the_expected_head() -> None:
    model = ArcFace().eval()
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
    assert 4 * (params + buffers) == pytest.approx(162e6, rel=0.01)  # the released file is 162 MB of float32
    with torch.no_grad():
        assert model(torch.rand(2, 3, 112, 112)).shape == (2, 512)


def test_conversion_matches_the_keras_graph(tmp_path: Path) -> None:
    b, out = build_arcface(np.random.default_rng(0))
    final = next(layer for layer in b.layers if layer.name == out)
    final.weights = [(n, a * 40) if n.endswith(("gamma:0", "beta:0")) else (n, a) for n, a in final.weights]
    model = _convert(write_h5(tmp_path / "a.h5", b, out))
    cfg = model.config
    assert cfg.blocks == (1, 2, 1, 1)
    assert cfg.widths == (2, 4, 4, 8)
    assert cfg.bn_eps == pytest.approx(1.001e-5)
    assert [h.kind for h in cfg.head] == ["batchnorm", "dropout", "flatten", "dense", "batchnorm"]
    x = np.random.default_rng(1).uniform(0, 1, (2, 112, 112, 3))
    ref = run_numpy(b, out, {"input_1": x})
    assert np.abs(ref).max() > 30  # the scale of the released model's raw embeddings (|y| up to ~48)
    _check(model, b, out, x)


def test_backbone_nested_as_one_layer(tmp_path: Path) -> None:
    b, out = build_arcface(np.random.default_rng(2))
    inner_out = "conv5_block1_out"
    path = write_nested_h5(tmp_path / "n.h5", b, inner_out, nest(b, inner_out, (112, 112, 3)))
    model = _convert(path)
    _check(model, b, out, np.random.default_rng(3).uniform(0, 1, (1, 112, 112, 3)))


def test_other_heads_are_read_from_the_file(tmp_path: Path) -> None:
    b, out = build_arcface(np.random.default_rng(4), head="gap_dense", embedding=8)
    model = _convert(write_h5(tmp_path / "g.h5", b, out))
    assert [h.kind for h in model.config.head] == ["global_avg_pool", "dense"]
    _check(model, b, out, np.random.default_rng(5).uniform(0, 1, (2, 112, 112, 3)))


def test_unsupported_head_layer_is_named(tmp_path: Path) -> None:
    b, out = build_arcface(np.random.default_rng(6), head="Lambda")
    with pytest.raises(CheckpointFormatError, match=r"unsupported layer 'lambda' \(Lambda\)"):
        checkpoint_filter_fn(read_keras_h5(write_h5(tmp_path / "l.h5", b, out)))


def test_mixed_batchnorm_eps_in_the_backbone_is_refused(tmp_path: Path) -> None:
    b, out = build_arcface(np.random.default_rng(7))
    for layer in b.layers:
        if layer.name == "conv3_block2_2_bn":
            layer.config["epsilon"] = 1e-3
    with pytest.raises(CheckpointFormatError, match="conv3_block2_2_bn"):
        checkpoint_filter_fn(read_keras_h5(write_h5(tmp_path / "e.h5", b, out)))


def test_full_size_resnet50_file_loads_into_the_default_model(tmp_path: Path) -> None:
    b, out = build_arcface(
        np.random.default_rng(8), embedding=512, blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem=64
    )
    config, state = checkpoint_filter_fn(read_keras_h5(write_h5(tmp_path / "ArcFace-Res50.h5", b, out)))
    assert config == ArcFaceConfig()
    ArcFace().load_state_dict(state, strict=True)


def test_cached_load(tmp_path: Path) -> None:
    b, out = build_arcface(np.random.default_rng(9))
    path = write_h5(tmp_path / "ArcFace-small.h5", b, out)
    first = load_arcface(path)
    second = load_arcface(path.with_suffix(".safetensors"))
    x = np.random.default_rng(10).uniform(0, 1, (1, 112, 112, 3))
    assert np.array_equal(_run(first, x), _run(second, x))
