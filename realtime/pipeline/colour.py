"""Colour stages as torch ops on the frame's own device: yuv420p <-> RGB, and Lab colour transfer for swapped faces.

Nothing here copies to the host or synchronises; every function runs unchanged on CPU and CUDA tensors and takes
any leading batch dimensions.

Design notes: docs/design-notes.md, section realtime/pipeline/colour.py.
"""

from __future__ import annotations

import functools

import torch

# BT.601 luma coefficients and the limited-range scales (Y spans 219 codes, Cb/Cr span 224)
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
_Y_SCALE, _C_SCALE = 219.0 / 255.0, 224.0 / 255.0

# RGB [0, 255] -> (Y - 16, Cb - 128, Cr - 128); rows are output channels
_RGB_TO_YUV = (
    (_Y_SCALE * _KR, _Y_SCALE * _KG, _Y_SCALE * _KB),
    (-_C_SCALE * 0.5 * _KR / (1 - _KB), -_C_SCALE * 0.5 * _KG / (1 - _KB), _C_SCALE * 0.5),
    (_C_SCALE * 0.5, -_C_SCALE * 0.5 * _KG / (1 - _KR), -_C_SCALE * 0.5 * _KB / (1 - _KR)),
)
# (Y - 16, Cb - 128, Cr - 128) -> RGB [0, 255]: the exact inverse of the above, written out from Kr and Kb
_YUV_TO_RGB = (
    (1 / _Y_SCALE, 0.0, 2 * (1 - _KR) / _C_SCALE),
    (1 / _Y_SCALE, -2 * (1 - _KB) * _KB / _KG / _C_SCALE, -2 * (1 - _KR) * _KR / _KG / _C_SCALE),
    (1 / _Y_SCALE, 2 * (1 - _KB) / _C_SCALE, 0.0),
)


@functools.lru_cache(maxsize=32)
def _const(name: str, device: torch.device) -> torch.Tensor:
    # constants live on each device once: building them per call would be a host->device copy every frame, which
    # also breaks CUDA-graph capture
    if name == "xyz_to_rgb":
        value = torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).float()
    elif name == "white":
        value = torch.tensor(_WHITE_D65, dtype=torch.float32).view(3, 1, 1)
    else:
        value = torch.tensor(_CONSTANTS[name], dtype=torch.float32)
    return value.to(device)


def _check_plane(name: str, plane: torch.Tensor, min_dim: int = 2) -> None:
    if not isinstance(plane, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(plane).__name__}")
    if plane.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8, got {plane.dtype}")
    if plane.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape {tuple(plane.shape)}")


def yuv420p_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """yuv420p planes -> RGB, BT.601 limited range, nearest chroma upsampling, on the planes' device.

    y: (..., H, W) uint8; u, v: (..., H/2, W/2) uint8 (Cb, Cr); H and W even. Returns (..., H, W, 3) uint8.
    """
    for name, plane in (("y", y), ("u", u), ("v", v)):
        _check_plane(name, plane)
    h, w = y.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs an even width and height, got {w}x{h}")
    want = (*y.shape[:-2], h // 2, w // 2)
    if tuple(u.shape) != want or tuple(v.shape) != want:
        got = (tuple(u.shape), tuple(v.shape))
        raise ValueError(f"chroma planes must have shape {want} for luma {tuple(y.shape)}, got {got}")
    if u.device != y.device or v.device != y.device:
        raise ValueError(f"planes are on different devices: {y.device}, {u.device}, {v.device}")
    luma = y.float() - 16.0
    # nearest upsampling: each chroma sample fills its 2x2 block (what swscale's yuv2rgb path does)
    chroma = torch.stack((u, v), dim=-1).float() - 128.0  # (..., H/2, W/2, 2)
    chroma = chroma.repeat_interleave(2, dim=-3).repeat_interleave(2, dim=-2)  # (..., H, W, 2)
    yuv = torch.cat((luma.unsqueeze(-1), chroma), dim=-1)
    rgb = yuv @ _const("yuv_to_rgb", y.device).T
    return rgb.round_().clamp_(0, 255).to(torch.uint8)


def rgb_to_yuv420p(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB -> yuv420p planes (Y, Cb, Cr), BT.601 limited range, on the input's device.

    rgb: (..., H, W, 3) uint8 with H and W even. Returns y (..., H, W) and u, v (..., H/2, W/2), all uint8.
    Chroma is downsampled as swscale does: pair mean across, (1, 3, 3, 1)/8 down (see the module notes).
    """
    _check_plane("rgb", rgb, min_dim=3)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have 3 channels last, got shape {tuple(rgb.shape)}")
    h, w = rgb.shape[-3:-1]
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs an even width and height, got {w}x{h}")
    yuv = rgb.float() @ _const("rgb_to_yuv", rgb.device).T  # (..., H, W, 3): Y - 16, Cb - 128, Cr - 128
    y = (yuv[..., 0] + 16.0).round_().clamp_(0, 255).to(torch.uint8)

    chroma = yuv[..., 1:]  # (..., H, W, 2)
    across = 0.5 * (chroma[..., 0::2, :] + chroma[..., 1::2, :])  # (..., H, W/2, 2)
    # rows 2i-1, 2i, 2i+1, 2i+2 weighted 1, 3, 3, 1 for chroma row i; replicate the edge rows
    padded = torch.cat((across[..., :1, :, :], across, across[..., -1:, :, :]), dim=-3)  # (..., H+2, W/2, 2)
    down = (
        padded[..., 0:h:2, :, :]
        + 3.0 * padded[..., 1 : h + 1 : 2, :, :]
        + 3.0 * padded[..., 2 : h + 2 : 2, :, :]
        + padded[..., 3 : h + 3 : 2, :, :]
    ) * 0.125
    uv = (down + 128.0).round_().clamp_(0, 255).to(torch.uint8)
    return y, uv[..., 0].contiguous(), uv[..., 1].contiguous()


# sRGB (D65) linear RGB -> XYZ, and the D65 white point (2° observer), as scikit-image uses them
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_LAB_EPS = 0.008856  # CIE (6/29)^3, rounded as in the common implementations
_LAB_KAPPA = 7.787  # (29/6)^2 / 3, likewise
_CONSTANTS = {"rgb_to_yuv": _RGB_TO_YUV, "yuv_to_rgb": _YUV_TO_RGB, "rgb_to_xyz": _RGB_TO_XYZ}


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> CIE Lab (D65), channels on dim -3: (..., 3, H, W) -> (..., 3, H, W), float32."""
    rgb = rgb.float().clamp(0.0, 1.0)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).pow(2.4), rgb / 12.92)
    m = _const("rgb_to_xyz", rgb.device) / _const("white", rgb.device).view(3, 1)
    xyz = torch.einsum("ij,...jhw->...ihw", m, linear)
    # the cube root branch is only taken above eps, so clamping keeps pow away from negatives without changing it
    f = torch.where(xyz > _LAB_EPS, xyz.clamp_min(_LAB_EPS).pow(1.0 / 3.0), _LAB_KAPPA * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(dim=-3)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) -> sRGB in [0, 1] (out-of-gamut colours clipped), channels on dim -3, float32."""
    lab = lab.float()
    big_l, a, b = lab.unbind(dim=-3)
    fy = (big_l + 16.0) / 116.0
    f = torch.stack((fy + a / 500.0, fy, (fy - b / 200.0).clamp_min(0.0)), dim=-3)
    f_cut = _LAB_EPS ** (1.0 / 3.0)
    xyz = torch.where(f > f_cut, f.pow(3), (f - 16.0 / 116.0) / _LAB_KAPPA)
    xyz = xyz * _const("white", lab.device)
    linear = torch.einsum("ij,...jhw->...ihw", _const("xyz_to_rgb", lab.device), xyz)
    srgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0.0031308).pow(1.0 / 2.4) - 0.055, 12.92 * linear)
    return srgb.clamp(0.0, 1.0)


def _masked_stats(lab: torch.Tensor, w: torch.Tensor, wsum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # weighted mean and (population) std per face and channel: (N, 3, 1, 1) each
    mean = (lab * w).sum(dim=(-2, -1), keepdim=True) / wsum
    var = (w * (lab - mean).square()).sum(dim=(-2, -1), keepdim=True) / wsum
    return mean, var.clamp_min(0.0).sqrt()


def masked_lab_stats(crops: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted Lab mean and std of (N, 3, S, S) crops in [-1, 1] over `mask`: two (N, 3) tensors."""
    w = _mask_weights(mask, crops)
    wsum = w.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    mean, std = _masked_stats(rgb_to_lab((crops.float() + 1.0) * 0.5), w, wsum)
    return mean.flatten(1), std.flatten(1)


def _mask_weights(mask: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    # accept (S, S), (N, S, S) or (N, 1, S, S); return (N, 1, S, S) float32 weights in [0, 1]
    n, _, s_h, s_w = crops.shape
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (s_h, s_w) or mask.shape[0] not in (1, n):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not fit crops {tuple(crops.shape)}")
    return mask.to(device=crops.device, dtype=torch.float32).clamp(0.0, 1.0).expand(n, 1, s_h, s_w)


def colour_transfer(
    source_crop: torch.Tensor, target_crop: torch.Tensor, mask: torch.Tensor, eps: float = 1e-3
) -> torch.Tensor:
    """Give the swapped face the target's lighting: match per-channel Lab mean and std over the masked face.

    source_crop: (N, 3, S, S) swapped faces, RGB in [-1, 1] ((x - 127.5) / 127.5, the FaceDancer crop convention).
    target_crop: (N, 3, S, S) the original faces from the frame, same convention.
    mask: (S, S), (N, S, S) or (N, 1, S, S) weights in [0, 1]; only pixels with weight > 0 enter the statistics.
    eps: floor on the source std (Lab units) so a flat source cannot blow up the scale.

    The whole crop is adjusted (the paste-back mask decides what is shown); the result is clamped to [-1, 1] and
    has the source's dtype. A face whose mask is empty is returned unchanged.
    """
    if source_crop.dim() != 4 or source_crop.shape[1] != 3 or source_crop.shape != target_crop.shape:
        raise ValueError(
            f"crops must both be (N, 3, S, S) with equal shapes, got {tuple(source_crop.shape)} and "
            f"{tuple(target_crop.shape)}"
        )
    w = _mask_weights(mask, source_crop)
    raw_wsum = w.sum(dim=(-2, -1), keepdim=True)
    wsum = raw_wsum.clamp_min(1e-6)  # an empty mask would divide by zero; such faces are passed through below

    src_lab = rgb_to_lab((source_crop.float() + 1.0) * 0.5)
    tgt_lab = rgb_to_lab((target_crop.float() + 1.0) * 0.5)
    src_mean, src_std = _masked_stats(src_lab, w, wsum)
    tgt_mean, tgt_std = _masked_stats(tgt_lab, w, wsum)

    scale = tgt_std / src_std.clamp_min(eps)
    out = lab_to_rgb((src_lab - src_mean) * scale + tgt_mean) * 2.0 - 1.0
    # torch.where keeps the decision on the device: no host sync for the empty-mask check
    out = torch.where(raw_wsum > 1e-6, out, source_crop.float())
    return out.clamp_(-1.0, 1.0).to(source_crop.dtype)
