"""The registry is the single source of truth for model files: it must be complete and self-consistent."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from engines import registry, store
from engines.errors import UnknownModelError

SHA = re.compile(r"^[0-9a-f]{64}$")


def test_the_issue_files_are_registered() -> None:
    files = {m.file_name for m in registry.MODELS}
    assert {"FaceDancer_config_c_HQ.h5", "ArcFace-Res50.h5", "det_10g.onnx", "pnet.pt", "rnet.pt", "onet.pt"} <= files


def test_names_and_files_are_unique() -> None:
    names = [m.name for m in registry.MODELS]
    files = [m.file_name.lower() for m in registry.MODELS]
    assert len(set(names)) == len(names)
    assert len(set(files)) == len(files)
    assert not set(names) & set(files)  # a lookup key never means two entries


@pytest.mark.parametrize("entry", registry.MODELS, ids=lambda m: m.name)
def test_entry_is_complete(entry: registry.ModelEntry) -> None:
    assert entry.licence
    assert entry.used_by
    assert entry.size > 0
    assert entry.sha256 is None or SHA.match(entry.sha256)
    # either shipped in a package or downloadable over https, never both
    assert (entry.bundled is None) == bool(entry.sources)
    for src in entry.sources:
        assert urlsplit(src.url).scheme == "https"
        assert src.archive_sha256 is None or SHA.match(src.archive_sha256)
    if entry.gated:
        assert entry.access_url
        assert entry.sources[0].auth == "huggingface"


def test_official_sources_come_first() -> None:
    assert registry.find("facedancer_c_hq").sources[0].url.startswith("https://huggingface.co/felixrosberg/FaceDancer/")
    assert registry.find("arcface_r50").sources[0].url.startswith("https://huggingface.co/felixrosberg/ArcFace/")
    det = registry.find("det_10g.onnx")
    assert "github.com/deepinsight/insightface/releases" in det.sources[0].url
    assert det.sources[0].member == "det_10g.onnx"


def test_gated_and_licences_as_published() -> None:
    assert registry.find("facedancer_c_hq").gated
    assert registry.find("facedancer_c_hq").access == "gated"
    assert registry.find("arcface_r50").licence == "MIT"
    assert not registry.find("arcface_r50").gated
    assert registry.find("mtcnn_pnet").access == "bundled"


def test_find_by_name_or_file_name_case_insensitively() -> None:
    assert registry.find("ARCFACE_R50").file_name == "ArcFace-Res50.h5"
    assert registry.find("arcface-res50.h5").name == "arcface_r50"
    with pytest.raises(UnknownModelError, match="known models: facedancer_c_hq"):
        registry.find("stylegan")


@pytest.mark.parametrize("name", ["mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"])
def test_mtcnn_files_are_found_in_the_installed_wheel_and_match(name: str) -> None:
    entry = registry.find(name)
    path = store.bundled_path(entry)
    assert path is not None, "facenet-pytorch is installed by scripts/setup.sh"
    assert path.is_file()
    assert path.stat().st_size == entry.size
    assert store.sha256_file(path) == entry.sha256
