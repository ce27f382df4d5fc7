/**
 * The client: one WebSocket for every stream, requests matched to their
 * replies by request_id, reconnection with exponential backoff and jitter,
 * subscriptions resumed with `since` from the position each reached, and
 * writes in flight sent again with their idempotency key.
 */
import { ChannelsApiError, ConnectionLostError, NotFoundError, TimeoutError, errorFromReply, isTransientError } from "./errors.js";
import { isReplayed, isStillRunning, isWrite, stillRunningRetries, takesIdempotencyKey, withIdempotencyKey } from "./idempotency.js";
import { LiveCollection, type LiveOptions } from "./live.js";
import type { ChangeEvent, Position, RuntimeSchema, StreamInfo, StreamMap, StreamTypes, WebSocketConstructor, WebSocketLike } from "./types.js";

/** Options of a Client. */
export interface ClientOptions<S> {
  /** The WebSocket URL, e.g. `ws://localhost:8080/ws`. */
  url: string;
  /** The generated `schema`. */
  schema: RuntimeSchema<S>;
  /** A WebSocket constructor; default `globalThis.WebSocket` (Node 20 has none: pass `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Subprotocols to offer, e.g. `["bearer", token]`; a function is called at every connect. */
  protocols?: string[] | (() => string[]);
  /** Reconnect delays: the n-th attempt waits a random time up to min(max, initial * 2^n) ms. */
  backoff?: { initial?: number; max?: number };
  /**
   * Send again, after reconnecting, the writes that were in flight (with
   * their idempotency key). Default: only on streams whose schema says
   * `idempotencyKeys: true`; elsewhere such a write fails with
   * ConnectionLostError, as it may have run.
   */
  retryWrites?: boolean;
  /**
   * How long a request waits for its reply, in ms, reconnecting included,
   * before it fails with TimeoutError and is forgotten (a reply that comes
   * later is ignored). Default 30000; 0 waits forever. Subscribes are not
   * timed.
   */
  timeout?: number;
}

/** The state of the connection. */
export type ConnectionState = "connecting" | "open" | "closed";

/** What a Client reports to its listeners. */
export interface ClientEvents {
  /** The connection opened or closed; `code` and `reason` of a close. */
  state: { state: ConnectionState; code?: number; reason?: string };
  /** A subscription was resumed after a reconnect: `recovered` false means it reloaded or must. */
  resume: { stream: string; subscription: string; recovered: boolean };
  /** A write that was in flight is sent again with the same idempotency key. */
  retry: { stream: string; action: string; idempotencyKey: string };
  /** A reply said "replayed": true (the server ran the write before). */
  replayed: { stream: string; action: string; idempotencyKey: string };
  /**
   * A frame the client could not use (not JSON...), or an error of a
   * subscription (with `stream` and `subscription`): a resume refused, a
   * live collection's load that failed. `retrying` true: the client tries
   * again with backoff; false: the subscription has ended.
   */
  error: { error: unknown; stream?: string; subscription?: string; retrying?: boolean };
}

/** A reply's payload. */
export interface ReplyPayload {
  action: string | null;
  data: unknown;
  errors: unknown[];
  response_status: number;
  request_id: unknown;
  meta?: { count: number; page: number; page_size: number; num_pages: number; position?: Position };
  replayed?: boolean;
  [key: string]: unknown;
}

interface Pending {
  id: string;
  stream: string;
  action: string;
  payload: Record<string, unknown>;
  resolve: (p: ReplyPayload) => void;
  reject: (e: unknown) => void;
  sent: boolean;
  /** Sent on a connection that dropped before the reply. */
  lost: boolean;
  /** How many times a 409 "still running" sent it again. */
  conflicts?: number;
}

/** A subscription the client resumes after every reconnect. */
export interface Resumable {
  readonly id: string;
  readonly stream: string;
  /** The position reached; undefined before the first subscribe's reply (or while a live collection loads). */
  readonly position: Position | undefined;
  /** The subscribe request's payload (with `since` from the position reached). */
  subscribeRequest(): Record<string, unknown>;
  /** The reply to a (re)subscribe. */
  onSubscribed(reply: ReplyPayload, resumed: boolean): void;
  /** An event of this subscription. */
  onEvent(payload: Record<string, unknown>): void;
  /** Whether an event without request_id (a channels-api subscribe) is for it. */
  matchesPlain?(payload: Record<string, unknown>): boolean;
  /** The subscription ended: its first subscribe failed, a resume was refused for good, or it was closed. */
  onFailed(error: unknown): void;
  /** An error of the subscription once it ran: `retrying` false when it ended. */
  onError?(error: unknown, retrying: boolean): void;
}

type Listener<T> = (ev: T) => void;

const OPEN = 1;

/**
 * A channelsapi client. It connects on construction, and reconnects until
 * `close()`. S is the generated `Streams`.
 */
export class Client<S extends StreamMap<S>> {
  readonly schema: RuntimeSchema<S>;
  private readonly opts: ClientOptions<S>;
  private readonly WS: WebSocketConstructor;
  private ws: WebSocketLike | null = null;
  private stateValue: ConnectionState = "connecting";
  private closed = false;
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private readonly later = new Set<ReturnType<typeof setTimeout>>();
  private seq = 0;
  private readonly pending = new Map<string, Pending>();
  private readonly subs = new Map<string, Resumable>();
  /** The subscriptions the server accepted once: a refused resubscribe is retried or reported. */
  private readonly established = new Set<string>();
  /** Resubscribes waiting for their backoff delay, and the attempt they are, by subscription id. */
  private readonly resubscribes = new Map<string, { attempt: number; timer: ReturnType<typeof setTimeout> | null }>();
  private readonly listeners = new Map<keyof ClientEvents, Set<Listener<never>>>();
  /**
   * Counts since construction: connections opened and lost, writes sent
   * again after a reconnect, replies that said "replayed".
   */
  readonly stats = { connects: 0, disconnects: 0, retried: 0, replayed: 0 };

  constructor(opts: ClientOptions<S>) {
    this.opts = opts;
    this.schema = opts.schema;
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new Error("no WebSocket: pass options.WebSocket (in Node 20, the ws package's default export)");
    if (opts.timeout !== undefined && !(opts.timeout >= 0)) throw new Error(`timeout must be 0 (wait forever) or more ms, not ${opts.timeout}`);
    this.WS = WS;
    this.open();
  }

  /** The connection's state. */
  get state(): ConnectionState {
    return this.stateValue;
  }

  /** The typed operations of one stream. */
  stream<K extends keyof S & string>(name: K): StreamClient<S[K]> {
    if (!(name in this.schema.streams)) throw new Error(`unknown stream ${name}`);
    return new StreamClient<S[K]>(this as unknown as Client<StreamMap<unknown>>, name);
  }

  on<K extends keyof ClientEvents>(event: K, fn: Listener<ClientEvents[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn as Listener<never>);
    return () => set.delete(fn as Listener<never>);
  }

  private emit<K extends keyof ClientEvents>(event: K, ev: ClientEvents[K]): void {
    for (const fn of this.listeners.get(event) ?? []) (fn as Listener<ClientEvents[K]>)(ev);
  }

  /**
   * Sends a request and resolves with its reply's payload, or rejects with
   * the typed error of a failed reply. A write gets an idempotency key.
   */
  request(stream: string, action: string, fields: Record<string, unknown> = {}): Promise<ReplyPayload> {
    if (this.closed) return Promise.reject(new ConnectionLostError("client closed", stream, action));
    const id = `r${++this.seq}`;
    const payload = withIdempotencyKey(action, { ...fields, action, request_id: id });
    return new Promise<ReplyPayload>((resolve, reject) => {
      const ms = this.opts.timeout ?? 30_000;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const done = () => {
        if (timer === undefined) return;
        clearTimeout(timer);
        this.later.delete(timer);
      };
      const p: Pending = {
        id, stream, action, payload, sent: false, lost: false,
        resolve: (r) => (done(), resolve(r)),
        reject: (e) => (done(), reject(e)),
      };
      if (ms > 0) {
        timer = setTimeout(() => {
          this.later.delete(timer!);
          if (this.pending.get(id) !== p) return;
          this.pending.delete(id);
          reject(new TimeoutError(`${stream} ${action}: no reply in ${ms} ms`, stream, action));
        }, ms);
        this.later.add(timer);
      }
      this.pending.set(id, p);
      if (this.ws?.readyState === OPEN && this.stateValue === "open") this.sendPending(p);
    });
  }

  /** Starts a subscription; it is resumed after every reconnect until removed. */
  addSubscription(sub: Resumable): void {
    this.subs.set(sub.id, sub);
    if (this.stateValue === "open") this.subscribe(sub);
  }

  /** Stops resuming a subscription, and unsubscribes with `action` if connected. */
  removeSubscription(sub: Resumable, unsubscribe: Record<string, unknown> | null): void {
    this.subs.delete(sub.id);
    this.pending.delete(sub.id);
    this.established.delete(sub.id);
    this.cancelResubscribe(sub.id, true);
    // Settles a subscribe still waiting (its `ready`): no-op once subscribed.
    sub.onFailed(new ConnectionLostError("subscription closed", sub.stream, null));
    if (unsubscribe && this.stateValue === "open") {
      this.write({ stream: sub.stream, payload: { ...unsubscribe, request_id: sub.id } });
    }
  }

  /** A new subscription id. */
  nextSubscriptionId(): string {
    return `s${++this.seq}`;
  }

  /**
   * Sends a subscription's subscribe again now (a live collection that
   * reloads), unless one is on its way; while disconnected, the reconnect
   * sends it.
   */
  resubscribe(sub: Resumable): void {
    if (this.closed || this.subs.get(sub.id) !== sub) return;
    this.cancelResubscribe(sub.id, false);
    if (this.stateValue === "open" && !this.pending.has(sub.id)) this.subscribe(sub);
  }

  /** The wait before retry n (from 0) of something that failed: the reconnect backoff. */
  retryDelay(attempt: number): number {
    return backoffDelay(attempt, this.opts.backoff?.initial ?? 250, this.opts.backoff?.max ?? 10_000, Math.random());
  }

  /**
   * Reports an error of a subscription to the client's "error" listeners
   * and to the subscription's own (onError): `retrying` says whether it is
   * tried again or has ended.
   */
  reportSubscriptionError(sub: Resumable, error: unknown, retrying: boolean): void {
    this.emit("error", { error, stream: sub.stream, subscription: sub.id, retrying });
    sub.onError?.(error, retrying);
  }

  /**
   * Closes the connection for good; requests waiting for a reply, and
   * subscriptions not ready yet, fail with ConnectionLostError.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const t of this.later) clearTimeout(t);
    this.later.clear();
    for (const id of [...this.resubscribes.keys()]) this.cancelResubscribe(id, true);
    for (const p of [...this.pending.values()]) p.reject(new ConnectionLostError("client closed", p.stream, p.action));
    this.pending.clear();
    // Subscriptions not sent yet (the client was connecting) settle too.
    for (const sub of [...this.subs.values()]) sub.onFailed(new ConnectionLostError("client closed", sub.stream, null));
    this.subs.clear();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      ws.onerror = () => {};
      ws.close(1000, "client closed");
    }
    this.setState("closed");
  }

  private setState(state: ConnectionState, code?: number, reason?: string): void {
    this.stateValue = state;
    this.emit("state", { state, code, reason });
  }

  private open(): void {
    this.timer = null;
    if (this.closed) return;
    const protocols = typeof this.opts.protocols === "function" ? this.opts.protocols() : this.opts.protocols;
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.opts.url, protocols);
    } catch (error) {
      this.emit("error", { error });
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.setState("connecting");
    ws.onopen = () => this.onOpen(ws);
    ws.onmessage = (ev) => this.onMessage(ev.data);
    ws.onerror = () => {};
    ws.onclose = (ev) => this.onClose(ws, ev.code, ev.reason);
  }

  private onOpen(ws: WebSocketLike): void {
    if (ws !== this.ws) return;
    this.attempt = 0;
    this.stats.connects++;
    this.setState("open");
    // Subscriptions first, then the requests waiting, in the order they were made.
    for (const sub of this.subs.values()) {
      this.cancelResubscribe(sub.id, false);
      this.subscribe(sub);
    }
    for (const p of this.pending.values()) if (!p.sent) this.sendPending(p);
  }

  private onClose(ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this.ws) return;
    this.ws = null;
    if (this.stateValue === "open") this.stats.disconnects++; // not a connect that failed
    for (const p of [...this.pending.values()]) {
      if (!p.sent) continue;
      if (this.subs.has(p.id)) {
        this.pending.delete(p.id); // a (re)subscribe: the subscription sends it again
        continue;
      }
      if (isWrite(p.action) && (!takesIdempotencyKey(p.action) || !this.retriesWrites(p.stream))) {
        this.pending.delete(p.id);
        p.reject(new ConnectionLostError(`connection lost (${code}${reason ? " " + reason : ""})`, p.stream, p.action));
        continue;
      }
      p.sent = false;
      p.lost = true;
    }
    this.setState("connecting", code, reason);
    this.scheduleReconnect();
  }

  /** Whether a write in flight on the stream is sent again after a reconnect. */
  private retriesWrites(stream: string): boolean {
    if (this.opts.retryWrites !== undefined) return this.opts.retryWrites;
    const info = this.schema.streams[stream as never] as { idempotencyKeys?: boolean } | undefined;
    return info?.idempotencyKeys === true;
  }

  private scheduleReconnect(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => this.open(), this.retryDelay(this.attempt++));
  }

  /**
   * Sends a subscription's subscribe again after the backoff delay of its
   * next attempt (a reconnect meanwhile sends it at once).
   */
  private scheduleResubscribe(sub: Resumable): void {
    let r = this.resubscribes.get(sub.id);
    if (!r) this.resubscribes.set(sub.id, (r = { attempt: 0, timer: null }));
    if (r.timer) clearTimeout(r.timer);
    const entry = r;
    entry.timer = setTimeout(() => {
      entry.timer = null;
      if (this.closed || this.subs.get(sub.id) !== sub) return;
      if (this.stateValue === "open" && !this.pending.has(sub.id)) this.subscribe(sub);
    }, this.retryDelay(entry.attempt++));
  }

  /** Stops a resubscribe's timer; forget also drops its attempt count (after a success, or the end). */
  private cancelResubscribe(id: string, forget: boolean): void {
    const r = this.resubscribes.get(id);
    if (!r) return;
    if (r.timer) clearTimeout(r.timer);
    r.timer = null;
    if (forget) this.resubscribes.delete(id);
  }

  private sendPending(p: Pending): void {
    if (p.lost && isWrite(p.action)) {
      this.stats.retried++;
      this.emit("retry", { stream: p.stream, action: p.action, idempotencyKey: String(p.payload["idempotency_key"]) });
    }
    p.sent = true;
    this.write({ stream: p.stream, payload: p.payload });
  }

  /**
   * Sends a subscription's subscribe: a resume when it already has a
   * position (a first subscribe made while reconnecting is not one).
   */
  private subscribe(sub: Resumable): void {
    const resumed = sub.position !== undefined;
    const payload: Record<string, unknown> = { ...sub.subscribeRequest(), request_id: sub.id };
    const p: Pending = {
      id: sub.id, stream: sub.stream, action: String(payload["action"]), payload, sent: false, lost: false,
      resolve: (reply) => {
        if (this.subs.get(sub.id) !== sub) return;
        this.established.add(sub.id);
        this.cancelResubscribe(sub.id, true);
        const data = reply.data as { recovered?: boolean } | null;
        if (resumed && data && typeof data.recovered === "boolean") {
          this.emit("resume", { stream: sub.stream, subscription: sub.id, recovered: data.recovered });
        }
        sub.onSubscribed(reply, resumed);
      },
      reject: (e) => {
        // close() and removeSubscription settle the subscription themselves.
        if (this.closed || this.subs.get(sub.id) !== sub) return;
        if (!this.established.has(sub.id)) {
          // A first subscribe: its `ready` rejects.
          this.subs.delete(sub.id);
          sub.onFailed(e);
          return;
        }
        // A resume (or a live collection's reload) refused: tried again
        // with backoff when the refusal may pass, else the subscription ends.
        if (isTransientError(e)) {
          this.reportSubscriptionError(sub, e, true);
          this.scheduleResubscribe(sub);
          return;
        }
        this.subs.delete(sub.id);
        this.established.delete(sub.id);
        this.cancelResubscribe(sub.id, true);
        this.reportSubscriptionError(sub, e, false);
        sub.onFailed(e);
      },
    };
    this.pending.set(sub.id, p);
    this.sendPending(p);
  }

  private write(frame: unknown): void {
    this.ws?.send(JSON.stringify(frame));
  }

  private onMessage(raw: unknown): void {
    let frame: { stream?: unknown; payload?: Record<string, unknown> };
    try {
      frame = JSON.parse(typeof raw === "string" ? raw : String(raw));
    } catch (error) {
      this.emit("error", { error });
      return;
    }
    const payload = frame.payload;
    if (!payload || typeof payload !== "object") return;
    const stream = typeof frame.stream === "string" ? frame.stream : null;
    const rid = payload["request_id"];
    const p = typeof rid === "string" ? this.pending.get(rid) : undefined;
    // A DCRF instance event carries the subscribe's request_id and a
    // response_status too (PROTOCOL.md section 4.8): a reply is the payload
    // with the request's action as well.
    if (p && "response_status" in payload && payload["action"] === p.action) {
      const reply = payload as ReplyPayload;
      if (isStillRunning(p.lost, p.action, payload) && (p.conflicts ?? 0) < stillRunningRetries) {
        // The first run of the key has not finished: ask again later.
        p.conflicts = (p.conflicts ?? 0) + 1;
        p.sent = false;
        const delay = (this.opts.backoff?.initial ?? 250) * 2 ** p.conflicts;
        const t = setTimeout(() => {
          this.later.delete(t);
          if (this.pending.get(p.id) === p && !p.sent && this.stateValue === "open") this.sendPending(p);
        }, delay);
        this.later.add(t);
        return;
      }
      this.pending.delete(p.id);
      if (reply.response_status >= 400) {
        p.reject(errorFromReply(stream, reply));
        return;
      }
      if (isReplayed(reply)) {
        this.stats.replayed++;
        this.emit("replayed", { stream: p.stream, action: p.action, idempotencyKey: String(p.payload["idempotency_key"]) });
      }
      p.resolve(reply);
      return;
    }
    if (typeof rid === "string") {
      this.subs.get(rid)?.onEvent(payload);
      return;
    }
    if (stream !== null && rid === undefined) {
      for (const sub of this.subs.values()) {
        if (sub.stream === stream && sub.matchesPlain?.(payload)) sub.onEvent(payload);
      }
    }
  }
}

/**
 * The wait before reconnect attempt n (from 0): exponential with full
 * jitter, random * min(max, initial * 2^n), random in [0, 1).
 */
export function backoffDelay(attempt: number, initial: number, max: number, random: number): number {
  return random * Math.min(max, initial * 2 ** Math.min(attempt, 30));
}

/** A list page. */
export interface Page<M> {
  results: M[];
  count: number;
  page: number;
  pageSize: number;
  numPages: number;
  /** The stream position the rows were read at. */
  position?: Position;
}

/** The options of list. */
export interface ListOptions<T extends StreamTypes> {
  filters?: T["filters"];
  ordering?: T["ordering"][];
  page?: number;
  pageSize?: number;
}

type ActionArgs<A> = A extends { detail: true } ? [pk: number | string, data?: unknown] : [data?: unknown];

/** The typed operations of one stream; from Client.stream. */
export class StreamClient<T extends StreamTypes> {
  constructor(readonly client: Client<StreamMap<unknown>>, readonly name: string) {}

  async create(data: T["write"]): Promise<T["model"]> {
    return (await this.client.request(this.name, "create", { data })).data as T["model"];
  }

  async retrieve(pk: T["pk"]): Promise<T["model"]> {
    return (await this.client.request(this.name, "retrieve", { pk })).data as T["model"];
  }

  async update(pk: T["pk"], data: T["write"]): Promise<T["model"]> {
    return (await this.client.request(this.name, "update", { pk, data })).data as T["model"];
  }

  async patch(pk: T["pk"], data: T["patch"]): Promise<T["model"]> {
    return (await this.client.request(this.name, "patch", { pk, data })).data as T["model"];
  }

  async delete(pk: T["pk"]): Promise<void> {
    await this.client.request(this.name, "delete", { pk });
  }

  async list(opts: ListOptions<T> = {}): Promise<Page<T["model"]>> {
    const data: Record<string, unknown> = { ...(opts.filters ?? {}) };
    if (opts.ordering?.length) data["ordering"] = opts.ordering.join(",");
    if (opts.page !== undefined) data["page"] = opts.page;
    if (opts.pageSize !== undefined) data["page_size"] = opts.pageSize;
    const reply = await this.client.request(this.name, "list", { data });
    const meta = reply.meta!;
    return {
      results: reply.data as T["model"][],
      count: meta.count,
      page: meta.page,
      pageSize: meta.page_size,
      numPages: meta.num_pages,
      position: meta.position,
    };
  }

  /** A custom action: `action("vote", pk)` for a detail action, `action("name", data)` otherwise. */
  async action<A extends keyof T["actions"] & string>(name: A, ...args: ActionArgs<T["actions"][A]>): Promise<unknown> {
    const info = this.client.schema.streams[this.name as never] as { actions: Record<string, { detail: boolean }> };
    const detail = info.actions[name]?.detail ?? false;
    const fields: Record<string, unknown> = detail ? { pk: args[0], data: args[1] } : { data: args[0] };
    return (await this.client.request(this.name, name, fields)).data;
  }

  /**
   * A channels-api subscription (PROTOCOL.md section 4.7) to one kind of
   * change, of every object or of one pk. It is resumed after a reconnect
   * from the last event's offset; `onResync` is called when the server no
   * longer has the events missed (`recovered: false`). `onError` is called
   * when a resume is refused: `retrying` true while the client tries again
   * with backoff (429, 5xx), false when the subscription has ended.
   */
  subscribe(
    action: "create" | "update" | "delete",
    handler: (ev: ChangeEvent<T["model"]>) => void,
    opts: SubscriptionOptions & { pk?: T["pk"] } = {},
  ): PlainSubscription<T> {
    const sub = new PlainSubscription<T>(this.client, this.name, action, handler, opts);
    this.client.addSubscription(sub);
    return sub;
  }

  /**
   * A DCRF instance subscription (PROTOCOL.md section 4.8): the updates and
   * the delete of one object, resumed after a reconnect from the last
   * event's offset; `onResync` is called when the server no longer has the
   * events missed; `onError` as for subscribe (a resume refused with 404,
   * the object deleted meanwhile, gives the handler its delete as well).
   */
  instance(
    pk: T["pk"],
    handler: (ev: { action: "update"; data: T["model"] } | { action: "delete"; data: { pk: T["pk"] } }) => void,
    opts: SubscriptionOptions = {},
  ): InstanceSubscription<T> {
    const sub = new InstanceSubscription<T>(this.client, this.name, pk, handler, opts);
    this.client.addSubscription(sub);
    return sub;
  }

  /**
   * A live collection: the rows of a live query (subscribe_list, PROTOCOL.md
   * section 9), kept current from its events and ordered by `ordering`
   * then primary key.
   */
  live(opts: LiveOptions<T> = {}): LiveCollection<T> {
    const info = this.client.schema.streams[this.name as never] as StreamInfo;
    return new LiveCollection<T>(this.client, this.name, info.primaryKey, opts, info.formats);
  }
}

/** The options of StreamClient.subscribe and instance. */
export interface SubscriptionOptions {
  /** Called after a resume the server could not serve from its history (`recovered: false`). */
  onResync?: () => void;
  /** Called when a resume is refused: `retrying` true while it is tried again with backoff, false once the subscription has ended. */
  onError?: (error: unknown, retrying: boolean) => void;
}

/** A subscription of StreamClient.subscribe. */
export class PlainSubscription<T extends StreamTypes> implements Resumable {
  readonly id: string;
  position: Position | undefined;
  readonly ready: Promise<void>;
  private settle!: { resolve: () => void; reject: (e: unknown) => void };

  constructor(
    private readonly client: Client<StreamMap<unknown>>,
    readonly stream: string,
    readonly action: "create" | "update" | "delete",
    private readonly handler: (ev: ChangeEvent<T["model"]>) => void,
    private readonly opts: SubscriptionOptions & { pk?: T["pk"] },
  ) {
    this.id = client.nextSubscriptionId();
    this.ready = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    this.ready.catch(() => {});
  }

  subscribeRequest(): Record<string, unknown> {
    // The first subscribe asks from an epoch no server has: the reply says
    // recovered: false with the position live events start at, which the
    // next resume starts from.
    const data: Record<string, unknown> = { action: this.action, since: this.position ?? { epoch: "", offset: 0 } };
    const out: Record<string, unknown> = { action: "subscribe", data };
    if (this.opts.pk !== undefined) out["pk"] = this.opts.pk;
    return out;
  }

  onSubscribed(reply: ReplyPayload, resumed: boolean): void {
    const data = reply.data as { position?: Position; recovered?: boolean } | null;
    if (data?.position && (!this.position || data.recovered === false)) this.position = data.position;
    if (resumed && data?.recovered === false) this.opts.onResync?.();
    this.settle.resolve();
  }

  matchesPlain(payload: Record<string, unknown>): boolean {
    if (payload["action"] !== this.action) return false;
    return this.opts.pk === undefined || String(payload["pk"]) === String(this.opts.pk);
  }

  onEvent(payload: Record<string, unknown>): void {
    const offset = typeof payload["offset"] === "number" ? payload["offset"] : undefined;
    if (offset !== undefined && this.position) {
      if (offset <= this.position.offset) return; // already seen (a replay overlapping live events)
      this.position = { epoch: this.position.epoch, offset };
    }
    this.handler(payload as unknown as ChangeEvent<T["model"]>);
  }

  onFailed(error: unknown): void {
    this.settle.reject(error);
  }

  onError(error: unknown, retrying: boolean): void {
    this.opts.onError?.(error, retrying);
  }

  close(): void {
    const unsubscribe: Record<string, unknown> = { action: "unsubscribe", data: { action: this.action } };
    if (this.opts.pk !== undefined) unsubscribe["pk"] = this.opts.pk;
    this.client.removeSubscription(this, unsubscribe);
  }
}

/** A subscription of StreamClient.instance. */
export class InstanceSubscription<T extends StreamTypes> implements Resumable {
  readonly id: string;
  position: Position | undefined;
  private subscribed = false;
  readonly ready: Promise<void>;
  private settle!: { resolve: () => void; reject: (e: unknown) => void };

  constructor(
    private readonly client: Client<StreamMap<unknown>>,
    readonly stream: string,
    readonly pk: T["pk"],
    private readonly handler: (ev: { action: "update"; data: T["model"] } | { action: "delete"; data: { pk: T["pk"] } }) => void,
    private readonly opts: SubscriptionOptions,
  ) {
    this.id = client.nextSubscriptionId();
    this.ready = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    this.ready.catch(() => {});
  }

  subscribeRequest(): Record<string, unknown> {
    // As PlainSubscription: the first request learns the position.
    return { action: "subscribe_instance", pk: this.pk, data: { since: this.position ?? { epoch: "", offset: 0 } } };
  }

  onSubscribed(reply: ReplyPayload, resumed: boolean): void {
    const data = reply.data as { position?: Position; recovered?: boolean } | null;
    if (data?.position && (!this.position || data.recovered === false)) this.position = data.position;
    if (resumed && data?.recovered === false) this.opts.onResync?.();
    this.subscribed = true;
    this.settle.resolve();
  }

  onEvent(payload: Record<string, unknown>): void {
    const offset = typeof payload["offset"] === "number" ? payload["offset"] : undefined;
    if (offset !== undefined && this.position) {
      if (offset <= this.position.offset) return;
      this.position = { epoch: this.position.epoch, offset };
    }
    const action = payload["action"];
    if (action === "update") this.handler({ action, data: payload["data"] as T["model"] });
    else if (action === "delete") this.handler({ action, data: payload["data"] as { pk: T["pk"] } });
  }

  onFailed(error: unknown): void {
    // A resume of an object deleted meanwhile is 404: the server has no
    // replay for it, so the handler gets the delete (not the updates
    // before it).
    if (this.subscribed && error instanceof NotFoundError) this.handler({ action: "delete", data: { pk: this.pk } });
    this.settle.reject(error);
  }

  onError(error: unknown, retrying: boolean): void {
    this.opts.onError?.(error, retrying);
  }

  close(): void {
    this.client.removeSubscription(this, { action: "unsubscribe_instance", pk: this.pk });
  }
}

export { ChannelsApiError };
