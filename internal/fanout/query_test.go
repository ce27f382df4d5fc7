package fanout_test

// This file tests the live queries of the Hub (query.go): enter, change and
// leave chosen from the row's states, routing through the anchor index,
// cohorts of equal filters, replacing and removing live queries, interest,
// Offset, Visible and Matching.

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/channelsapi/channelsapi/internal/fanout"
)

// row is a State: the canonical text of each field's value; a field that
// is absent is NULL.
type row map[int]string

func (r row) AnchorKey(field int) (string, bool) {
	v, ok := r[field]
	return v, ok
}

// calls counts Match calls; the hub may call Match from concurrent
// Publishes.
type calls struct{ n atomic.Int64 }

func (c *calls) add() {
	if c != nil {
		c.n.Add(1)
	}
}

// equal is a Matcher selecting the rows whose field is one of keys. Its
// anchor is that condition, unless unanchored is set: then it is evaluated
// on every event, as a filter without an equality would be.
type equal struct {
	field      int
	keys       []string
	unanchored bool
	calls      *calls
}

func (m *equal) Match(s fanout.State) bool {
	m.calls.add()
	v, ok := s.AnchorKey(m.field)
	if !ok {
		return false
	}
	for _, k := range m.keys {
		if v == k {
			return true
		}
	}
	return false
}

func (m *equal) Anchor() (int, []string, bool) {
	if m.unanchored {
		return 0, nil, false
	}
	return m.field, m.keys, true
}

// between is an unanchored Matcher selecting the rows whose field, an
// integer, is in [lo, hi].
type between struct {
	field  int
	lo, hi int
	calls  *calls
}

func (m *between) Match(s fanout.State) bool {
	m.calls.add()
	v, ok := s.AnchorKey(m.field)
	if !ok {
		return false
	}
	n, err := strconv.Atoi(v)
	return err == nil && m.lo <= n && n <= m.hi
}

func (*between) Anchor() (int, []string, bool) { return 0, nil, false }

// eq returns the anchored filter field == key, with its key text.
func eq(field int, key string, c *calls) (string, fanout.Matcher) {
	return fmt.Sprintf("%d=%s", field, key), &equal{field: field, keys: []string{key}, calls: c}
}

// Frames of live-query events: E, C or L, then the request id in brackets.
var queryFrames = [3]fanout.QueryFrame{
	fanout.Enter:  {Prefix: []byte("E["), Suffix: []byte("]")},
	fanout.Change: {Prefix: []byte("C["), Suffix: []byte("]")},
	fanout.Leave:  {Prefix: []byte("L["), Suffix: []byte("]")},
}

func enter(id string) string  { return "E[" + id + "]" }
func change(id string) string { return "C[" + id + "]" }
func leave(id string) string  { return "L[" + id + "]" }

// queryEvent returns an event of the questions stream carrying the frames
// the library gives an action: a create only Enter, a delete only Leave,
// an update all three. A nil before or after is a nil State.
func queryEvent(action string, before, after row) *fanout.Event {
	ev := &fanout.Event{Stream: "questions", Action: action, PK: "1"}
	if before != nil {
		ev.Before = before
	}
	if after != nil {
		ev.After = after
	}
	switch action {
	case "create":
		ev.Query[fanout.Enter] = queryFrames[fanout.Enter]
	case "delete":
		ev.Query[fanout.Leave] = queryFrames[fanout.Leave]
	default:
		ev.Query = queryFrames
	}
	return ev
}

func TestQueryEnterChangeLeave(t *testing.T) {
	a, b := row{0: "a"}, row{0: "b"}
	tests := []struct {
		name          string
		action        string
		before, after row
		want          []string
	}{
		{"create into the set", "create", nil, a, []string{enter(`"q"`)}},
		{"create outside", "create", nil, b, nil},
		{"update within", "update", a, a, []string{change(`"q"`)}},
		{"update into", "update", b, a, []string{enter(`"q"`)}},
		{"update out of", "update", a, b, []string{leave(`"q"`)}},
		{"update outside", "update", b, b, nil},
		{"delete from the set", "delete", a, nil, []string{leave(`"q"`)}},
		{"delete outside", "delete", b, nil, nil},
		{"update, before unknown, matches after", "update", nil, a, []string{change(`"q"`)}},
		{"update, before unknown, does not match after", "update", nil, b, []string{leave(`"q"`)}},
		{"null field is outside", "update", row{}, row{1: "a"}, nil},
		{"into from null", "update", row{}, a, []string{enter(`"q"`)}},
	}
	for _, anchored := range []bool{true, false} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("anchored=%v/%s", anchored, tt.name), func(t *testing.T) {
				h := fanout.New()
				r := &recorder{}
				h.SubscribeQuery(r, "questions", []byte(`"q"`), "0=a", &equal{keys: []string{"a"}, unanchored: !anchored}, 0)
				delivered, refused := h.Publish(queryEvent(tt.action, tt.before, tt.after))
				assert.Equal(t, len(tt.want), delivered)
				assert.Zero(t, refused)
				assert.Equal(t, tt.want, r.Frames())
			})
		}
	}
}

// TestQueryMissingFrame checks that a kind of frame the event does not
// carry is not sent, and that an event without live-query frames reaches
// no live query.
func TestQueryMissingFrame(t *testing.T) {
	h := fanout.New()
	r := &recorder{}
	h.SubscribeQuery(r, "questions", []byte(`1`), "0=a", &equal{keys: []string{"a"}}, 0)

	ev := queryEvent("update", row{0: "a"}, row{0: "b"})
	ev.Query[fanout.Leave] = fanout.QueryFrame{}
	delivered, _ := h.Publish(ev)
	assert.Zero(t, delivered, "no Leave frame")

	ev = queryEvent("update", row{0: "a"}, row{0: "a"})
	ev.Query = [3]fanout.QueryFrame{}
	ev.Group = groupFrame
	delivered, _ = h.Publish(ev)
	assert.Zero(t, delivered, "no live-query frame at all")

	ev = queryEvent("update", row{0: "b"}, row{0: "a"})
	ev.Query[fanout.Enter].Suffix = nil
	h.Publish(ev)
	assert.Equal(t, []string{"E[1"}, r.Frames(), "a nil suffix is empty")
}

// TestQueryAnchoredRouting checks that an event evaluates the filters of
// only the cohorts anchored on its row's values, before and after, and
// those without an anchor.
func TestQueryAnchoredRouting(t *testing.T) {
	const n = 1000
	h := fanout.New()
	byField0 := make([]calls, n) // field 0 == i
	subs0 := make([]recorder, n)
	for i := range n {
		key, m := eq(0, strconv.Itoa(i), &byField0[i])
		h.SubscribeQuery(&subs0[i], "questions", []byte(`1`), key, m, 0)
	}
	var onField1, onIn, unanchored, otherStream calls
	field1, in, ranged, other := &recorder{}, &recorder{}, &recorder{}, &recorder{}
	for i := range 100 { // field 1 == "x0".."x99": none of the events' values
		key, m := eq(1, "x"+strconv.Itoa(i), &onField1)
		h.SubscribeQuery(field1, "questions", []byte(strconv.Itoa(i)), key, m, 0)
	}
	h.SubscribeQuery(in, "questions", []byte(`"in"`), "0 in 7 8", &equal{keys: []string{"7", "8"}, calls: &onIn}, 0)
	h.SubscribeQuery(ranged, "questions", []byte(`"range"`), "0 in [6, 9]", &between{lo: 6, hi: 9, calls: &unanchored}, 0)
	h.SubscribeQuery(other, "answers", []byte(`"other"`), "0 in [0, 999]", &between{lo: 0, hi: 999, calls: &otherStream}, 0)
	touched := func() map[int]int64 {
		out := map[int]int64{}
		for i := range byField0 {
			if c := byField0[i].n.Swap(0); c > 0 {
				out[i] = c
			}
		}
		return out
	}

	// An update from 5 to 7: the cohorts of 5 and 7 (each state matched
	// once), the in cohort (found by 7) and the unanchored one.
	delivered, _ := h.Publish(queryEvent("update", row{0: "5", 1: "y"}, row{0: "7", 1: "y"}))
	assert.Equal(t, map[int]int64{5: 2, 7: 2}, touched())
	assert.EqualValues(t, 2, onIn.n.Swap(0))
	assert.EqualValues(t, 2, unanchored.n.Swap(0), "an unanchored cohort is evaluated on every event")
	assert.Zero(t, onField1.n.Load(), "no cohort of field 1 has the value y")
	assert.Zero(t, otherStream.n.Load(), "another stream's cohorts are not evaluated")
	assert.Equal(t, 4, delivered)
	assert.Equal(t, []string{leave(`1`)}, subs0[5].Frames())
	assert.Equal(t, []string{enter(`1`)}, subs0[7].Frames())
	assert.Equal(t, []string{enter(`"in"`)}, in.Frames())
	assert.Equal(t, []string{enter(`"range"`)}, ranged.Frames())
	for i := range subs0 {
		if i != 5 && i != 7 {
			require.Empty(t, subs0[i].Frames(), "subscriber %d", i)
		}
	}

	// A create has no state before: only the cohort of its value after.
	delivered, _ = h.Publish(queryEvent("create", nil, row{0: "42", 1: "x3"}))
	assert.Equal(t, map[int]int64{42: 1}, touched())
	assert.EqualValues(t, 1, onField1.n.Swap(0), "the cohort of field 1 == x3")
	assert.EqualValues(t, 1, unanchored.n.Swap(0))
	assert.Zero(t, onIn.n.Swap(0))
	assert.Equal(t, 2, delivered, "field 0 == 42 and field 1 == x3")

	// A delete has no state after.
	delivered, _ = h.Publish(queryEvent("delete", row{0: "8"}, nil))
	assert.Equal(t, map[int]int64{8: 1}, touched())
	assert.EqualValues(t, 1, onIn.n.Swap(0))
	assert.EqualValues(t, 1, unanchored.n.Swap(0))
	assert.Equal(t, 3, delivered)
	assert.Equal(t, []string{leave(`1`)}, subs0[8].Frames())
	assert.Equal(t, []string{enter(`"in"`), leave(`"in"`)}, in.Frames())

	// A NULL value is in no anchored cohort.
	delivered, _ = h.Publish(queryEvent("update", row{}, row{}))
	assert.Empty(t, touched())
	assert.Zero(t, onIn.n.Swap(0))
	assert.EqualValues(t, 2, unanchored.n.Swap(0))
	assert.Zero(t, delivered)

	// An update without the row before may have left any cohort of the
	// anchor fields: they are all evaluated.
	delivered, _ = h.Publish(queryEvent("update", nil, row{0: "3"}))
	assert.Len(t, touched(), n)
	assert.EqualValues(t, 100, onField1.n.Swap(0))
	assert.EqualValues(t, 1, onIn.n.Swap(0))
	assert.Equal(t, n+100+1+1, delivered, "a change for 3, a leave for every other cohort of fields 0 and 1, the in and the range one")
	assert.Equal(t, []string{change(`1`)}, subs0[3].Frames())
}

// TestQueryCohorts checks that live queries with equal keys share one
// cohort, whose filter is evaluated once per state and event however many
// subscriptions it holds.
func TestQueryCohorts(t *testing.T) {
	const n = 50
	h := fanout.New()
	var first, later calls
	subs := make([]recorder, n)
	for i := range subs {
		c := &later
		if i == 0 {
			c = &first
		}
		key, m := eq(0, "a", c)
		assert.True(t, h.SubscribeQuery(&subs[i], "questions", []byte(`"a"`), key, m, 0))
	}
	// The same subscriber, two request ids, one filter.
	h.SubscribeQuery(&subs[0], "questions", []byte(`"again"`), "0=a", &equal{keys: []string{"a"}, calls: &later}, 0)
	var otherCalls calls
	other := &recorder{}
	key, m := eq(0, "b", &otherCalls)
	h.SubscribeQuery(other, "questions", []byte(`"b"`), key, m, 0)
	// Another stream with the same key is another cohort.
	h.SubscribeQuery(other, "answers", []byte(`"b"`), "0=a", &equal{keys: []string{"a"}}, 0)

	keys, count := h.Stats()
	assert.Equal(t, 3, keys, "one cohort per stream and key")
	assert.Equal(t, n+1, count)
	assert.Equal(t, 2, h.Count(&subs[0]))

	delivered, refused := h.Publish(queryEvent("update", row{0: "a"}, row{0: "a"}))
	assert.Equal(t, n+1, delivered)
	assert.Zero(t, refused)
	assert.EqualValues(t, 2, first.n.Load(), "the cohort's filter is the first subscription's, asked once for each state")
	assert.Zero(t, later.n.Load(), "the matchers of later subscriptions to the cohort are not used")
	assert.Zero(t, otherCalls.n.Load())
	assert.ElementsMatch(t, []string{change(`"a"`), change(`"again"`)}, subs[0].Frames())
	for i := 1; i < n; i++ {
		assert.Equal(t, []string{change(`"a"`)}, subs[i].Frames())
	}
	assert.Empty(t, other.Frames())

	// The cohort outlives its first subscriber.
	h.Remove(&subs[0])
	h.Publish(queryEvent("update", row{0: "a"}, row{0: "b"}))
	assert.EqualValues(t, 4, first.n.Load())
	assert.Equal(t, []string{change(`"a"`), leave(`"a"`)}, subs[n-1].Frames())
	assert.Equal(t, []string{enter(`"b"`)}, other.Frames())
	keys, _ = h.Stats()
	assert.Equal(t, 3, keys)
}

func TestQueryReplace(t *testing.T) {
	h := fanout.New()
	r := &recorder{}
	var old calls
	key, m := eq(0, "a", &old)
	assert.True(t, h.SubscribeQuery(r, "questions", []byte(`"q"`), key, m, 0))
	key, m = eq(0, "b", nil)
	assert.False(t, h.SubscribeQuery(r, "questions", []byte(`"q"`), key, m, 0), "the same request id replaces")
	assert.Equal(t, 1, h.Count(r))
	keys, _ := h.Stats()
	assert.Equal(t, 1, keys, "the old cohort is gone with its last subscription")

	h.Publish(queryEvent("create", nil, row{0: "a"}))
	h.Publish(queryEvent("create", nil, row{0: "b"}))
	assert.Equal(t, []string{enter(`"q"`)}, r.Frames())
	assert.Zero(t, old.n.Load())

	// Replacing with the same filter keeps one subscription, with the new
	// from.
	assert.False(t, h.SubscribeQuery(r, "questions", []byte(`"q"`), key, m, 10))
	assert.Equal(t, 1, h.Count(r))
	ev := queryEvent("create", nil, row{0: "b"})
	ev.Offset = 10
	delivered, _ := h.Publish(ev)
	assert.Zero(t, delivered)
	ev.Offset = 11
	delivered, _ = h.Publish(ev)
	assert.Equal(t, 1, delivered, "one frame: the subscription was not doubled")

	// The same request id on another stream is another live query.
	assert.True(t, h.SubscribeQuery(r, "answers", []byte(`"q"`), key, m, 0))
	assert.Equal(t, 2, h.Count(r))
}

func TestUnsubscribeQuery(t *testing.T) {
	h := fanout.New()
	r := &recorder{}
	assert.False(t, h.UnsubscribeQuery(r, "questions", []byte(`"q"`)), "unknown subscriber")

	key, m := eq(0, "a", nil)
	h.SubscribeQuery(r, "questions", []byte(`"q"`), key, m, 0)
	h.SubscribeQuery(r, "questions", []byte(`"p"`), key, m, 0)
	h.Subscribe(r, "questions", "update", "")
	assert.False(t, h.UnsubscribeQuery(r, "questions", []byte(`"x"`)), "unknown request id")
	assert.False(t, h.UnsubscribeQuery(r, "answers", []byte(`"q"`)), "other stream")
	assert.False(t, h.UnsubscribeQuery(r, "questions", []byte(`q`)), "request ids are compared as JSON text")

	assert.True(t, h.UnsubscribeQuery(r, "questions", []byte(`"q"`)))
	assert.False(t, h.UnsubscribeQuery(r, "questions", []byte(`"q"`)))
	assert.Equal(t, 2, h.Count(r))
	ev := queryEvent("update", row{0: "a"}, row{0: "a"})
	ev.Group = groupFrame
	h.Publish(ev)
	assert.ElementsMatch(t, []string{change(`"p"`), string(groupFrame)}, r.Frames())

	assert.True(t, h.UnsubscribeQuery(r, "questions", []byte(`"p"`)))
	assert.False(t, h.HasQueries("questions"))
	keys, count := h.Stats()
	assert.Equal(t, 1, keys, "the group subscription remains")
	assert.Equal(t, 1, count)
	h.Unsubscribe(r, "questions", "update", "")
	keys, count = h.Stats()
	assert.Zero(t, keys)
	assert.Zero(t, count)
}

// TestQueryRemoveLeavesNothing checks that Remove, and unsubscribing one by
// one, leave an empty index, over several cycles.
func TestQueryRemoveLeavesNothing(t *testing.T) {
	const n = 1000
	h := fanout.New()
	subs := make([]*recorder, n)
	for i := range subs {
		subs[i] = &recorder{}
	}
	ids := [][]byte{[]byte(`"anchored"`), []byte(`"in"`), []byte(`"range"`), []byte(`"shared"`), []byte(`"other stream"`)}
	for cycle := range 3 {
		for i, s := range subs {
			v := strconv.Itoa(i % 50)
			key, m := eq(0, v, nil)
			h.SubscribeQuery(s, "questions", ids[0], key, m, 0)
			h.SubscribeQuery(s, "questions", ids[1], "in "+v, &equal{keys: []string{v, "x"}}, 0)
			h.SubscribeQuery(s, "questions", ids[2], "range "+v, &between{lo: i % 50, hi: 100}, 0)
			h.SubscribeQuery(s, "questions", ids[3], "0=shared", &equal{keys: []string{"shared"}}, 0)
			h.SubscribeQuery(s, "answers", ids[4], key, m, 0)
			h.Subscribe(s, "questions", "update", "")
			h.SubscribeInstance(s, "questions", v, ids[0])
			if i%3 == cycle {
				// A replacement and an unsubscription on the way.
				h.SubscribeQuery(s, "questions", ids[0], "range "+v, &between{lo: i % 50, hi: 100}, 0)
				h.UnsubscribeQuery(s, "questions", ids[3])
			}
		}
		keys, count := h.Stats()
		require.Equal(t, n, count)
		require.Equal(t, 50+50+50+1+50+1+50, keys)
		assert.True(t, h.HasQueries("questions"))
		assert.True(t, h.HasQueries("answers"))

		for i, s := range subs {
			if i%2 == 0 {
				h.Remove(s)
				continue
			}
			for j, id := range ids {
				stream := "questions"
				if j == 4 {
					stream = "answers"
				}
				h.UnsubscribeQuery(s, stream, id)
			}
			h.Unsubscribe(s, "questions", "update", "")
			h.UnsubscribeInstance(s, "questions", strconv.Itoa(i%50), ids[0])
			require.Zero(t, h.Count(s))
		}
		keys, count = h.Stats()
		require.Zero(t, keys, "cycle %d", cycle)
		require.Zero(t, count, "cycle %d", cycle)
		assert.False(t, h.HasQueries("questions"))
		assert.False(t, h.HasQueries("answers"))
		assert.False(t, h.Active("questions"))
		assert.False(t, h.Active("answers"))
	}
	delivered, _ := h.Publish(queryEvent("update", row{0: "1"}, row{0: "shared"}))
	assert.Zero(t, delivered)
	delivered, _ = h.Publish(queryEvent("update", nil, row{0: "1"}))
	assert.Zero(t, delivered)
}

// TestQueryInterest checks that live queries count for Active and
// OnInterest as the other kinds do: a stream is active from its first
// subscription of any kind to its last.
func TestQueryInterest(t *testing.T) {
	h := fanout.New()
	in := recordInterest(t, h)
	a, b := &recorder{}, &recorder{}
	ka, ma := eq(0, "a", nil)
	kb, mb := eq(0, "b", nil)

	h.SubscribeQuery(a, "questions", []byte(`1`), ka, ma, 0)
	assert.True(t, h.Active("questions"))
	assert.True(t, h.HasQueries("questions"))
	h.SubscribeQuery(b, "questions", []byte(`1`), ka, ma, 0) // the same cohort
	h.SubscribeQuery(b, "questions", []byte(`2`), kb, mb, 0) // another cohort
	h.SubscribeQuery(a, "questions", []byte(`3`), "range", &between{hi: 9}, 0)
	h.Subscribe(b, "questions", "update", "")
	assert.Equal(t, []string{"+questions"}, in.told)

	h.Remove(a)
	h.UnsubscribeQuery(b, "questions", []byte(`1`))
	h.UnsubscribeQuery(b, "questions", []byte(`2`))
	assert.Equal(t, []string{"+questions"}, in.told, "the group subscription remains")
	assert.False(t, h.HasQueries("questions"))
	assert.True(t, h.Active("questions"))
	h.Unsubscribe(b, "questions", "update", "")
	assert.Equal(t, []string{"+questions", "-questions"}, in.told)
	assert.False(t, h.Active("questions"))

	h.SubscribeQuery(a, "answers", []byte(`1`), ka, ma, 0)
	h.SubscribeInstance(b, "answers", "1", []byte(`1`))
	h.UnsubscribeInstance(b, "answers", "1", []byte(`1`))
	assert.Equal(t, []string{"+questions", "-questions", "+answers"}, in.told)
	h.UnsubscribeQuery(a, "answers", []byte(`1`))
	assert.Equal(t, []string{"+questions", "-questions", "+answers", "-answers"}, in.told)
	assert.False(t, h.Active("answers"))
	assert.Empty(t, activeStreams(in.active))
}

// TestQueryReplaceKeepsInterest checks that replacing a stream's only live
// query with another filter does not report the stream inactive in
// between: with a broker, that would drop the stream's channel and
// subscribe to it again.
func TestQueryReplaceKeepsInterest(t *testing.T) {
	h := fanout.New()
	var got []string
	h.OnInterest(func(stream string, on bool) { got = append(got, fmt.Sprintf("%s %v", stream, on)) })
	r := &recorder{}
	ka, ma := eq(0, "a", nil)
	kb, mb := eq(0, "b", nil)
	h.SubscribeQuery(r, "questions", []byte(`1`), ka, ma, 0)
	h.SubscribeQuery(r, "questions", []byte(`1`), kb, mb, 0)
	h.SubscribeQuery(r, "questions", []byte(`1`), kb, mb, 5)
	assert.Equal(t, []string{"questions true"}, got)
	h.Remove(r)
	assert.Equal(t, []string{"questions true", "questions false"}, got)
}

func TestQueryOffset(t *testing.T) {
	h := fanout.New()
	early, late := &recorder{}, &recorder{}
	key, m := eq(0, "a", nil)
	h.SubscribeQuery(early, "questions", []byte(`1`), key, m, 0)
	h.SubscribeQuery(late, "questions", []byte(`1`), key, m, 10)
	h.SubscribeQuery(late, "questions", []byte(`2`), key, m, 5)
	for _, seq := range []uint64{4, 5, 6, 10, 11, 0} {
		ev := queryEvent("create", nil, row{0: "a"})
		ev.Offset = seq
		h.Publish(ev)
	}
	assert.Len(t, early.Frames(), 6, "from 0 takes everything")
	assert.Equal(t, []string{
		enter(`2`),             // 6
		enter(`2`),             // 10
		enter(`1`), enter(`2`), // 11
		enter(`1`), enter(`2`), // 0: unknown place, delivered
	}, late.Frames(), "only events after from")
}

// TestQueryVisible checks that a state a subscriber may not see counts as
// outside its sets, for each subscriber and state, and that Allow does not
// apply to live queries.
func TestQueryVisible(t *testing.T) {
	h := fanout.New()
	both, onlyAfter, onlyBefore, neither := &recorder{}, &recorder{}, &recorder{}, &recorder{}
	key, m := eq(0, "a", nil)
	for _, r := range []*recorder{both, onlyAfter, onlyBefore, neither} {
		h.SubscribeQuery(r, "questions", []byte(`1`), key, m, 0)
	}
	var mu sync.Mutex
	asked := map[fanout.Subscriber][]bool{}
	visible := func(s fanout.Subscriber, before bool) bool {
		mu.Lock()
		asked[s] = append(asked[s], before)
		mu.Unlock()
		switch s {
		case both:
			return true
		case onlyAfter:
			return !before
		case onlyBefore:
			return before
		}
		return false
	}
	ev := queryEvent("update", row{0: "a"}, row{0: "a"})
	ev.Visible = visible
	ev.Allow = func(fanout.Subscriber) bool { return false }
	delivered, _ := h.Publish(ev)
	assert.Equal(t, 3, delivered)
	assert.Equal(t, []string{change(`1`)}, both.Frames())
	assert.Equal(t, []string{enter(`1`)}, onlyAfter.Frames(), "it could not see the row before: it enters")
	assert.Equal(t, []string{leave(`1`)}, onlyBefore.Frames(), "it cannot see the row now: it leaves")
	assert.Empty(t, neither.Frames())
	for _, r := range []*recorder{both, onlyAfter, onlyBefore, neither} {
		assert.ElementsMatch(t, []bool{true, false}, asked[r], "each state asked about once")
	}

	// A state outside the set is not asked about.
	clear(asked)
	ev = queryEvent("create", nil, row{0: "b"})
	ev.Visible = visible
	h.Publish(ev)
	assert.Empty(t, asked)
}

func TestQueryRefused(t *testing.T) {
	h := fanout.New()
	full, ok := &refuser{}, &recorder{}
	key, m := eq(0, "a", nil)
	h.SubscribeQuery(full, "questions", []byte(`1`), key, m, 0)
	h.SubscribeQuery(full, "questions", []byte(`2`), key, m, 0)
	h.SubscribeQuery(ok, "questions", []byte(`1`), key, m, 0)
	delivered, refused := h.Publish(queryEvent("create", nil, row{0: "a"}))
	assert.Equal(t, 3, delivered)
	assert.Equal(t, 2, refused)
	assert.EqualValues(t, 2, full.calls.Load())
	assert.Equal(t, []string{enter(`1`)}, ok.Frames())
}

func TestQueryMatching(t *testing.T) {
	h := fanout.New()
	inA, inB, ranged, group, both, outside := &recorder{}, &recorder{}, &recorder{}, &recorder{}, &recorder{}, &recorder{}
	ka, ma := eq(0, "a", nil)
	kb, mb := eq(0, "b", nil)
	kc, mc := eq(0, "c", nil)
	h.SubscribeQuery(inA, "questions", []byte(`1`), ka, ma, 0)
	h.SubscribeQuery(inB, "questions", []byte(`1`), kb, mb, 0)
	h.SubscribeQuery(ranged, "questions", []byte(`1`), "range", &between{lo: 1, hi: 2}, 0)
	h.Subscribe(group, "questions", "update", "")
	h.Subscribe(both, "questions", "update", "")
	h.SubscribeQuery(both, "questions", []byte(`1`), ka, ma, 0)
	h.SubscribeQuery(both, "questions", []byte(`2`), kb, mb, 0)
	h.SubscribeQuery(outside, "questions", []byte(`1`), kc, mc, 0)

	visible := func(fanout.Subscriber, bool) bool {
		t.Error("Matching asked Visible")
		return true
	}
	// Matching needs no frames: it routes as if the event had them.
	ev := &fanout.Event{Stream: "questions", Action: "update", PK: "1", Before: row{0: "a"}, After: row{0: "b"}, Visible: visible}
	assert.ElementsMatch(t, []fanout.Subscriber{inA, inB, group, both}, h.Matching(ev), "each once")
	ev = &fanout.Event{Stream: "questions", Action: "create", PK: "1", After: row{0: "1"}, Visible: visible}
	assert.ElementsMatch(t, []fanout.Subscriber{ranged}, h.Matching(ev))
	ev = &fanout.Event{Stream: "questions", Action: "delete", PK: "1", Before: row{0: "b"}}
	assert.ElementsMatch(t, []fanout.Subscriber{inB, both}, h.Matching(ev))
	for _, r := range []*recorder{inA, inB, ranged, group, both, outside} {
		assert.Empty(t, r.Frames())
	}
}

// TestConcurrentQueries subscribes, replaces, unsubscribes and removes live
// queries while events are published; run it with -race.
func TestConcurrentQueries(t *testing.T) {
	const (
		workers    = 4
		iterations = 300
		values     = 10
	)
	h := fanout.New()

	// Long-lived subscribers see every event on "a" exactly once.
	stable := make([]*counter, 3)
	for i := range stable {
		stable[i] = &counter{}
		key, m := eq(0, "a", nil)
		h.SubscribeQuery(stable[i], "questions", []byte(`"stable"`), key, m, 0)
	}
	update := func(i int) *fanout.Event {
		v := strconv.Itoa(i % values)
		return queryEvent("update", row{0: "a", 1: v}, row{0: "a", 1: v})
	}

	var wg sync.WaitGroup
	for w := range workers {
		// Churn: live queries come, receive, are replaced, and go.
		wg.Go(func() {
			for i := range iterations {
				var s fanout.Subscriber = &recorder{}
				if i%4 == 0 {
					s = &refuser{}
				}
				v := strconv.Itoa(i % values)
				id := []byte(strconv.Itoa(w*iterations + i))
				shared, ms := eq(0, "a", nil) // the stable subscribers' cohort
				own, mo := eq(1, v, nil)
				h.SubscribeQuery(s, "questions", id, shared, ms, 0)
				h.SubscribeQuery(s, "questions", []byte(`"own"`), own, mo, uint64(i))
				h.SubscribeQuery(s, "questions", []byte(`"range"`), "range "+v, &between{field: 1, lo: i % values, hi: values}, 0)
				h.Publish(update(i))
				h.SubscribeQuery(s, "questions", id, own, mo, 0) // replace
				if i%2 == 0 {
					h.UnsubscribeQuery(s, "questions", id)
					h.UnsubscribeQuery(s, "questions", []byte(`"own"`))
				}
				h.Matching(update(i))
				h.Count(s)
				h.Remove(s)
			}
		})
		// Publishers.
		wg.Go(func() {
			for i := range iterations {
				h.Publish(update(i))
				h.HasQueries("questions")
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
	assert.False(t, h.Active("questions"))
}
