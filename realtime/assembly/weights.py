"""Where the converted weights of a model are, and whether they match the original file they were converted from.

`find_weights` is the one check every mode runs before loading a network: it names the commands (download,
convert) that fix what is missing, and gives each file's weights key (the original's sha256), which keys the
identity cache and the compiled engines.
"""

from __future__ import annotations

from pathlib import Path

from engines.command import dancecam
from engines.convert.cache import cache_path, cached_metadata
from engines.errors import ModelMissingError
from engines.registry import ModelEntry
from engines.store import sha256_file


def _cache_source_sha(path: Path, kind: str) -> str | None:
    """The source sha256 recorded in a converted-weights cache of `kind`; None when it is absent or foreign."""
    meta = cached_metadata(path, kind)
    if meta is None:
        return None
    return meta.get("source_sha256") or "unknown"


def find_weights(entries: list[ModelEntry], model_dir: Path, dir_flag: bool = False) -> list[tuple[Path, str]]:
    """(converted weights path, weights key) per entry, or `ModelMissingError` naming the commands that fix it.

    The key is the sha256 of the original file the cache was converted from (it keys the identity cache).
    `dir_flag`: the model directory was given with --model-dir, so the commands must name it too.
    """
    found: list[tuple[Path, str]] = []
    download: list[str] = []
    convert: list[str] = []
    for entry in entries:
        assert entry.converter is not None
        original = model_dir / entry.file_name
        cache = cache_path(original)
        cached = _cache_source_sha(cache, entry.converter)
        if original.is_file():
            digest = sha256_file(original)
            if cached == digest:
                found.append((cache, digest))
            else:
                convert.append(entry.name)
        elif cached is not None:  # the original was removed after conversion: the cache alone is enough
            found.append((cache, cached))
        else:
            download.append(entry.name)
            convert.append(entry.name)
    if not (download or convert):
        return found
    where = f" --model-dir {model_dir}" if dir_flag else ""
    steps = [f"`{dancecam('models', 'download', *download)}{where}`"] if download else []
    steps.append(f"`{dancecam('models', 'convert', *convert)}{where}`")
    gated = [e for e in entries if e.name in download and e.gated]
    hint = "".join(f" ({e.name} is gated: request access at {e.access_url} and set HF_TOKEN)" for e in gated)
    what = "missing" if download else "downloaded but not converted"
    raise ModelMissingError(
        f"model weights {what} in {model_dir} ({', '.join(convert)}): run {' and then '.join(steps)}{hint}. "
        "To try the pipeline without weights, use --engine identity."
    )
