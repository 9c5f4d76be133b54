// The source photo: chosen by drag and drop or the file input, previewed at once, uploaded to POST /api/source.
// The server's answer (face box and score, or its error such as "no face found") is shown beside the preview.

import { postSource } from './api.js';
import { setTextWithCode } from './text.js';

const ACCEPTED = ['image/png', 'image/jpeg', 'image/webp', 'image/bmp'];

export class SourcePicker {
  /**
   * @param {object} els  { zone, input, preview, box, status }
   * @param {(result: object) => void} onUploaded
   */
  constructor(els, onUploaded) {
    this.els = els;
    this.onUploaded = onUploaded;
    this.url = null;
    els.input.addEventListener('change', () => {
      if (els.input.files && els.input.files[0]) this.choose(els.input.files[0]);
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
      const file = event.dataTransfer.files && event.dataTransfer.files[0];
      if (file) this.choose(file);
    });
  }

  status(text, kind = 'info') {
    setTextWithCode(this.els.status, text); // the server's messages name commands between backticks
    this.els.status.dataset.kind = kind;
  }

  /** Show what the server already holds (from /api/info `source`). */
  showServerSource(source, needed = true) {
    if (source && source.set) {
      this.status(`A source face is set on the server${source.note ? ` (${source.note})` : ''}.`, 'ok');
    } else if (needed) {
      this.status('No source face yet: drop a photo with one face before you start.', 'info');
    } else {
      this.status('This server does not swap faces (engine: identity); a photo is optional.', 'info');
    }
  }

  async choose(file) {
    if (file.type && !ACCEPTED.includes(file.type)) {
      this.status(`${file.name}: not a PNG, JPEG, WebP or BMP image`, 'error');
      return;
    }
    this.preview(file);
    this.status(`Uploading ${file.name}…`, 'busy');
    try {
      const result = await postSource(file);
      this.showFace(result);
      const s = result.face && result.face.score;
      const score = typeof s === 'number' ? ` (score ${s.toFixed(2)})` : '';
      this.status(`Face found${score}.${result.note ? ` ${result.note}` : ''}`, 'ok');
      this.onUploaded(result);
    } catch (err) {
      this.els.box.hidden = true;
      this.status(`Not used: ${err.message}`, 'error');
    }
  }

  preview(file) {
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = URL.createObjectURL(file);
    this.els.preview.src = this.url;
    this.els.preview.alt = `Source photo: ${file.name}`;
    this.els.preview.hidden = false;
    this.els.box.hidden = true;
  }

  /** Outline the detected face on the preview (box in the uploaded image's pixels). */
  showFace(result) {
    const box = result.face && result.face.box;
    if (!box || !result.width || !result.height) return;
    const [x0, y0, x1, y1] = box;
    const s = this.els.box.style;
    s.left = `${(100 * x0) / result.width}%`;
    s.top = `${(100 * y0) / result.height}%`;
    s.width = `${(100 * (x1 - x0)) / result.width}%`;
    s.height = `${(100 * (y1 - y0)) / result.height}%`;
    this.els.box.hidden = false;
  }
}
