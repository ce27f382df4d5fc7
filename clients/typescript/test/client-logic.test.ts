// The client's own logic against a scripted server (test/fake.ts): when a
// lost write is sent again, resumes refused, replies matched by action,
// close, timeouts.
import assert from "node:assert/strict";
import { test } from "node:test";
import { ConflictError, ConnectionLostError } from "../src/index.js";
import { fakeClient, schemaWithKeys, withServer } from "./fake.js";
import { opened, until } from "./harness.js";

const row = { id: 1, question_text: "Why?", pub_date: "2026-01-01T00:00:00Z" };

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
