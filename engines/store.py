"""Where model files live on disk, and how a file on disk is checked against the registry.

The model directory is `--model-dir`, else `$DANCECAM_HOME`, else `$XDG_CACHE_HOME/dancecam` (by default
`~/.cache/dancecam`). Files shipped inside Python packages (MTCNN) are found in the installed package instead.

Design notes: docs/design-notes.md, section engines/store.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from engines.command import dancecam
from engines.errors import ConfigError
from engines.registry import ModelEntry

ENV_HOME = "DANCECAM_HOME"
TRUST_FILE = "trusted-sha256.json"
# Published sizes of files without an exact size are rounded (e.g. "90.2 MB"); a file further off than this
# is something else (an error page, a different release) and is not trusted.
SIZE_TOLERANCE = 0.02

HashOrigin = Literal["pinned", "trusted", "none"]
State = Literal["ok", "recorded", "present", "missing", "mismatch", "wrong-size"]


def default_model_dir() -> Path:
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "dancecam"


def resolve_model_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    path = Path(explicit).expanduser() if explicit else default_model_dir()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"model directory {path} exists but is not a directory; pass --model-dir or set {ENV_HOME}")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def human_size(n: int, exact: bool = True) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            text = f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
            return text if exact else f"~{text}"
        size /= 1000
    raise AssertionError("unreachable")


def size_plausible(entry: ModelEntry, size: int) -> bool:
    if entry.size_exact:
        return size == entry.size
    return abs(size - entry.size) <= SIZE_TOLERANCE * entry.size


@dataclass(frozen=True, slots=True)
class TrustRecord:
    sha256: str
    size: int
    source: str
    recorded_at: str


class TrustStore:
    """The hashes recorded on first use, one JSON file per model directory, rewritten atomically."""

    def __init__(self, model_dir: Path) -> None:
        self.path = model_dir / TRUST_FILE

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"{self.path} is unreadable ({e}); delete it to re-record hashes on the next verified download"
            ) from e
        return data if isinstance(data, dict) else {}

    def get(self, file_name: str) -> TrustRecord | None:
        raw = self._load().get(file_name)
        if not isinstance(raw, dict):
            return None
        try:
            return TrustRecord(**raw)  # type: ignore[arg-type]
        except TypeError:
            return None

    def record(self, file_name: str, sha256: str, size: int, source: str) -> TrustRecord:
        rec = TrustRecord(sha256, size, source, datetime.now(timezone.utc).isoformat(timespec="seconds"))
        data = self._load()
        data[file_name] = asdict(rec)
        self._write(data)
        return rec

    def _write(self, data: dict[str, dict[str, object]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".trust-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def forget(self, file_name: str) -> bool:
        """Drop the hash recorded for `file_name`, so that the next verified download, `verify` or conversion
        records one anew; False when none was recorded."""
        data = self._load()
        if data.pop(file_name, None) is None:
            return False
        self._write(data)
        return True


def expected_sha256(entry: ModelEntry, trust: TrustStore) -> tuple[str | None, HashOrigin]:
    if entry.sha256:
        return entry.sha256, "pinned"
    rec = trust.get(entry.file_name)
    if rec is not None:
        return rec.sha256, "trusted"
    return None, "none"


def mismatch_action(entry: ModelEntry, origin: HashOrigin, path: Path | str) -> str:
    """What to do about a file on disk whose sha256 differs from the expected one, reset of the record included."""
    if origin == "trusted":
        return (
            f"delete {path} and download it again; or, if this file is the right one (a new release, "
            f"a good copy placed by hand), reset the recorded hash with `{dancecam('models', 'forget', entry.name)}`"
            f" and record this one with `{dancecam('models', 'verify', entry.name)}`"
        )
    if entry.bundled is not None:
        return f"the file in the {entry.bundled.package} package is not the published one: {entry.bundled.install_hint}"
    return (
        f"delete {path} and download it again (the expected sha256 is published and pinned in "
        "DanceCam's registry: there is no record to reset)"
    )


def bundled_path(entry: ModelEntry) -> Path | None:
    """The file inside its installed package, without importing the package; None when it is not installed."""
    assert entry.bundled is not None
    spec = importlib.util.find_spec(entry.bundled.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / entry.bundled.path


def file_path(entry: ModelEntry, model_dir: Path) -> Path | None:
    """Where the entry's file is, or should be placed. None: a bundled file whose package is not installed."""
    if entry.bundled is not None:
        return bundled_path(entry)
    return model_dir / entry.file_name


@dataclass(frozen=True, slots=True)
class FileStatus:
    entry: ModelEntry
    path: Path | None
    state: State
    origin: HashOrigin
    expected: str | None = None
    actual: str | None = None
    size: int | None = None

    @property
    def usable(self) -> bool:
        return self.state in ("ok", "recorded")

    def describe(self) -> str:
        e = self.entry
        if self.state == "missing":
            if e.bundled is not None:
                where = self.path or f"the {e.bundled.package} package"
                return f"missing from {where}: {e.bundled.install_hint}"
            return f"missing: run `{dancecam('models', 'download', e.name)}` or place the file at {self.path}"
        if self.state == "mismatch":
            action = mismatch_action(e, self.origin, self.path or e.file_name)
            return f"sha256 mismatch: expected {self.expected}, got {self.actual}; {action}"
        if self.state == "wrong-size":
            want = human_size(e.size, e.size_exact)
            return f"size {self.size} bytes does not match the published {want}: not this model's file"
        if self.state == "recorded":
            return f"sha256 {self.actual} recorded (trust on first use: no published hash)"
        if self.state == "present":
            return "present (not hashed)"
        return f"ok ({self.origin} sha256)"


def check(entry: ModelEntry, model_dir: Path, *, hash_file: bool = True, record: bool = True) -> FileStatus:
    """The state of the entry's file on disk. With `hash_file`, hash it and compare (recording it on first use
    when `record` is set); without, only existence and size are looked at."""
    trust = TrustStore(model_dir)
    expected, origin = expected_sha256(entry, trust)
    path = file_path(entry, model_dir)
    if path is None or not path.is_file():
        return FileStatus(entry, path, "missing", origin, expected)
    size = path.stat().st_size
    if not size_plausible(entry, size) and origin != "trusted":
        return FileStatus(entry, path, "wrong-size", origin, expected, size=size)
    if not hash_file:
        return FileStatus(entry, path, "present", origin, expected, size=size)
    actual = sha256_file(path)
    if expected is None:
        if not record:
            return FileStatus(entry, path, "present", origin, None, actual, size)
        trust.record(entry.file_name, actual, size, source=f"verified on disk: {path}")
        return FileStatus(entry, path, "recorded", "trusted", actual, actual, size)
    state: State = "ok" if actual == expected else "mismatch"
    return FileStatus(entry, path, state, origin, expected, actual, size)
