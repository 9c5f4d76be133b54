"""Where and how a benchmark saves its numbers: JSON (and Markdown) under benchmarks/results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save(out: Path, result: dict[str, Any], markdown: str | None = None) -> list[Path]:
    """Write `result` as indented JSON to `out` (folders made) and `markdown`, if any, beside it as `.md`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    written = [out]
    if markdown is not None:
        written.append(out.with_suffix(".md"))
        written[-1].write_text(markdown)
    return written
