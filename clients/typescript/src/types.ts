/** The types every generated module fills in (`channelsapi-ts`). */

/** A place in a stream's history (PROTOCOL.md section 10). */
export interface Position {
  epoch: string;
  offset: number;
}

/** The types of one stream. */
export interface StreamTypes {
  model: object;
  write: object;
  patch: object;
  filters: object;
  ordering: string;
  pk: number | string;
  actions: object;
}

/** Every stream's types, by name: the generated `Streams`. */
export type StreamMap<S> = { [K in keyof S]: StreamTypes };

/** What the client needs at run time of a stream: the generated `schema.streams[name]`. */
export interface StreamInfo {
  readonly primaryKey: string;
  readonly rest: string;
  readonly liveQuery: boolean;
  readonly idempotencyKeys: boolean;
  readonly actions: { readonly [name: string]: { readonly detail: boolean; readonly method: string } };
  /**
   * The JSON Schema `format` of the model's fields that have one, e.g.
   * `{pub_date: "date-time"}`: a live collection compares date-time fields
   * as instants. Without it (modules generated before it), string values
   * in RFC 3339 date-time form compare as instants.
   */
  readonly formats?: { readonly [field: string]: string };
}

/** The generated `schema`. */
export interface RuntimeSchema<S> {
  readonly socket?: string;
  readonly streams: { readonly [K in keyof S]: StreamInfo };
}

/** An event handler, checked bivariantly so that the browser's and `ws`'s event types both fit. */
type Handler<E> = { bivariance(ev: E): void }["bivariance"] | null;

/** The part of a WebSocket the client uses: the browser's, or `ws`'s. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: Handler<unknown>;
  onclose: Handler<{ code: number; reason: string }>;
  onerror: Handler<unknown>;
  onmessage: Handler<{ data: unknown }>;
}

/** A WebSocket constructor: `globalThis.WebSocket`, or `ws`'s default export. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** A change a subscription receives (PROTOCOL.md sections 4.7 and 9). */
export interface ChangeEvent<M> {
  action: "create" | "update" | "delete";
  pk: number | string;
  data: M;
  offset?: number;
}
