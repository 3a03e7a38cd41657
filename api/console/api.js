// The REST side of the console: login, token refresh with rotation, logout, and the few
// calls the page makes. Tokens live in this object only (never in localStorage or cookies):
// a reload signs the operator out, which is the point.

/** How long one REST call may take before it is given up. */
const REQUEST_TIMEOUT_MS = 10000;
/** Refresh once this share of the access token's life has passed (15 min → after 10). */
const REFRESH_AT_SHARE = 2 / 3;
/** Never schedule a refresh sooner than this (a token with almost no life left). */
const MIN_REFRESH_DELAY_MS = 2000;
/** After a refresh that failed for want of a network, try again this soon. */
const REFRESH_RETRY_MS = 10000;

/** An error answered by the API (`{"error": {code, message, details}}`) or by the network. */
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message || code || `HTTP ${status}`);
    this.name = 'ApiError';
    /** HTTP status, or 0 for a network failure or a timeout. */
    this.status = status;
    this.code = code || (status === 0 ? 'network' : `http_${status}`);
    this.details = details || {};
  }
}

export class Api {
  /**
   * @param {object} hooks
   * @param {(token: string) => void} hooks.onAccessToken a new access token (after login or refresh)
   * @param {(why: string) => void} hooks.onSignedOut the session ended (logout, refresh refused)
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.access = null;
    this.refreshToken = null;
    /** Unix seconds, the server's clock. */
    this.expiresAt = 0;
    /** Server clock minus ours, in ms, from the `Date` header (to the second). */
    this.skewMs = 0;
    this.user = null;
    this.refreshTimer = null;
    /** The refresh in flight: refresh tokens rotate, so two at once would spend one twice. */
    this.refreshing = null;
  }

  get signedIn() {
    return this.access !== null;
  }

  /** Now on the server's clock, in ms. */
  serverNow() {
    return Date.now() + this.skewMs;
  }

  async login(username, password) {
    const body = await this.call('POST', '/api/v1/auth/login', { username, password }, { auth: false });
    this.take(body);
    return body.user;
  }

  /** Spends the refresh token for a new pair. Shared by everyone who asks at the same time. */
  refresh() {
    if (!this.refreshing) {
      this.refreshing = this.doRefresh().finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  async doRefresh() {
    if (!this.refreshToken) throw new ApiError(401, 'signed_out', 'not signed in');
    const spent = this.refreshToken;
    try {
      const body = await this.call('POST', '/api/v1/auth/refresh', { refresh_token: spent }, { auth: false });
      // A logout while the refresh was on its way: do not resurrect the session.
      if (this.refreshToken !== spent) throw new ApiError(401, 'signed_out', 'signed out');
      this.take(body);
      return this.access;
    } catch (e) {
      if (e.status === 401) {
        this.clear();
        this.hooks.onSignedOut(e.code === 'refresh_token_reused'
          ? 'Your session was revoked; sign in again.'
          : 'Your session ended; sign in again.');
      } else if (this.refreshToken === spent) {
        this.schedule(REFRESH_RETRY_MS);
      }
      throw e;
    }
  }

  async logout() {
    const token = this.refreshToken;
    this.clear();
    if (token) {
      try {
        await this.call('POST', '/api/v1/auth/logout', { refresh_token: token }, { auth: false });
      } catch {
        // The tokens are gone from this page either way; the refresh token expires by itself.
      }
    }
  }

  /** Forgets the tokens (memory only) and the refresh timer. */
  clear() {
    this.access = null;
    this.refreshToken = null;
    this.user = null;
    this.expiresAt = 0;
    clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
  }

  take(body) {
    this.access = body.access_token;
    this.refreshToken = body.refresh_token;
    this.expiresAt = body.expires_at;
    this.user = body.user;
    const life = this.expiresAt * 1000 - this.serverNow();
    this.schedule(Math.max(MIN_REFRESH_DELAY_MS, life * REFRESH_AT_SHARE));
    this.hooks.onAccessToken(this.access);
  }

  schedule(delayMs) {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      this.refresh().catch(() => {});
    }, delayMs);
  }

  /**
   * One JSON request. With `auth` (the default) it carries the access token, and a 401 is
   * answered by one refresh and one retry.
   */
  async call(method, path, body, { auth = true, retried = false, timeoutMs = REQUEST_TIMEOUT_MS } = {}) {
    const headers = { accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (auth) {
      if (!this.access) throw new ApiError(401, 'signed_out', 'not signed in');
      headers.authorization = `Bearer ${this.access}`;
    }
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: abort.signal,
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch (e) {
      const timedOut = e && e.name === 'AbortError';
      throw new ApiError(0, timedOut ? 'timeout' : 'network',
        timedOut ? `no answer within ${timeoutMs / 1000} s` : 'the server cannot be reached');
    } finally {
      clearTimeout(timer);
    }
    const date = Date.parse(response.headers.get('date') || '');
    if (Number.isFinite(date)) this.skewMs = date - Date.now();
    if (response.status === 204) return null;
    let payload = null;
    const text = await response.text();
    if (text) {
      try {
        payload = JSON.parse(text);
      } catch {
        payload = null;
      }
    }
    if (response.ok) return payload;
    const err = payload && payload.error ? payload.error : {};
    if (response.status === 401 && auth && !retried && this.refreshToken) {
      await this.refresh();
      return this.call(method, path, body, { auth, retried: true, timeoutMs });
    }
    throw new ApiError(response.status, err.code, err.message, err.details);
  }

  gates() {
    return this.call('GET', '/api/v1/gates');
  }

  actors() {
    return this.call('GET', '/api/v1/system/actors', undefined, { timeoutMs: 4000 });
  }

  /** Events of `gate` with `seq` > `after`, at most `limit` (≤ 500). */
  events(gate, after, limit) {
    const q = new URLSearchParams({ after: String(after), limit: String(limit) });
    return this.call('GET', `/api/v1/gates/${encodeURIComponent(gate)}/events?${q}`);
  }

  /** A command over REST, held until its outcome (the WebSocket's fallback). */
  command(gate, id, action) {
    return this.call('POST', `/api/v1/gates/${encodeURIComponent(gate)}/commands?wait=true`,
      { id, action }, { timeoutMs: 35000 });
  }
}
