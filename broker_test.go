package channelsapi_test

// This file tests broker.go and wirechange.go, the relay of changes between
// the instances of an application: the API owns the Broker of WithBroker;
// through Redis (redisbroker), every change reaches every instance once and
// in order, authorized per recipient there, and subscribers resync when
// Redis or a peer is lost. The Redis tests need CHANNELSAPI_TEST_REDIS, or a
// redis-server binary for those that stop Redis; TestMultiInstance,
// TestMultiInstancePeerKilled and
// TestBrokerGapWhenAPeerDiesWithAChangeInFlight run the example app as
// processes.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
	"github.com/channelsapi/channelsapi/internal/redistest"
	"github.com/channelsapi/channelsapi/redisbroker"
)

// fakeBroker records how the API uses a Broker.
type fakeBroker struct {
	runErr error

	mu     sync.Mutex
	runs   int
	closes int
}

func (f *fakeBroker) Run(func(string, string, uint64, []byte), func([]string)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.runs++
	return f.runErr
}

func (*fakeBroker) Publish(string, []byte)             {}
func (*fakeBroker) Resync(string)                      {}
func (*fakeBroker) Watch(string, bool)                 {}
func (*fakeBroker) Ready(context.Context, string) bool { return true }
func (*fakeBroker) Position(context.Context, string) (string, uint64, error) {
	return "", 0, nil
}
func (*fakeBroker) History(context.Context, string, string, uint64, func(uint64, []byte)) (string, uint64, bool, error) {
	return "", 0, false, nil
}

func (f *fakeBroker) Close(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes++
	return nil
}

func (f *fakeBroker) counts() (runs, closes int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.runs, f.closes
}

// TestBrokerOwnedByTheAPI checks that the API owns the broker of WithBroker:
// Register runs it once and Shutdown closes it; a Register that fails, the
// broker's Run included, closes it.
func TestBrokerOwnedByTheAPI(t *testing.T) {
	t.Run("run by Register, closed by Shutdown", func(t *testing.T) {
		f := &fakeBroker{}
		api, err := channelsapi.Register(gin.New(), openDB(t, &TestModel{}), channelsapi.WithBroker(f))
		require.NoError(t, err)
		runs, closes := f.counts()
		assert.Equal(t, [2]int{1, 0}, [2]int{runs, closes})
		require.NoError(t, api.Shutdown(context.Background()))
		require.NoError(t, api.Shutdown(context.Background()))
		runs, closes = f.counts()
		assert.Equal(t, 1, runs)
		assert.GreaterOrEqual(t, closes, 1)
	})
	t.Run("Run fails", func(t *testing.T) {
		f := &fakeBroker{runErr: errors.New("no way")}
		_, err := channelsapi.Register(gin.New(), openDB(t, &TestModel{}), channelsapi.WithBroker(f))
		require.ErrorContains(t, err, "no way")
		_, closes := f.counts()
		assert.Equal(t, 1, closes)
	})
	t.Run("another option is invalid", func(t *testing.T) {
		f := &fakeBroker{}
		_, err := channelsapi.Register(gin.New(), openDB(t, &TestModel{}), channelsapi.WithBroker(f), channelsapi.WithQueueSize(-1))
		require.Error(t, err)
		runs, closes := f.counts()
		assert.Equal(t, [2]int{0, 1}, [2]int{runs, closes})
	})
}

// redisPair starts two instances of the conformance app on one database and
// one Redis server, with a channel prefix of their own; mutate may change
// the configuration of their brokers.
func redisPair(tb testing.TB, url string, mutate ...func(*redisbroker.Config)) (a, b *testServer) {
	tb.Helper()
	dbs := openShared(tb, 2, &TestModel{})
	prefix := testPrefix()
	setup := func(api *channelsapi.API, _ *gorm.DB) { addTestModel(tb, api) }
	return newServerOn(tb, dbs[0], setup, withRedis(tb, url, prefix, mutate...)),
		newServerOn(tb, dbs[1], setup, withRedis(tb, url, prefix, mutate...))
}

// redisClient is a client of the test's own, for looking at Redis.
func redisClient(tb testing.TB, url string) *redis.Client {
	tb.Helper()
	opts, err := redis.ParseURL(url)
	require.NoError(tb, err)
	rdb := redis.NewClient(opts)
	tb.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// objectWriter makes, updates and deletes objects of one stream, one after
// the other, for tests that run several writers at once; ids are JSON
// numbers.
type objectWriter struct {
	create func(text string) float64
	update func(id float64, text string)
	remove func(id float64)
}

// restWriter writes objects of stream over s's REST routes, setting field.
func restWriter(tb testing.TB, s *testServer, stream, field string) objectWriter {
	body := func(text string) string { return `{"` + field + `":"` + text + `"}` }
	return objectWriter{
		create: func(text string) float64 {
			status, got := s.doREST(tb, http.MethodPost, "/"+stream, body(text))
			require.Equal(tb, http.StatusCreated, status, "%v", got)
			return got.(map[string]any)["id"].(float64)
		},
		update: func(id float64, text string) {
			status, got := s.doREST(tb, http.MethodPatch, fmt.Sprintf("/%s/%v", stream, id), body(text))
			require.Equal(tb, http.StatusOK, status, "%v", got)
		},
		remove: func(id float64) {
			status, _ := s.doREST(tb, http.MethodDelete, fmt.Sprintf("/%s/%v", stream, id), "")
			require.Equal(tb, http.StatusNoContent, status)
		},
	}
}

// socketWriter writes objects of stream over a WebSocket of its own to s.
func socketWriter(tb testing.TB, s *testServer, stream, field string) objectWriter {
	c := s.dial(tb, nil)
	return objectWriter{
		create: func(text string) float64 {
			got := c.request(stream, map[string]any{"action": "create", "data": map[string]any{field: text}, "request_id": text})
			require.EqualValues(tb, 201, got["response_status"], "%v", got)
			return got["data"].(map[string]any)["id"].(float64)
		},
		update: func(id float64, text string) {
			got := c.request(stream, map[string]any{"action": "patch", "pk": id, "data": map[string]any{field: text}, "request_id": text})
			require.EqualValues(tb, 200, got["response_status"], "%v", got)
		},
		remove: func(id float64) {
			got := c.request(stream, map[string]any{"action": "delete", "pk": id, "request_id": id})
			require.EqualValues(tb, 200, got["response_status"], "%v", got)
		},
	}
}

// TestRedisEachChangeOnceOnEveryInstance writes through two instances, over
// REST, over the WebSocket and through GORM, concurrently, and checks that
// every client of either instance receives every committed change exactly
// once, each object's changes in the order they were made, and the changes
// of the stream in the same order as every other client.
func TestRedisEachChangeOnceOnEveryInstance(t *testing.T) {
	a, b := redisPair(t, redisURL(t))
	readers := []*wsClient{a.dial(t, nil), a.dial(t, nil), b.dial(t, nil), b.dial(t, nil)}
	for _, c := range readers {
		c.subscribeAll()
	}

	// Each writer makes objects one after the other: create, two updates,
	// delete; the writers run at the same time.
	orm := func(db *gorm.DB) objectWriter {
		return objectWriter{
			create: func(name string) float64 {
				m := TestModel{Name: name}
				require.NoError(t, db.Create(&m).Error)
				return float64(m.ID)
			},
			update: func(id float64, name string) {
				require.NoError(t, db.Model(&TestModel{ID: uint(id)}).Update("name", name).Error)
			},
			remove: func(id float64) { require.NoError(t, db.Delete(&TestModel{ID: uint(id)}).Error) },
		}
	}
	rest := func(s *testServer) objectWriter { return restWriter(t, s, "testmodel", "name") }
	socket := func(s *testServer) objectWriter { return socketWriter(t, s, "testmodel", "name") }
	writers := map[string]objectWriter{"rest-a": rest(a), "ws-b": socket(b), "gorm-a": orm(a.DB), "gorm-b": orm(b.DB), "rest-b": rest(b)}

	const objects = 8
	var mu sync.Mutex
	want := map[float64][]map[string]any{} // per object, its events in order
	var wg sync.WaitGroup
	for name, w := range writers {
		wg.Go(func() {
			for i := range objects {
				n := fmt.Sprintf("%s-%d", name, i)
				id := w.create(n + "-v0")
				w.update(id, n+"-v1")
				w.update(id, n+"-v2")
				w.remove(id)
				mu.Lock()
				pk := uint(id)
				want[id] = []map[string]any{
					event("create", pk, n+"-v0"), event("update", pk, n+"-v1"),
					event("update", pk, n+"-v2"), event("delete", pk, n+"-v2"),
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	total := len(writers) * objects * 4

	var first []map[string]any
	for i, c := range readers {
		got := make([]map[string]any, total)
		for j := range got {
			got[j] = c.readPayload("testmodel")
		}
		perObject := map[float64][]map[string]any{}
		for _, e := range got {
			pk := e["pk"].(float64)
			perObject[pk] = append(perObject[pk], e)
		}
		assert.Equal(t, want, perObject, "reader %d: each change once, each object's in order", i)
		if i == 0 {
			first = got
		} else {
			assert.Equal(t, first, got, "reader %d sees the stream in the same order as reader 0", i)
		}
	}

	// Nothing more: a last change from each instance is the next event of
	// every reader (a duplicate would come before it).
	fenceA, fenceB := orm(a.DB).create("fence-a"), orm(b.DB).create("fence-b")
	for i, c := range readers {
		fences := map[float64]bool{}
		for range 2 {
			e := c.readPayload("testmodel")
			assert.Contains(t, []float64{fenceA, fenceB}, e["pk"], "reader %d: no duplicate", i)
			fences[e["pk"].(float64)] = true
		}
		assert.Len(t, fences, 2, "reader %d", i)
	}
}

// TestRedisSubscribesOnlyWhatLocalClientsWatch checks with PUBSUB NUMSUB
// that an instance is subscribed on Redis to a stream's channel exactly
// while it has local subscribers of the stream, of either kind, and that a
// write on an instance without subscribers still reaches the others.
func TestRedisSubscribesOnlyWhatLocalClientsWatch(t *testing.T) {
	url := redisURL(t)
	prefix := testPrefix()
	dbs := openShared(t, 2, &TestModel{})
	setup := func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }
	a, b := newServerOn(t, dbs[0], setup, withRedis(t, url, prefix)), newServerOn(t, dbs[1], setup, withRedis(t, url, prefix))
	seed(t, a.DB, "one")
	rdb := redisClient(t, url)
	channel := prefix + "testmodel"
	numsub := func() int64 {
		n, err := rdb.PubSubNumSub(context.Background(), channel).Result()
		require.NoError(t, err)
		return n[channel]
	}
	require.Zero(t, numsub(), "no subscriber anywhere: no instance listens")

	ca1 := a.dial(t, nil)
	ca1.subscribe("update", nil)
	assert.EqualValues(t, 1, numsub(), "the subscribe reply waits until the instance listens")
	ca2 := a.dial(t, nil)
	ca2.subscribe("create", nil)
	assert.EqualValues(t, 1, numsub(), "one Redis subscription per instance, however many local subscribers")

	cb := b.dial(t, nil)
	got := cb.request("testmodel", map[string]any{"action": "subscribe_instance", "pk": 1, "request_id": "r1"})
	require.EqualValues(t, 201, got["response_status"])
	assert.EqualValues(t, 2, numsub(), "an instance subscription counts too")
	got = cb.request("testmodel", map[string]any{"action": "unsubscribe_instance", "pk": 1, "request_id": "r1"})
	require.EqualValues(t, 204, got["response_status"])
	require.Eventually(t, func() bool { return numsub() == 1 }, 10*time.Second, 10*time.Millisecond,
		"the instance that lost its last subscriber unsubscribes")

	// b has no subscriber: its write still reaches a's.
	status, _ := b.doREST(t, http.MethodPatch, "/testmodel/1", `{"name":"from b"}`)
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, event("update", 1, "from b"), ca1.readPayload("testmodel"))

	got = ca1.request("testmodel", map[string]any{"action": "unsubscribe", "data": map[string]any{"action": "update"}, "request_id": 2})
	require.EqualValues(t, 200, got["response_status"])
	assert.EqualValues(t, 1, numsub(), "a's other subscriber remains")
	require.NoError(t, ca2.conn.Close())
	require.Eventually(t, func() bool { return numsub() == 0 }, 10*time.Second, 10*time.Millisecond,
		"a disconnect that removes the last subscriber unsubscribes")
	require.Eventually(t, func() bool { return a.API.Stats() == channelsapi.Stats{Connections: 1} }, 10*time.Second, 10*time.Millisecond)
}

// TestRedisQueueOverflowResyncs commits more changes at once than the
// outbound queue holds: the subscribers of the stream on both instances are
// closed with 1013, and new subscribers receive events again.
func TestRedisQueueOverflowResyncs(t *testing.T) {
	a, b := redisPair(t, redisURL(t), func(c *redisbroker.Config) { c.QueueSize = 1 })
	ca, cb := a.dial(t, nil), b.dial(t, nil)
	ca.subscribe("create", nil)
	cb.subscribe("create", nil)
	rows := make([]TestModel, 200)
	for i := range rows {
		rows[i].Name = fmt.Sprintf("row-%d", i)
	}
	require.NoError(t, a.DB.Create(&rows).Error, "a write never fails because of the queue")
	assert.Equal(t, 1013, ca.closeCode(), "the writing instance's subscriber resyncs")
	assert.Equal(t, 1013, cb.closeCode(), "the other instance's subscriber resyncs")
	assert.EqualValues(t, 200, countRows[TestModel](t, a.DB))
	receivesAgain(t, a, a, "testmodel", "name")
	receivesAgain(t, b, a, "testmodel", "name")
}

// receivesAgain waits until a new client of reader, subscribed to creates
// of stream, receives the create event of a write made through writer's REST
// API (field names a required text field of the stream's model). A client
// closed with 1013 (Redis was not back yet) tries again, as clients must.
func receivesAgain(t *testing.T, reader, writer *testServer, stream, field string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 0; ; attempt++ {
		require.True(t, time.Now().Before(deadline), "no event after %d attempts", attempt)
		c := reader.dial(t, nil)
		c.send(stream, map[string]any{"action": "subscribe", "data": map[string]any{"action": "create"}, "request_id": 1})
		var e struct {
			Payload struct {
				Data           map[string]any `json:"data"`
				ResponseStatus int            `json:"response_status"`
			} `json:"payload"`
		}
		require.NoError(t, c.conn.SetReadDeadline(time.Now().Add(5*time.Second)))
		err := c.conn.ReadJSON(&e) // the reply, or a close: resyncs of earlier losses may still arrive
		text := fmt.Sprintf("again-%d", attempt)
		if err == nil {
			require.Equal(t, 200, e.Payload.ResponseStatus)
			status, _ := writer.doREST(t, http.MethodPost, "/"+stream, `{"`+field+`":"`+text+`"}`)
			require.Equal(t, http.StatusCreated, status, "writes succeed whatever Redis does")
			// A change committed while Redis was down may still be on its
			// way from the publishing queue: it arrives first.
			for range 3 {
				require.NoError(t, c.conn.SetReadDeadline(time.Now().Add(5*time.Second)))
				if err = c.conn.ReadJSON(&e); err != nil || e.Payload.Data[field] == text {
					break
				}
			}
		}
		_ = c.conn.Close()
		if err == nil {
			require.Equal(t, text, e.Payload.Data[field])
			return
		}
		var ce *websocket.CloseError
		var ne net.Error
		require.True(t, errors.As(err, &ce) && ce.Code == 1013 || errors.As(err, &ne) && ne.Timeout(),
			"a client either receives the event or is told to resync: %v", err)
	}
}

// TestRedisPeerShutdownIsNoGap shuts an instance down cleanly: its broker
// publishes what it queued, then a farewell, so the other instance's
// subscribers are not closed, well past the time after which a silent
// instance counts as dead.
func TestRedisPeerShutdownIsNoGap(t *testing.T) {
	const heartbeat = 100 * time.Millisecond
	a, b := redisPair(t, redisURL(t), func(c *redisbroker.Config) { c.Heartbeat = heartbeat })
	ca := a.dial(t, nil)
	ca.subscribe("create", nil)
	status, _ := b.doREST(t, http.MethodPost, "/testmodel", `{"name":"from b"}`)
	require.Equal(t, http.StatusCreated, status)
	assert.Equal(t, event("create", 1, "from b"), ca.readPayload("testmodel"), "a has heard b")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, b.API.Shutdown(ctx))
	<-time.After(2 * 4 * heartbeat) // what is tested is that nothing happens
	status, _ = a.doREST(t, http.MethodPost, "/testmodel", `{"name":"after"}`)
	require.Equal(t, http.StatusCreated, status)
	assert.Equal(t, event("create", 2, "after"), ca.readPayload("testmodel"), "a's subscriber was not closed")
}

// TestRedisDownAtStartup registers an API while Redis is down: it starts,
// writes succeed, a subscriber that misses events is closed with 1013, and
// once Redis is up events flow again.
func TestRedisDownAtStartup(t *testing.T) {
	r := redistest.Start(t)
	r.Stop()
	srv := newServerOn(t, openDB(t, &TestModel{}), func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) },
		withRedis(t, r.URL, testPrefix()))
	c := srv.dial(t, nil)
	c.subscribe("create", nil)
	status, _ := srv.doREST(t, http.MethodPost, "/testmodel", `{"name":"while down"}`)
	require.Equal(t, http.StatusCreated, status)
	assert.Equal(t, 1013, c.closeCode(), "the subscriber missed an event")

	r.Start()
	receivesAgain(t, srv, srv, "testmodel", "name")
}

// TestRedisRestartResyncs restarts Redis under two instances: their
// subscribers are closed with 1013, writes succeed meanwhile, and after
// Redis is back subscribers of both instances receive the writes of both.
func TestRedisRestartResyncs(t *testing.T) {
	r := redistest.Start(t)
	a, b := redisPair(t, r.URL)
	ca, cb := a.dial(t, nil), b.dial(t, nil)
	ca.subscribe("create", nil)
	cb.subscribe("create", nil)
	status, _ := b.doREST(t, http.MethodPost, "/testmodel", `{"name":"before"}`)
	require.Equal(t, http.StatusCreated, status)
	assert.Equal(t, event("create", 1, "before"), ca.readPayload("testmodel"))
	assert.Equal(t, event("create", 1, "before"), cb.readPayload("testmodel"))

	r.Stop()
	assert.Equal(t, 1013, ca.closeCode())
	assert.Equal(t, 1013, cb.closeCode())
	status, _ = a.doREST(t, http.MethodPost, "/testmodel", `{"name":"while down"}`)
	require.Equal(t, http.StatusCreated, status, "a write never fails because Redis is down")

	r.Start()
	receivesAgain(t, a, b, "testmodel", "name")
	receivesAgain(t, b, a, "testmodel", "name")
}

// TestRedisEventsPerRecipient checks that events of a stream authorized per
// recipient (Permission, Scope, ObjectPermission) are authorized on every
// instance: a note's events reach its owner and the admin, on whichever
// instance they are connected, and never another user.
func TestRedisEventsPerRecipient(t *testing.T) {
	url := redisURL(t)
	prefix := testPrefix()
	dbs := openShared(t, 2, &authNote{})
	setup := func(api *channelsapi.API) { require.NoError(t, channelsapi.Add(api, notesViewSet())) }
	a, b := newAuthServer(t, dbs[0], setup, withRedis(t, url, prefix)), newAuthServer(t, dbs[1], setup, withRedis(t, url, prefix))
	type client struct {
		name string
		user *authUser
		c    *wsClient
	}
	clients := []client{{"alice on a", userA, nil}, {"alice on b", userA, nil}, {"bob on b", userB, nil}, {"admin on b", userAdmin, nil}}
	for i, cl := range clients {
		srv := b
		if i == 0 {
			srv = a
		}
		clients[i].c = srv.dialAs(t, cl.user)
		for _, e := range []string{"create", "update", "delete"} {
			got := clients[i].c.request("notes", map[string]any{"action": "subscribe", "data": map[string]any{"action": e}, "request_id": e})
			require.EqualValues(t, 200, got["response_status"], "%v", got)
		}
	}
	// Every write goes through a, so that they reach Redis in this order.
	write := func(u *authUser, method, path, body string, want int) authNote {
		status, raw := a.restAs(t, u, method, path, body)
		require.Equal(t, want, status, "%s", raw)
		var n authNote
		_ = json.Unmarshal(raw, &n)
		return n
	}
	note := write(userA, http.MethodPost, "/notes", `{"text":"alice's"}`, http.StatusCreated)
	note2 := note
	note2.Text = "alice's, edited"
	write(userA, http.MethodPatch, fmt.Sprintf("/notes/%d", note.ID), `{"text":"alice's, edited"}`, http.StatusOK)
	bobs := write(userB, http.MethodPost, "/notes", `{"text":"bob's"}`, http.StatusCreated)
	endAlice := write(userA, http.MethodPost, "/notes", `{"text":"end-alice"}`, http.StatusCreated)
	write(userB, http.MethodPost, "/notes", `{"text":"end-bob"}`, http.StatusCreated)
	alice := []string{groupNoteEvent("create", note), groupNoteEvent("update", note2)}
	want := map[string][]string{
		"alice on a": alice, "alice on b": alice, "bob on b": {groupNoteEvent("create", bobs)},
		"admin on b": append(append([]string{}, alice...), groupNoteEvent("create", bobs), groupNoteEvent("create", endAlice)),
	}
	for _, cl := range clients {
		sentinel := "end-alice"
		if cl.user != userA {
			sentinel = "end-bob"
		}
		assert.Equal(t, want[cl.name], noteEvents(cl.c, sentinel), cl.name)
	}

	// A delete: who could see the note before is known on the writing
	// instance only (the Scope is a query, and the row is gone). Elsewhere a
	// subscriber who might have seen it must not be left with a silent gap:
	// it receives the delete or is closed with 1013.
	t.Run("delete", func(t *testing.T) {
		write(userA, http.MethodDelete, fmt.Sprintf("/notes/%d", note.ID), "", http.StatusNoContent)
		write(userA, http.MethodPost, "/notes", `{"text":"end-alice-2"}`, http.StatusCreated)
		assert.Equal(t, []string{groupNoteEvent("delete", note2)}, noteEvents(clients[0].c, "end-alice-2"), "alice on a")
		for _, cl := range clients[1:] {
			if cl.user == userB {
				continue
			}
			require.NoError(t, cl.c.conn.SetReadDeadline(time.Now().Add(readTimeout)))
			_, frame, err := cl.c.conn.ReadMessage()
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				assert.Equal(t, 1013, ce.Code, cl.name)
				continue
			}
			require.NoError(t, err, cl.name)
			var f struct{ Payload map[string]any }
			require.NoError(t, json.Unmarshal(frame, &f))
			assert.Equal(t, groupNoteEvent("delete", note2), describeNoteEvent(f.Payload), cl.name)
		}
	})
}

// summary is what the multi-instance test compares of an event.
func summary(p map[string]any) string {
	data, _ := p["data"].(map[string]any)
	return fmt.Sprintf("%v %v %v", p["action"], p["pk"], data["question_text"])
}

// TestMultiInstance runs two processes of the example app on one PostgreSQL
// database and one Redis server, with WebSocket clients on each. Writes are
// made on both, over REST and over the WebSocket, at the same time; every
// client receives every committed change exactly once, each object's changes
// in order, and the stream's changes in the same order as every other
// client. Then Redis is restarted: every client is closed with 1013, writes
// go on succeeding, and once Redis is back clients that reconnect and
// resubscribe receive the changes of both instances again.
func TestMultiInstance(t *testing.T) {
	pg, rd := postgresDSN(), os.Getenv(envRedis)
	if pg == "" || rd == "" {
		t.Skip("SKIP: set CHANNELSAPI_TEST_POSTGRES and CHANNELSAPI_TEST_REDIS to run the multi-instance test (two example processes on PostgreSQL and Redis)")
	}
	if testing.Short() {
		t.Skip("SKIP: -short")
	}
	r := redistest.Start(t) // of its own, to restart it
	bin := buildExample(t)
	args := []string{"-db", postgresSchema(t, pg), "-redis", r.URL}
	a := startInstance(t, bin, args...) // migrates the schema first
	b := startInstance(t, bin, args...)

	subscribe := func(c *wsClient) {
		for _, e := range []string{"create", "update", "delete"} {
			got := c.request("questions", map[string]any{"action": "subscribe", "data": map[string]any{"action": e}, "request_id": e})
			require.EqualValues(t, 200, got["response_status"], "%v", got)
		}
	}
	readers := []*wsClient{a.dial(t, nil), a.dial(t, nil), b.dial(t, nil), b.dial(t, nil)}
	for _, c := range readers {
		subscribe(c)
	}

	rest := func(s *instance) objectWriter { return restWriter(t, s.testServer, "questions", "question_text") }
	socket := func(s *instance) objectWriter { return socketWriter(t, s.testServer, "questions", "question_text") }
	writers := map[string]objectWriter{"rest-a": rest(a), "rest-b": rest(b), "ws-a": socket(a), "ws-b": socket(b)}
	const objects = 10
	var mu sync.Mutex
	want := map[float64][]string{}
	var wg sync.WaitGroup
	for name, w := range writers {
		wg.Go(func() {
			for i := range objects {
				n := fmt.Sprintf("%s-%d", name, i)
				id := w.create(n + "-v0")
				w.update(id, n+"-v1")
				w.update(id, n+"-v2")
				w.remove(id)
				mu.Lock()
				want[id] = []string{
					fmt.Sprintf("create %v %s-v0", id, n), fmt.Sprintf("update %v %s-v1", id, n),
					fmt.Sprintf("update %v %s-v2", id, n), fmt.Sprintf("delete %v %s-v2", id, n),
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	total := len(writers) * objects * 4
	var first []string
	for i, c := range readers {
		got := make([]string, total)
		perObject := map[float64][]string{}
		for j := range got {
			p := c.readPayload("questions")
			got[j] = summary(p)
			pk, _ := p["pk"].(float64)
			perObject[pk] = append(perObject[pk], got[j])
		}
		assert.Equal(t, want, perObject, "reader %d: each change once, each object's in order", i)
		if i == 0 {
			first = got
		} else {
			assert.Equal(t, first, got, "reader %d sees the stream in the same order as reader 0", i)
		}
	}
	fences := map[string]bool{}
	for name, s := range map[string]*instance{"a": a, "b": b} {
		id := rest(s).create("fence-" + name)
		fences[fmt.Sprintf("create %v fence-%s", id, name)] = true
	}
	for i, c := range readers {
		got := map[string]bool{summary(c.readPayload("questions")): true, summary(c.readPayload("questions")): true}
		assert.Equal(t, fences, got, "reader %d: no duplicate before the last changes", i)
	}

	// Redis restarts: clients resync, writes go on.
	r.Stop()
	for i, c := range readers {
		assert.Equal(t, 1013, c.closeCode(), "reader %d is told to resync", i)
	}
	rest(a).create("while Redis is down")
	rest(b).create("while Redis is down")
	r.Start()
	receivesAgain(t, a.testServer, b.testServer, "questions", "question_text")
	receivesAgain(t, b.testServer, a.testServer, "questions", "question_text")
	receivesAgain(t, a.testServer, a.testServer, "questions", "question_text")
}

// TestMultiInstancePeerKilled runs two processes of the example app and
// kills one with SIGKILL, as a crash would: it may have died with changes
// committed and still queued for Redis, so the other instance closes its
// subscribers with 1013, reason "broker gap", once the dead instance missed
// three heartbeats (one second each, the default): 2 to 3 seconds after the
// kill. They load their state again.
func TestMultiInstancePeerKilled(t *testing.T) {
	if os.Getenv(envRedis) == "" {
		t.Skip("SKIP: set CHANNELSAPI_TEST_REDIS to run the multi-instance tests (example processes on Redis)")
	}
	if testing.Short() {
		t.Skip("SKIP: -short")
	}
	r := redistest.Start(t) // of its own: the example uses the default prefix
	bin := buildExample(t)
	db := filepath.Join(t.TempDir(), "polls.db")
	if pg := postgresDSN(); pg != "" {
		db = postgresSchema(t, pg)
	}
	args := []string{"-db", db, "-redis", r.URL}
	a := startInstance(t, bin, args...) // migrates the schema first
	b := startInstance(t, bin, args...)

	c := a.dial(t, nil)
	got := c.request("questions", map[string]any{"action": "subscribe", "data": map[string]any{"action": "create"}, "request_id": 1})
	require.EqualValues(t, 200, got["response_status"], "%v", got)
	// a has heard b: b's first heartbeat went out before its first change.
	id := restWriter(t, b.testServer, "questions", "question_text").create("from b")
	assert.Equal(t, fmt.Sprintf("create %v from b", id), summary(c.readPayload("questions")))

	killed := time.Now()
	require.NoError(t, b.cmd.Process.Kill())
	code, reason := c.closeFrame()
	elapsed := time.Since(killed)
	t.Logf("a's subscriber closed %v after b was killed", elapsed.Round(time.Millisecond))
	assert.Equal(t, 1013, code)
	assert.Equal(t, "broker gap", reason)
	assert.Greater(t, elapsed, 2*time.Second, "not before b missed its heartbeats")
	assert.Less(t, elapsed, 5*time.Second, "within three heartbeats of b, and some slack")
	receivesAgain(t, a.testServer, a.testServer, "questions", "question_text")
}

// TestBrokerGapWhenAPeerDiesWithAChangeInFlight runs two processes of the example app
// on one database and one Redis server. Instance A reaches Redis through a
// proxy of the test's own: the test makes the proxy hold what A sends,
// commits a write on A, waits until A's PUBLISH of it is held by the proxy,
// kills A with SIGKILL and drops the held bytes. The change is committed and
// can never reach Redis; B's subscribers of the stream must not be left
// with that silent gap: they are closed with 1013 "broker gap".
//
// A proxy rather than pausing Redis (CLIENT PAUSE WRITE, DEBUG SLEEP):
// whether a paused Redis still runs the PUBLISH of a client that
// disconnected, and whether A had sent it yet when it was killed, are then
// not the test's to know. The proxy sees the PUBLISH arrive and guarantees
// it goes no further; B's own connection to Redis is untouched.
func TestBrokerGapWhenAPeerDiesWithAChangeInFlight(t *testing.T) {
	peerDiesWithAChangeInFlight(t, false)
}

// TestOutboxPeerDiesWithAChangeInFlight is
// TestBrokerGapWhenAPeerDiesWithAChangeInFlight with both instances of the
// example app run with -outbox: the change that never reached Redis is in
// the outbox, and B's subscriber receives it (once B has polled, or read
// the outbox when A fell silent) instead of being closed.
func TestOutboxPeerDiesWithAChangeInFlight(t *testing.T) {
	peerDiesWithAChangeInFlight(t, true)
}

func peerDiesWithAChangeInFlight(t *testing.T, outbox bool) {
	if testing.Short() {
		t.Skip("SKIP: -short")
	}
	r := redistest.Start(t)
	proxy := startHoldingProxy(t, "127.0.0.1:"+strconv.Itoa(r.Port))
	bin := buildExample(t)
	db := filepath.Join(t.TempDir(), "polls.db")
	if pg := postgresDSN(); pg != "" {
		db = postgresSchema(t, pg)
	}
	var extra []string
	if outbox {
		extra = []string{"-outbox"}
	}
	a := startInstance(t, bin, append([]string{"-db", db, "-redis", proxy.url}, extra...)...) // migrates the schema first
	b := startInstance(t, bin, append([]string{"-db", db, "-redis", r.URL}, extra...)...)

	cb := b.dial(t, nil)
	got := cb.request("questions", map[string]any{"action": "subscribe", "data": map[string]any{"action": "create"}, "request_id": 1})
	require.EqualValues(t, 200, got["response_status"], "%v", got)
	writeA := restWriter(t, a.testServer, "questions", "question_text")
	writeA.create("through A")
	assert.Equal(t, "through A", dataOf(cb.readPayload("questions"))["question_text"], "A's changes reach B's subscribers")

	proxy.hold()
	marker := make([]byte, 8)
	_, _ = rand.Read(marker)
	lost := "lost-" + hex.EncodeToString(marker)
	writeA.create(lost) // committed: the reply comes after the commit
	proxy.waitFor(t, []byte(lost))
	require.NoError(t, a.cmd.Process.Kill())
	_ = a.cmd.Wait()
	proxy.close()

	if outbox {
		got := cb.readPayload("questions")
		assert.Equal(t, "create", got["action"])
		assert.Equal(t, lost, dataOf(got)["question_text"], "the change A committed and never published reaches B's subscriber")
		cb.assertAliveOn("questions")
		return
	}
	code, reason, frames := cb.closeWithin(t, 15*time.Second)
	assert.Empty(t, frames, "no event: the change never reached Redis")
	assert.Equal(t, 1013, code, "B's subscriber may have missed a change: it must resync")
	assert.Equal(t, "broker gap", reason)
}

// closeWithin reads until the server closes the connection, at most d, and
// returns the close code and reason and the payloads received before it
// (code 0: no close within d).
func (c *wsClient) closeWithin(tb testing.TB, d time.Duration) (code int, reason string, frames []map[string]any) {
	tb.Helper()
	require.NoError(tb, c.conn.SetReadDeadline(time.Now().Add(d)))
	for {
		_, b, err := c.conn.ReadMessage()
		var ce *websocket.CloseError
		switch {
		case err == nil:
			frames = append(frames, map[string]any{"frame": string(b)})
			continue
		case errors.As(err, &ce):
			return ce.Code, ce.Text, frames
		default:
			var ne net.Error
			require.True(tb, errors.As(err, &ne) && ne.Timeout(), "want a close frame or nothing, got %v", err)
			return 0, "", frames
		}
	}
}

// holdingProxy forwards TCP connections to a server (Redis). Once told to
// hold, it keeps what clients send from then on instead of forwarding it;
// what the server sends still reaches them.
type holdingProxy struct {
	url string // redis:// URL of the proxy
	l   net.Listener
	to  string
	wg  sync.WaitGroup

	mu      sync.Mutex
	holding bool
	held    []byte
	conns   []net.Conn
	grown   chan struct{} // closed and replaced when held grows
	closed  bool
}

func startHoldingProxy(tb testing.TB, to string) *holdingProxy {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	p := &holdingProxy{url: "redis://" + l.Addr().String() + "/0", l: l, to: to, grown: make(chan struct{})}
	p.wg.Go(p.accept)
	tb.Cleanup(p.close)
	return p
}

func (p *holdingProxy) accept() {
	for {
		client, err := p.l.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.to)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = client.Close()
			_ = server.Close()
			return
		}
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		p.wg.Go(func() {
			_, _ = io.Copy(client, server)
			_ = client.Close()
		})
		p.wg.Go(func() {
			defer server.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := client.Read(buf)
				if n > 0 && !p.keep(buf[:n]) {
					if _, werr := server.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		})
	}
}

// keep holds b if the proxy is holding, and reports whether it did.
func (p *holdingProxy) keep(b []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.holding {
		return false
	}
	p.held = append(p.held, b...)
	close(p.grown)
	p.grown = make(chan struct{})
	return true
}

// hold makes the proxy keep what clients send from now on.
func (p *holdingProxy) hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holding = true
}

// waitFor waits until the held bytes contain marker.
func (p *holdingProxy) waitFor(tb testing.TB, marker []byte) {
	tb.Helper()
	timeout := time.NewTimer(readTimeout)
	defer timeout.Stop()
	for {
		p.mu.Lock()
		found, grown := bytes.Contains(p.held, marker), p.grown
		p.mu.Unlock()
		if found {
			return
		}
		select {
		case <-grown:
		case <-timeout.C:
			require.FailNow(tb, "the proxy never received the change", "%q", marker)
		}
	}
}

// close drops every connection and what was held, and waits for the
// proxy's goroutines; closing twice is a no-op.
func (p *holdingProxy) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed, p.held = true, nil
	conns := p.conns
	p.mu.Unlock()
	_ = p.l.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	p.wg.Wait()
}

// fragileNote's JSON encoding panics for the text "boom".
type fragileNote struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Text string `json:"text"`
}

func (n fragileNote) MarshalJSON() ([]byte, error) {
	if n.Text == "boom" {
		panic("cannot encode")
	}
	type plain fragileNote
	return json.Marshal(plain(n))
}

// TestBrokerEncodingPanic: with a broker, a change is encoded before its
// transaction takes its place in the order. A model whose JSON encoding
// panics resyncs its stream's subscribers (on every instance: the resync
// travels as the broker's marker, so it arrives as a "broker gap"); the
// write commits, and the writes after it are published as usual.
func TestBrokerEncodingPanic(t *testing.T) {
	db := openDB(t, &fragileNote{})
	srv := newServerOn(t, db, func(api *channelsapi.API, _ *gorm.DB) {
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[fragileNote]{Stream: "fragile"}))
	}, withRedis(t, redisURL(t), testPrefix()), quietLog())
	first := srv.dial(t, nil)
	got := first.request("fragile", map[string]any{"action": "subscribe", "data": map[string]any{"action": "create"}, "request_id": 1})
	require.EqualValues(t, 200, got["response_status"], "%v", got)
	require.NoError(t, db.Create(&fragileNote{Text: "boom"}).Error, "the write commits")
	code, reason := first.closeFrame()
	assert.Equal(t, 1013, code)
	assert.Equal(t, "broker gap", reason)

	second := srv.dial(t, nil)
	got = second.request("fragile", map[string]any{"action": "subscribe", "data": map[string]any{"action": "create"}, "request_id": 1})
	require.EqualValues(t, 200, got["response_status"], "%v", got)
	require.NoError(t, db.Create(&fragileNote{Text: "fine"}).Error)
	p := second.readPayload("fragile")
	assert.Equal(t, "fine", dataOf(p)["text"], "%v", p)
}
