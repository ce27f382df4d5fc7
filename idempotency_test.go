package channelsapi_test

// This file tests idempotency.go: keys on both transports, concurrent
// duplicates replayed (on one instance and on two sharing a database),
// a key reused with another request, retention and cleanup, keys refused
// where they cannot be honoured, and the 409 of a duplicate that waited
// too long.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// withKeys turns idempotency keys on, per user (the X-User header of the
// test servers).
func withKeys(cfg channelsapi.IdempotencyConfig) channelsapi.Option {
	cfg.UserKey = func(r *channelsapi.Request) string { s, _ := r.User.(string); return s }
	return channelsapi.WithIdempotency(cfg)
}

// keyedReply is what a client saw of a keyed request.
type keyedReply struct {
	status   int
	data     any
	etag     string
	replayed bool
}

// keyedREST sends a keyed request over REST as user.
func keyedREST(t *testing.T, srv *testServer, user, method, path, key, body string) keyedReply {
	status, data, h := srv.restWith(t, method, path, body, http.Header{"Idempotency-Key": {key}, "X-User": {user}})
	return keyedReply{status: status, data: data, etag: h.Get("ETag"), replayed: h.Get("Idempotent-Replayed") == "true"}
}

// keyedSocket sends a keyed request on ws.
func keyedSocket(ws *wsClient, stream string, payload map[string]any) keyedReply {
	got := ws.request(stream, payload)
	etag, _ := got["etag"].(string)
	return keyedReply{status: int(got["response_status"].(float64)), data: got["data"], etag: etag, replayed: got["replayed"] == true}
}

// concurrentCreates sends n identical keyed creates of testmodel at once,
// round robin over srvs, every other one on a socket of its own.
func concurrentCreates(t *testing.T, srvs []*testServer, n int, key string) []keyedReply {
	sockets := make([]*wsClient, n)
	for i := range n {
		if i%2 == 1 {
			sockets[i] = srvs[i%len(srvs)].dial(t, http.Header{"X-User": {"alice"}})
			sockets[i].keepETag = true
		}
	}
	replies := make([]keyedReply, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			if ws := sockets[i]; ws != nil {
				replies[i] = keyedSocket(ws, "testmodel", map[string]any{
					"action": "create", "data": map[string]any{"name": "once"}, "idempotency_key": key, "request_id": i,
				})
				return
			}
			replies[i] = keyedREST(t, srvs[i%len(srvs)], "alice", http.MethodPost, "/testmodel", key, `{"name": "once"}`)
		})
	}
	close(start)
	wg.Wait()
	return replies
}

// assertOnce checks that replies are n identical 201s of which all but one
// are replayed.
func assertOnce(t *testing.T, replies []keyedReply) {
	t.Helper()
	replayed := 0
	for i, r := range replies {
		assert.Equal(t, http.StatusCreated, r.status, "reply %d: %v", i, r.data)
		assert.Equal(t, replies[0].data, r.data, "reply %d", i)
		assert.Equal(t, replies[0].etag, r.etag, "reply %d", i)
		if r.replayed {
			replayed++
		}
	}
	assert.Equal(t, len(replies)-1, replayed, "all but the first are replayed")
	assert.NotEmpty(t, replies[0].etag)
}

func TestIdempotentCreateConcurrent(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, withKeys(channelsapi.IdempotencyConfig{}))
	assertOnce(t, concurrentCreates(t, []*testServer{srv}, 100, "create-1"))
	assert.EqualValues(t, 1, countRows[TestModel](t, srv.DB))
}

func TestIdempotentCreateTwoInstances(t *testing.T) {
	dbs := openShared(t, 2, &TestModel{})
	var srvs []*testServer
	for _, db := range dbs {
		srvs = append(srvs, newServerOn(t, db, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, withKeys(channelsapi.IdempotencyConfig{})))
	}
	assertOnce(t, concurrentCreates(t, srvs, 100, "create-2"))
	assert.EqualValues(t, 1, countRows[TestModel](t, dbs[0]))

	// The key is per user; another body is 422 on either instance.
	r := keyedREST(t, srvs[1], "alice", http.MethodPost, "/testmodel", "create-2", `{"name":"other"}`)
	assert.Equal(t, http.StatusUnprocessableEntity, r.status)
	r = keyedREST(t, srvs[0], "bob", http.MethodPost, "/testmodel", "create-2", `{"name":"other"}`)
	assert.Equal(t, http.StatusCreated, r.status)
	assert.False(t, r.replayed)
}

func TestIdempotencyKeyReusedWithAnotherRequest(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, withKeys(channelsapi.IdempotencyConfig{}))
	first := keyedREST(t, srv, "alice", http.MethodPost, "/testmodel", "k1", `{"name":"a"}`)
	require.Equal(t, http.StatusCreated, first.status)
	assert.False(t, first.replayed)

	// The same body, spaced and ordered otherwise, on the socket: a replay.
	ws := srv.dial(t, http.Header{"X-User": {"alice"}})
	ws.keepETag = true
	got := ws.request("testmodel", map[string]any{"action": "create", "data": map[string]any{"name": "a"}, "idempotency_key": "k1", "request_id": "r"})
	assert.EqualValues(t, http.StatusCreated, got["response_status"])
	assert.Equal(t, true, got["replayed"])
	assert.Equal(t, "r", got["request_id"], "the request_id is the repeat's")
	assert.Equal(t, first.data, got["data"])

	reused := []any{"Idempotency key reused with a different request."}
	got = ws.request("testmodel", map[string]any{"action": "create", "data": map[string]any{"name": "b"}, "idempotency_key": "k1", "request_id": "r2"})
	assert.EqualValues(t, http.StatusUnprocessableEntity, got["response_status"])
	assert.Equal(t, reused, got["errors"])
	assert.Nil(t, got["data"])
	r := keyedREST(t, srv, "alice", http.MethodPatch, "/testmodel/1", "k1", `{"name":"a"}`)
	assert.Equal(t, http.StatusUnprocessableEntity, r.status, "another action")
	assert.Equal(t, map[string]any{"detail": reused[0]}, r.data)
	assert.EqualValues(t, 1, countRows[TestModel](t, srv.DB))

	// Update, patch and delete replay too: the delete's repeat is no 404.
	for _, step := range []struct {
		method, body string
		want         int
	}{{http.MethodPut, `{"name":"u"}`, 200}, {http.MethodPatch, `{"name":"p"}`, 200}, {http.MethodDelete, ``, 204}} {
		key := "k-" + step.method
		a := keyedREST(t, srv, "alice", step.method, "/testmodel/1", key, step.body)
		require.Equal(t, step.want, a.status, "%s: %v", step.method, a.data)
		b := keyedREST(t, srv, "alice", step.method, "/testmodel/1", key, step.body)
		assert.Equal(t, a, keyedReply{status: b.status, data: b.data, etag: b.etag, replayed: false}, step.method)
		assert.True(t, b.replayed, step.method)
	}
	assert.EqualValues(t, 0, countRows[TestModel](t, srv.DB))

	// A failed write keeps no key: its retry runs.
	r = keyedREST(t, srv, "alice", http.MethodPost, "/testmodel", "k2", `{}`)
	assert.Equal(t, http.StatusBadRequest, r.status)
	r = keyedREST(t, srv, "alice", http.MethodPost, "/testmodel", "k2", `{"name":"fixed"}`)
	assert.Equal(t, http.StatusCreated, r.status)
	assert.False(t, r.replayed)
}

func TestIdempotencyKeyRetention(t *testing.T) {
	// A retention of a nanosecond: every key is expired once its
	// request is done.
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) },
		withKeys(channelsapi.IdempotencyConfig{Retention: time.Nanosecond, CleanupInterval: time.Hour}))
	for i := range 3 {
		r := keyedREST(t, srv, "alice", http.MethodPost, "/testmodel", "k", fmt.Sprintf(`{"name":"n%d"}`, i))
		assert.Equal(t, http.StatusCreated, r.status, "the key is free again")
		assert.False(t, r.replayed)
	}
	assert.EqualValues(t, 3, countRows[TestModel](t, srv.DB))
	var kept int64
	require.NoError(t, srv.DB.Table("channelsapi_idempotency").Count(&kept).Error)
	assert.EqualValues(t, 1, kept, "one key, taken again")
	n, err := srv.API.ExpireIdempotencyKeys(context.Background())
	require.NoError(t, err)
	assert.EqualValues(t, 1, n)
	require.NoError(t, srv.DB.Table("channelsapi_idempotency").Count(&kept).Error)
	assert.Zero(t, kept)
}

func TestIdempotencyKeyRefused(t *testing.T) {
	plain := testModelServer(t)
	keyed := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, withKeys(channelsapi.IdempotencyConfig{}))
	seed(t, plain.DB, "a")
	seed(t, keyed.DB, "a")
	tests := []struct {
		name   string
		srv    *testServer
		method string
		path   string
		key    string
		want   string
	}{
		{"not enabled", plain, http.MethodPost, "/testmodel", "k", "Idempotency keys are not enabled on this server."},
		{"not enabled, delete", plain, http.MethodDelete, "/testmodel/1", "k", "Idempotency keys are not enabled on this server."},
		{"too long", keyed, http.MethodPost, "/testmodel", strings.Repeat("x", 256), "Idempotency-Key must be 1 to 255 visible ASCII characters."},
		{"not ASCII", keyed, http.MethodPatch, "/testmodel/1", "clé", "Idempotency-Key must be 1 to 255 visible ASCII characters."},
		{"custom action", keyed, http.MethodGet, "/testmodel/test_list", "k", "Idempotency keys are taken by create, update, patch and delete only."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := keyedREST(t, tt.srv, "alice", tt.method, tt.path, tt.key, `{"name":"b"}`)
			assert.Equal(t, http.StatusBadRequest, r.status)
			assert.Equal(t, map[string]any{"detail": tt.want}, r.data)
		})
	}
	ws := plain.dial(t, nil)
	got := ws.request("testmodel", map[string]any{"action": "create", "data": map[string]any{"name": "b"}, "idempotency_key": "k", "request_id": 1})
	assert.EqualValues(t, http.StatusBadRequest, got["response_status"])
	assert.Equal(t, []any{"Idempotency keys are not enabled on this server."}, got["errors"])
	ws = keyed.dial(t, nil)
	for _, give := range []any{5, "", map[string]any{}, "a\u0001b"} {
		got = ws.request("testmodel", map[string]any{"action": "create", "data": map[string]any{"name": "b"}, "idempotency_key": give, "request_id": 1})
		assert.EqualValues(t, http.StatusBadRequest, got["response_status"], "%v", give)
		assert.Equal(t, []any{"idempotency_key must be a string of 1 to 255 visible ASCII characters."}, got["errors"])
	}
	// A read ignores it.
	got = ws.request("testmodel", map[string]any{"action": "retrieve", "pk": 1, "idempotency_key": 5, "request_id": 1})
	assert.EqualValues(t, http.StatusOK, got["response_status"])
	assert.EqualValues(t, 1, countRows[TestModel](t, plain.DB))
	assert.EqualValues(t, 1, countRows[TestModel](t, keyed.DB))
}

// TestIdempotencyDuplicateWaitsThen409: on PostgreSQL a duplicate waits for
// the request running with its key at most IdempotencyConfig.Wait, then is
// answered 409; once the first commits, a repeat replays it. (On SQLite a
// duplicate waits for the database's write lock as every write does.)
func TestIdempotencyDuplicateWaitsThen409(t *testing.T) {
	if postgresDSN() == "" {
		t.Skip("SKIP: PostgreSQL only (set CHANNELSAPI_TEST_POSTGRES): on SQLite a duplicate waits for the write lock")
	}
	entered, release := make(chan struct{}), make(chan struct{})
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
		addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) {
			vs.Hooks.BeforeCreate = func(_ context.Context, _ *gorm.DB, _ *channelsapi.Request, m *TestModel) error {
				if m.Name == "slow" {
					close(entered)
					<-release
				}
				return nil
			}
		})
	}, withKeys(channelsapi.IdempotencyConfig{Wait: 100 * time.Millisecond}))
	first := make(chan keyedReply, 1)
	go func() { first <- keyedREST(t, srv, "alice", http.MethodPost, "/testmodel", "k", `{"name":"slow"}`) }()
	<-entered
	r := keyedREST(t, srv, "alice", http.MethodPost, "/testmodel", "k", `{"name":"slow"}`)
	assert.Equal(t, http.StatusConflict, r.status)
	assert.Equal(t, map[string]any{"detail": "A request with this idempotency key is still running."}, r.data)
	close(release)
	f := <-first
	require.Equal(t, http.StatusCreated, f.status)
	r = keyedREST(t, srv, "alice", http.MethodPost, "/testmodel", "k", `{"name":"slow"}`)
	assert.Equal(t, http.StatusCreated, r.status)
	assert.True(t, r.replayed)
	assert.EqualValues(t, 1, countRows[TestModel](t, srv.DB))
}
