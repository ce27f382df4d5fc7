package fanout

// This file indexes live queries (list subscriptions, PROTOCOL.md section
// 9). Subscriptions whose filters are equal share a cohort, whose filter is
// evaluated once per event however many subscribers it has. A cohort whose
// filter holds an equality condition (an anchor: field = value, or field in
// values) is indexed under it, so that an event looks up the cohorts of its
// row's values instead of evaluating every live query of the stream; the
// others are evaluated on every event of the stream.

// State is one state of an event's row (before or after the change), as
// live queries read it.
type State interface {
	// AnchorKey returns the canonical text of the state's value of
	// field, comparable with Matcher.Anchor's keys, or false for NULL.
	AnchorKey(field int) (string, bool)
}

// Matcher is the filter of a live query.
type Matcher interface {
	// Match reports whether the state is in the query's set. It must be
	// fast and must not call the hub: the hub calls it under its lock.
	Match(State) bool
	// Anchor returns an equality condition every matching state
	// satisfies, if the filter has one.
	Anchor() (field int, keys []string, ok bool)
}

// QueryFrame is the frame of a live-query event: Prefix + request id +
// Suffix.
type QueryFrame struct{ Prefix, Suffix []byte }

// The kinds of live-query events, indexes of Event.Query.
const (
	Enter  = iota // the row starts matching: a create
	Change        // a matching row changes and still matches: an update
	Leave         // the row stops matching: a delete
)

// cohort is the subscriptions of one stream that share a filter.
type cohort struct {
	stream string
	key    string
	m      Matcher
	field  int
	keys   []string
	// subs holds the subscriptions of each subscriber; the slices are
	// copy-on-write, so Publish may read them after releasing the lock.
	subs map[Subscriber][]querySub
}

// querySub is one live query of a subscriber.
type querySub struct {
	id   string // raw JSON request id
	from uint64 // events with an Offset at or below it are not delivered
}

type anchorKey struct {
	stream string
	field  int
	key    string
}

// queryIndex holds the cohorts of every stream.
type queryIndex struct {
	cohorts    map[[2]string]*cohort // (stream, filter key)
	anchored   map[anchorKey]map[*cohort]struct{}
	fields     map[string]map[int]int // stream -> anchor field -> cohorts anchored on it
	unanchored map[string]map[*cohort]struct{}
}

// queryRef names a live query of a subscriber in its reverse index.
type queryRef struct{ stream, id string }

// SubscribeQuery adds the live query of s on stream identified by
// requestID (the raw JSON request id), whose filter is m and whose
// canonical filter text is key: subscriptions with equal keys must have
// equivalent matchers. A live query of s with the same request id is
// replaced. Events whose Offset is not zero and at most from are not
// delivered to it ([Held] holds back every event). It reports whether the subscription is new (not a
// replacement).
//
// SubscribeQuery is safe for concurrent use.
func (h *Hub) SubscribeQuery(s Subscriber, stream string, requestID []byte, key string, m Matcher, from uint64) bool {
	ref := queryRef{stream, string(requestID)}
	h.mu.Lock()
	defer h.mu.Unlock()
	ss := h.subs[s]
	if ss == nil {
		ss = new(subscriptions)
		h.subs[s] = ss
	}
	replaced := false
	if old, ok := ss.queries[ref]; ok {
		// The stream keeps its interest across the replacement, so that
		// a broker does not drop its channel and subscribe to it again.
		h.streams[stream]++
		defer h.keyDropped(stream)
		h.dropQuery(s, ref, old)
		replaced = true
	}
	if ss.queries == nil {
		ss.queries = make(map[queryRef]string)
	}
	ss.queries[ref] = key
	c := h.queries.cohorts[[2]string{stream, key}]
	if c == nil {
		c = &cohort{stream: stream, key: key, m: m, subs: make(map[Subscriber][]querySub)}
		h.queries.add(c)
		h.keyAdded(stream)
	}
	subs := c.subs[s]
	c.subs[s] = append(subs[:len(subs):len(subs)], querySub{id: ref.id, from: from})
	return !replaced
}

// UnsubscribeQuery removes the live query of s on stream with requestID.
// It reports whether it existed.
//
// UnsubscribeQuery is safe for concurrent use.
func (h *Hub) UnsubscribeQuery(s Subscriber, stream string, requestID []byte) bool {
	ref := queryRef{stream, string(requestID)}
	h.mu.Lock()
	defer h.mu.Unlock()
	ss := h.subs[s]
	if ss == nil {
		return false
	}
	key, ok := ss.queries[ref]
	if !ok {
		return false
	}
	h.dropQuery(s, ref, key)
	h.release(s, ss)
	return true
}

// dropQuery removes one live query of s. h.mu must be held for writing.
func (h *Hub) dropQuery(s Subscriber, ref queryRef, key string) {
	delete(h.subs[s].queries, ref)
	c := h.queries.cohorts[[2]string{ref.stream, key}]
	if c == nil {
		return
	}
	subs := c.subs[s]
	kept := make([]querySub, 0, len(subs))
	for _, q := range subs {
		if q.id != ref.id {
			kept = append(kept, q)
		}
	}
	if len(kept) > 0 {
		c.subs[s] = kept
		return
	}
	delete(c.subs, s)
	if len(c.subs) == 0 {
		h.queries.remove(c)
		h.keyDropped(ref.stream)
	}
}

func (x *queryIndex) init() {
	x.cohorts = make(map[[2]string]*cohort)
	x.anchored = make(map[anchorKey]map[*cohort]struct{})
	x.fields = make(map[string]map[int]int)
	x.unanchored = make(map[string]map[*cohort]struct{})
}

func (x *queryIndex) add(c *cohort) {
	x.cohorts[[2]string{c.stream, c.key}] = c
	field, keys, ok := c.m.Anchor()
	if !ok {
		set := x.unanchored[c.stream]
		if set == nil {
			set = make(map[*cohort]struct{})
			x.unanchored[c.stream] = set
		}
		set[c] = struct{}{}
		return
	}
	c.field, c.keys = field, keys
	for _, k := range keys {
		ak := anchorKey{c.stream, field, k}
		set := x.anchored[ak]
		if set == nil {
			set = make(map[*cohort]struct{})
			x.anchored[ak] = set
		}
		set[c] = struct{}{}
	}
	fields := x.fields[c.stream]
	if fields == nil {
		fields = make(map[int]int)
		x.fields[c.stream] = fields
	}
	fields[field]++
}

func (x *queryIndex) remove(c *cohort) {
	delete(x.cohorts, [2]string{c.stream, c.key})
	if c.keys == nil {
		delete(x.unanchored[c.stream], c)
		if len(x.unanchored[c.stream]) == 0 {
			delete(x.unanchored, c.stream)
		}
		return
	}
	for _, k := range c.keys {
		ak := anchorKey{c.stream, c.field, k}
		delete(x.anchored[ak], c)
		if len(x.anchored[ak]) == 0 {
			delete(x.anchored, ak)
		}
	}
	fields := x.fields[c.stream]
	if fields[c.field]--; fields[c.field] == 0 {
		delete(fields, c.field)
	}
	if len(fields) == 0 {
		delete(x.fields, c.stream)
	}
}

// queryTarget is one subscriber of a cohort the event's row was or is in.
type queryTarget struct {
	s        Subscriber
	subs     []querySub // never modified
	inBefore bool
	inAfter  bool
}

// routeQueries appends the live queries ev concerns. h.mu must be held.
func (h *Hub) routeQueries(ev *Event, out []queryTarget) []queryTarget {
	if ev.Query[Enter].Prefix == nil && ev.Query[Leave].Prefix == nil {
		return out
	}
	var seen visited
	visit := func(c *cohort) {
		if !seen.add(c) {
			return
		}
		inB, inA := c.membership(ev)
		if !inB && !inA {
			return
		}
		for s, subs := range c.subs {
			out = append(out, queryTarget{s: s, subs: subs, inBefore: inB, inAfter: inA})
		}
	}
	for field := range h.queries.fields[ev.Stream] {
		var before string
		hasBefore := false
		if ev.Before != nil {
			if before, hasBefore = ev.Before.AnchorKey(field); hasBefore {
				for c := range h.queries.anchored[anchorKey{ev.Stream, field, before}] {
					visit(c)
				}
			}
		}
		if ev.After != nil {
			// An unchanged value finds the cohorts it found before.
			if after, ok := ev.After.AnchorKey(field); ok && (!hasBefore || after != before) {
				for c := range h.queries.anchored[anchorKey{ev.Stream, field, after}] {
					visit(c)
				}
			}
		}
		if ev.Before == nil && ev.Action == "update" {
			// Without the row before, any cohort of the field may have
			// held it.
			for ak, set := range h.queries.anchored {
				if ak.stream == ev.Stream && ak.field == field {
					for c := range set {
						visit(c)
					}
				}
			}
		}
	}
	for c := range h.queries.unanchored[ev.Stream] {
		visit(c)
	}
	return out
}

// membership reports whether ev's row was in c's set before the change
// and whether it is after.
func (c *cohort) membership(ev *Event) (inBefore, inAfter bool) {
	if ev.After != nil {
		inAfter = c.m.Match(ev.After)
	}
	switch {
	case ev.Before != nil:
		inBefore = c.m.Match(ev.Before)
	case ev.Action == "update":
		// The row before is unknown: it may have been in the set, so it
		// is an update if it matches now and a leave if not.
		inBefore = true
	}
	return inBefore, inAfter
}

// routeQuery appends the live query of s with requestID on ev's stream,
// if it exists and ev concerns it, whatever its start. h.mu must be held.
func (h *Hub) routeQuery(ev *Event, s Subscriber, requestID string, out []queryTarget) []queryTarget {
	if ev.Query[Enter].Prefix == nil && ev.Query[Leave].Prefix == nil {
		return out
	}
	ss := h.subs[s]
	if ss == nil {
		return out
	}
	key, ok := ss.queries[queryRef{ev.Stream, requestID}]
	if !ok {
		return out
	}
	c := h.queries.cohorts[[2]string{ev.Stream, key}]
	if c == nil {
		return out
	}
	if inB, inA := c.membership(ev); inB || inA {
		out = append(out, queryTarget{s: s, subs: []querySub{{id: requestID}}, inBefore: inB, inAfter: inA})
	}
	return out
}

// visited is the set of cohorts an event has been routed to, so that a
// cohort reached through several anchor values is evaluated once. An event
// reaches a few cohorts, unless its row before is unknown: they are kept in
// an array, and those beyond it in a map.
type visited struct {
	few  [16]*cohort
	n    int
	many map[*cohort]struct{}
}

// add reports whether c is new to v, and adds it.
func (v *visited) add(c *cohort) bool {
	for _, x := range v.few[:v.n] {
		if x == c {
			return false
		}
	}
	if v.n < len(v.few) {
		v.few[v.n] = c
		v.n++
		return true
	}
	if _, ok := v.many[c]; ok {
		return false
	}
	if v.many == nil {
		v.many = make(map[*cohort]struct{})
	}
	v.many[c] = struct{}{}
	return true
}

// deliverQuery sends one live-query target its frames.
func deliverQuery(ev *Event, t *queryTarget) (delivered, refused int) {
	inB, inA := t.inBefore, t.inAfter
	if ev.Visible != nil {
		inB = inB && ev.Visible(t.s, true)
		inA = inA && ev.Visible(t.s, false)
	}
	var f QueryFrame
	switch {
	case inA && inB:
		f = ev.Query[Change]
	case inA:
		f = ev.Query[Enter]
	case inB:
		f = ev.Query[Leave]
	default:
		return 0, 0
	}
	if f.Prefix == nil {
		return 0, 0
	}
	for _, q := range t.subs {
		if ev.Offset != 0 && ev.Offset <= q.from {
			continue
		}
		frame := make([]byte, 0, len(f.Prefix)+len(q.id)+len(f.Suffix))
		frame = append(frame, f.Prefix...)
		frame = append(frame, q.id...)
		frame = append(frame, f.Suffix...)
		delivered++
		if !t.s.Deliver(frame) {
			refused++
		}
	}
	return delivered, refused
}
