package channelsapi

import (
	"context"
	"fmt"
	"log/slog"
)

// Broker carries changes between the instances of an application, so that
// a client of any instance receives the events of the writes made on every
// instance. It moves opaque payloads on topics (a topic is a stream's name)
// and knows nothing of the API. The package redisbroker is one, through
// Redis pub/sub.
//
// Every instance hands each change it commits to Publish and delivers the
// changes of every instance, its own included, as the broker hands them
// back: each message once, and the messages of a topic in the same order
// on every instance. The broker numbers the messages of each topic, for
// every instance alike: offsets that grow by one per message, within an
// epoch that changes when the numbering starts over (the shared history was
// lost). It keeps a bounded history of each topic, so that a client that
// reconnects, to any instance, can be sent what it missed (PROTOCOL.md
// section 10), and so that an instance that missed messages can fill the
// gap. Whenever the order cannot be kept and the history cannot fill the gap
// (a connection dropped for too long, a queue overflowed, a peer vanished),
// the broker reports the topics concerned lost, and their subscribers are
// closed with 1013, reason "broker gap", after the events received before:
// they must load their state again. A broker must never lose a message
// silently.
//
// The API calls Publish, Resync, Watch and Ready concurrently.
type Broker interface {
	// Run is called once, by Register, before the API serves. From then
	// on the broker hands every message of a watched topic to message, on
	// one goroutine, in the order of the topic, and the topics whose
	// messages may have been lost on the way to this instance to lost, in
	// order with message for the same topic. Both only queue: they never
	// block, and the broker must not call them from within its own
	// methods. An error fails Register.
	//
	// Each message comes with its place in the topic's history: the
	// topic's epoch and the message's offset in it, one above the offset
	// of the message handed before in the same epoch.
	Run(message func(topic, epoch string, offset uint64, payload []byte), lost func(topics []string)) error
	// Publish sends payload to every instance watching topic, this one
	// included. It is called in commit order, with the capture's lock
	// held: it must not block. payload is not modified afterwards.
	Publish(topic string, payload []byte)
	// Resync makes every instance watching topic, this one included,
	// report it lost, after the messages published on topic before.
	Resync(topic string)
	// Watch says that this instance's clients gained their first
	// subscription to topic (active) or lost their last: the broker need
	// only hand over the messages of watched topics. It is called with the
	// API's locks held: it must not block.
	Watch(topic string, active bool)
	// Ready waits, boundedly, after Watch(topic, true), until the messages
	// of topic published from now on, by any instance, will reach message;
	// a subscribe is answered after it. When it cannot promise that, it
	// reports false, and must report topic lost once it can.
	Ready(ctx context.Context, topic string) bool
	// Position returns the topic's epoch and the offset of its last
	// message (0 before the first).
	Position(ctx context.Context, topic string) (epoch string, offset uint64, err error)
	// History hands each message of topic after offset after in epoch to
	// each, in order, up to the topic's last message, and returns the
	// topic's position as Position does. It reports ok false, having
	// handed nothing, when epoch is not the topic's or the history no
	// longer holds every message after after (it was trimmed, or a resync
	// took a place in it).
	History(ctx context.Context, topic, epoch string, after uint64, each func(offset uint64, payload []byte)) (top string, last uint64, ok bool, err error)
	// Close sends what Publish queued, stops calling the handlers and
	// releases what the broker holds, or gives up when ctx is done. It is
	// called by Shutdown (and by a Register that fails), maybe more than
	// once, and maybe without Run.
	Close(ctx context.Context) error
}

// WithBroker connects the instances of an application through b, for
// example a broker of the package redisbroker, so that a client of any
// instance receives the events of the writes made on every instance. Each
// instance needs a broker of its own. From Register on the API owns b:
// Register runs it, Shutdown closes it (after it has closed the sockets and
// before it waits for the delivery goroutines), and a Register that fails
// closes it too.
//
// A database write never waits for the broker and never fails because of
// it. Nil, the default, means no broker: events reach only the clients of
// this process.
func WithBroker(b Broker) Option { return func(c *config) { c.broker = b } }

// relay carries committed changes from this instance's capture to the
// delivery of every instance of the application. The default, localRelay,
// serves one process; brokerRelay serves several through a Broker and
// hands what it receives, this instance's own changes included, to
// delivery.received.
type relay interface {
	// publish takes committed changes in commit order. It runs under the
	// capture's lock: it must not block.
	publish(changes []change)
	// interest says that stream gained its first local subscription (active)
	// or lost its last. It is called with the hub's lock held: it must not
	// block and must not call the hub.
	interest(stream string, active bool)
	// ready waits, boundedly, until the changes of stream committed from now
	// on reach this instance's subscribers, after a subscribe. When that
	// cannot be promised the subscribers of stream are resynced later,
	// once it can.
	ready(ctx context.Context, stream string)
	// numbered takes changes of stream that the outbox numbered after
	// COMMIT (numbering.go), in offset order. It must not block.
	numbered(stream string, rows []outboxRow)
	// shutdown stops what the relay started and waits for it, or until ctx
	// is done. It may be called more than once.
	shutdown(ctx context.Context) error
}

// localRelay hands changes straight to this process's delivery.
type localRelay struct{ d *delivery }

func (r localRelay) publish(changes []change) { r.d.committed(changes) }
func (r localRelay) numbered(stream string, rows []outboxRow) {
	r.d.numbered(stream, rows)
}
func (localRelay) interest(string, bool)          {}
func (localRelay) ready(context.Context, string)  {}
func (localRelay) shutdown(context.Context) error { return nil }

// brokerRelay publishes changes through a Broker and hands what it sends
// back, this instance's own changes included, to delivery: every instance
// delivers the changes of a stream in the same order, each once. What the
// broker hands over is only queued here; decoding and authorizing run on
// the stream's delivery goroutine.
type brokerRelay struct {
	reg      *registry
	delivery *delivery
	log      *slog.Logger
	b        Broker
	outbox   bool // the outbox numbers the changes (outbox.go)
}

// startRelay sets the relay: the broker of WithBroker, run now, else the
// local one.
func (a *API) startRelay() error {
	if a.cfg.broker == nil {
		a.relay = localRelay{a.delivery}
		return nil
	}
	r := &brokerRelay{reg: a.reg, delivery: a.delivery, log: a.log, b: a.cfg.broker, outbox: a.cfg.outbox != nil}
	if err := r.b.Run(r.receive, r.lost); err != nil {
		return fmt.Errorf("channelsapi: run broker: %w", err)
	}
	a.relay = r
	a.hub.OnInterest(r.interest)
	return nil
}

func (r *brokerRelay) publish(changes []change) {
	if r.outbox {
		r.publishNumbered(changes)
		return
	}
	for _, ch := range changes {
		rs := r.reg.ofType(ch.typ)
		if len(rs) == 0 {
			continue
		}
		var msg []byte
		if ch.resync == "" {
			var err error
			if msg, err = encodeWireChange(rs[0], r.reg.stateful(ch.typ), ch, 0); err != nil {
				r.log.Error("channelsapi: encode change for the broker", "err", err)
			}
		}
		for _, res := range rs {
			if msg == nil {
				r.b.Resync(res.name())
			} else {
				r.b.Publish(res.name(), msg)
			}
		}
	}
}

// publishNumbered publishes changes the outbox numbered: each stream's
// payload carries the change's offset, which orders delivery on every
// instance (delivery_ordered.go); a broker's gap is filled from the
// outbox. A resync the outbox could not number (a write in a transaction
// it cannot see) travels as a payload too, so that lost keeps meaning
// "read the outbox".
func (r *brokerRelay) publishNumbered(changes []change) {
	for _, ch := range changes {
		if len(ch.numbered) > 0 {
			for _, n := range ch.numbered {
				r.b.Publish(n.stream, n.payload)
			}
			continue
		}
		for _, res := range r.reg.ofType(ch.typ) {
			msg, err := encodeWireChange(res, false, change{resync: ch.resync}, 0)
			if err != nil {
				r.log.Error("channelsapi: encode change for the broker", "err", err)
				continue
			}
			r.b.Publish(res.name(), msg)
		}
	}
}

// numbered publishes changes the outbox numbered after COMMIT, each with
// its offset.
func (r *brokerRelay) numbered(stream string, rows []outboxRow) {
	for _, row := range rows {
		r.b.Publish(stream, withOffset(row.payload, row.offset))
	}
}

// receive queues a change from the broker for this instance's subscribers
// of stream. It runs on the broker's reader goroutine: it only queues.
func (r *brokerRelay) receive(stream, epoch string, offset uint64, payload []byte) {
	res, ok := r.reg.stream(stream)
	if !ok {
		return // a stream this instance does not serve
	}
	at := Position{epoch, offset}
	if r.outbox {
		at = Position{} // the outbox's offset is in the payload
	}
	r.delivery.received(stream, at, func() (change, error) { return decodeWireChange(res, payload) })
}

// lost resyncs the subscribers of streams whose events may have been lost,
// after what was received before.
func (r *brokerRelay) lost(streams []string) {
	for _, s := range streams {
		if r.outbox {
			r.delivery.check(s) // the outbox holds what the broker lost
			continue
		}
		r.delivery.lost(s, reasonBrokerGap)
	}
}

func (r *brokerRelay) interest(stream string, active bool) { r.b.Watch(stream, active) }

func (r *brokerRelay) ready(ctx context.Context, stream string) { r.b.Ready(ctx, stream) }

func (r *brokerRelay) shutdown(ctx context.Context) error {
	if err := r.b.Close(ctx); err != nil {
		return fmt.Errorf("channelsapi: close broker: %w", err)
	}
	return nil
}
