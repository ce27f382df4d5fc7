package fanout_test

// This file benchmarks the Hub: the fan-out of one event to many
// subscribers, and the routing of one event among many subscriptions.

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/channelsapi/channelsapi/internal/fanout"
)

// sink is a Subscriber that accepts every frame. It is not safe for
// concurrent use; the benchmarks publish from one goroutine.
type sink struct{ frames int }

func (s *sink) Deliver([]byte) bool {
	s.frames++
	return true
}

func BenchmarkPublishFanout(b *testing.B) {
	for _, bc := range []struct {
		kind string
		n    int
	}{
		{"group", 10},
		{"group", 1000},
		{"instance", 1000},
		{"both", 1000},
	} {
		b.Run(fmt.Sprintf("%s/n=%d", bc.kind, bc.n), func(b *testing.B) {
			h := fanout.New()
			subs := make([]sink, bc.n)
			for i := range subs {
				if bc.kind != "instance" {
					h.Subscribe(&subs[i], "questions", "update", "")
				}
				if bc.kind != "group" {
					h.SubscribeInstance(&subs[i], "questions", "1", []byte(strconv.Itoa(i)))
				}
			}
			ev := event("update", "1")
			b.ReportAllocs()
			var total int
			for b.Loop() {
				delivered, _ := h.Publish(ev)
				total += delivered
			}
			b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}

// BenchmarkRouteOneAmong publishes an event that matches one subscription
// while n other subscribers are subscribed to other objects of the same
// stream. The cost per event must not grow with n.
func BenchmarkRouteOneAmong(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			h := fanout.New()
			others := make([]sink, n)
			for i := range others {
				pk := strconv.Itoa(i + 1)
				h.Subscribe(&others[i], "questions", "update", pk)
				h.SubscribeInstance(&others[i], "questions", pk, []byte(`1`))
			}
			match := &sink{}
			h.Subscribe(match, "questions", "update", "0")
			ev := event("update", "0")
			b.ReportAllocs()
			for b.Loop() {
				h.Publish(ev)
			}
			if match.frames != b.N {
				b.Fatalf("matching subscriber got %d frames, want %d", match.frames, b.N)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/event")
		})
	}
}
