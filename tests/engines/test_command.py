"""Commands in messages are written the way that runs where the user is, and run when pasted as printed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from engines import command

ROOT = Path(__file__).resolve().parents[2]


def test_the_script_that_called_us_names_the_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(command.COMMAND_ENV, "./scripts/dancecam")
    assert command.dancecam("models", "download", "scrfd_10g") == "./scripts/dancecam models download scrfd_10g"
    monkeypatch.setenv(command.COMMAND_ENV, "/home/a user/dancecam/scripts/dancecam")
    assert command.prefix() == "'/home/a user/dancecam/scripts/dancecam'"  # pasted into a shell as one word


def test_installed_on_path_it_is_plain_dancecam(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(command.COMMAND_ENV, raising=False)
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "dancecam"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert command.prefix() == "dancecam"
    monkeypatch.setenv("PATH", "/nonexistent")  # installed, but its environment is not on PATH
    assert command.prefix() == str(script)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "elsewhere"))  # no entry point at all
    assert command.prefix() == f"{shlex.quote(sys.executable)} -m realtime"


def test_commands_are_shown_without_backticks() -> None:
    assert command.plain("run `a b` then `c`") == "run a b then c"
    assert command.plain("a stray ` stays") == "a stray ` stays"
    assert command.styled("run `a [b]` now") == "run [bold]a \\[b][/] now"


@pytest.mark.parametrize("how", ["script", "module"])
def test_a_printed_command_runs_when_pasted(tmp_path: Path, how: str) -> None:
    """The missing-weights error of `swap`, pasted into a shell from where the user is, runs the model manager."""
    env = {k: v for k, v in os.environ.items() if k != command.COMMAND_ENV}
    env.update(DANCECAM_HOME=str(tmp_path / "home"), NO_COLOR="1", COLUMNS="400")
    photo = tmp_path / "me.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n")  # never decoded: the weights are checked first
    args = ["swap", "-s", str(photo), "-i", str(photo), "-o", str(tmp_path / "out.png")]
    call = ["./scripts/dancecam", *args] if how == "script" else [sys.executable, "-m", "realtime", *args]
    done = subprocess.run(call, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "`" not in done.stderr, done.stderr
    found = re.search(r"run (.+? models convert [^ ]+(?: [^ (.]+)*)", done.stderr)
    assert found, done.stderr
    pasted = found.group(1).split(" and then ")[-1]  # `... models convert NAMES`: runs here, finds nothing to convert
    run = subprocess.run(pasted, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 127, (pasted, run.stderr)  # 127: the shell found no such command
    assert "not found" not in run.stderr.lower() or "model" in run.stderr.lower(), run.stderr
