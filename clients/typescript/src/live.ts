/**
 * Live collections: the rows of a live query (subscribe_list with a
 * snapshot, PROTOCOL.md section 9), kept current from its create, update
 * and delete events, in the order of the query then primary key. After a
 * reconnect the query resumes from the offset it reached; when the server
 * answers `recovered: false` the collection reloads its snapshot. A load
 * that fails, or whose pages cannot be read at one position, is reported
 * and started again with backoff.
 */
import type { Client, ReplyPayload, Resumable } from "./client.js";
import { isTransientError } from "./errors.js";
import type { Position, StreamMap, StreamTypes } from "./types.js";

/** The options of StreamClient.live. */
export interface LiveOptions<T extends StreamTypes> {
  /** The query's filters (section 8 keys; not ordering or page). */
  filters?: T["filters"];
  /** How the collection is ordered (the server's list ordering is not sent with events): fields, "-" for descending; ties by primary key. */
  ordering?: T["ordering"][];
  /** The size of the snapshot's pages (the server caps it). Default 100. */
  pageSize?: number;
  /**
   * Where null sorts, as the server's database orders it (the server adds
   * no NULLS FIRST/LAST): "smallest" (SQLite, MySQL: first ascending, last
   * descending; the default) or "largest" (PostgreSQL).
   */
  nulls?: "smallest" | "largest";
}

/**
 * What changed in a live collection. An error: a resume refused, or a load
 * that failed (a list request refused, or pages that could not be read at
 * one position); `retrying` true while the collection tries again with
 * backoff (it keeps its rows, without the changes since, until a load
 * succeeds), false when it has ended.
 */
export type LiveChange<M> =
  | { type: "load"; reason: "initial" | "resync" }
  | { type: "create" | "update" | "delete"; pk: number | string; row: M }
  | { type: "error"; error: unknown; retrying: boolean };

/**
 * How many passes over the pages a load makes to read them all at one
 * position before it reports an error and starts again with a new
 * snapshot, after a backoff delay.
 */
const loadPasses = 5;

export class LiveCollection<T extends StreamTypes> implements Resumable {
  readonly id: string;
  /** The stream position the collection holds; undefined while it loads. */
  position: Position | undefined;
  /** Settles once the first snapshot is loaded. */
  readonly ready: Promise<void>;
  /** How many times the collection loaded a snapshot again once loaded (`recovered: false`, or a load that failed). */
  reloads = 0;

  private readonly rows = new Map<string, T["model"]>();
  private sorted: T["model"][] | null = null;
  private generation = 0;
  /** Events that arrive while a load reads its pages. */
  private buffer: Record<string, unknown>[] | null = null;
  private loaded = false;
  /**
   * A load failed and the collection waits to subscribe again: events are
   * dropped (the new snapshot has them).
   */
  private stale = false;
  /** Loads failed in a row: the backoff attempt of the next. */
  private failures = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly listeners = new Set<(c: LiveChange<T["model"]>) => void>();
  private settle!: { resolve: () => void; reject: (e: unknown) => void };

  constructor(
    private readonly client: Client<StreamMap<unknown>>,
    readonly stream: string,
    private readonly primaryKey: string,
    private readonly opts: LiveOptions<T>,
    private readonly formats?: { readonly [field: string]: string },
  ) {
    this.id = client.nextSubscriptionId();
    this.ready = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    this.ready.catch(() => {});
    client.addSubscription(this);
  }

  /** The rows, ordered. */
  get items(): readonly T["model"][] {
    if (!this.sorted) this.sorted = [...this.rows.values()].sort((a, b) => this.compare(a, b));
    return this.sorted;
  }

  get size(): number {
    return this.rows.size;
  }

  get(pk: T["pk"]): T["model"] | undefined {
    return this.rows.get(String(pk));
  }

  /** Calls fn after every change; returns the function that stops it. */
  on(fn: (c: LiveChange<T["model"]>) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Ends the live query. */
  close(): void {
    this.generation++;
    this.client.removeSubscription(this, { action: "unsubscribe_list" });
  }

  subscribeRequest(): Record<string, unknown> {
    const data: Record<string, unknown> = { ...(this.opts.filters ?? {}), snapshot: true, page_size: this.opts.pageSize ?? 100 };
    if (this.position) data["since"] = this.position;
    return { action: "subscribe_list", data };
  }

  onSubscribed(reply: ReplyPayload, _resumed: boolean): void {
    this.cancelRetry();
    this.stale = false;
    const data = reply.data as { results?: T["model"][]; count?: number; position?: Position; recovered?: boolean };
    if (data.recovered === true && this.position) return; // the missed events follow
    const reason = this.loaded ? "resync" : "initial";
    if (this.loaded) this.reloads++;
    this.load(data.results ?? [], data.count ?? 0, data.position, reason);
  }

  onEvent(payload: Record<string, unknown>): void {
    if (this.stale) return;
    if (this.buffer) {
      this.buffer.push(payload);
      return;
    }
    this.apply(payload);
  }

  onFailed(error: unknown): void {
    // The end: closed, the client closed, or refused for good.
    this.generation++;
    this.cancelRetry();
    this.buffer = null;
    this.settle.reject(error);
  }

  onError(error: unknown, retrying: boolean): void {
    this.emit({ type: "error", error, retrying });
  }

  private load(results: T["model"][], count: number, position: Position | undefined, reason: "initial" | "resync"): void {
    const gen = ++this.generation;
    if (results.length >= count) {
      this.replace(results, position, [], reason);
      return;
    }
    // More rows than one page: read every page at one position, keeping
    // the events that arrive meanwhile. Until then a reconnect takes a
    // fresh snapshot (no position).
    this.position = undefined;
    this.buffer = [];
    void this.readPages(gen, reason);
  }

  /**
   * Reads every page, again until one pass reads them all at one position
   * (at most loadPasses times), then puts them in place. A refusal that
   * may pass, or passes that never agree, start the load again with a new
   * snapshot after a backoff delay; any other refusal ends the collection.
   */
  private async readPages(gen: number, reason: "initial" | "resync"): Promise<void> {
    for (let pass = 1; ; pass++) {
      let read: { rows: T["model"][]; at: Position | undefined; same: boolean };
      try {
        read = await this.readPass(gen);
      } catch (error) {
        if (gen !== this.generation) return;
        if (isTransientError(error)) this.reload(error);
        else this.end(error);
        return;
      }
      if (gen !== this.generation) return;
      if (read.same) {
        this.replace(read.rows, read.at, this.buffer ?? [], reason);
        return;
      }
      if (pass >= loadPasses) {
        this.reload(new Error(`${this.stream}: the pages of a live query were not read at one position in ${loadPasses} passes (the rows change too fast); loading again`));
        return;
      }
    }
  }

  /** One pass over the pages; `same` says whether every page was read at the first page's position. */
  private async readPass(gen: number): Promise<{ rows: T["model"][]; at: Position | undefined; same: boolean }> {
    const stream = this.client.stream(this.stream as never);
    const rows: T["model"][] = [];
    let at: Position | undefined;
    let same = true;
    for (let page = 1; ; page++) {
      const p = await stream.list({ filters: this.opts.filters as never, page, pageSize: this.opts.pageSize ?? 100 });
      if (gen !== this.generation) return { rows, at, same: false };
      rows.push(...(p.results as T["model"][]));
      if (page === 1) at = p.position;
      else if (!at || !p.position || p.position.epoch !== at.epoch || p.position.offset !== at.offset) same = false;
      if (page >= p.numPages) break;
    }
    return { rows, at, same };
  }

  /**
   * Drops the load under way, reports its error, and subscribes again
   * (for a new snapshot) after a backoff delay. The rows held stay until
   * then, without the changes since.
   */
  private reload(error: unknown): void {
    this.generation++;
    this.buffer = null;
    this.stale = true;
    this.position = undefined;
    this.client.reportSubscriptionError(this, error, true);
    this.cancelRetry();
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.client.resubscribe(this);
    }, this.client.retryDelay(this.failures++));
  }

  /** Ends the collection with an error the load cannot retry. */
  private end(error: unknown): void {
    this.settle.reject(error); // before removeSubscription settles it as closed
    this.client.reportSubscriptionError(this, error, false);
    this.close();
  }

  private cancelRetry(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  private replace(rows: T["model"][], position: Position | undefined, events: Record<string, unknown>[], reason: "initial" | "resync"): void {
    this.failures = 0;
    this.buffer = null;
    this.rows.clear();
    for (const r of rows) this.rows.set(this.keyOf(r), r);
    this.sorted = null;
    this.position = position;
    for (const ev of events) this.apply(ev, false);
    this.loaded = true;
    this.emit({ type: "load", reason });
    this.settle.resolve();
  }

  private apply(payload: Record<string, unknown>, notify = true): void {
    const offset = typeof payload["offset"] === "number" ? payload["offset"] : undefined;
    if (offset !== undefined && this.position) {
      if (offset <= this.position.offset) return; // read by the snapshot, or replayed twice
      this.position = { epoch: this.position.epoch, offset };
    }
    const action = payload["action"];
    const row = payload["data"] as T["model"];
    const pk = (payload["pk"] ?? (row as Record<string, unknown>)?.[this.primaryKey]) as number | string;
    const key = String(pk);
    if (action === "create" || action === "update") this.rows.set(key, row);
    else if (action === "delete") this.rows.delete(key);
    else return;
    this.sorted = null;
    if (notify) this.emit({ type: action, pk, row });
  }

  private emit(c: LiveChange<T["model"]>): void {
    for (const fn of this.listeners) fn(c);
  }

  private keyOf(row: T["model"]): string {
    return String((row as Record<string, unknown>)[this.primaryKey]);
  }

  private compare(a: T["model"], b: T["model"]): number {
    const ra = a as Record<string, unknown>;
    const rb = b as Record<string, unknown>;
    const nulls = this.opts.nulls ?? "smallest";
    for (const f of this.opts.ordering ?? []) {
      const desc = f.startsWith("-");
      const field = desc ? f.slice(1) : f;
      const va = ra[field];
      const vb = rb[field];
      // The schema's formats say which fields are date-times; a module
      // generated without them leaves it to the values.
      const dateTime = this.formats ? this.formats[field] === "date-time" : isDateTime(va) && isDateTime(vb);
      const c = compareValues(va, vb, { dateTime, nulls });
      if (c !== 0) return desc ? -c : c;
    }
    return compareValues(ra[this.primaryKey], rb[this.primaryKey]);
  }
}

/** How compareValues orders. */
export interface CompareOptions {
  /** The values are RFC 3339 date-times: they compare as instants, to the nanosecond. */
  dateTime?: boolean;
  /** Where null (or a missing value) sorts: as the smallest value (the default) or the largest. */
  nulls?: "smallest" | "largest";
}

/**
 * Orders JSON values: null (and undefined) as the smallest or the largest
 * value, numbers by value, date-times (opts.dateTime) as instants,
 * anything else by its text's code points.
 */
export function compareValues(a: unknown, b: unknown, opts: CompareOptions = {}): number {
  const aNull = a === null || a === undefined;
  const bNull = b === null || b === undefined;
  if (aNull || bNull) {
    if (aNull && bNull) return 0;
    const c = aNull ? -1 : 1;
    return opts.nulls === "largest" ? -c : c;
  }
  if (a === b) return 0;
  if (typeof a === "number" && typeof b === "number") return a - b;
  if (typeof a === "boolean" && typeof b === "boolean") return a ? 1 : -1;
  if (opts.dateTime && typeof a === "string" && typeof b === "string") {
    const ia = instant(a);
    const ib = instant(b);
    if (ia && ib) return ia[0] - ib[0] || ia[1] - ib[1];
  }
  const sa = String(a);
  const sb = String(b);
  return sa < sb ? -1 : sa > sb ? 1 : 0;
}

/** An RFC 3339 date-time: the seconds, the fraction, the zone. */
const rfc3339 = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$/i;

function isDateTime(v: unknown): boolean {
  return typeof v === "string" && rfc3339.test(v);
}

/**
 * A date-time as [the ms since the epoch of its whole seconds (Date.parse),
 * its fraction in ns]: Date.parse alone keeps only milliseconds, where
 * Go writes nanoseconds and PostgreSQL keeps microseconds.
 */
function instant(s: string): [number, number] | undefined {
  const m = rfc3339.exec(s);
  if (!m) return undefined;
  const ms = Date.parse(`${m[1]!.toUpperCase()}${m[3]!.toUpperCase()}`);
  if (Number.isNaN(ms)) return undefined;
  return [ms, Number((m[2] ?? "").padEnd(9, "0"))];
}
