"""Choosing the face detector: MTCNN or SCRFD, by name or auto."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.detectors import decide, load_detector, scrfd_path
from engines.errors import ConfigError, ModelMissingError
from engines.mtcnn import MTCNN
from engines.scrfd import SCRFD
from realtime.cli.main import main
from tests import faces
from tests.engines.test_scrfd import build_fake_scrfd


def test_auto_takes_scrfd_only_on_a_gpu_with_its_file_and_onnxruntime_there() -> None:
    assert decide("auto", "cuda", scrfd_present=True, scrfd_on_gpu=True) == (
        "scrfd",
        "a GPU, det_10g.onnx and a GPU runtime for it",
    )
    name, why = decide("auto", "cuda", scrfd_present=True, scrfd_on_gpu=False)
    assert name == "mtcnn"
    assert "no TensorRT, no CUDA provider in onnxruntime" in why
    name, why = decide("scrfd", "cuda", scrfd_present=True, scrfd_on_gpu=False)
    assert name == "scrfd"  # asked for by name: the user gets it, and is told where it runs
    assert "runs on the CPU" in why
    name, why = decide("auto", "cuda", scrfd_present=False)
    assert name == "mtcnn"
    assert "dancecam models download scrfd_10g" in why
    assert decide("auto", "cpu", scrfd_present=True) == ("mtcnn", "the cheaper one on a CPU")
    assert decide("scrfd", "cpu", scrfd_present=True) == ("scrfd", "asked for")
    with pytest.raises(ConfigError, match="unknown detector 'yolo'; choose one of: auto, mtcnn, scrfd"):
        decide("yolo", "cpu", scrfd_present=True)


def test_load_by_name(tmp_path: Path) -> None:
    detector, message = load_detector("auto", torch.device("cpu"), tmp_path)
    assert isinstance(detector, MTCNN)
    assert message == "detector mtcnn (the cheaper one on a CPU)"
    with pytest.raises(ModelMissingError, match="dancecam models download scrfd_10g"):
        load_detector("scrfd", torch.device("cpu"), tmp_path)
    path = scrfd_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build_fake_scrfd(path)
    detector, message = load_detector("scrfd", torch.device("cpu"), tmp_path)
    assert isinstance(detector, SCRFD)
    assert message == "detector scrfd on onnxruntime (asked for)"
    found = detector(torch.from_numpy(np.zeros((240, 320, 3), np.uint8)))
    assert len(found) == 0  # the fake network sees no face in a black frame


def test_swap_with_scrfd_and_no_file_says_how_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    photo = tmp_path / "me.png"
    cv2.imwrite(str(photo), faces.astronaut()[:, :, ::-1])
    args = ["swap", "-s", str(photo), "-i", str(photo), "-o", str(tmp_path / "out.png"), "--engine", "identity"]
    code = main([*args, "--detector", "scrfd", "--model-dir", str(tmp_path / "models")])
    assert code == 1
    assert "dancecam models download scrfd_10g" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_scrfd_backend_follows_the_users_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from engines import detectors
    from engines.runners import tensorrt_onnx

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr(tensorrt_onnx, "unavailable_reason", lambda: None)
    assert detectors.scrfd_backend("auto", cuda) == ("tensorrt", None)
    assert detectors.scrfd_backend("tensorrt", cuda) == ("tensorrt", None)
    # the torch backends do not apply to an ONNX graph; nothing but ONNX Runtime on a CPU
    assert detectors.scrfd_backend("cuda-graphs", cuda) == ("onnxruntime", None)
    assert detectors.scrfd_backend("onnxruntime", cuda) == ("onnxruntime", None)
    assert detectors.scrfd_backend("tensorrt", cpu) == ("onnxruntime", None)
    monkeypatch.setattr(tensorrt_onnx, "unavailable_reason", lambda: "tensorrt is not usable (ImportError)")
    assert detectors.scrfd_backend("auto", cuda) == ("onnxruntime", "tensorrt is not usable (ImportError)")


def test_scrfd_on_tensorrt_and_its_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With TensorRT chosen (the double stands in for it on this CPU), SCRFD runs on the engine, cached under the
    model directory's compiled/; when the build fails, the detector falls back to ONNX Runtime and says why."""
    pytest.importorskip(
        "onnxconverter_common", reason="onnxconverter-common is a dev dependency (pip install -e .[dev])"
    )
    from engines import detectors
    from engines.runners import tensorrt_onnx
    from tests.engines.tensorrt_double import install

    fake_trt = install(monkeypatch)
    monkeypatch.setattr(tensorrt_onnx, "unavailable_reason", lambda: None)
    monkeypatch.setattr(detectors, "scrfd_backend", lambda backend, device: ("tensorrt", None))
    path = scrfd_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build_fake_scrfd(path)
    detector, message = load_detector("scrfd", torch.device("cpu"), tmp_path, backend="tensorrt")
    assert message == "detector scrfd on tensorrt fp16 (asked for)"
    assert isinstance(detector, SCRFD)
    assert detector.runner.backend == "tensorrt"
    assert [p.suffix for p in (tmp_path / "compiled" / "tensorrt").iterdir()] == [".engine"]
    image = torch.from_numpy(faces.compose_faces(640, 480, seed=1)[0])
    reference = SCRFD(path)(image)
    assert len(detector(image)) >= len(reference) - 1 >= 1

    monkeypatch.setattr(fake_trt.Builder, "build_serialized_network", lambda self, network, config: None)
    detector, message = load_detector("scrfd", torch.device("cpu"), tmp_path, cache_dir=tmp_path / "other")
    assert detector.runner.backend == "onnxruntime"
    assert message.startswith("detector scrfd on onnxruntime; TensorRT failed (TensorRT could not build")
    assert len(detector(image)) == len(reference)


def test_auto_falls_back_to_mtcnn_when_scrfd_would_end_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto picked SCRFD for a GPU runtime (TensorRT) whose build then failed, with no CUDA provider in
    onnxruntime: SCRFD would run on the CPU, slower than MTCNN on the GPU, so auto takes MTCNN and says why.
    (Decided by the runtimes' answers; simulated here, where there is no GPU.)"""
    from engines import detectors

    closed: list[bool] = []

    class Stranded:
        def close(self) -> None:
            closed.append(True)

    path = scrfd_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build_fake_scrfd(path)
    monkeypatch.setattr(detectors, "decide", lambda *a: ("scrfd", "a GPU, det_10g.onnx and a GPU runtime for it"))
    monkeypatch.setattr(
        detectors,
        "_scrfd",
        lambda *a: (Stranded(), "on onnxruntime; TensorRT failed (out of memory)", False),
    )
    detector, message = load_detector("auto", torch.device("cpu"), tmp_path)
    assert isinstance(detector, MTCNN)
    assert message == "detector mtcnn (SCRFD would run on the CPU: TensorRT failed (out of memory))"
    assert closed == [True]
    # asked for by name, the user gets SCRFD wherever it runs
    detector, message = load_detector("scrfd", torch.device("cpu"), tmp_path)
    assert isinstance(detector, Stranded)
