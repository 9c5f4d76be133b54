"""ArcFace identity encoder FaceDancer was trained with (`ArcFace-Res50.h5`), a PyTorch port.

Design notes: docs/design-notes.md, section engines/arcface.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engines import registry
from engines.convert.cache import load_converted
from engines.convert.keras_h5 import KerasGraph, KerasLayer, WeightTaker, read_keras_h5
from engines.errors import CheckpointFormatError

KERAS_RESNET_BN_EPS = 1.001e-5
MODEL_NAME = "arcface_r50"  # its registry entry: file, licence, input size, normalisation, template


# --- blocks -----------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, eps: float, project: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, stride)
        self.bn1 = nn.BatchNorm2d(width, eps=eps)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width, eps=eps)
        self.conv3 = nn.Conv2d(width, 4 * width, 1)
        self.bn3 = nn.BatchNorm2d(4 * width, eps=eps)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, 4 * width, 1, stride), nn.BatchNorm2d(4 * width, eps=eps)) if project else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x if self.shortcut is None else self.shortcut(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + r)


@dataclass(frozen=True)
class HeadLayer:
    kind: str  # "batchnorm" | "dropout" | "flatten" | "dense" | "global_avg_pool"
    units: int = 0  # dense: outputs; batchnorm: channels
    eps: float = 0.0  # batchnorm
    bias: bool = True  # dense


class Flatten(nn.Module):
    """Keras Flatten: NHWC element order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


# --- model ------------------------------------------------------------------------------------------------


def _default_head() -> tuple[HeadLayer, ...]:
    return (
        HeadLayer("batchnorm", 2048, 1e-3),
        HeadLayer("dropout"),
        HeadLayer("flatten"),
        HeadLayer("dense", 512),
        HeadLayer("batchnorm", 512, 1e-3),
    )


@dataclass(frozen=True)
class ArcFaceConfig:
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)  # bottleneck widths; a stage outputs 4x its width
    stem_width: int = 64
    bn_eps: float = KERAS_RESNET_BN_EPS
    input_size: int = field(default_factory=lambda: registry.data_config(MODEL_NAME).input_size)
    head: tuple[HeadLayer, ...] = field(default_factory=_default_head)

    def to_dict(self) -> dict[str, object]:
        return {
            "blocks": list(self.blocks),
            "widths": list(self.widths),
            "stem_width": self.stem_width,
            "bn_eps": self.bn_eps,
            "input_size": self.input_size,
            "head": [vars(h) for h in self.head],
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ArcFaceConfig:
        return cls(
            blocks=tuple(d["blocks"]),  # type: ignore[arg-type]
            widths=tuple(d["widths"]),  # type: ignore[arg-type]
            stem_width=int(d["stem_width"]),  # type: ignore[arg-type]
            bn_eps=float(d["bn_eps"]),  # type: ignore[arg-type]
            input_size=int(d["input_size"]),  # type: ignore[arg-type]
            head=tuple(HeadLayer(**h) for h in d["head"]),  # type: ignore[union-attr]
        )


class ArcFace(nn.Module):
    """(B, 3, 112, 112) RGB in [0, 1] → (B, 512) identity embedding, as the official model outputs it."""

    def __init__(self, config: ArcFaceConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ArcFaceConfig()
        self.conv1 = nn.Conv2d(3, cfg.stem_width, 7, 2, padding=3)  # ZeroPadding2D(3) + valid conv
        self.bn1 = nn.BatchNorm2d(cfg.stem_width, eps=cfg.bn_eps)
        stages, cin = [], cfg.stem_width
        for s, (n, width) in enumerate(zip(cfg.blocks, cfg.widths, strict=True)):
            blocks = []
            for b in range(n):
                stride = 2 if (b == 0 and s > 0) else 1
                blocks.append(Bottleneck(cin, width, stride, cfg.bn_eps, project=b == 0))
                cin = 4 * width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        head: list[nn.Module] = []
        features, flat = cin, False
        for h in cfg.head:
            if h.kind == "batchnorm":
                head.append((nn.BatchNorm1d if flat else nn.BatchNorm2d)(h.units, eps=h.eps))
            elif h.kind == "dropout":
                head.append(nn.Identity())  # inference only
            elif h.kind == "flatten":
                head.append(Flatten())
                side = -(-cfg.input_size // 32)  # 112 → 4
                features, flat = features * side * side, True
            elif h.kind == "global_avg_pool":
                head.extend([nn.AdaptiveAvgPool2d(1), nn.Flatten()])
                flat = True
            elif h.kind == "dense":
                head.append(nn.Linear(features, h.units, bias=h.bias))
                features, flat = h.units, True
            else:
                raise ValueError(f"unknown head layer kind {h.kind!r}")
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)  # ZeroPadding2D(1) + MaxPooling2D(3, 2), valid
        return self.head(self.stages(x))


# --- checkpoint filter: Keras graph → state dict ----------------------------------------------------------

_PASS = {"Identity", "InputLayer"}


def checkpoint_filter_fn(graph: KerasGraph) -> tuple[ArcFaceConfig, dict[str, torch.Tensor]]:
    """Map a Keras-applications ResNet50 + embedding head graph onto `ArcFace`, reading depth, widths, BN eps and
    the head from the file."""
    take, src = WeightTaker(graph), graph.source
    images = [n for n in graph.inputs if len(graph[n].config.get("batch_input_shape") or []) == 4]
    if len(images) != 1:
        raise CheckpointFormatError(f"{src}: expected one image input, got {graph.inputs}")
    input_size = int(graph[images[0]].config["batch_input_shape"][1] or registry.data_config(MODEL_NAME).input_size)

    node = _skip_passthrough(graph, images[0])
    pad = graph.only_consumer(node, "ZeroPadding2D")
    conv1 = graph.only_consumer(pad.name, "Conv2D")
    _expect(conv1, src, kernel=7, stride=2)
    take.conv(conv1, "conv1", 7)
    bn1 = graph.only_consumer(conv1.name, "BatchNormalization")
    eps = float(bn1.config.get("epsilon", 1e-3))
    take.batch_norm(bn1, "bn1")
    relu = _relu_after(graph, bn1.name)
    pool = graph.only_consumer(graph.only_consumer(relu, "ZeroPadding2D").name, "MaxPooling2D")
    x = pool.name

    blocks: list[int] = []
    widths: list[int] = []
    while True:
        convs = [c for c in graph.consumers(x, "Conv2D") if _kernel(c) == 1]
        adds = graph.consumers(x, "Add")
        if len(convs) == 2 or (len(convs) == 1 and len(adds) == 1):
            project = len(convs) == 2
            if project:
                blocks.append(0)
            if not blocks:
                raise CheckpointFormatError(f"{src}: the first residual block after {x!r} has no projection shortcut")
            key = f"stages.{len(blocks) - 1}.{blocks[-1]}"
            stride = 2 if project and len(blocks) > 1 else 1  # Keras ResNet v1: stages after the first halve
            x, width = _bottleneck(graph, take, x, convs, key, eps, project, stride)
            if project:
                widths.append(width)
            blocks[-1] += 1
        else:
            break

    head = _head(graph, take, x, "head", src)
    config = ArcFaceConfig(
        blocks=tuple(blocks),
        widths=tuple(widths),
        stem_width=int(conv1.config["filters"]),
        bn_eps=eps,
        input_size=input_size,
        head=head,
    )
    return config, take.finish(ArcFace(config))


def _skip_passthrough(graph: KerasGraph, name: str) -> str:
    while True:
        nxt = graph.consumers(name)
        if len(nxt) == 1 and nxt[0].class_name in _PASS:
            name = nxt[0].name
        else:
            return name


def _kernel(layer: KerasLayer) -> int:
    return int(layer.config["kernel_size"][0])


def _expect(layer: KerasLayer, src: str, kernel: int, stride: int) -> None:
    if _kernel(layer) != kernel or int(layer.config.get("strides", [1])[0]) != stride:
        raise CheckpointFormatError(f"{src}: layer {layer.name!r} is not a {kernel}x{kernel}/{stride} convolution")


def _relu_after(graph: KerasGraph, name: str) -> str:
    act = graph.only_consumer(name, ("Activation", "ReLU"))
    if act.class_name == "Activation" and act.config.get("activation") != "relu":
        raise CheckpointFormatError(
            f"{graph.source}: activation {act.name!r} is {act.config.get('activation')}, not relu"
        )
    return act.name


def _check_eps(layer: KerasLayer, eps: float, src: str) -> None:
    if abs(float(layer.config.get("epsilon", 1e-3)) - eps) > 1e-12:
        raise CheckpointFormatError(
            f"{src}: BatchNormalization {layer.name!r} has epsilon {layer.config.get('epsilon')}; "
            f"the rest of the backbone uses {eps}"
        )


def _bottleneck(
    graph: KerasGraph,
    take: WeightTaker,
    x: str,
    convs: list[KerasLayer],
    key: str,
    eps: float,
    project: bool,
    stride: int,
) -> tuple[str, int]:
    src = graph.source
    main = short = None
    for conv in convs:  # the shortcut's BatchNorm feeds the Add directly; the main path's feeds a ReLU
        bn = graph.only_consumer(conv.name, "BatchNormalization")
        if graph.consumers(bn.name, "Add"):
            short = (conv, bn)
        else:
            main = (conv, bn)
    if main is None or (project and short is None):
        raise CheckpointFormatError(f"{src}: cannot tell the main path from the shortcut after {x!r}")
    conv_a, bn_a = main
    conv_b = graph.only_consumer(_relu_after(graph, bn_a.name), "Conv2D")
    bn_b = graph.only_consumer(conv_b.name, "BatchNormalization")
    conv_c = graph.only_consumer(_relu_after(graph, bn_b.name), "Conv2D")
    bn_c = graph.only_consumer(conv_c.name, "BatchNormalization")
    add = graph.only_consumer(bn_c.name, "Add")
    expected_inputs = {bn_c.name, short[1].name if short else x}
    if set(add.inbound) != expected_inputs:
        raise CheckpointFormatError(
            f"{src}: residual Add {add.name!r} joins {add.inbound}, expected {sorted(expected_inputs)}"
        )
    _expect(conv_a, src, kernel=1, stride=stride)
    if short is not None:
        _expect(short[0], src, kernel=1, stride=stride)
    if conv_b.config.get("padding") != "same":
        raise CheckpointFormatError(f"{src}: layer {conv_b.name!r} is not a 'same' 3x3 convolution")
    for i, (conv, bn, k) in enumerate(((conv_a, bn_a, 1), (conv_b, bn_b, 3), (conv_c, bn_c, 1)), start=1):
        _check_eps(bn, eps, src)
        take.conv(conv, f"{key}.conv{i}", k)
        take.batch_norm(bn, f"{key}.bn{i}")
    if short is not None:
        _check_eps(short[1], eps, src)
        take.conv(short[0], f"{key}.shortcut.0", 1)
        take.batch_norm(short[1], f"{key}.shortcut.1")
    return _relu_after(graph, add.name), int(conv_a.config["filters"])


def _head(graph: KerasGraph, take: WeightTaker, x: str, key: str, src: str) -> tuple[HeadLayer, ...]:
    head: list[HeadLayer] = []
    index = 0
    while x not in graph.outputs:
        nxt = graph.consumers(x)
        if len(nxt) != 1:
            raise CheckpointFormatError(f"{src}: the embedding head branches after {x!r}")
        layer = nxt[0]
        cls = layer.class_name
        if cls == "BatchNormalization":
            units = int(layer.weights[-1][1].shape[0]) if layer.weights else 0
            head.append(HeadLayer("batchnorm", units, float(layer.config.get("epsilon", 1e-3))))
            take.batch_norm(layer, f"{key}.{index}")
            index += 1
        elif cls == "Dropout":
            head.append(HeadLayer("dropout"))
            index += 1
        elif cls == "Flatten":
            head.append(HeadLayer("flatten"))
            index += 1
        elif cls == "GlobalAveragePooling2D":
            head.append(HeadLayer("global_avg_pool"))
            index += 2
        elif cls == "Dense":
            if layer.config.get("activation", "linear") != "linear":
                raise CheckpointFormatError(
                    f"{src}: head Dense {layer.name!r} has activation {layer.config['activation']}"
                )
            head.append(HeadLayer("dense", int(layer.config["units"]), bias=bool(layer.config.get("use_bias", True))))
            take.dense(layer, f"{key}.{index}")
            index += 1
        else:
            raise CheckpointFormatError(f"{src}: unsupported layer {layer.name!r} ({cls}) in the embedding head")
        x = layer.name
    return tuple(head)


# --- loading ----------------------------------------------------------------------------------------------


def convert_keras_file(
    path: Path, progress: Callable[[int, int], None] | None = None
) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    config, state = checkpoint_filter_fn(read_keras_h5(path, progress=progress))
    return config.to_dict(), state


def load_arcface(path: str | Path, device: torch.device | str = "cpu") -> ArcFace:
    """ArcFace in eval mode (float32) from `ArcFace-Res50.h5` (converted once, cached beside it) or its cache."""
    config, state = load_converted(Path(path), "arcface", convert_keras_file)
    model = ArcFace(ArcFaceConfig.from_dict(config))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
