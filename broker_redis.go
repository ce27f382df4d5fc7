package channelsapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/channelsapi/channelsapi/internal/redisbroker"
)

// redisConfig is what the Redis options set; the zero value means no Redis.
type redisConfig struct {
	url       string
	client    redis.UniversalClient
	prefix    string
	queueSize int
}

// WithRedis connects the instances of an application through the Redis
// server at url, redis://[[user]:password@]host[:port][/db] (rediss:// for
// TLS), so that a client of any instance receives the events of the writes
// made on every instance. Each instance subscribes on Redis only to the
// streams its own clients subscribe to. The API opens its own connections,
// and closes them on Shutdown.
//
// A database write never waits for Redis and never fails because of it.
// When events may have been lost on the way (Redis unreachable or restarted,
// a publish that failed, the outbound queue full), the subscribers of the
// streams concerned are closed with 1013 and must resubscribe and load their
// state again; none is left with a silent gap. While Redis is unreachable,
// clients may connect and subscribe, and are closed with 1013 once it is
// back. Register does not wait for Redis, and does not fail when it is
// down: the API keeps reconnecting with backoff.
//
// Without WithRedis or WithRedisClient events reach only the clients of this
// process.
func WithRedis(url string) Option { return func(c *config) { c.redis.url = url } }

// WithRedisClient is WithRedis with a client the application configured
// (Sentinel, Cluster, TLS, pool sizes). The API does not close it.
func WithRedisClient(client redis.UniversalClient) Option {
	return func(c *config) { c.redis.client = client }
}

// WithRedisPrefix sets the prefix of the Redis channels, one per stream
// (prefix + stream name). Every instance of an application must use the
// same; applications sharing a Redis server must use different ones, as
// pub/sub channels are not scoped by database number. The default is
// "channelsapi:".
func WithRedisPrefix(prefix string) Option { return func(c *config) { c.redis.prefix = prefix } }

// WithRedisQueueSize sets how many committed changes may wait to be
// published to Redis. Beyond it a change is dropped and the subscribers of
// its stream, on every instance, are closed with 1013 after the events
// queued before it. The default is 10000.
func WithRedisQueueSize(n int) Option { return func(c *config) { c.redis.queueSize = n } }

// redisBroker publishes changes on Redis and delivers what Redis sends back:
// this instance's own changes included, so that every instance delivers the
// changes of a stream in the same order, each once.
type redisBroker struct {
	api    *API
	rb     *redisbroker.Broker
	client redis.UniversalClient
	own    bool   // the API opened client and closes it
	origin string // random id of this API, in its changes on Redis

	// Changes of models whose events are authorized per recipient keep
	// what does not travel (the objects with every field, the visibility
	// snapshot) here until they come back from Redis, in publishing order.
	mu      sync.Mutex
	next    uint64
	pending []sentChange
}

// sentChange is a change this instance published, awaiting its echo.
type sentChange struct {
	id uint64
	ch change
}

// maxPending bounds redisBroker.pending; the oldest half is forgotten beyond
// it (their echoes are then decoded like other instances' changes).
const maxPending = 4096

// objectDecoder is implemented by *viewSet[T]: it decodes an object from its
// JSON, for authorizing a change that came from another instance.
type objectDecoder interface {
	decodeObject(data json.RawMessage) (any, error)
}

func (v *viewSet[T]) decodeObject(data json.RawMessage) (any, error) {
	obj := new(T)
	if err := json.Unmarshal(data, obj); err != nil {
		return nil, err
	}
	return obj, nil
}

// startBroker replaces the local broker by the Redis one when an option asks
// for it.
func (a *API) startBroker() error {
	rc := a.cfg.redis
	switch {
	case rc.url == "" && rc.client == nil:
		a.broker = newLocalBroker(a)
		return nil
	case rc.url != "" && rc.client != nil:
		return errors.New("channelsapi: WithRedis and WithRedisClient exclude each other")
	case rc.queueSize < 0:
		return fmt.Errorf("channelsapi: Redis queue size must not be negative, got %d", rc.queueSize)
	}
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	b := &redisBroker{api: a, client: rc.client, origin: hex.EncodeToString(id)}
	if b.client == nil {
		opts, err := redis.ParseURL(rc.url)
		if err != nil {
			// The URL may hold a password: it is not repeated.
			return fmt.Errorf("channelsapi: invalid Redis URL: %w", err)
		}
		b.client, b.own = redis.NewClient(opts), true
	}
	rb, err := redisbroker.New(redisbroker.Config{
		Client:    b.client,
		Prefix:    rc.prefix,
		QueueSize: rc.queueSize,
		Deliver:   b.receive,
		Lost:      b.lost,
		Logger:    a.log,
	})
	if err != nil {
		if b.own {
			_ = b.client.Close()
		}
		return fmt.Errorf("channelsapi: %w", err)
	}
	b.rb = rb
	a.broker = b
	a.hub.OnInterest(b.interest)
	return nil
}

// wireChange is a change on Redis; the stream is the channel.
type wireChange struct {
	Action string          `json:"a"`
	Key    string          `json:"k"` // pkKey of the primary key
	Data   json.RawMessage `json:"d"`
	// For models whose events are authorized per recipient: the row before
	// an update, and which change of which instance this is.
	Before json.RawMessage `json:"b,omitempty"`
	Origin string          `json:"o,omitempty"`
	ID     uint64          `json:"i,omitempty"`
}

func (b *redisBroker) publish(changes []change) {
	for _, ch := range changes {
		b.api.mu.RLock()
		rs := b.api.byType[ch.typ]
		b.api.mu.RUnlock()
		if len(rs) == 0 {
			continue
		}
		var msg []byte
		if !ch.resync {
			w := wireChange{Action: ch.action, Key: pkKey(ch.pk), Data: ch.data}
			if b.api.guarded(ch.typ) {
				w.Before, w.Origin, w.ID = ch.before, b.origin, b.keep(ch)
			}
			var err error
			if msg, err = json.Marshal(w); err != nil {
				b.api.log.Error("channelsapi: encode change for Redis", "err", err)
			}
		}
		for _, r := range rs {
			if msg == nil {
				b.rb.Resync(r.name())
			} else {
				b.rb.Publish(r.name(), msg)
			}
		}
	}
}

// receive delivers a change from Redis to this instance's subscribers of
// stream.
func (b *redisBroker) receive(stream string, payload []byte) {
	r, ok := b.api.resource(stream)
	if !ok {
		return // a stream this instance does not serve
	}
	var w wireChange
	err := json.Unmarshal(payload, &w)
	pk, ok := r.model().parsePKText(w.Key)
	switch {
	case err != nil || w.Action != actionCreate && w.Action != actionUpdate && w.Action != actionDelete:
		b.api.log.Error("channelsapi: undecodable change from Redis", "stream", stream, "err", err)
		b.api.resync(stream)
	case !ok:
		b.api.log.Error("channelsapi: change from Redis with an invalid key", "stream", stream, "key", w.Key)
		b.api.resync(stream)
	default:
		ch, ok := b.sent(w)
		if !ok {
			ch = change{typ: r.model().schema.ModelType, action: w.Action, pk: pk, data: w.Data} // no seen: remote subscribers of a Scope resync
			if d, isDecoder := r.(objectDecoder); isDecoder && r.guarded() {
				ch.obj, _ = d.decodeObject(w.Data)
				if w.Before != nil {
					ch.before = w.Before
					ch.beforeObj, _ = d.decodeObject(w.Before)
				}
			}
		}
		ch.stream = stream
		b.api.deliver(ch)
	}
}

// keep remembers a change of a guarded model until it comes back, and
// returns its id. It runs under the publisher's lock.
func (b *redisBroker) keep(ch change) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.next++
	if len(b.pending) >= maxPending {
		b.pending = append([]sentChange(nil), b.pending[len(b.pending)/2:]...)
	}
	b.pending = append(b.pending, sentChange{id: b.next, ch: ch})
	return b.next
}

// sent returns this instance's own change that w is the echo of. Changes
// come back in the order they were published, so older ones never will (no
// interest here in their streams, or lost): they are forgotten. The change
// itself stays, for its echoes on other streams of its model.
func (b *redisBroker) sent(w wireChange) (change, bool) {
	if w.Origin != b.origin || w.ID == 0 {
		return change{}, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	i := 0
	for i < len(b.pending) && b.pending[i].id < w.ID {
		i++
	}
	b.pending = b.pending[i:]
	if len(b.pending) > 0 && b.pending[0].id == w.ID {
		return b.pending[0].ch, true
	}
	return change{}, false
}

// lost resyncs the subscribers of streams whose events may have been lost.
func (b *redisBroker) lost(streams []string) {
	b.api.mu.RLock()
	closing := b.api.closing
	b.api.mu.RUnlock()
	if closing {
		return // every socket is being closed with 1001
	}
	for _, s := range streams {
		b.api.resync(s)
	}
}

func (b *redisBroker) interest(stream string, active bool) { b.rb.Watch(stream, active) }

func (b *redisBroker) ready(ctx context.Context, stream string) { b.rb.Ready(ctx, stream) }

func (b *redisBroker) shutdown(ctx context.Context) error {
	if err := b.rb.Close(ctx); err != nil {
		return err
	}
	if b.own {
		if err := b.client.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
			return fmt.Errorf("channelsapi: close Redis client: %w", err)
		}
	}
	return nil
}
