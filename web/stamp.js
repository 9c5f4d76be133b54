// Glass-to-glass stamp: a frame number as a black/white code in the top-left corner of a frame.
// The same layout as realtime/stamp.py, pixel for pixel (integer geometry, the same rounding, the same luma):
// 4 rows x 7 columns of square cells, each 1/40 of the frame width; reference white cells at (0,0) and (3,6),
// black at (0,6) and (3,0); the other 24 cells in row-major order carry the 16-bit frame number (most
// significant bit first, white = 1) and then CRC-8 (poly 0x07, init 0xFF) of its two bytes.
// The reader averages the central half of each cell, thresholds halfway between the references, and returns
// null when the references lack contrast, a cell is ambiguous, or the checksum fails.

const COLUMNS_PER_WIDTH = 40;
const ROWS = 4;
const COLS = 7;
const MIN_CONTRAST = 48;
const AMBIGUOUS = 0.2;
const MODULO = 1 << 16;
const REF_WHITE = [[0, 0], [3, 6]];
const REF_BLACK = [[0, 6], [3, 0]];
const isRef = (r, c) => [...REF_WHITE, ...REF_BLACK].some(([rr, cc]) => rr === r && cc === c);
const BIT_CELLS = [];
for (let r = 0; r < ROWS; r++) {
  for (let c = 0; c < COLS; c++) if (!isRef(r, c)) BIT_CELLS.push([r, c]);
}

export function crc8(bytes) {
  let crc = 0xff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let i = 0; i < 8; i++) crc = crc & 0x80 ? ((crc << 1) ^ 0x07) & 0xff : (crc << 1) & 0xff;
  }
  return crc;
}

function bits(number) {
  const n = ((number % MODULO) + MODULO) % MODULO;
  const check = crc8([n >> 8, n & 0xff]);
  const out = [];
  for (let i = 0; i < 16; i++) out.push((n >> (15 - i)) & 1);
  for (let i = 0; i < 8; i++) out.push((check >> (7 - i)) & 1);
  return out;
}

// round(k * width / (40 * parts)) with halves rounded up, in integers as in stamp.py
function edge(k, width, parts = 1) {
  const div = COLUMNS_PER_WIDTH * parts;
  return Math.floor((2 * k * width + div) / (2 * div));
}

function cell(r, c, width) {
  return [edge(c, width), edge(r, width), edge(c + 1, width), edge(r + 1, width)];
}

function centre(r, c, width) {
  const x0 = edge(4 * c + 1, width, 4);
  const y0 = edge(4 * r + 1, width, 4);
  const x1 = edge(4 * c + 3, width, 4);
  const y1 = edge(4 * r + 3, width, 4);
  return [x0, y0, Math.max(x1, x0 + 1), Math.max(y1, y0 + 1)];
}

function fits(width, height) {
  return width >= 2 * COLUMNS_PER_WIDTH && edge(ROWS, width) <= height;
}

/** [x0, y0, x1, y1] (x1, y1 exclusive): the pixels the stamp covers in a frame of this size. */
export function stampRegion(width, height) {
  return [0, 0, Math.min(width, edge(COLS, width)), Math.min(height, edge(ROWS, width))];
}

function fill(imageData, [x0, y0, x1, y1], level) {
  const { data, width } = imageData;
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const i = 4 * (y * width + x);
      data[i] = data[i + 1] = data[i + 2] = level; // alpha left as it is
    }
  }
}

/** Write `n` (mod 2**16) into the top-left corner of a canvas ImageData (RGBA), in place. */
export function stampImageData(imageData, n) {
  const { width, height } = imageData;
  if (!fits(width, height)) throw new RangeError(`a ${width}x${height} frame is too small for the stamp`);
  bits(n).forEach((bit, i) => fill(imageData, cell(...BIT_CELLS[i], width), bit ? 255 : 0));
  for (const [r, c] of REF_WHITE) fill(imageData, cell(r, c, width), 255);
  for (const [r, c] of REF_BLACK) fill(imageData, cell(r, c, width), 0);
}

function mean(imageData, [x0, y0, x1, y1]) {
  const { data, width } = imageData;
  let sr = 0;
  let sg = 0;
  let sb = 0;
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const i = 4 * (y * width + x);
      sr += data[i];
      sg += data[i + 1];
      sb += data[i + 2];
    }
  }
  return (77 * sr + 150 * sg + 29 * sb) / ((y1 - y0) * (x1 - x0) * 256);
}

/** The frame number stamped in a canvas ImageData, or null when there is no valid code. */
export function readImageData(imageData) {
  const { width, height } = imageData;
  if (!fits(width, height)) return null;
  const whites = REF_WHITE.map(([r, c]) => mean(imageData, centre(r, c, width)));
  const blacks = REF_BLACK.map(([r, c]) => mean(imageData, centre(r, c, width)));
  const lo = (blacks[0] + blacks[1]) / 2;
  const hi = (whites[0] + whites[1]) / 2;
  if (Math.min(...whites) - Math.max(...blacks) < MIN_CONTRAST) return null;
  let number = 0;
  let check = 0;
  for (let i = 0; i < BIT_CELLS.length; i++) {
    const t = (mean(imageData, centre(...BIT_CELLS[i], width)) - lo) / (hi - lo);
    if (Math.abs(t - 0.5) < AMBIGUOUS) return null;
    const bit = t > 0.5 ? 1 : 0;
    if (i < 16) number = (number << 1) | bit;
    else check = (check << 1) | bit;
  }
  return crc8([number >> 8, number & 0xff]) === check ? number : null;
}
