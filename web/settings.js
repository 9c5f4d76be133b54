// The settings form: each control's `name` is a key of the server's settings object (swap, face_mode, max_faces,
// mask, colour_transfer, detect_every, detect_on_change, draw_boxes, target_fps, style for the anonymize engine and
// the bystanders, hide_bystanders, and the disclosure badge: badge, badge_text, badge_position).

/** Read one control's value as the server expects it. */
function controlValue(control) {
  if (control.type === 'checkbox') return control.checked;
  if (control.type === 'number') {
    if (control.value.trim() === '') return control.dataset.empty === 'null' ? null : undefined;
    const n = Number(control.value);
    return Number.isFinite(n) ? n : undefined;
  }
  return control.value;
}

function setControl(control, value) {
  if (control.type === 'checkbox') control.checked = Boolean(value);
  else if (value === null || value === undefined) control.value = '';
  else control.value = String(value);
}

/** [min, max] from a limits entry: [min, max] (a trailing null: may also be null) or {min, max}; else null. */
function range(entry) {
  if (Array.isArray(entry) && typeof entry[0] === 'number' && typeof entry[1] === 'number') return entry.slice(0, 2);
  if (entry && typeof entry === 'object' && ('min' in entry || 'max' in entry)) return [entry.min, entry.max];
  return null;
}

export class SettingsForm {
  /** @param {HTMLFormElement} form  @param {(partial: object) => void} onChange  called with one changed key */
  constructor(form, onChange) {
    this.form = form;
    this.onChange = onChange;
    this.values = {};
    form.addEventListener('submit', (event) => event.preventDefault());
    form.addEventListener('change', (event) => this.changed(event.target));
  }

  controls() {
    return [...this.form.elements].filter((el) => el.name && !el.disabled && el.tagName !== 'FIELDSET');
  }

  changed(control) {
    if (!control.name || !control.checkValidity()) {
      if (control.name) control.reportValidity();
      return;
    }
    const value = controlValue(control);
    if (value === undefined) return;
    this.values[control.name] = value;
    this.onChange({ [control.name]: value });
  }

  /** Show a settings object (from the server) in the form. */
  show(settings) {
    this.values = { ...settings };
    for (const control of this.controls()) {
      if (control.name in settings) setControl(control, settings[control.name]);
    }
  }

  /** Put the server's ranges on the number inputs and its lengths on the text inputs (`limits` from /api/info). */
  applyLimits(limits) {
    if (!limits || typeof limits !== 'object') return;
    for (const control of this.controls()) {
      const entry = limits[control.name];
      if (control.type === 'text' && entry && Number.isInteger(entry.max_length)) control.maxLength = entry.max_length;
      const r = range(entry);
      if (control.type !== 'number' || !r) continue;
      if (r[0] !== undefined && r[0] !== null) control.min = String(r[0]);
      if (r[1] !== undefined && r[1] !== null) control.max = String(r[1]);
    }
  }

  /** All values as currently shown: what a new session should start with. */
  current() {
    const out = {};
    for (const control of this.controls()) {
      const value = controlValue(control);
      if (value !== undefined) out[control.name] = value;
    }
    return out;
  }
}
