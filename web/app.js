// DanceCam page: wires the camera, the source photo, the live session, the settings and the stats overlay.

import { getInfo, getStats, putSettings } from './api.js';
import { FRAME_RATES, RESOLUTIONS, cameraErrorMessage, listDevices, openCamera, stopStream } from './camera.js';
import { StampReader, StampedSender } from './latency.js';
import { StatsOverlay } from './overlay.js';
import { LiveSession } from './session.js';
import { SettingsForm } from './settings.js';
import { SourcePicker } from './source.js';

const STATS_INTERVAL_MS = 1000;
const $ = (id) => document.getElementById(id);

const state = {
  info: null,
  camera: null, // { stream, audio, note }
  session: null,
  sendTrack: null,
  statsTimer: 0,
  lastSettings: null,
};

const els = {
  conn: $('conn-state'),
  local: $('local'),
  remote: $('remote'),
  placeholder: $('remote-placeholder'),
  start: $('start'),
  stop: $('stop'),
  camera: $('camera'),
  mic: $('mic'),
  resolution: $('resolution'),
  fps: $('fps'),
  cameraStatus: $('camera-status'),
  sessionNote: $('session-note'),
  settingsStatus: $('settings-status'),
  playAudio: $('play-audio'),
};

const sender = new StampedSender(els.local, $('send-canvas'));
const reader = new StampReader(els.remote, sender);
const overlay = new StatsOverlay($('overlay'));
const settings = new SettingsForm($('settings'), applySettings);

// --- messages -------------------------------------------------------------------------------------------------

function showError(message) {
  $('error-text').textContent = message;
  $('error').hidden = false;
}

function clearError() {
  $('error').hidden = true;
  $('error-text').textContent = '';
}

function setConnection(text) {
  els.conn.textContent = text;
  els.conn.dataset.state = text.split(' ')[0];
}

function setStatus(el, text, kind = 'info') {
  el.textContent = text;
  el.dataset.kind = kind;
}

// --- server info and the missing-weights notice ---------------------------------------------------------------

function showWeightsNotice(weights) {
  const missing = weights && weights.ok === false;
  $('weights-notice').hidden = !missing;
  if (!missing) return;
  $('weights-message').textContent = weights.message || 'The face-swap model files are not on the server.';
  $('weights-command').textContent = weights.command || 'dancecam models list';
}

async function copyCommand() {
  const text = $('weights-command').textContent;
  try {
    await navigator.clipboard.writeText(text);
    $('copy-status').textContent = 'Copied.';
  } catch {
    const range = document.createRange();
    range.selectNodeContents($('weights-command'));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    $('copy-status').textContent = 'Selected: press Ctrl+C (⌘C) to copy.';
  }
}

function showServerInfo(sessions) {
  const info = state.info;
  if (!info) return;
  const count = `${sessions}/${info.max_sessions} sessions`;
  $('server-info').textContent = `DanceCam ${info.version} · engine ${info.engine} on ${info.device} · ${count}`;
}

async function loadInfo() {
  try {
    const info = await getInfo();
    state.info = info;
    showWeightsNotice(info.weights);
    source.showServerSource(info.source, info.needs_source !== false);
    settings.applyLimits(info.limits);
    if (info.settings) {
      settings.show(info.settings);
      state.lastSettings = { ...info.settings };
    }
    showServerInfo(info.sessions);
  } catch (err) {
    $('server-info').textContent = 'server not reachable';
    showError(`Cannot read the server's state: ${err.message}`);
  }
}

// --- camera -----------------------------------------------------------------------------------------------------

function fillSelect(select, options, selected) {
  const keep = [...select.options].filter((o) => o.dataset.fixed === 'true');
  select.replaceChildren(...keep);
  for (const { value, label } of options) select.add(new Option(label, value, false, value === selected));
}

function fillFormats() {
  fillSelect(
    els.resolution,
    RESOLUTIONS.map(([w, h]) => ({ value: `${w}x${h}`, label: `${w}×${h}` })),
    '640x480',
  );
  fillSelect(
    els.fps,
    FRAME_RATES.map((f) => ({ value: String(f), label: `${f} fps` })),
    '30',
  );
  for (const option of els.mic.options) option.dataset.fixed = 'true';
}

function cameraChoice() {
  const [width, height] = els.resolution.value.split('x').map(Number);
  return { deviceId: els.camera.value || undefined, micId: els.mic.value, width, height, fps: Number(els.fps.value) };
}

async function refreshDevices() {
  const { cameras, mics } = await listDevices();
  const track = state.camera && state.camera.stream.getVideoTracks()[0];
  const current = track && track.getSettings().deviceId;
  fillSelect(els.camera, cameras.map((c) => ({ value: c.deviceId, label: c.label })), current);
  const micTrack = state.camera && state.camera.stream.getAudioTracks()[0];
  const micNow = micTrack && micTrack.getSettings().deviceId;
  const chosenMic = els.mic.value;
  fillSelect(els.mic, mics.map((m) => ({ value: m.deviceId, label: m.label })), micNow);
  if (chosenMic === 'none' || chosenMic === '') els.mic.value = chosenMic;
}

function describeCamera(camera) {
  const track = camera.stream.getVideoTracks()[0];
  const s = track.getSettings();
  const size = s.width && s.height ? `${s.width}×${s.height}` : 'unknown size';
  const fps = s.frameRate ? ` at ${Math.round(s.frameRate)} fps` : '';
  const audio = camera.audio ? ', with microphone' : ', no audio';
  return `${track.label || 'camera'}: ${size}${fps}${audio}${camera.note ? ` (${camera.note})` : ''}`;
}

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setStatus(els.cameraStatus, 'This page cannot use a camera here: open it over https or on localhost.', 'error');
    return false;
  }
  setStatus(els.cameraStatus, 'Opening the camera…', 'busy');
  let camera;
  try {
    camera = await openCamera(cameraChoice());
  } catch (err) {
    setStatus(els.cameraStatus, cameraErrorMessage(err), 'error');
    return false;
  }
  const previous = state.camera;
  state.camera = camera;
  els.local.srcObject = camera.stream;
  stopStream(previous && previous.stream);
  await els.local.play().catch(() => {}); // autoplay (muted) normally starts it already
  sender.start();
  setStatus(els.cameraStatus, describeCamera(camera), 'ok');
  await refreshDevices().catch(() => {});
  if (state.session) await followCamera();
  return true;
}

async function followCamera() {
  // the canvas track keeps flowing across a camera change; only the audio track and the frame rate follow
  const fps = Number(els.fps.value);
  const track = sender.track(fps);
  await state.session.replaceVideo(track);
  if (state.sendTrack) state.sendTrack.stop();
  state.sendTrack = track;
  const audio = els.mic.value === 'none' ? null : state.camera.stream.getAudioTracks()[0] || null;
  await state.session.replaceAudio(audio);
}

// --- live session -----------------------------------------------------------------------------------------------

function setLive(live) {
  els.start.disabled = live;
  els.stop.disabled = !live;
  els.placeholder.hidden = live;
}

function onTrack(event) {
  const stream = els.remote.srcObject instanceof MediaStream ? els.remote.srcObject : new MediaStream();
  stream.addTrack(event.track);
  if (els.remote.srcObject !== stream) els.remote.srcObject = stream;
  if (event.track.kind === 'video') {
    reader.start();
    els.remote.play().catch(() => {});
  }
}

function onSessionState(text) {
  setConnection(text);
  if (text === 'failed') {
    showError('The connection to the server failed (no network path between browser and server).');
    stopSession();
  }
}

async function startSession() {
  clearError();
  if (!state.camera && !(await startCamera())) {
    showError('Start needs a camera: see the camera panel.');
    return;
  }
  setLive(true);
  const fps = Number(els.fps.value);
  state.sendTrack = sender.track(fps);
  const audio = els.mic.value === 'none' ? null : state.camera.stream.getAudioTracks()[0] || null;
  const session = new LiveSession({ onState: onSessionState, onTrack });
  state.session = session;
  try {
    await session.start({ videoTrack: state.sendTrack, audioTrack: audio, settings: settings.current() });
  } catch (err) {
    const noWeights = err.status === 503 && !$('weights-notice').hidden;
    showError(`Could not start: ${noWeights ? 'the server has no model weights (see the notice above)' : err.message}`);
    await stopSession();
    return;
  }
  if (state.session !== session) return; // stopped meanwhile
  setStatus(els.sessionNote, `Session ${session.id}${audio ? '' : ' (video only)'}.`, 'ok');
  pollStats();
}

async function stopSession() {
  const session = state.session;
  state.session = null;
  clearTimeout(state.statsTimer);
  reader.halt();
  if (state.sendTrack) state.sendTrack.stop();
  state.sendTrack = null;
  if (els.remote.srcObject) {
    for (const track of els.remote.srcObject.getTracks()) track.stop();
    els.remote.srcObject = null;
  }
  overlay.clear();
  setLive(false);
  setConnection('idle');
  setStatus(els.sessionNote, '');
  if (session) {
    try {
      await session.end();
    } catch (err) {
      showError(`The server did not end the session: ${err.message}`);
    }
  }
}

async function pollStats() {
  const session = state.session;
  if (!session || !session.id) return;
  let mine = null;
  try {
    const stats = await getStats(session.id);
    mine = (stats.sessions || []).find((s) => s.id === session.id) || null;
    if (stats.server) showServerInfo(stats.server.sessions);
  } catch (err) {
    if (err.status === 404 && state.session === session) {
      showError('The server ended this session.');
      await stopSession();
      return;
    }
  }
  if (state.session !== session) return;
  overlay.render(mine, reader.summary());
  state.statsTimer = setTimeout(pollStats, STATS_INTERVAL_MS);
}

// --- settings ---------------------------------------------------------------------------------------------------

async function applySettings(partial) {
  const session = state.session;
  if (!session || !session.id) {
    setStatus(els.settingsStatus, 'Used when the session starts.', 'info');
    return;
  }
  setStatus(els.settingsStatus, 'Applying…', 'busy');
  try {
    const full = await putSettings(session.id, partial);
    settings.show(full);
    state.lastSettings = full;
    setStatus(els.settingsStatus, 'Applied.', 'ok');
  } catch (err) {
    if (state.lastSettings) settings.show(state.lastSettings);
    setStatus(els.settingsStatus, `Not applied: ${err.message}`, 'error');
  }
}

// --- wiring -----------------------------------------------------------------------------------------------------

const source = new SourcePicker(
  {
    zone: $('drop-zone'),
    input: $('source-file'),
    preview: $('source-preview'),
    box: $('source-box'),
    status: $('source-status'),
  },
  () => clearError(),
);

function wire() {
  els.start.addEventListener('click', startSession);
  els.stop.addEventListener('click', stopSession);
  for (const el of [els.camera, els.mic, els.resolution, els.fps]) el.addEventListener('change', startCamera);
  els.playAudio.addEventListener('change', () => {
    els.remote.muted = !els.playAudio.checked;
  });
  $('measure').addEventListener('change', () => {
    sender.measure = $('measure').checked;
    reader.reset();
  });
  $('copy-command').addEventListener('click', copyCommand);
  $('error-dismiss').addEventListener('click', clearError);
  window.addEventListener('pagehide', () => {
    if (state.session) state.session.end({ keepalive: true }).catch(() => {});
  });
  if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
    navigator.mediaDevices.addEventListener('devicechange', () => refreshDevices().catch(() => {}));
  }
}

/** A read-only view for tests and debugging in the console. */
window.dancecam = {
  status() {
    return {
      connection: els.conn.textContent,
      session: state.session ? state.session.id : null,
      latency: reader.summary(),
      sent: sender.frames,
      weightsMissing: !$('weights-notice').hidden,
      error: $('error').hidden ? null : $('error-text').textContent,
    };
  },
  /** The live connection's RTCStatsReport (null when idle): candidate pairs, codecs, bitrates. */
  async peerStats() {
    const pc = state.session && state.session.pc;
    return pc ? pc.getStats() : null;
  },
};

fillFormats();
wire();
overlay.clear();
setLive(false);
loadInfo();
startCamera();
