// Package redisbroker carries messages between the instances of one
// application through Redis pub/sub. It is the broker of channelsapi for
// applications that run several instances: give it to
// channelsapi.WithBroker. It imports nothing of channelsapi, so that
// applications that do not use Redis do not link a Redis client.
//
//	b, err := redisbroker.New(redisbroker.Config{URL: "redis://redis.internal:6379/0"})
//	if err != nil {
//		return err // an invalid URL, not an unreachable server
//	}
//	api, err := channelsapi.Register(router, db, channelsapi.WithBroker(b))
//
// Every topic (for channelsapi, a stream) is one Redis channel, the topic
// behind a prefix. An instance subscribes to the channel of a topic while it
// has an interest in it ([Broker.Watch]) and to no other, so it receives
// nothing for the topics none of its clients listen to. Redis sends each
// message of a channel to every instance subscribed to it, the publishing
// instance included, in one order per channel: an instance hands its own
// messages to its clients only when they come back from Redis, so that every
// instance delivers the messages of a topic once each, in the same order.
//
// Publishing never blocks: [Broker.Publish] puts the message on a bounded
// queue that a goroutine of the broker sends to Redis, in order.
//
// Redis numbers the messages of each topic, for every instance alike: a Lua
// script, in one step per message, gives it the next offset of the topic's
// epoch, adds it to the topic's history (a Redis stream that keeps about
// [Config.HistorySize] messages, for [Config.HistoryTTL] after the last)
// and publishes it with its epoch and offset. The epoch is a random string
// that a topic gets with its first message (or its first read of
// [Broker.Position]); it lasts as long as the topic's offset counter,
// [Config.HistoryMetaTTL] after the topic's last message or read, and
// changes when Redis loses it (expired, flushed, restarted without
// persistence): the numbering then starts over at 1. [Broker.Position] and
// [Broker.History] read the same numbering from any instance. A resync
// marker takes an offset of its own, in the history too.
//
// The keys of a topic are Prefix+"#{"+topic+"}" and a suffix: ":meta", a
// hash of the epoch and the last offset; ":history", the stream; and
// ":sent:" and a broker's id, the last item that broker published on the
// topic, so that a publish retried after a lost reply publishes nothing
// twice. No topic starts with '#', so no key is a topic's channel; in a
// Redis Cluster, the keys of a topic share a hash slot.
//
// On each instance, the messages of a topic are handed over in the order
// of their offsets, each once: one at or below the last handed is dropped;
// one that comes after a gap waits until the gap is filled from the
// history, read by the goroutine that reads the subscription connection,
// which waits for it (at most five seconds). When the subscription
// connection drops, the broker reconnects with backoff and, once
// subscribed again, reads from the history what each watched topic missed
// since the last message handed, and hands it, before anything the new
// connection brings, one topic after the other. So an outage of Redis
// shorter than [Config.MaxOutage] costs latency, not a resync, as long as
// the history holds what was published meanwhile.
//
// Messages can still be lost, when the history cannot fill a gap, when the
// outbound queue is full, when Redis cannot be reached for long, when a
// peer dies with messages queued. The broker never lets that pass silently:
// it reports the topics whose messages may have been lost to the lost
// handler given to [Broker.Run] on every instance that may have missed
// something, at the point of the topic's order where the loss happened:
//
//   - A gap the history cannot fill, because it no longer holds all of it
//     (trimmed, or expired) or the topic's epoch changed: when the gap is
//     found, on this instance. After a dropped subscription, this also
//     concerns the watched topics of which nothing was handed before (the
//     broker does not know where they were), and those that gained
//     listeners while it was not subscribed.
//   - A full queue: a resync marker takes the lost message's place in the
//     topic's order and reaches every instance, this one included, after
//     the messages queued before it.
//   - A subscription connection down for longer than [Config.MaxOutage]:
//     then, for every topic this instance watches.
//   - A failed publish: the broker sends the batch again, with backoff,
//     for up to [Config.MaxOutage]; then the batch and everything still
//     queued is dropped and reported at once on this instance, and a resync
//     marker follows for the others as soon as Redis takes it.
//   - A peer that vanished: an instance that dies (killed, crashed, cut off
//     from Redis) may have had messages queued that never reached Redis, so
//     never got an offset: no gap shows them.
//     Every broker publishes a heartbeat on the control channel of its
//     prefix, Prefix+"#peers", every [Config.Heartbeat], and a farewell when
//     Close has sent everything it queued; every broker is always
//     subscribed to that channel. A broker that hears nothing from a peer
//     for three of the peer's heartbeat intervals, and got no farewell from
//     it, reports every topic it watches lost.
//
// A peer counts as silent only against this broker's own heartbeats, which
// Redis sends back behind everything it received before them: when one
// that was sent after a peer's deadline comes back with nothing of the peer
// before it, the peer missed its heartbeats. So a broker whose own reading
// is slow never mistakes a peer for dead, and one whose own heartbeats do
// not get through declares no peer dead until they do. A heartbeat goes
// out at the earliest deadline, so a dead peer is found two to three of its
// heartbeat intervals after it died, plus a round trip to Redis.
//
// While its subscription connection is down, a broker hears nothing of its
// peers; once it is (re)established, it asks every peer for a heartbeat at
// once, and the peers it knew get three of their intervals from then on to
// be heard again. A peer that closed meanwhile is then counted as dead: its
// farewell was missed. A broker's first heartbeat goes out before anything
// else it publishes. So a broker misses the death of a peer only when the
// peer dies before this broker heard from it: before anything the peer
// published reached Redis, or in the round trip in which the peers answer
// a broker that just subscribed for the first time.
package redisbroker

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of the zero fields of Config.
const (
	DefaultPrefix       = "channelsapi:"
	DefaultQueueSize    = 10000
	DefaultMinBackoff   = 100 * time.Millisecond
	DefaultMaxBackoff   = 2 * time.Second
	DefaultHealthCheck  = 5 * time.Second
	DefaultReadyTimeout = 5 * time.Second
	DefaultHeartbeat    = time.Second
	DefaultHistorySize  = 1000
	DefaultHistoryTTL   = 5 * time.Minute
	// DefaultHistoryMetaTTL keeps a topic's epoch through long idle
	// periods.
	DefaultHistoryMetaTTL = 30 * 24 * time.Hour
	DefaultMaxOutage      = 5 * time.Second
	// peersChannel, after the prefix, names the control channel. A topic
	// never starts with '#'.
	peersChannel = "#peers"
	// missedBeats is how many of its heartbeats a peer may miss before it
	// counts as dead.
	missedBeats = 3
	// maxInterval bounds the heartbeat interval a peer announces.
	maxInterval = time.Hour
	// maxBatch is the most messages sent to Redis in one round trip.
	maxBatch = 256
	// publishTimeout bounds one round trip of PUBLISH commands.
	publishTimeout = 5 * time.Second
)

// Config configures a Broker. One of URL and Client is required; every
// other zero field takes its default.
type Config struct {
	// URL is the Redis server, redis://[[user]:password@]host[:port][/db]
	// (rediss:// for TLS). The broker opens its own connections and closes
	// them on Close.
	URL string
	// Client is a connection pool the application configured instead of
	// URL (Sentinel, Cluster, TLS, pool sizes). The broker does not close
	// it.
	Client redis.UniversalClient
	// Prefix is put before each topic to name its Redis channel and its
	// keys. Every instance of an application must use the same (and the
	// same database); applications sharing a Redis server must use
	// different ones, as pub/sub channels are not scoped by database
	// number. Empty means DefaultPrefix.
	Prefix string
	// QueueSize is how many messages may wait to be sent to Redis. Beyond
	// it a message is dropped and its topic reported lost on every
	// instance, after the messages queued before it. 0 means
	// DefaultQueueSize.
	QueueSize int
	// Logger receives connection failures. Nil means slog.Default().
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between attempts to
	// subscribe again or to publish again after a failure. 0 means
	// DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// HealthCheck is how long the subscription connection may be silent
	// before the broker pings it; a ping unanswered for as long again
	// counts as a dropped connection. 0 means DefaultHealthCheck.
	HealthCheck time.Duration
	// ReadyTimeout bounds Ready. 0 means DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// Heartbeat is how often the broker tells its peers, on the channel
	// Prefix+"#peers", that it is alive. A peer that misses three of its
	// heartbeats without saying farewell counts as dead: every instance
	// that heard from it reports all the topics it watches lost. The
	// instances of an application may use different intervals: each
	// heartbeat carries its own. 0 means DefaultHeartbeat.
	Heartbeat time.Duration
	// HistorySize is about how many of its last messages Redis keeps of
	// each topic (it trims a topic's history in whole blocks, so it may
	// keep some more). 0 means DefaultHistorySize.
	HistorySize int
	// HistoryTTL is how long Redis keeps a topic's history after its last
	// message. 0 means DefaultHistoryTTL.
	HistoryTTL time.Duration
	// HistoryMetaTTL is how long Redis keeps a topic's epoch and last
	// offset after its last message or read: when they expire, the
	// topic's numbering starts over, in a new epoch. 0 means
	// DefaultHistoryMetaTTL; it is never shorter than HistoryTTL.
	HistoryMetaTTL time.Duration
	// MaxOutage is how long the broker bridges an outage of Redis. A
	// batch of messages that fails is sent again, with backoff, for up to
	// MaxOutage (never published twice, whatever the retries); then it is
	// dropped with what is queued behind it, and their topics are reported
	// lost. A subscription connection that is not back MaxOutage after it
	// dropped has every watched topic reported lost then, rather than
	// caught up once it is back. 0 means DefaultMaxOutage.
	MaxOutage time.Duration
}

// A payload on a topic's channel is a kind byte, the publishing broker's id
// (16 hex digits), the offset (decimal), ':', the epoch, ':' and, for a
// message, the message; publish.lua writes it. Every item a broker queues
// has a sequence number, and the script keeps, per topic, the last one the
// broker published: a pipeline retried after a lost reply publishes nothing
// twice.
//
// On the control channel a payload is a kind byte and the broker's id; a
// heartbeat goes on with the sender's interval and the sender's clock (time
// since New), in nanoseconds, 16 hex digits each.
const (
	kindMessage  = 'm' // a message
	kindResync   = 'r' // every instance reports the topic lost
	kindResyncO  = 'o' // the same, except the publishing instance
	kindBeat     = 'h' // a heartbeat
	kindHello    = 'q' // a heartbeat that asks every peer for one at once
	kindFarewell = 'f' // the sender closed after publishing all it queued
	idLen        = 16
)

// item is one queued message or resync marker; seq numbers the items in
// queue order.
type item struct {
	seq   uint64
	topic string
	kind  byte
	data  []byte
}

// itemID is what publish.lua remembers of the last item a broker published
// on a topic: the item's sequence number, or for a marker the sequence
// number it goes after and a 1, in digits of a fixed width, so that the ids
// of one broker grow in the order it publishes.
func itemID(seq uint64, marker bool) string {
	if marker {
		return fmt.Sprintf("%020d1", seq)
	}
	return fmt.Sprintf("%020d0", seq)
}

// marker is a pending resync marker: it goes out after the queued items up
// to seq after. local says this instance has reported the loss already.
type marker struct {
	after uint64
	local bool
}

// Broker connects one instance to the others. Its methods are safe for
// concurrent use.
type Broker struct {
	cfg     Config
	client  redis.UniversalClient
	own     bool // New opened client; Close closes it
	log     *slog.Logger
	origin  string        // random id of this broker, idLen hex digits
	control string        // the control channel, Prefix+peersChannel
	start   time.Time     // the origin of the broker's clock
	sentTTL time.Duration // of the key that remembers what this broker published last

	publishScript, historyScript *redis.Script

	// handed is, per topic subscribed, the place of the message or marker
	// handed last; of the receive goroutine.
	handed map[string]position

	// message and lost are the handlers given to Run.
	message func(topic, epoch string, offset uint64, payload []byte)
	lost    func(topics []string)

	// ctx ends the subscription side at Close; sendCtx ends the publishing
	// side when Close gives up flushing.
	ctx, sendCtx       context.Context
	cancel, cancelSend context.CancelFunc

	queue     chan item
	kickSend  chan struct{}
	kickWatch chan struct{}
	kickBeat  chan struct{} // a heartbeat now
	hello     atomic.Bool   // the next heartbeat asks for the peers' at once
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	done      chan struct{}
	closeErr  error // of closing client; read after done is closed

	// Of the send goroutine: a heartbeat reached Redis once; the last
	// round trip to Redis succeeded.
	announced, sendOK bool

	qmu     sync.Mutex // orders enqueueing; taken before mu
	seq     uint64     // of the last item offered
	queued  uint64     // seq of the last item queued
	qclosed bool

	mu      sync.Mutex
	running bool // Run was called
	closed  bool
	markers map[string]marker
	want    map[string]bool // topics with local interest
	ps      *redis.PubSub   // the current subscription connection
	gen     uint64          // counts subscription connections
	// state of the current connection
	connecting bool            // establishing it
	up         bool            // established: watched topics are subscribed
	initLeft   int             // confirmations missing before up
	sent       map[string]bool // topics SUBSCRIBEd (and not UNSUBSCRIBEd) on it
	pending    map[string]int  // topics' commands not confirmed yet
	stale      map[string]bool // topics that gained listeners while not up
	changed    chan struct{}   // closed and replaced when the state changes
	// floor is, per topic subscribed while up, its position read right
	// before the SUBSCRIBE: when the connection drops before anything of
	// the topic was handed, the topic catches up from there (see
	// session).
	floor map[string]position
}

// New returns a broker. It starts nothing: Run connects to Redis, in the
// background. A Redis that is down is no error; a configuration that cannot
// work (no URL and no Client, both, a URL that does not parse, a negative
// size or duration) is.
func New(cfg Config) (*Broker, error) {
	switch {
	case cfg.URL == "" && cfg.Client == nil:
		return nil, errors.New("redisbroker: a URL or a Client is required")
	case cfg.URL != "" && cfg.Client != nil:
		return nil, errors.New("redisbroker: URL and Client exclude each other")
	case cfg.QueueSize < 0:
		return nil, fmt.Errorf("redisbroker: queue size must not be negative, got %d", cfg.QueueSize)
	case cfg.HistorySize < 0:
		return nil, fmt.Errorf("redisbroker: history size must not be negative, got %d", cfg.HistorySize)
	case cfg.MinBackoff < 0 || cfg.MaxBackoff < 0 || cfg.HealthCheck < 0 || cfg.ReadyTimeout < 0 || cfg.Heartbeat < 0 ||
		cfg.HistoryTTL < 0 || cfg.HistoryMetaTTL < 0 || cfg.MaxOutage < 0:
		return nil, errors.New("redisbroker: durations must not be negative")
	}
	client, own := cfg.Client, false
	if client == nil {
		opts, err := parseURL(cfg.URL)
		if err != nil {
			return nil, err
		}
		client, own = redis.NewClient(opts), true
	}
	cfg.Prefix = cmp.Or(cfg.Prefix, DefaultPrefix)
	cfg.QueueSize = cmp.Or(cfg.QueueSize, DefaultQueueSize)
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, DefaultMinBackoff)
	cfg.MaxBackoff = max(cmp.Or(cfg.MaxBackoff, DefaultMaxBackoff), cfg.MinBackoff)
	cfg.HealthCheck = cmp.Or(cfg.HealthCheck, DefaultHealthCheck)
	cfg.ReadyTimeout = cmp.Or(cfg.ReadyTimeout, DefaultReadyTimeout)
	cfg.Heartbeat = min(cmp.Or(cfg.Heartbeat, DefaultHeartbeat), maxInterval)
	cfg.HistorySize = cmp.Or(cfg.HistorySize, DefaultHistorySize)
	cfg.HistoryTTL = cmp.Or(cfg.HistoryTTL, DefaultHistoryTTL)
	cfg.HistoryMetaTTL = max(cmp.Or(cfg.HistoryMetaTTL, DefaultHistoryMetaTTL), cfg.HistoryTTL)
	cfg.MaxOutage = cmp.Or(cfg.MaxOutage, DefaultMaxOutage)
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	b := &Broker{
		cfg:       cfg,
		client:    client,
		own:       own,
		log:       cmp.Or(cfg.Logger, slog.Default()),
		origin:    hex.EncodeToString(id),
		control:   cfg.Prefix + peersChannel,
		start:     time.Now(),
		queue:     make(chan item, cfg.QueueSize),
		kickSend:  make(chan struct{}, 1),
		kickWatch: make(chan struct{}, 1),
		kickBeat:  make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		markers:   map[string]marker{},
		handed:    map[string]position{},
		want:      map[string]bool{},
		sent:      map[string]bool{},
		pending:   map[string]int{},
		stale:     map[string]bool{},
		floor:     map[string]position{},
		changed:   make(chan struct{}),
		// Until the first attempt fails, Ready waits for it.
		connecting: true,
	}
	// A retry of a publish must find the id of what was published last
	// until the last attempt is over.
	b.sentTTL = cfg.MaxOutage + publishTimeout + cfg.MaxBackoff + time.Minute
	b.publishScript = redis.NewScript(publishLua)
	b.historyScript = redis.NewScript(historyLua)
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.sendCtx, b.cancelSend = context.WithCancel(context.Background())
	return b, nil
}

// parseURL parses a Redis URL. Its errors never repeat the URL, which may
// hold a password.
func parseURL(raw string) (*redis.Options, error) {
	opts, err := redis.ParseURL(raw)
	if err == nil {
		return opts, nil
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // url.Error quotes the whole URL
	}
	msg := err.Error()
	if u, perr := url.Parse(raw); perr == nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
	}
	return nil, fmt.Errorf("redisbroker: invalid Redis URL: %s", msg)
}

// Run starts the broker: it connects to Redis in the background, and keeps
// reconnecting until Close. From then on it hands every message of a
// watched topic to message, on one goroutine, in the order of the topic,
// with its epoch and offset, and the topics whose messages this instance's
// listeners may have missed to lost, from any of its goroutines. Per topic,
// the offsets handed grow by one within an epoch, except after the topic
// was reported lost or unwatched. Both must only queue: they
// must not block and must not call the broker. Run may be called once; it
// fails after Close.
func (b *Broker) Run(message func(topic, epoch string, offset uint64, payload []byte), lost func(topics []string)) error {
	if message == nil || lost == nil {
		return errors.New("redisbroker: Run needs a message and a lost handler")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return errors.New("redisbroker: Run after Close")
	case b.running:
		return errors.New("redisbroker: Run called twice")
	}
	b.running = true
	b.message, b.lost = message, lost
	b.wg.Add(3)
	go b.receive()
	go b.manage()
	go b.send()
	return nil
}

// Channel is the Redis channel of topic.
func (b *Broker) Channel(topic string) string { return b.cfg.Prefix + topic }

// Publish queues payload for every instance watching topic, this one
// included; payload must not be modified afterwards. It never blocks: when
// the queue is full the message is dropped and a resync marker takes its
// place. What is published before Run is sent once Run starts.
func (b *Broker) Publish(topic string, payload []byte) { b.enqueue(topic, kindMessage, payload) }

// Resync tells the listeners of topic on every instance, this one included,
// to load their state again, in order with the topic's messages.
func (b *Broker) Resync(topic string) { b.enqueue(topic, kindResync, nil) }

func (b *Broker) enqueue(topic string, kind byte, data []byte) {
	b.qmu.Lock()
	defer b.qmu.Unlock()
	if b.qclosed {
		return
	}
	b.seq++
	select {
	case b.queue <- item{seq: b.seq, topic: topic, kind: kind, data: data}:
		b.queued = b.seq
		return
	default:
	}
	// The marker goes out after everything queued before the lost item.
	b.mu.Lock()
	m := b.markers[topic]
	m.after = max(m.after, b.queued)
	b.markers[topic] = m
	b.mu.Unlock()
	kick(b.kickSend)
}

// Watch records whether this instance has listeners of topic: the broker
// subscribes to the topic's channel when it gains its first and
// unsubscribes when it loses its last. It never blocks, so it may be called
// with the caller's locks held. Topics that start with '#' name the
// broker's own channels: Watch ignores them.
func (b *Broker) Watch(topic string, active bool) {
	if strings.HasPrefix(topic, "#") {
		b.log.Error("redisbroker: a topic must not start with '#'", "topic", topic)
		return
	}
	b.mu.Lock()
	if active {
		b.want[topic] = true
	} else {
		delete(b.want, topic)
	}
	b.mu.Unlock()
	kick(b.kickWatch)
}

// Ready waits until the messages of topic published from now on reach this
// instance, after Watch(topic, true). It reports false when that cannot be
// promised (Redis is unreachable, or did not confirm the subscription in
// ReadyTimeout, or ctx ended first); the topic is then reported lost once the
// subscription is back, so a listener that subscribed meanwhile learns that
// it must load its state again.
func (b *Broker) Ready(ctx context.Context, topic string) bool {
	timer := time.NewTimer(b.cfg.ReadyTimeout)
	defer timer.Stop()
	for {
		b.mu.Lock()
		switch {
		case b.closed:
			b.mu.Unlock()
			return false
		case b.up && (!b.want[topic] || b.sent[topic] && b.pending[topic] == 0):
			b.mu.Unlock()
			return true
		case !b.up && !b.connecting:
			b.stale[topic] = true
			b.mu.Unlock()
			return false
		}
		changed, gen := b.changed, b.gen
		b.mu.Unlock()
		select {
		case <-changed:
			continue
		case <-ctx.Done():
		case <-timer.C:
		}
		b.mu.Lock()
		b.stale[topic] = true
		up := b.up && b.gen == gen
		b.mu.Unlock()
		if up {
			// Connected but not confirming: start over with a new connection.
			b.fail(gen, errors.New("subscription not confirmed in time"))
		}
		return false
	}
}

// Close stops the broker: it sends what is queued (until ctx ends), closes
// the subscription and waits for its goroutines, or until ctx ends; then it
// closes the connections it opened from URL. After Close returns nil, the
// handlers are not called again. It may be called more than once, also
// before Run or instead of it. Publish after Close drops the message.
func (b *Broker) Close(ctx context.Context) error {
	b.closeOnce.Do(func() {
		b.qmu.Lock()
		b.qclosed = true
		b.qmu.Unlock()
		b.mu.Lock()
		b.closed = true
		ps := b.ps
		b.broadcast()
		b.mu.Unlock()
		close(b.stop)
		b.cancel()
		if ps != nil {
			_ = ps.Close()
		}
		go func() {
			b.wg.Wait()
			b.cancelSend()
			if b.own {
				if err := b.client.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
					b.closeErr = fmt.Errorf("redisbroker: close Redis client: %w", err)
				}
			}
			close(b.done)
		}()
	})
	select {
	case <-b.done:
		return b.closeErr
	case <-ctx.Done():
		b.cancelSend()
		return ctx.Err()
	}
}

func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// broadcast wakes the goroutines waiting in Ready. b.mu must be held.
func (b *Broker) broadcast() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// sleep waits d, or until the broker stops; it reports false then.
func (b *Broker) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-b.stop:
		return false
	}
}

// receive keeps the subscription connection, reconnecting with backoff.
func (b *Broker) receive() {
	defer b.wg.Done()
	peers := &peerSet{
		known:    map[string]time.Duration{},
		deadline: map[string]time.Duration{},
		probe:    time.AfterFunc(time.Hour, func() { kick(b.kickBeat) }),
	}
	peers.probe.Stop()
	defer peers.probe.Stop()
	backoff := b.cfg.MinBackoff
	var dropped time.Time // when the last established connection dropped, until MaxOutage passed
	for {
		if !dropped.IsZero() && time.Since(dropped) >= b.cfg.MaxOutage {
			b.giveUp()
			dropped = time.Time{}
		}
		wasUp, err := b.session(peers)
		if b.stopped() {
			return
		}
		if wasUp {
			dropped, backoff = time.Now(), b.cfg.MinBackoff
			b.log.Warn("redisbroker: Redis subscription lost; reconnecting", "err", err)
		} else {
			b.log.Warn("redisbroker: cannot subscribe on Redis; retrying", "err", err, "backoff", backoff)
		}
		wait := backoff
		if !dropped.IsZero() {
			wait = max(min(wait, time.Until(dropped.Add(b.cfg.MaxOutage))), 0)
		}
		if !b.sleep(wait) {
			return
		}
		backoff = min(2*backoff, b.cfg.MaxBackoff)
	}
}

// giveUp reports every watched topic lost, when the subscription connection
// has been down for MaxOutage: what they miss is not caught up. The topics
// that gain listeners from now on while it is down are reported lost once
// it is back, as usual.
func (b *Broker) giveUp() {
	b.mu.Lock()
	topics := slices.Sorted(maps.Keys(b.want))
	clear(b.stale)
	b.mu.Unlock()
	clear(b.handed)
	b.log.Warn("redisbroker: Redis subscription down for too long; the listeners of every watched topic resync", "topics", len(topics))
	if len(topics) > 0 {
		b.lost(topics)
	}
}

func (b *Broker) stopped() bool {
	select {
	case <-b.stop:
		return true
	default:
		return false
	}
}

// session runs one subscription connection until it fails or the broker
// stops, and reports whether it got established. It subscribes to the
// control channel and to the watched topics' channels.
//
// When the connection drops, what was handed of each watched topic is
// kept: once the next one is established, each topic catches up from
// there. A watched topic of which nothing was handed catches up from its
// floor, the position read right before its SUBSCRIBE; without one it is
// reported lost then: nothing says what it missed.
func (b *Broker) session(peers *peerSet) (wasUp bool, err error) {
	ps := b.client.Subscribe(b.ctx) // connects on first use
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		_ = ps.Close()
		return false, errors.New("closed")
	}
	b.gen++
	gen := b.gen
	b.ps, b.connecting, b.up = ps, true, false
	topics := slices.Sorted(maps.Keys(b.want))
	clear(b.sent)
	clear(b.pending)
	for _, t := range topics {
		b.sent[t] = true
		b.pending[t] = 1
	}
	b.initLeft = len(topics) + 1
	var floors []string // topics without a place to catch up from
	for _, t := range topics {
		_, handed := b.handed[t]
		if _, ok := b.floor[t]; !ok && !handed && !b.stale[t] {
			floors = append(floors, t)
		}
	}
	for t := range b.handed {
		if !b.sent[t] {
			delete(b.handed, t) // unwatched meanwhile
		}
	}
	for t := range b.floor {
		if !b.want[t] {
			delete(b.floor, t)
		}
	}
	b.broadcast()
	b.mu.Unlock()

	defer func() {
		b.mu.Lock()
		wasUp = b.up
		if wasUp {
			for t := range b.want {
				if _, ok := b.handed[t]; ok {
					continue
				}
				if f, ok := b.floor[t]; ok {
					b.handed[t] = f // nothing came since the SUBSCRIBE
				} else {
					b.stale[t] = true
				}
			}
		}
		b.ps, b.connecting, b.up = nil, false, false
		b.broadcast()
		b.mu.Unlock()
		_ = ps.Close()
	}()

	// The peers' heartbeats missed while not subscribed say nothing: the
	// peers known get a new deadline once the connection is established.
	peers.suspend()
	b.readFloors(floors)
	if err := ps.Subscribe(b.ctx, append([]string{b.control}, b.channels(topics)...)...); err != nil {
		return false, err
	}
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(b.ctx, b.cfg.HealthCheck)
		if err != nil {
			if !isTimeout(err) || pinged {
				return false, err
			}
			if err := ps.Ping(b.ctx); err != nil {
				return false, err
			}
			pinged = true
			continue
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Subscription:
			if upNow, lost, catch := b.confirm(gen, m); upNow {
				peers.resume(b.clock())
				b.afterUp(lost, catch)
			}
		case *redis.Message:
			if m.Channel == b.control {
				b.heard(m.Payload, peers)
			} else {
				b.dispatch(m)
			}
		}
	}
}

func (b *Broker) channels(topics []string) []string {
	out := make([]string, len(topics))
	for i, t := range topics {
		out[i] = b.Channel(t)
	}
	return out
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// confirm counts a SUBSCRIBE or UNSUBSCRIBE confirmation. When it
// establishes the connection, it reports so, with the topics to report
// lost and those to catch up (see goUp).
func (b *Broker) confirm(gen uint64, m *redis.Subscription) (upNow bool, lost, catch []string) {
	topic, ok := strings.CutPrefix(m.Channel, b.cfg.Prefix)
	if !ok {
		return false, nil, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if gen != b.gen {
		return false, nil, nil
	}
	if m.Channel != b.control {
		if b.pending[topic] > 1 {
			b.pending[topic]--
		} else {
			delete(b.pending, topic)
		}
		if m.Kind == "unsubscribe" {
			delete(b.handed, topic) // what comes after a new SUBSCRIBE starts over
		}
	}
	if !b.up {
		if b.initLeft--; b.initLeft == 0 {
			lost, catch = b.goUp()
			upNow = true
		}
	}
	b.broadcast()
	return upNow, lost, catch
}

// goUp marks the connection established. It returns the topics to report
// lost, those that gained listeners while it was not (or of which nothing
// was handed before it dropped), and the others of which something was
// handed, which catch up. b.mu must be held.
func (b *Broker) goUp() (lost, catch []string) {
	b.up, b.connecting = true, false
	lost = slices.Sorted(maps.Keys(b.stale))
	clear(b.stale)
	for _, t := range lost {
		delete(b.handed, t)
	}
	for t := range b.sent {
		if _, ok := b.handed[t]; ok {
			catch = append(catch, t)
		}
	}
	slices.Sort(catch)
	return lost, catch
}

// afterUp runs on the receive goroutine once the connection is
// established, before it reads anything more from it.
func (b *Broker) afterUp(lost, catch []string) {
	b.log.Info("redisbroker: subscribed on Redis")
	if len(lost) > 0 {
		b.lost(lost)
	}
	kick(b.kickWatch) // interest that changed while connecting
	// Learn the peers at once, rather than in a heartbeat interval.
	b.hello.Store(true)
	kick(b.kickBeat)
	b.catchUp(catch)
}

// peerSet is what the receive goroutine knows of the peers it heard.
type peerSet struct {
	// known is, per peer heard, its heartbeat interval.
	known map[string]time.Duration
	// deadline is, per peer, the time of this broker's clock after which
	// it counts as dead.
	deadline map[string]time.Duration
	// probe sends a heartbeat of this broker at the earliest deadline
	// (armed), so that a dead peer is found then, not up to a heartbeat
	// interval later.
	probe *time.Timer
	armed time.Duration // 0: not armed
}

// suspend drops the deadlines, when the subscription connection is being
// (re)established: what the peers sent meanwhile was not heard.
func (ps *peerSet) suspend() {
	clear(ps.deadline)
	ps.armed = 0
	ps.probe.Stop()
}

// resume gives each known peer not heard since suspend a deadline from now,
// when the connection is established.
func (ps *peerSet) resume(now time.Duration) {
	for origin, interval := range ps.known {
		if _, ok := ps.deadline[origin]; !ok {
			d := now + missedBeats*interval
			ps.deadline[origin] = d
			ps.arm(d, now)
		}
	}
}

// forget drops a peer that closed or died.
func (ps *peerSet) forget(origin string) {
	delete(ps.known, origin)
	delete(ps.deadline, origin)
}

// arm sets the probe to fire just after deadline d, unless it fires before.
func (ps *peerSet) arm(d, now time.Duration) {
	if ps.armed != 0 && ps.armed <= d {
		return
	}
	ps.armed = d
	ps.probe.Reset(d - now + time.Millisecond)
}

// heard handles a payload of the control channel.
func (b *Broker) heard(p string, peers *peerSet) {
	if len(p) < 1+idLen {
		return
	}
	kind, origin := p[0], p[1:1+idLen]
	switch kind {
	case kindBeat, kindHello:
		interval, clock, ok := parseBeat(p[1+idLen:])
		if !ok {
			return
		}
		if origin == b.origin {
			b.checkPeers(clock, peers)
			return
		}
		now := b.clock()
		d := now + missedBeats*interval
		peers.known[origin] = interval
		peers.deadline[origin] = d
		peers.arm(d, now)
		if kind == kindHello {
			kick(b.kickBeat)
		}
	case kindFarewell:
		if origin != b.origin {
			peers.forget(origin)
		}
	}
}

// checkPeers runs when this broker's own heartbeat, sent at sent on its
// clock, comes back from Redis. Redis sends what it receives in one order:
// a peer whose deadline passed before sent and that was alive would have
// had its heartbeats through before this one. Such a peer is dead, and
// every watched topic may have lost what it had queued.
func (b *Broker) checkPeers(sent time.Duration, peers *peerSet) {
	var dead []string
	peers.armed = 0
	now := b.clock()
	for origin, d := range peers.deadline {
		if sent > d {
			peers.forget(origin)
			dead = append(dead, origin)
		} else {
			peers.arm(d, now)
		}
	}
	if peers.armed == 0 {
		peers.probe.Stop()
	}
	if len(dead) == 0 {
		return
	}
	b.mu.Lock()
	topics := slices.Sorted(maps.Keys(b.want))
	b.mu.Unlock()
	b.log.Warn("redisbroker: peers fell silent; the listeners of every watched topic resync", "peers", dead, "topics", len(topics))
	if len(topics) > 0 {
		b.lost(topics)
	}
}

// clock is the time since New, on the monotonic clock.
func (b *Broker) clock() time.Duration { return time.Since(b.start) }

// beat encodes a heartbeat of kind.
func (b *Broker) beat(kind byte) string {
	return fmt.Sprintf("%c%s%016x%016x", kind, b.origin, uint64(b.cfg.Heartbeat), uint64(b.clock()))
}

// parseBeat decodes the interval and the clock of a heartbeat.
func parseBeat(p string) (interval, clock time.Duration, ok bool) {
	if len(p) < 2*idLen {
		return 0, 0, false
	}
	i, err1 := strconv.ParseUint(p[:idLen], 16, 63)
	c, err2 := strconv.ParseUint(p[idLen:2*idLen], 16, 63)
	if err1 != nil || err2 != nil || i == 0 {
		return 0, 0, false
	}
	return min(time.Duration(i), maxInterval), time.Duration(c), true
}

// fail ends connection gen, if it is still the current one, so that the
// receiver starts over.
func (b *Broker) fail(gen uint64, err error) {
	b.mu.Lock()
	ps := b.ps
	if gen != b.gen || ps == nil {
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	b.log.Warn("redisbroker: Redis subscription failed", "err", err)
	_ = ps.Close()
}

// manage applies changes of interest to the current connection.
func (b *Broker) manage() {
	defer b.wg.Done()
	for {
		select {
		case <-b.stop:
			return
		case <-b.kickWatch:
			b.apply()
		}
	}
}

func (b *Broker) apply() {
	b.mu.Lock()
	if !b.up || b.ps == nil {
		b.mu.Unlock()
		return // the next connection subscribes to what is wanted then
	}
	ps, gen := b.ps, b.gen
	var sub, unsub, floors []string
	for t := range b.want {
		if !b.sent[t] {
			b.sent[t] = true
			b.pending[t]++
			sub = append(sub, b.Channel(t))
			floors = append(floors, t)
		}
	}
	for t := range b.sent {
		if !b.want[t] {
			delete(b.sent, t)
			delete(b.floor, t)
			b.pending[t]++
			unsub = append(unsub, b.Channel(t))
		}
	}
	b.mu.Unlock()
	b.readFloors(floors)
	var err error
	if len(sub) > 0 {
		err = ps.Subscribe(b.ctx, sub...)
	}
	if err == nil && len(unsub) > 0 {
		err = ps.Unsubscribe(b.ctx, unsub...)
	}
	if err != nil {
		b.fail(gen, err)
	}
}

// readFloors reads the position of each of topics, before they are
// SUBSCRIBEd, within fillTimeout in all. A topic whose position is not
// read has no floor: if the connection drops before anything of it is
// handed, it is reported lost.
func (b *Broker) readFloors(topics []string) {
	ctx, cancel := context.WithTimeout(b.ctx, fillTimeout)
	defer cancel()
	var err error
	for _, t := range topics {
		var at position
		if err == nil {
			at.epoch, at.offset, _, err = b.read(ctx, t, 0, 0)
		}
		b.mu.Lock()
		if err == nil && b.want[t] {
			b.floor[t] = at
		} else {
			delete(b.floor, t)
		}
		b.mu.Unlock()
	}
}

// send publishes the queue to Redis, in order, a batch per round trip, and
// the heartbeats, the first before anything else. A batch that fails is
// sent again, with backoff, for up to MaxOutage (publish.lua publishes
// nothing twice); then it is dropped (see drop). When the broker stops it
// sends what is queued and, when all of it went out, the farewell.
func (b *Broker) send() {
	defer b.wg.Done()
	tick := time.NewTicker(b.cfg.Heartbeat)
	defer tick.Stop()
	var last uint64       // seq of the last item sent or dropped
	var batch []item      // being sent; kept while it is retried
	var failing time.Time // when the first of the failing attempts under way started
	backoff := b.cfg.MinBackoff
	beat := byte(kindBeat)
	for {
		if batch == nil {
			select {
			case it := <-b.queue: // what is queued goes before a heartbeat that is due
				batch = b.fill(append(batch, it))
			default:
			}
		}
		if beat == 0 && batch == nil {
			select {
			case it := <-b.queue:
				batch = b.fill(append(batch, it))
			case <-b.kickSend:
			case <-tick.C:
				beat = kindBeat
			case <-b.kickBeat:
				beat = kindBeat
			case <-b.stop:
				b.stopSending(nil, last, tick.C)
				return
			}
		}
		if beat != 0 && b.hello.Swap(false) {
			beat = kindHello
		}
		attempt := time.Now()
		err := b.publish(batch, last, beat)
		beat = 0
		if err == nil {
			last = lastSeq(batch, last)
			batch, failing, backoff = nil, time.Time{}, b.cfg.MinBackoff
			continue
		}
		if failing.IsZero() {
			failing = attempt
		}
		if time.Since(failing)+backoff >= b.cfg.MaxOutage { // the next attempt would start past it
			last = b.drop(batch, last, err)
			batch, failing = nil, time.Time{}
		} else {
			b.log.Warn("redisbroker: publish to Redis failed; retrying", "err", err, "messages", len(batch), "backoff", backoff)
		}
		if !b.sleep(backoff) {
			b.stopSending(batch, last, tick.C)
			return
		}
		backoff = min(2*backoff, b.cfg.MaxBackoff)
		b.mu.Lock()
		more := len(b.markers) > 0
		b.mu.Unlock()
		if more {
			kick(b.kickSend)
		}
	}
}

// lastSeq is the seq of batch's last item, or last when batch is empty.
func lastSeq(batch []item, last uint64) uint64 {
	if len(batch) == 0 {
		return last
	}
	return batch[len(batch)-1].seq
}

// stopSending flushes batch and the queue and says farewell when all of it
// went out: the peers then know that nothing of this broker is missing.
// Otherwise they find out from the heartbeats that stop.
func (b *Broker) stopSending(batch []item, last uint64, tick <-chan time.Time) {
	if !b.flush(batch, last, tick) || !b.announced || !b.sendOK {
		return // no peer knows it, or Redis is not reachable
	}
	ctx, cancel := context.WithTimeout(b.sendCtx, publishTimeout)
	defer cancel()
	if err := b.client.Publish(ctx, b.control, string(kindFarewell)+b.origin).Err(); err != nil {
		b.log.Warn("redisbroker: farewell not published; peers will resync", "err", err)
	}
}

// fill adds to batch what is queued, up to maxBatch items.
func (b *Broker) fill(batch []item) []item {
	for len(batch) < maxBatch {
		select {
		case it := <-b.queue:
			batch = append(batch, it)
		default:
			return batch
		}
	}
	return batch
}

// flush sends batch and what is queued when the broker stops, one attempt
// per batch, with a heartbeat when one is due. It reports whether
// everything went out.
func (b *Broker) flush(batch []item, last uint64, tick <-chan time.Time) bool {
	for {
		if batch == nil {
			batch = b.fill(nil)
		}
		b.mu.Lock()
		markers := len(b.markers)
		b.mu.Unlock()
		if len(batch) == 0 && markers == 0 {
			return true
		}
		var beat byte
		select {
		case <-tick:
			beat = kindBeat
		default:
		}
		if err := b.publish(batch, last, beat); err != nil {
			b.drop(batch, last, err)
			return false
		}
		if len(batch) == 0 {
			// Markers that are not due yet stay unsent.
			b.mu.Lock()
			defer b.mu.Unlock()
			return len(b.markers) == 0
		}
		last, batch = lastSeq(batch, last), nil
	}
}

// due is a resync marker due to be sent.
type due struct {
	topic string
	marker
}

// publish sends a heartbeat of kind beat (none when 0, unless no heartbeat
// got through yet), batch and the markers due with it (those after items up
// to batch's last, or up to last when batch is empty) in one round trip,
// each message and marker through publish.lua. A heartbeat alone that fails
// is no loss: publish reports an error only when batch or markers may not
// have gone out.
func (b *Broker) publish(batch []item, last uint64, beat byte) error {
	hi := lastSeq(batch, last)
	var markers []due
	b.mu.Lock()
	for t, m := range b.markers {
		if m.after <= hi {
			markers = append(markers, due{t, m})
		}
	}
	b.mu.Unlock()
	if len(batch) == 0 && len(markers) == 0 {
		if beat != 0 {
			// Close ends a heartbeat at once: it says nothing then. An
			// attempt lasts at most an interval, so that while Redis is
			// unreachable heartbeats do not hold up the queue.
			ctx, cancel := context.WithTimeout(b.ctx, min(publishTimeout, b.cfg.Heartbeat))
			defer cancel()
			switch err := b.client.Publish(ctx, b.control, b.beat(beat)).Err(); {
			case err == nil:
				b.sendOK, b.announced = true, true
			case b.ctx.Err() == nil: // not ended by Close
				b.sendOK = false
				b.log.Debug("redisbroker: heartbeat not published", "err", err)
			}
		}
		return nil
	}
	slices.SortFunc(markers, func(x, y due) int { return cmp.Compare(x.after, y.after) })
	ctx, cancel := context.WithTimeout(b.sendCtx, publishTimeout)
	defer cancel()
	if beat == 0 && !b.announced {
		beat = kindBeat // no peer may hear a message of a broker it never heard of
	}
	err := b.exec(ctx, batch, hi, markers, beat)
	if redis.HasErrorPrefix(err, "NOSCRIPT") {
		// Redis lost its scripts (restarted): nothing of the script ran.
		if err = b.publishScript.Load(ctx, b.client).Err(); err == nil {
			err = b.exec(ctx, batch, hi, markers, beat)
		}
	}
	b.sendOK = err == nil
	b.announced = b.announced || b.sendOK && beat != 0
	if err != nil {
		return err
	}
	b.mu.Lock()
	for _, m := range markers {
		if b.markers[m.topic] == m.marker { // not renewed meanwhile
			delete(b.markers, m.topic)
		}
	}
	b.mu.Unlock()
	return nil
}

// exec sends, in one pipeline, a heartbeat of kind beat (none when 0),
// batch, and markers in their place among its items, the rest after them.
func (b *Broker) exec(ctx context.Context, batch []item, hi uint64, markers []due, beat byte) error {
	pipe := b.client.Pipeline()
	if beat != 0 {
		pipe.Publish(ctx, b.control, b.beat(beat))
	}
	epoch := newEpoch()
	i := 0
	addMarkers := func(upTo uint64) {
		for ; i < len(markers) && markers[i].after <= upTo; i++ {
			kind := byte(kindResync)
			if markers[i].local {
				kind = kindResyncO
			}
			b.add(ctx, pipe, markers[i].topic, kind, itemID(markers[i].after, true), nil, epoch)
		}
	}
	for _, it := range batch {
		addMarkers(it.seq - 1)
		b.add(ctx, pipe, it.topic, it.kind, itemID(it.seq, false), it.data, epoch)
	}
	addMarkers(hi)
	_, err := pipe.Exec(ctx)
	return err
}

// add queues on pipe the publication of a message or marker through
// publish.lua. epoch becomes topic's if it has none.
func (b *Broker) add(ctx context.Context, pipe redis.Pipeliner, topic string, kind byte, id string, data []byte, epoch string) {
	meta, history := b.keys(topic)
	b.publishScript.EvalSha(ctx, pipe, []string{meta, history, b.sentKey(topic)},
		string(kind), b.origin, id, data, b.Channel(topic), epoch,
		b.cfg.HistorySize, ms(b.cfg.HistoryTTL), ms(b.cfg.HistoryMetaTTL), ms(b.sentTTL))
}

// drop gives up on batch: everything queued now would reach Redis after a
// gap, so it drops that too, reports their topics lost here at once and
// leaves a marker of each for the other instances, to send as soon as Redis
// takes it. It returns the seq of the last item dropped, or last.
func (b *Broker) drop(batch []item, last uint64, err error) uint64 {
	batch = append(batch, b.drain()...)
	hi := lastSeq(batch, last)
	lost := map[string]bool{}
	b.mu.Lock()
	for _, it := range batch {
		lost[it.topic] = true
	}
	for t, m := range b.markers {
		if !m.local {
			lost[t] = true
		}
	}
	for t := range lost {
		b.markers[t] = marker{after: hi, local: true}
	}
	b.mu.Unlock()
	b.log.Warn("redisbroker: publish to Redis failed; subscribers resync", "err", err, "messages", len(batch))
	if len(lost) > 0 {
		b.lost(slices.Sorted(maps.Keys(lost)))
	}
	return hi
}

// drain empties the queue.
func (b *Broker) drain() []item {
	var out []item
	for {
		select {
		case it := <-b.queue:
			out = append(out, it)
		default:
			return out
		}
	}
}
