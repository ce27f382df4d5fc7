// The client's side of safe retries (PROTOCOL.md section 11) against a
// small server that keeps idempotency keys as the contract says: the
// write's key survives a lost reply, a 409 while the first run is still
// running is asked again, and the stored reply comes back "replayed".
import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import WebSocket, { WebSocketServer } from "ws";
import { Client, ConflictError, type ClientEvents } from "../src/index.js";
import { schema, type Streams } from "../examples/polls.js";

interface Frame {
  stream: string;
  payload: Record<string, unknown>;
}

test("a create whose reply was lost runs once on a server that keeps keys", async () => {
  const seen: Frame[] = [];
  const stored = new Map<string, Record<string, unknown>>();
  let rows = 0;
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((resolve) => wss.once("listening", resolve));
  wss.on("connection", (sock) => {
    sock.on("message", (raw) => {
      const frame = JSON.parse(String(raw)) as Frame;
      seen.push(frame);
      const p = frame.payload;
      const key = p["idempotency_key"] as string;
      const reply = (body: Record<string, unknown>) =>
        sock.send(JSON.stringify({ stream: frame.stream, payload: { action: p["action"], errors: [], request_id: p["request_id"], ...body } }));
      if (seen.length === 1) {
        // The first run: done, but the connection drops before the reply.
        stored.set(key, { data: { id: ++rows, question_text: "Why?", pub_date: "2026-01-01T00:00:00Z" }, response_status: 201 });
        sock.terminate();
      } else if (seen.length === 2) {
        reply({ data: null, errors: ["A request with this key is still running."], response_status: 409 });
      } else {
        reply({ ...stored.get(key), replayed: true });
      }
    });
  });
  const port = (wss.address() as AddressInfo).port;
  const client = new Client<Streams>({ url: `ws://127.0.0.1:${port}/ws`, schema, WebSocket, backoff: { initial: 10, max: 50 } });
  const replayed: ClientEvents["replayed"][] = [];
  client.on("replayed", (r) => replayed.push(r));
  try {
    const q = await client.stream("questions").create({ question_text: "Why?" });
    assert.deepEqual(q, { id: 1, question_text: "Why?", pub_date: "2026-01-01T00:00:00Z" });
    assert.equal(rows, 1);
    assert.equal(seen.length, 3);
    const keys = seen.map((f) => f.payload["idempotency_key"]);
    assert.equal(new Set(keys).size, 1, `one key for every send: ${keys}`);
    assert.deepEqual(seen.map((f) => f.payload["data"]), [{ question_text: "Why?" }, { question_text: "Why?" }, { question_text: "Why?" }]);
    assert.equal(client.stats.replayed, 1);
    assert.deepEqual(replayed, [{ stream: "questions", action: "create", idempotencyKey: keys[0] }]);
  } finally {
    client.close();
    await new Promise((resolve) => wss.close(resolve));
  }
});

test("a 409 to a write sent once is the caller's ConflictError, not asked again", async () => {
  let sends = 0;
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((resolve) => wss.once("listening", resolve));
  wss.on("connection", (sock) => {
    sock.on("message", (raw) => {
      sends++;
      const { stream, payload } = JSON.parse(String(raw)) as Frame;
      sock.send(JSON.stringify({ stream, payload: { action: payload["action"], data: null, errors: ["The object conflicts with an existing one."], response_status: 409, request_id: payload["request_id"] } }));
    });
  });
  const client = new Client<Streams>({ url: `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/ws`, schema, WebSocket });
  try {
    const e = await client.stream("questions").create({ question_text: "x" }).catch((err: unknown) => err);
    assert.ok(e instanceof ConflictError);
    assert.deepEqual(e.errors, ["The object conflicts with an existing one."]);
    assert.equal(sends, 1);
  } finally {
    client.close();
    await new Promise((resolve) => wss.close(resolve));
  }
});
