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
	k := groupKey{stream, action, pk}
	h.mu.Lock()
	defer h.mu.Unlock()
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
	is := instanceSub{instanceKey{stream, pk}, string(requestID)}
	h.mu.Lock()
	defer h.mu.Unlock()
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
