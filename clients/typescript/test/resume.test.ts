// Reconnection: subscriptions resume from the position they reached (no
// event lost or repeated), a resume the server cannot serve
// (`recovered: false`) reloads the snapshot, and a write whose reply was
// lost is sent again with the same idempotency key.
import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";
import { backoffDelay, type ClientEvents } from "../src/index.js";
import type { Question } from "../examples/polls.js";
import { App, CuttingProxy, connect, opened, rest, restAll, servesIdempotencyKeys, until } from "./harness.js";

const app = new App();
const proxy = new CuttingProxy(() => app.port);
before(async () => {
  await app.start();
  await proxy.listen();
});
beforeEach(() => {
  proxy.refusing = false;
  proxy.muted = false;
});
after(async () => {
  await proxy.close();
  await app.stop();
});

function byPK(rows: readonly Question[]): Question[] {
  return [...rows].sort((a, b) => a.id - b.id);
}

test("after a cut, every subscription resumes from its position: nothing lost, nothing twice", async () => {
  const client = connect(proxy.url);
  const resumes: ClientEvents["resume"][] = [];
  client.on("resume", (r) => resumes.push(r));
  try {
    const tag = `resume-${Date.now()}`;
    const live = client.stream("questions").live({ filters: { question_text__icontains: tag } });
    const created: number[] = [];
    const listeners = new Set<() => void>();
    const sub = client.stream("questions").subscribe("create", (ev) => {
      created.push(ev.pk as number);
      for (const fn of listeners) fn();
    });
    await Promise.all([live.ready, sub.ready]);
    const first = await rest(app.base, "POST", "/api/questions", { question_text: `${tag} 0` });
    assert.equal(first.status, 201);
    await until((fn) => live.on(fn), () => live.size === 1, 5000, () => "first row");

    proxy.refusing = true;
    proxy.cut();
    const down = until((fn) => client.on("state", fn), () => client.state !== "open", 5000, () => client.state);
    await down;
    for (let i = 1; i <= 5; i++) await rest(app.base, "POST", "/api/questions", { question_text: `${tag} ${i}` });
    const rows = await restAll<Question>(app.base, "/api/questions", { question_text__icontains: tag });
    await rest(app.base, "PATCH", `/api/questions/${rows[1]!.id}`, { question_text: `${tag} patched` });
    await rest(app.base, "DELETE", `/api/questions/${rows[2]!.id}`);
    proxy.refusing = false;

    // A create after the resume marks the end: every event before it has arrived.
    await opened(client);
    const sentinel = await client.stream("questions").create({ question_text: `${tag} last` });
    await until((fn) => (listeners.add(fn), () => listeners.delete(fn)), () => created.includes(sentinel.id), 5000, () => JSON.stringify(created));
    const want = byPK(await restAll<Question>(app.base, "/api/questions", { question_text__icontains: tag }));
    await until((fn) => live.on(fn), () => JSON.stringify(byPK(live.items)) === JSON.stringify(want), 5000, () => JSON.stringify(live.items));
    assert.equal(want.length, 6);
    assert.equal(new Set(created).size, created.length, `a create event twice: ${created}`);
    assert.equal(created.length, 7);
    assert.equal(client.stats.connects, 2);
    assert.equal(live.reloads, 0);
    assert.deepEqual(resumes.map((r) => r.recovered), [true, true]);
  } finally {
    client.close();
  }
});

test("recovered: false (a new epoch after a restart) reloads the snapshot, over several pages", async () => {
  const client = connect(proxy.url);
  const resumes: ClientEvents["resume"][] = [];
  client.on("resume", (r) => resumes.push(r));
  try {
    const live = client.stream("questions").live({ pageSize: 20 });
    await live.ready;
    const before = await restAll<Question>(app.base, "/api/questions");
    assert.deepEqual(byPK(live.items), byPK(before));

    proxy.refusing = true;
    proxy.cut();
    await app.stop();
    await app.start();
    for (let i = 0; i < 45; i++) await rest(app.base, "POST", "/api/questions", { question_text: `after restart ${i}` });
    await rest(app.base, "DELETE", `/api/questions/${before[0]!.id}`);
    proxy.refusing = false;

    const want = byPK(await restAll<Question>(app.base, "/api/questions"));
    assert.ok(want.length > 40);
    await until((fn) => live.on(fn), () => JSON.stringify(byPK(live.items)) === JSON.stringify(want), 10_000, () => `${live.size} rows, want ${want.length}`);
    assert.equal(live.reloads, 1);
    assert.deepEqual(resumes.map((r) => r.recovered), [false]);
    // Live again after the reload.
    const q = await client.stream("questions").create({ question_text: "after reload" });
    await until((fn) => live.on(fn), () => live.get(q.id) !== undefined, 5000, () => "the create after the reload");
  } finally {
    client.close();
  }
});

test("a write whose reply was lost is sent again after reconnecting, with the same idempotency key", async (t) => {
  const client = connect(proxy.url);
  const watcher = connect(`ws://127.0.0.1:${app.port}/ws`);
  const retries: ClientEvents["retry"][] = [];
  client.on("retry", (r) => retries.push(r));
  try {
    const tag = `retry-${Date.now()}`;
    const q = await client.stream("questions").create({ question_text: `${tag} 0` });
    const seen = watcher.stream("questions").live({ filters: { question_text__icontains: tag } });
    await seen.ready;

    // The patch reaches the app, its reply does not reach the client.
    proxy.muted = true;
    const patched = client.stream("questions").patch(q.id, { question_text: `${tag} patched` });
    await until((fn) => seen.on(fn), () => seen.get(q.id)?.question_text === `${tag} patched`, 5000, () => "the patch ran");
    proxy.cut();
    proxy.muted = false;
    assert.equal((await patched).question_text, `${tag} patched`);
    assert.equal(retries.length, 1);
    assert.equal(retries[0]!.action, "patch");
    assert.match(retries[0]!.idempotencyKey, /^[0-9a-f-]{36}$/);

    // The same for a create: with the server's idempotency keys it runs once.
    proxy.muted = true;
    const created = client.stream("questions").create({ question_text: `${tag} created` });
    await until((fn) => seen.on(fn), () => seen.items.some((r) => r.question_text === `${tag} created`), 5000, () => "the create ran");
    proxy.cut();
    proxy.muted = false;
    const row = await created;
    assert.equal(retries.length, 2);
    assert.equal(retries[1]!.action, "create");
    const rows = await restAll<Question>(app.base, "/api/questions", { question_text__icontains: tag });
    const copies = rows.filter((r) => r.question_text === `${tag} created`);
    const keys = await servesIdempotencyKeys(app.base);
    t.diagnostic(`create retried after a lost reply: ${copies.length} row(s); replayed replies: ${client.stats.replayed}; server idempotency keys: ${keys}`);
    assert.ok(keys, "the example app keeps idempotency keys");
    assert.deepEqual(copies.map((r) => r.id), [row.id], "the retried create ran once");
    assert.equal(client.stats.replayed, 2, "the patch and the create were replayed");
  } finally {
    client.close();
    watcher.close();
  }
});

test("an instance subscription resumes after a cut: the updates missed, once each; an object deleted meanwhile is its delete", async () => {
  const client = connect(proxy.url);
  try {
    const q = await client.stream("questions").create({ question_text: "watched" });
    const got: string[] = [];
    const listeners = new Set<() => void>();
    const sub = client.stream("questions").instance(q.id, (ev) => {
      got.push(ev.action === "update" ? `update ${ev.data.question_text}` : `delete ${ev.data.pk}`);
      for (const fn of listeners) fn();
    });
    await sub.ready;
    await rest(app.base, "PATCH", `/api/questions/${q.id}`, { question_text: "v1" });
    await until((fn) => (listeners.add(fn), () => listeners.delete(fn)), () => got.length === 1, 5000, () => JSON.stringify(got));

    proxy.refusing = true;
    proxy.cut();
    await until((fn) => client.on("state", fn), () => client.state !== "open", 5000, () => client.state);
    await rest(app.base, "PATCH", `/api/questions/${q.id}`, { question_text: "v2" });
    await rest(app.base, "PATCH", `/api/questions/${q.id}`, { question_text: "v3" });
    proxy.refusing = false;
    await until((fn) => (listeners.add(fn), () => listeners.delete(fn)), () => got.length === 3, 5000, () => JSON.stringify(got));
    await rest(app.base, "DELETE", `/api/questions/${q.id}`);
    await until((fn) => (listeners.add(fn), () => listeners.delete(fn)), () => got.length === 4, 5000, () => JSON.stringify(got));
    assert.deepEqual(got, ["update v1", "update v2", "update v3", `delete ${q.id}`]);
    assert.equal(client.stats.connects, 2);

    // Deleted while disconnected: the resume is 404, and the handler gets the delete.
    const r = await client.stream("questions").create({ question_text: "watched 2" });
    const gone: string[] = [];
    const sub2 = client.stream("questions").instance(r.id, (ev) => {
      gone.push(ev.action);
      for (const fn of listeners) fn();
    });
    await sub2.ready;
    proxy.refusing = true;
    proxy.cut();
    await until((fn) => client.on("state", fn), () => client.state !== "open", 5000, () => client.state);
    await rest(app.base, "DELETE", `/api/questions/${r.id}`);
    proxy.refusing = false;
    await until((fn) => (listeners.add(fn), () => listeners.delete(fn)), () => gone.length === 1, 5000, () => JSON.stringify(gone));
    assert.deepEqual(gone, ["delete"]);
  } finally {
    client.close();
  }
});

test("reconnect delays: exponential, capped, with full jitter", () => {
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, 100, 2000, 0.999999)).map(Math.round), [100, 200, 400, 800, 1600, 2000, 2000]);
  assert.equal(backoffDelay(3, 100, 2000, 0), 0);
  assert.equal(backoffDelay(3, 100, 2000, 0.5), 400);
  assert.equal(backoffDelay(1000, 100, 2000, 0.5), 1000);
});
