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
// Redis pub/sub keeps nothing, so messages can be lost: when the
// subscription connection drops (or a health check finds it dead), when the
// outbound queue is full, when a publish fails, when a subscribe is not
// confirmed in time. The broker never lets that pass silently: it reports
// the topics whose messages may have been lost to the lost handler given to
// [Broker.Run] on every instance that may have missed something, at the
// point of the topic's order where the loss happened:
//
//   - A dropped subscription: at once on this instance, for every topic it
//     watches; and again, after reconnecting with backoff, for the topics that
//     gained listeners while it was not subscribed.
//   - A full queue: a resync marker takes the lost message's place on the
//     topic's channel and reaches every instance, this one included, after
//     the messages queued before it.
//   - A failed publish: the batch and everything still queued is dropped and
//     reported at once on this instance; a resync marker follows for the
//     others as soon as Redis takes it.
//   - A peer that vanished: an instance that dies (killed, crashed, cut off
//     from Redis) may have had messages queued that never reached Redis.
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
// What a broker knows of its peers is forgotten whenever its subscription
// connection is (re)established; it then asks every peer for a heartbeat at
// once. A broker's first heartbeat goes out before anything else it
// publishes. So a broker misses the death of a peer only when the peer dies
// before this broker heard from it: before anything the peer published
// reached Redis, or in the round trip in which the peers answer a broker
// that just (re)subscribed.
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
	// Prefix is put before each topic to name its Redis channel. Every
	// instance of an application must use the same; applications sharing a
	// Redis server must use different ones, as pub/sub channels are not
	// scoped by database number. Empty means DefaultPrefix.
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
}

// A payload on a channel is a kind byte, the publishing broker's id (16 hex
// digits) and, for a message, its sequence number (16 hex digits) and the
// message. A receiver drops a message whose sequence number is not above
// the last it had from that broker: a pipeline retried after a lost reply
// publishes nothing twice.
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

// payload encodes it for its channel.
func (b *Broker) payload(it item) string {
	if it.kind != kindMessage {
		return string(it.kind) + b.origin
	}
	return string(kindMessage) + b.origin + fmt.Sprintf("%016x", it.seq) + string(it.data)
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
	origin  string            // random id of this broker, idLen hex digits
	last    map[string]uint64 // per origin, the last sequence number received
	control string            // the control channel, Prefix+peersChannel
	start   time.Time         // the origin of the broker's clock

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
	case cfg.MinBackoff < 0 || cfg.MaxBackoff < 0 || cfg.HealthCheck < 0 || cfg.ReadyTimeout < 0 || cfg.Heartbeat < 0:
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
		last:      map[string]uint64{},
		want:      map[string]bool{},
		sent:      map[string]bool{},
		pending:   map[string]int{},
		stale:     map[string]bool{},
		changed:   make(chan struct{}),
		// Until the first attempt fails, Ready waits for it.
		connecting: true,
	}
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
// watched topic to message, on one goroutine, in the order Redis delivers
// them, and the topics whose messages this instance's listeners may have
// missed to lost, from any of its goroutines. Both must only queue: they
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

// Position reports no position: this broker keeps no history yet.
func (b *Broker) Position(context.Context, string) (string, uint64, error) { return "", 0, nil }

// History reports that the history does not reach back: this broker keeps
// none yet.
func (b *Broker) History(context.Context, string, string, uint64, func(uint64, []byte)) (string, uint64, bool, error) {
	return "", 0, false, nil
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
	backoff := b.cfg.MinBackoff
	for {
		wasUp, err := b.session()
		if b.stopped() {
			return
		}
		if wasUp {
			backoff = b.cfg.MinBackoff
			b.log.Warn("redisbroker: Redis subscription lost; reconnecting", "err", err)
		} else {
			b.log.Warn("redisbroker: cannot subscribe on Redis; retrying", "err", err, "backoff", backoff)
		}
		if !b.sleep(backoff) {
			return
		}
		backoff = min(2*backoff, b.cfg.MaxBackoff)
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
func (b *Broker) session() (wasUp bool, err error) {
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
	b.broadcast()
	b.mu.Unlock()

	defer func() {
		b.mu.Lock()
		wasUp = b.up
		lost := slices.Collect(maps.Keys(b.want))
		b.ps, b.connecting, b.up = nil, false, false
		b.broadcast()
		b.mu.Unlock()
		_ = ps.Close()
		if wasUp && len(lost) > 0 {
			b.lost(lost)
		}
	}()

	if err := ps.Subscribe(b.ctx, append([]string{b.control}, b.channels(topics)...)...); err != nil {
		return false, err
	}
	// What was known of the peers before this connection is stale: a
	// peer heard again is known again.
	peers := &peerSet{deadline: map[string]time.Duration{}, probe: time.AfterFunc(time.Hour, func() { kick(b.kickBeat) })}
	peers.probe.Stop()
	defer peers.probe.Stop()
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
			b.confirm(gen, m)
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

// confirm counts a SUBSCRIBE or UNSUBSCRIBE confirmation.
func (b *Broker) confirm(gen uint64, m *redis.Subscription) {
	topic, ok := strings.CutPrefix(m.Channel, b.cfg.Prefix)
	if !ok {
		return
	}
	b.mu.Lock()
	if gen != b.gen {
		b.mu.Unlock()
		return
	}
	if m.Channel != b.control {
		if b.pending[topic] > 1 {
			b.pending[topic]--
		} else {
			delete(b.pending, topic)
		}
	}
	var lost []string
	var upNow bool
	if !b.up {
		if b.initLeft--; b.initLeft == 0 {
			lost, upNow = b.goUp(), true
		}
	}
	b.broadcast()
	b.mu.Unlock()
	b.afterUp(upNow, lost)
}

// goUp marks the connection established and returns the topics that gained
// listeners while it was not. b.mu must be held.
func (b *Broker) goUp() []string {
	b.up, b.connecting = true, false
	lost := slices.Collect(maps.Keys(b.stale))
	clear(b.stale)
	return lost
}

func (b *Broker) afterUp(upNow bool, lost []string) {
	if !upNow {
		return
	}
	b.log.Info("redisbroker: subscribed on Redis")
	if len(lost) > 0 {
		b.lost(lost)
	}
	kick(b.kickWatch) // interest that changed while connecting
	// Learn the peers at once, rather than in a heartbeat interval.
	b.hello.Store(true)
	kick(b.kickBeat)
}

// peerSet is what the receive goroutine knows of the peers it heard on the
// current connection.
type peerSet struct {
	// deadline is, per peer, the time of this broker's clock after which
	// it counts as dead.
	deadline map[string]time.Duration
	// probe sends a heartbeat of this broker at the earliest deadline
	// (armed), so that a dead peer is found then, not up to a heartbeat
	// interval later.
	probe *time.Timer
	armed time.Duration // 0: not armed
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
		peers.deadline[origin] = d
		peers.arm(d, now)
		if kind == kindHello {
			kick(b.kickBeat)
		}
	case kindFarewell:
		if origin != b.origin {
			delete(peers.deadline, origin)
			delete(b.last, origin) // it publishes nothing more
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
			delete(peers.deadline, origin)
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

// dispatch hands a message to the message handler or reports a resync
// marker.
func (b *Broker) dispatch(m *redis.Message) {
	topic, ok := strings.CutPrefix(m.Channel, b.cfg.Prefix)
	if !ok || m.Payload == "" {
		return
	}
	p := m.Payload
	if len(p) < 1+idLen {
		b.lost([]string{topic})
		return
	}
	origin := p[1 : 1+idLen]
	switch p[0] {
	case kindMessage:
		if len(p) < 1+2*idLen {
			b.lost([]string{topic})
			return
		}
		seq, err := strconv.ParseUint(p[1+idLen:1+2*idLen], 16, 64)
		if err != nil {
			b.lost([]string{topic})
			return
		}
		if seq <= b.last[origin] {
			return // published twice
		}
		b.last[origin] = seq
		b.message(topic, "", 0, []byte(p[1+2*idLen:]))
	case kindResyncO:
		if origin != b.origin {
			b.lost([]string{topic})
		}
	default: // kindResync, or a kind from a newer version
		b.lost([]string{topic})
	}
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
	var sub, unsub []string
	for t := range b.want {
		if !b.sent[t] {
			b.sent[t] = true
			b.pending[t]++
			sub = append(sub, b.Channel(t))
		}
	}
	for t := range b.sent {
		if !b.want[t] {
			delete(b.sent, t)
			b.pending[t]++
			unsub = append(unsub, b.Channel(t))
		}
	}
	b.mu.Unlock()
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

// send publishes the queue to Redis, in order, a batch per round trip, and
// the heartbeats, the first before anything else. When the broker stops it
// sends what is queued and, when all of it went out, the farewell.
func (b *Broker) send() {
	defer b.wg.Done()
	tick := time.NewTicker(b.cfg.Heartbeat)
	defer tick.Stop()
	var last uint64 // seq of the last item sent or dropped
	backoff := b.cfg.MinBackoff
	beat := byte(kindBeat)
	for {
		var batch []item
		select {
		case it := <-b.queue: // what is queued goes before a heartbeat that is due
			batch = b.fill(append(batch, it))
		default:
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
				b.stopSending(last, tick.C)
				return
			}
		}
		if beat != 0 && b.hello.Swap(false) {
			beat = kindHello
		}
		ok := b.publish(batch, &last, beat)
		beat = 0
		if ok {
			backoff = b.cfg.MinBackoff
			continue
		}
		if !b.sleep(backoff) {
			b.stopSending(last, tick.C)
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

// stopSending flushes the queue and says farewell when all of it went out:
// the peers then know that nothing of this broker is missing. Otherwise
// they find out from the heartbeats that stop.
func (b *Broker) stopSending(last uint64, tick <-chan time.Time) {
	if !b.flush(last, tick) || !b.announced || !b.sendOK {
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

// flush sends what is queued when the broker stops, one attempt per batch,
// with a heartbeat when one is due. It reports whether everything went out.
func (b *Broker) flush(last uint64, tick <-chan time.Time) bool {
	for {
		batch := b.fill(nil)
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
		if !b.publish(batch, &last, beat) {
			return false
		}
		if len(batch) == 0 {
			// Markers that are not due yet stay unsent.
			b.mu.Lock()
			defer b.mu.Unlock()
			return len(b.markers) == 0
		}
	}
}

// publish sends a heartbeat of kind beat (none when 0, unless no heartbeat
// got through yet), batch and the markers due with it in one round trip. On failure it drops the batch and
// the rest of the queue, reports them lost here and leaves markers for the
// others; it reports false then. A heartbeat alone that fails is no loss.
func (b *Broker) publish(batch []item, last *uint64, beat byte) bool {
	hi := *last
	if len(batch) > 0 {
		hi = batch[len(batch)-1].seq
	}
	type due struct {
		topic string
		marker
	}
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
		return true
	}
	slices.SortFunc(markers, func(x, y due) int { return cmp.Compare(x.after, y.after) })
	ctx, cancel := context.WithTimeout(b.sendCtx, publishTimeout)
	defer cancel()
	pipe := b.client.Pipeline()
	if beat == 0 && !b.announced {
		beat = kindBeat // no peer may hear a message of a broker it never heard of
	}
	if beat != 0 {
		pipe.Publish(ctx, b.control, b.beat(beat))
	}
	i := 0
	addMarkers := func(upTo uint64) {
		for ; i < len(markers) && markers[i].after <= upTo; i++ {
			kind := byte(kindResync)
			if markers[i].local {
				kind = kindResyncO
			}
			pipe.Publish(ctx, b.Channel(markers[i].topic), b.payload(item{kind: kind}))
		}
	}
	for _, it := range batch {
		addMarkers(it.seq - 1)
		pipe.Publish(ctx, b.Channel(it.topic), b.payload(it))
	}
	addMarkers(hi)
	_, err := pipe.Exec(ctx)
	b.sendOK = err == nil
	b.announced = b.announced || b.sendOK && beat != 0
	if err == nil {
		b.mu.Lock()
		for _, m := range markers {
			if b.markers[m.topic] == m.marker { // not renewed meanwhile
				delete(b.markers, m.topic)
			}
		}
		b.mu.Unlock()
		*last = hi
		return true
	}

	// Everything queued now would reach Redis after a gap: drop it too.
	batch = append(batch, b.drain()...)
	if len(batch) > 0 {
		hi = batch[len(batch)-1].seq
	}
	*last = hi
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
	return false
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
