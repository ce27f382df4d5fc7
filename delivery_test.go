package channelsapi_test

// This file tests delivery.go: every 1013 names its cause, a full delivery
// queue resyncs its stream's subscribers after what was queued, a
// permission that panics while an event is delivered resyncs the stream's
// subscribers and leaves the server serving, and the frames of a live
// query's events are exact.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// TestResyncReasonsNameTheCause provokes each cause of a 1013 and checks
// that the close frame names it, so that a client (or its developer) can
// tell a slow client from a change the server could not follow.
func TestResyncReasonsNameTheCause(t *testing.T) {
	tests := []struct {
		name string
		// provoke makes the server close a client it returns; first, when
		// not nil, lists the texts of the events the client may receive
		// before the close: a prefix of them, in order.
		provoke func(t *testing.T) (c *wsClient, first []string)
		want    string
	}{
		{"a client that does not read", func(t *testing.T) (*wsClient, []string) {
			srv := testModelServer(t, channelsapi.WithQueueSize(1))
			// A small receive buffer, so that the server's socket fills soon.
			dialer := websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err == nil {
					err = c.(*net.TCPConn).SetReadBuffer(64 << 10)
				}
				return c, err
			}}
			conn, resp, err := dialer.Dial(srv.WSURL, nil)
			require.NoError(t, err)
			_ = resp.Body.Close()
			t.Cleanup(func() { _ = conn.Close() })
			stalled := &wsClient{tb: t, conn: conn}
			stalled.subscribe("create", nil)
			body := strings.Repeat("x", 32<<10)
			for i := range 400 { // ~13 MB: more than the sockets' buffers hold
				require.NoError(t, srv.DB.Create(&TestModel{Name: fmt.Sprintf("%d-%s", i, body)}).Error)
			}
			return stalled, nil
		}, "slow client"},
		{"a bulk change beyond the event limit", func(t *testing.T) (*wsClient, []string) {
			srv := testModelServer(t, channelsapi.WithBulkEventLimit(1))
			seed(t, srv.DB, "a", "b")
			ws := srv.dial(t, nil)
			ws.subscribe("update", nil)
			require.NoError(t, srv.DB.Model(&TestModel{}).Where("id > 0").Update("name", "x").Error)
			return ws, nil
		}, "bulk change"},
		{"a transaction begun on db.Connection", func(t *testing.T) (*wsClient, []string) {
			srv := testModelServer(t)
			ws := srv.dial(t, nil)
			ws.subscribe("create", nil)
			require.NoError(t, srv.DB.Connection(func(conn *gorm.DB) error {
				return conn.Transaction(func(tx *gorm.DB) error { return tx.Create(&TestModel{Name: "untracked"}).Error })
			}))
			return ws, nil
		}, "untracked transaction"},
		{"a permission that panics while an event is authorized", func(t *testing.T) (*wsClient, []string) {
			srv := panickingPermissionServer(t)
			anonymous := srv.dial(t, nil)
			anonymous.subscribe("create", nil)
			status, _ := srv.doREST(t, http.MethodPost, "/testmodel", `{"name":"x"}`, "X-User", "alice")
			require.Equal(t, http.StatusCreated, status)
			return anonymous, nil
		}, "authorization failed"},
		{"more changes than the delivery queue holds", func(t *testing.T) (*wsClient, []string) {
			if os.Getenv(envOutbox) != "" {
				t.Skip("SKIP: with the outbox, what does not fit is read back (TestOutboxQueueOverflowReadsBack)")
			}
			gate := newDeliveryGate()
			srv := newScopedServer(t, openDB(t, &scopedNote{}), func(api *channelsapi.API) {
				require.NoError(t, channelsapi.Add(api, scopedNotes(false, gate)))
			}, channelsapi.WithDeliveryQueueSize(4))
			alice := srv.dialUser(t, "alice")
			alice.subscribeTo("notes", "create")
			release := stallDelivery(t, srv, gate)
			var texts []string
			for i := range 10 {
				texts = append(texts, fmt.Sprintf("a-%d", i))
				require.NoError(t, srv.DB.Create(&scopedNote{Owner: "alice", Text: texts[i]}).Error, "a write never waits for delivery")
			}
			release()
			return alice, texts
		}, "delivery queue full"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, first := tt.provoke(t)
			if first == nil {
				code, reason := c.closeFrame()
				assert.Equal(t, 1013, code)
				assert.Equal(t, tt.want, reason)
				return
			}
			payloads, code, reason := c.untilClose()
			assert.Equal(t, 1013, code)
			assert.Equal(t, tt.want, reason)
			got := []string{}
			for _, p := range payloads {
				data, _ := p["data"].(map[string]any)
				text, _ := data["text"].(string)
				got = append(got, text)
			}
			require.Less(t, len(got), len(first), "some events were not delivered: %v", got)
			assert.Equal(t, first[:len(got)], got, "the events queued before the overflow, in order")
		})
	}
}

// panickingPermissionServer serves testmodel with an ObjectPermission that
// panics for an anonymous recipient.
func panickingPermissionServer(tb testing.TB) *testServer {
	tb.Helper()
	return newServer(tb, func(api *channelsapi.API, _ *gorm.DB) {
		addTestModel(tb, api, func(vs *channelsapi.ViewSet[TestModel]) {
			vs.ObjectPermission = func(_ context.Context, r *channelsapi.Request, _ *TestModel) error {
				_ = r.User.(string) // panics for an anonymous recipient
				return nil
			}
		})
	})
}

func TestPanickingPermissionDuringDelivery(t *testing.T) {
	srv := panickingPermissionServer(t)
	anonymous := srv.dial(t, nil)
	anonymous.subscribe("create", nil)
	status, _ := srv.doREST(t, http.MethodPost, "/testmodel", `{"name":"x"}`, "X-User", "alice")
	assert.Equal(t, http.StatusCreated, status, "the write committed and is answered as such")
	assert.Equal(t, 1013, anonymous.closeCode(), "the stream's subscribers resync")
	status, _ = srv.doREST(t, http.MethodGet, "/testmodel/1", "", "X-User", "alice")
	assert.Equal(t, http.StatusOK, status, "the server keeps serving")
}

// TestLiveQueryFrames checks the exact frames of a live query's events
// (PROTOCOL.md 9): a row updated into the set is a create, one changing
// within it an update, one updated out of it a delete carrying the row
// before the update, a created one a create and a deleted one a delete
// carrying the row as it was, each with the subscription's request_id as
// the client sent it, and nothing for rows outside the set.
func TestLiveQueryFrames(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
		addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) {
			vs.Filters = map[string][]string{"name": {"startswith"}}
		})
	})
	ws := srv.dial(t, nil)
	got := ws.request("testmodel", map[string]any{"action": "subscribe_list", "data": map[string]any{"name__startswith": "in"}, "request_id": map[string]any{"q": 1}})
	require.EqualValues(t, http.StatusOK, got["response_status"], "%v", got)
	// name is as JSON writes it: json.Marshal escapes <, & and >.
	frame := func(action string, id int, name string, offset int) string {
		data := fmt.Sprintf(`{"id":%d,"name":"%s"}`, id, name)
		etag := ""
		if action != "delete" { // the hash of the data (etag.go)
			sum := sha256.Sum256([]byte(data))
			etag = `"etag":"\"` + hex.EncodeToString(sum[:16]) + `\"",`
		}
		return fmt.Sprintf(`{"stream":"testmodel","payload":{"action":%q,"pk":%d,"data":%s,"model":"tests.testmodel",%s"offset":%d,"request_id":{"q":1}}}`, action, id, data, etag, offset)
	}

	row := &TestModel{Name: "out"}
	require.NoError(t, srv.DB.Create(row).Error)
	for _, step := range []struct{ name, want string }{
		{"in <&>", frame("create", 1, `in \u003c\u0026\u003e`, 2)},
		{"in 2", frame("update", 1, "in 2", 3)},
		{"out 2", frame("delete", 1, "in 2", 4)},
		{"out 3", ""},
	} {
		require.NoError(t, srv.DB.Model(row).Update("name", step.name).Error)
		if step.want != "" {
			assert.Equal(t, step.want, string(ws.readRaw()), "update to %q", step.name)
		}
	}
	created := &TestModel{Name: "in new"}
	require.NoError(t, srv.DB.Create(created).Error)
	assert.Equal(t, frame("create", 2, "in new", 6), string(ws.readRaw()))
	require.NoError(t, srv.DB.Delete(row).Error)
	require.NoError(t, srv.DB.Delete(created).Error)
	assert.Equal(t, frame("delete", 2, "in new", 8), string(ws.readRaw()), "nothing for the row outside")
}
