// The maintenance page: where each gate stands against the plans that apply to it (most
// urgent first, with cycles and days against each plan's interval), the plans, and one gate's
// records. Admins and operators open a record (with lockout: the gate is locked out through
// the one command path, like the Lockout button) and complete it (which unlocks the gate and
// restarts the plan's count); they may also add a plan. Viewers read. The rules (which plans
// apply, when a gate is due) are the server's: this page only shows what it answers.

import { count, dateTime, el, levelBadge, offerDownload, plural } from './views.js';

const $ = (id) => document.getElementById(id);

/** Who writes maintenance (CONTRACTS.md, "Roles"); viewers read. */
const STAFF = new Set(['admin', 'operator']);
/** The server's limits on a record's text (`gatehouse_actors::maintenance`). */
const MAX_PARTS = 50;
const MAX_PART = 200;

/** Lines of a textarea as a list, blanks dropped. */
function lines(text) {
  return text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
}

/** What went wrong with a call, for a person. */
function explain(e) {
  if (e.status === 403) return `Not allowed: ${e.message}`;
  if (e.status === 0) return `The server cannot be reached (${e.message}).`;
  return e.message;
}

/** `n cycles left` / `n cycles over`, or days alike. */
function leftText(left, unit) {
  if (left === null || left === undefined) return '';
  return left >= 0 ? `${plural(left, unit)} left` : `${plural(-left, unit)} over`;
}

/** A cell with a bar of `done` out of `every` and the words under it. */
function meter(done, every, left, unit, label) {
  if (!every) return el('td', { class: 'muted', text: '—' });
  if (done === null || done === undefined) {
    return el('td', { class: 'muted', text: `every ${plural(every, unit)}; counter unknown` });
  }
  return el('td', { class: 'meter' },
    el('progress', {
      max: every,
      value: Math.min(done, every),
      class: left !== null && left !== undefined && left <= 0 ? 'over' : '',
      'aria-label': `${label}: ${count(done)} of ${count(every)}`,
    }),
    el('span', { class: 'meter-text', text: `${count(done)} / ${count(every)}` }),
    el('span', { class: 'meter-left', text: leftText(left, unit) }));
}

export class MaintenancePage {
  /** @param {import('./api.js').Api} api */
  constructor(api) {
    this.api = api;
    this.generation = 0;
    /** Object URLs of downloaded attachments, revoked when the session ends. */
    this.urls = [];
    this.reset();
    $('maintenance-refresh').addEventListener('click', () => this.refresh());
    $('mstatus-due').addEventListener('change', () => this.loadStatus());
    $('mrec-gate').addEventListener('change', () => this.selectGate($('mrec-gate').value));
    $('mrec-more').addEventListener('click', () => this.loadRecords(true));
    $('mrec-open').addEventListener('submit', (e) => {
      e.preventDefault();
      this.openRecord();
    });
    // Locked out for work to come, or recorded as done: not both (the server refuses both).
    $('mrec-lockout').addEventListener('change', () => {
      if ($('mrec-lockout').checked) $('mrec-done').checked = false;
      this.openLabel();
    });
    $('mrec-done').addEventListener('change', () => {
      if ($('mrec-done').checked) $('mrec-lockout').checked = false;
      this.openLabel();
    });
    $('mplan-new').addEventListener('submit', (e) => {
      e.preventDefault();
      this.createPlan();
    });
  }

  /** Everything forgotten (sign-out). */
  reset() {
    this.generation += 1;
    this.staff = false;
    /** The gate whose records are shown. */
    this.gate = null;
    /** The `before` cursor of the next page of records. */
    this.next = null;
    /** plan id → plan, for the intervals behind the status' figures. */
    this.plansById = new Map();
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
    for (const id of ['mstatus-rows', 'mplan-rows', 'mrec-list', 'mrec-gate', 'mrec-plan', 'mplan-scope']) {
      $(id).replaceChildren();
    }
    for (const id of ['mstatus-note', 'mrec-result', 'mplan-result']) $(id).textContent = '';
    $('mrec-more').hidden = true;
    $('mrec-open').reset();
    $('mplan-new').reset();
    $('mplan-new-box').open = false;
  }

  /** The page is shown: forms for staff only, then everything read afresh. */
  async show(role) {
    this.staff = STAFF.has(role);
    $('mrec-open').hidden = !this.staff;
    $('mrec-readonly').hidden = this.staff;
    $('mplan-new-box').hidden = !this.staff;
    this.openLabel();
    await this.api.learnNames();
    await this.refresh();
  }

  async refresh() {
    const generation = this.generation;
    // The plans first: the status shows progress against their intervals.
    await Promise.all([this.loadGates(), this.loadPlans()]);
    if (generation !== this.generation) return;
    await Promise.all([this.loadStatus(), this.loadRecords(false), this.loadGatePlans()]);
  }

  // --- Status ------------------------------------------------------------------------------

  async loadStatus() {
    const generation = this.generation;
    const dueOnly = $('mstatus-due').checked;
    const note = $('mstatus-note');
    let body;
    try {
      body = await this.api.maintenanceStatus(dueOnly);
    } catch (e) {
      if (generation !== this.generation) return;
      note.textContent = `Cannot read the maintenance status: ${explain(e)}`;
      note.dataset.tone = 'bad';
      return;
    }
    if (generation !== this.generation) return;
    const entries = (body && body.entries) || [];
    const urgent = entries.filter((e) => e.level !== 'ok').length;
    note.dataset.tone = urgent ? 'bad' : '';
    if (entries.length === 0) {
      note.textContent = dueOnly ? 'Nothing is due.' : 'No gate has a maintenance plan yet.';
    } else {
      note.textContent = urgent ? `${plural(urgent, 'plan')} due or overdue.` : 'Nothing is due.';
    }
    $('mstatus-rows').replaceChildren(...entries.map((s) => this.statusRow(s)));
  }

  statusRow(s) {
    const plan = this.plansById.get(s.plan) || {};
    const records = el('button', {
      type: 'button',
      class: 'btn btn-small',
      'data-testid': 'status-records',
      text: 'Records',
      'aria-label': `Records of ${s.gate}`,
    });
    records.addEventListener('click', () => {
      this.selectGate(s.gate);
      $('mrec-title').scrollIntoView({ block: 'start' });
    });
    return el('tr', {
      'data-testid': 'status-row', 'data-gate': s.gate, 'data-plan': s.plan, 'data-level': s.level,
      class: `level-${s.level}`,
    },
    el('td', {}, el('span', { class: 'mono strong', text: s.gate }), el('span', { class: 'cell-sub', text: s.site })),
    el('td', { text: s.title }),
    el('td', {}, levelBadge(s.level)),
    meter(s.cycles_since, plan.every_cycles, s.cycles_left, 'cycle', 'Cycles since the last service'),
    meter(s.days_since, plan.every_days, s.days_left, 'day', 'Days since the last service'),
    el('td', { class: 'nowrap', text: dateTime(s.due_by_ms) }),
    el('td', {}, records));
  }

  // --- Plans -------------------------------------------------------------------------------

  async loadPlans() {
    const generation = this.generation;
    let body;
    try {
      body = await this.api.plans();
    } catch (e) {
      if (generation !== this.generation) return;
      $('mplan-rows').replaceChildren(el('tr', {}, el('td', { colspan: 4, class: 'muted', text: `Cannot read the plans: ${explain(e)}` })));
      return;
    }
    if (generation !== this.generation) return;
    const plans = (body && body.plans) || [];
    this.plansById = new Map(plans.map((p) => [p.id, p]));
    if (plans.length === 0) {
      $('mplan-rows').replaceChildren(el('tr', {}, el('td', { colspan: 4, class: 'muted', text: 'No plans yet.' })));
      return;
    }
    $('mplan-rows').replaceChildren(...plans.map((p) => {
      const every = [];
      const warn = [];
      if (p.every_cycles) {
        every.push(plural(p.every_cycles, 'cycle'));
        warn.push(`${plural(p.warn_cycles, 'cycle')} before`);
      }
      if (p.every_days) {
        every.push(plural(p.every_days, 'day'));
        warn.push(`${plural(p.warn_days, 'day')} before`);
      }
      return el('tr', { 'data-testid': 'plan-row', 'data-plan': p.id },
        el('td', { text: p.title }),
        el('td', {}, p.gate
          ? el('span', {}, 'gate ', el('span', { class: 'mono', text: p.gate }))
          : el('span', {}, 'site ', el('span', { class: 'mono', text: p.site }), el('span', { class: 'cell-sub', text: 'its gates without a plan of their own' }))),
        el('td', { text: every.join(' or ') }),
        el('td', { text: warn.join(', ') }));
    }));
  }

  async createPlan() {
    const result = $('mplan-result');
    const scope = $('mplan-scope').value;
    const number = (id) => {
      const v = $(id).value.trim();
      return v === '' ? null : Number(v);
    };
    const plan = {
      title: $('mplan-title-in').value.trim(),
      every_cycles: number('mplan-cycles'),
      every_days: number('mplan-days'),
      warn_cycles: number('mplan-warn-cycles') || 0,
      warn_days: number('mplan-warn-days') || 0,
    };
    if (scope.startsWith('gate:')) plan.gate = scope.slice(5);
    else if (scope.startsWith('site:')) plan.site = scope.slice(5);
    if (plan.every_cycles === null && plan.every_days === null) {
      result.textContent = 'A plan needs an interval in cycles, in days, or both.';
      result.dataset.tone = 'bad';
      return;
    }
    const button = $('mplan-new').querySelector('button[type=submit]');
    button.disabled = true;
    result.textContent = '';
    const generation = this.generation;
    try {
      const created = await this.api.createPlan(plan);
      if (generation !== this.generation) return;
      result.textContent = `Plan "${created.title}" created.`;
      result.dataset.tone = 'ok';
      $('mplan-new').reset();
    } catch (e) {
      if (generation !== this.generation) return;
      result.textContent = `Cannot create the plan: ${explain(e)}`;
      result.dataset.tone = 'bad';
      return;
    } finally {
      button.disabled = false;
    }
    await this.loadPlans();
    await Promise.all([this.loadStatus(), this.loadGatePlans()]);
  }

  // --- Gates -------------------------------------------------------------------------------

  /** The gate choice of the records panel and the scope choice of a new plan. */
  async loadGates() {
    const generation = this.generation;
    let body;
    try {
      body = await this.api.gates();
    } catch (e) {
      if (generation !== this.generation) return;
      $('mrec-result').textContent = `Cannot list the gates: ${explain(e)}`;
      return;
    }
    if (generation !== this.generation) return;
    const gates = ((body && body.gates) || []).slice().sort((a, b) => a.site.localeCompare(b.site) || a.id.localeCompare(b.id));
    const sites = [...new Set(gates.map((g) => g.site))];
    const select = $('mrec-gate');
    select.replaceChildren(...sites.map((site) => el('optgroup', { label: site },
      ...gates.filter((g) => g.site === site).map((g) => el('option', {
        value: g.id,
        text: g.name && g.name !== g.id ? `${g.id} · ${g.name}` : g.id,
      })))));
    if (!gates.some((g) => g.id === this.gate)) this.gate = gates.length ? gates[0].id : null;
    if (this.gate) select.value = this.gate;
    const scope = $('mplan-scope');
    const kept = scope.value;
    scope.replaceChildren(
      el('optgroup', { label: 'A gate' }, ...gates.map((g) => el('option', { value: `gate:${g.id}`, text: g.id }))),
      el('optgroup', { label: 'A site (its gates without a plan of their own)' },
        ...sites.map((s) => el('option', { value: `site:${s}`, text: s }))));
    if (kept) scope.value = kept;
    else if (this.gate) scope.value = `gate:${this.gate}`;
  }

  selectGate(gate) {
    if (!gate) return;
    this.gate = gate;
    $('mrec-gate').value = gate;
    $('mrec-result').textContent = '';
    this.loadRecords(false);
    this.loadGatePlans();
  }

  // --- Records -----------------------------------------------------------------------------

  /** The plans that apply to the selected gate, for a new record to answer. */
  async loadGatePlans() {
    const select = $('mrec-plan');
    const gate = this.gate;
    if (!gate) {
      select.replaceChildren(el('option', { value: '', text: 'No plan (other work)' }));
      return;
    }
    const generation = this.generation;
    let plans = [];
    try {
      const body = await this.api.plans(gate);
      plans = (body && body.plans) || [];
    } catch {
      // Work without a plan can still be recorded.
    }
    if (generation !== this.generation || gate !== this.gate) return;
    select.replaceChildren(
      ...plans.map((p) => el('option', { value: p.id, text: p.title })),
      el('option', { value: '', text: 'No plan (other work)' }));
  }

  async loadRecords(more) {
    const list = $('mrec-list');
    const gate = this.gate;
    if (!gate) {
      list.replaceChildren(el('li', { class: 'muted', text: 'No gates.' }));
      $('mrec-more').hidden = true;
      return;
    }
    const generation = this.generation;
    let body;
    try {
      body = await this.api.records(gate, more ? this.next : null);
    } catch (e) {
      if (generation !== this.generation || gate !== this.gate) return;
      list.replaceChildren(el('li', { class: 'muted', text: `Cannot read the records: ${explain(e)}` }));
      return;
    }
    if (generation !== this.generation || gate !== this.gate) return;
    // A record whose completion form is open keeps its item (and what was typed into it).
    const editing = new Map([...list.querySelectorAll('[data-testid="record"][data-status="open"]')]
      .filter((li) => li.querySelector('[data-testid="complete-form"]:not([hidden])'))
      .map((li) => [li.dataset.record, li]));
    const items = ((body && body.records) || []).map((r) => (r.status === 'open' && editing.get(r.id)) || this.recordItem(r));
    if (more) list.append(...items);
    else list.replaceChildren(...items);
    if (!more && items.length === 0) {
      list.replaceChildren(el('li', { class: 'muted', 'data-testid': 'records-empty', text: `No records for ${gate} yet.` }));
    }
    this.next = (body && body.next) || null;
    $('mrec-more').hidden = !this.next;
  }

  /** The submit button says what opening will do. */
  openLabel() {
    const button = $('mrec-open').querySelector('button[type=submit]');
    button.textContent = $('mrec-done').checked ? 'Record as completed'
      : $('mrec-lockout').checked ? 'Open record and lock out' : 'Open record';
  }

  async openRecord() {
    const result = $('mrec-result');
    const gate = this.gate;
    if (!gate) return;
    const parts = lines($('mrec-parts').value);
    const bad = this.partsProblem(parts);
    if (bad) {
      result.textContent = bad;
      result.dataset.tone = 'bad';
      return;
    }
    const plan = $('mrec-plan').value || null;
    const lockout = $('mrec-lockout').checked;
    const completed = $('mrec-done').checked;
    const request = {
      gate,
      plan,
      lockout,
      completed,
      summary: $('mrec-summary').value.trim(),
      parts,
      notes: $('mrec-notes').value.trim(),
    };
    const button = $('mrec-open').querySelector('button[type=submit]');
    button.disabled = true;
    result.textContent = lockout ? `Locking ${gate} out…` : 'Saving…';
    result.dataset.tone = '';
    const generation = this.generation;
    let answer;
    try {
      answer = await this.api.openRecord(request);
    } catch (e) {
      if (generation !== this.generation) return;
      result.textContent = e.code === 'lockout_failed'
        ? `Not recorded: ${e.message}. Check the gate in the live view.`
        : `Not recorded: ${explain(e)}`;
      result.dataset.tone = 'bad';
      return;
    } finally {
      button.disabled = false;
    }
    if (generation !== this.generation) return;
    const r = answer.record;
    result.textContent = r.status === 'completed' ? `Recorded as completed on ${r.gate}.`
      : r.lockout ? `Record opened; ${r.gate} is locked out until it is completed.`
        : `Record opened on ${r.gate}.`;
    result.dataset.tone = 'ok';
    for (const id of ['mrec-summary', 'mrec-parts', 'mrec-notes']) $(id).value = '';
    if (r.gate === this.gate) {
      const list = $('mrec-list');
      const empty = list.querySelector('[data-testid="records-empty"]');
      if (empty) empty.remove();
      list.prepend(this.recordItem(r));
    }
    this.loadStatus();
  }

  partsProblem(parts) {
    if (parts.length > MAX_PARTS) return `At most ${MAX_PARTS} parts.`;
    if (parts.some((p) => p.length > MAX_PART)) return `Each part is at most ${MAX_PART} characters.`;
    return null;
  }

  /** One record, with its completion form for staff while it is open. */
  recordItem(r, note = null) {
    const plan = r.plan ? this.plansById.get(r.plan) : null;
    const open = r.status === 'open';
    const head = el('div', { class: 'record-head' },
      el('span', { class: `badge badge-${open ? 'moving' : 'ok'}`, 'data-testid': 'record-status', text: r.status }),
      el('span', { class: 'record-title', text: plan ? plan.title : r.plan ? 'A plan since deleted' : 'Other work' }),
      r.lockout ? el('span', {
        class: `chip ${open ? 'chip-moving' : 'chip-quiet'}`,
        text: open ? 'gate locked out' : 'was locked out',
      }) : null);
    const meta = [`opened ${dateTime(r.opened_at_ms)} by ${this.api.actorName(r.opened_by)}`];
    if (r.completed_at_ms) {
      meta.push(`completed ${dateTime(r.completed_at_ms)} by ${this.api.actorName(r.completed_by)}`);
      if (r.cycles_at !== null && r.cycles_at !== undefined) meta.push(`at ${plural(r.cycles_at, 'cycle')}`);
    }
    const item = el('li', { class: 'record', 'data-testid': 'record', 'data-record': r.id, 'data-status': r.status },
      head,
      el('p', { class: 'record-meta', text: meta.join(' · ') }),
      r.summary ? el('p', { class: 'record-summary', 'data-testid': 'record-summary', text: r.summary }) : null,
      r.parts.length ? el('p', { class: 'record-parts' }, el('span', { class: 'muted', text: 'Parts: ' }), r.parts.join(', ')) : null,
      r.notes ? el('p', { class: 'record-notes', text: r.notes }) : null);
    if (r.attachments && r.attachments.length) {
      item.append(el('ul', { class: 'attachments', 'aria-label': 'Attachments' },
        ...r.attachments.map((a) => el('li', {}, this.attachmentButton(a)))));
    }
    const result = el('p', { class: 'form-result', 'data-testid': 'record-result', role: 'status' });
    if (note) {
      result.textContent = note.text;
      result.dataset.tone = note.tone;
    }
    item.append(result);
    if (open && this.staff) item.append(this.completeForm(r, item, result));
    return item;
  }

  attachmentButton(a) {
    const button = el('button', { type: 'button', class: 'btn btn-small', text: `${a.name} (${a.content_type})` });
    button.addEventListener('click', async () => {
      button.disabled = true;
      try {
        const file = await this.api.file(a.download);
        const { link, url } = offerDownload(file, a.name);
        if (url) this.urls.push(url);
        button.replaceWith(link);
        link.click();
      } catch (e) {
        button.disabled = false;
        button.title = `Cannot download: ${e.message}`;
        button.textContent = `${a.name}: ${e.message}`;
      }
    });
    return button;
  }

  /** "Complete…" and the form behind it: the work as done, then the record is closed. */
  completeForm(r, item, result) {
    const id = `complete-${r.id}`;
    const summary = el('input', { id: `${id}-summary`, 'data-testid': 'complete-summary', maxlength: 4000 });
    summary.value = r.summary;
    const parts = el('textarea', { id: `${id}-parts`, 'data-testid': 'complete-parts', rows: 2 });
    parts.value = r.parts.join('\n');
    const notes = el('textarea', { id: `${id}-notes`, 'data-testid': 'complete-notes', rows: 2, maxlength: 4000 });
    notes.value = r.notes;
    const submit = el('button', {
      type: 'submit',
      class: 'btn btn-primary',
      'data-testid': 'record-complete',
      text: r.lockout ? 'Complete and unlock the gate' : 'Complete',
    });
    const form = el('form', { class: 'form complete-form', 'data-testid': 'complete-form', hidden: true },
      el('label', { for: summary.id, text: 'Work done' }), summary,
      el('label', { for: parts.id }, 'Parts ', el('span', { class: 'muted', text: '(one per line)' })), parts,
      el('label', { for: notes.id, text: 'Notes' }), notes,
      submit);
    const toggle = el('button', {
      type: 'button',
      class: 'btn btn-small',
      'data-testid': 'record-complete-open',
      'aria-expanded': 'false',
      text: 'Complete…',
    });
    toggle.addEventListener('click', () => {
      form.hidden = !form.hidden;
      toggle.setAttribute('aria-expanded', String(!form.hidden));
      if (!form.hidden) summary.focus();
    });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const work = { summary: summary.value.trim(), parts: lines(parts.value), notes: notes.value.trim() };
      const bad = this.partsProblem(work.parts);
      if (bad) {
        result.textContent = bad;
        result.dataset.tone = 'bad';
        return;
      }
      submit.disabled = true;
      result.textContent = r.lockout ? 'Completing and unlocking…' : 'Completing…';
      result.dataset.tone = '';
      const generation = this.generation;
      let answer;
      try {
        answer = await this.api.completeRecord(r.id, work);
      } catch (err) {
        if (generation !== this.generation) return;
        submit.disabled = false;
        result.textContent = `Not completed: ${explain(err)}`;
        result.dataset.tone = 'bad';
        return;
      }
      if (generation !== this.generation) return;
      const cmd = answer.command;
      let text = 'Completed; the plan counts again from now.';
      let tone = 'ok';
      if (cmd && cmd.status === 'completed') {
        text = `Completed; ${answer.record.gate} is unlocked.`;
      } else if (cmd) {
        text = `Completed, but ${answer.record.gate} was not unlocked (${cmd.status}${cmd.reason ? `: ${cmd.reason}` : ''}); unlock it from the live view.`;
        tone = 'bad';
      }
      item.replaceWith(this.recordItem(answer.record, { text, tone }));
      this.loadStatus();
    });
    return el('div', { class: 'complete' }, toggle, form);
  }
}
