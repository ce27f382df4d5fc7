export { Client, StreamClient, PlainSubscription, InstanceSubscription, backoffDelay } from "./client.js";
export type { ClientOptions, ClientEvents, ConnectionState, ReplyPayload, Page, ListOptions, Resumable, SubscriptionOptions } from "./client.js";
export { LiveCollection, compareValues } from "./live.js";
export type { LiveOptions, LiveChange, CompareOptions } from "./live.js";
export { ChannelsApiError, ValidationError, PermissionError, NotFoundError, ConflictError, ConnectionLostError, TimeoutError, errorFromReply, isTransientError } from "./errors.js";
export type { WireErrors } from "./errors.js";
export { idempotencyKeyField, isWrite, isReplayed, newIdempotencyKey } from "./idempotency.js";
export type { Position, StreamTypes, StreamMap, StreamInfo, RuntimeSchema, WebSocketLike, WebSocketConstructor, ChangeEvent } from "./types.js";
