// The reports page (admin only, like the reports API): ask for a report of gate events, the
// audit log or maintenance records over a period, for one site or the fleet, as CSV or PDF;
// follow the queued and running ones until they are done or failed; download a done one.
// The download endpoint takes the bearer token only, so the file is fetched by api.js and
// handed to the browser as an object URL.

import { bytes, count, dateTime, el, offerDownload } from './views.js';

const $ = (id) => document.getElementById(id);

/** While a report is queued or running, it is read again this often. */
const POLL_MS = 1000;
/** At most this many unfinished reports are read per round (the newest). */
const POLL_MAX = 10;
/** The period a new report covers by default, ending now. */
const DEFAULT_SPAN_MS = 7 * 24 * 3600 * 1000;

const KINDS = { events: 'Gate events', audit: 'Audit log', maintenance: 'Maintenance records' };
const UNFINISHED = new Set(['queued', 'running']);

/** `YYYY-MM-DDTHH:MM` in local time, the value of a `datetime-local` input. */
function localInput(ms) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}T${two(d.getHours())}:${two(d.getMinutes())}`;
}

export class ReportsPage {
  /** @param {import('./api.js').Api} api */
  constructor(api) {
    this.api = api;
    this.generation = 0;
    this.pollTimer = null;
    /** Object URLs of downloaded files, revoked when the session ends. */
    this.urls = [];
    this.reset();
    $('report-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.request();
    });
    $('reports-refresh').addEventListener('click', () => this.load(false));
    $('reports-more').addEventListener('click', () => this.load(true));
  }

  /** Everything forgotten (sign-out). */
  reset() {
    this.generation += 1;
    this.active = false;
    clearTimeout(this.pollTimer);
    this.pollTimer = null;
    /** report id → {report, row, file: {link} once downloaded}, in the order shown */
    this.rows = new Map();
    this.next = null;
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
    $('report-rows').replaceChildren();
    $('report-site').replaceChildren();
    $('report-result').textContent = '';
    $('reports-empty').hidden = true;
    $('reports-more').hidden = true;
    $('report-from').value = '';
    $('report-to').value = '';
  }

  /** The page is shown: the sites to choose from and the list, read afresh. */
  async show() {
    this.active = true;
    if (!$('report-from').value || !$('report-to').value) {
      // Up to the next whole minute: the inputs count minutes, and now must be inside.
      const to = Math.ceil(Date.now() / 60000) * 60000;
      $('report-to').value = localInput(to);
      $('report-from').value = localInput(to - DEFAULT_SPAN_MS);
    }
    await this.api.learnNames();
    await Promise.all([this.loadSites(), this.load(false)]);
  }

  /** The page is left: no more polling (the list is read again when it is shown). */
  hide() {
    this.active = false;
    clearTimeout(this.pollTimer);
    this.pollTimer = null;
  }

  async loadSites() {
    const generation = this.generation;
    const select = $('report-site');
    const kept = select.value;
    let sites = [];
    try {
      const body = await this.api.sites();
      sites = (body && body.sites) || [];
    } catch {
      // The whole fleet can still be asked for.
    }
    if (generation !== this.generation) return;
    select.replaceChildren(el('option', { value: '', text: 'Whole fleet' }),
      ...sites.map((s) => el('option', { value: s.id, text: s.name && s.name !== s.id ? `${s.name} (${s.id})` : s.id })));
    if (kept && sites.some((s) => s.id === kept)) select.value = kept;
  }

  /** The first page of reports, or with `more` the next one. */
  async load(more) {
    const generation = this.generation;
    let body;
    try {
      body = await this.api.reports(more ? this.next : null);
    } catch (e) {
      if (generation !== this.generation) return;
      $('reports-empty').hidden = false;
      $('reports-empty').textContent = e.status === 403
        ? 'Reports are for admins.'
        : `Cannot list the reports: ${e.message}`;
      return;
    }
    if (generation !== this.generation) return;
    const reports = (body && body.reports) || [];
    if (!more) {
      // Downloaded files stay offered across a refresh.
      const files = new Map([...this.rows].filter(([, v]) => v.file).map(([id, v]) => [id, v.file]));
      this.rows = new Map();
      $('report-rows').replaceChildren();
      for (const r of reports) this.put(r, files.get(r.id));
    } else {
      for (const r of reports) if (!this.rows.has(r.id)) this.put(r);
    }
    this.next = (body && body.next) || null;
    $('reports-more').hidden = !this.next;
    $('reports-empty').hidden = this.rows.size > 0;
    $('reports-empty').textContent = 'No reports yet.';
    this.schedulePoll();
  }

  /** Shows `r`: its row replaced in place, or a new one (at the top with `first`). */
  put(r, file = null, first = false) {
    const known = this.rows.get(r.id);
    const entry = { report: r, file: file || (known && known.file) || null, row: null };
    entry.row = this.row(entry);
    if (known) {
      known.row.replaceWith(entry.row);
      this.rows.set(r.id, entry);
    } else if (first) {
      $('report-rows').prepend(entry.row);
      this.rows = new Map([[r.id, entry], ...this.rows]);
    } else {
      $('report-rows').append(entry.row);
      this.rows.set(r.id, entry);
    }
  }

  row(entry) {
    const r = entry.report;
    const status = el('td', { class: 'report-status' },
      el('span', { class: `badge badge-${r.status === 'done' ? 'ok' : r.status === 'failed' ? 'bad' : 'moving'}`, 'data-testid': 'report-status', text: r.status }));
    if (UNFINISHED.has(r.status)) {
      status.append(
        el('progress', { max: 100, value: r.progress, 'data-testid': 'report-progress', 'aria-label': `Progress of the report, ${r.progress} percent` }),
        el('span', { class: 'meter-text', text: `${r.progress}%` }));
    }
    if (r.status === 'failed' && r.error) status.append(el('span', { class: 'cell-sub bad', text: r.error }));
    const file = el('td', { class: 'report-file' });
    if (r.status === 'done' && r.download) {
      if (entry.file) {
        file.append(entry.file.link);
      } else {
        const button = el('button', {
          type: 'button',
          class: 'btn btn-small',
          'data-testid': 'report-download',
          text: `Download ${r.format.toUpperCase()}`,
          'aria-label': `Download ${r.file_name}`,
        });
        button.addEventListener('click', () => this.download(r, entry, button));
        file.append(button);
      }
    }
    return el('tr', { 'data-testid': 'report-row', 'data-report': r.id, 'data-status': r.status },
      el('td', { class: 'nowrap' }, dateTime(r.created_at_ms), el('span', { class: 'cell-sub', text: this.api.actorName(r.requested_by) })),
      el('td', {}, `${KINDS[r.kind] || r.kind} · ${r.format.toUpperCase()}`,
        el('span', { class: 'cell-sub', text: r.site ? `site ${r.site}` : 'whole fleet' })),
      el('td', { class: 'nowrap' }, dateTime(r.from_ms), el('span', { class: 'cell-sub', text: `to ${dateTime(r.to_ms)}` })),
      status,
      el('td', { class: 'num', text: r.status === 'done' ? count(r.rows) : '' }),
      el('td', { class: 'num', text: bytes(r.size) }),
      file);
  }

  async download(r, entry, button) {
    const generation = this.generation;
    button.disabled = true;
    button.textContent = 'Downloading…';
    let file;
    try {
      file = await this.api.file(r.download);
    } catch (e) {
      if (generation !== this.generation) return;
      button.disabled = false;
      button.textContent = `Download ${r.format.toUpperCase()}`;
      const cell = button.parentElement;
      cell.querySelector('.cell-sub')?.remove();
      cell.append(el('span', { class: 'cell-sub bad', 'data-testid': 'report-download-error', text: `Cannot download: ${e.message}` }));
      return;
    }
    if (generation !== this.generation) return;
    const { link, url } = offerDownload(file, file.blob ? file.name || r.file_name : r.file_name, { 'data-testid': 'report-file' });
    if (url) this.urls.push(url);
    entry.file = { link };
    button.replaceWith(link);
    link.click();
  }

  async request() {
    const result = $('report-result');
    const from = new Date($('report-from').value).getTime();
    const to = new Date($('report-to').value).getTime();
    if (!Number.isFinite(from) || !Number.isFinite(to)) {
      result.textContent = 'Give the period: from and to.';
      result.dataset.tone = 'bad';
      return;
    }
    if (to <= from) {
      result.textContent = 'The period must end after it starts.';
      result.dataset.tone = 'bad';
      return;
    }
    const spec = {
      kind: $('report-kind').value,
      from_ms: from,
      to_ms: to,
      format: $('report-format').value,
    };
    if ($('report-site').value) spec.site = $('report-site').value;
    const button = $('report-form').querySelector('button[type=submit]');
    button.disabled = true;
    result.textContent = '';
    delete result.dataset.report;
    const generation = this.generation;
    try {
      const r = await this.api.requestReport(spec);
      if (generation !== this.generation) return;
      result.textContent = 'Requested; it is generated in the background.';
      result.dataset.tone = 'ok';
      result.dataset.report = r.id;
      this.put(r, null, true);
      $('reports-empty').hidden = true;
      this.schedulePoll();
    } catch (e) {
      if (generation !== this.generation) return;
      result.textContent = `Not requested: ${e.message}`;
      result.dataset.tone = 'bad';
    } finally {
      button.disabled = false;
    }
  }

  schedulePoll() {
    clearTimeout(this.pollTimer);
    this.pollTimer = null;
    if (!this.active) return;
    if (![...this.rows.values()].some((e) => UNFINISHED.has(e.report.status))) return;
    this.pollTimer = setTimeout(() => this.poll(), POLL_MS);
  }

  /** Reads each unfinished report again (the newest first, a bounded number). */
  async poll() {
    const generation = this.generation;
    const ids = [...this.rows.values()].filter((e) => UNFINISHED.has(e.report.status))
      .slice(0, POLL_MAX).map((e) => e.report.id);
    for (const id of ids) {
      try {
        const r = await this.api.report(id);
        if (generation !== this.generation) return;
        this.put(r);
      } catch (e) {
        if (generation !== this.generation) return;
        if (e.status === 404) {
          this.rows.get(id)?.row.remove();
          this.rows.delete(id);
        }
        // Anything else: tried again next round.
      }
    }
    if (generation === this.generation) this.schedulePoll();
  }
}
