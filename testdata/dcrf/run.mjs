// run.mjs drives a channelsapi server with dcrf-client 0.3.0, unchanged, over
// a real WebSocket: the client half of TestDCRFClient (dcrf_test.go).
//
//   node run.mjs ws://127.0.0.1:8080/ws      (or DCRF_URL=ws://... node run.mjs)
//
// The server serves the stream "items" of dcrf_test.go: objects
// {"id", "name" (required), "votes", "done"}, with the filters of
// PROTOCOL.md section 8 declared on name, votes and done, ordering on id,
// name and votes, and search on name. The table starts empty.
//
// The script talks to its driver on stdio, one JSON object per line. It
// writes {"ask": "update", "pk": 1, "name": "x"} (the driver renames the row
// through GORM, outside the API) or {"ask": "disconnect"} (the driver closes
// the connection from the server side) and reads one line back:
// {"ok": true} or {"ok": false, "error": "..."}. It ends with one line
// {"result": {...}}, what it observed, and exit status 0; at the first
// mismatch it prints what it wanted and what it got on stderr and exits 1.
// Every wait has a deadline (DCRF_TIMEOUT_MS, default 10000).

import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { inspect, isDeepStrictEqual } from 'node:util';

import dcrfClient from 'dcrf-client';
import WebSocket from 'ws';

// dcrf-client 0.3.0 is CommonJS with its API on exports.default.
const dcrf = dcrfClient.default;

const url = process.argv[2] || process.env.DCRF_URL;
const deadline = Number(process.env.DCRF_TIMEOUT_MS || 10000);
const stream = 'items';

class Mismatch extends Error {}

function fail(step, message) {
  throw new Mismatch(`${step}: ${message}`);
}

function show(v) {
  return inspect(v, { depth: null, breakLength: Infinity });
}

function expectEqual(step, got, want) {
  if (!isDeepStrictEqual(got, want)) {
    fail(step, `want ${show(want)}, got ${show(got)}`);
  }
  return got;
}

// within settles like promise, or rejects once the deadline has passed.
async function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Mismatch(`no ${what} within ${deadline} ms`)), deadline);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// resolves awaits a request the server must answer with 2xx; dcrf-client
// resolves with the reply's data.
function resolves(step, promise) {
  return within(promise, `reply to ${step}`).catch((err) => {
    if (err instanceof Mismatch) throw err;
    fail(step, `want a 2xx reply, got ${show(err)}`);
  });
}

// rejects awaits a request the server must refuse; dcrf-client rejects with
// the reply's payload.
async function rejects(step, promise, status) {
  let payload;
  try {
    const data = await within(promise, `reply to ${step}`);
    fail(step, `want ${status}, got a 2xx reply with data ${show(data)}`);
  } catch (err) {
    if (err instanceof Mismatch) throw err;
    payload = err;
  }
  expectEqual(`${step}: response_status`, payload.response_status, status);
  return payload;
}

// Inbox queues what a callback receives until the scenario takes it.
class Inbox {
  constructor(name) {
    this.name = name;
    this.items = [];
    this.waiters = [];
  }

  push(item) {
    const w = this.waiters.shift();
    if (w) w(item);
    else this.items.push(item);
  }

  next(what) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return within(new Promise((resolve) => this.waiters.push(resolve)), `${what} on ${this.name}`);
  }

  expectEmpty(step) {
    expectEqual(`${step}: unexpected callbacks on ${this.name}`, this.items, []);
  }
}

// The driver's side of stdio.
const stdin = new Inbox('stdin');
const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => stdin.push(line));

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

async function ask(step, request) {
  emit(request);
  const answer = JSON.parse(await stdin.next(`driver's answer to ${request.ask}`));
  if (answer.ok !== true) fail(step, `the driver could not ${request.ask}: ${show(answer)}`);
  return answer;
}

function item(obj) {
  return { id: obj.id, name: obj.name, votes: obj.votes, done: obj.done };
}

function names(list) {
  if (!Array.isArray(list)) fail('list', `want an array, got ${show(list)}`);
  return list.map((o) => o.name);
}

async function scenario(client, frames, closes) {
  const result = {};
  // framesOf returns the payloads of the frames received so far that carry
  // request_id, from the index from on.
  const framesOf = (requestId, from = 0) =>
    frames.slice(from).filter((f) => f.payload && f.payload.request_id === requestId).map((f) => f.payload);
  const frameIndex = (pred) => frames.findIndex((f) => f.payload && pred(f.payload));

  // create, and a create the server refuses.
  const alpha = await resolves('create alpha', client.create(stream, { name: 'alpha', votes: 3 }));
  expectEqual('create alpha', item(alpha), { id: alpha.id, name: 'alpha', votes: 3, done: false });
  if (typeof alpha.id !== 'number') fail('create alpha', `want a numeric id, got ${show(alpha.id)}`);
  const beta = await resolves('create beta', client.create(stream, { name: 'beta', votes: 10 }));
  const gamma = await resolves('create Gamma', client.create(stream, { name: 'Gamma', votes: 7, done: true }));
  result.created = [alpha, beta, gamma];
  const invalid = await rejects('create without name', client.create(stream, { votes: 1 }), 400);
  expectEqual('create without name: errors', invalid.errors, [{ name: ['This field is required.'] }]);
  result.create_invalid = invalid;

  // list: without data (the client sends {}), and a page.
  const all = await resolves('list', client.list(stream));
  expectEqual('list', all, [alpha, beta, gamma]);
  const page2 = await resolves('list page 2', client.list(stream, { page: 2, page_size: 2 }, 'list-page-2'));
  expectEqual('list page 2', page2, [gamma]);
  const [page2Reply] = framesOf('list-page-2');
  const { position, ...pageMeta } = page2Reply.meta;
  expectEqual('list page 2: meta', pageMeta, { count: 3, page: 2, page_size: 2, num_pages: 2 });
  expectEqual("list page 2: position", typeof position?.epoch === 'string' && Number.isInteger(position?.offset) && position.offset >= 3, true);
  result.list = { all, page2: page2Reply };

  // list with the filter keys of PROTOCOL.md section 8 as the list data.
  const filters = [
    ['name exact', { name: 'beta' }, ['beta']],
    ['name__icontains', { name__icontains: 'MM' }, ['Gamma']],
    ['name__istartswith and done', { name__istartswith: 'g', done: true }, ['Gamma']],
    ['votes__gte with ordering', { votes__gte: 5, ordering: '-votes' }, ['beta', 'Gamma']],
    ['votes__in array', { votes__in: [3, 7] }, ['alpha', 'Gamma']],
    ['votes__in string', { votes__in: '3,10' }, ['alpha', 'beta']],
    ['votes__range', { votes__range: [4, 8] }, ['Gamma']],
    ['done', { done: true }, ['Gamma']],
    ['search', { search: 'ALP' }, ['alpha']],
    ['empty value', { name: '' }, ['alpha', 'beta', 'Gamma']],
    ['ordering and page', { ordering: '-id', page: 1, page_size: 2 }, ['Gamma', 'beta']],
  ];
  result.filters = {};
  for (const [name, data, want] of filters) {
    const rid = `filter ${name}`;
    const got = await resolves(`list ${name}`, client.list(stream, data, rid));
    expectEqual(`list ${name}`, names(got), want);
    result.filters[name] = { data: got.map((o) => o.name), meta: framesOf(rid)[0].meta };
  }
  const filterErrors = [
    ['unknown filter', { colour: 'red' }],
    ['unknown lookup', { name__regex: 'a' }],
    ['bad value', { votes__gte: 'many' }],
    ['unknown ordering', { ordering: 'colour' }],
  ];
  result.filter_errors = {};
  for (const [name, data] of filterErrors) {
    const reply = await rejects(`list ${name}`, client.list(stream, data), 400);
    if (!Array.isArray(reply.errors) || reply.errors.length !== 1) {
      fail(`list ${name}`, `want one {key: [messages]} error, got ${show(reply.errors)}`);
    }
    result.filter_errors[name] = reply.errors[0];
  }

  // retrieve (the client sends data: {} with it), and one that is missing.
  expectEqual('retrieve', await resolves('retrieve', client.retrieve(stream, alpha.id)), alpha);
  const missing = await rejects('retrieve missing', client.retrieve(stream, 999999), 404);
  expectEqual('retrieve missing: errors', missing.errors, ['Not found.']);
  result.retrieve_missing = missing;

  // patch, and update with the object as retrieved (its id is read-only and
  // ignored).
  const patched = await resolves('patch', client.patch(stream, alpha.id, { votes: 4 }));
  expectEqual('patch', patched, { ...alpha, votes: 4 });
  const updated = await resolves('update', client.update(stream, alpha.id, { ...patched, name: 'alpha2', votes: 5 }));
  expectEqual('update', updated, { ...alpha, name: 'alpha2', votes: 5 });
  result.patched = patched;
  result.updated = updated;

  // subscribe to alpha's instance events (subscribe_instance).
  const subId = `sub-alpha-${alpha.id}`;
  const alphaEvents = new Inbox('the alpha subscription');
  const sub = client.subscribe(stream, alpha.id, (data, action) => alphaEvents.push({ action, data }), subId);
  expectEqual('subscribe', await resolves('subscribe', sub), null);
  // A refused subscription stays registered in the client (and is sent
  // again on reconnecting) until cancelled.
  const refused = client.subscribe(stream, 999999, () => {});
  const missingSub = await rejects('subscribe missing', refused, 404);
  refused.cancel();
  result.subscribe = { reply: framesOf(subId)[0], missing: missingSub };
  result.events = [];

  // A change made on the Go side, through GORM.
  await ask('go update', { ask: 'update', pk: alpha.id, name: 'from-go' });
  let ev = await alphaEvents.next('update event of the Go change');
  expectEqual('update event of the Go change', ev, { action: 'update', data: { ...updated, name: 'from-go' } });
  result.events.push(ev);

  // A change made by the client: its reply comes before its event.
  const mark = frames.length;
  const patched2 = await resolves('patch 2', client.patch(stream, alpha.id, { votes: 6 }));
  ev = await alphaEvents.next('update event of the patch');
  expectEqual('update event of the patch', ev, { action: 'update', data: patched2 });
  const replyAt = frameIndex((p) => p.action === 'patch' && p.data && p.data.votes === 6);
  const eventAt = frameIndex((p) => p.request_id === subId && p.action === 'update' && p.data.votes === 6);
  if (!(mark <= replyAt && replyAt < eventAt)) {
    fail('patch 2', `want the reply (frame ${replyAt}) before the event (frame ${eventAt})`);
  }
  result.events.push(ev);

  // The server closes the connection; dcrf-client reconnects and sends its
  // subscriptions again, with their request_id.
  const reconnected = once(client.transport, 'reconnect');
  await ask('disconnect', { ask: 'disconnect' });
  await within(reconnected, 'reconnection');
  const afterReconnect = frames.length;
  // Frames are handled in order: the reply to this retrieve comes after the
  // reply to the subscription that the client sent again on reconnecting.
  await resolves('retrieve after reconnect', client.retrieve(stream, alpha.id));
  const resubscribed = framesOf(subId, afterReconnect);
  expectEqual('resubscribe reply', resubscribed.map((p) => [p.action, p.response_status]), [['subscribe_instance', 201]]);
  await ask('go update after reconnect', { ask: 'update', pk: alpha.id, name: 'after-reconnect' });
  ev = await alphaEvents.next('update event after reconnecting');
  expectEqual('update event after reconnecting', ev, { action: 'update', data: { ...patched2, name: 'after-reconnect' } });
  result.events.push(ev);
  result.reconnect = { close: closes[0], resubscribed };

  // delete, and its event: dcrf-client moves the event's {"pk"} to pkField.
  expectEqual('delete', await resolves('delete', client.delete(stream, alpha.id)), {});
  ev = await alphaEvents.next('delete event');
  expectEqual('delete event', ev, { action: 'delete', data: { id: alpha.id } });
  result.events.push(ev);
  alphaEvents.expectEmpty('after delete');
  result.raw_events = framesOf(subId).filter((p) => p.action === 'update' || p.action === 'delete');

  // unsubscribe: 0.3.0's cancel() only drops the listener, so the server's
  // unsubscribe_instance goes through the client's generic request().
  expectEqual('cancel', sub.cancel(), true);
  const unsub = await resolves('unsubscribe alpha',
    client.request(stream, { action: 'unsubscribe_instance', pk: alpha.id }, subId));
  expectEqual('unsubscribe alpha', unsub, null);
  result.unsubscribe = framesOf(subId).at(-1);

  // beta, watched by three subscriptions: one dcrf-client subscription to
  // end, one that stays (the witness), and a live query of PROTOCOL.md
  // section 9, made with the client's generic request() and dispatcher.
  const liveId = `live-beta-${beta.id}`;
  const live = new Inbox('the live query');
  client.dispatcher.listen({ stream, payload: { request_id: liveId } }, (msg) => {
    if (!msg.payload.action.endsWith('subscribe_list')) live.push(msg.payload);
  });
  const liveReply = await resolves('subscribe_list', client.request(stream,
    { action: 'subscribe_list', data: { votes__gte: 11, snapshot: true } }, liveId));
  const { position: livePosition, ...liveSnapshot } = liveReply;
  expectEqual('subscribe_list', liveSnapshot, { subscription: liveId, results: [], count: 0 });
  expectEqual('subscribe_list: position', typeof livePosition?.epoch === 'string' && Number.isInteger(livePosition?.offset), true);

  const subB = `sub-beta-${beta.id}`;
  const witnessId = `witness-beta-${beta.id}`;
  const betaEvents = new Inbox('the beta subscription');
  const witness = new Inbox('the beta witness');
  // Sent without waiting for the subscriptions' replies: frames are handled
  // in order, so both subscriptions see the patch.
  const betaSub = client.subscribe(stream, beta.id, (data, action) => betaEvents.push({ action, data }), subB);
  const witnessSub = client.subscribe(stream, beta.id, (data, action) => witness.push({ action, data }), witnessId);
  const patch11 = client.patch(stream, beta.id, { votes: 11 });
  expectEqual('pipelined subscribe and patch',
    await Promise.all([resolves('subscribe beta', betaSub), resolves('subscribe witness', witnessSub),
      resolves('patch beta', patch11)]),
    [null, null, { ...beta, votes: 11 }]);
  const liveEvents = [];
  for (const [votes, liveAction] of [[11, 'create'], [12, 'update'], [2, 'delete']]) {
    if (votes !== 11) await resolves(`patch beta ${votes}`, client.patch(stream, beta.id, { votes }));
    const want = { action: 'update', data: { ...beta, votes } };
    expectEqual(`beta event ${votes}`, await betaEvents.next(`beta event ${votes}`), want);
    expectEqual(`witness event ${votes}`, await witness.next(`witness event ${votes}`), want);
    const got = await live.next(`live query event of votes ${votes}`);
    expectEqual(`live query event of votes ${votes}`, [got.action, got.pk, got.request_id], [liveAction, beta.id, liveId]);
    liveEvents.push(got);
  }
  result.live = { reply: framesOf(liveId)[0], events: liveEvents };

  // After unsubscribe_instance and unsubscribe_list the server sends their
  // request_ids nothing. Two changes to beta that both would see: the
  // events of one connection come in commit order, so once the witness has
  // the second, anything for the ended subscriptions would be in as well.
  expectEqual('cancel beta', betaSub.cancel(), true);
  expectEqual('unsubscribe beta', await resolves('unsubscribe beta',
    client.request(stream, { action: 'unsubscribe_instance', pk: beta.id }, subB)), null);
  expectEqual('unsubscribe_list', await resolves('unsubscribe_list',
    client.request(stream, { action: 'unsubscribe_list' }, liveId)), { subscription: liveId });
  const afterUnsubscribe = frames.length;
  await resolves('patch beta 13', client.patch(stream, beta.id, { votes: 13 }));
  await resolves('patch beta 14', client.patch(stream, beta.id, { votes: 14 }));
  expectEqual('witness event 13', (await witness.next('witness event 13')).data.votes, 13);
  expectEqual('witness event 14', (await witness.next('witness event 14')).data.votes, 14);
  result.after_unsubscribe = [...framesOf(subB, afterUnsubscribe), ...framesOf(liveId, afterUnsubscribe)];
  expectEqual('frames for the ended subscriptions', result.after_unsubscribe, []);
  betaEvents.expectEmpty('after unsubscribe');
  live.expectEmpty('after unsubscribe_list');
  return result;
}

async function main() {
  if (!url) {
    process.stderr.write('usage: node run.mjs ws://host:port/ws (or set DCRF_URL)\n');
    return 2;
  }
  const client = dcrf.connect(url, {
    pkField: 'id',
    websocket: {
      WebSocket,
      minReconnectionDelay: 10,
      maxReconnectionDelay: 200,
      connectionTimeout: deadline,
      maxRetries: 20,
    },
  });
  // Every frame as received, to check what the client's promises and
  // callbacks do not show (meta, statuses, order).
  const frames = [];
  client.transport.on('message', (event) => frames.push(JSON.parse(event.data)));
  const closes = [];
  client.transport.socket.addEventListener('close', (event) => closes.push({ code: event.code, reason: event.reason }));
  try {
    const result = await scenario(client, frames, closes);
    emit({ result });
    return 0;
  } catch (err) {
    process.stderr.write(`dcrf-client scenario failed: ${err instanceof Mismatch ? err.message : err.stack}\n`);
    return 1;
  } finally {
    client.close();
    lines.close();
  }
}

process.exit(await main());
