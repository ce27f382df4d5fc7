// What the tests share: the example app (built with `go build ./example`,
// or CHANNELSAPI_EXAMPLE_BIN), a TCP proxy that cuts connections, REST
// reads, and waiting on events with a deadline.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { Client } from "../src/index.js";
import { schema, type Streams } from "../examples/polls.js";

export const packageDir = fileURLToPath(new URL("../../", import.meta.url));
export const repoRoot = path.resolve(packageDir, "../..");

/** Where `npm test` builds the example app before the tests (test/build-example.ts). */
export const builtExample = path.join(packageDir, "build", "example-app");

let built: string | undefined;

/**
 * The example app's binary: CHANNELSAPI_EXAMPLE_BIN, else the one `npm
 * test` built, else built once for this test file.
 */
export function exampleBinary(): string {
  if (process.env["CHANNELSAPI_EXAMPLE_BIN"]) return process.env["CHANNELSAPI_EXAMPLE_BIN"];
  if (fs.existsSync(builtExample)) return builtExample;
  if (!built) {
    built = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "channelsapi-ts-")), "example");
    execFileSync("go", ["build", "-o", built, "./example"], { cwd: repoRoot, stdio: "inherit" });
  }
  return built;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** A process of the example app. */
export class App {
  private proc: ChildProcess | null = null;
  private output = "";
  readonly db: string;
  port = 0;

  constructor(db?: string) {
    this.db = db ?? path.join(fs.mkdtempSync(path.join(os.tmpdir(), "channelsapi-ts-db-")), "polls.db");
  }

  get base(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts the app (on the port it had, if it ran before) and waits until it serves. */
  async start(): Promise<void> {
    if (!this.port) this.port = await freePort();
    const proc = spawn(exampleBinary(), ["-addr", `127.0.0.1:${this.port}`, "-db", this.db], {
      env: { ...process.env, GIN_MODE: "release" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.proc = proc;
    proc.stdout!.on("data", (b: Buffer) => (this.output += b.toString()));
    proc.stderr!.on("data", (b: Buffer) => (this.output += b.toString()));
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`the example app exited (${proc.exitCode}):\n${this.output}`);
      try {
        const r = await fetch(`${this.base}/api/questions`);
        await r.arrayBuffer();
        if (r.ok) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`the example app does not serve:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** Stops the app (SIGTERM) and waits for it to exit. */
  async stop(): Promise<void> {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((resolve) => proc.once("exit", resolve));
    proc.kill("SIGTERM");
    await exited;
  }

  log(): string {
    return this.output;
  }
}

/**
 * A TCP proxy between clients and the app. cut() ends every connection it
 * carries; while refusing, it closes new connections at once; while
 * muted, what the app sends is dropped (a reply lost on the way).
 */
export class CuttingProxy {
  private readonly server: net.Server;
  private readonly conns = new Set<net.Socket>();
  refusing = false;
  muted = false;
  /** How many times cut() ended at least one connection. */
  cuts = 0;
  port = 0;

  constructor(private readonly upstream: () => number) {
    this.server = net.createServer((down) => {
      if (this.refusing) {
        down.destroy();
        return;
      }
      const up = net.connect(this.upstream(), "127.0.0.1");
      this.conns.add(down);
      this.conns.add(up);
      const end = () => {
        this.conns.delete(down);
        this.conns.delete(up);
        down.destroy();
        up.destroy();
      };
      down.on("error", end).on("close", end);
      up.on("error", end).on("close", end);
      down.on("data", (b: Buffer) => up.write(b));
      up.on("data", (b: Buffer) => {
        if (!this.muted) down.write(b);
      });
    });
  }

  listen(): Promise<number> {
    return new Promise((resolve) => {
      this.server.listen(0, "127.0.0.1", () => {
        this.port = (this.server.address() as net.AddressInfo).port;
        resolve(this.port);
      });
    });
  }

  /** Ends every connection; returns how many sockets it ended. */
  cut(): number {
    const n = this.conns.size;
    for (const s of [...this.conns]) s.resetAndDestroy();
    this.conns.clear();
    if (n > 0) this.cuts++;
    return n;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** A client of the example app's streams. */
export function connect(url: string, token?: string): Client<Streams> {
  return new Client<Streams>({
    url,
    schema,
    WebSocket,
    protocols: token ? ["bearer", token] : undefined,
    backoff: { initial: 20, max: 200 },
  });
}

/** GETs every page of a REST collection, with the query keys given. */
export async function restAll<M>(base: string, collection: string, query: Record<string, string> = {}, token?: string): Promise<M[]> {
  const out: M[] = [];
  let url: string | null = `${base}${collection}?${new URLSearchParams({ ...query, page_size: "100" })}`;
  while (url) {
    const r = await fetch(url, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    if (!r.ok) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
    const body = (await r.json()) as { results: M[]; next: string | null };
    out.push(...body.results);
    url = body.next && (body.next.startsWith("http") ? body.next : base + body.next);
  }
  return out;
}

/** A REST request with a JSON body. */
export async function rest(base: string, method: string, p: string, body?: unknown, token?: string): Promise<{ status: number; body: unknown }> {
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (token) headers["Authorization"] = `Bearer ${token}`;
  const r = await fetch(base + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

/**
 * Resolves once check() holds: checked now and after every call of the
 * function subscribe() passes it; rejects after ms with what describe() says.
 */
export function until(subscribe: (fn: () => void) => () => void, check: () => boolean, ms: number, describe: () => string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (check()) {
      resolve();
      return;
    }
    let stop = () => {};
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`not reached in ${ms} ms: ${describe()}`));
    }, ms);
    stop = subscribe(() => {
      if (check()) {
        clearTimeout(timer);
        stop();
        resolve();
      }
    });
  });
}

/** Whether the app's AsyncAPI document says writes take "idempotency_key" (PROTOCOL.md section 11). */
export async function servesIdempotencyKeys(base: string): Promise<boolean> {
  if (process.env["CHANNELSAPI_TS_REQUIRE_IDEMPOTENCY"] === "1") return true;
  const doc = (await (await fetch(`${base}/api/asyncapi.json`)).json()) as {
    components: { messages: Record<string, { payload: { properties: { payload: { properties: Record<string, unknown> } } } }> };
  };
  const create = doc.components.messages["questions.create.request"];
  return create !== undefined && "idempotency_key" in create.payload.properties.payload.properties;
}

/** Resolves when the client's connection is open. */
export function opened(client: Client<Streams>): Promise<void> {
  return until((fn) => client.on("state", fn), () => client.state === "open", 20_000, () => `client ${client.state}`);
}
