package channelsapi

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/channelsapi/channelsapi/internal/fanout"
)

// This file resumes subscriptions (PROTOCOL.md section 10): a subscribe
// with "since" is sent the events of its stream after that position that
// it would have received live, then the live ones, with no gap and none
// twice.
//
// The subscription is added held (it receives nothing), and a resumption
// is queued on its stream. The stream's goroutine, which delivers the
// stream's changes in the order of their offsets, serves it between the
// changes queued before and those after: it replays the history after
// since up to the stream's last offset, to this subscription alone and
// through the same authorization as live events, and then starts the
// subscription there. Changes at or below that offset that are still
// queued behind the resumption were part of the replay, so the
// subscription skips them; every later one reaches it.

// resumeTimeout bounds the wait for a resumption, and a broker's read of
// its history.
const resumeTimeout = 10 * time.Second

// errResumeBusy answers a subscribe whose stream cannot take a resumption
// now (shutting down, or its queue overflowed).
var errResumeBusy = NewError(http.StatusServiceUnavailable, "Server busy, try again.")

// resumption is a subscription that resumes after since.
type resumption struct {
	sub   fanout.Subscription
	since Position
	done  chan resumed // buffered: the stream's goroutine never waits
}

// resumed is the outcome of a resumption: whether the events after since
// were all replayed, and the position after which live events start.
type resumed struct {
	recovered bool
	at        Position
	err       error
}

// resume replays the events of stream after since to sub, which must be
// subscribed held, and starts it after them. It returns once the replay
// is queued on the subscriber's connection, behind the reply of the frame
// being handled.
func (d *delivery) resumeAt(ctx context.Context, stream string, sub fanout.Subscription, since Position) (resumed, error) {
	d.mu.RLock()
	q := d.streams[stream]
	d.mu.RUnlock()
	rs := &resumption{sub: sub, since: since, done: make(chan resumed, 1)}
	if !d.enqueue(q, item{resume: rs}) {
		return resumed{}, errResumeBusy
	}
	ctx, cancel := context.WithTimeout(ctx, resumeTimeout)
	defer cancel()
	select {
	case res := <-rs.done:
		return res, res.err
	case <-ctx.Done():
		return resumed{}, errResumeBusy
	}
}

// resume serves rs on q's goroutine.
func (d *delivery) resume(q *streamQueue, rs *resumption) {
	res := d.replay(q, rs)
	if res.err == nil {
		d.hub.Start(q.r.name(), rs.sub, res.at.Offset)
	}
	rs.done <- res
}

// replay delivers to rs.sub the events of q's stream after rs.since, from
// this process's history or the broker's. Nothing is replayed when the
// history does not hold all of them (or a resync is among them): the
// subscriber must load its state again.
func (d *delivery) replay(q *streamQueue, rs *resumption) resumed {
	if q.ord != nil {
		return d.replayOutbox(q, rs)
	}
	if q.past != nil {
		last := q.past.Last()
		var changes []change
		ok := false
		if rs.since.Epoch == d.epoch {
			changes, last, ok = q.past.Since(rs.since.Offset)
		}
		for _, ch := range changes {
			ok = ok && ch.resync == ""
		}
		at := Position{d.epoch, last}
		if !ok {
			return resumed{at: at}
		}
		for i, ch := range changes {
			d.deliver(q.r, item{ch: ch, at: Position{d.epoch, rs.since.Offset + 1 + uint64(i)}}, &rs.sub)
		}
		return resumed{recovered: true, at: at}
	}
	ctx, cancel := context.WithTimeout(d.ctx, resumeTimeout)
	defer cancel()
	type entry struct {
		offset  uint64
		payload []byte
	}
	var entries []entry
	epoch, last, ok, err := d.ret.broker.History(ctx, q.r.name(), rs.since.Epoch, rs.since.Offset, func(offset uint64, payload []byte) {
		entries = append(entries, entry{offset, payload})
	})
	if err != nil {
		d.log.Error("channelsapi: read the broker's history", "stream", q.r.name(), "err", err)
		return resumed{err: errResumeBusy}
	}
	at := Position{epoch, last}
	if !ok {
		return resumed{at: at}
	}
	for _, e := range entries {
		decode := func() (change, error) { return decodeWireChange(q.r, e.payload) }
		d.deliver(q.r, item{decode: decode, at: Position{epoch, e.offset}}, &rs.sub)
	}
	return resumed{recovered: true, at: at}
}

// sinceOf reads data.since of a subscribe: {"epoch": "...", "offset": N}.
func sinceOf(data json.RawMessage) (since Position, ok bool, err error) {
	d, _ := jsonObject(data)
	raw := d[keySince]
	if !present(raw) {
		return Position{}, false, nil
	}
	var p struct {
		Epoch  *string `json:"epoch"`
		Offset *uint64 `json:"offset"`
	}
	if json.Unmarshal(raw, &p) != nil || p.Epoch == nil || p.Offset == nil {
		return Position{}, false, FieldError(keySince, `Must be a position: {"epoch": "<string>", "offset": <integer>}.`)
	}
	return Position{*p.Epoch, *p.Offset}, true, nil
}

// keySince names the position a subscribe resumes after.
const keySince = "since"
