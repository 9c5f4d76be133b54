"""The product's typed errors: all in engines/errors.py, each with a status of its own type (never a 500) and an
exit code; the server and the CLI read them from the type."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch

import engines
import realtime
from engines import errors
from engines.errors import DanceCamError, NoSourceError, NotReadyError, WeightsNotReadyError
from engines.mtcnn import MTCNN
from realtime.live.session import LiveServices, WeightsStatus


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _import_all() -> None:
    """Every module of the product (those a plain install can import), so that every subclass is defined."""
    for package in (engines, realtime):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):  # runs the CLI
                continue
            try:
                importlib.import_module(info.name)
            except ImportError:  # GPU-only backends (TensorRT, CuPy kernels) on a machine without them
                continue


def test_every_error_type_lives_in_errors_with_a_status_and_an_exit_code() -> None:
    _import_all()
    kinds = [DanceCamError, *_subclasses(DanceCamError)]
    assert len(kinds) > 20
    for kind in kinds:
        assert kind.__module__ == "engines.errors", f"{kind.__qualname__} is defined in {kind.__module__}"
        assert 400 <= kind.http_status < 600, kind
        assert kind.http_status != 500, kind
        assert kind.exit_code > 0, kind
        assert "status" not in inspect.signature(kind.__init__).parameters, kind  # a property of the type


def test_not_ready_is_two_types_by_meaning() -> None:
    assert issubclass(WeightsNotReadyError, NotReadyError)
    assert issubclass(NoSourceError, NotReadyError)
    assert WeightsNotReadyError("x").http_status == 503
    assert NoSourceError("x").http_status == 409
    assert {c.__name__ for c in _subclasses(NotReadyError)} == {"WeightsNotReadyError", "NoSourceError"}
    assert errors.NotReadyError is NotReadyError


def test_services_raise_the_type_that_says_why() -> None:
    detector = MTCNN("cpu")
    missing = LiveServices(torch.device("cpu"), detector, "facedancer", weights=WeightsStatus(False, "no weights"))
    with pytest.raises(WeightsNotReadyError, match="no weights") as e:
        missing.check_can_swap()
    assert e.value.http_status == 503
    with pytest.raises(WeightsNotReadyError):
        missing.set_source(b"not a photo")
    waiting = LiveServices(torch.device("cpu"), detector, "facedancer", torch.nn.Identity(), torch.nn.Identity())
    with pytest.raises(NoSourceError, match="no source photo yet") as e:
        waiting.check_can_swap()
    assert e.value.http_status == 409
