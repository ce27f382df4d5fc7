package channelsapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

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

// redisBroker publishes changes on Redis and hands what Redis sends back,
// this instance's own changes included, to delivery: every instance
// delivers the changes of a stream in the same order, each once. Its reader
// goroutine only queues what it receives; decoding and authorizing run on
// the stream's delivery goroutine.
type redisBroker struct {
	api    *API
	rb     *redisbroker.Broker
	client redis.UniversalClient
	own    bool // the API opened client and closes it
}

// startRelay sets the relay: the Redis broker when an option asks for it,
// else the local one.
func (a *API) startRelay() error {
	rc := a.cfg.redis
	switch {
	case rc.url == "" && rc.client == nil:
		a.relay = localRelay{a.delivery}
		return nil
	case rc.url != "" && rc.client != nil:
		return errors.New("channelsapi: WithRedis and WithRedisClient exclude each other")
	case rc.queueSize < 0:
		return fmt.Errorf("channelsapi: Redis queue size must not be negative, got %d", rc.queueSize)
	}
	b := &redisBroker{api: a, client: rc.client}
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
	a.relay = b
	a.hub.OnInterest(b.interest)
	return nil
}

// wireChange is a change on Redis; the stream is the channel.
type wireChange struct {
	Action string          `json:"a"`
	Key    string          `json:"k"` // pkKey of the primary key
	Data   json.RawMessage `json:"d"`
	// For models whose events are authorized per recipient: the row before
	// an update, and the column values of the row and of the row before
	// (every column, also those the JSON hides), which the Scope and the
	// permissions are evaluated on.
	Before    json.RawMessage `json:"b,omitempty"`
	Row       json.RawMessage `json:"r,omitempty"`
	BeforeRow json.RawMessage `json:"p,omitempty"`
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
		if ch.resync == "" {
			err := ch.encode()
			w := wireChange{Action: ch.action, Key: pkKey(ch.pk), Data: ch.data}
			if err == nil && b.api.guarded(ch.typ) {
				m := rs[0].model()
				w.Before = ch.before
				if w.Row, err = m.columns(ch.obj); err == nil {
					w.BeforeRow, err = m.columns(ch.beforeObj)
				}
			}
			if err == nil {
				msg, err = json.Marshal(w)
			}
			if err != nil {
				b.api.log.Error("channelsapi: encode change for Redis", "err", err)
				msg = nil
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

// receive queues a change from Redis for this instance's subscribers of
// stream. It runs on the Redis reader goroutine: it only queues.
func (b *redisBroker) receive(stream string, payload []byte) {
	r, ok := b.api.resource(stream)
	if !ok {
		return // a stream this instance does not serve
	}
	b.api.delivery.received(stream, func() (change, error) { return decodeWireChange(r, payload) })
}

// decodeWireChange decodes a change of r's stream from Redis.
func decodeWireChange(r resource, payload []byte) (change, error) {
	var w wireChange
	if err := json.Unmarshal(payload, &w); err != nil {
		return change{}, err
	}
	if w.Action != actionCreate && w.Action != actionUpdate && w.Action != actionDelete {
		return change{}, fmt.Errorf("unknown action %q", w.Action)
	}
	m := r.model()
	pk, ok := m.parsePKText(w.Key)
	if !ok {
		return change{}, fmt.Errorf("invalid key %q", w.Key)
	}
	ch := change{typ: m.schema.ModelType, action: w.Action, pk: pk, data: w.Data, before: w.Before}
	if !r.guarded() {
		return ch, nil
	}
	var err error
	if ch.obj, err = m.decodeObject(w.Data, w.Row); err != nil {
		return change{}, err
	}
	if w.Before != nil {
		if ch.beforeObj, err = m.decodeObject(w.Before, w.BeforeRow); err != nil {
			return change{}, err
		}
	}
	return ch, nil
}

// lost resyncs the subscribers of streams whose events may have been lost,
// after what was received before.
func (b *redisBroker) lost(streams []string) {
	for _, s := range streams {
		b.api.delivery.lost(s, reasonBrokerGap)
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
