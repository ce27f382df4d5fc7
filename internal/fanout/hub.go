package fanout

import (
	"slices"
	"sync"
)

// Subscriber is one connection that receives frames.
//
// Deliver must not block. It reports whether the frame was accepted; false
// means the subscriber's queue is full or it is closed, and the subscriber
// itself handles that, for example by closing the connection. Deliver may be
// called concurrently by concurrent calls to [Hub.Publish]. It may keep
// frame (e.g. in a send queue) but must not modify it: group frames are
// shared by all recipients of an event.
//
// Subscribers are compared by identity: the hub uses them as map keys, so
// implementations must be comparable and are normally pointers.
type Subscriber interface {
	Deliver(frame []byte) bool
}

// Event is one committed change, already encoded.
//
// The hub only reads an Event; it must not be modified while
// [Hub.Publish] is running.
type Event struct {
	Stream string // resource name, e.g. "questions"
	Action string // "create", "update" or "delete"
	PK     string // canonical primary key text, e.g. "1"

	// Group is the complete frame for group subscribers. A nil Group means
	// there is no group frame and group subscribers receive nothing.
	Group []byte

	// InstancePrefix and InstanceSuffix build the frame for instance
	// subscribers: InstancePrefix + requestID + InstanceSuffix, where
	// requestID is the raw JSON request id of the subscription. Instance
	// subscribers receive only "update" and "delete" events. A nil
	// InstancePrefix means there is no instance frame.
	InstancePrefix, InstanceSuffix []byte

	// Allow, when non-nil, is called once per matching subscriber and
	// event; if it returns false the subscriber receives no frame for the
	// event. It is called without the hub's lock held, from the goroutine
	// calling Publish. It does not apply to live queries (Visible does).
	Allow func(Subscriber) bool

	// Before and After are the row's states for live queries: nil when
	// the event has none (a create has no Before, a delete no After; an
	// update whose Before is nil is treated as possibly in every set).
	Before, After State
	// Query holds the live-query frames by kind (Enter, Change, Leave). A
	// nil Prefix means no such frame; live queries receive nothing when
	// all are nil.
	Query [3]QueryFrame
	// Visible, when non-nil, tells whether a live-query subscriber may see
	// the state before (true) or after (false) the change: a state it
	// may not see counts as outside its sets. It is called without the
	// hub's lock held.
	Visible func(s Subscriber, before bool) bool
	// Offset is the event's place in its stream's history, or 0 when
	// unknown. A subscription that starts after an offset (see
	// [Hub.SubscribeAfter]) receives only the events above it.
	Offset uint64
	// Only, when set, restricts the event to one subscription, whatever
	// its start: the replay of a stream's history to a subscription that
	// resumes.
	Only *Subscription
}

// Subscription names one subscription of a subscriber on an event's
// stream: a group subscription (Kind Group: Action and PK, "" for every
// object), an instance subscription (Kind Instance: PK and RequestID) or a
// live query (Kind Query: RequestID).
type Subscription struct {
	S         Subscriber
	Kind      Kind
	Action    string
	PK        string
	RequestID string
}

// Kind is the kind of a subscription.
type Kind uint8

// The kinds of subscriptions.
const (
	Group Kind = iota
	Instance
	Query
)

// Held is the start of a subscription that receives nothing until it is
// started again, at the offset its replay reached.
const Held = ^uint64(0)

// A Hub indexes subscriptions and publishes events to them.
//
// All methods are safe for concurrent use by multiple goroutines. The zero
// value is not usable; create hubs with [New].
type Hub struct {
	mu     sync.RWMutex
	groups map[groupKey]map[Subscriber]struct{}
	// instances maps a key to the request ids of each subscriber. The
	// []string values are copy-on-write: they are replaced, never modified,
	// so Publish may read them after releasing the lock.
	instances map[instanceKey]map[Subscriber][]string
	subs      map[Subscriber]*subscriptions
	// streams counts the index keys of each stream, for interest.
	streams  map[string]int
	interest func(stream string, active bool)
	queries  queryIndex
	// starts holds, by stream, the offsets after which group and instance
	// subscriptions start; a subscription without one receives every
	// event. Live queries keep theirs in their cohort.
	starts map[string]map[startKey]uint64
}

// startKey names a group or instance subscription in Hub.starts.
type startKey struct {
	s               Subscriber
	instance        bool
	action, pk, rid string
}

// New returns an empty Hub.
func New() *Hub {
	h := &Hub{
		groups:    make(map[groupKey]map[Subscriber]struct{}),
		instances: make(map[instanceKey]map[Subscriber][]string),
		subs:      make(map[Subscriber]*subscriptions),
		streams:   make(map[string]int),
		starts:    make(map[string]map[startKey]uint64),
	}
	h.queries.init()
	return h
}

// OnInterest sets fn to be told when a stream gains its first subscription
// of either kind (active true) and when it loses its last one (active
// false), so that a broker can fetch only the streams someone here listens
// to. fn is called with the hub's lock held, in the order the changes
// happen: it must not block and must not call the hub. Set it before the
// hub is used; nil (the default) tells no one.
func (h *Hub) OnInterest(fn func(stream string, active bool)) { h.interest = fn }

// keyAdded counts a new index key of stream. h.mu must be held for writing.
func (h *Hub) keyAdded(stream string) {
	h.streams[stream]++
	if h.streams[stream] == 1 && h.interest != nil {
		h.interest(stream, true)
	}
}

// keyDropped forgets an index key of stream. h.mu must be held for writing.
func (h *Hub) keyDropped(stream string) {
	h.streams[stream]--
	if h.streams[stream] > 0 {
		return
	}
	delete(h.streams, stream)
	if h.interest != nil {
		h.interest(stream, false)
	}
}

// target is one subscriber matched by an event.
type target struct {
	s     Subscriber
	group bool     // receives Event.Group
	ids   []string // request ids of instance frames; never modified
}

// routed is what an event was routed to.
type routed struct {
	targets []target
	queries []queryTarget
}

// routedPool recycles the per-event buffers of Publish.
var routedPool = sync.Pool{New: func() any { return new(routed) }}

// Publish delivers ev to the matching subscribers and returns the number of
// frames handed to [Subscriber.Deliver], accepted or not, and how many of
// them were refused.
//
// A group subscriber receives ev.Group once, even when both its subscription
// to every object of the stream and its subscription to ev.PK match. An
// instance subscriber receives one frame per matching request id, and only
// for "update" and "delete" events. A subscriber holding both kinds
// receives both. ev.Allow, if set, is asked once per matching subscriber.
//
// Publish is safe for concurrent use, including with itself; concurrent
// calls deliver in no particular order relative to each other. It routes
// under a read lock and calls Allow and Deliver after releasing it, so they
// may call back into the hub (for example to Remove a subscriber that
// refused a frame). Publish never blocks on a subscriber beyond the time
// Deliver takes.
func (h *Hub) Publish(ev *Event) (delivered, refused int) {
	buf := routedPool.Get().(*routed)
	targets, queries := h.route(ev, buf.targets, buf.queries)
	for i := range targets {
		t := &targets[i]
		if ev.Allow != nil && !ev.Allow(t.s) {
			continue
		}
		if t.group {
			delivered++
			if !t.s.Deliver(ev.Group) {
				refused++
			}
		}
		for _, id := range t.ids {
			frame := make([]byte, 0, len(ev.InstancePrefix)+len(id)+len(ev.InstanceSuffix))
			frame = append(frame, ev.InstancePrefix...)
			frame = append(frame, id...)
			frame = append(frame, ev.InstanceSuffix...)
			delivered++
			if !t.s.Deliver(frame) {
				refused++
			}
		}
	}
	for i := range queries {
		d, r := deliverQuery(ev, &queries[i])
		delivered, refused = delivered+d, refused+r
	}
	// Do not keep subscribers reachable from the pool.
	clear(targets)
	clear(queries)
	buf.targets, buf.queries = targets[:0], queries[:0]
	routedPool.Put(buf)
	return delivered, refused
}

// route appends to targets one entry per subscriber matching ev by its
// group and instance subscriptions, each subscriber at most once, and to
// queries one per subscriber and cohort of the live queries ev concerns.
func (h *Hub) route(ev *Event, targets []target, queries []queryTarget) ([]target, []queryTarget) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if ev.Only != nil {
		return h.routeOnly(ev, targets, queries)
	}
	queries = h.routeQueries(ev, queries)
	var all, one map[Subscriber]struct{}
	if ev.Group != nil {
		all = h.groups[groupKey{ev.Stream, ev.Action, ""}]
		if ev.PK != "" {
			one = h.groups[groupKey{ev.Stream, ev.Action, ev.PK}]
		}
	}
	var inst map[Subscriber][]string
	if ev.InstancePrefix != nil && (ev.Action == "update" || ev.Action == "delete") {
		inst = h.instances[instanceKey{ev.Stream, ev.PK}]
	}
	if starts := h.starts[ev.Stream]; len(starts) > 0 && ev.Offset != 0 {
		return h.routeStarted(ev, starts, all, one, inst, targets), queries
	}
	for s := range all {
		targets = append(targets, target{s: s, group: true, ids: inst[s]})
	}
	for s := range one {
		if _, dup := all[s]; !dup {
			targets = append(targets, target{s: s, group: true, ids: inst[s]})
		}
	}
	for s, ids := range inst {
		if _, dup := all[s]; dup {
			continue
		}
		if _, dup := one[s]; dup {
			continue
		}
		targets = append(targets, target{s: s, ids: ids})
	}
	return targets, queries
}

// routeStarted is route's loop for a stream some of whose group or
// instance subscriptions start after an offset: each receives ev only when
// ev is above its start. h.mu must be held.
func (h *Hub) routeStarted(ev *Event, starts map[startKey]uint64, all, one map[Subscriber]struct{}, inst map[Subscriber][]string, targets []target) []target {
	admits := func(k startKey) bool {
		after, ok := starts[k]
		return !ok || ev.Offset > after
	}
	ids := func(s Subscriber) []string {
		var out []string
		for _, id := range inst[s] {
			if admits(startKey{s: s, instance: true, pk: ev.PK, rid: id}) {
				out = append(out, id)
			}
		}
		return out
	}
	seen := make(map[Subscriber]struct{}, len(all)+len(one)+len(inst))
	for _, set := range []map[Subscriber]struct{}{all, one} {
		for s := range set {
			if _, dup := seen[s]; dup {
				continue
			}
			seen[s] = struct{}{}
			_, inAll := all[s]
			_, inOne := one[s]
			group := inAll && admits(startKey{s: s, action: ev.Action}) ||
				inOne && admits(startKey{s: s, action: ev.Action, pk: ev.PK})
			targets = append(targets, target{s: s, group: group, ids: ids(s)})
		}
	}
	for s := range inst {
		if _, dup := seen[s]; !dup {
			targets = append(targets, target{s: s, ids: ids(s)})
		}
	}
	return targets
}

// routeOnly routes ev to the one subscription ev.Only names, if it exists.
// h.mu must be held.
func (h *Hub) routeOnly(ev *Event, targets []target, queries []queryTarget) ([]target, []queryTarget) {
	o := ev.Only
	switch o.Kind {
	case Group:
		if ev.Group == nil || o.Action != ev.Action || o.PK != "" && o.PK != ev.PK {
			break
		}
		if _, ok := h.groups[groupKey{ev.Stream, o.Action, o.PK}][o.S]; ok {
			targets = append(targets, target{s: o.S, group: true})
		}
	case Instance:
		if ev.InstancePrefix == nil || (ev.Action != "update" && ev.Action != "delete") || o.PK != ev.PK {
			break
		}
		if slices.Contains(h.instances[instanceKey{ev.Stream, ev.PK}][o.S], o.RequestID) {
			targets = append(targets, target{s: o.S, ids: []string{o.RequestID}})
		}
	case Query:
		queries = h.routeQuery(ev, o.S, o.RequestID, queries)
	}
	return targets, queries
}

// Stats reports the size of the index: the number of distinct group and
// instance keys with at least one subscription, and the number of
// subscribers with at least one subscription. A hub whose subscribers have
// all been removed reports (0, 0).
//
// Stats is safe for concurrent use.
func (h *Hub) Stats() (keys, subscribers int) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.groups) + len(h.instances) + len(h.queries.cohorts), len(h.subs)
}

// Active reports whether stream has at least one subscription of either
// kind.
//
// Active is safe for concurrent use.
func (h *Hub) Active(stream string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.streams[stream] > 0
}

// HasQueries reports whether stream has at least one live query.
//
// HasQueries is safe for concurrent use.
func (h *Hub) HasQueries(stream string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.queries.fields[stream]) > 0 || len(h.queries.unanchored[stream]) > 0
}

// Matching returns the subscribers ev would be routed to (group, instance
// and live-query subscribers, each once), without delivering anything and
// without asking Allow or Visible. It costs what routing costs.
//
// Matching is safe for concurrent use.
func (h *Hub) Matching(ev *Event) []Subscriber {
	probe := *ev
	probe.Group, probe.InstancePrefix = []byte{}, []byte{}
	probe.Query[Enter].Prefix = []byte{}
	targets, queries := h.route(&probe, nil, nil)
	out := make([]Subscriber, 0, len(targets)+len(queries))
	seen := make(map[Subscriber]struct{}, len(targets)+len(queries))
	for _, t := range targets {
		seen[t.s] = struct{}{}
		out = append(out, t.s)
	}
	for _, t := range queries {
		if _, dup := seen[t.s]; !dup {
			seen[t.s] = struct{}{}
			out = append(out, t.s)
		}
	}
	return out
}
