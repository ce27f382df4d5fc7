/**
 * Live collections: the rows of a live query (subscribe_list with a
 * snapshot, PROTOCOL.md section 9), kept current from its create, update
 * and delete events, in the order of the query then primary key. After a
 * reconnect the query resumes from the offset it reached; when the server
 * answers `recovered: false` the collection reloads its snapshot.
 */
import type { Client, ReplyPayload, Resumable } from "./client.js";
import type { Position, StreamMap, StreamTypes } from "./types.js";

/** The options of StreamClient.live. */
export interface LiveOptions<T extends StreamTypes> {
  /** The query's filters (section 8 keys; not ordering or page). */
  filters?: T["filters"];
  /** How the collection is ordered (the server's list ordering is not sent with events): fields, "-" for descending; ties by primary key. */
  ordering?: T["ordering"][];
  /** The size of the snapshot's pages (the server caps it). Default 100. */
  pageSize?: number;
}

/** What changed in a live collection. */
export type LiveChange<M> =
  | { type: "load"; reason: "initial" | "resync" }
  | { type: "create" | "update" | "delete"; pk: number | string; row: M };

/** How many passes over the pages a load makes to read them all at one position. */
const loadPasses = 5;

export class LiveCollection<T extends StreamTypes> implements Resumable {
  readonly id: string;
  /** The stream position the collection holds; undefined while it loads. */
  position: Position | undefined;
  /** Settles once the first snapshot is loaded. */
  readonly ready: Promise<void>;
  /** How many times the collection reloaded its snapshot after `recovered: false`. */
  reloads = 0;

  private readonly rows = new Map<string, T["model"]>();
  private sorted: T["model"][] | null = null;
  private generation = 0;
  /** Events that arrive while a load reads its pages. */
  private buffer: Record<string, unknown>[] | null = null;
  private loaded = false;
  private readonly listeners = new Set<(c: LiveChange<T["model"]>) => void>();
  private settle!: { resolve: () => void; reject: (e: unknown) => void };

  constructor(
    private readonly client: Client<StreamMap<unknown>>,
    readonly stream: string,
    private readonly primaryKey: string,
    private readonly opts: LiveOptions<T>,
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
    const data = reply.data as { results?: T["model"][]; count?: number; position?: Position; recovered?: boolean };
    if (data.recovered === true && this.position) return; // the missed events follow
    const reason = this.loaded ? "resync" : "initial";
    if (this.loaded) this.reloads++;
    this.load(data.results ?? [], data.count ?? 0, data.position, reason);
  }

  onEvent(payload: Record<string, unknown>): void {
    if (this.buffer) {
      this.buffer.push(payload);
      return;
    }
    this.apply(payload);
  }

  onFailed(error: unknown): void {
    this.settle.reject(error);
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
    this.readPages(gen).then(
      ({ rows, at }) => {
        if (gen !== this.generation) return;
        const events = this.buffer ?? [];
        this.replace(rows, at, events, reason);
      },
      (error) => {
        if (gen === this.generation) this.settle.reject(error);
      },
    );
  }

  private async readPages(gen: number): Promise<{ rows: T["model"][]; at: Position | undefined }> {
    const stream = this.client.stream(this.stream as never);
    let rows: T["model"][] = [];
    let at: Position | undefined;
    for (let pass = 0; pass < loadPasses && gen === this.generation; pass++) {
      rows = [];
      at = undefined;
      let same = true;
      for (let page = 1; ; page++) {
        const p = await stream.list({ filters: this.opts.filters as never, page, pageSize: this.opts.pageSize ?? 100 });
        if (gen !== this.generation) return { rows, at };
        rows.push(...(p.results as T["model"][]));
        if (page === 1) at = p.position;
        else if (!at || !p.position || p.position.epoch !== at.epoch || p.position.offset !== at.offset) same = false;
        if (page >= p.numPages) break;
      }
      if (same) break;
    }
    return { rows, at };
  }

  private replace(rows: T["model"][], position: Position | undefined, events: Record<string, unknown>[], reason: "initial" | "resync"): void {
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
    for (const f of this.opts.ordering ?? []) {
      const desc = f.startsWith("-");
      const field = desc ? f.slice(1) : f;
      const c = compareValues(ra[field], rb[field]);
      if (c !== 0) return desc ? -c : c;
    }
    return compareValues(ra[this.primaryKey], rb[this.primaryKey]);
  }
}

/** Orders JSON values: null first, numbers by value, anything else by its text's code points. */
export function compareValues(a: unknown, b: unknown): number {
  if (a === b) return 0;
  if (a === null || a === undefined) return -1;
  if (b === null || b === undefined) return 1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  if (typeof a === "boolean" && typeof b === "boolean") return a ? 1 : -1;
  const sa = String(a);
  const sb = String(b);
  return sa < sb ? -1 : sa > sb ? 1 : 0;
}
