package redisbroker_test

// This file tests how brokers learn that a peer died: a peer runs in a
// process of its own (this test binary, run again with envPeer set), so
// that it can be killed as an instance of an application is.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/channelsapi/channelsapi/internal/redistest"
	"github.com/channelsapi/channelsapi/redisbroker"
)

// envPeer holds "url prefix heartbeat" for a peer process.
const envPeer = "REDISBROKER_TEST_PEER"

// heartbeat is the interval of the brokers of these tests.
const heartbeat = 100 * time.Millisecond

// missedBeats is how many heartbeats a peer may miss before it counts as
// dead.
const missedBeats = 3

// runPeer is a peer process: it runs a broker on the Redis server, prefix
// and heartbeat of envPeer, publishes "hello" on topic "t", and closes the
// broker once its standard input ends.
func runPeer() int {
	f := strings.Fields(os.Getenv(envPeer))
	if len(f) != 3 {
		fmt.Fprintln(os.Stderr, "peer: want url, prefix and heartbeat")
		return 2
	}
	hb, err := time.ParseDuration(f[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		return 2
	}
	b, err := redisbroker.New(redisbroker.Config{URL: f[0], Prefix: f[1], Heartbeat: hb})
	if err == nil {
		err = b.Run(func(string, string, uint64, []byte) {}, func([]string) {})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		return 1
	}
	b.Publish("t", []byte("hello"))
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		return 1
	}
	return 0
}

// peer is a peer process.
type peer struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
	exited chan struct{}
}

// startPeer starts a peer process on url with prefix. It is killed and
// waited for at cleanup, if it still runs.
func startPeer(t *testing.T, url, prefix string) *peer {
	t.Helper()
	p := &peer{cmd: exec.Command(os.Args[0], "-test.run=^$"), exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), envPeer+"="+url+" "+prefix+" "+heartbeat.String())
	p.cmd.Stderr = &p.stderr
	var err error
	p.stdin, err = p.cmd.StdinPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("peer's output: %s", p.stderr.String())
		}
	})
	return p
}

// kill kills the peer with SIGKILL: it says no farewell.
func (p *peer) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Kill())
	<-p.exited
}

// stop closes the peer's broker and waits until the process exits.
func (p *peer) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.stdin.Close())
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		t.Fatal("the peer does not exit")
	}
	require.True(t, p.cmd.ProcessState.Success(), "the peer closed its broker: %s", p.stderr.String())
}

func redisURL(t *testing.T) string {
	t.Helper()
	client(t) // skips without Redis
	return os.Getenv("CHANNELSAPI_TEST_REDIS")
}

// watching starts a broker that watches topics and is ready.
func watching(t *testing.T, cfg redisbroker.Config, rec *recorder, topics ...string) *redisbroker.Broker {
	t.Helper()
	cfg.Heartbeat = heartbeat
	b := start(t, cfg, rec)
	for _, topic := range topics {
		b.Watch(topic, true)
		require.True(t, b.Ready(context.Background(), topic))
	}
	return b
}

// TestPeerKilledReportsWatchedTopicsLost kills a peer that this broker has
// heard from: between two and three of the peer's heartbeat intervals
// later, it reports every topic it watches lost, whatever the peer
// published on.
func TestPeerKilledReportsWatchedTopicsLost(t *testing.T) {
	url := redisURL(t)
	p := prefix()
	rec := newRecorder()
	watching(t, redisbroker.Config{URL: url, Prefix: p}, rec, "t", "u")
	pr := startPeer(t, url, p)
	// The peer's first heartbeat went out before its message.
	rec.wait(t, func(got, _ []string) bool { return slices.Contains(got, "t:hello") })

	killed := time.Now()
	pr.kill(t)
	rec.wait(t, func(_, lost []string) bool { return len(lost) > 0 })
	elapsed := time.Since(killed)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.ElementsMatch(t, []string{"t", "u"}, rec.lost, "every watched topic, once")
	assert.Greater(t, elapsed, (missedBeats-1)*heartbeat, "not before the peer missed its heartbeats")
	assert.Less(t, elapsed, missedBeats*heartbeat+time.Second, "within three heartbeats of the peer, and some slack")
}

// TestPeerClosedIsNoLoss closes a peer cleanly: its farewell, after all it
// queued, tells this broker that nothing of it is missing. Well past the
// time a silent peer would count as dead, nothing is reported lost.
func TestPeerClosedIsNoLoss(t *testing.T) {
	url := redisURL(t)
	p := prefix()
	rec := newRecorder()
	watching(t, redisbroker.Config{URL: url, Prefix: p}, rec, "t")
	pr := startPeer(t, url, p)
	rec.wait(t, func(got, _ []string) bool { return slices.Contains(got, "t:hello") })

	pr.stop(t)
	quiet(t, rec, 2*(missedBeats+1)*heartbeat)
}

// quiet checks that rec is told of no lost topic for d.
func quiet(t *testing.T, rec *recorder, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		rec.mu.Lock()
		lost := slices.Clone(rec.lost)
		rec.mu.Unlock()
		require.Empty(t, lost)
		select {
		case <-rec.notify:
		case <-deadline:
			return
		}
	}
}

// TestRedisRestart restarts Redis, without persistence, under two brokers,
// for longer than three heartbeats. Redis lost the topic's history: once it
// is back, the broker that watches the topic reports it lost, its epoch
// having changed, and nothing more, though the other broker's heartbeats
// stopped for longer than a dead peer's.
func TestRedisRestart(t *testing.T) {
	r := redistest.Start(t)
	p := prefix()
	cfg := redisbroker.Config{URL: r.URL, Prefix: p, MaxBackoff: 200 * time.Millisecond}
	recA, recB := newRecorder(), newRecorder()
	watching(t, cfg, recA, "t")
	b := watching(t, cfg, recB)
	b.Publish("t", []byte("before"))
	recA.wait(t, func(got, _ []string) bool { return slices.Contains(got, "t:before") })

	r.Stop()
	// Down for longer than a silent peer may be.
	<-time.After(2 * missedBeats * heartbeat)
	r.Start()

	rdb := redisClient(t, r.URL)
	require.Eventually(t, func() bool {
		n, err := rdb.PubSubNumSub(context.Background(), p+"t", p+"#peers").Result()
		return err == nil && n[p+"t"] == 1 && n[p+"#peers"] == 2
	}, 10*time.Second, 10*time.Millisecond, "both brokers subscribe again")
	b.Publish("t", []byte("after"))
	recA.wait(t, func(got, _ []string) bool { return slices.Contains(got, "t:after") })
	recA.mu.Lock()
	assert.Equal(t, []string{"t:before", "LOST:t", "t:after"}, recA.events, "the epoch changed")
	assert.NotEqual(t, recA.at[0].epoch, recA.at[1].epoch)
	assert.Equal(t, uint64(1), recA.at[1].offset)
	recA.lost = nil
	recA.mu.Unlock()
	quiet(t, recA, 2*(missedBeats+1)*heartbeat)
}

func redisClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	require.NoError(t, err)
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}
