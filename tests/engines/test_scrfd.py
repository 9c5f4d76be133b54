"""SCRFD: our torch letterbox + decoding + NMS against insightface's own SCRFD class on the same ONNX file.

det_10g.onnx cannot be downloaded here, so the tests build a small random-weight model with det_10g's contract:
input `input.1` (1, 3, ?, ?), the 9 outputs under det_10g's names, (anchors, 1 | 4 | 10) each, 2 anchors per
location, Conv -> Transpose(2, 3, 0, 1) -> Reshape(-1, K) like the real graph. Its score head is biased so that
a black image scores sigmoid(-1) everywhere (no face) while textured images give hundreds of candidates, and its
boxes are a few strides wide, so thresholding and NMS both have real work to do.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from engines.detect import Detections, image_tensor
from engines.errors import CheckpointFormatError, ModelMissingError
from engines.runners.base import Runner
from engines.runners.onnxruntime import OnnxRuntimeRunner
from engines.scrfd import (
    BOX_NAMES,
    INPUT_NAME,
    KPS_NAMES,
    SCORE_NAMES,
    SCRFD,
    STRIDES,
    anchor_centers,
    letterbox,
    letterbox_size,
    resize_levels,
    scrfd_io,
)
from tests import faces

BLACK = -127.5 / 128  # a black pixel after normalisation
FEATURES = 8


def build_fake_scrfd(
    path: Path,
    *,
    seed: int = 0,
    names: dict[str, tuple[str, ...]] | None = None,
    channels: dict[str, int] | None = None,
    static_input: int | None = None,
) -> Path:
    """A random-weight ONNX graph with det_10g's contract: per stride s, a stride-s convolution + ReLU and three
    1x1 heads (sigmoid scores, softplus box distances, raw keypoint offsets) for 2 anchors."""
    names = names or {"score": SCORE_NAMES, "box": BOX_NAMES, "kps": KPS_NAMES}
    channels = channels or {"score": 1, "box": 4, "kps": 10}
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray, dtype: type = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    for i, s in enumerate(STRIDES):
        w = rng.normal(0, 1 / np.sqrt(3 * s * s), (FEATURES, 3, s, s))
        b = rng.normal(0, 0.3, FEATURES)
        nodes.append(
            helper.make_node("Conv", [INPUT_NAME, const(f"w{s}", w), const(f"b{s}", b)], [f"c{s}"], strides=[s, s])
        )
        nodes.append(helper.make_node("Relu", [f"c{s}"], [f"f{s}"]))
        black_features = np.maximum(BLACK * w.sum(axis=(1, 2, 3)) + b, 0)  # no padding: a black image is uniform
        for kind in ("score", "box", "kps"):
            k = channels[kind]
            hw = rng.normal(0, (6.0 if kind == "score" else 1.0) / np.sqrt(FEATURES), (2 * k, FEATURES, 1, 1))
            hb = rng.normal(0, 0.2, 2 * k)
            if kind == "score":
                hb = -1.0 - hw[:, :, 0, 0] @ black_features
            elif kind == "box":
                hb += 2.0  # boxes ~4 strides wide: neighbouring anchors overlap
            x = f"{kind}{s}"
            nodes.append(helper.make_node("Conv", [f"f{s}", const(f"hw{x}", hw), const(f"hb{x}", hb)], [f"h{x}"]))
            act = {"score": "Sigmoid", "box": "Softplus"}.get(kind)
            if act:
                nodes.append(helper.make_node(act, [f"h{x}"], [f"a{x}"]))
            nodes.append(helper.make_node("Transpose", [f"a{x}" if act else f"h{x}"], [f"t{x}"], perm=[2, 3, 0, 1]))
            shape = const(f"shape{x}", np.array([-1, k]), np.int64)
            nodes.append(helper.make_node("Reshape", [f"t{x}", shape], [names[kind][i]]))
    size = static_input or 640
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [(size // s) ** 2 * 2, channels[kind]])
        for kind in ("score", "box", "kps")
        for name, s in zip(names[kind], STRIDES, strict=True)
    ]
    spatial: list[Any] = [static_input, static_input] if static_input else ["?", "?"]
    graph = helper.make_graph(
        nodes,
        "fake_scrfd",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, *spatial])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_scrfd(tmp_path_factory.mktemp("scrfd") / "det_10g.onnx")


@pytest.fixture(scope="module")
def detector(fake_model: Path) -> SCRFD:
    return SCRFD(fake_model)


def _insightface_scrfd_class() -> type:
    """insightface's SCRFD loaded under a private package name: the package __init__ imports dependencies that
    the --no-deps install lacks, and a stub registered as `insightface` could mislead other tests."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("insightface is not installed (the test command installs it with --no-deps)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, folder in (("_insightface_ref", root), ("_insightface_ref.model_zoo", root / "model_zoo")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    return importlib.import_module("_insightface_ref.model_zoo.scrfd").SCRFD


@pytest.fixture(scope="module")
def reference(fake_model: Path) -> Any:
    ref = _insightface_scrfd_class()(model_file=str(fake_model))
    ref.prepare(-1, input_size=(640, 640), det_thresh=0.5, nms_thresh=0.4)
    return ref


def _reference_detect(reference: Any, rgb: np.ndarray, max_num: int = 0) -> Detections:
    """insightface on an RGB image: it expects cv2's BGR and swaps to RGB itself. Returned best score first."""
    det, kps = reference.detect(np.ascontiguousarray(rgb[..., ::-1]), input_size=(640, 640), max_num=max_num)
    order = np.argsort(-det[:, 4], kind="stable")
    det, kps = det[order], kps[order]
    return Detections(torch.from_numpy(det[:, :4]), torch.from_numpy(det[:, 4]), torch.from_numpy(kps))


def _assert_same(ours: Detections, ref: Detections) -> dict[str, float]:
    assert len(ours) == len(ref)
    assert ours.boxes.dtype == ours.scores.dtype == ours.landmarks.dtype == torch.float32
    assert ours.landmarks.shape == (len(ref), 5, 2)
    assert torch.all(ours.scores[:-1] >= ours.scores[1:])  # best first
    diffs = {
        "box": (ours.boxes - ref.boxes).abs().max().item() if len(ref) else 0.0,
        "score": (ours.scores - ref.scores).abs().max().item() if len(ref) else 0.0,
        "kps": (ours.landmarks - ref.landmarks).abs().max().item() if len(ref) else 0.0,
    }
    assert diffs["box"] <= 1e-3, diffs
    assert diffs["kps"] <= 1e-3, diffs
    assert diffs["score"] <= 1e-5, diffs
    return diffs


def _frame(kind: str) -> np.ndarray:
    if kind == "astronaut-640":  # no resize at all
        return cv2.resize(faces.astronaut(), (640, 640), interpolation=cv2.INTER_AREA)
    if kind == "portrait-720x1280":  # 2x downscale to 360x640, right padding
        return np.ascontiguousarray(np.rot90(faces.compose_faces(1280, 720, seed=2)[0]))
    if kind == "portrait-480x640":  # no resize, right padding
        return np.ascontiguousarray(np.rot90(faces.compose_faces(640, 480, seed=3)[0]))
    width, height = map(int, kind.split("x"))
    return faces.compose_faces(width, height, seed=1)[0]


@pytest.mark.parametrize(
    "kind", ["640x480", "1280x720", "1920x1080", "portrait-720x1280", "portrait-480x640", "astronaut-640"]
)
def test_matches_insightface(detector: SCRFD, reference: Any, kind: str) -> None:
    # Unchanged sizes and integer downscales are the letterbox cases where our resize is cv2's to the bit.
    image = _frame(kind)
    ref = _reference_detect(reference, image)
    ours = detector(image_tensor(image, "cpu"))
    assert len(ref) >= 5  # thresholding and NMS really ran
    _assert_same(ours, ref)


class _OurResize:
    """cv2 for insightface's module, with `resize` replaced by ours (bilinear, rounded to levels)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(cv2, name)

    @staticmethod
    def resize(image: np.ndarray, dsize: tuple[int, int]) -> np.ndarray:
        levels = resize_levels(torch.from_numpy(image), dsize[1], dsize[0])
        return levels[0].permute(1, 2, 0).to(torch.uint8).numpy()


@pytest.mark.parametrize("size", [(512, 512), (700, 1000), (1000, 563)])
def test_matches_insightface_after_any_resize(
    detector: SCRFD, reference: Any, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Non-integer scales (512 -> 640 up; 700x1000 -> 448x640 and 1000x563 -> 640x360 down): cv2's fixed-point
    bilinear and ours differ by at most one level, and then a random network's boxes differ by ~0.1 px. So the
    reference runs with our resize in place of cv2's, which checks everything else end to end, and the resizes
    are compared separately."""
    width, height = size
    image = faces.astronaut() if size == (512, 512) else faces.compose_faces(width, height, seed=4)[0]
    new_height, new_width, _ = letterbox_size(height, width, 640)
    ours_resized = resize_levels(torch.from_numpy(image), new_height, new_width)[0].permute(1, 2, 0)
    assert np.abs(ours_resized.numpy() - cv2.resize(image, (new_width, new_height))).max() <= 1
    monkeypatch.setattr(sys.modules["_insightface_ref.model_zoo.scrfd"], "cv2", _OurResize())
    ref = _reference_detect(reference, image)
    assert len(ref) >= 5
    _assert_same(detector(image_tensor(image, "cpu")), ref)


def test_no_face_above_threshold(detector: SCRFD, reference: Any) -> None:
    black = np.zeros((480, 640, 3), np.uint8)
    ours = detector(image_tensor(black, "cpu"))
    assert len(ours) == 0
    assert ours.boxes.shape == (0, 4)
    assert ours.landmarks.shape == (0, 5, 2)
    assert len(_reference_detect(reference, black)) == 0
    # Not for lack of a network: scores are there, all below 0.5.
    blob, _ = letterbox(image_tensor(black, "cpu"))
    scores = torch.cat([detector.runner.infer({INPUT_NAME: blob})[n].reshape(-1) for n in SCORE_NAMES])
    assert 0.2 < scores.max().item() < 0.5


@pytest.mark.parametrize("max_num", [1, 3])
def test_max_num_matches_insightface(fake_model: Path, reference: Any, max_num: int) -> None:
    image = _frame("1280x720")
    ours = SCRFD(fake_model, max_num=max_num)(image_tensor(image, "cpu"))
    assert len(ours) == max_num
    _assert_same(ours, _reference_detect(reference, image, max_num=max_num))


def test_letterbox_layout() -> None:
    image = torch.from_numpy(faces.compose_faces(1280, 720)[0])
    blob, scale = letterbox(image, 640)
    assert blob.shape == (1, 3, 640, 640)
    assert blob.dtype == torch.float32
    assert scale == 0.5
    assert torch.all(blob[:, :, 360:] == BLACK)  # padding below the image, black after normalisation
    expected = cv2.resize(image.numpy(), (640, 360))  # cv2's 2x downscale, RGB order kept
    got = (blob[0, :, :360].permute(1, 2, 0) * 128 + 127.5).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(got, expected)


def test_anchor_centres_are_location_major() -> None:
    c = anchor_centers(640, 32)
    assert c.shape == (20 * 20 * 2, 2)
    torch.testing.assert_close(c[:6], torch.tensor([[0.0, 0], [0, 0], [32, 0], [32, 0], [64, 0], [64, 0]]))
    torch.testing.assert_close(c[40], torch.tensor([0.0, 32.0]))  # second row


def test_io_names_and_shapes() -> None:
    io = scrfd_io(640)
    assert io.network == "scrfd"
    assert io.input_names == ("input.1",)
    assert io.inputs[0].shape == (1, 3, 640, 640)
    assert io.max_batch == 1
    assert io.output_names == ("448", "471", "494", "451", "474", "497", "454", "477", "500")
    assert [o.shape for o in io.outputs] == [
        (12800, 1), (3200, 1), (800, 1), (12800, 4), (3200, 4), (800, 4), (12800, 10), (3200, 10), (800, 10)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="multiple of 32"):
        scrfd_io(650)


def test_load_rejects_files_that_are_not_det_10g(tmp_path: Path) -> None:
    renamed = build_fake_scrfd(
        tmp_path / "renamed.onnx", names={"score": ("s8", "s16", "s32"), "box": BOX_NAMES, "kps": KPS_NAMES}
    )
    with pytest.raises(CheckpointFormatError, match=r"outputs .*s8.*expected"):
        SCRFD(renamed)
    no_kps = build_fake_scrfd(tmp_path / "no_kps.onnx", channels={"score": 1, "box": 4, "kps": 8})
    with pytest.raises(CheckpointFormatError, match=r"454 is tensor\(float\) \[12800, 8\], expected .*\[12800, 10\]"):
        SCRFD(no_kps)
    fixed_320 = build_fake_scrfd(tmp_path / "fixed_320.onnx", static_input=320)
    with pytest.raises(CheckpointFormatError, match=r"input.1 is tensor\(float\) \[1, 3, 320, 320\], expected"):
        SCRFD(fixed_320)
    assert len(SCRFD(fixed_320, input_size=320)(torch.zeros((240, 320, 3), dtype=torch.uint8))) == 0
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(CheckpointFormatError, match="cannot load"):
        SCRFD(garbage)


def test_runner_checks_run_time_shapes(fake_model: Path) -> None:
    # A dynamic-input model declares its anchor counts only as an annotation: checked on the actual outputs.
    with OnnxRuntimeRunner(fake_model, scrfd_io(640)) as runner:
        assert isinstance(runner, Runner)
        outputs = runner.infer({INPUT_NAME: torch.zeros(1, 3, 640, 640)})
        assert [tuple(outputs[n].shape) for n in runner.io.output_names][:3] == [(12800, 1), (3200, 1), (800, 1)]
        with pytest.raises(ValueError, match=r"input.1: expected \(1, 3, 640, 640\), got \(1, 3, 320, 320\)"):
            runner.infer({INPUT_NAME: torch.zeros(1, 3, 320, 320)})
        with pytest.raises(ValueError, match=r"expected \(1, 3, 640, 640\), got \(2, 3, 640, 640\)"):
            runner.infer({INPUT_NAME: torch.zeros(2, 3, 640, 640)})
    # Outputs that do not have the anchor counts the io expects (here: a 640 input, 320's counts) are refused.
    wrong = dataclasses.replace(scrfd_io(640), outputs=scrfd_io(320).outputs)
    with OnnxRuntimeRunner(fake_model, wrong) as runner, pytest.raises(CheckpointFormatError, match=r"448 has shape"):
        runner.infer({INPUT_NAME: torch.zeros(1, 3, 640, 640)})
    # A runner made for another input size than the detector's is refused.
    with pytest.raises(ValueError, match="not SCRFD at 640"):
        SCRFD(runner=OnnxRuntimeRunner(fake_model, scrfd_io(320)))


def test_missing_file_says_how_to_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelMissingError, match="dancecam models download scrfd_10g"):
        SCRFD(tmp_path / "det_10g.onnx")
    monkeypatch.setenv("DANCECAM_HOME", str(tmp_path / "models"))
    with pytest.raises(ModelMissingError, match=r"models/det_10g\.onnx is missing.*dancecam models download scrfd_10g"):
        SCRFD()


def test_rejects_bad_images(detector: SCRFD) -> None:
    with pytest.raises(ValueError, match="uint8"):
        detector(torch.zeros((64, 64, 3)))
    with pytest.raises(ValueError, match="uint8"):
        detector(torch.zeros((64, 64), dtype=torch.uint8))


@pytest.mark.gpu
def test_cuda_matches_cpu(fake_model: Path, detector: SCRFD) -> None:
    gpu = SCRFD(fake_model, device="cuda")
    assert gpu.device.type == "cuda"
    for kind in ("1280x720", "portrait-720x1280", "astronaut-640"):
        image = _frame(kind)
        ours = gpu(image_tensor(image, "cuda"))
        assert ours.boxes.device.type == ours.scores.device.type == ours.landmarks.device.type == "cuda"
        cpu = detector(image_tensor(image, "cpu"))
        # Same letterbox values (integer levels), network on ORT either way; only float rounding in decoding can
        # differ (e.g. CUDA divides by the scale as a multiplication by its reciprocal).
        _assert_same(ours.to("cpu"), cpu)
    # Black frame: no candidate at all on the device path either.
    assert len(gpu(torch.zeros((480, 640, 3), dtype=torch.uint8, device="cuda"))) == 0
    # Non-integer scale: bilinear may differ by a rounding step at exact .5 levels; the faces must still agree.
    image = faces.astronaut()
    ours, cpu = gpu(image_tensor(image, "cuda")).to("cpu"), detector(image_tensor(image, "cpu"))
    assert abs(len(ours) - len(cpu)) <= 1
