"""Each network's registry entry carries its data config (input size, normalisation, alignment template), and the
model code reads it from there: change the entry and the preprocessing follows."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from engines import registry
from engines.align import ARCFACE_TEMPLATE, estimate_norm, template
from engines.registry import ARCFACE_112, DataConfig, Template


def change_data(monkeypatch: pytest.MonkeyPatch, name: str, **changes: Any) -> DataConfig:
    """Replace the data config of registry entry `name` for this test; returns the new config."""
    entries = []
    for entry in registry.MODELS:
        if entry.name == name:
            assert entry.data is not None
            entry = dataclasses.replace(entry, data=dataclasses.replace(entry.data, **changes))
        entries.append(entry)
    monkeypatch.setattr(registry, "MODELS", tuple(entries))
    return registry.data_config(name)


def test_every_network_entry_says_what_it_takes() -> None:
    """The official preprocessing of each network (DESIGN.md; insightface; facenet-pytorch)."""
    assert registry.data_config("facedancer_c_hq") == DataConfig(256, 127.5, 127.5, ARCFACE_112)
    assert registry.data_config("arcface_r50") == DataConfig(112, 0.0, 255.0, ARCFACE_112)
    assert registry.data_config("scrfd_10g") == DataConfig(640, 127.5, 128.0)
    sizes = [registry.data_config(f"mtcnn_{s}").input_size for s in ("pnet", "rnet", "onet")]
    assert sizes == [12, 24, 48]
    assert all(registry.data_config(f"mtcnn_{s}").std == 128.0 for s in ("pnet", "rnet", "onet"))
    assert ARCFACE_112.size == 112
    assert ARCFACE_112.points == ARCFACE_TEMPLATE


def test_a_file_without_a_data_config_is_refused_by_name() -> None:
    entry = registry.MODELS[0]
    with pytest.raises(registry.UnknownModelError):
        registry.data_config("no-such-model")
    assert registry.data_config(entry.name) is entry.data


def test_the_template_follows_the_entry() -> None:
    shifted = Template(112, tuple((x + 1.0, y) for x, y in ARCFACE_112.points))
    t = template(224, base=shifted, dtype=torch.float64)
    assert torch.equal(t, torch.tensor(shifted.points, dtype=torch.float64) * 2)
    lmk = torch.tensor(ARCFACE_112.points, dtype=torch.float64)
    m = estimate_norm(lmk, 112, shifted)  # the template itself maps onto the shifted template: a translation
    assert torch.allclose(m, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64), atol=1e-9)


def test_scrfd_preprocessing_follows_its_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.scrfd import letterbox, scrfd_io

    image = torch.full((480, 640, 3), 200, dtype=torch.uint8)
    blob, _ = letterbox(image)
    assert blob.shape == (1, 3, 640, 640)
    assert torch.all(blob[:, :, :480] == (200 - 127.5) / 128)
    change_data(monkeypatch, "scrfd_10g", input_size=320, mean=100.0, std=50.0)
    blob, scale = letterbox(image)
    assert blob.shape == (1, 3, 320, 320)
    assert scale == 0.5
    assert torch.all(blob[:, :, :240] == 2.0)  # (200 - 100) / 50
    assert torch.all(blob[:, :, 240:] == -2.0)  # black padding, normalised the same way
    assert scrfd_io().inputs[0].shape == (1, 3, 320, 320)


def test_mtcnn_stages_take_their_entries_sizes_and_normalisation(monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.mtcnn import MTCNN

    assert [d.input_size for d in MTCNN().data] == [12, 24, 48]
    data = change_data(monkeypatch, "mtcnn_rnet", input_size=20, mean=0.0, std=255.0)
    det = MTCNN()
    assert det.data[1] == data
    img = torch.full((1, 3, 60, 60), 51.0)
    crops, ok = det._crops(img, None, torch.tensor([[10.0, 10.0, 40.0, 40.0]]), 20, det.data[1])
    assert crops.shape == (1, 3, 20, 20)
    assert bool(ok[0])
    assert torch.allclose(crops, torch.full_like(crops, 0.2))  # (51 - 0) / 255


class Recorder(nn.Module):
    """Stands in for ArcFace: records its input, returns one number per face."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return x.flatten(1).mean(1, keepdim=True)


def test_arcface_crops_and_inputs_follow_its_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.arcface import ArcFaceConfig
    from engines.identity import align_crop, embed
    from engines.runners.base import arcface_io

    image = np.full((300, 300, 3), 102, np.uint8)
    lmk = np.asarray(ARCFACE_112.points) * 2 + 20
    recorder = Recorder()
    embed(align_crop(image, lmk)[None], recorder)  # type: ignore[arg-type]
    assert recorder.seen is not None
    assert recorder.seen.shape == (1, 3, 112, 112)
    assert torch.allclose(recorder.seen[0, :, 56, 56], torch.full((3,), 0.4))  # 102 / 255
    change_data(monkeypatch, "arcface_r50", input_size=96, mean=127.5, std=127.5)
    crop = align_crop(image, lmk)
    assert crop.shape == (96, 96, 3)
    embed(crop[None], recorder)  # type: ignore[arg-type]
    assert torch.allclose(recorder.seen[0, :, 48, 48], torch.full((3,), (102 - 127.5) / 127.5))
    assert ArcFaceConfig().input_size == 96
    assert arcface_io().inputs[0].shape == (-1, 3, 96, 96)


def test_facedancer_sizes_follow_its_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.facedancer import FaceDancerConfig
    from engines.runners.base import facedancer_io

    assert FaceDancerConfig().image_size == 256
    assert facedancer_io().inputs[0].shape == (-1, 3, 256, 256)
    change_data(monkeypatch, "facedancer_c_hq", input_size=128)
    assert FaceDancerConfig().image_size == 128
    assert facedancer_io().inputs[0].shape == (-1, 3, 128, 128)
    assert facedancer_io(image_size=64).inputs[0].shape == (-1, 3, 64, 64)  # a given size still wins
