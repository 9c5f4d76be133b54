// The access-token prompt: shown when the server answers 401. It says whether the page sent no token or a wrong
// one, takes the token (or the whole URL `dancecam serve` printed), keeps it in the URL fragment and asks the
// page to load again.

import { pageToken, setPageToken } from './api.js';

/** The token in what the user pasted: a bare token, `#token=…`, or a whole URL ending in `#token=…`. */
export function tokenFromInput(text) {
  const value = text.trim();
  const hash = value.indexOf('#');
  if (hash >= 0) return pageToken(value.slice(hash));
  return value || null;
}

export class TokenPrompt {
  /**
   * @param {object} els  { panel, heading, missing, wrong, form, input, status }
   * @param {() => Promise<boolean>} retry  loads the page's server state again; resolves true when it worked
   */
  constructor(els, retry) {
    this.els = els;
    this.retry = retry;
    this.state = null; // null (not needed or accepted), 'missing' or 'wrong'
    els.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });
  }

  /** Show the prompt after a 401; `tokenSent`: the refused request carried a token (so it is the wrong one). */
  show({ tokenSent }) {
    const wasShown = this.state !== null;
    this.state = tokenSent ? 'wrong' : 'missing';
    const { panel, heading, missing, wrong } = this.els;
    heading.textContent = tokenSent ? 'The access token is wrong' : 'This server needs its access token';
    missing.hidden = tokenSent;
    wrong.hidden = !tokenSent;
    panel.hidden = false;
    if (!wasShown) this.els.input.focus();
  }

  hide() {
    this.state = null;
    this.els.panel.hidden = true;
    this.els.status.textContent = '';
  }

  async submit() {
    const token = tokenFromInput(this.els.input.value);
    if (!token) {
      this.els.status.textContent = 'Paste the token first.';
      return;
    }
    setPageToken(token);
    this.els.status.textContent = 'Checking the token…';
    const ok = await this.retry();
    if (ok) {
      this.els.input.value = '';
      this.hide();
    } else if (this.state === 'wrong') {
      this.els.status.textContent = 'The server refused that token.';
      this.els.input.select();
    } else {
      this.els.status.textContent = '';
    }
  }
}
