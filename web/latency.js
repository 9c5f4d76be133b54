// Glass-to-glass latency. The camera is drawn into a canvas, each frame gets its number stamped into the top-left
// corner (stamp.js, the same code realtime/stamp.py reads and writes), and the canvas is what the page sends.
// On the returned video each new frame is drawn into a small canvas, the number is read back and matched with
// the time that frame was stamped. The stamp's cells are fractions of the frame width, so a downscaled canvas,
// or an encoder that lowers the resolution, still reads back.

import * as stamp from './stamp.js';

const MODULO = 1 << 16; // the stamp carries 16 bits (realtime/stamp.py MODULO)
const SENT_SLOTS = 1024; // send times remembered: far more than the frames in flight
const WINDOW = 100; // glass-to-glass samples in the percentiles
const LOG_SLOTS = 8192; // timed samples kept for benchmarks (4.5 min at 30 fps)
const READ_WIDTH = 320; // width of the read-back canvas (cells of 8 px)
const STAMP_ROWS_PER_WIDTH = 4 / 40; // the code is 4 cells high, a cell is 1/40 of the width

/** Calls `fn(nowMs, metadata)` on every new frame of a <video>; requestAnimationFrame where rVFC is absent. */
export function onVideoFrames(video, fn) {
  let stopped = false;
  if (typeof video.requestVideoFrameCallback === 'function') {
    let handle = 0;
    const tick = (now, metadata) => {
      if (stopped) return;
      fn(now, metadata);
      handle = video.requestVideoFrameCallback(tick);
    };
    handle = video.requestVideoFrameCallback(tick);
    return () => {
      stopped = true;
      video.cancelVideoFrameCallback(handle);
    };
  }
  // Fallback: poll on animation frames and act only when the playback position moved.
  let handle = 0;
  let last = -1;
  const tick = (now) => {
    if (stopped) return;
    if (video.currentTime !== last && video.readyState >= 2) {
      last = video.currentTime;
      fn(now, null);
    }
    handle = requestAnimationFrame(tick);
  };
  handle = requestAnimationFrame(tick);
  return () => {
    stopped = true;
    cancelAnimationFrame(handle);
  };
}

/** p-th percentile (0..100) of numbers, linear between closest ranks; null when empty. */
export function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
}

/** Counts events and reports their rate over the last second. */
class RateMeter {
  constructor() {
    this.times = [];
  }

  tick(now) {
    this.times.push(now);
    while (this.times.length && now - this.times[0] > 1000) this.times.shift();
  }

  rate(now) {
    const recent = this.times.filter((t) => now - t <= 1000);
    return recent.length;
  }
}

/**
 * The outgoing side: draws the camera <video> into `canvas`, stamps each frame's number, and remembers when.
 * `track(fps)` is the canvas' captured video track to send.
 */
export class StampedSender {
  constructor(cameraVideo, canvas) {
    this.video = cameraVideo;
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d', { willReadFrequently: true, alpha: false });
    this.sent = new Array(SENT_SLOTS).fill(null); // slot n % SENT_SLOTS -> { n, t }
    this.next = 0;
    this.frames = 0;
    this.stampOk = true;
    this.measure = false; // true only while the user measures: the code is in the video everyone downstream sees
    this.stop = null;
  }

  start() {
    if (!this.stop) this.stop = onVideoFrames(this.video, () => this.draw());
  }

  halt() {
    if (this.stop) this.stop();
    this.stop = null;
  }

  /** Measure or not. Off takes effect at once: the canvas is redrawn without the code, not at the next frame. */
  setMeasure(on) {
    this.measure = on;
    if (!on) this.draw();
  }

  /** A video track of the canvas, `fps` frames a second at most. */
  track(fps) {
    return this.canvas.captureStream(fps).getVideoTracks()[0];
  }

  draw() {
    const { videoWidth: w, videoHeight: h } = this.video;
    if (!w || !h) return;
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    this.ctx.drawImage(this.video, 0, 0, w, h);
    const n = this.next;
    if (this.measure && this.stampBand(w, h, n)) {
      this.sent[n % SENT_SLOTS] = { n, t: performance.now() };
      this.next = (n + 1) % MODULO;
    }
    this.frames += 1;
  }

  /** Stamp `n` into the top band of the canvas; only that band is read and written back. */
  stampBand(w, h, n) {
    const band = Math.min(h, Math.ceil(w * STAMP_ROWS_PER_WIDTH) + 1);
    try {
      const image = this.ctx.getImageData(0, 0, w, band);
      stamp.stampImageData(image, n);
      this.ctx.putImageData(image, 0, 0);
      this.stampOk = true;
      return true;
    } catch {
      this.stampOk = false; // a frame too small for the code: sent without one
      return false;
    }
  }

  /** When frame `n` was stamped (performance.now() ms), or null if it is no longer remembered. */
  sentAt(n) {
    const entry = this.sent[n % SENT_SLOTS];
    return entry && entry.n === n ? entry.t : null;
  }
}

/**
 * The returning side: reads the stamp from each new frame of the returned <video> and keeps the latest WINDOW
 * glass-to-glass times. A repeated frame (same number again) is counted once.
 */
export class StampReader {
  constructor(remoteVideo, sender) {
    this.video = remoteVideo;
    this.sender = sender;
    this.canvas = document.createElement('canvas');
    this.ctx = this.canvas.getContext('2d', { willReadFrequently: true, alpha: false });
    this.samples = [];
    this.log = []; // [shownAt ms, glass-to-glass ms], the newest LOG_SLOTS
    this.logged = 0; // samples ever logged: the index of the next one
    this.meter = new RateMeter();
    this.frames = 0; // returned frames seen
    this.read = 0; // frames whose stamp was read
    this.unreadable = 0;
    this.repeats = 0;
    this.lastNumber = null;
    this.width = 0;
    this.height = 0;
    this.stop = null;
  }

  start() {
    if (!this.stop) this.stop = onVideoFrames(this.video, (now, meta) => this.onFrame(now, meta));
  }

  halt() {
    if (this.stop) this.stop();
    this.stop = null;
  }

  onFrame(now, metadata) {
    const { videoWidth: w, videoHeight: h } = this.video;
    if (!w || !h) return;
    this.frames += 1;
    this.width = w;
    this.height = h;
    const arrived = performance.now();
    this.meter.tick(arrived);
    if (!this.sender.measure) return;
    const n = this.readNumber(w, h);
    if (n === null) {
      this.unreadable += 1;
      return;
    }
    this.read += 1;
    if (n === this.lastNumber) {
      this.repeats += 1;
      return;
    }
    this.lastNumber = n;
    const sentAt = this.sender.sentAt(n);
    if (sentAt === null) return;
    // the frame's presentation time when the browser gives one, else now
    const shownAt = metadata && metadata.expectedDisplayTime ? metadata.expectedDisplayTime : arrived;
    const ms = Math.max(0, shownAt - sentAt);
    this.samples.push(ms);
    if (this.samples.length > WINDOW) this.samples.shift();
    this.log.push([shownAt, ms]);
    if (this.log.length > LOG_SLOTS) this.log.shift();
    this.logged += 1;
  }

  /** The timed samples logged from index `since` on (as many as are still kept) and the index to ask from next. */
  samplesSince(since) {
    const first = this.logged - this.log.length;
    return { next: this.logged, samples: this.log.slice(Math.max(0, since - first)) };
  }

  readNumber(w, h) {
    const cw = Math.min(w, READ_WIDTH);
    const ch = Math.max(1, Math.round((h * cw) / w));
    if (this.canvas.width !== cw || this.canvas.height !== ch) {
      this.canvas.width = cw;
      this.canvas.height = ch;
    }
    this.ctx.drawImage(this.video, 0, 0, cw, ch);
    const band = Math.min(ch, Math.ceil(cw * STAMP_ROWS_PER_WIDTH) + 1);
    try {
      return stamp.readImageData(this.ctx.getImageData(0, 0, cw, band));
    } catch {
      return null;
    }
  }

  /** Forget the glass-to-glass samples (e.g. when measuring is switched off or on). */
  reset() {
    this.samples = [];
    this.lastNumber = null;
  }

  /** { measuring, p50, p95, n, fps, frames, read, unreadable, repeats, width, height }; p50/p95 null if no samples. */
  summary() {
    return {
      measuring: this.sender.measure,
      p50: percentile(this.samples, 50),
      p95: percentile(this.samples, 95),
      n: this.samples.length,
      fps: this.meter.rate(performance.now()),
      frames: this.frames,
      read: this.read,
      unreadable: this.unreadable,
      repeats: this.repeats,
      width: this.width,
      height: this.height,
    };
  }
}
