package fanout_test

// This file tests the Hub (hub.go, index.go): group and instance routing,
// subscriptions and unsubscriptions, Remove leaving nothing behind, and
// Allow.

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/channelsapi/channelsapi/internal/fanout"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// recorder is a Subscriber that accepts and records every frame.
type recorder struct {
	mu     sync.Mutex
	frames []string
}

func (r *recorder) Deliver(frame []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.frames = append(r.frames, string(frame))
	return true
}

func (r *recorder) Frames() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.frames...)
}

// refuser is a Subscriber whose queue is always full.
type refuser struct {
	calls atomic.Int64
}

func (r *refuser) Deliver([]byte) bool {
	r.calls.Add(1)
	return false
}

// counter is a Subscriber that only counts frames.
type counter struct {
	calls atomic.Int64
}

func (c *counter) Deliver([]byte) bool {
	c.calls.Add(1)
	return true
}

var (
	groupFrame     = []byte(`{"stream":"questions","payload":{"action":"update"}}`)
	instancePrefix = []byte(`{"payload":{"request_id":`)
	instanceSuffix = []byte(`}}`)
)

// event returns an event of the questions stream carrying both a group and
// an instance frame.
func event(action, pk string) *fanout.Event {
	return &fanout.Event{
		Stream:         "questions",
		Action:         action,
		PK:             pk,
		Group:          groupFrame,
		InstancePrefix: instancePrefix,
		InstanceSuffix: instanceSuffix,
	}
}

func instanceFrame(requestID string) string {
	return string(instancePrefix) + requestID + string(instanceSuffix)
}

func TestGroupRouting(t *testing.T) {
	type sub struct{ stream, action, pk string }
	tests := []struct {
		name string
		subs []sub
		ev   *fanout.Event
		want int
	}{
		{"all matches pk", []sub{{"questions", "update", ""}}, event("update", "1"), 1},
		{"all matches other pk", []sub{{"questions", "update", ""}}, event("update", "2"), 1},
		{"pk matches own pk", []sub{{"questions", "update", "1"}}, event("update", "1"), 1},
		{"pk ignores other pk", []sub{{"questions", "update", "1"}}, event("update", "2"), 0},
		{"all and pk deduplicated", []sub{{"questions", "update", ""}, {"questions", "update", "1"}}, event("update", "1"), 1},
		{"all and other pk", []sub{{"questions", "update", ""}, {"questions", "update", "2"}}, event("update", "1"), 1},
		{"other action", []sub{{"questions", "create", ""}, {"questions", "delete", "1"}}, event("update", "1"), 0},
		{"other stream", []sub{{"answers", "update", ""}, {"answers", "update", "1"}}, event("update", "1"), 0},
		{"several actions", []sub{{"questions", "create", ""}, {"questions", "update", ""}, {"questions", "delete", ""}}, event("delete", "1"), 1},
		{"create reaches group", []sub{{"questions", "create", ""}}, event("create", "3"), 1},
		{"nil group frame", []sub{{"questions", "update", ""}}, &fanout.Event{Stream: "questions", Action: "update", PK: "1"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := fanout.New()
			r := &recorder{}
			for _, s := range tt.subs {
				require.True(t, h.Subscribe(r, s.stream, s.action, s.pk))
			}
			delivered, refused := h.Publish(tt.ev)
			assert.Equal(t, tt.want, delivered)
			assert.Zero(t, refused)
			frames := r.Frames()
			require.Len(t, frames, tt.want)
			for _, f := range frames {
				assert.Equal(t, string(groupFrame), f)
			}
		})
	}
}

func TestGroupManySubscribers(t *testing.T) {
	h := fanout.New()
	all, one, other := &recorder{}, &recorder{}, &recorder{}
	h.Subscribe(all, "questions", "update", "")
	h.Subscribe(one, "questions", "update", "1")
	h.Subscribe(other, "questions", "update", "2")

	delivered, refused := h.Publish(event("update", "1"))
	assert.Equal(t, 2, delivered)
	assert.Zero(t, refused)
	assert.Len(t, all.Frames(), 1)
	assert.Len(t, one.Frames(), 1)
	assert.Empty(t, other.Frames())
}

func TestInstanceRouting(t *testing.T) {
	tests := []struct {
		name string
		ev   *fanout.Event
		want []string
	}{
		{"update", event("update", "1"), []string{instanceFrame(`"r9"`), instanceFrame(`7`)}},
		{"delete", event("delete", "1"), []string{instanceFrame(`"r9"`), instanceFrame(`7`)}},
		{"create", event("create", "1"), nil},
		{"other pk", event("update", "2"), nil},
		{"other stream", &fanout.Event{Stream: "answers", Action: "update", PK: "1", InstancePrefix: instancePrefix, InstanceSuffix: instanceSuffix}, nil},
		{"nil prefix", &fanout.Event{Stream: "questions", Action: "update", PK: "1", Group: groupFrame}, nil},
		{"no suffix", &fanout.Event{Stream: "questions", Action: "update", PK: "1", InstancePrefix: []byte(`id=`)}, []string{`id="r9"`, `id=7`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := fanout.New()
			r := &recorder{}
			require.True(t, h.SubscribeInstance(r, "questions", "1", []byte(`"r9"`)))
			require.True(t, h.SubscribeInstance(r, "questions", "1", []byte(`7`)))
			delivered, refused := h.Publish(tt.ev)
			assert.Equal(t, len(tt.want), delivered)
			assert.Zero(t, refused)
			assert.ElementsMatch(t, tt.want, r.Frames())
		})
	}
}

func TestInstanceFrameIsExact(t *testing.T) {
	h := fanout.New()
	r := &recorder{}
	h.SubscribeInstance(r, "questions", "1", []byte(`"r9"`))
	h.Publish(event("update", "1"))
	assert.Equal(t, []string{`{"payload":{"request_id":"r9"}}`}, r.Frames())
}

func TestGroupAndInstance(t *testing.T) {
	h := fanout.New()
	r := &recorder{}
	h.Subscribe(r, "questions", "update", "")
	h.Subscribe(r, "questions", "update", "1")
	h.SubscribeInstance(r, "questions", "1", []byte(`"a"`))
	h.SubscribeInstance(r, "questions", "1", []byte(`"b"`))

	delivered, refused := h.Publish(event("update", "1"))
	assert.Equal(t, 3, delivered)
	assert.Zero(t, refused)
	assert.ElementsMatch(t, []string{string(groupFrame), instanceFrame(`"a"`), instanceFrame(`"b"`)}, r.Frames())

	// Only the group subscription matches a create.
	r2 := &recorder{}
	h.Subscribe(r2, "questions", "create", "")
	h.SubscribeInstance(r2, "questions", "1", []byte(`"c"`))
	delivered, _ = h.Publish(event("create", "1"))
	assert.Equal(t, 1, delivered)
	assert.Equal(t, []string{string(groupFrame)}, r2.Frames())
}

func TestSubscribeIdempotent(t *testing.T) {
	h := fanout.New()
	r := &recorder{}

	assert.True(t, h.Subscribe(r, "questions", "update", "1"))
	assert.False(t, h.Subscribe(r, "questions", "update", "1"))
	assert.True(t, h.SubscribeInstance(r, "questions", "1", []byte(`"r9"`)))
	assert.False(t, h.SubscribeInstance(r, "questions", "1", []byte(`"r9"`)))
	assert.Equal(t, 2, h.Count(r))

	delivered, _ := h.Publish(event("update", "1"))
	assert.Equal(t, 2, delivered)
	assert.ElementsMatch(t, []string{string(groupFrame), instanceFrame(`"r9"`)}, r.Frames())
}

func TestUnsubscribe(t *testing.T) {
	h := fanout.New()
	r := &recorder{}

	assert.False(t, h.Unsubscribe(r, "questions", "update", ""), "unknown subscriber")
	assert.False(t, h.UnsubscribeInstance(r, "questions", "1", []byte(`1`)), "unknown subscriber")

	h.Subscribe(r, "questions", "update", "")
	h.SubscribeInstance(r, "questions", "1", []byte(`1`))
	h.SubscribeInstance(r, "questions", "1", []byte(`2`))
	assert.False(t, h.Unsubscribe(r, "questions", "update", "1"), "absent pk")
	assert.False(t, h.Unsubscribe(r, "questions", "delete", ""), "absent action")
	assert.False(t, h.UnsubscribeInstance(r, "questions", "1", []byte(`3`)), "absent request id")
	assert.False(t, h.UnsubscribeInstance(r, "questions", "2", []byte(`1`)), "absent pk")
	assert.Equal(t, 3, h.Count(r))

	assert.True(t, h.UnsubscribeInstance(r, "questions", "1", []byte(`1`)))
	assert.False(t, h.UnsubscribeInstance(r, "questions", "1", []byte(`1`)))
	h.Publish(event("update", "1"))
	assert.ElementsMatch(t, []string{string(groupFrame), instanceFrame(`2`)}, r.Frames())

	assert.True(t, h.Unsubscribe(r, "questions", "update", ""))
	assert.False(t, h.Unsubscribe(r, "questions", "update", ""))
	assert.True(t, h.UnsubscribeInstance(r, "questions", "1", []byte(`2`)))
	assert.Zero(t, h.Count(r))
	keys, subs := h.Stats()
	assert.Zero(t, keys)
	assert.Zero(t, subs)

	delivered, _ := h.Publish(event("update", "1"))
	assert.Zero(t, delivered)
}

func TestRemoveLeavesNothing(t *testing.T) {
	const n = 2000
	h := fanout.New()
	subs := make([]*recorder, n)
	for i := range subs {
		subs[i] = &recorder{}
	}
	for cycle := range 3 {
		for i, s := range subs {
			pk := strconv.Itoa(i % 50)
			id := []byte(strconv.Itoa(i))
			h.Subscribe(s, "questions", "update", "")
			h.Subscribe(s, "questions", "update", pk)
			h.Subscribe(s, "answers", "delete", pk)
			h.SubscribeInstance(s, "questions", pk, id)
			h.SubscribeInstance(s, "questions", pk, []byte(`"x"`))
			h.SubscribeInstance(s, "answers", pk, id)
			if i%3 == cycle {
				h.Unsubscribe(s, "questions", "update", pk)
				h.UnsubscribeInstance(s, "questions", pk, id)
			}
		}
		keys, count := h.Stats()
		require.Equal(t, n, count)
		require.Equal(t, 1+50+50+50+50, keys)

		for i, s := range subs {
			if i%2 == 0 {
				h.Remove(s)
				continue
			}
			// Unsubscribing everything one by one is as good as Remove.
			pk := strconv.Itoa(i % 50)
			id := []byte(strconv.Itoa(i))
			h.Unsubscribe(s, "questions", "update", "")
			h.Unsubscribe(s, "questions", "update", pk)
			h.Unsubscribe(s, "answers", "delete", pk)
			h.UnsubscribeInstance(s, "questions", pk, id)
			h.UnsubscribeInstance(s, "questions", pk, []byte(`"x"`))
			h.UnsubscribeInstance(s, "answers", pk, id)
			require.Zero(t, h.Count(s))
		}
		keys, count = h.Stats()
		require.Zero(t, keys, "cycle %d", cycle)
		require.Zero(t, count, "cycle %d", cycle)
	}

	h.Remove(subs[0]) // removing twice is a no-op
	delivered, _ := h.Publish(event("update", "1"))
	assert.Zero(t, delivered)
	for _, s := range subs {
		assert.Empty(t, s.Frames())
	}
}

func TestAllow(t *testing.T) {
	h := fanout.New()
	allowed, denied := &recorder{}, &recorder{}
	for _, r := range []*recorder{allowed, denied} {
		h.Subscribe(r, "questions", "update", "")
		h.Subscribe(r, "questions", "update", "1")
		h.SubscribeInstance(r, "questions", "1", []byte(`1`))
		h.SubscribeInstance(r, "questions", "1", []byte(`2`))
	}
	onlyInstance := &recorder{}
	h.SubscribeInstance(onlyInstance, "questions", "1", []byte(`3`))

	asked := map[fanout.Subscriber]int{}
	ev := event("update", "1")
	ev.Allow = func(s fanout.Subscriber) bool {
		asked[s]++ // Publish calls Allow from this goroutine
		return s != denied
	}
	delivered, refused := h.Publish(ev)
	assert.Equal(t, 4, delivered)
	assert.Zero(t, refused)
	assert.Equal(t, map[fanout.Subscriber]int{allowed: 1, denied: 1, onlyInstance: 1}, asked,
		"Allow is asked once per matching subscriber")
	assert.ElementsMatch(t, []string{string(groupFrame), instanceFrame(`1`), instanceFrame(`2`)}, allowed.Frames())
	assert.Empty(t, denied.Frames())
	assert.Equal(t, []string{instanceFrame(`3`)}, onlyInstance.Frames())
}

func TestRefused(t *testing.T) {
	h := fanout.New()
	full, ok := &refuser{}, &recorder{}
	h.Subscribe(full, "questions", "update", "")
	h.SubscribeInstance(full, "questions", "1", []byte(`1`))
	h.Subscribe(ok, "questions", "update", "")

	delivered, refused := h.Publish(event("update", "1"))
	assert.Equal(t, 3, delivered)
	assert.Equal(t, 2, refused)
	assert.EqualValues(t, 2, full.calls.Load())
	assert.Len(t, ok.Frames(), 1)
}

// closer removes itself from the hub when it refuses a frame, as a
// connection whose queue is full would.
type closer struct {
	hub   *fanout.Hub
	calls int
}

func (c *closer) Deliver([]byte) bool {
	c.calls++
	c.hub.Remove(c)
	return false
}

func TestRemoveFromDeliver(t *testing.T) {
	h := fanout.New()
	c := &closer{hub: h}
	h.Subscribe(c, "questions", "update", "")
	h.SubscribeInstance(c, "questions", "1", []byte(`1`))

	delivered, refused := h.Publish(event("update", "1"))
	assert.Equal(t, 2, delivered, "frames routed before Remove are still delivered")
	assert.Equal(t, 2, refused)
	assert.Zero(t, h.Count(c))

	delivered, _ = h.Publish(event("update", "1"))
	assert.Zero(t, delivered)
	assert.Equal(t, 2, c.calls)
}

// TestRoutingTouchesOnlyMatching checks that an event reaches neither the
// Deliver nor the Allow of subscribers it does not match.
func TestRoutingTouchesOnlyMatching(t *testing.T) {
	const n = 100_000
	h := fanout.New()
	others := make([]counter, n)
	for i := range others {
		pk := strconv.Itoa(i + 1)
		h.Subscribe(&others[i], "questions", "update", pk)
		h.Subscribe(&others[i], "questions", "create", "")
		h.Subscribe(&others[i], "answers", "update", "")
		h.SubscribeInstance(&others[i], "questions", pk, []byte(`1`))
	}
	match := &counter{}
	h.Subscribe(match, "questions", "update", "0")

	var asked int
	ev := event("update", "0")
	ev.Allow = func(fanout.Subscriber) bool {
		asked++
		return true
	}
	delivered, refused := h.Publish(ev)
	assert.Equal(t, 1, delivered)
	assert.Zero(t, refused)
	assert.Equal(t, 1, asked)
	assert.EqualValues(t, 1, match.calls.Load())
	var touched int64
	for i := range others {
		touched += others[i].calls.Load()
	}
	assert.Zero(t, touched)
}

func TestConcurrentPublishSubscribeRemove(t *testing.T) {
	const (
		workers    = 4
		iterations = 300
		pks        = 10
	)
	h := fanout.New()

	// Long-lived subscribers see every update exactly once.
	stable := make([]*counter, 3)
	for i := range stable {
		stable[i] = &counter{}
		h.Subscribe(stable[i], "questions", "update", "")
		h.Subscribe(stable[i], "questions", "update", strconv.Itoa(i))
	}

	var wg sync.WaitGroup
	for w := range workers {
		// Churn: subscribers come, receive, and go.
		wg.Go(func() {
			for i := range iterations {
				var s fanout.Subscriber = &recorder{}
				if i%4 == 0 {
					s = &refuser{}
				}
				pk := strconv.Itoa(i % pks)
				id := []byte(strconv.Itoa(w*iterations + i))
				h.Subscribe(s, "questions", "update", "")
				h.Subscribe(s, "questions", "update", pk)
				h.SubscribeInstance(s, "questions", pk, id)
				h.Publish(event("update", pk))
				if i%2 == 0 {
					h.UnsubscribeInstance(s, "questions", pk, id)
					h.Unsubscribe(s, "questions", "update", pk)
				}
				h.Count(s)
				h.Remove(s)
			}
		})
		// Publishers.
		wg.Go(func() {
			for i := range iterations {
				h.Publish(event("update", strconv.Itoa(i%pks)))
				h.Stats()
			}
		})
	}
	wg.Wait()

	for _, s := range stable {
		assert.EqualValues(t, 2*workers*iterations, s.calls.Load())
		h.Remove(s)
	}
	keys, subs := h.Stats()
	assert.Zero(t, keys)
	assert.Zero(t, subs)
}

func TestMatchingAndSubscribersOf(t *testing.T) {
	h := fanout.New()
	all, one, inst, other := &recorder{}, &recorder{}, &recorder{}, &recorder{}
	h.Subscribe(all, "q", "update", "")
	h.Subscribe(one, "q", "update", "1")
	h.SubscribeInstance(inst, "q", "1", []byte(`"r"`))
	h.Subscribe(other, "notes", "update", "")

	assert.ElementsMatch(t, []fanout.Subscriber{all, one, inst}, h.Matching(&fanout.Event{Stream: "q", Action: "update", PK: "1"}))
	assert.ElementsMatch(t, []fanout.Subscriber{all}, h.Matching(&fanout.Event{Stream: "q", Action: "update", PK: "2"}))
	assert.Empty(t, all.Frames())
	assert.ElementsMatch(t, []fanout.Subscriber{all, one, inst}, h.SubscribersOf("q"))
	assert.ElementsMatch(t, []fanout.Subscriber{other}, h.SubscribersOf("notes"))
}
