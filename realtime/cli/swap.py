"""`dancecam swap`: file mode's command line (the work is in `realtime.files.swap`, imported only when it runs, so
that `dancecam --help` does not load torch and FFmpeg)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from engines.command import styled
from realtime.cli.options import add_pipeline_options, add_source, check_source, swap_options

if TYPE_CHECKING:
    from realtime.files.swap import SwapReport


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "swap",
        help="swap a source face into a photo or a video file",
        description="Swap the face of a source photo into a photo (jpg, png) or a video (mp4, mov, webm), frame by "
        "frame. Video keeps its frame count, timing and audio. The output is written only when complete (Ctrl-C "
        "keeps a playable partial video).",
    )
    add_source(p, False, "photo of the face to put in (required, except by --engine anonymize)")
    p.add_argument("-i", "--input", required=True, type=Path, metavar="FILE", help="photo or video to swap faces in")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="FILE",
        help="result: .jpg or .png for a photo, .mp4, .mov or .webm for a video",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    add_pipeline_options(p)
    p.set_defaults(handler=cmd_swap)


class FpsColumn(ProgressColumn):
    """Frames per second, from rich's own speed estimate."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} fps" if task.speed else "– fps", style="progress.data.speed")


def cmd_swap(args: argparse.Namespace) -> int:
    from realtime.files.swap import swap_file

    options = swap_options(args, overwrite=args.overwrite)  # a bad --style first: it says which engine to use
    check_source(args)
    err = Console(stderr=True, highlight=False)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        FpsColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=args.quiet or not err.is_terminal,
        transient=False,
    ) as progress:
        task = progress.add_task(f"loading models for {args.input.name}", total=None)

        def report(done: int, total: int | None) -> None:
            if done == 0:
                progress.update(task, description=f"swapping {args.input.name}")
            progress.update(task, completed=done, total=total)

        result = swap_file(args.source or [], args.input, args.output, options, progress=report)
    if not args.quiet:
        _summary(result)
    return 0


def _summary(result: SwapReport) -> None:
    out = Console(highlight=False)
    w, h = result.size
    if result.kind == "image":
        what = f"{w}x{h}, {'a face' if result.frames_with_faces else 'no face'} swapped"
    else:
        audio = f", audio {result.audio}" if result.audio else ", no audio"
        what = f"{result.frames} frames at {w}x{h} ({result.frames_with_faces} with faces){audio}"
    out.print(f"[green]✓[/] {escape(str(result.output))}: {what}", soft_wrap=True)
    for note in result.notes:
        out.print(f"  note: {styled(note)}", soft_wrap=True)
    if result.fail_closed:
        out.print(
            f"  [yellow]{result.fail_closed} frame(s) fell back to a repeated or hidden face (the swap failed there)",
            soft_wrap=True,
        )
