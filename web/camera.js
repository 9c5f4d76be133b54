// The local camera (and microphone): permission, device lists, and opening a stream with the chosen settings.

export const RESOLUTIONS = [
  [640, 480],
  [1280, 720],
  [1920, 1080],
];
export const FRAME_RATES = [15, 24, 30, 60];

function videoConstraints({ deviceId, width, height, fps }) {
  const video = { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: fps } };
  if (deviceId) video.deviceId = { exact: deviceId };
  return video;
}

function audioConstraints(micId) {
  if (micId === 'none') return false;
  return micId ? { deviceId: { exact: micId } } : true;
}

const NO_DEVICE = new Set(['NotFoundError', 'OverconstrainedError', 'NotReadableError', 'AbortError']);

/**
 * Open the camera (and the microphone when there is one and it is wanted). A missing or busy microphone is not
 * an error: the stream is then video only. Resolves to { stream, audio: boolean, note: string|null }.
 */
export async function openCamera({ deviceId, micId, width, height, fps }) {
  const video = videoConstraints({ deviceId, width, height, fps });
  const audio = audioConstraints(micId);
  if (audio) {
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ video, audio });
      return { stream, audio: stream.getAudioTracks().length > 0, note: null };
    } catch (err) {
      if (!NO_DEVICE.has(err.name)) throw err;
      // no usable microphone: fall through to video only
    }
  }
  const stream = await navigator.mediaDevices.getUserMedia({ video });
  const note = audio ? 'no microphone available: video only' : null;
  return { stream, audio: false, note };
}

/** Cameras and microphones ({deviceId, label}); labels are only filled in once permission was given. */
export async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const pick = (kind) => {
    const noun = kind === 'videoinput' ? 'Camera' : 'Microphone';
    return devices
      .filter((d) => d.kind === kind && d.deviceId)
      .map((d, i) => ({ deviceId: d.deviceId, label: d.label || `${noun} ${i + 1}` }));
  };
  return { cameras: pick('videoinput'), mics: pick('audioinput') };
}

export function stopStream(stream) {
  if (stream) for (const track of stream.getTracks()) track.stop();
}

/** A readable sentence for a getUserMedia failure. */
export function cameraErrorMessage(err) {
  switch (err && err.name) {
    case 'NotAllowedError':
      return 'camera access was refused: allow it in the browser (address bar) and reload';
    case 'NotFoundError':
      return 'no camera found';
    case 'NotReadableError':
      return 'the camera is in use by another program';
    case 'OverconstrainedError':
      return 'the camera does not support the chosen resolution or frame rate';
    case 'SecurityError':
      return 'camera access needs a secure page (https, or http://localhost)';
    default:
      return `cannot open the camera: ${(err && err.message) || err}`;
  }
}
