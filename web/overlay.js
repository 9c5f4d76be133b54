// The live overlay over the returned video: output fps, per-stage times, drops, degradation level and
// glass-to-glass latency. Server numbers come from GET /api/stats, client numbers from the StampReader.

const ms = (v) => (typeof v === 'number' && Number.isFinite(v) ? `${v.toFixed(v < 10 ? 1 : 0)} ms` : '–');
const num = (v, digits = 0) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(digits) : '–');

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

export class StatsOverlay {
  constructor(root) {
    this.root = root;
    this.stageBody = root.querySelector('[data-stat="stages"]');
    this.stageKey = '';
  }

  clear() {
    for (const el of this.root.querySelectorAll('[data-stat]')) {
      if (el !== this.stageBody) el.textContent = '–';
    }
    this.stageBody.replaceChildren();
    this.stageKey = '';
    this.root.dataset.live = 'false';
  }

  /** @param {object|null} server one entry of /api/stats `sessions`  @param {object} client StampReader.summary() */
  render(server, client) {
    this.root.dataset.live = 'true';
    const s = server || {};
    const counters = s.counters || {};
    const degradation = s.degradation || {};
    setText(this.root, 'fps_out', num(s.fps_out, 1));
    setText(this.root, 'fps_in', num(s.fps_in, 1));
    setText(this.root, 'fps_client', num(client.fps));
    setText(this.root, 'size', client.width ? `${client.width}×${client.height}` : '–');
    setText(this.root, 'g2g', client.n ? `${ms(client.p50)} / ${ms(client.p95)}` : client.measuring ? '–' : 'off');
    setText(this.root, 'g2g_n', client.n ? `n=${client.n}` : client.measuring ? `${client.unreadable} unread` : '');
    const serverMs = s.server_latency_ms || {};
    setText(this.root, 'server_latency', `${ms(serverMs.p50)} / ${ms(serverMs.p95)}`);
    const e2e = s.end_to_end || {};
    setText(this.root, 'end_to_end', `${ms(e2e.p50)} / ${ms(e2e.p95)}`);
    setText(this.root, 'dropped', num(counters.dropped_frames));
    setText(this.root, 'repeated', num(counters.repeated_frames));
    setText(this.root, 'fail_closed', num(counters.fail_closed));
    setText(this.root, 'errors', num(counters.pipeline_errors));
    const level = typeof degradation.level === 'number' ? `${degradation.level}` : '–';
    setText(this.root, 'degradation', degradation.name ? `${level} (${degradation.name})` : level);
    this.renderStages(s.stages);
  }

  renderStages(stages) {
    const rows = stageRows(stages);
    const key = rows.map((r) => r.textContent).join('|');
    if (key === this.stageKey) return;
    this.stageKey = key;
    this.stageBody.replaceChildren(...rows);
  }
}
