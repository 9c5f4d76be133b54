// One live session: an RTCPeerConnection that sends the stamped canvas (and the microphone, if any) and receives
// the swapped video (and the audio) back. The offer is posted only once ICE gathering is complete, because the
// server (aiortc) reads only the candidates written into the SDP. A connection that does not come up within
// CONNECT_TIMEOUT_MS of the answer, fails, or stays disconnected is reported once through `onLost`.

import { deleteSession, postOffer } from './api.js';

const GATHER_TIMEOUT_MS = 5000;
// from the answer: ICE connects in well under 1 s on loopback or a LAN, a few seconds through a relay; the answer
// itself may take seconds (a backend made ready first), so the page still speaks within 10 s of a quick Start
export const CONNECT_TIMEOUT_MS = 6000;
const DISCONNECTED_GRACE_MS = 5000; // 'disconnected' often recovers by itself; longer than this, it has gone

function gatheringComplete(pc, timeoutMs = GATHER_TIMEOUT_MS) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener('icegatheringstatechange', check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === 'complete') done();
    };
    // with no STUN server gathering ends quickly; after the timeout post what has been gathered
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

/** The addresses an SDP offers ICE, e.g. ["127.0.0.1:50123 udp"], without repeats. */
export function sdpCandidates(sdp) {
  const found = new Set();
  for (const line of String(sdp).split(/\r?\n/)) {
    // a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
    const m = /^a=candidate:\S+ \d+ (\S+) \d+ (\S+) (\d+) typ/.exec(line);
    if (m) found.add(`${m[2]}:${m[3]} ${m[1].toLowerCase()}`);
  }
  return [...found];
}

export class LiveSession {
  /**
   * @param {object} handlers  onState(state: string), onTrack(event: RTCTrackEvent),
   *   onLost(describe()): the connection did not come up, failed or went away; called at most once
   */
  constructor({ onState, onTrack, onLost = () => {} }) {
    this.onState = onState;
    this.onTrack = onTrack;
    this.onLost = onLost;
    this.pc = null;
    this.id = null;
    this.videoSender = null;
    this.audioSender = null;
    this.closed = false;
    this.connected = false; // reached 'connected' at least once
    this.lost = false;
    this.lostHandled = false; // the page has dealt with the loss (it may learn of it twice: here and from stats)
    this.candidates = []; // what the server's answer offers
    this.connectTimer = 0;
    this.disconnectTimer = 0;
  }

  /** Connect: send `videoTrack` (and `audioTrack` if given), with `settings` for the new session. */
  async start({ videoTrack, audioTrack, settings }) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    pc.addEventListener('connectionstatechange', () => this.report());
    pc.addEventListener('iceconnectionstatechange', () => this.report());
    pc.addEventListener('track', (event) => this.onTrack(event));
    const stream = new MediaStream([videoTrack, ...(audioTrack ? [audioTrack] : [])]);
    this.videoSender = pc.addTransceiver(videoTrack, { direction: 'sendrecv', streams: [stream] }).sender;
    if (audioTrack) {
      this.audioSender = pc.addTransceiver(audioTrack, { direction: 'sendrecv', streams: [stream] }).sender;
    }
    this.onState('gathering network candidates');
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc);
    if (this.closed) return;
    this.onState('sending offer');
    const local = pc.localDescription;
    const answer = await postOffer(local.sdp, local.type, settings);
    this.id = answer.session;
    if (this.closed) {
      await this.end();
      return;
    }
    this.candidates = sdpCandidates(answer.sdp);
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    this.connectTimer = setTimeout(() => this.lose(), CONNECT_TIMEOUT_MS);
    this.report();
  }

  report() {
    const pc = this.pc;
    if (!pc || this.closed) return;
    const state = pc.connectionState || pc.iceConnectionState;
    if (state === 'connected') {
      this.connected = true;
      clearTimeout(this.connectTimer);
    }
    if (state === 'disconnected') {
      if (!this.disconnectTimer) this.disconnectTimer = setTimeout(() => this.lose(), DISCONNECTED_GRACE_MS);
    } else {
      clearTimeout(this.disconnectTimer);
      this.disconnectTimer = 0;
    }
    this.onState(state);
    if (state === 'failed' || state === 'closed' || pc.iceConnectionState === 'failed') this.lose();
  }

  lose() {
    if (this.closed || this.lost || !this.pc) return;
    this.lost = true;
    clearTimeout(this.connectTimer);
    clearTimeout(this.disconnectTimer);
    this.onLost(this.describe());
  }

  /** { connected: reached 'connected' once, ice, connection: the states now, candidates: the server's offer }. */
  describe() {
    const pc = this.pc;
    return {
      connected: this.connected,
      ice: pc ? pc.iceConnectionState : 'closed',
      connection: pc ? pc.connectionState : 'closed',
      candidates: this.candidates,
    };
  }

  /** The server has already ended this session: end() then only closes the connection. */
  forget() {
    this.id = null;
  }

  /** Send another video track (e.g. a new frame rate) without renegotiating. */
  async replaceVideo(track) {
    if (this.videoSender) await this.videoSender.replaceTrack(track);
  }

  /** Send another microphone track (null: silence); a session started without audio stays without. */
  async replaceAudio(track) {
    if (this.audioSender) await this.audioSender.replaceTrack(track);
  }

  /**
   * End the server's session, then close the connection; safe to call more than once. The DELETE goes first:
   * a closed connection ends the session on the server too, and a DELETE after that would find nothing.
   */
  async end({ keepalive = false } = {}) {
    this.closed = true;
    clearTimeout(this.connectTimer);
    clearTimeout(this.disconnectTimer);
    const id = this.id;
    this.id = null;
    try {
      if (id) await deleteSession(id, { keepalive });
    } catch (err) {
      if (err.status !== 404) throw err; // already gone on the server: fine
    } finally {
      if (this.pc) this.pc.close();
      this.pc = null;
    }
  }
}
