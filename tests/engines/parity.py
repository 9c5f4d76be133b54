"""Parity criteria for network outputs that hold at any output scale.

An absolute bound stops meaning anything once outputs grow: ArcFace's raw embedding reaches |y| ≈ 48 on the
released weights, where fp32's own rounding (Keras' included) exceeds 1e-4. So fp32 runs are held to an error
relative to the output's scale and to a cosine per row; exactness is checked by a float64 run.
"""

from __future__ import annotations

import numpy as np
import torch

# of max |want|; measured: 3e-7 (converter vs its float64 reference, the small test nets), 3e-6 (ONNX Runtime vs
# torch, random-init ResNet-50); about 2e-6 for Keras' own fp32 at |y| ≈ 48 (1e-4 absolute)
FP32_RTOL = 2e-5
FP32_MIN_COSINE = 1 - 1e-6
FP64_RTOL = 1e-12  # a float64 run of the same graph: only float64 rounding is left (measured ~1e-15)


def _array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def relative_error(got: np.ndarray | torch.Tensor, want: np.ndarray | torch.Tensor) -> float:
    """max |got - want| over max |want|."""
    g, w = _array(got), _array(want)
    assert g.shape == w.shape, (g.shape, w.shape)
    scale = float(np.abs(w).max())
    assert scale > 0, "the reference is all zeros: nothing to compare"
    return float(np.abs(g - w).max()) / scale


def min_cosine(got: np.ndarray | torch.Tensor, want: np.ndarray | torch.Tensor) -> float:
    """The smallest cosine similarity between matching rows (one row per batch item)."""
    g, w = _array(got), _array(want)
    g, w = g.reshape(g.shape[0], -1), w.reshape(w.shape[0], -1)
    return float(((g * w).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1))).min())


def assert_fp32_parity(got: np.ndarray | torch.Tensor, want: np.ndarray | torch.Tensor) -> None:
    rel, cos = relative_error(got, want), min_cosine(got, want)
    assert rel <= FP32_RTOL, f"relative error {rel:.2e} > {FP32_RTOL:.0e}"
    assert cos >= FP32_MIN_COSINE, f"cosine {cos:.9f} < {FP32_MIN_COSINE}"


def assert_fp64_exact(got: np.ndarray | torch.Tensor, want: np.ndarray | torch.Tensor) -> None:
    rel = relative_error(got, want)
    assert rel <= FP64_RTOL, f"float64 relative error {rel:.2e} > {FP64_RTOL:.0e}"
