"""SCRFD-10GF with 5 landmarks, the face detector of insightface's buffalo_l pack (`det_10g.onnx`).

Two parts, so that another backend can replace only the network call:

Design notes: docs/design-notes.md, section engines/scrfd.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from engines import registry
from engines.command import dancecam
from engines.detect import Detections
from engines.errors import ImageError, ModelMissingError
from engines.nms import nms
from engines.registry import DataConfig
from engines.runners.base import IOSpec, NetworkIO, Runner

MODEL_NAME = "scrfd_10g"
STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
# Tensor names of det_10g.onnx (sha256-pinned in engines.registry), in insightface's output order.
INPUT_NAME = "input.1"
SCORE_NAMES = ("448", "471", "494")
BOX_NAMES = ("451", "474", "497")
KPS_NAMES = ("454", "477", "500")
CHANNELS = {"score": 1, "box": 4, "kps": 10}


# --- network I/O ------------------------------------------------------------------------------------------


def anchor_count(input_size: int, stride: int) -> int:
    return (input_size // stride) ** 2 * NUM_ANCHORS


def scrfd_io(input_size: int | None = None) -> NetworkIO:
    """det_10g at an S x S input (default: its registry entry's): `input.1` (1, 3, S, S) -> 9 outputs (anchors,
    channels), in decoding order (scores, boxes, keypoints; strides 8, 16, 32 each). No batch axis: one image per
    call."""
    input_size = input_size or registry.data_config(MODEL_NAME).input_size
    if input_size % max(STRIDES):
        raise ValueError(f"input_size must be a multiple of {max(STRIDES)}, got {input_size}")
    outputs = [
        IOSpec(name, (anchor_count(input_size, stride), CHANNELS[kind]))
        for kind, names in (("score", SCORE_NAMES), ("box", BOX_NAMES), ("kps", KPS_NAMES))
        for name, stride in zip(names, STRIDES, strict=True)
    ]
    return NetworkIO("scrfd", (IOSpec(INPUT_NAME, (1, 3, input_size, input_size)),), tuple(outputs), max_batch=1)


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


def letterbox(
    image: torch.Tensor, input_size: int | None = None, data: DataConfig | None = None
) -> tuple[torch.Tensor, float]:
    """An (H, W, 3) uint8 RGB image -> the (1, 3, S, S) float32 network input and the scale back to the image.

    `data`: size and normalisation (default: the registry entry's); `input_size` overrides its size."""
    data = data or registry.data_config(MODEL_NAME)
    input_size = input_size or data.input_size
    new_height, new_width, scale = letterbox_size(int(image.shape[0]), int(image.shape[1]), input_size)
    x = resize_levels(image, new_height, new_width)
    # Padding is black pixels, normalised like the image.
    blob = torch.full((1, 3, input_size, input_size), -data.mean / data.std, dtype=torch.float32, device=x.device)
    blob[:, :, :new_height, :new_width] = (x - data.mean) / data.std
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
        chosen = torch.argsort(area - (dx * dx + dy * dy) * 2.0, descending=True, stable=True)[:max_num]
        keep = keep[torch.sort(chosen).values]  # back to score order
    return Detections(boxes[keep].contiguous(), scores[keep].contiguous(), landmarks[keep].contiguous())


# --- detector ---------------------------------------------------------------------------------------------


def default_model_path() -> Path:
    from engines import store

    path = store.file_path(registry.find(MODEL_NAME), store.resolve_model_dir())
    assert path is not None  # a downloadable entry always has a place in the model directory
    return path


def require_model(path: Path) -> None:
    """ModelMissingError naming the download command unless det_10g.onnx is at `path`."""
    if not path.is_file():
        raise ModelMissingError(
            f"SCRFD model {path} is missing: run `{dancecam('models', 'download', MODEL_NAME)}` "
            "(or place det_10g.onnx there)"
        )


class SCRFD:
    """SCRFD face detector (FaceDetector protocol): faces in one (H, W, 3) uint8 RGB image on `device`."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: torch.device | str = "cpu",
        input_size: int | None = None,  # None: the registry entry's
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        *,
        max_num: int = 0,
        runner: Runner | None = None,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.data = registry.data_config(MODEL_NAME)
        self.input_size = int(input_size or self.data.input_size)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_num = int(max_num)
        io = scrfd_io(self.input_size)
        if runner is None:
            from engines.runners.onnxruntime import OnnxRuntimeRunner

            path = Path(model_path) if model_path is not None else default_model_path()
            require_model(path)
            runner = OnnxRuntimeRunner(path, io, self.device)
        elif runner.io != io:
            raise ValueError(
                f"the runner is for {runner.io.network} {runner.io.inputs}, not SCRFD at {self.input_size}"
            )
        runner.activate()  # load now: a bad file fails here, not on the first frame
        self.runner = runner
        self.io = io
        self._anchors = [anchor_centers(self.input_size, s, self.device) for s in STRIDES]

    def __call__(self, image: torch.Tensor) -> Detections:
        with torch.inference_mode():
            return self._detect(image)

    def _detect(self, image: torch.Tensor) -> Detections:
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {tuple(image.shape)} {image.dtype}")
        if image.device != self.device:
            raise ValueError(f"image is on {image.device}, the detector on {self.device}")
        blob, scale = letterbox(image, self.input_size, self.data)
        out = self.runner.infer({INPUT_NAME: blob})
        boxes, scores, landmarks = decode([out[n] for n in self.io.output_names], self._anchors, self.score_threshold)
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
