"""The TensorRT backend without TensorRT: everything around the engine, and the calls into torch_tensorrt.

TensorRT cannot be installed here, so `torch_tensorrt` is replaced by a strict recording double: its functions take
only documented parameters that torch-tensorrt 2.11, 2.12 and 2.13 all accept, so an unknown or removed keyword is a
TypeError here (there it would fail, or worse, vanish into 2.13's `**kwargs`), and what it "compiles" is the
exported program itself, run by torch on the CPU.
"""

from __future__ import annotations

import copy
import re
import sys
import uuid
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch

from engines.errors import ConfigError
from engines.facedancer import FaceDancer, FaceDancerConfig, facedancer
from engines.runners import tensorrt as trt
from engines.runners.base import arcface_io, facedancer_io

aten = torch.ops.aten
REDUCTIONS = (aten.mean.dim, aten.sum.dim_IntList, aten.linalg_vector_norm.default)
CONVS = (aten.conv2d.default, aten.convolution.default)
LINEARS = (aten.linear.default, aten.addmm.default)
ENV = {
    "torch": "2.13.0+cu130",
    "torch_tensorrt": "2.13.0",
    "tensorrt": "10.14.1.48",
    "gpu": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
}


# --- the test double ----------------------------------------------------------------------------------------


class FakeInput:
    """torch_tensorrt.Input, dynamic form: keywords only, as documented (dynamic_shapes.html)."""

    def __init__(
        self, *, min_shape: tuple[int, ...], opt_shape: tuple[int, ...], max_shape: tuple[int, ...], dtype: torch.dtype
    ) -> None:
        assert isinstance(dtype, torch.dtype)
        self.min_shape, self.opt_shape, self.max_shape, self.dtype = min_shape, opt_shape, max_shape, dtype


class StandIn:
    """What compile (and load) return: the exported program run by torch, recording what it is fed."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        self.module = program.module()
        self.fed: list[list[tuple[torch.dtype, tuple[int, ...], bool]]] = []

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        self.fed.append([(t.dtype, tuple(t.shape), t.is_contiguous()) for t in args])
        return self.module(*args)


class FakeTorchTensorRT(ModuleType):
    def __init__(self, version: str = "2.13.0") -> None:
        super().__init__("torch_tensorrt")
        self.__spec__ = ModuleSpec("torch_tensorrt", None)  # torch._dynamo looks modules up by spec on import
        self.__version__ = version
        self.Input = FakeInput
        self.dynamo = SimpleNamespace(compile=self._compile)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.saved: dict[str, Any] = {}
        self.compiled: StandIn | None = None
        self.fail_save = False

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def _compile(
        self,
        exported_program: torch.export.ExportedProgram,
        inputs: Any = None,
        *,
        arg_inputs: Any = None,
        kwarg_inputs: Any = None,
        device: Any = None,
        min_block_size: int = 5,
        torch_executed_ops: Any = None,
        require_full_compilation: bool = False,
        optimization_level: int | None = None,
        timing_cache_path: str = "/tmp/torch_tensorrt_engine_cache/timing_cache.bin",
    ) -> StandIn:
        assert isinstance(exported_program, torch.export.ExportedProgram)
        self.calls.append(("compile", {k: v for k, v in locals().items() if k != "self"}))
        self.compiled = StandIn(exported_program)
        return self.compiled

    def save(
        self,
        module: Any,
        file_path: str = "",
        *,
        output_format: str = "exported_program",
        arg_inputs: Any = None,
        kwarg_inputs: Any = None,
        dynamic_shapes: Any = None,
        retrace: bool = True,
        extra_files: Any = None,
    ) -> None:
        assert output_format in ("exported_program", "torchscript", "aot_inductor", "executorch")
        self.calls.append(("save", {k: v for k, v in locals().items() if k != "self"}))
        if self.fail_save:
            Path(file_path).write_bytes(b"half a file")
            raise OSError(28, "No space left on device")
        token = uuid.uuid4().hex
        self.saved[token] = module
        Path(file_path).write_text(token)

    def load(self, file_path: str = "", extra_files: Any = None) -> Any:
        self.calls.append(("load", {"file_path": file_path}))
        program = self.saved[Path(file_path).read_text()]  # a foreign file fails, as a real load would
        return SimpleNamespace(module=lambda: program)


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeTorchTensorRT:
    """The double as `torch_tensorrt`, a `tensorrt` module, and an H100 as far as `environment` can tell. (The
    runner tests skip the CUDA check: faking `torch.cuda.is_available` would send torch.export to CUDA.)"""
    fake = FakeTorchTensorRT()
    tensorrt = ModuleType("tensorrt")
    tensorrt.__spec__ = ModuleSpec("tensorrt", None)
    tensorrt.__version__ = ENV["tensorrt"]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: ENV["gpu"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    return fake


@pytest.fixture
def cuda_check_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt, "unavailable_reason", lambda: None)


def tiny() -> tuple[torch.nn.Module, Any]:
    """A FaceDancer small enough to run in fp16 on the CPU (config C takes minutes there)."""
    torch.manual_seed(0)
    model = FaceDancer(FaceDancerConfig(widths=(8,) * 7, mapping_width=16, mapping_depth=2)).eval()
    return model, facedancer_io(mapping_width=16, image_size=64)


def feeds(io: Any, batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    return {s.name: torch.rand((batch, *s.shape[1:]), generator=g) * 2 - 1 for s in io.inputs}


def fp16_reference(model: torch.nn.Module, f: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(model).half()(f["target"].half(), f["w"].half()).float()


# --- the exported program -----------------------------------------------------------------------------------


def test_exported_program_matches_eager_at_batch_1_and_3() -> None:
    torch.manual_seed(0)
    model, io = facedancer("config_c").eval(), facedancer_io()
    ep = trt.export_program(model, trt.example_inputs(io, torch.float32, torch.device("cpu")), trt.dynamic_shapes(io))
    assert [(r.lower, r.upper) for r in ep.range_constraints.values()] == [(1, io.max_batch)]
    program = ep.module()
    with torch.no_grad():
        for batch in (1, 3):
            f = feeds(io, batch)
            got, want = program(f["target"], f["w"]), model(f["target"], f["w"])
            assert got.shape == (batch, 3, 256, 256)
            assert (got - want).abs().max().item() <= 1e-5
        with pytest.raises(Exception, match=r"<= 8"):  # "Guard failed: target.size()[0] <= 8" in torch 2.13
            program(*feeds(io, io.max_batch + 1).values())


def test_dynamic_shapes_share_one_batch_dim_and_profile() -> None:
    io = facedancer_io()
    shapes = trt.dynamic_shapes(io)
    assert [set(s) for s in shapes] == [{0}, {0}]
    assert shapes[0][0] is shapes[1][0]  # one dim: target and w must agree on the batch
    assert (shapes[0][0].min, shapes[0][0].max) == (1, io.max_batch)
    assert trt.batch_profile(io) == (1, 1, 8)
    assert trt.batch_profile(facedancer_io(max_batch=4)) == (1, 1, 4)
    example = trt.example_inputs(io, torch.float16, torch.device("cpu"))
    assert [(t.shape, t.dtype) for t in example] == [((2, 3, 256, 256), torch.float16), ((2, 256), torch.float16)]


def graph_dtypes(ep: Any) -> list[tuple[Any, list[torch.dtype], torch.dtype | None, dict[str, Any]]]:
    out = []
    for n in ep.graph.nodes:
        if n.op == "call_function":
            args = [a.meta["val"] for a in n.args if isinstance(a, torch.fx.Node)]
            ins = [v.dtype for v in args if isinstance(v, torch.Tensor)]
            out.append((n.target, ins, getattr(n.meta.get("val"), "dtype", None), dict(n.kwargs)))
    return out


def test_fp16_program_keeps_normalisation_statistics_in_fp32() -> None:
    """Config C as the runner exports it: convolutions and linears in fp16, every reduction (the InstanceNorm
    statistics) fed float32 by an explicit cast and carrying no `dtype=` that TensorRT would drop."""
    torch.manual_seed(0)
    io = facedancer_io()
    model = facedancer("config_c").eval().half()
    example = trt.example_inputs(io, torch.float16, torch.device("cpu"))
    ep = trt.explicit_reduction_casts(trt.export_program(model, example, trt.dynamic_shapes(io)))
    nodes = graph_dtypes(ep)
    weighted = [(ins, out) for t, ins, out, _ in nodes if t in (*CONVS, *LINEARS)]
    assert len(weighted) == 33 + 14  # every convolution, the mapping network and the AdaIN maps
    assert all(ins == [torch.float16] * 3 and out == torch.float16 for ins, out in weighted)
    reductions = [(ins, kw) for t, ins, _, kw in nodes if t in REDUCTIONS]
    assert len(reductions) >= 32  # mean and variance of 16 InstanceNorms
    assert all(ins == [torch.float32] and "dtype" not in kw for ins, kw in reductions)
    rsqrt = [ins for t, ins, _, _ in nodes if t == aten.rsqrt.default]
    assert rsqrt == [[torch.float32]] * 16


def test_explicit_reduction_casts_turn_dtype_arguments_into_casts() -> None:
    class Stats(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            v = x.reshape(x.shape[0], x.shape[1], -1)
            return (
                v.mean(2, keepdim=True, dtype=torch.float32),
                v.sum(2, dtype=torch.float32),
                torch.linalg.vector_norm(v, 2, 2, dtype=torch.float32),
                v.mean(2),  # no dtype: left alone
            )

    x = torch.randn(2, 4, 8, 8).half() * 30
    batch = torch.export.Dim("batch", min=1, max=8)
    ep = torch.export.export(Stats(), (x,), dynamic_shapes=({0: batch},), strict=False)
    before = graph_dtypes(ep)
    widened = [ins for t, ins, _, kw in before if t in REDUCTIONS and kw.get("dtype") == torch.float32]
    assert widened == [[torch.float16]] * 3
    after = trt.explicit_reduction_casts(ep)
    reductions = [(ins, out, kw) for t, ins, out, kw in graph_dtypes(after) if t in REDUCTIONS]
    assert [kw for _, _, kw in reductions] == [{}] * 4
    assert [ins for ins, _, _ in reductions].count([torch.float32]) == 3
    assert [out for _, out, _ in reductions] == [torch.float32] * 3 + [torch.float16]
    for got, want in zip(after.module()(x), ep.module()(x), strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-5, atol=1e-4)


# --- cache key and path -------------------------------------------------------------------------------------


def test_environment_reads_versions_and_gpu(fake_trt: FakeTorchTensorRT) -> None:
    env = trt.environment(torch.device("cuda", 0))
    assert env == {**ENV, "torch": torch.__version__}


def test_cache_key_is_stable_and_changes_with_every_ingredient(monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(ENV)
    monkeypatch.setattr(trt, "environment", lambda device: dict(env))
    cuda = torch.device("cuda", 0)
    base = {"weights_key": "ab" * 32, "io": facedancer_io(), "precision": "fp16", "device": cuda}
    key = trt.cache_key(**base)
    assert key == trt.cache_key(**base)
    assert re.fullmatch(r"[0-9a-f]{64}", key)

    variants = [
        {**base, "weights_key": "cd" * 32},
        {**base, "io": arcface_io()},
        {**base, "io": facedancer_io(mapping_width=512)},
        {**base, "io": facedancer_io(max_batch=4)},
        {**base, "precision": "fp32"},
    ]
    keys = {trt.cache_key(**v) for v in variants}
    for name, other in [
        ("torch", "2.14.0"),
        ("torch_tensorrt", "2.12.0"),
        ("tensorrt", "10.13.0"),
        ("gpu", "NVIDIA GeForce RTX 4090"),
        ("compute_capability", "8.9"),
    ]:
        env[name] = other
        keys.add(trt.cache_key(**base))
        env[name] = ENV[name]
    monkeypatch.setattr(trt, "OPT_BATCH", 4)
    keys.add(trt.cache_key(**base))
    monkeypatch.setattr(trt, "OPT_BATCH", 1)
    monkeypatch.setattr(trt, "FORMAT", "dancecam-tensorrt/2")
    keys.add(trt.cache_key(**base))
    assert key not in keys
    assert len(keys) == len(variants) + 5 + 2


def test_cache_path(tmp_path: Path) -> None:
    key = "0123456789abcdef" + "f" * 48
    assert trt.cache_path(tmp_path, "facedancer", key) == tmp_path / "tensorrt" / "facedancer-0123456789abcdef.pt2"


# --- availability -------------------------------------------------------------------------------------------


def _release(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _other_release(version: str) -> str:
    major, minor = _release(version).split(".")
    return f"{major}.{int(minor) + 1}.0"


def test_unavailable_here_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = trt.unavailable_reason()
    assert reason  # no TensorRT anywhere in this workplace
    if not torch.cuda.is_available():
        assert "GPU" in reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import fails
    reason = trt.unavailable_reason()
    # the fix names torch's own version, so that pip keeps torch and fetches the paired torch-tensorrt
    assert f'pip install "torch=={torch.__version__}" "torch-tensorrt=={_release(torch.__version__)}.*"' in (
        reason or ""
    )


def test_pairing_of_torch_and_torch_tensorrt() -> None:
    assert trt.pairing_problem("2.13.0+cu130", "2.13.0") is None
    assert trt.pairing_problem("2.13.1", "2.13.0+cu130") is None  # patch releases pair
    reason = trt.pairing_problem("2.13.0+cu130", "2.14.0") or ""
    assert "torch-tensorrt 2.14.0 is built for torch 2.14, but torch here is 2.13.0+cu130" in reason
    assert "torch-tensorrt==" in reason
    assert "older than 2.11" in (trt.pairing_problem("2.10.0", "2.10.0") or "")


def test_unavailable_reason_checks_the_pairing(fake_trt: FakeTorchTensorRT, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fake_trt.__version__ = _release(torch.__version__) + ".0"
    assert trt.unavailable_reason() is None
    fake_trt.__version__ = _other_release(torch.__version__)  # e.g. pip replaced torch-tensorrt, not torch
    reason = trt.unavailable_reason() or ""
    assert f"is built for torch {_release(fake_trt.__version__)}, but torch here is {torch.__version__}" in reason
    assert f'"torch-tensorrt=={_release(torch.__version__)}.*"' in reason


def test_a_mismatched_install_is_named_before_its_import_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch-tensorrt built for another torch may not even import: its installed version says why first."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # the import would fail
    other = _other_release(torch.__version__)
    monkeypatch.setattr(trt, "_installed_version", lambda dist: other if dist == "torch-tensorrt" else None)
    reason = trt.unavailable_reason() or ""
    assert f"torch-tensorrt {other} is built for torch" in reason
    assert "not usable" not in reason


def test_the_trt_extra_pins_the_torch_tensorrt_of_the_projects_torch() -> None:
    """`pip install '.[trt]'` must never replace torch: the extra admits only the torch-tensorrt release that
    pairs with the torch scripts/setup.sh installs (each torch-tensorrt 2.N requires torch 2.N)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[2]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["trt"]
    (pin,) = [Requirement(r) for r in extra if Requirement(r).name == "torch-tensorrt"]
    found = re.search(
        r'TORCH_VERSION="\$\{DANCECAM_TORCH_VERSION:-([0-9.]+)\}"', (root / "scripts/setup.sh").read_text()
    )
    assert found is not None
    major, minor = map(int, found.group(1).split(".")[:2])
    admitted = [f"{a}.{b}.{c}" for a in (2, 3) for b in range(20) for c in (0, 1, 5)]
    assert {v for v in admitted if pin.specifier.contains(v)} == {f"{major}.{minor}.{c}" for c in (0, 1, 5)}


def test_activate_without_tensorrt_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, io = tiny()
    runner = trt.TensorRTRunner(model, io, "cpu", cache_dir=tmp_path, weights_key="w")
    with pytest.raises(ConfigError, match="GPU"):
        runner.activate()
    with pytest.raises(ValueError, match="precision"):
        trt.TensorRTRunner(model, io, "cpu", cache_dir=tmp_path, weights_key="w", precision="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch"):
        trt.TensorRTRunner(model, facedancer_io(max_batch=1), "cpu", cache_dir=tmp_path, weights_key="w")


# --- the calls into torch_tensorrt --------------------------------------------------------------------------


@pytest.mark.usefixtures("cuda_check_passes")
def test_build_calls_the_documented_api(
    fake_trt: FakeTorchTensorRT, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, io = tiny()
    messages: list[str] = []
    runner = trt.TensorRTRunner(model, io, "cpu", cache_dir=tmp_path, weights_key="ab" * 32, progress=messages.append)
    runner.activate()
    assert fake_trt.names() == ["compile", "save"]

    compile_args = fake_trt.calls[0][1]
    ep = compile_args["exported_program"]
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
    assert [n.meta["val"].dtype for n in placeholders] == [torch.float16, torch.float16]
    assert all(isinstance(n.meta["val"].shape[0], torch.SymInt) for n in placeholders)
    assert all(kw.get("dtype") is None for t, _, _, kw in graph_dtypes(ep) if t in REDUCTIONS)
    assert (compile_args["inputs"], compile_args["kwarg_inputs"]) == (None, None)
    assert compile_args["device"] == torch.device("cpu")
    assert compile_args["timing_cache_path"] == str(trt.timing_cache_path(tmp_path, torch.device("cpu")))
    assert Path(compile_args["timing_cache_path"]).name.startswith("timing_cache-")
    shapes = [(i.min_shape, i.opt_shape, i.max_shape, i.dtype) for i in compile_args["arg_inputs"]]
    assert shapes == [
        ((1, 3, 64, 64), (1, 3, 64, 64), (8, 3, 64, 64), torch.float16),
        ((1, 16), (1, 16), (8, 16), torch.float16),
    ]

    save_args = fake_trt.calls[1][1]
    assert save_args["module"] is fake_trt.compiled  # what compile returned, as the docs' examples save it
    assert save_args["output_format"] == "exported_program"
    assert [(t.shape, t.dtype) for t in save_args["arg_inputs"]] == [
        ((2, 3, 64, 64), torch.float16),
        ((2, 16), torch.float16),
    ]
    dims = [s[0] for s in save_args["dynamic_shapes"]]
    assert dims[0] is dims[1]
    assert (len(dims), dims[0].min, dims[0].max) == (2, 1, 8)
    assert (save_args["retrace"], save_args["kwarg_inputs"]) == (True, None)

    # atomic write: saved beside the final path under another name, then renamed; nothing else left
    final = runner.path
    assert final == trt.cache_path(tmp_path, "facedancer", trt.cache_key("ab" * 32, io, "fp16", torch.device("cpu")))
    tmp = Path(save_args["file_path"])
    assert tmp.parent == final.parent
    assert tmp != final
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]
    assert runner.model is None  # the engine holds the weights now
    assert any("building the TensorRT engine" in m for m in messages)
    assert any("done in" in m for m in messages)

    # float32 in and out, the program fed float16 contiguous tensors, no host synchronisation
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("infer synchronised"))
    for batch in (1, 3):
        f = feeds(io, batch)
        out = runner.infer(f)
        assert list(out) == ["swapped"]
        assert (out["swapped"].dtype, out["swapped"].shape) == (torch.float32, (batch, 3, 64, 64))
        torch.testing.assert_close(out["swapped"], fp16_reference(model, f), rtol=0, atol=2e-3)
    assert fake_trt.compiled is not None
    assert fake_trt.compiled.fed[-1] == [
        (torch.float16, (3, 3, 64, 64), True),
        (torch.float16, (3, 16), True),
    ]


@pytest.mark.usefixtures("cuda_check_passes")
def test_restart_loads_the_cached_program(fake_trt: FakeTorchTensorRT, tmp_path: Path) -> None:
    model, io = tiny()
    first = trt.TensorRTRunner(model, io, "cpu", cache_dir=tmp_path, weights_key="k", progress=lambda m: None)
    first.activate()
    second = trt.TensorRTRunner(model, io, "cpu", cache_dir=tmp_path, weights_key="k", progress=lambda m: None)
    second.activate()
    assert fake_trt.names() == ["compile", "save", "load"]
    assert second.path == first.path
    f = feeds(io, 2)
    torch.testing.assert_close(second.infer(f)["swapped"], first.infer(f)["swapped"], rtol=0, atol=0)


@pytest.mark.usefixtures("cuda_check_passes")
def test_unreadable_cache_is_rebuilt(fake_trt: FakeTorchTensorRT, tmp_path: Path) -> None:
    model, io = tiny()
    messages: list[str] = []
    runner = trt.TensorRTRunner(model, io, "cpu", cache_dir=tmp_path, weights_key="k", progress=messages.append)
    path = trt.cache_path(tmp_path, "facedancer", trt.cache_key("k", io, "fp16", torch.device("cpu")))
    path.parent.mkdir(parents=True)
    path.write_text("not a program")
    runner.activate()
    assert fake_trt.names() == ["load", "compile", "save"]
    assert any("cannot load" in m for m in messages)
    assert path.read_text() in fake_trt.saved


@pytest.mark.usefixtures("cuda_check_passes")
def test_failed_save_keeps_the_engine_and_leaves_no_file(fake_trt: FakeTorchTensorRT, tmp_path: Path) -> None:
    model, io = tiny()
    fake_trt.fail_save = True
    messages: list[str] = []
    runner = trt.TensorRTRunner(model, io, "cpu", cache_dir=tmp_path, weights_key="k", progress=messages.append)
    runner.activate()
    assert any("cannot save" in m and "No space left" in m for m in messages)
    assert [p.name for p in (tmp_path / "tensorrt").iterdir()] == []
    f = feeds(io, 1)
    torch.testing.assert_close(runner.infer(f)["swapped"], fp16_reference(model, f), rtol=0, atol=2e-3)


@pytest.mark.gpu
def test_real_tensorrt_matches_eager(tmp_path: Path) -> None:
    """Where torch-tensorrt is installed: the real fp16 engine against eager fp32 on the CPU, batches 1, 3 and 8,
    and a restart that loads the saved program instead of building."""
    reason = trt.unavailable_reason()
    if reason:
        pytest.skip(reason)
    model, io = tiny()
    messages: list[str] = []
    with trt.TensorRTRunner(model, io, "cuda", cache_dir=tmp_path, weights_key="tiny", progress=messages.append) as r:
        for batch in (1, 3, 8):
            f = feeds(io, batch)
            with torch.no_grad():
                want = model(f["target"], f["w"])
            got = r.infer({k: v.cuda() for k, v in f.items()})["swapped"]
            assert (got.dtype, got.device.type) == (torch.float32, "cuda")
            error = (got.cpu() - want).abs()
            assert float(error.mean()) <= 2e-3
            assert float(error.max()) <= 3e-2
    assert any("building the TensorRT engine" in m for m in messages)
    messages.clear()
    with trt.TensorRTRunner(model, io, "cuda", cache_dir=tmp_path, weights_key="tiny", progress=messages.append) as r:
        assert any("loading the TensorRT" in m for m in messages)
        assert not any("building" in m for m in messages)


def test_the_double_is_strict(fake_trt: FakeTorchTensorRT) -> None:
    """The double refuses what the real API does not document, so the tests above can fail."""
    ep = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(2, 2),))
    with pytest.raises(TypeError):
        fake_trt.dynamo.compile(ep, arg_inputs=[], enabled_precisions={torch.float16})  # removed in 2.13
    with pytest.raises(TypeError):
        fake_trt.dynamo.compile(ep, arg_inputs=[], use_explicit_typing=True)  # removed in 2.13
    with pytest.raises(TypeError):
        fake_trt.save(ep, "x.ep", output_format="exported_program", inputs_spec=[])
    with pytest.raises(AssertionError):
        fake_trt.save(ep, "x.ep", output_format="ep")
    with pytest.raises(TypeError):
        FakeInput(shape=(1, 2), dtype=torch.float16)  # type: ignore[call-arg]
