"""The Keras `.h5` converter, checked against an independent numpy forward pass of the file's own graph."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from engines.convert.cache import cache_path, convert_cached
from engines.convert.keras_h5 import read_keras_h5
from engines.errors import CheckpointFormatError
from engines.facedancer import FaceDancer, checkpoint_filter_fn, facedancer, load_facedancer
from tests.engines.keras_files import build_facedancer, damage_root_header, model_config, run_numpy, write_h5


def _compare(b, out, model: FaceDancer, image_size: int = 64, seed: int = 0) -> float:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (2, image_size, image_size, 3))
    z = rng.standard_normal((2, 512))
    ref = run_numpy(b, out, {"input_1": x, "input_2": z})
    with torch.no_grad():
        xt = torch.from_numpy(x).float().permute(0, 3, 1, 2)
        y = model(xt, model.map_identity(torch.from_numpy(z).float())).permute(0, 2, 3, 1).double().numpy()
    assert np.abs(ref).max() > 0.5  # a real signal, not zeros
    return float(np.abs(y - ref).max())


@pytest.mark.parametrize("norm_class", ["Addons>InstanceNormalization", "InstanceNormalization"])
def test_official_layout_converts_exactly(tmp_path: Path, norm_class: str) -> None:
    b, out = build_facedancer(np.random.default_rng(1), norm_class=norm_class)
    path = write_h5(tmp_path / "FaceDancer_test.h5", b, out)
    config, state = checkpoint_filter_fn(read_keras_h5(path))
    assert config.skips == ("no_skip", "no_skip", "affa", "affa", "affa", "concat")
    assert config.widths == (4, 8, 8, 16, 16, 16, 16)
    assert config.mapping_width == 16
    model = FaceDancer(config).eval()
    model.load_state_dict(state, strict=True)
    assert _compare(b, out, model) < 1e-4


@pytest.mark.parametrize(
    ("skips", "mapping_width", "depth"),
    [
        (("add", "no_skip", "d_affa", "do_affa", "affa", "concat"), 32, 4),
        (("affa", "affa", "affa", "affa", "affa", "concat"), 8, 2),
    ],
)
def test_other_skip_types_and_mapping_sizes_are_read_from_the_file(
    tmp_path: Path, skips: tuple[str, ...], mapping_width: int, depth: int
) -> None:
    b, out = build_facedancer(np.random.default_rng(2), skips=skips, mapping_width=mapping_width, mapping_depth=depth)
    config, state = checkpoint_filter_fn(read_keras_h5(write_h5(tmp_path / "m.h5", b, out)))
    assert config.skips == skips
    assert config.mapping_width == mapping_width
    assert config.mapping_depth == depth
    model = FaceDancer(config).eval()
    model.load_state_dict(state, strict=True)
    assert _compare(b, out, model, seed=3) < 1e-4


@pytest.mark.parametrize("product", ["tf_op", "layer"])
def test_do_affa_gates_multiplied_as_keras_writes_them(tmp_path: Path, product: str) -> None:
    """The official `m * m_hat` is saved as a TFOpLambda (`tf.math.multiply`, the second factor a keyword); a
    Multiply layer computes the same and is read too."""
    skips = ("no_skip", "no_skip", "do_affa", "affa", "affa", "concat")
    b, out = build_facedancer(np.random.default_rng(10), skips=skips, product=product)  # type: ignore[arg-type]
    path = write_h5(tmp_path / "m.h5", b, out)
    if product == "tf_op":
        with h5py.File(path, "r") as f:
            layers = json.loads(f.attrs["model_config"])["config"]["layers"]
        (op,) = [layer for layer in layers if layer["class_name"] == "TFOpLambda"]
        assert op["config"]["function"] == "math.multiply"
        assert op["inbound_nodes"] == [[["64x64", 0, 0, {"y": ["64x64_hat", 0, 0], "name": None}]]]
    config, state = checkpoint_filter_fn(read_keras_h5(path))
    assert config.skips == skips
    model = FaceDancer(config).eval()
    model.load_state_dict(state, strict=True)
    assert _compare(b, out, model, seed=11) < 1e-4


def test_full_size_config_c_file_loads_strictly_into_the_default_model(tmp_path: Path) -> None:
    b, out = build_facedancer(
        np.random.default_rng(4), widths=(64, 128, 256, 512, 512, 512, 512), mapping_width=256, image_size=256
    )
    config, state = checkpoint_filter_fn(read_keras_h5(write_h5(tmp_path / "full.h5", b, out)))
    model = facedancer("config_c")
    assert config == model.config
    model.load_state_dict(state, strict=True)
    assert sum(v.numel() for v in state.values()) == 22_473_254


# --- broken files -----------------------------------------------------------------------------------------


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    b, out = build_facedancer(np.random.default_rng(5))
    return write_h5(tmp_path / "m.h5", b, out)


def _edit(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    with h5py.File(path, "r+") as f:
        fn(f)


def test_missing_tensor_names_the_layer(small_file: Path) -> None:
    def drop_bias(f: h5py.File) -> None:
        g = f["model_weights/conv2d_5"]
        g.attrs["weight_names"] = np.array([b"conv2d_5/kernel:0"])
        del g["conv2d_5/bias:0"]

    _edit(small_file, drop_bias)
    with pytest.raises(CheckpointFormatError, match=r"conv2d_5.*\['kernel'\].*expected \['kernel', 'bias'\]"):
        checkpoint_filter_fn(read_keras_h5(small_file))


def test_wrong_shape_names_the_layer(small_file: Path) -> None:
    def widen(f: h5py.File) -> None:
        g = f["model_weights/dense_1"]
        del g["dense_1/bias:0"]
        g.create_dataset("dense_1/bias:0", data=np.zeros(17, np.float32))

    _edit(small_file, widen)
    with pytest.raises(CheckpointFormatError, match=r"'dense_1'.*shape \(17,\)"):
        checkpoint_filter_fn(read_keras_h5(small_file))


def test_unknown_layer_class_is_reported(small_file: Path) -> None:
    def rename(f: h5py.File) -> None:
        cfg = json.loads(f.attrs["model_config"])
        for layer in cfg["config"]["layers"]:
            if layer["name"] == "leaky_re_lu_4":
                layer["class_name"] = "PReLU"
        f.attrs["model_config"] = json.dumps(cfg).encode()

    _edit(small_file, rename)
    with pytest.raises(CheckpointFormatError, match="not the expected architecture"):
        checkpoint_filter_fn(read_keras_h5(small_file))


def test_unused_tensor_is_an_error(small_file: Path) -> None:
    def extra(f: h5py.File) -> None:
        g = f["model_weights"].create_group("orphan_dense")
        g.attrs["weight_names"] = np.array([b"orphan_dense/kernel:0"])
        g.create_dataset("orphan_dense/kernel:0", data=np.zeros((2, 2), np.float32))
        f["model_weights"].attrs["layer_names"] = np.array([*f["model_weights"].attrs["layer_names"], b"orphan_dense"])

    _edit(small_file, extra)
    with pytest.raises(CheckpointFormatError, match="orphan_dense"):
        read_keras_h5(small_file)


def test_truncated_file(small_file: Path) -> None:
    data = small_file.read_bytes()
    small_file.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointFormatError, match=r"truncated|damaged"):
        checkpoint_filter_fn(read_keras_h5(small_file))


def test_damaged_root_object_header(small_file: Path) -> None:
    """The file opens, but its root group's attributes cannot be read: one CheckpointFormatError, not a KeyError."""
    damage_root_header(small_file)
    with h5py.File(small_file, "r") as f, pytest.raises(KeyError):
        f.attrs.get("model_config")  # the damage this test is about, as h5py reports it
    with pytest.raises(CheckpointFormatError, match=r"is damaged.*download it again"):
        read_keras_h5(small_file)


def test_weights_only_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
    with pytest.raises(CheckpointFormatError, match="weights only"):
        read_keras_h5(path)


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "page.h5"
    path.write_text("<html>sign in</html>")
    with pytest.raises(CheckpointFormatError, match="not a readable HDF5 file"):
        read_keras_h5(path)


def test_layer_names_are_never_interpreted(tmp_path: Path) -> None:
    """Renaming every layer (keeping the graph) converts to the same weights."""
    rng = np.random.default_rng(6)
    b, out = build_facedancer(rng)
    _, ref = checkpoint_filter_fn(read_keras_h5(write_h5(tmp_path / "a.h5", b, out)))
    order = np.random.default_rng(7).permutation(len(b.layers))
    new = {layer.name: f"layer_{order[i]}" for i, layer in enumerate(b.layers)}
    for layer in b.layers:
        old = layer.name
        layer.name = layer.config["name"] = new[old]
        layer.inbound = [new[p] for p in layer.inbound]
        layer.tensor_kwargs = {k: new[p] for k, p in layer.tensor_kwargs.items()}
        layer.weights = [(w.replace(old + "/", layer.name + "/", 1), a) for w, a in layer.weights]
    b.inputs = [new[n] for n in b.inputs]
    _, renamed = checkpoint_filter_fn(read_keras_h5(write_h5(tmp_path / "b.h5", b, new[out])))
    assert ref.keys() == renamed.keys()
    assert all(torch.equal(ref[k], renamed[k]) for k in ref)


def test_model_config_is_the_truth_not_the_layers_list_order(tmp_path: Path) -> None:
    b, out = build_facedancer(np.random.default_rng(8))
    cfg = model_config(b, out)
    cfg["config"]["layers"].reverse()
    _, state = checkpoint_filter_fn(read_keras_h5(write_h5(tmp_path / "r.h5", b, out, config=cfg)))
    _, ref = checkpoint_filter_fn(read_keras_h5(write_h5(tmp_path / "s.h5", b, out)))
    assert all(torch.equal(state[k], ref[k]) for k in ref)


# --- cache and loading ------------------------------------------------------------------------------------


def test_conversion_is_cached_beside_the_source_and_invalidated_by_a_new_source(small_file: Path) -> None:
    model = load_facedancer(small_file)
    cache = cache_path(small_file)
    assert cache.exists()
    _, _, _, fresh = convert_cached(small_file, "facedancer", lambda p: (_ for _ in ()).throw(AssertionError))
    assert not fresh  # the cache was used: the converter was not called
    from_cache = load_facedancer(cache)
    for (k, a), (_, c) in zip(model.state_dict().items(), from_cache.state_dict().items(), strict=True):
        assert torch.equal(a, c), k

    b, out = build_facedancer(np.random.default_rng(9))
    write_h5(small_file, b, out)  # a different file at the same path
    _, _, _, fresh = convert_cached(small_file, "facedancer", lambda p: ({"x": 1}, {}))
    assert fresh


def test_load_rejects_a_foreign_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointFormatError, match="not a DanceCam facedancer weights file"):
        load_facedancer(path)
