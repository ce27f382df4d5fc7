package channelsapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/channelsapi/channelsapi"
)

// This file tests issue 5's limits: hostile payloads, flooding, the
// subscription limit, keepalive and shutdown. Two limits are tested
// elsewhere: a WebSocket frame over the size limit closes the socket with
// 1009 (TestFrameTooLarge in robustness_test.go) and a REST body over it is
// a 413 (TestRESTBodyTooLarge in rest_test.go).

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

// hostileFrame is a WebSocket frame of the hostile corpus and the status of
// its reply.
type hostileFrame struct {
	name string
	give string
	want int
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

// TestHostilePayloads sends the hostile corpus over both transports: every
// frame is answered with its status, none with a server error, the socket
// keeps answering and the table does not change.
func TestHostilePayloads(t *testing.T) {
	srv := newItemsServer(t)
	ws := srv.dial(t, nil)
	frames, requests := hostileFrames(), hostileRequests()
	var serverErrors int
	for i, tt := range frames {
		before := dumpRows[limitItem](t, srv.DB)
		require.NoError(t, ws.conn.WriteMessage(websocket.TextMessage, []byte(tt.give)))
		raw := ws.readRaw()
		var f struct {
			Payload struct {
				ResponseStatus int `json:"response_status"`
			} `json:"payload"`
		}
		require.NoError(t, json.Unmarshal(raw, &f), "%s: reply %q", tt.name, raw)
		if f.Payload.ResponseStatus >= 500 {
			serverErrors++
		}
		assert.Equal(t, tt.want, f.Payload.ResponseStatus, "frame %d %s: reply %.300s", i, tt.name, raw)
		ws.assertAliveOn("items")
		assert.Equal(t, before, dumpRows[limitItem](t, srv.DB), "%s changed the table", tt.name)
	}
	for _, tt := range requests {
		before := dumpRows[limitItem](t, srv.DB)
		status, body := srv.restAs(t, nil, tt.method, tt.path, tt.body)
		if status >= 500 {
			serverErrors++
		}
		assert.Equal(t, tt.want, status, "%s: body %.300s", tt.name, body)
		assert.True(t, json.Valid(body), "%s: body is not JSON: %q", tt.name, body)
		assert.Equal(t, before, dumpRows[limitItem](t, srv.DB), "%s changed the table", tt.name)
	}
	status, _ := srv.restAs(t, nil, http.MethodGet, "/items/1", "")
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, 1, srv.API.Stats().Connections, "the socket survived the corpus")
	t.Logf("hostile payloads: %d WebSocket frames, %d REST requests, %d answered 5xx", len(frames), len(requests), serverErrors)
	assert.Zero(t, serverErrors)
}

// TestHostileValuesStored writes values that are valid JSON but unusual
// for a database: each is stored and read back as it was, or refused with
// a 400, never a server error.
func TestHostileValuesStored(t *testing.T) {
	srv := newItemsServer(t)
	ws := srv.dial(t, nil)
	tests := []struct {
		name string
		give string // the data of a create, raw JSON
	}{
		{"NUL inside a string", `{"name":"a\u0000b"}`},
		{"invalid UTF-8", "{\"name\":\"a\xff\xfeb\"}"},
		{"lone surrogate", `{"name":"a\ud800b"}`},
		{"right-to-left override", `{"name":"\u202egnp.exe"}`},
		{"line separators", `{"name":"a\u2028b\u2029c"}`},
		{"SQL fragment", `{"name":"'); DROP TABLE limit_items;--"}`},
		{"markup", `{"name":"<script>alert(1)</script>"}`},
		{"100 two-byte characters", `{"name":"` + strings.Repeat("é", 100) + `"}`},
		{"100 emoji", `{"name":"` + strings.Repeat("😀", 100) + `"}`},
		{"largest int64", `{"name":"x","qty":9223372036854775807}`},
		{"smallest int64", `{"name":"x","qty":-9223372036854775808}`},
		{"largest float64", `{"name":"x","price":1.7976931348623157e308}`},
		{"smallest float64", `{"name":"x","price":5e-324}`},
		{"negative zero", `{"name":"x","price":-0.0}`},
	}
	var stored, refused, serverErrors int
	for _, tt := range tests {
		for _, transport := range []string{"websocket", "rest"} {
			var status int
			var obj map[string]any
			var body []byte
			if transport == "websocket" {
				ws.sendRaw([]byte(itemFrame(`{"action":"create","request_id":1,"data":` + tt.give + `}`)))
				body = ws.readRaw()
				got, _ := parseJSON(body).(map[string]any)["payload"].(map[string]any)
				status = int(got["response_status"].(float64))
				obj, _ = got["data"].(map[string]any)
			} else {
				status, body = srv.restAs(t, nil, http.MethodPost, "/items", tt.give)
				obj, _ = parseJSON(body).(map[string]any)
			}
			if status != http.StatusCreated {
				assertNoSQL(t, body)
			}
			switch {
			case status == http.StatusCreated:
				stored++
				back := ws.request("items", map[string]any{"action": "retrieve", "pk": obj["id"], "request_id": 2})
				assert.Equal(t, obj, back["data"], "%s over %s: read back", tt.name, transport)
			case status == http.StatusBadRequest:
				refused++
			default:
				if status >= 500 {
					serverErrors++
				}
				t.Errorf("%s over %s: status %d", tt.name, transport, status)
			}
		}
	}
	t.Logf("hostile values on %s: %d stored and read back, %d refused with 400, %d server errors", srv.DB.Dialector.Name(), stored, refused, serverErrors)
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

func TestSubscriptionLimit(t *testing.T) {
	srv := newItemsServer(t, channelsapi.WithMaxSubscriptions(3))
	ws := srv.dial(t, nil)
	subscribe := func(c *wsClient, event string) map[string]any {
		return c.request("items", map[string]any{"action": "subscribe", "data": map[string]any{"action": event}, "request_id": event})
	}
	tooMany := []any{"Too many subscriptions."}

	for _, e := range []string{"create", "update"} {
		require.EqualValues(t, 200, subscribe(ws, e)["response_status"])
	}
	got := ws.request("items", map[string]any{"action": "subscribe_instance", "pk": 1, "request_id": "i1"})
	require.EqualValues(t, 201, got["response_status"], "%v", got)

	got = subscribe(ws, "delete")
	assert.EqualValues(t, 429, got["response_status"], "the 4th subscription")
	assert.Equal(t, tooMany, got["errors"])
	got = ws.request("items", map[string]any{"action": "subscribe_instance", "pk": 2, "request_id": "i2"})
	assert.EqualValues(t, 429, got["response_status"], "the 4th subscription, an instance one")
	assert.Equal(t, tooMany, got["errors"])
	assert.Equal(t, channelsapi.Stats{Connections: 1, Subscribers: 1, Subscriptions: 3}, srv.API.Stats())

	// The limit is per connection, and unsubscribing makes room.
	other := srv.dial(t, nil)
	for _, e := range []string{"create", "update", "delete"} {
		assert.EqualValues(t, 200, subscribe(other, e)["response_status"])
	}
	got = ws.request("items", map[string]any{"action": "unsubscribe", "data": map[string]any{"action": "create"}})
	require.EqualValues(t, 200, got["response_status"])
	assert.EqualValues(t, 200, subscribe(ws, "delete")["response_status"])

	// The subscriptions that were refused are not there: a delete is heard
	// once, an update of item 2 is not heard as an instance event.
	require.NoError(t, srv.DB.Model(&limitItem{ID: 2}).Update("name", "deux").Error)
	got = ws.readPayload("items")
	assert.Equal(t, "update", got["action"])
	assert.Nil(t, got["request_id"], "a group event, no instance event for item 2")
	require.NoError(t, srv.DB.Delete(&limitItem{ID: 3}).Error)
	assert.Equal(t, "delete", ws.readPayload("items")["action"])
	ws.assertAliveOn("items")
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

// TestShutdown closes 100 sockets, a third of them subscribed, with 1001.
func TestShutdown(t *testing.T) {
	const sockets = 100
	srv := newItemsServer(t)
	clients := make([]*wsClient, sockets)
	subscribed := 0
	for i := range clients {
		clients[i] = srv.dial(t, nil)
		if i%3 == 0 {
			got := clients[i].request("items", map[string]any{"action": "subscribe", "data": map[string]any{"action": "update"}})
			require.EqualValues(t, 200, got["response_status"])
			got = clients[i].request("items", map[string]any{"action": "subscribe_instance", "pk": 1, "request_id": i})
			require.EqualValues(t, 201, got["response_status"])
			subscribed++
		}
	}
	require.Eventually(t, func() bool { return srv.API.Stats().Connections == sockets }, readTimeout, time.Millisecond)
	assert.Equal(t, subscribed, srv.API.Stats().Subscribers)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	require.NoError(t, srv.API.Shutdown(ctx))
	took := time.Since(start)

	codes := map[int]int{}
	for _, c := range clients {
		codes[c.closeCode()]++
	}
	assert.Equal(t, map[int]int{websocket.CloseGoingAway: sockets}, codes, "close codes")

	_, status, body := dialStatus(t, srv, websocket.DefaultDialer, nil)
	assert.Equal(t, http.StatusServiceUnavailable, status, "an upgrade after shutdown")
	assert.JSONEq(t, `{"detail":"Server is shutting down."}`, string(body))
	assert.NoError(t, srv.API.Shutdown(ctx), "a second Shutdown")
	assert.Equal(t, channelsapi.Stats{}, srv.API.Stats())
	t.Logf("shutdown: %d sockets (%d subscribed) closed in %v, close codes %v, upgrade after it: %d",
		sockets, subscribed, took.Round(time.Millisecond), codes, status)
}

// TestShutdownRacingUpgrades shuts down while clients upgrade as fast as
// they can: every upgrade either fails with 503 or gets a socket that is
// closed with 1001, and Shutdown waits for them all.
func TestShutdownRacingUpgrades(t *testing.T) {
	const dialers, perDialer, shutdownAt = 8, 60, 100
	srv := newItemsServer(t)
	var (
		connected atomic.Int64
		mu        sync.Mutex
		conns     []*websocket.Conn
		wg        sync.WaitGroup
	)
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for d := range dialers {
		wg.Go(func() {
			for range perDialer {
				ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
				conn, resp, err := websocket.DefaultDialer.DialContext(ctx, srv.WSURL, nil)
				cancel()
				if resp != nil {
					_ = resp.Body.Close()
				}
				if err != nil {
					if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
						t.Errorf("dialer %d: %v", d, err)
					}
					return // refused: the API is shut down
				}
				connected.Add(1)
				mu.Lock()
				conns = append(conns, conn)
				mu.Unlock()
			}
		})
	}
	require.Eventually(t, func() bool { return connected.Load() >= shutdownAt }, readTimeout, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, srv.API.Shutdown(ctx), "Shutdown waits for every socket, also those upgraded while it ran")
	wg.Wait()

	codes := map[int]int{}
	for _, conn := range conns {
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(readTimeout)))
		_, _, err := conn.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			codes[ce.Code]++
		} else {
			codes[-1]++
			t.Errorf("socket ended with %v, want close 1001", err)
		}
	}
	assert.Equal(t, map[int]int{websocket.CloseGoingAway: len(conns)}, codes)
	assert.Equal(t, channelsapi.Stats{}, srv.API.Stats())
	t.Logf("shutdown racing upgrades: %d sockets upgraded, close codes %v", len(conns), codes)
}
