"""Source identity: real face photo → MTCNN → alignment → ArcFace (random weights) → z_id, and mixing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.align import apply_affine, estimate_norm, template
from engines.arcface import ArcFace, ArcFaceConfig
from engines.errors import ConfigError, NoFaceError
from engines.identity import align_crop, embed, mix, source_face, source_identity
from engines.mtcnn import MTCNN
from tests import faces


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


@pytest.fixture(scope="module")
def arcface() -> ArcFace:
    torch.manual_seed(0)
    model = ArcFace(ArcFaceConfig()).eval()
    with torch.no_grad():  # random running statistics, so BatchNorm is not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_source_face_on_the_astronaut(astronaut: np.ndarray, detector: MTCNN, arcface: ArcFace) -> None:
    face = source_face(astronaut, detector, arcface)
    assert face.faces_found == 1
    assert face.note is None
    assert np.abs(face.landmarks - faces.ASTRONAUT_LANDMARKS).max() < 3
    assert face.z_id.shape == (512,)
    # the embedding is ArcFace's raw output for the aligned crop, not normalised
    crop = align_crop(astronaut, face.landmarks)
    torch.testing.assert_close(face.z_id, embed(crop[None], arcface)[0])
    assert abs(float(face.z_id.norm()) - 1.0) > 1e-3


def test_aligned_crop_puts_the_landmarks_on_the_template(astronaut: np.ndarray, detector: MTCNN) -> None:
    lm = faces.ASTRONAUT_LANDMARKS
    m = estimate_norm(torch.as_tensor(lm, dtype=torch.float64), 112)
    mapped = apply_affine(m, torch.as_tensor(lm, dtype=torch.float64))
    target = template(112).double()
    # least squares maps the centroid exactly; a real face's own proportions leave a few pixels per point
    torch.testing.assert_close(mapped.mean(0), target.mean(0), rtol=0, atol=1e-5)  # float32 template
    assert (mapped - target).norm(dim=1).max() < 8
    crop = align_crop(astronaut, lm)
    assert crop.shape == (112, 112, 3)
    assert crop.dtype == np.uint8
    # the face fills the crop: the centre is skin-toned, not the black border
    assert crop[40:80, 40:80].mean() > 60


def test_largest_face_is_used_and_reported(detector: MTCNN, arcface: ArcFace) -> None:
    frame, placed = faces.compose_faces(640, 480)
    face = source_face(frame, detector, arcface)
    assert face.faces_found >= 3
    assert "using the largest" in (face.note or "")
    expected = placed[0].box  # the large face
    assert np.abs(face.box - expected).max() < 0.1 * (expected[3] - expected[1])


def test_no_face_is_a_clear_error(detector: MTCNN, arcface: ArcFace) -> None:
    with pytest.raises(NoFaceError, match="no face found in source photo 2"):
        source_identity([faces.astronaut(), np.full((300, 300, 3), 128, np.uint8)], detector, arcface)


def test_mixing(astronaut: np.ndarray, detector: MTCNN, arcface: ArcFace) -> None:
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    z, found = source_identity([astronaut, flipped], detector, arcface, weights=[3, 1])
    za, zb = found[0].z_id, found[1].z_id
    assert not torch.allclose(za, zb)
    torch.testing.assert_close(z, 0.75 * za + 0.25 * zb)
    torch.testing.assert_close(mix([za, zb], [1, 0]), za)
    torch.testing.assert_close(mix([za, zb]), (za + zb) / 2)
    for bad in ([1], [-1, 2], [0, 0], [float("nan"), 1]):
        with pytest.raises(ConfigError):
            mix([za, zb], bad)
