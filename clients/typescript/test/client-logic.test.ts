// The client's own logic against a scripted server (test/fake.ts): when a
// lost write is sent again, resumes refused, replies matched by action,
// close, timeouts.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ChannelsApiError, ConflictError, ConnectionLostError, PermissionError, TimeoutError, compareValues,
  type ClientEvents, type LiveChange,
} from "../src/index.js";
import type { Question } from "../examples/polls.js";
import { fakeClient, schemaWithKeys, withServer, type Call } from "./fake.js";
import { opened, until } from "./harness.js";

const row: Question = { id: 1, question_text: "Why?", pub_date: "2026-01-01T00:00:00Z", version: 1 };

test("a write lost with the connection is not sent again where the stream keeps no idempotency keys", async () => {
  await withServer(
    (c) => (c.n === 1 ? c.drop() : c.reply({ data: row, response_status: 201 })),
    async (s) => {
      const client = fakeClient(s, { schema: schemaWithKeys(false) });
      try {
        await assert.rejects(client.stream("questions").create({ question_text: "Why?" }), ConnectionLostError);
        assert.equal(s.of("create").length, 1);
      } finally {
        client.close();
      }
    },
  );
});

test("a write lost with the connection is sent again where the stream keeps idempotency keys, or retryWrites says so", async () => {
  for (const more of [{ schema: schemaWithKeys(true) }, { schema: schemaWithKeys(false), retryWrites: true }]) {
    await withServer(
      (c) => (c.n === 1 ? c.drop() : c.reply({ data: row, response_status: 201 })),
      async (s) => {
        const client = fakeClient(s, more);
        try {
          assert.deepEqual(await client.stream("questions").create({ question_text: "Why?" }), row);
          assert.equal(s.of("create").length, 2);
        } finally {
          client.close();
        }
      },
    );
  }
});

test("an instance event that comes before the subscribe's reply is an event, not the reply", async () => {
  const updated = { ...row, question_text: "Updated" };
  await withServer(
    (c) => {
      if (c.frame.payload["action"] !== "subscribe_instance") return;
      // The event goes out first, then the reply.
      c.send({ action: "update", data: updated, errors: [], response_status: 200, request_id: c.frame.payload["request_id"], offset: 8 });
      c.reply({ data: { position: { epoch: "e", offset: 7 }, recovered: false }, response_status: 201 });
    },
    async (s) => {
      const client = fakeClient(s);
      try {
        const events: unknown[] = [];
        const sub = client.stream("questions").instance(1, (ev) => events.push(ev));
        await sub.ready;
        assert.deepEqual(sub.position, { epoch: "e", offset: 7 });
        assert.deepEqual(events, [{ action: "update", data: updated }]);
      } finally {
        client.close();
      }
    },
  );
});

test("a replayed 409 to a resent write is the caller's ConflictError, not asked again", async () => {
  await withServer(
    (c) => (c.n === 1 ? c.drop() : c.reply({ data: null, errors: ["Conflict."], response_status: 409, replayed: true })),
    async (s) => {
      const client = fakeClient(s, { schema: schemaWithKeys(true) });
      try {
        await assert.rejects(client.stream("questions").create({ question_text: "Why?" }), (e) => e instanceof ConflictError && e.status === 409);
        assert.equal(s.of("create").length, 2);
      } finally {
        client.close();
      }
    },
  );
});

test("close() and a subscription's close() settle every subscription not ready yet", { timeout: 10_000 }, async () => {
  // The server never answers: the subscribes wait.
  await withServer(
    () => {},
    async (s) => {
      const client = fakeClient(s);
      const live = client.stream("questions").live();
      const instance = client.stream("questions").instance(1, () => {});
      const plain = client.stream("questions").subscribe("create", () => {});
      await until((fn) => { const t = setInterval(fn, 5); return () => clearInterval(t); }, () => s.seen.length === 3, 5000, () => `${s.seen.length} requests`);
      instance.close();
      await assert.rejects(instance.ready, ConnectionLostError);
      client.close();
      await assert.rejects(live.ready, ConnectionLostError);
      await assert.rejects(plain.ready, ConnectionLostError);
    },
  );
  // A client closed while it connects: nothing was sent.
  const client = fakeClient({ url: "ws://127.0.0.1:1/ws" } as never);
  const live = client.stream("questions").live();
  client.close();
  await assert.rejects(live.ready, ConnectionLostError);
});

test("a first subscribe made while reconnecting is not a resume: no onResync", { timeout: 10_000 }, async () => {
  await withServer(
    (c) => c.reply({ data: { action: "create", position: { epoch: "e", offset: 3 }, recovered: false }, response_status: 200 }),
    async (s) => {
      const client = fakeClient(s);
      const resumes: unknown[] = [];
      client.on("resume", (r) => resumes.push(r));
      try {
        await opened(client);
        s.dropAll();
        await until((fn) => client.on("state", fn), () => client.state === "connecting", 5000, () => client.state);
        let resyncs = 0;
        const sub = client.stream("questions").subscribe("create", () => {}, { onResync: () => resyncs++ });
        await sub.ready;
        assert.equal(client.stats.connects, 2);
        assert.equal(resyncs, 0);
        assert.deepEqual(resumes, []);
        assert.deepEqual(sub.position, { epoch: "e", offset: 3 });
      } finally {
        client.close();
      }
    },
  );
});

/** The status of an error, and whether it is retried: what a test compares. */
function seen(e: unknown, retrying: boolean): [number, boolean] {
  return [e instanceof ChannelsApiError ? e.status : -1, retrying];
}

/** A successful reply to a subscribe of any kind, at offset 3. */
function subscribed(c: Call, n: number, rows: Question[] = [row]): void {
  const position = { epoch: "e", offset: 3 };
  const recovered = n > 1;
  switch (c.frame.payload["action"]) {
    case "subscribe":
      c.reply({ data: { action: "create", position, recovered }, response_status: 200 });
      break;
    case "subscribe_instance":
      c.reply({ data: { position, recovered }, response_status: 201 });
      break;
    case "subscribe_list":
      c.reply({
        data: { subscription: c.frame.payload["request_id"], results: rows, count: rows.length, position, ...(n > 1 ? { recovered: true } : {}) },
        response_status: 200,
      });
      break;
    default:
      c.reply({ data: row, response_status: 200 });
  }
}

/** Counts the requests of each action: the n-th of its action, from 1. */
function counter(): (c: Call) => number {
  const counts = new Map<string, number>();
  return (c) => {
    const action = String(c.frame.payload["action"]);
    const n = (counts.get(action) ?? 0) + 1;
    counts.set(action, n);
    return n;
  };
}

test("a resume refused with 503 or 429 is reported, on the client and the subscription, and tried again with backoff", { timeout: 10_000 }, async () => {
  const count = counter();
  const refusals: Record<number, number> = { 2: 503, 3: 429 };
  await withServer(
    (c) => {
      const n = count(c);
      const status = refusals[n];
      if (status) c.reply({ data: null, errors: ["Server busy, try again."], response_status: status });
      else subscribed(c, n);
    },
    async (s) => {
      const client = fakeClient(s);
      const errors: ClientEvents["error"][] = [];
      const resumes: ClientEvents["resume"][] = [];
      client.on("error", (e) => errors.push(e));
      client.on("resume", (r) => resumes.push(r));
      try {
        const q = client.stream("questions");
        const plainErrors: [number, boolean][] = [];
        const instanceErrors: [number, boolean][] = [];
        const liveErrors: [number, boolean][] = [];
        const plain = q.subscribe("create", () => {}, { onError: (e, retrying) => plainErrors.push(seen(e, retrying)) });
        const instance = q.instance(1, () => {}, { onError: (e, retrying) => instanceErrors.push(seen(e, retrying)) });
        const live = q.live();
        live.on((ch) => ch.type === "error" && liveErrors.push(seen(ch.error, ch.retrying)));
        await Promise.all([plain.ready, instance.ready, live.ready]);

        s.dropAll();
        await until((fn) => client.on("resume", fn), () => resumes.length === 3, 5000, () => JSON.stringify(resumes));
        const want: [number, boolean][] = [[503, true], [429, true]];
        assert.deepEqual(plainErrors, want);
        assert.deepEqual(instanceErrors, want);
        assert.deepEqual(liveErrors, want);
        assert.equal(errors.length, 6);
        for (const sub of [plain, instance, live]) {
          const mine = errors.filter((e) => e.subscription === sub.id);
          assert.deepEqual(mine.map((e) => [seen(e.error, e.retrying!), e.stream]), want.map((w) => [w, "questions"]));
        }
        assert.deepEqual(resumes.map((r) => r.recovered), [true, true, true]);
        for (const action of ["subscribe", "subscribe_instance", "subscribe_list"]) assert.equal(s.of(action).length, 4, action);
        assert.equal(client.stats.connects, 2);
      } finally {
        client.close();
      }
    },
  );
});

test("a resume refused for good (403) ends the subscription with the error reported; it is not sent again", { timeout: 10_000 }, async () => {
  const count = counter();
  await withServer(
    (c) => {
      const n = count(c);
      const subscribing = String(c.frame.payload["action"]).startsWith("subscribe");
      if (subscribing && n === 2) c.reply({ data: null, errors: ["Permission Denied"], response_status: 403 });
      else subscribed(c, n);
    },
    async (s) => {
      const client = fakeClient(s);
      const errors: ClientEvents["error"][] = [];
      client.on("error", (e) => errors.push(e));
      try {
        const q = client.stream("questions");
        const plainErrors: [number, boolean][] = [];
        const liveChanges: LiveChange<Question>[] = [];
        const plain = q.subscribe("create", () => {}, { onError: (e, retrying) => plainErrors.push(seen(e, retrying)) });
        const live = q.live();
        live.on((ch) => liveChanges.push(ch));
        await Promise.all([plain.ready, live.ready]);

        s.dropAll();
        await until((fn) => client.on("error", fn), () => errors.length === 2, 5000, () => JSON.stringify(errors));
        assert.deepEqual(plainErrors, [[403, false]]);
        const ended = liveChanges.filter((ch) => ch.type === "error");
        assert.equal(ended.length, 1);
        assert.ok(ended[0]!.type === "error" && ended[0]!.error instanceof PermissionError && !ended[0]!.retrying);
        assert.deepEqual(errors.map((e) => [e.subscription, seen(e.error, e.retrying!)]).sort(), [[plain.id, [403, false]], [live.id, [403, false]]].sort());

        // The next connection resumes neither: the retrieve, sent after the
        // subscriptions would be, is the only request on it.
        s.dropAll();
        await until((fn) => client.on("state", fn), () => client.stats.connects === 3 && client.state === "open", 5000, () => client.state);
        await client.stream("questions").retrieve(1);
        assert.equal(s.of("subscribe").length, 2);
        assert.equal(s.of("subscribe_list").length, 2);
      } finally {
        client.close();
      }
    },
  );
});

/** A page of a list reply. */
function page(c: Call, rows: Question[], offset: number, count: number): void {
  const p = Number((c.frame.payload["data"] as { page?: number }).page ?? 1);
  const size = 1;
  c.reply({
    data: rows.slice((p - 1) * size, p * size),
    meta: { count, page: p, page_size: size, num_pages: Math.ceil(count / size), position: { epoch: "e", offset } },
    response_status: 200,
  });
}

const rows2: Question[] = [row, { ...row, id: 2, question_text: "Two" }];

test("a list refused while a live collection reads its pages is reported and the load starts again with backoff", { timeout: 10_000 }, async () => {
  const count = counter();
  await withServer(
    (c) => {
      const n = count(c);
      switch (c.frame.payload["action"]) {
        case "subscribe_list":
          // One page of two rows: the rest is read with list.
          c.reply({ data: { subscription: c.frame.payload["request_id"], results: [row], count: 2, position: { epoch: "e", offset: 5 } }, response_status: 200 });
          return;
        case "list":
          if (n === 1) {
            c.reply({ data: null, errors: ["Server busy, try again."], response_status: 503 });
            return;
          }
          page(c, rows2, 5, 2);
          if (n === 3) {
            // Live after the load: a create.
            c.send({ action: "create", pk: 3, data: { ...row, id: 3 }, model: "polls.question", request_id: "s1", offset: 6 });
          }
      }
    },
    async (s) => {
      const client = fakeClient(s);
      const errors: ClientEvents["error"][] = [];
      client.on("error", (e) => errors.push(e));
      try {
        const live = client.stream("questions").live({ pageSize: 1 });
        assert.equal(live.id, "s1");
        const changes: LiveChange<Question>[] = [];
        live.on((ch) => changes.push(ch));
        await live.ready;
        await until((fn) => live.on(fn), () => live.get(3) !== undefined, 5000, () => JSON.stringify(live.items));
        assert.deepEqual(live.items, [...rows2, { ...row, id: 3 }]);
        assert.deepEqual(changes.map((ch) => (ch.type === "error" ? seen(ch.error, ch.retrying) : ch.type)), [[503, true], "load"]); // the create came during the load
        assert.deepEqual(errors.map((e) => [e.subscription, seen(e.error, e.retrying!)]), [["s1", [503, true]]]);
        assert.equal(s.of("subscribe_list").length, 2);
      } finally {
        client.close();
      }
    },
  );
});

test("a list refused for good while a live collection loads ends it: ready rejects, the error is reported, the query is ended", { timeout: 10_000 }, async () => {
  await withServer(
    (c) => {
      switch (c.frame.payload["action"]) {
        case "subscribe_list":
          c.reply({ data: { subscription: c.frame.payload["request_id"], results: [row], count: 2, position: { epoch: "e", offset: 5 } }, response_status: 200 });
          return;
        case "list":
          c.reply({ data: null, errors: ["Permission Denied"], response_status: 403 });
          return;
        default:
          c.reply({ data: { subscription: c.frame.payload["request_id"] }, response_status: 200 });
      }
    },
    async (s) => {
      const client = fakeClient(s);
      const errors: ClientEvents["error"][] = [];
      client.on("error", (e) => errors.push(e));
      try {
        const live = client.stream("questions").live({ pageSize: 1 });
        await assert.rejects(live.ready, PermissionError);
        assert.deepEqual(errors.map((e) => [e.subscription, seen(e.error, e.retrying!)]), [[live.id, [403, false]]]);
        await until((fn) => { const t = setInterval(fn, 5); return () => clearInterval(t); }, () => s.of("unsubscribe_list").length === 1, 5000, () => "unsubscribe_list");
      } finally {
        client.close();
      }
    },
  );
});

test("pages never read at one position are not taken: an error after 5 passes, then loads again with backoff until they are", { timeout: 10_000 }, async () => {
  const count = counter();
  const moving = rows2.map((r) => ({ ...r, question_text: "moving" }));
  await withServer(
    (c) => {
      const n = count(c);
      if (c.frame.payload["action"] === "subscribe_list") {
        c.reply({ data: { subscription: c.frame.payload["request_id"], results: [row], count: 2, position: { epoch: "e", offset: 5 } }, response_status: 200 });
        return;
      }
      // Eleven passes of two pages whose positions differ (every list
      // request a new offset), then one at one position.
      if (n <= 22) page(c, moving, 10 + n, 2);
      else page(c, rows2, 30, 2);
    },
    async (s) => {
      const client = fakeClient(s);
      try {
        const live = client.stream("questions").live({ pageSize: 1 });
        const changes: LiveChange<Question>[] = [];
        live.on((ch) => changes.push(ch));
        await live.ready;
        assert.deepEqual(live.items, rows2);
        assert.deepEqual(live.position, { epoch: "e", offset: 30 });
        // Loaded once, with the consistent pages; an error after each 5
        // passes that disagreed, each followed by a new snapshot.
        assert.deepEqual(changes.map((ch) => ch.type), ["error", "error", "load"]);
        for (const ch of changes) if (ch.type === "error") assert.ok(ch.retrying && /5 passes/.test(String(ch.error)));
        assert.equal(s.of("list").length, 24);
        assert.equal(s.of("subscribe_list").length, 3);
      } finally {
        client.close();
      }
    },
  );
});

test("a request without a reply in `timeout` ms fails with TimeoutError and is forgotten; close() leaves no timer", { timeout: 10_000 }, async () => {
  const held: Call[] = [];
  await withServer(
    (c) => {
      if (c.frame.payload["pk"] === 1) held.push(c); // answered late, by the test
      else c.reply({ data: { ...row, id: Number(c.frame.payload["pk"]) }, response_status: 200 });
    },
    async (s) => {
      assert.throws(() => fakeClient(s, { timeout: -1 }), /timeout must be 0 \(wait forever\) or more ms, not -1/);
      assert.throws(() => fakeClient(s, { timeout: NaN }), /not NaN/);
      const timers = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
      const before = timers();
      const client = fakeClient(s, { timeout: 100 });
      const errors: ClientEvents["error"][] = [];
      client.on("error", (e) => errors.push(e));
      try {
        const q = client.stream("questions");
        const e = await q.retrieve(1).catch((err: unknown) => err);
        assert.ok(e instanceof TimeoutError, String(e));
        assert.deepEqual([e.status, e.stream, e.action], [0, "questions", "retrieve"]);
        // The late reply is ignored: the next request gets its own.
        held[0]!.reply({ data: row, response_status: 200 });
        assert.equal((await q.retrieve(2)).id, 2);
        assert.deepEqual(errors, []);

        // A request waiting when the client closes: its timer goes too.
        const waiting = q.retrieve(1);
        client.close();
        await assert.rejects(waiting, ConnectionLostError);
        // ws keeps a timer until the server answers the close frame.
        for (let i = 0; i < 10_000 && timers() !== before; i++) await new Promise((r) => setImmediate(r));
        assert.equal(timers(), before);
      } finally {
        client.close();
      }
      // timeout: 0 waits forever: a reply 300 ms late (three timeouts of
      // the client above) is taken.
      const forever = fakeClient(s, { timeout: 0 });
      try {
        const waiting = forever.stream("questions").retrieve(1);
        await until((fn) => { const t = setInterval(fn, 5); return () => clearInterval(t); }, () => held.length === 3, 5000, () => `${held.length}`);
        const late = setTimeout(() => held[2]!.reply({ data: row, response_status: 200 }), 300);
        try {
          assert.deepEqual(await waiting, row);
        } finally {
          clearTimeout(late);
        }
      } finally {
        forever.close();
      }
    },
  );
});

test("compareValues: date-times as instants, to the nanosecond; nulls as the smallest or the largest value", () => {
  const dt = { dateTime: true };
  // As text, each pair orders the other way.
  assert.ok(compareValues("2026-03-01T10:00:00+02:00", "2026-03-01T09:00:00Z", dt) < 0);
  assert.ok(compareValues("2026-03-01T09:00:00Z", "2026-03-01T09:00:00.5Z", dt) < 0);
  assert.ok(compareValues("2026-03-01T09:00:00.000001Z", "2026-03-01T09:00:00.0000009Z", dt) > 0);
  assert.equal(compareValues("2026-03-01T09:00:00.100Z", "2026-03-01T11:00:00.1+02:00", dt), 0);
  assert.ok(compareValues("2026-03-01T09:00:00Z", "2026-03-01T09:00:00.5Z") > 0, "without dateTime: text");
  assert.ok(compareValues("not a date", "2026-03-01T09:00:00Z", dt) > 0, "what does not parse: text");

  assert.ok(compareValues(null, 1) < 0);
  assert.ok(compareValues(1, undefined) > 0);
  assert.equal(compareValues(null, undefined), 0);
  assert.ok(compareValues(null, 1, { nulls: "largest" }) > 0);
  assert.ok(compareValues("a", null, { nulls: "largest", dateTime: true }) < 0);
});
