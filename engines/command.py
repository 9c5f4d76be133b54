"""How to write a `dancecam` command so that it runs where the user is, for every message that names one.

`./scripts/dancecam` from a clone (the script says how it was called), `dancecam` once installed on PATH, else the
installed entry point's path or `python -m realtime`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

COMMAND_ENV = "DANCECAM_COMMAND"  # set by scripts/dancecam to the path it was called by


def prefix() -> str:
    """The words that start a dancecam command here."""
    given = os.environ.get(COMMAND_ENV, "").strip()
    if given:
        return shlex.quote(given)
    ours = Path(sys.prefix) / "bin" / "dancecam"
    found = shutil.which("dancecam")
    if found is not None and ours.exists() and Path(found).resolve() == ours.resolve():
        return "dancecam"
    if ours.exists():  # installed in an environment that is not on PATH
        return shlex.quote(str(ours))
    return f"{shlex.quote(sys.executable)} -m realtime"


def dancecam(*words: str) -> str:
    """A full command line: `dancecam("models", "download", "scrfd_10g")`."""
    return " ".join([prefix(), *words])


def styled(text: str) -> str:
    """`text` as rich console markup: commands between backticks in bold, the backticks gone, the rest escaped."""
    from rich.markup import escape

    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: not markup
        return escape(text)
    return "".join(f"[bold]{escape(p)}[/]" if i % 2 else escape(p) for i, p in enumerate(parts))


def plain(text: str) -> str:
    """`text` for a log line: the backticks around commands dropped."""
    parts = text.split("`")
    return "".join(parts) if len(parts) % 2 else text
