/**
 * The errors of a request, one class per kind of refusal, each carrying the
 * status and the errors exactly as the server sent them (PROTOCOL.md
 * section 3: a list of strings, or one object of field messages).
 */

/** A reply's errors as sent: strings, or one `{field: [messages]}` object. */
export type WireErrors = Array<string | Record<string, string[]>>;

/** A request the server refused, or one that could not be answered. */
export class ChannelsApiError extends Error {
  /** The reply's response_status; 0 when no reply came (ConnectionLostError). */
  readonly status: number;
  /** The reply's errors, as the server sent them. */
  readonly errors: WireErrors;
  readonly stream: string | null;
  readonly action: string | null;
  /** The reply's data: null, or the current object of a 412. */
  readonly data: unknown;

  constructor(message: string, status: number, errors: WireErrors, stream: string | null, action: string | null, data: unknown = null) {
    super(message);
    this.name = new.target.name;
    this.status = status;
    this.errors = errors;
    this.stream = stream;
    this.action = action;
    this.data = data;
  }
}

/** 400: the data or the query was not valid. */
export class ValidationError extends ChannelsApiError {
  /** The field messages, keyed by JSON path ("non_field_errors" across fields); empty for a plain 400. */
  get fieldErrors(): Record<string, string[]> {
    const out: Record<string, string[]> = {};
    for (const e of this.errors) {
      if (typeof e === "object" && e !== null) Object.assign(out, e);
    }
    return out;
  }
}

/** 401 (no user) or 403 (this user may not). */
export class PermissionError extends ChannelsApiError {}

/** 404: no such object (or page, or stream). */
export class NotFoundError extends ChannelsApiError {}

/**
 * 409 (a conflict, or a repeat of an idempotency key still running), 412 (a
 * stale if_match: data is the current object) or 422 (an idempotency key
 * reused with another body).
 */
export class ConflictError extends ChannelsApiError {}

/**
 * No reply will come: the connection dropped and the request is not retried
 * (a write on a stream without idempotency keys, retries off, or the client
 * was closed).
 */
export class ConnectionLostError extends ChannelsApiError {
  constructor(message: string, stream: string | null, action: string | null) {
    super(message, 0, [], stream, action);
  }
}

/**
 * No reply came within the request's timeout (ClientOptions.timeout); a
 * reply that comes later is ignored. A write may still have run.
 */
export class TimeoutError extends ChannelsApiError {
  constructor(message: string, stream: string | null, action: string | null) {
    super(message, 0, [], stream, action);
  }
}

/**
 * Whether an error may pass if the request is made again later: a
 * TimeoutError, 429 (too many requests or subscriptions) or a 5xx (503
 * "Server busy, try again." above all). Subscriptions resumed after a
 * reconnect, and live collections loading, retry these with backoff.
 */
export function isTransientError(error: unknown): boolean {
  if (error instanceof TimeoutError) return true;
  return error instanceof ChannelsApiError && (error.status === 429 || error.status >= 500);
}

/** The error of a failed reply payload. */
export function errorFromReply(stream: string | null, payload: { action?: unknown; response_status?: unknown; errors?: unknown; data?: unknown }): ChannelsApiError {
  const status = typeof payload.response_status === "number" ? payload.response_status : 0;
  const errors = (Array.isArray(payload.errors) ? payload.errors : []) as WireErrors;
  const action = typeof payload.action === "string" ? payload.action : null;
  const message = `${stream ?? "(no stream)"} ${action ?? "(no action)"}: ${status} ${errors
    .map((e) => (typeof e === "string" ? e : JSON.stringify(e)))
    .join("; ")}`;
  const data = payload.data ?? null;
  switch (true) {
    case status === 400:
      return new ValidationError(message, status, errors, stream, action, data);
    case status === 401 || status === 403:
      return new PermissionError(message, status, errors, stream, action, data);
    case status === 404:
      return new NotFoundError(message, status, errors, stream, action, data);
    case status === 409 || status === 412 || status === 422:
      return new ConflictError(message, status, errors, stream, action, data);
    default:
      return new ChannelsApiError(message, status, errors, stream, action, data);
  }
}
