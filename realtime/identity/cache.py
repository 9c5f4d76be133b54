"""Source identity cache: a source photo's z_id (and FaceDancer's w) computed once, kept on disk, reused.

Design notes: docs/design-notes.md, section realtime/identity/cache.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from engines.arcface import ArcFace
from engines.detect import FaceDetector
from engines.errors import ImageError
from engines.facedancer import FaceDancer
from engines.identity import source_face
from engines.store import resolve_model_dir

MAX_IMAGE_BYTES = 20 * 1000 * 1000
MAX_PIXELS = 40 * 1000 * 1000
# Source photos are detected and embedded at most this large: a face in it still spans far more than ArcFace's 112
# pixels, and the detector's work stays bounded (an all-black 6000x6000 PNG took 12.5 s of CPU at full size).
SOURCE_MAX_SIDE = 1280
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
SUPPORTED_FORMATS = "PNG, JPEG, WebP or BMP"
ENTRY_SUFFIX = ".safetensors"
FORMAT_VERSION = "2"  # 2: the box in the photo's own pixels (1: in the downscaled copy detection saw)


# --- decoding -------------------------------------------------------------------------------------------------


def _png_size(data: bytes) -> tuple[int, int]:
    # IHDR must be the first chunk: length 13, then width and height as big-endian uint32
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageError("corrupt PNG: no IHDR header")
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int]:
    # walk the marker segments up to the first start-of-frame (SOF0..SOF15 minus DHT, JPG and DAC)
    sof = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ImageError("corrupt JPEG: bad marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in sof:
            if i + 9 > len(data):
                break
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        if marker in (0xD9, 0xDA) or length < 2:  # end of image or scan data before any frame header
            break
        i += 2 + length
    raise ImageError("corrupt JPEG: no frame header")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise ImageError("corrupt WebP: no frame header")


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise ImageError("corrupt BMP: header cut short")
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:  # OS/2 core header: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    w, h = struct.unpack("<ii", data[18:26])
    return abs(w), abs(h)  # negative height = top-down rows


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone; `ImageError` for anything that is not a supported image."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_size(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data.startswith(b"BM"):
        return _bmp_size(data)
    raise ImageError(f"not a supported image: the source photo must be {SUPPORTED_FORMATS}")


def check_data_size(data: bytes) -> None:
    """`ImageError` when the file is over `MAX_IMAGE_BYTES`."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(
            f"image file is {len(data) / 1e6:.1f} MB; the limit is {MAX_IMAGE_BYTES // 1000 // 1000} MB"
            " — use a smaller photo"
        )


def decode_image(data: bytes, max_side: int | None = None) -> np.ndarray:
    """Image file bytes → (H, W, 3) uint8 RGB, refusing oversized data or dimensions before decoding; with
    `max_side`, area-downscaled so that neither side exceeds it (JPEG decodes at 1/2, 1/4 or 1/8 directly)."""
    check_data_size(data)
    w, h = image_size(data)
    if w <= 0 or h <= 0:
        raise ImageError(f"corrupt image: header says {w}x{h}")
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"image is {w}x{h} ({w * h / 1e6:.0f} megapixels); the limit is {MAX_PIXELS // 1000 // 1000} megapixels"
            " — use a smaller photo"
        )
    # IMREAD_COLOR: any depth → 8-bit, gray → 3 channels, alpha dropped, EXIF orientation applied
    flags = cv2.IMREAD_COLOR
    if max_side is not None:
        flags = next((flag for k, flag in _REDUCED if max(w, h) // k >= max_side), flags)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is None:
        raise ImageError(f"the image could not be decoded (corrupt or truncated {SUPPORTED_FORMATS} file)")
    if bgr.shape[0] * bgr.shape[1] > MAX_PIXELS:  # the header lied: never hand on more than we allow
        raise ImageError("corrupt image: decoded size differs from its header")
    if max_side is not None and max(bgr.shape[:2]) > max_side:
        scale = max_side / max(bgr.shape[:2])
        size = (max(1, round(bgr.shape[1] * scale)), max(1, round(bgr.shape[0] * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(bgr[:, :, ::-1])


# --- cache ----------------------------------------------------------------------------------------------------


def default_identity_dir(model_dir: str | os.PathLike[str] | None = None) -> Path:
    """`<model_dir>/identities`, where identity entries are kept by default."""
    return resolve_model_dir(model_dir) / "identities"


@dataclass(frozen=True, slots=True)
class IdentityEntry:
    """One source photo's cached identity. Tensors are float32 on the CPU; callers move them to their device."""

    key: str
    image_sha256: str
    z_id: torch.Tensor  # (512,) raw ArcFace embedding
    w: torch.Tensor | None  # (mapping_width,) from FaceDancer.map_identity, made under `mapping_key`
    mapping_key: str | None
    box: np.ndarray  # (4,) x0, y0, x1, y1 in the photo's own pixels
    landmarks: np.ndarray  # (5, 2), in the photo's own pixels
    faces_found: int
    created: float  # Unix time the embedding was computed

    @property
    def note(self) -> str | None:
        if self.faces_found > 1:
            return f"{self.faces_found} faces found; using the largest"
        return None


@torch.inference_mode()
def map_identity(facedancer: FaceDancer, z_id: torch.Tensor) -> torch.Tensor:
    """w for one z_id on the model's device and dtype, returned as float32 on the CPU."""
    p = next(facedancer.parameters())
    return facedancer.map_identity(z_id.to(p.device, p.dtype)[None])[0].float().cpu()


class IdentityCache:
    """Persistent source identities keyed by image bytes and ArcFace weights; w kept per `mapping_key`.

    `mapping_key` names the FaceDancer weights (e.g. their sha256); the `facedancer` passed to the methods must be
    the model those weights made.
    """

    def __init__(self, directory: str | os.PathLike[str], arcface_weights_sha256: str, mapping_key: str) -> None:
        self.directory = Path(directory)
        self.arcface_sha256 = arcface_weights_sha256
        self.mapping_key = mapping_key

    def key_for(self, image_bytes: bytes) -> str:
        return self._key(hashlib.sha256(image_bytes).hexdigest())

    def _key(self, image_sha256: str) -> str:
        return hashlib.sha256(f"{image_sha256}:{self.arcface_sha256}".encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{ENTRY_SUFFIX}"

    def get(self, key: str) -> IdentityEntry | None:
        """The stored entry, or None when it is missing, unreadable or made for another ArcFace."""
        try:
            raw = self.path(key).read_bytes()
        except OSError:
            return None
        return self._parse(key, raw)

    def get_or_compute(
        self,
        image_bytes: bytes,
        detector: FaceDetector,
        arcface: ArcFace,
        facedancer: FaceDancer | None = None,
        label: str = "the source photo",
    ) -> IdentityEntry:
        """The cached entry for this photo, computing (and storing) it on a miss: decoded then, and only then.

        Raises `ImageError` (unreadable, not an image, too large) or `NoFaceError`; nothing is stored then.
        """
        check_data_size(image_bytes)  # before hashing: such data is never looked at further
        image_sha = hashlib.sha256(image_bytes).hexdigest()
        key = self._key(image_sha)
        entry = self.get(key)
        if entry is None:
            image = decode_image(image_bytes, SOURCE_MAX_SIDE)
            face = source_face(image, detector, arcface, label=label)
            scale = max(image_size(image_bytes)) / max(image.shape[:2])  # detection saw a downscaled copy
            entry = IdentityEntry(
                key=key,
                image_sha256=image_sha,
                z_id=face.z_id.detach().float().cpu(),
                w=None,
                mapping_key=None,
                box=np.asarray(face.box, np.float32) * np.float32(scale),
                landmarks=np.asarray(face.landmarks, np.float32) * np.float32(scale),
                faces_found=int(face.faces_found),
                created=time.time(),
            )
            if facedancer is None:
                self._write(entry)
        if facedancer is not None and (entry.w is None or entry.mapping_key != self.mapping_key):
            entry = replace(entry, w=map_identity(facedancer, entry.z_id), mapping_key=self.mapping_key)
            self._write(entry)
        return entry

    def clear(self) -> int:
        """Delete every entry (and stray temporary files); returns how many entries were removed."""
        removed = 0
        if not self.directory.is_dir():
            return 0
        for p in self.directory.iterdir():
            if p.suffix == ENTRY_SUFFIX or p.name.startswith(".tmp-"):
                p.unlink(missing_ok=True)
                removed += p.suffix == ENTRY_SUFFIX
        return removed

    # --- file format ------------------------------------------------------------------------------------------

    def _write(self, entry: IdentityEntry) -> None:
        tensors = {
            "z_id": entry.z_id.contiguous(),
            "box": torch.from_numpy(entry.box),
            "landmarks": torch.from_numpy(entry.landmarks),
        }
        if entry.w is not None:
            tensors["w"] = entry.w.contiguous()
        meta = {
            "format": FORMAT_VERSION,
            "image_sha256": entry.image_sha256,
            "arcface_sha256": self.arcface_sha256,
            "mapping_key": entry.mapping_key or "",
            "faces_found": str(entry.faces_found),
            "created": json.dumps(entry.created),
        }
        blob = save_safetensors(tensors, metadata=meta)
        self.directory.mkdir(parents=True, exist_ok=True)
        # temp file in the same directory + rename: readers see the old file or the whole new one
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(entry.key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _parse(self, key: str, raw: bytes) -> IdentityEntry | None:
        try:
            tensors = load_safetensors(raw)
            meta = _metadata(raw)
            if meta.get("format") != FORMAT_VERSION or meta.get("arcface_sha256") != self.arcface_sha256:
                return None
            image_sha = meta["image_sha256"]
            if self._key(image_sha) != key:
                return None
            z, box, lm = tensors["z_id"], tensors["box"], tensors["landmarks"]
            w = tensors.get("w")
            if z.ndim != 1 or box.shape != (4,) or lm.shape != (5, 2) or (w is not None and w.ndim != 1):
                return None
            if not all(torch.isfinite(t).all() for t in (z, box, lm) + ((w,) if w is not None else ())):
                return None
            faces_found = int(meta["faces_found"])
            if faces_found < 1:
                return None
            return IdentityEntry(
                key=key,
                image_sha256=image_sha,
                z_id=z.float(),
                w=None if w is None else w.float(),
                mapping_key=(meta.get("mapping_key") or None) if w is not None else None,
                box=box.numpy().astype(np.float32),
                landmarks=lm.numpy().astype(np.float32),
                faces_found=faces_found,
                created=float(json.loads(meta["created"])),
            )
        except Exception:  # any damage (truncated, garbled, wrong fields) means "recompute", never a crash
            return None


def _metadata(raw: bytes) -> dict[str, str]:
    # safetensors: 8-byte little-endian header length, then a JSON header whose "__metadata__" holds ours
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("bad metadata")
    return {str(k): str(v) for k, v in meta.items()}
