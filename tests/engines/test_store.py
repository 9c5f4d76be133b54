"""Model directory resolution and on-disk checks (trust on first use included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines import store
from engines.errors import ConfigError
from engines.registry import ModelEntry


def _entry(size: int, sha256: str | None, exact: bool = True) -> ModelEntry:
    return ModelEntry(
        name="m",
        file_name="m.bin",
        description="",
        used_by="",
        licence="",
        size=size,
        size_exact=exact,
        sha256=sha256,
        sources=(),
    )


def test_model_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DANCECAM_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.resolve_model_dir() == tmp_path / "xdg" / "dancecam"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.resolve_model_dir() == tmp_path / "home" / ".cache" / "dancecam"
    monkeypatch.setenv("DANCECAM_HOME", str(tmp_path / "dc"))
    assert store.resolve_model_dir() == tmp_path / "dc"
    assert store.resolve_model_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_model_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        store.resolve_model_dir(f)


def test_check_states(tmp_path: Path) -> None:
    data = b"x" * 1000
    digest = store.sha256_file(_write(tmp_path / "probe", data))
    assert store.check(_entry(1000, digest), tmp_path).state == "missing"
    _write(tmp_path / "m.bin", data)
    assert store.check(_entry(1000, digest), tmp_path).state == "ok"
    assert store.check(_entry(1000, "0" * 64), tmp_path).state == "mismatch"
    assert store.check(_entry(999, digest), tmp_path).state == "wrong-size"
    assert store.check(_entry(1000, digest), tmp_path, hash_file=False).state == "present"


def test_verify_records_a_hand_placed_file_once_and_then_holds_it(tmp_path: Path) -> None:
    entry = _entry(1000, None, exact=False)
    _write(tmp_path / "m.bin", b"a" * 1000)
    first = store.check(entry, tmp_path)
    assert first.state == "recorded"
    assert store.check(entry, tmp_path).state == "ok"
    _write(tmp_path / "m.bin", b"b" * 1000)
    changed = store.check(entry, tmp_path)
    assert changed.state == "mismatch"
    assert changed.expected == first.actual
    assert "models forget m`" in changed.describe()  # the message says how to reset the record

    assert store.TrustStore(tmp_path).forget("m.bin")
    assert not store.TrustStore(tmp_path).forget("m.bin")
    again = store.check(entry, tmp_path)
    assert again.state == "recorded"
    assert again.actual != first.actual


def test_a_pinned_mismatch_says_there_is_no_record_to_reset(tmp_path: Path) -> None:
    _write(tmp_path / "m.bin", b"x" * 1000)
    status = store.check(_entry(1000, "0" * 64), tmp_path)
    assert status.state == "mismatch"
    assert "no record to reset" in status.describe()


def test_implausible_size_is_not_recorded(tmp_path: Path) -> None:
    entry = _entry(90_200_000, None, exact=False)
    _write(tmp_path / "m.bin", b"<html>")
    assert store.check(entry, tmp_path).state == "wrong-size"
    assert store.TrustStore(tmp_path).get("m.bin") is None


def test_corrupt_trust_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / store.TRUST_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="delete it"):
        store.TrustStore(tmp_path).get("m.bin")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
