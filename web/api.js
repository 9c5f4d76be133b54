// HTTP helpers: every request carries the page's token (from `#token=...`) and every error becomes an ApiError
// whose message is the server's own `{"error": "..."}` text.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
  }
}

/** The token from the page URL's fragment (`#token=abc`), or null. */
export function pageToken(hash = window.location.hash) {
  const params = new URLSearchParams(hash.replace(/^#/, ''));
  const token = params.get('token');
  return token ? token : null;
}

function withAuth(headers = {}) {
  const token = pageToken();
  return token ? { ...headers, Authorization: `Bearer ${token}` } : { ...headers };
}

async function errorMessage(response) {
  const fallback = `${response.status} ${response.statusText || 'error'}`.trim();
  let text = '';
  try {
    text = await response.text();
  } catch {
    return fallback;
  }
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === 'string' && body.error) return body.error;
  } catch {
    // not JSON: use the text itself when it is short and readable
  }
  return text && text.length < 300 ? text : fallback;
}

/** fetch() with the token; resolves to the Response, or throws ApiError (HTTP error) / Error (no connection). */
export async function request(path, { method = 'GET', headers, body, keepalive = false } = {}) {
  let response;
  try {
    response = await fetch(path, { method, headers: withAuth(headers), body, keepalive, cache: 'no-store' });
  } catch (err) {
    throw new ApiError(`cannot reach the DanceCam server (${err.message || err})`, 0);
  }
  if (!response.ok) {
    let message = await errorMessage(response);
    if (response.status === 401 && !pageToken()) {
      message += ' (this server needs a token: open the page as …/#token=YOUR_TOKEN)';
    }
    throw new ApiError(message, response.status);
  }
  return response;
}

/** A JSON request: `data` (if any) is sent as JSON; the JSON answer is returned (null for 204). */
export async function json(path, { method = 'GET', data, keepalive = false } = {}) {
  const init = { method, keepalive };
  if (data !== undefined) {
    init.headers = { 'Content-Type': 'application/json' };
    init.body = JSON.stringify(data);
  }
  const response = await request(path, init);
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const getInfo = () => json('/api/info');

export const getStats = (session) => json(`/api/stats?session=${encodeURIComponent(session)}`);

export const putSettings = (session, partial) =>
  json(`/api/settings?session=${encodeURIComponent(session)}`, { method: 'PUT', data: partial });

export const postOffer = (sdp, type, settings) => json('/offer', { method: 'POST', data: { sdp, type, settings } });

export const deleteSession = (session, { keepalive = false } = {}) =>
  json(`/api/sessions/${encodeURIComponent(session)}`, { method: 'DELETE', keepalive });

/** Upload a source photo (multipart field `image`); resolves to the server's face report. */
export async function postSource(file) {
  const form = new FormData();
  form.append('image', file, file.name || 'source');
  const response = await request('/api/source', { method: 'POST', body: form });
  return response.json();
}
