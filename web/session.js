// One live session: an RTCPeerConnection that sends the stamped canvas (and the microphone, if any) and receives
// the swapped video (and the audio) back. The offer is posted only once ICE gathering is complete, because the
// server (aiortc) reads only the candidates written into the SDP.

import { deleteSession, postOffer } from './api.js';

const GATHER_TIMEOUT_MS = 5000;

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

export class LiveSession {
  /**
   * @param {object} handlers  onState(state: string), onTrack(event: RTCTrackEvent)
   */
  constructor({ onState, onTrack }) {
    this.onState = onState;
    this.onTrack = onTrack;
    this.pc = null;
    this.id = null;
    this.videoSender = null;
    this.audioSender = null;
    this.closed = false;
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
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    this.report();
  }

  report() {
    if (!this.pc || this.closed) return;
    const state = this.pc.connectionState || this.pc.iceConnectionState;
    this.onState(state);
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
