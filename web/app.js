// DanceCam page: wires the camera, the source photo, the live session, the settings, the stats overlay, the
// access-token prompt and whether Start can be pressed.

import { getInfo, getStats, onUnauthorized, putSettings } from './api.js';
import { FRAME_RATES, RESOLUTIONS, cameraErrorMessage, listDevices, openCamera, stopStream } from './camera.js';
import { StampReader, StampedSender } from './latency.js';
import { StatsOverlay } from './overlay.js';
import { CONNECT_TIMEOUT_MS, LiveSession } from './session.js';
import { SettingsForm } from './settings.js';
import { SourceMixer } from './source.js';
import { setTextWithCode } from './text.js';
import { TokenPrompt } from './token.js';

const STATS_INTERVAL_MS = 1000;
const $ = (id) => document.getElementById(id);

const state = {
  info: null,
  infoProblem: 'Waiting for the server…', // why there is no info (null once it loaded)
  settingsShown: false, // the form shows the server's settings (done once: later reads keep the user's edits)
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
  startReason: $('start-reason'),
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
const overlay = new StatsOverlay($('overlay'), $('show-overlay'));
const settings = new SettingsForm($('settings'), applySettings);

// --- messages -------------------------------------------------------------------------------------------------

function showError(message) {
  setTextWithCode($('error-text'), message);
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
  setTextWithCode(el, text); // server text names commands between backticks
  el.dataset.kind = kind;
}

// --- server info, the missing-weights notice and the token prompt --------------------------------------------

/** The style control: for the anonymize engine, and for the bystanders when they are hidden. */
function showStyleField() {
  const hides = state.info?.engine === 'anonymize' || $('set-hide-bystanders').checked;
  $('style-field').hidden = !hides;
  $('set-style').disabled = !hides; // a disabled control is neither sent nor shown as a setting
}

function showWeightsNotice(weights) {
  const missing = weights && weights.ok === false;
  $('weights-notice').hidden = !missing;
  if (!missing) return;
  setTextWithCode($('weights-message'), weights.message || 'The face-swap model files are not on the server.');
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

/** Start is enabled only when idle and the server can swap; otherwise the reason is shown beside it. */
function updateStart() {
  const live = Boolean(state.session);
  // can_swap: {ok, reason}, e.g. no weights or no source photo yet (the reason names the command to run)
  const ready = state.info ? state.info.can_swap : { ok: false, reason: state.infoProblem };
  els.start.disabled = live || !ready.ok;
  if (live || ready.ok) setStatus(els.startReason, '');
  else if (state.info && state.info.weights && state.info.weights.ok === false) {
    // the notice above has the server's whole message and the command: no second copy of it here
    setStatus(els.startReason, 'The server has no model weights yet: see “Model weights are missing” above.', 'error');
  } else setStatus(els.startReason, ready.reason || 'The server cannot swap faces yet.', state.info ? 'error' : 'info');
}

/** Read GET /api/info and show what depends on it; true when it worked. */
async function loadInfo() {
  let info;
  try {
    info = await getInfo();
  } catch (err) {
    if (err.status === 401) {
      state.infoProblem = 'Start needs the access token (above).';
      $('server-info').textContent = 'the server needs its access token';
    } else if (err.status === 0) {
      state.infoProblem = 'The server is not reachable: reload once dancecam serve runs.';
      $('server-info').textContent = 'server not reachable';
      showError(`Cannot reach the DanceCam server: ${err.message}`);
    } else {
      state.infoProblem = `The server's state could not be read: ${err.message}`;
      $('server-info').textContent = 'server error';
      showError(`Cannot read the server's state: ${err.message}`);
    }
    updateStart();
    return false;
  }
  state.info = info;
  state.infoProblem = null;
  token.hide();
  showWeightsNotice(info.weights);
  source.showServerSource(info.source, info.needs_source !== false);
  // the anonymize engine hides faces: no source face to give, and a style to choose (a live setting)
  $('source-panel').hidden = info.engine === 'anonymize';
  showStyleField();
  if (!state.settingsShown) {
    // the first answer fills the form; later ones (after an upload) must not undo what the user changed
    settings.applyLimits(info.limits);
    if (info.settings && !state.session) {
      settings.show(info.settings);
      showStyleField();
      state.lastSettings = { ...info.settings };
    }
    state.settingsShown = Boolean(info.settings);
  }
  showServerInfo(info.sessions);
  updateStart();
  return true;
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
  els.stop.disabled = !live;
  els.placeholder.hidden = live;
  updateStart();
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

const LOOPBACK = /^(127\.|::1$|localhost$)/;

/** Why ICE never connected: what the server offers, and the usual causes. */
function connectFailureMessage({ ice, candidates }) {
  const seconds = Math.round(CONNECT_TIMEOUT_MS / 1000);
  const offered = candidates.length ? candidates.join(', ') : 'no addresses at all';
  const onlyLoopback = candidates.length > 0 && candidates.every((c) => LOOPBACK.test(c.replace(/:\d+ \w+$/, '')));
  const loopback = onlyLoopback ? ': loopback only, which a browser on another machine cannot reach' : '';
  return (
    `Could not connect the media: no working network path between this browser and the server within ${seconds} s` +
    ` (ICE ${ice === 'failed' ? 'failed' : `stayed "${ice}"`}). The server offers ${offered}${loopback}.` +
    ' Likely causes: the server offers addresses this browser cannot reach (start it with --ice-address <an' +
    ' address of the server this browser can reach>), a firewall blocking UDP, or a VPN.'
  );
}

/**
 * The server's reason a session ended, from GET /api/stats (its 404 says it, `known` when already fetched);
 * null while the session is still there.
 */
async function endedReason(session, known = null) {
  let err = known;
  if (!err) {
    try {
      await getStats(session.id);
      return null;
    } catch (e) {
      err = e;
    }
  }
  if (err.status === 404) {
    session.forget(); // gone on the server: no DELETE
    const text = err.message || 'the session ended';
    if (/^the session ended/i.test(text)) return text.charAt(0).toUpperCase() + text.slice(1);
    return `The server ended this session: ${text}`;
  }
  return 'The connection was lost: the server did not answer.';
}

/**
 * The session went away without the user pressing Stop (its connection was lost, or the server's stats say it
 * ended): say why, go back to idle, keep the camera.
 */
async function sessionLost(session, known404 = null) {
  if (state.session !== session || session.lostHandled) return;
  session.lostHandled = true;
  const link = session.describe();
  const reason = await endedReason(session, known404);
  let message;
  if (!link.connected) {
    message = connectFailureMessage(link) + (reason ? ` (The server says: ${reason})` : '');
  } else {
    message = reason || `The connection was lost (${link.connection}).`;
  }
  if (state.session !== session) return;
  await stopSession();
  showError(message);
}

function onSessionState(text) {
  setConnection(text);
}

async function startSession() {
  clearError();
  if (!state.camera && !(await startCamera())) {
    showError('Start needs a camera: see the camera panel.');
    return;
  }
  const fps = Number(els.fps.value);
  state.sendTrack = sender.track(fps);
  const audio = els.mic.value === 'none' ? null : state.camera.stream.getAudioTracks()[0] || null;
  const session = new LiveSession({ onState: onSessionState, onTrack, onLost: () => sessionLost(session) });
  state.session = session;
  setLive(true);
  try {
    await session.start({ videoTrack: state.sendTrack, audioTrack: audio, settings: settings.current() });
  } catch (err) {
    if (state.session !== session) return;
    await stopSession();
    if (err.status === 401) return; // the token prompt says it
    const noWeights = err.status === 503 && !$('weights-notice').hidden;
    showError(`Could not start: ${noWeights ? 'the server has no model weights (see the notice above)' : err.message}`);
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
      await sessionLost(session, err);
      return;
    }
    // anything else (a moment without the network): keep polling, the connection's own state decides
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
    showStyleField();
    state.lastSettings = full;
    setStatus(els.settingsStatus, 'Applied.', 'ok');
  } catch (err) {
    if (state.lastSettings) settings.show(state.lastSettings);
    showStyleField();
    setStatus(els.settingsStatus, `Not applied: ${err.message}`, 'error');
  }
}

// --- wiring -----------------------------------------------------------------------------------------------------

const source = new SourceMixer(
  {
    zone: $('drop-zone'),
    input: $('source-file'),
    list: $('source-photos'),
    status: $('source-status'),
    server: $('source-server'),
    serverNote: $('source-server-note'),
    serverList: $('source-server-list'),
  },
  () => {
    clearError();
    loadInfo(); // a source photo can make the server ready to swap
  },
);

const token = new TokenPrompt(
  {
    panel: $('token-panel'),
    heading: $('token-heading'),
    missing: $('token-missing'),
    wrong: $('token-wrong'),
    form: $('token-form'),
    input: $('token-input'),
    status: $('token-status'),
  },
  loadInfo,
);
onUnauthorized((refused) => token.show(refused));

function wire() {
  els.start.addEventListener('click', startSession);
  els.stop.addEventListener('click', stopSession);
  for (const el of [els.camera, els.mic, els.resolution, els.fps]) el.addEventListener('change', startCamera);
  els.playAudio.addEventListener('change', () => {
    els.remote.muted = !els.playAudio.checked;
  });
  $('set-hide-bystanders').addEventListener('change', showStyleField);
  $('measure').addEventListener('change', () => {
    sender.setMeasure($('measure').checked);
    reader.reset();
  });
  window.addEventListener('hashchange', () => {
    if (!state.info || token.state) loadInfo(); // a token typed into the address bar
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
      token: token.state, // null, 'missing' or 'wrong'
      start: { enabled: !els.start.disabled, reason: els.startReason.textContent || null },
      overlay: { shown: overlay.shown, renders: overlay.renders },
      error: $('error').hidden ? null : $('error-text').textContent,
      source: source.summary(),
    };
  },
  /** Glass-to-glass samples [shown at (performance.now() ms), ms] from index `since`, for benchmarks. */
  latencySamples(since = 0) {
    return reader.samplesSince(since);
  },
  /** The live connection's RTCStatsReport (null when idle): candidate pairs, codecs, bitrates. */
  async peerStats() {
    const pc = state.session && state.session.pc;
    return pc ? pc.getStats() : null;
  },
};

fillFormats();
wire();
sender.setMeasure($('measure').checked);
overlay.clear();
setLive(false);
loadInfo();
startCamera();
