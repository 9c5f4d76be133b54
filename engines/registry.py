"""The model registry: one entry per file DanceCam can use, the single source of truth for where files come from,
how big they are, how they are verified, and under which licence they may be used.

Design notes: docs/design-notes.md, section engines/registry.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engines.errors import UnknownModelError

AuthScheme = Literal["none", "huggingface"]
Access = Literal["open", "gated", "bundled"]


@dataclass(frozen=True, slots=True)
class Source:
    """One address a file can be fetched from.

    `member` names the file inside a zip archive served at `url` (the official insightface packs are zips);
    `archive_sha256`/`archive_size` describe that archive where a public source states them.
    `auth` says which token, if any, the source accepts (Hugging Face: `HF_TOKEN`).
    """

    url: str
    member: str | None = None
    archive_sha256: str | None = None
    archive_size: int | None = None
    auth: AuthScheme = "none"


@dataclass(frozen=True, slots=True)
class BundledFile:
    """A file shipped inside an installed Python package: found there, never downloaded."""

    package: str
    path: str  # relative to the package's directory
    install_hint: str


@dataclass(frozen=True, slots=True)
class Template:
    """Where five landmarks (left eye, right eye, nose, left and right mouth corner, as seen in the image) go in a
    `size` x `size` crop; a crop of another size scales the points by its size / `size`."""

    size: int
    points: tuple[tuple[float, float], ...]


# The ArcFace 112x112 template (insightface's arcface_dst); FaceDancer's 256 crop is it scaled by 256/112.
ARCFACE_112 = Template(
    112,
    ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041)),
)


@dataclass(frozen=True, slots=True)
class DataConfig:
    """What a network takes: RGB crops `input_size` pixels square, each 0..255 level x fed as (x - mean) / std,
    faces aligned to `template` (None: whole frames, no alignment)."""

    input_size: int
    mean: float
    std: float
    template: Template | None = None


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    file_name: str
    description: str
    used_by: str
    licence: str
    size: int  # bytes; exact when `size_exact`, else as published (rounded)
    size_exact: bool
    sha256: str | None  # None: trust on first use
    sources: tuple[Source, ...] = ()  # official first, then public mirrors
    gated: bool = False
    access_url: str | None = None  # where a gated file's access is requested
    bundled: BundledFile | None = None
    converter: str | None = None  # `dancecam models convert` turns the file into a cached state dict
    data: DataConfig | None = None  # what the network takes (None: a file that is no network's input side)

    @property
    def access(self) -> Access:
        if self.bundled is not None:
            return "bundled"
        return "gated" if self.gated else "open"

    @property
    def downloadable(self) -> bool:
        return bool(self.sources)


_HF = "https://huggingface.co"


def _mtcnn(stage: str, role: str, size: int, sha256: str, input_size: int) -> ModelEntry:
    """An MTCNN stage as the facenet-pytorch 2.6.0 wheel ships it (sizes and hashes read from that wheel)."""
    return ModelEntry(
        name=f"mtcnn_{stage}",
        file_name=f"{stage}.pt",
        description=f"MTCNN {role} network (shipped in the facenet-pytorch wheel)",
        used_by="detection, embedded default (engines.mtcnn)",
        licence="MIT",
        size=size,
        size_exact=True,
        sha256=sha256,
        bundled=BundledFile(
            "facenet_pytorch",
            f"data/{stage}.pt",
            "pip install --no-deps facenet-pytorch==2.6.0 (or re-run scripts/setup.sh)",
        ),
        # (x - 127.5) * 0.0078125 in facenet-pytorch: the same values, 1/128 being exact
        data=DataConfig(input_size, 127.5, 128.0),
    )


MODELS: tuple[ModelEntry, ...] = (
    ModelEntry(
        name="facedancer_c_hq",
        file_name="FaceDancer_config_c_HQ.h5",
        description="FaceDancer generator, config C, high quality (official Keras weights)",
        used_by="swap (engines.facedancer)",
        licence="CC BY-NC-SA 4.0 (non-commercial)",
        size=90_200_000,
        size_exact=False,
        sha256=None,
        sources=(Source(f"{_HF}/felixrosberg/FaceDancer/resolve/main/FaceDancer_config_c_HQ.h5", auth="huggingface"),),
        gated=True,
        access_url=f"{_HF}/felixrosberg/FaceDancer",
        converter="facedancer",
        data=DataConfig(256, 127.5, 127.5, ARCFACE_112),  # [-1, 1]; the ArcFace template scaled to 256
    ),
    ModelEntry(
        name="arcface_r50",
        file_name="ArcFace-Res50.h5",
        description="ArcFace ResNet50 identity encoder FaceDancer was trained with (official Keras weights)",
        used_by="source identity (engines.arcface)",
        licence="MIT",
        size=162_000_000,
        size_exact=False,
        sha256=None,
        sources=(Source(f"{_HF}/felixrosberg/ArcFace/resolve/main/ArcFace-Res50.h5", auth="huggingface"),),
        access_url=f"{_HF}/felixrosberg/ArcFace",
        converter="arcface",
        data=DataConfig(112, 0.0, 255.0, ARCFACE_112),  # [0, 1]
    ),
    ModelEntry(
        name="scrfd_10g",
        file_name="det_10g.onnx",
        description="SCRFD-10GF face detector with 5 landmarks (insightface buffalo_l pack)",
        used_by="detection on the GPU path (engines.detect)",
        licence="insightface model zoo: non-commercial research use only",
        size=16_923_827,
        size_exact=True,
        sha256="5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
        sources=(
            Source(
                "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
                member="det_10g.onnx",
                archive_sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
                archive_size=288_621_354,
            ),
            Source(f"{_HF}/public-data/insightface/resolve/main/models/buffalo_l/det_10g.onnx"),
        ),
        data=DataConfig(640, 127.5, 128.0),  # letterboxed frames, as insightface feeds it
    ),
    # PNet's 12 is its receptive field (it runs on a whole image pyramid); RNet and ONet take 24 and 48 crops
    _mtcnn("pnet", "proposal", 28_570, "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f", 12),
    _mtcnn("rnet", "refinement", 403_147, "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86", 24),
    _mtcnn("onet", "output", 1_559_269, "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d", 48),
)


def find(name: str) -> ModelEntry:
    """An entry by registry name or by file name, case-insensitively."""
    key = name.strip().lower()
    for m in MODELS:
        if key in (m.name.lower(), m.file_name.lower()):
            return m
    raise UnknownModelError(name, [m.name for m in MODELS])


def data_config(name: str) -> DataConfig:
    """The data config of a network's entry, read when a model or its preprocessing is built (so a test can
    change the entry and see the code follow)."""
    entry = find(name)
    if entry.data is None:
        raise UnknownModelError(name, [m.name for m in MODELS if m.data is not None])
    return entry.data
