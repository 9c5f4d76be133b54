"""The `dancecam` command: argument parsing and the one place that turns errors into messages and exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from engines.command import styled
from engines.errors import DanceCamError
from realtime import __version__
from realtime.cli import bench as bench_cli
from realtime.cli import cam as cam_cli
from realtime.cli import host as host_cli
from realtime.cli import models as models_cli
from realtime.cli import serve as serve_cli
from realtime.cli import swap as swap_cli

_INTERRUPTED = {"models": "interrupted; partial downloads are kept and resume on the next run"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dancecam",
        description="DanceCam: real-time face swapping for live video (FaceDancer).",
        epilog="Consent of the people whose faces you use is yours to obtain. Nothing leaves this machine "
        "unless you stream it.",
    )
    parser.add_argument("--version", action="version", version=f"dancecam {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    models_cli.add_parser(commands)
    swap_cli.add_parser(commands)
    cam_cli.add_parser(commands)
    serve_cli.add_parser(commands)
    host_cli.add_parser(commands)
    bench_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 failure, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True, highlight=False)
    try:
        return int(args.handler(args) or 0)
    except DanceCamError as e:
        err.print(f"[bold red]error:[/] {styled(str(e))}", soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt as e:  # a command may say itself what was kept
        err.print(escape(str(e) or _INTERRUPTED.get(args.command, "interrupted")), soft_wrap=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
