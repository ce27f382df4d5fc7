package channelsapi_test

// This file holds what the tests of several files share: the goroutine-leak
// check of TestMain; the databases (SQLite, or PostgreSQL when
// CHANNELSAPI_TEST_POSTGRES is set) and the Redis broker of an instance
// (CHANNELSAPI_TEST_REDIS); the servers under test and their constructors;
// the WebSocket client (requests, subscriptions, close frames) and the REST
// one; JSON helpers; the users and notes of example/auth.go; the scoped
// notes and the delivery gate; the items and the hostile corpus of client
// input; and the example app run as a process.

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/channelsapi/channelsapi"
	"github.com/channelsapi/channelsapi/redisbroker"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	// GORM's prepared-statement cache (Session{PrepareStmt: true}) starts an
	// expiry goroutine that GORM never stops: it is GORM's, not ours.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("gorm.io/gorm/internal/lru.NewLRU[...].func1"))
}

// envPostgres names the environment variable holding the DSN of a
// PostgreSQL server to run the tests against, for example
// postgres://postgres@127.0.0.1:5440/postgres?sslmode=disable. Unset, the
// tests use SQLite.
const envPostgres = "CHANNELSAPI_TEST_POSTGRES"

// envOutbox, when set (to anything), runs every test server with the
// outbox (WithOutbox), as .ci/run does once for SQLite: every guarantee
// of delivery must hold with it too.
const envOutbox = "CHANNELSAPI_TEST_OUTBOX"

// outboxAtLeastOnce reports whether the test servers run the outbox on
// PostgreSQL, where changes are numbered right after COMMIT: a list's or a
// snapshot's position taken while writes run is at least once (README, the
// outbox), so a row listed may also be sent.
func outboxAtLeastOnce() bool { return os.Getenv(envOutbox) != "" && postgresDSN() != "" }

// postgresDSN returns the DSN of envPostgres, or "" when it is not set.
func postgresDSN() string { return os.Getenv(envPostgres) }

// openDB opens a fresh database: a SQLite file in a temporary directory, or,
// when CHANNELSAPI_TEST_POSTGRES is set, a schema of its own on that
// PostgreSQL server (openPostgres).
func openDB(tb testing.TB, models ...any) *gorm.DB {
	tb.Helper()
	if dsn := postgresDSN(); dsn != "" {
		return openPostgres(tb, dsn, models...)
	}
	return openSQLite(tb, "", models...)
}

// openSQLite opens a fresh SQLite file with extra DSN parameters (e.g.
// "&_foreign_keys=1") and migrates models.
func openSQLite(tb testing.TB, params string, models ...any) *gorm.DB {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "test.db")
	db, err := gorm.Open(sqlite.Open("file:"+path+"?_journal_mode=WAL&_busy_timeout=10000&_txlock=immediate"+params),
		&gorm.Config{Logger: logger.Discard})
	require.NoError(tb, err)
	sqlDB, err := db.DB()
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = sqlDB.Close() })
	require.NoError(tb, db.AutoMigrate(models...))
	return db
}

// postgresSchema creates a uniquely named schema on the server of dsn,
// drops it (with everything in it) when the test ends, and returns a DSN
// whose connections work in that schema (search_path). Tests sharing one
// server so never see each other's tables.
func postgresSchema(tb testing.TB, dsn string) string {
	tb.Helper()
	admin, err := gorm.Open(postgres.Open(dsn), &gorm.Config{Logger: logger.Discard})
	require.NoError(tb, err)
	sqlAdmin, err := admin.DB()
	require.NoError(tb, err)
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	name := "channelsapi_test_" + hex.EncodeToString(b)
	require.NoError(tb, admin.Exec("CREATE SCHEMA "+name).Error)
	tb.Cleanup(func() {
		if err := admin.Exec("DROP SCHEMA " + name + " CASCADE").Error; err != nil {
			tb.Errorf("drop schema %s: %v", name, err)
		}
		_ = sqlAdmin.Close()
	})
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		require.NoError(tb, err)
		q := u.Query()
		q.Set("search_path", name)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + name // key=value form
}

// openPostgres opens a fresh schema on the server of dsn and migrates models
// into it.
func openPostgres(tb testing.TB, dsn string, models ...any) *gorm.DB {
	tb.Helper()
	db, err := gorm.Open(postgres.Open(postgresSchema(tb, dsn)), &gorm.Config{Logger: logger.Discard})
	require.NoError(tb, err)
	sqlDB, err := db.DB()
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = sqlDB.Close() })
	require.NoError(tb, db.AutoMigrate(models...))
	return db
}

// envRedis names the environment variable holding the URL of a Redis server
// for the broker tests, for example redis://127.0.0.1:6390/0. Tests that
// restart Redis start a redis-server of their own instead.
const envRedis = "CHANNELSAPI_TEST_REDIS"

// redisURL returns the URL of envRedis, or skips the test.
func redisURL(tb testing.TB) string {
	tb.Helper()
	u := os.Getenv(envRedis)
	if u == "" {
		tb.Skip("SKIP: set CHANNELSAPI_TEST_REDIS (e.g. redis://127.0.0.1:6390/0) to run the Redis broker tests")
	}
	return u
}

// testPrefix is a Redis channel prefix of the test's own, so that tests
// sharing a Redis server never hear each other.
func testPrefix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "channelsapi-test-" + hex.EncodeToString(b) + ":"
}

// openShared opens n connection pools on one fresh database, as n instances
// of an application would, and migrates models once.
func openShared(tb testing.TB, n int, models ...any) []*gorm.DB {
	tb.Helper()
	var dial gorm.Dialector
	if dsn := postgresDSN(); dsn != "" {
		dsn = postgresSchema(tb, dsn)
		dial = postgres.Open(dsn)
	} else {
		path := filepath.Join(tb.TempDir(), "shared.db")
		dial = sqlite.Open("file:" + path + "?_journal_mode=WAL&_busy_timeout=10000&_txlock=immediate")
	}
	dbs := make([]*gorm.DB, n)
	for i := range dbs {
		db, err := gorm.Open(dial, &gorm.Config{Logger: logger.Discard})
		require.NoError(tb, err)
		sqlDB, err := db.DB()
		require.NoError(tb, err)
		tb.Cleanup(func() { _ = sqlDB.Close() })
		dbs[i] = db
	}
	require.NoError(tb, dbs[0].AutoMigrate(models...))
	return dbs
}

// withRedis is the option of one instance connected through the Redis
// server at url, with channel prefix: a broker of its own, which the API
// runs and closes. mutate may change the broker's configuration.
func withRedis(tb testing.TB, url, prefix string, mutate ...func(*redisbroker.Config)) channelsapi.Option {
	tb.Helper()
	cfg := redisbroker.Config{URL: url, Prefix: prefix}
	for _, m := range mutate {
		m(&cfg)
	}
	b, err := redisbroker.New(cfg)
	require.NoError(tb, err)
	return channelsapi.WithBroker(b)
}

// TestModel is the conformance fixture of channels-api.
type TestModel struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Name string `json:"name" binding:"required,max=255"`
}

// testServer is a Gin app with channelsapi on a fresh database (openDB).
type testServer struct {
	URL    string // http://127.0.0.1:port
	WSURL  string // ws://127.0.0.1:port/ws
	DB     *gorm.DB
	API    *channelsapi.API
	Router *gin.Engine

	// The documents of an instance of the example app, which has no API
	// here (docs).
	fetchDocs         sync.Once
	openAPI, asyncAPI []byte
}

// newServer registers channelsapi on a new router and database; setup adds
// the ViewSets. Authentication for tests: the header "X-User" becomes the
// gin.Context's "user".
func newServer(tb testing.TB, setup func(api *channelsapi.API, db *gorm.DB), opts ...channelsapi.Option) *testServer {
	tb.Helper()
	return newServerOn(tb, openDB(tb, &TestModel{}), setup, opts...)
}

// newServerOn is newServer on db, which other servers may share: instances
// of one application (broker_test.go).
func newServerOn(tb testing.TB, db *gorm.DB, setup func(api *channelsapi.API, db *gorm.DB), opts ...channelsapi.Option) *testServer {
	tb.Helper()
	router := gin.New()
	router.Use(func(c *gin.Context) {
		if u := c.GetHeader("X-User"); u != "" {
			c.Set("user", u)
		}
	})
	return serveAPI(tb, router, db, setup, opts...)
}

// serveAPI registers channelsapi on router and db, lets setup add the
// ViewSets, and serves the router on 127.0.0.1 until the test ends.
func serveAPI(tb testing.TB, router *gin.Engine, db *gorm.DB, setup func(api *channelsapi.API, db *gorm.DB), opts ...channelsapi.Option) *testServer {
	tb.Helper()
	if os.Getenv(envOutbox) != "" {
		opts = append([]channelsapi.Option{channelsapi.WithOutbox(channelsapi.OutboxConfig{PollInterval: 100 * time.Millisecond})}, opts...)
	}
	api, err := channelsapi.Register(router, db, opts...)
	require.NoError(tb, err)
	if setup != nil {
		setup(api, db)
	}
	srv := httptest.NewServer(router)
	tb.Cleanup(srv.Close)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(tb, api.Shutdown(ctx))
	})
	return &testServer{URL: srv.URL, WSURL: "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws", DB: db, API: api, Router: router}
}

// addTestModel adds the conformance ViewSet, with its custom actions.
func addTestModel(tb testing.TB, api *channelsapi.API, mutate ...func(*channelsapi.ViewSet[TestModel])) {
	tb.Helper()
	someData := func(context.Context, *channelsapi.Request, *TestModel) (any, int, error) {
		return "some data", 0, nil
	}
	objName := func(_ context.Context, _ *channelsapi.Request, m *TestModel) (any, int, error) {
		return m.Name, 0, nil
	}
	vs := channelsapi.ViewSet[TestModel]{
		Stream: "testmodel",
		Label:  "tests.testmodel",
		Actions: map[string]channelsapi.Action[TestModel]{
			"test_list":    {Handle: someData},
			"test_detail":  {Detail: true, Handle: objName},
			"named_list":   {Handle: someData},
			"named_detail": {Detail: true, Handle: objName},
		},
	}
	for _, m := range mutate {
		m(&vs)
	}
	require.NoError(tb, channelsapi.Add(api, vs))
}

func testModelServer(t *testing.T, opts ...channelsapi.Option) *testServer {
	t.Helper()
	return newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, opts...)
}

// quietLog discards the library's log of internal errors that a test
// provokes on purpose.
func quietLog() channelsapi.Option {
	return channelsapi.WithLogger(slog.New(slog.DiscardHandler))
}

func seed(tb testing.TB, db *gorm.DB, names ...string) {
	tb.Helper()
	for _, n := range names {
		require.NoError(tb, db.Create(&TestModel{Name: n}).Error)
	}
}

func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("Name-%d", i)
	}
	return out
}

func countRows[T any](tb testing.TB, db *gorm.DB) int64 {
	tb.Helper()
	var n int64
	require.NoError(tb, db.Model(new(T)).Count(&n).Error)
	return n
}

// dumpRows returns every row of T's table (soft-deleted ones too), in key
// order, as JSON: two dumps are equal when the table did not change.
func dumpRows[T any](tb testing.TB, db *gorm.DB) string {
	tb.Helper()
	var rows []T
	require.NoError(tb, db.Unscoped().Order("id").Find(&rows).Error)
	return string(jsonBytes(tb, rows))
}

// wsClient is a real WebSocket client; every read has a deadline.
type wsClient struct {
	tb   testing.TB
	conn *websocket.Conn
	srv  *testServer // whose documents describe its frames; nil: unchecked
	// keepETag keeps the "etag" of the payloads read (etag_test.go);
	// other tests compare payloads without it (withoutETag).
	keepETag bool
}

const readTimeout = 10 * time.Second

func (s *testServer) dial(tb testing.TB, header http.Header) *wsClient {
	tb.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(s.WSURL, header)
	require.NoError(tb, err)
	_ = resp.Body.Close()
	c := &wsClient{tb: tb, conn: conn, srv: s}
	tb.Cleanup(func() { _ = conn.Close() })
	return c
}

// in returns c for use in the (sub)test tb, so that its failures are tb's.
func (c *wsClient) in(tb testing.TB) *wsClient {
	return &wsClient{tb: tb, conn: c.conn, srv: c.srv, keepETag: c.keepETag}
}

func (c *wsClient) sendRaw(b []byte) {
	c.tb.Helper()
	require.NoError(c.tb, c.conn.WriteMessage(websocket.TextMessage, b))
}

func (c *wsClient) send(stream string, payload any) {
	c.tb.Helper()
	b, err := json.Marshal(map[string]any{"stream": stream, "payload": payload})
	require.NoError(c.tb, err)
	c.sendRaw(b)
}

// read returns the next frame as parsed JSON.
func (c *wsClient) read() map[string]any {
	c.tb.Helper()
	require.NoError(c.tb, c.conn.SetReadDeadline(time.Now().Add(readTimeout)))
	typ, b, err := c.conn.ReadMessage()
	require.NoError(c.tb, err)
	require.Equal(c.tb, websocket.TextMessage, typ)
	c.checkFrame(b)
	var m map[string]any
	require.NoError(c.tb, json.Unmarshal(b, &m), "frame %s", b)
	withoutOffset(c.tb, m)
	if !c.keepETag {
		withoutETag(c.tb, m)
	}
	return m
}

// withoutETag checks the "etag" of an object reply or event (PROTOCOL.md
// 11: a quoted entity tag, which etag_test.go follows) and removes it, so
// that tests of everything else compare payloads as channels-api sends
// them.
func withoutETag(tb testing.TB, frame map[string]any) {
	tb.Helper()
	p, _ := frame["payload"].(map[string]any)
	if raw, ok := p["etag"]; ok {
		s, _ := raw.(string)
		require.True(tb, len(s) > 2 && s[0] == '"' && s[len(s)-1] == '"', "etag %v of %v", raw, frame)
		delete(p, "etag")
	}
}

// withoutOffset checks the "offset" of an event frame (PROTOCOL.md 10: a
// positive integer, which resume_test.go follows) and removes it, so that
// tests of everything else compare events as channels-api sends them.
func withoutOffset(tb testing.TB, frame map[string]any) {
	tb.Helper()
	p, _ := frame["payload"].(map[string]any)
	if p == nil {
		return
	}
	if raw, ok := p["offset"]; ok {
		n, isNumber := raw.(float64)
		require.True(tb, isNumber && n >= 1 && n == float64(uint64(n)), "offset %v of %v", raw, frame)
		delete(p, "offset")
	}
	if meta, ok := p["meta"].(map[string]any); ok {
		withoutPosition(tb, meta)
	}
	if data, ok := p["data"].(map[string]any); ok && p["action"] == "subscribe_list" {
		withoutPosition(tb, data) // of a snapshot
	}
}

// readRaw returns the next text frame as sent.
func (c *wsClient) readRaw() []byte {
	c.tb.Helper()
	require.NoError(c.tb, c.conn.SetReadDeadline(time.Now().Add(readTimeout)))
	typ, b, err := c.conn.ReadMessage()
	require.NoError(c.tb, err)
	require.Equal(c.tb, websocket.TextMessage, typ)
	c.checkFrame(b)
	return b
}

// readPayload reads the next frame, checks its stream and returns its payload.
func (c *wsClient) readPayload(stream string) map[string]any {
	c.tb.Helper()
	f := c.read()
	require.Equal(c.tb, stream, f["stream"], "frame %v", f)
	p, ok := f["payload"].(map[string]any)
	require.True(c.tb, ok, "payload of %v", f)
	return p
}

// request sends payload on stream and returns the reply payload.
func (c *wsClient) request(stream string, payload map[string]any) map[string]any {
	c.tb.Helper()
	c.send(stream, payload)
	return c.readPayload(stream)
}

// assertAlive checks that the connection still answers a good request.
func (c *wsClient) assertAlive() {
	c.tb.Helper()
	got := c.request("testmodel", map[string]any{"action": "list", "request_id": "alive"})
	assert.EqualValues(c.tb, http.StatusOK, got["response_status"], "reply %v", got)
	assert.Equal(c.tb, "alive", got["request_id"])
}

// assertAliveOn checks that the connection still answers a list on stream.
func (c *wsClient) assertAliveOn(stream string) {
	c.tb.Helper()
	got := c.request(stream, map[string]any{"action": "list", "request_id": "alive"})
	assert.EqualValues(c.tb, http.StatusOK, got["response_status"], "reply %v", got)
	assert.Equal(c.tb, "alive", got["request_id"])
}

// subscribe subscribes c to event on testmodel (pk nil: every object) and
// checks the reply.
func (c *wsClient) subscribe(event string, pk any) {
	c.tb.Helper()
	p := map[string]any{"action": "subscribe", "data": map[string]any{"action": event}, "request_id": "sub-" + event}
	if pk != nil {
		p["pk"] = pk
	}
	got := c.request("testmodel", p)
	require.EqualValues(c.tb, 200, got["response_status"], "%v", got)
	require.Equal(c.tb, map[string]any{"action": event}, got["data"])
}

// subscribeAll subscribes c to every event of testmodel.
func (c *wsClient) subscribeAll() {
	c.tb.Helper()
	for _, e := range []string{"create", "update", "delete"} {
		c.subscribe(e, nil)
	}
}

// subscribeTo subscribes c to events of every object of stream.
func (c *wsClient) subscribeTo(stream string, events ...string) {
	c.tb.Helper()
	for _, e := range events {
		got := c.request(stream, map[string]any{"action": "subscribe", "data": map[string]any{"action": e}, "request_id": "sub-" + e})
		require.EqualValues(c.tb, 200, got["response_status"], "%v", got)
	}
}

// closeCode reads until the server closes the connection and returns the
// close code.
func (c *wsClient) closeCode() int {
	c.tb.Helper()
	for {
		require.NoError(c.tb, c.conn.SetReadDeadline(time.Now().Add(readTimeout)))
		_, _, err := c.conn.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		require.ErrorAs(c.tb, err, &ce, "want a close frame, got %v", err)
		return ce.Code
	}
}

// untilClose reads until the server closes the connection and returns the
// payloads of the frames before the close, its code and its reason.
func (c *wsClient) untilClose() (payloads []map[string]any, code int, reason string) {
	c.tb.Helper()
	for {
		require.NoError(c.tb, c.conn.SetReadDeadline(time.Now().Add(readTimeout)))
		_, b, err := c.conn.ReadMessage()
		if err == nil {
			c.checkFrame(b)
			var f struct{ Payload map[string]any }
			require.NoError(c.tb, json.Unmarshal(b, &f), "frame %s", b)
			payloads = append(payloads, f.Payload)
			continue
		}
		var ce *websocket.CloseError
		require.ErrorAs(c.tb, err, &ce, "want a close frame, got %v", err)
		return payloads, ce.Code, ce.Text
	}
}

// closeFrame reads until the server closes the connection and returns the
// close code and reason.
func (c *wsClient) closeFrame() (code int, reason string) {
	c.tb.Helper()
	_, code, reason = c.untilClose()
	return code, reason
}

// dialStatus tries an upgrade with header and dialer and returns the
// connection (nil if refused), the HTTP status and the response body.
func dialStatus(tb testing.TB, srv *testServer, dialer *websocket.Dialer, header http.Header) (*wsClient, int, []byte) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	conn, resp, err := dialer.DialContext(ctx, srv.WSURL, header)
	require.NotNil(tb, resp, "dial: %v", err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if err != nil {
		require.ErrorIs(tb, err, websocket.ErrBadHandshake)
		return nil, resp.StatusCode, body
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return &wsClient{tb: tb, conn: conn, srv: srv}, resp.StatusCode, body
}

// doREST sends a REST request with a JSON body and returns the status and
// the parsed body (nil when empty).
func (s *testServer) doREST(tb testing.TB, method, path, body string, header ...string) (int, any) {
	tb.Helper()
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	require.NoError(tb, err)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(tb, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(tb, err)
	s.checkResponse(tb, resp, b)
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		out = nil
	}
	if m, ok := out.(map[string]any); ok {
		withoutPosition(tb, m)
	}
	return resp.StatusCode, out
}

// restWith sends a REST request with a JSON body and the given header,
// checks the response against the documents and returns the status, the
// parsed body (nil when empty) and the response header.
func (s *testServer) restWith(tb testing.TB, method, path, body string, header http.Header) (int, any, http.Header) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, s.URL+path, strings.NewReader(body))
	require.NoError(tb, err)
	req.Header = header.Clone()
	if req.Header == nil {
		req.Header = http.Header{}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(tb, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(tb, err)
	s.checkResponse(tb, resp, b)
	var out any
	if len(b) > 0 {
		out = parseJSON(b)
	}
	return resp.StatusCode, out, resp.Header
}

// withoutPosition checks the "position" of a list (PROTOCOL.md 10: an
// epoch and an offset, which resume_test.go follows) and removes it, so
// that tests of everything else compare lists as channels-api sends them.
func withoutPosition(tb testing.TB, list map[string]any) {
	tb.Helper()
	raw, ok := list["position"]
	if !ok {
		return
	}
	p, _ := raw.(map[string]any)
	epoch, _ := p["epoch"].(string)
	offset, isNumber := p["offset"].(float64)
	require.True(tb, len(p) == 2 && epoch != "" && isNumber && offset >= 0 && offset == float64(uint64(offset)), "position %v", raw)
	delete(list, "position")
}

// restRaw sends a REST request and returns the status, the raw body and the
// response header. A nil body is sent as a chunked body of unknown length
// when chunked is set.
func (s *testServer) restRaw(tb testing.TB, method, path string, body io.Reader) (int, []byte, http.Header) {
	tb.Helper()
	req, err := http.NewRequest(method, s.URL+path, body)
	require.NoError(tb, err)
	req.Header.Set("Content-Type", "application/json")
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	require.NoError(tb, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(tb, err)
	s.checkResponse(tb, resp, b)
	return resp.StatusCode, b, resp.Header
}

// send sends a request with exactly the given header (no Content-Type
// unless it has one) and returns the status, the raw body and the response
// header.
func (s *testServer) send(tb testing.TB, method, path, body string, header http.Header) (int, []byte, http.Header) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, s.URL+path, strings.NewReader(body))
	require.NoError(tb, err)
	req.Header = header.Clone()
	if req.Header == nil {
		req.Header = http.Header{}
	}
	if h := req.Header.Get("Host"); h != "" {
		req.Host = h
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(tb, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(tb, err)
	return resp.StatusCode, b, resp.Header
}

// jsonOf round-trips v through JSON so that it compares with parsed frames.
func jsonOf(tb testing.TB, v any) any {
	tb.Helper()
	b, err := json.Marshal(v)
	require.NoError(tb, err)
	var out any
	require.NoError(tb, json.Unmarshal(b, &out))
	return out
}

// jsonBytes marshals v.
func jsonBytes(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	require.NoError(tb, err)
	return b
}

// parseJSON parses b; a body that is not JSON is returned as its text.
func parseJSON(b []byte) any {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return string(b)
	}
	return v
}

// plainJSON round-trips v, a value of these tests that always encodes,
// through JSON so that it compares with parsed frames.
func plainJSON(v any) any {
	b, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

func event(action string, id uint, name string) map[string]any {
	return map[string]any{"action": action, "pk": float64(id), "model": "tests.testmodel",
		"data": map[string]any{"id": float64(id), "name": name}}
}

// sqlWords are what a constraint violation's reply must not contain.
var sqlWords = []string{"UNIQUE constraint", "constraint failed", "SQLSTATE", "23505", "duplicate", "violates", "FOREIGN", "NOT NULL",
	"INSERT", "UPDATE ", "DELETE FROM", "sqlite", "idx_", "email_address", "constraint_members", "constraint_teams", "hook_notes"}

// assertNoSQL checks that a reply carries no SQL, table or column name.
func assertNoSQL(tb testing.TB, body []byte) {
	tb.Helper()
	for _, w := range sqlWords {
		assert.NotContains(tb, strings.ToLower(string(body)), strings.ToLower(w))
	}
}

// authUser is an account of these tests, shaped like example/auth.go's User.
type authUser struct {
	ID    uint
	Name  string
	Admin bool
}

var (
	userA     = &authUser{ID: 1, Name: "alice"}
	userB     = &authUser{ID: 2, Name: "bob"}
	userAdmin = &authUser{ID: 3, Name: "admin", Admin: true}
)

// authUserNamed resolves the X-User header and the subprotocol token of the
// tests; nil means no such user.
func authUserNamed(name string) *authUser {
	switch name {
	case userA.Name, "token-" + userA.Name:
		return userA
	case userB.Name, "token-" + userB.Name:
		return userB
	case userAdmin.Name, "token-" + userAdmin.Name:
		return userAdmin
	}
	return nil
}

func userName(u *authUser) string {
	if u == nil {
		return "anonymous"
	}
	return u.Name
}

// authenticate is the application's middleware of these tests, like
// example/auth.go's: it stores the user named by "X-User", or by the
// WebSocket subprotocol offer "bearer, token-<name>", as the context's
// "user" (which channelsapi reads by default). It stores nothing for an
// anonymous request, so the user is an untyped nil.
func authenticate(c *gin.Context) {
	name := c.GetHeader("X-User")
	if protos := strings.Split(c.GetHeader("Sec-WebSocket-Protocol"), ","); len(protos) == 2 &&
		strings.TrimSpace(protos[0]) == "bearer" {
		name = strings.TrimSpace(protos[1])
	}
	if u := authUserNamed(name); u != nil {
		c.Set("user", u)
	}
	c.Next()
}

// newAuthServer is newServer on db, with the authenticate middleware.
func newAuthServer(tb testing.TB, db *gorm.DB, setup func(api *channelsapi.API), opts ...channelsapi.Option) *testServer {
	tb.Helper()
	router := gin.New()
	router.Use(authenticate)
	return serveAPI(tb, router, db, func(api *channelsapi.API, _ *gorm.DB) {
		if setup != nil {
			setup(api)
		}
	}, opts...)
}

// dialAs opens a WebSocket as u (nil: anonymous).
func (s *testServer) dialAs(tb testing.TB, u *authUser) *wsClient {
	tb.Helper()
	header := http.Header{}
	if u != nil {
		header.Set("X-User", u.Name)
	}
	return s.dial(tb, header)
}

// restAs sends a REST request as u (nil: anonymous) and returns the status
// and the raw body.
func (s *testServer) restAs(tb testing.TB, u *authUser, method, path, body string) (int, []byte) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, s.URL+path, strings.NewReader(body))
	require.NoError(tb, err)
	req.Header.Set("Content-Type", "application/json")
	if u != nil {
		req.Header.Set("X-User", u.Name)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(tb, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(tb, err)
	s.checkResponse(tb, resp, b)
	return resp.StatusCode, b
}

// onlyUser allows u's requests only.
func onlyUser(u *authUser) channelsapi.Permission {
	return func(_ context.Context, r *channelsapi.Request) error {
		if got, _ := r.User.(*authUser); got == u {
			return nil
		}
		return channelsapi.ErrPermissionDenied
	}
}

// authNote is example/auth.go's Note: a private note of its owner.
type authNote struct {
	ID      uint   `json:"id" gorm:"primaryKey"`
	OwnerID uint   `json:"owner_id" gorm:"index"`
	Text    string `json:"text" binding:"required,max=1000"`
}

func noteUser(r *channelsapi.Request) *authUser {
	u, _ := r.User.(*authUser)
	return u
}

// notesViewSet is example/auth.go's notes ViewSet, with a custom detail
// action "summary".
func notesViewSet() channelsapi.ViewSet[authNote] {
	return channelsapi.ViewSet[authNote]{
		Stream:         "notes",
		Label:          "tests.note",
		ReadOnlyFields: []string{"owner_id"},
		Permission:     channelsapi.IsAuthenticated(),
		Scope: func(_ context.Context, r *channelsapi.Request, db *gorm.DB) (*gorm.DB, error) {
			if u := noteUser(r); u != nil && !u.Admin {
				return db.Where("owner_id = ?", u.ID), nil
			}
			return db, nil
		},
		ObjectPermission: func(_ context.Context, r *channelsapi.Request, n *authNote) error {
			if u := noteUser(r); u != nil && (u.Admin || n.OwnerID == u.ID) {
				return nil
			}
			return channelsapi.ErrNotFound
		},
		Hooks: channelsapi.Hooks[authNote]{
			BeforeCreate: func(_ context.Context, _ *gorm.DB, r *channelsapi.Request, n *authNote) error {
				n.OwnerID = noteUser(r).ID
				return nil
			},
		},
		Actions: map[string]channelsapi.Action[authNote]{
			"summary": {Detail: true, Handle: func(_ context.Context, _ *channelsapi.Request, n *authNote) (any, int, error) {
				return map[string]any{"id": n.ID, "words": len(strings.Fields(n.Text))}, 0, nil
			}},
		},
	}
}

func newNotesServer(tb testing.TB, opts ...channelsapi.Option) *testServer {
	tb.Helper()
	db := openDB(tb, &authNote{})
	return newAuthServer(tb, db, func(api *channelsapi.API) {
		require.NoError(tb, channelsapi.Add(api, notesViewSet()))
	}, opts...)
}

// noteEvents reads c's frames on "notes" until the create event of the note
// whose text is sentinel, and returns them, sentinel excluded, in the form
// of describeNoteEvent.
func noteEvents(c *wsClient, sentinel string) []string {
	c.tb.Helper()
	var out []string
	for {
		p := c.readPayload("notes")
		if d, _ := p["data"].(map[string]any); p["action"] == "create" && d["text"] == sentinel {
			return out
		}
		out = append(out, describeNoteEvent(p))
	}
}

// describeNoteEvent writes an event payload as one comparable line.
func describeNoteEvent(p map[string]any) string {
	data, _ := json.Marshal(p["data"])
	if rid, ok := p["request_id"]; ok { // DCRF instance event
		return fmt.Sprintf("instance %v: %v %s status %v errors %v", rid, p["action"], data, p["response_status"], p["errors"])
	}
	return fmt.Sprintf("%v pk=%v %s model %v", p["action"], p["pk"], data, p["model"])
}

func groupNoteEvent(action string, n authNote) string {
	return describeNoteEvent(map[string]any{"action": action, "pk": float64(n.ID), "model": "tests.note", "data": plainJSON(n)})
}

// scopedNote is a note its owner alone sees, by a Scope on its owner column.
type scopedNote struct {
	ID    uint   `json:"id" gorm:"primaryKey"`
	Owner string `json:"owner"`
	Text  string `json:"text"`
}

// scopeUser is the user of newScopedServer. freshUser makes a new one
// for every request, as an application that loads its user per request
// does: two connections of one account never share a user value.
type scopeUser struct{ Name string }

// freshUser is the authentication middleware of newScopedServer: the header
// "X-User" names a user, stored as a fresh *scopeUser.
func freshUser(c *gin.Context) {
	if name := c.GetHeader("X-User"); name != "" {
		c.Set("user", &scopeUser{Name: name})
	}
	c.Next()
}

func scopeUserName(r *channelsapi.Request) string {
	if u, ok := r.User.(*scopeUser); ok {
		return u.Name
	}
	return ""
}

// newScopedServer serves the ViewSets setup adds on db, with freshUser.
func newScopedServer(tb testing.TB, db *gorm.DB, setup func(api *channelsapi.API), opts ...channelsapi.Option) *testServer {
	tb.Helper()
	router := gin.New()
	router.Use(freshUser)
	return serveAPI(tb, router, db, func(api *channelsapi.API, _ *gorm.DB) { setup(api) }, opts...)
}

// scopedNotes is the ViewSet of scopedNote on the stream "notes": the Scope
// lets a user see their own notes. ownerCheck adds the same rule as an
// ObjectPermission. gate, when not nil, stalls the stream's delivery on
// demand (stallDelivery); it allows every object.
func scopedNotes(ownerCheck bool, gate *deliveryGate) channelsapi.ViewSet[scopedNote] {
	vs := channelsapi.ViewSet[scopedNote]{
		Stream: "notes",
		Label:  "tests.scopednote",
		Scope: func(_ context.Context, r *channelsapi.Request, db *gorm.DB) (*gorm.DB, error) {
			return db.Where("owner = ?", scopeUserName(r)), nil
		},
	}
	if ownerCheck || gate != nil {
		vs.ObjectPermission = func(_ context.Context, r *channelsapi.Request, n *scopedNote) error {
			gate.hold(n.Text)
			if ownerCheck && n.Owner != scopeUserName(r) {
				return channelsapi.ErrNotFound
			}
			return nil
		}
	}
	return vs
}

// dialUser opens a WebSocket as the user name, with extra header pairs.
func (s *testServer) dialUser(tb testing.TB, name string, header ...string) *wsClient {
	tb.Helper()
	h := http.Header{"X-User": {name}}
	for i := 0; i+1 < len(header); i += 2 {
		h.Set(header[i], header[i+1])
	}
	return s.dial(tb, h)
}

// stallText is the text of the note a deliveryGate stalls delivery on.
const stallText = "block"

// deliveryGate stalls the delivery of a stream: the stream's
// ObjectPermission calls hold, which blocks while an event about a note
// whose text is stallText is authorized, until release. Delivery is in
// commit order per stream, so nothing of the stream is delivered meanwhile.
type deliveryGate struct {
	enter, leave      sync.Once
	entered, released chan struct{}
}

func newDeliveryGate() *deliveryGate {
	return &deliveryGate{entered: make(chan struct{}), released: make(chan struct{})}
}

// hold blocks until release when text is stallText; a nil gate never does.
func (g *deliveryGate) hold(text string) {
	if g == nil || text != stallText {
		return
	}
	g.enter.Do(func() { close(g.entered) })
	<-g.released
}

func (g *deliveryGate) release() { g.leave.Do(func() { close(g.released) }) }

// stallDelivery stalls the delivery of the "notes" stream of srv, whose
// ViewSet has g: a subscriber "gatekeeper" subscribes to creates, commits a
// note with the text stallText, and stallDelivery returns once delivery
// waits in g for it. Nothing of the stream is delivered until release,
// which test cleanup calls too (before Shutdown, which would wait for it).
func stallDelivery(tb testing.TB, srv *testServer, g *deliveryGate) (release func()) {
	tb.Helper()
	tb.Cleanup(g.release)
	srv.dialUser(tb, "gatekeeper").subscribeTo("notes", "create")
	require.NoError(tb, srv.DB.Create(&scopedNote{Owner: "gatekeeper", Text: stallText}).Error)
	select {
	case <-g.entered:
	case <-time.After(readTimeout):
		tb.Fatal("the delivery of the stall note never reached the gate")
	}
	return g.release
}

// limitItem has fields of every JSON scalar kind, served on "items".
type limitItem struct {
	ID    uint    `json:"id" gorm:"primaryKey"`
	Name  string  `json:"name" binding:"required,max=100"`
	Qty   int     `json:"qty"`
	Price float64 `json:"price"`
}

// newItemsServer serves limitItem on "items" with three rows.
func newItemsServer(tb testing.TB, opts ...channelsapi.Option) *testServer {
	tb.Helper()
	db := openDB(tb, &limitItem{})
	srv := newAuthServer(tb, db, func(api *channelsapi.API) {
		require.NoError(tb, channelsapi.Add(api, channelsapi.ViewSet[limitItem]{Stream: "items", Label: "tests.item"}))
	}, append([]channelsapi.Option{quietLog()}, opts...)...)
	require.NoError(tb, db.Create(&[]limitItem{{Name: "one", Qty: 1, Price: 1.5}, {Name: "two", Qty: 2}, {Name: "three", Qty: 3}}).Error)
	return srv
}

// itemFrame wraps a payload (raw JSON text) in a frame for "items".
func itemFrame(payload string) string { return `{"stream":"items","payload":` + payload + `}` }

// nested returns v inside n levels of JSON arrays or objects.
func nested(n int, object bool, v string) string {
	if object {
		return strings.Repeat(`{"a":`, n) + v + strings.Repeat("}", n)
	}
	return strings.Repeat("[", n) + v + strings.Repeat("]", n)
}

// hostileFrame is a WebSocket frame of the hostile corpus and the status of
// its reply.
type hostileFrame struct {
	name string
	give string
	want int
}

// hostileFrames is the hostile corpus of the WebSocket. None of its frames
// may write: the table is the same after each.
func hostileFrames() []hostileFrame {
	longKey := strings.Repeat("k", 10000)
	return []hostileFrame{
		{"pk SQL fragment", itemFrame(`{"action":"delete","pk":"1 OR 1=1"}`), 404},
		{"pk beyond uint64", itemFrame(`{"action":"delete","pk":99999999999999999999}`), 404},
		{"pk 1e400", itemFrame(`{"action":"delete","pk":1e400}`), 404},
		{"pk negative", itemFrame(`{"action":"delete","pk":-1}`), 404},
		{"pk zero", itemFrame(`{"action":"delete","pk":0}`), 404},
		{"pk fraction", itemFrame(`{"action":"delete","pk":1.5}`), 404},
		{"pk exponent of an existing key", itemFrame(`{"action":"delete","pk":1e0}`), 404},
		{"pk operator object", itemFrame(`{"action":"delete","pk":{"$gt":0}}`), 404},
		{"pk list", itemFrame(`{"action":"delete","pk":[1,2]}`), 404},
		{"pk with NUL", itemFrame(`{"action":"delete","pk":"1\u0000"}`), 404},
		{"pk with invalid UTF-8", itemFrame("{\"action\":\"delete\",\"pk\":\"1\xff\"}"), 404},
		{"pk in Arabic-Indic digits", itemFrame(`{"action":"delete","pk":"١"}`), 404},
		{"data a list", itemFrame(`{"action":"create","data":[{"name":"x"}]}`), 400},
		{"data a string", itemFrame(`{"action":"create","data":"name=x"}`), 400},
		{"data 1e400", itemFrame(`{"action":"create","data":1e400}`), 400},
		{"arrays 10001 deep", itemFrame(`{"action":"create","data":` + nested(10001, false, "1") + `}`), 400},
		{"arrays 5000 deep", itemFrame(`{"action":"create","data":` + nested(5000, false, "1") + `}`), 400},
		{"objects 5000 deep", itemFrame(`{"action":"create","data":` + nested(5000, true, "1") + `}`), 400},
		{"integer 1e400", itemFrame(`{"action":"create","data":{"name":"x","qty":1e400}}`), 400},
		{"integer beyond int64", itemFrame(`{"action":"create","data":{"name":"x","qty":99999999999999999999}}`), 400},
		{"integer as fraction", itemFrame(`{"action":"create","data":{"name":"x","qty":1.5}}`), 400},
		{"float 1e400", itemFrame(`{"action":"create","data":{"name":"x","price":1e400}}`), 400},
		{"float -1e400", itemFrame(`{"action":"create","data":{"name":"x","price":-1e400}}`), 400},
		{"10,000-character key", itemFrame(`{"action":"create","data":{"name":"x","` + longKey + `":1}}`), 400},
		{"duplicate keys", itemFrame(`{"action":"create","data":{"name":"x","name":["x"]}}`), 400},
		{"duplicate data", itemFrame(`{"action":"create","data":{"name":"x"},"data":[]}`), 400},
		{"duplicate action", itemFrame(`{"action":"list","action":"delete","pk":"x"}`), 404},
		{"__proto__", itemFrame(`{"action":"create","data":{"name":"x","__proto__":{"admin":true}}}`), 400},
		{"constructor.prototype", itemFrame(`{"action":"create","data":{"name":"x","constructor":{"prototype":{"admin":true}}}}`), 400},
		{"SQL fragment as key", itemFrame(`{"action":"create","data":{"name":"x","name; DROP TABLE limit_items":1}}`), 400},
		{"SQL fragment in a patch of nothing", itemFrame(`{"action":"patch","pk":424242,"data":{"name":"'); DROP TABLE limit_items;--"}}`), 404},
		{"SQL fragment as a number", itemFrame(`{"action":"patch","pk":1,"data":{"qty":"1; DROP TABLE limit_items"}}`), 400},
		{"invalid UTF-8 over the length limit", itemFrame(`{"action":"create","data":{"name":"` + strings.Repeat("\xff", 101) + `"}}`), 400},
		{"emoji over the length limit", itemFrame(`{"action":"create","data":{"name":"` + strings.Repeat("😀", 101) + `"}}`), 400},
		{"invalid UTF-8 key", itemFrame("{\"action\":\"create\",\"data\":{\"name\":\"x\",\"\xfe\":1}}"), 400},
		{"NUL in a key", itemFrame(`{"action":"create","data":{"name":"x","na\u0000me":1}}`), 400},
		{"NUL in the action", itemFrame(`{"action":"list\u0000"}`), 400},
		{"lone surrogate action", itemFrame(`{"action":"\ud800"}`), 400},
		{"escaped action that reads create", itemFrame(`{"action":"\u0063reate"}`), 400},
		{"NUL in the stream", `{"stream":"items\u0000","payload":{"action":"list"}}`, 404},
		{"SQL fragment as stream", `{"stream":"items; DROP TABLE limit_items","payload":{"action":"list"}}`, 404},
		{"update to null", itemFrame(`{"action":"update","pk":1,"data":{"name":null}}`), 400},
		{"update to empty", itemFrame(`{"action":"update","pk":1,"data":{"name":""}}`), 400},
		{"create with null data", itemFrame(`{"action":"create","data":null}`), 400},
		{"page negative", itemFrame(`{"action":"list","data":{"page":-1}}`), 404},
		{"page zero", itemFrame(`{"action":"list","data":{"page":0}}`), 404},
		{"page fraction", itemFrame(`{"action":"list","data":{"page":1.5}}`), 404},
		{"page 1e400", itemFrame(`{"action":"list","data":{"page":1e400}}`), 404},
		{"page beyond int64", itemFrame(`{"action":"list","data":{"page":99999999999999999999}}`), 404},
		{"page SQL fragment", itemFrame(`{"action":"list","data":{"page":"1 OR 1=1"}}`), 404},
		{"page a list", itemFrame(`{"action":"list","data":{"page":[]}}`), 404},
		{"page an object", itemFrame(`{"action":"list","data":{"page":{}}}`), 404},
		{"page_size negative", itemFrame(`{"action":"list","data":{"page_size":-5}}`), 200},
		{"page_size zero", itemFrame(`{"action":"list","data":{"page_size":0}}`), 200},
		{"page_size fraction", itemFrame(`{"action":"list","data":{"page_size":0.5}}`), 200},
		{"page_size 1e400", itemFrame(`{"action":"list","data":{"page_size":1e400}}`), 200},
		{"page_size beyond int64", itemFrame(`{"action":"list","data":{"page_size":99999999999999999999}}`), 200},
		{"list data a list", itemFrame(`{"action":"list","data":[]}`), 400},
		{"subscribe data a list", itemFrame(`{"action":"subscribe","data":[]}`), 400},
		{"subscribe to NUL", itemFrame(`{"action":"subscribe","data":{"action":"create\u0000"}}`), 400},
		{"subscribe_instance pk 1e400", itemFrame(`{"action":"subscribe_instance","pk":1e400,"request_id":1}`), 404},
		{"request_id 1e400", itemFrame(`{"action":"list","request_id":1e400}`), 200},
		{"request_id 5000 deep", itemFrame(`{"action":"list","request_id":` + nested(5000, false, "1") + `}`), 200},
		{"byte order mark", "\xef\xbb\xbf" + itemFrame(`{"action":"list"}`), 400},
		{"invalid UTF-8 between tokens", "{\"stream\":\"items\",\xff}", 400},
		{"key STREAM in capitals", `{"STREAM":"items","payload":{"action":"list"}}`, 404},
		{"key Payload capitalised", `{"stream":"items","Payload":{"action":"delete","pk":1}}`, 400},
		{"key ACTION in capitals", itemFrame(`{"ACTION":"delete","pk":1}`), 400},
		{"key PK in capitals", itemFrame(`{"action":"delete","PK":1}`), 404},
		{"empty object", `{}`, 404},
		{"payload a list", `{"stream":"items","payload":[]}`, 400},
	}
}

// hostileRequest is a REST request of the hostile corpus and its status.
type hostileRequest struct {
	name   string
	method string
	path   string
	body   string
	want   int
}

// hostileRequests is the hostile corpus of REST. None of its requests may
// write.
func hostileRequests() []hostileRequest {
	return []hostileRequest{
		{"body a list", http.MethodPost, "/items", `[{"name":"x"}]`, 400},
		{"body arrays 10001 deep", http.MethodPost, "/items", nested(10001, false, "1"), 400},
		{"body arrays 5000 deep", http.MethodPost, "/items", nested(5000, false, "1"), 400},
		{"body objects 5000 deep", http.MethodPost, "/items", nested(5000, true, "1"), 400},
		{"integer 1e400", http.MethodPost, "/items", `{"name":"x","qty":1e400}`, 400},
		{"integer beyond int64", http.MethodPost, "/items", `{"name":"x","qty":99999999999999999999}`, 400},
		{"float 1e400", http.MethodPost, "/items", `{"name":"x","price":1e400}`, 400},
		{"10,000-character key", http.MethodPost, "/items", `{"name":"x","` + strings.Repeat("k", 10000) + `":1}`, 400},
		{"duplicate keys", http.MethodPost, "/items", `{"name":"x","name":["x"]}`, 400},
		{"__proto__", http.MethodPost, "/items", `{"name":"x","__proto__":{"admin":true}}`, 400},
		{"invalid UTF-8 key", http.MethodPost, "/items", "{\"name\":\"x\",\"\xfe\":1}", 400},
		{"body null", http.MethodPost, "/items", `null`, 400},
		{"body a string", http.MethodPost, "/items", `"name=x"`, 400},
		{"body truncated", http.MethodPost, "/items", `{"name":"x"`, 400},
		{"body a NUL byte", http.MethodPost, "/items", "\x00", 400},
		{"body with a byte order mark", http.MethodPost, "/items", "\xef\xbb\xbf{\"name\":\"x\",\"y\":1}", 400},
		{"patch to null", http.MethodPatch, "/items/1", `{"name":null}`, 400},
		{"patch SQL fragment as a number", http.MethodPatch, "/items/1", `{"qty":"1; DROP TABLE limit_items"}`, 400},
		{"patch a list", http.MethodPatch, "/items/1", `[]`, 400},
		{"update without fields", http.MethodPut, "/items/1", `{}`, 400},
		{"patch of nothing with SQL", http.MethodPatch, "/items/424242", `{"name":"'); DROP TABLE limit_items;--"}`, 404},
		{"pk SQL fragment", http.MethodDelete, "/items/1%20OR%201=1", "", 404},
		{"pk fraction", http.MethodDelete, "/items/1.5", "", 404},
		{"pk negative", http.MethodDelete, "/items/-1", "", 404},
		{"pk beyond uint64", http.MethodGet, "/items/99999999999999999999", "", 404},
		{"pk 1e400", http.MethodGet, "/items/1e400", "", 404},
		{"pk NUL", http.MethodGet, "/items/%00", "", 404},
		{"pk invalid UTF-8", http.MethodGet, "/items/%FF", "", 404},
		{"pk with a NUL after it", http.MethodDelete, "/items/1%00", "", 404},
		{"page negative", http.MethodGet, "/items?page=-1", "", 404},
		{"page zero", http.MethodGet, "/items?page=0", "", 404},
		{"page fraction", http.MethodGet, "/items?page=1.5", "", 404},
		{"page 1e400", http.MethodGet, "/items?page=1e400", "", 404},
		{"page beyond int64", http.MethodGet, "/items?page=99999999999999999999", "", 404},
		{"page NUL", http.MethodGet, "/items?page=%00", "", 404},
		{"page SQL fragment", http.MethodGet, "/items?page=1%20OR%201=1", "", 404},
		{"page_size negative", http.MethodGet, "/items?page_size=-5", "", 200},
		{"page_size zero", http.MethodGet, "/items?page_size=0", "", 200},
		{"page_size 1e400", http.MethodGet, "/items?page_size=1e400", "", 200},
		{"page_size beyond int64", http.MethodGet, "/items?page_size=99999999999999999999", "", 200},
		{"page_size invalid UTF-8", http.MethodGet, "/items?page_size=%FF", "", 200},
		{"page twice", http.MethodGet, "/items?page=1&page=2", "", 200},
	}
}

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(tb, l.Close())
	return port
}

// instance is a process of the example app.
type instance struct {
	*testServer
	cmd *exec.Cmd
	log string // its output
}

// buildExample builds the example app (go run ./example) into the test's
// temporary directory and returns the binary's path.
func buildExample(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "example")
	out, err := exec.Command("go", "build", "-o", bin, "./example").CombinedOutput()
	require.NoError(t, err, "build the example: %s", out)
	return bin
}

// startInstance runs the example binary on a free port of 127.0.0.1 and
// waits until it serves; it is stopped (SIGTERM, then SIGKILL) and waited for
// at cleanup, and its output is logged when the test failed.
func startInstance(t *testing.T, bin string, args ...string) *instance {
	t.Helper()
	return startInstanceEnv(t, bin, []string{"GIN_MODE=release"}, args...)
}

// startInstanceEnv is startInstance with env added to the instance's
// environment.
func startInstanceEnv(t *testing.T, bin string, env []string, args ...string) *instance {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	logPath := filepath.Join(t.TempDir(), "instance.log")
	out, err := os.Create(logPath)
	require.NoError(t, err)
	cmd := exec.Command(bin, append([]string{"-addr", addr}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	in := &instance{
		testServer: &testServer{URL: "http://" + addr + "/api", WSURL: "ws://" + addr + "/ws"},
		cmd:        cmd,
		log:        logPath,
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = out.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("output of the instance on %s:\n%s", addr, b)
		}
	})
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, in.URL+"/questions", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond, "the instance on %s does not serve", addr)
	return in
}

// envNoDocs, when set (to anything), turns off the check of every REST
// response and WebSocket frame the helpers read against the description
// documents of the server that sent it (docChecker).
const envNoDocs = "CHANNELSAPI_TEST_NODOCS"

// docChecker holds a server's description documents, compiled lazily,
// one location at a time, to check what the server sends against them:
// a REST response against the response of its path, method and status, a
// frame against the messages of its stream.
type docChecker struct {
	paths    []docRoute
	messages map[string][]string // stream ("" for null) -> names of the messages the server sends on it

	mu       sync.Mutex
	compiler *jsonschema.Compiler
	compiled map[string]*jsonschema.Schema // by location
	openAPI  map[string]any
}

// docRoute is a path of the OpenAPI document.
type docRoute struct {
	path     string
	segments []string // "{pk}" matches any one segment
}

// docCheckers are the compiled documents, by their SHA-256: the servers of
// many tests describe the same ViewSets.
var docCheckers sync.Map

const (
	openAPIURL  = "mem://openapi.json"
	asyncAPIURL = "mem://asyncapi.json"
)

// newDocChecker parses the documents, or returns the checker of equal ones.
func newDocChecker(openAPI, asyncAPI []byte) (*docChecker, error) {
	sum := sha256.Sum256(append(append(slices.Clip(openAPI), 0), asyncAPI...))
	if c, ok := docCheckers.Load(sum); ok {
		return c.(*docChecker), nil
	}
	c := &docChecker{messages: map[string][]string{}, compiled: map[string]*jsonschema.Schema{}, compiler: jsonschema.NewCompiler()}
	c.compiler.DefaultDraft(jsonschema.Draft2020)
	for url, b := range map[string][]byte{openAPIURL: openAPI, asyncAPIURL: asyncAPI} {
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", url, err)
		}
		if err := c.compiler.AddResource(url, doc); err != nil {
			return nil, err
		}
	}
	var o struct {
		Paths map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(openAPI, &o); err != nil {
		return nil, err
	}
	for p := range o.Paths {
		c.paths = append(c.paths, docRoute{path: p, segments: strings.Split(p, "/")})
	}
	if err := json.Unmarshal(openAPI, &c.openAPI); err != nil {
		return nil, err
	}
	var a struct {
		Components struct {
			Messages map[string]struct {
				Payload struct {
					Properties struct {
						Stream struct {
							Const *string `json:"const"`
						} `json:"stream"`
					} `json:"properties"`
				} `json:"payload"`
			} `json:"messages"`
		} `json:"components"`
	}
	if err := json.Unmarshal(asyncAPI, &a); err != nil {
		return nil, err
	}
	for name, m := range a.Components.Messages {
		if strings.HasSuffix(name, ".request") {
			continue // clients send them
		}
		stream := m.Payload.Properties.Stream.Const
		if stream == nil {
			c.messages[""] = append(c.messages[""], name) // any stream
			continue
		}
		c.messages[*stream] = append(c.messages[*stream], name)
	}
	for _, names := range c.messages {
		slices.Sort(names)
	}
	got, _ := docCheckers.LoadOrStore(sum, c)
	return got.(*docChecker), nil
}

// schema compiles the schema at location once.
func (c *docChecker) schema(location string) (*jsonschema.Schema, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.compiled[location]; ok {
		return s, nil
	}
	s, err := c.compiler.Compile(location)
	if err != nil {
		return nil, err
	}
	c.compiled[location] = s
	return s, nil
}

// pointer escapes a JSON pointer token.
func pointer(token string) string {
	return strings.ReplaceAll(strings.ReplaceAll(token, "~", "~0"), "/", "~1")
}

// checkREST checks a REST response: of a path and method that are an
// operation of the document, its status must be one of the operation's
// responses and its body the response's; of a method the path has no
// operation for, a 405 must be the document's.
func (c *docChecker) checkREST(method, urlPath string, status int, body []byte) error {
	route, ok := c.route(urlPath)
	if !ok {
		return nil // not a route of the API (the application's own)
	}
	item, _ := c.openAPI["paths"].(map[string]any)[route].(map[string]any)
	op, ok := item[strings.ToLower(method)].(map[string]any)
	base := openAPIURL + "#/paths/" + pointer(route) + "/" + strings.ToLower(method) + "/responses/"
	var resp map[string]any
	if !ok {
		if status != http.StatusMethodNotAllowed {
			return nil // the router's answer for a route that does not exist
		}
		base = openAPIURL + "#/components/responses/"
		resp = c.openAPI["components"].(map[string]any)["responses"].(map[string]any)["MethodNotAllowed"].(map[string]any)
		base += "MethodNotAllowed"
	} else {
		responses := op["responses"].(map[string]any)
		key := strconv.Itoa(status)
		for _, k := range []string{key, key[:1] + "XX", "default"} {
			if r, ok := responses[k].(map[string]any); ok {
				resp, base = r, base+k
				break
			}
		}
		if resp == nil {
			return fmt.Errorf("%s %s: status %d is not documented (%s)", method, urlPath, status, body)
		}
	}
	if ref, ok := resp["$ref"].(string); ok {
		name := strings.TrimPrefix(ref, "#/components/responses/")
		resp = c.openAPI["components"].(map[string]any)["responses"].(map[string]any)[name].(map[string]any)
		base = openAPIURL + "#/components/responses/" + pointer(name)
	}
	content, _ := resp["content"].(map[string]any)
	if content == nil || method == http.MethodHead {
		if len(body) > 0 {
			return fmt.Errorf("%s %s: %d has a body the document does not describe: %s", method, urlPath, status, body)
		}
		return nil
	}
	if _, ok := content["application/json"]; !ok {
		return nil
	}
	schema, err := c.schema(base + "/content/application~1json/schema")
	if err != nil {
		return err
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s %s: %d: the body is not JSON: %q", method, urlPath, status, body)
	}
	if err := schema.Validate(v); err != nil {
		return fmt.Errorf("%s %s: %d %s: %w", method, urlPath, status, body, err)
	}
	return nil
}

// route returns the document's path that urlPath matches, a literal one
// before one with a parameter.
func (c *docChecker) route(urlPath string) (string, bool) {
	segments := strings.Split(urlPath, "/")
	best, params := "", -1
	for _, r := range c.paths {
		if len(r.segments) != len(segments) {
			continue
		}
		n := 0
		for i, s := range r.segments {
			if strings.HasPrefix(s, "{") {
				n++
			} else if s != segments[i] {
				n = -1
				break
			}
		}
		if n >= 0 && (params < 0 || n < params) {
			best, params = r.path, n
		}
	}
	return best, params >= 0
}

// checkFrame checks a frame the server sent against the messages the
// server sends on its stream.
func (c *docChecker) checkFrame(b []byte) error {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("frame is not JSON: %q", b)
	}
	f, _ := v.(map[string]any)
	stream, _ := f["stream"].(string)
	action := ""
	if p, ok := f["payload"].(map[string]any); ok {
		action, _ = p["action"].(string)
	}
	names := append(slices.Clone(c.messages[stream]), c.messages[""]...)
	// The messages of the frame's action first: one of them usually matches.
	slices.SortStableFunc(names, func(x, y string) int {
		return cmp.Compare(btoi(!strings.HasPrefix(x, stream+"."+action+".")), btoi(!strings.HasPrefix(y, stream+"."+action+".")))
	})
	var errs []string
	for _, name := range names {
		schema, err := c.schema(asyncAPIURL + "#/components/messages/" + pointer(name) + "/payload")
		if err != nil {
			return err
		}
		err = schema.Validate(v)
		if err == nil {
			return nil
		}
		if strings.HasPrefix(name, stream+"."+action+".") || name == "error" {
			errs = append(errs, name+": "+err.Error())
		}
	}
	return fmt.Errorf("frame %s matches no message of the AsyncAPI document (tried %v):\n%s", b, names, strings.Join(errs, "\n"))
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// docs returns the checker of s's documents, nil when the check is off or
// s has none.
func (s *testServer) docs(tb testing.TB) *docChecker {
	tb.Helper()
	if s == nil || os.Getenv(envNoDocs) != "" {
		return nil
	}
	var openAPI, asyncAPI []byte
	if s.API != nil {
		var err error
		openAPI, err = s.API.OpenAPI()
		require.NoError(tb, err)
		asyncAPI, err = s.API.AsyncAPI()
		require.NoError(tb, err)
	} else {
		// An instance of the example app: its documents, over HTTP.
		s.fetchDocs.Do(func() { s.openAPI, s.asyncAPI = fetchDoc(s.URL+"/openapi.json"), fetchDoc(s.URL+"/asyncapi.json") })
		if s.openAPI == nil || s.asyncAPI == nil {
			return nil
		}
		openAPI, asyncAPI = s.openAPI, s.asyncAPI
	}
	c, err := newDocChecker(openAPI, asyncAPI)
	require.NoError(tb, err)
	return c
}

// fetchDoc returns the body of a GET of url, nil unless it is a 200.
func fetchDoc(url string) []byte {
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil
	}
	return b
}

// checkResponse checks a REST response s sent against s's documents; a
// mismatch fails tb.
func (s *testServer) checkResponse(tb testing.TB, resp *http.Response, body []byte) {
	tb.Helper()
	if c := s.docs(tb); c != nil {
		if err := c.checkREST(resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, body); err != nil {
			tb.Errorf("the OpenAPI document does not describe the response: %v", err)
		}
	}
}

// checkFrame checks a frame c read against its server's documents; a
// mismatch fails the test.
func (c *wsClient) checkFrame(b []byte) {
	c.tb.Helper()
	if d := c.srv.docs(c.tb); d != nil {
		if err := d.checkFrame(b); err != nil {
			c.tb.Errorf("the AsyncAPI document does not describe the frame: %v", err)
		}
	}
}

// compileSchemas compiles every schema of a document's components with a
// JSON Schema 2020-12 compiler.
func compileSchemas(tb testing.TB, doc []byte) {
	tb.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	require.NoError(tb, err)
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	require.NoError(tb, c.AddResource(openAPIURL, v))
	components := v.(map[string]any)["components"].(map[string]any)
	schemas := components["schemas"].(map[string]any)
	require.NotEmpty(tb, schemas)
	for name := range schemas {
		_, err := c.Compile(openAPIURL + "#/components/schemas/" + pointer(name))
		require.NoError(tb, err, "schema %s", name)
	}
	if messages, ok := components["messages"].(map[string]any); ok {
		for name := range messages {
			_, err := c.Compile(openAPIURL + "#/components/messages/" + pointer(name) + "/payload")
			require.NoError(tb, err, "message %s", name)
		}
	}
}
