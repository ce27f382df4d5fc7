package redisbroker_test

// This file tests history.go and publish.lua: the offsets of a topic are
// the same on every instance, Position and History read them, a gap is
// filled from the history or reported, a dropped subscription catches up
// (or, down for too long, reports its topics lost), and a publish retried
// after a lost reply is published once.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/channelsapi/channelsapi/internal/redistest"
	"github.com/channelsapi/channelsapi/redisbroker"
)

// publishN publishes messages from..to of topic, each its number.
func publishN(b *redisbroker.Broker, topic string, from, to int) {
	for i := from; i <= to; i++ {
		b.Publish(topic, []byte(strconv.Itoa(i)))
	}
}

// assertContiguous checks that rec got exactly the messages 1..n of topic,
// in order, at the offsets 1..n of one epoch, and lost nothing. It returns
// the epoch.
func assertContiguous(t *testing.T, rec *recorder, topic string, n int) string {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Empty(t, rec.lost)
	require.Len(t, rec.got, n)
	epoch := rec.at[0].epoch
	require.NotEmpty(t, epoch)
	for i := range n {
		require.Equal(t, fmt.Sprintf("%s:%d", topic, i+1), rec.got[i], "message %d", i+1)
		require.Equal(t, at{epoch, uint64(i + 1)}, rec.at[i], "message %d", i+1)
	}
	return epoch
}

// collect returns what History hands, as offset:payload.
func collect(t *testing.T, b *redisbroker.Broker, topic, epoch string, after uint64) (got []string, top string, last uint64, ok bool) {
	t.Helper()
	top, last, ok, err := b.History(context.Background(), topic, epoch, after, func(offset uint64, payload []byte) {
		got = append(got, fmt.Sprintf("%d:%s", offset, payload))
	})
	require.NoError(t, err)
	return got, top, last, ok
}

// TestOffsetsSharedByInstances publishes 500 messages from one broker: the
// other and the publisher hand them at the offsets 1..500 of one epoch, and
// Position and History read the same numbering from either.
func TestOffsetsSharedByInstances(t *testing.T) {
	rdb := client(t)
	p := prefix()
	recA, recB := newRecorder(), newRecorder()
	a := watching(t, redisbroker.Config{Client: rdb, Prefix: p}, recA, "t")
	b := watching(t, redisbroker.Config{Client: rdb, Prefix: p}, recB, "t")

	publishN(b, "t", 1, 500)
	recA.wait(t, func(got, _ []string) bool { return len(got) >= 500 })
	recB.wait(t, func(got, _ []string) bool { return len(got) >= 500 })
	epoch := assertContiguous(t, recA, "t", 500)
	assert.Equal(t, epoch, assertContiguous(t, recB, "t", 500))

	for _, br := range []*redisbroker.Broker{a, b} {
		e, last, err := br.Position(context.Background(), "t")
		require.NoError(t, err)
		assert.Equal(t, at{epoch, 500}, at{e, last})
	}
	got, top, last, ok := collect(t, a, "t", epoch, 123)
	require.True(t, ok)
	assert.Equal(t, at{epoch, 500}, at{top, last})
	require.Len(t, got, 500-123)
	for i, g := range got {
		n := 124 + i
		require.Equal(t, fmt.Sprintf("%d:%d", n, n), g)
	}
}

// TestHistory checks what History hands and when it reports that the
// history does not reach back.
func TestHistory(t *testing.T) {
	rdb := client(t)
	p := prefix()
	rec := newRecorder()
	b := watching(t, redisbroker.Config{Client: rdb, Prefix: p}, rec, "t", "r")
	publishN(b, "t", 1, 5)
	// On r: 1, 2, a resync at offset 3, then 4.
	b.Publish("r", []byte("1"))
	b.Publish("r", []byte("2"))
	b.Resync("r")
	b.Publish("r", []byte("4"))
	rec.wait(t, func(got, _ []string) bool { return len(got) == 8 })
	rec.mu.Lock()
	epoch, epochR := rec.at[0].epoch, rec.at[7].epoch
	rec.mu.Unlock()

	tests := []struct {
		name   string
		topic  string
		epoch  string
		after  uint64
		want   []string
		wantOK bool
	}{
		{"from the start", "t", epoch, 0, []string{"1:1", "2:2", "3:3", "4:4", "5:5"}, true},
		{"after some", "t", epoch, 3, []string{"4:4", "5:5"}, true},
		{"after the last", "t", epoch, 5, nil, true},
		{"beyond the last", "t", epoch, 6, nil, false},
		{"another epoch", "t", epoch + "x", 3, nil, false},
		{"a range with a resync", "r", epochR, 2, nil, false},
		{"after the resync", "r", epochR, 3, []string{"4:4"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, top, last, ok := collect(t, b, tt.topic, tt.epoch, tt.after)
			assert.Equal(t, tt.wantOK, ok)
			assert.Equal(t, tt.want, got)
			want := at{epoch, 5}
			if tt.topic == "r" {
				want = at{epochR, 4}
			}
			assert.Equal(t, want, at{top, last}, "the position, whatever ok")
		})
	}
}

// TestHistoryTrimmedOrExpired checks that History reports a history that
// was trimmed to about HistorySize, or that expired after HistoryTTL while
// the epoch and the offset stay.
func TestHistoryTrimmedOrExpired(t *testing.T) {
	rdb := client(t)
	p := prefix()
	rec := newRecorder()
	cfg := redisbroker.Config{Client: rdb, Prefix: p, HistorySize: 10, HistoryTTL: time.Second}
	b := watching(t, cfg, rec, "t")
	publishN(b, "t", 1, 500)
	rec.wait(t, func(got, _ []string) bool { return len(got) == 500 })
	epoch := assertContiguous(t, rec, "t", 500)

	got, _, last, ok := collect(t, b, "t", epoch, 0)
	assert.False(t, ok, "trimmed")
	assert.Empty(t, got)
	assert.Equal(t, uint64(500), last)
	got, _, _, ok = collect(t, b, "t", epoch, 495)
	assert.True(t, ok, "the last ten are kept")
	assert.Equal(t, []string{"496:496", "497:497", "498:498", "499:499", "500:500"}, got)

	require.Eventually(t, func() bool {
		n, err := rdb.Exists(context.Background(), p+"#{t}:history").Result()
		return err == nil && n == 0
	}, 10*time.Second, 20*time.Millisecond, "the history expires")
	got, top, last, ok := collect(t, b, "t", epoch, 499)
	assert.False(t, ok, "expired")
	assert.Empty(t, got)
	assert.Equal(t, at{epoch, 500}, at{top, last}, "the numbering outlives the history")
}

// TestPositionBeforeFirstMessage checks that Position gives a topic never
// published an epoch, which its first message then has: a resume from that
// position sees no epoch change.
func TestPositionBeforeFirstMessage(t *testing.T) {
	rdb := client(t)
	rec := newRecorder()
	b := watching(t, redisbroker.Config{Client: rdb, Prefix: prefix()}, rec, "t")
	epoch, last, err := b.Position(context.Background(), "t")
	require.NoError(t, err)
	require.NotEmpty(t, epoch)
	assert.Equal(t, uint64(0), last)
	again, _, err := b.Position(context.Background(), "t")
	require.NoError(t, err)
	assert.Equal(t, epoch, again)

	b.Publish("t", []byte("1"))
	rec.wait(t, func(got, _ []string) bool { return len(got) == 1 })
	assert.Equal(t, epoch, assertContiguous(t, rec, "t", 1))
	got, _, _, ok := collect(t, b, "t", epoch, 0)
	assert.True(t, ok)
	assert.Equal(t, []string{"1:1"}, got)
}

// TestEpochChangeReportsLost deletes a topic's meta hash, as Redis losing
// it would: the next message starts a new epoch at offset 1, and the
// listener is told the topic was lost before it.
func TestEpochChangeReportsLost(t *testing.T) {
	rdb := client(t)
	p := prefix()
	rec := newRecorder()
	b := watching(t, redisbroker.Config{Client: rdb, Prefix: p}, rec, "t")
	publishN(b, "t", 1, 3)
	rec.wait(t, func(got, _ []string) bool { return len(got) == 3 })
	old := assertContiguous(t, rec, "t", 3)

	require.NoError(t, rdb.Del(context.Background(), p+"#{t}:meta").Err())
	b.Publish("t", []byte("4"))
	rec.wait(t, func(got, _ []string) bool { return len(got) == 4 })
	rec.mu.Lock()
	assert.Equal(t, []string{"t:1", "t:2", "t:3", "LOST:t", "t:4"}, rec.events)
	epoch := rec.at[3].epoch
	assert.NotEqual(t, old, epoch)
	assert.Equal(t, uint64(1), rec.at[3].offset)
	rec.mu.Unlock()

	got, _, _, ok := collect(t, b, "t", old, 3)
	assert.False(t, ok, "the old epoch")
	assert.Empty(t, got)
	got, _, _, ok = collect(t, b, "t", epoch, 0)
	assert.True(t, ok)
	assert.Equal(t, []string{"1:4"}, got, "the old epoch's history went with it")
}

// TestGapFilledFromHistory writes a message into a topic's history that
// was never published, as if its publication had not reached this
// instance: the next message comes after a gap, which the history fills.
// An offset the history does not hold makes the topic lost.
func TestGapFilledFromHistory(t *testing.T) {
	rdb := client(t)
	p := prefix()
	rec := newRecorder()
	b := watching(t, redisbroker.Config{Client: rdb, Prefix: p}, rec, "t")
	ctx := context.Background()
	b.Publish("t", []byte("1"))
	rec.wait(t, func(got, _ []string) bool { return len(got) == 1 })

	// Offset 2, in the history only (see publish.lua for its fields).
	require.NoError(t, rdb.HIncrBy(ctx, p+"#{t}:meta", "s", 1).Err())
	require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{
		Stream: p + "#{t}:history", ID: "2-0",
		Values: []string{"k", "m", "o", strings.Repeat("0", 16), "d", "2"},
	}).Err())
	b.Publish("t", []byte("3"))
	rec.wait(t, func(got, _ []string) bool { return len(got) == 3 })
	assertContiguous(t, rec, "t", 3)

	// Offset 4, nowhere.
	require.NoError(t, rdb.HIncrBy(ctx, p+"#{t}:meta", "s", 1).Err())
	b.Publish("t", []byte("5"))
	rec.wait(t, func(got, _ []string) bool { return len(got) == 4 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.Equal(t, []string{"t:1", "t:2", "t:3", "LOST:t", "t:5"}, rec.events)
	assert.Equal(t, uint64(5), rec.at[3].offset)
}

// namedClient returns a client whose connections carry name, so that a
// test can find them in CLIENT LIST.
func namedClient(t *testing.T, name string) *redis.Client {
	t.Helper()
	client(t) // skips without Redis
	opts, err := redis.ParseURL(os.Getenv("CHANNELSAPI_TEST_REDIS"))
	require.NoError(t, err)
	opts.ClientName = name
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// killSubscription kills the pub/sub connections named name, and waits
// until channel has no subscriber left.
func killSubscription(t *testing.T, rdb *redis.Client, name, channel string) {
	t.Helper()
	ctx := context.Background()
	list, err := rdb.ClientList(ctx).Result()
	require.NoError(t, err)
	killed := 0
	sc := bufio.NewScanner(strings.NewReader(list))
	for sc.Scan() {
		f := map[string]string{}
		for _, kv := range strings.Fields(sc.Text()) {
			k, v, _ := strings.Cut(kv, "=")
			f[k] = v
		}
		if f["name"] == name && f["sub"] != "0" {
			require.NoError(t, rdb.Do(ctx, "CLIENT", "KILL", "ID", f["id"]).Err())
			killed++
		}
	}
	require.Equal(t, 1, killed, "one subscription connection named %s", name)
	require.Eventually(t, func() bool {
		n, err := rdb.PubSubNumSub(ctx, channel).Result()
		return err == nil && n[channel] == 0
	}, 10*time.Second, 5*time.Millisecond)
}

// publishUntilSubscribed publishes the messages n+1, n+2, ... of topic
// until the topic's channel has a subscriber again, and returns the last
// number published.
func publishUntilSubscribed(t *testing.T, rdb *redis.Client, pub *redisbroker.Broker, prefix, topic string, n int) int {
	t.Helper()
	for {
		n++
		pub.Publish(topic, []byte(strconv.Itoa(n)))
		subs, err := rdb.PubSubNumSub(context.Background(), prefix+topic).Result()
		require.NoError(t, err)
		if subs[prefix+topic] == 1 {
			return n
		}
	}
}

// TestReconnectCatchesUp kills a broker's subscription connection while
// another publishes: messages published while it is down, and while it
// subscribes again, are all handed once, in order, and nothing is lost.
func TestReconnectCatchesUp(t *testing.T) {
	rdb := client(t)
	p := prefix()
	name := "rx-" + strings.TrimSuffix(p, ":")
	rec := newRecorder()
	watching(t, redisbroker.Config{Client: namedClient(t, name), Prefix: p}, rec, "t")
	// The loop below publishes until the subscription is back: a history
	// that keeps all of it.
	pub := watching(t, redisbroker.Config{Client: rdb, Prefix: p, HistorySize: 1 << 20}, newRecorder())

	publishN(pub, "t", 1, 100)
	rec.wait(t, func(got, _ []string) bool { return len(got) == 100 })
	killSubscription(t, rdb, name, p+"t")
	// Published while the subscription is down; then while it comes back.
	publishN(pub, "t", 101, 200)
	n := publishUntilSubscribed(t, rdb, pub, p, "t", 200)
	publishN(pub, "t", n+1, n+100)
	n += 100
	rec.wait(t, func(got, _ []string) bool { return len(got) >= n })
	assertContiguous(t, rec, "t", n)
	quiet(t, rec, 2*time.Second) // past the peers' deadlines
}

// TestReconnectBeforeFirstMessage kills a broker's subscription connection
// after it subscribed to a topic and before anything of the topic reached
// it: once back, it catches up from where the topic stood when it
// subscribed (not before: the messages published earlier are not handed),
// and nothing is reported lost.
func TestReconnectBeforeFirstMessage(t *testing.T) {
	rdb := client(t)
	p := prefix()
	name := "rx-" + strings.TrimSuffix(p, ":")
	// The loop below publishes until the subscription is back: a history
	// that keeps all of it.
	pub := watching(t, redisbroker.Config{Client: rdb, Prefix: p, HistorySize: 1 << 20}, newRecorder())
	publishN(pub, "t", 1, 5) // before the broker below subscribes
	require.Eventually(t, func() bool {
		_, offset, err := pub.Position(context.Background(), "t")
		return err == nil && offset == 5
	}, 10*time.Second, 5*time.Millisecond)

	rec := newRecorder()
	watching(t, redisbroker.Config{Client: namedClient(t, name), Prefix: p}, rec, "t")
	killSubscription(t, rdb, name, p+"t")
	publishN(pub, "t", 6, 100)
	n := publishUntilSubscribed(t, rdb, pub, p, "t", 100)
	publishN(pub, "t", n+1, n+10)
	n += 10
	rec.wait(t, func(got, lost []string) bool { return len(got) >= n-5 || len(lost) > 0 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Empty(t, rec.lost, "the topic catches up from where it stood at the SUBSCRIBE")
	require.Len(t, rec.got, n-5)
	for i, got := range rec.got {
		require.Equal(t, fmt.Sprintf("t:%d", i+6), got)
		require.Equal(t, uint64(i+6), rec.at[i].offset)
	}
}

// TestReconnectHistoryTrimmed kills a broker's subscription connection
// while more is published than the history keeps: once back, the broker
// reports the topic lost, then hands what comes next (maybe the last of
// what was published while it was down, if it subscribed again before
// they reached Redis), in order.
func TestReconnectHistoryTrimmed(t *testing.T) {
	rdb := client(t)
	p := prefix()
	name := "rx-" + strings.TrimSuffix(p, ":")
	rec := newRecorder()
	cfg := redisbroker.Config{Prefix: p, HistorySize: 10}
	cfg.Client = namedClient(t, name)
	watching(t, cfg, rec, "t")
	cfg.Client = rdb
	pub := watching(t, cfg, newRecorder())

	publishN(pub, "t", 1, 10)
	rec.wait(t, func(got, _ []string) bool { return len(got) == 10 })
	killSubscription(t, rdb, name, p+"t")
	publishN(pub, "t", 11, 400)
	require.Eventually(t, func() bool {
		subs, err := rdb.PubSubNumSub(context.Background(), p+"t").Result()
		return err == nil && subs[p+"t"] == 1
	}, 10*time.Second, 5*time.Millisecond)
	rec.wait(t, func(_, lost []string) bool { return len(lost) > 0 })
	pub.Publish("t", []byte("401"))
	rec.wait(t, func(got, _ []string) bool { return len(got) > 10 && got[len(got)-1] == "t:401" })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.Equal(t, []string{"t"}, rec.lost)
	require.Equal(t, "LOST:t", rec.events[10], "after the messages handed before")
	for i, msg := range rec.got {
		if i > 10 {
			require.Equal(t, rec.at[i-1].offset+1, rec.at[i].offset, "in order after the loss")
		}
		if i < 10 {
			require.Equal(t, uint64(i+1), rec.at[i].offset)
		}
		require.Equal(t, fmt.Sprintf("t:%d", rec.at[i].offset), msg)
	}
}

// cutProxy forwards TCP connections to Redis. Once armed, it cuts the
// first connection that sends a request containing a marker, when the
// reply comes: Redis ran the request, and the client never hears so.
type cutProxy struct {
	l      net.Listener
	target string
	marker []byte
	armed  atomic.Bool
	cut    atomic.Int32 // connections cut
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func startCutProxy(t *testing.T, target, marker string) *cutProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &cutProxy{l: l, target: target, marker: []byte(marker)}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = l.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		var cutting atomic.Bool
		p.wg.Add(2)
		go func() { // client to server
			defer p.wg.Done()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if bytes.Contains(buf[:n], p.marker) && p.armed.CompareAndSwap(true, false) {
						cutting.Store(true)
					}
					if _, err := s.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					_ = s.Close()
					return
				}
			}
		}()
		go func() { // server to client
			defer p.wg.Done()
			buf := make([]byte, 64<<10)
			for {
				n, err := s.Read(buf)
				if n > 0 && cutting.Load() {
					p.cut.Add(1)
					_ = c.Close()
					_ = s.Close()
					return
				}
				if n > 0 {
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					_ = c.Close()
					return
				}
			}
		}()
	}
}

// TestRetriedPublishOnce loses the reply to the pipeline that publishes a
// message, after Redis ran it: the pipeline is sent again, and the message
// is in the history and handed once.
func TestRetriedPublishOnce(t *testing.T) {
	rdb := client(t)
	p := prefix()
	rec := newRecorder()
	watching(t, redisbroker.Config{Client: rdb, Prefix: p}, rec, "t")
	proxy := startCutProxy(t, rdb.Options().Addr, "cut-me")
	via := redis.NewClient(&redis.Options{Addr: proxy.l.Addr().String(), DB: rdb.Options().DB})
	t.Cleanup(func() { _ = via.Close() })
	pub := watching(t, redisbroker.Config{Client: via, Prefix: p}, newRecorder())

	pub.Publish("t", []byte("1"))
	rec.wait(t, func(got, _ []string) bool { return len(got) == 1 })
	proxy.armed.Store(true)
	pub.Publish("t", []byte("cut-me"))
	require.Eventually(t, func() bool { return proxy.cut.Load() == 1 }, 10*time.Second, time.Millisecond, "the reply is lost")
	pub.Publish("t", []byte("3"))
	rec.wait(t, func(got, _ []string) bool { return len(got) == 3 })

	n, err := rdb.XLen(context.Background(), p+"#{t}:history").Result()
	require.NoError(t, err)
	assert.Equal(t, int64(3), n, "one entry per message")
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.Equal(t, []string{"t:1", "t:cut-me", "t:3"}, rec.got)
	assert.Equal(t, []uint64{1, 2, 3}, []uint64{rec.at[0].offset, rec.at[1].offset, rec.at[2].offset})
	assert.Empty(t, rec.lost)
}

// TestOutageLongerThanMaxOutage stops Redis for longer than MaxOutage: the
// broker reports its watched topic lost while Redis is still down, and not
// again once it is back, though Redis lost the topic's epoch meanwhile.
func TestOutageLongerThanMaxOutage(t *testing.T) {
	r := redistest.Start(t)
	p := prefix()
	cfg := redisbroker.Config{URL: r.URL, Prefix: p, MaxBackoff: 100 * time.Millisecond, MaxOutage: 300 * time.Millisecond}
	rec := newRecorder()
	watching(t, cfg, rec, "t")
	pub := watching(t, cfg, newRecorder())
	pub.Publish("t", []byte("before"))
	rec.wait(t, func(got, _ []string) bool { return len(got) == 1 })

	r.Stop()
	rec.wait(t, func(_, lost []string) bool { return len(lost) == 1 })
	r.Start()
	rdb := redisClient(t, r.URL)
	require.Eventually(t, func() bool {
		n, err := rdb.PubSubNumSub(context.Background(), p+"t").Result()
		return err == nil && n[p+"t"] == 1
	}, 10*time.Second, 10*time.Millisecond, "subscribed again")
	pub.Publish("t", []byte("after"))
	rec.wait(t, func(got, _ []string) bool { return len(got) == 2 })
	rec.mu.Lock()
	assert.Equal(t, []string{"t:before", "LOST:t", "t:after"}, rec.events)
	rec.lost = nil
	rec.mu.Unlock()
	quiet(t, rec, 2*(missedBeats+1)*heartbeat)
}
