/**
 * Safe retries (PROTOCOL.md section 11): every write carries an idempotency
 * key the client makes, and a write that was in flight when the connection
 * dropped is sent again, after reconnecting, with the same key. A server
 * that keeps keys runs the write once and answers the repeat with the stored
 * reply and "replayed": true; a server that does not runs it twice (a create
 * makes two rows).
 *
 * Everything that depends on the server's idempotency keys is in this
 * module.
 */

/** The payload key of the idempotency key. */
export const idempotencyKeyField = "idempotency_key";

/** The built-in writes; every custom action counts as a write too. */
const writes = new Set(["create", "update", "patch", "delete"]);

/** The built-in actions that only read or subscribe. */
const reads = new Set([
  "retrieve", "list",
  "subscribe", "unsubscribe", "subscribe_instance", "unsubscribe_instance", "subscribe_list", "unsubscribe_list",
]);

/** Whether an action writes (a built-in write, or any custom action). */
export function isWrite(action: string): boolean {
  return writes.has(action) || !reads.has(action);
}

/**
 * Whether an action takes an idempotency key: the built-in writes. A custom
 * action's handler writes outside the server's transaction, so the server
 * refuses keys on custom actions, and a custom action whose reply was lost
 * is not sent again.
 */
export function takesIdempotencyKey(action: string): boolean {
  return writes.has(action);
}

/** A new key: a random UUID. */
export function newIdempotencyKey(): string {
  return globalThis.crypto.randomUUID();
}

/** The payload with a key added when the action writes and it has none. */
export function withIdempotencyKey(action: string, payload: Record<string, unknown>): Record<string, unknown> {
  if (!takesIdempotencyKey(action) || typeof payload[idempotencyKeyField] === "string") return payload;
  return { ...payload, [idempotencyKeyField]: newIdempotencyKey() };
}

/** Whether a reply is the stored reply of an earlier run of the same key. */
export function isReplayed(payload: Record<string, unknown>): boolean {
  return payload["replayed"] === true;
}

/** How many times a resent write answered 409 is sent again. */
export const stillRunningRetries = 5;

/**
 * Whether a reply to a resent write says the first run of its key is still
 * running (409, not replayed: a replayed 409 is the stored reply of a run
 * that conflicted): the write is then sent again, after a delay, at most
 * stillRunningRetries times.
 */
export function isStillRunning(resent: boolean, action: string, payload: Record<string, unknown>): boolean {
  return resent && isWrite(action) && payload["response_status"] === 409 && !isReplayed(payload);
}
