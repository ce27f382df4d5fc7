package channelsapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"runtime/debug"
	"sync"
	"time"

	"github.com/channelsapi/channelsapi/internal/fanout"
	"github.com/channelsapi/channelsapi/internal/history"
)

// This file carries committed changes to this process's subscribers.
//
// Every stream has a bounded queue and a goroutine of its own, started by
// Add and stopped by Shutdown: the events of one stream go out in the order
// they were queued (commit order, or the order Redis delivers them), and a
// stream whose authorization is slow holds up no other stream. The
// goroutine decodes what a relay received, authorizes each event per
// recipient (authorize.go), encodes it once and hands it to the hub.
//
// A queue that is full takes nothing more: the stream's subscribers are
// closed with 1013 ("delivery queue full") after the events queued before,
// and what arrives until then is dropped, since they will load their state
// again. Nothing is lost silently.

// Close reasons of 1013: why a connection must load its state again.
const (
	reasonSlowClient  = "slow client"
	reasonBulkChange  = "bulk change"
	reasonUntracked   = "untracked transaction"
	reasonConcurrent  = "concurrent change"
	reasonUpsert      = "upsert without conflict columns"
	reasonEncoding    = "encoding failed"
	reasonAuthorize   = "authorization failed"
	reasonQueueFull   = "delivery queue full"
	reasonBrokerGap   = "broker gap"
	reasonUndecodable = "undecodable change"
)

// delivery owns the per-stream queues and their goroutines, and the
// streams' histories.
type delivery struct {
	hub   *fanout.Hub
	log   *slog.Logger
	limit int
	ret   retention
	// epoch names this process's histories (PROTOCOL.md 10): a client
	// that resumes from another epoch missed events no history holds.
	epoch string
	// ctx is given to Permission, ObjectPermission and the Scope's queries;
	// close cancels it when its own context ends first.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// ob is the outbox of WithOutbox, nil without: streams are then
	// delivered in the order of the offsets it gives (delivery_ordered.go).
	ob   *outbox
	quit chan struct{} // closed by close: the outbox's loops return
	// numberQuit stops the numbering (stopNumbering), which numbering
	// counts.
	numberQuit chan struct{}
	numbering  sync.WaitGroup

	// wakes lets a run of events reach each connection in one write
	// (writer.go).
	wakes wakeBatch

	mu      sync.RWMutex
	streams map[string]*streamQueue
	byType  map[reflect.Type][]*streamQueue
	closed  bool
}

// retention is how the streams' histories are kept: in this process, at
// most size events per stream and none older than ttl, or by the broker.
type retention struct {
	size   int
	ttl    time.Duration
	broker Broker
}

// streamQueue is one stream's bounded queue.
type streamQueue struct {
	r    resource
	wake chan struct{}
	// past is the stream's history in this process, nil with a broker.
	// It holds the changes as committed, before they are encoded.
	past *history.Ring[change]

	// ord orders the stream by the outbox's offsets; nil without it.
	ord *ordered

	mu       sync.Mutex
	items    []item
	resync   string // set when the queue overflowed: delivered after items
	overflow bool   // with the outbox: items were dropped, to be read back
	stopped  bool
}

// item is a queued change, or one received from a relay that the stream's
// goroutine decodes (decoding may run the model's UnmarshalJSON, so never
// on a relay's reader).
type item struct {
	ch     change
	decode func() (change, error)
	at     Position // the change's place in the stream's history
	resume *resumption
	// With the outbox: top is a stream top the poll read, check asks
	// for the top to be read now (a broker lost messages).
	top   uint64
	check bool
}

func newDelivery(hub *fanout.Hub, log *slog.Logger, limit int, ret retention, ob *outbox) *delivery {
	ctx, cancel := context.WithCancel(context.Background())
	d := &delivery{
		hub: hub, log: log, limit: limit, ret: ret, epoch: newEpoch(), ctx: ctx, cancel: cancel, ob: ob,
		quit: make(chan struct{}), streams: map[string]*streamQueue{}, byType: map[reflect.Type][]*streamQueue{},
	}
	return d
}

// stopNumbering stops the outbox's numbering (numbering.go) and waits for
// it: Shutdown does, before the relay, which publishes what it numbered.
func (d *delivery) stopNumbering() {
	d.mu.Lock()
	if d.numberQuit != nil {
		select {
		case <-d.numberQuit:
		default:
			close(d.numberQuit)
		}
	}
	d.mu.Unlock()
	d.numbering.Wait()
}

// startOutbox starts polling and trimming the outbox, once Register has
// installed the capture (which changes the *gorm.DB the outbox reads).
func (d *delivery) startOutbox(publish func(stream string, rows []outboxRow)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ob == nil || d.closed {
		return
	}
	d.wg.Add(1)
	go d.tendOutbox()
	if d.ob.after {
		d.ob.publish = publish
		d.numberQuit = make(chan struct{})
		d.numbering.Add(1)
		go func() {
			defer d.numbering.Done()
			d.ob.numberLoop(d.ctx, d.numberQuit, publish, d.log.Error)
		}()
	}
}

// add starts the delivery of r's stream. With the outbox, it creates the
// stream's counter unless it exists, and delivers from its top on.
func (d *delivery) add(r resource) error {
	q := &streamQueue{r: r, wake: make(chan struct{}, 1)}
	switch {
	case d.ob != nil:
		at, err := d.ob.ensure(d.ctx, r.name())
		if err != nil {
			return err
		}
		q.ord = &ordered{epoch: at.Epoch, cursor: at.Offset, ahead: map[uint64]item{}}
	case d.ret.broker == nil:
		q.past = history.New[change](d.ret.size, d.ret.ttl, nil)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.streams[r.name()] = q
	t := r.model().schema.ModelType
	d.byType[t] = append(d.byType[t], q)
	if d.closed {
		q.stopped = true
		return nil
	}
	d.wg.Add(1)
	if q.ord != nil {
		go d.runOrdered(q)
	} else {
		go d.run(q)
	}
	return nil
}

// committed records changes committed on this instance, in commit order,
// in the history of every stream of their model, at the stream's next
// offset, and queues them for its subscribers. It never blocks. A resync
// takes an offset too: no replay reaches across it.
func (d *delivery) committed(changes []change) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.ob != nil {
		d.committedNumbered(changes)
		return
	}
	for _, ch := range changes {
		for _, q := range d.byType[ch.typ] {
			at := Position{d.epoch, q.past.Append(ch)}
			// A stream nobody listens to is not queued: whoever
			// subscribes from now on subscribed after the commit, or
			// resumes from the history.
			if ch.resync != "" || d.hub.Active(q.r.name()) {
				d.enqueue(q, item{ch: ch, at: at})
			}
		}
	}
}

// position returns the position of stream in this process's history: the
// offset of the last change committed. Taken while no commit is under way
// (sequencer.hold), it is the position of a database snapshot begun then.
func (d *delivery) position(stream string) Position {
	d.mu.RLock()
	q := d.streams[stream]
	d.mu.RUnlock()
	return Position{d.epoch, q.past.Last()}
}

// received queues a change a relay received for stream; decode runs on the
// stream's goroutine. It never blocks.
func (d *delivery) received(stream string, at Position, decode func() (change, error)) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if q, ok := d.streams[stream]; ok {
		d.enqueue(q, item{decode: decode, at: at})
	}
}

// lost resyncs the subscribers of stream, after the events queued before.
func (d *delivery) lost(stream, reason string) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if q, ok := d.streams[stream]; ok {
		d.enqueue(q, item{ch: change{resync: reason}})
	}
}

// enqueue queues it on q and reports whether it did. A change that does not
// fit resyncs the stream's subscribers; a resumption that does not fit is
// only refused.
func (d *delivery) enqueue(q *streamQueue, it item) bool {
	q.mu.Lock()
	queued := false
	switch {
	case q.stopped || q.resync != "":
		// Shutting down (the sockets are closed with 1001), or the
		// subscribers are resynced after what is queued: nothing is missed.
	case len(q.items) >= d.limit && q.ord != nil:
		// The outbox holds what is dropped: it is read back in order;
		// but not a resync it could not number, which is kept.
		if it.at.Offset == 0 && it.ch.resync != "" {
			q.resync = it.ch.resync
		}
		if it.resume == nil && !q.overflow {
			q.overflow = true
			d.log.Warn("channelsapi: delivery queue full; the stream's changes are read back from the outbox", "stream", q.r.name(), "size", d.limit)
		}
	case len(q.items) >= d.limit:
		if it.resume == nil {
			q.resync = reasonQueueFull
			d.log.Warn("channelsapi: delivery queue full; the stream's subscribers resync", "stream", q.r.name(), "size", d.limit)
		}
	default:
		q.items = append(q.items, it)
		queued = true
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return queued
}

// run delivers q's items in order until close, then what was queued before
// it, and returns.
func (d *delivery) run(q *streamQueue) {
	defer d.wg.Done()
	for {
		q.mu.Lock()
		items, reason, stopped := q.items, q.resync, q.stopped
		q.items, q.resync = nil, ""
		q.mu.Unlock()
		d.wakes.publish(len(items), func(i int) {
			if it := items[i]; it.resume != nil {
				d.resume(q, it.resume)
			} else {
				d.deliver(q.r, it, nil)
			}
		})
		if reason != "" {
			d.resync(q.r.name(), reason)
		}
		if len(items) > 0 || reason != "" {
			continue
		}
		if stopped {
			return
		}
		<-q.wake
	}
}

// close stops taking changes and waits until what was queued is delivered,
// or ctx is done: then the queries and checks still running are cancelled.
// It may be called more than once.
func (d *delivery) close(ctx context.Context) error {
	d.mu.Lock()
	if !d.closed {
		close(d.quit)
	}
	d.closed = true
	for _, q := range d.streams {
		q.mu.Lock()
		q.stopped = true
		q.mu.Unlock()
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	d.mu.Unlock()
	done := make(chan struct{})
	go func() {
		d.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		d.cancel()
		return nil
	case <-ctx.Done():
		d.cancel()
		<-done
		return ctx.Err()
	}
}

// deliver fans one item out on r's stream, or, with only, to that
// subscription alone (a replay). A panic of the application's code (a
// permission, a Scope, a model's JSON methods) is logged and the
// subscribers concerned resync: no event is lost silently, and the stream's
// goroutine survives.
func (d *delivery) deliver(r resource, it item, only *fanout.Subscription) {
	resync := func(reason string) {
		if only != nil {
			only.S.(*conn).resync(reason)
			return
		}
		d.resync(r.name(), reason)
	}
	defer func() {
		if p := recover(); p != nil {
			d.log.Error("channelsapi: panic while delivering an event", "stream", r.name(), "panic", p, "stack", string(debug.Stack()))
			resync(reasonAuthorize)
		}
	}()
	ch := it.ch
	if ch.resync != "" {
		resync(ch.resync)
		return
	}
	if !d.hub.Active(r.name()) {
		return // nobody here listens: nothing to decode, encode or authorize
	}
	if it.decode != nil {
		var err error
		if ch, err = it.decode(); err != nil {
			d.log.Error("channelsapi: undecodable change", "stream", r.name(), "err", err)
			resync(reasonUndecodable)
			return
		}
		if ch.resync != "" { // a resync the outbox numbered
			resync(ch.resync)
			return
		}
	}
	if err := ch.encode(); err != nil {
		d.log.Error("channelsapi: encode event", "stream", r.name(), "err", err)
		resync(reasonEncoding)
		return
	}
	queries := d.hub.HasQueries(r.name())
	if only != nil {
		queries = only.Kind == fanout.Query
	}
	ev, err := newEvent(r, ch, it.at.Offset, queries)
	if err != nil {
		d.log.Error("channelsapi: encode event", "stream", r.name(), "err", err)
		resync(reasonEncoding)
		return
	}
	ev.Only = only
	if queries {
		ev.Before, ev.After = r.states(d.ctx, ch)
	}
	if only == nil && it.at.Offset != 0 {
		defer d.hub.Passed(r.name(), it.at.Offset)
	}
	if !r.guarded() {
		d.hub.Publish(ev)
		return
	}
	auth, err := r.authorize(d.ctx, ch, ev)
	if err != nil {
		d.log.Error("channelsapi: authorize event", "stream", r.name(), "err", err)
		for _, s := range auth.candidates {
			s.(*conn).resync(reasonAuthorize)
		}
		return
	}
	ev.Allow, ev.Visible = auth.allow(ch.action), auth.visible
	d.hub.Publish(ev)
	if ch.action == actionUpdate && ch.before != nil {
		// Those who saw the object and no longer may get its last state
		// they could see, as a delete, on their update subscriptions.
		gone, err := newEvent(r, change{action: actionDelete, pk: ch.pk, data: ch.before}, it.at.Offset, false)
		if err != nil {
			d.log.Error("channelsapi: encode event", "stream", r.name(), "err", err)
			resync(reasonEncoding)
			return
		}
		gone.Action, gone.Allow, gone.Only = actionUpdate, auth.leave, only
		d.hub.Publish(gone)
	}
}

// resync closes every subscriber of stream with 1013 and reason: it may
// have missed events and must load its state again.
func (d *delivery) resync(stream, reason string) {
	for _, s := range d.hub.SubscribersOf(stream) {
		s.(*conn).resync(reason)
	}
}

// newEvent encodes ch for r's subscribers: the channels-api frame, the two
// halves of the DCRF frame around the request_id and, when queries is set,
// the frames of live queries (PROTOCOL.md 9), also around the request_id.
func newEvent(r resource, ch change, offset uint64, queries bool) (*fanout.Event, error) {
	pk, err := json.Marshal(ch.pk)
	if err != nil {
		return nil, err
	}
	stream := r.name()
	etag := ch.etagFor(r)
	group, err := encodeFrame(stream, groupEvent{Action: ch.action, PK: pk, Data: ch.data, Model: r.label(), ETag: etag, Offset: offset})
	if err != nil {
		return nil, err
	}
	ev := &fanout.Event{Stream: stream, Action: ch.action, PK: pkKey(ch.pk), Group: group, Offset: offset}
	if queries {
		if ev.Query, err = queryFrames(r, ch, pk, offset, group); err != nil {
			return nil, err
		}
	}
	if ch.action == actionCreate {
		return ev, nil
	}
	data, status := ch.data, http.StatusOK
	if ch.action == actionDelete {
		data, status = json.RawMessage(`{"pk":`+string(pk)+`}`), http.StatusNoContent
	}
	f, err := splitFrame(stream, reply{Action: ch.action, Data: data, Errors: []any{}, ResponseStatus: status, RequestID: json.RawMessage(ridMark), ETag: etag, Offset: offset})
	if err != nil {
		return nil, err
	}
	ev.InstancePrefix, ev.InstanceSuffix = f.Prefix, f.Suffix
	return ev, nil
}

// queryFrames returns the frames of ch's live-query events by kind: a
// create enters, a delete leaves, an update may do either or change.
//
// A live-query event is the channels-api event (groupEvent) with
// "request_id" after its other keys, so its frame is the channels-api frame
// group, of the same action and data, up to its two closing braces, then
// the request_id. Only a leave after an update, which carries the row
// before it (the last state its recipients could see), needs a frame of
// its own.
func queryFrames(r resource, ch change, pk json.RawMessage, offset uint64, group []byte) (frames [3]fanout.QueryFrame, err error) {
	switch ch.action {
	case actionCreate:
		frames[fanout.Enter] = withRequestID(group)
		return frames, nil
	case actionDelete:
		frames[fanout.Leave] = withRequestID(group)
		return frames, nil
	}
	enter, err := withAction(group, actionUpdate, actionCreate)
	if err != nil {
		return frames, err
	}
	var left []byte
	if ch.before != nil {
		left, err = encodeFrame(r.name(), groupEvent{Action: actionDelete, PK: pk, Data: ch.before, Model: r.label(), Offset: offset})
	} else {
		left, err = withAction(group, actionUpdate, actionDelete)
	}
	if err != nil {
		return frames, err
	}
	frames[fanout.Enter] = withRequestID(enter)
	frames[fanout.Change] = withRequestID(group)
	frames[fanout.Leave] = withRequestID(left)
	return frames, nil
}

// withRequestID splits a channels-api frame into the halves of the frame
// with a request_id: the frame up to its two closing braces and
// `,"request_id":`, then the braces.
func withRequestID(frame []byte) fanout.QueryFrame {
	end := len(frame) - len(`}}`)
	prefix := make([]byte, 0, end+len(`,"request_id":`))
	prefix = append(append(prefix, frame[:end]...), `,"request_id":`...)
	return fanout.QueryFrame{Prefix: prefix, Suffix: frame[end:]}
}

// withAction returns a copy of frame, a channels-api frame of action from,
// with action to. The action is the payload's first key; the stream before
// it is a JSON string, in which no unescaped quote can start the match.
func withAction(frame []byte, from, to string) ([]byte, error) {
	const key = `,"payload":{"action":"`
	i := bytes.Index(frame, []byte(key+from+`"`))
	if i < 0 {
		return nil, fmt.Errorf("event frame without action %q", from)
	}
	i += len(key)
	out := make([]byte, 0, len(frame)-len(from)+len(to))
	out = append(append(out, frame[:i]...), to...)
	return append(out, frame[i+len(from):]...), nil
}

// splitFrame encodes payload, whose request_id is ridMark, and splits the
// frame around it.
func splitFrame(stream string, payload any) (fanout.QueryFrame, error) {
	whole, err := encodeFrame(stream, payload)
	if err != nil {
		return fanout.QueryFrame{}, err
	}
	i := bytes.LastIndex(whole, []byte(ridMark))
	return fanout.QueryFrame{Prefix: whole[:i], Suffix: whole[i+len(ridMark):]}, nil
}

// ridMark stands in for the request_id while an instance frame is encoded.
const ridMark = `"\u0000rid\u0000"`
