// The live side of the console: one `gatehouse.v1` WebSocket (docs/websocket-protocol.md).
// It authenticates with the access token (and again after each refresh), subscribes to every
// site the operator can read, and on a drop reconnects with backoff and resumes each gate
// from the last `seq` it saw (`since`). Events reach the page once each, in order per gate:
// duplicates are dropped here, and gaps (a replay cut short, a coalesced snapshot) are fetched
// over REST.

const SUBPROTOCOL = 'gatehouse.v1';
/** The protocol's recommended ping interval (the server closes after 60 s of silence). */
const PING_EVERY_MS = 25000;
/** A ping without its pong for this long: the connection is dead. */
const PONG_DEADLINE_MS = 10000;
/** Backoff: random(0, min(cap, base · 2^attempt)), full jitter. */
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30000;
/** A connection that stayed up this long resets the backoff. */
const STABLE_AFTER_MS = 60000;
/** After 4500 (shutting down) and 4509 (too slow): reconnect at once, jittered over this. */
const QUICK_JITTER_MS = 1000;
/** The `auth_ok` must come within this (the server gives 10 s for the `auth` itself). */
const AUTH_DEADLINE_MS = 10000;
/** Events fetched over REST for one gap, at most (older ones are left to the history). */
const GAP_FILL_MAX = 500;
/** Subscribe attempts that may fail in a row on one connection before it is given up. */
const SUBSCRIBE_TRIES = 3;

export class Live {
  /**
   * @param {object} h the page's side
   * @param {() => string|null} h.token the current access token
   * @param {() => Promise<string>} h.refresh a fresh access token (rejects when signed out)
   * @param {() => Promise<{sites: string[], gateSite: Map<string,string>}>} h.prepare
   *   called before each subscribe: the sites to follow, with each known gate's site
   * @param {(gate: string, after: number, limit: number) => Promise<object>} h.fetchEvents
   * @param {(state: string, detail: string) => void} h.onStatus
   * @param {(entry: object, how: string) => void} h.onState a gate's state (snapshot entry)
   * @param {(event: object, how: string) => void} h.onEvent an event, once ('live',
   *   'replay' or 'fetched'); per gate in increasing seq, except fetched gap events
   * @param {(ack: object) => void} h.onAck
   * @param {(id: string, err: object) => void} h.onCommandError
   */
  constructor(h) {
    this.h = h;
    this.ws = null;
    this.running = false;
    /** Last seq seen per gate: the resume point and the duplicate filter. */
    this.last = new Map();
    /** Commands sent over this socket whose terminal ack has not come: resent on resume. */
    this.pending = new Map();
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.authTimer = null;
    this.seqId = 0;
    this.ready = false;
    this.openedAt = 0;
    this.authId = null;
    this.subscribeId = null;
    this.subscribeTries = 0;
    /** Each gate's seq in the last snapshot: where a missing replay ends. */
    this.snapSeq = new Map();
  }

  nextId(prefix) {
    this.seqId += 1;
    return `${prefix}${this.seqId}`;
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.connect();
  }

  stop() {
    this.running = false;
    clearTimeout(this.retryTimer);
    this.teardown(1000);
    this.last.clear();
    this.pending.clear();
    this.h.onStatus('closed', 'not connected');
  }

  /** Seeds resume points from REST (`GET /gates` seq is a valid `since`) for new gates. */
  seed(gates) {
    for (const g of gates) {
      if (!this.last.has(g.id)) this.last.set(g.id, g.seq);
    }
  }

  connect() {
    if (!this.running) return;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    let ws;
    try {
      ws = new WebSocket(`${scheme}://${location.host}/api/v1/ws`, [SUBPROTOCOL]);
    } catch (e) {
      this.scheduleReconnect(`cannot open: ${e.message}`);
      return;
    }
    this.ws = ws;
    this.ready = false;
    this.subscribeTries = 0;
    this.h.onStatus('connecting', this.attempt > 0 ? `reconnecting (try ${this.attempt + 1})` : 'connecting');
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.openedAt = Date.now();
      this.sendAuth();
      this.authTimer = setTimeout(() => this.abandon('no auth_ok'), AUTH_DEADLINE_MS);
    };
    ws.onmessage = (m) => {
      if (ws !== this.ws) return;
      let msg;
      try {
        msg = JSON.parse(m.data);
      } catch {
        return;
      }
      this.handle(msg);
    };
    ws.onclose = (c) => {
      if (ws !== this.ws) return;
      this.closed(c.code, c.reason);
    };
    // `error` is always followed by `close`: handled there.
    ws.onerror = () => {};
  }

  sendAuth() {
    const token = this.h.token();
    if (!token) {
      this.abandon('signed out');
      return;
    }
    this.authId = this.nextId('a');
    this.send({ type: 'auth', id: this.authId, token });
  }

  /** After a refresh: authenticate the open session again with the new token. */
  reauth() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.ready) this.sendAuth();
  }

  send(msg) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** Drops the socket without waiting for a close handshake that may never come. */
  teardown(code) {
    clearTimeout(this.pingTimer);
    clearTimeout(this.pongTimer);
    clearTimeout(this.authTimer);
    this.ready = false;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(code);
      } catch {
        // Already closing.
      }
    }
  }

  /** The connection is unusable (dead, or stuck): drop it and reconnect with backoff. */
  abandon(why) {
    this.teardown(1000);
    this.scheduleReconnect(why);
  }

  closed(code, reason) {
    const upFor = this.openedAt ? Date.now() - this.openedAt : 0;
    this.teardown(1000);
    if (!this.running) return;
    if (upFor >= STABLE_AFTER_MS) this.attempt = 0;
    const why = reason ? `${code} ${reason}` : `closed (${code})`;
    if (code === 4401) {
      // The token expired or was refused: a fresh one, then straight back.
      this.h.onStatus('connecting', 'refreshing the token');
      this.h.refresh().then(() => this.scheduleReconnect(why, 0), () => this.stop());
    } else if (code === 4403) {
      // A grant was revoked: list the readable gates again before subscribing.
      if (this.h.forceRelist) this.h.forceRelist();
      this.scheduleReconnect(why);
    } else if (code === 4500 || code === 4509) {
      this.scheduleReconnect(why, Math.random() * QUICK_JITTER_MS);
    } else {
      this.scheduleReconnect(why);
    }
  }

  scheduleReconnect(why, delayMs) {
    if (!this.running) return;
    clearTimeout(this.retryTimer);
    const delay = delayMs !== undefined
      ? delayMs
      : Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    this.attempt += 1;
    const secs = Math.max(1, Math.round(delay / 1000));
    this.h.onStatus('reconnecting', `${why}; retry in ${delay < 1000 ? '<1' : secs} s`);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  schedulePing() {
    clearTimeout(this.pingTimer);
    this.pingTimer = setTimeout(() => {
      const id = this.nextId('p');
      this.pingId = id;
      if (!this.send({ type: 'ping', id })) return;
      this.pongTimer = setTimeout(() => this.abandon('no pong'), PONG_DEADLINE_MS);
    }, PING_EVERY_MS);
  }

  async subscribe() {
    const ws = this.ws;
    let plan;
    try {
      plan = await this.h.prepare();
    } catch (e) {
      if (ws === this.ws) this.abandon(`cannot list gates: ${e.message}`);
      return;
    }
    if (ws !== this.ws || !ws) return;
    if (plan.sites.length === 0) {
      this.ready = true;
      this.h.onStatus('connected', 'live (no gates)');
      this.schedulePing();
      return;
    }
    const sites = new Set(plan.sites);
    const since = {};
    for (const [gate, seq] of this.last) {
      if (sites.has(plan.gateSite.get(gate))) since[gate] = seq;
    }
    this.subscribeId = this.nextId('s');
    this.subscribeSince = since;
    const msg = { type: 'subscribe', id: this.subscribeId, sites: [...sites] };
    if (Object.keys(since).length > 0) msg.since = since;
    this.send(msg);
  }

  handle(msg) {
    switch (msg.type) {
      case 'auth_ok':
        if (msg.id === this.authId) {
          clearTimeout(this.authTimer);
          if (!this.ready && !this.subscribeId) {
            this.subscribe();
          }
        }
        break;
      case 'snapshot':
        if (msg.coalesced) this.coalesced(msg.gates || []);
        else if (msg.id === this.subscribeId) this.snapshot(msg.gates || []);
        break;
      case 'event':
        this.event(msg);
        break;
      case 'ack':
        this.ack(msg);
        break;
      case 'pong':
        if (msg.id === this.pingId) {
          clearTimeout(this.pongTimer);
          this.schedulePing();
        }
        break;
      case 'error':
        this.error(msg);
        break;
      default:
        // `ok` and anything newer: nothing to do.
        break;
    }
  }

  /** The answer to our `subscribe`: section 6, step 3 of the protocol. */
  snapshot(entries) {
    const since = this.subscribeSince || {};
    for (const e of entries) {
      const asked = since[e.gate];
      this.snapSeq.set(e.gate, e.seq);
      if (asked === undefined || e.seq <= asked) {
        // (Below `since`: the server's history was reset, and our cursor with it.)
        this.last.set(e.gate, e.seq);
      } else if (e.replay_from !== undefined) {
        this.last.set(e.gate, e.replay_from - 1);
        if (e.replay_from > asked + 1) this.fill(e.gate, asked, e.replay_from - 1);
      } else {
        // No replay announced although we are behind: fetch what we missed.
        this.fill(e.gate, asked, e.seq);
        this.last.set(e.gate, e.seq);
      }
      this.h.onState(e, 'snapshot');
    }
    this.subscribeId = null;
    this.ready = true;
    this.h.onStatus('connected', 'live');
    this.schedulePing();
    // Commands whose outcome the drop swallowed: the same id again is safe (no second move).
    for (const [id, c] of this.pending) {
      c.resent = true;
      this.send({ type: 'command', id, gate: c.gate, action: c.action });
    }
  }

  coalesced(entries) {
    for (const e of entries) {
      const last = this.last.get(e.gate);
      if (last === undefined || e.seq <= last) continue;
      this.fill(e.gate, last, e.seq);
      this.last.set(e.gate, e.seq);
      this.h.onState(e, 'coalesced');
    }
  }

  event(ev) {
    const last = this.last.get(ev.gate);
    if (last !== undefined) {
      if (ev.seq <= last) return;
      if (ev.seq > last + 1) this.fill(ev.gate, last, ev.seq - 1);
    }
    this.last.set(ev.gate, ev.seq);
    if (ev.kind === 'command_finished' && this.pending.has(ev.command)) {
      // The outcome, if its ack was lost with a connection.
      this.pending.delete(ev.command);
      this.h.onAck({ type: 'ack', id: ev.command, gate: ev.gate, status: ev.status, reason: ev.reason, viaEvent: true });
    }
    this.h.onEvent(ev, 'live');
  }

  /** Fetches the events `after + 1` … `upTo` of `gate` over REST (bounded). */
  async fill(gate, after, upTo) {
    let cursor = Math.max(after, upTo - GAP_FILL_MAX);
    try {
      while (cursor < upTo) {
        const page = await this.h.fetchEvents(gate, cursor, Math.min(500, upTo - cursor));
        const events = (page && page.events) || [];
        for (const ev of events) {
          if (ev.seq > upTo) break;
          this.h.onEvent({ ...ev, type: 'event' }, 'fetched');
        }
        if (events.length === 0 || page.next === null || page.next === undefined) break;
        cursor = page.next;
      }
    } catch {
      // The history stays incomplete on screen; the state itself is right.
    }
  }

  ack(a) {
    const c = this.pending.get(a.id);
    if (a.status !== 'accepted') this.pending.delete(a.id);
    if (c && c.resent) a.resent = true;
    this.h.onAck(a);
  }

  error(msg) {
    if (msg.id && this.pending.has(msg.id)) {
      this.pending.delete(msg.id);
      this.h.onCommandError(msg.id, msg);
      return;
    }
    if (msg.id && msg.id === this.authId) {
      if (msg.code === 'database_unavailable') {
        setTimeout(() => this.sendAuth(), 1000);
      }
      // Other auth errors close the connection (4401): handled in `closed`.
      return;
    }
    if (msg.id && msg.id === this.subscribeId) {
      this.subscribeId = null;
      this.subscribeTries += 1;
      if (msg.code === 'invalid_message' && msg.details && msg.details.gate) {
        // A `since` for a gate that left the subscription (moved or removed): start it afresh.
        this.last.delete(msg.details.gate);
      }
      if (this.subscribeTries < SUBSCRIBE_TRIES) {
        if (this.h.forceRelist) this.h.forceRelist();
        this.subscribe();
      } else {
        this.abandon(`subscribe refused: ${msg.code}`);
      }
      return;
    }
    if (msg.code === 'replay_unavailable' && msg.details && Array.isArray(msg.details.gates)) {
      // The gates are live but their replay is missing: fetch it over REST, up to the
      // snapshot's seq (live events after it come over the socket).
      for (const gate of msg.details.gates) {
        const upTo = this.snapSeq.get(gate);
        const last = this.last.get(gate);
        if (upTo === undefined || last === undefined || last >= upTo) continue;
        this.fill(gate, last, upTo);
        this.last.set(gate, upTo);
      }
    }
  }

  /**
   * Sends a command; its acks come through `onAck`. Returns false when the socket is not
   * ready (the page then uses REST).
   */
  command(id, gate, action) {
    if (!this.ready) return false;
    this.pending.set(id, { gate, action, resent: false });
    if (!this.send({ type: 'command', id, gate, action })) {
      this.pending.delete(id);
      return false;
    }
    return true;
  }
}
