"""The pipeline's command-line options, shared by `dancecam swap` and `dancecam cam` (the badge's by `dancecam serve`
too), and the options they make."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.choices import BACKEND_CHOICES, DEFAULT_BACKEND, DEFAULT_DETECTOR, DEFAULT_DEVICE, DETECTORS
from realtime.pipeline.choices import (
    BADGE_POSITIONS,
    BADGE_TEXT_MAX,
    DEFAULT_BADGE_POSITION,
    DEFAULT_BADGE_TEXT,
    DEFAULT_DETECT_EVERY,
    DEFAULT_DETECT_ON_CHANGE,
    DEFAULT_ENGINE,
    DEFAULT_FACE_MODE,
    DEFAULT_MASK,
    DEFAULT_MAX_FACES,
    DEFAULT_STYLE,
    DEFAULT_THRESHOLD,
    ENGINES,
    FACE_MODES,
    MASKS,
    STYLES,
    AnonymizeStyle,
)

if TYPE_CHECKING:
    from realtime.files.swap import SwapOptions
    from realtime.pipeline.badge import Badge


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """--engine and the face choice, blending and running groups."""
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=DEFAULT_ENGINE,
        help="facedancer (default; needs the model weights), identity (no weights: faces are detected, aligned "
        "and blended back unchanged) or anonymize (no weights, no source photo: faces hidden, see --style)",
    )
    add_style(p)
    faces = p.add_argument_group("which faces")
    faces.add_argument("--faces", choices=FACE_MODES, default=DEFAULT_FACE_MODE, help=f"default: {DEFAULT_FACE_MODE}")
    faces.add_argument(
        "--reference", type=Path, metavar="PHOTO", help="photo of the person whose face to swap (--faces reference)"
    )
    faces.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"cosine similarity to the reference that counts (default {DEFAULT_THRESHOLD})",
    )
    faces.add_argument(
        "--max-faces",
        type=int,
        default=DEFAULT_MAX_FACES,
        metavar="K",
        help=f"at most K faces per frame (default {DEFAULT_MAX_FACES})",
    )
    add_hide_bystanders(faces)
    blend = p.add_argument_group("blending")
    blend.add_argument("--mask", choices=MASKS, default=DEFAULT_MASK, help=f"default: {DEFAULT_MASK}")
    blend.add_argument("--feather", type=float, metavar="PX", help="mask blur sigma in crop pixels (default 7)")
    blend.add_argument("--erode", type=int, default=0, metavar="PX", help="shrink the mask by PX crop pixels")
    blend.add_argument(
        "--colour-transfer",
        "--color-transfer",
        action="store_true",
        help="match the swapped face's colours to the target face",
    )
    add_badge(p)
    run = p.add_argument_group("running")
    add_simulate_ms(run)
    run.add_argument(
        "--draw-boxes", action="store_true", help="outline the tracked faces in the output (green: swapped)"
    )
    run.add_argument(
        "--detect-every",
        type=int,
        default=DEFAULT_DETECT_EVERY,
        metavar="N",
        help=f"detect every N frames, track between (default {DEFAULT_DETECT_EVERY})",
    )
    add_detect_on_change(run)
    run.add_argument("--device", default=DEFAULT_DEVICE, help="auto (default), cpu or cuda[:N]")
    run.add_argument(
        "--detector",
        choices=DETECTORS,
        default=DEFAULT_DETECTOR,
        help="face detector: auto (default: SCRFD on a GPU when det_10g.onnx is downloaded, else MTCNN), mtcnn "
        "or scrfd",
    )
    run.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=DEFAULT_BACKEND,
        help="how FaceDancer runs: auto (default: the fastest present, said at start), eager, onnxruntime, "
        "cuda-graphs or tensorrt",
    )
    run.add_argument(
        "--model-dir", type=Path, default=None, help="model directory (default: $DANCECAM_HOME or ~/.cache/dancecam)"
    )


def add_detect_on_change(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--no-detect-on-change",
        dest="detect_on_change",
        action="store_false",
        default=DEFAULT_DETECT_ON_CHANGE,
        help="detect only every N frames: a face that comes in between two detections is then shown unhidden until "
        "the next (default: also detect on any frame where something changed outside the tracked faces)",
    )


def add_hide_bystanders(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--hide-bystanders",
        action="store_true",
        help="hide the faces not chosen (--faces largest or reference, or past --max-faces) as --engine anonymize "
        "would (--style): only the chosen face is swapped and nobody else is shown",
    )


def add_badge(p: argparse.ArgumentParser) -> None:
    """--badge, --badge-text and --badge-position: a visible mark that the video is altered, off by default."""
    group = p.add_argument_group("disclosure")
    group.add_argument(
        "--badge",
        action="store_true",
        help=f"mark every output frame as altered: '{DEFAULT_BADGE_TEXT}' on a dark box in the "
        f"{DEFAULT_BADGE_POSITION} corner (off by default)",
    )
    group.add_argument(
        "--badge-text",
        type=badge_text,
        metavar="TEXT",
        help=f"the badge's text (turns it on): printable ASCII, at most {BADGE_TEXT_MAX} characters",
    )
    group.add_argument(
        "--badge-position",
        choices=BADGE_POSITIONS,
        help=f"the badge's corner (turns it on; default {DEFAULT_BADGE_POSITION})",
    )


def badge_text(text: str) -> str:
    """argparse type of `--badge-text`."""
    from engines.errors import ConfigError
    from realtime.pipeline.badge import check_badge_text

    try:
        return check_badge_text(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def badge_option(args: argparse.Namespace) -> Badge | None:
    """The badge `add_badge`'s options ask for (any of them turns it on), or None."""
    if not args.badge and args.badge_text is None and args.badge_position is None:
        return None
    from realtime.pipeline.badge import Badge

    return Badge(args.badge_text or DEFAULT_BADGE_TEXT, args.badge_position or DEFAULT_BADGE_POSITION)


def add_style(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--style",
        choices=STYLES,
        default=None,
        help=f"how --engine anonymize hides faces: pixelate (~10 blocks across a face), blur (sigma a quarter of "
        f"the face's width) or fill (solid black); default {DEFAULT_STYLE}",
    )


def anonymize_style(args: argparse.Namespace) -> AnonymizeStyle:
    """`--style`, or its default; `ConfigError` when given for an engine that does not hide faces."""
    from engines.errors import ConfigError

    if args.style is not None and args.engine != "anonymize" and not args.hide_bystanders:
        raise ConfigError(
            f"--style is for --engine anonymize or --hide-bystanders (they hide faces); --engine {args.engine} "
            "swaps them"
        )
    return args.style or DEFAULT_STYLE


def check_source(args: argparse.Namespace) -> None:
    """`-s/--source` is required, except by the anonymize engine, which puts no face in."""
    from engines.errors import ConfigError

    if not args.source and args.engine != "anonymize":
        raise ConfigError(
            f"--engine {args.engine} needs -s/--source PHOTO, the face to put in (only --engine anonymize needs none)"
        )


def source_photo(text: str) -> tuple[Path, float]:
    """argparse type of `--source PHOTO[:WEIGHT]`."""
    from engines.errors import ConfigError
    from realtime.identity.source import parse_photo_arg

    try:
        return parse_photo_arg(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_source(p: argparse._ActionsContainer, required: bool, help: str) -> None:
    """`-s/--source PHOTO[:WEIGHT]`, repeatable: several photos mix into one identity by their weights."""
    p.add_argument(
        "-s",
        "--source",
        action="append",
        required=required,
        type=source_photo,
        metavar="PHOTO[:WEIGHT]",
        help=f"{help}; repeat it to mix several photos into one identity, each weighted (default weight 1)",
    )


def add_simulate_ms(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--simulate-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="add MS milliseconds of simulated swap work to every frame with a face (e.g. --engine identity "
        "--simulate-ms 66: about 15 fps, to see dropping, repeating and degradation at work)",
    )


def swap_options(args: argparse.Namespace, **extra: Any) -> SwapOptions:
    """`SwapOptions` from the options `add_pipeline_options` added (plus `extra` fields)."""
    from realtime.files.swap import SwapOptions

    return SwapOptions(
        engine=args.engine,
        style=anonymize_style(args),
        faces=args.faces,
        reference=args.reference,
        threshold=args.threshold,
        max_faces=args.max_faces,
        mask=args.mask,
        feather_px=args.feather,
        erode_px=args.erode,
        colour_transfer=args.colour_transfer,
        detect_every=args.detect_every,
        detect_on_change=args.detect_on_change,
        model_dir=args.model_dir,
        device=args.device,
        backend=args.backend,
        detector=args.detector,
        simulate_ms=args.simulate_ms,
        draw_boxes=args.draw_boxes,
        hide_bystanders=args.hide_bystanders,
        badge=badge_option(args),
        **extra,
    )
