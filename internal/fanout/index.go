package fanout

// groupKey indexes group subscriptions; pk == "" matches every object.
type groupKey struct{ stream, action, pk string }

// instanceKey indexes instance subscriptions.
type instanceKey struct{ stream, pk string }

// instanceSub is one instance subscription of a subscriber.
type instanceSub struct {
	key       instanceKey
	requestID string
}

// subscriptions is the reverse index of one subscriber. Its maps are
// allocated on first use.
type subscriptions struct {
	groups    map[groupKey]struct{}
	instances map[instanceSub]struct{}
	queries   map[queryRef]string // live query -> its cohort's key
}

func (ss *subscriptions) count() int { return len(ss.groups) + len(ss.instances) + len(ss.queries) }

// Subscribe adds a group subscription of s to action events of stream; an
// empty pk subscribes to every object of the stream, otherwise only to the
// object with that primary key. It reports whether the subscription is new:
// subscribing twice is one subscription.
//
// Subscribe is safe for concurrent use.
func (h *Hub) Subscribe(s Subscriber, stream, action, pk string) bool {
	return h.SubscribeAfter(s, stream, action, pk, 0)
}

// SubscribeAfter is [Hub.Subscribe] for a subscription that receives only
// the events whose Offset is above after (or 0: unknown); [Held] holds back
// every event until [Hub.Start] starts it. Subscribing again sets its start.
//
// SubscribeAfter is safe for concurrent use.
func (h *Hub) SubscribeAfter(s Subscriber, stream, action, pk string, after uint64) bool {
	k := groupKey{stream, action, pk}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.setStart(stream, startKey{s: s, action: action, pk: pk}, after)
	ss := h.subs[s]
	if ss == nil {
		ss = new(subscriptions)
		h.subs[s] = ss
	} else if _, ok := ss.groups[k]; ok {
		return false
	}
	if ss.groups == nil {
		ss.groups = make(map[groupKey]struct{})
	}
	ss.groups[k] = struct{}{}
	set := h.groups[k]
	if set == nil {
		set = make(map[Subscriber]struct{})
		h.groups[k] = set
		h.keyAdded(stream)
	}
	set[s] = struct{}{}
	return true
}

// Unsubscribe removes the group subscription added by [Hub.Subscribe] with
// the same arguments. It reports whether the subscription existed.
//
// Unsubscribe is safe for concurrent use.
func (h *Hub) Unsubscribe(s Subscriber, stream, action, pk string) bool {
	k := groupKey{stream, action, pk}
	h.mu.Lock()
	defer h.mu.Unlock()
	ss := h.subs[s]
	if ss == nil {
		return false
	}
	if _, ok := ss.groups[k]; !ok {
		return false
	}
	delete(ss.groups, k)
	h.setStart(stream, startKey{s: s, action: action, pk: pk}, 0)
	h.dropGroup(s, k)
	h.release(s, ss)
	return true
}

// SubscribeInstance adds an instance subscription of s to the object of
// stream with primary key pk, identified by requestID, the raw JSON request
// id (e.g. `"r9"` including the quotes, or `7`). Request ids are compared as
// strings. It reports whether the subscription is new. The hub keeps its own
// copy of requestID.
//
// SubscribeInstance is safe for concurrent use.
func (h *Hub) SubscribeInstance(s Subscriber, stream, pk string, requestID []byte) bool {
	return h.SubscribeInstanceAfter(s, stream, pk, requestID, 0)
}

// SubscribeInstanceAfter is [Hub.SubscribeInstance] for a subscription
// that receives only the events whose Offset is above after (or 0), as
// [Hub.SubscribeAfter].
//
// SubscribeInstanceAfter is safe for concurrent use.
func (h *Hub) SubscribeInstanceAfter(s Subscriber, stream, pk string, requestID []byte, after uint64) bool {
	is := instanceSub{instanceKey{stream, pk}, string(requestID)}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.setStart(stream, startKey{s: s, instance: true, pk: pk, rid: is.requestID}, after)
	ss := h.subs[s]
	if ss == nil {
		ss = new(subscriptions)
		h.subs[s] = ss
	} else if _, ok := ss.instances[is]; ok {
		return false
	}
	if ss.instances == nil {
		ss.instances = make(map[instanceSub]struct{})
	}
	ss.instances[is] = struct{}{}
	set := h.instances[is.key]
	if set == nil {
		set = make(map[Subscriber][]string)
		h.instances[is.key] = set
		h.keyAdded(stream)
	}
	ids := set[s]
	// The full slice expression forces a copy; see Hub.instances.
	set[s] = append(ids[:len(ids):len(ids)], is.requestID)
	return true
}

// UnsubscribeInstance removes the instance subscription added by
// [Hub.SubscribeInstance] with the same arguments. It reports whether the
// subscription existed.
//
// UnsubscribeInstance is safe for concurrent use.
func (h *Hub) UnsubscribeInstance(s Subscriber, stream, pk string, requestID []byte) bool {
	is := instanceSub{instanceKey{stream, pk}, string(requestID)}
	h.mu.Lock()
	defer h.mu.Unlock()
	ss := h.subs[s]
	if ss == nil {
		return false
	}
	if _, ok := ss.instances[is]; !ok {
		return false
	}
	delete(ss.instances, is)
	h.setStart(stream, startKey{s: s, instance: true, pk: pk, rid: is.requestID}, 0)
	set := h.instances[is.key]
	if ids := set[s]; len(ids) > 1 {
		kept := make([]string, 0, len(ids)-1)
		for _, id := range ids {
			if id != is.requestID {
				kept = append(kept, id)
			}
		}
		set[s] = kept
	} else {
		h.dropInstances(s, is.key)
	}
	h.release(s, ss)
	return true
}

// Remove drops every subscription of s, in time proportional to the number
// of subscriptions s holds. Removing a subscriber without subscriptions is a
// no-op.
//
// Remove is safe for concurrent use. A [Hub.Publish] that routed an event
// before Remove took effect may still deliver that event to s.
func (h *Hub) Remove(s Subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ss := h.subs[s]
	if ss == nil {
		return
	}
	for k := range ss.groups {
		h.dropGroup(s, k)
	}
	for is := range ss.instances {
		// Drops all request ids of s for the key at once; later
		// iterations for the same key find nothing left to drop.
		h.dropInstances(s, is.key)
	}
	for ref, key := range ss.queries {
		h.dropQuery(s, ref, key)
	}
	delete(h.subs, s)
	for k := range ss.groups {
		h.setStart(k.stream, startKey{s: s, action: k.action, pk: k.pk}, 0)
	}
	for is := range ss.instances {
		h.setStart(is.key.stream, startKey{s: s, instance: true, pk: is.key.pk, rid: is.requestID}, 0)
	}
}

// setStart records the offset after which a group or instance
// subscription starts; 0 forgets it. h.mu must be held for writing.
func (h *Hub) setStart(stream string, k startKey, after uint64) {
	starts := h.starts[stream]
	if after == 0 {
		delete(starts, k)
		if starts != nil && len(starts) == 0 {
			delete(h.starts, stream)
		}
		return
	}
	if starts == nil {
		starts = make(map[startKey]uint64)
		h.starts[stream] = starts
	}
	starts[k] = after
}

// Start sets where an existing subscription starts: it receives the
// events of its stream whose Offset is above after (or 0), as if it had
// subscribed with after. It reports whether the subscription exists. A
// subscription that resumes is subscribed [Held], sent its replay (events
// with [Event.Only] set), then started where the replay ended.
//
// Start is safe for concurrent use.
func (h *Hub) Start(stream string, sub Subscription, after uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	ss := h.subs[sub.S]
	if ss == nil {
		return false
	}
	switch sub.Kind {
	case Group:
		if _, ok := ss.groups[groupKey{stream, sub.Action, sub.PK}]; !ok {
			return false
		}
		h.setStart(stream, startKey{s: sub.S, action: sub.Action, pk: sub.PK}, after)
	case Instance:
		if _, ok := ss.instances[instanceSub{instanceKey{stream, sub.PK}, sub.RequestID}]; !ok {
			return false
		}
		h.setStart(stream, startKey{s: sub.S, instance: true, pk: sub.PK, rid: sub.RequestID}, after)
	case Query:
		key, ok := ss.queries[queryRef{stream, sub.RequestID}]
		if !ok {
			return false
		}
		c := h.queries.cohorts[[2]string{stream, key}]
		subs := c.subs[sub.S]
		started := make([]querySub, len(subs))
		for i, q := range subs {
			if q.id == sub.RequestID {
				q.from = after
			}
			started[i] = q
		}
		c.subs[sub.S] = started // copy-on-write, see cohort.subs
	}
	return true
}

// Passed forgets the starts of stream's group and instance subscriptions
// that lie below offset, once an event at offset has been published: no
// later event can be at or below them. It takes the hub's lock for writing
// only when there are such starts.
//
// Passed is safe for concurrent use.
func (h *Hub) Passed(stream string, offset uint64) {
	h.mu.RLock()
	n := len(h.starts[stream])
	h.mu.RUnlock()
	if n == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	starts := h.starts[stream]
	for k, after := range starts {
		if after < offset {
			delete(starts, k)
		}
	}
	if len(starts) == 0 {
		delete(h.starts, stream)
	}
}

// Count returns how many subscriptions s holds, group and instance ones
// together.
//
// Count is safe for concurrent use.
func (h *Hub) Count(s Subscriber) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if ss := h.subs[s]; ss != nil {
		return ss.count()
	}
	return 0
}

// dropGroup removes s from the group index entry k, deleting the entry when
// it becomes empty. h.mu must be held for writing.
func (h *Hub) dropGroup(s Subscriber, k groupKey) {
	set, ok := h.groups[k]
	if !ok {
		return
	}
	delete(set, s)
	if len(set) == 0 {
		delete(h.groups, k)
		h.keyDropped(k.stream)
	}
}

// dropInstances removes all request ids of s from the instance index entry
// k, deleting the entry when it becomes empty. h.mu must be held for writing.
func (h *Hub) dropInstances(s Subscriber, k instanceKey) {
	set, ok := h.instances[k]
	if !ok {
		return
	}
	delete(set, s)
	if len(set) == 0 {
		delete(h.instances, k)
		h.keyDropped(k.stream)
	}
}

// release forgets s once it has no subscriptions left. h.mu must be held
// for writing.
func (h *Hub) release(s Subscriber, ss *subscriptions) {
	if ss.count() == 0 {
		delete(h.subs, s)
	}
}

// SubscribersOf returns every subscriber holding at least one subscription
// on stream. It scans the whole index, so it is meant for rare events (a
// stream-wide resync), never for routing.
//
// SubscribersOf is safe for concurrent use.
func (h *Hub) SubscribersOf(stream string) []Subscriber {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var out []Subscriber
	for s, ss := range h.subs {
		if ss.on(stream) {
			out = append(out, s)
		}
	}
	return out
}

func (ss *subscriptions) on(stream string) bool {
	for k := range ss.groups {
		if k.stream == stream {
			return true
		}
	}
	for k := range ss.instances {
		if k.key.stream == stream {
			return true
		}
	}
	for k := range ss.queries {
		if k.stream == stream {
			return true
		}
	}
	return false
}
