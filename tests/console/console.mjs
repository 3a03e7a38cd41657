// Drives the operator console (/console) in Debian's headless Chromium through playwright-core,
// against a running `gatehouse serve` and the `gatehouse-sim` behind it:
//
//   sign in → the gate grid shows the gate → `open` ends `completed` and the gate `open`
//   → the simulator refuses the controller for 4 s (`restart NAME 4000` on its control port)
//   → the controller's link turns `down` → it comes back `connected` → the supervision tree
//   shows the link's restart or its last failure.
//
// Every wait is bounded and polls (no sleep-then-assert). A screenshot is saved at each step.
// Any console error or CSP violation in the page fails the run. Exit 0 on success, 1 on a
// failed check, 2 on bad arguments.
//
//   node console.mjs --url http://127.0.0.1:PORT --user NAME --password-file FILE \
//     --control HOST:PORT --controller NAME --gate GATEID --artifacts DIR
//
// tests/tests/console.rs runs it with `--flag=value` arguments.

import { mkdirSync, readFileSync } from 'node:fs';
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
/** Poll interval of the bounded waits. */
const POLL_MS = 100;

const REQUIRED = ['url', 'user', 'password-file', 'control', 'controller', 'gate', 'artifacts'];

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

function splitHostPort(hostPort) {
  const i = hostPort.lastIndexOf(':');
  if (i <= 0) usage(`--control must be HOST:PORT, got ${hostPort}`);
  return [hostPort.slice(0, i).replace(/^\[|\]$/g, ''), Number(hostPort.slice(i + 1))];
}

// --- The page's own errors ---------------------------------------------------------------

const pageErrors = [];

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
    if (m.type() === 'error') pageErrors.push(`console error: ${m.text()}`);
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
  checkPageErrors();
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
  log('console test passed: login, grid, command, link down and up, tree');
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
