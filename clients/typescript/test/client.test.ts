// The client against the example app: typed requests and replies, typed
// errors, one socket for every stream, live collections in their order.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  ChannelsApiError, ConflictError, ConnectionLostError, NotFoundError, PermissionError, ValidationError, errorFromReply,
  type ChangeEvent, type LiveChange,
} from "../src/index.js";
import { schema, type Choice, type Note, type Question } from "../examples/polls.js";
import { App, connect, rest, until } from "./harness.js";

const app = new App();
before(() => app.start());
after(() => app.stop());

function ws(): string {
  return `ws://127.0.0.1:${app.port}/ws`;
}

test("writes and reads of every kind, over one socket", async () => {
  const client = connect(ws(), "alice-token");
  try {
    const questions = client.stream("questions");
    const q = await questions.create({ question_text: "Why?" });
    assert.equal(q.question_text, "Why?");
    assert.equal(typeof q.id, "number");
    assert.deepEqual(await questions.retrieve(q.id), q);
    assert.equal((await questions.patch(q.id, { question_text: "Why not?" })).question_text, "Why not?");
    const upd = await questions.update(q.id, { question_text: "How?", pub_date: "2026-01-02T03:04:05Z" });
    assert.equal(upd.pub_date, "2026-01-02T03:04:05Z");

    const choices = client.stream("choices");
    const c = await choices.create({ question_id: q.id, choice_text: "Because", votes: 0 });
    // A vote is an update: it raises the choice's version too.
    assert.deepEqual(await choices.action("vote", c.id), { ...c, votes: 1, version: c.version + 1 });
    const page = await choices.list({ filters: { question_id__in: [q.id] }, ordering: ["-votes"] });
    assert.equal(page.count, 1);
    assert.equal(page.results[0]!.votes, 1);
    assert.ok(page.position && typeof page.position.epoch === "string");

    const note = await client.stream("notes").create({ text: "mine" });
    assert.equal(note.owner_id, 1);

    await choices.delete(c.id);
    await assert.rejects(choices.retrieve(c.id), NotFoundError);
    assert.equal(client.stats.connects, 1);
  } finally {
    client.close();
  }
});

test("errors are typed, with the status and errors as sent", async () => {
  const anon = connect(ws());
  const alice = connect(ws(), "alice-token");
  try {
    const v = await alice.stream("questions").create({ question_text: "" }).catch((e: unknown) => e);
    assert.ok(v instanceof ValidationError, String(v));
    assert.equal(v.status, 400);
    assert.deepEqual(v.errors, [{ question_text: ["This field is required."] }]);
    assert.deepEqual(v.fieldErrors, { question_text: ["This field is required."] });

    const bad = await alice.stream("choices").list({ filters: { votes__gte: "x" as unknown as number } }).catch((e: unknown) => e);
    assert.ok(bad instanceof ValidationError);
    assert.deepEqual(bad.errors, [{ votes__gte: ["Enter a number."] }]);

    const nf = await alice.stream("questions").retrieve(999999).catch((e: unknown) => e);
    assert.ok(nf instanceof NotFoundError);
    assert.deepEqual([nf.status, nf.errors, nf.stream, nf.action], [404, ["Not found."], "questions", "retrieve"]);

    const denied = await anon.stream("notes").list().catch((e: unknown) => e);
    assert.ok(denied instanceof PermissionError);
    assert.deepEqual([denied.status, denied.errors], [401, ["Permission Denied"]]);

    for (const status of [409, 412, 422]) {
      const e = errorFromReply("notes", { action: "patch", response_status: status, errors: ["x"], data: { id: 1 } });
      assert.ok(e instanceof ConflictError);
      assert.deepEqual(e.data, { id: 1 });
    }
    const other = errorFromReply(null, { action: null, response_status: 503, errors: ["Server busy, try again."] });
    assert.ok(other instanceof ChannelsApiError && !(other instanceof ConflictError));
    assert.equal(other.status, 503);

    const pending = alice.stream("questions").list();
    alice.close();
    const lost = await pending.catch((e: unknown) => e);
    assert.ok(lost instanceof ConnectionLostError);
    assert.equal(lost.status, 0);
    await assert.rejects(alice.stream("questions").list(), ConnectionLostError);
  } finally {
    anon.close();
    alice.close();
  }
});

test("a write carries an idempotency key of its own; reads carry none", async () => {
  const client = connect(ws());
  const sent: Record<string, unknown>[] = [];
  const { default: WebSocket } = await import("ws");
  const origSend = WebSocket.prototype.send;
  WebSocket.prototype.send = function (this: InstanceType<typeof WebSocket>, data: unknown, ...rest: unknown[]) {
    sent.push(JSON.parse(String(data)).payload);
    return (origSend as (...a: unknown[]) => void).call(this, data, ...rest);
  } as typeof origSend;
  try {
    const q = await client.stream("questions").create({ question_text: "keyed" });
    await client.stream("questions").patch(q.id, { question_text: "keyed 2" });
    await client.stream("questions").retrieve(q.id);
    const keys = sent.map((p) => p["idempotency_key"]);
    assert.match(String(keys[0]), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.notEqual(keys[0], keys[1]);
    assert.equal(typeof keys[1], "string");
    assert.equal(keys[2], undefined);
  } finally {
    WebSocket.prototype.send = origSend;
    client.close();
  }
});

test("a live collection: snapshot, then creates, updates and deletes of its query, in its ordering", async () => {
  const writer = connect(ws());
  const reader = connect(ws());
  try {
    const qs = writer.stream("questions");
    const tag = `live-${Date.now()}`;
    const a = await qs.create({ question_text: `${tag} a`, pub_date: "2026-01-01T00:00:00Z" });
    await qs.create({ question_text: "unrelated", pub_date: "2026-01-01T00:00:00Z" });
    const live = reader.stream("questions").live({ filters: { question_text__icontains: tag }, ordering: ["-pub_date"] });
    const changes: LiveChange<Question>[] = [];
    live.on((c) => changes.push(c));
    await live.ready;
    assert.deepEqual(live.items, [a]);

    const b = await qs.create({ question_text: `${tag} b`, pub_date: "2026-03-01T00:00:00Z" });
    const c = await qs.create({ question_text: `${tag} c`, pub_date: "2026-02-01T00:00:00Z" });
    const d = await qs.create({ question_text: `${tag} d`, pub_date: "2026-02-01T00:00:00Z" });
    const e = await qs.create({ question_text: `${tag} e`, pub_date: "2026-02-01T00:00:00Z" });
    await qs.patch(a.id, { question_text: "left the query" });
    const c2 = await qs.patch(c.id, { pub_date: "2026-01-15T00:00:00Z" });
    await qs.delete(b.id);
    // -pub_date, then the primary key: not the order of the primary keys.
    const want = [d, e, c2];
    await until((fn) => live.on(fn), () => JSON.stringify(live.items) === JSON.stringify(want), 5000, () => JSON.stringify(live.items));
    assert.deepEqual(changes.map((ch) => ch.type), ["load", "create", "create", "create", "create", "delete", "update", "delete"]);
    assert.ok(live.position && live.position.offset > 0);
    live.close();
  } finally {
    writer.close();
    reader.close();
  }
});

test("a live collection ordered by a date-time orders instants, whatever their zone and fraction", async () => {
  // The generated schema's formats say pub_date is a date-time; a schema
  // without formats (a module generated before them) leaves it to the values.
  assert.deepEqual(schema.streams.questions.formats, { pub_date: "date-time" });
  const { formats: _, ...questionsWithoutFormats } = schema.streams.questions;
  const withoutFormats = { ...schema, streams: { ...schema.streams, questions: questionsWithoutFormats } };
  const writer = connect(ws());
  const readers = [connect(ws()), connect(ws(), undefined, { schema: withoutFormats })];
  try {
    const qs = writer.stream("questions");
    const tag = `dates-${Date.now()}`;
    // By instant a, b, c, d; as text the other way round.
    const dates = {
      d: "2026-03-01T08:30:00-01:00", // 09:30Z
      c: "2026-03-01T09:00:00.5Z",
      b: "2026-03-01T09:00:00Z",
      a: "2026-03-01T10:00:00+02:00", // 08:00Z
    };
    const made: Record<string, Question> = {};
    for (const [name, pub_date] of Object.entries(dates)) made[name] = await qs.create({ question_text: `${tag} ${name}`, pub_date });
    // The app keeps each date as written.
    assert.deepEqual(Object.values(made).map((q) => q.pub_date), Object.values(dates));
    for (const reader of readers) {
      for (const ordering of [["pub_date"], ["-pub_date"]] as const) {
        const live = reader.stream("questions").live({ filters: { question_text__icontains: tag }, ordering: [...ordering] });
        await live.ready;
        const want = ordering[0] === "pub_date" ? ["a", "b", "c", "d"] : ["d", "c", "b", "a"];
        assert.deepEqual(live.items.map((q) => q.question_text), want.map((n) => `${tag} ${n}`), ordering[0]);
        // A change moves a row by its instant: b becomes the first.
        await qs.patch(made["b"]!.id, { pub_date: "2026-03-01T07:59:59.999999999Z" });
        await until((fn) => live.on(fn), () => live.get(made["b"]!.id)?.pub_date.startsWith("2026-03-01T07:59") ?? false, 5000, () => "the patch");
        const moved = ordering[0] === "pub_date" ? ["b", "a", "c", "d"] : ["d", "c", "a", "b"];
        assert.deepEqual(live.items.map((q) => q.question_text), moved.map((n) => `${tag} ${n}`), ordering[0]);
        await qs.patch(made["b"]!.id, { pub_date: dates.b });
        live.close();
      }
    }
  } finally {
    writer.close();
    for (const r of readers) r.close();
  }
});

test("live collections of notes see only their user's notes", async () => {
  const alice = connect(ws(), "alice-token");
  const bob = connect(ws(), "bob-token");
  try {
    const aliceNotes = alice.stream("notes").live();
    const bobNotes = bob.stream("notes").live();
    await Promise.all([aliceNotes.ready, bobNotes.ready]);
    const bobsBefore = bobNotes.size;
    const n: Note = await alice.stream("notes").create({ text: "alice's" });
    await until((fn) => aliceNotes.on(fn), () => aliceNotes.get(n.id) !== undefined, 5000, () => "alice's note");
    const mark = await bob.stream("notes").create({ text: "bob's" });
    await until((fn) => bobNotes.on(fn), () => bobNotes.get(mark.id) !== undefined, 5000, () => "bob's note");
    assert.equal(bobNotes.get(n.id), undefined);
    assert.equal(bobNotes.size, bobsBefore + 1);
  } finally {
    alice.close();
    bob.close();
  }
});

test("a channels-api subscription receives its kind of change, of its pk", async () => {
  const client = connect(ws());
  try {
    const choices = client.stream("choices");
    const q = await client.stream("questions").create({ question_text: "sub" });
    const c1 = await choices.create({ question_id: q.id, choice_text: "one" });
    const c2 = await choices.create({ question_id: q.id, choice_text: "two" });
    const got: ChangeEvent<Choice>[] = [];
    const listeners = new Set<() => void>();
    const sub = choices.subscribe("update", (ev) => {
      got.push(ev);
      for (const fn of listeners) fn();
    }, { pk: c2.id });
    await sub.ready;
    await choices.action("vote", c1.id);
    await choices.action("vote", c2.id);
    await until((fn) => (listeners.add(fn), () => listeners.delete(fn)), () => got.length >= 1, 5000, () => JSON.stringify(got));
    assert.equal(got.length, 1);
    assert.equal(got[0]!.pk, c2.id);
    assert.equal(got[0]!.data.votes, 1);
    const status = await rest(app.base, "GET", `/api/choices/${c2.id}`);
    assert.deepEqual(status.body, got[0]!.data);
    sub.close();
  } finally {
    client.close();
  }
});
