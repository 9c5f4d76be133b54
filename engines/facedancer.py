"""FaceDancer generator (Rosberg et al., WACV 2023), a PyTorch port of the official Keras model.

Design notes: docs/design-notes.md, section engines/facedancer.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from engines import registry
from engines.convert.cache import load_converted
from engines.convert.keras_h5 import KerasGraph, KerasLayer, WeightTaker, activation_slope, read_keras_h5
from engines.errors import CheckpointFormatError

SkipType = Literal["no_skip", "affa", "d_affa", "do_affa", "concat", "add"]
SKIP_TYPES: tuple[str, ...] = ("no_skip", "affa", "d_affa", "do_affa", "concat", "add")
# the six fusion stages (official names of the AFFA mask convs), at 16, 32, 64, 128, 256 px and the last
STAGE_NAMES = ("16x16", "32x32", "64x64", "128x128", "256x256", "final")
INSTANCE_NORM_EPS = 1e-3
MODEL_NAME = "facedancer_c_hq"  # its registry entry: file, licence, input size, normalisation, template

# --- normalisation ----------------------------------------------------------------------------------------


class InstanceNorm(nn.Module):
    """tensorflow-addons InstanceNormalization: per sample and channel, biased variance, eps 1e-3, affine.

    Computed as one statistics pass and one multiply-add (`centred` exposes the per-channel scale and shift so
    AdaIN can fold into the same multiply-add); this keeps channels_last tensors as they are, where
    `F.instance_norm` copies them. Statistics are float32 even for half inputs (see `_spatial_mean_var`).
    """

    def __init__(self, channels: int, eps: float = INSTANCE_NORM_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def centred(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(d, scale, shift) with IN(x) = d·scale + shift; scale and shift (B, C, 1, 1) float32.

        float32: d is x itself. Half: d = x − m, m the mean rounded to half (the map the statistics already
        made), so the shift stays small: x·scale + shift would subtract two large fp16 numbers where
        |mean| >> std (error ~2⁻¹¹·|mean|/std) and overflow once |mean|·scale passes 65504."""
        mean, var, m, d = _spatial_mean_var(x, centred=True)
        scale = self.weight.float()[:, None, None] * torch.rsqrt(var + self.eps)
        offset = mean if m is None else mean - m.float()
        return d, scale, self.bias.float()[:, None, None] - offset * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, scale, shift = self.centred(x)
        return torch.addcmul(shift.to(x.dtype), d, scale.to(x.dtype))


def _spatial_mean_var(x: torch.Tensor, centred: bool = False) -> Any:
    """Per (sample, channel) float32 mean and biased variance, each (B, C, 1, 1), reducing along the axis that is
    contiguous in memory: several times faster on the CPU than `torch.var_mean`, whose Welford loop does not
    vectorise over H and W. With `centred`, also (m, d): for half input the mean rounded to half and x − m in x's
    layout (the deviations the variance is taken from), for float32 (None, x).

    float32 input: two passes, exact (unlike E[x²] − mean²). Half input: fp16 statistics lose accuracy and
    (x − mean)² overflows fp16 once a deviation passes 256, but a float32 copy of the map costs several times the
    memory traffic of the rest of the normalisation. So the sums accumulate in float32 straight from half tensors
    (on CUDA a reduction from half to float32 reads the half data, no copy): the mean, then the squares of the
    deviations from that mean rounded to half (a half subtraction of nearby values, nearly exact, so nothing
    cancels even where |mean| >> std), corrected for the rounding: var = E[(x − m)²] − (mean − m)²."""
    b, c, h, w = x.shape

    def rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
        if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
            return t.permute(0, 2, 3, 1).reshape(b, h * w, c), 1
        return t.reshape(b, c, h * w), 2

    v, dim = rows(x)
    if v.dtype in (torch.float16, torch.bfloat16):
        mean = v.mean(dim, keepdim=True, dtype=torch.float32)
        m = mean.reshape(b, c, 1, 1).to(x.dtype)
        d = x - m  # in x's memory format
        dv, dim = rows(d)
        sq = torch.linalg.vector_norm(dv, 2, dim, keepdim=True, dtype=torch.float32).square_().div_(h * w)
        mean = mean.reshape(b, c, 1, 1)
        var = sq.reshape(b, c, 1, 1).sub_((mean - m.float()).square_()).clamp_min_(0.0)
        return (mean, var, m, d) if centred else (mean, var)
    v = v.float()
    mean = v.mean(dim, keepdim=True)
    var = (v - mean).square_().mean(dim, keepdim=True)
    mean, var = mean.reshape(b, c, 1, 1), var.reshape(b, c, 1, 1)
    return (mean, var, None, x) if centred else (mean, var)


class AdaIN(nn.Module):
    """Identity injection: y = scale(w)·x + shift(w), with per-channel scale and shift from two linear maps."""

    def __init__(self, channels: int, w_dim: int) -> None:
        super().__init__()
        self.scale = nn.Linear(w_dim, channels)
        self.shift = nn.Linear(w_dim, channels)

    def coefficients(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale(w)[:, :, None, None], self.shift(w)[:, :, None, None]

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        scale, shift = self.coefficients(w)
        return scale * x + shift


# --- blocks -----------------------------------------------------------------------------------------------


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def _conv1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1)


def _up2(x: torch.Tensor) -> torch.Tensor:
    # Keras UpSampling2D(interpolation='bilinear') resizes with half-pixel centres
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, resample: bool = True) -> None:
        super().__init__()
        self.norm = InstanceNorm(cin)
        self.conv = _conv3(cin, cout)
        self.shortcut = _conv1(cin, cout)
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.leaky_relu(self.norm(x), 0.2))
        if not self.resample:
            return y + self.shortcut(x)
        # a 1x1 convolution commutes with average pooling: pool first, convolve a quarter of the pixels
        return F.avg_pool2d(y, 2) + self.shortcut(F.avg_pool2d(x, 2))


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, w_dim: int, resample: bool = True) -> None:
        super().__init__()
        self.norm = InstanceNorm(cin)
        self.adain = AdaIN(cin, w_dim)
        self.conv = _conv3(cin, cout)
        self.shortcut = _conv1(cin, cout)
        self.resample = resample

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        r = self.shortcut(x)
        # IN then AdaIN, folded: s·(d·a + b) + t = d·(s·a) + (s·b + t), one pass over the (centred) map
        d, a, b = self.norm.centred(x)
        s, t = (c.float() for c in self.adain.coefficients(w))
        x = self.conv(F.leaky_relu(torch.addcmul((s * b + t).to(x.dtype), d, (s * a).to(x.dtype)), 0.2))
        # bilinear upsampling is linear: up(x) + up(r) = up(x + r), one resize instead of two
        return _up2(x + r) if self.resample else x + r


class AFFA(nn.Module):
    """Adaptive feature fusion attention: a per-pixel, per-channel gate between encoder skip and decoder."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3(2 * channels, channels // 4)
        self.norm = InstanceNorm(channels // 4)
        self.mask = _conv1(channels // 4, channels)

    def gate(self, skip: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        m = self.norm(F.leaky_relu(self.conv(torch.cat([skip, dec], dim=1)), 0.2))
        return torch.sigmoid(self.mask(m))

    def forward(self, skip: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        m = self.gate(skip, dec)
        return skip + m * (dec - skip)  # (1 - m)·skip + m·dec with one fewer pass over memory


class DoubleAFFA(nn.Module):
    """The `do_affa` variant: the channel gate is modulated by a second, single-channel gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.hat_conv = _conv3(2 * channels, channels)
        self.hat_norm = InstanceNorm(channels)
        self.hat_mask = _conv1(channels, 1)
        self.conv = _conv3(2 * channels, channels)
        self.norm = InstanceNorm(channels)
        self.mask = _conv1(channels, channels)

    def forward(self, skip: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        c = torch.cat([skip, dec], dim=1)
        m_hat = torch.sigmoid(self.hat_mask(self.hat_norm(F.leaky_relu(self.hat_conv(c), 0.2))))
        m = torch.sigmoid(self.mask(self.norm(F.leaky_relu(self.conv(c), 0.2))))
        m = m * m_hat
        return skip + m * (dec - skip)


class FusionStage(nn.Module):
    """One decoder stage: fuse the encoder skip into the decoder features (per `skip`), then an up block."""

    def __init__(self, skip: SkipType, channels: int, cout: int, w_dim: int, resample: bool) -> None:
        super().__init__()
        self.skip = skip
        self.attention: nn.Module | None = None
        self.attention2: nn.Module | None = None
        if skip == "affa":
            self.attention = AFFA(channels)
        elif skip == "d_affa":
            self.attention, self.attention2 = AFFA(channels), AFFA(channels)
        elif skip == "do_affa":
            self.attention = DoubleAFFA(channels)
        cin = 2 * channels if skip == "concat" else channels
        self.block = UpBlock(cin, cout, w_dim, resample)

    def forward(self, skip: torch.Tensor, dec: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.skip == "no_skip":
            x = dec
        elif self.skip == "concat":
            x = torch.cat([skip, dec], dim=1)
        elif self.skip == "add":
            x = skip + dec
        else:
            assert self.attention is not None
            x = self.attention(skip, dec)
            if self.attention2 is not None:  # d_affa: a second gate between the skip and the first result
                x = self.attention2(skip, x)
        return self.block(x, w)


class MappingNetwork(nn.Module):
    """z_id (512) → w: `depth` linear layers of `width`, LeakyReLU(0.2) between them."""

    def __init__(self, z_dim: int = 512, width: int = 256, depth: int = 4) -> None:
        super().__init__()
        dims = [z_dim] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            z = layer(z)
            if i < len(self.layers) - 1:
                z = F.leaky_relu(z, 0.2)
        return z


# --- model ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceDancerConfig:
    skips: tuple[str, ...] = ("no_skip", "no_skip", "affa", "affa", "affa", "concat")
    # encoder outputs x0 .. x6; the decoder mirrors them (stage k fuses x_{5-k} and outputs x_{4-k}'s width)
    widths: tuple[int, ...] = (64, 128, 256, 512, 512, 512, 512)
    mapping_width: int = 256
    mapping_depth: int = 4
    z_dim: int = 512
    image_size: int = field(default_factory=lambda: registry.data_config(MODEL_NAME).input_size)

    def __post_init__(self) -> None:
        if len(self.skips) != len(STAGE_NAMES) or any(s not in SKIP_TYPES for s in self.skips):
            raise ValueError(f"skips must be {len(STAGE_NAMES)} of {SKIP_TYPES}, got {self.skips}")
        if self.mapping_depth < 1:
            raise ValueError("mapping_depth must be >= 1")
        if len(self.widths) != 7 or any(w < 4 or w % 4 for w in self.widths):
            raise ValueError(f"widths must be 7 multiples of 4, got {self.widths}")

    def to_dict(self) -> dict[str, object]:
        return {
            "skips": list(self.skips),
            "widths": list(self.widths),
            "mapping_width": self.mapping_width,
            "mapping_depth": self.mapping_depth,
            "z_dim": self.z_dim,
            "image_size": self.image_size,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> FaceDancerConfig:
        return cls(**{**d, "skips": tuple(d["skips"]), "widths": tuple(d["widths"])})  # type: ignore[arg-type]


class FaceDancer(nn.Module):
    def __init__(self, config: FaceDancerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or FaceDancerConfig()
        w_dim = cfg.mapping_width
        self.mapping = MappingNetwork(cfg.z_dim, cfg.mapping_width, cfg.mapping_depth)
        e = cfg.widths
        self.stem = _conv3(3, e[0])
        self.encoder = nn.ModuleList(DownBlock(e[i], e[i + 1], resample=i < 5) for i in range(6))
        self.bottleneck = UpBlock(e[6], e[5], w_dim, resample=False)
        # stage k fuses encoder output x_{5-k} (x5 .. x0) into decoder features of the same width
        outs = (*e[4::-1], 3)
        self.decoder = nn.ModuleList(
            FusionStage(skip, e[5 - k], outs[k], w_dim, resample=k < 5)  # type: ignore[arg-type]
            for k, skip in enumerate(cfg.skips)
        )

    def map_identity(self, z_id: torch.Tensor) -> torch.Tensor:
        """The source's w: run once per source identity, not per frame."""
        return self.mapping(z_id)

    def forward(self, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """target (B, 3, 256, 256) in [-1, 1]; w (B, width) or (1, width) from `map_identity`. Linear output."""
        if w.shape[0] != target.shape[0]:
            if w.shape[0] != 1:
                raise ValueError(
                    f"w has {w.shape[0]} rows for {target.shape[0]} crops: pass 1 (shared) or one per crop"
                )
            w = w.expand(target.shape[0], -1)
        x = self.stem(target)
        skips = [x]
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        dec = self.bottleneck(skips[-1], w)
        for k, stage in enumerate(self.decoder):
            dec = stage(skips[5 - k], dec, w)
        return dec


# --- configs ----------------------------------------------------------------------------------------------

CONFIGS: dict[str, FaceDancerConfig] = {
    "config_c": FaceDancerConfig(),
    "config_c_512": FaceDancerConfig(mapping_width=512),
}


def facedancer(name: str = "config_c") -> FaceDancer:
    """A randomly initialised FaceDancer of a named configuration (weights: `load_facedancer`)."""
    return FaceDancer(CONFIGS[name])


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- checkpoint filter: official Keras graph → state dict ---------------------------------------------------


def checkpoint_filter_fn(graph: KerasGraph) -> tuple[FaceDancerConfig, dict[str, torch.Tensor]]:
    """Map the official Keras generator graph onto this module: the config (skip types, widths, mapping width
    and depth) is read from the graph, and every tensor is placed by the layer's position in it."""
    take = WeightTaker(graph)
    src = graph.source
    images = [n for n in graph.inputs if len(_input_shape(graph[n])) == 4]
    codes = [n for n in graph.inputs if len(_input_shape(graph[n])) == 2]
    if len(images) != 1 or len(codes) != 1:
        raise CheckpointFormatError(f"{src}: expected one image input and one identity input, got {graph.inputs}")

    # mapping network: a chain of Dense layers (LeakyReLU between) from the identity input
    dense: list[KerasLayer] = []
    node = codes[0]
    while len(nxt := graph.consumers(node, ("Dense", "LeakyReLU"))) == 1 and len(graph.consumers(node)) == 1:
        if nxt[0].class_name == "Dense":
            dense.append(nxt[0])
        else:
            _check_slope(nxt[0], src)
        node = nxt[0].name
    if not dense:
        raise CheckpointFormatError(f"{src}: no mapping network after input {codes[0]!r}")
    w_node = dense[-1].name
    for i, layer in enumerate(dense):
        take.dense(layer, f"mapping.layers.{i}")

    # encoder
    stem = graph.only_consumer(images[0], "Conv2D")
    take.conv(stem, "stem", 3)
    skips, widths = [stem.name], [int(stem.config["filters"])]
    for i in range(6):
        out, width, resample = _down_block(graph, take, skips[-1], f"encoder.{i}")
        if resample != (i < 5):
            raise CheckpointFormatError(f"{src}: encoder block {i} ends at layer {out!r} with unexpected resampling")
        skips.append(out)
        widths.append(width)

    # decoder
    dec = _up_block(graph, take, skips[6], "bottleneck", w_node, resample=False)
    kinds: list[str] = []
    for k in range(6):
        kind, x = _fusion(graph, take, skips[5 - k], dec, f"decoder.{k}.attention")
        kinds.append(kind)
        dec = _up_block(graph, take, x, f"decoder.{k}.block", w_node, resample=k < 5)
    if dec not in graph.outputs:
        raise CheckpointFormatError(f"{src}: the decoder ends at {dec!r}, but the model's output is {graph.outputs}")

    config = FaceDancerConfig(
        skips=tuple(kinds),
        widths=tuple(widths),
        mapping_width=int(dense[-1].config["units"]),
        mapping_depth=len(dense),
        z_dim=int(_input_shape(graph[codes[0]])[-1]),
        image_size=int(_input_shape(graph[images[0]])[1] or registry.data_config(MODEL_NAME).input_size),
    )
    return config, take.finish(FaceDancer(config))


def _input_shape(layer: KerasLayer) -> list[int | None]:
    cfg = layer.config
    return list(cfg.get("batch_input_shape") or cfg.get("batch_shape") or [])


def _check_slope(layer: KerasLayer, src: str) -> None:
    if abs(activation_slope(layer) - 0.2) > 1e-6:
        raise CheckpointFormatError(
            f"{src}: layer {layer.name!r} has LeakyReLU slope {activation_slope(layer)}, not 0.2"
        )


def _kernel(layer: KerasLayer) -> int:
    return int(layer.config["kernel_size"][0])


def _residual(
    graph: KerasGraph, x: str, *, adain: bool, take: WeightTaker, key: str, w_node: str | None
) -> tuple[str, int, bool]:
    """One residual block starting at layer `x`: (its output layer, output width, whether it resamples)."""
    src = graph.source
    norm = graph.only_consumer(x, "InstanceNormalization")
    shortcut = [c for c in graph.consumers(x, "Conv2D") if _kernel(c) == 1]
    if len(shortcut) != 1:
        raise CheckpointFormatError(f"{src}: block after {x!r} has no single 1x1 shortcut convolution")
    _check_eps(norm, src)
    take.norm(norm, f"{key}.norm")
    node = norm
    if adain:
        node = graph.only_consumer(norm.name, "AdaIN")
        if node.inbound[1:] != [w_node]:
            raise CheckpointFormatError(f"{src}: AdaIN layer {node.name!r} is not fed by the mapping network")
        take.adain(node, f"{key}.adain")
    act = graph.only_consumer(node.name, "LeakyReLU")
    _check_slope(act, src)
    conv = graph.only_consumer(act.name, "Conv2D")
    take.conv(conv, f"{key}.conv", 3)
    take.conv(shortcut[0], f"{key}.shortcut", 1)
    resampler = "UpSampling2D" if adain else "AveragePooling2D"
    main, side = graph.consumers(conv.name), graph.consumers(shortcut[0].name)
    resample = len(main) == 1 and main[0].class_name == resampler
    if resample:
        if adain and main[0].config.get("interpolation") != "bilinear":
            raise CheckpointFormatError(f"{src}: layer {main[0].name!r} does not upsample bilinearly")
        main = graph.consumers(main[0].name)
        side = graph.consumers(graph.only_consumer(shortcut[0].name, resampler).name)
    if len(main) != 1 or main[0].class_name != "Add" or [s.name for s in side] != [main[0].name]:
        raise CheckpointFormatError(f"{src}: block after {x!r} does not end in the expected Add")
    return main[0].name, int(conv.config["filters"]), resample


def _down_block(graph: KerasGraph, take: WeightTaker, x: str, key: str) -> tuple[str, int, bool]:
    return _residual(graph, x, adain=False, take=take, key=key, w_node=None)


def _up_block(graph: KerasGraph, take: WeightTaker, x: str, key: str, w_node: str, resample: bool) -> str:
    out, _, did = _residual(graph, x, adain=True, take=take, key=key, w_node=w_node)
    if did != resample:
        raise CheckpointFormatError(f"{graph.source}: decoder block ending at {out!r} has unexpected resampling")
    return out


def _check_eps(layer: KerasLayer, src: str) -> None:
    eps = float(layer.config.get("epsilon", INSTANCE_NORM_EPS))
    if abs(eps - INSTANCE_NORM_EPS) > 1e-12:
        raise CheckpointFormatError(f"{src}: InstanceNormalization {layer.name!r} has epsilon {eps}, expected 1e-3")


def _fusion(graph: KerasGraph, take: WeightTaker, skip: str, dec: str, key: str) -> tuple[str, str]:
    """Which skip type joins encoder output `skip` to decoder output `dec`, and the layer the up block reads."""
    src = graph.source
    if graph.consumers(dec, "InstanceNormalization"):
        return "no_skip", dec
    joins = [c for c in graph.consumers(dec, ("Concatenate", "Add")) if c.inbound == [skip, dec]]
    if len(joins) != 1:
        raise CheckpointFormatError(f"{src}: cannot tell how encoder layer {skip!r} joins decoder layer {dec!r}")
    join = joins[0]
    if join.class_name == "Add":
        return "add", join.name
    if graph.consumers(join.name, "InstanceNormalization"):
        return "concat", join.name
    convs = graph.consumers(join.name, "Conv2D")
    if len(convs) == 2:  # do_affa: a channel gate and a single-channel gate from the same concatenation
        return "do_affa", _double_gate(graph, take, join, skip, dec, key)
    out = _gate(graph, take, join, skip, dec, key)
    again = [c for c in graph.consumers(out, "Concatenate") if c.inbound == [skip, out]]
    if again:  # d_affa: a second gate between the skip and the first result
        return "d_affa", _gate(graph, take, again[0], skip, out, key + "2")
    return "affa", out


def _gate_branch(
    graph: KerasGraph, take: WeightTaker, conv: KerasLayer, key: str, names: tuple[str, str, str]
) -> KerasLayer:
    src = graph.source
    take.conv(conv, f"{key}.{names[0]}", 3)
    act = graph.only_consumer(conv.name, "LeakyReLU")
    _check_slope(act, src)
    norm = graph.only_consumer(act.name, "InstanceNormalization")
    _check_eps(norm, src)
    take.norm(norm, f"{key}.{names[1]}")
    mask = graph.only_consumer(norm.name, "Conv2D")
    if mask.config.get("activation") != "sigmoid":
        raise CheckpointFormatError(f"{src}: attention mask {mask.name!r} is not a sigmoid")
    take.conv(mask, f"{key}.{names[2]}", 1)
    return mask


def _gate(graph: KerasGraph, take: WeightTaker, join: KerasLayer, skip: str, dec: str, key: str) -> str:
    mask = _gate_branch(graph, take, graph.only_consumer(join.name, "Conv2D"), key, ("conv", "norm", "mask"))
    att = graph.only_consumer(mask.name, "AdaptiveAttention")
    if att.inbound != [mask.name, skip, dec]:
        raise CheckpointFormatError(
            f"{graph.source}: attention {att.name!r} mixes {att.inbound[1:]}, expected {[skip, dec]}"
        )
    return att.name


def _multiplies(layer: KerasLayer) -> bool:
    # the official `m * m_hat` is saved by Keras 2 as a TFOpLambda calling tf.math.multiply
    return layer.class_name == "Multiply" or (
        layer.class_name == "TFOpLambda" and layer.config.get("function") == "math.multiply"
    )


def _double_gate(graph: KerasGraph, take: WeightTaker, join: KerasLayer, skip: str, dec: str, key: str) -> str:
    masks = []
    for conv in graph.consumers(join.name, "Conv2D"):
        end = graph.only_consumer(
            graph.only_consumer(graph.only_consumer(conv.name, "LeakyReLU").name, "InstanceNormalization").name,
            "Conv2D",
        )
        masks.append((int(end.config["filters"]) == 1, conv))
    (_, hat), (_, full) = sorted(masks, key=lambda m: not m[0])
    hat_mask = _gate_branch(graph, take, hat, key, ("hat_conv", "hat_norm", "hat_mask"))
    mask = _gate_branch(graph, take, full, key, ("conv", "norm", "mask"))
    product = [c for c in graph.consumers(mask.name) if _multiplies(c) and set(c.inbound) == {mask.name, hat_mask.name}]
    if len(product) != 1:
        raise CheckpointFormatError(f"{graph.source}: the gates after {join.name!r} are not multiplied together")
    att = graph.only_consumer(product[0].name, "AdaptiveAttention")
    if att.inbound != [product[0].name, skip, dec]:
        raise CheckpointFormatError(f"{graph.source}: attention {att.name!r} mixes the wrong tensors")
    return att.name


# --- loading ----------------------------------------------------------------------------------------------


def convert_keras_file(
    path: Path, progress: Callable[[int, int], None] | None = None
) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    """Official `.h5` → (config dict, state dict), strictly."""
    config, state = checkpoint_filter_fn(read_keras_h5(path, progress=progress))
    return config.to_dict(), state


def load_facedancer(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
) -> FaceDancer:
    """A FaceDancer in eval mode from the official `.h5` (converted once, then cached as safetensors beside it)
    or from such a `.safetensors` cache."""
    config, state = load_converted(Path(path), "facedancer", lambda p: convert_keras_file(p, progress))
    model = FaceDancer(FaceDancerConfig.from_dict(config))
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()
