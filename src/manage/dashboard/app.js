'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const meta = (name) => {
    const m = document.querySelector('meta[name="' + name + '"]');
    return m ? m.content.trim() : '';
  };

  let base = meta('api-keys-base');
  if (base && !base.endsWith('/')) base += '/';
  const scopes = [...new Set(meta('api-keys-scopes').split(/\s+/).filter(Boolean))];
  // What the routes offer (`rotate`, `rename`) and how callers sign in (`session`:
  // by the application's session only, never a pasted key).
  const features = new Set(meta('api-keys-features').split(/\s+/).filter(Boolean));
  const canRotate = features.has('rotate');
  const canRename = features.has('rename');
  const sessionOnly = features.has('session');

  // The pasted admin key: held in this variable only, never stored anywhere else.
  let apiKey = null;
  let keys = new Map();
  let current = null; // the key the open dialog acts on
  let listSeq = 0;
  let eventSeq = 0;
  let eventsButton = null;

  const errorBox = $('error');
  const errorHome = $('error-home');
  const notice = $('notice');
  const authForm = $('auth-form');
  const authInput = $('auth-key');
  const forgetBtn = $('forget-key');
  const createForm = $('create-form');
  const rows = $('key-rows');
  const reloadBtn = $('reload');
  const eventsSection = $('events');
  const eventsTitle = $('events-title');
  const eventRows = $('event-rows');
  const secretDlg = $('secret-dialog');
  const secretCode = $('secret-key');
  const secretExtra = $('secret-extra');
  const copyBtn = $('copy-key');
  const copyStatus = $('copy-status');
  const secretConfirm = $('secret-confirm');
  const renameDlg = $('rename-dialog');
  const renameInput = $('rename-name');
  const rotateDlg = $('rotate-dialog');
  const rotateSelect = $('rotate-overlap');
  const revokeDlg = $('revoke-dialog');
  const revokeInput = $('revoke-confirm-name');
  const revokeSubmit = $('revoke-submit');

  class ApiError extends Error {
    constructor(message, code, status, silent) {
      super(message);
      this.code = code || '';
      this.status = status || 0;
      this.silent = !!silent;
    }
  }

  // ---- DOM helpers (data only ever goes through textContent / attributes) ----

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') e.className = v;
        else e.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }

  const dash = '—';
  const str = (v) => (typeof v === 'string' ? v : v === null || v === undefined ? '' : String(v));
  const show = (v) => (v === null || v === undefined || v === '' ? dash : String(v));
  const keyName = (k) => (k && typeof k.name === 'string' && k.name !== '' ? k.name : k && k.id ? String(k.id) : dash);
  const enc = encodeURIComponent;

  function parseTime(v) {
    if (typeof v !== 'string' || v === '') return null;
    const t = Date.parse(v);
    return Number.isNaN(t) ? null : t;
  }

  function fmt(t) {
    try {
      return new Date(t).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
    } catch (_) {
      return new Date(t).toLocaleString();
    }
  }

  function dateCell(v, nullText) {
    if (v === undefined) return dash;
    if (v === null || v === '') return nullText || dash;
    const t = parseTime(v);
    if (t === null) return String(v);
    return el('time', { datetime: v, title: v }, fmt(t));
  }

  function messageRow(cols, text) {
    return el('tr', { class: 'empty' }, el('td', { colspan: cols }, text));
  }

  function asArray(d) {
    if (Array.isArray(d)) return d;
    if (d && typeof d === 'object') {
      if (Array.isArray(d.data)) return d.data;
      if (Array.isArray(d.keys)) return d.keys;
      if (Array.isArray(d.events)) return d.events;
    }
    return [];
  }

  // ---- messages ----

  function setError(message, code) {
    const open = document.querySelector('dialog[open]');
    // While a modal dialog is open the page behind it is inert: show the banner inside it.
    if (open) {
      if (errorBox.parentNode !== open) open.prepend(errorBox);
    } else if (errorBox.parentNode !== errorHome) {
      errorHome.append(errorBox);
    }
    $('error-text').textContent = message || 'Something went wrong.';
    $('error-code').textContent = code ? String(code) : '';
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.hidden = true;
    $('error-text').textContent = '';
    $('error-code').textContent = '';
  }

  function report(err) {
    if (err && err.silent) return;
    setError(err && err.message ? err.message : String(err), err && err.code);
  }

  function say(text) {
    notice.textContent = text;
  }

  // ---- HTTP ----

  function url(path) {
    return new URL(base + path, document.baseURI).href;
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const sent = apiKey;
    if (sent !== null) headers.Authorization = 'Bearer ' + sent;
    let res;
    try {
      res = await fetch(url(path), {
        method,
        headers,
        credentials: 'same-origin',
        cache: 'no-store',
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (_) {
      throw new ApiError('Network error: the server could not be reached. Check your connection and try again.', 'network');
    }
    let json;
    try {
      const text = await res.text();
      if (text) json = JSON.parse(text);
    } catch (_) {
      json = undefined;
    }
    const failed = !res.ok || (json && typeof json === 'object' && json.success === false);
    if (failed) {
      const e = json && typeof json === 'object' ? json.error : undefined;
      let message = 'HTTP ' + res.status;
      let code = '';
      if (e && typeof e === 'object') {
        if (typeof e.message === 'string' && e.message) message = e.message;
        if (e.code !== undefined && e.code !== null) code = String(e.code);
      } else if (typeof e === 'string' && e) {
        message = e;
      }
      if (res.status === 401) {
        // Without a pasted key: just ask for one. With one: it was refused, drop it.
        if (sent !== null && apiKey === sent) apiKey = null;
        updateKeyUi();
        showAuth(sent !== null);
        throw new ApiError(message, code, 401, sent === null && method === 'GET' && !document.querySelector('dialog[open]'));
      }
      throw new ApiError(message, code, res.status);
    }
    if (json && typeof json === 'object' && !Array.isArray(json) && Object.prototype.hasOwnProperty.call(json, 'data')) {
      return json.data;
    }
    return json;
  }

  // Runs an action from a submit button: disables it while in flight, reports errors.
  async function run(btn, fn, after) {
    if (btn.disabled) return;
    clearError();
    btn.disabled = true;
    btn.setAttribute('aria-busy', 'true');
    try {
      await fn();
    } catch (err) {
      report(err);
    } finally {
      btn.disabled = false;
      btn.removeAttribute('aria-busy');
      if (after) after();
    }
  }

  // ---- auth ----

  function updateKeyUi() {
    forgetBtn.hidden = apiKey === null;
  }

  function showAuth(refocus) {
    if (sessionOnly) {
      setError('Your session has ended: sign in again.');
      return;
    }
    const wasHidden = authForm.hidden;
    authForm.hidden = false;
    if ((wasHidden || refocus) && !document.querySelector('dialog[open]')) authInput.focus();
  }

  authForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const v = authInput.value.trim();
    authInput.value = '';
    if (!v) {
      setError('Paste an API key first.');
      authInput.focus();
      return;
    }
    // A Bearer token (RFC 6750 b64token); anything else cannot be sent as one.
    if (!/^[A-Za-z0-9\-._~+\/]+=*$/.test(v)) {
      setError('That is not an API key.');
      authInput.focus();
      return;
    }
    apiKey = v;
    updateKeyUi();
    clearError();
    const btn = $('auth-submit');
    btn.disabled = true;
    loadList().finally(() => {
      btn.disabled = false;
    });
  });

  forgetBtn.addEventListener('click', () => {
    apiKey = null;
    updateKeyUi();
    clearError();
    keys = new Map();
    rows.replaceChildren(messageRow(10, 'Key forgotten.'));
    hideEvents();
    say('Key forgotten');
    loadList();
  });

  // ---- list ----

  function status(k) {
    const now = Date.now();
    const revoked = parseTime(k.revoked_at);
    const expires = parseTime(k.expires_at);
    if (revoked !== null && revoked <= now) return { text: 'Revoked', cls: 'st-revoked', title: 'Revoked ' + fmt(revoked) };
    if (expires !== null && expires <= now) return { text: 'Expired', cls: 'st-expired', title: 'Expired ' + fmt(expires) };
    if (revoked !== null) return { text: 'Rotating out', cls: 'st-rotating', title: 'Active until ' + fmt(revoked) };
    if (expires !== null && expires - now <= 7 * 864e5) return { text: 'Expires soon', cls: 'st-soon', title: 'Expires ' + fmt(expires) };
    return { text: 'Active', cls: 'st-active', title: null };
  }

  function keyLabel(k) {
    const p = str(k.prefix);
    const h = str(k.hint);
    if (!p && !h) return dash;
    return (p ? (p.endsWith('_') ? p : p + '_') : '') + '…' + h;
  }

  function restrictionsText(r) {
    if (!r || typeof r !== 'object') return null;
    const parts = [];
    const add = (label, list) => {
      if (Array.isArray(list) && list.length) parts.push(label + ': ' + list.join(', '));
    };
    add('IPs', r.allowed_ips);
    add('Referrers', r.allowed_referrers);
    add('Endpoints', r.allowed_endpoints);
    return parts.length ? parts.join('\n') : null;
  }

  function keyRow(k) {
    const name = keyName(k);
    const st = status(k);
    const hasId = k.id !== undefined && k.id !== null && k.id !== '';
    const gone = st.text === 'Revoked';
    const scopesText = Array.isArray(k.scopes) ? (k.scopes.length ? k.scopes.join(', ') : dash) : show(k.scopes);
    let credits = dash;
    if (typeof k.credits === 'number') credits = String(k.credits);
    else if (k.credits && typeof k.credits === 'object' && k.credits.remaining !== undefined && k.credits.remaining !== null) credits = String(k.credits.remaining);
    const usage = typeof k.usage_24h === 'number' ? k.usage_24h : Number(k.usage_24h) || 0;
    const restr = restrictionsText(k.restrictions);

    const btn = (action, label, aria, disabled) =>
      el('button', { type: 'button', 'data-action': action, 'aria-label': aria + ' ' + name, disabled: disabled || !hasId }, label);

    return el(
      'tr',
      { 'data-key-id': hasId ? k.id : null },
      el('th', { scope: 'row', title: restr }, typeof k.name === 'string' && k.name ? k.name : dash),
      el('td', null, el('code', { title: hasId ? 'ID ' + k.id : null }, keyLabel(k))),
      el('td', null, scopesText),
      el('td', null, dateCell(k.created_at)),
      el('td', null, dateCell(k.last_used_at, 'Never')),
      el('td', null, dateCell(k.expires_at, 'Never')),
      el('td', null, el('span', { class: 'badge ' + st.cls, title: st.title }, st.text)),
      el('td', { class: 'num' }, credits),
      el('td', { class: 'num' }, String(usage)),
      el('td', null, el('div', { class: 'actions' },
        canRename ? btn('rename', 'Rename', 'Rename') : null,
        canRotate ? btn('rotate', 'Rotate', 'Rotate', gone) : null,
        btn('revoke', 'Revoke', 'Revoke', gone),
        btn('events', 'Events', 'Audit events for')))
    );
  }

  function renderKeys(list) {
    keys = new Map();
    const out = [];
    for (const k of list) {
      if (!k || typeof k !== 'object') continue;
      if (k.id !== undefined && k.id !== null) keys.set(String(k.id), k);
      out.push(keyRow(k));
    }
    rows.replaceChildren(...(out.length ? out : [messageRow(10, 'No keys yet.')]));
  }

  // Views of keys in camelCase (`keyHint`, `createdAt`) read like the default one.
  function snakeCase(k) {
    if (!k || typeof k !== 'object') return k;
    const out = Object.assign({}, k);
    for (const name of Object.keys(k)) {
      const snake = name.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase()).replace(/^key_hint$/, 'hint');
      if (!(snake in out)) out[snake] = k[name];
    }
    return out;
  }

  async function loadList() {
    const seq = ++listSeq;
    reloadBtn.disabled = true;
    reloadBtn.setAttribute('aria-busy', 'true');
    try {
      const d = await api('GET', 'api-keys?include=usage_24h');
      if (seq !== listSeq) return;
      renderKeys(asArray(d).map(snakeCase));
      authForm.hidden = true;
    } catch (err) {
      if (seq !== listSeq) return;
      if (err.status === 401) {
        keys = new Map();
        rows.replaceChildren(messageRow(10, 'Sign in with an API key to see the keys.'));
      } else if (!keys.size) {
        rows.replaceChildren(messageRow(10, 'The keys could not be loaded.'));
      }
      report(err);
    } finally {
      if (seq === listSeq) {
        reloadBtn.disabled = false;
        reloadBtn.removeAttribute('aria-busy');
      }
    }
  }

  reloadBtn.addEventListener('click', () => {
    clearError();
    loadList();
  });

  rows.addEventListener('click', (e) => {
    const b = e.target.closest('button[data-action]');
    if (!b || b.disabled) return;
    const tr = b.closest('tr');
    const k = tr && keys.get(tr.getAttribute('data-key-id'));
    if (!k) return;
    clearError();
    const action = b.getAttribute('data-action');
    if (action === 'rename') openRename(k);
    else if (action === 'rotate') openRotate(k);
    else if (action === 'revoke') openRevoke(k);
    else if (action === 'events') openEvents(k, b);
  });

  // ---- create ----

  function renderScopes() {
    const box = $('scope-list');
    box.replaceChildren(
      ...scopes.map((s) =>
        el('label', { class: 'check' }, el('input', { type: 'checkbox', name: 'scope', value: s }), el('span', null, s)))
    );
    $('scopes').hidden = scopes.length === 0;
  }

  function splitList(v, spaces) {
    return v
      .split(spaces ? /[\s,]+/ : /[\n,]+/)
      .map((s) => s.trim().replace(/\s+/g, ' '))
      .filter(Boolean);
  }

  function wholeNumber(v, label, min) {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min) throw new ApiError(label + ' must be a whole number of at least ' + min + '.');
    return n;
  }

  function secretOf(r) {
    if (r && typeof r === 'object') {
      if (typeof r.key === 'string' && r.key) return r.key;
      if (typeof r.secret === 'string' && r.secret) return r.secret;
    }
    return '';
  }

  createForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const submit = $('create-submit');
    run(submit, async () => {
      const name = $('create-name').value.trim();
      if (!name) throw new ApiError('Enter a name for the key.');
      const body = { name };
      const chosen = [...createForm.querySelectorAll('input[name="scope"]:checked')].map((c) => c.value);
      if (chosen.length) body.scopes = chosen;
      const exp = $('create-expires').value;
      if (exp) {
        const d = new Date(exp);
        if (Number.isNaN(d.getTime())) throw new ApiError('Enter a valid expiry date and time.');
        body.expires_at = d.toISOString();
      }
      const restrictions = {};
      const ips = splitList($('create-ips').value, true);
      const refs = splitList($('create-referrers').value, true);
      const eps = splitList($('create-endpoints').value, false);
      if (ips.length) restrictions.allowed_ips = ips;
      if (refs.length) restrictions.allowed_referrers = refs;
      if (eps.length) restrictions.allowed_endpoints = eps;
      if (Object.keys(restrictions).length) body.restrictions = restrictions;
      const limit = $('create-rate-limit').value.trim();
      if (limit !== '') {
        const win = $('create-rate-window').value.trim();
        body.ratelimits = [{
          name: 'default',
          limit: wholeNumber(limit, 'The rate limit', 1),
          window_seconds: win === '' ? 60 : wholeNumber(win, 'The rate-limit window', 1),
        }];
      }
      const credits = $('create-credits').value.trim();
      if (credits !== '') body.credits = { remaining: wholeNumber(credits, 'Credits', 0) };

      const r = await api('POST', 'api-keys', body);
      createForm.reset();
      say('Key created');
      loadList();
      const secret = secretOf(r);
      if (secret) showSecret(secret, 'New key: ' + name, '');
      else setError('The key was created, but the server sent no secret to show.');
    });
  });

  // ---- shown-once secret ----

  function showSecret(secret, title, extra) {
    $('secret-title').textContent = title;
    secretCode.textContent = secret;
    secretExtra.textContent = extra;
    secretExtra.hidden = !extra;
    copyBtn.textContent = 'Copy';
    copyStatus.textContent = '';
    secretConfirm.hidden = true;
    if (!secretDlg.open) secretDlg.showModal();
    copyBtn.focus();
  }

  function selectSecret() {
    const sel = window.getSelection();
    if (!sel) return;
    const range = document.createRange();
    range.selectNodeContents(secretCode);
    sel.removeAllRanges();
    sel.addRange(range);
  }

  copyBtn.addEventListener('click', async () => {
    const text = secretCode.textContent;
    if (!text) return;
    let ok = false;
    if (navigator.clipboard && typeof navigator.clipboard.writeText === 'function') {
      try {
        await navigator.clipboard.writeText(text);
        ok = true;
      } catch (_) {
        ok = false;
      }
    }
    if (!ok) {
      selectSecret();
      try {
        ok = document.execCommand('copy');
      } catch (_) {
        ok = false;
      }
    }
    if (ok) {
      copyBtn.textContent = 'Copied';
      copyStatus.textContent = 'The key is on the clipboard.';
    } else {
      selectSecret();
      copyStatus.textContent = 'Copying did not work. The key is selected: press Ctrl+C (or ⌘C) to copy it.';
    }
  });

  function askCloseSecret() {
    secretConfirm.hidden = false;
    $('cancel-close-secret').focus();
  }

  $('close-secret').addEventListener('click', askCloseSecret);
  secretDlg.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      e.preventDefault();
      askCloseSecret();
    }
  });
  secretDlg.addEventListener('cancel', (e) => {
    e.preventDefault();
    askCloseSecret();
  });
  $('cancel-close-secret').addEventListener('click', () => {
    secretConfirm.hidden = true;
    $('close-secret').focus();
  });
  $('confirm-close-secret').addEventListener('click', () => {
    secretDlg.close();
    secretCode.textContent = '';
    copyStatus.textContent = '';
    secretConfirm.hidden = true;
    const sel = window.getSelection();
    if (sel) sel.removeAllRanges();
  });
  secretDlg.addEventListener('close', () => {
    // Closed some other way while the key is still shown (a browser may force it): keep it open.
    if (secretCode.textContent) {
      secretDlg.showModal();
      askCloseSecret();
    }
  });

  // ---- dialogs ----

  for (const dlg of [secretDlg, renameDlg, rotateDlg, revokeDlg]) {
    dlg.addEventListener('close', () => {
      if (errorBox.parentNode === dlg) errorHome.append(errorBox);
    });
  }
  for (const b of document.querySelectorAll('dialog button.cancel')) {
    b.addEventListener('click', () => b.closest('dialog').close());
  }

  function openRename(k) {
    current = k;
    $('rename-current').textContent = keyName(k);
    renameInput.value = typeof k.name === 'string' ? k.name : '';
    renameDlg.showModal();
    renameInput.focus();
    renameInput.select();
  }

  $('rename-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const k = current;
    run($('rename-submit'), async () => {
      const name = renameInput.value.trim();
      if (!name) throw new ApiError('Enter a name.');
      await api('PATCH', 'api-keys/' + enc(k.id), { name });
      renameDlg.close();
      say('Key renamed');
      loadList();
    });
  });

  function openRotate(k) {
    current = k;
    $('rotate-name').textContent = keyName(k);
    rotateSelect.value = '0';
    rotateDlg.showModal();
    rotateSelect.focus();
  }

  $('rotate-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const k = current;
    run($('rotate-submit'), async () => {
      const overlap = Number(rotateSelect.value) || 0;
      const label = rotateSelect.options[rotateSelect.selectedIndex].textContent;
      const r = await api('POST', 'api-keys/' + enc(k.id) + '/rotate', { overlap_seconds: overlap });
      rotateDlg.close();
      say('Key rotated');
      loadList();
      const secret = secretOf(r);
      const extra = overlap ? 'The old key keeps working for ' + label + ', then stops.' : 'The old key has stopped working.';
      if (secret) showSecret(secret, 'New key for ' + keyName(k), extra);
      else setError('The key was rotated, but the server sent no secret to show.');
    });
  });

  const revokeMatches = () => current !== null && revokeInput.value === keyName(current);

  function openRevoke(k) {
    current = k;
    $('revoke-name').textContent = keyName(k);
    revokeInput.value = '';
    revokeSubmit.disabled = true;
    revokeDlg.showModal();
    revokeInput.focus();
  }

  revokeInput.addEventListener('input', () => {
    if (revokeSubmit.getAttribute('aria-busy') !== 'true') revokeSubmit.disabled = !revokeMatches();
  });

  $('revoke-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (!revokeMatches()) return;
    const k = current;
    run(revokeSubmit, async () => {
      await api('DELETE', 'api-keys/' + enc(k.id));
      revokeDlg.close();
      say('Key revoked');
      loadList();
    }, () => {
      revokeSubmit.disabled = !revokeMatches();
    });
  });

  // ---- audit events ----

  function hideEvents() {
    eventSeq++;
    eventsSection.hidden = true;
    eventRows.replaceChildren();
  }

  function changedFields(c) {
    if (!c || typeof c !== 'object') return dash;
    const names = Array.isArray(c) ? c.map(String) : Object.keys(c);
    return names.length ? names.join(', ') : dash;
  }

  async function openEvents(k, btn) {
    const seq = ++eventSeq;
    eventsButton = btn;
    eventsTitle.textContent = 'Audit events for ' + keyName(k);
    eventRows.replaceChildren(messageRow(5, 'Loading…'));
    eventsSection.hidden = false;
    eventsTitle.focus();
    eventsSection.scrollIntoView({ block: 'nearest' });
    try {
      const d = await api('GET', 'audit-events?key_id=' + enc(k.id) + '&limit=50');
      if (seq !== eventSeq) return;
      const list = asArray(d).filter((ev) => ev && typeof ev === 'object');
      eventRows.replaceChildren(
        ...(list.length
          ? list.map((ev) =>
              el('tr', { 'data-event-id': ev.id },
                el('td', null, dateCell(ev.at)),
                el('td', null, show(ev.action)),
                el('td', null, show(ev.actor)),
                el('td', null, show(ev.client_ip)),
                el('td', null, changedFields(ev.changes))))
          : [messageRow(5, 'No events.')])
      );
    } catch (err) {
      if (seq !== eventSeq) return;
      eventRows.replaceChildren(messageRow(5, 'The events could not be loaded.'));
      report(err);
    }
  }

  $('events-close').addEventListener('click', () => {
    hideEvents();
    if (eventsButton && eventsButton.isConnected) eventsButton.focus();
    else reloadBtn.focus();
    eventsButton = null;
  });

  // ---- start ----

  window.addEventListener('unhandledrejection', (e) => {
    report(e.reason instanceof Error ? e.reason : new Error('Unexpected error.'));
  });

  // Leaving the page forgets the pasted key and any key on show, even if the browser
  // keeps the page to come back to; coming back that way starts afresh.
  window.addEventListener('pagehide', () => {
    apiKey = null;
    secretCode.textContent = '';
    keys = new Map();
    rows.replaceChildren();
  });
  window.addEventListener('pageshow', (e) => {
    if (e.persisted) location.reload();
  });

  renderScopes();
  updateKeyUi();
  loadList();
})();
