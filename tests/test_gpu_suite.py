"""The GPU suite's plumbing, checked on the CPU: `--allow-cpu` with tiny settings writes the report, `--list-wheels`
names what the device lacks, and the import analysis behind it leaves guarded and type-only imports out."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import gpu_suite, gpu_wheels

NO_CUDA = not torch.cuda.is_available()
TINY = ["--allow-cpu", "--backends", "eager", "--batches", "1", "--iters", "1", "--size", "320x240", "--faces", "1"]
TINY += ["--frames", "1", "--warmup", "0", "--budget", "300"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu-suite")
    home = pytest.MonkeyPatch()
    home.setenv("DANCECAM_HOME", str(out / "home"))  # no SCRFD weights, no converted FaceDancer
    try:
        rc = gpu_suite.main([*TINY, "--out", str(out)])
    finally:
        home.undo()
    [path] = out.glob("gpu-*.json")
    return {"rc": rc, "out": out, "path": path, "result": json.loads(path.read_text())}


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_suite.main([]) == 2
    assert "no CUDA device here" in capsys.readouterr().err


@pytest.mark.skipif(not NO_CUDA, reason="the CPU plumbing run is for machines without CUDA")
def test_allow_cpu_writes_the_report(report: dict[str, Any]) -> None:
    assert report["rc"] == 0
    path: Path = report["path"]
    assert path.name.startswith("gpu-cpu-")
    stem = path.with_suffix("")
    for suffix in (".md", "-pytest.xml", "-pytest.log"):
        assert Path(f"{stem}{suffix}").is_file()
    result = report["result"]
    assert set(result["parts_s"]) == {"peak", "tests", "backends", "scrfd"}
    assert result["seconds"] < result["budget_s"]
    assert result["gflop_per_face"] == pytest.approx(54.79, abs=0.01)
    tests = result["tests"]
    assert tests["status"] == "ok"
    assert tests["counts"]["failed"] == tests["counts"]["errors"] == 0
    assert tests["counts"]["skipped"] > 0  # gpu tests skip, with their reason, on the CPU
    assert "no CUDA device on this machine" in tests["skip_reasons"]
    [run] = result["backends"]["runs"]
    assert (run["backend"], run["precision"], run["status"]) == ("eager", "fp32", "ok")
    assert "random weights" in result["backends"]["model"]
    assert run["accuracy"] == {"mean_abs": 0.0, "max_abs": 0.0, "psnr_db": None}  # eager fp32 against itself
    [row] = run["facedancer"]
    assert row["batch"] == 1
    assert row["iters"] >= 1
    assert row["p50_ms"] > 0
    assert row["floor_ms"] > 0
    [case] = run["pipeline"]
    assert case["size"] == "320x240"
    assert case["faces_found"]["min"] == 1
    assert case["floor_ms"] == pytest.approx(row["floor_ms"])
    assert result["scrfd"]["status"].startswith("skipped: weights not present")


@pytest.mark.skipif(not NO_CUDA, reason="the CPU plumbing run is for machines without CUDA")
def test_markdown_has_every_section(report: dict[str, Any]) -> None:
    md = report["path"].with_suffix(".md").read_text()
    for heading in ("## Tests (pytest -m gpu)", "## FaceDancer", "### Accuracy", "## Pipeline", "## SCRFD", "## Parts"):
        assert heading in md
    assert "| floor ms |" in md
    assert "## Targets" in md


def test_list_wheels(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_suite.main(["--list-wheels"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("pip download"))
    assert "--only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64" in line
    assert "--platform manylinux_2_28_x86_64" in line  # av, numpy, scipy... ship only manylinux_2_28 wheels
    for needed in ("aiortc==", "av==", "pytest==", "pytest-asyncio==", "scikit-image==", "matplotlib=="):
        assert needed in line
    assert "--no-deps" in line  # facenet-pytorch: its pins would drag in an old torch
    words = line.split()
    for image in ("torch", "numpy", "cupy", "opencv", "onnxruntime"):
        assert not any(w.startswith(f"{image}==") or w.startswith(f"{image}-") for w in words)
    assert "pip install --no-index --find-links wheels" in out


def test_import_analysis(tmp_path: Path) -> None:
    pkg = tmp_path / "benchmarks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nimport json\nfrom . import b\n"
        "if TYPE_CHECKING:\n    import typed_only\n"
        "try:\n    import optional_thing\nexcept ImportError:\n    optional_thing = None\n"
    )
    (pkg / "b.py").write_text("def f():\n    import lazy_lib.sub\n    from numpy import zeros\n")
    found = gpu_wheels.third_party_imports([pkg / "a.py"], tmp_path)
    assert found == {"lazy_lib": "benchmarks/b.py", "numpy": "benchmarks/b.py"}


def test_accuracy_numbers() -> None:
    ref = torch.zeros(1, 3, 4, 4)
    assert gpu_suite.accuracy(ref, ref)["psnr_db"] is None
    out = ref.clone()
    out[0, 0, 0, 0] = 0.5
    acc = gpu_suite.accuracy(ref, out + 5.0 * (out > 0))  # clipped to [-1, 1] first: 1.0 off in one of 48 values
    assert acc["max_abs"] == 1.0
    assert acc["mean_abs"] == pytest.approx(1 / 48)
    assert acc["psnr_db"] == pytest.approx(10 * math.log10(4 / (1 / 48)))
