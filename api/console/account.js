// Getting in without the password one has: "Forgot password?" (a link by email), and the
// page that emailed links land on, `/console#invitation=TOKEN` or
// `/console#password-reset=TOKEN`. The link is inspected first (whose account, until when),
// the person chooses a password, and redeeming the link answers like a login: api.js takes
// the tokens the same way and the console starts as after a sign-in.
//
// The token rides in the fragment, which browsers never send to a server, so it stays out of
// access logs and Referer headers. It is removed from the address bar once it is spent (or
// abandoned), and kept until then so that a reload of the page can still use it.

import { dateTime } from './views.js';

const $ = (id) => document.getElementById(id);

/** The server's password policy, checked here first to save a round trip. */
const PASSWORD_MIN = 10;
const PASSWORD_MAX = 256;

/** What each link is for, in words. */
const PURPOSES = {
  invitation: {
    title: 'Welcome to Gatehouse',
    text: 'You were invited to the Gatehouse console. Choose a password for your account.',
    button: 'Set password and sign in',
  },
  password_reset: {
    title: 'Choose a new password',
    text: 'Choose a new password for your account. Every session it has open elsewhere ends.',
    button: 'Change password and sign in',
  },
};

/**
 * The emailed link in a location's fragment: `{kind, token}` for `#invitation=TOKEN` and
 * `#password-reset=TOKEN`, else null.
 */
export function linkInHash(hash) {
  const m = /^#(invitation|password-reset)=([^&#]+)$/.exec(hash || '');
  if (!m) return null;
  try {
    return { kind: m[1], token: decodeURIComponent(m[2]) };
  } catch {
    return null;
  }
}

/** The address without its fragment (and no new history entry). */
function dropFragment() {
  if (location.hash) history.replaceState(history.state, '', `${location.pathname}${location.search}`);
}

/** Characters as people count them (code points), as the server counts them. */
function length(s) {
  return [...s].length;
}

export class Account {
  /**
   * @param {import('./api.js').Api} api
   * @param {object} h
   * @param {() => Promise<void>} h.signedIn the api holds a session now: start the console
   */
  constructor(api, h) {
    this.api = api;
    this.h = h;
    /** The token of the link shown, while it may still be used. */
    this.token = null;
    /** Bumped at each view change, so a late answer does not redraw a view left since. */
    this.generation = 0;
    $('forgot-open').addEventListener('click', () => this.showForgot());
    $('forgot-back').addEventListener('click', () => this.showSignIn());
    $('forgot-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.requestReset();
    });
    $('link-back').addEventListener('click', () => {
      dropFragment();
      this.showSignIn();
    });
    $('link-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.redeem();
    });
  }

  /** Which of the signed-out views is on screen: 'sign-in', 'forgot' or 'link'. */
  show(view) {
    this.generation += 1;
    $('login-view').hidden = view === 'link';
    $('login-form').hidden = view !== 'sign-in';
    $('forgot-form').hidden = view !== 'forgot';
    $('link-view').hidden = view !== 'link';
  }

  /** The sign-in form (also after a sign-out). */
  showSignIn() {
    this.token = null;
    this.show('sign-in');
    $('login-user').focus();
  }

  /** Everything of these views hidden: the console is on screen. */
  hideAll() {
    this.generation += 1;
    this.token = null;
    $('login-view').hidden = true;
    $('link-view').hidden = true;
    for (const id of ['link-password', 'link-password-again']) $(id).value = '';
  }

  // --- Forgot password -----------------------------------------------------------------

  showForgot() {
    this.show('forgot');
    const typed = $('login-user').value.trim();
    if (typed && !$('forgot-login').value) $('forgot-login').value = typed;
    const result = $('forgot-result');
    result.textContent = '';
    delete result.dataset.tone;
    $('forgot-login').focus();
  }

  async requestReset() {
    const login = $('forgot-login').value.trim();
    const result = $('forgot-result');
    const button = $('forgot-form').querySelector('button[type=submit]');
    if (!login) return;
    const generation = this.generation;
    button.disabled = true;
    result.textContent = 'Sending…';
    delete result.dataset.tone;
    try {
      await this.api.requestPasswordReset(login);
      if (generation !== this.generation) return;
      // The same answer whether the account exists or not: the page cannot tell, by design.
      result.textContent = 'If that account exists and has an email address, a link is on its way.';
      result.dataset.tone = 'ok';
    } catch (e) {
      if (generation !== this.generation) return;
      result.dataset.tone = 'bad';
      if (e.status === 429) {
        result.textContent = `Too many requests; try again in ${e.retryAfterS !== null ? `${e.retryAfterS} s` : 'a while'}.`;
      } else if (e.status === 503) {
        result.textContent = e.message || 'Password reset by email is not available on this server.';
      } else {
        result.textContent = `Cannot ask for a link: ${e.message}`;
      }
    } finally {
      button.disabled = false;
    }
  }

  // --- Emailed links -------------------------------------------------------------------

  /** The landing view for `link` (from `linkInHash`): inspect it, then offer the form. */
  async open(link) {
    this.show('link');
    this.token = link.token;
    const generation = this.generation;
    const card = $('link-card');
    card.dataset.state = 'checking';
    $('link-title').textContent = link.kind === 'invitation' ? 'Welcome to Gatehouse' : 'Choose a new password';
    $('link-status').textContent = 'Checking the link…';
    $('link-form').hidden = true;
    $('link-error').textContent = '';
    let info;
    try {
      info = await this.api.inspectLink(link.token);
    } catch (e) {
      if (generation !== this.generation) return;
      if (e.status === 410 || e.status === 404) this.invalid(e.message);
      else this.trouble(`Cannot check the link: ${e.message}`);
      return;
    }
    if (generation !== this.generation) return;
    const purpose = PURPOSES[info.purpose] || PURPOSES.password_reset;
    card.dataset.state = 'ready';
    card.dataset.purpose = info.purpose;
    $('link-title').textContent = purpose.title;
    $('link-status').textContent = info.expires_at_ms
      ? `${purpose.text} This link works once, until ${dateTime(info.expires_at_ms)}.`
      : purpose.text;
    $('link-username').value = info.username;
    $('link-form').querySelector('button[type=submit]').textContent = purpose.button;
    $('link-form').hidden = false;
    $('link-password').focus();
  }

  /** The link cannot be used (unknown, used, superseded or expired): say so, offer the way back. */
  invalid(message) {
    this.token = null;
    $('link-card').dataset.state = 'invalid';
    $('link-title').textContent = 'This link cannot be used';
    // The server says why (unknown, used, replaced or expired); the page says what now.
    const why = (message || 'A link works once, and only until it expires').replace(/[.\s]+$/, '');
    $('link-status').textContent = `${why.charAt(0).toUpperCase()}${why.slice(1)}. `
      + 'For a new password, use "Forgot password?" on the sign-in page; for an invitation, ask your administrator.';
    $('link-form').hidden = true;
  }

  /** Not the link's fault (the server is away): the form stays, the message says why. */
  trouble(message) {
    $('link-card').dataset.state = 'error';
    $('link-status').textContent = message;
  }

  async redeem() {
    const password = $('link-password').value;
    const again = $('link-password-again').value;
    const error = $('link-error');
    error.textContent = '';
    const n = length(password);
    if (n < PASSWORD_MIN || n > PASSWORD_MAX) {
      error.textContent = `A password is ${PASSWORD_MIN} to ${PASSWORD_MAX} characters (this one is ${n}).`;
      return;
    }
    if (password !== again) {
      error.textContent = 'The two passwords differ.';
      return;
    }
    const token = this.token;
    if (!token) return;
    const generation = this.generation;
    const button = $('link-form').querySelector('button[type=submit]');
    button.disabled = true;
    try {
      await this.api.redeemLink(token, password);
    } catch (e) {
      if (generation !== this.generation) return;
      if (e.status === 410) {
        this.invalid(e.message);
      } else if (e.status === 422) {
        // `weak_password`: the server's reason, as it gives it.
        error.textContent = e.message;
      } else if (e.status === 429) {
        error.textContent = `Too many attempts; try again in ${e.retryAfterS !== null ? `${e.retryAfterS} s` : 'a while'}.`;
      } else {
        error.textContent = `Cannot set the password: ${e.message}`;
      }
      return;
    } finally {
      button.disabled = false;
    }
    // Signed in now, whatever was clicked meanwhile: the console takes over.
    dropFragment();
    this.hideAll();
    await this.h.signedIn();
  }
}
