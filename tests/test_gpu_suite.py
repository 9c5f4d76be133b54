"""The GPU suite's plumbing, checked on the CPU: `--allow-cpu` with tiny settings writes the report, `--list-wheels`
names what the device lacks, and the import analysis behind it leaves guarded and type-only imports out;
`--prepare-carry` fits its budget (fake sizes, no network), and the astronaut PNG stands in for scikit-image."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks import gpu_suite, gpu_wheels
from tests import faces

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
    assert result["backends"]["detector"] == "detector mtcnn (the cheaper one on a CPU)"


def test_backends_are_timed_without_a_detector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MTCNN's weights come with facenet-pytorch, which a device may lack: the network timings do not need it."""
    from engines.errors import ModelMissingError
    from realtime.bench import run as bench

    def missing(*args: object) -> None:
        raise ModelMissingError("MTCNN pnet weights pnet.pt not found (facenet-pytorch is not installed)")

    monkeypatch.setattr(bench, "load_bench_detector", missing)
    monkeypatch.setenv("DANCECAM_HOME", str(tmp_path / "home"))
    assert gpu_suite.main([*TINY, "--no-tests", "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("gpu-*.json")
    backends = json.loads(path.read_text())["backends"]
    assert backends["detector"].startswith("no detector (ModelMissingError: MTCNN pnet weights")
    [run] = backends["runs"]
    assert run["status"] == "ok"
    assert run["facedancer"][0]["p50_ms"] > 0  # timed all the same
    assert run["pipeline"] == [{"faces": 1, "status": backends["detector"]}]


def test_scrfd_part_times_each_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engines import scrfd
    from tests.engines.test_scrfd import build_fake_scrfd

    monkeypatch.setenv("DANCECAM_HOME", str(tmp_path))
    path = scrfd.default_model_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    build_fake_scrfd(path)
    result = gpu_suite.run_scrfd(torch.device("cpu"), 2)
    [ort] = result["backends"]  # no TensorRT on a CPU
    assert (ort["backend"], ort["status"], ort["precision"]) == ("onnxruntime", "ok", "fp32")
    assert ort["providers"] == ["CPUExecutionProvider"]
    assert ort["faces"] > 0
    assert 0 < ort["p50_ms"] <= ort["p99_ms"]
    line = gpu_suite._scrfd_line(result)
    assert line.startswith("- onnxruntime fp32 (CPUExecutionProvider): p50 ")


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
    for needed in ("aiortc==", "av==", "pytest-asyncio==", "facenet-pytorch=="):
        assert needed in line
    for on_the_image in ("pytest==", "scikit-image==", "matplotlib==", "h5py=="):  # KINDS.md: the H200 has them
        assert on_the_image not in line
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


# --- --prepare-carry: the budget, the photo, the command ---------------------------------------------------------

MB = gpu_wheels.MIB
SETS = {
    "matplotlib": {"matplotlib", "fonttools", "pillow"},
    "skimage": {"scikit-image", "scipy", "pillow"},
    "aiortc": {"aiortc", "av", "cryptography"},
    "av": {"av"},
    "onnx": {"onnx", "ml-dtypes"},
    "pytest": {"pytest", "pygments"},
    "rich": {"rich", "pygments"},
}
SIZES = {
    "matplotlib": 10 * MB,
    "fonttools": 5 * MB,
    "pillow": 7 * MB,
    "scikit-image": 13 * MB,
    "scipy": 34 * MB,
    "aiortc": 1 * MB,
    "av": 35 * MB,
    "cryptography": 5 * MB,
    "onnx": 9 * MB,
    "ml-dtypes": 1 * MB,
    "pytest": 1 * MB,
    "pygments": 1 * MB,
    "rich": 1 * MB,
}
ORDER = ("matplotlib", "skimage", "aiortc", "av", "onnx")


def test_fit_budget_drops_whole_packages_in_order() -> None:
    # everything: 123 MB (pygments and pillow counted once)
    assert gpu_wheels.fit_budget(SETS, SIZES, 200 * MB, ORDER).dropped == ()
    assert gpu_wheels.fit_budget(SETS, SIZES, 60 * MB, ORDER).dropped == ("matplotlib", "skimage")  # 54 MB
    plan = gpu_wheels.fit_budget(SETS, SIZES, 50 * MB, ORDER)
    assert plan.dropped == ("matplotlib", "skimage", "aiortc")
    assert plan.kept == ("av", "onnx", "pytest", "rich")
    assert plan.distributions == ("av", "ml-dtypes", "onnx", "pygments", "pytest", "rich")
    assert plan.size == 48 * MB
    assert plan.fits


def test_fit_budget_keeps_a_shared_wheel_while_one_module_needs_it() -> None:
    plan = gpu_wheels.fit_budget(SETS, SIZES, 110 * MB, ORDER)
    assert plan.dropped == ("matplotlib",)  # 123 - 15: pillow stays for scikit-image
    assert "pillow" in plan.distributions
    assert "fonttools" not in plan.distributions
    assert plan.size == 108 * MB


def test_fit_budget_never_drops_what_the_order_does_not_name() -> None:
    plan = gpu_wheels.fit_budget(SETS, SIZES, 2 * MB, ORDER)
    assert plan.dropped == ORDER
    assert plan.kept == ("pytest", "rich")
    assert plan.size == 3 * MB
    assert not plan.fits


def test_drop_order_spares_what_the_suite_cannot_run_without() -> None:
    order = [m for m, _ in gpu_wheels.DROP_ORDER]
    assert order[:3] == ["matplotlib", "skimage", "aiortc"]
    for essential in ("pytest", "pytest_asyncio", "rich", "safetensors", "facenet_pytorch"):
        assert essential not in order
    assert all(why for _, why in gpu_wheels.DROP_ORDER)


def test_left_out_names_what_each_file_lacks() -> None:
    needs = {"tests/a.py": ["pytest"], "tests/b.py": ["pytest", "skimage"], "tests/c.py": ["aiortc", "av"]}
    assert gpu_wheels.left_out(needs, ["pytest", "av"]) == {"tests/b.py": ["skimage"], "tests/c.py": ["aiortc"]}


def test_carry_never_holds_the_image_or_follows_its_requirements() -> None:
    image = gpu_wheels.image_distributions()
    assert {"torch", "numpy", "onnxruntime", "aiohttp", "packaging"} <= image
    assert {"pytest", "pluggy", "scipy"} <= image  # on the H200's image (KINDS.md), with what they require
    assert "av" not in image
    aiortc_set = gpu_wheels.requirement_closure(["aiortc"], image)
    assert {"aiortc", "aioice", "pylibsrtp"} <= set(aiortc_set)
    assert "attrs" not in aiortc_set  # aiohttp's requirement: the image has it
    sets = gpu_wheels.carry_sets(gpu_wheels.needed_wheels([Path(gpu_suite.__file__)]))
    carried = {d for s in sets.values() for d in s}
    assert not carried & image
    assert not {"torch", "numpy", "opencv-python-headless", "cupy-cuda13x", "triton"} & carried
    assert set(sets["facenet_pytorch"]) == {"facenet-pytorch"}  # --no-deps: its stale pins are never followed
    assert "skimage" not in sets  # on the image


def test_download_command_fetches_exactly_the_list() -> None:
    cmd = gpu_wheels.carry_download_command(["av==18.1.0", "pytest==9.2.0"], "/tmp/w")
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd
    assert "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"] == list(gpu_wheels.PLATFORMS)
    assert cmd[-4:] == ["-d", "/tmp/w", "av==18.1.0", "pytest==9.2.0"]


def test_device_command() -> None:
    line = gpu_wheels.device_command(".carry", ["pytest", "av", "facenet-pytorch"])
    pip = "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --find-links .carry/wheels"
    assert line.startswith(f"{pip} av facenet-pytorch pytest || {{ {pip} --target /tmp/site av facenet-pytorch")
    assert "&& export PYTHONPATH=/tmp/site; }; " in line
    assert line.endswith(
        'DANCECAM_ASTRONAUT=.carry/astronaut.png python3 -m benchmarks.gpu_suite --out "${OUT:-benchmarks/results}"'
    )
    assert len(line) < 2000  # the device tool's limit for one command


def test_carry_report() -> None:
    sets = {m: dict.fromkeys(d, "1.0") for m, d in SETS.items()}
    plan = gpu_wheels.fit_budget(SETS, SIZES, 50 * MB, ORDER)
    needs = {"tests/a.py": ["pytest"], "tests/b.py": ["pytest", "skimage"], "tests/c.py": ["aiortc", "av"]}
    text = gpu_wheels.carry_report(".carry", plan, sets, SIZES, needs, MB // 2, "made in a test")
    assert 'carry=[".carry"]' in text
    assert gpu_wheels.device_command(".carry", plan.distributions) in text
    assert "wheels 48.0 MiB + astronaut.png 0.5 MiB" in text
    assert "  av: av==1.0 (35.0 MiB)" in text
    dropped = text.split("Dropped to fit")[1]
    assert dropped.index("  matplotlib (fonttools, matplotlib; 15.0 MiB)") < dropped.index("  skimage (pillow,")
    assert "  aiortc (aiortc, cryptography; 6.0 MiB): WebRTC" in text  # av stays: kept for itself
    assert "gpu test files that run (1 of 3):\n  tests/a.py\n" in text
    assert "  tests/b.py: needs skimage" in text
    assert "  tests/c.py: needs aiortc" in text


def _fake_download(sizes: dict[str, int]) -> Any:
    def download(requirements: Sequence[str], dest: Path) -> bool:
        for req in requirements:
            name, _, version = req.partition("==")
            path = dest / f"{name.replace('-', '_')}-{version or '0'}-py3-none-any.whl"
            with path.open("wb") as f:
                f.truncate(sizes.get(name, 50_000))  # sparse: the size without the bytes
        return True

    return download


@pytest.mark.skipif(not gpu_wheels.importable("skimage"), reason="writing the photo needs scikit-image")
def test_prepare_carry_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sizes = {"av": 35 * MB, "scipy": 34 * MB, "scikit-image": 13 * MB, "matplotlib": 10 * MB, "pillow": 7 * MB}
    dest = tmp_path / "carry"
    rc = gpu_wheels.prepare_carry(dest, 60, [Path(gpu_suite.__file__)], download=_fake_download(sizes))
    assert rc == 0
    out = capsys.readouterr().out
    readme = (dest / "README.txt").read_text()
    assert readme in out
    wheels = sorted(p.name.split("-")[0] for p in (dest / "wheels").iterdir())
    assert "av" in wheels
    assert "aiortc" in wheels
    assert not {"scipy", "scikit_image", "matplotlib", "numpy", "torch", "pytest"} & set(wheels)
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert total <= 60 * MB
    assert "tests/engines/test_runners.py\n" in readme.split("gpu test files that run")[1]
    assert np.array_equal(faces.astronaut_png(dest / "astronaut.png"), faces.astronaut())


def test_prepare_carry_fails_when_even_the_essentials_are_over(tmp_path: Path) -> None:
    if not gpu_wheels.importable("skimage"):
        pytest.skip("writing the photo needs scikit-image")
    rc = gpu_wheels.prepare_carry(tmp_path / "c", 1, [], download=_fake_download({"pytest-asyncio": 2 * MB}))
    assert rc == 1
    assert not (tmp_path / "c" / "wheels").exists()


@pytest.fixture
def astronaut_png(tmp_path: Path) -> tuple[Path, np.ndarray]:
    if not gpu_wheels.importable("skimage"):
        pytest.skip("writing the photo needs scikit-image")
    from skimage import data

    path = tmp_path / "astronaut.png"
    gpu_wheels.write_astronaut(path)
    return path, np.ascontiguousarray(data.astronaut())


def test_astronaut_from_the_png_without_scikit_image(
    astronaut_png: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, expected = astronaut_png
    monkeypatch.setitem(sys.modules, "skimage", None)  # `from skimage import data` raises ImportError
    monkeypatch.setenv(faces.ASTRONAUT_ENV, str(path))
    got = faces.astronaut()
    assert got.dtype == np.uint8
    assert got.flags.c_contiguous
    assert np.array_equal(got, expected)  # lossless: every test expectation holds
    assert gpu_suite.astronaut_source() == f"{faces.ASTRONAUT_ENV}={path}"
    frame, _ = faces.compose_faces(640, 480)
    monkeypatch.delitem(sys.modules, "skimage")
    assert np.array_equal(frame, faces.compose_faces(640, 480)[0])


def test_astronaut_without_either_says_how(
    astronaut_png: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.delenv(faces.ASTRONAUT_ENV, raising=False)
    with pytest.raises(ImportError, match=r"install scikit-image .* or set DANCECAM_ASTRONAUT"):
        faces.astronaut()
    assert gpu_suite.astronaut_source().startswith("missing: ")
    small = astronaut_png[0].with_name("small.png")
    import cv2

    assert cv2.imwrite(str(small), np.zeros((256, 256, 3), np.uint8))
    monkeypatch.setenv(faces.ASTRONAUT_ENV, str(small))
    with pytest.raises(ImportError, match=r"is \(256, 256, 3\) uint8, not \(512, 512, 3\) uint8"):
        faces.astronaut()
    monkeypatch.setenv(faces.ASTRONAUT_ENV, str(small.with_name("absent.png")))
    with pytest.raises(ImportError, match=r"absent\.png is not a readable image"):
        faces.astronaut()
