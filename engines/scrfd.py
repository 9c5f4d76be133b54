"""SCRFD-10GF with 5 landmarks, the face detector of insightface's buffalo_l pack (`det_10g.onnx`).

Two parts, so that a TensorRT backend can later replace only the network call:

- a runner turns the (1, 3, S, S) float32 input into the 9 raw outputs. `OnnxRuntimeRunner` is the one here; its
  input/output contract (names, shapes, element type) is checked when the model is loaded.
- letterboxing before and decoding + NMS after run in torch on the detector's device, and give `Detections` in
  the original image's pixel coordinates, best score first.

Facts matched to insightface's `model_zoo/scrfd.py` (the reference the tests compare against):
- Letterbox: keep the aspect ratio, fit inside S x S, image at the top-left, zero padding. The new size is
  truncated (`int`) and the scale back is new_height / height, as there. Bilinear resize with half-pixel
  centres (cv2 INTER_LINEAR geometry), rounded to integer levels because cv2 resizes uint8 images; identical to
  cv2 for unchanged sizes and integer downscales (2x, 3x), within one grey level otherwise.
- Input RGB, (x - 127.5) / 128.
- Outputs: scores (N, 1) for strides 8, 16, 32, then box distances (N, 4), then keypoint distances (N, 10); N =
  2 anchors per location, location-major (row, column, anchor). Distances are in stride units; anchor centres
  are (column, row) * stride, the same for both anchors.
- Boxes: centre -/+ distances (left, top, right, bottom); keypoints: centre + (dx, dy) per point.
- Keep scores >= 0.5; NMS at IoU 0.4 with the "+1" pixel area convention, in original image coordinates;
  optional max_num: the largest faces near the image centre (area - 2 * squared offset from the centre).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from engines.detect import Detections
from engines.errors import CheckpointFormatError, ImageError, ModelMissingError
from engines.nms import nms

MODEL_NAME = "scrfd_10g"
STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
INPUT_MEAN = 127.5
INPUT_STD = 128.0
# Tensor names of det_10g.onnx (sha256-pinned in engines.registry), in insightface's output order.
INPUT_NAME = "input.1"
SCORE_NAMES = ("448", "471", "494")
BOX_NAMES = ("451", "474", "497")
KPS_NAMES = ("454", "477", "500")
CHANNELS = {"score": 1, "box": 4, "kps": 10}


# --- contract ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # at the detector's input size
    dtype: str = "tensor(float)"  # ONNX Runtime's type string


@dataclass(frozen=True, slots=True)
class NetworkContract:
    """What the network must take and give, by name; outputs in decoding order (scores, boxes, keypoints)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)


def anchor_count(input_size: int, stride: int) -> int:
    return (input_size // stride) ** 2 * NUM_ANCHORS


def scrfd_contract(input_size: int = 640) -> NetworkContract:
    """det_10g's contract at an S x S input: `input.1` (1, 3, S, S) -> 9 rank-2 outputs (anchors, channels)."""
    if input_size % max(STRIDES):
        raise ValueError(f"input_size must be a multiple of {max(STRIDES)}, got {input_size}")
    outputs = [
        TensorSpec(name, (anchor_count(input_size, stride), CHANNELS[kind]))
        for kind, names in (("score", SCORE_NAMES), ("box", BOX_NAMES), ("kps", KPS_NAMES))
        for name, stride in zip(names, STRIDES, strict=True)
    ]
    return NetworkContract((TensorSpec(INPUT_NAME, (1, 3, input_size, input_size)),), tuple(outputs))


def _static(dim: Any) -> int | None:
    return int(dim) if isinstance(dim, (int, np.integer)) and int(dim) > 0 else None


def check_contract(
    contract: NetworkContract, inputs: Sequence[Any], outputs: Sequence[Any], source: str = "model"
) -> None:
    """Raise CheckpointFormatError unless the declared tensors (objects with .name, .shape, .type, as ONNX Runtime
    reports them) fit the contract.

    Symbolic dims are accepted. When the model's input size is symbolic (det_10g's is), the anchor counts its
    outputs declare are only the export-time annotation and are checked at run time instead; channel counts
    are always checked.
    """
    problems: list[str] = []

    def names(items: Sequence[Any]) -> list[str]:
        return [t.name for t in items]

    want_in = [t.name for t in contract.inputs]
    if names(inputs) != want_in:
        problems.append(f"inputs {names(inputs)}, expected {want_in}")
    if sorted(names(outputs)) != sorted(contract.output_names):
        problems.append(f"outputs {names(outputs)}, expected {list(contract.output_names)}")
    if problems:
        raise CheckpointFormatError(f"{source} is not SCRFD-10GF with keypoints (det_10g.onnx): " + "; ".join(problems))

    declared = {t.name: t for t in (*inputs, *outputs)}
    dynamic_input = any(_static(d) is None for d in declared[contract.inputs[0].name].shape[2:])
    checks = [(spec, False) for spec in contract.inputs] + [(spec, dynamic_input) for spec in contract.outputs]
    for spec, skip_anchor_axis in checks:
        got = declared[spec.name]
        shape = list(got.shape)
        if got.type != spec.dtype:
            problems.append(f"{spec.name}: element type {got.type}, expected {spec.dtype}")
        if len(shape) != len(spec.shape):
            problems.append(f"{spec.name}: shape {shape}, expected {list(spec.shape)}")
            continue
        for axis, (dim, want) in enumerate(zip(shape, spec.shape, strict=True)):
            if not (skip_anchor_axis and axis == 0) and _static(dim) not in (None, want):
                problems.append(f"{spec.name}: shape {shape}, expected {list(spec.shape)}")
                break
    if problems:
        raise CheckpointFormatError(f"{source} does not match SCRFD's contract: " + "; ".join(problems))


# --- runners ----------------------------------------------------------------------------------------------


class Runner(Protocol):
    """A network backend: device tensors in and out, by name."""

    contract: NetworkContract

    def infer(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def close(self) -> None: ...


class OnnxRuntimeRunner:
    """ONNX Runtime behind the runner interface. CPU provider; on a CUDA device, the CUDA provider when this
    onnxruntime build has it (inputs and outputs bound to torch's device memory, no host copies), else the CPU
    provider with one copy each way.
    """

    def __init__(
        self,
        path: str | Path,
        contract: NetworkContract,
        device: torch.device | str = "cpu",
        session_options: Any = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.contract = contract
        self.device = torch.device(device)
        on_cuda = self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        providers: list[Any] = ["CPUExecutionProvider"]
        self._stream: torch.cuda.Stream | None = None
        if on_cuda:
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", index)
            self._stream = torch.cuda.current_stream(self.device)
            # ORT queues its kernels on torch's stream, so no synchronisation is needed between them.
            cuda_options = {"device_id": index, "user_compute_stream": str(self._stream.cuda_stream)}
            providers = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
        try:
            self._session: Any = ort.InferenceSession(str(self.path), sess_options=session_options, providers=providers)
        except Exception as e:  # ORT raises its own exception types for unreadable or invalid graphs
            raise CheckpointFormatError(f"{self.path}: ONNX Runtime cannot load it: {e}") from e
        check_contract(contract, self._session.get_inputs(), self._session.get_outputs(), str(self.path))
        self.providers: list[str] = list(self._session.get_providers())
        self._io_binding = on_cuda and self.providers[0] == "CUDAExecutionProvider"

    def infer(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for spec in self.contract.inputs:
            t = feeds[spec.name]
            if tuple(t.shape) != spec.shape or t.dtype != torch.float32:
                raise ValueError(f"{spec.name}: expected float32 {spec.shape}, got {t.dtype} {tuple(t.shape)}")
        if self._session is None:
            raise RuntimeError("runner is closed")
        out = self._infer_bound(feeds) if self._io_binding else self._infer_host(feeds)
        for spec in self.contract.outputs:
            if tuple(out[spec.name].shape) != spec.shape:
                raise CheckpointFormatError(
                    f"{self.path}: output {spec.name} has shape {tuple(out[spec.name].shape)}, expected {spec.shape}"
                )
        return out

    def _infer_host(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        arrays = {k: v.detach().to("cpu").contiguous().numpy() for k, v in feeds.items()}
        results = self._session.run(list(self.contract.output_names), arrays)
        return {
            name: torch.from_numpy(r).to(self.device, non_blocking=True)
            for name, r in zip(self.contract.output_names, results, strict=True)
        }

    def _infer_bound(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        index = self.device.index
        current = torch.cuda.current_stream(self.device)
        if current != self._stream:  # inputs were written on another stream than the one ORT uses
            current.synchronize()
        binding = self._session.io_binding()
        inputs = {k: v.to(self.device).contiguous() for k, v in feeds.items()}
        for name, t in inputs.items():
            binding.bind_input(name, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        out = {s.name: torch.empty(s.shape, dtype=torch.float32, device=self.device) for s in self.contract.outputs}
        for name, t in out.items():
            binding.bind_output(name, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        self._session.run_with_iobinding(binding)
        return out

    def close(self) -> None:
        self._session = None

    def __enter__(self) -> OnnxRuntimeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- pre- and post-processing -----------------------------------------------------------------------------


def letterbox_size(height: int, width: int, input_size: int) -> tuple[int, int, float]:
    """(new_height, new_width, scale) as insightface computes them: truncated sizes, scale from the height."""
    im_ratio = float(height) / width
    if im_ratio > 1.0:
        new_height = input_size
        new_width = int(new_height / im_ratio)
    else:
        new_width = input_size
        new_height = int(new_width * im_ratio)
    if new_height < 1 or new_width < 1:
        raise ImageError(f"a {width}x{height} image is too elongated to detect faces in")
    return new_height, new_width, float(new_height) / height


def resize_levels(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W, C) uint8 -> (1, C, height, width) float32 holding integer levels: bilinear with half-pixel centres
    (cv2 INTER_LINEAR's geometry, no antialiasing), rounded half up as cv2's fixed point rounds its uint8 output."""
    x = image.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    if (height, width) == tuple(image.shape[:2]):
        return x
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return torch.floor(x + 0.5)


def letterbox(image: torch.Tensor, input_size: int = 640) -> tuple[torch.Tensor, float]:
    """An (H, W, 3) uint8 RGB image -> the (1, 3, S, S) float32 network input and the scale back to the image."""
    new_height, new_width, scale = letterbox_size(int(image.shape[0]), int(image.shape[1]), input_size)
    x = resize_levels(image, new_height, new_width)
    # Padding is black pixels, normalised like the image.
    blob = torch.full((1, 3, input_size, input_size), -INPUT_MEAN / INPUT_STD, dtype=torch.float32, device=x.device)
    blob[:, :, :new_height, :new_width] = (x - INPUT_MEAN) / INPUT_STD
    return blob, scale


def anchor_centers(input_size: int, stride: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, 2) float32 anchor centres (x, y) in input pixels, location-major, each repeated for both anchors."""
    n = input_size // stride
    ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    centers = torch.stack((xs, ys), -1).reshape(-1, 2).to(torch.float32) * stride
    return centers.repeat_interleave(NUM_ANCHORS, dim=0).to(device)


def decode(
    outputs: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor], score_threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw outputs (scores x3, boxes x3, keypoints x3, per stride) -> candidates above the threshold, in input
    pixels: boxes (K, 4), scores (K,), keypoints (K, 5, 2), in stride order then anchor order (not sorted).
    """
    k = len(STRIDES)
    scores = torch.cat([outputs[i].reshape(-1) for i in range(k)])
    # Distances are in stride units; multiply before adding, in float32, as the reference does.
    centers = torch.cat(list(anchors))
    dist = torch.cat([outputs[k + i].reshape(-1, 4) * s for i, s in enumerate(STRIDES)])
    kps = torch.cat([outputs[2 * k + i].reshape(-1, 10) * s for i, s in enumerate(STRIDES)])
    keep = torch.nonzero(scores >= score_threshold).squeeze(1)  # the one host sync: how many candidates
    c, d = centers[keep], dist[keep]
    boxes = torch.cat((c - d[:, :2], c + d[:, 2:]), dim=1)
    points = c.unsqueeze(1) + kps[keep].reshape(-1, 5, 2)
    return boxes, scores[keep], points


def select_faces(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    landmarks: torch.Tensor,
    image_size: tuple[int, int],
    nms_threshold: float,
    max_num: int = 0,
) -> Detections:
    """Candidates in image coordinates -> NMS (insightface's +1 areas) -> optional max_num -> best score first."""
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes, scores, landmarks = boxes[order], scores[order], landmarks[order]
    keep = nms(boxes, scores, nms_threshold, offset=1.0)
    if max_num > 0 and keep.numel() > max_num:
        b = boxes[keep]
        height, width = image_size
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        dx = (b[:, 0] + b[:, 2]) / 2 - width // 2
        dy = (b[:, 1] + b[:, 3]) / 2 - height // 2
        # Prefer large faces near the centre, as insightface's default metric does.
        chosen = torch.argsort(area - (dx * dx + dy * dy) * 2.0, descending=True)[:max_num]
        keep = keep[torch.sort(chosen).values]  # back to score order
    return Detections(boxes[keep].contiguous(), scores[keep].contiguous(), landmarks[keep].contiguous())


# --- detector ---------------------------------------------------------------------------------------------


def default_model_path() -> Path:
    from engines import registry, store

    path = store.file_path(registry.find(MODEL_NAME), store.resolve_model_dir())
    assert path is not None  # a downloadable entry always has a place in the model directory
    return path


class SCRFD:
    """SCRFD face detector (FaceDetector protocol): faces in one (H, W, 3) uint8 RGB image on `device`."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: torch.device | str = "cpu",
        input_size: int = 640,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        *,
        max_num: int = 0,
        runner: Runner | None = None,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.input_size = int(input_size)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_num = int(max_num)
        contract = scrfd_contract(self.input_size)
        if runner is None:
            path = Path(model_path) if model_path is not None else default_model_path()
            if not path.is_file():
                raise ModelMissingError(
                    f"SCRFD model {path} is missing: run `dancecam models download {MODEL_NAME}` "
                    f"(or place det_10g.onnx there)"
                )
            runner = OnnxRuntimeRunner(path, contract, self.device)
        elif runner.contract != contract:
            raise ValueError("the runner's contract does not match this detector's input size")
        self.runner = runner
        self.contract = contract
        self._anchors = [anchor_centers(self.input_size, s, self.device) for s in STRIDES]

    def __call__(self, image: torch.Tensor) -> Detections:
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {tuple(image.shape)} {image.dtype}")
        if image.device != self.device:
            raise ValueError(f"image is on {image.device}, the detector on {self.device}")
        blob, scale = letterbox(image, self.input_size)
        out = self.runner.infer({self.contract.inputs[0].name: blob})
        boxes, scores, landmarks = decode(
            [out[n] for n in self.contract.output_names], self._anchors, self.score_threshold
        )
        if scores.numel() == 0:
            return Detections.empty(self.device)
        # Back to image pixels before NMS: the +1 area convention makes NMS scale-dependent, as in the reference.
        return select_faces(
            boxes / scale,
            scores,
            landmarks / scale,
            (int(image.shape[0]), int(image.shape[1])),
            self.nms_threshold,
            self.max_num,
        )

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> SCRFD:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
