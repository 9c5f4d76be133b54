// HTTP helpers: every request carries the page's token (from `#token=...`) and every error becomes an ApiError
// whose message is the server's own `{"error": "..."}` text. A 401 from any call also goes to one handler (the
// token prompt), told whether this page sent a token at all.

export class ApiError extends Error {
  constructor(message, status, { tokenSent = false } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status; // 0: the server could not be reached
    this.tokenSent = tokenSent; // for a 401: whether the refused request carried a token
  }
}

/** The token from the page URL's fragment (`#token=abc`), or null. */
export function pageToken(hash = window.location.hash) {
  const params = new URLSearchParams(hash.replace(/^#/, ''));
  const token = params.get('token');
  return token ? token : null;
}

/** Keep `token` in the URL fragment (replacing the current history entry), where pageToken() reads it. */
export function setPageToken(token) {
  const params = new URLSearchParams(window.location.hash.replace(/^#/, ''));
  params.set('token', token);
  const url = new URL(window.location.href);
  url.hash = params.toString();
  window.history.replaceState(window.history.state, '', url.href);
}

let unauthorized = () => {};

/** `handler({ tokenSent })` is called on every 401 answer. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

function withAuth(token, headers = {}) {
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

/** fetch() with the token; resolves to the Response, or throws ApiError (HTTP error, or status 0: no connection). */
export async function request(path, { method = 'GET', headers, body, keepalive = false } = {}) {
  const token = pageToken();
  let response;
  try {
    response = await fetch(path, { method, headers: withAuth(token, headers), body, keepalive, cache: 'no-store' });
  } catch (err) {
    throw new ApiError(`the DanceCam server is not reachable (${err.message || err})`, 0);
  }
  if (!response.ok) {
    let message = await errorMessage(response);
    const tokenSent = Boolean(token);
    if (response.status === 401) {
      message = tokenSent ? "the server refused this page's access token" : 'this server needs its access token';
      unauthorized({ tokenSent });
    }
    throw new ApiError(message, response.status, { tokenSent });
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

/**
 * Upload the source photos, `[{file, weight}]`: each an `image` field followed by its `weight` (the server
 * normalises them). Resolves to the server's new identity (its photos, faces found, the key); on any error the
 * server keeps the identity it had.
 */
export async function postSource(photos) {
  const form = new FormData();
  for (const { file, weight } of photos) {
    form.append('image', file, file.name || 'source');
    form.append('weight', String(weight));
  }
  const response = await request('/api/source', { method: 'POST', body: form });
  return response.json();
}
