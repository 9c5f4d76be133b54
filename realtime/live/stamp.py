"""Glass-to-glass stamp: a frame number written as a black/white code in the top-left corner of a frame.

Design notes: docs/design-notes.md, section realtime/live/stamp.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

COLUMNS_PER_WIDTH = 40  # a cell is width / 40 pixels wide and high
ROWS, COLS = 4, 7
WHITE, BLACK = 255, 0
MIN_CONTRAST = 48  # luma levels between the darkest reference white and the brightest reference black
AMBIGUOUS = 0.2  # a cell whose normalised level is within this of 0.5 is unreadable
MODULO = 1 << 16  # the frame number wraps at 16 bits

# (row, col) of the reference cells and the 24 bit cells in reading order: 16 number bits, then 8 CRC bits
REF_WHITE = ((0, 0), (3, 6))
REF_BLACK = ((0, 6), (3, 0))
_REFS = set(REF_WHITE) | set(REF_BLACK)
BIT_CELLS = tuple((r, c) for r in range(ROWS) for c in range(COLS) if (r, c) not in _REFS)
assert len(BIT_CELLS) == 24

# BT.601 luma weights in 1/256 units, the same integers in stamp.js
_LUMA = np.array([77, 150, 29], dtype=np.int64)


def crc8(data: bytes) -> int:
    """CRC-8, polynomial 0x07, initial value 0xFF (so an all-black code does not check out)."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _bits(number: int) -> list[int]:
    n = number % MODULO
    check = crc8(bytes([n >> 8, n & 0xFF]))
    return [(n >> (15 - i)) & 1 for i in range(16)] + [(check >> (7 - i)) & 1 for i in range(8)]


def _edge(k: int, width: int, parts: int = 1) -> int:
    """Pixel index of the k-th boundary when a cell is cut into `parts`: round(k * width / (40 * parts)), halves up."""
    div = COLUMNS_PER_WIDTH * parts
    return (2 * k * width + div) // (2 * div)


def _cell(row: int, col: int, width: int) -> tuple[int, int, int, int]:
    return _edge(col, width), _edge(row, width), _edge(col + 1, width), _edge(row + 1, width)


def _centre(row: int, col: int, width: int) -> tuple[int, int, int, int]:
    """The central half of a cell (its quarter boundaries), at least one pixel each way."""
    x0, y0 = _edge(4 * col + 1, width, 4), _edge(4 * row + 1, width, 4)
    x1, y1 = _edge(4 * col + 3, width, 4), _edge(4 * row + 3, width, 4)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def stamp_region(width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), x1 and y1 exclusive: the pixels the stamp covers in a frame of this size."""
    return 0, 0, min(width, _edge(COLS, width)), min(height, _edge(ROWS, width))


def _check_size(width: int, height: int) -> None:
    if width < 2 * COLUMNS_PER_WIDTH or _edge(ROWS, width) > height:  # cells of 2 px at least, block inside
        raise ValueError(f"a {width}x{height} frame is too small for the stamp")


def stamp(rgb: np.ndarray, number: int) -> None:
    """Write `number` (mod 2**16) into the top-left corner of an RGB uint8 (H, W, 3) frame, in place."""
    height, width = rgb.shape[:2]
    _check_size(width, height)
    for (r, c), bit in zip(BIT_CELLS, _bits(number), strict=True):
        x0, y0, x1, y1 = _cell(r, c, width)
        rgb[y0:y1, x0:x1] = WHITE if bit else BLACK
    for cells, level in ((REF_WHITE, WHITE), (REF_BLACK, BLACK)):
        for r, c in cells:
            x0, y0, x1, y1 = _cell(r, c, width)
            rgb[y0:y1, x0:x1] = level


def read(rgb: np.ndarray) -> int | None:
    """The number stamped in an RGB (H, W, 3) uint8 frame, or None when there is no valid code."""
    height, width = rgb.shape[:2]

    def mean(x0: int, y0: int, x1: int, y1: int) -> float:
        # integer sums then one division: stamp.js computes the very same value
        sums = rgb[y0:y1, x0:x1, :3].reshape(-1, 3).sum(axis=0, dtype=np.int64)
        return float(sums @ _LUMA) / ((y1 - y0) * (x1 - x0) * 256)

    return _decode(mean, width, height)


def read_luma(y: np.ndarray) -> int | None:
    """The number stamped in a luma plane (H, W) uint8, e.g. the Y plane of a decoded frame, or None."""
    height, width = y.shape[:2]
    return _decode(lambda x0, y0, x1, y1: float(y[y0:y1, x0:x1].mean()), width, height)


def read_yuv420p(data: bytes | np.ndarray, width: int, height: int) -> int | None:
    """The number stamped in packed yuv420p (I420) bytes: only the Y plane, the first width*height bytes, is read."""
    plane = np.frombuffer(data, dtype=np.uint8, count=width * height).reshape(height, width)
    return read_luma(plane)


def stamp_yuv420p(data: bytearray | np.ndarray, width: int, height: int, number: int) -> None:
    """Stamp packed yuv420p (I420) bytes in place: Y set to video-range black/white, chroma of the block to grey."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    y = buf[: width * height].reshape(height, width)
    _check_size(width, height)
    for (r, c), bit in zip(BIT_CELLS, _bits(number), strict=True):
        x0, y0, x1, y1 = _cell(r, c, width)
        y[y0:y1, x0:x1] = 235 if bit else 16
    for cells, level in ((REF_WHITE, 235), (REF_BLACK, 16)):
        for r, c in cells:
            x0, y0, x1, y1 = _cell(r, c, width)
            y[y0:y1, x0:x1] = level
    cw, ch = (width + 1) // 2, (height + 1) // 2
    _, _, x1, y1 = stamp_region(width, height)
    for offset in (width * height, width * height + cw * ch):
        chroma = buf[offset : offset + cw * ch].reshape(ch, cw)
        chroma[: (y1 + 1) // 2, : (x1 + 1) // 2] = 128


def _decode(mean: Callable[[int, int, int, int], float], width: int, height: int) -> int | None:
    try:
        _check_size(width, height)
    except ValueError:
        return None
    whites = [mean(*_centre(r, c, width)) for r, c in REF_WHITE]
    blacks = [mean(*_centre(r, c, width)) for r, c in REF_BLACK]
    lo, hi = sum(blacks) / len(blacks), sum(whites) / len(whites)
    if min(whites) - max(blacks) < MIN_CONTRAST:
        return None
    bits = []
    for r, c in BIT_CELLS:
        t = (mean(*_centre(r, c, width)) - lo) / (hi - lo)
        if abs(t - 0.5) < AMBIGUOUS:
            return None
        bits.append(1 if t > 0.5 else 0)
    number = int("".join(map(str, bits[:16])), 2)
    check = int("".join(map(str, bits[16:])), 2)
    return number if crc8(bytes([number >> 8, number & 0xFF])) == check else None
