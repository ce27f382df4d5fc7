package channelsapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/channelsapi/channelsapi"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	// GORM's prepared-statement cache (Session{PrepareStmt: true}) starts an
	// expiry goroutine that GORM never stops: it is GORM's, not ours.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("gorm.io/gorm/internal/lru.NewLRU[...].func1"))
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
}

// openDB opens a fresh database: a SQLite file in a temporary directory, or,
// when CHANNELSAPI_TEST_POSTGRES is set, a schema of its own on that
// PostgreSQL server (postgres_test.go).
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

// newServer registers channelsapi on a new router and database; setup adds
// the ViewSets. Authentication for tests: the header "X-User" becomes the
// gin.Context's "user".
func newServer(tb testing.TB, setup func(api *channelsapi.API, db *gorm.DB), opts ...channelsapi.Option) *testServer {
	tb.Helper()
	return newServerOn(tb, openDB(tb, &TestModel{}), setup, opts...)
}

// newServerOn is newServer on db, which other servers may share: instances
// of one application (redis_test.go).
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

// wsClient is a real WebSocket client; every read has a deadline.
type wsClient struct {
	tb   testing.TB
	conn *websocket.Conn
}

const readTimeout = 10 * time.Second

func (s *testServer) dial(tb testing.TB, header http.Header) *wsClient {
	tb.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(s.WSURL, header)
	require.NoError(tb, err)
	_ = resp.Body.Close()
	c := &wsClient{tb: tb, conn: conn}
	tb.Cleanup(func() { _ = conn.Close() })
	return c
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
	var m map[string]any
	require.NoError(c.tb, json.Unmarshal(b, &m), "frame %s", b)
	return m
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

// jsonOf round-trips v through JSON so that it compares with parsed frames.
func jsonOf(tb testing.TB, v any) any {
	tb.Helper()
	b, err := json.Marshal(v)
	require.NoError(tb, err)
	var out any
	require.NoError(tb, json.Unmarshal(b, &out))
	return out
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
	var out any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		out = nil
	}
	return resp.StatusCode, out
}

func countRows[T any](tb testing.TB, db *gorm.DB) int64 {
	tb.Helper()
	var n int64
	require.NoError(tb, db.Model(new(T)).Count(&n).Error)
	return n
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
