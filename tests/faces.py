"""Real face images for tests: the product's sample faces (realtime/bench/faces.py), under the name tests use."""

from realtime.bench.faces import (
    ASTRONAUT_BOX,
    ASTRONAUT_ENV,
    ASTRONAUT_LANDMARKS,
    ASTRONAUT_SHAPE,
    DEFAULT_PLACEMENTS,
    PlacedFace,
    Placement,
    astronaut,
    astronaut_png,
    compose_faces,
)

__all__ = [
    "ASTRONAUT_BOX",
    "ASTRONAUT_ENV",
    "ASTRONAUT_LANDMARKS",
    "ASTRONAUT_SHAPE",
    "DEFAULT_PLACEMENTS",
    "PlacedFace",
    "Placement",
    "astronaut",
    "astronaut_png",
    "compose_faces",
]
