"""Legacy Keras HDF5 model files, read with h5py alone (no TensorFlow).

Design notes: docs/design-notes.md, section engines/convert/keras_h5.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.errors import CheckpointFormatError

# tensorflow-addons registered its layers under a package prefix in older Keras versions
_CLASS_ALIASES = {"Addons>InstanceNormalization": "InstanceNormalization"}
_CONTAINERS = {"Functional", "Model", "Sequential"}
# what h5py raises for a damaged file (an unreadable object header, a bad B-tree, short data), and what a
# model_config of the wrong shape raises while it is walked
_H5_ERRORS = (KeyError, OSError, ValueError, TypeError, RuntimeError)


@dataclass
class KerasLayer:
    name: str
    class_name: str
    config: dict[str, Any]
    inbound: list[str]  # producer layer names, in call order, keyword tensors last (first call only)
    weights: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (tensor name, array), file order

    def weight_suffixes(self) -> list[str]:
        return [w.rsplit("/", 1)[-1].split(":")[0] for w, _ in self.weights]


@dataclass
class KerasGraph:
    layers: dict[str, KerasLayer]
    inputs: list[str]
    outputs: list[str]
    source: str = ""
    _consumers: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._consumers = {name: [] for name in self.layers}
        for layer in self.layers.values():
            for producer in layer.inbound:
                if producer not in self.layers:
                    raise CheckpointFormatError(
                        f"{self.source}: layer {layer.name!r} takes input from unknown layer {producer!r}"
                    )
                self._consumers[producer].append(layer.name)

    def __getitem__(self, name: str) -> KerasLayer:
        return self.layers[name]

    def consumers(self, name: str, class_name: str | Iterable[str] | None = None) -> list[KerasLayer]:
        wanted = {class_name} if isinstance(class_name, str) else set(class_name or ())
        found = [self.layers[c] for c in self._consumers[name]]
        return [c for c in found if not wanted or c.class_name in wanted]

    def only_consumer(self, name: str, class_name: str | Iterable[str]) -> KerasLayer:
        found = self.consumers(name, class_name)
        if len(found) != 1:
            raise CheckpointFormatError(
                f"{self.source}: after layer {name!r} expected one {class_name} layer, found "
                f"{[c.name for c in self.consumers(name)]} (not the expected architecture)"
            )
        return found[0]


def read_keras_h5(path: str | Path, progress: Callable[[int, int], None] | None = None) -> KerasGraph:
    """The layer graph and weights of a full-model Keras `.h5` file; `progress(done, total)` per layer group."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointFormatError(
            f"{path} is not a readable HDF5 file ({e}); it may be truncated: delete it and download it again"
        ) from e
    # every read of the file is inside: a damaged object header fails at the first attribute or group read
    with f:
        try:
            layers, inputs, outputs = _read_graph(f, str(path), progress)
        except _H5_ERRORS as e:
            raise CheckpointFormatError(
                f"{path} is damaged or not a Keras model file ({e}); delete it and download it again"
            ) from e
    return KerasGraph({layer.name: layer for layer in layers}, inputs, outputs, source=str(path))


def _read_graph(
    f: Any, source: str, progress: Callable[[int, int], None] | None
) -> tuple[list[KerasLayer], list[str], list[str]]:
    raw = f.attrs.get("model_config")
    if raw is None:
        raise CheckpointFormatError(
            f"{source} has no model_config: it holds weights only (save_weights). DanceCam needs the full model "
            "file as released (e.g. FaceDancer_config_c_HQ.h5)."
        )
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError as e:
        raise CheckpointFormatError(f"{source}: model_config is not valid JSON ({e})") from e
    root = f.get("model_weights", f)
    layers, inputs, outputs = _flatten(config, prefix="", source=source)
    _attach_weights(root, layers, source, progress)
    return layers, inputs, outputs


def _flatten(model: dict[str, Any], prefix: str, source: str) -> tuple[list[KerasLayer], list[str], list[str]]:
    """The layers of a (possibly nested) functional model config, with nested models inlined."""
    if model.get("class_name") not in _CONTAINERS:
        raise CheckpointFormatError(f"{source}: top-level class {model.get('class_name')!r} is not a Keras model")
    cfg = model["config"]
    layers: list[KerasLayer] = []
    # a nested model used as a layer is replaced by its layers; references to it point at its output
    alias: dict[str, str] = {}
    nested_inputs: dict[str, list[str]] = {}

    for spec in cfg["layers"]:
        name = prefix + spec.get("name", spec["config"]["name"])
        cls = _CLASS_ALIASES.get(spec["class_name"], spec["class_name"])
        nodes = spec.get("inbound_nodes") or []
        if len(nodes) > 1:
            raise CheckpointFormatError(
                f"{source}: layer {name!r} is called {len(nodes)} times; shared layers are not supported"
            )
        inbound = [prefix + n for n in _node_producers(nodes[0], source, name)] if nodes else []
        if cls in _CONTAINERS:
            inner, inner_in, inner_out = _flatten(spec, prefix=name + "/", source=source)
            if len(inner_out) != 1:
                raise CheckpointFormatError(f"{source}: nested model {name!r} must have one output")
            layers.extend(inner)
            alias[name] = inner_out[0]
            nested_inputs[name] = inbound
            # the nested model's input layers take the outer producers as their input
            for inp, producer in zip(inner_in, inbound, strict=False):
                for layer in inner:
                    if layer.name == inp:
                        layer.inbound = [producer]
                        layer.class_name = "Identity"
            continue
        layers.append(KerasLayer(name, cls, spec.get("config", {}), inbound))

    for layer in layers:
        layer.inbound = [alias.get(n, n) for n in layer.inbound]
    inputs = [prefix + _io_name(x) for x in cfg.get("input_layers", [])]
    outputs = [alias.get(prefix + _io_name(x), prefix + _io_name(x)) for x in cfg.get("output_layers", [])]
    return layers, inputs, outputs


def _node_producers(entries: Any, source: str, name: str) -> list[str]:
    """The layers a call reads: each entry's tensor, then the tensors among its keyword arguments."""
    # Keras 2 serialises the first argument's tensors as [layer, node index, tensor index, kwargs]; every later
    # argument goes into kwargs, a tensor there as [layer, node index, tensor index] (`m * m_hat` becomes a
    # TFOpLambda `tf.math.multiply` called as [m, 0, 0, {"y": [m_hat, 0, 0], "name": null}])
    producers: list[str] = []
    keyword: list[str] = []
    for entry in entries if isinstance(entries, list) else [entries]:
        if not (isinstance(entry, list) and entry and isinstance(entry[0], str)):
            raise CheckpointFormatError(
                f"{source}: layer {name!r} has inbound nodes in an unsupported format: {entry!r}"
            )
        producers.append(entry[0])
        kwargs = entry[3] if len(entry) > 3 and isinstance(entry[3], dict) else {}
        keyword += [v[0] for v in kwargs.values() if _is_tensor_ref(v) and v[0] not in keyword]
    return producers + keyword


def _is_tensor_ref(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in value[1:])
    )


def _io_name(entry: Any) -> str:
    return entry[0] if isinstance(entry, list) else str(entry)


def _attach_weights(
    root: Any, layers: list[KerasLayer], source: str, progress: Callable[[int, int], None] | None
) -> None:
    """Give each layer its tensors, in the order of its group's `weight_names`."""
    by_name = {layer.name: layer for layer in layers}
    groups = _strings(root.attrs.get("layer_names", []))
    for i, group_name in enumerate(groups):
        if progress is not None:
            progress(i + 1, len(groups))
        group = root[group_name]
        names = _strings(group.attrs.get("weight_names", []))
        if not names:
            continue
        if group_name in by_name:
            by_name[group_name].weights = [(n, np.asarray(group[n])) for n in names]
            continue
        # a nested model's group: tensors are named "<inner layer>/<tensor>:0"
        for n in names:
            inner = f"{group_name}/{n.rsplit('/', 1)[0]}"
            if inner not in by_name:
                raise CheckpointFormatError(f"{source}: weights {group_name}/{n} belong to no layer in model_config")
            by_name[inner].weights.append((n, np.asarray(group[n])))


def _strings(values: Iterable[Any]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class WeightTaker:
    """Hands out each layer's tensors in torch layout, exactly once, with shapes checked."""

    def __init__(self, graph: KerasGraph) -> None:
        self.graph = graph
        self.taken: set[str] = set()
        self.state: dict[str, torch.Tensor] = {}
        self.origin: dict[str, str] = {}  # state-dict key → the Keras layer it came from

    def _take(self, layer: KerasLayer, expected: list[str]) -> list[np.ndarray]:
        if layer.name in self.taken:
            raise CheckpointFormatError(f"{self.graph.source}: layer {layer.name!r} would be used twice")
        suffixes = layer.weight_suffixes()
        if suffixes != expected:
            raise CheckpointFormatError(
                f"{self.graph.source}: layer {layer.name!r} ({layer.class_name}) has tensors {suffixes}, "
                f"expected {expected}"
            )
        self.taken.add(layer.name)
        return [w for _, w in layer.weights]

    def _put(self, key: str, array: np.ndarray, layer: KerasLayer) -> None:
        if key in self.state:
            raise CheckpointFormatError(f"{self.graph.source}: {key} filled twice (from layer {layer.name!r})")
        self.state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        self.origin[key] = layer.name

    def conv(self, layer: KerasLayer, key: str, kernel_size: int | None = None) -> None:
        if layer.class_name != "Conv2D":
            raise CheckpointFormatError(f"{self.graph.source}: layer {layer.name!r} is {layer.class_name}, not Conv2D")
        ks = tuple(layer.config.get("kernel_size", ()))
        if kernel_size is not None and ks != (kernel_size, kernel_size):
            raise CheckpointFormatError(
                f"{self.graph.source}: layer {layer.name!r} has kernel {ks}, expected {kernel_size}"
            )
        expected = ["kernel", "bias"] if layer.config.get("use_bias", True) else ["kernel"]
        arrays = self._take(layer, expected)
        self._put(f"{key}.weight", arrays[0].transpose(3, 2, 0, 1), layer)  # HWIO → OIHW
        if len(arrays) == 2:
            self._put(f"{key}.bias", arrays[1], layer)

    def dense(self, layer: KerasLayer, key: str) -> None:
        kernel, bias = self._take(layer, ["kernel", "bias"])
        self._put(f"{key}.weight", kernel.T, layer)  # (in, out) → (out, in)
        self._put(f"{key}.bias", bias, layer)

    def norm(self, layer: KerasLayer, key: str) -> None:
        gamma, beta = self._take(layer, ["gamma", "beta"])
        self._put(f"{key}.weight", gamma, layer)
        self._put(f"{key}.bias", beta, layer)

    def batch_norm(self, layer: KerasLayer, key: str) -> None:
        cfg = layer.config
        affine = (["gamma"] if cfg.get("scale", True) else []) + (["beta"] if cfg.get("center", True) else [])
        names = [*affine, "moving_mean", "moving_variance"]
        arrays = dict(zip(names, self._take(layer, names), strict=True))
        channels = arrays["moving_mean"].shape[0]
        self._put(f"{key}.weight", arrays.get("gamma", np.ones(channels, np.float32)), layer)
        self._put(f"{key}.bias", arrays.get("beta", np.zeros(channels, np.float32)), layer)
        self._put(f"{key}.running_mean", arrays["moving_mean"], layer)
        self._put(f"{key}.running_var", arrays["moving_variance"], layer)

    def adain(self, layer: KerasLayer, key: str) -> None:
        # two Dense sub-layers in creation order: the first gives the scale, the second the shift
        k1, b1, k2, b2 = self._take(layer, ["kernel", "bias", "kernel", "bias"])
        self._put(f"{key}.scale.weight", k1.T, layer)
        self._put(f"{key}.scale.bias", b1, layer)
        self._put(f"{key}.shift.weight", k2.T, layer)
        self._put(f"{key}.shift.bias", b2, layer)

    def finish(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Check that every tensor of the file was used and every parameter of `model` filled, shapes equal."""
        unused = [n for n, layer in self.graph.layers.items() if layer.weights and n not in self.taken]
        if unused:
            raise CheckpointFormatError(f"{self.graph.source}: tensors of layers {unused} were not used")
        expected = model.state_dict()
        missing = [k for k in expected if k not in self.state and not k.endswith("num_batches_tracked")]
        extra = [k for k in self.state if k not in expected]
        if missing or extra:
            raise CheckpointFormatError(f"{self.graph.source}: missing tensors {missing}, unexpected {extra}")
        for k, v in self.state.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise CheckpointFormatError(
                    f"{self.graph.source}: layer {self.origin[k]!r} gives {k} the shape {tuple(v.shape)}, "
                    f"the model needs {tuple(expected[k].shape)}"
                )
        return self.state


def activation_slope(layer: KerasLayer) -> float:
    cfg = layer.config
    return float(cfg.get("alpha", cfg.get("negative_slope", 0.3)))
