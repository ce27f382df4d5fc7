package fanout_test

// This file benchmarks the Hub: the fan-out of one event to many
// subscribers, and the routing of one event among many subscriptions.

import (
	"fmt"
	"strconv"
	"testing"
	"time"

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

// queryBatch is how many events of each kind an iteration of
// BenchmarkQueryRoute publishes, so that its two clock readings per kind
// cost little next to the events.
const queryBatch = 16

// BenchmarkQueryRoute publishes an update among 10k subscribers each
// holding a live query, of which match are in the row's set, and, in the
// same loop, an update among 10k per-pk group subscribers of which match
// subscribed to the row's pk (S3 of the bench): 10 subscribers per pk, or
// one. Each live query is anchored (field 0 == its value); the row's value
// does not change, so the event looks up one anchor value. An iteration
// publishes queryBatch events of each kind, alternately; ns/event and
// per-pk-ns/event are per event, query/per-pk their ratio, evals/event
// the filters evaluated per event.
//
// The unanchored case has no baseline: 10k subscribers share 10 range
// filters (10 cohorts, evaluated on every event), one of which, with 1000
// subscribers, holds the row.
func BenchmarkQueryRoute(b *testing.B) {
	const n = 10_000
	for _, bc := range []struct {
		name    string
		match   int
		cohorts int // cohorts the matching subscribers are in
	}{
		{"anchored/1 match", 1, 1},
		{"anchored/10 match, 1 cohort", 10, 1},
		{"anchored/10 match, 10 cohorts", 10, 10},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var evals calls
			qh, ph := fanout.New(), fanout.New()
			qsubs, psubs := make([]sink, n), make([]sink, n)
			for i := range n {
				v := strconv.Itoa(i / bc.match) // the row's value is 0
				key := "0=" + v
				if bc.cohorts > 1 {
					// Distinct filters with the same anchor, as
					// question_id=5&votes__gte=k would be.
					key += "&" + strconv.Itoa(i%bc.cohorts)
				}
				qh.SubscribeQuery(&qsubs[i], "questions", []byte(`"q"`), key, &equal{keys: []string{v}, calls: &evals}, 0)
				ph.Subscribe(&psubs[i], "questions", "update", v)
			}
			if keys, _ := qh.Stats(); keys != n/bc.match*bc.cohorts {
				b.Fatalf("%d cohorts", keys)
			}
			r := row{0: "0", 1: "x"}
			qev, pev := queryEvent("update", r, r), event("update", "0")
			var qTime, pTime time.Duration
			b.ReportAllocs()
			for b.Loop() {
				t0 := time.Now()
				for range queryBatch {
					ph.Publish(pev)
				}
				t1 := time.Now()
				for range queryBatch {
					qh.Publish(qev)
				}
				pTime += t1.Sub(t0)
				qTime += time.Since(t1)
			}
			events := float64(b.N * queryBatch)
			var qFrames, pFrames int
			for i := range n {
				qFrames, pFrames = qFrames+qsubs[i].frames, pFrames+psubs[i].frames
			}
			if want := int(events) * bc.match; qFrames != want || pFrames != want {
				b.Fatalf("%d live-query and %d per-pk frames, want %d each", qFrames, pFrames, want)
			}
			b.ReportMetric(float64(qTime.Nanoseconds())/events, "ns/event")
			b.ReportMetric(float64(pTime.Nanoseconds())/events, "per-pk-ns/event")
			b.ReportMetric(qTime.Seconds()/pTime.Seconds(), "query/per-pk")
			b.ReportMetric(float64(evals.n.Load())/events, "evals/event")
		})
	}
	b.Run("unanchored/10 ranges", func(b *testing.B) {
		var evals calls
		h := fanout.New()
		subs := make([]sink, n)
		for i := range n {
			k := i % 10
			h.SubscribeQuery(&subs[i], "questions", []byte(`"q"`), "range "+strconv.Itoa(k), &between{lo: 10 * k, hi: 10*k + 9, calls: &evals}, 0)
		}
		r := row{0: "5"}
		ev := queryEvent("update", r, r)
		var frames int
		b.ReportAllocs()
		for b.Loop() {
			for range queryBatch {
				d, _ := h.Publish(ev)
				frames += d
			}
		}
		events := float64(b.N * queryBatch)
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/events, "ns/event")
		b.ReportMetric(float64(evals.n.Load())/events, "evals/event")
		b.ReportMetric(float64(frames)/events, "frames/event")
	})
}
