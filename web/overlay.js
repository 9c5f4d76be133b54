// The live overlay over the returned video: output fps, faces, per-stage times, drops, degradation level and
// glass-to-glass latency. Server numbers come from GET /api/stats, client numbers from the StampReader. The user
// can hide it (remembered in localStorage); a hidden overlay is not rendered at all.

const EMPTY = '—';
const STORAGE_KEY = 'dancecam.overlay';
const ms = (v) => (typeof v === 'number' && Number.isFinite(v) ? `${v.toFixed(v < 10 ? 1 : 0)} ms` : EMPTY);
const num = (v, digits = 0) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(digits) : EMPTY);

function setText(root, key, text) {
  const el = root.querySelector(`[data-stat="${key}"]`);
  if (el && el.textContent !== text) el.textContent = text;
}

function stageRows(stages) {
  return Object.entries(stages || {}).map(([name, s]) => {
    const row = document.createElement('tr');
    for (const text of [name, ms(s && s.p50), ms(s && s.p95)]) {
      const cell = document.createElement(row.children.length ? 'td' : 'th');
      if (!row.children.length) cell.scope = 'row';
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  });
}

function storedShown() {
  try {
    return window.localStorage.getItem(STORAGE_KEY) !== 'hidden';
  } catch {
    return true; // storage blocked (private mode, policies): shown, and not remembered
  }
}

function storeShown(shown) {
  try {
    window.localStorage.setItem(STORAGE_KEY, shown ? 'shown' : 'hidden');
  } catch {
    // not remembered; the toggle still works for this page
  }
}

export class StatsOverlay {
  /** @param {HTMLElement} root  the overlay  @param {HTMLInputElement} toggle  its "show stats" checkbox */
  constructor(root, toggle) {
    this.root = root;
    this.toggle = toggle;
    this.stageBody = root.querySelector('[data-stat="stages"]');
    this.stageKey = '';
    this.renders = 0; // times the overlay was drawn: stays put while it is hidden
    this.last = null; // the latest numbers, drawn at once when the overlay is shown again
    this.setShown(storedShown());
    toggle.addEventListener('change', () => {
      this.setShown(toggle.checked);
      storeShown(toggle.checked);
      if (this.shown && this.last) this.render(...this.last);
    });
  }

  setShown(shown) {
    this.shown = shown;
    this.toggle.checked = shown;
    this.root.hidden = !shown;
  }

  clear() {
    for (const el of this.root.querySelectorAll('[data-stat]')) {
      if (el !== this.stageBody) el.textContent = EMPTY;
    }
    this.stageBody.replaceChildren();
    this.stageKey = '';
    this.last = null;
    this.root.dataset.live = 'false';
  }

  /** @param {object|null} server one entry of /api/stats `sessions`  @param {object} client StampReader.summary() */
  render(server, client) {
    this.last = [server, client];
    if (!this.shown) return;
    this.renders += 1;
    this.root.dataset.live = 'true';
    const s = server || {};
    const counters = s.counters || {};
    const degradation = s.degradation || {};
    setText(this.root, 'fps_out', num(s.fps_out, 1));
    setText(this.root, 'fps_in', num(s.fps_in, 1));
    setText(this.root, 'fps_client', num(client.fps));
    setText(this.root, 'size', client.width ? `${client.width}×${client.height}` : EMPTY);
    this.renderLatency(client);
    const faces = s.faces || {};
    setText(this.root, 'faces_detected', num(faces.detected));
    setText(this.root, 'faces_tracked', num(faces.tracked));
    setText(this.root, 'faces_swapped', num(faces.swapped));
    const serverMs = s.server_latency_ms || {};
    setText(this.root, 'server_latency', `${ms(serverMs.p50)} / ${ms(serverMs.p95)}`);
    const e2e = s.end_to_end || {};
    setText(this.root, 'end_to_end', `${ms(e2e.p50)} / ${ms(e2e.p95)}`);
    setText(this.root, 'dropped', num(counters.dropped_frames));
    setText(this.root, 'repeated', num(counters.repeated_frames));
    setText(this.root, 'fail_closed', num(counters.fail_closed));
    setText(this.root, 'errors', num(counters.pipeline_errors));
    const level = typeof degradation.level === 'number' ? `${degradation.level}` : EMPTY;
    setText(this.root, 'degradation', degradation.name ? `${level} (${degradation.name})` : level);
    this.renderStages(s.stages);
  }

  renderLatency(client) {
    if (!client.measuring) {
      // never stale numbers: measuring stamps a code into the video, so it is off until the user asks
      setText(this.root, 'g2g', 'off: tick “measure glass-to-glass” below the video');
      setText(this.root, 'g2g_n', '');
      return;
    }
    setText(this.root, 'g2g', client.n ? `${ms(client.p50)} / ${ms(client.p95)}` : 'measuring…');
    setText(this.root, 'g2g_n', client.n ? `n=${client.n}` : client.unreadable ? `${client.unreadable} unread` : '');
  }

  renderStages(stages) {
    const rows = stageRows(stages);
    const key = rows.map((r) => r.textContent).join('|');
    if (key === this.stageKey) return;
    this.stageKey = key;
    this.stageBody.replaceChildren(...rows);
  }
}
