"""Converters from foreign checkpoint formats (official Keras `.h5`) to DanceCam state dicts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

ConvertFn = Callable[[Path, Callable[[int, int], None] | None], tuple[dict[str, object], dict[str, torch.Tensor]]]


def converter(kind: str) -> ConvertFn:
    """The conversion function for a registry entry's `converter` kind."""
    # imported here: the model modules import this package's submodules
    if kind == "facedancer":
        from engines.facedancer import convert_keras_file

        return convert_keras_file
    if kind == "arcface":
        from engines.arcface import convert_keras_file as convert_arcface

        return convert_arcface
    raise KeyError(f"no converter {kind!r}")
