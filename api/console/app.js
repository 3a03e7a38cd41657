// The operator console: sign-in, the live gate grid with commands and their outcomes, link
// status per controller, the supervision tree, the event feed and the chart; beside the live
// view, the maintenance and reports pages (tabs in the top bar). It is a client of the public
// API like any other (REST + the `gatehouse.v1` WebSocket); see api.js for the tokens,
// live.js for the socket, views.js for the DOM, account.js for forgotten passwords and
// emailed links, maintenance.js and reports.js for those pages.

import { Account, linkInHash } from './account.js';
import { Api } from './api.js';
import { Live } from './live.js';
import { MaintenancePage } from './maintenance.js';
import { ReportsPage } from './reports.js';
import { Feed, GateCard, drawChart, duration, el, renderLinks, renderTree } from './views.js';

/** Events kept in the feed. */
const FEED_LIMIT = 100;
/** How often the supervision tree (and with it the link states) is read. */
const ACTORS_POLL_MS = 1000;
/** The chart's window and its event-rate bucket. */
const CHART_WINDOW_MS = 5 * 60 * 1000;
const RATE_BUCKET_MS = 5000;
/** At sign-in, the feed starts with this many recent events of each gate ... */
const HISTORY_PER_GATE = 10;
/** ... for at most this many gates, fetched this many at a time. */
const HISTORY_GATES_MAX = 40;
const HISTORY_PARALLEL = 4;
/** A gate list younger than this is reused when the socket (re)subscribes. */
const RELIST_FRESH_MS = 2000;
/** Command round trips kept for the chart. */
const RTT_KEEP = 500;

const TERMINAL = new Set(['completed', 'rejected', 'failed', 'timed_out']);

/**
 * The pages behind the tabs: each one's view and who sees it (CONTRACTS.md, "Roles":
 * maintenance is read by all but residents, reports are the admin's).
 */
const PAGES = {
  live: { view: 'console-view', title: 'Gatehouse console', roles: null },
  maintenance: { view: 'maintenance-view', title: 'Maintenance · Gatehouse', roles: new Set(['admin', 'operator', 'viewer']) },
  reports: { view: 'reports-view', title: 'Reports · Gatehouse', roles: new Set(['admin']) },
};

const $ = (id) => document.getElementById(id);

// A CSP violation is a bug of this page: make it loud (the browser test fails on console errors).
document.addEventListener('securitypolicyviolation', (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`);
});

/** A v4 UUID; `crypto.randomUUID` exists only in secure contexts (not plain http on a LAN). */
function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

class Console {
  constructor() {
    this.api = new Api({
      onAccessToken: () => this.live && this.live.reauth(),
      onSignedOut: (why) => this.signedOut(why),
    });
    this.live = new Live({
      token: () => this.api.access,
      refresh: () => this.api.refresh(),
      prepare: () => this.prepare(),
      forceRelist: () => {
        this.listedAt = 0;
      },
      fetchEvents: (gate, after, limit) => this.api.events(gate, after, limit),
      onStatus: (state, detail) => this.wsStatus(state, detail),
      onState: (entry, how) => this.gateState(entry, how),
      onEvent: (ev, how) => this.gateEvent(ev, how),
      onAck: (ack) => this.ack(ack),
      onCommandError: (id, err) => this.commandError(id, err),
    });
    this.feed = new Feed($('feed'), FEED_LIMIT, (cause) => this.commands.has(cause));
    this.maintenance = new MaintenancePage(this.api);
    this.reports = new ReportsPage(this.api);
    this.account = new Account(this.api, { signedIn: () => this.start() });
    this.page = 'live';
    this.reset();
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.login();
    });
    $('logout').addEventListener('click', () => this.logout());
    for (const tab of document.querySelectorAll('#tabs [role=tab]')) {
      tab.addEventListener('click', () => this.showPage(tab.dataset.page));
      tab.addEventListener('keydown', (e) => this.tabKey(e));
    }
    // A link pasted into a console already open changes only the fragment: no new load.
    window.addEventListener('hashchange', () => this.followLink());
  }

  /** An emailed link in the address: its landing view (a session open here ends first). */
  async followLink() {
    const link = linkInHash(location.hash);
    if (!link) return false;
    if (this.api.signedIn) await this.logout();
    this.account.open(link);
    return true;
  }

  /** Everything a session shows, forgotten. */
  reset() {
    /** gate id → {info (REST), card, shownSeq} */
    this.gates = new Map();
    /** site id → {section, grid, count} */
    this.sites = new Map();
    /** controller id → link view */
    this.links = new Map();
    /** controller id → when its gates were all seen going offline (performance.now()) */
    this.offlineAt = new Map();
    /** command id → {gate, action, sentAt, acceptedMs, doneMs, status} */
    this.commands = new Map();
    this.rtts = [];
    /** `gate#seq` → at_ms, for the event rate (each event once) */
    this.rate = new Map();
    this.listedAt = 0;
    this.treeAllowed = true;
    this.treeAt = 0;
    this.feed.clear();
    clearTimeout(this.pollTimer);
    clearInterval(this.tick);
    this.pollTimer = null;
    this.tick = null;
    this.generation = (this.generation || 0) + 1;
    $('grid').replaceChildren();
    $('links').replaceChildren();
    $('tree').replaceChildren();
    $('chart').replaceChildren();
    $('tree-age').textContent = '';
    this.maintenance.reset();
    this.reports.reset();
  }

  async login() {
    const user = $('login-user').value.trim();
    const password = $('login-password').value;
    const error = $('login-error');
    const button = $('login-form').querySelector('button[type=submit]');
    error.textContent = '';
    button.disabled = true;
    try {
      await this.api.login(user, password);
    } catch (e) {
      error.textContent = e.status === 401
        ? 'Wrong username or password.'
        : e.status === 429
          ? `Too many failed sign-ins; try again in ${(e.details && e.details.retry_after_s) || 'a few'} s.`
          : `Cannot sign in: ${e.message}`;
      button.disabled = false;
      return;
    }
    button.disabled = false;
    $('login-password').value = '';
    await this.start();
  }

  /** Signed in (by a login or an emailed link): the live view, and the tabs this role has. */
  async start() {
    const me = this.api.user;
    $('who').textContent = `${me.username} · ${me.role}`;
    this.account.hideAll();
    $('session-bar').hidden = false;
    for (const [name, page] of Object.entries(PAGES)) {
      $(`tab-${name}`).hidden = page.roles !== null && !page.roles.has(me.role);
    }
    $('tabs').hidden = false;
    this.showPage('live');
    const generation = this.generation;
    try {
      await this.listGates();
    } catch (e) {
      if (generation !== this.generation) return;
      $('grid-empty').hidden = false;
      $('grid-empty').textContent = `Cannot list the gates: ${e.message}`;
    }
    if (generation !== this.generation) return;
    this.live.start();
    this.poll();
    this.tick = setInterval(() => this.everySecond(), 1000);
    this.everySecond();
    this.history(generation);
  }

  async logout() {
    this.live.stop();
    await this.api.logout();
    this.signedOut('Signed out.');
  }

  signedOut(why) {
    this.live.stop();
    this.api.clear();
    this.reset();
    for (const page of Object.values(PAGES)) $(page.view).hidden = true;
    $('session-bar').hidden = true;
    $('tabs').hidden = true;
    this.page = 'live';
    document.title = 'Gatehouse console';
    this.account.showSignIn();
    $('login-error').textContent = why && why !== 'Signed out.' ? why : '';
  }

  // --- Pages ---------------------------------------------------------------------------

  /** Shows one page; the live view keeps running behind the others. */
  showPage(name) {
    const page = PAGES[name];
    const role = this.api.user && this.api.user.role;
    if (!page || (page.roles !== null && !page.roles.has(role))) return;
    const left = this.page;
    this.page = name;
    for (const [other, p] of Object.entries(PAGES)) {
      const tab = $(`tab-${other}`);
      const on = other === name;
      tab.setAttribute('aria-selected', String(on));
      tab.tabIndex = on ? 0 : -1;
      $(p.view).hidden = !on;
    }
    document.title = page.title;
    if (left === 'reports' && name !== 'reports') this.reports.hide();
    if (name === 'maintenance') this.maintenance.show(role);
    if (name === 'reports') this.reports.show();
  }

  /** Arrow keys, Home and End move between the tabs (the ARIA tabs pattern). */
  tabKey(e) {
    const tabs = [...document.querySelectorAll('#tabs [role=tab]')].filter((t) => !t.hidden);
    const i = tabs.indexOf(e.currentTarget);
    let next = null;
    if (e.key === 'ArrowRight') next = tabs[(i + 1) % tabs.length];
    else if (e.key === 'ArrowLeft') next = tabs[(i - 1 + tabs.length) % tabs.length];
    else if (e.key === 'Home') next = tabs[0];
    else if (e.key === 'End') next = tabs[tabs.length - 1];
    if (!next) return;
    e.preventDefault();
    next.focus();
    this.showPage(next.dataset.page);
  }

  wsStatus(state, detail) {
    const node = document.querySelector('[data-testid="ws-status"]');
    node.dataset.state = state;
    node.querySelector('.ws-text').textContent = detail;
    node.title = `Live connection: ${detail}`;
  }

  // --- Gates ---------------------------------------------------------------------------

  /** Before each subscribe: the sites to follow, with each known gate's site. */
  async prepare() {
    if (performance.now() - this.listedAt > RELIST_FRESH_MS || this.listedAt === 0) {
      await this.listGates();
    }
    const gateSite = new Map();
    for (const [id, g] of this.gates) gateSite.set(id, g.info.site);
    return { sites: [...this.sites.keys()], gateSite };
  }

  /** GET /gates: cards for new gates, names for known ones, removed ones dropped. */
  async listGates() {
    const generation = this.generation;
    const body = await this.api.gates();
    if (generation !== this.generation) return;
    this.listedAt = performance.now();
    const list = (body && body.gates) || [];
    const seen = new Set();
    for (const g of list) {
      seen.add(g.id);
      const known = this.gates.get(g.id);
      if (known) {
        known.info = g;
        known.card.describe(g);
      } else {
        const card = new GateCard(g, (gate, action) => this.command(gate, action));
        this.gates.set(g.id, { info: g, card, shownSeq: g.seq });
      }
      if (!this.links.has(g.controller)) {
        this.links.set(g.controller, { controller: g.controller, state: 'connecting', note: 'waiting for the tree' });
      }
    }
    for (const id of [...this.gates.keys()]) if (!seen.has(id)) this.gates.delete(id);
    this.live.seed(list);
    this.layout();
    renderLinks($('links'), this.links);
  }

  /** Site sections with their cards, sorted. */
  layout() {
    const bySite = new Map();
    const sorted = [...this.gates.values()].sort((a, b) => a.info.id.localeCompare(b.info.id));
    for (const g of sorted) {
      if (!bySite.has(g.info.site)) bySite.set(g.info.site, []);
      bySite.get(g.info.site).push(g);
    }
    for (const [site, s] of this.sites) {
      if (!bySite.has(site)) {
        s.section.remove();
        this.sites.delete(site);
      }
    }
    const sections = [];
    for (const site of [...bySite.keys()].sort()) {
      let s = this.sites.get(site);
      if (!s) {
        const count = el('span', { class: 'site-count' });
        const grid = el('div', { class: 'gate-grid' });
        const section = el('section', { class: 'site', 'data-site': site, 'aria-label': `Site ${site}` },
          el('h2', { class: 'site-title' }, el('span', { class: 'site-name', text: site }), count),
          grid);
        s = { section, grid, count };
        this.sites.set(site, s);
      }
      const gates = bySite.get(site);
      s.count.textContent = `${gates.length} gate${gates.length === 1 ? '' : 's'}`;
      s.grid.replaceChildren(...gates.map((g) => g.card.root));
      sections.push(s.section);
    }
    $('grid').replaceChildren(...sections);
    $('grid-empty').hidden = this.gates.size > 0;
    $('grid-empty').textContent = 'No gates to show.';
  }

  /** A snapshot entry: the gate's newest state. */
  gateState(entry, how, relisted = false) {
    const g = this.gates.get(entry.gate);
    if (!g) {
      // A gate the list did not have yet (added since): list again for its name and card.
      if (relisted) return;
      this.listGates().then(() => this.gateState(entry, how, true)).catch(() => {});
      return;
    }
    if (how === 'snapshot' || entry.seq > g.shownSeq) {
      g.card.show(entry);
      g.shownSeq = entry.seq;
      g.info = { ...g.info, state: entry.state };
    }
  }

  gateEvent(ev, how) {
    const key = `${ev.gate}#${ev.seq}`;
    if (!this.rate.has(key)) this.rate.set(key, ev.at_ms);
    this.feed.add(ev);
    this.scheduleRender();
    const g = this.gates.get(ev.gate);
    if (!g) return;
    // Replayed and fetched events are history: the display moves forward only.
    if (ev.seq > g.shownSeq) {
      g.card.show(ev);
      g.shownSeq = ev.seq;
      g.info = { ...g.info, state: ev.state };
      if (how === 'live' && ev.kind === 'state_changed' && ev.state === 'offline') {
        this.maybeLinkDown(g.info.controller);
      }
    }
  }

  /** All gates of a controller offline: its link is down, whatever the last poll said. */
  maybeLinkDown(controller) {
    const mine = [...this.gates.values()].filter((g) => g.info.controller === controller);
    if (mine.length === 0 || !mine.every((g) => g.info.state === 'offline')) return;
    this.offlineAt.set(controller, performance.now());
    const link = this.links.get(controller) || { controller };
    if (link.state === 'connected') {
      this.links.set(controller, { ...link, state: 'restarting', retryInMs: null, lastError: null, note: 'all gates offline' });
      renderLinks($('links'), this.links);
    }
  }

  scheduleRender() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.feed.render();
    });
  }

  /** The feed starts with the last few events of each gate (bounded). */
  async history(generation) {
    const todo = [...this.gates.values()]
      .filter((g) => g.info.seq > 0)
      .slice(0, HISTORY_GATES_MAX);
    const worker = async () => {
      while (todo.length && generation === this.generation) {
        const g = todo.shift();
        try {
          const page = await this.api.events(g.info.id, Math.max(0, g.info.seq - HISTORY_PER_GATE), HISTORY_PER_GATE);
          if (generation !== this.generation) return;
          for (const ev of (page && page.events) || []) this.gateEvent({ ...ev, type: 'event' }, 'history');
        } catch {
          // History is a courtesy; the live feed goes on without it.
        }
      }
    };
    await Promise.all(Array.from({ length: HISTORY_PARALLEL }, worker));
  }

  // --- Commands ------------------------------------------------------------------------

  command(gate, action) {
    const g = this.gates.get(gate);
    if (!g) return;
    const id = uuid();
    const cmd = { id, gate, action, sentAt: performance.now(), at: this.api.serverNow(), acceptedMs: null, doneMs: null, status: 'sending' };
    this.commands.set(id, cmd);
    g.card.latest = id;
    g.card.setOutcome(action, 'sending', null, 'wait', '');
    if (this.live.command(id, gate, action)) return;
    // No live connection: the same command over REST, held until its outcome.
    g.card.setOutcome(action, 'sending', null, 'wait', 'over REST');
    this.api.command(gate, id, action).then(
      (body) => this.ack({ id, gate, status: body.status, reason: body.reason, viaRest: true }),
      (e) => this.commandError(id, { code: e.code, message: e.message, details: e.details }),
    );
  }

  ack(a) {
    const cmd = this.commands.get(a.id);
    if (!cmd || TERMINAL.has(cmd.status)) return;
    const elapsed = performance.now() - cmd.sentAt;
    const g = this.gates.get(cmd.gate);
    cmd.status = a.status;
    if (a.status === 'accepted' || a.status === 'pending') {
      if (a.status === 'accepted') cmd.acceptedMs = elapsed;
      if (g && g.card.latest === a.id) g.card.setOutcome(cmd.action, a.status, null, 'wait', a.status === 'accepted' ? `in ${duration(elapsed)}` : '');
      return;
    }
    cmd.doneMs = elapsed;
    cmd.ok = a.status === 'completed';
    this.rtts.push({
      at: cmd.at, gate: cmd.gate, action: cmd.action, status: a.status, ok: cmd.ok, acceptedMs: cmd.acceptedMs, doneMs: cmd.doneMs,
    });
    if (this.rtts.length > RTT_KEEP) this.rtts.splice(0, this.rtts.length - RTT_KEEP);
    if (g && g.card.latest === a.id) {
      const how = a.viaRest ? ' (REST)' : a.resent ? ' (after reconnect)' : '';
      g.card.setOutcome(cmd.action, a.status, a.reason || null, cmd.ok ? 'ok' : 'bad', `in ${duration(elapsed)}${how}`);
    }
    this.drawChart();
  }

  commandError(id, err) {
    const cmd = this.commands.get(id);
    if (!cmd) return;
    cmd.status = 'error';
    const g = this.gates.get(cmd.gate);
    if (!g || g.card.latest !== id) return;
    const d = err.details || {};
    if (err.code === 'rate_limited') {
      g.card.setOutcome(cmd.action, 'rate limited', null, 'bad', `retry in ${d.retry_after_s || 1} s`);
    } else if (err.code === 'forbidden') {
      g.card.setOutcome(cmd.action, 'forbidden', d.reason || null, 'bad', '');
    } else {
      g.card.setOutcome(cmd.action, 'error', err.code || null, 'bad', err.message || '');
    }
  }

  // --- Links and the tree ----------------------------------------------------------------

  async poll() {
    const generation = this.generation;
    const started = performance.now();
    if (this.treeAllowed) {
      try {
        const body = await this.api.actors();
        if (generation !== this.generation) return;
        this.treeAt = Date.now();
        renderTree($('tree'), body.root);
        this.linksFromTree(body.root, started);
      } catch (e) {
        if (generation !== this.generation) return;
        if (e.status === 403) {
          this.treeAllowed = false;
          $('tree').replaceChildren(el('p', { class: 'muted', text: 'The supervision tree is for operators and admins.' }));
        } else if (e.status === 401) {
          return;
        } else {
          $('tree-age').textContent = `(stale: ${e.message})`;
          for (const [c, l] of this.links) this.links.set(c, { ...l, note: 'state unknown: tree unavailable' });
          renderLinks($('links'), this.links);
        }
      }
    }
    if (!this.treeAllowed) this.linksFromGates();
    if (generation !== this.generation) return;
    const wait = Math.max(0, ACTORS_POLL_MS - (performance.now() - started));
    this.pollTimer = setTimeout(() => this.poll(), wait);
  }

  /** Link states from the tree: a link node that is restarting, or has no `link`, is down. */
  linksFromTree(root, started) {
    const found = new Map();
    const walk = (node) => {
      if (node.kind === 'controller') {
        const controller = node.id.replace(/^controller:/, '');
        const linkNode = (node.children || []).find((c) => c.kind === 'link');
        const l = linkNode && linkNode.link;
        let state = 'restarting';
        if (node.status === 'running' && linkNode && linkNode.status === 'running' && l && l.state) state = l.state;
        found.set(controller, {
          controller,
          state,
          endpoint: l ? l.endpoint : null,
          since: l ? l.since : null,
          failures: l ? l.failures : 0,
          retryInMs: l ? l.retry_in_ms : null,
          lastError: l ? l.last_error : null,
          restarts: linkNode ? linkNode.restarts : 0,
          note: null,
        });
      }
      for (const c of node.children || []) walk(c);
    };
    if (root) walk(root);
    const controllers = new Set([...found.keys(), ...[...this.gates.values()].map((g) => g.info.controller)]);
    const links = new Map();
    for (const c of controllers) {
      let link = found.get(c) || { controller: c, state: 'restarting', note: 'not in the tree' };
      const offline = this.offlineAt.get(c);
      if (offline !== undefined) {
        if (offline > started && link.state === 'connected') {
          // The gates went offline after this poll was asked: it cannot know yet.
          link = { ...link, state: 'restarting', retryInMs: null, lastError: null, note: 'all gates offline' };
        } else if (offline <= started) {
          this.offlineAt.delete(c);
        }
      }
      links.set(c, link);
    }
    this.links = links;
    renderLinks($('links'), this.links);
  }

  /** Without the tree (viewer, resident): a controller whose gates are all offline is down. */
  linksFromGates() {
    const by = new Map();
    for (const g of this.gates.values()) {
      const c = g.info.controller;
      if (!by.has(c)) by.set(c, []);
      by.get(c).push(g.info.state);
    }
    this.links = new Map([...by].map(([c, states]) => [c, {
      controller: c,
      state: states.every((s) => s === 'offline') ? 'unreachable' : 'connected',
      note: 'from gate states',
    }]));
    renderLinks($('links'), this.links);
  }

  // --- Chart -----------------------------------------------------------------------------

  everySecond() {
    this.drawChart();
    if (this.treeAt) {
      const age = Math.round((Date.now() - this.treeAt) / 1000);
      if (age >= 3) $('tree-age').textContent = `(updated ${age} s ago)`;
      else if (!$('tree-age').textContent.startsWith('(stale')) $('tree-age').textContent = '';
    }
  }

  drawChart() {
    const now = this.api.serverNow();
    const from = now - CHART_WINDOW_MS;
    const buckets = [];
    const first = Math.floor(from / RATE_BUCKET_MS) * RATE_BUCKET_MS;
    for (let t = first; t <= now; t += RATE_BUCKET_MS) buckets.push({ start: t, n: 0 });
    for (const [key, at] of this.rate) {
      if (at < from - RATE_BUCKET_MS) {
        this.rate.delete(key);
        continue;
      }
      const i = Math.floor((at - first) / RATE_BUCKET_MS);
      if (i >= 0 && i < buckets.length) buckets[i].n += 1;
    }
    const rate = buckets.map((b) => {
      // The current bucket is still filling: divide by the part of it that has passed.
      const span = Math.min(RATE_BUCKET_MS, Math.max(1000, now - b.start));
      return { start: b.start, perSecond: (b.n * 1000) / span };
    });
    drawChart($('chart'), {
      now, windowMs: CHART_WINDOW_MS, rtts: this.rtts, rate, bucketMs: RATE_BUCKET_MS,
    });
  }
}

const app = new Console();
// Opened from an emailed link: its landing view instead of the sign-in form.
app.followLink().then((followed) => {
  if (!followed) $('login-user').focus();
});
