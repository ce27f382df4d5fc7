package fanout_test

// This file tests OnInterest: when the Hub reports a stream active and
// inactive.

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/channelsapi/channelsapi/internal/fanout"
)

// interest is what a hub told OnInterest: "+stream" and "-stream" in
// order, and the streams it last told active.
type interest struct {
	told   []string
	active map[string]bool
}

// recordInterest records what h tells OnInterest, and fails the test when
// a stream is told the same twice in a row.
func recordInterest(t *testing.T, h *fanout.Hub) *interest {
	in := &interest{active: map[string]bool{}}
	h.OnInterest(func(stream string, on bool) {
		assert.NotEqual(t, in.active[stream], on, "%s reported %v twice in a row", stream, on)
		in.active[stream] = on
		if on {
			in.told = append(in.told, "+"+stream)
		} else {
			in.told = append(in.told, "-"+stream)
		}
	})
	return in
}

// TestOnInterest checks that a stream is reported active on its first
// subscription of either kind and inactive after its last one goes, whether
// by unsubscribing or by Remove, and never twice in a row.
func TestOnInterest(t *testing.T) {
	h := fanout.New()
	in := recordInterest(t, h)
	a, b := &recorder{}, &recorder{}

	h.Subscribe(a, "questions", "update", "")
	h.Subscribe(a, "questions", "update", "1")
	h.Subscribe(b, "questions", "create", "")
	h.SubscribeInstance(b, "choices", "1", []byte(`"r1"`))
	h.SubscribeInstance(a, "choices", "1", []byte(`"r2"`))
	assert.Equal(t, []string{"+questions", "+choices"}, in.told)

	h.Unsubscribe(a, "questions", "update", "")
	h.Unsubscribe(a, "questions", "update", "1")
	h.UnsubscribeInstance(b, "choices", "1", []byte(`"r1"`))
	assert.Equal(t, []string{"+questions", "+choices"}, in.told, "other subscriptions remain")

	h.Remove(b) // its last "questions" subscription
	assert.Equal(t, []string{"+questions", "+choices", "-questions"}, in.told)
	h.Remove(b)
	h.UnsubscribeInstance(a, "choices", "1", []byte(`"r2"`))
	assert.Equal(t, []string{"+questions", "+choices", "-questions", "-choices"}, in.told)

	h.SubscribeInstance(a, "choices", "2", []byte(`1`))
	h.SubscribeInstance(a, "choices", "2", []byte(`2`))
	h.Subscribe(a, "choices", "delete", "")
	h.Remove(a)
	assert.Equal(t, []string{"+questions", "+choices", "-questions", "-choices", "+choices", "-choices"}, in.told)
	assert.Empty(t, activeStreams(in.active))
}

func activeStreams(m map[string]bool) []string {
	var out []string
	for s, on := range m {
		if on {
			out = append(out, s)
		}
	}
	return out
}

// TestNoInterestCallback checks that a hub without OnInterest works as before.
func TestNoInterestCallback(t *testing.T) {
	h := fanout.New()
	s := &recorder{}
	h.Subscribe(s, "questions", "update", "")
	h.Remove(s)
	keys, subs := h.Stats()
	assert.Zero(t, keys)
	assert.Zero(t, subs)
}
