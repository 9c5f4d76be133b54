"""CUDA-graph runner: bucket choice, padding, precision and fresh outputs on its CPU test path; capture, replay on
the caller's stream, two runners on two streams and no host synchronisation on a GPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from engines.arcface import ArcFace
from engines.facedancer import FaceDancer, FaceDancerConfig, facedancer
from engines.runners.base import IOSpec, NetworkIO, Runner, arcface_io, facedancer_io
from engines.runners.cuda_graphs import CudaGraphRunner, choose_bucket
from engines.runners.eager import ieee_fp32_convolutions

SMALL = FaceDancerConfig(widths=(4, 8, 8, 16, 16, 16, 16), mapping_width=16)

# a toy network with a 4-D and a 2-D input and output, to see exactly what the runner feeds the model
PROBE_IO = NetworkIO(
    "facedancer",
    (IOSpec("target", (-1, 3, 4, 4)), IOSpec("w", (-1, 5))),
    (IOSpec("swapped", (-1, 3, 4, 4)), IOSpec("code", (-1, 5))),
)


class Probe(nn.Module):
    """Per-sample outputs; keeps a copy of every call's inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(2.0))
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, target: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append((target.clone(memory_format=torch.preserve_format), w.clone()))
        return target * self.gain + w.mean(1)[:, None, None, None], w * self.gain


def _probe_feeds(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"target": torch.rand(batch, 3, 4, 4, generator=g), "w": torch.rand(batch, 5, generator=g)}


def _probe_expected(feeds: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return 2 * feeds["target"] + feeds["w"].mean(1)[:, None, None, None], 2 * feeds["w"]


def _runner_model(runner: CudaGraphRunner) -> Probe:
    model = runner._model
    assert isinstance(model, Probe)
    return model


# --- CPU test path -----------------------------------------------------------------------------------------


def test_choose_bucket_takes_the_smallest_that_fits() -> None:
    buckets = (1, 2, 4, 8)
    assert [choose_bucket(buckets, n) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert choose_bucket((1, 2, 3), 3) == 3
    with pytest.raises(ValueError, match="larger than the largest"):
        choose_bucket(buckets, 9)


@pytest.mark.parametrize("buckets", [(), (0, 2), (1, 16)])
def test_bad_buckets_are_refused(buckets: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="buckets"):
        CudaGraphRunner(Probe(), PROBE_IO, "cpu", buckets=buckets)


def test_is_a_runner_and_precision_is_checked() -> None:
    runner = CudaGraphRunner(Probe(), PROBE_IO, "cpu", buckets=(1, 4), precision="fp32")
    assert isinstance(runner, Runner)
    assert runner.backend == "cuda-graphs"
    assert runner.buckets == (1, 4)
    with pytest.raises(ValueError, match="precision"):
        CudaGraphRunner(Probe(), PROBE_IO, "cpu", precision="int8")  # type: ignore[arg-type]


def test_pads_to_the_bucket_with_the_last_row_and_returns_the_true_batch() -> None:
    with CudaGraphRunner(Probe(), PROBE_IO, "cpu", precision="fp32", channels_last=False) as runner:
        feeds = _probe_feeds(3)
        out = runner.infer(feeds)
        target, w = _runner_model(runner).seen[-1]
    assert target.shape == (4, 3, 4, 4)
    assert w.shape == (4, 5)
    torch.testing.assert_close(target[:3], feeds["target"], rtol=0, atol=0)
    torch.testing.assert_close(target[3], feeds["target"][2], rtol=0, atol=0)  # the last real row, repeated
    torch.testing.assert_close(w[3], feeds["w"][2], rtol=0, atol=0)
    swapped, code = _probe_expected(feeds)
    assert set(out) == {"swapped", "code"}
    assert out["swapped"].shape == (3, 3, 4, 4)
    assert out["code"].shape == (3, 5)
    torch.testing.assert_close(out["swapped"], swapped, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["code"], code, rtol=0, atol=1e-6)


def test_first_call_under_inference_mode_leaves_the_runner_usable_outside_it() -> None:
    """Activation happens inside the first call and must not take on that caller's inference mode: its static
    buffers would be inference tensors that no later call outside the mode could write."""
    runner = CudaGraphRunner(Probe(), PROBE_IO, "cpu", buckets=(4,), precision="fp32")
    with torch.inference_mode():
        runner.infer(_probe_feeds(2))
    out = runner.infer(_probe_feeds(3, seed=1))
    torch.testing.assert_close(out["code"], _probe_expected(_probe_feeds(3, seed=1))[1], rtol=0, atol=1e-6)
    runner.close()


def test_failed_activation_leaves_nothing_behind_and_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A capture that fails (out of memory, say) costs seconds: reported again on every later call, never retried
    per frame, and nothing half-built stays on the device."""
    runner = CudaGraphRunner(Probe(), PROBE_IO, "cpu", buckets=(4,), precision="fp32")
    attempts = []

    def failing(size: int) -> tuple[torch.Tensor, ...]:
        attempts.append(size)
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(runner, "_static_inputs", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        runner.infer(_probe_feeds(1))
    assert not runner.active
    assert runner._model is None
    assert runner._slots == {}
    with pytest.raises(RuntimeError, match="could not be activated: RuntimeError: CUDA out of memory"):
        runner.infer(_probe_feeds(1))
    assert attempts == [4]  # tried once
    runner.close()


def test_networks_without_a_batch_axis_are_refused() -> None:
    fixed = NetworkIO("scrfd", (IOSpec("input.1", (1, 3, 64, 64)),), (IOSpec("448", (128, 1)),), max_batch=1)
    with pytest.raises(ValueError, match="batch axis"):
        CudaGraphRunner(Probe(), fixed, "cpu", buckets=(1,))


def test_every_batch_uses_its_bucket() -> None:
    with CudaGraphRunner(Probe(), PROBE_IO, "cpu", buckets=(1, 2, 4, 8), precision="fp32") as runner:
        sizes = []
        for n in range(1, 9):
            feeds = _probe_feeds(n, seed=n)
            out = runner.infer(feeds)
            sizes.append(_runner_model(runner).seen[-1][0].shape[0])
            torch.testing.assert_close(out["swapped"], _probe_expected(feeds)[0], rtol=0, atol=1e-6)
    assert sizes == [1, 2, 4, 4, 8, 8, 8, 8]


def test_fp16_channels_last_inputs_and_float32_outputs() -> None:
    source = Probe()
    with CudaGraphRunner(source, PROBE_IO, "cpu", buckets=(2,), precision="fp16", channels_last=True) as runner:
        feeds = _probe_feeds(2)
        out = runner.infer(feeds)
        target, w = _runner_model(runner).seen[-1]
        assert _runner_model(runner).gain.dtype == torch.float16
    assert target.dtype == w.dtype == torch.float16
    assert target.is_contiguous(memory_format=torch.channels_last)
    assert not target.is_contiguous()
    assert w.is_contiguous()
    for name, expected in zip(("swapped", "code"), _probe_expected(feeds), strict=True):
        assert out[name].dtype == torch.float32
        assert out[name].is_contiguous()
        torch.testing.assert_close(out[name], expected, rtol=2e-3, atol=2e-3)
    assert source.gain.dtype == torch.float32
    assert not source.seen


class Identity(nn.Module):
    def forward(self, target: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return target, w  # the static inputs themselves: the worst case for aliasing


def test_outputs_are_fresh_tensors_not_views_of_static_buffers() -> None:
    with CudaGraphRunner(Identity(), PROBE_IO, "cpu", buckets=(4,), precision="fp32", channels_last=False) as runner:
        first_feeds = _probe_feeds(4, seed=1)
        first = runner.infer(first_feeds)
        statics = {t.untyped_storage().data_ptr() for slot in runner._slots.values() for t in slot.inputs}
        assert all(t.untyped_storage().data_ptr() not in statics for t in first.values())
        runner.infer(_probe_feeds(4, seed=2))  # overwrites the static buffers
    torch.testing.assert_close(first["swapped"], first_feeds["target"], rtol=0, atol=0)
    torch.testing.assert_close(first["code"], first_feeds["w"], rtol=0, atol=0)


def test_batch_beyond_the_buckets_and_bad_feeds_raise() -> None:
    with CudaGraphRunner(Probe(), PROBE_IO, "cpu", buckets=(1, 2, 4), precision="fp32") as runner:
        with pytest.raises(ValueError, match="largest CUDA-graph bucket 4"):
            runner.infer(_probe_feeds(5))
        with pytest.raises(ValueError, match=r"batch must be 1\.\.8"):
            runner.infer(_probe_feeds(9))  # io.check_feeds
        with pytest.raises(ValueError, match="on meta"):
            runner.infer({"target": torch.empty(1, 3, 4, 4, device="meta"), "w": torch.empty(1, 5, device="meta")})
    with pytest.raises(RuntimeError, match="closed"):
        runner.infer(_probe_feeds(1))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_facedancer_true_batches_match_eager(precision: str) -> None:
    torch.manual_seed(0)
    model = FaceDancer(SMALL).eval()
    io = facedancer_io(mapping_width=16, image_size=64, max_batch=4)
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    w = model.map_identity(torch.randn(4, 512)).detach()
    with torch.no_grad():
        ref = model(x, w)
    tol = {"fp32": 1e-5, "fp16": 0.02 * ref.abs().max().item()}[precision]
    with CudaGraphRunner(model, io, "cpu", buckets=(1, 2, 4), precision=precision) as runner:  # type: ignore[arg-type]
        for n in (1, 3, 4):
            out = runner.infer({"target": x[:n], "w": w[:n]})["swapped"]
            assert out.shape == (n, 3, 64, 64)
            assert out.dtype == torch.float32
            torch.testing.assert_close(out, ref[:n], rtol=0, atol=tol)


# --- on a GPU ----------------------------------------------------------------------------------------------


def _fp32_reference(model: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """A true float32 result on CUDA: cuDNN's TF32 convolutions would be a lower-precision reference."""
    with torch.no_grad(), ieee_fp32_convolutions():
        return model(*args)


@pytest.fixture(scope="module")
def cuda_facedancer() -> Iterator[tuple[nn.Module, CudaGraphRunner]]:
    torch.manual_seed(0)
    model = facedancer().eval().cuda()
    runner = CudaGraphRunner(model, facedancer_io(), "cuda")
    runner.activate()
    yield model, runner
    runner.close()


def _cuda_feeds(model: nn.Module, batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    z = torch.randn(batch, 512, device="cuda", generator=g)
    with torch.no_grad():
        w = model.map_identity(z)  # type: ignore[operator]
    return {"target": torch.rand(batch, 3, 256, 256, device="cuda", generator=g) * 2 - 1, "w": w}


@pytest.mark.gpu
def test_cuda_graph_fp16_matches_eager_fp32_for_every_batch(cuda_facedancer: tuple[nn.Module, CudaGraphRunner]) -> None:
    model, runner = cuda_facedancer
    assert sorted(runner._slots) == [1, 2, 4, 8]
    assert all(s.graph is not None for s in runner._slots.values())
    for n in range(1, 9):
        feeds = _cuda_feeds(model, n, seed=n)
        ref = _fp32_reference(model, feeds["target"], feeds["w"])
        out = runner.infer(feeds)["swapped"]
        assert out.shape == ref.shape
        assert out.dtype == torch.float32
        assert out.is_contiguous()
        err = (out - ref).abs()
        assert torch.isfinite(out).all()
        assert err.mean() < 3e-3 * ref.abs().mean(), f"batch {n}: mean abs error {err.mean():.2e}"
        assert err.max() < 3e-2 * ref.abs().max(), f"batch {n}: max abs error {err.max():.2e}"


@pytest.mark.gpu
def test_replay_runs_on_the_callers_stream(cuda_facedancer: tuple[nn.Module, CudaGraphRunner]) -> None:
    model, runner = cuda_facedancer
    a, b = _cuda_feeds(model, 3, seed=10), _cuda_feeds(model, 3, seed=11)
    expected_b = runner.infer(b)["swapped"]
    runner.infer(a)  # the static buffers now hold a
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # a long kernel first: a replay on any other stream would overtake the copy of b and compute on a
        torch.cuda._sleep(50_000_000)
        got_b = runner.infer(b)["swapped"]
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(got_b, expected_b, rtol=0, atol=0)


@pytest.mark.gpu
def test_two_runners_on_two_streams(cuda_facedancer: tuple[nn.Module, CudaGraphRunner]) -> None:
    model, first = cuda_facedancer
    second = CudaGraphRunner(model, facedancer_io(), "cuda", buckets=(1, 2))
    try:
        second.activate()
        feeds = [_cuda_feeds(model, 2, seed=20), _cuda_feeds(model, 1, seed=21)]
        expected = [first.infer(feeds[0])["swapped"], second.infer(feeds[1])["swapped"]]
        streams = [torch.cuda.Stream(), torch.cuda.Stream()]
        results: list[list[torch.Tensor]] = [[], []]
        for s in streams:
            s.wait_stream(torch.cuda.current_stream())
        for _ in range(5):
            for i, (runner, s) in enumerate(zip((first, second), streams, strict=True)):
                with torch.cuda.stream(s):
                    results[i].append(runner.infer(feeds[i])["swapped"])
        for s in streams:
            torch.cuda.current_stream().wait_stream(s)
        for i in range(2):
            for got in results[i]:
                torch.testing.assert_close(got, expected[i], rtol=0, atol=0)
    finally:
        second.close()


@pytest.mark.gpu
def test_infer_never_synchronises(cuda_facedancer: tuple[nn.Module, CudaGraphRunner]) -> None:
    model, runner = cuda_facedancer
    feeds = [_cuda_feeds(model, n, seed=30 + n) for n in (1, 3, 8)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outs = [runner.infer(f)["swapped"] for f in feeds]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert [o.shape[0] for o in outs] == [1, 3, 8]


@pytest.mark.gpu
def test_cuda_outputs_survive_the_next_replay(cuda_facedancer: tuple[nn.Module, CudaGraphRunner]) -> None:
    model, runner = cuda_facedancer
    a, b = _cuda_feeds(model, 4, seed=40), _cuda_feeds(model, 4, seed=41)
    first = runner.infer(a)["swapped"]
    kept = first.clone()
    statics = {t.untyped_storage().data_ptr() for t in runner._slots[4].outputs}
    assert first.untyped_storage().data_ptr() not in statics
    runner.infer(b)
    torch.testing.assert_close(first, kept, rtol=0, atol=0)


@pytest.mark.gpu
def test_arcface_cuda_graph_fp16_embeddings() -> None:
    torch.manual_seed(5)
    model = ArcFace().eval().cuda()
    faces = torch.rand(3, 3, 112, 112, device="cuda")
    ref = _fp32_reference(model, faces)
    with CudaGraphRunner(model, arcface_io(), "cuda", buckets=(1, 4)) as runner:
        out = runner.infer({"face": faces})["embedding"]  # type: ignore[union-attr]
    assert out.shape == (3, 512)
    assert out.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(out, ref).min() > 0.999
