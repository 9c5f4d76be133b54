"""GPU align/paste kernels against the CPU path (parity runs where CUDA and CuPy are present)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.align import estimate_norm
from realtime.pipeline import warp, warp_cpu, warp_cuda
from realtime.pipeline.masks import build_mask
from tests import faces
from tests.realtime import kernel_host

needs_gxx = pytest.mark.skipif(kernel_host.available() is not None, reason=str(kernel_host.available()))


def test_importable_without_a_gpu_and_refuses_host_tensors() -> None:
    frame = torch.zeros((8, 8, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="CUDA"):
        warp_cuda.align_faces(frame, np.eye(2, 3)[None])
    with pytest.raises(ValueError, match="CUDA"):
        warp_cuda.paste_faces(frame, torch.zeros(1, 3, 4, 4), np.eye(2, 3)[None], torch.ones(4, 4), [(0, 0, 8, 8)])


def test_only_float32_and_float16_crops() -> None:
    # checked before anything is compiled: runs without CuPy
    with pytest.raises(ValueError, match=r"float32 or float16, not torch\.bfloat16"):
        warp_cuda._kernel("align_kernel", torch.bfloat16)


def test_geometry_buffer_round_trip() -> None:
    """Matrices, host-computed inverses and int32 boxes in one float32 buffer, viewed back exactly (CPU views of
    the same layout the device gets)."""
    m = np.array([[[1.5, 0.2, -30.0], [-0.2, 1.5, 12.0]], [[0.5, 0.0, 4.0], [0.0, 0.5, -8.0]]])
    boxes = [(10, 20, 300, 400), None]
    packed, n = warp_cuda.geometry_buffer(m, boxes)
    assert (packed.dtype, n) == (np.float32, 2)
    geo = warp_cuda.FaceGeometry.from_buffer(torch.from_numpy(packed), n)
    np.testing.assert_allclose(geo.fwd.numpy(), m.reshape(2, 6), rtol=1e-6)
    for k in range(2):
        full = np.vstack([m[k], [0, 0, 1]])
        np.testing.assert_allclose(
            np.vstack([geo.inv[k].numpy().reshape(2, 3), [0, 0, 1]]) @ full, np.eye(3), atol=1e-5
        )
    assert geo.boxes.dtype == torch.int32
    assert geo.boxes.tolist() == [[10, 20, 300, 400], [0, 0, 0, 0]]  # a skipped face: an empty box
    assert geo.host_boxes == (None, None)  # not told which boxes: paste with any box is refused
    assert warp_cuda.FaceGeometry.from_buffer(torch.from_numpy(packed), n, boxes).host_boxes == tuple(boxes)
    assert warp_cuda.geometry_buffer(m, None)[0][-8:].view(np.int32).tolist() == [0] * 8
    with pytest.raises(ValueError, match="1 boxes for 2 faces"):
        warp_cuda.geometry_buffer(m, [(0, 0, 1, 1)])
    empty, n = warp_cuda.geometry_buffer(np.zeros((0, 2, 3)), [])
    assert n == 0
    assert warp_cuda.FaceGeometry.from_buffer(torch.from_numpy(empty), 0).boxes.shape == (0, 4)


# --- the paste's contract: boxes are clipped and checked on the host, the kernel never writes outside ---------


def test_paste_region_clips_the_boxes_and_checks_them() -> None:
    boxes = [(-5, 10, 50, 700), (600, 400, 900, 900), (700, 0, 800, 10), None]
    clipped, union = warp_cuda.paste_region(boxes, 4, 640, 480)
    assert clipped == [(0, 10, 50, 480), (600, 400, 640, 480), None, None]  # entirely outside: skipped
    assert union == (0, 10, 640, 470)
    assert warp_cuda.paste_region([(np.int64(1), 2, 3, 4)], 1, 640, 480)[0] == [(1, 2, 3, 4)]
    assert warp_cuda.paste_region([None, (700, 0, 800, 10)], 2, 640, 480) == ([None, None], None)
    with pytest.raises(ValueError, match="2 boxes for 3 crops"):
        warp_cuda.paste_region(boxes[:2], 3, 640, 480)
    with pytest.raises(ValueError, match="four integers"):
        warp_cuda.paste_region([(0.5, 0, 10, 10)], 1, 640, 480)
    with pytest.raises(ValueError, match="four integers"):
        warp_cuda.paste_region([(0, 0, 10)], 1, 640, 480)
    # the geometry's boxes must be the same faces' boxes (clipped alike), or the kernel would test other regions
    assert warp_cuda.paste_region(boxes, 4, 640, 480, uploaded=boxes)[0] == clipped
    assert warp_cuda.paste_region(boxes, 4, 640, 480, uploaded=clipped)[0] == clipped
    with pytest.raises(ValueError, match="other boxes"):
        warp_cuda.paste_region(boxes, 4, 640, 480, uploaded=[(0, 0, 10, 10), *boxes[1:]])
    with pytest.raises(ValueError, match="other boxes"):
        warp_cuda.paste_region(boxes, 4, 640, 480, uploaded=(None,) * 4)  # an align-only upload


def test_paste_needs_one_box_and_one_matrix_per_crop() -> None:
    frame = torch.zeros((32, 32, 3), dtype=torch.uint8)
    m = np.tile(np.eye(2, 3), (2, 1, 1))
    with pytest.raises(ValueError, match="1 boxes and 2 matrices for 2 crops"):
        warp.paste(frame, torch.zeros(2, 3, 8, 8), m, torch.ones(8, 8), [(0, 0, 8, 8)])


@needs_gxx
def test_emulated_paste_kernel_never_writes_outside_the_frame() -> None:
    """The kernel run on the CPU over a launch region that overhangs the frame on the right and at the bottom (as
    an unchecked caller box would make it): every pixel of the box inside the frame is pasted, nothing else changes,
    and the bytes after the frame stay as they were."""
    w, h, size = 40, 30, 16
    guard = 4096
    buffer = np.full(w * h * 3 + guard, 7, np.uint8)
    frame = buffer[: w * h * 3].reshape(h, w, 3)
    frame[...] = 0
    fwd = np.array([[0.25, 0.0, 0.0], [0.0, 0.25, 0.0]], np.float32)  # crop texels 4 px apart: every pixel maps in
    box = (20, 10, 60, 50)  # beyond both edges
    crops = np.ones((1, 3, size, size), np.float32)  # white
    kernel_host.paste(buffer, w, h, fwd, np.array([box]), (20, 10, 40, 40), crops, np.ones((size, size), np.float32))
    assert (buffer[w * h * 3 :] == 7).all()  # nothing written past the frame
    assert (frame[10:, 20:] == 255).all()
    untouched = np.ones((h, w), bool)
    untouched[10:, 20:] = False
    assert (frame[untouched] == 0).all()  # no write wrapped around into the next row


@needs_gxx
def test_emulated_a_large_face_is_pasted_up_to_the_last_pixel_on_the_cuda_path_too() -> None:
    """The boxes the CUDA path launches over hold every pixel bilinear sampling reaches (crop coordinates -1 to
    size): the kernel's result equals the CPU path's, also in that band, for a face 5 frame pixels per texel."""
    size, w, h, scale, offset = 64, 400, 400, 5.0, 30.0
    m = np.array([[[1 / scale, 0.0, -offset / scale], [0.0, 1 / scale, -offset / scale]]])
    frame = np.zeros((h, w, 3), np.uint8)
    crops, mask = np.ones((1, 3, size, size), np.float32), np.ones((size, size), np.float32)
    cpu = warp_cpu.paste_faces(frame.copy(), crops, m, mask)
    gpu = kernel_host.paste_faces(frame, crops, m, mask)
    assert np.abs(gpu.astype(np.int16) - cpu.astype(np.int16)).max() <= 2  # OpenCV's 1/32 px weights
    c = (np.arange(w) - offset) / scale
    band = (c > -1) & ((c < -0.5) | (c > size - 0.5)) & (c < size)  # crop columns -0.8, -0.6, 63.6, 63.8
    assert band.sum() == 4
    assert (gpu[h // 2, band] > 0).all()


@needs_gxx
def test_emulated_coincident_landmarks_behave_the_same_on_both_paths() -> None:
    """Five equal landmarks give a matrix without an inverse: no box and nothing pasted on either path, and the
    same crop (the frame's corner pixel, as OpenCV makes it from its zero inverse); the CUDA path's host side used
    to raise LinAlgError."""
    frame = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    size = 32
    lm = torch.tensor([[[30.25, 20.75]] * 5], dtype=torch.float64)
    m = estimate_norm(lm, size).numpy()
    assert (m[:, :, :2] == 0).all()
    assert warp.face_boxes(m, size, 64, 48) == [None]

    packed, n = warp_cuda.geometry_buffer(m, [None])
    geo = warp_cuda.FaceGeometry.from_buffer(torch.from_numpy(packed), n, [None])
    assert (geo.inv.numpy() == 0).all()
    cuda_crop = kernel_host.align(frame, geo.inv.numpy(), size)
    cpu_crop = warp_cpu.align_faces(frame, m, size)
    corner = frame[0, 0].astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(cpu_crop[0], np.broadcast_to(corner[:, None, None], (3, size, size)), atol=1e-6)
    np.testing.assert_allclose(cuda_crop, cpu_crop, atol=1e-6)

    crops, mask = np.ones((1, 3, size, size), np.float32), np.ones((size, size), np.float32)
    assert np.array_equal(warp_cpu.paste_faces(frame.copy(), crops, m, mask), frame)
    assert np.array_equal(kernel_host.paste_faces(frame, crops, m, mask), frame)
    out = warp.paste(torch.from_numpy(frame.copy()), torch.from_numpy(crops), m, torch.from_numpy(mask), [None])
    assert np.array_equal(out.numpy(), frame)


def _matrices(placed: list[faces.PlacedFace]) -> np.ndarray:
    return estimate_norm(torch.tensor(np.stack([p.landmarks for p in placed]), dtype=torch.float64), 256).numpy()


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="CuPy is not installed (the gpu extra)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_kernels_match_the_cpu_path(
    dtype: torch.dtype, multi_face_frame: tuple[np.ndarray, list[faces.PlacedFace]]
) -> None:
    """Tolerances: OpenCV rounds interpolation weights to 1/32 px and the aligned crop to uint8; the kernels do
    neither. Align: max 2.5 grey levels (0.02 in [-1, 1]), mean 0.4 (the uint8 rounding alone costs ~0.25).
    Paste: max 4 grey levels, mean 0.2."""
    frame, placed = multi_face_frame
    placed = [*placed, placed[0]]  # a repeated face overlaps the first: order of blending matters
    m = _matrices(placed)
    h, w = frame.shape[:2]
    mask = build_mask(256)

    cpu_crops = warp_cpu.align_faces(frame, m)
    gpu_frame = torch.from_numpy(frame).cuda()
    gpu_crops = warp_cuda.align_faces(gpu_frame, m, dtype=dtype)
    diff = (gpu_crops.float().cpu().numpy() - cpu_crops) * 127.5
    assert np.abs(diff).max() <= 2.5
    assert np.abs(diff).mean() <= 0.4

    # paste the same (CPU-made) crops both ways, slightly altered so the blend is visible
    crops = np.clip(cpu_crops * 0.8 + 0.1, -1, 1).astype(np.float32)
    boxes = [warp_cpu.face_box(mi, 256, w, h) for mi in m]
    cpu_out = warp_cpu.paste_faces(frame.copy(), crops, m, mask)
    gpu_out = warp_cuda.paste_faces(
        gpu_frame.clone(), torch.from_numpy(crops).cuda().to(dtype), m, torch.from_numpy(mask), boxes
    )
    torch.cuda.synchronize()
    d = np.abs(gpu_out.cpu().numpy().astype(np.int16) - cpu_out.astype(np.int16))
    assert d.max() <= 4
    assert d.mean() <= 0.2
    touched = np.zeros((h, w), bool)
    for b in boxes:
        if b is not None:
            touched[b[1] : b[3], b[0] : b[2]] = True
    assert np.array_equal(gpu_out.cpu().numpy()[~touched], frame[~touched])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed: the CUDA source is not compiled here")
def test_kernel_source_compiles(tmp_path: Path) -> None:
    """Compile the kernels with nvcc (no GPU needed) for every template instantiation CuPy will request."""
    inst = """
template __global__ void align_kernel<float>(const unsigned char*, int, int, const float*, int, float*);
template __global__ void align_kernel<__half>(const unsigned char*, int, int, const float*, int, __half*);
template __global__ void paste_kernel<float>(unsigned char*, int, int, const float*, const int*, int,
                                             int, int, int, int, const float*, const float*, int);
template __global__ void paste_kernel<__half>(unsigned char*, int, int, const float*, const int*, int,
                                              int, int, int, int, const __half*, const float*, int);
"""
    src = tmp_path / "warp.cu"
    src.write_text(warp_cuda._SOURCE + inst)
    proc = subprocess.run(
        ["nvcc", "-std=c++17", "-c", str(src), "-o", str(tmp_path / "warp.o")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(warp_cuda._NAMES) == 4  # the names CuPy instantiates are the four compiled above
