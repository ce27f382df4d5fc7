package channelsapi_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// readRaw returns the next text frame as sent.
func (c *wsClient) readRaw() []byte {
	c.tb.Helper()
	require.NoError(c.tb, c.conn.SetReadDeadline(time.Now().Add(readTimeout)))
	typ, b, err := c.conn.ReadMessage()
	require.NoError(c.tb, err)
	require.Equal(c.tb, websocket.TextMessage, typ)
	return b
}

// assertAlive checks that the connection still answers a good request.
func (c *wsClient) assertAlive() {
	c.tb.Helper()
	got := c.request("testmodel", map[string]any{"action": "list", "request_id": "alive"})
	assert.EqualValues(c.tb, http.StatusOK, got["response_status"], "reply %v", got)
	assert.Equal(c.tb, "alive", got["request_id"])
}

// logBuffer collects what the library logs; it is written from server
// goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// captureLog returns a buffer and the option that logs to it.
func captureLog() (*logBuffer, channelsapi.Option) {
	l := &logBuffer{}
	return l, channelsapi.WithLogger(slog.New(slog.NewTextHandler(l, nil)))
}

func TestBadFrames(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) })
	ws := srv.dial(t, nil)
	invalidFrame := map[string]any{"stream": nil, "payload": map[string]any{
		"action": nil, "data": nil, "errors": []any{"Invalid frame."}, "response_status": 400, "request_id": nil,
	}}
	invalidStream := func(stream any) map[string]any {
		return map[string]any{"stream": stream, "payload": map[string]any{
			"action": "list", "data": nil, "errors": []any{"Invalid stream."}, "response_status": 404, "request_id": "r",
		}}
	}
	invalidAction := func(action any) map[string]any {
		return map[string]any{"stream": "testmodel", "payload": map[string]any{
			"action": action, "data": nil, "errors": []any{"Invalid Action"}, "response_status": 400, "request_id": "r",
		}}
	}

	tests := []struct {
		name   string
		give   string
		binary bool
		want   map[string]any
	}{
		{name: "invalid JSON", give: `{"stream": "testmodel", "payload": {`, want: invalidFrame},
		{name: "trailing garbage", give: `{"stream":"testmodel","payload":{"action":"list"}} x`, want: invalidFrame},
		{name: "empty frame", give: ``, want: invalidFrame},
		{name: "whitespace", give: " \n", want: invalidFrame},
		{name: "deeply nested", give: `{"stream":"testmodel","payload":{"action":"list","data":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}}`, want: invalidFrame},
		{name: "JSON array", give: `[{"stream":"testmodel","payload":{"action":"list"}}]`, want: invalidFrame},
		{name: "JSON string", give: `"testmodel"`, want: invalidFrame},
		{name: "JSON number", give: `42`, want: invalidFrame},
		{name: "JSON null", give: `null`, want: invalidFrame},
		{name: "JSON true", give: `true`, want: invalidFrame},
		{name: "binary frame", give: `{"stream":"testmodel","payload":{"action":"list"}}`, binary: true, want: invalidFrame},
		{name: "payload a list", give: `{"stream":"testmodel","payload":[{"action":"list"}]}`, want: invalidFrame},
		{name: "payload a string", give: `{"stream":"testmodel","payload":"list"}`, want: invalidFrame},
		{name: "payload a number", give: `{"stream":"testmodel","payload":5}`, want: invalidFrame},
		{name: "stream missing", give: `{"payload":{"action":"list","request_id":"r"}}`, want: invalidStream(nil)},
		{name: "stream null", give: `{"stream":null,"payload":{"action":"list","request_id":"r"}}`, want: invalidStream(nil)},
		{name: "stream a number", give: `{"stream":5,"payload":{"action":"list","request_id":"r"}}`, want: invalidStream(nil)},
		{name: "stream an object", give: `{"stream":{"name":"testmodel"},"payload":{"action":"list","request_id":"r"}}`, want: invalidStream(nil)},
		{name: "stream a list", give: `{"stream":["testmodel"],"payload":{"action":"list","request_id":"r"}}`, want: invalidStream(nil)},
		{name: "stream unknown", give: `{"stream":"nope","payload":{"action":"list","request_id":"r"}}`, want: invalidStream("nope")},
		{name: "stream other case", give: `{"stream":"TestModel","payload":{"action":"list","request_id":"r"}}`, want: invalidStream("TestModel")},
		{name: "stream empty", give: `{"stream":"","payload":{"action":"list","request_id":"r"}}`, want: invalidStream("")},
		{name: "action missing", give: `{"stream":"testmodel","payload":{"request_id":"r"}}`, want: invalidAction(nil)},
		{name: "action null", give: `{"stream":"testmodel","payload":{"action":null,"request_id":"r"}}`, want: invalidAction(nil)},
		{name: "action a number", give: `{"stream":"testmodel","payload":{"action":5,"request_id":"r"}}`, want: invalidAction(nil)},
		{name: "action a list", give: `{"stream":"testmodel","payload":{"action":["list"],"request_id":"r"}}`, want: invalidAction(nil)},
		{name: "action unknown", give: `{"stream":"testmodel","payload":{"action":"explode","request_id":"r"}}`, want: invalidAction("explode")},
		{name: "action other case", give: `{"stream":"testmodel","payload":{"action":"LIST","request_id":"r"}}`, want: invalidAction("LIST")},
		{name: "action empty", give: `{"stream":"testmodel","payload":{"action":"","request_id":"r"}}`, want: invalidAction("")},
		{name: "payload missing", give: `{"stream":"testmodel"}`, want: map[string]any{"stream": "testmodel", "payload": map[string]any{
			"action": nil, "data": nil, "errors": []any{"Invalid Action"}, "response_status": 400, "request_id": nil,
		}}},
		{name: "unknown payload keys are ignored", give: `{"stream":"testmodel","payload":{"action":"test_list","request_id":"r","foo":1},"extra":true}`,
			want: map[string]any{"stream": "testmodel", "payload": map[string]any{
				"action": "test_list", "data": "some data", "errors": []any{}, "response_status": 200, "request_id": "r",
			}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			typ := websocket.TextMessage
			if tt.binary {
				typ = websocket.BinaryMessage
			}
			require.NoError(t, ws.conn.WriteMessage(typ, []byte(tt.give)))
			assert.Equal(t, jsonOf(t, tt.want), jsonOf(t, ws.read()))
			ws.assertAlive()
		})
	}
}

func TestRequestIDEcho(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) })
	ws := srv.dial(t, nil)

	tests := []struct {
		name string
		give string // raw JSON; "" means absent
		want string // raw JSON expected in the reply
	}{
		{"string", `"abc"`, `"abc"`},
		{"empty string", `""`, `""`},
		{"unicode string", `"ü-\u00e9"`, `"ü-\u00e9"`},
		{"integer", `7`, `7`},
		{"zero", `0`, `0`},
		{"negative", `-3`, `-3`},
		{"fraction", `7.5`, `7.5`},
		{"beyond float64 precision", `12345678901234567890123`, `12345678901234567890123`},
		{"object", `{"a":[1,"x"]}`, `{"a":[1,"x"]}`},
		{"list", `[1,"x",null]`, `[1,"x",null]`},
		{"true", `true`, `true`},
		{"false", `false`, `false`},
		{"null", `null`, `null`},
		{"absent", ``, `null`},
	}
	for _, tt := range tests {
		for _, action := range []string{"list", "explode", "retrieve"} {
			t.Run(tt.name+"/"+action, func(t *testing.T) {
				rid := ""
				if tt.give != "" {
					rid = `,"request_id":` + tt.give
				}
				ws.sendRaw([]byte(`{"stream":"testmodel","payload":{"action":"` + action + `","pk":1` + rid + `}}`))
				raw := ws.readRaw()
				assert.Contains(t, string(raw), `"request_id":`+tt.want, "frame %s", raw)
				var want any = jsonOf(t, jsonRaw(tt.want))
				assert.Equal(t, want, jsonOf(t, jsonRaw(raw)).(map[string]any)["payload"].(map[string]any)["request_id"])
			})
		}
	}
}

// jsonRaw is raw JSON text for jsonOf.
type jsonRaw []byte

func (r jsonRaw) MarshalJSON() ([]byte, error) { return r, nil }

// serverErrorViewSet adds the conformance ViewSet with actions that fail
// in the ways a handler can.
func serverErrorViewSet(vs *channelsapi.ViewSet[TestModel]) {
	vs.Actions["crash_list"] = channelsapi.Action[TestModel]{
		Handle: func(context.Context, *channelsapi.Request, *TestModel) (any, int, error) {
			panic("SELECT secret FROM test_models: boom")
		},
	}
	vs.Actions["crash_detail"] = channelsapi.Action[TestModel]{
		Detail: true,
		Handle: func(_ context.Context, _ *channelsapi.Request, m *TestModel) (any, int, error) {
			var names []string
			return names[len(m.Name)], 0, nil // a runtime error: index out of range
		},
	}
	vs.Actions["error"] = channelsapi.Action[TestModel]{
		Handle: func(context.Context, *channelsapi.Request, *TestModel) (any, int, error) {
			return nil, 0, fmt.Errorf("query: %w", errors.New(`no such column: "secret" in table test_models`))
		},
	}
	vs.Actions["nan"] = channelsapi.Action[TestModel]{
		Handle: func(context.Context, *channelsapi.Request, *TestModel) (any, int, error) {
			return map[string]float64{"average": math.NaN()}, 0, nil
		},
	}
}

// leakWords are internal details that must never reach a client.
var leakWords = []string{"SELECT", "secret", "test_models", "no such", "sqlite", "SQL", "boom", "panic", "index out of range", "NaN", "goroutine"}

func assertNoLeak(tb testing.TB, body []byte) {
	tb.Helper()
	for _, w := range leakWords {
		assert.NotContains(tb, string(body), w)
	}
}

func TestServerErrorsWebSocket(t *testing.T) {
	logs, logOpt := captureLog()
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api, serverErrorViewSet) }, logOpt)
	seed(t, srv.DB, "a")
	ws := srv.dial(t, nil)

	tests := []struct {
		name    string
		give    map[string]any
		wantLog string
	}{
		{"panicking list action", map[string]any{"action": "crash_list"}, "boom"},
		{"panicking detail action", map[string]any{"action": "crash_detail", "pk": 1}, "index out of range"},
		{"action error", map[string]any{"action": "error"}, "no such column"},
		{"unencodable data", map[string]any{"action": "nan"}, "NaN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.give["request_id"] = 42
			ws.send("testmodel", tt.give)
			raw := ws.readRaw()
			assertNoLeak(t, raw)
			assert.JSONEq(t, string(jsonBytes(t, map[string]any{"stream": "testmodel", "payload": map[string]any{
				"action": tt.give["action"], "data": nil, "errors": []string{"A server error occurred."},
				"response_status": 500, "request_id": 42,
			}})), string(raw))
			assert.Contains(t, logs.String(), tt.wantLog)
			ws.assertAlive()
		})
	}
}

func TestServerErrorsREST(t *testing.T) {
	logs, logOpt := captureLog()
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api, serverErrorViewSet) }, logOpt)
	seed(t, srv.DB, "a")

	tests := []struct {
		name    string
		give    string // path
		wantLog string
	}{
		{"panicking list action", "/testmodel/crash_list", "boom"},
		{"panicking detail action", "/testmodel/1/crash_detail", "index out of range"},
		{"action error", "/testmodel/error", "no such column"},
		{"unencodable data", "/testmodel/nan", "NaN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body, _ := srv.restRaw(t, http.MethodGet, tt.give, nil)
			assert.Equal(t, http.StatusInternalServerError, status)
			assert.JSONEq(t, `{"detail":"A server error occurred."}`, string(body))
			assertNoLeak(t, body)
			assert.Contains(t, logs.String(), tt.wantLog)
		})
	}
	status, _ := srv.doREST(t, http.MethodGet, "/testmodel/1", "")
	assert.Equal(t, http.StatusOK, status)
}

// TestDatabaseFailure drops the table under the API: every action is a 500
// without internal detail, on both transports, and the socket survives.
func TestDatabaseFailure(t *testing.T) {
	logs, logOpt := captureLog()
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, logOpt)
	seed(t, srv.DB, "a")
	ws := srv.dial(t, nil)
	ws.assertAlive()
	require.NoError(t, srv.DB.Migrator().DropTable(&TestModel{}))

	tests := []struct {
		name string
		give map[string]any
	}{
		{"list", map[string]any{"action": "list"}},
		{"retrieve", map[string]any{"action": "retrieve", "pk": 1}},
		{"create", map[string]any{"action": "create", "data": map[string]any{"name": "b"}}},
		{"update", map[string]any{"action": "update", "pk": 1, "data": map[string]any{"name": "b"}}},
		{"patch", map[string]any{"action": "patch", "pk": 1, "data": map[string]any{"name": "b"}}},
		{"delete", map[string]any{"action": "delete", "pk": 1}},
		{"detail action", map[string]any{"action": "test_detail", "pk": 1}},
		{"subscribe_instance", map[string]any{"action": "subscribe_instance", "pk": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.give["request_id"] = 42
			ws.send("testmodel", tt.give)
			raw := ws.readRaw()
			assertNoLeak(t, raw)
			assert.JSONEq(t, string(jsonBytes(t, map[string]any{"stream": "testmodel", "payload": map[string]any{
				"action": tt.give["action"], "data": nil, "errors": []string{"A server error occurred."},
				"response_status": 500, "request_id": 42,
			}})), string(raw))
		})
	}
	for _, path := range []string{"/testmodel", "/testmodel/1", "/testmodel/1/test_detail"} {
		t.Run("REST "+path, func(t *testing.T) {
			status, body, _ := srv.restRaw(t, http.MethodGet, path, nil)
			assert.Equal(t, http.StatusInternalServerError, status)
			assert.JSONEq(t, `{"detail":"A server error occurred."}`, string(body))
		})
	}
	// The cause is logged, in the words of the database (SQLite or PostgreSQL).
	assert.Regexp(t, `no such table: test_models|relation \\"test_models\\" does not exist`, logs.String())

	require.NoError(t, srv.DB.AutoMigrate(&TestModel{}))
	got := ws.request("testmodel", map[string]any{"action": "create", "data": map[string]any{"name": "back"}, "request_id": 1})
	assert.EqualValues(t, http.StatusCreated, got["response_status"])
	ws.assertAlive()
}

func TestFramesHandledInOrder(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) })
	ws := srv.dial(t, nil)
	const n = 50
	for i := range n {
		switch i % 5 {
		case 0, 1:
			ws.send("testmodel", map[string]any{"action": "create", "data": map[string]any{"name": fmt.Sprint(i)}, "request_id": i})
		case 2:
			ws.send("testmodel", map[string]any{"action": "list", "data": map[string]any{"page_size": 100}, "request_id": i})
		case 3:
			ws.send("testmodel", map[string]any{"action": "patch", "pk": i/5*2 + 1, "data": map[string]any{"name": fmt.Sprint("p", i)}, "request_id": i})
		case 4:
			ws.send("testmodel", map[string]any{"action": "retrieve", "pk": i/5*2 + 1, "request_id": i})
		}
	}
	for i := range n {
		got := ws.readPayload("testmodel")
		require.EqualValues(t, i, got["request_id"], "reply %d: %v", i, got)
		switch i % 5 {
		case 0, 1:
			assert.EqualValues(t, 201, got["response_status"])
			assert.Equal(t, map[string]any{"id": float64(i/5*2 + i%5 + 1), "name": fmt.Sprint(i)}, got["data"])
		case 2:
			// the list sees every create sent before it, and no later one
			assert.Len(t, got["data"], i/5*2+2)
		case 3, 4:
			assert.Equal(t, map[string]any{"id": float64(i/5*2 + 1), "name": fmt.Sprint("p", i/5*5+3)}, got["data"])
		}
	}
}

// otherModel is a second resource for multiplexing.
type otherModel struct {
	ID    uint   `json:"id" gorm:"primaryKey"`
	Title string `json:"title" binding:"required"`
}

func TestMultiplexedStreams(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, db *gorm.DB) {
		addTestModel(t, api)
		require.NoError(t, db.AutoMigrate(&otherModel{}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[otherModel]{Stream: "others"}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[otherModel]{Stream: "others_readonly", ReadOnly: true}))
	})
	ws := srv.dial(t, nil)
	const n = 10
	for i := range n {
		ws.send("testmodel", map[string]any{"action": "create", "data": map[string]any{"name": fmt.Sprint("t", i)}, "request_id": i})
		ws.send("others", map[string]any{"action": "create", "data": map[string]any{"title": fmt.Sprint("o", i)}, "request_id": i})
		ws.send("others_readonly", map[string]any{"action": "retrieve", "pk": i + 1, "request_id": i})
	}
	for i := range n {
		got := ws.readPayload("testmodel")
		assert.Equal(t, map[string]any{"id": float64(i + 1), "name": fmt.Sprint("t", i)}, got["data"])
		got = ws.readPayload("others")
		assert.Equal(t, map[string]any{"id": float64(i + 1), "title": fmt.Sprint("o", i)}, got["data"])
		assert.EqualValues(t, i, got["request_id"])
		got = ws.readPayload("others_readonly")
		assert.Equal(t, map[string]any{"id": float64(i + 1), "title": fmt.Sprint("o", i)}, got["data"])
	}
	got := ws.request("others_readonly", map[string]any{"action": "create", "data": map[string]any{"title": "x"}})
	assert.EqualValues(t, 400, got["response_status"])
	got = ws.request("others", map[string]any{"action": "create", "data": map[string]any{"name": "x"}})
	assert.Equal(t, []any{map[string]any{"name": []any{"Unknown field."}}}, got["errors"])
	assert.EqualValues(t, n, countRows[TestModel](t, srv.DB))
	assert.EqualValues(t, n, countRows[otherModel](t, srv.DB))
}

func TestFrameTooLarge(t *testing.T) {
	const limit = 1024
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, channelsapi.WithMaxMessageSize(limit))
	ws := srv.dial(t, nil)
	got := ws.request("testmodel", map[string]any{"action": "create", "data": map[string]any{"name": strings.Repeat("x", 200)}})
	require.EqualValues(t, 201, got["response_status"])

	ws.send("testmodel", map[string]any{"action": "create", "data": map[string]any{"name": strings.Repeat("x", 2*limit)}})
	assert.Equal(t, websocket.CloseMessageTooBig, ws.closeCode())
	assert.EqualValues(t, 1, countRows[TestModel](t, srv.DB))

	other := srv.dial(t, nil)
	other.assertAlive()
}

// dialOrigin tries an upgrade with the given Origin header ("" for none)
// and returns the HTTP status of the answer.
func dialOrigin(tb testing.TB, srv *testServer, origin string) int {
	tb.Helper()
	header := http.Header{}
	if origin != "" {
		header.Set("Origin", origin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	conn, resp, err := websocket.DefaultDialer.DialContext(ctx, srv.WSURL, header)
	if err == nil {
		c := &wsClient{tb: tb, conn: conn}
		tb.Cleanup(func() { _ = conn.Close() })
		c.assertAlive()
	} else {
		require.ErrorIs(tb, err, websocket.ErrBadHandshake)
	}
	require.NotNil(tb, resp)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func TestOriginCheck(t *testing.T) {
	const allowed = "https://app.example"
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) },
		channelsapi.WithAllowedOrigins(allowed, "http://localhost:3000/"))
	self := srv.URL // http://127.0.0.1:port

	tests := []struct {
		name string
		give string // Origin header
		want int
	}{
		{"no origin", "", http.StatusSwitchingProtocols},
		{"same origin", self, http.StatusSwitchingProtocols},
		{"same origin with trailing slash", self + "/", http.StatusSwitchingProtocols},
		{"allowed origin", allowed, http.StatusSwitchingProtocols},
		{"allowed origin in other case", strings.ToUpper(allowed), http.StatusSwitchingProtocols},
		{"allowed origin given with a slash", "http://localhost:3000", http.StatusSwitchingProtocols},
		{"evil", "https://evil.example", http.StatusForbidden},
		{"null", "null", http.StatusForbidden},
		{"host suffix", self + ".evil.example", http.StatusForbidden},
		{"host prefix", "http://evil" + strings.TrimPrefix(self, "http://"), http.StatusForbidden},
		{"subdomain of self", "http://evil." + strings.TrimPrefix(self, "http://"), http.StatusForbidden},
		{"allowed origin plus x", allowed + "x", http.StatusForbidden},
		{"allowed origin plus port", allowed + ":8443", http.StatusForbidden},
		{"allowed origin suffix", allowed + ".evil.example", http.StatusForbidden},
		{"allowed origin as subdomain", "https://evil.app.example", http.StatusForbidden},
		{"allowed origin other scheme", "http://app.example", http.StatusForbidden},
		{"other port", "http://localhost:3001", http.StatusForbidden},
		{"not a URL", "app.example", http.StatusForbidden},
		{"other scheme", "file://" + strings.TrimPrefix(self, "http://"), http.StatusForbidden},
		{"garbage", "%%%", http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, dialOrigin(t, srv, tt.give))
		})
	}
}

func TestRegisterConfigurationErrors(t *testing.T) {
	tests := []struct {
		name string
		give []channelsapi.Option
	}{
		{"zero max message size", []channelsapi.Option{channelsapi.WithMaxMessageSize(0)}},
		{"negative max message size", []channelsapi.Option{channelsapi.WithMaxMessageSize(-1)}},
		{"zero queue size", []channelsapi.Option{channelsapi.WithQueueSize(0)}},
		{"zero page size", []channelsapi.Option{channelsapi.WithPageSize(0, 10)}},
		{"max page size below page size", []channelsapi.Option{channelsapi.WithPageSize(10, 5)}},
		{"zero bulk event limit", []channelsapi.Option{channelsapi.WithBulkEventLimit(0)}},
		{"relative path", []channelsapi.Option{channelsapi.WithPath("ws")}},
		{"empty path", []channelsapi.Option{channelsapi.WithPath("")}},
		{"nil logger", []channelsapi.Option{channelsapi.WithLogger(nil)}},
		{"nil user resolver", []channelsapi.Option{channelsapi.WithUser(nil)}},
		{"origin without scheme", []channelsapi.Option{channelsapi.WithAllowedOrigins("app.example")}},
		{"origin with a path", []channelsapi.Option{channelsapi.WithAllowedOrigins("https://app.example/path")}},
		{"origin of another scheme", []channelsapi.Option{channelsapi.WithAllowedOrigins("ftp://app.example")}},
		{"origin null", []channelsapi.Option{channelsapi.WithAllowedOrigins("null")}},
		{"origin wildcard", []channelsapi.Option{channelsapi.WithAllowedOrigins("*")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openDB(t, &TestModel{})
			require.NotPanics(t, func() {
				api, err := channelsapi.Register(gin.New(), db, tt.give...)
				assert.Error(t, err)
				assert.Nil(t, api)
			})
		})
	}
	t.Run("nil router", func(t *testing.T) {
		db := openDB(t, &TestModel{})
		require.NotPanics(t, func() {
			_, err := channelsapi.Register(nil, db)
			assert.Error(t, err)
		})
	})
	t.Run("nil db", func(t *testing.T) {
		require.NotPanics(t, func() {
			_, err := channelsapi.Register(gin.New(), nil)
			assert.Error(t, err)
		})
	})
	t.Run("registered twice on one router", func(t *testing.T) {
		router := gin.New()
		api, err := channelsapi.Register(router, openDB(t, &TestModel{}))
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, api.Shutdown(context.Background())) })
		require.NotPanics(t, func() {
			api2, err := channelsapi.Register(router, openDB(t, &TestModel{}))
			if err == nil {
				assert.NoError(t, api2.Shutdown(context.Background()))
			}
			assert.Error(t, err)
		})
	})
}

// noKeyModel has no primary key.
type noKeyModel struct {
	Name string `json:"name"`
}

// twoKeyModel has a composite primary key.
type twoKeyModel struct {
	A int `json:"a" gorm:"primaryKey"`
	B int `json:"b" gorm:"primaryKey"`
}

// floatKeyModel has a primary key type that cannot be parsed from a path.
type floatKeyModel struct {
	ID float64 `json:"id" gorm:"primaryKey"`
}

func TestAddConfigurationErrors(t *testing.T) {
	handle := func(context.Context, *channelsapi.Request, *TestModel) (any, int, error) { return nil, 0, nil }
	tests := []struct {
		name string
		give func(api *channelsapi.API) error
	}{
		{"duplicate stream", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "testmodel"})
		}},
		{"duplicate default stream", func(api *channelsapi.API) error {
			if err := channelsapi.Add(api, channelsapi.ViewSet[TestModel]{}); err != nil {
				return nil // the first one must work
			}
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{})
		}},
		{"stream with a slash", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "a/b"})
		}},
		{"stream with a wildcard", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: ":pk"})
		}},
		{"stream on the socket's path", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "ws"})
		}},
		{"action named create", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "x", Actions: map[string]channelsapi.Action[TestModel]{"create": {Handle: handle}}})
		}},
		{"action named list", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "x", Actions: map[string]channelsapi.Action[TestModel]{"list": {Handle: handle}}})
		}},
		{"action named subscribe_instance", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "x", Actions: map[string]channelsapi.Action[TestModel]{"subscribe_instance": {Detail: true, Handle: handle}}})
		}},
		{"action without handler", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "x", Actions: map[string]channelsapi.Action[TestModel]{"noop": {}}})
		}},
		{"action name with a slash", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "x", Actions: map[string]channelsapi.Action[TestModel]{"a/b": {Handle: handle}}})
		}},
		{"unknown read-only field", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "x", ReadOnlyFields: []string{"nope"}})
		}},
		{"model is an int", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[int]{Stream: "x"})
		}},
		{"model is a pointer", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[*TestModel]{Stream: "x"})
		}},
		{"model is a slice", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[[]TestModel]{Stream: "x"})
		}},
		{"model is a map", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[map[string]any]{Stream: "x"})
		}},
		{"model without a primary key", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[noKeyModel]{Stream: "x"})
		}},
		{"model with a composite key", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[twoKeyModel]{Stream: "x"})
		}},
		{"model with a float key", func(api *channelsapi.API) error {
			return channelsapi.Add(api, channelsapi.ViewSet[floatKeyModel]{Stream: "x"})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
				addTestModel(t, api)
				require.NotPanics(t, func() { assert.Error(t, tt.give(api)) })
			})
			// the API serves what was added before
			srv.dial(t, nil).assertAlive()
		})
	}
	t.Run("stream on an application route", func(t *testing.T) {
		router := gin.New()
		router.GET("/health", func(c *gin.Context) { c.String(http.StatusOK, "ok") })
		api, err := channelsapi.Register(router, openDB(t, &TestModel{}))
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, api.Shutdown(context.Background())) })
		require.NotPanics(t, func() {
			assert.Error(t, channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "health"}))
		})
	})
}
