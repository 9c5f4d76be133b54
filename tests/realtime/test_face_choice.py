from __future__ import annotations

import numpy as np
import pytest

from engines.errors import ConfigError
from realtime.pipeline.face_choice import FaceChoice, choose_faces, cosine_similarity

BOXES = np.array([[0, 0, 10, 10], [0, 0, 30, 30], [5, 5, 25, 25], [0, 0, 2, 2]], float)  # areas 100, 900, 400, 4


def test_all_is_largest_first_and_capped() -> None:
    assert choose_faces(BOXES, FaceChoice("all")).tolist() == [1, 2, 0, 3]
    assert choose_faces(BOXES, FaceChoice("all", max_faces=2)).tolist() == [1, 2]


def test_largest() -> None:
    assert choose_faces(BOXES, FaceChoice("largest")).tolist() == [1]


def test_no_faces() -> None:
    assert choose_faces(np.zeros((0, 4)), FaceChoice("largest")).tolist() == []


def test_reference_picks_similar_faces_above_the_threshold() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(512)
    emb = rng.standard_normal((4, 512))
    emb[3] = ref * 2.0 + rng.standard_normal(512) * 0.1  # the same person, another scale (raw embeddings)
    emb[0] = ref + rng.standard_normal(512) * 0.9  # similar, less so
    sim = cosine_similarity(emb, ref)
    assert sim[3] > 0.99
    assert 0.5 < sim[0] < 0.9
    choice = FaceChoice("reference", reference=ref, threshold=0.5)
    assert choose_faces(BOXES, choice, emb).tolist() == [3, 0]  # most similar first, small face included
    assert choose_faces(BOXES, FaceChoice("reference", reference=ref, threshold=0.95), emb).tolist() == [3]
    assert choose_faces(BOXES, FaceChoice("reference", reference=ref, threshold=0.999), emb).tolist() == []
    with pytest.raises(ValueError, match="one embedding per detected face"):
        choose_faces(BOXES, choice, emb[:2])


@pytest.mark.parametrize(
    "kw",
    [{"mode": "random"}, {"max_faces": 0}, {"max_faces": 17}, {"threshold": 2.0}, {"mode": "reference"}],
)
def test_bad_settings(kw: dict) -> None:
    with pytest.raises(ConfigError):
        FaceChoice(**kw)
