// Package fanout indexes realtime subscriptions and fans committed changes
// out to the subscribers that match them.
//
// A [Subscriber] is one client connection. It holds any number of
// subscriptions of two kinds:
//
//   - Group subscriptions (channels-api style) name a stream, an action and
//     optionally a primary key; an empty key matches every object of the
//     stream. A subscriber receives the event's shared group frame at most
//     once per event, however many of its group subscriptions match.
//   - Instance subscriptions (DCRF style) name a stream, a primary key and
//     the raw JSON request id of the subscribe request. They match only
//     "update" and "delete" events, and each matching request id gets its
//     own frame with that id spliced in.
//
// The library encodes a change once into an [Event] and calls
// [Hub.Publish]. The hub finds the matching subscribers through map lookups
// keyed by (stream, action, pk) and (stream, pk), so routing an event costs
// time proportional to the number of matching subscriptions, independent of
// how many subscribers or keys the hub holds. Frames are handed to
// [Subscriber.Deliver], which must not block; a subscriber that cannot keep
// up refuses the frame and deals with that itself.
//
// The hub also keeps a reverse index per subscriber, so [Hub.Remove] drops
// a disconnected subscriber in time proportional to its own subscriptions,
// and empty index entries are deleted so that nothing is left behind.
//
// All methods of [Hub] are safe for concurrent use.
package fanout
