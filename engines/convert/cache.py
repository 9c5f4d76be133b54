"""Converted weights cached as safetensors beside their source, valid while the source's sha256 matches."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engines.errors import CheckpointFormatError
from engines.store import sha256_file

FORMAT = "dancecam-state-dict/1"
Converter = Callable[[Path], tuple[dict[str, object], dict[str, torch.Tensor]]]


def cache_path(source: Path) -> Path:
    return source.with_suffix(".safetensors")


def cached_metadata(path: Path, kind: str) -> dict[str, str] | None:
    """The metadata of a cache file of `kind` (tensors not read), or None when it is absent or foreign."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError):
        return None
    if meta.get("format") != FORMAT or meta.get("kind") != kind:
        return None
    return meta


def read_cached(
    path: Path, kind: str, source_sha256: str | None = None
) -> tuple[dict[str, object], dict[str, torch.Tensor]] | None:
    """(config, state dict) from a cache file of `kind`, or None when it is absent, stale or foreign."""
    meta = cached_metadata(path, kind)
    if meta is None:
        return None
    if source_sha256 is not None and meta.get("source_sha256") != source_sha256:
        return None
    return json.loads(meta["config"]), load_file(str(path))


def convert_cached(
    source: Path, kind: str, convert: Converter, source_sha256: str | None = None
) -> tuple[dict[str, object], dict[str, torch.Tensor], Path, bool]:
    """Convert `source` (or reuse its cache) and return (config, state dict, cache path, whether it converted now);
    `source_sha256`: the source's hash when the caller has just computed it."""
    digest = source_sha256 or sha256_file(source)
    target = cache_path(source)
    cached = read_cached(target, kind, digest)
    if cached is not None:
        return cached[0], cached[1], target, False
    config, state = convert(source)
    meta = {
        "format": FORMAT,
        "kind": kind,
        "source": source.name,
        "source_sha256": digest,
        "config": json.dumps(config),
    }
    tmp = target.with_name(target.name + ".tmp")
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointFormatError(f"cannot write the converted weights to {target} ({e.strerror})") from e
    return config, state, target, True


def load_converted(path: Path, kind: str, convert: Converter) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    """(config, state dict) from an official file (converted once, then cached) or from its `.safetensors` cache."""
    if path.suffix != ".safetensors":
        config, state, *_ = convert_cached(path, kind, convert)
        return config, state
    cached = read_cached(path, kind)
    if cached is None:
        raise CheckpointFormatError(f"{path} is not a DanceCam {kind} weights file; convert the original again")
    return cached
