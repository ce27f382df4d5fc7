// A scripted server for the tests of the client's own logic: it speaks the
// wire format over a real WebSocket on 127.0.0.1 and answers each request
// as the test's handler says.
import type { AddressInfo } from "node:net";
import WebSocket, { WebSocketServer } from "ws";
import { Client, type ClientOptions } from "../src/index.js";
import { schema, type Streams } from "../examples/polls.js";

export interface Frame {
  stream: string;
  payload: Record<string, unknown>;
}

/** What a handler gets: the request, and ways to answer it or drop the connection. */
export interface Call {
  frame: Frame;
  /** The n-th request of the server, from 1. */
  n: number;
  /** Sends a reply to the request: its action and request_id, errors [] unless given. */
  reply(body: Record<string, unknown>): void;
  /** Sends any payload on the request's stream. */
  send(payload: Record<string, unknown>): void;
  /** Drops the connection at once. */
  drop(): void;
}

export class FakeServer {
  readonly seen: Frame[] = [];
  private wss!: WebSocketServer;
  connections = 0;

  constructor(private readonly handler: (c: Call) => void) {}

  async start(): Promise<void> {
    this.wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await new Promise((resolve) => this.wss.once("listening", resolve));
    this.wss.on("connection", (sock) => {
      this.connections++;
      sock.on("message", (raw) => {
        const frame = JSON.parse(String(raw)) as Frame;
        this.seen.push(frame);
        const p = frame.payload;
        const send = (payload: Record<string, unknown>) => sock.send(JSON.stringify({ stream: frame.stream, payload }));
        this.handler({
          frame,
          n: this.seen.length,
          send,
          reply: (body) => send({ action: p["action"], errors: [], request_id: p["request_id"], ...body }),
          drop: () => sock.terminate(),
        });
      });
    });
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.wss.address() as AddressInfo).port}/ws`;
  }

  /** The requests seen with this action. */
  of(action: string): Frame[] {
    return this.seen.filter((f) => f.payload["action"] === action);
  }

  /** Drops every connection. */
  dropAll(): void {
    for (const c of this.wss.clients) c.terminate();
  }

  close(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    return new Promise((resolve) => this.wss.close(() => resolve()));
  }
}

/** The example's schema with idempotencyKeys set on every stream. */
export function schemaWithKeys(keys: boolean): typeof schema {
  const streams = Object.fromEntries(Object.entries(schema.streams).map(([k, v]) => [k, { ...v, idempotencyKeys: keys }]));
  return { ...schema, streams } as unknown as typeof schema;
}

export function fakeClient(server: FakeServer, more: Partial<ClientOptions<Streams>> = {}): Client<Streams> {
  return new Client<Streams>({ url: server.url, schema, WebSocket, backoff: { initial: 5, max: 20 }, ...more });
}

/** Runs fn with a started server, and closes the client and server after. */
export async function withServer(handler: (c: Call) => void, fn: (s: FakeServer) => Promise<void>): Promise<void> {
  const s = new FakeServer(handler);
  await s.start();
  try {
    await fn(s);
  } finally {
    await s.close();
  }
}
