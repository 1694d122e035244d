// The dashboard: a single page on the public API only (the same calls a client makes),
// no framework and no build step. Every text from the API goes through `textContent`
// (never `innerHTML`), and the page's CSP allows only its own scripts: the API key lives
// in sessionStorage, so nothing a tenant's data holds may run as script.

const KEY_STORAGE = 'bulk.apiKey';
const STATUSES = ['scheduled', 'queued', 'running', 'paused', 'cancelling', 'completed', 'failed', 'cancelled'];
const FINISHED = ['completed', 'failed', 'cancelled'];
const ENTITIES = ['contact', 'company', 'lead', 'opportunity', 'task'];
const ACTION_TYPES = ['upsert', 'update', 'create', 'delete'];
const OUTCOMES = ['succeeded', 'failed', 'skipped', 'unprocessed'];
const LOG_PAGE = 50;
const LIST_PAGE = 50;

// ---- small DOM helpers ---------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'text') node.textContent = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function options(values, selected, allLabel) {
  const list = allLabel ? [el('option', { value: '' }, allLabel)] : [];
  for (const value of values) {
    list.push(el('option', { value, selected: value === selected }, value));
  }
  return list;
}

function announce(text) {
  const announcer = document.getElementById('announcer');
  announcer.textContent = text;
}

function number(value) {
  return typeof value === 'number' ? value.toLocaleString('en-US') : '–';
}

// A time of today as the time alone, another day's with its date: keeps tables narrow.
function when(value) {
  if (!value) return '–';
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return value;
  const time = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  if (date.toDateString() === new Date().toDateString()) return time;
  return `${date.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// ---- the API --------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function errorOf(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || 'request failed';
  let details;
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message, details } = body.error);
  } catch (_) {
    // Not JSON: the status says enough.
  }
  return new ApiError(response.status, code, message, details);
}

async function api(path, { method = 'GET', body, signal, raw = false, headers = {} } = {}) {
  const sent = { Authorization: `Bearer ${apiKey()}`, ...headers };
  let payload;
  if (body !== undefined) {
    sent['content-type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers: sent, body: payload, signal });
  if (response.status === 401) {
    signOut('Your API key was refused: sign in again.');
    throw await errorOf(response);
  }
  if (!response.ok) throw await errorOf(response);
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

function errorBox(error) {
  if (error instanceof ApiError) {
    return el('div', { class: 'alert', role: 'alert' },
      el('code', {}, error.code), ': ', error.message);
  }
  return el('div', { class: 'alert', role: 'alert' }, String(error && error.message || error));
}

// One Server-Sent Events stream read with fetch (EventSource cannot send the key).
// Calls `onMessage` for each message; answers 'finished' (204, or `onMessage` said so) or
// 'ended' (the server closed the stream: resume with the last id).
async function readStream(path, lastEventId, signal, onMessage) {
  const headers = { Authorization: `Bearer ${apiKey()}`, Accept: 'text/event-stream' };
  if (lastEventId) headers['Last-Event-ID'] = lastEventId;
  const response = await fetch(path, { headers, signal });
  if (response.status === 204) return 'finished';
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let message = { data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return 'ended';
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n')) >= 0) {
      let line = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (message.data.length) {
          const done = onMessage({ id: message.id, event: message.event || 'message', data: JSON.parse(message.data.join('\n')) });
          if (done === 'finished') return 'finished';
        }
        message = { data: [] };
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? '' : line.slice(colon + 1);
      if (text.startsWith(' ')) text = text.slice(1);
      if (field === 'data') message.data.push(text);
      else if (field === 'id') message.id = text;
      else if (field === 'event') message.event = text;
    }
  }
}

// Follows a stream until it is finished or `signal` aborts, resuming with the last id
// after the server ends it or the network drops it.
async function follow(path, signal, onMessage, onError) {
  let lastId;
  let failures = 0;
  while (!signal.aborted) {
    let wait;
    try {
      const outcome = await readStream(path, lastId, signal, (message) => {
        if (message.id) lastId = message.id;
        failures = 0;
        return onMessage(message);
      });
      if (outcome === 'finished') return;
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status !== 429 && error.status < 500) {
        onError(error);
        return;
      }
      if (error instanceof ApiError && error.code === 'too_many_streams') {
        onError(new ApiError(429, error.code, 'Live updates are paused: this account has as many live streams open as it may (other tabs or tools). Retrying.'));
      }
    }
    // Backing off with jitter: tabs reconnecting after an api restart do not come back in
    // step, and a refused stream is not asked for again every second.
    failures += 1;
    wait = Math.min(30_000, 1000 * 2 ** Math.min(failures - 1, 5)) * (0.5 + Math.random());
    await sleep(wait, signal);
  }
}

// ---- routing --------------------------------------------------------------------------

let pageController = new AbortController();

function signOut(reason) {
  sessionStorage.removeItem(KEY_STORAGE);
  location.hash = '#/sign-in';
  if (reason) sessionStorage.setItem('bulk.signInReason', reason);
  route();
}

function focusHeading() {
  const heading = document.querySelector('#main h2');
  if (heading) {
    heading.setAttribute('tabindex', '-1');
    heading.focus({ preventScroll: true });
    document.title = `${heading.textContent} · Bulk actions`;
  }
}

function route() {
  setTimeout(focusHeading, 0);
  pageController.abort();
  pageController = new AbortController();
  const signal = pageController.signal;
  const main = document.getElementById('main');
  const hash = location.hash || '#/actions';
  const [path, query = ''] = hash.slice(1).split('?');
  const params = new URLSearchParams(query);
  const nav = document.getElementById('nav');
  if (!apiKey()) {
    nav.hidden = true;
    return renderSignIn(main);
  }
  nav.hidden = false;
  const parts = path.split('/').filter(Boolean);
  main.replaceChildren();
  let id = parts[1];
  try { id = id && decodeURIComponent(id); } catch (_) { /* left as typed: the API refuses it */ }
  if (parts[0] === 'actions' && id) return renderAction(main, id, signal);
  if (parts[0] === 'submit') return renderSubmit(main, signal);
  return renderActions(main, params, signal);
}

// ---- sign in --------------------------------------------------------------------------

function renderSignIn(main) {
  const reason = sessionStorage.getItem('bulk.signInReason');
  sessionStorage.removeItem('bulk.signInReason');
  // `new-password` keeps browsers from offering to save the key in their password manager,
  // which would outlive the tab.
  const input = el('input', { id: 'api-key', name: 'api-key', type: 'password', autocomplete: 'new-password', spellcheck: 'false', required: true });
  const problem = el('div');
  const form = el('form', {
    class: 'form stacked',
    onsubmit: async (event) => {
      event.preventDefault();
      const key = input.value.trim();
      try {
        // Tried before it is kept: a refused key shows the API's answer here.
        const response = await fetch('/bulk-actions?limit=1', { headers: { Authorization: `Bearer ${key}` } });
        if (!response.ok) throw await errorOf(response);
        sessionStorage.setItem(KEY_STORAGE, key);
        location.hash = '#/actions';
        route();
      } catch (error) {
        problem.replaceChildren(errorBox(error));
      }
    },
  },
  el('label', { for: 'api-key' }, 'API key', input),
  el('p', { class: 'muted' }, 'The key stays in this tab only (sessionStorage) and goes to the API as a bearer token.'),
  el('div', {}, el('button', { type: 'submit', id: 'sign-in' }, 'Sign in')));
  main.replaceChildren(el('h2', {}, 'Sign in'), reason ? el('div', { class: 'alert', role: 'alert' }, reason) : '', problem, form);
  input.focus();
}

// ---- the account's actions ------------------------------------------------------------

function statusCell(status) {
  return el('span', { class: `status status-${status}` }, status);
}

function progressOf(view) {
  const value = typeof view.progress === 'number' ? view.progress : 0;
  const percent = Math.floor(value * 100);
  return el('span', { class: 'row' },
    el('progress', { max: 1, value, 'aria-label': `${percent}% processed` }),
    el('span', { class: 'percent' }, `${percent}%`));
}

function renderActions(main, params, signal) {
  const status = params.get('status') || '';
  const entityType = params.get('entityType') || '';
  const actionType = params.get('actionType') || '';
  const skip = Math.max(0, Number(params.get('skip')) || 0);
  const apply = () => {
    const next = new URLSearchParams();
    if (statusSelect.value) next.set('status', statusSelect.value);
    if (entitySelect.value) next.set('entityType', entitySelect.value);
    if (typeSelect.value) next.set('actionType', typeSelect.value);
    location.hash = `#/actions?${next}`;
  };
  const statusSelect = el('select', { id: 'filter-status', onchange: apply }, options(STATUSES, status, 'Any status'));
  const entitySelect = el('select', { id: 'filter-entity', onchange: apply }, options(ENTITIES, entityType, 'Any entity'));
  const typeSelect = el('select', { id: 'filter-type', onchange: apply }, options(ACTION_TYPES, actionType, 'Any action type'));
  const problem = el('div');
  const pager = el('div', { class: 'row', id: 'list-pager' });
  const go = (nextSkip) => {
    const next = new URLSearchParams(params);
    next.set('skip', String(nextSkip));
    location.hash = `#/actions?${next}`;
  };
  const body = el('tbody', { id: 'actions-body' });
  const table = el('div', { class: 'table-wrap' }, el('table', { id: 'actions' },
    el('caption', { class: 'visually-hidden' }, 'Bulk actions of this account, newest first'),
    el('thead', {}, el('tr', {},
      el('th', { scope: 'col' }, 'Action'), el('th', { scope: 'col' }, 'Type'), el('th', { scope: 'col' }, 'Status'),
      el('th', { scope: 'col' }, 'Progress'), el('th', { scope: 'col', class: 'num' }, 'Succeeded'),
      el('th', { scope: 'col', class: 'num' }, 'Failed'), el('th', { scope: 'col', class: 'num' }, 'Skipped'),
      el('th', { scope: 'col', class: 'num' }, 'Rate /s'), el('th', { scope: 'col' }, 'Started'),
      el('th', { scope: 'col' }, 'Finished'))),
    body));
  main.append(
    el('h2', {}, 'Actions'),
    el('div', { class: 'form' },
      el('label', { for: 'filter-status' }, 'Status', statusSelect),
      el('label', { for: 'filter-entity' }, 'Entity', entitySelect),
      el('label', { for: 'filter-type' }, 'Action type', typeSelect)),
    problem, table, pager);

  const rows = new Map();
  const rates = new Map();
  const rowOf = (view) => {
    let rate = rates.get(view.actionId);
    if (rate === undefined && view.startedAt && view.completedAt) {
      const seconds = (new Date(view.completedAt) - new Date(view.startedAt)) / 1000;
      if (seconds > 0) rate = (view.processedRecords || 0) / seconds;
    }
    return el('tr', { 'data-action': view.actionId },
      el('td', { class: 'id' }, el('a', { href: `#/actions/${view.actionId}` }, view.actionId)),
      el('td', {}, `${view.actionType} ${view.entityType}`),
      el('td', {}, statusCell(view.status)),
      el('td', {}, progressOf(view)),
      el('td', { class: 'num' }, number(view.succeeded)),
      el('td', { class: 'num' }, number(view.failed)),
      el('td', { class: 'num' }, number(view.skipped)),
      el('td', { class: 'num' }, rate === undefined ? '–' : rate.toFixed(1)),
      el('td', {}, when(view.startedAt)),
      el('td', {}, when(view.completedAt)));
  };
  let reloading = null;
  let lastLoad = 0;
  let loads = 0;
  const load = async () => {
    lastLoad = Date.now();
    const mine = ++loads;
    const query = new URLSearchParams({ limit: String(LIST_PAGE), skip: String(skip) });
    if (status) query.set('status', status);
    if (entityType) query.set('entityType', entityType);
    if (actionType) query.set('actionType', actionType);
    try {
      const page = await api(`/bulk-actions?${query}`, { signal });
      if (mine !== loads) return; // a newer load answers for the page
      const shown = page.items;
      pager.replaceChildren(
        el('button', { type: 'button', class: 'secondary', id: 'list-newer', disabled: skip === 0,
          onclick: () => go(Math.max(0, skip - LIST_PAGE)) }, 'Newer'),
        el('span', { class: 'muted', id: 'list-range' },
          page.total ? `${skip + 1}–${skip + shown.length} of ${number(page.total)}` : ''),
        el('button', { type: 'button', class: 'secondary', id: 'list-older', disabled: skip + shown.length >= page.total,
          onclick: () => go(skip + LIST_PAGE) }, 'Older'));
      rows.clear();
      for (const view of shown) rows.set(view.actionId, view);
      body.replaceChildren(...shown.map(rowOf));
      if (!shown.length) body.append(el('tr', {}, el('td', { colspan: 10, class: 'muted' }, 'No action matches.')));
      problem.replaceChildren();
    } catch (error) {
      if (!signal.aborted) problem.replaceChildren(errorBox(error));
    }
  };
  load();
  // Live: the account's stream updates the rows it shows, and a new action reloads the page.
  follow('/bulk-actions/events', signal, (message) => {
    const data = message.data;
    const id = data.actionId;
    if (!id) return;
    if (typeof data.recordsPerSecond === 'number') rates.set(id, data.recordsPerSecond);
    const known = rows.get(id);
    if (!known) {
      // A new action, or one the filters hide: the list is read again, at most every 5 s
      // (each read is charged to the account's request budget).
      const hidden = (status && data.status && data.status !== status) || (actionType && data.actionType && data.actionType !== actionType);
      if (!hidden && !reloading) {
        reloading = setTimeout(() => { reloading = null; load(); }, Math.max(500, 5000 - (Date.now() - lastLoad)));
      }
      return;
    }
    const next = { ...known, ...pick(data) };
    rows.set(id, next);
    const old = body.querySelector(`tr[data-action="${CSS.escape(id)}"]`);
    if (old) old.replaceWith(rowOf(next));
  }, (error) => problem.replaceChildren(errorBox(error)));
}

// The counts a stream message carries, under the view's names.
function pick(data) {
  const out = {};
  for (const name of ['status', 'progress', 'processedRecords', 'succeeded', 'failed', 'skipped', 'unprocessed', 'startedAt', 'completedAt']) {
    if (data[name] !== undefined) out[name] = data[name];
  }
  if (data.counts) Object.assign(out, pick(data.counts));
  if (data.total !== undefined && data.processed !== undefined) {
    out.progress = data.total ? data.processed / data.total : 1;
    out.processedRecords = data.processed;
  }
  return out;
}

// ---- one action -----------------------------------------------------------------------

function renderAction(main, id, signal) {
  const problem = el('div', { id: 'action-problem' });
  const heading = el('h2', {}, 'Action ', el('span', { class: 'muted' }, id));
  const statusLine = el('p', { id: 'action-status' });
  const bar = el('progress', { id: 'action-progress', class: 'wide', max: 1, value: 0, 'aria-label': 'Progress' });
  const percent = el('span', { id: 'action-percent' }, '0%');
  const cards = el('div', { class: 'cards', id: 'action-counts' });
  const reasons = el('tbody', { id: 'action-reasons' });
  const chart = svg('svg', { class: 'chart', viewBox: '0 0 720 160', role: 'img', 'aria-label': 'Records per second over time' });
  const chartNote = el('p', { class: 'muted', id: 'chart-note' }, 'Records per second appear while the action runs.');
  const controls = el('div', { class: 'row', id: 'action-controls' });
  const downloads = el('div', { class: 'row', id: 'downloads' });
  const logsBox = el('section', { 'aria-labelledby': 'logs-title' });
  main.append(heading, problem, statusLine, el('div', { class: 'row' }, bar, percent), cards,
    el('div', { class: 'grid' },
      el('section', { 'aria-labelledby': 'rate-title' }, el('h3', { id: 'rate-title' }, 'Records per second'), chart, chartNote),
      el('section', { 'aria-labelledby': 'reasons-title' }, el('h3', { id: 'reasons-title' }, 'Outcomes by reason'),
        el('div', { class: 'table-wrap' }, el('table', { class: 'compact' },
          el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Code'), el('th', { scope: 'col', class: 'num' }, 'Records'))),
          reasons)))),
    el('h3', {}, 'Control'), controls,
    el('h3', {}, 'Result files'), downloads, logsBox);

  let view = null;
  const samples = [];
  const show = () => {
    if (!view) return;
    const value = typeof view.progress === 'number' ? view.progress : 0;
    bar.value = value;
    percent.textContent = `${Math.floor(value * 100)}%`;
    bar.setAttribute('aria-label', `Progress ${Math.floor(value * 100)}%`);
    statusLine.replaceChildren('Status: ', statusCell(view.status), ` · ${view.actionType} ${view.entityType}`,
      ` · ${number(view.processedRecords)} of ${number(view.totalRecords)} records`,
      view.scheduledFor ? ` · scheduled for ${when(view.scheduledFor)}` : '',
      view.retryOf ? ' · retry of ' : '', view.retryOf ? el('a', { href: `#/actions/${view.retryOf}` }, view.retryOf) : '');
    cards.replaceChildren(...OUTCOMES.map((name) => el('div', { class: 'card', id: `count-${name}` },
      el('div', { class: 'muted' }, name), el('div', { class: 'value' }, number(view[name])))));
    const byReason = Object.entries(view.byReason || {}).sort((a, b) => b[1] - a[1]);
    reasons.replaceChildren(...(byReason.length ? byReason.map(([code, count]) =>
      el('tr', {}, el('td', {}, code), el('td', { class: 'num' }, number(count))))
      : [el('tr', {}, el('td', { colspan: 2, class: 'muted' }, 'Nothing settled yet.'))]));
    if (!controls.firstChild) {
      renderControls(controls, view.actionId, signal, (next) => { view = { ...view, ...next }; show(); }, problem);
    }
    updateControls(controls, view);
  };
  const sample = (processed, rate) => {
    samples.push({ at: Date.now(), processed, rate });
    if (samples.length > 600) samples.shift();
    drawChart(chart, samples);
    chartNote.textContent = samples.length > 1 ? `Latest: ${rate.toFixed(1)} records/s` : chartNote.textContent;
  };

  api(`/bulk-actions/${encodeURIComponent(id)}`, { signal }).then((loaded) => {
    view = loaded;
    show();
    renderDownloads(downloads, id, problem);
    renderLogs(logsBox, id, signal);
  }).catch((error) => {
    if (signal.aborted) return;
    // Nothing of an action that cannot be read: its error alone.
    main.replaceChildren(heading, problem);
    problem.replaceChildren(errorBox(error));
    pageController.abort();
  });

  follow(`/bulk-actions/${encodeURIComponent(id)}/events`, signal, (message) => {
    const data = message.data;
    if (message.event === 'snapshot') {
      view = { ...(view || {}), ...data };
    } else if (FINISHED.includes(message.event)) {
      view = { ...(view || {}), ...pick(data), status: message.event };
      if (data.byReason) view.byReason = data.byReason;
      show();
      announce(`Action ${message.event}`);
      renderLogs(logsBox, id, signal);
      return 'finished';
    } else {
      view = { ...(view || {}), ...pick(data) };
      if (message.event !== 'progress') announce(`Action ${message.event}`);
    }
    if (typeof data.recordsPerSecond === 'number') sample(view.processedRecords || 0, data.recordsPerSecond);
    if (data.byReason) view.byReason = data.byReason;
    show();
    return undefined;
  }, (error) => problem.replaceChildren(errorBox(error)));
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function drawChart(chart, samples) {
  const width = 720;
  const height = 160;
  const top = Math.max(1, ...samples.map((s) => s.rate));
  const first = samples[0].at;
  const span = Math.max(1, samples[samples.length - 1].at - first);
  const points = samples.map((s) => {
    const x = 40 + ((s.at - first) / span) * (width - 50);
    const y = height - 20 - (s.rate / top) * (height - 40);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  }).join(' ');
  const axis = svg('text', { x: 4, y: 16 });
  axis.textContent = `${Math.round(top)}/s`;
  const zero = svg('text', { x: 4, y: height - 22 });
  zero.textContent = '0';
  const seconds = svg('text', { x: width - 60, y: height - 4 });
  seconds.textContent = `${Math.round(span / 1000)} s`;
  chart.replaceChildren(axis, zero, seconds, svg('polyline', { points }));
}

// Built once per page (a form being typed in must not be replaced by the next progress
// message); `updateControls` enables what the action's status allows.
function renderControls(box, actionId, signal, onChange, problem) {
  const command = (name, label, question, style) => el('button', {
    type: 'button', id: `action-${name}`, class: style, 'data-command': name,
    onclick: async () => {
      if (!confirm(question)) return;
      try {
        const next = await api(`/bulk-actions/${encodeURIComponent(actionId)}/${name}`, { method: 'POST', body: {}, signal });
        onChange(next);
        announce(`${label} sent`);
      } catch (error) {
        problem.replaceChildren(errorBox(error));
      }
    },
  }, label);
  const scheduled = el('input', { id: 'patch-scheduled', type: 'datetime-local' });
  const perMinute = el('input', { id: 'patch-rate', type: 'number', min: 1, inputmode: 'numeric' });
  const batchSize = el('input', { id: 'patch-batch', type: 'number', min: 1, inputmode: 'numeric' });
  const interval = el('input', { id: 'patch-interval', type: 'number', min: 1, inputmode: 'numeric' });
  const patch = el('form', {
    class: 'form',
    onsubmit: async (event) => {
      event.preventDefault();
      const body = {};
      if (scheduled.value) body.scheduledFor = new Date(scheduled.value).toISOString();
      if (perMinute.value) body.maxRecordsPerMinute = Number(perMinute.value);
      if (batchSize.value && interval.value) body.pacing = { batchSize: Number(batchSize.value), intervalSeconds: Number(interval.value) };
      if (!!batchSize.value !== !!interval.value) {
        problem.replaceChildren(errorBox(new Error('A pace needs both its batch size and its interval.')));
        return;
      }
      if (!Object.keys(body).length) return;
      if (!confirm(`Change this action: ${JSON.stringify(body)}?`)) return;
      try {
        onChange(await api(`/bulk-actions/${encodeURIComponent(actionId)}`, { method: 'PATCH', body, signal }));
        announce('Change saved');
      } catch (error) {
        problem.replaceChildren(errorBox(error));
      }
    },
  },
  el('label', { for: 'patch-scheduled' }, 'Start at', scheduled),
  el('label', { for: 'patch-rate' }, 'Records per minute', perMinute),
  el('label', { for: 'patch-batch' }, 'Batch size', batchSize),
  el('label', { for: 'patch-interval' }, 'Every (s)', interval),
  el('button', { type: 'submit', class: 'secondary', id: 'action-patch' }, 'Change schedule or pace'));
  box.replaceChildren(
    command('pause', 'Pause', 'Pause this action? It keeps its place and goes on when resumed.', 'secondary'),
    command('resume', 'Resume', 'Resume this action?', 'secondary'),
    command('cancel', 'Cancel', 'Cancel this action? Records not yet applied end unprocessed. This cannot be undone.', 'danger'),
    patch);
}

function updateControls(box, view) {
  const finished = FINISHED.includes(view.status);
  const ending = finished || view.status === 'cancelling';
  const allowed = {
    pause: !ending && view.status !== 'paused',
    resume: !ending && view.status === 'paused',
    cancel: !ending,
    patch: !ending,
  };
  for (const [name, enabled] of Object.entries(allowed)) {
    const button = box.querySelector(`#action-${name}`);
    if (button) button.disabled = !enabled;
  }
}

function renderDownloads(box, id, problem) {
  const buttons = [];
  for (const status of OUTCOMES) {
    for (const format of ['csv', 'ndjson']) {
      buttons.push(el('button', {
        type: 'button', class: 'secondary', id: `download-${status}-${format}`,
        onclick: async () => {
          try {
            const response = await resultsOf(id, status, format);
            const blob = await response.blob();
            const link = el('a', { href: URL.createObjectURL(blob), download: `${id}-${status}.${format}` });
            document.body.append(link);
            link.click();
            link.remove();
            setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
            announce(`Downloaded the ${status} rows`);
          } catch (error) {
            problem.replaceChildren(errorBox(error));
          }
        },
      }, `${status} (${format.toUpperCase()})`));
    }
  }
  box.replaceChildren(...buttons);
}

// A finished action's file, once its last records are projected (`results_not_ready`
// says they are not yet: a moment after the final message).
async function resultsOf(id, status, format) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await api(`/bulk-actions/${encodeURIComponent(id)}/results?status=${status}&format=${format}`, { raw: true });
    } catch (error) {
      if (!(error instanceof ApiError) || error.code !== 'results_not_ready' || attempt >= 30 || error.details?.quarantined) throw error;
      await sleep(1000);
    }
  }
}

function renderLogs(box, id, signal) {
  const statusSelect = el('select', { id: 'logs-status' }, options(OUTCOMES, '', 'Every status'));
  const body = el('tbody', { id: 'logs-body' });
  const problem = el('div');
  const previous = el('button', { type: 'button', class: 'secondary', id: 'logs-previous', disabled: true }, 'Previous');
  const next = el('button', { type: 'button', class: 'secondary', id: 'logs-next', disabled: true }, 'Next');
  const pageNote = el('span', { class: 'muted', id: 'logs-page' });
  const cursors = [null];
  let page = 0;
  const load = async () => {
    const query = new URLSearchParams({ limit: String(LOG_PAGE) });
    if (statusSelect.value) query.set('status', statusSelect.value);
    if (cursors[page]) query.set('cursor', cursors[page]);
    try {
      const result = await api(`/bulk-actions/${encodeURIComponent(id)}/logs?${query}`, { signal });
      body.replaceChildren(...result.items.map((line) => el('tr', {},
        el('td', { class: 'num' }, line.index), el('td', {}, line.email || '–'), el('td', {}, line.status),
        el('td', {}, line.code), el('td', {}, line.message || ''))));
      if (!result.items.length) body.append(el('tr', {}, el('td', { colspan: 5, class: 'muted' }, 'No record with this status.')));
      cursors[page + 1] = result.nextCursor || null;
      next.disabled = !result.nextCursor;
      previous.disabled = page === 0;
      pageNote.textContent = `Page ${page + 1}`;
      problem.replaceChildren();
    } catch (error) {
      if (!signal.aborted) problem.replaceChildren(errorBox(error));
    }
  };
  statusSelect.addEventListener('change', () => { cursors.length = 1; page = 0; load(); });
  next.addEventListener('click', () => { page += 1; load(); });
  previous.addEventListener('click', () => { page = Math.max(0, page - 1); load(); });
  box.replaceChildren(
    el('h3', { id: 'logs-title' }, 'Records'),
    el('div', { class: 'form' }, el('label', { for: 'logs-status' }, 'Status', statusSelect)),
    problem,
    el('div', { class: 'table-wrap' }, el('table', { id: 'logs' },
      el('thead', {}, el('tr', {}, el('th', { scope: 'col', class: 'num' }, 'Index'), el('th', { scope: 'col' }, 'Key'),
        el('th', { scope: 'col' }, 'Status'), el('th', { scope: 'col' }, 'Code'), el('th', { scope: 'col' }, 'Message'))),
      body)),
    el('div', { class: 'row' }, previous, pageNote, next));
  load();
}

// ---- submit a file --------------------------------------------------------------------

function contentTypeOf(name) {
  const lower = name.toLowerCase();
  if (lower.endsWith('.csv')) return 'text/csv';
  if (lower.endsWith('.ndjson') || lower.endsWith('.jsonl')) return 'application/x-ndjson';
  return null;
}

function renderSubmit(main, signal) {
  const file = el('input', { id: 'submit-file', type: 'file', accept: '.csv,.ndjson,.jsonl', required: true });
  const entity = el('select', { id: 'submit-entity' }, options(ENTITIES, 'contact'));
  const action = el('select', { id: 'submit-action' }, options(ACTION_TYPES, 'upsert'));
  const scheduled = el('input', { id: 'submit-scheduled', type: 'datetime-local' });
  const batchSize = el('input', { id: 'submit-batch', type: 'number', min: 1, inputmode: 'numeric' });
  const interval = el('input', { id: 'submit-interval', type: 'number', min: 1, inputmode: 'numeric' });
  const perMinute = el('input', { id: 'submit-rate', type: 'number', min: 1, inputmode: 'numeric' });
  const bar = el('progress', { id: 'upload-progress', class: 'wide', max: 1, value: 0, 'aria-label': 'Upload progress' });
  const outcome = el('div', { id: 'submit-outcome' });
  const button = el('button', { type: 'submit', id: 'submit-button' }, 'Upload and submit');
  const form = el('form', {
    class: 'form stacked',
    onsubmit: (event) => {
      event.preventDefault();
      const chosen = file.files[0];
      if (!chosen) return;
      const contentType = contentTypeOf(chosen.name);
      if (!contentType) {
        outcome.replaceChildren(errorBox(new Error('Choose a .csv, .ndjson or .jsonl file.')));
        return;
      }
      const query = new URLSearchParams({ entityType: entity.value, actionType: action.value });
      if (scheduled.value) query.set('scheduledFor', new Date(scheduled.value).toISOString());
      if (batchSize.value) query.set('pacingBatchSize', batchSize.value);
      if (interval.value) query.set('pacingIntervalSeconds', interval.value);
      if (perMinute.value) query.set('maxRecordsPerMinute', perMinute.value);
      // XMLHttpRequest, not fetch: only it reports the upload's progress.
      const request = new XMLHttpRequest();
      request.open('POST', `/bulk-actions?${query}`);
      request.setRequestHeader('Authorization', `Bearer ${apiKey()}`);
      request.setRequestHeader('content-type', contentType);
      request.upload.addEventListener('progress', (progress) => {
        if (progress.lengthComputable) bar.value = progress.loaded / progress.total;
      });
      request.addEventListener('load', () => {
        button.disabled = false;
        let reply = null;
        try { reply = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
        if (request.status === 202 && reply) {
          bar.value = 1;
          outcome.replaceChildren(el('div', { class: 'notice', role: 'status' },
            `Accepted: ${number(reply.totalRecords)} records. `,
            el('a', { href: `#/actions/${reply.actionId}`, id: 'submitted-action' }, `Watch action ${reply.actionId}`)));
          announce('Upload accepted');
        } else {
          const error = reply && reply.error
            ? new ApiError(request.status, reply.error.code, reply.error.message, reply.error.details)
            : new ApiError(request.status, `http_${request.status}`, request.statusText || 'upload failed');
          outcome.replaceChildren(errorBox(error));
        }
      });
      request.addEventListener('error', () => {
        button.disabled = false;
        outcome.replaceChildren(errorBox(new Error('The upload was cut off.')));
      });
      signal.addEventListener('abort', () => request.abort(), { once: true });
      button.disabled = true;
      outcome.replaceChildren();
      request.send(chosen);
    },
  },
  el('label', { for: 'submit-file' }, 'File (CSV or NDJSON)', file),
  el('label', { for: 'submit-entity' }, 'Entity type', entity),
  el('label', { for: 'submit-action' }, 'Action', action),
  el('label', { for: 'submit-scheduled' }, 'Start at (optional)', scheduled),
  el('label', { for: 'submit-batch' }, 'Pacing: records per batch (optional)', batchSize),
  el('label', { for: 'submit-interval' }, 'Pacing: seconds between batches (optional)', interval),
  el('label', { for: 'submit-rate' }, 'Records per minute (optional)', perMinute),
  el('div', {}, button),
  el('label', { for: 'upload-progress' }, 'Upload', bar));
  main.append(el('h2', {}, 'Submit a file'), form, outcome);
}

// ---- start ----------------------------------------------------------------------------

document.getElementById('sign-out').addEventListener('click', () => signOut());
// The skip link moves focus; it is not a route.
document.querySelector('.skip').addEventListener('click', (event) => {
  event.preventDefault();
  document.getElementById('main').focus();
});
window.addEventListener('hashchange', route);
route();
