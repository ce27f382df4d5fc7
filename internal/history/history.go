// Package history keeps the recent past of a stream: its last entries,
// each at an offset one above the one before, bounded by count and by age.
package history

import (
	"sync"
	"time"
)

// Ring is the history of one stream. Its methods are safe for concurrent
// use. The zero value is not usable; create rings with New.
type Ring[T any] struct {
	size int
	ttl  time.Duration
	now  func() time.Time

	mu   sync.Mutex
	buf  []slot[T] // a circular buffer of n entries from head
	head int
	n    int
	last uint64 // the offset of the newest entry; 0 before the first
}

type slot[T any] struct {
	at time.Time
	v  T
}

// New returns an empty ring that keeps at most size entries, none older
// than ttl (0: no age limit). A size of 0 keeps none: offsets are still
// counted, and only a reader already at the last offset is up to date.
func New[T any](size int, ttl time.Duration, now func() time.Time) *Ring[T] {
	if now == nil {
		now = time.Now
	}
	return &Ring[T]{size: size, ttl: ttl, now: now, buf: make([]slot[T], 0, min(size, 64))}
}

// Append adds v at the next offset and returns the offset.
func (r *Ring[T]) Append(v T) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last++
	if r.size == 0 {
		return r.last
	}
	at := r.now()
	r.expire(at)
	s := slot[T]{at: at, v: v}
	switch {
	case r.n < len(r.buf):
		r.buf[(r.head+r.n)%len(r.buf)] = s
		r.n++
	case len(r.buf) < r.size:
		// Grow: unroll from head into a larger buffer.
		grown := make([]slot[T], 0, min(max(2*len(r.buf), 1), r.size))
		for i := range r.n {
			grown = append(grown, r.buf[(r.head+i)%len(r.buf)])
		}
		r.buf, r.head = append(grown, s), 0
		r.buf = r.buf[:cap(r.buf)]
		r.n++
	default:
		r.buf[r.head] = s // overwrite the oldest
		r.head = (r.head + 1) % len(r.buf)
	}
	return r.last
}

// expire drops the entries older than the ttl. r.mu must be held.
func (r *Ring[T]) expire(now time.Time) {
	if r.ttl <= 0 {
		return
	}
	var zero slot[T]
	for r.n > 0 && now.Sub(r.buf[r.head].at) > r.ttl {
		r.buf[r.head] = zero // let go of the value
		r.head = (r.head + 1) % len(r.buf)
		r.n--
	}
}

// Last returns the offset of the newest entry, 0 before the first.
func (r *Ring[T]) Last() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// Since returns the entries after offset after, oldest first, and the
// offset of the newest. ok is false, and no entry returned, when the ring
// no longer holds every entry after after (or never had one at after).
func (r *Ring[T]) Since(after uint64) (vs []T, last uint64, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire(r.now())
	switch {
	case after > r.last:
		return nil, r.last, false
	case after == r.last:
		return nil, r.last, true
	}
	oldest := r.last + 1 - uint64(r.n) // offset of the entry at head
	if after+1 < oldest {
		return nil, r.last, false
	}
	vs = make([]T, 0, r.last-after)
	for o := after + 1; o <= r.last; o++ {
		vs = append(vs, r.buf[(r.head+int(o-oldest))%len(r.buf)].v)
	}
	return vs, r.last, true
}
