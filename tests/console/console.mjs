// Drives the operator console (/console) in Debian's headless Chromium through playwright-core,
// against a running `gatehouse serve` and the `gatehouse-sim` behind it:
//
//   sign in → the gate grid shows the gate → `open` ends `completed` and the gate `open`
//   → the simulator refuses the controller for 4 s (`restart NAME 4000` on its control port)
//   → the controller's link turns `down` → it comes back `connected` → the supervision tree
//   shows the link's restart or its last failure
//   → Maintenance: a plan made for the gate, its status row, a record opened with lockout
//   (the live card shows it locked out) and completed (unlocked again)
//   → Reports: a CSV of gate events requested, followed to `done`, downloaded and read
//   → Forgot password: a viewer account (made over REST) asks for a link by email, the link
//   is taken from the `.eml` the file outbox wrote, its landing page sets a new password and
//   signs in; the viewer reads maintenance without its forms and has no Reports tab; log out,
//   sign in with the new password; the spent link is refused
//   → Invitation: an operator invited over REST lands on the console through the link's
//   fragment alone (no reload), sets a password and is signed in.
//
// Every wait is bounded and polls (no sleep-then-assert). A screenshot is saved at each step.
// Any console error or CSP violation in the page fails the run. Exit 0 on success, 1 on a
// failed check, 2 on bad arguments.
//
//   node console.mjs --url http://127.0.0.1:PORT --user NAME --password-file FILE \
//     --control HOST:PORT --controller NAME --gate GATEID --outbox DIR --artifacts DIR
//
// `--outbox` is the directory where the runtime's file outbox writes its `.eml` files
// (`<data dir>/outbox/` when `[mail]` names no SMTP server).
//
// tests/tests/console.rs runs it with `--flag=value` arguments.

import { existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'];
/** How long the login and the first rendering of the grid may take. */
const PAGE_LIMIT_MS = 20000;
/** The gate must come online (first poll) within this. */
const ONLINE_LIMIT_MS = 30000;
/** The simulator's gates take a few seconds to travel. */
const COMMAND_LIMIT_MS = 30000;
/** From the controller refusing connections to its link chip showing `down`. */
const LINK_DOWN_LIMIT_MS = 8000;
/** From `down` back to `connected` (the simulator refuses for 4 s, then backoff). */
const LINK_UP_LIMIT_MS = 30000;
/** The tree shows the link's restart or failure. */
const TREE_LIMIT_MS = 10000;
/** One control-port command's answer. */
const CONTROL_LIMIT_MS = 10000;
/** A maintenance call (status, a record opened with lockout, completed with unlock) shown. */
const MAINTENANCE_LIMIT_MS = 15000;
/** A report of a few minutes of two gates, from queued to done. */
const REPORT_LIMIT_MS = 30000;
/** From asking for a link to its `.eml` in the outbox (the notifier delivers every second). */
const MAIL_LIMIT_MS = 20000;
/** A download of a small file, from the click to the browser's download event. */
const DOWNLOAD_LIMIT_MS = 15000;
/** Poll interval of the bounded waits. */
const POLL_MS = 100;

const REQUIRED = ['url', 'user', 'password-file', 'control', 'controller', 'gate', 'outbox', 'artifacts'];

class CheckFailed extends Error {}

function usage(message) {
  console.error(`console.mjs: ${message}`);
  console.error(`usage: node console.mjs ${REQUIRED.map((f) => `--${f} VALUE`).join(' ')}`);
  process.exit(2);
}

/** `--flag value` and `--flag=value`, by hand. */
function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (!arg.startsWith('--')) usage(`unexpected argument ${JSON.stringify(arg)}`);
    const eq = arg.indexOf('=');
    let name;
    let value;
    if (eq >= 0) {
      name = arg.slice(2, eq);
      value = arg.slice(eq + 1);
    } else {
      name = arg.slice(2);
      if (i + 1 >= argv.length) usage(`--${name} needs a value`);
      i += 1;
      value = argv[i];
    }
    if (!REQUIRED.includes(name)) usage(`unknown flag --${name}`);
    out[name] = value;
  }
  for (const f of REQUIRED) if (out[f] === undefined || out[f] === '') usage(`--${f} is required`);
  return out;
}

const args = parseArgs(process.argv.slice(2));
const base = args.url.replace(/\/+$/, '');
const password = readFileSync(args['password-file'], 'utf8').replace(/\r?\n$/, '');
const artifacts = path.resolve(args.artifacts);
mkdirSync(artifacts, { recursive: true });
const startedAt = Date.now();

function log(message) {
  const t = ((Date.now() - startedAt) / 1000).toFixed(1).padStart(5);
  console.log(`[${t} s] ${message}`);
}

/**
 * Polls `probe` until `accept(value)` holds, at most `limitMs`; fails naming `what` and the
 * last value seen. The page's own errors fail it at once.
 */
async function until(what, limitMs, probe, accept = (v) => Boolean(v)) {
  const deadline = Date.now() + limitMs;
  let last;
  let lastError;
  for (;;) {
    checkPageErrors();
    try {
      last = await probe();
      lastError = undefined;
      if (accept(last)) return last;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() >= deadline) {
      const seen = lastError ? `error: ${lastError.message.split('\n')[0]}` : JSON.stringify(last);
      throw new CheckFailed(`${what}: not within ${limitMs / 1000} s (last seen: ${seen})`);
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/** One line-protocol command on the simulator's control port; resolves with its lines. */
function control(command) {
  const [host, port] = splitHostPort(args.control);
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ host, port });
    let buffer = '';
    const lines = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new CheckFailed(`control port ${args.control}: no answer to ${JSON.stringify(command)} within ${CONTROL_LIMIT_MS / 1000} s`));
    }, CONTROL_LIMIT_MS);
    const finish = (err, value) => {
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${command}\n`));
    socket.on('data', (chunk) => {
      buffer += chunk;
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl).replace(/\r$/, '');
        buffer = buffer.slice(nl + 1);
        if (line === 'ok') return finish(null, lines);
        if (line.startsWith('error')) return finish(new CheckFailed(`control port: ${command} → ${line}`));
        lines.push(line);
      }
    });
    socket.on('error', (e) => finish(new CheckFailed(`control port ${args.control}: ${e.message}`)));
    socket.on('close', () => finish(new CheckFailed(`control port closed before answering ${JSON.stringify(command)}`)));
  });
}

/** One REST call as `token`'s holder (the test's own setup: accounts the page then uses). */
async function rest(method, apiPath, body, token) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${base}${apiPath}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  return { status: response.status, json, text };
}

/** An admin's access token, by the login the page also uses. */
async function adminToken() {
  const r = await rest('POST', '/api/v1/auth/login', { username: args.user, password });
  if (r.status !== 200) throw new CheckFailed(`REST login as ${args.user}: ${r.status} ${r.text}`);
  return r.json.access_token;
}

/** The outbox's `.eml` files already taken by a step: each step waits for a new one. */
const mailTaken = new Set();

/**
 * A message's text as a reader sees it: each MIME part's body decoded by its
 * Content-Transfer-Encoding (lettre picks 7bit, quoted-printable or base64 by content).
 */
function mailText(raw) {
  const text = raw.replace(/\r\n/g, '\n');
  const bodies = [];
  // A part: its encoding header, the rest of its headers, a blank line, the body up to the
  // next boundary line.
  const part = /content-transfer-encoding:[ \t]*([\w-]+)[^\n]*\n(?:[^\n]+\n)*\n([\s\S]*?)(?=\n--|$)/gi;
  let m;
  while ((m = part.exec(text)) !== null) {
    const [, encoding, body] = m;
    if (encoding.toLowerCase() === 'base64') {
      bodies.push(Buffer.from(body.replace(/\s+/g, ''), 'base64').toString('utf8'));
    } else if (encoding.toLowerCase() === 'quoted-printable') {
      const bytes = body.replace(/=\n/g, '').replace(/=([0-9A-Fa-f]{2})/g, (_, h) => String.fromCharCode(parseInt(h, 16)));
      bodies.push(Buffer.from(bytes, 'latin1').toString('utf8'));
    } else {
      bodies.push(body);
    }
  }
  return bodies.length ? bodies.join('\n') : text;
}

/**
 * Waits for a new `.eml` in the outbox addressed to `recipient` that carries a console link
 * of `kind` (`invitation` or `password-reset`); returns the link's token.
 */
async function mailedToken(kind, recipient) {
  const pattern = new RegExp(`/console#${kind}=([^\\s"'<>&]+)`);
  const found = await until(`an email to ${recipient} with a ${kind} link in ${args.outbox}`, MAIL_LIMIT_MS, () => {
    if (!existsSync(args.outbox)) return null;
    for (const name of readdirSync(args.outbox).filter((n) => n.endsWith('.eml')).sort()) {
      if (mailTaken.has(name)) continue;
      const raw = readFileSync(path.join(args.outbox, name), 'utf8');
      const to = /^To:\s*(.*)$/im.exec(raw);
      if (!to || !to[1].includes(recipient)) continue;
      const link = pattern.exec(mailText(raw));
      if (link) return { name, token: decodeURIComponent(link[1]) };
    }
    return null;
  });
  mailTaken.add(found.name);
  log(`mail ${found.name}: ${kind} link for ${recipient} (token of ${found.token.length} characters)`);
  return found.token;
}

function splitHostPort(hostPort) {
  const i = hostPort.lastIndexOf(':');
  if (i <= 0) usage(`--control must be HOST:PORT, got ${hostPort}`);
  return [hostPort.slice(0, i).replace(/^\[|\]$/g, ''), Number(hostPort.slice(i + 1))];
}

// --- The page's own errors ---------------------------------------------------------------

const pageErrors = [];

/**
 * Failed loads a step expects, as `status path-part` → why. Chromium logs each answer of 400
 * and above as a console error; those named here are noted instead of failing the run.
 */
const expectedHttp = new Map();

/** Lets `status` on a URL containing `pathPart` through until the returned function is called. */
function expectHttp(status, pathPart, why) {
  const key = `${status} ${pathPart}`;
  expectedHttp.set(key, why);
  return () => expectedHttp.delete(key);
}

function expectedFailure(message) {
  const failed = /^Failed to load resource: the server responded with a status of (\d+)/.exec(message.text());
  if (!failed) return null;
  const url = (message.location() && message.location().url) || '';
  for (const [key, why] of expectedHttp) {
    const [status, pathPart] = key.split(' ');
    if (status === failed[1] && url.includes(pathPart)) return why;
  }
  return null;
}

function checkPageErrors() {
  if (pageErrors.length) {
    throw new CheckFailed(`the page reported ${pageErrors.length} error(s):\n  ${pageErrors.join('\n  ')}`);
  }
}

let browser;
let page;
let step = 'start';

async function shot(name) {
  const file = path.join(artifacts, name);
  await page.screenshot({ path: file, fullPage: true });
  log(`screenshot ${file}`);
}

async function main() {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, deviceScaleFactor: 1 });
  page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const why = expectedFailure(m);
    if (why) log(`expected: ${m.text()} (${why})`);
    else pageErrors.push(`console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => pageErrors.push(`uncaught: ${e.message}`));
  // CSP violations also fire this event in the page; forward them as console errors (this
  // script is injected by the browser's debugging protocol, which the CSP does not govern).
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`securitypolicyviolation: ${e.violatedDirective} ${e.blockedURI || 'inline'}`);
    });
  });
  page.on('response', (r) => {
    if (r.status() >= 400) log(`note: ${r.status()} for ${r.request().method()} ${r.url()}`);
  });

  const gate = page.locator(`[data-testid="gate-${args.gate}"]`);
  const state = gate.locator('[data-testid="state"]');
  const outcome = gate.locator('[data-testid="outcome"]');
  const link = page.locator(`[data-testid="link-${args.controller}"]`);

  step = '1 login';
  log(`open ${base}/ (redirects to /console)`);
  const response = await page.goto(`${base}/`, { waitUntil: 'load', timeout: PAGE_LIMIT_MS });
  if (!response || !response.url().endsWith('/console')) {
    throw new CheckFailed(`/ did not lead to /console (ended at ${response && response.url()})`);
  }
  const csp = response.headers()['content-security-policy'] || '';
  if (!csp.includes("script-src 'self'")) throw new CheckFailed(`no script-src 'self' CSP on /console: ${JSON.stringify(csp)}`);
  await page.locator('[data-testid="login-username"]').waitFor({ state: 'visible', timeout: PAGE_LIMIT_MS });
  await page.locator('[data-testid="login-username"]').fill(args.user);
  await page.locator('[data-testid="login-password"]').fill(password);
  await shot('01-login.png');
  await page.locator('[data-testid="login-submit"]').click();

  step = '2 gate grid';
  await gate.waitFor({ state: 'visible', timeout: PAGE_LIMIT_MS });
  await until('the live connection is up', PAGE_LIMIT_MS,
    () => page.locator('[data-testid="ws-status"]').getAttribute('data-state'), (s) => s === 'connected');
  const firstState = await until(`gate ${args.gate} is online`, ONLINE_LIMIT_MS,
    () => state.textContent(), (s) => s && !['offline', 'unknown'].includes(s.trim()));
  log(`gate ${args.gate} shows ${firstState.trim()}`);
  await shot('02-gates.png');

  step = '3 command';
  if (firstState.trim() !== 'closed') {
    // Left open (or part way) by an earlier run on the same simulator: close it first, so
    // that `open` really moves the gate.
    log(`closing ${args.gate} first`);
    await gate.locator('[data-testid="cmd-close"]').click();
    await waitOutcome(outcome, 'close');
    await until(`gate ${args.gate} closed`, COMMAND_LIMIT_MS, () => state.textContent(), (s) => s && s.trim() === 'closed');
  }
  const openButton = gate.locator('[data-testid="cmd-open"]');
  const label = await openButton.getAttribute('aria-label');
  if (!label || !/open/i.test(label)) throw new CheckFailed(`the open button has no accessible label (${label})`);
  await openButton.click();
  log('pressed open');
  await waitOutcome(outcome, 'open');
  await until(`gate ${args.gate} shows open`, COMMAND_LIMIT_MS, () => state.textContent(), (s) => s && s.trim() === 'open');
  log('open: completed, gate open');
  await until('the feed shows the command_finished event', 5000,
    () => page.locator('[data-testid="feed"]').textContent(), (t) => t && t.includes('open: completed'));
  await shot('03-command.png');

  step = '4 link down';
  await until(`link-${args.controller} is connected before the restart`, LINK_UP_LIMIT_MS,
    () => link.getAttribute('data-state'), (s) => s === 'connected');
  log(`control: restart ${args.controller} 4000`);
  await control(`restart ${args.controller} 4000`);
  const downAt = Date.now();
  await until(`link-${args.controller} turns down`, LINK_DOWN_LIMIT_MS,
    () => link.getAttribute('class'), (c) => c && c.split(/\s+/).includes('down'));
  const downState = await link.getAttribute('data-state');
  log(`link-${args.controller} down after ${Date.now() - downAt} ms (data-state=${downState})`);
  if (!['connecting', 'unreachable', 'restarting'].includes(downState)) {
    throw new CheckFailed(`link-${args.controller} is down with an unexpected data-state ${JSON.stringify(downState)}`);
  }
  await shot('04-link-down.png');

  step = '5 link recovered';
  await until(`link-${args.controller} back to connected`, LINK_UP_LIMIT_MS,
    async () => ({ state: await link.getAttribute('data-state'), cls: await link.getAttribute('class') }),
    (v) => v.state === 'connected' && !v.cls.split(/\s+/).includes('down'));
  log(`link-${args.controller} connected again ${Date.now() - downAt} ms after the restart`);
  await until(`gate ${args.gate} online again`, LINK_UP_LIMIT_MS, () => state.textContent(),
    (s) => s && !['offline', 'unknown'].includes(s.trim()));
  await shot('05-link-recovered.png');

  step = '6 tree';
  const tree = page.locator('[data-testid="tree"]');
  const linkNode = tree.locator(`li[data-kind="link"][data-controller="${args.controller}"]`);
  const seen = await until(`the tree shows a restart or a failure of ${args.controller}'s link`, TREE_LIMIT_MS,
    async () => ({
      restarts: Number(await linkNode.first().getAttribute('data-restarts')),
      failed: (await linkNode.first().getAttribute('data-failed')) === 'true',
    }),
    (v) => v.restarts > 0 || v.failed);
  log(`tree: link of ${args.controller} restarts=${seen.restarts} last_failure=${seen.failed}`);
  await tree.scrollIntoViewIfNeeded();
  await shot('06-tree.png');

  await maintenanceSteps(gate);
  await reportSteps();
  await passwordResetSteps();
  await invitationSteps();
  checkPageErrors();
}

/** The signed-in user's line in the top bar shows `text`. */
async function signedInAs(text) {
  await until(`signed in as ${text}`, PAGE_LIMIT_MS, () => page.locator('#who').textContent(),
    (t) => t && t.includes(text));
  await page.locator('[data-testid="tab-live"]').waitFor({ state: 'visible', timeout: PAGE_LIMIT_MS });
}

async function logOut() {
  await page.locator('[data-testid="logout"]').click();
  await page.locator('[data-testid="login-username"]').waitFor({ state: 'visible', timeout: PAGE_LIMIT_MS });
}

async function signIn(user, secret) {
  await page.locator('[data-testid="login-username"]').fill(user);
  await page.locator('[data-testid="login-password"]').fill(secret);
  await page.locator('[data-testid="login-submit"]').click();
}

/** A tab's visibility as the role sees it. */
async function tabVisible(name) {
  return page.locator(`[data-testid="tab-${name}"]`).isVisible();
}

async function maintenanceSteps(gate) {
  step = '7 maintenance plan and status';
  await page.locator('[data-testid="tab-maintenance"]').click();
  const view = page.locator('#maintenance-view');
  await view.waitFor({ state: 'visible', timeout: PAGE_LIMIT_MS });
  await page.locator('[data-testid="plan-new-open"]').click();
  const planForm = page.locator('[data-testid="plan-form"]');
  await planForm.waitFor({ state: 'visible', timeout: PAGE_LIMIT_MS });
  await until('the plan form offers the gate', PAGE_LIMIT_MS,
    () => page.locator(`[data-testid="plan-scope"] option[value="gate:${args.gate}"]`).count(), (n) => n === 1);
  await page.locator('[data-testid="plan-title"]').fill('Console test: springs and rollers');
  await page.locator('[data-testid="plan-scope"]').selectOption(`gate:${args.gate}`);
  await page.locator('[data-testid="plan-every-cycles"]').fill('1000');
  await page.locator('[data-testid="plan-warn-cycles"]').fill('100');
  await page.locator('[data-testid="plan-every-days"]').fill('90');
  await page.locator('[data-testid="plan-warn-days"]').fill('14');
  await page.locator('[data-testid="plan-create"]').click();
  await until('the plan is created', MAINTENANCE_LIMIT_MS,
    () => page.locator('[data-testid="plan-result"]').textContent(), (t) => t && t.includes('created'));
  const statusRow = page.locator(`[data-testid="status-row"][data-gate="${args.gate}"]`);
  await statusRow.first().waitFor({ state: 'visible', timeout: MAINTENANCE_LIMIT_MS });
  const level = await statusRow.first().getAttribute('data-level');
  const meter = statusRow.first().locator('td').nth(3);
  const cycles = `${await meter.locator('.meter-text').textContent()}, ${await meter.locator('.meter-left').textContent()}`;
  log(`maintenance status: ${args.gate} ${level}, cycles ${cycles}`);
  if (!['ok', 'due', 'overdue'].includes(level)) throw new CheckFailed(`status row level ${JSON.stringify(level)}`);
  if (!(await page.locator('[data-testid="plan-row"]').count())) throw new CheckFailed('the plans table is empty');
  await shot('07-maintenance.png');

  step = '8 maintenance record opened with lockout';
  await statusRow.first().locator('[data-testid="status-records"]').click();
  await until(`the records panel shows ${args.gate}`, PAGE_LIMIT_MS,
    () => page.locator('[data-testid="records-gate"]').inputValue(), (v) => v === args.gate);
  await until('the record form offers the plan', PAGE_LIMIT_MS,
    () => page.locator('[data-testid="record-plan"] option').first().textContent(),
    (t) => t && t.includes('Console test'));
  if (!(await page.locator('[data-testid="record-lockout"]').isChecked())) {
    throw new CheckFailed('lockout is not the default of a new record');
  }
  await page.locator('[data-testid="record-summary"]').fill('Replace both springs');
  await page.locator('[data-testid="record-parts"]').fill('torsion spring L\ntorsion spring R');
  await page.locator('[data-testid="record-notes"]').fill('Opened by the console test');
  await page.locator('[data-testid="record-open"]').click();
  await until('the record is opened and the gate locked out', MAINTENANCE_LIMIT_MS,
    () => page.locator('[data-testid="record-open-result"]').textContent(), (t) => t && t.includes('locked out'));
  const openRecord = page.locator('[data-testid="record"][data-status="open"]').first();
  await openRecord.waitFor({ state: 'visible', timeout: MAINTENANCE_LIMIT_MS });
  const recordId = await openRecord.getAttribute('data-record');
  log(`record ${recordId} open, ${args.gate} locked out`);
  await shot('08-record-open.png');
  // The live view shows the lockout (a command through the one command path, seen live).
  await page.locator('[data-testid="tab-live"]').click();
  await until(`${args.gate}'s card shows the lockout`, MAINTENANCE_LIMIT_MS,
    () => gate.locator('.flags').textContent(), (t) => t && t.includes('locked out'));
  await page.locator('[data-testid="tab-maintenance"]').click();

  step = '9 maintenance record completed';
  const record = page.locator(`[data-testid="record"][data-record="${recordId}"]`);
  await record.locator('[data-testid="record-complete-open"]').click();
  await record.locator('[data-testid="complete-notes"]').fill('Done by the console test; springs tensioned');
  await record.locator('[data-testid="record-complete"]').click();
  const done = page.locator(`[data-testid="record"][data-record="${recordId}"][data-status="completed"]`);
  await done.waitFor({ state: 'visible', timeout: MAINTENANCE_LIMIT_MS });
  const completed = await done.locator('[data-testid="record-result"]').textContent();
  if (!completed.includes('unlocked')) throw new CheckFailed(`completing did not unlock: ${JSON.stringify(completed)}`);
  log(`record ${recordId}: ${completed}`);
  await shot('09-record-completed.png');
  await page.locator('[data-testid="tab-live"]').click();
  await until(`${args.gate}'s card no longer shows the lockout`, MAINTENANCE_LIMIT_MS,
    () => gate.locator('.flags').textContent(), (t) => t !== null && !t.includes('locked out'));
}

async function reportSteps() {
  step = '10 report requested';
  await page.locator('[data-testid="tab-reports"]').click();
  await page.locator('#reports-view').waitFor({ state: 'visible', timeout: PAGE_LIMIT_MS });
  await until('the report form has a period', PAGE_LIMIT_MS,
    () => page.locator('[data-testid="report-to"]').inputValue(), (v) => Boolean(v));
  await page.locator('[data-testid="report-kind"]').selectOption('events');
  await page.locator('[data-testid="report-format"]').selectOption('csv');
  const result = page.locator('[data-testid="report-result"]');
  await page.locator('[data-testid="report-submit"]').click();
  await until('the report is requested', PAGE_LIMIT_MS, () => result.textContent(), (t) => t && t.startsWith('Requested'));
  const reportId = await result.getAttribute('data-report');
  const row = page.locator(`[data-testid="report-row"][data-report="${reportId}"]`);
  await row.waitFor({ state: 'visible', timeout: PAGE_LIMIT_MS });
  log(`report ${reportId} ${await row.getAttribute('data-status')}`);
  await shot('10-report-requested.png');

  step = '11 report done and downloaded';
  const seen = new Set();
  await until(`report ${reportId} is done`, REPORT_LIMIT_MS, async () => {
    const status = await row.getAttribute('data-status');
    seen.add(status);
    if (status === 'failed') throw new CheckFailed(`report ${reportId} failed: ${await row.textContent()}`);
    return status;
  }, (s) => s === 'done');
  log(`report ${reportId} went through ${[...seen].join(' → ')}`);
  const doneRow = row;
  const [download] = await Promise.all([
    page.waitForEvent('download', { timeout: DOWNLOAD_LIMIT_MS }),
    doneRow.locator('[data-testid="report-download"]').click(),
  ]);
  const file = await download.path();
  const csv = readFileSync(file, 'utf8');
  const header = csv.split(/\r?\n/)[0];
  if (header !== 'time (UTC),gate,seq,event,state,cause,detail') {
    throw new CheckFailed(`the CSV's first line is ${JSON.stringify(header)}`);
  }
  if (!csv.includes(`${args.gate},`)) throw new CheckFailed(`the CSV has no row of ${args.gate}`);
  log(`downloaded ${download.suggestedFilename()}: ${csv.split(/\r?\n/).filter(Boolean).length - 1} rows`);
  await doneRow.locator('[data-testid="report-file"]').waitFor({ state: 'visible', timeout: PAGE_LIMIT_MS });
  await shot('11-report-downloaded.png');
}

/** The viewer whose password the test resets, made by the admin over REST. */
const VIEWER = { username: 'console-viewer', email: 'console-viewer@example.test' };
const VIEWER_PASSWORD = 'viewer-new-password-4d1c';

async function passwordResetSteps() {
  step = '12 forgot password';
  const token = await adminToken();
  const made = await rest('POST', '/api/v1/users', {
    username: VIEWER.username, role: 'viewer', email: VIEWER.email, password: 'viewer-first-password-77a0',
  }, token);
  if (made.status !== 201) throw new CheckFailed(`creating ${VIEWER.username}: ${made.status} ${made.text}`);
  await logOut();
  await page.locator('[data-testid="forgot-open"]').click();
  await page.locator('[data-testid="forgot-form"]').waitFor({ state: 'visible', timeout: PAGE_LIMIT_MS });
  await page.locator('[data-testid="forgot-login"]').fill(VIEWER.email);
  await page.locator('[data-testid="forgot-submit"]').click();
  await until('the page says a link is on its way', PAGE_LIMIT_MS,
    () => page.locator('[data-testid="forgot-result"]').textContent(),
    (t) => t && t.includes('a link is on its way'));
  await shot('12-forgot-password.png');

  step = '13 reset link landing';
  const reset = await mailedToken('password-reset', VIEWER.email);
  // An emailed link opens a new load of the page.
  await page.goto('about:blank');
  await page.goto(`${base}/console#password-reset=${encodeURIComponent(reset)}`, { waitUntil: 'load', timeout: PAGE_LIMIT_MS });
  const card = page.locator('[data-testid="link-card"]');
  await until('the link is inspected', PAGE_LIMIT_MS, () => card.getAttribute('data-state'), (s) => s === 'ready');
  const shown = await page.locator('[data-testid="link-username"]').inputValue();
  if (shown !== VIEWER.username) throw new CheckFailed(`the landing page names ${JSON.stringify(shown)}`);
  if (await page.locator('[data-testid="login-form"]').isVisible()) throw new CheckFailed('the sign-in form shows beside the link');
  await page.locator('[data-testid="link-password"]').fill(VIEWER_PASSWORD);
  await page.locator('[data-testid="link-password-again"]').fill(`${VIEWER_PASSWORD}x`);
  await page.locator('[data-testid="link-submit"]').click();
  await until('two different passwords are refused', PAGE_LIMIT_MS,
    () => page.locator('[data-testid="link-error"]').textContent(), (t) => t && t.includes('differ'));
  await page.locator('[data-testid="link-password-again"]').fill(VIEWER_PASSWORD);
  await shot('13-reset-landing.png');

  step = '14 reset: signed in';
  // A viewer's console asks for the supervision tree once and is told 403 (operators only).
  const viewerTree = expectHttp(403, '/api/v1/system/actors', "a viewer's tree");
  await page.locator('[data-testid="link-submit"]').click();
  await signedInAs(`${VIEWER.username} · viewer`);
  if (page.url().includes('#')) throw new CheckFailed(`the fragment is still in the address: ${page.url()}`);
  if (await tabVisible('reports')) throw new CheckFailed('a viewer sees the Reports tab');
  await page.locator('[data-testid="tab-maintenance"]').click();
  await page.locator(`[data-testid="record"][data-status="completed"]`).first()
    .waitFor({ state: 'visible', timeout: MAINTENANCE_LIMIT_MS });
  if (await page.locator('[data-testid="record-open-form"]').isVisible()) throw new CheckFailed('a viewer is offered the record form');
  if (await page.locator('[data-testid="plan-new-open"]').isVisible()) throw new CheckFailed('a viewer is offered the plan form');
  await shot('14-reset-signed-in-viewer.png');

  step = '15 sign in with the new password';
  await logOut();
  await signIn(VIEWER.username, VIEWER_PASSWORD);
  await signedInAs(`${VIEWER.username} · viewer`);
  await shot('15-new-password-sign-in.png');
  await logOut();
  viewerTree();

  step = '16 spent link refused';
  const spent = expectHttp(410, '/api/v1/auth/links/inspect', 'the spent link');
  await page.goto('about:blank');
  await page.goto(`${base}/console#password-reset=${encodeURIComponent(reset)}`, { waitUntil: 'load', timeout: PAGE_LIMIT_MS });
  await until('the spent link is refused', PAGE_LIMIT_MS, () => card.getAttribute('data-state'), (s) => s === 'invalid');
  await shot('16-link-spent.png');
  await page.locator('[data-testid="link-back"]').click();
  await page.locator('[data-testid="login-username"]').waitFor({ state: 'visible', timeout: PAGE_LIMIT_MS });
  if (page.url().includes('#')) throw new CheckFailed(`back to sign-in kept the fragment: ${page.url()}`);
  spent();
}

/** The operator the admin invites over REST (no password: the invitation sets it). */
const INVITED = { username: 'console-invited', email: 'console-invited@example.test' };

async function invitationSteps() {
  step = '17 invitation';
  const token = await adminToken();
  const made = await rest('POST', '/api/v1/users', {
    username: INVITED.username, role: 'operator', email: INVITED.email, invite: true,
  }, token);
  if (made.status !== 201) throw new CheckFailed(`inviting ${INVITED.username}: ${made.status} ${made.text}`);
  const invitation = await mailedToken('invitation', INVITED.email);
  // The page is open already: only the fragment changes (no new load).
  await page.goto(`${base}/console#invitation=${encodeURIComponent(invitation)}`, { timeout: PAGE_LIMIT_MS });
  const card = page.locator('[data-testid="link-card"]');
  await until('the invitation is inspected', PAGE_LIMIT_MS,
    async () => ({ state: await card.getAttribute('data-state'), purpose: await card.getAttribute('data-purpose') }),
    (v) => v.state === 'ready' && v.purpose === 'invitation');
  const invitedPassword = 'invited-operator-pass-90b2';
  await page.locator('[data-testid="link-password"]').fill(invitedPassword);
  await page.locator('[data-testid="link-password-again"]').fill(invitedPassword);
  await shot('17-invitation.png');
  await page.locator('[data-testid="link-submit"]').click();
  await signedInAs(`${INVITED.username} · operator`);
  if (await tabVisible('reports')) throw new CheckFailed('an operator sees the Reports tab');
  await page.locator('[data-testid="tab-maintenance"]').click();
  await page.locator('[data-testid="record-open-form"]').waitFor({ state: 'visible', timeout: PAGE_LIMIT_MS });
  await shot('18-invited-operator.png');
  await logOut();
}

/** Waits for the card's outcome of `action` to be terminal, and requires `completed`. */
async function waitOutcome(outcome, action) {
  const text = await until(`${action} reaches an outcome`, COMMAND_LIMIT_MS, () => outcome.textContent(),
    (t) => t && /^(completed|rejected|failed|timed_out|error|forbidden|rate limited)/.test(t.trim()));
  if (text.trim() !== 'completed') throw new CheckFailed(`${action} ended ${JSON.stringify(text.trim())}, not completed`);
}

let code = 0;
try {
  await main();
  log('console test passed: login, grid, command, link down and up, tree, maintenance, reports, password reset, invitation');
} catch (e) {
  code = 1;
  const what = e instanceof CheckFailed ? e.message : (e && e.stack) || String(e);
  console.error(`console test FAILED at step ${step}: ${what}`);
  if (pageErrors.length) console.error(`page errors:\n  ${pageErrors.join('\n  ')}`);
  if (page) {
    try {
      await page.screenshot({ path: path.join(artifacts, 'failure.png'), fullPage: true });
      console.error(`screenshot of the failure: ${path.join(artifacts, 'failure.png')}`);
    } catch {
      // The browser itself is gone.
    }
  }
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.exit(code);
