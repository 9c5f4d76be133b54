// The source identity: one photo, or several mixed by weight. Photos come from drag and drop or the file input (any
// number, added at any time); each has a thumbnail, a weight slider and a remove button. Every change re-uploads
// the whole set (debounced) to POST /api/source, and the server's answer is shown per photo (faces found, the face
// box) or, for a refusal, its message as text; the server then keeps its previous identity, listed from its answers.

import { postSource } from './api.js';
import { setTextWithCode } from './text.js';

const ACCEPTED = ['image/png', 'image/jpeg', 'image/webp', 'image/bmp'];
const DEBOUNCE_MS = 400; // a slider drag sends one upload, after the hand stops
const WEIGHT = { min: 0, max: 1, step: 0.05, initial: 1 };
const WEIGHT_EPS = 1e-4; // the server rounds normalised weights to 6 digits

const percent = (share) => `${Math.round(100 * share)} %`;

/** SHA-256 of the file's bytes as hex (the identity engine's photo key), or null outside a secure page. */
async function contentHash(file) {
  if (!(globalThis.crypto && crypto.subtle)) return null;
  const digest = await crypto.subtle.digest('SHA-256', await file.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The picture's size as the browser decodes it, or null when it cannot (the server decides then). */
async function pictureSize(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const size = { width: bitmap.width, height: bitmap.height };
    bitmap.close();
    return size;
  } catch {
    return null;
  }
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function facesText(photo) {
  const n = photo.faces_found;
  const score = photo.face && typeof photo.face.score === 'number' ? ` (score ${photo.face.score.toFixed(2)})` : '';
  return n === 1 ? `1 face found${score}` : `${n} faces found${score}; using the largest`;
}

/**
 * Pair the server's photos (sorted by key, weight-0 ones left out) with the photos sent, each `{weight, hash,
 * size}` as it was sent: by key where the page knows it (the identity engine's key is the file's SHA-256), else by
 * normalised weight and picture size, else by weight alone. Returns a Map from sent entry to the server's photo.
 */
export function matchPhotos(sent, answered) {
  const total = sent.reduce((sum, p) => sum + p.weight, 0);
  const left = new Set(answered);
  const pairs = new Map();
  const take = (local, test) => {
    for (const photo of left) {
      if (test(photo)) {
        pairs.set(local, photo);
        left.delete(photo);
        return;
      }
    }
  };
  const sameWeight = (p, photo) => Math.abs(photo.weight - p.weight / total) < WEIGHT_EPS;
  const sameSize = (p, photo) =>
    p.size &&
    ((photo.width === p.size.width && photo.height === p.size.height) ||
      (photo.width === p.size.height && photo.height === p.size.width)); // a rotated JPEG
  for (const p of sent) if (p.hash) take(p, (photo) => photo.key === p.hash);
  for (const p of sent) if (!pairs.has(p)) take(p, (photo) => sameWeight(p, photo) && sameSize(p, photo));
  for (const p of sent) if (!pairs.has(p)) take(p, (photo) => sameWeight(p, photo));
  return pairs;
}

export class SourceMixer {
  /**
   * @param {object} els  { zone, input, list, status, server, serverNote, serverList }
   * @param {(identity: object) => void} onUploaded  called after each identity the server accepted
   */
  constructor(els, onUploaded) {
    this.els = els;
    this.onUploaded = onUploaded;
    this.photos = []; // { id, file, name, url, hash, size, weight, result, refused, el: {...} }
    this.nextId = 1;
    this.server = null; // the server's current identity (its /api/source answer or /api/info `source`), or null
    this.synced = false; // the photos shown are the server's identity
    this.needed = true; // the engine needs a source (facedancer); the identity engine does not
    this.removedAll = false; // the user removed every photo: the server keeps its identity all the same
    this.timer = 0;
    this.inFlight = false;
    this.again = false; // a change came while an upload was in flight: upload once more after it
    this.uploads = 0;
    this.adding = Promise.resolve(); // files are added one batch after another, in the order chosen

    els.input.addEventListener('change', () => {
      const files = Array.from(els.input.files || []);
      els.input.value = ''; // the same file can be chosen again after its removal
      if (files.length) this.add(files);
    });
    for (const type of ['dragenter', 'dragover']) {
      els.zone.addEventListener(type, (event) => {
        event.preventDefault();
        event.dataTransfer.dropEffect = 'copy';
        els.zone.classList.add('dragging');
      });
    }
    for (const type of ['dragleave', 'dragend']) {
      els.zone.addEventListener(type, () => els.zone.classList.remove('dragging'));
    }
    els.zone.addEventListener('drop', (event) => {
      event.preventDefault();
      els.zone.classList.remove('dragging');
      const files = Array.from((event.dataTransfer && event.dataTransfer.files) || []);
      if (files.length) this.add(files);
    });
  }

  status(text, kind = 'info') {
    setTextWithCode(this.els.status, text); // the server's messages name commands between backticks
    this.els.status.dataset.kind = kind;
  }

  /** What the server holds (from /api/info): shown while the page has no photos of its own in flight. */
  showServerSource(source, needed = true) {
    this.needed = needed;
    if (this.inFlight || this.timer) return; // an upload on its way will answer with the newer identity
    this.server = source && source.set ? source : null;
    if (this.photos.length) return;
    this.render();
    if (this.server) this.status('Add photos to replace this set: the first upload replaces it.', 'info');
    else this.status(this.keptText(), 'info');
  }

  /** A read-only view for tests and debugging. */
  summary() {
    return {
      photos: this.photos.map((p) => ({
        name: p.name,
        weight: p.weight,
        faces: p.result ? p.result.faces_found : null,
      })),
      synced: this.synced,
      uploads: this.uploads,
      serverKey: this.server ? this.server.key : null,
    };
  }

  add(files) {
    this.adding = this.adding.then(() => this.addNow(files));
    return this.adding;
  }

  async addNow(files) {
    const problems = [];
    let added = 0;
    for (const file of files) {
      if (file.type && !ACCEPTED.includes(file.type)) {
        problems.push(`${file.name}: not a PNG, JPEG, WebP or BMP image`);
        continue;
      }
      const [hash, size] = await Promise.all([contentHash(file).catch(() => null), pictureSize(file)]);
      const twin = this.photos.find((p) =>
        hash && p.hash ? p.hash === hash : p.name === file.name && p.file.size === file.size,
      );
      if (twin) {
        problems.push(`${file.name} is already in the mix (as ${twin.name}): give that one more weight instead`);
        continue;
      }
      this.addCard({ file, hash, size });
      added += 1;
    }
    if (added) {
      this.removedAll = false;
      this.changed(problems);
    } else if (problems.length) {
      this.status(`${problems.join('. ')}. Nothing changed.`, 'error');
    }
  }

  addCard({ file, hash, size }) {
    const id = this.nextId++;
    const name = file.name || `photo ${id}`;
    const url = URL.createObjectURL(file);
    const li = element('li', 'source-photo');
    li.dataset.name = name;

    const thumb = element('div', 'thumb');
    const img = element('img');
    img.src = url;
    img.alt = `Source photo: ${name}`;
    const box = element('div', 'face-box');
    box.hidden = true;
    thumb.append(img, box);

    const body = element('div', 'photo-body');
    const title = element('p', 'photo-name', name);
    title.title = name;
    const label = element('label', 'weight');
    const range = element('input');
    Object.assign(range, { type: 'range', min: WEIGHT.min, max: WEIGHT.max, step: WEIGHT.step });
    range.value = String(WEIGHT.initial);
    range.setAttribute('aria-label', `Weight of ${name}`);
    const value = element('output', 'weight-value');
    label.append(element('span', '', 'weight'), range, value);
    const status = element('p', 'photo-status status');
    const remove = element('button', 'remove', 'Remove');
    remove.type = 'button';
    remove.setAttribute('aria-label', `Remove ${name}`);
    const head = element('div', 'photo-head');
    head.append(title, remove);
    body.append(head, label, status);
    li.append(thumb, body);
    this.els.list.append(li);

    const photo = { id, file, name, url, hash, size, weight: WEIGHT.initial, result: null, refused: false };
    photo.el = { li, box, range, value, status };
    this.photos.push(photo);
    range.addEventListener('input', () => {
      photo.weight = Number(range.value);
      this.changed();
    });
    remove.addEventListener('click', () => this.remove(photo));
  }

  remove(photo) {
    URL.revokeObjectURL(photo.url);
    photo.el.li.remove();
    this.photos = this.photos.filter((p) => p !== photo);
    if (!this.photos.length) this.removedAll = true;
    this.changed();
  }

  /** Something in the set changed: show it at once, upload it once the user pauses. */
  changed(problems = []) {
    this.synced = false;
    for (const p of this.photos) p.refused = false;
    clearTimeout(this.timer);
    this.timer = 0;
    this.render();
    const before = problems.length ? `${problems.join('. ')}. ` : '';
    if (!this.photos.length) {
      this.status(`${before}${this.keptText()}`, 'info');
      return;
    }
    if (!this.sendable().length) {
      this.status(
        `${before}All weights are 0: give at least one photo a weight above 0. ` +
          `Nothing was sent: ${this.keptText(true)}`,
        'error',
      );
      return;
    }
    this.status(`${before}Sending the new mix…`, problems.length ? 'error' : 'busy');
    this.timer = setTimeout(() => {
      this.timer = 0;
      this.upload();
    }, DEBOUNCE_MS);
  }

  sendable() {
    return this.photos.filter((p) => p.weight > 0); // weight 0 leaves a photo out: the server would too
  }

  keptText(lower = false) {
    const count = this.server ? this.server.photos.length : 0;
    const text = this.server
      ? `The server keeps its current identity (${count} photo${count === 1 ? '' : 's'}, listed above).`
      : this.needed
        ? 'The server has no source face yet: add a photo with one face before you start.'
        : 'This server does not swap faces (engine: identity); a photo is optional.';
    return lower ? text.charAt(0).toLowerCase() + text.slice(1) : text;
  }

  async upload() {
    if (this.inFlight) {
      this.again = true;
      return;
    }
    // what is sent, as it is sent: the user may move a slider while the upload is on its way
    const sent = this.sendable().map((p) => ({ photo: p, file: p.file, weight: p.weight, hash: p.hash, size: p.size }));
    if (!sent.length) return; // emptied or zeroed while waiting: changed() said so
    this.inFlight = true;
    this.uploads += 1;
    this.status(`Uploading ${sent.length} photo${sent.length === 1 ? '' : 's'}…`, 'busy');
    let identity = null;
    let failure = null;
    try {
      identity = await postSource(sent);
    } catch (err) {
      failure = err;
    }
    this.inFlight = false;
    const stale = this.again || this.timer; // the user changed the set meanwhile: that upload answers for it
    if (identity) this.accepted(sent, identity, stale);
    else this.refused(sent, failure, stale);
    if (this.again) {
      this.again = false;
      if (!this.timer) this.upload();
    }
  }

  accepted(sent, identity, stale) {
    this.server = identity;
    const pairs = matchPhotos(sent, identity.photos || []);
    for (const p of this.photos) p.result = null;
    for (const [entry, photo] of pairs) entry.photo.result = photo;
    if (!stale) {
      this.synced = true;
      const n = identity.photos.length;
      this.status(`The server swaps in ${n === 1 ? 'this photo' : `a mix of these ${n} photos`} now.`, 'ok');
    }
    this.render();
    this.onUploaded(identity);
  }

  refused(sent, err, stale) {
    const message = err && err.message ? err.message : String(err);
    // the server names a photo by its place in the upload ("source photo 2"), or "the source photo" for one
    const named = /\bsource photo (\d+)\b/.exec(message);
    const culprit = named ? sent[Number(named[1]) - 1] : sent.length === 1 ? sent[0] : null;
    for (const p of this.photos) {
      p.refused = Boolean(culprit) && p === culprit.photo;
      p.result = null;
    }
    if (!stale) {
      const sentence = /[.!?]$/.test(message) ? message : `${message}.`; // the server's text, as it wrote it
      this.status(`Not used: ${sentence} ${this.keptText()}`, 'error');
    }
    this.render();
  }

  render() {
    const total = this.photos.reduce((sum, p) => sum + p.weight, 0);
    for (const p of this.photos) {
      const share = total > 0 ? percent(p.weight / total) : '–';
      p.el.value.textContent = `${p.weight.toFixed(2)} · ${share}`;
      p.el.li.dataset.state = p.refused ? 'refused' : p.result ? 'used' : p.weight > 0 ? 'pending' : 'left-out';
      this.showFace(p);
      let text = '';
      let kind = 'info';
      if (p.refused) [text, kind] = ['The server refused this photo (see below).', 'error'];
      else if (p.weight === 0) text = 'weight 0: left out of the mix';
      else if (p.result && this.synced) [text, kind] = [facesText(p.result), 'ok'];
      else if (!p.size) text = 'this browser cannot show it; the server will check it';
      p.el.status.textContent = text;
      p.el.status.dataset.kind = kind;
    }
    this.renderServer();
  }

  /** The server's identity, listed by key and weight, whenever the photos shown here are not it. */
  renderServer() {
    const show = Boolean(this.server) && !this.synced;
    this.els.server.hidden = !show;
    if (!show) return;
    const photos = this.server.photos || [];
    const intro = this.photos.length
      ? 'The server still swaps in the identity from before:'
      : this.removedAll
        ? 'Removing the photos here does not clear the server’s identity; it still swaps in:'
        : 'The server’s current identity, uploaded earlier (this page keeps no copies of the photos after a ' +
          'reload, so they are listed by key and weight):';
    setTextWithCode(this.els.serverNote, intro);
    const items = photos.map((photo, i) => {
      const li = element('li', 'server-photo');
      const key = element('code', '', photo.key.slice(0, 12));
      key.title = photo.key;
      const size = photo.width && photo.height ? ` · ${photo.width}×${photo.height}` : '';
      li.append(
        element('span', '', `photo ${i + 1} · weight ${photo.weight.toFixed(2)}${size} · ${facesText(photo)}`),
        ' · key ',
        key,
      );
      return li;
    });
    this.els.serverList.replaceChildren(...items);
  }

  /** Outline the detected face on a thumbnail (the box is in the uploaded photo's pixels). */
  showFace(p) {
    const r = p.result;
    const box = this.synced && r && r.face && r.face.box;
    p.el.box.hidden = !(box && r.width && r.height);
    if (p.el.box.hidden) return;
    const [x0, y0, x1, y1] = box;
    const s = p.el.box.style;
    s.left = `${(100 * x0) / r.width}%`;
    s.top = `${(100 * y0) / r.height}%`;
    s.width = `${(100 * (x1 - x0)) / r.width}%`;
    s.height = `${(100 * (y1 - y0)) / r.height}%`;
  }
}
