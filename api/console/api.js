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
/** How long a file download (a report, an attachment) may take, body included. */
const FILE_TIMEOUT_MS = 120000;

/** An error answered by the API (`{"error": {code, message, details}}`) or by the network. */
export class ApiError extends Error {
  constructor(status, code, message, details, retryAfterS = null) {
    super(message || code || `HTTP ${status}`);
    this.name = 'ApiError';
    /** HTTP status, or 0 for a network failure or a timeout. */
    this.status = status;
    this.code = code || (status === 0 ? 'network' : `http_${status}`);
    this.details = details || {};
    /** Seconds from the `Retry-After` header (or the body's `retry_after_s`), if given. */
    this.retryAfterS = retryAfterS;
  }
}

/** A network failure or a timeout of a fetch that `abort` bounded to `timeoutMs`. */
function unreachable(e, timeoutMs) {
  const timedOut = e && e.name === 'AbortError';
  return new ApiError(0, timedOut ? 'timeout' : 'network',
    timedOut ? `no answer within ${timeoutMs / 1000} s` : 'the server cannot be reached');
}

/**
 * The error an answer that is not 2xx carries. The API's shape is `{"error": {code, message,
 * details}}`; a bare `{code, message}` is taken too.
 */
async function failure(response) {
  let payload = null;
  try {
    payload = JSON.parse(await response.text());
  } catch {
    payload = null;
  }
  let err = {};
  if (payload && typeof payload.error === 'object' && payload.error) err = payload.error;
  else if (payload && typeof payload.code === 'string') err = payload;
  const header = Number.parseInt(response.headers.get('retry-after') || '', 10);
  const details = err.details || {};
  const retryAfterS = Number.isFinite(header) ? header
    : Number.isFinite(details.retry_after_s) ? details.retry_after_s : null;
  return new ApiError(response.status, err.code, err.message, details, retryAfterS);
}

/** The file name of a `Content-Disposition: attachment; filename="..."` header. */
function dispositionName(header) {
  const m = /filename="([^"]*)"/i.exec(header || '') || /filename=([^;\s]+)/i.exec(header || '');
  return m ? m[1] : null;
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
    /** Actor (`user:<id>`) → username, for records and reports that name who did what. */
    this.names = new Map();
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

  /**
   * What an emailed link (invitation or password reset) is for:
   * `{purpose, username, expires_at_ms}`; a 410 `link_invalid` when it cannot be used.
   */
  inspectLink(token) {
    return this.call('POST', '/api/v1/auth/links/inspect', { token }, { auth: false });
  }

  /**
   * Sets the password through an emailed link. The answer is a login's, and it is taken the
   * same way: the page is signed in afterwards exactly as after `login`.
   */
  async redeemLink(token, password) {
    const body = await this.call('POST', '/api/v1/auth/links/redeem', { token, password }, { auth: false });
    this.take(body);
    return body.user;
  }

  /** Asks for a password-reset link by username or email; 202 whether the account exists or not. */
  requestPasswordReset(login) {
    return this.call('POST', '/api/v1/auth/password-reset', { login }, { auth: false });
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
    this.names.clear();
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
      throw unreachable(e, timeoutMs);
    } finally {
      clearTimeout(timer);
    }
    const date = Date.parse(response.headers.get('date') || '');
    if (Number.isFinite(date)) this.skewMs = date - Date.now();
    if (response.status === 204) return null;
    if (response.status === 401 && auth && !retried && this.refreshToken) {
      await this.refresh();
      return this.call(method, path, body, { auth, retried: true, timeoutMs });
    }
    if (!response.ok) throw await failure(response);
    const text = await response.text();
    if (!text) return null;
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  }

  /**
   * A file behind the API (a report, an attachment), fetched with the access token: the
   * endpoint takes no other credential, so a plain link cannot download it. Resolves with
   * `{blob, name}` for the page to offer as an object URL.
   *
   * Where the blob store makes presigned links (S3), the API answers 303 to the bucket. That
   * redirect is not followed (the page's CSP allows its own origin only, and a redirected
   * fetch cannot tell the page where it went): the page asks again with `link=true` and
   * resolves with `{url, name}`, the presigned link for the browser to open itself.
   */
  async file(path, { retried = false } = {}) {
    if (!this.access) throw new ApiError(401, 'signed_out', 'not signed in');
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), FILE_TIMEOUT_MS);
    try {
      let response;
      try {
        response = await fetch(path, {
          headers: { authorization: `Bearer ${this.access}` },
          redirect: 'manual',
          signal: abort.signal,
          cache: 'no-store',
          credentials: 'omit',
        });
      } catch (e) {
        throw unreachable(e, FILE_TIMEOUT_MS);
      }
      if (response.type === 'opaqueredirect') {
        const where = await this.call('GET', `${path}${path.includes('?') ? '&' : '?'}link=true`);
        if (!where || !where.url) {
          throw new ApiError(502, 'no_link', 'the server redirected the download but gave no link');
        }
        return { url: where.url, name: path.split('/').pop() };
      }
      if (response.status === 401 && !retried && this.refreshToken) {
        await this.refresh();
        return this.file(path, { retried: true });
      }
      if (!response.ok) throw await failure(response);
      let blob;
      try {
        blob = await response.blob();
      } catch (e) {
        throw unreachable(e, FILE_TIMEOUT_MS);
      }
      const name = dispositionName(response.headers.get('content-disposition')) || path.split('/').pop();
      return { blob, name };
    } finally {
      clearTimeout(timer);
    }
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

  // --- Maintenance (admin and operator write; viewers read) ------------------------------

  /** `{entries}`: each gate against each plan that applies, most urgent first. */
  maintenanceStatus(dueOnly) {
    return this.call('GET', `/api/v1/maintenance/status${dueOnly ? '?level=due' : ''}`);
  }

  /** `{plans}`; with `gate`, only those that apply to it. */
  plans(gate) {
    const q = gate ? `?${new URLSearchParams({ gate })}` : '';
    return this.call('GET', `/api/v1/maintenance/plans${q}`);
  }

  createPlan(plan) {
    return this.call('POST', '/api/v1/maintenance/plans', plan);
  }

  /** `{records, next}`, newest first. */
  records(gate, before) {
    const q = new URLSearchParams({ gate, limit: '20' });
    if (before) q.set('before', before);
    return this.call('GET', `/api/v1/maintenance/records?${q}`);
  }

  /** `{record, command}`: with `lockout`, the lockout command's outcome. */
  openRecord(record) {
    return this.call('POST', '/api/v1/maintenance/records', record, { timeoutMs: 20000 });
  }

  /** `{record, command}`: a gate locked out for the work is unlocked. */
  completeRecord(id, work) {
    return this.call('POST', `/api/v1/maintenance/records/${encodeURIComponent(id)}/complete`, work,
      { timeoutMs: 20000 });
  }

  // --- Reports (admin) -------------------------------------------------------------------

  /** `{reports, next}`, newest first. */
  reports(before) {
    const q = new URLSearchParams({ limit: '20' });
    if (before) q.set('before', before);
    return this.call('GET', `/api/v1/reports?${q}`);
  }

  report(id) {
    return this.call('GET', `/api/v1/reports/${encodeURIComponent(id)}`);
  }

  requestReport(spec) {
    return this.call('POST', '/api/v1/reports', spec);
  }

  sites() {
    return this.call('GET', '/api/v1/config/sites');
  }

  // --- Names ------------------------------------------------------------------------------

  /**
   * Learns the usernames behind actors. The API names actors by id (`user:<uuid>`,
   * `key:<uuid>`); only admins may list users, so for everyone else only their own name is
   * known.
   */
  async learnNames() {
    if (this.user) this.names.set(`user:${this.user.id}`, this.user.username);
    if (!this.user || this.user.role !== 'admin' || this.names.size > 1) return;
    try {
      const body = await this.call('GET', '/api/v1/users');
      for (const u of (body && body.users) || []) this.names.set(`user:${u.id}`, u.username);
    } catch {
      // Ids are shown instead.
    }
  }

  /** A person's name for an actor, or a short form of its id (`user 3a5edd66`). */
  actorName(actor) {
    if (!actor) return '?';
    const known = this.names.get(actor);
    if (known) return known;
    const m = /^(user|key):([0-9a-f]{8})/.exec(actor);
    return m ? `${m[1] === 'key' ? 'API key' : 'user'} ${m[2]}` : actor;
  }

  /** A command over REST, held until its outcome (the WebSocket's fallback). */
  command(gate, id, action) {
    return this.call('POST', `/api/v1/gates/${encodeURIComponent(gate)}/commands?wait=true`,
      { id, action }, { timeoutMs: 35000 });
  }
}
