"""Random-init FaceDancer config C and ArcFace, and their ONNX exports, made once for every runner test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from engines.arcface import ArcFace
from engines.facedancer import facedancer
from engines.runners.base import arcface_io, facedancer_io
from engines.runners.onnx_export import export_onnx


@pytest.fixture(scope="session")
def fd_model() -> nn.Module:
    torch.manual_seed(0)
    return facedancer("config_c").eval()


@pytest.fixture(scope="session")
def arc_model() -> nn.Module:
    torch.manual_seed(1)
    return ArcFace().eval()


@pytest.fixture(scope="session")
def fd_onnx(tmp_path_factory: pytest.TempPathFactory, fd_model: nn.Module) -> Path:
    """Exported once for the session (a few seconds on two cores)."""
    return export_onnx(fd_model, facedancer_io(), tmp_path_factory.mktemp("onnx") / "facedancer.onnx")


@pytest.fixture(scope="session")
def arc_onnx(tmp_path_factory: pytest.TempPathFactory, arc_model: nn.Module) -> Path:
    return export_onnx(arc_model, arcface_io(), tmp_path_factory.mktemp("onnx") / "arcface.onnx")
