package fanout_test

// This file tests where subscriptions start (SubscribeAfter,
// SubscribeInstanceAfter, Start, Passed) and events for one subscription
// (Event.Only): the hub's part of resuming a subscription.

import (
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/channelsapi/channelsapi/internal/fanout"
)

// offsetEvent is an update of pk 1 at offset, with a group and an
// instance frame naming the offset.
func offsetEvent(offset uint64) *fanout.Event {
	o := strconv.FormatUint(offset, 10)
	return &fanout.Event{
		Stream: "s", Action: "update", PK: "1", Offset: offset,
		Group:          []byte("g" + o),
		InstancePrefix: []byte("i" + o + "-"), InstanceSuffix: []byte("."),
	}
}

func TestStartSkipsWhatTheReplayHolds(t *testing.T) {
	h := fanout.New()
	resumed, live := &recorder{}, &recorder{}
	h.Subscribe(live, "s", "update", "")
	h.SubscribeInstance(live, "s", "1", []byte("r"))
	require.True(t, h.SubscribeAfter(resumed, "s", "update", "", fanout.Held))
	require.True(t, h.SubscribeInstanceAfter(resumed, "s", "1", []byte("r"), fanout.Held))

	h.Publish(offsetEvent(1))
	assert.Empty(t, resumed.Frames(), "held: nothing")

	// The replay reaches the held subscriptions one at a time.
	ev := offsetEvent(1)
	ev.Only = &fanout.Subscription{S: resumed, Kind: fanout.Group, Action: "update"}
	h.Publish(ev)
	ev = offsetEvent(1)
	ev.Only = &fanout.Subscription{S: resumed, Kind: fanout.Instance, PK: "1", RequestID: "r"}
	h.Publish(ev)
	assert.Equal(t, []string{"g1", "i1-r."}, resumed.Frames())

	require.True(t, h.Start("s", fanout.Subscription{S: resumed, Kind: fanout.Group, Action: "update"}, 2))
	require.True(t, h.Start("s", fanout.Subscription{S: resumed, Kind: fanout.Instance, PK: "1", RequestID: "r"}, 2))
	assert.False(t, h.Start("s", fanout.Subscription{S: resumed, Kind: fanout.Group, Action: "delete"}, 2), "no such subscription")
	for _, o := range []uint64{2, 3, 4} {
		h.Publish(offsetEvent(o))
		h.Passed("s", o)
	}
	assert.Equal(t, []string{"g1", "i1-r.", "g3", "i3-r.", "g4", "i4-r."}, resumed.Frames(), "at or below the start: skipped")
	assert.Equal(t, []string{"g1", "i1-r.", "g2", "i2-r.", "g3", "i3-r.", "g4", "i4-r."}, live.Frames(), "others are not affected")

	// An event without an offset is everyone's.
	h.Publish(offsetEvent(0))
	assert.Equal(t, "g0", resumed.Frames()[6])
}

// TestStartPerSubscription: a subscriber's subscriptions start apart; its
// group frame comes once, from any subscription that takes the event.
func TestStartPerSubscription(t *testing.T) {
	h := fanout.New()
	s := &recorder{}
	h.Subscribe(s, "s", "update", "")
	h.SubscribeAfter(s, "s", "update", "1", fanout.Held)
	h.SubscribeInstanceAfter(s, "s", "1", []byte("a"), 5)
	h.SubscribeInstance(s, "s", "1", []byte("b"))

	h.Publish(offsetEvent(3))
	assert.Equal(t, []string{"g3", "i3-b."}, s.Frames(), "every object's subscription takes it; instance a starts after 5")
	h.Unsubscribe(s, "s", "update", "")
	h.Publish(offsetEvent(4))
	assert.Equal(t, []string{"g3", "i3-b.", "i4-b."}, s.Frames(), "the pk's subscription is held")
	h.Publish(offsetEvent(6))
	assert.Equal(t, []string{"g3", "i3-b.", "i4-b.", "i6-a.", "i6-b."}, s.Frames())
	h.Remove(s)
	keys, subs := h.Stats()
	assert.Zero(t, keys)
	assert.Zero(t, subs)
}

// TestOnlyReachesOneSubscription: an event for one subscription reaches it
// alone, whatever its start, and nothing when it does not exist or does
// not take the event.
func TestOnlyReachesOneSubscription(t *testing.T) {
	h := fanout.New()
	a, b := &recorder{}, &recorder{}
	h.Subscribe(a, "s", "update", "")
	h.Subscribe(b, "s", "update", "")
	h.SubscribeInstance(a, "s", "2", []byte("x"))
	for _, only := range []fanout.Subscription{
		{S: a, Kind: fanout.Group, Action: "update"},
		{S: a, Kind: fanout.Group, Action: "create"},           // not subscribed
		{S: a, Kind: fanout.Instance, PK: "2", RequestID: "x"}, // another object
		{S: b, Kind: fanout.Query, RequestID: "q"},             // no live query
	} {
		ev := offsetEvent(7)
		ev.Only = &only
		h.Publish(ev)
	}
	assert.Equal(t, []string{"g7"}, a.Frames())
	assert.Empty(t, b.Frames())
}
