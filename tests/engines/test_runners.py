"""Runners behind one interface: torch eager (the fp32 reference, and fp16), ONNX Runtime against it on real-face
crops, feed checks, lifecycle, and choosing a backend (`available`, `create_runner`, `choose("auto")`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engines.errors import CheckpointFormatError, ConfigError
from engines.identity import align_crop
from engines.runners import select
from engines.runners.base import NetworkIO, Runner, arcface_io, facedancer_io, private_stream
from engines.runners.eager import EagerRunner
from engines.runners.onnx_export import cached_onnx
from engines.runners.onnxruntime import OnnxRuntimeRunner, cuda_provider_present
from tests import faces
from tests.engines.parity import assert_fp32_parity, relative_error

TOLERANCE = 1e-4  # FaceDancer, ONNX Runtime vs torch eager fp32 (outputs in [-1, 1]); ArcFace: tests/engines/parity
FD_IO = facedancer_io()
ARC_IO = arcface_io()


# --- fixtures: random-init networks, exported once per module, on real-face crops -----------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory, arc_model: nn.Module) -> Path:
    """A compiled-networks directory that already holds ArcFace's cached export (as after a first run)."""
    path = tmp_path_factory.mktemp("compiled")
    cached_onnx(arc_model, ARC_IO, path, "random")
    return path


def _crops(size: int, n: int = 8) -> np.ndarray:
    """n aligned crops of the astronaut's face, each from slightly moved landmarks (as a tracker would give)."""
    image, rng = faces.astronaut(), np.random.default_rng(0)
    jitter = rng.normal(0, 2.0, (n, 5, 2)) * (np.arange(n) > 0)[:, None, None]  # the first one exact
    return np.stack([align_crop(image, faces.ASTRONAUT_LANDMARKS + j, size) for j in jitter])


@pytest.fixture(scope="module")
def fd_feeds(fd_model: nn.Module) -> dict[str, torch.Tensor]:
    """8 real-face 256 crops in [-1, 1], and one w per crop from the mapping network."""
    target = torch.from_numpy(_crops(256)).permute(0, 3, 1, 2).float().sub(127.5).div(127.5).contiguous()
    with torch.inference_mode():
        w = fd_model.map_identity(torch.randn(8, 512, generator=torch.Generator().manual_seed(2)))
    return {"target": target, "w": w.clone()}


@pytest.fixture(scope="module")
def arc_feeds() -> dict[str, torch.Tensor]:
    """8 real-face 112 crops in [0, 1]."""
    return {"face": torch.from_numpy(_crops(112)).permute(0, 3, 1, 2).float().div(255.0).contiguous()}


def _head(feeds: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {k: v[:n] for k, v in feeds.items()}


@pytest.fixture(scope="module")
def fd_reference(fd_model: nn.Module, fd_feeds: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Eager fp32 on the CPU at batches 1 and 8: the reference every other runner is held to."""
    with EagerRunner(fd_model, FD_IO) as eager:
        return {n: eager.infer(_head(fd_feeds, n))["swapped"] for n in (1, 8)}


# --- eager and ONNX Runtime ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 8])
def test_onnxruntime_matches_eager_facedancer(
    fd_onnx: Path, fd_feeds: dict[str, torch.Tensor], fd_reference: dict[int, torch.Tensor], batch: int
) -> None:
    with OnnxRuntimeRunner(fd_onnx, FD_IO) as ort:
        got = ort.infer(_head(fd_feeds, batch))["swapped"]
        assert ort.last_ms > 0
    want = fd_reference[batch]
    assert got.dtype == torch.float32
    assert got.shape == (batch, 3, 256, 256)
    assert got.device.type == "cpu"
    error = float((got - want).abs().max())
    print(f"FaceDancer batch {batch}: ORT vs eager fp32 max abs error {error:.2e} (|y| <= {want.abs().max():.2f})")
    assert error <= TOLERANCE
    assert want.abs().max() > 0.1  # the output is not degenerate, so the bar means something


def test_eager_output_is_float32_and_contiguous(fd_reference: dict[int, torch.Tensor]) -> None:
    out = fd_reference[8]
    assert out.dtype == torch.float32
    assert out.is_contiguous()
    assert torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1])  # one w per crop, each crop its own


def test_onnxruntime_matches_eager_arcface(
    arc_model: nn.Module, arc_onnx: Path, arc_feeds: dict[str, torch.Tensor]
) -> None:
    with EagerRunner(arc_model, ARC_IO) as eager, OnnxRuntimeRunner(arc_onnx, ARC_IO) as ort:
        for batch in (1, 3, 8):
            feeds = _head(arc_feeds, batch)
            got, want = ort.infer(feeds)["embedding"], eager.infer(feeds)["embedding"]
            print(f"ArcFace batch {batch}: ONNX Runtime vs eager fp32 relative error {relative_error(got, want):.2e}")
            assert_fp32_parity(got, want)  # scale-free: raw embeddings reach |y| ≈ 48 on the released weights


def test_eager_fp16_on_cpu(
    fd_model: nn.Module, fd_feeds: dict[str, torch.Tensor], fd_reference: dict[int, torch.Tensor]
) -> None:
    runner = EagerRunner(fd_model, FD_IO, precision="fp16", channels_last=True)
    try:
        got = runner.infer(_head(fd_feeds, 1))["swapped"]
    except (RuntimeError, NotImplementedError) as e:  # older CPU builds lack half convolutions
        pytest.skip(f"this torch cannot run fp16 on the CPU: {e}")
    finally:
        runner.close()
    assert got.dtype == torch.float32
    assert got.is_contiguous()
    error = (got - fd_reference[1]).abs()
    print(f"FaceDancer fp16 vs fp32 on the CPU: max {error.max():.2e}, mean {error.mean():.2e}")
    assert error.max() < 2e-2
    assert error.mean() < 2e-3
    # the runner converted a copy: the caller's model is still fp32, contiguous
    assert next(fd_model.parameters()).dtype == torch.float32
    assert fd_model.stem.weight.is_contiguous()


# --- feed checks and lifecycle -----------------------------------------------------------------------------------


def _bad_feeds() -> list[tuple[dict[str, torch.Tensor], str]]:
    t, w = torch.zeros(2, 3, 256, 256), torch.zeros(2, 256)
    return [
        ({"crops": t, "w": w}, "expected inputs"),
        ({"target": t}, "expected inputs"),
        ({"target": t, "w": w, "extra": w}, "expected inputs"),
        ({"target": torch.zeros(2, 3, 128, 128), "w": w}, r"target: expected \(N, 3, 256, 256\)"),
        ({"target": t, "w": torch.zeros(2, 512)}, r"w: expected \(N, 256\)"),
        ({"target": t.double(), "w": w}, "target: expected float32"),
        ({"target": t.half(), "w": w}, "target: expected float32"),
        ({"target": t[0], "w": w}, "target: expected float32 of rank 4"),
        ({"target": t, "w": w[:1]}, "w: batch 1, but target has 2"),
        ({"target": torch.zeros(9, 3, 256, 256), "w": torch.zeros(9, 256)}, r"batch must be 1..8, got 9"),
    ]


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
@pytest.mark.parametrize(("feeds", "message"), _bad_feeds(), ids=lambda x: "" if isinstance(x, dict) else x[:24])
def test_feeds_that_do_not_fit_raise_value_error(
    fd_model: nn.Module, fd_onnx: Path, backend: str, feeds: dict[str, torch.Tensor], message: str
) -> None:
    runner = EagerRunner(fd_model, FD_IO) if backend == "eager" else OnnxRuntimeRunner(fd_onnx, FD_IO)
    with pytest.raises(ValueError, match=message):
        runner.infer(feeds)
    assert not runner.active  # checked before anything was loaded
    runner.close()


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_lifecycle(arc_model: nn.Module, arc_onnx: Path, arc_feeds: dict[str, torch.Tensor], backend: str) -> None:
    runner = EagerRunner(arc_model, ARC_IO) if backend == "eager" else OnnxRuntimeRunner(arc_onnx, ARC_IO)
    assert isinstance(runner, Runner)
    assert (runner.backend, runner.precision, runner.device) == (backend, "fp32", torch.device("cpu"))
    with runner:
        assert runner.active
        runner.activate()  # idempotent
        assert runner.infer(_head(arc_feeds, 2))["embedding"].shape == (2, 512)
    assert runner.closed
    with pytest.raises(RuntimeError, match="closed"):
        runner.infer(_head(arc_feeds, 1))
    with pytest.raises(RuntimeError, match="closed"):
        runner.activate()
    runner.close()  # idempotent


def test_onnxruntime_rejects_a_graph_for_another_network(arc_onnx: Path) -> None:
    runner = OnnxRuntimeRunner(arc_onnx, FD_IO)
    with pytest.raises(CheckpointFormatError, match=r"inputs \['face'\], expected \['target', 'w'\]"):
        runner.activate()


def test_onnxruntime_cannot_load_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "damaged.onnx"
    path.write_bytes(b"not a graph")
    with pytest.raises(CheckpointFormatError, match="ONNX Runtime cannot load it"):
        OnnxRuntimeRunner(path, ARC_IO).activate()


# --- choosing a backend -----------------------------------------------------------------------------------------


def test_backends_available_on_the_cpu() -> None:
    reasons = select.available("cpu")
    assert tuple(reasons) == select.BACKENDS == ("tensorrt", "cuda-graphs", "onnxruntime", "eager")
    assert reasons["eager"] is None
    assert reasons["onnxruntime"] is None
    assert reasons["tensorrt"] == "TensorRT needs torch-tensorrt and an NVIDIA GPU"
    assert reasons["cuda-graphs"] == "CUDA graphs need a CUDA device"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_no_backend_runs_on_a_missing_cuda_device() -> None:
    reasons = select.available("cuda")
    assert all(reasons.values())
    assert "torch.cuda.is_available() is False" in str(reasons["eager"])


@pytest.mark.parametrize(
    ("backend", "precision", "message"),
    [
        ("tensorrt", None, "backend tensorrt cannot run on cpu: TensorRT needs torch-tensorrt"),
        ("cuda-graphs", None, "backend cuda-graphs cannot run on cpu: CUDA graphs need a CUDA device"),
        ("onnxruntime", "fp16", "runs the fp32 ONNX export only"),
        ("tvm", None, "unknown backend 'tvm'; choose one of: auto, tensorrt, cuda-graphs, onnxruntime, eager"),
    ],
)
def test_create_runner_says_why_not(
    arc_model: nn.Module, cache_dir: Path, backend: str, precision: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        select.create_runner(backend, arc_model, ARC_IO, "cpu", precision=precision, cache_dir=cache_dir)  # type: ignore[arg-type]


def test_create_runner_defaults_on_the_cpu(arc_model: nn.Module, cache_dir: Path) -> None:
    eager = select.create_runner("eager", arc_model, ARC_IO, "cpu")
    assert isinstance(eager, EagerRunner)
    assert eager.precision == "fp32"
    assert not eager.active
    ort = select.create_runner("onnxruntime", arc_model, ARC_IO, "cpu", cache_dir=cache_dir)
    assert isinstance(ort, OnnxRuntimeRunner)
    assert ort.path == cached_onnx(arc_model, ARC_IO, cache_dir, "random")  # the cached export, reused


def test_choose_auto_on_the_cpu(arc_model: nn.Module, cache_dir: Path) -> None:
    runner, message = select.choose("auto", arc_model, ARC_IO, "cpu", cache_dir=cache_dir)
    print(message)
    try:
        assert runner.backend in ("eager", "onnxruntime")
        assert runner.precision == "fp32"
        other = "eager" if runner.backend == "onnxruntime" else "onnxruntime"
        assert message.startswith(f"backend auto: {runner.backend} fp32 (")
        assert f" over {other} fp32 (" in message
        assert "skipped tensorrt (TensorRT needs torch-tensorrt" in message
        assert "cuda-graphs (CUDA graphs need a CUDA device)" in message
        assert runner.infer({"face": torch.rand(1, 3, 112, 112)})["embedding"].shape == (1, 512)
    finally:
        runner.close()


def test_choose_auto_skips_a_backend_that_fails(
    arc_model: nn.Module, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: EagerRunner) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(EagerRunner, "_activate", broken)
    runner, message = select.choose("auto", arc_model, ARC_IO, "cpu", cache_dir=cache_dir)
    runner.close()
    assert runner.backend == "onnxruntime"
    assert "eager (failed: out of memory)" in message


def test_choose_auto_with_nothing_usable(arc_model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(select, "available", lambda device: dict.fromkeys(select.BACKENDS, "not here"))
    with pytest.raises(ConfigError, match="no backend can run here: tensorrt \\(not here\\)"):
        select.choose("auto", arc_model, ARC_IO, "cpu")


class _FakeCuda:
    """torch.cuda's stream API as far as the timing uses it, recording which stream is current (no CUDA here)."""

    DEFAULT = "default stream"

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.current: object = self.DEFAULT
        self.made: list[object] = []
        fake = self

        class Stream:
            def __init__(self, device: object = None) -> None:
                fake.made.append(self)

            def synchronize(self) -> None:
                pass

        @contextlib.contextmanager
        def stream(s: object) -> Iterator[None]:
            before, fake.current = fake.current, s
            try:
                yield
            finally:
                fake.current = before

        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "stream", stream)
        monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)


class _StreamRecorder:
    """A CUDA runner as the timing sees it: records the stream current at each call."""

    backend, precision = "tensorrt", "fp16"

    def __init__(self, cuda: _FakeCuda) -> None:
        self.device = torch.device("cuda", 0)
        self.cuda = cuda
        self.streams: list[object] = []

    def infer(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.streams.append(self.cuda.current)
        return {}


def test_auto_times_every_backend_on_a_private_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the legacy default stream TensorRT synchronises the whole device on each call: every warm-up and timed
    call runs on a stream made for the timing, and the caller's stream is current again afterwards."""
    cuda = _FakeCuda(monkeypatch)
    runner = _StreamRecorder(cuda)
    select._time_ms(runner, {}, warmup=2, repeats=3)  # type: ignore[arg-type]
    assert len(runner.streams) == 5
    assert len(cuda.made) == 1
    assert runner.streams == [cuda.made[0]] * 5
    assert cuda.current == _FakeCuda.DEFAULT


def test_private_stream_on_the_cpu_is_no_stream() -> None:
    with private_stream(torch.device("cpu")) as stream:
        assert stream is None


def test_choose_a_named_backend(arc_model: nn.Module) -> None:
    runner, message = select.choose("eager", arc_model, ARC_IO, "cpu")
    assert runner.active
    assert message == "backend eager (fp32)"
    runner.close()


# --- on a GPU ---------------------------------------------------------------------------------------------------


def _assert_close_to_cpu(
    runner: Runner, io: NetworkIO, feeds: dict[str, torch.Tensor], reference: torch.Tensor, label: str
) -> None:
    device_feeds = {k: v.cuda() for k, v in feeds.items()}
    got = runner.infer(device_feeds)[io.output_names[0]]
    assert got.device.type == "cuda"
    assert got.dtype == torch.float32
    error = float((got.cpu() - reference).abs().max())
    print(f"{label}: max abs error {error:.2e} against CPU eager fp32")
    assert error <= TOLERANCE


@pytest.mark.gpu
def test_eager_fp32_on_cuda_matches_the_cpu(
    fd_model: nn.Module, fd_feeds: dict[str, torch.Tensor], fd_reference: dict[int, torch.Tensor]
) -> None:
    with EagerRunner(fd_model, FD_IO, "cuda") as runner:
        _assert_close_to_cpu(runner, FD_IO, fd_feeds, fd_reference[8], "FaceDancer eager fp32 on CUDA, batch 8")
    assert next(fd_model.parameters()).device.type == "cpu"  # the runner moved a copy


@pytest.mark.gpu
def test_onnxruntime_on_cuda_matches_the_cpu(
    fd_onnx: Path, fd_feeds: dict[str, torch.Tensor], fd_reference: dict[int, torch.Tensor]
) -> None:
    with OnnxRuntimeRunner(fd_onnx, FD_IO, "cuda") as runner:
        # the CUDA provider binds torch's memory; without it, the CPU provider with one copy each way
        assert runner.io_binding == cuda_provider_present()
        _assert_close_to_cpu(runner, FD_IO, fd_feeds, fd_reference[8], f"FaceDancer ORT {runner.providers[0]}, batch 8")
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):  # a caller on another stream than the session's: ordered on the device
            got = runner.infer({k: v[:1].cuda() for k, v in fd_feeds.items()})["swapped"]
        side.synchronize()
        assert float((got.cpu() - fd_reference[1]).abs().max()) <= TOLERANCE


@pytest.mark.gpu
def test_choose_auto_on_cuda(arc_model: nn.Module, cache_dir: Path) -> None:
    runner, message = select.choose("auto", arc_model, ARC_IO, "cuda", cache_dir=cache_dir)
    print(message)
    try:
        assert message.startswith(f"backend auto: {runner.backend} {runner.precision} (")
        out = runner.infer({"face": torch.rand(2, 3, 112, 112, device="cuda")})["embedding"]
        assert out.shape == (2, 512)
        assert out.dtype == torch.float32
        assert out.device.type == "cuda"
    finally:
        runner.close()


def test_fp32_sections_of_several_threads_share_the_flag_and_restore_it() -> None:
    """Sections overlap across threads (sessions' eager fp32 runners, MTCNN, an fp32 capture): each sees IEEE
    convolutions, none waits for another, and the flag is as it was once the last one closes."""
    import threading

    from engines.runners.eager import _set_conv_precision, ieee_fp32_convolutions

    def current() -> object:
        before = _set_conv_precision("ieee")
        _set_conv_precision(before)
        return before

    original = current()
    first_in = threading.Event()
    second_done = threading.Event()
    seen: list[object] = []

    def long_section() -> None:
        with ieee_fp32_convolutions():
            first_in.set()
            assert second_done.wait(5)  # the other thread's section opened and closed meanwhile: no waiting
            seen.append(current())

    t = threading.Thread(target=long_section)
    t.start()
    assert first_in.wait(5)
    with ieee_fp32_convolutions():
        seen.append(current())
    seen.append(current())  # the long section is still open: still IEEE
    second_done.set()
    t.join(5)
    assert seen == [seen[0]] * 3
    assert seen[0] in ("ieee", False)  # torch >= 2.9's precision API, or the legacy allow_tf32
    assert current() == original


def test_every_package_a_cpu_backend_needs_is_a_runtime_dependency() -> None:
    """After the quick start (runtime dependencies only) `--backend auto` must be able to offer every CPU backend."""
    import re
    from importlib.metadata import requires

    declared = [r for r in requires("dancecam") or [] if "extra ==" not in r]  # the installed package's metadata
    runtime = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower() for r in declared}
    for backend, packages in select.BACKEND_PACKAGES.items():
        for package in packages:
            assert package in runtime, f"backend {backend} needs {package}, which is not a runtime dependency"


def test_auto_names_why_each_backend_was_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(select, "_has_module", lambda name: name != "onnx")
    reasons = select.available("cpu")
    assert reasons["onnxruntime"] == "ONNX Runtime needs onnx (pip install onnx)"
    assert reasons["eager"] is None
