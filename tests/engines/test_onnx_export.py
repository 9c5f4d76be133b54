"""ONNX export: FaceDancer (crops + w in) and ArcFace with the io's names and a dynamic batch, checked by onnx's
checker and by ONNX Runtime against torch eager fp32 (FaceDancer: max abs error <= 1e-4 on outputs in [-1, 1];
ArcFace: relative to the embedding's scale); atomic writes and the export cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engines.runners import onnx_export
from engines.runners.base import IOSpec, NetworkIO, arcface_io, facedancer_io
from engines.runners.eager import EagerRunner
from engines.runners.onnx_export import cache_name, cached_onnx, check_onnx, export_onnx, max_abs_error, sample_feeds
from engines.runners.onnxruntime import OnnxRuntimeRunner
from tests.engines.parity import assert_fp32_parity, relative_error

TOLERANCE = 1e-4


# --- a tiny network with FaceDancer's kinds of layers, for the cheap tests -----------------------------------

TINY_IO = NetworkIO(
    "facedancer", (IOSpec("target", (-1, 3, 16, 16)), IOSpec("w", (-1, 4))), (IOSpec("swapped", (-1, 3, 16, 16)),)
)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.InstanceNorm2d(4, affine=True)
        self.scale = nn.Linear(4, 4)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(self.norm(self.conv(target)), 2) * self.scale(w)[:, :, None, None]
        return self.out(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


# --- the real networks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "io"), [("fd_onnx", facedancer_io()), ("arc_onnx", arcface_io())], ids=["facedancer", "arcface"]
)
def test_graph_has_the_io_names_and_a_dynamic_batch(
    request: pytest.FixtureRequest, network: str, io: NetworkIO
) -> None:
    path = request.getfixturevalue(network)
    check_onnx(path, io)  # onnx.checker with shape inference, then names, dtype and shapes
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    assert [(v.name, _dims(v)) for v in proto.graph.input] == [(s.name, ["batch", *s.shape[1:]]) for s in io.inputs]
    assert [(v.name, _dims(v)) for v in proto.graph.output] == [(s.name, ["batch", *s.shape[1:]]) for s in io.outputs]
    # the exporter's Identity-wired duplicate initializers are gone (ONNX Runtime's optimiser rejects them)
    initializers = {t.name for t in proto.graph.initializer}
    assert not [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in initializers]


def test_facedancer_onnxruntime_matches_torch(fd_model: nn.Module, fd_onnx: Path) -> None:
    # batches 1 and 8 run on real-face crops in test_runners; batch 3 here, on random crops in [-1, 1]
    errors = max_abs_error(fd_model, facedancer_io(), fd_onnx, batches=(3,))
    print(f"FaceDancer ONNX Runtime vs torch fp32, max abs error: {errors}")
    assert max(errors.values()) <= TOLERANCE


def test_arcface_onnxruntime_matches_torch(arc_model: nn.Module, arc_onnx: Path) -> None:
    # relative to the embedding's scale, not absolute: raw embeddings reach |y| ≈ 48 on the released weights
    io = arcface_io()
    with EagerRunner(arc_model, io) as eager, OnnxRuntimeRunner(arc_onnx, io) as ort:
        for batch in (1, 3, 8):
            feeds = sample_feeds(io, batch, batch)
            got, want = ort.infer(feeds)["embedding"], eager.infer(feeds)["embedding"]
            print(f"ArcFace batch {batch}: ONNX Runtime vs torch fp32, relative error {relative_error(got, want):.1e}")
            assert_fp32_parity(got, want)


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="the dynamo exporter needs onnxscript")
def test_dynamo_exporter(fd_model: nn.Module, tmp_path: Path) -> None:
    # opset 18: the dynamo exporter cannot down-convert FaceDancer's graph to 17
    path = export_onnx(fd_model, facedancer_io(), tmp_path / "fd.onnx", opset=18, exporter="dynamo")
    assert max(max_abs_error(fd_model, facedancer_io(), path, batches=(2,)).values()) <= TOLERANCE


# --- the export's contract, on a tiny network ----------------------------------------------------------------


def test_export_runs_on_a_float32_copy(tmp_path: Path) -> None:
    model = Tiny().half().to(memory_format=torch.channels_last)
    path = export_onnx(model, TINY_IO, tmp_path / "tiny.onnx")
    check_onnx(path, TINY_IO)
    assert next(model.parameters()).dtype == torch.float16  # the caller's model is untouched
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    reference = Tiny()
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    assert max(max_abs_error(reference, TINY_IO, path, batches=(1, 5)).values()) <= 1e-5


def test_a_failed_export_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = export_onnx(Tiny(), TINY_IO, tmp_path / "tiny.onnx")
    before = path.read_bytes()

    def half_written(model: nn.Module, io: NetworkIO, args: object, tmp: Path, opset: int) -> None:
        tmp.write_bytes(b"partial")
        raise RuntimeError("exporter crashed")

    monkeypatch.setitem(onnx_export._EXPORTERS, "torchscript", half_written)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx(Tiny(), TINY_IO, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]


def test_check_onnx_names_what_differs(tmp_path: Path) -> None:
    path = export_onnx(Tiny(), TINY_IO, tmp_path / "tiny.onnx")
    renamed = NetworkIO("facedancer", (IOSpec("crops", (-1, 3, 16, 16)), TINY_IO.inputs[1]), TINY_IO.outputs)
    with pytest.raises(ValueError, match=r"inputs \['target', 'w'\], expected \['crops', 'w'\]"):
        check_onnx(path, renamed)
    resized = NetworkIO("facedancer", TINY_IO.inputs, (IOSpec("swapped", (-1, 3, 32, 32)),))
    with pytest.raises(ValueError, match="swapped is FLOAT"):
        check_onnx(path, resized)


def test_cache_reuses_the_export_and_keys_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = Tiny()
    path = cached_onnx(model, TINY_IO, tmp_path, "abc123")
    assert path.parent == tmp_path
    assert path.name.startswith("facedancer-abc123-")
    assert "-opset17-torch" in path.name
    assert torch.__version__.replace("+", "_") in path.name

    def no_export(*args: object, **kwargs: object) -> Path:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export_onnx", no_export)
    assert cached_onnx(model, TINY_IO, tmp_path, "abc123") == path  # a restart reuses it
    monkeypatch.undo()

    # other weights under the same key (two random initialisations), another key or opset: another file
    assert cache_name(Tiny(), TINY_IO, "abc123") != path.name
    assert cache_name(model, TINY_IO, "def456") != path.name
    assert cache_name(model, TINY_IO, "abc123", opset=18) != path.name

    path.write_bytes(b"damaged")  # e.g. a disk that filled up under an older version
    assert cached_onnx(model, TINY_IO, tmp_path, "abc123") == path
    check_onnx(path, TINY_IO)
