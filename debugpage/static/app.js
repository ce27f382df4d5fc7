// channelsapi debugger: builds request forms from schema.json, sends them
// over the WebSocket endpoint or as REST requests, and logs every frame and
// request in both directions. One connection (A, window.ws) or two side by
// side, each with its own credential, subscriptions and log.
// Plain browser JavaScript, no dependencies, no build step.
(function () {
  'use strict';

  const MAX_ENTRIES = 2000; // per connection
  const PREVIEW_CHARS = 160;
  const WRITE_ACTIONS = new Set(['create', 'update', 'patch']);
  const SUB_ACTIONS = new Set(['subscribe', 'unsubscribe']);
  const QUERY_ACTIONS = new Set(['list', 'subscribe_list']); // take the filter grammar
  const CONDITIONAL_ACTIONS = new Set(['update', 'patch', 'delete']); // take if_match
  const STATUS_TEXT = {
    200: 'OK', 201: 'Created', 204: 'No Content', 400: 'Bad Request', 401: 'Unauthorized',
    403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 409: 'Conflict', 412: 'Precondition Failed',
    413: 'Too Large', 415: 'Unsupported Media Type', 422: 'Unprocessable', 429: 'Too Many Requests',
    500: 'Server Error', 503: 'Unavailable',
  };
  const CLOSE_TEXT = {
    1000: 'normal closure', 1001: 'going away: the server is shutting down',
    1005: 'no status', 1006: 'connection lost (no close frame)',
    1008: 'policy violation: authorization withdrawn', 1009: 'frame too big',
    1011: 'internal server error', 1013: 'client too slow: load the state again (resync)',
  };
  // A subprotocol is an HTTP token (RFC 6455 section 4.1).
  const TOKEN_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  const STORAGE_KEY = 'channelsapi.debugger';

  // ---------------------------------------------------------------- helpers

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  // el builds an element; attrs: class, text, data-* and other attributes,
  // on<event> listeners. Text is always set as text, never parsed as HTML.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function show(node, visible) { node.hidden = !visible; }

  function parseJSON(text) {
    try { return { ok: true, value: JSON.parse(text) }; } catch (e) { return { ok: false, error: e.message }; }
  }

  function isObject(v) { return v !== null && typeof v === 'object' && !Array.isArray(v); }

  function compact(v) {
    const s = typeof v === 'string' ? v : JSON.stringify(v);
    return s === undefined ? '' : (s.length > PREVIEW_CHARS ? s.slice(0, PREVIEW_CHARS) + '…' : s);
  }

  function clock(d) {
    const p = (n, w) => String(n).padStart(w || 2, '0');
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }

  // ridText shows a request_id: a string as it is, anything else as JSON.
  function ridText(rid) { return typeof rid === 'string' ? rid : JSON.stringify(rid); }

  function statusText(st) { return `${st} ${STATUS_TEXT[st] || ''}`.trim(); }

  // scalar turns typed text into a number when it is one, else keeps the text,
  // so that the server sees what was typed and answers type errors itself.
  function scalar(text, type) {
    const t = text.trim();
    if ((type === 'integer' && /^-?\d+$/.test(t) && Number.isSafeInteger(Number(t))) ||
        (type === 'number' && t !== '' && Number.isFinite(Number(t)))) {
      return Number(t);
    }
    return text;
  }

  // ----------------------------------------------------------------- state

  const state = {
    schema: null,          // schema.json: {websocket_path, subprotocols, streams}
    streams: new Map(),    // name -> stream description
    conns: [],             // the connections: A, and B while it is open
    target: null,          // the connection the form sends as
    transport: 'ws',       // what the form sends: 'ws' frames or 'rest' requests
    entrySeq: 0,
    rawDirty: false,       // the request editor holds text the user typed
    syncing: false,        // the form is being filled from the request editor
    fieldsOf: '',          // stream whose fields the form shows
    queryOf: '',           // stream whose filters, ordering and search the form shows
    pages: null,           // {conn, stream, action, next, previous} of the form's last REST list
    idPrefix: Math.random().toString(36).slice(2, 6),
    idSeq: 0,
  };

  function freshID() { state.idSeq++; return `${state.idPrefix}-${state.idSeq}`; }

  // ----------------------------------------------------------------- schema

  async function loadSchema() {
    const res = await fetch('schema.json', { cache: 'no-store', headers: { Accept: 'application/json' } });
    if (!res.ok) throw new Error(`schema.json answered HTTP ${res.status}`);
    const doc = await res.json();
    if (!isObject(doc) || !Array.isArray(doc.streams)) throw new Error('schema.json has no "streams" list');
    return doc;
  }

  function applySchema(doc) {
    const before = JSON.stringify(state.schema);
    state.schema = doc;
    state.streams = new Map(doc.streams.map((s) => [s.name, s]));
    if (before === JSON.stringify(doc)) return;

    const sel = $('#stream');
    const prev = sel.value;
    sel.replaceChildren(...doc.streams.map((s) => el('option', { value: s.name, text: s.name })));
    if (state.streams.has(prev)) sel.value = prev;

    const filter = $('#filter-stream');
    const fprev = filter.value;
    filter.replaceChildren(el('option', { value: '', text: 'all streams' }),
      ...doc.streams.map((s) => el('option', { value: s.name, text: s.name })),
      el('option', { value: '\u0000', text: '(no stream)' }));
    filter.value = fprev;
    if (filter.value !== fprev) filter.value = '';

    state.fieldsOf = state.queryOf = '';
    showSchemaError(doc.streams.length ? '' : 'No stream is added: add ViewSets with channelsapi.Add.');
    for (const c of state.conns) showCredential(c);
    onStreamChange();
  }

  function showSchemaError(msg) {
    const box = $('#schema-error');
    box.textContent = msg;
    show(box, msg !== '');
  }

  function currentStream() { return state.streams.get($('#stream').value) || null; }

  function currentAction() {
    const s = currentStream();
    const name = $('#action').value;
    return (s && s.actions.find((a) => a.name === name)) || null;
  }

  // ------------------------------------------------------------ connections
  //
  // Connection A is always there; B ("as another user") is opened from the
  // page. Each has its own credential, socket, pending requests,
  // subscriptions, positions, log, and the last version of each object it
  // has seen (for the differences of updates). The elements of A have plain
  // ids (#log, #conn, #subscriptions, ...), those of B the suffix "-b".

  function newConn(id) {
    const c = {
      id, sfx: id === 'a' ? '' : '-' + id, label: id.toUpperCase(),
      cred: { mode: 'bearer', token: '', cookie: '' },
      ws: null,
      manual: false,         // the user disconnected: no reconnect
      attempt: 0,            // reconnect attempts since the last open
      retryTimer: 0,
      tickTimer: 0,
      everOpen: false,
      opens: 0,              // sockets of this connection that opened
      refused: null,         // {status, ...}: the server refused the socket; no retry until the credential changes
      probes: 0,             // sequence of the refusal probes
      pending: new Map(),    // JSON of request_id -> [sent request, ...] awaiting a reply
      subs: new Map(),       // key -> subscription
      known: new Map(),      // stream -> {epoch, offset}: the furthest position of the stream seen on this connection
      objects: new Map(),    // stream + pk -> the last version of the object seen
      etags: new Map(),      // stream + pk -> the ETag of the last version seen
      entries: [],
      sendMeta: null,        // what the page knows about the frame it sends next
    };
    c.$ = (name) => document.getElementById(name + c.sfx);
    return c;
  }

  // alive tells whether c is still open on the page: the callbacks of a
  // closed connection (its socket's last events, a response in flight)
  // change nothing.
  function alive(c) { return state.conns.includes(c); }

  function connByID(id) { return state.conns.find((c) => c.id === id) || null; }

  function openConn(id, cred) {
    const c = newConn(id);
    if (cred) Object.assign(c.cred, cred);
    state.conns.push(c);
    $('#sessions').append(sessionNode(c));
    $('#sessions').dataset.count = String(state.conns.length);
    wireSession(c);
    showCredential(c);
    renderSubs(c);
    renderTargets();
    updateLogCount();
    saveCredentials();
    connect(c);
    return c;
  }

  function closeConn(c) {
    c.manual = true;
    c.probes++;
    clearTimers(c);
    state.conns = state.conns.filter((x) => x !== c);
    if (c.ws && c.ws.readyState <= WebSocket.OPEN) c.ws.close(1000, 'closed from the debugger');
    if (c.cred.mode === 'cookie' && c.cred.cookie && !state.conns.some((o) => o.cred.mode === 'cookie' && o.cred.cookie === c.cred.cookie)) {
      expireCookie(c.cred.cookie);
    }
    c.$('session').remove();
    $('#sessions').dataset.count = String(state.conns.length);
    if (state.target === c) state.target = state.conns[0];
    if (state.pages && state.pages.conn === c) state.pages = null;
    showPages();
    renderTargets();
    updateLogCount();
    saveCredentials();
    updateSendState();
    $('#add-conn').focus();
  }

  // sessionNode builds the pane of a connection: its bar (credential,
  // state), subscriptions and log.
  function sessionNode(c) {
    const id = (n) => n + c.sfx;
    return el('section', { class: 'session', id: id('session'), 'data-conn': c.id, 'aria-label': `Connection ${c.label}` },
      el('div', { class: 'session-head' },
        el('h2', { class: 'session-name' },
          el('span', { class: 'conn-badge', text: c.label }),
          el('span', { id: id('who'), class: 'who' })),
        el('div', { id: id('conn'), class: 'conn', 'data-state': 'closed' },
          el('span', { id: id('conn-live'), class: 'sr-only', role: 'status' }),
          el('span', { class: 'dot', 'aria-hidden': 'true' }),
          el('span', { id: id('conn-text'), class: 'conn-text', text: 'not connected' }),
          el('code', { id: id('conn-url'), class: 'conn-url' })),
        el('button', { id: id('conn-toggle'), type: 'button', text: 'Connect now' }),
        c.id === 'a' ? null : el('button', {
          id: id('conn-close'), type: 'button', class: 'mini', title: `Close connection ${c.label}`,
          'aria-label': `Close connection ${c.label}`, text: '×',
        })),
      el('form', { id: id('cred'), class: 'cred', autocomplete: 'off', 'aria-label': `Credential of connection ${c.label}` },
        el('select', { id: id('cred-mode'), 'aria-label': 'How the credential is sent' },
          el('option', { value: 'bearer', text: 'Bearer token' }),
          el('option', { value: 'cookie', text: 'Cookie' })),
        el('input', { id: id('cred-cookie'), class: 'cred-cookie', placeholder: 'cookie name', spellcheck: 'false', 'aria-label': 'Cookie name', hidden: true }),
        el('input', { id: id('cred-token'), class: 'cred-token', type: 'password', placeholder: 'token', spellcheck: 'false', autocomplete: 'off', 'aria-label': 'Token' }),
        el('button', { id: id('sign-in'), type: 'submit', text: 'Sign in' }),
        el('button', { id: id('sign-out'), type: 'button', text: 'Sign out' })),
      el('p', { id: id('cred-hint'), class: 'hint cred-hint' }),
      el('div', { id: id('refusal'), class: 'banner error refusal', role: 'alert', hidden: true }),
      el('details', { class: 'subs', open: true },
        el('summary', {}, 'Subscriptions ', el('span', { id: id('sub-count'), class: 'count', text: '0' })),
        el('ul', { id: id('subscriptions'), class: 'sub-list' }),
        el('p', { id: id('sub-empty'), class: 'hint' }, 'None yet. Send ', el('b', { text: 'subscribe' }), ', ',
          el('b', { text: 'subscribe_instance' }), ' or ', el('b', { text: 'subscribe_list' }), ' as this connection.')),
      el('div', { id: id('log'), class: 'log', role: 'log', 'aria-live': 'off', 'aria-label': `Frames of connection ${c.label}`, tabindex: '0' }),
      el('p', { id: id('log-empty'), class: 'log-empty', text: 'No frames yet. Frames and requests sent as this connection, and every frame the server sends it, appear here.' }));
  }

  function wireSession(c) {
    c.$('conn-toggle').addEventListener('click', () => {
      const st = c.$('conn').dataset.state;
      if (st === 'open' || st === 'connecting') disconnect(c);
      else { c.attempt = 0; connect(c); }
    });
    const close = c.$('conn-close');
    if (close) close.addEventListener('click', () => closeConn(c));
    c.$('cred-mode').addEventListener('change', () => { show(c.$('cred-cookie'), c.$('cred-mode').value === 'cookie'); });
    c.$('cred').addEventListener('submit', (ev) => {
      ev.preventDefault();
      setCredential(c, { mode: c.$('cred-mode').value, token: c.$('cred-token').value.trim(), cookie: c.$('cred-cookie').value.trim() });
    });
    c.$('sign-out').addEventListener('click', () => setCredential(c, { mode: c.cred.mode, token: '', cookie: c.cred.cookie }));
  }

  // renderTargets shows the "send as" choice while two connections are open.
  function renderTargets() {
    const box = $('#targets');
    box.replaceChildren(...state.conns.map((c) => el('label', { class: 'chip target', 'data-conn': c.id },
      el('input', {
        type: 'radio', name: 'target', value: c.id, id: 'target-' + c.id, checked: state.target === c,
        onchange: () => { state.target = c; updateSendState(); },
      }),
      `${c.label} `, el('span', { class: 'who', text: whoText(c) }))));
    show($('#target-row'), state.conns.length > 1);
    $('#add-conn').hidden = state.conns.length > 1;
  }

  // ------------------------------------------------------------ credentials
  //
  // A credential is a token sent the way the application reads it: as a
  // bearer token (the WebSocket subprotocols "bearer, <token>" when the
  // server selects "bearer", the Authorization header on REST), or as a
  // cookie the page sets before each connect and request. The credentials
  // are kept in the tab's session storage.

  function setCredential(c, cred) {
    const invalid = credentialError(cred);
    if (invalid) {
      c.$('cred-hint').textContent = invalid;
      c.$('cred-token').setAttribute('aria-invalid', 'true');
      return;
    }
    c.$('cred-token').removeAttribute('aria-invalid');
    const prev = c.cred;
    if (prev.mode === 'cookie' && prev.cookie && (cred.mode !== 'cookie' || cred.cookie !== prev.cookie || !cred.token)) {
      expireCookie(prev.cookie);
    }
    c.cred = cred;
    saveCredentials();
    showCredential(c);
    renderTargets();
    logSystem(c, cred.token ? `signed in with a ${cred.mode === 'cookie' ? `cookie "${cred.cookie}"` : 'bearer token'}: connecting again`
      : 'signed out: connecting again as anonymous');
    // A new credential needs a new socket: the server authenticates the
    // upgrade.
    c.attempt = 0;
    if (c.ws && c.ws.readyState <= WebSocket.OPEN) {
      c.reconnectNow = true;
      c.ws.close(1000, 'credential changed');
    } else {
      connect(c);
    }
  }

  function whoText(c) {
    if (!c.cred.token) return 'anonymous';
    const t = c.cred.token;
    return (c.cred.mode === 'cookie' ? 'cookie ' : 'token ') + (t.length > 8 ? t.slice(0, 6) + '…' : t);
  }

  function showCredential(c) {
    c.$('cred-mode').value = c.cred.mode;
    c.$('cred-token').value = c.cred.token;
    c.$('cred-cookie').value = c.cred.cookie;
    show(c.$('cred-cookie'), c.cred.mode === 'cookie');
    c.$('who').textContent = whoText(c);
    c.$('sign-out').disabled = !c.cred.token;
    const hint = c.$('cred-hint');
    if (c.cred.mode === 'bearer' && c.cred.token && !bearerSubprotocol()) {
      hint.textContent = 'The server selects no "bearer" subprotocol (WithSubprotocols), so the socket opens without the token; REST requests send it as Authorization: Bearer.';
    } else if (c.cred.mode === 'cookie' && c.cred.token) {
      hint.textContent = 'The tab has one cookie jar: a connection that opens, or a request sent, after another connection set its cookie sends that cookie.';
    } else {
      hint.textContent = '';
    }
  }

  function bearerSubprotocol() {
    return !!state.schema && Array.isArray(state.schema.subprotocols) && state.schema.subprotocols.includes('bearer');
  }

  function saveCredentials() {
    const saved = { conns: state.conns.map((c) => ({ id: c.id, cred: c.cred })) };
    try { sessionStorage.setItem(STORAGE_KEY, JSON.stringify(saved)); } catch (_) { /* storage refused: not kept */ }
  }

  function loadCredentials() {
    try {
      const v = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || 'null');
      return isObject(v) && Array.isArray(v.conns) ? v.conns.filter((x) => isObject(x) && isObject(x.cred) && (x.id === 'a' || x.id === 'b')) : [];
    } catch (_) {
      return [];
    }
  }

  // setCookie readies the tab's cookie jar, which both connections share,
  // for c, right before its socket opens or it sends a request: the cookie
  // of c's credential is set, and the cookies of the other connection's
  // credential that c does not use are removed, so that each connection is
  // who its own credential says.
  function setCookie(c) {
    const mine = c.cred.mode === 'cookie' && c.cred.cookie && c.cred.token ? c.cred.cookie : '';
    for (const o of state.conns) {
      if (o !== c && o.cred.mode === 'cookie' && o.cred.cookie && o.cred.cookie !== mine) expireCookie(o.cred.cookie);
    }
    if (mine) document.cookie = `${mine}=${c.cred.token}; path=/; SameSite=Strict`;
  }

  function expireCookie(name) { document.cookie = `${name}=; path=/; max-age=0; SameSite=Strict`; }

  // credentialError says why a credential cannot be sent, or returns ''.
  function credentialError(cred) {
    if (!cred.token) return '';
    if (cred.mode === 'cookie') {
      if (!TOKEN_CHARS.test(cred.cookie)) return 'A cookie name is letters, digits and !#$%&\'*+-.^_`|~.';
      if (/[\s;,"\\]/.test(cred.token)) return 'A cookie value cannot hold white space, ";", ",", a quote or a backslash.';
    }
    return '';
  }

  function authHeaders(c) {
    return c.cred.mode === 'bearer' && c.cred.token ? { Authorization: 'Bearer ' + c.cred.token } : {};
  }

  // ------------------------------------------------------------- connection

  function socketURL() {
    const path = (state.schema && state.schema.websocket_path) || '/ws';
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + path;
  }

  function endpointURL() {
    return location.origin + ((state.schema && state.schema.websocket_path) || '/ws');
  }

  function setConn(c, st, text) {
    if (!alive(c)) return;
    const box = c.$('conn');
    if (box.dataset.state !== st) {
      // Announced once per change of state, not at every tick of a countdown.
      c.$('conn-live').textContent = `Connection ${c.label}: ${st === 'waiting' ? 'reconnecting' : text}`;
    }
    box.dataset.state = st;
    c.$('conn-text').textContent = text;
    c.$('conn-url').textContent = socketURL();
    c.$('conn-toggle').textContent = st === 'open' || st === 'connecting' ? 'Disconnect' : 'Connect now';
    updateSendState();
  }

  function clearTimers(c) {
    clearTimeout(c.retryTimer);
    clearInterval(c.tickTimer);
    c.retryTimer = c.tickTimer = 0;
  }

  function connect(c) {
    clearTimers(c);
    c.manual = false;
    c.reconnectNow = false;
    c.probes++;
    c.refused = null;
    showRefusal(c);
    const url = socketURL();
    setConn(c, 'connecting', 'connecting…');
    let protocols = [];
    if (c.cred.mode === 'bearer' && c.cred.token && bearerSubprotocol()) {
      if (!TOKEN_CHARS.test(c.cred.token)) {
        setConn(c, 'closed', 'cannot send this token');
        logSystem(c, 'The token holds characters a WebSocket subprotocol cannot carry (only letters, digits and !#$%&\'*+-.^_`|~): the socket is not opened.', true);
        return;
      }
      protocols = ['bearer', c.cred.token];
    }
    setCookie(c);
    let sock;
    try {
      sock = new WebSocket(url, protocols);
    } catch (e) {
      logSystem(c, `cannot open ${url}: ${e.message}`, true);
      scheduleReconnect(c);
      return;
    }
    // Every frame sent on this socket is logged, also those sent from the
    // browser console with ws.send.
    const nativeSend = sock.send;
    sock.send = function (data) {
      if (this.readyState === WebSocket.OPEN) noteSent(c, data);
      return nativeSend.call(this, data);
    };
    let opened = false;
    c.ws = sock;
    if (c.id === 'a') window.ws = sock;
    sock.addEventListener('open', () => {
      if (c.ws !== sock || !alive(c)) return;
      opened = true;
      c.opens++;
      c.attempt = 0;
      setConn(c, 'open', 'connected');
      logSystem(c, `connected to ${url}` + (c.cred.token ? ` (${whoText(c)})` : ' (anonymous)'));
      if (c.everOpen) refreshSchema();
      c.everOpen = true;
      resubscribe(c);
    });
    sock.addEventListener('message', (ev) => {
      if (c.ws === sock && alive(c)) noteReceived(c, ev.data);
    });
    sock.addEventListener('close', (ev) => {
      if (c.ws !== sock || !alive(c)) return;
      if (opened) {
        const why = CLOSE_TEXT[ev.code];
        logSystem(c, `connection closed with ${ev.code}` + (why ? `: ${why}` : '') + (ev.reason ? ` (“${ev.reason}”)` : ''), ev.code !== 1000);
      }
      closed(c, opened);
    });
  }

  function closed(c, wasOpen) {
    for (const reqs of c.pending.values()) {
      for (const r of reqs) if (r.meta && r.meta.resub) c.subs.delete(r.meta.resub);
    }
    c.pending.clear();
    if (wasOpen) {
      const keep = $('#resubscribe').checked;
      for (const [key, sub] of c.subs) {
        if (!keep) { c.subs.delete(key); continue; }
        sub.state = 'lost';
        // Offsets whose epoch the page never learnt cannot be resumed from.
        if (sub.pos && sub.pos.epoch === null) sub.pos = null;
      }
      renderSubs(c);
    }
    c.known.clear();
    if (c.reconnectNow) {
      connect(c);
    } else if (c.manual) {
      setConn(c, 'closed', 'disconnected');
    } else if (!wasOpen) {
      probe(c);
    } else {
      scheduleReconnect(c);
    }
  }

  // probe finds out why the socket did not open. A browser tells a page
  // nothing about a refused handshake (the close code is 1006), but what
  // refuses it (the application's authentication, WithConnect, the origin
  // check) answers a plain GET of the endpoint with the same credential
  // too: with 401 or 403 the page shows the answer and stops retrying
  // until the credential changes. Anything else (the 400 of a plain GET
  // that reached the endpoint, a server that is down) is retried.
  async function probe(c) {
    const seq = ++c.probes;
    const url = endpointURL();
    let res = null;
    let body = '';
    try {
      setCookie(c);
      res = await fetch(url, { headers: Object.assign({ Accept: 'application/json' }, authHeaders(c)), credentials: 'same-origin', cache: 'no-store', redirect: 'manual' });
      body = await res.text();
    } catch (e) {
      res = null;
    }
    if (seq !== c.probes || c.manual || !alive(c)) return;
    if (res && (res.status === 401 || res.status === 403)) {
      c.refused = { status: res.status, body, authenticate: res.headers.get('WWW-Authenticate') || '' };
      setConn(c, 'refused', `refused: ${statusText(res.status)}`);
      logSystem(c, `cannot connect to ${socketURL()}: the server refused it with ${statusText(res.status)} ${body.trim()}` +
        ' (not retrying until the credential changes)', true);
      showRefusal(c);
      return;
    }
    if (c.attempt === 0) {
      const why = !res ? 'the server does not answer'
        : res.status === 400 ? 'the endpoint accepts this credential over HTTP (400: a plain GET is not a handshake); the browser\'s console says why the handshake failed'
          : `a plain GET of the endpoint answers ${statusText(res.status)} ${compact(body.trim())}`;
      logSystem(c, `cannot connect to ${socketURL()}: ${why}`, true);
    }
    scheduleReconnect(c);
  }

  function showRefusal(c) {
    const box = c.$('refusal');
    const r = c.refused;
    if (!r) { box.replaceChildren(); show(box, false); return; }
    const parsed = parseJSON(r.body);
    box.replaceChildren(
      el('div', { class: 'refusal-head' }, el('b', { text: `The server refused the connection: ${statusText(r.status)}` })),
      el('pre', { class: 'json refusal-body', text: parsed.ok ? JSON.stringify(parsed.value, null, 2) : r.body }),
      r.authenticate ? el('div', {}, 'WWW-Authenticate: ', el('code', { text: r.authenticate })) : null,
      el('div', { class: 'hint', text: r.status === 401 ? 'Sign in with a valid credential above: the page connects again when it changes.'
        : 'This credential may not connect. Change it above, or press Connect now to try again.' }));
    show(box, true);
  }

  // scheduleReconnect retries with exponential backoff: 0.5 s doubling up
  // to 10 s, with jitter so that many pages do not reconnect in step.
  function scheduleReconnect(c) {
    clearTimers(c);
    const delay = Math.min(10000, 500 * 2 ** c.attempt) * (0.8 + Math.random() * 0.4);
    c.attempt++;
    const at = Date.now() + delay;
    const tick = () => setConn(c, 'waiting', `reconnecting in ${Math.max(1, Math.ceil((at - Date.now()) / 1000))} s (attempt ${c.attempt})`);
    tick();
    c.tickTimer = setInterval(tick, 250);
    c.retryTimer = setTimeout(() => connect(c), delay);
  }

  function disconnect(c) {
    c.manual = true;
    c.probes++;
    clearTimers(c);
    if (c.ws && c.ws.readyState <= WebSocket.OPEN) c.ws.close(1000, 'closed from the debugger');
    else setConn(c, 'closed', 'disconnected');
  }

  async function refreshSchema() {
    try { applySchema(await loadSchema()); } catch (e) { showSchemaError(`Cannot reload the schema: ${e.message}`); }
  }

  // ----------------------------------------------------------------- frames

  // noteSent logs an outgoing frame and remembers it until its reply.
  function noteSent(c, data) {
    const meta = c.sendMeta;
    c.sendMeta = null;
    if (typeof data !== 'string') {
      addEntry(c, { dir: 'out', kind: 'sent', stream: null, text: `(binary frame, ${data.byteLength || data.size || 0} bytes)` });
      pushPending(c, 'null', { action: null, meta, sentAt: performance.now() });
      return;
    }
    const parsed = parseJSON(data);
    const frame = parsed.ok && isObject(parsed.value) ? parsed.value : null;
    const p = frame && isObject(frame.payload) ? frame.payload : null;
    const stream = frame && typeof frame.stream === 'string' ? frame.stream : null;
    const req = {
      stream,
      action: p && typeof p.action === 'string' ? p.action : null,
      pk: p ? p.pk : undefined,
      data: p ? p.data : undefined,
      rid: p && p.request_id !== undefined ? p.request_id : null,
      meta,
      sentAt: performance.now(),
    };
    pushPending(c, frame && p ? JSON.stringify(req.rid) : 'null', req);
    addEntry(c, {
      dir: 'out', kind: 'sent', stream, text: data, frame: parsed.ok ? parsed.value : undefined,
      action: req.action, rid: p ? req.rid : undefined, pk: req.pk, invalid: !parsed.ok,
      since: sinceOf(req.data) || undefined,
    });
  }

  function pushPending(c, key, req) {
    const list = c.pending.get(key) || [];
    list.push(req);
    c.pending.set(key, list);
  }

  // takePending returns the oldest request that a reply with this
  // request_id and action answers.
  function takePending(c, rid, action) {
    const key = JSON.stringify(rid === undefined ? null : rid);
    const list = c.pending.get(key);
    if (!list) return null;
    const i = list.findIndex((r) => r.action === action);
    if (i < 0) return null;
    const [req] = list.splice(i, 1);
    if (!list.length) c.pending.delete(key);
    return req;
  }

  function noteReceived(c, data) {
    if (typeof data !== 'string') {
      addEntry(c, { dir: 'in', kind: 'error', stream: null, text: '(binary frame)' });
      return;
    }
    const parsed = parseJSON(data);
    const frame = parsed.ok && isObject(parsed.value) ? parsed.value : null;
    const p = frame && isObject(frame.payload) ? frame.payload : null;
    const stream = frame && typeof frame.stream === 'string' ? frame.stream : null;
    if (!p) {
      addEntry(c, { dir: 'in', kind: 'error', stream, text: data, frame: parsed.ok ? parsed.value : undefined });
      return;
    }
    const action = typeof p.action === 'string' ? p.action : null;
    let kind = 'reply';
    let req = null;
    if ('response_status' in p && (req = takePending(c, p.request_id, action))) {
      kind = p.response_status >= 400 ? 'error' : 'reply';
    } else if (!('response_status' in p) && 'model' in p) {
      kind = 'event'; // channels-api subscription event
    } else if (isInstanceEvent(c, stream, p)) {
      kind = 'event'; // DCRF instance event, carries the subscribing request_id
    } else if (p.response_status >= 400) {
      kind = 'error';
    }
    const s = state.streams.get(stream);
    let pk = p.pk;
    if (kind === 'event' && pk === undefined && isObject(p.data)) {
      pk = 'pk' in p.data ? p.data.pk : s && s.pk ? p.data[s.pk] : undefined;
    }
    const offset = kind === 'event' && isOffset(p.offset) ? p.offset : undefined;
    const at = kind === 'reply' ? replyPosition(p) : null;
    const e = {
      dir: 'in', kind, stream, text: data, frame: parsed.value, action, pk,
      rid: 'request_id' in p ? p.request_id : undefined,
      sub: kind === 'event' ? subscriptionOf(c, stream, p.request_id) : undefined,
      status: p.response_status, latency: req ? performance.now() - req.sentAt : undefined,
      offset, position: at || undefined,
      recovered: kind === 'reply' && isObject(p.data) && typeof p.data.recovered === 'boolean' ? p.data.recovered : undefined,
    };
    if (stream !== null && (kind === 'event' || kind === 'reply' || p.response_status === 412)) {
      seeObjects(c, stream, kind, action, pk !== undefined ? pk : req ? req.pk : undefined, p, e);
    }
    if (typeof p.etag === 'string') e.etag = p.etag;
    if (p.replayed === true) e.replayed = true;
    if (stream !== null && e.etag) {
      const key = pk !== undefined && pk !== null ? pk : req && req.pk !== undefined ? req.pk : pkOf(s, p.data);
      if (key !== undefined && key !== null) c.etags.set(objectKey(stream, key), e.etag);
    }
    addEntry(c, e);
    if (offset !== undefined && stream !== null) eventReceived(c, stream, offset);
    if (req) onReply(c, req, p, stream);
  }

  function isInstanceEvent(c, stream, p) {
    if (p.request_id === undefined || p.request_id === null) return false;
    const rid = JSON.stringify(p.request_id);
    for (const sub of c.subs.values()) {
      if (sub.kind === 'instance' && sub.stream === stream && JSON.stringify(sub.rid) === rid) return true;
    }
    return false;
  }

  // subscriptionOf returns the kind of the subscription whose events carry
  // this request_id ("instance" or "query"), if the page knows it.
  function subscriptionOf(c, stream, rid) {
    if (rid === undefined || rid === null) return undefined;
    const key = JSON.stringify(rid);
    for (const sub of c.subs.values()) {
      if (sub.rid !== null && sub.stream === stream && JSON.stringify(sub.rid) === key) return sub.kind;
    }
    return undefined;
  }

  // onReply applies a reply to the page: subscriptions, the form's errors,
  // the form's values for "Load".
  function onReply(c, req, p, stream) {
    const ok = p.response_status < 300;
    const meta = req.meta || {};
    if (meta.resub && !ok) c.subs.delete(meta.resub);
    const at = ok && stream ? replyPosition(p) : null;
    if (at) notePosition(c, stream, at);
    if (ok && stream) {
      const pk = req.pk === undefined || req.pk === null ? null : req.pk;
      switch (req.action) {
        case 'subscribe':
        case 'unsubscribe': {
          const event = isObject(p.data) ? p.data.action : null;
          const key = subKey({ kind: 'group', stream, event, pk, rid: null });
          if (req.action === 'subscribe') addSub(c, key, { kind: 'group', stream, event, pk, rid: null }, req, p);
          else c.subs.delete(key);
          break;
        }
        case 'subscribe_instance':
          addSub(c, subKey({ kind: 'instance', stream, pk, rid: req.rid }),
            { kind: 'instance', stream, event: null, pk, rid: req.rid }, req, p);
          break;
        case 'unsubscribe_instance':
          c.subs.delete(subKey({ kind: 'instance', stream, pk, rid: req.rid }));
          break;
        case 'subscribe_list': {
          // Kept with its data: after a reconnect the page subscribes
          // again with the same filters and request_id (and a since of
          // its own).
          const data = Object.assign({}, isObject(req.data) ? req.data : {});
          delete data.since;
          addSub(c, subKey({ kind: 'query', stream, rid: req.rid }),
            { kind: 'query', stream, event: null, pk: null, rid: req.rid, data }, req, p);
          break;
        }
        case 'unsubscribe_list':
          c.subs.delete(subKey({ kind: 'query', stream, rid: req.rid }));
          break;
      }
    }
    renderSubs(c);
    if (meta.fill && ok && isObject(p.data)) {
      // Loaded for an edit: the edit is made on this version.
      if (typeof p.etag === 'string') $('#if-match').value = p.etag;
      fillFields(p.data);
    }
    if (meta.form) showResult(p, req);
  }

  // ------------------------------------------------------------ differences
  //
  // Each connection keeps the last version it has seen of every object: in
  // replies (retrieve, create, update, patch, list, snapshots, REST
  // bodies) and in events. An update, event or reply, is shown with the
  // difference from that version, field by field.

  function objectKey(stream, pk) { return stream + '\u0000' + (typeof pk === 'string' ? pk : JSON.stringify(pk)); }

  function pkOf(s, obj) {
    if (!isObject(obj)) return undefined;
    if (s && s.pk && s.pk in obj) return obj[s.pk];
    return 'pk' in obj ? obj.pk : undefined;
  }

  // seeObjects records the objects of a frame or REST body seen by c, and
  // sets e.diff for an update: [[key, before, after], ...], or null when
  // the connection had seen no version of the object before.
  function seeObjects(c, stream, kind, action, pk, p, e) {
    const s = state.streams.get(stream);
    // A 412 carries the current object (PROTOCOL.md section 11).
    const ok = p.response_status === undefined || p.response_status < 300 || p.response_status === 412;
    if (!ok) return;
    const remember = (obj) => {
      const k = pkOf(s, obj);
      if (k !== undefined && k !== null) c.objects.set(objectKey(stream, k), obj);
    };
    if (kind === 'reply' && Array.isArray(p.data)) { p.data.forEach(remember); return; }
    if (kind === 'reply' && isObject(p.data) && Array.isArray(p.data.results)) { p.data.results.forEach(remember); return; }
    const key = pk !== undefined && pk !== null ? pk : pkOf(s, p.data);
    if (key === undefined || key === null) return;
    const k = objectKey(stream, key);
    if (action === 'delete') {
      c.objects.delete(k);
      return;
    }
    if (!isObject(p.data)) return;
    if (kind === 'reply' && !['retrieve', 'create', 'update', 'patch'].includes(action)) return;
    if (action === 'update' || action === 'patch') {
      const before = c.objects.get(k);
      e.diff = before ? diffObjects(before, p.data) : null;
    }
    c.objects.set(k, p.data);
  }

  function diffObjects(before, after) {
    const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])];
    return keys.filter((k) => JSON.stringify(before[k]) !== JSON.stringify(after[k])).map((k) => [k, before[k], after[k]]);
  }

  function diffText(diff) {
    if (diff === null) return 'first version seen';
    if (!diff.length) return 'no change';
    const show = (v) => (v === undefined ? '–' : compact(JSON.stringify(v)));
    return diff.map(([k, b, a]) => `${k}: ${show(b)} → ${show(a)}`).join('; ');
  }

  function diffNode(diff) {
    if (diff === null) {
      return el('p', { class: 'diff-none', text: 'This connection had seen no version of this object before: no difference to show.' });
    }
    if (!diff.length) return el('p', { class: 'diff-none', text: 'No field changed since the last version this connection saw.' });
    return el('table', { class: 'diff' },
      el('caption', { text: 'Changed since the last version this connection saw' }),
      el('thead', {}, el('tr', {}, el('th', { text: 'field' }), el('th', { text: 'before' }), el('th', { text: 'after' }))),
      el('tbody', {}, diff.map(([k, b, a]) => el('tr', { 'data-key': k },
        el('th', { text: k }),
        el('td', { class: 'before', text: b === undefined ? '–' : JSON.stringify(b) }),
        el('td', { class: 'after', text: a === undefined ? '–' : JSON.stringify(a) })))));
  }

  // ------------------------------------------------------------- positions
  //
  // Every event carries its offset in its stream; list replies, snapshots
  // and subscribes with "since" carry a position {epoch, offset}
  // (PROTOCOL.md section 10). The page keeps, per subscription, the
  // position up to which it has received the subscription's events, and
  // after a reconnect subscribes again with "since" that position: the
  // server replays what the page missed, or answers "recovered": false.
  //
  // The events of a stream reach a connection in the order of their
  // offsets, whichever subscription they are for (a replay to one
  // subscription goes between the events before its position and those
  // after), so an event at offset N tells that every active subscription
  // of the stream has received its events up to N.

  function isOffset(v) { return Number.isSafeInteger(v) && v >= 0; }

  function isPosition(v) { return isObject(v) && typeof v.epoch === 'string' && isOffset(v.offset); }

  // sinceOf returns the position in the data of a subscribe, or null.
  function sinceOf(data) { return isObject(data) && isPosition(data.since) ? data.since : null; }

  // replyPosition returns the position a reply carries: a list's
  // meta.position, a subscribe's or a snapshot's data.position.
  function replyPosition(p) {
    if (isObject(p.meta) && isPosition(p.meta.position)) return p.meta.position;
    if (isObject(p.data) && isPosition(p.data.position)) return p.data.position;
    return null;
  }

  // notePosition records a position of stream that a reply carried: the
  // stream has reached it at least. It says nothing about the events in
  // flight to the subscriptions, but gives the epoch of every offset
  // received on this connection.
  function notePosition(c, stream, at) {
    const k = c.known.get(stream);
    if (!k || (k.epoch !== null && k.epoch !== at.epoch)) {
      c.known.set(stream, { epoch: at.epoch, offset: at.offset });
    } else {
      k.epoch = at.epoch;
      k.offset = Math.max(k.offset, at.offset);
    }
    for (const sub of c.subs.values()) {
      if (sub.stream === stream && sub.pos && sub.pos.epoch === null) sub.pos.epoch = at.epoch;
    }
    updateSubPositions(c);
  }

  // eventReceived moves the active subscriptions of stream to offset n.
  function eventReceived(c, stream, n) {
    const k = c.known.get(stream);
    if (!k) c.known.set(stream, { epoch: null, offset: n });
    else k.offset = Math.max(k.offset, n);
    const epoch = c.known.get(stream).epoch;
    for (const sub of c.subs.values()) {
      if (sub.stream !== stream || sub.state !== 'active') continue;
      if (!sub.pos) sub.pos = { epoch, offset: n };
      else sub.pos.offset = Math.max(sub.pos.offset, n);
    }
    updateSubPositions(c);
  }

  // startPosition is the position from which a subscription that a reply
  // p started has received its events, or null when the page cannot tell:
  //  * resumed and recovered: the since it was sent; the replay follows;
  //  * resumed and not recovered, or with a snapshot: the reply's position,
  //    after which its events start;
  //  * otherwise: the furthest position seen on this connection, which the
  //    stream had reached when it subscribed (a replay from it may hold
  //    events from before the subscription, never miss one after).
  function startPosition(c, req, p, stream) {
    const at = replyPosition(p);
    const since = sinceOf(req.data);
    const recovered = isObject(p.data) ? p.data.recovered : undefined;
    if (recovered === true && since && at && since.epoch === at.epoch) return { epoch: since.epoch, offset: since.offset };
    if (at) return { epoch: at.epoch, offset: at.offset };
    const k = c.known.get(stream);
    return k ? { epoch: k.epoch, offset: k.offset } : null;
  }

  // ------------------------------------------------------------- subscriptions

  // addSub records the subscription that reply p to req started, with the
  // position it starts from and, for a resumed one, the outcome.
  function addSub(c, key, sub, req, p) {
    sub.state = 'active';
    sub.pos = startPosition(c, req, p, sub.stream);
    const recovered = isObject(p.data) ? p.data.recovered : undefined;
    sub.resume = recovered === true ? 'recovered' : recovered === false ? 'lost' : undefined;
    c.subs.set(key, sub);
    if (recovered === false) {
      const since = sinceOf(req.data);
      const snapshot = sub.kind === 'query' && isObject(p.data) && Array.isArray(p.data.results);
      logWarning(c, sub.stream, `state lost: reload. ${subText(sub)}: the server cannot replay the events after ` +
        (since ? `@${since.offset}` : 'the position sent') +
        (since && replyPosition(p) && replyPosition(p).epoch !== since.epoch ? ' (its history was lost: another epoch)' : ' (they are no longer in its history)') +
        (snapshot ? '; the reply holds a fresh snapshot.' : '; events were missed.'));
    }
  }

  // subText names a subscription in the log.
  function subText(sub) {
    if (sub.kind === 'query') return `${sub.stream} live query #${ridText(sub.rid)}`;
    if (sub.kind === 'instance') return `${sub.stream} instance pk ${sub.pk} #${ridText(sub.rid)}`;
    return `${sub.stream} subscribe ${sub.event}` + (sub.pk === null ? '' : ` pk ${sub.pk}`);
  }

  function subKey(s) {
    const pk = s.pk === null || s.pk === undefined ? null : String(s.pk);
    return JSON.stringify([s.kind, s.stream, s.event || null, pk, s.kind === 'group' ? null : s.rid]);
  }

  // subscriptionFrame is the frame that subscribes sub again (with since,
  // when given) or ends it.
  function subscriptionFrame(sub, unsubscribe, since) {
    if (sub.kind === 'query') {
      return unsubscribe
        ? { stream: sub.stream, payload: { action: 'unsubscribe_list', request_id: sub.rid } }
        : { stream: sub.stream, payload: { action: 'subscribe_list', data: since ? Object.assign({}, sub.data, { since }) : sub.data, request_id: sub.rid } };
    }
    if (sub.kind === 'instance') {
      const payload = { action: unsubscribe ? 'unsubscribe_instance' : 'subscribe_instance', pk: sub.pk };
      if (since) payload.data = { since };
      payload.request_id = sub.rid;
      return { stream: sub.stream, payload };
    }
    const payload = { action: unsubscribe ? 'unsubscribe' : 'subscribe', data: { action: sub.event } };
    if (since) payload.data.since = since;
    if (sub.pk !== null) payload.pk = sub.pk;
    payload.request_id = freshID();
    return { stream: sub.stream, payload };
  }

  function sendFrame(c, frame, meta) {
    if (!c.ws || c.ws.readyState !== WebSocket.OPEN) {
      setResult('error', `Connection ${c.label} is not connected.`);
      return false;
    }
    c.sendMeta = meta || null;
    c.ws.send(JSON.stringify(frame));
    return true;
  }

  // resubscribe subscribes again to the subscriptions of the closed
  // connection, each from the position it had reached when the page knows
  // it, so that the server replays the events it missed.
  function resubscribe(c) {
    const lost = [...c.subs].filter(([, s]) => s.state === 'lost');
    if (!lost.length) return;
    const since = (sub) => (sub.pos && sub.pos.epoch !== null ? { epoch: sub.pos.epoch, offset: sub.pos.offset } : null);
    const resuming = lost.filter(([, s]) => since(s)).length;
    const n = (k) => `${k} subscription${k === 1 ? '' : 's'}`;
    logSystem(c, `subscribing again to ${n(lost.length)} of the closed connection` +
      (resuming === lost.length ? ', from the positions reached'
        : resuming ? `, ${resuming} from the positions reached (the others have none: events in between are not replayed)`
          : ' (no position reached: events in between are not replayed)'));
    for (const [key, sub] of lost) {
      sub.state = 'pending';
      sub.resume = undefined;
      sendFrame(c, subscriptionFrame(sub, false, since(sub)), { resub: key });
    }
    renderSubs(c);
  }

  function renderSubs(c) {
    if (!alive(c)) return;
    const items = [...c.subs].map(([key, sub]) => {
      const what = sub.kind === 'instance' ? 'instance' : sub.kind === 'query' ? 'live query' : sub.event;
      const scope = sub.kind === 'query' ? queryText(sub.data) : sub.pk === null ? 'every object' : `pk ${sub.pk}`;
      const li = el('li', {
        class: 'sub', 'data-sub-key': key, 'data-stream': sub.stream, 'data-kind': sub.kind,
        'data-event': sub.event || '', 'data-pk': sub.pk === null ? '' : String(sub.pk), 'data-state': sub.state,
        'data-request-id': sub.rid === null ? undefined : ridText(sub.rid),
        'data-resume': sub.resume,
      },
      el('span', { class: 'badge sub-' + sub.kind, text: what }),
      el('span', { class: 'sub-what' }, el('b', { text: sub.stream }), ' · ', scope,
        sub.rid !== null ? el('span', { class: 'rid', text: ` #${ridText(sub.rid)}` }) : null),
      el('span', { class: 'sub-pos' }),
      sub.resume ? el('span', {
        class: 'sub-resume', title: sub.resume === 'lost' ? 'The server could not replay the events missed while disconnected.' : 'The events missed while disconnected were replayed.',
        text: sub.resume === 'lost' ? 'state lost: reload' : 'resumed',
      }) : null,
      sub.state !== 'active' ? el('span', { class: 'sub-state', text: sub.state === 'lost' ? 'connection closed' : 'subscribing…' }) : null,
      el('button', {
        type: 'button', 'data-act': 'unsubscribe', text: 'Unsubscribe',
        onclick: () => {
          if (sub.state === 'active') sendFrame(c, subscriptionFrame(sub, true));
          else { c.subs.delete(key); renderSubs(c); }
        },
      }));
      showSubPosition(li, sub);
      return li;
    });
    c.$('subscriptions').replaceChildren(...items);
    c.$('sub-count').textContent = String(items.length);
    show(c.$('sub-empty'), items.length === 0);
  }

  // updateSubPositions shows the positions the subscriptions have reached.
  function updateSubPositions(c) {
    if (!alive(c)) return;
    for (const li of $$('.sub', c.$('subscriptions'))) {
      const sub = c.subs.get(li.dataset.subKey);
      if (sub) showSubPosition(li, sub);
    }
  }

  function showSubPosition(li, sub) {
    const box = $('.sub-pos', li);
    const offset = sub.pos ? String(sub.pos.offset) : '';
    const epoch = sub.pos && sub.pos.epoch !== null ? sub.pos.epoch : '';
    if (li.dataset.offset === offset && li.dataset.epoch === epoch && box.textContent !== '') return;
    li.dataset.offset = offset;
    li.dataset.epoch = epoch;
    box.textContent = sub.pos ? `@${sub.pos.offset}` : 'no position';
    box.title = sub.pos
      ? `Events received up to offset ${sub.pos.offset}` + (sub.pos.epoch !== null ? ` of epoch ${sub.pos.epoch}: after a reconnect the page resumes from here.` : ' (epoch not known yet: list the stream to learn it).')
      : 'No position known: after a reconnect the page subscribes again without replay.';
  }

  // queryText shows the filters of a live query.
  function queryText(data) {
    const keys = Object.entries(data || {}).filter(([k]) => k !== 'snapshot' && k !== 'page_size');
    if (!keys.length) return 'every object';
    return keys.map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' · ');
  }

  // ------------------------------------------------------------------- REST
  //
  // With the REST transport the form builds an HTTP request, shown and
  // edited as text (request line, headers, blank line, JSON body), and
  // sends it with fetch as the chosen connection: its bearer token as
  // Authorization, or its cookie. Requests go to this page's own server
  // only. A list's next and previous links are followed from the log or
  // the result line.

  // restPath is the path of action a of stream s for the form's pk.
  function restPath(s, a) {
    let path = a.path;
    if (path.includes(':pk')) {
      const pk = $('#pk').value.trim();
      path = path.replace(':pk', pk === '' ? ':pk' : encodeURIComponent(pk));
    }
    return path;
  }

  // restQueryOf is the query string of an object's keys, lists
  // comma-separated.
  function restQueryOf(data) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(data)) q.set(k, Array.isArray(v) ? v.join(',') : isObject(v) ? JSON.stringify(v) : String(v));
    const text = q.toString();
    return text ? '?' + text : '';
  }

  // restQuery is the query string of a list: the filter grammar with
  // lists comma-separated (PROTOCOL.md section 8).
  function restQuery(s) { return restQueryOf(queryData(s, 'list')); }

  // buildRequest is the HTTP request the form describes, or null when the
  // action has no REST route.
  function buildRequest() {
    const s = currentStream();
    const a = currentAction();
    if (!s || !a || !a.method) return null;
    const req = { method: a.method, url: restPath(s, a), headers: [], body: undefined };
    if (a.name === 'list') req.url += restQuery(s);
    let data;
    if (WRITE_ACTIONS.has(a.name)) {
      data = {};
      for (const row of $$('#fields .field')) {
        if ($('[data-include]', row).checked) data[row.dataset.field] = fieldValue(row);
      }
    } else if (!a.builtin) {
      const text = $('#custom-data').value;
      if (text.trim() !== '') {
        const r = parseJSON(text);
        // A GET action takes its data as the query string.
        if (a.method === 'GET' && r.ok && isObject(r.value)) req.url += restQueryOf(r.value);
        else if (a.method !== 'GET') data = r.ok ? r.value : text;
      }
    }
    const ifMatch = $('#if-match').value.trim();
    const idem = $('#idem-key').value.trim();
    if (!$('#safety-row').hidden) {
      if (ifMatch !== '' && !$('#if-match-row').hidden) req.headers.push(['If-Match', ifMatch]);
      if (idem !== '') req.headers.push(['Idempotency-Key', idem]);
    }
    if (data !== undefined) {
      req.headers.push(['Content-Type', 'application/json']);
      req.body = typeof data === 'string' ? data : JSON.stringify(data, null, 2);
    }
    return req;
  }

  function requestText(req) {
    return [`${req.method} ${req.url}`, ...req.headers.map(([k, v]) => `${k}: ${v}`)].join('\n') +
      (req.body !== undefined ? '\n\n' + req.body : '');
  }

  // parseRequest reads the request editor: "METHOD URL", header lines, a
  // blank line and the body.
  function parseRequest(text) {
    const lines = text.replace(/\r\n/g, '\n').split('\n');
    const m = /^\s*([A-Za-z]+)\s+(\S+)\s*$/.exec(lines[0] || '');
    if (!m) return { error: 'The first line must be a method and a path, e.g. GET /api/questions' };
    const req = { method: m[1].toUpperCase(), url: m[2], headers: [], body: undefined };
    let i = 1;
    for (; i < lines.length && lines[i].trim() !== ''; i++) {
      const h = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(lines[i]);
      if (!h) return { error: `Line ${i + 1} is not a header ("Name: value"); a blank line goes before the body.` };
      req.headers.push([h[1], h[2]]);
    }
    const body = lines.slice(i + 1).join('\n');
    if (body.trim() !== '') req.body = body;
    let url;
    try { url = new URL(req.url, location.href); } catch (e) { return { error: `Not a URL: ${req.url}` }; }
    if (url.origin !== location.origin) return { error: `Only this server's routes can be requested, not ${url.origin}.` };
    return { req };
  }

  // restRoute names the stream and action of a path, from the schema, and
  // the pk of a detail route (typed as the stream's pk).
  function restRoute(method, url) {
    const path = new URL(url, location.href).pathname;
    for (const s of state.streams.values()) {
      for (const a of s.actions) {
        if (!a.path || a.method !== method) continue;
        const re = new RegExp('^' + a.path.split(':pk').map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('([^/]+)') + '/?$');
        const m = re.exec(path);
        if (!m) continue;
        let pk;
        if (m[1] !== undefined) {
          try { pk = decodeURIComponent(m[1]); } catch (_) { pk = m[1]; }
          pk = s.pk_type === 'integer' ? scalar(pk, 'integer') : pk;
        }
        return { stream: s.name, action: a.name, pk };
      }
    }
    return { stream: null, action: null, pk: undefined };
  }

  async function sendREST(c, req, meta) {
    const headers = new Headers(req.headers);
    if (!headers.has('Accept')) headers.set('Accept', 'application/json');
    for (const [k, v] of Object.entries(authHeaders(c))) if (!headers.has(k)) headers.set(k, v);
    const route = restRoute(req.method, req.url);
    const path = req.url;
    addEntry(c, {
      dir: 'out', kind: 'sent', http: true, stream: route.stream, action: route.action,
      method: req.method, url: path, text: requestText(req), body: req.body,
    });
    const sentAt = performance.now();
    setCookie(c);
    let res;
    let text = '';
    try {
      res = await fetch(new URL(req.url, location.href), {
        method: req.method, headers, body: req.body, credentials: 'same-origin', cache: 'no-store', redirect: 'manual',
      });
      text = await res.text();
    } catch (e) {
      logSystem(c, `${req.method} ${path} failed: ${e.message}`, true);
      if (meta.form) setResult('error', `${req.method} ${path} failed: ${e.message}`);
      return;
    }
    if (!alive(c)) return;
    if (res.type === 'opaqueredirect') {
      // The browser hides a redirect's status and Location from a page that
      // does not follow it.
      logSystem(c, `${req.method} ${path} was redirected (not followed: the page sends requests to the routes as typed).`, true);
      if (meta.form) setResult('error', `${req.method} ${path}: redirected, not followed. Check the path (a trailing slash?).`);
      return;
    }
    const parsed = text === '' ? { ok: true, value: undefined } : parseJSON(text);
    const body = parsed.ok ? parsed.value : undefined;
    const links = isObject(body) && ('next' in body || 'previous' in body)
      ? { next: typeof body.next === 'string' ? body.next : null, previous: typeof body.previous === 'string' ? body.previous : null } : null;
    const e = {
      dir: 'in', kind: res.status >= 400 ? 'error' : 'reply', http: true, stream: route.stream, action: route.action,
      method: req.method, url: path, status: res.status, latency: performance.now() - sentAt,
      headers: [...res.headers], text, frame: body, links,
      etag: res.headers.get('ETag') || undefined, replayed: res.headers.get('Idempotent-Replayed') === 'true' || undefined,
    };
    if (route.stream !== null && e.etag) {
      const key = route.pk !== undefined ? route.pk : pkOf(state.streams.get(route.stream), body);
      if (key !== undefined && key !== null) c.etags.set(objectKey(route.stream, key), e.etag);
    }
    if (route.stream !== null && (res.status < 300 || res.status === 412)) {
      const pk = route.pk !== undefined ? route.pk : pkOf(state.streams.get(route.stream), body);
      const p = route.action === 'list' && isObject(body) ? { data: body.results } : { data: body };
      seeObjects(c, route.stream, 'reply', route.action, pk, p, e);
    }
    addEntry(c, e);
    if (meta.form) showRESTResult(c, e, route);
  }

  function showRESTResult(c, e, route) {
    const head = `${statusText(e.status)} · ${Math.round(e.latency)} ms`;
    state.pages = e.links ? { conn: c, stream: route.stream, action: route.action, next: e.links.next, previous: e.links.previous } : null;
    showPages();
    if (e.status < 400) {
      let text = head;
      const b = e.frame;
      if (isObject(b) && Array.isArray(b.results)) text += ` · ${b.count} objects, ${b.results.length} on this page`;
      setResult('ok', text, e.status);
      return;
    }
    const b = e.frame;
    if (isObject(b) && typeof b.detail === 'string') showErrors({ response_status: e.status, errors: [b.detail] }, route.stream, head);
    else if (isObject(b)) showErrors({ response_status: e.status, errors: [b] }, route.stream, head);
    else if (Array.isArray(b)) showErrors({ response_status: e.status, errors: b }, route.stream, head);
    else setResult('error', `${head} · ${compact(e.text)}`, e.status);
  }

  function showPages() {
    const p = state.pages;
    show($('#page-nav'), !!p && state.transport === 'rest');
    $('#page-prev').disabled = !p || !p.previous;
    $('#page-next').disabled = !p || !p.next;
  }

  // followPage requests a list's next or previous link as c. A link to
  // another origin (the server's WithBaseURL, seen through another host)
  // is followed on this page's server: its path and query.
  function followPage(c, url) {
    if (!alive(c)) return;
    const u = new URL(url, location.href);
    const parsed = parseRequest(`GET ${u.origin === location.origin ? url : u.pathname + u.search}`);
    if (parsed.error) { setResult('error', parsed.error); return; }
    setResult('wait', 'waiting for the response…');
    sendREST(c, parsed.req, { form: true });
  }

  // -------------------------------------------------------------------- log

  function logSystem(c, text, isError) {
    addEntry(c, { dir: 'sys', kind: 'system', stream: null, text, error: !!isError });
  }

  // logWarning logs that a subscription of stream lost events.
  function logWarning(c, stream, text) {
    addEntry(c, { dir: 'sys', kind: 'system', stream, text, warn: true, resume: 'lost' });
  }

  function addEntry(c, e) {
    if (!alive(c)) return;
    e.id = ++state.entrySeq;
    e.time = new Date();
    e.conn = c.id;
    c.entries.push(e);
    const node = renderEntry(c, e);
    e.node = node;
    const log = c.$('log');
    const follow = $('#follow').checked && isAtBottom(log);
    log.append(node);
    while (c.entries.length > MAX_ENTRIES) c.entries.shift().node.remove();
    node.hidden = !matchesFilter(e);
    updateLogCount();
    if (follow && !node.hidden) log.scrollTop = log.scrollHeight;
  }

  function isAtBottom(log) { return log.scrollHeight - log.scrollTop - log.clientHeight < 40; }

  function renderEntry(c, e) {
    const attrs = {
      class: `entry kind-${e.kind}` + (e.error ? ' sys-error' : '') + (e.warn ? ' sys-warn' : '') + (e.http ? ' http' : ''),
      'data-id': e.id, 'data-kind': e.kind, 'data-dir': e.dir, 'data-conn': c.id,
      'data-transport': e.http ? 'rest' : e.dir === 'sys' ? undefined : 'ws',
      'data-stream': e.stream === null ? '' : e.stream,
      'data-action': e.action === undefined || e.action === null ? undefined : e.action,
      'data-method': e.method, 'data-url': e.url,
      'data-status': e.status === undefined ? undefined : e.status,
      'data-request-id': e.rid === undefined || e.rid === null ? undefined : ridText(e.rid),
      'data-pk': e.pk === undefined || e.pk === null ? undefined : String(e.pk),
      'data-subscription': e.sub,
      'data-offset': e.offset !== undefined ? e.offset : e.position ? e.position.offset : undefined,
      'data-epoch': e.position ? e.position.epoch : undefined,
      'data-recovered': e.recovered === undefined ? undefined : String(e.recovered),
      'data-since': e.since ? e.since.offset : undefined,
      'data-resume': e.resume,
      'data-etag': e.etag, 'data-replayed': e.replayed ? 'true' : undefined,
      'data-diff': e.diff === undefined ? undefined : e.diff === null ? 'none' : e.diff.map((d) => d[0]).join(','),
    };
    if (e.kind === 'system') {
      return el('div', attrs, el('div', { class: 'sum' },
        el('span', { class: 'time', text: clock(e.time) }),
        el('span', { class: 'badge', text: e.warn ? 'warning' : 'connection' }),
        el('span', { class: 'text', text: e.text })));
    }
    const summary = el('summary', { class: 'sum' },
      el('span', { class: 'time', text: clock(e.time) }),
      el('span', { class: 'dir', title: e.dir === 'out' ? 'sent' : 'received', text: e.dir === 'out' ? '↑' : '↓' }),
      el('span', { class: 'badge', text: e.kind }),
      e.http ? el('span', { class: 'http-tag', title: 'A REST request', text: 'HTTP' }) : null,
      el('span', { class: 'stream', text: e.stream === null ? '(no stream)' : e.stream }),
      e.http ? el('span', { class: 'action', text: `${e.method} ${e.url}` })
        : e.action !== undefined && e.action !== null ? el('span', { class: 'action', text: e.action }) : null,
      e.status !== undefined ? el('span', { class: 'status s' + String(e.status).charAt(0), text: String(e.status) }) : null,
      e.pk !== undefined && e.pk !== null ? el('span', { class: 'pk', text: `pk ${compact(e.pk)}` }) : null,
      e.offset !== undefined ? el('span', { class: 'offset', title: `offset ${e.offset}: the event's place in its stream`, text: `@${e.offset}` }) : null,
      e.position ? el('span', { class: 'position', title: `position: epoch ${e.position.epoch}, offset ${e.position.offset}`, text: `at @${e.position.offset}` }) : null,
      e.since ? el('span', { class: 'position', title: `since: epoch ${e.since.epoch}, offset ${e.since.offset}`, text: `since @${e.since.offset}` }) : null,
      e.recovered !== undefined ? el('span', {
        class: 'resume ' + (e.recovered ? 'ok' : 'lost'),
        title: e.recovered ? 'Every event after since follows the reply.' : 'The events after since cannot be replayed: reload the state.',
        text: e.recovered ? 'recovered' : 'state lost',
      }) : null,
      e.rid !== undefined && e.rid !== null ? el('button', {
        type: 'button', class: 'rid', title: (e.sub === 'query' ? 'An event of the live query with this request_id. ' : '') + 'Show the frames of this request_id',
        text: (e.sub === 'query' ? 'live ' : '') + `#${ridText(e.rid)}`,
        onclick: (ev) => { ev.preventDefault(); $('#filter-text').value = ridText(e.rid); applyFilter(); },
      }) : null,
      e.diff !== undefined ? el('span', {
        class: 'diff-badge', title: 'Difference from the last version of this object this connection saw', text: diffText(e.diff),
      }) : el('span', { class: 'preview', text: preview(e) }),
      e.replayed ? el('span', { class: 'replayed', title: 'The server replayed the stored reply of the first request with this idempotency key: nothing was written again.', text: 'replayed' }) : null,
      e.etag ? el('span', { class: 'etag', title: 'The ETag of this version of the object', text: e.etag }) : null,
      e.latency !== undefined ? el('span', { class: 'latency', text: `${Math.round(e.latency)} ms` }) : null);
    const body = el('div', { class: 'body' });
    const node = el('details', attrs, summary, body);
    node.addEventListener('toggle', () => {
      if (node.open && !body.firstChild) fillBody(c, e, body);
    });
    return node;
  }

  function preview(e) {
    if (e.http) {
      if (e.dir === 'out') return e.body === undefined ? '' : compact(e.body.replace(/\s+/g, ' '));
      const b = e.frame;
      if (isObject(b) && Array.isArray(b.results)) return `${b.count} objects` + (b.next ? ' · next' : '') + (b.previous ? ' · previous' : '') + `  ${compact(b.results)}`;
      return b === undefined ? compact(e.text) : compact(b);
    }
    if (e.invalid) return 'not valid JSON: ' + compact(e.text);
    if (e.frame === undefined) return compact(e.text);
    const p = isObject(e.frame) && isObject(e.frame.payload) ? e.frame.payload : null;
    if (!p) return compact(e.frame);
    if (e.kind === 'error' && Array.isArray(p.errors) && p.errors.length) return compact(p.errors.length === 1 ? p.errors[0] : p.errors);
    let text = p.data === undefined ? '' : compact(p.data);
    if (isObject(p.meta)) text = `${p.meta.count} objects, page ${p.meta.page} of ${p.meta.num_pages}  ${text}`;
    else if (isSnapshot(p)) text = `snapshot: ${snapshotText(p.data)}  ${compact(p.data.results)}`;
    return text;
  }

  function isSnapshot(p) { return p.action === 'subscribe_list' && isObject(p.data) && Array.isArray(p.data.results); }

  function snapshotText(d) {
    return `${d.count} object${d.count === 1 ? '' : 's'}` + (d.results.length < d.count ? `, the first ${d.results.length}` : '');
  }

  function fillBody(c, e, body) {
    const buttons = el('div', { class: 'entry-actions' });
    if (e.diff !== undefined) body.append(diffNode(e.diff));
    if (e.http) {
      if (e.dir === 'in') {
        body.append(el('pre', { class: 'http-head', text: [statusText(e.status), ...e.headers.map(([k, v]) => `${k}: ${v}`)].join('\n') }));
      }
      const pre = el('pre', { class: 'json' });
      if (e.dir === 'out') pre.textContent = e.text;
      else if (e.frame !== undefined) pre.append(renderJSON(e.frame, ''));
      else pre.textContent = e.text;
      body.append(pre);
      buttons.append(el('button', { type: 'button', 'data-act': 'copy-frame', text: 'Copy', onclick: () => copyText(e.dir === 'out' || e.frame === undefined ? e.text : JSON.stringify(e.frame, null, 2), 'request') }));
      if (e.dir === 'out') {
        buttons.append(el('button', { type: 'button', 'data-act': 'resend', text: 'Edit and send again', onclick: () => { setTransport('rest'); loadRaw(e.text); } }));
      }
      if (e.links) {
        buttons.append(
          el('button', { type: 'button', 'data-act': 'previous', text: '← Previous page', disabled: !e.links.previous, onclick: () => followPage(c, e.links.previous) }),
          el('button', { type: 'button', 'data-act': 'next', text: 'Next page →', disabled: !e.links.next, onclick: () => followPage(c, e.links.next) }));
      }
      body.append(buttons);
      return;
    }
    const pre = el('pre', { class: 'json' });
    if (e.frame !== undefined) pre.append(renderJSON(e.frame, ''));
    else pre.textContent = e.text;
    buttons.append(el('button', { type: 'button', 'data-act': 'copy-frame', text: 'Copy', onclick: () => copyText(e.frame !== undefined ? JSON.stringify(e.frame, null, 2) : e.text, 'frame') }));
    if (e.dir === 'out') {
      buttons.append(el('button', {
        type: 'button', 'data-act': 'resend', text: 'Edit and send again',
        onclick: () => { setTransport('ws'); loadRaw(e.frame !== undefined ? JSON.stringify(e.frame, null, 2) : e.text); },
      }));
    }
    body.append(pre, buttons);
  }

  // renderJSON pretty-prints a value as highlighted text nodes.
  function renderJSON(v, indent) {
    const frag = document.createDocumentFragment();
    const span = (cls, text) => el('span', { class: cls, text });
    const inner = indent + '  ';
    if (Array.isArray(v)) {
      if (!v.length) { frag.append('[]'); return frag; }
      frag.append('[\n');
      v.forEach((x, i) => {
        frag.append(inner, renderJSON(x, inner), i < v.length - 1 ? ',\n' : '\n');
      });
      frag.append(indent + ']');
    } else if (isObject(v)) {
      const keys = Object.keys(v);
      if (!keys.length) { frag.append('{}'); return frag; }
      frag.append('{\n');
      keys.forEach((k, i) => {
        frag.append(inner, span('j-key', JSON.stringify(k)), ': ', renderJSON(v[k], inner), i < keys.length - 1 ? ',\n' : '\n');
      });
      frag.append(indent + '}');
    } else if (typeof v === 'string') {
      frag.append(span('j-str', JSON.stringify(v)));
    } else if (typeof v === 'number') {
      frag.append(span('j-num', String(v)));
    } else {
      frag.append(span('j-lit', String(v)));
    }
    return frag;
  }

  function filterState() {
    return {
      stream: $('#filter-stream').value,
      kinds: new Set($$('.logbar .chips input:checked').map((i) => i.value)),
      text: $('#filter-text').value.trim().toLowerCase(),
    };
  }

  function matchesFilter(e, f) {
    f = f || filterState();
    if (!f.kinds.has(e.kind)) return false;
    if (f.stream === '\u0000' ? e.stream !== null : f.stream !== '' && e.stream !== f.stream) return false;
    return !f.text || e.text.toLowerCase().includes(f.text);
  }

  function allEntries() { return state.conns.flatMap((c) => c.entries).sort((x, y) => x.id - y.id); }

  function applyFilter() {
    const f = filterState();
    for (const e of allEntries()) e.node.hidden = !matchesFilter(e, f);
    $$('.logbar .chips .chip').forEach((c) => c.classList.toggle('off', !c.querySelector('input').checked));
    updateLogCount();
  }

  function visibleEntries() { return allEntries().filter((e) => !e.node.hidden); }

  function updateLogCount() {
    const all = allEntries();
    const shown = all.filter((e) => !e.node.hidden).length;
    $('#log-count').textContent = shown === all.length ? String(all.length) : `${shown} of ${all.length}`;
    for (const c of state.conns) show(c.$('log-empty'), c.entries.length === 0);
  }

  function exportEntry(e) {
    const out = {
      time: e.time.toISOString(),
      connection: e.conn,
      direction: e.dir === 'out' ? 'sent' : e.dir === 'in' ? 'received' : 'connection',
      kind: e.kind,
    };
    if (e.http) {
      out.request = `${e.method} ${e.url}`;
      if (e.dir === 'in') { out.status = e.status; out.headers = Object.fromEntries(e.headers); }
      out.body = e.dir === 'out' ? e.body : e.frame !== undefined ? e.frame : e.text;
    } else {
      out.frame = e.frame !== undefined ? e.frame : e.text;
    }
    if (e.diff) out.diff = Object.fromEntries(e.diff.map(([k, b, a]) => [k, { before: b, after: a }]));
    return out;
  }

  function exportEntries() { return allEntries().map(exportEntry); }

  async function copyText(text, what) {
    window.channelsapi.lastCopy = text;
    let ok = false;
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch (_) {
      const ta = el('textarea', { class: 'offscreen', readonly: true });
      ta.value = text;
      document.body.append(ta);
      ta.select();
      try { ok = document.execCommand('copy'); } catch (_) { ok = false; }
      ta.remove();
    }
    flash(ok ? `Copied ${what}.` : 'The browser refused the clipboard; see channelsapi.lastCopy in the console.');
  }

  function flash(text) {
    const r = $('#result');
    r.dataset.kind = 'note';
    r.textContent = text;
  }

  function onStreamChange() {
    const s = currentStream();
    const sel = $('#action');
    const prev = sel.value;
    const builtin = s ? s.actions.filter((a) => a.builtin) : [];
    const custom = s ? s.actions.filter((a) => !a.builtin) : [];
    // Over REST, the actions without a route are shown but cannot be chosen.
    const rest = state.transport === 'rest';
    const option = (a) => el('option', { value: a.name, text: a.name + (rest && !a.method ? ' (WebSocket only)' : ''), disabled: rest && !a.method });
    sel.replaceChildren(
      el('optgroup', { label: 'built-in' }, builtin.map(option)),
      custom.length ? el('optgroup', { label: 'custom' }, custom.map(option)) : null);
    const usable = (a) => !rest || !!a.method;
    if (s && s.actions.some((a) => a.name === prev && usable(a))) sel.value = prev;
    else if (s && s.actions.some(usable)) sel.value = s.actions.find(usable).name;

    const info = $('#stream-info');
    info.replaceChildren();
    if (s) {
      info.append('model ', el('code', { text: s.model }), ' · pk ', el('code', { text: s.pk || '(not serialized)' }),
        ` ${s.pk_type} · REST `, el('code', { text: s.rest_path }),
        ` · page size ${s.page_size} (max ${s.max_page_size})`);
      if (s.read_only) info.append(' ', el('span', { class: 'badge ro', text: 'read-only' }));
    }
    if (s && state.fieldsOf !== s.name) renderFields(s);
    if (s && state.queryOf !== s.name) renderQuery(s);
    onActionChange();
  }

  function onActionChange() {
    const s = currentStream();
    const a = currentAction();
    const name = a ? a.name : '';
    const isSub = SUB_ACTIONS.has(name);
    const isWrite = WRITE_ACTIONS.has(name);

    show($('#pk-row'), !!a && (a.detail || isSub));
    $('#pk-label').textContent = isSub ? 'pk (optional)' : 'pk';
    $('#pk-type').textContent = s ? s.pk_type : '';
    $('#pk-hint').textContent = isSub ? 'Only this object. Leave empty for every object.'
      : name === 'subscribe_instance' ? 'Events for this object carry the request_id below; unsubscribe_instance needs the same one.'
        : name === 'unsubscribe_instance' ? 'Use the request_id of the subscribe_instance (or the Unsubscribe button below).'
          : '';
    show($('#load-object'), name === 'update' || name === 'patch');

    const isQuery = QUERY_ACTIONS.has(name);
    const isLive = name === 'subscribe_list';
    const filters = s && s.filters ? s.filters.length : 0;
    const ordering = name === 'list' && s && s.ordering_fields ? s.ordering_fields.length : 0;
    const search = s && s.search_fields ? s.search_fields.length : 0;
    show($('#query-row'), isQuery && filters + ordering + search > 0);
    show($('#filters'), filters > 0);
    show($('#ordering-row'), ordering > 0);
    show($('#search-row'), search > 0);
    show($('#list-row'), isQuery);
    show($('#page-field'), name === 'list');
    show($('#snapshot-row'), isLive);
    show($('#request-id-row'), state.transport === 'ws');
    if (s) {
      $('#page-size').placeholder = String(s.page_size);
      $('#page-size-hint').textContent = (isLive ? 'rows of the snapshot: ' : '') + `default ${s.page_size}, at most ${s.max_page_size}`;
    }
    $('#request-id-hint').textContent = isLive ? 'Required: the live query\'s events carry it, and unsubscribe_list takes it.'
      : name === 'unsubscribe_list' ? 'The request_id of the subscribe_list to end (or use Unsubscribe below).' : '';
    show($('#sub-row'), isSub);
    show($('#fields'), isWrite);
    show($('#readonly-fields'), isWrite && $('#readonly-fields').textContent !== '');
    if (isWrite) resetIncludes(name);
    show($('#custom-row'), !!a && !a.builtin);
    // Safe retries and concurrent edits (PROTOCOL.md section 11).
    const writes = !!a && (WRITE_ACTIONS.has(name) || name === 'delete' || !a.builtin);
    show($('#safety-row'), writes);
    show($('#if-match-row'), CONDITIONAL_ACTIONS.has(name));
    $('#custom-hint').textContent = a && !a.builtin ? (a.detail ? 'Detail action: the object is looked up by pk first.' : 'List action: no object.') : '';

    const info = $('#action-info');
    info.replaceChildren();
    if (a) {
      if (a.method) info.append('REST: ', el('code', { text: `${a.method} ${a.path}` }));
      else info.append('WebSocket only (no REST route)');
      if (s && s.read_only && isWrite) info.append(' · this stream is read-only');
    }
    clearFieldErrors();
    rebuildRaw();
  }

  // ------------------------------------------------------------ list queries

  // renderQuery builds the inputs of the filter grammar (PROTOCOL.md 8) that
  // stream s declares: a row per filter field with its lookups, the
  // ordering keys, the search.
  function renderQuery(s) {
    state.queryOf = s.name;
    $('#filters').replaceChildren(...(s.filters || []).map(renderFilter));
    $('#ordering').replaceChildren();
    if (s.ordering_fields && s.ordering_fields.length) addOrderKey(s, '', false);
    const search = s.search_fields || [];
    $('#search').value = '';
    $('#search-hint').textContent = search.length
      ? `Case-insensitive, in ${search.join(', ')}; every word must appear in one of them.` : '';
  }

  function renderFilter(f) {
    const id = 'filter-' + f.name;
    const lookup = el('select', { id: id + '-lookup', class: 'lookup', 'data-lookup': true, 'aria-label': f.name + ' lookup' },
      f.lookups.map((l) => el('option', { value: l, text: l })));
    const row = el('div', { class: 'field filter', 'data-filter': f.name, 'data-type': f.type },
      el('div', { class: 'field-head' },
        el('label', { for: id, text: f.name }),
        el('span', { class: 'type', text: f.type }),
        el('code', { class: 'filter-key', title: 'The key sent in data' })),
      el('div', { class: 'inline' }, lookup, el('div', { class: 'filter-values' })),
      el('p', { class: 'field-error', 'data-error-for': f.name, role: 'alert', hidden: true }));
    renderFilterValues(row);
    return row;
  }

  // renderFilterValues builds the value inputs of a filter row for its
  // lookup: in takes a comma-separated list, range two values, isnull and
  // booleans a choice. A typed value is kept when the input stays a text box.
  function renderFilterValues(row) {
    const f = row.dataset.filter;
    const type = row.dataset.type;
    const lookup = $('[data-lookup]', row).value;
    const box = $('.filter-values', row);
    const prev = $$('[data-value]', box).map((i) => (i.tagName === 'INPUT' ? i.value : ''));
    const id = 'filter-' + f;
    const choice = () => el('select', { id, 'data-value': true },
      el('option', { value: '', text: '(not sent)' }), el('option', { value: 'true', text: 'true' }), el('option', { value: 'false', text: 'false' }));
    const text = (inputId, numeric, placeholder) => el('input', {
      id: inputId, 'data-value': true, spellcheck: 'false',
      type: numeric ? 'number' : 'text',
      step: type === 'integer' ? '1' : type === 'number' ? 'any' : undefined,
      placeholder,
    });
    const numeric = type === 'integer' || type === 'number';
    const example = type === 'datetime' ? '2006-01-02T15:04:05Z' : undefined;
    let inputs;
    if (lookup === 'isnull' || (type === 'boolean' && lookup !== 'in')) {
      inputs = [choice()];
    } else if (lookup === 'in') {
      inputs = [text(id, false, type === 'boolean' ? 'true, false' : numeric ? 'comma-separated: 1, 2, 3' : 'comma-separated: a, b')];
    } else if (lookup === 'range') {
      inputs = [text(id, numeric, example || 'from'), el('span', { class: 'and', text: 'and' }), text(id + '-to', numeric, example || 'to')];
    } else {
      inputs = [text(id, numeric, example ? 'RFC 3339, e.g. ' + example : undefined)];
    }
    box.replaceChildren(...inputs);
    $$('input[data-value]', box).forEach((input, i) => { if (prev[i] !== undefined) input.value = prev[i]; });
    $('.filter-key', row).textContent = filterKey(f, lookup);
  }

  function filterKey(field, lookup) { return lookup === 'exact' ? field : `${field}__${lookup}`; }

  // typedValue is one value of a filter as the JSON type of its field:
  // what does not parse is sent as typed, so that the server says why.
  function typedValue(text, type) {
    if (type === 'integer' || type === 'number') return scalar(text, type);
    if (type === 'boolean' && (text === 'true' || text === 'false')) return text === 'true';
    return text;
  }

  // filterValue returns the key and value a filter row sends, or null when
  // its inputs are empty.
  function filterValue(row) {
    const type = row.dataset.type;
    const lookup = $('[data-lookup]', row).value;
    const inputs = $$('[data-value]', row);
    const key = filterKey(row.dataset.filter, lookup);
    const trimmed = (i) => (type === 'string' ? inputs[i].value : inputs[i].value.trim());
    if (inputs[0].tagName === 'SELECT') {
      const v = inputs[0].value;
      return v === '' ? null : { key, value: v === 'true' };
    }
    if (lookup === 'in') {
      const parts = inputs[0].value.split(',').map((v) => v.trim()).filter((v) => v !== '');
      return parts.length ? { key, value: parts.map((v) => typedValue(v, type)) } : null;
    }
    if (lookup === 'range') {
      const ends = [trimmed(0), trimmed(1)].filter((v) => v !== '');
      return ends.length ? { key, value: ends.map((v) => typedValue(v, type)) } : null;
    }
    const v = trimmed(0);
    return v === '' ? null : { key, value: typedValue(v, type) };
  }

  // addOrderKey adds an ordering key: a declared field and a direction.
  function addOrderKey(s, field, desc) {
    const row = el('div', { class: 'inline order-key' },
      el('select', { 'data-order-field': true, 'aria-label': 'ordering field' },
        el('option', { value: '', text: '(not sent)' }), s.ordering_fields.map((f) => el('option', { value: f, text: f }))),
      el('select', { 'data-order-dir': true, 'aria-label': 'direction' },
        el('option', { value: '', text: 'ascending' }), el('option', { value: '-', text: 'descending' })),
      el('button', {
        type: 'button', class: 'mini', 'data-act': 'remove-key', title: 'Remove this key', text: '×',
        onclick: () => {
          row.remove();
          if (!$('#ordering .order-key')) addOrderKey(s, '', false);
          numberOrderKeys(s);
          rebuildRaw();
        },
      }));
    $('[data-order-field]', row).value = s.ordering_fields.includes(field) ? field : '';
    $('[data-order-dir]', row).value = desc ? '-' : '';
    $('#ordering').append(row);
    numberOrderKeys(s);
  }

  function numberOrderKeys(s) {
    const rows = $$('#ordering .order-key');
    rows.forEach((row, i) => {
      $('[data-order-field]', row).id = `order-field-${i}`;
      $('[data-order-dir]', row).id = `order-dir-${i}`;
    });
    $('#ordering-add').disabled = rows.length >= s.ordering_fields.length;
  }

  function orderingValue() {
    return $$('#ordering .order-key')
      .filter((row) => $('[data-order-field]', row).value !== '')
      .map((row) => $('[data-order-dir]', row).value + $('[data-order-field]', row).value)
      .join(',');
  }

  // queryData is the data of a list or subscribe_list: the filled filters,
  // ordering (list only), search, pagination, snapshot (subscribe_list).
  function queryData(s, action) {
    const data = {};
    for (const row of $$('#filters .filter')) {
      const f = filterValue(row);
      if (f) data[f.key] = f.value;
    }
    if (action === 'list' && s.ordering_fields && s.ordering_fields.length) {
      const ordering = orderingValue();
      if (ordering) data.ordering = ordering;
    }
    if (s.search_fields && s.search_fields.length && $('#search').value.trim() !== '') data.search = $('#search').value;
    const page = $('#page').value.trim();
    const size = $('#page-size').value.trim();
    if (page && action === 'list') data.page = scalar(page, 'integer');
    if (size) data.page_size = scalar(size, 'integer');
    if (action === 'subscribe_list' && $('#snapshot').checked) data.snapshot = true;
    return data;
  }

  // syncQuery shows the data of a list or subscribe_list frame in the form.
  function syncQuery(data) {
    const s = currentStream();
    const str = (v) => (v === undefined || v === null ? '' : typeof v === 'string' ? v : JSON.stringify(v));
    $('#page').value = str(data.page);
    $('#page-size').value = str(data.page_size);
    $('#snapshot').checked = data.snapshot === true;
    $('#search').value = typeof data.search === 'string' ? data.search : '';
    for (const row of $$('#filters .filter')) {
      const f = row.dataset.filter;
      const select = $('[data-lookup]', row);
      const lookup = [...select.options].map((o) => o.value).find((l) => filterKey(f, l) in data || `${f}__${l}` in data);
      if (lookup !== undefined) select.value = lookup;
      renderFilterValues(row);
      const inputs = $$('[data-value]', row);
      for (const input of inputs) input.value = '';
      if (lookup === undefined) continue;
      const v = filterKey(f, lookup) in data ? data[filterKey(f, lookup)] : data[`${f}__${lookup}`];
      if (lookup === 'range') {
        const ends = Array.isArray(v) ? v : str(v).split(',');
        inputs[0].value = str(ends[0]);
        inputs[1].value = str(ends[1]);
      } else {
        inputs[0].value = Array.isArray(v) ? v.map(str).join(', ') : str(v);
      }
    }
    if (s && s.ordering_fields && s.ordering_fields.length) {
      $('#ordering').replaceChildren();
      const keys = typeof data.ordering === 'string' ? data.ordering.split(',').map((k) => k.trim()).filter(Boolean) : [];
      for (const k of keys.length ? keys : ['']) addOrderKey(s, k.replace(/^-/, ''), k.startsWith('-'));
    }
  }

  // queryEdited follows an edit of the query inputs.
  function queryEdited(ev) {
    if (state.syncing) return;
    const row = ev.target.closest('.field');
    if (ev.type === 'change' && ev.target.matches('[data-lookup]')) renderFilterValues(row);
    if (row) {
      row.classList.remove('invalid');
      const err = $('.field-error', row);
      if (err) err.hidden = true;
    }
    rebuildRaw();
  }

  function ruleHint(rule, type) {
    const [name, param] = rule.split(/=(.*)/s);
    const text = type === 'string';
    switch (name) {
      case 'required': return 'required';
      case 'max': case 'lte': return text ? `at most ${param} characters` : `≤ ${param}`;
      case 'min': case 'gte': return text ? `at least ${param} characters` : `≥ ${param}`;
      case 'lt': return text ? `fewer than ${param} characters` : `< ${param}`;
      case 'gt': return text ? `more than ${param} characters` : `> ${param}`;
      case 'len': return text ? `exactly ${param} characters` : `length ${param}`;
      case 'eq': return `= ${param}`;
      case 'ne': return `≠ ${param}`;
      case 'oneof': return `one of: ${param.split(' ').join(', ')}`;
      case 'email': return 'an email address';
      case 'url': case 'http_url': case 'uri': return 'a URL';
      case 'uuid': case 'uuid4': return 'a UUID';
      case 'omitempty': return null;
      default: return rule;
    }
  }

  function renderFields(s) {
    state.fieldsOf = s.name;
    const box = $('#fields');
    const rows = [];
    const readOnly = [];
    for (const f of s.fields) {
      if (f.read_only) { readOnly.push(f.name); continue; }
      rows.push(renderField(f));
    }
    box.replaceChildren(...rows);
    if (!rows.length) box.append(el('p', { class: 'hint', text: 'No writable field.' }));
    const ro = $('#readonly-fields');
    ro.textContent = readOnly.length ? `Read-only, ignored if sent: ${readOnly.join(', ')}` : '';
  }

  function renderField(f) {
    const id = 'field-' + f.name;
    let input;
    if (f.type === 'boolean') {
      input = el('select', { id, 'data-input': true }, el('option', { value: 'true', text: 'true' }), el('option', { value: 'false', text: 'false' }));
    } else if (f.type === 'object' || f.type === 'array' || f.type === 'any') {
      input = el('textarea', { id, 'data-input': true, rows: 2, spellcheck: 'false', placeholder: f.type === 'array' ? '[ ]' : 'JSON' });
    } else {
      const numeric = f.type === 'integer' || f.type === 'number';
      input = el('input', {
        id, 'data-input': true, spellcheck: 'false',
        type: numeric ? 'number' : 'text',
        step: f.type === 'integer' ? '1' : f.type === 'number' ? 'any' : undefined,
        placeholder: f.type === 'datetime' ? 'RFC 3339, e.g. 2006-01-02T15:04:05Z' : undefined,
      });
    }
    const oneof = f.rules.find((r) => r.startsWith('oneof='));
    let list = null;
    if (oneof && input.tagName === 'INPUT') {
      list = el('datalist', { id: id + '-choices' }, oneof.slice(6).split(' ').map((v) => el('option', { value: v })));
      input.setAttribute('list', list.id);
    }
    const hints = f.rules.filter((r) => r !== 'required').map((r) => ruleHint(r, f.type)).filter(Boolean);
    const row = el('div', { class: 'field', 'data-field': f.name, 'data-type': f.type, 'data-required': f.required ? 'true' : 'false' },
      el('div', { class: 'field-head' },
        el('label', { for: id, text: f.name }),
        f.required ? el('span', { class: 'req', title: 'required (binding:"required")', text: '*' }) : null,
        el('span', { class: 'type', text: f.type + (f.nullable ? ' or null' : '') }),
        f.type === 'datetime' ? el('button', {
          type: 'button', class: 'mini', 'data-act': 'now', text: 'now',
          onclick: () => { input.value = new Date().toISOString().replace(/\.\d+Z$/, 'Z'); fieldEdited(row); },
        }) : null,
        f.nullable ? el('label', { class: 'check mini-check' }, el('input', { type: 'checkbox', 'data-null': true }), 'null') : null,
        el('label', { class: 'check send', title: 'Send this key in data' }, el('input', { type: 'checkbox', 'data-include': true }), 'send')),
      input, list,
      hints.length ? el('p', { class: 'hint', title: 'binding: ' + f.rules.join(','), text: hints.join(' · ') }) : null,
      el('p', { class: 'field-error', 'data-error-for': f.name, role: 'alert', hidden: true }));
    input.addEventListener('input', () => fieldEdited(row));
    input.addEventListener('change', () => fieldEdited(row));
    return row;
  }

  // fieldEdited marks an edited field to be sent.
  function fieldEdited(row) {
    if (state.syncing) return;
    $('[data-include]', row).checked = true;
    const err = $('.field-error', row);
    err.hidden = true;
    row.classList.remove('invalid');
    rebuildRaw();
  }

  // resetIncludes picks the keys a fresh request sends: for create and
  // update the fields that hold a value, for patch none (until edited).
  // Editing a field, or ticking "send", adds it.
  function resetIncludes(action) {
    for (const row of $$('#fields .field')) {
      $('[data-include]', row).checked = action !== 'patch' && hasValue(row);
    }
  }

  function hasValue(row) {
    const input = $('[data-input]', row);
    const nul = $('[data-null]', row);
    return (nul && nul.checked) || (input.tagName !== 'SELECT' && input.value !== '');
  }

  function fieldValue(row) {
    const type = row.dataset.type;
    const nul = $('[data-null]', row);
    if (nul && nul.checked) return null;
    const input = $('[data-input]', row);
    switch (type) {
      case 'boolean': return input.value === 'true';
      case 'integer': case 'number': return scalar(input.value, type);
      case 'object': case 'array': case 'any': {
        if (input.value.trim() === '') return type === 'array' ? [] : type === 'object' ? {} : null;
        const r = parseJSON(input.value);
        return r.ok ? r.value : input.value;
      }
      default: return input.value;
    }
  }

  function setFieldValue(row, v) {
    const input = $('[data-input]', row);
    const nul = $('[data-null]', row);
    if (nul) nul.checked = v === null;
    if (v === null) { input.value = ''; return; }
    switch (row.dataset.type) {
      case 'boolean': input.value = v ? 'true' : 'false'; break;
      case 'object': case 'array': case 'any': input.value = typeof v === 'string' && row.dataset.type === 'any' ? JSON.stringify(v) : JSON.stringify(v, null, 1); break;
      default: input.value = typeof v === 'string' ? v : JSON.stringify(v);
    }
  }

  // fillFields puts a retrieved object into the form (the "Load" button):
  // an update sends every field, a patch only those edited afterwards.
  function fillFields(obj) {
    const update = $('#action').value === 'update';
    for (const row of $$('#fields .field')) {
      if (!(row.dataset.field in obj)) continue;
      setFieldValue(row, obj[row.dataset.field]);
      $('[data-include]', row).checked = update;
      $('.field-error', row).hidden = true;
      row.classList.remove('invalid');
    }
    rebuildRaw();
  }

  function pkValue(s) {
    const t = $('#pk').value.trim();
    if (t === '') return undefined;
    return s && s.pk_type === 'integer' ? scalar(t, 'integer') : t;
  }

  // buildFrame is the frame the form describes.
  function buildFrame() {
    const s = currentStream();
    const a = currentAction();
    if (!s || !a) return null;
    const name = a.name;
    const payload = { action: name };
    if (a.detail || SUB_ACTIONS.has(name)) {
      const pk = pkValue(s);
      if (pk !== undefined) payload.pk = pk;
    }
    if (QUERY_ACTIONS.has(name)) {
      const data = queryData(s, name);
      if (Object.keys(data).length) payload.data = data;
    } else if (SUB_ACTIONS.has(name)) {
      payload.data = { action: $('#sub-event').value };
    } else if (WRITE_ACTIONS.has(name)) {
      const data = {};
      for (const row of $$('#fields .field')) {
        if ($('[data-include]', row).checked) data[row.dataset.field] = fieldValue(row);
      }
      payload.data = data;
    } else if (!a.builtin) {
      const text = $('#custom-data').value;
      if (text.trim() !== '') {
        const r = parseJSON(text);
        payload.data = r.ok ? r.value : text;
      }
    }
    const ifMatch = $('#if-match').value.trim();
    const idem = $('#idem-key').value.trim();
    if (!$('#safety-row').hidden) {
      if (ifMatch !== '' && !$('#if-match-row').hidden) payload.if_match = ifMatch;
      if (idem !== '') payload.idempotency_key = idem;
    }
    payload.request_id = $('#request-id').value;
    return { stream: s.name, payload };
  }

  function rebuildRaw() {
    if (state.syncing) return;
    if (state.transport === 'rest') {
      const req = buildRequest();
      $('#raw').value = req ? requestText(req) : '';
    } else {
      const frame = buildFrame();
      $('#raw').value = frame ? JSON.stringify(frame, null, 2) : '';
    }
    state.rawDirty = false;
    setRawState('form', 'from the form');
  }

  function setRawState(st, text) {
    const badge = $('#raw-state');
    badge.dataset.state = st;
    badge.textContent = text;
    show($('#raw-reset'), st !== 'form');
  }

  function loadRaw(text) {
    $('#raw').value = text;
    onRawInput();
    $('#raw').focus();
  }

  // onRawInput follows an edit of the frame editor: the form shows what it
  // can of the frame, and the frame is sent as typed.
  function onRawInput() {
    state.rawDirty = true;
    if (state.transport === 'rest') {
      const parsed = parseRequest($('#raw').value);
      if (parsed.error) setRawState('invalid', parsed.error);
      else setRawState('edited', 'edited: sent as typed');
      return;
    }
    const r = parseJSON($('#raw').value);
    if (!r.ok) {
      setRawState('invalid', 'not valid JSON: sent as typed');
      return;
    }
    setRawState('edited', 'edited: sent as typed');
    if (isObject(r.value)) syncFormFromFrame(r.value);
  }

  function syncFormFromFrame(frame) {
    state.syncing = true;
    try {
      if (typeof frame.stream === 'string' && state.streams.has(frame.stream) && frame.stream !== $('#stream').value) {
        $('#stream').value = frame.stream;
        onStreamChange();
      }
      const p = isObject(frame.payload) ? frame.payload : {};
      const s = currentStream();
      if (s && typeof p.action === 'string' && s.actions.some((a) => a.name === p.action) && p.action !== $('#action').value) {
        $('#action').value = p.action;
        onActionChange();
      }
      $('#pk').value = p.pk === undefined || p.pk === null ? '' : typeof p.pk === 'string' ? p.pk : JSON.stringify(p.pk);
      if (typeof p.request_id === 'string') $('#request-id').value = p.request_id;
      $('#if-match').value = typeof p.if_match === 'string' ? p.if_match : '';
      $('#idem-key').value = typeof p.idempotency_key === 'string' ? p.idempotency_key : '';
      const data = p.data;
      const name = $('#action').value;
      if (QUERY_ACTIONS.has(name)) {
        syncQuery(isObject(data) ? data : {});
      } else if (SUB_ACTIONS.has(name)) {
        if (isObject(data) && ['create', 'update', 'delete'].includes(data.action)) $('#sub-event').value = data.action;
      } else if (WRITE_ACTIONS.has(name)) {
        for (const row of $$('#fields .field')) {
          const has = isObject(data) && row.dataset.field in data;
          $('[data-include]', row).checked = has;
          if (has) setFieldValue(row, data[row.dataset.field]);
        }
      } else if (currentAction() && !currentAction().builtin) {
        $('#custom-data').value = data === undefined ? '' : JSON.stringify(data, null, 2);
      }
    } finally {
      state.syncing = false;
    }
  }

  // send sends the frame editor's text: compacted when it is JSON, as typed
  // when it is not (the server answers "Invalid frame.").
  // send sends the request editor's text as the chosen connection: a
  // WebSocket frame (compacted when it is JSON, as typed when it is not:
  // the server answers "Invalid frame.") or a REST request.
  function send() {
    const c = state.target;
    const text = $('#raw').value;
    clearFieldErrors();
    if (state.transport === 'rest') {
      const parsed = parseRequest(text);
      if (parsed.error) { setResult('error', parsed.error); return; }
      if (parsed.req.url.includes(':pk')) { setResult('error', 'Enter a pk: the route needs one.'); $('#pk').focus(); return; }
      setResult('wait', 'waiting for the response…');
      sendREST(c, parsed.req, { form: true });
      return;
    }
    const r = parseJSON(text);
    if (!c.ws || c.ws.readyState !== WebSocket.OPEN) {
      setResult('error', `Connection ${c.label} is not connected: the frame was not sent.`);
      return;
    }
    setResult('wait', 'waiting for the reply…');
    c.sendMeta = { form: true };
    c.ws.send(r.ok ? JSON.stringify(r.value) : text);
    const sentRid = r.ok && isObject(r.value) && isObject(r.value.payload) ? r.value.payload.request_id : undefined;
    if (sentRid === $('#request-id').value) newRequestID();
  }

  function newRequestID() {
    $('#request-id').value = freshID();
    if (!state.rawDirty || state.transport === 'rest') {
      if (!state.rawDirty) rebuildRaw();
      return;
    }
    const r = parseJSON($('#raw').value);
    if (r.ok && isObject(r.value) && isObject(r.value.payload)) {
      r.value.payload.request_id = $('#request-id').value;
      $('#raw').value = JSON.stringify(r.value, null, 2);
    }
  }

  // setTransport switches the form between WebSocket frames and REST
  // requests.
  function setTransport(t) {
    state.transport = t;
    for (const b of $$('#transport [data-transport]')) b.setAttribute('aria-pressed', String(b.dataset.transport === t));
    $('#raw-label').textContent = t === 'rest' ? 'Request' : 'Frame';
    $('#raw').rows = t === 'rest' ? 8 : 10;
    document.body.dataset.transport = t;
    onStreamChange();
    showPages();
    updateSendState();
  }

  // updateSendState enables Send when the chosen connection can send:
  // over REST always, over the WebSocket while its socket is open.
  function updateSendState() {
    const c = state.target;
    const open = !!c && !!c.ws && c.ws.readyState === WebSocket.OPEN;
    $('#send').disabled = !c || (state.transport === 'ws' && !open);
    $('#send').textContent = state.conns.length > 1 && c ? `Send as ${c.label}` : 'Send';
  }

  function setResult(kind, text, status) {
    const r = $('#result');
    r.dataset.kind = kind;
    if (status === undefined) delete r.dataset.status; else r.dataset.status = String(status);
    r.textContent = text;
  }

  // showResult shows the reply to the form's last frame, and the field
  // errors of a 400 next to their fields.
  function showResult(p, req) {
    const st = p.response_status;
    const head = `${statusText(st)} · ${Math.round(performance.now() - req.sentAt)} ms`;
    if (st < 400) {
      let text = head;
      if (isObject(p.meta)) text += ` · ${p.meta.count} objects, page ${p.meta.page} of ${p.meta.num_pages}`;
      else if (isSnapshot(p)) text += ` · snapshot: ${snapshotText(p.data)}`;
      const at = replyPosition(p);
      if (at) text += ` · at @${at.offset}`;
      if (isObject(p.data) && typeof p.data.recovered === 'boolean') text += p.data.recovered ? ' · recovered' : ' · state lost: reload';
      setResult('ok', text, st);
      return;
    }
    showErrors(p, req.stream, head);
  }

  // showErrors shows the errors of a reply or REST response: those of a
  // field of the form next to it, the others above the request.
  function showErrors(p, stream, head) {
    const general = []; // messages with no field of the form to show them
    const messages = [];
    for (const err of Array.isArray(p.errors) ? p.errors : []) {
      if (!isObject(err)) { messages.push(String(err)); continue; }
      for (const [key, msgs] of Object.entries(err)) {
        const text = Array.isArray(msgs) ? msgs.join(' ') : String(msgs);
        const row = stream === $('#stream').value ? errorRow(key) : null;
        if (row) {
          const box = $('.field-error', row);
          box.textContent = text;
          box.hidden = false;
          row.classList.add('invalid');
        } else {
          general.push(`${key}: ${text}`);
        }
      }
    }
    const fe = $('#form-errors');
    fe.replaceChildren(...general.map((g) => el('div', { text: g })));
    show(fe, general.length > 0);
    const all = messages.concat(general);
    setResult('error', `${head} · ` + (all.length ? all.join('; ') : 'see the fields'), p.response_status);
  }

  // errorRow returns the shown row of the form for the key of a field
  // error: an object field, or a filter ("<field>__<lookup>"), ordering or
  // search.
  function errorRow(key) {
    let row = null;
    if (!$('#fields').hidden) {
      row = $(`#fields .field[data-field="${CSS.escape(key)}"]`);
    } else if (!$('#query-row').hidden) {
      row = key === 'ordering' ? $('#ordering-row') : key === 'search' ? $('#search-row')
        : $(`#filters .filter[data-filter="${CSS.escape(key.split('__')[0])}"]`);
    }
    return row && !row.hidden ? row : null;
  }

  function clearFieldErrors() {
    for (const row of $$('#form .field.invalid')) row.classList.remove('invalid');
    for (const box of $$('#form .field-error')) { box.hidden = true; box.textContent = ''; }
    const fe = $('#form-errors');
    fe.replaceChildren();
    fe.hidden = true;
  }

  // ------------------------------------------------------------------ wiring

  function wire() {
    $('#stream').addEventListener('change', () => { onStreamChange(); });
    $('#action').addEventListener('change', () => { onActionChange(); });
    for (const id of ['#pk', '#page', '#page-size', '#snapshot', '#sub-event', '#custom-data', '#request-id', '#if-match', '#idem-key']) {
      $(id).addEventListener('input', rebuildRaw);
      $(id).addEventListener('change', rebuildRaw);
    }
    $('#fields').addEventListener('change', (ev) => {
      if (ev.target.matches('[data-null]')) {
        fieldEdited(ev.target.closest('.field')); // ticking null sends null
      } else if (ev.target.matches('[data-include]')) {
        rebuildRaw();
      }
    });
    $('#query-row').addEventListener('input', queryEdited);
    $('#query-row').addEventListener('change', queryEdited);
    $('#ordering-add').addEventListener('click', () => {
      const s = currentStream();
      if (s) addOrderKey(s, '', false);
      rebuildRaw();
    });
    $('#form').addEventListener('submit', (ev) => { ev.preventDefault(); send(); });
    $('#new-id').addEventListener('click', newRequestID);
    $('#new-idem').addEventListener('click', () => { $('#idem-key').value = crypto.randomUUID(); rebuildRaw(); });
    $('#use-etag').addEventListener('click', () => {
      const s = currentStream();
      const pk = pkValue(s);
      const tag = s && pk !== undefined ? state.target.etags.get(objectKey(s.name, pk)) : undefined;
      if (!tag) { setResult('error', 'This connection has seen no ETag of this object: retrieve it first.'); return; }
      $('#if-match').value = tag;
      rebuildRaw();
    });
    $('#load-object').addEventListener('click', () => {
      const s = currentStream();
      const pk = pkValue(s);
      if (!s || pk === undefined) { setResult('error', 'Enter a pk to load.'); return; }
      sendFrame(state.target, { stream: s.name, payload: { action: 'retrieve', pk, request_id: freshID() } }, { fill: true, form: true });
    });
    $('#raw').addEventListener('input', onRawInput);
    $('#raw-reset').addEventListener('click', rebuildRaw);
    $('#send').addEventListener('click', send);
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey) && $('#controls').contains(ev.target)) {
        ev.preventDefault();
        send();
      }
    });
    for (const b of $$('#transport [data-transport]')) b.addEventListener('click', () => setTransport(b.dataset.transport));
    $('#page-prev').addEventListener('click', () => { if (state.pages && state.pages.previous) followPage(state.pages.conn, state.pages.previous); });
    $('#page-next').addEventListener('click', () => { if (state.pages && state.pages.next) followPage(state.pages.conn, state.pages.next); });
    $('#add-conn').addEventListener('click', () => {
      const b = openConn('b');
      b.$('cred-token').focus();
    });
    $('#filter-stream').addEventListener('change', applyFilter);
    $('#filter-text').addEventListener('input', applyFilter);
    for (const c of $$('.logbar .chips input')) c.addEventListener('change', applyFilter);
    $('#log-clear').addEventListener('click', () => {
      for (const c of state.conns) {
        c.entries = [];
        c.$('log').replaceChildren();
      }
      updateLogCount();
    });
    $('#log-copy').addEventListener('click', () => {
      const out = visibleEntries().map(exportEntry);
      copyText(JSON.stringify(out, null, 2), `${out.length} frame${out.length === 1 ? '' : 's'} as JSON`);
    });
    $('#log-expand').addEventListener('click', () => {
      const shown = visibleEntries().filter((e) => e.node.tagName === 'DETAILS');
      const open = !shown.every((e) => e.node.open);
      for (const e of shown) e.node.open = open;
      $('#log-expand').textContent = open ? 'Collapse all' : 'Expand all';
    });
  }

  // The console API, next to window.ws (the socket of connection A).
  window.channelsapi = {
    get schema() { return state.schema; },
    frames: exportEntries,
    send(stream, payload) { return sendFrame(state.target, { stream, payload }); },
    connect() { const c = state.target; c.attempt = 0; connect(c); },
    disconnect() { disconnect(state.target); },
    // The connections: id ("a", "b"), socket, state (connecting, open,
    // waiting, refused, closed), credential (null, "bearer", "cookie"),
    // opens (sockets that opened), refused (the status of a refusal),
    // retrying (a reconnect is scheduled).
    get connections() {
      return state.conns.map((c) => ({
        id: c.id, socket: c.ws, state: c.$('conn').dataset.state, credential: c.cred.token ? c.cred.mode : null,
        opens: c.opens, refused: c.refused ? c.refused.status : null, retrying: c.retryTimer !== 0,
      }));
    },
    lastCopy: '',
  };

  async function start() {
    wire();
    $('#request-id').value = freshID();
    try {
      applySchema(await loadSchema());
    } catch (e) {
      showSchemaError(`Cannot load the schema: ${e.message}. Frames can still be sent as raw JSON.`);
    }
    const saved = loadCredentials();
    const credOf = (id) => {
      const x = saved.find((v) => v.id === id);
      if (!x) return null;
      return { mode: x.cred.mode === 'cookie' ? 'cookie' : 'bearer', token: String(x.cred.token || ''), cookie: String(x.cred.cookie || '') };
    };
    state.target = openConn('a', credOf('a'));
    if (credOf('b')) openConn('b', credOf('b'));
    setTransport('ws');
    applyFilter();
    document.body.dataset.ready = 'true';
  }

  start();
})();
