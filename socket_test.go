package channelsapi_test

// This file tests socket.go, the WebSocket endpoint: the upgrade (origin
// check, connect check, subprotocols), frame dispatch (bad frames, the
// request_id echo, frames handled in order, replies before events,
// multiplexed streams, frames over the size limit, the rate limit), the
// keepalive, and the queue of a slow client.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
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

func TestConnectCheck(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []string
	)
	check := func(_ *gin.Context, user any) error {
		u, _ := user.(*authUser)
		mu.Lock()
		seen = append(seen, userName(u))
		mu.Unlock()
		switch u {
		case nil, userB:
			return channelsapi.ErrPermissionDenied // 401 for anonymous, 403 for bob
		case userAdmin:
			return channelsapi.NewError(http.StatusTooManyRequests, "Too many connections.")
		}
		return nil
	}
	srv := newNotesServer(t, channelsapi.WithConnect(check))
	require.NoError(t, srv.DB.Create(&authNote{OwnerID: userA.ID, Text: "a"}).Error)

	tests := []struct {
		name       string
		give       *authUser
		wantStatus int
		wantBody   string
	}{
		{"anonymous", nil, http.StatusUnauthorized, `{"detail":"Permission Denied"}`},
		{"authenticated but refused", userB, http.StatusForbidden, `{"detail":"Permission Denied"}`},
		{"refused with an Error", userAdmin, http.StatusTooManyRequests, `{"detail":"Too many connections."}`},
		{"allowed", userA, http.StatusSwitchingProtocols, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			header := http.Header{}
			if tt.give != nil {
				header.Set("X-User", tt.give.Name)
			}
			ws, status, body := dialStatus(t, srv, websocket.DefaultDialer, header)
			assert.Equal(t, tt.wantStatus, status)
			if tt.wantBody == "" {
				require.NotNil(t, ws)
				got := ws.request("notes", map[string]any{"action": "list", "request_id": 1})
				assert.EqualValues(t, 200, got["response_status"], "%v", got)
				assert.Eventually(t, func() bool { return srv.API.Stats().Connections == 1 }, readTimeout, time.Millisecond,
					"refused upgrades are no connections: %+v", srv.API.Stats())
				return
			}
			assert.Nil(t, ws)
			assert.JSONEq(t, tt.wantBody, string(body))
		})
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"anonymous", "bob", "admin", "alice"}, seen, "the check sees the resolved user, once per upgrade")
}

func TestSubprotocolAuthentication(t *testing.T) {
	srv := newNotesServer(t,
		channelsapi.WithSubprotocols("bearer"),
		channelsapi.WithConnect(func(_ *gin.Context, user any) error {
			if user == nil {
				return channelsapi.ErrNotAuthenticated
			}
			return nil
		}))
	require.NoError(t, srv.DB.Create(&[]authNote{{OwnerID: userA.ID, Text: "a"}, {OwnerID: userB.ID, Text: "b"}}).Error)

	tests := []struct {
		name         string
		protocols    []string
		header       http.Header
		wantStatus   int
		wantProtocol string
		wantOwner    float64 // the owner of the one note listed
	}{
		{"bearer token of alice", []string{"bearer", "token-alice"}, nil, http.StatusSwitchingProtocols, "bearer", 1},
		{"bearer token of bob", []string{"bearer", "token-bob"}, nil, http.StatusSwitchingProtocols, "bearer", 2},
		{"unknown token", []string{"bearer", "token-mallory"}, nil, http.StatusUnauthorized, "", 0},
		{"token without bearer", []string{"token-alice"}, nil, http.StatusUnauthorized, "", 0},
		{"header instead of a subprotocol", nil, http.Header{"X-User": {"bob"}}, http.StatusSwitchingProtocols, "", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dialer := &websocket.Dialer{Subprotocols: tt.protocols, HandshakeTimeout: readTimeout}
			ws, status, body := dialStatus(t, srv, dialer, tt.header)
			require.Equal(t, tt.wantStatus, status, "%s", body)
			if ws == nil {
				assert.JSONEq(t, `{"detail":"Permission Denied"}`, string(body))
				return
			}
			assert.Equal(t, tt.wantProtocol, ws.conn.Subprotocol())
			got := ws.request("notes", map[string]any{"action": "list", "request_id": 1})
			require.EqualValues(t, 200, got["response_status"], "%v", got)
			items := got["data"].([]any)
			require.Len(t, items, 1)
			assert.Equal(t, tt.wantOwner, items[0].(map[string]any)["owner_id"])
		})
	}
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

func TestReplyBeforeEvent(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "a")
	ws := srv.dial(t, nil)
	ws.send("testmodel", map[string]any{"action": "subscribe", "data": map[string]any{"action": "update"}, "request_id": "s"})
	ws.send("testmodel", map[string]any{"action": "update", "pk": 1, "data": map[string]any{"name": "b"}, "request_id": "u"})
	assert.Equal(t, "s", ws.readPayload("testmodel")["request_id"])
	assert.Equal(t, "u", ws.readPayload("testmodel")["request_id"])
	assert.Equal(t, event("update", 1, "b"), ws.readPayload("testmodel"))
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

// TestRateLimitFlood floods one connection past its token bucket while a
// neighbour makes requests: the flooder's excess frames are answered 429
// and its socket stays open, the neighbour is not slowed down.
func TestRateLimitFlood(t *testing.T) {
	tests := []struct {
		name string
		give func(i int) (int, []byte) // frame i of the flood, and its status when under the limit
	}{
		{"requests", func(i int) (int, []byte) {
			return 200, []byte(itemFrame(fmt.Sprintf(`{"action":"list","request_id":%d}`, i)))
		}},
		{"invalid frames", func(i int) (int, []byte) { return 400, []byte(fmt.Sprintf(`{"request_id":%d`, i)) }},
		{"unknown streams", func(i int) (int, []byte) {
			return 404, []byte(fmt.Sprintf(`{"stream":"nope","payload":{"action":"list","request_id":%d}}`, i))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { testFlood(t, tt.give) })
	}
}

func testFlood(t *testing.T, frame func(i int) (int, []byte)) {
	const perSecond, burst, flood = 2, 5, 60
	srv := newItemsServer(t, channelsapi.WithRateLimit(perSecond, burst))
	flooder, neighbour := srv.dial(t, nil), srv.dial(t, nil)

	start := time.Now()
	for i := range flood {
		_, b := frame(i)
		flooder.sendRaw(b)
	}
	// While the server works through the flood, the neighbour's requests
	// are answered from its own bucket.
	var neighbourOK int
	for i := range burst {
		got := neighbour.request("items", map[string]any{"action": "list", "request_id": i})
		if assert.EqualValues(t, 200, got["response_status"], "neighbour %v", got) {
			neighbourOK++
		}
	}
	var ok, limited int
	for i := range flood {
		var f struct{ Payload map[string]any }
		require.NoError(t, json.Unmarshal(flooder.readRaw(), &f))
		got := f.Payload
		want, _ := frame(i)
		if want != 400 { // an invalid frame's request_id is not read
			require.EqualValues(t, i, got["request_id"], "replies in order")
		}
		switch got["response_status"] {
		case float64(want):
			ok++
		case 429.0:
			limited++
			assert.Equal(t, []any{"Too many requests."}, got["errors"])
			assert.Nil(t, got["data"])
		default:
			t.Errorf("flood reply %d: %v", i, got)
		}
	}
	elapsed := time.Since(start)
	maxOK := burst + int(elapsed.Seconds()*perSecond) + 1
	assert.GreaterOrEqual(t, ok, burst, "the burst is handled")
	assert.LessOrEqual(t, ok, maxOK, "no more than the bucket allows")
	assert.Equal(t, flood, ok+limited)

	// The flooder's socket is open: it keeps being answered.
	got := flooder.request("items", map[string]any{"action": "list", "request_id": "after"})
	assert.Contains(t, []any{200.0, 429.0}, got["response_status"])
	assert.Equal(t, 2, srv.API.Stats().Connections)
	want, _ := frame(0)
	t.Logf("flood: %d frames in %v at %d/s burst %d: %d answered %d, %d answered 429; neighbour: %d/%d answered 200",
		flood, elapsed.Round(time.Millisecond), perSecond, burst, ok, want, limited, neighbourOK, burst)
}

// TestKeepalive connects a client that never reads, and so never answers a
// ping, and one that reads: the server closes the first within its pong
// wait and keeps the second.
func TestKeepalive(t *testing.T) {
	const pingPeriod, pongWait = 100 * time.Millisecond, 600 * time.Millisecond
	srv := newItemsServer(t, channelsapi.WithKeepalive(pingPeriod, pongWait))

	reader := srv.dial(t, nil)
	frames := make(chan []byte, 16)
	readErr := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		for {
			// A deadline for each frame; pings in between are answered
			// by the read itself.
			if err := reader.conn.SetReadDeadline(time.Now().Add(readTimeout)); err != nil {
				readErr <- err
				return
			}
			_, b, err := reader.conn.ReadMessage()
			if err != nil {
				readErr <- err
				return
			}
			select {
			case frames <- b:
			case <-done:
				readErr <- nil
				return
			}
		}
	}()
	defer func() {
		close(done)
		_ = reader.conn.Close()
		<-readErr
	}()
	require.Eventually(t, func() bool { return srv.API.Stats().Connections == 1 }, readTimeout, time.Millisecond)

	start := time.Now()
	silent := srv.dial(t, nil)
	require.Eventually(t, func() bool { return srv.API.Stats().Connections == 2 }, readTimeout, time.Millisecond)
	require.Eventually(t, func() bool { return srv.API.Stats().Connections == 1 }, 5*pongWait, time.Millisecond,
		"the silent client is closed")
	closedAfter := time.Since(start)
	assert.GreaterOrEqual(t, closedAfter, pongWait-pingPeriod, "not before the pong wait")

	// The reading client stays, three pong waits long.
	assert.Never(t, func() bool { return srv.API.Stats().Connections != 1 || len(readErr) > 0 }, 3*pongWait, 5*time.Millisecond,
		"the reading client stays connected")
	require.NoError(t, reader.conn.WriteMessage(websocket.TextMessage, []byte(itemFrame(`{"action":"list","request_id":"still here"}`))))
	select {
	case b := <-frames:
		assert.Contains(t, string(b), `"request_id":"still here"`)
		assert.Contains(t, string(b), `"response_status":200`)
	case err := <-readErr:
		t.Fatalf("reading client: %v", err)
	case <-time.After(readTimeout):
		t.Fatal("no reply")
	}
	connectedFor := time.Since(start)

	// The silent client finds its connection gone, without a timeout.
	require.NoError(t, silent.conn.SetReadDeadline(time.Now().Add(readTimeout)))
	_, _, err := silent.conn.ReadMessage()
	var netErr net.Error
	require.Error(t, err)
	assert.False(t, errors.As(err, &netErr) && netErr.Timeout(), "closed by the server, not timed out: %v", err)
	t.Logf("keepalive: ping %v, pong wait %v: silent client closed after %v, reading client connected for %v",
		pingPeriod, pongWait, closedAfter.Round(time.Millisecond), connectedFor.Round(time.Millisecond))
}

// TestSlowClientClosedWith1013 stalls one subscriber while ten others read:
// the stalled one is closed with 1013, the others receive every event, and
// the writer is never blocked. Each write waits until the ten readers have
// its event, so that only the stalled client falls behind.
func TestSlowClientClosedWith1013(t *testing.T) {
	srv := testModelServer(t, channelsapi.WithQueueSize(16))
	// The stalled client takes a small receive buffer so that the server's
	// socket fills sooner.
	dialer := websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			err = c.(*net.TCPConn).SetReadBuffer(64 << 10)
		}
		return c, err
	}}
	stalled, resp, err := dialer.Dial(srv.WSURL, nil)
	require.NoError(t, err)
	_ = resp.Body.Close()
	t.Cleanup(func() { _ = stalled.Close() })
	slow := &wsClient{tb: t, conn: stalled}
	slow.subscribe("create", nil)

	const readers, events = 10, 400
	body := strings.Repeat("x", 32<<10)
	var wg sync.WaitGroup
	got := make(chan int, readers*events)
	for i := range readers {
		c := srv.dial(t, nil)
		c.subscribe("create", nil)
		wg.Go(func() {
			for range events {
				require.NoError(t, c.conn.SetReadDeadline(time.Now().Add(readTimeout)))
				_, r, err := c.conn.NextReader()
				if err == nil {
					_, err = io.Copy(io.Discard, r)
				}
				if err != nil {
					t.Errorf("reader %d: %v", i, err)
					got <- -1
					return
				}
				got <- i
			}
		})
	}
	received := make([]int, readers)
	for n := range events {
		require.NoError(t, srv.DB.Create(&TestModel{Name: fmt.Sprintf("%d-%s", n, body)}).Error)
		for range readers {
			i := <-got
			require.NotEqual(t, -1, i, "a reader failed")
			received[i]++
		}
	}
	wg.Wait()
	for i, n := range received {
		assert.Equal(t, events, n, "reader %d", i)
	}
	assert.Equal(t, 1013, slow.closeCode(), "the stalled client is told to resync")
}
