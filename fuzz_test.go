package channelsapi_test

// The fuzz targets of the decoders of client input, over real sockets. Their
// seeds (the hostile corpus of helpers_test.go and some good requests) run
// under plain go test; fuzz them with, for example,
//
//	go test -run '^$' -fuzz '^FuzzFrame$' -fuzztime 20s .

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/channelsapi/channelsapi"
)

// fuzzServer serves items for a fuzz target, without the rate limit, which
// would answer the fuzzer's frames with 429 before decoding them.
func fuzzServer(f *testing.F) *testServer {
	f.Helper()
	return newItemsServer(f, channelsapi.WithRateLimit(1e9, 1<<30))
}

// fuzzSocket is the WebSocket of a fuzz target, set up once and reconnected
// when the server closes it. Fuzz functions run one at a time in a process,
// so it needs no lock.
type fuzzSocket struct {
	url  string
	conn *websocket.Conn
	sent int // good requests sent, for their request ids
}

func (s *fuzzSocket) connect(tb testing.TB) {
	tb.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(s.url, nil)
	require.NoError(tb, err)
	_ = resp.Body.Close()
	s.conn = conn
}

func (s *fuzzSocket) close() {
	if s.conn != nil {
		_ = s.conn.Close()
		s.conn = nil
	}
}

func (s *fuzzSocket) read() ([]byte, error) {
	if err := s.conn.SetReadDeadline(time.Now().Add(readTimeout)); err != nil {
		return nil, err
	}
	_, b, err := s.conn.ReadMessage()
	return b, err
}

// assertAlive sends a good request and reads up to its reply, skipping the
// subscription events that the fuzzed frames may have caused.
func (s *fuzzSocket) assertAlive(t *testing.T) {
	s.sent++
	rid := fmt.Sprint("alive-", s.sent)
	require.NoError(t, s.conn.WriteMessage(websocket.TextMessage, []byte(itemFrame(`{"action":"list","request_id":"`+rid+`"}`))))
	for range 1000 {
		b, err := s.read()
		require.NoError(t, err, "the connection answers after the fuzzed frame")
		// Raw values: events may carry any request_id the fuzzer chose,
		// such as 1e400, which no Go number holds.
		var f struct {
			Payload struct {
				Action         json.RawMessage `json:"action"`
				RequestID      json.RawMessage `json:"request_id"`
				ResponseStatus json.RawMessage `json:"response_status"`
			} `json:"payload"`
		}
		require.NoError(t, json.Unmarshal(b, &f), "frame %q", b)
		if string(f.Payload.RequestID) == `"`+rid+`"` && string(f.Payload.Action) == `"list"` {
			require.Equal(t, "200", string(f.Payload.ResponseStatus), "reply %s", b)
			return
		}
	}
	t.Fatal("no reply to the good request")
}

// fuzzFrameSeeds are good frames, for the fuzzer to start from.
var fuzzFrameSeeds = []string{
	itemFrame(`{"action":"create","data":{"name":"seed","qty":1,"price":0.5},"request_id":"c"}`),
	itemFrame(`{"action":"retrieve","pk":1,"request_id":1}`),
	itemFrame(`{"action":"update","pk":"2","data":{"name":"two"},"request_id":[1]}`),
	itemFrame(`{"action":"patch","pk":3,"data":{"qty":4}}`),
	itemFrame(`{"action":"list","data":{"page":1,"page_size":2}}`),
	itemFrame(`{"action":"subscribe","data":{"action":"update"},"pk":1}`),
	itemFrame(`{"action":"subscribe_instance","pk":1,"request_id":"i"}`),
	itemFrame(`{"action":"unsubscribe_instance","pk":1,"request_id":"i"}`),
	itemFrame(`{"action":"delete","pk":424242}`),
}

// FuzzFrame sends each input as a text frame: the reply is one JSON frame
// whose response_status is not a server error, and the connection then
// answers a good request. A frame over the size limit closes the
// connection with 1009 instead.
func FuzzFrame(f *testing.F) {
	for _, fr := range hostileFrames() {
		f.Add([]byte(fr.give))
	}
	for _, s := range fuzzFrameSeeds {
		f.Add([]byte(s))
	}
	srv := fuzzServer(f)
	sock := &fuzzSocket{url: srv.WSURL}
	sock.connect(f)
	f.Cleanup(sock.close)

	f.Fuzz(func(t *testing.T, frame []byte) {
		if sock.conn == nil {
			sock.connect(t)
		}
		tooLarge := len(frame) > channelsapi.DefaultMaxMessageSize
		err := sock.conn.WriteMessage(websocket.TextMessage, frame)
		if tooLarge {
			// The server closes with 1009 when it reads the header; the
			// rest of the frame may meet a closed socket.
			if err == nil {
				_, err = sock.read()
			}
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				assert.Equal(t, websocket.CloseMessageTooBig, ce.Code)
			}
			sock.close()
			return
		}
		require.NoError(t, err)
		b, err := sock.read()
		require.NoError(t, err, "a reply to %q", frame)
		var reply struct {
			Payload map[string]json.RawMessage `json:"payload"`
		}
		require.NoError(t, json.Unmarshal(b, &reply), "reply %q", b)
		var status int
		require.NoError(t, json.Unmarshal(reply.Payload["response_status"], &status), "reply %s", b)
		require.Less(t, status, 500, "frame %q: reply %s", frame, b)
		sock.assertAlive(t)
	})
}

// FuzzRESTBody sends each input as the body of a REST create and patch:
// neither is a server error, both answer JSON, and the server then answers
// a good request.
func FuzzRESTBody(f *testing.F) {
	for _, r := range hostileRequests() {
		if r.body != "" {
			f.Add([]byte(r.body))
		}
	}
	for _, fr := range hostileFrames() {
		f.Add([]byte(fr.give))
	}
	for _, s := range []string{`{"name":"seed"}`, `{"name":"seed","qty":2,"price":1.25}`, `{"qty":3}`, ``, `{}`} {
		f.Add([]byte(s))
	}
	srv := fuzzServer(f)

	f.Fuzz(func(t *testing.T, body []byte) {
		for _, req := range []struct{ method, path string }{{http.MethodPost, "/items"}, {http.MethodPatch, "/items/1"}} {
			status, b := srv.restAs(t, nil, req.method, req.path, string(body))
			require.Less(t, status, 500, "%s %s %q: %s", req.method, req.path, body, b)
			require.True(t, json.Valid(b), "%s %s %q: body %q", req.method, req.path, body, b)
		}
		status, b := srv.restAs(t, nil, http.MethodGet, "/items?page_size=1", "")
		require.Equal(t, http.StatusOK, status, "%s", b)
	})
}
