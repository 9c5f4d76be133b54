"""ONNX export of FaceDancer's generator and ArcFace: the io's names, a dynamic batch axis, float32.

Design notes: docs/design-notes.md, section engines/runners/onnx_export.py.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from engines.runners.base import NetworkIO

BATCH_AXIS = "batch"
Exporter = Literal["torchscript", "dynamo"]


def sample_feeds(
    io: NetworkIO, batch: int, seed: int = 0, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Random float32 inputs in each network's range: images in [-1, 1] (FaceDancer) or [0, 1] (ArcFace), w from
    N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    feeds = {}
    for spec in io.inputs:
        shape = (batch, *spec.shape[1:])
        if len(shape) == 4:
            t = torch.rand(shape, generator=g)
            t = t * 2 - 1 if io.network == "facedancer" else t
        else:
            t = torch.randn(shape, generator=g)
        feeds[spec.name] = t.to(device)
    return feeds


def export_onnx(
    model: nn.Module, io: NetworkIO, path: str | os.PathLike[str], opset: int = 17, exporter: Exporter = "torchscript"
) -> Path:
    """Write `model` as ONNX to `path` (atomically: a reader sees the old file or the whole new one) and check it.

    The export runs on a float32, contiguous-format CPU copy, so the caller's model (any device, dtype or memory
    format) is left as it is and the graph has no layout transposes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reference = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()
    # batch 2, not 1: a trace at batch 1 could bake broadcasting over the batch axis into the graph
    args = tuple(sample_feeds(io, 2).values())
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad():
            _EXPORTERS[exporter](reference, io, args, tmp, opset)
        import onnx

        proto = onnx.load(str(tmp))
        _inline_identity_initializers(proto)
        _name_batch_axes(proto, io)
        onnx.save(proto, str(tmp))
        check_onnx(tmp, io)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _export_torchscript(
    model: nn.Module, io: NetworkIO, args: tuple[torch.Tensor, ...], path: Path, opset: int
) -> None:
    names = (*io.input_names, *io.output_names)
    with warnings.catch_warnings():
        # the deprecation notice, and the tracer's note on FaceDancer's `w` broadcast check: the graph takes one
        # w per crop, which `NetworkIO.check_feeds` already requires
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        # nn.InstanceNorm2d without running stats: ONNX's InstanceNormalization always uses the input's statistics
        warnings.filterwarnings("ignore", message=".*operator 'instance_norm' is set to train=True")
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            input_names=list(io.input_names),
            output_names=list(io.output_names),
            opset_version=opset,
            dynamic_axes={n: {0: BATCH_AXIS} for n in names},
            do_constant_folding=True,
        )


def _export_dynamo(model: nn.Module, io: NetworkIO, args: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError as e:
        raise RuntimeError("the dynamo ONNX exporter needs onnxscript: pip install onnxscript") from e
    import inspect

    batch = torch.export.Dim(BATCH_AXIS, min=1, max=io.max_batch)
    params = list(inspect.signature(model.forward).parameters)[: len(args)]
    program = torch.onnx.export(
        model,
        args,
        dynamo=True,
        input_names=list(io.input_names),
        output_names=list(io.output_names),
        opset_version=opset,
        dynamic_shapes={p: {0: batch} for p in params},
        external_data=False,
    )
    assert program is not None
    program.save(str(path), external_data=False)


_EXPORTERS = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}


def _inline_identity_initializers(proto: Any) -> None:
    """Rewire consumers of `Identity(initializer)` to the initializer and drop the Identity (see module docs)."""
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in initializers and n.output[0] not in outputs
    }
    if not alias:
        return
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(kept)


def _name_batch_axes(proto: Any, io: NetworkIO) -> None:
    for value in (*proto.graph.input, *proto.graph.output):
        if value.name in (*io.input_names, *io.output_names):
            value.type.tensor_type.shape.dim[0].dim_param = BATCH_AXIS


def check_onnx(path: str | os.PathLike[str], io: NetworkIO) -> None:
    """onnx.checker (with shape inference), then the graph's inputs and outputs against `io`: names in order,
    float32, a symbolic batch axis and the io's other dimensions. ValueError says what differs."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    for kind, values, specs in (("inputs", inputs, io.inputs), ("outputs", graph.output, io.outputs)):
        names = [v.name for v in values]
        if names != [s.name for s in specs]:
            raise ValueError(f"{path}: {kind} {names}, expected {[s.name for s in specs]}")
        for value, spec in zip(values, specs, strict=True):
            t = value.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            want = [BATCH_AXIS, *spec.shape[1:]]
            if t.elem_type != onnx.TensorProto.FLOAT or dims != want:
                kind = onnx.TensorProto.DataType.Name(t.elem_type)
                raise ValueError(f"{path}: {spec.name} is {kind} {dims}, expected FLOAT {want}")


def weights_fingerprint(model: nn.Module) -> str:
    """A cheap fingerprint of the weights (every tensor's name, shape and first values): it tells two random
    initialisations, or a mislabelled weights key, apart without hashing 90 MB."""
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        head = t.detach().flatten()[:64].to("cpu", torch.float64).numpy().tobytes()
        digest.update(f"{name}{tuple(t.shape)}".encode() + head)
    return digest.hexdigest()[:12]


def cache_name(model: nn.Module, io: NetworkIO, weights_key: str, opset: int = 17) -> str:
    """`<network>-<weights key>-<fingerprint>-<io>-opset<N>-torch<version>.onnx`: anything that changes the graph
    or its weights changes the name."""
    spec = repr((io.inputs, io.outputs)).encode()
    io_tag = hashlib.sha256(spec).hexdigest()[:8]
    parts = (
        io.network,
        weights_key[:16],
        weights_fingerprint(model),
        io_tag,
        f"opset{opset}",
        f"torch{torch.__version__}",
    )
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts)) + ".onnx"


def cached_onnx(
    model: nn.Module, io: NetworkIO, cache_dir: str | os.PathLike[str], weights_key: str, opset: int = 17
) -> Path:
    """The ONNX file for these weights in `cache_dir`, exported once: a restart finds it and skips the export."""
    path = Path(cache_dir) / cache_name(model, io, weights_key, opset)
    if path.is_file():
        try:
            check_onnx(path, io)
            return path
        except Exception:  # a damaged or foreign file under our name: export afresh
            pass
    return export_onnx(model, io, path, opset)


def max_abs_error(
    model: nn.Module, io: NetworkIO, path: str | os.PathLike[str], batches: Sequence[int] = (1, 3, 8), seed: int = 0
) -> dict[int, float]:
    """ONNX Runtime (CPU) against torch eager fp32 on CPU, per batch size: the largest absolute difference."""
    from engines.runners.eager import EagerRunner
    from engines.runners.onnxruntime import OnnxRuntimeRunner

    errors = {}
    with EagerRunner(model, io) as eager, OnnxRuntimeRunner(path, io) as ort:
        for batch in batches:
            feeds = sample_feeds(io, batch, seed + batch)
            want, got = eager.infer(feeds), ort.infer(feeds)
            errors[batch] = max(float((got[n] - want[n]).abs().max()) for n in io.output_names)
    return errors


@dataclass(frozen=True, slots=True)
class ExportedGraph:
    path: Path
    io: NetworkIO
    max_abs_error: dict[int, float]  # ONNX Runtime vs torch fp32 per batch size


def export_for_users(
    model: nn.Module, out_dir: str | os.PathLike[str], stem: str, opset: int = 17, check_batches: Sequence[int] = (1, 3)
) -> list[ExportedGraph]:
    """A converted FaceDancer or ArcFace as standalone ONNX files in `out_dir`, each checked against torch.

    FaceDancer gives two graphs: `<stem>.onnx` (target crops + w → swapped crops) and `<stem>-mapping.onnx`
    (ArcFace z_id → w, run once per source); ArcFace gives `<stem>.onnx` (aligned 112x112 faces → z_id).
    Dynamic batch 1..max_batch, float32, the names of `engines.runners.base`.
    """
    from engines.arcface import ArcFace
    from engines.facedancer import FaceDancer
    from engines.runners.base import arcface_io, facedancer_io, mapping_io

    out = Path(out_dir)
    graphs: list[tuple[nn.Module, NetworkIO, Path]]
    if isinstance(model, FaceDancer):
        cfg = model.config
        graphs = [
            (model, facedancer_io(cfg.mapping_width, cfg.image_size), out / f"{stem}.onnx"),
            (model.mapping, mapping_io(cfg.z_dim, cfg.mapping_width), out / f"{stem}-mapping.onnx"),
        ]
    elif isinstance(model, ArcFace):
        graphs = [(model, arcface_io(), out / f"{stem}.onnx")]
    else:
        raise TypeError(f"exports FaceDancer or ArcFace, not {type(model).__name__}")
    done = []
    for network, io, path in graphs:
        export_onnx(network, io, path, opset)
        done.append(ExportedGraph(path, io, max_abs_error(network, io, path, check_batches)))
    return done
