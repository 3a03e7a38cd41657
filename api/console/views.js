// DOM building for the console: gate cards, link chips, the supervision tree, the event feed
// and the chart. Everything is made with DOM calls and classes: the page's CSP forbids inline
// styles and scripts, and text always goes in as text, never as HTML.

const SVG_NS = 'http://www.w3.org/2000/svg';

/** The commands each gate card offers, in button order, with their labels. */
export const ACTIONS = [
  ['open', 'Open'],
  ['close', 'Close'],
  ['stop', 'Stop'],
  ['lockout', 'Lockout'],
  ['unlock', 'Unlock'],
  ['reset', 'Reset'],
];

/** `el('div', {class: 'x', 'data-testid': 'y'}, child, 'text')`. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') node.textContent = String(v);
    else if (k === 'hidden') node.hidden = Boolean(v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
}

/** The color family of a gate state: ok (green), moving (amber), bad (red), unknown (grey). */
export function stateTone(state) {
  switch (state) {
    case 'open':
    case 'closed':
      return 'ok';
    case 'opening':
    case 'closing':
    case 'stopped':
      return 'moving';
    case 'fault':
    case 'offline':
      return 'bad';
    default:
      return 'unknown';
  }
}

function setTone(node, prefix, tone) {
  for (const t of ['ok', 'moving', 'bad', 'unknown', 'wait']) node.classList.remove(`${prefix}-${t}`);
  node.classList.add(`${prefix}-${tone}`);
}

/** Clock time with milliseconds, local. */
export function clock(ms, withMs = true) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, '0');
  const base = `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  return withMs ? `${base}.${String(d.getMilliseconds()).padStart(3, '0')}` : base;
}

export function duration(ms) {
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms / 60000)} min`;
}

/** Local date and time to the minute, `2026-12-07 14:05` (or `—`). */
export function dateTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}`;
}

/** A whole number with thousands separated (`20,000`). */
export function count(n) {
  return Number(n).toLocaleString('en-US');
}

/** `1.2 MiB`. */
export function bytes(n) {
  if (n === null || n === undefined) return '—';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
}

/** `n thing` or `n things`. */
export function plural(n, one, many = `${one}s`) {
  return `${count(n)} ${n === 1 ? one : many}`;
}

/**
 * Offers a fetched file to the browser's downloads: an object URL on a link with `download`,
 * clicked. Returns the link (for the page to keep showing) and its URL (to revoke later).
 */
export function offerFile(blob, name, attrs = {}) {
  const url = URL.createObjectURL(blob);
  const link = el('a', { class: 'file-link', href: url, download: name, text: name, ...attrs });
  link.addEventListener('click', (e) => e.stopPropagation());
  return { link, url };
}

/**
 * Offers what `Api.file` resolved with: a fetched file (an object URL, returned to be revoked
 * later), or a presigned link to object storage that the browser opens itself (no URL to
 * revoke).
 */
export function offerDownload(file, name, attrs = {}) {
  if (!file.url) return offerFile(file.blob, name, attrs);
  const link = el('a', {
    class: 'file-link', href: file.url, target: '_blank', rel: 'noopener noreferrer', text: name, ...attrs,
  });
  link.addEventListener('click', (e) => e.stopPropagation());
  return { link, url: null };
}

/** A level badge of the maintenance status: ok, due or overdue. */
export function levelBadge(level) {
  const tone = level === 'overdue' ? 'bad' : level === 'due' ? 'moving' : 'ok';
  return el('span', { class: `badge badge-${tone}`, 'data-testid': 'level', text: level });
}

/** One gate: state, position, flags, commands and the last command's outcome. */
export class GateCard {
  constructor(gate, onCommand) {
    this.id = gate.id;
    const nameId = `gate-name-${gate.id}`;
    this.name = el('h3', { class: 'gate-name', id: nameId });
    this.sub = el('p', { class: 'gate-sub' });
    this.state = el('span', { class: 'state-badge', 'data-testid': 'state' });
    this.progress = el('progress', { max: 100, value: 0, 'aria-label': 'Position, percent open' });
    this.posText = el('span', { class: 'pos-text' });
    this.flags = el('ul', { class: 'flags', 'aria-label': 'Flags' });
    this.buttons = ACTIONS.map(([action, label]) => {
      const b = el('button', {
        type: 'button',
        class: `btn cmd cmd-${action}`,
        'data-testid': `cmd-${action}`,
        'data-action': action,
        text: label,
      });
      b.addEventListener('click', () => onCommand(this.id, action));
      return b;
    });
    this.outcomeAction = el('span', { class: 'outcome-action' });
    this.outcome = el('span', { class: 'outcome', 'data-testid': 'outcome', role: 'status', 'aria-live': 'polite' });
    this.outcomeTime = el('span', { class: 'outcome-time' });
    this.root = el('article', { class: 'gate', 'data-testid': `gate-${gate.id}`, 'data-gate': gate.id, 'aria-labelledby': nameId },
      el('header', { class: 'gate-head' },
        el('div', { class: 'gate-title' }, this.name, this.sub),
        this.state),
      el('div', { class: 'gate-pos' }, this.progress, this.posText),
      this.flags,
      el('div', { class: 'cmds', role: 'group', 'aria-label': `Commands for ${gate.name || gate.id}` }, ...this.buttons),
      el('p', { class: 'outcome-line' }, this.outcomeAction, this.outcome, this.outcomeTime));
    this.describe(gate);
    this.show(gate);
  }

  /** Name and placement (from REST). */
  describe(gate) {
    const name = gate.name || gate.id;
    this.name.textContent = name;
    this.sub.textContent = gate.name && gate.name !== gate.id ? `${gate.id} · ${gate.controller}` : gate.controller || '';
    for (const b of this.buttons) b.setAttribute('aria-label', `${b.textContent} ${name}`);
  }

  /** The gate's state fields (a REST gate, a snapshot entry or an event). */
  show(g) {
    const state = g.state || 'unknown';
    this.state.textContent = state;
    this.root.dataset.state = state;
    setTone(this.root, 'tone', stateTone(state));
    if (g.position === null || g.position === undefined) {
      this.progress.value = 0;
      this.progress.classList.add('unknown');
      this.posText.textContent = '—';
    } else {
      this.progress.value = g.position;
      this.progress.classList.remove('unknown');
      this.posText.textContent = `${g.position}%`;
    }
    const flags = g.flags || {};
    const chips = [];
    if (flags.obstructed) chips.push(['obstructed', 'bad']);
    if (flags.locked_out) chips.push(['locked out', 'moving']);
    if (flags.held_open) chips.push(['held open', 'info']);
    if (g.fault_code) chips.push([`fault code ${g.fault_code}`, 'bad']);
    if (g.latched_fault) chips.push([`latched: ${g.latched_fault}`, 'bad']);
    if (g.cycles !== null && g.cycles !== undefined) chips.push([`${g.cycles} cycles`, 'quiet']);
    this.flags.replaceChildren(...chips.map(([text, tone]) => el('li', { class: `chip chip-${tone}`, text })));
  }

  /** The outcome area: `status` is what the test reads (`completed`, `failed: offline`). */
  setOutcome(action, status, reason, tone, detail) {
    this.outcomeAction.textContent = action ? `${action}:` : '';
    this.outcome.textContent = reason ? `${status}: ${reason}` : status;
    this.outcome.dataset.status = status;
    setTone(this.outcome, 'out', tone);
    this.outcomeTime.textContent = detail || '';
  }
}

/** Link chips, one per controller: `data-state` and class `down` unless connected. */
export function renderLinks(container, links) {
  const items = [...links.values()].sort((a, b) => a.controller.localeCompare(b.controller));
  container.replaceChildren(...items.map((l) => {
    const down = l.state !== 'connected';
    const detail = [];
    if (l.endpoint) detail.push(l.endpoint);
    if (l.retryInMs !== null && l.retryInMs !== undefined) detail.push(`retry in ${duration(l.retryInMs)}`);
    if (l.failures) detail.push(`${l.failures} failed attempt${l.failures === 1 ? '' : 's'}`);
    if (down && l.lastError) detail.push(l.lastError);
    if (l.note) detail.push(l.note);
    return el('li', {
      class: `link${down ? ' down' : ''}`,
      'data-testid': `link-${l.controller}`,
      'data-state': l.state,
      title: l.since ? `${l.state} since ${l.since}` : l.state,
    },
    el('span', { class: 'dot', 'aria-hidden': 'true' }),
    el('span', { class: 'link-name', text: l.controller }),
    el('span', { class: 'link-state', text: l.state }),
    detail.length ? el('span', { class: 'link-detail', text: detail.join(' · ') }) : null);
  }));
}

/** Gates of a controller shown one by one in the tree up to this many; beyond, summarised. */
const TREE_GATES_LISTED = 12;

/** The supervision tree as nested lists, with restart counts and last failures. */
export function renderTree(container, root) {
  if (!root) {
    container.replaceChildren(el('p', { class: 'muted', text: 'Not available.' }));
    return;
  }
  container.replaceChildren(el('ul', { class: 'tree-list', 'aria-label': 'Supervision tree' }, treeNode(root, null)));
}

function treeNode(node, controller) {
  const restarting = node.status !== 'running';
  const row = el('div', { class: `node-row${restarting ? ' node-restarting' : ''}` },
    el('span', { class: 'node-id', text: node.id }),
    node.kind && node.kind !== node.id && !node.id.startsWith(`${node.kind}:`)
      ? el('span', { class: 'node-kind', text: node.kind }) : null,
    el('span', { class: `node-status status-${restarting ? 'restarting' : 'running'}`, text: node.status }),
    el('span', {
      class: `restarts${node.restarts > 0 ? ' restarts-some' : ''}`,
      'data-testid': 'restarts',
      title: 'restarts',
      text: `↻ ${node.restarts}`,
    }));
  if (node.kind === 'link' && !restarting) {
    // (While the child restarts, its `link` object is the previous run's: not shown.)
    const l = node.link;
    row.append(el('span', {
      class: `link-info${!l || l.state !== 'connected' || restarting ? ' link-info-down' : ''}`,
      text: l ? `${l.state}${l.endpoint ? ` ${l.endpoint}` : ''}${l.failures ? `, ${l.failures} failures` : ''}` : 'no link',
    }));
    if (l && l.state !== 'connected' && l.last_error) row.append(el('span', { class: 'link-error', text: l.last_error }));
  }
  if (node.sessions !== undefined) row.append(el('span', { class: 'node-extra', text: `${node.sessions} sessions` }));
  const item = el('li', {
    class: 'node',
    'data-id': node.id,
    'data-kind': node.kind,
    'data-status': node.status,
    'data-restarts': node.restarts,
  }, row);
  if (node.kind === 'link' && controller) item.dataset.controller = controller;
  if (node.last_failure) {
    item.dataset.failed = 'true';
    item.append(el('div', {
      class: 'failure',
      'data-testid': 'failure',
      text: `last failure ${failureTime(node.last_failure.at)}: ${node.last_failure.reason}`,
    }));
  }
  const children = node.children || [];
  if (children.length) {
    const own = node.kind === 'controller' ? node.id.replace(/^controller:/, '') : controller;
    const gates = children.filter((c) => c.kind === 'gate');
    const quiet = gates.length > TREE_GATES_LISTED
      ? gates.filter((g) => g.status === 'running' && !g.restarts && !g.last_failure) : [];
    const shown = children.filter((c) => !quiet.includes(c));
    const list = el('ul', {}, ...shown.map((c) => treeNode(c, own)));
    if (quiet.length) {
      list.append(el('li', { class: 'node node-summary' },
        el('div', { class: 'node-row' }, el('span', { class: 'muted', text: `${quiet.length} more gates, running, no restarts` }))));
    }
    item.append(list);
  }
  return item;
}

function failureTime(at) {
  const t = Date.parse(at || '');
  return Number.isFinite(t) ? `at ${clock(t, false)}` : '';
}

/** What an event says, in a few words. */
export function describeEvent(ev) {
  switch (ev.kind) {
    case 'state_changed': {
      const partWay = ['opening', 'closing', 'stopped'].includes(ev.state);
      const pos = partWay && ev.position !== null && ev.position !== undefined ? ` (${ev.position}%)` : '';
      return `${ev.from} → ${ev.state}${pos}${ev.state === 'fault' && ev.fault_code ? ` code ${ev.fault_code}` : ''}`;
    }
    case 'command_finished':
      return `${ev.action}: ${ev.status}${ev.reason ? ` (${ev.reason})` : ''}`;
    case 'obstruction':
      return ev.obstructed ? 'obstructed' : 'obstruction cleared';
    case 'auto_close_warning':
      return `auto-close in ${duration(ev.closes_in_ms)}`;
    case 'left_open':
      return `left open for ${duration(ev.open_for_ms)}`;
    case 'locked_out':
      return 'locked out';
    case 'unlocked':
      return 'unlocked';
    case 'held_open':
      return 'held open';
    case 'released':
      return 'released';
    case 'maintenance_due':
      return 'maintenance due';
    case 'maintenance_overdue':
      return 'maintenance overdue';
    default:
      return ev.kind;
  }
}

function eventTone(ev) {
  if (ev.kind === 'command_finished') return ev.status === 'completed' ? 'ok' : 'bad';
  if (ev.kind === 'state_changed') return stateTone(ev.state);
  if (ev.kind === 'obstruction' && ev.obstructed) return 'bad';
  if (ev.kind === 'maintenance_overdue') return 'bad';
  return 'unknown';
}

/** The newest events, once each, newest first. */
export class Feed {
  constructor(container, limit, isMine) {
    this.container = container;
    this.limit = limit;
    this.isMine = isMine;
    this.items = [];
    this.keys = new Set();
    this.dirty = false;
  }

  /** Adds one event; false when it was already there (or is too old to be shown). */
  add(ev) {
    const key = `${ev.gate}#${ev.seq}`;
    if (this.keys.has(key)) return false;
    const full = this.items.length >= this.limit;
    if (full && compare(ev, this.items[this.items.length - 1]) > 0) return false;
    // Sorted newest first; most events belong at the very front.
    let i = 0;
    while (i < this.items.length && compare(ev, this.items[i]) > 0) i += 1;
    this.items.splice(i, 0, ev);
    this.keys.add(key);
    while (this.items.length > this.limit) {
      const old = this.items.pop();
      this.keys.delete(`${old.gate}#${old.seq}`);
    }
    this.dirty = true;
    return true;
  }

  clear() {
    this.items = [];
    this.keys.clear();
    this.dirty = true;
  }

  render() {
    if (!this.dirty) return;
    this.dirty = false;
    this.container.replaceChildren(...this.items.map((ev) => {
      const cause = ev.cause === 'local' || ev.cause === 'system'
        ? ev.cause
        : this.isMine(ev.cause) ? `you ${ev.cause.slice(0, 8)}` : `cmd ${String(ev.cause).slice(0, 8)}`;
      return el('li', { class: `ev ev-${eventTone(ev)}`, 'data-key': `${ev.gate}#${ev.seq}` },
        el('time', { class: 'ev-time', datetime: new Date(ev.at_ms).toISOString(), text: clock(ev.at_ms) }),
        el('span', { class: 'ev-gate', text: ev.gate }),
        el('span', { class: 'ev-seq', text: `#${ev.seq}` }),
        el('span', { class: 'ev-text' },
          el('span', { class: 'ev-what', text: describeEvent(ev) }),
          el('span', { class: 'ev-cause', text: cause })));
    }));
  }
}

/** Newest first: later time first, then the higher seq of the same gate. */
function compare(a, b) {
  if (a.at_ms !== b.at_ms) return b.at_ms - a.at_ms;
  if (a.gate !== b.gate) return a.gate < b.gate ? -1 : 1;
  return b.seq - a.seq;
}

/** Chart geometry (SVG user units; the SVG scales to its box). */
const W = 320;
const PAD_L = 34;
const PAD_R = 8;
const RTT_TOP = 18;
const RTT_H = 78;
const RATE_TOP = 128;
const RATE_H = 52;
const H = 200;
/** Round trip axis: 1 ms … 100 s, logarithmic. */
const RTT_MIN_MS = 1;
const RTT_MAX_MS = 100000;

/**
 * Draws the chart: command round trips (to `accepted` and to the terminal ack, log scale)
 * and events per second, over `windowMs` ending at `now`.
 */
export function drawChart(container, { now, windowMs, rtts, rate, bucketMs }) {
  const x = (t) => PAD_L + ((t - (now - windowMs)) / windowMs) * (W - PAD_L - PAD_R);
  const yRtt = (ms) => {
    const v = Math.min(Math.max(ms, RTT_MIN_MS), RTT_MAX_MS);
    const f = (Math.log10(v) - Math.log10(RTT_MIN_MS)) / (Math.log10(RTT_MAX_MS) - Math.log10(RTT_MIN_MS));
    return RTT_TOP + RTT_H * (1 - f);
  };
  const parts = [];
  parts.push(svg('text', { x: PAD_L, y: 11, class: 'chart-title' }, 'command round trip'));
  parts.push(svg('circle', { cx: W - 128, cy: 8, r: 3, class: 'pt-accepted' }));
  parts.push(svg('text', { x: W - 122, y: 11, class: 'chart-legend' }, 'accepted'));
  parts.push(svg('circle', { cx: W - 68, cy: 8, r: 3, class: 'pt-done' }));
  parts.push(svg('text', { x: W - 62, y: 11, class: 'chart-legend' }, 'outcome'));
  for (const [ms, label] of [[1, '1ms'], [10, '10ms'], [100, '0.1s'], [1000, '1s'], [10000, '10s'], [100000, '100s']]) {
    const y = yRtt(ms);
    parts.push(svg('line', { x1: PAD_L, x2: W - PAD_R, y1: y, y2: y, class: 'grid' }));
    parts.push(svg('text', { x: PAD_L - 4, y: y + 3, class: 'axis', 'text-anchor': 'end' }, label));
  }
  for (const r of rtts) {
    if (r.at < now - windowMs) continue;
    const cx = x(r.at);
    if (r.acceptedMs !== null && r.acceptedMs !== undefined) {
      parts.push(svg('circle', { cx, cy: yRtt(r.acceptedMs), r: 2.6, class: 'pt-accepted' },
        svg('title', {}, `${r.gate} ${r.action}: accepted in ${duration(r.acceptedMs)}`)));
    }
    if (r.doneMs !== null && r.doneMs !== undefined) {
      parts.push(svg('circle', { cx, cy: yRtt(r.doneMs), r: 2.6, class: r.ok ? 'pt-done' : 'pt-bad' },
        svg('title', {}, `${r.gate} ${r.action}: ${r.status} in ${duration(r.doneMs)}`)));
    }
  }
  // Events per second, one bar per bucket.
  const max = Math.max(1, ...rate.map((b) => b.perSecond));
  const top = niceCeil(max);
  parts.push(svg('text', { x: PAD_L, y: RATE_TOP - 8, class: 'chart-title' }, 'events per second'));
  for (const v of [0, top / 2, top]) {
    const y = RATE_TOP + RATE_H * (1 - v / top);
    parts.push(svg('line', { x1: PAD_L, x2: W - PAD_R, y1: y, y2: y, class: 'grid' }));
    parts.push(svg('text', { x: PAD_L - 4, y: y + 3, class: 'axis', 'text-anchor': 'end' }, fmtRate(v)));
  }
  const bw = Math.max(1, x(bucketMs) - x(0) - 0.6);
  for (const b of rate) {
    if (b.perSecond <= 0) continue;
    const h = RATE_H * (b.perSecond / top);
    parts.push(svg('rect', { x: x(b.start), y: RATE_TOP + RATE_H - h, width: bw, height: h, class: 'bar' },
      svg('title', {}, `${clock(b.start, false)}: ${fmtRate(b.perSecond)} events/s`)));
  }
  // Time axis.
  for (let m = 0; m <= windowMs / 60000; m += 1) {
    const t = now - m * 60000;
    const tx = x(t);
    parts.push(svg('text', { x: tx, y: H - 4, class: 'axis', 'text-anchor': m === 0 ? 'end' : 'middle' },
      m === 0 ? 'now' : `-${m}m`));
  }
  const root = svg('svg', {
    viewBox: `0 0 ${W} ${H}`,
    class: 'chart-svg',
    role: 'img',
    'aria-label': `Command round trips and event rate over the last ${Math.round(windowMs / 60000)} minutes`,
  }, ...parts);
  container.replaceChildren(root);
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmtRate(v) {
  if (v === 0) return '0';
  if (v < 1) return v.toFixed(1);
  return String(Math.round(v * 10) / 10);
}
