"""TensorRT from ONNX (SCRFD) without TensorRT: the fp16 graph, the cache, and every call into `tensorrt`, made
against the strict double of tests/engines/tensorrt_double.py (TensorRT cannot be installed here)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from engines.detect import Detections, image_tensor
from engines.errors import CheckpointFormatError, ConfigError
from engines.runners import tensorrt_onnx as tro
from engines.runners.base import Runner
from engines.scrfd import INPUT_NAME, SCRFD, scrfd_io
from tests import faces
from tests.engines.tensorrt_double import (
    ENV,
    STREAM,
    Builder,
    Logger,
    MemoryPoolType,
    NetworkDefinitionCreationFlag,
    install,
)
from tests.engines.test_scrfd import build_fake_scrfd

pytest.importorskip("onnxconverter_common", reason="onnxconverter-common is a dev dependency (pip install -e .[dev])")


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The TensorRT double installed, the CUDA check skipped (the double runs on the CPU)."""
    monkeypatch.setattr(tro, "unavailable_reason", lambda: None)
    return install(monkeypatch)


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_scrfd(tmp_path_factory.mktemp("scrfd-trt") / "det_10g.onnx")


def runner(path: Path, cache: Path, precision: str = "fp16", messages: list[str] | None = None) -> Any:
    sink = messages.append if messages is not None else (lambda m: None)
    return tro.TensorRTOnnxRunner(path, scrfd_io(640), "cpu", cache_dir=cache, precision=precision, progress=sink)


FRAMES = ("1280x720", "640x480", "astronaut")


def frame(kind: str) -> np.ndarray:
    if kind == "astronaut":
        return faces.astronaut()
    width, height = map(int, kind.split("x"))
    return faces.compose_faces(width, height, seed=1)[0]


# --- the fp16 graph -----------------------------------------------------------------------------------------


def test_fp16_graph_is_float16_throughout(fake_model: Path) -> None:
    model = onnx.load_from_string(tro.graph_bytes(fake_model, "fp16"))
    onnx.checker.check_model(model)
    assert {i.type.tensor_type.elem_type for i in (*model.graph.input, *model.graph.output)} == {
        onnx.TensorProto.FLOAT16
    }
    floats = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert floats == []  # every weight converted (shape constants stay int64)
    assert tro.graph_bytes(fake_model, "fp32") == fake_model.read_bytes()


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_fp16_graph_keeps_pytorch_exported_resizes_valid(tmp_path: Path, opset: int) -> None:
    """torch's export of an upsample gives Resize(x, Constant roi=[], Constant scales=[], sizes). The converter
    would cast those empty Constants to fp16 and back into non-empty tensors, giving scales and sizes at once,
    which ONNX forbids from opset 13; as initializers they stay empty."""
    import onnxruntime as ort

    class Up(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.interpolate(x, size=(x.shape[2] * 2, x.shape[3] * 2), mode="nearest")
            return torch.sigmoid(y * 3.0)

    path = tmp_path / f"up{opset}.onnx"
    x = torch.rand(1, 3, 8, 8)
    with (
        warnings.catch_warnings()
    ):  # the TorchScript exporter on purpose: how PyTorch models like det_10g were exported
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            Up(), (x,), str(path), dynamo=False, opset_version=opset, input_names=["x"], output_names=["y"]
        )
    assert any(n.op_type == "Constant" for n in onnx.load(str(path)).graph.node)  # what the fix is for
    graph = tro.graph_bytes(path, "fp16")
    onnx.checker.check_model(onnx.load_from_string(graph), full_check=True)
    (got,) = ort.InferenceSession(graph).run(None, {"x": x.numpy().astype(np.float16)})
    (want,) = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    assert got.shape == want.shape == (1, 3, 16, 16)
    assert np.abs(got.astype(np.float32) - want).max() <= 2e-3


def test_unreadable_graph_is_a_format_error(tmp_path: Path) -> None:
    garbage = tmp_path / "det_10g.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(CheckpointFormatError, match="not a readable ONNX graph"):
        tro.graph_bytes(garbage, "fp16")


# --- the engine through the detector ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FRAMES)
def test_fp32_engine_gives_onnxruntimes_detections(
    fake_trt: ModuleType, fake_model: Path, tmp_path: Path, kind: str
) -> None:
    image = image_tensor(frame(kind), "cpu")
    ours = SCRFD(runner=runner(fake_model, tmp_path, "fp32"))(image)
    ref = SCRFD(fake_model)(image)
    assert len(ours) == len(ref) >= 1
    for a, b in ((ours.boxes, ref.boxes), (ours.scores, ref.scores), (ours.landmarks, ref.landmarks)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def assert_same_faces(ours: Detections, ref: Detections) -> None:
    """fp16 against fp32: the same faces, boxes and landmarks within a pixel, scores within fp16's resolution; a
    candidate within rounding of the 0.5 threshold may flip."""
    assert ours.boxes.dtype == ours.scores.dtype == ours.landmarks.dtype == torch.float32
    assert abs(len(ours) - len(ref)) <= 1
    assert len(ref) >= 1
    matched = 0
    for box, score, points in zip(ours.boxes, ours.scores, ours.landmarks, strict=True):
        distance = (ref.boxes - box).abs().amax(dim=1)
        best = int(distance.argmin())
        if distance[best] > 1.0:
            continue
        matched += 1
        assert abs(float(ref.scores[best] - score)) <= 2e-3
        assert float((ref.landmarks[best] - points).abs().max()) <= 1.0
    assert matched >= len(ref) - 1


@pytest.mark.parametrize("kind", FRAMES)
def test_fp16_engine_detects_the_same_faces(fake_trt: ModuleType, fake_model: Path, tmp_path: Path, kind: str) -> None:
    """fp16 weights and activations (ONNX Runtime runs the fp16 graph here, as the engine would on the GPU)."""
    image = image_tensor(frame(kind), "cpu")
    assert_same_faces(SCRFD(runner=runner(fake_model, tmp_path, "fp16"))(image), SCRFD(fake_model)(image))


@pytest.mark.gpu
def test_real_tensorrt_matches_onnxruntime(fake_model: Path, tmp_path: Path) -> None:
    """Where TensorRT is installed: the real engine on the GPU against ONNX Runtime fp32 on the CPU."""
    reason = tro.unavailable_reason()
    if reason:
        pytest.skip(reason)
    gpu = SCRFD(device="cuda", runner=tro.TensorRTOnnxRunner(fake_model, scrfd_io(640), "cuda", cache_dir=tmp_path))
    cpu = SCRFD(fake_model)
    for kind in FRAMES:
        assert_same_faces(gpu(image_tensor(frame(kind), "cuda")).to("cpu"), cpu(image_tensor(frame(kind), "cpu")))


# --- the calls into tensorrt --------------------------------------------------------------------------------


def test_build_calls_the_documented_api(fake_trt: ModuleType, fake_model: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    r = runner(fake_model, tmp_path, "fp16", messages)
    assert isinstance(r, Runner)
    r.activate()
    (build,) = fake_trt.builds  # type: ignore[attr-defined]
    assert build["flags"] & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    config = build["config"]
    assert config.pools == {MemoryPoolType.WORKSPACE: tro.WORKSPACE_BYTES}
    ((profile),) = config.profiles
    assert profile.shapes == {INPUT_NAME: ((1, 3, 640, 640),) * 3}
    assert any("building the TensorRT fp16 engine for scrfd" in m for m in messages)
    assert "TensorRT: Building engine (2 steps) ..." in messages
    assert any(m.startswith("TensorRT: Building engine done in") for m in messages)
    assert not any("Tactic selection" in m for m in messages)  # nested phases are not reported

    # the engine file: under the cache key, written atomically, nothing else left
    stat = fake_model.stat()
    sha = tro.file_sha256(fake_model.resolve(), stat.st_size, stat.st_mtime_ns)
    key = tro.cache_key(sha, scrfd_io(640), "fp16", ENV)
    assert r.engine_path == tro.cache_path(tmp_path, "scrfd", key)
    assert sorted(p.name for p in r.engine_path.parent.iterdir()) == [r.engine_path.name]

    # float32 in and out, half at the bound addresses, on the caller's stream
    out = r.infer({INPUT_NAME: torch.zeros(1, 3, 640, 640)})
    assert list(out) == list(scrfd_io(640).output_names)
    assert all(t.dtype == torch.float32 for t in out.values())
    assert [tuple(t.shape) for t in out.values()][:3] == [(12800, 1), (3200, 1), (800, 1)]
    assert r._context().streams == [STREAM]


def test_each_thread_gets_its_own_context(fake_trt: ModuleType, fake_model: Path, tmp_path: Path) -> None:
    """Sessions share the detector from their worker threads: one context per thread, never one for two streams."""
    import threading

    r = runner(fake_model, tmp_path)
    r.activate()
    x = {INPUT_NAME: torch.rand(1, 3, 640, 640) * 2 - 1}
    want = r.infer(x)
    seen: list[Any] = []
    results: list[dict[str, torch.Tensor]] = []

    def work() -> None:
        seen.append(r._context())
        results.append(r.infer(x))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in [r._context(), *seen]}) == 3
    for got in results:
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_restart_loads_the_cached_engine(fake_trt: ModuleType, fake_model: Path, tmp_path: Path) -> None:
    first = runner(fake_model, tmp_path)
    first.activate()
    messages: list[str] = []
    second = runner(fake_model, tmp_path, messages=messages)
    second.activate()
    assert len(fake_trt.builds) == 1  # type: ignore[attr-defined]
    assert second.engine_path == first.engine_path
    assert any("loading the TensorRT scrfd engine" in m for m in messages)
    x = {INPUT_NAME: torch.rand(1, 3, 640, 640) * 2 - 1}
    for a, b in zip(first.infer(x).values(), second.infer(x).values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unloadable_engine_is_rebuilt(fake_trt: ModuleType, fake_model: Path, tmp_path: Path) -> None:
    first = runner(fake_model, tmp_path)
    first.activate()
    first.engine_path.write_bytes(b"truncated")
    messages: list[str] = []
    runner(fake_model, tmp_path, messages=messages).activate()
    assert len(fake_trt.builds) == 2  # type: ignore[attr-defined]
    assert any("cannot load" in m and "building it again" in m for m in messages)
    assert first.engine_path.read_bytes() != b"truncated"


def test_failed_save_keeps_the_engine(
    fake_trt: ModuleType, fake_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Path, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    messages: list[str] = []
    r = runner(fake_model, tmp_path, messages=messages)
    r.activate()
    assert any("cannot save" in m and "No space left" in m for m in messages)
    assert list((tmp_path / "tensorrt").iterdir()) == []
    assert r.infer({INPUT_NAME: torch.zeros(1, 3, 640, 640)})["448"].shape == (12800, 1)


def test_parser_errors_are_reported(fake_trt: ModuleType, tmp_path: Path) -> None:
    bad = tmp_path / "det_10g.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(CheckpointFormatError, match="TensorRT's ONNX parser refused it: In node -1"):
        runner(bad, tmp_path, "fp32").activate()


def test_engine_with_other_tensors_is_refused(fake_trt: ModuleType, tmp_path: Path) -> None:
    from engines.scrfd import BOX_NAMES, KPS_NAMES

    other = build_fake_scrfd(
        tmp_path / "other.onnx", names={"score": ("s8", "s16", "s32"), "box": BOX_NAMES, "kps": KPS_NAMES}
    )
    with pytest.raises(CheckpointFormatError, match=r"gives \[.*'s8'.*expected"):
        runner(other, tmp_path / "cache").activate()


def test_engine_with_other_output_shapes_is_refused(fake_trt: ModuleType, fake_model: Path, tmp_path: Path) -> None:
    """An engine whose outputs are not the io's shapes (the io's anchor counts for 320 on a 640 input) would
    have its outputs written past the buffers sized from the io: refused when the context is made."""
    import dataclasses

    wrong = dataclasses.replace(scrfd_io(640), outputs=scrfd_io(320).outputs)
    r = tro.TensorRTOnnxRunner(fake_model, wrong, "cpu", cache_dir=tmp_path, progress=lambda m: None)
    with pytest.raises(CheckpointFormatError, match=r"448 is \(12800, 1\) in the engine, expected \(3200, 1\)"):
        r.activate()


def test_cache_key_changes_with_every_ingredient() -> None:
    io = scrfd_io(640)
    base = tro.cache_key("a" * 64, io, "fp16", ENV)
    assert base == tro.cache_key("a" * 64, io, "fp16", dict(ENV))
    others = [
        tro.cache_key("b" * 64, io, "fp16", ENV),
        tro.cache_key("a" * 64, scrfd_io(320), "fp16", ENV),
        tro.cache_key("a" * 64, io, "fp32", ENV),
        tro.cache_key("a" * 64, io, "fp16", {**ENV, "tensorrt": "11.0.0.1"}),
        tro.cache_key("a" * 64, io, "fp16", {**ENV, "gpu": "NVIDIA GeForce RTX 4090"}),
        tro.cache_key("a" * 64, io, "fp16", {**ENV, "compute_capability": "8.9"}),
    ]
    assert len({base, *others}) == len(others) + 1


def test_without_tensorrt_activation_says_why(
    fake_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, as where it is not installed
    reason = tro.unavailable_reason()
    assert reason is not None
    if torch.cuda.is_available():
        assert "tensorrt is not usable" in reason
        assert "pip install" in reason
    with pytest.raises(ConfigError, match="backend tensorrt: "):
        runner(fake_model, tmp_path).activate()


def test_refuses_batched_networks_and_unknown_precisions(fake_model: Path, tmp_path: Path) -> None:
    from engines.runners.base import arcface_io

    with pytest.raises(ValueError, match="fixed input shapes only"):
        tro.TensorRTOnnxRunner(fake_model, arcface_io(), "cpu", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="precision"):
        tro.TensorRTOnnxRunner(fake_model, scrfd_io(640), "cpu", cache_dir=tmp_path, precision="int8")  # type: ignore[arg-type]


def test_the_double_is_strict(fake_trt: ModuleType) -> None:
    """The double refuses what the documented API does not take, so the tests above can fail."""
    builder = Builder(Logger())
    with pytest.raises(TypeError):
        builder.create_network(flags=0, strongly_typed=True)  # type: ignore[call-arg]
    config = builder.create_builder_config()
    with pytest.raises(AttributeError):
        config.set_flag(1)  # type: ignore[attr-defined]  (no precision flags: removed in TensorRT 11)
    with pytest.raises(TypeError):
        builder.create_optimization_profile().set_shape("x", (1,), (1,))  # type: ignore[call-arg]
    assert builder.build_serialized_network(builder.create_network(), config) is None  # nothing parsed
