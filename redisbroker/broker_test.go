package redisbroker_test

// This file tests broker.go, the Broker through Redis pub/sub: a message is
// delivered once and in order with the resync markers, unwatched topics are
// not received, New refuses a bad configuration and Run runs once. The tests
// need CHANNELSAPI_TEST_REDIS; peers_test.go tests the peers, history_test.go
// the shared offsets and history.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/channelsapi/channelsapi/redisbroker"
)

func TestMain(m *testing.M) {
	if os.Getenv(envPeer) != "" {
		os.Exit(runPeer()) // a peer process of peers_test.go
	}
	goleak.VerifyTestMain(m)
}

// recorder collects what a broker delivers and reports lost.
type recorder struct {
	mu   sync.Mutex
	got  []string // topic:message
	at   []at     // the place of each message of got
	lost []string
	// events is got and lost in the order they came: topic:message, or
	// LOST:topic.
	events []string
	notify chan struct{}
}

// at is the place of a message in its topic's history.
type at struct {
	epoch  string
	offset uint64
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{}, 1)} }

func (r *recorder) deliver(topic, epoch string, offset uint64, msg []byte) {
	r.mu.Lock()
	r.got = append(r.got, topic+":"+string(msg))
	r.at = append(r.at, at{epoch, offset})
	r.events = append(r.events, topic+":"+string(msg))
	r.mu.Unlock()
	r.wake()
}

func (r *recorder) lostTopics(topics []string) {
	r.mu.Lock()
	r.lost = append(r.lost, topics...)
	for _, t := range topics {
		r.events = append(r.events, "LOST:"+t)
	}
	r.mu.Unlock()
	r.wake()
}

// wake tells a waiter that something came, without blocking the broker.
func (r *recorder) wake() {
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// wait waits until cond holds.
func (r *recorder) wait(t *testing.T, cond func(got, lost []string) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ok := cond(r.got, r.lost)
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.notify:
		case <-deadline:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("timed out; got %v, lost %v", r.got, r.lost)
		}
	}
}

func client(t *testing.T) *redis.Client {
	t.Helper()
	u := os.Getenv("CHANNELSAPI_TEST_REDIS")
	if u == "" {
		t.Skip("SKIP: set CHANNELSAPI_TEST_REDIS (e.g. redis://127.0.0.1:6390/0) to run the Redis broker tests")
	}
	opts, err := redis.ParseURL(u)
	require.NoError(t, err)
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func prefix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "redisbroker-test-" + hex.EncodeToString(b) + ":"
}

// start creates a broker, runs it with the handlers of rec and closes it at
// cleanup.
func start(t *testing.T, cfg redisbroker.Config, rec *recorder) *redisbroker.Broker {
	t.Helper()
	b, err := redisbroker.New(cfg)
	require.NoError(t, err)
	require.NoError(t, b.Run(rec.deliver, rec.lostTopics))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, b.Close(ctx))
	})
	return b
}

// TestPublishedTwiceDeliveredOnce replays a message on its channel: it is
// delivered once, the offsets of the topic one after the other.
func TestPublishedTwiceDeliveredOnce(t *testing.T) {
	rdb := client(t)
	p := prefix()
	rec := newRecorder()
	b := start(t, redisbroker.Config{Client: rdb, Prefix: p}, rec)

	// A spy subscribed to the channel sees the raw payloads.
	spy := rdb.Subscribe(context.Background(), p+"t")
	t.Cleanup(func() { _ = spy.Close() })
	_, err := spy.Receive(context.Background())
	require.NoError(t, err)

	b.Watch("t", true)
	require.True(t, b.Ready(context.Background(), "t"))
	b.Publish("t", []byte("one"))
	raw, err := spy.ReceiveMessage(context.Background())
	require.NoError(t, err)
	require.NoError(t, rdb.Publish(context.Background(), p+"t", raw.Payload).Err())
	b.Publish("t", []byte("two"))
	rec.wait(t, func(got, _ []string) bool { return len(got) >= 2 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.Equal(t, []string{"t:one", "t:two"}, rec.got)
	require.Len(t, rec.at, 2)
	assert.NotEmpty(t, rec.at[0].epoch)
	assert.Equal(t, []at{{rec.at[0].epoch, 1}, {rec.at[0].epoch, 2}}, rec.at)
	assert.Empty(t, rec.lost)
}

// TestResyncMarkerInOrder checks that Resync reaches the listener after the
// messages published before it and before those published after it.
func TestResyncMarkerInOrder(t *testing.T) {
	rdb := client(t)
	rec := newRecorder()
	var order []string
	var mu sync.Mutex
	b, err := redisbroker.New(redisbroker.Config{Client: rdb, Prefix: prefix()})
	require.NoError(t, err)
	require.NoError(t, b.Run(
		func(topic, epoch string, offset uint64, msg []byte) {
			mu.Lock()
			order = append(order, string(msg))
			mu.Unlock()
			rec.deliver(topic, epoch, offset, msg)
		},
		func(topics []string) {
			mu.Lock()
			order = append(order, "LOST")
			mu.Unlock()
			rec.lostTopics(topics)
		},
	))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, b.Close(ctx))
	})
	b.Watch("t", true)
	require.True(t, b.Ready(context.Background(), "t"))
	b.Publish("t", []byte("1"))
	b.Resync("t")
	b.Publish("t", []byte("2"))
	rec.wait(t, func(got, _ []string) bool { return len(got) == 2 })
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"1", "LOST", "2"}, order)
}

// TestUnwatchedTopicNotReceived checks that a broker that does not watch a
// topic receives nothing of it, and that Ready reports an unreachable Redis
// at once.
func TestUnwatchedTopicNotReceived(t *testing.T) {
	rdb := client(t)
	p := prefix()
	rec := newRecorder()
	b := start(t, redisbroker.Config{Client: rdb, Prefix: p}, rec)
	b.Watch("watched", true)
	require.True(t, b.Ready(context.Background(), "watched"))
	n, err := rdb.PubSubNumSub(context.Background(), p+"watched", p+"other").Result()
	require.NoError(t, err)
	assert.Equal(t, map[string]int64{p + "watched": 1, p + "other": 0}, n)
	b.Publish("other", []byte("x"))
	b.Publish("watched", []byte("y"))
	rec.wait(t, func(got, _ []string) bool { return len(got) == 1 })
	rec.mu.Lock()
	assert.Equal(t, []string{"watched:y"}, rec.got)
	rec.mu.Unlock()

	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialerRetries: 1})
	t.Cleanup(func() { _ = down.Close() })
	rec2 := newRecorder()
	b2 := start(t, redisbroker.Config{Client: down, MaxOutage: 100 * time.Millisecond}, rec2)
	b2.Watch("t", true)
	assert.False(t, b2.Ready(context.Background(), "t"), "Redis is unreachable")
	b2.Publish("t", []byte("lost"))
	rec2.wait(t, func(_, lost []string) bool { return len(lost) > 0 })
	rec2.mu.Lock()
	assert.Equal(t, "t", rec2.lost[0], "a failed publish is reported lost here")
	rec2.mu.Unlock()
}

// TestNewErrors checks that New refuses a configuration that cannot work,
// without repeating a password, and opens nothing then.
func TestNewErrors(t *testing.T) {
	unused := redis.NewClient(&redis.Options{})
	t.Cleanup(func() { _ = unused.Close() })
	tests := []struct {
		name string
		give redisbroker.Config
	}{
		{"no URL nor client", redisbroker.Config{}},
		{"not a Redis URL", redisbroker.Config{URL: "http://:s3cret@127.0.0.1:6379"}},
		{"bad database number", redisbroker.Config{URL: "redis://:s3cret@127.0.0.1:6379/x"}},
		{"bad port", redisbroker.Config{URL: "redis://:s3cret@127.0.0.1:port/0"}},
		{"URL and client", redisbroker.Config{URL: "redis://127.0.0.1:6379", Client: unused}},
		{"negative queue", redisbroker.Config{URL: "redis://127.0.0.1:6379", QueueSize: -1}},
		{"negative duration", redisbroker.Config{URL: "redis://127.0.0.1:6379", HealthCheck: -time.Second}},
		{"negative history size", redisbroker.Config{URL: "redis://127.0.0.1:6379", HistorySize: -1}},
		{"negative history TTL", redisbroker.Config{URL: "redis://127.0.0.1:6379", HistoryTTL: -time.Second}},
		{"negative history meta TTL", redisbroker.Config{URL: "redis://127.0.0.1:6379", HistoryMetaTTL: -time.Second}},
		{"negative max outage", redisbroker.Config{URL: "redis://127.0.0.1:6379", MaxOutage: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := redisbroker.New(tt.give)
			require.Error(t, err)
			assert.Nil(t, b)
			assert.NotContains(t, err.Error(), "s3cret")
		})
	}
}

// TestRunOnce checks the life cycle: Run needs both handlers and runs once,
// Close may come before Run or instead of it, and twice, and Run after Close
// fails.
func TestRunOnce(t *testing.T) {
	b, err := redisbroker.New(redisbroker.Config{URL: "redis://127.0.0.1:1/0"})
	require.NoError(t, err)
	rec := newRecorder()
	assert.Error(t, b.Run(nil, rec.lostTopics))
	require.NoError(t, b.Run(rec.deliver, rec.lostTopics))
	assert.Error(t, b.Run(rec.deliver, rec.lostTopics), "Run twice")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, b.Close(ctx))
	require.NoError(t, b.Close(ctx), "Close twice")

	never, err := redisbroker.New(redisbroker.Config{URL: "redis://127.0.0.1:1/0"})
	require.NoError(t, err)
	require.NoError(t, never.Close(ctx), "Close without Run")
	assert.Error(t, never.Run(rec.deliver, rec.lostTopics), "Run after Close")
}
